//! A packet source for tests and benchmarks (not part of floodwall's data path).
//!
//! Run with `BPF_PROG_TEST_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel
//! hands this program copies of one template frame; it rewrites each frame's source address as
//! `PKTGEN_CONFIG` says and redirects it out of `out_ifindex` (resolved in the network
//! namespace of the thread that runs the test). Userspace: `floodwall-tests`' `pktgen` module,
//! both sharing [`PktgenConfig`] from `filter-common`.
//!
//! Checksums are updated incrementally (RFC 1624, eqn. 3) from the frame's current contents:
//! live-frame pages are recycled with whatever the previous run left in them, so a template
//! whose checksums were correct stays correct.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    bindings::xdp_md,
    helpers::{bpf_get_prandom_u32, bpf_redirect, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

use filter_common::pktgen::{
    PKTGEN_FLAG_CHAIN as FLAG_CHAIN, PKTGEN_FLAG_L4_UDP as FLAG_L4_UDP,
    PKTGEN_FLAG_RESTORE as FLAG_RESTORE, PKTGEN_MODE_PREFIX as MODE_PREFIX,
    PKTGEN_MODE_SET as MODE_SET, PKTGEN_OFFSET_MASK as OFFSET_MASK,
    PKTGEN_SET_CAPACITY as SET_CAPACITY, PKTGEN_TEMPLATE_CAPACITY as TEMPLATE_CAPACITY,
    PktgenConfig,
};

#[map]
static PKTGEN_CONFIG: Array<PktgenConfig> = Array::with_max_entries(1, 0);
#[map]
static PKTGEN_SET: Array<[u32; 4]> = Array::with_max_entries(SET_CAPACITY, 0);
#[map]
static PKTGEN_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static PKTGEN_TEMPLATE: Array<[u8; TEMPLATE_CAPACITY]> = Array::with_max_entries(1, 0);
/// The program frames are handed to with `PKTGEN_FLAG_CHAIN`.
#[map]
static PKTGEN_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn pktgen(ctx: XdpContext) -> u32 {
    match rewrite(&ctx) {
        Some((_, flags)) if flags & FLAG_CHAIN != 0 => {
            // SAFETY: on success the tail call does not return.
            let _ = unsafe { PKTGEN_NEXT.tail_call(&ctx, 0) };
            xdp_action::XDP_ABORTED
        }
        // SAFETY: a helper taking plain integers. It returns XDP_REDIRECT, or XDP_ABORTED
        // for invalid flags (there are none).
        Some((ifindex, _)) => unsafe { bpf_redirect(ifindex, 0) as u32 },
        None => xdp_action::XDP_ABORTED,
    }
}

/// Rewrites the source address (and checksums); returns the interface to send out of and the
/// config's flags.
#[inline(always)]
fn rewrite(ctx: &XdpContext) -> Option<(u32, u32)> {
    let cfg = PKTGEN_CONFIG.get(0)?;
    if cfg.flags & FLAG_RESTORE != 0 {
        let template = PKTGEN_TEMPLATE.get(0)?;
        // 1..=TEMPLATE_CAPACITY, in a form the verifier follows.
        let len = (cfg.template_len.wrapping_sub(1) & (TEMPLATE_CAPACITY as u32 - 1)) + 1;
        // SAFETY: the template holds `len` bytes; the helper checks the frame's bounds.
        let stored = unsafe {
            bpf_xdp_store_bytes(ctx.ctx as *mut xdp_md, 0, template.as_ptr() as *mut _, len)
        };
        if stored != 0 {
            return None;
        }
    }
    let words = next_address(cfg)?;
    let start = ctx.data();
    let end = ctx.data_end();
    let addr = start + (cfg.addr_off & OFFSET_MASK) as usize;
    let delta = if cfg.addr_len == 16 {
        if addr + 16 > end {
            return None;
        }
        // SAFETY: 16 bytes in bounds, checked above.
        unsafe { store::<8>(addr as *mut u16, &words) }
    } else {
        if addr + 4 > end {
            return None;
        }
        // SAFETY: 4 bytes in bounds, checked above.
        unsafe { store::<2>(addr as *mut u16, &words) }
    };
    if cfg.l3_csum_off != 0 {
        let field = start + (cfg.l3_csum_off & OFFSET_MASK) as usize;
        if field + 2 > end {
            return None;
        }
        // SAFETY: 2 bytes in bounds, checked above.
        unsafe { adjust(field as *mut u16, delta, false) };
    }
    if cfg.l4_csum_off != 0 {
        let field = start + (cfg.l4_csum_off & OFFSET_MASK) as usize;
        if field + 2 > end {
            return None;
        }
        // SAFETY: 2 bytes in bounds, checked above.
        unsafe { adjust(field as *mut u16, delta, cfg.flags & FLAG_L4_UDP != 0) };
    }
    Some((cfg.out_ifindex, cfg.flags))
}

/// The address for this frame, as four raw words (IPv4 uses the first).
#[inline(always)]
fn next_address(cfg: &PktgenConfig) -> Option<[u32; 4]> {
    if cfg.mode == MODE_SET {
        let cursor = PKTGEN_CURSOR.get_ptr_mut(0)?;
        if cfg.set_len == 0 {
            return None;
        }
        // SAFETY: this CPU's own slot; the program runs with preemption off.
        let index = unsafe {
            let i = *cursor % cfg.set_len;
            *cursor = i + 1;
            i
        };
        return PKTGEN_SET.get(index).copied();
    }
    if cfg.mode != MODE_PREFIX {
        return None;
    }
    let mut words = cfg.base;
    for (word, mask) in words.iter_mut().zip(cfg.hostmask) {
        if mask != 0 {
            // SAFETY: a helper without arguments.
            *word |= unsafe { bpf_get_prandom_u32() } & mask;
        }
    }
    Some(words)
}

/// Writes the first `N` 16-bit words of `words` at `p`; returns the one's-complement sum of
/// the change (`~old + new` per word) for [`adjust`].
///
/// # Safety
/// `p` must point to `2 * N` writable bytes.
#[inline(always)]
unsafe fn store<const N: usize>(p: *mut u16, words: &[u32; 4]) -> u32 {
    let mut delta = 0u32;
    for i in 0..N {
        let word = words[i / 2];
        let new = if i % 2 == 0 { word } else { word >> 16 } as u16;
        // SAFETY: within the caller's 2 * N bytes; 16-bit aligned only by convention, and
        // unaligned accesses are fine where this runs.
        unsafe {
            let q = p.add(i);
            let old = q.read_unaligned();
            q.write_unaligned(new);
            delta += u32::from(!old) + u32::from(new);
        }
    }
    delta
}

/// Applies a change summed by [`store`] to the checksum at `field`: HC' = ~(~HC + delta).
///
/// # Safety
/// `field` must point to 2 writable bytes.
#[inline(always)]
unsafe fn adjust(field: *mut u16, delta: u32, udp: bool) {
    // SAFETY: the caller's 2 bytes.
    let old = unsafe { field.read_unaligned() };
    if udp && old == 0 {
        return;
    }
    let mut sum = u32::from(!old) + delta;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let mut new = !(sum as u16);
    if udp && new == 0 {
        new = 0xffff;
    }
    // SAFETY: as above.
    unsafe { field.write_unaligned(new) };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
