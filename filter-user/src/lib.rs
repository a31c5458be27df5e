//! floodwall's controller: loads the XDP program, pins it, and changes and reads its state.
//! One module per concern; `cli` is the command line on top of them.

pub mod attach;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod import;
pub mod kernel;
pub mod limits;
pub mod lists;
pub mod paths;
pub mod state;
pub mod stats;
mod sys;

/// The XDP program, built by the build script and embedded in every floodwall binary.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floodwall"));
