//! The `floodwall` command line: its arguments (`args`), the commands on the lists
//! (`list_commands`) and the limits (`limit_commands`), the ones that show what the filter
//! does (`status`: status, stats, top), and how results are printed (`render`).

mod args;
mod limit_commands;
mod list_commands;
mod render;
mod status;

use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

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
    state::{ListKind, Lock, Origin, StateError, unix_now_ns},
    stats::{self, Stats},
};

pub use args::*;
use render::print_json;

#[derive(Debug, Error)]
pub enum CliError {
    /// `status` as a health check: shown, then exit 3.
    #[error("not enforcing: {why}")]
    NotEnforcing { why: &'static str },
    #[error(transparent)]
    Explain(#[from] crate::explain::ExplainError),
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
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

impl From<crate::import::ImportFailure> for CliError {
    fn from(e: crate::import::ImportFailure) -> Self {
        match e {
            crate::import::ImportFailure::Parse(source) => CliError::Import { source },
            crate::import::ImportFailure::List(e) => CliError::List(e),
        }
    }
}

impl CliError {
    /// 2 for bad usage or input, 1 for failures of the system.
    pub fn exit_code(&self) -> i32 {
        if matches!(self, CliError::NotEnforcing { .. }) {
            return 3;
        }
        let bad_input = match self {
            CliError::NotEnforcing { .. } | CliError::Explain(_) | CliError::Trace(_) => false,
            CliError::Attach(e) => e.is_bad_input(),
            CliError::List(e) => {
                e.is_bad_input()
                    || matches!(
                        e,
                        ListError::Kernel(KernelError::NotLoaded | KernelError::OtherBuild { .. })
                    )
            }
            CliError::Kernel(e) => {
                matches!(e, KernelError::NotLoaded | KernelError::OtherBuild { .. })
            }
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
            json,
        } => {
            let options = AttachOptions {
                mode,
                config: config.as_deref(),
                dry_run,
            };
            let done = attach::attach(&paths, &ifaces, &options)?;
            if json {
                let items: Vec<_> = done
                    .iter()
                    .map(|(iface, mode)| json!({ "iface": iface, "mode": mode.name() }))
                    .collect();
                print_json(&json!({ "attached": items }))?;
            } else {
                for (iface, mode) in done {
                    println!("attached to {iface} ({} mode)", mode.name());
                }
            }
        }
        Command::Detach { ifaces, all, json } => {
            let detached = attach::detach(&paths, &ifaces, all)?;
            if json {
                print_json(&json!({ "detached": detached }))?;
            } else {
                if detached.is_empty() {
                    println!("floodwall was not attached anywhere");
                }
                for iface in detached {
                    println!("detached from {iface}");
                }
            }
        }
        Command::Status { json } => status::status(&paths, json)?,
        Command::Block(cmd) => list_commands::list_command(&paths, ListKind::Block, cmd)?,
        Command::Allow(cmd) => list_commands::list_command(&paths, ListKind::Allow, cmd)?,
        Command::Limit(LimitCommand::Set(args)) => limit_commands::limit_set(&paths, &args)?,
        Command::Limit(LimitCommand::Show { json }) => limit_commands::limit_show(&paths, json)?,
        Command::Stats { json, watch } => status::stats_command(&paths, json, watch)?,
        Command::Top { n, json } => status::top(&paths, n, json)?,
        Command::Trace {
            cidr,
            seconds,
            count,
            rate,
        } => {
            if !paths.is_loaded() {
                return Err(KernelError::NotLoaded.into());
            }
            let cidr: Cidr = cidr.parse()?;
            let lines = crate::trace::trace(&paths, &cidr, seconds, count, rate)?;
            eprintln!("floodwall: trace of {cidr} off ({lines} lines)");
        }
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
