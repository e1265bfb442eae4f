//! What `supervisor` survives: hostile values, jobs that leave processes behind, a store
//! that fails. Each numbered repro of the issue "Nothing a user submits takes it down, and
//! nothing a job starts outlives it" is a test here (or in `down.rs`).

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::{alive, wait_until, Sandbox};

const LONG: Duration = Duration::from_secs(20);

fn config(workers: u32) -> Value {
    json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 2},
        "shutdown_grace_s": 1,
        "groups": [{
            "name": "a",
            "max_workers": workers,
            "match": {},
            "retry_backoff": {"initial_s": 0.05, "max_s": 0.05, "jitter": 0},
            "restart": {"backoff": {"initial_s": 0.05, "max_s": 0.2, "jitter": 0}},
        }],
    })
}

/// The pid a job wrote to `name` in the sandbox, once it has.
fn pid_in(sb: &Sandbox, name: &str) -> u32 {
    let path = sb.path().join(name);
    let mut pid = None;
    wait_until(LONG, || {
        pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        pid.is_some()
    })
    .unwrap_or_else(|_| panic!("no pid in {}", path.display()));
    pid.unwrap()
}

fn gone(pid: u32) -> bool {
    !alive(pid)
}

/// A job that starts a daemon in a session of its own (its pid in `daemon.pid`), then
/// runs `rest`.
fn daemon_job(sb: &Sandbox, extra: &[&str], rest: &str) -> i64 {
    let script = format!("setsid sleep 300 & echo $! > daemon.pid; {rest}");
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["--max-attempts", "1", "--", "sh", "-c", &script]);
    let id = sb.submit(&args);
    assert!(id > 0);
    id
}

fn assert_gone(sb: &Sandbox, pid: u32, what: &str) {
    let ok = wait_until(LONG, || gone(pid));
    assert!(
        ok.is_ok(),
        "{what}: the daemon {pid} outlived its job\n{}",
        std::fs::read_to_string(sb.events_path()).unwrap_or_default()
    );
}

#[test]
fn a_daemon_a_job_starts_dies_when_the_job_exits() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let id = daemon_job(&sb, &[], "exit 0");
    let daemon = pid_in(&sb, "daemon.pid");
    let job = sb.wait_job(id, &["succeeded"], LONG);
    assert_gone(&sb, daemon, "exit");
    // Reported as soon as the daemon went (it took SIGTERM), measured by the worker.
    let d = job["finished_at"].as_f64().unwrap() - job["started_at"].as_f64().unwrap();
    assert!(d < 5.0, "{job}");
    sv.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_daemon_that_ignores_sigterm_is_killed_after_the_grace() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let script = "setsid sh -c 'trap \"\" TERM; echo $$ > daemon.pid; \
                  while :; do sleep 1; done' & \
                  while [ ! -s daemon.pid ]; do sleep 0.01; done";
    let id = sb.submit(&["--", "sh", "-c", script]);
    let daemon = pid_in(&sb, "daemon.pid");
    sb.wait_job(id, &["succeeded"], LONG);
    assert_gone(&sb, daemon, "SIGTERM ignored");
    sv.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_jobs_daemons_die_when_it_times_out() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let id = daemon_job(&sb, &["--timeout", "1"], "sleep 300");
    let daemon = pid_in(&sb, "daemon.pid");
    sb.wait_job(id, &["dead"], LONG);
    assert_gone(&sb, daemon, "timeout");
    sv.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_double_forked_daemon_with_a_cleared_environment_dies_on_cancel() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let script = "env -i /bin/sh -c '(setsid sleep 300 & echo $! > daemon.pid) &'; sleep 300";
    let id = sb.submit(&["--", "sh", "-c", script]);
    let daemon = pid_in(&sb, "daemon.pid");
    sb.wait_job(id, &["running"], LONG);
    let out = sb.run(&["cancel", &id.to_string()]);
    assert!(out.status.success());
    sb.wait_job(id, &["canceled"], LONG);
    assert_gone(&sb, daemon, "cancel");
    sv.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_jobs_daemons_die_on_a_graceful_stop() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let id = daemon_job(&sb, &[], "sleep 300");
    let daemon = pid_in(&sb, "daemon.pid");
    sb.wait_job(id, &["running"], LONG);
    let out = sb.run(&["stop", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sv.wait_exit(LONG), Some(0));
    assert_gone(&sb, daemon, "stop --wait");
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_jobs_daemons_die_with_its_lost_worker() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let id = daemon_job(&sb, &[], "sleep 300");
    let daemon = pid_in(&sb, "daemon.pid");
    let started = sv.wait_event(LONG, |e| e["event"] == "job_started" && e["job_id"] == id);
    let worker = started["worker_pid"].as_u64().unwrap() as u32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();
    sv.wait_event(LONG, |e| {
        e["event"] == "job_finished" && e["job_id"] == id && e["outcome"] == "lost"
    });
    assert_gone(&sb, daemon, "lost worker");
    sv.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_jobs_daemons_die_with_a_killed_supervisor() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let id = daemon_job(&sb, &[], "sleep 300");
    let daemon = pid_in(&sb, "daemon.pid");
    sb.wait_job(id, &["running"], LONG);
    sv.signal(Signal::SIGKILL);
    sv.wait_exit(LONG);
    // Its workers got SIGTERM as their death signal and take everything below them.
    assert_gone(&sb, daemon, "SIGKILL of the supervisor");
    sv.assert_nothing_left(LONG);
}
