//! Stopping: graceful (grace, then TERM, then KILL for running jobs), immediate, or
//! fenced; `--until-empty`; the end of the run.

use crate::time::Time;

use super::child::{JobStop, StopReason, StopStep};
use super::timers::Timer;
use super::{Action, ChildId, ClaimedJob, Core, Event, Phase, Role, Signal};

impl Core {
    /// SIGINT: the first stops gracefully, a second at once.
    pub(super) fn interrupt(&mut self, now: Time) {
        self.interrupts += 1;
        let second = self.interrupts > 1;
        let reason = if second { "second SIGINT" } else { "SIGINT" };
        self.shutdown(now, reason.into(), second, 0);
    }

    pub(super) fn shutdown(&mut self, now: Time, reason: String, immediate: bool, code: i32) {
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
                    immediate: true,
                };
                self.timers.stop(&Timer::Grace);
            }
            Phase::Created | Phase::Running => {
                self.phase = Phase::Stopping { code, immediate };
                if !immediate {
                    let end = now + self.spec.shutdown_grace;
                    self.timers.set(Timer::Grace, end);
                }
            }
        }
        self.out
            .push(Action::Emit(Event::SupervisorStopping { reason }));
        self.timers.stop(&Timer::Restart(Role::Grabber));
        for name in self.order.clone() {
            let g = self.groups.get_mut(&name).expect("ordered groups exist");
            for &n in g.slots.keys() {
                self.timers.stop(&Timer::Restart(Role::worker(&name, n)));
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
                if let Some(pgid) = c.job().and_then(|r| r.started).map(|s| s.pgid) {
                    self.out.push(Action::KillJobGroup { pgid });
                }
                // The worker may still report its job's death before it dies itself: the
                // job was stopped by the shutdown, so it goes back to the queue (a cancel
                // or timeout already under way keeps its own reason).
                if let Some(run) = self.children.get_mut(&id).and_then(|c| c.job_mut()) {
                    if run.stop.is_none() {
                        run.stop = Some(JobStop {
                            reason: StopReason::Shutdown,
                            step: StopStep::Done,
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
                self.arm(id);
            } else if c.job().is_none() {
                self.stop_child(now, id);
            }
        }
        // A grace of zero ends at once.
        if self.timers.get(&Timer::Grace).is_some_and(|end| end <= now) {
            self.timers.stop(&Timer::Grace);
            self.grace_due(now);
        }
    }

    /// The grace of a graceful stop ended: stop every job still running, TERM now, KILL
    /// after `kill_grace`.
    pub(super) fn grace_due(&mut self, now: Time) {
        let graceful = matches!(
            self.phase,
            Phase::Stopping {
                immediate: false,
                ..
            }
        );
        if !graceful {
            return;
        }
        let kill_grace = self.spec.kill_grace;
        let mut stopped = Vec::new();
        for (&id, c) in self.children.iter_mut() {
            let Some(run) = c.job_mut() else { continue };
            if run.stop.is_some() {
                // Already being stopped (timeout, cancel): that stop goes on.
                continue;
            }
            let term = run.begin_stop(id, StopReason::Shutdown, now + kill_grace);
            self.out.push(term);
            stopped.push(id);
        }
        for id in stopped {
            self.arm(id);
        }
    }

    pub(super) fn check_until_empty(&mut self, now: Time) {
        if !self.spec.until_empty || self.phase != Phase::Running {
            return;
        }
        let idle = self.empty_at == Some(self.source_epoch)
            && self.children.values().all(|c| c.job().is_none())
            && self.groups.values().all(|g| g.pending.is_empty());
        if idle {
            self.shutdown(now, "until-empty: no job left".into(), false, 0);
        }
    }

    pub(super) fn check_stopped(&mut self) {
        if let Phase::Stopping { code, .. } = self.phase {
            if self.children.is_empty() {
                self.phase = Phase::Stopped;
                // Nothing is left to wake for.
                self.timers.clear();
                self.out
                    .push(Action::Emit(Event::SupervisorStopped { code }));
                self.out.push(Action::Exit { code });
            }
        }
    }
}
