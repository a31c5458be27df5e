//! `cargo xtask bench`: throughput into a veth peer (live frames between two benchmark
//! namespaces) against a bare `XDP_DROP`, nftables and iptables; limiter accuracy; per-packet
//! program cost and its scaling with `BPF_PROG_TEST_RUN`; `floodwall block import` against
//! `nft -f`. Writes BENCHMARKS.md and bench-results.json (needs root).

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Fewer, shorter samples (under 2 minutes) instead of the full run
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
