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
/// Tags looked through to find the source of a frame with more than [`MAX_VLAN_TAGS`]: it
/// is malformed, but Linux takes it, so its source still gets the lists and limits.
const MAX_VLAN_TAGS_FOR_SOURCE: usize = 4;
/// IPv6 extension headers walked before the frame is declared malformed.
pub const MAX_EXT_HEADERS: usize = 8;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// A frame the parser calls malformed, with its source when that could still be read (the
/// fixed IP header is whole, only what follows it is not followed).
pub type Malformed = Option<SourceKey>;

pub enum Parsed {
    /// ARP and every other non-IP ethertype.
    NonIp,
    /// An IP frame.
    Ip(Ip),
}

/// What the policy needs of an IP frame: its source (unmasked) and, for the SYN challenge,
/// where its transport header is.
pub struct Ip {
    pub src: SourceKey,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header: after the IPv4 options or the IPv6 extension chain.
    pub l4: usize,
    /// Offset just past the datagram, from its length field.
    pub end: usize,
    /// The transport protocol.
    pub proto: u8,
    /// Part of a fragmented datagram (the first fragment too): never answered.
    pub fragment: bool,
}

impl Ip {
    /// Only the source, as the filter's own path parses it.
    #[inline(always)]
    const fn source(src: SourceKey) -> Ip {
        Ip {
            src,
            l3: 0,
            l4: 0,
            end: 0,
            proto: 0,
            fragment: false,
        }
    }
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

/// Parses a frame. With `L4`, also where the transport header is (for the SYN challenge);
/// without, those fields are 0: the filter's own path keeps nothing alive past the parser
/// that would make the verifier follow every header layout separately.
#[inline(always)]
pub fn parse<const L4: bool>(ctx: &XdpContext) -> Result<Parsed, Malformed> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|()| None)?;
    // SAFETY: bounds checked by `ptr_at`.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, offset).map_err(|()| None)?;
        // SAFETY: bounds checked by `ptr_at`.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4::<L4>(ctx, offset),
        ETH_P_IPV6 => parse_ipv6::<L4>(ctx, offset),
        // A third tag: malformed rather than passed uninspected, with its source if found.
        ETH_P_8021Q | ETH_P_8021AD => Err(source_behind_tags(ctx, offset)),
        _ => Ok(Parsed::NonIp),
    }
}

/// The source of an IP frame behind more tags than the parser follows, if it is within
/// [`MAX_VLAN_TAGS_FOR_SOURCE`] tags and its fixed IP header is whole.
#[inline(always)]
fn source_behind_tags(ctx: &XdpContext, mut offset: usize) -> Malformed {
    let mut ether_type = ETH_P_8021Q;
    for _ in MAX_VLAN_TAGS..MAX_VLAN_TAGS_FOR_SOURCE {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let vlan: *const VlanHdr = ptr_at(ctx, offset).ok()?;
        // SAFETY: bounds checked by `ptr_at`.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, offset).ok()?;
            // SAFETY: bounds checked by `ptr_at`.
            let ip = unsafe { &*ip };
            if ip.vihl >> 4 != 4 {
                return None;
            }
            let mut key = SourceKey {
                family: FAMILY_V4,
                addr: [0; 16],
            };
            key.addr[..4].copy_from_slice(&ip.src_addr);
            Some(key)
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, offset).ok()?;
            // SAFETY: bounds checked by `ptr_at`.
            let ip = unsafe { &*ip };
            (ip.vcf[0] >> 4 == 6).then_some(SourceKey {
                family: FAMILY_V6,
                addr: ip.src_addr,
            })
        }
        _ => None,
    }
}

#[inline(always)]
fn parse_ipv4<const L4: bool>(ctx: &XdpContext, offset: usize) -> Result<Parsed, Malformed> {
    // A bad IPv4 header is one Linux drops too: no source is read from it.
    let ip: *const Ipv4Hdr = ptr_at(ctx, offset).map_err(|()| None)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(None);
    }
    // Options must be present in full.
    if ctx.data() + offset + ihl > ctx.data_end() {
        return Err(None);
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if tot_len < ihl {
        return Err(None);
    }
    let mut key = SourceKey {
        family: FAMILY_V4,
        addr: [0; 16],
    };
    key.addr[..4].copy_from_slice(&ip.src_addr);
    if !L4 {
        return Ok(Parsed::Ip(Ip::source(key)));
    }
    // More-fragments or a fragment offset.
    let frag = u16::from_be_bytes(ip.frags) & 0x3fff;
    Ok(Parsed::Ip(Ip {
        src: key,
        l3: offset,
        l4: offset + ihl,
        end: offset + tot_len,
        proto: ip.proto,
        fragment: frag != 0,
    }))
}

#[inline(always)]
fn parse_ipv6<const L4: bool>(ctx: &XdpContext, offset: usize) -> Result<Parsed, Malformed> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, offset).map_err(|()| None)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(None);
    }
    let key = SourceKey {
        family: FAMILY_V6,
        addr: ip.src_addr,
    };
    let l3 = offset;
    let end = if L4 {
        offset + Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize
    } else {
        0
    };
    let mut fragment = false;
    let mut next = ip.next_hdr;
    let mut offset = offset + Ipv6Hdr::LEN;
    let done = |next: u8, offset: usize, fragment: bool| {
        if !L4 {
            return Ok(Parsed::Ip(Ip::source(key)));
        }
        Ok(Parsed::Ip(Ip {
            src: key,
            l3,
            l4: offset,
            end,
            proto: next,
            fragment,
        }))
    };
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let hdr: *const [u8; 2] = ptr_at(ctx, offset).map_err(|()| Some(key))?;
                // SAFETY: bounds checked by `ptr_at`.
                let hdr = unsafe { *hdr };
                next = hdr[0];
                (hdr[1] as usize + 1) * 8
            }
            NEXTHDR_FRAGMENT => {
                let hdr: *const [u8; 8] = ptr_at(ctx, offset).map_err(|()| Some(key))?;
                // SAFETY: bounds checked by `ptr_at`.
                let hdr = unsafe { *hdr };
                // A non-first fragment carries payload after this header, not the headers its
                // next-header field names: the chain ends here.
                if u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 != 0 {
                    return done(next, offset, true);
                }
                fragment = L4;
                next = hdr[0];
                8
            }
            NEXTHDR_AUTH => {
                let hdr: *const [u8; 2] = ptr_at(ctx, offset).map_err(|()| Some(key))?;
                // SAFETY: bounds checked by `ptr_at`.
                let hdr = unsafe { *hdr };
                next = hdr[0];
                (hdr[1] as usize + 2) * 4
            }
            // Upper layer (or "no next header"): the chain is complete.
            _ => return done(next, offset, fragment),
        };
        // The whole extension header must be in the frame.
        if ctx.data() + offset + len > ctx.data_end() {
            return Err(Some(key));
        }
        offset += len;
    }
    match next {
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT | NEXTHDR_AUTH => {
            Err(Some(key))
        }
        _ => done(next, offset, fragment),
    }
}
