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
