//! The host's side of the SYN challenge: `net.ipv4.tcp_syncookies` of this network namespace.
//!
//! The kernel gives the XDP program a cookie (`bpf_tcp_gen_syncookie`) only when the sysctl is
//! 2 or the listener's SYN queue is full, so while the challenge is on floodwall sets it to 2
//! and remembers the value it found in the state directory; when the challenge goes off (or
//! the last interface is detached) it puts that value back. The saved value survives a crash,
//! so the next change restores it.

use std::{fs, io, path::PathBuf};

use thiserror::Error;

use crate::{limits::SynCookies, paths::Paths};

/// The sysctl, as this process's network namespace sees it.
pub const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";
/// The value the challenge needs: cookies for every SYN that reaches a listener.
const ALWAYS: u8 = 2;
const SAVED_FILE: &str = "syncookies.saved";

#[derive(Debug, Error)]
pub enum SyncookiesError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot set `{path}` to {value}: {source}; the SYN challenge needs it (run as root, in \
         the network namespace of the attached interfaces)"
    )]
    Write {
        path: PathBuf,
        value: u8,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` holds `{text}`, not a number")]
    Garbled { path: PathBuf, text: String },
}

/// The sysctl now and, when floodwall changed it, the value it will restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SysctlState {
    pub current: u8,
    pub saved: Option<u8>,
}

fn read_value(path: PathBuf) -> Result<u8, SyncookiesError> {
    let text = fs::read_to_string(&path).map_err(|source| SyncookiesError::Read {
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| SyncookiesError::Garbled {
        path,
        text: text.trim().to_owned(),
    })
}

fn write_value(value: u8) -> Result<(), SyncookiesError> {
    fs::write(SYSCTL, format!("{value}\n")).map_err(|source| SyncookiesError::Write {
        path: PathBuf::from(SYSCTL),
        value,
        source,
    })
}

fn saved_path(paths: &Paths) -> PathBuf {
    paths.state_dir.join(SAVED_FILE)
}

fn saved(paths: &Paths) -> Result<Option<u8>, SyncookiesError> {
    let path = saved_path(paths);
    if !path.exists() {
        return Ok(None);
    }
    read_value(path).map(Some)
}

pub fn state(paths: &Paths) -> Result<SysctlState, SyncookiesError> {
    Ok(SysctlState {
        current: read_value(PathBuf::from(SYSCTL))?,
        saved: saved(paths)?,
    })
}

/// Sets the sysctl to 2, first saving what it was (unless a value is saved already).
/// Returns whether it changed anything.
pub fn engage(paths: &Paths) -> Result<bool, SyncookiesError> {
    let current = read_value(PathBuf::from(SYSCTL))?;
    if current == ALWAYS {
        return Ok(false);
    }
    if saved(paths)?.is_none() {
        let path = saved_path(paths);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, format!("{current}\n"))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| SyncookiesError::Write {
                path: path.clone(),
                value: current,
                source,
            })?;
    }
    write_value(ALWAYS)?;
    Ok(true)
}

/// Puts back the value `engage` found. Returns it, or `None` when nothing was saved.
pub fn release(paths: &Paths) -> Result<Option<u8>, SyncookiesError> {
    let Some(value) = saved(paths)? else {
        return Ok(None);
    };
    write_value(value)?;
    let path = saved_path(paths);
    fs::remove_file(&path).map_err(|source| SyncookiesError::Write {
        path,
        value,
        source,
    })?;
    Ok(Some(value))
}

/// Makes the sysctl match `limits`, reading whether the service has switched an `auto`
/// challenge on from the kernel.
pub fn sync(paths: &Paths, limits: &crate::limits::Limits) -> Result<(), SyncookiesError> {
    let active = crate::kernel::syn_auto_active(paths).unwrap_or(false);
    apply(paths, limits.syn_cookies, active)
}

/// Makes the sysctl match the challenge: engaged while it is on (`on`, or `auto` switched on
/// by the service), released otherwise.
pub fn apply(paths: &Paths, mode: SynCookies, auto_active: bool) -> Result<(), SyncookiesError> {
    match mode {
        SynCookies::On => engage(paths).map(drop),
        SynCookies::Auto if auto_active => engage(paths).map(drop),
        SynCookies::Off | SynCookies::Auto => release(paths).map(drop),
    }
}

/// When `floodwall run` switches an `auto` challenge: on in any second in which sources were
/// shed as newcomers, off after `quiet_secs` seconds without shedding and with no more
/// unanswered challenges per second than the admission rate (what peacetime looks like).
#[derive(Debug, Default)]
pub struct AutoSwitch {
    pub active: bool,
    quiet_for: u64,
}

impl AutoSwitch {
    /// One second's counters: frames shed as newcomers, and challenges answered minus
    /// sources proven. Returns the new state when it changes.
    pub fn second(
        &mut self,
        shed: u64,
        unproven: u64,
        admission_rate: u64,
        quiet_secs: u64,
    ) -> Option<bool> {
        if shed > 0 {
            self.quiet_for = 0;
            if !self.active {
                self.active = true;
                return Some(true);
            }
            return None;
        }
        if !self.active {
            return None;
        }
        if unproven > admission_rate.max(1) {
            self.quiet_for = 0;
            return None;
        }
        self.quiet_for += 1;
        if self.quiet_for >= quiet_secs {
            self.active = false;
            self.quiet_for = 0;
            return Some(false);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::AutoSwitch;

    #[test]
    fn on_when_shedding_off_after_a_quiet_period() {
        let mut s = AutoSwitch::default();
        assert_eq!(s.second(0, 0, 100, 3), None);
        assert_eq!(s.second(5, 0, 100, 3), Some(true));
        // A flood answered by the challenge keeps it on.
        for _ in 0..10 {
            assert_eq!(s.second(0, 50_000, 100, 3), None);
        }
        assert_eq!(s.second(0, 10, 100, 3), None);
        assert_eq!(s.second(0, 10, 100, 3), None);
        assert_eq!(s.second(0, 10, 100, 3), Some(false));
        assert!(!s.active);
    }

    #[test]
    fn shedding_restarts_the_quiet_period() {
        let mut s = AutoSwitch {
            active: true,
            ..AutoSwitch::default()
        };
        assert_eq!(s.second(0, 0, 1, 2), None);
        assert_eq!(s.second(1, 0, 1, 2), None);
        assert_eq!(s.second(0, 0, 1, 2), None);
        assert_eq!(s.second(0, 0, 1, 2), Some(false));
    }
}
