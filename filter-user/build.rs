//! Builds the XDP program (filter-ebpf) for bpfel-unknown-none with the pinned nightly, so a
//! plain `cargo build` produces a `floodwall` with the object embedded.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Keep in step with `xtask`'s `EBPF_TOOLCHAIN`, which `cargo xtask setup` installs.
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "filter-ebpf")
        .ok_or_else(|| anyhow!("filter-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("filter-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context(
        "building the XDP program failed; run `cargo xtask setup` to install the pinned \
         nightly and bpf-linker",
    )
}
