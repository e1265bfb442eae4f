//! Jobs in flight: claims, starts, ends and their outcomes, cancels and timeouts.

use crate::time::Time;

use super::child::{ChildState, JobRun, Started, StopReason, StopStep};
use super::{
    Action, ChildId, ClaimedJob, Core, Event, Facts, JobId, Next, Outcome, Phase, ProcessEnd, Role,
    Signal,
};

/// The `reason` of the end of an attempt cut short by a stop ([`Core::give_back`]).
pub const GIVEN_BACK: &str = "the supervisor stopped before it ended";

/// The `reason` of the end of an attempt whose supervisor died under it, told by the next
/// run as it takes the job back.
pub const TAKEN_BACK: &str = "its supervisor died while running it";

impl Core {
    pub(super) fn claimed(&mut self, now: Time, job: ClaimedJob) {
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

    pub(super) fn job_started(&mut self, now: Time, child: ChildId, job: JobId, pid: u32) {
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        c.heard();
        let worker_pid = c.pid.unwrap_or(0);
        let Role::Worker { group, slot } = c.role.clone() else {
            return;
        };
        let Some(run) = c.job_mut().filter(|r| r.claim.id == job) else {
            return;
        };
        run.started = Some(Started { at: now, pgid: pid });
        let attempt = run.claim.attempt;
        self.out.push(Action::Emit(Event::JobStarted {
            job_id: job,
            group,
            slot,
            worker_pid,
            attempt,
        }));
    }

    pub(super) fn job_exited(&mut self, child: ChildId, job: JobId, end: ProcessEnd) {
        let Some(c) = self.children.get_mut(&child) else {
            return;
        };
        c.heard();
        // Unless the core killed its group itself meanwhile (an immediate stop): then
        // that end may be the kill's.
        let direct = |r: &JobRun| (r.stop.as_ref()).is_some_and(|s| s.step == StopStep::Done);
        if let Some(run) = c.job_mut().filter(|r| r.claim.id == job && !direct(r)) {
            run.main_end = Some(end);
        }
    }

    pub(super) fn job_ended(
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
        c.heard();
        if c.job_id() != Some(job) {
            return;
        }
        let worker_pid = c.pid.unwrap_or(0);
        let slot = match &c.role {
            Role::Worker { slot, .. } => Some(*slot),
            Role::Grabber => None,
        };
        let run = c.end_job().expect("checked above");
        let group = c.role.group().unwrap_or_default().to_string();
        // A command that could not start still had its attempt (counted, and started in
        // the store's eyes): its `job_finished` follows a `job_started`, as every
        // attempt's does.
        if let (None, Some(_), Some(slot)) = (&run.started, &facts.start_error, slot) {
            self.out.push(Action::Emit(Event::JobStarted {
                job_id: job,
                group: group.clone(),
                slot,
                worker_pid,
                attempt: run.claim.attempt,
            }));
        }
        self.arm(child);
        // A stop asked after the job's main process had ended on its own (while what it
        // left was being killed) does not make its end: it finished. The worker's word
        // for it counts unless the core killed the job's group itself (an immediate
        // stop: the worker passed on no signal, yet the job got one), when only its
        // earlier report of that end (`main_end`) does.
        // A cancel still wins over an end that would be retried: the job is not wanted
        // any more (and the store would not queue it again).
        let direct = (run.stop.as_ref()).is_some_and(|s| s.step == StopStep::Done);
        let own_end = run.main_end.is_some() || (facts.exited_first && !direct);
        let kept = |reason: &StopReason| {
            !own_end || end.is_none_or(|e| *reason == StopReason::Cancel && !e.success())
        };
        let stop = (run.stop.map(|s| s.reason)).filter(kept);
        if stop == Some(StopReason::Shutdown) {
            self.give_back(now, run, end);
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

    /// A started attempt cut short by a stop: its end is told (`job_finished`, `lost`,
    /// with why), so that each `job_started` has one; then the job goes back to the
    /// queue without using the attempt (which its next start numbers the same).
    pub(super) fn give_back(&mut self, now: Time, run: JobRun, end: Option<ProcessEnd>) {
        if let Some(started) = run.started {
            self.out.push(Action::Emit(Event::JobFinished {
                job_id: run.claim.id,
                group: run.claim.group.clone(),
                attempt: run.claim.attempt,
                outcome: Outcome::Lost,
                end,
                duration: now.saturating_since(started.at),
                start_error: None,
                reason: Some(GIVEN_BACK.into()),
            }));
        }
        self.release(run.claim);
    }

    /// Decide what follows an attempt and record it: done, retry, or dead.
    pub(super) fn finish_job(
        &mut self,
        now: Time,
        run: JobRun,
        outcome: Outcome,
        end: Option<ProcessEnd>,
        facts: Facts,
    ) {
        let job = &run.claim;
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
            .unwrap_or_else(|| now.saturating_since(run.started.map_or(run.assigned_at, |s| s.at)));
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

    pub(super) fn cancel(&mut self, now: Time, job: JobId) {
        let kill_grace = self.spec.kill_grace;
        // A claimed job still waiting for a worker: settle it without running it.
        for g in self.groups.values_mut() {
            if let Some(i) = g.pending.iter().position(|j| j.id == job) {
                let j = g.pending.remove(i).expect("position found");
                let run = JobRun {
                    max_attempts: j.max_attempts.unwrap_or(g.spec.max_attempts),
                    claim: j,
                    assigned_at: now,
                    started: None,
                    deadline: None,
                    stop: None,
                    main_end: None,
                };
                let name = run.claim.group.clone();
                self.finish_job(now, run, Outcome::Canceled, None, Facts::default());
                self.refill(&name);
                return;
            }
        }
        let Some((&id, c)) = (self.children.iter_mut()).find(|(_, c)| c.job_id() == Some(job))
        else {
            return;
        };
        let run = c.job_mut().expect("found busy with it");
        match &mut run.stop {
            None => {
                let term = run.begin_stop(id, StopReason::Cancel, now + kill_grace);
                self.out.push(term);
                self.arm(id);
            }
            Some(stop) => {
                // Already being stopped (timeout, shutdown): that TERM/KILL goes on, but
                // the operator's word decides the outcome: `canceled`, not a retry nor a
                // requeue.
                stop.reason = StopReason::Cancel;
            }
        }
    }

    /// The next step of the job on `id` is due: its timeout (TERM), its KILL, or giving
    /// up on a worker that does not report the job's end after it.
    pub(super) fn job_timer(&mut self, now: Time, id: ChildId) {
        let kill_grace = self.spec.kill_grace;
        let Some(c) = self.children.get_mut(&id) else {
            return;
        };
        if c.killed {
            // Its worker is being killed; the job is settled when it is reaped.
            return;
        }
        let ChildState::Busy { job: run } = &mut c.state else {
            return;
        };
        match &mut run.stop {
            None => {
                if run.deadline.is_some_and(|d| d <= now) {
                    let term = run.begin_stop(id, StopReason::Timeout, now + kill_grace);
                    self.out.push(term);
                }
            }
            Some(stop) => match stop.step {
                StopStep::Term { kill_at } if kill_at <= now => {
                    stop.step = StopStep::Kill {
                        abandon_at: now + kill_grace,
                    };
                    self.out.push(Action::SignalJob {
                        child: id,
                        job: run.claim.id,
                        signal: Signal::Kill,
                    });
                }
                StopStep::Kill { abandon_at } if abandon_at <= now => {
                    // SIGKILL went out a grace ago and the worker still says nothing of
                    // its job: the worker is broken; kill it.
                    stop.step = StopStep::Done;
                    if let Some(pid) = c.pid {
                        log::warn!(
                            "{} (pid {pid}) did not report the end of job {} after SIGKILL; \
                             killing it",
                            c.role,
                            run.claim.id
                        );
                        c.killed = true;
                        self.out.push(Action::KillChild {
                            child: id,
                            pid,
                            signal: Signal::Kill,
                        });
                    }
                }
                StopStep::Term { .. } | StopStep::Kill { .. } | StopStep::Done => {}
            },
        }
        self.arm(id);
    }
}
