//! Sharing one store with other supervisors: telling a dead instance from a live one,
//! keeping ours alive in the store, and (PostgreSQL) hearing other hosts' doorbells.
//!
//! On one host a dead supervisor is known at once: its pid is gone or names another
//! process (the instance's token is the process's start time). Across hosts, each
//! supervisor on a shared (PostgreSQL) store touches its instance every
//! `instances.touch_every_s`; one not seen for `instances.dead_after_s` is dead, and
//! whoever notices first takes its running jobs back to the queue. A supervisor that
//! cannot touch its instance fences itself before that (`run.rs`): it kills its jobs and
//! exits, so that they never run on two hosts at once.

use std::path::Path;
use std::time::Duration;

use crossbeam_channel::Sender;
use supervisor_core::backoff::{Backoff, BackoffState};
use supervisor_core::SplitMix64;
use supervisor_store::{Instance, PostgresStore};

use crate::events_file::wall_now;
use crate::ipc::Ev;

/// Who this supervisor is, to judge the others.
#[derive(Clone, Debug)]
pub struct Me {
    pub host: String,
    /// A supervisor on another host not seen for this long is dead.
    pub dead_after: Duration,
}

impl Me {
    pub fn new(dead_after: Duration) -> Me {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Me { host, dead_after }
    }

    /// Whether instance `i` (not ours) is dead, as far as we can tell at `now`.
    pub fn is_dead(&self, i: &Instance, now: f64) -> bool {
        if i.host == self.host {
            !supervisor_os::pid_alive(i.pid)
                || supervisor_os::process_start_ticks(i.pid).map(|t| t.to_string())
                    != Some(i.token.clone())
        } else {
            now - i.last_seen > self.dead_after.as_secs_f64()
        }
    }
}

/// The variable that every child and job of a supervisor carries, naming that supervisor
/// on its host ([`marker`]): a later supervisor finds by it the processes that a dead
/// one's jobs left behind.
pub const INSTANCE_VAR: &str = "SUPERVISOR_INSTANCE";

/// `pid:token`: one supervisor process on one host, even after its pid is reused.
pub fn marker(pid: u32, token: &str) -> String {
    format!("{pid}:{token}")
}

/// Kill what the jobs of dead supervisors of this host left running: only possible
/// when a supervisor and its workers died at the same instant (`pkill -9`), since a
/// worker that outlives its supervisor even briefly kills its job's process group.
/// They are found by the marker in their environment, or, for one that cleared it, by
/// its output still going to a job's log under `logs` (no live process of another
/// supervisor's writes there: we hold the state dir's pidfile). Returns the pids killed.
pub fn kill_leftovers(dead: &std::collections::BTreeSet<String>, logs: &Path) -> Vec<u32> {
    let mut pids = if dead.is_empty() {
        Vec::new()
    } else {
        supervisor_os::processes_with_env(INSTANCE_VAR, dead)
    };
    pids.extend(supervisor_os::processes_writing_under(logs));
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        let _ = supervisor_os::signal_pid(pid, supervisor_os::Sig::SIGKILL);
    }
    pids
}

/// The token that names this process among all with its pid: its start time.
pub fn token() -> String {
    supervisor_os::process_start_ticks(std::process::id())
        .unwrap_or(0)
        .to_string()
}

/// PostgreSQL: a thread that listens for the store's doorbell (`submit` and `cancel` on
/// any host NOTIFY it) and passes each ring on as [`Ev::Doorbell`]. A lost connection
/// is made again after an oslo-style backoff, then rung once: rings sent while nobody
/// listened are lost, so the grabber must look for itself.
pub fn start_listener(url: String, events: Sender<Ev>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pg-doorbell".into())
        .spawn(move || {
            let backoff = Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
                jitter: 0.75,
            };
            let mut errors = BackoffState::default();
            let mut rng = SplitMix64::new(u64::from(std::process::id()) ^ wall_now() as u64);
            let mut first = true;
            loop {
                match PostgresStore::listen(&url) {
                    Ok(mut listener) => {
                        if !first && events.send(Ev::Doorbell).is_err() {
                            return;
                        }
                        first = false;
                        errors.reset();
                        loop {
                            match listener.wait(Duration::from_secs(3600)) {
                                Ok(true) => {
                                    if events.send(Ev::Doorbell).is_err() {
                                        return;
                                    }
                                }
                                Ok(false) => {}
                                Err(e) => {
                                    log::warn!("store doorbell: {e}");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => log::warn!("store doorbell: {e}"),
                }
                // A retry loop on its own thread: nothing waits on this sleep.
                std::thread::sleep(errors.next(&backoff, &mut rng));
            }
        })
        .map(|_| ())
}
