//! The packet math of the SYN challenge: checksums of the received SYN and the SYN-ACK built
//! in its place. Pure functions on fixed-size buffers, so the kernel runs exactly what the
//! host unit tests check.

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const PROTO_TCP: u8 = 6;

/// Largest IPv4 header (with options) and largest TCP header.
pub const MAX_IPV4_HEADER: usize = 60;
pub const MAX_TCP_HEADER: usize = 60;
/// Buffers that hold one header: a power of two above both maxima, so the kernel can bound a
/// length by masking (the verifier follows a mask where it loses a compared range).
pub const HEADER_BUF: usize = 64;
pub const IPV4_HEADER: usize = 20;
pub const IPV6_HEADER: usize = 40;
/// The SYN-ACK's TCP header: 20 bytes and one MSS option. The cookie encodes nothing else.
pub const SYNACK_TCP_HEADER: usize = 24;
/// Bytes from the IP header on of the SYN-ACK.
pub const SYNACK_V4_LEN: usize = IPV4_HEADER + SYNACK_TCP_HEADER;
pub const SYNACK_V6_LEN: usize = IPV6_HEADER + SYNACK_TCP_HEADER;
/// The SYN-ACK's IP TTL / hop limit.
const REPLY_TTL: u8 = 64;

/// One's-complement sum of the whole of `buf` as big-endian 16-bit words, added to `sum`.
/// `N` must be even. Header buffers are zero past their header, which adds nothing: the loop
/// has no branch on the header's length, which keeps it cheap for the BPF verifier.
#[inline(always)]
pub fn sum_be16<const N: usize>(buf: &[u8; N], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([buf[i], buf[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Folds a one's-complement sum to 16 bits and complements it: the checksum field's value,
/// or 0 when the summed data already contains a correct checksum.
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The sum of an IP header's two addresses, the part of TCP's pseudo-header sum that does
/// not change when source and destination are swapped: bytes 12..20 of IPv4, 8..40 of IPv6.
#[inline(always)]
pub fn addr_sum(iph: &[u8; HEADER_BUF], v4: bool) -> u32 {
    let (from, to) = if v4 { (12, 20) } else { (8, 40) };
    let mut sum = 0;
    let mut i = from;
    while i < to {
        sum += u16::from_be_bytes([iph[i], iph[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// TCP's pseudo-header sum for a segment of `tcp_len` bytes between the addresses whose sum
/// is `addrs`.
#[inline(always)]
pub const fn pseudo(addrs: u32, tcp_len: u32) -> u32 {
    addrs + PROTO_TCP as u32 + tcp_len
}

/// Whether an IPv4 header (zero past its length) carries a correct checksum.
#[inline(always)]
pub fn ipv4_header_ok(iph: &[u8; HEADER_BUF]) -> bool {
    fold(sum_be16(iph, 0)) == 0
}

/// Whether a TCP segment (header only, zero past its length: the challenge never answers a
/// SYN that carries data) carries a correct checksum, given its pseudo-header sum.
#[inline(always)]
pub fn tcp_ok(th: &[u8; HEADER_BUF], pseudo: u32) -> bool {
    fold(sum_be16(th, pseudo)) == 0
}

/// The TCP header length a TCP header announces (`doff` × 4).
#[inline(always)]
pub const fn tcp_header_len(th: &[u8; HEADER_BUF]) -> usize {
    (th[12] >> 4) as usize * 4
}

/// A SYN only: no ACK, RST or FIN.
#[inline(always)]
pub const fn is_bare_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// The segment that completes a handshake: ACK without SYN or RST.
#[inline(always)]
pub const fn is_handshake_ack(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK
}

/// The SYN-ACK's window: the largest multiple of `mss` an unscaled window holds, as the
/// kernel rounds its own initial window (the cookie carries no window scale).
#[inline(always)]
pub const fn synack_window(mss: u16) -> u16 {
    if mss == 0 {
        return 0;
    }
    (u16::MAX / mss) * mss
}

/// Writes the SYN-ACK's TCP header (24 bytes at `out[at..]`) answering the SYN header `syn`,
/// with `cookie` as its sequence number and an MSS option; the checksum uses `pseudo`, the
/// pseudo-header sum of the reply (addresses already swapped).
#[inline(always)]
fn synack_tcp(
    syn: &[u8; HEADER_BUF],
    cookie: u32,
    mss: u16,
    pseudo: u32,
    out: &mut [u8; SYNACK_V6_LEN],
    at: usize,
) {
    let ack = u32::from_be_bytes([syn[4], syn[5], syn[6], syn[7]]).wrapping_add(1);
    let mut th = [0u8; SYNACK_TCP_HEADER];
    th[0] = syn[2];
    th[1] = syn[3];
    th[2] = syn[0];
    th[3] = syn[1];
    th[4..8].copy_from_slice(&cookie.to_be_bytes());
    th[8..12].copy_from_slice(&ack.to_be_bytes());
    th[12] = ((SYNACK_TCP_HEADER / 4) as u8) << 4;
    th[13] = TCP_SYN | TCP_ACK;
    th[14..16].copy_from_slice(&synack_window(mss).to_be_bytes());
    // Kind 2 (MSS), length 4.
    th[20] = 2;
    th[21] = 4;
    th[22..24].copy_from_slice(&mss.to_be_bytes());
    let csum = fold(sum_be16(&th, pseudo));
    th[16..18].copy_from_slice(&csum.to_be_bytes());
    let mut i = 0;
    while i < SYNACK_TCP_HEADER {
        out[at + i] = th[i];
        i += 1;
    }
}

/// The SYN-ACK answering the IPv4 SYN with header `iph` and TCP header `syn`: a 20-byte
/// IPv4 header (options are not echoed) and the TCP header, `SYNACK_V4_LEN` bytes at the
/// start of `out`.
#[inline(always)]
pub fn synack_v4(
    iph: &[u8; HEADER_BUF],
    syn: &[u8; HEADER_BUF],
    cookie: u32,
    mss: u16,
    out: &mut [u8; SYNACK_V6_LEN],
) {
    let mut reply = [0u8; IPV4_HEADER];
    reply[0] = 0x45;
    reply[2..4].copy_from_slice(&(SYNACK_V4_LEN as u16).to_be_bytes());
    // Don't fragment, as Linux sends its SYN-ACKs.
    reply[6] = 0x40;
    reply[8] = REPLY_TTL;
    reply[9] = PROTO_TCP;
    let mut i = 0;
    while i < 4 {
        reply[12 + i] = iph[16 + i];
        reply[16 + i] = iph[12 + i];
        i += 1;
    }
    let csum = fold(sum_be16(&reply, 0));
    reply[10..12].copy_from_slice(&csum.to_be_bytes());
    out[..IPV4_HEADER].copy_from_slice(&reply);
    let pseudo = pseudo(addr_sum(iph, true), SYNACK_TCP_HEADER as u32);
    synack_tcp(syn, cookie, mss, pseudo, out, IPV4_HEADER);
}

/// The SYN-ACK answering the IPv6 SYN with fixed header `iph` and TCP header `syn`: a
/// 40-byte IPv6 header (extension headers are not echoed) and the TCP header,
/// `SYNACK_V6_LEN` bytes in `out`.
#[inline(always)]
pub fn synack_v6(
    iph: &[u8; HEADER_BUF],
    syn: &[u8; HEADER_BUF],
    cookie: u32,
    mss: u16,
    out: &mut [u8; SYNACK_V6_LEN],
) {
    out[0] = 0x60;
    out[1] = 0;
    out[2] = 0;
    out[3] = 0;
    out[4..6].copy_from_slice(&(SYNACK_TCP_HEADER as u16).to_be_bytes());
    out[6] = PROTO_TCP;
    out[7] = REPLY_TTL;
    let mut i = 0;
    while i < 16 {
        out[8 + i] = iph[24 + i];
        out[24 + i] = iph[8 + i];
        i += 1;
    }
    let pseudo = pseudo(addr_sum(iph, false), SYNACK_TCP_HEADER as u32);
    synack_tcp(syn, cookie, mss, pseudo, out, IPV6_HEADER);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header from `src` to `dst` (checksummed), in a header buffer.
    fn ipv4(src: [u8; 4], dst: [u8; 4]) -> [u8; HEADER_BUF] {
        let mut h = [0u8; HEADER_BUF];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&44u16.to_be_bytes());
        h[8] = 64;
        h[9] = PROTO_TCP;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let csum = fold(sum_be16(&h, 0));
        h[10..12].copy_from_slice(&csum.to_be_bytes());
        h
    }

    fn ipv6(src_last: u8, dst_last: u8) -> [u8; HEADER_BUF] {
        let mut h = [0u8; HEADER_BUF];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&24u16.to_be_bytes());
        h[6] = PROTO_TCP;
        h[7] = 64;
        h[8..12].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        h[23] = src_last;
        h[24..28].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        h[39] = dst_last;
        h
    }

    /// A SYN header with an MSS option, checksummed for the addresses summing to `addrs`.
    fn syn_header(addrs: u32) -> [u8; HEADER_BUF] {
        let mut th = [0u8; HEADER_BUF];
        th[0..2].copy_from_slice(&40000u16.to_be_bytes());
        th[2..4].copy_from_slice(&443u16.to_be_bytes());
        th[4..8].copy_from_slice(&0xfffffffeu32.to_be_bytes());
        th[12] = 6 << 4;
        th[13] = TCP_SYN;
        th[14..16].copy_from_slice(&64240u16.to_be_bytes());
        th[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        let csum = fold(sum_be16(&th, pseudo(addrs, 24)));
        th[16..18].copy_from_slice(&csum.to_be_bytes());
        th
    }

    #[test]
    fn fold_matches_rfc1071_example() {
        // RFC 1071's example words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_be16(&data, 0)), !0xddf2);
    }

    #[test]
    fn trailing_zeros_add_nothing() {
        let data = [0x12, 0x34, 0x56, 0x00, 0, 0];
        assert_eq!(sum_be16(&data, 0), 0x1234 + 0x5600);
    }

    #[test]
    fn a_corrupted_segment_or_header_fails_its_checksum() {
        let mut iph = ipv4([192, 0, 2, 1], [198, 51, 100, 2]);
        let addrs = addr_sum(&iph, true);
        let mut th = syn_header(addrs);
        assert!(tcp_ok(&th, pseudo(addrs, 24)));
        assert!(ipv4_header_ok(&iph));
        th[5] ^= 1;
        assert!(!tcp_ok(&th, pseudo(addrs, 24)));
        iph[8] = 63;
        assert!(!ipv4_header_ok(&iph));
    }

    #[test]
    fn synack_v4_swaps_and_acknowledges() {
        let iph = ipv4([192, 0, 2, 1], [198, 51, 100, 2]);
        let syn = syn_header(addr_sum(&iph, true));
        let mut out = [0u8; SYNACK_V6_LEN];
        synack_v4(&iph, &syn, 0x1234_5678, 1460, &mut out);
        let mut reply = [0u8; HEADER_BUF];
        reply[..20].copy_from_slice(&out[..20]);
        assert!(ipv4_header_ok(&reply));
        assert_eq!(&out[12..16], &[198, 51, 100, 2]);
        assert_eq!(&out[16..20], &[192, 0, 2, 1]);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 44);
        let mut th = [0u8; HEADER_BUF];
        th[..24].copy_from_slice(&out[20..44]);
        assert!(tcp_ok(&th, pseudo(addr_sum(&reply, true), 24)));
        assert_eq!(u16::from_be_bytes([th[0], th[1]]), 443);
        assert_eq!(u16::from_be_bytes([th[2], th[3]]), 40000);
        assert_eq!(
            u32::from_be_bytes([th[4], th[5], th[6], th[7]]),
            0x1234_5678
        );
        // seq + 1 wraps.
        assert_eq!(
            u32::from_be_bytes([th[8], th[9], th[10], th[11]]),
            0xffffffff
        );
        assert_eq!(th[13], TCP_SYN | TCP_ACK);
        assert_eq!(tcp_header_len(&th), 24);
        assert_eq!(&th[20..24], &[2, 4, 0x05, 0xb4]);
        assert_eq!(u16::from_be_bytes([th[14], th[15]]), 64240);
    }

    #[test]
    fn synack_v6_swaps_and_checksums() {
        let iph = ipv6(1, 2);
        let syn = syn_header(addr_sum(&iph, false));
        let mut out = [0u8; SYNACK_V6_LEN];
        synack_v6(&iph, &syn, 7, 1440, &mut out);
        assert_eq!(out[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([out[4], out[5]]), 24);
        assert_eq!(out[6], PROTO_TCP);
        assert_eq!(&out[8..24], &iph[24..40]);
        assert_eq!(&out[24..40], &iph[8..24]);
        let mut reply = [0u8; HEADER_BUF];
        reply[..40].copy_from_slice(&out[..40]);
        let mut th = [0u8; HEADER_BUF];
        th[..24].copy_from_slice(&out[40..64]);
        assert!(tcp_ok(&th, pseudo(addr_sum(&reply, false), 24)));
        assert_eq!(&th[20..24], &[2, 4, 0x05, 0xa0]);
    }

    #[test]
    fn flag_classes() {
        assert!(is_bare_syn(TCP_SYN));
        assert!(is_bare_syn(TCP_SYN | 0x40 | 0x80));
        for f in [
            TCP_SYN | TCP_ACK,
            TCP_SYN | TCP_RST,
            TCP_SYN | TCP_FIN,
            TCP_ACK,
        ] {
            assert!(!is_bare_syn(f), "{f:#x}");
        }
        assert!(is_handshake_ack(TCP_ACK));
        assert!(is_handshake_ack(TCP_ACK | 0x08));
        assert!(is_handshake_ack(TCP_ACK | TCP_FIN));
        for f in [TCP_SYN | TCP_ACK, TCP_ACK | TCP_RST, TCP_SYN, TCP_RST] {
            assert!(!is_handshake_ack(f), "{f:#x}");
        }
    }

    #[test]
    fn window_is_a_multiple_of_mss() {
        assert_eq!(synack_window(1460), 64240);
        assert_eq!(synack_window(536), 65392);
        assert_eq!(synack_window(0), 0);
    }
}
