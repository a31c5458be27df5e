//! The configuration record of the `pktgen` packet source (`filter-ebpf/src/bin/pktgen.rs`,
//! driven by `floodwall-tests`' `pktgen` module). Not part of floodwall's data path: it lives
//! here only so the kernel program and its userspace share one declaration.

/// Every frame gets `base | (random & hostmask)`; a zero hostmask makes it a fixed address.
pub const PKTGEN_MODE_PREFIX: u32 = 0;
/// Frames take the addresses of `PKTGEN_SET[0..set_len]` in turn (round robin per CPU).
pub const PKTGEN_MODE_SET: u32 = 1;
/// The L4 checksum is UDP's: 0 means "none" (left alone) and a computed 0 is sent as 0xffff.
pub const PKTGEN_FLAG_L4_UDP: u32 = 1;
/// Every frame is first rewritten whole from `PKTGEN_TEMPLATE`: live-frame pages are recycled
/// with what the receiver left in them, and a receiver that rewrites frames (`XDP_TX` of a
/// SYN-ACK) would otherwise turn the source's frames into its own replies.
pub const PKTGEN_FLAG_RESTORE: u32 = 2;
/// Every rewritten frame is handed to the program in slot 0 of `PKTGEN_NEXT` (a tail call)
/// instead of redirected: a program's cost on a new source per frame, without a veth.
pub const PKTGEN_FLAG_CHAIN: u32 = 4;
/// Capacity of `PKTGEN_TEMPLATE` (a power of two: the kernel bounds lengths by masking).
pub const PKTGEN_TEMPLATE_CAPACITY: usize = 128;
/// Capacity of `PKTGEN_SET`.
pub const PKTGEN_SET_CAPACITY: u32 = 1 << 16;
/// Offsets are masked with this: even (16-bit access) and bounded for the verifier.
pub const PKTGEN_OFFSET_MASK: u32 = 0x7fe;

/// The configuration record. Addresses and masks are raw network-order bytes viewed as
/// native `u32`s; only bitwise operations touch them, so byte order does not matter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktgenConfig {
    pub out_ifindex: u32,
    /// `PKTGEN_MODE_PREFIX` or `PKTGEN_MODE_SET`.
    pub mode: u32,
    /// Offset of the source address in the frame (even).
    pub addr_off: u32,
    /// 4 or 16.
    pub addr_len: u32,
    /// Offset of the IPv4 header checksum, 0 for none.
    pub l3_csum_off: u32,
    /// Offset of the TCP/UDP checksum, 0 for none.
    pub l4_csum_off: u32,
    /// `PKTGEN_FLAG_*`.
    pub flags: u32,
    /// Entries of `PKTGEN_SET` in use (`PKTGEN_MODE_SET`).
    pub set_len: u32,
    pub base: [u32; 4],
    pub hostmask: [u32; 4],
    /// Bytes of `PKTGEN_TEMPLATE` in use (`PKTGEN_FLAG_RESTORE`).
    pub template_len: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<PktgenConfig>() == 72);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], Copy, only u32 fields and arrays, no padding (size asserted above),
    // so every bit pattern is valid.
    unsafe impl aya::Pod for super::PktgenConfig {}
}
