//! `floodwall run` as a child process of a test: started inside a namespace through
//! [`Floodwall`], its log in a file, stopped (SIGTERM, then SIGKILL) on drop.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::cli::Floodwall;

/// Longest a service may take to start (the first start loads the program).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a service may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn send_signal(pid: u32, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped yet.
    let rc = unsafe { libc::kill(pid, signal) };
    ensure!(
        rc == 0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A running `floodwall run`: its stdout and stderr go to a log file. Dropping it stops it
/// (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) and, unless the test marked it good, prints
/// the end of its log.
pub struct Service {
    child: Option<Child>,
    pub pid: u32,
    log: PathBuf,
    /// Set by a test that passed: the log is then not printed on drop.
    pub ok: bool,
}

impl Service {
    /// Starts `floodwall run IFACE ARGS...` and waits until it serves metrics.
    pub fn start(fw: &Floodwall<'_>, iface: &str, args: &[&str], name: &str) -> Result<Service> {
        let log = fw.state_dir().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {log:?}"))?;
        let err = out.try_clone()?;
        let mut all = vec!["run", iface];
        all.extend_from_slice(args);
        let mut cmd = fw.command(&all);
        cmd.env("RUST_LOG", "info").stdout(out).stderr(err);
        let child = cmd.spawn().context("starting floodwall run")?;
        // `ip netns exec` execs floodwall: the child's pid is floodwall's.
        let pid = child.id();
        let mut service = Service {
            child: Some(child),
            pid,
            log,
            ok: false,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if service.log_text().contains("serving metrics on") {
                return Ok(service);
            }
            if let Some(status) = service.try_wait()? {
                bail!(
                    "floodwall run exited ({status}) before serving metrics:\n{}",
                    service.log_text()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "floodwall run not serving metrics after {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("floodwall run (pid {}) already reaped", self.pid),
        }
    }

    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        ensure!(
            self.child.is_some(),
            "floodwall run (pid {}) already reaped",
            self.pid
        );
        send_signal(self.pid, signal)
    }

    /// Waits for an exit at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; fails unless it exits with status 0 within [`STOP_TIMEOUT`].
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(libc::SIGTERM)?;
        match self.wait_exit(STOP_TIMEOUT)? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("floodwall run exited {status} on SIGTERM"),
            None => bail!("floodwall run still running {STOP_TIMEOUT:?} after SIGTERM"),
        }
    }

    /// Peak and current resident memory (VmHWM, VmRSS) in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        read_memory(self.pid)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = libc::pid_t::try_from(self.pid) {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!("service test: floodwall run ignored SIGTERM: killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !self.ok || std::env::var_os("FLOODWALL_SHOW_LOGS").is_some() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "service test: last lines of {}:\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// Peak and current resident memory (VmHWM, VmRSS) of `pid` in KiB.
pub fn read_memory(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}
