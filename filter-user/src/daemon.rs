//! `floodwall run`: the long-running service. It attaches (or adopts an attachment), turns
//! sampled drop events into rate-capped log lines, bans sources that stay over their limit,
//! sweeps expired list entries, raises alerts, serves metrics, reloads on SIGHUP and exits on
//! SIGTERM or SIGINT, leaving the filter attached unless told otherwise.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use filter_common::{DropEvent, FAMILY_V4, Reason, SourceKey, mask_prefix};
use log::{error, info, warn};
use thiserror::Error;

use crate::{
    attach::{self, AttachError, AttachOptions},
    bans::{Ban, Offenders},
    cidr::Cidr,
    config::{ConfigError, FileConfig, ServiceConfig},
    kernel::{self, AttachMode, KernelError},
    lists::{self, FeedChange, FeedEntry},
    logging::{DROP_LINES, DROP_TARGET},
    metrics::{self, ServiceCounters},
    paths::{Paths, PathsError},
    reload::{self, ReloadError},
    state::{ListKind, Origin, OwnWrites, StateError, unix_now},
    stats::{Stats, source_addr},
    store::Store,
};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Reload(#[from] ReloadError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Paths(#[from] PathsError),
    #[error(transparent)]
    PidFile(#[from] crate::pidfile::PidFileError),
    #[error(
        "floodwall was detached from every interface (`floodwall detach --all`?): exiting, \
         so that a service manager restarts `floodwall run` and it attaches again"
    )]
    Detached,
    #[error("cannot serve metrics on {addr}: {source}; pick another address with --metrics")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the service's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot wait for drop events from the kernel: {0}")]
    Events(#[source] std::io::Error),
    #[error(transparent)]
    Crowdsec(crate::crowdsec::lapi::LapiError),
}

impl DaemonError {
    pub fn is_bad_input(&self) -> bool {
        match self {
            DaemonError::Attach(e) => e.is_bad_input(),
            DaemonError::Config(_)
            | DaemonError::Crowdsec(_)
            | DaemonError::PidFile(crate::pidfile::PidFileError::AlreadyRunning { .. }) => true,
            _ => false,
        }
    }
}

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub mode: AttachMode,
    pub config: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub detach_on_exit: bool,
}

/// Events handled per wake-up at most, so signals and the tick are not kept waiting.
const MAX_EVENTS_PER_POLL: usize = 10_000;
/// How often map fill is checked against `map_fill_percent`.
const FILL_CHECK: Duration = Duration::from_secs(10);
/// How often the `KNOWN` bitmap's fill is checked, and the share of its bits (one in
/// `KNOWN_REBUILD_SHARE`) above which it is rebuilt from `SOURCES`. A spoofed flood admits
/// up to `new_sources` a second; their bits stay set after the LRU evicts them, so the share of
/// random sources that cost a state lookup grows until a rebuild. The bits must also have
/// doubled since the last rebuild, so that a `SOURCES` sized near the bitmap is not rescanned
/// every check.
const KNOWN_CHECK: Duration = Duration::from_secs(10);
const KNOWN_REBUILD_SHARE: u64 = 8;
/// How often the lists' cover bits (`HOST_COVER`, `NET_COVER`) are rebuilt from the store if
/// the lists changed meanwhile: entries deleted or expired keep their bits until then. A
/// rebuild reads the whole store under the lock.
const COVER_REBUILD: Duration = Duration::from_secs(3600);

pub fn run(paths: &Paths, options: &RunOptions) -> Result<(), DaemonError> {
    let config_path = options
        .config
        .clone()
        .unwrap_or_else(|| paths.config.clone());
    let mut file = FileConfig::load(&config_path, options.config.is_some())?;
    paths.ensure_state_dir()?;
    // Held until this function returns: one service per state directory.
    let _pid_file = crate::pidfile::PidFile::claim(paths)?;
    let attached: Vec<String> = paths.links()?.into_iter().map(|(i, _, _)| i).collect();
    let missing: Vec<String> = options
        .ifaces
        .iter()
        .filter(|i| !attached.contains(i))
        .cloned()
        .collect();
    for iface in options.ifaces.iter().filter(|i| attached.contains(i)) {
        info!("adopted the existing attachment on {iface}");
    }
    if !missing.is_empty() {
        // The service's config file, when there is one, sets the limits it starts with.
        let attach_options = AttachOptions {
            mode: options.mode,
            config: (options.config.is_some() || config_path.exists())
                .then_some(config_path.as_path()),
            dry_run: false,
        };
        for (iface, mode) in attach::attach(paths, &missing, &attach_options)? {
            info!("attached to {iface} ({} mode)", mode.name());
        }
    } else if config_path.exists() {
        reload::apply(paths, &file)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("floodwall-run")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let result = runtime.block_on(serve(paths, options, &config_path, &mut file));
    // Waits for a list change the bouncer has under way: it is never cut half-way.
    drop(runtime);
    if let Err(e @ DaemonError::Detached) = &result {
        error!("{e}");
        return result;
    }
    if options.detach_on_exit {
        match attach::detach(paths, &options.ifaces, false) {
            Ok(done) => info!("detached from {}", done.join(", ")),
            Err(e) => error!("detaching on exit: {e}"),
        }
    } else {
        info!("exiting; the filter stays attached (floodwall detach to remove it)");
    }
    result
}

async fn serve(
    paths: &Paths,
    options: &RunOptions,
    config_path: &std::path::Path,
    file: &mut FileConfig,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let counters = Arc::new(ServiceCounters::default());
    DROP_LINES.set_cap(file.service.log_lines_per_sec);
    let metrics_addr = match options.metrics {
        Some(addr) => addr,
        None => file
            .service
            .metrics
            .parse()
            .map_err(|_| ConfigError::Parse {
                path: config_path.to_owned(),
                message: format!("bad metrics address `{}`", file.service.metrics),
            })?,
    };
    let listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|source| DaemonError::Metrics {
            addr: metrics_addr,
            source,
        })?;
    let metrics_task = tokio::spawn(metrics::serve(
        listener,
        paths.clone(),
        Arc::clone(&counters),
    ));
    info!("serving metrics on http://{metrics_addr}/metrics");

    let own = Arc::new(OwnWrites::default());
    let mut bouncer = BouncerTask::start(paths, file.crowdsec.as_ref(), &counters, &own)?;
    let events = kernel::open_events(paths)?;
    // SAFETY: the ring buffer owns its map's descriptor and keeps it open, unchanged, for as
    // long as it lives, and the AsyncFd owns the ring buffer.
    let mut events = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    }
    .map_err(|e| DaemonError::Events(std::io::Error::other(e.to_string())))?;
    let sources = kernel::SourceReader::open(paths)?;
    let mut watch = Watch::new(
        file.service.clone(),
        Arc::clone(&counters),
        Arc::clone(&own),
    );
    watch.push = bouncer.alerts();
    watch.read_prefixes(paths);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            _ = hup.recv() => {
                match FileConfig::load(config_path, true) {
                    Ok(new) => match reload::apply(paths, &new) {
                        Ok(_) => {
                            info!("reloaded `{}`", config_path.display());
                            if new.crowdsec != file.crowdsec {
                                match BouncerTask::start(paths, new.crowdsec.as_ref(), &counters, &own) {
                                    Ok(task) => {
                                        bouncer = task;
                                        watch.push = bouncer.alerts();
                                    }
                                    Err(e) => error!("[crowdsec] not changed: {e}"),
                                }
                            }
                            DROP_LINES.set_cap(new.service.log_lines_per_sec);
                            watch.service = new.service.clone();
                            *file = new;
                        }
                        Err(e) => error!("reload failed, keeping the old settings: {e}"),
                    },
                    Err(e) => error!("reload failed, keeping the old settings: {e}"),
                }
            }
            guard = events.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(e) => break Err(DaemonError::Events(e)),
                };
                let ring = guard.get_inner_mut();
                let mut drained = false;
                for _ in 0..MAX_EVENTS_PER_POLL {
                    let Some(item) = ring.next() else {
                        drained = true;
                        break;
                    };
                    if item.len() >= std::mem::size_of::<DropEvent>() {
                        // SAFETY: the kernel writes whole `DropEvent`s; read_unaligned copies
                        // it out.
                        let event =
                            unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) };
                        drop(item);
                        watch.event(&event, &sources);
                    }
                }
                // Not drained: the next turn of the loop reads on without waiting.
                if drained {
                    guard.clear_ready();
                }
            }
            _ = tick.tick() => {
                if !paths.is_loaded() {
                    // Staying up would leave a service that protects nothing.
                    break Err(DaemonError::Detached);
                }
                watch.tick(paths, &sources);
            }
        }
    };
    if watch.syn_auto.active {
        // Nobody would switch it off once the service is gone.
        let _ = kernel::set_syn_auto_active(paths, false);
        let _ = crate::syncookies::release(paths);
        info!("SYN challenge off: the service is exiting");
    }
    metrics_task.abort();
    drop(bouncer);
    let _ = fs::remove_file(paths.crowdsec_status_file());
    result
}

/// The CrowdSec bouncer as a task of the service's runtime; dropping this stops it.
struct BouncerTask {
    task: Option<tokio::task::JoinHandle<()>>,
    alerts: Option<tokio::sync::mpsc::Sender<crate::crowdsec::lapi::Alert>>,
}

/// Bans waiting to be pushed at most; beyond it they are counted as failed.
const ALERT_QUEUE: usize = 10_000;

impl BouncerTask {
    fn start(
        paths: &Paths,
        config: Option<&crate::crowdsec::config::CrowdsecConfig>,
        counters: &Arc<ServiceCounters>,
        own: &Arc<OwnWrites>,
    ) -> Result<BouncerTask, DaemonError> {
        let Some(config) = config else {
            counters.crowdsec_on.store(false, Ordering::Relaxed);
            let _ = fs::remove_file(paths.crowdsec_status_file());
            return Ok(BouncerTask {
                task: None,
                alerts: None,
            });
        };
        let bouncer = crate::crowdsec::Bouncer::new(
            paths,
            config,
            Arc::clone(&counters.crowdsec),
            Arc::clone(own),
        )
        .map_err(DaemonError::Crowdsec)?;
        counters.crowdsec_on.store(true, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel(ALERT_QUEUE);
        info!(
            "CrowdSec bouncer: pulling decisions from {} every {}s{}",
            config.lapi_url,
            config.update_frequency_secs,
            if config.pushes() {
                ", pushing automatic bans"
            } else {
                ""
            }
        );
        Ok(BouncerTask {
            task: Some(tokio::spawn(bouncer.run(rx))),
            alerts: config.pushes().then_some(tx),
        })
    }

    fn alerts(&self) -> Option<tokio::sync::mpsc::Sender<crate::crowdsec::lapi::Alert>> {
        self.alerts.clone()
    }
}

impl Drop for BouncerTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An interface by index, named only when a log line that shows it is written.
struct IfName(u32);

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match kernel::ifname(self.0) {
            Some(name) => f.write_str(&name),
            None => write!(f, "if{}", self.0),
        }
    }
}

/// The service's per-second work and its bounded memory.
struct Watch {
    service: ServiceConfig,
    counters: Arc<ServiceCounters>,
    offenders: Offenders,
    last_dropped: Option<(Instant, u64)>,
    drop_alert: bool,
    fill_alerts: HashSet<&'static str>,
    /// When map fill was last checked.
    last_fill_check: Option<Instant>,
    /// When the `KNOWN` bitmap's fill was last checked, and its bits after the last rebuild.
    last_known_check: Option<Instant>,
    known_rebuilt: u64,
    /// When the cover bits were last rebuilt (start-up counts: `attach` loads them fresh or
    /// recovery rebuilds them), and the store's generation then.
    cover_rebuilt: (Instant, Option<u64>),
    /// The state file as last read, or as this process last wrote it.
    state_seen: Option<crate::state::Stamp>,
    /// Changes this process made itself (bans, CrowdSec), followed without reading them back.
    own: Arc<OwnWrites>,
    /// The store, opened once for the per-second checks.
    store: Option<Store>,
    /// The earliest expiry of a list entry in it (Unix s).
    next_expiry: Option<u64>,
    /// Its allowlist (entries in force then), so bans need not read the whole state.
    allowlist: Vec<(Cidr, Option<u64>)>,
    /// The source prefixes (IPv4, IPv6) the kernel keys state by, as the live config has them
    /// (`limit set` changes them without the config file): bans must key sources the same way.
    prefixes: (u32, u32),
    /// The `auto` SYN challenge and the counters it was last decided on.
    syn_auto: crate::syncookies::AutoSwitch,
    syn_seen: Option<(u64, u64, u64)>,
    /// Where bans are pushed as CrowdSec alerts, when the service pushes them.
    push: Option<tokio::sync::mpsc::Sender<crate::crowdsec::lapi::Alert>>,
    /// The limit each watched offender went over (for the pushed alert's scenario).
    over: HashMap<SourceKey, Reason>,
}

impl Watch {
    fn new(service: ServiceConfig, counters: Arc<ServiceCounters>, own: Arc<OwnWrites>) -> Watch {
        Watch {
            own,
            store: None,
            service,
            counters,
            offenders: Offenders::default(),
            last_dropped: None,
            drop_alert: false,
            fill_alerts: HashSet::new(),
            last_fill_check: None,
            last_known_check: None,
            known_rebuilt: 0,
            cover_rebuilt: (Instant::now(), None),
            state_seen: None,
            next_expiry: None,
            allowlist: Vec::new(),
            prefixes: (32, 64),
            syn_auto: crate::syncookies::AutoSwitch::default(),
            syn_seen: None,
            push: None,
            over: HashMap::new(),
        }
    }

    fn read_prefixes(&mut self, paths: &Paths) {
        if let Ok(config) = kernel::read_config(paths) {
            self.prefixes = (config.prefix4, config.prefix6);
        }
    }

    /// Switches an `auto` SYN challenge on while sources are shed as newcomers and off after
    /// a quiet period; logged, and the host's `tcp_syncookies` follows.
    fn syn_challenge(&mut self, paths: &Paths) {
        let Ok(config) = kernel::read_config(paths) else {
            return;
        };
        let Ok(stats) = Stats::read(paths) else {
            return;
        };
        let packets = |r: Reason| stats.totals.get(r.name()).map_or(0, |c| c.packets);
        let now = (
            packets(Reason::NewcomerLimited),
            packets(Reason::SynChallenged),
            packets(Reason::SynProven),
        );
        let before = self.syn_seen.replace(now);
        if !config.syn_auto() {
            if self.syn_auto.active {
                self.syn_auto = crate::syncookies::AutoSwitch::default();
            }
            return;
        }
        let Some(before) = before else { return };
        let shed = now.0.saturating_sub(before.0);
        let unproven = now
            .1
            .saturating_sub(before.1)
            .saturating_sub(now.2.saturating_sub(before.2));
        let admission = config.admission.rate(false);
        let quiet = self.service.syn_auto_quiet_secs;
        let Some(on) = self.syn_auto.second(shed, unproven, admission, quiet) else {
            return;
        };
        let applied = kernel::set_syn_auto_active(paths, on)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                if on {
                    crate::syncookies::engage(paths).map(drop)
                } else {
                    crate::syncookies::release(paths).map(drop)
                }
                .map_err(|e| e.to_string())
            });
        match (on, applied) {
            (true, Ok(())) => warn!(
                "SYN challenge ON: {shed} frames shed as newcomers in the last second; \
                 net.ipv4.tcp_syncookies = 2 while it lasts"
            ),
            (false, Ok(())) => info!(
                "SYN challenge off: quiet for {}s; tcp_syncookies restored",
                self.service.syn_auto_quiet_secs
            ),
            (_, Err(e)) => error!("cannot switch the SYN challenge: {e}"),
        }
        self.counters.syn_switches.fetch_add(1, Ordering::Relaxed);
    }

    /// Reports the drop lines the cap held back in the seconds now over (see [`crate::logging`]).
    fn report_suppressed(&self) {
        let n = DROP_LINES.take_unreported(unix_now());
        if n > 0 {
            warn!(
                "suppressed {n} drop log lines in the last second (cap {} per second)",
                DROP_LINES.cap()
            );
        }
    }

    fn event(&mut self, event: &DropEvent, sources: &kernel::SourceReader) {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let raw = SourceKey {
            family: event.family,
            addr: event.addr,
        };
        let reason = Reason::from_u32(event.reason).map_or("unknown", Reason::name);
        // The cap is applied where the line is written (and counted there).
        info!(
            target: DROP_TARGET,
            "drop {reason} from {} on {}",
            source_addr(&raw),
            IfName(event.ifindex)
        );
        if self.service.bans.enabled
            && matches!(
                Reason::from_u32(event.reason),
                Some(Reason::OverPps | Reason::OverBps)
            )
        {
            let mut key = raw;
            let prefix = if key.family == FAMILY_V4 {
                self.prefixes.0
            } else {
                self.prefixes.1
            };
            mask_prefix(&mut key.addr, prefix);
            if self.push.is_some()
                && let Some(reason) = Reason::from_u32(event.reason)
            {
                self.over.insert(key, reason);
            }
            // Its drop count now: only drops after this one count towards a ban.
            let dropped = sources.get(&key).ok().flatten().map_or(0, |s| s.dropped);
            self.offenders
                .suspect(key, dropped, unix_now(), &self.service.bans);
        }
    }

    fn tick(&mut self, paths: &Paths, sources: &kernel::SourceReader) {
        self.report_suppressed();
        self.read_prefixes(paths);
        let now = unix_now();
        self.sweep(paths, now);
        if self.service.bans.enabled {
            let mut bans = Vec::new();
            for key in self.offenders.watched() {
                let dropped = sources.get(&key).ok().flatten().map(|s| s.dropped);
                if let Some(ban) = self
                    .offenders
                    .observe(key, dropped, now, &self.service.bans)
                {
                    bans.push(ban);
                }
            }
            if !bans.is_empty() {
                self.ban(paths, &bans);
            }
            if self.push.is_some() {
                let watched: HashSet<SourceKey> = self.offenders.watched().into_iter().collect();
                self.over.retain(|key, _| watched.contains(key));
            }
        }
        self.alerts(paths);
        self.syn_challenge(paths);
        self.known(paths);
        self.cover(paths);
    }

    /// Rebuilds the lists' cover bits once an hour if the lists changed.
    fn cover(&mut self, paths: &Paths) {
        if self.cover_rebuilt.0.elapsed() < COVER_REBUILD {
            return;
        }
        let generation = self.generation(paths);
        if generation.is_some() && generation == self.cover_rebuilt.1 {
            self.cover_rebuilt.0 = Instant::now();
            return;
        }
        let started = Instant::now();
        match lists::rebuild_cover_now(paths) {
            Ok(()) => {
                self.cover_rebuilt = (Instant::now(), generation);
                info!(
                    "lists' cover bits rebuilt from the store in {:.0?}",
                    started.elapsed()
                );
            }
            Err(e) => warn!("cannot rebuild the lists' cover bits: {e}"),
        }
    }

    /// Rebuilds the `KNOWN` bitmap when too many of its bits belong to sources long gone.
    fn known(&mut self, paths: &Paths) {
        if self
            .last_known_check
            .is_some_and(|at| at.elapsed() < KNOWN_CHECK)
        {
            return;
        }
        self.last_known_check = Some(Instant::now());
        let mut bits = 0;
        let known = kernel::Known::open(paths).and_then(|mut known| {
            bits = known.bits();
            let set = known.fill()?;
            if set * KNOWN_REBUILD_SHARE <= bits || set <= 2 * self.known_rebuilt {
                return Ok(None);
            }
            known.rebuild(paths).map(Some)
        });
        match known {
            Ok(None) => {}
            Ok(Some(r)) => {
                self.known_rebuilt = r.after;
                info!(
                    "known-source bitmap rebuilt: {} of {bits} bits set for {} sources with \
                     state (was {})",
                    r.after, r.sources, r.before
                );
            }
            Err(e) => warn!("cannot rebuild the known-source bitmap: {e}"),
        }
    }

    /// The store's generation, through a connection kept open across ticks (reopened after
    /// an error).
    fn generation(&mut self, paths: &Paths) -> Option<u64> {
        if self.store.is_none() {
            self.store = Store::open(paths).ok();
        }
        let generation = self.store.as_ref()?.generation().ok();
        if generation.is_none() {
            self.store = None;
        }
        generation
    }

    /// Removes expired list entries. The store is read only when someone else changed it or
    /// an entry is due to expire, not every second.
    fn sweep(&mut self, paths: &Paths, now: u64) {
        for write in self.own.take() {
            if write.before != self.state_seen {
                // Someone else wrote in between: read the file below.
                break;
            }
            self.state_seen = write.after;
            self.next_expiry = match (self.next_expiry, write.earliest_expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let stamp = self.generation(paths);
        let due = self.next_expiry.is_some_and(|t| t <= now);
        if stamp == self.state_seen && !due {
            return;
        }
        let read = |store: &Store| -> Result<_, StateError> {
            Ok((
                store.live(ListKind::Allow, now)?,
                store.any_expired(now)?,
                store.next_expiry(now)?,
            ))
        };
        let Some(Ok((allowlist, expired, next_expiry))) = self.store.as_ref().map(read) else {
            return;
        };
        self.counters.state_reads.fetch_add(1, Ordering::Relaxed);
        self.state_seen = stamp;
        self.allowlist = allowlist
            .into_iter()
            .map(|r| (r.cidr, r.expires_at))
            .collect();
        self.next_expiry = next_expiry;
        if expired {
            match lists::sweep_expired(paths) {
                Ok(n) => {
                    if n > 0 {
                        info!("removed {n} expired list entries");
                    }
                    // What the sweep left is what was just read, less the expired entries.
                    self.state_seen = self.generation(paths);
                }
                Err(e) => {
                    warn!("sweeping expired entries: {e}");
                    // Try again next tick.
                    self.state_seen = None;
                }
            }
        }
    }

    /// Adds this tick's bans to the blocklist: one state update per kind of ban, not one per
    /// source (each update rewrites the whole state file). Allowlisted sources are skipped
    /// (the allowlist as [`Watch::sweep`] last read it: the kernel checks the allowlist
    /// before the blocklist, so a ban racing an allowlist change has no effect anyway).
    fn ban(&mut self, paths: &Paths, bans: &[Ban]) {
        let now = unix_now();
        let allowlisted = |addr: &IpAddr| {
            self.allowlist
                .iter()
                .any(|(cidr, expires)| cidr.contains(addr) && expires.is_none_or(|t| t > now))
        };
        let mut groups: BTreeMap<(u64, u32, u64), Vec<(Cidr, SourceKey)>> = BTreeMap::new();
        for ban in bans {
            let addr = source_addr(&ban.key);
            let prefix = match addr {
                IpAddr::V4(_) => self.prefixes.0,
                IpAddr::V6(_) => self.prefixes.1,
            };
            let Ok(cidr) = Cidr::new(addr, prefix as u8) else {
                continue;
            };
            if allowlisted(&addr) {
                continue;
            }
            groups
                .entry((ban.ttl_secs, ban.offence, ban.over_secs))
                .or_default()
                .push((cidr, ban.key));
        }
        for ((ttl_secs, offence, over_secs), group) in groups {
            let keys: HashMap<Cidr, SourceKey> = group.iter().copied().collect();
            let comment = format!("over its limit for {over_secs}s (offence {offence})");
            let upserts: Vec<FeedEntry> = group
                .iter()
                .map(|(cidr, _)| FeedEntry {
                    cidr: *cidr,
                    ttl: Some(Duration::from_secs(ttl_secs)),
                    comment: comment.clone(),
                })
                .collect();
            // A ban never replaces an entry another origin made (a permanent manual block
            // would otherwise turn into a ban that expires).
            let change = FeedChange {
                kind: ListKind::Block,
                origin: Origin::Auto,
                removals: &[],
                upserts: &upserts,
                replace: false,
            };
            let outcome = match lists::apply_feed(paths, &change) {
                Ok(outcome) => outcome,
                Err(e) => {
                    for (cidr, _) in &group {
                        warn!("not banning {cidr}: {e}");
                    }
                    continue;
                }
            };
            self.own.record(outcome.write);
            for (cidr, e) in &outcome.refused {
                warn!("not banning {cidr}: {e}");
            }
            for (cidr, _) in group {
                if outcome.foreign.contains(&cidr)
                    || outcome.refused.iter().any(|(c, _)| *c == cidr)
                {
                    continue;
                }
                self.counters.bans.fetch_add(1, Ordering::Relaxed);
                if offence > 1 {
                    self.counters.escalations.fetch_add(1, Ordering::Relaxed);
                }
                warn!(
                    "banned {cidr} for {ttl_secs}s: over its limit for {over_secs}s, offence {offence}"
                );
                self.push_alert(cidr, keys.get(&cidr), ttl_secs, over_secs, offence);
            }
        }
    }

    /// Queues a ban for the CrowdSec LAPI, when the service pushes bans.
    fn push_alert(
        &mut self,
        cidr: Cidr,
        key: Option<&SourceKey>,
        ttl_secs: u64,
        over_secs: u64,
        offence: u32,
    ) {
        let Some(push) = &self.push else { return };
        let scenario = match key.and_then(|k| self.over.get(k)) {
            Some(Reason::OverBps) => "floodwall/bps-flood",
            _ => "floodwall/pps-flood",
        };
        let now = unix_now();
        let alert = crate::crowdsec::lapi::Alert {
            cidr,
            ttl_secs,
            scenario,
            message: format!(
                "floodwall: {cidr} over its limit for {over_secs}s (offence {offence}), banned \
                 for {ttl_secs}s"
            ),
            start_at: now.saturating_sub(over_secs),
            stop_at: now,
        };
        if push.try_send(alert).is_err() {
            self.counters
                .crowdsec
                .alerts_failed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn alerts(&mut self, paths: &Paths) {
        let alerts = &self.service.alerts;
        if alerts.drop_pps > 0
            && let Ok(stats) = Stats::read(paths)
        {
            let dropped = stats.dropped();
            if let Some((at, before)) = self.last_dropped {
                let pps = dropped.saturating_sub(before) as f64 / at.elapsed().as_secs_f64();
                let over = pps >= alerts.drop_pps as f64;
                if over != self.drop_alert {
                    self.drop_alert = over;
                    if over {
                        warn!(
                            "ALERT: dropping {pps:.0} packets/s (threshold {})",
                            alerts.drop_pps
                        );
                    } else {
                        warn!(
                            "cleared: dropping {pps:.0} packets/s (threshold {})",
                            alerts.drop_pps
                        );
                    }
                }
            }
            self.last_dropped = Some((Instant::now(), dropped));
        }
        // Counting a map's entries walks all its keys: not every second.
        let fill_due = self
            .last_fill_check
            .is_none_or(|at| at.elapsed() >= FILL_CHECK);
        if alerts.map_fill_percent > 0
            && fill_due
            && let Ok(fill) = kernel::map_fill(paths)
        {
            self.last_fill_check = Some(Instant::now());
            let mut now_over: BTreeMap<&'static str, u64> = BTreeMap::new();
            for m in &fill {
                if m.capacity > 0 {
                    let pct = m.entries * 100 / u64::from(m.capacity);
                    if pct >= alerts.map_fill_percent {
                        now_over.insert(m.name, pct);
                    }
                }
            }
            for (name, pct) in &now_over {
                if self.fill_alerts.insert(name) {
                    warn!(
                        "ALERT: map {name} is {pct}% full (threshold {}%)",
                        alerts.map_fill_percent
                    );
                }
            }
            self.fill_alerts.retain(|name| {
                let keep = now_over.contains_key(name);
                if !keep {
                    warn!(
                        "cleared: map {name} below {}% full",
                        alerts.map_fill_percent
                    );
                }
                keep
            });
        }
    }
}
