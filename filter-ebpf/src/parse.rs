//! Header parsing. Filtering is by source address, which sits at a fixed place in the IP
//! header, so no upper-layer protocol, extension header or fragment can hide a blocked source.
//! The IPv6 extension chain is still walked, bounded, so a frame that lies about its layout is
//! malformed rather than passed.

use aya_ebpf::programs::XdpContext;
use filter_common::{FAMILY_V4, FAMILY_V6, SourceKey};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags looked through (802.1Q inside 802.1ad, "QinQ").
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the frame is declared malformed.
pub const MAX_EXT_HEADERS: usize = 8;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

pub enum Parsed {
    /// ARP and every other non-IP ethertype.
    NonIp,
    /// An IP frame and its source address (unmasked).
    Ip(SourceKey),
}

/// A bounds-checked pointer to a `T` at `offset` in the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, ()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, offset)?;
        // SAFETY: bounds checked by `ptr_at`.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(ctx, offset),
        ETH_P_IPV6 => parse_ipv6(ctx, offset),
        // A third tag would hide the protocol: refuse rather than pass it uninspected.
        ETH_P_8021Q | ETH_P_8021AD => Err(()),
        _ => Ok(Parsed::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Parsed, ()> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(());
    }
    // Options must be present in full.
    if ctx.data() + offset + ihl > ctx.data_end() {
        return Err(());
    }
    if (u16::from_be_bytes(ip.tot_len) as usize) < ihl {
        return Err(());
    }
    let mut key = SourceKey {
        family: FAMILY_V4,
        addr: [0; 16],
    };
    key.addr[..4].copy_from_slice(&ip.src_addr);
    Ok(Parsed::Ip(key))
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Parsed, ()> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(());
    }
    let key = SourceKey {
        family: FAMILY_V6,
        addr: ip.src_addr,
    };
    let mut next = ip.next_hdr;
    let mut offset = offset + Ipv6Hdr::LEN;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let hdr: *const [u8; 2] = ptr_at(ctx, offset)?;
                // SAFETY: bounds checked by `ptr_at`.
                let hdr = unsafe { *hdr };
                next = hdr[0];
                (hdr[1] as usize + 1) * 8
            }
            NEXTHDR_FRAGMENT => {
                let hdr: *const [u8; 8] = ptr_at(ctx, offset)?;
                // SAFETY: bounds checked by `ptr_at`.
                let hdr = unsafe { *hdr };
                // A non-first fragment carries payload after this header, not the headers its
                // next-header field names: the chain ends here.
                if u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 != 0 {
                    return Ok(Parsed::Ip(key));
                }
                next = hdr[0];
                8
            }
            NEXTHDR_AUTH => {
                let hdr: *const [u8; 2] = ptr_at(ctx, offset)?;
                // SAFETY: bounds checked by `ptr_at`.
                let hdr = unsafe { *hdr };
                next = hdr[0];
                (hdr[1] as usize + 2) * 4
            }
            // Upper layer (or "no next header"): the chain is complete.
            _ => return Ok(Parsed::Ip(key)),
        };
        // The whole extension header must be in the frame.
        if ctx.data() + offset + len > ctx.data_end() {
            return Err(());
        }
        offset += len;
    }
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT | NEXTHDR_AUTH => Err(()),
        _ => Ok(Parsed::Ip(key)),
    }
}
