//! `supervisor jobs` (a table or a JSON list) and `supervisor job ID` (what happened to
//! one job, or its JSON object).

use std::io::{self, Write};
use std::path::Path;

use clap::Args;
use serde_json::{json, Value};
use supervisor_config::Config;
use supervisor_store::{Job, JobFilter, JobState};

use super::format::{format_duration, local_time, printable, shell_words};
use super::{config, log_path, open_store, parse_id, CommandError};
use crate::events_file::wall_now;

/// What `supervisor jobs` lists.
#[derive(Debug, Args)]
pub struct JobsFilter {
    /// Only jobs in this state (queued, running, succeeded, failed, timed_out, dead, canceled).
    #[arg(long)]
    state: Option<String>,
    /// Only jobs of this group (the one that ran them, else the one they are routed to).
    #[arg(long)]
    group: Option<String>,
    /// Only jobs whose last attempt ended so (succeeded, failed, timed_out, lost, canceled).
    #[arg(long)]
    outcome: Option<String>,
    /// At most this many, the newest.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The outcomes an attempt may end in, as `--outcome` takes them.
const OUTCOMES: [&str; 5] = ["succeeded", "failed", "timed_out", "lost", "canceled"];

/// `supervisor jobs`.
pub fn jobs(path: &Path, filter: &JobsFilter) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let wanted = job_filter(
        filter.state.as_deref(),
        filter.group.as_deref(),
        filter.outcome.as_deref(),
        filter
            .limit
            .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)),
    )
    .map_err(CommandError::Usage)?;
    let mut store = open_store(&config.store)?;
    let jobs = store.list_newest(&wanted, wall_now())?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if filter.json {
        let list: Vec<Value> = jobs.iter().map(|j| job_json(&config, j)).collect();
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
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
            printable(j.group.as_deref().unwrap_or("-")),
            j.attempts,
            exit,
            j.started_at.map_or("-".into(), |t| local_time(t, false)),
            ran_for(j, now).map_or("-".into(), format_duration),
            shell_words(&j.command)
        )?;
    }
    out.flush()?;
    Ok(())
}

/// `supervisor job ID`.
pub fn job(path: &Path, id: &str, as_json: bool) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let id = parse_id(id)?;
    let mut store = open_store(&config.store)?;
    let j = store
        .get(id, wall_now())?
        .ok_or(CommandError::UnknownJob(id))?;
    if as_json {
        say!("{}", serde_json::to_string_pretty(&job_json(&config, &j))?)?;
    } else {
        print_job(&config, &j)?;
        if j.state == JobState::Queued {
            // Why it waits: the first reason `explain` gives.
            let disabled =
                |g: &str| super::explain::DisabledGroups::of_file(&config.events.path).contains(g);
            let why = super::explain::reasons(&config, &mut store, &j, wall_now(), &disabled)?;
            if let Some(first) = why.first() {
                say!("  {:<12}{first}", "waiting")?;
            }
        }
    }
    Ok(())
}

/// The jobs `jobs` (and the HTTP API) list: the newest `limit` of `state`, `group` and
/// `outcome`, each checked (an error names the flag: `--state: ...`).
pub(crate) fn job_filter(
    state: Option<&str>,
    group: Option<&str>,
    outcome: Option<&str>,
    limit: u32,
) -> Result<JobFilter, String> {
    let state = state
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(|e| format!("--state: {e}"))?;
    if let Some(o) = outcome.filter(|o| !OUTCOMES.contains(o)) {
        return Err(format!(
            "--outcome: `{o}` is none of {}",
            OUTCOMES.join(", ")
        ));
    }
    Ok(JobFilter {
        state,
        group: group.map(str::to_owned),
        outcome: outcome.map(str::to_owned),
        limit,
    })
}

/// A job as `jobs --json` and `job --json` (and the HTTP API) show it.
pub(crate) fn job_json(config: &Config, j: &Job) -> Value {
    json!({
        "id": j.id,
        "state": j.state.as_str(),
        "group": j.group,
        "command": j.command,
        "attempts": j.attempts,
        "exit_code": j.exit_code,
        "signal": j.signal,
        "log": log_path(config, j.id),
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "not_before": j.not_before,
        "tags": j.tags,
        "priority": j.priority,
        "after": j.after,
        "key": j.key,
        "last_outcome": j.last_outcome,
        "cwd": j.cwd,
        "timeout_s": j.timeout_s,
        "max_attempts": j.max_attempts,
        "start_error": j.start_error,
        "reason": j.reason,
    })
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

/// `job ID` for humans: what happened, in the order one asks.
fn print_job(config: &Config, j: &Job) -> io::Result<()> {
    let group = printable(j.group.as_deref().unwrap_or("-"));
    let mut out = io::stdout().lock();
    writeln!(out, "job {}: {} (group {group})", j.id, j.state.as_str())?;
    // Every value as text a terminal shows as it is (a command's words are quoted
    // already).
    let mut row = |k: &str, v: String| writeln!(out, "  {k:<12}{}", printable(&v));
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
    let log = log_path(config, j.id);
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

/// `9 (SIGKILL)`.
fn signal_name(s: i32) -> String {
    match nix::sys::signal::Signal::try_from(s) {
        Ok(sig) => format!("{s} ({})", sig.as_str()),
        Err(_) => s.to_string(),
    }
}
