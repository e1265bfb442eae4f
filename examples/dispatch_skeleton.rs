//! The dispatch of the design with nothing else in it, for `scripts/bench depth`: how
//! fast jobs can go through the processes and hops the design card prescribes, so that
//! the whole system's rate can be set against it as well as against the spawn floor.
//!
//!     cargo run --release --example dispatch_skeleton -- 10000 4 [full|nostore|hops]
//!
//! What each job pays here, and nothing more: a supervisor process (a hub thread that
//! receives from every child into one crossbeam queue, and a loop that writes two JSON
//! lines per job to an events file), a grabber process (the job's outcome stored in the
//! transaction that claims the next job, `settle_and_claim` on the real SQLite store),
//! and W worker processes (the job spawned with the project's spawner, its output in a
//! log file of its own: a spare renamed in, and renamed back when the job wrote
//! nothing, as the worker does). Five messages a job over ipc-channel: grant (with the
//! last outcome) → claimed → job → started → ended. The loop sends to its children
//! directly, with no writer thread; the children have no reader thread, no heartbeat,
//! no timeout, no cancel, no journal, no log records: what they leave out is the
//! system's cost above this skeleton.
//!
//! `nostore`: the grabber hands out jobs from a counter and stores nothing (the cost of
//! the store is what `full` adds to it); `hops`: nor are there logs or an events file:
//! the processes and their five messages a job alone. The SQLite log is checkpointed as
//! the supervisor does it: off the grabber's path, by a thread of the supervisor.
//!
//! Prints jobs per second and the CPU time per job of everything (the supervisor, its
//! children and the jobs; user + system).

mod common;
use common::{cpu, now, true_jobs};

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ipc_channel::ipc::{
    self, IpcOneShotServer, IpcReceiver, IpcReceiverSet, IpcSelectionResult, IpcSender,
};
use nix::sys::resource::UsageWho;
use serde::{Deserialize, Serialize};
use supervisor_os::{wait_pid, Ended, JobCommand, Spawner};
use supervisor_store::{
    AfterAttempt, JobStore, OutcomeKind, OutcomeRecord, Route, Settle, SqliteStore,
};

/// What the supervisor sends its children.
#[derive(Serialize, Deserialize)]
enum Down {
    /// To the grabber: a credit for `worker`, with the outcome of its last job.
    Grant {
        worker: usize,
        settle: Vec<Settle>,
    },
    /// To a worker: run this job.
    Job {
        id: i64,
        attempt: u32,
        command: Vec<String>,
    },
    Stop,
}

/// What the children send the supervisor.
#[derive(Serialize, Deserialize)]
enum Up {
    Hello(IpcSender<Down>),
    /// From the grabber: the job claimed for `worker`, or none left.
    Claimed {
        worker: usize,
        job: Option<(i64, u32, Vec<String>)>,
    },
    Started {
        id: i64,
        pid: u32,
    },
    Ended {
        id: i64,
        attempt: u32,
        code: i32,
    },
}

fn connect(name: String) -> (IpcSender<Up>, IpcReceiver<Down>) {
    let up = IpcSender::<Up>::connect(name).expect("connect");
    let (tx, rx) = ipc::channel::<Down>().expect("channel");
    up.send(Up::Hello(tx)).expect("hello");
    (up, rx)
}

fn grabber(name: String, db: &Path, mode: Mode) {
    let (up, rx) = connect(name);
    if mode != Mode::Full {
        let (mut next, n): (i64, i64) = (1, db.display().to_string().parse().expect("N"));
        while let Ok(Down::Grant { worker, .. }) = rx.recv() {
            let job = (next <= n).then(|| (next, 1, vec!["/bin/true".to_string()]));
            next += 1;
            up.send(Up::Claimed { worker, job }).expect("send");
        }
        return;
    }
    let mut store = SqliteStore::open(db).expect("open the store");
    store.disable_autocheckpoint().expect("no autocheckpoint");
    let me = store
        .register_instance("skeleton", std::process::id(), "bench", now())
        .expect("register");
    let routes = vec![Route {
        group: "g".into(),
        matches: None,
    }];
    while let Ok(Down::Grant { worker, mut settle }) = rx.recv() {
        for s in &mut settle {
            s.owner = me;
        }
        let mut credits = BTreeMap::from([("g".to_string(), 1)]);
        let (_, claimed) = store
            .settle_and_claim(&settle, me, &routes, &mut credits, now())
            .expect("claim");
        let job = claimed
            .jobs
            .into_iter()
            .next()
            .map(|j| (j.id, j.attempt, j.command));
        up.send(Up::Claimed { worker, job }).expect("send");
    }
}

fn worker(name: String, logs: &Path, slot: usize, mode: Mode) {
    let (up, rx) = connect(name);
    let mut spawner = Spawner::new();
    let stdin = File::open("/dev/null").expect("/dev/null");
    let env: Vec<_> = std::env::vars_os().collect();
    let spare_path = logs.join(format!(".spare-{slot}"));
    let mut spare = Some(File::create(&spare_path).expect("spare log"));
    while let Ok(Down::Job {
        id,
        attempt,
        command,
    }) = rx.recv()
    {
        let path = logs.join(format!("{id}.log"));
        let log = match spare.take() {
            Some(f) if mode == Mode::Hops => f,
            Some(f) if supervisor_os::rename_noreplace(&spare_path, &path).unwrap_or(false) => f,
            _ => OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("log"),
        };
        let cmd = JobCommand {
            argv: &command,
            env: env.clone(),
            cwd: None,
            stdin: stdin.as_fd(),
            output: log.as_fd(),
            program: None,
            death_signal: supervisor_os::Sig::SIGKILL,
            umask: None,
        };
        let pid = spawner.spawn(&cmd).expect("spawn");
        up.send(Up::Started { id, pid }).expect("send");
        let code = match wait_pid(pid).expect("wait") {
            Ended::Code(c) => c,
            Ended::Signal(s) => 128 + s,
        };
        if mode == Mode::Hops
            || log.metadata().is_ok_and(|m| m.len() == 0)
                && std::fs::rename(&path, &spare_path).is_ok()
        {
            spare = Some(log);
        }
        up.send(Up::Ended { id, attempt, code }).expect("send");
    }
}

/// What the skeleton leaves out, beyond what it always does.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Full,
    NoStore,
    Hops,
}

fn supervisor(n: u64, workers: usize, mode: Mode) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("jobs.db");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs dir");
    {
        let mut store = SqliteStore::open(&db).expect("open the store");
        store.submit(&true_jobs(n), now()).expect("submit");
    }
    let exe = std::env::current_exe().expect("exe");
    // Child 0 is the grabber, 1..=W the workers.
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut procs = Vec::new();
    for child in 0..=workers {
        let (server, name) = IpcOneShotServer::<Up>::new().expect("one-shot server");
        let mode_arg = match mode {
            Mode::Full => "full",
            Mode::NoStore => "nostore",
            Mode::Hops => "hops",
        };
        let args: Vec<String> = if child == 0 {
            let source = match mode {
                Mode::Full => db.display().to_string(),
                _ => n.to_string(),
            };
            vec!["grabber".into(), name, source, mode_arg.into()]
        } else {
            let slot = child.to_string();
            vec![
                "worker".into(),
                name,
                logs.display().to_string(),
                slot,
                mode_arg.into(),
            ]
        };
        procs.push(
            std::process::Command::new(&exe)
                .args(&args)
                .spawn()
                .expect("spawn"),
        );
        let (rx, hello) = server.accept().expect("accept");
        let Up::Hello(tx) = hello else {
            panic!("expected Hello")
        };
        receivers.push(rx);
        senders.push(tx);
    }
    // The hub: every child's messages into one crossbeam queue.
    let (events, queue) = crossbeam_channel::unbounded::<(usize, Up)>();
    std::thread::spawn(move || {
        let mut set = IpcReceiverSet::new().expect("receiver set");
        let ids: BTreeMap<u64, usize> = receivers
            .into_iter()
            .enumerate()
            .map(|(child, rx)| (set.add(rx).expect("add"), child))
            .collect();
        let mut open = ids.len();
        while open > 0 {
            for result in set.select().expect("select") {
                match result {
                    IpcSelectionResult::MessageReceived(id, msg) => {
                        let msg: Up = msg.to().expect("decode");
                        if events.send((ids[&id], msg)).is_err() {
                            return;
                        }
                    }
                    IpcSelectionResult::ChannelClosed(_) => open -= 1,
                }
            }
        }
    });
    // The log's checkpoints, off the grabber's path, as the supervisor makes them (see
    // bin/supervisor/checkpointer.rs): passive every 200 outcomes, emptied past 16 MiB.
    let (checkpoint, asked) = crossbeam_channel::bounded::<()>(1);
    if mode == Mode::Full {
        let store = SqliteStore::open(&db).expect("open the store");
        std::thread::spawn(move || {
            for () in asked {
                if store.checkpoint().is_ok_and(|(log, _)| log >= 4096) {
                    let _ = store.checkpoint_truncate();
                }
            }
        });
    }
    let mut events_file = File::create(dir.path().join("events.jsonl")).expect("events file");
    let mut seq = 0u64;
    let mut event = |kind: &str, job: i64, worker: usize| {
        if mode == Mode::Hops {
            return;
        }
        seq += 1;
        let line = serde_json::json!({"seq": seq, "ts": now(), "event": kind, "job": job,
            "child": worker, "group": "g"});
        let mut bytes = serde_json::to_vec(&line).expect("json");
        bytes.push(b'\n');
        events_file.write_all(&bytes).expect("write");
    };
    let (cpu0, t0) = (
        cpu(UsageWho::RUSAGE_SELF) + cpu(UsageWho::RUSAGE_CHILDREN),
        Instant::now(),
    );
    let grant = |worker: usize, settle: Vec<Settle>| {
        senders[0]
            .send(Down::Grant { worker, settle })
            .expect("grant");
    };
    for w in 1..=workers {
        grant(w, Vec::new());
    }
    let (mut idle, mut done) = (0, 0u64);
    while idle < workers {
        let (child, msg) = queue.recv().expect("event");
        match msg {
            Up::Claimed {
                worker,
                job: Some((id, attempt, command)),
            } => senders[worker]
                .send(Down::Job {
                    id,
                    attempt,
                    command,
                })
                .expect("job"),
            Up::Claimed { job: None, .. } => idle += 1,
            Up::Started { id, .. } => event("job_started", id, child),
            Up::Ended { id, attempt, code } => {
                done += 1;
                if done % 200 == 0 {
                    let _ = checkpoint.try_send(());
                }
                event("job_finished", id, child);
                let kind = if code == 0 {
                    OutcomeKind::Succeeded
                } else {
                    OutcomeKind::Failed
                };
                let settle = Settle {
                    job: id,
                    attempt,
                    owner: 0,
                    outcome: OutcomeRecord {
                        kind,
                        exit_code: Some(code),
                        signal: None,
                        start_error: None,
                        reason: None,
                    },
                    next: AfterAttempt::Done,
                    at: now(),
                };
                grant(child, vec![settle]);
            }
            Up::Hello(_) => panic!("a second Hello"),
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    for tx in &senders {
        let _ = tx.send(Down::Stop);
    }
    for mut p in procs {
        p.wait().expect("wait");
    }
    let cpu1 = cpu(UsageWho::RUSAGE_SELF) + cpu(UsageWho::RUSAGE_CHILDREN);
    assert_eq!(done, n, "every job ran");
    println!(
        "{:.0} jobs/s ({n} jobs on {workers} workers in {wall:.2} s; {:.0} µs CPU per job, \
         supervisor, grabber, workers and jobs)",
        n as f64 / wall,
        (cpu1 - cpu0) / n as f64 * 1e6
    );
}

fn main() {
    // As every process of ours does (see there why).
    supervisor_os::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let mode = |a: String| match a.as_str() {
        "" | "full" => Mode::Full,
        "nostore" => Mode::NoStore,
        "hops" => Mode::Hops,
        other => {
            eprintln!("dispatch_skeleton: unknown mode {other:?} (full, nostore, hops)");
            std::process::exit(2);
        }
    };
    match arg(0).as_str() {
        "grabber" => grabber(arg(1), &PathBuf::from(arg(2)), mode(arg(3))),
        "worker" => worker(
            arg(1),
            &PathBuf::from(arg(2)),
            arg(3).parse().unwrap_or(0),
            mode(arg(4)),
        ),
        _ => {
            let n = arg(0).parse().unwrap_or(10_000);
            let workers = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
            supervisor(n, workers, mode(arg(2)))
        }
    }
}
