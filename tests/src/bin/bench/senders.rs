//! Throughput into a veth with a packet source on each CPU, as a NIC spreads a flood over its
//! queues: the veth has a queue per CPU, so each sender's frames are received (and run through
//! the receiver's XDP program) in its own CPU's NAPI poll. One sender alone, then both at
//! once; the kernel time per frame of each.

use anyhow::{Result, ensure};
use filter_common::Reason;
use floodwall::{limits::Limits, state::ListKind};
use floodwall_tests::{
    pktgen::PacketSource,
    program::Loaded,
    receivers::{BareProgram, XDP_DROP},
};

use crate::{COMPARE_PPS, Flood, Mode, SEND_CAP, Topology, WARMUP_FRAMES, median_f};

pub struct SenderRow {
    pub receiver: &'static str,
    pub flood: Flood,
    /// Kernel ns per frame, one sender (CPU 0).
    pub one_ns: f64,
    /// Kernel ns per frame, a sender on each CPU at once.
    pub both_ns: f64,
    /// Median of the samples' both / one.
    pub ratio: f64,
}

/// Rounds, in units of the mode's throughput samples: the veth rows are noisy, and a ratio
/// of two of them more so.
pub const SAMPLES_FACTOR: usize = 3;

/// `SAMPLES_FACTOR * tput_samples` rounds; in each, every flood in turn is sent by one
/// sender, then by both, so the cases of one receiver (and the reference among them) see the
/// same drift of the shared machine. `counted` returns the receiver's frame count (if it
/// counts), which must grow by exactly what was sent.
fn measure(
    topo: &Topology,
    senders: &[PacketSource<'_>; 2],
    mode: &Mode,
    receiver: &'static str,
    floods: &[Flood],
    counted: &dyn Fn() -> Result<Option<u64>>,
) -> Result<Vec<SenderRow>> {
    let template = topo.template()?;
    let mut samples: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); floods.len()];
    for flood in floods {
        senders[0].send(&template, flood.sources(), WARMUP_FRAMES, SEND_CAP)?;
    }
    for _ in 0..mode.tput_samples * SAMPLES_FACTOR {
        for (flood, (ones, boths, ratios)) in floods.iter().zip(&mut samples) {
            let send =
                |i: usize| senders[i].send(&template, flood.sources(), mode.tput_frames, SEND_CAP);
            let before = counted()?;
            let one = send(0)?;
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| send(0));
                let b = s.spawn(|| send(1));
                (a.join(), b.join())
            });
            let panicked = || anyhow::anyhow!("sender panicked");
            let (a, b) = (a.map_err(|_| panicked())??, b.map_err(|_| panicked())??);
            let sent = one.frames + a.frames + b.frames;
            if let (Some(before), Some(after)) = (before, counted()?) {
                ensure!(
                    after - before == sent,
                    "{receiver} / {}: counted {} of {sent} frames",
                    flood.name(),
                    after - before
                );
            }
            let one_ns = one.kernel_time.as_nanos() as f64 / one.frames.max(1) as f64;
            let both_ns = (a.kernel_time + b.kernel_time).as_nanos() as f64
                / (a.frames + b.frames).max(1) as f64;
            ones.push(one_ns);
            boths.push(both_ns);
            ratios.push(both_ns / one_ns);
        }
    }
    let rows: Vec<SenderRow> = floods
        .iter()
        .zip(&samples)
        .map(|(flood, (ones, boths, ratios))| SenderRow {
            receiver,
            flood: *flood,
            one_ns: median_f(ones),
            both_ns: median_f(boths),
            ratio: median_f(ratios),
        })
        .collect();
    for row in &rows {
        eprintln!(
            "two senders: {receiver} / {}: one {:.0} ns/frame, both {:.0}, x{:.3}",
            row.flood.name(),
            row.one_ns,
            row.both_ns,
            row.ratio
        );
    }
    Ok(rows)
}

pub fn two_senders(mode: &Mode) -> Result<Vec<SenderRow>> {
    let topo = Topology::with_queues(2)?;
    let ifname = topo.veth.b_name().to_owned();
    let senders = [
        PacketSource::new(&topo.sender, topo.veth.a_name())?.on_cpu(0),
        PacketSource::new(&topo.sender, topo.veth.a_name())?.on_cpu(1),
    ];
    let mut rows = Vec::new();
    {
        let bare = BareProgram::load(XDP_DROP)?;
        let _link = bare.attach(&topo.receiver, &ifname)?;
        rows.extend(measure(
            &topo,
            &senders,
            mode,
            "bare XDP_DROP",
            &[Flood::Fixed, Flood::Random],
            &|| Ok(None),
        )?);
    }
    let loaded = Loaded::new()?;
    loaded.add(ListKind::Block, &["203.0.113.0/24"], None)?;
    loaded.set_limits(&Limits {
        pps: COMPARE_PPS,
        ..Limits::default()
    })?;
    crate::attached(&loaded, &topo.receiver, &ifname, || -> Result<()> {
        let counted = || -> Result<Option<u64>> {
            Ok(Some(
                loaded
                    .counters()?
                    .iter()
                    .filter(|(r, _)| **r != Reason::DryRunPassed)
                    .map(|(_, n)| n)
                    .sum(),
            ))
        };
        rows.extend(measure(
            &topo,
            &senders,
            mode,
            "floodwall",
            &[Flood::Blocked, Flood::Fixed, Flood::Random],
            &counted,
        )?);
        Ok(())
    })?;
    Ok(rows)
}

/// floodwall's blocklisted row's ratio: the reference its other flood cases are held to.
fn reference(rows: &[SenderRow]) -> f64 {
    rows.iter()
        .find(|r| r.receiver == "floodwall" && r.flood == Flood::Blocked)
        .map_or(f64::NAN, |r| r.ratio)
}

pub fn table(rows: &[SenderRow]) -> String {
    let reference = reference(rows);
    let mut out = String::from(
        "| receiver | flood | one sender: kernel ns/frame | a sender on each CPU: kernel ns/frame | both / one | x floodwall's blocklisted ratio | target |\n\
         |---|---|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let floodwall = r.receiver == "floodwall";
        let relative = r.ratio / reference;
        let target = match (floodwall, r.flood) {
            (false, _) => "-".to_owned(),
            (true, Flood::Blocked) => "reference".to_owned(),
            (true, _) if relative <= 1.0 + crate::cpus::FLAT_TOLERANCE => "met (within 5%)".into(),
            (true, _) => "MISSED (> 5%)".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.3} | {} | {} |\n",
            r.receiver,
            r.flood.name(),
            r.one_ns,
            r.both_ns,
            r.ratio,
            if floodwall {
                format!("{relative:.3}")
            } else {
                "-".into()
            },
            target
        ));
    }
    out
}

pub fn json(rows: &[SenderRow]) -> serde_json::Value {
    let reference = reference(rows);
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "receiver": r.receiver,
                "flood": r.flood.name(),
                "one_sender_kernel_ns_per_frame": r.one_ns,
                "two_senders_kernel_ns_per_frame": r.both_ns,
                "both_over_one": r.ratio,
                "relative_to_floodwall_blocklisted": (r.receiver == "floodwall").then(|| r.ratio / reference),
            })
        })
        .collect::<Vec<_>>()
        .into()
}
