//! floodwall's developer tasks, run as `cargo xtask <command>`.
//!
//! Each command lives in its own module and calls `setup::run()` first, so a new one (demo,
//! bench) is a module plus a variant here.

mod bench;
mod demo;
mod lint;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "floodwall's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need: eBPF toolchain, bpf-linker, Debian packages, bpffs
    Setup,
    /// Check formatting and run clippy with warnings denied
    Lint,
    /// Run the unit tests, then the root tests one at a time (needs root)
    Test(test::Args),
    /// Show floodwall protecting a UDP echo service from floods, in namespaces (needs root)
    Demo(demo::Args),
    /// Measure per-packet program cost with BPF_PROG_TEST_RUN against bare XDP_DROP (needs root)
    Bench(bench::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Lint => lint::run(),
        Cmd::Test(args) => test::run(&args),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Bench(args) => bench::run(&args),
    }
}
