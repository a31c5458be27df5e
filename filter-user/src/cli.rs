//! The `floodwall` command line: clap definitions and the handlers that print results.

use std::{
    io::{IsTerminal as _, Read as _},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use filter_common::{LIST_MAP_NAMES, Reason};
use serde_json::json;
use thiserror::Error;

use crate::{
    attach::{self, AttachError, AttachOptions},
    cidr::{Cidr, CidrError},
    import::{self, ImportError},
    kernel::{self, AttachMode, KernelError},
    limits::{Limits, LimitsError, MalformedAction, SynCookies},
    lists::{self, AddOptions, ListError},
    paths::{Paths, PathsError},
    state::{ListKind, Lock, Origin, State, StateError, unix_now_ns},
    stats::{self, Stats},
};

#[derive(Debug, Parser)]
#[command(
    name = "floodwall",
    version,
    about = "XDP flood filter: per-source limits and CIDR lists, enforced before the kernel spends anything on a packet"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the filter (first time) and attach it to interfaces
    Attach {
        #[arg(required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
        /// XDP mode: native (driver), skb (generic), or auto (native, else skb)
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
        /// Config file whose limits to apply (default: the persisted limits)
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Decide and count, but pass every packet
        #[arg(long)]
        dry_run: bool,
    },
    /// Detach from interfaces; the last detach unloads the filter (lists and limits persist)
    Detach {
        #[arg(
            value_name = "IFACE",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ifaces: Vec<String>,
        /// Detach from every interface
        #[arg(long)]
        all: bool,
    },
    /// Interfaces, limits, list sizes and map fill levels
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The blocklist: sources dropped before anything else
    #[command(subcommand)]
    Block(ListCommand),
    /// The allowlist: sources passed without any limit
    #[command(subcommand)]
    Allow(ListCommand),
    /// Per-source and global limits
    #[command(subcommand)]
    Limit(LimitCommand),
    /// Packets and bytes per reason and interface
    Stats {
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds (default 1) and show rates per second
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<u64>,
    },
    /// Run as a service: attach (or adopt), log drops, ban repeat offenders, serve metrics
    Run {
        #[arg(required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
        /// Config file (default: $FLOODWALL_CONFIG or /etc/floodwall/floodwall.toml)
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Address for the Prometheus endpoint (default 127.0.0.1:9477)
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Detach from the interfaces on exit (by default the filter stays attached)
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Re-read the config file and apply its limits live (and tell `floodwall run`)
    Reload,
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
    /// The heaviest sources and their state
    Top {
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
    /// Why a frame from this address gets the verdict it gets now: list entries, its source
    /// key, its limiter state, admission, the challenge, the global caps
    Explain {
        #[arg(value_name = "ADDR")]
        addr: std::net::IpAddr,
        /// The frame length the verdict is for (bytes, Ethernet header included)
        #[arg(long, default_value_t = 64)]
        len: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// Add addresses or CIDRs
    Add {
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        /// Remove the entry after this long (30s, 10m, 2h, 1d)
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        comment: Option<String>,
        /// Block even a prefix that holds one of this host's own addresses
        #[arg(long)]
        force: bool,
        /// Print what changed as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove addresses or CIDRs
    Del {
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the entries, with time left and origin
    List {
        #[arg(long)]
        json: bool,
        /// Only entries of this origin: manual, import, auto, crowdsec
        #[arg(long, value_parser = parse_origin)]
        origin: Option<Origin>,
        /// Only entries that cover this address
        #[arg(long, value_name = "ADDR")]
        contains: Option<std::net::IpAddr>,
    },
    /// Add every entry of a file (plain, ipset save, FireHOL, Spamhaus DROP), or - for stdin
    Import {
        #[arg(value_name = "FILE")]
        file: String,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        force: bool,
        /// Make the imported entries exactly this file: earlier imported entries missing from
        /// it are removed in the same change (for feeds); entries of other origins stay
        #[arg(long)]
        replace: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove every entry
    Flush {
        #[arg(long)]
        json: bool,
    },
}

fn parse_origin(text: &str) -> Result<Origin, String> {
    [
        Origin::Manual,
        Origin::Import,
        Origin::Auto,
        Origin::Crowdsec,
    ]
    .into_iter()
    .find(|o| o.name() == text)
    .ok_or_else(|| format!("`{text}` is not an origin: use manual, import, auto or crowdsec"))
}

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Change limits live; flags not given keep their value
    Set(LimitArgs),
    /// Show the limits in force
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Packets per second per source (0: off)
    #[arg(long)]
    pps: Option<u64>,
    /// Packets a source may send at once (0: one second's worth)
    #[arg(long)]
    burst: Option<u64>,
    /// Bytes per second per source (0: off)
    #[arg(long)]
    bps: Option<u64>,
    /// Bytes a source may send at once (0: one second's worth)
    #[arg(long)]
    burst_bytes: Option<u64>,
    /// IPv4 prefix length that counts as one source
    #[arg(long)]
    prefix4: Option<u32>,
    /// IPv6 prefix length that counts as one source
    #[arg(long)]
    prefix6: Option<u32>,
    /// Total packets per second (0: no cap)
    #[arg(long)]
    global_pps: Option<u64>,
    /// Total bytes per second (0: no cap)
    #[arg(long)]
    global_bps: Option<u64>,
    /// New sources given their own state per second (0: all)
    #[arg(long)]
    new_sources: Option<u64>,
    /// Packets per second shared by sources still without state
    #[arg(long)]
    newcomer_pps: Option<u64>,
    /// Pass everything but count what would be dropped
    #[arg(long)]
    dry_run: Option<bool>,
    /// What to do with frames that cannot be parsed
    #[arg(long, value_enum)]
    malformed: Option<MalformedAction>,
    /// Answer SYNs from sources without state with a SYN cookie (auto: while sources are shed
    /// as newcomers, switched by `floodwall run`)
    #[arg(long, value_enum)]
    syn_cookies: Option<SynCookies>,
    /// Ports the SYN challenge covers, comma-separated, or `all` (every port with a listener)
    #[arg(long, value_parser = parse_ports)]
    syn_ports: Option<SynPorts>,
}

/// `--syn-ports`: a list, or every port with a listener.
#[derive(Clone, Debug)]
pub struct SynPorts(Vec<u16>);

fn parse_ports(text: &str) -> Result<SynPorts, String> {
    if text.trim() == "all" {
        return Ok(SynPorts(Vec::new()));
    }
    text.split(',')
        .map(|p| {
            p.trim().parse::<u16>().map_err(|_| {
                format!(
                    "`{}` is not a port (1-65535), and the list not `all`",
                    p.trim()
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(SynPorts)
}

/// Parses `30s`, `10m`, `2h`, `1d`, `1w` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    // Plain seconds, or humantime's units and combinations (`90s`, `10m`, `1h30m`, `1d`, `1w`).
    let duration = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!(
                "`{text}` is not a duration ({e}): use seconds or units such as 30s, 10m, 1h30m, \
                 1d, 1w"
            )
        })?,
    };
    if duration < Duration::from_secs(1) {
        return Err(format!("`{text}`: a TTL must be at least one second"));
    }
    Ok(duration)
}

#[derive(Debug, Error)]
pub enum CliError {
    /// `status` as a health check: shown, then exit 3.
    #[error("not enforcing: {why}")]
    NotEnforcing { why: &'static str },
    #[error(transparent)]
    Explain(#[from] crate::explain::ExplainError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    List(#[from] ListError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Paths(#[from] PathsError),
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error(transparent)]
    Reload(#[from] crate::reload::ReloadError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error(transparent)]
    Syncookies(#[from] crate::syncookies::SyncookiesError),
    #[error("{source}")]
    Import {
        #[from]
        source: ImportError,
    },
    #[error("{source}")]
    Limits {
        #[from]
        source: LimitsError,
    },
    #[error("cannot read `{path}`: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// 2 for bad usage or input, 1 for failures of the system.
    pub fn exit_code(&self) -> i32 {
        if matches!(self, CliError::NotEnforcing { .. }) {
            return 3;
        }
        let bad_input = match self {
            CliError::NotEnforcing { .. } | CliError::Explain(_) => false,
            CliError::Attach(e) => e.is_bad_input(),
            CliError::List(e) => {
                e.is_bad_input() || matches!(e, ListError::Kernel(KernelError::NotLoaded))
            }
            CliError::Kernel(e) => matches!(e, KernelError::NotLoaded),
            CliError::Cidr(_) | CliError::Import { .. } | CliError::Limits { .. } => true,
            CliError::ReadFile { .. } => true,
            CliError::Reload(e) => e.is_bad_input(),
            CliError::Daemon(e) => e.is_bad_input(),
            CliError::State(_)
            | CliError::Paths(_)
            | CliError::Output(_)
            | CliError::Syncookies(_) => false,
        };
        if bad_input { 2 } else { 1 }
    }
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    let paths = Paths::from_env();
    if !matches!(cli.command, Command::Completions { .. } | Command::Man) {
        paths.check_access()?;
    }
    match cli.command {
        Command::Attach {
            ifaces,
            mode,
            config,
            dry_run,
        } => {
            let options = AttachOptions {
                mode,
                config: config.as_deref(),
                dry_run,
            };
            for (iface, mode) in attach::attach(&paths, &ifaces, &options)? {
                println!("attached to {iface} ({} mode)", mode.name());
            }
        }
        Command::Detach { ifaces, all } => {
            let detached = attach::detach(&paths, &ifaces, all)?;
            if detached.is_empty() {
                println!("floodwall was not attached anywhere");
            }
            for iface in detached {
                println!("detached from {iface}");
            }
        }
        Command::Status { json } => status(&paths, json)?,
        Command::Block(cmd) => list_command(&paths, ListKind::Block, cmd)?,
        Command::Allow(cmd) => list_command(&paths, ListKind::Allow, cmd)?,
        Command::Limit(LimitCommand::Set(args)) => limit_set(&paths, &args)?,
        Command::Limit(LimitCommand::Show { json }) => limit_show(&paths, json)?,
        Command::Stats { json, watch } => stats_command(&paths, json, watch)?,
        Command::Top { n, json } => top(&paths, n, json)?,
        Command::Explain { addr, len, json } => {
            if !paths.is_loaded() {
                return Err(KernelError::NotLoaded.into());
            }
            lists::recover_if_pending(&paths)?;
            let explanation = crate::explain::explain(&paths, addr, len)?;
            if json {
                print_json(
                    &serde_json::to_value(&explanation).map_err(|e| CliError::Output(e.into()))?,
                )?;
            } else {
                print!("{}", explanation.render());
            }
        }
        Command::Run {
            ifaces,
            mode,
            config,
            metrics,
            detach_on_exit,
        } => {
            crate::logging::init();
            let options = crate::daemon::RunOptions {
                ifaces,
                mode,
                config,
                metrics,
                detach_on_exit,
            };
            crate::daemon::run(&paths, &options)?;
        }
        Command::Reload => {
            let report = crate::reload::reload(&paths)?;
            println!("applied limits from `{}`", paths.config.display());
            if let Some(pid) = report.signalled {
                println!("told floodwall run (pid {pid}) to reload its settings");
            }
            if report.capacity_changed {
                println!(
                    "note: map capacities are fixed at load time; they change on the next attach after `floodwall detach --all`"
                );
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "floodwall",
                &mut std::io::stdout(),
            );
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(CliError::Output)?;
        }
    }
    Ok(())
}

fn parse_cidrs(items: &[String]) -> Result<Vec<Cidr>, CliError> {
    items
        .iter()
        .map(|s| s.parse::<Cidr>().map_err(CliError::from))
        .collect()
}

fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.into()))?;
    println!("{text}");
    Ok(())
}

fn list_command(paths: &Paths, kind: ListKind, cmd: ListCommand) -> Result<(), CliError> {
    match cmd {
        ListCommand::Add {
            cidrs,
            ttl,
            comment,
            force,
            json,
        } => {
            let cidrs = parse_cidrs(&cidrs)?;
            let options = AddOptions {
                ttl,
                comment: comment.as_deref(),
                origin: Origin::Manual,
                force,
            };
            let new = lists::add(paths, kind, &cidrs, &options, &|_| {})?;
            let unique = cidrs
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if json {
                print_json(&json!({ "list": kind.name(), "new": new, "updated": unique - new }))?;
            } else {
                println!(
                    "{unique} on the {}: {new} new, {} updated",
                    kind.name(),
                    unique - new
                );
            }
        }
        ListCommand::Del { cidrs, json } => {
            let cidrs = parse_cidrs(&cidrs)?;
            lists::del(paths, kind, &cidrs)?;
            if json {
                print_json(&json!({ "list": kind.name(), "removed": cidrs.len() }))?;
            } else {
                println!("removed {} from the {}", cidrs.len(), kind.name());
            }
        }
        ListCommand::List {
            json,
            origin,
            contains,
        } => {
            let records: Vec<_> = lists::list(paths, kind)?
                .into_iter()
                .filter(|r| origin.is_none_or(|o| r.origin == o))
                .filter(|r| contains.is_none_or(|a| r.cidr.contains(&a)))
                .collect();
            let now_ns = unix_now_ns();
            // Whole seconds left, rounded down: never more than the TTL given.
            let left =
                |at: u64| at.saturating_mul(1_000_000_000).saturating_sub(now_ns) / 1_000_000_000;
            if json {
                let items: Vec<_> = records
                    .iter()
                    .map(|r| {
                        json!({
                            "cidr": r.cidr.to_string(),
                            "origin": r.origin.name(),
                            "comment": r.comment,
                            "added_at": r.added_at,
                            "expires_at": r.expires_at,
                            "ttl_left_secs": r.expires_at.map(left),
                        })
                    })
                    .collect();
                print_json(&json!(items))?;
            } else {
                println!("{:<43} {:>10} {:<8} COMMENT", "CIDR", "TTL LEFT", "ORIGIN");
                for r in &records {
                    let left = r
                        .expires_at
                        .map_or_else(|| "-".to_owned(), |t| format_secs(left(t)));
                    println!(
                        "{:<43} {:>10} {:<8} {}",
                        r.cidr.to_string(),
                        left,
                        r.origin.name(),
                        r.comment.as_deref().unwrap_or("")
                    );
                }
                println!("{} entries", records.len());
            }
        }
        ListCommand::Import {
            file,
            ttl,
            comment,
            force,
            replace,
            json,
        } => {
            let text = if file == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|source| CliError::ReadFile {
                        path: file.clone(),
                        source,
                    })?;
                text
            } else {
                std::fs::read_to_string(&file).map_err(|source| CliError::ReadFile {
                    path: file.clone(),
                    source,
                })?
            };
            let cidrs = import::parse_list(&text)?;
            let options = AddOptions {
                ttl,
                comment: comment.as_deref(),
                origin: Origin::Import,
                force,
            };
            let total = cidrs.len();
            let bar = (std::io::stderr().is_terminal() && total > 65_536)
                .then(|| indicatif::ProgressBar::new(total as u64));
            let progress = |done: usize| {
                if let Some(bar) = &bar {
                    bar.set_position(done as u64);
                }
            };
            let (new, updated, removed, kept) = if replace {
                if kind == ListKind::Block {
                    // Bad input changes nothing: refused whole, as without --replace.
                    lists::check_lockout(&cidrs, force)?;
                }
                let upserts: Vec<lists::FeedEntry> = cidrs
                    .iter()
                    .map(|cidr| lists::FeedEntry {
                        cidr: *cidr,
                        ttl,
                        comment: comment.clone().unwrap_or_default(),
                    })
                    .collect();
                let outcome = lists::apply_feed(
                    paths,
                    &lists::FeedChange {
                        kind,
                        origin: Origin::Import,
                        removals: &[],
                        upserts: &upserts,
                        replace: true,
                    },
                )?;
                (
                    outcome.added,
                    outcome.refreshed,
                    outcome.removed,
                    outcome.foreign.len(),
                )
            } else {
                let new = lists::add(paths, kind, &cidrs, &options, &progress)?;
                (new, total - new, 0, 0)
            };
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if json {
                print_json(&json!({
                    "list": kind.name(),
                    "entries": total,
                    "new": new,
                    "updated": updated,
                    "removed": removed,
                    "kept_other_origin": kept,
                }))?;
            } else if replace {
                println!(
                    "imported {total} entries into the {}: {new} new, {updated} updated, \
                     {removed} earlier imports removed, {kept} left to another origin",
                    kind.name()
                );
            } else {
                println!(
                    "imported {total} entries into the {}: {new} new, {updated} updated",
                    kind.name()
                );
            }
        }
        ListCommand::Flush { json } => {
            let n = lists::flush(paths, kind)?;
            if json {
                print_json(&json!({ "list": kind.name(), "removed": n }))?;
            } else {
                println!("removed {n} entries from the {}", kind.name());
            }
        }
    }
    Ok(())
}

fn format_secs(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn current_limits(paths: &Paths) -> Result<Limits, CliError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded.into());
    }
    Ok(State::load(paths)?.limits.unwrap_or_default())
}

fn limit_set(paths: &Paths, args: &LimitArgs) -> Result<(), CliError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded.into());
    }
    let _lock = Lock::acquire(paths)?;
    let mut state = State::load(paths)?;
    let mut limits = state.limits.clone().unwrap_or_default();
    macro_rules! apply {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { limits.$field = v; } )* };
    }
    apply!(
        pps,
        burst,
        bps,
        burst_bytes,
        prefix4,
        prefix6,
        global_pps,
        global_bps,
        new_sources,
        newcomer_pps,
        dry_run,
        malformed,
        syn_cookies
    );
    if let Some(SynPorts(ports)) = &args.syn_ports {
        limits.syn_ports = ports.clone();
    }
    limits.validate()?;
    limits.validate_frames(kernel::max_frame(paths))?;
    // A change a killed command left half-done is finished first.
    lists::recover(paths, &state)?;
    lists::change_limits(paths, &mut state, &limits)?;
    if limits.syn_cookies != SynCookies::Auto {
        // Only the service switches `auto`; any other mode leaves nothing switched.
        kernel::set_syn_auto_active(paths, false)?;
    }
    crate::syncookies::sync(paths, &limits)?;
    print_limits(&limits, kernel::max_frame(paths));
    Ok(())
}

fn print_limits(l: &Limits, max_frame: u64) {
    let off = |v: u64, unit: &str| {
        if v == 0 {
            "off".to_owned()
        } else {
            format!("{v} {unit}")
        }
    };
    let with_burst = |rate: u64, unit: &str, burst: u64| {
        if rate == 0 {
            "off".to_owned()
        } else {
            format!("{rate} {unit} (burst {burst})")
        }
    };
    println!(
        "per source:  {}, {}",
        with_burst(l.pps, "pps", l.effective_burst()),
        with_burst(l.bps, "B/s", l.effective_burst_bytes(max_frame))
    );
    println!("source key:  IPv4 /{}, IPv6 /{}", l.prefix4, l.prefix6);
    let admission = if l.new_sources == 0 {
        "every new source".to_owned()
    } else {
        format!("{} new sources/s", l.new_sources)
    };
    println!(
        "admission:   {admission}; newcomers share {}",
        off(l.newcomer_pps, "pps")
    );
    println!(
        "global caps: {}, {}",
        off(l.global_pps, "pps"),
        off(l.global_bps, "B/s")
    );
    println!(
        "malformed:   {}; dry-run: {}",
        match l.malformed {
            MalformedAction::Drop => "drop",
            MalformedAction::Pass => "pass",
        },
        if l.dry_run { "on" } else { "off" }
    );
    let ports = if l.syn_ports.is_empty() {
        "every port with a listener".to_owned()
    } else {
        l.syn_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    println!("syn cookies: {} ({ports})", l.syn_cookies.name());
}

fn limit_show(paths: &Paths, json: bool) -> Result<(), CliError> {
    let limits = current_limits(paths)?;
    if json {
        print_json(&serde_json::to_value(&limits).map_err(|e| CliError::Output(e.into()))?)?;
    } else {
        print_limits(&limits, kernel::max_frame(paths));
    }
    Ok(())
}

fn status(paths: &Paths, json: bool) -> Result<(), CliError> {
    let links = paths.links().map_err(|e| {
        CliError::Kernel(KernelError::Pin {
            path: paths.bpffs.clone(),
            detail: e.to_string(),
        })
    })?;
    let not_attached = CliError::NotEnforcing {
        why: "floodwall is not attached (run `floodwall attach IFACE`)",
    };
    if !paths.is_loaded() {
        if json {
            print_json(&json!({ "loaded": false, "interfaces": [] }))?;
        } else {
            println!("floodwall is not attached: run `floodwall attach IFACE`");
        }
        return Err(not_attached);
    }
    lists::recover_if_pending(paths)?;
    let state = State::load(paths)?;
    let limits = state.limits.clone().unwrap_or_default();
    let fill = kernel::map_fill(paths)?;
    let config = kernel::read_config(paths)?;
    let program_id = kernel::program_id(paths)?;
    let auto_active = kernel::syn_auto_active(paths)?;
    let challenge_on = config.syn_on() || (config.syn_auto() && auto_active);
    let sysctl = crate::syncookies::state(paths).ok();
    // Only a running service's report is current.
    let service_pid = crate::pidfile::running_service(paths);
    let crowdsec = service_pid.and_then(|_| crate::crowdsec::BouncerStatus::read(paths));
    // What the kernel holds, beside what the store holds: they differ only while a change is
    // under way, or by expired entries not swept yet.
    let kernel_entries = |prefix: &str| -> u64 {
        fill.iter()
            .filter(|m| LIST_MAP_NAMES.contains(&m.name) && m.name.starts_with(prefix))
            .map(|m| m.entries)
            .sum()
    };
    let (kernel_allow, kernel_block) = (kernel_entries("ALLOW"), kernel_entries("BLOCK"));
    let enforcing = !links.is_empty() && !config.dry_run();
    if json {
        let ifaces: Vec<_> = links
            .iter()
            .map(|(iface, mode, _)| json!({ "iface": iface, "mode": mode }))
            .collect();
        print_json(&json!({
            "loaded": true,
            "program_id": program_id,
            "interfaces": ifaces,
            "dry_run": config.dry_run(),
            "syn_challenge": {
                "mode": limits.syn_cookies.name(),
                "active": challenge_on,
                "tcp_syncookies": sysctl.map(|s| s.current),
                "tcp_syncookies_saved": sysctl.and_then(|s| s.saved),
            },
            "enforcing": enforcing,
            "service_pid": service_pid,
            "crowdsec": crowdsec,
            "limits": limits,
            "lists": {
                "allow": lists::list_live(&state, ListKind::Allow).count(),
                "block": lists::list_live(&state, ListKind::Block).count(),
            },
            "kernel_lists": { "allow": kernel_allow, "block": kernel_block },
            "maps": fill,
        }))?;
        return health(enforcing, links.is_empty());
    }
    println!("program:     id {program_id} (`bpftool prog show id {program_id}`)");
    println!("attached:");
    for (iface, mode, _) in &links {
        println!("  {iface:<16} {mode}");
    }
    println!(
        "dry-run:     {}",
        if config.dry_run() {
            "ON (nothing is dropped)"
        } else {
            "off"
        }
    );
    print_limits(&limits, kernel::max_frame(paths));
    let host = match sysctl {
        Some(s) => match s.saved {
            Some(old) => format!(
                "net.ipv4.tcp_syncookies = {} (set by floodwall; {old} is restored when the \
                 challenge goes off)",
                s.current
            ),
            None => format!("net.ipv4.tcp_syncookies = {}", s.current),
        },
        None => format!("`{}` unreadable", crate::syncookies::SYSCTL),
    };
    println!(
        "challenge:   {}; {host}",
        if challenge_on { "ACTIVE" } else { "inactive" }
    );
    if let Some(c) = &crowdsec {
        let last = c.last_good_pull.map_or(String::from("never"), |t| {
            format!("{}s ago", crate::state::unix_now().saturating_sub(t))
        });
        let link = if c.connected {
            String::from("connected")
        } else {
            format!(
                "NOT CONNECTED ({})",
                c.last_error.as_deref().unwrap_or("not pulled yet")
            )
        };
        println!(
            "crowdsec:    {} decisions enforced; LAPI {} {link}; last pull {last}{}",
            c.decisions,
            c.lapi_url,
            if c.pushing { "; pushing bans" } else { "" }
        );
    }
    println!(
        "lists:       {} allowed, {} blocked (kernel maps: {kernel_allow} allow, {kernel_block} \
         block entries)",
        lists::list_live(&state, ListKind::Allow).count(),
        lists::list_live(&state, ListKind::Block).count()
    );
    match service_pid {
        Some(pid) => println!("service:     floodwall run, pid {pid}"),
        None => println!("service:     not running (`floodwall run IFACE`)"),
    }
    println!("maps:");
    for m in &fill {
        let pct = if m.capacity == 0 {
            0.0
        } else {
            m.entries as f64 * 100.0 / f64::from(m.capacity)
        };
        println!(
            "  {:<12} {:>9} / {:<9} {pct:5.1}%",
            m.name, m.entries, m.capacity
        );
    }
    health(enforcing, links.is_empty())
}

/// `status`'s exit: 0 only while floodwall drops what its policy says to drop.
fn health(enforcing: bool, no_links: bool) -> Result<(), CliError> {
    match (enforcing, no_links) {
        (true, _) => Ok(()),
        (false, true) => Err(CliError::NotEnforcing {
            why: "the filter is loaded but attached to no interface (`floodwall attach IFACE`)",
        }),
        (false, false) => Err(CliError::NotEnforcing {
            why: "dry-run is on: nothing is dropped (`floodwall limit set --dry-run false`)",
        }),
    }
}

fn stats_command(paths: &Paths, json: bool, watch: Option<u64>) -> Result<(), CliError> {
    let Some(secs) = watch else {
        let stats = Stats::read(paths)?;
        if json {
            print_json(&serde_json::to_value(&stats).map_err(|e| CliError::Output(e.into()))?)?;
        } else {
            print_stats(&stats, None, 0.0);
        }
        return Ok(());
    };
    let interval = Duration::from_secs(secs.max(1));
    let mut prev = Stats::read(paths)?;
    loop {
        std::thread::sleep(interval);
        let cur = Stats::read(paths)?;
        if json {
            let since = cur.packets_since(&prev);
            let rates: serde_json::Map<String, serde_json::Value> = Reason::ALL
                .iter()
                .map(|r| {
                    let d = since.get(r.name()).copied().unwrap_or(0);
                    (
                        r.name().to_owned(),
                        json!(d as f64 / interval.as_secs_f64()),
                    )
                })
                .collect();
            println!("{}", json!({ "totals": cur.totals, "pps": rates }));
        } else {
            print_stats(&cur, Some(&prev), interval.as_secs_f64());
        }
        prev = cur;
    }
}

fn print_stats(stats: &Stats, prev: Option<&Stats>, secs: f64) {
    let since = prev.map(|p| stats.packets_since(p));
    let rate = |name: &str| -> String {
        since.as_ref().map_or_else(String::new, |s| {
            format!(
                "{:>12.0}/s",
                s.get(name).copied().unwrap_or(0) as f64 / secs
            )
        })
    };
    println!("{:<12} {:>14} {:>16}", "REASON", "PACKETS", "BYTES");
    for r in Reason::ALL {
        let c = stats.totals[r.name()];
        println!(
            "{:<12} {:>14} {:>16}{}",
            r.name(),
            c.packets,
            c.bytes,
            rate(r.name())
        );
    }
    for iface in &stats.interfaces {
        let summary: Vec<String> = iface
            .reasons
            .iter()
            .filter(|(_, c)| c.packets > 0)
            .map(|(n, c)| format!("{n}={}", c.packets))
            .collect();
        println!("{}: {}", iface.iface, summary.join(" "));
    }
    let health: Vec<String> = stats
        .health
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if !health.is_empty() {
        println!("data path: {}", health.join(" "));
    }
}

fn top(paths: &Paths, n: usize, json: bool) -> Result<(), CliError> {
    let limits = current_limits(paths)?;
    let sources = stats::top(paths, n, limits.prefix4, limits.prefix6)?;
    if json {
        return print_json(
            &serde_json::to_value(&sources).map_err(|e| CliError::Output(e.into()))?,
        );
    }
    println!(
        "{:<43} {:>14} {:>14} {:>10}",
        "SOURCE", "PASSED", "DROPPED", "SYN_PROVEN"
    );
    for s in &sources {
        println!(
            "{:<43} {:>14} {:>14} {:>10}",
            s.source, s.passed, s.dropped, s.syn_proven
        );
    }
    if sources.is_empty() {
        println!(
            "no source has limiter state (per-source limits are off until `floodwall limit set --pps N`)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        for bad in [
            "",
            "s",
            "1x",
            "-1s",
            "0s",
            "0",
            "500ms",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_the_documented_commands() {
        for args in [
            &[
                "floodwall",
                "attach",
                "eth0",
                "eth1",
                "--mode",
                "skb",
                "--dry-run",
            ][..],
            &["floodwall", "detach", "--all"],
            &[
                "floodwall",
                "block",
                "add",
                "10.0.0.0/8",
                "--ttl",
                "1h",
                "--comment",
                "x",
            ],
            &["floodwall", "allow", "import", "-"],
            &[
                "floodwall",
                "limit",
                "set",
                "--pps",
                "100",
                "--burst",
                "10",
                "--prefix6",
                "56",
            ],
            &["floodwall", "stats", "--watch"],
            &["floodwall", "stats", "--watch", "5", "--json"],
            &["floodwall", "top", "-n", "5", "--json"],
            &["floodwall", "completions", "bash"],
            &["floodwall", "man"],
            &["floodwall", "reload"],
            &[
                "floodwall",
                "run",
                "eth0",
                "--metrics",
                "127.0.0.1:9100",
                "--detach-on-exit",
            ],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["floodwall", "detach"]).is_err());
        assert!(Cli::try_parse_from(["floodwall", "attach", "--mode", "fast", "eth0"]).is_err());
    }
}
