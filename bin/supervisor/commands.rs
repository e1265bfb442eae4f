//! The operator's verbs other than `run`: submit, status, jobs, job, cancel, events,
//! reload, stop and check. Each reads the config, the store, the events file or the
//! pidfile; none of them talks to the supervisor except by a signal.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};
use supervisor_config::{Config, StoreConfig};
use supervisor_os::{PidFile, PidFileState, Sig};
use supervisor_store::{CancelResult, Job, JobState, JobStore, NewJob, SqliteStore};

use crate::events_file::{read_events, wall_now};
use crate::run::{EXIT_FAILURE, EXIT_USAGE};
use crate::ConfigArg;

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

fn open_store(config: &Config) -> Result<SqliteStore> {
    match &config.store {
        StoreConfig::Sqlite { path } => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            SqliteStore::open(path)
                .with_context(|| format!("cannot open the job store {}", path.display()))
        }
        StoreConfig::Postgres { .. } => {
            anyhow::bail!("the postgres store is not available in this build")
        }
    }
}

fn pidfile(config: &Config) -> PathBuf {
    config.state_dir.join("supervisor.pid")
}

/// Ring the running supervisor's doorbell, if one runs: its grabber looks at the store now.
fn ring(config: &Config) {
    if let PidFileState::Running(pid) = PidFile::inspect(&pidfile(config)) {
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
                for j in &mut jobs {
                    j.cwd = resolve_cwd(j.cwd.as_deref(), here.as_deref());
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
        let job = NewJob {
            command: args.command.clone(),
            group: args.group.clone(),
            tags,
            env,
            cwd: resolve_cwd(
                args.cwd
                    .as_deref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .as_deref(),
                here.as_deref(),
            ),
            timeout_s: args.timeout,
            max_attempts: args.max_attempts,
            key: args.key.clone(),
        };
        if let Err(e) = job.validate() {
            eprintln!("supervisor: submit: {e}");
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
    let mut store = open_store(&config)?;
    let ids = match store.submit(&jobs, wall_now()) {
        Ok(ids) => ids,
        Err(e @ supervisor_store::StoreError::InvalidJob { .. }) => {
            eprintln!("supervisor: {e}");
            return Ok(EXIT_USAGE);
        }
        Err(e) => return Err(e).context("cannot queue the job"),
    };
    let mut out = std::io::stdout().lock();
    for id in ids {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    ring(&config);
    Ok(0)
}

fn resolve_cwd(cwd: Option<&str>, here: Option<&Path>) -> Option<String> {
    match (cwd, here) {
        (Some(c), Some(h)) => Some(h.join(c).to_string_lossy().into_owned()),
        (Some(c), None) => Some(c.to_string()),
        (None, h) => h.map(|h| h.to_string_lossy().into_owned()),
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
    let mut store = open_store(&config)?;
    let jobs = store.list(state, wall_now())?;
    if as_json {
        let list: Vec<Value> = jobs.iter().map(|j| job_json(&config, j)).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:>6}  {:<10} {:<12} {:>8}  {:>5}  COMMAND",
        "ID", "STATE", "GROUP", "ATTEMPTS", "EXIT"
    );
    for j in &jobs {
        let exit = match (j.exit_code, j.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            _ => "-".into(),
        };
        println!(
            "{:>6}  {:<10} {:<12} {:>8}  {:>5}  {}",
            j.id,
            j.state.as_str(),
            j.group.as_deref().unwrap_or("-"),
            j.attempts,
            exit,
            j.command.join(" ")
        );
    }
    Ok(0)
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
    let mut store = open_store(&config)?;
    let Some(j) = store.get(id, wall_now())? else {
        eprintln!("supervisor: unknown job id {id}");
        return Ok(EXIT_USAGE);
    };
    let v = job_json(&config, &j);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (k, val) in v.as_object().expect("an object") {
            println!("{k:>12}: {}", human(val));
        }
    }
    Ok(0)
}

fn human(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
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
    let mut store = open_store(&config)?;
    match store.cancel(id, wall_now())? {
        CancelResult::Canceled => println!("job {id} canceled"),
        CancelResult::Requested => {
            ring(&config);
            println!("job {id} is running: it is being stopped and will be canceled");
        }
        CancelResult::AlreadyFinished(state) => {
            println!("job {id} already finished: {}", state.as_str())
        }
        CancelResult::Unknown => {
            eprintln!("supervisor: unknown job id {id}");
            return Ok(EXIT_USAGE);
        }
    }
    Ok(0)
}

/// `supervisor check`.
pub fn check(path: &Path) -> Result<i32> {
    match supervisor_config::load(path) {
        Ok(c) => {
            println!("{}", c.summary());
            Ok(0)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(EXIT_USAGE)
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
pub fn signal(path: &Path, what: Control) -> Result<i32> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let pidfile = pidfile(&config);
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
            println!("asked supervisor {pid} to reload");
        }
        Control::Stop { wait } => {
            supervisor_os::signal_pid(pid, Sig::SIGTERM)?;
            println!("asked supervisor {pid} to stop");
            if wait {
                // The kernel drops the pidfile's lock when the process is gone.
                while matches!(PidFile::inspect(&pidfile), PidFileState::Running(_)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                println!("supervisor {pid} stopped");
            }
        }
    }
    Ok(0)
}

/// The child table and supervisor facts rebuilt from the events file.
#[derive(Debug, Default)]
struct Replay {
    supervisor_pid: Option<u64>,
    stopped: bool,
    /// (role, group, slot) → row.
    children: BTreeMap<(String, Option<String>, Option<u64>), Value>,
    started_ts: BTreeMap<(String, Option<String>, Option<u64>), f64>,
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
                r.stopped = false;
                r.children.clear();
                for c in e["children"].as_array().into_iter().flatten() {
                    r.children.insert(key_of(c), c.clone());
                }
            }
            "supervisor_started" => {
                r.supervisor_pid = e["pid"].as_u64();
                r.stopped = false;
            }
            "child_started" | "child_ready" => {
                let k = key_of(e);
                let row = r.children.entry(k.clone()).or_insert_with(|| {
                    json!({"role": k.0, "group": k.1, "slot": k.2, "restarts": 0, "job_id": null})
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
                    r.started_ts.insert(k, e["ts"].as_f64().unwrap_or(0.0));
                }
            }
            "child_exited" => {
                if let Some(row) = r.children.get_mut(&key_of(e)) {
                    row["state"] = json!("exited");
                    row["job_id"] = Value::Null;
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
            "supervisor_stopped" => r.stopped = true,
            _ => {}
        }
    }
    r
}

/// `supervisor status`.
pub fn status(path: &Path, as_json: bool) -> Result<i32> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let state = PidFile::inspect(&pidfile(&config));
    let running_pid = match state {
        PidFileState::Running(pid) => Some(pid),
        _ => None,
    };
    let events = read_events(&config.events.path).unwrap_or_default();
    let r = replay(&events);
    let counts: BTreeMap<String, u64> =
        match open_store(&config).and_then(|mut s| Ok(s.counts(wall_now())?)) {
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
    let pid = running_pid.map(u64::from).or(r.supervisor_pid);
    let children: Vec<Value> = r.children.values().cloned().collect();
    if as_json {
        let v = json!({
            "supervisor": {"pid": pid, "running": running_pid.is_some()},
            "children": children,
            "jobs": counts,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    match (running_pid, &state) {
        (Some(p), _) => println!("supervisor: running (pid {p})"),
        (None, PidFileState::Stale(p)) => println!(
            "supervisor: not running (stale pidfile names pid {}); last known state:",
            p.map_or("?".into(), |p| p.to_string())
        ),
        (None, _) => println!(
            "supervisor: not running{}",
            if r.stopped {
                " (stopped cleanly); last known state:"
            } else {
                "; last known state:"
            }
        ),
    }
    let now = wall_now();
    println!(
        "{:<20} {:<9} {:>8} {:>9} {:>8}  JOB",
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS"
    );
    for (k, c) in &r.children {
        let name = match (&k.1, k.2) {
            (Some(g), Some(s)) => format!("{g}/{s}"),
            _ => k.0.clone(),
        };
        let state = c["state"].as_str().unwrap_or("?");
        let uptime = match (state, r.started_ts.get(k)) {
            ("exited", _) | (_, None) => "-".to_string(),
            (_, Some(t)) => format_duration(now - t),
        };
        println!(
            "{:<20} {:<9} {:>8} {:>9} {:>8}  {}",
            name,
            state,
            human(&c["pid"]),
            uptime,
            human(&c["restarts"]),
            human(&c["job_id"])
        );
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("jobs: {}", summary.join(", "));
    Ok(0)
}

fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `supervisor events [--follow]`.
pub fn events(path: &Path, follow: bool, as_json: bool) -> Result<i32> {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let human_form = !as_json && std::io::stdout().is_terminal();
    let file_path = config.events.path.clone();
    let mut out = std::io::stdout().lock();
    let print = |line: &str, out: &mut std::io::StdoutLock| -> std::io::Result<()> {
        if line.trim().is_empty() {
            return Ok(());
        }
        if human_form {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                return writeln!(out, "{}", human_event(&v));
            }
        }
        writeln!(out, "{line}")
    };
    let mut file = match std::fs::File::open(&file_path) {
        Ok(f) => Some(f),
        Err(e) if follow => {
            log::info!("{}: {e}; waiting for it", file_path.display());
            None
        }
        Err(e) => {
            eprintln!("supervisor: {}: {e}", file_path.display());
            return Ok(EXIT_FAILURE);
        }
    };
    let mut pending = String::new();
    let mut ino = file.as_ref().and_then(inode);
    loop {
        if let Some(f) = file.as_mut() {
            let mut buf = String::new();
            f.read_to_string(&mut buf)?;
            pending.push_str(&buf);
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                if let Err(e) = print(line.trim_end(), &mut out) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(0);
                    }
                    return Err(e.into());
                }
            }
            out.flush()?;
        }
        if !follow {
            return Ok(0);
        }
        // Follow across rotations: when the path names a new file, finish the old one
        // (done above) and start at the top of the new one.
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(meta) = std::fs::metadata(&file_path) {
            use std::os::unix::fs::MetadataExt;
            if Some(meta.ino()) != ino {
                if let Some(f) = file.as_mut() {
                    let mut rest = String::new();
                    f.read_to_string(&mut rest)?;
                    pending.push_str(&rest);
                }
                file = std::fs::File::open(&file_path).ok();
                ino = file.as_ref().and_then(inode);
            } else if let Some(f) = file.as_mut() {
                // Truncated in place (copytruncate): start over.
                if meta.len() < f.stream_position()? {
                    f.seek(SeekFrom::Start(0))?;
                }
            }
        }
    }
}

fn inode(f: &std::fs::File) -> Option<u64> {
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
