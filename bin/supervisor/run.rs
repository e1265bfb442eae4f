//! `supervisor run`: the thin OS shell around the core. One event loop that blocks on
//! one queue until a signal, an IPC message or the next entry of its timer table; it
//! feeds the core what happened and carries out what the core decides.
//!
//! This file is the loop, what it hears and what it does; the rest has a room each:
//! `run/startup.rs` (from the config to the loop), `run/children.rs` (spawning,
//! messages, reaping), `run/outcomes.rs` (the store: outcomes, the ones that wait, lost
//! claims), `run/panics.rs` (every panic in the events file).

mod children;
mod outcomes;
mod panics;
mod startup;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use supervisor_config::Config;
use supervisor_core::supervision::{Action, ChildId, Core, Event, Input, Signal, TimerTable};
use supervisor_core::Time;
use supervisor_os::Sig;

use crate::checkpointer::Checkpointer;
use crate::events_file::EventsFile;
use crate::ipc::{Ev, Hub};
use crate::notify::Notifier;
use crate::pending::{Handed, Pending};
use crate::record::{ChildRow, EventRecord};
use crate::wire::{ClaimReport, GrabberSettings, JobPayload, ToChild};

use children::ShellChild;
pub use startup::run;

/// How long a call of the loop (or of the supervisor's other threads) waits for another
/// process's lock on an SQLite store before it fails.
pub const LOOP_STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a store call waits for a lock once a second SIGINT asked for an exit at once.
const HURRIED_STORE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// SIGINTs so far, counted by the signal thread as they come: from the second on, the
/// stop is at once, and so is the exit (a store that does not answer is tried once, not
/// for as long as a graceful stop tries it), even when the loop is busy exiting already.
static INTERRUPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A SIGINT came (the signal thread): count it; from the second, store calls wait
/// [`HURRIED_STORE_WAIT`] at most.
fn interrupted() {
    if INTERRUPTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1 {
        supervisor_store::set_busy_timeout(HURRIED_STORE_WAIT);
    }
}

/// Exit codes of the contract.
pub const EXIT_FAILURE: i32 = 1;
/// Bad usage or config.
pub const EXIT_USAGE: i32 = 2;

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
    claims: HashMap<i64, ClaimReport>,
    /// What the loop wakes up for besides a message (see [`Wake`]).
    timers: TimerTable<Wake>,
    exit_code: Option<i32>,
    /// Shared (PostgreSQL) store: our lease there, renewed and watched by threads of
    /// its own (see `lease.rs`).
    lease: Option<crate::lease::Lease>,
    /// A failed claim pass began at this (wall) time: its claims may have committed with
    /// their answer lost; given back once the store answers.
    lost_claims: Option<f64>,
    /// Until when (wall time) the lost claims are looked for again at every pass: a
    /// claim's COMMIT cut off with its connection may still land on the server after
    /// the first look (`instances.dead_after_s` later, any other supervisor would take
    /// the job back anyway).
    lost_claims_until: f64,
    /// How many outcomes waited before the input being fed (see `pending_changed`).
    pending_was: Option<usize>,
    notifier: Notifier,
    told_stopping: bool,
    /// Outcomes the store could not take yet, with the events that announce them.
    pending: Pending,
    /// Outcomes handed to the grabber to store with its next claim, with the events
    /// that announce them.
    handed: Handed,
    /// `supervisor_stopped`, held while outcomes wait: it is the last event of a run.
    stopped_event: Option<EventRecord>,
    /// How to open the store again when its connection broke.
    store_arg: crate::wire::StoreArg,
    /// Deletes finished jobs past the config's `retention`, on a thread of its own.
    retention: crate::retention::Retention,
    /// The HTTP server (config `http`), on threads of its own.
    http: Option<crate::http::Server>,
}

/// What the loop wakes up for besides a message, each an entry of its timer table, handled
/// in this order when several are due.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    /// A reaped child whose channel is still open: its exit is handled anyway then.
    CloseWait(ChildId),
    /// The next try of the outcomes that wait for the store.
    Pending,
    /// The outcomes sent to the grabber waited too long for its word: stored here.
    Handed,
    /// SIGHUP rang: one reload asked of the core, however many rang since the last one.
    Reload,
    /// The core's next deadline: [`Core::on_timeout`].
    Core,
}

impl Supervisor {
    /// Interrupted twice: stop, and exit, without waiting for the store.
    fn in_a_hurry(&self) -> bool {
        INTERRUPTS.load(std::sync::atomic::Ordering::SeqCst) >= 2
    }

    fn now(&self) -> Time {
        Time::from_origin(self.started.elapsed())
    }

    fn event_loop(&mut self, rx: &Receiver<Ev>) -> i32 {
        loop {
            if let Some(code) = self.exit_code {
                if self.fenced() {
                    // A fenced supervisor's store is not its to write: the journal keeps
                    // what waits, for the next run.
                    self.journal_handed();
                } else {
                    self.store_handed(true);
                    self.flush_pending();
                }
                if let Some(record) = self.stopped_event.take() {
                    self.emit(record);
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
                    Wake::Handed => {
                        log::warn!("the grabber has not stored the outcomes it was handed; storing them here");
                        self.store_handed(true);
                        if let Some(was) = self.pending_was.take() {
                            self.pending_changed(was);
                        }
                    }
                    Wake::Reload => self.feed(Input::ReloadRequested),
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
            self.store_handed(false);
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
            Ev::StateGone { reason } => {
                log::error!("{reason}: stopping");
                self.feed(Input::Shutdown {
                    reason,
                    immediate: false,
                })
            }
            Ev::Signal(SIGUSR1) | Ev::Doorbell => {
                // The doorbell of `submit` and `cancel` (SIGUSR1 on this host, NOTIFY
                // from any host): the grabber looks at the store now.
                if let Some(g) = self.core.grabber() {
                    self.send(g, ToChild::Wake);
                }
            }
            Ev::Signal(other) => log::debug!("ignoring signal {other}"),
            // A child already gone drops its writer: its thread ends.
            Ev::Connected { child, writer } => match self.children.get_mut(&child) {
                Some(c) if c.exit.is_none() => c.writer = Some(writer),
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

    /// Feed one input to the core and carry out everything that follows.
    fn feed(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let actions = self.core.handle(self.now(), input);
            self.core_timer();
            inputs.extend(self.execute(actions));
        }
        // Outcomes no grant took to the grabber: stored here, now.
        self.store_handed(false);
        if let Some(was) = self.pending_was.take() {
            self.pending_changed(was);
        }
    }

    /// Carry out actions in order; returns inputs they produced (spawn results).
    fn execute(&mut self, actions: Vec<Action>) -> Vec<Input> {
        let mut back = Vec::new();
        let mut actions = actions.into_iter().peekable();
        while let Some(action) = actions.next() {
            match action {
                // A run of starts (a pool filling up) goes as one batch.
                Action::Spawn { child, role } => {
                    let mut batch = vec![(child, role)];
                    while let Some(Action::Spawn { .. }) = actions.peek() {
                        if let Some(Action::Spawn { child, role }) = actions.next() {
                            batch.push((child, role));
                        }
                    }
                    back.extend(self.spawn_all(batch));
                }
                Action::StopChild { child } => self.stop_child(child),
                Action::KillChild { pid, signal, .. } => {
                    let _ = supervisor_os::signal_pid(pid, sig(signal));
                }
                Action::Ping { child } => {
                    self.send(child, ToChild::Ping);
                }
                Action::StartJob { child, job } => self.start_job(child, job.id, &job.group),
                Action::SignalJob { child, job, signal } => {
                    let kill = crate::wire::is_kill(signal);
                    self.send(child, ToChild::SignalJob { job, kill });
                }
                Action::KillJobGroup { pgid } => {
                    let _ = supervisor_os::signal_group(pgid, Sig::SIGKILL);
                    // A dead worker's job may have left processes outside its group:
                    // they were the worker's (a subreaper), and are ours now.
                    self.kill_orphans();
                }
                // A poll next to a grant (a job's end asks for both) goes with it.
                Action::Poll { epoch: poll }
                    if matches!(actions.peek(), Some(Action::Grant { .. })) =>
                {
                    if let Some(Action::Grant { group, n, epoch }) = actions.next() {
                        let poll = Some(poll);
                        self.grant(group, n, epoch, poll);
                    }
                }
                Action::Grant { group, n, epoch } => {
                    let poll = match actions.peek() {
                        Some(&Action::Poll { epoch }) => {
                            actions.next();
                            Some(epoch)
                        }
                        _ => None,
                    };
                    self.grant(group, n, epoch, poll);
                }
                Action::Revoke { group, epoch } => {
                    self.send_to_grabber(ToChild::Revoke { group, epoch })
                }
                Action::Poll { epoch } => self.send_to_grabber(ToChild::Poll { epoch }),
                Action::GrabberSettings { runnable } => {
                    let settings = self.grabber_settings(runnable);
                    self.send_to_grabber(ToChild::Settings(settings));
                }
                Action::HoldClaims { hold } => self.send_to_grabber(ToChild::Hold(hold)),
                Action::ReadConfig => self.reload(),
                Action::RecordOutcome {
                    job,
                    attempt,
                    outcome,
                    end,
                    next,
                    start_error,
                    reason,
                } => {
                    let o = outcomes::stored_outcome(outcome, end, start_error, reason);
                    self.record(job, attempt, o, next);
                }
                Action::Release { job, attempt } => self.release(job, attempt),
                Action::ReleaseStrays { known } => self.release_strays(&known),
                Action::Emit(event) => self.emit_event(&event),
                Action::Exit { code } => self.exit_code = Some(code),
            }
        }
        back
    }

    /// Ask a child to stop by a message, or by SIGTERM if it cannot hear one.
    fn stop_child(&mut self, child: ChildId) {
        let connected = (self.children.get(&child)).is_some_and(|c| c.writer.is_some());
        if !connected || !self.send(child, ToChild::Stop) {
            if let Some(pid) = self.children.get(&child).and_then(|c| c.pid) {
                let _ = supervisor_os::signal_pid(pid, Sig::SIGTERM);
            }
        }
    }

    /// Send a worker its job: the claim's command and its group's user and limits.
    fn start_job(&mut self, child: ChildId, job: i64, group: &str) {
        // The core starts jobs only on workers of groups of the current config; never
        // start one without its group's user and limits.
        let Some(group) = self.config.group(group) else {
            log::error!("job {job} has no group {group}; cannot start it");
            return;
        };
        let Some(c) = self.claims.get(&job) else {
            log::error!("job {job} has no payload; cannot start it");
            return;
        };
        let payload = JobPayload {
            id: c.id,
            attempt: c.attempt,
            command: c.command.clone(),
            env: c.env.clone(),
            cwd: c.cwd.clone(),
            process: Box::new(group.process.clone()),
        };
        self.send(child, ToChild::Run(payload));
    }

    /// The grabber's settings: the groups that can run jobs, as the core says, with the
    /// routes and intervals of the config in force.
    fn grabber_settings(&self, runnable: Vec<String>) -> GrabberSettings {
        GrabberSettings {
            routes: self.config.routes(),
            poll_interval_s: self.config.grabber.poll_interval.as_secs_f64(),
            error_backoff: self.config.grabber.error_backoff.into(),
            runnable,
        }
    }

    /// Write an event of the core, unless its job's outcome waits for the store: then
    /// it waits too, with the outcome.
    fn emit_event(&mut self, event: &Event) {
        let record = EventRecord::from(event);
        if matches!(record, EventRecord::SupervisorStopped { .. })
            && !(self.pending.is_empty() && self.handed.is_empty())
        {
            self.stopped_event = Some(record);
            return;
        }
        let record = match record {
            EventRecord::JobStarted { ref group, .. } if !self.handed.is_empty() => {
                match self.handed.hold_start(&group.clone(), record) {
                    Ok(()) => return,
                    Err(record) => record,
                }
            }
            other => other,
        };
        let job = record.outcome_of_job();
        if let Some(job) = job.filter(|j| self.handed.holds(*j)) {
            self.handed.hold_event(job, record);
            return;
        }
        if let Some(job) = job.filter(|j| self.pending.holds(*j)) {
            self.pending.hold_event(job, record);
            self.save_journal();
            return;
        }
        self.emit(record);
    }

    fn emit(&mut self, record: EventRecord) {
        self.write_event(record);
        self.rotate_if_due();
    }

    /// Write one event, leaving a rotation it makes due to [`Self::rotate_if_due`].
    pub(super) fn write_event(&mut self, record: EventRecord) {
        let answer = matches!(
            record,
            EventRecord::ConfigLoaded { .. } | EventRecord::ConfigRejected { .. }
        )
        .then(|| record.clone());
        if let Err(e) = self.events.write(record) {
            log::error!("cannot write to the events file: {e}");
        }
        if let Some(record) = answer {
            self.note_reload_answer(record);
        }
    }

    /// Keep the answer to a reload in `<state_dir>/reload.answer` too, for `reload` to
    /// find whatever the events file did meanwhile (rotations may have removed it from
    /// every file kept).
    fn note_reload_answer(&self, record: EventRecord) {
        let line = crate::record::EventLine {
            seq: self.events.seq(),
            ts: crate::events_file::wall_now(),
            record,
        };
        let Ok(text) = line.to_line() else {
            return;
        };
        let path = crate::commands::reload_answer_path(&self.config.state_dir);
        let tmp = path.with_extension("answer.tmp");
        if let Err(e) =
            std::fs::write(&tmp, text + "\n").and_then(|()| std::fs::rename(&tmp, &path))
        {
            log::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// Rotate the events file if it has grown past its size, beginning the new one with
    /// a snapshot of the core's child table.
    pub(super) fn rotate_if_due(&mut self) {
        if self.events.wants_rotation() {
            match self.events.rotate() {
                Ok(()) => self.snapshot(),
                Err(e) => log::error!("cannot rotate the events file: {e}"),
            }
        }
    }

    fn snapshot(&mut self) {
        let started_at = |pid| {
            let child = self.by_pid.get(&pid)?;
            self.children.get(child).map(|c| c.started_at)
        };
        let children = self.core.children();
        let record = EventRecord::Snapshot {
            supervisor_pid: std::process::id(),
            children: children
                .iter()
                .map(|c| ChildRow::of(c, &started_at))
                .collect(),
            generation: self.generation,
            outcomes_waiting: self.pending.len() as u64,
        };
        if let Err(e) = self.events.write(record) {
            log::error!("cannot write to the events file: {e}");
        }
    }

    /// `config_loaded` (no `error`; with what a reload changed) or `config_rejected`.
    fn config_event(&mut self, error: Option<String>, changes: Vec<String>) {
        let record = EventRecord::config(&self.config.path, self.generation, error, changes);
        self.emit(record);
    }

    /// One reload pass: read the config again and apply it, or reject it whole.
    fn reload(&mut self) {
        self.notifier.reloading();
        self.load_and_apply();
        self.notifier.ready();
    }

    fn load_and_apply(&mut self) {
        let path = self.config.path.clone();
        let new = match supervisor_config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                self.config_event(Some(e.to_string()), Vec::new());
                return;
            }
        };
        if let Some(why) = unchangeable(&self.config, &new) {
            self.config_event(Some(why), Vec::new());
            return;
        }
        let until_empty = self.core.spec().until_empty;
        let changes = self.config.changes_to(&new);
        self.config = new;
        self.generation += 1;
        if let Some(http) = &self.http {
            http.config_changed(&self.config);
        }
        self.events
            .set_limits(self.config.events.rotate_bytes, self.config.events.keep);
        self.retention.update(self.config.retention.clone());
        self.config_event(None, changes);
        // The core's first answer is the grabber's new settings (`GrabberSettings`), so
        // the polls it asks for use the new routes.
        let spec = self.config.spec(until_empty);
        self.feed(Input::Reload(spec));
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

/// The OS signal for one the core asks for.
fn sig(signal: Signal) -> Sig {
    if crate::wire::is_kill(signal) {
        Sig::SIGKILL
    } else {
        Sig::SIGTERM
    }
}

/// Panic for a fault the tests injected (`SUPERVISOR_TEST_FAULT`), from this file: the
/// tests find it in the location the panic is recorded with.
fn injected_panic(what: std::fmt::Arguments) -> ! {
    panic!("fault injected: SUPERVISOR_TEST_FAULT={what}");
}
