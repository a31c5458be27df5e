//! floodwall against Debian's xdp-filter (xdp-tools) on the same frames: both programs run
//! through `BPF_PROG_TEST_RUN`, interleaved round by round so both see the same machine.

use anyhow::{Result, ensure};
use floodwall::state::ListKind;
use floodwall_tests::{
    frames,
    netns::Netns,
    program::Loaded,
    receivers::{XDP_DROP, XDP_PASS, XdpFilter},
};

use crate::{PAYLOAD, v4};

/// xdp-filter's features: its default (every feature: ports, MACs, addresses), then its
/// address filter for both families alone (floodwall filters by source address).
pub const FEATURES: [&str; 2] = ["all", "ipv4,ipv6"];
const BLOCKED: &str = "198.51.100.7";

pub struct PeerRow {
    pub case: &'static str,
    /// xdp-filter's `--features` and the program it loaded for them.
    pub features: &'static str,
    pub program: String,
    pub floodwall_ns: u64,
    pub peer_ns: u64,
    /// Median of the rounds' floodwall / xdp-filter ratios.
    pub ratio: f64,
    /// The maximum ratio.
    pub target: f64,
}

pub struct Peer {
    pub rounds: usize,
    pub rows: Vec<PeerRow>,
}

pub fn xdp_filter(repeat: u32, rounds: usize) -> Result<Peer> {
    let mut rows = Vec::new();
    for features in FEATURES {
        rows.extend(rows_for(features, repeat, rounds)?);
    }
    Ok(Peer { rounds, rows })
}

fn rows_for(features: &'static str, repeat: u32, rounds: usize) -> Result<Vec<PeerRow>> {
    let ns = Netns::new("bxf")?;
    let peer = XdpFilter::load(&ns, features, &[BLOCKED])?;
    let fw = Loaded::new()?;
    // A per-source limit the measured frames never reach: the passing source goes through
    // the limiter (state lookup, clock, GCRA) and passes.
    fw.set_limits(&crate::generous())?;
    fw.add(ListKind::Block, &[BLOCKED], None)?;
    let blocked = frames::udp(BLOCKED.parse()?, PAYLOAD);
    let passing = frames::udp(v4(198, 51, 100, 8), PAYLOAD);
    ensure!(
        fw.run(&passing)? == XDP_PASS,
        "the passing source was not passed"
    );
    let cases = [
        ("blocklisted source", &blocked, XDP_DROP, 0.8),
        (
            "passing source (floodwall: known, under its per-source limit)",
            &passing,
            XDP_PASS,
            1.0,
        ),
    ];
    let mut samples = vec![(Vec::new(), Vec::new(), Vec::new()); cases.len()];
    for _ in 0..rounds {
        for ((case, frame, verdict, _), (f, p, r)) in cases.iter().zip(samples.iter_mut()) {
            let (vf, nf) = fw.run_repeat(frame, repeat)?;
            let (vp, np) = peer.test_run(frame, repeat)?;
            ensure!(
                vf == *verdict && vp == *verdict,
                "{case}: floodwall {vf}, xdp-filter {vp}, expected {verdict}"
            );
            f.push(nf);
            p.push(np);
            r.push(nf as f64 / np.max(1) as f64);
        }
    }
    Ok(cases
        .iter()
        .zip(samples)
        .map(|((case, _, _, target), (f, p, r))| PeerRow {
            case,
            features,
            program: peer.program.clone(),
            floodwall_ns: crate::median(&f),
            peer_ns: crate::median(&p),
            ratio: crate::median_f(&r),
            target: *target,
        })
        .collect())
}

impl Peer {
    pub fn table(&self) -> String {
        let mut out = format!(
            "| case (same frame) | xdp-filter features (program) | floodwall ns/packet | xdp-filter ns/packet | floodwall / xdp-filter (median of {} rounds) | target |\n\
             |---|---|---:|---:|---:|---|\n",
            self.rounds
        );
        for r in &self.rows {
            let status = if r.ratio <= r.target {
                format!("met (<= {}x)", r.target)
            } else {
                format!("MISSED (> {}x)", r.target)
            };
            out.push_str(&format!(
                "| {} | {} (`{}`) | {} | {} | {:.2} | {} |\n",
                r.case, r.features, r.program, r.floodwall_ns, r.peer_ns, r.ratio, status
            ));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "method": "BPF_PROG_TEST_RUN of both programs on the same frame, interleaved per round",
            "rounds": self.rounds,
            "cases": self.rows.iter().map(|r| serde_json::json!({
                "case": r.case,
                "xdp_filter_features": r.features,
                "xdp_filter_program": r.program,
                "floodwall_ns_per_packet": r.floodwall_ns,
                "xdp_filter_ns_per_packet": r.peer_ns,
                "ratio": r.ratio,
                "target_max_ratio": r.target,
                "target_met": r.ratio <= r.target,
            })).collect::<Vec<_>>(),
        })
    }
}
