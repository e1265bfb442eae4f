//! The claim planner, one for both stores: route new jobs, claim per group within its
//! credit, refuse damaged rows without using a credit and claim again, look at the
//! backlog. Each store only says how, in SQL, through [`ClaimSql`].
//!
//! A job's group is decided once ([`JobStore::reroute`](crate::JobStore::reroute)
//! documents when) and kept in its `route` column, so that a claim never reads a job's
//! tags: [`route_new`] routes the jobs submitted since the last claim, [`reroute`] the
//! whole queue when the routes change, both with the one rule, [`route`].

use std::collections::BTreeMap;

use crate::{
    route, Backlog, ClaimResult, ClaimedRun, InstanceId, JobId, NewJob, Refused, Result, Route,
};

/// How many unrouted jobs a claim routes at most (the rest wait for the next claim, which
/// the backlog then asks for at once): a burst of tagged submits is routed in steps
/// rather than in one long hold of the write lock.
const ROUTE_BATCH: i64 = 2000;

/// A job as routing reads it.
#[derive(Debug)]
pub(crate) struct ToRoute {
    pub id: JobId,
    /// The group it names, if any (a damaged column: none).
    pub named: Option<String>,
    /// Its tags (damaged ones: none).
    pub tags: BTreeMap<String, String>,
    /// The group it is routed to now, if any.
    pub route: Option<String>,
}

/// A queued job a claim picked for a group: its fields as stored, to be checked.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub id: JobId,
    pub group: String,
    pub run: StoredRun,
}

/// What a claim (and a reroute) asks of a store, inside its transaction: the SQL, and the
/// reading of the rows.
///
/// A store may mark the jobs it picks running at once, all groups in one statement
/// (PostgreSQL: `FOR UPDATE SKIP LOCKED`, `UPDATE ... RETURNING`): then [`start`] has
/// nothing left to do and [`refuse`] ends a running row. Or it may pick them first and
/// mark each sound one in [`start`] (SQLite, which holds the write lock throughout): then
/// [`refuse`] ends a queued row.
///
/// [`start`]: ClaimSql::start
/// [`refuse`]: ClaimSql::refuse
pub(crate) trait ClaimSql {
    /// The jobs whose group is not decided yet, oldest first, at most `limit`.
    fn unrouted(&mut self, limit: i64) -> Result<Vec<ToRoute>>;

    /// The jobs not running and not finished (queued, or waiting for a retry) after id
    /// `after`, in id order, at most `limit`.
    fn live(&mut self, after: JobId, limit: u32) -> Result<Vec<ToRoute>>;

    /// Sets the group of each job (`None`: no route takes it) and marks it routed; `op`
    /// names the operation in errors.
    fn set_routes(&mut self, routes: &[(JobId, Option<String>)], op: &'static str) -> Result<()>;

    /// For each group of `want`, up to its number of runnable queued jobs (at `now`), in
    /// id order: an index range scan of that group's queue. (PostgreSQL marks them
    /// running under `me` here.)
    fn pick(&mut self, me: InstanceId, want: &[(&str, u32)], now: f64) -> Result<Vec<Candidate>>;

    /// Makes a sound candidate `running` under `me` with one more attempt, if
    /// [`pick`](ClaimSql::pick) did not. False if another claimer took it.
    fn start(&mut self, me: InstanceId, job: &ClaimedRun, now: f64) -> Result<bool>;

    /// Ends a candidate whose row cannot be run: `dead` with `reason`, finished at `now`,
    /// its attempts as before the claim.
    fn refuse(&mut self, id: JobId, reason: &str, now: f64) -> Result<()>;

    /// Whether a job routed to one of `groups` (never empty) is runnable at `now`, and
    /// the earliest time a waiting one becomes runnable.
    fn backlog(&mut self, groups: &[&str], now: f64) -> Result<(bool, Option<f64>)>;

    /// The groups an operator paused: nothing is claimed for them.
    fn paused(&mut self) -> Result<Vec<String>>;
}

/// [`JobStore::claim`](crate::JobStore::claim), inside the store's transaction (due
/// retries already queued).
pub(crate) fn claim(
    sql: &mut impl ClaimSql,
    me: InstanceId,
    routes: &[Route],
    credits: &mut BTreeMap<String, u32>,
    now: f64,
) -> Result<ClaimResult> {
    let more_to_route = route_new(sql, routes)?;
    // The groups some route names, each once, in name order; paused ones claim nothing
    // and have no backlog to report.
    let paused = sql.paused()?;
    let mut groups: Vec<&str> = routes
        .iter()
        .map(|r| r.group.as_str())
        .filter(|g| !paused.iter().any(|p| p == g))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut claimed = Vec::new();
    let mut refused = Vec::new();
    // Rows refused (damaged) do not use a credit: claim again for what is left.
    loop {
        let want: Vec<(&str, u32)> = groups
            .iter()
            .map(|g| (*g, credits.get(*g).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        if want.is_empty() {
            break;
        }
        let mut taken: BTreeMap<String, u32> = BTreeMap::new();
        let mut again = false;
        for Candidate { id, group, run } in sql.pick(me, &want, now)? {
            *taken.entry(group.clone()).or_default() += 1;
            let attempts = run.attempts.as_ref().ok().copied();
            // A row damaged by hand or by another version is refused, field by field,
            // without failing the claim.
            match run.into_claim(id, &group) {
                Ok(job) => {
                    if !sql.start(me, &job, now)? {
                        log::warn!("job {id}: taken by another claimer");
                        again = true;
                        continue;
                    }
                    if let Some(c) = credits.get_mut(&group) {
                        *c = c.saturating_sub(1);
                    }
                    claimed.push(job);
                }
                Err(what) => {
                    let reason = unrunnable_reason(&what);
                    log::warn!("job {id}: {reason}");
                    sql.refuse(id, &reason, now)?;
                    refused.push(Refused {
                        id,
                        attempts: attempts.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
                        reason,
                    });
                    again = true;
                }
            }
        }
        // Again only if some group got all it asked for and a row went unclaimed (refused,
        // or taken by another claimer): the groups with credit left ask once more.
        let full = want
            .iter()
            .any(|(g, n)| taken.get(*g).copied().unwrap_or(0) >= *n);
        if !again || !full {
            break;
        }
    }
    claimed.sort_by_key(|c| c.id);

    // What is left, among jobs routed to a group that can run them.
    let able: Vec<&str> = groups
        .iter()
        .copied()
        .filter(|g| credits.contains_key(*g))
        .collect();
    let (runnable, waiting_until) = if able.is_empty() {
        (more_to_route, None)
    } else {
        let (runnable, waiting_until) = sql.backlog(&able, now)?;
        (runnable || more_to_route, waiting_until)
    };
    Ok(ClaimResult {
        jobs: claimed,
        refused,
        more: Backlog {
            runnable,
            waiting_until,
        },
    })
}

/// Decides the group of the jobs not routed yet, at most [`ROUTE_BATCH`] of them. Returns
/// true if more are left.
fn route_new(sql: &mut impl ClaimSql, routes: &[Route]) -> Result<bool> {
    let jobs = sql.unrouted(ROUTE_BATCH)?;
    if jobs.is_empty() {
        return Ok(false);
    }
    let decided: Vec<(JobId, Option<String>)> = jobs
        .iter()
        .map(|job| (job.id, routed_to(routes, job)))
        .collect();
    sql.set_routes(&decided, "route new jobs")?;
    Ok(jobs.len() as i64 == ROUTE_BATCH)
}

/// [`JobStore::reroute_from`](crate::JobStore::reroute_from), inside the store's
/// transaction.
pub(crate) fn reroute(
    sql: &mut impl ClaimSql,
    routes: &[Route],
    after: JobId,
    limit: u32,
) -> Result<crate::Rerouted> {
    let live = sql.live(after, limit)?;
    let next = (live.len() >= limit as usize)
        .then(|| live.last().map(|j| j.id))
        .flatten();
    let changed: Vec<(JobId, Option<String>)> = live
        .into_iter()
        .filter_map(|job| {
            let to = routed_to(routes, &job);
            (to != job.route).then_some((job.id, to))
        })
        .collect();
    if !changed.is_empty() {
        sql.set_routes(&changed, "reroute")?;
    }
    Ok(crate::Rerouted {
        changed: changed.len(),
        next,
    })
}

/// The group [`route`] sends a stored job to: the one it names, whatever the routes of
/// the moment, else the first whose `match` selects its tags.
fn routed_to(routes: &[Route], job: &ToRoute) -> Option<String> {
    match &job.named {
        Some(g) => Some(g.clone()),
        None => route(routes, None, &job.tags).map(str::to_owned),
    }
}

/// The fields of a stored job that a claim needs, each as read from its column: `Err` holds
/// what is wrong with the column ("not valid JSON: ..."), for a row written by hand or by
/// another version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    pub command: std::result::Result<Vec<String>, String>,
    pub env: std::result::Result<BTreeMap<String, String>, String>,
    pub cwd: std::result::Result<Option<String>, String>,
    pub timeout_s: std::result::Result<Option<f64>, String>,
    pub max_attempts: std::result::Result<Option<i64>, String>,
    pub attempts: std::result::Result<i64, String>,
}

impl StoredRun {
    /// The next attempt of job `id` in `group`, or why the row cannot be run, naming the
    /// field: the same checks as [`NewJob::validate`] applies at submit.
    pub fn into_claim(self, id: JobId, group: &str) -> std::result::Result<ClaimedRun, String> {
        fn field(name: &'static str) -> impl Fn(String) -> String {
            move |e| format!("{name}: {e}")
        }
        let max_attempts = match self.max_attempts.map_err(field("max_attempts"))? {
            None => None,
            Some(n) => {
                supervisor_core::bounds::check_attempts(n).map_err(field("max_attempts"))?;
                Some(u32::try_from(n).map_err(|_| format!("max_attempts: out of range: {n}"))?)
            }
        };
        let attempts = self.attempts.map_err(field("attempts"))?;
        let attempt = u32::try_from(attempts)
            .ok()
            .and_then(|a| a.checked_add(1))
            .ok_or_else(|| {
                format!(
                    "attempts: must be from 0 to {}, not {attempts}",
                    u32::MAX - 1
                )
            })?;
        let job = NewJob {
            command: self.command.map_err(field("command"))?,
            env: self.env.map_err(field("env"))?,
            cwd: self.cwd.map_err(field("cwd"))?,
            timeout_s: self.timeout_s.map_err(field("timeout_s"))?,
            max_attempts,
            ..NewJob::default()
        };
        job.validate()?;
        Ok(ClaimedRun {
            id,
            group: group.to_owned(),
            command: job.command,
            env: job.env,
            cwd: job.cwd,
            timeout_s: job.timeout_s,
            max_attempts: job.max_attempts,
            attempt,
        })
    }
}

/// The `reason` of a job whose stored row cannot be run.
pub fn unrunnable_reason(what: &str) -> String {
    format!("the stored job cannot be run: {what}")
}
