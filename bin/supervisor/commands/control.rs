//! The verbs that change jobs and groups in the store, for every supervisor of it:
//! `retry` (a fresh attempt budget), `purge` (finished jobs and their logs), `pause` and
//! `resume` (claims for a group).

use std::io::Write;
use std::path::Path;

use supervisor_config::Config;
use supervisor_store::JobState;

use crate::store::Store;

use super::format::{parse_duration, parse_time};
use super::{config, open_store, parse_id, ring, CommandError};
use crate::events_file::wall_now;

/// How many jobs one purge deletes in a transaction.
const PURGE_BATCH: u32 = 500;

/// `supervisor retry ID...`: each job queued again, with a fresh attempt budget, if it
/// ended otherwise than `succeeded`. All of them are checked first: a bad id queues none.
pub fn retry(path: &Path, ids: &[String]) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let ids = ids
        .iter()
        .map(|id| parse_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let mut store = open_store(&config.store)?;
    for id in retry_jobs(&config, &mut store, &ids)? {
        say!("{id}")?;
        // Queued, and canceled again at once: a dependency of it ended otherwise than
        // `succeeded` (it would never run).
        if let Ok(Some(job)) = store.get(id, wall_now()) {
            if job.state == JobState::Canceled {
                eprintln!(
                    "job {id} was canceled again: {}",
                    job.reason.as_deref().unwrap_or("canceled")
                );
            }
        }
    }
    Ok(())
}

/// Queue jobs `ids` again with a fresh attempt budget (`supervisor retry` and the HTTP
/// API), all or none: each must have ended otherwise than `succeeded`. Rings the
/// supervisor; returns the ids retried.
pub(crate) fn retry_jobs(
    config: &Config,
    store: &mut Store,
    ids: &[i64],
) -> Result<Vec<i64>, CommandError> {
    let now = wall_now();
    // An id given twice is one job to retry, once.
    let mut unique = Vec::with_capacity(ids.len());
    for &id in ids {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    // Oldest first: a job's dependencies are older than it (`after` names jobs that
    // exist), so one retried with its dependent is queued again before the dependent
    // looks at it (else the dependent would find it still ended otherwise).
    unique.sort_unstable();
    let ids = &unique[..];
    for &id in ids {
        let job = store.get(id, now)?.ok_or(CommandError::UnknownJob(id))?;
        if !job.is_finished() || job.state == JobState::Succeeded {
            return Err(CommandError::Usage(format!(
                "job {id} is {}: only a job that is dead, canceled, or failed or timed out \
                 for good can be retried (nothing was queued)",
                if job.is_finished() {
                    "succeeded"
                } else {
                    "not final yet"
                }
            )));
        }
    }
    let mut done = Vec::with_capacity(ids.len());
    for &id in ids {
        if !store.retry(id, now)? {
            ring(config);
            return Err(CommandError::Failed(anyhow::anyhow!(
                "job {id} changed meanwhile and was not retried"
            )));
        }
        done.push(id);
    }
    ring(config);
    Ok(done)
}

/// `supervisor purge [--before TIME] [--state STATE]`: deletes finished jobs (all, or
/// those that finished before TIME: RFC 3339, or a duration ago like `7d`; all states, or
/// one) and their logs; prints how many.
pub fn purge(path: &Path, before: Option<&str>, state: Option<&str>) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let now = wall_now();
    let before = match before {
        None => f64::INFINITY,
        Some(t) => match (parse_time(t), parse_duration(t)) {
            (Ok(at), _) => at,
            (_, Ok(ago)) => now - ago,
            // Say what is wrong with what it looks like: a time has a date's dashes or
            // a clock's colons, a duration has neither.
            (Err(time_err), Err(_))
                if t.trim().get(1..).is_some_and(|r| r.contains(['-', ':'])) =>
            {
                return Err(CommandError::Usage(format!("--before: {time_err}")))
            }
            (Err(_), Err(duration_err)) => {
                return Err(CommandError::Usage(format!(
                    "--before: {duration_err}; or a time (RFC 3339, like 2026-12-01T08:00:00Z)"
                )))
            }
        },
    };
    let state = state
        .map(|s| {
            let st: JobState = s
                .parse()
                .map_err(|e| CommandError::Usage(format!("--state: {e}")))?;
            match st {
                JobState::Queued | JobState::Running => Err(CommandError::Usage(format!(
                    "--state: {s} jobs are not finished; only finished jobs are purged"
                ))),
                st => Ok(st),
            }
        })
        .transpose()?;
    let mut store = open_store(&config.store)?;
    let logs = config.state_dir.join("logs");
    let mut total = 0usize;
    loop {
        let ids = store.purge(before.min(now), state, PURGE_BATCH)?;
        for id in &ids {
            if let Err(e) = crate::joblog::remove(&logs, *id) {
                log::warn!("purge: cannot delete the log of job {id}: {e}");
            }
        }
        total += ids.len();
        // Until a batch finds nothing: a dependency kept for a dependent deleted in this
        // batch (see the store's purge) goes in the next.
        if ids.is_empty() {
            break;
        }
    }
    say!("{total}")?;
    Ok(())
}

/// `supervisor pause [GROUP...]` / `resume [GROUP...]` (every group of the config
/// without names).
pub fn pause(path: &Path, groups: &[String], pause: bool) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let mut store = open_store(&config.store)?;
    match (set_paused(&config, &mut store, groups, pause)?, pause) {
        (which, true) => say!("paused: {}", which.join(", "))?,
        (which, false) if !groups.is_empty() => say!("resumed: {}", which.join(", "))?,
        (_, false) => say!("resumed every group")?,
    }
    Ok(())
}

/// Pause or resume `groups` (every group of the config when empty), for `pause`,
/// `resume` and the HTTP API: an unknown group changes nothing. Returns the groups
/// named (each once), or all of the config's.
pub(crate) fn set_paused(
    config: &Config,
    store: &mut Store,
    groups: &[String],
    pause: bool,
) -> Result<Vec<String>, CommandError> {
    let named = known_groups(config, groups)?;
    let all: Vec<String> = config.groups.iter().map(|g| g.name.clone()).collect();
    if pause {
        store.pause(named.as_deref().unwrap_or(&all), wall_now())?;
    } else {
        store.resume(named.as_deref())?;
        ring(config);
    }
    Ok(named.unwrap_or(all))
}

/// The groups named, each one of the config's; `None` for none named.
fn known_groups(config: &Config, groups: &[String]) -> Result<Option<Vec<String>>, CommandError> {
    if groups.is_empty() {
        return Ok(None);
    }
    let mut groups = groups.to_vec();
    groups.sort_unstable();
    groups.dedup();
    if let Some(bad) = groups.iter().find(|g| config.group(g).is_none()) {
        let names: Vec<&str> = config.groups.iter().map(|g| g.name.as_str()).collect();
        return Err(CommandError::Usage(format!(
            "no group {bad:?} in {} (its groups: {})",
            config.path.display(),
            names.join(", ")
        )));
    }
    Ok(Some(groups))
}
