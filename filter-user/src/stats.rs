//! Reading what the data path did: counters per interface and reason, health counters, and
//! the heaviest sources.

use std::{collections::BTreeMap, net::IpAddr};

use filter_common::{FAMILY_V4, MISC_NAMES, Reason, SourceKey};
use serde::Serialize;

use crate::{
    kernel::{self, KernelError},
    paths::Paths,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of one interface.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IfaceStats {
    pub iface: String,
    pub ifindex: u32,
    pub reasons: BTreeMap<&'static str, Count>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub interfaces: Vec<IfaceStats>,
    /// Totals over interfaces, by reason.
    pub totals: BTreeMap<&'static str, Count>,
    /// Data-path health counters.
    pub health: BTreeMap<&'static str, u64>,
}

impl Stats {
    pub fn read(paths: &Paths) -> Result<Stats, KernelError> {
        let mut by_iface: BTreeMap<u32, IfaceStats> = BTreeMap::new();
        let mut totals = BTreeMap::new();
        for r in Reason::ALL {
            totals.insert(r.name(), Count::default());
        }
        for (ifindex, reason, counter) in kernel::read_counters(paths)? {
            let entry = by_iface.entry(ifindex).or_insert_with(|| IfaceStats {
                iface: match ifindex {
                    0 => String::from("(no slot)"),
                    i => kernel::ifname(i).unwrap_or_else(|| format!("if{i}")),
                },
                ifindex,
                reasons: Reason::ALL
                    .iter()
                    .map(|r| (r.name(), Count::default()))
                    .collect(),
            });
            let add = |c: &mut Count| {
                c.packets += counter.packets;
                c.bytes += counter.bytes;
            };
            if let Some(c) = entry.reasons.get_mut(reason.name()) {
                add(c);
            }
            if let Some(c) = totals.get_mut(reason.name()) {
                add(c);
            }
        }
        let health = MISC_NAMES
            .iter()
            .copied()
            .zip(kernel::read_misc(paths)?)
            .collect();
        Ok(Stats {
            interfaces: by_iface.into_values().collect(),
            totals,
            health,
        })
    }

    /// Packets per reason since `prev`, summed over the interfaces of this sample. Totals can
    /// shrink between samples (an interface detached, or detached and attached again, takes
    /// or resets its counters), so the change is taken per interface: one that is gone counts
    /// nothing, one whose counters went back (or that is new) counts what it has now.
    pub fn packets_since(&self, prev: &Stats) -> BTreeMap<&'static str, u64> {
        let mut out: BTreeMap<&'static str, u64> =
            Reason::ALL.iter().map(|r| (r.name(), 0)).collect();
        for iface in &self.interfaces {
            let before = prev
                .interfaces
                .iter()
                .find(|p| p.ifindex == iface.ifindex && p.iface == iface.iface);
            for (name, count) in &iface.reasons {
                let old = before
                    .and_then(|b| b.reasons.get(name))
                    .map_or(0, |c| c.packets);
                let delta = if count.packets >= old {
                    count.packets - old
                } else {
                    count.packets
                };
                *out.entry(name).or_default() += delta;
            }
        }
        out
    }

    /// Packets dropped (or, in dry-run, that would have been), over every interface.
    pub fn dropped(&self) -> u64 {
        Reason::ALL
            .iter()
            .filter(|r| r.drops())
            .map(|r| self.totals.get(r.name()).map_or(0, |c| c.packets))
            .sum()
    }
}

/// One tracked source, for `top`.
#[derive(Clone, Debug, Serialize)]
pub struct SourceStats {
    pub source: String,
    pub passed: u64,
    pub dropped: u64,
    /// Valid SYN cookies it returned while it had no state (the SYN challenge admitted it).
    pub syn_proven: u64,
}

pub fn source_addr(key: &SourceKey) -> IpAddr {
    if key.family == FAMILY_V4 {
        IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
    } else {
        IpAddr::from(key.addr)
    }
}

/// The `n` sources with the most packets (dropped first, then passed).
pub fn top(
    paths: &Paths,
    n: usize,
    prefix4: u32,
    prefix6: u32,
) -> Result<Vec<SourceStats>, KernelError> {
    let mut sources: Vec<SourceStats> = kernel::read_sources(paths)?
        .into_iter()
        .map(|(key, state)| {
            let (addr, prefix) = (
                source_addr(&key),
                if key.family == FAMILY_V4 {
                    prefix4
                } else {
                    prefix6
                },
            );
            let full = if key.family == FAMILY_V4 { 32 } else { 128 };
            let source = if prefix == full {
                addr.to_string()
            } else {
                format!("{addr}/{prefix}")
            };
            SourceStats {
                source,
                passed: state.passed,
                dropped: state.dropped,
                syn_proven: state.proven,
            }
        })
        .collect();
    sources.sort_by(|a, b| {
        (b.dropped, b.passed)
            .cmp(&(a.dropped, a.passed))
            .then_with(|| a.source.cmp(&b.source))
    });
    sources.truncate(n);
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ifaces: &[(u32, &str, u64)]) -> Stats {
        Stats {
            interfaces: ifaces
                .iter()
                .map(|(ifindex, name, passed)| IfaceStats {
                    iface: (*name).to_owned(),
                    ifindex: *ifindex,
                    reasons: [(
                        "passed",
                        Count {
                            packets: *passed,
                            bytes: 0,
                        },
                    )]
                    .into(),
                })
                .collect(),
            ..Stats::default()
        }
    }

    #[test]
    fn a_detached_interface_never_makes_a_rate_negative() {
        let prev = sample(&[(2, "a", 1000), (3, "b", 5000)]);
        // `b` detached: its counters are gone from the totals.
        let cur = sample(&[(2, "a", 1300)]);
        assert_eq!(cur.packets_since(&prev)["passed"], 300);
        // `b` attached again: its slot starts from 0.
        let again = sample(&[(2, "a", 1400), (3, "b", 40)]);
        assert_eq!(again.packets_since(&cur)["passed"], 140);
        assert_eq!(again.packets_since(&prev)["passed"], 440);
    }
}
