//! The PostgreSQL store's submit: batches inserted in one statement, idempotency keys
//! under advisory locks in one global order, and the retry of a transaction PostgreSQL
//! aborted.

use std::collections::BTreeMap;

use postgres::error::SqlState;
use postgres::types::Json;
use postgres::GenericClient;

use super::rows::ids_of;
use super::statements::{execute, query, Statements};
use crate::error::Context;
use crate::{AfterPlan, DepState, JobId, JobState, NewJob, Result, StoreError};

/// The advisory lock class of idempotency keys (`pg_advisory_xact_lock(class, hash)`):
/// "sv" in ASCII.
const KEY_LOCK_CLASS: i32 = 0x7376;

/// How many times `submit` is tried when PostgreSQL aborts it to break a deadlock (which
/// the key locks should rule out), and how many times a key is looked up and inserted
/// when another submit of it wins the race.
pub(super) const SUBMIT_TRIES: u32 = 5;

/// The predicate of `jobs_live_key`: a job that is not finished.
const LIVE: &str = "(state IN ('queued', 'running') \
     OR (state IN ('failed', 'timed_out') AND not_before IS NOT NULL))";

/// Whether PostgreSQL aborted a transaction that may simply be tried again.
pub(super) fn is_transient(error: &StoreError) -> bool {
    let source = match error {
        StoreError::Postgres { source, .. } => source,
        _ => return false,
    };
    matches!(
        source.code(),
        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Inserts `jobs` (no keys among them) in one statement, with ids taken in order from the
/// sequence. Returns their ids, in order.
fn insert_unkeyed(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    jobs: &[&NewJob],
    now: f64,
) -> Result<Vec<JobId>> {
    let op = "submit";
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let n = jobs.len() as i64;
    let rows = query(
        stmts,
        client,
        "SELECT nextval(pg_get_serial_sequence('jobs', 'id')) FROM generate_series(1, $1::bigint)",
        &[&n],
        op,
    )?;
    let ids = ids_of(rows, op)?;
    let groups: Vec<Option<&str>> = jobs.iter().map(|j| j.group.as_deref()).collect();
    let commands: Vec<Json<&Vec<String>>> = jobs.iter().map(|j| Json(&j.command)).collect();
    let tags: Vec<Json<&BTreeMap<String, String>>> = jobs.iter().map(|j| Json(&j.tags)).collect();
    let envs: Vec<Json<&BTreeMap<String, String>>> = jobs.iter().map(|j| Json(&j.env)).collect();
    let cwds: Vec<Option<&str>> = jobs.iter().map(|j| j.cwd.as_deref()).collect();
    let timeouts: Vec<Option<f64>> = jobs.iter().map(|j| j.timeout_s).collect();
    let max_attempts: Vec<Option<i64>> =
        jobs.iter().map(|j| j.max_attempts.map(i64::from)).collect();
    let priorities: Vec<i64> = jobs.iter().map(|j| j.priority).collect();
    let not_befores: Vec<Option<f64>> = jobs.iter().map(|j| j.not_before).collect();
    let inserted = execute(
        stmts,
        client,
        "INSERT INTO jobs (id, state, named_group, command, tags, env, cwd, timeout_s, \
             max_attempts, created_at, route, routed, priority, not_before) \
         SELECT u.id, 'queued', u.named_group, u.command, u.tags, u.env, u.cwd, u.timeout_s, \
             u.max_attempts, $9, u.named_group, u.named_group IS NOT NULL, u.priority, \
             u.not_before \
         FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[], \
             $6::text[], $7::float8[], $8::bigint[], $10::bigint[], $11::float8[]) \
             AS u (id, named_group, command, tags, env, cwd, timeout_s, max_attempts, \
             priority, not_before)",
        &[
            &ids,
            &groups,
            &commands,
            &tags,
            &envs,
            &cwds,
            &timeouts,
            &max_attempts,
            &now,
            &priorities,
            &not_befores,
        ],
        op,
    )?;
    if inserted != n as u64 {
        return Err(StoreError::Corrupt(format!(
            "submit inserted {inserted} of {n} jobs"
        )));
    }
    Ok(ids)
}

/// The advisory lock of an idempotency key: its FNV-1a hash, the same on every host and
/// in every version (a change would only let two versions' submits deadlock, which the
/// retry handles).
fn key_lock(key: &str) -> i32 {
    let hash = key.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash as i32
}

/// One try of [`JobStore::submit`], inside a transaction. Returns the ids and whether a
/// job was queued.
pub(super) fn submit_in(
    stmts: &mut Statements,
    tx: &mut postgres::Transaction<'_>,
    jobs: &[NewJob],
    now: f64,
) -> Result<(Vec<JobId>, bool)> {
    // Submits of the same keys take them in one order (of their hashes), so that two
    // batches holding keys in opposite orders queue behind each other rather than
    // deadlock at the unique index.
    let mut locks: Vec<i32> = jobs
        .iter()
        .filter_map(|job| job.key.as_deref())
        .map(key_lock)
        .collect();
    locks.sort_unstable();
    locks.dedup();
    if !locks.is_empty() {
        execute(
            stmts,
            tx,
            "SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k",
            &[&KEY_LOCK_CLASS, &locks],
            "submit: lock keys",
        )?;
    }
    let mut ids = Vec::with_capacity(jobs.len());
    let mut queued = false;
    let mut pending: Vec<&NewJob> = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        if job.key.is_none() && job.after.is_empty() {
            pending.push(job);
            continue;
        }
        // Jobs before this one first, so that ids follow the batch's order.
        queued |= !pending.is_empty();
        ids.extend(insert_unkeyed(stmts, tx, &pending, now)?);
        pending.clear();
        let (id, new) = submit_one(stmts, tx, index, job, now)?;
        queued |= new;
        ids.push(id);
    }
    queued |= !pending.is_empty();
    ids.extend(insert_unkeyed(stmts, tx, &pending, now)?);
    Ok((ids, queued))
}

/// Queues one job that has a key or runs after others, or finds the live job that has its
/// key. The dependencies' rows are locked (`FOR SHARE`) until this commits, so that none
/// ends unseen in between: the trigger that counts them down, or cancels this job, sees
/// its `job_deps` rows. A concurrent submit of the same key may win the insert (the key
/// locks rule it out between versions that take them); its job is then found by the next
/// look-up, or, if it finished meanwhile, the key is free again.
fn submit_one(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    index: usize,
    job: &NewJob,
    now: f64,
) -> Result<(JobId, bool)> {
    let op = "submit";
    let find = format!("SELECT id FROM jobs WHERE idem_key = $1 AND {LIVE} LIMIT 1");
    let insert = format!(
        "INSERT INTO jobs (state, named_group, command, tags, env, cwd, timeout_s, \
             max_attempts, idem_key, created_at, route, routed, priority, not_before, \
             after_ids, waiting_on, reason, finished_at, last_outcome) \
         VALUES (CASE WHEN $14::text IS NULL THEN 'queued' ELSE 'canceled' END, \
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $1, $1::text IS NOT NULL, $10, $11, $12, $13, \
             $14, CASE WHEN $14::text IS NULL THEN NULL ELSE $9::float8 END, \
             CASE WHEN $14::text IS NULL THEN NULL ELSE 'canceled' END) \
         ON CONFLICT (idem_key) WHERE idem_key IS NOT NULL AND {LIVE} DO NOTHING \
         RETURNING id"
    );
    for _ in 0..SUBMIT_TRIES {
        if let Some(key) = &job.key {
            if let Some(row) = query(stmts, client, &find, &[key], op)?.first() {
                return Ok((row.try_get(0).ctx(op)?, false));
            }
        }
        let plan = after_plan(stmts, client, index, job)?;
        let after = (!job.after.is_empty()).then_some(Json(&job.after));
        let waiting = plan.waiting_on.len() as i64;
        let rows = query(
            stmts,
            client,
            &insert,
            &[
                &job.group,
                &Json(&job.command),
                &Json(&job.tags),
                &Json(&job.env),
                &job.cwd,
                &job.timeout_s,
                &job.max_attempts.map(i64::from),
                &job.key,
                &now,
                &job.priority,
                &job.not_before,
                &after,
                &waiting,
                &plan.doomed,
            ],
            op,
        )?;
        let Some(row) = rows.first() else {
            continue; // the key was taken meanwhile: look it up again
        };
        let id: JobId = row.try_get(0).ctx(op)?;
        // Every dependency, not only those it waits on: one that ended otherwise must
        // still be found by a retry of this job (and kept from purge).
        if !job.after.is_empty() {
            execute(
                stmts,
                client,
                "INSERT INTO job_deps (job, dep) SELECT $1, d FROM unnest($2::bigint[]) AS d \
                 ON CONFLICT DO NOTHING",
                &[&id, &job.after],
                "submit: note the dependencies",
            )?;
        }
        return Ok((id, true));
    }
    Err(StoreError::InvalidArgument(format!(
        "submit: the idempotency key {:?} is contended: try again",
        job.key.as_deref().unwrap_or_default()
    )))
}

/// What a new job's dependencies mean for it, as the store has them now (their rows
/// locked until the submit commits).
fn after_plan(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    index: usize,
    job: &NewJob,
) -> Result<AfterPlan> {
    if job.after.is_empty() {
        return Ok(AfterPlan::default());
    }
    let op = "submit";
    let rows = query(
        stmts,
        client,
        "SELECT id, state, not_before FROM jobs WHERE id = ANY($1) ORDER BY id FOR SHARE",
        &[&job.after],
        op,
    )?;
    let mut found: BTreeMap<JobId, (JobState, Option<f64>)> = BTreeMap::new();
    for row in &rows {
        let id: JobId = row.try_get(0).ctx(op)?;
        let state: String = row.try_get(1).ctx(op)?;
        if let Ok(state) = state.parse() {
            found.insert(id, (state, row.try_get(2).ctx(op)?));
        }
    }
    let deps: Vec<(JobId, DepState)> = job
        .after
        .iter()
        .map(|id| (*id, found.get(id).copied()))
        .collect();
    AfterPlan::of(&deps).map_err(|message| StoreError::InvalidJob { index, message })
}
