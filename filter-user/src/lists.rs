//! Allowlist and blocklist operations. Each one validates everything first, then changes the
//! kernel maps, then the store; on any failure what was already changed is rolled
//! back, so bad input or a full map changes nothing.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use filter_common::ListEntry;
use thiserror::Error;

use crate::{
    cidr::Cidr,
    kernel::{KernelError, ListMaps},
    paths::Paths,
    state::{ListKind, Lock, Origin, Record, StateError, unix_now, unix_now_ns},
    store::Store,
};

#[derive(Debug, Error)]
pub enum ListError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("`{cidr}` covers loopback; floodwall never blocks loopback")]
    Loopback { cidr: Cidr },
    #[error(
        "`{cidr}` covers this host's own address {addr}: blocking it may lock you out; add \
         --force if you mean it"
    )]
    OwnAddress { cidr: Cidr, addr: IpAddr },
    #[error("`{cidr}` is not on the {list} (see `floodwall {verb} list`)")]
    NotListed {
        cidr: Cidr,
        list: &'static str,
        verb: &'static str,
    },
}

impl ListError {
    /// Whether the operator's input was at fault (exit status 2) rather than the system (1).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ListError::Loopback { .. } | ListError::OwnAddress { .. } | ListError::NotListed { .. }
        )
    }
}

const fn verb(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Allow => "allow",
        ListKind::Block => "block",
    }
}

/// What to add, and how.
pub struct AddOptions<'a> {
    pub ttl: Option<Duration>,
    pub comment: Option<&'a str>,
    pub origin: Origin,
    /// Allow blocking a prefix that holds one of this host's addresses.
    pub force: bool,
}

/// The kernel's entry for a record: its expiry moved from wall-clock to monotonic time.
/// `unix_now_ns` is wall-clock time in ns, so a TTL keeps its sub-second remainder.
pub fn kernel_entry(record: &Record, unix_now_ns: u64, mono_now_ns: u64) -> ListEntry {
    let expires_ns = match record.expires_at.map(|at| at.saturating_mul(1_000_000_000)) {
        None => 0,
        // Already expired: any non-zero time in the past stops it matching.
        Some(at) if at <= unix_now_ns => 1,
        Some(at) => mono_now_ns.saturating_add(at - unix_now_ns),
    };
    ListEntry {
        expires_ns,
        ..ListEntry::default()
    }
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn mono_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The filter's clock now: CLOCK_MONOTONIC_COARSE, the same reading `bpf_ktime_get_coarse_ns`
/// gives the limiter and list expiry (CLOCK_MONOTONIC at tick resolution).
pub fn filter_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// This host's addresses, in the current network namespace.
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family says which sockaddr type the pointer holds.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// Refuses to block loopback, and this host's addresses without `force`.
pub fn check_lockout(cidrs: &[Cidr], force: bool) -> Result<(), ListError> {
    check_lockout_with(cidrs, force, &own_addresses())
}

/// [`check_lockout`] against addresses read once, for callers checking entries one by one.
pub(crate) fn check_lockout_with(
    cidrs: &[Cidr],
    force: bool,
    own: &[IpAddr],
) -> Result<(), ListError> {
    let loopback = [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    for cidr in cidrs {
        if loopback.iter().any(|a| cidr.contains(a)) {
            return Err(ListError::Loopback { cidr: *cidr });
        }
        if !force && let Some(addr) = own.iter().find(|a| !a.is_loopback() && cidr.contains(a)) {
            return Err(ListError::OwnAddress {
                cidr: *cidr,
                addr: *addr,
            });
        }
    }
    Ok(())
}

/// Applies `changes` (new record, or `None` to delete) to the kernel and the store, all or
/// nothing. The caller holds the lock.
fn apply(
    paths: &Paths,
    store: &mut Store,
    kind: ListKind,
    changes: BTreeMap<Cidr, Option<Record>>,
) -> Result<(), ListError> {
    let mut maps = ListMaps::open(paths, kind)?;
    let (unow, mnow) = (unix_now_ns(), mono_now_ns());
    let mut held = store.records_for(kind, changes.keys())?;
    let before: BTreeMap<Cidr, Option<Record>> =
        changes.keys().map(|c| (*c, held.remove(c))).collect();
    let (old_limits, old_bits) = (store.limits()?.unwrap_or_default(), store.list_bits()?);
    mark_pending(paths)?;
    let mut failure = None;
    for cidr in changes.iter().filter(|(_, c)| c.is_none()).map(|(c, _)| c) {
        if let Err(e) = maps.remove(cidr) {
            failure = Some(e);
            break;
        }
    }
    if failure.is_none() {
        let inserts: Vec<(Cidr, ListEntry)> = changes
            .iter()
            .filter_map(|(c, r)| r.as_ref().map(|r| (*c, kernel_entry(r, unow, mnow))))
            .collect();
        failure = maps.insert_all(&inserts).err();
    }
    // Restores what every changed entry was before; entries the failed change never reached
    // are rewritten with their own value, which changes nothing.
    let rollback = |maps: &mut ListMaps| {
        for (cidr, old) in &before {
            // Best effort: this runs because something already failed.
            let _ = match old {
                Some(old) => maps.insert(cidr, &kernel_entry(old, unow, mnow)),
                None => maps.remove(cidr),
            };
        }
    };
    if let Some(e) = failure {
        rollback(&mut maps);
        clear_pending(paths);
        return Err(e.into());
    }
    let committed = (|| -> Result<(), ListError> {
        let change = store.change()?;
        for (cidr, record) in &changes {
            match record {
                Some(record) => change.upsert(kind, record)?,
                None => change.remove(kind, cidr)?,
            }
        }
        let limits = change.limits()?.unwrap_or_default();
        crate::limits::publish(paths, &limits, change.list_bits()?)?;
        change.commit()?;
        Ok(())
    })();
    if let Err(e) = committed {
        rollback(&mut maps);
        let _ = crate::limits::publish(paths, &old_limits, old_bits);
        clear_pending(paths);
        return Err(e);
    }
    clear_pending(paths);
    Ok(())
}

pub fn mark_pending(paths: &Paths) -> Result<(), ListError> {
    std::fs::write(paths.pending_file(), b"").map_err(|source| {
        ListError::State(StateError::Write {
            path: paths.pending_file(),
            source,
        })
    })
}

/// Only called once the kernel and the store agree again.
pub fn clear_pending(paths: &Paths) {
    // If this fails the next command reconciles once more, which changes nothing.
    let _ = std::fs::remove_file(paths.pending_file());
}

/// For commands that only read: finishes a recovery first if one is due, so what they show
/// is what the kernel does.
pub fn recover_if_pending(paths: &Paths) -> Result<(), ListError> {
    if paths.pending_file().exists() {
        let _lock = Lock::acquire(paths)?;
        recover(paths, &Store::open(paths)?)?;
    }
    Ok(())
}

/// After a command died half-way through a change (the marker is still there), makes the
/// kernel lists hold exactly what the store holds: the store was written last, so it is the
/// truth. Called with the lock held.
pub fn recover(paths: &Paths, store: &Store) -> Result<(), ListError> {
    if !paths.pending_file().exists() {
        return Ok(());
    }
    for kind in [ListKind::Allow, ListKind::Block] {
        reconcile(paths, store, kind, true)?;
    }
    rebuild_cover(paths, store)?;
    let limits = store.limits()?.unwrap_or_default();
    crate::limits::publish(paths, &limits, store.list_bits()?)?;
    clear_pending(paths);
    Ok(())
}

/// Changes the limits as one transaction, under the caller's lock: the change marker first,
/// then the store, then the kernel, then the marker goes. A command killed anywhere in
/// between leaves the marker, and the next command makes the kernel match the store, which
/// holds either the old limits or the new (never the kernel on limits the store does not
/// have, which the next list change would silently revert). If the kernel refuses, the store
/// goes back to the old limits.
pub fn change_limits(
    paths: &Paths,
    store: &mut Store,
    limits: &crate::limits::Limits,
) -> Result<(), ListError> {
    mark_pending(paths)?;
    let old = store.limits()?;
    let set = |store: &mut Store, limits: Option<&crate::limits::Limits>| {
        let change = store.change()?;
        change.set_limits(limits)?;
        change.commit()
    };
    if let Err(e) = set(store, Some(limits)) {
        clear_pending(paths);
        return Err(e.into());
    }
    if let Err(e) = crate::limits::publish(paths, limits, store.list_bits()?) {
        if set(store, old.as_ref()).is_ok() {
            clear_pending(paths);
        }
        return Err(e.into());
    }
    clear_pending(paths);
    Ok(())
}

pub(crate) fn loaded_store(paths: &Paths) -> Result<(Lock, Store), ListError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded.into());
    }
    let lock = Lock::acquire(paths)?;
    let store = Store::open(paths)?;
    recover(paths, &store)?;
    Ok((lock, store))
}

/// Removal changes for the entries of `kind` whose time is up, so every change also sweeps
/// them out of the maps and the store.
pub(crate) fn expired_changes(
    store: &Store,
    kind: ListKind,
) -> Result<BTreeMap<Cidr, Option<Record>>, ListError> {
    Ok(store
        .expired(kind, unix_now())?
        .into_iter()
        .map(|r| (r.cidr, None))
        .collect())
}

/// Adds (or replaces) entries. Returns how many were new.
pub fn add(
    paths: &Paths,
    kind: ListKind,
    cidrs: &[Cidr],
    options: &AddOptions<'_>,
) -> Result<usize, ListError> {
    if kind == ListKind::Block {
        check_lockout(cidrs, options.force)?;
    }
    let (_lock, mut store) = loaded_store(paths)?;
    let now = unix_now();
    // Rounded up to the next whole second: an entry never expires before its TTL.
    let expires_at = options.ttl.map(|ttl| {
        let at_ns = unix_now_ns().saturating_add(ttl.as_nanos() as u64);
        at_ns.div_ceil(1_000_000_000)
    });
    let mut changes = expired_changes(&store, kind)?;
    let unique: std::collections::BTreeSet<&Cidr> = cidrs.iter().collect();
    let held = store.records_for(kind, unique.iter().copied())?;
    let new = unique
        .iter()
        .filter(|c| held.get(c).is_none_or(|r| r.expired(now)))
        .count();
    changes.extend(cidrs.iter().map(|cidr| {
        let record = Record {
            cidr: *cidr,
            expires_at,
            comment: options.comment.map(str::to_owned),
            origin: options.origin,
            added_at: now,
        };
        (*cidr, Some(record))
    }));
    apply(paths, &mut store, kind, changes)?;
    Ok(new)
}
/// One entry a feed wants on a list.
#[derive(Clone, Debug)]
pub struct FeedEntry {
    pub cidr: Cidr,
    pub ttl: Option<Duration>,
    pub comment: String,
}

/// A change to the entries one feed owns (CrowdSec decisions, bans, an imported list): entries
/// another origin put there are never replaced or removed by it.
pub struct FeedChange<'a> {
    pub kind: ListKind,
    pub origin: Origin,
    /// Removed first, so an entry both removed and added in one change stays.
    pub removals: &'a [Cidr],
    pub upserts: &'a [FeedEntry],
    /// Also remove every entry of `origin` not in `upserts` (a full resync).
    pub replace: bool,
}

/// What a feed change did.
#[derive(Debug, Default)]
pub struct FeedOutcome {
    pub added: usize,
    pub refreshed: usize,
    pub removed: usize,
    /// Upserts left alone because another origin's entry holds the same CIDR.
    pub foreign: Vec<Cidr>,
    /// Upserts refused by the lock-out protection, with the reason.
    pub refused: Vec<(Cidr, ListError)>,
    /// The change as the state file saw it.
    pub write: crate::state::OwnWrite,
}

/// Applies a feed's change as one all-or-nothing transaction: removals that are not listed
/// are ignored (feeds repeat deletions), and blocklist entries that would block loopback or
/// this host's own address are refused one by one and the rest applied.
pub fn apply_feed(paths: &Paths, change: &FeedChange<'_>) -> Result<FeedOutcome, ListError> {
    let kind = change.kind;
    let mut outcome = FeedOutcome::default();
    let mut accepted = Vec::with_capacity(change.upserts.len());
    let own = own_addresses();
    for entry in change.upserts {
        let check = match kind {
            ListKind::Block => check_lockout_with(&[entry.cidr], false, &own),
            ListKind::Allow => Ok(()),
        };
        match check {
            Ok(()) => accepted.push(entry),
            Err(e) => outcome.refused.push((entry.cidr, e)),
        }
    }
    let (_lock, mut store) = loaded_store(paths)?;
    let before = Some(store.generation()?);
    let now = unix_now();
    // What the store holds for each CIDR the change names, looked up once.
    let named: Vec<Cidr> = change
        .removals
        .iter()
        .copied()
        .chain(accepted.iter().map(|e| e.cidr))
        .collect();
    let held = store.records_for(kind, named.iter())?;
    let ours = |cidr: &Cidr| {
        held.get(cidr)
            .is_some_and(|r| r.origin == change.origin || r.expired(now))
    };
    let mut changes = expired_changes(&store, kind)?;
    for cidr in change.removals {
        if ours(cidr) {
            changes.insert(*cidr, None);
        }
    }
    let mut removed_live = 0;
    if change.replace {
        let wanted: std::collections::HashSet<Cidr> = accepted.iter().map(|e| e.cidr).collect();
        for record in store.of_origin(kind, change.origin)? {
            if !wanted.contains(&record.cidr) {
                if !record.expired(now) {
                    removed_live += 1;
                }
                changes.insert(record.cidr, None);
            }
        }
    }
    let unix_ns = unix_now_ns();
    for entry in accepted {
        if held.contains_key(&entry.cidr) && !ours(&entry.cidr) {
            outcome.foreign.push(entry.cidr);
            continue;
        }
        let expires_at = entry.ttl.map(|ttl| {
            unix_ns
                .saturating_add(ttl.as_nanos() as u64)
                .div_ceil(1_000_000_000)
        });
        // A refreshed entry keeps the time it was first added.
        let added_at = held
            .get(&entry.cidr)
            .filter(|r| !r.expired(now))
            .map_or(now, |r| r.added_at);
        changes.insert(
            entry.cidr,
            Some(Record {
                cidr: entry.cidr,
                expires_at,
                comment: (!entry.comment.is_empty()).then(|| entry.comment.clone()),
                origin: change.origin,
                added_at,
            }),
        );
    }
    // Entries a replace removes were counted above; the rest are what the change names.
    outcome.removed = removed_live;
    for (cidr, new) in &changes {
        let live = held.get(cidr).is_some_and(|r| !r.expired(now));
        match (new, live) {
            (None, true) => outcome.removed += 1,
            (Some(_), true) => outcome.refreshed += 1,
            (Some(_), false) => outcome.added += 1,
            (None, false) => {}
        }
    }
    let earliest_expiry = changes
        .values()
        .filter_map(|r| r.as_ref().and_then(|r| r.expires_at))
        .min();
    if !changes.is_empty() {
        apply(paths, &mut store, kind, changes)?;
    }
    outcome.write = crate::state::OwnWrite {
        before,
        after: Some(store.generation()?),
        earliest_expiry,
    };
    Ok(outcome)
}

/// The live entries of `origin` on the blocklist.
pub fn count_origin(paths: &Paths, origin: Origin) -> Result<usize, ListError> {
    let now = unix_now();
    Ok(Store::open(paths)?
        .of_origin(ListKind::Block, origin)?
        .iter()
        .filter(|r| !r.expired(now))
        .count())
}

/// Removes entries; every one must be listed, else nothing is removed.
pub fn del(paths: &Paths, kind: ListKind, cidrs: &[Cidr]) -> Result<(), ListError> {
    let (_lock, mut store) = loaded_store(paths)?;
    let now = unix_now();
    for cidr in cidrs {
        if store.get(kind, cidr)?.is_none_or(|r| r.expired(now)) {
            return Err(ListError::NotListed {
                cidr: *cidr,
                list: kind.name(),
                verb: verb(kind),
            });
        }
    }
    let mut changes = expired_changes(&store, kind)?;
    changes.extend(cidrs.iter().map(|c| (*c, None)));
    apply(paths, &mut store, kind, changes)
}

/// Removes every entry. Returns how many there were.
pub fn flush(paths: &Paths, kind: ListKind) -> Result<usize, ListError> {
    let (_lock, mut store) = loaded_store(paths)?;
    let n = store.count_live(kind, unix_now())? as usize;
    let changes: BTreeMap<_, _> = store
        .all(kind)?
        .into_iter()
        .map(|r| (r.cidr, None))
        .collect();
    apply(paths, &mut store, kind, changes)?;
    Ok(n)
}

/// Removes the entries whose time is up from the maps and the store. Returns how many.
pub fn sweep_expired(paths: &Paths) -> Result<usize, ListError> {
    let (_lock, mut store) = loaded_store(paths)?;
    let mut n = 0;
    for kind in [ListKind::Allow, ListKind::Block] {
        let changes = expired_changes(&store, kind)?;
        if !changes.is_empty() {
            n += changes.len();
            apply(paths, &mut store, kind, changes)?;
        }
    }
    Ok(n)
}

/// Calls `f` with each entry still in force, in address order (expired ones are shown by
/// nobody: the kernel ignores them too).
pub fn for_each_live(
    paths: &Paths,
    kind: ListKind,
    f: impl FnMut(Record) -> std::io::Result<()>,
) -> Result<(), ListError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded.into());
    }
    recover_if_pending(paths)?;
    Ok(Store::open(paths)?.for_each_live(kind, unix_now(), f)?)
}

/// Writes every record of the store into freshly loaded maps (on `attach`).
pub fn restore(paths: &Paths, store: &Store) -> Result<(), ListError> {
    for kind in [ListKind::Allow, ListKind::Block] {
        reconcile(paths, store, kind, false)?;
    }
    Ok(())
}

/// Entries written to the kernel per batch when the store is streamed into it.
const KERNEL_BATCH: usize = 65_536;

/// Makes the kernel maps of `kind` hold the live entries of the store, streamed from it in
/// batches (exact hosts one `bpf(2)` call per batch). With `prune`, entries the store does not
/// hold live are removed first. Expired records stay out (the next change sweeps them from the
/// store too). Memory stays bounded by a batch, plus the CIDRs to prune.
pub(crate) fn reconcile(
    paths: &Paths,
    store: &Store,
    kind: ListKind,
    prune: bool,
) -> Result<(), ListError> {
    let (unow, mnow) = (unix_now_ns(), mono_now_ns());
    let now = unix_now();
    let mut maps = ListMaps::open(paths, kind)?;
    if prune {
        let mut stale = Vec::new();
        maps.for_each_cidr(|cidr| -> Result<(), ListError> {
            if store.get(kind, &cidr)?.is_none_or(|r| r.expired(now)) {
                stale.push(cidr);
            }
            Ok(())
        })?;
        for cidr in &stale {
            maps.remove(cidr)?;
        }
    }
    store.for_each_live_batch(
        kind,
        now,
        KERNEL_BATCH,
        |records| -> Result<(), ListError> {
            let entries: Vec<(Cidr, ListEntry)> = records
                .iter()
                .map(|r| (r.cidr, kernel_entry(r, unow, mnow)))
                .collect();
            Ok(maps.insert_all(&entries)?)
        },
    )
}

/// Drops the cover bits (`HOST_COVER`, `NET_COVER`) of entries no longer on the lists, so
/// the kernel stops looking them up: the bits become those of every entry the store holds
/// (expired ones not yet swept included, so the bits cover everything the maps can hold).
/// Called with the lock held and the kernel agreeing with the store (no recovery due).
pub(crate) fn rebuild_cover(paths: &Paths, store: &Store) -> Result<(), ListError> {
    for kind in [ListKind::Allow, ListKind::Block] {
        let mut cover = crate::kernel::CoverBits::default();
        store.for_each_live_batch(kind, 0, KERNEL_BATCH, |records| -> Result<(), ListError> {
            for r in records {
                cover.add(&r.cidr);
            }
            Ok(())
        })?;
        ListMaps::open(paths, kind)?.replace_cover(&cover)?;
    }
    Ok(())
}

/// [`rebuild_cover`] for `floodwall run`: takes the lock, finishes a recovery first if one is
/// due (which rebuilds the bits itself).
pub fn rebuild_cover_now(paths: &Paths) -> Result<(), ListError> {
    let _lock = Lock::acquire(paths)?;
    let store = Store::open(paths)?;
    if paths.pending_file().exists() {
        return recover(paths, &store);
    }
    rebuild_cover(paths, &store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cidr: &str, expires_at: Option<u64>) -> Record {
        Record {
            cidr: cidr.parse().expect("valid cidr"),
            expires_at,
            comment: None,
            origin: Origin::Manual,
            added_at: 0,
        }
    }

    #[test]
    fn kernel_expiry_is_monotonic_time() {
        let s = 1_000_000_000;
        assert_eq!(
            kernel_entry(&record("1.2.3.4", None), 100 * s, 5).expires_ns,
            0
        );
        assert_eq!(
            kernel_entry(&record("1.2.3.4", Some(90)), 100 * s, 5).expires_ns,
            1
        );
        assert_eq!(
            kernel_entry(&record("1.2.3.4", Some(130)), 100 * s + 250, 5).expires_ns,
            5 + 30 * s - 250
        );
    }

    #[test]
    fn loopback_is_never_blocked() {
        let c: Cidr = "127.0.0.0/8".parse().expect("valid");
        assert!(matches!(
            check_lockout(&[c], true),
            Err(ListError::Loopback { .. })
        ));
        let c: Cidr = "::1".parse().expect("valid");
        assert!(matches!(
            check_lockout(&[c], true),
            Err(ListError::Loopback { .. })
        ));
        let c: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(check_lockout(&[c], true).is_err());
    }
}
