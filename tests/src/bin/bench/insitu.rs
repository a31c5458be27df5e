//! The receivers' own run time per frame on the veth, from the kernel's BPF statistics
//! (`BPF_ENABLE_STATS`): how much of a veth row's difference is the program itself. A pass of
//! its own, after the throughput rows: while the statistics are on every program run also
//! reads the clock twice, which those rows must not carry.

use anyhow::{Context as _, Result};
use aya::programs::{ProgramInfo, loaded_programs};
use floodwall::{kernel, limits::Limits, state::ListKind};
use floodwall_tests::{
    pktgen::PacketSource,
    program::Loaded,
    receivers::{BareProgram, XDP_DROP},
};

use crate::{COMPARE_PPS, Flood, Mode, PAIRED_FACTOR, Topology, attached_for, median_f, sample};

pub struct InSitu {
    pub flood: Flood,
    /// Run time per run of the bare `XDP_DROP` with the same source mode, median of rounds.
    pub bare_ns: f64,
    /// floodwall's (per-source limit `COMPARE_PPS`, a blocklisted /24), median of rounds.
    pub floodwall_ns: f64,
}

const CASES: [Flood; 3] = [Flood::Fixed, Flood::Random, Flood::Blocked];

/// Run count and total run time so far.
fn totals(info: ProgramInfo) -> (u64, u64) {
    (info.run_count(), info.run_time().as_nanos() as u64)
}

/// The bare program the kernel loaded last (the one this pass attached).
fn bare_totals() -> Result<(u64, u64)> {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("bare_drop"))
        .max_by_key(ProgramInfo::id)
        .map(totals)
        .context("the bare XDP_DROP program is not loaded")
}

/// Run time per run of the program `totals` reads over one sample (warm-up included).
fn per_run(
    totals: &dyn Fn() -> Result<(u64, u64)>,
    topo: &Topology,
    source: &PacketSource<'_>,
    flood: Flood,
    frames: u64,
) -> Result<f64> {
    let (runs0, ns0) = totals()?;
    sample(topo, source, flood, frames)?;
    let (runs1, ns1) = totals()?;
    Ok((ns1 - ns0) as f64 / (runs1 - runs0).max(1) as f64)
}

pub fn measure(mode: &Mode) -> Result<Vec<InSitu>> {
    let topo = Topology::new()?;
    let source = PacketSource::new(&topo.sender, topo.veth.a_name())?;
    let ifname = topo.veth.b_name().to_owned();
    let bare = BareProgram::load(XDP_DROP)?;
    let loaded = Loaded::new()?;
    loaded.add(ListKind::Block, &["203.0.113.0/24"], None)?;
    loaded.set_limits(&Limits {
        pps: COMPARE_PPS,
        ..Limits::default()
    })?;
    let floodwall_totals =
        || -> Result<(u64, u64)> { Ok(totals(ProgramInfo::from_pin(loaded.paths.program_pin())?)) };
    let mut bare_ns: [Vec<f64>; 2] = Default::default();
    let mut floodwall_ns: [Vec<f64>; 3] = Default::default();
    let measured = (|| -> Result<()> {
        // The statistics stay on while this descriptor is open.
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (run time)")?;
        for _ in 0..mode.tput_samples * PAIRED_FACTOR {
            {
                let _link = bare.attach(&topo.receiver, &ifname)?;
                for (i, flood) in [Flood::Fixed, Flood::Random].into_iter().enumerate() {
                    let ns = per_run(&bare_totals, &topo, &source, flood, mode.tput_frames)?;
                    bare_ns[i].push(ns);
                }
            }
            attached_for(&loaded, &topo.receiver, &ifname, || -> Result<()> {
                for (i, flood) in CASES.into_iter().enumerate() {
                    let ns = per_run(&floodwall_totals, &topo, &source, flood, mode.tput_frames)?;
                    floodwall_ns[i].push(ns);
                }
                Ok(())
            })?;
        }
        Ok(())
    })();
    if let Err(e) = kernel::unload(&loaded.paths) {
        eprintln!("bench: unloading floodwall: {e}");
    }
    measured?;
    let rows: Vec<InSitu> = CASES
        .into_iter()
        .zip(&floodwall_ns)
        .map(|(flood, samples)| InSitu {
            flood,
            bare_ns: median_f(&bare_ns[usize::from(flood.ceiling() == Flood::Random)]),
            floodwall_ns: median_f(samples),
        })
        .collect();
    for r in &rows {
        eprintln!(
            "in situ: {}: bare XDP_DROP {:.0} ns/run, floodwall {:.0}",
            r.flood.name(),
            r.bare_ns,
            r.floodwall_ns
        );
    }
    Ok(rows)
}

pub fn table(rows: &[InSitu]) -> String {
    let mut out = String::from(
        "| flood | bare XDP_DROP ns/run | floodwall ns/run | floodwall - bare (ns) |\n\
         |---|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} |\n",
            r.flood.name(),
            r.bare_ns,
            r.floodwall_ns,
            r.floodwall_ns - r.bare_ns
        ));
    }
    out
}

pub fn json(rows: &[InSitu]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "flood": r.flood.name(),
                "bare_xdp_drop_ns_per_run": r.bare_ns,
                "floodwall_ns_per_run": r.floodwall_ns,
            })
        })
        .collect::<Vec<_>>()
        .into()
}
