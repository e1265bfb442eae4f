//! The child table as the events file tells it: the last snapshot, then every event
//! after it that changes a child.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A child as events name it: (role, group, slot).
type ChildKey = (String, Option<String>, Option<u64>);

/// The child table and supervisor facts rebuilt from the events file.
#[derive(Debug, Default)]
pub(in crate::commands) struct Replay {
    pub(in crate::commands) supervisor_pid: Option<u64>,
    /// A row per child, with `started_at` (wall clock) when known.
    pub(in crate::commands) children: BTreeMap<ChildKey, Value>,
}

fn key_of(e: &Value) -> ChildKey {
    (
        e["role"].as_str().unwrap_or("worker").to_string(),
        e["group"].as_str().map(str::to_string),
        e["slot"].as_u64(),
    )
}

/// The child table as `events` (the current events file, in order) leave it.
pub(in crate::commands) fn replay(events: &[Value]) -> Replay {
    let start = events
        .iter()
        .rposition(|e| e["event"] == "snapshot")
        .unwrap_or(0);
    let mut r = Replay::default();
    for e in &events[start..] {
        match e["event"].as_str().unwrap_or("") {
            "snapshot" => {
                r.supervisor_pid = e["supervisor_pid"].as_u64();
                r.children.clear();
                for c in e["children"].as_array().into_iter().flatten() {
                    let mut row = c.clone();
                    // Rows carry their child's start; older supervisors wrote none.
                    if row.get("started_at").is_none() {
                        row["started_at"] = Value::Null;
                    }
                    r.children.insert(key_of(c), row);
                }
            }
            "supervisor_started" => {
                r.supervisor_pid = e["pid"].as_u64();
            }
            "child_started" | "child_ready" => {
                let k = key_of(e);
                let row = r.children.entry(k.clone()).or_insert_with(|| {
                    json!({"role": k.0, "group": k.1, "slot": k.2, "restarts": 0, "job_id": null, "started_at": null})
                });
                row["pid"] = e["pid"].clone();
                row["state"] = json!(if e["event"] == "child_ready" {
                    if k.0 == "grabber" {
                        "ready"
                    } else {
                        "idle"
                    }
                } else {
                    "starting"
                });
                row["job_id"] = Value::Null;
                if e["event"] == "child_started" {
                    row["started_at"] = e["ts"].clone();
                }
            }
            "child_exited" => {
                if let Some(row) = r.children.get_mut(&key_of(e)) {
                    row["state"] = json!("exited");
                    row["job_id"] = Value::Null;
                    row["started_at"] = Value::Null;
                }
            }
            "child_restart_scheduled" => {
                if let Some(row) = r.children.get_mut(&key_of(e)) {
                    row["restarts"] = json!(row["restarts"].as_u64().unwrap_or(0) + 1);
                }
            }
            "job_started" => {
                let k = (
                    "worker".to_string(),
                    e["group"].as_str().map(str::to_string),
                    e["slot"].as_u64(),
                );
                if let Some(row) = r.children.get_mut(&k) {
                    row["state"] = json!("busy");
                    row["job_id"] = e["job_id"].clone();
                }
            }
            "job_finished" => {
                for row in r.children.values_mut() {
                    if row["job_id"] == e["job_id"] && row["state"] == "busy" {
                        row["state"] = json!("idle");
                        row["job_id"] = Value::Null;
                    }
                }
            }
            _ => {}
        }
    }
    r
}
