//! The worker's event loop: what it does on each message of the supervisor, how it waits
//! for a job's main process (blocked in `waitpid`, the reader thread answering the
//! supervisor meanwhile), and how it gives the stragglers of an attempt their grace
//! before SIGKILL.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::mailbox::{Empty, Mailbox};
use supervisor_os::{Ended, Sig};

use super::cgroups::note_oom;
use super::threads::{self, lock, refuse_busy, JOB_PGID};
use super::{kill_stragglers, AttemptEnd, Cleanup, Worker, WorkerEv, KILL_AGAIN, STRAGGLER_GRACE};
use crate::wire::{FromChild, JobPayload, ToChild};

/// What the loop does after an event.
enum Next {
    /// Wait for the next one.
    Wait,
    /// Exit now: told to stop, and idle.
    Stop,
    /// The supervisor is gone: take the job and all it started down, then exit.
    Leave,
}

impl Worker {
    /// Handle events until told to stop or the supervisor goes away; the exit code.
    pub(super) fn run(&mut self, events: &Mailbox<WorkerEv>) -> i32 {
        while let Some(ev) = self.next_event(events) {
            let next = match self.handle(ev) {
                Next::Wait => self.wait_for_job(events),
                other => other,
            };
            match next {
                Next::Wait => {}
                Next::Stop => return 0,
                Next::Leave => break,
            }
        }
        self.leave();
        0
    }

    /// The next event (`None`: none can come). While an attempt's stragglers have their
    /// grace, SIGKILL them when it is over, and again every [`KILL_AGAIN`].
    fn next_event(&mut self, events: &Mailbox<WorkerEv>) -> Option<WorkerEv> {
        loop {
            let Some(c) = self.cleanup.as_mut() else {
                return events.recv();
            };
            let wait = c.kill_at.saturating_duration_since(Instant::now());
            match events.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(ev) => return Some(ev),
                Err(Empty::Timeout) => {
                    // The grace is over: SIGKILL what is left, and look again soon.
                    kill_stragglers(Sig::SIGKILL);
                    c.kill_at = Instant::now() + KILL_AGAIN;
                }
                Err(Empty::Disconnected) => return None,
            }
        }
    }

    fn handle(&mut self, ev: WorkerEv) -> Next {
        match ev {
            WorkerEv::Msg(ToChild::Ping) => {
                if self.tx.send(FromChild::Pong).is_err() {
                    return Next::Leave;
                }
            }
            WorkerEv::Msg(ToChild::Stop) => {
                if self.running.is_none() && self.cleanup.is_none() {
                    return Next::Stop;
                }
                self.stop_when_idle = true;
            }
            WorkerEv::Msg(ToChild::Run(job)) => self.run_job(&job),
            WorkerEv::Msg(ToChild::SignalJob { job, kill }) => self.signal_job(job, kill),
            WorkerEv::Msg(other) => log::error!("worker: unexpected message {other:?}"),
            WorkerEv::AllReaped => {
                let Some(c) = self.cleanup.take() else {
                    return Next::Wait;
                };
                return self.ended(c.end);
            }
            WorkerEv::Closed => return Next::Leave,
        }
        Next::Wait
    }

    /// Start `job`, unless busy (then refuse it).
    fn run_job(&mut self, job: &JobPayload) {
        if self.running.is_some() || self.cleanup.is_some() {
            refuse_busy(&self.tx, job.id);
            return;
        }
        self.running = self.start(job);
    }

    /// The job just started, if any: wait for its main process to end, blocked in
    /// `waitpid`, while the reader thread answers the supervisor (see
    /// `threads::start_ipc_reader`); what came before the reader knew is handled first.
    /// Then close the attempt's books.
    fn wait_for_job(&mut self, events: &Mailbox<WorkerEv>) -> Next {
        let Some(r) = self.running.as_ref() else {
            return Next::Wait;
        };
        let (job, pid, since) = (r.job, r.pgid, r.since);
        lock(&self.waiting).job = Some((job, pid));
        while let Ok(ev) = events.recv_timeout(Duration::ZERO) {
            if let Next::Leave = self.handle(ev) {
                lock(&self.waiting).job = None;
                return Next::Leave;
            }
        }
        // Reaping what the job's processes leave meanwhile (they are ours, as a
        // subreaper's), so that none stays a zombie while the job runs.
        let ended = supervisor_os::wait_pid_reaping_others(pid).unwrap_or(Ended::Code(-1));
        if threads::leaving() {
            // SIGTERM: the job was killed on our way out, and the supervisor must hear
            // of this worker's death, not of an outcome the kill made. The SIGTERM
            // thread ends the process.
            threads::wait_to_be_ended();
        }
        let ran_for = since.elapsed();
        let (stop, w_signaled) = {
            let mut w = lock(&self.waiting);
            w.job = None;
            (std::mem::take(&mut w.stop), std::mem::take(&mut w.signaled))
        };
        self.stop_when_idle |= stop;
        let signaled = (self.running.as_ref()).is_some_and(|r| r.signaled);
        self.job_exited(job, ended, ran_for, !(signaled || w_signaled))
    }

    /// Signal `job`'s process group (SIGKILL or SIGTERM); once its main process has
    /// ended, a SIGKILL goes to what it left.
    fn signal_job(&mut self, job: i64, kill: bool) {
        let sig = if kill { Sig::SIGKILL } else { Sig::SIGTERM };
        if let Some(r) = self.running.as_mut().filter(|r| r.job == job) {
            r.signaled = true;
            let _ = supervisor_os::signal_group(r.pgid, sig);
        } else if self.cleanup.as_ref().is_some_and(|c| c.end.job == job) && kill {
            // Its main process is gone; what it left goes now.
            kill_stragglers(Sig::SIGKILL);
        }
    }

    /// The job's main process ended: close the attempt's books, then report its end at
    /// once if it left nothing behind, else once what it left is gone.
    /// `exited_first`: no signal of the supervisor's had been passed on to it.
    fn job_exited(
        &mut self,
        job: i64,
        ended: Ended,
        ran_for: Duration,
        exited_first: bool,
    ) -> Next {
        let mut reason = None;
        if let Some(mut r) = self.running.take() {
            JOB_PGID.store(0, Ordering::SeqCst);
            if let Some((cgroup, memory_max)) = r.cgroup.take() {
                reason = note_oom(&mut r.log, &cgroup, memory_max);
                self.cgroups.spend(cgroup);
            }
            self.logs.done(r.log, &r.log_path, r.log_given);
        }
        let end = AttemptEnd {
            job,
            ended,
            ran_for,
            reason,
            exited_first,
        };
        // Whatever the job left behind, in its process group or not, goes with
        // it: SIGTERM now, SIGKILL after the grace.
        if supervisor_os::reap_leaving_any() {
            // Its end is known now: said at once, in case this worker dies before what
            // the job left is gone.
            if exited_first {
                let end = FromChild::JobExited {
                    job,
                    end: ended.into(),
                };
                if self.tx.send(end).is_err() {
                    return Next::Leave;
                }
            }
            kill_stragglers(Sig::SIGTERM);
            if self.wait_tx.as_ref().is_none_or(|w| w.send(()).is_err()) {
                return Next::Leave;
            }
            self.cleanup = Some(Cleanup {
                end,
                kill_at: Instant::now() + STRAGGLER_GRACE,
            });
            return Next::Wait;
        }
        self.ended(end)
    }

    /// Every process of the attempt is gone: report its end, and stop if told to.
    fn ended(&mut self, end: AttemptEnd) -> Next {
        if !self.report_end(end) {
            return Next::Leave;
        }
        if self.stop_when_idle {
            return Next::Stop;
        }
        Next::Wait
    }

    /// The supervisor is gone: so is the job, and all it started.
    fn leave(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = supervisor_os::signal_group(r.pgid, Sig::SIGKILL);
            if let Some((cgroup, _)) = r.cgroup.take() {
                self.cgroups.spend(cgroup);
            }
        }
        supervisor_os::kill_descendants(100);
        self.cgroups.remove_spent();
    }
}
