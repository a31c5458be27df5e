//! The demo (`cargo xtask demo` runs this binary): a UDP echo service under floods, first with floodwall only watching,
//! then with floodwall dropping.
//!
//! Topology, all made here and removed on exit (also on Ctrl-C or SIGTERM):
//!
//! ```text
//!   client ns  10.77.1.2 ──veth── 10.77.1.1  server ns  10.77.2.1 ──veth── 10.77.2.2  attacker ns
//!                                 (UDP echo on port 7,                     + 10.66.6.10-13
//!                                  floodwall on both veths)
//! ```
//!
//! The echo service spends [`SERVICE_WORK`] on each request, like a real service, so it has a
//! capacity a flood exceeds; its receive buffer holds the bursts floodwall lets through. The
//! client sends [`CLIENT_RATE`] echo requests a second and counts the echoes. Both phases
//! run the same steps: a calm second (the client alone), then three floods one after another:
//! a spoofed flood from random sources, a flood from a single source, a flood from a
//! blocklisted prefix. In phase 1 the service has no filter: floodwall is attached in dry-run,
//! so it passes every packet and only counts what it would drop (which keeps the live view the
//! same in both phases). Phase 2 turns dry-run off: same policy, same floods. A table line a
//! second shows the client's success, pps per reason and the top sources; the summary compares
//! the phases and ends with one `demo summary:` line of `key=value` pairs (read by the test).
//! A last part floods the server with spoofed SYNs while clients it has never seen open TCP
//! connections, once with the SYN challenge off and once with it on.
//!
//! Network rule: traffic flows only between the namespaces made here, over the veth pairs made
//! here (created directly inside the namespaces, never in the root namespace). No namespace
//! gets a default route, so nothing can leave them. Every traffic loop is bounded in packets
//! and time and checks the stop flag set by the signal handler.
//!
//! Namespaces, veth pairs, bpffs mounts, state directories and the floodwall CLI are the test
//! harness's (`floodwall_tests`), so the demo and the tests share one way of making them.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use floodwall_tests::cli::Floodwall;
use floodwall_tests::netns::{Netns, VethPair};

/// `--duration SECS` (8 to 300, default 30) and `--keep`, as `cargo xtask demo` passes them.
struct Args {
    /// Total seconds of traffic, split evenly over the two phases.
    duration: u64,
    /// Leave everything in place at the end, and print the commands that remove it.
    keep: bool,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            duration: 30,
            keep: false,
        };
        let mut words = std::env::args().skip(1);
        while let Some(word) = words.next() {
            match word.as_str() {
                "--keep" => args.keep = true,
                "--duration" => {
                    let value = words
                        .next()
                        .context("--duration needs a number of seconds")?;
                    args.duration = value
                        .parse()
                        .ok()
                        .filter(|d| (8..=300).contains(d))
                        .with_context(|| {
                            format!("--duration {value}: use whole seconds from 8 to 300")
                        })?;
                }
                other => bail!("unknown argument `{other}`: use --duration SECS and --keep"),
            }
        }
        Ok(args)
    }
}

/// Set by SIGINT/SIGTERM; every loop checks it.
static STOP: AtomicBool = AtomicBool::new(false);

/// The demo's namespaces are `fw-demo-ROLE-PID-N` (the harness's names, see `Netns::new`).
const NETNS_PREFIX: &str = "demo-";

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
/// Per-source limit; the client stays well under it.
const LIMIT_PPS: u64 = 200;
const CLIENT_RATE: u64 = 50;
/// Flood datagram payload.
const FLOOD_PAYLOAD: usize = 64;
/// The calm step that opens each phase: the client alone, which also gives it limiter state
/// before the spoofed flood takes every admission slot.
const CALM_SECS: u64 = 1;

/// CPU time the echo service spends on each request, as a real service would: it gives the
/// service a capacity (about 20k requests/s on one core, whatever the machine) that the floods
/// exceed, while the client's rate and what floodwall lets through stay far below it.
const SERVICE_WORK: Duration = Duration::from_micros(50);
/// The echo server's receive buffer. The default (about 200 KiB: a few hundred small datagrams
/// at the truesize of frames that went through XDP on a veth) overflows on the burst that the
/// admission and newcomer buckets let through when a spoofed flood starts, and a client
/// request caught in it is lost. A service that expects bursts sizes its buffer for them.
const ECHO_RCVBUF: usize = 2 << 20;

/// Hard caps, whatever the duration.
const MAX_FLOOD_PACKETS: u64 = 50_000_000;
const MAX_ECHOES: u64 = 200_000_000;
const MAX_REQUESTS: u64 = 100_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Unfiltered,
    Filtered,
}

const PHASES: [Phase; 2] = [Phase::Unfiltered, Phase::Filtered];

impl Phase {
    fn index(self) -> usize {
        match self {
            Phase::Unfiltered => 0,
            Phase::Filtered => 1,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::Unfiltered => "no filter",
            Phase::Filtered => "floodwall",
        }
    }

    /// Prefix of this phase's keys in the `demo summary:` line.
    fn key(self) -> &'static str {
        match self {
            Phase::Unfiltered => "unfiltered",
            Phase::Filtered => "filtered",
        }
    }
}

/// What the attacker does during one part of a phase.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// No flood: the client alone.
    Calm,
    /// Raw frames from random IPv4 sources.
    Spoofed,
    /// UDP from the attacker's own address.
    SingleSource,
    /// UDP from addresses in the blocklisted prefix.
    Blocklisted,
}

/// The steps of each phase, in order.
const STEPS: [Step; 4] = [
    Step::Calm,
    Step::Spoofed,
    Step::SingleSource,
    Step::Blocklisted,
];
const ATTACKS: [Step; 3] = [Step::Spoofed, Step::SingleSource, Step::Blocklisted];

impl Step {
    fn index(self) -> usize {
        match self {
            Step::Calm => 0,
            Step::Spoofed => 1,
            Step::SingleSource => 2,
            Step::Blocklisted => 3,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Step::Calm => "calm",
            Step::Spoofed => "spoofed",
            Step::SingleSource => "single",
            Step::Blocklisted => "blocked",
        }
    }

    fn describe(self) -> String {
        match self {
            Step::Calm => "calm: no flood".to_owned(),
            Step::Spoofed => "spoofed flood, random sources".to_owned(),
            Step::SingleSource => format!("single-source flood from {ATTACKER}"),
            Step::Blocklisted => format!("flood from blocklisted {BLOCKED_PREFIX}"),
        }
    }

    /// This step's part of the keys in the `demo summary:` line.
    fn key(self) -> &'static str {
        match self {
            Step::Calm => "calm",
            Step::Spoofed => "spoofed",
            Step::SingleSource => "single_source",
            Step::Blocklisted => "blocklisted",
        }
    }
}

/// Index of one step of one phase in the per-step counters.
fn slot(phase: Phase, step: Step) -> usize {
    phase.index() * STEPS.len() + step.index()
}

const SLOTS: usize = PHASES.len() * STEPS.len();

/// Slot marker for "between steps": the client sends nothing then.
const IDLE: usize = usize::MAX;

/// How long each step runs: whole seconds, so every live line covers one second.
struct Plan {
    attacks: [u64; 3],
}

impl Plan {
    fn new(total_secs: u64) -> Plan {
        let per_phase = total_secs.saturating_sub(2 * CALM_SECS) / 2;
        let (base, extra) = (per_phase / 3, per_phase % 3);
        let mut attacks = [base.max(1); 3];
        for (i, secs) in (0u64..).zip(attacks.iter_mut()) {
            if i < extra {
                *secs += 1;
            }
        }
        Plan { attacks }
    }

    fn secs(&self, step: Step) -> u64 {
        match step {
            Step::Calm => CALM_SECS,
            attack => self.attacks[attack.index() - 1],
        }
    }

    fn phase_secs(&self) -> u64 {
        STEPS.iter().map(|&step| self.secs(step)).sum()
    }

    fn describe(&self) -> String {
        STEPS
            .iter()
            .map(|&step| format!("{} {} s", step.label(), self.secs(step)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How long the live view waits for an echo before it counts the request as unanswered.
const ECHO_GRACE: Duration = Duration::from_millis(200);

/// One client request, indexed by its sequence number.
struct Request {
    at: Instant,
    slot: usize,
    answered: bool,
}

/// Counters shared by the traffic threads and the live view.
struct Shared {
    /// The step running now ([`slot`]), or [`IDLE`].
    slot: AtomicUsize,
    done: AtomicBool,
    /// Requests sent and answered (at any time), per step.
    client_sent: [AtomicU64; SLOTS],
    client_ok: [AtomicU64; SLOTS],
    requests: Mutex<Vec<Request>>,
    flood_sent: AtomicU64,
    server_rx: AtomicU64,
    /// Thread id of the echo server (which lives in the server namespace), 0 until it runs.
    echo_tid: AtomicI32,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            slot: AtomicUsize::new(IDLE),
            done: AtomicBool::new(false),
            client_sent: Default::default(),
            client_ok: Default::default(),
            requests: Mutex::new(Vec::new()),
            flood_sent: AtomicU64::new(0),
            server_rx: AtomicU64::new(0),
            echo_tid: AtomicI32::new(0),
        }
    }

    fn requests(&self) -> MutexGuard<'_, Vec<Request>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests of `slot` sent in `(from, to]` (unbounded where `None`), and how many of them
    /// were answered.
    fn answered(&self, slot: usize, from: Option<Instant>, to: Option<Instant>) -> (u64, u64) {
        let requests = self.requests();
        let start = from.map_or(0, |from| requests.partition_point(|r| r.at <= from));
        requests[start..]
            .iter()
            .take_while(|r| to.is_none_or(|to| r.at <= to))
            .filter(|r| r.slot == slot)
            .fold((0, 0), |(sent, ok), r| {
                (sent + 1, ok + u64::from(r.answered))
            })
    }

    /// Datagrams the echo server's full receive queue dropped so far.
    fn server_overflow(&self) -> u64 {
        udp_rcvbuf_errors(self.echo_tid.load(Ordering::SeqCst))
    }

    /// Requests sent and answered over `slots`.
    fn client(&self, slots: impl IntoIterator<Item = usize>) -> (u64, u64) {
        slots.into_iter().fold((0, 0), |(sent, ok), slot| {
            let s = self.client_sent[slot].load(Ordering::Relaxed);
            let o = self.client_ok[slot].load(Ordering::Relaxed).min(s);
            (sent + s, ok + o)
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

fn main() -> Result<()> {
    let args = Args::parse()?;
    let result = run_demo(&args);
    // By now every namespace, veth, pin and directory the demo made is gone (or kept).
    if stopped() {
        eprintln!("demo: interrupted; cleaned up");
        std::process::exit(130);
    }
    result
}

fn run_demo(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo needs root (namespaces, veth pairs, XDP): run it as root");
    }
    ctrlc::set_handler(|| {
        if !STOP.swap(true, Ordering::SeqCst) {
            eprintln!("demo: interrupted: stopping traffic and cleaning up");
        }
    })
    .context("cannot install the SIGINT/SIGTERM handler")?;

    let server = Netns::new(&format!("{NETNS_PREFIX}server"))?;
    let client = Netns::new(&format!("{NETNS_PREFIX}client"))?;
    let attacker = Netns::new(&format!("{NETNS_PREFIX}attacker"))?;
    check_stop()?;
    let to_client = VethPair::new(
        &server,
        &client,
        &format!("{SERVER_TO_CLIENT}/24"),
        &format!("{CLIENT}/24"),
        "fd00:77:1::1/64",
        "fd00:77:1::2/64",
    )?;
    let to_attacker = VethPair::new(
        &server,
        &attacker,
        &format!("{SERVER_TO_ATTACKER}/24"),
        &format!("{ATTACKER}/24"),
        "fd00:77:2::1/64",
        "fd00:77:2::2/64",
    )?;
    for src in BLOCKED_SOURCES {
        to_attacker.add_b_addr(&server, &attacker, &format!("{src}/24"))?;
    }
    // The echoes to the blocklisted sources go back over the attacker's veth, nowhere else.
    server.exec(&[
        "ip",
        "route",
        "add",
        BLOCKED_PREFIX,
        "dev",
        to_attacker.a_name(),
    ])?;
    // Dropped before the veths and namespaces: detaches, unmounts its bpffs, removes its state.
    let fw = Floodwall::new(Some(&server))?;
    check_stop()?;

    let plan = Plan::new(args.duration);
    println!(
        "demo: namespaces {} (UDP echo on port {ECHO_PORT}), {} and {}",
        server.name(),
        client.name(),
        attacker.name()
    );
    println!(
        "demo: client {CLIENT} -> {SERVER_TO_CLIENT} over {}/{}; attacker {ATTACKER} and \
         {}-{} -> {SERVER_TO_ATTACKER} over {}/{}",
        to_client.b_name(),
        to_client.a_name(),
        BLOCKED_SOURCES[0],
        BLOCKED_SOURCES[3].octets()[3],
        to_attacker.b_name(),
        to_attacker.a_name(),
    );
    println!(
        "demo: the client sends {CLIENT_RATE} requests/s and counts echoes; 2 phases of {} s, \
         each {}",
        plan.phase_secs(),
        plan.describe()
    );

    let shared = Shared::new();
    let ctx = Ctx {
        attacker: &attacker,
        to_client: &to_client,
        to_attacker: &to_attacker,
        shared: &shared,
        plan: &plan,
    };
    // Generous: the phases plus the time attaching, configuring and sampling take.
    let deadline =
        Instant::now() + Duration::from_secs(plan.phase_secs() * 2) + Duration::from_secs(60);
    let outcome = thread::scope(|s| -> Result<Outcome> {
        let echo = s.spawn(|| echo_server(&server, &shared, deadline));
        let client_thread = s.spawn(|| run_client(&client, &shared, deadline));
        let outcome = run_phases(&ctx, &fw);
        shared.done.store(true, Ordering::SeqCst);
        let echo = join(echo, "echo server");
        let client_result = join(client_thread, "client");
        let outcome = outcome?;
        echo?;
        client_result?;
        Ok(outcome)
    })?;
    check_stop()?;
    let peer = Floodwall::new(Some(&client))?;
    let syn = syn_flood_part(
        &server,
        &client,
        &attacker,
        &to_client,
        &to_attacker,
        &fw,
        &peer,
    )?;
    drop(peer);
    check_stop()?;
    let filtered_ok = print_summary(&shared, &outcome, &plan, &syn);

    if args.keep {
        print_keep(&fw, &server, &[&server, &client, &attacker])?;
        std::mem::forget(fw);
        std::mem::forget((to_client, to_attacker));
        std::mem::forget((server, client, attacker));
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

struct Ctx<'a> {
    attacker: &'a Netns,
    to_client: &'a VethPair,
    to_attacker: &'a VethPair,
    shared: &'a Shared,
    plan: &'a Plan,
}

/// What the summary needs beyond the client counters.
#[derive(Default)]
struct Outcome {
    /// Flood packets sent, and datagrams the echo server read, per step.
    flood_sent: [u64; SLOTS],
    server_rx: [u64; SLOTS],
    /// Datagrams the echo server's full receive queue dropped, per step.
    server_overflow: [u64; SLOTS],
    /// Packets floodwall counted per reason during each phase (in phase 1, dry-run, the
    /// dropping reasons count what it would have dropped).
    reasons: [BTreeMap<String, u64>; 2],
    /// The heaviest sources at the end.
    top: Vec<TopSource>,
}

fn run_phases(ctx: &Ctx<'_>, fw: &Floodwall<'_>) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let (a, b) = (ctx.to_client.a_name(), ctx.to_attacker.a_name());
    for phase in PHASES {
        check_stop()?;
        match phase {
            Phase::Unfiltered => {
                println!(
                    "\n== phase 1/2: no filter: floodwall only watches (dry-run): it counts \
                     what it would drop and passes every packet"
                );
                fw.attach_shown(&[a, b], true)?;
                fw.show(&["block", "add", BLOCKED_PREFIX, "--comment", "demo attacker"])?;
                let pps = LIMIT_PPS.to_string();
                fw.show(&["limit", "set", "--pps", &pps, "--burst", &pps])?;
            }
            Phase::Filtered => {
                println!(
                    "\n== phase 2/2: floodwall on: dry-run off; same policy, same floods in \
                     the same order"
                );
                fw.show(&["limit", "set", "--dry-run", "false"])?;
            }
        }
        check_stop()?;
        print_header(phase);
        let before = fw.totals()?;
        let mut second = 0;
        for step in STEPS {
            check_stop()?;
            let counters = |shared: &Shared| {
                [
                    shared.flood_sent.load(Ordering::Relaxed),
                    shared.server_rx.load(Ordering::Relaxed),
                    shared.server_overflow(),
                ]
            };
            let before = counters(ctx.shared);
            run_step(ctx, fw, phase, step, &mut second)?;
            let after = counters(ctx.shared);
            let i = slot(phase, step);
            outcome.flood_sent[i] = after[0] - before[0];
            outcome.server_rx[i] = after[1] - before[1];
            outcome.server_overflow[i] = after[2].saturating_sub(before[2]);
        }
        let after = fw.totals()?;
        outcome.reasons[phase.index()] = after
            .iter()
            .map(|(reason, &n)| {
                let was = before.get(reason).copied().unwrap_or(0);
                (reason.clone(), n.saturating_sub(was))
            })
            .collect();
    }
    outcome.top = fw.top(8)?;
    outcome
        .top
        .retain(|s| s.passed + s.dropped >= TOP_MIN_PACKETS);
    outcome.top.truncate(3);
    Ok(outcome)
}

/// Runs one step: its flood (if any) for the step's length, with a live line per second.
fn run_step(
    ctx: &Ctx<'_>,
    fw: &Floodwall<'_>,
    phase: Phase,
    step: Step,
    second: &mut u64,
) -> Result<()> {
    let shared = ctx.shared;
    let start = Instant::now();
    let end = start + Duration::from_secs(ctx.plan.secs(step));
    let target = SocketAddrV4::new(SERVER_TO_ATTACKER, ECHO_PORT);
    thread::scope(|s| -> Result<()> {
        let flood = match step {
            Step::Calm => None,
            Step::Spoofed => {
                Some(s.spawn(move || {
                    spoofed_flood(ctx.attacker, ctx.to_attacker, target, shared, end)
                }))
            }
            Step::SingleSource => {
                Some(s.spawn(move || udp_flood(ctx.attacker, &[ATTACKER], target, shared, end)))
            }
            Step::Blocklisted => Some(
                s.spawn(move || udp_flood(ctx.attacker, &BLOCKED_SOURCES, target, shared, end)),
            ),
        };
        shared.slot.store(slot(phase, step), Ordering::SeqCst);
        let live = live_view(ctx, fw, phase, step, (start, end), second);
        shared.slot.store(IDLE, Ordering::SeqCst);
        // The flood stops by itself at `end` (or on a stop request).
        let flood = flood.map_or(Ok(()), |flood| join(flood, "flood"));
        live?;
        flood
    })
}

/// Snapshot of what the live line diffs.
struct Sample {
    at: Instant,
    flood_sent: u64,
    server_rx: u64,
    totals: BTreeMap<String, u64>,
    /// Packets (passed and dropped) of the sources with limiter state.
    sources: BTreeMap<String, u64>,
}

fn sample(shared: &Shared, fw: &Floodwall<'_>) -> Result<Sample> {
    let at = Instant::now();
    let flood_sent = shared.flood_sent.load(Ordering::Relaxed);
    let server_rx = shared.server_rx.load(Ordering::Relaxed);
    Ok(Sample {
        at,
        flood_sent,
        server_rx,
        totals: fw.totals()?,
        sources: fw
            .top(16)?
            .into_iter()
            .map(|s| (s.source, s.passed + s.dropped))
            .collect(),
    })
}

/// Prints a table line at every second of the step. Each line is printed [`ECHO_GRACE`] after
/// its second ends, so the requests of that second had the time to be answered.
fn live_view(
    ctx: &Ctx<'_>,
    fw: &Floodwall<'_>,
    phase: Phase,
    step: Step,
    (start, end): (Instant, Instant),
    second: &mut u64,
) -> Result<()> {
    let slot = slot(phase, step);
    let mut prev = sample(ctx.shared, fw)?;
    let mut k = 1;
    loop {
        let tick = (start + Duration::from_secs(k)).min(end);
        if !sleep_until(tick) {
            bail!("demo interrupted");
        }
        let now = sample(ctx.shared, fw)?;
        let last = tick >= end;
        if last {
            // The client stops with the step.
            ctx.shared.slot.store(IDLE, Ordering::SeqCst);
        }
        if !sleep_until(Instant::now() + ECHO_GRACE) {
            bail!("demo interrupted");
        }
        // The first line takes the requests from the start of the step, the last the ones up
        // to its end.
        let from = (k > 1).then_some(prev.at);
        let to = (!last).then_some(now.at);
        *second += 1;
        print_line(
            step,
            *second,
            ctx.shared.answered(slot, from, to),
            &prev,
            &now,
        );
        if last {
            return Ok(());
        }
        prev = now;
        k += 1;
    }
}

/// Fewer packets in a second than this do not make a top source (a spoofed flood repeats a
/// few random addresses by chance).
const TOP_MIN_PACKETS: u64 = 10;

/// The reasons with a column of their own in the live table.
const REASON_COLUMNS: [&str; 4] = ["passed", "blocklist", "over_pps", "newcomer"];

fn print_header(phase: Phase) {
    println!(
        "  {:>4} {:<8} {:<14} {:>8} {:>9} | {:>7} {:>9} {:>8} {:>8} | top sources, pps",
        "time",
        "attack",
        "client ok",
        "flood/s",
        "service/s",
        "passed",
        "blocklist",
        "over_pps",
        "newcomer",
    );
    if phase == Phase::Unfiltered {
        println!(
            "  (dry-run: blocklist, over_pps and newcomer count what floodwall would drop; \
             every packet reaches the service)"
        );
    }
}

fn print_line(step: Step, second: u64, (sent, ok): (u64, u64), prev: &Sample, now: &Sample) {
    let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let delta = |map_prev: &BTreeMap<String, u64>, map_now: &BTreeMap<String, u64>, key: &str| {
        let before = map_prev.get(key).copied().unwrap_or(0);
        map_now
            .get(key)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before)
    };
    let pps = |packets: u64| packets as f64 / secs;
    let reason = |name: &str| delta(&prev.totals, &now.totals, name);
    // Top sources this second: the ones with limiter state, plus the two groups that never
    // get any (the blocklisted prefix, and the newcomers a spoofed flood is made of).
    let mut top: Vec<(String, u64)> = now
        .sources
        .keys()
        .map(|source| (source.clone(), delta(&prev.sources, &now.sources, source)))
        .filter(|&(_, packets)| packets >= TOP_MIN_PACKETS)
        .collect();
    top.push((format!("{BLOCKED_PREFIX} (blocklist)"), reason("blocklist")));
    top.push(("newcomers".to_owned(), reason("newcomer")));
    top.retain(|&(_, packets)| packets > 0);
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let top: Vec<String> = top
        .iter()
        .take(3)
        .map(|(source, packets)| format!("{source} {}", rate(pps(*packets))))
        .collect();
    let other: u64 = now
        .totals
        .keys()
        .filter(|r| !REASON_COLUMNS.contains(&r.as_str()) && r.as_str() != "dry_run")
        .map(|r| reason(r))
        .sum();
    let mut line = format!(
        "  {:>3}s {:<8} {ok:>3}/{sent:<3} {:>6} {:>8} {:>9} | {:>7} {:>9} {:>8} {:>8} | {}",
        second,
        step.label(),
        percent(ok, sent),
        rate(pps(now.flood_sent.saturating_sub(prev.flood_sent))),
        rate(pps(now.server_rx.saturating_sub(prev.server_rx))),
        rate(pps(reason("passed"))),
        rate(pps(reason("blocklist"))),
        rate(pps(reason("over_pps"))),
        rate(pps(reason("newcomer"))),
        if top.is_empty() {
            "-".to_owned()
        } else {
            top.join(", ")
        },
    );
    if other > 0 {
        line.push_str(&format!(" (other reasons {}/s)", rate(pps(other))));
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

/// `ok/sent` as a percentage with two decimals, rounded down (so 99.00 means at least 99%);
/// 0.00 when nothing was sent.
fn percent_floor(ok: u64, sent: u64) -> String {
    let basis_points = (ok.min(sent) * 10_000).checked_div(sent).unwrap_or(0);
    format!("{}.{:02}", basis_points / 100, basis_points % 100)
}

/// Prints the summary; false if the filter did not keep the client served.
fn print_summary(shared: &Shared, outcome: &Outcome, plan: &Plan, syn: &[SynRound; 2]) -> bool {
    let cell = |(sent, ok): (u64, u64)| format!("{} ({ok}/{sent})", percent(ok, sent));
    let attack_slots = |phase: Phase| ATTACKS.map(|step| slot(phase, step));
    let phase_slots = |phase: Phase| STEPS.map(|step| slot(phase, step));
    println!("\n== summary: client success (echoes received / requests sent), per step");
    println!(
        "  {:<44} {:>20} {:>20}",
        "",
        Phase::Unfiltered.label(),
        Phase::Filtered.label()
    );
    for step in STEPS {
        println!(
            "  {:<44} {:>20} {:>20}",
            format!("{} ({} s)", step.describe(), plan.secs(step)),
            cell(shared.client([slot(Phase::Unfiltered, step)])),
            cell(shared.client([slot(Phase::Filtered, step)])),
        );
    }
    println!(
        "  {:<44} {:>20} {:>20}",
        "under attack (the three floods)",
        cell(shared.client(attack_slots(Phase::Unfiltered))),
        cell(shared.client(attack_slots(Phase::Filtered))),
    );
    let sum = |counts: &[u64; SLOTS], phase: Phase| -> u64 {
        phase_slots(phase).iter().map(|&slot| counts[slot]).sum()
    };
    for (what, counts) in [
        ("flood packets sent", &outcome.flood_sent),
        ("datagrams the service read", &outcome.server_rx),
        (
            "lost to the service's full socket queue",
            &outcome.server_overflow,
        ),
    ] {
        println!(
            "  {what:<44} {:>20} {:>20}",
            count(sum(counts, Phase::Unfiltered)),
            count(sum(counts, Phase::Filtered)),
        );
    }
    let get = |phase: Phase, reason: &str| {
        outcome.reasons[phase.index()]
            .get(reason)
            .copied()
            .unwrap_or(0)
    };
    let dropping = [
        "blocklist",
        "over_pps",
        "newcomer",
        "over_bps",
        "global_cap",
    ];
    let by_reason = |phase: Phase| {
        dropping
            .iter()
            .filter(|&&r| get(phase, r) > 0 || REASON_COLUMNS.contains(&r))
            .map(|&r| format!("{r} {}", get(phase, r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  packets dropped per reason (phase 2): {}",
        by_reason(Phase::Filtered)
    );
    println!(
        "  (phase 1, dry-run, would have dropped: {}; it passed all of it)",
        by_reason(Phase::Unfiltered)
    );
    let top: Vec<String> = outcome
        .top
        .iter()
        .map(|s| {
            format!(
                "{} (passed {}, dropped {})",
                s.source,
                count(s.passed),
                count(s.dropped)
            )
        })
        .collect();
    println!(
        "  top sources with limiter state, both phases: {}",
        if top.is_empty() {
            "none".to_owned()
        } else {
            top.join(", ")
        }
    );

    let mut ok = true;
    for slots in std::iter::once(attack_slots(Phase::Filtered).to_vec())
        .chain(ATTACKS.map(|step| vec![slot(Phase::Filtered, step)]))
    {
        let (sent, answered) = shared.client(slots);
        if answered * 100 < sent * 99 {
            ok = false;
        }
    }
    if !ok {
        println!(
            "WARNING: with floodwall on, the client's success fell under 99% in at least one \
             flood: the filter did not keep the service available"
        );
    }
    let (sent, answered) = shared.client(attack_slots(Phase::Unfiltered));
    if sent > 0 && answered * 100 >= sent * 99 {
        println!(
            "  note: without the filter the echo server still answered the client on this \
             machine; what floodwall saved shows in the datagrams that reached it"
        );
    }

    let mut fields = Vec::new();
    for phase in PHASES {
        let (sent, ok) = shared.client(attack_slots(phase));
        fields.push(format!(
            "{}_client_success={}%",
            phase.key(),
            percent_floor(ok, sent)
        ));
    }
    for phase in PHASES {
        for step in ATTACKS {
            let (sent, ok) = shared.client([slot(phase, step)]);
            fields.push(format!(
                "{}_{}_client_success={}%",
                phase.key(),
                step.key(),
                percent_floor(ok, sent)
            ));
        }
    }
    for reason in ["blocklist", "over_pps", "newcomer"] {
        fields.push(format!("{reason}_dropped={}", get(Phase::Filtered, reason)));
    }
    let [off, on] = syn;
    println!(
        "\n== SYN flood: new TCP clients connected: {}/{SYN_CLIENTS} with the challenge off \
         ({} SYNs in {SYN_ROUND_SECS} s), {}/{SYN_CLIENTS} with it on ({} SYNs, {} answered \
         from XDP with a SYN cookie)",
        off.connected, off.flood_sent, on.connected, on.flood_sent, on.challenged
    );
    for (key, round) in [("synflood_off", off), ("synflood_on", on)] {
        fields.push(format!(
            "{key}_new_clients={}%",
            percent_floor(u64::from(round.connected), u64::from(SYN_CLIENTS))
        ));
    }
    fields.push(format!("synflood_on_challenged={}", on.challenged));
    println!("demo summary: {}", fields.join(" "));
    ok
}

fn print_keep(fw: &Floodwall<'_>, server: &Netns, namespaces: &[&Netns]) -> Result<()> {
    let env = fw.env_prefix();
    let bin = floodwall_tests::cli::floodwall_bin()?;
    println!("\ndemo: --keep: namespaces, veths, filter and pins left in place; inspect with");
    println!(
        "  {env} ip netns exec {} {} stats",
        server.name(),
        bin.display()
    );
    println!("remove them with:");
    println!(
        "  {env} ip netns exec {} {} detach --all",
        server.name(),
        bin.display()
    );
    for ns in namespaces {
        println!("  ip netns del {}", ns.name());
    }
    println!("  umount {0} && rmdir {0}", fw.bpffs().display());
    println!("  rm -r {}", fw.state_dir().display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Traffic. Each function runs on its own thread and first moves that thread into a namespace.

/// Echoes every datagram on port 7 back to its sender, until the demo is done.
fn echo_server(ns: &Netns, shared: &Shared, deadline: Instant) -> Result<()> {
    enter(ns)?;
    // SAFETY: gettid has no preconditions and cannot fail.
    shared
        .echo_tid
        .store(unsafe { libc::gettid() }, Ordering::SeqCst);
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ECHO_PORT))
        .context("binding the echo server")?;
    set_rcvbuf(&socket, ECHO_RCVBUF)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 2048];
    let mut echoed = 0u64;
    while echoed < MAX_ECHOES && !shared.should_stop() && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                echoed += 1;
                shared.server_rx.fetch_add(1, Ordering::Relaxed);
                let work = Instant::now();
                while work.elapsed() < SERVICE_WORK {
                    std::hint::spin_loop();
                }
                // Fails for spoofed sources: the server has no route to them.
                let _ = socket.send_to(&buf[..len], from);
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("echo server recv"),
        }
    }
    Ok(())
}

/// Sets the receive buffer of `socket` to `bytes`, past `net.core.rmem_max` (which stays as it
/// is) with `SO_RCVBUFFORCE`, since the demo runs as root.
fn set_rcvbuf(socket: &UdpSocket, bytes: usize) -> Result<()> {
    let value = libc::c_int::try_from(bytes)?;
    // SAFETY: `value` is a valid c_int for the length given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("setting the echo server's receive buffer (SO_RCVBUFFORCE)");
    }
    Ok(())
}

/// Datagrams the kernel dropped because a UDP socket's receive queue was full
/// (`Udp: RcvbufErrors`), in the network namespace of thread `tid` of this process; 0 if
/// unknown.
fn udp_rcvbuf_errors(tid: libc::pid_t) -> u64 {
    if tid == 0 {
        return 0;
    }
    let Ok(snmp) = std::fs::read_to_string(format!("/proc/self/task/{tid}/net/snmp")) else {
        return 0;
    };
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(keys), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    keys.split_whitespace()
        .zip(values.split_whitespace())
        .find(|(key, _)| *key == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Sends [`CLIENT_RATE`] requests a second (sequence number and step in the payload) while a
/// step runs, and counts each echoed request once, for the step it was sent in.
fn run_client(ns: &Netns, shared: &Shared, deadline: Instant) -> Result<()> {
    enter(ns)?;
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
            let slot = shared.slot.load(Ordering::SeqCst);
            if slot < SLOTS {
                let mut payload = [0u8; 32];
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                payload[8] = slot as u8;
                // A request that cannot even be sent counts as failed.
                let _ = socket.send_to(&payload, server);
                shared.requests().push(Request {
                    at: now,
                    slot,
                    answered: false,
                });
                shared.client_sent[slot].fetch_add(1, Ordering::Relaxed);
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
                    shared.client_ok[request.slot].fetch_add(1, Ordering::Relaxed);
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
    enter(ns)?;
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
    link: &VethPair,
    target: SocketAddrV4,
    shared: &Shared,
    end: Instant,
) -> Result<()> {
    enter(ns)?;
    let socket = PacketSocket::bind(link.b_name())?;
    let mut frame = udp_frame(link.a_mac(), link.b_mac(), *target.ip(), target.port());
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

/// Moves the calling thread (only it) into `ns`; sockets it then creates live there.
fn enter(ns: &Netns) -> Result<()> {
    let file = std::fs::File::open(ns.path())
        .with_context(|| format!("opening {}", ns.path().display()))?;
    // SAFETY: plain syscall on a valid fd; it affects this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering namespace {}", ns.name()));
    }
    Ok(())
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
// The floodwall CLI, as the demo shows it.

/// What the demo does with the harness's [`Floodwall`] beyond running commands.
trait Shown {
    /// Runs a command and echoes it and its output.
    fn show(&self, args: &[&str]) -> Result<()>;
    /// `attach [--dry-run] IFACES`, shown.
    fn attach_shown(&self, ifaces: &[&str], dry_run: bool) -> Result<()>;
    /// Packets per reason so far (`floodwall stats --json`).
    fn totals(&self) -> Result<BTreeMap<String, u64>>;
    /// The `n` heaviest sources with limiter state (`floodwall top --json`).
    fn top(&self, n: usize) -> Result<Vec<TopSource>>;
    /// The environment that points a shell's floodwall at this instance.
    fn env_prefix(&self) -> String;
}

impl Shown for Floodwall<'_> {
    fn show(&self, args: &[&str]) -> Result<()> {
        println!("  $ floodwall {}", args.join(" "));
        for line in self.ok(args)?.lines() {
            println!("    {line}");
        }
        Ok(())
    }

    fn attach_shown(&self, ifaces: &[&str], dry_run: bool) -> Result<()> {
        let mut args = vec!["attach"];
        if dry_run {
            args.push("--dry-run");
        }
        args.extend_from_slice(ifaces);
        self.show(&args)
    }

    fn totals(&self) -> Result<BTreeMap<String, u64>> {
        let stats = self.json(&["stats", "--json"])?;
        let totals = stats["totals"]
            .as_object()
            .context("floodwall stats --json has no totals")?;
        Ok(totals
            .iter()
            .map(|(reason, c)| (reason.clone(), c["packets"].as_u64().unwrap_or(0)))
            .collect())
    }

    fn top(&self, n: usize) -> Result<Vec<TopSource>> {
        let sources = self.json(&["top", "-n", &n.to_string(), "--json"])?;
        Ok(sources
            .as_array()
            .context("floodwall top --json: not an array")?
            .iter()
            .map(|s| TopSource {
                source: s["source"].as_str().unwrap_or("?").to_owned(),
                passed: s["passed"].as_u64().unwrap_or(0),
                dropped: s["dropped"].as_u64().unwrap_or(0),
            })
            .collect())
    }

    fn env_prefix(&self) -> String {
        format!(
            "FLOODWALL_BPFFS={} FLOODWALL_STATE_DIR={} FLOODWALL_CONFIG={}",
            self.pin_dir().display(),
            self.state_dir().display(),
            self.config_path().display()
        )
    }
}

/// One line of `floodwall top`.
struct TopSource {
    source: String,
    passed: u64,
    dropped: u64,
}

// ---------------------------------------------------------------------------------------------
// The SYN flood: clients the server has never seen open TCP connections during a spoofed SYN
// flood, with the SYN challenge off and then on.

const SYN_PORT: u16 = 8443;
/// New client addresses per round, each connecting once.
const SYN_CLIENTS: u8 = 20;
const SYN_ROUND_SECS: u64 = 6;
/// A client's connect must succeed within this.
const SYN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// New client `i`: 10.77.1.100 onwards, on the client's veth.
fn syn_client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1, 100 + i)
}

/// What one round of the SYN flood did.
struct SynRound {
    connected: u32,
    flood_sent: u64,
    challenged: u64,
}

/// Both rounds: the challenge off, then on. `fw` is the server's floodwall; the client end
/// gets a floodwall of its own in dry-run (`peer`), only because a veth delivers the frames
/// the server sends back with `XDP_TX` to a peer that runs XDP.
fn syn_flood_part(
    server: &Netns,
    client: &Netns,
    attacker: &Netns,
    to_client: &VethPair,
    to_attacker: &VethPair,
    fw: &Floodwall<'_>,
    peer: &Floodwall<'_>,
) -> Result<[SynRound; 2]> {
    for i in 0..2 * SYN_CLIENTS {
        to_client.add_b_addr(server, client, &format!("{}/24", syn_client(i)))?;
    }
    // Complete checksums, as a real wire delivers them (veth would send partial ones).
    client.exec(&["ethtool", "-K", to_client.b_name(), "tx", "off"])?;
    peer.ok(&["attach", "--dry-run", to_client.b_name()])?;
    println!(
        "\n== SYN flood: spoofed SYNs from random sources to port {SYN_PORT} while {SYN_CLIENTS} \
         new clients ({}-{}) each open one TCP connection; the newcomer budget is small, as it \
         is against any flood much larger than it",
        syn_client(0),
        syn_client(SYN_CLIENTS - 1).octets()[3]
    );
    fw.show(&[
        "limit",
        "set",
        "--new-sources",
        "10",
        "--newcomer-pps",
        "100",
    ])?;
    let done = AtomicBool::new(false);
    let rounds = thread::scope(|s| -> Result<[SynRound; 2]> {
        let listener = s.spawn(|| tcp_echo(server, &done));
        let result = (|| -> Result<[SynRound; 2]> {
            let off = syn_round(attacker, client, to_attacker, fw, false)?;
            let on = syn_round(attacker, client, to_attacker, fw, true)?;
            Ok([off, on])
        })();
        done.store(true, Ordering::SeqCst);
        let listener = join(listener, "TCP echo server");
        let rounds = result?;
        listener?;
        Ok(rounds)
    })?;
    fw.show(&["limit", "set", "--syn-cookies", "off"])?;
    Ok(rounds)
}

/// Accepts and echoes TCP connections on [`SYN_PORT`] in the server namespace until `done`.
fn tcp_echo(server: &Netns, done: &AtomicBool) -> Result<()> {
    enter(server)?;
    let listener = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SYN_PORT))
        .context("binding the TCP echo server")?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(4 * SYN_ROUND_SECS + 30);
    while !done.load(Ordering::SeqCst) && !stopped() && Instant::now() < deadline {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut buf = [0u8; 64];
                if let Ok(n) = std::io::Read::read(&mut conn, &mut buf) {
                    let _ = std::io::Write::write_all(&mut conn, &buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e).context("accepting a TCP connection"),
        }
    }
    Ok(())
}

fn syn_round(
    attacker: &Netns,
    client: &Netns,
    to_attacker: &VethPair,
    fw: &Floodwall<'_>,
    challenge: bool,
) -> Result<SynRound> {
    check_stop()?;
    let mode = if challenge { "on" } else { "off" };
    fw.show(&["limit", "set", "--syn-cookies", mode])?;
    let challenged_before = fw.totals()?.get("syn_challenged").copied().unwrap_or(0);
    let sent = AtomicU64::new(0);
    let connected = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + Duration::from_secs(SYN_ROUND_SECS);
    let first = if challenge { SYN_CLIENTS } else { 0 };
    thread::scope(|s| -> Result<()> {
        let flood = s.spawn(|| syn_flood(attacker, to_attacker, &sent, end));
        // The clients start once the flood is under way, spread over the round.
        thread::sleep(Duration::from_secs(1));
        let gap = Duration::from_secs(SYN_ROUND_SECS - 3) / u32::from(SYN_CLIENTS);
        let mut clients = Vec::new();
        for i in 0..SYN_CLIENTS {
            let connected = &connected;
            clients.push(s.spawn(move || -> Result<()> {
                enter(client)?;
                if tcp_client(syn_client(first + i)) {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
            thread::sleep(gap);
        }
        let mut second = 0;
        while Instant::now() < end {
            thread::sleep(Duration::from_secs(1));
            second += 1;
            println!(
                "  [syn {mode} {second}s] flood {:>9} SYNs sent; new clients connected {:>2}/{SYN_CLIENTS}",
                sent.load(Ordering::Relaxed),
                connected.load(Ordering::Relaxed),
            );
        }
        for c in clients {
            join(c, "TCP client")?;
        }
        join(flood, "SYN flood")
    })?;
    let challenged = fw
        .totals()?
        .get("syn_challenged")
        .copied()
        .unwrap_or(0)
        .saturating_sub(challenged_before);
    Ok(SynRound {
        connected: u32::try_from(connected.load(Ordering::Relaxed))?,
        flood_sent: sent.load(Ordering::Relaxed),
        challenged,
    })
}

/// One TCP connection from `local` to the server, with an echo. Whether it worked.
fn tcp_client(local: Ipv4Addr) -> bool {
    let attempt = || -> Result<()> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(local, 0)).into())?;
        let server = SocketAddr::V4(SocketAddrV4::new(SERVER_TO_CLIENT, SYN_PORT));
        socket.connect_timeout(&server.into(), SYN_CONNECT_TIMEOUT)?;
        let mut stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        std::io::Write::write_all(&mut stream, b"hello")?;
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut stream, &mut buf)?;
        anyhow::ensure!(&buf == b"hello", "echo garbled");
        Ok(())
    };
    attempt().is_ok()
}

/// Spoofed SYNs (with an MSS option, as every real client sends) from random sources to the
/// server's attacker-side address, from the attacker's veth, until `end`.
fn syn_flood(ns: &Netns, link: &VethPair, sent: &AtomicU64, end: Instant) -> Result<()> {
    enter(ns)?;
    let socket = PacketSocket::bind(link.b_name())?;
    let mut frame = Vec::with_capacity(58);
    frame.extend_from_slice(&link.a_mac());
    frame.extend_from_slice(&link.b_mac());
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4: 44 bytes, DF, TTL 64, TCP; addresses and checksum per packet.
    frame.extend_from_slice(&[0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&SERVER_TO_ATTACKER.octets());
    // TCP: ports, seq, ack, doff 6, SYN, window, checksum, urgent, MSS 1460.
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&SYN_PORT.to_be_bytes());
    frame.extend_from_slice(&[0; 8]);
    frame.extend_from_slice(&[0x60, 0x02, 0xfa, 0xf0, 0, 0, 0, 0, 2, 4, 0x05, 0xb4]);
    let mut rng = XorShift::seeded();
    let mut count = 0u64;
    for i in 0..MAX_FLOOD_PACKETS {
        if i.is_multiple_of(256) && (stopped() || Instant::now() >= end) {
            break;
        }
        let src = random_source(&mut rng);
        let r = rng.next();
        frame[26..30].copy_from_slice(&src.octets());
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = ipv4_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        frame[34..36].copy_from_slice(&((r as u16) | 1024).to_be_bytes());
        frame[38..42].copy_from_slice(&((r >> 16) as u32).to_be_bytes());
        frame[50..52].copy_from_slice(&[0, 0]);
        let mut pseudo = Vec::with_capacity(12 + 24);
        pseudo.extend_from_slice(&frame[26..34]);
        pseudo.extend_from_slice(&[0, 6, 0, 24]);
        pseudo.extend_from_slice(&frame[34..58]);
        let sum = ipv4_checksum(&pseudo);
        frame[50..52].copy_from_slice(&sum.to_be_bytes());
        if socket.send(&frame) {
            count += 1;
            if count.is_multiple_of(256) {
                sent.store(count, Ordering::Relaxed);
            }
        }
    }
    sent.store(count, Ordering::Relaxed);
    Ok(())
}
