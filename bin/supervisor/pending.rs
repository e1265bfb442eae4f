//! Outcomes the store could not take yet (disk full, database locked, connection lost):
//! they wait here, in order, and are tried again with backoff until the store takes them
//! or refuses them as stale. Never dropped: a job leaves the queue only when its outcome
//! is stored, and the events that announce it (`job_finished`, then `job_retry_scheduled`
//! or `job_dead`) are held back with it, so that the events file never says what the
//! store does not.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use supervisor_core::backoff::Backoff;

use crate::record::EventRecord;

/// An event held back, written once its outcome is stored.
pub type HeldEvent = EventRecord;

/// One attempt's outcome waiting for the store, as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Waiting {
    /// The supervisor instance that ran it (a later run replays it under that owner).
    pub owner: i64,
    pub job: i64,
    pub attempt: u32,
    pub outcome: supervisor_store::OutcomeRecord,
    pub next: supervisor_store::AfterAttempt,
    /// When the attempt ended (unix seconds), its `finished_at` whenever it is stored
    /// (absent from the journals of earlier versions: then the time it is stored).
    #[serde(default)]
    pub at: Option<f64>,
    /// The events about this attempt, in order (in the journal as `[name, {fields}]`
    /// pairs, as before there was [`EventRecord`]).
    #[serde(with = "crate::record::as_pairs")]
    pub events: Vec<HeldEvent>,
}

impl Waiting {
    /// The outcome as the store takes it; `now` when the attempt's end is not known.
    pub fn settle(&self, now: f64) -> supervisor_store::Settle {
        supervisor_store::Settle {
            job: self.job,
            attempt: self.attempt,
            owner: self.owner,
            outcome: self.outcome.clone(),
            next: self.next,
            at: self.at.unwrap_or(now),
        }
    }
}

/// The events held with an outcome, as the store left its job: when it made the job
/// `canceled` where a retry was asked (a cancel was requested while the attempt ran and
/// the core had not heard of it yet), the attempt's `job_finished` says `canceled`, as
/// the core's own would have, and no retry is announced. A stale outcome's events are
/// written as they are: another run or a retry took the job on since.
pub fn as_settled(waiting: Waiting, settled: supervisor_store::Settled) -> Vec<HeldEvent> {
    match settled {
        supervisor_store::Settled::Stale => {
            log::warn!(
                "job {} attempt {}: outcome refused by the store (stale)",
                waiting.job,
                waiting.attempt
            );
            waiting.events
        }
        supervisor_store::Settled::Stored => waiting.events,
        supervisor_store::Settled::Canceled => {
            log::info!(
                "job {} attempt {}: canceled, as asked while it ran, not retried",
                waiting.job,
                waiting.attempt
            );
            (waiting.events.into_iter())
                .filter(|e| !matches!(e, EventRecord::JobRetryScheduled { .. }))
                .map(|e| match e {
                    EventRecord::JobFinished {
                        job_id,
                        group,
                        attempt,
                        exit_code,
                        signal,
                        duration_s,
                        start_error,
                        reason,
                        ..
                    } => EventRecord::JobFinished {
                        job_id,
                        group,
                        attempt,
                        outcome: crate::record::JobOutcome::Canceled,
                        exit_code,
                        signal,
                        duration_s,
                        start_error,
                        reason,
                    },
                    other => other,
                })
                .collect()
        }
    }
}

/// What one try of an outcome came to.
#[derive(Debug)]
pub enum Tried {
    /// Stored (or refused as stale: nothing more can be done with it), as it says.
    Done(supervisor_store::Settled),
    /// The store failed again.
    Failed(String),
}

/// The outcomes waiting for the store, oldest first.
#[derive(Debug)]
pub struct Pending {
    queue: VecDeque<Waiting>,
    backoff: Backoff,
    delay: Option<Duration>,
    next_try: Option<Instant>,
    failures: u64,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            queue: VecDeque::new(),
            backoff: Backoff::from_secs(0.05, 5.0, 0.0),
            delay: None,
            next_try: None,
            failures: 0,
        }
    }
}

impl Pending {
    /// How many outcomes wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Every waiting outcome, oldest first (for the journal).
    pub fn waiting(&self) -> impl Iterator<Item = &Waiting> {
        self.queue.iter()
    }

    /// Whether events about `job` must be held back (an outcome of it waits).
    pub fn holds(&self, job: i64) -> bool {
        self.queue.iter().any(|w| w.job == job)
    }

    /// Hold back an event about `job`, after its waiting outcome.
    pub fn hold_event(&mut self, job: i64, event: HeldEvent) {
        if let Some(w) = self.queue.iter_mut().rev().find(|w| w.job == job) {
            w.events.push(event);
        }
    }

    /// An outcome the store just refused with an error: it waits, and is tried at the
    /// next deadline.
    pub fn add(&mut self, waiting: Waiting, now: Instant) {
        self.queue.push_back(waiting);
        if self.next_try.is_none() {
            self.schedule(now);
        }
    }

    /// When to try again, if anything waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_try.filter(|_| !self.queue.is_empty())
    }

    /// Store failures since the last success.
    #[cfg(test)]
    pub fn failures(&self) -> u64 {
        self.failures
    }

    fn schedule(&mut self, now: Instant) {
        let delay = self
            .backoff
            .next_delay(self.delay, &mut supervisor_core::random::Fixed(0.5));
        self.delay = Some(delay);
        self.next_try = Some(now + delay);
    }

    /// If it is time, try the waiting outcomes in order with `store` until one fails;
    /// returns the events of those that are done, in order, to be written now.
    pub fn retry(
        &mut self,
        now: Instant,
        store: &mut dyn FnMut(&Waiting) -> Tried,
    ) -> Vec<HeldEvent> {
        let mut out = Vec::new();
        if self.next_try.is_none_or(|t| t > now) {
            return out;
        }
        while let Some(w) = self.queue.front() {
            match store(w) {
                Tried::Done(settled) => {
                    let w = self.queue.pop_front().expect("front exists");
                    out.extend(as_settled(w, settled));
                    self.failures = 0;
                    self.delay = None;
                }
                Tried::Failed(e) => {
                    self.failures += 1;
                    log::warn!(
                        "{} outcome(s) wait for the store (job {} first): {e}",
                        self.queue.len(),
                        w.job
                    );
                    self.schedule(now);
                    return out;
                }
            }
        }
        self.next_try = None;
        out
    }
}

/// How long outcomes handed to the grabber wait for its word before the loop stores them
/// itself (a grabber that hangs is killed only when it misses its heartbeats).
pub const HANDED_PATIENCE: Duration = Duration::from_secs(1);

/// Outcomes handed to the grabber, to be stored with its next claim in one transaction
/// (one write of the store a job where there were two, from two processes): held here,
/// with the events that announce them, until the grabber says they are stored. An
/// outcome not sent with a grant in the same turn of the loop, or sent to a grabber that
/// then fails or dies, is stored by the loop itself (storing it twice is refused as
/// stale, so a grabber that stored it before it failed does no harm).
#[derive(Debug, Default)]
pub struct Handed {
    /// Not sent yet: they go with the next grant, or are stored by the loop.
    unsent: Vec<Waiting>,
    /// Sent with a grant: the grabber's pass says when each is stored.
    sent: Vec<Waiting>,
    /// When each of `sent` was sent, in the same order (the oldest first).
    sent_at: Vec<Instant>,
}

impl Handed {
    /// An outcome, to go with the next grant.
    pub fn add(&mut self, waiting: Waiting) {
        self.unsent.push(waiting);
    }

    /// Whether events about `job` must be held back (its outcome is not stored yet).
    pub fn holds(&self, job: i64) -> bool {
        self.unsent.iter().chain(&self.sent).any(|w| w.job == job)
    }

    /// Hold back an event about `job`, after its outcome.
    pub fn hold_event(&mut self, job: i64, event: HeldEvent) {
        let all = self.unsent.iter_mut().chain(self.sent.iter_mut());
        if let Some(w) = all.filter(|w| w.job == job).last() {
            w.events.push(event);
        }
    }

    /// Hold back the `job_started` of a job of `group` behind the newest outcome held of
    /// that group, if any: the worker starting it may be the one whose last job's
    /// `job_finished` waits here (a job claimed with another's credit can start before
    /// the grabber says it stored the outcome), and a worker's jobs are told in order.
    pub fn hold_start(&mut self, group: &str, event: HeldEvent) -> Result<(), HeldEvent> {
        let of_group = |w: &&mut Waiting| {
            w.events.iter().any(
                |e| matches!(e, EventRecord::JobFinished { group: g, .. } if g.as_str() == group),
            )
        };
        match (self.sent.iter_mut().chain(self.unsent.iter_mut()))
            .filter(of_group)
            .last()
        {
            Some(w) => {
                w.events.push(event);
                Ok(())
            }
            None => Err(event),
        }
    }

    /// The outcomes not sent yet, as the grabber stores them; they count as sent (at
    /// `now`).
    pub fn send(&mut self, now: Instant) -> Vec<supervisor_store::Settle> {
        let wall = crate::events_file::wall_now();
        let settle = (self.unsent.iter()).map(|w| w.settle(wall)).collect();
        self.sent_at.extend(self.unsent.iter().map(|_| now));
        self.sent.append(&mut self.unsent);
        settle
    }

    /// Until when the grabber may take to say the sent outcomes are stored: after that
    /// the loop takes them back ([`Handed::take_all`]), so that a grabber that hangs
    /// delays their events by [`HANDED_PATIENCE`] at most.
    pub fn deadline(&self) -> Option<Instant> {
        self.sent_at.first().map(|t| *t + HANDED_PATIENCE)
    }

    /// The grabber stored (or found stale) attempt `attempt` of `job`: its outcome, with
    /// the events held, if it was sent and not taken back.
    pub fn settled(&mut self, job: i64, attempt: u32) -> Option<Waiting> {
        let i = (self.sent.iter()).position(|w| w.job == job && w.attempt == attempt)?;
        self.sent_at.remove(i);
        Some(self.sent.remove(i))
    }

    /// The outcomes not sent, in order: the loop stores them itself.
    pub fn take_unsent(&mut self) -> Vec<Waiting> {
        std::mem::take(&mut self.unsent)
    }

    /// Every outcome, sent or not, in order: the grabber failed or is gone, and the loop
    /// stores them itself.
    pub fn take_all(&mut self) -> Vec<Waiting> {
        let mut all = std::mem::take(&mut self.sent);
        all.append(&mut self.unsent);
        self.sent_at.clear();
        all
    }

    /// The jobs whose outcome is held here (their rows may still say running).
    pub fn jobs(&self) -> impl Iterator<Item = i64> + '_ {
        self.unsent.iter().chain(&self.sent).map(|w| w.job)
    }

    pub fn is_empty(&self) -> bool {
        self.unsent.is_empty() && self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(job: i64) -> Waiting {
        Waiting {
            owner: 1,
            job,
            attempt: 1,
            outcome: supervisor_store::OutcomeRecord {
                kind: supervisor_store::OutcomeKind::Succeeded,
                exit_code: Some(0),
                signal: None,
                start_error: None,
                reason: None,
            },
            next: supervisor_store::AfterAttempt::Done,
            at: Some(job as f64),
            events: vec![],
        }
    }

    fn finished(job: i64) -> HeldEvent {
        EventRecord::JobFinished {
            job_id: job,
            group: "g".into(),
            attempt: 1,
            outcome: crate::record::JobOutcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            duration_s: 0.1,
            start_error: None,
            reason: None,
        }
    }

    fn event(job: i64) -> HeldEvent {
        EventRecord::JobRetryScheduled {
            job_id: job,
            attempt: 1,
            delay_s: 1.0,
        }
    }

    #[test]
    fn outcomes_handed_to_the_grabber_hold_their_events_until_settled_or_taken_back() {
        let mut h = Handed::default();
        h.add(waiting(1));
        assert!(h.holds(1) && !h.holds(2));
        h.hold_event(1, event(1));
        let t0 = Instant::now();
        assert_eq!(h.deadline(), None);
        let sent = h.send(t0);
        assert_eq!(h.deadline(), Some(t0 + HANDED_PATIENCE));
        assert_eq!((sent.len(), sent[0].job, sent[0].at), (1, 1, 1.0));
        // The oldest outcome sent sets the deadline, not the first sent since none
        // waited: a grabber that keeps up is never taken for one that hangs.
        let t1 = t0 + Duration::from_millis(500);
        h.add(waiting(5));
        h.send(t1);
        assert_eq!(h.deadline(), Some(t0 + HANDED_PATIENCE));
        h.add(waiting(2));
        h.hold_event(2, event(2));
        // Another attempt of job 1 is not this one.
        assert!(h.settled(1, 2).is_none());
        let w = h.settled(1, 1).expect("sent");
        assert_eq!(w.events.len(), 1);
        assert!(!h.holds(1) && h.settled(1, 1).is_none(), "settled once");
        assert_eq!(h.deadline(), Some(t1 + HANDED_PATIENCE));
        assert!(h.settled(5, 1).is_some());
        assert_eq!(h.deadline(), None, "nothing sent waits");
        assert_eq!(h.jobs().collect::<Vec<_>>(), [2]);
        // A job's start waits behind the newest held outcome of its group, if any.
        let started = |job| EventRecord::JobStarted {
            job_id: job,
            group: "g".into(),
            slot: 0,
            worker_pid: 1,
            attempt: 1,
        };
        h.hold_event(2, finished(2));
        assert!(h.hold_start("g", started(7)).is_ok());
        assert!(h.hold_start("other", started(8)).is_err());
        // Not sent in its turn: the loop stores it.
        let unsent = h.take_unsent();
        assert_eq!((unsent.len(), unsent[0].events.len()), (1, 3));
        assert!(matches!(
            unsent[0].events[2],
            EventRecord::JobStarted { job_id: 7, .. }
        ));
        assert!(h.is_empty());
        // A grabber that fails gives every outcome back, sent ones first.
        h.add(waiting(3));
        h.send(t0);
        h.add(waiting(4));
        let all: Vec<i64> = h.take_all().iter().map(|w| w.job).collect();
        assert_eq!(all, [3, 4]);
        assert!(h.is_empty() && h.settled(3, 1).is_none() && h.deadline().is_none());
    }

    #[test]
    fn a_store_that_fails_n_times_gets_every_outcome_in_order_with_its_events() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        for job in [1, 2] {
            p.add(waiting(job), t0);
            assert!(p.holds(job));
            p.hold_event(job, event(job));
        }
        assert!(!p.holds(3));
        let mut fails_left = 3;
        let mut stored = vec![];
        let mut store = |w: &Waiting| {
            if fails_left > 0 {
                fails_left -= 1;
                Tried::Failed("database or disk is full".into())
            } else {
                stored.push(w.job);
                Tried::Done(supervisor_store::Settled::Stored)
            }
        };
        // Not before its deadline.
        assert!(p.retry(t0, &mut store).is_empty());
        let mut now = t0;
        let mut written = vec![];
        let mut delays = vec![];
        for _ in 0..10 {
            let Some(at) = p.deadline() else { break };
            delays.push(at.duration_since(now));
            now = at;
            written.extend(p.retry(now, &mut store));
        }
        assert!(p.is_empty() && p.deadline().is_none());
        assert_eq!(stored, [1, 2]);
        let jobs: Vec<_> = written.iter().map(|r| r.outcome_of_job()).collect();
        assert_eq!(jobs, [Some(1), Some(2)]);
        // Backoff: each failure waits longer (50 ms, 100 ms, 200 ms, then 400 ms).
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400], "{delays:?}");
        assert_eq!(p.failures(), 0);
    }
}
