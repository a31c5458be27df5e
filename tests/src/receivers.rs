//! Receivers for throughput benchmarks: bare XDP programs (`r0 = verdict; exit`) loaded with
//! the raw `bpf(2)` syscall and attached to an interface of a test namespace with a BPF link,
//! nftables and iptables rule sets installed inside a test namespace, and CPU time from
//! `/proc/stat`.
//!
//! Network rule: everything here acts only inside a namespace the caller created ([`Netns`]);
//! nothing touches the root namespace. A [`BareXdp`] attachment is a BPF link owned by this
//! process: closing its descriptor (on drop) detaches it.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};

use crate::netns::{Netns, run_in};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: BPF_XDP.
const BPF_XDP: u32 = 37;

/// `union bpf_attr` is 8-byte aligned; 128 bytes covers every field used here (the kernel
/// requires the tail past the fields it knows to be zero, which a zeroed buffer is).
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> BpfAttr {
        BpfAttr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable bpf_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An owned file descriptor from `bpf(2)`, closed on drop.
#[derive(Debug)]
pub struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Puts the program `prog` in slot `index` of the program array `map`. A raw update: aya
/// takes only its own program handles, and a bare program has none.
pub fn set_program_slot(
    map: std::os::fd::BorrowedFd<'_>,
    index: u32,
    prog: std::os::fd::BorrowedFd<'_>,
) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let value = prog.as_raw_fd() as u32;
    let mut attr = BpfAttr::new();
    attr.u32(0, map.as_raw_fd() as u32);
    attr.u64(8, std::ptr::from_ref(&index) as u64);
    attr.u64(16, std::ptr::from_ref(&value) as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("BPF_MAP_UPDATE_ELEM of a program array")?;
    Ok(())
}

/// `BPF_PROG_TEST_RUN` of the XDP program `fd`: the verdict and the kernel's mean ns per run.
fn test_run(fd: &Fd, frame: &[u8], repeat: u32) -> Result<(u32, u64)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = BpfAttr::new();
    // The `test` member: prog_fd, retval, data_size_in, data_size_out, data_in, data_out,
    // repeat, duration, ...
    attr.u32(0, fd.0 as u32);
    attr.u32(8, frame.len() as u32);
    attr.u32(12, out.len() as u32);
    attr.u64(16, frame.as_ptr() as u64);
    attr.u64(24, out.as_mut_ptr() as u64);
    attr.u32(32, repeat);
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN")?;
    Ok((attr.get_u32(4), u64::from(attr.get_u32(36))))
}

/// Debian's `xdp-filter` (xdp-tools) loaded on a veth end in `ns`, for comparison: its program
/// is run with `BPF_PROG_TEST_RUN` like floodwall's. Unloaded on drop. It runs under
/// `nsenter --net`, not `ip netns exec`, which would hide bpffs from libxdp.
pub struct XdpFilter<'a> {
    fd: Fd,
    /// The program xdp-filter picked for the features (`xdpfilt_alw_ip` for ipv4,ipv6).
    pub program: String,
    // Last: the program is unloaded after its descriptor is closed.
    _loaded: Unload<'a>,
}

/// Runs `xdp-filter ARGS` inside `ns`.
fn xdp_filter(ns: &Netns, args: &[&str]) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("xdp-filter")
        .args(args)
        .output()
        .with_context(|| format!("running xdp-filter {args:?} (is xdp-tools installed?)"))?;
    ensure!(
        out.status.success(),
        "xdp-filter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// xdp-filter loaded on an interface: unloaded on drop (which also removes its pins).
struct Unload<'a> {
    ns: &'a Netns,
    ifname: String,
}

impl Drop for Unload<'_> {
    fn drop(&mut self) {
        if let Err(e) = xdp_filter(self.ns, &["unload", &self.ifname]) {
            eprintln!("floodwall-tests: {e}");
        }
        // libxdp's working directory, which unload leaves behind empty: removed only if it
        // is (another user of libxdp keeps it).
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
    }
}

impl<'a> XdpFilter<'a> {
    /// Loads it on a new veth pair inside `ns` in native mode with `features` (xdp-filter's
    /// `--features`), dropping the source addresses `blocked`.
    pub fn load(ns: &'a Netns, features: &str, blocked: &[&str]) -> Result<XdpFilter<'a>> {
        let ifname = format!("xf{:x}", std::process::id());
        let peer = format!("{ifname}p");
        ns.exec(&[
            "ip", "link", "add", &ifname, "type", "veth", "peer", "name", &peer,
        ])?;
        for dev in [&ifname, &peer] {
            ns.exec(&["ip", "link", "set", dev, "up"])?;
        }
        xdp_filter(ns, &["load", "-m", "native", "-f", features, &ifname])?;
        let loaded = Unload {
            ns,
            ifname: ifname.clone(),
        };
        for addr in blocked {
            xdp_filter(ns, &["ip", addr, "-m", "src"])?;
        }
        let out = ns.exec(&["ip", "-j", "-d", "link", "show", &ifname])?;
        let link: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let prog = &link[0]["xdp"]["prog"];
        let id = prog["id"]
            .as_u64()
            .with_context(|| format!("no XDP program on {ifname} after xdp-filter load: {link}"))?;
        let mut attr = BpfAttr::new();
        attr.u32(0, id as u32);
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)
            .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
        Ok(XdpFilter {
            fd: Fd(fd as libc::c_int),
            program: prog["name"].as_str().unwrap_or("?").to_owned(),
            _loaded: loaded,
        })
    }

    /// `BPF_PROG_TEST_RUN` of xdp-filter's program: the verdict and mean ns per run.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u64)> {
        test_run(&self.fd, frame, repeat).context("BPF_PROG_TEST_RUN of xdp-filter")
    }
}

/// A loaded bare XDP program: `r0 = verdict; exit`.
#[derive(Debug)]
pub struct BareProgram {
    fd: Fd,
    verdict: u32,
}

impl BareProgram {
    pub fn load(verdict: u32) -> Result<BareProgram> {
        // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm } as little-endian u64s.
        let insns: [u64; 2] = [
            0xb7 | (u64::from(verdict) << 32), // BPF_ALU64 | BPF_MOV | BPF_K: r0 = verdict
            0x95,                              // BPF_JMP | BPF_EXIT
        ];
        let license = c"GPL";
        let name: &[u8] = if verdict == XDP_DROP {
            b"bare_drop"
        } else {
            b"bare_verdict"
        };
        let mut attr = BpfAttr::new();
        attr.u32(0, BPF_PROG_TYPE_XDP); // prog_type
        attr.u32(4, insns.len() as u32); // insn_cnt
        attr.u64(8, insns.as_ptr() as u64); // insns
        attr.u64(16, license.as_ptr() as u64); // license
        attr.0[48..48 + name.len()].copy_from_slice(name); // prog_name[16]
        // expected_attach_type as aya loads XDP programs: a program array takes only programs
        // that match its owner in this too, so the bare program can stand in for floodwall.
        attr.u32(68, BPF_XDP);
        let fd = bpf(BPF_PROG_LOAD, &mut attr)
            .with_context(|| format!("BPF_PROG_LOAD of a bare XDP program ({verdict})"))?;
        Ok(BareProgram {
            fd: Fd(fd as libc::c_int),
            verdict,
        })
    }

    pub fn verdict(&self) -> u32 {
        self.verdict
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor stays open as long as `self`.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd.0) }
    }

    /// `BPF_PROG_TEST_RUN`: the verdict and the kernel's mean ns per run.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u64)> {
        test_run(&self.fd, frame, repeat).context("BPF_PROG_TEST_RUN of a bare program")
    }

    /// Attaches to `ifname` in `ns` (native XDP, through a BPF link created by a thread inside
    /// `ns`); detached when the returned link is dropped.
    pub fn attach(&self, ns: &Netns, ifname: &str) -> Result<BareXdp> {
        let prog_fd = self.fd.0;
        let fd = run_in(ns, || -> Result<libc::c_int> {
            let name = std::ffi::CString::new(ifname)?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {ifname} in {}", ns.name());
            let mut attr = BpfAttr::new();
            attr.u32(0, prog_fd as u32); // link_create.prog_fd
            attr.u32(4, ifindex); // target_ifindex
            attr.u32(8, BPF_XDP); // attach_type
            attr.u32(12, 0); // flags: native (driver) mode
            let fd = bpf(BPF_LINK_CREATE, &mut attr)
                .with_context(|| format!("BPF_LINK_CREATE (XDP) on {ifname}"))?;
            Ok(fd as libc::c_int)
        })??;
        Ok(BareXdp { _link: Fd(fd) })
    }
}

/// A bare program attached with a BPF link; dropping it detaches the program.
#[derive(Debug)]
pub struct BareXdp {
    _link: Fd,
}

// ---------------------------------------------------------------------------------------------
// nftables and iptables, inside a test namespace only.

/// nftables netdev-ingress per-source meter on `ifname`: a dynamic set keyed by source
/// address, each source limited to `pps` (more is dropped). Counters: `dropped` on the meter
/// rule, `accepted` on the rule after it.
pub fn nft_meter_ruleset(ifname: &str, pps: u64) -> String {
    format!(
        "table netdev fw {{
  set meter4 {{ type ipv4_addr; size 1048576; flags dynamic,timeout; timeout 10s; }}
  chain ingress {{
    type filter hook ingress device \"{ifname}\" priority 0; policy accept;
    update @meter4 {{ ip saddr limit rate over {pps}/second }} counter drop
    counter accept
  }}
}}
"
    )
}

fn with_stdin(ns: &Netns, program: &str, args: &[&str], input: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut cmd = ns.command(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(input)
            .with_context(|| format!("writing to {program}"))?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{program} {args:?} in {} failed: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Checks (`nft -c`) and then loads `ruleset` inside `ns`.
pub fn nft_load(ns: &Netns, ruleset: &str) -> Result<()> {
    with_stdin(ns, "nft", &["-c", "-f", "-"], ruleset.as_bytes()).context("nft -c")?;
    with_stdin(ns, "nft", &["-f", "-"], ruleset.as_bytes())
}

/// Removes every nftables table inside `ns`.
pub fn nft_flush(ns: &Netns) -> Result<()> {
    ns.exec(&["nft", "flush", "ruleset"])?;
    Ok(())
}

/// The `counter packets N` values of the `netdev fw ingress` chain, in rule order.
pub fn nft_counters(ns: &Netns) -> Result<Vec<u64>> {
    let out = ns.exec(&["nft", "list", "chain", "netdev", "fw", "ingress"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = Vec::new();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            if let Some(n) = words.next().and_then(|n| n.parse().ok()) {
                counts.push(n);
            }
        }
    }
    Ok(counts)
}

/// iptables hashlimit in the raw table's PREROUTING of `ns`: more than `pps` per source
/// address on `ifname` is dropped.
pub fn iptables_hashlimit(ns: &Netns, ifname: &str, pps: u64) -> Result<()> {
    let rate = format!("{pps}/sec");
    ns.exec(&[
        "iptables",
        "-w",
        "-t",
        "raw",
        "-A",
        "PREROUTING",
        "-i",
        ifname,
        "-m",
        "hashlimit",
        "--hashlimit-above",
        &rate,
        "--hashlimit-mode",
        "srcip",
        "--hashlimit-name",
        "fw",
        "--hashlimit-htable-size",
        "65536",
        "--hashlimit-htable-max",
        "1048576",
        "-j",
        "DROP",
    ])?;
    // A rule without a target, only to count what the hashlimit rule let through.
    ns.exec(&[
        "iptables",
        "-w",
        "-t",
        "raw",
        "-A",
        "PREROUTING",
        "-i",
        ifname,
    ])?;
    Ok(())
}

/// Removes the raw table's PREROUTING rules inside `ns`.
pub fn iptables_flush(ns: &Netns) -> Result<()> {
    ns.exec(&["iptables", "-w", "-t", "raw", "-F", "PREROUTING"])?;
    Ok(())
}

/// (packets the hashlimit rule dropped, packets the counting rule after it saw) in `ns`.
pub fn iptables_counters(ns: &Netns) -> Result<(u64, u64)> {
    let out = ns.exec(&[
        "iptables",
        "-w",
        "-t",
        "raw",
        "-L",
        "PREROUTING",
        "-v",
        "-x",
        "-n",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut passed = 0;
    let mut dropped = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(n) = fields.first().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if fields.get(2) == Some(&"DROP") {
            dropped += n;
        } else {
            passed += n;
        }
    }
    Ok((dropped, passed))
}

// ---------------------------------------------------------------------------------------------
// CPU time.

/// Busy time of the whole machine so far (user + nice + system + irq + softirq, all CPUs),
/// from `/proc/stat`.
pub fn cpu_busy() -> Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(f.len() >= 7, "short cpu line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq [steal ...]
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(
        busy.saturating_mul(1_000_000_000) / hz,
    ))
}

/// Softirq time so far, all CPUs, from `/proc/stat`.
pub fn cpu_softirq() -> Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let softirq: u64 = line
        .split_whitespace()
        .nth(7)
        .and_then(|x| x.parse().ok())
        .context("no softirq field in /proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(
        softirq.saturating_mul(1_000_000_000) / hz,
    ))
}
