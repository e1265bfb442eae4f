//! What the world does with the core's actions, checking each as it goes.

use super::*;

impl Sim {
    pub(super) fn apply(&mut self, acts: Vec<Action>) {
        for a in acts {
            self.log(format!("t={:.3}   -> {a:?}", self.t()));
            self.action(a);
        }
    }

    pub(super) fn action(&mut self, a: Action) {
        match a {
            Action::Spawn { child, role } => self.spawn(child, role),
            Action::StopChild { child } => {
                self.ensure(!self.assigned.contains_key(&child), || {
                    format!("StopChild to {child}, which runs a job")
                });
                let k = &self.kids[&child];
                if !k.gone && !k.hung && !k.ignores_stop && k.pid.is_some() {
                    let d = self.between(0.0, 0.5);
                    self.after(d, Ev::Reap(child, ProcessEnd::Exited(0)));
                }
            }
            Action::KillChild { child, pid, signal } => {
                let k = &self.kids[&child];
                self.ensure(k.pid == Some(pid) && signal == Signal::Kill, || {
                    format!("KillChild {child} pid {pid}: it has {:?}", k.pid)
                });
                self.after(0.01, Ev::Reap(child, ProcessEnd::Signaled(9)));
            }
            Action::Ping { child } => {
                let ok = self.kids.get(&child).is_some_and(|k| !k.gone && !k.hung);
                if ok {
                    let d = self.between(0.01, 0.1);
                    self.send(child, d, Input::Alive { child });
                }
            }
            Action::StartJob { child, job } => self.start_job(child, job),
            Action::SignalJob { child, job, signal } => {
                let given = self.assigned.get(&child).copied();
                self.ensure(given == Some(job), || {
                    format!("SignalJob {job} to {child}, which runs {given:?}")
                });
                let k = &self.kids[&child];
                if let (false, false, Some((j, pid))) = (k.gone, k.hung, k.job) {
                    if j == job {
                        let ignores = self.procs[&pid].ignores_term;
                        match signal {
                            Signal::Term if !ignores => {
                                self.after(0.05, Ev::JobDone(pid, ProcessEnd::Signaled(15)))
                            }
                            Signal::Term => {}
                            Signal::Kill => {
                                self.after(0.01, Ev::JobDone(pid, ProcessEnd::Signaled(9)))
                            }
                        }
                    }
                }
            }
            Action::KillJobGroup { pgid } => {
                self.ensure(self.procs.contains_key(&pgid), || {
                    format!("KillJobGroup {pgid}: no such job process")
                });
                self.job_done(pgid, ProcessEnd::Signaled(9));
            }
            Action::Grant { group, n, epoch } => {
                self.ensure(self.grabber.is_some(), || "a Grant with no grabber".into());
                let e = self.epochs.entry(group.clone()).or_insert(epoch);
                *e = (*e).max(epoch);
                self.ledger.grant(&group, n, epoch);
                self.schedule_tick(0.02);
            }
            Action::Revoke { group, epoch } => {
                let e = self.epochs.entry(group.clone()).or_insert(epoch);
                *e = (*e).max(epoch);
                if self.grabber.is_some() {
                    self.ledger.revoke(&group, epoch);
                }
            }
            Action::Poll { epoch } => {
                self.ledger.poll(epoch);
                self.report();
            }
            // The world's grabber claims for every routed group, and it is never held:
            // no outcome of this world waits for its store. Its reloads come as specs.
            Action::GrabberSettings { .. } | Action::HoldClaims { .. } | Action::ReadConfig => {}
            Action::RecordOutcome {
                job,
                attempt,
                outcome,
                next,
                ..
            } => self.record(job, attempt, outcome, next),
            Action::Release { job, attempt } => {
                self.settle(job, attempt, "Release");
                let j = self.store.get_mut(&job).expect("a known job");
                j.state = if j.canceled {
                    SState::Done
                } else {
                    SState::Queued(self.now)
                };
            }
            Action::ReleaseStrays { known } => {
                let ours: Vec<JobId> = self.in_core.keys().copied().collect();
                let mut known = known;
                known.sort_unstable();
                self.ensure(known == ours, || {
                    format!("ReleaseStrays knows {known:?}, the core holds {ours:?}")
                });
                for (id, j) in self.store.iter_mut() {
                    if matches!(j.state, SState::Claimed(_)) && !known.contains(id) {
                        j.state = SState::Queued(self.now);
                    }
                }
            }
            Action::Emit(e) => self.emitted(e),
            Action::Exit { code } => {
                let want = if self.gave_up_exit { 3 } else { 0 };
                self.ensure(code == want, || {
                    format!("exit code {code}, expected {want}")
                });
                self.ensure(self.stop_began.is_some(), || "Exit without a stop".into());
                self.exit = Some((self.now, code));
                self.finish();
            }
        }
    }

    pub(super) fn spawn(&mut self, child: ChildId, role: Role) {
        if let Some(t) = self.earliest.remove(&role) {
            self.ensure(self.now >= t, || {
                format!("{role} restarted before its announced delay (due {t:?})")
            });
        }
        let twin = self.kids.iter().any(|(_, k)| !k.gone && k.role == role);
        self.ensure(!twin, || format!("a second live child for {role}"));
        self.kids.insert(
            child,
            Kid {
                role: role.clone(),
                pid: None,
                gone: false,
                ready: false,
                hung: false,
                ignores_stop: false,
                job: None,
                last_msg: self.now,
            },
        );
        if role == Role::Grabber {
            self.grabber = Some(child);
            self.ledger = Ledger::new();
        }
        if self.chance(0.08) {
            self.after(
                0.0,
                Ev::Shell(Input::SpawnFailed {
                    child,
                    error: "fork failed".into(),
                }),
            );
            return;
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        // Mostly reported at once; now and then the pid comes late (a slow fork), so
        // the core must cope with stopping a child it has no pid for yet.
        let late = if self.chance(0.15) {
            self.between(0.0, 1.5)
        } else {
            0.0
        };
        self.after(late, Ev::Shell(Input::Spawned { child, pid }));
        if self.chance(0.95) {
            let d = late + self.between(0.01, 0.5);
            self.after(d, Ev::Ready(child));
        }
        let (p, horizon) = match self.crashiness {
            0 => (0.0, 1.0),
            1 => (0.15, 30.0),
            2 => (0.35, 10.0),
            _ => (0.7, 2.0),
        };
        if self.chance(p) {
            let d = late + self.between(0.0, horizon);
            self.after(d, Ev::Crash(child));
        }
        if self.chance(0.03) {
            let d = self.between(0.0, 20.0);
            self.after(d, Ev::Hang(child));
        }
        let ignores = self.chance(0.1);
        self.kids.get_mut(&child).expect("inserted").ignores_stop = ignores;
    }

    pub(super) fn start_job(&mut self, child: ChildId, job: ClaimedJob) {
        let held = self.in_core.get(&job.id).copied();
        self.ensure(held == Some(job.attempt), || {
            format!(
                "StartJob {} attempt {}: the core holds {held:?}",
                job.id, job.attempt
            )
        });
        let k = &self.kids[&child];
        self.ensure(
            !k.gone && k.ready && k.job.is_none() && k.role.group() == Some(job.group.as_str()),
            || format!("StartJob {} to {child} ({k:?})", job.id),
        );
        let busy = self.assigned.insert(child, job.id);
        self.ensure(busy.is_none(), || {
            format!("StartJob to {child}, busy with {busy:?}")
        });
        if self.kids[&child].hung {
            return;
        }
        if self.chance(0.05) {
            self.send(
                child,
                0.01,
                Input::JobEnded {
                    child,
                    job: job.id,
                    end: None,
                    ran_for: None,
                    start_error: Some("No such file or directory".into()),
                    reason: None,
                    exited_first: false,
                },
            );
            return;
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        let ignores_term = self.chance(0.3);
        self.procs.insert(
            pid,
            Proc {
                job: job.id,
                alive: true,
                ignores_term,
            },
        );
        self.kids.get_mut(&child).expect("kid").job = Some((job.id, pid));
        self.send(
            child,
            0.01,
            Input::JobStarted {
                child,
                job: job.id,
                pid,
            },
        );
        let roll = self.rng.uniform();
        let end = if roll < 0.5 {
            Some(ProcessEnd::Exited(0))
        } else if roll < 0.8 {
            Some(ProcessEnd::Exited(1))
        } else {
            None // hangs until signaled
        };
        if let Some(end) = end {
            let d = self.between(0.1, 6.0);
            self.after(d, Ev::JobDone(pid, end));
        }
    }

    /// A claimed job leaves the core: exactly once.
    pub(super) fn settle(&mut self, job: JobId, attempt: u32, how: &str) {
        let held = self.in_core.remove(&job);
        self.ensure(held == Some(attempt), || {
            format!("{how} of job {job} attempt {attempt}: the core held {held:?}")
        });
        for set in self.legacy.values_mut() {
            set.remove(&job);
        }
        if let Some(c) = self
            .assigned
            .iter()
            .find(|(_, j)| **j == job)
            .map(|(c, _)| *c)
        {
            // Settled while the core still thinks a worker runs it: only for a job
            // whose worker is gone, which `reap` already cleared.
            self.ensure(false, || format!("job {job} settled while {c} runs it"));
        }
    }

    pub(super) fn record(&mut self, job: JobId, attempt: u32, outcome: Outcome, next: Next) {
        self.settle(job, attempt, "RecordOutcome");
        let j = self.store.get_mut(&job).expect("a known job");
        let ok = match next {
            Next::Done => !outcome.retryable(),
            Next::Retry { .. } | Next::Dead => outcome.retryable(),
        };
        let canceled = j.canceled;
        self.ensure(ok, || format!("job {job}: {outcome:?} then {next:?}"));
        self.ensure(outcome != Outcome::Canceled || canceled, || {
            format!("job {job} canceled without a cancel request")
        });
        let j = self.store.get_mut(&job).expect("a known job");
        j.used = attempt;
        j.state = match next {
            Next::Retry { delay } if !j.canceled => SState::Queued(self.now + delay),
            _ => SState::Done,
        };
    }

    pub(super) fn emitted(&mut self, e: Event) {
        match e {
            Event::ChildStarted { pid, .. } => {
                let new = self.started.insert(pid);
                self.ensure(new, || format!("child_started twice for pid {pid}"));
            }
            Event::ChildExited { pid: Some(pid), .. } => {
                self.ensure(self.started.contains(&pid), || {
                    format!("child_exited for pid {pid}, never started")
                });
                let new = self.exited.insert(pid);
                self.ensure(new, || format!("child_exited twice for pid {pid}"));
            }
            Event::ChildExited { pid: None, .. } => {}
            // Each attempt told started is told ended, once, before it starts again.
            Event::JobStarted {
                job_id, attempt, ..
            } => {
                let new = self.attempts_open.insert((job_id, attempt));
                self.ensure(new, || {
                    format!("job_started for job {job_id} attempt {attempt}, still running")
                });
            }
            Event::JobFinished {
                job_id, attempt, ..
            } => {
                let open = self.attempts_open.remove(&(job_id, attempt));
                self.ensure(open, || {
                    format!("job_finished for job {job_id} attempt {attempt}, not started")
                });
            }
            Event::ChildRestartScheduled { role, delay, .. } => {
                self.earliest.insert(role.clone(), self.now + delay);
                let group = role.group().map(str::to_string);
                let policy = match &group {
                    None => self.spec.grabber_restart.clone(),
                    Some(g) => self
                        .spec
                        .group(g)
                        .expect("a configured group")
                        .restart
                        .clone(),
                };
                let now = self.now;
                let times = self.restarts.entry(group.clone()).or_default();
                times.push(now);
                let in_window = times
                    .iter()
                    .filter(|&&t| now.saturating_since(t) < policy.period)
                    .count();
                self.ensure(in_window <= policy.max_restarts as usize, || {
                    format!("{in_window} restarts of {group:?} within one period")
                });
            }
            Event::GroupGaveUp { group, action, .. } => match (group, action) {
                (Some(g), OnExhausted::Disable) => {
                    self.mark_legacy(&g);
                    self.disabled.insert(g);
                }
                _ => self.gave_up_exit = true,
            },
            Event::SupervisorStopping { reason } => {
                self.stop_began.get_or_insert(self.now);
                if reason.starts_with("until-empty") {
                    // The source was reported empty in the current epoch: no runnable job
                    // may be queued (or waiting for a retry), nor claimed.
                    let groups: BTreeSet<&str> =
                        self.spec.groups.iter().map(|g| g.name.as_str()).collect();
                    let left: Vec<(&JobId, &SJob)> = self
                        .store
                        .iter()
                        .filter(|(_, j)| match j.state {
                            SState::Queued(_) => groups.contains(j.group.as_str()),
                            SState::Claimed(_) => true,
                            SState::Done => false,
                        })
                        .collect();
                    self.ensure(left.is_empty(), || {
                        format!("until-empty stopped with jobs left: {left:?}")
                    });
                }
            }
            Event::SupervisorStopped { code } => {
                let want = if self.gave_up_exit { 3 } else { 0 };
                self.ensure(code == want, || {
                    format!("stopped with {code}, expected {want}")
                });
            }
            _ => {}
        }
    }
}
