//! The SYN challenge: a TCP SYN from a source without state is answered from XDP with a SYN
//! cookie of the local kernel's, and the ACK that returns it proves the source address.
//!
//! The socket-based helpers are used (`bpf_skc_lookup_tcp`, `bpf_tcp_gen_syncookie`,
//! `bpf_tcp_check_syncookie`) rather than the raw ones: they mark the listener's SYN queue
//! as overflowed, so the local kernel accepts the returning cookie ACK and completes the
//! connection itself. The raw helpers would need netfilter SYNPROXY and conntrack to finish
//! the handshake. Headers are copied with `bpf_xdp_load_bytes` into a per-CPU scratch buffer
//! (the stack is too small), so the helpers get buffers of verifiable size, and the reply is
//! written back with `bpf_xdp_store_bytes`.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock_tuple, xdp_md},
    helpers::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie, bpf_tcp_gen_syncookie,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use filter_common::{
    Config, FAMILY_V4, MISC_SYN_BAD_CHECKSUM, MISC_SYN_COOKIE_REFUSED,
    syn::{
        HEADER_BUF, IPV4_HEADER, IPV6_HEADER, SYNACK_V4_LEN, SYNACK_V6_LEN, addr_sum,
        ipv4_header_ok, is_bare_syn, is_handshake_ack, pseudo, synack_v4, synack_v6,
        tcp_header_len, tcp_ok,
    },
};

use crate::{bump, parse::Ip};

/// What the challenge made of a TCP segment from a source without state.
pub enum Syn {
    /// A SYN answered with a cookie (rewritten in place unless dry-run): `XDP_TX` it.
    Challenged,
    /// A valid cookie: the source is proven.
    Proven,
    /// An ACK to a listener with a cookie that is not valid.
    BadCookie,
    /// A segment of a connection the kernel already has: it must never be broken.
    Established,
    /// Anything else: the usual newcomer path decides.
    Other,
}

/// A length in `1..=HEADER_BUF` as the verifier can see it: the compiler may rewrite a range
/// check into a form the verifier does not follow, but it keeps a mask. Lengths already in
/// range are unchanged.
#[inline(always)]
fn bounded(len: usize) -> u32 {
    ((len as u32).wrapping_sub(1) & (HEADER_BUF as u32 - 1)) + 1
}

/// Copies `len` bytes (1 to `HEADER_BUF`) at `offset` of the frame into `buf`, zero after.
#[inline(always)]
fn load(ctx: &XdpContext, offset: usize, buf: &mut [u8; HEADER_BUF], len: usize) -> bool {
    if len == 0 || len > HEADER_BUF {
        return false;
    }
    *buf = [0; HEADER_BUF];
    // SAFETY: `buf` has room for `bounded(len)` bytes; the helper checks the frame's bounds.
    unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx as *mut xdp_md,
            offset as u32,
            buf.as_mut_ptr().cast(),
            bounded(len),
        ) == 0
    }
}

/// The headers of a TCP segment and the reply being built, per CPU. Only the bytes each
/// frame loads are read, so what a previous frame left behind never matters.
#[repr(C)]
pub struct Scratch {
    /// The IP header: IPv4 with its options, or the fixed IPv6 header.
    ip: [u8; HEADER_BUF],
    tcp: [u8; HEADER_BUF],
    reply: [u8; SYNACK_V6_LEN],
    /// A socket tuple as `bpf_skc_lookup_tcp` reads it: the IPv4 or IPv6 form of the union.
    tuple: [u32; 9],
    /// The Ethernet addresses (the first 12 bytes), then the same swapped.
    macs: [u8; HEADER_BUF],
    swapped: [u8; 12],
    tcp_len: u32,
    ip_len: u32,
}

#[map]
static SYN_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn inspect(ctx: &XdpContext, cfg: &Config, ip: &Ip, dry_run: bool) -> Syn {
    let v4 = ip.src.family == FAMILY_V4;
    let Some(h) = SYN_SCRATCH.get_ptr_mut(0) else {
        return Syn::Other;
    };
    // SAFETY: this CPU's own scratch element, valid for this program run.
    let h = unsafe { &mut *h };
    if !load(ctx, ip.l4, &mut h.tcp, 20) {
        return Syn::Other;
    }
    let flags = h.tcp[13];
    let syn = is_bare_syn(flags);
    if !syn && !is_handshake_ack(flags) {
        return Syn::Other;
    }
    let tcp_len = tcp_header_len(&h.tcp);
    h.tcp_len = tcp_len as u32;
    // The IP header's length goes to a helper as a size, which makes the verifier track it
    // exactly back to the parser, so that every header layout (VLAN tags, extension headers)
    // would be verified separately through the rest of the program. Read back from map memory
    // it is just a bounded number.
    h.ip_len = (ip.l4 - ip.l3) as u32;
    // SAFETY: a field of this CPU's scratch element.
    let ip_len = unsafe { core::ptr::read_volatile(&h.ip_len) } as usize;
    if tcp_len < 20
        || ip.l4 + tcp_len > ip.end
        || !load(ctx, ip.l4, &mut h.tcp, tcp_len)
        || !load(ctx, ip.l3, &mut h.ip, if v4 { ip_len } else { IPV6_HEADER })
    {
        return Syn::Other;
    }
    let port_covered = cfg.syn_port_covered(u16::from_be_bytes([h.tcp[2], h.tcp[3]]));
    if syn {
        // Answer only what a client sends: no data (so the reply is never larger than the
        // SYN: no amplification) and correct checksums (never reflect garbage).
        let reply_len = if v4 { SYNACK_V4_LEN } else { SYNACK_V6_LEN };
        if !port_covered || ip.l4 + tcp_len != ip.end || ip.end - ip.l3 < reply_len {
            return Syn::Other;
        }
        if !checksums_ok(h, v4) {
            bump(MISC_SYN_BAD_CHECKSUM);
            return Syn::Other;
        }
    }
    // Addresses and ports as they lie in the frame (network order), viewed as native words.
    let word = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let tuple_len = if v4 {
        h.tuple[0] = word(&h.ip, 12);
        h.tuple[1] = word(&h.ip, 16);
        h.tuple[2] = word(&h.tcp, 0);
        12
    } else {
        let mut i = 0;
        while i < 8 {
            h.tuple[i] = word(&h.ip, 8 + i * 4);
            i += 1;
        }
        h.tuple[8] = word(&h.tcp, 0);
        36
    };
    let iph_len = if v4 { IPV4_HEADER } else { IPV6_HEADER } as u32;
    // SAFETY: the tuple is initialised for `tuple_len` bytes; the socket is released below on
    // every path.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            h.tuple.as_mut_ptr().cast::<bpf_sock_tuple>(),
            tuple_len,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        // No listener and no connection: the kernel would answer with a reset.
        return Syn::Other;
    }
    // SAFETY: `sk` is a socket reference the lookup returned, readable until released.
    let listening = unsafe { (*sk).state } == BPF_TCP_LISTEN;
    let tcp_len = bounded(tcp_len);
    let result: i64 = if !listening || !port_covered {
        -1
    } else if syn {
        // SAFETY: buffers on the stack of the sizes passed; `sk` is held.
        unsafe {
            bpf_tcp_gen_syncookie(
                sk.cast(),
                h.ip.as_mut_ptr().cast(),
                iph_len,
                h.tcp.as_mut_ptr().cast(),
                tcp_len,
            )
        }
    } else {
        // SAFETY: as above.
        unsafe {
            bpf_tcp_check_syncookie(
                sk.cast(),
                h.ip.as_mut_ptr().cast(),
                iph_len,
                h.tcp.as_mut_ptr().cast(),
                tcp_len,
            )
        }
    };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    if !listening {
        // A connection the kernel has (established, or in its SYN queue): never break it.
        return if syn { Syn::Other } else { Syn::Established };
    }
    if !port_covered {
        return Syn::Other;
    }
    if !syn {
        return if result == 0 {
            Syn::Proven
        } else {
            Syn::BadCookie
        };
    }
    if result < 0 {
        bump(MISC_SYN_COOKIE_REFUSED);
        return Syn::Other;
    }
    if !dry_run && !answer(ctx, ip, h, v4, result as u64) {
        return Syn::Other;
    }
    Syn::Challenged
}

#[inline(always)]
fn checksums_ok(h: &Scratch, v4: bool) -> bool {
    let pseudo = pseudo(addr_sum(&h.ip, v4), h.tcp_len);
    (!v4 || ipv4_header_ok(&h.ip)) && tcp_ok(&h.tcp, pseudo)
}

/// Rewrites the SYN into its SYN-ACK in place: MACs swapped (VLAN tags kept), a plain IP
/// header (no options or extension headers), the cookie as sequence number, and the frame
/// trimmed to the reply. `generated` is `bpf_tcp_gen_syncookie`'s result: cookie | MSS << 32.
#[inline(always)]
fn answer(ctx: &XdpContext, ip: &Ip, h: &mut Scratch, v4: bool, generated: u64) -> bool {
    let cookie = generated as u32;
    let mss = (generated >> 32) as u16;
    let reply_len = if v4 {
        synack_v4(&h.ip, &h.tcp, cookie, mss, &mut h.reply);
        SYNACK_V4_LEN
    } else {
        synack_v6(&h.ip, &h.tcp, cookie, mss, &mut h.reply);
        SYNACK_V6_LEN
    };
    if !load(ctx, 0, &mut h.macs, 12) {
        return false;
    }
    let mut i = 0;
    while i < 6 {
        h.swapped[i] = h.macs[6 + i];
        h.swapped[6 + i] = h.macs[i];
        i += 1;
    }
    // Trim first: until the stores below the frame is untouched, so a failure here leaves the
    // SYN to the usual path.
    let frame_len = ctx.data_end() - ctx.data();
    let delta = (ip.l3 + reply_len) as i64 - frame_len as i64;
    // SAFETY: a helper on this program's own context; `delta` is never positive (the SYN is
    // at least as long as its reply).
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return false;
    }
    // SAFETY: scratch buffers of the lengths given; the helper checks the frame's bounds.
    unsafe {
        bpf_xdp_store_bytes(ctx.ctx, 0, h.swapped.as_mut_ptr().cast(), 12) == 0
            && bpf_xdp_store_bytes(
                ctx.ctx,
                ip.l3 as u32,
                h.reply.as_mut_ptr().cast(),
                reply_len as u32,
            ) == 0
    }
}
