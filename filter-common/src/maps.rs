//! Map names, capacities, and the key and value layouts both sides read and write.

use core::mem::size_of;

use crate::{Reason, limiter::Bucket};

// Map names: the symbol in the object file and the pin file name under bpffs.
pub const MAP_CONFIG: &str = "CONFIG";
/// Which of the [`CONFIG_SLOTS`] config records is live: userspace writes the other one and
/// then flips this, so a frame always reads one whole version.
pub const MAP_CONFIG_ACTIVE: &str = "CONFIG_ACTIVE";
pub const CONFIG_SLOTS: u32 = 2;
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_IFACE_SLOTS: &str = "IFACE_SLOTS";
pub const MAP_SLOT_IFACES: &str = "SLOT_IFACES";
pub const MAP_MISC: &str = "MISC";
pub const MAP_GLOBALS: &str = "GLOBALS";
pub const MAP_SOURCES: &str = "SOURCES";
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_EVENT_SEEN: &str = "EVENT_SEEN";
/// Per CPU: what the data path keeps of the frame it decides and of the frames before
/// ([`CpuScratch`]), among it the over-limit drops of one source not yet added to its shared
/// count.
pub const MAP_CPU_SCRATCH: &str = "CPU_SCRATCH";
/// One u64: the build of the loaded program (a hash of its object, written when it is
/// loaded). The controller works only with the filter its own build loaded: a program of
/// another build may lay its maps out otherwise, or hash addresses to other bits, so that a
/// list entry the controller writes would be missed.
pub const MAP_BUILD: &str = "BUILD";
/// Which /16s (an address's first 16 bits, IPv4 or IPv6) each list's prefixes may cover: one
/// bit per /16, [`NET_COVER_WORDS`] words per list and family, at [`net_cover_base`]. The
/// kernel skips the prefix lookup for an address whose bit is clear. The controller sets a
/// prefix's bits before it inserts the prefix, so a clear bit never hides one; bits stay when
/// prefixes go (a lookup, no harm) until the controller rebuilds them from the store
/// (`lists::rebuild_cover`: hourly in `floodwall run`, and in recovery).
pub const MAP_NET_COVER: &str = "NET_COVER";
pub const NET_COVER_WORDS: u32 = 1 << 10;
pub const NET_COVER_ENTRIES: u32 = 4 * NET_COVER_WORDS;

/// Which of a cover map's four bitmaps belongs to a list and family: allowlist IPv4, IPv6,
/// then blocklist IPv4, IPv6.
#[inline(always)]
const fn cover_slot(allow: bool, v4: bool) -> u32 {
    let list = if allow { 0 } else { 2 };
    let family = if v4 { 0 } else { 1 };
    list + family
}

/// First word of a list's cover bits (see [`cover_slot`]).
#[inline(always)]
pub const fn net_cover_base(allow: bool, v4: bool) -> u32 {
    cover_slot(allow, v4) * NET_COVER_WORDS
}

/// The /16s a prefix covers: its first 16 bits, and for a prefix shorter than /16 every /16
/// inside it (first and last, inclusive).
pub const fn net_cover_range(top16: u16, prefix_len: u32) -> (u16, u16) {
    if prefix_len >= 16 {
        return (top16, top16);
    }
    let span = (1u32 << (16 - prefix_len)) - 1;
    let first = (top16 as u32) & !span;
    (first as u16, (first | span) as u16)
}
/// Which exact hosts each list may hold: one bit per [`addr_bit`] of the address,
/// [`HOST_COVER_WORDS`] words per list and family at [`host_cover_base`]. The kernel skips the
/// host lookup for an address whose bit is clear. The controller sets a host's bit before it
/// inserts the host, so a clear bit never hides one; a bit left set by a host that went costs
/// only a lookup, until the bits are rebuilt as [`MAP_NET_COVER`]'s are. Memory-mapped
/// by the controller, which sets bits with atomic operations.
pub const MAP_HOST_COVER: &str = "HOST_COVER";
pub const HOST_COVER_LOG2: u32 = 20;
pub const HOST_COVER_WORDS: u32 = 1 << (HOST_COVER_LOG2 - 6);
pub const HOST_COVER_ENTRIES: u32 = 4 * HOST_COVER_WORDS;

/// First word of a list's host bits (see [`cover_slot`]).
#[inline(always)]
pub const fn host_cover_base(allow: bool, v4: bool) -> u32 {
    cover_slot(allow, v4) * HOST_COVER_WORDS
}

/// Which sources may have state in `SOURCES`: one bit per [`addr_bit`] of the key, in two
/// generations of [`known_words`] words. The kernel looks a source up only if its bit is set
/// in the generation `MAP_KNOWN_ACTIVE` names, so a spoofed flood's random sources (nearly all
/// bits clear) skip the state lookup, which misses the cache for a random key. The kernel sets
/// a source's bit in both generations once the source has state; the controller rebuilds the
/// idle generation from `SOURCES` (so sources gone from the map stop costing a lookup) and
/// then makes it the active one. See `Known::rebuild` in the controller for why no known source
/// is ever missed.
pub const MAP_KNOWN: &str = "KNOWN";
pub const MAP_KNOWN_ACTIVE: &str = "KNOWN_ACTIVE";
/// Bounds of a `KNOWN` generation's size, as a power of two in bits.
pub const KNOWN_MIN_LOG2: u32 = 12;
pub const KNOWN_MAX_LOG2: u32 = 24;

/// A `KNOWN` generation's size for a `SOURCES` capacity, as a power of two in bits: at least
/// twice the capacity, so a full map leaves most bits clear (at most 39% set), and no larger,
/// since a random source's word must come from the cache: on a veth, a random-source flood
/// cost 25-30 ns more per frame in the filter with 2^21 bits than with 2^18 (the default
/// capacity's size).
pub const fn known_log2(sources: u32) -> u32 {
    let log2 = 32 - sources.saturating_sub(1).leading_zeros() + 1;
    if log2 < KNOWN_MIN_LOG2 {
        KNOWN_MIN_LOG2
    } else if log2 > KNOWN_MAX_LOG2 {
        KNOWN_MAX_LOG2
    } else {
        log2
    }
}

/// Words of a `KNOWN` generation of `2^log2` bits.
pub const fn known_words(log2: u32) -> u32 {
    1 << (log2 - 6)
}

/// Entries of the `KNOWN` array for a `SOURCES` capacity: its two generations.
pub const fn known_entries(sources: u32) -> u32 {
    2 * known_words(known_log2(sources))
}

/// The bit of an address (its four words as [`SourceKey::words`] reads them) in a bitmap of
/// `2^log2` bits: the top bits of murmur3's 64-bit finalizer, the same on both sides. A plain
/// multiplicative hash collided on neighbouring addresses (their varying bytes are the high
/// bits of a little-endian word): 568 of 4,096 consecutive IPv4 sources shared a bit.
#[inline(always)]
pub const fn addr_bit(w: [u32; 4], log2: u32) -> u32 {
    let lo = (w[0] as u64) | ((w[1] as u64) << 32);
    let hi = (w[2] as u64) | ((w[3] as u64) << 32);
    (mix64(lo ^ mix64(hi)) >> (64 - log2)) as u32
}

#[inline(always)]
const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A source key's bit in a `KNOWN` generation of `2^log2` bits (`Config::known_log2`).
#[inline(always)]
pub fn known_bit(key: &SourceKey, log2: u32) -> u32 {
    let mut w = key.words();
    w[1] ^= key.family;
    addr_bit(w, log2)
}

/// A host's bit in its list's `HOST_COVER` bits.
#[inline(always)]
pub fn host_cover_bit(key: &SourceKey) -> u32 {
    addr_bit(key.words(), HOST_COVER_LOG2)
}

pub const MAP_SYN_ACTIVE: &str = "SYN_ACTIVE";
pub const MAP_PROGRAMS: &str = "PROGRAMS";
/// The SYN challenge's program and its slot in `PROGRAMS`.
pub const SYN_PROGRAM_NAME: &str = "floodwall_syn";
pub const PROGRAM_SLOT_SYN: u32 = 0;
/// `floodwall trace`'s program: frames are handed to it, once decided, only while a trace is
/// on (`FLAG_TRACE`), so with it off the filter carries a flag test for it.
pub const TRACE_PROGRAM_NAME: &str = "floodwall_trace";
pub const PROGRAM_SLOT_TRACE: u32 = 1;
pub const PROGRAM_SLOTS: u32 = 2;
/// The trace switch and what it matches (one `TraceConfig`).
pub const MAP_TRACE: &str = "TRACE";
pub const MAP_ALLOW4_HOST: &str = "ALLOW4_HOST";
pub const MAP_ALLOW4_NET: &str = "ALLOW4_NET";
pub const MAP_ALLOW6_HOST: &str = "ALLOW6_HOST";
pub const MAP_ALLOW6_NET: &str = "ALLOW6_NET";
pub const MAP_BLOCK4_HOST: &str = "BLOCK4_HOST";
pub const MAP_BLOCK4_NET: &str = "BLOCK4_NET";
pub const MAP_BLOCK6_HOST: &str = "BLOCK6_HOST";
pub const MAP_BLOCK6_NET: &str = "BLOCK6_NET";
/// The eight list maps, allowlist then blocklist, each IPv4 host, IPv4 net, IPv6 host, IPv6 net.
pub const LIST_MAP_NAMES: [&str; 8] = [
    MAP_ALLOW4_HOST,
    MAP_ALLOW4_NET,
    MAP_ALLOW6_HOST,
    MAP_ALLOW6_NET,
    MAP_BLOCK4_HOST,
    MAP_BLOCK4_NET,
    MAP_BLOCK6_HOST,
    MAP_BLOCK6_NET,
];
/// The XDP program's function name in the object.
pub const PROGRAM_NAME: &str = "floodwall";

// Capacities compiled into the object; the loader overrides the resizable ones from the config.
pub const DEFAULT_HOST_ENTRIES: u32 = 1 << 20;
pub const DEFAULT_NET_ENTRIES: u32 = 1 << 18;
pub const DEFAULT_SOURCES: u32 = 1 << 17;
pub const MAX_INTERFACES: u32 = 64;
/// Counter slots: slot 0 counts frames of interfaces without a slot of their own (a test run,
/// an ifindex beyond `IFINDEX_LIMIT`), slots 1..=MAX_INTERFACES one attached interface each.
pub const COUNTER_SLOTS: u32 = MAX_INTERFACES + 1;
pub const COUNTER_ENTRIES: u32 = COUNTER_SLOTS * Reason::COUNT as u32;
/// Interfaces with an index below this get a counter slot through `IFACE_SLOTS`.
pub const IFINDEX_LIMIT: u32 = 1 << 16;
pub const EVENT_RING_BYTES: u32 = 1 << 18;
/// Sources remembered for drop-event deduplication.
pub const EVENT_SEEN_ENTRIES: u32 = 8192;

/// Address families as stored in keys and events.
pub const FAMILY_V4: u32 = 4;
pub const FAMILY_V6: u32 = 6;

/// `Config::flags` bits.
pub const FLAG_DRY_RUN: u32 = 1 << 0;
/// Malformed frames pass instead of being dropped.
pub const FLAG_MALFORMED_PASS: u32 = 1 << 1;
/// The SYN challenge is on.
pub const FLAG_SYN_ON: u32 = 1 << 2;
/// The SYN challenge is on while `SYN_ACTIVE[0]` is non-zero (set by `floodwall run`).
pub const FLAG_SYN_AUTO: u32 = 1 << 3;
/// `floodwall trace` is on (`TRACE`): decided frames are handed to the trace program. Off, the
/// filter reads nothing for the trace (a `TRACE` lookup on every frame cost 4-6% of a passing
/// frame). The controller keeps it equal to `TRACE`'s `on` (`kernel::set_trace`).
pub const FLAG_TRACE: u32 = 1 << 4;
/// Ports the SYN challenge can be limited to (`Config::syn_ports`).
pub const MAX_SYN_PORTS: usize = 8;

/// `Config::lists` bits: which list maps hold entries, so empty ones cost no lookup.
pub const LIST_ALLOW4_HOST: u32 = 1 << 0;
pub const LIST_ALLOW4_NET: u32 = 1 << 1;
pub const LIST_ALLOW6_HOST: u32 = 1 << 2;
pub const LIST_ALLOW6_NET: u32 = 1 << 3;
pub const LIST_BLOCK4_HOST: u32 = 1 << 4;
pub const LIST_BLOCK4_NET: u32 = 1 << 5;
pub const LIST_BLOCK6_HOST: u32 = 1 << 6;
pub const LIST_BLOCK6_NET: u32 = 1 << 7;

/// Slots of the `GLOBALS` array: one [`GlobalBucket`] each.
pub const GLOBAL_ADMISSION: u32 = 0;
pub const GLOBAL_NEWCOMER: u32 = 1;
pub const GLOBAL_PKT: u32 = 2;
pub const GLOBAL_BYTE: u32 = 3;
pub const GLOBAL_EVENTS: u32 = 4;
/// The trace's lines per second.
pub const GLOBAL_TRACE: u32 = 5;
pub const GLOBAL_SLOTS: u32 = 6;

/// Slots of the per-CPU `MISC` counters: data-path health, not verdicts.
pub const MISC_ADMITTED: u32 = 0;
pub const MISC_EVENTS_SENT: u32 = 1;
pub const MISC_EVENTS_SUPPRESSED: u32 = 2;
pub const MISC_EVENTS_RING_FULL: u32 = 3;
pub const MISC_CAS_EXHAUSTED: u32 = 4;
pub const MISC_SOURCE_INSERT_FAILED: u32 = 5;
/// A SYN the challenge would answer, but its IPv4 or TCP checksum is wrong.
pub const MISC_SYN_BAD_CHECKSUM: u32 = 6;
/// A SYN to a listener that the kernel would not give a cookie (accept queue full, or
/// `tcp_syncookies` not 2): it took the newcomer path.
pub const MISC_SYN_COOKIE_REFUSED: u32 = 7;
/// The challenge was on but its program was not there: the frame took the newcomer path.
pub const MISC_SYN_HANDOVER_FAILED: u32 = 8;
/// Trace lines over the trace's lines per second, not written.
pub const MISC_TRACE_SUPPRESSED: u32 = 9;
pub const MISC_SLOTS: u32 = 10;
pub const MISC_NAMES: [&str; MISC_SLOTS as usize] = [
    "sources_admitted",
    "events_sent",
    "events_suppressed",
    "events_ring_full",
    "cas_retries_exhausted",
    "source_insert_failed",
    "syn_bad_checksum",
    "syn_cookie_refused",
    "syn_handover_failed",
    "trace_suppressed",
];

/// The live configuration: one record in the `CONFIG` array, rewritten by the controller
/// without reloading the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `LIST_*` bits.
    pub lists: u32,
    /// Source prefix length that keys per-source state, IPv4 (1..=32).
    pub prefix4: u32,
    /// Source prefix length that keys per-source state, IPv6 (1..=128).
    pub prefix6: u32,
    /// Per-source packet bucket.
    pub source_pkt: Bucket,
    /// Per-source byte bucket.
    pub source_byte: Bucket,
    /// How fast sources without state are given state of their own.
    pub admission: Bucket,
    /// The packet bucket shared by sources without state.
    pub newcomer: Bucket,
    /// Global packet cap.
    pub global_pkt: Bucket,
    /// Global byte cap.
    pub global_byte: Bucket,
    /// Global cap on drop events per second.
    pub events: Bucket,
    /// At most one drop event per source per this many ns.
    pub event_interval_ns: u64,
    /// Destination ports the SYN challenge covers (host order); all ports with a listener
    /// when `syn_nports` is 0.
    pub syn_ports: [u16; MAX_SYN_PORTS],
    pub syn_nports: u32,
    /// The kernel's tick in ns (userspace reads it with `clock_getres`). Event sampling counts
    /// time as `bpf_jiffies64() * tick_ns`, at a tenth of the cost of even the coarse clock,
    /// so a drop whose decision needed no time reads none; 0 falls back to the filter's clock.
    pub tick_ns: u32,
    /// The size of a `KNOWN` generation, `2^known_log2` bits, as the map was created; outside
    /// `KNOWN_MIN_LOG2..=KNOWN_MAX_LOG2` (a record written without it) every source is looked
    /// up. Written by `kernel::write_config` from the map itself.
    pub known_log2: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Config>() == 16 + 7 * 16 + 8 + 16 + 8 + 8);

impl Config {
    pub const fn dry_run(&self) -> bool {
        self.flags & FLAG_DRY_RUN != 0
    }

    pub const fn malformed_drops(&self) -> bool {
        self.flags & FLAG_MALFORMED_PASS == 0
    }

    pub const fn syn_on(&self) -> bool {
        self.flags & FLAG_SYN_ON != 0
    }

    pub const fn syn_auto(&self) -> bool {
        self.flags & FLAG_SYN_AUTO != 0
    }

    pub const fn trace_on(&self) -> bool {
        self.flags & FLAG_TRACE != 0
    }

    /// Whether the SYN challenge covers `port` (host order).
    #[inline(always)]
    pub fn syn_port_covered(&self, port: u16) -> bool {
        if self.syn_nports == 0 {
            return true;
        }
        let mut i = 0;
        while i < MAX_SYN_PORTS {
            if (i as u32) < self.syn_nports && self.syn_ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Whether the per-source limiter is on at all.
    pub const fn limits_sources(&self) -> bool {
        self.source_pkt.enabled() || self.source_byte.enabled()
    }
}

/// Value of every allowlist and blocklist entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListEntry {
    /// Expiry in the filter's clock (CLOCK_MONOTONIC at tick resolution); 0 never expires.
    pub expires_ns: u64,
    /// The entry's own prefix length, so that when a prefix-trie match has expired the kernel
    /// can look for a shorter prefix that still covers the address.
    pub prefix_len: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ListEntry>() == 16);

impl ListEntry {
    /// An entry matches until its expiry, so the kernel honours TTLs by itself.
    #[inline(always)]
    pub const fn active(&self, now_ns: u64) -> bool {
        self.expires_ns == 0 || now_ns < self.expires_ns
    }
}

/// Key of per-source state: the source address masked to the configured prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u32,
    /// IPv4 in the first 4 bytes, the rest zero; or IPv6. Network order.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SourceKey>() == 20);

impl SourceKey {
    /// The address as four native-endian words, read aligned.
    #[inline(always)]
    pub fn words(&self) -> [u32; 4] {
        // SAFETY: `addr` sits at offset 4 of a 4-aligned `repr(C)` struct: four aligned u32s.
        unsafe { core::ptr::read(self.addr.as_ptr().cast::<[u32; 4]>()) }
    }

    /// The key with its address masked to its first `prefix_len` bits (`mask_prefix`), a word
    /// at a time: the data path does this for every frame it limits.
    #[inline(always)]
    pub fn masked(&self, prefix_len: u32) -> SourceKey {
        let w = self.words();
        let mut key = SourceKey {
            family: self.family,
            addr: [0; 16],
        };
        let masked = [
            w[0] & prefix_mask_word(prefix_len, 0),
            w[1] & prefix_mask_word(prefix_len, 1),
            w[2] & prefix_mask_word(prefix_len, 2),
            w[3] & prefix_mask_word(prefix_len, 3),
        ];
        // SAFETY: as in `words`.
        unsafe { core::ptr::write(key.addr.as_mut_ptr().cast::<[u32; 4]>(), masked) };
        key
    }
}

/// One global bucket's GCRA arrival time, alone in its cache line: a frame that takes a
/// token from one bucket must not take the line of another away from the CPUs reading it.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalBucket {
    pub tat: u64,
    pub _pad: [u64; 7],
}
const _: () = assert!(size_of::<GlobalBucket>() == 64);

/// How long a CPU may hold a source's over-limit drops before adding them to the source's
/// shared `SourceState::dropped`. One add per CPU per second instead of one per dropped
/// frame: the shared line does not move between CPUs while a flood is dropped.
pub const PENDING_DROPS_NS: u64 = 1_000_000_000;

/// One CPU's over-limit drops of `key` that are not in `SourceState::dropped` yet
/// (`CpuScratch::pending`). Readers add `count` to the source's
/// `dropped`; the kernel adds it when the CPU drops another source, or after
/// [`PENDING_DROPS_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingDrops {
    pub key: SourceKey,
    pub _pad: u32,
    pub count: u64,
    /// When the CPU last added its count to the source's state (filter clock).
    pub since_ns: u64,
    /// Until when `key` is over its packet limit (filter clock; 0: not known to be), taken
    /// from its arrival time as its last drop found it, with the packet bucket it was found
    /// over (`over_cost`, `over_tau`). No frame of the source conforms before then: takes
    /// only move the arrival time on, and a refund only follows a frame that conformed (one
    /// that lands on another CPU after this drop read the arrival time makes the source
    /// conform at most one packet's cost sooner than this CPU then lets it). The kernel drops
    /// such a frame without its state.
    pub over_until_ns: u64,
    pub over_cost: u64,
    pub over_tau: u64,
}
const _: () = assert!(size_of::<PendingDrops>() == 64);

/// The element of the per-CPU `CPU_SCRATCH` array: everything the data path keeps per CPU,
/// in one value, so that a frame touches one per-CPU value's cache lines rather than one
/// map's each (each map costs a line for its pointers and one for the value). Userspace reads
/// `pending` and `events_suppressed`, and the tests' bucket reset clears the spent notes; the
/// rest is the kernel's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuScratch {
    /// The notes on the frame being decided (the tokens it took and other note bits, 0
    /// until set), then the clock as last read: jiffies and the coarse clock.
    pub notes: [u64; 3],
    /// The key of the source the frame belongs to. In map memory rather than on the stack:
    /// a stack key still read at the end of the decision (to hold its drops) stays live
    /// through every check before, which multiplied the verifier's work.
    pub key: SourceKey,
    pub _pad: u32,
    pub pending: PendingDrops,
    /// The source this CPU last found reported, and when (event time base), so that a flood
    /// from one source is suppressed without a hash lookup per frame. Family 0: none yet.
    pub last_event: SourceKey,
    pub _pad2: u32,
    pub last_event_ns: u64,
    /// Until when this CPU found global buckets spent: the event budget (event time base),
    /// admission and the newcomer bucket (filter clock).
    pub events_spent: SpentNote,
    pub admission_spent: SpentNote,
    pub newcomer_spent: SpentNote,
    /// Drop events this CPU suppressed: counted here, in a line every dropped frame touches
    /// anyway, rather than in `MISC`; readers add it to `MISC_EVENTS_SUPPRESSED`.
    pub events_suppressed: u64,
}
const _: () = assert!(size_of::<CpuScratch>() == 24 + 24 + 64 + 32 + 3 * 24 + 8);

/// A global bucket a CPU found spent: until when no unit conforms (its arrival time then, one
/// cost on, less tau), under the bucket's parameters then; `until_ns` 0: not known to be.
/// Takes only move an arrival time on, so the note holds unless a refund (a frame a global cap
/// dropped after it took a token on another CPU) lands after the read: then it is late by at
/// most one cost per such frame in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpentNote {
    pub until_ns: u64,
    pub cost: u64,
    pub tau: u64,
}

/// Per-source state, updated lock-free by compare-and-swap and atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// GCRA arrival time of the packet bucket.
    pub tat_pkt: u64,
    /// GCRA arrival time of the byte bucket.
    pub tat_byte: u64,
    pub passed: u64,
    /// Over-limit drops, without those CPUs still hold (`CpuScratch::pending`).
    pub dropped: u64,
    /// Valid SYN cookies this source returned while it had no state (each one admitted it).
    pub proven: u64,
}
const _: () = assert!(size_of::<SourceState>() == 40);

/// Index into the per-CPU `COUNTERS` array of a counter slot and reason.
#[inline(always)]
pub const fn counter_index(slot: u32, reason: Reason) -> u32 {
    slot * Reason::COUNT as u32 + reason as u32
}

/// A counter pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// A sampled drop, sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// Event sampling's time (see `Config::tick_ns`): jiffies in ns, not CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub reason: u32,
    pub family: u32,
    pub _pad: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<DropEvent>() == 40);

/// What `floodwall trace` asks for: decisions on frames from `addr/prefix_len` (masked), until
/// `until_ns` (`bpf_ktime_get_ns` time: a trace whose command was killed ends by itself), at
/// most `lines` per second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Non-zero while a trace is on.
    pub on: u32,
    pub family: u32,
    pub prefix_len: u32,
    pub _pad: u32,
    pub addr: [u8; 16],
    pub until_ns: u64,
    pub lines: crate::Bucket,
}
const _: () = assert!(size_of::<TraceConfig>() == 56);

/// A decided frame, as the filter hands it to the trace program (per-CPU scratch).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    pub src: SourceKey,
    pub reason: u32,
    pub action: u32,
    pub len: u32,
    pub ifindex: u32,
}
const _: () = assert!(size_of::<TraceRecord>() == 36);

impl TraceConfig {
    /// Whether a frame from `src` is traced.
    #[inline(always)]
    pub fn matches(&self, src: &SourceKey) -> bool {
        if self.on == 0 || src.family != self.family {
            return false;
        }
        let mut addr = src.addr;
        mask_prefix(&mut addr, self.prefix_len);
        // Byte by byte: array equality would need `memcmp`, which BPF does not have.
        let mut diff = 0u8;
        for (a, b) in addr.iter().zip(&self.addr) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

/// Masks `addr` (network order) to its first `prefix_len` bits, in place.
#[inline(always)]
pub fn mask_prefix(addr: &mut [u8; 16], prefix_len: u32) {
    let mut w = 0;
    while w < 4 {
        let [a, b, c, d] = prefix_mask_word(prefix_len, w as u32).to_ne_bytes();
        addr[4 * w] &= a;
        addr[4 * w + 1] &= b;
        addr[4 * w + 2] &= c;
        addr[4 * w + 3] &= d;
        w += 1;
    }
}

/// Word `i` (of four) of the mask that keeps an address's first `prefix_len` bits: the
/// native-endian reading of the mask's network-order bytes, to AND with `SourceKey::words`.
#[inline(always)]
pub const fn prefix_mask_word(prefix_len: u32, i: u32) -> u32 {
    let bits = prefix_len.saturating_sub(32 * i);
    let bits = if bits > 32 { 32 } else { bits };
    // Through 64 bits: a shift by 32 (no bits kept) is defined there.
    u32::from_be((u64::MAX << (32 - bits)) as u32)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte arrays, with no
    // padding (checked by the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ListEntry {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for SourceState {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for TraceConfig {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for GlobalBucket {}
    unsafe impl aya::Pod for PendingDrops {}
    unsafe impl aya::Pod for CpuScratch {}
    unsafe impl aya::Pod for SpentNote {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    #[test]
    fn net_cover_ranges() {
        assert_eq!(net_cover_range(0xc000, 24), (0xc000, 0xc000));
        assert_eq!(net_cover_range(0x0a00, 8), (0x0a00, 0x0aff));
        assert_eq!(net_cover_range(0x2001, 16), (0x2001, 0x2001));
        assert_eq!(net_cover_range(0x2001, 3), (0x2000, 0x3fff));
        assert_eq!(net_cover_range(0x1234, 0), (0, 0xffff));
        assert_eq!(net_cover_base(true, true), 0);
        assert_eq!(net_cover_base(false, false), 3 * NET_COVER_WORDS);
    }

    use super::*;

    #[test]
    fn mask_prefix_keeps_exactly_the_prefix() {
        let mut a = [0xffu8; 16];
        mask_prefix(&mut a, 0);
        assert_eq!(a, [0; 16]);
        let mut a = [0xffu8; 16];
        mask_prefix(&mut a, 128);
        assert_eq!(a, [0xff; 16]);
        let mut a = [0xffu8; 16];
        mask_prefix(&mut a, 20);
        assert_eq!(&a[..4], &[0xff, 0xff, 0xf0, 0]);
        assert!(a[3..].iter().all(|b| *b == 0));
        let mut a = [0xffu8; 16];
        mask_prefix(&mut a, 64);
        assert_eq!(&a[..8], &[0xff; 8]);
        assert_eq!(&a[8..], &[0; 8]);
    }

    #[test]
    fn a_masked_key_keeps_exactly_its_prefix_bits() {
        let addr: [u8; 16] = core::array::from_fn(|i| 0xa5 ^ (i as u8).wrapping_mul(37));
        let key = SourceKey { family: 6, addr };
        for len in 0..=128u32 {
            let masked = key.masked(len);
            let mut bytes = addr;
            mask_prefix(&mut bytes, len);
            for bit in 0..128u32 {
                let (byte, shift) = ((bit / 8) as usize, 7 - bit % 8);
                let want = if bit < len {
                    (addr[byte] >> shift) & 1
                } else {
                    0
                };
                assert_eq!((masked.addr[byte] >> shift) & 1, want, "/{len}, bit {bit}");
                assert_eq!((bytes[byte] >> shift) & 1, want, "/{len}, bit {bit}");
            }
            assert_eq!(masked.family, 6);
        }
    }

    #[test]
    fn neighbouring_sources_get_their_own_bits() {
        let distinct = |keys: &mut dyn Iterator<Item = SourceKey>, bit: fn(&SourceKey) -> u32| {
            let mut bits: std::vec::Vec<u32> = keys.map(|k| bit(&k)).collect();
            bits.sort_unstable();
            bits.dedup();
            bits.len()
        };
        let v4 = |n: u32| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&(0x0a00_0000 | n).to_be_bytes());
            SourceKey {
                family: FAMILY_V4,
                addr,
            }
        };
        let v6 = |n: u32| {
            let mut addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            addr[12..].copy_from_slice(&n.to_be_bytes());
            SourceKey {
                family: FAMILY_V6,
                addr,
            }
        };
        // 4,096 keys in 2^21 bits share about 4 bits by chance.
        let known = |key: &SourceKey| known_bit(key, 21);
        assert!(distinct(&mut (195_905..200_001).map(v4), known) >= 4_080);
        assert!(distinct(&mut (0..4_096).map(v6), known) >= 4_080);
        assert!(distinct(&mut (0..4_096).map(|n| v4(n << 8)), host_cover_bit) >= 4_070);
    }

    #[test]
    fn known_bitmap_is_twice_the_sources_capacity_within_bounds() {
        assert_eq!(known_log2(DEFAULT_SOURCES), 18);
        assert_eq!(known_log2(100_000), 18);
        assert_eq!(known_log2(8_192), 14);
        assert_eq!(known_log2(1), KNOWN_MIN_LOG2);
        assert_eq!(known_log2(u32::MAX), KNOWN_MAX_LOG2);
        assert_eq!(known_entries(DEFAULT_SOURCES), 2 * (1 << 12));
    }

    #[test]
    fn list_entry_expiry() {
        assert!(
            ListEntry {
                expires_ns: 0,
                ..Default::default()
            }
            .active(u64::MAX)
        );
        assert!(
            ListEntry {
                expires_ns: 10,
                ..Default::default()
            }
            .active(9)
        );
        assert!(
            !ListEntry {
                expires_ns: 10,
                ..Default::default()
            }
            .active(10)
        );
    }

    #[test]
    fn default_config_drops_malformed_and_enforces() {
        let c = Config::default();
        assert!(c.malformed_drops());
        assert!(!c.dry_run());
        assert!(!c.limits_sources());
    }
}
