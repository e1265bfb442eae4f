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

mod child;
mod event;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::backoff::BackoffState;
use crate::random::Random;
use crate::spec::{GroupSpec, OnExhausted, RestartPolicy, Spec};
use crate::time::Time;

pub use child::{ChildState, ProcessEnd, Role, ALLOWED_TRANSITIONS};
pub use event::{Event, Outcome};

use child::{Child, JobRun, JobStop, StopReason};

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
    /// A new config generation, already validated.
    Reload(Spec),
    /// SIGTERM/SIGINT (`immediate: false`), or a second SIGINT (`immediate: true`).
    Shutdown { reason: String, immediate: bool },
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
}

/// One row of the child table, for `status` and the events file's snapshots.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildView {
    /// Grabber or worker (group and slot).
    pub role: Role,
    /// The process, once spawned.
    pub pid: Option<u32>,
    /// Lifecycle state; `exited` for a slot waiting for its restart.
    pub state: ChildState,
    /// Restarts of this slot so far.
    pub restarts: u32,
    /// The job it runs, if busy.
    pub job_id: Option<JobId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Stopping {
        code: i32,
        grace_deadline: Time,
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
    restart_at: Option<Time>,
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
    ping_at: Option<Time>,
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
            ping_at: None,
            source_epoch: 0,
            empty_at: None,
            epochs: 0,
            fenced: false,
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
        let view = |slot: &Slot, role: Role| match slot.child.and_then(|c| self.children.get(&c)) {
            Some(c) => ChildView {
                role,
                pid: c.pid,
                state: c.state,
                restarts: slot.restarts,
                job_id: c.job_id(),
            },
            None => ChildView {
                role,
                pid: None,
                state: ChildState::Exited,
                restarts: slot.restarts,
                job_id: None,
            },
        };
        if self.grabber.child.is_some() || self.grabber.restart_at.is_some() {
            rows.push(view(&self.grabber, Role::Grabber));
        }
        for name in &self.order {
            let g = &self.groups[name];
            for (&slot, s) in &g.slots {
                if s.child.is_some() || s.restart_at.is_some() {
                    let role = Role::Worker {
                        group: name.clone(),
                        slot,
                    };
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
            .filter(|c| c.role.group() == Some(group) && c.job.is_some())
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

    /// The earliest time at which [`Core::on_timeout`] has something to do.
    pub fn next_deadline(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut at = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if self.phase == Phase::Stopped {
            return None;
        }
        at(self.ping_at);
        at(self.grabber.restart_at);
        for g in self.groups.values() {
            for s in g.slots.values() {
                at(s.restart_at);
            }
        }
        for c in self.children.values() {
            // Timers on a child act on its pid: until the shell reports it, or once
            // SIGKILL went out, they have nothing to do, and a deadline that passes with
            // nothing to do would make the shell call `on_timeout` in a busy loop.
            if c.pid.is_none() || c.killed {
                continue;
            }
            at(c.stop_deadline);
            if c.state == ChildState::Starting {
                at(Some(c.spawned_at + self.spec.start_timeout));
            }
            if let Some(run) = &c.job {
                match run.stop {
                    Some(stop) => at(stop.kill_at.or(stop.abandon_at)),
                    None => at(run.deadline),
                }
            }
        }
        if let Phase::Stopping {
            grace_deadline,
            immediate: false,
            ..
        } = self.phase
        {
            if self
                .children
                .values()
                .any(|c| c.job.as_ref().is_some_and(|r| r.stop.is_none()))
            {
                at(Some(grace_deadline));
            }
        }
        t
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
            self.grabber_seen(now);
        }
        match input {
            Input::Start => self.start(now),
            Input::Spawned { child, pid } => self.spawned(now, child, pid),
            Input::SpawnFailed { child, error } => self.spawn_failed(now, child, error),
            Input::Ready { child } => self.ready(now, child),
            Input::Alive { child } => {
                if let Some(c) = self.children.get_mut(&child) {
                    c.last_seen = now;
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
            } => {
                let facts = Facts {
                    ran_for,
                    start_error,
                    reason,
                };
                self.job_ended(now, child, job, end, facts)
            }
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
            Input::Reload(spec) => self.reload(now, spec),
            Input::Shutdown { reason, immediate } => self.shutdown(now, reason, immediate, 0),
            Input::Fenced { reason } => {
                self.fenced = true;
                self.shutdown(now, reason, true, 1);
            }
        }
        self.check_until_empty(now);
        self.check_stopped();
        std::mem::take(&mut self.out)
    }

    fn grabber_seen(&mut self, now: Time) {
        if let Some(c) = self.grabber.child.and_then(|id| self.children.get_mut(&id)) {
            c.last_seen = c.last_seen.max(now);
        }
    }

    /// Handle every timer due at `now`.
    pub fn on_timeout(&mut self, now: Time) -> Vec<Action> {
        if self.phase == Phase::Stopped {
            return Vec::new();
        }
        self.heartbeats(now);
        self.restarts_due(now);
        self.job_timers(now);
        self.stop_deadlines(now);
        self.grace_due(now);
        self.check_until_empty(now);
        self.check_stopped();
        std::mem::take(&mut self.out)
    }

    // ----- lifecycle -------------------------------------------------------------

    fn start(&mut self, now: Time) {
        if self.phase != Phase::Created {
            return;
        }
        self.phase = Phase::Running;
        self.ping_at = Some(now + self.spec.heartbeat.interval);
        self.spawn_grabber(now);
        for name in self.order.clone() {
            let slots: Vec<u32> = self.groups[&name].slots.keys().copied().collect();
            for slot in slots {
                self.spawn_worker(now, &name, slot);
            }
        }
    }

    fn new_child(&mut self, now: Time, role: Role) -> ChildId {
        let id = self.next_child;
        self.next_child += 1;
        self.children.insert(
            id,
            Child {
                role: role.clone(),
                pid: None,
                state: ChildState::Starting,
                spawned_at: now,
                ready_at: None,
                last_seen: now,
                job: None,
                killed: false,
                stop_deadline: None,
            },
        );
        self.out.push(Action::Spawn { child: id, role });
        id
    }

    fn spawn_grabber(&mut self, now: Time) {
        self.grabber.restart_at = None;
        let id = self.new_child(now, Role::Grabber);
        self.grabber.child = Some(id);
    }

    fn spawn_worker(&mut self, now: Time, group: &str, slot: u32) {
        let id = self.new_child(
            now,
            Role::Worker {
                group: group.to_string(),
                slot,
            },
        );
        let s = self
            .groups
            .get_mut(group)
            .and_then(|g| g.slots.get_mut(&slot))
            .expect("spawning a worker for a slot that exists");
        s.restart_at = None;
        s.child = Some(id);
    }

    fn spawned(&mut self, now: Time, child: ChildId, pid: u32) {
        let immediate = matches!(
            self.phase,
            Phase::Stopping {
                immediate: true,
                ..
            }
        );
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        c.pid = Some(pid);
        self.out.push(Action::Emit(Event::ChildStarted {
            role: c.role.clone(),
            pid,
        }));
        // An immediate stop could not kill this child while its pid was unknown, and a
        // graceful one may have let its stop deadline pass: kill it now, or it would
        // outlive the stop.
        let overdue = c.stop_deadline.is_some_and(|t| t <= now);
        if (immediate || overdue) && !c.killed {
            c.killed = true;
            c.stop_deadline = None;
            self.out.push(Action::KillChild {
                child,
                pid,
                signal: Signal::Kill,
            });
        }
    }

    fn spawn_failed(&mut self, now: Time, child: ChildId, error: String) {
        let Some(c) = self.children.remove(&child) else {
            return;
        };
        self.out.push(Action::Emit(Event::ChildExited {
            role: c.role.clone(),
            pid: None,
            end: None,
            expected: false,
            job_id: None,
            reason: Some(error),
        }));
        self.child_gone(now, child, c, false);
    }

    fn ready(&mut self, now: Time, child: ChildId) {
        let stopping = self.is_stopping();
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        c.last_seen = now;
        if c.state != ChildState::Starting {
            return;
        }
        c.ready_at = Some(now);
        match c.role.clone() {
            Role::Grabber => {
                c.set_state(ChildState::Ready);
                if stopping {
                    self.stop_child(now, child);
                    return;
                }
                // A new grabber holds no credits: grant every group's free slots.
                for g in self.groups.values_mut() {
                    g.granted = 0;
                }
                for name in self.order.clone() {
                    self.refill(&name);
                }
                self.poll_source();
            }
            Role::Worker { group, .. } => {
                c.set_state(ChildState::Idle);
                self.worker_idle(now, child, &group);
            }
        }
    }

    fn exited(&mut self, now: Time, pid: u32, end: ProcessEnd) {
        let Some((&id, _)) = self.children.iter().find(|(_, c)| c.pid == Some(pid)) else {
            // A job's orphaned grandchild, reaped because we are the subreaper.
            return;
        };
        let c = self.children.remove(&id).expect("found above");
        let expected = c.state == ChildState::Stopping || self.is_stopping();
        let reason = if c.killed && !expected {
            Some("did not answer in time".to_string())
        } else {
            None
        };
        self.out.push(Action::Emit(Event::ChildExited {
            role: c.role.clone(),
            pid: c.pid,
            end: Some(end),
            expected,
            job_id: c.job_id(),
            reason,
        }));
        self.child_gone(now, id, c, expected);
    }

    /// A child is gone (reaped or never spawned): settle its job, then restart, retire
    /// or forget its slot.
    fn child_gone(&mut self, now: Time, id: ChildId, mut c: Child, expected: bool) {
        if let Some(run) = c.job.take() {
            if let Some(pgid) = run.job_pid {
                // Whatever the job left in its process group must not outlive the worker.
                self.out.push(Action::KillJobGroup { pgid });
            }
            // Why the job was being stopped decides, as in `job_ended`: a canceled job
            // stays canceled (and a timed out one timed out) even when its worker dies
            // during a stop; only a job that was running on, or stopped for the
            // shutdown, goes back to the queue without using an attempt.
            match run.stop.map(|s| s.reason) {
                Some(StopReason::Cancel) => {
                    self.finish_job(now, run, Outcome::Canceled, None, Facts::default())
                }
                Some(StopReason::Timeout) => {
                    self.finish_job(now, run, Outcome::TimedOut, None, Facts::default())
                }
                Some(StopReason::Shutdown) => self.release(run.job),
                None if self.is_stopping() => self.release(run.job),
                None => self.finish_job(now, run, Outcome::Lost, None, Facts::default()),
            }
            // A lost job may be queued again: a report of an empty source made while it
            // ran must not end an until-empty run.
            self.source_changed();
        }
        match c.role.clone() {
            Role::Grabber => {
                if self.grabber.child == Some(id) {
                    self.grabber.child = None;
                }
                for g in self.groups.values_mut() {
                    g.granted = 0;
                }
                self.out.push(Action::ReleaseStrays {
                    known: self.jobs_in_flight(),
                });
                // The strays go back to the queue: an earlier "empty" no longer holds.
                self.source_changed();
                if !expected && !self.is_stopping() {
                    self.schedule_grabber_restart(now, &c);
                }
            }
            Role::Worker { group, slot } => {
                let stopping = self.is_stopping();
                let Some(g) = self.groups.get_mut(&group) else {
                    return;
                };
                let Some(s) = g.slots.get_mut(&slot) else {
                    return;
                };
                if s.child == Some(id) {
                    s.child = None;
                }
                let keep = !s.retiring && g.accepting() && !stopping;
                if !keep {
                    g.slots.remove(&slot);
                    self.forget_group_if_drained(&group);
                    return;
                }
                if expected {
                    // Asked to stop while still wanted (cannot happen today); start again.
                    self.spawn_worker(now, &group, slot);
                    return;
                }
                self.schedule_worker_restart(now, &group, slot, &c);
                // Its credit may now have no worker behind it; claimed jobs wait in
                // `pending` for the next idle worker of the group.
            }
        }
    }

    fn schedule_grabber_restart(&mut self, now: Time, c: &Child) {
        let policy = self.spec.grabber_restart.clone();
        match intensity(&mut self.grabber_window, &policy, now) {
            Err(restarts) => self.give_up(now, None, restarts, &policy),
            Ok(in_period) => {
                let delay = next_backoff(&mut self.grabber, &policy, c, now, &mut *self.rng);
                self.grabber.restarts += 1;
                self.grabber.restart_at = Some(now + delay);
                self.out.push(Action::Emit(Event::ChildRestartScheduled {
                    role: Role::Grabber,
                    delay,
                    restarts_in_period: in_period,
                }));
            }
        }
    }

    fn schedule_worker_restart(&mut self, now: Time, group: &str, slot: u32, c: &Child) {
        let g = self.groups.get_mut(group).expect("caller checked");
        let policy = g.spec.restart.clone();
        match intensity(&mut g.window, &policy, now) {
            Err(restarts) => self.give_up(now, Some(group.to_string()), restarts, &policy),
            Ok(in_period) => {
                let s = g.slots.get_mut(&slot).expect("caller checked");
                let delay = next_backoff(s, &policy, c, now, &mut *self.rng);
                s.restarts += 1;
                s.restart_at = Some(now + delay);
                self.out.push(Action::Emit(Event::ChildRestartScheduled {
                    role: c.role.clone(),
                    delay,
                    restarts_in_period: in_period,
                }));
            }
        }
    }

    fn give_up(&mut self, now: Time, group: Option<String>, restarts: u32, policy: &RestartPolicy) {
        self.out.push(Action::Emit(Event::GroupGaveUp {
            group: group.clone(),
            restarts,
            period: policy.period,
            action: policy.on_exhausted,
        }));
        match (policy.on_exhausted, group) {
            (OnExhausted::Disable, Some(name)) => self.disable_group(now, &name),
            (OnExhausted::Disable, None) => {
                // Nothing could claim jobs any more; a supervisor without a grabber is
                // no supervisor. The config crate never builds this; stop regardless.
                self.shutdown(now, "the grabber gave up".into(), false, EXIT_GAVE_UP)
            }
            (OnExhausted::Exit, g) => {
                let who = g.map_or("the grabber".to_string(), |g| format!("group {g}"));
                self.shutdown(now, format!("{who} gave up"), false, EXIT_GAVE_UP)
            }
        }
    }

    /// Stop a group for good (until a reload): no claims, idle workers stop, busy ones
    /// finish their job first, pending jobs go back to the queue.
    fn disable_group(&mut self, now: Time, name: &str) {
        self.close_group(now, name, GroupStatus::Disabled);
    }

    fn close_group(&mut self, now: Time, name: &str, status: GroupStatus) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        g.status = status;
        let pending: Vec<ClaimedJob> = g.pending.drain(..).collect();
        for s in g.slots.values_mut() {
            s.retiring = true;
            s.restart_at = None;
        }
        g.slots.retain(|_, s| s.child.is_some());
        self.revoke(name);
        for job in pending {
            self.release(job);
        }
        let idle: Vec<ChildId> = self.idle_or_starting_workers(name);
        for c in idle {
            self.stop_child(now, c);
        }
        self.forget_group_if_drained(name);
    }

    fn idle_or_starting_workers(&self, group: &str) -> Vec<ChildId> {
        self.children
            .iter()
            .filter(|(_, c)| {
                c.role.group() == Some(group)
                    && matches!(c.state, ChildState::Idle | ChildState::Starting)
            })
            .map(|(&id, _)| id)
            .collect()
    }

    fn forget_group_if_drained(&mut self, name: &str) {
        let drained = self
            .groups
            .get(name)
            .is_some_and(|g| g.status == GroupStatus::Draining && g.slots.is_empty());
        if drained {
            self.groups.remove(name);
            self.order.retain(|n| n != name);
        }
    }

    fn stop_child(&mut self, now: Time, id: ChildId) {
        let grace = self.spec.kill_grace;
        let Some(c) = self.children.get_mut(&id) else {
            return;
        };
        if c.state == ChildState::Stopping {
            return;
        }
        c.set_state(ChildState::Stopping);
        c.stop_deadline = Some(now + grace);
        self.out.push(Action::StopChild { child: id });
    }

    fn heartbeats(&mut self, now: Time) {
        let Some(at) = self.ping_at else { return };
        let hb = self.spec.heartbeat;
        let start_timeout = self.spec.start_timeout;
        let mut kill = Vec::new();
        for (&id, c) in &self.children {
            if c.killed || c.pid.is_none() {
                continue;
            }
            let silent = match c.state {
                ChildState::Starting => now.saturating_since(c.spawned_at) >= start_timeout,
                ChildState::Exited => false,
                _ => now.saturating_since(c.last_seen) >= hb.timeout,
            };
            if silent {
                kill.push(id);
            } else if now >= at && c.state != ChildState::Starting {
                self.out.push(Action::Ping { child: id });
            }
        }
        for id in kill {
            let c = self.children.get_mut(&id).expect("listed above");
            c.killed = true;
            log::warn!(
                "{} (pid {:?}) did not answer in time; killing it",
                c.role,
                c.pid
            );
            self.out.push(Action::KillChild {
                child: id,
                pid: c.pid.expect("checked above"),
                signal: Signal::Kill,
            });
        }
        if now >= at {
            self.ping_at = Some(now + hb.interval);
        }
    }

    fn restarts_due(&mut self, now: Time) {
        if self.is_stopping() {
            return;
        }
        if self.grabber.restart_at.is_some_and(|t| t <= now) {
            self.spawn_grabber(now);
        }
        let mut due = Vec::new();
        for (name, g) in &self.groups {
            for (&slot, s) in &g.slots {
                if s.restart_at.is_some_and(|t| t <= now) {
                    due.push((name.clone(), slot));
                }
            }
        }
        for (name, slot) in due {
            self.spawn_worker(now, &name, slot);
        }
    }

    fn stop_deadlines(&mut self, now: Time) {
        for (&id, c) in self.children.iter_mut() {
            if c.killed {
                // Killed already (say by the heartbeat): the deadline has nothing left
                // to do; left set, it would stay in `next_deadline` forever.
                c.stop_deadline = None;
                continue;
            }
            // Without a pid the deadline stays: `spawned` kills it once it is known
            // (clearing it here would let a child that ignores StopChild live on).
            let Some(pid) = c.pid else { continue };
            if c.stop_deadline.is_some_and(|t| t <= now) {
                c.stop_deadline = None;
                c.killed = true;
                self.out.push(Action::KillChild {
                    child: id,
                    pid,
                    signal: Signal::Kill,
                });
            }
        }
    }

    // ----- dispatch ----------------------------------------------------------------

    /// Put a claimed job back in the queue without using an attempt. The queue grew, so
    /// an earlier report of an empty source no longer holds.
    fn release(&mut self, job: ClaimedJob) {
        if self.fenced {
            // Not ours to give back: the supervisor that takes us for dead requeues it.
            return;
        }
        self.out.push(Action::Release {
            job: job.id,
            attempt: job.attempt,
        });
        self.source_changed();
    }

    /// Grant the grabber one credit per free worker of `group`: idle workers not
    /// already promised to a pending job or an outstanding credit. Never more.
    fn refill(&mut self, name: &str) {
        if self.is_stopping() || self.grabber_ready().is_none() {
            return;
        }
        let idle = self.idle_workers(name);
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        if !g.accepting() {
            return;
        }
        let promised = g.granted + g.pending.len() as u32;
        if idle > promised {
            let n = idle - promised;
            g.granted += n;
            self.out.push(Action::Grant {
                group: name.to_string(),
                n,
                epoch: g.epoch,
            });
        }
    }

    fn revoke(&mut self, name: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        self.epochs += 1;
        g.epoch = self.epochs;
        g.granted = 0;
        if self.grabber.child.is_some() {
            self.out.push(Action::Revoke {
                group: name.to_string(),
                epoch: g.epoch,
            });
        }
    }

    fn grabber_ready(&self) -> Option<ChildId> {
        self.grabber.child.filter(|c| {
            self.children
                .get(c)
                .is_some_and(|c| c.state == ChildState::Ready)
        })
    }

    fn poll_source(&mut self) {
        if self.grabber_ready().is_some() && !self.is_stopping() {
            self.out.push(Action::Poll {
                epoch: self.source_epoch,
            });
        }
    }

    /// Something may have made more jobs runnable: ask for a fresh look.
    fn source_changed(&mut self) {
        self.source_epoch += 1;
        self.empty_at = None;
        self.poll_source();
    }

    fn claimed(&mut self, now: Time, job: ClaimedJob) {
        let idle = self.idle_workers(&job.group);
        let Some(g) = self.groups.get_mut(&job.group) else {
            // Routed to a group a reload just removed: back to the queue.
            self.release(job);
            return;
        };
        let current = job.epoch == g.epoch;
        if current {
            g.granted = g.granted.saturating_sub(1);
        }
        if !g.accepting() || self.phase != Phase::Running {
            self.release(job);
            return;
        }
        // A claim made with a revoked credit (it raced the Revoke) has no free worker
        // behind it unless an idle worker is neither granted nor promised to a pending
        // job. Keeping it anyway would hold more jobs than the pool can run (the
        // prefetch the dispatch rule forbids), so it goes back to the queue.
        if !current && idle <= g.granted + g.pending.len() as u32 {
            self.release(job);
            return;
        }
        let name = job.group.clone();
        g.pending.push_back(job);
        self.dispatch(now, &name);
    }

    /// Workers of `group` up and without a job (never a retiring one: those are
    /// stopped as soon as they are idle).
    fn idle_workers(&self, group: &str) -> u32 {
        self.children
            .values()
            .filter(|c| c.role.group() == Some(group) && c.state == ChildState::Idle)
            .count() as u32
    }

    /// Hand pending jobs of `group` to its idle workers, lowest slot first.
    fn dispatch(&mut self, now: Time, name: &str) {
        loop {
            let Some(g) = self.groups.get(name) else {
                return;
            };
            if g.pending.is_empty() {
                return;
            }
            let idle = g.slots.iter().find_map(|(_, s)| {
                s.child.filter(|c| {
                    !s.retiring
                        && self
                            .children
                            .get(c)
                            .is_some_and(|c| c.state == ChildState::Idle)
                })
            });
            let Some(worker) = idle else { return };
            let g = self.groups.get_mut(name).expect("checked above");
            let job = g.pending.pop_front().expect("checked above");
            let timeout = job.timeout.or(g.spec.job_timeout);
            let max_attempts = job.max_attempts.unwrap_or(g.spec.max_attempts).max(1);
            let c = self.children.get_mut(&worker).expect("checked above");
            c.set_state(ChildState::Busy);
            c.job = Some(JobRun {
                job: job.clone(),
                max_attempts,
                assigned_at: now,
                started_at: None,
                job_pid: None,
                deadline: timeout.map(|t| now + t),
                stop: None,
            });
            self.out.push(Action::StartJob { child: worker, job });
        }
    }

    fn worker_idle(&mut self, now: Time, child: ChildId, group: &str) {
        let retiring = match self.children.get(&child).map(|c| &c.role) {
            Some(Role::Worker { group, slot }) => self
                .groups
                .get(group)
                .and_then(|g| g.slots.get(slot))
                .is_none_or(|s| s.retiring),
            _ => true,
        };
        if retiring || self.is_stopping() {
            self.stop_child(now, child);
            return;
        }
        self.dispatch(now, group);
        self.refill(group);
    }

    // ----- jobs in flight --------------------------------------------------------------

    fn job_started(&mut self, now: Time, child: ChildId, job: JobId, pid: u32) {
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        c.last_seen = now;
        let worker_pid = c.pid.unwrap_or(0);
        let Role::Worker { group, slot } = c.role.clone() else {
            return;
        };
        let Some(run) = c.job.as_mut().filter(|r| r.job.id == job) else {
            return;
        };
        run.started_at = Some(now);
        run.job_pid = Some(pid);
        let attempt = run.job.attempt;
        self.out.push(Action::Emit(Event::JobStarted {
            job_id: job,
            group,
            slot,
            worker_pid,
            attempt,
        }));
    }

    fn job_ended(
        &mut self,
        now: Time,
        child: ChildId,
        job: JobId,
        end: Option<ProcessEnd>,
        facts: Facts,
    ) {
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        c.last_seen = now;
        if c.job_id() != Some(job) {
            return;
        }
        let run = c.job.take().expect("checked above");
        let group = c.role.group().unwrap_or_default().to_string();
        if c.state == ChildState::Busy {
            c.set_state(ChildState::Idle);
        }
        let stop = run.stop.map(|s| s.reason);
        if stop == Some(StopReason::Shutdown) {
            self.release(run.job);
        } else {
            let outcome = match (stop, end) {
                (Some(StopReason::Timeout), _) => Outcome::TimedOut,
                (Some(StopReason::Cancel), _) => Outcome::Canceled,
                (_, Some(e)) if e.success() => Outcome::Succeeded,
                _ => Outcome::Failed,
            };
            self.finish_job(now, run, outcome, end, facts);
        }
        self.source_changed();
        self.worker_idle(now, child, &group);
    }

    /// Decide what follows an attempt and record it: done, retry, or dead.
    fn finish_job(
        &mut self,
        now: Time,
        run: JobRun,
        outcome: Outcome,
        end: Option<ProcessEnd>,
        facts: Facts,
    ) {
        let job = &run.job;
        let next = if !outcome.retryable() {
            Next::Done
        } else if job.attempt >= run.max_attempts {
            Next::Dead
        } else {
            let backoff = self
                .groups
                .get(&job.group)
                .map_or(crate::spec::defaults::retry_backoff(), |g| {
                    g.spec.retry_backoff
                });
            Next::Retry {
                delay: backoff.nth_delay(job.attempt.saturating_sub(1), &mut *self.rng),
            }
        };
        let duration = facts
            .ran_for
            .unwrap_or_else(|| now.saturating_since(run.started_at.unwrap_or(run.assigned_at)));
        self.out.push(Action::RecordOutcome {
            job: job.id,
            attempt: job.attempt,
            outcome,
            end,
            next,
            start_error: facts.start_error.clone(),
            reason: facts.reason.clone(),
        });
        self.out.push(Action::Emit(Event::JobFinished {
            job_id: job.id,
            group: job.group.clone(),
            attempt: job.attempt,
            outcome,
            end,
            duration,
            start_error: facts.start_error,
            reason: facts.reason,
        }));
        match next {
            Next::Done => {}
            Next::Retry { delay } => self.out.push(Action::Emit(Event::JobRetryScheduled {
                job_id: job.id,
                attempt: job.attempt,
                delay,
            })),
            Next::Dead => self.out.push(Action::Emit(Event::JobDead {
                job_id: job.id,
                attempts: job.attempt,
                reason: None,
            })),
        }
    }

    fn cancel(&mut self, now: Time, job: JobId) {
        let kill_grace = self.spec.kill_grace;
        // A claimed job still waiting for a worker: settle it without running it.
        for g in self.groups.values_mut() {
            if let Some(i) = g.pending.iter().position(|j| j.id == job) {
                let j = g.pending.remove(i).expect("position found");
                let run = JobRun {
                    max_attempts: j.max_attempts.unwrap_or(g.spec.max_attempts),
                    job: j,
                    assigned_at: now,
                    started_at: None,
                    job_pid: None,
                    deadline: None,
                    stop: None,
                };
                let name = run.job.group.clone();
                self.finish_job(now, run, Outcome::Canceled, None, Facts::default());
                self.refill(&name);
                return;
            }
        }
        for (&id, c) in self.children.iter_mut() {
            let Some(run) = c.job.as_mut().filter(|r| r.job.id == job) else {
                continue;
            };
            match &mut run.stop {
                None => {
                    run.stop = Some(JobStop {
                        reason: StopReason::Cancel,
                        kill_at: Some(now + kill_grace),
                        abandon_at: None,
                    });
                    self.out.push(Action::SignalJob {
                        child: id,
                        job,
                        signal: Signal::Term,
                    });
                }
                Some(stop) => {
                    // Already being stopped (timeout, shutdown): that TERM/KILL goes
                    // on, but the operator's word decides the outcome: `canceled`, not
                    // a retry nor a requeue.
                    stop.reason = StopReason::Cancel;
                }
            }
            return;
        }
    }

    fn job_timers(&mut self, now: Time) {
        let kill_grace = self.spec.kill_grace;
        for (&id, c) in self.children.iter_mut() {
            if c.killed {
                // Its worker is being killed; the job is settled when it is reaped.
                continue;
            }
            let Some(run) = c.job.as_mut() else { continue };
            match &mut run.stop {
                None => {
                    if run.deadline.is_some_and(|d| d <= now) {
                        run.stop = Some(JobStop {
                            reason: StopReason::Timeout,
                            kill_at: Some(now + kill_grace),
                            abandon_at: None,
                        });
                        self.out.push(Action::SignalJob {
                            child: id,
                            job: run.job.id,
                            signal: Signal::Term,
                        });
                    }
                }
                Some(stop) => {
                    if stop.kill_at.is_some_and(|k| k <= now) {
                        stop.kill_at = None;
                        stop.abandon_at = Some(now + kill_grace);
                        self.out.push(Action::SignalJob {
                            child: id,
                            job: run.job.id,
                            signal: Signal::Kill,
                        });
                    } else if stop.abandon_at.is_some_and(|k| k <= now) {
                        // SIGKILL went out a grace ago and the worker still says
                        // nothing of its job: the worker is broken; kill it.
                        stop.abandon_at = None;
                        if let Some(pid) = c.pid {
                            log::warn!(
                                "{} (pid {pid}) did not report the end of job {} after \
                                 SIGKILL; killing it",
                                c.role,
                                run.job.id
                            );
                            c.killed = true;
                            self.out.push(Action::KillChild {
                                child: id,
                                pid,
                                signal: Signal::Kill,
                            });
                        }
                    }
                }
            }
        }
    }

    // ----- reload ----------------------------------------------------------------

    /// Apply a new config generation without interrupting any running job.
    fn reload(&mut self, now: Time, spec: Spec) {
        if self.is_stopping() {
            return;
        }
        let old_names: Vec<String> = self.order.clone();
        let new_names: Vec<String> = spec.groups.iter().map(|g| g.name.clone()).collect();
        // Removed groups drain.
        for name in &old_names {
            if !new_names.contains(name) {
                self.close_group(now, name, GroupStatus::Draining);
            }
        }
        for gs in &spec.groups {
            match self.groups.get_mut(&gs.name) {
                None => {
                    self.epochs += 1;
                    let group = Group::new(gs.clone(), self.epochs);
                    self.groups.insert(gs.name.clone(), group);
                    let slots: Vec<u32> = (0..gs.max_workers).collect();
                    if self.phase == Phase::Running {
                        for slot in slots {
                            self.spawn_worker(now, &gs.name, slot);
                        }
                    }
                }
                Some(g) => {
                    if g.status != GroupStatus::Active {
                        // Back in the config (or a disabled group reloaded): a fresh
                        // start. Its retiring workers are reused by `resize`.
                        g.status = GroupStatus::Active;
                        g.window.clear();
                    }
                    g.spec = gs.clone();
                    self.resize(now, &gs.name);
                }
            }
        }
        self.order = new_names;
        for (name, g) in &self.groups {
            if g.status == GroupStatus::Draining && !self.order.contains(name) {
                self.order.push(name.clone());
            }
        }
        self.spec = Spec {
            groups: spec.groups.clone(),
            ..spec
        };
        for name in self.order.clone() {
            self.refill(&name);
        }
        self.source_changed();
    }

    /// Bring a group's live slots to `max_workers`: grow at once into the lowest free
    /// slot numbers; shrink by retiring slots waiting for a restart first, then
    /// starting and idle workers, and busy ones last (after their job).
    fn resize(&mut self, now: Time, name: &str) {
        let g = self.groups.get_mut(name).expect("caller checked");
        let want = g.spec.max_workers as usize;
        let live: Vec<u32> = g
            .slots
            .iter()
            .filter(|(_, s)| !s.retiring)
            .map(|(&n, _)| n)
            .collect();
        if live.len() < want {
            let mut missing = want - live.len();
            let mut spawn = Vec::new();
            let mut n = 0u32;
            while missing > 0 {
                match g.slots.get_mut(&n) {
                    Some(s) if s.retiring && s.child.is_some() => {
                        // Retiring but still alive: keep it instead of a new one.
                        s.retiring = false;
                        missing -= 1;
                    }
                    Some(_) => {}
                    None => {
                        g.slots.insert(n, Slot::default());
                        spawn.push(n);
                        missing -= 1;
                    }
                }
                n += 1;
            }
            if self.phase == Phase::Running {
                for slot in spawn {
                    self.spawn_worker(now, name, slot);
                }
            }
            return;
        }
        let excess = live.len() - want;
        if excess == 0 {
            return;
        }
        let rank = |s: &Slot| match s.child.and_then(|c| self.children.get(&c)) {
            None => 0,
            Some(c) => match c.state {
                // Already on its way out (a retiring worker a grow kept): retiring it
                // again costs nothing.
                ChildState::Stopping | ChildState::Exited => 0,
                ChildState::Starting => 1,
                ChildState::Idle => 2,
                ChildState::Ready | ChildState::Busy => 3,
            },
        };
        let mut order: Vec<(u8, std::cmp::Reverse<u32>)> = live
            .iter()
            .map(|n| (rank(&g.slots[n]), std::cmp::Reverse(*n)))
            .collect();
        order.sort();
        let retire: Vec<u32> = order.iter().take(excess).map(|(_, r)| r.0).collect();
        let mut stop = Vec::new();
        for n in retire {
            let s = g.slots.get_mut(&n).expect("listed above");
            s.retiring = true;
            s.restart_at = None;
            match s.child {
                None => {
                    g.slots.remove(&n);
                }
                Some(c) => {
                    if self
                        .children
                        .get(&c)
                        .is_some_and(|c| matches!(c.state, ChildState::Idle | ChildState::Starting))
                    {
                        stop.push(c);
                    }
                }
            }
        }
        // Claimed jobs waiting for a worker beyond what the remaining slots can take
        // (their credits were granted for slots just retired) go back to the queue:
        // holding them would be more jobs than the pool can run.
        let room = g
            .slots
            .values()
            .filter(|s| !s.retiring)
            .filter(|s| {
                s.child
                    .and_then(|c| self.children.get(&c))
                    .is_none_or(|c| c.job.is_none())
            })
            .count();
        let excess: Vec<ClaimedJob> = if g.pending.len() > room {
            g.pending.drain(room..).collect()
        } else {
            Vec::new()
        };
        // Credits promised to workers that are going away come back; `refill` grants
        // what the remaining idle workers can take.
        if g.granted > 0 {
            self.revoke(name);
        }
        for job in excess {
            self.release(job);
        }
        for c in stop {
            self.stop_child(now, c);
        }
    }

    // ----- shutdown --------------------------------------------------------------

    fn shutdown(&mut self, now: Time, reason: String, immediate: bool, code: i32) {
        match self.phase {
            Phase::Stopped => return,
            Phase::Stopping {
                immediate: true, ..
            } => return,
            Phase::Stopping { code: old, .. } => {
                if !immediate {
                    return;
                }
                self.phase = Phase::Stopping {
                    code: old.max(code),
                    grace_deadline: now,
                    immediate: true,
                };
            }
            Phase::Created | Phase::Running => {
                self.phase = Phase::Stopping {
                    code,
                    grace_deadline: now + self.spec.shutdown_grace,
                    immediate,
                };
            }
        }
        self.out
            .push(Action::Emit(Event::SupervisorStopping { reason }));
        self.grabber.restart_at = None;
        for name in self.order.clone() {
            let g = self.groups.get_mut(&name).expect("ordered groups exist");
            for s in g.slots.values_mut() {
                s.restart_at = None;
            }
            g.slots.retain(|_, s| s.child.is_some());
            let pending: Vec<ClaimedJob> = g.pending.drain(..).collect();
            for job in pending {
                self.release(job);
            }
            self.revoke(&name);
        }
        let ids: Vec<ChildId> = self.children.keys().copied().collect();
        for id in ids {
            let c = &self.children[&id];
            if immediate {
                if let Some(pgid) = c.job.as_ref().and_then(|r| r.job_pid) {
                    self.out.push(Action::KillJobGroup { pgid });
                }
                // The worker may still report its job's death before it dies itself: the
                // job was stopped by the shutdown, so it goes back to the queue (a cancel
                // or timeout already under way keeps its own reason).
                if let Some(run) = self.children.get_mut(&id).and_then(|c| c.job.as_mut()) {
                    if run.stop.is_none() {
                        run.stop = Some(JobStop {
                            reason: StopReason::Shutdown,
                            kill_at: None,
                            abandon_at: None,
                        });
                    }
                }
                let c = &self.children[&id];
                if let (Some(pid), false) = (c.pid, c.killed) {
                    self.children.get_mut(&id).expect("listed").killed = true;
                    self.out.push(Action::KillChild {
                        child: id,
                        pid,
                        signal: Signal::Kill,
                    });
                }
            } else if c.job.is_none() {
                self.stop_child(now, id);
            }
        }
        self.grace_due(now);
    }

    /// Past the grace, stop every job still running: TERM now, KILL after `kill_grace`.
    fn grace_due(&mut self, now: Time) {
        let Phase::Stopping {
            grace_deadline,
            immediate: false,
            ..
        } = self.phase
        else {
            return;
        };
        if now < grace_deadline {
            return;
        }
        let kill_grace = self.spec.kill_grace;
        for (&id, c) in self.children.iter_mut() {
            let Some(run) = c.job.as_mut() else { continue };
            if run.stop.is_some() {
                // Already being stopped (timeout, cancel): that stop goes on.
                continue;
            }
            run.stop = Some(JobStop {
                reason: StopReason::Shutdown,
                kill_at: Some(now + kill_grace),
                abandon_at: None,
            });
            self.out.push(Action::SignalJob {
                child: id,
                job: run.job.id,
                signal: Signal::Term,
            });
        }
    }

    fn check_until_empty(&mut self, now: Time) {
        if !self.spec.until_empty || self.phase != Phase::Running {
            return;
        }
        let idle = self.empty_at == Some(self.source_epoch)
            && self.children.values().all(|c| c.job.is_none())
            && self.groups.values().all(|g| g.pending.is_empty());
        if idle {
            self.shutdown(now, "until-empty: no job left".into(), false, 0);
        }
    }

    fn check_stopped(&mut self) {
        if let Phase::Stopping { code, .. } = self.phase {
            if self.children.is_empty() {
                self.phase = Phase::Stopped;
                self.out
                    .push(Action::Emit(Event::SupervisorStopped { code }));
                self.out.push(Action::Exit { code });
            }
        }
    }
}

/// Count a restart against the sliding window: `Ok(restarts in the period, this one
/// included)`, or `Err(restarts)` when the limit is exceeded.
fn intensity(window: &mut VecDeque<Time>, policy: &RestartPolicy, now: Time) -> Result<u32, u32> {
    while window
        .front()
        .is_some_and(|&t| now.saturating_since(t) >= policy.period)
    {
        window.pop_front();
    }
    if window.len() as u32 >= policy.max_restarts {
        return Err(window.len() as u32 + 1);
    }
    window.push_back(now);
    Ok(window.len() as u32)
}

/// The delay before restarting a slot; the backoff starts over after a stable run.
fn next_backoff(
    slot: &mut Slot,
    policy: &RestartPolicy,
    c: &Child,
    now: Time,
    rng: &mut dyn Random,
) -> Duration {
    if c.ready_at
        .is_some_and(|t| now.saturating_since(t) >= policy.stable_after())
    {
        slot.backoff.reset();
    }
    slot.backoff.next(&policy.backoff, rng)
}
