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
//! This file holds the plan (what proptest draws) and the world's state; `faults/`
//! holds the world's moves (`world.rs`), what it does with the core's actions
//! (`actions.rs`) and the promises checked (`invariants.rs`).
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
    /// Attempts whose `job_started` was told and whose `job_finished` was not yet.
    attempts_open: BTreeSet<(JobId, u32)>,
    /// Per group, jobs that were running when the pool last shrank or closed.
    legacy: BTreeMap<String, BTreeSet<JobId>>,
    disabled: BTreeSet<String>,
    stop_began: Option<Time>,
    last_hang: Time,
    gave_up_exit: bool,
    exit: Option<(Time, i32)>,
}

#[path = "faults/actions.rs"]
mod actions;
#[path = "faults/invariants.rs"]
mod invariants;
#[path = "faults/world.rs"]
mod world;

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
