//! The IPC boundary: the messages between the supervisor and its children. They have
//! their own types, converted from the core's, so that refactoring the core cannot
//! silently change the wire format (the events file's records are `record.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipc_channel::ipc::IpcSender;
use serde::{Deserialize, Serialize};
use supervisor_core::backoff::Backoff;
use supervisor_core::supervision::{ProcessEnd, Signal};

/// A job's id in the store.
pub use supervisor_core::supervision::JobId;

/// What a child sends to the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromChild {
    /// The first message: where to send to this child.
    Hello {
        to_child: IpcSender<ToChild>,
        pid: u32,
    },
    /// Initialised and able to work.
    Ready,
    /// The answer to a [`ToChild::Ping`].
    Pong,
    /// What one pass of the grabber found, in the order it found it: one message per
    /// pass, however many jobs it claimed (each was a message of its own, and so was
    /// the report: two hops per job where one does).
    Pass(Vec<PassItem>),
    /// The grabber could not reach the store.
    /// `claimed_before`: when the failed pass began; a claim of it may have committed
    /// while its answer was lost (the supervisor gives such strays back).
    SourceFailed { error: String, claimed_before: f64 },
    /// A worker started its job's process (also its process group).
    JobStarted { job: JobId, pid: u32 },
    /// A worker's job's main process ended on its own (before any signal reached it),
    /// and the worker kills what it left before it reports `JobEnded`: should the worker
    /// die meanwhile, this is the attempt's end.
    JobExited { job: JobId, end: WireEnd },
    /// A worker's job ended; `end` is `None` when its command could not start, and
    /// `start_error` then says why. `ran_for_s`: from spawn to reap, as the worker timed it.
    JobEnded {
        job: JobId,
        end: Option<WireEnd>,
        ran_for_s: Option<f64>,
        start_error: Option<String>,
        /// Why it ended as it did, beyond its exit status (the OOM killer), if known.
        reason: Option<String>,
        /// Its main process ended before the worker passed on any signal for it.
        exited_first: bool,
    },
}

/// One finding of a grabber's pass (see [`FromChild::Pass`]).
#[derive(Debug, Serialize, Deserialize)]
pub enum PassItem {
    /// The grabber claimed a job.
    Claimed(ClaimReport),
    /// `supervisor cancel` asked to stop this running job.
    CancelRequested { job: JobId },
    /// The grabber stored an outcome the supervisor handed it, or the store refused it
    /// as stale, or made the job `canceled` where a retry was asked (`settled`). These
    /// come first in a pass, before its claims.
    Settled {
        job: JobId,
        attempt: u32,
        settled: supervisor_store::Settled,
    },
    /// The grabber polled at `epoch`; `empty`: no routable job is queued or waiting.
    SourceReport { epoch: u64, empty: bool },
    /// The grabber found a job it cannot run (its stored row is damaged); the store
    /// ended it `dead` with `reason`.
    Refused {
        job: JobId,
        attempts: u32,
        reason: String,
    },
}

/// What the supervisor sends to a child.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToChild {
    /// Are you alive?
    Ping,
    /// Exit by yourself.
    Stop,
    /// Grabber: its settings from the config, when it is ready and after each reload.
    Settings(GrabberSettings),
    /// Grabber: `n` more credits for `group` (a newer epoch replaces the count); with
    /// `poll`, also a [`ToChild::Poll`] with that epoch, applied first (a job's end asks
    /// for both at once: one message, one wake of the grabber, where there were two).
    /// `settle`: outcomes of attempts that just ended, for the grabber to store with its
    /// next claim, in one transaction (see [`PassItem::Settled`]).
    Grant {
        group: String,
        n: u32,
        epoch: u64,
        poll: Option<u64>,
        settle: Vec<supervisor_store::Settle>,
    },
    /// Grabber: drop every credit of `group`, counting from `epoch` on.
    Revoke { group: String, epoch: u64 },
    /// Grabber: poll now and report with this epoch.
    Poll { epoch: u64 },
    /// Grabber: the doorbell rang (a submit or cancel): poll now.
    Wake,
    /// Grabber: claim nothing (`true`) while outcomes wait for the store, or go on.
    Hold(bool),
    /// Worker: run this job.
    Run(JobPayload),
    /// Worker: signal the job's process group.
    SignalJob { job: JobId, kill: bool },
}

/// What the grabber takes from the config: it follows reloads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrabberSettings {
    /// The groups to route to, in config order.
    pub routes: Vec<supervisor_store::Route>,
    pub poll_interval_s: f64,
    pub error_backoff: WireBackoff,
    /// The groups that can run jobs now (with workers, not disabled or draining): jobs
    /// waiting for another group do not count as runnable in the grabber's reports.
    pub runnable: Vec<String>,
}

/// The grabber's report of one job it claimed (with the credit epoch it spent), and what
/// a worker needs to run it. The store calls the same job a `ClaimedRun`, the core a
/// `ClaimedJob` (its bookkeeping of it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimReport {
    pub id: JobId,
    pub group: String,
    pub attempt: u32,
    pub timeout_s: Option<f64>,
    pub max_attempts: Option<u32>,
    pub epoch: u64,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

/// What a worker needs to run one attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobPayload {
    pub id: JobId,
    pub attempt: u32,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// How its group's config sets up the job's process (user, limits), as loaded by
    /// the supervisor's current config.
    pub process: Box<supervisor_config::JobProcess>,
}

/// How a process ended, on the wire.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum WireEnd {
    Code(i32),
    Signal(i32),
}

impl From<WireEnd> for ProcessEnd {
    fn from(e: WireEnd) -> ProcessEnd {
        match e {
            WireEnd::Code(c) => ProcessEnd::Exited(c),
            WireEnd::Signal(s) => ProcessEnd::Signaled(s),
        }
    }
}

impl From<supervisor_os::Ended> for WireEnd {
    fn from(e: supervisor_os::Ended) -> WireEnd {
        match e {
            supervisor_os::Ended::Code(c) => WireEnd::Code(c),
            supervisor_os::Ended::Signal(s) => WireEnd::Signal(s),
        }
    }
}

/// Whether an outcome handed to the grabber can be stored as it is: its times finite
/// (the supervisor's clock gives no other; a grabber leaves any other to the supervisor,
/// which stores what it handed over once the grabber's word is late).
pub fn sound_settle(s: &supervisor_store::Settle) -> bool {
    let next_at = match s.next {
        supervisor_store::AfterAttempt::Retry { at } => at,
        _ => 0.0,
    };
    s.at.is_finite() && next_at.is_finite()
}

/// Whether a core signal is SIGKILL.
pub fn is_kill(s: Signal) -> bool {
    s == Signal::Kill
}

/// Everything a child needs at start, passed as one JSON argument.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildArgs {
    /// The one-shot IPC server to connect to.
    pub ipc: String,
    pub role: ChildRole,
    /// The supervisor's pid: a child exits when its parent changes.
    pub parent: u32,
}

/// The role a child is started in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChildRole {
    Grabber {
        store: StoreArg,
        instance: i64,
        poll_interval_s: f64,
        error_backoff: WireBackoff,
        routes: Vec<supervisor_store::Route>,
        /// How long a store call waits for another process's lock before it fails:
        /// well within the heartbeat's timeout, which the grabber cannot answer while it
        /// waits.
        store_wait_s: f64,
    },
    Worker {
        group: String,
        slot: u32,
        logs: PathBuf,
    },
}

impl ChildRole {
    /// What `ps` shows of a child: `supervisor: grabber`, `supervisor: worker G/N`.
    pub fn title(&self) -> String {
        match self {
            ChildRole::Grabber { .. } => "supervisor: grabber".to_string(),
            ChildRole::Worker { group, slot, .. } => format!("supervisor: worker {group}/{slot}"),
        }
    }
}

/// Where the store is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreArg {
    Sqlite(PathBuf),
    Postgres(String),
}

/// A backoff on the wire.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct WireBackoff {
    pub initial_s: f64,
    pub max_s: f64,
    pub jitter: f64,
}

impl From<Backoff> for WireBackoff {
    fn from(b: Backoff) -> WireBackoff {
        WireBackoff {
            initial_s: b.initial.as_secs_f64(),
            max_s: b.max.as_secs_f64(),
            jitter: b.jitter,
        }
    }
}

impl From<WireBackoff> for Backoff {
    fn from(b: WireBackoff) -> Backoff {
        Backoff::from_secs(b.initial_s, b.max_s, b.jitter)
    }
}
