//! `cargo xtask demo`: a UDP echo service under floods, first with floodwall only watching,
//! then with floodwall dropping (the `demo` binary of the test harness, `tests/src/bin/demo.rs`,
//! which says what it does; needs root).

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Total seconds of traffic, split evenly over the two phases; each phase is one calm
    /// second, then the three floods (whole seconds each)
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(8..=300))]
    duration: u64,
    /// Leave the namespaces, the attached filter and its pins in place at the end, and print
    /// the commands that remove them (an interrupted demo always cleans up)
    #[arg(long)]
    keep: bool,
}

pub fn run(args: &Args) -> Result<()> {
    setup::run()?;
    if !util::is_root() {
        bail!("the demo needs root (namespaces, veth pairs, XDP): run it as root");
    }
    let mut cmd = util::cargo();
    cmd.args(["run", "-p", "floodwall-tests", "--bin", "demo", "--"])
        .args(["--duration", &args.duration.to_string()]);
    if args.keep {
        cmd.arg("--keep");
    }
    // Ctrl-C reaches the demo too, which stops its traffic and cleans up: wait for that
    // rather than return to the shell while it is still removing its namespaces.
    // SAFETY: changes only this process's disposition of SIGINT (the demo sets its own).
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    util::run(&mut cmd)
}
