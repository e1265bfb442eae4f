//! `supervisor reload` and `supervisor stop [--wait]`: SIGHUP or SIGTERM to the
//! supervisor that holds the pidfile. `reload` then waits for its answer in the events
//! file (`config_loaded` or `config_rejected`); `stop --wait` for it to be gone, saying
//! what it still waits for every few seconds.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use supervisor_os::{PidFile, PidFileState, Sig};

use super::config::{self, Lenient};
use super::events::{lines_from, TAIL_BYTES};
use super::status::replay::replay;
use super::{pidfile, CommandError};
use crate::events_file::read_events;
use crate::record::{EventLine, EventRecord};

/// How long `reload` (and the HTTP API's) waits for the supervisor's answer.
pub(crate) const RELOAD_ANSWER_WITHIN: Duration = ANSWER_WITHIN;

/// How long `reload` waits for the supervisor's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How often `stop --wait` says what it waits for.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How often the verbs look again.
const POLL: Duration = Duration::from_millis(50);

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
            let after = last_seq(&found.events);
            supervisor_os::signal_pid(pid, Sig::SIGHUP)?;
            answer(pid, &found.events, &found.state_dir, after)
        }
        Control::Stop { wait } => {
            let after = last_seq(&found.events);
            supervisor_os::signal_pid(pid, Sig::SIGTERM)?;
            say!("asked supervisor {pid} to stop")?;
            if wait {
                let grace = supervisor_config::load(path).ok().map(|c| c.shutdown_grace);
                wait_for_exit(pid, &pidfile, &found.events, grace)?;
                // Gone: stopped as asked (its last event says so), or died meanwhile.
                let stopped = (tail_across_rotations(&found.events).into_iter())
                    .filter(|e| e.seq > after)
                    .find_map(|e| match e.record {
                        EventRecord::SupervisorStopped { code } => Some(code),
                        _ => None,
                    });
                match stopped {
                    Some(0) => say!("supervisor {pid} stopped")?,
                    Some(code) => {
                        return Err(CommandError::Failed(anyhow::anyhow!(
                            "supervisor {pid} stopped with exit code {code}"
                        )))
                    }
                    None => {
                        return Err(CommandError::Failed(anyhow::anyhow!(
                            "supervisor {pid} is gone without stopping (killed, or it \
                             crashed): `supervisor status` tells what it left"
                        )))
                    }
                }
            }
            Ok(())
        }
    }
}

/// The supervisor's answer to a reload, as its events tell it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ReloadAnswer {
    Accepted {
        generation: u64,
        changes: Vec<String>,
    },
    Rejected {
        error: String,
    },
}

impl ReloadAnswer {
    /// The answer an event gives, if it is one (`config_loaded`, `config_rejected`).
    pub(crate) fn of(record: EventRecord) -> Option<ReloadAnswer> {
        match record {
            EventRecord::ConfigLoaded {
                generation,
                changes,
                ..
            } => Some(ReloadAnswer::Accepted {
                generation,
                changes,
            }),
            EventRecord::ConfigRejected { error, .. } => Some(ReloadAnswer::Rejected { error }),
            _ => None,
        }
    }
}

/// Wait for the answer to a reload asked after event `after`: `config_loaded` (exit 0,
/// its generation said) or `config_rejected` (exit 2, its errors said).
fn answer(pid: u32, events: &Path, state_dir: &Path, after: u64) -> Result<(), CommandError> {
    let deadline = Instant::now() + ANSWER_WITHIN;
    loop {
        // The supervisor's note of its last answer first: rotations cannot take it away.
        let noted = std::fs::read_to_string(super::reload_answer_path(state_dir))
            .ok()
            .and_then(|text| EventLine::parse(text.trim_end()));
        let found = noted.into_iter().chain(tail_across_rotations(events));
        for e in found.filter(|e| e.seq > after) {
            match ReloadAnswer::of(e.record) {
                Some(ReloadAnswer::Accepted {
                    generation,
                    changes,
                }) => {
                    say!("supervisor {pid}: accepted (generation {generation})")?;
                    for change in changes {
                        say!("  {change}")?;
                    }
                    return Ok(());
                }
                Some(ReloadAnswer::Rejected { error }) => {
                    return Err(CommandError::Usage(format!(
                        "supervisor {pid} rejected the config and runs on as before: {error}"
                    )));
                }
                None => {}
            }
        }
        if stopping(events) {
            return Err(CommandError::Failed(anyhow::anyhow!(
                "supervisor {pid} is stopping: it applies no reload"
            )));
        }
        if Instant::now() >= deadline {
            return Err(CommandError::Failed(anyhow::anyhow!(
                "asked supervisor {pid} to reload, but it has not answered within {} s",
                ANSWER_WITHIN.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the supervisor writing `events` is stopping: its last start is followed by
/// a `supervisor_stopping`.
fn stopping(events: &Path) -> bool {
    let tail = tail_across_rotations(events);
    let last = |name: &str| {
        (tail.iter())
            .filter(|e| e.record.name() == name)
            .map(|e| e.seq)
            .max()
    };
    // A start too far back to be seen says nothing: the reload is waited for.
    matches!(
        (last("supervisor_started"), last("supervisor_stopping")),
        (Some(started), Some(stopping)) if stopping > started
    )
}

/// Wait until supervisor `pid` is gone, saying at once and then every few seconds which
/// jobs it still waits for and how much of the grace is left.
fn wait_for_exit(
    pid: u32,
    pidfile: &Path,
    events: &Path,
    grace: Option<Duration>,
) -> Result<(), CommandError> {
    let asked = Instant::now();
    let mut next = asked;
    // The kernel drops the pidfile's lock when the process is gone.
    while matches!(PidFile::inspect(pidfile), PidFileState::Running(_)) {
        if Instant::now() >= next {
            let busy = running_jobs(events);
            let jobs = match busy.len() {
                0 => "no job running".to_string(),
                n => format!(
                    "{n} job(s) still running ({})",
                    busy.iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let left = grace.map_or(String::new(), |g| {
                format!(
                    "; grace left {:.0} s",
                    g.saturating_sub(asked.elapsed()).as_secs_f64()
                )
            });
            say!("waiting for supervisor {pid}: {jobs}{left}")?;
            next += PROGRESS_EVERY;
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// The jobs the supervisor's workers run, as its events file tells.
fn running_jobs(events: &Path) -> Vec<i64> {
    let events = read_events(events).unwrap_or_default();
    let mut ids: Vec<i64> = replay(&events)
        .children
        .values()
        .filter_map(|c| c.job_id)
        .collect();
    ids.sort_unstable();
    ids
}

/// The last events of the events file (its last 64 KiB), parsed.
fn tail(events: &Path) -> Vec<EventLine> {
    let Ok(mut file) = File::open(events) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    lines_from(&mut file, len.saturating_sub(TAIL_BYTES))
        .unwrap_or_default()
        .iter()
        .filter_map(|l| EventLine::parse(l))
        .collect()
}

/// The last events of the events file and of the files it was rotated to
/// (`<path>.1`, `.2`, ...): the answer may have been written just before a rotation.
fn tail_across_rotations(events: &Path) -> Vec<EventLine> {
    let rotated = (1..=MAX_ROTATED)
        .map(|n| crate::events_file::rotated(events, n))
        .take_while(|p| p.exists());
    std::iter::once(events.to_path_buf())
        .chain(rotated)
        .flat_map(|p| tail(&p))
        .collect()
}

/// How many rotated files `reload` looks into for its answer (rotations during its wait).
const MAX_ROTATED: u32 = 32;

/// The last event's seq (0: none yet), wherever it is: a file just rotated may hold
/// nothing yet.
fn last_seq(events: &Path) -> u64 {
    (tail_across_rotations(events).iter())
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
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
