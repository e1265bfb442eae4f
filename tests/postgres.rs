//! The PostgreSQL store through the real binary: several supervisors share one queue.
//! They need a server: run them with
//! `scripts/with-postgres cargo nextest run --test tests --run-ignored only`
//! (`scripts/test` does). Each test has a database of its own, dropped at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use supervisor_store::testing::PgDatabase;

use crate::common::*;

const T: Duration = Duration::from_secs(20);

fn config(db: &PgDatabase, workers: u32, poll_s: f64) -> Value {
    json!({
        "store": {"postgres": {"url": db.url}},
        "groups": [{"name": "a", "max_workers": workers}],
        "grabber": {"poll_interval_s": poll_s},
        "heartbeat": {"interval_s": 0.5, "timeout_s": 5},
        "shutdown_grace_s": 1
    })
}

/// Every job of the store, by id.
fn jobs(sb: &Sandbox) -> BTreeMap<i64, Value> {
    let out = sb.run(&["jobs", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.into_iter()
        .map(|j| (j["id"].as_i64().unwrap(), j))
        .collect()
}

/// The ids of the jobs this supervisor started.
fn started_here(sv: &Supervisor) -> Vec<i64> {
    sv.events()
        .iter()
        .filter(|e| e["event"] == "job_started")
        .map(|e| e["job_id"].as_i64().unwrap())
        .collect()
}

fn stop(mut sv: Supervisor) {
    sv.signal(Signal::SIGTERM);
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(Duration::from_secs(2));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn two_supervisors_share_one_queue_and_run_each_job_once() {
    let db = PgDatabase::new();
    let a = Sandbox::new(&config(&db, 2, 1.0));
    let b = Sandbox::new(&config(&db, 2, 1.0));
    let sv_a = a.start(&[]);
    let sv_b = b.start(&[]);
    // Each job appends its id to one file: a job run twice would show twice.
    let ran = a.path().join("ran.txt");
    let lines: Vec<String> = (0..60)
        .map(|_| {
            json!({"group": "a", "command": ["sh", "-c",
                format!("echo $SUPERVISOR_JOB_ID >> {}; sleep 0.05", ran.display())]})
            .to_string()
        })
        .collect();
    let file = a.path().join("jobs.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = a.run(&["submit", "--file", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut last = BTreeMap::new();
    wait_until(T, || {
        last = jobs(&b);
        last.len() == 60 && last.values().all(|j| j["state"] == "succeeded")
    })
    .unwrap_or_else(|_| panic!("not all succeeded: {last:?}"));
    let mut ids: Vec<i64> = std::fs::read_to_string(&ran)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    ids.sort_unstable();
    let want: Vec<i64> = last.keys().copied().collect();
    assert_eq!(ids, want, "every job ran exactly once");
    assert!(last.values().all(|j| j["attempts"] == 1), "{last:?}");
    let (on_a, on_b) = (started_here(&sv_a), started_here(&sv_b));
    assert_eq!(on_a.len() + on_b.len(), 60);
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "both supervisors took jobs: {} on a, {} on b",
        on_a.len(),
        on_b.len()
    );
    stop(sv_a);
    stop(sv_b);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_submit_from_another_host_wakes_an_idle_supervisor_at_once() {
    let db = PgDatabase::new();
    // The poll interval is a minute: only the store's doorbell can start a job sooner.
    let runner = Sandbox::new(&config(&db, 1, 60.0));
    // Another state dir, as on another host: its `submit` cannot signal the runner.
    let elsewhere = Sandbox::new(&config(&db, 1, 60.0));
    let sv = runner.start(&[]);
    let first = elsewhere.submit(&["--group", "a", "--", "true"]);
    runner.wait_job(first, &["succeeded"], T);
    // The grabber is past its first pass now, idle until the next poll.
    let t0 = Instant::now();
    let second = elsewhere.submit(&["--group", "a", "--", "true"]);
    runner.wait_job(second, &["succeeded"], Duration::from_secs(10));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(started_here(&sv), [first, second]);
    stop(sv);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_killed_supervisor_s_jobs_are_taken_back_by_another() {
    let db = PgDatabase::new();
    let a = Sandbox::new(&config(&db, 1, 1.0));
    let b = Sandbox::new(&config(&db, 1, 1.0));
    let mut sv_a = a.start(&[]);
    let id = a.submit(&["--group", "a", "--", "sleep", "60"]);
    let started = sv_a.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == id);
    // The job's own process: the worker's child.
    let worker = started["worker_pid"].as_u64().unwrap() as u32;
    let job_pid: u32 = std::fs::read_to_string(format!("/proc/{worker}/task/{worker}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the worker has its job as a child")
        .parse()
        .unwrap();
    let sv_b = b.start(&[]);

    sv_a.signal(Signal::SIGKILL);
    assert_eq!(sv_a.wait_exit(T), None, "killed by a signal");
    // Its job died with it (PDEATHSIG down the chain)...
    wait_until(Duration::from_secs(5), || !alive(job_pid))
        .unwrap_or_else(|_| panic!("job process {job_pid} outlived its supervisor"));
    // ...and the other supervisor, on its next look at the store, runs it again.
    let again = sv_b.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == id);
    assert_ne!(again["worker_pid"], started["worker_pid"]);
    let job = b.job(id);
    assert_eq!(job["state"], "running", "{job}");
    let out = b.run(&["cancel", &id.to_string()]);
    assert!(out.status.success());
    b.wait_job(id, &["canceled"], T);
    stop(sv_b);
    sv_a.assert_nothing_left(Duration::from_secs(2));
}

/// A proxy in front of the test server (its unix socket directory and port, from its
/// URL).
fn proxy() -> crate::common::proxy::Proxy {
    let url = std::env::var(supervisor_store::testing::PG_URL_VAR).expect("a server URL");
    let get = |key: &str| {
        url.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the server URL"))
            .to_string()
    };
    crate::common::proxy::Proxy::start(&get("host="), &get("port="))
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_server_restart_mid_run_loses_no_outcome_and_runs_no_job_twice() {
    let db = PgDatabase::new();
    let proxy = proxy();
    let mut c = config(&db, 4, 0.5);
    c["store"]["postgres"]["url"] = json!(proxy.url(&db.name));
    let sb = Sandbox::new(&c);
    let sv = sb.start(&[]);
    let trace = sb.path().join("trace.txt");
    let lines: Vec<String> = (0..150)
        .map(|_| {
            json!({"group": "a", "command": ["sh", "-c", format!(
                "echo start $SUPERVISOR_JOB_ID >> {t}; sleep 0.05; echo end $SUPERVISOR_JOB_ID >> {t}",
                t = trace.display())]})
            .to_string()
        })
        .collect();
    let file = sb.path().join("jobs.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = sb.run(&["submit", "--file", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sv.wait_events(T, 40, |e| e["event"] == "job_finished");
    // The server "restarts": every connection reset, none accepted for a while.
    proxy.cut();
    sv.wait_event(T, |e| {
        e["event"] == "outcomes_waiting" && e["count"].as_u64() > Some(0)
    });
    proxy.restore();
    wait_until(Duration::from_secs(60), || {
        jobs(&sb)
            .values()
            .filter(|j| j["state"] == "succeeded")
            .count()
            == 150
    })
    .unwrap_or_else(|_| panic!("not every job succeeded\n{}", sv.dump()));
    // Store and events agree: each job finished once, succeeded.
    let finished: Vec<i64> = sv
        .events()
        .iter()
        .filter(|e| e["event"] == "job_finished")
        .map(|e| {
            assert_eq!(e["outcome"], "succeeded", "{e}");
            e["job_id"].as_i64().unwrap()
        })
        .collect();
    let mut unique = finished.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 150, "each job finished once");
    assert_eq!(finished.len(), 150, "no job finished twice");
    // No job ran twice at once (nor twice at all: no attempt was lost).
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut running = std::collections::BTreeSet::new();
    let mut starts = BTreeMap::new();
    for line in text.lines() {
        let (what, id) = line.split_once(' ').unwrap();
        match what {
            "start" => {
                assert!(running.insert(id.to_string()), "job {id} ran twice at once");
                *starts.entry(id.to_string()).or_insert(0) += 1;
            }
            _ => {
                running.remove(id);
            }
        }
    }
    assert!(starts.values().all(|n| *n == 1), "{starts:?}");
    stop(sv);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_supervisor_cut_off_from_the_store_fences_itself_before_it_can_be_taken_for_dead() {
    let db = PgDatabase::new();
    let proxy = proxy();
    let mut c = config(&db, 1, 0.5);
    c["store"]["postgres"]["url"] = json!(proxy.url(&db.name));
    // Fences after 3.5 - 0.5 - 2 = 1 s without a touch.
    c["instances"] = json!({"touch_every_s": 0.5, "dead_after_s": 3.5});
    let sb = Sandbox::new(&c);
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &["--group", "a"]);
    let job_pid = held.pid();
    proxy.cut();
    let t0 = Instant::now();
    assert_eq!(sv.wait_exit(T), Some(1), "{}", sv.dump());
    let fenced = t0.elapsed();
    let stopping = sv.wait_event(T, |e| e["event"] == "supervisor_stopping");
    assert!(
        stopping["reason"].as_str().unwrap().starts_with("fenced"),
        "{stopping}"
    );
    // Its job was killed before anyone could take the supervisor for dead (3.5 s).
    assert!(!alive(job_pid), "the job outlived its fenced supervisor");
    assert!(
        fenced < Duration::from_millis(3500),
        "fenced after {fenced:?}"
    );
    sv.assert_nothing_left(Duration::from_secs(2));
    // A verb tries for a few seconds, then fails naming the store.
    let out = sb.run(&["jobs"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open the job store postgres"), "{err}");
    assert!(err.contains("trying again"), "{err}");
    // The store back, the next supervisor runs the job again, once.
    proxy.restore();
    let sv = sb.start(&[]);
    sb.wait_job(held.id, &["running"], T);
    held.release_with(0);
    sb.wait_job(held.id, &["succeeded"], T);
    stop(sv);
}

/// Two supervisors on one queue, `a` through `proxy`; timings scaled down: a touch every
/// 0.5 s, dead after 6 s, so `a` fences itself after 3.5 s unheard.
fn pair(db: &PgDatabase, proxy: &crate::common::proxy::Proxy) -> (Sandbox, Sandbox) {
    let mut ca = config(db, 2, 0.5);
    ca["store"]["postgres"]["url"] = json!(proxy.url(&db.name));
    ca["instances"] = json!({"touch_every_s": 0.5, "dead_after_s": 6});
    let mut cb = config(db, 2, 0.5);
    cb["instances"] = json!({"touch_every_s": 0.5, "dead_after_s": 6});
    (Sandbox::new(&ca), Sandbox::new(&cb))
}

/// Checks a trace of `start ID` / `end ID` lines: no job ran twice at once; returns how
/// many times each ran.
fn runs_in(trace: &std::path::Path) -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    let mut running = std::collections::BTreeSet::new();
    let mut starts = BTreeMap::new();
    for line in text.lines() {
        let (what, id) = line.split_once(' ').unwrap();
        if what == "start" {
            assert!(running.insert(id.to_string()), "job {id} ran twice at once");
            *starts.entry(id.to_string()).or_insert(0) += 1;
        } else {
            running.remove(id);
        }
    }
    starts
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_cut_shorter_than_dead_after_reruns_nothing() {
    let db = PgDatabase::new();
    let proxy = proxy();
    let (a, b) = pair(&db, &proxy);
    let sv_a = a.start(&[]);
    let sv_b = b.start(&[]);
    let trace = a.path().join("trace.txt");
    let lines: Vec<String> = (0..40)
        .map(|_| {
            json!({"group": "a", "command": ["sh", "-c", format!(
                "echo start $SUPERVISOR_JOB_ID >> {t}; sleep 0.2; echo end $SUPERVISOR_JOB_ID >> {t}",
                t = trace.display())]})
            .to_string()
        })
        .collect();
    let file = b.path().join("jobs.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    assert!(b
        .run(&["submit", "--file", file.to_str().unwrap()])
        .status
        .success());
    sv_a.wait_events(T, 2, |e| e["event"] == "job_finished");
    proxy.cut();
    // Cut for 1.5 s (under the 3.5 s after which `a` fences itself): `b` goes on alone.
    let cut_at = Instant::now();
    wait_until(T, || cut_at.elapsed() >= Duration::from_millis(1500)).unwrap();
    proxy.restore();
    wait_until(Duration::from_secs(60), || {
        jobs(&b)
            .values()
            .filter(|j| j["state"] == "succeeded")
            .count()
            == 40
    })
    .unwrap_or_else(|_| panic!("not every job succeeded\n{}\n{}", sv_a.dump(), sv_b.dump()));
    let runs = runs_in(&trace);
    assert_eq!(runs.len(), 40);
    assert!(runs.values().all(|n| *n == 1), "a job ran again: {runs:?}");
    // Store and events agree: each job finished once, on one of them.
    let mut finished: Vec<i64> = [&sv_a, &sv_b]
        .iter()
        .flat_map(|sv| sv.events())
        .filter(|e| e["event"] == "job_finished")
        .map(|e| e["job_id"].as_i64().unwrap())
        .collect();
    finished.sort_unstable();
    let before = finished.len();
    finished.dedup();
    assert_eq!((before, finished.len()), (40, 40));
    stop(sv_a);
    stop(sv_b);
}

#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_cut_during_a_graceful_stop_loses_no_outcome() {
    let db = PgDatabase::new();
    let proxy = proxy();
    let (a, _) = pair(&db, &proxy);
    let mut sv = a.start(&[]);
    let held = a.submit_held("held", &["--group", "a"]);
    a.wait_job(held.id, &["running"], T);
    proxy.cut();
    sv.signal(Signal::SIGTERM);
    held.release_with(0);
    // Its outcome cannot be stored: the journal keeps it, and the stop ends all the same.
    let code = sv.wait_exit(T);
    assert!(code.is_some(), "{}", sv.dump());
    sv.assert_nothing_left(Duration::from_secs(2));
    assert!(
        a.path().join("state/outcomes.journal").exists(),
        "{}",
        sv.dump()
    );
    proxy.restore();
    // The next run stores it: the job succeeded once, and does not run again.
    let sv = a.start(&[]);
    a.wait_job(held.id, &["succeeded"], T);
    assert_eq!(a.job(held.id)["attempts"], 1);
    assert!(!sv
        .events()
        .iter()
        .any(|e| e["event"] == "job_started" && e["job_id"] == held.id));
    stop(sv);
}
