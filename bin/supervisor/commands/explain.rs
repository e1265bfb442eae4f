//! `supervisor explain ID`: why a job is where it is. For a queued job, every reason it
//! is not running, from the rules the claim itself applies (the store's routing, paused
//! groups, dependencies, `not_before` and its place in the claim's order:
//! [`JobStore::place`](supervisor_store::JobStore::place)) and from what the supervisor
//! runs (its groups' workers, a group that gave up). `job ID` shows the first reason.

use std::io::Write;
use std::path::Path;

use supervisor_config::Config;
use supervisor_os::{PidFile, PidFileState};
use supervisor_store::{Job, JobState};

use super::format::local_time;
use super::{config, open_store, parse_id, pidfile, CommandError};
use crate::events_file::wall_now;
use crate::record::{EventRecord, GaveUpAction};
use crate::store::Store;

/// `supervisor explain ID`.
pub fn explain(path: &Path, id: &str) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let id = parse_id(id)?;
    let mut store = open_store(&config.store)?;
    let now = wall_now();
    let job = store.get(id, now)?.ok_or(CommandError::UnknownJob(id))?;
    say!("job {id}: {}", job.state.as_str())?;
    let disabled = |g: &str| DisabledGroups::of_file(&config.events.path).contains(g);
    for line in reasons(&config, &mut store, &job, now, &disabled)? {
        say!("  {line}")?;
    }
    Ok(())
}

/// Why `job` is where it is: for a queued job each reason it is not running (the first
/// is the one `job ID` shows); for others, what it is doing or how it ended.
pub(crate) fn reasons(
    config: &Config,
    store: &mut Store,
    job: &Job,
    now: f64,
    disabled: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Vec<String>> {
    let when = |t: f64| local_time(t, false);
    match job.state {
        JobState::Running => {
            return Ok(vec![format!(
                "running attempt {} since {}",
                job.attempts,
                job.started_at.map_or("?".into(), when)
            )])
        }
        JobState::Failed | JobState::TimedOut if job.not_before.is_some() => {
            return Ok(vec![format!(
                "retry backoff: attempt {} {}, queued again at {}",
                job.attempts,
                job.state.as_str(),
                job.not_before.map_or("?".into(), when)
            )])
        }
        JobState::Queued => {}
        _ => {
            let mut line = format!(
                "finished {} at {}",
                job.state.as_str(),
                job.finished_at.map_or("?".into(), when)
            );
            if let Some(r) = &job.reason {
                line.push_str(&format!(": {r}"));
            }
            return Ok(vec![line]);
        }
    }
    let Some(place) = store.place(job.id, now)? else {
        return Ok(vec!["it changed state meanwhile: ask again".into()]);
    };
    let mut out = Vec::new();
    for dep in &place.waiting_on {
        let state = store
            .get(*dep, now)?
            .map_or("gone".to_string(), |d| d.state.as_str().to_string());
        out.push(format!("waiting for job {dep} ({state}) to succeed"));
    }
    if let Some(t) = job.not_before.filter(|t| *t > now) {
        out.push(format!("not before {}", when(t)));
    }
    let group = match (&place.route, place.routed) {
        (_, false) => {
            out.push("its group is decided at the supervisor's next claim".into());
            return Ok(out);
        }
        (None, true) => {
            out.push(no_group(config, job));
            return Ok(out);
        }
        (Some(g), true) => g.clone(),
    };
    let Some(spec) = config.group(&group) else {
        out.push(format!("group {group} is not in {}", config.path.display()));
        return Ok(out);
    };
    if store.paused()?.contains(&group) {
        out.push(format!(
            "group {group} is paused (`supervisor resume {group}`)"
        ));
    }
    if spec.max_workers == 0 {
        out.push(format!("group {group} has no workers (max_workers 0)"));
    } else if disabled(&group) {
        out.push(format!(
            "group {group} gave up (its restart limit) and is disabled until a reload"
        ));
    }
    let supervisor_runs = matches!(
        PidFile::inspect(&pidfile(&config.state_dir)),
        PidFileState::Running(_)
    );
    if !supervisor_runs {
        out.push("no supervisor runs here (`supervisor run`)".into());
    }
    let busy = store
        .list(Some(JobState::Running), now)?
        .iter()
        .filter(|j| j.group.as_deref() == Some(group.as_str()))
        .count();
    let place_text = format!("{} in group {group}'s queue", ordinal(place.ahead + 1));
    if spec.max_workers > 0 && busy >= spec.max_workers as usize {
        out.push(format!(
            "all {} workers of group {group} are busy; it is {place_text} ({} before it)",
            spec.max_workers, place.ahead
        ));
    } else if out.is_empty() {
        out.push(format!(
            "it is {place_text}: a worker takes it at the next claim"
        ));
    }
    Ok(out)
}

/// Why no group takes a job: the group it names is not in the config, or no group's
/// `match` selects its tags (each group's `match` named).
fn no_group(config: &Config, job: &Job) -> String {
    if let Some(g) = job.group.as_deref().filter(|g| config.group(g).is_none()) {
        return format!(
            "no group takes it: it names group {g}, which {} lacks",
            config.path.display()
        );
    }
    let tags: Vec<String> = job.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let groups: Vec<String> = config
        .groups
        .iter()
        .map(|g| match &g.to_route().matches {
            None => format!("{} (only jobs that name it)", g.name),
            Some(m) => format!(
                "{} (match {})",
                g.name,
                serde_json::to_string(m).unwrap_or_default()
            ),
        })
        .collect();
    format!(
        "no group takes it: no group's match selects its tags [{}]; the groups: {}",
        tags.join(", "),
        groups.join(", ")
    )
}

/// The groups that gave up with `disable` in the current run (since the last
/// `supervisor_started`) and that no reload gave another chance since, as the events
/// tell: read from the events file by `explain` and `job`, kept up to date event by
/// event by the HTTP server.
#[derive(Debug, Clone, Default)]
pub(crate) struct DisabledGroups(std::collections::BTreeSet<String>);

impl DisabledGroups {
    /// As the events file at `path` leaves them.
    pub(crate) fn of_file(path: &Path) -> DisabledGroups {
        let mut d = DisabledGroups::default();
        for line in crate::events_file::read_events(path).unwrap_or_default() {
            d.apply(&line.record);
        }
        d
    }

    /// After one more event.
    pub(crate) fn apply(&mut self, record: &EventRecord) {
        match record {
            EventRecord::SupervisorStarted { .. } | EventRecord::ConfigLoaded { .. } => {
                self.0.clear()
            }
            EventRecord::GroupGaveUp {
                group: Some(g),
                action: GaveUpAction::Disable,
                ..
            } => {
                self.0.insert(g.clone());
            }
            _ => {}
        }
    }

    pub(crate) fn contains(&self, group: &str) -> bool {
        self.0.contains(group)
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, ..., `11th`, `21st`.
fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .iter()
            .map(|n| super::ordinal(*n))
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
