//! The records of the events file: [`EventRecord`], one variant per event of the
//! contract (its table and its Additions), and [`EventLine`], a record with its `seq`
//! and `ts`. They are the only way an event is written (the supervisor) or read
//! (`status`, `events`, `reload`, `stop --wait`, the outcomes journal): a derived
//! `Serialize` is the file format, so the core's [`Event`] is mapped here and never
//! serialised itself. Fields may be added; none is removed or renamed.
//!
//! Reading never fails on a line a newer version wrote: an event this version does not
//! know, or one whose fields it cannot read, is [`EventRecord::Unknown`] (with its `seq`
//! and `ts`); fields it does not know are ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};
use supervisor_core::spec::OnExhausted;
use supervisor_core::supervision::{ChildView, Event, JobId, Outcome, ProcessEnd, Role};

/// One line of the events file: `{"seq": 17, "ts": 1764000000.123, "event": ..., ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    /// Rises by one per event, across rotations and runs.
    pub seq: u64,
    /// Wall-clock seconds, to the millisecond.
    pub ts: f64,
    #[serde(flatten)]
    pub record: EventRecord,
}

impl EventLine {
    /// The line as written to the file, without its newline.
    pub fn to_line(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// A line of the file; `None` for one that is no event (blank, torn, without `seq`
    /// and `ts`). An event this version cannot read is [`EventRecord::Unknown`].
    pub fn parse(line: &str) -> Option<EventLine> {
        if let Ok(l) = serde_json::from_str::<EventLine>(line) {
            return Some(l);
        }
        // Not a record this version can read: an event all the same if it is an
        // object with `seq` and `ts`.
        let serde_json::Value::Object(fields) = serde_json::from_str(line).ok()? else {
            return None;
        };
        Some(EventLine {
            seq: fields.get("seq")?.as_u64()?,
            ts: fields.get("ts")?.as_f64()?,
            record: EventRecord::Unknown,
        })
    }

    /// The `seq` of a line, read without the rest of it.
    pub fn seq_of(line: &str) -> Option<u64> {
        #[derive(Deserialize)]
        struct Seq {
            seq: u64,
        }
        // An object only (a struct would read `[17]` too).
        if !line.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str::<Seq>(line).ok().map(|s| s.seq)
    }
}

/// An event of the events file (its fields besides `seq` and `ts`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventRecord {
    /// A run began (after its first snapshot).
    SupervisorStarted {
        pid: u32,
        /// The config file.
        #[serde(default)]
        config: String,
        #[serde(default)]
        version: String,
    },
    /// The whole child table, at the top of every file.
    Snapshot {
        supervisor_pid: u32,
        children: Vec<ChildRow>,
        #[serde(default)]
        generation: u64,
        /// Outcomes held back because the store refused them.
        #[serde(default)]
        outcomes_waiting: u64,
    },
    /// The config (at start, or a reload) is in force.
    ConfigLoaded {
        path: String,
        generation: u64,
        /// What a reload changed, one line each, if said.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        changes: Vec<String>,
    },
    /// A reload was refused; the run goes on as before.
    ConfigRejected {
        path: String,
        error: String,
    },
    ChildStarted {
        #[serde(flatten)]
        child: ChildName,
        pid: u32,
    },
    /// A child said it is initialised (not in the core: `status` tells starting from up).
    ChildReady {
        #[serde(flatten)]
        child: ChildName,
        pid: Option<u32>,
    },
    ChildExited {
        #[serde(flatten)]
        child: ChildName,
        pid: Option<u32>,
        code: Option<i32>,
        signal: Option<i32>,
        expected: bool,
        job_id: Option<JobId>,
        /// Why it could not be spawned, or why it was killed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// It crashed in a slot that is gone (a pool shrunk while it ran): no restart
        /// follows, and `status` forgets it. Written only when true.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retired: bool,
    },
    ChildRestartScheduled {
        #[serde(flatten)]
        child: ChildName,
        delay_s: f64,
        restarts_in_period: u32,
    },
    /// `group` is null for the grabber.
    GroupGaveUp {
        group: Option<String>,
        restarts: u32,
        period_s: f64,
        action: GaveUpAction,
    },
    JobStarted {
        job_id: JobId,
        group: String,
        slot: u32,
        worker_pid: u32,
        attempt: u32,
    },
    JobFinished {
        job_id: JobId,
        group: String,
        attempt: u32,
        outcome: JobOutcome,
        exit_code: Option<i32>,
        signal: Option<i32>,
        duration_s: f64,
        /// Why the command could not start, if it could not (always written).
        start_error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    JobRetryScheduled {
        job_id: JobId,
        attempt: u32,
        delay_s: f64,
    },
    JobDead {
        job_id: JobId,
        attempts: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    SupervisorStopping {
        reason: String,
    },
    SupervisorStopped {
        code: i32,
    },
    /// The supervisor panicked (it exits 1 after this).
    SupervisorPanicked {
        message: String,
        location: String,
        #[serde(default)]
        thread: String,
    },
    /// How many outcomes wait for the store, when that becomes or stops being 0.
    OutcomesWaiting {
        count: u64,
    },
    /// An event this version does not know (a newer one wrote it), or cannot read.
    /// Never written.
    #[serde(other, skip_serializing)]
    Unknown,
}

impl EventRecord {
    /// The `event` name, as in the file (`"unknown"` for [`EventRecord::Unknown`]).
    pub fn name(&self) -> &'static str {
        match self {
            EventRecord::SupervisorStarted { .. } => "supervisor_started",
            EventRecord::Snapshot { .. } => "snapshot",
            EventRecord::ConfigLoaded { .. } => "config_loaded",
            EventRecord::ConfigRejected { .. } => "config_rejected",
            EventRecord::ChildStarted { .. } => "child_started",
            EventRecord::ChildReady { .. } => "child_ready",
            EventRecord::ChildExited { .. } => "child_exited",
            EventRecord::ChildRestartScheduled { .. } => "child_restart_scheduled",
            EventRecord::GroupGaveUp { .. } => "group_gave_up",
            EventRecord::JobStarted { .. } => "job_started",
            EventRecord::JobFinished { .. } => "job_finished",
            EventRecord::JobRetryScheduled { .. } => "job_retry_scheduled",
            EventRecord::JobDead { .. } => "job_dead",
            EventRecord::SupervisorStopping { .. } => "supervisor_stopping",
            EventRecord::SupervisorStopped { .. } => "supervisor_stopped",
            EventRecord::SupervisorPanicked { .. } => "supervisor_panicked",
            EventRecord::OutcomesWaiting { .. } => "outcomes_waiting",
            EventRecord::Unknown => "unknown",
        }
    }

    /// The job an event is about, if it is one of those announcing an attempt's
    /// outcome (held back with it while the store cannot take it).
    pub fn outcome_of_job(&self) -> Option<JobId> {
        match self {
            EventRecord::JobFinished { job_id, .. }
            | EventRecord::JobRetryScheduled { job_id, .. }
            | EventRecord::JobDead { job_id, .. } => Some(*job_id),
            _ => None,
        }
    }

    /// `config_loaded` (with what a reload changed) or (with `error`) `config_rejected`
    /// of the config at `path`.
    pub fn config(
        path: &Path,
        generation: u64,
        error: Option<String>,
        changes: Vec<String>,
    ) -> EventRecord {
        let path = path.to_string_lossy().into_owned();
        match error {
            None => EventRecord::ConfigLoaded {
                path,
                generation,
                changes,
            },
            Some(error) => EventRecord::ConfigRejected { path, error },
        }
    }
}

/// A child as events name it: its role, and for a worker its group and slot (both null
/// for the grabber).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChildName {
    pub role: ChildKind,
    pub group: Option<String>,
    pub slot: Option<u32>,
}

impl From<&Role> for ChildName {
    fn from(role: &Role) -> ChildName {
        ChildName {
            role: match role {
                Role::Grabber => ChildKind::Grabber,
                Role::Worker { .. } => ChildKind::Worker,
            },
            group: role.group().map(str::to_string),
            slot: role.slot(),
        }
    }
}

/// `role`: what a child is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    Grabber,
    Worker,
}

/// A row of a snapshot's child table (and of `status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildRow {
    #[serde(flatten)]
    pub child: ChildName,
    pub pid: Option<u32>,
    /// When its process started (wall clock): `status` shows uptimes from the snapshot
    /// alone. Older supervisors wrote none.
    #[serde(default)]
    pub started_at: Option<f64>,
    /// The core's lifecycle state (`starting`, `idle`, `busy`, ...), or `status`'s
    /// `gone`.
    pub state: String,
    pub restarts: u32,
    pub job_id: Option<JobId>,
}

impl ChildRow {
    /// The row of a child of the core; `started_at` tells when a pid started.
    pub fn of(c: &ChildView, started_at: &dyn Fn(u32) -> Option<f64>) -> ChildRow {
        ChildRow {
            child: ChildName::from(&c.role),
            pid: c.pid,
            started_at: c.pid.and_then(started_at),
            state: c.state.as_str().to_string(),
            restarts: c.restarts,
            job_id: c.job_id,
        }
    }
}

/// `outcome` of `job_finished`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    Succeeded,
    Failed,
    TimedOut,
    Lost,
    Canceled,
}

impl From<Outcome> for JobOutcome {
    fn from(o: Outcome) -> JobOutcome {
        match o {
            Outcome::Succeeded => JobOutcome::Succeeded,
            Outcome::Failed => JobOutcome::Failed,
            Outcome::TimedOut => JobOutcome::TimedOut,
            Outcome::Lost => JobOutcome::Lost,
            Outcome::Canceled => JobOutcome::Canceled,
        }
    }
}

/// `action` of `group_gave_up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GaveUpAction {
    Exit,
    Disable,
}

impl From<OnExhausted> for GaveUpAction {
    fn from(o: OnExhausted) -> GaveUpAction {
        match o {
            OnExhausted::Exit => GaveUpAction::Exit,
            OnExhausted::Disable => GaveUpAction::Disable,
        }
    }
}

impl From<&Event> for EventRecord {
    fn from(e: &Event) -> EventRecord {
        let code = |end: &Option<ProcessEnd>| end.and_then(ProcessEnd::code);
        let signal = |end: &Option<ProcessEnd>| end.and_then(ProcessEnd::signal);
        match e {
            Event::ChildStarted { role, pid } => EventRecord::ChildStarted {
                child: role.into(),
                pid: *pid,
            },
            Event::ChildExited {
                role,
                pid,
                end,
                expected,
                job_id,
                reason,
                retired,
            } => EventRecord::ChildExited {
                child: role.into(),
                pid: *pid,
                code: code(end),
                signal: signal(end),
                expected: *expected,
                job_id: *job_id,
                reason: reason.clone(),
                retired: *retired,
            },
            Event::ChildRestartScheduled {
                role,
                delay,
                restarts_in_period,
            } => EventRecord::ChildRestartScheduled {
                child: role.into(),
                delay_s: delay.as_secs_f64(),
                restarts_in_period: *restarts_in_period,
            },
            Event::GroupGaveUp {
                group,
                restarts,
                period,
                action,
            } => EventRecord::GroupGaveUp {
                group: group.clone(),
                restarts: *restarts,
                period_s: period.as_secs_f64(),
                action: (*action).into(),
            },
            Event::JobStarted {
                job_id,
                group,
                slot,
                worker_pid,
                attempt,
            } => EventRecord::JobStarted {
                job_id: *job_id,
                group: group.clone(),
                slot: *slot,
                worker_pid: *worker_pid,
                attempt: *attempt,
            },
            Event::JobFinished {
                job_id,
                group,
                attempt,
                outcome,
                end,
                duration,
                start_error,
                reason,
            } => EventRecord::JobFinished {
                job_id: *job_id,
                group: group.clone(),
                attempt: *attempt,
                outcome: (*outcome).into(),
                exit_code: code(end),
                signal: signal(end),
                duration_s: duration.as_secs_f64(),
                start_error: start_error.clone(),
                reason: reason.clone(),
            },
            Event::JobRetryScheduled {
                job_id,
                attempt,
                delay,
            } => EventRecord::JobRetryScheduled {
                job_id: *job_id,
                attempt: *attempt,
                delay_s: delay.as_secs_f64(),
            },
            Event::JobDead {
                job_id,
                attempts,
                reason,
            } => EventRecord::JobDead {
                job_id: *job_id,
                attempts: *attempts,
                reason: reason.clone(),
            },
            Event::SupervisorStopping { reason } => EventRecord::SupervisorStopping {
                reason: reason.clone(),
            },
            Event::SupervisorStopped { code } => EventRecord::SupervisorStopped { code: *code },
        }
    }
}

/// The outcomes journal keeps held-back events as `[name, {fields}]` pairs (the format
/// of the versions before [`EventRecord`]); this reads and writes them so.
pub mod as_pairs {
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::{Map, Value};

    use super::EventRecord;

    pub fn serialize<S: Serializer>(records: &[EventRecord], s: S) -> Result<S::Ok, S::Error> {
        let mut pairs = Vec::with_capacity(records.len());
        // An unknown record cannot be written to the events file either.
        for r in records.iter().filter(|r| **r != EventRecord::Unknown) {
            let Value::Object(mut fields) = serde_json::to_value(r).map_err(S::Error::custom)?
            else {
                return Err(S::Error::custom("an event record is not a JSON object"));
            };
            fields.remove("event");
            pairs.push((r.name(), fields));
        }
        pairs.serialize(s)
    }

    /// An event that cannot be read is [`EventRecord::Unknown`]: its outcome still
    /// counts (the whole entry is not dropped for it).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EventRecord>, D::Error> {
        let pairs = Vec::<(String, Map<String, Value>)>::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|(name, mut fields)| {
                fields.insert("event".into(), Value::String(name));
                serde_json::from_value(Value::Object(fields)).unwrap_or(EventRecord::Unknown)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
