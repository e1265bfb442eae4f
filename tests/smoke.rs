//! The shortest path through the system: run, submit, succeed, stop.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[test]
fn a_submitted_job_runs_and_the_supervisor_stops_cleanly() {
    let sb = Sandbox::new(&json!({"groups": [{"name": "a", "max_workers": 1}]}));
    let mut sv = sb.start(&[]);
    let id = sb.submit(&[
        "--group",
        "a",
        "--",
        "sh",
        "-c",
        "echo out-$SUPERVISOR_JOB_ID",
    ]);
    let job = sb.wait_job(id, &["succeeded"], Duration::from_secs(10));
    assert_eq!(job["exit_code"], 0);
    let log = std::fs::read_to_string(job["log"].as_str().unwrap()).unwrap();
    assert_eq!(log, format!("out-{id}\n"));
    sv.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(10)), Some(0));
    let events = sv.events();
    assert_eq!(events.first().unwrap()["event"], "snapshot");
    assert_eq!(events.last().unwrap()["event"], "supervisor_stopped");
    sv.assert_nothing_left(Duration::from_secs(2));
}
