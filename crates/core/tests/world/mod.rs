//! A fake clock and a scripted shell around [`Core`], so scenario tests read as stories.
//!
//! [`Story`] keeps the current time, answers what a test tells it to answer, and watches
//! every action go by: which child id plays which role, which pid it got, and the
//! grabber's [`Ledger`] of the credits and epochs granted and revoked. Time only moves when a test says
//! so, and every timer that falls due on the way fires at its own moment, the way the
//! shell calls [`Core::on_timeout`].

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use supervisor_core::backoff::Backoff;
use supervisor_core::ledger::Ledger;
use supervisor_core::random::Fixed;
use supervisor_core::spec::{defaults, GroupSpec, OnExhausted, Spec};
use supervisor_core::supervision::{
    Action, ChildId, ClaimedJob, Core, Event, Input, JobId, Next, Outcome, ProcessEnd, Role, Signal,
};
use supervisor_core::Time;

/// A group without jitter anywhere, so delays in a story are the plain doubling.
pub fn group(name: &str, max_workers: u32) -> GroupSpec {
    let mut g = defaults::group(name, max_workers);
    g.restart.backoff = Backoff::from_secs(0.1, 30.0, 0.0);
    g.retry_backoff = Backoff::from_secs(1.0, 300.0, 0.0);
    g
}

/// A group that disables itself when it gives up.
pub fn disabling(name: &str, max_workers: u32, max_restarts: u32) -> GroupSpec {
    let mut g = group(name, max_workers);
    g.restart.max_restarts = max_restarts;
    g.restart.on_exhausted = OnExhausted::Disable;
    g
}

/// The contract's defaults around `groups`, without jitter.
pub fn spec(groups: Vec<GroupSpec>) -> Spec {
    let mut s = defaults::spec(groups);
    s.grabber_restart.backoff = Backoff::from_secs(0.1, 30.0, 0.0);
    s
}

/// The role of worker `slot` of `group`.
pub fn worker(group: &str, slot: u32) -> Role {
    Role::Worker {
        group: group.to_string(),
        slot,
    }
}

/// A claim of attempt 1 of `id` for `group`, in credit epoch `epoch`.
pub fn claim(id: JobId, group: &str, epoch: u64) -> ClaimedJob {
    ClaimedJob {
        id,
        group: group.to_string(),
        attempt: 1,
        timeout: None,
        max_attempts: None,
        epoch,
    }
}

/// Seconds as a [`Duration`].
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The core on a fake clock, with a scripted shell.
pub struct Story {
    pub core: Core,
    pub now: Time,
    next_pid: u32,
    /// Every child ever spawned: its role and, once spawned, its pid.
    pub roles: BTreeMap<ChildId, Role>,
    pub pids: BTreeMap<ChildId, u32>,
    /// The latest child spawned for each role.
    pub latest: BTreeMap<Role, ChildId>,
    /// What the grabber holds, from Grant and Revoke: claims carry its epochs.
    pub ledger: Ledger,
    /// Children that do not answer pings; every other child answers each at once.
    pub silent: BTreeSet<ChildId>,
}

impl Story {
    /// A core for `spec` at t=0; nothing started yet.
    pub fn new(spec: Spec) -> Story {
        Story {
            core: Core::new(spec, Box::new(Fixed(0.5))),
            now: Time::ZERO,
            next_pid: 100,
            roles: BTreeMap::new(),
            pids: BTreeMap::new(),
            latest: BTreeMap::new(),
            ledger: Ledger::new(),
            silent: BTreeSet::new(),
        }
    }

    /// Start at t=0 and bring every child up: workers say Ready first, the grabber
    /// last (so its Ready sees every idle worker). Returns everything the core did.
    pub fn boot(spec: Spec) -> (Story, Vec<Action>) {
        let mut story = Story::new(spec);
        let mut all = story.feed(Input::Start);
        let more = story.spawn_all_ready(&all.clone());
        all.extend(more);
        (story, all)
    }

    fn observe(&mut self, acts: &[Action]) {
        for a in acts {
            match a {
                Action::Spawn { child, role } => {
                    self.roles.insert(*child, role.clone());
                    self.latest.insert(role.clone(), *child);
                }
                Action::Grant { group, n, epoch } => self.ledger.grant(group, *n, *epoch),
                Action::Revoke { group, epoch } => self.ledger.revoke(group, *epoch),
                _ => {}
            }
        }
    }

    /// Feed one input at the current time.
    pub fn feed(&mut self, input: Input) -> Vec<Action> {
        let acts = self.core.handle(self.now, input);
        self.observe(&acts);
        acts
    }

    /// Move the clock to `secs`, firing every timer that falls due on the way at its
    /// own moment; every child not in `silent` answers each ping at once. Returns what
    /// the timers did (the answers to pings included).
    pub fn at(&mut self, secs: f64) -> Vec<Action> {
        let target = Time::from_secs_f64(secs);
        assert!(target >= self.now, "time runs forward only");
        let mut out = Vec::new();
        while let Some(due) = self.core.next_deadline() {
            if due > target {
                break;
            }
            self.now = due.max(self.now);
            let acts = self.core.on_timeout(self.now);
            self.observe(&acts);
            out.extend(acts.iter().cloned());
            for a in &acts {
                if let Action::Ping { child } = a {
                    if !self.silent.contains(child) {
                        let more = self.feed(Input::Alive { child: *child });
                        out.extend(more);
                    }
                }
            }
            assert!(
                self.core.next_deadline().is_none_or(|t| t > self.now),
                "the core would make the shell spin at {:?}",
                self.now
            );
        }
        self.now = target;
        out
    }

    /// Call `on_timeout` at `secs` whether or not a deadline is due (a shell woken early).
    pub fn poke(&mut self, secs: f64) -> Vec<Action> {
        self.now = Time::from_secs_f64(secs);
        let acts = self.core.on_timeout(self.now);
        self.observe(&acts);
        acts
    }

    /// Answer every Spawn in `acts` with Spawned (a fresh pid); returns what followed.
    pub fn spawn_all(&mut self, acts: &[Action]) -> Vec<Action> {
        let mut out = Vec::new();
        for child in spawned_children(acts) {
            let pid = self.next_pid;
            self.next_pid += 1;
            self.pids.insert(child, pid);
            out.extend(self.feed(Input::Spawned { child, pid }));
        }
        out
    }

    /// Answer every Spawn in `acts` with Spawned, then Ready (workers before the
    /// grabber); returns what followed.
    pub fn spawn_all_ready(&mut self, acts: &[Action]) -> Vec<Action> {
        let mut out = self.spawn_all(acts);
        let mut children = spawned_children(acts);
        children.sort_by_key(|c| self.roles[c] == Role::Grabber);
        for child in children {
            out.extend(self.feed(Input::Ready { child }));
        }
        out
    }

    /// The live child of worker `slot` of `group` (the latest spawned for that role).
    pub fn w(&self, group: &str, slot: u32) -> ChildId {
        self.latest[&worker(group, slot)]
    }

    /// The latest grabber.
    pub fn grabber(&self) -> ChildId {
        self.latest[&Role::Grabber]
    }

    /// The pid of a spawned child.
    pub fn pid(&self, child: ChildId) -> u32 {
        self.pids[&child]
    }

    /// The grabber claims job `id` for `group` with the credit epoch it holds.
    pub fn claim(&mut self, id: JobId, group: &str) -> Vec<Action> {
        let epoch = self.ledger.epoch(group);
        self.feed(Input::JobClaimed(claim(id, group, epoch)))
    }

    /// Claim `job` and have the worker it goes to start it as process `10_000 + id`.
    /// Returns the worker and everything the core did.
    pub fn run_job(&mut self, job: ClaimedJob) -> (ChildId, Vec<Action>) {
        let mut acts = self.feed(Input::JobClaimed(job));
        let child = started_job(&acts, job_id_of(&acts)).expect("the job went to a worker");
        let job = job_id_of(&acts);
        acts.extend(self.feed(Input::JobStarted {
            child,
            job,
            pid: job_pid(job),
        }));
        (child, acts)
    }

    /// Claim attempt 1 of `id` for `group` in the current epoch and start it.
    pub fn start(&mut self, id: JobId, group: &str) -> (ChildId, Vec<Action>) {
        let epoch = self.ledger.epoch(group);
        self.run_job(claim(id, group, epoch))
    }

    /// The job running on `child` ended with `end`.
    pub fn end(&mut self, child: ChildId, job: JobId, end: Option<ProcessEnd>) -> Vec<Action> {
        self.feed(Input::JobEnded {
            child,
            job,
            end,
            ran_for: None,
            start_error: end.is_none().then(|| "cannot start".to_string()),
            reason: None,
            exited_first: false,
        })
    }

    /// `child`'s process was reaped with `end`.
    pub fn reap(&mut self, child: ChildId, end: ProcessEnd) -> Vec<Action> {
        let pid = self.pid(child);
        self.feed(Input::Exited { pid, end })
    }
}

/// The pid a story gives job `id`'s process.
pub fn job_pid(id: JobId) -> u32 {
    10_000 + id as u32
}

fn job_id_of(acts: &[Action]) -> JobId {
    acts.iter()
        .find_map(|a| match a {
            Action::StartJob { job, .. } => Some(job.id),
            _ => None,
        })
        .expect("a StartJob")
}

/// The worker that `acts` told to start job `id`.
pub fn started_job(acts: &[Action], id: JobId) -> Option<ChildId> {
    acts.iter().find_map(|a| match a {
        Action::StartJob { child, job } if job.id == id => Some(*child),
        _ => None,
    })
}

/// The child ids of every Spawn in `acts`, in order.
pub fn spawned_children(acts: &[Action]) -> Vec<ChildId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn { child, .. } => Some(*child),
            _ => None,
        })
        .collect()
}

/// The roles of every Spawn in `acts`, in order.
pub fn spawned_roles(acts: &[Action]) -> Vec<Role> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Spawn { role, .. } => Some(role.clone()),
            _ => None,
        })
        .collect()
}

/// Every event in `acts`, in order.
pub fn events(acts: &[Action]) -> Vec<Event> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Every Grant in `acts` as `(group, n, epoch)`.
pub fn grants(acts: &[Action]) -> Vec<(String, u32, u64)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Grant { group, n, epoch } => Some((group.clone(), *n, *epoch)),
            _ => None,
        })
        .collect()
}

/// Every child told to stop (StopChild) in `acts`.
pub fn stopped(acts: &[Action]) -> Vec<ChildId> {
    acts.iter()
        .filter_map(|a| match a {
            Action::StopChild { child } => Some(*child),
            _ => None,
        })
        .collect()
}

/// Every child killed (KillChild) in `acts`, with the signal.
pub fn killed(acts: &[Action]) -> Vec<(ChildId, Signal)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::KillChild { child, signal, .. } => Some((*child, *signal)),
            _ => None,
        })
        .collect()
}

/// Every SignalJob in `acts` as `(job, signal)`.
pub fn job_signals(acts: &[Action]) -> Vec<(JobId, Signal)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::SignalJob { job, signal, .. } => Some((*job, *signal)),
            _ => None,
        })
        .collect()
}

/// Every RecordOutcome in `acts` as `(job, attempt, outcome, next)`.
pub fn outcomes(acts: &[Action]) -> Vec<(JobId, u32, Outcome, Next)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::RecordOutcome {
                job,
                attempt,
                outcome,
                next,
                ..
            } => Some((*job, *attempt, *outcome, *next)),
            _ => None,
        })
        .collect()
}

/// Every Release in `acts` as `(job, attempt)`.
pub fn releases(acts: &[Action]) -> Vec<(JobId, u32)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Release { job, attempt } => Some((*job, *attempt)),
            _ => None,
        })
        .collect()
}

/// The epoch of the first Poll in `acts`.
pub fn poll(acts: &[Action]) -> Option<u64> {
    acts.iter().find_map(|a| match a {
        Action::Poll { epoch } => Some(*epoch),
        _ => None,
    })
}

/// The exit code, if `acts` end the run.
pub fn exit_code(acts: &[Action]) -> Option<i32> {
    acts.iter().find_map(|a| match a {
        Action::Exit { code } => Some(*code),
        _ => None,
    })
}
