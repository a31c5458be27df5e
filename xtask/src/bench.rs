//! `cargo xtask bench`: per-packet cost of the XDP program with `BPF_PROG_TEST_RUN`, against
//! a bare `XDP_DROP` program; writes BENCHMARKS.md and bench-results.json (needs root).

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Fewer, shorter samples (repeat 200,000, median of 3) instead of 1,000,000 and 5
    #[arg(long)]
    quick: bool,
}

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    if !util::is_root() {
        bail!("the benchmark loads XDP programs (CAP_BPF, CAP_SYS_ADMIN): run it as root");
    }
    let mut cmd = util::cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "floodwall-tests",
        "--bin",
        "bench",
        "--",
    ]);
    if args.quick {
        cmd.arg("--quick");
    }
    util::run(&mut cmd)
}
