//! A fast packet source: the `pktgen` XDP program (`filter-ebpf/src/bin/pktgen.rs`) run with
//! `BPF_PROG_TEST_RUN` in live-frames mode. The kernel makes frames from one template, the
//! program rewrites each frame's source address and `bpf_redirect`s it out of a veth; about
//! 7 Mpps on the project's 2-core VM, far more than any socket-based sender.
//!
//! Network rule: the output interface is resolved, and every test run made, by a thread that
//! has entered the sender's namespace, so `bpf_redirect`'s ifindex can only name an interface
//! of that namespace. Use a veth end whose peer is in another namespace the test created (see
//! [`crate::netns::VethPair`]). Every [`PacketSource::send`] is bounded in frames and in time.
//!
//! The peer must be able to take XDP frames: a veth accepts redirected frames only while its
//! peer has an XDP program attached (or GRO on); otherwise the kernel drops them silently.
//!
//! Checksums: by default the template's IPv4 header checksum and its TCP/UDP checksum (a
//! well-formed, unfragmented TCP or UDP segment contained whole in the template, IPv4 or IPv6
//! without extension headers) are computed on the host, and the kernel program updates them
//! incrementally for every new source address, so frames pass the receiver's own stack.
//! floodwall itself checks neither. [`PacketSource::checksums`]`(false)` sends the template's
//! checksums unchanged (wrong once the address changes, unless the UDP checksum is 0 over IPv4).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use filter_common::pktgen::{self, PktgenConfig};
use floodwall::{PKTGEN_OBJECT, kernel};

use crate::netns::{Netns, run_in};

/// Hard cap on the frames one [`PacketSource::send`] sends, whatever it is asked for.
pub const MAX_FRAMES: u64 = 200_000_000;
/// Hard cap on the time one [`PacketSource::send`] takes, whatever it is asked for.
pub const MAX_TIME: Duration = Duration::from_secs(60);
/// Largest number of addresses in [`Sources::Set`] (the program's set map capacity).
pub const SET_CAPACITY: usize = pktgen::PKTGEN_SET_CAPACITY as usize;
/// Live frames fit in one page with the kernel's headroom and tailroom: stay well inside it.
pub const MAX_FRAME_LEN: usize = 3000;
/// The kernel's default live-frames batch (`NAPI_POLL_WEIGHT`); at most this many frames are
/// queued on the peer before its NAPI poll runs, so none overflow its 256-entry ring.
pub const DEFAULT_BATCH: u32 = 64;
/// `TEST_XDP_MAX_BATCH`: the kernel refuses larger batches (E2BIG).
pub const MAX_BATCH: u32 = 256;

const ETH_HLEN: usize = 14;
/// Largest `repeat` of one test run; runs are also sized to take about [`CHUNK_TIME`].
const MAX_CHUNK: u64 = 1_000_000;
const FIRST_CHUNK: u64 = 16_384;
const CHUNK_TIME: Duration = Duration::from_millis(50);

const PROGRAM: &str = "pktgen";
const MAP_CONFIG: &str = "PKTGEN_CONFIG";
const MAP_SET: &str = "PKTGEN_SET";
const MAP_CURSOR: &str = "PKTGEN_CURSOR";
const MAP_TEMPLATE: &str = "PKTGEN_TEMPLATE";
const MAP_NEXT: &str = "PKTGEN_NEXT";

const MODE_PREFIX: u32 = pktgen::PKTGEN_MODE_PREFIX;
const MODE_SET: u32 = pktgen::PKTGEN_MODE_SET;
const FLAG_L4_UDP: u32 = pktgen::PKTGEN_FLAG_L4_UDP;
/// The kernel program masks offsets with this (even, bounded).
const OFFSET_MASK: usize = pktgen::PKTGEN_OFFSET_MASK as usize;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Which source address each frame gets. All addresses must be of the template's family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sources {
    /// Every frame from this address.
    Fixed(IpAddr),
    /// The addresses in turn (round robin per CPU), at most [`SET_CAPACITY`].
    Set(Vec<IpAddr>),
    /// A random address in `base/prefix_len` for every frame (`bpf_get_prandom_u32`).
    Random { base: IpAddr, prefix_len: u8 },
}

/// What one [`PacketSource::send`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SendReport {
    /// Frames the kernel ran the program on and redirected. A frame the veth cannot take is
    /// dropped by the kernel without telling: count what arrives on the receiving side.
    pub frames: u64,
    /// Wall time of the whole send.
    pub elapsed: Duration,
    /// Time the kernel spent in the test runs (including the receiver's softirq work done on
    /// this CPU), without the time this thread was scheduled out: less sensitive to other
    /// load on the machine than `elapsed`.
    pub kernel_time: Duration,
}

impl SendReport {
    /// Frames per second.
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Frames per second of kernel time (see [`SendReport::kernel_time`]).
    pub fn kernel_rate(&self) -> f64 {
        self.frames as f64 / self.kernel_time.as_secs_f64().max(1e-9)
    }
}

/// Where the template's fields are.
#[derive(Clone, Copy, Debug)]
struct Layout {
    v6: bool,
    addr_off: usize,
    /// IPv4 header: offset and length.
    l3: Option<(usize, usize)>,
    l4: Option<L4>,
}

#[derive(Clone, Copy, Debug)]
struct L4 {
    off: usize,
    len: usize,
    proto: u8,
}

impl L4 {
    fn csum_off(&self) -> usize {
        self.off + if self.proto == PROTO_UDP { 6 } else { 16 }
    }
}

fn be16(frame: &[u8], off: usize) -> usize {
    usize::from(u16::from_be_bytes([frame[off], frame[off + 1]]))
}

impl Layout {
    /// Ethernet, up to two VLAN tags, IPv4 or IPv6; TCP/UDP when whole and unfragmented.
    fn locate(frame: &[u8]) -> Result<Layout> {
        ensure!(
            (ETH_HLEN..=MAX_FRAME_LEN).contains(&frame.len()),
            "template of {} bytes: live frames need {ETH_HLEN} to {MAX_FRAME_LEN} bytes",
            frame.len()
        );
        let mut off = ETH_HLEN;
        let mut ether_type = be16(frame, 12);
        for _ in 0..2 {
            if ether_type != 0x8100 && ether_type != 0x88a8 {
                break;
            }
            ensure!(frame.len() >= off + 4, "template truncated in a VLAN tag");
            ether_type = be16(frame, off + 2);
            off += 4;
        }
        let layout = match ether_type {
            0x0800 => {
                ensure!(
                    frame.len() >= off + 20,
                    "template truncated in the IPv4 header"
                );
                ensure!(
                    frame[off] >> 4 == 4,
                    "template's IPv4 header has version != 4"
                );
                let ihl = usize::from(frame[off] & 0x0f) * 4;
                ensure!(
                    ihl >= 20 && frame.len() >= off + ihl,
                    "template's IPv4 header length {ihl} is invalid or truncated"
                );
                let total = be16(frame, off + 2);
                let proto = frame[off + 9];
                let unfragmented = be16(frame, off + 6) & 0x3fff == 0;
                let l4 =
                    (unfragmented && total >= ihl && off + total <= frame.len()).then_some(L4 {
                        off: off + ihl,
                        len: total - ihl,
                        proto,
                    });
                Layout {
                    v6: false,
                    addr_off: off + 12,
                    l3: Some((off, ihl)),
                    l4,
                }
            }
            0x86dd => {
                ensure!(
                    frame.len() >= off + 40,
                    "template truncated in the IPv6 header"
                );
                ensure!(
                    frame[off] >> 4 == 6,
                    "template's IPv6 header has version != 6"
                );
                let payload = be16(frame, off + 4);
                let l4 = (off + 40 + payload <= frame.len()).then_some(L4 {
                    off: off + 40,
                    len: payload,
                    proto: frame[off + 6],
                });
                Layout {
                    v6: true,
                    addr_off: off + 8,
                    l3: None,
                    l4,
                }
            }
            other => bail!("template is neither IPv4 nor IPv6 (ether type {other:#06x})"),
        };
        let l4 = layout.l4.filter(|l4| match l4.proto {
            PROTO_UDP => l4.len >= 8,
            PROTO_TCP => l4.len >= 20,
            _ => false,
        });
        Ok(Layout { l4, ..layout })
    }

    fn addr_len(&self) -> usize {
        if self.v6 { 16 } else { 4 }
    }

    /// Recomputes the IPv4 header checksum and the TCP/UDP checksum of `frame`.
    fn fix_checksums(&self, frame: &mut [u8]) {
        if let Some((off, ihl)) = self.l3 {
            frame[off + 10..off + 12].fill(0);
            let sum = ones_sum(&frame[off..off + ihl], 0);
            frame[off + 10..off + 12].copy_from_slice(&(!sum).to_be_bytes());
        }
        if let Some(l4) = self.l4 {
            let csum = l4.csum_off();
            frame[csum..csum + 2].fill(0);
            let addrs = &frame[self.addr_off..self.addr_off + 2 * self.addr_len()];
            let mut pseudo = ones_sum(addrs, 0);
            pseudo = ones_sum(&(l4.len as u32).to_be_bytes(), pseudo);
            pseudo = ones_sum(&[0, l4.proto], pseudo);
            let mut sum = !ones_sum(&frame[l4.off..l4.off + l4.len], pseudo);
            if sum == 0 && l4.proto == PROTO_UDP {
                sum = 0xffff;
            }
            frame[csum..csum + 2].copy_from_slice(&sum.to_be_bytes());
        }
    }
}

/// The folded one's-complement sum of `data` (big-endian words, odd byte padded) plus `init`.
fn ones_sum(data: &[u8], init: u16) -> u16 {
    let mut sum = u64::from(init);
    for chunk in data.chunks(2) {
        let hi = u64::from(chunk[0]) << 8;
        sum += hi | chunk.get(1).copied().map_or(0, u64::from);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Raw bytes as the kernel program's words (native order views of network-order bytes).
fn words(bytes: &[u8]) -> [u32; 4] {
    let mut padded = [0u8; 16];
    padded[..bytes.len()].copy_from_slice(bytes);
    let mut out = [0u32; 4];
    for (word, chunk) in out.iter_mut().zip(padded.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

struct Maps {
    config: Array<MapData, PktgenConfig>,
    template: Array<MapData, [u8; pktgen::PKTGEN_TEMPLATE_CAPACITY]>,
    set: Array<MapData, [u32; 4]>,
    cursor: PerCpuArray<MapData, u32>,
    /// The program array of `PKTGEN_FLAG_CHAIN`.
    next: MapData,
}

/// The loaded `pktgen` program with its own (unpinned) maps, bound to one output interface in
/// one namespace. Everything is released on drop.
pub struct PacketSource<'a> {
    ns: &'a Netns,
    out_ifname: String,
    out_ifindex: u32,
    batch: u32,
    fix_checksums: bool,
    restore_template: bool,
    /// The CPU the sending thread is pinned to, if any.
    cpu: Option<usize>,
    maps: Mutex<Maps>,
    // After `maps`: the program is dropped last.
    ebpf: Ebpf,
}

impl<'a> PacketSource<'a> {
    /// Loads the program and resolves `out_ifname` inside `ns_of_sender`.
    pub fn new(ns_of_sender: &'a Netns, out_ifname: &str) -> Result<PacketSource<'a>> {
        let out_ifindex = run_in(ns_of_sender, || kernel::ifindex(out_ifname))?
            .with_context(|| format!("no interface {out_ifname} in {}", ns_of_sender.name()))?;
        let mut ebpf = EbpfLoader::new()
            .load(PKTGEN_OBJECT)
            .context("loading the pktgen object")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .context("no pktgen program in the object")?
            .try_into()
            .context("pktgen is not an XDP program")?;
        program.load().context("the kernel refused pktgen")?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("no map {name} in the pktgen object"))
        };
        let maps = Maps {
            config: take(MAP_CONFIG)?.try_into()?,
            set: take(MAP_SET)?.try_into()?,
            template: take(MAP_TEMPLATE)?.try_into()?,
            cursor: take(MAP_CURSOR)?.try_into()?,
            next: match take(MAP_NEXT)? {
                aya::maps::Map::ProgramArray(data) => data,
                _ => bail!("{MAP_NEXT} is not a program array"),
            },
        };
        Ok(PacketSource {
            ns: ns_of_sender,
            out_ifname: out_ifname.to_owned(),
            out_ifindex,
            batch: DEFAULT_BATCH,
            fix_checksums: true,
            restore_template: false,
            cpu: None,
            maps: Mutex::new(maps),
            ebpf,
        })
    }

    /// Frames per kernel batch (1 to [`MAX_BATCH`]; default [`DEFAULT_BATCH`]).
    pub fn batch(mut self, batch: u32) -> Result<PacketSource<'a>> {
        ensure!(
            (1..=MAX_BATCH).contains(&batch),
            "batch {batch} out of range: use 1 to {MAX_BATCH}"
        );
        self.batch = batch;
        Ok(self)
    }

    /// Whether every frame is rewritten whole from the template (default off). Needed when the
    /// receiver rewrites frames in place, as a SYN challenge answering with `XDP_TX` does:
    /// live-frame pages come back with what it left in them.
    pub fn restore_template(mut self, restore: bool) -> PacketSource<'a> {
        self.restore_template = restore;
        self
    }

    /// Sends from a thread pinned to `cpu` (default: wherever the scheduler puts it).
    pub fn on_cpu(mut self, cpu: usize) -> PacketSource<'a> {
        self.cpu = Some(cpu);
        self
    }

    /// Whether to compute and keep up to date the IPv4 and TCP/UDP checksums (default on).
    pub fn checksums(mut self, fix: bool) -> PacketSource<'a> {
        self.fix_checksums = fix;
        self
    }

    /// The interface frames go out of, in the sender's namespace.
    pub fn out_ifname(&self) -> &str {
        &self.out_ifname
    }

    /// Sends `frames` copies of `template` (at most [`MAX_FRAMES`]), each with a source address
    /// from `sources`, and stops after `max_time` (at most [`MAX_TIME`]) even if not done.
    ///
    /// Runs `BPF_PROG_TEST_RUN` repeatedly, each run sized to take about 50 ms (at most 1M
    /// frames), from a thread inside the sender's namespace. What the kernel requires of a
    /// live-frames run (`net/bpf/test_run.c`), and this meets: flags exactly
    /// `BPF_F_TEST_XDP_LIVE_FRAMES`; `batch_size` 0 (= 64) to 256, else E2BIG; `data_in` of at
    /// least `ETH_HLEN` bytes and small enough to fit one page after the headroom, the page head
    /// and `skb_shared_info` (no jumbo frames); no `data_out` or `ctx_out`; `repeat` 0 means 1.
    pub fn send(
        &self,
        template: &[u8],
        sources: Sources,
        frames: u64,
        max_time: Duration,
    ) -> Result<SendReport> {
        let frames = frames.min(MAX_FRAMES);
        let max_time = max_time.min(MAX_TIME);
        let mut maps = self.lock_maps()?;
        let frame = self.prepare(&mut maps, template, &sources)?;
        if self.restore_template {
            ensure!(
                frame.len() <= pktgen::PKTGEN_TEMPLATE_CAPACITY,
                "a template of {} bytes cannot be restored (at most {})",
                frame.len(),
                pktgen::PKTGEN_TEMPLATE_CAPACITY
            );
            let mut template = [0u8; pktgen::PKTGEN_TEMPLATE_CAPACITY];
            template[..frame.len()].copy_from_slice(&frame);
            maps.template
                .set(0, template, 0)
                .context("writing the pktgen template")?;
            let mut config = maps
                .config
                .get(&0, 0)
                .context("reading the pktgen config")?;
            config.flags |= pktgen::PKTGEN_FLAG_RESTORE;
            config.template_len = frame.len() as u32;
            maps.config
                .set(0, config, 0)
                .context("writing the pktgen config")?;
        }
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM)
            .context("no pktgen program")?
            .try_into()?;
        let (batch, cpu) = (self.batch, self.cpu);
        run_in(self.ns, || -> Result<SendReport> {
            if let Some(cpu) = cpu {
                crate::program::pin_to_cpu(cpu);
            }
            let start = Instant::now();
            let deadline = start + max_time;
            let mut sent = 0u64;
            let mut kernel_time = Duration::ZERO;
            let mut chunk = FIRST_CHUNK;
            while sent < frames && Instant::now() < deadline {
                let repeat = (frames - sent).min(chunk);
                let t0 = Instant::now();
                let opts = TestRunOptions {
                    data_in: Some(&frame),
                    // Live frames: data_out and ctx_out must be absent.
                    repeat: u32::try_from(repeat)?,
                    attrs: TestRunAttrs::new().xdp_live_frames(batch),
                    ..TestRunOptions::default()
                };
                let run = program
                    .test_run(opts)
                    .context("BPF_PROG_TEST_RUN with live frames")?;
                // The kernel reports the mean time per frame.
                kernel_time += run.duration * u32::try_from(repeat)?;
                sent += repeat;
                // Size the next run to take about CHUNK_TIME, and no more than the time left.
                let rate = repeat as f64 / t0.elapsed().as_secs_f64().max(1e-6);
                let left = deadline.saturating_duration_since(Instant::now());
                let target = (rate * CHUNK_TIME.min(left).as_secs_f64()) as u64;
                chunk = target.clamp(u64::from(batch), MAX_CHUNK);
            }
            Ok(SendReport {
                frames: sent,
                elapsed: start.elapsed(),
                kernel_time,
            })
        })?
    }

    /// Runs `repeat` copies of `template`, each with a source from `sources`, through the XDP
    /// program `next` by a tail call from the packet source instead of out of a veth: plain
    /// `BPF_PROG_TEST_RUN`, no live frames, so the frame is the same buffer rewritten run after
    /// run (the checksums are updated from its contents). The kernel's time is the rewrite plus
    /// `next`'s run. Returns the last verdict and the kernel's mean ns per frame.
    pub fn run_chained(
        &self,
        template: &[u8],
        sources: Sources,
        next: std::os::fd::BorrowedFd<'_>,
        repeat: u32,
    ) -> Result<(u32, u64)> {
        use std::os::fd::AsFd as _;
        let mut maps = self.lock_maps()?;
        let frame = self.prepare(&mut maps, template, &sources)?;
        let mut config = maps
            .config
            .get(&0, 0)
            .context("reading the pktgen config")?;
        config.flags |= pktgen::PKTGEN_FLAG_CHAIN;
        maps.config
            .set(0, config, 0)
            .context("writing the pktgen config")?;
        crate::receivers::set_program_slot(maps.next.fd().as_fd(), 0, next)?;
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM)
            .context("no pktgen program")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let run = program
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN of the chained packet source")?;
        Ok((run.return_value, run.duration.as_nanos() as u64))
    }

    fn lock_maps(&self) -> Result<std::sync::MutexGuard<'_, Maps>> {
        self.maps
            .lock()
            .map_err(|_| anyhow::anyhow!("pktgen maps poisoned by a panicked send"))
    }

    /// Configures the program for `sources` and returns the frame to run: `template` with the
    /// first address and, if asked for, its checksums right.
    fn prepare(&self, maps: &mut Maps, template: &[u8], sources: &Sources) -> Result<Vec<u8>> {
        let layout = Layout::locate(template)?;
        let mut frame = template.to_vec();
        let first = self.configure(maps, &layout, sources)?;
        frame[layout.addr_off..layout.addr_off + layout.addr_len()].copy_from_slice(&first);
        if self.fix_checksums {
            layout.fix_checksums(&mut frame);
        }
        Ok(frame)
    }

    /// Writes the program's configuration for `sources`; returns the first address, which goes
    /// into the template (so its checksums start out right).
    fn configure(&self, maps: &mut Maps, layout: &Layout, sources: &Sources) -> Result<Vec<u8>> {
        let family_ok = |a: &IpAddr| a.is_ipv6() == layout.v6;
        let family = if layout.v6 { "IPv6" } else { "IPv4" };
        let mut config = PktgenConfig {
            out_ifindex: self.out_ifindex,
            addr_off: layout.addr_off as u32,
            addr_len: layout.addr_len() as u32,
            ..PktgenConfig::default()
        };
        if self.fix_checksums {
            if let Some((off, _)) = layout.l3 {
                config.l3_csum_off = (off + 10) as u32;
            }
            if let Some(l4) = layout.l4 {
                config.l4_csum_off = l4.csum_off() as u32;
                if l4.proto == PROTO_UDP {
                    config.flags |= FLAG_L4_UDP;
                }
            }
        }
        for off in [config.addr_off, config.l3_csum_off, config.l4_csum_off] {
            ensure!(
                off as usize & !OFFSET_MASK == 0,
                "header field at offset {off} is beyond what pktgen can rewrite"
            );
        }
        let first = match sources {
            Sources::Fixed(addr) => {
                ensure!(
                    family_ok(addr),
                    "source {addr} is not {family} like the template"
                );
                config.mode = MODE_PREFIX;
                config.base = words(&octets(*addr));
                octets(*addr)
            }
            Sources::Set(addrs) => {
                ensure!(
                    (1..=SET_CAPACITY).contains(&addrs.len()),
                    "a set of {} sources: use 1 to {SET_CAPACITY}",
                    addrs.len()
                );
                for (i, addr) in addrs.iter().enumerate() {
                    ensure!(
                        family_ok(addr),
                        "source {addr} is not {family} like the template"
                    );
                    maps.set
                        .set(i as u32, words(&octets(*addr)), 0)
                        .context("writing the source set")?;
                }
                let cpus =
                    aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
                maps.cursor
                    .set(0, PerCpuValues::try_from(vec![0u32; cpus])?, 0)
                    .context("resetting the set cursor")?;
                config.mode = MODE_SET;
                config.set_len = addrs.len() as u32;
                octets(addrs[0])
            }
            Sources::Random { base, prefix_len } => {
                ensure!(
                    family_ok(base),
                    "source {base} is not {family} like the template"
                );
                let bits = layout.addr_len() * 8;
                let prefix_len = usize::from(*prefix_len);
                ensure!(
                    prefix_len <= bits,
                    "prefix length /{prefix_len} is longer than {family}'s {bits} bits"
                );
                let mut base = octets(*base);
                let mut hostmask = vec![0u8; base.len()];
                for (i, (b, m)) in base.iter_mut().zip(hostmask.iter_mut()).enumerate() {
                    let net_bits = prefix_len.saturating_sub(i * 8).min(8);
                    let net_mask = (0xff00u16 >> net_bits) as u8;
                    *m = !net_mask;
                    *b &= net_mask;
                }
                config.mode = MODE_PREFIX;
                config.base = words(&base);
                config.hostmask = words(&hostmask);
                base
            }
        };
        maps.config
            .set(0, config, 0)
            .context("writing the pktgen config")?;
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames;

    #[test]
    fn locates_ipv4_udp_and_fixes_checksums() -> Result<()> {
        let mut frame = frames::udp("10.1.2.3".parse()?, 18);
        let layout = Layout::locate(&frame)?;
        assert!(!layout.v6);
        assert_eq!(layout.addr_off, 26);
        assert_eq!(layout.l3, Some((14, 20)));
        let l4 = layout.l4.context("udp")?;
        assert_eq!((l4.off, l4.len, l4.csum_off()), (34, 26, 40));
        layout.fix_checksums(&mut frame);
        // A correct checksum sums (with itself) to 0xffff.
        assert_eq!(ones_sum(&frame[14..34], 0), 0xffff);
        let mut pseudo = ones_sum(&frame[26..34], 0);
        pseudo = ones_sum(&[0, 0, 0, 26, 0, PROTO_UDP], pseudo);
        assert_eq!(ones_sum(&frame[34..], pseudo), 0xffff);
        Ok(())
    }

    #[test]
    fn locates_ipv6_behind_two_vlan_tags() -> Result<()> {
        let inner = frames::udp("2001:db8::1".parse()?, 4);
        let mut frame = inner[..12].to_vec();
        frame.extend_from_slice(&[0x88, 0xa8, 0, 1, 0x81, 0x00, 0, 2]);
        frame.extend_from_slice(&inner[12..]);
        let layout = Layout::locate(&frame)?;
        assert!(layout.v6);
        assert_eq!(layout.addr_off, 14 + 8 + 8);
        assert!(layout.l3.is_none());
        assert_eq!(layout.l4.map(|l| l.csum_off()), Some(14 + 8 + 40 + 6));
        Ok(())
    }

    #[test]
    fn rejects_non_ip_and_short_templates() {
        assert!(
            Layout::locate(&frames::Frame::eth(frames::ETH_P_ARP).raw(&[0; 28]).build()).is_err()
        );
        assert!(Layout::locate(&[0u8; 10]).is_err());
        assert!(Layout::locate(&vec![0u8; MAX_FRAME_LEN + 1]).is_err());
    }

    /// The kernel's incremental update (RFC 1624 eqn. 3 on native-order words) agrees with a
    /// full recomputation.
    #[test]
    fn incremental_update_matches_recomputation() -> Result<()> {
        let mut frame = frames::udp("10.1.2.3".parse()?, 18);
        let layout = Layout::locate(&frame)?;
        layout.fix_checksums(&mut frame);
        let mut incremental = frame.clone();
        let new = [192u8, 168, 77, 250];
        let mut delta = 0u32;
        for i in 0..2 {
            let at = 26 + 2 * i;
            let old = u16::from_ne_bytes([incremental[at], incremental[at + 1]]);
            let word = u16::from_ne_bytes([new[2 * i], new[2 * i + 1]]);
            incremental[at..at + 2].copy_from_slice(&word.to_ne_bytes());
            delta += u32::from(!old) + u32::from(word);
        }
        for at in [24, 40] {
            let old = u16::from_ne_bytes([incremental[at], incremental[at + 1]]);
            let mut sum = u32::from(!old) + delta;
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            incremental[at..at + 2].copy_from_slice(&(!(sum as u16)).to_ne_bytes());
        }
        frame[26..30].copy_from_slice(&new);
        layout.fix_checksums(&mut frame);
        assert_eq!(incremental, frame);
        Ok(())
    }
}
