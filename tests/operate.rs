//! The operator's verbs around a supervisor: `status` as a table (running, killed,
//! stopped), stale pidfiles for `stop` / `reload` / `stop --wait`, `stop --wait`,
//! `events` and `events --follow` across rotations, `--version` and every verb's
//! `--help`.
//!
//! `status --json` for a running and a cleanly stopped supervisor, and `stop` / `reload`
//! with a pidfile naming a live unrelated process, are covered in `process.rs`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(10);

// ----- helpers -----------------------------------------------------------------------

fn config(workers: u32) -> Value {
    json!({
        "shutdown_grace_s": 30,
        "groups": [{
            "name": "a",
            "max_workers": workers,
            "retry_backoff": {"initial_s": 0.05, "max_s": 0.1, "jitter": 0},
        }],
    })
}

/// Wait until the grabber and `workers` workers are ready.
fn wait_ready(sv: &Supervisor, workers: usize) {
    sv.wait_events(T, workers + 1, |e| e["event"] == "child_ready");
}

/// A command the test runs in the background, its stdout collected line by line by a
/// thread; killed and reaped on drop.
struct Piped {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Piped {
    fn spawn(cmd: Command) -> Piped {
        Piped::spawn_with_stderr(cmd, Stdio::null())
    }

    fn spawn_with_stderr(mut cmd: Command, stderr: impl Into<Stdio>) -> Piped {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => sink.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        Piped {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The lines that parse as JSON.
    fn events(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) {
        wait_until(T, || self.lines().iter().any(|l| pred(l))).unwrap_or_else(|_| {
            panic!(
                "no line {what} within {T:?}; got:\n{}",
                self.lines().join("\n")
            )
        });
    }

    /// Wait until it has printed the event with `seq`.
    fn wait_seq(&self, seq: u64) {
        wait_until(T, || {
            self.events()
                .iter()
                .any(|e| e["seq"].as_u64().is_some_and(|s| s >= seq))
        })
        .unwrap_or_else(|_| {
            panic!(
                "the follower never printed seq {seq}; its last lines:\n{}",
                self.lines()
                    .iter()
                    .rev()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    }

    /// Its exit code, waiting at most `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut status = None;
        wait_until(within, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        })
        .unwrap_or_else(|_| panic!("still running after {within:?}"));
        status.unwrap().code()
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A process the test started itself; killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `status` (the table): its stdout, which must come with exit 0.
fn status_text(sb: &Sandbox) -> String {
    let out = sb.run(&["status"]);
    assert!(
        out.status.success(),
        "status exited {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The table's rows as columns (NAME STATE PID UPTIME RESTARTS JOB), checking the
/// header on the way.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.contains("NAME"))
        .unwrap_or_else(|| panic!("no table header in:\n{text}"));
    let cols: Vec<&str> = lines[header].split_whitespace().collect();
    assert_eq!(
        cols,
        ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "JOB"],
        "{text}"
    );
    lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("jobs:"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The row whose PID column is `pid`.
fn row_of(rows: &[Vec<String>], pid: u32, text: &str) -> Vec<String> {
    rows.iter()
        .find(|r| r.get(2).map(String::as_str) == Some(pid.to_string().as_str()))
        .unwrap_or_else(|| panic!("no row for pid {pid}:\n{text}"))
        .clone()
}

/// `12s`, `3m07s`, `2h05m`.
fn is_uptime(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_digit() || "hms".contains(c))
        && s.ends_with(['s', 'm'])
}

/// A pid that no process has: one we started and reaped.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

fn pidfile(sb: &Sandbox) -> PathBuf {
    sb.path().join("state/supervisor.pid")
}

/// Run `args`; expect exit 1 with a message containing `word`, within 5 s (a `stop
/// --wait` that waited would hang).
fn expect_not_running(sb: &Sandbox, args: &[&str], word: &str) {
    let t = Instant::now();
    let out = sb.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(word),
        "{args:?} does not say {word}: {stderr}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{args:?} took {:?}",
        t.elapsed()
    );
}

// ----- status ------------------------------------------------------------------------

#[test]
fn status_table_for_a_running_supervisor() {
    let sb = Sandbox::new(&config(2));
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 2);
    let held = sb.submit_held("held", &["--group", "a"]);
    let started = sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    held.pid();
    let busy = started["worker_pid"].as_u64().unwrap() as u32;
    let events = sv.events();
    let ready: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "child_ready")
        .collect();

    let text = status_text(&sb);
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.contains("running") && !first.contains("not running"),
        "{text}"
    );
    assert!(first.contains(&sv.pid().to_string()), "{text}");
    let rows = table_rows(&text);
    assert_eq!(rows.len(), 3, "{text}");
    for e in ready {
        let pid = e["pid"].as_u64().unwrap() as u32;
        let row = row_of(&rows, pid, &text);
        assert_eq!(row.len(), 6, "{row:?}");
        assert!(is_uptime(&row[3]), "uptime {:?} in {row:?}", row[3]);
        assert_eq!(row[4], "0", "restarts: {row:?}");
        if e["role"] == "grabber" {
            assert!(row[0].contains("grabber"), "{row:?}");
            assert_eq!(row[5], "-", "{row:?}");
        } else {
            assert!(row[0].contains('a'), "the name shows the group: {row:?}");
            if pid == busy {
                assert_eq!(row[1], "busy", "{row:?}");
                assert_eq!(row[5], held.id.to_string(), "{row:?}");
            } else {
                assert_eq!(row[1], "idle", "{row:?}");
                assert_eq!(row[5], "-", "{row:?}");
            }
        }
    }
    let counts = text
        .lines()
        .find(|l| l.starts_with("jobs:"))
        .unwrap_or_else(|| panic!("no job counts:\n{text}"));
    assert!(counts.contains("running 1"), "{counts}");
    assert!(counts.contains("queued 0"), "{counts}");

    held.release();
    sb.wait_job(held.id, &["succeeded"], T);
    sv.stop_cleanly();
}

#[test]
fn status_of_a_stopped_supervisor_shows_the_last_known_state() {
    let sb = Sandbox::new(&config(2));
    // Never started: not running, nothing known.
    let text = status_text(&sb);
    assert!(text.contains("not running"), "{text}");
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], false, "{st}");
    assert_eq!(st["supervisor"]["pid"], Value::Null, "{st}");
    assert_eq!(st["children"], json!([]), "{st}");

    // Killed while a job ran: not running, and the last state the events file knew.
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 2);
    let held = sb.submit_held("held", &["--group", "a"]);
    let started = sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    held.pid();
    let busy = started["worker_pid"].as_u64().unwrap() as u32;
    let killed = sv.pid();
    sv.signal(Signal::SIGKILL);
    assert_eq!(sv.wait_exit(T), None);
    sv.assert_nothing_left(Duration::from_secs(2));

    let text = status_text(&sb);
    let first = text.lines().next().unwrap_or("");
    assert!(first.contains("not running"), "{text}");
    let rows = table_rows(&text);
    assert_eq!(rows.len(), 3, "{text}");
    let row = row_of(&rows, busy, &text);
    assert_eq!(row[1], "gone", "{row:?}");
    assert_eq!(row[5], held.id.to_string(), "{row:?}");
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], false, "{st}");
    assert_eq!(st["supervisor"]["pid"], killed, "{st}");
    let row = st["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["pid"] == busy)
        .unwrap_or_else(|| panic!("no child row for {busy}: {st}"))
        .clone();
    assert_eq!(row["state"], "gone", "{row}");
    assert_eq!(row["job_id"], held.id, "{row}");
    assert_eq!(st["jobs"]["running"], 1, "{st}");
    drop(sv);

    // Run again (the job, let go, reruns) and stop cleanly: every child exited.
    held.release();
    let mut sv = sb.start(&[]);
    sv.wait_started();
    sb.wait_job(held.id, &["succeeded"], T);
    let out = sb.run(&["stop", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sv.wait_exit(T), Some(0));
    sv.assert_nothing_left(Duration::from_secs(2));
    let text = status_text(&sb);
    assert!(
        text.lines().next().unwrap_or("").contains("not running"),
        "{text}"
    );
    let rows = table_rows(&text);
    assert_eq!(rows.len(), 3, "{text}");
    for r in &rows {
        assert_eq!(r[1], "gone", "{text}");
        assert_eq!(r[5], "-", "{text}");
    }
    assert!(text.contains("succeeded 1"), "{text}");
}

/// A supervisor whose events file has rotated since its children started: one worker
/// busy with a held job, the other a replacement after a crash (restarts 1).
struct Rotated {
    sb: Sandbox,
    sv: Supervisor,
    held: Held,
    busy: u32,
    replacement: u32,
    grabber: u32,
}

fn rotated_supervisor() -> Rotated {
    let mut cfg = config(2);
    cfg["events"] = json!({"rotate_bytes": 4096, "keep": 3});
    cfg["groups"][0]["restart"] =
        json!({"backoff": {"initial_s": 0.05, "max_s": 0.1, "jitter": 0}});
    let sb = Sandbox::new(&cfg);
    let sv = sb.start(&[]);
    wait_ready(&sv, 2);
    let held = sb.submit_held("held", &["--group", "a"]);
    let started = sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    held.pid();
    let busy = started["worker_pid"].as_u64().unwrap() as u32;
    let events = sv.events();
    let ready = |role: &str| -> Vec<u32> {
        events
            .iter()
            .filter(|e| e["event"] == "child_ready" && e["role"] == role)
            .map(|e| e["pid"].as_u64().unwrap() as u32)
            .collect()
    };
    let grabber = ready("grabber")[0];
    let idle = ready("worker").into_iter().find(|&p| p != busy).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(idle as i32), Signal::SIGKILL).unwrap();
    let replacement = sv.wait_event(T, |e| {
        e["event"] == "child_ready" && e["role"] == "worker" && e["pid"] != idle && e["pid"] != busy
    })["pid"]
        .as_u64()
        .unwrap() as u32;
    // Rotate: batches of jobs on the replacement until `events.jsonl.1` appears.
    let line = json!({"command": ["true"], "group": "a"}).to_string() + "\n";
    let batch = sb.path().join("batch.jsonl");
    fs::write(&batch, line.repeat(8)).unwrap();
    let rotated = PathBuf::from(format!("{}.1", sb.events_path().display()));
    let mut n = 0;
    while !rotated.exists() {
        assert!(n < 10, "no rotation after 80 jobs");
        let out = sb.run(&["submit", "--file", batch.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let last: i64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .parse()
            .unwrap();
        sb.wait_job(last, &["succeeded"], T);
        n += 1;
    }
    // The current file no longer names the children's starts.
    let current = sv.events();
    assert_eq!(current[0]["event"], "snapshot");
    assert!(!current.iter().any(|e| e["event"] == "child_started"));
    Rotated {
        sb,
        sv,
        held,
        busy,
        replacement,
        grabber,
    }
}

#[test]
fn status_after_a_rotation_shows_every_child() {
    let Rotated {
        sb,
        mut sv,
        held,
        busy,
        replacement,
        grabber,
    } = rotated_supervisor();
    let text = status_text(&sb);
    let rows = table_rows(&text);
    assert_eq!(rows.len(), 3, "{text}");
    let want = [
        (grabber, "ready", "0", "-".to_string()),
        (busy, "busy", "0", held.id.to_string()),
        (replacement, "idle", "1", "-".to_string()),
    ];
    for (pid, state, restarts, job) in &want {
        let row = row_of(&rows, *pid, &text);
        assert_eq!(
            (&row[1], &row[4], &row[5]),
            (&state.to_string(), &restarts.to_string(), job),
            "{text}"
        );
    }
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], true, "{st}");
    for (pid, state, restarts, _) in &want {
        let c = st["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["pid"] == *pid)
            .unwrap_or_else(|| panic!("no child {pid}: {st}"))
            .clone();
        assert_eq!(c["state"], *state, "{c}");
        assert_eq!(c["restarts"].to_string(), *restarts, "{c}");
    }
    held.release();
    sb.wait_job(held.id, &["succeeded"], T);
    sv.stop_cleanly();
}

#[test]
fn status_after_a_rotation_shows_uptimes() {
    let Rotated {
        sb,
        mut sv,
        held,
        busy,
        replacement,
        grabber,
    } = rotated_supervisor();
    let text = status_text(&sb);
    let rows = table_rows(&text);
    for pid in [grabber, busy, replacement] {
        let row = row_of(&rows, pid, &text);
        assert!(is_uptime(&row[3]), "no uptime for a running child:\n{text}");
    }
    held.release();
    sb.wait_job(held.id, &["succeeded"], T);
    sv.stop_cleanly();
}

// ----- pidfile -----------------------------------------------------------------------

#[test]
fn stop_and_reload_without_a_live_supervisor_exit_1() {
    let sb = Sandbox::new(&config(1));
    // No pidfile at all.
    for args in [&["stop"][..], &["stop", "--wait"], &["reload"]] {
        expect_not_running(&sb, args, "not running");
    }
    // A pidfile naming a pid that no process has.
    fs::create_dir_all(sb.path().join("state")).unwrap();
    let pid = dead_pid();
    fs::write(pidfile(&sb), format!("{pid}\n")).unwrap();
    for args in [&["stop"][..], &["stop", "--wait"], &["reload"]] {
        expect_not_running(&sb, args, "stale");
    }
    assert_eq!(sb.status_json()["supervisor"]["running"], false);
    assert!(status_text(&sb).contains("not running"));
}

#[test]
fn stop_wait_on_a_pid_reused_by_another_process_neither_signals_nor_waits() {
    let sb = Sandbox::new(&config(1));
    fs::create_dir_all(sb.path().join("state")).unwrap();
    let bystander = Guard(
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = bystander.0.id();
    fs::write(pidfile(&sb), format!("{pid}\n")).unwrap();
    expect_not_running(&sb, &["stop", "--wait"], "stale");
    assert!(
        alive(pid),
        "`stop --wait` signalled the unrelated process {pid}"
    );
    // Asleep, not stopped: a `sleep` just started may still be running for a moment.
    let mut stat = String::new();
    wait_until(T, || {
        stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(')').next().unwrap().split_whitespace().next() == Some("S")
    })
    .unwrap_or_else(|_| panic!("the bystander is not asleep: {stat}"));
}

#[test]
fn the_pidfile_of_a_killed_supervisor_is_stale_and_a_new_run_takes_over() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 1);
    let old = sv.pid();
    sv.signal(Signal::SIGKILL);
    assert_eq!(sv.wait_exit(T), None);
    sv.assert_nothing_left(Duration::from_secs(2));
    drop(sv);
    let text = fs::read_to_string(pidfile(&sb)).unwrap_or_default();
    assert_eq!(
        text.trim(),
        old.to_string(),
        "the pidfile names the dead supervisor"
    );

    for args in [&["reload"][..], &["stop"], &["stop", "--wait"]] {
        expect_not_running(&sb, args, "stale");
    }
    assert!(status_text(&sb).contains("not running"));

    let mut sv = sb.start(&[]);
    sv.wait_started();
    wait_ready(&sv, 1);
    assert_eq!(
        fs::read_to_string(pidfile(&sb)).unwrap().trim(),
        sv.pid().to_string()
    );
    let mark = sv.last_seq();
    let out = sb.run(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let loaded = sv.wait_event_after(mark, T, |e| e["event"] == "config_loaded");
    assert_eq!(loaded["generation"], 2, "{loaded}");
    let out = sb.run(&["stop", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sv.wait_exit(T), Some(0));
    sv.assert_nothing_left(Duration::from_secs(2));
}

// ----- stop --------------------------------------------------------------------------

#[test]
fn stop_returns_at_once_and_stop_wait_returns_once_it_has_exited() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 1);
    let held = sb.submit_held("held", &["--group", "a"]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    let job_pid = held.pid();

    // `stop` asks and returns; the supervisor waits for the running job (30 s grace).
    let t0 = Instant::now();
    let out = sb.run(&["stop"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "`stop` took {:?}",
        t0.elapsed()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sv.pid().to_string()));
    let stopping = sv.wait_event(T, |e| e["event"] == "supervisor_stopping");
    assert_eq!(stopping["reason"], "SIGTERM", "{stopping}");

    // `stop --wait` is still waiting while the job runs ...
    let mut waiter = Piped::spawn(sb.command(&["stop", "--wait"]));
    waiter.wait_line("saying it asked", |l| l.contains("asked"));
    assert!(
        waiter.child.try_wait().unwrap().is_none(),
        "`stop --wait` returned while the supervisor runs: {:?}",
        waiter.lines()
    );
    assert!(sv.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert!(alive(job_pid), "the job was not given its grace");

    // ... and returns when the supervisor has exited.
    held.release();
    assert_eq!(waiter.wait_exit(T), Some(0), "{:?}", waiter.lines());
    let events = sv.events();
    assert_eq!(
        events.last().unwrap()["event"],
        "supervisor_stopped",
        "`stop --wait` returned before the supervisor was done:\n{}",
        sv.dump()
    );
    assert!(waiter.lines().iter().any(|l| l.contains("stopped")));
    assert_eq!(sv.wait_exit(Duration::from_secs(2)), Some(0));
    sv.assert_nothing_left(Duration::from_secs(2));
    assert_eq!(sb.job(held.id)["state"], "succeeded");
}

#[test]
fn stop_wait_tells_a_supervisor_killed_while_it_waited_from_one_that_stopped() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 1);
    let held = sb.submit_held("held", &["--group", "a"]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    let err_path = sb.path().join("stop.stderr");
    let err = fs::File::create(&err_path).unwrap();
    let mut waiter = Piped::spawn_with_stderr(sb.command(&["stop", "--wait"]), err);
    waiter.wait_line("saying it asked", |l| l.contains("asked"));
    sv.wait_event(T, |e| e["event"] == "supervisor_stopping");
    sv.signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(sv.wait_exit(T), None, "killed");
    assert_eq!(waiter.wait_exit(T), Some(1), "{:?}", waiter.lines());
    let said = waiter.lines().join("\n");
    let error = fs::read_to_string(&err_path).unwrap();
    assert!(error.contains("without stopping"), "{said}\n{error}");
    assert!(
        !said.contains(&format!("supervisor {} stopped", sv.pid())),
        "{said}"
    );
    // The next run takes the job back; it then runs to its end.
    let mut next = sb.start(&[]);
    held.release();
    sb.wait_job(held.id, &["succeeded"], T);
    next.stop_cleanly();
    sv.assert_nothing_left(T);
}

// ----- events ------------------------------------------------------------------------

#[test]
fn events_prints_the_events_file_as_json_lines() {
    let sb = Sandbox::new(&config(1));
    let mut sv = sb.start(&[]);
    let started = sv.wait_event(T, |e| e["event"] == "supervisor_started");
    assert_eq!(started["version"], env!("CARGO_PKG_VERSION"), "{started}");
    let id = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(id, &["succeeded"], T);
    sv.stop_cleanly();

    let file: Vec<String> = fs::read_to_string(sb.events_path())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(file.len() > 5);
    for args in [&["events", "--json"][..], &["events"]] {
        let out = sb.run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(printed, file, "{args:?} does not print the file as it is");
    }
    let events = sb.events();
    assert_eq!(events.len(), file.len(), "every line is one JSON event");
    for (n, e) in events.iter().enumerate() {
        assert_eq!(seq(e), n as u64 + 1, "{e}");
        assert!(e["ts"].as_f64().is_some() && e["event"].is_string(), "{e}");
    }
    // A line that is not UTF-8 (a write torn inside a character) hides nothing else:
    // every event is still printed, and a new run goes on from the last seq.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(sb.events_path())
        .unwrap();
    std::io::Write::write_all(&mut f, b"\xff\xfe\n").unwrap();
    drop(f);
    let out = sb.run(&["events", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    for line in &file {
        assert!(
            printed.contains(line.as_str()),
            "{line} not printed:\n{printed}"
        );
    }
    let mut sv = sb.start(&[]);
    let started = sv.wait_event(T, |e| e["event"] == "supervisor_started");
    assert!(seq(&started) > file.len() as u64, "{started}");
    sv.stop_cleanly();
}

/// Check that what a follower printed is every event of every file, in order, once.
fn assert_followed_everything(sb: &Sandbox, follower: &Piped) {
    let base = sb.events_path();
    let mut files = vec![];
    for n in (1..100).rev() {
        let p = PathBuf::from(format!("{}.{n}", base.display()));
        if p.exists() {
            files.push(p);
        }
    }
    assert!(files.len() >= 2, "fewer than two rotations");
    files.push(base);
    let all: Vec<Value> = files.iter().flat_map(|f| read_events(f)).collect();
    let printed = follower.events();
    let seqs = |v: &[Value]| v.iter().map(seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&printed),
        seqs(&all),
        "the follower's events (left) are not those of the files (right)"
    );
    assert_eq!(printed, all);
}

#[test]
fn events_follow_keeps_up_across_rotations() {
    let mut cfg = config(1);
    cfg["events"] = json!({"rotate_bytes": 4096, "keep": 50});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 1);
    let follower = Piped::spawn(sb.command(&["events", "--follow", "--json"]));
    follower.wait_seq(sv.last_seq());

    // Batches of 8 jobs (about 2.3 KB of events), the follower caught up after each:
    // at most one rotation between two of its looks.
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", sb.events_path().display())).exists();
    let line = json!({"command": ["true"], "group": "a"}).to_string() + "\n";
    let batch = sb.path().join("batch.jsonl");
    fs::write(&batch, line.repeat(8)).unwrap();
    let mut batches = 0;
    while !rotated(3) {
        assert!(batches < 20, "160 jobs and fewer than 3 rotations");
        let out = sb.run(&["submit", "--file", batch.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let last: i64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .parse()
            .unwrap();
        sb.wait_job(last, &["succeeded"], T);
        follower.wait_seq(sv.last_seq());
        batches += 1;
    }
    sv.stop_cleanly();
    let last = sb.events().last().cloned().unwrap();
    assert_eq!(last["event"], "supervisor_stopped");
    follower.wait_seq(seq(&last));
    assert_followed_everything(&sb, &follower);
}

#[test]
fn events_follow_keeps_up_with_fast_rotations() {
    let mut cfg = config(2);
    cfg["events"] = json!({"rotate_bytes": 4096, "keep": 50});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 2);
    let follower = Piped::spawn(sb.command(&["events", "--follow", "--json"]));
    follower.wait_seq(sv.last_seq());

    // Many rotations in quick succession.
    let n = 60;
    let line = json!({"command": ["true"], "group": "a"}).to_string();
    let text: String = (0..n).map(|_| format!("{line}\n")).collect();
    let file = sb.path().join("jobs.jsonl");
    fs::write(&file, text).unwrap();
    let out = sb.run(&["submit", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    wait_until(T, || sb.status_json()["jobs"]["succeeded"] == n)
        .unwrap_or_else(|_| panic!("the {n} jobs did not all succeed"));
    sv.stop_cleanly();
    let last = sb.events().last().cloned().unwrap();
    follower.wait_seq(seq(&last));
    assert_followed_everything(&sb, &follower);
}

/// Where the file that had inode `ino` is now among the rotated events files, if any.
fn rotated_position(sb: &Sandbox, ino: u64) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    (1..100).find(|n| {
        fs::metadata(format!("{}.{n}", sb.events_path().display())).is_ok_and(|m| m.ino() == ino)
    })
}

#[test]
fn events_follow_reads_missed_files_from_the_rotated_ones_and_names_what_is_gone() {
    use std::os::unix::fs::MetadataExt;
    let mut cfg = config(1);
    cfg["events"] = json!({"rotate_bytes": 4096, "keep": 50});
    let sb = Sandbox::new(&cfg);
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 1);
    let stderr_path = sb.path().join("follower.stderr");
    let follower = Piped::spawn_with_stderr(
        sb.command(&["events", "--follow", "--json"]),
        fs::File::create(&stderr_path).unwrap(),
    );
    follower.wait_seq(sv.last_seq());

    // The follower is stopped while the file it reads rotates three times: it is then
    // `.3`, and `.2` and `.1` came after it.
    let held = fs::metadata(sb.events_path()).unwrap().ino();
    let pid = nix::unistd::Pid::from_raw(follower.child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let line = json!({"command": ["true"], "group": "a"}).to_string() + "\n";
    let batch = sb.path().join("batch.jsonl");
    fs::write(&batch, line.repeat(8)).unwrap();
    let mut batches = 0;
    while rotated_position(&sb, held).is_none_or(|n| n < 3) {
        assert!(batches < 30, "240 jobs and fewer than 3 rotations");
        let out = sb.run(&["submit", "--file", batch.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let last: i64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .parse()
            .unwrap();
        sb.wait_job(last, &["succeeded"], T);
        batches += 1;
    }
    // One file between the one it read and the current one goes, as `keep` would have.
    let position = rotated_position(&sb, held).unwrap();
    let gone = PathBuf::from(format!("{}.{}", sb.events_path().display(), position - 1));
    let missing: Vec<u64> = read_events(&gone).iter().map(seq).collect();
    assert!(!missing.is_empty());
    fs::remove_file(&gone).unwrap();
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();

    sv.stop_cleanly();
    let last = seq(sb.events().last().unwrap());
    follower.wait_seq(last);
    let printed: Vec<u64> = follower.events().iter().map(seq).collect();
    let want: Vec<u64> = (1..=last).filter(|s| !missing.contains(s)).collect();
    assert_eq!(printed, want, "the follower missed or repeated events");
    let (first, end) = (missing[0], missing[missing.len() - 1]);
    let mut stderr = String::new();
    wait_until(T, || {
        stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        stderr.contains(&format!("{first} to {end}"))
    })
    .unwrap_or_else(|_| panic!("no warning naming seq {first} to {end}: {stderr:?}"));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn events_follow_waits_for_the_file_and_follows_a_restart() {
    let sb = Sandbox::new(&config(1));
    // Started before any supervisor: no file yet.
    let follower = Piped::spawn(sb.command(&["events", "--follow", "--json"]));
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 1);
    follower.wait_seq(sv.last_seq());
    sv.stop_cleanly();
    follower.wait_seq(sb.events().last().map(seq).unwrap());
    drop(sv);
    // A second run moves the old file aside and starts a new one.
    let mut sv = sb.start(&[]);
    sv.wait_started();
    let id = sb.submit(&["--group", "a", "--", "true"]);
    sb.wait_job(id, &["succeeded"], T);
    sv.stop_cleanly();
    let last = sb.events().last().cloned().unwrap();
    follower.wait_seq(seq(&last));
    let printed = follower.events();
    let seqs: Vec<u64> = printed.iter().map(seq).collect();
    let want: Vec<u64> = (1..=seq(&last)).collect();
    assert_eq!(seqs, want, "the follower missed or repeated events");
    let starts: Vec<&Value> = printed
        .iter()
        .filter(|e| e["event"] == "supervisor_started")
        .collect();
    assert_eq!(starts.len(), 2, "both runs");
}

// ----- version and help --------------------------------------------------------------

#[test]
fn version_is_printed() {
    for args in [&["--version"][..], &["-V"]] {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("supervisor {}", env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
    }
    // Subcommands have no version of their own: `supervisor run --version` is not
    // `supervisor-run 0.1.0`.
    for verb in ["run", "status", "check"] {
        for flag in ["--version", "-V"] {
            let out = Command::new(bin()).args([verb, flag]).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(2), "{verb} {flag}: {out:?}");
            assert!(
                !stdout.contains(&format!("supervisor-{verb}")),
                "{verb} {flag} printed a version of its own: {stdout}"
            );
        }
    }
}

#[test]
fn every_verb_has_help_with_an_example() {
    let verbs = [
        "run", "submit", "status", "jobs", "job", "cancel", "events", "reload", "stop", "check",
    ];
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let top = String::from_utf8_lossy(&out.stdout);
    let mut problems = vec![];
    for verb in verbs {
        if !top.lines().any(|l| l.trim_start().starts_with(verb)) {
            problems.push(format!("`supervisor --help` does not list {verb}"));
        }
        let out = Command::new(bin()).args([verb, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            problems.push(format!("`{verb} --help` exited {:?}", out.status));
        }
        let example = text
            .lines()
            .find(|l| l.contains("Example"))
            .map(str::trim)
            .unwrap_or("");
        if !example.contains(&format!("supervisor {verb}")) {
            problems.push(format!("`{verb} --help` has no example of itself:\n{text}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
