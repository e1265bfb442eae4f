//! Every event of the contract is a record that reads back as written; lines of other
//! versions (unknown events, extra or missing optional fields) still read.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use supervisor_core::spec::OnExhausted;
use supervisor_core::supervision::{Event, Outcome, ProcessEnd, Role};

use super::*;
use crate::events_file::{read_events, EventsFile};

/// The events of the contract's table, for when `contract.md` is not next to the
/// workspace (it is the project's `shared/contract.md`).
const CONTRACT_TABLE: &[&str] = &[
    "supervisor_started",
    "snapshot",
    "config_loaded",
    "config_rejected",
    "child_started",
    "child_exited",
    "child_restart_scheduled",
    "group_gave_up",
    "job_started",
    "job_finished",
    "job_retry_scheduled",
    "job_dead",
    "supervisor_stopping",
    "supervisor_stopped",
];

/// The events the contract names: the first column of its events table, and every
/// "event `name`" of its text (the Additions). `None` when the contract is not found.
fn contract_events() -> Option<BTreeSet<String>> {
    let path = std::env::var_os("SUPERVISOR_CONTRACT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/contract.md"));
    let text = std::fs::read_to_string(path).ok()?;
    let mut names = BTreeSet::new();
    let ticked = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_string)
            .collect()
    };
    let section = text.split("\n## ").find(|s| s.starts_with("Events file"))?;
    let mut in_table = false;
    for line in section.lines() {
        if line.starts_with("| event ") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if in_table {
            let first = line.split('|').nth(1).unwrap_or_default();
            names.extend(ticked(first));
        }
    }
    for part in text.split("event `").skip(1) {
        names.extend(ticked(&format!("`{part}")).into_iter().take(1));
    }
    Some(names)
}

fn worker() -> ChildName {
    ChildName {
        role: ChildKind::Worker,
        group: Some("x86_64".into()),
        slot: Some(2),
    }
}

/// One record of every kind, with every optional field both set and not.
fn examples() -> Vec<EventRecord> {
    let grabber = ChildName {
        role: ChildKind::Grabber,
        group: None,
        slot: None,
    };
    vec![
        EventRecord::SupervisorStarted {
            pid: 41,
            config: "/etc/supervisor.json".into(),
            version: "0.1.0".into(),
        },
        EventRecord::Snapshot {
            supervisor_pid: 41,
            children: vec![
                ChildRow {
                    child: grabber.clone(),
                    pid: Some(42),
                    started_at: Some(1_764_000_000.5),
                    state: "ready".into(),
                    restarts: 0,
                    job_id: None,
                },
                ChildRow {
                    child: worker(),
                    pid: None,
                    started_at: None,
                    state: "exited".into(),
                    restarts: 3,
                    job_id: None,
                },
                ChildRow {
                    child: worker(),
                    pid: Some(44),
                    started_at: Some(1_764_000_001.25),
                    state: "busy".into(),
                    restarts: 1,
                    job_id: Some(17),
                },
            ],
            generation: 2,
            outcomes_waiting: 1,
        },
        EventRecord::ConfigLoaded {
            path: "supervisor.json".into(),
            generation: 1,
            changes: vec![],
        },
        EventRecord::ConfigLoaded {
            path: "supervisor.json".into(),
            generation: 2,
            changes: vec!["group arm64 added".into()],
        },
        EventRecord::ConfigRejected {
            path: "supervisor.json".into(),
            error: "groups[1].max_workers: must be >= 0".into(),
        },
        EventRecord::ChildStarted {
            child: grabber.clone(),
            pid: 42,
        },
        EventRecord::ChildReady {
            child: worker(),
            pid: Some(44),
        },
        EventRecord::ChildExited {
            child: worker(),
            pid: Some(44),
            code: None,
            signal: Some(9),
            expected: false,
            job_id: Some(17),
            reason: None,
            retired: true,
        },
        EventRecord::ChildExited {
            child: grabber,
            pid: None,
            code: None,
            signal: None,
            expected: false,
            job_id: None,
            reason: Some("cannot spawn: out of memory".into()),
            retired: false,
        },
        EventRecord::ChildRestartScheduled {
            child: worker(),
            delay_s: 0.1,
            restarts_in_period: 2,
        },
        EventRecord::GroupGaveUp {
            group: Some("x86_64".into()),
            restarts: 5,
            period_s: 60.0,
            action: GaveUpAction::Disable,
        },
        EventRecord::GroupGaveUp {
            group: None,
            restarts: 5,
            period_s: 60.0,
            action: GaveUpAction::Exit,
        },
        EventRecord::JobStarted {
            job_id: 17,
            group: "x86_64".into(),
            slot: 2,
            worker_pid: 44,
            attempt: 1,
        },
        EventRecord::JobFinished {
            job_id: 17,
            group: "x86_64".into(),
            attempt: 1,
            outcome: JobOutcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            duration_s: 1.234,
            start_error: None,
            reason: None,
        },
        EventRecord::JobFinished {
            job_id: 18,
            group: "x86_64".into(),
            attempt: 3,
            outcome: JobOutcome::Failed,
            exit_code: None,
            signal: None,
            duration_s: 0.0,
            start_error: Some("No such file or directory".into()),
            reason: Some("killed by the OOM killer".into()),
        },
        EventRecord::JobRetryScheduled {
            job_id: 18,
            attempt: 3,
            delay_s: 2.5,
        },
        EventRecord::JobDead {
            job_id: 18,
            attempts: 3,
            reason: None,
        },
        EventRecord::JobDead {
            job_id: 19,
            attempts: 3,
            reason: Some("its supervisor died while running it 3 times".into()),
        },
        EventRecord::SupervisorStopping {
            reason: "SIGTERM".into(),
        },
        EventRecord::SupervisorStopped { code: 3 },
        EventRecord::SupervisorPanicked {
            message: "boom\nsecond line".into(),
            location: "bin/supervisor/run.rs:1:2".into(),
            thread: "main".into(),
        },
        EventRecord::OutcomesWaiting { count: 2 },
    ]
}

#[test]
fn every_event_of_the_contract_round_trips() {
    let contract = contract_events().unwrap_or_else(|| {
        eprintln!("contract.md not found: checking the events of its table as of this test");
        CONTRACT_TABLE.iter().map(|s| s.to_string()).collect()
    });
    assert!(contract.len() >= CONTRACT_TABLE.len(), "{contract:?}");
    let examples = examples();
    let have: BTreeSet<&str> = examples.iter().map(EventRecord::name).collect();
    for name in &contract {
        assert!(
            have.contains(name.as_str()),
            "the contract's event `{name}` has no EventRecord (or no example here)"
        );
    }
    // Through the events file itself: written as the supervisor writes, read back as
    // `status` reads, each record equal.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut file = EventsFile::open(&path, u64::MAX, 1).unwrap();
    for r in &examples {
        file.write(r.clone()).unwrap();
    }
    let back = read_events(&path).unwrap();
    let records: Vec<EventRecord> = back.iter().map(|l| l.record.clone()).collect();
    assert_eq!(records, examples);
    let seqs: Vec<u64> = back.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=examples.len() as u64).collect::<Vec<_>>());
    // Each line: `seq`, `ts` and `event` first, the name as the contract spells it.
    let text = std::fs::read_to_string(&path).unwrap();
    for (line, r) in text.lines().zip(&examples) {
        let prefix = format!(r#","event":"{}""#, r.name());
        let after_ts = line.find(r#","event":"#).unwrap();
        assert!(line.starts_with(r#"{"seq":"#), "{line}");
        assert!(line[after_ts..].starts_with(&prefix), "{line}");
        assert_eq!(EventLine::parse(line).map(|l| l.record).as_ref(), Some(r));
    }
}

/// The fields of a record as JSON, `seq`, `ts` and `event` aside.
fn fields(r: &EventRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap();
    v.as_object_mut().unwrap().remove("event");
    v
}

#[test]
fn core_events_keep_the_field_names_of_the_file() {
    let worker = Role::Worker {
        group: "g".into(),
        slot: 1,
    };
    let cases = [
        (
            Event::ChildStarted {
                role: Role::Grabber,
                pid: 5,
            },
            json!({"role": "grabber", "group": null, "slot": null, "pid": 5}),
        ),
        (
            Event::ChildExited {
                role: worker.clone(),
                pid: Some(6),
                end: Some(ProcessEnd::Exited(2)),
                expected: true,
                job_id: Some(3),
                reason: None,
                retired: false,
            },
            json!({"role": "worker", "group": "g", "slot": 1, "pid": 6, "code": 2,
                   "signal": null, "expected": true, "job_id": 3}),
        ),
        (
            Event::ChildExited {
                role: worker.clone(),
                pid: None,
                end: None,
                expected: false,
                job_id: None,
                reason: Some("spawn failed".into()),
                retired: true,
            },
            json!({"role": "worker", "group": "g", "slot": 1, "pid": null, "code": null,
                   "signal": null, "expected": false, "job_id": null,
                   "reason": "spawn failed", "retired": true}),
        ),
        (
            Event::ChildRestartScheduled {
                role: worker,
                delay: Duration::from_millis(250),
                restarts_in_period: 4,
            },
            json!({"role": "worker", "group": "g", "slot": 1, "delay_s": 0.25,
                   "restarts_in_period": 4}),
        ),
        (
            Event::GroupGaveUp {
                group: None,
                restarts: 5,
                period: Duration::from_secs(60),
                action: OnExhausted::Exit,
            },
            json!({"group": null, "restarts": 5, "period_s": 60.0, "action": "exit"}),
        ),
        (
            Event::JobStarted {
                job_id: 3,
                group: "g".into(),
                slot: 1,
                worker_pid: 6,
                attempt: 2,
            },
            json!({"job_id": 3, "group": "g", "slot": 1, "worker_pid": 6, "attempt": 2}),
        ),
        (
            Event::JobFinished {
                job_id: 3,
                group: "g".into(),
                attempt: 2,
                outcome: Outcome::TimedOut,
                end: Some(ProcessEnd::Signaled(15)),
                duration: Duration::from_millis(1500),
                start_error: None,
                reason: None,
            },
            json!({"job_id": 3, "group": "g", "attempt": 2, "outcome": "timed_out",
                   "exit_code": null, "signal": 15, "duration_s": 1.5,
                   "start_error": null}),
        ),
        (
            Event::JobRetryScheduled {
                job_id: 3,
                attempt: 2,
                delay: Duration::from_secs(1),
            },
            json!({"job_id": 3, "attempt": 2, "delay_s": 1.0}),
        ),
        (
            Event::JobDead {
                job_id: 3,
                attempts: 3,
                reason: Some("r".into()),
            },
            json!({"job_id": 3, "attempts": 3, "reason": "r"}),
        ),
        (
            Event::SupervisorStopping {
                reason: "SIGTERM".into(),
            },
            json!({"reason": "SIGTERM"}),
        ),
        (Event::SupervisorStopped { code: 0 }, json!({"code": 0})),
    ];
    for (event, want) in cases {
        assert_eq!(fields(&EventRecord::from(&event)), want, "{event:?}");
    }
}

#[test]
fn lines_of_other_versions_still_read() {
    let parse = |s: &str| EventLine::parse(s);
    // An event this version does not know: read, as unknown, with its seq and ts.
    let unknown = parse(r#"{"seq":9,"ts":1.5,"event":"job_paused","job_id":3,"by":"op"}"#);
    assert_eq!(
        unknown,
        Some(EventLine {
            seq: 9,
            ts: 1.5,
            record: EventRecord::Unknown
        })
    );
    // A known event with fields added by a newer version.
    let extra = parse(
        r#"{"seq":10,"ts":2.0,"event":"job_dead","job_id":3,"attempts":2,"host":"h","x":{"y":[1]}}"#,
    );
    assert_eq!(
        extra.map(|l| l.record),
        Some(EventRecord::JobDead {
            job_id: 3,
            attempts: 2,
            reason: None
        })
    );
    // A known event without what older versions did not write (a snapshot's
    // `generation`, `outcomes_waiting` and rows' `started_at`; a panic's `thread`).
    let old = parse(
        r#"{"seq":1,"ts":3.0,"event":"snapshot","supervisor_pid":7,"children":[{"role":"worker","group":"g","slot":0,"pid":8,"state":"idle","restarts":0,"job_id":null}]}"#,
    );
    let Some(EventLine {
        record:
            EventRecord::Snapshot {
                children,
                generation: 0,
                outcomes_waiting: 0,
                ..
            },
        ..
    }) = old
    else {
        panic!("{old:?}");
    };
    assert_eq!(children[0].started_at, None);
    assert_eq!(children[0].child.slot, Some(0));
    let panicked =
        parse(r#"{"seq":2,"ts":4,"event":"supervisor_panicked","message":"m","location":"l"}"#);
    assert!(
        matches!(panicked.as_ref().map(|l| &l.record), Some(EventRecord::SupervisorPanicked { thread, .. }) if thread.is_empty()),
        "{panicked:?}"
    );
    // A known event whose fields this version cannot read: unknown, never an error.
    let damaged = parse(r#"{"seq":11,"ts":5.0,"event":"job_started","job_id":"x"}"#);
    assert_eq!(
        damaged.map(|l| (l.seq, l.record)),
        Some((11, EventRecord::Unknown))
    );
    // No event at all: blank, torn, not JSON, without seq or ts, of another shape.
    for line in [
        "",
        "{\"seq\":12,\"ts\":6.0,\"ev",
        "garbage",
        r#"{"event":"job_dead","job_id":3,"attempts":2}"#,
        r#"{"seq":-1,"ts":1.0,"event":"job_dead"}"#,
        "[1,2]",
        "[1,2,\"job_dead\",1,1]",
        "null",
    ] {
        assert_eq!(parse(line), None, "{line}");
    }
    assert_eq!(EventLine::seq_of(r#"{"seq":4,"event":"x"}"#), Some(4));
    assert_eq!(EventLine::seq_of("[4]"), None);
    // Unknown records are never written.
    assert!(serde_json::to_string(&EventRecord::Unknown).is_err());
}

#[test]
fn the_journal_pairs_keep_every_record() {
    #[derive(Serialize, Deserialize)]
    struct Held {
        #[serde(with = "as_pairs")]
        events: Vec<EventRecord>,
    }
    let held = Held { events: examples() };
    let text = serde_json::to_string(&held).unwrap();
    assert!(
        text.starts_with(r#"{"events":[["supervisor_started",{"#),
        "{text}"
    );
    let back: Held = serde_json::from_str(&text).unwrap();
    assert_eq!(back.events, examples());
}
