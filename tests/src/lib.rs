pub mod cli;
pub mod frames;
pub mod model;
pub mod netns;
pub mod pktgen;
pub mod program;
pub mod receivers;
pub mod traffic;
