//! The demo (`cargo xtask demo`) end to end: a short run of its binary as a child process, its
//! summary checked, and nothing of it left behind.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use floodwall_tests::cli::floodwall_bin;

/// Seconds of traffic: two phases of a calm second and three one-second floods.
const DURATION: &str = "9";
/// Longest the demo may run before it is stopped (SIGTERM, then SIGKILL) and the test fails.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a SIGTERMed demo gets to clean up before SIGKILL.
const CLEANUP_GRACE: Duration = Duration::from_secs(20);

/// The demo's namespaces are the harness's `fw-demo-ROLE-PID-N`; its veths, bpffs mounts and
/// state directories carry its pid the harness's way too (`fwHEXPID..`,
/// `/run/floodwall-test-PID-N`, `$TMPDIR/floodwall-state-PID-N`).
const NETNS_PREFIX: &str = "fw-demo-";

const MIN_FILTERED_SUCCESS: f64 = 99.0;

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

/// The pid in a demo namespace's name (`fw-demo-server-PID-N`).
fn pid_of_namespace(name: &str) -> Option<u32> {
    name.rsplit('-').nth(1)?.parse().ok()
}

/// Everything the demo with `demo_pid` left behind, and the namespaces of earlier demos that
/// are no longer running.
fn leftovers(demo_pid: u32) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let netns = Command::new("ip").args(["netns", "list"]).output()?;
    ensure!(netns.status.success(), "ip netns list failed");
    for name in String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NETNS_PREFIX))
    {
        let running = pid_of_namespace(name).is_some_and(|pid| {
            pid != demo_pid && Path::new("/proc").join(pid.to_string()).exists()
        });
        if !running {
            found.push(format!("namespace {name}"));
        }
    }
    // The demo makes its veths inside its namespaces; none may ever show up here.
    let veth = format!("fw{demo_pid:x}");
    let links = Command::new("ip").args(["-o", "link"]).output()?;
    ensure!(links.status.success(), "ip -o link failed");
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        if name.starts_with(&veth) {
            found.push(format!("link {name} in the root namespace"));
        }
    }
    let bpffs = format!("/run/floodwall-test-{demo_pid}-");
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if point.starts_with(&bpffs) {
            found.push(format!("bpffs mount {point}"));
        }
    }
    for (dir, prefix) in [
        (
            Path::new("/run").to_owned(),
            format!("floodwall-test-{demo_pid}-"),
        ),
        (std::env::temp_dir(), format!("floodwall-state-{demo_pid}-")),
    ] {
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
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
    let mut demo = Command::new(env!("CARGO_BIN_EXE_demo"));
    demo.args(["--duration", DURATION]).stdin(Stdio::null());
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
        .and_then(|name| pid_of_namespace(name.trim_end_matches(',')))
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
