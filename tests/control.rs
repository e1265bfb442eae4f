//! Job control (the contract's "Job control" additions), on the real binary: `logs`,
//! `retry`, `purge`, `pause`/`resume`, priorities, dependencies, delayed starts, the new
//! `job` fields, `explain`,
//! `submit`'s warning, `reload`'s answer, `-c` before the verb, `stop --wait`'s
//! progress, and the `jobs` filters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(20);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One group `g` of `workers` that retries at once, with quick heartbeats.
/// A job of group `g` with one attempt, running `script` with `sh -c`.
fn one_try(sb: &Sandbox, script: &str) -> i64 {
    sb.submit(&[
        "--group",
        "g",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        script,
    ])
}

fn one_group(workers: u32) -> Value {
    json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 2},
        "shutdown_grace_s": 10,
        "groups": [group("g", workers)],
    })
}

// ----- logs --------------------------------------------------------------------------------

#[test]
fn logs_prints_a_jobs_output_follows_it_across_retries_and_shows_one_attempt() {
    let sb = Sandbox::new(&one_group(1));
    // Fails twice, then succeeds; each attempt says which it is.
    let id = sb.submit(&[
        "--group",
        "g",
        "--max-attempts",
        "3",
        "--",
        "sh",
        "-c",
        "echo attempt $SUPERVISOR_ATTEMPT; [ $SUPERVISOR_ATTEMPT -ge 3 ]",
    ]);
    // Following before the job even started: it waits, and ends when the job is final.
    let follow = sb
        .command(&["logs", &id.to_string(), "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sv = sb.start(&[]);
    sb.wait_job(id, &["succeeded"], T);
    let out = follow.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "attempt 1\nattempt 2\nattempt 3\n", "{stderr}");

    let out = sb.run(&["logs", &id.to_string()]);
    assert_eq!(text(&out).0, "attempt 1\nattempt 2\nattempt 3\n");
    for n in 1..=3 {
        let out = sb.run(&["logs", &id.to_string(), "--attempt", &n.to_string()]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(text(&out).0, format!("attempt {n}\n"));
    }
    let out = sb.run(&["logs", &id.to_string(), "--attempt", "4"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no 4th attempt: {:?}",
        text(&out)
    );
    // A first attempt that printed nothing: its output is empty, not the next one's.
    let quiet = sb.submit(&[
        "--group",
        "g",
        "--max-attempts",
        "3",
        "--",
        "sh",
        "-c",
        "[ $SUPERVISOR_ATTEMPT -ge 2 ] && echo attempt $SUPERVISOR_ATTEMPT; [ $SUPERVISOR_ATTEMPT -ge 3 ]",
    ]);
    sb.wait_job(quiet, &["succeeded"], T);
    for (n, want) in [(1, ""), (2, "attempt 2\n"), (3, "attempt 3\n")] {
        let out = sb.run(&["logs", &quiet.to_string(), "--attempt", &n.to_string()]);
        assert_eq!(
            (out.status.code(), text(&out).0.as_str()),
            (Some(0), want),
            "attempt {n}"
        );
    }
    let out = sb.run(&["logs", "999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("999"),
        "names the id: {:?}",
        text(&out)
    );
    sv.stop_cleanly();
}

// ----- what the verbs say --------------------------------------------------------------

#[test]
fn retry_queues_a_final_job_again_with_a_fresh_attempt_budget() {
    let sb = Sandbox::new(&one_group(1));
    let flag = sb.path().join("ok");
    let script = format!("[ -e {} ]", flag.display());
    let id = sb.submit(&[
        "--group",
        "g",
        "--max-attempts",
        "2",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let mut sv = sb.start(&[]);
    let job = sb.wait_job(id, &["dead"], T);
    assert_eq!(job["attempts"], 2);
    // Not final: refused, and it says why.
    let held = sb.submit_held("h", &["--group", "g"]);
    held.pid();
    let out = sb.run(&["retry", &held.id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("not final") || text(&out).1.contains("running"));
    held.release();
    sb.wait_job(held.id, &["succeeded"], T);
    let out = sb.run(&["retry", "4242"]);
    assert_eq!(out.status.code(), Some(2));

    std::fs::write(&flag, "").unwrap();
    // An id given twice is retried once, and said once.
    let out = sb.run(&["retry", &id.to_string(), &id.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{id}\n"));
    let job = sb.wait_job(id, &["succeeded"], T);
    // A fresh budget: the attempts count again from 1.
    assert_eq!(job["attempts"], 1, "{job}");
    sv.stop_cleanly();
}

#[test]
fn purge_deletes_final_jobs_and_their_logs_by_state_and_age() {
    let sb = Sandbox::new(&one_group(2));
    let ok = sb.submit(&["--group", "g", "--", "echo", "fine"]);
    let bad = one_try(&sb, "echo no; exit 3");
    let mut sv = sb.start(&[]);
    sb.wait_job(ok, &["succeeded"], T);
    sb.wait_job(bad, &["dead"], T);
    let held = sb.submit_held("h", &["--group", "g"]);
    held.pid();
    let log = |id: i64| sb.path().join(format!("state/logs/{id}.log"));
    assert!(log(bad).exists());

    // Nothing finished a day ago.
    let out = sb.run(&["purge", "--before", "1d"]);
    assert_eq!((out.status.code(), text(&out).0.trim()), (Some(0), "0"));
    // By state.
    let out = sb.run(&["purge", "--state", "dead"]);
    assert_eq!(
        (out.status.code(), text(&out).0.trim()),
        (Some(0), "1"),
        "{:?}",
        text(&out)
    );
    assert_eq!(sb.run(&["job", &bad.to_string()]).status.code(), Some(2));
    assert!(!log(bad).exists(), "its log goes with it");
    // Everything final before a time to come (RFC 3339); the running job stays.
    let out = sb.run(&["purge", "--before", "2999-01-01T00:00:00Z"]);
    assert_eq!((out.status.code(), text(&out).0.trim()), (Some(0), "1"));
    assert!(!log(ok).exists());
    assert_eq!(sb.job(held.id)["state"], "running");
    // A chain, each after the one before, the first dead: the dependents are canceled,
    // and one purge takes them all (a dependency goes once its dependent is gone).
    let first = one_try(&sb, "false");
    let mut chain = vec![first];
    for _ in 0..3 {
        let after = chain.last().unwrap().to_string();
        chain.push(sb.submit(&["--group", "g", "--after", &after, "--", "true"]));
    }
    for &id in &chain[1..] {
        sb.wait_job(id, &["canceled"], T);
    }
    let out = sb.run(&["purge", "--before", "2999-01-01T00:00:00Z"]);
    assert_eq!(
        (out.status.code(), text(&out).0.trim()),
        (Some(0), "4"),
        "{out:?}"
    );
    // Bad input: exit 2, naming what is wrong.
    for args in [
        vec!["purge", "--before", "yesterday-ish"],
        vec!["purge", "--state", "running"],
    ] {
        let out = sb.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {:?}", text(&out));
        assert!(!text(&out).1.is_empty());
    }
    held.release();
    sv.stop_cleanly();
}

#[test]
fn a_paused_group_claims_nothing_even_after_a_restart_until_resumed() {
    let sb = Sandbox::new(&json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 2},
        "shutdown_grace_s": 5,
        "groups": [group("g", 1), group("h", 1)],
    }));
    let out = sb.run(&["pause", "g"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let out = sb.run(&["pause", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("nosuch"));
    let in_g = sb.submit(&["--group", "g", "--", "true"]);
    let in_h = sb.submit(&["--group", "h", "--", "true"]);
    let mut sv = sb.start(&[]);
    sb.wait_job(in_h, &["succeeded"], T);
    let status = sb.status_json();
    assert_eq!(status["paused"], json!(["g"]), "{status}");
    assert!(String::from_utf8_lossy(&sb.run(&["status"]).stdout).contains("paused"));
    assert_eq!(sb.job(in_g)["state"], "queued");
    // It holds across a restart of the supervisor.
    sv.stop_cleanly();
    let mut sv = sb.start(&[]);
    sv.wait_started();
    let probe = sb.submit(&["--group", "h", "--", "true"]);
    sb.wait_job(probe, &["succeeded"], T);
    assert_eq!(sb.job(in_g)["state"], "queued");
    // Resumed (all groups, without names): it runs.
    let out = sb.run(&["resume"]);
    assert_eq!(out.status.code(), Some(0));
    sb.wait_job(in_g, &["succeeded"], T);
    assert_eq!(sb.status_json()["paused"], json!([]));
    sv.stop_cleanly();
}

#[test]
fn higher_priority_runs_first_and_first_come_first_served_within_a_priority() {
    let sb = Sandbox::new(&one_group(1));
    let a = sb.submit(&["--group", "g", "--", "true"]);
    let b = sb.submit(&["--group", "g", "--", "true"]);
    let c = sb.submit(&["--group", "g", "--priority", "5", "--", "true"]);
    let d = sb.submit(&["--group", "g", "--priority", "-1", "--", "true"]);
    let e = sb.submit(&["--group", "g", "--priority", "5", "--", "true"]);
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0));
    let order: Vec<i64> = sv
        .events()
        .iter()
        .filter(|e| e["event"] == "job_started")
        .map(|e| e["job_id"].as_i64().unwrap())
        .collect();
    assert_eq!(order, [c, e, a, b, d]);
    assert_eq!(sb.job(c)["priority"], 5);
    let out = sb.run(&["submit", "--group", "g", "--priority", "high", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_delayed_job_does_not_start_before_its_time() {
    let sb = Sandbox::new(&one_group(1));
    let before = now();
    let later = sb.submit(&["--group", "g", "--delay", "1.5s", "--", "true"]);
    let past = sb.submit(&["--group", "g", "--at", "2001-01-01T00:00:00Z", "--", "true"]);
    let job = sb.job(later);
    let nb = job["not_before"].as_f64().unwrap();
    assert!(nb >= before + 1.5 && nb < now() + 1.5 + 1.0, "{job}");
    let mut sv = sb.start(&[]);
    sb.wait_job(past, &["succeeded"], T);
    let job = sb.wait_job(later, &["succeeded"], T);
    assert!(job["started_at"].as_f64().unwrap() >= nb, "{job}");
    for bad in [["--delay", "soon"], ["--at", "tomorrow"]] {
        let out = sb.run(&["submit", "--group", "g", bad[0], bad[1], "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    sv.stop_cleanly();
}

#[test]
fn jsonl_lines_take_priority_and_not_before() {
    let sb = Sandbox::new(&one_group(1));
    let first = sb.submit(&["--group", "g", "--", "true"]);
    let file = sb.path().join("jobs.jsonl");
    let at = now() + 3600.0;
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n",
            json!({"command": ["true"], "group": "g", "priority": 3}),
            json!({"command": ["true"], "group": "g", "not_before": at}),
        ),
    )
    .unwrap();
    let out = sb.run(&["submit", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let ids: Vec<i64> = text(&out).0.lines().map(|l| l.parse().unwrap()).collect();
    let j = sb.job(ids[0]);
    assert_eq!(j["priority"], json!(3));
    assert_eq!(sb.job(first)["priority"], json!(0));
    assert_eq!(sb.job(ids[1])["not_before"].as_f64(), Some(at));
    // A bad line names itself, and nothing is queued.
    std::fs::write(&file, "{\"command\": [\"true\"], \"priority\": \"x\"}\n").unwrap();
    let out = sb.run(&["submit", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("line 1"), "{:?}", text(&out));
}

#[test]
fn job_json_shows_every_field_the_contract_lists() {
    let sb = Sandbox::new(&json!({"groups": [group("h", 1)]}));
    let other = sb.submit(&[
        "--group",
        "h",
        "--tag",
        "k=v",
        "--timeout",
        "9",
        "--",
        "true",
    ]);
    let j = sb.job(other);
    // The contract's fields, and those job control adds.
    let added = [
        "cwd",
        "timeout_s",
        "max_attempts",
        "priority",
        "after",
        "not_before",
        "tags",
        "start_error",
        "reason",
    ];
    for field in JOB_FIELDS.iter().chain(&added) {
        assert!(j.get(field).is_some(), "job --json lacks {field}: {j}");
    }
    assert_eq!(
        (j["tags"]["k"].clone(), j["timeout_s"].clone()),
        (json!("v"), json!(9.0))
    );
}

#[test]
fn a_job_after_others_runs_once_they_succeeded_and_is_canceled_if_one_did_not() {
    let sb = Sandbox::new(&one_group(2));
    let first = sb.submit_held("first", &["--group", "g"]);
    let then = sb.submit(&[
        "--group",
        "g",
        "--after",
        &first.id.to_string(),
        "--",
        "true",
    ]);
    let doomed = one_try(&sb, "test -e fixed");
    let orphan = sb.submit(&[
        "--group",
        "g",
        "--after",
        &doomed.to_string(),
        "--after",
        &first.id.to_string(),
        "--",
        "true",
    ]);
    let mut sv = sb.start(&[]);
    first.pid();
    let job = sb.wait_job(orphan, &["canceled"], T);
    assert_eq!(
        job["reason"],
        format!("dependency {doomed} ended dead"),
        "{job}"
    );
    assert_eq!(sb.job(then)["state"], "queued");
    assert_eq!(sb.job(then)["after"], json!([first.id]));
    first.release();
    let done = sb.wait_job(then, &["succeeded"], T);
    let first_job = sb.job(first.id);
    assert!(done["started_at"].as_f64() >= first_job["finished_at"].as_f64());
    // An unknown dependency is refused at submit.
    let out = sb.run(&["submit", "--group", "g", "--after", "777", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("777"));
    // Retried alone, the canceled one is canceled again at once: its dependency is
    // still dead, and it says so.
    let out = sb.run(&["retry", &orphan.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out)
            .1
            .contains(&format!("dependency {doomed} ended dead")),
        "{out:?}"
    );
    assert_eq!(sb.job(orphan)["state"], "canceled");
    // Retried with its dependency (named first or not), it waits for it, then runs.
    std::fs::write(sb.path().join("fixed"), "").unwrap();
    let out = sb.run(&["retry", &orphan.to_string(), &doomed.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let job = sb.wait_job(orphan, &["succeeded", "canceled", "dead"], T);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(sb.job(doomed)["state"], "succeeded");
    sv.stop_cleanly();
}

#[test]
fn explain_gives_every_reason_a_job_is_not_running() {
    let sb = Sandbox::new(&json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 2},
        "shutdown_grace_s": 5,
        "groups": [
            {"name": "arm", "max_workers": 1, "match": {"arch": ["aarch64"]}},
            group("g", 1),
            group("none", 0),
        ],
    }));
    let explain = |id: i64| {
        let out = sb.run(&["explain", &id.to_string()]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        text(&out).0
    };
    let mut sv = sb.start(&[]);
    sv.wait_started();
    let busy = sb.submit_held("busy", &["--group", "g"]);
    busy.pid();
    let queued = sb.submit(&["--group", "g", "--", "true"]);
    let untaken = sb.submit(&["--tag", "arch=s390x", "--", "true"]);
    let idle = sb.submit(&["--group", "none", "--", "true"]);
    let waits = sb.submit(&["--group", "g", "--after", &queued.to_string(), "--", "true"]);
    let later = sb.submit(&["--group", "g", "--delay", "1h", "--", "true"]);

    let e = explain(queued);
    assert!(e.contains("busy") && e.contains("1st"), "{e}");
    let e = explain(untaken);
    assert!(e.contains("no group") && e.contains("aarch64"), "{e}");
    let e = explain(idle);
    assert!(e.contains("no workers"), "{e}");
    let e = explain(waits);
    assert!(e.contains(&format!("waiting for job {queued}")), "{e}");
    let e = explain(later);
    assert!(e.contains("not before"), "{e}");
    assert_eq!(sb.run(&["pause", "g"]).status.code(), Some(0));
    let e = explain(queued);
    assert!(e.contains("paused"), "{e}");
    // `job` shows the first reason on a `waiting` line.
    let shown = String::from_utf8_lossy(&sb.run(&["job", &queued.to_string()]).stdout).into_owned();
    assert!(
        shown.lines().any(|l| l.trim_start().starts_with("waiting")),
        "{shown}"
    );
    assert_eq!(sb.run(&["explain", "999"]).status.code(), Some(2));
    sb.run(&["resume"]);
    busy.release();
    sv.stop_cleanly();
}

#[test]
fn submit_warns_when_no_group_takes_the_job_and_queues_it_all_the_same() {
    let sb = Sandbox::new(&one_group(1));
    let out = sb.run(&["submit", "--tag", "arch=mips", "--", "true"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no group"), "{stderr}");
    let id: i64 = stdout.trim().parse().unwrap();
    assert_eq!(sb.job(id)["state"], "queued");
    let out = sb.run(&["submit", "--group", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).1.contains("nosuch"));
    let out = sb.run(&["submit", "--group", "g", "--", "true"]);
    assert_eq!(text(&out).1, "", "no warning for a job a group takes");
}

#[test]
fn reload_waits_for_the_supervisors_answer() {
    let sb = Sandbox::new(&one_group(1));
    let mut sv = sb.start(&[]);
    sv.wait_started();
    let mut config = one_group(1);
    config["groups"][0]["max_workers"] = json!(2);
    sb.write_config(&config);
    let out = sb.run(&["reload"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("accepted (generation 2)"), "{stdout}");
    assert!(
        stdout.contains("group g: max_workers 1 -> 2"),
        "what changed: {stdout}"
    );
    config["groups"][0]["max_workers"] = json!("many");
    sb.write_config(&config);
    let out = sb.run(&["reload"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stderr.contains("max_workers"), "{stderr}");
    // A supervisor that is stopping (waiting for a job) applies no reload, and says so
    // at once rather than after the 10 s wait.
    config["groups"][0]["max_workers"] = json!(2);
    sb.write_config(&config);
    let held = sb.submit_held("held", &["--group", "g"]);
    held.pid();
    sv.signal(nix::sys::signal::Signal::SIGTERM);
    sv.wait_event(T, |e| e["event"] == "supervisor_stopping");
    let t0 = std::time::Instant::now();
    let out = sb.run(&["reload"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        t0.elapsed()
    );
    held.release();
    assert_eq!(sv.wait_exit(T), Some(0));
}

#[test]
fn stop_wait_says_what_it_waits_for() {
    let sb = Sandbox::new(&one_group(1));
    let mut sv = sb.start(&[]);
    // A job that takes a while to go once asked to.
    let slow = sb.submit(&[
        "--group",
        "g",
        "--",
        "sh",
        "-c",
        "trap 'sleep 6; exit 0' TERM; while :; do sleep 0.1; done",
    ]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == slow);
    let out = sb.run(&["stop", "--wait"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let progress: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("running"))
        .collect();
    assert!(!progress.is_empty(), "{stdout}{stderr}");
    assert!(progress[0].contains(&format!("{slow}")) || progress[0].contains("1 job"));
    assert_eq!(sv.wait_exit(T), Some(0));
}

#[test]
fn the_config_flag_goes_before_or_after_the_verb() {
    let sb = Sandbox::new(&one_group(1));
    for args in [
        vec!["-c", sb.config_path().to_str().unwrap(), "check"],
        vec!["check", "-c", sb.config_path().to_str().unwrap()],
    ] {
        let out = std::process::Command::new(bin())
            .args(&args)
            .current_dir("/")
            .env_remove("SUPERVISOR_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {:?}", text(&out));
    }
}

// ----- jobs and job --------------------------------------------------------------------

#[test]
fn jobs_filters_by_group_and_outcome_and_limits() {
    let sb = Sandbox::new(&json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 2},
        "groups": [group("g", 2), group("h", 1)],
    }));
    let ok = sb.submit(&["--group", "g", "--", "true"]);
    let bad = sb.submit(&["--group", "g", "--max-attempts", "1", "--", "false"]);
    let other = sb.submit(&[
        "--group",
        "h",
        "--tag",
        "k=v",
        "--timeout",
        "9",
        "--",
        "true",
    ]);
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0));
    let ids = |args: &[&str]| -> Vec<i64> {
        let mut full = vec!["jobs", "--json"];
        full.extend_from_slice(args);
        let out = sb.run(&full);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {:?}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&["--group", "g"]), [ok, bad]);
    assert_eq!(ids(&["--group", "h"]), [other]);
    assert_eq!(ids(&["--outcome", "failed"]), [bad]);
    assert_eq!(ids(&["--limit", "2"]).len(), 2);
    assert_eq!(
        sb.run(&["jobs", "--outcome", "nope"]).status.code(),
        Some(2)
    );
}
