//! The worker child: runs one job at a time as its own process (fresh process group,
//! stdin from /dev/null, only fds 0-2, output to the job's log) and reports its end.
//!
//! Two costs of this machine shape it. A `fork` of the worker costs more than the
//! `/bin/true` it would start, so jobs start through `supervisor_os::Spawner` (a vfork
//! that still sets PDEATHSIG). And creating a file (a new inode) costs about 0.7 ms of
//! CPU on ext4 here, so a log that stays empty is not kept: it becomes this worker's
//! spare, renamed to the next job's log name (a rename is 40 times cheaper). An
//! attempt that wrote nothing therefore leaves no log file.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crossbeam_channel::Sender;
use ipc_channel::ipc::IpcSender;
use supervisor_os::{Ended, JobCommand, Sig, Spawner};

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
    log: File,
    log_path: PathBuf,
}

/// The job logs of one worker, with its spare: an empty log file kept open for reuse.
struct Logs {
    dir: PathBuf,
    spare_path: PathBuf,
    spare: Option<File>,
}

impl Logs {
    fn new(dir: PathBuf, group: &str, slot: u32) -> Logs {
        let spare_path = dir.join(format!(".spare-{group}-{slot}"));
        // A predecessor in this slot may have left its spare: reuse it if still empty.
        let spare = OpenOptions::new()
            .append(true)
            .open(&spare_path)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.len() == 0));
        Logs {
            dir,
            spare_path,
            spare,
        }
    }

    /// The log of `job`, opened for appending: the earlier attempts' log if there is
    /// one, else the spare renamed to it, else a new file.
    fn open(&mut self, job: i64) -> std::io::Result<(File, PathBuf)> {
        let path = self.dir.join(format!("{job}.log"));
        if self.spare.is_some() {
            match supervisor_os::rename_noreplace(&self.spare_path, &path) {
                Ok(true) => return Ok((self.spare.take().expect("checked"), path)),
                Ok(false) => {} // a retry: append to the log of the earlier attempts
                Err(e) => {
                    log::warn!("worker: cannot reuse the spare log: {e}");
                    self.spare = None;
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok((file, path))
    }

    /// The job is over: a log it left empty becomes the spare.
    fn done(&mut self, log: File, path: &Path) {
        if self.spare.is_some() || !log.metadata().is_ok_and(|m| m.len() == 0) {
            return;
        }
        if std::fs::rename(path, &self.spare_path).is_ok() {
            self.spare = Some(log);
        }
    }
}

/// What every job's environment starts from: the worker's own, minus our two names.
fn base_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| k != "SUPERVISOR_JOB_ID" && k != "SUPERVISOR_ATTEMPT")
        .collect()
}

/// The process group of the job running now (0: none), for the SIGTERM thread.
static JOB_PGID: AtomicU32 = AtomicU32::new(0);

/// SIGTERM (the death signal the supervisor gives its workers, or an operator's kill):
/// take the job's whole process group down, then go. A thread of its own does it, so
/// that it happens whatever the main loop is doing. The job's own death signal only
/// reaches the job's process, not what that process started.
fn start_sigterm_thread() -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])?;
    std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let pgid = JOB_PGID.load(Ordering::SeqCst);
                if pgid != 0 {
                    let _ = supervisor_os::signal_group(pgid, Sig::SIGKILL);
                }
                std::process::exit(1);
            }
        })?;
    Ok(())
}

/// Run the worker until told to stop or the supervisor goes away.
pub fn main(ipc_name: &str, logs: PathBuf, group: &str, slot: u32) -> i32 {
    if let Err(e) = start_sigterm_thread() {
        log::error!("worker: cannot handle SIGTERM: {e}");
        return 1;
    }
    let (tx, rx) = match ipc::connect(ipc_name) {
        Ok(x) => x,
        Err(e) => {
            log::error!("worker: cannot connect to the supervisor: {e}");
            return 1;
        }
    };
    let devnull = match File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            log::error!("worker: cannot open /dev/null: {e}");
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
    // One long-lived thread waits for each job in turn (no thread per job).
    let (wait_tx, wait_rx) = crossbeam_channel::unbounded::<(i64, u32)>();
    let exit_tx = ev_tx.clone();
    let waiter = std::thread::Builder::new()
        .name("job-waiter".into())
        .spawn(move || {
            for (job, pid) in wait_rx {
                let ended = supervisor_os::wait_pid(pid).unwrap_or(Ended::Code(-1));
                if exit_tx.send(WorkerEv::JobExit { job, ended }).is_err() {
                    return;
                }
            }
        });
    if reader.is_err() || waiter.is_err() || tx.send(FromChild::Ready).is_err() {
        return 1;
    }
    let mut w = Worker {
        tx,
        wait_tx,
        spawner: Spawner::new(),
        devnull,
        env: base_env(),
        logs: Logs::new(logs, group, slot),
    };
    let mut running: Option<Running> = None;
    let mut stop_when_idle = false;
    for ev in ev_rx {
        match ev {
            WorkerEv::Msg(ToChild::Ping) => {
                if w.tx.send(FromChild::Pong).is_err() {
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
                    let _ = w.tx.send(FromChild::JobEnded {
                        job: job.id,
                        end: None,
                    });
                    continue;
                }
                running = w.start(&job);
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
                    JOB_PGID.store(0, Ordering::SeqCst);
                    w.logs.done(r.log, &r.log_path);
                }
                if w.tx
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

struct Worker {
    tx: IpcSender<FromChild>,
    wait_tx: Sender<(i64, u32)>,
    spawner: Spawner,
    devnull: File,
    env: Vec<(OsString, OsString)>,
    logs: Logs,
}

impl Worker {
    /// Start one attempt. On failure to start, the reason goes to the job's log and
    /// the attempt ends at once (`end: None`); the worker lives on.
    fn start(&mut self, job: &JobPayload) -> Option<Running> {
        let fail = |w: &Worker, log: Option<&mut File>, why: String| {
            let what = job.command.join(" ");
            match log {
                Some(log) => {
                    let _ = writeln!(log, "supervisor: cannot start `{what}`: {why}");
                }
                None => log::error!("worker: job {}: cannot start `{what}`: {why}", job.id),
            }
            let _ = w.tx.send(FromChild::JobEnded {
                job: job.id,
                end: None,
            });
            None
        };
        let (mut log, log_path) = match self.logs.open(job.id) {
            Ok(x) => x,
            Err(e) => return fail(self, None, format!("cannot open its log: {e}")),
        };
        let mut env = self.env.clone();
        let ours = [
            ("SUPERVISOR_JOB_ID".to_string(), job.id.to_string()),
            ("SUPERVISOR_ATTEMPT".to_string(), job.attempt.to_string()),
        ];
        for (k, v) in job.env.iter().chain(ours.iter().map(|(k, v)| (k, v))) {
            match env.iter_mut().find(|(ek, _)| ek == k.as_str()) {
                Some(slot) => slot.1 = v.into(),
                None => env.push((k.into(), v.into())),
            }
        }
        let cmd = JobCommand {
            argv: &job.command,
            env,
            cwd: job.cwd.as_deref().map(Path::new),
            stdin: self.devnull.as_fd(),
            output: log.as_fd(),
        };
        match self.spawner.spawn(&cmd) {
            Ok(pid) => {
                JOB_PGID.store(pid, Ordering::SeqCst);
                let _ = self.tx.send(FromChild::JobStarted { job: job.id, pid });
                if self.wait_tx.send((job.id, pid)).is_err() {
                    let _ = supervisor_os::signal_group(pid, Sig::SIGKILL);
                }
                Some(Running {
                    job: job.id,
                    pgid: pid,
                    log,
                    log_path,
                })
            }
            Err(e) => fail(self, Some(&mut log), e.to_string()),
        }
    }
}
