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
//!
//! Its rooms: here the worker's state and its start; `worker/threads.rs` its helper
//! threads (the supervisor's messages, the waiter, SIGTERM), `worker/event_loop.rs` what
//! it does on each event, `worker/start.rs` the start of one attempt, `worker/logs.rs`
//! the job logs and the spare, `worker/cgroups.rs` the jobs' cgroups.

mod cgroups;
mod event_loop;
mod logs;
mod start;
mod threads;

use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mailbox::{mailbox, Mailbox, Post};
use ipc_channel::ipc::IpcSender;
use supervisor_os::cgroup::JobCgroup;
use supervisor_os::{Ended, Sig, Spawner};

use crate::ipc;
use crate::wire::{FromChild, ToChild};
use cgroups::JobCgroups;
use logs::Logs;

/// How long the processes a job left behind have between SIGTERM and SIGKILL.
const STRAGGLER_GRACE: Duration = Duration::from_secs(5);

/// How often, once they have been SIGKILLed, the worker looks for stragglers again (one
/// that was forking may have left another).
const KILL_AGAIN: Duration = Duration::from_millis(50);

enum WorkerEv {
    Msg(ToChild),
    Closed,
    /// No child of the worker is left: every straggler is gone.
    AllReaped,
}

/// How an attempt's main process ended: what `JobEnded` reports once every process of
/// the attempt is gone.
struct AttemptEnd {
    job: i64,
    ended: Ended,
    ran_for: Duration,
    /// Why it ended, beyond its exit status (the OOM killer), if known.
    reason: Option<String>,
    /// Its main process ended before any signal was passed on to it.
    exited_first: bool,
}

/// An attempt whose main process has ended, waiting for what it left behind to go.
struct Cleanup {
    end: AttemptEnd,
    /// When the stragglers get SIGKILL (they got SIGTERM when this began).
    kill_at: Instant,
}

struct Running {
    job: i64,
    pgid: u32,
    /// When its process was spawned.
    since: Instant,
    /// A signal of the supervisor's was passed on to it (a cancel, a timeout, the
    /// shutdown).
    signaled: bool,
    log: File,
    log_path: PathBuf,
    /// The log was given to the job's user (to be taken back if it becomes the spare).
    log_given: bool,
    /// The job's own cgroup, with its `memory_max_bytes`.
    cgroup: Option<(JobCgroup, Option<u64>)>,
}

struct Worker {
    tx: IpcSender<FromChild>,
    /// To the waiter thread, which reaps what an attempt left behind; `None` until the
    /// first job (see [`Worker::start_threads`]).
    wait_tx: Option<Post<()>>,
    /// Shared with the reader thread: the job the loop is blocked on, while it is.
    waiting: Arc<Mutex<threads::Waiting>>,
    /// For the waiter thread, until it is started.
    events: Option<Post<WorkerEv>>,
    spawner: Spawner,
    devnull: File,
    env: Vec<(OsString, OsString)>,
    logs: Logs,
    cgroups: JobCgroups,
    /// The attempt whose main process runs.
    running: Option<Running>,
    /// The attempt whose main process has ended, while what it left goes.
    cleanup: Option<Cleanup>,
    /// Told to stop while busy: stop once the attempt is over.
    stop_when_idle: bool,
}

/// Run the worker until told to stop or the supervisor goes away.
pub fn main(ipc_name: &str, logs: PathBuf, group: &str, slot: u32) -> i32 {
    let Some((mut w, events)) = Worker::connect(ipc_name, logs, group, slot) else {
        return 1;
    };
    w.run(&events)
}

impl Worker {
    /// Set this process up as a worker (SIGTERM handled, a child subreaper), connect to
    /// the supervisor, start the helper threads and say we are ready; `None` (said in
    /// the log) if any of it fails.
    fn connect(
        ipc_name: &str,
        logs: PathBuf,
        group: &str,
        slot: u32,
    ) -> Option<(Worker, Mailbox<WorkerEv>)> {
        if let Err(e) = supervisor_os::become_subreaper() {
            log::error!("worker: cannot become a child subreaper: {e}");
            return None;
        }
        let (tx, rx) = match ipc::connect(ipc_name) {
            Ok(x) => x,
            Err(e) => {
                log::error!("worker: cannot connect to the supervisor: {e}");
                return None;
            }
        };
        let devnull = match File::open("/dev/null") {
            Ok(f) => f,
            Err(e) => {
                log::error!("worker: cannot open /dev/null: {e}");
                return None;
            }
        };
        let (ev_tx, ev_rx) = mailbox::<WorkerEv>();
        let waiting = Arc::default();
        let reader = threads::start_ipc_reader(rx, ev_tx.clone(), tx.clone(), Arc::clone(&waiting));
        if reader.is_err() || tx.send(FromChild::Ready).is_err() {
            return None;
        }
        let w = Worker {
            tx,
            wait_tx: None,
            waiting,
            events: Some(ev_tx),
            spawner: Spawner::new(),
            devnull,
            env: start::base_env(),
            logs: Logs::new(logs, group, slot),
            cgroups: JobCgroups::new(group),
            running: None,
            cleanup: None,
            stop_when_idle: false,
        };
        Some((w, ev_rx))
    }

    /// The waiter, with the SIGTERM thread, started with the first job: until a job runs,
    /// a SIGTERM's default action (the worker ends) is all it needs, and a worker that
    /// never runs one never has them (a pool of 1,000 idle workers, 2,000 fewer threads;
    /// and two thread starts fewer before a worker is ready). An error says why not.
    fn start_threads(&mut self) -> Result<(), String> {
        if self.wait_tx.is_some() {
            return Ok(());
        }
        let events =
            (self.events.take()).ok_or("could not start its threads for an earlier job")?;
        threads::start_sigterm_thread().map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let (wait_tx, waiter) = threads::start_waiter(events);
        waiter.map_err(|e| format!("cannot start its waiter thread: {e}"))?;
        self.wait_tx = Some(wait_tx);
        Ok(())
    }

    /// Tell the supervisor the attempt is over (every process of it is gone: so can its
    /// cgroup be); false if it is gone.
    fn report_end(&mut self, end: AttemptEnd) -> bool {
        if threads::leaving() {
            threads::wait_to_be_ended();
        }
        self.cgroups.remove_spent();
        self.tx
            .send(FromChild::JobEnded {
                job: end.job,
                end: Some(end.ended.into()),
                ran_for_s: Some(end.ran_for.as_secs_f64()),
                start_error: None,
                reason: end.reason,
                exited_first: end.exited_first,
            })
            .is_ok()
    }
}

/// Signal every process below this worker: what a job left behind once its main process
/// ended (all of it is ours to reap, as a subreaper).
fn kill_stragglers(sig: Sig) {
    for pid in supervisor_os::descendants(std::process::id()) {
        let _ = supervisor_os::signal_pid(pid, sig);
    }
}
