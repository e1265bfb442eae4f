//! SQL that both stores run, written once: standard SQL that means the same to SQLite and
//! to PostgreSQL, with PostgreSQL's placeholders (`$1`, `$2`, ...). SQLite runs it through
//! [`for_sqlite`] (`?1`, `?2`, ...). A type a parameter needs where PostgreSQL cannot infer
//! it is given with `CAST(... AS float8)` or `CAST(... AS text)`, which SQLite reads as a
//! no-op on the values we bind (`float8` has REAL affinity there).

/// The text of [`TAKE_BACK`], for the statements built on it.
macro_rules! take_back {
    () => {
        "UPDATE jobs SET \
         state = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END, \
         attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, \
         last_outcome = CASE WHEN cancel_requested THEN 'canceled' ELSE last_outcome END, \
         finished_at = CASE WHEN cancel_requested THEN CAST($2 AS float8) \
                            ELSE finished_at END, \
         routed = CASE WHEN cancel_requested THEN routed ELSE FALSE END, \
         owner = NULL \
         WHERE owner = $1 AND state = 'running'"
    };
}

/// A finished job: one that will never run again.
pub(crate) const FINISHED: &str = "(state IN ('succeeded', 'dead', 'canceled') \
     OR (state IN ('failed', 'timed_out') AND not_before IS NULL))";

/// A finished job that may be deleted: one no job that has not succeeded names in its
/// `after` (a dependent canceled for it may be retried, and must then find it ended
/// otherwise than `succeeded`, not gone). The subquery's `jobs` is the candidate's.
pub(crate) const PURGEABLE: &str = "(state IN ('succeeded', 'dead', 'canceled') \
     OR (state IN ('failed', 'timed_out') AND not_before IS NULL)) \
     AND NOT EXISTS (SELECT 1 FROM job_deps pd JOIN jobs pj ON pj.id = pd.job \
                     WHERE pd.dep = jobs.id AND pj.state <> 'succeeded')";

/// The columns a store's `read_job` expects, in order.
pub(crate) const JOB_COLUMNS: &str = "id, state, COALESCE(run_group, named_group), command, \
     tags, env, cwd, timeout_s, max_attempts, idem_key, attempts, exit_code, signal, \
     last_outcome, created_at, started_at, finished_at, not_before, owner, cancel_requested, \
     reason, start_error, priority, after_ids";

/// The paused groups, by name.
pub(crate) const PAUSED: &str = "SELECT name FROM paused_groups ORDER BY name";

/// Pauses group `$1` from `$2` on (a paused group stays paused since it first was).
pub(crate) const PAUSE: &str = "INSERT INTO paused_groups (name, since) \
     VALUES ($1, CAST($2 AS float8)) ON CONFLICT (name) DO NOTHING";

/// Resumes group `$1`.
pub(crate) const RESUME: &str = "DELETE FROM paused_groups WHERE name = $1";

/// The dependencies of job `$1` that ended otherwise than `succeeded`, as `d`.
macro_rules! failed_deps {
    () => {
        "FROM job_deps dd JOIN jobs d ON d.id = dd.dep WHERE dd.job = $1 \
         AND (d.state IN ('dead', 'canceled') \
              OR (d.state IN ('failed', 'timed_out') AND d.not_before IS NULL))"
    };
}

/// Queues job `$1` again at `$2` with a fresh attempt budget, if it is finished otherwise
/// than `succeeded` (`dead`, `canceled`, `failed` or `timed_out` with no retry to come),
/// waiting on each of its dependencies that has not succeeded. One that ended otherwise
/// cancels it again at once, as it would have at submit: it never runs after a
/// dependency that failed.
pub(crate) const RETRY: &str = concat!(
    "UPDATE jobs SET \
     state = CASE WHEN EXISTS (SELECT 1 ",
    failed_deps!(),
    ") THEN 'canceled' ELSE 'queued' END, \
     last_outcome = CASE WHEN EXISTS (SELECT 1 ",
    failed_deps!(),
    ") THEN 'canceled' ELSE NULL END, \
     finished_at = CASE WHEN EXISTS (SELECT 1 ",
    failed_deps!(),
    ") THEN CAST($2 AS float8) ELSE NULL END, \
     reason = (SELECT 'dependency ' || d.id || ' ended ' || d.state ",
    failed_deps!(),
    " ORDER BY d.id LIMIT 1), \
     waiting_on = (SELECT COUNT(*) FROM job_deps wd JOIN jobs w ON w.id = wd.dep \
                   WHERE wd.job = $1 AND w.state <> 'succeeded'), \
     attempts = 0, started_at = NULL, not_before = NULL, exit_code = NULL, signal = NULL, \
     start_error = NULL, cancel_requested = FALSE, supervisor_deaths = 0, routed = FALSE \
     WHERE id = $1 AND (state IN ('dead', 'canceled') \
     OR (state IN ('failed', 'timed_out') AND not_before IS NULL)) RETURNING id"
);

/// Gives back the running jobs of owner `$1` at time `$2`: queued without using up an
/// attempt (`finished_at` left unset, as the claim left it), or canceled at `$2` if a
/// cancel was requested. Every way of taking a job back narrows this down.
pub(crate) const TAKE_BACK: &str = take_back!();

/// [`TAKE_BACK`] for every running job of the owner; returns their ids.
pub(crate) const TAKE_BACK_ALL: &str = concat!(take_back!(), " RETURNING id");

/// [`TAKE_BACK`] for one attempt (`$3`: the job, `$4`: the attempt).
pub(crate) const RELEASE: &str = concat!(take_back!(), " AND id = $3 AND attempts = $4");

/// Takes back the running jobs of dead owner `$1` at time `$2` as [`TAKE_BACK`] does,
/// counting one more death of their supervisor; a job at its
/// [`SUPERVISOR_DEATHS`](crate::SUPERVISOR_DEATHS)th ends `dead` with reason `$3` (`$4`:
/// the limit). Returns their ids.
pub(crate) const TAKE_BACK_ORPHANS: &str = "UPDATE jobs SET \
     state = CASE WHEN cancel_requested THEN 'canceled' \
                  WHEN supervisor_deaths + 1 >= $4 THEN 'dead' ELSE 'queued' END, \
     attempts = CASE WHEN cancel_requested OR supervisor_deaths + 1 >= $4 THEN attempts \
                     ELSE attempts - 1 END, \
     last_outcome = CASE WHEN cancel_requested THEN 'canceled' \
                         WHEN supervisor_deaths + 1 >= $4 THEN 'lost' ELSE last_outcome END, \
     finished_at = CASE WHEN cancel_requested OR supervisor_deaths + 1 >= $4 \
                        THEN CAST($2 AS float8) ELSE finished_at END, \
     reason = CASE WHEN NOT cancel_requested AND supervisor_deaths + 1 >= $4 \
                   THEN CAST($3 AS text) ELSE reason END, \
     routed = CASE WHEN cancel_requested OR supervisor_deaths + 1 >= $4 THEN routed \
                   ELSE FALSE END, \
     supervisor_deaths = supervisor_deaths + 1, \
     owner = NULL \
     WHERE owner = $1 AND state = 'running' RETURNING id";

/// Stores the outcome of attempt `$8` of job `$7` run by owner `$9`, in one statement: its
/// next state `$1` and retry time `$2` (a retry becomes `canceled` if a cancel was
/// requested, decided on the row as it is when it is written), exit code `$3`, signal
/// `$4`, outcome `$5`, end `$6`, start error `$10` and reason `$11`.
pub(crate) const RECORD_OUTCOME: &str = "UPDATE jobs SET \
     state = CASE WHEN cancel_requested AND CAST($2 AS float8) IS NOT NULL \
             THEN 'canceled' ELSE CAST($1 AS text) END, \
     not_before = CASE WHEN cancel_requested THEN NULL ELSE $2 END, \
     owner = NULL, exit_code = $3, signal = $4, \
     last_outcome = CASE WHEN cancel_requested AND CAST($2 AS float8) IS NOT NULL \
             THEN 'canceled' ELSE CAST($5 AS text) END, \
     finished_at = $6, start_error = $10, reason = $11, \
     routed = CASE WHEN cancel_requested OR CAST($2 AS float8) IS NULL THEN routed \
             ELSE FALSE END \
     WHERE id = $7 AND state = 'running' AND attempts = $8 AND owner = $9 \
     RETURNING state";

/// A cancel of running job `$1`: asks its supervisor to stop it.
pub(crate) const REQUEST_CANCEL: &str =
    "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND state = 'running'";

/// A cancel of job `$1`, queued or waiting for a retry: `canceled` at `$2`.
pub(crate) const CANCEL_WAITING: &str = "UPDATE jobs SET state = 'canceled', finished_at = $2, \
     not_before = NULL WHERE id = $1 AND (state = 'queued' OR (state IN ('failed', 'timed_out') \
     AND not_before IS NOT NULL))";

/// The newest `$4` jobs, newest first, of state `$1`, group `$2` (the one that ran it,
/// else the one it is routed to, else the one it names: as [`COUNTS_BY_GROUP`] counts
/// them) and last outcome `$3`, each filter skipped when NULL.
pub(crate) fn list_newest() -> String {
    format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE (CAST($1 AS text) IS NULL OR state = $1) \
         AND (CAST($2 AS text) IS NULL OR COALESCE(run_group, route, named_group) = $2) \
         AND (CAST($3 AS text) IS NULL OR last_outcome = $3) \
         ORDER BY id DESC LIMIT $4"
    )
}

/// Jobs by state and group: the group that ran it, else the one it is routed to, else
/// the one it names (NULL: none).
pub(crate) const COUNTS_BY_GROUP: &str = "SELECT state, COALESCE(run_group, route, named_group), \
     COUNT(*) FROM jobs GROUP BY 1, 2";

/// `sql` with SQLite's placeholders: `$n` becomes `?n` (the statements here hold no other
/// `$`).
pub(crate) fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

/// A queued job's place: its group (`route`), whether that is decided (`routed`: 1 or
/// 0), its priority, and how many of its dependencies have not succeeded yet.
pub(crate) const PLACE: &str = "SELECT route, CASE WHEN routed THEN 1 ELSE 0 END, priority, \
     waiting_on FROM jobs WHERE id = $1 AND state = 'queued'";

/// How many claimable jobs of group `$1` come before priority `$2`, id `$3` at `$4`: the
/// claim's own order (those delayed until `$4` or before count: the next claim clears
/// their `not_before`).
pub(crate) const AHEAD: &str = "SELECT COUNT(*) FROM jobs WHERE state = 'queued' \
     AND waiting_on = 0 AND route = CAST($1 AS text) \
     AND (priority > $2 OR (priority = $2 AND id < $3)) \
     AND (not_before IS NULL OR not_before <= CAST($4 AS float8))";

/// The dependencies of job `$1` that have not succeeded yet, by id.
pub(crate) const WAITING_ON: &str = "SELECT d.dep FROM job_deps d JOIN jobs j ON j.id = d.dep \
     WHERE d.job = $1 AND j.state <> 'succeeded' ORDER BY d.dep";

/// Deletes finished jobs that finished before `$1`, oldest id first, at most `$2`;
/// returns their ids. With `in_state`, only those in state `$3`.
pub(crate) fn purge(in_state: bool) -> String {
    format!(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {PURGEABLE} \
         AND COALESCE(finished_at, created_at) < CAST($1 AS float8){} \
         ORDER BY id LIMIT $2) RETURNING id",
        if in_state {
            " AND state = CAST($3 AS text)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dollar_is_a_placeholder() {
        for sql in [
            TAKE_BACK_ALL,
            RELEASE,
            TAKE_BACK_ORPHANS,
            RECORD_OUTCOME,
            REQUEST_CANCEL,
            CANCEL_WAITING,
        ] {
            let converted = for_sqlite(sql);
            assert!(!converted.contains('$'), "{converted}");
            for (i, _) in converted.match_indices('?') {
                assert!(
                    converted[i + 1..].starts_with(|c: char| c.is_ascii_digit()),
                    "{converted}"
                );
            }
        }
    }
}
