//! The operator's verbs other than `run`: submit, status, jobs, job, cancel, events,
//! reload, stop and check. Each reads the config, the store, the events file or the
//! pidfile; none of them talks to the supervisor except by a signal.
//!
//! `status`, `events`, `reload` and `stop` reach a running supervisor even when its
//! config file has errors on disk (they need only to find its state, see
//! [`supervisor_config::locate`]), with a warning; the others refuse such a file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};
use supervisor_config::{Config, Locations, StoreConfig};
use supervisor_os::{PidFile, PidFileState, Sig};
use supervisor_store::{CancelResult, Job, JobState, NewJob};

use crate::events_file::{read_events, rotated, wall_now};
use crate::run::{EXIT_FAILURE, EXIT_USAGE};
use crate::ConfigArg;

/// `println!` that returns the write's error instead of panicking on it (a full disk; a
/// closed pipe, should SIGPIPE be ignored after all: see `main`).
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}

/// `supervisor submit`'s arguments.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The group to run it in (else its tags are matched against each group's `match`).
    #[arg(long)]
    group: Option<String>,
    /// A tag for routing, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// Seconds before the attempt is stopped (overrides the group's job_timeout_s).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// Attempts before the job is dead (overrides the group's max_attempts).
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Idempotency key: submitting a key of an unfinished job returns that job's id.
    #[arg(long)]
    key: Option<String>,
    /// An environment variable for the job, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// The job's working directory [default: the current directory].
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Queue one job per line of this JSON-lines file (all or nothing).
    #[arg(long, value_name = "JOBS.jsonl", conflicts_with_all = ["group", "tags", "timeout", "max_attempts", "key", "env", "cwd", "command"])]
    file: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn load_config(path: &Path) -> Result<Config, i32> {
    supervisor_config::load(path).map_err(|e| {
        eprintln!("{e}");
        EXIT_USAGE
    })
}

/// The verbs that reach a supervisor whatever the state of its config file.
#[derive(Debug, Clone, Copy)]
enum Lenient {
    Status,
    Events,
    Reload,
    Stop,
}

/// Where the supervisor of the config file at `path` keeps its state. A file with errors
/// is located leniently, its errors printed as a warning with what they mean for `verb`;
/// `Err` (an exit code) only when even that is impossible.
fn locate(path: &Path, verb: Lenient) -> Result<Locations, i32> {
    let errors = match supervisor_config::load(path) {
        Ok(config) => return Ok(config.locations()),
        Err(e) => e,
    };
    let found = supervisor_config::locate(path).map_err(|e| {
        eprintln!("{errors}\n{e}");
        EXIT_USAGE
    })?;
    let name = path.display();
    eprintln!("supervisor: warning: the config file {name} has errors:");
    for line in &errors.errors {
        eprintln!("  {line}");
    }
    let meaning = match verb {
        Lenient::Reload => {
            "the supervisor will reject it (config_rejected) and keep the config it runs with"
        }
        Lenient::Stop => "a new `supervisor run` would refuse it",
        Lenient::Status | Lenient::Events => {
            "a reload would be rejected and a new `supervisor run` would refuse it"
        }
    };
    eprintln!("supervisor: warning: {meaning}");
    if !found.guessed.is_empty() {
        eprintln!(
            "supervisor: warning: cannot read {} from {name}; looking where the defaults are: state dir {}, events file {}, store {}",
            found.guessed.join(", "),
            found.state_dir.display(),
            found.events.display(),
            found.store.describe()
        );
    }
    Ok(found)
}

fn open_store(store: &StoreConfig) -> Result<crate::store::Store> {
    crate::store::open(store)
}

fn pidfile(state_dir: &Path) -> PathBuf {
    state_dir.join("supervisor.pid")
}

/// Ring the running supervisor's doorbell, if one runs: its grabber looks at the store now.
fn ring(config: &Config) {
    if let PidFileState::Running(pid) = PidFile::inspect(&pidfile(&config.state_dir)) {
        if pid > 0 {
            let _ = supervisor_os::signal_pid(pid, Sig::SIGUSR1);
        }
    }
}

fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => return Err(format!("{flag}: expected KEY=VALUE, got `{item}`")),
        }
    }
    Ok(out)
}

/// `supervisor submit`.
pub fn submit(args: SubmitArgs) -> Result<i32> {
    let config = match load_config(&args.config.path()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let here = std::env::current_dir().ok();
    let jobs = if let Some(file) = &args.file {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("supervisor: {}: cannot read: {e}", file.display());
                return Ok(EXIT_USAGE);
            }
        };
        match supervisor_store::parse_jobs_jsonl(&text) {
            Ok(mut jobs) => {
                for (n, j) in jobs.iter_mut().enumerate() {
                    match resolve_cwd(j.cwd.as_deref().map(Path::new), here.as_deref()) {
                        Ok(cwd) => j.cwd = cwd,
                        Err(e) => {
                            eprintln!("supervisor: {}: job {}: {e}", file.display(), n + 1);
                            eprintln!("supervisor: nothing was queued");
                            return Ok(EXIT_USAGE);
                        }
                    }
                }
                if jobs.is_empty() {
                    eprintln!("supervisor: {}: no jobs in the file", file.display());
                    return Ok(EXIT_USAGE);
                }
                jobs
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("supervisor: {}: {e}", file.display());
                }
                eprintln!("supervisor: nothing was queued");
                return Ok(EXIT_USAGE);
            }
        }
    } else {
        let tags = pairs("--tag", &args.tags);
        let env = pairs("--env", &args.env);
        let (tags, env) = match (tags, env) {
            (Ok(t), Ok(e)) => (t, e),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("supervisor: {e}");
                return Ok(EXIT_USAGE);
            }
        };
        if args.command.is_empty() {
            eprintln!("supervisor: submit: no command given (put it after `--`), or use --file");
            return Ok(EXIT_USAGE);
        }
        let cwd = match resolve_cwd(args.cwd.as_deref(), here.as_deref()) {
            Ok(cwd) => cwd,
            Err(e) => {
                eprintln!("supervisor: submit: {e}");
                return Ok(EXIT_USAGE);
            }
        };
        let job = NewJob {
            command: args.command.clone(),
            group: args.group.clone(),
            tags,
            env,
            cwd,
            timeout_s: args.timeout,
            max_attempts: args.max_attempts,
            key: args.key.clone(),
        };
        if let Err(e) = job.validate() {
            eprintln!("supervisor: submit: {}", as_flag(&e));
            return Ok(EXIT_USAGE);
        }
        vec![job]
    };
    if let Some(name) = jobs
        .iter()
        .filter_map(|j| j.group.as_deref())
        .find(|g| config.group(g).is_none())
    {
        log::warn!(
            "no group named {name:?} in {}: such jobs wait for a reload that adds it",
            config.path.display()
        );
    }
    let mut store = open_store(&config.store)?;
    let ids = match store.submit(&jobs, wall_now()) {
        Ok(ids) => ids,
        Err(e @ supervisor_store::StoreError::InvalidJob { .. }) => {
            eprintln!("supervisor: {e}");
            return Ok(EXIT_USAGE);
        }
        Err(e) => return Err(e).context("cannot queue the job"),
    };
    // The doorbell first: the jobs are queued whatever becomes of our output.
    ring(&config);
    let mut out = io::BufWriter::new(io::stdout().lock());
    for id in ids {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    Ok(0)
}

/// A validation error of a job given by flags, with the flag's name for the field's.
fn as_flag(e: &str) -> String {
    const FLAGS: [(&str, &str); 5] = [
        ("timeout_s:", "--timeout"),
        ("max_attempts:", "--max-attempts"),
        ("cwd:", "--cwd"),
        ("key:", "--key"),
        ("group:", "--group"),
    ];
    for (field, flag) in FLAGS {
        if let Some(rest) = e.strip_prefix(field) {
            return format!("{flag}:{rest}");
        }
    }
    e.to_owned()
}

/// The job's working directory: `cwd` against the directory `submit` runs in, or that
/// directory. A path that is not UTF-8 cannot be stored: refused, never mangled.
fn resolve_cwd(cwd: Option<&Path>, here: Option<&Path>) -> Result<Option<String>, String> {
    let full = match (cwd, here) {
        (Some(c), Some(h)) => h.join(c),
        (Some(c), None) => c.to_path_buf(),
        (None, Some(h)) => h.to_path_buf(),
        (None, None) => return Ok(None),
    };
    match full.into_os_string().into_string() {
        Ok(s) => Ok(Some(s)),
        Err(bad) => Err(format!(
            "--cwd: {} is not valid UTF-8, which a job's directory must be",
            Path::new(&bad).display()
        )),
    }
}

fn job_json(config: &Config, j: &Job) -> Value {
    json!({
        "id": j.id,
        "state": j.state.as_str(),
        "group": j.group,
        "command": j.command,
        "attempts": j.attempts,
        "exit_code": j.exit_code,
        "signal": j.signal,
        "log": config.state_dir.join("logs").join(format!("{}.log", j.id)),
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "tags": j.tags,
        "key": j.key,
        "last_outcome": j.last_outcome,
        "cwd": j.cwd,
        "timeout_s": j.timeout_s,
        "max_attempts": j.max_attempts,
        "start_error": j.start_error,
        "reason": j.reason,
    })
}

fn parse_id(id: &str) -> Result<i64, i32> {
    id.parse::<i64>().map_err(|_| {
        eprintln!("supervisor: `{id}` is not a job id (a number)");
        EXIT_USAGE
    })
}

/// `supervisor jobs`.
pub fn jobs(path: &Path, state: Option<&str>, as_json: bool) -> Result<i32> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let state = match state.map(str::parse::<JobState>).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("supervisor: --state: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let mut store = open_store(&config.store)?;
    let jobs = store.list(state, wall_now())?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if as_json {
        let list: Vec<Value> = jobs.iter().map(|j| job_json(&config, j)).collect();
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:>6}  {:<10} {:<12} {:>8}  {:>5}  {:<19}  {:>8}  COMMAND",
        "ID", "STATE", "GROUP", "ATTEMPTS", "EXIT", "STARTED", "RAN"
    )?;
    let now = wall_now();
    for j in &jobs {
        let exit = match (j.exit_code, j.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:>6}  {:<10} {:<12} {:>8}  {:>5}  {:<19}  {:>8}  {}",
            j.id,
            j.state.as_str(),
            j.group.as_deref().unwrap_or("-"),
            j.attempts,
            exit,
            j.started_at.map_or("-".into(), |t| local_time(t, false)),
            ran_for(j, now).map_or("-".into(), format_duration),
            shell_words(&j.command)
        )?;
    }
    out.flush()?;
    Ok(0)
}

/// How long the job's last attempt ran (or has run so far), if it started.
fn ran_for(j: &Job, now: f64) -> Option<f64> {
    let started = j.started_at?;
    match (j.state, j.finished_at) {
        (JobState::Running, _) => Some(now - started),
        (_, Some(finished)) if finished >= started => Some(finished - started),
        _ => None,
    }
}

/// A wall-clock time in the local time zone, like `2026-11-23 16:20:04`, with
/// milliseconds and the zone when `precise`.
fn local_time(ts: f64, precise: bool) -> String {
    let Ok(t) = jiff::Timestamp::from_nanosecond((ts * 1e9) as i128) else {
        return format!("{ts}");
    };
    let zoned = t.to_zoned(jiff::tz::TimeZone::system());
    let format = if precise {
        "%Y-%m-%d %H:%M:%S%.3f %Z"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    zoned.strftime(format).to_string()
}

/// A command as a shell would need it typed: words with spaces or specials quoted.
fn shell_words(words: &[String]) -> String {
    let quote = |w: &String| {
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if plain {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', "'\\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// `supervisor job ID`.
pub fn job(path: &Path, id: &str, as_json: bool) -> Result<i32> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(code) => return Ok(code),
    };
    let mut store = open_store(&config.store)?;
    let Some(j) = store.get(id, wall_now())? else {
        eprintln!("supervisor: unknown job id {id}");
        return Ok(EXIT_USAGE);
    };
    if as_json {
        say!("{}", serde_json::to_string_pretty(&job_json(&config, &j))?)?;
    } else {
        print_job(&config, &j)?;
    }
    Ok(0)
}

/// `job ID` for humans: what happened, in the order one asks.
fn print_job(config: &Config, j: &Job) -> io::Result<()> {
    let group = j.group.as_deref().unwrap_or("-");
    let mut out = io::stdout().lock();
    writeln!(out, "job {}: {} (group {group})", j.id, j.state.as_str())?;
    let mut row = |k: &str, v: String| writeln!(out, "  {k:<12}{v}");
    row("command", shell_words(&j.command))?;
    let limit = j.max_attempts.or_else(|| {
        config
            .groups
            .iter()
            .find(|g| Some(g.name.as_str()) == j.group.as_deref())
            .map(|g| g.max_attempts)
    });
    row(
        "attempts",
        match limit {
            Some(n) => format!("{} of {n}", j.attempts),
            None => j.attempts.to_string(),
        },
    )?;
    match (j.exit_code, j.signal) {
        (Some(c), _) => row("exit", c.to_string())?,
        (None, Some(s)) => row("signal", signal_name(s))?,
        _ => row("exit", "-".into())?,
    }
    if let Some(o) = &j.last_outcome {
        row("outcome", format!("{o} (last attempt)"))?;
    }
    let when = |t: Option<f64>| t.map_or("-".into(), |t| local_time(t, true));
    row("created", when(Some(j.created_at)))?;
    row("started", when(j.started_at))?;
    let mut finished = when(j.finished_at);
    if let Some(d) = ran_for(j, wall_now()) {
        finished = if j.state == JobState::Running {
            format!("- (running for {})", format_duration(d))
        } else {
            format!("{finished} (ran {d:.3} s)")
        };
    }
    row("finished", finished)?;
    if let Some(e) = &j.start_error {
        row("start error", e.clone())?;
    }
    if let Some(r) = &j.reason {
        row("reason", r.clone())?;
    }
    let log = config.state_dir.join("logs").join(format!("{}.log", j.id));
    let note = if log.exists() || j.started_at.is_none() {
        ""
    } else {
        " (none: the job wrote nothing)"
    };
    row("log", format!("{}{note}", log.display()))?;
    if let Some(k) = &j.key {
        row("key", k.clone())?;
    }
    if !j.tags.is_empty() {
        let tags: Vec<String> = j.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        row("tags", tags.join(" "))?;
    }
    if let Some(cwd) = &j.cwd {
        row("cwd", cwd.clone())?;
    }
    if let Some(t) = j.timeout_s {
        row("timeout", format!("{t} s"))?;
    }
    Ok(())
}

/// A JSON value for a table cell: null as `-`, strings bare.
fn human(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `9 (SIGKILL)`.
fn signal_name(s: i32) -> String {
    match nix::sys::signal::Signal::try_from(s) {
        Ok(sig) => format!("{s} ({})", sig.as_str()),
        Err(_) => s.to_string(),
    }
}

/// `supervisor cancel ID`.
pub fn cancel(path: &Path, id: &str) -> Result<i32> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(code) => return Ok(code),
    };
    let mut store = open_store(&config.store)?;
    match store.cancel(id, wall_now())? {
        CancelResult::Canceled => say!("job {id} canceled")?,
        CancelResult::Requested => {
            ring(&config);
            say!("job {id} is running: it is being stopped and will be canceled")?;
        }
        CancelResult::AlreadyFinished(state) => {
            say!("job {id} already finished: {}", state.as_str())?
        }
        CancelResult::Unknown => {
            eprintln!("supervisor: unknown job id {id}");
            return Ok(EXIT_USAGE);
        }
    }
    Ok(0)
}

/// `supervisor check`: the summary, and warnings on stderr (still exit 0) for what the
/// config would do that an operator may not mean (see [`check_warnings`]).
pub fn check(path: &Path) -> Result<i32> {
    match supervisor_config::load(path) {
        Ok(c) => {
            say!("{}", c.summary())?;
            for warning in check_warnings(&c, supervisor_os::users::effective_uid()) {
                eprintln!("supervisor: warning: {warning}");
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(EXIT_USAGE)
        }
    }
}

/// What `check` warns of: groups whose jobs would run as root (a supervisor running as
/// `euid` 0, a group without `user`), and cgroup limits that would not be enforced (no
/// delegated cgroup v2 for the running supervisor or, with none running, for `check`
/// itself, which a supervisor started the same way would share).
fn check_warnings(config: &Config, euid: u32) -> Vec<String> {
    let mut warnings = Vec::new();
    if euid == 0 {
        for (i, g) in config.groups.iter().enumerate() {
            if g.process.run_as.is_none() {
                warnings.push(format!(
                    "groups[{i}] ({}) has no `user`: its jobs would run as root",
                    Value::String(g.name.clone())
                ));
            }
        }
    }
    let limited: Vec<String> = config
        .groups
        .iter()
        .enumerate()
        .flat_map(|(i, g)| {
            let memory = g.process.memory_max_bytes.map(|_| "memory_max_bytes");
            let cpu = g.process.cpu_max.map(|_| "cpu_max");
            [memory, cpu]
                .into_iter()
                .flatten()
                .map(move |key| format!("groups[{i}].{key}"))
        })
        .collect();
    if limited.is_empty() {
        return warnings;
    }
    let (whose, found) = match PidFile::inspect(&pidfile(&config.state_dir)) {
        PidFileState::Running(pid) if pid > 0 => (
            format!("the running supervisor (pid {pid})"),
            supervisor_os::cgroup::detect_pid(pid),
        ),
        _ => ("this process".to_string(), supervisor_os::cgroup::detect()),
    };
    if let Err(why) = found {
        warnings.push(format!(
            "{} will not be enforced: cgroups are not in use for {whose}: {why}",
            limited.join(", ")
        ));
    }
    warnings
}

/// Whether the supervisor `pid` can give jobs cgroups of their own, for `status`.
fn cgroups_of(pid: Option<u32>) -> (Value, String) {
    let found = match pid {
        Some(pid) if pid > 0 => supervisor_os::cgroup::detect_pid(pid),
        _ => Err("the supervisor is not running".to_string()),
    };
    match found {
        Ok(delegated) => {
            let dir = delegated.dir().display().to_string();
            let text = format!("in use ({dir}): memory_max_bytes and cpu_max are enforced");
            (json!({"in_use": true, "dir": dir, "reason": null}), text)
        }
        Err(why) => {
            let text = format!("not in use (memory_max_bytes and cpu_max are not enforced): {why}");
            (json!({"in_use": false, "dir": null, "reason": why}), text)
        }
    }
}

/// What `reload` and `stop` ask of the supervisor.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    Reload,
    Stop { wait: bool },
}

/// `supervisor reload` / `supervisor stop`: a signal to the pid in the pidfile, only
/// if that pid really is a live supervisor (it holds the pidfile's lock).
///
/// A config file with errors does not stop them: they need only the state dir, found
/// leniently, and warn (a reload of such a file is rejected by the supervisor).
pub fn signal(path: &Path, what: Control) -> Result<i32> {
    let verb = match what {
        Control::Reload => Lenient::Reload,
        Control::Stop { .. } => Lenient::Stop,
    };
    let found = match locate(path, verb) {
        Ok(found) => found,
        Err(code) => return Ok(code),
    };
    let pidfile = pidfile(&found.state_dir);
    let pid = match PidFile::inspect(&pidfile) {
        PidFileState::Running(pid) if pid > 0 => pid,
        PidFileState::Running(_) => {
            eprintln!("supervisor: the supervisor is still starting; try again");
            return Ok(EXIT_FAILURE);
        }
        PidFileState::Missing => {
            eprintln!(
                "supervisor: not running (no pidfile at {})",
                pidfile.display()
            );
            return Ok(EXIT_FAILURE);
        }
        PidFileState::Stale(pid) => {
            eprintln!(
                "supervisor: not running: {} is stale (it names pid {}, which no supervisor holds; not signalled)",
                pidfile.display(),
                pid.map_or("?".into(), |p| p.to_string())
            );
            return Ok(EXIT_FAILURE);
        }
    };
    match what {
        Control::Reload => {
            supervisor_os::signal_pid(pid, Sig::SIGHUP)?;
            say!("asked supervisor {pid} to reload")?;
        }
        Control::Stop { wait } => {
            supervisor_os::signal_pid(pid, Sig::SIGTERM)?;
            say!("asked supervisor {pid} to stop")?;
            if wait {
                // The kernel drops the pidfile's lock when the process is gone.
                while matches!(PidFile::inspect(&pidfile), PidFileState::Running(_)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                say!("supervisor {pid} stopped")?;
            }
        }
    }
    Ok(0)
}

/// The child table and supervisor facts rebuilt from the events file.
#[derive(Debug, Default)]
struct Replay {
    supervisor_pid: Option<u64>,
    /// (role, group, slot) → row, with `started_at` (wall clock) when known.
    children: BTreeMap<(String, Option<String>, Option<u64>), Value>,
}

fn key_of(e: &Value) -> (String, Option<String>, Option<u64>) {
    (
        e["role"].as_str().unwrap_or("worker").to_string(),
        e["group"].as_str().map(str::to_string),
        e["slot"].as_u64(),
    )
}

fn replay(events: &[Value]) -> Replay {
    let start = events
        .iter()
        .rposition(|e| e["event"] == "snapshot")
        .unwrap_or(0);
    let mut r = Replay::default();
    for e in &events[start..] {
        match e["event"].as_str().unwrap_or("") {
            "snapshot" => {
                r.supervisor_pid = e["supervisor_pid"].as_u64();
                r.children.clear();
                for c in e["children"].as_array().into_iter().flatten() {
                    let mut row = c.clone();
                    // Rows carry their child's start; older supervisors wrote none.
                    if row.get("started_at").is_none() {
                        row["started_at"] = Value::Null;
                    }
                    r.children.insert(key_of(c), row);
                }
            }
            "supervisor_started" => {
                r.supervisor_pid = e["pid"].as_u64();
            }
            "child_started" | "child_ready" => {
                let k = key_of(e);
                let row = r.children.entry(k.clone()).or_insert_with(|| {
                    json!({"role": k.0, "group": k.1, "slot": k.2, "restarts": 0, "job_id": null, "started_at": null})
                });
                row["pid"] = e["pid"].clone();
                row["state"] = json!(if e["event"] == "child_ready" {
                    if k.0 == "grabber" {
                        "ready"
                    } else {
                        "idle"
                    }
                } else {
                    "starting"
                });
                row["job_id"] = Value::Null;
                if e["event"] == "child_started" {
                    row["started_at"] = e["ts"].clone();
                }
            }
            "child_exited" => {
                if let Some(row) = r.children.get_mut(&key_of(e)) {
                    row["state"] = json!("exited");
                    row["job_id"] = Value::Null;
                    row["started_at"] = Value::Null;
                }
            }
            "child_restart_scheduled" => {
                if let Some(row) = r.children.get_mut(&key_of(e)) {
                    row["restarts"] = json!(row["restarts"].as_u64().unwrap_or(0) + 1);
                }
            }
            "job_started" => {
                let k = (
                    "worker".to_string(),
                    e["group"].as_str().map(str::to_string),
                    e["slot"].as_u64(),
                );
                if let Some(row) = r.children.get_mut(&k) {
                    row["state"] = json!("busy");
                    row["job_id"] = e["job_id"].clone();
                }
            }
            "job_finished" => {
                for row in r.children.values_mut() {
                    if row["job_id"] == e["job_id"] && row["state"] == "busy" {
                        row["state"] = json!("idle");
                        row["job_id"] = Value::Null;
                    }
                }
            }
            _ => {}
        }
    }
    r
}

/// `supervisor status`.
///
/// A config file with errors does not stop it: it warns and shows what the state dir,
/// the events file and the store (found leniently) say.
///
/// With no supervisor running, it tells how the last run ended ([`Ending`]) and when
/// its last event was; its children are `gone` (no uptime), and jobs the store still
/// has as `running` are named: the next run gives them back to the queue.
pub fn status(path: &Path, as_json: bool) -> Result<i32> {
    let found = match locate(path, Lenient::Status) {
        Ok(found) => found,
        Err(code) => return Ok(code),
    };
    let state = PidFile::inspect(&pidfile(&found.state_dir));
    let running_pid = match state {
        PidFileState::Running(pid) => Some(pid),
        _ => None,
    };
    let events = read_events(&found.events).unwrap_or_default();
    let r = replay(&events);
    let counts: BTreeMap<String, u64> = match store_counts(&found.store) {
        Ok(c) => c
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), v))
            .collect(),
        Err(e) => {
            log::warn!("job counts unavailable: {e:#}");
            JobState::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), 0))
                .collect()
        }
    };
    let stale_pid = match state {
        PidFileState::Stale(pid) => pid,
        _ => None,
    };
    // Outcomes the running supervisor holds because the store refused them.
    let waiting = match running_pid {
        Some(_) => events
            .iter()
            .rev()
            .find_map(|e| match e["event"].as_str() {
                Some("outcomes_waiting") => e["count"].as_u64(),
                Some("snapshot") => e["outcomes_waiting"].as_u64(),
                _ => None,
            })
            .unwrap_or(0),
        None => 0,
    };
    let (ending, last_event_at) = match running_pid {
        Some(_) => (None, events.iter().rev().find_map(|e| e["ts"].as_f64())),
        None => {
            let (mut ending, at) = last_run(&found.events, &events);
            // Nothing in the events file, but a pidfile nobody holds: a supervisor ran
            // here and was killed (before it wrote any event, or its events are gone).
            if ending == Ending::NeverStarted && matches!(state, PidFileState::Stale(_)) {
                ending = Ending::Died;
            }
            (Some(ending), at)
        }
    };
    let pid = running_pid
        .map(u64::from)
        .or(r.supervisor_pid)
        .or(stale_pid.map(u64::from));
    let cgroups = cgroups_of(running_pid);
    let mut children: Vec<Value> = r.children.values().cloned().collect();
    if running_pid.is_none() {
        // Whatever the events last said of them, children die with their supervisor
        // (PR_SET_PDEATHSIG): none of them runs now.
        for c in &mut children {
            c["state"] = json!(GONE);
            c["started_at"] = Value::Null;
        }
    }
    // Jobs still `running` in the store while no supervisor runs: stranded until the
    // next run gives them back.
    let stranded = match running_pid {
        None if counts.get("running").copied().unwrap_or(0) > 0 => running_jobs(&found.store)
            .unwrap_or_else(|e| {
                log::warn!("running jobs unavailable: {e:#}");
                Vec::new()
            }),
        _ => Vec::new(),
    };
    if as_json {
        let v = json!({
            "supervisor": {
                "pid": pid,
                "running": running_pid.is_some(),
                "stopped": ending.as_ref().and_then(Ending::label),
                "last_event_at": last_event_at,
                "panic": match &ending {
                    Some(Ending::Crashed { message, location }) => {
                        json!({"message": message, "location": location})
                    }
                    _ => Value::Null,
                },
            },
            "children": children,
            "jobs": counts,
            "outcomes_waiting": waiting,
            "cgroups": cgroups.0,
        });
        say!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    let mut out = io::stdout().lock();
    let now = wall_now();
    let pid_text = pid.map_or("?".into(), |p| p.to_string());
    let last = last_event_at.map_or("none recorded".into(), |t| {
        format!("{} ({} ago)", local_time(t, true), format_duration(now - t))
    });
    match (running_pid, &ending) {
        (Some(p), _) => {
            writeln!(out, "supervisor: running (pid {p})")?;
            writeln!(out, "cgroups: {}", cgroups.1)?;
        }
        (None, None | Some(Ending::NeverStarted)) => writeln!(
            out,
            "supervisor: not running: never started here (no events in {})",
            found.events.display()
        )?,
        (None, Some(Ending::Cleanly { code })) => {
            let code = code.map_or(String::new(), |c| format!(", exit code {c}"));
            writeln!(
                out,
                "supervisor: not running: stopped cleanly (pid {pid_text}{code}); last event {last}"
            )?
        }
        (None, Some(Ending::Died)) => writeln!(
            out,
            "supervisor: not running: died (pid {pid_text}: killed, or crashed without a \
             trace); last event {last}"
        )?,
        (None, Some(Ending::Crashed { message, location })) => {
            writeln!(
                out,
                "supervisor: not running: crashed (pid {pid_text}); last event {last}"
            )?;
            writeln!(out, "  panicked at {location}:")?;
            for line in message.lines() {
                writeln!(out, "    {line}")?;
            }
        }
    }
    if running_pid.is_some() || !children.is_empty() {
        writeln!(
            out,
            "{:<20} {:<9} {:>8} {:>9} {:>8}  JOB",
            "NAME", "STATE", "PID", "UPTIME", "RESTARTS"
        )?;
    }
    for c in &children {
        let name = match (c["group"].as_str(), c["slot"].as_u64()) {
            (Some(g), Some(s)) => format!("{g}/{s}"),
            _ => c["role"].as_str().unwrap_or("?").to_string(),
        };
        let state = c["state"].as_str().unwrap_or("?");
        let uptime = match (state, c["started_at"].as_f64()) {
            ("exited" | GONE, _) | (_, None) => "-".to_string(),
            (_, Some(t)) => format_duration(now - t),
        };
        writeln!(
            out,
            "{:<20} {:<9} {:>8} {:>9} {:>8}  {}",
            name,
            state,
            human(&c["pid"]),
            uptime,
            human(&c["restarts"]),
            human(&c["job_id"])
        )?;
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "jobs: {}", summary.join(", "))?;
    if waiting > 0 {
        writeln!(
            out,
            "outcomes waiting for the store: {waiting} (nothing is claimed until they are stored)"
        )?;
    }
    if !stranded.is_empty() {
        writeln!(out, "{}", stranded_note(&stranded, &found.store))?;
    }
    out.flush()?;
    Ok(0)
}

/// A child's state in `status` when no supervisor runs.
const GONE: &str = "gone";

/// The line under the counts that names the jobs left `running` by a supervisor that
/// is gone.
fn stranded_note(ids: &[i64], store: &StoreConfig) -> String {
    const SHOWN: usize = 10;
    let mut list: Vec<String> = ids.iter().take(SHOWN).map(i64::to_string).collect();
    if ids.len() > SHOWN {
        list.push(format!("and {} more", ids.len() - SHOWN));
    }
    let (noun, verb) = if ids.len() == 1 {
        ("job", "is")
    } else {
        ("jobs", "are")
    };
    let who = match store {
        StoreConfig::Sqlite { .. } => "will be given back by the next run",
        // A shared store: other supervisors may run some of them; those of this one
        // go back when it runs again, or when another notices it is dead.
        StoreConfig::Postgres { .. } => {
            "those this supervisor held will be given back by its next run, or by another \
             supervisor on the store"
        }
    };
    format!(
        "{noun} {} {verb} still running in the store: {who}",
        list.join(", ")
    )
}

/// The ids of the jobs the store has as `running`.
fn running_jobs(store: &StoreConfig) -> Result<Vec<i64>> {
    if let StoreConfig::Sqlite { path } = store {
        if !path.exists() {
            return Ok(Vec::new());
        }
    }
    let mut store = open_store(store)?;
    let jobs = store.list(Some(JobState::Running), wall_now())?;
    Ok(jobs.iter().map(|j| j.id).collect())
}

/// How the last run of the supervisor ended, as its events tell it.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    /// No event at all: no supervisor has run here.
    NeverStarted,
    /// The run ended with `supervisor_stopped` (with its exit code).
    Cleanly { code: Option<i64> },
    /// No `supervisor_stopped` after its last `supervisor_started`: killed, or gone
    /// without a trace.
    Died,
    /// The run recorded a panic (`supervisor_panicked`) before it went.
    Crashed { message: String, location: String },
}

impl Ending {
    /// `status --json`'s `supervisor.stopped`.
    fn label(&self) -> Option<&'static str> {
        match self {
            Ending::NeverStarted => None,
            Ending::Cleanly { .. } => Some("cleanly"),
            Ending::Died => Some("died"),
            Ending::Crashed { .. } => Some("crashed"),
        }
    }
}

/// How the last run ended, from `events` in order (the end of the last run among
/// them): what follows the last `supervisor_started`. A panic outranks a stop.
fn ending_of(events: &[Value]) -> Ending {
    if events.is_empty() {
        return Ending::NeverStarted;
    }
    let from = events
        .iter()
        .rposition(|e| e["event"] == "supervisor_started")
        .unwrap_or(0);
    let mut ending = Ending::Died;
    for e in &events[from..] {
        match e["event"].as_str() {
            Some("supervisor_panicked") => {
                let text = |k: &str| human(&e[k]);
                ending = Ending::Crashed {
                    message: text("message"),
                    location: text("location"),
                };
            }
            Some("supervisor_stopped") if !matches!(ending, Ending::Crashed { .. }) => {
                ending = Ending::Cleanly {
                    code: e["code"].as_i64(),
                };
            }
            _ => {}
        }
    }
    ending
}

/// How the last run ended and the time of its last event, from the current events
/// file (`current`, read from `path`) and, when needed, the end of the previous one.
///
/// Each run starts a new file (a snapshot, then `supervisor_started`). A current file
/// without `supervisor_started` began with a rotation: when its snapshot names the pid
/// that `<path>.1` begins with, that is the same run, and its last events (a
/// `supervisor_stopped` that pushed the file over its size, say) may be at the end of
/// `<path>.1`.
fn last_run(path: &Path, current: &[Value]) -> (Ending, Option<f64>) {
    let mut events = Vec::new();
    if !current.iter().any(|e| e["event"] == "supervisor_started") {
        let older = rotated(path, 1);
        let same_run = match (first_event(&older), current.first()) {
            (Some(first), Some(top)) => {
                first["supervisor_pid"].is_u64() && first["supervisor_pid"] == top["supervisor_pid"]
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        if same_run {
            events = tail_events(&older);
        }
    }
    events.extend(current.iter().cloned());
    let last_at = events.iter().rev().find_map(|e| e["ts"].as_f64());
    (ending_of(&events), last_at)
}

/// The first event of an events file.
fn first_event(path: &Path) -> Option<Value> {
    let mut line = String::new();
    BufReader::new(File::open(path).ok()?)
        .read_line(&mut line)
        .ok()?;
    serde_json::from_str(line.trim_end()).ok()
}

/// The events of the last 64 KiB of an events file.
fn tail_events(path: &Path) -> Vec<Value> {
    let tail = (|| -> io::Result<(u64, Vec<u8>)> {
        let mut file = File::open(path)?;
        let from = file.metadata()?.len().saturating_sub(64 * 1024);
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok((from, bytes))
    })();
    let Ok((from, bytes)) = tail else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        // Past the first line of a tail that starts mid-line.
        .skip(usize::from(from > 0))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Jobs by state; all 0 when the store does not exist yet (`status` creates nothing).
fn store_counts(store: &StoreConfig) -> Result<BTreeMap<JobState, u64>> {
    if let StoreConfig::Sqlite { path } = store {
        if !path.exists() {
            return Ok(JobState::ALL.iter().map(|s| (*s, 0)).collect());
        }
    }
    Ok(open_store(store)?.counts(wall_now())?)
}

fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `supervisor events [--follow]`: the current events file as it is; with `--follow`,
/// every event from then on, across rotations, exactly once and in `seq` order.
///
/// The file is polled. When its path names another file (a rotation, or logrotate and a
/// reload), the old one is read to its end and the new one from its top. An event whose
/// `seq` is past the next one expected means whole files went by between two polls:
/// the events in between are read from the rotated files (`<path>.1`, `.2`, ...) first;
/// those already deleted (`events.keep`) are reported on stderr as missing.
pub fn events(path: &Path, follow: bool, as_json: bool) -> Result<i32> {
    let found = match locate(path, Lenient::Events) {
        Ok(found) => found,
        Err(code) => return Ok(code),
    };
    let mut printer = Printer {
        out: std::io::stdout().lock(),
        human: !as_json && std::io::stdout().is_terminal(),
        last: None,
    };
    let result = if follow {
        follow_events(&found.events, &mut printer).map(|()| 0)
    } else {
        print_events(&found.events, &mut printer)
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// How often `events --follow` looks at the file.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Prints events lines, and when following, keeps `seq` continuous.
struct Printer<'a> {
    out: std::io::StdoutLock<'a>,
    /// The human form (on a terminal), else the lines as they are.
    human: bool,
    /// The `seq` of the last event printed while following.
    last: Option<u64>,
}

impl Printer<'_> {
    /// One line as it is (or in human form), skipping blank ones.
    fn print(&mut self, line: &str) -> io::Result<()> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if self.human {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                return writeln!(self.out, "{}", human_event(&v));
            }
        }
        writeln!(self.out, "{line}")
    }

    /// One line of the followed file at `path`: if its `seq` skips some, those come
    /// first, from the rotated files.
    fn follow(&mut self, line: &str, path: &Path) -> io::Result<()> {
        if let Some(seq) = seq_of(line) {
            match self.last {
                Some(last) if seq > last + 1 => self.fill_gap(path, last, seq)?,
                Some(last) if seq <= last => eprintln!(
                    "supervisor: warning: {}: seq went back from {last} to {seq} (the file was \
                     replaced, not rotated); going on from {seq}",
                    path.display()
                ),
                _ => {}
            }
            self.last = Some(seq);
        }
        self.print(line)
    }

    /// Print the events after `last` and before `next` from the files rotated from
    /// `path`, in `seq` order; warn about those no file has any more.
    fn fill_gap(&mut self, path: &Path, last: u64, next: u64) -> io::Result<()> {
        let wanted = next - last - 1;
        let mut found = BTreeMap::new();
        // A rotation under way moves the files while they are looked for; one that
        // gives an incomplete answer is tried again.
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            rotated_events(path, last, next, &mut found);
            if found.len() as u64 == wanted {
                break;
            }
        }
        log::debug!(
            "seq {last} then {next}: {} of the {wanted} events between from rotated files",
            found.len()
        );
        let mut expected = last + 1;
        for (seq, line) in found {
            if seq > expected {
                warn_missing(path, expected, seq - 1);
            }
            self.print(&line)?;
            expected = seq + 1;
        }
        if expected < next {
            warn_missing(path, expected, next - 1);
        }
        Ok(())
    }
}

fn warn_missing(path: &Path, from: u64, to: u64) {
    let what = if from == to {
        format!("event seq {from} is")
    } else {
        format!("events seq {from} to {to} are")
    };
    eprintln!(
        "supervisor: warning: {what} missing: rotated out of {} before they could be read \
         (events.keep)",
        path.display()
    );
}

/// `events` without `--follow`: every complete line of the file.
fn print_events(path: &Path, printer: &mut Printer) -> io::Result<i32> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        // No supervisor has run here yet: there are no events, which is not an error.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!(
                "supervisor: no events yet ({} does not exist)",
                path.display()
            );
            return Ok(0);
        }
        Err(e) => {
            eprintln!("supervisor: {}: {e}", path.display());
            return Ok(EXIT_FAILURE);
        }
    };
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    // A torn last line (being written) is left out.
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    for line in complete.lines() {
        printer.print(line)?;
    }
    printer.out.flush()?;
    Ok(0)
}

/// `events --follow`: never returns but on an output error.
fn follow_events(path: &Path, printer: &mut Printer) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut file = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            log::info!("{}: {e}; waiting for it", path.display());
            None
        }
    };
    let mut ino = file.as_ref().and_then(inode);
    let mut pending = String::new();
    loop {
        if let Some(f) = file.as_mut() {
            follow_lines(f, &mut pending, path, printer)?;
        }
        std::thread::sleep(FOLLOW_POLL);
        // Between a rotation's rename and the new file, the path names nothing.
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if Some(meta.ino()) != ino {
            // Another file: the old one is complete; read its end (a torn last line
            // too: nothing will complete it), then the new one from its top.
            if let Some(f) = file.as_mut() {
                follow_lines(f, &mut pending, path, printer)?;
                if !pending.is_empty() {
                    let line = std::mem::take(&mut pending);
                    printer.follow(&line, path)?;
                    printer.out.flush()?;
                }
            }
            file = File::open(path).ok();
            ino = file.as_ref().and_then(inode);
        } else if let Some(f) = file.as_mut() {
            // Truncated in place (copytruncate): start over.
            if meta.len() < f.stream_position()? {
                f.seek(SeekFrom::Start(0))?;
                pending.clear();
            }
        }
    }
}

/// Print the complete lines that `file` has now, keeping a torn last line in `pending`.
fn follow_lines(
    file: &mut File,
    pending: &mut String,
    path: &Path,
    printer: &mut Printer,
) -> io::Result<()> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    pending.push_str(&String::from_utf8_lossy(&bytes));
    while let Some(i) = pending.find('\n') {
        let line: String = pending.drain(..=i).collect();
        printer.follow(line.trim_end(), path)?;
    }
    printer.out.flush()
}

/// The `seq` of an events line.
fn seq_of(line: &str) -> Option<u64> {
    serde_json::from_str::<Value>(line)
        .ok()?
        .get("seq")?
        .as_u64()
}

/// Add to `found` the lines of events after `last` and before `next` from the files
/// rotated from `path`, newest first (`.1`, `.2`, ...), down to one that ends at or
/// before `last`.
///
/// Files only ever move up (`.1` → `.2`) and are opened in that direction, so each file
/// there was at the start is met at least once, even while rotations go on; a number
/// may be missing for a moment (mid-rotation), so the walk goes on past missing ones up
/// to the highest number listed in the folder.
fn rotated_events(path: &Path, last: u64, next: u64, found: &mut BTreeMap<u64, String>) {
    let top = rotated_numbers(path).into_iter().max().unwrap_or(0);
    for n in 1.. {
        let mut file = match File::open(rotated(path, n)) {
            Ok(f) => f,
            Err(_) if n <= top => continue,
            Err(_) => break,
        };
        let Ok(Some((first, end))) = seq_range(&mut file) else {
            continue;
        };
        if end <= last {
            break;
        }
        if first >= next {
            continue;
        }
        if file.seek(SeekFrom::Start(0)).is_err() {
            continue;
        }
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Some(seq) = seq_of(&line).filter(|s| (last + 1..next).contains(s)) {
                found.entry(seq).or_insert(line);
            }
        }
    }
}

/// The `N`s of the `<path>.N` files in `path`'s folder.
fn rotated_numbers(path: &Path) -> Vec<u32> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_prefix(&prefix)?.parse().ok()
        })
        .collect()
}

/// The `seq` of the first and of the last event of a file (its tail only is read for
/// the last); `None` for a file without events.
fn seq_range(file: &mut File) -> io::Result<Option<(u64, u64)>> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(&mut *file);
    let mut line = String::new();
    let first = loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if let Some(seq) = seq_of(line.trim_end()) {
            break seq;
        }
    };
    drop(reader);
    let len = file.metadata()?.len();
    let mut from = len.saturating_sub(64 * 1024);
    loop {
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let tail = String::from_utf8_lossy(&tail);
        // Past the first line of a tail that starts mid-line.
        let lines = tail.lines().skip(usize::from(from > 0));
        if let Some(end) = lines.filter_map(seq_of).last() {
            return Ok(Some((first, end)));
        }
        if from == 0 {
            return Ok(Some((first, first)));
        }
        from = 0;
    }
}

fn inode(f: &File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| m.ino())
}

fn human_event(v: &Value) -> String {
    let ts = v["ts"].as_f64().unwrap_or(0.0);
    let secs = ts as u64;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let ms = ((ts - secs as f64) * 1000.0) as u64;
    let mut line = format!(
        "{h:02}:{m:02}:{s:02}.{ms:03} #{:<6} {:<24}",
        v["seq"],
        v["event"].as_str().unwrap_or("?")
    );
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            if matches!(k.as_str(), "seq" | "ts" | "event") || val.is_null() {
                continue;
            }
            line.push_str(&format!(" {k}={}", human(val)));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of events `seqs`, each padded to about `pad` bytes.
    fn lines(seqs: impl IntoIterator<Item = u64>, pad: usize) -> String {
        seqs.into_iter()
            .map(|s| {
                format!(
                    "{}\n",
                    json!({"seq": s, "event": "x", "pad": "p".repeat(pad)})
                )
            })
            .collect()
    }

    #[test]
    fn seq_range_reads_the_first_and_the_last_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e");
        let range = |text: &str| {
            std::fs::write(&path, text).unwrap();
            seq_range(&mut File::open(&path).unwrap()).unwrap()
        };
        assert_eq!(range(""), None);
        assert_eq!(range("torn"), None);
        assert_eq!(range(&lines([7], 0)), Some((7, 7)));
        assert_eq!(
            range(&(lines(3..=9, 10) + "{\"seq\": 10, tor")),
            Some((3, 9))
        );
        // Longer than the tail that is read, and a last line longer than that tail.
        assert_eq!(range(&lines(1..=2000, 100)), Some((1, 2000)));
        assert_eq!(range(&lines(1..=3, 100_000)), Some((1, 3)));
    }

    /// Events lines from `(event, extra fields)`, `seq` from `first` and `ts` = `seq`.
    fn run_lines(first: u64, events: &[(&str, Value)]) -> String {
        events
            .iter()
            .enumerate()
            .map(|(i, (name, extra))| {
                let mut v = json!({"seq": first + i as u64, "ts": (first + i as u64) as f64, "event": name});
                for (k, x) in extra.as_object().into_iter().flatten() {
                    v[k] = x.clone();
                }
                format!("{v}\n")
            })
            .collect()
    }

    #[test]
    fn the_last_run_ends_as_its_last_events_say() {
        let started = ("supervisor_started", json!({"pid": 7}));
        let snapshot = ("snapshot", json!({"supervisor_pid": 7, "children": []}));
        let stopped = ("supervisor_stopped", json!({"code": 0}));
        let panicked = (
            "supervisor_panicked",
            json!({"message": "boom", "location": "x.rs:1:2"}),
        );
        let job = ("job_started", json!({"job_id": 1}));
        let parse = |text: String| -> Vec<Value> {
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let ending = |evs: &[(&str, Value)]| ending_of(&parse(run_lines(1, evs)));
        assert_eq!(ending(&[]), Ending::NeverStarted);
        assert_eq!(
            ending(&[snapshot.clone(), started.clone(), job.clone()]),
            Ending::Died
        );
        assert_eq!(
            ending(&[snapshot.clone(), started.clone(), stopped.clone()]),
            Ending::Cleanly { code: Some(0) }
        );
        let crashed = Ending::Crashed {
            message: "boom".into(),
            location: "x.rs:1:2".into(),
        };
        // A panic outranks the stop a panicking supervisor may still write.
        assert_eq!(
            ending(&[started.clone(), panicked.clone(), stopped.clone()]),
            crashed
        );
        // Only the last run counts.
        assert_eq!(
            ending(&[
                started.clone(),
                panicked.clone(),
                started.clone(),
                job.clone()
            ]),
            Ending::Died
        );

        // A stop that rotated the file: the new file holds only a snapshot of the same
        // supervisor, the stop is at the end of `.1`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let older = [
            snapshot.clone(),
            started.clone(),
            job.clone(),
            stopped.clone(),
        ];
        std::fs::write(rotated(&path, 1), run_lines(1, &older)).unwrap();
        std::fs::write(&path, run_lines(5, std::slice::from_ref(&snapshot))).unwrap();
        let current = read_events(&path).unwrap();
        assert_eq!(
            last_run(&path, &current),
            (Ending::Cleanly { code: Some(0) }, Some(5.0))
        );
        // ... but not when the new file is another supervisor's, dead before it wrote
        // `supervisor_started`.
        let other = ("snapshot", json!({"supervisor_pid": 8, "children": []}));
        std::fs::write(&path, run_lines(5, &[other])).unwrap();
        let current = read_events(&path).unwrap();
        assert_eq!(last_run(&path, &current), (Ending::Died, Some(5.0)));
        // A run that started in this file ends in it.
        std::fs::write(&path, run_lines(5, &[snapshot, started, job])).unwrap();
        let current = read_events(&path).unwrap();
        assert_eq!(last_run(&path, &current), (Ending::Died, Some(7.0)));
    }

    #[test]
    fn rotated_events_fill_a_gap_from_the_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // .4 is older than what was read (up to 10), .2 is gone.
        for (n, seqs) in [(4, 1..=5), (3, 6..=12), (1, 21..=25)] {
            std::fs::write(rotated(&path, n), lines(seqs, 0)).unwrap();
        }
        let mut found = BTreeMap::new();
        rotated_events(&path, 10, 24, &mut found);
        assert_eq!(
            found.keys().copied().collect::<Vec<_>>(),
            [11, 12, 21, 22, 23]
        );
        assert_eq!(seq_of(&found[&21]), Some(21));
    }
}
