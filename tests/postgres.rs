//! The PostgreSQL store through the real binary: several supervisors share one queue.
//! They need a server: run them with
//! `scripts/with-postgres cargo nextest run --test tests --run-ignored only`
//! (`scripts/test` does). Each test has a database of its own, dropped at the end.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use supervisor_store::testing::PgDatabase;

use crate::common::*;

// Helpers of the tests below that kill a server or partition a network (declared here,
// their only user).
#[path = "common/partition.rs"]
mod partition;
#[path = "common/pg_server.rs"]
mod pg_server;

const T: Duration = Duration::from_secs(20);

fn config(db: &PgDatabase, workers: u32, poll_s: f64) -> Value {
    config_url(&db.url, workers, poll_s)
}

fn config_url(url: &str, workers: u32, poll_s: f64) -> Value {
    json!({
        "store": {"postgres": {"url": url}},
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
    submit_all(
        &a,
        (0..60).map(|_| {
            json!({"group": "a", "command": ["sh", "-c",
                format!("echo $SUPERVISOR_JOB_ID >> {}; sleep 0.05", ran.display())]})
        }),
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

/// The test server's unix socket directory and port, from its URL.
fn server_socket() -> (String, String) {
    let url = std::env::var(supervisor_store::testing::PG_URL_VAR).expect("a server URL");
    let get = |key: &str| {
        url.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the server URL"))
            .to_string()
    };
    (get("host="), get("port="))
}

/// A proxy in front of the test server.
fn proxy() -> crate::common::proxy::Proxy {
    let (dir, port) = server_socket();
    crate::common::proxy::Proxy::start(&dir, &port)
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
    submit_all(&sb, (0..150).map(|_| start_end(&trace, "0.05")));
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

/// A job of group `a` that writes `start ID` to `trace`, sleeps `secs`, and writes
/// `end ID` (see [`runs_in`]).
fn start_end(trace: &Path, secs: &str) -> Value {
    json!({"group": "a", "command": ["sh", "-c", format!(
        "echo start $SUPERVISOR_JOB_ID >> {t}; sleep {secs}; echo end $SUPERVISOR_JOB_ID >> {t}",
        t = trace.display())]})
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
    submit_all(&b, (0..40).map(|_| start_end(&trace, "0.2")));
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

// ----- a server killed, a partition longer than dead_after --------------------------------

/// A traced job's command: it takes the job's lock in `dir/locks` (a run that finds it
/// held, by another run of the same job still alive, writes `overlap` and fails: the
/// kernel's word on "never twice at once"), writes `start ID INSTANCE PID TIME` to
/// `dir/trace`, does `work`, and writes `end ...` likewise. TIME is the job's own clock
/// (bash's `EPOCHREALTIME`, the clock of the events' `ts`), INSTANCE the supervisor that
/// runs it (`pid:token`), PID the job's own.
fn traced(dir: &Path, work: &str) -> Value {
    let line = |what: &str| {
        format!(
            "echo {what} $SUPERVISOR_JOB_ID $SUPERVISOR_INSTANCE $$ $EPOCHREALTIME >> {}",
            dir.join("trace").display()
        )
    };
    let script = format!(
        "exec 9>>{locks}/$SUPERVISOR_JOB_ID\n\
         if ! flock -n 9; then {overlap}; exit 99; fi\n\
         {start}\n{work}\n{end}",
        locks = dir.join("locks").display(),
        overlap = line("overlap"),
        start = line("start"),
        end = line("end"),
    );
    json!({"group": "a", "command": ["bash", "-c", script]})
}

/// One run of a job, from a trace (see [`traced`]).
#[derive(Debug)]
struct Run {
    job: i64,
    /// The pid of the supervisor that ran it.
    supervisor: u32,
    pid: u32,
    start: f64,
    /// None: killed before it could say.
    end: Option<f64>,
}

/// The runs in `dir/trace`, by job, each job's in the order they started; panics if a
/// lock caught two runs of a job at once.
fn runs_of(dir: &Path) -> BTreeMap<i64, Vec<Run>> {
    let text = fs::read_to_string(dir.join("trace")).unwrap_or_default();
    let mut runs: BTreeMap<i64, Vec<Run>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 5, "a trace line: {line:?}");
        let job: i64 = f[1].parse().unwrap();
        let supervisor: u32 = f[2].split(':').next().unwrap().parse().unwrap();
        let pid: u32 = f[3].parse().unwrap();
        let at: f64 = f[4].parse().unwrap();
        match f[0] {
            "overlap" => panic!(
                "job {job} started on supervisor {supervisor} while another run of it was \
                 alive (held its lock)\n{text}"
            ),
            "start" => runs.entry(job).or_default().push(Run {
                job,
                supervisor,
                pid,
                start: at,
                end: None,
            }),
            _ => {
                let run = runs
                    .get_mut(&job)
                    .and_then(|rs| rs.iter_mut().find(|r| r.pid == pid && r.end.is_none()))
                    .unwrap_or_else(|| panic!("an end without a start: {line:?}"));
                run.end = Some(at);
            }
        }
    }
    for rs in runs.values_mut() {
        rs.sort_by(|x, y| x.start.total_cmp(&y.start));
    }
    runs
}

/// Asserts that no two runs of a job overlap in time: each ends (at its `end`, or, for
/// one killed before it could write it, at `killed_by`: a time by which it was seen
/// gone) before the next one starts.
fn assert_never_at_once(runs: &BTreeMap<i64, Vec<Run>>, killed_by: f64) {
    for (job, rs) in runs {
        for w in rs.windows(2) {
            let end = w[0].end.unwrap_or(killed_by);
            assert!(
                end <= w[1].start,
                "job {job} ran twice at once: {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
}

/// Submits `jobs` (JSONL objects) with one `submit --file`; their ids.
fn submit_all(sb: &Sandbox, jobs: impl Iterator<Item = Value>) -> Vec<i64> {
    let lines: Vec<String> = jobs.map(|j| j.to_string()).collect();
    let file = sb.path().join("jobs.jsonl");
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = sb.run(&["submit", "--file", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), lines.len());
    ids
}

/// Waits until every job of `ids` has `succeeded` in the store (of `sb`).
fn wait_all_succeeded(sb: &Sandbox, ids: &[i64], within: Duration, dump: impl Fn() -> String) {
    let mut last = BTreeMap::new();
    wait_until(within, || {
        last = jobs(sb);
        ids.iter()
            .all(|id| last.get(id).is_some_and(|j| j["state"] == "succeeded"))
    })
    .unwrap_or_else(|_| {
        let left: Vec<&Value> = ids
            .iter()
            .filter_map(|id| last.get(id))
            .filter(|j| j["state"] != "succeeded")
            .collect();
        panic!("not every job succeeded: {left:?}\n{}", dump())
    });
}

/// Store and events agree: every job of `ids` `succeeded` in the store (every other job
/// too), and `events` (of every supervisor on the store) say so once for each: one
/// `job_finished` with outcome `succeeded`, for these jobs only.
fn assert_store_and_events_agree(sb: &Sandbox, ids: &[i64], events: &[Value]) {
    let store = jobs(sb);
    let mut want: Vec<i64> = ids.to_vec();
    want.sort_unstable();
    assert_eq!(store.keys().copied().collect::<Vec<_>>(), want);
    for j in store.values() {
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let mut succeeded: BTreeMap<i64, u32> = BTreeMap::new();
    for e in events {
        if e["event"] == "job_finished" && e["outcome"] == "succeeded" {
            *succeeded.entry(e["job_id"].as_i64().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(succeeded.keys().copied().collect::<Vec<_>>(), want);
    assert!(
        succeeded.values().all(|n| *n == 1),
        "a job said to succeed more than once: {succeeded:?}"
    );
}

/// What a run leaves in a state dir besides its own files: outcomes still waiting, a
/// journal or events file half written.
fn leftovers(state: &Path) -> Vec<String> {
    fs::read_dir(state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "outcomes.journal" || n.ends_with(".tmp"))
        .collect()
}

/// kill -9 of the postmaster while two supervisors run jobs, then crash recovery: no job
/// lost, none run twice (nor twice at once), store and events agree, nothing left.
#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_server_killed_mid_run_loses_no_job_and_runs_none_twice() {
    // A server of its own: the shared one serves the tests running beside this one.
    let server = pg_server::PgServer::new();
    let c = config_url(&server.url(), 2, 0.5);
    let (a, b) = (Sandbox::new(&c), Sandbox::new(&c));
    let (sv_a, sv_b) = (a.start(&[]), b.start(&[]));
    let dir = a.path();
    fs::create_dir(dir.join("locks")).unwrap();
    let ids = submit_all(&a, (0..150).map(|_| traced(dir, "sleep 0.05")));
    let both = [&sv_a, &sv_b];
    let dump = || format!("{}\n{}", sv_a.dump(), sv_b.dump());
    let events = || -> Vec<Value> { both.iter().flat_map(|sv| sv.events()).collect() };
    wait_until(T, || {
        events()
            .iter()
            .filter(|e| e["event"] == "job_finished")
            .count()
            >= 40
    })
    .unwrap_or_else(|_| panic!("jobs do not run\n{}", dump()));

    // kill -9 of the postmaster mid-run; its backends exit when they see it gone.
    server.kill_postmaster();
    wait_until(T, || {
        events()
            .iter()
            .any(|e| e["event"] == "outcomes_waiting" && e["count"].as_u64() > Some(0))
    })
    .unwrap_or_else(|_| panic!("no outcome waits for the killed server\n{}", dump()));
    // Started again: crash recovery, then the supervisors' connections open again.
    server.start();
    wait_all_succeeded(&a, &ids, Duration::from_secs(60), dump);

    // Each job ran once (no attempt lost, none run again), never twice at once.
    let runs = runs_of(dir);
    assert_eq!(runs.len(), ids.len());
    for (job, rs) in &runs {
        assert_eq!(rs.len(), 1, "job {job} ran more than once: {rs:?}");
        assert!(rs[0].end.is_some(), "job {job} never ended: {rs:?}");
    }
    assert_store_and_events_agree(&a, &ids, &events());
    assert!(jobs(&a).values().all(|j| j["attempts"] == 1));
    stop(sv_a);
    stop(sv_b);
    for sb in [&a, &b] {
        assert_eq!(leftovers(&sb.path().join("state")), Vec::<String>::new());
    }
}

/// `supervisor run` for `sb`, on the other host of `net`.
fn start_on(net: &partition::Network, sb: &Sandbox) -> Supervisor {
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sb.path().join("supervisor.stderr"))
        .unwrap();
    let mut cmd = net.command(bin());
    cmd.arg("run")
        .arg("-c")
        .arg(sb.config_path())
        .current_dir(sb.path())
        .env_remove("SUPERVISOR_CONFIG");
    let sv = spawn_supervisor(&mut cmd, stderr, sb.events_path(), sb.path());
    sv.wait_started();
    sv
}

/// Wall-clock seconds, as in the events' `ts` and the traces.
fn wall() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Two supervisors on one queue, `a` on another host; every packet between `a` and the
/// server dropped for 60 s, with the default timings (dead after 30 s). `a` must fence
/// itself (stop, kill its jobs) before `b` may take it for dead, and be gone by one touch
/// interval after the heal, exit 1 and say so; `b` runs `a`'s jobs again, never while
/// `a`'s run is alive (a lock per job, and the runs' times); no job lost; store and
/// events agree; nothing left.
#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_60_s_partition_fences_the_cut_off_supervisor_and_its_jobs_run_elsewhere_never_at_once() {
    let db = PgDatabase::new();
    let (socket_dir, port) = server_socket();
    let hostname = format!("partitioned-{}", std::process::id());
    let socket = Path::new(&socket_dir).join(format!(".s.PGSQL.{port}"));
    let net = match partition::Network::new(&socket, &hostname) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // The default liveness timings: a touch every 5 s, dead after 30 s unheard, so a
    // supervisor that cannot touch fences itself after 30 - 5 - 2 = 23 s.
    const TOUCH_EVERY_S: u64 = 5;
    const DEAD_AFTER_S: f64 = 30.0;
    // `a` on the other host, through the network that will fail; `b` here.
    let mut ca = config(&db, 3, 0.5);
    ca["store"]["postgres"]["url"] = json!(net.url(&db.name));
    let a = Sandbox::new(&ca);
    let b = Sandbox::new(&config(&db, 2, 0.5));
    let dir = b.path();
    fs::create_dir(dir.join("locks")).unwrap();
    let go = dir.join("go");
    let mut sv_a = start_on(&net, &a);

    // Two long jobs (until `go` exists), on `a`: the only supervisor yet.
    let wait_go = format!("while [ ! -e {} ]; do sleep 0.1; done", go.display());
    let long = submit_all(&b, (0..2).map(|_| traced(dir, &wait_go)));
    for id in &long {
        sv_a.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == *id);
    }
    // Then short ones, on both: `a` runs them on its third worker.
    let sv_b = b.start(&[]);
    let short = submit_all(&b, (0..24).map(|_| traced(dir, "sleep 1")));
    let is_short = |e: &Value| {
        e["event"] == "job_started" && short.contains(&e["job_id"].as_i64().unwrap_or(0))
    };
    sv_a.wait_event(T, is_short);
    sv_b.wait_event(T, is_short);
    let all: Vec<i64> = long.iter().chain(&short).copied().collect();
    let stderr_a = || fs::read_to_string(a.path().join("supervisor.stderr")).unwrap_or_default();
    let timeouts = |text: String| text.to_lowercase().matches("timed out").count();
    let timeouts_before = timeouts(stderr_a());

    // The partition: every packet between `a` and the server lost, for 60 s.
    net.cut();
    let (cut_at, cut_ts) = (Instant::now(), wall());
    // `a`'s calls to the store hang until TCP gives up on them (its user timeout, or the
    // connect timeout). By the first such failure, whatever `a` sent before the cut has
    // long reached the server, whose last word from it is final.
    wait_until(Duration::from_secs(40), || {
        timeouts(stderr_a()) > timeouts_before
    })
    .unwrap_or_else(|_| panic!("`a` never found the store gone\n{}", sv_a.dump()));
    let last_seen: f64 = db
        .client()
        .query_one(
            "SELECT last_seen FROM instances WHERE host = $1",
            &[&hostname],
        )
        .unwrap_or_else(|e| panic!("`a`'s instance: {e}\n{}", sv_b.dump()))
        .get(0);
    // From then on `b` may take `a` for dead.
    let dead_from = last_seen + DEAD_AFTER_S;

    // `a` fences itself before that: says so, stops claiming and kills its jobs.
    let a_pid = sv_a.pid();
    let running_on_a = || -> Vec<Run> {
        runs_of(dir)
            .into_values()
            .flatten()
            .filter(|r| r.supervisor == a_pid && alive(r.pid))
            .collect()
    };
    let mut stopping = None;
    let fenced = wait_until(
        Duration::from_secs_f64((dead_from - wall()).max(0.0)),
        || {
            stopping = sv_a
                .events()
                .into_iter()
                .find(|e| e["event"] == "supervisor_stopping");
            stopping.is_some() && running_on_a().is_empty()
        },
    );
    let gone_by = wall();
    if fenced.is_err() {
        panic!(
            "`a` has not fenced itself {DEAD_AFTER_S} s after its last touch ({:.1} s from \
             the cut), when `b` may take it for dead: stopping: {stopping:?}; its jobs \
             still running: {:?}\n{}",
            last_seen - cut_ts,
            running_on_a(),
            sv_a.dump()
        );
    }
    let stopping = stopping.unwrap();
    assert!(
        stopping["reason"].as_str().unwrap().starts_with("fenced"),
        "{stopping}"
    );
    let fenced_at = stopping["ts"].as_f64().unwrap();
    let killed: Vec<Run> = runs_of(dir)
        .into_values()
        .flatten()
        .filter(|r| r.supervisor == a_pid && r.end.is_none())
        .collect();
    for id in &long {
        assert!(
            killed.iter().any(|r| r.job == *id),
            "long job {id} was not killed on `a`: {killed:?}"
        );
    }

    // `b` takes `a` for dead and runs its jobs again, once they are gone.
    for id in &long {
        sv_b.wait_event(Duration::from_secs(60), |e| {
            e["event"] == "job_started" && e["job_id"] == *id
        });
    }
    // The partition lasts 60 s by the clock.
    wait_until(Duration::from_secs(70), || {
        cut_at.elapsed() >= Duration::from_secs(60)
    })
    .unwrap();
    net.heal();
    let healed = Instant::now();

    // By one touch interval after the heal (if not before), `a`, taken for dead, has
    // exited 1, and its events say so; nothing of it is left.
    let child = sv_a.child.as_mut().unwrap();
    let mut status = None;
    let _ = wait_until(Duration::from_secs(TOUCH_EVERY_S), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let Some(status) = status else {
        panic!(
            "`a` still runs {:.1} s after the partition healed\n{}",
            healed.elapsed().as_secs_f64(),
            sv_a.dump()
        );
    };
    assert_eq!(status.code(), Some(1), "{}", sv_a.dump());
    sv_a.assert_nothing_left(Duration::from_secs(2));
    let a_events = sv_a.events();
    let stopped = a_events
        .iter()
        .find(|e| e["event"] == "supervisor_stopped")
        .unwrap_or_else(|| panic!("no supervisor_stopped\n{}", sv_a.dump()));
    assert_eq!(
        stopped["code"], 1,
        "events and exit status disagree: {stopped}"
    );
    assert!(
        runs_of(dir)
            .values()
            .flatten()
            .all(|r| r.supervisor != a_pid || r.start < fenced_at),
        "a job started on `a` after it fenced itself\n{}",
        sv_a.dump()
    );
    drop(sv_a);

    // Its service manager starts it again: a new instance on the same host, that settles
    // what its journal kept (outcomes of runs `b` has made again since).
    let sv_a2 = start_on(&net, &a);
    fs::write(&go, "").unwrap();
    let dump = || format!("{}\n{}", sv_a2.dump(), sv_b.dump());
    wait_all_succeeded(&b, &all, Duration::from_secs(60), dump);
    wait_until(T, || !a.path().join("state/outcomes.journal").exists())
        .unwrap_or_else(|_| panic!("the journal of `a` was never settled\n{}", dump()));

    // No job lost (each ran to its end somewhere), none twice at once; only `a`'s runs
    // were cut short, and those before `b` could take them.
    let runs = runs_of(dir);
    assert_eq!(runs.keys().copied().collect::<Vec<_>>(), {
        let mut ids = all.clone();
        ids.sort_unstable();
        ids
    });
    assert_never_at_once(&runs, gone_by);
    for (job, rs) in &runs {
        assert!(rs.iter().any(|r| r.end.is_some()), "job {job}: {rs:?}");
        for r in rs.iter().filter(|r| r.end.is_none()) {
            assert!(
                killed.iter().any(|k| k.pid == r.pid),
                "job {job}: a run that never ended, not one that the fence killed: {r:?}"
            );
        }
    }
    for id in &long {
        let rs = &runs[id];
        assert_eq!(rs[0].supervisor, a_pid, "{rs:?}");
        assert!(rs[1..].iter().all(|r| r.start > gone_by), "{rs:?}");
    }
    let mut events = a_events;
    events.extend(sv_a2.events());
    events.extend(sv_b.events());
    assert_store_and_events_agree(&b, &all, &events);

    stop(sv_a2);
    stop(sv_b);
    for sb in [&a, &b] {
        assert_eq!(leftovers(&sb.path().join("state")), Vec::<String>::new());
    }
}

/// The same network, cut for 10 s (under the 23 s after which `a` would fence itself):
/// `a`'s calls hang, then go on; nothing is run again, nothing fenced.
#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_black_hole_shorter_than_dead_after_reruns_nothing() {
    let db = PgDatabase::new();
    let (socket_dir, port) = server_socket();
    let hostname = format!("blackholed-{}", std::process::id());
    let socket = Path::new(&socket_dir).join(format!(".s.PGSQL.{port}"));
    let net = match partition::Network::new(&socket, &hostname) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // The default timings everywhere (liveness, heartbeats): 10 s unheard is well under
    // the 23 s after which `a` would fence itself. `a` alone has group `only_a`.
    let config = |url: &str, groups: Value| {
        json!({
            "store": {"postgres": {"url": url}},
            "groups": groups,
            "grabber": {"poll_interval_s": 0.5},
            "shutdown_grace_s": 1
        })
    };
    let a = Sandbox::new(&config(
        &net.url(&db.name),
        json!([{"name": "a", "max_workers": 2}, {"name": "only_a", "max_workers": 1}]),
    ));
    let b = Sandbox::new(&config(&db.url, json!([{"name": "a", "max_workers": 2}])));
    let dir = b.path();
    fs::create_dir(dir.join("locks")).unwrap();
    let go = dir.join("go");
    let sv_a = start_on(&net, &a);
    // A job that runs on `a` through the black hole, until `go` exists.
    let wait_go = format!("while [ ! -e {} ]; do sleep 0.1; done", go.display());
    let held = submit_all(&b, std::iter::once(traced(dir, &wait_go)));
    sv_a.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held[0]);
    let sv_b = b.start(&[]);
    let short = submit_all(&b, (0..30).map(|_| traced(dir, "sleep 0.5")));
    let is_short = |e: &Value| {
        e["event"] == "job_started" && short.contains(&e["job_id"].as_i64().unwrap_or(0))
    };
    sv_a.wait_event(T, is_short);
    sv_b.wait_event(T, is_short);

    // 10 s (by the clock) in which every packet between `a` and the server is lost: its
    // calls hang, and fail only when TCP gives up on them.
    net.cut();
    let cut_at = Instant::now();
    wait_until(Duration::from_secs(15), || {
        cut_at.elapsed() >= Duration::from_secs(10)
    })
    .unwrap();
    net.heal();
    let healed_ts = wall();
    fs::write(&go, "").unwrap();
    // `a` comes back: its held job's outcome lands, and it claims again (a job only it
    // can run).
    let mut only_a = traced(dir, "true");
    only_a["group"] = json!("only_a");
    let after = submit_all(&b, std::iter::once(only_a));
    let all: Vec<i64> = held.iter().chain(&short).chain(&after).copied().collect();
    let dump = || format!("{}\n{}", sv_a.dump(), sv_b.dump());
    wait_all_succeeded(&b, &all, Duration::from_secs(60), dump);
    let started = sv_a.wait_event(T, |e| {
        e["event"] == "job_started" && e["job_id"] == after[0]
    });
    assert!(started["ts"].as_f64().unwrap() > healed_ts);

    // Nothing rerun, nothing fenced, nothing lost; store and events agree.
    assert!(
        !sv_a
            .events()
            .iter()
            .any(|e| e["event"] == "supervisor_stopping"),
        "{}",
        dump()
    );
    let runs = runs_of(dir);
    assert_eq!(runs.len(), all.len());
    for (job, rs) in &runs {
        assert_eq!(rs.len(), 1, "job {job} ran again: {rs:?}\n{}", dump());
        assert!(rs[0].end.is_some(), "job {job}: {rs:?}");
    }
    let mut events = sv_a.events();
    events.extend(sv_b.events());
    assert_store_and_events_agree(&b, &all, &events);
    assert!(jobs(&b).values().all(|j| j["attempts"] == 1));
    stop(sv_a);
    stop(sv_b);
    for sb in [&a, &b] {
        assert_eq!(leftovers(&sb.path().join("state")), Vec::<String>::new());
    }
}
