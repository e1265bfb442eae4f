//! The verbs when the supervisor is down or their output is closed early.
//!
//! Every verb but `run` ends quietly when its stdout is closed (`| head`): killed by
//! SIGPIPE or exit 0, never a panic.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
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
