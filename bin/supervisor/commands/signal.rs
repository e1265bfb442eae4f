//! `supervisor reload` and `supervisor stop [--wait]`: SIGHUP or SIGTERM to the
//! supervisor that holds the pidfile.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use supervisor_os::{PidFile, PidFileState, Sig};

use super::config::{self, Lenient};
use super::{pidfile, CommandError};

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
pub fn signal(path: &Path, what: Control) -> Result<(), CommandError> {
    let verb = match what {
        Control::Reload => Lenient::Reload,
        Control::Stop { .. } => Lenient::Stop,
    };
    let found = config::locate(path, verb)?;
    let pidfile = pidfile(&found.state_dir);
    let pid = match PidFile::inspect(&pidfile) {
        PidFileState::Running(pid) if pid > 0 => pid,
        other => return Err(CommandError::NotRunning(why_not(&pidfile, &other))),
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
    Ok(())
}

/// Why no supervisor can be signalled, as the pidfile's state says.
fn why_not(pidfile: &Path, state: &PidFileState) -> String {
    match state {
        PidFileState::Running(_) => "the supervisor is still starting; try again".into(),
        PidFileState::Missing => format!("not running (no pidfile at {})", pidfile.display()),
        PidFileState::Stale(pid) => format!(
            "not running: {} is stale (it names pid {}, which no supervisor holds; not signalled)",
            pidfile.display(),
            pid.map_or("?".into(), |p| p.to_string())
        ),
    }
}
