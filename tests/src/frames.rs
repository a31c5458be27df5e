//! Building Ethernet frames on the host for tests and the packet source.

use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const PROTO_UDP: u8 = 17;

/// A frame under construction: layers are appended in order.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub bytes: Vec<u8>,
}

impl Frame {
    /// Ethernet header with `ether_type`, between fixed test MACs.
    pub fn eth(ether_type: u16) -> Frame {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
        bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        bytes.extend_from_slice(&ether_type.to_be_bytes());
        Frame { bytes }
    }

    /// A VLAN tag whose inner ether type is `inner`.
    pub fn vlan(mut self, vid: u16, inner: u16) -> Frame {
        self.bytes.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        self.bytes.extend_from_slice(&inner.to_be_bytes());
        self
    }

    /// An IPv4 header (with `options`, a multiple of 4 bytes) from `src` to `dst`.
    pub fn ipv4(
        mut self,
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        options: &[u8],
        payload_len: usize,
    ) -> Frame {
        let ihl = 20 + options.len();
        let total = (ihl + payload_len) as u16;
        self.bytes.push(0x40 | (ihl / 4) as u8);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&total.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0]);
        self.bytes.extend_from_slice(&src);
        self.bytes.extend_from_slice(&dst);
        self.bytes.extend_from_slice(options);
        self
    }

    /// An IPv6 header from `src` to `dst` whose next header is `next`.
    pub fn ipv6(mut self, src: [u8; 16], dst: [u8; 16], next: u8, payload_len: usize) -> Frame {
        self.bytes.extend_from_slice(&[0x60, 0, 0, 0]);
        self.bytes
            .extend_from_slice(&(payload_len as u16).to_be_bytes());
        self.bytes.push(next);
        self.bytes.push(64);
        self.bytes.extend_from_slice(&src);
        self.bytes.extend_from_slice(&dst);
        self
    }

    /// Raw bytes (an extension header, a UDP header, payload).
    pub fn raw(mut self, data: &[u8]) -> Frame {
        self.bytes.extend_from_slice(data);
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.bytes
    }
}

/// A UDP-over-IP frame from `src` with `payload` bytes of payload.
pub fn udp(src: IpAddr, payload: usize) -> Vec<u8> {
    let udp_len = 8 + payload;
    let mut l4 = vec![0u8; udp_len];
    l4[0..2].copy_from_slice(&4000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&53u16.to_be_bytes());
    l4[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    match src {
        IpAddr::V4(a) => Frame::eth(ETH_P_IP)
            .ipv4(a.octets(), [192, 0, 2, 1], PROTO_UDP, &[], udp_len)
            .raw(&l4)
            .build(),
        IpAddr::V6(a) => Frame::eth(ETH_P_IPV6)
            .ipv6(
                a.octets(),
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                PROTO_UDP,
                udp_len,
            )
            .raw(&l4)
            .build(),
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_GRE: u8 = 47;
pub const PROTO_ESP: u8 = 50;
pub const PROTO_ICMPV6: u8 = 58;
/// Reserved for experimentation and testing (RFC 3692): a protocol nobody parses.
pub const PROTO_EXPERIMENTAL: u8 = 253;

/// IPv6 next-header values of the extension headers floodwall walks.
pub const NEXTHDR_HOP: u8 = 0;
pub const NEXTHDR_ROUTING: u8 = 43;
pub const NEXTHDR_FRAGMENT: u8 = 44;
pub const NEXTHDR_AUTH: u8 = 51;
pub const NEXTHDR_NONE: u8 = 59;
pub const NEXTHDR_DEST: u8 = 60;

/// An IPv6 extension header of type `kind` whose next header is `next`, with a plausible body:
/// hop-by-hop and destination options 16 bytes (PadN), routing 24 bytes (type 0, one segment
/// address left unset), fragment 8 bytes (offset 0, last fragment), AH 24 bytes (12-byte ICV).
pub fn ext_header(kind: u8, next: u8) -> Vec<u8> {
    match kind {
        NEXTHDR_FRAGMENT => ipv6_fragment_header(next, 0, false, 0x1234_5678),
        NEXTHDR_AUTH => {
            // Payload length in 4-octet units, minus 2: (4 + 2) * 4 = 24 bytes.
            let mut h = vec![next, 4, 0, 0];
            h.extend_from_slice(&0x100u32.to_be_bytes()); // SPI
            h.extend_from_slice(&1u32.to_be_bytes()); // sequence number
            h.extend_from_slice(&[0xa5; 12]); // ICV
            h
        }
        NEXTHDR_ROUTING => {
            // Length in 8-octet units past the first 8: (2 + 1) * 8 = 24 bytes.
            let mut h = vec![next, 2, 0, 0, 0, 0, 0, 0];
            h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
            h
        }
        // Hop-by-hop and destination options: PadN filling (1 + 1) * 8 = 16 bytes.
        _ => {
            let mut h = vec![next, 1, 1, 12];
            h.extend_from_slice(&[0; 12]);
            h
        }
    }
}

/// An IPv6 fragment header: `offset` in 8-octet units, `more` the M flag.
pub fn ipv6_fragment_header(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// An IPv6 frame from `src` through the extension headers `chain` (types, in order, each built
/// by [`ext_header`]) to upper-layer protocol `upper` with `payload` zero bytes.
pub fn ipv6_chain(src: [u8; 16], chain: &[u8], upper: u8, payload: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    for (i, kind) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(upper);
        exts.extend_from_slice(&ext_header(*kind, next));
    }
    let first = chain.first().copied().unwrap_or(upper);
    Frame::eth(ETH_P_IPV6)
        .ipv6(
            src,
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            first,
            exts.len() + payload,
        )
        .raw(&exts)
        .raw(&vec![0; payload])
        .build()
}

/// An IPv4 frame from `src` with protocol `proto`, `options` and `payload` zero bytes, whose
/// flags/fragment-offset field is `more` (MF) and `offset` (8-octet units).
pub fn ipv4_fragment(
    src: [u8; 4],
    proto: u8,
    options: &[u8],
    more: bool,
    offset: u16,
    payload: usize,
) -> Vec<u8> {
    let mut frame = Frame::eth(ETH_P_IP)
        .ipv4(src, [192, 0, 2, 1], proto, options, payload)
        .raw(&vec![0; payload])
        .build();
    let field = (offset & 0x1fff) | if more { 0x2000 } else { 0 };
    frame[14 + 6..14 + 8].copy_from_slice(&field.to_be_bytes());
    frame
}

/// The RFC 1071 sum of `data` as big-endian words (an odd last byte padded), added to `acc`.
fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A TCP SYN from `src` to `dst`:`dport` with an MSS option (as every real client sends), its
/// IPv4 header and TCP checksums correct.
pub fn tcp_syn(src: IpAddr, dst: IpAddr, dport: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 24];
    tcp[0..2].copy_from_slice(&33_333u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    tcp[12] = 6 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let (s, d) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => panic!("tcp_syn: {src} and {dst} are of different families"),
    };
    let pseudo = ones_sum(&s, 0) + ones_sum(&d, 0) + u32::from(PROTO_TCP) + tcp.len() as u32;
    let csum = fold(ones_sum(&tcp, pseudo));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    let mut frame = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut f =
                Frame::eth(ETH_P_IP).ipv4(s.octets(), d.octets(), PROTO_TCP, &[], tcp.len());
            let ip = f.bytes.len() - 20;
            let csum = fold(ones_sum(&f.bytes[ip..], 0));
            f.bytes[ip + 10..ip + 12].copy_from_slice(&csum.to_be_bytes());
            f
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            Frame::eth(ETH_P_IPV6).ipv6(s.octets(), d.octets(), PROTO_TCP, tcp.len())
        }
        _ => unreachable!("families checked above"),
    };
    frame.bytes.extend_from_slice(&tcp);
    frame.bytes
}
