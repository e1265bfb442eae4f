//! Reload: SIGHUP and `supervisor reload` apply a new config while jobs run. Pools grow
//! at once and shrink idle workers first (busy ones after their job), removed groups
//! drain, new groups start, routing and group settings apply to jobs not yet claimed or
//! started, a bad file is rejected whole, no running job is ever interrupted, and a burst
//! of signals ends with the final file applied.
//!
//! Every test runs the real binary, sends real signals and waits on conditions with
//! deadlines.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(10);

// ----- helpers -----------------------------------------------------------------------

/// A group taking only jobs that name it, with fast retries and restarts.
fn group(name: &str, workers: u32) -> Value {
    // The common group, giving up sooner (after 5 restarts) and backing off longer.
    let mut g = crate::common::group(name, workers);
    g["restart"]["max_restarts"] = json!(5);
    g["restart"]["backoff"]["max_s"] = json!(0.2);
    g
}

/// The same, taking jobs whose tag `arch` is one of `arches`.
fn arch_group(name: &str, workers: u32, arches: &[&str]) -> Value {
    let mut g = group(name, workers);
    g["match"] = json!({ "arch": arches });
    g
}

fn config(groups: Vec<Value>) -> Value {
    json!({ "shutdown_grace_s": 2, "groups": groups })
}

/// How a reload is asked for.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// A SIGHUP sent by the test.
    Sighup,
    /// `supervisor reload`, which finds the supervisor by its pidfile.
    Cli,
}

fn is_config_event(e: &Value) -> bool {
    e["event"] == "config_loaded" || e["event"] == "config_rejected"
}

/// Ask for a reload and wait for its answer: the first `config_loaded` or
/// `config_rejected` after the request.
fn reload(sb: &Sandbox, sv: &Supervisor, via: Via) -> Value {
    let before = sv.last_seq();
    match via {
        Via::Sighup => sv.signal(Signal::SIGHUP),
        Via::Cli => {
            let out = sb.run(&["reload"]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "`supervisor reload` exited {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains(&sv.pid().to_string()),
                "`supervisor reload` does not name the pid it signalled: {stdout}"
            );
        }
    }
    sv.wait_event_after(before, T, is_config_event)
}

/// A reload that must load, as generation `generation`.
fn reload_ok(sb: &Sandbox, sv: &Supervisor, via: Via, generation: u64) -> Value {
    let e = reload(sb, sv, via);
    assert_eq!(
        e["event"],
        "config_loaded",
        "reload via {via:?} was not loaded: {e}\n{}",
        sv.dump()
    );
    assert_eq!(e["generation"], generation, "{e}");
    assert!(
        e["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("supervisor.json")),
        "config_loaded names no config path: {e}"
    );
    e
}

/// A reload that must be rejected; its error.
fn reload_rejected(sb: &Sandbox, sv: &Supervisor, via: Via) -> String {
    let e = reload(sb, sv, via);
    assert_eq!(
        e["event"],
        "config_rejected",
        "a bad config was not rejected: {e}\n{}",
        sv.dump()
    );
    assert!(
        e["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("supervisor.json")),
        "config_rejected names no config path: {e}"
    );
    let error = e["error"].as_str().unwrap_or("").to_string();
    assert!(!error.is_empty(), "config_rejected without an error: {e}");
    error
}

/// What the events say of one worker (group, slot): starting, up (ready, with its pid)
/// or gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Starting(u32),
    Up(u32),
    Gone,
}

/// Every worker slot the events ever named, with its latest life.
fn worker_lives(events: &[Value]) -> BTreeMap<(String, u64), Life> {
    let mut m = BTreeMap::new();
    for e in events {
        if e["role"] != "worker" {
            continue;
        }
        let key = (
            e["group"].as_str().unwrap_or("").to_string(),
            e["slot"].as_u64().unwrap_or(u64::MAX),
        );
        let pid = e["pid"].as_u64().unwrap_or(0) as u32;
        match e["event"].as_str() {
            Some("child_started") => {
                m.insert(key, Life::Starting(pid));
            }
            Some("child_ready") => {
                m.insert(key, Life::Up(pid));
            }
            Some("child_exited") => {
                let current = m.get(&key).copied();
                if matches!(current, Some(Life::Starting(p) | Life::Up(p)) if p == pid) {
                    m.insert(key, Life::Gone);
                }
            }
            _ => {}
        }
    }
    m
}

/// Wait until every worker the events name is up or gone, and the groups have exactly
/// the pools `want` (group → number of workers up, all alive); the pools.
fn wait_pools(sv: &Supervisor, want: &[(&str, usize)]) -> BTreeMap<String, BTreeMap<u64, u32>> {
    let want: BTreeMap<String, usize> = want.iter().map(|(g, n)| (g.to_string(), *n)).collect();
    let mut got = BTreeMap::new();
    let ok = wait_until(T, || {
        let lives = worker_lives(&sv.events());
        if lives.values().any(|l| matches!(l, Life::Starting(_))) {
            return false;
        }
        got = BTreeMap::<String, BTreeMap<u64, u32>>::new();
        for ((g, slot), life) in lives {
            if let Life::Up(pid) = life {
                if !alive(pid) {
                    return false;
                }
                got.entry(g).or_insert_with(BTreeMap::new).insert(slot, pid);
            }
        }
        let counts: BTreeMap<String, usize> =
            got.iter().map(|(g, p)| (g.clone(), p.len())).collect();
        let nonzero: BTreeMap<String, usize> = want
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(g, n)| (g.clone(), *n))
            .collect();
        counts == nonzero
    });
    assert!(
        ok.is_ok(),
        "the pools never became {want:?}; last seen {got:?}\n{}",
        sv.dump()
    );
    got
}

fn job_started(sv: &Supervisor, id: i64) -> Value {
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == id)
}

fn job_finished(sv: &Supervisor, id: i64) -> Value {
    sv.wait_event(T, |e| e["event"] == "job_finished" && e["job_id"] == id)
}

/// Events named `name` after `after`.
fn since<'a>(events: &'a [Value], after: u64, name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| seq(e) > after && e["event"] == name)
        .collect()
}

/// Nothing was interrupted or crashed: no attempt ended lost, canceled or timed out, no
/// child exited unexpectedly and none was restarted.
fn assert_uninterrupted(sv: &Supervisor) {
    for e in sv.events() {
        let bad = match e["event"].as_str().unwrap_or("") {
            "job_finished" => !matches!(e["outcome"].as_str(), Some("succeeded" | "failed")),
            "child_exited" => e["expected"] != true,
            "child_restart_scheduled" | "group_gave_up" => true,
            _ => false,
        };
        assert!(!bad, "interrupted or crashed: {e}\n{}", sv.dump());
    }
}

/// A held job that runs to success with one attempt, its only start being `started`.
fn release_and_expect_success(sb: &Sandbox, sv: &Supervisor, held: &Held) -> Value {
    held.release();
    let finished = job_finished(sv, held.id);
    assert_eq!(
        finished["outcome"],
        "succeeded",
        "{finished}\n{}",
        sv.dump()
    );
    let job = sb.wait_job(held.id, &["succeeded"], T);
    assert_eq!(job["attempts"], 1, "{job}");
    let starts = sv
        .events()
        .into_iter()
        .filter(|e| e["event"] == "job_started" && e["job_id"] == held.id)
        .count();
    assert_eq!(starts, 1, "job {} started {starts} times", held.id);
    finished
}

// ----- pools -------------------------------------------------------------------------

#[test]
fn reload_grows_a_pool_at_once() {
    let sb = Sandbox::new(&config(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    let first = wait_pools(&sv, &[("a", 1)])["a"].clone();
    let j1 = sb.submit_held("j1", &["--group", "a"]);
    job_started(&sv, j1.id);
    let p1 = j1.pid();

    sb.write_config(&config(vec![group("a", 3)]));
    let loaded = reload_ok(&sb, &sv, Via::Cli, 2);
    // Two new workers while the first is still busy: the grow does not wait for it.
    let pools = wait_pools(&sv, &[("a", 3)]);
    let a = &pools["a"];
    assert_eq!(a.keys().copied().collect::<Vec<_>>(), [0, 1, 2], "{a:?}");
    assert_eq!(a[&0], first[&0], "the busy worker was replaced");
    let events = sv.events();
    let started: Vec<u64> = since(&events, seq(&loaded), "child_started")
        .iter()
        .map(|e| e["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(started, [1, 2], "{}", sv.dump());
    assert!(
        since(&events, 0, "child_exited").is_empty(),
        "{}",
        sv.dump()
    );
    assert!(alive(p1), "the running job died");
    assert_eq!(sb.job(j1.id)["state"], "running");

    // The grown pool runs three jobs at once.
    let j2 = sb.submit_held("j2", &["--group", "a"]);
    let j3 = sb.submit_held("j3", &["--group", "a"]);
    let mut slots: Vec<u64> = [&j1, &j2, &j3]
        .iter()
        .map(|j| job_started(&sv, j.id)["slot"].as_u64().unwrap())
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1, 2]);
    for j in [&j1, &j2, &j3] {
        j.pid();
    }
    for j in [&j1, &j2, &j3] {
        release_and_expect_success(&sb, &sv, j);
    }
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

#[test]
fn reload_shrinks_idle_workers_first() {
    let sb = Sandbox::new(&config(vec![group("a", 3)]));
    let mut sv = sb.start(&[]);
    let before = wait_pools(&sv, &[("a", 3)])["a"].clone();
    let jobs: Vec<Held> = (0..3)
        .map(|i| sb.submit_held(&format!("j{i}"), &["--group", "a"]))
        .collect();
    let slot_of: BTreeMap<i64, u64> = jobs
        .iter()
        .map(|j| (j.id, job_started(&sv, j.id)["slot"].as_u64().unwrap()))
        .collect();
    // Free the lowest slot, so that "idle first" and "highest slot first" differ: slot 0
    // idle, slots 1 and 2 busy.
    let (free, busy): (Vec<&Held>, Vec<&Held>) = jobs.iter().partition(|j| slot_of[&j.id] == 0);
    release_and_expect_success(&sb, &sv, free[0]);
    let pids: Vec<u32> = busy.iter().map(|j| j.pid()).collect();

    sb.write_config(&config(vec![group("a", 2)]));
    let loaded = reload_ok(&sb, &sv, Via::Sighup, 2);
    let exited = sv.wait_event_after(seq(&loaded), T, |e| e["event"] == "child_exited");
    assert_eq!(
        exited["pid"],
        before[&0],
        "the shrink stopped another worker than the idle one (slot 0): {exited}\n{}",
        sv.dump()
    );
    assert_eq!(exited["expected"], true, "{exited}");
    assert_eq!(exited["job_id"], Value::Null, "{exited}");
    for (j, pid) in busy.iter().zip(&pids) {
        assert!(alive(*pid), "busy job {} was killed by the shrink", j.id);
        assert_eq!(sb.job(j.id)["state"], "running");
    }
    for j in &busy {
        release_and_expect_success(&sb, &sv, j);
    }
    // The two that were busy are the pool now; nothing else starts or stops.
    let pools = wait_pools(&sv, &[("a", 2)]);
    let want: BTreeMap<u64, u32> = [(1, before[&1]), (2, before[&2])].into();
    assert_eq!(pools["a"], want, "{}", sv.dump());
    let quick: Vec<i64> = (0..2)
        .map(|_| sb.submit(&["--group", "a", "--", "true"]))
        .collect();
    for id in quick {
        sb.wait_job(id, &["succeeded"], T);
    }
    let events = sv.events();
    assert_eq!(since(&events, seq(&loaded), "child_exited").len(), 1);
    assert!(since(&events, seq(&loaded), "child_started").is_empty());
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

#[test]
fn reload_shrink_retires_busy_workers_after_their_job() {
    let sb = Sandbox::new(&config(vec![group("a", 2)]));
    let mut sv = sb.start(&[]);
    let before = wait_pools(&sv, &[("a", 2)])["a"].clone();
    let ja = sb.submit_held("ja", &["--group", "a"]);
    let jb = sb.submit_held("jb", &["--group", "a"]);
    job_started(&sv, ja.id);
    job_started(&sv, jb.id);
    let (pa, pb) = (ja.pid(), jb.pid());

    sb.write_config(&config(vec![group("a", 1)]));
    let loaded = reload_ok(&sb, &sv, Via::Cli, 2);
    // Neither busy worker is stopped under its job.
    assert!(
        alive(pa) && alive(pb),
        "a running job was killed by the shrink"
    );
    for w in before.values() {
        assert!(alive(*w), "busy worker {w} was stopped");
    }
    let fin_a = release_and_expect_success(&sb, &sv, &ja);
    let fin_b = release_and_expect_success(&sb, &sv, &jb);

    // Exactly one of them retires, after its own job.
    let pools = wait_pools(&sv, &[("a", 1)]);
    let survivor = *pools["a"].values().next().unwrap();
    let events = sv.events();
    let exits = since(&events, seq(&loaded), "child_exited");
    assert_eq!(exits.len(), 1, "{}", sv.dump());
    let exit = exits[0];
    assert_eq!(exit["expected"], true, "{exit}");
    let retired = exit["pid"].as_u64().unwrap() as u32;
    assert!(
        before.values().any(|&p| p == retired) && retired != survivor,
        "{exit}"
    );
    let its_job = [&fin_a, &fin_b]
        .into_iter()
        .find(|f| {
            events.iter().any(|e| {
                e["event"] == "job_started"
                    && e["job_id"] == f["job_id"]
                    && e["worker_pid"] == retired
            })
        })
        .expect("the retired worker ran one of the two jobs");
    assert!(
        seq(exit) > seq(its_job),
        "worker {retired} stopped before its job ended\n{}",
        sv.dump()
    );
    assert!(since(&events, seq(&loaded), "child_started").is_empty());

    // The remaining worker runs the next job.
    let next = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(next, &["succeeded"], T);
    assert_eq!(job_started(&sv, next)["worker_pid"], survivor);
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

#[test]
fn reload_shrink_drops_a_slot_waiting_for_restart_before_a_live_worker() {
    let mut g = group("a", 2);
    g["restart"]["backoff"] = json!({"initial_s": 0.8, "max_s": 0.8, "jitter": 0});
    let sb = Sandbox::new(&config(vec![g.clone()]));
    let mut sv = sb.start(&[]);
    let before = wait_pools(&sv, &[("a", 2)])["a"].clone();
    // Slot 0 crashes and waits 0.8 s for its restart; slot 1 is up and idle.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[&0] as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    sv.wait_event(T, |e| {
        e["event"] == "child_restart_scheduled" && e["group"] == "a" && e["slot"] == 0
    });

    g["max_workers"] = json!(1);
    sb.write_config(&config(vec![g]));
    let loaded = reload_ok(&sb, &sv, Via::Sighup, 2);
    // Past the restart's due time (a job timing out after 1.2 s says so), the slot that
    // was down is still down and the live worker was left alone.
    let witness = sb.submit(&[
        "--group",
        "a",
        "--timeout",
        "1.2",
        "--max-attempts",
        "1",
        "--",
        "sleep",
        "30",
    ]);
    let started = job_started(&sv, witness);
    assert_eq!(started["worker_pid"], before[&1], "{started}");
    sb.wait_job(witness, &["dead"], T);
    let events = sv.events();
    assert!(
        since(&events, seq(&loaded), "child_started").is_empty(),
        "the dropped slot was restarted:\n{}",
        sv.dump()
    );
    assert!(
        since(&events, seq(&loaded), "child_exited").is_empty(),
        "a live worker was stopped instead of the dead slot:\n{}",
        sv.dump()
    );
    let pools = wait_pools(&sv, &[("a", 1)]);
    assert_eq!(pools["a"], BTreeMap::from([(1, before[&1])]));
    sv.stop_cleanly();
}

// ----- groups ------------------------------------------------------------------------

#[test]
fn a_removed_group_drains_and_its_queued_jobs_wait() {
    let sb = Sandbox::new(&config(vec![group("a", 1), group("b", 1)]));
    let mut sv = sb.start(&[]);
    let pools = wait_pools(&sv, &[("a", 1), ("b", 1)]);
    let (a_worker, b_worker) = (pools["a"][&0], pools["b"][&0]);
    let running = sb.submit_held("running", &["--group", "b", "--max-attempts", "1"]);
    job_started(&sv, running.id);
    let job_pid = running.pid();
    let waiting = sb.submit(&["--group", "b", "--", "true"]);

    sb.write_config(&config(vec![group("a", 1)]));
    let loaded = reload_ok(&sb, &sv, Via::Sighup, 2);
    // Group a goes on; b's worker is not stopped under its job.
    let ja = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(ja, &["succeeded"], T);
    assert!(
        alive(b_worker),
        "the draining worker was stopped under its job"
    );
    assert!(alive(job_pid), "the draining group's job was killed");
    assert!(
        since(&sv.events(), seq(&loaded), "child_exited").is_empty(),
        "{}",
        sv.dump()
    );

    // Its job ends with its own outcome (here: failed, exit 3, no attempt left) ...
    running.release_with(3);
    let finished = job_finished(&sv, running.id);
    assert_eq!(finished["outcome"], "failed", "{finished}");
    assert_eq!(finished["exit_code"], 3, "{finished}");
    let job = sb.wait_job(running.id, &["dead"], T);
    assert_eq!(job["exit_code"], 3, "{job}");
    // ... then its worker stops, and the group is not restarted.
    let exit = sv.wait_event(T, |e| e["event"] == "child_exited" && e["pid"] == b_worker);
    assert_eq!(exit["expected"], true, "{exit}");
    assert!(seq(&exit) > seq(&finished), "{}", sv.dump());
    wait_pools(&sv, &[("a", 1)]);
    // The queued job of the removed group stays queued, untouched, past another pass.
    let jb = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(jb, &["succeeded"], T);
    let w = sb.job(waiting);
    assert_eq!(w["state"], "queued", "{w}");
    assert_eq!(w["attempts"], 0, "{w}");
    let events = sv.events();
    assert!(!events
        .iter()
        .any(|e| e["event"] == "job_started" && e["job_id"] == waiting));
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "child_started" && e["group"] == "b" && seq(e) > seq(&loaded)),
        "{}",
        sv.dump()
    );
    let st = sb.status_json();
    for c in st["children"].as_array().unwrap() {
        if c["group"] == "b" {
            assert!(
                c["pid"].as_u64().is_none_or(|p| !alive(p as u32)),
                "status shows a live worker of the removed group: {c}"
            );
        }
    }
    assert!(alive(a_worker));

    // A reload that brings the group back runs it.
    sb.write_config(&config(vec![group("a", 1), group("b", 1)]));
    reload_ok(&sb, &sv, Via::Cli, 3);
    let w = sb.wait_job(waiting, &["succeeded"], T);
    assert_eq!(w["group"], "b");
    assert_eq!(w["attempts"], 1);
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

#[test]
fn a_new_group_starts_and_takes_the_jobs_waiting_for_it() {
    let sb = Sandbox::new(&config(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    let a_worker = wait_pools(&sv, &[("a", 1)])["a"][&0];
    let tagged = sb.submit(&["--tag", "arch=mips", "--", "true"]);
    let named = sb.submit(&["--group", "late", "--", "true"]);
    // A later pass of the grabber leaves them queued.
    let ja = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(ja, &["succeeded"], T);
    assert_eq!(sb.job(tagged)["state"], "queued");
    assert_eq!(sb.job(named)["state"], "queued");

    sb.write_config(&config(vec![
        group("a", 1),
        arch_group("mips", 1, &["mips"]),
        group("late", 2),
    ]));
    let loaded = reload_ok(&sb, &sv, Via::Cli, 2);
    let pools = wait_pools(&sv, &[("a", 1), ("mips", 1), ("late", 2)]);
    assert_eq!(pools["a"][&0], a_worker, "group a's worker was replaced");
    for (id, g) in [(tagged, "mips"), (named, "late")] {
        let job = sb.wait_job(id, &["succeeded"], T);
        assert_eq!(job["group"], g, "{job}");
        assert!(seq(&job_started(&sv, id)) > seq(&loaded));
    }
    assert!(since(&sv.events(), 0, "child_exited").is_empty());
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

#[test]
fn reload_changes_routing_for_jobs_not_yet_claimed() {
    let sb = Sandbox::new(&config(vec![
        arch_group("x", 1, &["x86_64"]),
        arch_group("y", 1, &["arm"]),
    ]));
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("x", 1), ("y", 1)]);
    let on_x = sb.submit_held("on-x", &["--tag", "arch=x86_64"]);
    assert_eq!(job_started(&sv, on_x.id)["group"], "x");
    let pid = on_x.pid();
    let mips = sb.submit(&["--tag", "arch=mips", "--", "true"]);
    let arm = sb.submit(&["--tag", "arch=arm", "--", "true"]);
    assert_eq!(sb.wait_job(arm, &["succeeded"], T)["group"], "y");
    assert_eq!(sb.job(mips)["state"], "queued", "no group takes mips yet");

    // Now y comes first and takes x86_64 and mips too.
    sb.write_config(&config(vec![
        arch_group("y", 1, &["arm", "x86_64", "mips"]),
        arch_group("x", 1, &["x86_64"]),
    ]));
    reload_ok(&sb, &sv, Via::Sighup, 2);
    let job = sb.wait_job(mips, &["succeeded"], T);
    assert_eq!(job["group"], "y", "{job}");
    // The job claimed before the reload stays where it runs.
    assert!(alive(pid), "the running job was interrupted");
    let job = sb.job(on_x.id);
    assert_eq!(
        (&job["state"], &job["group"]),
        (&json!("running"), &json!("x"))
    );
    let fin = release_and_expect_success(&sb, &sv, &on_x);
    assert_eq!(fin["group"], "x", "{fin}");
    // With x idle, a new x86_64 job still goes to y: the first match in the new order.
    let next = sb.submit(&["--tag", "arch=x86_64", "--", "true"]);
    let job = sb.wait_job(next, &["succeeded"], T);
    assert_eq!(job["group"], "y", "{job}");
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

#[test]
fn changed_job_timeout_and_attempts_apply_to_new_jobs_only() {
    let mut g = group("a", 2);
    g["job_timeout_s"] = json!(60);
    g["max_attempts"] = json!(1);
    let sb = Sandbox::new(&config(vec![g.clone()]));
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 2)]);
    let old = sb.submit_held("old", &["--group", "a"]);
    job_started(&sv, old.id);
    let pid = old.pid();

    g["job_timeout_s"] = json!(0.5);
    g["max_attempts"] = json!(2);
    sb.write_config(&config(vec![g]));
    reload_ok(&sb, &sv, Via::Cli, 2);
    let new = sb.submit(&["--group", "a", "--", "sleep", "30"]);
    let job = sb.wait_job(new, &["dead"], T);
    assert_eq!(job["attempts"], 2, "the new max_attempts: {job}");
    let events = sv.events();
    let finished: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "job_finished" && e["job_id"] == new)
        .collect();
    assert_eq!(finished.len(), 2, "{}", sv.dump());
    for fin in finished {
        assert_eq!(fin["outcome"], "timed_out", "{fin}");
        let took = fin["duration_s"].as_f64().unwrap();
        assert!(
            (0.4..5.0).contains(&took),
            "timed out after {took} s, not 0.5"
        );
    }
    // The job started before the reload has now run longer than the new timeout since
    // the reload, and goes on.
    assert!(alive(pid), "the old job was stopped by the new timeout");
    assert_eq!(sb.job(old.id)["state"], "running");
    release_and_expect_success(&sb, &sv, &old);
    sv.stop_cleanly();
}

// ----- rejected configs --------------------------------------------------------------

#[test]
fn a_bad_config_is_rejected_and_nothing_changes() {
    let good = config(vec![group("a", 2)]);
    let sb = Sandbox::new(&good);
    let mut sv = sb.start(&[]);
    let before = wait_pools(&sv, &[("a", 2)]);
    let held = sb.submit_held("held", &["--group", "a"]);
    job_started(&sv, held.id);
    let pid = held.pid();
    let mark = sv.last_seq();
    let status_before = sb.status_json();

    // Out of range, and an unknown key: both named, with the file.
    let mut bad = group("a", 2);
    bad["max_workers"] = json!(-1);
    bad["colour"] = json!("red");
    sb.write_config(&config(vec![bad]));
    let error = reload_rejected(&sb, &sv, Via::Sighup);
    for part in ["supervisor.json", "groups[0].max_workers", "colour"] {
        assert!(
            error.contains(part),
            "the error does not name {part}: {error}"
        );
    }
    // JSON syntax: line and column.
    fs::write(
        sb.config_path(),
        "{\n  \"groups\": [\n    {\"name\": \"a\" \"max_workers\": 2}\n  ]\n}\n",
    )
    .unwrap();
    let error = reload_rejected(&sb, &sv, Via::Sighup);
    assert!(
        error.contains("supervisor.json:3:"),
        "the syntax error does not name the file and line 3: {error}"
    );
    // Two groups of one name.
    sb.write_config(&config(vec![group("a", 2), group("a", 1)]));
    let error = reload_rejected(&sb, &sv, Via::Sighup);
    assert!(error.contains("groups"), "{error}");
    // No file at all.
    fs::remove_file(sb.config_path()).unwrap();
    let error = reload_rejected(&sb, &sv, Via::Sighup);
    assert!(error.contains("supervisor.json"), "{error}");
    // A FIFO in its place: refused at once (a read would wait for a writer forever,
    // and the loop with it).
    nix::unistd::mkfifo(&sb.config_path(), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let error = reload_rejected(&sb, &sv, Via::Sighup);
    assert!(error.contains("not a regular file"), "{error}");
    fs::remove_file(sb.config_path()).unwrap();

    // Nothing changed: same children, the job runs on, no generation was used.
    sb.write_config(&good);
    let events = sv.events();
    for name in ["child_started", "child_exited", "config_loaded"] {
        assert!(
            since(&events, mark, name).is_empty(),
            "{name} after a rejected config:\n{}",
            sv.dump()
        );
    }
    assert_eq!(wait_pools(&sv, &[("a", 2)]), before);
    assert_eq!(sb.status_json()["children"], status_before["children"]);
    assert!(alive(pid));
    assert_eq!(sb.job(held.id)["state"], "running");
    assert!(sv.child.as_mut().unwrap().try_wait().unwrap().is_none());

    sb.write_config(&config(vec![group("a", 3)]));
    reload_ok(&sb, &sv, Via::Cli, 2);
    wait_pools(&sv, &[("a", 3)]);
    release_and_expect_success(&sb, &sv, &held);
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

/// `args` run to completion: exit code, stdout, stderr.
fn run_verb(sb: &Sandbox, args: &[&str]) -> (Option<i32>, String, String) {
    let out = sb.run(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reload_and_stop_still_reach_the_supervisor_when_the_file_is_invalid() {
    // A state dir of its own (the pidfile is there); the events file where the harness
    // looks for it.
    let mut good = config(vec![group("a", 1)]);
    good["state_dir"] = json!("var");
    good["events"] = json!({"path": "state/events.jsonl"});
    let sb = Sandbox::new(&good);
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 1)]);
    assert!(sb.path().join("var/supervisor.pid").exists());
    // Valid JSON naming the same state dir, with a value out of range.
    let mut bad = good.clone();
    bad["groups"][0]["max_workers"] = json!(-1);
    sb.write_config(&bad);

    // `reload` is a SIGHUP, with a warning that the supervisor will reject the file,
    // and then the supervisor's answer: rejected, exit 2.
    let mark = sv.last_seq();
    let (code, _, stderr) = run_verb(&sb, &["reload"]);
    assert_eq!(code, Some(2), "`reload` with an invalid file: {stderr}");
    assert!(
        stderr.contains("groups[0].max_workers") && stderr.contains("reject"),
        "`reload` does not warn that the file has errors and will be rejected: {stderr}"
    );
    assert!(
        stderr.contains(&format!("supervisor {} rejected", sv.pid())),
        "`reload` does not give the supervisor's answer: {stderr}"
    );
    let answer = sv.wait_event_after(mark, T, is_config_event);
    assert_eq!(answer["event"], "config_rejected", "{answer}");
    let error = answer["error"].as_str().unwrap_or("");
    assert!(error.contains("groups[0].max_workers"), "{error}");

    // `status` and `events` work, and warn.
    let (code, stdout, stderr) = run_verb(&sb, &["status", "--json"]);
    assert_eq!(code, Some(0), "`status` with an invalid file: {stderr}");
    let st: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(st["supervisor"]["running"], true, "{st}");
    assert_eq!(st["supervisor"]["pid"], sv.pid(), "{st}");
    assert_eq!(st["children"].as_array().map(Vec::len), Some(2), "{st}");
    assert!(stderr.contains("groups[0].max_workers"), "{stderr}");
    let (code, stdout, stderr) = run_verb(&sb, &["events", "--json"]);
    assert_eq!(code, Some(0), "`events` with an invalid file: {stderr}");
    assert!(stdout.contains("config_rejected"), "{stdout}");

    // `check`, `submit` and `run` still refuse it.
    for args in [&["check"][..], &["submit", "--", "true"], &["run"]] {
        let (code, _, stderr) = run_verb(&sb, args);
        assert_eq!(code, Some(2), "{args:?} accepted an invalid file: {stderr}");
        assert!(
            stderr.contains("groups[0].max_workers"),
            "{args:?}: {stderr}"
        );
    }

    // A file that is not even JSON, half edited: what reads before its first error
    // still names the state dir, and the supervisor there answers (from the events
    // file it runs with, which the file no longer says): rejected, exit 2.
    fs::write(sb.config_path(), "{\"state_dir\": \"var\",,}").unwrap();
    let mark = sv.last_seq();
    let (code, _, stderr) = run_verb(&sb, &["reload"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("supervisor.json:1:")
            && stderr.contains(&format!("supervisor {} rejected", sv.pid())),
        "{stderr}"
    );
    let answer = sv.wait_event_after(mark, T, is_config_event);
    assert_eq!(answer["event"], "config_rejected", "{answer}");

    // One that says nothing readable before its error: the defaults stand in for the
    // state dir, and no supervisor runs there; `reload` says so (exit 1) and signals
    // nothing.
    fs::write(
        sb.config_path(),
        "{\"groups\": [,], \"state_dir\": \"var\"}",
    )
    .unwrap();
    let mark = sv.last_seq();
    let (code, _, stderr) = run_verb(&sb, &["reload"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("supervisor.json:1:") && stderr.contains("not running"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&sb.path().join("state").display().to_string()),
        "`reload` does not say which state dir it looked in: {stderr}"
    );

    // `stop --wait` still stops it, from the file with a value out of range.
    sb.write_config(&bad);
    let (code, _, stderr) = run_verb(&sb, &["stop", "--wait"]);
    assert_eq!(
        code,
        Some(0),
        "`stop --wait` with an invalid file: {stderr}"
    );
    assert_eq!(sv.wait_exit(T), Some(0));
    assert!(
        !sv.events()
            .iter()
            .any(|e| seq(e) > mark && is_config_event(e)),
        "a reload that found no supervisor signalled one:\n{}",
        sv.dump()
    );
    sv.assert_nothing_left(Duration::from_secs(2));
}

#[test]
fn reload_and_stop_of_a_file_that_is_not_json_use_the_default_state_dir() {
    let sb = Sandbox::new(&config(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 1)]);
    fs::write(
        sb.config_path(),
        "{\n  \"groups\": [\n    {\"name\": \"a\",}\n  ]\n}\n",
    )
    .unwrap();
    let mark = sv.last_seq();
    let (code, _, stderr) = run_verb(&sb, &["reload"]);
    // Signalled all the same (the state dir is the default one), and rejected: exit 2.
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("supervisor.json:3:"), "{stderr}");
    let answer = sv.wait_event_after(mark, T, is_config_event);
    assert_eq!(answer["event"], "config_rejected", "{answer}");
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], true, "{st}");
    let (code, _, stderr) = run_verb(&sb, &["stop", "--wait"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sv.wait_exit(T), Some(0));
    sv.assert_nothing_left(Duration::from_secs(2));
}

#[test]
fn a_reload_cannot_move_the_state_dir_the_store_or_the_events_file() {
    let base = config(vec![group("a", 1)]);
    let sb = Sandbox::new(&base);
    let mut sv = sb.start(&[]);
    let before = wait_pools(&sv, &[("a", 1)]);
    let mark = sv.last_seq();

    let mut moved_state = base.clone();
    moved_state["state_dir"] = json!("state2");
    let mut moved_store = base.clone();
    moved_store["store"] = json!({"sqlite": {"path": "state/other.db"}});
    let mut moved_events = base.clone();
    moved_events["events"] = json!({"path": "state/other-events.jsonl"});
    for (cfg, key) in [
        (moved_state, "state_dir"),
        (moved_store, "store"),
        (moved_events, "events.path"),
    ] {
        sb.write_config(&cfg);
        let error = reload_rejected(&sb, &sv, Via::Sighup);
        assert!(
            error.contains(key),
            "the error does not name {key}: {error}"
        );
    }
    // `supervisor reload` of a file that moves the events file waits for the answer
    // where the supervisor writes it, not where the file now says.
    let mut moved_events = base.clone();
    moved_events["events"] = json!({"path": "state/other-events.jsonl"});
    sb.write_config(&moved_events);
    let (code, _, stderr) = run_verb(&sb, &["reload"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("supervisor {} rejected", sv.pid()))
            && stderr.contains("events.path"),
        "{stderr}"
    );
    for path in ["state2", "state/other.db", "state/other-events.jsonl"] {
        assert!(
            !sb.path().join(path).exists(),
            "a rejected config created {path}"
        );
    }
    let events = sv.events();
    for name in ["child_started", "child_exited", "config_loaded"] {
        assert!(since(&events, mark, name).is_empty(), "{}", sv.dump());
    }

    // A change it can make still loads, as the next generation.
    sb.write_config(&config(vec![group("a", 2)]));
    reload_ok(&sb, &sv, Via::Sighup, 2);
    let pools = wait_pools(&sv, &[("a", 2)]);
    assert_eq!(pools["a"][&0], before["a"][&0]);
    let id = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(id, &["succeeded"], T);
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

// ----- no interruption, bursts -------------------------------------------------------

#[test]
fn no_running_job_is_interrupted_by_any_reload() {
    let sb = Sandbox::new(&config(vec![group("a", 2), group("b", 1)]));
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 2), ("b", 1)]);
    let held: Vec<Held> = [("a1", "a"), ("a2", "a"), ("b1", "b")]
        .iter()
        .map(|(name, g)| sb.submit_held(name, &["--group", g]))
        .collect();
    for h in &held {
        job_started(&sv, h.id);
    }
    let pids: Vec<u32> = held.iter().map(Held::pid).collect();
    let check = |step: &str| {
        for (h, pid) in held.iter().zip(&pids) {
            assert!(
                alive(*pid),
                "job {} was interrupted by {step}\n{}",
                h.id,
                sv.dump()
            );
            assert_eq!(sb.job(h.id)["state"], "running", "after {step}");
        }
    };

    let mut b_short = group("b", 1);
    b_short["job_timeout_s"] = json!(0.3);
    b_short["max_attempts"] = json!(1);
    b_short["retry_backoff"] = json!({"initial_s": 5, "max_s": 10, "jitter": 0});
    b_short["restart"]["max_restarts"] = json!(1);
    let steps: Vec<(&str, Via, Option<Value>)> = vec![
        (
            "a grow",
            Via::Sighup,
            Some(config(vec![group("a", 4), group("b", 1)])),
        ),
        (
            "a shrink to 0",
            Via::Cli,
            Some(config(vec![group("a", 0), group("b", 1)])),
        ),
        (
            "new settings for b",
            Via::Sighup,
            Some(config(vec![group("a", 0), b_short.clone()])),
        ),
        (
            "b removed, c added",
            Via::Cli,
            Some(config(vec![group("a", 0), group("c", 1)])),
        ),
        ("a bad file", Via::Sighup, None),
        (
            "a and b back",
            Via::Cli,
            Some(config(vec![group("a", 2), group("b", 1)])),
        ),
    ];
    let mut generation = 1;
    let mut last_good = config(vec![group("a", 2), group("b", 1)]);
    for (step, via, cfg) in steps {
        match cfg {
            Some(cfg) => {
                sb.write_config(&cfg);
                generation += 1;
                reload_ok(&sb, &sv, via, generation);
                last_good = cfg;
            }
            None => {
                fs::write(sb.config_path(), "{\"groups\": 3}").unwrap();
                reload_rejected(&sb, &sv, via);
                // The other verbs read the file too.
                sb.write_config(&last_good);
            }
        }
        check(step);
        if step == "b removed, c added" {
            // Let more than b's new 0.3 s timeout pass since it was loaded, timed by a
            // job that times out itself.
            let witness = sb.submit(&[
                "--group",
                "c",
                "--timeout",
                "0.5",
                "--max-attempts",
                "1",
                "--",
                "sleep",
                "30",
            ]);
            sb.wait_job(witness, &["dead"], T);
            check("b's new timeout");
        }
    }
    wait_pools(&sv, &[("a", 2), ("b", 1)]);
    for h in &held {
        release_and_expect_success(&sb, &sv, h);
    }
    let events = sv.events();
    let finished: Vec<&Value> = since(&events, 0, "job_finished");
    assert_eq!(finished.len(), 4, "{}", sv.dump());
    assert_eq!(
        finished
            .iter()
            .filter(|e| e["outcome"] == "timed_out")
            .count(),
        1,
        "only the witness times out"
    );
    for e in &events {
        if e["event"] == "child_exited" {
            assert_eq!(e["expected"], true, "{e}");
        }
        assert!(e["event"] != "child_restart_scheduled", "{e}");
    }
    sv.stop_cleanly();
}

#[test]
fn a_burst_of_50_sighups_ends_with_the_final_config() {
    let sb = Sandbox::new(&config(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 1)]);
    let held = sb.submit_held("held", &["--group", "a"]);
    job_started(&sv, held.id);
    let pid = held.pid();
    let mark = sv.last_seq();

    let variants = [
        config(vec![group("a", 3)]),
        config(vec![group("a", 1), group("b", 2)]),
        config(vec![group("b", 1)]),
        config(vec![group("a", 2), group("b", 1)]),
        config(vec![group("a", 0), group("c", 1)]),
    ];
    let last = config(vec![group("a", 2), group("final", 1)]);
    let t0 = Instant::now();
    for i in 0..50 {
        if i % 3 == 0 {
            sb.write_config(&variants[(i / 3) % variants.len()]);
        }
        if i == 49 {
            sb.write_config(&last);
        }
        sv.signal(Signal::SIGHUP);
    }
    eprintln!("50 SIGHUPs sent in {:?}", t0.elapsed());

    let pools = wait_pools(&sv, &[("a", 2), ("final", 1)]);
    assert!(
        sv.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the supervisor died of the burst\n{}",
        sv.dump()
    );
    let events = sv.events();
    let config_events: Vec<&Value> = events
        .iter()
        .filter(|e| seq(e) > mark && is_config_event(e))
        .collect();
    assert!(
        config_events.iter().all(|e| e["event"] == "config_loaded"),
        "a whole file written by rename was rejected:\n{}",
        sv.dump()
    );
    let generations: Vec<u64> = config_events
        .iter()
        .map(|e| e["generation"].as_u64().unwrap())
        .collect();
    eprintln!("{} reloads for 50 SIGHUPs", generations.len());
    assert!(
        !generations.is_empty() && generations.len() <= 50,
        "{generations:?}"
    );
    let want: Vec<u64> = (2..2 + generations.len() as u64).collect();
    assert_eq!(generations, want, "generations go up by one");

    // One more reload changes nothing: the final file is the one applied. (The last
    // SIGHUPs of the burst may still be on their way: the doorbell then runs one more
    // pass after the last of them, so the next generation may come from either.)
    let settled = sv.last_seq();
    let e = reload(&sb, &sv, Via::Cli);
    assert_eq!(e["event"], "config_loaded", "{e}\n{}", sv.dump());
    assert!(
        e["generation"].as_u64().unwrap() > *generations.last().unwrap(),
        "{e}"
    );
    assert_eq!(wait_pools(&sv, &[("a", 2), ("final", 1)]), pools);
    let events = sv.events();
    for name in ["child_started", "child_exited"] {
        assert!(since(&events, settled, name).is_empty(), "{}", sv.dump());
    }
    let st = sb.status_json();
    let live: Vec<&Value> = st["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "worker" && c["pid"].as_u64().is_some_and(|p| alive(p as u32)))
        .collect();
    assert_eq!(live.len(), 3, "{st}");
    assert!(
        live.iter()
            .all(|c| c["group"] == "a" || c["group"] == "final"),
        "{st}"
    );

    // The job that ran through it all was never interrupted.
    assert!(alive(pid));
    release_and_expect_success(&sb, &sv, &held);
    assert_uninterrupted(&sv);
    sv.stop_cleanly();
}

// ----- settings outside the groups ---------------------------------------------------

#[test]
fn a_reloaded_shutdown_grace_applies_to_the_next_stop() {
    let mut cfg = config(vec![group("a", 1)]);
    cfg["shutdown_grace_s"] = json!(60);
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 1)]);
    let held = sb.submit_held("held", &["--group", "a"]);
    job_started(&sv, held.id);
    let pid = held.pid();

    cfg["shutdown_grace_s"] = json!(0.2);
    sb.write_config(&cfg);
    reload_ok(&sb, &sv, Via::Sighup, 2);
    assert!(alive(pid), "the reload stopped the job");
    // The stop gives the job 0.2 s, not 60 s, then stops it and requeues it.
    sv.signal(Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        sv.dump()
    );
    sv.assert_nothing_left(Duration::from_secs(2));
    let job = sb.job(held.id);
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "{job}");
}

#[test]
fn a_reloaded_events_rotate_bytes_applies() {
    let mut cfg = config(vec![group("a", 1)]);
    cfg["events"] = json!({"rotate_bytes": 104857600, "keep": 3});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 1)]);

    cfg["events"] = json!({"rotate_bytes": 4096, "keep": 3});
    sb.write_config(&cfg);
    reload_ok(&sb, &sv, Via::Cli, 2);
    // Well over 4096 bytes of events.
    let before = fs::metadata(sb.events_path()).unwrap().len();
    let line = json!({"command": ["true"], "group": "a"}).to_string() + "\n";
    let file = sb.path().join("jobs.jsonl");
    fs::write(&file, line.repeat(30)).unwrap();
    let out = sb.run(&["submit", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    wait_until(T, || sb.status_json()["jobs"]["succeeded"] == 30)
        .unwrap_or_else(|_| panic!("the 30 jobs did not all succeed\n{}", sv.dump()));
    let rotated = std::path::PathBuf::from(format!("{}.1", sb.events_path().display()));
    let size = fs::metadata(sb.events_path()).unwrap().len();
    assert!(
        rotated.exists(),
        "events.rotate_bytes was reloaded to 4096 (config_loaded), yet the events file \
         grew from {before} to {size} bytes without a rotation"
    );
    assert!(size < 2 * 4096, "the current file is {size} bytes");
    sv.stop_cleanly();
}

#[test]
fn reload_finds_its_answer_in_a_file_rotated_right_after_it() {
    // Forty workers more: their starts write ~9 KB of events right after
    // `config_loaded`, so the answer is in a rotated file when `reload` reads, or (one
    // rotated file kept) in none: the supervisor keeps its answer in the state dir too.
    let mut cfg = config(vec![group("a", 1)]);
    cfg["events"] = json!({"rotate_bytes": 4096, "keep": 1});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 1)]);
    cfg["groups"][0]["max_workers"] = json!(41);
    sb.write_config(&cfg);
    let out = sb.run(&["reload"]);
    assert!(out.status.success(), "{out:?}\n{}", sv.dump());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("accepted (generation 2)"), "{said}");
    // And a rejection, the same way: the bad file is answered with exit 2 at once.
    cfg["groups"][0]["max_workers"] = json!(-1);
    sb.write_config(&cfg);
    let out = sb.run(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    sv.stop_cleanly();
}

#[test]
fn a_reloaded_grabber_poll_interval_applies() {
    let mut cfg = config(vec![group("a", 1)]);
    cfg["grabber"] = json!({"poll_interval_s": 60});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    wait_pools(&sv, &[("a", 1)]);

    cfg["grabber"] = json!({"poll_interval_s": 0.1});
    sb.write_config(&cfg);
    reload_ok(&sb, &sv, Via::Sighup, 2);
    // A job queued in the same store without ringing the doorbell (the config used to
    // submit it names another state dir, so no pidfile): only a poll finds it.
    let mut quiet = cfg.clone();
    quiet["state_dir"] = json!("elsewhere");
    quiet["store"] = json!({"sqlite": {"path": "state/jobs.db"}});
    let quiet_path = sb.path().join("quiet.json");
    fs::write(&quiet_path, serde_json::to_vec_pretty(&quiet).unwrap()).unwrap();
    let out = Command::new(bin())
        .current_dir(sb.path())
        .args([
            "submit",
            "-c",
            quiet_path.to_str().unwrap(),
            "--group",
            "a",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let t0 = Instant::now();
    let found = wait_until(Duration::from_secs(5), || {
        sb.job(id)["state"] == "succeeded"
    });
    assert!(
        found.is_ok(),
        "grabber.poll_interval_s was reloaded from 60 to 0.1 s (config_loaded), yet a job \
         queued without a doorbell was not claimed within {:?}\n{}",
        t0.elapsed(),
        sv.dump()
    );
    sv.stop_cleanly();
}

#[test]
fn a_reloaded_heartbeat_applies() {
    let mut cfg = config(vec![group("a", 1)]);
    cfg["heartbeat"] = json!({"interval_s": 0.2, "timeout_s": 60});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    let worker = wait_pools(&sv, &[("a", 1)])["a"][&0];

    cfg["heartbeat"] = json!({"interval_s": 0.2, "timeout_s": 1});
    sb.write_config(&cfg);
    let loaded = reload_ok(&sb, &sv, Via::Sighup, 2);
    // A wedged worker is now found out after about a second, not a minute.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker as i32), Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    let found = wait_until(Duration::from_secs(5), || {
        since(&sv.events(), seq(&loaded), "child_exited")
            .iter()
            .any(|e| e["pid"] == worker)
    });
    if found.is_err() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker as i32), Signal::SIGKILL);
        panic!(
            "heartbeat was reloaded to 0.2 s / 1 s (config_loaded), yet a stopped worker was \
             not killed within {:?}\n{}",
            t0.elapsed(),
            sv.dump()
        );
    }
    eprintln!("stopped worker found out after {:?}", t0.elapsed());
    wait_pools(&sv, &[("a", 1)]);
    sv.stop_cleanly();
}
