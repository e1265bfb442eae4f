//! Outcomes and the store: an outcome is stored before the events that announce it;
//! one the store cannot take waits (in order, journaled) and is tried again; claims
//! whose answer was lost are given back.

use std::time::{Duration, Instant};

use supervisor_core::supervision::{Input, Next, Outcome, ProcessEnd};
use supervisor_core::Time;

use crate::events_file::wall_now;
use crate::pending::{Tried, Waiting};
use crate::record::EventRecord;
use crate::wire::ToChild;

use super::{Supervisor, Wake};

/// How long a stopping supervisor keeps trying to store the outcomes that wait, before it
/// exits and leaves them to the next run (the outcomes journal).
const PENDING_AT_EXIT: Duration = Duration::from_secs(5);

/// The store's record of an attempt's outcome.
pub(super) fn stored_outcome(
    outcome: Outcome,
    end: Option<ProcessEnd>,
    start_error: Option<String>,
    reason: Option<String>,
) -> supervisor_store::OutcomeRecord {
    supervisor_store::OutcomeRecord {
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

impl Supervisor {
    /// Put a claimed job back in the queue without using up an attempt.
    pub(super) fn release(&mut self, job: i64, attempt: u32) {
        self.claims.remove(&job);
        if let Err(e) = self.store.release(job, attempt, self.instance, wall_now()) {
            log::error!("cannot requeue job {job}: {e}");
        }
    }

    /// The grabber died: give back what it claimed in the store but never reported.
    /// `known`: the jobs the core runs; those whose outcome waits for the store are
    /// known too (their rows still say running under us).
    pub(super) fn release_strays(&mut self, known: &[i64]) {
        let known: Vec<i64> = (known.iter().copied())
            .chain(self.pending.waiting().map(|w| w.job))
            .chain(self.handed.jobs())
            .collect();
        match (self.store).release_strays(self.instance, &known, None, wall_now()) {
            Ok(ids) if !ids.is_empty() => {
                log::warn!("requeued jobs {ids:?} the grabber claimed but never reported")
            }
            Ok(_) => {}
            Err(e) => log::error!("cannot requeue the grabber's unreported claims: {e}"),
        }
    }

    /// After the outcomes that wait changed: when that starts or ends, the core hears it
    /// (the grabber claims nothing while any waits), and `outcomes_waiting` (read by
    /// `status`) says how many.
    pub(super) fn pending_changed(&mut self, was: usize) {
        self.pending_timer();
        let now = self.pending.len();
        if (was == 0) == (now == 0) {
            return;
        }
        self.feed(Input::OutcomesWaiting { waiting: now > 0 });
        self.emit(EventRecord::OutcomesWaiting { count: now as u64 });
    }

    /// The next try of the outcomes that wait, in the loop's timer table.
    pub(super) fn pending_timer(&mut self) {
        let at = (self.pending.deadline())
            .map(|t| Time::from_origin(t.saturating_duration_since(self.started)));
        self.timers.set_or_stop(Wake::Pending, at);
    }

    /// Try the outcomes that wait for the store, if it is time; write the events of
    /// those stored. A connection that broke is opened again for the next try.
    pub(super) fn retry_pending(&mut self) {
        // Fenced: the store is not ours to write to; the journal keeps what waits.
        if self.pending.is_empty() || self.fenced() {
            return;
        }
        let was = self.pending.len();
        // A connection known to be lost is opened again first: tried on it, every
        // outcome would fail once more, and wait a whole backoff after the server is
        // back.
        if self.store.connection_lost() {
            self.reopen_store();
        }
        let store = &mut self.store;
        let mut stored = 0;
        let events = self.pending.retry(Instant::now(), &mut |w: &Waiting| {
            let now = wall_now();
            match store.settle(&[w.settle(now)]).map(|s| s.first().copied()) {
                Ok(Some(settled)) => {
                    if settled.stored() {
                        stored += 1;
                    }
                    Tried::Done(settled)
                }
                Ok(None) => Tried::Failed("the store said nothing of the outcome".into()),
                Err(e) => Tried::Failed(e.to_string()),
            }
        });
        if stored > 0 {
            log::info!("stored {stored} outcome(s) that had waited for the store");
            if let Some(c) = &mut self.checkpointer {
                c.wrote();
            }
        }
        // A failure that lost the connection has it opened again at the next try (above);
        // one that did not needs no new one.
        for record in events {
            self.emit(record);
        }
        if stored > 0 || self.pending.len() != was {
            self.save_journal();
        }
        self.pending_changed(was);
    }

    /// The outcomes that wait, on disk: a next run stores them if this one cannot.
    pub(super) fn save_journal(&self) {
        let path = crate::journal::path(&self.config.state_dir);
        let store = super::startup::store_identity(&self.config.store);
        if let Err(e) = crate::journal::save(&path, &store, self.pending.waiting(), None) {
            log::error!("cannot write the outcomes journal {}: {e}", path.display());
        }
    }

    /// Exiting: give our running jobs back to the queue (they were given back one by one
    /// as the stop went, but the store may have refused), unless fenced (they are not
    /// ours to give). While outcomes wait, or when the store refuses for
    /// [`PENDING_AT_EXIT`], the journal says so instead, and the next run gives them
    /// back once it stored the outcomes: never before (a job whose outcome waits would be
    /// queued again and run twice), and never as the death of a supervisor.
    pub(super) fn give_back_at_exit(&mut self) {
        if self.fenced() {
            return;
        }
        let until = Instant::now() + self.patience_at_exit();
        if self.pending.is_empty() {
            loop {
                match self.store.unregister_instance(self.instance, wall_now()) {
                    Ok(_) => return,
                    Err(e) if Instant::now() >= until || self.in_a_hurry() => {
                        log::warn!("cannot give the running jobs back: {e}; the next run will");
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        let path = crate::journal::path(&self.config.state_dir);
        let store = super::startup::store_identity(&self.config.store);
        let waiting = self.pending.waiting();
        if let Err(e) = crate::journal::save(&path, &store, waiting, Some(self.instance)) {
            log::error!("cannot write the outcomes journal {}: {e}", path.display());
        }
    }

    /// How long the exit keeps trying a store that refuses: not at all after a second
    /// SIGINT (the contract's "stops at once"; the journal keeps what waits).
    fn patience_at_exit(&self) -> Duration {
        if self.in_a_hurry() {
            Duration::ZERO
        } else {
            PENDING_AT_EXIT
        }
    }

    /// Stopping: keep trying the outcomes that wait, for a while. Those still waiting
    /// then stay in the outcomes journal, which the next run stores first.
    pub(super) fn flush_pending(&mut self) {
        let until = Instant::now() + self.patience_at_exit();
        // One try at least: a store that answers takes them all at once.
        self.retry_pending();
        while !self.pending.is_empty() && Instant::now() < until && !self.in_a_hurry() {
            if let Some(at) = self.pending.deadline() {
                // In steps, so that a second SIGINT meanwhile cuts it short.
                let step = at.saturating_duration_since(Instant::now());
                std::thread::sleep(step.min(Duration::from_millis(50)));
                if Instant::now() < at {
                    continue;
                }
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

    pub(super) fn record(
        &mut self,
        job: i64,
        attempt: u32,
        o: supervisor_store::OutcomeRecord,
        next: Next,
    ) {
        self.claims.remove(&job);
        let now = wall_now();
        let next = match next {
            Next::Done => supervisor_store::AfterAttempt::Done,
            Next::Dead => supervisor_store::AfterAttempt::Dead,
            Next::Retry { delay } => supervisor_store::AfterAttempt::Retry {
                at: now + delay.as_secs_f64(),
            },
        };
        let waiting = Waiting {
            owner: self.instance,
            job,
            attempt,
            outcome: o,
            next,
            at: Some(now),
            events: vec![],
        };
        if self.pending.is_empty() && self.can_hand_over() {
            // Stored by the grabber with its next claim, if a grant goes to it now.
            self.handed.add(waiting);
            return;
        }
        self.store_now(waiting);
    }

    /// Whether the grabber can store outcomes: connected, its store answering, and ours
    /// to write.
    fn can_hand_over(&self) -> bool {
        let connected = (self.core.grabber())
            .and_then(|g| self.children.get(&g))
            .is_some_and(|c| c.writer.is_some() && c.exit.is_none());
        connected && self.lost_claims.is_none() && !self.fenced()
    }

    /// Store an outcome from this loop, then write the events held with it; if the store
    /// fails, it waits (journaled) with them. Behind an outcome that waits, every later
    /// one waits too: in order.
    fn store_now(&mut self, waiting: Waiting) {
        if !self.pending.is_empty() {
            self.wait_for_store(waiting);
            return;
        }
        let job = waiting.job;
        if self.store.connection_lost() {
            self.reopen_store();
        }
        let settle = waiting.settle(wall_now());
        match (self.store).settle(&[settle]).map(|s| s.first().copied()) {
            Ok(Some(settled)) => self.outcome_stored(waiting, settled),
            Ok(None) => self.wait_for_store(waiting),
            Err(e) => {
                log::error!("cannot store the outcome of job {job} yet (will retry): {e}");
                self.wait_for_store(waiting);
            }
        }
    }

    /// An outcome is stored, or was refused as stale: write its events (as the store
    /// left the job: see [`crate::pending::as_settled`]).
    fn outcome_stored(&mut self, waiting: Waiting, settled: supervisor_store::Settled) {
        if settled.stored() {
            if let Some(c) = &mut self.checkpointer {
                c.wrote();
            }
        }
        for record in crate::pending::as_settled(waiting, settled) {
            self.emit(record);
        }
    }

    /// A grant for the grabber, with the outcomes handed over since the last one.
    pub(super) fn grant(&mut self, group: String, n: u32, epoch: u64, poll: Option<u64>) {
        let settle = self.handed.send(Instant::now());
        self.handed_timer();
        self.send_to_grabber(ToChild::Grant {
            group,
            n,
            epoch,
            poll,
            settle,
        });
    }

    /// The grabber stored attempt `attempt` of `job` with a claim (or found it stale).
    pub(super) fn settled(&mut self, job: i64, attempt: u32, settled: supervisor_store::Settled) {
        // Not held (any more): stored here already, when the grabber failed meanwhile.
        if let Some(waiting) = self.handed.settled(job, attempt) {
            self.handed_timer();
            self.outcome_stored(waiting, settled);
        }
    }

    /// Store here what was handed to the grabber and not sent (`all`: and what was
    /// sent, the grabber having failed, died or taken too long).
    pub(super) fn store_handed(&mut self, all: bool) {
        if self.handed.is_empty() {
            return;
        }
        let outcomes = if all {
            self.handed.take_all()
        } else {
            self.handed.take_unsent()
        };
        self.handed_timer();
        for waiting in outcomes {
            self.store_now(waiting);
        }
    }

    /// When the loop takes back what the grabber was sent, in its timer table.
    fn handed_timer(&mut self) {
        let at = (self.handed.deadline())
            .map(|t| Time::from_origin(t.saturating_duration_since(self.started)));
        self.timers.set_or_stop(Wake::Handed, at);
    }

    /// Fenced: what the grabber was handed goes to the outcomes journal, for the next
    /// run to store.
    pub(super) fn journal_handed(&mut self) {
        let outcomes = self.handed.take_all();
        self.handed_timer();
        for waiting in outcomes {
            self.wait_for_store(waiting);
        }
    }

    /// An outcome the store cannot take now: it waits, journaled.
    pub(super) fn wait_for_store(&mut self, waiting: Waiting) {
        let was = self.pending.len();
        self.pending.add(waiting, Instant::now());
        self.save_journal();
        // Said once the actions of this input are done (the events held with it are in
        // the journal by then).
        self.pending_was.get_or_insert(was);
    }

    /// Whether this supervisor fenced itself (see `lease.rs`).
    pub(super) fn fenced(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.fenced())
    }

    /// Give back the jobs running under us in the store that the grabber claimed in a
    /// pass that failed (its answer lost with the connection) and that we never heard of.
    pub(super) fn give_back_lost_claims(&mut self) {
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
            .chain(self.handed.jobs())
            .collect();
        match self
            .store
            .release_strays(self.instance, &known, Some(before), wall_now())
        {
            Ok(ids) => {
                if wall_now() >= self.lost_claims_until {
                    self.lost_claims = None;
                }
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
    pub(super) fn reopen_store(&mut self) {
        match crate::store::open_for_loop(&self.store_arg) {
            Ok(fresh) => self.store = fresh,
            Err(e) => log::warn!("cannot reopen the job store: {e:#}"),
        }
    }
}
