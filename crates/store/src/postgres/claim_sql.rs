//! The PostgreSQL store's claim: the SQL behind [`ClaimSql`], every group's claim in one
//! statement, each group's queue an index range scan on `(route, id)`.

use std::collections::BTreeMap;

use postgres::types::Json;
use postgres::Row;

use super::rows::stored_run;
use super::statements::{execute, query, Statements};
use crate::claim::{Candidate, ClaimSql, ToRoute};
use crate::error::Context;
use crate::sql::PAUSED;
use crate::{ClaimedRun, InstanceId, JobId, Result};

/// Planner methods a claim turns off (`SET LOCAL`, for its transaction only), leaving it
/// the partial indexes: statistics that are missing (a new table) or stale (gathered
/// when few jobs were queued) would otherwise make it sort every queued job, or scan the
/// whole history, at each claim.
///
/// Hash and merge joins are off too: a generic plan cannot know how many rows a claim
/// asks for (`LIMIT want.n`), guesses a tenth of the queue, and then joins the picked
/// rows to `jobs` by hashing the whole table (25 ms a claim at 100,000 jobs, measured),
/// where a nested loop on the primary key touches only the rows picked.
pub(super) const CLAIM_PLANNER: &str = "SET LOCAL enable_seqscan = off; \
     SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Jobs whose group is not decided yet, oldest first, at most `$1`; rows another claimer
/// holds are left to it.
pub(super) const UNROUTED: &str = "SELECT id, named_group, tags FROM jobs WHERE NOT routed \
     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Sets the route of the jobs `$1` to the groups `$2` (NULL: none).
pub(super) const SET_ROUTES: &str = "UPDATE jobs SET route = u.route, routed = TRUE \
     FROM unnest($1::bigint[], $2::text[]) AS u (id, route) WHERE jobs.id = u.id";

/// The claim, in one statement: for each group `$3[i]`, its first `$4[i]` runnable queued jobs in
/// id order (an index range scan on (route, id) per group, skipping rows another claimer holds),
/// marked running under owner `$1` at `$2`. Returns, per job, its id, group, and the columns
/// [`stored_run`](super::rows::stored_run) reads (attempts as before the claim).
pub(super) const CLAIM: &str = "WITH want AS (\
         SELECT g, n FROM unnest($3::text[], $4::bigint[]) AS w (g, n)), \
     picked AS (\
         SELECT j.id, want.g FROM want CROSS JOIN LATERAL (\
             SELECT id FROM jobs WHERE state = 'queued' AND waiting_on = 0 \
             AND route = want.g \
             AND not_before IS NULL \
             ORDER BY priority DESC, id LIMIT want.n FOR UPDATE SKIP LOCKED) j) \
     UPDATE jobs SET state = 'running', owner = $1, attempts = attempts + 1, \
         started_at = $2, finished_at = NULL, exit_code = NULL, signal = NULL, \
         not_before = NULL, run_group = picked.g, start_error = NULL \
     FROM picked WHERE jobs.id = picked.id \
     RETURNING jobs.id, picked.g, NULL::text, jobs.command, jobs.env, jobs.cwd, \
         jobs.timeout_s, jobs.max_attempts, jobs.attempts - 1";

/// What is left for the groups `$2`: a runnable job (at `$1`), and the earliest time a
/// waiting one becomes runnable.
pub(super) const BACKLOG: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' \
         AND waiting_on = 0 AND route = ANY($2::text[]) AND not_before IS NULL), \
     (SELECT MIN(not_before) FROM jobs WHERE not_before IS NOT NULL \
         AND ((state = 'queued' AND not_before > $1) OR state IN ('failed', 'timed_out')) \
         AND route = ANY($2::text[]))";

/// The jobs queued or waiting for a retry, with their group now, locked.
const LIVE_ROUTES: &str = "SELECT id, named_group, tags, route FROM jobs WHERE id > $1 \
     AND (state = 'queued' OR (not_before IS NOT NULL AND state IN ('failed', 'timed_out'))) \
     ORDER BY id LIMIT $2 FOR UPDATE";

/// A job as routing reads it, from a row of `id, named_group, tags`, routed to `route`.
fn to_route(row: &Row, route: Option<String>, op: &'static str) -> Result<ToRoute> {
    Ok(ToRoute {
        id: row.try_get(0).ctx(op)?,
        named: row.try_get(1).ok().flatten(),
        // Damaged tags are no tags.
        tags: row
            .try_get::<_, Json<BTreeMap<String, String>>>(2)
            .map(|Json(t)| t)
            .unwrap_or_default(),
        route,
    })
}

/// A claim's (or a reroute's) SQL, inside its transaction: the candidates of every group
/// are picked and marked running in one statement ([`CLAIM`]).
pub(super) struct ClaimTx<'a, 'b> {
    pub(super) stmts: &'a mut Statements,
    pub(super) tx: &'a mut postgres::Transaction<'b>,
}

impl ClaimSql for ClaimTx<'_, '_> {
    fn unrouted(&mut self, limit: i64) -> Result<Vec<ToRoute>> {
        let op = "route new jobs";
        let rows = query(self.stmts, self.tx, UNROUTED, &[&limit], op)?;
        rows.iter().map(|row| to_route(row, None, op)).collect()
    }

    fn live(&mut self, after: JobId, limit: u32) -> Result<Vec<ToRoute>> {
        let op = "reroute";
        let limit = i64::from(limit);
        let rows = query(self.stmts, self.tx, LIVE_ROUTES, &[&after, &limit], op)?;
        rows.iter()
            .map(|row| to_route(row, row.try_get(3).ok().flatten(), op))
            .collect()
    }

    fn set_routes(&mut self, routes: &[(JobId, Option<String>)], op: &'static str) -> Result<()> {
        let (ids, groups): (Vec<JobId>, Vec<Option<String>>) = routes.iter().cloned().unzip();
        execute(self.stmts, self.tx, SET_ROUTES, &[&ids, &groups], op).map(|_| ())
    }

    fn pick(&mut self, me: InstanceId, want: &[(&str, u32)], now: f64) -> Result<Vec<Candidate>> {
        let (groups, limits): (Vec<&str>, Vec<i64>) =
            want.iter().map(|(g, n)| (*g, i64::from(*n))).unzip();
        let rows = query(
            self.stmts,
            self.tx,
            CLAIM,
            &[&me, &now, &groups, &limits],
            "claim",
        )?;
        rows.iter()
            .map(|row| {
                Ok(Candidate {
                    id: row.try_get(0).ctx("claim: read a job")?,
                    group: row.try_get(1).ctx("claim: read a job")?,
                    run: stored_run(row),
                })
            })
            .collect()
    }

    fn start(&mut self, _me: InstanceId, _job: &ClaimedRun, _now: f64) -> Result<bool> {
        Ok(true) // CLAIM did
    }

    fn refuse(&mut self, id: JobId, reason: &str, now: f64) -> Result<()> {
        execute(
            self.stmts,
            self.tx,
            "UPDATE jobs SET state = 'dead', reason = $2, finished_at = $3, \
             not_before = NULL, owner = NULL, attempts = attempts - 1 \
             WHERE id = $1 AND state = 'running'",
            &[&id, &reason, &now],
            "end a job that cannot be run",
        )
        .map(|_| ())
    }

    fn backlog(&mut self, groups: &[&str], now: f64) -> Result<(bool, Option<f64>)> {
        let rows = query(
            self.stmts,
            self.tx,
            BACKLOG,
            &[&now, &groups],
            "claim: look for the backlog",
        )?;
        let runnable: bool = rows[0].try_get(0).ctx("claim: look for runnable jobs")?;
        let waiting: Option<f64> = rows[0].try_get(1).ctx("claim: look for waiting jobs")?;
        Ok((runnable, waiting))
    }

    fn paused(&mut self) -> Result<Vec<String>> {
        let op = "claim: look for paused groups";
        let rows = query(self.stmts, self.tx, PAUSED, &[], op)?;
        rows.iter()
            .map(|row| row.try_get::<_, String>(0).ctx(op))
            .collect()
    }
}
