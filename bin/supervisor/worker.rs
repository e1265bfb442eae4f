//! The worker child: runs one job at a time as its own process (fresh process group,
//! stdin from /dev/null, only fds 0-2, output to the job's log) and reports its end.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crossbeam_channel::Sender;
use ipc_channel::ipc::IpcSender;
use supervisor_os::{Ended, Sig};

use crate::ipc;
use crate::wire::{FromChild, JobPayload, ToChild};

enum WorkerEv {
    Msg(ToChild),
    Closed,
    JobExit { job: i64, ended: Ended },
}

struct Running {
    job: i64,
    pgid: u32,
}

/// Run the worker until told to stop or the supervisor goes away.
pub fn main(ipc_name: &str, logs: PathBuf) -> i32 {
    let (tx, rx) = match ipc::connect(ipc_name) {
        Ok(x) => x,
        Err(e) => {
            log::error!("worker: cannot connect to the supervisor: {e}");
            return 1;
        }
    };
    let (ev_tx, ev_rx) = crossbeam_channel::unbounded::<WorkerEv>();
    let reader_tx = ev_tx.clone();
    let reader = std::thread::Builder::new()
        .name("ipc-reader".into())
        .spawn(move || loop {
            match rx.recv() {
                Ok(msg) => {
                    if reader_tx.send(WorkerEv::Msg(msg)).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = reader_tx.send(WorkerEv::Closed);
                    return;
                }
            }
        });
    if reader.is_err() || tx.send(FromChild::Ready).is_err() {
        return 1;
    }
    let mut running: Option<Running> = None;
    let mut stop_when_idle = false;
    for ev in ev_rx {
        match ev {
            WorkerEv::Msg(ToChild::Ping) => {
                if tx.send(FromChild::Pong).is_err() {
                    break;
                }
            }
            WorkerEv::Msg(ToChild::Stop) => {
                if running.is_none() {
                    return 0;
                }
                stop_when_idle = true;
            }
            WorkerEv::Msg(ToChild::Run(job)) => {
                if running.is_some() {
                    log::error!("worker: asked to run job {} while busy; refusing", job.id);
                    let _ = tx.send(FromChild::JobEnded {
                        job: job.id,
                        end: None,
                    });
                    continue;
                }
                running = start(&tx, &ev_tx, &logs, &job);
            }
            WorkerEv::Msg(ToChild::SignalJob { job, kill }) => {
                if let Some(r) = running.as_ref().filter(|r| r.job == job) {
                    let sig = if kill { Sig::SIGKILL } else { Sig::SIGTERM };
                    let _ = supervisor_os::signal_group(r.pgid, sig);
                }
            }
            WorkerEv::Msg(other) => log::error!("worker: unexpected message {other:?}"),
            WorkerEv::JobExit { job, ended } => {
                if let Some(r) = running.take() {
                    // Whatever the job left behind in its process group goes with it.
                    let _ = supervisor_os::signal_group(r.pgid, Sig::SIGKILL);
                }
                if tx
                    .send(FromChild::JobEnded {
                        job,
                        end: Some(ended.into()),
                    })
                    .is_err()
                {
                    break;
                }
                if stop_when_idle {
                    return 0;
                }
            }
            WorkerEv::Closed => break,
        }
    }
    // The supervisor is gone: so is the job.
    if let Some(r) = running {
        let _ = supervisor_os::signal_group(r.pgid, Sig::SIGKILL);
    }
    0
}

/// Start one attempt. On failure to start, the reason goes to the job's log and the
/// attempt ends at once (`end: None`); the worker lives on.
fn start(
    tx: &IpcSender<FromChild>,
    events: &Sender<WorkerEv>,
    logs: &Path,
    job: &JobPayload,
) -> Option<Running> {
    let log_path = logs.join(format!("{}.log", job.id));
    let result = (|| -> std::io::Result<std::process::Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let err = log.try_clone()?;
        let (program, args) = job
            .command
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(&job.env)
            .env("SUPERVISOR_JOB_ID", job.id.to_string())
            .env("SUPERVISOR_ATTEMPT", job.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        if let Some(cwd) = &job.cwd {
            cmd.current_dir(cwd);
        }
        supervisor_os::spawn_clean(&mut cmd, true)
    })();
    match result {
        Ok(mut child) => {
            let pid = child.id();
            let id = job.id;
            let _ = tx.send(FromChild::JobStarted { job: id, pid });
            let events = events.clone();
            let waiter = std::thread::Builder::new()
                .name(format!("wait-{id}"))
                .spawn(move || {
                    let ended = match child.wait() {
                        Ok(status) => supervisor_os::ended(status),
                        Err(_) => Ended::Code(-1),
                    };
                    let _ = events.send(WorkerEv::JobExit { job: id, ended });
                });
            if waiter.is_err() {
                let _ = supervisor_os::signal_group(pid, Sig::SIGKILL);
            }
            Some(Running { job: id, pgid: pid })
        }
        Err(e) => {
            let what = job.command.join(" ");
            if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(&log_path) {
                let _ = writeln!(log, "supervisor: cannot start `{what}`: {e}");
            }
            let _ = tx.send(FromChild::JobEnded {
                job: job.id,
                end: None,
            });
            None
        }
    }
}
