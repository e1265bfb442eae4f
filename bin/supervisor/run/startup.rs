//! Starting `supervisor run`: the state dir and the pidfile, the store and what dead
//! runs left in it (outcomes in the journal, jobs of dead supervisors, their processes),
//! the helper threads, then the loop.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::Sender;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use supervisor_config::{Config, StoreConfig};
use supervisor_core::supervision::{Core, Input, TimerTable};
use supervisor_core::SplitMix64;
use supervisor_os::{PidFile, PidFileState};

use crate::checkpointer::Checkpointer;
use crate::events_file::{wall_now, EventsFile};
use crate::instances::Me;
use crate::ipc::{Ev, Hub};
use crate::notify::Notifier;
use crate::pending::{Handed, HeldEvent, Pending};
use crate::record::{EventRecord, JobOutcome};

use super::panics::{injected_fault, install_panic_hook, Fault, LAST_PANIC, PANIC_TX};
use super::{Supervisor, EXIT_FAILURE, EXIT_USAGE};

/// Run the supervisor in the foreground until it stops; returns the exit code.
pub fn run(config_path: &Path, until_empty: bool) -> Result<i32> {
    let config = match supervisor_config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(EXIT_USAGE);
        }
    };
    // A token file that cannot be used stops the start before anything is touched.
    if let Some(Err(e)) = config.http.as_ref().map(|h| h.read_token()) {
        eprintln!("{}: {e}", config.path.display());
        return Ok(EXIT_USAGE);
    }
    let Some(_pidfile) = take_state_dir(&config)? else {
        return Ok(EXIT_FAILURE);
    };
    supervisor_os::become_subreaper().context("cannot become child subreaper")?;
    install_panic_hook();

    // Before the store is opened (and an SQLite file made): a journal of another
    // store's outcomes refuses this run.
    let journal = journal_of_this_store(&config)?;
    let store_arg = crate::store::arg(&config.store);
    let mut store = crate::store::open_for_loop(&store_arg)
        .with_context(|| format!("cannot open the job store {}", config.store.describe()))?;
    let checkpointer = match &config.store {
        StoreConfig::Sqlite { path } => Some(Checkpointer::start(path)?),
        StoreConfig::Postgres { .. } => None,
    };
    let me = Me::new(config.instances.dead_after);
    let pid = std::process::id();
    let token = crate::instances::token();
    let instance = store.register_instance(&me.host, pid, &token, wall_now())?;
    let left = take_over(&mut store, &config, journal, instance, &me)?;

    let retention = crate::retention::Retention::start(
        store_arg.clone(),
        config.state_dir.join("logs"),
        config.retention.clone(),
    )
    .context("cannot start the retention thread")?;
    let (queue_tx, queue_rx) = crossbeam_channel::unbounded::<Ev>();
    let _ = PANIC_TX.set(queue_tx.clone());
    start_signal_thread(queue_tx.clone())?;
    watch_state_dir(&config.state_dir, queue_tx.clone())?;
    let lease = start_lease(&config, &store_arg, instance, me, &queue_tx)?;
    let hub = Hub::start(queue_tx.clone(), crate::instances::marker(pid, &token))
        .context("cannot start the IPC hub")?;
    let mut events = EventsFile::open(
        &config.events.path,
        config.events.rotate_bytes,
        config.events.keep,
    )
    .with_context(|| {
        format!(
            "cannot open the events file {}",
            config.events.path.display()
        )
    })?;
    let http = match crate::http::Server::start(&config, &mut events) {
        Ok(h) => h,
        Err(crate::http::StartError::Config(e)) => {
            eprintln!("{}: {e}", config.path.display());
            return Ok(EXIT_USAGE);
        }
        Err(crate::http::StartError::Other(e)) => return Err(e),
    };
    let seed = (wall_now() * 1e9) as u64 ^ u64::from(pid);
    let core = Core::new(config.spec(until_empty), Box::new(SplitMix64::new(seed)));
    let mut sv = Supervisor {
        config,
        generation: 1,
        core,
        started: Instant::now(),
        events,
        store,
        checkpointer,
        instance,
        hub,
        queue_tx,
        children: HashMap::new(),
        by_pid: HashMap::new(),
        claims: HashMap::new(),
        timers: TimerTable::new(),
        exit_code: None,
        lease,
        lost_claims: None,
        lost_claims_until: 0.0,
        pending_was: None,
        notifier: Notifier::from_env(),
        told_stopping: false,
        pending: Pending::default(),
        handed: Handed::default(),
        stopped_event: None,
        store_arg,
        retention,
        http,
    };
    sv.begin(left);
    sv.run_until_stopped(&queue_rx)
}

/// Create the state dir (private) and take its pidfile; `None` when another supervisor
/// runs on it (said on stderr).
fn take_state_dir(config: &Config) -> Result<Option<PidFile>> {
    // A folder everyone shares (/tmp, sticky) is not ours to fill or to close to others.
    if let Ok(meta) = std::fs::metadata(&config.state_dir) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o1000 != 0 {
            return Err(anyhow!(
                "state_dir {} is a shared folder (its sticky bit is set, as /tmp's): give \
                 the supervisor a folder of its own",
                config.state_dir.display()
            ));
        }
    }
    std::fs::create_dir_all(config.state_dir.join("logs"))
        .with_context(|| format!("cannot create the state dir {}", config.state_dir.display()))?;
    // It holds what operators pass to jobs and what jobs print: no one else's to read.
    for dir in [config.state_dir.clone(), config.state_dir.join("logs")] {
        tighten(&dir)?;
    }
    tighten_files(config);
    let pid_path = config.state_dir.join("supervisor.pid");
    match PidFile::acquire(&pid_path) {
        Ok(p) => {
            // Where our events go, for the verbs (`reload` waits there for our answer)
            // once the config file on disk says otherwise or nothing readable.
            let note = crate::commands::events_note(&config.state_dir);
            let events = std::path::absolute(&config.events.path)
                .unwrap_or_else(|_| config.events.path.clone());
            let text = format!("{}\n", events.display());
            let tmp = note.with_extension("events.tmp");
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, &note))
                .with_context(|| format!("cannot write {}", note.display()))?;
            Ok(Some(p))
        }
        Err(PidFileState::Running(pid)) => {
            eprintln!(
                "supervisor: another supervisor (pid {pid}) is already running on {}",
                config.state_dir.display()
            );
            Ok(None)
        }
        Err(_) => Err(anyhow!("cannot create the pidfile {}", pid_path.display())),
    }
}

/// What dead runs left that the new one says once its events file is open.
struct LeftBehind {
    /// The events of the outcomes stored from the journal.
    replayed: Vec<HeldEvent>,
    /// The attempts of dead supervisors' jobs, ended (`job_finished`, `lost`) as they
    /// were taken back: each `job_started` has its end.
    lost: Vec<HeldEvent>,
    /// Jobs taken back from dead supervisors and quarantined: (id, attempts, reason).
    quarantined: Vec<(i64, u32, String)>,
}

/// Take over what dead runs left: the outcomes in the journal (stored first, under the
/// owner that ran them, so that taking back a dead run's jobs does not run those
/// attempts again), the jobs of dead supervisors (requeued, or quarantined), and the
/// processes of their jobs on this host.
fn take_over(
    store: &mut crate::store::Store,
    config: &Config,
    journal: (PathBuf, crate::journal::Loaded),
    instance: i64,
    me: &Me,
) -> Result<LeftBehind> {
    let now = wall_now();
    // Dead supervisors of this host: their jobs' processes, if any survived, go too.
    let dead_here: BTreeSet<String> = store
        .instances()?
        .iter()
        .filter(|i| i.id != instance && i.host == me.host && me.is_dead(i, now))
        .map(|i| crate::instances::marker(i.pid, &i.token))
        .collect();
    let replayed = replay_journal(store, config, journal, now)?;
    let orphans = store.requeue_orphans(instance, &|i| me.is_dead(i, now), now)?;
    let lost = lost_attempts(store, &orphans, now);
    // Those whose supervisors keep dying under them are dead now.
    let quarantined = quarantined(store, &orphans, now);
    let killed = crate::instances::kill_leftovers(&dead_here, &config.state_dir.join("logs"));
    if !killed.is_empty() {
        log::warn!("killed processes {killed:?} left behind by the jobs of a dead supervisor");
    }
    if !orphans.is_empty() {
        log::info!(
            "requeued {} job(s) held by a dead supervisor",
            orphans.len()
        );
    }
    Ok(LeftBehind {
        replayed,
        lost,
        quarantined,
    })
}

/// The outcomes journal, unless it holds outcomes (or stopped runs) of another store
/// than the config's: those cannot be stored in this one, nor dropped, so the run
/// refuses to start.
fn journal_of_this_store(config: &Config) -> Result<(PathBuf, crate::journal::Loaded)> {
    let journal = crate::journal::path(&config.state_dir);
    let loaded = crate::journal::load(&journal)
        .with_context(|| format!("cannot read the outcomes journal {}", journal.display()))?;
    let ours = store_identity(&config.store);
    let stores =
        (loaded.outcomes.iter().map(|j| &j.store)).chain(loaded.stopped.iter().map(|s| &s.1));
    if let Some(other) = stores.flatten().find(|s| **s != ours) {
        bail!(
            "{} holds {} outcome(s) of jobs of another store ({other}) than this config's \
             ({ours}): run once with that store to store them, or remove the file to give \
             them up",
            journal.display(),
            loaded.outcomes.len()
        );
    }
    Ok((journal, loaded))
}

/// Store the outcomes a previous run could not, from the outcomes journal (as
/// [`journal_of_this_store`] read it, before the store was opened), then give
/// back the jobs of the runs that stopped without giving them back; returns the events
/// of the outcomes stored.
fn replay_journal(
    store: &mut crate::store::Store,
    config: &Config,
    (journal, loaded): (PathBuf, crate::journal::Loaded),
    now: f64,
) -> Result<Vec<HeldEvent>> {
    let ours = store_identity(&config.store);
    let (mut stored, mut stale) = (0, 0);
    let mut events = Vec::new();
    for crate::journal::Journaled { waiting: w, .. } in loaded.outcomes {
        match store.settle(&[w.settle(now)]).map(|s| s.first().copied()) {
            Ok(Some(settled)) => {
                // Stale: another run took the job on since; what it says stands.
                if settled.stored() {
                    stored += 1;
                    events.extend(crate::pending::as_settled(w, settled));
                } else {
                    stale += 1;
                }
            }
            Ok(None) => bail!(
                "the store said nothing of an outcome of {}",
                journal.display()
            ),
            Err(e) => {
                return Err(anyhow!(e)).with_context(|| {
                    format!(
                        "cannot store the outcomes a previous run left in {}",
                        journal.display()
                    )
                })
            }
        }
    }
    if stored + stale > 0 {
        log::warn!(
            "stored {stored} outcome(s) a previous run left in {} ({stale} stale: their \
             jobs were taken on since)",
            journal.display()
        );
    }
    // A stop that could not give its jobs back (or would have given back those whose
    // outcome waited): given back now, as that stop would have, not taken for a death.
    for (instance, _) in &loaded.stopped {
        let ids = store
            .unregister_instance(*instance, now)
            .context("cannot give back the jobs of a run that stopped")?;
        if !ids.is_empty() {
            log::info!(
                "gave back jobs {ids:?} of the run that stopped before (instance {instance})"
            );
        }
    }
    if stored + stale > 0 || !loaded.stopped.is_empty() {
        crate::journal::save(&journal, &ours, [].iter(), None)
            .context("cannot clear the outcomes journal")?;
    }
    Ok(events)
}

/// The store as the outcomes journal names it: an SQLite file by its canonical path (a
/// link or `..` name the same store), PostgreSQL by its URL without the password.
pub(super) fn store_identity(store: &supervisor_config::StoreConfig) -> String {
    match store {
        StoreConfig::Sqlite { path } => {
            // A file not made yet is named by its directory's canonical path.
            let path = std::fs::canonicalize(path)
                .or_else(|e| match (path.parent(), path.file_name()) {
                    (Some(dir), Some(name)) => Ok(std::fs::canonicalize(dir)?.join(name)),
                    _ => Err(e),
                })
                .unwrap_or_else(|_| path.clone());
            format!("sqlite {}", path.display())
        }
        StoreConfig::Postgres { .. } => store.describe(),
    }
}

/// A store shared across hosts: keep our instance alive there, find dead ones, and hear
/// the doorbell of `submit` on any host.
fn start_lease(
    config: &Config,
    store_arg: &crate::wire::StoreArg,
    instance: i64,
    me: Me,
    queue_tx: &Sender<Ev>,
) -> Result<Option<crate::lease::Lease>> {
    let StoreConfig::Postgres { url } = &config.store else {
        return Ok(None);
    };
    crate::instances::start_listener(url.clone(), queue_tx.clone())
        .context("cannot start the store doorbell thread")?;
    let timings = crate::lease::Timings {
        touch_every: config.instances.touch_every,
        fence_after: config.instances.fence_after(),
        dead_after: config.instances.dead_after,
    };
    let lease =
        crate::lease::Lease::start(store_arg.clone(), instance, me, timings, queue_tx.clone())
            .context("cannot start the lease threads")?;
    Ok(Some(lease))
}

impl Supervisor {
    /// The first records of the run, what dead runs left, then the core's start.
    fn begin(&mut self, left: LeftBehind) {
        self.snapshot();
        self.emit(EventRecord::SupervisorStarted {
            pid: std::process::id(),
            config: self.config.path.to_string_lossy().into_owned(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        });
        self.config_event(None, Vec::new());
        for record in left.replayed.into_iter().chain(left.lost) {
            self.emit(record);
        }
        for (job, attempts, reason) in left.quarantined {
            log::error!("job {job}: {reason}; it is dead");
            self.feed(Input::JobRefused {
                job,
                attempts,
                reason,
            });
        }
        self.feed(Input::Start);
        self.notifier.ready();
    }

    /// The loop until the core says exit; a panic of the loop is written to the events
    /// file before the supervisor exits with failure.
    fn run_until_stopped(mut self, rx: &crossbeam_channel::Receiver<Ev>) -> Result<i32> {
        // A store locked for long fails the loop's calls (outcomes then wait, and are
        // tried again) rather than hold the loop up: the start waited its 5 s.
        supervisor_store::set_busy_timeout(crate::run::LOOP_STORE_WAIT);
        let looped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.event_loop(rx)));
        let code = match looped {
            Ok(code) => code,
            Err(_) => {
                let (message, location) = LAST_PANIC
                    .lock()
                    .ok()
                    .and_then(|mut p| p.take())
                    .unwrap_or_default();
                self.record_panic(&message, &location, "main");
                return Ok(EXIT_FAILURE);
            }
        };
        self.give_back_at_exit();
        Ok(code)
    }
}

/// Make a directory of the state private (0700), saying so on stderr if it was not.
fn tighten(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
        eprintln!(
            "supervisor: {} was {mode:03o}; it is now 700 (it holds job environments and \
             logs)",
            dir.display()
        );
    }
    Ok(())
}

/// Make private every file of ours in the state dir that others may read or write (left
/// so by an operator, or by an older version), and say how many there were. Ours: the
/// state dir's own files, the store and the events file with theirs when they are in
/// it, and the job logs (`logs/<id>.log`, `.attempts`, a worker's spare). Nothing else
/// a shared folder holds (a state dir of `.`), nothing through a link, nothing that
/// has other names elsewhere (a hard link).
fn tighten_files(config: &Config) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let state = &config.state_dir;
    let logs = state.join("logs");
    // The config's one list of the state dir's own files (what no path may collide with).
    let mut ours: Vec<PathBuf> = (supervisor_config::STATE_FILES.iter())
        .map(|(name, _)| state.join(name))
        .collect();
    if let supervisor_config::StoreConfig::Sqlite { path } = &config.store {
        ours.push(path.clone());
        for (suffix, _) in supervisor_config::SQLITE_FILES {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            ours.push(p.into());
        }
    }
    ours.push(config.events.path.clone());
    for n in 1..=config.events.keep.max(1) {
        ours.push(crate::events_file::rotated(&config.events.path, n));
    }
    let log_name = |name: &str| {
        let id = name
            .strip_suffix(".log")
            .or_else(|| name.strip_suffix(".attempts"));
        id.is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            || name.starts_with(".spare-")
    };
    if let Ok(entries) = std::fs::read_dir(&logs) {
        let named = entries
            .flatten()
            .filter(|e| log_name(&e.file_name().to_string_lossy()));
        ours.extend(named.map(|e| e.path()));
    }
    let mut loose = 0usize;
    for path in ours {
        // Not through a symbolic link, and only what lies in the state dir.
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        let inside = path
            .parent()
            .is_some_and(|d| d == state.as_path() || d == logs);
        let mode = meta.permissions().mode() & 0o777;
        if !inside || !meta.is_file() || meta.nlink() > 1 || mode & 0o077 == 0 {
            continue;
        }
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => loose += 1,
            Err(e) => eprintln!("supervisor: cannot make {} private: {e}", path.display()),
        }
    }
    if loose > 0 {
        eprintln!(
            "supervisor: {loose} file(s) in {} could be read or written by others; they are \
             now private to their owner",
            state.display()
        );
    }
}

/// The end of each attempt taken back from a dead supervisor (`taken`, read again as the
/// take-back left them): `lost` (its worker died with its supervisor), or `canceled` if
/// a cancel was asked for. A requeued job did not use up the attempt, which its next
/// start numbers the same.
fn lost_attempts(store: &mut crate::store::Store, taken: &[i64], now: f64) -> Vec<HeldEvent> {
    use supervisor_store::JobState;
    taken
        .iter()
        .filter_map(|&id| store.get(id, now).ok().flatten())
        .filter_map(|j| {
            let (attempt, outcome) = match j.state {
                JobState::Queued => (j.attempts.saturating_add(1), JobOutcome::Lost),
                JobState::Dead => (j.attempts, JobOutcome::Lost),
                JobState::Canceled => (j.attempts, JobOutcome::Canceled),
                _ => return None,
            };
            // A store row's time: bounded before use.
            let duration_s = (j.started_at)
                .map(|t| now - t)
                .filter(|d| d.is_finite() && *d >= 0.0)
                .unwrap_or(0.0);
            Some(EventRecord::JobFinished {
                job_id: j.id,
                group: j.group.unwrap_or_default(),
                attempt,
                outcome,
                exit_code: None,
                signal: None,
                duration_s,
                start_error: None,
                reason: Some(supervisor_core::supervision::TAKEN_BACK.into()),
            })
        })
        .collect()
}

/// Of the jobs just taken back from dead supervisors, those that the store quarantined
/// (dead, with the quarantine reason), as (id, attempts, reason).
fn quarantined(
    store: &mut crate::store::Store,
    taken: &[i64],
    now: f64,
) -> Vec<(i64, u32, String)> {
    let reason = supervisor_store::quarantine_reason();
    taken
        .iter()
        .filter_map(|&id| store.get(id, now).ok().flatten())
        .filter(|j| {
            j.state == supervisor_store::JobState::Dead && j.reason.as_deref() == Some(&reason)
        })
        .map(|j| (j.id, j.attempts, reason.clone()))
        .collect()
}

/// How often the state dir's watch looks at the pidfile.
const STATE_WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A thread that looks at our pidfile every [`STATE_WATCH_EVERY`]: removed or replaced
/// (the state dir wiped under us), the loop hears it and stops, instead of running on
/// unlinked files that no verb can reach while a new run starts beside us.
fn watch_state_dir(state_dir: &Path, tx: Sender<Ev>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let pidfile = state_dir.join("supervisor.pid");
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let ours = std::fs::metadata(&pidfile).map(id)?;
    let dir = state_dir.to_path_buf();
    std::thread::Builder::new()
        .name("state-watch".into())
        .spawn(move || loop {
            std::thread::sleep(STATE_WATCH_EVERY);
            match std::fs::metadata(&pidfile).map(id) {
                Ok(now) if now == ours => continue,
                // Another error (EACCES, EIO) says nothing of whether it is there.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => continue,
                _ => {}
            }
            let reason = format!(
                "the state dir {} was removed or replaced under the running supervisor",
                dir.display()
            );
            let _ = tx.send(Ev::StateGone { reason });
            return;
        })?;
    Ok(())
}

/// The signal thread: every signal we handle becomes an event of the loop.
fn start_signal_thread(tx: Sender<Ev>) -> Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let fault = injected_fault();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGUSR1 && fault == Some(Fault::PanicOnDoorbell) {
                    super::injected_panic(format_args!("panic-on-doorbell"));
                }
                if sig == SIGINT {
                    super::interrupted();
                }
                if tx.send(Ev::Signal(sig)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
