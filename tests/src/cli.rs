//! The real `floodwall` binary, run inside a test namespace against a private bpffs and
//! state directory.
//!
//! The binary belongs to another package (`filter-user`), so `CARGO_BIN_EXE_floodwall` is not
//! available here and `cargo test -p floodwall-tests` does not build it: [`floodwall_bin`]
//! builds it once per test process (`cargo build -p filter-user --bin floodwall`, into the
//! target directory the test binary runs from) and finds it there.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::{BpffsDir, Netns, StateDir, VethPair};

/// Longest one `floodwall` command may take before it is killed and the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The profile directory the running test binary lives in (`target/debug` for
/// `target/debug/deps/NAME-HASH`).
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let deps = exe
        .parent()
        .context("test binary has no parent directory")?;
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().context("deps directory has no parent")?
    } else {
        deps
    };
    Ok(dir.to_owned())
}

fn build_floodwall() -> anyhow::Result<PathBuf> {
    let profile_dir = profile_dir()?;
    let target_dir = profile_dir
        .parent()
        .context("profile directory has no parent")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tests crate has no parent directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "filter-user",
            "--bin",
            "floodwall",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} to build the floodwall binary"))?;
    if !out.status.success() {
        bail!(
            "building the floodwall binary failed ({}); build it with `cargo build -p \
             filter-user --bin floodwall`:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let bin = profile_dir.join("floodwall");
    if !bin.is_file() {
        bail!(
            "built floodwall but found no binary at {}; build it with `cargo build -p \
             filter-user --bin floodwall`",
            bin.display()
        );
    }
    Ok(bin)
}

/// The `floodwall` binary, built (or found up to date) once per test process.
pub fn floodwall_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_floodwall().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Waits for `child` at most `timeout`, collecting its output; kills it on timeout.
pub fn wait_output(mut child: Child, timeout: Duration) -> anyhow::Result<Output> {
    fn reader(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().context("waiting for floodwall")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "floodwall (pid {}) still running after {timeout:?}: killed",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// One isolated floodwall instance: its own bpffs (pins under `<bpffs>/fw`), state directory
/// and config path, its commands run inside `ns` (when given).
///
/// Dropping it runs `floodwall detach --all`, so no XDP attachment or pin is left, and then
/// unmounts the bpffs and removes the state directory. The namespace must outlive it, which
/// the borrow enforces.
#[derive(Debug)]
pub struct Floodwall<'a> {
    bin: PathBuf,
    ns: Option<&'a Netns>,
    pin_dir: PathBuf,
    config: PathBuf,
    // Declared (so dropped) in this order, after `Drop::drop` has detached.
    state: StateDir,
    bpffs: BpffsDir,
}

impl<'a> Floodwall<'a> {
    /// A fresh instance whose commands run in `ns` (or in the caller's namespace for `None`).
    pub fn new(ns: Option<&'a Netns>) -> anyhow::Result<Floodwall<'a>> {
        let bin = floodwall_bin()?;
        let bpffs = BpffsDir::new()?;
        let state = StateDir::new()?;
        Ok(Floodwall {
            bin,
            ns,
            pin_dir: bpffs.path().join("fw"),
            config: state.path().join("floodwall.toml"),
            state,
            bpffs,
        })
    }

    /// `FLOODWALL_BPFFS`: where this instance pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// `FLOODWALL_STATE_DIR`.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// `FLOODWALL_CONFIG` (`<state dir>/floodwall.toml`, absent unless a test writes it).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The bpffs mount the pin directory lives on.
    pub fn bpffs(&self) -> &Path {
        self.bpffs.path()
    }

    /// The command `floodwall ARGS...` in the namespace with this instance's environment,
    /// stdin closed, stdout and stderr piped: for callers that spawn it themselves.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.ns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns.name()]).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.args(args)
            .env("FLOODWALL_BPFFS", &self.pin_dir)
            .env("FLOODWALL_STATE_DIR", self.state.path())
            .env("FLOODWALL_CONFIG", &self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `floodwall ARGS...` with `stdin` as its standard input (none if `None`), bounded
    /// by [`COMMAND_TIMEOUT`]; returns its output whatever the exit status.
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Output> {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting floodwall {args:?}"))?;
        let writer = match (stdin, child.stdin.take()) {
            (Some(data), Some(mut pipe)) => {
                let data = data.to_vec();
                Some(std::thread::spawn(move || {
                    // A command that exits without reading everything closes the pipe.
                    let _ = pipe.write_all(&data);
                }))
            }
            _ => None,
        };
        let out =
            wait_output(child, COMMAND_TIMEOUT).with_context(|| format!("floodwall {args:?}"))?;
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        Ok(out)
    }

    /// Runs `floodwall ARGS...`; returns its output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.run_with_stdin(args, None)
    }

    /// Runs `floodwall ARGS...` and fails unless it exits 0; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        check_ok(args, &out)
    }

    /// Like [`Floodwall::ok`], with `stdin` as standard input.
    pub fn ok_with_stdin(&self, args: &[&str], stdin: &[u8]) -> anyhow::Result<String> {
        let out = self.run_with_stdin(args, Some(stdin))?;
        check_ok(args, &out)
    }

    /// Runs `floodwall ARGS...` (which should include `--json`), fails unless it exits 0,
    /// and parses its stdout.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let text = self.ok(args)?;
        serde_json::from_str(&text)
            .with_context(|| format!("floodwall {args:?}: stdout is not JSON: {text}"))
    }

    /// `floodwall status --json`, whether floodwall enforces (exit 0) or not (exit 3: the
    /// health check's answer, with the status still printed).
    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        let args = ["status", "--json"];
        let out = self.run(&args)?;
        if out.status.code() != Some(3) {
            check_ok(&args, &out)?;
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("floodwall {args:?}: stdout is not JSON: {out:?}"))
    }

    /// Runs `floodwall ARGS...`, fails unless it exits 0, and returns its stdout and its peak
    /// resident memory in KiB: the `VmHWM` of its process, sampled every millisecond while it
    /// runs as floodwall (`ip netns exec` execs it in its place). Not `wait4`'s `ru_maxrss`:
    /// that also counts the memory of this process, which the child was forked from.
    pub fn ok_with_peak_rss(&self, args: &[&str]) -> anyhow::Result<(String, u64)> {
        let mut child = self
            .command(args)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting floodwall {args:?}"))?;
        let pipe = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
            }
            text
        });
        let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
        let high_water = || -> Option<u64> {
            if std::fs::read_link(proc_dir.join("exe")).ok()? != self.bin {
                return None;
            }
            let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let mut peak = 0;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(kib) = high_water() {
                peak = peak.max(kib);
            }
            if let Some(status) = child.try_wait().context("waiting for floodwall")? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("floodwall {args:?} still running after {COMMAND_TIMEOUT:?}: killed");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let stdout = reader.join().unwrap_or_default();
        if !status.success() {
            bail!("floodwall {args:?} failed ({status}): {stdout}");
        }
        anyhow::ensure!(
            peak > 0,
            "floodwall {args:?} ended before its memory could be read once"
        );
        Ok((stdout, peak))
    }

    /// Runs `floodwall ARGS...`, fails unless it exits with `code`, and returns its stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> anyhow::Result<String> {
        let out = self.run(args)?;
        check_code(args, &out, code)
    }
}

/// Fails unless `out` is a success; returns stdout.
pub fn check_ok(args: &[&str], out: &Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "floodwall {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails unless `out` exited with `code`; returns stderr.
pub fn check_code(args: &[&str], out: &Output, code: i32) -> anyhow::Result<String> {
    if out.status.code() != Some(code) {
        bail!(
            "floodwall {args:?}: expected exit status {code}, got {}; stdout: {} stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

impl Drop for Floodwall<'_> {
    fn drop(&mut self) {
        // Errors are expected (nothing attached) and ignored; the bpffs is unmounted after
        // this, when the fields drop.
        match self.run(&["detach", "--all"]) {
            Ok(_) => {}
            Err(e) => eprintln!("floodwall-tests: floodwall detach --all: {e:#}"),
        }
    }
}

/// The address of the side floodwall attaches to in a [`Host`].
pub const HOST4: &str = "10.212.0.1";
pub const HOST6: &str = "fd00:212::1";

/// A namespace with one veth end for `attach` to attach to (its peer is in a second
/// namespace); no traffic is needed to use it.
pub struct Host {
    pub ns: Netns,
    _peer: Netns,
    veth: VethPair,
}

impl Host {
    /// `prefix` names the namespaces (kept short: it goes into their names).
    pub fn new(prefix: &str) -> anyhow::Result<Host> {
        let ns = Netns::new(prefix)?;
        let peer = Netns::new(&format!("{prefix}p"))?;
        let veth = VethPair::new(
            &peer,
            &ns,
            "10.212.0.2/24",
            &format!("{HOST4}/24"),
            "fd00:212::2/64",
            &format!("{HOST6}/64"),
        )?;
        Ok(Host {
            ns,
            _peer: peer,
            veth,
        })
    }

    /// The interface floodwall attaches to.
    pub fn iface(&self) -> &str {
        self.veth.b_name()
    }

    pub fn floodwall(&self) -> anyhow::Result<Floodwall<'_>> {
        Floodwall::new(Some(&self.ns))
    }

    /// A floodwall attached to [`Host::iface`] in native mode.
    pub fn attached(&self) -> anyhow::Result<Floodwall<'_>> {
        let fw = self.floodwall()?;
        fw.ok(&["attach", self.iface(), "--mode", "native"])?;
        Ok(fw)
    }
}
