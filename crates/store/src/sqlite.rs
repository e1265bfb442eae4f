//! [`SqliteStore`]: the embedded [`JobStore`], one SQLite file shared by several processes.
//!
//! Several processes open the same file (the supervisor, its grabber child, CLI commands),
//! so the database runs in WAL mode with a busy timeout, and every read-then-write
//! operation runs in a `BEGIN IMMEDIATE` transaction, which takes the write lock up front:
//! two claimers never see the same queued job. Claims are conditional updates (`... WHERE
//! state = 'queued'`) with checked row counts all the same, as a PostgreSQL store needs.
//!
//! A job's group is decided once ([`JobStore::reroute`] documents when) and kept in its
//! `route` column, so that a claim is an index range scan on `(route, id)` of each group
//! with credit, and the backlog a probe of the same index, whatever the queue's depth:
//! no claim ever reads a job's tags, nor a job of another group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{FromSql, Value};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::claim::{self, Candidate, ClaimSql, ToRoute};
use crate::error::Context;
use crate::outcome_state;
use crate::{
    CancelResult, ClaimResult, Claimed, Instance, InstanceId, Job, JobId, JobState, JobStore,
    NewJob, Next, Outcome, Result, Route, StoreError, StoredRun, FINISHED,
};

/// How long an operation waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order: migration `i` takes the schema from version `i`
/// to version `i + 1` (`PRAGMA user_version`). Never edit one that has shipped: append.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    r#"
    CREATE TABLE instances (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        host        TEXT    NOT NULL,
        pid         INTEGER NOT NULL,
        token       TEXT    NOT NULL,
        started_at  REAL    NOT NULL
    );

    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded',
                                 'failed', 'timed_out', 'dead', 'canceled')),
        -- The group the job names (routing input), and the group it was last routed to.
        named_group      TEXT,
        run_group        TEXT,
        command          TEXT    NOT NULL,  -- JSON array of strings
        tags             TEXT    NOT NULL,  -- JSON object of strings
        env              TEXT    NOT NULL,  -- JSON object of strings
        cwd              TEXT,
        timeout_s        REAL,
        max_attempts     INTEGER,
        idem_key         TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        exit_code        INTEGER,
        signal           INTEGER,
        last_outcome     TEXT,
        created_at       REAL    NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        -- queued: not claimable before; failed/timed_out: retry time (NULL: finished).
        not_before       REAL,
        owner            INTEGER REFERENCES instances (id),
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        CHECK ((state = 'running') = (owner IS NOT NULL))
    );

    -- Claims: queued jobs in id order (an index on state is ordered by (state, id)).
    CREATE INDEX jobs_by_state ON jobs (state);
    -- Retries falling due, and the earliest waiting job.
    CREATE INDEX jobs_by_state_time ON jobs (state, not_before, id);
    CREATE INDEX jobs_by_owner ON jobs (owner);
    -- At most one unfinished job per idempotency key.
    CREATE UNIQUE INDEX jobs_live_key ON jobs (idem_key)
        WHERE idem_key IS NOT NULL
          AND (state IN ('queued', 'running')
               OR (state IN ('failed', 'timed_out') AND not_before IS NOT NULL));
    "#,
    // Version 2: partial indexes that hold live jobs only. Each index entry a claim or
    // an outcome moves is a page written to the log: with the three full indexes of
    // version 1 a claim wrote about seven pages and an outcome as many; now three and
    // two. Finished jobs, the bulk of a long-lived store, are in no index but the key's.
    r#"
    DROP INDEX jobs_by_state;
    DROP INDEX jobs_by_state_time;
    DROP INDEX jobs_by_owner;
    -- Claims: queued jobs in id order.
    CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued';
    -- Each instance's running jobs (releases, cancels, orphans).
    CREATE INDEX jobs_running ON jobs (owner) WHERE state = 'running';
    -- Jobs waiting for a retry time: due retries, and the earliest one.
    CREATE INDEX jobs_waiting ON jobs (not_before) WHERE not_before IS NOT NULL;
    "#,
    // Version 3: when each instance last said it was alive, so that a supervisor can
    // tell a dead instance on a host whose processes it cannot see.
    r#"
    ALTER TABLE instances ADD COLUMN last_seen REAL NOT NULL DEFAULT 0;
    UPDATE instances SET last_seen = started_at;
    "#,
    // Version 4: why a job ended as it did (a row that cannot be run, a supervisor that
    // died under it too often), why its last attempt could not start, and how many of
    // its supervisors died while it ran.
    r#"
    ALTER TABLE jobs ADD COLUMN reason TEXT;
    ALTER TABLE jobs ADD COLUMN start_error TEXT;
    ALTER TABLE jobs ADD COLUMN supervisor_deaths INTEGER NOT NULL DEFAULT 0;
    "#,
    // Version 5: a job's group is decided once, not at every claim. `route` is the group
    // it goes to (NULL: none takes it); `routed` is 0 until that is decided (jobs that
    // name their group are routed at submit, tagged ones by the next claim). Claims and
    // the backlog are then index range scans on (route, id) whatever the queue's depth.
    r#"
    ALTER TABLE jobs ADD COLUMN route TEXT;
    ALTER TABLE jobs ADD COLUMN routed INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET route = named_group, routed = 1 WHERE named_group IS NOT NULL;
    DROP INDEX jobs_queued;
    CREATE INDEX jobs_claimable ON jobs (route, id) WHERE state = 'queued';
    CREATE INDEX jobs_unrouted ON jobs (id) WHERE routed = 0;
    "#,
];

/// The newest schema version this code knows (`PRAGMA user_version` of a current file).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The columns [`read_job`] expects, in order.
const JOB_COLUMNS: &str = "id, state, COALESCE(run_group, named_group), command, tags, env, \
     cwd, timeout_s, max_attempts, idem_key, attempts, exit_code, signal, last_outcome, \
     created_at, started_at, finished_at, not_before, owner, cancel_requested, reason, \
     start_error";

/// Jobs whose retry time has come are queued again.
const MATERIALISE_RETRIES: &str = "UPDATE jobs SET state = 'queued' \
     WHERE state IN ('failed', 'timed_out') AND not_before <= ?1";

/// Busy handler: retry after 20 µs at first, then 200 µs, and give up after about
/// [`BUSY_TIMEOUT`] in all.
fn short_waits(tries: i32) -> bool {
    let (fast, fast_step, slow_step) = (100, 20u64, 200u64);
    let waited_us = if tries < fast {
        tries as u64 * fast_step
    } else {
        fast as u64 * fast_step + (tries - fast) as u64 * slow_step
    };
    if waited_us >= BUSY_TIMEOUT.as_micros() as u64 {
        return false;
    }
    let step = if tries < fast { fast_step } else { slow_step };
    std::thread::sleep(std::time::Duration::from_micros(step));
    true
}

/// The job store in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating it if needed) the store at `path` and brings its schema up to date.
    ///
    /// Sets WAL mode, `synchronous=NORMAL`, a 5 s busy timeout and foreign keys. Fails with
    /// [`StoreError::SchemaTooNew`] if the file was written by a newer version.
    pub fn open(path: &Path) -> Result<Self> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(|e| {
            // SQLite says only "unable to open database file"; the OS says why.
            let why = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path);
            match why {
                Err(error) => StoreError::Access {
                    path: path.to_owned(),
                    error,
                },
                Ok(_) => open_err(e),
            }
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // SQLite's own busy handler sleeps in steps of whole milliseconds; the grabber
        // and the supervisor take the write lock for tens of microseconds each, so
        // waiting in short steps keeps them from idling a worker for a millisecond.
        conn.busy_handler(Some(short_waits)).map_err(open_err)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
            row.get::<_, String>(0)
        })
        .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = SqliteStore {
            conn,
            path: path.to_owned(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Leave checkpoints of the write-ahead log to someone else (see [`checkpoint`]):
    /// a checkpoint ends in `fsync`, which on a busy connection stalls its caller for
    /// milliseconds. SQLite's default is a checkpoint by whichever commit takes the log
    /// past 1000 pages.
    ///
    /// [`checkpoint`]: SqliteStore::checkpoint
    pub fn disable_autocheckpoint(&self) -> Result<()> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .ctx("turn off automatic checkpoints")
    }

    /// Copy what the write-ahead log holds into the database file (`PASSIVE`: it waits
    /// for no reader or writer), so that the next writer can start the log afresh.
    /// Returns the log's size and how much of it is now copied, in pages.
    pub fn checkpoint(&self) -> Result<(i64, i64)> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(1)?, row.get(2)?))
            })
            .ctx("checkpoint the write-ahead log")
    }

    /// Copy the whole write-ahead log into the database file and empty the log
    /// (`TRUNCATE`): it waits for writers to finish and for readers to leave the log, and
    /// writers wait for it. Under a steady load passive checkpoints rarely catch up with
    /// the end of the log, which then never starts over and grows by every page written.
    pub fn checkpoint_truncate(&self) -> Result<(i64, i64)> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                Ok((row.get(1)?, row.get(2)?))
            })
            .ctx("truncate the write-ahead log")
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<u32> {
        user_version(&self.conn).ctx("read the schema version")
    }

    /// Applies the migrations the file lacks, all in one transaction.
    fn migrate(&mut self) -> Result<()> {
        let too_new = |found| StoreError::SchemaTooNew {
            path: self.path.clone(),
            found,
            supported: SCHEMA_VERSION,
        };
        let open_err = |source| StoreError::Open {
            path: self.path.clone(),
            source,
        };
        let found = user_version(&self.conn).map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(too_new(found));
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_err)?;
        // Another process may have migrated while we waited for the lock.
        let found = user_version(&tx).map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(too_new(found));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = index as u32 + 1;
            let migration_err = |source| StoreError::Migration {
                path: self.path.clone(),
                version,
                source,
            };
            tx.execute_batch(sql).map_err(migration_err)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(migration_err)?;
            log::info!(
                "job store {}: migrated to schema version {version}",
                self.path.display()
            );
        }
        tx.commit().map_err(open_err)
    }
}

/// `PRAGMA user_version`.
fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Queues the jobs whose retry time has come (inside a transaction).
fn materialise(conn: &Connection, now: f64) -> Result<usize> {
    conn.prepare_cached(MATERIALISE_RETRIES)
        .and_then(|mut stmt| stmt.execute([now]))
        .ctx("queue due retries")
}

/// Like [`materialise`], but outside a transaction: takes the write lock only if some
/// retry is due, so that read-only commands do not queue behind writers for nothing.
fn materialise_if_due(conn: &Connection, now: f64) -> Result<()> {
    let due = conn
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE state IN ('failed', 'timed_out') AND not_before <= ?1 \
             LIMIT 1",
        )
        .and_then(|mut stmt| stmt.exists([now]))
        .ctx("look for due retries")?;
    if due {
        materialise(conn, now)?;
    }
    Ok(())
}

/// Serialises a value stored as JSON text.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("strings, vectors and string maps always serialise")
}

/// Parses the state column of job `id`.
fn parse_state(id: JobId, text: &str) -> Result<JobState> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))
}

/// Column `index` of a row of job `id`; a value of the wrong type is reported as damage.
fn column<T: FromSql>(row: &Row<'_>, id: JobId, index: usize) -> Result<T> {
    row.get(index).map_err(|source| match source {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(format!("job {id}: column {index}: {source}"))
        }
        source => StoreError::Sqlite {
            op: "read a job",
            source,
        },
    })
}

/// Reads a row selected with [`JOB_COLUMNS`].
///
/// Only the id and the state must be sound (the schema's CHECK keeps the state so): a
/// column damaged by hand or by another version reads as empty, with a warning, so that
/// one bad row never hides the others from `jobs` and `status`. Claims check the columns
/// they run strictly ([`StoredRun`]).
fn read_job(row: &Row<'_>) -> Result<Job> {
    let id: JobId = row.get(0).ctx("read a job")?;
    let state = parse_state(id, &column::<String>(row, id, 1)?)?;
    let value = |index| row.get::<_, Value>(index).unwrap_or(Value::Null);
    let text = |index| match value(index) {
        Value::Text(t) => Some(t),
        _ => None,
    };
    let real = |index| match value(index) {
        Value::Real(f) => Some(f),
        Value::Integer(i) => Some(i as f64),
        _ => None,
    };
    let int = |index| match value(index) {
        Value::Integer(i) => Some(i),
        _ => None,
    };
    fn json<T: serde::de::DeserializeOwned + Default>(text: Option<String>) -> T {
        text.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }
    Ok(Job {
        id,
        state,
        group: text(2),
        command: json(text(3)),
        tags: json(text(4)),
        env: json(text(5)),
        cwd: text(6),
        timeout_s: real(7),
        max_attempts: int(8).and_then(|n| u32::try_from(n).ok()),
        key: text(9),
        attempts: int(10).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        exit_code: int(11).and_then(|n| i32::try_from(n).ok()),
        signal: int(12).and_then(|n| i32::try_from(n).ok()),
        last_outcome: text(13),
        created_at: real(14).unwrap_or(0.0),
        started_at: real(15),
        finished_at: real(16),
        not_before: real(17),
        owner: int(18),
        cancel_requested: int(19).is_some_and(|n| n != 0),
        reason: text(20),
        start_error: text(21),
    })
}

/// A column of a candidate row as a claim reads it: its value, or what is wrong with it.
fn stored<T>(value: &Value, read: impl Fn(&Value) -> Option<T>) -> std::result::Result<T, String> {
    read(value).ok_or_else(|| format!("a stored value of the wrong type: {}", shown(value)))
}

/// A raw column value, short, for a reason.
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(t) => format!("{:?}", t.chars().take(60).collect::<String>()),
        Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

/// A JSON text column of a candidate row.
fn stored_json<T: serde::de::DeserializeOwned>(value: &Value) -> std::result::Result<T, String> {
    match value {
        Value::Text(text) => {
            serde_json::from_str(text).map_err(|e| format!("not the expected JSON ({e})"))
        }
        other => Err(format!(
            "a stored value of the wrong type: {}",
            shown(other)
        )),
    }
}

/// The fields a claim runs, from a row of [`candidates_sql`] (columns 3 to 8).
fn stored_run(row: &[Value]) -> StoredRun {
    let opt_text = |v: &Value| match v {
        Value::Null => Some(None),
        Value::Text(t) => Some(Some(t.clone())),
        _ => None,
    };
    let opt_real = |v: &Value| match v {
        Value::Null => Some(None),
        Value::Real(f) => Some(Some(*f)),
        Value::Integer(i) => Some(Some(*i as f64)),
        _ => None,
    };
    let opt_int = |v: &Value| match v {
        Value::Null => Some(None),
        Value::Integer(i) => Some(Some(*i)),
        _ => None,
    };
    StoredRun {
        command: stored_json(&row[3]),
        env: stored_json(&row[4]),
        cwd: stored(&row[5], opt_text),
        timeout_s: stored(&row[6], opt_real),
        max_attempts: stored(&row[7], opt_int),
        attempts: stored(&row[8], |v| match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        }),
    }
}

/// Claimable jobs of group `?1` after id `?2`, runnable at `?3`, in id order, at most
/// `?4`: an index range scan on (route, id). Columns as [`stored_run`] reads them.
const CANDIDATES: &str = "SELECT id, NULL, NULL, command, env, cwd, timeout_s, \
     max_attempts, attempts FROM jobs \
     WHERE state = 'queued' AND route = ?1 AND id > ?2 \
     AND (not_before IS NULL OR not_before <= ?3) ORDER BY id LIMIT ?4";

/// Jobs whose group is not decided yet, oldest first, at most `?1`.
const UNROUTED: &str = "SELECT id, named_group, tags FROM jobs WHERE routed = 0 \
     ORDER BY id LIMIT ?1";

/// `?1`, `?2`, ... for `n` values, after `first - 1` others.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a job routed to one of the `n` groups `?2`... is runnable at `?1`.
fn runnable_sql(n: usize) -> String {
    format!(
        "SELECT 1 FROM jobs WHERE state = 'queued' AND route IN ({}) \
         AND (not_before IS NULL OR not_before <= ?1) LIMIT 1",
        placeholders(2, n)
    )
}

/// The earliest time a job routed to one of the `n` groups `?2`... becomes runnable
/// (`?1`: now).
fn waiting_sql(n: usize) -> String {
    format!(
        "SELECT MIN(not_before) FROM jobs \
         WHERE not_before IS NOT NULL \
         AND ((state = 'queued' AND not_before > ?1) OR state IN ('failed', 'timed_out')) \
         AND route IN ({})",
        placeholders(2, n)
    )
}

/// The jobs queued or waiting for a retry, with their group now.
const LIVE_ROUTES: &str = "SELECT id, named_group, tags, route FROM jobs WHERE state = 'queued' \
     UNION ALL SELECT id, named_group, tags, route FROM jobs \
     WHERE not_before IS NOT NULL AND state IN ('failed', 'timed_out')";

/// A job as routing reads it, from its columns as stored.
fn to_route(id: JobId, named: Value, tags: &Value, route: Value) -> ToRoute {
    let text = |value| match value {
        Value::Text(t) => Some(t),
        _ => None,
    };
    ToRoute {
        id,
        named: text(named),
        tags: stored_json(tags).unwrap_or_default(),
        route: text(route),
    }
}

/// A claim's (or a reroute's) SQL, inside its `BEGIN IMMEDIATE` transaction: the write
/// lock is held throughout, so candidates are picked first and each sound one is marked
/// running after.
struct ClaimTx<'a> {
    conn: &'a Connection,
    /// Per group, the last id picked: the group's next pick starts after it.
    after: BTreeMap<String, JobId>,
}

impl<'a> ClaimTx<'a> {
    fn new(conn: &'a Connection) -> Self {
        ClaimTx {
            conn,
            after: BTreeMap::new(),
        }
    }
}

impl ClaimSql for ClaimTx<'_> {
    fn unrouted(&mut self, limit: i64) -> Result<Vec<ToRoute>> {
        self.conn
            .prepare_cached(UNROUTED)
            .and_then(|mut stmt| {
                stmt.query_map([limit], |row| {
                    Ok(to_route(
                        row.get(0)?,
                        row.get(1)?,
                        &row.get(2)?,
                        Value::Null,
                    ))
                })?
                .collect()
            })
            .ctx("route new jobs")
    }

    fn live(&mut self) -> Result<Vec<ToRoute>> {
        self.conn
            .prepare_cached(LIVE_ROUTES)
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    Ok(to_route(
                        row.get(0)?,
                        row.get(1)?,
                        &row.get(2)?,
                        row.get(3)?,
                    ))
                })?
                .collect()
            })
            .ctx("reroute")
    }

    fn set_routes(&mut self, routes: &[(JobId, Option<String>)], op: &'static str) -> Result<()> {
        let mut set = self
            .conn
            .prepare_cached("UPDATE jobs SET route = ?2, routed = 1 WHERE id = ?1")
            .ctx(op)?;
        for (id, group) in routes {
            set.execute(params![id, group]).ctx(op)?;
        }
        Ok(())
    }

    fn pick(&mut self, _me: InstanceId, want: &[(&str, u32)], now: f64) -> Result<Vec<Candidate>> {
        let mut picked = Vec::new();
        for &(group, n) in want {
            let after = self.after.get(group).copied().unwrap_or(0);
            // Every column as it is stored: the planner checks them field by field.
            let rows: Vec<(JobId, Vec<Value>)> = self
                .conn
                .prepare_cached(CANDIDATES)
                .and_then(|mut stmt| {
                    stmt.query_map(params![group, after, now, n], |row| {
                        let values = (0..9)
                            .map(|i| row.get::<_, Value>(i))
                            .collect::<rusqlite::Result<Vec<Value>>>()?;
                        Ok((row.get(0)?, values))
                    })?
                    .collect()
                })
                .ctx("claim: find runnable jobs")?;
            for (id, row) in rows {
                self.after.insert(group.to_owned(), id);
                picked.push(Candidate {
                    id,
                    group: group.to_owned(),
                    run: stored_run(&row),
                });
            }
        }
        Ok(picked)
    }

    fn start(&mut self, me: InstanceId, job: &Claimed, now: f64) -> Result<bool> {
        self.conn
            .prepare_cached(
                "UPDATE jobs SET state = 'running', owner = ?1, \
                 attempts = attempts + 1, started_at = ?2, finished_at = NULL, \
                 exit_code = NULL, signal = NULL, not_before = NULL, \
                 run_group = ?3, start_error = NULL \
                 WHERE id = ?4 AND state = 'queued'",
            )
            .and_then(|mut stmt| stmt.execute(params![me, now, job.group, job.id]))
            .map(|changed| changed == 1)
            .ctx("claim a job")
    }

    fn refuse(&mut self, id: JobId, reason: &str, now: f64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE jobs SET state = 'dead', reason = ?2, finished_at = ?3, \
                 not_before = NULL WHERE id = ?1 AND state = 'queued'",
            )
            .and_then(|mut stmt| stmt.execute(params![id, reason, now]))
            .map(|_| ())
            .ctx("end a job that cannot be run")
    }

    fn backlog(&mut self, groups: &[&str], now: f64) -> Result<(bool, Option<f64>)> {
        let mut args: Vec<Value> = vec![Value::Real(now)];
        args.extend(groups.iter().map(|g| Value::Text((*g).to_owned())));
        let n = groups.len();
        let runnable = self
            .conn
            .prepare_cached(&runnable_sql(n))
            .and_then(|mut stmt| stmt.exists(params_from_iter(args.iter())))
            .ctx("claim: look for runnable jobs")?;
        let waiting_until: Option<f64> = self
            .conn
            .prepare_cached(&waiting_sql(n))
            .and_then(|mut stmt| stmt.query_row(params_from_iter(args.iter()), |row| row.get(0)))
            .ctx("claim: look for waiting jobs")?;
        Ok((runnable, waiting_until))
    }
}

/// Gives back the running jobs of owner `?1` at time `?2`: queued without using up an
/// attempt (`finished_at` left unset, as the claim left it), or canceled at `?2` if a
/// cancel was requested. Every way of taking a job back narrows this down.
const TAKE_BACK: &str = "UPDATE jobs SET \
     state = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END, \
     attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, \
     last_outcome = CASE WHEN cancel_requested THEN 'canceled' ELSE last_outcome END, \
     finished_at = CASE WHEN cancel_requested THEN ?2 ELSE finished_at END, \
     owner = NULL \
     WHERE owner = ?1 AND state = 'running'";

/// Takes back the running jobs of dead owner `?1` at time `?2` as [`TAKE_BACK`] does,
/// counting one more death of their supervisor; a job at its
/// [`SUPERVISOR_DEATHS`](crate::SUPERVISOR_DEATHS)th ends `dead` with reason `?3` (`?4`:
/// the limit).
const TAKE_BACK_ORPHANS: &str = "UPDATE jobs SET \
     state = CASE WHEN cancel_requested THEN 'canceled' \
                  WHEN supervisor_deaths + 1 >= ?4 THEN 'dead' ELSE 'queued' END, \
     attempts = CASE WHEN cancel_requested OR supervisor_deaths + 1 >= ?4 THEN attempts \
                     ELSE attempts - 1 END, \
     last_outcome = CASE WHEN cancel_requested THEN 'canceled' \
                         WHEN supervisor_deaths + 1 >= ?4 THEN 'lost' ELSE last_outcome END, \
     finished_at = CASE WHEN cancel_requested OR supervisor_deaths + 1 >= ?4 THEN ?2 \
                        ELSE finished_at END, \
     reason = CASE WHEN NOT cancel_requested AND supervisor_deaths + 1 >= ?4 THEN ?3 \
                   ELSE reason END, \
     supervisor_deaths = supervisor_deaths + 1, \
     owner = NULL \
     WHERE owner = ?1 AND state = 'running'";

/// [`TAKE_BACK`] for one attempt (`?3`: the job, `?4`: the attempt).
fn release_sql() -> String {
    format!("{TAKE_BACK} AND id = ?3 AND attempts = ?4")
}

/// Takes back the running jobs of `instance`: queued again without using up an attempt,
/// or canceled at `now` if a cancel was requested. Returns their ids.
fn take_back(conn: &Connection, instance: InstanceId, now: f64) -> Result<Vec<JobId>> {
    let mut ids = conn
        .prepare_cached(&format!("{TAKE_BACK} RETURNING id"))
        .and_then(|mut stmt| {
            stmt.query_map(params![instance, now], |row| row.get::<_, JobId>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("take back an instance's jobs")?;
    ids.sort_unstable();
    Ok(ids)
}

impl JobStore for SqliteStore {
    fn submit(&mut self, jobs: &[NewJob], now: f64) -> Result<Vec<JobId>> {
        for (index, job) in jobs.iter().enumerate() {
            job.validate()
                .map_err(|message| StoreError::InvalidJob { index, message })?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("submit")?;
        let mut ids = Vec::with_capacity(jobs.len());
        {
            let mut find_key = tx
                .prepare_cached(
                    "SELECT id FROM jobs WHERE idem_key = ?1 AND idem_key IS NOT NULL \
                     AND (state IN ('queued', 'running') \
                          OR (state IN ('failed', 'timed_out') AND not_before IS NOT NULL)) \
                     LIMIT 1",
                )
                .ctx("submit")?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO jobs (state, named_group, command, tags, env, cwd, timeout_s, \
                     max_attempts, idem_key, created_at, route, routed) \
                     VALUES ('queued', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?1, ?1 IS NOT NULL)",
                )
                .ctx("submit")?;
            for job in jobs {
                if let Some(key) = &job.key {
                    let existing: Option<JobId> = find_key
                        .query_row([key], |row| row.get(0))
                        .optional()
                        .ctx("submit: look up a key")?;
                    if let Some(id) = existing {
                        ids.push(id);
                        continue;
                    }
                }
                let id = insert
                    .insert(params![
                        job.group,
                        to_json(&job.command),
                        to_json(&job.tags),
                        to_json(&job.env),
                        job.cwd,
                        job.timeout_s,
                        job.max_attempts,
                        job.key,
                        now,
                    ])
                    .ctx("submit")?;
                ids.push(id);
            }
        }
        tx.commit().ctx("submit")?;
        Ok(ids)
    }

    fn register_instance(
        &mut self,
        host: &str,
        pid: u32,
        token: &str,
        now: f64,
    ) -> Result<InstanceId> {
        self.conn
            .prepare_cached(
                "INSERT INTO instances (host, pid, token, started_at, last_seen) \
                 VALUES (?1, ?2, ?3, ?4, ?4)",
            )
            .and_then(|mut stmt| stmt.insert(params![host, pid, token, now]))
            .ctx("register an instance")
    }

    fn unregister_instance(&mut self, id: InstanceId, now: f64) -> Result<Vec<JobId>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("unregister an instance")?;
        let ids = take_back(&tx, id, now)?;
        tx.execute("DELETE FROM instances WHERE id = ?1", [id])
            .ctx("unregister an instance")?;
        tx.commit().ctx("unregister an instance")?;
        Ok(ids)
    }

    fn instances(&mut self) -> Result<Vec<Instance>> {
        self.conn
            .prepare_cached(
                "SELECT id, host, pid, token, started_at, last_seen FROM instances ORDER BY id",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    // Damage by hand reads as an instance whose process is gone (pid
                    // 0, never seen), so that its jobs are taken back rather than stuck
                    // and no start of a supervisor fails on it.
                    let value = |i| row.get::<_, Value>(i).unwrap_or(Value::Null);
                    let text = |i| match value(i) {
                        Value::Text(t) => t,
                        _ => String::new(),
                    };
                    let real = |i| match value(i) {
                        Value::Real(f) => f,
                        Value::Integer(n) => n as f64,
                        _ => 0.0,
                    };
                    Ok(Instance {
                        id: row.get(0)?,
                        host: text(1),
                        pid: match value(2) {
                            Value::Integer(n) => u32::try_from(n).unwrap_or(0),
                            _ => 0,
                        },
                        token: text(3),
                        started_at: real(4),
                        last_seen: real(5),
                    })
                })?
                .collect()
            })
            .ctx("list instances")
    }

    fn touch_instance(&mut self, id: InstanceId, now: f64) -> Result<bool> {
        self.conn
            .prepare_cached("UPDATE instances SET last_seen = ?2 WHERE id = ?1")
            .and_then(|mut stmt| stmt.execute(params![id, now]))
            .map(|changed| changed == 1)
            .ctx("touch an instance")
    }

    fn requeue_orphans(
        &mut self,
        me: InstanceId,
        is_dead: &dyn Fn(&Instance) -> bool,
        now: f64,
    ) -> Result<Vec<JobId>> {
        let dead: Vec<Instance> = self
            .instances()?
            .into_iter()
            .filter(|instance| instance.id != me && is_dead(instance))
            .collect();
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("requeue orphans")?;
        let mut ids = Vec::new();
        for instance in dead {
            // Only as it was judged: one that was touched since is alive.
            let unchanged = tx
                .prepare_cached("SELECT 1 FROM instances WHERE id = ?1 AND last_seen = ?2")
                .and_then(|mut stmt| stmt.exists(params![instance.id, instance.last_seen]))
                .ctx("requeue orphans")?;
            if !unchanged {
                continue;
            }
            let taken = tx
                .prepare_cached(&format!("{TAKE_BACK_ORPHANS} RETURNING id"))
                .and_then(|mut stmt| {
                    stmt.query_map(
                        params![
                            instance.id,
                            now,
                            crate::quarantine_reason(),
                            crate::SUPERVISOR_DEATHS
                        ],
                        |row| row.get::<_, JobId>(0),
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .ctx("requeue orphans")?;
            ids.extend(taken);
            tx.execute("DELETE FROM instances WHERE id = ?1", [instance.id])
                .ctx("requeue orphans")?;
        }
        tx.commit().ctx("requeue orphans")?;
        ids.sort_unstable();
        Ok(ids)
    }

    fn claim(
        &mut self,
        me: InstanceId,
        routes: &[Route],
        credits: &mut BTreeMap<String, u32>,
        now: f64,
    ) -> Result<ClaimResult> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("claim")?;
        materialise(&tx, now)?;
        let result = claim::claim(&mut ClaimTx::new(&tx), me, routes, credits, now)?;
        tx.commit().ctx("claim")?;
        Ok(result)
    }

    fn purge_finished(
        &mut self,
        finished_before: Option<f64>,
        keep: Option<u64>,
        limit: u32,
    ) -> Result<Vec<JobId>> {
        let op = "delete finished jobs";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(op)?;
        let mut ids: Vec<JobId> = Vec::new();
        let delete = |sql: &str, p: &[&dyn rusqlite::ToSql], ids: &mut Vec<JobId>| {
            tx.prepare_cached(sql)
                .and_then(|mut stmt| {
                    let found = stmt
                        .query_map(p, |row| row.get::<_, JobId>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    ids.extend(found);
                    Ok(())
                })
                .ctx(op)
        };
        if let Some(before) = finished_before {
            delete(
                &format!(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {FINISHED} \
                     AND finished_at < ?1 ORDER BY id LIMIT ?2) RETURNING id"
                ),
                &[&before, &limit],
                &mut ids,
            )?;
        }
        let left = i64::from(limit) - ids.len() as i64;
        if let (Some(keep), true) = (keep, left > 0) {
            // The newest `keep` finished jobs stay: the one just older is the threshold.
            let keep = i64::try_from(keep).unwrap_or(i64::MAX);
            let threshold: Option<JobId> = tx
                .prepare_cached(&format!(
                    "SELECT id FROM jobs WHERE {FINISHED} ORDER BY id DESC LIMIT 1 OFFSET ?1"
                ))
                .and_then(|mut stmt| stmt.query_row([keep], |row| row.get(0)).optional())
                .ctx(op)?;
            if let Some(t) = threshold {
                delete(
                    &format!(
                        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {FINISHED} \
                         AND id <= ?1 ORDER BY id LIMIT ?2) RETURNING id"
                    ),
                    &[&t, &left],
                    &mut ids,
                )?;
            }
        }
        tx.commit().ctx(op)?;
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn reroute(&mut self, routes: &[Route]) -> Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("reroute")?;
        let changed = claim::reroute(&mut ClaimTx::new(&tx), routes)?;
        tx.commit().ctx("reroute")?;
        Ok(changed)
    }

    fn record_outcome(
        &mut self,
        id: JobId,
        attempt: u32,
        owner: InstanceId,
        outcome: &Outcome,
        next: Next,
        now: f64,
    ) -> Result<bool> {
        let (state, not_before) = outcome_state(id, outcome, next)?;
        // One statement: a retry becomes `canceled` if a cancel was requested, decided on
        // the row as it is when the write lock is held.
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET \
                 state = CASE WHEN cancel_requested AND ?2 IS NOT NULL THEN 'canceled' \
                         ELSE ?1 END, \
                 not_before = CASE WHEN cancel_requested THEN NULL ELSE ?2 END, \
                 owner = NULL, exit_code = ?3, signal = ?4, last_outcome = ?5, \
                 finished_at = ?6, start_error = ?10, reason = ?11 \
                 WHERE id = ?7 AND state = 'running' AND attempts = ?8 AND owner = ?9",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    state.as_str(),
                    not_before,
                    outcome.exit_code,
                    outcome.signal,
                    outcome.kind.as_str(),
                    now,
                    id,
                    attempt,
                    owner,
                    outcome.start_error,
                    outcome.reason
                ])
            })
            .ctx("record an outcome")?;
        Ok(changed == 1)
    }

    fn release(&mut self, id: JobId, attempt: u32, owner: InstanceId, now: f64) -> Result<bool> {
        self.conn
            .prepare_cached(&release_sql())
            .and_then(|mut stmt| stmt.execute(params![owner, now, id, attempt]))
            .map(|changed| changed == 1)
            .ctx("release a job")
    }

    fn release_strays(
        &mut self,
        owner: InstanceId,
        known: &[JobId],
        claimed_before: Option<f64>,
        now: f64,
    ) -> Result<Vec<JobId>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("release strays")?;
        let running: Vec<(JobId, u32)> = tx
            .prepare_cached(
                "SELECT id, attempts FROM jobs WHERE state = 'running' AND owner = ?1 \
                 AND (?2 IS NULL OR started_at <= ?2)",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![owner, claimed_before], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .ctx("release strays")?;
        let known: std::collections::BTreeSet<JobId> = known.iter().copied().collect();
        let mut released = Vec::new();
        for (id, attempt) in running.into_iter().filter(|(id, _)| !known.contains(id)) {
            let changed = tx
                .prepare_cached(&release_sql())
                .and_then(|mut stmt| stmt.execute(params![owner, now, id, attempt]))
                .ctx("release strays")?;
            if changed == 1 {
                released.push(id);
            }
        }
        tx.commit().ctx("release strays")?;
        Ok(released)
    }

    fn cancel(&mut self, id: JobId, now: f64) -> Result<CancelResult> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("cancel")?;
        let row: Option<(String, Option<f64>)> = tx
            .prepare_cached("SELECT state, not_before FROM jobs WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .ctx("cancel")?;
        let Some((state, not_before)) = row else {
            return Ok(CancelResult::Unknown);
        };
        let state = parse_state(id, &state)?;
        let result = match state {
            JobState::Running => {
                tx.prepare_cached(
                    "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1 AND state = 'running'",
                )
                .and_then(|mut stmt| stmt.execute([id]))
                .ctx("cancel")?;
                CancelResult::Requested
            }
            JobState::Queued | JobState::Failed | JobState::TimedOut
                if state == JobState::Queued || not_before.is_some() =>
            {
                tx.prepare_cached(
                    "UPDATE jobs SET state = 'canceled', finished_at = ?2, not_before = NULL \
                     WHERE id = ?1 AND (state = 'queued' OR (state IN ('failed', 'timed_out') \
                     AND not_before IS NOT NULL))",
                )
                .and_then(|mut stmt| stmt.execute(params![id, now]))
                .ctx("cancel")?;
                CancelResult::Canceled
            }
            finished => CancelResult::AlreadyFinished(finished),
        };
        tx.commit().ctx("cancel")?;
        Ok(result)
    }

    fn cancel_requests(&mut self, owner: InstanceId) -> Result<Vec<(JobId, u32)>> {
        self.conn
            .prepare_cached(
                "SELECT id, attempts FROM jobs \
                 WHERE owner = ?1 AND state = 'running' AND cancel_requested ORDER BY id",
            )
            .and_then(|mut stmt| {
                stmt.query_map([owner], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .ctx("list cancel requests")
    }

    fn get(&mut self, id: JobId, now: f64) -> Result<Option<Job>> {
        materialise_if_due(&self.conn, now)?;
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
            .ctx("get a job")?;
        let mut rows = stmt.query([id]).ctx("get a job")?;
        match rows.next().ctx("get a job")? {
            Some(row) => read_job(row).map(Some),
            None => Ok(None),
        }
    }

    fn list(&mut self, state: Option<JobState>, now: f64) -> Result<Vec<Job>> {
        materialise_if_due(&self.conn, now)?;
        let (sql, params): (String, Vec<Value>) = match state {
            Some(state) => (
                format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1 ORDER BY id"),
                vec![Value::Text(state.as_str().to_owned())],
            ),
            None => (
                format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id"),
                vec![],
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql).ctx("list jobs")?;
        let mut rows = stmt.query(params_from_iter(params)).ctx("list jobs")?;
        let mut jobs = Vec::new();
        while let Some(row) = rows.next().ctx("list jobs")? {
            jobs.push(read_job(row)?);
        }
        Ok(jobs)
    }

    fn counts(&mut self, now: f64) -> Result<BTreeMap<JobState, u64>> {
        materialise_if_due(&self.conn, now)?;
        let mut counts: BTreeMap<JobState, u64> =
            JobState::ALL.into_iter().map(|state| (state, 0)).collect();
        let rows: Vec<(String, i64)> = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .ctx("count jobs")?;
        for (state, n) in rows {
            let state = state
                .parse::<JobState>()
                .map_err(|e| StoreError::Corrupt(format!("a job has an {e}")))?;
            counts.insert(state, n.try_into().unwrap_or(0));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OutcomeKind;

    /// The query plan of `sql`, one step a line.
    fn plan(store: &SqliteStore, sql: &str, params: &[Value]) -> String {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let steps: Vec<String> = stmt
            .query_map(params_from_iter(params), |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        steps.join("\n")
    }

    #[test]
    fn hot_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("jobs.db")).unwrap();
        let now = Value::Real(1.0);
        let groups = [Value::Text("g".into()), Value::Text("t".into())];
        let no_full_scan = |p: &str| !p.lines().any(|l| l.trim_end() == "SCAN jobs");

        // A claim of one group: a range of (route, id), in id order, whatever the depth.
        let p = plan(
            &store,
            CANDIDATES,
            &[
                Value::Text("g".into()),
                Value::Integer(0),
                now.clone(),
                Value::Integer(5),
            ],
        );
        assert!(
            p.contains("USING INDEX jobs_claimable (route=? AND id>?)"),
            "{p}"
        );
        assert!(!p.contains("TEMP B-TREE") && no_full_scan(&p), "{p}");

        // The backlog: runnable jobs and the earliest waiting one, for these groups.
        let args = [std::slice::from_ref(&now), &groups[..]].concat();
        let p = plan(&store, &runnable_sql(2), &args);
        assert!(p.contains("USING INDEX jobs_claimable (route=?)"), "{p}");
        assert!(no_full_scan(&p), "{p}");
        let p = plan(&store, &waiting_sql(2), &args);
        assert!(p.contains("USING INDEX jobs_waiting"), "{p}");
        assert!(no_full_scan(&p), "{p}");

        // The jobs not routed yet.
        let p = plan(&store, UNROUTED, &[Value::Integer(5)]);
        assert!(p.contains("USING INDEX jobs_unrouted"), "{p}");
        assert!(no_full_scan(&p), "{p}");

        let p = plan(&store, MATERIALISE_RETRIES, std::slice::from_ref(&now));
        assert!(p.contains("USING INDEX jobs_waiting"), "{p}");

        let owner_now = [Value::Integer(1), now.clone()];
        let p = plan(&store, &format!("{TAKE_BACK} RETURNING id"), &owner_now);
        assert!(p.contains("INDEX jobs_running (owner=?)"), "{p}");
        let p = plan(
            &store,
            &release_sql(),
            &[
                owner_now.as_slice(),
                &[Value::Integer(7), Value::Integer(1)],
            ]
            .concat(),
        );
        assert!(p.contains("USING INTEGER PRIMARY KEY (rowid=?)"), "{p}");

        for sql in [
            "SELECT id, attempts FROM jobs WHERE state = 'running' AND owner = ?1",
            "SELECT id FROM jobs WHERE owner = ?1 AND state = 'running' AND cancel_requested \
             ORDER BY id",
        ] {
            let p = plan(&store, sql, &[Value::Integer(1)]);
            assert!(
                p.contains("USING INDEX jobs_running (owner=?)"),
                "{sql}: {p}"
            );
        }
    }

    /// Claims and outcomes touch few pages: only live jobs are indexed. Counted as the
    /// frames each adds to the write-ahead log.
    #[test]
    fn a_claim_and_an_outcome_write_few_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("jobs.db")).unwrap();
        store.disable_autocheckpoint().unwrap();
        let job: NewJob = serde_json::from_str(r#"{"command": ["true"], "group": "g"}"#).unwrap();
        store.submit(&vec![job; 500], 1.0).unwrap();
        let me = store.register_instance("h", 1, "t", 1.0).unwrap();
        let routes = [Route {
            group: "g".into(),
            matches: None,
        }];
        // Nothing checkpoints, so the log only grows: its size counts the frames.
        let wal = dir.path().join("jobs.db-wal");
        let frames = |_: &SqliteStore| std::fs::metadata(&wal).unwrap().len() / (4096 + 24);
        // Warm up past the first pages of each index, then measure.
        let mut claim_frames = 0;
        let mut record_frames = 0;
        for i in 0..200 {
            let before = frames(&store);
            let mut credits = BTreeMap::from([("g".to_string(), 1)]);
            let claimed = store.claim(me, &routes, &mut credits, 2.0).unwrap().jobs;
            let mid = frames(&store);
            let j = &claimed[0];
            let outcome = Outcome {
                kind: OutcomeKind::Succeeded,
                exit_code: Some(0),
                signal: None,
                start_error: None,
                reason: None,
            };
            assert!(store
                .record_outcome(j.id, j.attempt, me, &outcome, Next::Done, 3.0)
                .unwrap());
            let after = frames(&store);
            if i >= 100 {
                claim_frames += mid - before;
                record_frames += after - mid;
            }
        }
        // Version 1 wrote about 7 and 7.
        assert!(
            claim_frames <= 350,
            "claims wrote {claim_frames} pages per 100"
        );
        assert!(
            record_frames <= 250,
            "outcomes wrote {record_frames} pages per 100"
        );
    }
}
