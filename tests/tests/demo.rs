//! `cargo xtask demo` end to end: a short run as a child process, its summary checked, and
//! nothing of it left behind.
//!
//! The demo is the xtask binary (`cargo run -p xtask -- demo`): nested cargo is fine here,
//! since `cargo test` releases the build lock before it runs the tests (`floodwall_bin` builds
//! the controller the same way).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use floodwall_tests::cli::floodwall_bin;

/// Seconds of traffic: two phases of a calm second and three one-second floods.
const DURATION: &str = "9";
/// Longest the demo may run before it is stopped (SIGTERM, then SIGKILL) and the test fails.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest building xtask may take (before the demo's own clock starts).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a SIGTERMed demo gets to clean up before SIGKILL.
const CLEANUP_GRACE: Duration = Duration::from_secs(20);

/// Names the demo gives (see xtask/src/demo.rs): namespaces `fwdemo-ROLE-PID`, veths
/// `fwdemoHEXPID..`, bpffs `/run/floodwall-demo-PID`, state `$TMPDIR/floodwall-demo-state-PID`.
const NETNS_PREFIX: &str = "fwdemo-";
const VETH_PREFIX: &str = "fwdemo";
const BPFFS_PREFIX: &str = "/run/floodwall-demo-";
const STATE_PREFIX: &str = "floodwall-demo-state-";

const MIN_FILTERED_SUCCESS: f64 = 99.0;

fn workspace() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tests crate has no parent directory")?
        .to_owned())
}

/// `$CARGO` (set by `cargo test`), else `cargo`, in the workspace root, with the target
/// directory this test binary runs from (so nothing is built twice).
fn cargo() -> Result<Command> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace()?).stdin(Stdio::null());
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/PROFILE/deps/NAME-HASH -> target
    if let Some(target) = exe.ancestors().nth(3) {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    Ok(cmd)
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion with its output captured. After `timeout` it gets SIGTERM (the
/// demo cleans up on it), and SIGKILL if still running [`CLEANUP_GRACE`] later.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Finished> {
    fn reader(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    }
    let what = format!("{cmd:?}");
    let mut child: Child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let wait = |child: &mut Child, limit: Duration| -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the child")? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    let status = match wait(&mut child, timeout)? {
        Some(status) => status,
        None => {
            // `cargo run` execs the binary, so this pid is the demo itself.
            let pid = libc::pid_t::try_from(child.id())?;
            // SAFETY: a signal to our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if wait(&mut child, CLEANUP_GRACE)?.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let out = stdout.join().unwrap_or_default();
            let err = stderr.join().unwrap_or_default();
            bail!(
                "{what} still running after {timeout:?}: stopped\nstdout:\n{out}\nstderr:\n{err}"
            );
        }
    };
    Ok(Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The `key=value` pairs of the `demo summary:` line; percentages lose their `%`.
fn parse_summary(stdout: &str) -> Result<BTreeMap<String, f64>> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("demo summary:"))
        .context("the demo printed no `demo summary:` line")?;
    line.split_whitespace()
        .map(|field| {
            let (key, value) = field
                .split_once('=')
                .with_context(|| format!("summary field {field:?} is not key=value"))?;
            let number = value
                .trim_end_matches('%')
                .parse::<f64>()
                .with_context(|| format!("summary field {field:?}: value is not a number"))?;
            Ok((key.to_owned(), number))
        })
        .collect()
}

/// The pid in a demo name (`fwdemo-server-PID`, `/run/floodwall-demo-PID`): names are made
/// of the demo's pid, which lets a check tell a leftover from a demo running right now.
fn pid_suffix(name: &str) -> Option<u32> {
    name.rsplit('-').next()?.parse().ok()
}

/// Whether `pid` is a live process other than the demo that just ended: its names belong to
/// another demo running concurrently, not to a leftover.
fn other_live_demo(pid: u32, demo_pid: u32) -> bool {
    pid != demo_pid && Path::new("/proc").join(pid.to_string()).exists()
}

/// Everything the demo may leave behind that is still there, from this run or an earlier one.
fn leftovers(demo_pid: u32) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output()?;
    ensure!(netns.status.success(), "ip netns list failed");
    for name in String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NETNS_PREFIX))
    {
        if !pid_suffix(name).is_some_and(|pid| other_live_demo(pid, demo_pid)) {
            found.push(format!("namespace {name}"));
        }
    }
    // The demo makes its veths inside its namespaces; none may ever show up here.
    let links = Command::new("ip").args(["-o", "link"]).output()?;
    ensure!(links.status.success(), "ip -o link failed");
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        if name.starts_with(VETH_PREFIX) {
            found.push(format!("link {name} in the root namespace"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if point.starts_with(BPFFS_PREFIX)
            && !pid_suffix(point).is_some_and(|pid| other_live_demo(pid, demo_pid))
        {
            found.push(format!("bpffs mount {point}"));
        }
    }
    for dir in ["/run".into(), std::env::temp_dir()] {
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let demo_dir = name.starts_with(STATE_PREFIX)
                || (dir == Path::new("/run") && name.starts_with("floodwall-demo-"));
            if demo_dir && !pid_suffix(&name).is_some_and(|pid| other_live_demo(pid, demo_pid)) {
                found.push(format!("directory {}", dir.join(&name).display()));
            }
        }
    }
    Ok(found)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn demo_protects_the_client_and_cleans_up() -> Result<()> {
    // Built first, so the demo's timeout measures the demo, not the compiler.
    floodwall_bin()?;
    let mut build = cargo()?;
    build.args(["build", "--quiet", "-p", "xtask"]);
    let built = run_with_timeout(build, BUILD_TIMEOUT)?;
    ensure!(
        built.status.success(),
        "building xtask failed ({}):\n{}",
        built.status,
        built.stderr
    );

    let mut demo = cargo()?;
    demo.args([
        "run",
        "--quiet",
        "-p",
        "xtask",
        "--",
        "demo",
        "--duration",
        DURATION,
    ]);
    let run = run_with_timeout(demo, DEMO_TIMEOUT)?;
    println!("{}", run.stdout);
    ensure!(
        run.status.success(),
        "the demo failed ({}):\nstderr:\n{}",
        run.status,
        run.stderr
    );

    // The demo's pid, from its namespace names.
    let demo_pid = run
        .stdout
        .split_whitespace()
        .find(|word| word.starts_with(NETNS_PREFIX))
        .and_then(|name| pid_suffix(name.trim_end_matches(',')))
        .context("the demo did not print its namespace names")?;
    let left = leftovers(demo_pid)?;
    ensure!(
        left.is_empty(),
        "demo leftovers (from this run or an earlier one): {}",
        left.join(", ")
    );

    let summary = parse_summary(&run.stdout)?;
    let success: Vec<(&String, f64)> = summary
        .iter()
        .filter(|(key, _)| key.starts_with("filtered_") && key.ends_with("_client_success"))
        .map(|(key, &value)| (key, value))
        .collect();
    for key in ["filtered_client_success", "filtered_spoofed_client_success"] {
        ensure!(
            summary.contains_key(key),
            "summary has no {key}: {summary:?}"
        );
    }
    for (key, value) in success {
        ensure!(
            value >= MIN_FILTERED_SUCCESS,
            "{key} = {value}%: with floodwall on, the client must get at least \
             {MIN_FILTERED_SUCCESS}% of its echoes\n{}",
            run.stdout
        );
    }
    // The SYN flood: with the challenge on, new clients connect (the run with it off is only
    // reported: how many it sheds depends on how fast the flood is).
    let new_clients = summary
        .get("synflood_on_new_clients")
        .with_context(|| format!("summary has no synflood_on_new_clients: {summary:?}"))?;
    ensure!(
        *new_clients >= 90.0,
        "synflood_on_new_clients = {new_clients}%: with the SYN challenge on, new clients must \
         connect during the flood\n{}",
        run.stdout
    );
    ensure!(
        summary
            .get("synflood_on_challenged")
            .is_some_and(|n| *n > 0.0),
        "no SYN was answered from XDP: {summary:?}"
    );
    for key in ["blocklist_dropped", "over_pps_dropped", "newcomer_dropped"] {
        let dropped = summary
            .get(key)
            .with_context(|| format!("summary has no {key}: {summary:?}"))?;
        ensure!(
            *dropped > 0.0,
            "{key} = {dropped}: that flood was not dropped"
        );
    }
    Ok(())
}
