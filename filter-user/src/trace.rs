//! `floodwall trace CIDR`: a live line per decided frame from the prefix, straight from the
//! kernel through aya-log. The filter hands frames to its trace program only while a trace is
//! on; the kernel bounds the lines per second. The trace holds a lease the command renews:
//! killed (even by SIGKILL), the trace ends by itself within [`LEASE`].

use std::{
    io::Write as _,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use filter_common::{Bucket, FAMILY_V4, FAMILY_V6, MAP_TRACE, TRACE_PROGRAM_NAME, TraceConfig};
use thiserror::Error;

use crate::{
    cidr::Cidr,
    kernel::{self, KernelError},
    lists::mono_now_ns,
    paths::Paths,
    state::{Lock, StateError},
};

#[derive(Debug, Error)]
pub enum TraceError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "the loaded filter has no trace program (`{TRACE_PROGRAM_NAME}`): it was loaded by an \
         older floodwall; `floodwall detach --all` and attach again"
    )]
    NoTraceProgram,
    #[error("cannot read the trace log: {0}")]
    Log(String),
}

/// Switches the trace on or off, under the lock: a switch republishes the config record (see
/// `kernel::set_trace`), as every other writer of it does under the lock.
fn switch(paths: &Paths, trace: Option<&TraceConfig>) -> Result<(), TraceError> {
    let _lock = Lock::acquire(paths)?;
    Ok(kernel::set_trace(paths, trace)?)
}

/// How long a trace outlives its last renewal.
pub const LEASE: Duration = Duration::from_secs(3);

/// Set by SIGINT and SIGTERM: the trace ends and is switched off.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Prints each record as a line, stops counting at `max`.
struct Printer {
    printed: Arc<AtomicU64>,
    max: u64,
}

impl log::Log for Printer {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.printed.fetch_add(1, Ordering::Relaxed) >= self.max {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the trace like a signal.
        if writeln!(
            out,
            "{}.{:03} {}",
            crate::logging::rfc3339(now.as_secs()).trim_end_matches('Z'),
            now.subsec_millis(),
            record.args()
        )
        .and_then(|()| out.flush())
        .is_err()
        {
            STOP.store(true, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

/// The trace program's id: the `floodwall_trace` that uses this filter's pinned `TRACE` map
/// (several filters may be loaded, one per bpffs).
fn trace_program_id(paths: &Paths) -> Result<u32, TraceError> {
    let map = aya::maps::MapData::from_pin(paths.map_pin(MAP_TRACE)).map_err(|source| {
        KernelError::OpenMap {
            name: MAP_TRACE,
            source,
        }
    })?;
    let map_id = map
        .info()
        .map_err(|source| KernelError::OpenMap {
            name: MAP_TRACE,
            source,
        })?
        .id();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(TRACE_PROGRAM_NAME))
        .find(|p| {
            p.map_ids()
                .ok()
                .flatten()
                .is_some_and(|ids| ids.contains(&map_id))
        })
        .map(|p| p.id())
        .ok_or(TraceError::NoTraceProgram)
}

/// The kernel's trace switch for `cidr`, `rate` lines a second, until `until_ns`.
pub fn config(cidr: &Cidr, rate: u64, until_ns: u64) -> TraceConfig {
    let mut addr = [0u8; 16];
    let family = match cidr.addr() {
        std::net::IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            FAMILY_V4
        }
        std::net::IpAddr::V6(a) => {
            addr = a.octets();
            FAMILY_V6
        }
    };
    TraceConfig {
        on: 1,
        family,
        prefix_len: u32::from(cidr.prefix_len()),
        _pad: 0,
        addr,
        until_ns,
        lines: Bucket::packets(rate, rate),
    }
}

/// Traces `cidr` for `seconds` (or until interrupted), printing at most `count` lines and
/// letting the kernel write at most `rate` per second. Always switches the trace off.
pub fn trace(
    paths: &Paths,
    cidr: &Cidr,
    seconds: Option<u64>,
    count: Option<u64>,
    rate: u64,
) -> Result<u64, TraceError> {
    let program = trace_program_id(paths)?;
    let printed = Arc::new(AtomicU64::new(0));
    let max = count.unwrap_or(u64::MAX);
    let mut logger = aya_log::EbpfLogger::init_from_id_with_logger(
        program,
        Printer {
            printed: Arc::clone(&printed),
            max,
        },
    )
    .map_err(|e| TraceError::Log(e.to_string()))?;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGPIPE] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let end = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let result = (|| -> Result<(), TraceError> {
        let mut renewed: Option<Instant> = None;
        // Lines the kernel wrote before the trace went off are still read.
        let mut draining = false;
        loop {
            let now = Instant::now();
            let over = STOP.load(Ordering::Relaxed)
                || end.is_some_and(|e| now >= e)
                || printed.load(Ordering::Relaxed) >= max;
            if over && !draining {
                switch(paths, None)?;
                draining = true;
            }
            if !draining && renewed.is_none_or(|r| now - r >= Duration::from_secs(1)) {
                let lease = end.map_or(LEASE, |e| e.saturating_duration_since(now).min(LEASE));
                let until = mono_now_ns().saturating_add(lease.as_nanos() as u64);
                let trace = config(cidr, rate, until);
                if renewed.is_none() {
                    switch(paths, Some(&trace))?;
                } else {
                    kernel::set_trace(paths, Some(&trace))?;
                }
                renewed = Some(now);
            }
            let mut fd = libc::pollfd {
                fd: logger.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a signal interrupts the wait (EINTR), which is fine.
            let ready = unsafe { libc::poll(&mut fd, 1, if draining { 0 } else { 200 }) };
            logger.flush();
            if draining && ready <= 0 {
                return Ok(());
            }
        }
    })();
    // Whatever happened, the trace goes off.
    let off = switch(paths, None);
    result?;
    off?;
    Ok(printed.load(Ordering::Relaxed).min(max))
}
