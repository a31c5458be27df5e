//! floodwall as a CrowdSec bouncer: `floodwall run` pulls decisions from a Local API and
//! enforces each as a blocklist entry (origin `crowdsec`, the decision's duration as its TTL),
//! and pushes its own automatic bans back as alerts so the rest of the fleet enforces them.

pub mod config;
pub mod decisions;
pub mod lapi;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use log::{error, info, warn};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use self::{
    config::CrowdsecConfig,
    decisions::{Filter, Skip, StreamBody},
    lapi::{Alert, Lapi, LapiError},
};
use crate::{
    cidr::Cidr,
    lists::{self, FeedChange, FeedEntry},
    paths::Paths,
    state::{Origin, OwnWrites, unix_now},
};

/// What the bouncer counts, for metrics.
#[derive(Debug, Default)]
pub struct CrowdsecCounters {
    /// Addresses and ranges enforced for CrowdSec now.
    pub decisions: AtomicU64,
    pub pulls_ok: AtomicU64,
    pub pulls_unreachable: AtomicU64,
    pub pulls_forbidden: AtomicU64,
    pub pulls_malformed: AtomicU64,
    pub pulls_error: AtomicU64,
    /// Unix seconds of the last pull that was applied; 0 before the first.
    pub last_good_pull: AtomicU64,
    pub connected: AtomicBool,
    pub skipped_invalid: AtomicU64,
    pub skipped_filtered: AtomicU64,
    /// Refused by the lock-out protection (this host's own address, loopback).
    pub refused: AtomicU64,
    /// Pulls whose change did not fit the maps (retried at a resync).
    pub apply_failures: AtomicU64,
    pub alerts_pushed: AtomicU64,
    pub alerts_failed: AtomicU64,
}

impl CrowdsecCounters {
    fn pull_failed(&self, e: &LapiError) {
        match e.kind() {
            "forbidden" => &self.pulls_forbidden,
            "unreachable" => &self.pulls_unreachable,
            "malformed" => &self.pulls_malformed,
            _ => &self.pulls_error,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// What `floodwall status` shows about the bouncer, written by the service after each pull.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BouncerStatus {
    pub lapi_url: String,
    pub connected: bool,
    /// Unix seconds of the last pull that was applied.
    pub last_good_pull: Option<u64>,
    pub decisions: u64,
    pub pushing: bool,
    pub last_error: Option<String>,
}

impl BouncerStatus {
    pub fn read(paths: &Paths) -> Option<BouncerStatus> {
        let text = std::fs::read_to_string(paths.crowdsec_status_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, paths: &Paths) {
        let path = paths.crowdsec_status_file();
        let tmp = path.with_extension("json.tmp");
        let Ok(text) = serde_json::to_vec(self) else {
            return;
        };
        // Best effort: status is for display, the service does not depend on it.
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// The decision types held per address or range: the LAPI streams one decision per (scope,
/// value, type), so an entry is lifted only when the last type enforcing it is deleted.
type Held = HashMap<Cidr, Vec<String>>;

/// One pull turned into a blocklist change.
#[derive(Debug, Default)]
struct Plan {
    removals: Vec<Cidr>,
    upserts: Vec<FeedEntry>,
    /// A full pull replaces every `crowdsec` entry; `held` becomes `new_held`.
    full: Option<Held>,
    /// For a delta: what each touched key of `held` was before, to undo a refused change.
    undo: Vec<(Cidr, Option<Vec<String>>)>,
    invalid: u64,
    filtered: u64,
}

fn plan(held: &mut Held, body: &StreamBody, filter: &Filter, full: bool) -> Plan {
    let mut plan = Plan::default();
    let mut upserts: HashMap<Cidr, FeedEntry> = HashMap::new();
    let read = |raw, plan: &mut Plan| match filter.decision(raw) {
        Ok(d) => Some(d),
        Err(Skip::Invalid) => {
            plan.invalid += 1;
            None
        }
        Err(Skip::Filtered) => {
            plan.filtered += 1;
            None
        }
    };
    let mut new_held = Held::new();
    let target: &mut Held = if full { &mut new_held } else { held };
    let mut undo: HashMap<Cidr, Option<Vec<String>>> = HashMap::new();
    if !full {
        // Deleted before new: a decision replaced within one pull stays.
        for raw in body.deleted.iter().flatten() {
            let Some(d) = read(raw, &mut plan) else {
                continue;
            };
            undo.entry(d.cidr)
                .or_insert_with(|| target.get(&d.cidr).cloned());
            if let Some(kinds) = target.get_mut(&d.cidr) {
                kinds.retain(|k| *k != d.kind);
                if kinds.is_empty() {
                    target.remove(&d.cidr);
                    plan.removals.push(d.cidr);
                }
            }
        }
    }
    // `startup=true` lists expired decisions under `deleted` too: a full pull needs only `new`.
    for raw in body.new.iter().flatten() {
        let Some(d) = read(raw, &mut plan) else {
            continue;
        };
        let Some(ttl) = d.ttl.filter(|t| !t.is_zero()) else {
            continue;
        };
        if !full {
            undo.entry(d.cidr)
                .or_insert_with(|| target.get(&d.cidr).cloned());
        }
        let kinds = target.entry(d.cidr).or_default();
        if !kinds.contains(&d.kind) {
            kinds.push(d.kind.clone());
        }
        // One entry per CIDR, as long as its longest decision.
        let entry = upserts.entry(d.cidr).or_insert_with(|| FeedEntry {
            cidr: d.cidr,
            ttl: Some(ttl),
            comment: d.scenario.clone(),
        });
        if entry.ttl.is_some_and(|t| t < ttl) {
            entry.ttl = Some(ttl);
            entry.comment = d.scenario;
        }
    }
    plan.upserts = upserts.into_values().collect();
    plan.removals.retain(|c| !target.contains_key(c));
    if full {
        plan.full = Some(new_held);
    } else {
        plan.undo = undo.into_iter().collect();
    }
    plan
}

/// Backoff after `failures` failed pulls in a row: doubling from the update period, capped,
/// then "equal jitter" (half fixed, half random) so a fleet does not retry in step.
fn backoff(update: Duration, failures: u32) -> Duration {
    let cap = update.max(Duration::from_secs(30));
    let delay = update
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    delay / 2 + delay.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// The bouncer's life: pulls, applies, pushes, until the service's runtime drops it.
pub struct Bouncer {
    paths: Paths,
    config: CrowdsecConfig,
    lapi: Lapi,
    filter: Filter,
    held: Held,
    counters: Arc<CrowdsecCounters>,
    /// Where this bouncer's changes are told to the service's reader of the state file.
    own: Arc<OwnWrites>,
    synced: bool,
    next_resync: Instant,
    failures: u32,
    last_error: Option<String>,
}

/// A change that failed to fit is repaired by a full pull this soon (or at the resync period,
/// when that is shorter), not an hour later.
const RETRY_RESYNC: Duration = Duration::from_secs(60);
/// Changes at least this big are followed by a `malloc_trim`.
const TRIM_AFTER: usize = 10_000;
/// Alerts sent in one request at most.
const ALERTS_PER_PUSH: usize = 100;

impl Bouncer {
    /// Checks what can be checked before the service starts (key file, TLS files).
    pub fn new(
        paths: &Paths,
        config: &CrowdsecConfig,
        counters: Arc<CrowdsecCounters>,
        own: Arc<OwnWrites>,
    ) -> Result<Bouncer, LapiError> {
        let lapi = Lapi::new(config)?;
        // What the store holds from before is enforced until the first pull says otherwise.
        let known = lists::count_origin(paths, Origin::Crowdsec).unwrap_or(0);
        counters.decisions.store(known as u64, Ordering::Relaxed);
        Ok(Bouncer {
            paths: paths.clone(),
            config: config.clone(),
            lapi,
            filter: Filter::new(config),
            held: Held::new(),
            counters,
            own,
            synced: false,
            next_resync: Instant::now(),
            failures: 0,
            last_error: None,
        })
    }

    fn status(&self) -> BouncerStatus {
        let last = self.counters.last_good_pull.load(Ordering::Relaxed);
        BouncerStatus {
            lapi_url: self.lapi.url().to_owned(),
            connected: self.counters.connected.load(Ordering::Relaxed),
            last_good_pull: (last > 0).then_some(last),
            decisions: self.counters.decisions.load(Ordering::Relaxed),
            pushing: self.config.pushes(),
            last_error: self.last_error.clone(),
        }
    }

    pub async fn run(mut self, mut alerts: mpsc::Receiver<Alert>) {
        let update = Duration::from_secs(self.config.update_frequency_secs);
        let resync = Duration::from_secs(self.config.resync_secs);
        self.status().write(&self.paths);
        let mut next_pull = tokio::time::Instant::now();
        // Closed at once when the service does not push its bans.
        let mut pushing = true;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_pull) => {}
                alert = alerts.recv(), if pushing => {
                    let Some(alert) = alert else {
                        pushing = false;
                        continue;
                    };
                    let mut batch = vec![alert];
                    while batch.len() < ALERTS_PER_PUSH {
                        let Ok(more) = alerts.try_recv() else { break };
                        batch.push(more);
                    }
                    self.push(&batch).await;
                    continue;
                }
            }
            let full = !self.synced || Instant::now() >= self.next_resync;
            let delay = match self.pull(full).await {
                Ok(applied) => {
                    if full && applied {
                        self.next_resync = Instant::now() + resync;
                    }
                    update
                }
                Err(e) => {
                    self.failures += 1;
                    self.counters.pull_failed(&e);
                    let first = self.failures == 1;
                    self.counters.connected.store(false, Ordering::Relaxed);
                    if first {
                        // Logged on the change of state, not on every retry.
                        let held = self.counters.decisions.load(Ordering::Relaxed);
                        match &e {
                            LapiError::Forbidden { .. } => error!("{e}"),
                            _ => warn!(
                                "CrowdSec LAPI lost: {e}; still enforcing the {held} decisions \
                                 already applied, retrying with backoff"
                            ),
                        }
                    }
                    self.last_error = Some(e.to_string());
                    backoff(update, self.failures)
                }
            };
            self.status().write(&self.paths);
            next_pull = tokio::time::Instant::now() + delay;
        }
    }

    /// One pull and its change; `Ok(false)` if the pull came but its change was refused.
    async fn pull(&mut self, full: bool) -> Result<bool, LapiError> {
        let body = self.lapi.stream(full).await?;
        if self.failures > 0 || !self.counters.connected.load(Ordering::Relaxed) {
            if self.failures > 0 {
                info!(
                    "CrowdSec LAPI at {} is back after {} failed pulls",
                    self.lapi.url(),
                    self.failures
                );
            } else {
                info!("connected to the CrowdSec LAPI at {}", self.lapi.url());
            }
        }
        self.failures = 0;
        self.last_error = None;
        self.counters.connected.store(true, Ordering::Relaxed);
        self.counters.pulls_ok.fetch_add(1, Ordering::Relaxed);
        Ok(self.apply(body, full).await)
    }

    async fn apply(&mut self, body: StreamBody, full: bool) -> bool {
        let mut plan = plan(&mut self.held, &body, &self.filter, full);
        drop(body);
        self.counters
            .skipped_invalid
            .fetch_add(plan.invalid, Ordering::Relaxed);
        self.counters
            .skipped_filtered
            .fetch_add(plan.filtered, Ordering::Relaxed);
        if plan.invalid > 0 {
            warn!(
                "CrowdSec: skipped {} decisions with an invalid value or duration",
                plan.invalid
            );
        }
        let paths = self.paths.clone();
        let removals = std::mem::take(&mut plan.removals);
        let upserts = std::mem::take(&mut plan.upserts);
        let started = Instant::now();
        let (removals, upserts, result) = tokio::task::spawn_blocking(move || {
            let result = lists::apply_feed(
                &paths,
                &FeedChange {
                    kind: crate::state::ListKind::Block,
                    origin: Origin::Crowdsec,
                    removals: &removals,
                    upserts: &upserts,
                    replace: full,
                },
            );
            if upserts.len() + removals.len() >= TRIM_AFTER {
                // A big change leaves tens of MB free in the allocator's arenas: give them
                // back, so the service's resident memory follows what it holds.
                // SAFETY: malloc_trim has no preconditions.
                unsafe { libc::malloc_trim(0) };
            }
            (removals, upserts, result)
        })
        .await
        .unwrap_or_else(|e| {
            (
                Vec::new(),
                Vec::new(),
                Err(lists::ListError::State(crate::state::StateError::Write {
                    path: self.paths.store_file(),
                    source: std::io::Error::other(e.to_string()),
                })),
            )
        });
        match result {
            Ok(outcome) => {
                self.own.record(outcome.write);
                if let Some(new_held) = plan.full.take() {
                    self.held = new_held;
                    self.synced = true;
                }
                for (cidr, why) in outcome.refused.iter().take(10) {
                    warn!("CrowdSec: not enforcing {cidr}: {why}");
                }
                for (cidr, _) in &outcome.refused {
                    self.held.remove(cidr);
                }
                self.counters
                    .refused
                    .fetch_add(outcome.refused.len() as u64, Ordering::Relaxed);
                self.counters
                    .decisions
                    .store(self.held.len() as u64, Ordering::Relaxed);
                self.counters
                    .last_good_pull
                    .store(unix_now(), Ordering::Relaxed);
                if outcome.added + outcome.removed > 0 || full {
                    info!(
                        "CrowdSec{}: {} new, {} refreshed, {} lifted in {} ms; {} enforced",
                        if full { " (full pull)" } else { "" },
                        outcome.added,
                        outcome.refreshed,
                        outcome.removed,
                        started.elapsed().as_millis(),
                        self.held.len()
                    );
                }
                true
            }
            Err(e) => {
                for (cidr, before) in plan.undo.drain(..) {
                    match before {
                        Some(kinds) => self.held.insert(cidr, kinds),
                        None => self.held.remove(&cidr),
                    };
                }
                self.counters.apply_failures.fetch_add(1, Ordering::Relaxed);
                let retry = RETRY_RESYNC.min(Duration::from_secs(self.config.resync_secs));
                error!(
                    "ALERT: CrowdSec change refused ({} new, {} lifted): {e}; nothing of it was \
                     applied, retried with a full pull in {}s",
                    upserts.len(),
                    removals.len(),
                    retry.as_secs()
                );
                // The LAPI has moved its cursor past this delta: only a full pull repairs it.
                self.next_resync = Instant::now() + retry;
                self.last_error = Some(format!("change refused: {e}"));
                false
            }
        }
    }

    async fn push(&mut self, batch: &[Alert]) {
        match self.lapi.push(batch).await {
            Ok(()) => {
                self.counters
                    .alerts_pushed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for alert in batch {
                    info!(
                        "pushed the ban of {} to the CrowdSec LAPI ({})",
                        alert.cidr, alert.scenario
                    );
                }
            }
            Err(e) => {
                self.counters
                    .alerts_failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                warn!("cannot push {} bans to the CrowdSec LAPI: {e}", batch.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CrowdsecConfig {
        toml::from_str("lapi_url = \"http://h/\"\napi_key = \"k\"\nsupported_decisions_types = [\"ban\", \"captcha\"]\n")
            .expect("valid")
    }

    fn body(json: &str) -> StreamBody {
        serde_json::from_str(json).expect("valid")
    }

    fn d(value: &str, kind: &str, duration: &str) -> String {
        format!(
            r#"{{"id":1,"origin":"cscli","scenario":"s","scope":"Ip","type":"{kind}","value":"{value}","duration":"{duration}"}}"#
        )
    }

    #[test]
    fn a_full_pull_replaces_and_a_delta_lifts_only_the_last_type() {
        let filter = Filter::new(&config());
        let mut held = Held::new();
        let full = body(&format!(
            r#"{{"new":[{},{},{}],"deleted":[{}]}}"#,
            d("10.0.0.1", "ban", "10m"),
            d("10.0.0.1", "captcha", "1h"),
            d("10.0.0.2", "ban", "1m"),
            d("10.0.0.3", "ban", "-1s")
        ));
        let mut p = plan(&mut held, &full, &filter, true);
        assert_eq!(p.upserts.len(), 2);
        let one = p
            .upserts
            .iter()
            .find(|e| e.cidr.to_string() == "10.0.0.1")
            .expect("listed");
        assert_eq!(one.ttl, Some(Duration::from_secs(3600)), "the longest");
        held = p.full.take().expect("a full pull");
        let delta = body(&format!(
            r#"{{"new":null,"deleted":[{},{},{}]}}"#,
            d("10.0.0.1", "ban", "-1s"),
            d("10.0.0.2", "ban", "-1s"),
            d("10.0.0.2", "ban", "-1s")
        ));
        let p = plan(&mut held, &delta, &filter, false);
        let removed: Vec<String> = p.removals.iter().map(ToString::to_string).collect();
        assert_eq!(removed, ["10.0.0.2"], "10.0.0.1 still has its captcha");
        assert_eq!(held.len(), 1);
        assert_eq!(p.undo.len(), 2);
    }

    #[test]
    fn invalid_decisions_are_counted_not_applied() {
        let filter = Filter::new(&config());
        let mut held = Held::new();
        let b = body(&format!(
            r#"{{"new":[{},{}],"deleted":null}}"#,
            d("10.0.0.300", "ban", "10m"),
            d("10.0.0.4", "ban", "10m")
        ));
        let p = plan(&mut held, &b, &filter, false);
        assert_eq!(p.invalid, 1);
        assert_eq!(p.upserts.len(), 1);
    }

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        let update = Duration::from_secs(1);
        for failures in 1..20 {
            let b = backoff(update, failures);
            let full = update
                .saturating_mul(1 << (failures - 1).min(16))
                .min(Duration::from_secs(30));
            assert!(b >= full / 2 && b <= full, "{failures}: {b:?}");
        }
    }
}
