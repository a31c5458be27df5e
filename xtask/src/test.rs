//! `cargo xtask test`: unit tests, then the root tests (XDP programs in network namespaces).

use std::fmt;

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Test filter (and other test-harness arguments) for both stages, e.g. `-- blocklist`
    #[arg(last = true)]
    harness_args: Vec<String>,
}

enum Outcome {
    Passed,
    Failed(String),
    Skipped(&'static str),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Failed(why) => write!(f, "FAILED: {why}"),
            Outcome::Skipped(why) => write!(f, "skipped ({why})"),
        }
    }
}

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    // Default members only; the root tests are #[ignore]d, so this lists them as ignored.
    let unit = stage(util::cargo().arg("test").arg("--").args(&args.harness_args));
    let root = if !matches!(unit, Outcome::Passed) {
        Outcome::Skipped("unit tests failed")
    } else if !util::is_root() {
        Outcome::Failed(
            "root tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF): run as root".into(),
        )
    } else {
        // One at a time: they share CPU for timing and some count traffic. Every test file
        // runs even after a failure, so one run shows every failure.
        stage(
            util::cargo()
                .args(["test", "--no-fail-fast", "-p", "floodwall-tests", "--"])
                .args(["--ignored", "--test-threads=1"])
                .args(&args.harness_args),
        )
    };
    println!("test summary:\n  unit tests: {unit}\n  root tests: {root}");
    if !matches!((&unit, &root), (Outcome::Passed, Outcome::Passed)) {
        bail!("tests failed");
    }
    Ok(())
}

fn stage(cmd: &mut std::process::Command) -> Outcome {
    match util::run(cmd) {
        Ok(()) => Outcome::Passed,
        Err(err) => Outcome::Failed(format!("{err:#}")),
    }
}
