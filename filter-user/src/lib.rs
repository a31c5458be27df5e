//! floodwall's controller: loads the XDP program, pins it, and changes and reads its state.
//! One module per concern; `cli` is the command line on top of them.

pub mod attach;
pub mod bans;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod crowdsec;
pub mod daemon;
pub mod explain;
pub mod import;
pub mod kernel;
pub mod limits;
pub mod lists;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod pidfile;
pub mod reload;
pub mod state;
pub mod stats;
pub mod store;
pub mod syncookies;
mod sys;
pub mod trace;

/// The XDP program, built by the build script and embedded in every floodwall binary.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floodwall"));

/// The packet source for tests and benchmarks (`filter-ebpf/src/bin/pktgen.rs`): an XDP program
/// run with `BPF_PROG_TEST_RUN` live frames that rewrites source addresses and redirects each
/// frame out of a veth. Not used by floodwall itself.
pub static PKTGEN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pktgen"));
