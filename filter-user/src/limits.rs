//! Limits as the operator states them (rates, bursts, prefixes) and their translation into the
//! kernel's configuration record.

use filter_common::{
    Bucket, Config, FLAG_DRY_RUN, FLAG_MALFORMED_PASS, FLAG_SYN_AUTO, FLAG_SYN_ON, MAX_SYN_PORTS,
    limiter::BYTE_COST_SHIFT,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What happens to frames that cannot be parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MalformedAction {
    #[default]
    Drop,
    Pass,
}

/// The SYN challenge: off, on, or switched by `floodwall run` while sources are shed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    #[default]
    Off,
    On,
    Auto,
}

impl SynCookies {
    pub const fn name(self) -> &'static str {
        match self {
            SynCookies::Off => "off",
            SynCookies::On => "on",
            SynCookies::Auto => "auto",
        }
    }
}

/// The live policy. Every rate of 0 switches that limit off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Packets per second per source (0: no per-source packet limit).
    pub pps: u64,
    /// Packets a source may send at once; 0 means one second's worth (`pps`).
    pub burst: u64,
    /// Bytes per second per source (0: no per-source byte limit).
    pub bps: u64,
    /// Bytes a source may send at once; 0 means one second's worth (`bps`).
    pub burst_bytes: u64,
    /// IPv4 prefix that counts as one source.
    pub prefix4: u32,
    /// IPv6 prefix that counts as one source (one host owns a /64).
    pub prefix6: u32,
    /// Total packets per second over every source (0: no cap).
    pub global_pps: u64,
    /// Total bytes per second over every source (0: no cap).
    pub global_bps: u64,
    /// New sources given state of their own per second (0: every new source, which a spoofed
    /// flood turns into one state insert per packet).
    pub new_sources: u64,
    /// Packets per second shared by all sources still waiting for state.
    pub newcomer_pps: u64,
    /// Make every decision and count it, but pass everything.
    pub dry_run: bool,
    /// What to do with frames that cannot be parsed.
    pub malformed: MalformedAction,
    /// Drop events sent to userspace per second, in all.
    pub events_per_sec: u64,
    /// At most one drop event per source per this many seconds.
    pub event_interval_secs: u64,
    /// The SYN challenge for TCP sources without state.
    pub syn_cookies: SynCookies,
    /// Destination ports the challenge covers; empty: every port with a listener.
    pub syn_ports: Vec<u16>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pps: 0,
            burst: 0,
            bps: 0,
            burst_bytes: 0,
            prefix4: 32,
            prefix6: 64,
            global_pps: 0,
            global_bps: 0,
            new_sources: 1000,
            newcomer_pps: 1000,
            dry_run: false,
            malformed: MalformedAction::Drop,
            events_per_sec: 100,
            event_interval_secs: 10,
            syn_cookies: SynCookies::Off,
            syn_ports: Vec::new(),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error("prefix4 `{0}` is out of range: use 1 to 32")]
    Prefix4(u32),
    #[error("prefix6 `{0}` is out of range: use 1 to 128")]
    Prefix6(u32),
    #[error(
        "syn_ports lists {0} ports, at most {MAX_SYN_PORTS} fit: leave it empty to cover every \
         port with a listener"
    )]
    TooManySynPorts(usize),
    #[error("syn_ports holds port 0, which no listener has")]
    SynPortZero,
    #[error(
        "burst_bytes {burst} is below the largest frame the attached interfaces deliver \
         ({min} bytes: MTU plus Ethernet header and two VLAN tags); such frames could never \
         pass: use at least {min}, or 0 for one second's worth"
    )]
    BurstBytesTooSmall { burst: u64, min: u64 },
    #[error(
        "{name} {burst} is less than one clock tick of its rate: the filter's clock moves in \
         ticks of {tick_us} us here, and a burst smaller than a tick's worth would hold the \
         source below its rate; use at least {min}, or 0 for one second's worth"
    )]
    BurstBelowTick {
        name: &'static str,
        burst: u64,
        min: u64,
        tick_us: u64,
    },
    #[error("`{name}` = {value} is larger than the maximum {max}")]
    TooLarge {
        name: &'static str,
        value: u64,
        max: u64,
    },
}

/// Rates above this are not limits (and would round the per-packet cost to zero).
const MAX_RATE: u64 = 1_000_000_000;

impl Limits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        self.validate_with_tick(clock_tick_ns())
    }

    /// [`validate`](Self::validate) against a clock tick of `tick_ns`.
    pub fn validate_with_tick(&self, tick_ns: u64) -> Result<(), LimitsError> {
        if !(1..=32).contains(&self.prefix4) {
            return Err(LimitsError::Prefix4(self.prefix4));
        }
        if !(1..=128).contains(&self.prefix6) {
            return Err(LimitsError::Prefix6(self.prefix6));
        }
        if self.syn_ports.len() > MAX_SYN_PORTS {
            return Err(LimitsError::TooManySynPorts(self.syn_ports.len()));
        }
        if self.syn_ports.contains(&0) {
            return Err(LimitsError::SynPortZero);
        }
        for (name, value) in [
            ("pps", self.pps),
            ("global_pps", self.global_pps),
            ("new_sources", self.new_sources),
            ("newcomer_pps", self.newcomer_pps),
            ("events_per_sec", self.events_per_sec),
        ] {
            if value > MAX_RATE {
                return Err(LimitsError::TooLarge {
                    name,
                    value,
                    max: MAX_RATE,
                });
            }
        }
        if self.pps != 0 && self.burst != 0 {
            let bucket = Bucket::packets(self.pps, self.burst);
            if bucket.tau < tick_ns {
                return Err(LimitsError::BurstBelowTick {
                    name: "burst",
                    burst: self.burst,
                    min: tick_ns.div_ceil(bucket.cost),
                    tick_us: tick_ns / 1000,
                });
            }
        }
        if self.bps != 0 && self.burst_bytes != 0 {
            let bucket = Bucket::bytes(self.bps, self.burst_bytes);
            if bucket.tau < tick_ns {
                return Err(LimitsError::BurstBelowTick {
                    name: "burst_bytes",
                    burst: self.burst_bytes,
                    min: (u128::from(tick_ns) << BYTE_COST_SHIFT).div_ceil(u128::from(bucket.cost))
                        as u64,
                    tick_us: tick_ns / 1000,
                });
            }
        }
        Ok(())
    }

    /// The burst actually used: one second's worth when not given.
    pub fn effective_burst(&self) -> u64 {
        if self.burst == 0 {
            self.pps
        } else {
            self.burst
        }
    }

    /// The byte burst used: as given, or one second's worth but at least one frame of
    /// `max_frame` bytes (the largest the attached interfaces deliver).
    pub fn effective_burst_bytes(&self, max_frame: u64) -> u64 {
        if self.burst_bytes == 0 {
            self.bps.max(max_frame)
        } else {
            self.burst_bytes
        }
    }

    /// Refuses a byte burst no frame of `max_frame` bytes fits in.
    pub fn validate_frames(&self, max_frame: u64) -> Result<(), LimitsError> {
        if self.bps != 0 && self.burst_bytes != 0 && self.burst_bytes < max_frame {
            return Err(LimitsError::BurstBytesTooSmall {
                burst: self.burst_bytes,
                min: max_frame,
            });
        }
        Ok(())
    }

    /// The kernel's record for these limits. `lists` carries which list maps hold entries;
    /// `max_frame` is the largest frame the attached interfaces deliver.
    pub fn to_config(&self, lists: u32, max_frame: u64) -> Config {
        let mut flags = 0;
        if self.dry_run {
            flags |= FLAG_DRY_RUN;
        }
        if self.malformed == MalformedAction::Pass {
            flags |= FLAG_MALFORMED_PASS;
        }
        match self.syn_cookies {
            SynCookies::Off => {}
            SynCookies::On => flags |= FLAG_SYN_ON,
            SynCookies::Auto => flags |= FLAG_SYN_AUTO,
        }
        let mut syn_ports = [0u16; MAX_SYN_PORTS];
        let nports = self.syn_ports.len().min(MAX_SYN_PORTS);
        syn_ports[..nports].copy_from_slice(&self.syn_ports[..nports]);
        Config {
            flags,
            lists,
            prefix4: self.prefix4,
            prefix6: self.prefix6,
            source_pkt: Bucket::packets(self.pps, self.effective_burst()),
            source_byte: Bucket::bytes(self.bps, self.effective_burst_bytes(max_frame)),
            admission: Bucket::packets(self.new_sources, self.new_sources),
            newcomer: Bucket::packets(self.newcomer_pps, self.newcomer_pps),
            global_pkt: Bucket::packets(self.global_pps, self.global_pps),
            global_byte: Bucket::bytes(self.global_bps, self.global_bps.max(max_frame)),
            events: Bucket::packets(self.events_per_sec, self.events_per_sec),
            event_interval_ns: self.event_interval_secs.saturating_mul(1_000_000_000),
            syn_ports,
            syn_nports: nports as u32,
            tick_ns: u32::try_from(clock_tick_ns()).unwrap_or(0),
            // The map's, set as the record is written (`kernel::write_config`).
            known_log2: 0,
            _pad: 0,
        }
    }
}

/// How far the filter's clock (CLOCK_MONOTONIC_COARSE, `bpf_ktime_get_coarse_ns`) moves at
/// a time: the kernel's tick.
pub fn clock_tick_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes `limits` into the kernel's live config record, with the list bits `lists` and the
/// byte bursts sized for the attached interfaces.
pub fn publish(
    paths: &crate::paths::Paths,
    limits: &Limits,
    lists: u32,
) -> Result<(), crate::kernel::KernelError> {
    let max_frame = crate::kernel::max_frame(paths);
    crate::kernel::write_config(paths, &limits.to_config(lists, max_frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_limit_nothing_per_source() {
        let l = Limits::default();
        assert_eq!(l.validate(), Ok(()));
        let c = l.to_config(0, 1522);
        assert!(!c.limits_sources());
        assert!(c.malformed_drops());
        assert_eq!((c.prefix4, c.prefix6), (32, 64));
    }

    #[test]
    fn burst_defaults_to_one_second() {
        let l = Limits {
            pps: 500,
            ..Limits::default()
        };
        let c = l.to_config(0, 1522);
        assert_eq!(c.source_pkt.rate(false), 500);
        assert_eq!(c.source_pkt.burst(false), 500);
    }

    #[test]
    fn rejects_bad_prefixes() {
        for (p4, p6) in [(0, 64), (33, 64), (32, 0), (32, 129)] {
            let l = Limits {
                prefix4: p4,
                prefix6: p6,
                ..Limits::default()
            };
            assert!(l.validate().is_err(), "{p4} {p6}");
        }
    }

    #[test]
    fn syn_challenge_in_the_record() {
        let l = Limits {
            syn_cookies: SynCookies::On,
            syn_ports: vec![22, 443],
            ..Limits::default()
        };
        assert_eq!(l.validate(), Ok(()));
        let c = l.to_config(0, 1522);
        assert!(c.syn_on() && !c.syn_auto());
        assert!(c.syn_port_covered(443) && c.syn_port_covered(22));
        assert!(!c.syn_port_covered(80));
        let auto = Limits {
            syn_cookies: SynCookies::Auto,
            ..Limits::default()
        }
        .to_config(0, 1522);
        assert!(auto.syn_auto() && !auto.syn_on());
        assert!(auto.syn_port_covered(80));
        assert!(!Limits::default().to_config(0, 1522).syn_on());
    }

    #[test]
    fn rejects_too_many_or_zero_syn_ports() {
        let l = Limits {
            syn_ports: (1..=9).collect(),
            ..Limits::default()
        };
        assert_eq!(l.validate(), Err(LimitsError::TooManySynPorts(9)));
        let l = Limits {
            syn_ports: vec![0],
            ..Limits::default()
        };
        assert_eq!(l.validate(), Err(LimitsError::SynPortZero));
    }

    #[test]
    fn byte_bursts_are_exact_and_never_below_a_frame() {
        let l = Limits {
            bps: 200_000,
            burst_bytes: 20_000,
            ..Limits::default()
        };
        assert_eq!(l.validate_frames(1522), Ok(()));
        assert_eq!(l.to_config(0, 1522).source_byte.burst(true), 20_000);
        let small = Limits {
            burst_bytes: 1000,
            ..l.clone()
        };
        assert_eq!(
            small.validate_frames(1522),
            Err(LimitsError::BurstBytesTooSmall {
                burst: 1000,
                min: 1522
            })
        );
        // One second's worth, but never less than a frame.
        let slow = Limits {
            bps: 100,
            ..Limits::default()
        };
        assert_eq!(slow.effective_burst_bytes(1522), 1522);
        assert_eq!(slow.validate_frames(1522), Ok(()));
    }

    #[test]
    fn bursts_below_one_tick_of_rate_are_refused() {
        let tick = 4_000_000;
        let fast = Limits {
            pps: 1_000_000,
            burst: 100,
            ..Limits::default()
        };
        assert_eq!(
            fast.validate_with_tick(tick),
            Err(LimitsError::BurstBelowTick {
                name: "burst",
                burst: 100,
                min: 4000,
                tick_us: 4000,
            })
        );
        let enough = Limits {
            burst: 4000,
            ..fast.clone()
        };
        assert_eq!(enough.validate_with_tick(tick), Ok(()));
        let default = Limits { burst: 0, ..fast };
        assert_eq!(default.validate_with_tick(tick), Ok(()));
        let bytes = Limits {
            bps: 10_000_000,
            burst_bytes: 20_000,
            ..Limits::default()
        };
        assert_eq!(
            bytes.validate_with_tick(tick),
            Err(LimitsError::BurstBelowTick {
                name: "burst_bytes",
                burst: 20_000,
                min: 40_000,
                tick_us: 4000,
            })
        );
        assert!(clock_tick_ns() > 0);
    }

    #[test]
    fn flags() {
        let l = Limits {
            dry_run: true,
            malformed: MalformedAction::Pass,
            ..Limits::default()
        };
        let c = l.to_config(0, 1522);
        assert!(c.dry_run());
        assert!(!c.malformed_drops());
    }
}
