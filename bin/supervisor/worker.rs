//! The worker child: runs one job at a time as its own process (fresh process group,
//! stdin from /dev/null, only fds 0-2, output to the job's log) and reports its end.
//!
//! Two costs of this machine shape it. A `fork` of the worker costs more than the
//! `/bin/true` it would start, so jobs start through `supervisor_os::Spawner` (a vfork
//! that still sets PDEATHSIG). And creating a file (a new inode) costs about 0.7 ms of
//! CPU on ext4 here, so a log that stays empty is not kept: it becomes this worker's
//! spare, renamed to the next job's log name (a rename is 40 times cheaper). An
//! attempt that wrote nothing therefore leaves no log file.
//!
//! No process of a job outlives its attempt. The worker is a child subreaper: whatever
//! the job starts and leaves (a `setsid` daemon, a double fork) becomes the worker's own
//! child when its parent ends. Once the job's main process has ended, every process left
//! below the worker gets SIGTERM and, [`STRAGGLER_GRACE`] later, SIGKILL; only when none
//! is left does the worker report the attempt's end (and take the next job). One
//! `waitpid` tells that none is left, so a job that leaves nothing costs nothing more.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use ipc_channel::ipc::IpcSender;
use supervisor_os::{Ended, JobCommand, Sig, Spawner};

use crate::ipc;
use crate::wire::{FromChild, JobPayload, ToChild};

/// How long the processes a job left behind have between SIGTERM and SIGKILL.
const STRAGGLER_GRACE: Duration = Duration::from_secs(5);

/// How often, once they have been SIGKILLed, the worker looks for stragglers again (one
/// that was forking may have left another).
const KILL_AGAIN: Duration = Duration::from_millis(50);

enum WorkerEv {
    Msg(ToChild),
    Closed,
    /// The job's main process ended, `ran_for` after its spawn.
    JobExit {
        job: i64,
        ended: Ended,
        ran_for: Duration,
    },
    /// No child of the worker is left: every straggler is gone.
    AllReaped,
}

/// What the waiter thread waits for.
enum WaitFor {
    /// The job's main process, spawned at `since`.
    Job { job: i64, pid: u32, since: Instant },
    /// Every child left (the job's stragglers, handed to us as their parents ended).
    Rest,
}

/// An attempt whose main process has ended, waiting for what it left behind to go.
struct Cleanup {
    job: i64,
    ended: Ended,
    ran_for: Duration,
    /// When the stragglers get SIGKILL (they got SIGTERM when this began).
    kill_at: Instant,
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

/// What every job's environment starts from: the worker's own, minus our names.
fn base_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k != "SUPERVISOR_JOB_ID" && k != "SUPERVISOR_ATTEMPT" && k != "SUPERVISOR_JOB_UMASK"
        })
        .collect()
}

/// The umask jobs start with: the one `supervisor run` was started with, which it passes
/// down in `SUPERVISOR_JOB_UMASK` (octal).
fn job_umask() -> Option<u32> {
    let text = std::env::var("SUPERVISOR_JOB_UMASK").ok()?;
    u32::from_str_radix(&text, 8).ok().filter(|m| *m <= 0o777)
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
                // And whatever left the job's process group: all of it is below us.
                supervisor_os::kill_descendants(100);
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
    if let Err(e) = supervisor_os::become_subreaper() {
        log::error!("worker: cannot become a child subreaper: {e}");
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
    let (wait_tx, wait_rx) = crossbeam_channel::unbounded::<WaitFor>();
    let exit_tx = ev_tx.clone();
    let waiter = std::thread::Builder::new()
        .name("job-waiter".into())
        .spawn(move || {
            for what in wait_rx {
                let ev = match what {
                    WaitFor::Job { job, pid, since } => {
                        let ended = supervisor_os::wait_pid(pid).unwrap_or(Ended::Code(-1));
                        WorkerEv::JobExit {
                            job,
                            ended,
                            ran_for: since.elapsed(),
                        }
                    }
                    WaitFor::Rest => {
                        supervisor_os::reap_until_none();
                        WorkerEv::AllReaped
                    }
                };
                if exit_tx.send(ev).is_err() {
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
    let mut cleanup: Option<Cleanup> = None;
    let mut stop_when_idle = false;
    loop {
        let ev = match &cleanup {
            None => ev_rx.recv().ok(),
            Some(c) => {
                let wait = c.kill_at.saturating_duration_since(Instant::now());
                match ev_rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                    Ok(ev) => Some(ev),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        // The grace is over: SIGKILL what is left, and look again soon.
                        kill_stragglers(Sig::SIGKILL);
                        if let Some(c) = cleanup.as_mut() {
                            c.kill_at = Instant::now() + KILL_AGAIN;
                        }
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some(ev) = ev else { break };
        match ev {
            WorkerEv::Msg(ToChild::Ping) => {
                if w.tx.send(FromChild::Pong).is_err() {
                    break;
                }
            }
            WorkerEv::Msg(ToChild::Stop) => {
                if running.is_none() && cleanup.is_none() {
                    return 0;
                }
                stop_when_idle = true;
            }
            WorkerEv::Msg(ToChild::Run(job)) => {
                if running.is_some() || cleanup.is_some() {
                    log::error!("worker: asked to run job {} while busy; refusing", job.id);
                    let _ = w.tx.send(FromChild::JobEnded {
                        job: job.id,
                        end: None,
                        ran_for_s: None,
                        start_error: Some("its worker was busy".into()),
                    });
                    continue;
                }
                running = w.start(&job);
            }
            WorkerEv::Msg(ToChild::SignalJob { job, kill }) => {
                let sig = if kill { Sig::SIGKILL } else { Sig::SIGTERM };
                if let Some(r) = running.as_ref().filter(|r| r.job == job) {
                    let _ = supervisor_os::signal_group(r.pgid, sig);
                } else if cleanup.as_ref().is_some_and(|c| c.job == job) && kill {
                    // Its main process is gone; what it left goes now.
                    kill_stragglers(Sig::SIGKILL);
                }
            }
            WorkerEv::Msg(other) => log::error!("worker: unexpected message {other:?}"),
            WorkerEv::JobExit {
                job,
                ended,
                ran_for,
            } => {
                if let Some(r) = running.take() {
                    JOB_PGID.store(0, Ordering::SeqCst);
                    w.logs.done(r.log, &r.log_path);
                }
                // Whatever the job left behind, in its process group or not, goes with
                // it: SIGTERM now, SIGKILL after the grace.
                if supervisor_os::reap_leaving_any() {
                    kill_stragglers(Sig::SIGTERM);
                    if w.wait_tx.send(WaitFor::Rest).is_err() {
                        break;
                    }
                    cleanup = Some(Cleanup {
                        job,
                        ended,
                        ran_for,
                        kill_at: Instant::now() + STRAGGLER_GRACE,
                    });
                    continue;
                }
                if !w.report_end(job, ended, ran_for) {
                    break;
                }
                if stop_when_idle {
                    return 0;
                }
            }
            WorkerEv::AllReaped => {
                let Some(c) = cleanup.take() else { continue };
                if !w.report_end(c.job, c.ended, c.ran_for) {
                    break;
                }
                if stop_when_idle {
                    return 0;
                }
            }
            WorkerEv::Closed => break,
        }
    }
    // The supervisor is gone: so is the job, and all it started.
    if let Some(r) = running {
        let _ = supervisor_os::signal_group(r.pgid, Sig::SIGKILL);
    }
    supervisor_os::kill_descendants(100);
    0
}

/// Signal every process below this worker: what a job left behind once its main process
/// ended (all of it is ours to reap, as a subreaper).
fn kill_stragglers(sig: Sig) {
    for pid in supervisor_os::descendants(std::process::id()) {
        let _ = supervisor_os::signal_pid(pid, sig);
    }
}

struct Worker {
    tx: IpcSender<FromChild>,
    wait_tx: Sender<WaitFor>,
    spawner: Spawner,
    devnull: File,
    env: Vec<(OsString, OsString)>,
    logs: Logs,
}

impl Worker {
    /// Tell the supervisor the attempt is over; false if it is gone.
    fn report_end(&self, job: i64, ended: Ended, ran_for: Duration) -> bool {
        self.tx
            .send(FromChild::JobEnded {
                job,
                end: Some(ended.into()),
                ran_for_s: Some(ran_for.as_secs_f64()),
                start_error: None,
            })
            .is_ok()
    }

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
                ran_for_s: None,
                start_error: Some(format!("cannot start `{what}`: {why}")),
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
            program: None,
            death_signal: Sig::SIGKILL,
            // The supervisor keeps its state private (umask 077); a job gets the umask
            // the supervisor was started with.
            umask: job_umask(),
        };
        let since = Instant::now();
        match self.spawner.spawn(&cmd) {
            Ok(pid) => {
                JOB_PGID.store(pid, Ordering::SeqCst);
                let _ = self.tx.send(FromChild::JobStarted { job: job.id, pid });
                let wait = WaitFor::Job {
                    job: job.id,
                    pid,
                    since,
                };
                if self.wait_tx.send(wait).is_err() {
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
