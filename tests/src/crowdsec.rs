//! A real CrowdSec Local API for the bouncer tests: Debian's `crowdsec` binary (unpacked by
//! `cargo xtask setup`, never installed) run with `-no-cs -no-capi`, a private config and
//! SQLite database in a scratch directory, on 127.0.0.1 of the test's own namespace. And a
//! small proxy in front of it that can answer with a malformed body or not at all.
//!
//! Nothing here talks to CrowdSec's central API: `-no-capi`, and the namespace has no route out.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::{Netns, StateDir, run_in};

/// Where `cargo xtask setup` unpacks the package (`FLOODWALL_CROWDSEC_ROOT` overrides).
pub fn crowdsec_root() -> Result<PathBuf> {
    if let Some(root) = std::env::var_os("FLOODWALL_CROWDSEC_ROOT") {
        return Ok(PathBuf::from(root));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let root = PathBuf::from(home).join(".local/share/floodwall/crowdsec");
    ensure!(
        root.join("usr/bin/crowdsec").exists(),
        "no CrowdSec in {}: run `cargo xtask setup`",
        root.display()
    );
    Ok(root)
}

/// Longest the LAPI may take to answer `/health` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The machine the tests' own `cscli decisions` commands log in as.
const CSCLI_MACHINE: &str = "floodwall-tests";

/// A running LAPI. Stopped (SIGTERM, then SIGKILL) on drop; its directory is removed.
pub struct Lapi<'a> {
    ns: &'a Netns,
    root: PathBuf,
    dir: StateDir,
    port: u16,
    scheme: &'static str,
    _certs: Option<StateDir>,
    child: Option<Child>,
}

impl<'a> Lapi<'a> {
    /// Writes a private config for 127.0.0.1:`port` in `ns` and starts the LAPI.
    pub fn start(ns: &'a Netns, port: u16) -> Result<Lapi<'a>> {
        Self::start_with(ns, port, None)
    }

    /// The same, serving HTTPS with a certificate (for 127.0.0.1) that a CA made here signed;
    /// returns the CA's PEM file too.
    pub fn start_tls(ns: &'a Netns, port: u16) -> Result<(Lapi<'a>, PathBuf)> {
        let certs = StateDir::new()?;
        let ca = make_certs(certs.path())?;
        let lapi = Self::start_with(ns, port, Some(certs))?;
        Ok((lapi, ca))
    }

    fn start_with(ns: &'a Netns, port: u16, tls: Option<StateDir>) -> Result<Lapi<'a>> {
        let root = crowdsec_root()?;
        let dir = StateDir::new()?;
        let d = dir.path();
        for sub in ["etc", "data", "hub", "log"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        std::fs::copy(
            root.join("etc/crowdsec/profiles.yaml"),
            d.join("etc/profiles.yaml"),
        )
        .context("copying the package's profiles.yaml")?;
        std::fs::write(d.join("etc/local_api_credentials.yaml"), "")?;
        let d = d.display();
        let tls_line = tls.as_ref().map_or(String::new(), |certs| {
            let c = certs.path().display();
            format!(", tls: {{cert_file: {c}/server.pem, key_file: {c}/server.key}}")
        });
        std::fs::write(
            dir.path().join("etc/config.yaml"),
            format!(
                "common: {{daemonize: false, log_media: file, log_level: info, log_dir: {d}/log/, working_dir: .}}\n\
                 config_paths: {{config_dir: {d}/etc/, data_dir: {d}/data/, hub_dir: {d}/hub/, index_path: {d}/hub/.index.json}}\n\
                 db_config: {{type: sqlite, db_path: {d}/data/crowdsec.db, use_wal: true}}\n\
                 api:\n  client: {{credentials_path: {d}/etc/local_api_credentials.yaml}}\n  \
                 server: {{listen_uri: 127.0.0.1:{port}, profiles_path: {d}/etc/profiles.yaml, \
                 console_path: {d}/etc/console.yaml, trusted_ips: [127.0.0.1, \"::1\"]{tls_line}}}\n\
                 prometheus: {{enabled: false}}\n"
            ),
        )?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut lapi = Lapi {
            ns,
            root,
            dir,
            port,
            scheme,
            _certs: tls,
            child: None,
        };
        let creds = lapi.dir.path().join("etc/local_api_credentials.yaml");
        lapi.machine(CSCLI_MACHINE, "floodwall-tests-password", &creds)?;
        lapi.launch()?;
        Ok(lapi)
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/", self.scheme, self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("etc/config.yaml")
    }

    /// Starts the LAPI process and waits until `/health` answers.
    pub fn launch(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the LAPI is already running");
        let log = std::fs::File::create(self.dir.path().join("log/stdout.log"))?;
        let child = self
            .ns
            .command(&self.root.join("usr/bin/crowdsec").display().to_string())
            .arg("-c")
            .arg(self.config())
            .args(["-no-cs", "-no-capi"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting crowdsec")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if health(self.ns, self.addr(), self.scheme == "https").unwrap_or(false) {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("crowdsec exited ({status}):\n{}", self.log_tail());
            }
            ensure!(
                Instant::now() < deadline,
                "the LAPI did not answer /health within {START_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the LAPI (SIGTERM, then SIGKILL); its database stays for [`Lapi::launch`].
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["stdout.log", "crowdsec_api.log", "crowdsec.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join("log").join(name)) {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(20);
                out.push_str(&format!("--- {name}\n{}\n", lines[from..].join("\n")));
            }
        }
        out
    }

    /// `cscli -c CONFIG ARGS...` in the namespace; fails with its output unless it exits 0.
    pub fn cscli(&self, args: &[&str]) -> Result<String> {
        let out = self
            .ns
            .command(&self.root.join("usr/bin/cscli").display().to_string())
            .arg("-c")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running cscli")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(out.status.success(), "cscli {args:?} failed: {text}");
        Ok(text)
    }

    /// A bouncer key for `name` (one per host).
    pub fn add_bouncer(&self, name: &str) -> Result<String> {
        let key = format!("{name}-key-{}", std::process::id());
        self.cscli(&["bouncers", "add", name, "-k", &key])?;
        Ok(key)
    }

    /// Machine credentials for `name`, for a host that pushes its bans.
    pub fn add_machine(&self, name: &str, password: &str) -> Result<()> {
        self.machine(
            name,
            password,
            &self.dir.path().join(format!("{name}.yaml")),
        )
    }

    /// `cscli machines add`, the credentials written to `creds`.
    fn machine(&self, name: &str, password: &str, creds: &Path) -> Result<()> {
        let url = self.url();
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            password,
            "-f",
            &creds.display().to_string(),
            "--url",
            &url,
            "--force",
        ])?;
        Ok(())
    }

    /// `cscli decisions import` of a CSV file written here. The 1.4.6 LAPI fails a bulk
    /// insert with "database is locked" when bouncers read meanwhile: tried up to 3 times (a
    /// decision imported twice is streamed once).
    pub fn import_csv(&self, csv: &str) -> Result<String> {
        let path = self.dir.path().join("import.csv");
        std::fs::write(&path, csv)?;
        let path = path.display().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.cscli(&["decisions", "import", "-i", &path]) {
                Err(e) if attempt < 3 && e.to_string().contains("database is locked") => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// What the LAPI answers a bouncer asking about `ip` (`GET /v1/decisions?ip=`), with a
    /// key of its own so no host's stream cursor moves.
    pub fn decisions_for(&self, ip: &str) -> Result<String> {
        let key = self.add_bouncer(&format!("probe-{}", ip.replace([':', '.'], "-")))?;
        let url = format!("{}v1/decisions?ip={ip}", self.url());
        let out = self.ns.exec(&[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "-H",
            &format!("X-Api-Key: {key}"),
            &url,
        ])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Lapi<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("floodwall-tests: stopping the LAPI: {e:#}");
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 it signed, made with `openssl` in `dir`
/// (`ca.pem`, `server.pem`, `server.key`). Returns the CA's path.
fn make_certs(dir: &Path) -> Result<PathBuf> {
    let run = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("running openssl")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=floodwall-test-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ])?;
    Ok(dir.join("ca.pem"))
}

/// Whether the LAPI at `addr` in `ns` is up: `GET /health` answers 200 over HTTP, or, for a
/// LAPI serving HTTPS, it accepts connections (its TLS handshake is floodwall's to check).
fn health(ns: &Netns, addr: SocketAddr, tls: bool) -> Result<bool> {
    if tls {
        return run_in(ns, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
    }
    let answer = run_in(ns, move || -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })??;
    Ok(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"))
}

/// What the [`FaultProxy`] does with the next connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the LAPI.
    None,
    /// Answer 200 with this body, whatever was asked.
    Body(String),
    /// Read the request and never answer (until the client gives up).
    Silent,
}

/// A TCP proxy in front of the LAPI, in the same namespace. Each connection carries one
/// request (floodwall keeps no idle connections), so a changed fault applies to the next pull.
pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(ns: &Netns, port: u16, upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = run_in(ns, move || TcpListener::bind(("127.0.0.1", port)))??;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let fault = Arc::new(Mutex::new(Fault::None));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let fault = Arc::clone(&fault);
            let stop = Arc::clone(&stop);
            let ns_path = ns.path();
            std::thread::spawn(move || proxy_loop(&listener, &fault, &stop, upstream, &ns_path))
        };
        Ok(FaultProxy {
            addr,
            fault,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Enters the namespace at `ns_path` on this thread, so connections to the upstream are made
/// there.
fn enter(ns_path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(ns_path)?;
    // SAFETY: plain syscall on a valid fd; it affects this thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

fn proxy_loop(
    listener: &TcpListener,
    fault: &Mutex<Fault>,
    stop: &std::sync::atomic::AtomicBool,
    upstream: SocketAddr,
    ns_path: &Path,
) {
    if let Err(e) = enter(ns_path) {
        eprintln!("floodwall-tests: proxy: {e:#}");
        return;
    }
    // Bounded: the proxy lives as long as its test, at most this long.
    let deadline = Instant::now() + Duration::from_secs(900);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
        let Ok((client, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = client.set_nonblocking(false);
        let now = fault.lock().map(|f| f.clone()).unwrap_or(Fault::None);
        let path = ns_path.to_owned();
        std::thread::spawn(move || {
            let _ = serve_one(client, &now, upstream, &path);
        });
    }
}

fn serve_one(mut client: TcpStream, fault: &Fault, upstream: SocketAddr, ns: &Path) -> Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    match fault {
        Fault::None => {
            enter(ns)?;
            let server = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))?;
            let mut to_server = server.try_clone()?;
            let mut from_client = client.try_clone()?;
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_server);
                let _ = to_server.shutdown(std::net::Shutdown::Write);
            });
            let mut from_server = server;
            let _ = std::io::copy(&mut from_server, &mut client);
            let _ = client.shutdown(std::net::Shutdown::Write);
            let _ = up.join();
        }
        Fault::Body(body) => {
            read_request(&mut client)?;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes())?;
        }
        Fault::Silent => {
            read_request(&mut client)?;
            // Holds the connection open, answering nothing, until the client hangs up.
            let mut buf = [0u8; 512];
            while client.read(&mut buf).is_ok_and(|n| n > 0) {}
        }
    }
    Ok(())
}

/// Reads a request's head (the stream pulls have no body).
fn read_request(client: &mut TcpStream) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
        let n = client.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// The config section for a host that pulls from `url` with `key`.
pub fn config_section(url: &str, key: &str, update_secs: u64) -> String {
    format!(
        "[crowdsec]\nlapi_url = \"{url}\"\napi_key = \"{key}\"\nupdate_frequency_secs = {update_secs}\n"
    )
}
