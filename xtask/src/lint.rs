//! `cargo xtask lint`: formatting and clippy, warnings denied.

use anyhow::{Result, bail};

use crate::{setup, util};

pub fn run() -> Result<()> {
    // Clippy builds filter-user, whose build script needs the eBPF toolchain and bpf-linker.
    setup::run()?;
    let checks: [(&str, &[&str]); 2] = [
        ("rustfmt", &["fmt", "--all", "--", "--check"]),
        // No --workspace: the default members leave out filter-ebpf, which only builds for BPF.
        (
            "clippy",
            &["clippy", "--all-targets", "--", "-D", "warnings"],
        ),
    ];
    // Run every check even after a failure, so one CI run reports all of them.
    let mut failed = Vec::new();
    for (name, args) in checks {
        if let Err(err) = util::run(util::cargo().args(args)) {
            eprintln!("lint: {name}: {err:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("lint: ok");
    Ok(())
}
