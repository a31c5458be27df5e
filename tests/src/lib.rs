pub mod frames;
pub mod netns;
pub mod program;
pub mod traffic;
