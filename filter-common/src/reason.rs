//! Why a frame got its verdict. Each reason is one row of the counters.

/// The outcome the data path records for a frame. Stored in maps as its `u32` value.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// An IP frame that passed every check.
    Passed = 0,
    /// ARP and other non-IP frames: passed without inspection.
    NonIp = 1,
    /// Source matched the allowlist: passed, bypassing every limit.
    Allowlisted = 2,
    /// Source matched the blocklist: dropped.
    Blocklisted = 3,
    /// Source went over its packet rate: dropped.
    OverPps = 4,
    /// Source went over its byte rate: dropped.
    OverBps = 5,
    /// Source has no state of its own and the shared newcomer bucket was empty: dropped.
    NewcomerLimited = 6,
    /// A global pps or bps cap was reached: dropped.
    GlobalCap = 7,
    /// The frame could not be parsed: gets the configured malformed action.
    Malformed = 8,
    /// Dry-run: the frame would have been dropped (also counted under its own reason).
    DryRunPassed = 9,
    /// A TCP SYN from a source without state, answered from XDP with a SYN cookie (`XDP_TX`):
    /// it never reaches the stack.
    SynChallenged = 10,
    /// A valid SYN cookie in the ACK of a source without state: the source is proven, given
    /// state of its own, and the ACK passed to the kernel.
    SynProven = 11,
    /// An ACK to a listener from a source without state whose cookie is not valid: dropped.
    SynBadCookie = 12,
    /// A frame within its limits that lost the race for a shared bucket on every retry (other
    /// CPUs kept updating it): dropped, since a frame is never passed unmetered, but not
    /// counted against the source as over its limit.
    Contended = 13,
}

impl Reason {
    /// Number of reasons; counters are indexed `0..COUNT`.
    pub const COUNT: usize = 14;

    /// Every reason, in counter order.
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::Passed,
        Reason::NonIp,
        Reason::Allowlisted,
        Reason::Blocklisted,
        Reason::OverPps,
        Reason::OverBps,
        Reason::NewcomerLimited,
        Reason::GlobalCap,
        Reason::Malformed,
        Reason::DryRunPassed,
        Reason::SynChallenged,
        Reason::SynProven,
        Reason::SynBadCookie,
        Reason::Contended,
    ];

    /// The stable name used in `stats`, JSON and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Passed => "passed",
            Reason::NonIp => "non_ip",
            Reason::Allowlisted => "allowlist",
            Reason::Blocklisted => "blocklist",
            Reason::OverPps => "over_pps",
            Reason::OverBps => "over_bps",
            Reason::NewcomerLimited => "newcomer",
            Reason::GlobalCap => "global_cap",
            Reason::Malformed => "malformed",
            Reason::DryRunPassed => "dry_run",
            Reason::SynChallenged => "syn_challenged",
            Reason::SynProven => "syn_proven",
            Reason::SynBadCookie => "syn_bad_cookie",
            Reason::Contended => "contended",
        }
    }

    pub const fn from_u32(value: u32) -> Option<Reason> {
        if (value as usize) < Self::COUNT {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }

    /// Whether this reason drops the frame when enforcing. `Malformed` depends on the
    /// configured action and is decided by [`crate::Config::malformed_drops`].
    /// `SynChallenged` is neither dropped nor passed: the frame is answered.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Reason::Blocklisted
                | Reason::OverPps
                | Reason::OverBps
                | Reason::NewcomerLimited
                | Reason::GlobalCap
                | Reason::Malformed
                | Reason::SynBadCookie
                | Reason::Contended
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_counter_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(Reason::from_u32(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_u32(Reason::COUNT as u32), None);
    }

    #[test]
    fn names_are_unique() {
        for a in Reason::ALL {
            for b in Reason::ALL {
                assert!(a == b || a.name() != b.name());
            }
        }
    }
}
