//! The verbs when the supervisor is down or their output is closed early.
//!
//! Every verb but `run` ends quietly when its stdout is closed (`| head`): killed by
//! SIGPIPE or exit 0, never a panic. `status` with no supervisor running says how its
//! last run ended (stopped cleanly, died, crashed with its panic) and when its last
//! event was, shows every child `gone`, and names the jobs stranded as `running`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::common::*;

const T: Duration = Duration::from_secs(10);

// ----- helpers -----------------------------------------------------------------------

fn config(workers: u32) -> Value {
    json!({"groups": [{"name": "a", "max_workers": workers}]})
}

/// How the test reads a verb's stdout before closing it.
#[derive(Debug, Clone, Copy)]
enum Reader {
    /// The pipe's read end is closed before the verb starts: its first write fails.
    Closed,
    /// One line is read, then the read end is closed (`| head -1`).
    Line,
    /// This many bytes are read, then the read end is closed (`| head -c N`).
    Bytes(usize),
}

/// Run `args` with its stdout read as `reader` says, then closed; expect a quiet end:
/// exit 0 or killed by SIGPIPE, no panic on stderr.
fn closed_early(sb: &Sandbox, args: &[&str], reader: Reader) {
    let mut cmd = sb.command(args);
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    let mut child = match reader {
        Reader::Closed => {
            let (read, write) = nix::unistd::pipe().unwrap();
            drop(read);
            cmd.stdout(Stdio::from(write)).spawn().unwrap()
        }
        Reader::Line | Reader::Bytes(_) => {
            let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let got = match reader {
                Reader::Line => {
                    let mut line = String::new();
                    out.read_line(&mut line).unwrap()
                }
                Reader::Bytes(n) => {
                    let mut buf = vec![0; n];
                    out.read_exact(&mut buf).unwrap();
                    n
                }
                Reader::Closed => unreachable!(),
            };
            assert!(got > 0, "{args:?} printed nothing");
            drop(out);
            child
        }
    };
    drop(cmd);
    let mut status = None;
    if wait_until(T, || {
        status = child.try_wait().unwrap();
        status.is_some()
    })
    .is_err()
    {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{args:?} ({reader:?}) still runs {T:?} after its stdout was closed");
    }
    let status = status.unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !stderr.contains("panicked"),
        "{args:?} ({reader:?}) panicked: {status:?}\n{stderr}"
    );
    assert!(
        status.code() == Some(0) || status.signal() == Some(Signal::SIGPIPE as i32),
        "{args:?} ({reader:?}) did not end quietly: {status:?}\n{stderr}"
    );
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

/// The table's rows as columns (NAME STATE PID UPTIME RESTARTS JOB).
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("NAME"))
        .unwrap_or_else(|| panic!("no table header in:\n{text}"));
    lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("jobs:"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The grabber and `workers` workers are ready.
fn wait_ready(sv: &Supervisor, workers: usize) {
    sv.wait_events(T, workers + 1, |e| e["event"] == "child_ready");
}

/// The `ts` of the last event in the events file.
fn last_ts(sb: &Sandbox) -> f64 {
    sb.events()
        .last()
        .and_then(|e| e["ts"].as_f64())
        .expect("an event with a ts")
}

/// `ts` as `date` prints it in the local time zone, to the second (as `status` does).
fn local(ts: f64) -> String {
    let out = Command::new("date")
        .arg("-d")
        .arg(format!("@{ts}"))
        .arg("+%Y-%m-%d %H:%M:%S")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every child in the table and in `--json` is `gone`, with no uptime; `n` of them.
fn assert_children_gone(text: &str, st: &Value, n: usize) {
    let rows = table_rows(text);
    assert_eq!(rows.len(), n, "{text}");
    for r in &rows {
        assert_eq!(r[1], "gone", "{text}");
        assert_eq!(r[3], "-", "an uptime for a gone child:\n{text}");
    }
    let children = st["children"].as_array().expect("children");
    assert_eq!(children.len(), n, "{st}");
    for c in children {
        assert_eq!(c["state"], "gone", "{c}");
        for k in ["role", "group", "slot", "pid", "restarts", "job_id"] {
            assert!(c.get(k).is_some(), "child row lacks {k}: {c}");
        }
    }
}

fn signal_quietly(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// A supervisor with two workers, one running a held job, SIGKILLed together with every
/// process it had (its children, the job's process group): nothing is left, and the
/// store still has the job `running`.
fn killed_with_a_running_job() -> (Sandbox, Supervisor, Held) {
    let sb = Sandbox::new(&config(2));
    let mut sv = sb.start(&[]);
    wait_ready(&sv, 2);
    let held = sb.submit_held("held", &["--group", "a"]);
    sv.wait_event(T, |e| e["event"] == "job_started" && e["job_id"] == held.id);
    let job = held.pid();
    let children: Vec<u32> = sv
        .events()
        .iter()
        .filter(|e| e["event"] == "child_started")
        .filter_map(|e| e["pid"].as_u64())
        .map(|p| p as u32)
        .collect();
    // The supervisor first, so that it records nothing of the rest; then its children
    // and the job's whole process group (its shell and the shell's `sleep`).
    sv.signal(Signal::SIGKILL);
    for pid in children {
        signal_quietly(pid, Signal::SIGKILL);
    }
    let _ = killpg(Pid::from_raw(job as i32), Signal::SIGKILL);
    assert_eq!(sv.wait_exit(T), None, "killed by a signal");
    sv.assert_nothing_left(Duration::from_secs(5));
    wait_until(T, || !alive(job)).expect("the job is gone");
    assert_eq!(sb.job(held.id)["state"], "running");
    (sb, sv, held)
}

// ----- a closed stdout ---------------------------------------------------------------

#[test]
fn every_verb_ends_quietly_when_its_stdout_is_closed() {
    let sb = Sandbox::new(&config(0));
    // 2000 jobs, more than a pipe holds when listed; no worker runs them.
    let line = json!({"command": ["true"], "group": "a"}).to_string() + "\n";
    let file = sb.path().join("jobs.jsonl");
    fs::write(&file, line.repeat(2000)).unwrap();
    let out = sb.run(&["submit", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    // An events file: a run that stops at once (no group can run the jobs).
    let mut sv = sb.start(&["--until-empty"]);
    assert_eq!(sv.wait_exit(T), Some(0), "{}", sv.dump());
    sv.assert_nothing_left(Duration::from_secs(2));
    let listed = sb.run(&["jobs"]);
    assert!(
        listed.stdout.len() > 2 * 65536,
        "`jobs` prints {} bytes: not more than a pipe holds",
        listed.stdout.len()
    );

    let cases: &[(&[&str], Reader)] = &[
        (&["jobs"], Reader::Line),
        (&["jobs"], Reader::Closed),
        (&["jobs", "--json"], Reader::Bytes(10)),
        (&["jobs", "--json"], Reader::Closed),
        (&["status"], Reader::Closed),
        (&["status", "--json"], Reader::Closed),
        (&["events"], Reader::Line),
        (&["events"], Reader::Closed),
        (&["job", &first], Reader::Bytes(1)),
        (&["job", &first], Reader::Closed),
        (&["job", &first, "--json"], Reader::Closed),
        (&["check"], Reader::Closed),
        (&["submit", "--group", "a", "--", "true"], Reader::Closed),
        (&["cancel", &first], Reader::Closed),
        (&["status", "--help"], Reader::Closed),
    ];
    for (args, reader) in cases {
        closed_early(&sb, args, *reader);
    }
}

// ----- status when the supervisor is down --------------------------------------------

#[test]
fn status_after_stop_wait_says_stopped_cleanly_and_children_gone() {
    let sb = Sandbox::new(&config(2));
    // Never started.
    let text = status_text(&sb);
    assert!(text.contains("never started"), "{text}");
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], false, "{st}");
    assert_eq!(st["supervisor"]["stopped"], Value::Null, "{st}");
    assert_eq!(st["supervisor"]["last_event_at"], Value::Null, "{st}");
    assert_eq!(st["supervisor"]["panic"], Value::Null, "{st}");
    assert_eq!(st["children"], json!([]), "{st}");

    let mut sv = sb.start(&[]);
    wait_ready(&sv, 2);
    // Running: nothing stopped, children as they are.
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], true, "{st}");
    assert_eq!(st["supervisor"]["stopped"], Value::Null, "{st}");
    assert_eq!(st["supervisor"]["panic"], Value::Null, "{st}");
    assert!(st["supervisor"]["last_event_at"].is_f64(), "{st}");
    for c in st["children"].as_array().unwrap() {
        assert_ne!(c["state"], "gone", "{st}");
    }

    let pid = sv.pid();
    let out = sb.run(&["stop", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sv.wait_exit(T), Some(0));
    sv.assert_nothing_left(Duration::from_secs(2));
    let last = last_ts(&sb);

    let text = status_text(&sb);
    let first = text.lines().next().unwrap_or("");
    assert!(first.contains("not running"), "{text}");
    assert!(first.contains("stopped cleanly"), "{text}");
    assert!(first.contains(&pid.to_string()), "{text}");
    assert!(first.contains(&local(last)), "no last event time:\n{text}");
    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], false, "{st}");
    assert_eq!(st["supervisor"]["pid"], pid, "{st}");
    assert_eq!(st["supervisor"]["stopped"], "cleanly", "{st}");
    assert_eq!(
        st["supervisor"]["last_event_at"].as_f64(),
        Some(last),
        "{st}"
    );
    assert_eq!(st["supervisor"]["panic"], Value::Null, "{st}");
    assert_children_gone(&text, &st, 3);
    assert!(!text.contains("given back"), "{text}");
}

#[test]
fn status_after_a_sigkill_says_died_and_names_the_stranded_job() {
    let (sb, sv, held) = killed_with_a_running_job();
    let last = last_ts(&sb);

    let text = status_text(&sb);
    let first = text.lines().next().unwrap_or("");
    assert!(first.contains("not running"), "{text}");
    assert!(first.contains("died"), "{text}");
    assert!(!first.contains("stopped cleanly"), "{text}");
    assert!(first.contains(&sv.pid().to_string()), "{text}");
    assert!(first.contains(&local(last)), "no last event time:\n{text}");
    let counts = text
        .lines()
        .find(|l| l.starts_with("jobs:"))
        .unwrap_or_else(|| panic!("no job counts:\n{text}"));
    assert!(counts.contains("running 1"), "{text}");
    let note = text
        .lines()
        .find(|l| l.contains("will be given back by the next run"))
        .unwrap_or_else(|| panic!("the stranded job is not named:\n{text}"));
    assert!(note.contains(&held.id.to_string()), "{note}");

    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], false, "{st}");
    assert_eq!(st["supervisor"]["pid"], sv.pid(), "{st}");
    assert_eq!(st["supervisor"]["stopped"], "died", "{st}");
    assert_eq!(
        st["supervisor"]["last_event_at"].as_f64(),
        Some(last),
        "{st}"
    );
    assert_eq!(st["supervisor"]["panic"], Value::Null, "{st}");
    assert_eq!(st["jobs"]["running"], 1, "{st}");
    assert_children_gone(&text, &st, 3);
}

#[test]
fn status_after_a_recorded_panic_says_crashed_with_its_message_and_location() {
    let (sb, sv, _held) = killed_with_a_running_job();
    // What a panicking supervisor writes just before it exits.
    let seq = sv.last_seq() + 1;
    let ts = (wall_now() * 1000.0).round() / 1000.0;
    let location = "bin/supervisor/run.rs:1:1";
    let line = json!({
        "seq": seq, "ts": ts, "event": "supervisor_panicked",
        "message": "boom", "location": location,
    });
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(sb.events_path())
        .unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
    drop(file);

    let text = status_text(&sb);
    let first = text.lines().next().unwrap_or("");
    assert!(first.contains("not running"), "{text}");
    assert!(first.contains("crashed"), "{text}");
    assert!(first.contains(&local(ts)), "no last event time:\n{text}");
    assert!(text.contains("boom"), "no panic message:\n{text}");
    assert!(text.contains(location), "no panic location:\n{text}");
    assert!(
        text.contains("will be given back by the next run"),
        "{text}"
    );

    let st = sb.status_json();
    assert_eq!(st["supervisor"]["running"], false, "{st}");
    assert_eq!(st["supervisor"]["stopped"], "crashed", "{st}");
    assert_eq!(st["supervisor"]["last_event_at"].as_f64(), Some(ts), "{st}");
    assert_eq!(
        st["supervisor"]["panic"],
        json!({"message": "boom", "location": location}),
        "{st}"
    );
    assert_children_gone(&text, &st, 3);
}

fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
