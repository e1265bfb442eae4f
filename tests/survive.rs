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
fn sigterm_to_a_busy_worker_loses_its_job_and_never_reports_the_kill_as_its_outcome() {
    // The worker's SIGTERM thread kills the job on its way out; the loop, woken by that
    // death, once reported it as the job's own (`failed`, signal 9 or exit code -1).
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    // Four: each death is a restart, and the restart limit is 5.
    for round in 0..4 {
        let id = sb.submit(&["--max-attempts", "1", "--", "sleep", "300"]);
        let started = sv.wait_event(LONG, |e| e["event"] == "job_started" && e["job_id"] == id);
        let worker = started["worker_pid"].as_u64().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGTERM).unwrap();
        let finished = sv.wait_event(LONG, |e| e["event"] == "job_finished" && e["job_id"] == id);
        assert_eq!(finished["outcome"], "lost", "round {round}: {finished}");
        sb.wait_job(id, &["dead"], LONG);
    }
    sv.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

#[test]
fn what_a_running_job_leaves_is_reaped_at_once_not_left_a_zombie() {
    // Each `( (true) & )` leaves an orphan that its worker, a subreaper, inherits; they
    // end at once, while the job's main process sleeps on.
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do ( (true) & ); done; touch spawned; \
                  exec sleep 300";
    let id = sb.submit(&["--", "sh", "-c", script]);
    let started = sv.wait_event(LONG, |e| e["event"] == "job_started" && e["job_id"] == id);
    let worker = started["worker_pid"].as_u64().unwrap() as u32;
    wait_until(LONG, || sb.path().join("spawned").exists()).expect("the job never ran");
    let reaped = wait_until(LONG, || crate::common::zombie_children(worker).is_empty());
    assert!(
        reaped.is_ok(),
        "zombies under the worker while its job runs: {:?}",
        crate::common::zombie_children(worker)
    );
    assert_eq!(sb.job(id)["state"], "running");
    let out = sb.run(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    sb.wait_job(id, &["canceled"], LONG);
    sv.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

/// A job that leaves a straggler that outlives SIGTERM (its pid in `daemon.pid`; it
/// notes the signal in `termed`) and whose main process (its pid in `main.pid`) then
/// exits with `code`; returns the job's id and both pids once the worker is killing
/// what the job left (it sends SIGTERM after it has said how the main process ended).
fn finished_with_a_straggler(sb: &Sandbox, code: i32) -> (i64, u32, u32) {
    let script = format!(
        "setsid sh -c 'trap \"echo > termed\" TERM; echo $$ > daemon.pid; \
         while :; do sleep 1; done' & \
         while [ ! -s daemon.pid ]; do sleep 0.01; done; echo $$ > main.pid; exit {code}"
    );
    let id = sb.submit(&["--max-attempts", "1", "--", "sh", "-c", &script]);
    let daemon = pid_in(sb, "daemon.pid");
    let main = pid_in(sb, "main.pid");
    wait_until(LONG, || gone(main)).expect("the job's main process never ended");
    wait_until(LONG, || sb.path().join("termed").exists()).expect("no SIGTERM for it");
    assert!(alive(daemon));
    (id, main, daemon)
}

#[test]
fn a_stop_while_a_finished_jobs_straggler_is_killed_keeps_the_jobs_own_outcome() {
    // The main process had exited 0 before the stop: the job succeeded, and is neither
    // put back in the queue nor run again.
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let (id, _, daemon) = finished_with_a_straggler(&sb, 0);
    sv.signal(Signal::SIGTERM);
    assert_eq!(sv.wait_exit(LONG), Some(0), "{}", sv.dump());
    let job = sb.job(id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_gone(&sb, daemon, "stop");
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_worker_killed_while_it_kills_a_finished_jobs_straggler_does_not_lose_the_job() {
    // The main process had exited 0: the job succeeded, and is not run again.
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let (id, _, daemon) = finished_with_a_straggler(&sb, 0);
    let started = sv.wait_event(LONG, |e| e["event"] == "job_started" && e["job_id"] == id);
    let worker = started["worker_pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let finished = sv.wait_event(LONG, |e| e["event"] == "job_finished" && e["job_id"] == id);
    assert_eq!(finished["outcome"], "succeeded", "{finished}");
    let job = sb.job(id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_gone(&sb, daemon, "worker killed");
    sv.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_cancel_while_a_finished_jobs_straggler_is_killed_keeps_the_jobs_own_outcome() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let (id, _, daemon) = finished_with_a_straggler(&sb, 0);
    let out = sb.run(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let job = sb.wait_job(id, &["succeeded", "canceled"], LONG);
    assert_eq!(job["state"], "succeeded", "it had exited 0: {job}");
    let finished = sv.wait_event(LONG, |e| e["event"] == "job_finished" && e["job_id"] == id);
    assert_eq!(
        finished["outcome"], "succeeded",
        "the events say as the store does"
    );
    assert_gone(&sb, daemon, "cancel");
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

// ----- hostile values ------------------------------------------------------------------

fn until_empty_config() -> Value {
    let mut c = config(2);
    c["groups"][0]["max_attempts"] = json!(1);
    c
}

#[test]
fn repro_1_a_timeout_of_1e300_is_refused_at_submit() {
    let sb = Sandbox::new(&until_empty_config());
    let out = sb.run(&["submit", "--timeout", "1e300", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--timeout") && err.contains("1000000000"),
        "{err}"
    );
    std::fs::write(
        sb.path().join("jobs.jsonl"),
        "{\"command\": [\"true\"]}\n{\"command\": [\"true\"], \"timeout_s\": 1e300}\n",
    )
    .unwrap();
    let out = sb.run(&["submit", "--file", "jobs.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: timeout_s"), "{err}");
    // Nothing was queued.
    let out = sb.run(&["jobs", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!([])
    );
}

#[test]
fn an_exec_that_can_never_work_is_refused_at_submit() {
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new(&until_empty_config());
    // (A single argument that big cannot even reach `submit`: a --file line.)
    let line = json!({"command": ["true"], "env": {"BIG": "x".repeat(200_000)}});
    std::fs::write(sb.path().join("env.jsonl"), line.to_string()).unwrap();
    let out = sb.run(&["submit", "--file", "env.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: env.BIG"));
    // Too big together (the test itself could not exec that many bytes: a --file line).
    let many: Vec<String> = (0..11).map(|_| "y".repeat(100_000)).collect();
    let command = [vec!["echo".to_string()], many].concat();
    let line = json!({ "command": command });
    std::fs::write(sb.path().join("big.jsonl"), line.to_string()).unwrap();
    let out = sb.run(&["submit", "--file", "big.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1: command[") && err.contains("together"),
        "{err}"
    );
    // A directory whose name is not UTF-8: refused by name, never mangled.
    let out = sb
        .command(&["submit", "--cwd"])
        .arg(std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cwd"));
}

/// Damage the row of job `id` with `set` (an SQL assignment).
fn damage(sb: &Sandbox, id: i64, set: &str) {
    let db = rusqlite::Connection::open(sb.path().join("state/jobs.db")).unwrap();
    let n = db
        .execute(&format!("UPDATE jobs SET {set} WHERE id = ?1"), [id])
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn stored_rows_that_cannot_be_run_end_dead_naming_the_field_and_the_rest_run() {
    let sb = Sandbox::new(&until_empty_config());
    let cases = [
        ("timeout_s = 1e300", "timeout_s"),
        ("timeout_s = 'soon'", "timeout_s"),
        ("command = 'not json'", "command"),
        ("command = '[]'", "command"),
        ("command = '[1, 2]'", "command"),
        ("env = '[1]'", "env"),
        ("max_attempts = -5", "max_attempts"),
        ("attempts = 'x'", "attempts"),
        ("cwd = x'00ff'", "cwd"),
    ];
    let mut damaged = vec![];
    for (set, field) in cases {
        let id = sb.submit(&["--", "true"]);
        damage(&sb, id, set);
        damaged.push((id, field));
    }
    let good = sb.submit(&["--", "true"]);
    // `jobs` still lists every row.
    let out = sb.run(&["jobs", "--json"]);
    assert!(out.status.success());
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), cases.len() + 1);
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(LONG), Some(0), "{}", sv.dump());
    for (id, field) in damaged {
        let job = sb.job(id);
        assert_eq!(job["state"], "dead", "{job}");
        let reason = job["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(&format!("{field}:")), "{id}: {reason}");
        let dead = sv
            .events()
            .into_iter()
            .find(|e| e["event"] == "job_dead" && e["job_id"] == id);
        assert!(dead.is_some_and(|e| e["reason"] == job["reason"]), "{id}");
    }
    assert_eq!(sb.job(good)["state"], "succeeded");
    sv.assert_nothing_left(LONG);
}

#[test]
fn a_job_that_kills_its_supervisor_is_quarantined_after_three_deaths() {
    let sb = Sandbox::new(&config(1));
    let id = sb.submit(&[
        "--",
        "sh",
        "-c",
        "kill -9 $(cat state/supervisor.pid); sleep 300",
    ]);
    for death in 1..=3 {
        let mut sv = sb.start(&[]);
        assert_eq!(sv.wait_exit(LONG), None, "death {death}: killed by its job");
        sv.assert_nothing_left(LONG);
    }
    let mut sv = sb.start(&[]);
    let dead = sv.wait_event(LONG, |e| e["event"] == "job_dead" && e["job_id"] == id);
    assert_eq!(
        dead["reason"],
        "its supervisor died while running it 3 times"
    );
    let job = sb.job(id);
    assert_eq!(job["state"], "dead");
    assert_eq!(job["reason"], dead["reason"]);
    // Each attempt its supervisor died under has its end, told by the next run: lost,
    // and not used up (each start is attempt 1).
    // Each run began a new events file; the older ones are kept beside it.
    let mut all: Vec<Value> = std::fs::read_dir(sb.path().join("state"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("events.jsonl"))
        .flat_map(|p| crate::common::read_events(&p))
        .collect();
    all.sort_by_key(|e| e["seq"].as_u64());
    let told: Vec<(String, Value, Value)> = (all.into_iter())
        .filter(|e| e["job_id"] == id)
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["attempt"].clone(),
                e["outcome"].clone(),
            )
        })
        .collect();
    let (started, lost) = (
        ("job_started".to_string(), json!(1), Value::Null),
        ("job_finished".to_string(), json!(1), json!("lost")),
    );
    let dead = ("job_dead".to_string(), Value::Null, Value::Null);
    assert_eq!(
        told,
        [
            started.clone(),
            lost.clone(),
            started.clone(),
            lost.clone(),
            started,
            lost,
            dead
        ],
        "{}",
        sv.dump()
    );
    // And this supervisor keeps running jobs.
    let ok = sb.submit(&["--", "true"]);
    sb.wait_job(ok, &["succeeded"], LONG);
    sv.stop_cleanly();
}

#[test]
fn a_job_that_cannot_start_says_why_and_its_duration_is_the_workers_measure() {
    let sb = Sandbox::new(&until_empty_config());
    let missing = sb.submit(&["--", "/nonexistent/program"]);
    let bad_cwd = sb.submit(&["--cwd", "/nonexistent/dir", "--", "true"]);
    let slow = sb.submit(&["--", "sh", "-c", "sleep 0.3; exit 3"]);
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(LONG), Some(0), "{}", sv.dump());
    for (id, what) in [
        (missing, "/nonexistent/program"),
        (bad_cwd, "/nonexistent/dir"),
    ] {
        let job = sb.job(id);
        let e = job["start_error"].as_str().unwrap_or_default();
        assert!(e.contains(what), "{job}");
        let finished = sv
            .events()
            .into_iter()
            .find(|e| e["event"] == "job_finished" && e["job_id"] == id)
            .unwrap();
        assert_eq!(finished["start_error"], job["start_error"]);
        // Its attempt has its `job_started` first, as every attempt has.
        let of_job: Vec<String> = sv
            .events()
            .into_iter()
            .filter(|e| {
                e["job_id"] == id && e["event"].as_str().is_some_and(|n| n.starts_with("job_"))
            })
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(of_job[..2], ["job_started", "job_finished"], "{of_job:?}");
        let out = sb.run(&["job", &id.to_string()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("start error"));
    }
    let finished = sv
        .events()
        .into_iter()
        .find(|e| e["event"] == "job_finished" && e["job_id"] == slow)
        .unwrap();
    let d = finished["duration_s"].as_f64().unwrap();
    assert!((0.3..5.0).contains(&d), "{finished}");
    assert_eq!(finished["exit_code"], 3);
    assert_eq!(finished["start_error"], Value::Null);
}

// ----- panics ----------------------------------------------------------------------------

/// A supervisor with an injected panic: it records the panic, exits 1, leaves nothing
/// behind; `status` says it crashed; the next run gives the job back and runs it.
fn a_panic_is_recorded(fault: &str, trigger: impl Fn(&Sandbox)) {
    let sb = Sandbox::new(&config(1));
    let dir = sb.path().to_path_buf();
    let stderr = std::fs::File::create(dir.join("supervisor.stderr")).unwrap();
    let child = sb
        .command(&["run"])
        .env("SUPERVISOR_TEST_FAULT", fault)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut sv = crate::common::Supervisor {
        child: Some(child),
        events: sb.events_path(),
        dir,
    };
    sv.wait_event(LONG, |e| {
        e["event"] == "child_ready" && e["role"] == "worker"
    });
    let id = sb.submit(&["--", "sh", "-c", "echo $$ > job.pid; sleep 300"]);
    trigger(&sb);
    assert_eq!(sv.wait_exit(LONG), Some(1), "{}", sv.dump());
    let panic = sv.wait_event(LONG, |e| e["event"] == "supervisor_panicked");
    assert!(
        panic["message"]
            .as_str()
            .unwrap()
            .contains("fault injected"),
        "{panic}"
    );
    assert!(
        panic["location"]
            .as_str()
            .unwrap()
            .starts_with("bin/supervisor/run.rs:"),
        "{panic}"
    );
    sv.assert_nothing_left(LONG);
    let status = sb.status_json();
    assert_eq!(status["supervisor"]["stopped"], "crashed", "{status}");
    assert_eq!(status["supervisor"]["panic"]["message"], panic["message"]);
    // The next run (without the fault) gives the job back and runs it.
    let _ = std::fs::remove_file(sb.path().join("job.pid"));
    let mut sv = sb.start(&[]);
    sb.wait_job(id, &["running"], LONG);
    pid_in(&sb, "job.pid");
    let out = sb.run(&["cancel", &id.to_string()]);
    assert!(out.status.success());
    sb.wait_job(id, &["canceled"], LONG);
    sv.stop_cleanly();
}

#[test]
fn a_panic_of_the_loop_is_written_to_the_events_and_status_says_crashed() {
    a_panic_is_recorded("panic-on-job-start", |sb| {
        pid_in(sb, "job.pid");
    });
}

#[test]
fn a_panic_of_a_helper_thread_is_written_to_the_events_too() {
    a_panic_is_recorded("panic-on-doorbell", |sb| {
        // The submit above rang the doorbell (SIGUSR1): the signal thread panicked.
        let _ = sb;
    });
}

// ----- a store that cannot take an outcome ------------------------------------------------

/// A tmpfs of `size` mounted at `dir` for the test's life (root only).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fill the file system holding `path` until a write fails with ENOSPC.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [65536, 4096, 512, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
}

#[test]
fn a_supervisor_whose_state_dir_is_removed_stops() {
    // Its store, events file and pidfile unlinked, no verb can reach it: it stops,
    // instead of running on beside the next run.
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &[]);
    sb.wait_job(held.id, &["running"], LONG);
    let job = held.pid();
    std::fs::remove_dir_all(sb.path().join("state")).unwrap();
    // A new run takes the state dir at once; the old one, stopping, leaves its pidfile.
    let next_err = std::fs::File::create(sb.path().join("next.stderr")).unwrap();
    let mut next = crate::common::spawn_supervisor(
        &mut sb.command(&["run"]),
        next_err,
        sb.events_path(),
        sb.path(),
    );
    next.wait_event(LONG, |e| e["event"] == "supervisor_started");
    assert_eq!(sv.wait_exit(LONG), Some(0), "it stops (its grace is 1 s)");
    let err = std::fs::read_to_string(sb.path().join("supervisor.stderr")).unwrap();
    assert!(err.contains("was removed or replaced"), "{err}");
    assert!(!alive(job), "its job is stopped with it");
    let pidfile = sb.path().join("state/supervisor.pid");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        next.pid().to_string(),
        "the new run's pidfile"
    );
    next.stop_cleanly();
}

#[test]
fn events_a_full_disk_refuses_are_written_in_order_once_there_is_room() {
    let mut c = config(1);
    let sb = Sandbox::new(&c);
    let small = sb.path().join("small");
    let Some(_mount) = Tmpfs::mount(&small, "1m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    c["events"] = json!({"path": "small/events.jsonl"});
    sb.write_config(&c);
    let events = small.join("events.jsonl");
    let stderr = std::fs::File::create(sb.path().join("supervisor.stderr")).unwrap();
    let mut sv = crate::common::spawn_supervisor(
        &mut sb.command(&["run"]),
        stderr,
        events.clone(),
        sb.path(),
    );
    sv.wait_event(LONG, |e| {
        e["event"] == "child_ready" && e["role"] == "worker"
    });
    fill(&small.join("filler"));
    // Reloads (a config_loaded each) until the full disk refuses one (the file's last
    // page may have had room for a few), then five more, and a job's events.
    let failures = || {
        std::fs::read_to_string(sb.path().join("supervisor.stderr"))
            .map_or(0, |e| e.matches("cannot write to the events file").count())
    };
    let size = || std::fs::metadata(&events).unwrap().len();
    let mut reloads = 0;
    while failures() < 6 {
        assert!(reloads < 1000, "the full disk never refused an event");
        let (before, failed) = (size(), failures());
        sv.signal(Signal::SIGHUP);
        reloads += 1;
        wait_until(LONG, || size() > before || failures() > failed)
            .expect("the reload's event written, or its write failed");
    }
    let id = sb.submit(&["--", "true"]);
    sb.wait_job(id, &["succeeded"], LONG);
    std::fs::remove_file(small.join("filler")).unwrap();
    // The next event brings every one that waited, in order, each whole.
    sv.signal(Signal::SIGHUP);
    sv.wait_event(LONG, |e| e["event"] == "job_finished" && e["job_id"] == id);
    let text = std::fs::read_to_string(&events).unwrap();
    let parsed: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let seqs: Vec<u64> = parsed.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap or a repeat: {seqs:?}\n{text}"
    );
    let loaded = parsed
        .iter()
        .filter(|e| e["event"] == "config_loaded")
        .count();
    assert_eq!(
        loaded,
        reloads + 2,
        "config_loaded: the start's, each reload's, the last's\n{text}"
    );
    // A line the full disk cut short is gone: every line is one whole event.
    assert_eq!(parsed.len(), text.lines().count(), "{text}");
    sv.stop_cleanly();
}

#[test]
fn an_outcome_the_full_disk_refuses_waits_and_lands_when_there_is_room() {
    let mut c = config(1);
    let sb = Sandbox::new(&c);
    let small = sb.path().join("small");
    let Some(_mount) = Tmpfs::mount(&small, "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    c["store"] = json!({"sqlite": {"path": "small/jobs.db"}});
    sb.write_config(&c);
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &[]);
    sb.wait_job(held.id, &["running"], LONG);
    fill(&small.join("filler"));
    held.release_with(0);
    // The supervisor says it cannot store it yet; the events say nothing of it yet.
    let stderr = sb.path().join("supervisor.stderr");
    wait_until(LONG, || {
        std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .contains(&format!("cannot store the outcome of job {} yet", held.id))
    })
    .unwrap_or_else(|_| panic!("no store error\n{}", sv.dump()));
    assert!(!sv
        .events()
        .iter()
        .any(|e| e["event"] == "job_finished" && e["job_id"] == held.id));
    // `status` says an outcome waits (and that nothing is claimed meanwhile).
    sv.wait_event(LONG, |e| {
        e["event"] == "outcomes_waiting" && e["count"] == 1
    });
    assert_eq!(sb.status_json()["outcomes_waiting"], 1);
    // Room again: it lands, then the event is written.
    std::fs::remove_file(small.join("filler")).unwrap();
    let done = sv.wait_event(LONG, |e| {
        e["event"] == "job_finished" && e["job_id"] == held.id
    });
    assert_eq!(done["outcome"], "succeeded");
    assert_eq!(sb.job(held.id)["state"], "succeeded");
    sv.wait_event(LONG, |e| {
        e["event"] == "outcomes_waiting" && e["count"] == 0
    });
    assert_eq!(sb.status_json()["outcomes_waiting"], 0);
    sv.stop_cleanly();
    // (The mount goes before the sandbox's directory: declared after it.)
}

#[test]
fn a_damaged_instance_row_does_not_stop_the_next_run() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &[]);
    sb.wait_job(held.id, &["running"], LONG);
    sv.signal(Signal::SIGKILL);
    sv.wait_exit(LONG);
    sv.assert_nothing_left(LONG);
    let db = rusqlite::Connection::open(sb.path().join("state/jobs.db")).unwrap();
    db.execute(
        "UPDATE instances SET pid = 'not a pid', started_at = x'00'",
        [],
    )
    .unwrap();
    drop(db);
    let mut sv = sb.start(&[]);
    // Its dead instance is taken for dead; the job runs again.
    sb.wait_job(held.id, &["running"], LONG);
    held.release_with(0);
    sb.wait_job(held.id, &["succeeded"], LONG);
    sv.stop_cleanly();
}

// ----- retention ---------------------------------------------------------------------------

#[test]
fn retention_deletes_finished_jobs_and_their_logs_past_the_limits() {
    let mut c = until_empty_config();
    c["retention"] = json!({"finished_max_count": 3});
    let sb = Sandbox::new(&c);
    let ids: Vec<i64> = (0..10)
        .map(|i| sb.submit(&["--", "sh", "-c", &format!("echo job {i}")]))
        .collect();
    let held = sb.submit_held("held", &[]);
    let mut sv = sb.start(&[]);
    for &id in &ids {
        sb.wait_job(id, &["succeeded"], LONG);
    }
    let listed = || -> Vec<i64> {
        let out = sb.run(&["jobs", "--json"]);
        let jobs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        jobs.iter().map(|j| j["id"].as_i64().unwrap()).collect()
    };
    // The newest 3 finished jobs stay, and the running one; the others go with their logs.
    wait_until(LONG, || listed().len() == 4).unwrap_or_else(|_| panic!("{:?}", listed()));
    let mut want = ids[7..].to_vec();
    want.push(held.id);
    assert_eq!(listed(), want);
    let logs = sb.path().join("state/logs");
    for &id in &ids[..7] {
        assert!(!logs.join(format!("{id}.log")).exists(), "log of {id}");
    }
    for &id in &ids[7..] {
        assert!(logs.join(format!("{id}.log")).exists(), "log of {id}");
    }
    held.release_with(0);
    sb.wait_job(held.id, &["succeeded"], LONG);
    sv.stop_cleanly();
}

#[test]
fn a_supervisor_killed_and_not_yet_reaped_is_dead_to_the_next_run() {
    // A supervisor killed under a parent that reaps it late stays a zombie, with its
    // pid and start time: the next run takes its job back all the same.
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &[]);
    sb.wait_job(held.id, &["running"], LONG);
    let pid = sv.pid();
    sv.signal(Signal::SIGKILL);
    // Not waited for (yet): a zombie.
    wait_until(LONG, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    })
    .expect("the killed supervisor is a zombie");
    let mut next = sb.start(&[]);
    next.wait_event(LONG, |e| {
        e["event"] == "job_finished" && e["job_id"] == held.id && e["outcome"] == "lost"
    });
    next.wait_event(LONG, |e| {
        e["event"] == "job_started" && e["job_id"] == held.id
    });
    held.release_with(0);
    sb.wait_job(held.id, &["succeeded"], LONG);
    assert_eq!(sv.wait_exit(LONG), None, "killed");
    next.stop_cleanly();
    sv.assert_nothing_left(LONG);
}

#[test]
fn an_outcome_waiting_when_its_supervisor_dies_is_stored_by_the_next_run() {
    let mut c = config(1);
    let sb = Sandbox::new(&c);
    let small = sb.path().join("small");
    let Some(_mount) = Tmpfs::mount(&small, "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    c["store"] = json!({"sqlite": {"path": "small/jobs.db"}});
    sb.write_config(&c);
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &[]);
    sb.wait_job(held.id, &["running"], LONG);
    fill(&small.join("filler"));
    held.release_with(0);
    sv.wait_event(LONG, |e| {
        e["event"] == "outcomes_waiting" && e["count"] == 1
    });
    let journal = sb.path().join("state/outcomes.journal");
    assert!(journal.exists(), "the waiting outcome is journaled");
    sv.signal(Signal::SIGKILL);
    sv.wait_exit(LONG);
    sv.assert_nothing_left(LONG);
    std::fs::remove_file(small.join("filler")).unwrap();
    // A run on another store cannot store it, and does not drop it: it refuses to start.
    let mut other = c.clone();
    other["store"] = json!({"sqlite": {"path": "other.db"}});
    sb.write_config(&other);
    let out = sb.run(&["run", "--until-empty"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("outcomes.journal") && err.contains("another store"),
        "{err}"
    );
    assert!(journal.exists(), "the journal is kept");
    for made in ["other.db", "state/other.db"] {
        let made = sb.path().join(made);
        assert!(!made.exists(), "a refused run made {}", made.display());
    }
    sb.write_config(&c);
    // The next run stores it (the attempt ended: it does not run again) and says so.
    let mut sv = sb.start(&[]);
    sv.wait_event(LONG, |e| {
        e["event"] == "job_finished" && e["job_id"] == held.id && e["outcome"] == "succeeded"
    });
    let job = sb.job(held.id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert!(!sv
        .events()
        .iter()
        .any(|e| e["event"] == "job_started" && e["job_id"] == held.id));
    assert!(!journal.exists());
    sv.stop_cleanly();
}

// ----- private state ----------------------------------------------------------------------

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A supervisor started under `umask`, through sh (the harness's own umask is left
/// alone), until it has run one job that prints its umask.
fn private_under(umask: &str, loose_state_dir: bool) {
    let sb = Sandbox::new(&config(1));
    if loose_state_dir {
        use std::os::unix::fs::PermissionsExt;
        let state = sb.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let id = sb.submit(&["--", "sh", "-c", "umask; echo private > made-by-job"]);
    let stale_log = sb.path().join("state/logs/0.log");
    if loose_state_dir {
        // Files left readable by others (an operator's chmod, an older version).
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(stale_log.parent().unwrap()).unwrap();
        std::fs::write(&stale_log, "an old log\n").unwrap();
        for file in [sb.path().join("state/jobs.db"), stale_log.clone()] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        // Not ours: left as it is (a state dir may be a shared folder).
        let script = sb.path().join("state/run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let stderr = sb.path().join("supervisor.stderr");
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask {umask} && exec \"$0\" run -c \"$1\" --until-empty"
        ))
        .arg(crate::common::bin())
        .arg(sb.config_path())
        .current_dir(sb.path())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut sv = crate::common::Supervisor {
        child: Some(child),
        events: sb.events_path(),
        dir: sb.path().to_path_buf(),
    };
    assert_eq!(sv.wait_exit(LONG), Some(0), "{}", sv.dump());
    let state = sb.path().join("state");
    for dir in [state.clone(), state.join("logs")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for file in ["jobs.db", "events.jsonl"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file} under umask {umask}");
    }
    let log = state.join(format!("logs/{id}.log"));
    assert_eq!(mode(&log), 0o600);
    // The job itself runs with the umask the supervisor was started with.
    let printed = std::fs::read_to_string(&log).unwrap();
    assert_eq!(printed.trim(), format!("{:0>4}", umask), "{printed}");
    let made = mode(&sb.path().join("made-by-job"));
    let want = 0o666 & !u32::from_str_radix(umask, 8).unwrap();
    assert_eq!(made, want, "a job's file under umask {umask}");
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(
        said.contains("was 755; it is now 700"),
        loose_state_dir,
        "{said}"
    );
    if loose_state_dir {
        assert_eq!(mode(&stale_log), 0o600);
        assert_eq!(
            mode(&state.join("run.sh")),
            0o755,
            "not the supervisor's file"
        );
        assert!(said.contains("2 file(s) in"), "{said}");
    }
    sv.assert_nothing_left(LONG);
}

#[test]
fn the_state_is_private_under_umask_000_and_jobs_keep_theirs() {
    private_under("000", false);
}

#[test]
fn the_state_is_private_under_umask_022_and_a_loose_state_dir_is_tightened() {
    private_under("022", true);
}
