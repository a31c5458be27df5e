//! Automatic bans: which sources have stayed over their limit long enough, and how long a
//! repeat offender's ban is. Pure bookkeeping with bounded memory; `daemon` feeds it.

use std::collections::HashMap;

use filter_common::SourceKey;

use crate::config::BanConfig;

/// A source seen over its limit and not banned yet.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// When it was first seen over its limit in this stretch (s).
    over_since: u64,
    /// When its drop count last grew (s).
    last_over: u64,
    /// Its drop count at `last_over`.
    dropped: u64,
}

/// Bans so far of one source.
#[derive(Clone, Copy, Debug)]
struct Offence {
    count: u32,
    /// When it was last banned (s).
    last_ban: u64,
    /// When that ban ends (s).
    banned_until: u64,
}

/// A ban to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    pub key: SourceKey,
    pub ttl_secs: u64,
    /// 1 for a first offence; more for repeat offenders.
    pub offence: u32,
    /// How long it had been over its limit.
    pub over_secs: u64,
}

/// A source counts as no longer over its limit after this long without new drops.
const QUIET_SECS: u64 = 3;

#[derive(Debug, Default)]
pub struct Offenders {
    candidates: HashMap<SourceKey, Candidate>,
    history: HashMap<SourceKey, Offence>,
}

impl Offenders {
    /// Starts watching `key`, seen dropped for being over its limit with `dropped` drops (its
    /// count now: only later growth counts). A source still serving a ban is not watched: an
    /// event sampled just before its ban took effect must not earn it a second one.
    pub fn suspect(&mut self, key: SourceKey, dropped: u64, now: u64, config: &BanConfig) {
        if self.candidates.contains_key(&key)
            || self.history.get(&key).is_some_and(|o| o.banned_until > now)
        {
            return;
        }
        if self.candidates.len() >= config.max_tracked {
            evict_oldest(&mut self.candidates, |c| c.last_over);
        }
        self.candidates.insert(
            key,
            Candidate {
                over_since: now,
                last_over: now,
                dropped,
            },
        );
    }

    /// The sources being watched, to look up their drop counts.
    pub fn watched(&self) -> Vec<SourceKey> {
        self.candidates.keys().copied().collect()
    }

    /// Feeds `key`'s current drop count (`None`: the kernel no longer tracks it). Returns a
    /// ban when it has been over its limit for `after_secs` without a break and still is (its
    /// drop count grew since the last observation).
    pub fn observe(
        &mut self,
        key: SourceKey,
        dropped: Option<u64>,
        now: u64,
        config: &BanConfig,
    ) -> Option<Ban> {
        let candidate = self.candidates.get_mut(&key)?;
        match dropped {
            Some(d) if d > candidate.dropped => {
                candidate.dropped = d;
                candidate.last_over = now;
            }
            Some(_) if now.saturating_sub(candidate.last_over) < QUIET_SECS => return None,
            _ => {
                self.candidates.remove(&key);
                return None;
            }
        }
        let over_secs = now.saturating_sub(candidate.over_since);
        if over_secs < config.after_secs {
            return None;
        }
        self.candidates.remove(&key);
        let offence = self.record_offence(key, now, config);
        let ttl_secs = ban_secs(offence, config);
        if let Some(o) = self.history.get_mut(&key) {
            o.banned_until = now.saturating_add(ttl_secs);
        }
        Some(Ban {
            key,
            ttl_secs,
            offence,
            over_secs,
        })
    }

    fn record_offence(&mut self, key: SourceKey, now: u64, config: &BanConfig) -> u32 {
        let forget = config.forget_after_secs;
        self.history
            .retain(|_, o| now.saturating_sub(o.last_ban) < forget);
        if !self.history.contains_key(&key) && self.history.len() >= config.max_tracked {
            evict_oldest(&mut self.history, |o| o.last_ban);
        }
        let offence = self.history.entry(key).or_insert(Offence {
            count: 0,
            last_ban: now,
            banned_until: now,
        });
        offence.count = offence.count.saturating_add(1);
        offence.last_ban = now;
        offence.count
    }

    /// Entries held, for the memory-bound check.
    pub fn len(&self) -> usize {
        self.candidates.len() + self.history.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `base × factor^(offence − 1)`, capped at `max_secs`.
pub fn ban_secs(offence: u32, config: &BanConfig) -> u64 {
    let mut secs = config.base_secs;
    for _ in 1..offence {
        secs = secs.saturating_mul(config.factor);
        if secs >= config.max_secs {
            return config.max_secs;
        }
    }
    secs.min(config.max_secs)
}

fn evict_oldest<V>(map: &mut HashMap<SourceKey, V>, age: impl Fn(&V) -> u64) {
    if let Some(key) = map.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| *k) {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SourceKey {
        SourceKey {
            family: 4,
            addr: [10, 0, 0, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    fn config() -> BanConfig {
        BanConfig {
            after_secs: 10,
            base_secs: 60,
            factor: 2,
            max_secs: 300,
            forget_after_secs: 1000,
            max_tracked: 4,
            ..BanConfig::default()
        }
    }

    #[test]
    fn ban_time_grows_exponentially_up_to_the_cap() {
        let c = config();
        let got: Vec<u64> = (1..=5).map(|o| ban_secs(o, &c)).collect();
        assert_eq!(got, [60, 120, 240, 300, 300]);
        assert_eq!(ban_secs(u32::MAX, &c), 300);
    }

    #[test]
    fn banned_only_after_staying_over_the_limit() {
        let c = config();
        let mut o = Offenders::default();
        o.suspect(key(1), 5, 100, &c);
        for t in 101..110 {
            assert_eq!(o.observe(key(1), Some(5 + t), t, &c), None);
        }
        let ban = o
            .observe(key(1), Some(200), 110, &c)
            .expect("banned at 10 s");
        assert_eq!((ban.ttl_secs, ban.offence, ban.over_secs), (60, 1, 10));
        // Again later: a longer ban.
        o.suspect(key(1), 0, 500, &c);
        let ban = o.observe(key(1), Some(9), 510, &c).expect("second ban");
        assert_eq!((ban.ttl_secs, ban.offence), (120, 2));
    }

    #[test]
    fn a_source_that_stops_is_not_banned() {
        let c = config();
        let mut o = Offenders::default();
        o.suspect(key(1), 5, 100, &c);
        assert_eq!(o.observe(key(1), Some(6), 101, &c), None);
        // No new drops for QUIET_SECS: forgotten.
        assert_eq!(o.observe(key(1), Some(6), 101 + QUIET_SECS, &c), None);
        assert!(o.watched().is_empty());
        // Evicted from the kernel's table: forgotten too.
        o.suspect(key(2), 5, 100, &c);
        assert_eq!(o.observe(key(2), None, 101, &c), None);
        assert!(o.is_empty());
    }

    /// Regression: an event sampled just before a ban took effect made the source a suspect
    /// again; with its drop count frozen by the ban it was banned a second time (offence 2)
    /// once `after_secs` had passed, though it had not been over its limit since.
    #[test]
    fn no_second_ban_while_banned_or_without_new_drops() {
        let c = BanConfig {
            after_secs: 2,
            base_secs: 3,
            ..config()
        };
        let mut o = Offenders::default();
        o.suspect(key(1), 10, 100, &c);
        assert_eq!(o.observe(key(1), Some(20), 101, &c), None);
        let ban = o.observe(key(1), Some(30), 102, &c).expect("banned");
        assert_eq!((ban.offence, ban.ttl_secs), (1, 3));
        // A stale event while the ban holds: ignored.
        o.suspect(key(1), 30, 102, &c);
        assert!(o.watched().is_empty());
        // Suspected again (once the ban is over) but its count does not grow: no ban, and
        // forgotten after QUIET_SECS.
        o.suspect(key(1), 30, 105, &c);
        for t in 106..105 + QUIET_SECS {
            assert_eq!(o.observe(key(1), Some(30), t, &c), None);
        }
        assert_eq!(o.observe(key(1), Some(30), 105 + QUIET_SECS, &c), None);
        assert!(o.watched().is_empty());
        // Over its limit again after the ban: the longer second ban.
        o.suspect(key(1), 30, 110, &c);
        assert_eq!(o.observe(key(1), Some(40), 111, &c), None);
        let ban = o.observe(key(1), Some(50), 112, &c).expect("second ban");
        assert_eq!((ban.offence, ban.ttl_secs), (2, 6));
    }

    #[test]
    fn offences_are_forgotten_and_memory_is_bounded() {
        let c = config();
        let mut o = Offenders::default();
        o.suspect(key(1), 0, 0, &c);
        assert_eq!(
            o.observe(key(1), Some(1), 10, &c).map(|b| b.offence),
            Some(1)
        );
        o.suspect(key(1), 0, 2000, &c);
        assert_eq!(
            o.observe(key(1), Some(1), 2010, &c).map(|b| b.offence),
            Some(1)
        );
        for n in 0..50 {
            o.suspect(key(n), 0, u64::from(n), &c);
        }
        assert!(o.watched().len() <= c.max_tracked);
    }
}
