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
//!
//! The worker keeps the supervisor's privileges; the job drops them. A group's `user`
//! is switched to in the job's own process, just before `exec` (with its `rlimits` and
//! `nice`, see `supervisor_os::JobSetup`), so that the worker can still signal and reap
//! everything the job leaves behind, whoever it runs as, and open the job's log in the
//! private state dir. The log is handed to the job as fds 1 and 2 and given to the
//! job's user, so that the job can also reopen it (`echo >/dev/stderr`); the user still
//! cannot reach it by its path (`logs/` is the supervisor's, `0700`). Where the
//! supervisor has a delegated cgroup v2 (`supervisor_os::cgroup`), a job whose group
//! sets `memory_max_bytes` or `cpu_max` runs in a cgroup of its own, removed once the
//! job's processes are gone; a job the OOM killer took down has it said in its log.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use ipc_channel::ipc::IpcSender;
use supervisor_config::JobProcess;
use supervisor_os::cgroup::{Delegated, JobCgroup};
use supervisor_os::{Ended, JobCommand, JobSetup, Sig, Spawner};

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
    /// Why it ended, beyond its exit status (the OOM killer), if known.
    reason: Option<String>,
    /// When the stragglers get SIGKILL (they got SIGTERM when this began).
    kill_at: Instant,
}

struct Running {
    job: i64,
    pgid: u32,
    log: File,
    log_path: PathBuf,
    /// The log was given to the job's user (to be taken back if it becomes the spare).
    log_given: bool,
    /// The job's own cgroup, with its `memory_max_bytes`.
    cgroup: Option<(JobCgroup, Option<u64>)>,
}

/// Whether this worker can give jobs cgroups of their own: found out at the first job
/// that asks for one.
enum Cgroups {
    Unknown,
    Usable(Delegated),
    /// Why not; said once.
    Unusable,
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
    fn open(&mut self, job: i64, attempt: u32) -> std::io::Result<(File, PathBuf)> {
        let path = crate::joblog::log_path(&self.dir, job);
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
        // A retry appends to the earlier attempts' output: say where this one begins.
        let offset = file.metadata()?.len();
        crate::joblog::note_attempt_start(&self.dir, job, attempt, offset)?;
        Ok((file, path))
    }

    /// The job is over: a log it left empty becomes the spare (ours again, if it was
    /// given to the job's user).
    fn done(&mut self, log: File, path: &Path, given: bool) {
        if self.spare.is_some() || !log.metadata().is_ok_and(|m| m.len() == 0) {
            return;
        }
        if given
            && give(
                &log,
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
            .is_err()
        {
            return;
        }
        if std::fs::rename(path, &self.spare_path).is_ok() {
            self.spare = Some(log);
        }
    }
}

/// Make `file` belong to `uid`/`gid`.
fn give(file: &File, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))
}

/// What every job's environment starts from: the worker's own, minus our names.
fn base_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k != "SUPERVISOR_JOB_ID"
                && k != "SUPERVISOR_ATTEMPT"
                && k != "SUPERVISOR_JOB_UMASK"
                && k != crate::ipc::CHILD_VAR
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
        group: group.to_string(),
        cgroups: Cgroups::Unknown,
        spent_cgroups: Vec::new(),
        // Started with room to spare after the title (see `ipc::spawn`).
        title: supervisor_os::Title::of_this_process().ok(),
        idle_title: format!("supervisor: worker {group}/{slot}"),
    };
    w.show(None);
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
                        reason: None,
                    });
                    continue;
                }
                running = w.start(&job);
                if running.is_some() {
                    w.show(Some(job.id));
                }
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
                let mut reason = None;
                if let Some(mut r) = running.take() {
                    JOB_PGID.store(0, Ordering::SeqCst);
                    if let Some((cgroup, memory_max)) = r.cgroup.take() {
                        reason = note_oom(&mut r.log, &cgroup, memory_max);
                        w.spent_cgroups.push(cgroup);
                    }
                    w.logs.done(r.log, &r.log_path, r.log_given);
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
                        reason,
                        kill_at: Instant::now() + STRAGGLER_GRACE,
                    });
                    continue;
                }
                if !w.report_end(job, ended, ran_for, reason) {
                    break;
                }
                if stop_when_idle {
                    return 0;
                }
            }
            WorkerEv::AllReaped => {
                let Some(c) = cleanup.take() else { continue };
                if !w.report_end(c.job, c.ended, c.ran_for, c.reason) {
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
    if let Some(mut r) = running {
        let _ = supervisor_os::signal_group(r.pgid, Sig::SIGKILL);
        if let Some((cgroup, _)) = r.cgroup.take() {
            w.spent_cgroups.push(cgroup);
        }
    }
    supervisor_os::kill_descendants(100);
    w.remove_cgroups();
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
    group: String,
    cgroups: Cgroups,
    /// Cgroups of attempts that ended, to remove once their processes are gone (and
    /// again later, if one still held a process then).
    spent_cgroups: Vec<JobCgroup>,
    /// What `ps` shows of us: `supervisor: worker G/N`, and ` job ID` while busy.
    title: Option<supervisor_os::Title>,
    idle_title: String,
}

impl Worker {
    /// Say in our title which job we run (`None`: idle).
    fn show(&self, job: Option<i64>) {
        if let Some(t) = &self.title {
            match job {
                Some(id) => t.set(&format!("{} job {id}", self.idle_title)),
                None => t.set(&self.idle_title),
            }
        }
    }
}

/// Say in the job's log that the OOM killer acted in its cgroup, and return it as the
/// attempt's reason (the job's `reason`, and `job_finished`'s).
fn note_oom(log: &mut File, cgroup: &JobCgroup, memory_max: Option<u64>) -> Option<String> {
    let kills = cgroup.oom_kills();
    if kills == 0 {
        return None;
    }
    let limit = memory_max.map_or(String::new(), |b| format!(" (memory_max_bytes {b})"));
    let reason = format!(
        "killed for its memory limit{limit}: the OOM killer acted {kills} time(s) in its \
         cgroup {}",
        cgroup.dir().display()
    );
    let _ = writeln!(log, "supervisor: the job was {reason}");
    Some(reason)
}

impl Worker {
    /// Tell the supervisor the attempt is over (every process of it is gone: so can its
    /// cgroup be); false if it is gone.
    fn report_end(
        &mut self,
        job: i64,
        ended: Ended,
        ran_for: Duration,
        reason: Option<String>,
    ) -> bool {
        self.remove_cgroups();
        self.show(None);
        self.tx
            .send(FromChild::JobEnded {
                job,
                end: Some(ended.into()),
                ran_for_s: Some(ran_for.as_secs_f64()),
                start_error: None,
                reason,
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
                reason: None,
            });
            None
        };
        let (mut log, log_path) = match self.logs.open(job.id, job.attempt) {
            Ok(x) => x,
            Err(e) => return fail(self, None, format!("cannot open its log: {e}")),
        };
        let process = &job.process;
        let run_as = process.run_as.as_ref();
        // The job's user may write its log through fds 1 and 2 in any case; owning it,
        // it may also reopen it (`/dev/stderr`).
        let log_given = match run_as {
            Some(u) => match give(&log, u.uid, u.gid) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!(
                        "worker: cannot give job {}'s log to {}: {e}",
                        job.id,
                        u.user
                    );
                    false
                }
            },
            None => false,
        };
        let mut env = self.env.clone();
        let ours = [
            ("SUPERVISOR_JOB_ID".to_string(), job.id.to_string()),
            ("SUPERVISOR_ATTEMPT".to_string(), job.attempt.to_string()),
        ];
        // The user's own (a job's `--env` still wins), then the job's, then ours.
        let user_env: Vec<(String, String)> = run_as
            .map(|u| {
                [("HOME", &u.home), ("USER", &u.user), ("LOGNAME", &u.user)]
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .to_vec()
            })
            .unwrap_or_default();
        for (k, v) in user_env
            .iter()
            .map(|(k, v)| (k, v))
            .chain(job.env.iter())
            .chain(ours.iter().map(|(k, v)| (k, v)))
        {
            match env.iter_mut().find(|(ek, _)| ek == k.as_str()) {
                Some(slot) => slot.1 = v.into(),
                None => env.push((k.into(), v.into())),
            }
        }
        let cgroup = match self.job_cgroup(job.id, job.attempt, process) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                if log_given {
                    let _ = give(
                        &log,
                        nix::unistd::geteuid().as_raw(),
                        nix::unistd::getegid().as_raw(),
                    );
                }
                return fail(self, Some(&mut log), format!("cannot make its cgroup: {e}"));
            }
        };
        let limits = process.limits();
        let credentials = run_as.map(supervisor_config::RunAs::credentials);
        let setup = JobSetup {
            cgroup_procs: cgroup.as_ref().map(JobCgroup::procs),
            limits: &limits,
            nice: process.nice,
            credentials: credentials.as_ref(),
        };
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
        match self.spawner.spawn_with(&cmd, &setup) {
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
                    log_given,
                    cgroup: cgroup.map(|c| (c, process.memory_max_bytes)),
                })
            }
            Err(e) => {
                if let Some(c) = cgroup {
                    self.spent_cgroups.push(c);
                    self.remove_cgroups();
                }
                fail(self, Some(&mut log), e.to_string())
            }
        }
    }

    /// The cgroup of one attempt of a job whose group sets `memory_max_bytes` or
    /// `cpu_max`, where this supervisor has a delegated cgroup; none otherwise (said
    /// once per worker when the limits cannot be enforced).
    fn job_cgroup(
        &mut self,
        job: i64,
        attempt: u32,
        process: &JobProcess,
    ) -> std::io::Result<Option<JobCgroup>> {
        let limits = process.cgroup_limits();
        if !limits.any() {
            return Ok(None);
        }
        if matches!(self.cgroups, Cgroups::Unknown) {
            self.cgroups = match supervisor_os::cgroup::detect().and_then(|d| {
                d.enable_controllers()
                    .map(|()| d)
                    .map_err(|e| e.to_string())
            }) {
                Ok(delegated) => Cgroups::Usable(delegated),
                Err(why) => {
                    log::warn!(
                        "worker {}: cgroups are not in use, memory_max_bytes and cpu_max \
                         are not enforced: {why}",
                        self.group
                    );
                    Cgroups::Unusable
                }
            };
        }
        match &self.cgroups {
            Cgroups::Usable(delegated) => delegated
                .create_job(&format!("job-{job}-{attempt}"), &limits)
                .map(Some),
            Cgroups::Unknown | Cgroups::Unusable => Ok(None),
        }
    }

    /// Remove the cgroups of ended attempts; one that still holds a process (it left
    /// the worker's reach) has it killed and is tried again next time.
    fn remove_cgroups(&mut self) {
        for cgroup in std::mem::take(&mut self.spent_cgroups) {
            if let Err((cgroup, e)) = cgroup.remove() {
                log::warn!("worker: cannot remove a job's cgroup yet: {e}");
                self.spent_cgroups.push(cgroup);
            }
        }
    }
}
