//! The config file's shape as typed structs: the single source of truth for the JSON
//! Schema (derived with schemars, descriptions from these doc comments), the defaults and
//! the ranges the validator enforces.
//!
//! These structs mirror the JSON one to one (keys, defaults, seconds as numbers, paths as
//! written); [`crate::Config`] is the resolved form the rest of the program uses.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The largest number of seconds any `*_s` key accepts (about 31 years): keeps every
/// duration far from overflowing when added to a clock reading. The same bound as a job's
/// `timeout_s` ([`supervisor_core::bounds`]).
pub const MAX_SECONDS: f64 = supervisor_core::bounds::MAX_SECONDS;

/// The largest `max_workers` of a group.
pub const MAX_WORKERS: u32 = supervisor_core::bounds::MAX_WORKERS;

/// The largest `max_attempts` accepted, the same as for a job's own.
pub const MAX_ATTEMPTS: u32 = supervisor_core::bounds::MAX_ATTEMPTS;

/// The smallest `events.rotate_bytes` accepted.
pub const MIN_ROTATE_BYTES: u64 = 4096;

/// The fewest file descriptors `rlimits.nofile` allows: a job's stdin, stdout and stderr.
pub const MIN_NOFILE: u64 = 3;

/// The most file descriptors `rlimits.nofile` allows: Linux's default `fs.nr_open`, past
/// which the kernel refuses the limit.
pub const MAX_NOFILE: u64 = 1_048_576;

/// The most processes `rlimits.nproc` allows: Linux's largest pid (`PID_MAX_LIMIT`).
pub const MAX_NPROC: u64 = 4_194_304;

/// The most bytes any byte limit (`rlimits.core`, `rlimits.as_bytes`,
/// `memory_max_bytes`) takes: 1 PiB, beyond any machine's memory.
pub const MAX_LIMIT_BYTES: u64 = 1 << 50;

/// The fewest bytes of memory or address space a limit allows (1 MiB): no program starts
/// with less.
pub const MIN_MEMORY_BYTES: u64 = 1 << 20;

/// The fewest CPUs `cpu_max` allows: the kernel's smallest quota (1 ms) per 100 ms.
pub const MIN_CPU_MAX: f64 = 0.01;

/// The most CPUs `cpu_max` allows.
pub const MAX_CPU_MAX: f64 = 4096.0;

/// The most seconds `rlimits.cpu_s` allows: the bound of every `*_s` key.
pub const MAX_CPU_S: u64 = supervisor_core::bounds::MAX_SECONDS as u64;

/// The lowest and highest niceness (`nice`).
pub const NICE_RANGE: (i32, i32) = (-20, 19);

/// The config file of `supervisor`, a multi-process job supervisor.
///
/// Only `groups` is required; every other key has a default. Unknown keys are errors.
/// Relative paths are resolved against the folder that holds the config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "supervisor config")]
pub struct ConfigFile {
    /// Folder of the supervisor's state: pidfile, job logs (`logs/<job id>.log`) and, unless
    /// set otherwise, the SQLite job store (`<state_dir>/jobs.db`) and the events file
    /// (`<state_dir>/events.jsonl`). Relative to the config file's folder.
    #[serde(default = "default_state_dir")]
    #[schemars(length(min = 1))]
    pub state_dir: String,

    /// The job store: exactly one of `{"sqlite": {...}}` (embedded, the default) or
    /// `{"postgres": {"url": ...}}` (several supervisors on several hosts share one queue).
    #[serde(default)]
    pub store: Store,

    /// The grabber child, which claims queued jobs and routes them to groups.
    #[serde(default)]
    pub grabber: Grabber,

    /// The worker pools, at least one, names unique. A job is routed to the group it
    /// names, else to the first group (in this order) whose `match` selects its tags.
    #[schemars(length(min = 1))]
    pub groups: Vec<Group>,

    /// The events file: one JSON object a line, written by the supervisor.
    #[serde(default)]
    pub events: Events,

    /// Liveness pings to every child.
    #[serde(default)]
    pub heartbeat: Heartbeat,

    /// Seconds a graceful stop (SIGTERM, SIGINT) lets running jobs finish before their
    /// process groups are stopped; 0 stops them at once.
    #[serde(default = "default_shutdown_grace_s")]
    #[schemars(range(min = 0, max = MAX_SECONDS))]
    pub shutdown_grace_s: f64,

    /// How long finished jobs (`succeeded`, `dead`, `canceled`, and `failed`/`timed_out`
    /// with no retry left) and their logs are kept: deleted, a small batch at a time off
    /// the dispatch path, once older than `finished_max_age_s` or past the newest
    /// `finished_max_count`. Without it, nothing is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,

    /// Liveness of supervisors sharing one store (PostgreSQL): each says it is alive every
    /// `touch_every_s`; one not heard of for `dead_after_s` is taken for dead by the others,
    /// which run its jobs again. A supervisor that could not say so for `dead_after_s -
    /// touch_every_s - 2` seconds fences itself first: it kills its jobs and exits 1, so
    /// that no job runs on two hosts at once.
    #[serde(default)]
    pub instances: Instances,

    /// The HTTP server inside `supervisor run`: a JSON API, a live dashboard at `/` and
    /// Prometheus metrics at `/metrics`. Off without this key. Read at start: a reload
    /// that changes it takes effect at the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
}

/// The HTTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// The address and port to listen on, like `127.0.0.1:7070` or `[::1]:7070`; port 0
    /// takes a free port (written to `<state_dir>/http.addr`). Any address but a
    /// loopback one needs `token_file`.
    #[schemars(length(min = 1))]
    pub listen: String,
    /// A file holding the bearer token (its content, without surrounding whitespace)
    /// that every request changing something must carry (`Authorization: Bearer
    /// <token>`), and every request when `listen` is not a loopback address. Without
    /// it, nothing can be changed over HTTP. Relative to the config file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub token_file: Option<String>,
}

/// Liveness timings on a shared store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Instances {
    /// Seconds between two "alive" marks of a supervisor in the store.
    #[serde(default = "default_touch_every_s")]
    #[schemars(range(max = MAX_SECONDS), extend("exclusiveMinimum" = 0))]
    pub touch_every_s: f64,
    /// Seconds without a mark after which the others take a supervisor for dead; at least
    /// `2 × touch_every_s + 2`.
    #[serde(default = "default_dead_after_s")]
    #[schemars(range(max = MAX_SECONDS), extend("exclusiveMinimum" = 0))]
    pub dead_after_s: f64,
}

impl Default for Instances {
    fn default() -> Self {
        Instances {
            touch_every_s: default_touch_every_s(),
            dead_after_s: default_dead_after_s(),
        }
    }
}

fn default_touch_every_s() -> f64 {
    5.0
}

fn default_dead_after_s() -> f64 {
    30.0
}

/// The clock skew between hosts that the liveness timings leave room for, in seconds.
pub const MAX_CLOCK_SKEW_S: f64 = 2.0;

/// Limits on the finished jobs kept in the store; at least one must be set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Seconds after it finished that a job (and its log) is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_SECONDS), extend("exclusiveMinimum" = 0))]
    pub finished_max_age_s: Option<f64>,
    /// How many finished jobs are kept at most: the oldest beyond it are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub finished_max_count: Option<u64>,
}

pub(crate) fn default_state_dir() -> String {
    "state".to_string()
}

fn default_shutdown_grace_s() -> f64 {
    30.0
}

/// The job store: exactly one key, naming its kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Store {
    /// The embedded SQLite store (the default).
    Sqlite(Sqlite),
    /// A PostgreSQL database, which lets several supervisors share one queue.
    Postgres(Postgres),
}

impl Default for Store {
    fn default() -> Self {
        Store::Sqlite(Sqlite::default())
    }
}

/// Settings of the embedded SQLite store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sqlite {
    /// The database file, relative to the config file's folder; default
    /// `<state_dir>/jobs.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1))]
    pub path: Option<String>,
}

/// Settings of the PostgreSQL store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// The connection string, e.g. `postgres://user:password@host/db`.
    #[schemars(length(min = 1))]
    pub url: String,
}

/// The grabber child.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Grabber {
    /// Seconds between two looks at the store when it had nothing to claim (a submit
    /// rings a doorbell, so new jobs are usually seen at once).
    #[schemars(range(max = MAX_SECONDS), extend("exclusiveMinimum" = 0))]
    pub poll_interval_s: f64,
    /// Delay between retries while the store fails.
    pub error_backoff: ErrorBackoff,
}

impl Default for Grabber {
    fn default() -> Self {
        Grabber {
            poll_interval_s: 1.0,
            error_backoff: ErrorBackoff::default(),
        }
    }
}

/// Declares one backoff struct `{initial_s, max_s, jitter}` with its own defaults (the
/// three backoffs of the file share their shape but not their defaults).
macro_rules! backoff_struct {
    ($(#[$meta:meta])* $name:ident, $initial:expr, $max:expr, $jitter:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Seconds: the first delay, and the floor of every later one.
            #[schemars(range(min = 0, max = MAX_SECONDS))]
            pub initial_s: f64,
            /// Seconds: the ceiling of every delay; at least `initial_s`.
            #[schemars(range(min = 0, max = MAX_SECONDS))]
            pub max_s: f64,
            /// oslo.service's jitter: each delay is the previous one times
            /// `2 * gauss(jitter, 0.033)`, kept within `initial_s..max_s`; 0 means no
            /// jitter (each delay doubles).
            #[schemars(range(min = 0, max = 1))]
            pub jitter: f64,
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    initial_s: $initial,
                    max_s: $max,
                    jitter: $jitter,
                }
            }
        }

        impl $name {
            /// The core's form of this backoff.
            pub fn to_backoff(&self) -> supervisor_core::backoff::Backoff {
                supervisor_core::backoff::Backoff::from_secs(self.initial_s, self.max_s, self.jitter)
            }
        }
    };
}

backoff_struct!(
    /// The grabber's delay between retries while the store fails.
    ErrorBackoff,
    0.5,
    30.0,
    0.75
);

backoff_struct!(
    /// Delay before a failed, timed out or lost attempt is queued again.
    RetryBackoff,
    1.0,
    300.0,
    0.75
);

backoff_struct!(
    /// Delay before a crashed worker is started again.
    RestartBackoff,
    0.1,
    30.0,
    0.75
);

/// One group: a pool of workers and the rules for its jobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The group's unique name; jobs may name it.
    #[schemars(length(min = 1))]
    pub name: String,

    /// The pool's size: how many jobs of this group run at once. 0 keeps the group (its
    /// jobs wait) with no workers.
    #[serde(default = "default_max_workers")]
    #[schemars(range(max = MAX_WORKERS))]
    pub max_workers: u32,

    /// The tags a job must carry to be routed here: every key must hold one of its values
    /// (a single string is shorthand for a one-element list). Without `match`, the group
    /// takes only jobs that name it; `{}` takes every job.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "BTreeMap<String, MatchValues>")]
    pub matches: Option<BTreeMap<String, MatchValues>>,

    /// Seconds one attempt may run before it is stopped and counts as `timed_out`; null
    /// means no limit. A job's own `timeout_s` wins.
    #[serde(default = "default_job_timeout_s")]
    #[schemars(range(max = MAX_SECONDS), extend("exclusiveMinimum" = 0))]
    pub job_timeout_s: Option<f64>,

    /// Attempts before a job is `dead`. A job's own `max_attempts` wins.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = MAX_ATTEMPTS))]
    pub max_attempts: u32,

    /// Delay before a failed, timed out or lost attempt is queued again.
    #[serde(default)]
    pub retry_backoff: RetryBackoff,

    /// How crashed workers are restarted, and when to give up.
    #[serde(default)]
    pub restart: Restart,

    /// Run this group's jobs as this user (a name in the user database): its uid, its
    /// primary group (or `group`), the supplementary groups `initgroups` gives it, and
    /// `HOME`, `USER` and `LOGNAME` from its entry. Needs a supervisor running as root.
    /// The name is looked up when the config is loaded (at start and on each reload).
    /// Without it, jobs run as the supervisor's user (`supervisor check` warns when that
    /// is root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1))]
    pub user: Option<String>,

    /// The primary group of this group's jobs (a name in the group database), instead of
    /// `user`'s own; needs `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1))]
    pub group: Option<String>,

    /// Resource limits of each job, set before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Rlimits")]
    pub rlimits: Option<Rlimits>,

    /// The niceness each job starts with, from -20 (most favoured) to 19 (least); without
    /// it, the supervisor's. Below the supervisor's own needs root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i32", range(min = NICE_RANGE.0, max = NICE_RANGE.1))]
    pub nice: Option<i32>,

    /// Bytes of memory each job may use, all its processes together (cgroup v2
    /// `memory.max`); past it the kernel's OOM killer kills the job, and its log says so.
    /// Enforced only where the supervisor has a delegated cgroup v2 (`supervisor status`
    /// says whether it has; `supervisor check` warns where it has not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64", range(min = MIN_MEMORY_BYTES, max = MAX_LIMIT_BYTES))]
    pub memory_max_bytes: Option<u64>,

    /// CPUs each job may use, all its processes together (cgroup v2 `cpu.max`, over
    /// periods of 100 ms): 0.5 is half of one CPU, 2 is two. Enforced only where
    /// `memory_max_bytes` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64", range(min = MIN_CPU_MAX, max = MAX_CPU_MAX))]
    pub cpu_max: Option<f64>,
}

/// Resource limits of each job of a group (`setrlimit`), soft and hard limit alike, so
/// that the job cannot raise them. A limit left out keeps the supervisor's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    /// Open file descriptors of each process (`RLIMIT_NOFILE`): a file descriptor numbered
    /// this or higher cannot be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64", range(min = MIN_NOFILE, max = MAX_NOFILE))]
    pub nofile: Option<u64>,
    /// Processes the job's user may have, counted over the whole system (`RLIMIT_NPROC`):
    /// a fork past it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64", range(min = 1, max = MAX_NPROC))]
    pub nproc: Option<u64>,
    /// Bytes of a core dump (`RLIMIT_CORE`); 0 writes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64", range(min = 0, max = MAX_LIMIT_BYTES))]
    pub core: Option<u64>,
    /// Bytes of address space of each process (`RLIMIT_AS`): an allocation past it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64", range(min = MIN_MEMORY_BYTES, max = MAX_LIMIT_BYTES))]
    pub as_bytes: Option<u64>,
    /// Seconds of CPU time of each process (`RLIMIT_CPU`): past it, the kernel kills it
    /// (SIGKILL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64", range(min = 1, max = MAX_CPU_S))]
    pub cpu_s: Option<u64>,
}

fn default_max_workers() -> u32 {
    4
}

fn default_job_timeout_s() -> Option<f64> {
    Some(3600.0)
}

fn default_max_attempts() -> u32 {
    3
}

/// The accepted values of one `match` key: a list of strings, or one string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MatchValues {
    /// One accepted value.
    One(String),
    /// Several accepted values (at least one).
    Many(#[schemars(length(min = 1))] Vec<String>),
}

impl MatchValues {
    /// The accepted values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            MatchValues::One(value) => vec![value.clone()],
            MatchValues::Many(values) => values.clone(),
        }
    }
}

/// A group's restart policy: restart crashed workers with backoff, give up after more
/// than `max_restarts` restarts within `period_s`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Restart {
    /// Delay before a crashed worker is started again.
    pub backoff: RestartBackoff,
    /// More restarts than this within `period_s` means giving up.
    pub max_restarts: u32,
    /// Seconds: the sliding window of the restart limit.
    #[schemars(range(max = MAX_SECONDS), extend("exclusiveMinimum" = 0))]
    pub period_s: f64,
    /// What giving up means.
    pub on_exhausted: OnExhausted,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            backoff: RestartBackoff::default(),
            max_restarts: 5,
            period_s: 60.0,
            on_exhausted: OnExhausted::Exit,
        }
    }
}

/// What happens when a group's restart limit is exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// Stop the whole supervisor, exit code 3.
    Exit,
    /// Stop that group only; the others go on.
    Disable,
}

/// The events file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    /// The file, relative to the config file's folder; default `<state_dir>/events.jsonl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1))]
    pub path: Option<String>,
    /// Size in bytes past which the file is rotated (`events.jsonl.1`, ...).
    #[schemars(range(min = MIN_ROTATE_BYTES))]
    pub rotate_bytes: u64,
    /// How many rotated files to keep; 0 keeps none.
    pub keep: u32,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            path: None,
            rotate_bytes: 104_857_600,
            keep: 5,
        }
    }
}

/// Liveness pings: every child answers a ping each `interval_s`; one silent for
/// `timeout_s` is killed and handled as a crash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Heartbeat {
    /// Seconds between two pings of a child.
    #[schemars(range(max = MAX_SECONDS), extend("exclusiveMinimum" = 0))]
    pub interval_s: f64,
    /// Seconds of silence after which a child is killed; more than `interval_s`.
    #[schemars(range(max = MAX_SECONDS), extend("exclusiveMinimum" = 0))]
    pub timeout_s: f64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval_s: 5.0,
            timeout_s: 20.0,
        }
    }
}

/// The JSON Schema of the config file, generated from [`ConfigFile`], with the doc
/// comments' line wrapping undone (paragraphs stay apart) so editors show them well.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(ConfigFile).to_value();
    unwrap_descriptions(&mut schema);
    schema
}

/// Joins the wrapped lines of every `description` string below `value`.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            for (key, item) in object.iter_mut() {
                match item {
                    serde_json::Value::String(text) if key == "description" => {
                        let paragraphs: Vec<String> =
                            text.split("\n\n").map(|p| p.replace('\n', " ")).collect();
                        *text = paragraphs.join("\n\n");
                    }
                    _ => unwrap_descriptions(item),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}
