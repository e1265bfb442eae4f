//! The one error of the operator's verbs.

use std::fmt::Write as _;
use std::path::PathBuf;

use supervisor_config::ConfigError;

/// Why a verb failed. Each variant means one of the contract's exit codes, which `main`
/// maps in one place: 2 for what the operator can correct in the command line or the
/// config (bad usage, an invalid config, an unknown id), 1 when no supervisor runs or
/// anything else failed. Its `Display` is what stderr gets, every line of it.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The config file is invalid: every problem, each naming the file and the key path.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Bad usage: a bad flag or job, a word that is not a job id, a job file that cannot
    /// be read.
    #[error("supervisor: {0}")]
    Usage(String),
    /// Lines of a job file (`submit --file`) that cannot be queued; nothing was.
    #[error("{}", job_file_lines(.file, .errors))]
    JobFile { file: PathBuf, errors: Vec<String> },
    /// No job has this id.
    #[error("supervisor: unknown job id {0}")]
    UnknownJob(i64),
    /// No live supervisor holds the pidfile (or it has not written its pid yet).
    #[error("supervisor: {0}")]
    NotRunning(String),
    /// Anything else: the store, a signal, our output.
    #[error("supervisor: {0:#}")]
    Failed(#[from] anyhow::Error),
}

/// One line a problem of the job file, then what it means.
fn job_file_lines(file: &std::path::Path, errors: &[String]) -> String {
    let mut text = String::new();
    for e in errors {
        let _ = writeln!(text, "supervisor: {}: {e}", file.display());
    }
    text.push_str("supervisor: nothing was queued");
    text
}

/// The failures that `?` passes on as they are, as [`CommandError::Failed`].
macro_rules! failed_from {
    ($($error:ty),*) => {
        $(impl From<$error> for CommandError {
            fn from(e: $error) -> Self {
                CommandError::Failed(e.into())
            }
        })*
    };
}

failed_from!(
    std::io::Error,
    serde_json::Error,
    supervisor_store::StoreError
);
