//! Dispatch with credits: grants and revokes to the grabber, claimed jobs waiting for
//! a worker, and handing them to idle workers.

use crate::time::Time;

use super::child::{ChildState, JobRun};
use super::{Action, ChildId, ClaimedJob, Core, Role};

impl Core {
    /// Put a claimed job back in the queue without using an attempt. The queue grew, so
    /// an earlier report of an empty source no longer holds.
    pub(super) fn release(&mut self, job: ClaimedJob) {
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
    pub(super) fn refill(&mut self, name: &str) {
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

    pub(super) fn revoke(&mut self, name: &str) {
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

    /// Tell the grabber (if there is one) which groups can run jobs: it claims for those
    /// only, and reports the backlog of those only. Placed at `at` in the actions, where
    /// the change is announced, but with the groups as they are once it is applied.
    pub(super) fn send_runnable(&mut self, at: usize) {
        if self.grabber.child.is_some() {
            let runnable = self.runnable_groups();
            self.out.insert(at, Action::GrabberSettings { runnable });
        }
    }

    /// Outcomes began (or ceased) to wait for the store: the grabber holds its claims
    /// meanwhile, as every new grabber is told.
    pub(super) fn hold_claims(&mut self, waiting: bool) {
        if waiting == self.outcomes_waiting {
            return;
        }
        self.outcomes_waiting = waiting;
        if self.grabber.child.is_some() {
            self.out.push(Action::HoldClaims { hold: waiting });
        }
    }

    fn grabber_ready(&self) -> Option<ChildId> {
        self.grabber.child.filter(|c| {
            self.children
                .get(c)
                .is_some_and(|c| c.state == ChildState::Ready)
        })
    }

    pub(super) fn poll_source(&mut self) {
        if self.grabber_ready().is_some() && !self.is_stopping() {
            self.out.push(Action::Poll {
                epoch: self.source_epoch,
            });
        }
    }

    /// Something may have made more jobs runnable: ask for a fresh look.
    pub(super) fn source_changed(&mut self) {
        self.source_epoch += 1;
        self.empty_at = None;
        self.poll_source();
    }

    /// Workers of `group` up and without a job (never a retiring one: those are
    /// stopped as soon as they are idle).
    pub(super) fn idle_workers(&self, group: &str) -> u32 {
        self.children
            .values()
            .filter(|c| c.role.group() == Some(group) && c.state == ChildState::Idle)
            .count() as u32
    }

    /// Hand pending jobs of `group` to its idle workers, lowest slot first.
    pub(super) fn dispatch(&mut self, now: Time, name: &str) {
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
            c.set_state(ChildState::Busy {
                job: JobRun {
                    claim: job.clone(),
                    max_attempts,
                    assigned_at: now,
                    started: None,
                    deadline: timeout.map(|t| now + t),
                    stop: None,
                    main_end: None,
                },
            });
            self.arm(worker);
            self.out.push(Action::StartJob { child: worker, job });
        }
    }

    pub(super) fn worker_idle(&mut self, now: Time, child: ChildId, group: &str) {
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
}
