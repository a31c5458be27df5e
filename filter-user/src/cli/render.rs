//! How the commands print their results.

use super::*;

pub(super) fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.into()))?;
    println!("{text}");
    Ok(())
}

pub(super) fn format_secs(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

pub(super) fn print_limits(l: &Limits, max_frame: u64) {
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

pub(super) fn print_stats(stats: &Stats, prev: Option<&Stats>, secs: f64) {
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
