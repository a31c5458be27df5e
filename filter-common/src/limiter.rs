//! Token buckets in GCRA form (the virtual scheduling algorithm): one 64-bit "theoretical
//! arrival time" per bucket, so the kernel updates it with a single compare-and-swap and the
//! limit is exact whatever CPU a packet arrives on.
//!
//! Times are nanoseconds of the filter's clock, `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at
//! tick resolution, read once per jiffy on each CPU). A bucket allows `burst` units at once
//! from idle and `rate` units per second after that. With a clock that moves a tick at a time
//! the long-run rate stays exact as long as the burst covers one tick of rate (`tau` at least
//! a tick): the controller refuses smaller bursts.

const NS_PER_SEC: u64 = 1_000_000_000;

/// Fixed-point shift for per-byte costs: a byte costs `cost >> BYTE_COST_SHIFT` ns, so byte
/// rates up to tens of Gbit/s keep sub-nanosecond precision.
pub const BYTE_COST_SHIFT: u32 = 16;

/// Largest frame length the byte bucket accounts for; longer frames are charged this much.
/// Keeps `len * cost` inside 64 bits for every byte rate of at least 1 B/s.
pub const MAX_FRAME_LEN: u64 = 65_535;

/// One bucket's parameters as the kernel uses them. `cost == 0` disables the bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Packet bucket: ns per packet. Byte bucket: ns per byte, shifted by [`BYTE_COST_SHIFT`].
    pub cost: u64,
    /// How far ahead of now the arrival time may run: the burst, in ns.
    pub tau: u64,
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 16);

impl Bucket {
    pub const DISABLED: Bucket = Bucket { cost: 0, tau: 0 };

    /// A packet bucket of `rate` packets per second with `burst` packets at once.
    /// A rate of 0 disables it; a burst below 1 is raised to 1 so the rate stays reachable.
    pub const fn packets(rate: u64, burst: u64) -> Bucket {
        if rate == 0 {
            return Bucket::DISABLED;
        }
        // Round to nearest so the error stays under half a nanosecond per packet.
        let cost = (NS_PER_SEC + rate / 2) / rate;
        let cost = if cost == 0 { 1 } else { cost };
        let burst = if burst == 0 { 1 } else { burst };
        Bucket {
            cost,
            tau: cost.saturating_mul(burst),
        }
    }

    /// A byte bucket of `rate` bytes per second with `burst` bytes at once, exactly: a frame
    /// longer than the burst never passes, so the controller refuses bursts below the largest
    /// frame its interfaces deliver. A rate of 0 disables it; a burst of 0 is one byte.
    pub const fn bytes(rate: u64, burst: u64) -> Bucket {
        if rate == 0 {
            return Bucket::DISABLED;
        }
        let cost = ((NS_PER_SEC << BYTE_COST_SHIFT) + rate / 2) / rate;
        let cost = if cost == 0 { 1 } else { cost };
        let burst = if burst == 0 { 1 } else { burst };
        Bucket {
            cost,
            // Not `byte_cost`: the burst may exceed one frame.
            tau: burst.saturating_mul(cost) >> BYTE_COST_SHIFT,
        }
    }

    pub const fn enabled(&self) -> bool {
        self.cost != 0
    }

    /// The rate this bucket enforces, per second (packets or bytes), rounded.
    pub const fn rate(&self, is_bytes: bool) -> u64 {
        if self.cost == 0 {
            return 0;
        }
        let num = if is_bytes {
            NS_PER_SEC << BYTE_COST_SHIFT
        } else {
            NS_PER_SEC
        };
        (num + self.cost / 2) / self.cost
    }

    /// The burst this bucket allows (packets, or bytes for a byte bucket).
    pub const fn burst(&self, is_bytes: bool) -> u64 {
        if self.cost == 0 {
            return 0;
        }
        if is_bytes {
            // Invert `byte_cost`, rounding to nearest.
            ((self.tau << BYTE_COST_SHIFT) + self.cost / 2) / self.cost
        } else {
            self.tau / self.cost
        }
    }
}

/// Nanoseconds a frame of `len` bytes costs in a byte bucket with per-byte `cost`.
#[inline(always)]
pub const fn byte_cost(len: u64, cost: u64) -> u64 {
    let len = if len > MAX_FRAME_LEN {
        MAX_FRAME_LEN
    } else {
        len
    };
    // No overflow check (it would need a 128-bit multiply the BPF target lacks): `len` is at
    // most 2^16 and `Bucket::bytes` makes `cost` at most 10^9 << 16 < 2^46.
    len.wrapping_mul(cost) >> BYTE_COST_SHIFT
}

/// One GCRA step. Given the bucket's arrival time `tat`, the time `now` and the cost of this
/// packet, returns the new arrival time if the packet conforms, `None` if it is over the limit
/// (the state then stays as it was).
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, cost: u64, tau: u64) -> Option<u64> {
    let base = if tat > now { tat } else { now };
    let next = base.saturating_add(cost);
    if next - now <= tau { Some(next) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `count` packets evenly spread over `duration_ns` and counts how many pass.
    fn run(bucket: Bucket, start: u64, duration_ns: u64, count: u64, len: u64, bytes: bool) -> u64 {
        let mut tat = 0;
        let mut passed = 0;
        for i in 0..count {
            let now = start + duration_ns * i / count;
            let cost = if bytes {
                byte_cost(len, bucket.cost)
            } else {
                bucket.cost
            };
            if let Some(next) = gcra(tat, now, cost, bucket.tau) {
                tat = next;
                passed += 1;
            }
        }
        passed
    }

    #[test]
    fn burst_passes_at_once_then_nothing() {
        let b = Bucket::packets(100, 10);
        assert_eq!(run(b, 5_000_000_000, 1, 1000, 0, false), 10);
    }

    #[test]
    fn rate_times_duration_plus_burst_is_exact() {
        // Offered at 4x the rate; a burst of one frame cannot absorb arrival jitter (as with any
        // token bucket), so the fast rates get a small burst.
        for (rate, burst) in [
            (1u64, 1u64),
            (7, 3),
            (1000, 50),
            (333_333, 10),
            (1_000_000, 1000),
        ] {
            let b = Bucket::packets(rate, burst);
            let secs = 5;
            let passed = run(
                b,
                123_456_789,
                secs * NS_PER_SEC,
                rate * secs * 4 + 1000,
                0,
                false,
            );
            let expect = rate * secs + burst;
            // Sampling a half-open window can miss the one packet due at its very end.
            let tolerance = 1 + expect / 1000;
            assert!(
                passed.abs_diff(expect) <= tolerance,
                "rate {rate} burst {burst}: {passed} vs {expect}"
            );
        }
    }

    #[test]
    fn byte_rate_is_exact() {
        // 1 MB/s with 1500-byte frames, 4 s, offered at 10x.
        let b = Bucket::bytes(1_000_000, 100_000);
        let passed = run(b, 42, 4 * NS_PER_SEC, 26_666, 1500, true);
        let expect = (4_000_000 + 100_000) / 1500;
        assert!(passed.abs_diff(expect) <= 2, "{passed} vs {expect}");
    }

    #[test]
    fn disabled_and_roundtrip() {
        assert!(!Bucket::packets(0, 5).enabled());
        assert!(!Bucket::bytes(0, 5).enabled());
        let p = Bucket::packets(250, 40);
        assert_eq!((p.rate(false), p.burst(false)), (250, 40));
        let b = Bucket::bytes(12_500_000, 1_000_000);
        assert_eq!((b.rate(true), b.burst(true)), (12_500_000, 1_000_000));
        // A zero burst still lets the rate through.
        assert_eq!(Bucket::packets(10, 0).burst(false), 1);
    }

    #[test]
    fn over_limit_leaves_state_unchanged() {
        let b = Bucket::packets(1, 1);
        let tat = gcra(0, 1000, b.cost, b.tau).expect("first packet conforms");
        assert_eq!(gcra(tat, 1001, b.cost, b.tau), None);
        assert!(gcra(tat, 1000 + NS_PER_SEC, b.cost, b.tau).is_some());
    }

    #[test]
    fn huge_frames_and_rates_do_not_overflow() {
        let b = Bucket::bytes(1, u64::MAX);
        assert_eq!(
            byte_cost(u64::MAX, b.cost),
            byte_cost(MAX_FRAME_LEN, b.cost)
        );
        assert_eq!(
            byte_cost(MAX_FRAME_LEN, b.cost),
            MAX_FRAME_LEN * 1_000_000_000
        );
        assert!(gcra(u64::MAX - 1, u64::MAX - 1, u64::MAX, u64::MAX).is_some());
    }
}
