//! `floodwall status`, `stats` and `top`: what the filter is doing.

use super::limit_commands::current_limits;
use super::render::{print_limits, print_stats};
use super::*;

pub(super) fn status(paths: &Paths, json: bool) -> Result<(), CliError> {
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
    let store = crate::store::Store::open(paths)?;
    let limits = store.limits()?.unwrap_or_default();
    let now = crate::state::unix_now();
    let (allowed, blocked) = (
        store.count_live(ListKind::Allow, now)?,
        store.count_live(ListKind::Block, now)?,
    );
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
                "allow": allowed,
                "block": blocked,
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
        allowed, blocked
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
pub(super) fn health(enforcing: bool, no_links: bool) -> Result<(), CliError> {
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

pub(super) fn stats_command(paths: &Paths, json: bool, watch: Option<u64>) -> Result<(), CliError> {
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

pub(super) fn top(paths: &Paths, n: usize, json: bool) -> Result<(), CliError> {
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
