//! The operator's verbs other than `run`, one file each: `submit`, `status`, `jobs`
//! (`jobs` and `job`), `cancel`, `events`, `signal` (`reload` and `stop`) and `check`.
//! Each reads the config, the store, the events file or the pidfile; none of them talks
//! to the supervisor except by a signal.
//!
//! `status`, `events`, `reload` and `stop` reach a running supervisor even when its
//! config file has errors on disk (they need only to find its state, see
//! [`config::locate`]), with a warning; the others refuse such a file.
//!
//! A verb returns `Ok(())` for exit 0, or a [`CommandError`], which says on stderr what
//! went wrong and means one of the contract's exit codes (mapped in `main`).

use std::path::{Path, PathBuf};

use supervisor_config::{Config, StoreConfig};
use supervisor_os::{PidFile, PidFileState, Sig};

/// `println!` that returns the write's error instead of panicking on it (a full disk; a
/// closed pipe, should SIGPIPE be ignored after all: see `main`).
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}

mod cancel;
mod check;
mod config;
mod control;
mod error;
mod events;
mod explain;
mod format;
mod jobs;
mod logs;
mod signal;
mod status;
mod submit;

pub use cancel::cancel;
// What the HTTP server shares with the verbs: the same reads, writes and JSON shapes.
pub(crate) use cancel::cancel_job;
pub use check::check;
pub use control::{pause, purge, retry};
pub(crate) use control::{retry_jobs, set_paused};
pub use error::CommandError;
pub use events::events;
pub use explain::explain;
pub(crate) use explain::{reasons, DisabledGroups};
pub use jobs::{job, jobs, JobsFilter};
pub(crate) use jobs::{job_filter, job_json};
pub use logs::logs;
pub(crate) use logs::{JobLog, LogStep, FOLLOW_EVERY};
pub use signal::{signal, Control};
pub(crate) use signal::{ReloadAnswer, RELOAD_ANSWER_WITHIN};
pub(crate) use status::replay::Replay;
pub(crate) use status::running_json;
pub use status::status;
pub(crate) use submit::queue;
pub use submit::{submit, SubmitArgs};

pub(crate) fn open_store(store: &StoreConfig) -> anyhow::Result<crate::store::Store> {
    crate::store::open(store)
}

/// The store, if it exists: a SQLite file not created yet is `None` (`status` creates
/// nothing).
fn open_existing_store(store: &StoreConfig) -> anyhow::Result<Option<crate::store::Store>> {
    if let StoreConfig::Sqlite { path } = store {
        if !path.exists() {
            return Ok(None);
        }
    }
    open_store(store).map(Some)
}

fn pidfile(state_dir: &Path) -> PathBuf {
    state_dir.join("supervisor.pid")
}

/// Where the running supervisor of `state_dir` says it writes its events (next to its
/// pidfile, written at its start: the config file on disk may since have been edited,
/// or broken, and no longer say).
pub(crate) fn events_note(state_dir: &Path) -> PathBuf {
    state_dir.join("supervisor.events")
}

/// Where the running supervisor keeps its last answer to a reload (the
/// `config_loaded` or `config_rejected` line, with its seq).
pub(crate) fn reload_answer_path(state_dir: &Path) -> PathBuf {
    state_dir.join("reload.answer")
}

/// The events file the running supervisor of `state_dir` writes, if it said so.
fn running_events(state_dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(events_note(state_dir)).ok()?;
    let path = PathBuf::from(text.strip_suffix('\n')?);
    path.is_absolute().then_some(path)
}

/// The log of job `id`.
fn log_path(config: &Config, id: i64) -> PathBuf {
    crate::joblog::log_path(&config.state_dir.join("logs"), id)
}

/// Ring the running supervisor's doorbell, if one runs: its grabber looks at the store now.
fn ring(config: &Config) {
    if let PidFileState::Running(pid) = PidFile::inspect(&pidfile(&config.state_dir)) {
        if pid > 0 {
            let _ = supervisor_os::signal_pid(pid, Sig::SIGUSR1);
        }
    }
}

/// A job id given on the command line.
pub(crate) fn parse_id(id: &str) -> Result<i64, CommandError> {
    id.parse::<i64>()
        .map_err(|_| CommandError::Usage(format!("`{id}` is not a job id (a number)")))
}
