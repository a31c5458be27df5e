//! `floodwall explain` against the kernel: for each address, what explain says the next
//! frame gets is what the attached XDP program then counts for a real datagram from it.
//!
//! Network rule: datagrams go only from the client namespace to the server namespace over
//! the veth pair the test made; every send is bounded, and everything is removed on drop.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use floodwall_tests::cli::Floodwall;
use floodwall_tests::netns::{Netns, VethPair};
use floodwall_tests::traffic::udp_send;
use serde_json::Value;

const SERVER4: &str = "10.240.0.1";
const FRESH4: &str = "10.240.0.2";
const ALLOWED4: &str = "10.240.0.5";
const LIMITED4: &str = "10.240.0.6";
const SHED4: &str = "10.240.0.7";
const BLOCKED4: &str = "10.240.0.20";
const BLOCKED_NET: &str = "10.240.0.16/28";
const CLIENT6: &str = "fd00:240::2";

struct Net {
    client: Netns,
    server: Netns,
    veth: VethPair,
}

fn net() -> Result<Net> {
    let client = Netns::new("expc")?;
    let server = Netns::new("exps")?;
    let veth = VethPair::new(
        &client,
        &server,
        &format!("{FRESH4}/24"),
        &format!("{SERVER4}/24"),
        &format!("{CLIENT6}/64"),
        "fd00:240::1/64",
    )?;
    for addr in [ALLOWED4, LIMITED4, SHED4, BLOCKED4] {
        veth.add_a_addr(&client, &server, &format!("{addr}/24"))?;
    }
    Ok(Net {
        client,
        server,
        veth,
    })
}

fn explain(fw: &Floodwall<'_>, addr: &str) -> Result<Value> {
    fw.json(&["explain", addr, "--json"])
}

fn totals(fw: &Floodwall<'_>) -> Result<Value> {
    Ok(fw.json(&["stats", "--json"])?["totals"].clone())
}

/// Sends one datagram from `from` and returns the reason the kernel counted it under.
fn kernel_reason(net: &Net, fw: &Floodwall<'_>, from: &str) -> Result<String> {
    let before = totals(fw)?;
    let from: IpAddr = from.parse()?;
    let to: IpAddr = if from.is_ipv4() {
        SERVER4.parse()?
    } else {
        "fd00:240::1".parse()?
    };
    let sent = udp_send(
        &net.client,
        SocketAddr::new(from, 0),
        SocketAddr::new(to, 9000),
        1,
        22,
        Duration::ZERO,
    )?;
    ensure!(sent == 1, "{from}: not sent");
    let after = totals(fw)?;
    let packets = |v: &Value, r: &str| v[r]["packets"].as_u64().unwrap_or(0);
    let moved: Vec<String> = after
        .as_object()
        .context("totals is not an object")?
        .keys()
        .filter(|r| packets(&after, r) != packets(&before, r))
        .cloned()
        .collect();
    ensure!(moved.len() == 1, "{from}: one frame moved {moved:?}");
    Ok(moved[0].clone())
}

/// Explains `addr`, sends one frame from it, and checks the kernel agreed; returns the
/// explanation.
fn agrees(net: &Net, fw: &Floodwall<'_>, addr: &str) -> Result<Value> {
    let said = explain(fw, addr)?;
    let reason = said["reason"].as_str().context("no reason")?.to_owned();
    let kernel = kernel_reason(net, fw, addr)?;
    ensure!(
        kernel == reason,
        "{addr}: explain said {reason}, the kernel counted {kernel}: {said}"
    );
    Ok(said)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn explain_predicts_the_kernels_verdict() -> Result<()> {
    let net = net()?;
    let fw = Floodwall::new(Some(&net.server))?;
    fw.ok(&["attach", net.veth.b_name(), "--mode", "native"])?;
    // One admission a second (a burst of one), no newcomer budget, five frames per source.
    fw.ok(&[
        "limit",
        "set",
        "--pps",
        "1",
        "--burst",
        "5",
        "--new-sources",
        "1",
        "--newcomer-pps",
        "0",
    ])?;
    fw.ok(&["allow", "add", ALLOWED4, "--comment", "monitoring"])?;
    fw.ok(&[
        "block",
        "add",
        BLOCKED_NET,
        "--ttl",
        "1h",
        "--comment",
        "scanner",
    ])?;

    let said = agrees(&net, &fw, ALLOWED4)?;
    ensure!(
        said["allowlist"]["cidr"] == ALLOWED4 && said["allowlist"]["comment"] == "monitoring",
        "{said}"
    );
    let said = agrees(&net, &fw, BLOCKED4)?;
    ensure!(
        said["blocklist"]["cidr"] == BLOCKED_NET
            && said["blocklist"]["origin"] == "manual"
            && said["blocklist"]["ttl_left_secs"]
                .as_u64()
                .is_some_and(|t| t > 3500)
            && said["dropped"] == true,
        "{said}"
    );
    // A new source: admitted (it takes the one admission token), then limited by its own
    // bucket: four more frames pass, the sixth is over its limit.
    let said = agrees(&net, &fw, LIMITED4)?;
    ensure!(
        said["limiter"].is_null() && said["admitted"] == true && said["source"] == "10.240.0.6/32",
        "{said}"
    );
    for left in (1..=4).rev() {
        let said = agrees(&net, &fw, LIMITED4)?;
        ensure!(
            said["limiter"]["packets_left"] == left && said["reason"] == "passed",
            "{left} left: {said}"
        );
    }
    let said = agrees(&net, &fw, LIMITED4)?;
    ensure!(
        said["reason"] == "over_pps" && said["limiter"]["passed"] == 5,
        "{said}"
    );
    // Admission is spent for this second: the next new source is shed as a newcomer.
    let said = agrees(&net, &fw, SHED4)?;
    ensure!(
        said["admitted"] == false && said["newcomer_budget"] == false,
        "{said}"
    );
    // IPv6, keyed by its /64.
    std::thread::sleep(Duration::from_millis(1100));
    let said = agrees(&net, &fw, CLIENT6)?;
    ensure!(said["source"] == "fd00:240::/64", "{said}");

    // The challenge, when on, is named for a source without state.
    fw.ok(&["limit", "set", "--syn-cookies", "on"])?;
    let said = explain(&fw, FRESH4)?;
    ensure!(said["syn_challenged"] == true, "{said}");
    let text = fw.ok(&["explain", BLOCKED4])?;
    ensure!(
        text.contains("10.240.0.16/28 (manual") && text.contains("verdict:    drop (blocklist)"),
        "{text}"
    );
    Ok(())
}
