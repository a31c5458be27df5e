//! The packet source (`floodwall_tests::pktgen`): frames made by `BPF_PROG_TEST_RUN` live frames
//! in a sender namespace, redirected out of a veth whose peer, in a receiver namespace, runs
//! floodwall; floodwall's own counters and source table say what arrived.
//!
//! Network rule: both veth ends live in namespaces each test creates; the packet source
//! resolves its output interface and runs only inside the sender's namespace. Every send is
//! bounded in frames and in time; namespaces, veth, bpffs and state directory are removed on
//! drop, also when a test fails.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use filter_common::Reason;
use floodwall::{
    kernel::{self, AttachMode},
    limits::Limits,
};
use floodwall_tests::frames;
use floodwall_tests::netns::{Netns, VethPair, run_in};
use floodwall_tests::pktgen::{PacketSource, SendReport, Sources};
use floodwall_tests::program::Loaded;
use floodwall_tests::traffic::udp_sink;

const SENDER4: &str = "10.220.0.1";
const RECEIVER4: &str = "10.220.0.2";
const SENDER6: &str = "fd00:220::1";
const RECEIVER6: &str = "fd00:220::2";
/// Hard cap on each send in these tests.
const MAX_TIME: Duration = Duration::from_secs(10);

/// A sender and a receiver namespace joined by a veth pair, floodwall attached (native XDP) to
/// the receiver's end.
struct Bench {
    // Field order is drop order: detach and unload (in Drop) first, then the program's pins,
    // then the veth and the namespaces.
    loaded: Loaded,
    veth: VethPair,
    receiver: Netns,
    sender: Netns,
}

impl Bench {
    fn new() -> Result<Bench> {
        let sender = Netns::new("pgs")?;
        let receiver = Netns::new("pgr")?;
        let veth = VethPair::new(
            &sender,
            &receiver,
            &format!("{SENDER4}/24"),
            &format!("{RECEIVER4}/24"),
            &format!("{SENDER6}/64"),
            &format!("{RECEIVER6}/64"),
        )?;
        let loaded = Loaded::new()?;
        let bench = Bench {
            loaded,
            veth,
            receiver,
            sender,
        };
        // if_nametoindex is per namespace: attach from inside the receiver's.
        let mode = run_in(&bench.receiver, || {
            kernel::attach(&bench.loaded.paths, bench.veth.b_name(), AttachMode::Native)
        })??;
        ensure!(mode == AttachMode::Native, "attached in {mode:?} mode");
        Ok(bench)
    }

    fn source(&self) -> Result<PacketSource<'_>> {
        PacketSource::new(&self.sender, self.veth.a_name())
    }

    /// Packets floodwall counted, by reason, summed over CPUs.
    fn counted(&self, reason: Reason) -> Result<u64> {
        Ok(self.loaded.counters()?[&reason])
    }

    fn counted_total(&self) -> Result<u64> {
        Ok(self.loaded.counters()?.values().sum())
    }

    /// A UDP frame from `src` addressed to the receiver's veth end (its MAC, its address).
    fn frame_to_receiver(&self, src: IpAddr, dst_port: u16) -> Result<Vec<u8>> {
        let mut frame = frames::udp(src, 18);
        frame[..6].copy_from_slice(&self.veth.b_mac());
        frame[6..12].copy_from_slice(&self.veth.a_mac());
        let (dst_off, dst): (usize, IpAddr) = match src {
            IpAddr::V4(_) => (30, RECEIVER4.parse()?),
            IpAddr::V6(_) => (38, RECEIVER6.parse()?),
        };
        let dst = match dst {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        frame[dst_off..dst_off + dst.len()].copy_from_slice(&dst);
        let udp = if src.is_ipv4() { 34 } else { 54 };
        frame[udp + 2..udp + 4].copy_from_slice(&dst_port.to_be_bytes());
        Ok(frame)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Err(e) = kernel::detach(&self.loaded.paths, self.veth.b_name()) {
            eprintln!("pktgen test: detach: {e}");
        }
        if let Err(e) = kernel::unload(&self.loaded.paths) {
            eprintln!("pktgen test: unload: {e}");
        }
    }
}

fn report(what: &str, r: &SendReport) {
    println!(
        "pktgen: {what}: {} frames in {:.1} ms = {:.2} Mpps (kernel time {:.1} ms = {:.2} Mpps, {:.0} ns/frame)",
        r.frames,
        r.elapsed.as_secs_f64() * 1e3,
        r.rate() / 1e6,
        r.kernel_time.as_secs_f64() * 1e3,
        r.kernel_rate() / 1e6,
        r.kernel_time.as_nanos() as f64 / r.frames.max(1) as f64,
    );
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn fixed_ipv4_source_arrives_whole() -> Result<()> {
    let bench = Bench::new()?;
    let source = bench.source()?;
    let src: IpAddr = "10.220.5.5".parse()?;
    let sent = source.send(
        &frames::udp(src, 18),
        Sources::Fixed(src),
        100_000,
        MAX_TIME,
    )?;
    report("fixed IPv4 source, floodwall passing", &sent);
    ensure!(sent.frames == 100_000, "sent {} of 100000", sent.frames);
    let passed = bench.counted(Reason::Passed)?;
    let total = bench.counted_total()?;
    ensure!(
        passed == 100_000 && total == 100_000,
        "floodwall counted {passed} passed of {total} packets, want 100000 of 100000"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn random_sources_are_distinct() -> Result<()> {
    let bench = Bench::new()?;
    bench.loaded.set_limits(&Limits {
        pps: 1000,
        // Admit every new source to state of its own.
        new_sources: 0,
        ..Limits::default()
    })?;
    let source = bench.source()?;
    let sent = source.send(
        &frames::udp("10.99.0.1".parse()?, 18),
        Sources::Random {
            base: "10.99.0.0".parse()?,
            prefix_len: 16,
        },
        10_000,
        MAX_TIME,
    )?;
    report("random IPv4 sources in a /16", &sent);
    ensure!(sent.frames == 10_000, "sent {} of 10000", sent.frames);
    let total = bench.counted_total()?;
    ensure!(
        total == 10_000,
        "floodwall counted {total} of 10000 packets"
    );
    let sources = kernel::read_sources(&bench.loaded.paths)?;
    // 10,000 draws from 65,536 addresses give about 9,270 distinct ones.
    ensure!(
        sources.len() as u64 * 10 >= sent.frames * 9,
        "{} distinct sources for {} frames, want at least 90%",
        sources.len(),
        sent.frames
    );
    for (key, _) in &sources {
        ensure!(
            key.addr[..2] == [10, 99],
            "source {:?} outside 10.99.0.0/16",
            &key.addr[..4]
        );
    }
    println!(
        "pktgen: {} distinct sources from {} random frames",
        sources.len(),
        sent.frames
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn fixed_ipv6_source_arrives() -> Result<()> {
    let bench = Bench::new()?;
    let source = bench.source()?;
    let src: IpAddr = "2001:db8:77::5".parse()?;
    let sent = source.send(&frames::udp(src, 18), Sources::Fixed(src), 10_000, MAX_TIME)?;
    report("fixed IPv6 source", &sent);
    ensure!(sent.frames == 10_000, "sent {} of 10000", sent.frames);
    let passed = bench.counted(Reason::Passed)?;
    ensure!(passed == 10_000, "floodwall passed {passed} of 10000");
    Ok(())
}

/// Rewritten frames keep valid IPv4 and UDP checksums: the receiver's own stack delivers them
/// to a socket (it drops frames with a bad checksum). A few frames only: a socket's receive
/// buffer would overflow at this rate.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn rewritten_frames_pass_the_receivers_stack() -> Result<()> {
    const FRAMES: u64 = 40;
    let bench = Bench::new()?;
    for (bind, sources) in [
        (RECEIVER4, vec!["10.220.0.10", "10.220.0.11", "10.220.0.12"]),
        (RECEIVER6, vec!["fd00:220::10", "fd00:220::11:ffff"]),
    ] {
        let bind: IpAddr = bind.parse()?;
        let sink = udp_sink(&bench.receiver, SocketAddr::new(bind, 0))?;
        let port = sink.local_addr()?.port();
        let sources = sources
            .iter()
            .map(|s| s.parse().context("address"))
            .collect::<Result<Vec<IpAddr>>>()?;
        let template = bench.frame_to_receiver(sources[0], port)?;
        let source = bench.source()?;
        let sent = source.send(&template, Sources::Set(sources), FRAMES, MAX_TIME)?;
        ensure!(sent.frames == FRAMES, "sent {} of {FRAMES}", sent.frames);
        let got = sink.count_for(Duration::from_millis(500))?;
        ensure!(
            got as u64 == FRAMES,
            "the receiver's socket on {bind} got {got} of {FRAMES} datagrams"
        );
    }
    Ok(())
}

/// Throughput into a floodwall-attached veth: a fixed source (one LRU hit per frame with the
/// per-source limit on) and random sources (a new source per frame). Asserts only that every
/// frame sent is counted; prints the rates.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn throughput_into_floodwall() -> Result<()> {
    const FRAMES: u64 = 2_000_000;
    let bench = Bench::new()?;
    let source = bench.source()?;
    let template = frames::udp("10.98.0.1".parse()?, 18);
    let mut expected = 0;
    for (what, limits, sources) in [
        (
            "fixed source, no limits (pass)",
            Limits::default(),
            Sources::Fixed("10.98.0.1".parse()?),
        ),
        (
            "fixed source, 1000 pps limit (drop)",
            Limits {
                pps: 1000,
                ..Limits::default()
            },
            Sources::Fixed("10.98.0.1".parse()?),
        ),
        (
            "random /8 sources, 1000 pps limit, default admission",
            Limits {
                pps: 1000,
                ..Limits::default()
            },
            Sources::Random {
                base: "10.0.0.0".parse()?,
                prefix_len: 8,
            },
        ),
    ] {
        bench.loaded.set_limits(&limits)?;
        let sent = source.send(&template, sources, FRAMES, MAX_TIME)?;
        report(what, &sent);
        expected += sent.frames;
        let total = bench.counted_total()?;
        ensure!(
            total == expected,
            "floodwall counted {total} packets, {expected} sent so far"
        );
    }
    Ok(())
}

/// A send asked for more frames than fit in its time stops at its time cap, by itself.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn send_stops_at_its_time_cap() -> Result<()> {
    let bench = Bench::new()?;
    let source = bench.source()?;
    let cap = Duration::from_millis(300);
    let src: IpAddr = "10.97.0.1".parse()?;
    let sent = source.send(&frames::udp(src, 18), Sources::Fixed(src), u64::MAX, cap)?;
    report("time-capped send", &sent);
    ensure!(
        sent.elapsed >= cap && sent.elapsed < cap + Duration::from_millis(500),
        "a send capped at {cap:?} took {:?}",
        sent.elapsed
    );
    ensure!(
        sent.frames < floodwall_tests::pktgen::MAX_FRAMES,
        "sent {} frames",
        sent.frames
    );
    let total = bench.counted_total()?;
    ensure!(
        total == sent.frames,
        "floodwall counted {total} of {} packets",
        sent.frames
    );
    Ok(())
}
