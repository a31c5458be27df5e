//! `cargo xtask setup`: installs what building and testing floodwall need and the machine lacks.
//!
//! Every other command calls [`run`] first, so each step checks before it acts: a second run
//! changes nothing and takes well under a second.

use std::env;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{self, output};

/// The nightly that builds the XDP program (it needs `rust-src` for `-Z build-std`).
/// filter-user's build script names the same toolchain.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

/// Its default feature links LLVM 23, the LLVM of [`EBPF_TOOLCHAIN`].
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What the root tests and benches run: ip, ping, nft, iptables, bpftool, ethtool, curl for
/// the metrics scrapes, openssl for the CrowdSec TLS test's certificates.
const DEB_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "nftables",
    "iptables",
    "bpftool",
    "ethtool",
    "curl",
    "openssl",
    // xdp-filter, the peer the benchmark compares floodwall with.
    "xdp-tools",
];

/// Debian's CrowdSec package, unpacked (never installed) for the bouncer tests: installing it
/// would register with the central API and enable a service. The tests find it here too.
const CROWDSEC_PACKAGE: &str = "crowdsec";

/// Where pinned maps and links live; the kernel here does not mount it at boot.
const BPFFS: &str = "/sys/fs/bpf";

/// A step's result: `None` if everything was already in place, else what it changed.
type Change = Option<String>;

type Step = fn() -> Result<Change>;

/// Runs every setup step, printing one line per step and a summary.
pub fn run() -> Result<()> {
    let start = Instant::now();
    let steps: [(&str, Step); 6] = [
        ("rustup", check_rustup),
        ("eBPF toolchain", ensure_toolchain),
        ("bpf-linker", ensure_bpf_linker),
        ("Debian packages", ensure_packages),
        ("bpffs", ensure_bpffs),
        ("CrowdSec LAPI for tests", ensure_crowdsec),
    ];
    let mut changes = 0;
    for (name, step) in steps {
        let change = step().with_context(|| format!("setup: {name}"))?;
        match change {
            None => println!("setup: {name}: ok"),
            Some(what) => {
                changes += 1;
                println!("setup: {name}: {what}");
            }
        }
    }
    println!(
        "setup: done in {:.1} s ({changes} change{})",
        start.elapsed().as_secs_f64(),
        if changes == 1 { "" } else { "s" }
    );
    Ok(())
}

fn check_rustup() -> Result<Change> {
    output(Command::new("rustup").arg("--version")).context(
        "rustup is required to install the eBPF toolchain: get it from https://rustup.rs",
    )?;
    Ok(None)
}

fn ensure_toolchain() -> Result<Change> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    // Listed with the host triple appended, e.g. `nightly-2026-10-29-x86_64-unknown-linux-gnu`.
    let host_suffixed = format!("{EBPF_TOOLCHAIN}-");
    let installed = toolchains
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| name == EBPF_TOOLCHAIN || name.starts_with(&host_suffixed));
    if !installed {
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok(Some(format!("installed {EBPF_TOOLCHAIN} with rust-src")));
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        EBPF_TOOLCHAIN,
        "--installed",
    ]))?;
    if components.lines().any(|line| line.trim() == "rust-src") {
        return Ok(None);
    }
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    Ok(Some(format!("added rust-src to {EBPF_TOOLCHAIN}")))
}

fn ensure_bpf_linker() -> Result<Change> {
    // Running it also proves its rpath still reaches libLLVM.
    if bpf_linker_works() {
        return Ok(None);
    }
    let prefix = llvm_prefix()?;
    if link_rust_llvm(&prefix)? && bpf_linker_works() {
        return Ok(Some(format!(
            "repaired the libLLVM links in {}",
            prefix.display()
        )));
    }
    // Fail before a long build whose result the eBPF build could not find.
    let bin = cargo_home()?.join("bin");
    if !env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|dir| dir == bin)) {
        bail!(
            "{} is not on PATH, but bpf-linker gets installed there and the eBPF build runs it \
             from PATH: add it (export PATH=\"{}:$PATH\") and rerun",
            bin.display(),
            bin.display()
        );
    }
    // --force: a broken install of the same version would otherwise be kept.
    util::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--locked", "--force"])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_works() {
        bail!("bpf-linker {BPF_LINKER_VERSION} was installed but `bpf-linker --version` fails");
    }
    Ok(Some(format!(
        "installed bpf-linker {BPF_LINKER_VERSION} against {EBPF_TOOLCHAIN}'s libLLVM"
    )))
}

fn bpf_linker_works() -> bool {
    output(Command::new("bpf-linker").arg("--version"))
        .is_ok_and(|out| out.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION))
}

/// Debian has no LLVM as new as the nightly's, so bpf-linker links the nightly's own libLLVM
/// through this prefix (its rpath points here: keep it in place).
fn llvm_prefix() -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home)
        .join(".local/share/floodwall")
        .join(format!("llvm-{EBPF_TOOLCHAIN}")))
}

/// Makes `prefix/lib` hold `libLLVM.so` (for the build) and the library's SONAME (for the
/// loader), both pointing at the toolchain's libLLVM. Returns whether anything changed.
fn link_rust_llvm(prefix: &Path) -> Result<bool> {
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .args(["--print", "sysroot"]),
    )?;
    let libllvm = find_libllvm(&Path::new(sysroot.trim()).join("lib"))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let generic = ensure_symlink(&libllvm, &lib.join("libLLVM.so"))?;
    let versioned = ensure_symlink(&libllvm, &lib.join(soname))?;
    Ok(generic || versioned)
}

/// The real `libLLVM.so.*` in `dir`; its file name is its SONAME. The `libLLVM-*.so` next to
/// it is a linker script, which a name glob on `libLLVM.so.` and the regular-file test skip.
fn find_libllvm(dir: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        if is_file
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("libLLVM.so.")
        {
            return Ok(entry.path());
        }
    }
    bail!("no libLLVM.so.* in {}", dir.display())
}

/// Points `link` at `target`, replacing whatever was there. Returns whether it changed.
fn ensure_symlink(target: &Path, link: &Path) -> Result<bool> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(false);
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?;
    }
    symlink(target, link).with_context(|| format!("cannot create {}", link.display()))?;
    Ok(true)
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn ensure_packages() -> Result<Change> {
    let mut missing = Vec::new();
    for &package in DEB_PACKAGES {
        if !deb_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(None);
    }
    let list = missing.join(" ");
    if !util::is_root() {
        bail!("missing Debian packages: {list}; run as root to install them");
    }
    util::run(Command::new("apt-get").args(["-q", "update"]))?;
    util::run(
        Command::new("apt-get")
            .args(["-q", "install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(Some(format!("installed {list}")))
}

fn deb_installed(package: &str) -> Result<bool> {
    // Not util::output: dpkg-query exits 1 for unknown packages, which just means "missing".
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .context("cannot run dpkg-query (setup supports Debian and its derivatives)")?;
    Ok(out.status.success() && out.stdout == b"install ok installed")
}

fn ensure_bpffs() -> Result<Change> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    });
    if mounted {
        return Ok(None);
    }
    if !util::is_root() {
        bail!("bpffs is not mounted at {BPFFS}; run as root to mount it");
    }
    util::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(Some(format!("mounted bpffs at {BPFFS}")))
}

/// Where [`ensure_crowdsec`] unpacks the package; `tests/src/crowdsec.rs` looks in the same place.
fn crowdsec_root() -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/floodwall/crowdsec"))
}

fn ensure_crowdsec() -> Result<Change> {
    let root = crowdsec_root()?;
    let binaries = [
        "usr/bin/crowdsec",
        "usr/bin/cscli",
        "etc/crowdsec/profiles.yaml",
    ];
    if binaries.iter().all(|b| root.join(b).exists()) {
        return Ok(None);
    }
    let download = tempdir("floodwall-crowdsec-deb")?;
    // `apt-get download` needs a fresh package index on a machine that never ran `update`.
    if util::run(
        Command::new("apt-get")
            .args(["-q", "download", CROWDSEC_PACKAGE])
            .current_dir(&download),
    )
    .is_err()
    {
        util::run(Command::new("apt-get").args(["-q", "update"]))?;
        util::run(
            Command::new("apt-get")
                .args(["-q", "download", CROWDSEC_PACKAGE])
                .current_dir(&download),
        )?;
    }
    let deb = fs::read_dir(&download)
        .with_context(|| format!("cannot read {}", download.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download crowdsec left no .deb")?;
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let _ = fs::remove_dir_all(&download);
    if let Some(missing) = binaries.iter().find(|b| !root.join(b).exists()) {
        bail!("the crowdsec package has no {missing}");
    }
    Ok(Some(format!(
        "unpacked {} into {}",
        deb.file_name().unwrap_or_default().to_string_lossy(),
        root.display()
    )))
}

fn tempdir(name: &str) -> Result<PathBuf> {
    let dir = env::temp_dir().join(format!("{name}-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
