//! Processes and signals: crashed and wedged children are replaced, restart limits give
//! up as configured, SIGTERM / SIGINT / SIGKILL of the supervisor leave nothing behind,
//! the events file rotates and reopens, and the pidfile guards the state dir.
//!
//! Every test runs the real binary, sends real signals and waits on conditions with
//! deadlines.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::*;

const SEC: Duration = Duration::from_secs(1);

// ----- helpers -----------------------------------------------------------------------

/// A group with fast restarts.
fn group(name: &str, max_workers: u32, max_restarts: u32, on_exhausted: &str) -> Value {
    json!({
        "name": name,
        "max_workers": max_workers,
        "restart": {
            "backoff": {"initial_s": 0.05, "max_s": 0.2, "jitter": 0},
            "max_restarts": max_restarts,
            "period_s": 60,
            "on_exhausted": on_exhausted,
        },
    })
}

/// A config with a fast heartbeat and these groups.
fn config(groups: Vec<Value>) -> Value {
    json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 1},
        "groups": groups,
    })
}

/// The usual one: group `a` with two workers, five restarts a minute, then exit.
fn default_config() -> Value {
    config(vec![group("a", 2, 5, "exit")])
}

fn signal_pid(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill {pid} {sig}: {e}"));
}

/// Whether `pid` has no /proc entry at all: dead and reaped.
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn pid_of(e: &Value) -> u32 {
    e["pid"].as_u64().expect("event has a pid") as u32
}

/// Whether `e` is about the child at (role, group, slot); the grabber has null group
/// and slot.
fn is_child(e: &Value, role: &str, grp: Option<&str>, slot: Option<u64>) -> bool {
    e["role"] == role && e["group"] == json!(grp) && e["slot"] == json!(slot)
}

/// A child as the events file names it.
#[derive(Clone, Debug)]
struct ChildRef {
    role: String,
    group: Option<String>,
    slot: Option<u64>,
    pid: u32,
}

impl ChildRef {
    fn from_event(e: &Value) -> ChildRef {
        ChildRef {
            role: e["role"].as_str().unwrap().to_string(),
            group: e["group"].as_str().map(str::to_string),
            slot: e["slot"].as_u64(),
            pid: pid_of(e),
        }
    }

    fn matches(&self, e: &Value) -> bool {
        is_child(e, &self.role, self.group.as_deref(), self.slot)
    }
}

/// Wait until `n` workers of `grp` have reported ready; the first `n` of them.
fn ready_workers(sv: &Supervisor, grp: &str, n: usize) -> Vec<ChildRef> {
    sv.wait_events(10 * SEC, n, |e| {
        e["event"] == "child_ready" && e["role"] == "worker" && e["group"] == grp
    })
    .iter()
    .take(n)
    .map(ChildRef::from_event)
    .collect()
}

fn ready_grabber(sv: &Supervisor) -> ChildRef {
    ChildRef::from_event(&sv.wait_event(10 * SEC, |e| {
        e["event"] == "child_ready" && e["role"] == "grabber"
    }))
}

/// The `child_exited` event of process `pid`.
fn wait_exited(sv: &Supervisor, pid: u32, within: Duration) -> Value {
    sv.wait_event(within, |e| {
        e["event"] == "child_exited" && e["pid"] == json!(pid)
    })
}

/// After `old` crashed: its `child_exited` (unexpected, by `signal`), the restart
/// scheduled for its slot, then a new `child_started` and `child_ready` for the same
/// slot with a new pid. Returns the replacement.
fn expect_replacement(sv: &Supervisor, old: &ChildRef, signal: i32, within: Duration) -> ChildRef {
    let exited = wait_exited(sv, old.pid, within);
    assert!(old.matches(&exited), "exit of the wrong child: {exited}");
    assert_eq!(exited["expected"], false, "{exited}");
    assert_eq!(exited["signal"], signal, "{exited}");
    assert_eq!(exited["code"], Value::Null, "{exited}");
    let after = seq(&exited);
    let scheduled = sv.wait_event(5 * SEC, |e| {
        e["event"] == "child_restart_scheduled" && old.matches(e) && seq(e) > after
    });
    assert!(scheduled["delay_s"].as_f64().is_some(), "{scheduled}");
    assert!(
        scheduled["restarts_in_period"].as_u64().unwrap_or(0) >= 1,
        "{scheduled}"
    );
    let started = sv.wait_event(5 * SEC, |e| {
        e["event"] == "child_started" && old.matches(e) && seq(e) > seq(&scheduled)
    });
    let new = ChildRef::from_event(&started);
    assert_ne!(new.pid, old.pid, "the replacement reuses the dead pid");
    sv.wait_event(5 * SEC, |e| {
        e["event"] == "child_ready" && old.matches(e) && e["pid"] == json!(new.pid)
    });
    assert!(alive(new.pid), "the replacement {} is not alive", new.pid);
    new
}

/// Wait until job `id` is in one of `states`; on failure, show the events too.
fn wait_job(sb: &Sandbox, sv: &Supervisor, id: i64, states: &[&str]) -> Value {
    let mut last = Value::Null;
    wait_until(10 * SEC, || {
        last = sb.job(id);
        states.contains(&last["state"].as_str().unwrap_or(""))
    })
    .unwrap_or_else(|_| {
        panic!(
            "job {id} never reached {states:?}; last: {last}\nevents:\n{}",
            sv.dump()
        )
    });
    last
}

/// A job whose shell writes its pid to a file, then becomes `sleep 30`: returns the
/// job id and the file.
fn submit_sleeper(sb: &Sandbox, grp: &str, name: &str) -> (i64, PathBuf) {
    let file = sb.path().join(name);
    let script = format!("echo $$ > {}; exec sleep 30", file.display());
    let id = sb.submit(&["--group", grp, "--", "sh", "-c", &script]);
    (id, file)
}

/// The pid a sleeper wrote, once it is written and alive.
fn wait_pid_file(file: &Path) -> u32 {
    let mut pid = None;
    wait_until(10 * SEC, || {
        pid = fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        pid.is_some_and(alive)
    })
    .unwrap_or_else(|_| panic!("no live pid in {} within 10 s", file.display()));
    pid.unwrap()
}

/// A process the test started itself; killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stop with SIGTERM and expect a clean exit 0 with nothing left.
fn stop_cleanly(sv: &mut Supervisor) {
    sv.signal(Signal::SIGTERM);
    assert_eq!(sv.wait_exit(10 * SEC), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(2 * SEC);
}

// ----- crashes and the watchdog ------------------------------------------------------

#[test]
fn kill_a_worker_and_it_is_replaced() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    let workers = ready_workers(&sv, "a", 2);
    let victim = workers[0].clone();

    signal_pid(victim.pid, Signal::SIGKILL);
    let new = expect_replacement(&sv, &victim, 9, 5 * SEC);
    assert_eq!(new.group.as_deref(), Some("a"));
    assert_eq!(new.slot, victim.slot);
    wait_until(SEC, || reaped(victim.pid))
        .unwrap_or_else(|_| panic!("the killed worker {} was never reaped", victim.pid));
    // The other worker was not touched.
    assert!(alive(workers[1].pid));
    let other_exits = sv
        .events()
        .into_iter()
        .filter(|e| e["event"] == "child_exited" && e["pid"] == json!(workers[1].pid))
        .count();
    assert_eq!(other_exits, 0, "{}", sv.dump());

    // The new worker works.
    let id = sb.submit(&["--group", "a", "--", "true"]);
    wait_job(&sb, &sv, id, &["succeeded"]);
    stop_cleanly(&mut sv);
}

#[test]
fn kill_the_grabber_and_it_is_replaced() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    let grabber = ready_grabber(&sv);
    assert_eq!(grabber.group, None);
    assert_eq!(grabber.slot, None);

    signal_pid(grabber.pid, Signal::SIGKILL);
    let new = expect_replacement(&sv, &grabber, 9, 5 * SEC);
    assert_eq!(new.role, "grabber");
    assert_eq!((new.group, new.slot), (None, None));

    // The new grabber claims jobs.
    let id = sb.submit(&["--group", "a", "--", "true"]);
    wait_job(&sb, &sv, id, &["succeeded"]);
    stop_cleanly(&mut sv);
}

#[test]
fn outcomes_handed_to_a_grabber_that_hangs_are_stored_by_the_supervisor() {
    // The grabber stores a job's outcome with its next claim. Stopped, and not killed
    // (its heartbeat's timeout is a minute), it leaves them to the supervisor, which
    // stores them itself after a second, each once.
    let mut cfg = default_config();
    cfg["heartbeat"] = json!({"interval_s": 0.2, "timeout_s": 60});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    let grabber = ready_grabber(&sv);
    let held = [
        sb.submit_held("one", &["--group", "a"]),
        sb.submit_held("two", &["--group", "a"]),
    ];
    for h in &held {
        h.pid();
    }
    signal_pid(grabber.pid, Signal::SIGSTOP);
    let stopped_at = wall_now();
    for h in &held {
        h.release();
    }
    for h in &held {
        let done = sv.wait_event(10 * SEC, |e| {
            e["event"] == "job_finished" && e["job_id"] == h.id
        });
        assert_eq!(done["outcome"], "succeeded", "{done}");
        let after = done["ts"].as_f64().unwrap() - stopped_at;
        // Handed to the grabber (held a second), then stored here.
        assert!(
            (0.9..5.0).contains(&after),
            "stored {after:.3} s after the grabber stopped\n{}",
            sv.dump()
        );
        assert_eq!(sb.job(h.id)["state"], "succeeded");
    }
    assert!(
        alive(grabber.pid),
        "the stopped grabber was replaced\n{}",
        sv.dump()
    );
    signal_pid(grabber.pid, Signal::SIGCONT);
    // Going again, it stores what it was handed (stale now: refused) and claims on.
    let id = sb.submit(&["--group", "a", "--", "true"]);
    wait_job(&sb, &sv, id, &["succeeded"]);
    sv.wait_event(10 * SEC, |e| {
        e["event"] == "job_finished" && e["job_id"] == id
    });
    for job in [held[0].id, held[1].id, id] {
        let finished = (sv.events().iter())
            .filter(|e| e["event"] == "job_finished" && e["job_id"] == job)
            .count();
        assert_eq!(finished, 1, "job {job}\n{}", sv.dump());
    }
    let exits = (sv.events().iter())
        .filter(|e| e["event"] == "child_exited" && e["pid"] == json!(grabber.pid))
        .count();
    assert_eq!(exits, 0, "{}", sv.dump());
    stop_cleanly(&mut sv);
}

#[test]
fn a_job_canceled_while_it_fails_on_its_own_is_canceled_in_the_events_as_in_the_store() {
    // The grabber is stopped, so the cancel reaches the store but not the core: the
    // job fails (exit 3, attempts left), and the store makes it `canceled` rather than
    // queue a retry. The events say so too: no retry is announced.
    let mut cfg = default_config();
    cfg["heartbeat"] = json!({"interval_s": 0.2, "timeout_s": 60});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    let grabber = ready_grabber(&sv);
    let held = sb.submit_held("h", &["--group", "a", "--max-attempts", "3"]);
    held.pid();
    signal_pid(grabber.pid, Signal::SIGSTOP);
    let out = sb.run(&["cancel", &held.id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    held.release_with(3);
    let done = sv.wait_event(10 * SEC, |e| {
        e["event"] == "job_finished" && e["job_id"] == held.id
    });
    assert_eq!(done["outcome"], "canceled", "{done}");
    assert_eq!(done["exit_code"], 3, "{done}");
    let job = sb.job(held.id);
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_u64()),
        (Some("canceled"), Some(1)),
        "{job}"
    );
    signal_pid(grabber.pid, Signal::SIGCONT);
    // A job after it runs: the grabber is back, and nothing more is said of this one.
    let next = sb.submit(&["--group", "a", "--", "true"]);
    wait_job(&sb, &sv, next, &["succeeded"]);
    sv.wait_event(10 * SEC, |e| {
        e["event"] == "job_finished" && e["job_id"] == next
    });
    let about: Vec<Value> = (sv.events().into_iter())
        .filter(|e| e["job_id"] == held.id && e["event"] != "child_exited")
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(
        about,
        [json!("job_started"), json!("job_finished")],
        "{}",
        sv.dump()
    );
    stop_cleanly(&mut sv);
}

#[test]
fn a_store_locked_past_the_heartbeat_timeout_kills_no_child_and_loses_no_outcome() {
    // heartbeat: interval 0.2 s, timeout 1 s; the store is locked for 3 s, and a job
    // ends meanwhile. The supervisor's and the grabber's store calls give up within a
    // second (the outcome waits, and is tried again): no child goes unanswered.
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    ready_grabber(&sv);
    let ends = sb.submit_held("ends", &["--group", "a"]);
    let runs = sb.submit_held("runs", &["--group", "a"]);
    let ends_pid = ends.pid();
    runs.pid();
    let db = rusqlite::Connection::open(sb.path().join("state/jobs.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked_at = Instant::now();
    ends.release();
    wait_until(10 * SEC, || reaped(ends_pid)).expect("the job ends");
    // The fault lasts 3 s (three heartbeat timeouts).
    std::thread::sleep((3 * SEC).saturating_sub(locked_at.elapsed()));
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let done = sv.wait_event(10 * SEC, |e| {
        e["event"] == "job_finished" && e["job_id"] == ends.id
    });
    assert_eq!(done["outcome"], "succeeded", "{done}");
    runs.release();
    wait_job(&sb, &sv, runs.id, &["succeeded"]);
    sv.wait_event(10 * SEC, |e| {
        e["event"] == "job_finished" && e["job_id"] == runs.id
    });
    let exits: Vec<Value> = (sv.events().into_iter())
        .filter(|e| e["event"] == "child_exited")
        .collect();
    assert!(exits.is_empty(), "{exits:?}\n{}", sv.dump());
    assert_eq!(sb.job(ends.id)["state"], "succeeded");
    stop_cleanly(&mut sv);
}

#[test]
fn a_stop_under_a_locked_store_leaves_its_jobs_to_the_next_run_which_runs_no_finished_one_again() {
    // The store is locked while a job ends (its outcome waits) and the supervisor is
    // stopped at once (the other job killed, and not given back: the store refuses).
    // The next run stores the outcome first, then gives the other job back as the stop
    // would have: the finished job does not run again, and the stop is not taken for
    // the death of a supervisor.
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    let ends = sb.submit_held("ends", &["--group", "a"]);
    let runs = sb.submit_held("runs", &["--group", "a"]);
    let ends_pid = ends.pid();
    runs.pid();
    let path = sb.path().join("state/jobs.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    ends.release();
    wait_until(10 * SEC, || reaped(ends_pid)).expect("the job ends");
    sv.wait_event(10 * SEC, |e| {
        e["event"] == "outcomes_waiting" && e["count"] == 1
    });
    sv.signal(Signal::SIGINT);
    // Two signals sent at once may arrive as one: the second once the first was heard.
    sv.wait_event(10 * SEC, |e| e["event"] == "supervisor_stopping");
    sv.signal(Signal::SIGINT);
    // "A second SIGINT stops at once": the locked store is tried once, not waited for
    // (it was 14 s: 5 s of retries, 5 s of give-back, 1 s a call).
    assert!(
        sv.wait_exit(5 * SEC).is_some(),
        "still running 5 s after a second SIGINT\n{}",
        sv.dump()
    );
    sv.assert_nothing_left(2 * SEC);
    let events = sv.events();
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some(json!("supervisor_stopped")),
        "the last event\n{}",
        sv.dump()
    );
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let journal = sb.path().join("state/outcomes.journal");
    assert!(journal.exists());

    let mut sv = sb.start(&["--until-empty"]);
    let again = sv.wait_event(10 * SEC, |e| {
        e["event"] == "job_started" && e["job_id"] == runs.id
    });
    assert_eq!(
        again["attempt"], 1,
        "given back, the attempt not used: {again}"
    );
    runs.release();
    assert_eq!(sv.wait_exit(30 * SEC), Some(0), "{}", sv.dump());
    let db = rusqlite::Connection::open(&path).unwrap();
    let deaths: i64 = db
        .query_row(
            "SELECT supervisor_deaths FROM jobs WHERE id = ?1",
            [runs.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(deaths, 0, "a stop is not a death");
    assert_eq!(sb.job(ends.id)["state"], "succeeded");
    assert_eq!(sb.job(ends.id)["attempts"], 1);
    assert_eq!(sb.job(runs.id)["state"], "succeeded");
    let started = (sv.events().into_iter())
        .filter(|e| e["event"] == "job_started" && e["job_id"] == ends.id)
        .count();
    assert_eq!(started, 0, "the finished job ran again\n{}", sv.dump());
    assert!(!journal.exists());
}

#[test]
fn a_stopped_worker_is_killed_by_the_watchdog() {
    // heartbeat: interval 0.2 s, timeout 1 s.
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    let victim = ready_workers(&sv, "a", 1).remove(0);

    let stopped_at = wall_now();
    signal_pid(victim.pid, Signal::SIGSTOP);
    let exited = wait_exited(&sv, victim.pid, 5 * SEC);
    let after = exited["ts"].as_f64().unwrap() - stopped_at;
    // Silent for `timeout_s` (it may have answered its last ping up to one interval
    // before the SIGSTOP), noticed at the next heartbeat tick.
    assert!(
        (0.5..1.2 + 0.8).contains(&after),
        "killed {after:.3} s after SIGSTOP; expected about 1 s (timeout 1 s, interval 0.2 s)\n{}",
        sv.dump()
    );
    let new = expect_replacement(&sv, &victim, 9, SEC);
    assert_eq!(new.slot, victim.slot);
    wait_until(SEC, || reaped(victim.pid))
        .unwrap_or_else(|_| panic!("the stopped worker {} is still there", victim.pid));
    stop_cleanly(&mut sv);
}

// ----- restart limits ----------------------------------------------------------------

#[test]
fn restart_limit_with_exit_stops_everything_with_code_3() {
    let sb = Sandbox::new(&config(vec![group("a", 2, 2, "exit")]));
    let mut sv = sb.start(&[]);
    let workers = ready_workers(&sv, "a", 2);
    ready_grabber(&sv);

    // Two crashes are restarted ...
    let mut victim = workers[0].clone();
    for n in 1..=2u64 {
        signal_pid(victim.pid, Signal::SIGKILL);
        let new = expect_replacement(&sv, &victim, 9, 5 * SEC);
        let scheduled: Vec<Value> = sv
            .events()
            .into_iter()
            .filter(|e| e["event"] == "child_restart_scheduled" && e["group"] == "a")
            .collect();
        assert_eq!(scheduled.len() as u64, n, "{}", sv.dump());
        assert_eq!(scheduled.last().unwrap()["restarts_in_period"], n);
        victim = new;
    }
    // ... the third is one too many in the period.
    signal_pid(victim.pid, Signal::SIGKILL);
    let gave_up = sv.wait_event(5 * SEC, |e| e["event"] == "group_gave_up");
    assert_eq!(gave_up["group"], "a", "{gave_up}");
    assert_eq!(gave_up["action"], "exit", "{gave_up}");
    assert_eq!(gave_up["period_s"], 60.0, "{gave_up}");
    assert!(gave_up["restarts"].as_u64().unwrap() > 2, "{gave_up}");

    assert_eq!(sv.wait_exit(10 * SEC), Some(3), "{}", sv.dump());
    let events = sv.events();
    let stopped = events.last().unwrap();
    assert_eq!(stopped["event"], "supervisor_stopped", "{}", sv.dump());
    assert_eq!(stopped["code"], 3);
    assert!(events
        .iter()
        .any(|e| e["event"] == "supervisor_stopping" && seq(e) > seq(&gave_up)));
    // No restart after giving up.
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "child_started" && seq(e) > seq(&gave_up)),
        "{}",
        sv.dump()
    );
    sv.assert_nothing_left(2 * SEC);
}

#[test]
fn restart_limit_with_disable_keeps_other_groups() {
    let sb = Sandbox::new(&config(vec![
        group("a", 2, 1, "disable"),
        group("b", 1, 5, "exit"),
    ]));
    let mut sv = sb.start(&[]);
    let a = ready_workers(&sv, "a", 2);
    let b = ready_workers(&sv, "b", 1).remove(0);
    ready_grabber(&sv);

    signal_pid(a[0].pid, Signal::SIGKILL);
    let replacement = expect_replacement(&sv, &a[0], 9, 5 * SEC);
    signal_pid(replacement.pid, Signal::SIGKILL);
    let gave_up = sv.wait_event(5 * SEC, |e| e["event"] == "group_gave_up");
    assert_eq!(gave_up["group"], "a", "{gave_up}");
    assert_eq!(gave_up["action"], "disable", "{gave_up}");

    // Group a's remaining worker is stopped (an expected exit), and every process of
    // group a is gone.
    let other = wait_exited(&sv, a[1].pid, 10 * SEC);
    assert_eq!(other["expected"], true, "{other}");
    for pid in [a[0].pid, a[1].pid, replacement.pid] {
        wait_until(2 * SEC, || !alive(pid))
            .unwrap_or_else(|_| panic!("group a's worker {pid} is still alive"));
    }

    // Group b goes on: same worker, and it runs jobs.
    let id = sb.submit(&["--group", "b", "--", "true"]);
    let job = wait_job(&sb, &sv, id, &["succeeded"]);
    assert_eq!(job["group"], "b");
    assert!(alive(b.pid), "group b's worker died");
    assert!(sv.child.as_mut().unwrap().try_wait().unwrap().is_none());

    let events = sv.events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "child_started" && e["group"] == "a" && seq(e) > seq(&gave_up)),
        "group a was restarted after it gave up:\n{}",
        sv.dump()
    );
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "child_exited" && e["pid"] == json!(b.pid)),
        "{}",
        sv.dump()
    );
    assert!(
        !events.iter().any(|e| e["event"] == "supervisor_stopping"),
        "{}",
        sv.dump()
    );
    // `status` shows no live worker of group a.
    let st = sb.status_json();
    for c in st["children"].as_array().unwrap() {
        if c["group"] == "a" {
            assert!(
                c["pid"].as_u64().is_none_or(|p| !alive(p as u32)),
                "status shows a live worker of the disabled group: {c}"
            );
        }
    }

    stop_cleanly(&mut sv);
}

// ----- stopping ----------------------------------------------------------------------

#[test]
fn sigterm_stops_gracefully_with_exit_0() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    ready_grabber(&sv);
    let sv_pid = sv.pid();

    sv.signal(Signal::SIGTERM);
    assert_eq!(sv.wait_exit(10 * SEC), Some(0), "{}", sv.dump());
    let events = sv.events();
    let stopping = events
        .iter()
        .find(|e| e["event"] == "supervisor_stopping")
        .unwrap_or_else(|| panic!("no supervisor_stopping:\n{}", sv.dump()));
    assert_eq!(stopping["reason"], "SIGTERM", "{stopping}");
    let stopped = events.last().unwrap();
    assert_eq!(stopped["event"], "supervisor_stopped", "{}", sv.dump());
    assert_eq!(stopped["code"], 0);
    assert!(seq(stopping) < seq(stopped));
    // Every child was asked to stop and did: no crash among them.
    let exits: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "child_exited")
        .collect();
    assert_eq!(exits.len(), 3, "{}", sv.dump());
    for e in exits {
        assert_eq!(e["expected"], true, "{e}");
        assert!(seq(e) > seq(stopping) && seq(e) < seq(stopped), "{e}");
    }
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "child_restart_scheduled"),
        "{}",
        sv.dump()
    );
    sv.assert_nothing_left(2 * SEC);
    // Reaped, not zombies: no /proc entry for any child the events named.
    let pids: Vec<u32> = pids_named(&events)
        .into_iter()
        .filter(|&p| p != sv_pid)
        .collect();
    wait_until(2 * SEC, || pids.iter().all(|&p| reaped(p)))
        .unwrap_or_else(|_| panic!("unreaped children: {pids:?}"));
}

#[test]
fn double_sigint_stops_at_once() {
    let mut cfg = default_config();
    cfg["shutdown_grace_s"] = json!(30);
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    let grabber = ready_grabber(&sv);
    let (id, file) = submit_sleeper(&sb, "a", "job.pid");
    wait_job(&sb, &sv, id, &["running"]);
    let job_pid = wait_pid_file(&file);

    // First SIGINT: stopping, waiting for the job.
    sv.signal(Signal::SIGINT);
    let stopping = sv.wait_event(5 * SEC, |e| e["event"] == "supervisor_stopping");
    assert_eq!(stopping["reason"], "SIGINT", "{stopping}");
    // The idle children go; the grabber's exit shows the stop was acted on.
    let g = wait_exited(&sv, grabber.pid, 10 * SEC);
    assert_eq!(g["expected"], true, "{g}");
    assert!(
        sv.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the supervisor exited on the first SIGINT with a job running:\n{}",
        sv.dump()
    );
    assert!(alive(job_pid), "the job was killed on the first SIGINT");
    assert!(!sv
        .events()
        .iter()
        .any(|e| e["event"] == "supervisor_stopped"));

    // Second SIGINT: now.
    let t = Instant::now();
    sv.signal(Signal::SIGINT);
    let code = sv.wait_exit(5 * SEC);
    let took = t.elapsed();
    assert!(took < 3 * SEC, "the second SIGINT took {took:?} to stop");
    assert_eq!(code, Some(0), "{}", sv.dump());
    wait_until(SEC, || !alive(job_pid))
        .unwrap_or_else(|_| panic!("the job's process {job_pid} outlived the supervisor"));
    let events = sv.events();
    assert_eq!(events.last().unwrap()["event"], "supervisor_stopped");
    sv.assert_nothing_left(2 * SEC);
    // The interrupted job goes back to the queue without using up an attempt.
    let job = sb.job(id);
    let finished: Vec<Value> = events
        .into_iter()
        .filter(|e| e["event"] == "job_finished" && e["job_id"] == id)
        .collect();
    assert_eq!(
        job["state"], "queued",
        "the job interrupted by the stop was not requeued: {job}\njob_finished: {finished:?}"
    );
}

#[test]
fn sigkill_of_the_supervisor_takes_every_child_within_a_second() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    let workers = ready_workers(&sv, "a", 2);
    let grabber = ready_grabber(&sv);
    let (id, file) = submit_sleeper(&sb, "a", "job.pid");
    wait_job(&sb, &sv, id, &["running"]);
    let job_pid = wait_pid_file(&file);

    let mut pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    pids.push(grabber.pid);
    pids.push(job_pid);
    assert!(pids.iter().all(|&p| alive(p)));

    sv.signal(Signal::SIGKILL);
    assert_eq!(
        sv.wait_exit(5 * SEC),
        None,
        "killed by a signal, no exit code"
    );
    let mut left = vec![];
    let gone = wait_until(SEC, || {
        left = pids.iter().copied().filter(|&p| alive(p)).collect();
        left.is_empty()
    });
    assert!(
        gone.is_ok(),
        "alive 1 s after the supervisor's SIGKILL: {left:?} (job {job_pid}, of {pids:?})"
    );
}

#[test]
fn what_a_supervisor_and_worker_killed_at_once_left_is_killed_by_the_next_run() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    let bg = sb.path().join("bg.pid");
    // And a daemon that cleared its environment (the marker the next run looks for
    // first), still writing to the job's log.
    let cleared = sb.path().join("cleared.pid");
    let script = format!(
        "sleep 60 & echo $! > {}; \
         setsid env -i /bin/sh -c 'echo $$ > {}; exec sleep 60' & wait",
        bg.display(),
        cleared.display()
    );
    let id = sb.submit(&["--group", "a", "--", "sh", "-c", &script]);
    let started = sv.wait_event(10 * SEC, |e| {
        e["event"] == "job_started" && e["job_id"] == id
    });
    let worker = started["worker_pid"].as_u64().unwrap() as u32;
    let left = wait_pid_file(&bg);
    let cleared = wait_pid_file(&cleared);

    // The supervisor frozen (it cannot kill the job's group), its worker killed (it
    // cannot either), then the supervisor killed: the job's background child lives on.
    sv.signal(Signal::SIGSTOP);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();
    wait_until(5 * SEC, || !alive(worker)).expect("the worker dies");
    sv.signal(Signal::SIGKILL);
    assert_eq!(sv.wait_exit(5 * SEC), None);
    assert!(alive(left), "the double fault left {left} running");
    assert!(alive(cleared), "the double fault left {cleared} running");

    // The next run on the same store finds them, by their environment or their output
    // going to a job's log, and kills them.
    let mut next = sb.start(&[]);
    // Its own start (the events file still holds the killed run's until it rotates it):
    // a SIGTERM before its handlers are in would kill it outright.
    next.wait_started();
    for pid in [left, cleared] {
        let gone = wait_until(5 * SEC, || !alive(pid));
        if gone.is_err() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("{pid} still runs after the next start\n{}", next.dump());
        }
    }
    // The job was taken back and may run again: not wanted here (a stop would wait for
    // it through its grace).
    let out = sb.run(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    // Canceled before the stop begins: when the SIGTERM came first, the cancel was not
    // heard in time and the stop waited for the job through its grace (seen in CI).
    sb.wait_job(id, &["canceled"], 10 * SEC);
    next.signal(Signal::SIGTERM);
    assert_eq!(next.wait_exit(10 * SEC), Some(0));
    next.assert_nothing_left(2 * SEC);
}

// ----- the events file ---------------------------------------------------------------

#[test]
fn events_rotate_with_a_snapshot_at_the_top() {
    let mut cfg = default_config();
    cfg["events"] = json!({"rotate_bytes": 4096, "keep": 2});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);

    let n = 40;
    let lines: String = (0..n)
        .map(|_| json!({"command": ["true"], "group": "a"}).to_string() + "\n")
        .collect();
    let jobs = sb.path().join("jobs.jsonl");
    fs::write(&jobs, lines).unwrap();
    let out = sb.run(&["submit", "--file", jobs.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), n);
    let mut last = Value::Null;
    wait_until(20 * SEC, || {
        last = sb.status_json();
        last["jobs"]["succeeded"] == n
    })
    .unwrap_or_else(|_| panic!("the {n} jobs did not all succeed: {last}"));

    // Rotated while running: the current file starts with a snapshot of the children.
    let rotated1 = PathBuf::from(format!("{}.1", sb.events_path().display()));
    assert!(rotated1.exists(), "no rotation after {n} jobs");
    let mut current = vec![];
    wait_until(5 * SEC, || {
        current = sv.events();
        !current.is_empty()
    })
    .expect("the current events file stays empty");
    let top = &current[0];
    assert_eq!(top["event"], "snapshot", "{top}");
    assert_eq!(top["supervisor_pid"], sv.pid(), "{top}");
    let children = top["children"]
        .as_array()
        .expect("children in the snapshot");
    assert_eq!(children.len(), 3, "{top}");
    for c in children {
        for k in [
            "role", "group", "slot", "pid", "state", "restarts", "job_id",
        ] {
            assert!(c.get(k).is_some(), "snapshot child lacks {k}: {c}");
        }
    }

    // Read the files once nothing writes them.
    stop_cleanly(&mut sv);
    let base = sb.events_path();
    let file = |n: u32| PathBuf::from(format!("{}.{n}", base.display()));
    assert!(file(1).exists() && file(2).exists(), "expected .1 and .2");
    assert!(!file(3).exists(), "more rotated files than keep = 2");
    let mut all = vec![];
    for path in [file(2), file(1), base.clone()] {
        let events = read_events(&path);
        assert!(!events.is_empty(), "{} is empty", path.display());
        assert_eq!(
            events[0]["event"],
            "snapshot",
            "{} does not begin with a snapshot",
            path.display()
        );
        assert!(
            fs::metadata(&path).unwrap().len() < 4096 + 4096,
            "{} grew far past rotate_bytes",
            path.display()
        );
        all.extend(events);
    }
    for w in all.windows(2) {
        assert_eq!(
            seq(&w[1]),
            seq(&w[0]) + 1,
            "seq does not rise by one across files: {} then {}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn sighup_reopens_the_events_file() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    ready_grabber(&sv);

    let moved = sb.path().join("state/events.jsonl.moved");
    fs::rename(sb.events_path(), &moved).unwrap();
    sv.signal(Signal::SIGHUP);
    let loaded = sv.wait_event(5 * SEC, |e| e["event"] == "config_loaded");
    assert_eq!(loaded["generation"], 2, "{loaded}");
    let fresh = sv.events();
    let top = &fresh[0];
    assert_eq!(top["event"], "snapshot", "{top}");
    assert_eq!(top["supervisor_pid"], sv.pid(), "{top}");
    assert_eq!(top["children"].as_array().map(Vec::len), Some(3), "{top}");
    // Nothing lost between the files: seq goes on by one.
    let old = read_events(&moved);
    assert!(
        !old.iter()
            .any(|e| e["event"] == "config_loaded" && e["generation"] == 2),
        "the reload was written to the moved file"
    );
    assert_eq!(seq(top), seq(old.last().unwrap()) + 1);

    // The reopened file keeps getting events.
    let w = ChildRef::from_event(
        top["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["role"] == "worker")
            .unwrap(),
    );
    signal_pid(w.pid, Signal::SIGKILL);
    expect_replacement(&sv, &w, 9, 5 * SEC);
    stop_cleanly(&mut sv);
    assert_eq!(read_events(&moved).len(), old.len());
}

// ----- status and the pidfile --------------------------------------------------------

#[test]
fn status_json_while_running_and_after_stop() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    let workers = ready_workers(&sv, "a", 2);
    let grabber = ready_grabber(&sv);
    let id = sb.submit(&["--group", "a", "--", "true"]);
    wait_job(&sb, &sv, id, &["succeeded"]);

    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], true, "{st}");
    assert_eq!(st["supervisor"]["pid"], sv.pid(), "{st}");
    let children = st["children"].as_array().expect("children");
    assert_eq!(children.len(), 3, "{st}");
    for c in children {
        for k in [
            "role", "group", "slot", "pid", "state", "restarts", "job_id",
        ] {
            assert!(c.get(k).is_some(), "child row lacks {k}: {c}");
        }
        assert_eq!(c["restarts"], 0, "{c}");
        assert_eq!(c["job_id"], Value::Null, "{c}");
    }
    let g = children
        .iter()
        .find(|c| c["role"] == "grabber")
        .expect("a grabber row");
    assert_eq!(g["pid"], grabber.pid, "{g}");
    assert_eq!((&g["group"], &g["slot"]), (&Value::Null, &Value::Null));
    for w in &workers {
        let row = children
            .iter()
            .find(|c| c["role"] == "worker" && c["slot"] == json!(w.slot))
            .unwrap_or_else(|| panic!("no row for worker slot {:?}: {st}", w.slot));
        assert_eq!(row["group"], "a");
        assert_eq!(row["pid"], w.pid, "{row}");
        assert_eq!(row["state"], "idle", "{row}");
    }
    let jobs = st["jobs"].as_object().expect("jobs counts");
    for state in [
        "queued",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "dead",
        "canceled",
    ] {
        assert!(jobs[state].is_u64(), "no count for {state}: {st}");
    }
    assert_eq!(jobs["succeeded"], 1, "{st}");

    // A busy worker shows its job; a restarted one its restarts.
    let (busy, file) = submit_sleeper(&sb, "a", "job.pid");
    wait_job(&sb, &sv, busy, &["running"]);
    wait_pid_file(&file);
    let st = sb.status_json();
    let row = st["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["job_id"] == busy)
        .unwrap_or_else(|| panic!("no child shows job {busy}: {st}"));
    assert_eq!(row["state"], "busy", "{row}");
    assert_eq!(st["jobs"]["running"], 1, "{st}");
    let cancel = sb.run(&["cancel", &busy.to_string()]);
    assert!(cancel.status.success());
    wait_job(&sb, &sv, busy, &["canceled"]);

    let idle = workers
        .iter()
        .find(|w| w.pid != row["pid"].as_u64().unwrap() as u32)
        .unwrap();
    signal_pid(idle.pid, Signal::SIGKILL);
    let new = expect_replacement(&sv, idle, 9, 5 * SEC);
    let st = sb.status_json();
    let row = st["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "worker" && c["slot"] == json!(new.slot))
        .unwrap()
        .clone();
    assert_eq!(row["pid"], new.pid, "{st}");
    assert_eq!(row["restarts"], 1, "{st}");

    let sv_pid = sv.pid();
    stop_cleanly(&mut sv);
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], false, "{st}");
    if let Some(p) = st["supervisor"]["pid"].as_u64() {
        assert_eq!(p, u64::from(sv_pid), "{st}");
    }
    for c in st["children"].as_array().unwrap() {
        assert!(
            c["pid"].as_u64().is_none_or(|p| !alive(p as u32)),
            "status after the stop shows a live child: {c}"
        );
    }
    assert_eq!(st["jobs"]["succeeded"], 1, "{st}");
    assert_eq!(st["jobs"]["canceled"], 1, "{st}");
}

#[test]
fn a_second_run_on_the_same_state_dir_refuses() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    ready_workers(&sv, "a", 2);
    let before = sv.events().len();

    let t = Instant::now();
    let second = sb
        .command(&["run"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut second = Guard(second);
    let mut status = None;
    wait_until(5 * SEC, || {
        status = second.0.try_wait().unwrap();
        status.is_some()
    })
    .unwrap_or_else(|_| panic!("the second `run` is still running after 5 s"));
    let took = t.elapsed();
    let mut stderr = String::new();
    second
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.unwrap().code(), Some(1), "stderr: {stderr}");
    assert!(took < 3 * SEC, "the refusal took {took:?}");
    assert!(
        stderr.contains(&sv.pid().to_string()),
        "the error does not name the running pid {}: {stderr}",
        sv.pid()
    );

    // The first is untouched: running, its events file not rotated or written to.
    assert!(sv.child.as_mut().unwrap().try_wait().unwrap().is_none());
    let events = sv.events();
    assert_eq!(events[0]["event"], "snapshot");
    assert_eq!(events[0]["supervisor_pid"], sv.pid());
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "supervisor_started")
            .count(),
        1
    );
    assert!(events.len() >= before);
    let pidfile = fs::read_to_string(sb.path().join("state/supervisor.pid")).unwrap();
    assert_eq!(pidfile.trim(), sv.pid().to_string());
    // And it still works.
    let id = sb.submit(&["--group", "a", "--", "true"]);
    wait_job(&sb, &sv, id, &["succeeded"]);
    stop_cleanly(&mut sv);
}

#[test]
fn no_zombies_while_running() {
    let sb = Sandbox::new(&default_config());
    let mut sv = sb.start(&[]);
    let w = ready_workers(&sv, "a", 2).remove(0);
    let sv_pid = sv.pid();

    signal_pid(w.pid, Signal::SIGKILL);
    expect_replacement(&sv, &w, 9, 5 * SEC);
    let mut zombies = vec![];
    wait_until(SEC, || {
        zombies = zombie_children(sv_pid);
        zombies.is_empty()
    })
    .unwrap_or_else(|_| panic!("zombie children of the supervisor: {zombies:?}"));
    assert!(reaped(w.pid), "the killed worker {} is not reaped", w.pid);

    // A job's orphaned background process comes to the supervisor (the subreaper)
    // when its worker kills the job's process group; it is reaped too.
    let file = sb.path().join("orphan.pid");
    let script = format!("sleep 30 & echo $! > {}; exit 0", file.display());
    let id = sb.submit(&["--group", "a", "--", "sh", "-c", &script]);
    wait_job(&sb, &sv, id, &["succeeded"]);
    let orphan: u32 = fs::read_to_string(&file).unwrap().trim().parse().unwrap();
    wait_until(2 * SEC, || reaped(orphan)).unwrap_or_else(|_| {
        panic!(
            "the job's background process {orphan} is still there (zombies: {:?})",
            zombie_children(sv_pid)
        )
    });
    wait_until(SEC, || {
        zombies = zombie_children(sv_pid);
        zombies.is_empty()
    })
    .unwrap_or_else(|_| panic!("zombie children of the supervisor: {zombies:?}"));
    stop_cleanly(&mut sv);
}

#[test]
fn stale_pidfile_is_reported_not_signalled() {
    let sb = Sandbox::new(&default_config());
    fs::create_dir_all(sb.path().join("state")).unwrap();
    let bystander = Guard(
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = bystander.0.id();
    fs::write(sb.path().join("state/supervisor.pid"), format!("{pid}\n")).unwrap();

    for verb in ["stop", "reload"] {
        let out = sb.run(&[verb]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{verb}: {stderr}");
        assert!(
            stderr.contains("stale"),
            "{verb} does not say stale: {stderr}"
        );
        assert!(alive(pid), "`{verb}` signalled the unrelated process {pid}");
    }
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], false, "{st}");
    // Still a plain sleeping process, not stopped or killed.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
    assert_eq!(state, Some("S"), "{stat}");
}
