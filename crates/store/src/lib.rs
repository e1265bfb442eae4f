//! The durable job store of `supervisor`: the [`JobStore`] interface and its types.
//!
//! One interface, [`JobStore`], hides where jobs live. [`SqliteStore`] is the embedded
//! default; [`PostgresStore`] lets several supervisors on several hosts share one queue,
//! and wakes them through a [`Listener`] when jobs are submitted or canceled. Both
//! implement the same trait with the same observable behaviour.
//!
//! Times are wall-clock unix seconds (`f64`) passed in by the caller: a store never reads
//! the clock, which keeps it deterministic under test.
//!
//! Job states follow the contract: `queued` → `running` → `succeeded` | `failed` |
//! `timed_out`. A failed or timed-out attempt that will be retried keeps its state with a
//! retry time ([`Job::not_before`]) and becomes `queued` again once that time has come
//! (every [`JobStore::claim`], [`JobStore::get`], [`JobStore::list`] and
//! [`JobStore::counts`] applies this first). A `lost` attempt that will be retried goes
//! straight back to `queued` with a `not_before` time. `dead` and `canceled` are terminal.
//!
//! A running job can also be *taken back* without an outcome: given back by a graceful
//! stop ([`JobStore::release`], [`JobStore::release_strays`],
//! [`JobStore::unregister_instance`]) or taken from a dead supervisor
//! ([`JobStore::requeue_orphans`]). It goes back to `queued` without using up an attempt,
//! its [`Job::finished_at`] left unset as the claim left it (the attempt never ended); or,
//! if a cancel was requested, it becomes `canceled` with `finished_at` the `now` given.

mod claim;
mod error;
mod job;
mod jsonl;
mod postgres;
mod sql;
mod sqlite;
pub mod testing;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use claim::{unrunnable_reason, StoredRun};
pub use error::{StoreError, UnknownState};
pub use job::NewJob;
pub use jsonl::{parse_jobs_json, parse_jobs_jsonl};
pub use postgres::{Listener, Patience, PostgresStore, NOTIFY_CHANNEL, PG_SCHEMA_VERSION};
pub use sqlite::{set_busy_timeout, SqliteStore, SCHEMA_VERSION};

pub use supervisor_config::{route, Route};
pub use supervisor_core::supervision::JobId;

/// The id of a registered supervisor instance (the owner of claims).
pub type InstanceId = i64;

/// The result type of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The state of a job.
///
/// Serialised (and printed) as lowercase snake case: `queued`, `running`, `succeeded`,
/// `failed`, `timed_out`, `dead`, `canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to be claimed (possibly not before [`Job::not_before`]).
    Queued,
    /// Claimed by a supervisor instance; an attempt is under way.
    Running,
    /// The last attempt succeeded.
    Succeeded,
    /// The last attempt failed; retried at [`Job::not_before`] if that is set.
    Failed,
    /// The last attempt ran out of time; retried at [`Job::not_before`] if that is set.
    TimedOut,
    /// Failed with no attempts left.
    Dead,
    /// Canceled by an operator.
    Canceled,
}

impl JobState {
    /// Every state, in the order `status` prints them.
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::TimedOut,
        JobState::Dead,
        JobState::Canceled,
    ];

    /// The state's name: `queued`, `running`, `succeeded`, `failed`, `timed_out`, `dead`
    /// or `canceled`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::TimedOut => "timed_out",
            JobState::Dead => "dead",
            JobState::Canceled => "canceled",
        }
    }

    /// True for the states a job never leaves: `succeeded`, `dead` and `canceled`.
    ///
    /// `failed` and `timed_out` are final only when no retry is scheduled, which the state
    /// alone does not tell: see [`Job::is_finished`].
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Canceled
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// One job as stored: the submitted fields plus its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// Its state.
    pub state: JobState,
    /// The group that ran it last (once claimed), else the group it names, if any.
    pub group: Option<String>,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Tags that routes match against.
    pub tags: BTreeMap<String, String>,
    /// Extra environment variables for the job's process.
    pub env: BTreeMap<String, String>,
    /// Working directory of the job's process.
    pub cwd: Option<String>,
    /// The job's own timeout (overrides its group's), in seconds.
    pub timeout_s: Option<f64>,
    /// The job's own attempt limit (overrides its group's).
    pub max_attempts: Option<u32>,
    /// Idempotency key.
    pub key: Option<String>,
    /// Attempts started so far (an attempt given back by a graceful stop or a dead
    /// supervisor does not count).
    pub attempts: u32,
    /// Exit code of the last finished attempt, if it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended the last finished attempt, if one did.
    pub signal: Option<i32>,
    /// Outcome of the last finished attempt: `succeeded`, `failed`, `timed_out`, `lost` or
    /// `canceled`.
    pub last_outcome: Option<String>,
    /// When it was submitted.
    pub created_at: f64,
    /// When its current or last attempt started.
    pub started_at: Option<f64>,
    /// When its last attempt ended, or when it was canceled. Unset while an attempt is
    /// under way, and once a running job goes back to `queued` without an outcome (a
    /// graceful stop or a dead supervisor: that attempt does not count).
    pub finished_at: Option<f64>,
    /// For `failed`/`timed_out`: when it will be retried (`None`: never, the job is
    /// finished). For `queued`: the earliest time it may be claimed.
    pub not_before: Option<f64>,
    /// The supervisor instance running it (only while `running`).
    pub owner: Option<InstanceId>,
    /// A cancel was requested while it was running; its supervisor will stop it.
    pub cancel_requested: bool,
    /// Why it ended as it did, beyond its last outcome: a stored job that cannot be run
    /// (naming the field), or one whose supervisor died under it too often.
    pub reason: Option<String>,
    /// Why its last attempt could not start (a missing program, a bad `cwd`), if so.
    pub start_error: Option<String>,
    /// Higher runs first; first come first served within a priority.
    pub priority: i64,
    /// The jobs it runs after (it is claimed only once they all succeeded).
    pub after: Vec<JobId>,
}

impl Job {
    /// True when the job will never run again: `succeeded`, `dead`, `canceled`, or
    /// `failed`/`timed_out` with no retry scheduled.
    pub fn is_finished(&self) -> bool {
        self.state.is_terminal()
            || (matches!(self.state, JobState::Failed | JobState::TimedOut)
                && self.not_before.is_none())
    }
}

/// A dependency as the store has it: its state and `not_before`, or `None` when no such
/// job exists.
pub(crate) type DepState = Option<(JobState, Option<f64>)>;

/// What a new job's dependencies (`after`) mean for it, from each one's state now
/// (`None`: no such job).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct AfterPlan {
    /// The dependencies not succeeded yet: the job waits on these.
    pub waiting_on: Vec<JobId>,
    /// A dependency that already ended otherwise: the job is canceled at once, for this.
    pub doomed: Option<String>,
}

impl AfterPlan {
    /// The plan for dependencies in these states (each with its `not_before`), or what is
    /// wrong (a job that does not exist), as a message about the `after` field.
    pub(crate) fn of(deps: &[(JobId, DepState)]) -> std::result::Result<Self, String> {
        let mut plan = AfterPlan::default();
        for &(id, found) in deps {
            let Some((state, not_before)) = found else {
                return Err(format!("after: job {id} does not exist"));
            };
            let finished = state.is_terminal()
                || (matches!(state, JobState::Failed | JobState::TimedOut) && not_before.is_none());
            if state == JobState::Succeeded {
                continue;
            }
            if finished {
                plan.doomed
                    .get_or_insert_with(|| format!("dependency {id} ended {}", state.as_str()));
            } else if !plan.waiting_on.contains(&id) {
                plan.waiting_on.push(id);
            }
        }
        Ok(plan)
    }
}

/// Where a queued job stands, by the claim's own rules ([`JobStore::place`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePlace {
    /// The group it is routed to, once decided; `None` when no group took it.
    pub route: Option<String>,
    /// Whether its group is decided yet (the next claim routes it).
    pub routed: bool,
    /// Claimable jobs of its group that come before it (higher priority, or older).
    pub ahead: u64,
    /// Its dependencies that have not succeeded yet.
    pub waiting_on: Vec<JobId>,
}

/// A queued job's row as [`sql::PLACE`] reads it.
pub(crate) struct PlaceRow {
    pub route: Option<String>,
    pub routed: bool,
    pub priority: i64,
    pub waiting: i64,
}

/// What [`JobStore::place`] asks of a store: its three queries ([`sql::PLACE`],
/// [`sql::AHEAD`], [`sql::WAITING_ON`]).
pub(crate) trait PlaceSql {
    fn place_row(&mut self, id: JobId) -> Result<Option<PlaceRow>>;
    fn ahead(&mut self, group: &str, priority: i64, id: JobId, now: f64) -> Result<i64>;
    fn waiting_on(&mut self, id: JobId) -> Result<Vec<JobId>>;
}

/// [`JobStore::place`], once for both stores.
pub(crate) fn place(sql: &mut impl PlaceSql, id: JobId, now: f64) -> Result<Option<QueuePlace>> {
    let Some(row) = sql.place_row(id)? else {
        return Ok(None);
    };
    let ahead = match &row.route {
        Some(g) => sql.ahead(g, row.priority, id, now)?,
        None => 0,
    };
    let waiting_on = if row.waiting > 0 {
        sql.waiting_on(id)?
    } else {
        Vec::new()
    };
    Ok(Some(QueuePlace {
        route: row.route,
        routed: row.routed,
        ahead: u64::try_from(ahead).unwrap_or(0),
        waiting_on,
    }))
}

/// A registered supervisor instance, the owner of the jobs it claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Its id.
    pub id: InstanceId,
    /// Host name it runs on.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// A token telling it apart from a later process with the same pid (e.g. its boot id
    /// and start time).
    pub token: String,
    /// When it registered.
    pub started_at: f64,
    /// When it last said it was alive ([`JobStore::register_instance`], then
    /// [`JobStore::touch_instance`]): how a supervisor on another host tells a dead
    /// instance, whose pid it cannot check.
    pub last_seen: f64,
}

/// How many deaths of its supervisor a running job survives: taken back from a dead
/// supervisor this many times, it ends `dead` (a job that kills its supervisor must not
/// take every next one down too).
pub const SUPERVISOR_DEATHS: u32 = 3;

/// The `reason` of a job quarantined after [`SUPERVISOR_DEATHS`] deaths of its supervisor.
pub fn quarantine_reason() -> String {
    format!("its supervisor died while running it {SUPERVISOR_DEATHS} times")
}

/// A job just claimed: what a worker needs to run one attempt of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedRun {
    /// The job's id.
    pub id: JobId,
    /// The group it was routed to.
    pub group: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// The job's own timeout, if it has one (else the group's applies).
    pub timeout_s: Option<f64>,
    /// The job's own attempt limit, if it has one (else the group's applies).
    pub max_attempts: Option<u32>,
    /// The 1-based number of this attempt.
    pub attempt: u32,
}

/// What is left after a [`JobStore::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Backlog {
    /// A job that some route takes is runnable now but its group had no credit left.
    pub runnable: bool,
    /// The earliest time a job that some route takes becomes runnable (a retry or a
    /// `not_before`), if any is waiting.
    pub waiting_until: Option<f64>,
}

impl Backlog {
    /// True when no job that a route takes is runnable or waiting.
    pub fn is_empty(&self) -> bool {
        !self.runnable && self.waiting_until.is_none()
    }
}

/// A queued job that a claim found it cannot run (a row damaged by hand or written by
/// another version) and ended `dead`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    /// The job's id.
    pub id: JobId,
    /// Its attempts so far.
    pub attempts: u32,
    /// Why, naming the field: the job's `reason`.
    pub reason: String,
}

/// The answer of [`JobStore::claim`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ClaimResult {
    /// The jobs claimed, in id order.
    pub jobs: Vec<ClaimedRun>,
    /// Jobs it would have claimed but that cannot be run: now `dead` with a reason.
    pub refused: Vec<Refused>,
    /// What is left.
    pub more: Backlog,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Exited with code 0.
    Succeeded,
    /// Exited non-zero or was killed by a signal.
    Failed,
    /// Killed for running past its timeout.
    TimedOut,
    /// Its worker died under it.
    Lost,
    /// Stopped because a cancel was requested.
    Canceled,
}

impl OutcomeKind {
    /// The outcome's name: `succeeded`, `failed`, `timed_out`, `lost` or `canceled`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Succeeded => "succeeded",
            OutcomeKind::Failed => "failed",
            OutcomeKind::TimedOut => "timed_out",
            OutcomeKind::Lost => "lost",
            OutcomeKind::Canceled => "canceled",
        }
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// How it ended.
    pub kind: OutcomeKind,
    /// Exit code, if the process exited.
    pub exit_code: Option<i32>,
    /// Signal number, if a signal ended the process.
    pub signal: Option<i32>,
    /// Why the command could not be started, if it could not.
    #[serde(default)]
    pub start_error: Option<String>,
    /// Why the attempt ended as it did, beyond its exit status (the OOM killer acted on
    /// its memory limit), if known: becomes the job's `reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An attempt's outcome to store, with all that [`JobStore::record_outcome`] takes: what
/// the supervisor hands its grabber to store with the next claim
/// ([`JobStore::settle_and_claim`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settle {
    pub job: JobId,
    pub attempt: u32,
    /// The instance that ran it.
    pub owner: InstanceId,
    pub outcome: OutcomeRecord,
    pub next: AfterAttempt,
    /// When the attempt ended (unix seconds): its `finished_at`.
    pub at: f64,
}

/// How many jobs one step of a reroute looks at ([`JobStore::reroute_from`]): a few tens
/// of milliseconds of work.
pub const REROUTE_CHUNK: u32 = 5_000;

/// One step of a reroute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rerouted {
    /// How many jobs changed group.
    pub changed: usize,
    /// The id the next step starts after (`None`: the queue is done).
    pub next: Option<JobId>,
}

/// What the store made of an outcome ([`JobStore::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settled {
    /// Stored as asked.
    Stored,
    /// Stored, but the job is `canceled` where a retry was asked: a cancel was requested
    /// while the attempt ran (its last outcome is `canceled` too).
    Canceled,
    /// Refused: the job is not running that attempt under that owner.
    Stale,
}

impl Settled {
    /// Whether the outcome was stored (as asked or canceled).
    pub fn stored(self) -> bool {
        self != Settled::Stale
    }
}

/// What a store's outcome statement did, from the state it asked for and the state the
/// row was left in (`None`: no row changed).
pub(crate) fn settled(asked: JobState, now: Option<&str>) -> Settled {
    match now {
        None => Settled::Stale,
        Some("canceled") if asked != JobState::Canceled => Settled::Canceled,
        Some(_) => Settled::Stored,
    }
}

/// What becomes of a job after an attempt: decided by the caller, applied by the store.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterAttempt {
    /// No further attempt: the job ends in the outcome's state (`succeeded`, `failed`,
    /// `timed_out`, `canceled`; a `lost` attempt with no further attempt is `dead`).
    Done,
    /// Try again at `at` (unix seconds).
    Retry {
        /// When the next attempt may start.
        at: f64,
    },
    /// No attempts left: the job is `dead`.
    Dead,
}

/// The answer of [`JobStore::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelResult {
    /// It was queued or awaiting a retry: it is now `canceled`.
    Canceled,
    /// It is running: the cancel is recorded, and its supervisor stops it (see
    /// [`JobStore::cancel_requests`]).
    Requested,
    /// It had already finished, in this state.
    AlreadyFinished(JobState),
    /// No job has that id.
    Unknown,
}

/// What [`JobStore::cancel`] does to a job in `state` (`not_before`: its retry time, if
/// any): ask its supervisor to stop it (`Requested`: it is running), cancel it at once
/// (`Canceled`: it is queued or waiting for a retry), or nothing (it has finished).
pub(crate) fn cancel_step(state: JobState, not_before: Option<f64>) -> CancelResult {
    match state {
        JobState::Running => CancelResult::Requested,
        JobState::Queued => CancelResult::Canceled,
        JobState::Failed | JobState::TimedOut if not_before.is_some() => CancelResult::Canceled,
        finished => CancelResult::AlreadyFinished(finished),
    }
}

/// Parses the state column of job `id`.
pub(crate) fn parse_state(id: JobId, text: &str) -> Result<JobState> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))
}

/// [`JobStore::counts`] from rows of `(state, number of jobs)`.
pub(crate) fn state_counts(
    rows: impl IntoIterator<Item = (String, i64)>,
) -> Result<BTreeMap<JobState, u64>> {
    let mut counts: BTreeMap<JobState, u64> =
        JobState::ALL.into_iter().map(|state| (state, 0)).collect();
    for (state, n) in rows {
        let state = state
            .parse::<JobState>()
            .map_err(|e| StoreError::Corrupt(format!("a job has an {e}")))?;
        counts.insert(state, n.try_into().unwrap_or(0));
    }
    Ok(counts)
}

/// Where an attempt's outcome and what follows it take a running job, as
/// [`JobStore::record_outcome`] documents: its next state and, for a retry, the time it
/// waits for. (A store turns a retry into `canceled` if a cancel was requested.)
pub(crate) fn outcome_state(
    id: JobId,
    outcome: &OutcomeRecord,
    next: AfterAttempt,
) -> Result<(JobState, Option<f64>)> {
    if let AfterAttempt::Retry { at } = next {
        if !at.is_finite() {
            return Err(StoreError::InvalidArgument(format!(
                "job {id}: the retry time must be a finite number, not {at}"
            )));
        }
    }
    Ok(match (outcome.kind, next) {
        (OutcomeKind::Succeeded, _) => (JobState::Succeeded, None),
        (OutcomeKind::Canceled, _) => (JobState::Canceled, None),
        (_, AfterAttempt::Dead) | (OutcomeKind::Lost, AfterAttempt::Done) => (JobState::Dead, None),
        (OutcomeKind::Failed, AfterAttempt::Done) => (JobState::Failed, None),
        (OutcomeKind::TimedOut, AfterAttempt::Done) => (JobState::TimedOut, None),
        (OutcomeKind::Failed, AfterAttempt::Retry { at }) => (JobState::Failed, Some(at)),
        (OutcomeKind::TimedOut, AfterAttempt::Retry { at }) => (JobState::TimedOut, Some(at)),
        (OutcomeKind::Lost, AfterAttempt::Retry { at }) => (JobState::Queued, Some(at)),
    })
}

/// The durable job store: every operation `supervisor` needs on the queue.
///
/// Implementations must keep claims safe against concurrent claimers, in other processes
/// or on other hosts: a job is claimed by at most one instance at a time, and reports about
/// an attempt that is no longer current (wrong attempt or owner) are refused.
pub trait JobStore {
    /// True once the store's connection is known to be lost: every call would fail
    /// until it is opened again (never, for an embedded store).
    fn connection_lost(&self) -> bool {
        false
    }

    /// Queues `jobs`, all or none (every job is validated first), returning one id per job
    /// in order. A job whose `key` matches a job that is not finished (queued, running, or
    /// awaiting a retry) — also an earlier job of the same batch — gets that job's id
    /// instead of a new job.
    fn submit(&mut self, jobs: &[NewJob], now: f64) -> Result<Vec<JobId>>;

    /// Registers a supervisor instance that will own claims; its
    /// [`last_seen`](Instance::last_seen) is `now`.
    fn register_instance(
        &mut self,
        host: &str,
        pid: u32,
        token: &str,
        now: f64,
    ) -> Result<InstanceId>;

    /// Forgets an instance that is stopping: its running jobs go back to `queued` without
    /// using up an attempt (or become `canceled`, finished at `now`, if a cancel was
    /// requested). Returns their ids.
    fn unregister_instance(&mut self, id: InstanceId, now: f64) -> Result<Vec<JobId>>;

    /// Every registered instance, in id order.
    fn instances(&mut self) -> Result<Vec<Instance>>;

    /// Records that instance `id` is alive at `now` (its [`Instance::last_seen`]): a
    /// running supervisor calls this regularly, well within the timeout after which other
    /// hosts take it for dead (see [`requeue_orphans`](JobStore::requeue_orphans)).
    ///
    /// Returns false if no such instance is registered: another supervisor took it for
    /// dead, forgot it and took its jobs back, so its reports about them will be refused.
    /// It should stop claiming under that id and register again.
    fn touch_instance(&mut self, id: InstanceId, now: f64) -> Result<bool>;

    /// Takes back the jobs of dead instances: every job `running` under an instance other
    /// than `me` for which `is_dead` says true goes back to `queued` without using up an
    /// attempt (or becomes `canceled`, finished at `now`, if a cancel was requested), and
    /// those instances are forgotten. Returns the ids of the jobs taken back.
    ///
    /// Each such job counts one more death of its supervisor; at the
    /// [`SUPERVISOR_DEATHS`]th it ends `dead` (last outcome `lost`, finished at `now`)
    /// with the reason [`quarantine_reason`] instead.
    ///
    /// `is_dead` is the caller's policy. The intended one: an instance on the caller's own
    /// host is dead when its pid is gone or names another process (its
    /// [`token`](Instance::token), e.g. the process's start time, differs), which is known
    /// at once; an instance on another host, whose processes the caller cannot see, is
    /// dead when its [`last_seen`](Instance::last_seen) is older than a timeout (several
    /// times the interval at which live instances call
    /// [`touch_instance`](JobStore::touch_instance), with room for clock skew between
    /// hosts). `is_dead` is asked once about each other instance; one that was touched
    /// between that question and the taking back is left alone.
    fn requeue_orphans(
        &mut self,
        me: InstanceId,
        is_dead: &dyn Fn(&Instance) -> bool,
        now: f64,
    ) -> Result<Vec<JobId>>;

    /// Claims runnable jobs (queued, `not_before` passed) for instance `me`, in id order:
    /// each job is routed with [`route`] and claimed only if its group has a credit left in
    /// `credits` (which is decremented; a group missing from `credits` has none). A claimed
    /// job is `running`, owned by `me`, with one more attempt.
    ///
    /// The backlog it returns ([`ClaimResult::more`]) counts the jobs routed to groups
    /// present in `credits`, with or without a credit left: a group absent from it runs
    /// nothing (it has no workers, or gave up), so the jobs that wait for it do not keep
    /// the source from being empty.
    fn claim(
        &mut self,
        me: InstanceId,
        routes: &[Route],
        credits: &mut BTreeMap<String, u32>,
        now: f64,
    ) -> Result<ClaimResult>;

    /// Decides again the group of every job not running and not finished, with `routes`
    /// (after a reload changed the groups or their `match`): the one pass over the queue
    /// that a change of routes costs; claims then never look at tags. Returns how many
    /// jobs changed group.
    ///
    /// A job's group is decided once otherwise: at submit for a job that names its group
    /// (that group, whatever the routes), by the first [`claim`](JobStore::claim) after
    /// its submit for a tagged one (the first route whose `match` selects its tags, or
    /// none: it then waits for a reroute), and again by the first claim after it is
    /// queued again (a retry scheduled, an attempt lost, a job given back or taken back,
    /// a `retry` by hand): the routes may have changed while it ran, and a reroute passes
    /// over running jobs.
    fn reroute(&mut self, routes: &[Route]) -> Result<usize> {
        let (mut changed, mut after) = (0, 0);
        loop {
            let r = self.reroute_from(routes, after, REROUTE_CHUNK)?;
            changed += r.changed;
            match r.next {
                Some(next) => after = next,
                None => return Ok(changed),
            }
        }
    }

    /// [`reroute`](JobStore::reroute) in steps, each its own transaction: the jobs after
    /// id `after`, at most `limit` of them (in id order); says how many changed group and
    /// where the next step begins (`None`: done). A grabber reroutes a long queue a step
    /// a pass, answering its heartbeats between two (and claiming nothing until done).
    fn reroute_from(&mut self, routes: &[Route], after: JobId, limit: u32) -> Result<Rerouted>;

    /// Stores the outcome of attempt `attempt` of job `id` run by `owner`, and applies
    /// `next`. Returns false (and changes nothing) unless the job is running that attempt
    /// under that owner: a stale report.
    ///
    /// `Done` ends the job in the outcome's state; `Retry` keeps a failed or timed-out job
    /// in its state until `at` (a lost one is queued with `not_before = at`); `Dead` makes
    /// it `dead`. A `succeeded` or `canceled` outcome ends the job whatever `next` says,
    /// and a job whose cancel was requested is `canceled` rather than retried.
    fn record_outcome(
        &mut self,
        id: JobId,
        attempt: u32,
        owner: InstanceId,
        outcome: &OutcomeRecord,
        next: AfterAttempt,
        now: f64,
    ) -> Result<bool>;

    /// Stores `outcomes`, in order, as [`record_outcome`](JobStore::record_outcome) does
    /// each, and says what became of each. All or none are stored when the store fails.
    fn settle(&mut self, outcomes: &[Settle]) -> Result<Vec<Settled>>;

    /// [`settle`](JobStore::settle), then [`claim`](JobStore::claim), in one transaction:
    /// the outcomes of the attempts that just ended and the claims for the workers they
    /// freed (one commit a job, and on SQLite one connection writing, where two made each
    /// reload what the other had changed). When it fails, nothing of it is stored.
    fn settle_and_claim(
        &mut self,
        outcomes: &[Settle],
        me: InstanceId,
        routes: &[Route],
        credits: &mut BTreeMap<String, u32>,
        now: f64,
    ) -> Result<(Vec<Settled>, ClaimResult)>;

    /// Gives back a running job (graceful stop): it goes back to `queued` without using up
    /// an attempt (or becomes `canceled`, finished at `now`, if a cancel was requested).
    /// Returns false (and changes nothing) if the job is not running that attempt under
    /// that owner.
    fn release(&mut self, id: JobId, attempt: u32, owner: InstanceId, now: f64) -> Result<bool>;

    /// Gives back every job running under `owner` that is not in `known` and was claimed
    /// at `claimed_before` or earlier (`None`: whenever): claims whose report never
    /// reached the supervisor (its grabber died between the claim and the message, or
    /// the claim committed but its answer was lost with the connection). They go back to
    /// `queued` without using up an attempt (or become `canceled`, finished at `now`, if
    /// a cancel was requested). Returns their ids.
    fn release_strays(
        &mut self,
        owner: InstanceId,
        known: &[JobId],
        claimed_before: Option<f64>,
        now: f64,
    ) -> Result<Vec<JobId>>;

    /// Cancels a job: at once if it is queued or awaiting a retry, else by recording a
    /// request that its supervisor acts on.
    fn cancel(&mut self, id: JobId, now: f64) -> Result<CancelResult>;

    /// The running jobs of `owner` whose cancel was requested, as (id, attempt).
    fn cancel_requests(&mut self, owner: InstanceId) -> Result<Vec<(JobId, u32)>>;

    /// Deletes finished jobs (`succeeded`, `dead`, `canceled`, `failed`/`timed_out` with
    /// no retry scheduled), oldest id first, at most `limit` in this call: those finished
    /// before `finished_before`, and those beyond the newest `keep` finished jobs. Returns
    /// their ids (their logs are the caller's). Live jobs are never touched.
    fn purge_finished(
        &mut self,
        finished_before: Option<f64>,
        keep: Option<u64>,
        limit: u32,
    ) -> Result<Vec<JobId>>;

    /// Deletes finished jobs that finished before `before` (all of them, or those in
    /// `state`), oldest id first, at most `limit` in this call. Returns their ids (their
    /// logs are the caller's).
    fn purge(&mut self, before: f64, state: Option<JobState>, limit: u32) -> Result<Vec<JobId>>;

    /// Queues job `id` again at `now` with a fresh attempt budget, if it finished
    /// otherwise than `succeeded`; false if it did not (it is live, or succeeded, or
    /// unknown). It waits on its dependencies that have not succeeded, and one of them
    /// that ended otherwise cancels it again at once (its `reason` says which).
    fn retry(&mut self, id: JobId, now: f64) -> Result<bool>;

    /// Pauses `groups` (from `now`): claims take nothing for them, on every supervisor of
    /// the store, until they are resumed.
    fn pause(&mut self, groups: &[String], now: f64) -> Result<()>;

    /// Resumes `groups`, or every paused group.
    fn resume(&mut self, groups: Option<&[String]>) -> Result<()>;

    /// The paused groups, by name.
    fn paused(&mut self) -> Result<Vec<String>>;

    /// Where queued job `id` stands (`None`: it is not queued), by the claim's own rules
    /// at `now`.
    fn place(&mut self, id: JobId, now: f64) -> Result<Option<QueuePlace>>;

    /// One job, if it exists.
    fn get(&mut self, id: JobId, now: f64) -> Result<Option<Job>>;

    /// Every job, or every job in `state`, in id order.
    fn list(&mut self, state: Option<JobState>, now: f64) -> Result<Vec<Job>>;

    /// The number of jobs in each state; every state is present, zeros included.
    fn counts(&mut self, now: f64) -> Result<BTreeMap<JobState, u64>>;

    /// The newest jobs that pass `filter`, at most `filter.limit`, in id order: a page
    /// read from the newest end, however many jobs the store holds.
    fn list_newest(&mut self, filter: &JobFilter, now: f64) -> Result<Vec<Job>>;

    /// How many jobs there are of each state and group: the group that ran the job, else
    /// the one it is routed to, else the one it names (`None`: it has none).
    fn counts_by_group(&mut self, now: f64) -> Result<Vec<GroupCount>>;
}

/// Which jobs [`JobStore::list_newest`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this group (the one that ran them, else the one they are routed to,
    /// else the one they name).
    pub group: Option<String>,
    /// Only jobs whose last attempt ended so (`succeeded`, `failed`, ...).
    pub outcome: Option<String>,
    /// At most this many, the newest.
    pub limit: u32,
}

/// A count of [`JobStore::counts_by_group`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCount {
    pub state: JobState,
    pub group: Option<String>,
    pub jobs: u64,
}

/// [`GroupCount`]s from rows of `(state, group, number of jobs)`.
pub(crate) fn group_counts(
    rows: impl IntoIterator<Item = (String, Option<String>, i64)>,
) -> Result<Vec<GroupCount>> {
    rows.into_iter()
        .map(|(state, group, n)| {
            Ok(GroupCount {
                state: state
                    .parse::<JobState>()
                    .map_err(|e| StoreError::Corrupt(format!("a job has an {e}")))?,
                group,
                jobs: n.try_into().unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
        let err = "done".parse::<JobState>().unwrap_err().to_string();
        assert!(err.contains("`done`"), "{err}");
        assert!(err.contains("timed_out"), "{err}");
        assert!(JobState::Dead.is_terminal());
        assert!(!JobState::Failed.is_terminal());
        assert!(!JobState::Queued.is_terminal());
    }
}
