//! `supervisor submit`: queue one job given by flags, or a file of JSON lines (all or
//! nothing), print their ids, and ring the running supervisor's doorbell.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use supervisor_store::{NewJob, StoreError};

use super::format::{parse_duration, parse_time};
use super::{config, open_store, ring, CommandError};
use crate::events_file::wall_now;

/// `supervisor submit`'s arguments.
#[derive(Debug, Args)]
pub struct SubmitArgs {
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
    /// Higher runs first (default 0); first come first served within a priority.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    priority: Option<String>,
    /// Run only once this job succeeded (repeatable); if it ends otherwise, this job is
    /// canceled.
    #[arg(long = "after", value_name = "ID")]
    after: Vec<String>,
    /// Not before this long from now (90, 1.5s, 10m, 1h30m, 7d).
    #[arg(long, value_name = "DURATION", conflicts_with = "at")]
    delay: Option<String>,
    /// Not before this time (RFC 3339, like 2026-12-01T08:00:00Z).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Queue one job per line of this JSON-lines file (all or nothing).
    #[arg(long, value_name = "JOBS.jsonl", conflicts_with_all = ["group", "tags", "timeout", "max_attempts", "key", "env", "cwd", "priority", "after", "delay", "at", "command"])]
    file: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// `supervisor submit`.
pub fn submit(path: &Path, args: SubmitArgs) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let here = std::env::current_dir().ok();
    let (jobs, lines) = match &args.file {
        Some(file) => jobs_of_file(file, here.as_deref())?,
        None => (vec![job_of_flags(&args, here.as_deref())?], vec![]),
    };
    let mut store = open_store(&config.store)?;
    // A job the store refuses (an `after` naming no job) is named as its source says:
    // by its line in the file, or by its flag.
    let refused = |index: usize, message: &str| match (&args.file, lines.get(index)) {
        (Some(file), Some(line)) => CommandError::JobFile {
            file: file.clone(),
            errors: vec![format!("line {line}: {message}")],
        },
        _ => CommandError::Usage(as_flag(message)),
    };
    let (ids, warning) = queue(&config, &mut store, &jobs, refused)?;
    if let Some(w) = warning {
        eprintln!("supervisor: warning: {w}");
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    for id in ids {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    Ok(())
}

/// Queue `jobs`, all or none (`submit` and the HTTP API), and ring the supervisor's
/// doorbell. Returns their ids, and a warning if no group of the config takes some.
/// A job the store refuses becomes the error `refused` makes of its index (from 0) in
/// `jobs` and what is wrong with it.
pub(crate) fn queue(
    config: &supervisor_config::Config,
    store: &mut crate::store::Store,
    jobs: &[NewJob],
    refused: impl FnOnce(usize, &str) -> CommandError,
) -> Result<(Vec<i64>, Option<String>), CommandError> {
    let ids = match store.submit(jobs, wall_now()) {
        Ok(ids) => ids,
        Err(StoreError::InvalidJob { index, message }) => return Err(refused(index, &message)),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot queue the job").into()),
    };
    // The doorbell first: the jobs are queued whatever becomes of our output. Warned of
    // once they are queued (a refused submit warns of nothing).
    ring(config);
    Ok((ids, untaken(config, jobs)))
}

/// The jobs of `submit --file`, each line a job, each `cwd` resolved against `here`; and
/// the line (from 1) of each.
fn jobs_of_file(
    file: &Path,
    here: Option<&Path>,
) -> Result<(Vec<NewJob>, Vec<usize>), CommandError> {
    let bytes = std::fs::read(file)
        .map_err(|e| CommandError::Usage(format!("{}: cannot read: {e}", file.display())))?;
    let text = supervisor_config::utf8_text(&bytes).map_err(|e| {
        CommandError::Usage(format!(
            "{}:{}:{}: {}; nothing was queued",
            file.display(),
            e.line,
            e.column,
            e.message
        ))
    })?;
    let bad_lines = |errors| CommandError::JobFile {
        file: file.to_path_buf(),
        errors,
    };
    let mut jobs = supervisor_store::parse_jobs_jsonl(text).map_err(bad_lines)?;
    // The lines that hold a job: all but the blank ones, as the parser reads them.
    let lines: Vec<usize> = (text.lines().enumerate())
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, _)| i + 1)
        .collect();
    for (j, line) in jobs.iter_mut().zip(&lines) {
        j.cwd = resolve_cwd(j.cwd.as_deref().map(Path::new), here)
            .map_err(|e| bad_lines(vec![format!("line {line}: {e}")]))?;
    }
    if jobs.is_empty() {
        return Err(CommandError::Usage(format!(
            "{}: no jobs in the file",
            file.display()
        )));
    }
    Ok((jobs, lines))
}

/// The job that `submit`'s flags describe, checked as the store checks it.
fn job_of_flags(args: &SubmitArgs, here: Option<&Path>) -> Result<NewJob, CommandError> {
    let tags = pairs("--tag", &args.tags).map_err(CommandError::Usage)?;
    let env = pairs("--env", &args.env).map_err(CommandError::Usage)?;
    if args.command.is_empty() {
        return Err(CommandError::Usage(
            "submit: no command given (put it after `--`), or use --file".into(),
        ));
    }
    let cwd = resolve_cwd(args.cwd.as_deref(), here)
        .map_err(|e| CommandError::Usage(format!("submit: {e}")))?;
    let priority = match &args.priority {
        None => 0,
        Some(p) => p.trim().parse::<i64>().map_err(|e| {
            use std::num::IntErrorKind::{NegOverflow, PosOverflow};
            let max = supervisor_core::bounds::MAX_PRIORITY;
            CommandError::Usage(match e.kind() {
                PosOverflow | NegOverflow => {
                    format!("submit: --priority: `{p}` is out of range (-{max} to {max})")
                }
                _ => format!("submit: --priority: `{p}` is not a whole number"),
            })
        })?,
    };
    let usage = |flag: &str, e: String| CommandError::Usage(format!("submit: {flag}: {e}"));
    let not_before = match (&args.delay, &args.at) {
        (Some(d), _) => Some(wall_now() + parse_duration(d).map_err(|e| usage("--delay", e))?),
        (None, Some(t)) => Some(parse_time(t).map_err(|e| usage("--at", e))?),
        (None, None) => None,
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
        priority,
        not_before,
        after: args
            .after
            .iter()
            .map(|id| super::parse_id(id))
            .collect::<Result<_, _>>()?,
    };
    job.validate()
        .map_err(|e| CommandError::Usage(format!("submit: {}", as_flag(&e))))?;
    Ok(job)
}

/// `--tag` or `--env` values, `KEY=VALUE` each, each key once (as a config or a job
/// line may name a key once: which value was meant would be a guess).
fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                if out.insert(k.to_string(), v.to_string()).is_some() {
                    return Err(format!("{flag}: `{k}` is given twice"));
                }
            }
            _ => return Err(format!("{flag}: expected KEY=VALUE, got `{item}`")),
        }
    }
    Ok(out)
}

/// A validation error of a job given by flags, with the flag's name for the field's.
fn as_flag(e: &str) -> String {
    const FLAGS: [(&str, &str); 8] = [
        ("after:", "--after"),
        ("priority:", "--priority"),
        ("not_before:", "--delay/--at"),
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

/// Which jobs no group of the current config takes (they are queued all the same: a
/// reload may add a group for them): one line for the first, and how many more.
fn untaken(config: &supervisor_config::Config, jobs: &[NewJob]) -> Option<String> {
    let routes = config.routes();
    let mut untaken = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| supervisor_config::route(&routes, j.group.as_deref(), &j.tags).is_none());
    let (i, first) = untaken.next()?;
    let why = match &first.group {
        Some(name) => format!(
            "it names group {name:?}, which {} lacks",
            config.path.display()
        ),
        None => {
            let tags: Vec<String> = first.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "no group of {} matches its tags [{}]",
                config.path.display(),
                tags.join(", ")
            )
        }
    };
    let which = if jobs.len() > 1 {
        format!("job {} of {}", i + 1, jobs.len())
    } else {
        "the job".to_string()
    };
    let more = untaken.count();
    let more = if more > 0 {
        format!(" (and {more} more jobs no group takes)")
    } else {
        String::new()
    };
    Some(format!(
        "no group takes {which}: {why}; it stays queued until a reload adds a group for \
         it{more}"
    ))
}
