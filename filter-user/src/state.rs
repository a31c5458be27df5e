//! What the store holds (list records with absolute expiry times, their kinds and origins),
//! the JSON state file of floodwalls before the store (read once, to migrate it; see
//! `store.rs`), and the lock that serialises the commands that change things.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{cidr::Cidr, limits::Limits, paths::Paths};

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read state file `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state file `{path}` is corrupt: {source}; restore it from a backup or move it away to \
         start with empty lists"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write state file `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store `{path}` failed: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the store `{path}` has schema version {found}, newer than this floodwall's \
         ({supported}): it was written by a newer floodwall; run that one (this one would \
         lose what it cannot read)"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("cannot lock `{path}`: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Allow,
    Block,
}

impl ListKind {
    pub const fn name(self) -> &'static str {
        match self {
            ListKind::Allow => "allowlist",
            ListKind::Block => "blocklist",
        }
    }
}

/// Who put an entry on a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `add` on the command line.
    Manual,
    /// `import` from a file.
    Import,
    /// An automatic ban by `floodwall run`.
    Auto,
    /// A CrowdSec decision, pulled from its Local API by `floodwall run`.
    Crowdsec,
}

impl Origin {
    pub const ALL: [Origin; 4] = [
        Origin::Manual,
        Origin::Import,
        Origin::Auto,
        Origin::Crowdsec,
    ];

    /// The origin `name()` gives this name.
    pub fn from_name(name: &str) -> Option<Origin> {
        Origin::ALL.into_iter().find(|o| o.name() == name)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Origin::Manual => "manual",
            Origin::Import => "import",
            Origin::Auto => "auto",
            Origin::Crowdsec => "crowdsec",
        }
    }
}

/// One list entry as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub cidr: Cidr,
    /// Unix time (seconds) when the entry stops matching; none for a permanent entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub origin: Origin,
    pub added_at: u64,
}

impl Record {
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// The JSON state file of floodwalls before the store: everything they kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub version: u32,
    /// Limits set with `limit set` or the config file; none until first set.
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default, with = "records")]
    pub allow: BTreeMap<Cidr, Record>,
    #[serde(default, with = "records")]
    pub block: BTreeMap<Cidr, Record>,
}

/// Lists are stored as arrays of records; the map key is the record's CIDR.
mod records {
    use std::collections::BTreeMap;

    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::Record;
    use crate::cidr::Cidr;

    pub fn serialize<S: Serializer>(map: &BTreeMap<Cidr, Record>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Cidr, Record>, D::Error> {
        Ok(Vec::<Record>::deserialize(d)?
            .into_iter()
            .map(|r| (r.cidr, r))
            .collect())
    }
}

impl State {
    pub fn list(&self, kind: ListKind) -> &BTreeMap<Cidr, Record> {
        match kind {
            ListKind::Allow => &self.allow,
            ListKind::Block => &self.block,
        }
    }

    pub fn list_mut(&mut self, kind: ListKind) -> &mut BTreeMap<Cidr, Record> {
        match kind {
            ListKind::Allow => &mut self.allow,
            ListKind::Block => &mut self.block,
        }
    }

    /// Loads the state, or an empty one if there is none yet.
    pub fn load(paths: &Paths) -> Result<State, StateError> {
        let path = paths.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    unix_now_ns() / 1_000_000_000
}

/// Nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An exclusive lock held for the life of a mutating command.
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn acquire(paths: &Paths) -> Result<Lock, StateError> {
        let path = paths.lock_file();
        let err = |source| StateError::Lock {
            path: path.clone(),
            source,
        };
        paths
            .ensure_state_dir()
            .map_err(|e| err(std::io::Error::other(e)))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        // SAFETY: flock on an fd we own; released when the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: file })
    }
}

/// A version of the store: its generation, bumped by every change.
pub type Stamp = u64;

/// One change this process made to the state file: its version before and after (both taken
/// under the lock), and the earliest expiry it added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnWrite {
    pub before: Option<Stamp>,
    pub after: Option<Stamp>,
    pub earliest_expiry: Option<u64>,
}

/// The changes `floodwall run` made itself, in order, so that its reader of the state file can
/// follow them without reading back a file it wrote (a large blocklist is tens of MB).
#[derive(Debug, Default)]
pub struct OwnWrites(std::sync::Mutex<Vec<OwnWrite>>);

/// Own writes remembered at most between two reads; beyond it the reader reads the file.
const OWN_WRITES_KEPT: usize = 1024;

impl OwnWrites {
    pub fn record(&self, write: OwnWrite) {
        if let Ok(mut writes) = self.0.lock() {
            if writes.len() >= OWN_WRITES_KEPT {
                // The reader fell behind: the chain breaks and it reads the file once.
                writes.clear();
            }
            writes.push(write);
        }
    }

    pub fn take(&self) -> Vec<OwnWrite> {
        self.0
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }
}
