//! The children as the shell knows them: spawning, messages in and out, reaping, and
//! an exit handled only once the child's channel has closed.

use supervisor_core::supervision::{ChildId, ClaimedJob, Input, ProcessEnd, Role};
use supervisor_os::Sig;

use crate::events_file::wall_now;
use crate::ipc::{self, Writer};
use crate::record::EventRecord;
use crate::wire::{ChildArgs, ChildRole, FromChild, PassItem, ToChild};

use super::panics::{injected_fault, Fault};
use super::{Supervisor, Wake};

/// A child as the shell knows it: how to reach it and whether its channel is closed.
pub(super) struct ShellChild {
    pub(super) pid: Option<u32>,
    pub(super) ipc_name: String,
    /// When it was spawned (wall clock), for the snapshot's uptimes.
    pub(super) started_at: f64,
    pub(super) writer: Option<Writer>,
    pub(super) closed: bool,
    /// Reaped, waiting for the channel to close before the core hears of it (at most
    /// until its [`Wake::CloseWait`]).
    pub(super) exit: Option<ProcessEnd>,
}

impl Supervisor {
    pub(super) fn on_message(&mut self, child: ChildId, msg: FromChild) {
        let input = match msg {
            FromChild::Hello { .. } => return,
            FromChild::Ready => {
                let Some(role) = self.core.role(child).cloned() else {
                    return;
                };
                // Not a core decision, but `status` needs it to tell starting from up.
                // The file rotates, if it is due, only once the core knows: the new
                // file's snapshot must show the child ready.
                self.write_event(EventRecord::ChildReady {
                    child: (&role).into(),
                    pid: self.children.get(&child).and_then(|c| c.pid),
                });
                self.feed(Input::Ready { child });
                self.rotate_if_due();
                return;
            }
            FromChild::Pong => Input::Alive { child },
            FromChild::Pass(found) => {
                for item in found {
                    if let Some(input) = self.pass_input(item) {
                        self.feed(input);
                    }
                }
                return;
            }
            FromChild::SourceFailed {
                error,
                claimed_before,
            } => {
                // What it was handed may not be stored: stored here, before the jobs
                // running under us in the store are looked at.
                self.store_handed(true);
                // A claim of the failed pass may have committed with its answer lost:
                // such jobs run under us in the store, unknown here, until given back.
                let t = self
                    .lost_claims
                    .map_or(claimed_before, |t| t.max(claimed_before));
                self.lost_claims = Some(t);
                self.lost_claims_until =
                    wall_now() + self.config.instances.dead_after.as_secs_f64();
                self.give_back_lost_claims();
                Input::SourceFailed { error }
            }

            FromChild::JobStarted { job, pid } => {
                if injected_fault() == Some(Fault::PanicOnJobStart) {
                    super::injected_panic(format_args!("panic-on-job-start (job {job})"));
                }
                Input::JobStarted { child, job, pid }
            }
            FromChild::JobExited { job, end } => Input::JobExited {
                child,
                job,
                end: end.into(),
            },
            FromChild::JobEnded {
                job,
                end,
                ran_for_s,
                start_error,
                reason,
                exited_first,
            } => Input::JobEnded {
                child,
                job,
                end: end.map(Into::into),
                ran_for: ran_for_s.map(supervisor_core::bounds::duration),
                start_error: start_error.map(supervisor_core::bounds::note),
                reason: reason.map(supervisor_core::bounds::note),
                exited_first,
            },
        };
        self.feed(input);
    }

    /// What one finding of a grabber's pass is to the core (an outcome it stored is
    /// nothing to the core, which took it for stored when it decided it).
    fn pass_input(&mut self, item: PassItem) -> Option<Input> {
        let input = match item {
            PassItem::Claimed(claim) => {
                let job = ClaimedJob {
                    id: claim.id,
                    group: claim.group.clone(),
                    attempt: claim.attempt,
                    // Checked by the store at the claim; bounded again, as every value
                    // that crosses a process boundary is.
                    timeout: claim.timeout_s.map(supervisor_core::bounds::duration),
                    max_attempts: claim.max_attempts,
                    epoch: claim.epoch,
                };
                self.claims.insert(claim.id, claim);
                Input::JobClaimed(job)
            }
            PassItem::SourceReport { epoch, empty } => {
                if self.lost_claims.is_some() {
                    self.give_back_lost_claims(); // the store answers again
                }
                Input::SourceReport { epoch, empty }
            }
            PassItem::CancelRequested { job } => Input::CancelRequested { job },
            PassItem::Refused {
                job,
                attempts,
                reason,
            } => Input::JobRefused {
                job,
                attempts,
                reason,
            },
            PassItem::Settled {
                job,
                attempt,
                settled,
            } => {
                self.settled(job, attempt, settled);
                return None;
            }
        };
        Some(input)
    }

    /// Reap every ended child; tell the core once its channel has also closed.
    pub(super) fn reap(&mut self) {
        for (pid, ended) in supervisor_os::reap_all() {
            let Some(&child) = self.by_pid.get(&pid) else {
                continue; // an orphaned grandchild: reaped, nothing more to do
            };
            let end = crate::wire::WireEnd::from(ended).into();
            if let Some(c) = self.children.get_mut(&child) {
                c.exit = Some(end);
                if c.writer.is_none() && !c.closed {
                    // Died before its handshake: free its thread, waiting in accept.
                    ipc::unblock(&c.ipc_name);
                }
            }
            // Its exit waits for its channel to close, but not longer than this.
            let give_up = self.now() + ipc::CLOSE_WAIT;
            self.timers.set(Wake::CloseWait(child), give_up);
            self.maybe_deliver_exit(child);
        }
    }

    /// A reaped child whose channel closed: everything it said has been handled, so the
    /// core hears of its exit now.
    pub(super) fn maybe_deliver_exit(&mut self, child: ChildId) {
        if (self.children.get(&child)).is_some_and(|c| c.exit.is_some() && c.closed) {
            self.deliver_exit(child);
        }
    }

    /// Tell the core that a reaped child exited (its channel closed, or did not close
    /// within `CLOSE_WAIT`).
    pub(super) fn deliver_exit(&mut self, child: ChildId) {
        self.timers.stop(&Wake::CloseWait(child));
        let Some(end) = self.children.get(&child).and_then(|c| c.exit) else {
            return;
        };
        let c = self.children.remove(&child).expect("checked above");
        let pid = c.pid.expect("a reaped child has a pid");
        self.by_pid.remove(&pid);
        if self.core.grabber() == Some(child) {
            // What the grabber was handed and did not say it stored is stored here,
            // before the core has the jobs running under us in the store looked at.
            self.store_handed(true);
        }
        self.feed(Input::Exited { pid, end });
    }

    /// SIGKILL every child of ours that is not one of our children: processes a job left
    /// behind, handed to us (a subreaper) when their worker died. Workers kill what their
    /// jobs leave, so only a worker's death leaves anything here.
    pub(super) fn kill_orphans(&mut self) {
        for _ in 0..100 {
            let strays: Vec<u32> = supervisor_os::children(std::process::id())
                .into_iter()
                .filter(|pid| !self.by_pid.contains_key(pid))
                .collect();
            if strays.is_empty() {
                return;
            }
            for pid in strays {
                for below in supervisor_os::descendants(pid) {
                    let _ = supervisor_os::signal_pid(below, Sig::SIGKILL);
                }
                let _ = supervisor_os::signal_pid(pid, Sig::SIGKILL);
            }
            // Reaps them (and any of our children that ended meanwhile: their exits are
            // handled as usual).
            self.reap();
        }
    }

    /// Start children (one or a batch: see `Hub::spawn_all`); the core's inputs, in
    /// the same order.
    pub(super) fn spawn_all(&mut self, batch: Vec<(ChildId, Role)>) -> Vec<Input> {
        let requests = batch
            .into_iter()
            .map(|(child, role)| (child, self.child_args(role), self.queue_tx.clone()))
            .collect::<Vec<_>>();
        let children: Vec<ChildId> = requests.iter().map(|r| r.0).collect();
        let results = self.hub.spawn_all(requests);
        children
            .into_iter()
            .zip(results)
            .map(|(child, result)| match result {
                Ok((pid, ipc_name)) => {
                    self.children.insert(
                        child,
                        ShellChild {
                            pid: Some(pid),
                            ipc_name,
                            started_at: wall_now(),
                            writer: None,
                            closed: false,
                            exit: None,
                        },
                    );
                    self.by_pid.insert(pid, child);
                    Input::Spawned { child, pid }
                }
                Err(e) => Input::SpawnFailed {
                    child,
                    error: e.to_string(),
                },
            })
            .collect()
    }

    /// What a child in `role` is told on its stdin.
    fn child_args(&self, role: Role) -> ChildArgs {
        let role = match role {
            Role::Grabber => ChildRole::Grabber {
                store: crate::store::arg(&self.config.store),
                instance: self.instance,
                poll_interval_s: self.config.grabber.poll_interval.as_secs_f64(),
                error_backoff: self.config.grabber.error_backoff.into(),
                routes: self.config.routes(),
                store_wait_s: grabber_store_wait(self.config.heartbeat.timeout),
            },
            Role::Worker { group, slot } => ChildRole::Worker {
                group,
                slot,
                logs: self.config.state_dir.join("logs"),
            },
        };
        ChildArgs {
            ipc: String::new(),
            role,
            parent: std::process::id(),
        }
    }

    /// Queue a message to a child; a child whose queue is full has stopped reading and
    /// is killed (its exit is then handled as a crash).
    pub(super) fn send(&mut self, child: ChildId, msg: ToChild) -> bool {
        let Some(c) = self.children.get(&child) else {
            return false;
        };
        let Some(w) = &c.writer else { return false };
        if w.send(msg) {
            return true;
        }
        log::error!("child {child} stopped reading its messages; killing it");
        if let Some(pid) = c.pid {
            let _ = supervisor_os::signal_pid(pid, Sig::SIGKILL);
        }
        false
    }

    pub(super) fn send_to_grabber(&mut self, msg: ToChild) {
        if let Some(g) = self.core.grabber() {
            self.send(g, msg);
        }
    }
}

/// How long the grabber's store calls wait for another process's lock: a quarter of the
/// heartbeat's timeout (it answers no ping while it waits), at least 10 ms, at most 1 s.
fn grabber_store_wait(heartbeat_timeout: std::time::Duration) -> f64 {
    (heartbeat_timeout.as_secs_f64() / 4.0).clamp(0.01, 1.0)
}
