//! The config file as the verbs read it: strictly ([`load`]: the verbs that act on the
//! store or start anything) or leniently ([`locate`]: the verbs that must reach a running
//! supervisor whatever the file on disk says).

use std::path::Path;

use supervisor_config::{Config, ConfigError, Locations};

use super::CommandError;

/// The config file at `path`, refused if it has any error.
pub(super) fn load(path: &Path) -> Result<Config, CommandError> {
    Ok(supervisor_config::load(path)?)
}

/// The verbs that reach a supervisor whatever the state of its config file.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lenient {
    Status,
    Events,
    Reload,
    Stop,
}

impl Lenient {
    /// What the errors of the config file mean for this verb.
    fn meaning(self) -> &'static str {
        match self {
            Lenient::Reload => {
                "the supervisor will reject it (config_rejected) and keep the config it runs with"
            }
            Lenient::Stop => "a new `supervisor run` would refuse it",
            Lenient::Status | Lenient::Events => {
                "a reload would be rejected and a new `supervisor run` would refuse it"
            }
        }
    }
}

/// Where the supervisor of the config file at `path` keeps its state. A file with errors
/// is located leniently, its errors printed as a warning with what they mean for `verb`;
/// an error only when even that is impossible (then with both sets of problems).
pub(super) fn locate(path: &Path, verb: Lenient) -> Result<Locations, CommandError> {
    let mut found = locate_in_file(path, verb)?;
    // A supervisor running there writes the events file it started with, whatever the
    // file says now (a changed `events.path` is rejected by its reload).
    if matches!(
        supervisor_os::PidFile::inspect(&super::pidfile(&found.state_dir)),
        supervisor_os::PidFileState::Running(_)
    ) {
        if let Some(events) = super::running_events(&found.state_dir) {
            found.events = events;
        }
    }
    Ok(found)
}

/// [`locate`] as the config file says.
fn locate_in_file(path: &Path, verb: Lenient) -> Result<Locations, CommandError> {
    let errors = match supervisor_config::load(path) {
        Ok(config) => return Ok(config.locations()),
        Err(e) => e,
    };
    let found = supervisor_config::locate(path).map_err(|e| ConfigError {
        errors: [errors.errors.clone(), e.errors].concat(),
    })?;
    let name = path.display();
    eprintln!("supervisor: warning: the config file {name} has errors:");
    for line in &errors.errors {
        eprintln!("  {line}");
    }
    eprintln!("supervisor: warning: {}", verb.meaning());
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
