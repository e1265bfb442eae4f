//! Children: starting them, their handshake, their exits, restarts with backoff and
//! the restart limit, heartbeats and stop deadlines.

use std::collections::VecDeque;
use std::time::Duration;

use crate::random::Random;
use crate::spec::{OnExhausted, RestartPolicy};
use crate::time::Time;

use super::child::{Child, ChildState, JobRun, StateKind, StopReason};
use super::timers::Timer;
use super::{
    Action, ChildId, Core, Event, Facts, GroupStatus, Outcome, Phase, ProcessEnd, Role, Signal,
    Slot, EXIT_GAVE_UP,
};

impl Core {
    pub(super) fn start(&mut self, now: Time) {
        if self.phase != Phase::Created {
            return;
        }
        self.phase = Phase::Running;
        self.timers.set(Timer::Ping, self.pings.start(now));
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
                pinged_at: None,
                killed: false,
            },
        );
        self.out.push(Action::Spawn { child: id, role });
        id
    }

    fn spawn_grabber(&mut self, now: Time) {
        self.timers.stop(&Timer::Restart(Role::Grabber));
        let id = self.new_child(now, Role::Grabber);
        self.grabber.child = Some(id);
    }

    pub(super) fn spawn_worker(&mut self, now: Time, group: &str, slot: u32) {
        let role = Role::Worker {
            group: group.to_string(),
            slot,
        };
        self.timers.stop(&Timer::Restart(role.clone()));
        let id = self.new_child(now, role);
        let s = self
            .groups
            .get_mut(group)
            .and_then(|g| g.slots.get_mut(&slot))
            .expect("spawning a worker for a slot that exists");
        s.child = Some(id);
    }

    pub(super) fn spawned(&mut self, now: Time, child: ChildId, pid: u32) {
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
        let overdue = matches!(c.state, ChildState::Stopping { deadline } if deadline <= now);
        if (immediate || overdue) && !c.killed {
            c.killed = true;
            self.out.push(Action::KillChild {
                child,
                pid,
                signal: Signal::Kill,
            });
        }
        self.arm(child);
    }

    pub(super) fn spawn_failed(&mut self, now: Time, child: ChildId, error: String) {
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
            retired: self.slot_retires(&c.role),
        }));
        self.arm(child);
        self.child_gone(now, child, c, false);
    }

    pub(super) fn ready(&mut self, now: Time, child: ChildId) {
        let stopping = self.is_stopping();
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        c.heard();
        if c.state != ChildState::Starting {
            return;
        }
        c.ready_at = Some(now);
        match c.role.clone() {
            Role::Grabber => {
                c.set_state(ChildState::Ready);
                self.arm(child);
                // First what it may claim for, and whether to claim at all.
                self.send_runnable(self.out.len());
                if self.outcomes_waiting {
                    self.out.push(Action::HoldClaims { hold: true });
                }
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
                self.arm(child);
                self.worker_idle(now, child, &group);
            }
        }
    }

    pub(super) fn exited(&mut self, now: Time, pid: u32, end: ProcessEnd) {
        let Some((&id, _)) = self.children.iter().find(|(_, c)| c.pid == Some(pid)) else {
            // A job's orphaned grandchild, reaped because we are the subreaper.
            return;
        };
        let c = self.children.remove(&id).expect("found above");
        self.arm(id);
        let expected = c.state.kind() == StateKind::Stopping || self.is_stopping();
        if let Some(run) = c.job() {
            self.announce_unstarted(&c.role, c.pid.unwrap_or(0), run);
        }
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
            retired: !expected && self.slot_retires(&c.role),
        }));
        self.child_gone(now, id, c, expected);
    }

    /// A worker that died before it said it started its job: the attempt was counted
    /// (started, in the store's eyes), so unless [`Self::child_gone`] gives it back to
    /// the queue its `job_finished` follows a `job_started` (said before the worker's
    /// `child_exited`), as every attempt's does.
    fn announce_unstarted(&mut self, role: &Role, worker_pid: u32, run: &JobRun) {
        let released = run.main_end.is_none()
            && (run.stop.as_ref()).is_none_or(|s| s.reason == StopReason::Shutdown)
            && (self.is_stopping() || run.stop.is_some());
        if let (None, false, Role::Worker { group, slot }) = (&run.started, released, role) {
            self.out.push(Action::Emit(Event::JobStarted {
                job_id: run.claim.id,
                group: group.clone(),
                slot: *slot,
                worker_pid,
                attempt: run.claim.attempt,
            }));
        }
    }

    /// A worker's slot that [`Self::child_gone`] will forget, not restart: retiring, its
    /// group no longer taking jobs, or the supervisor stopping.
    fn slot_retires(&self, role: &Role) -> bool {
        let Role::Worker { group, slot } = role else {
            return false;
        };
        let Some(g) = self.groups.get(group) else {
            return true;
        };
        g.slots
            .get(slot)
            .is_none_or(|s| s.retiring || !g.accepting() || self.is_stopping())
    }

    /// A child is gone (reaped or never spawned): settle its job, then restart, retire
    /// or forget its slot.
    fn child_gone(&mut self, now: Time, id: ChildId, c: Child, expected: bool) {
        let (role, ready_at) = (c.role.clone(), c.ready_at);
        if let Some(run) = c.exit() {
            if let Some(pgid) = run.started.map(|s| s.pgid) {
                // Whatever the job left in its process group must not outlive the worker.
                self.out.push(Action::KillJobGroup { pgid });
            }
            // Its main process had ended on its own, before the worker died killing what
            // it left: that end is the attempt's. Else why the job was being stopped
            // decides, as in `job_ended`: a canceled job stays canceled (and a timed out
            // one timed out) even when its worker dies during a stop; only a job that was
            // running on, or stopped for the shutdown, goes back to the queue without
            // using an attempt.
            match (run.main_end, run.stop.map(|s| s.reason)) {
                // A cancel still wins over an end that would be retried.
                (Some(end), Some(StopReason::Cancel)) if !end.success() => {
                    self.finish_job(now, run, Outcome::Canceled, Some(end), Facts::default())
                }
                (Some(end), _) => {
                    let outcome = if end.success() {
                        Outcome::Succeeded
                    } else {
                        Outcome::Failed
                    };
                    self.finish_job(now, run, outcome, Some(end), Facts::default())
                }
                (None, Some(StopReason::Cancel)) => {
                    self.finish_job(now, run, Outcome::Canceled, None, Facts::default())
                }
                (None, Some(StopReason::Timeout)) => {
                    self.finish_job(now, run, Outcome::TimedOut, None, Facts::default())
                }
                (None, Some(StopReason::Shutdown)) => self.give_back(now, run, None),
                (None, None) if self.is_stopping() => self.give_back(now, run, None),
                (None, None) => self.finish_job(now, run, Outcome::Lost, None, Facts::default()),
            }
            // A lost job may be queued again: a report of an empty source made while it
            // ran must not end an until-empty run.
            self.source_changed();
        }
        match role {
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
                    self.schedule_grabber_restart(now, ready_at);
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
                self.schedule_worker_restart(now, &group, slot, ready_at);
                // Its credit may now have no worker behind it; claimed jobs wait in
                // `pending` for the next idle worker of the group.
            }
        }
    }

    fn schedule_grabber_restart(&mut self, now: Time, ready_at: Option<Time>) {
        let policy = self.spec.grabber_restart.clone();
        match intensity(&mut self.grabber_window, &policy, now) {
            Err(restarts) => self.give_up(now, None, restarts, &policy),
            Ok(in_period) => {
                let delay = next_backoff(&mut self.grabber, &policy, ready_at, now, &mut *self.rng);
                self.grabber.restarts += 1;
                self.timers.set(Timer::Restart(Role::Grabber), now + delay);
                self.out.push(Action::Emit(Event::ChildRestartScheduled {
                    role: Role::Grabber,
                    delay,
                    restarts_in_period: in_period,
                }));
            }
        }
    }

    fn schedule_worker_restart(
        &mut self,
        now: Time,
        group: &str,
        slot: u32,
        ready_at: Option<Time>,
    ) {
        let g = self.groups.get_mut(group).expect("caller checked");
        let policy = g.spec.restart.clone();
        match intensity(&mut g.window, &policy, now) {
            Err(restarts) => self.give_up(now, Some(group.to_string()), restarts, &policy),
            Ok(in_period) => {
                let s = g.slots.get_mut(&slot).expect("caller checked");
                let delay = next_backoff(s, &policy, ready_at, now, &mut *self.rng);
                s.restarts += 1;
                let role = Role::Worker {
                    group: group.to_string(),
                    slot,
                };
                self.timers.set(Timer::Restart(role.clone()), now + delay);
                self.out.push(Action::Emit(Event::ChildRestartScheduled {
                    role,
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
        let announced = self.out.len();
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
        // Its jobs can no longer run here: what the grabber reports as runnable must
        // leave them out.
        self.send_runnable(announced);
    }

    /// Stop a group for good (until a reload): no claims, idle workers stop, busy ones
    /// finish their job first, pending jobs go back to the queue.
    fn disable_group(&mut self, now: Time, name: &str) {
        self.close_group(now, name, GroupStatus::Disabled);
    }

    pub(super) fn stop_child(&mut self, now: Time, id: ChildId) {
        let grace = self.spec.kill_grace;
        let Some(c) = self.children.get_mut(&id) else {
            return;
        };
        if c.state.kind() == StateKind::Stopping {
            return;
        }
        c.set_state(ChildState::Stopping {
            deadline: now + grace,
        });
        self.arm(id);
        self.out.push(Action::StopChild { child: id });
    }

    /// Kill every child silent for too long (a starting one: not Ready within the start
    /// timeout), looked at on every wakeup; with `ping`, ping the others and set the next
    /// round.
    pub(super) fn heartbeats(&mut self, now: Time, ping: bool) {
        if self.phase == Phase::Created {
            return;
        }
        let timeout = self.spec.heartbeat.timeout;
        let start_timeout = self.spec.start_timeout;
        let mut kill = Vec::new();
        let mut pinged = Vec::new();
        for (&id, c) in &self.children {
            if c.killed || c.pid.is_none() {
                continue;
            }
            let silent = match c.state {
                ChildState::Starting => now.saturating_since(c.spawned_at) >= start_timeout,
                // Silent since a ping: a supervisor that could not ping (its loop held
                // up, by a locked store) has nothing to hold against its children.
                _ => c
                    .pinged_at
                    .is_some_and(|p| now.saturating_since(p) >= timeout),
            };
            if silent {
                kill.push(id);
            } else if ping && c.state != ChildState::Starting {
                self.out.push(Action::Ping { child: id });
                pinged.push(id);
            }
        }
        for id in pinged {
            let c = self.children.get_mut(&id).expect("listed above");
            c.pinged_at.get_or_insert(now);
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
            self.arm(id);
        }
        if ping {
            self.timers.set(Timer::Ping, self.pings.after_run(now, now));
        }
    }

    /// The restart of `role`'s slot is due.
    pub(super) fn restart_due(&mut self, now: Time, role: Role) {
        if self.is_stopping() {
            return;
        }
        match role {
            Role::Grabber => self.spawn_grabber(now),
            Role::Worker { group, slot } => {
                let waiting = (self.groups.get(&group))
                    .and_then(|g| g.slots.get(&slot))
                    .is_some_and(|s| s.child.is_none());
                if waiting {
                    self.spawn_worker(now, &group, slot);
                }
            }
        }
    }

    /// A stopping child's deadline passed: kill it.
    pub(super) fn stop_deadline(&mut self, id: ChildId) {
        let Some(c) = self.children.get_mut(&id) else {
            return;
        };
        // A killed child or one without a pid has no such timer (see `arm`).
        let (Some(pid), false) = (c.pid, c.killed) else {
            return;
        };
        if matches!(c.state, ChildState::Stopping { .. }) {
            c.killed = true;
            self.out.push(Action::KillChild {
                child: id,
                pid,
                signal: Signal::Kill,
            });
            self.arm(id);
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
    ready_at: Option<Time>,
    now: Time,
    rng: &mut dyn Random,
) -> Duration {
    if ready_at.is_some_and(|t| now.saturating_since(t) >= policy.stable_after()) {
        slot.backoff.reset();
    }
    slot.backoff.next(&policy.backoff, rng)
}
