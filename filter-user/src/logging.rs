//! The service's log: env_logger with one format of floodwall's own, so that the cap on drop
//! log lines holds per second of the timestamps the log shows. The line's time is read once,
//! and both the cap and the printed timestamp use it.

use std::{
    io::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// The log target of drop lines, the lines the cap applies to.
pub const DROP_TARGET: &str = "floodwall::drops";

/// The cap on drop lines and what it let through and held back.
#[derive(Debug)]
pub struct DropLines {
    cap: AtomicU32,
    window: Mutex<Window>,
    /// Drop lines written and suppressed since the service started.
    pub logged: AtomicU64,
    pub suppressed: AtomicU64,
}

#[derive(Debug)]
struct Window {
    /// The Unix second the budget is for.
    second: u64,
    left: u32,
    suppressed: u64,
    /// Suppressed in seconds already over, not yet reported.
    unreported: u64,
}

pub static DROP_LINES: DropLines = DropLines::new(20);

impl DropLines {
    const fn new(cap: u32) -> DropLines {
        DropLines {
            cap: AtomicU32::new(cap),
            window: Mutex::new(Window {
                second: 0,
                left: 0,
                suppressed: 0,
                unreported: 0,
            }),
            logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    pub fn set_cap(&self, lines_per_sec: u32) {
        self.cap.store(lines_per_sec, Ordering::Relaxed);
    }

    pub fn cap(&self) -> u32 {
        self.cap.load(Ordering::Relaxed)
    }

    fn roll(&self, w: &mut Window, second: u64) {
        if w.second != second {
            w.unreported += w.suppressed;
            w.suppressed = 0;
            w.second = second;
            w.left = self.cap();
        }
    }

    /// Whether a drop line stamped `second` may be written; counts it either way.
    fn admit(&self, second: u64) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        self.roll(&mut w, second);
        if w.left > 0 {
            w.left -= 1;
            self.logged.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            w.suppressed += 1;
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Lines suppressed in the seconds before `now_second`, not reported before.
    pub fn take_unreported(&self, now_second: u64) -> u64 {
        let Ok(mut w) = self.window.lock() else {
            return 0;
        };
        if w.second < now_second {
            self.roll(&mut w, now_second);
        }
        std::mem::take(&mut w.unreported)
    }
}

/// Logging for `floodwall run`: `RUST_LOG` as usual (default `info`), lines as
/// `[2026-12-02T01:51:33Z INFO  target] message`.
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if record.target() == DROP_TARGET && !DROP_LINES.admit(now) {
                return Ok(());
            }
            writeln!(
                buf,
                "[{} {:<5} {}] {}",
                rfc3339(now),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
}

/// Unix seconds as RFC 3339 in UTC (`2026-12-02T01:51:33Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_176_293), "2026-12-02T01:51:33Z");
    }

    #[test]
    fn the_cap_holds_per_second_and_suppressed_lines_are_reported_once() {
        let lines = DropLines::new(2);
        let admitted: Vec<bool> = (0..5).map(|_| lines.admit(10)).collect();
        assert_eq!(admitted, [true, true, false, false, false]);
        assert_eq!(lines.take_unreported(10), 0, "the second is not over");
        assert!(lines.admit(11));
        assert_eq!(lines.take_unreported(11), 3);
        assert_eq!(lines.take_unreported(12), 0);
        assert_eq!(lines.logged.load(Ordering::Relaxed), 3);
        assert_eq!(lines.suppressed.load(Ordering::Relaxed), 3);
    }
}
