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
            let new = lists::add(paths, kind, &cidrs, &options)?;
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
            let mut input = open_import(&file)?;
            let bar = std::io::stderr()
                .is_terminal()
                .then(indicatif::ProgressBar::hidden);
            let progress = |done: u64, total: u64| {
                if let Some(bar) = &bar
                    && total > 65_536
                {
                    bar.set_length(total);
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_position(done);
                }
            };
            let outcome = import::import_file(
                paths,
                kind,
                &mut input,
                &import::ImportOptions {
                    ttl,
                    comment: comment.as_deref(),
                    force,
                    replace,
                },
                &progress,
            )?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let import::ImportOutcome {
                entries,
                new,
                updated,
                removed,
                kept_other_origin,
            } = outcome;
            if json {
                print_json(&json!({
                    "list": kind.name(),
                    "entries": entries,
                    "new": new,
                    "updated": updated,
                    "removed": removed,
                    "kept_other_origin": kept_other_origin,
                }))?;
            } else if replace {
                println!(
                    "imported {entries} entries into the {}: {new} new, {updated} updated, \
                     {removed} earlier imports removed, {kept_other_origin} left to another origin",
                    kind.name()
                );
            } else {
                println!(
                    "imported {entries} entries into the {}: {new} new, {updated} updated",
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

/// The list to import, as a file that can be read twice: standard input (`-`) is copied into
/// an unnamed temporary file first, which the kernel deletes however the command ends.
fn open_import(file: &str) -> Result<std::fs::File, CliError> {
    let err = |source| CliError::ReadFile {
        path: file.to_owned(),
        source,
    };
    if file != "-" {
        let f = std::fs::File::open(file).map_err(err)?;
        if f.metadata().map_err(err)?.is_dir() {
            return Err(err(std::io::Error::from(std::io::ErrorKind::IsADirectory)));
        }
        return Ok(f);
    }
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut spool = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
        .map_err(err)?;
    std::io::copy(&mut std::io::stdin().lock(), &mut spool).map_err(err)?;
    std::io::Seek::rewind(&mut spool).map_err(err)?;
    Ok(spool)
}
