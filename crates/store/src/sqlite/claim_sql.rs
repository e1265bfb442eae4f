//! The SQLite store's claim: the SQL behind [`ClaimSql`], each group's queue an index range
//! scan on `(route, priority DESC, id)` over the claimable jobs (queued, waiting on no
//! dependency).

use std::collections::BTreeMap;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection};

use super::rows::{stored_json, stored_run};
use crate::claim::{Candidate, ClaimSql, ToRoute};
use crate::error::Context;
use crate::{ClaimedRun, InstanceId, JobId, Result};

/// Claimable jobs of group `?1` after (priority `?4`, id `?2`), highest priority first then
/// in id order, at most `?3`: an index range scan on (route, priority DESC, id) of the
/// claimable index (queued, waiting on no dependency, not delayed: the claim cleared the
/// `not_before` of those due). Columns as [`stored_run`](super::rows::stored_run) reads
/// them, then the priority.
pub(super) const CANDIDATES: &str = "SELECT id, NULL, NULL, command, env, cwd, timeout_s, \
     max_attempts, attempts, priority FROM jobs \
     WHERE state = 'queued' AND waiting_on = 0 AND not_before IS NULL AND route = ?1 \
     AND (priority < ?4 OR (priority = ?4 AND id > ?2)) \
     ORDER BY priority DESC, id LIMIT ?3";

/// Jobs whose group is not decided yet, oldest first, at most `?1`.
pub(super) const UNROUTED: &str = "SELECT id, named_group, tags FROM jobs WHERE routed = 0 \
     ORDER BY id LIMIT ?1";

/// `?1`, `?2`, ... for `n` values, after `first - 1` others.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a job routed to one of the `n` groups `?1`... is claimable now (the claim
/// cleared the `not_before` of those due).
pub(super) fn runnable_sql(n: usize) -> String {
    format!(
        "SELECT 1 FROM jobs WHERE state = 'queued' AND waiting_on = 0 AND not_before IS NULL \
         AND route IN ({}) LIMIT 1",
        placeholders(1, n)
    )
}

/// The earliest time a job routed to one of the `n` groups `?2`... becomes runnable
/// (`?1`: now).
pub(super) fn waiting_sql(n: usize) -> String {
    format!(
        "SELECT MIN(not_before) FROM jobs \
         WHERE not_before IS NOT NULL \
         AND ((state = 'queued' AND not_before > ?1) OR state IN ('failed', 'timed_out')) \
         AND route IN ({})",
        placeholders(2, n)
    )
}

/// The jobs queued or waiting for a retry after id `?1`, at most `?2`, in id order, with
/// their group now: a range of the primary key (over the whole reroute, every row is
/// read once, however many steps it takes).
pub(super) const LIVE_ROUTES: &str = "SELECT id, named_group, tags, route FROM jobs WHERE id > ?1 \
     AND (state = 'queued' OR (not_before IS NOT NULL AND state IN ('failed', 'timed_out'))) \
     ORDER BY id LIMIT ?2";

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
pub(super) struct ClaimTx<'a> {
    conn: &'a Connection,
    /// Per group, the last (priority, id) picked: the group's next pick starts after it.
    after: BTreeMap<String, (i64, JobId)>,
}

impl<'a> ClaimTx<'a> {
    pub(super) fn new(conn: &'a Connection) -> Self {
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

    fn live(&mut self, after: JobId, limit: u32) -> Result<Vec<ToRoute>> {
        self.conn
            .prepare_cached(LIVE_ROUTES)
            .and_then(|mut stmt| {
                stmt.query_map(params![after, limit], |row| {
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

    fn pick(&mut self, _me: InstanceId, want: &[(&str, u32)], _now: f64) -> Result<Vec<Candidate>> {
        let mut picked = Vec::new();
        for &(group, n) in want {
            let (priority, after) = self.after.get(group).copied().unwrap_or((i64::MAX, 0));
            // Every column as it is stored: the planner checks them field by field.
            let rows: Vec<(JobId, i64, Vec<Value>)> = self
                .conn
                .prepare_cached(CANDIDATES)
                .and_then(|mut stmt| {
                    stmt.query_map(params![group, after, n, priority], |row| {
                        let values = (0..9)
                            .map(|i| row.get::<_, Value>(i))
                            .collect::<rusqlite::Result<Vec<Value>>>()?;
                        // A damaged priority sorts as it is stored; it is only a cursor.
                        let priority = row.get::<_, i64>(9).unwrap_or(i64::MIN);
                        Ok((row.get(0)?, priority, values))
                    })?
                    .collect()
                })
                .ctx("claim: find runnable jobs")?;
            for (id, priority, row) in rows {
                self.after.insert(group.to_owned(), (priority, id));
                picked.push(Candidate {
                    id,
                    group: group.to_owned(),
                    run: stored_run(&row),
                });
            }
        }
        Ok(picked)
    }

    fn start(&mut self, me: InstanceId, job: &ClaimedRun, now: f64) -> Result<bool> {
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
            .and_then(|mut stmt| stmt.exists(params_from_iter(args[1..].iter())))
            .ctx("claim: look for runnable jobs")?;
        let waiting_until: Option<f64> = self
            .conn
            .prepare_cached(&waiting_sql(n))
            .and_then(|mut stmt| stmt.query_row(params_from_iter(args.iter()), |row| row.get(0)))
            .ctx("claim: look for waiting jobs")?;
        Ok((runnable, waiting_until))
    }

    fn paused(&mut self) -> Result<Vec<String>> {
        self.conn
            .prepare_cached(crate::sql::PAUSED)
            .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
            .ctx("claim: look for paused groups")
    }
}
