//! The parts of one job's dispatch that the contract makes every job pay, each measured
//! alone, for `scripts/bench depth`: it prints CPU time per job (user + system, of every
//! process involved), so that the sum can be set against the whole system's.
//!
//!     cargo run --release --example dispatch_parts -- store 10000   # claim + outcome
//!     cargo run --release --example dispatch_parts -- store 10000 URL   # on PostgreSQL
//!     cargo run --release --example dispatch_parts -- ipc 10000     # one message hop
//!
//! `store`: a SQLite store in a temporary directory, N named jobs queued, then N times
//! what the store does for one job: a claim with one credit, and its outcome stored. One
//! thread, no process, no IPC; three times: claims and outcomes through one connection,
//! each its own transaction; then through two (as when the supervisor stored outcomes
//! and the grabber claimed: each then finds the other's writes and reloads what it
//! cached); then as the grabber does now, each outcome stored in the transaction of the
//! next claim (`settle_and_claim`), the last line. With a PostgreSQL URL (an empty
//! database), the last way only; the CPU printed is then this process's only, and the
//! server's is the caller's to measure (`scripts/bench depth` takes the whole
//! machine's).
//!
//! `ipc`: N round trips of a small message (the size of `Claimed`) between this process
//! and a copy of it over ipc-channel, each side blocked in `recv` (as the hub and a
//! worker's reader are). Prints the CPU of one hop (half a round trip), both sides.

mod common;
use common::{cpu, now, true_jobs};

use std::collections::BTreeMap;
use std::time::Instant;

use ipc_channel::ipc::{self, IpcOneShotServer, IpcSender};
use nix::sys::resource::UsageWho;
use serde::{Deserialize, Serialize};
use supervisor_store::{
    AfterAttempt, JobStore, OutcomeKind, OutcomeRecord, PostgresStore, Route, Settle, Settled,
    SqliteStore,
};

/// How a claim and an outcome reach the store.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    /// One connection, a transaction each.
    One,
    /// Two connections, a transaction each.
    Two,
    /// The outcome in the transaction of the next claim.
    Settled,
}

fn sqlite(n: u64, way: Way) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jobs.db");
    let store = SqliteStore::open(&path).expect("open the store");
    let other = (way == Way::Two).then(|| SqliteStore::open(&path).expect("open again"));
    let what = match way {
        Way::One => "sqlite, 1 connection",
        Way::Two => "sqlite, 2 connections",
        Way::Settled => "sqlite, each outcome with the next claim",
    };
    store_loop(n, store, other, way, what);
}

fn postgres(n: u64, url: &str) {
    let store = PostgresStore::connect(url).expect("connect");
    store_loop(
        n,
        store,
        None,
        Way::Settled,
        "postgres, each outcome with the next claim, this process only",
    );
}

/// N jobs queued, then N times a claim of one through `store` and its outcome through
/// `other` (or `store`), or with the next claim.
fn store_loop<S: JobStore>(n: u64, mut store: S, mut other: Option<S>, way: Way, what: &str) {
    let me = store
        .register_instance("bench", std::process::id(), "bench", now())
        .expect("register");
    store.submit(&true_jobs(n), now()).expect("submit");
    let routes = vec![Route {
        group: "g".into(),
        matches: None,
    }];
    let outcome = OutcomeRecord {
        kind: OutcomeKind::Succeeded,
        exit_code: Some(0),
        signal: None,
        start_error: None,
        reason: None,
    };
    let (cpu0, t0) = (cpu(UsageWho::RUSAGE_SELF), Instant::now());
    let mut last: Option<Settle> = None;
    for _ in 0..n {
        let mut credits = BTreeMap::from([("g".to_string(), 1)]);
        let settle: Vec<Settle> = last.take().into_iter().collect();
        let (stored, claimed) = store
            .settle_and_claim(&settle, me, &routes, &mut credits, now())
            .expect("claim");
        assert!(
            stored.iter().all(|s| *s == Settled::Stored),
            "outcome refused"
        );
        let job = claimed.jobs.first().expect("a job to claim");
        if way == Way::Settled {
            last = Some(Settle {
                job: job.id,
                attempt: job.attempt,
                owner: me,
                outcome: outcome.clone(),
                next: AfterAttempt::Done,
                at: now(),
            });
            continue;
        }
        let recorder = other.as_mut().unwrap_or(&mut store);
        let stored = recorder
            .record_outcome(job.id, job.attempt, me, &outcome, AfterAttempt::Done, now())
            .expect("outcome");
        assert!(stored, "outcome refused");
    }
    if let Some(o) = last {
        assert_eq!(
            store.settle(&[o]).expect("the last outcome"),
            [Settled::Stored]
        );
    }
    let (cpu1, wall) = (cpu(UsageWho::RUSAGE_SELF), t0.elapsed().as_secs_f64());
    println!(
        "store ({what}): {:.1} µs CPU per job (claim + outcome; {n} jobs in {wall:.2} s)",
        (cpu1 - cpu0) / n as f64 * 1e6
    );
}

/// A message the size of the ones dispatch sends.
#[derive(Serialize, Deserialize)]
enum Msg {
    Hello(IpcSender<Msg>),
    Ping {
        job: i64,
        group: String,
        command: Vec<String>,
    },
    Stop,
}

fn ipc_parent(n: u64) {
    let (server, name) = IpcOneShotServer::<Msg>::new().expect("one-shot server");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["ipc-child", &name])
        .spawn()
        .expect("spawn the other side");
    let (from_child, hello) = server.accept().expect("accept");
    let Msg::Hello(to_child) = hello else {
        panic!("expected Hello")
    };
    let ping = |job| Msg::Ping {
        job,
        group: "x86_64".into(),
        command: vec!["/bin/true".into()],
    };
    let (cpu0, t0) = (cpu(UsageWho::RUSAGE_SELF), Instant::now());
    for i in 0..n as i64 {
        to_child.send(ping(i)).expect("send");
        from_child.recv().expect("recv");
    }
    let (cpu1, wall) = (cpu(UsageWho::RUSAGE_SELF), t0.elapsed().as_secs_f64());
    to_child.send(Msg::Stop).expect("stop");
    child.wait().expect("wait");
    // The child measured the same loop: its whole CPU, less its start (a few ms), is
    // well within the noise of N round trips; take it whole.
    let other = cpu(UsageWho::RUSAGE_CHILDREN);
    println!(
        "ipc: {:.1} µs CPU per message hop (both sides; {n} round trips in {wall:.2} s)",
        ((cpu1 - cpu0) + other) / (2 * n) as f64 * 1e6
    );
}

fn ipc_child(name: &str) {
    let to_parent = IpcSender::<Msg>::connect(name.to_string()).expect("connect");
    let (tx, rx) = ipc::channel::<Msg>().expect("channel");
    to_parent.send(Msg::Hello(tx)).expect("hello");
    while let Ok(Msg::Ping {
        job,
        group,
        command,
    }) = rx.recv()
    {
        to_parent
            .send(Msg::Ping {
                job,
                group,
                command,
            })
            .expect("pong");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = |i: usize| {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(10_000u64)
    };
    match args.first().map(String::as_str) {
        Some("store") => match args.get(2) {
            Some(url) => postgres(n(1), url),
            None => {
                sqlite(n(1), Way::One);
                sqlite(n(1), Way::Two);
                sqlite(n(1), Way::Settled);
            }
        },
        Some("ipc") => ipc_parent(n(1)),
        Some("ipc-child") => ipc_child(args.get(1).expect("a server name")),
        _ => {
            eprintln!("usage: dispatch_parts store [N [POSTGRES_URL]] | ipc [N]");
            std::process::exit(2);
        }
    }
}
