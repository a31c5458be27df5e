//! Flood cases on one CPU and on both at once: the same frame through `BPF_PROG_TEST_RUN`
//! from one thread pinned to CPU 0, then from one thread pinned to each CPU together. A drop
//! path that writes a cache line shared between CPUs costs more per frame when the other CPU
//! runs it too; one that writes nothing shared costs the same.

use std::sync::Barrier;

use anyhow::{Result, ensure};
use filter_common::Reason;
use floodwall::{limits::Limits, state::ListKind};
use floodwall_tests::{
    frames,
    program::{self, Loaded, pin_to_cpu},
    receivers::{XDP_DROP, XDP_PASS},
};

use crate::{PAYLOAD, v4};

/// Each flood case's both-CPUs-over-one-CPU ratio may exceed the blocklisted case's by this
/// much (the target: it scales like the path that writes nothing shared).
pub const FLAT_TOLERANCE: f64 = 0.05;

pub struct CpuCase {
    pub case: &'static str,
    /// Whether the case is a flood being dropped (held to the target), not a passing source.
    pub flood: bool,
    pub one_ns: u64,
    pub both_ns: u64,
    /// Both CPUs over one CPU, per paired round.
    pub ratios: Vec<f64>,
    pub ratio: f64,
}

/// Mean kernel ns per run of `frame` with one thread pinned to each of `cpus`, all at once.
fn cost_on(loaded: &Loaded, frame: &[u8], cpus: &[usize], repeat: u32) -> Result<(u64, u32)> {
    let ready = Barrier::new(cpus.len());
    std::thread::scope(|s| -> Result<(u64, u32)> {
        let handles: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                let ready = &ready;
                s.spawn(move || -> Result<(u32, u64)> {
                    pin_to_cpu(cpu);
                    ready.wait();
                    loaded.run_repeat(frame, repeat)
                })
            })
            .collect();
        let (mut total, mut verdict) = (0, 0);
        for h in handles {
            let (v, ns) = h
                .join()
                .map_err(|_| anyhow::anyhow!("runner thread panicked"))??;
            total += ns;
            verdict = v;
        }
        Ok((total / cpus.len() as u64, verdict))
    })
}

struct Case<'a> {
    name: &'static str,
    flood: bool,
    loaded: &'a Loaded,
    frame: Vec<u8>,
    verdict: u32,
    reason: Reason,
    /// Run before every round (to keep a stateless source stateless).
    before: &'a dyn Fn() -> Result<()>,
}

/// Paired rounds per case: one CPU, then both, `rounds` times.
pub fn scaling(repeat: u32, rounds: usize) -> Result<Vec<CpuCase>> {
    ensure!(
        program::cpus() >= 2,
        "the CPU scaling rows need two CPUs, this process may use {}",
        program::cpus()
    );
    // The veth rows' limits: 1000 pps per source, default admission.
    let limited = Loaded::new()?;
    limited.set_limits(&Limits {
        pps: crate::COMPARE_PPS,
        ..Limits::default()
    })?;
    limited.add(ListKind::Block, &["203.0.113.0/24"], None)?;
    let over = frames::udp(v4(10, 1, 0, 2), PAYLOAD);
    let passing = Loaded::new()?;
    passing.set_limits(&crate::generous())?;
    // Newcomers: a source kept stateless (drained before every round, as in the program-cost
    // row), so every run takes the path of a spoofed frame.
    let shed = crate::Shed::new()?;
    let drain_admission = || shed.drain();
    let spend_burst = || -> Result<()> {
        limited.run_repeat(&over, 2_000)?;
        Ok(())
    };
    let nothing = || Ok(());
    let known = frames::udp(v4(10, 1, 0, 1), PAYLOAD);
    passing.run(&known)?;
    let cases = [
        Case {
            name: "one source in a blocklisted /24",
            flood: true,
            loaded: &limited,
            frame: frames::udp(v4(203, 0, 113, 9), PAYLOAD),
            verdict: XDP_DROP,
            reason: Reason::Blocklisted,
            before: &nothing,
        },
        Case {
            name: "one source over its limit",
            flood: true,
            loaded: &limited,
            frame: over.clone(),
            verdict: XDP_DROP,
            reason: Reason::OverPps,
            before: &spend_burst,
        },
        Case {
            name: "newcomers (stateless source, admission spent)",
            flood: true,
            loaded: &shed.loaded,
            frame: frames::udp(v4(10, 3, 2, 1), PAYLOAD),
            verdict: XDP_DROP,
            reason: Reason::NewcomerLimited,
            before: &drain_admission,
        },
        Case {
            name: "one known source passing (its bucket is written: exactness needs it)",
            flood: false,
            loaded: &passing,
            frame: known.clone(),
            verdict: XDP_PASS,
            reason: Reason::Passed,
            before: &nothing,
        },
    ];
    // Rounds outer, cases inner: every case sees the machine as it is in that round.
    let mut samples: Vec<(Vec<u64>, Vec<u64>, Vec<f64>)> = vec![Default::default(); cases.len()];
    for _ in 0..rounds {
        for (case, (ones, boths, ratios)) in cases.iter().zip(samples.iter_mut()) {
            (case.before)()?;
            let counted_before = case.loaded.counters()?;
            let (one, v1) = cost_on(case.loaded, &case.frame, &[0], repeat)?;
            let (both, v2) = cost_on(case.loaded, &case.frame, &[0, 1], repeat)?;
            let counted_after = case.loaded.counters()?;
            ensure!(
                v1 == case.verdict && v2 == case.verdict,
                "{}: verdicts {v1} and {v2}, expected {} (measuring the wrong path)",
                case.name,
                case.verdict
            );
            let runs = 3 * u64::from(repeat);
            let got = counted_after[&case.reason] - counted_before[&case.reason];
            ensure!(
                got * 100 >= runs * 99,
                "{}: only {got} of {runs} runs went under {:?}",
                case.name,
                case.reason
            );
            ratios.push(both as f64 / one.max(1) as f64);
            ones.push(one);
            boths.push(both);
        }
    }
    Ok(cases
        .iter()
        .zip(samples)
        .map(|(case, (ones, boths, ratios))| CpuCase {
            case: case.name,
            flood: case.flood,
            one_ns: crate::median(&ones),
            both_ns: crate::median(&boths),
            ratio: crate::median_f(&ratios),
            ratios,
        })
        .collect())
}

/// The blocklisted case's ratio: the reference every flood case is held to.
pub fn reference(cases: &[CpuCase]) -> f64 {
    cases.first().map_or(f64::NAN, |c| c.ratio)
}

pub fn table(cases: &[CpuCase], rounds: usize) -> String {
    let reference = reference(cases);
    let mut out = format!(
        "| case | 1 CPU ns/frame | both CPUs ns/frame (each) | both / one (median of {rounds} paired rounds) | x the blocklisted ratio | target |\n\
         |---|---:|---:|---:|---:|---|\n"
    );
    for (i, c) in cases.iter().enumerate() {
        let relative = c.ratio / reference;
        let target = if i == 0 {
            "reference".to_owned()
        } else if !c.flood {
            "-".to_owned()
        } else if relative <= 1.0 + FLAT_TOLERANCE {
            format!("met (within {:.0}%)", FLAT_TOLERANCE * 100.0)
        } else {
            format!("MISSED (> {:.0}%)", FLAT_TOLERANCE * 100.0)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {} |\n",
            c.case, c.one_ns, c.both_ns, c.ratio, relative, target
        ));
    }
    out
}

/// The rounds' ratios, for the JSON report.
pub fn json(cases: &[CpuCase]) -> serde_json::Value {
    let reference = reference(cases);
    cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "case": c.case,
                "flood": c.flood,
                "one_cpu_ns_per_frame": c.one_ns,
                "both_cpus_ns_per_frame": c.both_ns,
                "both_over_one": c.ratio,
                "both_over_one_rounds": c.ratios,
                "relative_to_blocklisted": c.ratio / reference,
                "target_met": !c.flood || c.ratio / reference <= 1.0 + FLAT_TOLERANCE,
            })
        })
        .collect::<Vec<_>>()
        .into()
}
