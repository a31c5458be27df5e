//! A host-side reference model of the XDP data path (design.md, "Data path"): the same decision
//! for the same frame, policy and state, so the differential test can compare the kernel
//! program against it frame by frame.
//!
//! The header parser here is written from the specification, not from the kernel code:
//!
//! - Ethernet (14 bytes), then at most two VLAN tags (802.1Q `0x8100` or 802.1ad `0x88a8`, in
//!   any order, 4 bytes each). A third tag is malformed. Any ethertype but IPv4, IPv6 and a
//!   VLAN tag is non-IP.
//! - A malformed frame still has a source when its fixed IP header is whole and of the right
//!   version (IPv4: 20 bytes, IPv6: 40), in the places above or behind a third or fourth tag;
//!   with the malformed action "pass" that source gets the lists and limits, and a frame they
//!   pass is passed as malformed. A bad IPv4 header (which Linux drops too) has no source.
//! - IPv4: version 4, IHL at least 5 words, the whole header with its options inside the frame,
//!   and a total length not shorter than the header.
//! - IPv6: version 6, the 40-byte header inside the frame, then the extension headers
//!   hop-by-hop (0), routing (43), destination options (60) (`(len + 1) * 8` bytes), fragment
//!   (44, 8 bytes) and AH (51, `(len + 2) * 4` bytes), each wholly inside the frame, at most
//!   [`MAX_EXT_HEADERS`] of them. A non-first fragment ends the chain: what follows its fragment
//!   header is payload. Any other next-header value (upper layer, ESP, "no next header") ends
//!   the chain. A chain still going after the bound is malformed.
//!
//! The policy's arithmetic is written here too, from the design rather than from
//! `filter_common` (see [`math`]): the generic cell rate algorithm, byte costs, prefix masks,
//! list expiry, which reasons drop, what the config's bits mean. Only the layouts (the
//! `Config` record, keys, slot numbers, flag bits) are shared, since they are the contract. A
//! bug in `filter_common`'s math then shows up as a disagreement instead of in both.
//!
//! Not modelled: LRU eviction of per-source state (tests keep the source count far below the
//! map size), drop events (they never change a verdict), CAS contention (tests are
//! single-threaded).

use std::{collections::HashMap, net::IpAddr, str::FromStr};

use filter_common::{
    Config, FAMILY_V4, FAMILY_V6, GLOBAL_ADMISSION, GLOBAL_BYTE, GLOBAL_NEWCOMER, GLOBAL_PKT,
    GLOBAL_SLOTS, ListEntry, Reason, SourceKey, SourceState,
};

use math::{
    byte_cost, cfg_dry_run, cfg_limits_sources, cfg_malformed_drops, drops, enabled, entry_active,
    gcra, mask_prefix,
};

/// The policy's arithmetic, from the design (data path: limiter, lists, reasons).
pub mod math {
    use filter_common::{Bucket, Config, FLAG_DRY_RUN, FLAG_MALFORMED_PASS, ListEntry, Reason};

    /// Byte costs are fixed point: a byte costs `cost / 2^16` ns.
    const BYTE_COST_SHIFT: u32 = 16;
    /// A frame's length counts up to 64 KiB - 1 (no frame is longer).
    const MAX_FRAME_LEN: u128 = 65_535;

    /// GCRA as a virtual scheduling algorithm: the bucket's theoretical arrival time moves on
    /// by `cost` per conforming frame, never from before `now`; a frame conforms if the new
    /// arrival time is at most `tau` ahead of `now`. Computed in 128 bits.
    pub fn gcra(tat: u64, now: u64, cost: u64, tau: u64) -> Option<u64> {
        let start = u128::from(tat.max(now));
        let next = start + u128::from(cost);
        (next <= u128::from(now) + u128::from(tau)).then(|| next.min(u128::from(u64::MAX)) as u64)
    }

    /// ns a frame of `len` bytes costs at a per-byte cost of `cost` (fixed point).
    pub fn byte_cost(len: u64, cost: u64) -> u64 {
        ((u128::from(len).min(MAX_FRAME_LEN) * u128::from(cost)) >> BYTE_COST_SHIFT) as u64
    }

    /// Keeps the first `len` bits of a 16-byte address (IPv4 in the first four bytes).
    pub fn mask_prefix(addr: &mut [u8; 16], len: u32) {
        let keep = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len.min(128))
        };
        *addr = (u128::from_be_bytes(*addr) & keep).to_be_bytes();
    }

    /// A list entry matches until its expiry (0: never expires).
    pub fn entry_active(entry: &ListEntry, now_ns: u64) -> bool {
        entry.expires_ns == 0 || now_ns < entry.expires_ns
    }

    /// The design's table of reasons that drop when enforcing (`Malformed` by the action).
    pub fn drops(reason: Reason) -> bool {
        match reason {
            Reason::Blocklisted
            | Reason::OverPps
            | Reason::OverBps
            | Reason::NewcomerLimited
            | Reason::GlobalCap
            | Reason::Malformed
            | Reason::SynBadCookie
            | Reason::Contended => true,
            Reason::Passed
            | Reason::NonIp
            | Reason::Allowlisted
            | Reason::DryRunPassed
            | Reason::SynChallenged
            | Reason::SynProven => false,
        }
    }

    /// A bucket with no cost is off.
    pub fn enabled(bucket: &Bucket) -> bool {
        bucket.cost != 0
    }

    pub fn cfg_dry_run(cfg: &Config) -> bool {
        cfg.flags & FLAG_DRY_RUN != 0
    }

    pub fn cfg_malformed_drops(cfg: &Config) -> bool {
        cfg.flags & FLAG_MALFORMED_PASS == 0
    }

    /// Sources are limited when either of their buckets is on.
    pub fn cfg_limits_sources(cfg: &Config) -> bool {
        enabled(&cfg.source_pkt) || enabled(&cfg.source_byte)
    }
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// IPv6 extension headers walked before a frame is malformed (design: "up to a fixed bound").
pub const MAX_EXT_HEADERS: usize = 8;
/// VLAN tags looked through.
pub const MAX_VLAN_TAGS: usize = 2;
/// VLAN tags looked through for the source of a malformed frame.
pub const MAX_VLAN_TAGS_FOR_SOURCE: usize = 4;

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const IPV4_MIN_LEN: usize = 20;
const IPV6_LEN: usize = 40;

/// An address prefix of either family, as the lists hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub family: u32,
    /// Network order; IPv4 in the first four bytes. Bits past `len` are zero.
    pub addr: [u8; 16],
    pub len: u32,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u32) -> Prefix {
        let (family, mut bytes, max) = match addr {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (FAMILY_V4, b, 32)
            }
            IpAddr::V6(a) => (FAMILY_V6, a.octets(), 128),
        };
        let len = len.min(max);
        mask_prefix(&mut bytes, len);
        Prefix {
            family,
            addr: bytes,
            len,
        }
    }

    /// Whether `src` (an unmasked source) lies inside this prefix.
    pub fn contains(&self, src: &SourceKey) -> bool {
        if src.family != self.family {
            return false;
        }
        let mut masked = src.addr;
        mask_prefix(&mut masked, self.len);
        masked == self.addr
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `ADDR` (a host) or `ADDR/LEN`.
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|e| format!("prefix `{s}`: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.parse::<u32>().map_err(|e| format!("prefix `{s}`: {e}"))?,
            None => max,
        };
        if len > max {
            return Err(format!("prefix `{s}`: length over {max}"));
        }
        Ok(Prefix::new(addr, len))
    }
}

/// What the data path is configured with: the live config record and the two lists.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub config: Config,
    pub allow: Vec<(Prefix, ListEntry)>,
    pub block: Vec<(Prefix, ListEntry)>,
}

impl Policy {
    pub fn new(config: Config) -> Policy {
        Policy {
            config,
            ..Policy::default()
        }
    }

    /// Adds an allowlist entry expiring at `expires_ns` (0: never).
    pub fn allow(&mut self, prefix: &str, expires_ns: u64) -> Result<(), String> {
        let p: Prefix = prefix.parse()?;
        self.allow.push((p, entry(&p, expires_ns)));
        Ok(())
    }

    /// Adds a blocklist entry expiring at `expires_ns` (0: never).
    pub fn block(&mut self, prefix: &str, expires_ns: u64) -> Result<(), String> {
        let p: Prefix = prefix.parse()?;
        self.block.push((p, entry(&p, expires_ns)));
        Ok(())
    }
}

fn entry(p: &Prefix, expires_ns: u64) -> ListEntry {
    ListEntry {
        expires_ns,
        prefix_len: p.len,
        _pad: 0,
    }
}

/// What the data path remembers between frames.
#[derive(Clone, Debug, Default)]
pub struct ModelState {
    /// Per-source state, keyed by the masked source.
    pub sources: HashMap<SourceKey, SourceState>,
    /// GCRA arrival times, indexed by `GLOBAL_*`.
    pub globals: [u64; GLOBAL_SLOTS as usize],
}

/// The parser's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    NonIp,
    Ip(SourceKey),
    /// With the source, when it can be read.
    Malformed(Option<SourceKey>),
}

/// Reads a big-endian u16 at `at`, if the frame holds it.
fn be16(frame: &[u8], at: usize) -> Option<u16> {
    let b = frame.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Parses a frame as the specification (module docs) describes.
pub fn parse(frame: &[u8]) -> Parsed {
    let malformed = Parsed::Malformed(None);
    let is_tag = |t: u16| t == 0x8100 || t == 0x88a8;
    let Some(mut ethertype) = be16(frame, 12) else {
        return malformed;
    };
    let mut at = ETH_LEN;
    let mut tags = 0;
    while is_tag(ethertype) {
        if tags == MAX_VLAN_TAGS_FOR_SOURCE {
            return malformed;
        }
        // The tag's TCI is 2 bytes, then the inner ethertype.
        let Some(inner) = be16(frame, at + 2) else {
            return malformed;
        };
        ethertype = inner;
        at += VLAN_LEN;
        tags += 1;
    }
    let ip = frame.get(at..).unwrap_or(&[]);
    if tags > MAX_VLAN_TAGS {
        return Parsed::Malformed(fixed_header_source(ethertype, ip));
    }
    match ethertype {
        0x0800 => ipv4(ip).unwrap_or(malformed),
        0x86dd => ipv6(ip),
        _ => Parsed::NonIp,
    }
}

/// The source in a whole fixed IPv4 or IPv6 header of the right version.
fn fixed_header_source(ethertype: u16, ip: &[u8]) -> Option<SourceKey> {
    let version = *ip.first()? >> 4;
    let mut addr = [0u8; 16];
    match ethertype {
        0x0800 if version == 4 && ip.len() >= IPV4_MIN_LEN => {
            addr[..4].copy_from_slice(&ip[12..16]);
            Some(SourceKey {
                family: FAMILY_V4,
                addr,
            })
        }
        0x86dd if version == 6 && ip.len() >= IPV6_LEN => {
            addr.copy_from_slice(&ip[8..24]);
            Some(SourceKey {
                family: FAMILY_V6,
                addr,
            })
        }
        _ => None,
    }
}

/// `None`: malformed, without a source (Linux drops such a header too).
fn ipv4(ip: &[u8]) -> Option<Parsed> {
    let first = *ip.first()?;
    if ip.len() < IPV4_MIN_LEN || first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0xf) * 4;
    let total_len = usize::from(be16(ip, 2)?);
    if header_len < IPV4_MIN_LEN || header_len > ip.len() || total_len < header_len {
        return None;
    }
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip[12..16]);
    Some(Parsed::Ip(SourceKey {
        family: FAMILY_V4,
        addr,
    }))
}

/// A broken extension chain is malformed with the source of the whole fixed header.
fn ipv6(ip: &[u8]) -> Parsed {
    let Some(key) = fixed_header_source(0x86dd, ip) else {
        return Parsed::Malformed(None);
    };
    ipv6_chain(ip).unwrap_or(Parsed::Malformed(Some(key)))
}

/// `None`: the extension chain is broken.
fn ipv6_chain(ip: &[u8]) -> Option<Parsed> {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&ip[8..24]);
    let src = Parsed::Ip(SourceKey {
        family: FAMILY_V6,
        addr,
    });
    let mut next = ip[6];
    let mut rest = &ip[IPV6_LEN..];
    let mut walked = 0;
    loop {
        if !matches!(next, 0 | 43 | 44 | 51 | 60) {
            return Some(src);
        }
        if walked == MAX_EXT_HEADERS {
            return None;
        }
        let len = match next {
            44 => 8,
            51 => (usize::from(*rest.get(1)?) + 2) * 4,
            _ => (usize::from(*rest.get(1)?) + 1) * 8,
        };
        let header = rest.get(..len)?;
        if next == 44 && be16(header, 2)? & 0xfff8 != 0 {
            // A non-first fragment: the rest is payload, not headers.
            return Some(src);
        }
        next = header[0];
        rest = &rest[len..];
        walked += 1;
    }
}

/// The verdict and the reason the frame is counted under. The frame is also counted under
/// `dry_run` when [`dry_run_counted`] says so.
pub fn decide(frame: &[u8], policy: &Policy, state: &mut ModelState, now_ns: u64) -> (u32, Reason) {
    let cfg = &policy.config;
    let len = frame.len() as u64;
    let reason = match parse(frame) {
        Parsed::NonIp => Reason::NonIp,
        Parsed::Malformed(Some(src)) if !cfg_malformed_drops(cfg) => {
            match judge(policy, &src, len, state, now_ns) {
                Reason::Passed => Reason::Malformed,
                reason => reason,
            }
        }
        Parsed::Malformed(_) => Reason::Malformed,
        Parsed::Ip(src) => judge(policy, &src, len, state, now_ns),
    };
    let verdict = if would_drop(cfg, reason) && !cfg_dry_run(cfg) {
        XDP_DROP
    } else {
        XDP_PASS
    };
    (verdict, reason)
}

/// Whether a frame with this reason is dropped when enforcing.
pub fn would_drop(cfg: &Config, reason: Reason) -> bool {
    if reason == Reason::Malformed {
        cfg_malformed_drops(cfg)
    } else {
        drops(reason)
    }
}

/// Whether the frame is also counted under `dry_run`: dry-run turned its drop into a pass.
pub fn dry_run_counted(cfg: &Config, reason: Reason) -> bool {
    cfg_dry_run(cfg) && would_drop(cfg, reason)
}

/// Whether any active entry of `list` covers `src`. With longest-prefix matching this is the
/// same as "the longest match, or when it has expired the next shorter one, and so on".
fn listed(list: &[(Prefix, ListEntry)], src: &SourceKey, now_ns: u64) -> bool {
    list.iter()
        .any(|(prefix, entry)| prefix.contains(src) && entry_active(entry, now_ns))
}

/// Steps 2 to 5 of the data path for a parsed IP frame of `len` bytes.
fn judge(policy: &Policy, src: &SourceKey, len: u64, state: &mut ModelState, now: u64) -> Reason {
    let cfg = &policy.config;
    if listed(&policy.allow, src, now) {
        return Reason::Allowlisted;
    }
    if listed(&policy.block, src, now) {
        return Reason::Blocklisted;
    }
    let mut took = Took::default();
    if cfg_limits_sources(cfg) {
        let reason = per_source(cfg, src, len, state, now, &mut took);
        if reason != Reason::Passed {
            return reason;
        }
    }
    if global_caps(cfg, len, state, now) {
        return Reason::Passed;
    }
    // A frame a global cap drops gives back every token it took on the way.
    let globals = &mut state.globals;
    if took.newcomer {
        let slot = &mut globals[GLOBAL_NEWCOMER as usize];
        *slot = slot.wrapping_sub(cfg.newcomer.cost);
    }
    if took.admission {
        let slot = &mut globals[GLOBAL_ADMISSION as usize];
        *slot = slot.wrapping_sub(cfg.admission.cost);
    }
    if let Some(key) = took.source
        && let Some(source) = state.sources.get_mut(&key)
    {
        if enabled(&cfg.source_pkt) {
            source.tat_pkt = source.tat_pkt.wrapping_sub(cfg.source_pkt.cost);
        }
        if enabled(&cfg.source_byte) {
            let cost = byte_cost(len, cfg.source_byte.cost);
            source.tat_byte = source.tat_byte.wrapping_sub(cost);
        }
        source.passed -= 1;
    }
    Reason::GlobalCap
}

/// Tokens a frame took before the global caps.
#[derive(Default)]
struct Took {
    newcomer: bool,
    admission: bool,
    /// The source whose buckets it was charged to.
    source: Option<SourceKey>,
}

/// Step 5: whether the global caps let the frame through (taking their tokens). A byte-cap
/// drop gives the packet cap its token back.
fn global_caps(cfg: &Config, len: u64, state: &mut ModelState, now: u64) -> bool {
    let globals = &mut state.globals;
    let pkt = enabled(&cfg.global_pkt);
    if pkt {
        let slot = &mut globals[GLOBAL_PKT as usize];
        match gcra(*slot, now, cfg.global_pkt.cost, cfg.global_pkt.tau) {
            Some(tat) => *slot = tat,
            None => return false,
        }
    }
    if enabled(&cfg.global_byte) {
        let cost = byte_cost(len, cfg.global_byte.cost);
        let slot = &mut globals[GLOBAL_BYTE as usize];
        match gcra(*slot, now, cost, cfg.global_byte.tau) {
            Some(tat) => *slot = tat,
            None => {
                if pkt {
                    let slot = &mut globals[GLOBAL_PKT as usize];
                    *slot = slot.wrapping_sub(cfg.global_pkt.cost);
                }
                return false;
            }
        }
    }
    true
}

/// Step 4: admission of new sources, the newcomer bucket, the per-source buckets.
fn per_source(
    cfg: &Config,
    src: &SourceKey,
    len: u64,
    state: &mut ModelState,
    now: u64,
    took: &mut Took,
) -> Reason {
    let mut key = *src;
    let prefix = if key.family == FAMILY_V4 {
        cfg.prefix4
    } else {
        cfg.prefix6
    };
    mask_prefix(&mut key.addr, prefix);
    if !state.sources.contains_key(&key) {
        let mut admitted = true;
        if enabled(&cfg.admission) {
            let slot = &mut state.globals[GLOBAL_ADMISSION as usize];
            match gcra(*slot, now, cfg.admission.cost, cfg.admission.tau) {
                Some(tat) => {
                    *slot = tat;
                    took.admission = true;
                }
                None => admitted = false,
            }
        }
        if !admitted {
            // No state of its own: the shared newcomer bucket decides.
            if enabled(&cfg.newcomer) {
                let slot = &mut state.globals[GLOBAL_NEWCOMER as usize];
                if let Some(tat) = gcra(*slot, now, cfg.newcomer.cost, cfg.newcomer.tau) {
                    *slot = tat;
                    took.newcomer = true;
                    return Reason::Passed;
                }
            }
            return Reason::NewcomerLimited;
        }
        state.sources.insert(key, SourceState::default());
    }
    let Some(source) = state.sources.get_mut(&key) else {
        return Reason::NewcomerLimited;
    };
    let mut reason = Reason::Passed;
    if enabled(&cfg.source_pkt) {
        match gcra(source.tat_pkt, now, cfg.source_pkt.cost, cfg.source_pkt.tau) {
            Some(tat) => source.tat_pkt = tat,
            None => reason = Reason::OverPps,
        }
    }
    if reason == Reason::Passed && enabled(&cfg.source_byte) {
        let cost = byte_cost(len, cfg.source_byte.cost);
        match gcra(source.tat_byte, now, cost, cfg.source_byte.tau) {
            Some(tat) => source.tat_byte = tat,
            None => {
                reason = Reason::OverBps;
                // The dropped frame gives its packet token back.
                if enabled(&cfg.source_pkt) {
                    source.tat_pkt = source.tat_pkt.wrapping_sub(cfg.source_pkt.cost);
                }
            }
        }
    }
    if reason == Reason::Passed {
        source.passed += 1;
        took.source = Some(key);
    } else {
        source.dropped += 1;
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Frame, udp};
    use filter_common::{Bucket, FLAG_DRY_RUN, FLAG_MALFORMED_PASS};

    const SEC: u64 = 1_000_000_000;

    fn v4(a: [u8; 4]) -> Vec<u8> {
        udp(IpAddr::from(a), 16)
    }

    fn v6(s: &str) -> Vec<u8> {
        udp(s.parse().expect("test address"), 16)
    }

    fn src4(a: [u8; 4]) -> Parsed {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&a);
        Parsed::Ip(SourceKey {
            family: FAMILY_V4,
            addr,
        })
    }

    /// The model's own arithmetic, on values worked out by hand from the design.
    #[test]
    fn math_from_the_design() {
        // 10 pps (cost 0.1 s) with a burst of 3 (tau 0.3 s): three at once, then one per 0.1 s.
        let (cost, tau) = (SEC / 10, 3 * SEC / 10);
        let mut tat = 0;
        for i in 0..3 {
            tat = math::gcra(tat, 5 * SEC, cost, tau).unwrap_or_else(|| panic!("frame {i}"));
        }
        assert_eq!(math::gcra(tat, 5 * SEC, cost, tau), None);
        assert!(math::gcra(tat, 5 * SEC + SEC / 10, cost, tau).is_some());
        assert_eq!(math::gcra(0, 7, cost, tau), Some(7 + cost));
        // 1 ns per byte in fixed point: 1500 bytes cost 1500 ns; lengths cap at 65,535.
        assert_eq!(math::byte_cost(1500, 1 << 16), 1500);
        assert_eq!(math::byte_cost(100_000, 1 << 16), 65_535);
        let mut a = [0xff; 16];
        math::mask_prefix(&mut a, 12);
        assert_eq!(a[..3], [0xff, 0xf0, 0]);
        let mut a = [0xff; 16];
        math::mask_prefix(&mut a, 0);
        assert_eq!(a, [0; 16]);
        let mut a = [0xff; 16];
        math::mask_prefix(&mut a, 128);
        assert_eq!(a, [0xff; 16]);
        let entry = |expires_ns| ListEntry {
            expires_ns,
            ..ListEntry::default()
        };
        assert!(math::entry_active(&entry(0), u64::MAX));
        assert!(math::entry_active(&entry(10), 9));
        assert!(!math::entry_active(&entry(10), 10));
        assert!(!math::drops(Reason::Allowlisted) && math::drops(Reason::GlobalCap));
    }

    #[test]
    fn parses_headers_and_refuses_broken_ones() {
        assert_eq!(parse(&v4([10, 0, 0, 1])), src4([10, 0, 0, 1]));
        assert!(matches!(parse(&v6("2001:db8::1")), Parsed::Ip(k) if k.family == FAMILY_V6));
        assert_eq!(
            parse(&Frame::eth(ETH_P_ARP).raw(&[0; 28]).build()),
            Parsed::NonIp
        );
        // Every truncation of a UDP/IPv4 frame inside its IP header is malformed.
        let frame = v4([10, 0, 0, 1]);
        for cut in 0..14 + 20 {
            assert_eq!(parse(&frame[..cut]), Parsed::Malformed(None), "cut {cut}");
        }
        let tagged = |tags: &[u16]| {
            let mut f = Frame::eth(tags[0]);
            for (i, _) in tags.iter().enumerate() {
                let inner = tags.get(i + 1).copied().unwrap_or(ETH_P_IP);
                f = f.vlan(7, inner);
            }
            f.ipv4([192, 0, 2, 9], [192, 0, 2, 1], 17, &[], 0).build()
        };
        assert_eq!(parse(&tagged(&[ETH_P_8021Q])), src4([192, 0, 2, 9]));
        assert_eq!(
            parse(&tagged(&[ETH_P_8021AD, ETH_P_8021Q])),
            src4([192, 0, 2, 9])
        );
        // A third or fourth tag is malformed, with the source behind it; a fifth hides it.
        let key4 = |a: [u8; 4]| match src4(a) {
            Parsed::Ip(key) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parse(&tagged(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q])),
            Parsed::Malformed(Some(key4([192, 0, 2, 9])))
        );
        assert_eq!(
            parse(&tagged(&[ETH_P_8021Q; 4])),
            Parsed::Malformed(Some(key4([192, 0, 2, 9])))
        );
        assert_eq!(parse(&tagged(&[ETH_P_8021Q; 5])), Parsed::Malformed(None));
        // IHL below 5, version 5, options cut short.
        let mut bad = v4([10, 0, 0, 1]);
        bad[14] = 0x44;
        assert_eq!(parse(&bad), Parsed::Malformed(None));
        bad[14] = 0x55;
        assert_eq!(parse(&bad), Parsed::Malformed(None));
        let opts = Frame::eth(ETH_P_IP)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, &[1; 8], 0)
            .build();
        assert_eq!(parse(&opts), src4([10, 0, 0, 1]));
        assert_eq!(parse(&opts[..opts.len() - 1]), Parsed::Malformed(None));
    }

    #[test]
    fn walks_ipv6_extension_headers_up_to_the_bound() {
        let chain = |n: usize, last: u8| {
            let mut f = Frame::eth(ETH_P_IPV6).ipv6([0x20; 16], [0x20; 16], 60, 0);
            for i in 0..n {
                let next = if i + 1 == n { last } else { 60 };
                f = f.raw(&[next, 0, 0, 0, 0, 0, 0, 0]);
            }
            f.raw(&[0; 8]).build()
        };
        assert!(matches!(parse(&chain(MAX_EXT_HEADERS, 17)), Parsed::Ip(_)));
        assert_eq!(
            parse(&chain(MAX_EXT_HEADERS + 1, 17)),
            Parsed::Malformed(Some(SourceKey {
                family: FAMILY_V6,
                addr: [0x20; 16]
            }))
        );
        // A non-first fragment stops the walk, whatever its next header claims.
        let frag = Frame::eth(ETH_P_IPV6)
            .ipv6([0x20; 16], [0x20; 16], 44, 0)
            .raw(&[60, 0, 0, 8, 0, 0, 0, 1])
            .raw(&[17, 200])
            .build();
        assert!(matches!(parse(&frag), Parsed::Ip(_)));
        let mut first = frag.clone();
        first[14 + 40 + 3] = 1; // offset 0, more fragments
        assert!(matches!(parse(&first), Parsed::Malformed(Some(_))));
    }

    #[test]
    fn lists_allow_first_and_expired_entries_fall_back() -> Result<(), String> {
        let mut p = Policy::new(Config::default());
        p.block("10.0.0.0/8", 0)?;
        p.block("10.1.0.0/16", 5 * SEC)?;
        p.block("192.0.2.7", 5 * SEC)?;
        p.allow("10.2.0.0/16", 0)?;
        p.block("10.2.0.1", 0)?;
        let mut s = ModelState::default();
        let mut at = |a: [u8; 4], now| decide(&v4(a), &p, &mut s, now);
        assert_eq!(at([10, 1, 2, 3], SEC), (XDP_DROP, Reason::Blocklisted));
        assert_eq!(at([10, 1, 2, 3], 9 * SEC), (XDP_DROP, Reason::Blocklisted));
        assert_eq!(at([192, 0, 2, 7], SEC), (XDP_DROP, Reason::Blocklisted));
        assert_eq!(at([192, 0, 2, 7], 5 * SEC), (XDP_PASS, Reason::Passed));
        assert_eq!(at([10, 2, 0, 1], SEC), (XDP_PASS, Reason::Allowlisted));
        assert_eq!(at([11, 0, 0, 1], SEC), (XDP_PASS, Reason::Passed));
        Ok(())
    }

    #[test]
    fn per_source_newcomer_and_global_buckets() {
        let mut cfg = Config {
            prefix4: 24,
            prefix6: 64,
            source_pkt: Bucket::packets(1, 3),
            ..Config::default()
        };
        let p = Policy::new(cfg);
        let mut s = ModelState::default();
        let got: Vec<Reason> = (1..=5)
            .map(|i| decide(&v4([10, 0, 0, i]), &p, &mut s, SEC).1)
            .collect();
        use Reason::*;
        assert_eq!(got, [Passed, Passed, Passed, OverPps, OverPps]);
        // One second later one more token.
        assert_eq!(decide(&v4([10, 0, 0, 9]), &p, &mut s, 2 * SEC).1, Passed);

        cfg.admission = Bucket::packets(1, 1);
        cfg.newcomer = Bucket::packets(2, 2);
        cfg.source_pkt = Bucket::packets(100, 100);
        let p = Policy::new(cfg);
        let mut s = ModelState::default();
        let got: Vec<Reason> = [1u8, 2, 3, 4, 1]
            .iter()
            .map(|i| decide(&v4([10, 0, *i, 1]), &p, &mut s, SEC).1)
            .collect();
        assert_eq!(got, [Passed, Passed, Passed, NewcomerLimited, Passed]);

        let cfg = Config {
            global_pkt: Bucket::packets(1, 1),
            flags: FLAG_DRY_RUN,
            ..Config::default()
        };
        let p = Policy::new(cfg);
        let mut s = ModelState::default();
        assert_eq!(
            decide(&v4([1, 1, 1, 1]), &p, &mut s, SEC),
            (XDP_PASS, Passed)
        );
        assert_eq!(
            decide(&v4([1, 1, 1, 1]), &p, &mut s, SEC),
            (XDP_PASS, GlobalCap)
        );
        assert!(dry_run_counted(&cfg, GlobalCap));
        assert!(!dry_run_counted(&cfg, Passed));
    }

    #[test]
    fn byte_limit_refunds_the_packet_token_and_malformed_action() {
        let cfg = Config {
            prefix4: 32,
            source_pkt: Bucket::packets(1, 1000),
            source_byte: Bucket::bytes(1, 65_535),
            ..Config::default()
        };
        let p = Policy::new(cfg);
        let mut s = ModelState::default();
        let frame = udp(IpAddr::from([10, 0, 0, 1]), 1000);
        let fits = 65_535 / frame.len();
        for _ in 0..fits {
            assert_eq!(decide(&frame, &p, &mut s, SEC).1, Reason::Passed);
        }
        let tat = s.sources.values().map(|v| v.tat_pkt).sum::<u64>();
        assert_eq!(decide(&frame, &p, &mut s, SEC).1, Reason::OverBps);
        assert_eq!(s.sources.values().map(|v| v.tat_pkt).sum::<u64>(), tat);

        let broken = &frame[..20];
        let mut cfg = Config::default();
        assert_eq!(
            decide(broken, &Policy::new(cfg), &mut s, SEC),
            (XDP_DROP, Reason::Malformed)
        );
        cfg.flags = FLAG_MALFORMED_PASS;
        assert_eq!(
            decide(broken, &Policy::new(cfg), &mut s, SEC),
            (XDP_PASS, Reason::Malformed)
        );
        assert!(!dry_run_counted(&cfg, Reason::Malformed));
    }
}
