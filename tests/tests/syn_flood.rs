//! End to end: during a spoofed SYN flood from both CPUs, clients floodwall has never seen
//! open real TCP connections to a real listener and exchange data, IPv4 and IPv6, through
//! the real `floodwall` binary with the SYN challenge on; the same run with it off is
//! reported beside it.
//!
//! Network rule: the flood and the clients live in a client namespace and reach a server
//! namespace only over the test's own veth pair; the spoofed sources have no route anywhere.
//! Every loop is bounded in frames and time, and everything is removed on drop.
//!
//! Test-only settings on the client side, never in the product: a bare `XDP_PASS` program on
//! the client's veth end (a veth delivers frames sent back with `XDP_TX` only to a peer that
//! runs XDP) and `ethtool -K ... tx off` (complete checksums, as a real wire delivers them).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use filter_common::{FAMILY_V4, SourceKey};
use floodwall::{kernel, paths::Paths};
use floodwall_tests::{
    cli::Floodwall,
    netns::run_in,
    receivers::{BareProgram, XDP_PASS},
    service::Service,
    synflood::{CLIENTS, CONNECT_TIMEOUT, Net, PORT, SERVER4, client4, flood, round},
};
use socket2::{Domain, Socket, Type};

fn paths_of(fw: &Floodwall<'_>) -> Paths {
    Paths {
        bpffs: fw.pin_dir().to_owned(),
        state_dir: fw.state_dir().to_owned(),
        config: fw.config_path().to_owned(),
    }
}

fn counted(fw: &Floodwall<'_>, reason: &str) -> Result<u64> {
    let stats = fw.json(&["stats", "--json"])?;
    stats["totals"][reason]["packets"]
        .as_u64()
        .with_context(|| format!("no {reason} in stats --json: {stats}"))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn new_clients_connect_through_a_spoofed_syn_flood() -> Result<()> {
    let net = Net::new()?;
    let pass = BareProgram::load(XDP_PASS)?;
    let _client_xdp = pass.attach(&net.client, net.veth.a_name())?;
    let fw = Floodwall::new(Some(&net.server))?;
    fw.ok(&["attach", net.veth.b_name()])?;
    // Admission and the newcomer bucket small beside the flood (this packet source reaches a
    // few 10k SYN/s into a veth with the challenge's SYN-ACKs flowing back), so that with the
    // challenge off new clients are shed as they are by a real flood with the defaults.
    fw.ok(&[
        "limit",
        "set",
        "--pps",
        "200",
        "--burst",
        "400",
        "--new-sources",
        "10",
        "--newcomer-pps",
        "100",
    ])?;
    let mut report = Vec::new();
    for v4 in [true, false] {
        let family = if v4 { "IPv4" } else { "IPv6" };
        fw.ok(&["limit", "set", "--syn-cookies", "off"])?;
        let off = round(&net, v4)?;
        fw.ok(&["limit", "set", "--syn-cookies", "on"])?;
        let status = fw.ok(&["status"])?;
        ensure!(
            status.contains("challenge:   ACTIVE") && status.contains("tcp_syncookies = 2"),
            "status does not show the challenge and the sysctl:\n{status}"
        );
        let challenged_before = counted(&fw, "syn_challenged")?;
        let on = round(&net, v4)?;
        let challenged = counted(&fw, "syn_challenged")? - challenged_before;
        let top = fw.json(&["top", "-n", "100000", "--json"])?;
        let proven = top.as_array().map_or(0, |s| {
            s.iter()
                .filter(|s| s["syn_proven"].as_u64() >= Some(1))
                .count()
        });
        // The clients that got in with the challenge off have state already: never challenged.
        ensure!(
            proven + off.connected >= on.connected,
            "{family}: top shows {proven} sources proven by a cookie, {} clients connected ({} \
             known from the run without the challenge)",
            on.connected,
            off.connected
        );
        let line = format!(
            "{family}: challenge off {}/{CLIENTS} connected ({:.0} SYN/s); on {}/{CLIENTS} connected ({:.0} SYN/s, {challenged} answered from XDP)",
            off.connected,
            off.flood_frames as f64 / off.secs,
            on.connected,
            on.flood_frames as f64 / on.secs,
        );
        println!("{line}");
        report.push(line);
        // A flood at least 50 times the newcomer budget (100 pps) for the whole round: the
        // rate this packet source reaches here varies from about 15k to 50k SYN/s.
        ensure!(
            on.flood_frames as f64 / on.secs > 5_000.0,
            "{family}: the flood ({} SYNs in {:.1} s) was too small to mean anything",
            on.flood_frames,
            on.secs
        );
        ensure!(
            on.connected * 100 >= usize::from(CLIENTS) * 95,
            "{family}: only {}/{CLIENTS} new clients connected with the challenge on",
            on.connected
        );
        ensure!(
            on.accepted_spoofed == 0 && off.accepted_spoofed == 0,
            "{family}: the listener accepted a spoofed source"
        );
        ensure!(
            challenged > on.flood_frames / 2,
            "{family}: only {challenged} of {} SYNs answered",
            on.flood_frames
        );
    }
    fw.ok(&["limit", "set", "--syn-cookies", "off"])?;
    let status = fw.ok(&["status"])?;
    ensure!(
        status.contains("challenge:   inactive"),
        "status after off:\n{status}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_connection_survives_the_eviction_of_its_source() -> Result<()> {
    let net = Net::new()?;
    let pass = BareProgram::load(XDP_PASS)?;
    let _client_xdp = pass.attach(&net.client, net.veth.a_name())?;
    let fw = Floodwall::new(Some(&net.server))?;
    fw.ok(&["attach", net.veth.b_name()])?;
    fw.ok(&["limit", "set", "--pps", "1000", "--syn-cookies", "on"])?;
    let server_ip: IpAddr = SERVER4.parse()?;
    let listener = run_in(&net.server, || {
        TcpListener::bind(SocketAddr::new(server_ip, PORT))
    })??;
    let local: IpAddr = client4(1).parse()?;
    const MESSAGES: usize = 200;
    let paths = paths_of(&fw);
    let mut key = SourceKey {
        family: FAMILY_V4,
        addr: [0; 16],
    };
    key.addr[..4].copy_from_slice(&[10, 220, 1, 1]);
    let echoed = std::thread::scope(|s| -> Result<usize> {
        let server = s.spawn(|| -> Result<()> {
            let (mut conn, _) = listener.accept()?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 64];
            for _ in 0..MESSAGES {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                conn.write_all(&buf[..n])?;
            }
            Ok(())
        });
        let mut stream = run_in(&net.client, || -> Result<TcpStream> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            socket.bind(&SocketAddr::new(local, 0).into())?;
            socket.connect_timeout(&SocketAddr::new(server_ip, PORT).into(), CONNECT_TIMEOUT)?;
            Ok(socket.into())
        })??;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut echoed = 0;
        for i in 0..MESSAGES {
            if i == MESSAGES / 2 {
                // The source's state goes, as LRU eviction would take it mid-connection.
                let mut sources = kernel::open_sources(&paths)?;
                sources
                    .remove(&key)
                    .context("the proven source had no state")?;
            }
            stream.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf)?;
            ensure!(&buf == b"ping", "echo garbled");
            echoed += 1;
        }
        drop(stream);
        server
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))??;
        Ok(echoed)
    })?;
    ensure!(echoed == MESSAGES, "{echoed} of {MESSAGES} echoed");
    ensure!(
        counted(&fw, "syn_bad_cookie")? == 0,
        "a segment was taken for a bad cookie"
    );
    ensure!(
        counted(&fw, "syn_proven")? >= 1,
        "the client was never proven"
    );
    // The connection the kernel has vouched for the source again.
    ensure!(
        kernel::open_sources(&paths)?.get(&key, 0).is_ok(),
        "the source got no state back from its connection"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn auto_switches_the_challenge_on_under_a_flood_and_off_after_it() -> Result<()> {
    let net = Net::new()?;
    let pass = BareProgram::load(XDP_PASS)?;
    let _client_xdp = pass.attach(&net.client, net.veth.a_name())?;
    let fw = Floodwall::new(Some(&net.server))?;
    std::fs::write(
        fw.config_path(),
        "[limits]\n\
         pps = 200\n\
         burst = 400\n\
         new_sources = 10\n\
         newcomer_pps = 100\n\
         syn_cookies = \"auto\"\n\
         \n\
         [service]\n\
         metrics = \"127.0.0.1:19478\"\n\
         syn_auto_quiet_secs = 2\n",
    )?;
    let sysctl = || -> Result<String> {
        Ok(String::from_utf8(
            net.server
                .exec(&["cat", "/proc/sys/net/ipv4/tcp_syncookies"])?
                .stdout,
        )?
        .trim()
        .to_owned())
    };
    let before = sysctl()?;
    let server_ip: IpAddr = SERVER4.parse()?;
    let _listener = run_in(&net.server, || {
        TcpListener::bind(SocketAddr::new(server_ip, PORT))
    })??;
    let mut service = Service::start(&fw, net.veth.b_name(), &[], "auto")?;
    ensure!(
        fw.ok(&["status"])?.contains("challenge:   inactive"),
        "the challenge is on before any flood"
    );
    let frames = flood(&net, Duration::from_secs(3))?;
    let log = service.log_text();
    ensure!(
        log.contains("SYN challenge ON"),
        "no switch on after {frames} SYNs:\n{log}"
    );
    // Switched on: the flood is now answered from XDP.
    // (Frames the veth ring could not take never reach the filter: compare with what it saw.)
    let (challenged, shed) = (counted(&fw, "syn_challenged")?, counted(&fw, "newcomer")?);
    flood(&net, Duration::from_secs(2))?;
    let answered = counted(&fw, "syn_challenged")? - challenged;
    let shed = counted(&fw, "newcomer")? - shed;
    ensure!(
        answered > 100_000 && answered >= shed * 9,
        "with the challenge switched on, {answered} SYNs answered and {shed} shed as newcomers"
    );
    // Quiet for 2 s: off again, and the host's setting restored.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !service.log_text().contains("SYN challenge off") {
        ensure!(
            Instant::now() < deadline,
            "still on 10 s after the flood:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        fw.ok(&["status"])?.contains("challenge:   inactive"),
        "status still shows the challenge"
    );
    ensure!(
        sysctl()? == before,
        "tcp_syncookies not restored to {before}"
    );
    service.terminate()?;
    service.ok = true;
    Ok(())
}
