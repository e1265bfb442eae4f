//! `supervisor status [--json]`: the supervisor (running, or how its last run ended),
//! every child as the events file tells it ([`replay`]), and job counts from the store.
//!
//! A config file with errors does not stop it: it warns and shows what the state dir,
//! the events file and the store (found leniently) say.

mod last_run;
pub(crate) mod replay;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};
use supervisor_config::{Locations, StoreConfig};
use supervisor_os::{PidFile, PidFileState};
use supervisor_store::JobState;

use self::last_run::{last_run, Ending};
use self::replay::{replay, Replay};
use super::config::{self, Lenient};
use super::format::{format_duration, local_time};
use super::{open_existing_store, pidfile, CommandError};
use crate::events_file::{read_events, wall_now};
use crate::record::{ChildKind, ChildRow, EventLine, EventRecord};

/// A child's state in `status` when no supervisor runs.
const GONE: &str = "gone";

/// `status --json` of the running supervisor, for its HTTP server: the same object,
/// from the child table it replays live (`live`) rather than from the events file, and
/// the job counts and paused groups it read (the server shares one count among
/// its clients); counts or groups the store could not give are zeros and none, with a
/// warning, as in `status`.
pub(crate) fn running_json(
    live: &Replay,
    last_event_at: Option<f64>,
    counts: Result<BTreeMap<JobState, u64>>,
    paused: Result<Vec<String>>,
) -> Value {
    Report::of_running(live, last_event_at, counts, paused).json()
}

/// `supervisor status`.
///
/// With no supervisor running, it tells how the last run ended ([`Ending`]) and when
/// its last event was; its children are `gone` (no uptime), and jobs the store still
/// has as `running` are named: the next run gives them back to the queue.
pub fn status(path: &Path, as_json: bool) -> Result<(), CommandError> {
    let found = config::locate(path, Lenient::Status)?;
    let report = Report::gather(&found);
    if as_json {
        say!("{}", serde_json::to_string_pretty(&report.json())?)?;
    } else {
        report.print(&found)?;
    }
    Ok(())
}

/// Whether jobs can have cgroups of their own, in both of `status`'s forms.
#[derive(Debug)]
struct Cgroups {
    json: Value,
    text: String,
}

/// What `status` shows, gathered before any of it is printed.
#[derive(Debug)]
struct Report {
    /// The pid of the supervisor that holds the pidfile, if one does.
    running_pid: Option<u32>,
    /// That pid, else the last the events or a stale pidfile name.
    pid: Option<u64>,
    /// How the last run ended, when no supervisor runs.
    ending: Option<Ending>,
    last_event_at: Option<f64>,
    /// Rows of the child table, as `status --json` prints them.
    children: Vec<ChildRow>,
    /// Jobs by state.
    counts: BTreeMap<String, u64>,
    /// Outcomes the running supervisor holds because the store refused them.
    outcomes_waiting: u64,
    /// Jobs still `running` in the store while no supervisor runs: stranded until the
    /// next run gives them back.
    stranded: Vec<i64>,
    cgroups: Cgroups,
    /// Groups an operator paused (kept in the store, for every supervisor of it).
    paused: Vec<String>,
}

impl Report {
    /// Read the pidfile, the events file and the store.
    fn gather(found: &Locations) -> Report {
        let state = PidFile::inspect(&pidfile(&found.state_dir));
        let running_pid = match state {
            PidFileState::Running(pid) => Some(pid),
            _ => None,
        };
        let events = read_events(&found.events).unwrap_or_default();
        let replayed = replay(&events);
        let counts = job_counts(store_counts(&found.store));
        let stale_pid = match state {
            PidFileState::Stale(pid) => pid,
            _ => None,
        };
        let outcomes_waiting = match running_pid {
            Some(_) => outcomes_waiting(&events),
            None => 0,
        };
        let (ending, last_event_at) = match running_pid {
            Some(_) => (None, events.last().map(|e| e.ts)),
            None => {
                let (mut ending, at) = last_run(&found.events, &events);
                // Nothing in the events file, but a pidfile nobody holds: a supervisor ran
                // here and was killed (before it wrote any event, or its events are gone).
                if ending == Ending::NeverStarted && matches!(state, PidFileState::Stale(_)) {
                    ending = Ending::Died;
                }
                (Some(ending), at)
            }
        };
        let pid = running_pid
            .or(replayed.supervisor_pid)
            .or(stale_pid)
            .map(u64::from);
        let mut children: Vec<ChildRow> = replayed.children.into_values().collect();
        if running_pid.is_none() {
            // Whatever the events last said of them, children die with their supervisor
            // (PR_SET_PDEATHSIG): none of them runs now.
            for c in &mut children {
                c.state = GONE.to_string();
                c.started_at = None;
            }
        }
        let stranded = match running_pid {
            None if counts.get("running").copied().unwrap_or(0) > 0 => running_jobs(&found.store)
                .unwrap_or_else(|e| {
                    log::warn!("running jobs unavailable: {e:#}");
                    Vec::new()
                }),
            _ => Vec::new(),
        };
        Report {
            running_pid,
            pid,
            ending,
            last_event_at,
            children,
            counts,
            outcomes_waiting,
            stranded,
            cgroups: cgroups_of(running_pid),
            paused: paused_of(paused_groups(&found.store)),
        }
    }

    /// The report of the running supervisor itself (its HTTP server), from what it has
    /// replayed of its own events as they were written, and what it has of the store.
    fn of_running(
        live: &Replay,
        last_event_at: Option<f64>,
        counts: Result<BTreeMap<JobState, u64>>,
        paused: Result<Vec<String>>,
    ) -> Report {
        let pid = std::process::id();
        Report {
            running_pid: Some(pid),
            pid: Some(u64::from(pid)),
            ending: None,
            last_event_at,
            children: live.children.values().cloned().collect(),
            counts: job_counts(counts),
            outcomes_waiting: live.outcomes_waiting,
            stranded: Vec::new(),
            cgroups: cgroups_of(Some(pid)),
            paused: paused_of(paused),
        }
    }

    /// `status --json`.
    fn json(&self) -> Value {
        json!({
            "supervisor": {
                "pid": self.pid,
                "running": self.running_pid.is_some(),
                "stopped": self.ending.as_ref().and_then(Ending::label),
                "last_event_at": self.last_event_at,
                "panic": match &self.ending {
                    Some(Ending::Crashed { message, location }) => {
                        json!({"message": message, "location": location})
                    }
                    _ => Value::Null,
                },
            },
            "children": self.children,
            "jobs": self.counts,
            "outcomes_waiting": self.outcomes_waiting,
            "cgroups": self.cgroups.json,
            "paused": self.paused,
        })
    }

    /// `status` for humans: the supervisor, the child table, the job counts.
    fn print(&self, found: &Locations) -> io::Result<()> {
        let mut out = io::stdout().lock();
        let now = wall_now();
        self.print_supervisor(&mut out, &found.events, now)?;
        if self.running_pid.is_some() || !self.children.is_empty() {
            writeln!(
                out,
                "{:<20} {:<9} {:>8} {:>9} {:>8}  JOB",
                "NAME", "STATE", "PID", "UPTIME", "RESTARTS"
            )?;
        }
        for c in &self.children {
            print_child(&mut out, c, now)?;
        }
        let summary: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(out, "jobs: {}", summary.join(", "))?;
        if !self.paused.is_empty() {
            writeln!(
                out,
                "paused: {} (nothing claimed for them until `supervisor resume`)",
                self.paused.join(", ")
            )?;
        }
        if self.outcomes_waiting > 0 {
            writeln!(
                out,
                "outcomes waiting for the store: {} (nothing is claimed until they are stored)",
                self.outcomes_waiting
            )?;
        }
        if !self.stranded.is_empty() {
            writeln!(out, "{}", stranded_note(&self.stranded, &found.store))?;
        }
        out.flush()
    }

    /// The first lines: running, or how the last run ended and when (`events`: the
    /// events file, named when it has nothing).
    fn print_supervisor(&self, out: &mut impl Write, events: &Path, now: f64) -> io::Result<()> {
        let pid_text = self.pid.map_or("?".into(), |p| p.to_string());
        let last = self.last_event_at.map_or("none recorded".into(), |t| {
            format!("{} ({} ago)", local_time(t, true), format_duration(now - t))
        });
        match (self.running_pid, &self.ending) {
            (Some(p), _) => {
                writeln!(out, "supervisor: running (pid {p})")?;
                writeln!(out, "cgroups: {}", self.cgroups.text)
            }
            (None, None | Some(Ending::NeverStarted)) => writeln!(
                out,
                "supervisor: not running: never started here (no events in {})",
                events.display()
            ),
            (None, Some(Ending::Cleanly { code })) => {
                let code = code.map_or(String::new(), |c| format!(", exit code {c}"));
                writeln!(
                    out,
                    "supervisor: not running: stopped cleanly (pid {pid_text}{code}); last event {last}"
                )
            }
            (None, Some(Ending::Died)) => writeln!(
                out,
                "supervisor: not running: died (pid {pid_text}: killed, or crashed without a \
                 trace); last event {last}"
            ),
            (None, Some(Ending::Crashed { message, location })) => {
                writeln!(
                    out,
                    "supervisor: not running: crashed (pid {pid_text}); last event {last}"
                )?;
                writeln!(out, "  panicked at {location}:")?;
                for line in message.lines() {
                    writeln!(out, "    {line}")?;
                }
                Ok(())
            }
        }
    }
}

/// A row of the child table.
fn print_child(out: &mut impl Write, c: &ChildRow, now: f64) -> io::Result<()> {
    let name = match (&c.child.group, c.child.slot, c.child.role) {
        (Some(g), Some(s), _) => format!("{g}/{s}"),
        (_, _, ChildKind::Grabber) => "grabber".to_string(),
        (_, _, ChildKind::Worker) => "worker".to_string(),
    };
    let state = c.state.as_str();
    let uptime = match (state, c.started_at) {
        ("exited" | GONE, _) | (_, None) => "-".to_string(),
        (_, Some(t)) => format_duration(now - t),
    };
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    writeln!(
        out,
        "{:<20} {:<9} {:>8} {:>9} {:>8}  {}",
        name,
        state,
        or_dash(c.pid.map(|p| p.to_string())),
        uptime,
        c.restarts,
        or_dash(c.job_id.map(|j| j.to_string()))
    )
}

/// How many outcomes the running supervisor holds because the store refused them, as
/// its last word on them in `events` says.
fn outcomes_waiting(events: &[EventLine]) -> u64 {
    events
        .iter()
        .rev()
        .find_map(|e| match &e.record {
            EventRecord::OutcomesWaiting { count } => Some(*count),
            EventRecord::Snapshot {
                outcomes_waiting, ..
            } => Some(*outcomes_waiting),
            _ => None,
        })
        .unwrap_or(0)
}

/// Whether the supervisor `pid` can give jobs cgroups of their own.
fn cgroups_of(pid: Option<u32>) -> Cgroups {
    let found = match pid {
        Some(pid) if pid > 0 => supervisor_os::cgroup::detect_pid(pid),
        _ => Err("the supervisor is not running".to_string()),
    };
    match found {
        Ok(delegated) => {
            let dir = delegated.dir().display().to_string();
            let text = format!("in use ({dir}): memory_max_bytes and cpu_max are enforced");
            let json = json!({"in_use": true, "dir": dir, "reason": null});
            Cgroups { json, text }
        }
        Err(why) => {
            let text = format!("not in use (memory_max_bytes and cpu_max are not enforced): {why}");
            let json = json!({"in_use": false, "dir": null, "reason": why});
            Cgroups { json, text }
        }
    }
}

/// The line under the counts that names the jobs left `running` by a supervisor that
/// is gone.
fn stranded_note(ids: &[i64], store: &StoreConfig) -> String {
    const SHOWN: usize = 10;
    let mut list: Vec<String> = ids.iter().take(SHOWN).map(i64::to_string).collect();
    if ids.len() > SHOWN {
        list.push(format!("and {} more", ids.len() - SHOWN));
    }
    let (noun, verb) = if ids.len() == 1 {
        ("job", "is")
    } else {
        ("jobs", "are")
    };
    let who = match store {
        StoreConfig::Sqlite { .. } => "will be given back by the next run",
        // A shared store: other supervisors may run some of them; those of this one
        // go back when it runs again, or when another notices it is dead.
        StoreConfig::Postgres { .. } => {
            "those this supervisor held will be given back by its next run, or by another \
             supervisor on the store"
        }
    };
    format!(
        "{noun} {} {verb} still running in the store: {who}",
        list.join(", ")
    )
}

/// The ids of the jobs the store has as `running` (none when it does not exist yet).
fn running_jobs(store: &StoreConfig) -> Result<Vec<i64>> {
    let Some(mut store) = open_existing_store(store)? else {
        return Ok(Vec::new());
    };
    let jobs = store.list(Some(JobState::Running), wall_now())?;
    Ok(jobs.iter().map(|j| j.id).collect())
}

/// Jobs by state, by name; all 0 (and a warning) when the store cannot say.
fn job_counts(counts: Result<BTreeMap<JobState, u64>>) -> BTreeMap<String, u64> {
    match counts {
        Ok(c) => c
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), v))
            .collect(),
        Err(e) => {
            log::warn!("job counts unavailable: {e:#}");
            JobState::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), 0))
                .collect()
        }
    }
}

/// The paused groups (none, and a warning, when the store cannot say).
fn paused_of(paused: Result<Vec<String>>) -> Vec<String> {
    paused.unwrap_or_else(|e| {
        log::warn!("paused groups unavailable: {e:#}");
        Vec::new()
    })
}

/// Jobs by state; all 0 when the store does not exist yet (`status` creates nothing).
fn store_counts(store: &StoreConfig) -> Result<BTreeMap<JobState, u64>> {
    match open_existing_store(store)? {
        Some(mut store) => Ok(store.counts(wall_now())?),
        None => Ok(JobState::ALL.iter().map(|s| (*s, 0)).collect()),
    }
}

/// The paused groups, if the store exists.
fn paused_groups(store: &StoreConfig) -> Result<Vec<String>> {
    match open_existing_store(store)? {
        Some(mut s) => Ok(s.paused()?),
        None => Ok(Vec::new()),
    }
}
