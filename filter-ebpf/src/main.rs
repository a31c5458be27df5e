//! floodwall's XDP data path: parse, allowlist, blocklist, SYN challenge, per-source limit
//! with spoof-proof admission, global caps, dry-run. Every frame is counted under exactly one
//! reason (plus `dry_run` when dry-run turned a drop into a pass).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_cxchg: AtomicU64 has no CAS on bpfel"
)]

mod parse;
mod syn;
mod sync;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_NOEXIST, xdp_action},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key,
    },
    programs::XdpContext,
};
use aya_log_ebpf::info;
use filter_common::{
    Bucket, CONFIG_SLOTS, COUNTER_ENTRIES, COUNTER_SLOTS, Config, Counter, CpuScratch,
    DEFAULT_HOST_ENTRIES, DEFAULT_NET_ENTRIES, DEFAULT_SOURCES, DropEvent, EVENT_RING_BYTES,
    EVENT_SEEN_ENTRIES, FAMILY_V4, GLOBAL_ADMISSION, GLOBAL_BYTE, GLOBAL_EVENTS, GLOBAL_NEWCOMER,
    GLOBAL_PKT, GLOBAL_SLOTS, GLOBAL_TRACE, GlobalBucket, HOST_COVER_ENTRIES, IFINDEX_LIMIT,
    KNOWN_MAX_LOG2, KNOWN_MIN_LOG2, LIST_ALLOW4_HOST, LIST_ALLOW4_NET, LIST_ALLOW6_HOST,
    LIST_ALLOW6_NET, LIST_BLOCK4_HOST, LIST_BLOCK4_NET, LIST_BLOCK6_HOST, LIST_BLOCK6_NET,
    ListEntry, MISC_ADMITTED, MISC_CAS_EXHAUSTED, MISC_EVENTS_RING_FULL, MISC_EVENTS_SENT,
    MISC_EVENTS_SUPPRESSED, MISC_SLOTS, MISC_SOURCE_INSERT_FAILED, MISC_SYN_HANDOVER_FAILED,
    MISC_TRACE_SUPPRESSED, NET_COVER_ENTRIES, PENDING_DROPS_NS, PROGRAM_SLOT_SYN,
    PROGRAM_SLOT_TRACE, PROGRAM_SLOTS, Reason, SourceKey, SourceState, SpentNote, TraceConfig,
    TraceRecord, byte_cost, counter_index, host_cover_base, host_cover_bit, known_bit,
    known_entries, known_words, net_cover_base, syn::PROTO_TCP,
};

use crate::{
    parse::{Parsed, parse},
    syn::Syn,
    sync::{atomic_add, atomic_or},
};

/// Which build loaded this program (see `filter_common::MAP_BUILD`); only userspace reads it.
#[map]
static BUILD: Array<u64> = Array::pinned(1, 0);
/// Two records and the index of the live one (see `MAP_CONFIG_ACTIVE`).
#[map]
static CONFIG: Array<Config> = Array::pinned(CONFIG_SLOTS, 0);
#[map]
static CONFIG_ACTIVE: Array<u32> = Array::pinned(1, 0);
// Counters in a per-CPU array (an inlined lookup) rather than a hash keyed by interface:
// `IFACE_SLOTS` maps an interface to its slot, `SLOT_IFACES` is the reverse, for userspace.
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);
#[map]
static IFACE_SLOTS: Array<u32> = Array::pinned(IFINDEX_LIMIT, 0);
#[map]
static SLOT_IFACES: Array<u32> = Array::pinned(COUNTER_SLOTS, 0);
#[map]
static MISC: PerCpuArray<u64> = PerCpuArray::pinned(MISC_SLOTS, 0);
#[map]
static GLOBALS: Array<GlobalBucket> = Array::pinned(GLOBAL_SLOTS, 0);
// Per-CPU LRU lists: a common list serialises every insert behind one lock (measured 808 vs
// 489 ns per frame under a random-source flood).
#[map]
static SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::pinned(DEFAULT_SOURCES, BPF_F_NO_COMMON_LRU);
#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENT_RING_BYTES, 0);
#[map]
static EVENT_SEEN: LruHashMap<SourceKey, u64> = LruHashMap::pinned(EVENT_SEEN_ENTRIES, 0);
/// Which /16s each list's prefixes may cover (see `filter_common::MAP_NET_COVER`).
#[map]
static NET_COVER: Array<u64> = Array::pinned(NET_COVER_ENTRIES, 0);
/// Which hosts each list may hold (see `filter_common::MAP_HOST_COVER`).
#[map]
static HOST_COVER: Array<u64> = Array::pinned(HOST_COVER_ENTRIES, BPF_F_MMAPABLE);
/// Which sources may have state, in two generations (see `filter_common::MAP_KNOWN`), and
/// which generation is read.
#[map]
static KNOWN: Array<u64> = Array::pinned(known_entries(DEFAULT_SOURCES), BPF_F_MMAPABLE);
#[map]
static KNOWN_ACTIVE: Array<u32> = Array::pinned(1, 0);
/// Non-zero while `floodwall run` has switched an `auto` SYN challenge on. Apart from the
/// config record, so that `limit set` and the service never overwrite each other.
#[map]
static SYN_ACTIVE: Array<u32> = Array::pinned(1, 0);
/// The SYN challenge's program (`floodwall_syn`), which frames from sources without state
/// are handed to while the challenge is on. A program of its own: together with the lists
/// in one program it would exceed the verifier's budget.
#[map]
static PROGRAMS: ProgramArray = ProgramArray::pinned(PROGRAM_SLOTS, 0);
/// `floodwall trace`'s switch and what it matches.
#[map]
static TRACE: Array<TraceConfig> = Array::pinned(1, 0);
/// The decided frame the filter hands to `floodwall_trace`.
#[map]
static TRACE_SCRATCH: PerCpuArray<TraceRecord> = PerCpuArray::with_max_entries(1, 0);

// Exact host entries in hash maps (O(1) whatever the list size), prefixes in LPM tries.
// No preallocation: capacity costs memory only when used.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;
#[map]
static ALLOW4_HOST: HashMap<[u8; 4], ListEntry> =
    HashMap::pinned(DEFAULT_HOST_ENTRIES, NO_PREALLOC);
#[map]
static ALLOW4_NET: LpmTrie<[u8; 4], ListEntry> = LpmTrie::pinned(DEFAULT_NET_ENTRIES, 0);
#[map]
static ALLOW6_HOST: HashMap<[u8; 16], ListEntry> =
    HashMap::pinned(DEFAULT_HOST_ENTRIES, NO_PREALLOC);
#[map]
static ALLOW6_NET: LpmTrie<[u8; 16], ListEntry> = LpmTrie::pinned(DEFAULT_NET_ENTRIES, 0);
#[map]
static BLOCK4_HOST: HashMap<[u8; 4], ListEntry> =
    HashMap::pinned(DEFAULT_HOST_ENTRIES, NO_PREALLOC);
#[map]
static BLOCK4_NET: LpmTrie<[u8; 4], ListEntry> = LpmTrie::pinned(DEFAULT_NET_ENTRIES, 0);
#[map]
static BLOCK6_HOST: HashMap<[u8; 16], ListEntry> =
    HashMap::pinned(DEFAULT_HOST_ENTRIES, NO_PREALLOC);
#[map]
static BLOCK6_NET: LpmTrie<[u8; 16], ListEntry> = LpmTrie::pinned(DEFAULT_NET_ENTRIES, 0);

/// Prefix lookups per list: the first, then one retry per expired match, each with a strictly
/// shorter prefix. 129 covers every nested prefix of an IPv6 address (/128 down to /0), so no
/// number of expired entries can hide an active shorter one; an unexpired match ends it at once.
const LPM_RETRIES: usize = 129;

#[xdp]
pub fn floodwall(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    // Interfaces without a slot (or beyond the table) share slot 0.
    let slot = IFACE_SLOTS.get(ifindex).copied().unwrap_or(0);
    // Index 0 of an array map always exists; without it the program is not configured.
    let Some(cfg) = config() else {
        count(slot, Reason::Malformed, len);
        return xdp_action::XDP_PASS;
    };
    let Some(mut frame) = Frame::new() else {
        count(slot, Reason::Malformed, len);
        return xdp_action::XDP_PASS;
    };
    // A malformed frame whose source could be read is passed as malformed only once that
    // source has passed the lists and limits (without the SYN challenge, which needs the
    // transport header). That it is malformed is noted in the frame's map memory, not kept
    // in a register, so the verifier walks the policy once for both kinds of frame.
    let src = match parse::<false>(&ctx) {
        Ok(Parsed::NonIp) => None,
        Ok(Parsed::Ip(ip)) => Some(ip.src),
        Err(Some(src)) if !cfg.malformed_drops() => {
            frame.took(MALFORMED);
            Some(src)
        }
        Err(_) => {
            frame.took(MALFORMED);
            None
        }
    };
    let reason = match &src {
        Some(src) => match decide(&ctx, cfg, src, len, &mut frame) {
            Reason::Passed if frame.taken() & MALFORMED != 0 => Reason::Malformed,
            reason => reason,
        },
        None if frame.taken() & MALFORMED != 0 => Reason::Malformed,
        None => Reason::NonIp,
    };
    let reason = limited(reason, &frame);
    let action = finish(cfg, slot, ifindex, reason, src.as_ref(), len, &mut frame);
    traced(&ctx, cfg, src.as_ref(), reason, action, len, ifindex)
}

/// The live config record. Read once per frame: the record is never written while a frame
/// that could have read it runs (userspace waits for an RCU grace period first).
#[inline(always)]
fn config() -> Option<&'static Config> {
    let slot = CONFIG_ACTIVE.get(0).copied().unwrap_or(0);
    CONFIG.get(slot % CONFIG_SLOTS)
}

/// The SYN challenge, for a frame `floodwall` handed over: the lists have passed it and its
/// source has no state. TCP sources prove themselves here; everything else (and TCP the
/// challenge does not answer) takes the admission and newcomer path as in `floodwall`.
#[xdp]
pub fn floodwall_syn(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    let slot = IFACE_SLOTS.get(ifindex).copied().unwrap_or(0);
    let Some(cfg) = config() else {
        count(slot, Reason::Malformed, len);
        return xdp_action::XDP_PASS;
    };
    let Some(mut frame) = Frame::new() else {
        count(slot, Reason::Malformed, len);
        return xdp_action::XDP_PASS;
    };
    let Ok(Parsed::Ip(ip)) = parse::<true>(&ctx) else {
        // `floodwall` parsed it as IP with a source: the frame cannot have changed.
        count(slot, Reason::Malformed, len);
        return xdp_action::XDP_PASS;
    };
    let outcome = if ip.proto == PROTO_TCP && !ip.fragment {
        syn::inspect(&ctx, cfg, &ip, cfg.dry_run())
    } else {
        Syn::Other
    };
    let reason = match outcome {
        Syn::Challenged => Reason::SynChallenged,
        Syn::BadCookie => Reason::SynBadCookie,
        Syn::Proven => vouched(cfg, &ip.src, len, &mut frame, true),
        Syn::Established => vouched(cfg, &ip.src, len, &mut frame, false),
        Syn::Other if cfg.limits_sources() => limit_source(None, cfg, &ip.src, len, &mut frame),
        Syn::Other => Reason::Passed,
    };
    let reason = match reason {
        Reason::Passed | Reason::SynProven => match capped(cfg, &ip.src, len, &mut frame) {
            Reason::Passed => reason,
            capped => capped,
        },
        reason => reason,
    };
    let reason = limited(reason, &frame);
    let action = finish(cfg, slot, ifindex, reason, Some(&ip.src), len, &mut frame);
    traced(&ctx, cfg, Some(&ip.src), reason, action, len, ifindex)
}

/// Hands a decided frame to `floodwall_trace` while a trace is on; returns the frame's action
/// (the trace program returns the same one). Off, this reads only the config's flag.
#[inline(always)]
fn traced(
    ctx: &XdpContext,
    cfg: &Config,
    src: Option<&SourceKey>,
    reason: Reason,
    action: u32,
    len: u64,
    ifindex: u32,
) -> u32 {
    let Some(src) = src else { return action };
    if !cfg.trace_on() || !TRACE.get(0).is_some_and(|t| t.on != 0) {
        return action;
    }
    let Some(record) = TRACE_SCRATCH.get_ptr_mut(0) else {
        return action;
    };
    // SAFETY: this CPU's slot of a per-CPU array, for this program run only.
    unsafe {
        *record = TraceRecord {
            src: *src,
            reason: reason as u32,
            action,
            len: len as u32,
            ifindex,
        };
        // On success this does not return: `floodwall_trace` returns `action`.
        let _ = PROGRAMS.tail_call(ctx, PROGRAM_SLOT_TRACE);
    }
    action
}

/// `floodwall trace`: one log line (through aya-log) per decided frame from the traced
/// prefix, at most the configured lines per second, until the trace's deadline.
#[xdp]
pub fn floodwall_trace(ctx: XdpContext) -> u32 {
    let Some(record) = TRACE_SCRATCH.get(0).copied() else {
        return xdp_action::XDP_PASS;
    };
    let Some(trace) = TRACE.get(0) else {
        return record.action;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !trace.matches(&record.src) || now >= trace.until_ns {
        return record.action;
    }
    if !take(GLOBAL_TRACE, &trace.lines, trace.lines.cost, now) {
        bump(MISC_TRACE_SUPPRESSED);
        return record.action;
    }
    let reason = Reason::from_u32(record.reason).map_or("unknown", Reason::name);
    let verdict = match record.action {
        xdp_action::XDP_DROP => "drop",
        xdp_action::XDP_TX => "tx",
        _ => "pass",
    };
    if record.src.family == FAMILY_V4 {
        let a = record.src.addr;
        let v4 = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        info!(
            &ctx,
            "{} {} from {:i} len {} if {}", verdict, reason, v4, record.len, record.ifindex
        );
    } else {
        info!(
            &ctx,
            "{} {} from {:i} len {} if {}",
            verdict,
            reason,
            record.src.addr,
            record.len,
            record.ifindex
        );
    }
    record.action
}

/// A source the challenge vouched for (a valid cookie, or a connection the kernel has): it
/// gets state at once, outside the admission and newcomer buckets, and its own limits apply.
#[inline(always)]
fn vouched(cfg: &Config, src: &SourceKey, len: u64, frame: &mut Frame, proven: bool) -> Reason {
    let Some(key) = frame_key(cfg, src) else {
        return Reason::NewcomerLimited;
    };
    let Some(state) = admit(cfg, key) else {
        return Reason::NewcomerLimited;
    };
    if proven {
        // SAFETY: a map value valid for this run.
        atomic_add(unsafe { &mut (*state).proven }, 1);
    }
    let reason = if cfg.limits_sources() {
        charge(cfg, key, state, len, frame)
    } else {
        Reason::Passed
    };
    match reason {
        Reason::Passed if proven => Reason::SynProven,
        reason => reason,
    }
}

/// Counts the frame under `reason` and returns its verdict: dropped, passed, or (a challenged
/// SYN, rewritten into its SYN-ACK) sent back.
#[inline(always)]
fn finish(
    cfg: &Config,
    slot: u32,
    ifindex: u32,
    reason: Reason,
    src: Option<&SourceKey>,
    len: u64,
    frame: &mut Frame,
) -> u32 {
    count(slot, reason, len);
    if reason == Reason::SynChallenged {
        if cfg.dry_run() {
            count(slot, Reason::DryRunPassed, len);
            return xdp_action::XDP_PASS;
        }
        return xdp_action::XDP_TX;
    }
    let drops = match reason {
        Reason::Malformed => cfg.malformed_drops(),
        r => r.drops(),
    };
    if !drops {
        return xdp_action::XDP_PASS;
    }
    if let Some(src) = src {
        report(cfg, src, reason, ifindex, frame);
    }
    if cfg.dry_run() {
        count(slot, Reason::DryRunPassed, len);
        return xdp_action::XDP_PASS;
    }
    xdp_action::XDP_DROP
}

/// Per CPU: the frame's notes, the kept clock, the source key, held drops, the last
/// reported source, the spent-budget notes and suppressed events (`filter_common::CpuScratch`).
#[map]
static CPU_SCRATCH: PerCpuArray<CpuScratch> = PerCpuArray::pinned(1, 0);

/// This CPU's `CpuScratch`; `None` only if the per-CPU array is missing its element.
#[inline(always)]
fn scratch() -> Option<*mut CpuScratch> {
    CPU_SCRATCH.get_ptr_mut(0)
}
const NOTES: usize = 0;
const JIFFIES: usize = 1;
const CLOCK: usize = 2;

/// Tokens a frame took before the global caps, given back if a cap drops it.
const TOOK_SOURCE: u64 = 1;
const TOOK_NEWCOMER: u64 = 2;
const TOOK_ADMISSION: u64 = 4;
/// Not a token: the parser called the frame malformed (its source may still be known).
const MALFORMED: u64 = 8;
/// Not a token: a bucket's retries ran out for this frame (see `Reason::Contended`).
const CONTENDED: u64 = 16;

/// The tokens the frame took, and the clock. Kept in map memory rather than on the stack:
/// the verifier then does not follow "took this or that" as kinds of state through every
/// later check, which multiplied the program's verification cost past the kernel's budget.
struct Frame {
    cache: *mut [u64; 3],
}

impl Frame {
    /// Fresh notes for this frame; `None` only if the per-CPU array is missing its element.
    #[inline(always)]
    fn new() -> Option<Frame> {
        // SAFETY: this CPU's own element, valid for this run.
        let cache = unsafe { &raw mut (*scratch()?).notes };
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&mut (*cache)[NOTES], 0) };
        Some(Frame { cache })
    }

    /// Notes tokens taken (`TOOK_*`).
    #[inline(always)]
    fn took(&mut self, bits: u64) {
        // SAFETY: as in `new`.
        unsafe {
            let old = core::ptr::read_volatile(&(*self.cache)[NOTES]);
            core::ptr::write_volatile(&mut (*self.cache)[NOTES], old | bits);
        }
    }

    #[inline(always)]
    fn taken(&self) -> u64 {
        // SAFETY: as in `new`.
        unsafe { core::ptr::read_volatile(&(*self.cache)[NOTES]) }
    }

    /// The filter's clock, `bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC at tick resolution, for
    /// the limiter and list expiry (event sampling counts jiffies). GCRA keeps its long-run
    /// rate exactly with it because every burst covers a tick (see `filter_common::limiter`),
    /// and an entry expires at most one tick late. The coarse clock moves only at a tick, as
    /// jiffies do, so each CPU reads it once per jiffy and keeps it: reading jiffies is an
    /// inlined load (2 ns), the helper call 18 ns. A tick moves jiffies before the clock; a
    /// reading taken between the two is not kept, so the kept clock never lags a whole tick.
    #[inline(always)]
    fn now(&mut self) -> u64 {
        // SAFETY: as in `new`; the clock words outlive the frame, on this CPU only.
        unsafe {
            let jiffies = bpf_jiffies64();
            let kept = core::ptr::read_volatile(&(*self.cache)[CLOCK]);
            if jiffies == core::ptr::read_volatile(&(*self.cache)[JIFFIES]) {
                return kept;
            }
            let now = bpf_ktime_get_coarse_ns();
            // Without a branch (each one multiplies the verifier's paths): the jiffies are
            // kept only if the clock moved with them, else 0, which no reading equals.
            let moved = u64::from(now != kept).wrapping_neg();
            core::ptr::write_volatile(&mut (*self.cache)[JIFFIES], jiffies & moved);
            core::ptr::write_volatile(&mut (*self.cache)[CLOCK], now);
            now
        }
    }
}

/// The policy, in the order of the design: allowlist, blocklist, SYN challenge (handed over to
/// `floodwall_syn`), per-source limit, global caps.
#[inline(always)]
fn decide(ctx: &XdpContext, cfg: &Config, src: &SourceKey, len: u64, frame: &mut Frame) -> Reason {
    let v4 = src.family == FAMILY_V4;
    let (host, net) = if v4 {
        (LIST_ALLOW4_HOST, LIST_ALLOW4_NET)
    } else {
        (LIST_ALLOW6_HOST, LIST_ALLOW6_NET)
    };
    if listed(cfg.lists, host, net, src, true, frame) {
        return Reason::Allowlisted;
    }
    let (host, net) = if v4 {
        (LIST_BLOCK4_HOST, LIST_BLOCK4_NET)
    } else {
        (LIST_BLOCK6_HOST, LIST_BLOCK6_NET)
    };
    if listed(cfg.lists, host, net, src, false, frame) {
        return Reason::Blocklisted;
    }
    let challenge = cfg.syn_on() || (cfg.syn_auto() && SYN_ACTIVE.get(0).is_some_and(|v| *v != 0));
    if cfg.limits_sources() || challenge {
        let reason = limit_source(challenge.then_some(ctx), cfg, src, len, frame);
        if reason != Reason::Passed {
            return reason;
        }
    }
    capped(cfg, src, len, frame)
}

/// The global caps, the last check of a frame that passed everything else. A frame a cap
/// drops is not its source's doing: the tokens it took on the way go back (the source's own,
/// counted neither as passed nor dropped; the newcomer bucket's; admission's).
#[inline(always)]
fn capped(cfg: &Config, src: &SourceKey, len: u64, frame: &mut Frame) -> Reason {
    let reason = global_caps(cfg, len, frame);
    if reason == Reason::Passed {
        return reason;
    }
    let taken = frame.taken();
    if taken & TOOK_SOURCE != 0
        && let Some(state) = SOURCES.get_ptr_mut(&source_key(cfg, src))
    {
        // SAFETY: a map value valid for this run, updated atomically.
        let state = unsafe { &mut *state };
        if cfg.source_pkt.enabled() {
            atomic_add(&mut state.tat_pkt, cfg.source_pkt.cost.wrapping_neg());
        }
        if cfg.source_byte.enabled() {
            let cost = byte_cost(len, cfg.source_byte.cost);
            atomic_add(&mut state.tat_byte, cost.wrapping_neg());
        }
        atomic_add(&mut state.passed, 1u64.wrapping_neg());
    }
    if taken & TOOK_NEWCOMER != 0 {
        refund(GLOBAL_NEWCOMER, cfg.newcomer.cost);
    }
    if taken & TOOK_ADMISSION != 0 {
        refund(GLOBAL_ADMISSION, cfg.admission.cost);
    }
    reason
}

/// The global packet and byte caps, the last check of a frame that passed everything else.
/// A byte-cap drop gives the packet cap's token back.
#[inline(always)]
fn global_caps(cfg: &Config, len: u64, frame: &mut Frame) -> Reason {
    let pkt = cfg.global_pkt.enabled();
    if pkt
        && !take(
            GLOBAL_PKT,
            &cfg.global_pkt,
            cfg.global_pkt.cost,
            frame.now(),
        )
    {
        return Reason::GlobalCap;
    }
    if cfg.global_byte.enabled() {
        let cost = byte_cost(len, cfg.global_byte.cost);
        if !take(GLOBAL_BYTE, &cfg.global_byte, cost, frame.now()) {
            if pkt {
                refund(GLOBAL_PKT, cfg.global_pkt.cost);
            }
            return Reason::GlobalCap;
        }
    }
    Reason::Passed
}

/// Gives a token back to global bucket `slot`: the frame that took it was dropped later.
#[inline(always)]
fn refund(slot: u32, cost: u64) {
    if let Some(bucket) = GLOBALS.get_ptr_mut(slot) {
        // SAFETY: a map value valid for this run, updated atomically.
        atomic_add(unsafe { &mut (*bucket).tat }, cost.wrapping_neg());
    }
}

/// Whether `src` is in the allowlist or blocklist (picked by `allow`), honouring expiry.
#[inline(always)]
fn listed(
    lists: u32,
    host_bit: u32,
    net_bit: u32,
    src: &SourceKey,
    allow: bool,
    frame: &mut Frame,
) -> bool {
    if lists & host_bit != 0 && host_covered(src, allow) {
        let entry = if src.family == FAMILY_V4 {
            let addr = [src.addr[0], src.addr[1], src.addr[2], src.addr[3]];
            // SAFETY: the value is copied out at once; a concurrent delete may at worst make
            // this frame see the entry as it was just before.
            unsafe {
                if allow {
                    ALLOW4_HOST.get(&addr)
                } else {
                    BLOCK4_HOST.get(&addr)
                }
            }
            .copied()
        } else {
            // SAFETY: as above.
            unsafe {
                if allow {
                    ALLOW6_HOST.get(&src.addr)
                } else {
                    BLOCK6_HOST.get(&src.addr)
                }
            }
            .copied()
        };
        if let Some(entry) = entry
            && (entry.expires_ns == 0 || entry.active(frame.now()))
        {
            return true;
        }
    }
    if lists & net_bit != 0 && covered(src, allow) {
        let mut prefix_len = if src.family == FAMILY_V4 { 32 } else { 128 };
        for _ in 0..LPM_RETRIES {
            let entry = if src.family == FAMILY_V4 {
                let key = Key::new(
                    prefix_len,
                    [src.addr[0], src.addr[1], src.addr[2], src.addr[3]],
                );
                if allow {
                    ALLOW4_NET.get(&key)
                } else {
                    BLOCK4_NET.get(&key)
                }
                .copied()
            } else {
                let key = Key::new(prefix_len, src.addr);
                if allow {
                    ALLOW6_NET.get(&key)
                } else {
                    BLOCK6_NET.get(&key)
                }
                .copied()
            };
            let Some(entry) = entry else {
                return false;
            };
            if entry.expires_ns == 0 || entry.active(frame.now()) {
                return true;
            }
            // Expired: a shorter prefix may still cover the address. The entry's own length
            // is trusted only below the one just looked up, so a bad entry can never send the
            // search back up (and spend the retries hiding a shorter match).
            let own = if entry.prefix_len < prefix_len {
                entry.prefix_len
            } else {
                prefix_len
            };
            if own == 0 {
                return false;
            }
            prefix_len = own - 1;
        }
    }
    false
}

/// Whether a prefix of the list could cover `src`: the bit of its /16. An LPM lookup costs
/// 37-103 ns by the trie's size; this is an array read.
#[inline(always)]
fn covered(src: &SourceKey, allow: bool) -> bool {
    let top16 = (u32::from(src.addr[0]) << 8) | u32::from(src.addr[1]);
    let word = net_cover_base(allow, src.family == FAMILY_V4) + top16 / 64;
    NET_COVER
        .get(word)
        .is_none_or(|bits| bits & (1u64 << (top16 % 64)) != 0)
}

/// Whether the list could hold `src` as an exact host: its bit. A hash lookup of an address
/// the list does not hold costs as much as a hit (and for a random address, a cache miss).
#[inline(always)]
fn host_covered(src: &SourceKey, allow: bool) -> bool {
    let bit = host_cover_bit(src);
    let word = host_cover_base(allow, src.family == FAMILY_V4) + bit / 64;
    HOST_COVER
        .get(word)
        .is_none_or(|bits| bits & (1u64 << (bit % 64)) != 0)
}

/// Whether `key` may have state: its bit in the active `KNOWN` generation. A config without
/// the bitmap's size (see `Config::known_log2`) has every source looked up.
#[inline(always)]
fn maybe_known(cfg: &Config, key: &SourceKey) -> bool {
    let log2 = cfg.known_log2;
    if !(KNOWN_MIN_LOG2..=KNOWN_MAX_LOG2).contains(&log2) {
        return true;
    }
    let generation = KNOWN_ACTIVE.get(0).copied().unwrap_or(0) & 1;
    let bit = known_bit(key, log2);
    KNOWN
        .get(generation * known_words(log2) + bit / 64)
        .is_none_or(|bits| bits & (1u64 << (bit % 64)) != 0)
}

/// Sets `key`'s bit in both `KNOWN` generations, once it has state: atomically, since other
/// CPUs and the controller's rebuild write the same words.
#[inline(always)]
fn mark_known(cfg: &Config, key: &SourceKey) {
    let log2 = cfg.known_log2;
    if !(KNOWN_MIN_LOG2..=KNOWN_MAX_LOG2).contains(&log2) {
        return;
    }
    let bit = known_bit(key, log2);
    for generation in 0..2 {
        if let Some(word) = KNOWN.get_ptr_mut(generation * known_words(log2) + bit / 64) {
            atomic_or(word, 1u64 << (bit % 64));
        }
    }
}

/// The source's key, written into this CPU's `CpuScratch::key`; `None` only if the per-CPU
/// array is missing its element.
#[inline(always)]
fn frame_key(cfg: &Config, src: &SourceKey) -> Option<&'static SourceKey> {
    // SAFETY: this CPU's own element, valid for this run.
    unsafe {
        let key = &raw mut (*scratch()?).key;
        *key = source_key(cfg, src);
        Some(&*key)
    }
}

/// The source's key: its address masked to the configured prefix.
#[inline(always)]
fn source_key(cfg: &Config, src: &SourceKey) -> SourceKey {
    src.masked(if src.family == FAMILY_V4 {
        cfg.prefix4
    } else {
        cfg.prefix6
    })
}

/// The per-source token buckets, with admission control for sources that have no state.
/// With `challenge`, a source without state is handed to the SYN challenge instead.
#[inline(always)]
fn limit_source(
    challenge: Option<&XdpContext>,
    cfg: &Config,
    src: &SourceKey,
    len: u64,
    frame: &mut Frame,
) -> Reason {
    let Some(key) = frame_key(cfg, src) else {
        return Reason::NewcomerLimited;
    };
    let now = frame.now();
    if cfg.limits_sources() && still_over(cfg, key, now) {
        return Reason::OverPps;
    }
    let state = if maybe_known(cfg, key) {
        SOURCES.get_ptr_mut(key)
    } else {
        None
    };
    let state = match state {
        Some(state) => state,
        None => {
            // A malformed frame has no transport header the challenge could answer.
            if let Some(ctx) = challenge
                && frame.taken() & MALFORMED == 0
            {
                // SAFETY: on success the tail call does not return; `floodwall_syn` decides.
                unsafe { PROGRAMS.tail_call(ctx, PROGRAM_SLOT_SYN) };
                // Not loaded: the frame takes the path it would without the challenge.
                bump(MISC_SYN_HANDOVER_FAILED);
            }
            if !cfg.limits_sources() {
                return Reason::Passed;
            }
            if cfg.admission.enabled() {
                let scratch = scratch();
                // SAFETY: this CPU's own element, valid for this run.
                let notes = scratch.map(|s| unsafe {
                    (&raw mut (*s).admission_spent, &raw mut (*s).newcomer_spent)
                });
                if !take_noted(notes.map(|n| n.0), GLOBAL_ADMISSION, &cfg.admission, now) {
                    // Spoof-proof: no state for this source; it shares the newcomer bucket.
                    if cfg.newcomer.enabled()
                        && take_noted(notes.map(|n| n.1), GLOBAL_NEWCOMER, &cfg.newcomer, now)
                    {
                        frame.took(TOOK_NEWCOMER);
                        return Reason::Passed;
                    }
                    return Reason::NewcomerLimited;
                }
                frame.took(TOOK_ADMISSION);
            }
            // The map refusing leaves the source limited as a newcomer: never fail open.
            let Some(state) = admit(cfg, key) else {
                return Reason::NewcomerLimited;
            };
            return charge(cfg, key, state, len, frame);
        }
    };
    if !cfg.limits_sources() {
        return Reason::Passed;
    }
    charge(cfg, key, state, len, frame)
}

/// Gives the source `key` state of its own and returns it. Another CPU may have inserted it
/// first; either way it exists after this unless the map refused.
#[inline(always)]
fn admit(cfg: &Config, key: &SourceKey) -> Option<*mut SourceState> {
    if SOURCES
        .insert(key, &SourceState::default(), BPF_NOEXIST as u64)
        .is_ok()
    {
        bump(MISC_ADMITTED);
    }
    let state = SOURCES.get_ptr_mut(key);
    match state {
        // Once the state is in the map: a rebuild that clears the bit first finds the state
        // (see `filter_common::MAP_KNOWN`). A source the map refused gets no bit.
        Some(_) => mark_known(cfg, key),
        None => bump(MISC_SOURCE_INSERT_FAILED),
    }
    state
}

/// Takes the frame's cost from a source's packet and byte buckets.
#[inline(always)]
fn charge(
    cfg: &Config,
    key: &SourceKey,
    state: *mut SourceState,
    len: u64,
    frame: &mut Frame,
) -> Reason {
    let now = frame.now();
    // SAFETY: `state` points into a map value that stays valid for this program run;
    // every field shared between CPUs is read and written atomically.
    let state = unsafe { &mut *state };
    let mut reason = Reason::Passed;
    if cfg.source_pkt.enabled()
        && !take_ptr(
            &mut state.tat_pkt,
            &cfg.source_pkt,
            cfg.source_pkt.cost,
            now,
        )
    {
        reason = Reason::OverPps;
    }
    if reason == Reason::Passed && cfg.source_byte.enabled() {
        let cost = byte_cost(len, cfg.source_byte.cost);
        if !take_ptr(&mut state.tat_byte, &cfg.source_byte, cost, now) {
            reason = Reason::OverBps;
            // Refund the packet token: a dropped frame must not use up the packet budget.
            if cfg.source_pkt.enabled() {
                atomic_add(&mut state.tat_pkt, cfg.source_pkt.cost.wrapping_neg());
            }
        }
    }
    if reason != Reason::Passed {
        // Over its packet bucket on a plain read (not a lost race): over until its arrival
        // time is within one cost of tau.
        let over_until = if reason == Reason::OverPps && frame.taken() & CONTENDED == 0 {
            // SAFETY: as above; an aligned 64-bit load.
            let tat = unsafe { core::ptr::read_volatile(&state.tat_pkt) };
            tat.saturating_add(cfg.source_pkt.cost)
                .saturating_sub(cfg.source_pkt.tau)
        } else {
            0
        };
        count_drop(key, state, now, over_until, &cfg.source_pkt);
        return reason;
    }
    atomic_add(&mut state.passed, 1);
    frame.took(TOOK_SOURCE);
    Reason::Passed
}

/// Counts an over-limit drop of the source `key` (in `CpuScratch::key`), whose state is
/// `state`. The count is held per CPU and added to the shared state when this CPU drops
/// another source or has held it for `PENDING_DROPS_NS`, so a flood being dropped writes the
/// source's shared cache line about once a second per CPU, not once per frame. Readers
/// (`top`, bans) add what the CPUs hold.
#[inline(always)]
fn count_drop(key: &SourceKey, state: &mut SourceState, now: u64, over_until: u64, pkt: &Bucket) {
    let Some(scratch) = scratch() else {
        atomic_add(&mut state.dropped, 1);
        return;
    };
    // SAFETY: this CPU's own element, valid for this run.
    let pending = unsafe { &mut (*scratch).pending };
    pending.over_until_ns = over_until;
    pending.over_cost = pkt.cost;
    pending.over_tau = pkt.tau;
    if same_source(&pending.key, key) {
        pending.count += 1;
        if now.wrapping_sub(pending.since_ns) < PENDING_DROPS_NS {
            return;
        }
        atomic_add(&mut state.dropped, pending.count);
        pending.count = 0;
        pending.since_ns = now;
        return;
    }
    // Another source's drops: add them to its state (at first the key is zeroes, no source).
    if pending.count != 0
        && let Some(held) = SOURCES.get_ptr_mut(&pending.key)
    {
        // SAFETY: a map value valid for this run, updated atomically.
        atomic_add(unsafe { &mut (*held).dropped }, pending.count);
    }
    pending.key = *key;
    pending.count = 1;
    pending.since_ns = now;
}

/// Whether `key` is the source this CPU holds drops of and is still over its packet limit at
/// `now` under the same bucket (see `PendingDrops::over_until_ns`): then the frame is dropped
/// and counted without the state lookup. Not once the held count is due to be added to the
/// state, which `count_drop` does.
#[inline(always)]
fn still_over(cfg: &Config, key: &SourceKey, now: u64) -> bool {
    let Some(scratch) = scratch() else {
        return false;
    };
    // SAFETY: this CPU's own element, valid for this run.
    let pending = unsafe { &mut (*scratch).pending };
    let over = now < pending.over_until_ns
        && now.wrapping_sub(pending.since_ns) < PENDING_DROPS_NS
        && ((pending.over_cost ^ cfg.source_pkt.cost) | (pending.over_tau ^ cfg.source_pkt.tau))
            == 0
        && same_source(&pending.key, key);
    if over {
        pending.count += 1;
    }
    over
}

/// Key equality without a branch per word: a derived `==` may become a `memcmp` call, which
/// BPF has not, and every branch here would multiply the paths the verifier walks.
#[inline(always)]
fn same_source(a: &SourceKey, b: &SourceKey) -> bool {
    let (x, y) = (a.words(), b.words());
    ((a.family ^ b.family) | (x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0
}

/// GCRA on slot `slot` of the global buckets.
#[inline(always)]
fn take(slot: u32, bucket: &Bucket, cost: u64, now: u64) -> bool {
    match GLOBALS.get_ptr_mut(slot) {
        // SAFETY: a map value valid for this run; only its address is taken here.
        Some(global) => take_ptr(unsafe { &raw mut (*global).tat }, bucket, cost, now),
        None => false,
    }
}

/// Whether this CPU noted global bucket `bucket` spent at `now` (see `SpentNote`): then its
/// shared line is not read. A flood reads it once per unit the bucket lets through, not once
/// per frame.
#[inline(always)]
fn noted_spent(note: Option<*mut SpentNote>, bucket: &Bucket, now: u64) -> bool {
    let Some(note) = note else {
        return false;
    };
    // SAFETY: this CPU's own element, valid for this run.
    let note = unsafe { &*note };
    now < note.until_ns && ((note.cost ^ bucket.cost) | (note.tau ^ bucket.tau)) == 0
}

/// Notes global bucket `bucket`, whose arrival time is `tat`, spent (see `SpentNote`): one
/// unit conforms once the arrival time is within tau of now, one cost ahead.
#[inline(always)]
fn note_spent(note: Option<*mut SpentNote>, bucket: &Bucket, tat: u64) {
    if let Some(note) = note {
        // SAFETY: this CPU's own element, valid for this run.
        unsafe {
            (*note).until_ns = tat.saturating_add(bucket.cost).saturating_sub(bucket.tau);
            (*note).cost = bucket.cost;
            (*note).tau = bucket.tau;
        }
    }
}

/// Whether the global event budget is spent at `now` (no token is taken).
#[inline(always)]
fn events_spent(scratch: Option<*mut CpuScratch>, cfg: &Config, now: u64) -> bool {
    // SAFETY: this CPU's own element, valid for this run.
    let note = scratch.map(|s| unsafe { &raw mut (*s).events_spent });
    let bucket = &cfg.events;
    if noted_spent(note, bucket, now) {
        return true;
    }
    let Some(global) = GLOBALS.get(GLOBAL_EVENTS) else {
        return true;
    };
    if filter_common::gcra(global.tat, now, bucket.cost, bucket.tau).is_some() {
        return false;
    }
    note_spent(note, bucket, global.tat);
    true
}

/// GCRA on global bucket `slot` (admission or newcomers), skipped while this CPU has it noted
/// spent (`note`), and noted when found spent.
#[inline(always)]
fn take_noted(note: Option<*mut SpentNote>, slot: u32, bucket: &Bucket, now: u64) -> bool {
    if noted_spent(note, bucket, now) {
        return false;
    }
    let Some(global) = GLOBALS.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: a map value valid for this run; only its address is taken here.
    let tat = unsafe { &raw mut (*global).tat };
    if take_ptr(tat, bucket, bucket.cost, now) {
        return true;
    }
    // SAFETY: as above; an aligned 64-bit load. A later arrival time than the one the take
    // found only makes the note later, as the bucket is.
    let seen = unsafe { core::ptr::read_volatile(tat) };
    if filter_common::gcra(seen, now, bucket.cost, bucket.tau).is_none() {
        note_spent(note, bucket, seen);
    }
    false
}

/// GCRA on one arrival time. Contention that outlasts the retries takes no token, and is
/// noted so that the frame is counted as contended (see [`limited`]) if it is dropped.
#[inline(always)]
fn take_ptr(tat: *mut u64, bucket: &Bucket, cost: u64, now: u64) -> bool {
    match sync::gcra_cas(tat, bucket, cost, now) {
        Some(ok) => ok,
        None => {
            bump(MISC_CAS_EXHAUSTED);
            if let Some(notes) = scratch() {
                // SAFETY: this CPU's own element, valid for this run.
                unsafe { (*notes).notes[NOTES] |= CONTENDED };
            }
            false
        }
    }
}

/// A limiter's drop of a frame that lost a bucket's race is the race's doing, not its
/// source's: counted under its own reason.
#[inline(always)]
fn limited(reason: Reason, frame: &Frame) -> Reason {
    match reason {
        Reason::OverPps | Reason::OverBps | Reason::NewcomerLimited | Reason::GlobalCap
            if frame.taken() & CONTENDED != 0 =>
        {
            Reason::Contended
        }
        reason => reason,
    }
}

/// Sends a sampled drop event: at most `cfg.events` per second in all, and at most one per
/// source per `cfg.event_interval_ns`, so a flood never turns into a log flood.
#[inline(always)]
fn report(cfg: &Config, src: &SourceKey, reason: Reason, ifindex: u32, frame: &mut Frame) {
    if !cfg.events.enabled() {
        return;
    }
    let now = if cfg.tick_ns != 0 {
        // SAFETY: bpf_jiffies64 has no preconditions.
        unsafe { bpf_jiffies64() }.wrapping_mul(u64::from(cfg.tick_ns))
    } else {
        frame.now()
    };
    // Reads first, and only then is a token taken, so a flood from one source cannot spend
    // the budget that the first drops of other sources need: this CPU's last reported source
    // (a flood from one source ends here), then the global budget (a flood from many ends
    // here), then the source's own interval, a hash lookup.
    let scratch = scratch();
    if let Some(recent) = scratch {
        // SAFETY: this CPU's own element, valid for this run.
        let recent = unsafe { &*recent };
        if same_source(&recent.last_event, src)
            && now.wrapping_sub(recent.last_event_ns) < cfg.event_interval_ns
        {
            suppressed(scratch);
            return;
        }
    }
    if events_spent(scratch, cfg, now) {
        suppressed(scratch);
        return;
    }
    let seen = EVENT_SEEN.get_ptr_mut(src);
    if let Some(last) = seen {
        // SAFETY: a map value valid for this run.
        let at_ns = unsafe { *last };
        if now.wrapping_sub(at_ns) < cfg.event_interval_ns {
            remember_event(scratch, src, at_ns);
            suppressed(scratch);
            return;
        }
    }
    if !take(GLOBAL_EVENTS, &cfg.events, cfg.events.cost, now) {
        suppressed(scratch);
        return;
    }
    match seen {
        // SAFETY: as above; a racy write only resamples.
        Some(last) => unsafe { *last = now },
        None => {
            // Failure only means the source is reported again sooner.
            let _ = EVENT_SEEN.insert(src, &now, 0);
        }
    }
    remember_event(scratch, src, now);
    let event = DropEvent {
        ts_ns: now,
        ifindex,
        reason: reason as u32,
        family: src.family,
        _pad: 0,
        addr: src.addr,
    };
    if EVENTS.output::<DropEvent>(&event, 0).is_ok() {
        bump(MISC_EVENTS_SENT);
    } else {
        bump(MISC_EVENTS_RING_FULL);
    }
}

/// Counts a suppressed drop event (see `CpuScratch::events_suppressed`).
#[inline(always)]
fn suppressed(scratch: Option<*mut CpuScratch>) {
    match scratch {
        // SAFETY: this CPU's own element, valid for this run.
        Some(scratch) => unsafe { (*scratch).events_suppressed += 1 },
        None => bump(MISC_EVENTS_SUPPRESSED),
    }
}

#[inline(always)]
fn remember_event(scratch: Option<*mut CpuScratch>, src: &SourceKey, at_ns: u64) {
    if let Some(scratch) = scratch {
        // SAFETY: this CPU's own element, valid for this run.
        unsafe {
            (*scratch).last_event = *src;
            (*scratch).last_event_ns = at_ns;
        }
    }
}

#[inline(always)]
fn count(slot: u32, reason: Reason, len: u64) {
    if let Some(counter) = COUNTERS.get_ptr_mut(counter_index(slot, reason)) {
        // SAFETY: this CPU's own element of a per-CPU array.
        let counter = unsafe { &mut *counter };
        counter.packets += 1;
        counter.bytes += len;
    }
}

#[inline(always)]
pub(crate) fn bump(slot: u32) {
    if let Some(value) = MISC.get_ptr_mut(slot) {
        // SAFETY: this CPU's own slot.
        unsafe { *value += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
