//! The child table as the events file tells it: the last snapshot, then every event
//! after it that changes a child.

use std::collections::BTreeMap;

use crate::record::{ChildKind, ChildName, ChildRow, EventLine, EventRecord};

/// The child table and supervisor facts rebuilt from the events file.
#[derive(Debug, Default, Clone)]
pub(crate) struct Replay {
    pub(crate) supervisor_pid: Option<u32>,
    /// A row per child (grabber first, then workers by group and slot), with
    /// `started_at` (wall clock) when known.
    pub(crate) children: BTreeMap<ChildName, ChildRow>,
    /// Outcomes the supervisor holds because the store refused them, as its last word on
    /// them says.
    pub(crate) outcomes_waiting: u64,
    /// The supervisor said it is stopping: its children's rows stay, to be shown `gone`.
    stopping: bool,
}

/// A row for a child the table has not seen yet.
fn new_row(child: &ChildName) -> ChildRow {
    ChildRow {
        child: child.clone(),
        pid: None,
        started_at: None,
        state: String::new(),
        restarts: 0,
        job_id: None,
    }
}

/// The child table as `events` (the current events file, in order) leave it.
pub(crate) fn replay(events: &[EventLine]) -> Replay {
    let start = events
        .iter()
        .rposition(|e| matches!(e.record, EventRecord::Snapshot { .. }))
        .unwrap_or(0);
    let mut r = Replay::default();
    for e in &events[start..] {
        r.apply(e);
    }
    r
}

impl Replay {
    /// The table after one more event (a snapshot replaces it whole).
    pub(crate) fn apply(&mut self, e: &EventLine) {
        let r = self;
        match &e.record {
            EventRecord::Snapshot {
                supervisor_pid,
                children,
                outcomes_waiting,
                ..
            } => {
                r.supervisor_pid = Some(*supervisor_pid);
                r.outcomes_waiting = *outcomes_waiting;
                r.children = (children.iter())
                    .map(|c| (c.child.clone(), c.clone()))
                    .collect();
            }
            EventRecord::OutcomesWaiting { count } => r.outcomes_waiting = *count,
            EventRecord::SupervisorStarted { pid, .. } => {
                r.supervisor_pid = Some(*pid);
                r.stopping = false;
            }
            EventRecord::SupervisorStopping { .. } => r.stopping = true,
            EventRecord::ChildStarted { child, pid } => {
                let row = (r.children.entry(child.clone())).or_insert_with(|| new_row(child));
                row.pid = Some(*pid);
                row.state = "starting".into();
                row.job_id = None;
                row.started_at = Some(e.ts);
            }
            EventRecord::ChildReady { child, pid } => {
                let row = (r.children.entry(child.clone())).or_insert_with(|| new_row(child));
                row.pid = *pid;
                row.state = match child.role {
                    ChildKind::Grabber => "ready",
                    ChildKind::Worker => "idle",
                }
                .into();
                row.job_id = None;
            }
            // Retired while the supervisor runs (a pool shrunk, a group removed or given
            // up), or crashed in a slot that is gone: gone from the table, as from the
            // supervisor's own.
            EventRecord::ChildExited {
                child,
                expected,
                retired,
                ..
            } if (*expected || *retired) && !r.stopping => {
                r.children.remove(child);
            }
            EventRecord::ChildExited { child, .. } => {
                if let Some(row) = r.children.get_mut(child) {
                    row.state = "exited".into();
                    row.job_id = None;
                    row.started_at = None;
                }
            }
            EventRecord::ChildRestartScheduled { child, .. } => {
                if let Some(row) = r.children.get_mut(child) {
                    row.restarts = row.restarts.saturating_add(1);
                }
            }
            EventRecord::JobStarted {
                job_id,
                group,
                slot,
                ..
            } => {
                let worker = ChildName {
                    role: ChildKind::Worker,
                    group: Some(group.clone()),
                    slot: Some(*slot),
                };
                if let Some(row) = r.children.get_mut(&worker) {
                    row.state = "busy".into();
                    row.job_id = Some(*job_id);
                }
            }
            EventRecord::JobFinished { job_id, .. } => {
                for row in r.children.values_mut() {
                    if row.job_id == Some(*job_id) && row.state == "busy" {
                        row.state = "idle".into();
                        row.job_id = None;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, record: EventRecord) -> EventLine {
        EventLine {
            seq,
            ts: seq as f64,
            record,
        }
    }

    fn worker(slot: u32) -> ChildName {
        ChildName {
            role: ChildKind::Worker,
            group: Some("g".into()),
            slot: Some(slot),
        }
    }

    #[test]
    fn the_child_table_is_the_last_snapshot_and_what_followed_it() {
        let grabber = ChildName {
            role: ChildKind::Grabber,
            group: None,
            slot: None,
        };
        let mut old_row = new_row(&worker(9));
        old_row.state = "idle".into();
        let mut snap_row = new_row(&worker(0));
        snap_row.state = "idle".into();
        snap_row.pid = Some(10);
        let events = [
            line(
                1,
                EventRecord::Snapshot {
                    supervisor_pid: 1,
                    children: vec![old_row],
                    generation: 1,
                    outcomes_waiting: 0,
                },
            ),
            line(
                2,
                EventRecord::Snapshot {
                    supervisor_pid: 5,
                    children: vec![snap_row],
                    generation: 1,
                    outcomes_waiting: 0,
                },
            ),
            line(
                3,
                EventRecord::ChildStarted {
                    child: grabber.clone(),
                    pid: 11,
                },
            ),
            line(
                4,
                EventRecord::ChildReady {
                    child: grabber.clone(),
                    pid: Some(11),
                },
            ),
            line(
                5,
                EventRecord::JobStarted {
                    job_id: 7,
                    group: "g".into(),
                    slot: 0,
                    worker_pid: 10,
                    attempt: 1,
                },
            ),
            line(
                6,
                EventRecord::ChildStarted {
                    child: worker(1),
                    pid: 12,
                },
            ),
            line(7, EventRecord::Unknown),
            line(
                8,
                EventRecord::ChildExited {
                    child: worker(1),
                    pid: Some(12),
                    code: Some(1),
                    signal: None,
                    expected: false,
                    job_id: None,
                    reason: None,
                    retired: false,
                },
            ),
            line(
                9,
                EventRecord::ChildRestartScheduled {
                    child: worker(1),
                    delay_s: 0.1,
                    restarts_in_period: 1,
                },
            ),
        ];
        let r = replay(&events);
        assert_eq!(r.supervisor_pid, Some(5));
        let rows: Vec<_> = (r.children.values())
            .map(|c| {
                (
                    c.child.slot,
                    c.pid,
                    c.state.as_str(),
                    c.restarts,
                    c.job_id,
                    c.started_at,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (None, Some(11), "ready", 0, None, Some(3.0)),
                (Some(0), Some(10), "busy", 0, Some(7), None),
                (Some(1), Some(12), "exited", 1, None, None),
            ]
        );
        let finished = line(
            10,
            EventRecord::JobFinished {
                job_id: 7,
                group: "g".into(),
                attempt: 1,
                outcome: crate::record::JobOutcome::Succeeded,
                exit_code: Some(0),
                signal: None,
                duration_s: 1.0,
                start_error: None,
                reason: None,
            },
        );
        let mut more = events.to_vec();
        more.push(finished);
        let r = replay(&more);
        assert_eq!(r.children[&worker(0)].state, "idle");
        assert_eq!(r.children[&worker(0)].job_id, None);
    }

    #[test]
    fn a_child_retired_while_running_leaves_the_table_and_one_stopped_stays() {
        let started = |seq, slot, pid| {
            line(
                seq,
                EventRecord::ChildStarted {
                    child: worker(slot),
                    pid,
                },
            )
        };
        let exited = |seq, slot, pid, expected, retired| {
            line(
                seq,
                EventRecord::ChildExited {
                    child: worker(slot),
                    pid: Some(pid),
                    code: Some(0),
                    signal: None,
                    expected,
                    job_id: None,
                    reason: None,
                    retired,
                },
            )
        };
        let mut events = vec![
            started(1, 0, 10),
            started(2, 1, 11),
            started(3, 2, 12),
            started(4, 3, 13),
        ];
        // Slot 1 retired by a reload; slot 2 crashed (its row waits for its restart);
        // slot 3 crashed while retiring (no restart follows).
        events.push(exited(5, 1, 11, true, false));
        events.push(exited(6, 2, 12, false, false));
        events.push(exited(7, 3, 13, false, true));
        let r = replay(&events);
        let slots: Vec<_> = r.children.keys().map(|c| c.slot).collect();
        assert_eq!(slots, [Some(0), Some(2)]);
        assert_eq!(r.children[&worker(2)].state, "exited");
        // Stopping: every child exits as expected, and stays for `status` to show gone.
        events.push(line(
            8,
            EventRecord::SupervisorStopping {
                reason: "SIGTERM".into(),
            },
        ));
        events.push(exited(9, 0, 10, true, false));
        let r = replay(&events);
        assert_eq!(r.children[&worker(0)].state, "exited");
    }
}
