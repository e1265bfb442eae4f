//! The lifecycle of one child process, as a transition table.

use std::fmt;

use crate::time::Time;

use super::JobId;

/// Which child this is: the one grabber, or a worker in a group's slot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The child that claims jobs from the store.
    Grabber,
    /// A worker of `group`, in pool position `slot`.
    Worker {
        /// The group's name.
        group: String,
        /// The pool position, stable across restarts.
        slot: u32,
    },
}

impl Role {
    /// `"grabber"` or `"worker"`, as in the events file.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Grabber => "grabber",
            Role::Worker { .. } => "worker",
        }
    }

    /// The group, `None` for the grabber.
    pub fn group(&self) -> Option<&str> {
        match self {
            Role::Grabber => None,
            Role::Worker { group, .. } => Some(group),
        }
    }

    /// The slot, `None` for the grabber.
    pub fn slot(&self) -> Option<u32> {
        match self {
            Role::Grabber => None,
            Role::Worker { slot, .. } => Some(*slot),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Grabber => write!(f, "grabber"),
            Role::Worker { group, slot } => write!(f, "worker {group}/{slot}"),
        }
    }
}

/// How a process ended, without loss: an exit code or a signal, never squashed together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEnd {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl ProcessEnd {
    /// True for `exit(0)`.
    pub fn success(self) -> bool {
        self == ProcessEnd::Exited(0)
    }

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ProcessEnd::Exited(c) => Some(c),
            ProcessEnd::Signaled(_) => None,
        }
    }

    /// The signal, if it was killed by one.
    pub fn signal(self) -> Option<i32> {
        match self {
            ProcessEnd::Exited(_) => None,
            ProcessEnd::Signaled(s) => Some(s),
        }
    }
}

/// The state of a child, as the status table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChildState {
    /// Spawned; its Ready message has not arrived yet.
    Starting,
    /// The grabber, up and claiming.
    Ready,
    /// A worker, up and without a job.
    Idle,
    /// A worker running a job.
    Busy,
    /// Asked to stop; it will be killed if it does not exit in time.
    Stopping,
    /// Reaped.
    Exited,
}

impl ChildState {
    /// The lowercase word used in `status` and the events file.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Ready => "ready",
            ChildState::Idle => "idle",
            ChildState::Busy => "busy",
            ChildState::Stopping => "stopping",
            ChildState::Exited => "exited",
        }
    }

    /// Whether `self -> to` is a transition the lifecycle allows.
    pub fn can_become(self, to: ChildState) -> bool {
        ALLOWED_TRANSITIONS.contains(&(self, to))
    }
}

/// Every transition a child may make; anything else is a bug in the core.
///
/// ```text
/// starting ──► ready (grabber) ──────────────┐
///    │  └────► idle ◄──► busy (worker)       ├──► stopping ──► exited
///    │           │        │                  │
///    └───────────┴────────┴──── crash ───────┴──────────────► exited
/// ```
pub const ALLOWED_TRANSITIONS: &[(ChildState, ChildState)] = {
    use ChildState::*;
    &[
        (Starting, Ready),
        (Starting, Idle),
        (Starting, Stopping),
        (Starting, Exited),
        (Ready, Stopping),
        (Ready, Exited),
        (Idle, Busy),
        (Idle, Stopping),
        (Idle, Exited),
        (Busy, Idle),
        (Busy, Stopping),
        (Busy, Exited),
        (Stopping, Exited),
    ]
};

/// One running job as the core tracks it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JobRun {
    pub(crate) job: super::ClaimedJob,
    pub(crate) max_attempts: u32,
    pub(crate) assigned_at: Time,
    pub(crate) started_at: Option<Time>,
    pub(crate) job_pid: Option<u32>,
    pub(crate) deadline: Option<Time>,
    pub(crate) stop: Option<JobStop>,
}

/// Why and how far a job is being stopped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct JobStop {
    pub(crate) reason: StopReason,
    /// When SIGKILL follows the SIGTERM already sent.
    pub(crate) kill_at: Option<Time>,
    /// After SIGKILL: when a worker that still has not reported its job's end is
    /// killed itself (its job is then settled as its exit is).
    pub(crate) abandon_at: Option<Time>,
}

/// Why the core stops a running job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    Timeout,
    Cancel,
    Shutdown,
}

/// A child process as the core tracks it.
#[derive(Clone, Debug)]
pub(crate) struct Child {
    pub(crate) role: Role,
    pub(crate) pid: Option<u32>,
    pub(crate) state: ChildState,
    pub(crate) spawned_at: Time,
    pub(crate) ready_at: Option<Time>,
    pub(crate) last_seen: Time,
    pub(crate) job: Option<JobRun>,
    /// Set when the core sent SIGKILL; no second one is sent.
    pub(crate) killed: bool,
    /// For `stopping`: when to kill it if it has not exited.
    pub(crate) stop_deadline: Option<Time>,
}

impl Child {
    pub(crate) fn set_state(&mut self, to: ChildState) {
        debug_assert!(
            self.state.can_become(to),
            "{}: {:?} -> {:?} is not an allowed transition",
            self.role,
            self.state,
            to
        );
        self.state = to;
    }

    pub(crate) fn job_id(&self) -> Option<JobId> {
        self.job.as_ref().map(|r| r.job.id)
    }
}

#[cfg(test)]
mod tests {
    use super::ChildState::*;
    use super::*;

    const ALL: [ChildState; 6] = [Starting, Ready, Idle, Busy, Stopping, Exited];

    #[test]
    fn every_live_state_can_crash_to_exited() {
        for s in [Starting, Ready, Idle, Busy, Stopping] {
            assert!(s.can_become(Exited), "{s:?}");
        }
    }

    #[test]
    fn exited_is_final() {
        for s in ALL {
            assert!(!Exited.can_become(s), "exited -> {s:?}");
        }
    }

    #[test]
    fn only_workers_states_alternate_between_idle_and_busy() {
        assert!(Idle.can_become(Busy) && Busy.can_become(Idle));
        assert!(!Ready.can_become(Busy) && !Ready.can_become(Idle));
        assert!(!Busy.can_become(Ready) && !Starting.can_become(Busy));
    }

    #[test]
    fn stopping_never_comes_back() {
        for s in [Starting, Ready, Idle, Busy] {
            assert!(!Stopping.can_become(s), "stopping -> {s:?}");
        }
    }

    #[test]
    fn the_table_has_no_self_loops_or_duplicates() {
        for (i, a) in ALLOWED_TRANSITIONS.iter().enumerate() {
            assert_ne!(a.0, a.1);
            assert!(!ALLOWED_TRANSITIONS[i + 1..].contains(a));
        }
    }
}
