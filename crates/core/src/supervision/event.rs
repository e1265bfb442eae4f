//! What the core tells the world happened: one record per decision, matching the
//! contract's events table. The shell adds `seq` and `ts` and writes them as JSON lines.

use std::time::Duration;

use crate::spec::OnExhausted;

use super::child::{ProcessEnd, Role};
use super::JobId;

/// How one attempt of a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit, a signal, or a command that could not start.
    Failed,
    /// Stopped at its deadline.
    TimedOut,
    /// Its worker died under it.
    Lost,
    /// Stopped by `supervisor cancel`.
    Canceled,
}

impl Outcome {
    /// The word used in the events file and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Lost => "lost",
            Outcome::Canceled => "canceled",
        }
    }

    /// Whether another attempt may follow this one.
    pub fn retryable(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::TimedOut | Outcome::Lost)
    }
}

/// One record for the events file.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A child was spawned.
    ChildStarted { role: Role, pid: u32 },
    /// A child was reaped (or could not be spawned: then `pid` and `end` are `None`).
    ChildExited {
        role: Role,
        pid: Option<u32>,
        end: Option<ProcessEnd>,
        /// The core had asked it to stop.
        expected: bool,
        /// The job it was running, if any.
        job_id: Option<JobId>,
        /// Why it could not be spawned, or why the core killed it.
        reason: Option<String>,
        /// Its slot is gone with it (a pool shrunk or a group removed while it ran, and
        /// it crashed): no restart follows. An expected exit while running says as much.
        retired: bool,
    },
    /// A crashed child will be started again after `delay`.
    ChildRestartScheduled {
        role: Role,
        delay: Duration,
        restarts_in_period: u32,
    },
    /// A group (or the grabber: `group` is `None`) exceeded its restart limit.
    GroupGaveUp {
        group: Option<String>,
        restarts: u32,
        period: Duration,
        action: OnExhausted,
    },
    /// A worker started an attempt.
    JobStarted {
        job_id: JobId,
        group: String,
        slot: u32,
        worker_pid: u32,
        attempt: u32,
    },
    /// An attempt ended and its outcome is stored.
    JobFinished {
        job_id: JobId,
        group: String,
        attempt: u32,
        outcome: Outcome,
        end: Option<ProcessEnd>,
        duration: Duration,
        /// Why the command could not be started, if it could not.
        start_error: Option<String>,
        /// Why it ended as it did, beyond its exit status (the OOM killer), if known.
        reason: Option<String>,
    },
    /// The job will be queued again after `delay`.
    JobRetryScheduled {
        job_id: JobId,
        attempt: u32,
        delay: Duration,
    },
    /// The job used up its attempts, or (with a `reason`) the store ended it without
    /// running it: its stored row cannot be run, or its supervisor died under it too often.
    JobDead {
        job_id: JobId,
        attempts: u32,
        reason: Option<String>,
    },
    /// A graceful (or immediate) stop began.
    SupervisorStopping { reason: String },
    /// Every child is gone; the supervisor exits with `code`.
    SupervisorStopped { code: i32 },
}
