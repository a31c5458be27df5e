//! End to end: the real `floodwall` binary attached to a veth end in a server namespace,
//! real UDP datagrams from a client namespace, counted on both sides.
//!
//! Network rule: traffic flows only between the two namespaces each test creates, over the
//! veth pair it creates; nothing is sent from the root namespace. Every send and receive is
//! bounded, and the namespaces, veth, bpffs and state directory are removed on drop, also
//! when a test fails.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use floodwall_tests::cli::Floodwall;
use floodwall_tests::netns::{Netns, VethPair};
use floodwall_tests::traffic::{UdpSink, udp_send, udp_sink};

/// Datagrams sent from each source in each round.
const N: usize = 200;
/// How long a sink waits for one more datagram before it counts what it has.
const IDLE: Duration = Duration::from_millis(300);

const SERVER4: &str = "10.210.0.1";
const SERVER6: &str = "fd00:210::1";
const ALLOWED4: &str = "10.210.0.2";
const ALLOWED6: &str = "fd00:210::2";
const BLOCKED4: &str = "10.210.0.3";
const BLOCKED6: &str = "fd00:210::3";
const PORT: u16 = 9000;

/// A server and a client namespace joined by a veth pair: end A (client) has the allowed
/// addresses and the blocked ones, end B (server) the server's.
struct Net {
    client: Netns,
    server: Netns,
    veth: VethPair,
}

impl Net {
    fn new() -> Result<Net> {
        let client = Netns::new("e2ec")?;
        let server = Netns::new("e2es")?;
        let veth = VethPair::new(
            &client,
            &server,
            &format!("{ALLOWED4}/24"),
            &format!("{SERVER4}/24"),
            &format!("{ALLOWED6}/64"),
            &format!("{SERVER6}/64"),
        )?;
        veth.add_a_addr(&client, &server, &format!("{BLOCKED4}/24"))?;
        veth.add_a_addr(&client, &server, &format!("{BLOCKED6}/64"))?;
        Ok(Net {
            client,
            server,
            veth,
        })
    }

    /// The interface floodwall attaches to: the server's end.
    fn server_if(&self) -> &str {
        self.veth.b_name()
    }

    /// Adds `addr` (in a prefix of its own) to the client, with a route back to that prefix
    /// and a neighbour entry in the server.
    fn add_client_prefix(&self, cidr: &str) -> Result<()> {
        self.veth.add_a_addr(&self.client, &self.server, cidr)?;
        let prefix = network_of(cidr)?;
        self.server
            .exec(&["ip", "route", "replace", &prefix, "dev", self.server_if()])?;
        Ok(())
    }
}

/// `10.211.0.3/24` → `10.211.0.0/24` (via `ip route`'s own normalisation).
fn network_of(cidr: &str) -> Result<String> {
    let (addr, len) = cidr
        .split_once('/')
        .context("cidr without a prefix length")?;
    let len: u32 = len.parse()?;
    let addr: IpAddr = addr.parse()?;
    let net = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    };
    Ok(format!("{net}/{len}"))
}

/// The two sinks in the server, with receive buffers large enough for a whole round.
struct Sinks {
    v4: UdpSink,
    v6: UdpSink,
}

impl Sinks {
    fn new(net: &Net) -> Result<Sinks> {
        let v4 = udp_sink(&net.server, SocketAddr::new(SERVER4.parse()?, PORT))?;
        let v6 = udp_sink(&net.server, SocketAddr::new(SERVER6.parse()?, PORT))?;
        for sink in [&v4, &v6] {
            sink.grow_rcvbuf()?;
        }
        Ok(Sinks { v4, v6 })
    }

    /// Sends `N` datagrams from `from` in the client to the sink of its family and returns
    /// how many of them arrived (from that source).
    fn round(&self, net: &Net, from: &str) -> Result<usize> {
        let from: IpAddr = from.parse()?;
        let (sink, to) = if from.is_ipv4() {
            (&self.v4, SERVER4)
        } else {
            (&self.v6, SERVER6)
        };
        let to = SocketAddr::new(to.parse()?, PORT);
        let sent = udp_send(
            &net.client,
            SocketAddr::new(from, 0),
            to,
            N,
            64,
            Duration::ZERO,
        )?;
        ensure!(sent == N, "{from}: sent only {sent} of {N}");
        let got = sink.drain(IDLE)?;
        let strangers: Vec<_> = got.iter().filter(|(src, _)| src.ip() != from).collect();
        ensure!(
            strangers.is_empty(),
            "{from}: unexpected datagrams {strangers:?}"
        );
        Ok(got.len())
    }
}

fn packets(stats: &serde_json::Value, reason: &str) -> Result<u64> {
    stats["totals"][reason]["packets"]
        .as_u64()
        .with_context(|| format!("stats has no totals.{reason}.packets: {stats}"))
}

fn attach(fw: &Floodwall<'_>, net: &Net) -> Result<()> {
    let out = fw.ok(&["attach", net.server_if(), "--mode", "native"])?;
    ensure!(
        out.contains(net.server_if()) && out.contains("native"),
        "attach said: {out}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn blocked_sources_are_dropped_and_others_pass() -> Result<()> {
    let net = Net::new()?;
    let sinks = Sinks::new(&net)?;
    let fw = Floodwall::new(Some(&net.server))?;
    attach(&fw, &net)?;
    fw.ok(&["block", "add", BLOCKED4, &format!("{BLOCKED6}/128")])?;

    for src in [ALLOWED4, ALLOWED6] {
        let got = sinks.round(&net, src)?;
        ensure!(got == N, "allowed {src}: {got} of {N} arrived");
    }
    for src in [BLOCKED4, BLOCKED6] {
        let got = sinks.round(&net, src)?;
        ensure!(got == 0, "blocked {src}: {got} of {N} arrived");
    }

    let stats = fw.json(&["stats", "--json"])?;
    let blocked = packets(&stats, "blocklist")?;
    ensure!(
        blocked == 2 * N as u64,
        "blocklist packets {blocked}, expected {}: {stats}",
        2 * N
    );
    let passed = packets(&stats, "passed")?;
    ensure!(
        passed >= 2 * N as u64,
        "passed packets {passed}, expected at least {}: {stats}",
        2 * N
    );
    let ifaces = stats["interfaces"]
        .as_array()
        .context("stats has no interfaces array")?;
    let entry = ifaces
        .iter()
        .find(|i| i["iface"] == net.server_if())
        .with_context(|| format!("no stats entry for {}: {stats}", net.server_if()))?;
    ensure!(
        entry["reasons"]["blocklist"]["packets"] == 2 * N as u64,
        "per-interface blocklist count: {entry}"
    );

    // Without the filter, the same sources get through: the filter did the dropping.
    fw.ok(&["detach", net.server_if()])?;
    for src in [BLOCKED4, BLOCKED6] {
        let got = sinks.round(&net, src)?;
        ensure!(got == N, "{src} after detach: {got} of {N} arrived");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn block_del_lets_traffic_through_again() -> Result<()> {
    let net = Net::new()?;
    let sinks = Sinks::new(&net)?;
    let fw = Floodwall::new(Some(&net.server))?;
    attach(&fw, &net)?;
    let blocked6 = format!("{BLOCKED6}/128");
    fw.ok(&["block", "add", BLOCKED4, &blocked6])?;
    for src in [BLOCKED4, BLOCKED6] {
        let got = sinks.round(&net, src)?;
        ensure!(got == 0, "blocked {src}: {got} of {N} arrived");
    }

    fw.ok(&["block", "del", BLOCKED4, &blocked6])?;
    let list = fw.json(&["block", "list", "--json"])?;
    ensure!(list == serde_json::json!([]), "list after del: {list}");
    for src in [BLOCKED4, BLOCKED6] {
        let got = sinks.round(&net, src)?;
        ensure!(got == N, "{src} after del: {got} of {N} arrived");
    }
    let stats = fw.json(&["stats", "--json"])?;
    ensure!(
        packets(&stats, "blocklist")? == 2 * N as u64,
        "blocklist count after del: {stats}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn block_by_prefix_drops_the_whole_prefix() -> Result<()> {
    let net = Net::new()?;
    // Two sources in each blocked prefix, away from the server's own prefix.
    let prefixed = ["10.211.0.3", "10.211.0.77", "fd00:211::3", "fd00:211::77:1"];
    for src in prefixed {
        let len = if src.contains(':') { 64 } else { 24 };
        net.add_client_prefix(&format!("{src}/{len}"))?;
    }
    let sinks = Sinks::new(&net)?;
    let fw = Floodwall::new(Some(&net.server))?;
    attach(&fw, &net)?;
    fw.ok(&["block", "add", "10.211.0.0/24", "fd00:211::/64"])?;

    for src in prefixed {
        let got = sinks.round(&net, src)?;
        ensure!(got == 0, "{src} in a blocked prefix: {got} of {N} arrived");
    }
    for src in [ALLOWED4, ALLOWED6, BLOCKED4, BLOCKED6] {
        let got = sinks.round(&net, src)?;
        ensure!(got == N, "{src} outside the prefixes: {got} of {N} arrived");
    }
    let stats = fw.json(&["stats", "--json"])?;
    ensure!(
        packets(&stats, "blocklist")? == 4 * N as u64,
        "blocklist count: {stats}"
    );

    fw.ok(&["block", "del", "10.211.0.0/24"])?;
    let got = sinks.round(&net, "10.211.0.77")?;
    ensure!(got == N, "10.211.0.77 after del: {got} of {N} arrived");
    let got = sinks.round(&net, "fd00:211::77:1")?;
    ensure!(
        got == 0,
        "fd00:211::77:1 still blocked: {got} of {N} arrived"
    );
    Ok(())
}
