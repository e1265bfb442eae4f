//! Jobs end to end: routing, the job's process (environment, logs, descriptors, process
//! group), timeouts, cancel, retries, idempotent keys, batch and CLI validation, workers
//! and the supervisor killed under load, graceful stop, `--until-empty`, the doorbell and
//! `status` counts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(10);

/// The same, taking jobs whose tag `arch` is one of `arches`.
fn arch_group(name: &str, workers: u32, arches: &[&str]) -> Value {
    let mut g = group(name, workers);
    g["match"] = json!({ "arch": arches });
    g
}

/// Events of kind `name` about job `id`.
fn of_job(events: &[Value], name: &str, id: i64) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event"] == name && e["job_id"] == id)
        .cloned()
        .collect()
}

/// `jobs [--state S] --json`.
fn jobs(sb: &Sandbox, state: Option<&str>) -> Vec<Value> {
    let mut args = vec!["jobs", "--json"];
    if let Some(s) = state {
        args.extend(["--state", s]);
    }
    let out = sb.run(&args);
    assert!(
        out.status.success(),
        "jobs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A command that is expected to fail: (exit code, stdout, stderr).
fn run_fails(sb: &Sandbox, args: &[&str]) -> (Option<i32>, String, String) {
    let out = sb.run(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The pids a job wrote, one or more on a line, to `path` (waits for the line).
fn read_pids(path: &Path) -> Vec<u32> {
    let mut pids = vec![];
    wait_until(T, || {
        let text = fs::read_to_string(path).unwrap_or_default();
        if !text.ends_with('\n') {
            return false;
        }
        pids = text
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        !pids.is_empty()
    })
    .unwrap_or_else(|_| panic!("{} was never written", path.display()));
    pids
}

fn assert_gone(pids: &[u32], what: &str) {
    let ok = wait_until(T, || pids.iter().all(|&p| !alive(p)));
    assert!(ok.is_ok(), "{what}: still alive: {pids:?}");
}

/// A JSON-lines file of `n` jobs running `command` in `group`.
fn jobs_file(sb: &Sandbox, name: &str, n: usize, group: &str, command: &[&str]) -> String {
    let line = json!({"command": command, "group": group}).to_string();
    let text: String = (0..n).map(|_| format!("{line}\n")).collect();
    let path = sb.path().join(name);
    fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// `submit --file`: the ids it printed.
fn submit_file(sb: &Sandbox, file: &str) -> Vec<i64> {
    let out = sb.run(&["submit", "--file", file]);
    assert!(
        out.status.success(),
        "submit --file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

#[test]
fn routing_by_group_and_by_tags() {
    let sb = Sandbox::new(&config_of(vec![
        arch_group("x86", 1, &["x86_64", "i386"]),
        arch_group("arm", 1, &["aarch64"]),
        group("plain", 1),
    ]));
    let sv = sb.start(&[]);
    // The unroutable ones first: claims go in id order, so every later claim passed them.
    let mips = sb.submit(&["--tag", "arch=mips", "--", "true"]);
    let nowhere = sb.submit(&["--group", "nosuch", "--", "true"]);
    let i386 = sb.submit(&["--tag", "arch=i386", "--", "true"]);
    let arm = sb.submit(&["--tag", "arch=aarch64", "--", "true"]);
    let plain = sb.submit(&["--group", "plain", "--", "true"]);
    for (id, g) in [(i386, "x86"), (arm, "arm"), (plain, "plain")] {
        let job = sb.wait_job(id, &["succeeded"], T);
        assert_eq!(job["group"], g, "job {id}: {job}");
        let started = of_job(&sv.events(), "job_started", id);
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0]["group"], g);
    }
    // A later pass of the grabber (a submit rings it) still leaves them alone.
    let last = sb.submit(&["--group", "plain", "--", "true"]);
    sb.wait_job(last, &["succeeded"], T);
    for id in [mips, nowhere] {
        let job = sb.job(id);
        assert_eq!(job["state"], "queued", "job {id}: {job}");
        assert_eq!(job["attempts"], 0, "job {id}: {job}");
        assert!(of_job(&sv.events(), "job_started", id).is_empty());
    }
    assert_eq!(sb.job(nowhere)["group"], "nosuch");
}

#[test]
fn logs_and_environment() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let _sv = sb.start(&[]);
    fs::create_dir(sb.path().join("work dir")).unwrap();
    let id = sb.submit(&[
        "--group",
        "a",
        "--env",
        "GREETING=hello world",
        "--cwd",
        "work dir",
        "--",
        "sh",
        "-c",
        "echo id=$SUPERVISOR_JOB_ID attempt=$SUPERVISOR_ATTEMPT greeting=$GREETING; \
         echo cwd=$(pwd -P); echo to-stderr >&2",
    ]);
    let job = sb.wait_job(id, &["succeeded"], T);
    let log = job["log"].as_str().unwrap();
    let state_dir = sb.path().join("state").canonicalize().unwrap();
    assert_eq!(
        Path::new(log).canonicalize().unwrap(),
        state_dir.join("logs").join(format!("{id}.log"))
    );
    let text = fs::read_to_string(log).unwrap();
    let cwd = sb.path().join("work dir").canonicalize().unwrap();
    assert_eq!(
        text,
        format!(
            "id={id} attempt=1 greeting=hello world\ncwd={}\nto-stderr\n",
            cwd.display()
        )
    );
}

#[test]
fn fd_and_stdin_hygiene() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let _sv = sb.start(&[]);
    let id = sb.submit(&[
        "--group",
        "a",
        "--",
        "sh",
        "-c",
        // `ls` of the shell's own fds, straight to the log: a `$(...)` or a pipe would
        // show the shell's end of it.
        "echo fds:; ls /proc/$$/fd; echo end; \
         echo stdin=$(readlink /proc/$$/fd/0); \
         echo pid=$$ pgid=$(cut -d' ' -f5 /proc/$$/stat)",
    ]);
    let job = sb.wait_job(id, &["succeeded"], T);
    let text = fs::read_to_string(job["log"].as_str().unwrap()).unwrap();
    let field = |name: &str| -> String {
        let prefix = format!("{name}=");
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} in the log: {text}"))
            .to_string()
    };
    let fds: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "fds:")
        .skip(1)
        .take_while(|l| *l != "end")
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "log: {text}");
    assert_eq!(field("stdin"), "/dev/null", "log: {text}");
    assert_eq!(
        field("pgid"),
        field("pid"),
        "the job leads its own process group; log: {text}"
    );
}

#[test]
fn timeout_kills_a_job_that_forked_a_background_child() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let sv = sb.start(&[]);
    let id = sb.submit(&[
        "--group",
        "a",
        "--timeout",
        "0.5",
        "--max-attempts",
        "1",
        "--",
        "sh",
        "-c",
        "sleep 60 & echo $! > bg.pid; wait",
    ]);
    let bg = read_pids(&sb.path().join("bg.pid"));
    assert!(alive(bg[0]), "the background sleep runs");
    let finished = sv.wait_event(T, |e| e["event"] == "job_finished" && e["job_id"] == id);
    assert_eq!(finished["outcome"], "timed_out", "{finished}");
    let dur = finished["duration_s"].as_f64().unwrap();
    assert!((0.4..5.0).contains(&dur), "duration_s {dur}");
    let job = sb.wait_job(id, &["dead"], T);
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(of_job(&sv.events(), "job_dead", id).len(), 1);
    assert_gone(&bg, "the job's background child");
}

#[test]
fn cancel_a_queued_job_and_a_running_job() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let sv = sb.start(&[]);
    let running = sb.submit(&[
        "--group",
        "a",
        "--",
        "sh",
        "-c",
        "sleep 30 & echo $$ $! > running.pids; wait",
    ]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == running);
    let pids = read_pids(&sb.path().join("running.pids"));
    let queued = sb.submit(&["--group", "a", "--", "touch", "queued-ran"]);
    assert_eq!(sb.job(queued)["state"], "queued");

    let out = sb.run(&["cancel", &queued.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sb.job(queued)["state"], "canceled", "canceled at once");

    let out = sb.run(&["cancel", &running.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let finished = sv.wait_event(T, |e| {
        e["event"] == "job_finished" && e["job_id"] == running
    });
    assert_eq!(finished["outcome"], "canceled", "{finished}");
    let job = sb.wait_job(running, &["canceled"], T);
    assert_eq!(job["attempts"], 1, "{job}");
    assert_gone(&pids, "the canceled job's process group");
    // The worker is free again, and the canceled queued job never ran.
    let next = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(next, &["succeeded"], T);
    assert!(of_job(&sv.events(), "job_started", queued).is_empty());
    assert!(!sb.path().join("queued-ran").exists());
    assert_eq!(sb.job(queued)["state"], "canceled");

    let (code, _, stderr) = run_fails(&sb, &["cancel", "999999"]);
    assert_eq!(code, Some(2), "cancel of an unknown id; stderr: {stderr}");
    assert!(stderr.contains("999999"), "{stderr}");
}

#[test]
fn retries_then_dead() {
    let sb = Sandbox::new(&config_of(vec![group("a", 2)]));
    let sv = sb.start(&[]);
    let doomed = sb.submit(&["--group", "a", "--max-attempts", "3", "--", "false"]);
    fs::create_dir(sb.path().join("flaky")).unwrap();
    let flaky = sb.submit(&[
        "--group",
        "a",
        "--max-attempts",
        "3",
        "--cwd",
        "flaky",
        "--",
        "sh",
        "-c",
        "n=$(cat count 2>/dev/null || echo 0); n=$((n + 1)); echo $n > count; \
         echo attempt=$SUPERVISOR_ATTEMPT n=$n; [ $n -ge 3 ]",
    ]);
    sv.wait_event(T, |e| e["event"] == "job_dead" && e["job_id"] == doomed);
    let job = sb.wait_job(doomed, &["dead"], T);
    assert_eq!(job["attempts"], 3, "{job}");
    assert_eq!(job["exit_code"], 1, "{job}");
    let events = sv.events();
    let attempts: Vec<Value> = of_job(&events, "job_started", doomed)
        .iter()
        .map(|e| e["attempt"].clone())
        .collect();
    assert_eq!(attempts, [json!(1), json!(2), json!(3)]);
    let retries = of_job(&events, "job_retry_scheduled", doomed);
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert_eq!(retries[0]["attempt"], 1);
    assert_eq!(retries[1]["attempt"], 2);
    let dead = of_job(&events, "job_dead", doomed);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["attempts"], 3);
    let outcomes: Vec<Value> = of_job(&events, "job_finished", doomed)
        .iter()
        .map(|e| e["outcome"].clone())
        .collect();
    assert_eq!(outcomes, vec![json!("failed"); 3]);

    let job = sb.wait_job(flaky, &["succeeded"], T);
    assert_eq!(job["attempts"], 3, "{job}");
    let log = fs::read_to_string(job["log"].as_str().unwrap()).unwrap();
    assert_eq!(log, "attempt=1 n=1\nattempt=2 n=2\nattempt=3 n=3\n");
    let events = sv.events();
    assert_eq!(of_job(&events, "job_retry_scheduled", flaky).len(), 2);
    assert!(of_job(&events, "job_dead", flaky).is_empty());
}

#[test]
fn idempotent_keys() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let hold = [
        "--group",
        "a",
        "--key",
        "nightly",
        "--",
        "sh",
        "-c",
        "while [ ! -e release ]; do sleep 0.02; done",
    ];
    // Queued (no supervisor yet): the same key gives the same id.
    let first = sb.submit(&hold);
    assert_eq!(sb.submit(&hold), first);
    assert_eq!(
        sb.submit(&["--key", "nightly", "--group", "a", "--", "true"]),
        first,
        "the key alone decides, not the command"
    );
    assert_eq!(jobs(&sb, None).len(), 1);
    // Running: still the same id.
    let sv = sb.start(&[]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == first);
    assert_eq!(sb.job(first)["state"], "running");
    assert_eq!(sb.submit(&hold), first);
    // Another key is another job.
    let other = sb.submit(&["--group", "a", "--key", "weekly", "--", "true"]);
    assert_ne!(other, first);
    // Finished: the key gives a new job.
    fs::write(sb.path().join("release"), "").unwrap();
    sb.wait_job(first, &["succeeded"], T);
    let again = sb.submit(&hold);
    assert_ne!(again, first);
    assert!(again > other, "{again} is new");
    assert_eq!(jobs(&sb, None).len(), 3);
    sb.wait_job(again, &["succeeded"], T);
}

#[test]
fn a_partly_bad_file_queues_nothing() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let bad = sb.path().join("bad.jsonl");
    fs::write(
        &bad,
        concat!(
            r#"{"command": ["true"], "group": "a"}"#,
            "\n",
            r#"{"command": ["true"], "colour": "red"}"#,
            "\n",
            r#"{"command": ["echo", "ok"]}"#,
            "\n",
            r#"{"command": []}"#,
            "\n",
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_fails(&sb, &["submit", "--file", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert_eq!(stdout, "", "no id is printed");
    assert!(
        stderr.contains("line 2") && stderr.contains("colour"),
        "{stderr}"
    );
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(!stderr.contains("line 1") && !stderr.contains("line 3"));
    assert_eq!(jobs(&sb, None), Vec::<Value>::new());

    // A job the store refuses (after a job that does not exist) is named by its line.
    fs::write(
        &bad,
        "{\"command\": [\"true\"]}\n\n{\"command\": [\"true\"], \"after\": [99999]}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_fails(&sb, &["submit", "--file", bad.to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (Some(2), ""), "stderr: {stderr}");
    assert!(
        stderr.contains("line 3: after: job 99999 does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.jsonl"), "{stderr}");
    assert_eq!(jobs(&sb, None), Vec::<Value>::new());
    // A line must be a job object: an array would fill the fields in order.
    fs::write(&bad, "[[\"echo\", \"arr\"], \"a\"]\n{\"command\": [\"true\"], \"tags\": {\"k\": \"1\", \"k\": \"2\"}}\n").unwrap();
    let (code, stdout, stderr) = run_fails(&sb, &["submit", "--file", bad.to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (Some(2), ""), "stderr: {stderr}");
    assert!(
        stderr.contains("line 1: expected a job object") && stderr.contains("line 2: invalid JSON"),
        "{stderr}"
    );
    assert_eq!(jobs(&sb, None), Vec::<Value>::new());

    let good = sb.path().join("good.jsonl");
    fs::write(
        &good,
        concat!(
            r#"{"command": ["true"], "group": "a"}"#,
            "\n\n",
            r#"{"command": ["sh", "-c", "exit 0"], "tags": {"arch": "x"}, "max_attempts": 2}"#,
            "\n",
            r#"{"command": ["echo", "3"], "group": "a", "key": "k", "timeout_s": 5}"#,
            "\n",
        ),
    )
    .unwrap();
    let ids = submit_file(&sb, good.to_str().unwrap());
    assert_eq!(ids.len(), 3, "{ids:?}");
    let listed = jobs(&sb, None);
    let listed_ids: Vec<i64> = listed.iter().map(|j| j["id"].as_i64().unwrap()).collect();
    assert_eq!(listed_ids, ids);
    assert!(listed.iter().all(|j| j["state"] == "queued"));
    assert_eq!(listed[2]["command"], json!(["echo", "3"]));
    assert_eq!(listed[0]["group"], "a");
}

#[test]
fn control_characters_of_a_job_reach_no_terminal_raw() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    // Refused at submit (as in the config, no group could take it)...
    let out = sb.run(&["submit", "--group", "a\nb", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("control characters"),
        "{out:?}"
    );
    // ...yet a row written by hand may hold one: shown escaped.
    let id = sb.submit(&["--group", "a", "--", "echo", "a\u{1b}[31mRED\nb"]);
    let db = rusqlite::Connection::open(sb.path().join("state/jobs.db")).unwrap();
    let n = db
        .execute(
            "UPDATE jobs SET named_group = 'a' || char(10) || 'b' WHERE id = ?1",
            [id],
        )
        .unwrap();
    assert_eq!(n, 1);
    let out = sb.run(&["jobs"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert_eq!(table.lines().count(), 2, "a header and one row: {table:?}");
    assert!(table.contains(r"echo $'a\u001b[31mRED\nb'"), "{table:?}");
    assert!(table.contains(r"a\nb"), "{table:?}");
    let out = sb.run(&["job", &id.to_string()]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        !shown.contains('\u{1b}') && shown.contains(r"(group a\nb)"),
        "{shown:?}"
    );
    // The JSON says it as it is.
    let job: Value =
        serde_json::from_slice(&sb.run(&["job", &id.to_string(), "--json"]).stdout).unwrap();
    assert_eq!(job["command"], json!(["echo", "a\u{1b}[31mRED\nb"]));
}

#[test]
fn a_jobs_file_that_is_not_utf8_is_refused_at_its_line_and_column() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let file = sb.path().join("bad.jsonl");
    std::fs::write(
        &file,
        b"{\"command\": [\"true\"]}\n{\"command\": [\"caf\xe9\"]}\n",
    )
    .unwrap();
    let out = sb.run(&["submit", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("bad.jsonl:2:") && said.contains("invalid UTF-8"),
        "{said}"
    );
    let listed: Value = serde_json::from_slice(&sb.run(&["jobs", "--json"]).stdout).unwrap();
    assert_eq!(listed, json!([]), "nothing queued");
}

#[test]
fn bad_submit_input_exits_2_and_names_the_problem() {
    let sb = Sandbox::new(&config_of(vec![group("a", 1)]));
    let cases: [(&[&str], &[&str]); 9] = [
        (
            &["--after", "999", "--", "true"],
            &["--after: job 999 does not exist"],
        ),
        (&["--tag", "noequals", "--", "true"], &["--tag"]),
        (
            &["--tag", "k=v", "--tag", "k=w", "--", "true"],
            &["--tag: `k` is given twice"],
        ),
        (
            &["--env", "K=1", "--env", "K=2", "--", "true"],
            &["--env: `K` is given twice"],
        ),
        (&["--env", "noequals", "--", "true"], &["--env"]),
        (&["--timeout=-1", "--", "true"], &["--timeout", "timeout_s"]),
        (
            &["--timeout", "-1", "--", "true"],
            &["--timeout", "timeout_s"],
        ),
        (
            &["--max-attempts", "0", "--", "true"],
            &["--max-attempts", "max_attempts"],
        ),
        (&["--group", "a"], &["command"]),
    ];
    let mut problems = vec![];
    for (args, names) in cases {
        let mut full = vec!["submit"];
        full.extend_from_slice(args);
        let (code, stdout, stderr) = run_fails(&sb, &full);
        if code != Some(2) || !stdout.is_empty() || !names.iter().any(|n| stderr.contains(n)) {
            problems.push(format!(
                "submit {args:?}: exit {code:?}, stdout {stdout:?}, stderr naming none of \
                 {names:?}:\n{stderr}"
            ));
        }
    }
    assert_eq!(jobs(&sb, None), Vec::<Value>::new(), "nothing was queued");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A small xorshift PRNG: the tests take no `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Live worker pids by (group, slot), from the events.
fn live_workers(events: &[Value]) -> BTreeMap<(String, u64), u32> {
    let mut m = BTreeMap::new();
    for e in events {
        if e["role"] != "worker" {
            continue;
        }
        let key = (
            e["group"].as_str().unwrap_or("").to_string(),
            e["slot"].as_u64().unwrap_or(0),
        );
        let pid = e["pid"].as_u64().unwrap_or(0) as u32;
        match e["event"].as_str() {
            Some("child_ready") => {
                m.insert(key, pid);
            }
            Some("child_exited") if m.get(&key) == Some(&pid) => {
                m.remove(&key);
            }
            _ => {}
        }
    }
    m
}

fn count_events(events: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    events.iter().filter(|e| pred(e)).count()
}

#[test]
fn sigkill_random_workers_during_hundreds_of_jobs_loses_none() {
    const N: usize = 300;
    let mut g = group("a", 4);
    g["max_attempts"] = json!(5);
    g["restart"] = json!({
        "backoff": {"initial_s": 0.01, "max_s": 0.02, "jitter": 0},
        "max_restarts": 1000, "period_s": 60,
    });
    let sb = Sandbox::new(&config_of(vec![g]));
    let file = jobs_file(
        &sb,
        "many.jsonl",
        N,
        "a",
        &["sh", "-c", "sleep 0.0$(($$ % 5))"],
    );
    let ids = submit_file(&sb, &file);
    assert_eq!(ids.len(), N);
    let mut sv = sb.start(&[]);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("worker-kill seed: {seed}");
    let mut rng = Rng(seed);
    let succeeded = |events: &[Value]| {
        count_events(events, |e| {
            e["event"] == "job_finished" && e["outcome"] == "succeeded"
        })
    };
    sv.wait_events(T, 4, |e| {
        e["event"] == "child_ready" && e["role"] == "worker"
    });
    let started = Instant::now();
    let mut kills = 0;
    while kills < 10 {
        let events = sv.events();
        if succeeded(&events) >= N {
            break;
        }
        let workers: Vec<((String, u64), u32)> = live_workers(&events)
            .into_iter()
            .filter(|(_, p)| alive(*p))
            .collect();
        if workers.is_empty() {
            // Every worker is between lives: wait for one to be back.
            sv.wait_event(T, |e| {
                e["event"] == "child_ready"
                    && e["role"] == "worker"
                    && e["seq"].as_u64() > events.last().unwrap()["seq"].as_u64()
            });
            continue;
        }
        let (slot, victim) = workers[(rng.next() % workers.len() as u64) as usize].clone();
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        kills += 1;
        let done_before = succeeded(&events);
        // Its replacement comes up in the same slot ...
        let last_seq = events.last().unwrap()["seq"].as_u64();
        let replaced = wait_until(T, || {
            sv.events().iter().any(|e| {
                e["event"] == "child_ready"
                    && e["role"] == "worker"
                    && e["group"] == slot.0.as_str()
                    && e["slot"] == slot.1
                    && e["pid"] != victim
                    && e["seq"].as_u64() > last_seq
            })
        });
        assert!(
            replaced.is_ok(),
            "kill {kills}: worker {victim} (slot {}) was SIGKILLed and no replacement became \
             ready within {T:?}:\n{}",
            slot.1,
            sv.dump()
        );
        // ... and work goes on before the next kill.
        let ok = wait_until(Duration::from_secs(30), || {
            let n = succeeded(&sv.events());
            n >= N || n >= done_before + 20
        });
        assert!(ok.is_ok(), "no progress after kill {kills}:\n{}", sv.dump());
    }
    if wait_until(Duration::from_secs(30), || succeeded(&sv.events()) >= N).is_err() {
        let others: Vec<Value> = jobs(&sb, None)
            .into_iter()
            .filter(|j| j["state"] != "succeeded")
            .collect();
        panic!(
            "{} of {N} jobs succeeded after {kills} kills; the others: {others:#?}\n{}",
            succeeded(&sv.events()),
            sv.dump()
        );
    }
    eprintln!(
        "{N} jobs on 4 workers with {kills} worker kills: {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let events = sv.events();
    let lost = count_events(&events, |e| {
        e["event"] == "job_finished" && e["outcome"] == "lost"
    });
    let exits = count_events(&events, |e| {
        e["event"] == "child_exited" && e["role"] == "worker" && e["signal"] == 9
    });
    assert!(
        kills >= 5,
        "only {kills} kills happened before the jobs ran out"
    );
    assert!(
        exits >= kills,
        "{exits} worker exits by SIGKILL for {kills} kills"
    );
    assert!(lost >= 1, "no kill hit a running job ({kills} kills)");
    assert_eq!(count_events(&events, |e| e["event"] == "job_dead"), 0);
    assert_eq!(count_events(&events, |e| e["event"] == "group_gave_up"), 0);
    let done = jobs(&sb, Some("succeeded"));
    assert_eq!(done.len(), N, "{} of {N} jobs succeeded", done.len());
    let done_ids: BTreeSet<i64> = done.iter().map(|j| j["id"].as_i64().unwrap()).collect();
    assert_eq!(done_ids, ids.iter().copied().collect());
    assert_eq!(jobs(&sb, None).len(), N);
    // Each job's success was recorded once.
    for id in &ids {
        let ok = of_job(&events, "job_finished", *id)
            .iter()
            .filter(|e| e["outcome"] == "succeeded")
            .count();
        assert_eq!(ok, 1, "job {id}");
    }
    sv.signal(Signal::SIGTERM);
    assert_eq!(sv.wait_exit(T), Some(0));
    sv.assert_nothing_left(Duration::from_secs(2));
}

#[test]
fn sigkill_of_the_supervisor_mid_run_then_restart_runs_every_job() {
    const N: usize = 50;
    let sb = Sandbox::new(&config_of(vec![group("a", 2)]));
    let file = jobs_file(&sb, "jobs.jsonl", N, "a", &["sleep", "0.1"]);
    let ids = submit_file(&sb, &file);
    let mut first = sb.start(&[]);
    first.wait_events(T, 6, |e| {
        e["event"] == "job_finished" && e["outcome"] == "succeeded"
    });
    // Killed while the store has a job running (a job lasts 0.1 s; between two jobs both
    // workers may be idle for a moment).
    wait_until(T, || !jobs(&sb, Some("running")).is_empty())
        .expect("a job running after the sixth success");
    first.signal(Signal::SIGKILL);
    assert_eq!(first.wait_exit(T), None, "killed by a signal");
    let done_then = jobs(&sb, Some("succeeded")).len();
    assert!((6..N).contains(&done_then), "{done_then} done");
    assert!(
        !jobs(&sb, Some("running")).is_empty(),
        "some jobs were running when it died"
    );
    drop(first); // checks that its children and their jobs died with it

    let mut second = sb.start(&["--until-empty"]);
    assert_eq!(second.wait_exit(Duration::from_secs(30)), Some(0));
    let all = jobs(&sb, None);
    assert_eq!(all.len(), N);
    for j in &all {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(
            j["attempts"], 1,
            "an attempt cut short by the supervisor's death does not count: {j}"
        );
    }
    let got: BTreeSet<i64> = all.iter().map(|j| j["id"].as_i64().unwrap()).collect();
    assert_eq!(got, ids.into_iter().collect());
    second.assert_nothing_left(Duration::from_secs(2));
}

#[test]
fn graceful_stop_requeues_unfinished_jobs() {
    let mut cfg = config_of(vec![group("a", 1)]);
    cfg["shutdown_grace_s"] = json!(0.2);
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    let id = sb.submit(&[
        "--group",
        "a",
        "--",
        "sh",
        "-c",
        "echo $$ > job.pid; exec sleep 30",
    ]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == id);
    let pids = read_pids(&sb.path().join("job.pid"));
    let t0 = Instant::now();
    sv.signal(Signal::SIGTERM);
    assert_eq!(sv.wait_exit(T), Some(0));
    eprintln!("stopped in {:.2}s", t0.elapsed().as_secs_f64());
    assert_gone(&pids, "the unfinished job");
    let job = sb.job(id);
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["attempts"], 0, "no attempt used: {job}");
    let events = sv.events();
    assert!(of_job(&events, "job_dead", id).is_empty());
    assert!(of_job(&events, "job_retry_scheduled", id).is_empty());
    assert_eq!(events.last().unwrap()["event"], "supervisor_stopped");
    sv.assert_nothing_left(Duration::from_secs(2));
}

#[test]
fn until_empty_exits_when_nothing_is_left() {
    let sb = Sandbox::new(&config_of(vec![group("a", 2)]));
    let ids: Vec<i64> = (0..5)
        .map(|_| sb.submit(&["--group", "a", "--", "true"]))
        .collect();
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0));
    for id in ids {
        assert_eq!(sb.job(id)["state"], "succeeded");
    }
    sv.assert_nothing_left(Duration::from_secs(2));

    let sb = Sandbox::new(&config_of(vec![arch_group("x86", 1, &["x86_64"])]));
    let nowhere = sb.submit(&["--tag", "arch=mips", "--", "true"]);
    let good = sb.submit(&["--tag", "arch=x86_64", "--", "true"]);
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0));
    assert_eq!(sb.job(good)["state"], "succeeded");
    assert_eq!(sb.job(nowhere)["state"], "queued");
    sv.assert_nothing_left(Duration::from_secs(2));

    // A job for a group without workers cannot run either: it does not keep the run
    // going, whether the group matches it by name or first by tags.
    let sb = Sandbox::new(&config_of(vec![
        arch_group("parked", 0, &["x86_64"]),
        group("a", 1),
    ]));
    let named = sb.submit(&["--group", "parked", "--", "true"]);
    let tagged = sb.submit(&["--tag", "arch=x86_64", "--", "true"]);
    let good = sb.submit(&["--group", "a", "--", "true"]);
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    assert_eq!(sb.job(good)["state"], "succeeded");
    assert_eq!(sb.job(named)["state"], "queued");
    assert_eq!(sb.job(tagged)["state"], "queued");
    sv.assert_nothing_left(Duration::from_secs(2));
}

#[test]
fn doorbell_starts_a_job_fast_with_a_30s_poll() {
    let mut cfg = config_of(vec![group("a", 2)]);
    cfg["grabber"] = json!({"poll_interval_s": 30});
    let sb = Sandbox::new(&cfg);
    let sv = sb.start(&[]);
    sv.wait_events(T, 3, |e| e["event"] == "child_ready");
    // A first job, so that the grabber's start-up passes are surely behind us.
    let warm = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(warm, &["succeeded"], T);
    let mut latencies = vec![];
    for _ in 0..3 {
        let t0 = Instant::now();
        let id = sb.submit(&["--group", "a", "--", "true"]);
        sv.wait_event(Duration::from_secs(2), |e| {
            e["event"] == "job_started" && e["job_id"] == id
        });
        latencies.push(t0.elapsed());
        sb.wait_job(id, &["succeeded"], T);
    }
    eprintln!("submit -> job_started with a 30 s poll: {latencies:?}");
    for l in latencies {
        assert!(l < Duration::from_secs(2), "{l:?}");
    }
}

#[test]
fn status_counts_jobs_per_state() {
    let mut slow = group("slow", 2);
    slow["retry_backoff"] = json!({"initial_s": 60, "max_s": 60, "jitter": 0});
    let sb = Sandbox::new(&config_of(vec![group("a", 2), slow]));
    let sv = sb.start(&[]);
    let succeeded = sb.submit(&["--group", "a", "--", "true"]);
    let dead = sb.submit(&["--group", "a", "--max-attempts", "1", "--", "false"]);
    let failed = sb.submit(&["--group", "slow", "--max-attempts", "2", "--", "false"]);
    let timed_out = sb.submit(&[
        "--group",
        "slow",
        "--max-attempts",
        "2",
        "--timeout",
        "0.2",
        "--",
        "sleep",
        "30",
    ]);
    let queued = sb.submit(&["--tag", "arch=none", "--", "true"]);
    let canceled = sb.submit(&["--group", "nosuch", "--", "true"]);
    assert!(sb.run(&["cancel", &canceled.to_string()]).status.success());
    sb.wait_job(succeeded, &["succeeded"], T);
    sb.wait_job(dead, &["dead"], T);
    sb.wait_job(failed, &["failed"], T);
    sb.wait_job(timed_out, &["timed_out"], T);
    let running = sb.submit(&["--group", "a", "--", "sleep", "30"]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == running);
    assert_eq!(sb.job(queued)["state"], "queued");
    assert_eq!(sb.job(canceled)["state"], "canceled");

    let out = sb.run(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["supervisor"]["running"], true, "{status}");
    assert_eq!(status["supervisor"]["pid"], sv.pid(), "{status}");
    let counts = status["jobs"].as_object().expect("a jobs object");
    let expected: BTreeMap<&str, u64> = [
        "queued",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "dead",
        "canceled",
    ]
    .into_iter()
    .map(|s| (s, 1))
    .collect();
    let got: BTreeMap<&str, u64> = counts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(got, expected, "{status}");
    // They agree with `jobs`.
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for j in jobs(&sb, None) {
        *tally
            .entry(j["state"].as_str().unwrap().into())
            .or_default() += 1;
    }
    for (state, n) in &got {
        assert_eq!(tally.get(*state).copied().unwrap_or(0), *n, "{state}");
    }
}
