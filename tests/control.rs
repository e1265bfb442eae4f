//! Job control (the contract's "Job control" additions), on the real binary: `logs`,
//! `submit`'s warning, `reload`'s answer, `-c` before the verb, `stop --wait`'s
//! progress, and the `jobs` filters.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(20);

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One group `g` of `workers` that retries at once, with quick heartbeats.
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
    config["groups"][0]["max_workers"] = json!("many");
    sb.write_config(&config);
    let out = sb.run(&["reload"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stderr.contains("max_workers"), "{stderr}");
    sv.stop_cleanly();
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
