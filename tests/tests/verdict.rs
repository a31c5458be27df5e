//! Table-driven verdicts of the XDP program on crafted frames, through `BPF_PROG_TEST_RUN`:
//! every header layout the parser knows, truncation, fragments, protocols, lists with expiry,
//! the per-source, newcomer and global limits, dry-run and the malformed action.
//!
//! Each test loads its own program, so state never leaks between tests. Rates are 1 pps (or a
//! byte rate whose burst takes seconds to refill) so timing on a busy machine cannot change a
//! verdict.

use std::{thread::sleep, time::Duration};

use anyhow::{Result, bail, ensure};
use filter_common::{Bucket, ListEntry, Reason, byte_cost, gcra};
use floodwall::{
    limits::{Limits, MalformedAction},
    state::ListKind,
};
use floodwall_tests::{
    frames::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Frame, NEXTHDR_AUTH,
        NEXTHDR_DEST, NEXTHDR_FRAGMENT, NEXTHDR_HOP, NEXTHDR_NONE, NEXTHDR_ROUTING, PROTO_ESP,
        PROTO_EXPERIMENTAL, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
        ipv4_fragment, ipv6_chain, ipv6_fragment_header, udp,
    },
    program::Loaded,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The parser's bound on IPv6 extension headers (filter-ebpf `parse::MAX_EXT_HEADERS`).
const MAX_EXT_HEADERS: usize = 8;

const BLOCKED4: [u8; 4] = [198, 51, 100, 7];
const CLEAN4: [u8; 4] = [198, 51, 100, 8];
/// Inside the blocked 2001:db8:bad::/48.
const BLOCKED6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1,
];
const CLEAN6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xae, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1,
];

/// One row: a frame and what the program must do with it.
struct Case {
    name: String,
    frame: Vec<u8>,
    verdict: u32,
    reason: Reason,
    /// Whether the frame is also counted under `dry_run`.
    dry_run: bool,
}

fn case(name: impl Into<String>, frame: Vec<u8>, verdict: u32, reason: Reason) -> Case {
    Case {
        name: name.into(),
        frame,
        verdict,
        reason,
        dry_run: false,
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs every case in order and reports all mismatches at once.
fn check(fw: &Loaded, cases: &[Case]) -> Result<()> {
    let mut failures = Vec::new();
    for c in cases {
        let got = fw.verdict(&c.frame)?;
        let want = (c.verdict, c.reason, c.dry_run);
        if got != want {
            failures.push(format!(
                "{}: got {got:?}, want {want:?}\n    frame {}",
                c.name,
                hex(&c.frame)
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} cases failed:\n  {}",
            failures.len(),
            cases.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// A program with 198.51.100.7 and 2001:db8:bad::/48 on the blocklist.
fn with_blocklist() -> Result<Loaded> {
    let fw = Loaded::new()?;
    fw.add(
        ListKind::Block,
        &["198.51.100.7", "2001:db8:bad::/48"],
        None,
    )?;
    Ok(fw)
}

/// The same layout from the blocked and from the clean source: dropped and passed.
fn both(cases: &mut Vec<Case>, name: &str, build: impl Fn(bool) -> Vec<u8>) {
    cases.push(case(
        format!("{name}, blocked source"),
        build(true),
        XDP_DROP,
        Reason::Blocklisted,
    ));
    cases.push(case(
        format!("{name}, clean source"),
        build(false),
        XDP_PASS,
        Reason::Passed,
    ));
}

fn src4(blocked: bool) -> [u8; 4] {
    if blocked { BLOCKED4 } else { CLEAN4 }
}

fn src6(blocked: bool) -> [u8; 16] {
    if blocked { BLOCKED6 } else { CLEAN6 }
}

/// UDP over IPv4 behind the VLAN tags `tags` (outermost first).
fn tagged4(tags: &[u16], src: [u8; 4]) -> Vec<u8> {
    let mut f = Frame::eth(tags.first().copied().unwrap_or(ETH_P_IP));
    for (i, _) in tags.iter().enumerate() {
        f = f.vlan(100 + i as u16, tags.get(i + 1).copied().unwrap_or(ETH_P_IP));
    }
    f.ipv4(src, [192, 0, 2, 1], PROTO_UDP, &[], 8)
        .raw(&[0; 8])
        .build()
}

/// UDP over IPv6 behind the VLAN tags `tags`.
fn tagged6(tags: &[u16], src: [u8; 16]) -> Vec<u8> {
    let mut f = Frame::eth(tags.first().copied().unwrap_or(ETH_P_IPV6));
    for (i, _) in tags.iter().enumerate() {
        f = f.vlan(
            100 + i as u16,
            tags.get(i + 1).copied().unwrap_or(ETH_P_IPV6),
        );
    }
    f.ipv6(src, CLEAN6, PROTO_UDP, 8).raw(&[0; 8]).build()
}

/// IPv4 options: record route (7 bytes) + end of list, padded to 12 bytes.
const RR_OPTIONS: [u8; 12] = [7, 7, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0];

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn every_header_layout_finds_the_source() -> Result<()> {
    let fw = with_blocklist()?;
    let mut cases = Vec::new();
    both(&mut cases, "ipv4", |b| udp(src4(b).into(), 32));
    both(&mut cases, "ipv6", |b| udp(src6(b).into(), 32));
    both(&mut cases, "802.1Q ipv4", |b| {
        tagged4(&[ETH_P_8021Q], src4(b))
    });
    both(&mut cases, "802.1Q ipv6", |b| {
        tagged6(&[ETH_P_8021Q], src6(b))
    });
    both(&mut cases, "802.1ad+802.1Q ipv4", |b| {
        tagged4(&[ETH_P_8021AD, ETH_P_8021Q], src4(b))
    });
    both(&mut cases, "802.1ad+802.1Q ipv6", |b| {
        tagged6(&[ETH_P_8021AD, ETH_P_8021Q], src6(b))
    });
    both(&mut cases, "802.1Q+802.1Q ipv4", |b| {
        tagged4(&[ETH_P_8021Q, ETH_P_8021Q], src4(b))
    });
    for tags in [
        [ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
        [ETH_P_8021Q, ETH_P_8021Q, ETH_P_8021Q],
    ] {
        for b in [true, false] {
            cases.push(case(
                format!("three tags {tags:x?} ipv4 blocked={b}"),
                tagged4(&tags, src4(b)),
                XDP_DROP,
                Reason::Malformed,
            ));
            cases.push(case(
                format!("three tags {tags:x?} ipv6 blocked={b}"),
                tagged6(&tags, src6(b)),
                XDP_DROP,
                Reason::Malformed,
            ));
        }
    }
    both(&mut cases, "ipv4 with options", |b| {
        Frame::eth(ETH_P_IP)
            .ipv4(src4(b), [192, 0, 2, 1], PROTO_UDP, &RR_OPTIONS, 8)
            .raw(&[0; 8])
            .build()
    });
    both(&mut cases, "ipv4 with 40 bytes of options (ihl 15)", |b| {
        Frame::eth(ETH_P_IP)
            .ipv4(src4(b), [192, 0, 2, 1], PROTO_UDP, &[1; 40], 8)
            .raw(&[0; 8])
            .build()
    });
    both(&mut cases, "802.1ad+802.1Q ipv4 with options", |b| {
        Frame::eth(ETH_P_8021AD)
            .vlan(1, ETH_P_8021Q)
            .vlan(2, ETH_P_IP)
            .ipv4(src4(b), [192, 0, 2, 1], PROTO_TCP, &RR_OPTIONS, 20)
            .raw(&[0; 20])
            .build()
    });
    let kinds = [
        ("hop-by-hop", NEXTHDR_HOP),
        ("routing", NEXTHDR_ROUTING),
        ("destination options", NEXTHDR_DEST),
        ("fragment", NEXTHDR_FRAGMENT),
        ("AH", NEXTHDR_AUTH),
    ];
    for (name, kind) in kinds {
        both(&mut cases, &format!("ipv6 {name}"), |b| {
            ipv6_chain(src6(b), &[kind], PROTO_UDP, 8)
        });
        both(&mut cases, &format!("802.1Q ipv6 {name} then tcp"), |b| {
            let mut frame = ipv6_chain(src6(b), &[kind], PROTO_TCP, 20);
            frame.splice(12..12, [0x81, 0x00, 0, 5]);
            frame
        });
    }
    let chain = [
        NEXTHDR_HOP,
        NEXTHDR_DEST,
        NEXTHDR_ROUTING,
        NEXTHDR_FRAGMENT,
        NEXTHDR_AUTH,
        NEXTHDR_DEST,
    ];
    both(
        &mut cases,
        "ipv6 chain hop,dest,routing,frag,AH,dest",
        |b| ipv6_chain(src6(b), &chain, PROTO_UDP, 8),
    );
    both(&mut cases, "ipv6 chain to 'no next header'", |b| {
        ipv6_chain(src6(b), &[NEXTHDR_HOP, NEXTHDR_DEST], NEXTHDR_NONE, 0)
    });
    let at_bound = [NEXTHDR_DEST; MAX_EXT_HEADERS];
    both(&mut cases, "ipv6 chain of exactly the bound", |b| {
        ipv6_chain(src6(b), &at_bound, PROTO_UDP, 8)
    });
    let mixed_at_bound = [
        NEXTHDR_HOP,
        NEXTHDR_ROUTING,
        NEXTHDR_AUTH,
        NEXTHDR_DEST,
        NEXTHDR_ROUTING,
        NEXTHDR_FRAGMENT,
        NEXTHDR_AUTH,
        NEXTHDR_DEST,
    ];
    both(&mut cases, "ipv6 mixed chain of exactly the bound", |b| {
        ipv6_chain(src6(b), &mixed_at_bound, PROTO_UDP, 8)
    });
    for extra in [1, 4] {
        let long = vec![NEXTHDR_DEST; MAX_EXT_HEADERS + extra];
        for b in [true, false] {
            cases.push(case(
                format!("ipv6 chain of bound+{extra}, blocked={b}"),
                ipv6_chain(src6(b), &long, PROTO_UDP, 8),
                XDP_DROP,
                Reason::Malformed,
            ));
        }
    }
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn fragments_of_blocked_sources_are_dropped() -> Result<()> {
    let fw = with_blocklist()?;
    let mut cases = Vec::new();
    for (name, more, offset) in [
        ("first", true, 0),
        ("middle", true, 185),
        ("last", false, 370),
    ] {
        both(&mut cases, &format!("ipv4 {name} fragment"), |b| {
            ipv4_fragment(src4(b), PROTO_UDP, &[], more, offset, 64)
        });
        both(&mut cases, &format!("ipv4 {name} fragment, options"), |b| {
            ipv4_fragment(src4(b), PROTO_UDP, &RR_OPTIONS, more, offset, 64)
        });
        both(&mut cases, &format!("ipv6 {name} fragment"), |b| {
            let hdr = ipv6_fragment_header(PROTO_UDP, offset, more, 7);
            Frame::eth(ETH_P_IPV6)
                .ipv6(src6(b), CLEAN6, NEXTHDR_FRAGMENT, hdr.len() + 64)
                .raw(&hdr)
                .raw(&[0xee; 64])
                .build()
        });
        both(
            &mut cases,
            &format!("ipv6 {name} fragment after hop-by-hop"),
            |b| {
                let mut hop = vec![NEXTHDR_FRAGMENT, 0, 1, 4, 0, 0, 0, 0];
                hop.extend_from_slice(&ipv6_fragment_header(PROTO_TCP, offset, more, 8));
                Frame::eth(ETH_P_IPV6)
                    .ipv6(src6(b), CLEAN6, NEXTHDR_HOP, hop.len() + 64)
                    .raw(&hop)
                    .raw(&[0xee; 64])
                    .build()
            },
        );
    }
    // A non-first fragment carries payload after its fragment header, even when the next
    // header field names an extension header (one in the fragmentable part, RFC 8200 4.5):
    // the payload bytes must not be read as a header. 0xff there would claim 2 KiB.
    both(
        &mut cases,
        "ipv6 non-first fragment whose fragmentable part starts with dest options",
        |b| {
            let hdr = ipv6_fragment_header(NEXTHDR_DEST, 185, true, 9);
            Frame::eth(ETH_P_IPV6)
                .ipv6(src6(b), CLEAN6, NEXTHDR_FRAGMENT, hdr.len() + 64)
                .raw(&hdr)
                .raw(&[0xff; 64])
                .build()
        },
    );
    // The first fragment's chain is still walked: a lying header there is malformed.
    for b in [true, false] {
        let hdr = ipv6_fragment_header(NEXTHDR_DEST, 0, true, 9);
        cases.push(case(
            format!("ipv6 first fragment with a truncated dest options header, blocked={b}"),
            Frame::eth(ETH_P_IPV6)
                .ipv6(src6(b), CLEAN6, NEXTHDR_FRAGMENT, hdr.len() + 64)
                .raw(&hdr)
                .raw(&[0xff; 64])
                .build(),
            XDP_DROP,
            Reason::Malformed,
        ));
    }
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn every_protocol_from_a_blocked_source_is_dropped() -> Result<()> {
    let fw = with_blocklist()?;
    let mut cases = Vec::new();
    for (name, proto) in [
        ("icmp", PROTO_ICMP),
        ("tcp", PROTO_TCP),
        ("udp", PROTO_UDP),
        ("gre", PROTO_GRE),
        ("esp", PROTO_ESP),
        ("AH", NEXTHDR_AUTH),
        ("unknown 253", PROTO_EXPERIMENTAL),
        ("icmpv6 over ipv4", PROTO_ICMPV6),
    ] {
        both(&mut cases, &format!("ipv4 {name}"), |b| {
            Frame::eth(ETH_P_IP)
                .ipv4(src4(b), [192, 0, 2, 1], proto, &[], 24)
                .raw(&[0x5a; 24])
                .build()
        });
    }
    for (name, proto) in [
        ("icmpv6", PROTO_ICMPV6),
        ("tcp", PROTO_TCP),
        ("gre", PROTO_GRE),
        ("esp", PROTO_ESP),
        ("unknown 253", PROTO_EXPERIMENTAL),
        ("no next header", NEXTHDR_NONE),
    ] {
        both(&mut cases, &format!("ipv6 {name}"), |b| {
            Frame::eth(ETH_P_IPV6)
                .ipv6(src6(b), CLEAN6, proto, 24)
                .raw(&[0x5a; 24])
                .build()
        });
        both(&mut cases, &format!("ipv6 {name} after a chain"), |b| {
            ipv6_chain(
                src6(b),
                &[NEXTHDR_HOP, NEXTHDR_FRAGMENT, NEXTHDR_AUTH],
                proto,
                24,
            )
        });
    }
    // Short frames (no payload at all) still carry the source.
    both(&mut cases, "ipv4 header only", |b| {
        Frame::eth(ETH_P_IP)
            .ipv4(src4(b), [192, 0, 2, 1], PROTO_EXPERIMENTAL, &[], 0)
            .build()
    });
    both(&mut cases, "ipv6 header only", |b| {
        Frame::eth(ETH_P_IPV6)
            .ipv6(src6(b), CLEAN6, NEXTHDR_NONE, 0)
            .build()
    });
    check(&fw, &cases)
}

/// Frames with the byte offsets where each of their headers ends; every cut short of the last
/// boundary is malformed.
/// A frame of several header layers: name, bytes, where each header ends, and from which
/// length on a cut frame still holds its whole fixed IPv6 header (so its source can be read).
type Layered = (&'static str, Vec<u8>, Vec<usize>, Option<usize>);

fn layered_frames() -> Vec<Layered> {
    let v4opts = Frame::eth(ETH_P_8021AD)
        .vlan(1, ETH_P_8021Q)
        .vlan(2, ETH_P_IP)
        .ipv4(BLOCKED4, [192, 0, 2, 1], PROTO_UDP, &RR_OPTIONS, 8)
        .raw(&[0; 8])
        .build();
    // eth, first tag, second tag, ipv4 base, options.
    let v4opts_ends = vec![14, 18, 22, 42, 54];
    let v4 = Frame::eth(ETH_P_8021Q)
        .vlan(1, ETH_P_IP)
        .ipv4(CLEAN4, [192, 0, 2, 1], PROTO_UDP, &[], 8)
        .raw(&[0; 8])
        .build();
    let v4_ends = vec![14, 18, 38];
    let chain = [
        NEXTHDR_HOP,
        NEXTHDR_ROUTING,
        NEXTHDR_DEST,
        NEXTHDR_FRAGMENT,
        NEXTHDR_AUTH,
    ];
    let v6 = ipv6_chain(CLEAN6, &chain, PROTO_UDP, 8);
    // eth, ipv6 base, hop 16, routing 24, dest 16, fragment 8, AH 24.
    let v6_ends = vec![14, 54, 70, 94, 110, 118, 142];
    let mut v6_tagged = ipv6_chain(BLOCKED6, &[NEXTHDR_DEST], PROTO_TCP, 20);
    v6_tagged.splice(12..12, [0x81, 0x00, 0, 5]);
    let v6_tagged_ends = vec![14, 18, 58, 74];
    vec![
        ("qinq ipv4 with options", v4opts, v4opts_ends, None),
        ("802.1Q ipv4", v4, v4_ends, None),
        ("ipv6 hop,routing,dest,frag,AH", v6, v6_ends, Some(54)),
        ("802.1Q ipv6 dest", v6_tagged, v6_tagged_ends, Some(58)),
    ]
}

/// With `lists_apply` (malformed frames passed), a cut frame whose source can be read gets its
/// source's verdict: the blocked one is dropped as blocklisted.
fn truncation_cases(malformed: u32, dry_run: bool, lists_apply: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, frame, ends, source_from) in layered_frames() {
        let last = *ends.last().unwrap_or(&0);
        let blocked = name.contains("qinq") || name.contains("802.1Q ipv6");
        // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header, so cuts start
        // at 14: an Ethernet header whose payload is missing. Every cut inside a header, and
        // at every boundary before the last, is malformed.
        for cut in 14..last {
            let readable = source_from.is_some_and(|from| cut >= from);
            let (verdict, reason) = if lists_apply && readable && blocked {
                (XDP_DROP, Reason::Blocklisted)
            } else {
                (malformed, Reason::Malformed)
            };
            let mut c = case(
                format!("{name} cut at {cut} (header ends {ends:?})"),
                frame[..cut].to_vec(),
                verdict,
                reason,
            );
            c.dry_run = dry_run;
            cases.push(c);
        }
        // Cut right after the last header: complete, just no payload.
        let (verdict, reason) = if blocked {
            (XDP_DROP, Reason::Blocklisted)
        } else {
            (XDP_PASS, Reason::Passed)
        };
        let mut c = case(
            format!("{name} cut after its last header at {last}"),
            frame[..last].to_vec(),
            if dry_run { XDP_PASS } else { verdict },
            reason,
        );
        c.dry_run = dry_run && blocked;
        cases.push(c);
    }
    cases
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn truncation_at_every_header_boundary_is_malformed() -> Result<()> {
    let fw = with_blocklist()?;
    check(&fw, &truncation_cases(XDP_DROP, false, false))?;
    fw.set_limits(&Limits {
        malformed: MalformedAction::Pass,
        ..Limits::default()
    })?;
    check(&fw, &truncation_cases(XDP_PASS, false, true))?;
    // Dry-run with the default action: malformed frames pass and count as dry-run too.
    fw.set_limits(&Limits {
        dry_run: true,
        ..Limits::default()
    })?;
    check(&fw, &truncation_cases(XDP_PASS, true, false))?;
    // Frames shorter than an Ethernet header never reach the program.
    anyhow::ensure!(
        fw.run(&[0u8; 13]).is_err(),
        "BPF_PROG_TEST_RUN accepted a 13-byte XDP frame; add cuts below 14 to this test"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn malformed_ip_headers() -> Result<()> {
    let fw = with_blocklist()?;
    let good = udp(CLEAN4.into(), 8);
    let mut cases = Vec::new();
    let mut bad = |name: &str, at: usize, value: u8| {
        let mut f = good.clone();
        f[at] = value;
        cases.push(case(name, f, XDP_DROP, Reason::Malformed));
    };
    bad("ipv4 version 6 under ethertype ipv4", 14, 0x65);
    bad("ipv4 version 0", 14, 0x05);
    bad("ipv4 ihl 0", 14, 0x40);
    bad("ipv4 ihl 4", 14, 0x44);
    bad("ipv4 ihl 15 past the frame", 14, 0x4f);
    bad("ipv4 total length below the header", 17, 19);
    let good6 = udp(CLEAN6.into(), 8);
    let mut f = good6.clone();
    f[14] = 0x40;
    cases.push(case("ipv6 version 4", f, XDP_DROP, Reason::Malformed));
    let mut f = good6;
    f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    cases.push(case(
        "ipv6 header under ethertype ipv4",
        f,
        XDP_DROP,
        Reason::Malformed,
    ));
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn arp_and_other_non_ip_pass() -> Result<()> {
    let fw = with_blocklist()?;
    // An ARP request whose sender protocol address is the blocked one: ARP is not IP.
    let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1];
    arp.extend_from_slice(&BLOCKED4);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[192, 0, 2, 1]);
    let cases = vec![
        case(
            "arp",
            Frame::eth(ETH_P_ARP).raw(&arp).build(),
            XDP_PASS,
            Reason::NonIp,
        ),
        case(
            "802.1Q arp",
            Frame::eth(ETH_P_8021Q).vlan(3, ETH_P_ARP).raw(&arp).build(),
            XDP_PASS,
            Reason::NonIp,
        ),
        case(
            "qinq arp",
            Frame::eth(ETH_P_8021AD)
                .vlan(3, ETH_P_8021Q)
                .vlan(4, ETH_P_ARP)
                .raw(&arp)
                .build(),
            XDP_PASS,
            Reason::NonIp,
        ),
        case(
            "lldp",
            Frame::eth(0x88cc).raw(&[0; 40]).build(),
            XDP_PASS,
            Reason::NonIp,
        ),
        case(
            "802.3 length field",
            Frame::eth(46).raw(&[0xaa; 46]).build(),
            XDP_PASS,
            Reason::NonIp,
        ),
        case(
            "bare ethernet header, arp",
            Frame::eth(ETH_P_ARP).build(),
            XDP_PASS,
            Reason::NonIp,
        ),
    ];
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn allowlist_wins_over_blocklist_and_limits() -> Result<()> {
    let fw = Loaded::new()?;
    fw.add(
        ListKind::Block,
        &[
            "203.0.113.0/24",
            "203.0.114.5",
            "2001:db8:a::/48",
            "2001:db8:b::5",
        ],
        None,
    )?;
    fw.add(
        ListKind::Allow,
        &[
            "203.0.113.5",
            "203.0.114.0/24",
            "2001:db8:a::5",
            "2001:db8:b::/48",
        ],
        None,
    )?;
    fw.set_limits(&Limits {
        pps: 1,
        burst: 1,
        global_pps: 1,
        ..Limits::default()
    })?;
    let mut cases = Vec::new();
    for src in [
        "203.0.113.5",
        "203.0.114.5",
        "2001:db8:a::5",
        "2001:db8:b::5",
    ] {
        // Allowlisted frames bypass the 1-packet per-source and global budgets too.
        for i in 0..3 {
            cases.push(case(
                format!("{src} #{i}"),
                udp(src.parse()?, 16),
                XDP_PASS,
                Reason::Allowlisted,
            ));
        }
    }
    cases.push(case(
        "203.0.113.6 only blocked",
        udp("203.0.113.6".parse()?, 16),
        XDP_DROP,
        Reason::Blocklisted,
    ));
    cases.push(case(
        "2001:db8:a::6 only blocked",
        udp("2001:db8:a::6".parse()?, 16),
        XDP_DROP,
        Reason::Blocklisted,
    ));
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn host_and_prefix_entries() -> Result<()> {
    let fw = Loaded::new()?;
    fw.add(
        ListKind::Block,
        &[
            "192.0.2.9",
            "198.51.100.0/24",
            "100.64.0.0/10",
            "2001:db8::9",
            "2001:db8:1:2::/64",
            "2001:db8:8000::/33",
        ],
        None,
    )?;
    let blocked = [
        "192.0.2.9",
        "198.51.100.0",
        "198.51.100.255",
        "100.64.0.1",
        "100.127.255.255",
        "2001:db8::9",
        "2001:db8:1:2::",
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
        "2001:db8:8000::1",
        "2001:db8:ffff:ffff::1",
    ];
    let clean = [
        "192.0.2.8",
        "192.0.2.10",
        "198.51.99.255",
        "198.51.101.0",
        "100.63.255.255",
        "100.128.0.0",
        "2001:db8::8",
        "2001:db8::9:0",
        "2001:db8:1:1:ffff:ffff:ffff:ffff",
        "2001:db8:1:3::",
        "2001:db8:7fff::1",
    ];
    let mut cases = Vec::new();
    for src in blocked {
        cases.push(case(
            src,
            udp(src.parse()?, 16),
            XDP_DROP,
            Reason::Blocklisted,
        ));
    }
    for src in clean {
        cases.push(case(src, udp(src.parse()?, 16), XDP_PASS, Reason::Passed));
    }
    check(&fw, &cases)
}

/// An expired prefix entry whose stored length is bad (longer than its own key) must not send
/// the retry back up the prefix lengths: that spent every retry on the same entry and hid the
/// active /8 that covers it.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_bad_expired_entry_never_hides_a_covering_prefix() -> Result<()> {
    let fw = Loaded::new()?;
    fw.add(ListKind::Block, &["10.0.0.0/8"], None)?;
    // Written raw: the controller always stores the right length.
    let data = aya::maps::MapData::from_pin(fw.paths.map_pin(filter_common::MAP_BLOCK4_NET))?;
    let mut trie: aya::maps::LpmTrie<_, [u8; 4], ListEntry> =
        aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(data))?;
    for (len, net) in [(200, [10, 1, 2, 0]), (33, [10, 1, 3, 0])] {
        let entry = ListEntry {
            // Long expired.
            expires_ns: 1,
            prefix_len: len,
            _pad: 0,
        };
        trie.insert(&aya::maps::lpm_trie::Key::new(24, net), entry, 0)?;
    }
    let cases = [
        case(
            "expired /24 with stored length 200 over an active /8",
            udp("10.1.2.3".parse()?, 16),
            XDP_DROP,
            Reason::Blocklisted,
        ),
        case(
            "expired /24 with stored length 33 over an active /8",
            udp("10.1.3.3".parse()?, 16),
            XDP_DROP,
            Reason::Blocklisted,
        ),
    ];
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn expired_entries_stop_matching_in_the_kernel() -> Result<()> {
    let fw = Loaded::new()?;
    // TTLs are whole seconds of wall-clock time; 2 s rather than 1 s keeps the entries active
    // for the first checks even when a wall-clock second ticks over during `add`.
    let ttl = Some(Duration::from_secs(2));
    fw.add(
        ListKind::Block,
        &["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"],
        None,
    )?;
    fw.add(
        ListKind::Block,
        &[
            // Hosts alone, and hosts under a permanent prefix.
            "198.51.100.60",
            "192.0.2.60",
            "2001:db9::60",
            // Deeply nested expiring prefixes over the permanent /8 and /32.
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.0/28",
            "10.1.2.0/30",
            "10.1.2.1",
            "2001:db8:e::/48",
            "2001:db8:1::/48",
            "2001:db8:1::/56",
            "2001:db8:1::/64",
            "2001:db8:1::/96",
            "2001:db8:1::/120",
            "2001:db8:1::7",
        ],
        ttl,
    )?;
    fw.add(ListKind::Allow, &["10.2.0.0/16", "2001:db8:2::/48"], ttl)?;
    let cases = |expired: bool| -> Result<Vec<Case>> {
        let mut cases = Vec::new();
        let mut row = |src: &str, before: (u32, Reason), after: (u32, Reason)| -> Result<()> {
            let (v, r) = if expired { after } else { before };
            cases.push(case(
                format!("{src}, expired={expired}"),
                udp(src.parse()?, 16),
                v,
                r,
            ));
            Ok(())
        };
        let drop = (XDP_DROP, Reason::Blocklisted);
        let pass = (XDP_PASS, Reason::Passed);
        let allowed = (XDP_PASS, Reason::Allowlisted);
        row("198.51.100.60", drop, pass)?;
        row("2001:db9::60", drop, pass)?;
        // An expired host entry does not hide the prefix around it.
        row("192.0.2.60", drop, drop)?;
        // Five expired levels, then the permanent /8 (or /32) still blocks.
        row("10.1.2.1", drop, drop)?;
        row("10.1.2.2", drop, drop)?;
        row("10.1.9.3", drop, drop)?;
        row("2001:db8:e::1", drop, drop)?;
        row("2001:db8:1::7", drop, drop)?;
        row("2001:db8:1::8", drop, drop)?;
        // An expired allow entry no longer shields from the blocklist.
        row("10.2.0.1", allowed, drop)?;
        row("2001:db8:2::1", allowed, drop)?;
        row("11.0.0.1", pass, pass)?;
        row("2001:dba::1", pass, pass)?;
        Ok(cases)
    };
    check(&fw, &cases(false)?)?;
    sleep(Duration::from_secs(3));
    // Nothing in userspace removed them: only the kernel's own expiry check changed.
    check(&fw, &cases(true)?)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn prefix_aggregation_shares_one_bucket() -> Result<()> {
    let fw = Loaded::new()?;
    fw.set_limits(&Limits {
        pps: 1,
        burst: 3,
        prefix4: 24,
        prefix6: 64,
        ..Limits::default()
    })?;
    let mut cases = Vec::new();
    let over = |i| {
        if i < 3 {
            (XDP_PASS, Reason::Passed)
        } else {
            (XDP_DROP, Reason::OverPps)
        }
    };
    for i in 0..5u8 {
        let (v, r) = over(usize::from(i));
        cases.push(case(
            format!("10.0.0.{}", i + 1),
            udp([10, 0, 0, i + 1].into(), 16),
            v,
            r,
        ));
    }
    cases.push(case(
        "10.0.1.1: another /24",
        udp([10, 0, 1, 1].into(), 16),
        XDP_PASS,
        Reason::Passed,
    ));
    for (i, src) in [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2:ffff::3",
        "2001:db8:1:2::4",
    ]
    .iter()
    .enumerate()
    {
        let (v, r) = over(i);
        cases.push(case(*src, udp(src.parse()?, 16), v, r));
    }
    cases.push(case(
        "2001:db8:1:3::1: another /64",
        udp("2001:db8:1:3::1".parse()?, 16),
        XDP_PASS,
        Reason::Passed,
    ));
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn per_source_packet_limit() -> Result<()> {
    let fw = Loaded::new()?;
    fw.set_limits(&Limits {
        pps: 1,
        burst: 2,
        ..Limits::default()
    })?;
    let a = udp([192, 0, 2, 10].into(), 16);
    let b = udp([192, 0, 2, 11].into(), 16);
    let c6 = udp("2001:db8::10".parse()?, 16);
    let pass = (XDP_PASS, Reason::Passed);
    let over = (XDP_DROP, Reason::OverPps);
    let rows = [
        ("a", &a, pass),
        ("a", &a, pass),
        ("a", &a, over),
        ("b", &b, pass),
        ("a", &a, over),
        ("b", &b, pass),
        ("b", &b, over),
        ("v6", &c6, pass),
        ("v6", &c6, pass),
        ("v6", &c6, over),
    ];
    let cases: Vec<Case> = rows
        .iter()
        .enumerate()
        .map(|(i, (n, f, (v, r)))| case(format!("#{i} {n}"), f.to_vec(), *v, *r))
        .collect();
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn per_source_byte_limit() -> Result<()> {
    let fw = Loaded::new()?;
    let limits = Limits {
        pps: 1,
        burst: 1000,
        bps: 1,
        burst_bytes: 65_535,
        ..Limits::default()
    };
    fw.set_limits(&limits)?;
    // 1 B/s with a burst of 65535 bytes: a byte takes a second to come back, so the counts
    // below do not depend on timing.
    let big = udp([192, 0, 2, 20].into(), 1400 - 42);
    assert_eq!(big.len(), 1400);
    let bucket = Bucket::bytes(1, 65_535);
    let cost = byte_cost(big.len() as u64, bucket.cost);
    let (mut tat, now, mut fits) = (0u64, 1_000_000_000u64, 0);
    while let Some(next) = gcra(tat, now, cost, bucket.tau) {
        tat = next;
        fits += 1;
    }
    assert_eq!(fits, 65_535 / 1400);
    let mut cases: Vec<Case> = (0..fits)
        .map(|i| case(format!("big #{i}"), big.clone(), XDP_PASS, Reason::Passed))
        .collect();
    cases.push(case("big over", big.clone(), XDP_DROP, Reason::OverBps));
    cases.push(case("big over again", big, XDP_DROP, Reason::OverBps));
    // What is left of the byte burst still takes a small frame, and other sources are
    // untouched.
    let left = 65_535 - fits * 1400;
    let small = udp([192, 0, 2, 20].into(), 64);
    assert!(small.len() < left);
    cases.push(case("small fits", small, XDP_PASS, Reason::Passed));
    cases.push(case(
        "other source",
        udp([192, 0, 2, 21].into(), 1400 - 42),
        XDP_PASS,
        Reason::Passed,
    ));
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn newcomers_share_one_bucket() -> Result<()> {
    let fw = Loaded::new()?;
    fw.set_limits(&Limits {
        pps: 100,
        burst: 100,
        new_sources: 1,
        newcomer_pps: 2,
        ..Limits::default()
    })?;
    let f = |last: u8| udp([198, 18, 0, last].into(), 16);
    let pass = (XDP_PASS, Reason::Passed);
    let limited = (XDP_DROP, Reason::NewcomerLimited);
    let rows = [
        // The first new source is admitted and gets state of its own.
        ("a admitted", f(1), pass),
        // The admission budget (1/s, burst 1) is spent: the rest share 2 newcomer packets.
        ("b newcomer", f(2), pass),
        ("c newcomer", f(3), pass),
        ("d newcomer-limited", f(4), limited),
        ("b again, still no state", f(2), limited),
        (
            "v6 newcomer-limited",
            udp("2001:db8::77".parse()?, 16),
            limited,
        ),
        // The admitted source keeps its own budget while newcomers are refused.
        ("a keeps its budget", f(1), pass),
        ("a keeps its budget 2", f(1), pass),
    ];
    let cases: Vec<Case> = rows
        .into_iter()
        .map(|(n, frame, (v, r))| case(n, frame, v, r))
        .collect();
    check(&fw, &cases)
}

/// A byte burst below 65,535 is what it says: 200 kB/s with a burst of 20 kB lets 20 frames
/// of 1000 B through from idle, not 65.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_small_byte_burst_is_exact() -> Result<()> {
    let fw = Loaded::new()?;
    fw.set_limits(&Limits {
        bps: 200_000,
        burst_bytes: 20_000,
        ..Limits::default()
    })?;
    let frame = udp([198, 51, 100, 42].into(), 1000 - 42);
    let passed = passes(&fw, &frame, 100)?;
    ensure!(
        (20..=21).contains(&passed),
        "{passed} frames of 1000 B passed a burst of 20,000 bytes"
    );
    Ok(())
}

/// Runs `frame` `n` times; how many passed.
fn passes(fw: &Loaded, frame: &[u8], n: usize) -> Result<usize> {
    let mut passed = 0;
    for _ in 0..n {
        if fw.run(frame)? == XDP_PASS {
            passed += 1;
        }
    }
    Ok(passed)
}

/// A frame a global cap drops gives back the tokens it took on the way: the source's own, the
/// newcomer bucket's, and the packet cap's when the byte cap drops it.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_global_cap_drop_gives_its_tokens_back() -> Result<()> {
    let fw = Loaded::new()?;
    let per_source = Limits {
        pps: 1,
        burst: 20,
        ..Limits::default()
    };
    fw.set_limits(&Limits {
        global_pps: 1,
        ..per_source.clone()
    })?;
    let frame = udp([198, 51, 100, 40].into(), 16);
    let under_cap = passes(&fw, &frame, 20)?;
    ensure!(
        under_cap == 1,
        "{under_cap} of 20 passed a cap of 1 pps, burst 1"
    );
    // The cap is lifted: the source's own burst, less the one frame that passed, is there.
    fw.set_limits(&per_source)?;
    let after = passes(&fw, &frame, 20)?;
    ensure!(
        after >= 19,
        "after the cap, {after} of 20 passed: the capped frames used up the source's burst"
    );

    // Newcomers: admission spent, the newcomer bucket (burst 20) shared, a cap of 1.
    let newcomers = Limits {
        pps: 1000,
        new_sources: 1,
        newcomer_pps: 20,
        ..Limits::default()
    };
    fw.set_limits(&Limits {
        global_pps: 1,
        ..newcomers.clone()
    })?;
    // The first new source spends admission (and the cap's one token).
    passes(&fw, &udp([203, 0, 113, 200].into(), 16), 1)?;
    let capped = (1..=20u8)
        .map(|i| passes(&fw, &udp([203, 0, 113, i].into(), 16), 1))
        .sum::<Result<usize>>()?;
    ensure!(capped == 0, "{capped} newcomers passed a spent cap");
    floodwall::limits::publish(
        &fw.paths,
        &newcomers,
        floodwall::store::Store::open(&fw.paths)?.list_bits()?,
    )?;
    let newcomer_passed = (21..=40u8)
        .map(|i| passes(&fw, &udp([203, 0, 113, i].into(), 16), 1))
        .sum::<Result<usize>>()?;
    ensure!(
        newcomer_passed >= 19,
        "{newcomer_passed} of 20 newcomers passed after the cap: capped frames used the bucket"
    );

    // The byte cap drops: the packet cap keeps its tokens. Bytes: 1000-byte frames against a
    // byte cap with a burst of 65,000 bytes.
    let caps = Limits {
        global_pps: 100,
        global_bps: 65_000,
        ..Limits::default()
    };
    fw.set_limits(&caps)?;
    let big = udp([198, 51, 100, 41].into(), 1000 - 42);
    let by_bytes = passes(&fw, &big, 100)?;
    ensure!(
        (60..=70).contains(&by_bytes),
        "{by_bytes} of 100 frames of 1000 B passed a byte burst of 65,000"
    );
    floodwall::limits::publish(
        &fw.paths,
        &Limits {
            global_bps: 0,
            ..caps
        },
        floodwall::store::Store::open(&fw.paths)?.list_bits()?,
    )?;
    let by_packets = passes(&fw, &big, 100)?;
    ensure!(
        by_packets + by_bytes >= 98,
        "{by_packets} passed the packet cap after {by_bytes}: byte-capped frames used its tokens"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn global_caps() -> Result<()> {
    let fw = Loaded::new()?;
    fw.add(ListKind::Block, &["192.0.2.99"], None)?;
    fw.set_limits(&Limits {
        global_pps: 2,
        ..Limits::default()
    })?;
    let cases = vec![
        case(
            "one",
            udp([192, 0, 2, 1].into(), 16),
            XDP_PASS,
            Reason::Passed,
        ),
        case(
            "two",
            udp([192, 0, 2, 2].into(), 16),
            XDP_PASS,
            Reason::Passed,
        ),
        case(
            "three",
            udp([192, 0, 2, 3].into(), 16),
            XDP_DROP,
            Reason::GlobalCap,
        ),
        case(
            "v6",
            udp("2001:db8::3".parse()?, 16),
            XDP_DROP,
            Reason::GlobalCap,
        ),
        // The blocklist decides before the cap.
        case(
            "blocked",
            udp([192, 0, 2, 99].into(), 16),
            XDP_DROP,
            Reason::Blocklisted,
        ),
        case(
            "arp",
            Frame::eth(ETH_P_ARP).raw(&[0; 28]).build(),
            XDP_PASS,
            Reason::NonIp,
        ),
    ];
    check(&fw, &cases)?;

    // A byte cap of 1 B/s: its burst is one second's worth but never less than the largest
    // frame (1522 bytes with no interface attached), and a byte takes a second to come back.
    fw.set_limits(&Limits {
        global_bps: 1,
        ..Limits::default()
    })?;
    let fits = 1522 / 1400;
    let mut cases: Vec<Case> = (0..fits)
        .map(|i| {
            case(
                format!("big #{i}"),
                udp([192, 0, 2, (i % 200) as u8 + 1].into(), 1400 - 42),
                XDP_PASS,
                Reason::Passed,
            )
        })
        .collect();
    cases.push(case(
        "big over",
        udp([192, 0, 2, 250].into(), 1400 - 42),
        XDP_DROP,
        Reason::GlobalCap,
    ));
    check(&fw, &cases)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn dry_run_passes_and_counts() -> Result<()> {
    let fw = with_blocklist()?;
    fw.set_limits(&Limits {
        dry_run: true,
        pps: 1,
        burst: 1,
        ..Limits::default()
    })?;
    let dry = |name: &str, frame: Vec<u8>, reason: Reason| Case {
        dry_run: true,
        ..case(name, frame, XDP_PASS, reason)
    };
    let cases = vec![
        dry("blocked v4", udp(BLOCKED4.into(), 16), Reason::Blocklisted),
        dry("blocked v6", udp(BLOCKED6.into(), 16), Reason::Blocklisted),
        case("clean", udp(CLEAN4.into(), 16), XDP_PASS, Reason::Passed),
        dry("clean over pps", udp(CLEAN4.into(), 16), Reason::OverPps),
        dry(
            "malformed",
            udp(CLEAN4.into(), 16)[..30].to_vec(),
            Reason::Malformed,
        ),
        case(
            "arp",
            Frame::eth(ETH_P_ARP).raw(&[0; 28]).build(),
            XDP_PASS,
            Reason::NonIp,
        ),
    ];
    check(&fw, &cases)?;
    // With malformed frames passed, dry-run has nothing to turn into a pass.
    fw.set_limits(&Limits {
        dry_run: true,
        malformed: MalformedAction::Pass,
        ..Limits::default()
    })?;
    check(
        &fw,
        &[case(
            "malformed, action pass",
            udp(CLEAN4.into(), 16)[..30].to_vec(),
            XDP_PASS,
            Reason::Malformed,
        )],
    )
}

/// While limits change, every frame sees one whole config: never the lists of one version
/// and the dry-run switch of the next. Version A blocklist-checks in dry-run (the blocked
/// source is counted under `blocklist` and `dry_run`, and passed); version B checks no list
/// (passed). A frame that read A's lists and then B's flags would be dropped as blocklisted
/// without `dry_run`: the `blocklist` count would run ahead of the `dry_run` count.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_frame_never_sees_a_half_written_config() -> Result<()> {
    const CHANGES: usize = 2_000;
    const RUN_TIME: Duration = Duration::from_secs(30);
    // Each version stays live until frames have run under it, so both are exercised whatever
    // the timing of the writes.
    const LIVE_AT_MOST: Duration = Duration::from_secs(1);
    let fw = with_blocklist()?;
    let max_frame = 1522;
    let a = Limits {
        dry_run: true,
        ..Limits::default()
    }
    .to_config(filter_common::LIST_BLOCK4_HOST, max_frame);
    let b = Limits::default().to_config(0, max_frame);
    let frame = udp(BLOCKED4.into(), 16);
    floodwall::kernel::write_config(&fw.paths, &b)?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (changes, runs) = std::thread::scope(|s| -> Result<(usize, u64)> {
        let writer = s.spawn(|| -> Result<usize> {
            floodwall_tests::program::pin_to_cpu(1 % floodwall_tests::program::cpus());
            let deadline = std::time::Instant::now() + RUN_TIME;
            let mut n = 0;
            while n < CHANGES && std::time::Instant::now() < deadline {
                let (config, seen_by) = if n % 2 == 0 {
                    (&a, Reason::DryRunPassed)
                } else {
                    (&b, Reason::Passed)
                };
                let before = fw.counters()?[&seen_by];
                floodwall::kernel::write_config(&fw.paths, config)?;
                let live_until = std::time::Instant::now() + LIVE_AT_MOST;
                while fw.counters()?[&seen_by] == before && std::time::Instant::now() < live_until {
                    std::thread::sleep(Duration::from_micros(100));
                }
                n += 1;
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(n)
        });
        floodwall_tests::program::pin_to_cpu(0);
        let mut runs = 0u64;
        while !done.load(std::sync::atomic::Ordering::SeqCst) && runs < 500_000_000 {
            fw.run_repeat(&frame, 1_000)?;
            runs += 1_000;
        }
        let changes = writer
            .join()
            .map_err(|_| anyhow::anyhow!("the config writer panicked"))??;
        Ok((changes, runs))
    })?;
    let counters = fw.counters()?;
    let (blocklist, dry_run) = (
        counters[&Reason::Blocklisted],
        counters[&Reason::DryRunPassed],
    );
    eprintln!(
        "{changes} config changes during {runs} frames: {blocklist} blocklist, {dry_run} dry_run, \
         {} passed",
        counters[&Reason::Passed]
    );
    ensure!(
        blocklist > 0 && counters[&Reason::Passed] > 0,
        "the frames never saw both versions: {counters:?}"
    );
    ensure!(
        blocklist == dry_run,
        "{} frames were dropped as blocklisted without dry-run: they read one version's lists \
         and the next one's flags",
        blocklist - dry_run
    );
    Ok(())
}

/// `malformed = pass` passes what the parser cannot follow, but never past the lists and
/// limits when the source address can still be read: frames Linux accepts (a third VLAN tag,
/// a chain of more IPv6 extension headers than the parser walks) get the verdict of their
/// source. A frame whose source cannot be read is passed as malformed.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn malformed_pass_still_applies_lists_and_limits() -> Result<()> {
    let fw = with_blocklist()?;
    fw.set_limits(&Limits {
        malformed: MalformedAction::Pass,
        ..Limits::default()
    })?;
    let three = [ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q];
    let long = [NEXTHDR_DEST; MAX_EXT_HEADERS + 1];
    let mut cases = Vec::new();
    for b in [true, false] {
        let (verdict, reason) = if b {
            (XDP_DROP, Reason::Blocklisted)
        } else {
            (XDP_PASS, Reason::Malformed)
        };
        cases.push(case(
            format!("three tags ipv4 blocked={b}"),
            tagged4(&three, src4(b)),
            verdict,
            reason,
        ));
        cases.push(case(
            format!("three tags ipv6 blocked={b}"),
            tagged6(&three, src6(b)),
            verdict,
            reason,
        ));
        cases.push(case(
            format!("ipv6 chain of bound+1, blocked={b}"),
            ipv6_chain(src6(b), &long, PROTO_UDP, 8),
            verdict,
            reason,
        ));
    }
    cases.push(case(
        "ipv4 header cut short: no source",
        udp(BLOCKED4.into(), 8)[..30].to_vec(),
        XDP_PASS,
        Reason::Malformed,
    ));
    check(&fw, &cases)?;
    // The per-source limit counts such frames like any other of the source.
    fw.set_limits(&Limits {
        malformed: MalformedAction::Pass,
        pps: 1,
        burst: 1,
        ..Limits::default()
    })?;
    let limited = [192, 0, 2, 77];
    check(
        &fw,
        &[
            case(
                "first frame of the source",
                tagged4(&three, limited),
                XDP_PASS,
                Reason::Malformed,
            ),
            case(
                "second frame of the source",
                tagged4(&three, limited),
                XDP_DROP,
                Reason::OverPps,
            ),
        ],
    )
}

/// The kernel skips the prefix lookup for an address in a /16 no prefix of the list reaches
/// (`NET_COVER`): every /16 a prefix spans must have its bit, at both ends of the span and
/// for prefixes shorter, equal to and longer than /16, added one by one or as an import.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn every_address_a_prefix_covers_is_looked_up() -> Result<()> {
    let fw = Loaded::new()?;
    fw.add(
        ListKind::Block,
        &[
            "10.0.0.0/7",
            "172.16.0.0/16",
            "192.0.2.128/25",
            "2001:db8::/32",
            "4000::/3",
        ],
        None,
    )?;
    fw.add(ListKind::Allow, &["10.200.0.0/15"], None)?;
    let mut cases = Vec::new();
    for src in [
        "10.0.0.1",
        "10.255.255.255",
        "11.0.0.0",
        "11.255.255.254",
        "172.16.0.1",
        "172.16.255.255",
        "192.0.2.200",
        "2001:db8::1",
        "2001:db8:ffff::1",
        "4000::1",
        "5fff:ffff::1",
    ] {
        cases.push(case(
            src,
            udp(src.parse()?, 16),
            XDP_DROP,
            Reason::Blocklisted,
        ));
    }
    for src in ["10.200.0.1", "10.201.255.255"] {
        cases.push(case(
            src,
            udp(src.parse()?, 16),
            XDP_PASS,
            Reason::Allowlisted,
        ));
    }
    for src in [
        "9.255.255.255",
        "12.0.0.0",
        "172.17.0.1",
        "172.15.255.255",
        "192.0.2.1",
        "2001:db9::1",
        "6000::1",
        "3fff::1",
    ] {
        cases.push(case(src, udp(src.parse()?, 16), XDP_PASS, Reason::Passed));
    }
    check(&fw, &cases)
}

/// The kernel skips the host lookup for an address whose `HOST_COVER` bit is clear, and the
/// prefix lookup for one whose /16 has no `NET_COVER` bit: every entry on a list must have its
/// bits. Entries that leave a list keep their bits (a lookup, no harm) until the bits are
/// rebuilt from the store (by `floodwall run`, and by recovery); after that, the entries still
/// listed are still dropped or allowed, and far fewer bits are set.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn every_listed_entry_is_looked_up_and_a_rebuild_drops_stale_bits() -> Result<()> {
    use filter_common::{HOST_COVER_WORDS, MAP_NET_COVER, NET_COVER_WORDS, host_cover_base};
    use floodwall::{kernel, lists};
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let fw = Loaded::new()?;
    let block: Vec<String> = (0..3_000)
        .map(|n| format!("198.18.{}.{}", n / 250, n % 250 + 1))
        .chain((1..=500).map(|n| format!("2001:db8:feed::{n:x}")))
        .collect();
    // Prefixes in 40 /16s of 100.64.0.0/10 and in 10 IPv6 /16s.
    let nets: Vec<String> = (0..40)
        .map(|n| format!("100.{}.7.0/24", 64 + n))
        .chain((0..10).map(|n| format!("{:x}:db9::/32", 0x2001 + n)))
        .collect();
    let allow: Vec<String> = (1..=200).map(|n| format!("198.19.0.{n}")).collect();
    // The first hosts one change each, the rest as one change.
    for host in &block[..5] {
        fw.add(ListKind::Block, &[host.as_str()], None)?;
    }
    fw.add(ListKind::Block, &refs(&block[5..]), None)?;
    fw.add(ListKind::Block, &refs(&nets), None)?;
    fw.add(ListKind::Allow, &refs(&allow), None)?;
    // An address inside each prefix, and one just outside in the same /16.
    let inside = |nets: &[String]| -> Vec<String> {
        nets.iter()
            .map(|n| n.replace(".0/24", ".9").replace("::/32", "::9"))
            .collect()
    };
    let outside: Vec<String> = nets
        .iter()
        .filter(|n| n.contains('.'))
        .map(|n| n.replace(".7.0/24", ".8.9"))
        .collect();
    let cases = |block: &[String], passing: &[String]| -> Result<Vec<Case>> {
        let mut cases = Vec::new();
        for (hosts, verdict, reason) in [
            (block, XDP_DROP, Reason::Blocklisted),
            (&allow[..], XDP_PASS, Reason::Allowlisted),
            (passing, XDP_PASS, Reason::Passed),
        ] {
            for h in hosts {
                cases.push(case(h, udp(h.parse()?, 16), verdict, reason));
            }
        }
        Ok(cases)
    };
    let blocked = |hosts: &[String], nets: &[String]| [hosts, &inside(nets)[..]].concat();
    check(&fw, &cases(&blocked(&block, &nets), &outside)?)?;
    let bits = || -> Result<(u64, u64, u64)> {
        let hosts = kernel::host_cover(&fw.paths)?;
        let cover: aya::maps::Array<_, u64> = aya::maps::Array::try_from(aya::maps::Map::Array(
            aya::maps::MapData::from_pin(fw.paths.map_pin(MAP_NET_COVER))?,
        ))?;
        let mut nets = 0;
        for word in 2 * NET_COVER_WORDS..4 * NET_COVER_WORDS {
            nets += u64::from(cover.get(&word, 0)?.count_ones());
        }
        Ok((
            hosts.count(host_cover_base(false, true), HOST_COVER_WORDS),
            hosts.count(host_cover_base(false, false), HOST_COVER_WORDS),
            nets,
        ))
    };
    let full = bits()?;

    // Remove all but every tenth blocked host and every fifth prefix.
    let every = |v: &[String], n: usize| -> (Vec<String>, Vec<String>) {
        let (kept, gone): (Vec<_>, Vec<_>) = v.iter().enumerate().partition(|(i, _)| i % n == 0);
        (
            kept.into_iter().map(|(_, h)| h.clone()).collect(),
            gone.into_iter().map(|(_, h)| h.clone()).collect(),
        )
    };
    let (kept, gone) = every(&block, 10);
    let (kept_nets, gone_nets) = every(&nets, 5);
    let gone_cidrs = [&gone[..], &gone_nets[..]]
        .concat()
        .iter()
        .map(|h| h.parse())
        .collect::<Result<Vec<_>, _>>()?;
    lists::del(&fw.paths, ListKind::Block, &gone_cidrs)?;
    assert_eq!(bits()?, full, "bits are only dropped by a rebuild");
    let passing = [&gone[..], &inside(&gone_nets)[..], &outside[..]].concat();
    check(&fw, &cases(&blocked(&kept, &kept_nets), &passing)?)?;

    lists::rebuild_cover_now(&fw.paths)?;
    let rebuilt = bits()?;
    println!(
        "cover bits (IPv4 hosts, IPv6 hosts, /16s): {full:?} with {} hosts and {} prefixes, \
         {rebuilt:?} with {} and {}",
        block.len(),
        nets.len(),
        kept.len(),
        kept_nets.len()
    );
    assert!(
        (290..=300).contains(&rebuilt.0) && (45..=50).contains(&rebuilt.1),
        "{rebuilt:?} host bits for 300 IPv4 and 50 IPv6 hosts"
    );
    assert_eq!(
        rebuilt.2, 10,
        "one /16 bit for each of the 10 prefixes kept"
    );
    check(&fw, &cases(&blocked(&kept, &kept_nets), &passing)?)
}
