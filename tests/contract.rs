//! The user-facing contract (`contract.md`), checked statement by statement as an
//! independent black-box suite would: the real binary, driven as an operator drives it.
//! Only what the other modules do not already check is here: exit codes of every verb,
//! config lookup and defaults, relative paths, routing and per-job overrides, the exact
//! fields of `job --json` and of every event, lost attempts, cancel, `seq` across
//! restarts, `--until-empty` and the ways of stopping.
//!
//! A test that the binary fails where the contract is clear is kept as the contract
//! demands and marked `#[ignore = "deviation: ..."]`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(10);

// ----- helpers -----------------------------------------------------------------------

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// (exit code, stdout, stderr).
fn parts(out: Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary with `args`, run in `cwd`, with `SUPERVISOR_CONFIG` set to `env` (or
/// unset).
fn bare(cwd: &Path, env: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.current_dir(cwd).args(args).stdin(Stdio::null());
    match env {
        Some(v) => cmd.env("SUPERVISOR_CONFIG", v),
        None => cmd.env_remove("SUPERVISOR_CONFIG"),
    };
    cmd
}

/// Start `supervisor run` from a command the test built (its own cwd, `-c` or
/// environment), as the harness's `start` does; `events` is where its events file is.
fn spawn_run(mut cmd: Command, events: PathBuf, dir: &Path) -> Supervisor {
    let stderr = fs::File::create(dir.join("supervisor.stderr")).unwrap();
    let sv = spawn_supervisor(&mut cmd, stderr, events, dir);
    sv.wait_started();
    sv
}

/// Events named `name` about job `id`.
fn of_job(events: &[Value], name: &str, id: i64) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == name && e["job_id"] == id)
        .cloned()
        .collect()
}

/// The only event named `name` about job `id`.
fn one_of_job(events: &[Value], name: &str, id: i64) -> Value {
    let found = of_job(events, name, id);
    assert_eq!(found.len(), 1, "{name} of job {id}: {found:?}");
    found[0].clone()
}

/// `jobs [--state S] --json`.
fn jobs_json(sb: &Sandbox, state: Option<&str>) -> Vec<Value> {
    let mut args = vec!["jobs", "--json"];
    if let Some(s) = state {
        args.extend(["--state", s]);
    }
    let (code, stdout, stderr) = parts(sb.run(&args));
    assert_eq!(code, Some(0), "jobs: {stderr}");
    serde_json::from_str::<Value>(&stdout)
        .unwrap_or_else(|e| panic!("jobs --json is not JSON ({e}): {stdout}"))
        .as_array()
        .unwrap_or_else(|| panic!("jobs --json is not a list: {stdout}"))
        .clone()
}

/// The keys of `e`, which must include every one of `required`.
fn assert_has(e: &Value, required: &[&str]) {
    let obj = e
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {e}"));
    let missing: Vec<&&str> = required.iter().filter(|k| !obj.contains_key(**k)).collect();
    assert!(missing.is_empty(), "{missing:?} missing from {e}");
}

/// A key that is absent or null.
fn absent_or_null(e: &Value, key: &str) -> bool {
    e.get(key).is_none_or(Value::is_null)
}

/// A key that is present and null (`group` and `slot` of the grabber).
fn present_null(e: &Value, key: &str) -> bool {
    e.get(key) == Some(&Value::Null)
}

/// "`code` or `signal`": exactly one of the two is an integer, the other absent or
/// null; (code, signal).
fn code_or_signal(e: &Value, code_key: &str) -> (Option<i64>, Option<i64>) {
    let code = e.get(code_key).and_then(Value::as_i64);
    let signal = e.get("signal").and_then(Value::as_i64);
    let ok = match (code, signal) {
        (Some(_), None) => absent_or_null(e, "signal"),
        (None, Some(_)) => absent_or_null(e, code_key),
        _ => false,
    };
    assert!(ok, "expected exactly one of {code_key} and signal: {e}");
    (code, signal)
}

/// A process's state letter (`R`, `S`, `Z`...), its parent and its process group.
fn stat_of(pid: u32) -> Option<(char, u32, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat.rsplit(')').next()?.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// The pid a job wrote to `path` (one line), once the line is complete.
fn read_pid(path: &Path) -> u32 {
    let mut pid = None;
    wait_until(T, || {
        pid = fs::read_to_string(path)
            .ok()
            .filter(|s| s.ends_with('\n'))
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .unwrap_or_else(|_| panic!("{} was never written", path.display()));
    pid.unwrap()
}

/// Every events file (rotated ones first, oldest first), as parsed events.
fn all_event_files(events: &Path) -> Vec<(PathBuf, Vec<Value>)> {
    let mut files = vec![];
    for n in (1..100).rev() {
        let p = PathBuf::from(format!("{}.{n}", events.display()));
        if p.exists() {
            files.push(p);
        }
    }
    files.push(events.to_path_buf());
    files
        .into_iter()
        .map(|p| {
            let evs = read_events(&p);
            (p, evs)
        })
        .collect()
}

/// Check `supervisor check` on `config` (written as text): (exit code, stdout, stderr).
fn check_text(sb: &Sandbox, text: &str) -> (Option<i32>, String, String) {
    fs::write(sb.config_path(), text).unwrap();
    parts(sb.run(&["check"]))
}

// ----- the command line: exit codes --------------------------------------------------

/// Every verb's documented exit code for the cases that need no running supervisor
/// (`reload` / `stop` without one are in `operate.rs`).
#[test]
fn every_verb_exits_as_documented() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let mut problems = vec![];
    let mut expect = |args: &[&str], want: i32, what: &str| {
        let (code, stdout, stderr) = parts(sb.run(args));
        if code != Some(want) {
            problems.push(format!(
                "{args:?} ({what}): exit {code:?}, want {want}\nstdout: {stdout}\nstderr: {stderr}"
            ));
        }
        stdout
    };
    expect(&["check"], 0, "a valid config");
    expect(&["status"], 0, "never run");
    expect(&["status", "--json"], 0, "never run");
    let printed = expect(&["events"], 0, "never run: no events yet");
    assert_eq!(printed, "");
    expect(&["events", "--json"], 0, "never run: no events yet");
    let listed = expect(&["jobs", "--json"], 0, "an empty store");
    assert_eq!(listed.trim().parse::<Value>().ok(), Some(json!([])));
    expect(&["jobs"], 0, "an empty store, as a table");
    expect(&["job", "424242"], 2, "an unknown id");
    expect(&["job", "424242", "--json"], 2, "an unknown id");
    expect(&["job", "nonsense"], 2, "not an id");
    expect(&["cancel", "424242"], 2, "an unknown id");
    expect(&["cancel", "nonsense"], 2, "not an id");
    expect(&["jobs", "--state", "bogus"], 2, "no such state");
    expect(&["run", "--bogus"], 2, "bad usage");
    expect(&["submit", "--bogus", "--", "true"], 2, "bad usage");
    expect(
        &["submit", "--file", "/nonexistent/jobs.jsonl"],
        2,
        "no such file",
    );
    expect(&["bogus-verb"], 2, "bad usage");

    // submit: the id alone on stdout; `job` knows it (0); `cancel` of it (0).
    let (code, stdout, stderr) = parts(sb.run(&["submit", "--group", "a", "--", "true"]));
    assert_eq!(code, Some(0), "{stderr}");
    let id: i64 = stdout.trim().parse().unwrap();
    assert_eq!(stdout, format!("{id}\n"), "the id alone on stdout");
    expect(&["job", &id.to_string()], 0, "a known id");
    expect(&["job", &id.to_string(), "--json"], 0, "a known id");
    expect(&["cancel", &id.to_string()], 0, "a queued job");
    expect(&["cancel", &id.to_string()], 0, "an already canceled job");
    expect(&["jobs", "--state", "canceled"], 0, "a state");

    // A missing or invalid config: 2 for `run`, `check`, `submit`, `jobs`, `job`, `cancel`.
    fs::remove_file(sb.config_path()).unwrap();
    for args in [
        &["run"][..],
        &["check"],
        &["submit", "--group", "a", "--", "true"],
        &["jobs"],
        &["job", &id.to_string()],
        &["cancel", &id.to_string()],
    ] {
        expect(args, 2, "no config file");
    }
    sb.write_config(&json!({"groups": [{"name": "a", "max_workers": -1}]}));
    for args in [&["run"][..], &["check"], &["submit", "--", "true"]] {
        expect(args, 2, "an invalid config");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ----- the config: validity, errors, lookup, paths, defaults -------------------------

#[test]
fn check_accepts_the_contract_s_example_and_requires_only_groups() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    // The example of the contract, verbatim.
    let example = r#"{
  "state_dir": "state",
  "store": { "sqlite": { "path": "state/jobs.db" } },
  "grabber": { "poll_interval_s": 1.0,
               "error_backoff": { "initial_s": 0.5, "max_s": 30, "jitter": 0.75 } },
  "groups": [
    { "name": "x86_64",
      "max_workers": 4,
      "match": { "arch": ["x86_64", "i386"] },
      "job_timeout_s": 3600,
      "max_attempts": 3,
      "retry_backoff": { "initial_s": 1, "max_s": 300, "jitter": 0.75 },
      "restart": { "backoff": { "initial_s": 0.1, "max_s": 30, "jitter": 0.75 },
                   "max_restarts": 5, "period_s": 60, "on_exhausted": "exit" } }
  ],
  "events": { "path": "state/events.jsonl", "rotate_bytes": 104857600, "keep": 5 },
  "heartbeat": { "interval_s": 5, "timeout_s": 20 },
  "shutdown_grace_s": 30
}"#;
    let valid = [
        ("the contract's example", example.to_string()),
        (
            "groups alone, a group's name alone",
            r#"{"groups": [{"name": "a"}]}"#.into(),
        ),
        (
            "max_workers 0",
            r#"{"groups": [{"name": "a", "max_workers": 0}]}"#.into(),
        ),
        (
            "on_exhausted disable",
            r#"{"groups": [{"name": "a", "restart": {"on_exhausted": "disable"}}]}"#.into(),
        ),
        (
            "a postgres store",
            r#"{"store": {"postgres": {"url": "postgres://u:p@localhost/db"}},
                "groups": [{"name": "a"}]}"#
                .into(),
        ),
        (
            "jitter 0",
            r#"{"groups": [{"name": "a", "retry_backoff": {"jitter": 0}}]}"#.into(),
        ),
    ];
    let mut problems = vec![];
    for (what, text) in &valid {
        let (code, _, stderr) = check_text(&sb, text);
        if code != Some(0) {
            problems.push(format!("{what}: exit {code:?}, want 0: {stderr}"));
        }
    }
    // Invalid: exit 2, and the error names the file and the key path.
    let invalid: [(&str, &str, &str); 11] = [
        ("no groups key", r#"{}"#, "groups"),
        ("no group", r#"{"groups": []}"#, "groups"),
        (
            "two groups of one name",
            r#"{"groups": [{"name": "a"}, {"name": "a"}]}"#,
            "groups[1]",
        ),
        (
            "max_workers < 0",
            r#"{"groups": [{"name": "a"}, {"name": "b", "max_workers": -1}]}"#,
            "groups[1].max_workers",
        ),
        (
            "max_workers of the wrong type",
            r#"{"groups": [{"name": "a", "max_workers": "4"}]}"#,
            "groups[0].max_workers",
        ),
        (
            "an unknown top-level key",
            r#"{"groups": [{"name": "a"}], "colour": "red"}"#,
            "colour",
        ),
        (
            "an unknown key in a group",
            r#"{"groups": [{"name": "a", "colour": "red"}]}"#,
            "groups[0]",
        ),
        (
            "an unknown key deep down",
            r#"{"groups": [{"name": "a", "restart": {"backoff": {"speed": 1}}}]}"#,
            "groups[0].restart.backoff",
        ),
        (
            "an unknown on_exhausted",
            r#"{"groups": [{"name": "a", "restart": {"on_exhausted": "explode"}}]}"#,
            "groups[0].restart.on_exhausted",
        ),
        (
            "an unknown store",
            r#"{"store": {"mysql": {}}, "groups": [{"name": "a"}]}"#,
            "store",
        ),
        (
            "an unknown key in events",
            r#"{"events": {"rotate": 1}, "groups": [{"name": "a"}]}"#,
            "events",
        ),
    ];
    let file = sb.config_path().display().to_string();
    for (what, text, key) in invalid {
        let (code, stdout, stderr) = check_text(&sb, text);
        if code != Some(2) || !stderr.contains(key) || !stderr.contains(&file) {
            problems.push(format!(
                "{what}: exit {code:?} (want 2), the error should name {file} and {key}:\n\
                 stdout: {stdout}\nstderr: {stderr}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn a_json_syntax_error_names_the_file_line_and_column() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    // The unexpected `"` is on line 3, column 18.
    let text = "{\n  \"groups\": [\n    {\"name\": \"a\" \"max_workers\": 2}\n  ]\n}\n";
    let (code, _, stderr) = check_text(&sb, text);
    assert_eq!(code, Some(2), "{stderr}");
    let file = sb.config_path().display().to_string();
    assert!(
        stderr.contains(&format!("{file}:3:18"))
            || (stderr.contains(&file)
                && stderr.contains("line 3")
                && stderr.contains("column 18")),
        "the error does not name {file}, line 3 and column 18: {stderr}"
    );
    // `run` says the same, with exit 2.
    let (code, _, stderr) = parts(sb.run(&["run"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&file) && stderr.contains('3'), "{stderr}");
}

#[test]
fn the_config_is_c_then_supervisor_config_then_dot_supervisor_json() {
    let sb = Sandbox::new(&config_of(vec![group("from_c", 1)]));
    let env_dir = sb.path().join("envcfg");
    let cwd = sb.path().join("cwd");
    let empty = sb.path().join("empty");
    for d in [&env_dir, &cwd, &empty] {
        fs::create_dir(d).unwrap();
    }
    let mut env_cfg = config_of(vec![group("from_env", 1)]);
    env_cfg["state_dir"] = json!("st");
    fs::write(env_dir.join("env.json"), env_cfg.to_string()).unwrap();
    fs::write(
        cwd.join("supervisor.json"),
        config_of(vec![group("from_cwd", 1)]).to_string(),
    )
    .unwrap();
    // Relative to the current directory, as an operator would write it.
    let env = "../envcfg/env.json";
    let c = sb.config_path().display().to_string();

    let summary = |cmd: &mut Command| -> String {
        let (code, stdout, stderr) = parts(cmd.output().unwrap());
        assert_eq!(code, Some(0), "{cmd:?}: {stderr}");
        stdout
    };
    let got = summary(&mut bare(&cwd, Some(env), &["check", "-c", &c]));
    assert!(
        got.contains("from_c"),
        "-c wins over the environment: {got}"
    );
    let got = summary(&mut bare(&cwd, Some(env), &["check"]));
    assert!(
        got.contains("from_env"),
        "$SUPERVISOR_CONFIG wins over ./supervisor.json: {got}"
    );
    let got = summary(&mut bare(&cwd, None, &["check"]));
    assert!(got.contains("from_cwd"), "./supervisor.json: {got}");
    let (code, _, stderr) = parts(bare(&empty, None, &["check"]).output().unwrap());
    assert_eq!(code, Some(2), "no config anywhere: {stderr}");
    assert!(stderr.contains("supervisor.json"), "{stderr}");

    // The other verbs look the same way: a job submitted through the environment is in
    // the store next to that file (its state_dir, relative to its folder).
    let (code, stdout, stderr) = parts(
        bare(
            &cwd,
            Some(env),
            &["submit", "--group", "from_env", "--", "true"],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let id: i64 = stdout.trim().parse().unwrap();
    assert!(env_dir.join("st/jobs.db").exists(), "no store in envcfg/st");
    assert!(!cwd.join("st").exists() && !cwd.join("state").exists());
    let (code, stdout, stderr) = parts(
        bare(&cwd, Some(env), &["job", &id.to_string(), "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(0), "{stderr}");
    let job: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(job["group"], "from_env", "{job}");
    let (code, _, _) = parts(
        bare(&cwd, None, &["job", &id.to_string()])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(2), "./supervisor.json has a store of its own");
}

#[test]
fn run_finds_its_config_through_the_environment_and_the_current_directory() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let cfg_dir = sb.path().join("conf");
    let elsewhere = sb.path().join("elsewhere");
    fs::create_dir(&cfg_dir).unwrap();
    fs::create_dir(&elsewhere).unwrap();
    fs::write(
        cfg_dir.join("env.json"),
        config_of(vec![group("viaenv", 1)]).to_string(),
    )
    .unwrap();
    let env = "../conf/env.json";

    // Through $SUPERVISOR_CONFIG, from another directory.
    let out = bare(
        &elsewhere,
        Some(env),
        &["submit", "--group", "viaenv", "--", "true"],
    )
    .output()
    .unwrap();
    let (code, stdout, stderr) = parts(out);
    assert_eq!(code, Some(0), "{stderr}");
    let id: i64 = stdout.trim().parse().unwrap();
    let mut sv = spawn_run(
        bare(&elsewhere, Some(env), &["run", "--until-empty"]),
        cfg_dir.join("state/events.jsonl"),
        sb.path(),
    );
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(Duration::from_secs(2));
    let job = one_of_job(&sv.events(), "job_finished", id);
    assert_eq!(job["outcome"], "succeeded", "{job}");
    assert_eq!(job["group"], "viaenv", "{job}");
    assert!(!elsewhere.join("state").exists(), "state made in the cwd");
    drop(sv);

    // Through ./supervisor.json (the sandbox's own), with no -c and no environment.
    let id = sb.submit(&["--group", "a", "--", "true"]);
    let mut sv = spawn_run(
        bare(sb.path(), None, &["run", "--until-empty"]),
        sb.events_path(),
        sb.path(),
    );
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(Duration::from_secs(2));
    assert_eq!(sb.job(id)["state"], "succeeded");
}

#[test]
fn paths_are_relative_to_the_config_file_s_folder() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let conf = sb.path().join("conf");
    let defaults = sb.path().join("defaults");
    let cwd = sb.path().join("cwd");
    for d in [&conf, &defaults, &cwd] {
        fs::create_dir(d).unwrap();
    }
    let mut explicit = config_of(vec![group("a", 1)]);
    explicit["state_dir"] = json!("var/st");
    explicit["store"] = json!({"sqlite": {"path": "db/q.db"}});
    explicit["events"] = json!({"path": "ev/e.jsonl"});
    fs::write(conf.join("sv.json"), explicit.to_string()).unwrap();
    // Only what is required: every path takes its default.
    fs::write(
        defaults.join("sv.json"),
        json!({"groups": [{"name": "a", "max_workers": 1}]}).to_string(),
    )
    .unwrap();

    for (dir, state, store, events) in [
        (&conf, "var/st", "db/q.db", "ev/e.jsonl"),
        (&defaults, "state", "state/jobs.db", "state/events.jsonl"),
    ] {
        let name = dir.file_name().unwrap().to_str().unwrap();
        // `-c` relative to the current directory, which is not the config's folder.
        let c = format!("../{name}/sv.json");
        let out = bare(
            &cwd,
            None,
            &[
                "submit", "-c", &c, "--group", "a", "--", "sh", "-c", "echo hi",
            ],
        )
        .output()
        .unwrap();
        let (code, stdout, stderr) = parts(out);
        assert_eq!(code, Some(0), "{stderr}");
        let id: i64 = stdout.trim().parse().unwrap();
        assert!(dir.join(store).is_file(), "no store at {name}/{store}");
        let mut sv = spawn_run(
            bare(&cwd, None, &["run", "-c", &c, "--until-empty"]),
            dir.join(events),
            sb.path(),
        );
        assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
        sv.assert_nothing_left(Duration::from_secs(2));
        let finished = one_of_job(&sv.events(), "job_finished", id);
        assert_eq!(finished["outcome"], "succeeded", "{finished}");
        let log = dir.join(state).join(format!("logs/{id}.log"));
        assert_eq!(
            fs::read_to_string(&log).unwrap_or_default(),
            "hi\n",
            "the job's log is not {}",
            log.display()
        );
        let out = bare(&cwd, None, &["job", "-c", &c, &id.to_string(), "--json"])
            .output()
            .unwrap();
        let (code, stdout, stderr) = parts(out);
        assert_eq!(code, Some(0), "{stderr}");
        let job: Value = serde_json::from_str(&stdout).unwrap();
        let shown = cwd.join(job["log"].as_str().unwrap());
        assert_eq!(
            shown.canonicalize().unwrap(),
            log.canonicalize().unwrap(),
            "{job}"
        );
        let made: Vec<String> = fs::read_dir(&cwd)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(made.is_empty(), "made in the current directory: {made:?}");
    }
}

#[test]
fn group_defaults_4_workers_3_attempts_and_a_1s_retry_backoff() {
    // Group `d` sets nothing but its name; `f` only a fast retry backoff.
    let sb = Sandbox::new(&json!({"groups": [
        {"name": "d"},
        {"name": "f", "max_workers": 1,
         "retry_backoff": {"initial_s": 0.05, "max_s": 0.1, "jitter": 0}},
    ]}));
    let mut sv = sb.start(&[]);
    let ready = sv.wait_events(T, 5, |e| {
        e["event"] == "child_ready" && e["role"] == "worker"
    });
    let d_slots: BTreeSet<u64> = ready
        .iter()
        .filter(|e| e["group"] == "d")
        .map(|e| e["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(d_slots, BTreeSet::from([0, 1, 2, 3]), "{}", sv.dump());

    // max_attempts 3.
    let doomed = sb.submit(&["--group", "f", "--", "false"]);
    let job = sb.wait_job(doomed, &["dead"], T);
    assert_eq!(job["attempts"], 3, "{job}");
    let events = sv.events();
    assert_eq!(of_job(&events, "job_started", doomed).len(), 3);
    assert_eq!(one_of_job(&events, "job_dead", doomed)["attempts"], 3);

    // retry_backoff.initial_s 1: the first retry waits 1 s.
    let retried = sb.submit(&["--group", "d", "--max-attempts", "2", "--", "false"]);
    let scheduled = sv.wait_event(T, |e| {
        e["event"] == "job_retry_scheduled" && e["job_id"] == retried
    });
    assert_eq!(scheduled["delay_s"].as_f64(), Some(1.0), "{scheduled}");
    // Still 4 workers in `d`, no more.
    let st = sb.status_json();
    let d = st["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["group"] == "d")
        .count();
    assert_eq!(d, 4, "{st}");
    sv.stop_cleanly();
}

#[test]
fn default_restart_policy_gives_up_after_5_restarts_in_60s_and_exits_3() {
    let sb = Sandbox::new(&json!({"groups": [{"name": "a", "max_workers": 1}]}));
    let mut sv = sb.start(&[]);
    let mut delays = vec![];
    let mut last = 0;
    for n in 1..=6u64 {
        let ready = sv.wait_event_after(last, T, |e| {
            e["event"] == "child_ready" && e["role"] == "worker"
        });
        let pid = ready["pid"].as_u64().unwrap() as i32;
        last = seq(&ready);
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        if n == 6 {
            break;
        }
        let scheduled = sv.wait_event_after(last, T, |e| e["event"] == "child_restart_scheduled");
        assert_eq!(scheduled["restarts_in_period"], n, "{scheduled}");
        delays.push(scheduled["delay_s"].as_f64().unwrap());
        last = seq(&scheduled);
    }
    let gave_up = sv.wait_event_after(last, T, |e| e["event"] == "group_gave_up");
    assert_eq!(gave_up["group"], "a", "{gave_up}");
    assert_eq!(gave_up["action"], "exit", "{gave_up}");
    assert_eq!(gave_up["period_s"].as_f64(), Some(60.0), "{gave_up}");
    assert!(gave_up["restarts"].as_u64().unwrap() > 5, "{gave_up}");
    assert_eq!(sv.wait_exit(T), Some(3), "{}", sv.dump());
    assert_eq!(sv.events().last().unwrap()["code"], 3);
    sv.assert_nothing_left(Duration::from_secs(2));
    // backoff.initial_s 0.1 first; then growing, never past twice the last.
    assert_eq!(delays[0], 0.1, "{delays:?}");
    for w in delays.windows(2) {
        assert!(w[1] >= 0.1 && w[1] <= 2.0 * w[0] + 1e-9, "{delays:?}");
    }
}

#[test]
fn max_workers_0_starts_no_worker_and_its_jobs_wait() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1), group("z", 0)]));
    let mut sv = sb.start(&[]);
    let waiting = sb.submit(&["--group", "z", "--", "true"]);
    let other = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(other, &["succeeded"], T);
    // A later pass (a submit rings the grabber) leaves it alone too.
    let later = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(later, &["succeeded"], T);
    let job = sb.job(waiting);
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "{job}");
    let events = sv.events();
    assert!(
        !events
            .iter()
            .any(|e| e["group"] == "z" && e["event"] == "child_started"),
        "{}",
        sv.dump()
    );
    assert!(of_job(&events, "job_started", waiting).is_empty());
    sv.stop_cleanly();
}

// ----- jobs: routing, overrides, fields ----------------------------------------------

#[test]
fn match_needs_every_key_and_the_first_matching_group_wins() {
    let mut g1 = group("g1", 1);
    g1["match"] = json!({"arch": ["x86_64"], "os": ["linux"]});
    let mut g2 = group("g2", 1);
    g2["match"] = json!({"arch": ["x86_64", "i386"]});
    let mut g3 = group("g3", 1);
    g3["match"] = json!({"arch": ["x86_64"]});
    let sb = Sandbox::new(&config_of(vec![g1, g2, g3]));
    // Unroutable first: claims go in id order, so every later claim went past it.
    let none = sb.submit(&["--tag", "os=linux", "--", "true"]);
    let cases = [
        (
            sb.submit(&["--tag", "arch=x86_64", "--tag", "os=linux", "--", "true"]),
            "g1",
        ),
        (sb.submit(&["--tag", "arch=x86_64", "--", "true"]), "g2"),
        (
            sb.submit(&[
                "--tag",
                "arch=i386",
                "--tag",
                "os=linux",
                "--tag",
                "extra=1",
                "--",
                "true",
            ]),
            "g2",
        ),
        (sb.submit(&["--group", "g3", "--", "true"]), "g3"),
    ];
    let mut sv = sb.start(&[]);
    for (id, want) in cases {
        let job = sb.wait_job(id, &["succeeded"], T);
        assert_eq!(job["group"], want, "job {id}: {job}");
        assert_eq!(
            one_of_job(&sv.events(), "job_started", id)["group"],
            want,
            "job {id}"
        );
    }
    let job = sb.job(none);
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "{job}");
    sv.stop_cleanly();
}

#[test]
fn a_job_s_timeout_and_max_attempts_override_its_group_s() {
    let mut g = group("a", 4);
    g["job_timeout_s"] = json!(0.3);
    g["max_attempts"] = json!(1);
    let sb = Sandbox::new(&config_of(vec![g]));
    let mut sv = sb.start(&[]);
    // The group's timeout and attempts.
    let by_group = sb.submit(&["--group", "a", "--", "sleep", "30"]);
    // The job's own timeout, longer than the group's.
    let own_timeout = sb.submit(&["--group", "a", "--timeout", "10", "--", "sleep", "0.6"]);
    // The job's own attempts, more than the group's.
    let own_attempts = sb.submit(&["--group", "a", "--max-attempts", "2", "--", "false"]);
    // A timed-out attempt is retried while attempts remain.
    let timed_twice = sb.submit(&["--group", "a", "--max-attempts", "2", "--", "sleep", "30"]);

    let job = sb.wait_job(by_group, &["dead"], T);
    assert_eq!(job["attempts"], 1, "{job}");
    let job = sb.wait_job(own_timeout, &["succeeded"], T);
    assert_eq!(job["attempts"], 1, "{job}");
    let job = sb.wait_job(own_attempts, &["dead"], T);
    assert_eq!(job["attempts"], 2, "{job}");
    let job = sb.wait_job(timed_twice, &["dead"], T);
    assert_eq!(job["attempts"], 2, "{job}");

    let events = sv.events();
    let outcomes = |id: i64| -> Vec<Value> {
        of_job(&events, "job_finished", id)
            .iter()
            .map(|e| e["outcome"].clone())
            .collect()
    };
    assert_eq!(outcomes(by_group), [json!("timed_out")]);
    let d = one_of_job(&events, "job_finished", by_group)["duration_s"]
        .as_f64()
        .unwrap();
    assert!((0.25..3.0).contains(&d), "the group's 0.3 s timeout: {d}");
    assert_eq!(outcomes(own_timeout), [json!("succeeded")]);
    assert_eq!(outcomes(own_attempts), [json!("failed"), json!("failed")]);
    assert_eq!(
        outcomes(timed_twice),
        [json!("timed_out"), json!("timed_out")]
    );
    let retry = one_of_job(&events, "job_retry_scheduled", timed_twice);
    assert_eq!(retry["attempt"], 1, "{retry}");
    assert_eq!(one_of_job(&events, "job_dead", timed_twice)["attempts"], 2);
    sv.stop_cleanly();
}

#[test]
fn jitter_0_doubles_the_retry_delay_up_to_max_s_and_no_retry_comes_early() {
    let mut g = group("a", 1);
    g["retry_backoff"] = json!({"initial_s": 0.05, "max_s": 0.15, "jitter": 0});
    let sb = Sandbox::new(&config_of(vec![g]));
    let mut sv = sb.start(&[]);
    let id = sb.submit(&["--group", "a", "--max-attempts", "4", "--", "false"]);
    sb.wait_job(id, &["dead"], T);
    let events = sv.events();
    let retries = of_job(&events, "job_retry_scheduled", id);
    let delays: Vec<f64> = retries
        .iter()
        .map(|e| e["delay_s"].as_f64().unwrap())
        .collect();
    assert_eq!(delays, [0.05, 0.1, 0.15], "{retries:?}");
    let attempts: Vec<Value> = retries.iter().map(|e| e["attempt"].clone()).collect();
    assert_eq!(attempts, [json!(1), json!(2), json!(3)]);
    let finished = of_job(&events, "job_finished", id);
    let started = of_job(&events, "job_started", id);
    assert_eq!((finished.len(), started.len()), (4, 4));
    for (n, delay) in delays.iter().enumerate() {
        let gap = started[n + 1]["ts"].as_f64().unwrap() - finished[n]["ts"].as_f64().unwrap();
        // `ts` has millisecond resolution.
        assert!(
            gap >= delay - 0.002,
            "attempt {} started {gap:.3} s after attempt {} ended, before its {delay} s delay",
            n + 2,
            n + 1
        );
    }
    assert_eq!(one_of_job(&events, "job_dead", id)["attempts"], 4);
    sv.stop_cleanly();
}

#[test]
fn a_jobs_file_line_takes_every_field_of_a_job() {
    let mut tagged = group("tagged", 1);
    tagged["match"] = json!({"arch": ["x86_64"]});
    let sb = Sandbox::new(&config_of(vec![group("a", 1), tagged]));
    let work = sb.path().join("work");
    fs::create_dir(&work).unwrap();
    let lines = [
        json!({
            "command": ["sh", "-c", "echo \"$GREETING\"; pwd -P; exit 3"],
            "group": "a",
            "env": {"GREETING": "hello there"},
            "cwd": work.to_str().unwrap(),
            "timeout_s": 5,
            "max_attempts": 2,
            "key": "file-key",
        }),
        json!({"command": ["true"], "tags": {"arch": "x86_64"}}),
        json!({"command": ["sleep", "30"], "group": "a", "timeout_s": 0.2, "max_attempts": 1}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let file = sb.path().join("jobs.jsonl");
    fs::write(&file, text).unwrap();
    let (code, stdout, stderr) = parts(sb.run(&["submit", "--file", file.to_str().unwrap()]));
    assert_eq!(code, Some(0), "{stderr}");
    let ids: Vec<i64> = stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(ids.len(), 3, "one id a line: {stdout}");
    // The key is the job's: a second submit with it gives the same id.
    let again = sb.submit(&["--key", "file-key", "--group", "a", "--", "true"]);
    assert_eq!(again, ids[0]);

    let mut sv = sb.start(&[]);
    let job = sb.wait_job(ids[0], &["dead"], T);
    assert_eq!(job["attempts"], 2, "max_attempts 2: {job}");
    assert_eq!(job["exit_code"], 3, "{job}");
    let log = fs::read_to_string(job["log"].as_str().unwrap()).unwrap();
    let cwd = work.canonicalize().unwrap();
    let once = format!("hello there\n{}\n", cwd.display());
    assert!(log.ends_with(&once), "env and cwd: {log:?}");
    let job = sb.wait_job(ids[1], &["succeeded"], T);
    assert_eq!(job["group"], "tagged", "routed by its tags: {job}");
    sb.wait_job(ids[2], &["dead"], T);
    let finished = one_of_job(&sv.events(), "job_finished", ids[2]);
    assert_eq!(
        finished["outcome"], "timed_out",
        "timeout_s 0.2: {finished}"
    );
    sv.stop_cleanly();
}

#[test]
fn a_key_is_idempotent_through_a_jobs_file_and_free_again_once_canceled() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let first = sb.submit(&["--group", "a", "--key", "k", "--", "true"]);
    let file = sb.path().join("jobs.jsonl");
    fs::write(
        &file,
        format!(
            "{}\n{}\n",
            json!({"command": ["true"], "group": "a", "key": "k"}),
            json!({"command": ["true"], "group": "a", "key": "other"}),
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = parts(sb.run(&["submit", "--file", file.to_str().unwrap()]));
    assert_eq!(code, Some(0), "{stderr}");
    let ids: Vec<i64> = stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{stdout}");
    assert_eq!(ids[0], first, "the queued job's key gives its id");
    assert_ne!(ids[1], first);
    assert_eq!(jobs_json(&sb, None).len(), 2);
    // A canceled job is finished: its key makes a new job.
    assert_eq!(
        sb.run(&["cancel", &first.to_string()]).status.code(),
        Some(0)
    );
    let next = sb.submit(&["--group", "a", "--key", "k", "--", "true"]);
    assert_ne!(next, first);
    assert_eq!(sb.job(first)["state"], "canceled");
    assert_eq!(sb.job(next)["state"], "queued");
}

#[test]
fn job_and_jobs_json_have_the_contract_s_fields_in_every_state() {
    let sb = Sandbox::new(&config_of(vec![group("a", 2)]));
    let fields = JOB_FIELDS;
    let t0 = wall_now() - 1.0;
    let unroutable = sb.submit(&["--tag", "arch=none", "--", "true"]);
    let signalled = sb.submit(&[
        "--group",
        "a",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    let held = sb.submit_held("held", &["--group", "a"]);
    let log_of = |id: i64| sb.path().join(format!("state/logs/{id}.log"));

    // Queued.
    let q = sb.job(unroutable);
    assert_has(&q, &fields);
    assert_eq!(q["id"], unroutable);
    assert_eq!(q["state"], "queued");
    assert_eq!(q["group"], Value::Null, "no group named: {q}");
    assert_eq!(q["command"], json!(["true"]));
    assert_eq!(q["attempts"], 0);
    for k in ["exit_code", "signal", "started_at", "finished_at"] {
        assert_eq!(q[k], Value::Null, "{k} of a queued job: {q}");
    }
    let created = q["created_at"].as_f64().expect("created_at is a number");
    assert!(created >= t0 && created <= wall_now() + 1.0, "{q}");
    assert_eq!(
        sb.path().join(q["log"].as_str().expect("log is a string")),
        log_of(unroutable),
        "{q}"
    );

    let mut sv = sb.start(&[]);
    // Running.
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    held.pid();
    let r = sb.job(held.id);
    assert_has(&r, &fields);
    assert_eq!(r["state"], "running", "{r}");
    assert_eq!(r["group"], "a", "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
    let started = r["started_at"]
        .as_f64()
        .expect("started_at of a running job");
    assert!(started >= r["created_at"].as_f64().unwrap(), "{r}");
    assert_eq!(r["finished_at"], Value::Null, "{r}");
    assert_eq!(
        (&r["exit_code"], &r["signal"]),
        (&Value::Null, &Value::Null)
    );

    // Killed by a signal: the signal, no exit code.
    let s = sb.wait_job(signalled, &["dead"], T);
    assert_has(&s, &fields);
    assert_eq!(s["signal"], 9, "{s}");
    assert_eq!(s["exit_code"], Value::Null, "{s}");
    assert_eq!(s["attempts"], 1, "{s}");
    let (st, fin) = (
        s["started_at"].as_f64().unwrap(),
        s["finished_at"]
            .as_f64()
            .expect("finished_at of a dead job"),
    );
    assert!(s["created_at"].as_f64().unwrap() <= st && st <= fin, "{s}");

    // Exit code.
    held.release_with(0);
    let ok = sb.wait_job(held.id, &["succeeded"], T);
    assert_eq!(
        (&ok["exit_code"], &ok["signal"]),
        (&json!(0), &Value::Null),
        "{ok}"
    );
    assert!(ok["finished_at"].as_f64().unwrap() >= ok["started_at"].as_f64().unwrap());
    assert_eq!(sb.path().join(ok["log"].as_str().unwrap()), log_of(held.id));

    // `jobs --json` is the list of the same objects; `--state` filters.
    let all = jobs_json(&sb, None);
    let mut by_id: BTreeMap<i64, Value> = all
        .iter()
        .map(|j| (j["id"].as_i64().unwrap(), j.clone()))
        .collect();
    assert_eq!(by_id.len(), 3, "{all:?}");
    for id in [unroutable, signalled, held.id] {
        assert_eq!(by_id.remove(&id).unwrap(), sb.job(id), "job {id}");
    }
    for (state, want) in [
        ("queued", vec![unroutable]),
        ("dead", vec![signalled]),
        ("succeeded", vec![held.id]),
        ("running", vec![]),
    ] {
        let got: Vec<i64> = jobs_json(&sb, Some(state))
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect();
        assert_eq!(got, want, "jobs --state {state}");
    }
    sv.stop_cleanly();
}

#[test]
fn job_and_jobs_as_text_show_state_attempts_exit_times_and_log() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    let failed = sb.submit(&[
        "--group",
        "a",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    let killed = sb.submit(&[
        "--group",
        "a",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    sb.wait_job(failed, &["dead"], T);
    sb.wait_job(killed, &["dead"], T);
    sv.stop_cleanly();
    for (id, label, value) in [(failed, "exit", "7"), (killed, "signal", "9")] {
        let (code, text, stderr) = parts(sb.run(&["job", &id.to_string()]));
        assert_eq!(code, Some(0), "{stderr}");
        let j = sb.job(id);
        for want in [
            "dead",
            j["log"].as_str().unwrap(),
            "created",
            "started",
            "finished",
            "attempts",
        ] {
            assert!(
                text.contains(want),
                "`job {id}` does not show {want}:\n{text}"
            );
        }
        assert!(
            text.lines()
                .any(|l| l.contains(label) && l.split_whitespace().any(|w| w == value)),
            "`job {id}` does not show {label} {value}:\n{text}"
        );
    }
    let (code, text, stderr) = parts(sb.run(&["jobs"]));
    assert_eq!(code, Some(0), "{stderr}");
    for id in [failed, killed] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(&id.to_string()) && l.contains("dead")),
            "`jobs` has no row for {id}:\n{text}"
        );
    }
    let (code, text, _) = parts(sb.run(&["jobs", "--state", "queued"]));
    assert_eq!(code, Some(0));
    assert!(
        !text.lines().any(|l| l.contains("dead")),
        "`jobs --state queued` lists dead jobs:\n{text}"
    );
}

// ----- cancel --------------------------------------------------------------------------

#[test]
fn cancel_of_a_running_job_sends_sigterm_to_its_group_and_it_ends_canceled() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    let term = sb.path().join("got-term");
    let pid_file = sb.path().join("job.pid");
    // Exits 0 on SIGTERM: the outcome must still be `canceled`, not `succeeded`.
    let script = format!(
        "trap 'echo term > {term}; exit 0' TERM; echo $$ > {pid}; \
         while :; do sleep 0.05; done",
        term = term.display(),
        pid = pid_file.display()
    );
    let id = sb.submit(&["--group", "a", "--", "sh", "-c", &script]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == id);
    let pid = read_pid(&pid_file);
    let (code, _, stderr) = parts(sb.run(&["cancel", &id.to_string()]));
    assert_eq!(code, Some(0), "{stderr}");
    let finished = sv.wait_event(T, |e| e["event"] == "job_finished" && e["job_id"] == id);
    assert_eq!(finished["outcome"], "canceled", "{finished}");
    assert_eq!(
        fs::read_to_string(&term).unwrap_or_default(),
        "term\n",
        "the job was not given a SIGTERM first"
    );
    wait_until(T, || !alive(pid)).expect("the canceled job is still alive");
    let job = sb.wait_job(id, &["canceled"], T);
    assert_eq!(job["attempts"], 1, "{job}");
    // Terminal: canceling again changes nothing, and it never runs again.
    let (code, _, stderr) = parts(sb.run(&["cancel", &id.to_string()]));
    assert_eq!(code, Some(0), "{stderr}");
    let next = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(next, &["succeeded"], T);
    assert_eq!(sb.job(id)["state"], "canceled");
    assert_eq!(of_job(&sv.events(), "job_started", id).len(), 1);
    assert!(of_job(&sv.events(), "job_retry_scheduled", id).is_empty());
    sv.stop_cleanly();
}

// ----- events ------------------------------------------------------------------------

#[test]
fn events_carry_the_contract_s_fields_through_a_job_s_life() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let t0 = wall_now() - 1.0;
    let mut sv = sb.start(&[]);
    let ok = sb.submit(&["--group", "a", "--", "true"]);
    let code3 = sb.submit(&[
        "--group",
        "a",
        "--max-attempts",
        "2",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    let signalled = sb.submit(&[
        "--group",
        "a",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    let slow = sb.submit(&[
        "--group",
        "a",
        "--max-attempts",
        "1",
        "--timeout",
        "0.2",
        "--",
        "sleep",
        "30",
    ]);
    sb.wait_job(ok, &["succeeded"], T);
    for id in [code3, signalled, slow] {
        sb.wait_job(id, &["dead"], T);
    }
    sv.stop_cleanly();
    let events = sv.events();
    let by = |name: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event"] == name)
            .cloned()
            .collect()
    };

    // Every line: seq (rising by one), ts (wall clock seconds), event.
    for (n, e) in events.iter().enumerate() {
        assert_eq!(seq(e), n as u64 + 1, "{e}");
        let ts = e["ts"].as_f64().unwrap_or_else(|| panic!("no ts: {e}"));
        assert!(ts >= t0 && ts <= wall_now() + 1.0, "{e}");
        assert!(e["event"].is_string(), "{e}");
    }

    let started = by("supervisor_started");
    assert_eq!(started.len(), 1);
    let s = &started[0];
    assert_has(s, &["pid", "config", "version"]);
    assert_eq!(s["pid"], sv.pid(), "{s}");
    assert_eq!(
        Path::new(s["config"].as_str().expect("config is a path")),
        sb.config_path(),
        "{s}"
    );
    assert!(s["version"].as_str().is_some_and(|v| !v.is_empty()), "{s}");

    let snap = &events[0];
    assert_eq!(snap["event"], "snapshot", "{snap}");
    assert_eq!(snap["supervisor_pid"], sv.pid(), "{snap}");
    assert!(snap["children"].is_array(), "{snap}");

    // child_started: role, group, slot, pid; group and slot null for the grabber.
    let cs = by("child_started");
    assert_eq!(cs.len(), 2, "{cs:?}");
    let mut worker_pid = 0;
    for c in &cs {
        assert_has(c, &["role", "group", "slot", "pid"]);
        assert!(c["pid"].as_u64().is_some(), "{c}");
        match c["role"].as_str() {
            Some("grabber") => {
                assert!(present_null(c, "group") && present_null(c, "slot"), "{c}")
            }
            Some("worker") => {
                assert_eq!((&c["group"], &c["slot"]), (&json!("a"), &json!(0)), "{c}");
                worker_pid = c["pid"].as_u64().unwrap();
            }
            _ => panic!("role is grabber or worker: {c}"),
        }
    }

    // job_started: job_id, group, slot, worker_pid, attempt.
    for e in by("job_started") {
        assert_has(&e, &["job_id", "group", "slot", "worker_pid", "attempt"]);
        assert_eq!(e["group"], "a", "{e}");
        assert_eq!(e["slot"], 0, "{e}");
        assert_eq!(e["worker_pid"], worker_pid, "{e}");
        assert!(
            e["job_id"].as_i64().is_some() && e["attempt"].as_u64().is_some(),
            "{e}"
        );
    }
    // job_finished: job_id, group, attempt, outcome, exit_code or signal, duration_s.
    for e in by("job_finished") {
        assert_has(&e, &["job_id", "group", "attempt", "outcome", "duration_s"]);
        assert_eq!(e["group"], "a", "{e}");
        assert!(e["duration_s"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
    }
    let fin = one_of_job(&events, "job_finished", ok);
    assert_eq!(fin["outcome"], "succeeded", "{fin}");
    assert_eq!(fin["attempt"], 1, "{fin}");
    assert_eq!(code_or_signal(&fin, "exit_code"), (Some(0), None));
    let fins = of_job(&events, "job_finished", code3);
    assert_eq!(fins.len(), 2);
    for (n, f) in fins.iter().enumerate() {
        assert_eq!(f["outcome"], "failed", "{f}");
        assert_eq!(f["attempt"], n as u64 + 1, "{f}");
        assert_eq!(code_or_signal(f, "exit_code"), (Some(3), None));
    }
    let fin = one_of_job(&events, "job_finished", signalled);
    assert_eq!(fin["outcome"], "failed", "{fin}");
    assert_eq!(code_or_signal(&fin, "exit_code"), (None, Some(9)));
    let fin = one_of_job(&events, "job_finished", slow);
    assert_eq!(fin["outcome"], "timed_out", "{fin}");
    code_or_signal(&fin, "exit_code");
    let d = fin["duration_s"].as_f64().unwrap();
    assert!(
        (0.15..3.0).contains(&d),
        "duration_s {d} for a 0.2 s timeout"
    );

    // job_retry_scheduled: job_id, attempt, delay_s; job_dead: job_id, attempts.
    let r = one_of_job(&events, "job_retry_scheduled", code3);
    assert_has(&r, &["job_id", "attempt", "delay_s"]);
    assert_eq!(r["attempt"], 1, "{r}");
    assert_eq!(r["delay_s"].as_f64(), Some(0.05), "{r}");
    for (id, attempts) in [(code3, 2), (signalled, 1), (slow, 1)] {
        let d = one_of_job(&events, "job_dead", id);
        assert_has(&d, &["job_id", "attempts"]);
        assert_eq!(d["attempts"], attempts, "{d}");
    }

    // The stop: supervisor_stopping (reason), child_exited for each child, then
    // supervisor_stopped (code) last.
    let stopping = by("supervisor_stopping");
    assert_eq!(stopping.len(), 1);
    assert!(stopping[0]["reason"].is_string(), "{}", stopping[0]);
    let exits = by("child_exited");
    assert_eq!(exits.len(), 2, "{exits:?}");
    for e in &exits {
        assert_has(e, &["role", "group", "slot", "pid", "expected"]);
        assert_eq!(e["expected"], true, "{e}");
        assert_eq!(code_or_signal(e, "code"), (Some(0), None), "{e}");
        assert!(absent_or_null(e, "job_id"), "an idle child's exit: {e}");
        if e["role"] == "grabber" {
            assert!(present_null(e, "group") && present_null(e, "slot"), "{e}");
        }
    }
    let last = events.last().unwrap();
    assert_eq!(last["event"], "supervisor_stopped", "{last}");
    assert_eq!(last["code"], 0, "{last}");
}

#[test]
fn a_worker_killed_under_its_job_loses_the_attempt_at_once_and_the_job_reruns() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &["--group", "a", "--max-attempts", "2"]);
    let started = sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    let worker = started["worker_pid"].as_u64().unwrap() as u32;
    let job_pid = held.pid();
    let t_kill = wall_now();
    kill(Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();

    let exited = sv.wait_event(T, |e| e["event"] == "child_exited" && e["pid"] == worker);
    assert_has(
        &exited,
        &["role", "group", "slot", "pid", "expected", "job_id"],
    );
    assert_eq!(exited["role"], "worker", "{exited}");
    assert_eq!(
        (&exited["group"], &exited["slot"]),
        (&json!("a"), &json!(0))
    );
    assert_eq!(exited["expected"], false, "{exited}");
    assert_eq!(code_or_signal(&exited, "code"), (None, Some(9)), "{exited}");
    assert_eq!(
        exited["job_id"], held.id,
        "a busy worker's exit names its job"
    );

    let lost = sv.wait_event(T, |e| {
        e["event"] == "job_finished" && e["job_id"] == held.id
    });
    assert_eq!(lost["outcome"], "lost", "{lost}");
    assert_eq!(lost["attempt"], 1, "{lost}");
    assert_has(
        &lost,
        &["job_id", "group", "attempt", "outcome", "duration_s"],
    );
    let known = lost["ts"].as_f64().unwrap() - t_kill;
    assert!(known < 2.0, "lost {known:.2} s after the kill: not at once");
    // No job process outlives its worker.
    wait_until(Duration::from_secs(2), || !alive(job_pid))
        .unwrap_or_else(|_| panic!("the job {job_pid} outlived its killed worker"));

    let restart = sv.wait_event(T, |e| {
        e["event"] == "child_restart_scheduled" && e["role"] == "worker"
    });
    assert_has(
        &restart,
        &["role", "group", "slot", "delay_s", "restarts_in_period"],
    );
    assert_eq!(
        (&restart["group"], &restart["slot"]),
        (&json!("a"), &json!(0))
    );
    assert_eq!(restart["restarts_in_period"], 1, "{restart}");
    assert!(restart["delay_s"].as_f64().is_some(), "{restart}");

    // A lost attempt with attempts left goes back to the queue and runs again.
    let again = sv.wait_event(T, |e| {
        e["event"] == "job_started" && e["job_id"] == held.id && e["attempt"] == 2
    });
    assert_ne!(again["worker_pid"], worker);
    // ... after its retry_backoff (0.05 s).
    let retry = one_of_job(&sv.events(), "job_retry_scheduled", held.id);
    assert_eq!(retry["attempt"], 1, "{retry}");
    let delay = retry["delay_s"].as_f64().unwrap();
    assert_eq!(delay, 0.05, "{retry}");
    let gap = again["ts"].as_f64().unwrap() - lost["ts"].as_f64().unwrap();
    assert!(gap >= delay - 0.002, "rerun {gap:.3} s after the loss");
    held.release();
    let job = sb.wait_job(held.id, &["succeeded"], T);
    assert_eq!(job["attempts"], 2, "{job}");
    sv.stop_cleanly();
}

#[test]
fn a_lost_last_attempt_makes_the_job_dead() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &["--group", "a", "--max-attempts", "1"]);
    let started = sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    held.pid();
    let worker = started["worker_pid"].as_u64().unwrap() as i32;
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let dead = sv.wait_event(T, |e| e["event"] == "job_dead" && e["job_id"] == held.id);
    assert_eq!(dead["attempts"], 1, "{dead}");
    let job = sb.wait_job(held.id, &["dead"], T);
    assert_eq!(job["attempts"], 1, "{job}");
    let events = sv.events();
    assert_eq!(
        one_of_job(&events, "job_finished", held.id)["outcome"],
        "lost"
    );
    assert!(of_job(&events, "job_retry_scheduled", held.id).is_empty());
    held.release();
    sv.stop_cleanly();
}

#[test]
fn a_silent_busy_worker_is_killed_as_a_crash_and_its_job_lost() {
    let mut cfg = config_of(vec![group("a", 1)]);
    cfg["heartbeat"] = json!({"interval_s": 0.2, "timeout_s": 1});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &["--group", "a", "--max-attempts", "2"]);
    let started = sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    let job_pid = held.pid();
    let worker = started["worker_pid"].as_u64().unwrap() as u32;
    kill(Pid::from_raw(worker as i32), Signal::SIGSTOP).unwrap();

    let exited = sv.wait_event(T, |e| e["event"] == "child_exited" && e["pid"] == worker);
    assert_eq!(exited["expected"], false, "{exited}");
    assert_eq!(exited["job_id"], held.id, "{exited}");
    let lost = sv.wait_event(T, |e| {
        e["event"] == "job_finished" && e["job_id"] == held.id
    });
    assert_eq!(lost["outcome"], "lost", "{lost}");
    sv.wait_event(T, |e| {
        e["event"] == "child_restart_scheduled" && e["slot"] == 0 && e["group"] == "a"
    });
    wait_until(Duration::from_secs(2), || !alive(job_pid))
        .unwrap_or_else(|_| panic!("the job {job_pid} outlived its killed worker"));
    sv.wait_event(T, |e| {
        e["event"] == "job_started" && e["job_id"] == held.id && e["attempt"] == 2
    });
    held.release();
    let job = sb.wait_job(held.id, &["succeeded"], T);
    assert_eq!(job["attempts"], 2, "{job}");
    sv.stop_cleanly();
}

#[test]
fn the_grabber_s_events_have_null_group_and_slot() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    let ready = sv.wait_event(T, |e| e["event"] == "child_ready" && e["role"] == "grabber");
    let pid = ready["pid"].as_u64().unwrap() as u32;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let exited = sv.wait_event(T, |e| e["event"] == "child_exited" && e["pid"] == pid);
    let scheduled =
        sv.wait_event_after(seq(&exited), T, |e| e["event"] == "child_restart_scheduled");
    let restarted = sv.wait_event_after(seq(&scheduled), T, |e| e["event"] == "child_started");
    for e in [&exited, &scheduled, &restarted] {
        assert_eq!(e["role"], "grabber", "{e}");
        assert!(
            present_null(e, "group") && present_null(e, "slot"),
            "group and slot are null for the grabber: {e}"
        );
    }
    assert_eq!(code_or_signal(&exited, "code"), (None, Some(9)));
    assert!(absent_or_null(&exited, "job_id"), "{exited}");
    // And the new grabber claims.
    let id = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(id, &["succeeded"], T);
    sv.stop_cleanly();
}

#[test]
fn seq_goes_on_across_restarts_and_each_file_begins_with_a_snapshot() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    // A clean stop, then a kill, then a clean stop.
    for round in 0..3 {
        let mut sv = sb.start(&[]);
        sv.wait_started();
        let id = sb.submit(&["--group", "a", "--", "true"]);
        sb.wait_job(id, &["succeeded"], T);
        if round == 1 {
            sv.signal(Signal::SIGKILL);
            assert_eq!(sv.wait_exit(T), None);
            sv.assert_nothing_left(Duration::from_secs(2));
        } else {
            sv.stop_cleanly();
        }
    }
    let files = all_event_files(&sb.events_path());
    let mut all = vec![];
    for (path, events) in &files {
        if events.is_empty() {
            continue;
        }
        assert_eq!(
            events[0]["event"],
            "snapshot",
            "{} does not begin with a snapshot",
            path.display()
        );
        all.extend(events.iter().cloned());
    }
    let seqs: Vec<u64> = all.iter().map(seq).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "seq does not rise by one across the three runs");
    let starts = all
        .iter()
        .filter(|e| e["event"] == "supervisor_started")
        .count();
    assert_eq!(starts, 3, "every run's events were kept");
}

#[test]
fn events_keep_defaults_to_5_rotated_files_and_seq_goes_on() {
    // Each start rotates the previous run's file away; `keep` is left at its default.
    let sb = Sandbox::new(&config_of(vec![group("a", 0)]));
    for _ in 0..7 {
        let mut sv = sb.start(&["--until-empty"]);
        sv.wait_started();
        assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
        sv.assert_nothing_left(Duration::from_secs(2));
    }
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", sb.events_path().display()));
    for n in 1..=5 {
        assert!(rotated(n).exists(), "no {}", rotated(n).display());
    }
    assert!(!rotated(6).exists(), "more than 5 rotated files are kept");
    let files = all_event_files(&sb.events_path());
    let seqs: Vec<u64> = files
        .iter()
        .flat_map(|(_, evs)| evs.iter().map(seq))
        .collect();
    let first = seqs[0];
    assert!(first > 1, "the oldest run's file was not dropped");
    let want: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, want, "seq does not rise by one across the runs");
}

// ----- processes ---------------------------------------------------------------------

#[test]
fn children_are_the_supervisor_s_own_executable_and_jobs_their_own_group() {
    let sb = Sandbox::new(&config_of(vec![group("a", 2)]));
    let mut sv = sb.start(&[]);
    let ready = sv.wait_events(T, 3, |e| e["event"] == "child_ready");
    let exe = |pid: u32| {
        let m = fs::metadata(format!("/proc/{pid}/exe")).unwrap();
        (m.dev(), m.ino())
    };
    let own = exe(sv.pid());
    for e in &ready {
        let pid = e["pid"].as_u64().unwrap() as u32;
        assert_eq!(exe(pid), own, "child {pid} runs another executable: {e}");
        let (_, ppid, _) = stat_of(pid).unwrap();
        assert_eq!(ppid, sv.pid(), "child {pid} is not the supervisor's: {e}");
    }
    // A job: its own OS process, in a process group of its own (not a child's).
    let held = sb.submit_held("held", &["--group", "a"]);
    let started = sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    let pid = held.pid();
    let worker = started["worker_pid"].as_u64().unwrap() as u32;
    let (_, _, pgrp) = stat_of(pid).unwrap();
    assert_eq!(pgrp, pid, "the job leads its own process group");
    assert_ne!(pid, worker);
    assert_ne!(Some(pgrp), stat_of(worker).map(|s| s.2));
    held.release();
    sb.wait_job(held.id, &["succeeded"], T);
    sv.stop_cleanly();
}

#[test]
fn a_pool_runs_at_most_max_workers_jobs_at_once_one_per_worker() {
    let sb = Sandbox::new(&config_of(vec![group("a", 2)]));
    let mut sv = sb.start(&[]);
    let held: Vec<Held> = (0..4)
        .map(|i| sb.submit_held(&format!("h{i}"), &["--group", "a"]))
        .collect();
    // Two start; the other two wait for a free worker.
    sv.wait_events(T, 2, |e| e["event"] == "job_started");
    let running = || -> Vec<i64> {
        jobs_json(&sb, Some("running"))
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };
    let first = running();
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(jobs_json(&sb, Some("queued")).len(), 2);
    let workers: BTreeSet<u64> = sv
        .events()
        .iter()
        .filter(|e| e["event"] == "job_started")
        .map(|e| e["worker_pid"].as_u64().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "one job per worker: {}", sv.dump());
    // Each end lets exactly one more start.
    for (n, h) in held.iter().filter(|h| first.contains(&h.id)).enumerate() {
        h.release();
        sb.wait_job(h.id, &["succeeded"], T);
        sv.wait_events(T, 3 + n, |e| e["event"] == "job_started");
        assert!(running().len() <= 2, "more than max_workers jobs running");
    }
    for h in &held {
        h.release();
    }
    for h in &held {
        sb.wait_job(h.id, &["succeeded"], T);
    }
    let st = sb.status_json();
    assert_eq!(st["jobs"]["succeeded"], 4, "{st}");
    sv.stop_cleanly();
}

// ----- stopping ----------------------------------------------------------------------

#[test]
fn sigint_stops_gracefully_with_exit_0() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    sv.wait_events(T, 2, |e| e["event"] == "child_ready");
    sv.signal(Signal::SIGINT);
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    let events = sv.events();
    let stopping = events
        .iter()
        .find(|e| e["event"] == "supervisor_stopping")
        .expect("supervisor_stopping");
    assert_eq!(stopping["reason"], "SIGINT", "{stopping}");
    let last = events.last().unwrap();
    assert_eq!(
        (&last["event"], &last["code"]),
        (&json!("supervisor_stopped"), &json!(0))
    );
    sv.assert_nothing_left(Duration::from_secs(2));
}

#[test]
fn sigterm_stops_claiming_and_lets_the_running_job_finish() {
    // shutdown_grace_s is left at its default (30 s).
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let mut sv = sb.start(&[]);
    let held = sb.submit_held("held", &["--group", "a"]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    let pid = held.pid();
    let waiting = sb.submit(&["--group", "a", "--", "true"]);
    sv.signal(Signal::SIGTERM);
    let stopping = sv.wait_event(T, |e| e["event"] == "supervisor_stopping");
    // The grabber's expected exit: claiming has stopped.
    sv.wait_event_after(seq(&stopping), T, |e| {
        e["event"] == "child_exited" && e["role"] == "grabber"
    });
    assert!(alive(pid), "the running job was not let finish");
    assert!(sv.child.as_mut().unwrap().try_wait().unwrap().is_none());
    held.release();
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(Duration::from_secs(2));
    let job = sb.job(held.id);
    assert_eq!(
        job["state"], "succeeded",
        "it finished within the grace: {job}"
    );
    let w = sb.job(waiting);
    assert_eq!(w["state"], "queued", "claimed while stopping: {w}");
    assert_eq!(w["attempts"], 0, "{w}");
    assert!(of_job(&sv.events(), "job_started", waiting).is_empty());
}

#[test]
fn until_empty_waits_for_retries_and_exits_0_at_once_when_nothing_is_left() {
    let mut g = group("a", 1);
    g["retry_backoff"] = json!({"initial_s": 0.2, "max_s": 0.2, "jitter": 0});
    let sb = Sandbox::new(&config_of(vec![g]));
    let flaky = sb.submit(&[
        "--group",
        "a",
        "--max-attempts",
        "3",
        "--",
        "sh",
        "-c",
        "n=$(cat count 2>/dev/null || echo 0); n=$((n + 1)); echo $n > count; [ $n -ge 3 ]",
    ]);
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(Duration::from_secs(2));
    let job = sb.job(flaky);
    assert_eq!(
        job["state"], "succeeded",
        "exited during a retry backoff: {job}"
    );
    assert_eq!(job["attempts"], 3, "{job}");
    drop(sv);

    // Nothing queued: it exits at once.
    let t = Instant::now();
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    sv.assert_nothing_left(Duration::from_secs(2));
}

// ----- the store ---------------------------------------------------------------------

/// `store: {"postgres": {"url": ...}}` is part of the contract. Needs a server: run under
/// `scripts/with-postgres` (which sets `SUPERVISOR_TEST_POSTGRES_URL`).
#[test]
#[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run --run-ignored only"]
fn a_postgres_store_runs_jobs() {
    let db = supervisor_store::testing::PgDatabase::new();
    let mut cfg = config_of(vec![group("a", 1)]);
    cfg["store"] = json!({"postgres": {"url": db.url}});
    let sb = Sandbox::new(&cfg);
    let id = sb.submit(&["--group", "a", "--", "true"]);
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(Duration::from_secs(2));
    assert_eq!(sb.job(id)["state"], "succeeded");
}
