//! Network namespaces, veth pairs and scratch directories for root tests.
//!
//! Network rule: test traffic only ever flows between namespaces a test created
//! itself, over veth pairs it created (which never exist in the root namespace),
//! or over loopback inside such a namespace. No namespace gets a default route.
//! Every resource here is removed on `Drop`, so also when a test panics.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One counter for every name this module makes up (namespaces, interfaces, dirs),
/// so names are unique within the process; the pid makes them unique across processes.
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Runs a command and fails with its stderr when it exits non-zero.
fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run_checked(Command::new("ip").args(args))
}

/// A network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fw-<prefix>-<pid>-<n>` and brings `lo` up inside it.
    pub fn new(prefix: &str) -> anyhow::Result<Netns> {
        let name = format!("fw-{prefix}-{}-{}", std::process::id(), next_id());
        ip(&["netns", "add", &name])?;
        // From here on Drop removes the namespace, also if the next step fails.
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip netns exec NAME program`, for callers that need env vars, stdin etc.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `cmd` inside the namespace; fails (with stderr) on a non-zero exit.
    pub fn exec(&self, cmd: &[&str]) -> anyhow::Result<Output> {
        let (program, args) = cmd.split_first().context("empty command")?;
        run_checked(self.command(program).args(args))
    }

    /// Runs `cmd` inside the namespace and returns its output whatever the exit status.
    pub fn exec_unchecked(&self, cmd: &[&str]) -> anyhow::Result<Output> {
        let (program, args) = cmd.split_first().context("empty command")?;
        let mut c = self.command(program);
        c.args(args);
        c.output().with_context(|| format!("running {c:?}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "floodwall-tests: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("floodwall-tests: `ip netns del {}`: {e}", self.name),
        }
    }
}

/// Runs `f` on a new thread that has entered `ns`'s network namespace and returns
/// its result. Only that thread changes namespace; sockets it creates stay in `ns`
/// after it exits, so they can be returned and used from any thread.
/// A panic in `f` is propagated.
pub fn run_in<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let file = File::open(ns.path()).with_context(|| format!("opening {:?}", ns.path()))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> anyhow::Result<T> {
            // SAFETY: plain syscall on a valid fd; it affects this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns into {}", ns.name()));
            }
            drop(file);
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Adds an address (`10.201.0.3/24`, `fd00:201::3/64`) to `ifname` inside `ns`.
/// IPv6 addresses are added with `nodad`, so they are usable at once.
pub fn add_addr(ns: &Netns, ifname: &str, cidr: &str) -> anyhow::Result<()> {
    let mut cmd = vec!["ip", "addr", "add", cidr, "dev", ifname];
    if cidr.contains(':') {
        cmd.push("nodad");
    }
    ns.exec(&cmd)?;
    Ok(())
}

/// Adds a permanent neighbour entry `ip` → `mac` on `ifname` inside `ns`.
pub fn add_neigh(ns: &Netns, ifname: &str, ip: &str, mac: [u8; 6]) -> anyhow::Result<()> {
    let ip = strip_prefix_len(ip);
    let mac = format_mac(mac);
    ns.exec(&[
        "ip",
        "neigh",
        "replace",
        ip,
        "lladdr",
        &mac,
        "dev",
        ifname,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// Reads the MAC address of `ifname` inside `ns`.
pub fn link_mac(ns: &Netns, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.exec(&["ip", "-o", "link", "show", "dev", ifname])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no link/ether in {text:?}"))?;
    parse_mac(mac)
}

fn strip_prefix_len(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {s:?}");
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {s:?}"))?;
    }
    Ok(mac)
}

/// Waits (at most `timeout`) until `ifname` inside `ns` has carrier.
fn wait_lower_up(ns: &Netns, ifname: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = ns.exec(&["ip", "-o", "link", "show", "dev", ifname])?;
        if String::from_utf8_lossy(&out.stdout).contains("LOWER_UP") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{ifname} in {} has no carrier after {timeout:?}", ns.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A veth pair between two namespaces; it never exists in the root namespace.
/// Both ends get IPv4 and IPv6 addresses and static neighbour entries for each
/// other, so no ARP/ND is needed. No routes beyond the connected prefixes.
///
/// Holds only names, so it may be dropped before or after the namespaces.
#[derive(Debug)]
pub struct VethPair {
    ns_a: String,
    ns_b: String,
    a_name: String,
    b_name: String,
    a_mac: [u8; 6],
    b_mac: [u8; 6],
}

impl VethPair {
    /// Creates the pair with end A in `a` and end B in `b`. Addresses are CIDRs,
    /// e.g. `10.201.0.1/24` and `fd00:201::1/64`.
    pub fn new(
        a: &Netns,
        b: &Netns,
        a_addr4: &str,
        b_addr4: &str,
        a_addr6: &str,
        b_addr6: &str,
    ) -> anyhow::Result<VethPair> {
        VethPair::with_queues(a, b, a_addr4, b_addr4, a_addr6, b_addr6, 1)
    }

    /// The same with `queues` receive and transmit queues on each end: frames redirected in
    /// from several CPUs then land on one queue per CPU, each with its own NAPI poll on the
    /// CPU that sent them, as a multi-queue NIC spreads a flood.
    pub fn with_queues(
        a: &Netns,
        b: &Netns,
        a_addr4: &str,
        b_addr4: &str,
        a_addr6: &str,
        b_addr6: &str,
        queues: u32,
    ) -> anyhow::Result<VethPair> {
        // "fw" + pid in hex (≤ 6 chars, pid_max ≤ 2^22) + "a"/"b" + counter: ≤ 15 chars.
        let tag = format!("fw{:x}", std::process::id());
        let n = next_id();
        let a_name = format!("{tag}a{n}");
        let b_name = format!("{tag}b{n}");
        if a_name.len() > 15 {
            bail!("interface name {a_name} too long");
        }
        // One queue is the default: then nothing is asked for, as before queues were.
        let count = queues.to_string();
        let per_end: &[&str] = if queues == 1 {
            &[]
        } else {
            &["numtxqueues", &count, "numrxqueues", &count]
        };
        let mut args = vec!["link", "add", &a_name, "netns", a.name()];
        args.extend(per_end);
        args.extend(["type", "veth", "peer", "name", &b_name, "netns", b.name()]);
        args.extend(per_end);
        ip(&args)?;
        let mut pair = VethPair {
            ns_a: a.name().to_owned(),
            ns_b: b.name().to_owned(),
            a_name,
            b_name,
            a_mac: [0; 6],
            b_mac: [0; 6],
        };
        pair.a_mac = link_mac(a, &pair.a_name)?;
        pair.b_mac = link_mac(b, &pair.b_name)?;
        for (ns, ifname, addr4, addr6) in [
            (a, &pair.a_name, a_addr4, a_addr6),
            (b, &pair.b_name, b_addr4, b_addr6),
        ] {
            // No link-local address: keeps router solicitations and MLD noise off the wire.
            ns.exec(&["ip", "link", "set", "dev", ifname, "addrgenmode", "none"])?;
            add_addr(ns, ifname, addr4)?;
            add_addr(ns, ifname, addr6)?;
        }
        add_neigh(a, &pair.a_name, b_addr4, pair.b_mac)?;
        add_neigh(a, &pair.a_name, b_addr6, pair.b_mac)?;
        add_neigh(b, &pair.b_name, a_addr4, pair.a_mac)?;
        add_neigh(b, &pair.b_name, a_addr6, pair.a_mac)?;
        a.exec(&["ip", "link", "set", "dev", &pair.a_name, "up"])?;
        b.exec(&["ip", "link", "set", "dev", &pair.b_name, "up"])?;
        wait_lower_up(a, &pair.a_name, Duration::from_secs(5))?;
        wait_lower_up(b, &pair.b_name, Duration::from_secs(5))?;
        Ok(pair)
    }

    pub fn a_name(&self) -> &str {
        &self.a_name
    }

    pub fn b_name(&self) -> &str {
        &self.b_name
    }

    pub fn a_mac(&self) -> [u8; 6] {
        self.a_mac
    }

    pub fn b_mac(&self) -> [u8; 6] {
        self.b_mac
    }

    /// Adds an extra address on end A (`a` must be the namespace A was created in)
    /// and a neighbour entry for it on end B, so B can also answer it without ARP/ND.
    pub fn add_a_addr(&self, a: &Netns, b: &Netns, cidr: &str) -> anyhow::Result<()> {
        self.check_ns(a, b)?;
        add_addr(a, &self.a_name, cidr)?;
        add_neigh(b, &self.b_name, cidr, self.a_mac)
    }

    /// Adds an extra address on end B and a neighbour entry for it on end A.
    pub fn add_b_addr(&self, a: &Netns, b: &Netns, cidr: &str) -> anyhow::Result<()> {
        self.check_ns(a, b)?;
        add_addr(b, &self.b_name, cidr)?;
        add_neigh(a, &self.a_name, cidr, self.b_mac)
    }

    fn check_ns(&self, a: &Netns, b: &Netns) -> anyhow::Result<()> {
        if a.name() != self.ns_a || b.name() != self.ns_b {
            bail!(
                "namespaces {}/{} are not this pair's {}/{}",
                a.name(),
                b.name(),
                self.ns_a,
                self.ns_b
            );
        }
        Ok(())
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting either end deletes both; if the namespace is already gone, so is
        // the veth, and the error is expected and ignored.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_a,
                "ip",
                "link",
                "del",
                &self.a_name,
            ])
            .output();
    }
}

/// A fresh bpffs mounted on `/run/floodwall-test-<pid>-<n>`, unmounted and removed
/// on drop. Unlike `/sys/fs/bpf`, it stays visible inside `ip netns exec` (which
/// remounts `/sys`).
#[derive(Debug)]
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    pub fn new() -> anyhow::Result<BpffsDir> {
        let path = PathBuf::from(format!(
            "/run/floodwall-test-{}-{}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir(&path).with_context(|| format!("creating {path:?}"))?;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c_path.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&path);
            return Err(err).with_context(|| format!("mounting bpffs on {path:?}"));
        }
        Ok(BpffsDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        match std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
            Ok(c_path) => {
                // SAFETY: valid NUL-terminated path.
                let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
                if rc != 0 {
                    eprintln!(
                        "floodwall-tests: umount {:?}: {}",
                        self.path,
                        std::io::Error::last_os_error()
                    );
                }
            }
            Err(e) => eprintln!("floodwall-tests: {e}"),
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("floodwall-tests: removing {:?}: {e}", self.path);
        }
    }
}

/// A unique scratch directory under the temp dir (e.g. for `FLOODWALL_STATE_DIR`),
/// removed with its contents on drop.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn new() -> anyhow::Result<StateDir> {
        let path = std::env::temp_dir().join(format!(
            "floodwall-state-{}-{}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir(&path).with_context(|| format!("creating {path:?}"))?;
        Ok(StateDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("floodwall-tests: removing {:?}: {e}", self.path);
        }
    }
}
