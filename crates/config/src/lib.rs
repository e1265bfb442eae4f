//! The `supervisor` config file: reading, validation with key paths, defaults, path
//! resolution, the JSON Schema, and conversion to the core's [`Spec`].
//!
//! ```json
//! { "groups": [ { "name": "x86_64", "max_workers": 4, "match": { "arch": ["x86_64", "i386"] } } ] }
//! ```
//!
//! Only `groups` is required; [`file`] holds the file's typed form, which is the single
//! source of truth for the defaults, the accepted ranges and the [`json_schema`].
//!
//! Validation reports every problem at once, one a line, each naming the file and the key
//! path (`supervisor.json: groups[1].restart.backoff.max_s: must be >= 0 and <=
//! 1000000000, found -1`), or for JSON syntax the line and column
//! (`supervisor.json:3:14: expected value`).
//!
//! A group's `user` and `group` are looked up in the system's user and group databases
//! when the config is loaded ([`GroupConfig::process`] holds the ids), and are refused
//! unless the process loading it runs as root.
//!
//! [`route`] is the rule that sends a job to a group, over the [`Route`]s of
//! [`Config::routes`]; the store's claims apply it.
//!
//! Paths in the file are relative to the folder holding it and are resolved to absolute
//! paths. The job store and the events file default to `<state_dir>/jobs.db` and
//! `<state_dir>/events.jsonl`, so moving `state_dir` moves them too. They must not
//! collide with one another, with the files the supervisor keeps in `state_dir` or with
//! its job logs, and what exists already must be of the right kind (a directory for
//! `state_dir`, regular files for the others): see `paths.rs`.

mod changes;
pub mod file;
mod identity;
mod json;
mod paths;
pub use paths::{SQLITE_FILES, STATE_FILES};
pub mod postgres_url;
pub use json::{parse as parse_strict_json, utf8 as utf8_text, SyntaxError as JsonSyntaxError};
mod validate;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use supervisor_core::backoff::Backoff;
use supervisor_core::spec::{self, GroupSpec, Heartbeat, OnExhausted, RestartPolicy, Spec};

/// The environment variable naming the config file when `-c` is not given.
pub const CONFIG_ENV: &str = "SUPERVISOR_CONFIG";

/// The config file used when neither `-c` nor [`CONFIG_ENV`] names one.
pub const DEFAULT_CONFIG_FILE: &str = "./supervisor.json";

/// A validated config with defaults applied and paths absolute.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The config file itself, absolute.
    pub path: PathBuf,
    /// Folder of the supervisor's state (pidfile, job logs, default store and events).
    pub state_dir: PathBuf,
    /// The job store.
    pub store: StoreConfig,
    /// The grabber child.
    pub grabber: GrabberConfig,
    /// The groups, in config (routing) order; at least one, names unique.
    pub groups: Vec<GroupConfig>,
    /// The events file.
    pub events: EventsConfig,
    /// Liveness pings to every child.
    pub heartbeat: Heartbeat,
    /// How long a graceful stop lets running jobs finish.
    pub shutdown_grace: Duration,
    /// Which finished jobs are deleted, if any.
    pub retention: Option<RetentionConfig>,
    /// Liveness of supervisors on a shared store.
    pub instances: InstancesConfig,
    /// The HTTP server, if one is wanted.
    pub http: Option<HttpConfig>,
}

/// The HTTP server inside `supervisor run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where it listens (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// The file holding the bearer token, absolute.
    pub token_file: Option<PathBuf>,
}

impl HttpConfig {
    /// Whether reads are open to anyone who can connect (a loopback address).
    pub fn is_loopback(&self) -> bool {
        self.listen.ip().is_loopback()
    }

    /// The bearer token, read from `token_file` now (so that it can be changed without a
    /// restart): its content without surrounding whitespace. `None` without a token file.
    pub fn read_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        // A token is short; a huge file is a mistake, not a token.
        const MAX_TOKEN_BYTES: u64 = 4096;
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("http.token_file: {}: {e}", path.display()))?;
        // Not a FIFO or a device, which a read could wait on for ever.
        if !meta.is_file() {
            return Err(format!(
                "http.token_file: {} is not a regular file",
                path.display()
            ));
        }
        if meta.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "http.token_file: {} is {} bytes; a token is at most {MAX_TOKEN_BYTES}",
                path.display(),
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("http.token_file: {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("http.token_file: {} is empty", path.display()));
        }
        // What an `Authorization` header can carry.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "http.token_file: {}: a token is printable ASCII without spaces",
                path.display()
            ));
        }
        Ok(Some(token.to_string()))
    }
}

/// Liveness of supervisors on a shared store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstancesConfig {
    /// How often a supervisor marks its instance alive.
    pub touch_every: Duration,
    /// Unmarked this long, an instance is taken for dead by the others.
    pub dead_after: Duration,
}

impl InstancesConfig {
    /// How long a supervisor may go without marking its instance before it fences itself
    /// (kills its jobs and exits): `dead_after - touch_every - MAX_CLOCK_SKEW_S`, so that
    /// it is gone before any other supervisor (whose clock may be off by that much) can
    /// take it for dead.
    pub fn fence_after(&self) -> Duration {
        self.dead_after
            .saturating_sub(self.touch_every)
            .saturating_sub(Duration::from_secs_f64(file::MAX_CLOCK_SKEW_S))
    }
}

/// Which finished jobs (and their logs) are deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionConfig {
    /// Delete those finished longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many finished jobs, the newest.
    pub max_count: Option<u64>,
}

/// The job store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded SQLite store.
    Sqlite {
        /// The database file, absolute.
        path: PathBuf,
    },
    /// A PostgreSQL database shared by several supervisors.
    Postgres {
        /// The connection string.
        url: String,
    },
}

impl StoreConfig {
    /// A short description for humans, like `sqlite /srv/state/jobs.db` or
    /// `postgres postgres://app:***@db/jobs` (passwords hidden).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite { path } => format!("sqlite {}", path.display()),
            StoreConfig::Postgres { url } => format!("postgres {}", redact_password(url)),
        }
    }
}

/// The grabber child.
#[derive(Clone, Debug, PartialEq)]
pub struct GrabberConfig {
    /// Between two looks at the store when it had nothing to claim.
    pub poll_interval: Duration,
    /// Between retries while the store fails.
    pub error_backoff: Backoff,
}

/// One group of workers.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupConfig {
    /// The unique, non-empty name.
    pub name: String,
    /// The pool's size; 0 keeps the group with no workers.
    pub max_workers: u32,
    /// The config's `match`: every key must hold one of its values. `None`: the group
    /// takes only jobs that name it.
    pub matches: Option<BTreeMap<String, Vec<String>>>,
    /// Default deadline of one attempt; `None` is no limit.
    pub job_timeout: Option<Duration>,
    /// Default attempts before a job is `dead` (at least 1).
    pub max_attempts: u32,
    /// Delay before a failed attempt is queued again.
    pub retry_backoff: Backoff,
    /// How crashed workers are restarted, and when to give up.
    pub restart: RestartPolicy,
    /// How its jobs' processes are set up: user, limits, niceness, cgroup limits.
    pub process: JobProcess,
}

/// How the process of each job of a group is set up before it runs its command: the user
/// it runs as, its resource limits and niceness, and the limits of its cgroup. The
/// default changes nothing. It travels to the worker with each job.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobProcess {
    /// The user (`user`, `group`), as resolved when the config was loaded.
    pub run_as: Option<RunAs>,
    /// `rlimits`.
    pub rlimits: RlimitsConfig,
    /// `nice`.
    pub nice: Option<i32>,
    /// `memory_max_bytes`.
    pub memory_max_bytes: Option<u64>,
    /// `cpu_max`.
    pub cpu_max: Option<f64>,
}

/// A group's `rlimits`: each `None` keeps the supervisor's limit. (Its own type, not
/// [`file::Rlimits`]: that one skips absent keys when serialized, which a format that
/// does not describe itself, like the IPC's, cannot read back.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RlimitsConfig {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
    pub core: Option<u64>,
    pub as_bytes: Option<u64>,
    pub cpu_s: Option<u64>,
}

impl From<file::Rlimits> for RlimitsConfig {
    fn from(r: file::Rlimits) -> RlimitsConfig {
        RlimitsConfig {
            nofile: r.nofile,
            nproc: r.nproc,
            core: r.core,
            as_bytes: r.as_bytes,
            cpu_s: r.cpu_s,
        }
    }
}

/// A user jobs run as: its entry in the user database, with the primary group the config
/// chose and the supplementary groups `initgroups` would set.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunAs {
    /// The user's name (`USER`, `LOGNAME`).
    pub user: String,
    pub uid: u32,
    /// The primary group: the config's `group`, else the user's own.
    pub gid: u32,
    /// The supplementary groups (the primary one among them).
    pub groups: Vec<u32>,
    /// The home directory (`HOME`).
    pub home: String,
}

impl RunAs {
    /// The spawner's form of it.
    pub fn credentials(&self) -> supervisor_os::Credentials {
        supervisor_os::Credentials {
            user: self.user.clone(),
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }
}

impl JobProcess {
    /// The resource limits, as the spawner sets them.
    pub fn limits(&self) -> Vec<supervisor_os::Limit> {
        use supervisor_os::Resource;
        let r = &self.rlimits;
        [
            (Resource::OpenFiles, r.nofile),
            (Resource::Processes, r.nproc),
            (Resource::CoreBytes, r.core),
            (Resource::AddressSpace, r.as_bytes),
            (Resource::CpuSeconds, r.cpu_s),
        ]
        .into_iter()
        .filter_map(|(resource, value)| {
            Some(supervisor_os::Limit {
                resource,
                value: value?,
            })
        })
        .collect()
    }

    /// The limits of a job's own cgroup (none set: it needs none).
    pub fn cgroup_limits(&self) -> supervisor_os::cgroup::CgroupLimits {
        supervisor_os::cgroup::CgroupLimits {
            memory_max_bytes: self.memory_max_bytes,
            cpu_max: self.cpu_max,
        }
    }
}

impl GroupConfig {
    /// This group as far as routing is concerned.
    pub fn to_route(&self) -> Route {
        Route {
            group: self.name.clone(),
            matches: self.matches.clone(),
        }
    }

    /// The core's view of this group.
    pub fn spec(&self) -> GroupSpec {
        GroupSpec {
            name: self.name.clone(),
            max_workers: self.max_workers,
            job_timeout: self.job_timeout,
            max_attempts: self.max_attempts,
            retry_backoff: self.retry_backoff,
            restart: self.restart.clone(),
        }
    }
}

/// The events file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// The file, absolute.
    pub path: PathBuf,
    /// Size in bytes past which it is rotated (at least 4096).
    pub rotate_bytes: u64,
    /// How many rotated files to keep.
    pub keep: u32,
}

/// Where a supervisor keeps what the operator's verbs look at, as a config file names
/// them: see [`locate`] and [`Config::locations`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locations {
    /// The config file itself, absolute.
    pub path: PathBuf,
    /// The state folder (pidfile, job logs), absolute.
    pub state_dir: PathBuf,
    /// The job store.
    pub store: StoreConfig,
    /// The events file, absolute.
    pub events: PathBuf,
    /// The key paths [`locate`] could not read (like `state_dir` or
    /// `store.sqlite.path`), whose defaults stand in; `state_dir`, `store` and `events`
    /// when the file could not be read as a JSON object. Always empty from
    /// [`Config::locations`].
    pub guessed: Vec<String>,
}

/// Why a config was refused: every problem found, each naming the file and the key path
/// (or, for JSON syntax, the line and column). Displays one problem a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .errors.join("\n"))]
pub struct ConfigError {
    /// One message per problem, like `supervisor.json: groups[0].name: required`.
    pub errors: Vec<String>,
}

impl ConfigError {
    fn one(message: String) -> ConfigError {
        ConfigError {
            errors: vec![message],
        }
    }
}

/// The config file to use: the `-c` value, else `$SUPERVISOR_CONFIG` (when set and not
/// empty), else `./supervisor.json`.
pub fn default_config_path(cli: Option<&Path>) -> PathBuf {
    config_path_from(cli, std::env::var_os(CONFIG_ENV))
}

/// [`default_config_path`] with the environment variable's value passed in.
fn config_path_from(cli: Option<&Path>, env: Option<OsString>) -> PathBuf {
    match (cli, env) {
        (Some(cli), _) => cli.to_path_buf(),
        (None, Some(env)) if !env.is_empty() => PathBuf::from(env),
        _ => PathBuf::from(DEFAULT_CONFIG_FILE),
    }
}

/// The largest config file read (a config of a thousand groups is well under it).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads and validates the config file at `path`.
///
/// An unreadable file is one error naming the file and the OS error; a file that is not
/// UTF-8 is one error at the line and column of its first bad byte.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = supervisor_os::read_regular_file(path, MAX_CONFIG_BYTES).map_err(|e| {
        ConfigError::one(format!(
            "{}: cannot read the config file: {e}",
            path.display()
        ))
    })?;
    let text = json::utf8(&bytes).map_err(|e| {
        ConfigError::one(format!(
            "{}:{}:{}: {}",
            path.display(),
            e.line,
            e.column,
            e.message
        ))
    })?;
    parse(without_bom(text), path)
}

/// `text` without the UTF-8 byte order mark some editors put first (JSON allows a
/// parser to ignore it).
fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Where the supervisor of the config file at `path` keeps its state, read leniently:
/// only `state_dir`, `store` and `events.path` are looked at, resolved exactly as
/// [`load`] resolves them, and every other problem of the file is ignored. This is
/// for the verbs that must reach a running supervisor even when the file on disk has
/// errors (`reload`, `stop`, `status`, `events`).
///
/// A key that is given but cannot be read (a number for `state_dir`, two kinds of
/// store) takes its default and is listed in [`Locations::guessed`]; a file that cannot
/// be read or is not a JSON object (a syntax error) gives the defaults relative to its
/// folder, with all three keys listed. Fails only when `path` cannot be made absolute.
pub fn locate(path: &Path) -> Result<Locations, ConfigError> {
    let absolute = std::path::absolute(path).map_err(|e| {
        ConfigError::one(format!(
            "{}: cannot resolve the config file's path: {e}",
            path.display()
        ))
    })?;
    let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
    let text = supervisor_os::read_regular_file(path, MAX_CONFIG_BYTES)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(|t| without_bom(&t).to_string());
    let mut guessed = Vec::new();
    // A file with a syntax error (half edited) still says where the state is, if it
    // says so before its first error; a key it does not say (it may come after the
    // error) is a guess.
    let value = text.as_deref().map(|text| {
        json::parse(text).unwrap_or_else(|_| {
            let found = json::salvage_object(text);
            for key in ["state_dir", "store", "events"] {
                if !found.contains_key(key) {
                    guessed.push(key.to_string());
                }
            }
            serde_json::Value::Object(found)
        })
    });
    let Some(root) = value.as_ref().and_then(serde_json::Value::as_object) else {
        guessed.clear();
        let state_dir = resolve(&base, &file::default_state_dir());
        return Ok(Locations {
            path: absolute,
            store: StoreConfig::Sqlite {
                path: state_dir.join("jobs.db"),
            },
            events: state_dir.join("events.jsonl"),
            state_dir,
            guessed: ["state_dir", "store", "events"].map(String::from).to_vec(),
        });
    };
    Ok(locations_in(root, absolute, guessed))
}

/// [`locate`]'s reading of a config object `root` of the file at the absolute path
/// `absolute`, adding to `guessed` the keys it could not read.
fn locations_in(
    root: &serde_json::Map<String, serde_json::Value>,
    absolute: PathBuf,
    mut guessed: Vec<String>,
) -> Locations {
    let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
    let state_dir = resolve(
        &base,
        &text_key(root, "state_dir", "state_dir", &mut guessed)
            .unwrap_or_else(file::default_state_dir),
    );
    let store = locate_store(root.get("store"), &base, &state_dir, &mut guessed);
    let events = match root.get("events").map(serde_json::Value::as_object) {
        None => None,
        Some(Some(events)) => text_key(events, "path", "events.path", &mut guessed),
        Some(None) => {
            guessed.push("events".to_string());
            None
        }
    };
    let events = match events {
        Some(p) => resolve(&base, &p),
        None => state_dir.join("events.jsonl"),
    };
    Locations {
        path: absolute,
        state_dir,
        store,
        events,
        guessed,
    }
}

/// [`locate`]'s reading of the `store` key.
fn locate_store(
    store: Option<&serde_json::Value>,
    base: &Path,
    state_dir: &Path,
    guessed: &mut Vec<String>,
) -> StoreConfig {
    let default = StoreConfig::Sqlite {
        path: state_dir.join("jobs.db"),
    };
    let Some(store) = store else {
        return default;
    };
    let kind = store
        .as_object()
        .filter(|kinds| kinds.len() == 1)
        .and_then(|kinds| kinds.iter().next());
    let settings = kind.and_then(|(_, settings)| settings.as_object());
    match (kind.map(|(name, _)| name.as_str()), settings) {
        (Some("sqlite"), Some(sqlite)) => {
            match text_key(sqlite, "path", "store.sqlite.path", guessed) {
                Some(p) => StoreConfig::Sqlite {
                    path: resolve(base, &p),
                },
                None => default,
            }
        }
        (Some("postgres"), Some(postgres)) => {
            match text_key(postgres, "url", "store.postgres.url", guessed) {
                Some(url) => StoreConfig::Postgres { url },
                None => {
                    if !postgres.contains_key("url") {
                        guessed.push("store.postgres.url".to_string());
                    }
                    default
                }
            }
        }
        _ => {
            guessed.push("store".to_string());
            default
        }
    }
}

/// The non-empty string under `key` of `object` (what every path key must be); `None`
/// when absent, or, with `path` added to `guessed`, when it is something else.
fn text_key(
    object: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    path: &str,
    guessed: &mut Vec<String>,
) -> Option<String> {
    match object.get(key)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => {
            guessed.push(path.to_string());
            None
        }
    }
}

/// Validates config `text` as if read from `path` (which names the file in errors, and
/// whose folder relative paths are resolved against), for this process.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_as(text, path, supervisor_os::users::effective_uid())
}

/// [`parse`] for a process whose effective uid is `euid`: only root (0) may run jobs as
/// another user.
pub fn parse_as(text: &str, path: &Path, euid: u32) -> Result<Config, ConfigError> {
    let name = path.display();
    let value = json::parse(text)
        .map_err(|e| ConfigError::one(format!("{name}:{}:{}: {}", e.line, e.column, e.message)))?;
    let absolute = std::path::absolute(path);
    let mut problems = validate::check(&value, schema());
    if let (Ok(absolute), Some(root)) = (&absolute, value.as_object()) {
        problems.extend(paths::check(root, absolute));
    }
    let (mut users, user_problems) = identity::resolve(&value, euid);
    problems.extend(user_problems);
    if !problems.is_empty() {
        return Err(ConfigError {
            errors: problems
                .into_iter()
                .map(|p| match p.path.is_empty() {
                    true => format!("{name}: {}", p.message),
                    false => format!("{name}: {}: {}", p.path, p.message),
                })
                .collect(),
        });
    }
    // The walk accepts exactly what these types accept; a refusal here is a bug in the
    // schema, reported rather than hidden.
    let typed: file::ConfigFile =
        serde_json::from_value(value).map_err(|e| ConfigError::one(format!("{name}: {e}")))?;
    let absolute = absolute.map_err(|e| {
        ConfigError::one(format!(
            "{name}: cannot resolve the config file's path: {e}"
        ))
    })?;
    Ok(Config::from_file(typed, absolute, &mut users))
}

/// The JSON Schema of the config file (draft 2020-12), generated from the typed structs
/// of [`file`] with their doc comments as descriptions.
pub fn json_schema() -> serde_json::Value {
    file::json_schema()
}

/// The schema, generated once.
fn schema() -> &'static serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    SCHEMA.get_or_init(file::json_schema)
}

/// Seconds from a validated file (finite, 0 to [`file::MAX_SECONDS`]) as a duration.
fn seconds(s: f64) -> Duration {
    supervisor_core::bounds::duration(s)
}

/// `base.join(path)`, without `.` components.
fn resolve(base: &Path, path: &str) -> PathBuf {
    base.join(path).components().collect()
}

impl Config {
    /// Builds the resolved config from a validated file at the absolute `path`, with the
    /// users its groups name (by group index).
    fn from_file(f: file::ConfigFile, path: PathBuf, users: &mut BTreeMap<usize, RunAs>) -> Config {
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let state_dir = resolve(&base, &f.state_dir);
        let store = match f.store {
            file::Store::Sqlite(sqlite) => StoreConfig::Sqlite {
                path: match sqlite.path {
                    Some(p) => resolve(&base, &p),
                    None => state_dir.join("jobs.db"),
                },
            },
            file::Store::Postgres(postgres) => StoreConfig::Postgres { url: postgres.url },
        };
        let groups = f
            .groups
            .into_iter()
            .enumerate()
            .map(|(i, g)| GroupConfig {
                name: g.name,
                max_workers: g.max_workers,
                matches: g.matches.map(|m| {
                    m.into_iter()
                        .map(|(key, values)| (key, values.to_vec()))
                        .collect()
                }),
                job_timeout: g.job_timeout_s.map(seconds),
                max_attempts: g.max_attempts,
                retry_backoff: g.retry_backoff.to_backoff(),
                restart: RestartPolicy {
                    backoff: g.restart.backoff.to_backoff(),
                    max_restarts: g.restart.max_restarts,
                    period: seconds(g.restart.period_s),
                    on_exhausted: match g.restart.on_exhausted {
                        file::OnExhausted::Exit => OnExhausted::Exit,
                        file::OnExhausted::Disable => OnExhausted::Disable,
                    },
                },
                process: JobProcess {
                    run_as: users.remove(&i),
                    rlimits: g.rlimits.map(RlimitsConfig::from).unwrap_or_default(),
                    nice: g.nice,
                    memory_max_bytes: g.memory_max_bytes,
                    cpu_max: g.cpu_max,
                },
            })
            .collect();
        let events = EventsConfig {
            path: match f.events.path {
                Some(p) => resolve(&base, &p),
                None => state_dir.join("events.jsonl"),
            },
            rotate_bytes: f.events.rotate_bytes,
            keep: f.events.keep,
        };
        Config {
            path,
            state_dir,
            store,
            grabber: GrabberConfig {
                poll_interval: seconds(f.grabber.poll_interval_s),
                error_backoff: f.grabber.error_backoff.to_backoff(),
            },
            groups,
            events,
            heartbeat: Heartbeat {
                interval: seconds(f.heartbeat.interval_s),
                timeout: seconds(f.heartbeat.timeout_s),
            },
            shutdown_grace: seconds(f.shutdown_grace_s),
            instances: InstancesConfig {
                touch_every: seconds(f.instances.touch_every_s),
                dead_after: seconds(f.instances.dead_after_s),
            },
            retention: f.retention.map(|r| RetentionConfig {
                max_age: r.finished_max_age_s.map(seconds),
                max_count: r.finished_max_count,
            }),
            // The validator has checked that `listen` is an address.
            http: f.http.and_then(|h| {
                Some(HttpConfig {
                    listen: h.listen.parse().ok()?,
                    token_file: h.token_file.map(|t| resolve(&base, &t)),
                })
            }),
        }
    }

    /// Where this config keeps the supervisor's state, as [`locate`] would find it.
    pub fn locations(&self) -> Locations {
        Locations {
            path: self.path.clone(),
            state_dir: self.state_dir.clone(),
            store: self.store.clone(),
            events: self.events.path.clone(),
            guessed: Vec::new(),
        }
    }

    /// What the core supervises for this config. The grabber restarts with the default
    /// restart policy and gives up with `exit`; kill grace and start timeout are the
    /// core's defaults (5 s and 10 s).
    pub fn spec(&self, until_empty: bool) -> Spec {
        let base = spec::defaults::spec(Vec::new());
        Spec {
            groups: self.groups.iter().map(GroupConfig::spec).collect(),
            grabber_restart: RestartPolicy {
                on_exhausted: OnExhausted::Exit,
                ..spec::defaults::restart()
            },
            heartbeat: self.heartbeat,
            shutdown_grace: self.shutdown_grace,
            kill_grace: base.kill_grace,
            start_timeout: base.start_timeout,
            until_empty,
        }
    }

    /// The group called `name`, if any.
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The routing table of the grabber's claims: the groups in config order, as [`route`]
    /// takes them.
    pub fn routes(&self) -> Vec<Route> {
        self.groups.iter().map(GroupConfig::to_route).collect()
    }

    /// Workers of all groups together.
    pub fn total_workers(&self) -> u64 {
        self.groups.iter().map(|g| u64::from(g.max_workers)).sum()
    }

    /// One line for `supervisor check`, like `ok: 2 groups (x86_64: 4 workers, arm: 2
    /// workers), 6 workers, store sqlite /srv/state/jobs.db`.
    pub fn summary(&self) -> String {
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                format!(
                    "{}: {}",
                    g.name,
                    plural(g.max_workers.into(), "worker", "workers")
                )
            })
            .collect();
        format!(
            "ok: {} ({}), {}, store {}",
            plural(self.groups.len() as u64, "group", "groups"),
            groups.join(", "),
            plural(self.total_workers(), "worker", "workers"),
            self.store.describe()
        )
    }
}

/// A group that jobs are routed to, as far as routing is concerned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    /// The group's name.
    pub group: String,
    /// Tag selector: `Some(m)` takes an untargeted job whose tags hold, for every key of
    /// `m`, one of its values (an empty map takes every untargeted job); `None` takes only
    /// jobs that name the group.
    pub matches: Option<BTreeMap<String, Vec<String>>>,
}

impl Route {
    /// Whether this route takes an untargeted job with these tags.
    fn selects(&self, tags: &BTreeMap<String, String>) -> bool {
        self.matches.as_ref().is_some_and(|matches| {
            matches
                .iter()
                .all(|(key, values)| tags.get(key).is_some_and(|v| values.contains(v)))
        })
    }
}

/// The group a job goes to, if any: the one rule of routing, which the store's claims
/// apply to [`Config::routes`].
///
/// A job naming a `group` goes to that group if a route of that name exists, and nowhere
/// otherwise. An untargeted job goes to the first route (in order) whose `matches` selects
/// its tags. `None` means the job stays queued (that is not an error: a reload may add a
/// group for it).
pub fn route<'a>(
    routes: &'a [Route],
    group: Option<&str>,
    tags: &BTreeMap<String, String>,
) -> Option<&'a str> {
    match group {
        Some(name) => routes.iter().find(|r| r.group == name),
        None => routes.iter().find(|r| r.selects(tags)),
    }
    .map(|r| r.group.as_str())
}

/// Hides the password of a PostgreSQL connection string (URL or `key=value` form), for
/// messages: the config's own summary, and the store's errors.
///
/// `postgres://app:s3cret@db/jobs` becomes `postgres://app:***@db/jobs`, and
/// `host=db password=s3cret` becomes `host=db password=***`.
pub fn redact_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://").map(|i| i + 3) {
        let rest = &out[scheme_end..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                out.replace_range(scheme_end + colon + 1..scheme_end + at, "***");
            }
        }
    }
    let mut from = 0;
    while let Some(found) = out[from..].to_ascii_lowercase().find("password=") {
        let start = from + found + "password=".len();
        let end = if out[start..].starts_with('\'') {
            // A quoted value of the key=value form: up to the closing quote.
            let mut escaped = false;
            out[start + 1..]
                .char_indices()
                .find(|&(_, c)| {
                    let closing = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closing
                })
                .map_or(out.len(), |(i, _)| start + 1 + i + 1)
        } else {
            out[start..]
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                .map_or(out.len(), |i| start + i)
        };
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_process_writes_every_field_so_that_the_ipc_can_read_it_back() {
        // The IPC's postcard does not describe itself: a field skipped when absent
        // (`skip_serializing_if`) could not be read back. Every field must be written.
        let process = JobProcess {
            run_as: Some(RunAs {
                user: "nobody".into(),
                uid: 65534,
                gid: 65534,
                groups: vec![65534],
                home: "/nonexistent".into(),
            }),
            rlimits: RlimitsConfig {
                nofile: Some(64),
                ..RlimitsConfig::default()
            },
            nice: Some(-3),
            memory_max_bytes: None,
            cpu_max: Some(0.5),
        };
        let mut bytes = Vec::new();
        serde_json::to_writer(&mut bytes, &process).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        for key in ["nproc", "core", "as_bytes", "cpu_s", "memory_max_bytes"] {
            assert!(
                text.contains(&format!("\"{key}\":null")),
                "{key} skipped: {text}"
            );
        }
        assert_eq!(serde_json::from_str::<JobProcess>(&text).unwrap(), process);
    }

    #[test]
    fn config_path_precedence_cli_then_env_then_default() {
        let cli = Path::new("/etc/cli.json");
        let env = || Some(OsString::from("/etc/env.json"));
        assert_eq!(config_path_from(Some(cli), env()), cli);
        assert_eq!(config_path_from(Some(cli), None), cli);
        assert_eq!(
            config_path_from(None, env()),
            PathBuf::from("/etc/env.json")
        );
        assert_eq!(
            config_path_from(None, None),
            PathBuf::from("./supervisor.json")
        );
        assert_eq!(
            config_path_from(None, Some(OsString::new())),
            PathBuf::from("./supervisor.json"),
            "an empty variable counts as unset"
        );
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/jobs"),
            "postgres://app:***@db:5432/jobs"
        );
        assert_eq!(
            redact_password("postgres://app@db/jobs"),
            "postgres://app@db/jobs"
        );
        assert_eq!(
            redact_password("postgres://db/jobs?user=a&password=x&sslmode=require"),
            "postgres://db/jobs?user=a&password=***&sslmode=require"
        );
        assert_eq!(
            redact_password("host=db user=app password=secret dbname=jobs"),
            "host=db user=app password=*** dbname=jobs"
        );
        // A quoted value is hidden whole, spaces and escaped quotes included.
        assert_eq!(
            redact_password("host=db password='a b\\' c' dbname=jobs"),
            "host=db password=*** dbname=jobs"
        );
    }
}
