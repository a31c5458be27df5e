//! `floodwall block ...` and `floodwall allow ...`.

use super::render::format_secs;
use std::io::Write as _;

use super::*;

pub(super) fn list_command(
    paths: &Paths,
    kind: ListKind,
    cmd: ListCommand,
) -> Result<(), CliError> {
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
            let now_ns = unix_now_ns();
            // Whole seconds left, rounded down: never more than the TTL given.
            let left =
                |at: u64| at.saturating_mul(1_000_000_000).saturating_sub(now_ns) / 1_000_000_000;
            let wanted = |r: &crate::state::Record| {
                origin.is_none_or(|o| r.origin == o) && contains.is_none_or(|a| r.cidr.contains(&a))
            };
            // Streamed a row at a time: a list of millions is never held whole.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut n = 0u64;
            if json {
                writeln!(out, "[").map_err(CliError::Output)?;
            } else {
                writeln!(
                    out,
                    "{:<43} {:>10} {:<8} COMMENT",
                    "CIDR", "TTL LEFT", "ORIGIN"
                )
                .map_err(CliError::Output)?;
            }
            lists::for_each_live(paths, kind, |r| {
                if !wanted(&r) {
                    return Ok(());
                }
                if json {
                    let item = json!({
                        "cidr": r.cidr.to_string(),
                        "origin": r.origin.name(),
                        "comment": r.comment,
                        "added_at": r.added_at,
                        "expires_at": r.expires_at,
                        "ttl_left_secs": r.expires_at.map(left),
                    });
                    let sep = if n == 0 { "" } else { ",\n" };
                    write!(out, "{sep}  {item}")?;
                } else {
                    let ttl = r
                        .expires_at
                        .map_or_else(|| "-".to_owned(), |t| format_secs(left(t)));
                    writeln!(
                        out,
                        "{:<43} {:>10} {:<8} {}",
                        r.cidr.to_string(),
                        ttl,
                        r.origin.name(),
                        r.comment.as_deref().unwrap_or("")
                    )?;
                }
                n += 1;
                Ok(())
            })?;
            if json {
                writeln!(out, "{}]", if n == 0 { "" } else { "\n" })
            } else {
                writeln!(out, "{n} entries")
            }
            .and_then(|()| out.flush())
            .map_err(CliError::Output)?;
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
