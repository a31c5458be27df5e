//! The persistent store: SQLite (`STATE_DIR/floodwall.db`, WAL), one row per list entry with
//! an index on expiry, the limits in a table of their own, and a checked schema version. A
//! change touches only the rows it changes, so it costs the same with ten entries or ten
//! million. A `state.json` from before the store is migrated once, whole, and kept as
//! `state.json.migrated`.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use crate::{
    cidr::Cidr,
    limits::Limits,
    paths::Paths,
    state::{ListKind, Origin, Record, State, StateError},
};

/// The schema this floodwall writes; a store with a newer one is refused, never rewritten.
pub const SCHEMA_VERSION: i64 = 2;

/// Beyond this many entries, [`Store::records_for`] scans the list instead of looking each up.
const LOOKUPS_BEFORE_SCAN: usize = 1024;

/// How long a command waits for another's write to finish before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    list INTEGER NOT NULL,
    family INTEGER NOT NULL,
    addr BLOB NOT NULL,
    prefix INTEGER NOT NULL,
    expires_at INTEGER,
    comment TEXT,
    origin TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    changed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (list, family, addr, prefix)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_kind ON entries (list, family, prefix);
CREATE TABLE IF NOT EXISTS limits (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL);
";

fn list_id(kind: ListKind) -> i64 {
    match kind {
        ListKind::Allow => 0,
        ListKind::Block => 1,
    }
}

fn key(cidr: &Cidr) -> (i64, Vec<u8>, i64) {
    match cidr.addr() {
        IpAddr::V4(a) => (4, a.octets().to_vec(), i64::from(cidr.prefix_len())),
        IpAddr::V6(a) => (6, a.octets().to_vec(), i64::from(cidr.prefix_len())),
    }
}

/// A row back into a record; a row this floodwall cannot read is corruption.
fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let bad = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            format!("bad {what} in a list entry").into(),
        )
    };
    let addr: Vec<u8> = row.get("addr")?;
    let prefix: i64 = row.get("prefix")?;
    let ip = match addr.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr.as_slice()).map_err(|_| bad("address"))?),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr.as_slice()).map_err(|_| bad("address"))?),
        _ => return Err(bad("address")),
    };
    let cidr = Cidr::new(ip, u8::try_from(prefix).map_err(|_| bad("prefix"))?)
        .map_err(|_| bad("prefix"))?;
    let origin: String = row.get("origin")?;
    Ok(Record {
        cidr,
        expires_at: row.get::<_, Option<i64>>("expires_at")?.map(|t| t as u64),
        comment: row.get("comment")?,
        origin: Origin::from_name(&origin).ok_or_else(|| bad("origin"))?,
        added_at: row.get::<_, i64>("added_at")? as u64,
    })
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    fn db_error(&self, source: rusqlite::Error) -> StateError {
        StateError::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens (creating or migrating) the store in the state directory.
    pub fn open(paths: &Paths) -> Result<Store, StateError> {
        let path = paths.store_file();
        paths.ensure_state_dir().map_err(|e| StateError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        if !path.exists() && paths.state_file().exists() {
            migrate(paths, &path)?;
        }
        let store = Store {
            conn: connect(&path)?,
            path,
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StateError> {
        let found: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        match found {
            Some(v) if v > SCHEMA_VERSION => Err(StateError::NewerSchema {
                path: self.path.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            }),
            Some(1) => self.upgrade_from_1(),
            Some(_) => Ok(()),
            None => self
                .conn
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), \
                     ('generation', 0) ON CONFLICT (key) DO NOTHING",
                    [SCHEMA_VERSION],
                )
                .map(drop)
                .map_err(|e| self.db_error(e)),
        }
    }

    /// Version 2 added `changed`, the generation of the change that last wrote a row (what lets
    /// an import tell a repeated line from an entry it found, without remembering its lines).
    fn upgrade_from_1(&self) -> Result<(), StateError> {
        let upgrade = || -> rusqlite::Result<()> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            // Another command may have upgraded it while this one waited for the lock.
            let version: i64 = self.conn.query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )?;
            if version == 1 {
                self.conn.execute_batch(
                    "ALTER TABLE entries ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;
                     UPDATE meta SET value = 2 WHERE key = 'schema_version';",
                )?;
            }
            self.conn.execute_batch("COMMIT")
        };
        upgrade().map_err(|e| {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.db_error(e)
        })
    }

    /// Bumped by every change: what `floodwall run` watches to see changes it did not make.
    pub fn generation(&self) -> Result<u64, StateError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|g| g.unwrap_or(0) as u64)
            .map_err(|e| self.db_error(e))
    }

    pub fn limits(&self) -> Result<Option<Limits>, StateError> {
        limits_in(&self.conn).map_err(|e| self.db_error(e))
    }

    pub fn get(&self, kind: ListKind, cidr: &Cidr) -> Result<Option<Record>, StateError> {
        get_in(&self.conn, kind, cidr).map_err(|e| self.db_error(e))
    }

    fn records(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Record>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map(args, record)
            .map_err(|e| self.db_error(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_error(e))?;
        Ok(rows)
    }

    /// Calls `f` with each entry of `kind` in force at `now`, in address order, without
    /// holding them all.
    pub fn for_each_live(
        &self,
        kind: ListKind,
        now: u64,
        mut f: impl FnMut(Record) -> std::io::Result<()>,
    ) -> Result<(), StateError> {
        self.each_live(kind, now, |r| {
            f(r).map_err(|source| StateError::Write {
                path: PathBuf::from("-"),
                source,
            })
        })
    }

    /// Calls `f` with the entries of `kind` in force at `now`, `batch` at a time, in address
    /// order: all of them pass through without all being held.
    pub fn for_each_live_batch<E: From<StateError>>(
        &self,
        kind: ListKind,
        now: u64,
        batch: usize,
        mut f: impl FnMut(&[Record]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut held = Vec::with_capacity(batch);
        self.each_live(kind, now, |r| -> Result<(), E> {
            held.push(r);
            if held.len() == batch {
                f(&held)?;
                held.clear();
            }
            Ok(())
        })?;
        if !held.is_empty() {
            f(&held)?;
        }
        Ok(())
    }

    /// The one query behind both: each live entry of `kind`, in address order.
    fn each_live<E: From<StateError>>(
        &self,
        kind: ListKind,
        now: u64,
        mut f: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT * FROM entries WHERE list = ?1 AND (expires_at IS NULL OR expires_at > ?2) \
                 ORDER BY family, addr, prefix",
            )
            .map_err(|e| self.db_error(e))?;
        let mut rows = stmt
            .query(params![list_id(kind), now as i64])
            .map_err(|e| self.db_error(e))?;
        while let Some(row) = rows.next().map_err(|e| self.db_error(e))? {
            f(record(row).map_err(|e| self.db_error(e))?)?;
        }
        Ok(())
    }

    /// The entries of `kind` in force at Unix time `now`, in address order.
    pub fn live(&self, kind: ListKind, now: u64) -> Result<Vec<Record>, StateError> {
        self.records(
            "SELECT * FROM entries WHERE list = ?1 AND (expires_at IS NULL OR expires_at > ?2) \
             ORDER BY family, addr, prefix",
            params![list_id(kind), now as i64],
        )
    }

    pub fn count_live(&self, kind: ListKind, now: u64) -> Result<u64, StateError> {
        count_live_in(&self.conn, kind, now).map_err(|e| self.db_error(e))
    }

    /// The entries of `kind` whose time is up at `now`.
    pub fn expired(&self, kind: ListKind, now: u64) -> Result<Vec<Record>, StateError> {
        self.records(
            // `+list` keeps SQLite on the expiry index: by the primary key this scans the list.
            "SELECT * FROM entries WHERE +list = ?1 AND expires_at <= ?2",
            params![list_id(kind), now as i64],
        )
    }

    /// What the store holds for each of `cidrs` in `kind`. Many are read in one scan of the
    /// list rather than looked up one by one (a million lookups take seconds, a scan of the
    /// list a fraction of that).
    pub fn records_for<'c>(
        &self,
        kind: ListKind,
        cidrs: impl ExactSizeIterator<Item = &'c Cidr>,
    ) -> Result<HashMap<Cidr, Record>, StateError> {
        let mut out = HashMap::new();
        if cidrs.len() > LOOKUPS_BEFORE_SCAN {
            let wanted: HashSet<&Cidr> = cidrs.collect();
            for r in self.all(kind)? {
                if wanted.contains(&r.cidr) {
                    out.insert(r.cidr, r);
                }
            }
        } else {
            for cidr in cidrs {
                if let Some(r) = self.get(kind, cidr)? {
                    out.insert(*cidr, r);
                }
            }
        }
        Ok(out)
    }

    /// Every entry of `kind`, expired or not.
    pub fn all(&self, kind: ListKind) -> Result<Vec<Record>, StateError> {
        self.records(
            "SELECT * FROM entries WHERE list = ?1 ORDER BY family, addr, prefix",
            params![list_id(kind)],
        )
    }

    /// The entries of `kind` that `origin` put there.
    pub fn of_origin(&self, kind: ListKind, origin: Origin) -> Result<Vec<Record>, StateError> {
        self.records(
            "SELECT * FROM entries WHERE list = ?1 AND origin = ?2",
            params![list_id(kind), origin.name()],
        )
    }

    /// The earliest expiry after `now` of any entry.
    pub fn next_expiry(&self, now: u64) -> Result<Option<u64>, StateError> {
        self.conn
            .query_row(
                "SELECT MIN(expires_at) FROM entries WHERE expires_at > ?1",
                [now as i64],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|t| t.map(|t| t as u64))
            .map_err(|e| self.db_error(e))
    }

    /// Whether any entry's time is up at `now`.
    pub fn any_expired(&self, now: u64) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM entries WHERE expires_at <= ?1)",
                [now as i64],
                |r| r.get::<_, bool>(0),
            )
            .map_err(|e| self.db_error(e))
    }

    /// `LIST_*` bits of the maps that hold entries.
    pub fn list_bits(&self) -> Result<u32, StateError> {
        list_bits_in(&self.conn).map_err(|e| self.db_error(e))
    }

    /// Starts a change: nothing of it is seen until [`Change::commit`].
    pub fn change(&mut self) -> Result<Change<'_>, StateError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| StateError::Store {
                path: path.clone(),
                source,
            })?;
        let generation = tx
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(|source| StateError::Store {
                path: path.clone(),
                source,
            })?
            .unwrap_or(0) as u64
            + 1;
        Ok(Change {
            tx,
            path,
            generation,
        })
    }
}

fn connect(path: &Path) -> Result<Connection, StateError> {
    let err = |source| StateError::Store {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    // WAL with FULL: a committed change survives a power cut too.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.execute_batch(SCHEMA).map_err(err)?;
    Ok(conn)
}

fn limits_in(conn: &Connection) -> rusqlite::Result<Option<Limits>> {
    let json: Option<String> = conn
        .query_row("SELECT json FROM limits WHERE id = 1", [], |r| r.get(0))
        .optional()?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })
    })
    .transpose()
}

fn get_in(conn: &Connection, kind: ListKind, cidr: &Cidr) -> rusqlite::Result<Option<Record>> {
    let (family, addr, prefix) = key(cidr);
    conn.prepare_cached(
        "SELECT * FROM entries WHERE list = ?1 AND family = ?2 AND addr = ?3 AND prefix = ?4",
    )?
    .query_row(params![list_id(kind), family, addr, prefix], record)
    .optional()
}

fn count_live_in(conn: &Connection, kind: ListKind, now: u64) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COUNT(*) FROM entries WHERE list = ?1 AND \
         (expires_at IS NULL OR expires_at > ?2)",
        params![list_id(kind), now as i64],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

fn list_bits_in(conn: &Connection) -> rusqlite::Result<u32> {
    // Eight indexed existence checks: never a scan of the lists.
    let mut bits = 0;
    for kind in [ListKind::Allow, ListKind::Block] {
        let [h4, n4, h6, n6] = crate::kernel::list_bits(kind);
        for (family, host_len, host_bit, net_bit) in [(4, 32, h4, n4), (6, 128, h6, n6)] {
            let exists = |op: &str| -> rusqlite::Result<bool> {
                conn.prepare_cached(&format!(
                    "SELECT EXISTS (SELECT 1 FROM entries WHERE list = ?1 AND family = ?2 \
                     AND prefix {op} ?3)"
                ))?
                .query_row(params![list_id(kind), family, host_len], |r| r.get(0))
            };
            if exists("=")? {
                bits |= host_bit;
            }
            if exists("<")? {
                bits |= net_bit;
            }
        }
    }
    Ok(bits)
}

/// One change to the store, all or nothing.
pub struct Change<'a> {
    tx: Transaction<'a>,
    path: PathBuf,
    /// The generation this change commits as; rows it writes carry it in `changed`.
    generation: u64,
}

/// `?9`: now, `?10`: the change. Unqualified names in SET are the row as it was; a row this
/// change already wrote is left alone (`changes() == 0`), so a repeated line costs nothing.
const FEED_UPSERT: &str = "INSERT INTO entries (list, family, addr, prefix, expires_at, \
     comment, origin, added_at, changed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10) \
     ON CONFLICT (list, family, addr, prefix) DO UPDATE SET \
     added_at = CASE WHEN expires_at IS NULL OR expires_at > ?9 THEN added_at \
     ELSE excluded.added_at END, \
     expires_at = excluded.expires_at, comment = excluded.comment, origin = excluded.origin, \
     changed = ?10 \
     WHERE changed != ?10";

/// [`FEED_UPSERT`] that also leaves another origin's live entry alone.
const FEED_UPSERT_KEEPING_FOREIGN: &str = "INSERT INTO entries (list, family, addr, prefix, \
     expires_at, comment, origin, added_at, changed) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10) \
     ON CONFLICT (list, family, addr, prefix) DO UPDATE SET \
     added_at = CASE WHEN expires_at IS NULL OR expires_at > ?9 THEN added_at \
     ELSE excluded.added_at END, \
     expires_at = excluded.expires_at, comment = excluded.comment, origin = excluded.origin, \
     changed = ?10 \
     WHERE changed != ?10 AND (origin = excluded.origin OR expires_at <= ?9)";

/// Writes a feed's entries within one [`Change`].
pub struct FeedWriter<'c> {
    upsert: rusqlite::Statement<'c>,
    lookup: rusqlite::Statement<'c>,
    mark: rusqlite::Statement<'c>,
    list: i64,
    now: i64,
    generation: i64,
    path: &'c Path,
}

impl FeedWriter<'_> {
    /// Writes `r`, once per change: a repeat of an entry this change already wrote changes
    /// nothing. A refreshed live entry keeps its `added_at`. When keeping foreign entries, a
    /// live entry of another origin keeps its values and is only marked as seen.
    pub fn write(&mut self, r: &Record) -> Result<FeedWrite, StateError> {
        let err = |source| StateError::Store {
            path: self.path.to_owned(),
            source,
        };
        let (family, addr, prefix) = key(&r.cidr);
        let written = self
            .upsert
            .execute(params![
                self.list,
                family,
                addr,
                prefix,
                r.expires_at.map(|t| t as i64),
                r.comment,
                r.origin.name(),
                r.added_at as i64,
                self.now,
                self.generation
            ])
            .map_err(err)?;
        if written == 1 {
            return Ok(FeedWrite::Written);
        }
        let changed: i64 = self
            .lookup
            .query_row(params![self.list, family, addr, prefix], |row| row.get(0))
            .map_err(err)?;
        if changed == self.generation {
            return Ok(FeedWrite::Repeat);
        }
        self.mark
            .execute(params![self.list, family, addr, prefix, self.generation])
            .map_err(err)?;
        Ok(FeedWrite::KeptForeign)
    }
}

/// What [`FeedWriter::write`] did with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedWrite {
    Written,
    /// Another origin's live entry, left as it was.
    KeptForeign,
    /// This change had already written it.
    Repeat,
}

impl Change<'_> {
    fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Store {
            path: self.path.clone(),
            source,
        }
    }

    pub fn upsert(&self, kind: ListKind, r: &Record) -> Result<(), StateError> {
        let (family, addr, prefix) = key(&r.cidr);
        self.tx
            .prepare_cached(
                "INSERT INTO entries (list, family, addr, prefix, expires_at, comment, origin, \
                 added_at, changed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (list, family, addr, prefix) DO UPDATE SET \
                 expires_at = excluded.expires_at, comment = excluded.comment, \
                 origin = excluded.origin, added_at = excluded.added_at, \
                 changed = excluded.changed",
            )
            .and_then(|mut s| {
                s.execute(params![
                    list_id(kind),
                    family,
                    addr,
                    prefix,
                    r.expires_at.map(|t| t as i64),
                    r.comment,
                    r.origin.name(),
                    r.added_at as i64,
                    self.generation as i64
                ])
            })
            .map(drop)
            .map_err(|e| self.err(e))
    }

    pub fn remove(&self, kind: ListKind, cidr: &Cidr) -> Result<(), StateError> {
        let (family, addr, prefix) = key(cidr);
        self.tx
            .prepare_cached(
                "DELETE FROM entries WHERE list = ?1 AND family = ?2 AND addr = ?3 AND prefix = ?4",
            )
            .and_then(|mut s| s.execute(params![list_id(kind), family, addr, prefix]))
            .map(drop)
            .map_err(|e| self.err(e))
    }

    pub fn set_limits(&self, limits: Option<&Limits>) -> Result<(), StateError> {
        let result = match limits {
            Some(l) => {
                let json = serde_json::to_string(l).map_err(|e| StateError::Write {
                    path: self.path.clone(),
                    source: std::io::Error::other(e),
                })?;
                self.tx.execute(
                    "INSERT INTO limits (id, json) VALUES (1, ?1) \
                     ON CONFLICT (id) DO UPDATE SET json = excluded.json",
                    [json],
                )
            }
            None => self.tx.execute("DELETE FROM limits", []),
        };
        result.map(drop).map_err(|e| self.err(e))
    }

    pub fn limits(&self) -> Result<Option<Limits>, StateError> {
        limits_in(&self.tx).map_err(|e| self.err(e))
    }

    pub fn get(&self, kind: ListKind, cidr: &Cidr) -> Result<Option<Record>, StateError> {
        get_in(&self.tx, kind, cidr).map_err(|e| self.err(e))
    }

    pub fn count_live(&self, kind: ListKind, now: u64) -> Result<u64, StateError> {
        count_live_in(&self.tx, kind, now).map_err(|e| self.err(e))
    }

    /// A writer of a feed's entries into `kind` (see [`FeedWriter::write`]), its statements
    /// prepared once for all of them.
    pub fn feed_writer(
        &self,
        kind: ListKind,
        keep_foreign: bool,
        now: u64,
    ) -> Result<FeedWriter<'_>, StateError> {
        let prepare = |sql: &str| self.tx.prepare(sql).map_err(|e| self.err(e));
        Ok(FeedWriter {
            upsert: prepare(if keep_foreign {
                FEED_UPSERT_KEEPING_FOREIGN
            } else {
                FEED_UPSERT
            })?,
            lookup: prepare(
                "SELECT changed FROM entries WHERE list = ?1 AND family = ?2 AND addr = ?3 \
                 AND prefix = ?4",
            )?,
            mark: prepare(
                "UPDATE entries SET changed = ?5 WHERE list = ?1 AND family = ?2 AND addr = ?3 \
                 AND prefix = ?4",
            )?,
            list: list_id(kind),
            now: now as i64,
            generation: self.generation as i64,
            path: &self.path,
        })
    }

    /// Calls `f` with each entry of `origin` in `kind` that this change has not written.
    pub fn for_each_untouched<E: From<StateError>>(
        &self,
        kind: ListKind,
        origin: Origin,
        mut f: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT * FROM entries WHERE list = ?1 AND origin = ?2 AND changed != ?3",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![
                list_id(kind),
                origin.name(),
                self.generation as i64
            ])
            .map_err(|e| self.err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            f(record(row).map_err(|e| self.err(e))?)?;
        }
        Ok(())
    }

    /// Removes the entries [`Change::for_each_untouched`] names. Returns how many were live.
    pub fn remove_untouched(
        &self,
        kind: ListKind,
        origin: Origin,
        now: u64,
    ) -> Result<u64, StateError> {
        let args = params![list_id(kind), origin.name(), self.generation as i64];
        let live: i64 = self
            .tx
            .query_row(
                "SELECT COUNT(*) FROM entries WHERE list = ?1 AND origin = ?2 AND changed != ?3 \
                 AND (expires_at IS NULL OR expires_at > ?4)",
                params![
                    list_id(kind),
                    origin.name(),
                    self.generation as i64,
                    now as i64
                ],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        self.tx
            .execute(
                "DELETE FROM entries WHERE list = ?1 AND origin = ?2 AND changed != ?3",
                args,
            )
            .map_err(|e| self.err(e))?;
        Ok(live as u64)
    }

    /// `LIST_*` bits as the store will hold them once committed.
    pub fn list_bits(&self) -> Result<u32, StateError> {
        list_bits_in(&self.tx).map_err(|e| self.err(e))
    }

    /// Makes the change durable and visible; bumps the generation.
    pub fn commit(self) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |source| StateError::Store {
            path: path.clone(),
            source,
        };
        self.tx
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'generation'",
                [self.generation as i64],
            )
            .map_err(err)?;
        self.tx.commit().map_err(err)
    }
}

/// Moves a `state.json` into a new store: written whole into a temporary database, then
/// renamed into place, so a kill leaves either no store (the next command migrates again) or
/// the whole one. The JSON file is kept beside it as `state.json.migrated`.
fn migrate(paths: &Paths, path: &Path) -> Result<(), StateError> {
    let state = State::load(paths)?;
    let tmp = path.with_extension("db.migrating");
    let _ = std::fs::remove_file(&tmp);
    let mut store = Store {
        conn: connect(&tmp)?,
        path: tmp.clone(),
    };
    store.check_schema()?;
    let change = store.change()?;
    for kind in [ListKind::Allow, ListKind::Block] {
        for record in state.list(kind).values() {
            change.upsert(kind, record)?;
        }
    }
    change.set_limits(state.limits.as_ref())?;
    change.commit()?;
    // Folds the WAL into the file, so the rename moves everything.
    store
        .conn
        .pragma_update(None, "journal_mode", "DELETE")
        .map_err(|source| StateError::Store {
            path: tmp.clone(),
            source,
        })?;
    drop(store);
    let io = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::rename(
        paths.state_file(),
        paths.state_file().with_extension("json.migrated"),
    )
    .map_err(io)?;
    log::info!(
        "migrated {} list entries and the limits from {} into {}",
        state.allow.len() + state.block.len(),
        paths.state_file().display(),
        path.display()
    );
    Ok(())
}
