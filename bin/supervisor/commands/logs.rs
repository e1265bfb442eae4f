//! `supervisor logs ID [--follow] [--attempt N]`: a job's output, all its attempts or one
//! of them (where each began: `joblog.rs`), and with `--follow` what it writes next,
//! until the job is final (across its retries).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use std::time::Duration;
use supervisor_config::Config;

use supervisor_store::Job;

use super::{config, open_store, parse_id, CommandError};
use crate::events_file::wall_now;
use crate::joblog;

/// How often `--follow` looks for more output and at the job's state.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// `supervisor logs`.
pub fn logs(path: &Path, id: &str, follow: bool, attempt: Option<u32>) -> Result<(), CommandError> {
    let config = config::load(path)?;
    let id = parse_id(id)?;
    let mut store = open_store(&config.store)?;
    let log = JobLog::open(&config, &mut store, id, follow, attempt)?;
    log.copy_to(&mut store, &mut io::stdout().lock())
}

/// What [`JobLog::step`] leaves to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogStep {
    /// All of it is written.
    Done,
    /// More is there to write now (the step's limit was reached).
    More,
    /// Following: nothing more yet; [`JobLog::refresh`] after [`FOLLOW_EVERY`], then step.
    Wait,
}

/// A job's log to show (`supervisor logs` and the HTTP API): all its attempts or one, and
/// with `follow` what it writes next until the job (or that attempt) is final.
#[derive(Debug)]
pub(crate) struct JobLog {
    logs: PathBuf,
    job: Job,
    follow: bool,
    attempt: Option<u32>,
    /// Bytes of the log shown (or skipped) so far.
    at: u64,
}

impl JobLog {
    /// The log of job `id`; an unknown job, or an attempt it has not had, is an error.
    pub(crate) fn open(
        config: &Config,
        store: &mut crate::store::Store,
        id: i64,
        follow: bool,
        attempt: Option<u32>,
    ) -> Result<JobLog, CommandError> {
        let job = store
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
        Ok(JobLog {
            logs: config.state_dir.join("logs"),
            job,
            follow,
            attempt,
            at: 0,
        })
    }

    /// Write the log to `out`, and follow it if asked (looking at the store every
    /// [`FOLLOW_EVERY`]); ends when `out` fails (a reader gone).
    pub(crate) fn copy_to(
        mut self,
        store: &mut crate::store::Store,
        out: &mut impl Write,
    ) -> Result<(), CommandError> {
        loop {
            match self.step(out, u64::MAX)? {
                LogStep::Done => return Ok(()),
                LogStep::More => {}
                LogStep::Wait => {
                    std::thread::sleep(FOLLOW_EVERY);
                    self.refresh(store)?;
                }
            }
        }
    }

    /// Write what is new in the log to `out`, at most `limit` bytes of it, and say what
    /// comes next.
    pub(crate) fn step(
        &mut self,
        out: &mut impl Write,
        limit: u64,
    ) -> Result<LogStep, CommandError> {
        let (id, attempt) = (self.job.id, self.attempt);
        // Final first, then read: the worker writes all of an attempt's output before
        // it reports its end, so a job seen final has its whole log on disk.
        let done = self.job.is_finished() || attempt.is_some_and(|n| self.job.attempts > n);
        let (from, to) = range(&self.logs, id, attempt)?;
        self.at = self.at.max(from);
        if to > self.at {
            let upto = to.min(self.at.saturating_add(limit));
            copy(&joblog::log_path(&self.logs, id), self.at, upto, out)?;
            self.at = upto;
            if upto < to {
                return Ok(LogStep::More);
            }
        }
        Ok(if self.follow && !done {
            LogStep::Wait
        } else {
            LogStep::Done
        })
    }

    /// The job as the store has it now.
    pub(crate) fn refresh(&mut self, store: &mut crate::store::Store) -> Result<(), CommandError> {
        self.job = refresh(store, self.job.id)?;
        Ok(())
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
