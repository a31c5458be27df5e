//! `floodwall trace`: a line per decided frame from the traced prefix, from the kernel
//! through aya-log, only while the command runs, and off by itself when it is killed.
//!
//! Network rule: datagrams go only from the client namespace to the server namespace over
//! the veth pair the test made; every send is bounded, and everything is removed on drop.

use std::net::{IpAddr, SocketAddr};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use floodwall_tests::cli::{Floodwall, wait_output};
use floodwall_tests::netns::{Netns, VethPair};
use floodwall_tests::traffic::udp_send;

const SERVER4: &str = "10.241.0.1";
const PASSING4: &str = "10.241.0.2";
const BLOCKED4: &str = "10.241.0.3";
const OUTSIDE4: &str = "10.241.1.9";
const TRACED: &str = "10.241.0.0/24";

struct Net {
    client: Netns,
    server: Netns,
    veth: VethPair,
}

fn net() -> Result<Net> {
    let client = Netns::new("trc")?;
    let server = Netns::new("trs")?;
    let veth = VethPair::new(
        &client,
        &server,
        &format!("{PASSING4}/24"),
        &format!("{SERVER4}/24"),
        "fd00:241::2/64",
        "fd00:241::1/64",
    )?;
    veth.add_a_addr(&client, &server, &format!("{BLOCKED4}/24"))?;
    veth.add_a_addr(&client, &server, &format!("{OUTSIDE4}/16"))?;
    Ok(Net {
        client,
        server,
        veth,
    })
}

fn send(net: &Net, from: &str, n: usize) -> Result<()> {
    let from: IpAddr = from.parse()?;
    let sent = udp_send(
        &net.client,
        SocketAddr::new(from, 0),
        SocketAddr::new(SERVER4.parse()?, 9000),
        n,
        30,
        Duration::from_millis(2),
    )?;
    ensure!(sent == n, "{from}: sent {sent} of {n}");
    Ok(())
}

/// Starts `floodwall trace ARGS...` and waits until the trace is on in the kernel.
fn start_trace(fw: &Floodwall<'_>, args: &[&str]) -> Result<Child> {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    let child = fw
        .command(&all)
        .spawn()
        .context("starting floodwall trace")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !trace_on(fw)? {
        ensure!(Instant::now() < deadline, "the trace never went on");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// The `on` word of the pinned `TRACE` map, as bpftool shows it.
fn trace_on(fw: &Floodwall<'_>) -> Result<bool> {
    let pin = fw.pin_dir().join("TRACE");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .context("bpftool")?;
    ensure!(out.status.success(), "bpftool map dump {pin:?} failed");
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let value = &dump[0]["value"];
    let byte = |i: usize| -> u64 {
        value[i]
            .as_str()
            .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            .unwrap_or(0)
    };
    Ok((0..4).any(|i| byte(i) != 0))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn trace_shows_each_decision_for_the_prefix_and_goes_off() -> Result<()> {
    let net = net()?;
    let fw = Floodwall::new(Some(&net.server))?;
    fw.ok(&["attach", net.veth.b_name(), "--mode", "native"])?;
    fw.ok(&["block", "add", BLOCKED4])?;
    ensure!(
        !trace_on(&fw)?,
        "a trace is on before any `floodwall trace`"
    );

    let child = start_trace(&fw, &[TRACED, "--seconds", "4"])?;
    send(&net, BLOCKED4, 3)?;
    send(&net, PASSING4, 2)?;
    send(&net, OUTSIDE4, 4)?;
    let out = wait_output(child, Duration::from_secs(15))?;
    ensure!(out.status.success(), "trace failed: {out:?}");
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    ensure!(
        count(&format!("drop blocklist from {BLOCKED4} len 72 if ")) == 3,
        "blocked frames: {text}"
    );
    ensure!(
        count(&format!("pass passed from {PASSING4} len 72 if ")) == 2,
        "passing frames: {text}"
    );
    ensure!(
        count(OUTSIDE4) == 0,
        "a frame outside the prefix was traced: {text}"
    );
    ensure!(lines.len() == 5, "unexpected lines: {text}");
    ensure!(
        !trace_on(&fw)?,
        "the trace stayed on after the command ended"
    );

    // At most --rate lines a second; the rest are counted, not written.
    let child = start_trace(&fw, &[TRACED, "--seconds", "2", "--rate", "5"])?;
    send(&net, PASSING4, 40)?;
    let out = wait_output(child, Duration::from_secs(15))?;
    let text = String::from_utf8(out.stdout)?;
    let lines = text.lines().count();
    ensure!(
        (1..=10).contains(&lines),
        "{lines} lines at 5 a second: {text}"
    );
    let stats = fw.json(&["stats", "--json"])?;
    ensure!(
        stats["health"]["trace_suppressed"].as_u64().unwrap_or(0) >= 30,
        "suppressed lines not counted: {}",
        stats["health"]
    );

    // Killed with SIGKILL it cannot switch the trace off: its lease runs out instead, and
    // frames after that are not logged (a later reader would find their lines).
    let mut child = start_trace(&fw, &[TRACED])?;
    child.kill()?;
    child.wait()?;
    std::thread::sleep(Duration::from_millis(3_500));
    send(&net, BLOCKED4, 3)?;
    let child = start_trace(&fw, &["fd00:241::/64", "--seconds", "1"])?;
    let out = wait_output(child, Duration::from_secs(15))?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        !text.contains(BLOCKED4),
        "a killed trace still logged frames after its lease: {text}"
    );
    Ok(())
}
