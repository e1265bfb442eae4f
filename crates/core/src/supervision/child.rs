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
    /// Worker `slot` of `group`.
    pub(crate) fn worker(group: &str, slot: u32) -> Role {
        Role::Worker {
            group: group.to_string(),
            slot,
        }
    }

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

/// A child's lifecycle state, as the status table and the events file name it: the
/// rows and columns of [`ALLOWED_TRANSITIONS`] (and of the table in ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateKind {
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
    /// Reaped (or, in the status table, a slot waiting for its restart).
    Exited,
}

impl StateKind {
    /// Every state, in lifecycle order.
    pub const ALL: [StateKind; 6] = [
        StateKind::Starting,
        StateKind::Ready,
        StateKind::Idle,
        StateKind::Busy,
        StateKind::Stopping,
        StateKind::Exited,
    ];

    /// The lowercase word used in `status` and the events file.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Starting => "starting",
            StateKind::Ready => "ready",
            StateKind::Idle => "idle",
            StateKind::Busy => "busy",
            StateKind::Stopping => "stopping",
            StateKind::Exited => "exited",
        }
    }

    /// Whether `self -> to` is a transition the lifecycle allows.
    pub fn can_become(self, to: StateKind) -> bool {
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
///
/// A busy worker is never asked to stop, not even by a stop or a reload that retires
/// it: it is stopped once its job has ended and it is idle again (a graceful stop lets
/// the job finish or stops the job itself first; an immediate one kills the worker).
/// So a stopping child never has a job to settle but through its exit.
pub const ALLOWED_TRANSITIONS: &[(StateKind, StateKind)] = {
    use StateKind::*;
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
        (Busy, Exited),
        (Stopping, Exited),
    ]
};

/// The state of a live child, with what that state needs: only a busy worker has a
/// job, only a stopping child has a kill deadline. A reaped child leaves the core's
/// table ([`StateKind::Exited`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ChildState {
    /// Spawned; its Ready message has not arrived yet.
    Starting,
    /// The grabber, up and claiming.
    Ready,
    /// A worker, up and without a job.
    Idle,
    /// A worker running `job`.
    Busy { job: JobRun },
    /// Asked to stop; killed at `deadline` if it has not exited by then.
    Stopping { deadline: Time },
}

impl ChildState {
    /// Its row in the lifecycle table.
    pub(crate) fn kind(&self) -> StateKind {
        match self {
            ChildState::Starting => StateKind::Starting,
            ChildState::Ready => StateKind::Ready,
            ChildState::Idle => StateKind::Idle,
            ChildState::Busy { .. } => StateKind::Busy,
            ChildState::Stopping { .. } => StateKind::Stopping,
        }
    }
}

/// One running job as the core tracks it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JobRun {
    pub(crate) claim: super::ClaimedJob,
    pub(crate) max_attempts: u32,
    pub(crate) assigned_at: Time,
    /// Once the worker reported the job's process.
    pub(crate) started: Option<Started>,
    /// When it times out, if it has a timeout.
    pub(crate) deadline: Option<Time>,
    /// Once the core began to stop it.
    pub(crate) stop: Option<JobStop>,
    /// How its main process ended, once the worker said so while what it left was
    /// still being killed (it ended before any signal reached it): the attempt's
    /// outcome, should the worker die before it reports the attempt's end.
    pub(crate) main_end: Option<ProcessEnd>,
}

impl JobRun {
    /// Begin to stop it for `reason`: SIGTERM now (the returned action, for the worker
    /// `child`), SIGKILL at `kill_at`.
    pub(crate) fn begin_stop(
        &mut self,
        child: super::ChildId,
        reason: StopReason,
        kill_at: Time,
    ) -> super::Action {
        self.stop = Some(JobStop {
            reason,
            step: StopStep::Term { kill_at },
        });
        super::Action::SignalJob {
            child,
            job: self.claim.id,
            signal: super::Signal::Term,
        }
    }
}

/// A job's process, as its worker reported it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Started {
    pub(crate) at: Time,
    /// Its pid, also its process group's id.
    pub(crate) pgid: u32,
}

/// Why and how far a job is being stopped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct JobStop {
    pub(crate) reason: StopReason,
    pub(crate) step: StopStep,
}

/// How far the stop of a job has gone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum StopStep {
    /// SIGTERM went out; SIGKILL follows at `kill_at`.
    Term { kill_at: Time },
    /// SIGKILL went out; a worker that still has not reported its job's end at
    /// `abandon_at` is killed itself (its job is then settled as its exit is).
    Kill { abandon_at: Time },
    /// Nothing is left to send: the job's process group was killed directly (an
    /// immediate stop), or its worker was killed.
    Done,
}

impl StopStep {
    /// When the next step is due, if there is one.
    pub(crate) fn due(self) -> Option<Time> {
        match self {
            StopStep::Term { kill_at } => Some(kill_at),
            StopStep::Kill { abandon_at } => Some(abandon_at),
            StopStep::Done => None,
        }
    }
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
    /// When the core pinged it first since it was last heard from: its silence counts
    /// from there (`None`: heard since its last ping).
    pub(crate) pinged_at: Option<Time>,
    /// Set when the core sent SIGKILL; no second one is sent.
    pub(crate) killed: bool,
}

impl Child {
    /// A message from it: it is alive, and any ping is answered.
    pub(crate) fn heard(&mut self) {
        self.pinged_at = None;
    }

    /// Move to `to`; the lifecycle table must allow it.
    pub(crate) fn set_state(&mut self, to: ChildState) {
        debug_assert!(
            self.state.kind().can_become(to.kind()),
            "{}: {:?} -> {:?} is not an allowed transition",
            self.role,
            self.state.kind(),
            to.kind()
        );
        self.state = to;
    }

    /// The job of a busy worker.
    pub(crate) fn job(&self) -> Option<&JobRun> {
        match &self.state {
            ChildState::Busy { job } => Some(job),
            _ => None,
        }
    }

    /// The job of a busy worker, to change.
    pub(crate) fn job_mut(&mut self) -> Option<&mut JobRun> {
        match &mut self.state {
            ChildState::Busy { job } => Some(job),
            _ => None,
        }
    }

    pub(crate) fn job_id(&self) -> Option<JobId> {
        self.job().map(|r| r.claim.id)
    }

    /// The busy worker's job ended: it is idle again; returns the job.
    pub(crate) fn end_job(&mut self) -> Option<JobRun> {
        self.job()?;
        match std::mem::replace(&mut self.state, ChildState::Idle) {
            ChildState::Busy { job } => Some(job),
            _ => unreachable!("busy, checked above"),
        }
    }

    /// The child was reaped (or never spawned): it leaves the table, with the job it
    /// was running, if any.
    pub(crate) fn exit(self) -> Option<JobRun> {
        debug_assert!(
            self.state.kind().can_become(StateKind::Exited),
            "{}: {:?} cannot exit",
            self.role,
            self.state.kind()
        );
        match self.state {
            ChildState::Busy { job } => Some(job),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::StateKind::*;
    use super::*;

    /// The architecture document, whose child lifecycle table must say what the code does.
    const ARCHITECTURE: &str = include_str!("../../../../ARCHITECTURE.md");

    /// The transitions the first table under `### Child lifecycle` of `doc` allows: a
    /// row per `from` state, a column per `to` state, and a cell that names what causes
    /// the transition (empty or `—`: never).
    fn documented_transitions(doc: &str) -> BTreeSet<(StateKind, StateKind)> {
        let section = doc
            .split("### Child lifecycle")
            .nth(1)
            .expect("a '### Child lifecycle' section");
        let rows: Vec<Vec<&str>> = section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(str::trim)
                    .collect()
            })
            .collect();
        assert!(rows.len() > 2, "no table under '### Child lifecycle'");
        let word = |w: &str| {
            StateKind::ALL
                .into_iter()
                .find(|k| k.as_str() == w)
                .unwrap_or_else(|| panic!("{w:?} in the child lifecycle table is no state"))
        };
        let to: Vec<StateKind> = rows[0][1..].iter().map(|w| word(w)).collect();
        let mut allowed = BTreeSet::new();
        // rows[1] is the |---| line under the header.
        for row in &rows[2..] {
            assert_eq!(row.len(), to.len() + 1, "a row of another width: {row:?}");
            let from = word(row[0]);
            for (cell, &to) in row[1..].iter().zip(&to) {
                if !cell.is_empty() && *cell != "—" {
                    allowed.insert((from, to));
                }
            }
        }
        allowed
    }

    #[test]
    fn the_child_lifecycle_table_of_architecture_md_is_the_codes() {
        let coded: BTreeSet<(StateKind, StateKind)> = ALLOWED_TRANSITIONS.iter().copied().collect();
        let documented = documented_transitions(ARCHITECTURE);
        assert_eq!(
            documented,
            coded,
            "ARCHITECTURE.md allows {:?} that the code does not, and the code allows {:?} \
             that ARCHITECTURE.md does not",
            documented.difference(&coded).collect::<Vec<_>>(),
            coded.difference(&documented).collect::<Vec<_>>(),
        );
    }

    #[test]
    fn a_table_that_drifted_from_the_code_is_caught() {
        let doc = "### Child lifecycle\n\ntext\n\n\
                   | from \\ to | idle | stopping |\n\
                   |---|---|---|\n\
                   | busy | job ended | asked to stop |\n\
                   | idle | | — |\n\nafter\n| x | y |\n";
        assert_eq!(
            documented_transitions(doc),
            BTreeSet::from([(Busy, Idle), (Busy, Stopping)])
        );
        assert!(!Busy.can_become(Stopping));
    }

    #[test]
    fn every_live_state_can_crash_to_exited() {
        for s in [Starting, Ready, Idle, Busy, Stopping] {
            assert!(s.can_become(Exited), "{s:?}");
        }
    }

    #[test]
    fn exited_is_final() {
        for s in StateKind::ALL {
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
    fn a_busy_worker_is_never_asked_to_stop() {
        assert!(!Busy.can_become(Stopping));
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
