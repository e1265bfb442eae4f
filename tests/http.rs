//! The HTTP server (the contract's "HTTP" section), on the real binary, through `curl`:
//! reads match the CLI's `--json`, writes need the token and go through the verbs' paths,
//! the event stream replays and follows, a log follows its job, `/metrics` is valid
//! Prometheus text (checked by `promtool` where installed), bad requests get JSON 4xx,
//! and the config refuses what would expose it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::http::Api;
use crate::common::*;

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-token";

/// A sandbox with one group `g` of `workers` and the server on a free loopback port.
fn with_http(workers: u32, listen: &str) -> Sandbox {
    let sb = Sandbox::new(&json!({}));
    std::fs::write(sb.path().join("token"), format!("{TOKEN}\n")).unwrap();
    sb.write_config(&json!({
        "heartbeat": {"interval_s": 0.2, "timeout_s": 2},
        "shutdown_grace_s": 10,
        "groups": [group("g", workers)],
        "http": {"listen": listen, "token_file": "token"},
    }));
    sb
}

fn api(sb: &Sandbox) -> Api {
    Api::of(&sb.path().join("state"), Some(TOKEN))
}

fn wait_state(api: &Api, id: i64, state: &str) -> Value {
    let mut last = Value::Null;
    wait_until(T, || {
        last = api.get_json(&format!("/api/jobs/{id}"));
        last["state"] == state
    })
    .unwrap_or_else(|_| panic!("job {id} never became {state}: {last}"));
    last
}

#[test]
fn reads_match_the_cli_and_writes_need_the_token() {
    let sb = with_http(2, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);

    // Writes: 401 without the token or with a wrong one, nothing queued.
    let job = r#"{"command": ["sh", "-c", "echo hello"], "group": "g"}"#;
    let none = api.call("POST", "/api/jobs", Some(job.as_bytes()), false, &[]);
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(
        none.headers.contains("www-authenticate: bearer"),
        "{}",
        none.headers
    );
    assert!(
        none.error().contains("Authorization: Bearer"),
        "{}",
        none.body
    );
    let wrong = api.call(
        "POST",
        "/api/jobs",
        Some(job.as_bytes()),
        false,
        &["Authorization: Bearer nope"],
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(api.get_json("/api/jobs").as_array().unwrap().len(), 0);

    // With it: queued, run, and seen as the CLI sees it.
    let made = api.post("/api/jobs", job);
    assert_eq!(made.status, 201, "{}", made.body);
    let id = made.json()["ids"][0].as_i64().unwrap();
    let over_http = wait_state(&api, id, "succeeded");
    let cli = sb.job(id);
    for field in JOB_FIELDS {
        assert_eq!(over_http[field], cli[field], "{field}");
    }
    assert!(over_http["explain"][0]
        .as_str()
        .unwrap()
        .contains("succeeded"));
    assert_eq!(api.get(&format!("/api/jobs/{id}/log")).body, "hello\n");

    // An array is all or nothing, and says which job is bad.
    let bad = api.post(
        "/api/jobs",
        r#"[{"command": ["true"], "group": "g"}, {"command": [], "group": "g"}]"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.error().contains("job 2"), "{}", bad.body);
    let two = api.post(
        "/api/jobs",
        r#"[{"command": ["true"], "group": "g"}, {"command": ["true"], "tags": {"no": "group"}}]"#,
    );
    assert_eq!(two.status, 201, "{}", two.body);
    let warnings = two.json()["warnings"].clone();
    let runs = two.json()["ids"][0].as_i64().unwrap();
    wait_state(&api, runs, "succeeded");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("no group takes job 2 of 2"),
        "{warnings}"
    );

    // Lists, as `jobs --json` with the same filters.
    let listed = api.get_json("/api/jobs?state=succeeded&group=g&limit=1");
    let cli = sb.run(&[
        "jobs",
        "--json",
        "--state",
        "succeeded",
        "--group",
        "g",
        "--limit",
        "1",
    ]);
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(listed, cli);

    // Status, as `status --json` (and the groups the dashboard shows).
    let status = api.get_json("/api/status");
    let cli = sb.status_json();
    assert_eq!(status["supervisor"]["pid"], cli["supervisor"]["pid"]);
    assert_eq!(status["supervisor"]["running"], true);
    let pids = |v: &Value| -> Vec<Value> {
        v["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["pid"].clone())
            .collect()
    };
    assert_eq!(pids(&status), pids(&cli));
    assert_eq!(status["jobs"]["queued"], cli["jobs"]["queued"]);
    let g = &status["groups"][0];
    assert_eq!(g["name"], "g");
    assert_eq!(g["max_workers"], 2);
    assert_eq!(g["queued"], 0);
    assert_eq!(g["restarts_per_minute"].as_array().unwrap().len(), 60);
    assert_eq!(status["auth"]["reads_need_token"], false);

    sv.stop_cleanly();
}

#[test]
fn bad_requests_get_json_errors_and_change_nothing() {
    let sb = with_http(1, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    // (method, path, body, status, what the error says)
    type Case = (
        &'static str,
        &'static str,
        Option<Vec<u8>>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/jobs",
            Some(b"{not json".to_vec()),
            400,
            "JSON",
        ),
        ("POST", "/api/jobs", Some(b"[]".to_vec()), 400, "no jobs"),
        ("POST", "/api/jobs", Some(b"42".to_vec()), 400, "job object"),
        (
            "POST",
            "/api/jobs",
            Some(br#"{"command": ["true"], "priority": 1e30}"#.to_vec()),
            400,
            "priority",
        ),
        (
            "POST",
            "/api/jobs",
            Some(br#"{"command": ["true"], "cwd": "rel/dir"}"#.to_vec()),
            400,
            "absolute",
        ),
        ("POST", "/api/jobs", Some(vec![b' '; 2 << 20]), 413, "body"),
        (
            "POST",
            "/api/jobs",
            Some(vec![b'['; 100_000]),
            400,
            "nothing was queued",
        ),
        (
            "POST",
            "/api/jobs",
            Some(b"\xff\xfe{}".to_vec()),
            400,
            "nothing was queued",
        ),
        (
            "POST",
            "/api/jobs",
            Some(br#"{"command": ["a\u0000b"]}"#.to_vec()),
            400,
            "NUL",
        ),
        (
            "POST",
            "/api/jobs",
            Some(br#"{"command": ["true"], "timeout_s": -1}"#.to_vec()),
            400,
            "timeout_s",
        ),
        (
            "POST",
            "/api/jobs",
            Some(br#"{"command": ["true"], "after": [1e99]}"#.to_vec()),
            400,
            "after",
        ),
        ("GET", "/api/jobs/abc", None, 400, "job id"),
        ("GET", "/api/jobs/-1", None, 404, "unknown job"),
        ("GET", "/api/jobs/%FF", None, 400, "bad path"),
        (
            "POST",
            "/api/groups/%C0/pause",
            Some(Vec::new()),
            400,
            "bad path",
        ),
        ("GET", "/api/status?colour=red", None, 400, "colour"),
        ("GET", "/metrics?x=1", None, 400, "x"),
        ("POST", "/api/reload?now=1", Some(Vec::new()), 400, "now"),
        ("GET", "/api/jobs/99999", None, 404, "unknown job"),
        ("GET", "/api/jobs/99999/log", None, 404, "unknown job"),
        (
            "GET",
            "/api/jobs/99999/log?follow=maybe",
            None,
            400,
            "follow",
        ),
        (
            "POST",
            "/api/jobs/99999/cancel",
            Some(Vec::new()),
            404,
            "unknown job",
        ),
        (
            "POST",
            "/api/jobs/99999/retry",
            Some(Vec::new()),
            404,
            "unknown job",
        ),
        (
            "POST",
            "/api/groups/nope/pause",
            Some(Vec::new()),
            404,
            "no group",
        ),
        ("GET", "/api/jobs?limit=5000", None, 400, "limit"),
        ("GET", "/api/jobs?state=bogus", None, 400, "state"),
        ("GET", "/api/jobs?colour=red", None, 400, "colour"),
        ("GET", "/api/events?after=x", None, 400, "after"),
        ("GET", "/api/nothing", None, 404, "no such endpoint"),
        ("GET", "/api/reload", None, 405, "method"),
        ("DELETE", "/api/jobs", None, 405, "method"),
    ];
    for (method, path, body, status, says) in cases {
        let r = api.call(method, path, body.as_deref(), true, &[]);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert!(
            r.headers.contains("content-type: application/json"),
            "{method} {path}: {}",
            r.headers
        );
        assert!(r.error().contains(says), "{method} {path}: {}", r.body);
    }
    // A body declared too large is refused at once, not waited for: 2 bytes of a
    // declared 100 GB get their 413 (the read's timeout is the test's deadline).
    {
        use std::io::{Read, Write};
        let addr = api.base.trim_start_matches("http://").to_string();
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(T)).unwrap();
        write!(
            conn,
            "POST /api/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 99999999999\r\n\r\n{{}}"
        )
        .unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)
            .expect("an answer, and the connection closed, before the deadline");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains(r#"{"error":"the body is over"#), "{answer}");
    }
    // A token in the query is for a browser's event stream: it never authorizes a write.
    let r = api.call(
        "POST",
        &format!("/api/groups/g/pause?token={TOKEN}"),
        Some(b""),
        false,
        &[],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    // Through a proxy, loopback is not this host's users only: reads need the token.
    let proxied = api.call(
        "GET",
        "/api/status",
        None,
        false,
        &["X-Forwarded-For: 203.0.113.9"],
    );
    assert_eq!(proxied.status, 401, "{}", proxied.body);
    let proxied = api.call(
        "GET",
        "/api/status",
        None,
        true,
        &["Forwarded: for=203.0.113.9"],
    );
    assert_eq!(proxied.status, 200, "{}", proxied.body);
    // A page of another site that reached us through DNS rebinding is refused.
    let r = api.call(
        "GET",
        "/api/status",
        None,
        false,
        &["Host: evil.example:80"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // What the HTTP library refuses before any handler (it cannot parse it) is JSON too.
    let addr = api.base.trim_start_matches("http://");
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ] {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        c.write_all(raw).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        let what = String::from_utf8_lossy(raw);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{what:?}: {answer}");
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what:?}: not JSON ({e}): {answer}"));
        assert!(v["error"].is_string(), "{what:?}: {answer}");
    }
    // Nothing was queued by any of it, and the supervisor runs on.
    assert_eq!(api.get_json("/api/jobs").as_array().unwrap().len(), 0);
    assert_eq!(api.get_json("/api/status")["supervisor"]["running"], true);
    sv.stop_cleanly();
}

#[test]
fn cancel_retry_pause_resume_and_reload_go_through_the_verbs_paths() {
    let sb = with_http(1, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);

    let paused = api.post("/api/groups/g/pause", "");
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["paused"], json!(["g"]));
    assert_eq!(sb.status_json()["paused"], json!(["g"]));
    let held = sb.submit_held("a", &["--group", "g"]);
    let explain = api.get_json(&format!("/api/jobs/{}", held.id))["explain"].to_string();
    assert!(explain.contains("paused"), "{explain}");
    assert_eq!(
        api.post("/api/groups/g/resume", "").json()["paused"],
        json!([])
    );
    let pid = held.pid();
    wait_state(&api, held.id, "running");

    // Cancel a running job: stopping, then canceled; its process is gone.
    let c = api.post(&format!("/api/jobs/{}/cancel", held.id), "");
    assert_eq!(
        c.json(),
        json!({"id": held.id, "result": "stopping", "state": "running"})
    );
    wait_state(&api, held.id, "canceled");
    wait_until(T, || !alive(pid)).expect("the canceled job's process ended");
    let again = api.post(&format!("/api/jobs/{}/cancel", held.id), "");
    assert_eq!(again.json()["result"], "already_finished");

    // Retry: a canceled job runs again; a succeeded one cannot (409).
    let r = api.post(&format!("/api/jobs/{}/retry", held.id), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ids"], json!([held.id]));
    held.release();
    wait_state(&api, held.id, "succeeded");
    let no = api.post(&format!("/api/jobs/{}/retry", held.id), "");
    assert_eq!(no.status, 409, "{}", no.body);
    assert!(no.error().contains("succeeded"), "{}", no.body);

    // Reload: a bad config is rejected (422, the supervisor runs on), a good one taken.
    let good = std::fs::read_to_string(sb.config_path()).unwrap();
    std::fs::write(
        sb.config_path(),
        r#"{"groups": [{"name": "g", "max_workers": -1}]}"#,
    )
    .unwrap();
    let rejected = api.post("/api/reload", "");
    assert_eq!(rejected.status, 422, "{}", rejected.body);
    assert!(
        rejected.error().contains("max_workers"),
        "{}",
        rejected.body
    );
    let mut cfg: Value = serde_json::from_str(&good).unwrap();
    cfg["groups"][0]["max_workers"] = json!(2);
    sb.write_config(&cfg);
    let accepted = api.post("/api/reload", "");
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!(accepted.json()["generation"], 2);
    assert!(
        accepted.json()["changes"]
            .to_string()
            .contains("max_workers"),
        "{}",
        accepted.body
    );
    wait_until(T, || {
        api.get_json("/api/status")["groups"][0]["max_workers"] == 2
    })
    .expect("the server sees the new config");
    sv.stop_cleanly();
}

/// Lines of a `curl -N` of `url`, as they come.
fn stream(url: &str) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new("curl")
        .args(["-s", "-N", "--max-time", "60", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// The `data:` lines of an event stream until one satisfies `until`.
fn data_until(rx: &mpsc::Receiver<String>, until: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the stream never said it; it said {seen:?}"));
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            let done = until(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

#[test]
fn the_event_stream_replays_after_a_seq_then_follows_live() {
    let sb = with_http(1, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    sv.wait_event(T, |e| e["event"] == "child_ready" && e["role"] == "worker");
    let (mut curl, rx) = stream(&format!("{}/api/events?after=2", api.base));
    // The past, from seq 3 on, as the events file has it, line for line.
    let file = sb.events();
    let last = seq(file.last().unwrap());
    let replayed = data_until(&rx, |e| seq(e) == last);
    let expected: Vec<&Value> = file.iter().filter(|e| seq(e) > 2).collect();
    assert_eq!(replayed.iter().collect::<Vec<_>>(), expected);
    // Then what happens now.
    let id = sb.submit(&["--group", "g", "--", "true"]);
    let live = data_until(&rx, |e| e["event"] == "job_finished" && e["job_id"] == id);
    assert!(live
        .iter()
        .any(|e| e["event"] == "job_started" && e["job_id"] == id));
    let seqs: Vec<u64> = replayed.iter().chain(&live).map(seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no repeat: {seqs:?}"
    );
    let _ = curl.kill();
    let _ = curl.wait();

    // A reconnecting EventSource says where it was with Last-Event-ID.
    let r = Command::new("curl")
        .args(["-s", "-N", "--max-time", "2", "-H"])
        .arg(format!("Last-Event-ID: {}", last + 1))
        .arg(format!("{}/api/events", api.base))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(!text.contains(&format!("\"seq\":{},", last + 1)), "{text}");
    assert!(text.contains(&format!("\"seq\":{},", last + 2)), "{text}");
    sv.stop_cleanly();
}

#[test]
fn connections_held_open_by_clients_that_do_nothing_never_lock_the_api_out() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let sb = with_http(1, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    sv.wait_event(T, |e| e["event"] == "child_ready" && e["role"] == "worker");
    // An event stream, open before the flood: busy, so never closed to make room.
    let (mut curl, rx) = stream(&format!("{}/api/events", api.base));
    let addr = api.base.trim_start_matches("http://").to_string();
    // More connections than the server holds (256), sending nothing, then a few that
    // send half a request's headers and stop.
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut slow: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            c
        })
        .collect();
    // The API answers at once all the same: the connection idle longest makes room.
    let reply = api.get("/api/status");
    assert_eq!(reply.status, 200, "{}", reply.error());
    let id = sb.submit(&["--group", "g", "--", "true"]);
    wait_state(&api, id, "succeeded");
    data_until(&rx, |e| e["event"] == "job_finished" && e["job_id"] == id);
    // A request whose headers never come whole is closed (10 s after it began).
    let closed = |c: &mut TcpStream| {
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        }
    };
    wait_until(T, || slow.iter_mut().all(closed))
        .expect("half-sent requests are closed within 10 s");
    drop(silent);
    let _ = curl.kill();
    let _ = curl.wait();
    sv.stop_cleanly();
}

#[test]
fn the_event_stream_reads_rotated_files_for_what_came_before_the_current_one() {
    let sb = with_http(2, "127.0.0.1:0");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(sb.config_path()).unwrap()).unwrap();
    cfg["events"] = json!({"rotate_bytes": 4096, "keep": 5});
    sb.write_config(&cfg);
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    // Enough jobs for the events to rotate at least once.
    let ids: Vec<i64> = (0..20)
        .map(|_| sb.submit(&["--group", "g", "--", "true"]))
        .collect();
    for id in &ids {
        sb.wait_job(*id, &["succeeded"], T);
    }
    let rotated = sb.path().join("state/events.jsonl.1");
    assert!(rotated.exists(), "the events file rotated");
    let (mut curl, rx) = stream(&format!("{}/api/events?after=1", api.base));
    let last = *ids.last().unwrap();
    let seen = data_until(&rx, |e| e["event"] == "job_finished" && e["job_id"] == last);
    let seqs: Vec<u64> = seen.iter().map(seq).collect();
    assert_eq!(
        seqs[0], 2,
        "from just after seq 1, in the oldest file: {seqs:?}"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap across files: {seqs:?}"
    );
    let _ = curl.kill();
    let _ = curl.wait();
    sv.stop_cleanly();
}

#[test]
fn a_followed_log_streams_until_its_job_is_final() {
    let sb = with_http(1, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    let go = sb.path().join("go");
    let script = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
        go.display()
    );
    let id = sb.submit(&["--group", "g", "--", "sh", "-c", &script]);
    let (mut curl, rx) = stream(&format!("{}/api/jobs/{id}/log?follow=1", api.base));
    assert_eq!(rx.recv_timeout(T).unwrap(), "first");
    std::fs::write(&go, "").unwrap();
    assert_eq!(rx.recv_timeout(T).unwrap(), "second");
    // The job is final: the answer ends.
    let deadline = Instant::now() + T;
    while curl.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the followed log never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    sv.stop_cleanly();
}

/// `promtool`, if installed (Debian's `prometheus`).
fn promtool() -> Option<&'static str> {
    Command::new("promtool")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "promtool")
}

#[test]
fn metrics_count_jobs_workers_restarts_and_events_in_valid_prometheus_text() {
    let sb = with_http(2, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    let ok = sb.submit(&["--group", "g", "--", "true"]);
    let bad = sb.submit(&["--group", "g", "--max-attempts", "1", "--", "false"]);
    sb.wait_job(ok, &["succeeded"], T);
    sb.wait_job(bad, &["dead"], T);
    // A worker killed: one restart of group g.
    let ready = sv.wait_event(T, |e| e["event"] == "child_ready" && e["role"] == "worker");
    let pid = ready["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    sv.wait_event(T, |e| e["event"] == "child_restart_scheduled");
    let mut text = String::new();
    wait_until(T, || {
        text = api.get("/metrics").body;
        text.contains("supervisor_child_restarts_total{role=\"worker\",group=\"g\"} 1")
    })
    .unwrap_or_else(|_| panic!("no restart counted:\n{text}"));
    for line in [
        "supervisor_jobs{state=\"succeeded\",group=\"g\"} 1",
        "supervisor_jobs{state=\"dead\",group=\"g\"} 1",
        "supervisor_jobs{state=\"queued\",group=\"g\"} 0",
        "supervisor_queue_depth{group=\"g\"} 0",
        "supervisor_job_duration_seconds_count{group=\"g\",outcome=\"succeeded\"} 1",
        "supervisor_job_duration_seconds_count{group=\"g\",outcome=\"failed\"} 1",
        "supervisor_job_duration_seconds_bucket{group=\"g\",outcome=\"succeeded\",le=\"+Inf\"} 1",
        "supervisor_child_restarts_total{role=\"grabber\",group=\"\"} 0",
        "supervisor_events_total{event=\"job_finished\"} 2",
        "# TYPE supervisor_job_duration_seconds histogram",
        "# TYPE supervisor_workers gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    assert!(
        text.contains("supervisor_workers{group=\"g\",state=\"idle\"}"),
        "{text}"
    );
    match promtool() {
        None => {
            eprintln!("SKIP promtool check: promtool is not installed (Debian package prometheus)")
        }
        Some(tool) => {
            let mut child = Command::new(tool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    sv.stop_cleanly();
}

#[test]
fn off_loopback_every_read_needs_the_token_too() {
    let sb = with_http(1, "0.0.0.0:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    let r = api.get("/api/status");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(api.get("/metrics").status, 401);
    let with_header = api.call("GET", "/api/status", None, true, &[]);
    assert_eq!(with_header.status, 200);
    assert_eq!(with_header.json()["auth"]["reads_need_token"], true);
    assert_eq!(api.get(&format!("/api/status?token={TOKEN}")).status, 200);
    // The page itself loads, and asks for the token.
    let page = api.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.headers
            .contains("content-security-policy: default-src 'self'"),
        "{}",
        page.headers
    );
    sv.stop_cleanly();
}

#[test]
fn the_config_refuses_an_exposed_or_unusable_server() {
    let sb = Sandbox::new(&json!({}));
    let check = |http: Value| {
        sb.write_config(&json!({"groups": [group("g", 1)], "http": http}));
        let out = sb.run(&["check"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(json!({"listen": "0.0.0.0:7070"}));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("http.token_file") && err.contains("loopback"),
        "{err}"
    );
    let (code, err) = check(json!({"listen": "localhost:7070"}));
    assert_eq!(code, Some(2));
    assert!(err.contains("http.listen"), "{err}");
    let (code, err) = check(json!({"listen": "127.0.0.1:7070", "colour": 1}));
    assert_eq!(code, Some(2));
    assert!(err.contains("colour"), "{err}");
    assert_eq!(check(json!({"listen": "127.0.0.1:0"})).0, Some(0));

    // An empty or missing token file stops the start (exit 2, naming the key).
    std::fs::write(sb.path().join("empty"), "  \n").unwrap();
    for file in ["empty", "missing"] {
        sb.write_config(&json!({"groups": [group("g", 1)], "http": {"listen": "127.0.0.1:0", "token_file": file}}));
        let out = sb.run(&["run", "--until-empty"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("http.token_file"), "{err}");
    }
    // A port in use: exit 1, naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    sb.write_config(
        &json!({"groups": [group("g", 1)], "http": {"listen": format!("127.0.0.1:{port}")}}),
    );
    let out = sb.run(&["run", "--until-empty"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("http.listen") && err.contains(&port.to_string()),
        "{err}"
    );
}

/// A real Prometheus (Debian's `prometheus`), scraping the server every 200 ms, killed
/// and its data dir removed when dropped.
struct Prometheus {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Started on a free port, scraping `target` (`127.0.0.1:PORT`); `None` (said on
    /// stderr) where it is not installed.
    fn start(target: &str) -> Option<Prometheus> {
        let installed = Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            eprintln!(
                "SKIP real Prometheus: `prometheus` is not installed (Debian package prometheus)"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("sv-prom-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n\
                 scrape_configs:\n  - job_name: supervisor\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A port free now (Prometheus cannot be asked for any free one).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Some(Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// The value of the instant query `q`'s first sample, if it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-G", "--data-urlencode"])
            .arg(format!("query={q}"))
            .arg(format!("{}/api/v1/query", self.base))
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

#[test]
fn a_real_prometheus_scrapes_the_metrics_and_answers_promql() {
    let sb = with_http(1, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    let Some(prom) = Prometheus::start(api.base.trim_start_matches("http://")) else {
        sv.stop_cleanly();
        return;
    };
    let id = sb.submit(&["--group", "g", "--", "true"]);
    sb.wait_job(id, &["succeeded"], T);
    let q = r#"sum(supervisor_jobs{state="succeeded"}) + on() up{job="supervisor"}"#;
    let mut got = None;
    wait_until(Duration::from_secs(30), || {
        got = prom.query(q);
        got == Some(2.0)
    })
    .unwrap_or_else(|_| panic!("Prometheus never answered {q} with 2 (1 job + up): {got:?}"));
    let rate = "sum(supervisor_events_total{event=\"job_finished\"})";
    wait_until(T, || prom.query(rate) == Some(1.0)).expect("the events counter is scraped");
    drop(prom);
    sv.stop_cleanly();
}

/// The dashboard in headless Chromium (`tests/browser/dashboard.mjs`, Playwright): a job
/// seen queued, running and succeeded without a reload, a killed worker's restart, a
/// cancel from the page. Skips, saying why, without Node.js, Chromium or playwright-core
/// (`.ci/run` installs them). With `SUPERVISOR_SCREENSHOTS=DIR`, the page's screenshots
/// at two sizes go there (`docs/` is made so).
#[test]
fn the_dashboard_works_in_a_real_browser() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP the browser test: Node.js is not installed");
        return;
    }
    let sb = with_http(2, "127.0.0.1:0");
    let mut sv = sb.start(&[]);
    let api = api(&sb);
    let work = sb.path().join("browser");
    std::fs::create_dir(&work).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .env("SUPERVISOR_URL", &api.base)
        .env("SUPERVISOR_TOKEN", TOKEN)
        .env("SUPERVISOR_GROUP", "g")
        .env("SUPERVISOR_WORK_DIR", &work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = std::env::var_os("SUPERVISOR_SCREENSHOTS") {
        cmd.env("SCREENSHOT_DIR", dir);
    }
    let child = cmd.spawn().unwrap();
    // The script has its own deadlines; this one is for a hang of Node itself.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(180))
        .expect("the browser test ended within 3 minutes")
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(77) => eprintln!("SKIP the browser test: {}", said.trim()),
        Some(0) => eprintln!("{said}"),
        _ => panic!(
            "the browser test failed ({:?}):\n{said}\n{}",
            out.status,
            sv.dump()
        ),
    }
    sv.stop_cleanly();
}
