//! `supervisor run`: the thin OS shell around the core. One event loop that blocks on
//! one queue until a signal, an IPC message or the core's next deadline; it feeds the
//! core what happened and carries out what the core decides.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Map, Value};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use supervisor_config::{Config, StoreConfig};
use supervisor_core::supervision::{
    Action, ChildId, ClaimedJob, Core, Input, Next, Outcome, Role, TimerTable,
};
use supervisor_core::{SplitMix64, Time};
use supervisor_os::{PidFile, PidFileState, Sig};

use crate::checkpointer::Checkpointer;
use crate::notify::Notifier;
use crate::pending::{Pending, Tried, Waiting};
use crate::shared::Me;

use crate::events_file::{wall_now, EventsFile};
use crate::ipc::{self, Ev, Hub, Writer};
use crate::wire::{ChildArgs, ChildRole, Claim, FromChild, GrabberSettings, JobPayload, ToChild};

/// Exit codes of the contract.
pub const EXIT_FAILURE: i32 = 1;
/// Bad usage or config.
pub const EXIT_USAGE: i32 = 2;

/// A child as the shell knows it: how to reach it and whether its channel is closed.
struct ShellChild {
    pid: Option<u32>,
    ipc_name: String,
    /// When it was spawned (wall clock), for the snapshot's uptimes.
    started_at: f64,
    writer: Option<Writer>,
    closed: bool,
    /// Reaped, waiting for the channel to close before the core hears of it (at most
    /// until its [`Wake::CloseWait`]).
    exit: Option<supervisor_core::supervision::ProcessEnd>,
}

/// The running supervisor.
struct Supervisor {
    config: Config,
    generation: u64,
    core: Core,
    started: Instant,
    events: EventsFile,
    store: crate::store::Store,
    /// SQLite only: checkpoints off the hot path.
    checkpointer: Option<Checkpointer>,
    instance: i64,
    hub: Hub,
    queue_tx: Sender<Ev>,
    children: HashMap<ChildId, ShellChild>,
    by_pid: HashMap<u32, ChildId>,
    /// What workers need to run the jobs the core knows by id.
    claims: HashMap<i64, Claim>,
    /// What the loop wakes up for besides a message (see [`Wake`]).
    timers: TimerTable<Wake>,
    exit_code: Option<i32>,
    /// Shared (PostgreSQL) store: our lease there, renewed and watched by threads of
    /// its own (see `lease.rs`).
    lease: Option<crate::lease::Lease>,
    /// A failed claim pass began at this (wall) time: its claims may have committed with
    /// their answer lost; given back once the store answers.
    lost_claims: Option<f64>,
    /// How many outcomes waited before the input being fed (see `pending_changed`).
    pending_was: Option<usize>,
    notifier: Notifier,
    told_stopping: bool,
    /// Outcomes the store could not take yet, with the events that announce them.
    pending: Pending,
    /// How to open the store again when its connection broke.
    store_arg: crate::wire::StoreArg,
    /// Deletes finished jobs past the config's `retention`, on a thread of its own.
    retention: crate::retention::Retention,
}

/// What the loop wakes up for besides a message, each an entry of its timer table, handled
/// in this order when several are due.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    /// A reaped child whose channel is still open: its exit is handled anyway then.
    CloseWait(ChildId),
    /// The next try of the outcomes that wait for the store.
    Pending,
    /// SIGHUP rang: one reload pass, however many rang since the last one.
    Reload,
    /// The core's next deadline: [`Core::on_timeout`].
    Core,
}

/// The name of the event a panicking supervisor writes before it exits.
pub const PANIC_EVENT: &str = "supervisor_panicked";

/// How long a stopping supervisor keeps trying to store the outcomes that wait, before it
/// exits and leaves them to the next run (the outcomes journal).
const PENDING_AT_EXIT: Duration = Duration::from_secs(5);

/// A panic on another thread than the loop's, for the loop to record before exiting.
static PANIC_TX: std::sync::OnceLock<Sender<Ev>> = std::sync::OnceLock::new();

/// The last panic's message and location, for the loop's `catch_unwind`.
static LAST_PANIC: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);

/// Record every panic (message, location, thread) before it unwinds, and still print
/// it as Rust does. A panic on the loop's thread unwinds to `run`, which writes it to
/// the events file; one on a helper thread (hub, signals, accept) is sent to the loop,
/// which does the same. Either way the supervisor then exits with failure: its workers
/// take their jobs down (their death signal) and the next run gives those jobs back,
/// counting a death of their supervisor.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if crate::ipc::decoding_now() {
            // A child's garbage, caught where it is decoded: not a crash of ours.
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic without a message)".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        if let Ok(mut last) = LAST_PANIC.try_lock() {
            *last = Some((message.clone(), location.clone()));
        }
        if thread != "main" {
            if let Some(tx) = PANIC_TX.get() {
                let _ = tx.send(Ev::Panicked {
                    message: message.clone(),
                    location: location.clone(),
                    thread,
                });
            }
        }
        default(info);
    }));
}

/// Run the supervisor in the foreground until it stops; returns the exit code.
pub fn run(config_path: &Path, until_empty: bool) -> Result<i32> {
    let config = match supervisor_config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(EXIT_USAGE);
        }
    };
    std::fs::create_dir_all(config.state_dir.join("logs"))
        .with_context(|| format!("cannot create the state dir {}", config.state_dir.display()))?;
    // It holds what operators pass to jobs and what jobs print: no one else's to read.
    for dir in [config.state_dir.clone(), config.state_dir.join("logs")] {
        tighten(&dir)?;
    }
    let pid_path = config.state_dir.join("supervisor.pid");
    let _pidfile = match PidFile::acquire(&pid_path) {
        Ok(p) => p,
        Err(PidFileState::Running(pid)) => {
            eprintln!(
                "supervisor: another supervisor (pid {pid}) is already running on {}",
                config.state_dir.display()
            );
            return Ok(EXIT_FAILURE);
        }
        Err(_) => return Err(anyhow!("cannot create the pidfile {}", pid_path.display())),
    };
    supervisor_os::become_subreaper().context("cannot become child subreaper")?;
    install_panic_hook();

    let store_arg = crate::store::arg(&config.store);
    let mut store = crate::store::open_for_loop(&store_arg)
        .with_context(|| format!("cannot open the job store {}", config.store.describe()))?;
    let checkpointer = match &config.store {
        StoreConfig::Sqlite { path } => Some(Checkpointer::start(path)?),
        StoreConfig::Postgres { .. } => None,
    };
    let me = Me::new(config.instances.dead_after);
    let pid = std::process::id();
    let token = crate::shared::token();
    let instance = store.register_instance(&me.host, pid, &token, wall_now())?;
    let now = wall_now();
    // Dead supervisors of this host: their jobs' processes, if any survived, go too.
    let dead_here: BTreeSet<String> = store
        .instances()?
        .iter()
        .filter(|i| i.id != instance && i.host == me.host && me.is_dead(i, now))
        .map(|i| crate::shared::marker(i.pid, &i.token))
        .collect();
    // Outcomes a previous run could not store: stored first, under the owner that ran
    // them, so that taking back a dead run's jobs does not run those attempts again.
    let journal = crate::journal::path(&config.state_dir);
    let replayed = crate::journal::load(&journal)
        .with_context(|| format!("cannot read the outcomes journal {}", journal.display()))?;
    let mut replayed_events = Vec::new();
    for w in &replayed {
        match store.record_outcome(w.job, w.attempt, w.owner, &w.outcome, w.next, now) {
            Ok(stored) => {
                if stored {
                    replayed_events.extend(w.events.iter().cloned());
                }
            }
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
    if !replayed.is_empty() {
        log::warn!(
            "stored {} outcome(s) a previous run left in {}",
            replayed.len(),
            journal.display()
        );
        crate::journal::save(&journal, [].iter()).context("cannot clear the outcomes journal")?;
    }
    let orphans = store.requeue_orphans(instance, &|i| me.is_dead(i, now), now)?;
    // Those whose supervisors keep dying under them are dead now: said once the events
    // file is open.
    let quarantined = quarantined(&mut store, &orphans, now);
    let killed = crate::shared::kill_leftovers(&dead_here);
    if !killed.is_empty() {
        log::warn!("killed processes {killed:?} left behind by the jobs of a dead supervisor");
    }
    if !orphans.is_empty() {
        log::info!(
            "requeued {} job(s) held by a dead supervisor",
            orphans.len()
        );
    }

    let retention = crate::retention::Retention::start(
        store_arg.clone(),
        config.state_dir.join("logs"),
        config.retention.clone(),
    )
    .context("cannot start the retention thread")?;
    let (queue_tx, queue_rx) = crossbeam_channel::unbounded::<Ev>();
    let _ = PANIC_TX.set(queue_tx.clone());
    start_signal_thread(queue_tx.clone())?;
    // A store shared across hosts: keep our instance alive there, find dead ones, and
    // hear the doorbell of `submit` on any host.
    let lease = match &config.store {
        StoreConfig::Postgres { url } => {
            crate::shared::start_listener(url.clone(), queue_tx.clone())
                .context("cannot start the store doorbell thread")?;
            let timings = crate::lease::Timings {
                touch_every: config.instances.touch_every,
                fence_after: config.instances.fence_after(),
                dead_after: config.instances.dead_after,
            };
            Some(
                crate::lease::Lease::start(
                    store_arg.clone(),
                    instance,
                    me,
                    timings,
                    queue_tx.clone(),
                )
                .context("cannot start the lease threads")?,
            )
        }
        StoreConfig::Sqlite { .. } => None,
    };
    let hub = Hub::start(queue_tx.clone(), crate::shared::marker(pid, &token))
        .context("cannot start the IPC hub")?;
    let events = EventsFile::open(
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
        pending_was: None,
        notifier: Notifier::from_env(),
        told_stopping: false,
        pending: Pending::default(),
        store_arg,
        retention,
    };
    sv.snapshot();
    let mut f = Map::new();
    f.insert("pid".into(), json!(pid));
    f.insert("config".into(), json!(sv.config.path));
    f.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    sv.emit("supervisor_started", f);
    sv.config_event("config_loaded", None);
    for (name, fields) in replayed_events {
        sv.emit(&name, fields);
    }
    for (job, attempts, reason) in quarantined {
        log::error!("job {job}: {reason}; it is dead");
        sv.feed(Input::JobRefused {
            job,
            attempts,
            reason,
        });
    }
    sv.feed(Input::Start);
    sv.notifier.ready();
    let looped =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sv.event_loop(&queue_rx)));
    let code = match looped {
        Ok(code) => code,
        Err(_) => {
            let (message, location) = LAST_PANIC
                .lock()
                .ok()
                .and_then(|mut p| p.take())
                .unwrap_or_default();
            sv.record_panic(&message, &location, "main");
            return Ok(EXIT_FAILURE);
        }
    };
    let _ = sv.store.unregister_instance(sv.instance, wall_now());
    Ok(code)
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

/// A fault the tests inject through `SUPERVISOR_TEST_FAULT`, to see what a panic does
/// (nothing else can make the supervisor panic, by design): `panic-on-job-start` panics
/// the loop when a job starts, `panic-on-doorbell` the signal thread at a SIGUSR1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    PanicOnJobStart,
    PanicOnDoorbell,
}

fn injected_fault() -> Option<Fault> {
    match std::env::var("SUPERVISOR_TEST_FAULT").ok()?.as_str() {
        "panic-on-job-start" => Some(Fault::PanicOnJobStart),
        "panic-on-doorbell" => Some(Fault::PanicOnDoorbell),
        other => {
            log::warn!("SUPERVISOR_TEST_FAULT={other:?} is no fault this build knows");
            None
        }
    }
}

fn start_signal_thread(tx: Sender<Ev>) -> Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let fault = injected_fault();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGUSR1 && fault == Some(Fault::PanicOnDoorbell) {
                    panic!("fault injected: SUPERVISOR_TEST_FAULT=panic-on-doorbell");
                }
                if tx.send(Ev::Signal(sig)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

impl Supervisor {
    fn now(&self) -> Time {
        Time::from_origin(self.started.elapsed())
    }

    fn event_loop(&mut self, rx: &Receiver<Ev>) -> i32 {
        loop {
            if let Some(code) = self.exit_code {
                if !self.fenced() {
                    // A fenced supervisor's store is not its to write: the journal keeps
                    // what waits, for the next run.
                    self.flush_pending();
                }
                return code;
            }
            let ev = match self.timers.next_deadline() {
                Some(t) => {
                    let wait = t.saturating_since(self.now());
                    match rx.recv_timeout(wait) {
                        Ok(ev) => Some(ev),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                            return EXIT_FAILURE
                        }
                    }
                }
                None => match rx.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => return EXIT_FAILURE,
                },
            };
            if let Some(ev) = ev {
                self.on_event(ev);
                // Drain what else is queued before timers and reloads, so bursts coalesce.
                for _ in 0..256 {
                    match rx.try_recv() {
                        Ok(ev) => self.on_event(ev),
                        Err(_) => break,
                    }
                }
            }
            let now = self.now();
            for wake in self.timers.expire(now) {
                match wake {
                    Wake::CloseWait(child) => self.deliver_exit(child),
                    Wake::Pending => self.retry_pending(),
                    Wake::Reload => self.reload(),
                    Wake::Core => self.on_timeout(now),
                }
            }
            if self.core.is_stopping() && !self.told_stopping {
                self.told_stopping = true;
                self.notifier.stopping();
            }
        }
    }

    /// The core's deadline passed: let it act (a reload just before may have moved it).
    fn on_timeout(&mut self, now: Time) {
        if self.core.next_deadline().is_some_and(|t| t <= now) {
            let actions = self.core.on_timeout(now);
            self.core_timer();
            for input in self.execute(actions) {
                self.feed(input);
            }
            if let Some(was) = self.pending_was.take() {
                self.pending_changed(was);
            }
        }
    }

    /// The core's next deadline, in the loop's timer table: set after every call that
    /// may move it.
    fn core_timer(&mut self) {
        self.timers
            .set_or_stop(Wake::Core, self.core.next_deadline());
    }

    /// The next try of the outcomes that wait, in the loop's timer table.
    fn pending_timer(&mut self) {
        let at = (self.pending.deadline())
            .map(|t| Time::from_origin(t.saturating_duration_since(self.started)));
        self.timers.set_or_stop(Wake::Pending, at);
    }

    fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::Signal(SIGCHLD) => self.reap(),
            Ev::Signal(SIGTERM) => self.feed(Input::Shutdown {
                reason: "SIGTERM".into(),
                immediate: false,
            }),
            Ev::Signal(SIGINT) => self.feed(Input::Interrupt),
            Ev::Signal(SIGHUP) => {
                if let Err(e) = self.events.reopen() {
                    log::error!("cannot reopen the events file: {e}");
                }
                if self.events.is_fresh() {
                    self.snapshot();
                }
                // A burst of SIGHUPs is one reload, once the queue is drained.
                self.timers.set(Wake::Reload, self.now());
            }
            Ev::Fenced { reason } => self.feed(Input::Fenced { reason }),
            Ev::Signal(SIGUSR1) | Ev::Doorbell => {
                // The doorbell of `submit` and `cancel` (SIGUSR1 on this host, NOTIFY
                // from any host): the grabber looks at the store now.
                if let Some(g) = self.core.grabber() {
                    self.send(g, ToChild::Wake);
                }
            }
            Ev::Signal(other) => log::debug!("ignoring signal {other}"),
            Ev::Connected { child, sender } => match self.children.get_mut(&child) {
                Some(c) if c.exit.is_none() => c.writer = Some(Writer::start(child, sender)),
                _ => {}
            },
            Ev::HandshakeFailed { child, error } => {
                log::debug!("child {child}: handshake failed: {error}");
                if let Some(c) = self.children.get_mut(&child) {
                    c.closed = true;
                }
                self.maybe_deliver_exit(child);
            }
            Ev::Closed { child } => {
                if let Some(c) = self.children.get_mut(&child) {
                    c.closed = true;
                }
                self.maybe_deliver_exit(child);
            }
            Ev::BadMessage { child, error } => {
                log::error!("child {child} sent an undecodable message: {error}; killing it");
                if let Some(pid) = self.children.get(&child).and_then(|c| c.pid) {
                    let _ = supervisor_os::signal_pid(pid, Sig::SIGKILL);
                }
            }
            Ev::Message { child, msg } => self.on_message(child, msg),
            Ev::Panicked {
                message,
                location,
                thread,
            } => {
                self.record_panic(&message, &location, &thread);
                // A helper thread is gone: the supervisor cannot go on without it.
                std::process::exit(EXIT_FAILURE);
            }
        }
    }

    /// Write a panic to the events file (`supervisor status` shows it).
    fn record_panic(&mut self, message: &str, location: &str, thread: &str) {
        let mut f = Map::new();
        f.insert("message".into(), json!(message));
        f.insert("location".into(), json!(location));
        f.insert("thread".into(), json!(thread));
        self.emit(PANIC_EVENT, f);
    }

    /// After the outcomes that wait changed: when that starts or ends, the core hears it
    /// (the grabber claims nothing while any waits), and `outcomes_waiting` (read by
    /// `status`) says how many.
    fn pending_changed(&mut self, was: usize) {
        self.pending_timer();
        let now = self.pending.len();
        if (was == 0) == (now == 0) {
            return;
        }
        self.feed(Input::OutcomesWaiting { waiting: now > 0 });
        let mut f = Map::new();
        f.insert("count".into(), json!(now));
        self.emit("outcomes_waiting", f);
    }

    /// Try the outcomes that wait for the store, if it is time; write the events of
    /// those stored. A connection that broke is opened again for the next try.
    fn retry_pending(&mut self) {
        // Fenced: the store is not ours to write to; the journal keeps what waits.
        if self.pending.is_empty() || self.fenced() {
            return;
        }
        let was = self.pending.len();
        let store = &mut self.store;
        let mut stored = 0;
        let events = self.pending.retry(Instant::now(), &mut |w: &Waiting| {
            let now = wall_now();
            match store.record_outcome(w.job, w.attempt, w.owner, &w.outcome, w.next, now) {
                Ok(true) => {
                    stored += 1;
                    Tried::Done
                }
                Ok(false) => {
                    log::warn!(
                        "job {} attempt {}: outcome refused by the store (stale)",
                        w.job,
                        w.attempt
                    );
                    Tried::Done
                }
                Err(e) => Tried::Failed(e.to_string()),
            }
        });
        if stored > 0 {
            log::info!("stored {stored} outcome(s) that had waited for the store");
            if let Some(c) = &mut self.checkpointer {
                c.wrote();
            }
        }
        if self.pending.failures() > 0 {
            if let Ok(fresh) = crate::store::open_for_loop(&self.store_arg) {
                self.store = fresh;
            }
        }
        for (name, fields) in events {
            self.emit(&name, fields);
        }
        if stored > 0 || self.pending.len() != was {
            self.save_journal();
        }
        self.pending_changed(was);
    }

    /// The outcomes that wait, on disk: a next run stores them if this one cannot.
    fn save_journal(&self) {
        let path = crate::journal::path(&self.config.state_dir);
        if let Err(e) = crate::journal::save(&path, self.pending.waiting()) {
            log::error!("cannot write the outcomes journal {}: {e}", path.display());
        }
    }

    /// Stopping: keep trying the outcomes that wait, for a while. Those still waiting
    /// then stay in the outcomes journal, which the next run stores first.
    fn flush_pending(&mut self) {
        let until = Instant::now() + PENDING_AT_EXIT;
        while !self.pending.is_empty() && Instant::now() < until {
            if let Some(at) = self.pending.deadline() {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            self.retry_pending();
        }
        if !self.pending.is_empty() {
            log::error!(
                "{} outcome(s) could not be stored; the next run stores them from the \
                 outcomes journal",
                self.pending.len()
            );
        }
    }

    fn on_message(&mut self, child: ChildId, msg: FromChild) {
        let input = match msg {
            FromChild::Hello { .. } => return,
            FromChild::Ready => {
                let Some(role) = self.core.role(child).cloned() else {
                    return;
                };
                // Not a core decision, but `status` needs it to tell starting from up.
                let mut f = Map::new();
                f.insert("role".into(), json!(role.kind()));
                f.insert("group".into(), json!(role.group()));
                f.insert("slot".into(), json!(role.slot()));
                f.insert(
                    "pid".into(),
                    json!(self.children.get(&child).and_then(|c| c.pid)),
                );
                self.emit("child_ready", f);
                Input::Ready { child }
            }
            FromChild::Pong => Input::Alive { child },
            FromChild::Claimed(claim) => {
                let job = ClaimedJob {
                    id: claim.id,
                    group: claim.group.clone(),
                    attempt: claim.attempt,
                    // Checked by the store at the claim; bounded again, as every value
                    // that crosses a process boundary is.
                    timeout: claim.timeout_s.map(supervisor_core::bounds::duration),
                    max_attempts: claim.max_attempts,
                    epoch: claim.epoch,
                };
                self.claims.insert(claim.id, claim);
                Input::JobClaimed(job)
            }
            FromChild::SourceReport { epoch, empty } => {
                if self.lost_claims.is_some() {
                    self.give_back_lost_claims(); // the store answers again
                }
                Input::SourceReport { epoch, empty }
            }
            FromChild::SourceFailed {
                error,
                claimed_before,
            } => {
                // A claim of the failed pass may have committed with its answer lost:
                // such jobs run under us in the store, unknown here, until given back.
                let t = self
                    .lost_claims
                    .map_or(claimed_before, |t| t.max(claimed_before));
                self.lost_claims = Some(t);
                self.give_back_lost_claims();
                Input::SourceFailed { error }
            }

            FromChild::CancelRequested { job } => Input::CancelRequested { job },
            FromChild::JobStarted { job, pid } => {
                if injected_fault() == Some(Fault::PanicOnJobStart) {
                    panic!("fault injected: SUPERVISOR_TEST_FAULT=panic-on-job-start (job {job})");
                }
                Input::JobStarted { child, job, pid }
            }
            FromChild::JobEnded {
                job,
                end,
                ran_for_s,
                start_error,
                reason,
            } => Input::JobEnded {
                child,
                job,
                end: end.map(Into::into),
                ran_for: ran_for_s.map(supervisor_core::bounds::duration),
                start_error: start_error.map(supervisor_core::bounds::note),
                reason: reason.map(supervisor_core::bounds::note),
            },
            FromChild::Refused {
                job,
                attempts,
                reason,
            } => Input::JobRefused {
                job,
                attempts,
                reason,
            },
        };
        self.feed(input);
    }

    /// Reap every ended child; tell the core once its channel has also closed.
    fn reap(&mut self) {
        for (pid, ended) in supervisor_os::reap_all() {
            let Some(&child) = self.by_pid.get(&pid) else {
                continue; // an orphaned grandchild: reaped, nothing more to do
            };
            let end = crate::wire::WireEnd::from(ended).into();
            if let Some(c) = self.children.get_mut(&child) {
                c.exit = Some(end);
                if c.writer.is_none() && !c.closed {
                    // Died before its handshake: free the accept thread.
                    ipc::unblock(&c.ipc_name);
                }
            }
            // Its exit waits for its channel to close, but not longer than this.
            let give_up = self.now() + ipc::CLOSE_WAIT;
            self.timers.set(Wake::CloseWait(child), give_up);
            self.maybe_deliver_exit(child);
        }
    }

    /// A reaped child whose channel closed: everything it said has been handled, so the
    /// core hears of its exit now.
    fn maybe_deliver_exit(&mut self, child: ChildId) {
        if (self.children.get(&child)).is_some_and(|c| c.exit.is_some() && c.closed) {
            self.deliver_exit(child);
        }
    }

    /// Tell the core that a reaped child exited (its channel closed, or did not close
    /// within `CLOSE_WAIT`).
    fn deliver_exit(&mut self, child: ChildId) {
        self.timers.stop(&Wake::CloseWait(child));
        let Some(end) = self.children.get(&child).and_then(|c| c.exit) else {
            return;
        };
        let c = self.children.remove(&child).expect("checked above");
        let pid = c.pid.expect("a reaped child has a pid");
        self.by_pid.remove(&pid);
        self.feed(Input::Exited { pid, end });
    }

    /// SIGKILL every child of ours that is not one of our children: processes a job left
    /// behind, handed to us (a subreaper) when their worker died. Workers kill what their
    /// jobs leave, so only a worker's death leaves anything here.
    fn kill_orphans(&mut self) {
        for _ in 0..100 {
            let strays: Vec<u32> = supervisor_os::children(std::process::id())
                .into_iter()
                .filter(|pid| !self.by_pid.contains_key(pid))
                .collect();
            if strays.is_empty() {
                return;
            }
            for pid in strays {
                for below in supervisor_os::descendants(pid) {
                    let _ = supervisor_os::signal_pid(below, Sig::SIGKILL);
                }
                let _ = supervisor_os::signal_pid(pid, Sig::SIGKILL);
            }
            // Reaps them (and any of our children that ended meanwhile: their exits are
            // handled as usual).
            self.reap();
        }
    }

    /// Feed one input to the core and carry out everything that follows.
    fn feed(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let actions = self.core.handle(self.now(), input);
            self.core_timer();
            inputs.extend(self.execute(actions));
        }
        if let Some(was) = self.pending_was.take() {
            self.pending_changed(was);
        }
    }

    /// Carry out actions in order; returns inputs they produced (spawn results).
    fn execute(&mut self, actions: Vec<Action>) -> Vec<Input> {
        let mut back = Vec::new();
        for action in actions {
            match action {
                Action::Spawn { child, role } => back.push(self.spawn(child, role)),
                Action::StopChild { child } => {
                    let connected = self
                        .children
                        .get(&child)
                        .is_some_and(|c| c.writer.is_some());
                    if !connected || !self.send(child, ToChild::Stop) {
                        if let Some(pid) = self.children.get(&child).and_then(|c| c.pid) {
                            let _ = supervisor_os::signal_pid(pid, Sig::SIGTERM);
                        }
                    }
                }
                Action::KillChild { pid, signal, .. } => {
                    let sig = if crate::wire::is_kill(signal) {
                        Sig::SIGKILL
                    } else {
                        Sig::SIGTERM
                    };
                    let _ = supervisor_os::signal_pid(pid, sig);
                }
                Action::Ping { child } => {
                    self.send(child, ToChild::Ping);
                }
                Action::StartJob { child, job } => {
                    // The core starts jobs only on workers of groups of the current
                    // config; never start one without its group's user and limits.
                    let Some(group) = self.config.group(&job.group) else {
                        log::error!("job {} has no group {}; cannot start it", job.id, job.group);
                        continue;
                    };
                    let payload = match self.claims.get(&job.id) {
                        Some(c) => JobPayload {
                            id: c.id,
                            attempt: c.attempt,
                            command: c.command.clone(),
                            env: c.env.clone(),
                            cwd: c.cwd.clone(),
                            process: Box::new(group.process.clone()),
                        },
                        None => {
                            log::error!("job {} has no payload; cannot start it", job.id);
                            continue;
                        }
                    };
                    self.send(child, ToChild::Run(payload));
                }
                Action::SignalJob { child, job, signal } => {
                    self.send(
                        child,
                        ToChild::SignalJob {
                            job,
                            kill: crate::wire::is_kill(signal),
                        },
                    );
                }
                Action::KillJobGroup { pgid } => {
                    let _ = supervisor_os::signal_group(pgid, Sig::SIGKILL);
                    // A dead worker's job may have left processes outside its group:
                    // they were the worker's (a subreaper), and are ours now.
                    self.kill_orphans();
                }
                Action::Grant { group, n, epoch } => {
                    self.send_to_grabber(ToChild::Grant { group, n, epoch })
                }
                Action::Revoke { group, epoch } => {
                    self.send_to_grabber(ToChild::Revoke { group, epoch })
                }
                Action::Poll { epoch } => self.send_to_grabber(ToChild::Poll { epoch }),
                Action::GrabberSettings { runnable } => {
                    let settings = GrabberSettings {
                        routes: crate::routes(&self.config),
                        poll_interval_s: self.config.grabber.poll_interval.as_secs_f64(),
                        error_backoff: self.config.grabber.error_backoff.into(),
                        runnable,
                    };
                    self.send_to_grabber(ToChild::Settings(settings));
                }
                Action::HoldClaims { hold } => self.send_to_grabber(ToChild::Hold(hold)),
                Action::RecordOutcome {
                    job,
                    attempt,
                    outcome,
                    end,
                    next,
                    start_error,
                    reason,
                } => {
                    let o = stored_outcome(outcome, end, start_error, reason);
                    self.record(job, attempt, o, next);
                }
                Action::Release { job, attempt } => {
                    self.claims.remove(&job);
                    if let Err(e) = self.store.release(job, attempt, self.instance, wall_now()) {
                        log::error!("cannot requeue job {job}: {e}");
                    }
                }
                Action::ReleaseStrays { known } => {
                    match self
                        .store
                        .release_strays(self.instance, &known, None, wall_now())
                    {
                        Ok(ids) if !ids.is_empty() => log::warn!(
                            "requeued jobs {ids:?} the grabber claimed but never reported"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            log::error!("cannot requeue the grabber's unreported claims: {e}")
                        }
                    }
                }
                Action::Emit(event) => {
                    let (name, fields) = crate::wire::event_record(&event);
                    if let Some(job) = about_job(&event).filter(|j| self.pending.holds(*j)) {
                        // Its outcome waits for the store: so does what announces it.
                        self.pending.hold_event(job, (name.to_string(), fields));
                        self.save_journal();
                        continue;
                    }
                    self.emit(name, fields);
                }
                Action::Exit { code } => self.exit_code = Some(code),
            }
        }
        back
    }

    fn record(&mut self, job: i64, attempt: u32, o: supervisor_store::Outcome, next: Next) {
        self.claims.remove(&job);
        let now = wall_now();
        let next = match next {
            Next::Done => supervisor_store::Next::Done,
            Next::Dead => supervisor_store::Next::Dead,
            Next::Retry { delay } => supervisor_store::Next::Retry {
                at: now + delay.as_secs_f64(),
            },
        };
        let waiting = Waiting {
            owner: self.instance,
            job,
            attempt,
            outcome: o,
            next,
            events: vec![],
        };
        // Behind an outcome that waits, every later one waits too: in order.
        if !self.pending.is_empty() {
            self.wait_for_store(waiting);
            return;
        }
        let w = &waiting;
        match self
            .store
            .record_outcome(job, attempt, self.instance, &w.outcome, w.next, now)
        {
            Ok(true) => {
                if let Some(c) = &mut self.checkpointer {
                    c.wrote();
                }
            }
            Ok(false) => {
                log::warn!("job {job} attempt {attempt}: outcome refused by the store (stale)")
            }
            Err(e) => {
                log::error!("cannot store the outcome of job {job} yet (will retry): {e}");
                self.wait_for_store(waiting);
            }
        }
    }

    /// An outcome the store cannot take now: it waits, journaled.
    fn wait_for_store(&mut self, waiting: Waiting) {
        let was = self.pending.len();
        self.pending.add(waiting, Instant::now());
        self.save_journal();
        // Said once the actions of this input are done (the events held with it are in
        // the journal by then).
        self.pending_was.get_or_insert(was);
    }

    fn spawn(&mut self, child: ChildId, role: Role) -> Input {
        let role_arg = match &role {
            Role::Grabber => ChildRole::Grabber {
                store: crate::store::arg(&self.config.store),
                instance: self.instance,
                poll_interval_s: self.config.grabber.poll_interval.as_secs_f64(),
                error_backoff: self.config.grabber.error_backoff.into(),
                routes: crate::routes(&self.config),
            },
            Role::Worker { group, slot } => ChildRole::Worker {
                group: group.clone(),
                slot: *slot,
                logs: self.config.state_dir.join("logs"),
            },
        };
        let args = ChildArgs {
            ipc: String::new(),
            role: role_arg,
            parent: std::process::id(),
        };
        match self.hub.spawn(child, args, self.queue_tx.clone()) {
            Ok((pid, ipc_name)) => {
                self.children.insert(
                    child,
                    ShellChild {
                        pid: Some(pid),
                        ipc_name,
                        started_at: wall_now(),
                        writer: None,
                        closed: false,
                        exit: None,
                    },
                );
                self.by_pid.insert(pid, child);
                Input::Spawned { child, pid }
            }
            Err(e) => Input::SpawnFailed {
                child,
                error: e.to_string(),
            },
        }
    }

    /// Queue a message to a child; a child whose queue is full has stopped reading and
    /// is killed (its exit is then handled as a crash).
    fn send(&mut self, child: ChildId, msg: ToChild) -> bool {
        let Some(c) = self.children.get(&child) else {
            return false;
        };
        let Some(w) = &c.writer else { return false };
        if w.send(msg) {
            return true;
        }
        log::error!("child {child} stopped reading its messages; killing it");
        if let Some(pid) = c.pid {
            let _ = supervisor_os::signal_pid(pid, Sig::SIGKILL);
        }
        false
    }

    fn send_to_grabber(&mut self, msg: ToChild) {
        if let Some(g) = self.core.grabber() {
            self.send(g, msg);
        }
    }

    fn emit(&mut self, name: &str, fields: Map<String, Value>) {
        if let Err(e) = self.events.write(name, &fields) {
            log::error!("cannot write to the events file: {e}");
        }
        if self.events.wants_rotation() {
            match self.events.shift() {
                Ok(()) => self.snapshot(),
                Err(e) => log::error!("cannot rotate the events file: {e}"),
            }
        }
    }

    fn snapshot(&mut self) {
        let mut f = Map::new();
        f.insert("supervisor_pid".into(), json!(std::process::id()));
        f.insert(
            "children".into(),
            crate::wire::child_rows(&self.core.children(), &|pid| {
                let child = self.by_pid.get(&pid)?;
                self.children.get(child).map(|c| c.started_at)
            }),
        );
        f.insert("generation".into(), json!(self.generation));
        f.insert("outcomes_waiting".into(), json!(self.pending.len()));
        if let Err(e) = self.events.write("snapshot", &f) {
            log::error!("cannot write to the events file: {e}");
        }
    }

    fn config_event(&mut self, name: &str, error: Option<String>) {
        let mut f = Map::new();
        f.insert("path".into(), json!(self.config.path));
        match error {
            None => f.insert("generation".into(), json!(self.generation)),
            Some(e) => f.insert("error".into(), json!(e)),
        };
        self.emit(name, f);
    }

    /// Whether this supervisor fenced itself (see `lease.rs`).
    fn fenced(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.fenced())
    }

    /// Give back the jobs running under us in the store that the grabber claimed in a
    /// pass that failed (its answer lost with the connection) and that we never heard of.
    fn give_back_lost_claims(&mut self) {
        let Some(before) = self.lost_claims else {
            return;
        };
        // Known: the jobs we run, and those whose outcome waits for the store (their
        // rows still say running under us; giving them back would run them again and
        // get their outcome refused as stale).
        let known: Vec<i64> = self
            .claims
            .keys()
            .copied()
            .chain(self.pending.waiting().map(|w| w.job))
            .collect();
        match self
            .store
            .release_strays(self.instance, &known, Some(before), wall_now())
        {
            Ok(ids) => {
                self.lost_claims = None;
                if !ids.is_empty() {
                    log::warn!("gave back jobs {ids:?}: claimed, but the claim's answer was lost");
                    if let Some(g) = self.core.grabber() {
                        self.send(g, ToChild::Wake);
                    }
                }
            }
            Err(e) => {
                log::warn!("cannot give back lost claims yet: {e}");
                self.reopen_store();
            }
        }
    }

    /// Open the store again (its connection may be what broke); keep the old handle if
    /// that fails too.
    fn reopen_store(&mut self) {
        match crate::store::open_for_loop(&self.store_arg) {
            Ok(fresh) => self.store = fresh,
            Err(e) => log::warn!("cannot reopen the job store: {e:#}"),
        }
    }

    /// One reload pass: read the config again and apply it, or reject it whole.
    fn reload(&mut self) {
        if self.core.is_stopping() {
            return;
        }
        self.notifier.reloading();
        self.load_and_apply();
        self.notifier.ready();
    }

    fn load_and_apply(&mut self) {
        let path = self.config.path.clone();
        let new = match supervisor_config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                self.config_event("config_rejected", Some(e.to_string()));
                return;
            }
        };
        if let Some(why) = unchangeable(&self.config, &new) {
            self.config_event("config_rejected", Some(why));
            return;
        }
        let until_empty = self.core.spec().until_empty;
        self.config = new;
        self.generation += 1;
        self.events
            .set_limits(self.config.events.rotate_bytes, self.config.events.keep);
        self.retention.update(self.config.retention.clone());
        self.config_event("config_loaded", None);
        // The core's first answer is the grabber's new settings (`GrabberSettings`), so
        // the polls it asks for use the new routes.
        let spec = self.config.spec(until_empty);
        self.feed(Input::Reload(spec));
    }
}

/// The job an event is about, for the events held back with its outcome.
fn about_job(event: &supervisor_core::supervision::Event) -> Option<i64> {
    use supervisor_core::supervision::Event;
    match event {
        Event::JobFinished { job_id, .. }
        | Event::JobRetryScheduled { job_id, .. }
        | Event::JobDead { job_id, .. } => Some(*job_id),
        _ => None,
    }
}

/// What a reload cannot change while running, named for the operator.
fn unchangeable(old: &Config, new: &Config) -> Option<String> {
    let mut what = Vec::new();
    if old.state_dir != new.state_dir {
        what.push("state_dir");
    }
    if old.store != new.store {
        what.push("store");
    }
    if old.events.path != new.events.path {
        what.push("events.path");
    }
    if what.is_empty() {
        None
    } else {
        Some(format!(
            "{}: {} cannot change while running; stop and start the supervisor",
            new.path.display(),
            what.join(", ")
        ))
    }
}

/// The store's record of an attempt's outcome.
fn stored_outcome(
    outcome: Outcome,
    end: Option<supervisor_core::supervision::ProcessEnd>,
    start_error: Option<String>,
    reason: Option<String>,
) -> supervisor_store::Outcome {
    supervisor_store::Outcome {
        kind: match outcome {
            Outcome::Succeeded => supervisor_store::OutcomeKind::Succeeded,
            Outcome::Failed => supervisor_store::OutcomeKind::Failed,
            Outcome::TimedOut => supervisor_store::OutcomeKind::TimedOut,
            Outcome::Lost => supervisor_store::OutcomeKind::Lost,
            Outcome::Canceled => supervisor_store::OutcomeKind::Canceled,
        },
        exit_code: end.and_then(|e| e.code()),
        signal: end.and_then(|e| e.signal()),
        start_error,
        reason,
    }
}
