//! The SYN challenge through `BPF_PROG_TEST_RUN`, against real listeners: the program runs in
//! a namespace of the test's own (test runs use its loopback device, so the socket lookups
//! see that namespace's sockets) with `net.ipv4.tcp_syncookies = 2` there.
//!
//! Frames and checksums are built here independently of floodwall's code (RFC 1071 sums),
//! and every SYN-ACK is checked field by field; a valid cookie is shown valid by the kernel
//! accepting the ACK that returns it.

use std::net::{IpAddr, TcpListener};

use anyhow::{Context as _, Result, ensure};
use filter_common::Reason;
use floodwall::{
    limits::{Limits, SynCookies},
    state::ListKind,
};
use floodwall_tests::{netns::Netns, netns::run_in, program::Loaded};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const PORT4: u16 = 8080;
const PORT6: u16 = 8081;
const NO_LISTENER: u16 = 9;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_RST: u8 = 0x04;

fn sum(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    acc
}

fn checksum(acc: u32) -> u16 {
    let mut acc = acc;
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo(src: &[u8], dst: &[u8], len: usize) -> u32 {
    sum(src, 0) + sum(dst, 0) + 6 + len as u32
}

/// A TCP segment in an Ethernet frame, checksums computed unless told otherwise.
#[derive(Clone)]
struct Segment {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
    vlans: Vec<u16>,
    ipv4_options: Vec<u8>,
    /// IPv6 extension headers, each whole with its next-header byte set by the builder.
    ipv6_ext: Vec<Vec<u8>>,
    more_fragments: bool,
    bad_ip_checksum: bool,
    bad_tcp_checksum: bool,
}

fn syn(src: &str, dport: u16) -> Segment {
    let src: IpAddr = src.parse().expect("address");
    let dst: IpAddr = if src.is_ipv4() {
        "192.0.2.1".parse().expect("address")
    } else {
        "2001:db8::1".parse().expect("address")
    };
    Segment {
        src,
        dst,
        sport: 40_000,
        dport,
        seq: 0xdead_beef,
        ack: 0,
        flags: TCP_SYN,
        // MSS 1460, SACK permitted, NOP, window scale 7.
        options: vec![2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7, 1, 1],
        payload: Vec::new(),
        vlans: Vec::new(),
        ipv4_options: Vec::new(),
        ipv6_ext: Vec::new(),
        more_fragments: false,
        bad_ip_checksum: false,
        bad_tcp_checksum: false,
    }
}

impl Segment {
    fn build(&self) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        let hlen = 20 + self.options.len();
        assert_eq!(hlen % 4, 0, "options must fill whole words");
        tcp.push(((hlen / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&self.options);
        tcp.extend_from_slice(&self.payload);
        let (src, dst) = (addr_bytes(self.src), addr_bytes(self.dst));
        let mut csum = checksum(sum(&tcp, pseudo(&src, &dst, tcp.len())));
        if self.bad_tcp_checksum {
            csum ^= 0x0101;
        }
        tcp[16..18].copy_from_slice(&csum.to_be_bytes());

        let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        let ether = if self.src.is_ipv4() {
            0x0800u16
        } else {
            0x86dd
        };
        for (i, vid) in self.vlans.iter().enumerate() {
            let tpid: u16 = if i == 0 && self.vlans.len() == 2 {
                0x88a8
            } else {
                0x8100
            };
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        frame.extend_from_slice(&ether.to_be_bytes());
        if self.src.is_ipv4() {
            let ihl = 20 + self.ipv4_options.len();
            let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
            ip.extend_from_slice(&((ihl + tcp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34]);
            ip.extend_from_slice(
                &(if self.more_fragments {
                    0x2000u16
                } else {
                    0x4000
                })
                .to_be_bytes(),
            );
            ip.extend_from_slice(&[64, 6, 0, 0]);
            ip.extend_from_slice(&src);
            ip.extend_from_slice(&dst);
            ip.extend_from_slice(&self.ipv4_options);
            let mut csum = checksum(sum(&ip, 0));
            if self.bad_ip_checksum {
                csum ^= 0x0101;
            }
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            frame.extend_from_slice(&ip);
        } else {
            let ext_len: usize = self.ipv6_ext.iter().map(Vec::len).sum();
            let first = if self.ipv6_ext.is_empty() { 6 } else { 60 };
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&((ext_len + tcp.len()) as u16).to_be_bytes());
            frame.extend_from_slice(&[first, 64]);
            frame.extend_from_slice(&src);
            frame.extend_from_slice(&dst);
            for (i, ext) in self.ipv6_ext.iter().enumerate() {
                let mut ext = ext.clone();
                ext[0] = if i + 1 == self.ipv6_ext.len() { 6 } else { 60 };
                frame.extend_from_slice(&ext);
            }
        }
        frame.extend_from_slice(&tcp);
        frame
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Checks the SYN-ACK the program made of `syn` and returns its sequence number (the cookie).
fn check_synack(syn: &Segment, out: &[u8]) -> Result<u32> {
    ensure!(
        out[0..6] == [0x02, 0, 0, 0, 0, 0x01],
        "destination MAC not swapped"
    );
    ensure!(
        out[6..12] == [0x02, 0, 0, 0, 0, 0x02],
        "source MAC not swapped"
    );
    let mut at = 12;
    for vid in &syn.vlans {
        ensure!(
            out[at + 2..at + 4] == vid.to_be_bytes(),
            "VLAN tag {vid} not kept"
        );
        at += 4;
    }
    at += 2;
    let (src, dst) = (addr_bytes(syn.src), addr_bytes(syn.dst));
    let tcp = if syn.src.is_ipv4() {
        let ip = &out[at..at + 20];
        ensure!(
            ip[0] == 0x45,
            "IPv4 header not a plain 20 bytes: {:#x}",
            ip[0]
        );
        ensure!(checksum(sum(ip, 0)) == 0, "bad IPv4 header checksum");
        ensure!(ip[9] == 6, "not TCP");
        ensure!(
            ip[12..16] == dst[..] && ip[16..20] == src[..],
            "addresses not swapped"
        );
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        ensure!(
            out.len() == at + total,
            "frame {} bytes, IP says {}",
            out.len(),
            at + total
        );
        &out[at + 20..]
    } else {
        let ip = &out[at..at + 40];
        ensure!(
            ip[6] == 6,
            "IPv6 next header {} (extension headers echoed?)",
            ip[6]
        );
        ensure!(
            ip[8..24] == dst[..] && ip[24..40] == src[..],
            "addresses not swapped"
        );
        let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        ensure!(
            out.len() == at + 40 + payload,
            "frame length disagrees with IPv6 payload length"
        );
        &out[at + 40..]
    };
    ensure!(
        checksum(sum(tcp, pseudo(&dst, &src, tcp.len()))) == 0,
        "bad TCP checksum"
    );
    ensure!(
        u16::from_be_bytes([tcp[0], tcp[1]]) == syn.dport,
        "source port"
    );
    ensure!(
        u16::from_be_bytes([tcp[2], tcp[3]]) == syn.sport,
        "destination port"
    );
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    ensure!(ack == syn.seq.wrapping_add(1), "ack {ack:#x}, want seq + 1");
    ensure!(tcp[13] == TCP_SYN | TCP_ACK, "flags {:#x}", tcp[13]);
    let hlen = (tcp[12] >> 4) as usize * 4;
    ensure!(
        hlen == tcp.len() && hlen >= 24,
        "TCP header {hlen} of {} bytes",
        tcp.len()
    );
    ensure!(tcp[20] == 2 && tcp[21] == 4, "no MSS option first");
    let mss = u16::from_be_bytes([tcp[22], tcp[23]]);
    ensure!((536..=1460).contains(&mss), "MSS {mss}");
    Ok(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]))
}

/// The ACK a real client sends back for the SYN-ACK with sequence number `cookie`.
fn ack_for(syn: &Segment, cookie: u32) -> Segment {
    Segment {
        seq: syn.seq.wrapping_add(1),
        ack: cookie.wrapping_add(1),
        flags: TCP_ACK,
        options: Vec::new(),
        ..syn.clone()
    }
}

/// A namespace with listeners on PORT4 (IPv4) and PORT6 (IPv6) and the sysctl the challenge
/// needs, and a loaded program with the challenge on.
struct Bench {
    ns: Netns,
    fw: Loaded,
    _listeners: Vec<TcpListener>,
}

impl Bench {
    fn new(limits: Limits) -> Result<Bench> {
        let ns = Netns::new("syn")?;
        let listeners = run_in(&ns, || -> Result<Vec<TcpListener>> {
            std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2\n")
                .context("setting tcp_syncookies in the test namespace")?;
            Ok(vec![
                TcpListener::bind(("0.0.0.0", PORT4))?,
                TcpListener::bind(("::", PORT6))?,
            ])
        })??;
        let fw = Loaded::new()?;
        fw.set_limits(&Limits {
            syn_cookies: SynCookies::On,
            ..limits
        })?;
        Ok(Bench {
            ns,
            fw,
            _listeners: listeners,
        })
    }

    /// Runs `seg` in the namespace: the verdict, the one reason it was counted under, and the
    /// frame as the program left it.
    fn run(&self, seg: &Segment) -> Result<(u32, Reason, Vec<u8>)> {
        let frame = seg.build();
        let fw = &self.fw;
        run_in(&self.ns, || -> Result<(u32, Reason, Vec<u8>)> {
            let before = fw.counters()?;
            let (verdict, out) = fw.run_out(&frame)?;
            let after = fw.counters()?;
            let changed: Vec<Reason> = Reason::ALL
                .iter()
                .copied()
                .filter(|r| *r != Reason::DryRunPassed && after[r] != before[r])
                .collect();
            ensure!(changed.len() == 1, "counted under {changed:?}");
            Ok((verdict, changed[0], out))
        })?
    }
}

fn answered(bench: &Bench, seg: &Segment, name: &str) -> Result<u32> {
    let (verdict, reason, out) = bench.run(seg)?;
    ensure!(
        (verdict, reason) == (XDP_TX, Reason::SynChallenged),
        "{name}: got {verdict} {reason:?}, want XDP_TX syn_challenged"
    );
    check_synack(seg, &out).with_context(|| format!("{name}: the SYN-ACK"))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn syns_are_answered_and_their_cookies_prove_the_source() -> Result<()> {
    let bench = Bench::new(Limits::default())?;
    let mut cases = Vec::new();
    let plain4 = syn("198.51.100.10", PORT4);
    cases.push(("IPv4", plain4.clone()));
    cases.push((
        "IPv4 with options",
        Segment {
            src: "198.51.100.11".parse()?,
            // Two NOPs, a router-alert option (4 bytes), end of list padding: 8 bytes.
            ipv4_options: vec![1, 1, 0x94, 4, 0, 0, 0, 0],
            ..plain4.clone()
        },
    ));
    cases.push((
        "IPv4 in one VLAN tag",
        Segment {
            src: "198.51.100.12".parse()?,
            vlans: vec![7],
            ..plain4.clone()
        },
    ));
    cases.push((
        "IPv4 in two VLAN tags",
        Segment {
            src: "198.51.100.13".parse()?,
            vlans: vec![100, 7],
            ..plain4.clone()
        },
    ));
    let plain6 = syn("2001:db8:1::10", PORT6);
    cases.push(("IPv6", plain6.clone()));
    cases.push((
        "IPv6 in a VLAN tag",
        Segment {
            src: "2001:db8:2::10".parse()?,
            vlans: vec![7],
            ..plain6.clone()
        },
    ));
    cases.push((
        "IPv6 with a destination-options header",
        Segment {
            src: "2001:db8:3::10".parse()?,
            ipv6_ext: vec![vec![0, 0, 1, 4, 0, 0, 0, 0]],
            ..plain6.clone()
        },
    ));
    for (name, seg) in &cases {
        let cookie = answered(&bench, seg, name)?;
        // The kernel checks the cookie: the client's ACK proves the source.
        let (verdict, reason, _) = bench.run(&ack_for(seg, cookie))?;
        ensure!(
            (verdict, reason) == (XDP_PASS, Reason::SynProven),
            "{name}: the ACK got {verdict} {reason:?}, want pass syn_proven"
        );
        // Now known: never challenged again.
        let (verdict, reason, _) = bench.run(&Segment {
            sport: 40_001,
            ..seg.clone()
        })?;
        ensure!(
            (verdict, reason) == (XDP_PASS, Reason::Passed),
            "{name}: a known source's SYN got {verdict} {reason:?}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn what_must_never_be_answered_is_not() -> Result<()> {
    let bench = Bench::new(Limits::default())?;
    let base = syn("203.0.113.1", PORT4);
    let mut n = 0u8;
    let mut next_src = |seg: &Segment| {
        n += 1;
        Segment {
            src: IpAddr::from([203, 0, 113, n]),
            ..seg.clone()
        }
    };
    let cases = [
        (
            "bad TCP checksum",
            Segment {
                bad_tcp_checksum: true,
                ..next_src(&base)
            },
        ),
        (
            "bad IPv4 checksum",
            Segment {
                bad_ip_checksum: true,
                ..next_src(&base)
            },
        ),
        (
            "a fragment",
            Segment {
                more_fragments: true,
                ..next_src(&base)
            },
        ),
        (
            "SYN+ACK",
            Segment {
                flags: TCP_SYN | TCP_ACK,
                ..next_src(&base)
            },
        ),
        (
            "SYN+RST",
            Segment {
                flags: TCP_SYN | TCP_RST,
                ..next_src(&base)
            },
        ),
        (
            "RST",
            Segment {
                flags: TCP_RST,
                ..next_src(&base)
            },
        ),
        (
            "no listener",
            Segment {
                dport: NO_LISTENER,
                ..next_src(&base)
            },
        ),
        (
            "SYN with data",
            Segment {
                payload: vec![1, 2, 3, 4],
                ..next_src(&base)
            },
        ),
        (
            "bad TCP checksum, IPv6",
            Segment {
                bad_tcp_checksum: true,
                ..syn("2001:db8:9::1", PORT6)
            },
        ),
    ];
    for (name, seg) in &cases {
        let (verdict, reason, _) = bench.run(seg)?;
        ensure!(
            verdict == XDP_PASS && reason == Reason::Passed,
            "{name}: got {verdict} {reason:?}, want passed unanswered (no limits set)"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_bad_cookie_is_dropped_and_lists_come_first() -> Result<()> {
    let bench = Bench::new(Limits::default())?;
    // A SYN first, so the listener has recently sent cookies.
    let seg = syn("198.51.100.50", PORT4);
    let cookie = answered(&bench, &seg, "SYN")?;
    let forged = ack_for(&syn("198.51.100.51", PORT4), cookie);
    let (verdict, reason, _) = bench.run(&forged)?;
    ensure!(
        (verdict, reason) == (XDP_DROP, Reason::SynBadCookie),
        "a cookie for another address got {verdict} {reason:?}"
    );
    let (verdict, reason, _) = bench.run(&ack_for(&seg, cookie ^ 0x8000_0000))?;
    ensure!(
        (verdict, reason) == (XDP_DROP, Reason::SynBadCookie),
        "a wrong cookie got {verdict} {reason:?}"
    );
    // Blocklist before the challenge: a blocked source is never answered.
    bench.fw.add(
        ListKind::Block,
        &["198.51.100.60", "2001:db8:bad::/48"],
        None,
    )?;
    for src in ["198.51.100.60", "2001:db8:bad::1"] {
        let port = if src.contains(':') { PORT6 } else { PORT4 };
        let (verdict, reason, _) = bench.run(&syn(src, port))?;
        ensure!(
            (verdict, reason) == (XDP_DROP, Reason::Blocklisted),
            "blocked {src}: got {verdict} {reason:?}"
        );
    }
    // Allowlisted sources are not challenged either.
    bench.fw.add(ListKind::Allow, &["198.51.100.61"], None)?;
    let (verdict, reason, _) = bench.run(&syn("198.51.100.61", PORT4))?;
    ensure!(
        (verdict, reason) == (XDP_PASS, Reason::Allowlisted),
        "allowlisted: got {verdict} {reason:?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn dry_run_counts_the_challenge_and_passes() -> Result<()> {
    let bench = Bench::new(Limits {
        dry_run: true,
        ..Limits::default()
    })?;
    let seg = syn("198.51.100.70", PORT4);
    let frame = seg.build();
    let (verdict, reason, out) = bench.run(&seg)?;
    ensure!(
        (verdict, reason) == (XDP_PASS, Reason::SynChallenged),
        "got {verdict} {reason:?}"
    );
    ensure!(out == frame, "dry-run rewrote the frame");
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn with_the_challenge_off_nothing_is_answered() -> Result<()> {
    let bench = Bench::new(Limits::default())?;
    bench.fw.set_limits(&Limits::default())?;
    let (verdict, reason, _) = bench.run(&syn("198.51.100.80", PORT4))?;
    ensure!(
        (verdict, reason) == (XDP_PASS, Reason::Passed),
        "got {verdict} {reason:?}"
    );
    Ok(())
}
