//! How the last run of the supervisor ended, and when, as its events tell it (for
//! `status` when no supervisor runs).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::commands::events::{lines_from, TAIL_BYTES};
use crate::events_file::{read_line_lossy, rotated};
use crate::record::{EventLine, EventRecord};

/// How the last run of the supervisor ended, as its events tell it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ending {
    /// No event at all: no supervisor has run here.
    NeverStarted,
    /// The run ended with `supervisor_stopped` (with its exit code).
    Cleanly { code: Option<i64> },
    /// No `supervisor_stopped` after its last `supervisor_started`: killed, or gone
    /// without a trace.
    Died,
    /// The run recorded a panic (`supervisor_panicked`) before it went.
    Crashed { message: String, location: String },
}

impl Ending {
    /// `status --json`'s `supervisor.stopped`.
    pub(super) fn label(&self) -> Option<&'static str> {
        match self {
            Ending::NeverStarted => None,
            Ending::Cleanly { .. } => Some("cleanly"),
            Ending::Died => Some("died"),
            Ending::Crashed { .. } => Some("crashed"),
        }
    }
}

/// How the last run ended, from `events` in order (the end of the last run among
/// them): what follows the last `supervisor_started`. A panic outranks a stop.
fn ending_of(events: &[EventLine]) -> Ending {
    if events.is_empty() {
        return Ending::NeverStarted;
    }
    let from = events
        .iter()
        .rposition(|e| is_start(&e.record))
        .unwrap_or(0);
    let mut ending = Ending::Died;
    for e in &events[from..] {
        match &e.record {
            EventRecord::SupervisorPanicked {
                message, location, ..
            } => {
                ending = Ending::Crashed {
                    message: message.clone(),
                    location: location.clone(),
                };
            }
            EventRecord::SupervisorStopped { code }
                if !matches!(ending, Ending::Crashed { .. }) =>
            {
                ending = Ending::Cleanly {
                    code: Some(i64::from(*code)),
                };
            }
            _ => {}
        }
    }
    ending
}

fn is_start(record: &EventRecord) -> bool {
    matches!(record, EventRecord::SupervisorStarted { .. })
}

/// The pid of a snapshot.
fn snapshot_pid(line: &EventLine) -> Option<u32> {
    match line.record {
        EventRecord::Snapshot { supervisor_pid, .. } => Some(supervisor_pid),
        _ => None,
    }
}

/// How the last run ended and the time of its last event, from the current events
/// file (`current`, read from `path`) and, when needed, the end of the previous one.
///
/// Each run starts a new file (a snapshot, then `supervisor_started`). A current file
/// without `supervisor_started` began with a rotation: when its snapshot names the pid
/// that `<path>.1` begins with, that is the same run, and its last events (a
/// `supervisor_stopped` that pushed the file over its size, say) may be at the end of
/// `<path>.1`.
pub(super) fn last_run(path: &Path, current: &[EventLine]) -> (Ending, Option<f64>) {
    let mut events = Vec::new();
    if !current.iter().any(|e| is_start(&e.record)) {
        let older = rotated(path, 1);
        let same_run = match (first_event(&older), current.first()) {
            (Some(first), Some(top)) => {
                snapshot_pid(&first).is_some() && snapshot_pid(&first) == snapshot_pid(top)
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        if same_run {
            events = tail_events(&older);
        }
    }
    events.extend(current.iter().cloned());
    let last_at = events.last().map(|e| e.ts);
    (ending_of(&events), last_at)
}

/// The first event of an events file.
fn first_event(path: &Path) -> Option<EventLine> {
    let mut line = String::new();
    read_line_lossy(&mut BufReader::new(File::open(path).ok()?), &mut line).ok()?;
    EventLine::parse(line.trim_end())
}

/// The events of the last [`TAIL_BYTES`] of an events file.
fn tail_events(path: &Path) -> Vec<EventLine> {
    let tail = File::open(path).and_then(|mut file| {
        let from = file.metadata()?.len().saturating_sub(TAIL_BYTES);
        lines_from(&mut file, from)
    });
    tail.unwrap_or_default()
        .iter()
        .filter_map(|l| EventLine::parse(l))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::events_file::read_events;

    /// Events lines from `(event, extra fields)`, `seq` from `first` and `ts` = `seq`.
    fn run_lines(first: u64, events: &[(&str, Value)]) -> String {
        events
            .iter()
            .enumerate()
            .map(|(i, (name, extra))| {
                let mut v = json!({"seq": first + i as u64, "ts": (first + i as u64) as f64, "event": name});
                for (k, x) in extra.as_object().into_iter().flatten() {
                    v[k] = x.clone();
                }
                format!("{v}\n")
            })
            .collect()
    }

    #[test]
    fn the_last_run_ends_as_its_last_events_say() {
        let started = ("supervisor_started", json!({"pid": 7}));
        let snapshot = ("snapshot", json!({"supervisor_pid": 7, "children": []}));
        let stopped = ("supervisor_stopped", json!({"code": 0}));
        let panicked = (
            "supervisor_panicked",
            json!({"message": "boom", "location": "x.rs:1:2"}),
        );
        let job = ("job_started", json!({"job_id": 1}));
        let parse = |text: String| -> Vec<EventLine> {
            text.lines().filter_map(EventLine::parse).collect()
        };
        let ending = |evs: &[(&str, Value)]| ending_of(&parse(run_lines(1, evs)));
        assert_eq!(ending(&[]), Ending::NeverStarted);
        assert_eq!(
            ending(&[snapshot.clone(), started.clone(), job.clone()]),
            Ending::Died
        );
        assert_eq!(
            ending(&[snapshot.clone(), started.clone(), stopped.clone()]),
            Ending::Cleanly { code: Some(0) }
        );
        let crashed = Ending::Crashed {
            message: "boom".into(),
            location: "x.rs:1:2".into(),
        };
        // A panic outranks the stop a panicking supervisor may still write.
        assert_eq!(
            ending(&[started.clone(), panicked.clone(), stopped.clone()]),
            crashed
        );
        // Only the last run counts.
        assert_eq!(
            ending(&[
                started.clone(),
                panicked.clone(),
                started.clone(),
                job.clone()
            ]),
            Ending::Died
        );

        // A stop that rotated the file: the new file holds only a snapshot of the same
        // supervisor, the stop is at the end of `.1`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let older = [
            snapshot.clone(),
            started.clone(),
            job.clone(),
            stopped.clone(),
        ];
        std::fs::write(rotated(&path, 1), run_lines(1, &older)).unwrap();
        std::fs::write(&path, run_lines(5, std::slice::from_ref(&snapshot))).unwrap();
        let current = read_events(&path).unwrap();
        assert_eq!(
            last_run(&path, &current),
            (Ending::Cleanly { code: Some(0) }, Some(5.0))
        );
        // ... but not when the new file is another supervisor's, dead before it wrote
        // `supervisor_started`.
        let other = ("snapshot", json!({"supervisor_pid": 8, "children": []}));
        std::fs::write(&path, run_lines(5, &[other])).unwrap();
        let current = read_events(&path).unwrap();
        assert_eq!(last_run(&path, &current), (Ending::Died, Some(5.0)));
        // A run that started in this file ends in it.
        std::fs::write(&path, run_lines(5, &[snapshot, started, job])).unwrap();
        let current = read_events(&path).unwrap();
        assert_eq!(last_run(&path, &current), (Ending::Died, Some(7.0)));
    }
}
