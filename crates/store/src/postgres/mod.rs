//! [`PostgresStore`]: the [`JobStore`] in a PostgreSQL database, one queue shared by
//! supervisors on several hosts; [`Listener`]: their doorbell.
//!
//! The schema mirrors [`SqliteStore`](crate::SqliteStore)'s (tags, env and command are
//! JSONB) and so do the semantics, operation by operation. What differs is how claimers
//! keep out of each other's way: SQLite has one writer at a time, PostgreSQL many.
//!
//! - A claim picks and marks the jobs of every group in one statement
//!   (`claim_sql::CLAIM`: per group `SELECT ... ORDER BY id LIMIT n FOR UPDATE SKIP
//!   LOCKED` through a `LATERAL` join, then `UPDATE ... RETURNING`): two claimers never
//!   wait for each other and never see the same job, and a job another claimer has
//!   locked is simply passed over (it is that claimer's). A job's group is decided before
//!   and kept in its `route` column, as in SQLite; the [claim planner](crate::claim) is
//!   the same.
//! - Everything else that changes a job changes one row with a conditional `UPDATE`
//!   (`... WHERE state = 'running' AND attempts = $2 AND owner = $3`), which PostgreSQL
//!   re-evaluates against the row's latest version, or locks the row first.
//! - Due retries are queued again (`failed` → `queued`) with `FOR UPDATE SKIP LOCKED` too,
//!   so that two sessions doing it at once neither wait for nor deadlock each other.
//! - Idempotency keys are backed by a unique partial index. A submit first takes an
//!   advisory lock per key (in one global order, so that batches never deadlock), so two
//!   submits of one key queue behind each other and the second returns the first's job;
//!   `ON CONFLICT DO NOTHING` at the index covers anything else.
//! - `submit` and `cancel` send `NOTIFY supervisor_jobs` inside their transaction, so a
//!   [`Listener`] on any host wakes once they commit.
//!
//! Schema versions live in the table `supervisor_schema`; migrations run in one
//! transaction under `pg_advisory_xact_lock`, so that supervisors starting at once migrate
//! once. Tables go to the first schema of the connection's `search_path` (`options=-c
//! search_path=NAME` in the URL picks another).
//!
//! Connections are TCP, with TLS as the URL's `sslmode` asks, or unix sockets.
//!
//! Its rooms: `connect` (a connection with our timeouts and keepalives) and `tls`
//! (`sslmode`), `schema` (the migrations), `statements` (the prepared statements' cache),
//! `rows` (reading rows), `submit`, `claim_sql` (the SQL of the claim planner),
//! `listener`, and `tests`.

use std::collections::BTreeMap;

use postgres::{Client, GenericClient};

use supervisor_config::redact_password;

use crate::error::Context;
use crate::sql::{
    self, CANCEL_WAITING, FINISHED, JOB_COLUMNS, PURGEABLE, RECORD_OUTCOME, RELEASE,
    REQUEST_CANCEL, TAKE_BACK, TAKE_BACK_ALL, TAKE_BACK_ORPHANS,
};
use crate::{cancel_step, claim, group_counts, outcome_state, parse_state, settled, state_counts};
use crate::{
    AfterAttempt, CancelResult, ClaimResult, Instance, InstanceId, Job, JobId, JobState, JobStore,
    NewJob, OutcomeRecord, PlaceRow, PlaceSql, QueuePlace, Result, Route, StoreError,
};
use crate::{GroupCount, JobFilter, Rerouted, Settle, Settled};

mod claim_sql;
mod connect;
mod listener;
mod rows;
mod schema;
mod statements;
mod submit;
#[cfg(test)]
mod tests;
mod tls;

use claim_sql::{ClaimTx, CLAIM_PLANNER};
use connect::open_client;
pub use connect::Patience;
pub use listener::Listener;
use rows::{column, count, ids_of, read_instance, read_job};
use schema::read_schema_version;
pub use schema::PG_SCHEMA_VERSION;
use statements::{execute, query, Statements};
use submit::{is_transient, submit_in, SUBMIT_TRIES};

/// The channel that `submit` and `cancel` notify and a [`Listener`] listens on.
pub const NOTIFY_CHANNEL: &str = "supervisor_jobs";

/// Jobs whose retry time has come are queued again; rows another session has locked are
/// left to it (parameter: now).
const MATERIALISE_RETRIES: &str = "UPDATE jobs SET state = 'queued', not_before = NULL \
     WHERE id IN (SELECT id FROM jobs WHERE state IN ('failed', 'timed_out', 'queued') \
     AND not_before <= $1 FOR UPDATE SKIP LOCKED)";

/// Whether some retry is due (parameter: now).
const RETRY_DUE: &str = "SELECT EXISTS (SELECT 1 FROM jobs \
     WHERE state IN ('failed', 'timed_out', 'queued') AND not_before <= $1)";

/// The job store in a PostgreSQL database, shared by every supervisor that connects to it.
pub struct PostgresStore {
    client: Client,
    stmts: Statements,
    url: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, or
    /// `host=... dbname=...`; a `host` that is a path is a unix socket's directory) and
    /// brings its schema up to date.
    ///
    /// Waits 10 s at most for the connection unless the URL sets `connect_timeout`. Errors
    /// name the URL without its password. Fails with [`StoreError::PgSchemaTooNew`] if the
    /// database was set up by a newer version.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Patience::Normal)
    }

    /// As [`connect`](Self::connect), with the given patience for a silent server.
    pub fn connect_with(url: &str, patience: Patience) -> Result<Self> {
        let shown = redact_password(url);
        let client = open_client(url, &shown, patience)?;
        let mut store = PostgresStore {
            client,
            stmts: Statements::default(),
            url: shown,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Connects a [`Listener`] to the database at `url`: it wakes when a job is submitted
    /// or canceled through any [`PostgresStore`] on that database, from any host.
    pub fn listen(url: &str) -> Result<Listener> {
        let shown = redact_password(url);
        let mut client = open_client(url, &shown, Patience::Normal)?;
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .map_err(|source| StoreError::Connect {
                url: shown.clone(),
                source,
            })?;
        Ok(Listener { client, url: shown })
    }

    /// Whether this connection is encrypted (TLS), as the server sees it.
    pub fn is_encrypted(&mut self) -> Result<bool> {
        self.client
            .query_one(
                "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), \
                 false)",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .ctx("look at the connection")
    }

    /// The connection string, its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True once the connection is known to be lost (every operation then fails): the
    /// caller should connect again.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The schema version of the database (0 if it has none yet).
    pub fn schema_version(&mut self) -> Result<u32> {
        read_schema_version(&mut self.client)
            .ctx("read the schema version")
            .map(|v| v.unwrap_or(0))
    }
}

/// Queues the jobs whose retry time has come (inside a transaction).
fn materialise(stmts: &mut Statements, client: &mut impl GenericClient, now: f64) -> Result<()> {
    execute(
        stmts,
        client,
        MATERIALISE_RETRIES,
        &[&now],
        "queue due retries",
    )
    .map(|_| ())
}

/// [`JobStore::record_outcome`] of `o`, through `client` (in its transaction, if it is
/// one). A retry turns into `canceled` if a cancel was requested, which the UPDATE decides
/// on the row's latest version.
fn record_outcome(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    o: &Settle,
) -> Result<Settled> {
    let (state, not_before) = outcome_state(o.job, &o.outcome, o.next)?;
    let rows = query(
        stmts,
        client,
        RECORD_OUTCOME,
        &[
            &state.as_str(),
            &not_before,
            &o.outcome.exit_code,
            &o.outcome.signal,
            &o.outcome.kind.as_str(),
            &o.at,
            &o.job,
            &i64::from(o.attempt),
            &o.owner,
            &o.outcome.start_error,
            &o.outcome.reason,
        ],
        "record an outcome",
    )?;
    let now: Option<String> = match rows.first() {
        Some(row) => Some(row.try_get(0).ctx("record an outcome")?),
        None => None,
    };
    Ok(settled(state, now.as_deref()))
}

/// Like [`materialise`], but writes only if some retry is due, so that read-only commands
/// stay read-only most of the time.
fn materialise_if_due(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    now: f64,
) -> Result<()> {
    let rows = query(stmts, client, RETRY_DUE, &[&now], "look for due retries")?;
    let due: bool = rows[0].try_get(0).ctx("look for due retries")?;
    if due {
        materialise(stmts, client, now)?;
    }
    Ok(())
}

/// Takes back the running jobs of `instance` at `now`. Returns their ids, in order.
fn take_back(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    instance: InstanceId,
    now: f64,
) -> Result<Vec<JobId>> {
    let op = "take back an instance's jobs";
    let rows = query(stmts, client, TAKE_BACK_ALL, &[&instance, &now], op)?;
    ids_of(rows, op)
}

impl PlaceSql for PostgresStore {
    fn place_row(&mut self, id: JobId) -> Result<Option<PlaceRow>> {
        let op = "look at a queued job";
        let rows = query(&mut self.stmts, &mut self.client, sql::PLACE, &[&id], op)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(PlaceRow {
            route: row.try_get(0).ctx(op)?,
            routed: row.try_get::<_, i32>(1).ctx(op)? != 0,
            priority: row.try_get(2).ctx(op)?,
            waiting: row.try_get(3).ctx(op)?,
        }))
    }

    fn ahead(&mut self, group: &str, priority: i64, id: JobId, now: f64) -> Result<i64> {
        let op = "count the jobs ahead";
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            sql::AHEAD,
            &[&group, &priority, &id, &now],
            op,
        )?;
        rows[0].try_get(0).ctx(op)
    }

    fn waiting_on(&mut self, id: JobId) -> Result<Vec<JobId>> {
        let op = "look at a job's dependencies";
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            sql::WAITING_ON,
            &[&id],
            op,
        )?;
        ids_of(rows, op)
    }
}

impl JobStore for PostgresStore {
    fn connection_lost(&self) -> bool {
        self.is_closed()
    }

    fn submit(&mut self, jobs: &[NewJob], now: f64) -> Result<Vec<JobId>> {
        for (index, job) in jobs.iter().enumerate() {
            job.validate()
                .map_err(|message| StoreError::InvalidJob { index, message })?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = (|| {
                let mut tx = self.client.transaction().ctx("submit")?;
                let (ids, queued) = submit_in(&mut self.stmts, &mut tx, jobs, now)?;
                if queued {
                    tx.batch_execute(&format!("NOTIFY {NOTIFY_CHANNEL}, 'submit'"))
                        .ctx("submit: notify")?;
                }
                tx.commit().ctx("submit")?;
                Ok(ids)
            })();
            match attempt {
                Err(e) if tries < SUBMIT_TRIES && is_transient(&e) => {
                    log::info!("submit: {e}; trying again");
                }
                result => return result,
            }
        }
    }

    fn register_instance(
        &mut self,
        host: &str,
        pid: u32,
        token: &str,
        now: f64,
    ) -> Result<InstanceId> {
        let op = "register an instance";
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            "INSERT INTO instances (host, pid, token, started_at, last_seen) \
             VALUES ($1, $2, $3, $4, $4) RETURNING id",
            &[&host, &i64::from(pid), &token, &now],
            op,
        )?;
        rows[0].try_get(0).ctx(op)
    }

    fn unregister_instance(&mut self, id: InstanceId, now: f64) -> Result<Vec<JobId>> {
        let op = "unregister an instance";
        let mut tx = self.client.transaction().ctx(op)?;
        let ids = take_back(&mut self.stmts, &mut tx, id, now)?;
        execute(
            &mut self.stmts,
            &mut tx,
            "DELETE FROM instances WHERE id = $1",
            &[&id],
            op,
        )?;
        tx.commit().ctx(op)?;
        Ok(ids)
    }

    fn instances(&mut self) -> Result<Vec<Instance>> {
        query(
            &mut self.stmts,
            &mut self.client,
            "SELECT id, host, pid, token, started_at, last_seen FROM instances ORDER BY id",
            &[],
            "list instances",
        )?
        .iter()
        .map(read_instance)
        .collect()
    }

    fn touch_instance(&mut self, id: InstanceId, now: f64) -> Result<bool> {
        execute(
            &mut self.stmts,
            &mut self.client,
            "UPDATE instances SET last_seen = $2 WHERE id = $1",
            &[&id, &now],
            "touch an instance",
        )
        .map(|changed| changed == 1)
    }

    fn requeue_orphans(
        &mut self,
        me: InstanceId,
        is_dead: &dyn Fn(&Instance) -> bool,
        now: f64,
    ) -> Result<Vec<JobId>> {
        let op = "requeue orphans";
        let dead: Vec<Instance> = self
            .instances()?
            .into_iter()
            .filter(|instance| instance.id != me && is_dead(instance))
            .collect();
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.client.transaction().ctx(op)?;
        let mut ids = Vec::new();
        for instance in dead {
            // Only as it was judged: one that was touched since is alive, and one that is
            // gone was taken care of by another supervisor.
            let unchanged = query(
                &mut self.stmts,
                &mut tx,
                "SELECT 1 FROM instances WHERE id = $1 AND last_seen = $2 FOR UPDATE",
                &[&instance.id, &instance.last_seen],
                op,
            )?;
            if unchanged.is_empty() {
                continue;
            }
            let rows = query(
                &mut self.stmts,
                &mut tx,
                TAKE_BACK_ORPHANS,
                &[
                    &instance.id,
                    &now,
                    &crate::quarantine_reason(),
                    &i64::from(crate::SUPERVISOR_DEATHS),
                ],
                op,
            )?;
            ids.extend(ids_of(rows, op)?);
            execute(
                &mut self.stmts,
                &mut tx,
                "DELETE FROM instances WHERE id = $1",
                &[&instance.id],
                op,
            )?;
        }
        tx.commit().ctx(op)?;
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

    fn purge(&mut self, before: f64, state: Option<JobState>, limit: u32) -> Result<Vec<JobId>> {
        let op = "purge finished jobs";
        let limit = i64::from(limit);
        let rows = match state {
            Some(s) => query(
                &mut self.stmts,
                &mut self.client,
                &sql::purge(true),
                &[&before, &limit, &s.as_str()],
                op,
            )?,
            None => query(
                &mut self.stmts,
                &mut self.client,
                &sql::purge(false),
                &[&before, &limit],
                op,
            )?,
        };
        ids_of(rows, op)
    }

    fn retry(&mut self, id: JobId, now: f64) -> Result<bool> {
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            sql::RETRY,
            &[&id, &now],
            "retry a job",
        )?;
        Ok(!rows.is_empty())
    }

    fn pause(&mut self, groups: &[String], now: f64) -> Result<()> {
        let mut tx = self.client.transaction().ctx("pause groups")?;
        for g in groups {
            execute(
                &mut self.stmts,
                &mut tx,
                sql::PAUSE,
                &[g, &now],
                "pause a group",
            )?;
        }
        tx.commit().ctx("pause groups")
    }

    fn resume(&mut self, groups: Option<&[String]>) -> Result<()> {
        let op = "resume groups";
        let mut tx = self.client.transaction().ctx(op)?;
        match groups {
            Some(groups) => {
                for g in groups {
                    execute(&mut self.stmts, &mut tx, sql::RESUME, &[g], op)?;
                }
            }
            None => {
                execute(
                    &mut self.stmts,
                    &mut tx,
                    "DELETE FROM paused_groups",
                    &[],
                    op,
                )?;
            }
        }
        tx.commit().ctx(op)
    }

    fn paused(&mut self) -> Result<Vec<String>> {
        let op = "look for paused groups";
        let rows = query(&mut self.stmts, &mut self.client, sql::PAUSED, &[], op)?;
        rows.iter()
            .map(|row| row.try_get::<_, String>(0).ctx(op))
            .collect()
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
        let mut tx = self.client.transaction().ctx(op)?;
        let mut ids = Vec::new();
        let limit = i64::from(limit);
        if let Some(before) = finished_before {
            let rows = query(
                &mut self.stmts,
                &mut tx,
                &format!(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {PURGEABLE} \
                     AND finished_at < $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING id"
                ),
                &[&before, &limit],
                op,
            )?;
            ids.extend(ids_of(rows, op)?);
        }
        let left = limit - ids.len() as i64;
        if let (Some(keep), true) = (keep, left > 0) {
            let keep = i64::try_from(keep).unwrap_or(i64::MAX);
            let rows = query(
                &mut self.stmts,
                &mut tx,
                &format!(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {PURGEABLE} \
                     AND id <= (SELECT id FROM jobs WHERE {FINISHED} ORDER BY id DESC \
                     LIMIT 1 OFFSET $1) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING id"
                ),
                &[&keep, &left],
                op,
            )?;
            ids.extend(ids_of(rows, op)?);
        }
        tx.commit().ctx(op)?;
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn reroute_from(&mut self, routes: &[Route], after: JobId, limit: u32) -> Result<Rerouted> {
        let op = "reroute";
        let mut tx = self.client.transaction().ctx(op)?;
        // The update joins the new routes to the jobs by id: by the primary key, never
        // by a nested loop over a table without statistics yet (100,000 queued jobs
        // took minutes that way).
        tx.batch_execute(CLAIM_PLANNER).ctx(op)?;
        let mut sql = ClaimTx {
            stmts: &mut self.stmts,
            tx: &mut tx,
        };
        let done = claim::reroute(&mut sql, routes, after, limit)?;
        tx.commit().ctx(op)?;
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
        record_outcome(&mut self.stmts, &mut self.client, &settle).map(Settled::stored)
    }

    fn settle(&mut self, outcomes: &[Settle]) -> Result<Vec<Settled>> {
        let mut tx = self.client.transaction().ctx("record outcomes")?;
        let stored = (outcomes.iter())
            .map(|o| record_outcome(&mut self.stmts, &mut tx, o))
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
        let mut tx = self.client.transaction().ctx("claim")?;
        let stored = (outcomes.iter())
            .map(|o| record_outcome(&mut self.stmts, &mut tx, o))
            .collect::<Result<Vec<Settled>>>()?;
        tx.batch_execute(CLAIM_PLANNER).ctx("claim")?;
        materialise(&mut self.stmts, &mut tx, now)?;
        let mut sql = ClaimTx {
            stmts: &mut self.stmts,
            tx: &mut tx,
        };
        let result = claim::claim(&mut sql, me, routes, credits, now)?;
        tx.commit().ctx("claim")?;
        Ok((stored, result))
    }

    fn release(&mut self, id: JobId, attempt: u32, owner: InstanceId, now: f64) -> Result<bool> {
        execute(
            &mut self.stmts,
            &mut self.client,
            RELEASE,
            &[&owner, &now, &id, &i64::from(attempt)],
            "release a job",
        )
        .map(|changed| changed == 1)
    }

    fn release_strays(
        &mut self,
        owner: InstanceId,
        known: &[JobId],
        claimed_before: Option<f64>,
        now: f64,
    ) -> Result<Vec<JobId>> {
        let op = "release strays";
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            &format!(
                "{TAKE_BACK} AND NOT (id = ANY($3::bigint[])) \
                 AND ($4::float8 IS NULL OR started_at <= $4) RETURNING id"
            ),
            &[&owner, &now, &known, &claimed_before],
            op,
        )?;
        ids_of(rows, op)
    }

    fn cancel(&mut self, id: JobId, now: f64) -> Result<CancelResult> {
        let op = "cancel";
        let stmts = &mut self.stmts;
        let mut tx = self.client.transaction().ctx(op)?;
        let rows = query(
            stmts,
            &mut tx,
            "SELECT state, not_before FROM jobs WHERE id = $1 FOR UPDATE",
            &[&id],
            op,
        )?;
        let Some(row) = rows.first() else {
            return Ok(CancelResult::Unknown);
        };
        let state: String = column(row, id, 0)?;
        let not_before: Option<f64> = column(row, id, 1)?;
        let result = cancel_step(parse_state(id, &state)?, not_before);
        match result {
            CancelResult::Requested => execute(stmts, &mut tx, REQUEST_CANCEL, &[&id], op)?,
            CancelResult::Canceled => execute(stmts, &mut tx, CANCEL_WAITING, &[&id, &now], op)?,
            CancelResult::AlreadyFinished(_) | CancelResult::Unknown => return Ok(result),
        };
        tx.batch_execute(&format!("NOTIFY {NOTIFY_CHANNEL}, 'cancel'"))
            .ctx("cancel: notify")?;
        tx.commit().ctx(op)?;
        Ok(result)
    }

    fn cancel_requests(&mut self, owner: InstanceId) -> Result<Vec<(JobId, u32)>> {
        let op = "list cancel requests";
        query(
            &mut self.stmts,
            &mut self.client,
            "SELECT id, attempts FROM jobs \
             WHERE owner = $1 AND state = 'running' AND cancel_requested ORDER BY id",
            &[&owner],
            op,
        )?
        .iter()
        .map(|row| {
            let id: JobId = row.try_get(0).ctx(op)?;
            Ok((id, count(row, id, 1)?))
        })
        .collect()
    }

    fn get(&mut self, id: JobId, now: f64) -> Result<Option<Job>> {
        materialise_if_due(&mut self.stmts, &mut self.client, now)?;
        query(
            &mut self.stmts,
            &mut self.client,
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
            &[&id],
            "get a job",
        )?
        .first()
        .map(read_job)
        .transpose()
    }

    fn list(&mut self, state: Option<JobState>, now: f64) -> Result<Vec<Job>> {
        materialise_if_due(&mut self.stmts, &mut self.client, now)?;
        let rows = match state {
            Some(state) => query(
                &mut self.stmts,
                &mut self.client,
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1 ORDER BY id"),
                &[&state.as_str()],
                "list jobs",
            )?,
            None => query(
                &mut self.stmts,
                &mut self.client,
                &format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id"),
                &[],
                "list jobs",
            )?,
        };
        rows.iter().map(read_job).collect()
    }

    fn counts(&mut self, now: f64) -> Result<BTreeMap<JobState, u64>> {
        let op = "count jobs";
        materialise_if_due(&mut self.stmts, &mut self.client, now)?;
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            "SELECT state, COUNT(*) FROM jobs GROUP BY state",
            &[],
            op,
        )?;
        let rows = rows
            .iter()
            .map(|row| Ok((row.try_get(0).ctx(op)?, row.try_get(1).ctx(op)?)))
            .collect::<Result<Vec<(String, i64)>>>()?;
        state_counts(rows)
    }

    fn list_newest(&mut self, filter: &JobFilter, now: f64) -> Result<Vec<Job>> {
        materialise_if_due(&mut self.stmts, &mut self.client, now)?;
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            &sql::list_newest(),
            &[
                &filter.state.map(JobState::as_str),
                &filter.group,
                &filter.outcome,
                &i64::from(filter.limit),
            ],
            "list jobs",
        )?;
        let mut jobs = rows.iter().map(read_job).collect::<Result<Vec<Job>>>()?;
        jobs.reverse();
        Ok(jobs)
    }

    fn counts_by_group(&mut self, now: f64) -> Result<Vec<GroupCount>> {
        let op = "count jobs by group";
        materialise_if_due(&mut self.stmts, &mut self.client, now)?;
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            sql::COUNTS_BY_GROUP,
            &[],
            op,
        )?;
        let rows = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get(0).ctx(op)?,
                    row.try_get(1).ctx(op)?,
                    row.try_get(2).ctx(op)?,
                ))
            })
            .collect::<Result<Vec<(String, Option<String>, i64)>>>()?;
        group_counts(rows)
    }
}
