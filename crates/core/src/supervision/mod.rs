//! The supervision policy: children, pools, restarts, dispatch with credits, jobs in
//! flight, reload and shutdown, as one state machine.
//!
//! The shell calls [`Core::handle`] with what happened and [`Core::on_timeout`] when
//! [`Core::next_deadline`] has passed, and carries out the returned [`Action`]s in
//! order. Nothing here blocks, reads a clock or touches the OS.
//!
//! Dispatch follows Launchpad's `ParallelLimitedTaskConsumer`: the grabber (the task
//! source) holds *credits*, one per free worker slot of a group, and claims no job
//! without one; a finished job gives its credit back. The grabber is thereby stopped at
//! the limit and resumed when a task ends, and `until_empty` finishes the run once the
//! source reports nothing left and nothing runs.
//!
//! The `impl Core` is split by subject: `lifecycle.rs` (children, restarts, heartbeats),
//! `dispatch.rs` (credits, pending jobs, idle workers), `jobs.rs` (claims, starts, ends,
//! outcomes, cancels, timeouts), `reload.rs` and `shutdown.rs`; `child.rs` holds a
//! child's lifecycle table, `event.rs` the records the core emits.

mod child;
mod dispatch;
mod event;
mod jobs;
mod lifecycle;
mod reload;
mod shutdown;
mod timers;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::backoff::BackoffState;
use crate::looping::FixedIntervalSchedule;
use crate::random::Random;
use crate::spec::{GroupSpec, Spec};
use crate::time::Time;

pub use child::{ProcessEnd, Role, StateKind, ALLOWED_TRANSITIONS};
pub use event::{Event, Outcome};
pub use jobs::{GIVEN_BACK, TAKEN_BACK};
pub use timers::TimerTable;

use child::Child;
use timers::Timer;

/// A job's id in the store.
pub type JobId = i64;

/// One incarnation of a child: a new id for every spawn, so a message from a dead
/// incarnation can never be mistaken for one from its replacement.
pub type ChildId = u64;

/// Exit code when a restart limit with `on_exhausted: exit` was hit.
pub const EXIT_GAVE_UP: i32 = 3;

/// A job the grabber claimed for a group, as the core needs to know it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimedJob {
    /// The store's id.
    pub id: JobId,
    /// The group it was routed to.
    pub group: String,
    /// 1-based number of this attempt.
    pub attempt: u32,
    /// The job's own `timeout_s`, which wins over the group's.
    pub timeout: Option<Duration>,
    /// The job's own `max_attempts`, which wins over the group's.
    pub max_attempts: Option<u32>,
    /// The credit epoch of the group the claim was made in (see [`Action::Revoke`]).
    pub epoch: u64,
}

/// Signals the core asks the shell to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Please stop.
    Term,
    /// Stop now.
    Kill,
}

/// What the store should do with a finished attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Next {
    /// The outcome is final (`succeeded`, `canceled`, or a failure with no retry).
    Done,
    /// Queue it again after `delay`.
    Retry { delay: Duration },
    /// No attempts left.
    Dead,
}

/// Something that happened, fed to [`Core::handle`].
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Begin: start the grabber and every pool.
    Start,
    /// The shell spawned `child` as process `pid`.
    Spawned { child: ChildId, pid: u32 },
    /// The shell could not spawn `child`.
    SpawnFailed { child: ChildId, error: String },
    /// `child` finished its handshake and is up.
    Ready { child: ChildId },
    /// `child` answered a ping (or sent anything else): it is alive.
    Alive { child: ChildId },
    /// Process `pid` was reaped. The shell reports it only after the child's last IPC
    /// message, so everything the child said has been handled before its exit.
    Exited { pid: u32, end: ProcessEnd },
    /// The grabber claimed a job.
    JobClaimed(ClaimedJob),
    /// The grabber polled the store at `epoch` (see [`Action::Poll`]); `empty` means no
    /// routable job is queued or waiting for a retry.
    SourceReport { epoch: u64, empty: bool },
    /// The grabber could not reach the store; it backs off on its own.
    SourceFailed { error: String },
    /// A worker started a job's process `pid` (also its process group).
    JobStarted {
        child: ChildId,
        job: JobId,
        pid: u32,
    },
    /// A worker's job ended: `end` is how its process ended, or `None` when the command
    /// could not be started at all (`start_error` then says why). `ran_for` is the time
    /// from spawn to reap as the worker measured it (the core's own measure, between two
    /// messages, is only a fallback).
    JobEnded {
        child: ChildId,
        job: JobId,
        end: Option<ProcessEnd>,
        ran_for: Option<Duration>,
        start_error: Option<String>,
        /// Why the attempt ended as it did, when the worker knows more than the exit
        /// status says (the OOM killer acted on its memory limit).
        reason: Option<String>,
        /// Its main process ended before the worker passed on any signal for it (a
        /// cancel, a timeout, the shutdown): its end is its own, whatever stop was
        /// asked while what it left was being killed.
        exited_first: bool,
    },
    /// A job's main process ended on its own (before any signal reached it) and its
    /// worker is killing what it left before it reports the attempt's end.
    JobExited {
        child: ChildId,
        job: JobId,
        end: ProcessEnd,
    },
    /// `supervisor cancel` asked for a running job to be stopped.
    CancelRequested { job: JobId },
    /// The store ended a job `dead` without running it, for `reason`: its stored row
    /// cannot be run, or its supervisor died under it too often.
    JobRefused {
        job: JobId,
        attempts: u32,
        reason: String,
    },
    /// SIGHUP (or `supervisor reload`): the config file should be read again.
    ReloadRequested,
    /// A new config generation, already validated.
    Reload(Spec),
    /// Stop for `reason`: gracefully (SIGTERM: running jobs get the grace) or at once.
    Shutdown { reason: String, immediate: bool },
    /// An interrupt (SIGINT, Ctrl-C): the first stops gracefully, a second at once.
    Interrupt,
    /// Outcomes wait for the store (`waiting`), or none waits any more: while any does,
    /// the grabber claims nothing (running more jobs whose results cannot be recorded is
    /// pointless).
    OutcomesWaiting { waiting: bool },
    /// This supervisor lost its lease in a shared store: the store has not heard from it
    /// for longer than is safe (it fenced itself), or another supervisor already took it
    /// for dead and requeued its jobs. Its jobs may run elsewhere at any moment, and
    /// the shell has already killed them: stop at once, with exit code 1, and give
    /// nothing back to the store (the others requeue what was ours).
    Fenced { reason: String },
}

/// What the core asks the shell to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start a new child process for `role`, known as `child` from now on.
    Spawn { child: ChildId, role: Role },
    /// Ask `child` to exit by itself (an IPC message).
    StopChild { child: ChildId },
    /// Signal a child process directly.
    KillChild {
        child: ChildId,
        pid: u32,
        signal: Signal,
    },
    /// Send a liveness ping to `child`.
    Ping { child: ChildId },
    /// Tell the worker `child` to run this job.
    StartJob { child: ChildId, job: ClaimedJob },
    /// Tell the worker `child` to signal its job's process group.
    SignalJob {
        child: ChildId,
        job: JobId,
        signal: Signal,
    },
    /// Kill a process group directly: the job of a worker that died under it.
    KillJobGroup { pgid: u32 },
    /// Give the grabber `n` more credits for `group`. A grant of a newer `epoch` than
    /// the grabber's replaces its count (the credits it held were revoked).
    Grant { group: String, n: u32, epoch: u64 },
    /// Take back every credit of `group`; claims made before this carry an older
    /// `epoch`, and the grabber starts counting at `epoch`.
    Revoke { group: String, epoch: u64 },
    /// Ask the grabber to poll the store now and report with this epoch.
    Poll { epoch: u64 },
    /// Send the grabber its settings: a new grabber is up, or the groups that can run
    /// jobs changed (a reload, a group that gave up). `runnable` are those groups, in
    /// config order; the rest of the settings (routes, intervals) is the config's.
    GrabberSettings { runnable: Vec<String> },
    /// Tell the grabber to claim nothing (`hold`) or to claim again.
    HoldClaims { hold: bool },
    /// Read the config file again and answer with [`Input::Reload`] if it is valid.
    ReadConfig,
    /// Store the outcome of an attempt, before anything acknowledges it.
    RecordOutcome {
        job: JobId,
        attempt: u32,
        outcome: Outcome,
        end: Option<ProcessEnd>,
        next: Next,
        /// Why the command could not be started, if it could not.
        start_error: Option<String>,
        /// Why the attempt ended as it did, beyond its exit status, if known.
        reason: Option<String>,
    },
    /// Put a claimed job back in the queue without using up an attempt.
    Release { job: JobId, attempt: u32 },
    /// The grabber died: release any job it claimed in the store but never reported,
    /// i.e. running under this instance and not among `known`.
    ReleaseStrays { known: Vec<JobId> },
    /// Write this record to the events file.
    Emit(Event),
    /// Everything has stopped: exit the process with `code`.
    Exit { code: i32 },
}

/// What a worker measured about an attempt, beside how its process ended.
#[derive(Clone, Debug, Default, PartialEq)]
struct Facts {
    /// From spawn to reap.
    ran_for: Option<Duration>,
    /// Why the command could not be started.
    start_error: Option<String>,
    /// Why it ended as it did, beyond its exit status.
    reason: Option<String>,
    /// Its main process ended before any signal reached it.
    exited_first: bool,
}

/// One row of the child table, for `status` and the events file's snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildView {
    /// Grabber or worker (group and slot).
    pub role: Role,
    /// The process, once spawned.
    pub pid: Option<u32>,
    /// Lifecycle state; `exited` for a slot waiting for its restart.
    pub state: StateKind,
    /// Restarts of this slot so far.
    pub restarts: u32,
    /// The job it runs, if busy.
    pub job_id: Option<JobId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    /// Stopping, gracefully ([`Timer::Grace`] then ends the grace) or at once.
    Stopping {
        code: i32,
        immediate: bool,
    },
    Stopped,
}

/// A pool position (or the grabber's): what survives a restart.
#[derive(Clone, Debug, Default)]
struct Slot {
    child: Option<ChildId>,
    restarts: u32,
    backoff: BackoffState,
    /// Shrunk away: stop when idle, never restart.
    retiring: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupStatus {
    Active,
    /// Removed by a reload: finish current jobs, then go.
    Draining,
    /// Gave up with `on_exhausted: disable`.
    Disabled,
}

#[derive(Clone, Debug)]
struct Group {
    spec: GroupSpec,
    status: GroupStatus,
    slots: BTreeMap<u32, Slot>,
    /// Restart times inside the sliding window.
    window: VecDeque<Time>,
    /// Claimed jobs waiting for an idle worker (a worker died after its credit was
    /// granted, or a claim raced a revoke).
    pending: VecDeque<ClaimedJob>,
    /// Credits the grabber holds for this group.
    granted: u32,
    /// Bumped by every revoke; drawn from `Core::epochs`, so it only ever rises for a
    /// group's name, even across a remove and re-add.
    epoch: u64,
}

impl Group {
    fn new(spec: GroupSpec, epoch: u64) -> Group {
        let slots = (0..spec.max_workers)
            .map(|s| (s, Slot::default()))
            .collect();
        Group {
            spec,
            status: GroupStatus::Active,
            slots,
            window: VecDeque::new(),
            pending: VecDeque::new(),
            granted: 0,
            epoch,
        }
    }

    fn accepting(&self) -> bool {
        self.status == GroupStatus::Active
    }
}

/// The supervision state machine. See the module docs.
pub struct Core {
    spec: Spec,
    rng: Box<dyn Random + Send>,
    phase: Phase,
    next_child: ChildId,
    children: BTreeMap<ChildId, Child>,
    grabber: Slot,
    grabber_window: VecDeque<Time>,
    /// Groups by name; `order` keeps config order for display.
    groups: BTreeMap<String, Group>,
    order: Vec<String>,
    /// Every deadline of the core: `next_deadline` is its earliest.
    timers: TimerTable<Timer>,
    /// When the rounds of pings are due (`Timer::Ping`): every `heartbeat.interval`,
    /// the first one interval after the start.
    pings: FixedIntervalSchedule,
    /// Bumped whenever the set of runnable jobs may have grown (a job ended, a reload).
    source_epoch: u64,
    /// The last epoch the grabber reported empty at.
    empty_at: Option<u64>,
    /// The last credit epoch handed out to any group. One counter for all groups: the
    /// grabber ignores grants older than the epoch it knows for a group's name, so a
    /// group removed by a reload and added back by a later one must not start at 0
    /// again (its grants would be ignored and the group would starve).
    epochs: u64,
    /// The lease is lost ([`Input::Fenced`]): the store is no longer ours to write to.
    fenced: bool,
    /// Interrupts so far ([`Input::Interrupt`]).
    interrupts: u32,
    /// Outcomes wait for the store ([`Input::OutcomesWaiting`]).
    outcomes_waiting: bool,
    out: Vec<Action>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("phase", &self.phase)
            .field("children", &self.children.len())
            .field("groups", &self.order)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core for `spec`; nothing happens until [`Input::Start`].
    pub fn new(spec: Spec, rng: Box<dyn Random + Send>) -> Core {
        let mut core = Core {
            spec: spec.clone(),
            rng,
            phase: Phase::Created,
            next_child: 1,
            children: BTreeMap::new(),
            grabber: Slot::default(),
            grabber_window: VecDeque::new(),
            groups: BTreeMap::new(),
            order: Vec::new(),
            timers: TimerTable::new(),
            pings: FixedIntervalSchedule::new(spec.heartbeat.interval)
                .with_initial_delay(spec.heartbeat.interval),
            source_epoch: 0,
            empty_at: None,
            epochs: 0,
            fenced: false,
            interrupts: 0,
            outcomes_waiting: false,
            out: Vec::new(),
        };
        for g in spec.groups {
            core.order.push(g.name.clone());
            core.groups.insert(g.name.clone(), Group::new(g, 0));
        }
        core
    }

    /// The config generation in force.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// True once [`Action::Exit`] has been returned.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// True from the start of a stop on.
    pub fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. } | Phase::Stopped)
    }

    /// The role of a live child.
    pub fn role(&self, child: ChildId) -> Option<&Role> {
        self.children.get(&child).map(|c| &c.role)
    }

    /// The live grabber, if any.
    pub fn grabber(&self) -> Option<ChildId> {
        self.grabber.child
    }

    /// Every child and every slot waiting for a restart, grabber first, then groups in
    /// config order and slots in order.
    pub fn children(&self) -> Vec<ChildView> {
        let mut rows = Vec::new();
        let waits = |role: &Role| self.timers.get(&Timer::Restart(role.clone())).is_some();
        let view = |slot: &Slot, role: Role| match slot.child.and_then(|c| self.children.get(&c)) {
            Some(c) => ChildView {
                role,
                pid: c.pid,
                state: c.state.kind(),
                restarts: slot.restarts,
                job_id: c.job_id(),
            },
            None => ChildView {
                role,
                pid: None,
                state: StateKind::Exited,
                restarts: slot.restarts,
                job_id: None,
            },
        };
        if self.grabber.child.is_some() || waits(&Role::Grabber) {
            rows.push(view(&self.grabber, Role::Grabber));
        }
        for name in &self.order {
            let g = &self.groups[name];
            for (&slot, s) in &g.slots {
                let role = Role::Worker {
                    group: name.clone(),
                    slot,
                };
                if s.child.is_some() || waits(&role) {
                    rows.push(view(s, role));
                }
            }
        }
        rows
    }

    /// Jobs running or waiting for a worker, by group.
    pub fn jobs_in_flight(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self.children.values().filter_map(Child::job_id).collect();
        for g in self.groups.values() {
            ids.extend(g.pending.iter().map(|j| j.id));
        }
        ids.sort_unstable();
        ids
    }

    /// Number of workers currently running a job in `group`.
    pub fn busy_workers(&self, group: &str) -> usize {
        self.children
            .values()
            .filter(|c| c.role.group() == Some(group) && c.job().is_some())
            .count()
    }

    /// The groups that can run jobs, in config order: active (not draining after a
    /// reload removed them, not disabled by their restart limit) and with workers. Jobs
    /// waiting for any other group do not keep `--until-empty` from ending.
    pub fn runnable_groups(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|name| {
                self.groups
                    .get(*name)
                    .is_some_and(|g| g.status == GroupStatus::Active && g.spec.max_workers > 0)
            })
            .cloned()
            .collect()
    }

    /// Credits the grabber holds for `group`, as far as the core knows.
    pub fn credits(&self, group: &str) -> u32 {
        self.groups.get(group).map_or(0, |g| g.granted)
    }

    /// Jobs claimed for `group` and waiting for an idle worker.
    pub fn pending_jobs(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |g| g.pending.len())
    }

    /// The earliest time at which [`Core::on_timeout`] has something to do: the first
    /// entry of the timer table.
    pub fn next_deadline(&self) -> Option<Time> {
        self.timers.next_deadline()
    }

    /// Feed one thing that happened at `now`; returns what to do, in order.
    pub fn handle(&mut self, now: Time, input: Input) -> Vec<Action> {
        if self.phase == Phase::Stopped {
            // `Exit` was returned: nothing is left to decide (a late claim would
            // otherwise be answered with a `Release` to a store the shell has closed).
            return Vec::new();
        }
        if matches!(
            input,
            Input::JobClaimed(_) | Input::SourceReport { .. } | Input::SourceFailed { .. }
        ) {
            // These come from the grabber: it is alive, like any other message says.
            self.grabber_seen();
        }
        match input {
            Input::Start => self.start(now),
            Input::Spawned { child, pid } => self.spawned(now, child, pid),
            Input::SpawnFailed { child, error } => self.spawn_failed(now, child, error),
            Input::Ready { child } => self.ready(now, child),
            Input::Alive { child } => {
                if let Some(c) = self.children.get_mut(&child) {
                    c.heard();
                }
            }
            Input::Exited { pid, end } => self.exited(now, pid, end),
            Input::JobClaimed(job) => self.claimed(now, job),
            Input::SourceReport { epoch, empty } => {
                if empty && epoch == self.source_epoch {
                    self.empty_at = Some(epoch);
                } else if !empty {
                    self.empty_at = None;
                }
            }
            Input::SourceFailed { error } => {
                log::warn!("the grabber cannot reach the store: {error}");
                self.empty_at = None;
            }
            Input::JobStarted { child, job, pid } => self.job_started(now, child, job, pid),
            Input::JobEnded {
                child,
                job,
                end,
                ran_for,
                start_error,
                reason,
                exited_first,
            } => {
                let facts = Facts {
                    ran_for,
                    start_error,
                    reason,
                    exited_first,
                };
                self.job_ended(now, child, job, end, facts)
            }
            Input::JobExited { child, job, end } => self.job_exited(child, job, end),
            Input::CancelRequested { job } => self.cancel(now, job),
            Input::JobRefused {
                job,
                attempts,
                reason,
            } => self.out.push(Action::Emit(Event::JobDead {
                job_id: job,
                attempts,
                reason: Some(reason),
            })),
            Input::ReloadRequested => self.reload_requested(),
            Input::Reload(spec) => self.reload(now, spec),
            Input::Shutdown { reason, immediate } => self.shutdown(now, reason, immediate, 0),
            Input::Interrupt => self.interrupt(now),
            Input::OutcomesWaiting { waiting } => self.hold_claims(waiting),
            Input::Fenced { reason } => {
                self.fenced = true;
                self.shutdown(now, reason, true, 1);
            }
        }
        self.settled(now)
    }

    /// What every input and wakeup ends with: the checks that may follow from any
    /// change, then the actions to carry out.
    fn settled(&mut self, now: Time) -> Vec<Action> {
        self.check_until_empty(now);
        self.check_stopped();
        self.settle_grace();
        #[cfg(debug_assertions)]
        self.check_timers();
        std::mem::take(&mut self.out)
    }

    fn grabber_seen(&mut self) {
        if let Some(c) = self.grabber.child.and_then(|id| self.children.get_mut(&id)) {
            c.heard();
        }
    }

    /// Handle every timer due at `now`, in the order of [`Timer`]'s variants.
    pub fn on_timeout(&mut self, now: Time) -> Vec<Action> {
        if self.phase == Phase::Stopped {
            return Vec::new();
        }
        let due = self.timers.expire(now);
        // Every wakeup looks at every child's liveness; the ping timer says whether
        // pings go out, and start timeouts are found by this look too.
        self.heartbeats(now, due.contains(&Timer::Ping));
        for timer in due {
            match timer {
                Timer::Ping | Timer::Start(_) => {}
                Timer::Restart(role) => self.restart_due(now, role),
                Timer::Job(child) => self.job_timer(now, child),
                Timer::Stop(child) => self.stop_deadline(child),
                Timer::Grace => self.grace_due(now),
            }
        }
        self.settled(now)
    }
}
