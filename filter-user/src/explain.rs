//! `floodwall explain ADDR`: why a frame from this address gets the verdict it gets now. It
//! reads the pinned maps as the kernel would for the next frame (no token is taken) and
//! decides with `filter-common`'s own pieces of the data path: list-entry expiry, source
//! masking, GCRA and byte cost, and each reason's verdict. The tests check it against the
//! kernel's verdict on the same frames.

use std::net::IpAddr;

use filter_common::{
    Bucket, Config, GLOBAL_ADMISSION, GLOBAL_BYTE, GLOBAL_NEWCOMER, GLOBAL_PKT, Reason,
    SourceState, byte_cost, gcra, mask_prefix,
};
use serde::Serialize;

use crate::{
    cidr::Cidr,
    kernel::{self, KernelError, ListMaps},
    lists::filter_now_ns,
    paths::Paths,
    state::{ListKind, StateError, unix_now},
    store::Store,
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A list entry that matches, with what the store knows of it.
#[derive(Debug, Serialize)]
pub struct Match {
    pub cidr: String,
    pub origin: Option<&'static str>,
    pub comment: Option<String>,
    pub ttl_left_secs: Option<u64>,
}

/// The source's limiter state.
#[derive(Debug, Serialize)]
pub struct Limiter {
    pub passed: u64,
    pub dropped: u64,
    /// Valid SYN cookies it returned.
    pub proven: u64,
    /// Frames it may send at once now by its packet bucket (none: no packet limit).
    pub packets_left: Option<u64>,
    /// Frames of the explained length it may send at once by its byte bucket.
    pub frames_left_by_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub addr: IpAddr,
    /// The frame length the verdict is for.
    pub len: u64,
    pub allowlist: Option<Match>,
    pub blocklist: Option<Match>,
    /// The masked prefix that keys the source's state.
    pub source: String,
    /// None: the source has no state (a newcomer).
    pub limiter: Option<Limiter>,
    /// For a source without state: whether it would be given state now (admission), and
    /// whether the newcomer bucket would let it through if not.
    pub admitted: Option<bool>,
    pub newcomer_budget: Option<bool>,
    /// A SYN from it would be answered with a cookie instead of being limited.
    pub syn_challenged: bool,
    /// Whether the global caps have room for the frame.
    pub global_caps_pass: bool,
    /// The reason the next such (non-SYN) frame is counted under, and whether it is dropped.
    pub reason: &'static str,
    pub dropped: bool,
    pub dry_run: bool,
}

/// How many steps GCRA lets through in a row from `tat` at `now`, at most `cap`.
fn conforming(bucket: &Bucket, mut tat: u64, now: u64, cost: u64, cap: u64) -> u64 {
    let mut n = 0;
    while n < cap {
        match gcra(tat, now, cost, bucket.tau) {
            Some(next) => {
                tat = next;
                n += 1;
            }
            None => break,
        }
    }
    n
}

/// More than any burst an operator sets: the count stops here.
const COUNT_CAP: u64 = 10_000_000;

fn matched(store: &Store, kind: ListKind, cidr: Cidr) -> Result<Match, ExplainError> {
    let record = store.get(kind, &cidr)?;
    let record = record.as_ref();
    let now = unix_now();
    Ok(Match {
        cidr: cidr.to_string(),
        origin: record.map(|r| r.origin.name()),
        comment: record.and_then(|r| r.comment.clone()),
        ttl_left_secs: record
            .and_then(|r| r.expires_at)
            .map(|t| t.saturating_sub(now)),
    })
}

pub fn explain(paths: &Paths, addr: IpAddr, len: u64) -> Result<Explanation, ExplainError> {
    let config: Config = kernel::read_config(paths)?;
    let store = Store::open(paths)?;
    let now = filter_now_ns();
    let lookup = |kind| -> Result<Option<Match>, ExplainError> {
        let maps = ListMaps::open(paths, kind)?;
        maps.lookup(config.lists, addr, now)?
            .map(|(cidr, _)| matched(&store, kind, cidr))
            .transpose()
    };
    let allowlist = lookup(ListKind::Allow)?;
    let blocklist = if allowlist.is_none() {
        lookup(ListKind::Block)?
    } else {
        None
    };

    let mut key = kernel::source_key(addr);
    let prefix = if addr.is_ipv4() {
        config.prefix4
    } else {
        config.prefix6
    };
    mask_prefix(&mut key.addr, prefix);
    let masked = match addr {
        IpAddr::V4(_) => IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]]),
        IpAddr::V6(_) => IpAddr::from(key.addr),
    };
    let source = Cidr::covering(masked, prefix as u8)
        .map_or_else(|_| masked.to_string(), |c| format!("{}/{prefix}", c.addr()));

    let source_state: Option<SourceState> = kernel::SourceReader::open(paths)?.get(&key)?;
    let globals = kernel::read_globals(paths)?;
    let global = |slot: u32| globals.get(slot as usize).copied().unwrap_or(0);
    let has_budget =
        |bucket: &Bucket, slot: u32, cost: u64| gcra(global(slot), now, cost, bucket.tau).is_some();

    let limiter = source_state.map(|s| Limiter {
        passed: s.passed,
        dropped: s.dropped,
        proven: s.proven,
        packets_left: config.source_pkt.enabled().then(|| {
            let b = &config.source_pkt;
            conforming(b, s.tat_pkt, now, b.cost, COUNT_CAP)
        }),
        frames_left_by_bytes: config.source_byte.enabled().then(|| {
            let b = &config.source_byte;
            conforming(b, s.tat_byte, now, byte_cost(len, b.cost), COUNT_CAP)
        }),
    });
    let challenge = config.syn_on() || (config.syn_auto() && kernel::syn_auto_active(paths)?);
    let stateless = source_state.is_none();
    let limits = config.limits_sources();
    let admitted = (stateless && limits).then(|| {
        !config.admission.enabled()
            || has_budget(&config.admission, GLOBAL_ADMISSION, config.admission.cost)
    });
    let newcomer_budget = (stateless && limits && admitted == Some(false)).then(|| {
        config.newcomer.enabled()
            && has_budget(&config.newcomer, GLOBAL_NEWCOMER, config.newcomer.cost)
    });
    let global_caps_pass = (!config.global_pkt.enabled()
        || has_budget(&config.global_pkt, GLOBAL_PKT, config.global_pkt.cost))
        && (!config.global_byte.enabled()
            || has_budget(
                &config.global_byte,
                GLOBAL_BYTE,
                byte_cost(len, config.global_byte.cost),
            ));

    // The order of the data path: allowlist, blocklist, the source's limits (a new source
    // through admission or the newcomer bucket), then the global caps.
    let per_source = || -> Reason {
        if !limits {
            return Reason::Passed;
        }
        let bucket_state = match (limiter.as_ref(), admitted, newcomer_budget) {
            (Some(l), _, _) => l,
            (None, Some(true), _) => {
                // Admitted now: a fresh state, full buckets.
                return fresh_verdict(&config, len);
            }
            (None, _, Some(true)) => return Reason::Passed,
            (None, _, _) => return Reason::NewcomerLimited,
        };
        if bucket_state.packets_left == Some(0) {
            Reason::OverPps
        } else if bucket_state.frames_left_by_bytes == Some(0) {
            Reason::OverBps
        } else {
            Reason::Passed
        }
    };
    let reason = if allowlist.is_some() {
        Reason::Allowlisted
    } else if blocklist.is_some() {
        Reason::Blocklisted
    } else {
        match per_source() {
            Reason::Passed if !global_caps_pass => Reason::GlobalCap,
            reason => reason,
        }
    };
    Ok(Explanation {
        addr,
        len,
        allowlist,
        blocklist,
        source,
        limiter,
        admitted,
        newcomer_budget,
        syn_challenged: challenge
            && stateless
            && reason != Reason::Allowlisted
            && reason != Reason::Blocklisted,
        global_caps_pass,
        reason: reason.name(),
        dropped: reason.drops() && !config.dry_run(),
        dry_run: config.dry_run(),
    })
}

/// The verdict on a frame from a source given fresh state now: its byte bucket alone can
/// refuse it (a frame longer than the byte burst).
fn fresh_verdict(config: &Config, len: u64) -> Reason {
    let b = &config.source_byte;
    if b.enabled() && gcra(0, 0, byte_cost(len, b.cost), b.tau).is_none() {
        Reason::OverBps
    } else {
        Reason::Passed
    }
}

impl Explanation {
    /// The text `floodwall explain` prints.
    pub fn render(&self) -> String {
        let mut out = format!("{} (a {}-byte frame)\n", self.addr, self.len);
        let show = |m: &Option<Match>| match m {
            None => String::from("no match"),
            Some(m) => {
                let ttl = m
                    .ttl_left_secs
                    .map_or(String::from("permanent"), |s| format!("{s}s left"));
                format!(
                    "{} ({}, {ttl}{})",
                    m.cidr,
                    m.origin.unwrap_or("not in the store"),
                    m.comment
                        .as_deref()
                        .map_or(String::new(), |c| format!(", \"{c}\""))
                )
            }
        };
        out.push_str(&format!("  allowlist:  {}\n", show(&self.allowlist)));
        if self.allowlist.is_none() {
            out.push_str(&format!("  blocklist:  {}\n", show(&self.blocklist)));
        }
        out.push_str(&format!("  source:     {}\n", self.source));
        match &self.limiter {
            Some(l) => {
                let left = |n: Option<u64>, what: &str| {
                    n.map_or(format!("no {what} limit"), |n| format!("{n} {what} left"))
                };
                out.push_str(&format!(
                    "  limiter:    {}, {}; passed {}, dropped {}{}\n",
                    left(l.packets_left, "frames by packets"),
                    left(l.frames_left_by_bytes, "frames by bytes"),
                    l.passed,
                    l.dropped,
                    if l.proven > 0 {
                        format!(", {} SYN cookies proven", l.proven)
                    } else {
                        String::new()
                    }
                ));
            }
            None => {
                let admission = match (self.admitted, self.newcomer_budget) {
                    (None, _) => String::from("no per-source limits"),
                    (Some(true), _) => String::from("would be given state now"),
                    (Some(false), Some(true)) => {
                        String::from("admission full: passes on the newcomer budget")
                    }
                    (Some(false), _) => String::from("admission full: shed as a newcomer"),
                };
                out.push_str(&format!("  limiter:    no state yet; {admission}\n"));
            }
        }
        if self.syn_challenged {
            out.push_str(
                "  SYN:        would be answered with a SYN cookie (the challenge is on)\n",
            );
        }
        if !self.global_caps_pass {
            out.push_str("  global:     the global caps are full\n");
        }
        let verdict = if self.dropped {
            "drop"
        } else if self.dry_run && self.reason != Reason::Passed.name() {
            "pass (dry-run: would drop)"
        } else {
            "pass"
        };
        out.push_str(&format!("  verdict:    {verdict} ({})\n", self.reason));
        out
    }
}
