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
    /// The events about this attempt, in order (in the journal as `[name, {fields}]`
    /// pairs, as before there was [`EventRecord`]).
    #[serde(with = "crate::record::as_pairs")]
    pub events: Vec<HeldEvent>,
}

/// What one try of an outcome came to.
#[derive(Debug)]
pub enum Tried {
    /// Stored (or refused as stale: nothing more can be done with it).
    Done,
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
                Tried::Done => {
                    let w = self.queue.pop_front().expect("front exists");
                    out.extend(w.events);
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
            events: vec![],
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
                Tried::Done
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
