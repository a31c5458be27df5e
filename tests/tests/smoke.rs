//! The program loads, and a blocked source is dropped while another passes.

use anyhow::Result;
use filter_common::Reason;
use floodwall::state::ListKind;
use floodwall_tests::{frames::udp, program::Loaded};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn blocklist_drops_only_listed_sources() -> Result<()> {
    let fw = Loaded::new()?;
    // The verifier's budget is 1M instructions; stay well inside it so a change that
    // multiplies paths fails here, not on an operator's kernel.
    let insns = fw.verified_insns()?;
    println!("verifier processed {insns} instructions");
    assert!(insns < 850_000, "verifier processed {insns} instructions");
    fw.add(
        ListKind::Block,
        &["198.51.100.7", "2001:db8:bad::/48"],
        None,
    )?;
    let cases = [
        ("198.51.100.7", XDP_DROP, Reason::Blocklisted),
        ("198.51.100.8", XDP_PASS, Reason::Passed),
        ("2001:db8:bad::1", XDP_DROP, Reason::Blocklisted),
        ("2001:db8:bad:1::1", XDP_DROP, Reason::Blocklisted),
        ("2001:db8:bae::1", XDP_PASS, Reason::Passed),
    ];
    for (src, verdict, reason) in cases {
        let got = fw.verdict(&udp(src.parse()?, 32))?;
        assert_eq!((got.0, got.1), (verdict, reason), "source {src}");
    }
    Ok(())
}
