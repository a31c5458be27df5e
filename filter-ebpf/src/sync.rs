//! Lock-free updates of state shared between CPUs: GCRA by compare-and-swap, counters by
//! atomic add. `AtomicU64` has no compare-and-swap on bpfel, so the intrinsics are used
//! directly; they compile to `cmpxchg_64`, `lock xadd` and `lock or`. Bitmaps by atomic or.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_or as or, atomic_xadd};

use filter_common::{Bucket, gcra};

/// Attempts before a contended bucket gives up. Each failure means another CPU just took a
/// token from the same bucket, so a source still failing here is sending very fast.
const CAS_ATTEMPTS: usize = 8;

/// One GCRA step on `*tat`. `Some(true)`: the frame conforms and its cost is taken;
/// `Some(false)`: over the limit (state untouched); `None`: contention outlasted the retries.
#[inline(always)]
pub fn gcra_cas(tat: *mut u64, bucket: &Bucket, cost: u64, now: u64) -> Option<bool> {
    // An aligned 64-bit load is single-copy atomic; the BPF backend has no atomic-load
    // instruction to select for a relaxed `atomic_load`.
    // SAFETY: `tat` points into a map value, valid and 8-byte aligned for this program run.
    let mut current = unsafe { core::ptr::read_volatile(tat) };
    for _ in 0..CAS_ATTEMPTS {
        // Over the limit is decided on a plain read, so a flood that is being dropped does
        // not write the shared cache line at all.
        let Some(next) = gcra(current, now, cost, bucket.tau) else {
            return Some(false);
        };
        // SAFETY: as above.
        let (seen, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat, current, next,
            )
        };
        if swapped {
            return Some(true);
        }
        current = seen;
    }
    None
}

#[inline(always)]
pub fn atomic_add(dst: *mut u64, value: u64) {
    // SAFETY: `dst` points into a map value, valid and aligned for this program run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, value) };
}

#[inline(always)]
pub fn atomic_or(dst: *mut u64, bits: u64) {
    // SAFETY: `dst` points into a map value, valid and aligned for this program run.
    unsafe { or::<u64, u64, { AtomicOrdering::Relaxed }>(dst, bits) };
}
