//! `supervisor logs ID [--follow] [--attempt N]`: a job's output, all its attempts or one
//! of them (where each began: `joblog.rs`), and with `--follow` what it writes next,
//! until the job is final (across its retries).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use supervisor_store::Job;

use super::{config, open_store, parse_id, CommandError};
use crate::events_file::wall_now;
use crate::joblog;

/// How often `--follow` looks for more output and at the job's state.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// `supervisor logs`.
pub fn logs(path: &Path, id: &str, follow: bool, attempt: Option<u32>) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let id = parse_id(id)?;
    let mut store = open_store(&config.store)?;
    let mut job = store
        .get(id, wall_now())?
        .ok_or(CommandError::UnknownJob(id))?;
    if let Some(n) = attempt {
        let within = n >= 1 && (n <= job.attempts || (follow && !job.is_finished()));
        if !within {
            return Err(CommandError::Usage(format!(
                "job {id} has had {} attempt(s): there is no attempt {n}",
                job.attempts
            )));
        }
    }
    let logs = config.state_dir.join("logs");
    let mut out = io::stdout().lock();
    let mut at = 0; // bytes of the log shown (or skipped) so far
    loop {
        // Final first, then read: the worker writes all of an attempt's output before
        // it reports its end, so a job seen final has its whole log on disk.
        let done = job.is_finished() || attempt.is_some_and(|n| job.attempts > n);
        let (from, to) = range(&logs, id, attempt)?;
        at = at.max(from);
        if to > at {
            copy(&joblog::log_path(&logs, id), at, to, &mut out)?;
            at = to;
        }
        if !follow || done {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_EVERY);
        job = refresh(&mut store, id)?;
    }
}

/// The job as the store has it now; gone (purged meanwhile) is the end.
fn refresh(store: &mut crate::store::Store, id: i64) -> Result<Job, CommandError> {
    store
        .get(id, wall_now())?
        .ok_or(CommandError::UnknownJob(id))
}

/// The bytes `[from, to)` of the log to show: all of it, or one attempt's.
fn range(logs: &Path, id: i64, attempt: Option<u32>) -> io::Result<(u64, u64)> {
    let len = match std::fs::metadata(joblog::log_path(logs, id)) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0, // not started yet
        Err(e) => return Err(e),
    };
    let Some(n) = attempt else {
        return Ok((0, len));
    };
    let text = match std::fs::read_to_string(joblog::attempts_path(logs, id)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok(joblog::attempt_range(&text, n, len))
}

/// Copy the bytes `[from, to)` of `path` to `out`.
fn copy(path: &Path, from: u64, to: u64, out: &mut impl Write) -> io::Result<()> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    io::copy(&mut f.take(to - from), out)?;
    out.flush()
}
