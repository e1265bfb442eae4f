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
//!
//! Its rooms: `schema` (the migrations), `rows` (reading rows), `claim_sql` (the SQL of
//! the [claim planner](crate::claim)), and `tests`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::error::Context;
use crate::sql::{self, for_sqlite, FINISHED, JOB_COLUMNS, PURGEABLE};
use crate::{cancel_step, claim, group_counts, outcome_state, parse_state, settled, state_counts};
use crate::{
    AfterAttempt, AfterPlan, CancelResult, ClaimResult, Instance, InstanceId, Job, JobId, JobState,
    JobStore, NewJob, OutcomeRecord, PlaceRow, PlaceSql, QueuePlace, Result, Route, Settle,
    Settled, StoreError,
};
use crate::{GroupCount, JobFilter, Rerouted};

mod claim_sql;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

use claim_sql::ClaimTx;
use rows::{read_instance, read_job};
use schema::user_version;
pub use schema::SCHEMA_VERSION;

/// How long an operation waits for another process's write lock before failing, unless
/// [`set_busy_timeout`] says otherwise.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The busy timeout of this process's connections, in µs (see [`set_busy_timeout`]).
static BUSY_LIMIT_US: AtomicU64 = AtomicU64::new(BUSY_TIMEOUT.as_micros() as u64);

/// How long every SQLite call of this process waits for another's write lock before it
/// fails with "database is locked" (5 s unless set): the supervisor's loop and its
/// grabber wait less, so that a store locked for long (by hand, or a huge `submit`)
/// makes their calls fail and be tried again later rather than hold them up, unable to
/// answer their children or their heartbeats.
pub fn set_busy_timeout(limit: Duration) {
    let us = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
    BUSY_LIMIT_US.store(us, Ordering::Relaxed);
}

/// Jobs whose time has come become claimable: due retries are queued again, and queued
/// jobs delayed until now lose their `not_before` (which keeps them out of the claimable
/// index until then).
const MATERIALISE_RETRIES: &str = "UPDATE jobs SET not_before = NULL, \
     state = 'queued' \
     WHERE state IN ('failed', 'timed_out', 'queued') AND not_before <= ?1";

/// Busy handler: retry after 20 µs at first, then 200 µs, and give up once the busy
/// timeout has passed since the first try (measured: a sleep takes longer than asked).
fn short_waits(tries: i32) -> bool {
    thread_local! {
        static SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let since = SINCE.with(|s| {
        if tries == 0 || s.get().is_none() {
            s.set(Some(now));
        }
        s.get().unwrap_or(now)
    });
    let limit = Duration::from_micros(BUSY_LIMIT_US.load(Ordering::Relaxed));
    if now.saturating_duration_since(since) >= limit {
        return false;
    }
    let step = if tries < 100 { 20 } else { 200 };
    std::thread::sleep(Duration::from_micros(step));
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
    /// Sets WAL mode, `synchronous=NORMAL`, the busy timeout ([`set_busy_timeout`]) and foreign keys. Fails with
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
        // A job canceled because its dependency failed cancels its own dependents in
        // turn (the `dependency_failed` trigger firing again).
        conn.pragma_update(None, "recursive_triggers", true)
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Plans that do not depend on the values bound. Without it, a query whose terms
        // hold parameters and that may use a partial index (the claimable index) is
        // marked to be compiled again whenever a parameter's value changes, so every
        // claim parsed and planned its statements anew: a third of the grabber's CPU.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(open_err)?;
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
            "SELECT 1 FROM jobs WHERE state IN ('failed', 'timed_out', 'queued') \
             AND not_before <= ?1 LIMIT 1",
        )
        .and_then(|mut stmt| stmt.exists([now]))
        .ctx("look for due retries")?;
    if due {
        materialise(conn, now)?;
    }
    Ok(())
}

/// [`JobStore::record_outcome`] of `o`, on `conn` (in its transaction, if one is open).
fn record_outcome(conn: &Connection, o: &Settle) -> Result<Settled> {
    let (state, not_before) = outcome_state(o.job, &o.outcome, o.next)?;
    // One statement: a retry becomes `canceled` if a cancel was requested, decided on
    // the row as it is when the write lock is held.
    let now: Option<String> = conn
        .prepare_cached(&RECORD_OUTCOME)
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    state.as_str(),
                    not_before,
                    o.outcome.exit_code,
                    o.outcome.signal,
                    o.outcome.kind.as_str(),
                    o.at,
                    o.job,
                    o.attempt,
                    o.owner,
                    o.outcome.start_error,
                    o.outcome.reason
                ],
                |row| row.get(0),
            )
            .optional()
        })
        .ctx("record an outcome")?;
    Ok(settled(state, now.as_deref()))
}

/// A write transaction (`BEGIN IMMEDIATE`), begun and ended by cached statements:
/// rusqlite's `Transaction` parses `BEGIN` and `COMMIT` anew each time, which was a fifth
/// of a claim's CPU. Rolled back when dropped uncommitted.
struct WriteTx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> WriteTx<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<WriteTx<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(WriteTx { conn, open: true })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // Uncommitted (an error on the way, or a failed COMMIT): undone, as rusqlite's
        // own transaction does.
        if self.open && !self.conn.is_autocommit() {
            let _ = (self.conn.prepare_cached("ROLLBACK")).and_then(|mut stmt| stmt.execute([]));
        }
    }
}

/// Serialises a value stored as JSON text.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("strings, vectors and string maps always serialise")
}

/// The [statements both stores run](crate::sql), in SQLite's placeholders.
static TAKE_BACK_ALL: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::TAKE_BACK_ALL));
static RELEASE: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::RELEASE));
static TAKE_BACK_ORPHANS: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::TAKE_BACK_ORPHANS));
static RECORD_OUTCOME: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::RECORD_OUTCOME));
static REQUEST_CANCEL: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::REQUEST_CANCEL));
static CANCEL_WAITING: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::CANCEL_WAITING));
static RETRY: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::RETRY));
static PAUSE: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::PAUSE));
static RESUME: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::RESUME));
static PLACE: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::PLACE));
static AHEAD: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::AHEAD));
static WAITING_ON: LazyLock<String> = LazyLock::new(|| for_sqlite(sql::WAITING_ON));

/// Takes back the running jobs of `instance`: queued again without using up an attempt,
/// or canceled at `now` if a cancel was requested. Returns their ids.
fn take_back(conn: &Connection, instance: InstanceId, now: f64) -> Result<Vec<JobId>> {
    let mut ids = conn
        .prepare_cached(&TAKE_BACK_ALL)
        .and_then(|mut stmt| {
            stmt.query_map(params![instance, now], |row| row.get::<_, JobId>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("take back an instance's jobs")?;
    ids.sort_unstable();
    Ok(ids)
}

/// Takes back the running jobs of dead owner `owner` (see `sql::TAKE_BACK_ORPHANS`);
/// their ids.
fn take_back_orphans(conn: &Connection, owner: InstanceId, now: f64) -> Result<Vec<JobId>> {
    conn.prepare_cached(&TAKE_BACK_ORPHANS)
        .and_then(|mut stmt| {
            stmt.query_map(
                params![
                    owner,
                    now,
                    crate::quarantine_reason(),
                    crate::SUPERVISOR_DEATHS
                ],
                |row| row.get::<_, JobId>(0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("requeue orphans")
}

/// What a new job's dependencies mean for it (see [`AfterPlan`]), as the store has them.
fn after_plan(conn: &Connection, after: &[JobId]) -> std::result::Result<AfterPlan, String> {
    let mut deps = Vec::with_capacity(after.len());
    for &id in after {
        let found: Option<(String, Option<f64>)> = conn
            .prepare_cached("SELECT state, not_before FROM jobs WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(|e| format!("after: job {id}: {e}"))?;
        let found = found.and_then(|(state, nb)| state.parse().ok().map(|s| (s, nb)));
        deps.push((id, found));
    }
    AfterPlan::of(&deps)
}

impl PlaceSql for SqliteStore {
    fn place_row(&mut self, id: JobId) -> Result<Option<PlaceRow>> {
        self.conn
            .prepare_cached(&PLACE)
            .and_then(|mut stmt| {
                stmt.query_row([id], |r| {
                    Ok(PlaceRow {
                        route: r.get(0)?,
                        routed: r.get::<_, i64>(1)? != 0,
                        priority: r.get(2)?,
                        waiting: r.get(3)?,
                    })
                })
                .optional()
            })
            .ctx("look at a queued job")
    }

    fn ahead(&mut self, group: &str, priority: i64, id: JobId, now: f64) -> Result<i64> {
        self.conn
            .prepare_cached(&AHEAD)
            .and_then(|mut stmt| stmt.query_row(params![group, priority, id, now], |r| r.get(0)))
            .ctx("count the jobs ahead")
    }

    fn waiting_on(&mut self, id: JobId) -> Result<Vec<JobId>> {
        self.conn
            .prepare_cached(&WAITING_ON)
            .and_then(|mut stmt| stmt.query_map([id], |r| r.get(0))?.collect())
            .ctx("look at a job's dependencies")
    }
}

impl JobStore for SqliteStore {
    fn submit(&mut self, jobs: &[NewJob], now: f64) -> Result<Vec<JobId>> {
        for (index, job) in jobs.iter().enumerate() {
            job.validate()
                .map_err(|message| StoreError::InvalidJob { index, message })?;
        }
        let tx = WriteTx::begin(&self.conn).ctx("submit")?;
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
                     max_attempts, idem_key, created_at, route, routed, priority, not_before, \
                     after_ids, waiting_on, reason, finished_at, last_outcome) \
                     VALUES (CASE WHEN ?14 IS NULL THEN 'queued' ELSE 'canceled' END, \
                     ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?1, ?1 IS NOT NULL, ?10, ?11, ?12, ?13, \
                     ?14, CASE WHEN ?14 IS NULL THEN NULL ELSE ?9 END, \
                     CASE WHEN ?14 IS NULL THEN NULL ELSE 'canceled' END)",
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
                let plan =
                    after_plan(&tx, &job.after).map_err(|message| StoreError::InvalidJob {
                        index: ids.len(),
                        message,
                    })?;
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
                        job.priority,
                        job.not_before,
                        (!job.after.is_empty()).then(|| to_json(&job.after)),
                        plan.waiting_on.len() as i64,
                        plan.doomed,
                    ])
                    .ctx("submit")?;
                // Every dependency, not only those it waits on: one that ended otherwise
                // must still be found by a retry of this job (and kept from purge).
                for dep in &job.after {
                    tx.prepare_cached("INSERT OR IGNORE INTO job_deps (job, dep) VALUES (?1, ?2)")
                        .and_then(|mut stmt| stmt.execute(params![id, dep]))
                        .ctx("submit: note a dependency")?;
                }
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
        let tx = WriteTx::begin(&self.conn).ctx("unregister an instance")?;
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
            .and_then(|mut stmt| stmt.query_map([], read_instance)?.collect())
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
        // Running jobs whose owner has no row (deleted by hand: SQLite keeps foreign
        // keys only when asked) would wait for a death no one can judge: their owner
        // is as dead as can be.
        let ownerless: Vec<InstanceId> = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT owner FROM jobs WHERE state = 'running' \
                 AND owner NOT IN (SELECT id FROM instances)",
            )
            .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
            .ctx("requeue orphans")?;
        if dead.is_empty() && ownerless.is_empty() {
            return Ok(Vec::new());
        }
        let tx = WriteTx::begin(&self.conn).ctx("requeue orphans")?;
        let mut ids = Vec::new();
        for owner in ownerless {
            let taken = take_back_orphans(&tx, owner, now)?;
            ids.extend(taken);
        }
        for instance in dead {
            // Only as it was judged: one that was touched since is alive.
            let unchanged = tx
                .prepare_cached("SELECT 1 FROM instances WHERE id = ?1 AND last_seen = ?2")
                .and_then(|mut stmt| stmt.exists(params![instance.id, instance.last_seen]))
                .ctx("requeue orphans")?;
            if !unchanged {
                continue;
            }
            let taken = take_back_orphans(&tx, instance.id, now)?;
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
        (self.settle_and_claim(&[], me, routes, credits, now)).map(|(_, claimed)| claimed)
    }

    fn settle(&mut self, outcomes: &[Settle]) -> Result<Vec<Settled>> {
        let tx = WriteTx::begin(&self.conn).ctx("record outcomes")?;
        let stored = outcomes
            .iter()
            .map(|o| record_outcome(&tx, o))
            .collect::<Result<Vec<Settled>>>()?;
        tx.commit().ctx("record outcomes")?;
        Ok(stored)
    }

    fn settle_and_claim(
        &mut self,
        outcomes: &[Settle],
        me: InstanceId,
        routes: &[Route],
        credits: &mut BTreeMap<String, u32>,
        now: f64,
    ) -> Result<(Vec<Settled>, ClaimResult)> {
        let tx = WriteTx::begin(&self.conn).ctx("claim")?;
        let stored = outcomes
            .iter()
            .map(|o| record_outcome(&tx, o))
            .collect::<Result<Vec<Settled>>>()?;
        materialise(&tx, now)?;
        let result = claim::claim(&mut ClaimTx::new(&tx), me, routes, credits, now)?;
        tx.commit().ctx("claim")?;
        Ok((stored, result))
    }

    fn purge(&mut self, before: f64, state: Option<JobState>, limit: u32) -> Result<Vec<JobId>> {
        let op = "purge finished jobs";
        let sql = for_sqlite(&sql::purge(state.is_some()));
        let mut stmt = self.conn.prepare_cached(&sql).ctx(op)?;
        let ids = match state {
            Some(s) => stmt
                .query_map(params![before, limit, s.as_str()], |row| row.get(0))
                .and_then(Iterator::collect),
            None => stmt
                .query_map(params![before, limit], |row| row.get(0))
                .and_then(Iterator::collect),
        };
        ids.ctx(op)
    }

    fn retry(&mut self, id: JobId, now: f64) -> Result<bool> {
        self.conn
            .prepare_cached(&RETRY)
            .and_then(|mut stmt| stmt.exists(params![id, now]))
            .ctx("retry a job")
    }

    fn pause(&mut self, groups: &[String], now: f64) -> Result<()> {
        let op = "pause groups";
        let tx = WriteTx::begin(&self.conn).ctx(op)?;
        for g in groups {
            tx.prepare_cached(&PAUSE)
                .and_then(|mut stmt| stmt.execute(params![g, now]))
                .ctx(op)?;
        }
        tx.commit().ctx(op)
    }

    fn resume(&mut self, groups: Option<&[String]>) -> Result<()> {
        let op = "resume groups";
        let tx = WriteTx::begin(&self.conn).ctx(op)?;
        match groups {
            Some(groups) => {
                for g in groups {
                    tx.prepare_cached(&RESUME)
                        .and_then(|mut stmt| stmt.execute([g]))
                        .ctx(op)?;
                }
            }
            None => {
                tx.execute("DELETE FROM paused_groups", []).ctx(op)?;
            }
        }
        tx.commit().ctx(op)
    }

    fn paused(&mut self) -> Result<Vec<String>> {
        self.conn
            .prepare_cached(sql::PAUSED)
            .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
            .ctx("look for paused groups")
    }

    fn place(&mut self, id: JobId, now: f64) -> Result<Option<QueuePlace>> {
        crate::place(self, id, now)
    }

    fn purge_finished(
        &mut self,
        finished_before: Option<f64>,
        keep: Option<u64>,
        limit: u32,
    ) -> Result<Vec<JobId>> {
        let op = "delete finished jobs";
        let tx = WriteTx::begin(&self.conn).ctx(op)?;
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
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {PURGEABLE} \
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
                        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {PURGEABLE} \
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

    fn reroute_from(&mut self, routes: &[Route], after: JobId, limit: u32) -> Result<Rerouted> {
        let tx = WriteTx::begin(&self.conn).ctx("reroute")?;
        let done = claim::reroute(&mut ClaimTx::new(&tx), routes, after, limit)?;
        tx.commit().ctx("reroute")?;
        Ok(done)
    }

    fn record_outcome(
        &mut self,
        id: JobId,
        attempt: u32,
        owner: InstanceId,
        outcome: &OutcomeRecord,
        next: AfterAttempt,
        now: f64,
    ) -> Result<bool> {
        let settle = Settle {
            job: id,
            attempt,
            owner,
            outcome: outcome.clone(),
            next,
            at: now,
        };
        record_outcome(&self.conn, &settle).map(Settled::stored)
    }

    fn release(&mut self, id: JobId, attempt: u32, owner: InstanceId, now: f64) -> Result<bool> {
        self.conn
            .prepare_cached(&RELEASE)
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
        let tx = WriteTx::begin(&self.conn).ctx("release strays")?;
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
                .prepare_cached(&RELEASE)
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
        let tx = WriteTx::begin(&self.conn).ctx("cancel")?;
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
        let result = cancel_step(parse_state(id, &state)?, not_before);
        match result {
            CancelResult::Requested => {
                tx.prepare_cached(&REQUEST_CANCEL)
                    .and_then(|mut stmt| stmt.execute([id]))
                    .ctx("cancel")?;
            }
            CancelResult::Canceled => {
                tx.prepare_cached(&CANCEL_WAITING)
                    .and_then(|mut stmt| stmt.execute(params![id, now]))
                    .ctx("cancel")?;
            }
            CancelResult::AlreadyFinished(_) | CancelResult::Unknown => {}
        }
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
        let rows: Vec<(String, i64)> = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .ctx("count jobs")?;
        state_counts(rows)
    }

    fn list_newest(&mut self, filter: &JobFilter, now: f64) -> Result<Vec<Job>> {
        let op = "list jobs";
        materialise_if_due(&self.conn, now)?;
        let mut stmt = self
            .conn
            .prepare_cached(&for_sqlite(&sql::list_newest()))
            .ctx(op)?;
        let mut rows = stmt
            .query(params![
                filter.state.map(JobState::as_str),
                filter.group,
                filter.outcome,
                i64::from(filter.limit)
            ])
            .ctx(op)?;
        let mut jobs = Vec::new();
        while let Some(row) = rows.next().ctx(op)? {
            jobs.push(read_job(row)?);
        }
        jobs.reverse();
        Ok(jobs)
    }

    fn counts_by_group(&mut self, now: f64) -> Result<Vec<GroupCount>> {
        materialise_if_due(&self.conn, now)?;
        let rows: Vec<(String, Option<String>, i64)> = self
            .conn
            .prepare_cached(sql::COUNTS_BY_GROUP)
            .and_then(|mut stmt| {
                stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                    .collect()
            })
            .ctx("count jobs by group")?;
        group_counts(rows)
    }
}
