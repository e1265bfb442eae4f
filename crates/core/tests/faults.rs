//! Randomized fault schedules: the supervision core against a simulated world that
//! crashes, hangs and ignores it, with the core's promises checked at every step.
//!
//! The world plays the shell, every child and the job store. It answers Spawn (now and
//! then with SpawnFailed), sends Ready (now and then never), runs jobs that end with a
//! random code or hang, crashes and hangs children at random times, sometimes ignores
//! StopChild or a job's SIGTERM, plays a grabber that keeps the grabber's own [`Ledger`]
//! of credits and claims from a finite queue, reloads the config, cancels jobs, and
//! finally stops the supervisor. Time jumps to the next world event or core deadline.
//!
//! Messages from one child arrive in the order it sent them, and the shell reports a
//! child's exit only after everything it sent (the contract's ordering of
//! [`Input::Exited`]); apart from that every delay is random.
//!
//! Set `FAULTS_TRACE=1` to print every step of every case.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use supervisor_core::backoff::Backoff;
use supervisor_core::ledger::Ledger;
use supervisor_core::random::{Random, SplitMix64};
use supervisor_core::spec::{GroupSpec, Heartbeat, OnExhausted, RestartPolicy, Spec};
use supervisor_core::supervision::{
    Action, ChildId, ClaimedJob, Core, Event, Input, JobId, Next, Outcome, ProcessEnd, Role, Signal,
};
use supervisor_core::Time;

const NAMES: [&str; 3] = ["a", "b", "c"];

const GRACE: f64 = 4.0;
const KILL_GRACE: f64 = 1.0;
const HB_INTERVAL: f64 = 2.0;
const HB_TIMEOUT: f64 = 5.0;
const START_TIMEOUT: f64 = 3.0;
/// How long a stop may take with the world answering. A graceful stop: the grace,
/// then SIGTERM to the jobs, SIGKILL a kill_grace later, then StopChild to their
/// workers and SIGKILL a kill_grace after that. A child that hangs answers nothing at
/// all and is found by the heartbeat: silent for the timeout, seen at the next ping
/// round; so the bound counts from the stop or the last hang, whichever is later.
/// Plus the world's own message delays.
const STOP_BOUND: f64 = {
    let graceful = GRACE + 2.0 * KILL_GRACE;
    let hung = HB_TIMEOUT + HB_INTERVAL;
    (if graceful > hung { graceful } else { hung }) + 0.5
};

// ----- the plan: what proptest draws ------------------------------------------------------

#[derive(Clone, Debug)]
struct GroupPlan {
    max_workers: u32,
    exit: bool,
    jitter: bool,
    max_restarts: u32,
    timeout: Option<f64>,
    max_attempts: u32,
}

#[derive(Clone, Debug)]
struct JobPlan {
    group: usize,
    timeout: Option<f64>,
    max_attempts: Option<u32>,
    cancel_at: Option<f64>,
}

#[derive(Clone, Debug)]
struct ReloadPlan {
    at: f64,
    op: u8,
    group: usize,
    n: u32,
}

#[derive(Clone, Debug)]
struct Plan {
    seed: u64,
    groups: Vec<GroupPlan>,
    jobs: Vec<JobPlan>,
    /// 0: no crashes; 3: crash loops (restart limits are hit).
    crashiness: u8,
    until_empty: bool,
    reloads: Vec<ReloadPlan>,
    stop_at: f64,
    immediate: bool,
    /// A second, immediate stop this long after the first.
    second: Option<f64>,
}

fn group_plan() -> impl Strategy<Value = GroupPlan> {
    (
        0u32..=3,
        any::<bool>(),
        any::<bool>(),
        1u32..=4,
        prop::option::of(2.0f64..8.0),
        1u32..=3,
    )
        .prop_map(
            |(max_workers, exit, jitter, max_restarts, timeout, max_attempts)| GroupPlan {
                max_workers,
                exit,
                jitter,
                max_restarts,
                timeout,
                max_attempts,
            },
        )
}

fn job_plan() -> impl Strategy<Value = JobPlan> {
    (
        prop::sample::select(vec![0usize, 0, 0, 1, 1, 2]),
        prop::option::weighted(0.3, 1.0f64..6.0),
        prop::option::weighted(0.3, 1u32..=3),
        prop::option::weighted(0.1, 0.0f64..30.0),
    )
        .prop_map(|(group, timeout, max_attempts, cancel_at)| JobPlan {
            group,
            timeout,
            max_attempts,
            cancel_at,
        })
}

fn reload_plan() -> impl Strategy<Value = ReloadPlan> {
    (0.0f64..35.0, 0u8..3, 0usize..3, 0u32..=4).prop_map(|(at, op, group, n)| ReloadPlan {
        at,
        op,
        group,
        n,
    })
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        any::<u64>(),
        prop::collection::vec(group_plan(), 1..=2),
        prop::collection::vec(job_plan(), 0..16),
        0u8..=3,
        prop::bool::weighted(0.5),
        prop::collection::vec(reload_plan(), 0..=3),
        5.0f64..40.0,
        prop::bool::weighted(0.2),
        prop::option::weighted(0.15, 0.0f64..8.0),
    )
        .prop_map(
            |(seed, groups, jobs, crashiness, until_empty, reloads, stop_at, immediate, second)| {
                Plan {
                    seed,
                    groups,
                    jobs,
                    crashiness,
                    until_empty,
                    reloads,
                    stop_at,
                    immediate,
                    second,
                }
            },
        )
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn group_spec(name: &str, p: &GroupPlan) -> GroupSpec {
    GroupSpec {
        name: name.to_string(),
        max_workers: p.max_workers,
        job_timeout: p.timeout.map(secs),
        max_attempts: p.max_attempts,
        retry_backoff: Backoff::from_secs(0.5, 4.0, 0.75),
        restart: RestartPolicy {
            backoff: Backoff::from_secs(0.1, 2.0, if p.jitter { 0.75 } else { 0.0 }),
            max_restarts: p.max_restarts,
            period: secs(10.0),
            on_exhausted: if p.exit {
                OnExhausted::Exit
            } else {
                OnExhausted::Disable
            },
        },
    }
}

fn world_spec(plan: &Plan) -> Spec {
    Spec {
        groups: plan
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| group_spec(NAMES[i], g))
            .collect(),
        grabber_restart: RestartPolicy {
            backoff: Backoff::from_secs(0.1, 2.0, 0.75),
            max_restarts: 4,
            period: secs(10.0),
            on_exhausted: OnExhausted::Exit,
        },
        heartbeat: Heartbeat {
            interval: secs(HB_INTERVAL),
            timeout: secs(HB_TIMEOUT),
        },
        shutdown_grace: secs(GRACE),
        kill_grace: secs(KILL_GRACE),
        start_timeout: secs(START_TIMEOUT),
        until_empty: plan.until_empty,
    }
}

// ----- the world --------------------------------------------------------------------------

#[derive(Debug)]
enum Ev {
    /// Something the shell itself reports or decides (Spawned, SpawnFailed, Shutdown).
    Shell(Input),
    /// A message a child sent: delivered in the child's order, before its exit.
    Msg(ChildId, Input),
    /// The child's process ends now and is reaped.
    Reap(ChildId, ProcessEnd),
    Crash(ChildId),
    Hang(ChildId),
    /// The child finishes its handshake.
    Ready(ChildId),
    /// A job process (by pid) ends.
    JobDone(u32, ProcessEnd),
    /// The grabber claims what its credits allow (only the latest tick counts).
    Tick(u64),
    Reload(ReloadPlan),
    Cancel(JobId),
}

#[derive(Debug)]
struct Kid {
    role: Role,
    pid: Option<u32>,
    gone: bool,
    ready: bool,
    hung: bool,
    ignores_stop: bool,
    /// The job process it runs: (job, pid).
    job: Option<(JobId, u32)>,
    /// When its last message arrives, to keep its messages in order.
    last_msg: Time,
}

#[derive(Debug)]
struct Proc {
    job: JobId,
    alive: bool,
    ignores_term: bool,
}

#[derive(Debug, PartialEq)]
enum SState {
    /// Runnable from this time on (a retry waits).
    Queued(Time),
    Claimed(u32),
    Done,
}

#[derive(Debug)]
struct SJob {
    group: String,
    timeout: Option<f64>,
    max_attempts: Option<u32>,
    used: u32,
    state: SState,
    canceled: bool,
}

struct Sim {
    core: Core,
    now: Time,
    rng: SplitMix64,
    crashiness: u8,
    queue: BTreeMap<(Time, u64), Ev>,
    seq: u64,
    spec: Spec,
    kids: BTreeMap<ChildId, Kid>,
    next_pid: u32,
    grabber: Option<ChildId>,
    /// The grabber's ledger: its credits per group, and the source epoch it reports on.
    ledger: Ledger,
    tick_gen: u64,
    /// The newest credit epoch the core announced per group.
    epochs: BTreeMap<String, u64>,
    store: BTreeMap<JobId, SJob>,
    procs: BTreeMap<u32, Proc>,
    steps: usize,
    trace: Vec<String>,
    verbose: bool,

    // What the checks remember.
    /// Jobs the core was told were claimed and has not settled: job -> attempt.
    in_core: BTreeMap<JobId, u32>,
    /// Workers the core told to run a job it has not heard the end of.
    assigned: BTreeMap<ChildId, JobId>,
    /// Announced restarts not yet done: the earliest time each may happen.
    earliest: BTreeMap<Role, Time>,
    /// Restarts scheduled, by group (None: the grabber), since its window last reset.
    restarts: BTreeMap<Option<String>, Vec<Time>>,
    started: BTreeSet<u32>,
    exited: BTreeSet<u32>,
    /// Per group, jobs that were running when the pool last shrank or closed.
    legacy: BTreeMap<String, BTreeSet<JobId>>,
    disabled: BTreeSet<String>,
    stop_began: Option<Time>,
    last_hang: Time,
    gave_up_exit: bool,
    exit: Option<(Time, i32)>,
}

impl Sim {
    fn new(plan: &Plan) -> Sim {
        let spec = world_spec(plan);
        let core = Core::new(
            spec.clone(),
            Box::new(SplitMix64::new(plan.seed.wrapping_mul(0x9E37_79B9))),
        );
        let mut sim = Sim {
            core,
            now: Time::ZERO,
            rng: SplitMix64::new(plan.seed),
            crashiness: plan.crashiness,
            queue: BTreeMap::new(),
            seq: 0,
            spec,
            kids: BTreeMap::new(),
            next_pid: 1000,
            grabber: None,
            ledger: Ledger::new(),
            tick_gen: 0,
            epochs: BTreeMap::new(),
            store: BTreeMap::new(),
            procs: BTreeMap::new(),
            steps: 0,
            trace: Vec::new(),
            verbose: std::env::var_os("FAULTS_TRACE").is_some(),
            in_core: BTreeMap::new(),
            assigned: BTreeMap::new(),
            earliest: BTreeMap::new(),
            restarts: BTreeMap::new(),
            started: BTreeSet::new(),
            exited: BTreeSet::new(),
            legacy: BTreeMap::new(),
            disabled: BTreeSet::new(),
            stop_began: None,
            last_hang: Time::ZERO,
            gave_up_exit: false,
            exit: None,
        };
        for (i, j) in plan.jobs.iter().enumerate() {
            let id = i as JobId + 1;
            sim.store.insert(
                id,
                SJob {
                    group: NAMES[j.group].to_string(),
                    timeout: j.timeout,
                    max_attempts: j.max_attempts,
                    used: 0,
                    state: SState::Queued(Time::ZERO),
                    canceled: false,
                },
            );
            if let Some(t) = j.cancel_at {
                sim.schedule(t, Ev::Cancel(id));
            }
        }
        for r in &plan.reloads {
            sim.schedule(r.at, Ev::Reload(r.clone()));
        }
        sim.schedule(
            plan.stop_at,
            Ev::Shell(Input::Shutdown {
                reason: "SIGTERM".into(),
                immediate: plan.immediate,
            }),
        );
        if let Some(after) = plan.second {
            sim.schedule(
                plan.stop_at + after,
                Ev::Shell(Input::Shutdown {
                    reason: "SIGINT".into(),
                    immediate: true,
                }),
            );
        }
        sim
    }

    // ----- plumbing -----------------------------------------------------------------

    fn t(&self) -> f64 {
        self.now.since_origin().as_secs_f64()
    }

    fn log(&mut self, line: String) {
        if self.verbose {
            eprintln!("{line}");
        }
        if self.trace.len() >= 80 {
            self.trace.remove(0);
        }
        self.trace.push(line);
    }

    #[track_caller]
    fn ensure(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            panic!(
                "at t={:.3}: {}\n--- last steps ---\n{}",
                self.t(),
                what(),
                self.trace.join("\n")
            );
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.uniform() < p
    }

    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.rng.uniform()
    }

    fn schedule_at(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
    }

    fn schedule(&mut self, at_secs: f64, ev: Ev) {
        self.schedule_at(Time::from_secs_f64(at_secs), ev);
    }

    fn after(&mut self, delay: f64, ev: Ev) {
        self.schedule_at(self.now + secs(delay), ev);
    }

    /// A message from `child`, arriving after `delay` but never before its earlier ones.
    fn send(&mut self, child: ChildId, delay: f64, input: Input) {
        let now = self.now;
        let Some(k) = self.kids.get_mut(&child) else {
            return;
        };
        if k.gone || k.hung {
            return;
        }
        let at = (now + secs(delay)).max(k.last_msg);
        k.last_msg = at;
        self.schedule_at(at, Ev::Msg(child, input));
    }

    fn alive(&self, child: ChildId) -> bool {
        self.kids.get(&child).is_some_and(|k| !k.gone)
    }

    fn group_of(&self, child: ChildId) -> Option<String> {
        self.kids
            .get(&child)
            .and_then(|k| k.role.group().map(str::to_string))
    }

    // ----- the run --------------------------------------------------------------------

    fn run(&mut self) {
        self.log("t=0 start".to_string());
        self.feed(Input::Start);
        loop {
            self.steps += 1;
            self.ensure(self.steps < 20_000, || "the run does not end".into());
            let world = self.queue.keys().next().map(|k| k.0);
            let core = self.core.next_deadline();
            let from_world = match (world, core) {
                (None, None) => break,
                (Some(w), Some(c)) => w <= c,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if from_world {
                let (key, ev) = self.queue.pop_first().expect("peeked");
                self.now = self.now.max(key.0);
                self.event(ev);
            } else {
                self.now = self.now.max(core.expect("a deadline"));
                self.log(format!("t={:.3} on_timeout", self.t()));
                let acts = self.core.on_timeout(self.now);
                self.ensure(self.exit.is_none() || acts.is_empty(), || {
                    format!("actions after Exit: {acts:?}")
                });
                self.apply(acts);
                let next = self.core.next_deadline();
                self.ensure(next.is_none_or(|n| n > self.now), || {
                    format!("a deadline that stays due: {next:?} (the shell would spin)")
                });
            }
            self.check();
        }
        self.finish();
    }

    fn feed(&mut self, input: Input) {
        let brief = format!("{input:?}");
        let reload = matches!(input, Input::Reload(_));
        let acts = self.core.handle(self.now, input);
        self.log(format!("t={:.3} <- {brief}", self.t()));
        self.ensure(self.exit.is_none() || acts.is_empty(), || {
            format!("actions after Exit: {acts:?}")
        });
        if reload {
            self.ensure(
                !acts.iter().any(|a| matches!(a, Action::SignalJob { .. })),
                || format!("a reload interrupted a running job: {acts:?}"),
            );
        }
        self.apply(acts);
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Shell(input) => {
                match &input {
                    Input::Spawned { child, pid } => {
                        let k = self.kids.get_mut(child).expect("spawned kid");
                        k.pid = Some(*pid);
                    }
                    Input::SpawnFailed { child, .. } => {
                        self.kids.get_mut(child).expect("kid").gone = true;
                        if self.grabber == Some(*child) {
                            self.grabber = None;
                        }
                    }
                    _ => {}
                }
                self.feed(input);
            }
            Ev::Msg(child, input) => self.deliver(child, input),
            Ev::Reap(child, end) => self.reap(child, end),
            Ev::Crash(child) => {
                if self.alive(child) && self.kids[&child].pid.is_some() {
                    self.reap(child, ProcessEnd::Signaled(11));
                }
            }
            Ev::Hang(child) => {
                if let Some(k) = self.kids.get_mut(&child).filter(|k| !k.gone) {
                    k.hung = true;
                    self.last_hang = self.now;
                    self.log(format!("t={:.3} {child} hangs", self.t()));
                }
            }
            Ev::Ready(child) => {
                let ok = self.kids.get(&child).is_some_and(|k| !k.gone && !k.hung);
                if ok {
                    self.kids.get_mut(&child).expect("kid").ready = true;
                    self.send(child, 0.0, Input::Ready { child });
                }
            }
            Ev::JobDone(pid, end) => self.job_done(pid, end),
            Ev::Tick(gen) => {
                if gen == self.tick_gen {
                    self.tick();
                }
            }
            Ev::Reload(r) => self.reload(r),
            Ev::Cancel(job) => {
                if let Some(j) = self.store.get_mut(&job) {
                    j.canceled = true;
                    // `supervisor cancel` settles a queued job in the store itself.
                    if matches!(j.state, SState::Queued(_)) {
                        j.state = SState::Done;
                    }
                }
                self.feed(Input::CancelRequested { job });
            }
        }
    }

    /// A child's message reaches the core.
    fn deliver(&mut self, child: ChildId, input: Input) {
        if !self.alive(child) {
            return;
        }
        match &input {
            Input::JobClaimed(job) => {
                let known = self.in_core.insert(job.id, job.attempt);
                self.ensure(known.is_none(), || format!("job {} claimed twice", job.id));
            }
            Input::JobEnded { job, .. } => {
                let was = self.assigned.remove(&child);
                self.ensure(was == Some(*job), || {
                    format!("{child} ended job {job} but the core gave it {was:?}")
                });
            }
            _ => {}
        }
        self.feed(input);
    }

    /// The child dies: everything it sent arrives first, then its exit.
    fn reap(&mut self, child: ChildId, end: ProcessEnd) {
        if !self.alive(child) {
            return;
        }
        let keys: Vec<(Time, u64)> = self
            .queue
            .iter()
            .filter(|(_, ev)| matches!(ev, Ev::Msg(c, _) if *c == child))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(Ev::Msg(_, input)) = self.queue.remove(&key) {
                self.deliver(child, input);
            }
        }
        let k = self.kids.get_mut(&child).expect("kid");
        k.gone = true;
        let pid = k.pid.expect("reaped kids were spawned");
        if self.grabber == Some(child) {
            self.grabber = None;
            self.ledger = Ledger::new();
        }
        self.assigned.remove(&child);
        self.feed(Input::Exited { pid, end });
    }

    fn job_done(&mut self, pid: u32, end: ProcessEnd) {
        let Some(p) = self.procs.get_mut(&pid).filter(|p| p.alive) else {
            return;
        };
        p.alive = false;
        let job = p.job;
        let worker = self
            .kids
            .iter()
            .find(|(_, k)| !k.gone && k.job == Some((job, pid)))
            .map(|(&c, _)| c);
        if let Some(w) = worker {
            if !self.kids[&w].hung {
                self.kids.get_mut(&w).expect("kid").job = None;
                let d = self.between(0.0, 0.1);
                self.send(
                    w,
                    d,
                    Input::JobEnded {
                        child: w,
                        job,
                        end: Some(end),
                        ran_for: None,
                        start_error: None,
                        reason: None,
                    },
                );
            }
        }
    }

    fn schedule_tick(&mut self, delay: f64) {
        self.tick_gen += 1;
        let g = self.tick_gen;
        self.after(delay, Ev::Tick(g));
    }

    /// The grabber claims one job per credit, oldest first, from the store.
    fn tick(&mut self) {
        let Some(g) = self.grabber else { return };
        let k = &self.kids[&g];
        if k.gone || k.hung || !k.ready {
            return;
        }
        let routed = self.spec.groups.iter().map(|g| g.name.as_str());
        let Some(groups) = self.ledger.to_claim(routed) else {
            return;
        };
        for group in groups.into_keys() {
            while self.ledger.credits(&group) > 0 {
                let now = self.now;
                let Some((&id, j)) = self.store.iter_mut().find(|(_, j)| {
                    j.group == group
                        && !j.canceled
                        && matches!(j.state, SState::Queued(at) if at <= now)
                }) else {
                    break;
                };
                let attempt = j.used + 1;
                j.state = SState::Claimed(attempt);
                let (timeout, max_attempts) = (j.timeout.map(secs), j.max_attempts);
                let claim = ClaimedJob {
                    id,
                    group: group.clone(),
                    attempt,
                    timeout,
                    max_attempts,
                    epoch: self.ledger.spend(&group),
                };
                if self.crashiness > 0 && self.chance(0.03) {
                    // Claimed in the store, then died before telling anyone: a stray.
                    self.log(format!("t={:.3} grabber dies holding job {id}", self.t()));
                    self.reap(g, ProcessEnd::Signaled(11));
                    return;
                }
                let d = self.between(0.01, 0.3);
                self.send(g, d, Input::JobClaimed(claim));
            }
        }
        self.report();
        self.schedule_tick(1.0);
    }

    /// The grabber tells whether any routable job is queued or waiting for a retry, when
    /// that is news (like the real one).
    fn report(&mut self) {
        let Some(g) = self.grabber else { return };
        if !self.kids[&g].ready {
            return;
        }
        let groups: BTreeSet<&str> = self.spec.groups.iter().map(|g| g.name.as_str()).collect();
        let empty = !self
            .store
            .values()
            .any(|j| matches!(j.state, SState::Queued(_)) && groups.contains(j.group.as_str()));
        if let Some(epoch) = self.ledger.report(empty) {
            self.send(g, 0.05, Input::SourceReport { epoch, empty });
        }
    }

    fn reload(&mut self, r: ReloadPlan) {
        let name = NAMES[r.group];
        let mut spec = self.spec.clone();
        let present = spec.groups.iter().position(|g| g.name == name);
        match (r.op, present) {
            (1, Some(i)) if spec.groups.len() > 1 => {
                spec.groups.remove(i);
            }
            (2, Some(i)) => {
                spec.groups[i].job_timeout = (r.n > 0).then(|| secs(r.n as f64 * 1.5));
            }
            (_, Some(i)) => spec.groups[i].max_workers = r.n,
            (_, None) => {
                let plan = GroupPlan {
                    max_workers: r.n.max(1),
                    exit: r.n < 2,
                    jitter: true,
                    max_restarts: 3,
                    timeout: Some(5.0),
                    max_attempts: 2,
                };
                spec.groups.push(group_spec(name, &plan));
            }
        }
        // Jobs running when a pool shrinks may exceed its new size until they end.
        let names: Vec<String> = self.spec.groups.iter().map(|g| g.name.clone()).collect();
        for name in names {
            let old = self.max_workers(&name);
            let new = spec.group(&name).map_or(0, |n| n.max_workers);
            if new < old {
                self.mark_legacy(&name);
            }
        }
        // Groups added (or enabled again) start a fresh restart window.
        for g in &spec.groups {
            if self.spec.group(&g.name).is_none() || self.disabled.contains(&g.name) {
                self.restarts.remove(&Some(g.name.clone()));
            }
            self.disabled.remove(&g.name);
        }
        self.spec = spec.clone();
        self.feed(Input::Reload(spec));
    }

    fn max_workers(&self, group: &str) -> u32 {
        if self.disabled.contains(group) {
            return 0;
        }
        self.spec.group(group).map_or(0, |g| g.max_workers)
    }

    fn jobs_running_in(&self, group: &str) -> BTreeSet<JobId> {
        self.assigned
            .iter()
            .filter(|(c, _)| self.group_of(**c).as_deref() == Some(group))
            .map(|(_, j)| *j)
            .collect()
    }

    fn mark_legacy(&mut self, group: &str) {
        let running = self.jobs_running_in(group);
        self.legacy
            .entry(group.to_string())
            .or_default()
            .extend(running);
    }

    // ----- what the core asks -----------------------------------------------------------

    fn apply(&mut self, acts: Vec<Action>) {
        for a in acts {
            self.log(format!("t={:.3}   -> {a:?}", self.t()));
            self.action(a);
        }
    }

    fn action(&mut self, a: Action) {
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

    fn spawn(&mut self, child: ChildId, role: Role) {
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

    fn start_job(&mut self, child: ChildId, job: ClaimedJob) {
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
    fn settle(&mut self, job: JobId, attempt: u32, how: &str) {
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

    fn record(&mut self, job: JobId, attempt: u32, outcome: Outcome, next: Next) {
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

    fn emitted(&mut self, e: Event) {
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

    // ----- the invariants ---------------------------------------------------------------

    fn check(&mut self) {
        if let (Some(t0), None) = (self.stop_began, self.exit) {
            let from = t0.max(self.last_hang);
            self.ensure(self.now <= from + secs(STOP_BOUND), || {
                format!("still not stopped {STOP_BOUND} s after the stop began (or the last hang)")
            });
        }
        let rows = self.core.children();
        // A restart that was announced but whose slot is gone (shrunk, removed, stopped)
        // will not happen; a later spawn for that role is a new slot.
        self.earliest
            .retain(|role, _| rows.iter().any(|r| &r.role == role));

        let mut groups: BTreeSet<String> =
            self.spec.groups.iter().map(|g| g.name.clone()).collect();
        groups.extend(
            rows.iter()
                .filter_map(|r| r.role.group().map(str::to_string)),
        );
        for g in groups {
            let slots = rows
                .iter()
                .filter(|r| r.role.group() == Some(g.as_str()))
                .count();
            let busy = self.core.busy_workers(&g);
            let running = self.jobs_running_in(&g);
            self.ensure(busy == running.len(), || {
                format!("group {g}: the core counts {busy} busy, it started {running:?}")
            });
            self.ensure(busy <= slots, || {
                format!("group {g}: {busy} busy in {slots} slots")
            });
            let legacy = self
                .legacy
                .get(&g)
                .map_or(0, |l| l.intersection(&running).count());
            let max = self.max_workers(&g) as usize;
            self.ensure(busy <= max + legacy, || {
                format!("group {g}: {busy} busy, max_workers {max}, {legacy} left from a shrink")
            });

            // Credits: what the grabber holds in the current epoch plus its claims on the
            // way is exactly what the core thinks it granted; with the jobs waiting and
            // running, never more than the group's slots (no prefetch).
            let epoch = self.epochs.get(&g).copied();
            let held = match self.grabber {
                Some(_) if Some(self.ledger.epoch(&g)) == epoch => self.ledger.credits(&g),
                _ => 0,
            };
            let on_the_way = self
                .queue
                .values()
                .filter(|ev| {
                    matches!(ev, Ev::Msg(c, Input::JobClaimed(j))
                        if Some(*c) == self.grabber && j.group == g && Some(j.epoch) == epoch)
                })
                .count() as u32;
            let granted = self.core.credits(&g);
            self.ensure(granted == held + on_the_way, || {
                format!("group {g}: the core granted {granted}, the grabber holds {held} + {on_the_way} claims on the way")
            });
            let pending = self.core.pending_jobs(&g);
            let promised = (held + on_the_way) as usize + pending + busy;
            self.ensure(promised <= slots, || {
                format!("group {g}: {held}+{on_the_way} credits, {pending} pending, {busy} busy in {slots} slots")
            });
        }
    }

    fn finish(&mut self) {
        if self.exit.is_none() {
            self.ensure(false, || "the run ended without Exit".into());
        }
        if self.exit.is_some_and(|(t, _)| t < self.now) {
            // Called again by the loop's end: the final checks already ran.
            let acts = self.core.on_timeout(self.now);
            self.ensure(acts.is_empty(), || {
                format!("on_timeout acted after Exit: {acts:?}")
            });
            return;
        }
        self.ensure(self.core.next_deadline().is_none(), || {
            "a deadline after Exit".into()
        });
        self.ensure(self.in_core.is_empty(), || {
            format!("jobs neither recorded nor released: {:?}", self.in_core)
        });
        let alive: Vec<&Kid> = self.kids.values().filter(|k| !k.gone).collect();
        // The last child's Exited is what ends the run; it is marked gone before it is fed.
        self.ensure(alive.is_empty(), || {
            format!("children outlive the supervisor: {alive:?}")
        });
        let procs: Vec<(&u32, &Proc)> = self.procs.iter().filter(|(_, p)| p.alive).collect();
        self.ensure(procs.is_empty(), || {
            format!("job processes outlive their worker: {procs:?}")
        });
        let unexited: Vec<&u32> = self.started.difference(&self.exited).collect();
        self.ensure(unexited.is_empty(), || {
            format!("child_started without child_exited: {unexited:?}")
        });
    }
}

fn run(plan: Plan) -> usize {
    let mut sim = Sim::new(&plan);
    sim.run();
    sim.steps
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x5EED_F417),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_core_keeps_its_promises_under_random_faults(plan in plan()) {
        let steps = run(plan);
        prop_assert!(steps < 20_000);
    }
}

/// A few hand-picked heavy schedules, so the worst cases are always in the run.
#[test]
fn crash_loops_with_reloads_and_a_late_interrupt() {
    for seed in 0..24u64 {
        let group = |max_workers, exit| GroupPlan {
            max_workers,
            exit,
            jitter: seed < 12,
            max_restarts: 2,
            timeout: Some(3.0),
            max_attempts: 2,
        };
        let jobs = (0..10)
            .map(|i| JobPlan {
                group: i % 3,
                timeout: [0, 4, 8].contains(&i).then_some(1.5),
                max_attempts: None,
                cancel_at: [0, 5].contains(&i).then_some(i as f64),
            })
            .collect();
        let plan = Plan {
            seed,
            groups: vec![group(3, seed < 8), group(2, false)],
            jobs,
            crashiness: (seed % 4) as u8,
            until_empty: seed >= 18,
            reloads: vec![
                ReloadPlan {
                    at: 3.0,
                    op: 0,
                    group: 0,
                    n: 1,
                },
                ReloadPlan {
                    at: 6.0,
                    op: 0,
                    group: 2,
                    n: 2,
                },
                ReloadPlan {
                    at: 9.0,
                    op: 1,
                    group: 1,
                    n: 0,
                },
                ReloadPlan {
                    at: 12.0,
                    op: 0,
                    group: 0,
                    n: 4,
                },
            ],
            stop_at: 20.0 + seed as f64,
            immediate: false,
            second: (seed % 3 == 1).then_some(2.0),
        };
        run(plan);
    }
}
