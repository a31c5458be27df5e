//! `cargo xtask demo`: a UDP echo service under a flood, first without floodwall, then with it.
//!
//! Topology, all made here and removed on exit (also on Ctrl-C or SIGTERM):
//!
//! ```text
//!   client ns  10.77.1.2 ──veth── 10.77.1.1  server ns  10.77.2.1 ──veth── 10.77.2.2  attacker ns
//!                                 (UDP echo on port 7,                     + 10.66.6.10-13
//!                                  floodwall on both veths)
//! ```
//!
//! Network rule: traffic flows only between the namespaces made here, over the veth pairs made
//! here (created directly inside the namespaces, never in the root namespace). No namespace
//! gets a default route, so nothing can leave them. Every traffic loop is bounded in packets
//! and time and checks the stop flag set by the signal handler.
//!
//! This module keeps its own small namespace helpers rather than using `floodwall-tests`:
//! that crate depends on filter-user, whose build script needs the eBPF toolchain, and xtask
//! must build without it (`cargo xtask setup` is what installs it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Total seconds of traffic, split evenly over the three phases
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(6..=300))]
    duration: u64,
    /// Leave the namespaces, the attached filter and its pins in place at the end, and print
    /// the commands that remove them (an interrupted demo always cleans up)
    #[arg(long)]
    keep: bool,
}

/// Set by SIGINT/SIGTERM; every loop checks it.
static STOP: AtomicBool = AtomicBool::new(false);

const SERVER_TO_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
const SERVER_TO_ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
/// Extra attacker addresses, inside the blocklisted prefix.
const BLOCKED_SOURCES: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 66, 6, 10),
    Ipv4Addr::new(10, 66, 6, 11),
    Ipv4Addr::new(10, 66, 6, 12),
    Ipv4Addr::new(10, 66, 6, 13),
];
const BLOCKED_PREFIX: &str = "10.66.6.0/24";
const ECHO_PORT: u16 = 7;
/// Per-source limit in phase 2 and 3; the client stays well under it.
const LIMIT_PPS: u64 = 200;
const CLIENT_RATE: u64 = 50;
/// Flood datagram payload.
const FLOOD_PAYLOAD: usize = 64;

/// Hard caps, whatever the duration.
const MAX_FLOOD_PACKETS: u64 = 50_000_000;
const MAX_ECHOES: u64 = 200_000_000;
const MAX_REQUESTS: u64 = 100_000;

/// Phase marker for "between phases": the client sends nothing then.
const IDLE: usize = usize::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Unfiltered,
    Filtered,
    Spoofed,
}

const PHASES: [Phase; 3] = [Phase::Unfiltered, Phase::Filtered, Phase::Spoofed];

impl Phase {
    fn index(self) -> usize {
        match self {
            Phase::Unfiltered => 0,
            Phase::Filtered => 1,
            Phase::Spoofed => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::Unfiltered => "no filter",
            Phase::Filtered => "floodwall",
            Phase::Spoofed => "spoofed",
        }
    }
}

/// How long the live view waits for an echo before it counts the request as unanswered.
const ECHO_GRACE: Duration = Duration::from_millis(200);

/// One client request, indexed by its sequence number.
struct Request {
    at: Instant,
    phase: usize,
    answered: bool,
}

/// Counters shared by the traffic threads and the live view.
struct Shared {
    phase: AtomicUsize,
    done: AtomicBool,
    /// Requests sent and answered (at any time), per phase.
    client_sent: [AtomicU64; 3],
    client_ok: [AtomicU64; 3],
    requests: Mutex<Vec<Request>>,
    flood_sent: AtomicU64,
    server_rx: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            phase: AtomicUsize::new(IDLE),
            done: AtomicBool::new(false),
            client_sent: Default::default(),
            client_ok: Default::default(),
            requests: Mutex::new(Vec::new()),
            flood_sent: AtomicU64::new(0),
            server_rx: AtomicU64::new(0),
        }
    }

    fn requests(&self) -> MutexGuard<'_, Vec<Request>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests of `phase` sent in `(from, to]`, and how many of them were answered.
    fn answered_between(&self, phase: Phase, from: Instant, to: Instant) -> (u64, u64) {
        let requests = self.requests();
        let start = requests.partition_point(|r| r.at <= from);
        requests[start..]
            .iter()
            .take_while(|r| r.at <= to)
            .filter(|r| r.phase == phase.index())
            .fold((0, 0), |(sent, ok), r| {
                (sent + 1, ok + u64::from(r.answered))
            })
    }

    fn should_stop(&self) -> bool {
        stopped() || self.done.load(Ordering::Relaxed)
    }
}

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleeps until `deadline`; false if a stop was requested first.
fn sleep_until(deadline: Instant) -> bool {
    loop {
        if stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

pub fn run(args: &Args) -> Result<()> {
    let result = run_demo(args);
    // By now every namespace, veth, pin and directory the demo made is gone (or kept).
    if stopped() {
        eprintln!("demo: interrupted; cleaned up");
        std::process::exit(130);
    }
    result
}

fn run_demo(args: &Args) -> Result<()> {
    setup::run()?;
    if !util::is_root() {
        bail!("the demo needs root (namespaces, veth pairs, XDP): run it as root");
    }
    ctrlc::set_handler(|| {
        if !STOP.swap(true, Ordering::SeqCst) {
            eprintln!("demo: interrupted: stopping traffic and cleaning up");
        }
    })
    .context("cannot install the SIGINT/SIGTERM handler")?;

    let floodwall_bin = build_floodwall()?;
    check_stop()?;

    let pid = std::process::id();
    // Declared in this order so they drop in reverse: detach, veths, namespaces, bpffs, state.
    let state = StateDir::new(pid)?;
    let bpffs = BpffsDir::new(pid)?;
    let server = Netns::new("server", pid)?;
    let client = Netns::new("client", pid)?;
    let attacker = Netns::new("attacker", pid)?;
    let tag = format!("fwd{pid:x}");
    let to_client = Link::new(
        (&server, &format!("{tag}sc"), SERVER_TO_CLIENT),
        (&client, &format!("{tag}cs"), CLIENT),
    )?;
    let to_attacker = Link::new(
        (&server, &format!("{tag}sa"), SERVER_TO_ATTACKER),
        (&attacker, &format!("{tag}as"), ATTACKER),
    )?;
    for src in BLOCKED_SOURCES {
        attacker.ip(&[
            "addr",
            "add",
            &format!("{src}/24"),
            "dev",
            &to_attacker.b_if,
        ])?;
        neigh(&server, &to_attacker.a_if, src, &to_attacker.b_mac)?;
    }
    // The echoes to the blocklisted sources go back over the attacker's veth, nowhere else.
    server.ip(&["route", "add", BLOCKED_PREFIX, "dev", &to_attacker.a_if])?;
    let mut fw = Floodwall {
        bin: floodwall_bin,
        ns: server.name.clone(),
        bpffs: bpffs.path.clone(),
        state: state.path.clone(),
        attached: false,
    };
    check_stop()?;

    let phase_len = Duration::from_secs((args.duration / 3).max(2));
    println!(
        "demo: namespaces {} (UDP echo on port {ECHO_PORT}), {} and {}",
        server.name, client.name, attacker.name
    );
    println!(
        "demo: client {CLIENT} -> {SERVER_TO_CLIENT} over {}/{}; attacker {ATTACKER} and \
         {}-{} -> {SERVER_TO_ATTACKER} over {}/{}",
        to_client.b_if,
        to_client.a_if,
        BLOCKED_SOURCES[0],
        BLOCKED_SOURCES[3].octets()[3],
        to_attacker.b_if,
        to_attacker.a_if,
    );
    println!(
        "demo: client sends {CLIENT_RATE} requests/s and counts echoes; 3 phases of {} s",
        phase_len.as_secs()
    );

    let shared = Shared::new();
    let ctx = Ctx {
        attacker: &attacker,
        to_client: &to_client,
        to_attacker: &to_attacker,
        shared: &shared,
        phase_len,
    };
    // Generous: the phases plus the time attaching and configuring take.
    let deadline = Instant::now() + phase_len * 3 + Duration::from_secs(60);
    let outcome = thread::scope(|s| -> Result<Outcome> {
        let echo = s.spawn(|| echo_server(&server, &shared, deadline));
        let client_thread = s.spawn(|| run_client(&client, &shared, deadline));
        let outcome = run_phases(&ctx, &mut fw);
        // Late echoes of the last requests still count.
        if outcome.is_ok() {
            sleep_until(Instant::now() + Duration::from_millis(300));
        }
        shared.done.store(true, Ordering::SeqCst);
        let echo = join(echo, "echo server");
        let client_result = join(client_thread, "client");
        let outcome = outcome?;
        echo?;
        client_result?;
        Ok(outcome)
    })?;
    check_stop()?;
    let filtered_ok = print_summary(&shared, &outcome);

    if args.keep {
        print_keep(&fw, &[&server, &client, &attacker]);
        std::mem::forget(fw);
        std::mem::forget((to_client, to_attacker));
        std::mem::forget((server, client, attacker));
        std::mem::forget((bpffs, state));
    }
    if !filtered_ok {
        // Reported, but the demo itself ran: exit 0.
        println!("demo: see the WARNING above");
    }
    Ok(())
}

fn check_stop() -> Result<()> {
    if stopped() {
        bail!("demo interrupted");
    }
    Ok(())
}

fn join<T>(handle: thread::ScopedJoinHandle<'_, Result<T>>, what: &str) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("the {what} thread panicked"))?
        .with_context(|| format!("the {what} failed"))
}

/// Builds the controller and returns the path of the binary.
fn build_floodwall() -> Result<PathBuf> {
    let mut cmd = util::cargo();
    cmd.args(["build", "-p", "filter-user", "--bin", "floodwall"])
        .arg("--message-format=json-render-diagnostics");
    eprintln!("$ {}", util::describe(&cmd));
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo build")?;
    if !out.status.success() {
        bail!("building floodwall failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "floodwall")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .context("cargo build did not report the floodwall executable")
}

struct Ctx<'a> {
    attacker: &'a Netns,
    to_client: &'a Link,
    to_attacker: &'a Link,
    shared: &'a Shared,
    phase_len: Duration,
}

/// What the summary needs beyond the shared counters.
struct Outcome {
    flood_sent: [u64; 3],
    server_rx: [u64; 3],
    /// floodwall's totals by reason at the end of each phase (empty while detached).
    totals: [BTreeMap<String, u64>; 3],
}

fn run_phases(ctx: &Ctx<'_>, fw: &mut Floodwall) -> Result<Outcome> {
    let mut outcome = Outcome {
        flood_sent: [0; 3],
        server_rx: [0; 3],
        totals: Default::default(),
    };
    for phase in PHASES {
        check_stop()?;
        match phase {
            Phase::Unfiltered => println!(
                "\n== phase 1/3: no filter; UDP floods from {BLOCKED_PREFIX} and from {ATTACKER} \
                 at the echo server"
            ),
            Phase::Filtered => {
                let (a, b) = (&ctx.to_client.a_if, &ctx.to_attacker.a_if);
                println!(
                    "\n== phase 2/3: floodwall attached to {a} and {b}; block {BLOCKED_PREFIX}; \
                     limit {LIMIT_PPS} pps per source; same floods"
                );
                fw.attach(&[a, b])?;
                fw.show(&["block", "add", BLOCKED_PREFIX, "--comment", "demo attacker"])?;
                let pps = LIMIT_PPS.to_string();
                fw.show(&["limit", "set", "--pps", &pps, "--burst", &pps])?;
            }
            Phase::Spoofed => println!(
                "\n== phase 3/3: floodwall attached; spoofed flood, random IPv4 sources, raw \
                 frames via AF_PACKET on {}",
                ctx.to_attacker.b_if
            ),
        }
        check_stop()?;
        let before = (
            ctx.shared.flood_sent.load(Ordering::Relaxed),
            ctx.shared.server_rx.load(Ordering::Relaxed),
        );
        let totals = run_phase(ctx, phase, fw.attached.then_some(&*fw))?;
        let i = phase.index();
        outcome.flood_sent[i] = ctx.shared.flood_sent.load(Ordering::Relaxed) - before.0;
        outcome.server_rx[i] = ctx.shared.server_rx.load(Ordering::Relaxed) - before.1;
        outcome.totals[i] = totals;
        if fw.attached {
            print_top(fw)?;
        } else {
            println!("  top sources: none tracked (floodwall is not attached in this phase)");
        }
    }
    Ok(outcome)
}

/// Runs the floods of `phase` for the phase length with a live line per second; returns
/// floodwall's totals at the end (empty if it is detached).
fn run_phase(ctx: &Ctx<'_>, phase: Phase, fw: Option<&Floodwall>) -> Result<BTreeMap<String, u64>> {
    let shared = ctx.shared;
    let start = Instant::now();
    let end = start + ctx.phase_len;
    thread::scope(|s| -> Result<BTreeMap<String, u64>> {
        let target = SocketAddrV4::new(SERVER_TO_ATTACKER, ECHO_PORT);
        let mut floods = Vec::new();
        match phase {
            Phase::Unfiltered | Phase::Filtered => {
                floods.push(
                    s.spawn(move || udp_flood(ctx.attacker, &BLOCKED_SOURCES, target, shared, end)),
                );
                floods.push(
                    s.spawn(move || udp_flood(ctx.attacker, &[ATTACKER], target, shared, end)),
                );
            }
            Phase::Spoofed => {
                floods.push(s.spawn(move || {
                    spoofed_flood(ctx.attacker, ctx.to_attacker, target, shared, end)
                }))
            }
        }
        shared.phase.store(phase.index(), Ordering::SeqCst);
        let live = live_view(ctx, phase, fw, start, end);
        shared.phase.store(IDLE, Ordering::SeqCst);
        // The floods stop by themselves at `end` (or on a stop request).
        let mut flood_result = Ok(());
        for flood in floods {
            if let Err(e) = join(flood, "flood") {
                flood_result = Err(e);
            }
        }
        let totals = live?;
        flood_result?;
        Ok(totals)
    })
}

/// Snapshot of what the live line diffs.
struct Sample {
    at: Instant,
    flood_sent: u64,
    server_rx: u64,
    totals: BTreeMap<String, u64>,
}

fn sample(shared: &Shared, fw: Option<&Floodwall>) -> Result<Sample> {
    Ok(Sample {
        at: Instant::now(),
        flood_sent: shared.flood_sent.load(Ordering::Relaxed),
        server_rx: shared.server_rx.load(Ordering::Relaxed),
        totals: match fw {
            Some(fw) => fw.totals()?,
            None => BTreeMap::new(),
        },
    })
}

fn live_view(
    ctx: &Ctx<'_>,
    phase: Phase,
    fw: Option<&Floodwall>,
    start: Instant,
    end: Instant,
) -> Result<BTreeMap<String, u64>> {
    let mut prev = sample(ctx.shared, fw)?;
    let mut second = 1u32;
    loop {
        let tick = (start + Duration::from_secs(second.into())).min(end);
        if !sleep_until(tick) {
            bail!("demo interrupted");
        }
        let now = sample(ctx.shared, fw)?;
        // Requests sent in this second, less the last ECHO_GRACE (left for the next line).
        let (sent, ok) = ctx.shared.answered_between(
            phase,
            prev.at.checked_sub(ECHO_GRACE).unwrap_or(prev.at),
            now.at.checked_sub(ECHO_GRACE).unwrap_or(now.at),
        );
        print_line(phase, second, (sent, ok), &prev, &now);
        prev = now;
        if tick >= end {
            return Ok(prev.totals);
        }
        second += 1;
    }
}

fn print_line(phase: Phase, second: u32, (sent, ok): (u64, u64), prev: &Sample, now: &Sample) {
    let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| rate(b.saturating_sub(a) as f64 / secs);
    let mut line = format!(
        "  [{:<9} {second:>3}s] client {ok:>2}/{sent:<2} {:>6} | flood sent {:>7} pps, echo \
         server got {:>7} pps |",
        phase.label(),
        percent(ok, sent),
        rate(prev.flood_sent, now.flood_sent),
        rate(prev.server_rx, now.server_rx),
    );
    if now.totals.is_empty() {
        line.push_str(" floodwall: detached");
    } else {
        line.push_str(" floodwall/s:");
        for (reason, &packets) in &now.totals {
            let before = prev.totals.get(reason).copied().unwrap_or(0);
            if packets > before {
                line.push_str(&format!(" {reason} {}", rate(before, packets)));
            }
        }
    }
    println!("{line}");
}

fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}k", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}")
    }
}

fn count(n: u64) -> String {
    rate(n as f64)
}

fn percent(ok: u64, sent: u64) -> String {
    if sent == 0 {
        return "-".to_owned();
    }
    format!("{:.1}%", 100.0 * ok as f64 / sent as f64)
}

fn print_top(fw: &Floodwall) -> Result<()> {
    let out = fw.run(&["top", "-n", "3", "--json"])?;
    let sources: Value = serde_json::from_str(&out).context("floodwall top --json: bad JSON")?;
    let list: Vec<String> = sources
        .as_array()
        .context("floodwall top --json: not an array")?
        .iter()
        .map(|s| {
            format!(
                "{} (passed {}, dropped {})",
                s["source"].as_str().unwrap_or("?"),
                s["passed"].as_u64().map_or_else(|| "?".into(), count),
                s["dropped"].as_u64().map_or_else(|| "?".into(), count),
            )
        })
        .collect();
    if list.is_empty() {
        println!("  top sources: none tracked");
    } else {
        println!("  top sources: {}", list.join(", "));
    }
    Ok(())
}

/// Prints the summary; false if the filter did not keep the client served.
fn print_summary(shared: &Shared, outcome: &Outcome) -> bool {
    println!("\n== summary");
    println!(
        "  {:<12} {:>24} {:>12} {:>22}",
        "phase", "client success", "flood sent", "reached echo server"
    );
    let mut success = [0.0f64; 3];
    for phase in PHASES {
        let i = phase.index();
        let sent = shared.client_sent[i].load(Ordering::Relaxed);
        let ok = shared.client_ok[i].load(Ordering::Relaxed).min(sent);
        success[i] = if sent == 0 {
            0.0
        } else {
            100.0 * ok as f64 / sent as f64
        };
        println!(
            "  {:<12} {:>24} {:>12} {:>22}",
            phase.label(),
            format!("{} ({ok}/{sent})", percent(ok, sent)),
            count(outcome.flood_sent[i]),
            count(outcome.server_rx[i]),
        );
    }
    let last = &outcome.totals[2];
    let get =
        |totals: &BTreeMap<String, u64>, reason: &str| totals.get(reason).copied().unwrap_or(0);
    println!("  floodwall totals (stats --json, totals.<reason>.packets), phase 2 / phase 3:");
    for (reason, &total) in last {
        if total == 0 {
            continue;
        }
        let in_filtered = get(&outcome.totals[1], reason);
        println!(
            "    {reason:<12} {total:>12}  ({in_filtered} / {})",
            total - in_filtered.min(total)
        );
    }
    let mut ok = true;
    for phase in [Phase::Filtered, Phase::Spoofed] {
        let i = phase.index();
        let sent = shared.client_sent[i].load(Ordering::Relaxed);
        let answered = shared.client_ok[i].load(Ordering::Relaxed);
        if answered * 100 < sent * 99 {
            ok = false;
            println!(
                "WARNING: client success with floodwall attached ({} phase) was {:.2}% \
                 ({answered}/{sent}), under 99%: the filter did not keep the service available",
                phase.label(),
                success[i]
            );
        }
    }
    if success[0] >= 99.0 {
        println!(
            "  note: without the filter the echo server still answered the client on this \
             machine; what floodwall saved shows in the packets that reached it"
        );
    }
    println!(
        "demo summary: unfiltered_client_success={:.1}% filtered_client_success={:.1}% \
         spoofed_client_success={:.1}% blocklist_dropped={} over_pps_dropped={} \
         newcomer_dropped={}",
        success[0],
        success[1],
        success[2],
        get(last, "blocklist"),
        get(last, "over_pps"),
        get(last, "newcomer"),
    );
    ok
}

fn print_keep(fw: &Floodwall, namespaces: &[&Netns]) {
    let env = fw.env_prefix();
    println!("\ndemo: --keep: namespaces, veths, filter and pins left in place; inspect with");
    println!("  {env} ip netns exec {} {} stats", fw.ns, fw.bin.display());
    println!("remove them with:");
    println!(
        "  {env} ip netns exec {} {} detach --all",
        fw.ns,
        fw.bin.display()
    );
    for ns in namespaces {
        println!("  ip netns del {}", ns.name);
    }
    println!("  umount {0} && rmdir {0}", fw.bpffs.display());
    println!("  rm -r {}", fw.state.display());
}

// ---------------------------------------------------------------------------------------------
// Traffic. Each function runs on its own thread and first moves that thread into a namespace.

/// Echoes every datagram on port 7 back to its sender, until the demo is done.
fn echo_server(ns: &Netns, shared: &Shared, deadline: Instant) -> Result<()> {
    ns.enter()?;
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ECHO_PORT))
        .context("binding the echo server")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 2048];
    let mut echoed = 0u64;
    while echoed < MAX_ECHOES && !shared.should_stop() && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                echoed += 1;
                shared.server_rx.fetch_add(1, Ordering::Relaxed);
                // Fails for spoofed sources: the server has no route to them.
                let _ = socket.send_to(&buf[..len], from);
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("echo server recv"),
        }
    }
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Sends [`CLIENT_RATE`] requests a second (sequence number and phase in the payload) while a
/// phase runs, and counts each echoed request once, for the phase it was sent in.
fn run_client(ns: &Netns, shared: &Shared, deadline: Instant) -> Result<()> {
    ns.enter()?;
    let socket = UdpSocket::bind(SocketAddrV4::new(CLIENT, 0)).context("binding the client")?;
    let server = SocketAddr::V4(SocketAddrV4::new(SERVER_TO_CLIENT, ECHO_PORT));
    let interval = Duration::from_nanos(1_000_000_000 / CLIENT_RATE);
    let mut buf = [0u8; 512];
    let mut seq = 0u64;
    let mut next = Instant::now();
    while seq < MAX_REQUESTS && !shared.should_stop() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= next {
            let phase = shared.phase.load(Ordering::SeqCst);
            if phase < PHASES.len() {
                let mut payload = [0u8; 32];
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                payload[8] = phase as u8;
                // A request that cannot even be sent counts as failed.
                let _ = socket.send_to(&payload, server);
                shared.requests().push(Request {
                    at: now,
                    phase,
                    answered: false,
                });
                shared.client_sent[phase].fetch_add(1, Ordering::Relaxed);
                seq += 1;
            }
            next += interval;
            if next < now {
                next = now + interval;
            }
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        socket.set_read_timeout(Some(wait))?;
        match socket.recv_from(&mut buf) {
            Ok((len, from)) if from == server && len >= 9 => {
                let mut seq_bytes = [0u8; 8];
                seq_bytes.copy_from_slice(&buf[..8]);
                let echoed = u64::from_be_bytes(seq_bytes);
                let mut requests = shared.requests();
                let request = usize::try_from(echoed)
                    .ok()
                    .and_then(|i| requests.get_mut(i));
                if let Some(request) = request.filter(|r| !r.answered) {
                    request.answered = true;
                    shared.client_ok[request.phase].fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("client recv"),
        }
    }
    Ok(())
}

/// Floods `target` with UDP from `sources` (attacker addresses), round robin, as fast as the
/// socket takes it, until `end`.
fn udp_flood(
    ns: &Netns,
    sources: &[Ipv4Addr],
    target: SocketAddrV4,
    shared: &Shared,
    end: Instant,
) -> Result<()> {
    ns.enter()?;
    let sockets = sources
        .iter()
        .map(|&src| {
            UdpSocket::bind(SocketAddrV4::new(src, 0))
                .with_context(|| format!("binding a flood socket to {src}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let payload = [0x5au8; FLOOD_PAYLOAD];
    flood_loop(shared, end, |i| {
        let socket = &sockets[(i % sockets.len() as u64) as usize];
        socket.send_to(&payload, target).is_ok()
    });
    Ok(())
}

/// Calls `send` until `end`, a stop request or [`MAX_FLOOD_PACKETS`]; counts successes.
fn flood_loop(shared: &Shared, end: Instant, mut send: impl FnMut(u64) -> bool) {
    const BATCH: u64 = 256;
    let mut sent = 0u64;
    let mut i = 0u64;
    while i < MAX_FLOOD_PACKETS {
        if i.is_multiple_of(BATCH) {
            shared.flood_sent.fetch_add(sent, Ordering::Relaxed);
            sent = 0;
            if shared.should_stop() || Instant::now() >= end {
                break;
            }
        }
        if send(i) {
            sent += 1;
        }
        i += 1;
    }
    shared.flood_sent.fetch_add(sent, Ordering::Relaxed);
}

/// Floods `target` with raw Ethernet frames from random IPv4 sources, written with an
/// AF_PACKET socket straight onto the attacker's veth (so the attacker's stack never sees
/// them), until `end`.
fn spoofed_flood(
    ns: &Netns,
    link: &Link,
    target: SocketAddrV4,
    shared: &Shared,
    end: Instant,
) -> Result<()> {
    ns.enter()?;
    let socket = PacketSocket::bind(&link.b_if)?;
    let mut frame = udp_frame(
        parse_mac(&link.a_mac)?,
        parse_mac(&link.b_mac)?,
        *target.ip(),
        target.port(),
    );
    let mut rng = XorShift::seeded();
    flood_loop(shared, end, |_| {
        let src = random_source(&mut rng);
        frame[26..30].copy_from_slice(&src.octets());
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = ipv4_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        // UDP source port; the UDP checksum stays 0 (none).
        frame[34..36].copy_from_slice(&((rng.next() as u16) | 1024).to_be_bytes());
        socket.send(&frame)
    });
    Ok(())
}

/// Ethernet + IPv4 + UDP to `dst:port` with a zero source address (filled in per packet).
fn udp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let udp_len = 8 + FLOOD_PAYLOAD;
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL, UDP, checksum
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(14 + total, 0x5a);
    f
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A random unicast source outside 0/8, 10/8 (the demo's own addresses) and 127/8.
fn random_source(rng: &mut XorShift) -> Ipv4Addr {
    loop {
        let addr = Ipv4Addr::from(rng.next() as u32);
        let first = addr.octets()[0];
        if (1..224).contains(&first) && first != 10 && first != 127 {
            return addr;
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        XorShift(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// An AF_PACKET socket bound to one interface, for sending only (protocol 0 receives nothing).
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Binds to `ifname` in the calling thread's network namespace.
    fn bind(ifname: &str) -> Result<PacketSocket> {
        let c_name = std::ffi::CString::new(ifname)?;
        // SAFETY: valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("no interface {ifname}"));
        }
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: `raw` is a fresh socket this struct now owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = i32::try_from(ifindex)?;
        // SAFETY: `addr` is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("binding AF_PACKET to {ifname}"));
        }
        Ok(PacketSocket { fd })
    }

    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        n == frame.len() as isize
    }
}

// ---------------------------------------------------------------------------------------------
// Resources, each removed on drop.

/// The floodwall controller run inside the server namespace on the demo's own pins and state.
struct Floodwall {
    bin: PathBuf,
    ns: String,
    bpffs: PathBuf,
    state: PathBuf,
    attached: bool,
}

impl Floodwall {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args(args)
            .env("FLOODWALL_BPFFS", &self.bpffs)
            .env("FLOODWALL_STATE_DIR", &self.state)
            .env("FLOODWALL_CONFIG", self.config());
        cmd
    }

    /// A config path that does not exist, so a host's /etc/floodwall stays out of the demo.
    fn config(&self) -> PathBuf {
        self.state.join("floodwall.toml")
    }

    fn env_prefix(&self) -> String {
        format!(
            "FLOODWALL_BPFFS={} FLOODWALL_STATE_DIR={} FLOODWALL_CONFIG={}",
            self.bpffs.display(),
            self.state.display(),
            self.config().display()
        )
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        util::output(&mut self.command(args))
    }

    /// Runs a command and echoes it and its output.
    fn show(&self, args: &[&str]) -> Result<()> {
        println!("  $ floodwall {}", args.join(" "));
        for line in self.run(args)?.lines() {
            println!("    {line}");
        }
        Ok(())
    }

    fn attach(&mut self, ifaces: &[&str]) -> Result<()> {
        let mut args = vec!["attach"];
        args.extend_from_slice(ifaces);
        // Set first, so a failed attach that left something behind still gets detached.
        self.attached = true;
        self.show(&args)
    }

    fn totals(&self) -> Result<BTreeMap<String, u64>> {
        let out = self.run(&["stats", "--json"])?;
        let stats: Value =
            serde_json::from_str(&out).context("floodwall stats --json: bad JSON")?;
        let totals = stats["totals"]
            .as_object()
            .context("floodwall stats --json has no totals")?;
        Ok(totals
            .iter()
            .map(|(reason, c)| (reason.clone(), c["packets"].as_u64().unwrap_or(0)))
            .collect())
    }
}

impl Drop for Floodwall {
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        if let Err(e) = self.run(&["detach", "--all"]) {
            eprintln!("demo: cleanup: {e:#}");
        }
    }
}

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str, pid: u32) -> Result<Netns> {
        let name = format!("fwdemo-{role}-{pid}");
        util::output(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME args...`
    fn ip(&self, args: &[&str]) -> Result<String> {
        util::output(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Moves the calling thread (only it) into this namespace; sockets it then creates live
    /// there.
    fn enter(&self) -> Result<()> {
        let path = Path::new("/run/netns").join(&self.name);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: plain syscall on a valid fd; it affects this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("entering namespace {}", self.name));
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = util::output(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("demo: cleanup: {e:#}");
        }
    }
}

/// A veth pair created straight into two namespaces (it never exists in the root namespace),
/// with one address per end and static neighbour entries, so no ARP is needed.
/// Deleted on drop (also deleted with either namespace).
struct Link {
    ns_a: String,
    a_if: String,
    b_if: String,
    a_mac: String,
    b_mac: String,
}

impl Link {
    fn new(a: (&Netns, &str, Ipv4Addr), b: (&Netns, &str, Ipv4Addr)) -> Result<Link> {
        let ((ns_a, a_if, a_ip), (ns_b, b_if, b_ip)) = (a, b);
        util::output(Command::new("ip").args([
            "link", "add", a_if, "netns", &ns_a.name, "type", "veth", "peer", "name", b_if,
            "netns", &ns_b.name,
        ]))?;
        let mut link = Link {
            ns_a: ns_a.name.clone(),
            a_if: a_if.to_owned(),
            b_if: b_if.to_owned(),
            a_mac: String::new(),
            b_mac: String::new(),
        };
        link.a_mac = mac(ns_a, a_if)?;
        link.b_mac = mac(ns_b, b_if)?;
        for (ns, ifname, ip, peer_ip, peer_mac) in [
            (ns_a, a_if, a_ip, b_ip, &link.b_mac),
            (ns_b, b_if, b_ip, a_ip, &link.a_mac),
        ] {
            // No IPv6 link-local address: keeps router solicitations off the wire.
            ns.ip(&["link", "set", "dev", ifname, "addrgenmode", "none"])?;
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname])?;
            ns.ip(&["link", "set", "dev", ifname, "up"])?;
            neigh(ns, ifname, peer_ip, peer_mac)?;
        }
        wait_up(ns_a, a_if)?;
        wait_up(ns_b, b_if)?;
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Fails harmlessly if the namespace (and with it the pair) is already gone.
        let _ =
            util::output(Command::new("ip").args(["-n", &self.ns_a, "link", "del", &self.a_if]));
    }
}

fn neigh(ns: &Netns, ifname: &str, ip: Ipv4Addr, mac: &str) -> Result<()> {
    ns.ip(&[
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        mac,
        "dev",
        ifname,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

fn mac(ns: &Netns, ifname: &str) -> Result<String> {
    let out = ns.ip(&["-o", "link", "show", "dev", ifname])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC address for {ifname} in {out:?}"))
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bytes = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad MAC {s:?}"))?;
    bytes.try_into().map_err(|_| anyhow!("bad MAC {s:?}"))
}

fn wait_up(ns: &Netns, ifname: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if ns
            .ip(&["-o", "link", "show", "dev", ifname])?
            .contains("LOWER_UP")
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{ifname} in {} has no carrier after 5 s", ns.name);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A private bpffs on `/run/floodwall-demo-PID`: unlike `/sys/fs/bpf` it stays visible inside
/// `ip netns exec`, which remounts `/sys`. Unmounted and removed on drop.
struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    fn new(pid: u32) -> Result<BpffsDir> {
        let path = PathBuf::from(format!("/run/floodwall-demo-{pid}"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = BpffsDir { path };
        util::output(
            Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&dir.path),
        )?;
        Ok(dir)
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        // Fails harmlessly if the mount never happened; rmdir then still runs.
        let _ = util::output(Command::new("umount").arg("-l").arg(&self.path));
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("demo: cleanup: removing {}: {e}", self.path.display());
        }
    }
}

/// floodwall's state directory for the demo, removed with its contents on drop.
struct StateDir {
    path: PathBuf,
}

impl StateDir {
    fn new(pid: u32) -> Result<StateDir> {
        let path = std::env::temp_dir().join(format!("floodwall-demo-state-{pid}"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(StateDir { path })
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("demo: cleanup: removing {}: {e}", self.path.display());
        }
    }
}
