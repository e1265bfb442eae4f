//! buildbot's doorbell loop (`buildbot/util/loop.py`, `LoopBase`): processing functions
//! run one pass at a time when the doorbell rings or a function's own timer comes due,
//! as a sans-IO [`Doorbell`] keyed by function ids plus a small [`DoorbellLoop`] driver.
//!
//! The rules, as buildbot's:
//! - [`ring`](Doorbell::ring) (buildbot's `trigger`) asks for a full pass: every
//!   registered function once, one at a time. Rings while idle or during a pass coalesce,
//!   but at least one full pass starts after the last ring: a ring during a pass means
//!   exactly one more full pass after it.
//! - A function may return a wakeup time; it replaces that function's previous timer,
//!   but never earlier than `min_delay` after the pass ended (buildbot's
//!   `OCD_MINIMUM_DELAY`, which stops a function that asks for "now" from spinning).
//!   When timers come due, a pass runs just the due functions. A ring cancels all timers,
//!   since the full pass it brings runs everyone anyway.
//! - Functions are a set: one added twice runs once per pass. Removing one drops its
//!   timer. [`add`](Doorbell::add) does not ring: ring if the newcomer should run soon.
//! - A failing function is logged (`log::error!`) and loses its timer; the other
//!   functions and later passes are unaffected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::clock::Clock;
use crate::time::Time;

/// What a processing function reports: an optional wakeup time, or an error to log.
pub type Outcome = Result<Option<Time>, String>;

/// A pass to run now: call each function of `ids` once, one at a time, then report
/// with [`Doorbell::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pass<K> {
    /// The functions to call, each once, in no promised order.
    pub ids: Vec<K>,
    /// Whether this pass answers a ring (every function) rather than due timers only.
    pub rung: bool,
}

/// The doorbell loop's state machine; `K` identifies a processing function.
///
/// The caller owns the functions and the event loop: after [`ring`](Self::ring), after
/// [`finish`](Self::finish), and when [`next_deadline`](Self::next_deadline) passes, it
/// calls [`poll`](Self::poll), runs the pass it gets, and reports the results.
#[derive(Clone, Debug)]
pub struct Doorbell<K> {
    min_delay: Duration,
    functions: BTreeSet<K>,
    timers: BTreeMap<K, Time>,
    /// A ring not yet answered by the start of a full pass.
    rung: bool,
    running: bool,
}

impl<K: Ord + Clone + fmt::Debug> Doorbell<K> {
    /// An idle doorbell with no functions. `min_delay` should be positive: with zero, a
    /// function that always asks to wake "now" is run again and again without pause.
    pub fn new(min_delay: Duration) -> Self {
        Doorbell {
            min_delay,
            functions: BTreeSet::new(),
            timers: BTreeMap::new(),
            rung: false,
            running: false,
        }
    }

    /// Register a function (again: no effect). It runs from the next full pass on.
    pub fn add(&mut self, k: K) {
        self.functions.insert(k);
    }

    /// Unregister a function and drop its timer; returns whether it was registered. If
    /// it is in the running pass, its result will be ignored.
    pub fn remove(&mut self, k: &K) -> bool {
        self.timers.remove(k);
        self.functions.remove(k)
    }

    /// Whether `k` is registered.
    pub fn contains(&self, k: &K) -> bool {
        self.functions.contains(k)
    }

    /// Ring the doorbell: a full pass will start after this call (at the next poll once
    /// no pass is running).
    pub fn ring(&mut self) {
        self.rung = true;
        // The full pass runs every function; the timers are redundant now.
        self.timers.clear();
    }

    /// The pass to run now, if no pass is running and the doorbell was rung or a timer
    /// is due at `now`.
    pub fn poll(&mut self, now: Time) -> Option<Pass<K>> {
        if self.running {
            return None;
        }
        let rung = std::mem::take(&mut self.rung);
        let ids: Vec<K> = if rung {
            // Timers set by a pass that a ring interrupted are redundant too.
            self.timers.clear();
            self.functions.iter().cloned().collect()
        } else {
            let due: Vec<K> = self
                .timers
                .iter()
                .filter(|&(_, &t)| t <= now)
                .map(|(k, _)| k.clone())
                .collect();
            // A function's timer is cancelled as it is run; its result sets the next.
            for k in &due {
                self.timers.remove(k);
            }
            due
        };
        if ids.is_empty() {
            return None; // a ring with no functions: nothing to run
        }
        self.running = true;
        Some(Pass { ids, rung })
    }

    /// The running pass ended at `now` with these results: set the wakeup timers (no
    /// earlier than `now + min_delay`) and log the failures. Ignored if no pass runs.
    pub fn finish(&mut self, now: Time, results: impl IntoIterator<Item = (K, Outcome)>) {
        if !self.running {
            log::warn!("doorbell: finish called with no pass running; ignored");
            return;
        }
        self.running = false;
        let earliest = now + self.min_delay;
        for (k, outcome) in results {
            match outcome {
                // A function removed during the pass gets no timer.
                Ok(Some(t)) if self.functions.contains(&k) => {
                    self.timers.insert(k, t.max(earliest));
                }
                Ok(_) => {}
                Err(e) => log::error!("doorbell: processing function {k:?} failed: {e}"),
            }
        }
    }

    /// When [`poll`](Self::poll) should next be called: the earliest timer, or
    /// [`Time::ZERO`] (due at once) while a ring awaits its pass; `None` while a pass runs
    /// (its [`finish`](Self::finish) comes first) or when there is nothing to wait for.
    pub fn next_deadline(&self) -> Option<Time> {
        if self.running {
            None
        } else if self.rung {
            Some(Time::ZERO)
        } else {
            self.timers.values().min().copied()
        }
    }

    /// Whether a pass is running (polled and not yet finished).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The wakeup timer of function `k`, if it has one.
    pub fn timer(&self, k: &K) -> Option<Time> {
        self.timers.get(k).copied()
    }
}

/// A processing function for [`DoorbellLoop`]: given the time it is called, it returns
/// when it wants to run again, if ever, or an error to log.
pub type ProcessingFn<'f> = Box<dyn FnMut(Time) -> Outcome + 'f>;

/// A [`Doorbell`] that owns its processing functions and runs them over a [`Clock`].
///
/// ```
/// use std::cell::RefCell;
/// use std::time::Duration;
/// use supervisor_core::clock::{Clock, FakeClock};
/// use supervisor_core::doorbell::DoorbellLoop;
/// use supervisor_core::Time;
///
/// let calls = RefCell::new(vec![]);
/// let mut bell = DoorbellLoop::new(Duration::from_secs(1));
/// bell.add("scheduler", |now: Time| {
///     calls.borrow_mut().push(("scheduler", now.since_origin().as_secs()));
///     Ok(Some(now + Duration::from_secs(60))) // wake me in a minute
/// });
/// bell.add("broken", |_| Err("db unreachable".to_string()));
///
/// let clock = FakeClock::new();
/// bell.ring();
/// bell.ring(); // coalesces with the first
/// bell.run_until(&clock, Time::from_secs_f64(150.0));
/// // Once for the ring, then on its own timer at 60 s and 120 s; "broken" is only logged.
/// assert_eq!(*calls.borrow(), [("scheduler", 0), ("scheduler", 60), ("scheduler", 120)]);
/// assert_eq!(clock.now(), Time::from_secs_f64(150.0));
/// ```
pub struct DoorbellLoop<'f, K> {
    bell: Doorbell<K>,
    functions: BTreeMap<K, ProcessingFn<'f>>,
}

impl<K: fmt::Debug> fmt::Debug for DoorbellLoop<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoorbellLoop")
            .field("bell", &self.bell)
            .finish_non_exhaustive()
    }
}

impl<'f, K: Ord + Clone + fmt::Debug> DoorbellLoop<'f, K> {
    /// An idle loop with no functions; see [`Doorbell::new`] for `min_delay`.
    pub fn new(min_delay: Duration) -> Self {
        DoorbellLoop {
            bell: Doorbell::new(min_delay),
            functions: BTreeMap::new(),
        }
    }

    /// Register `f` as function `k`, replacing any function already registered as `k`.
    pub fn add(&mut self, k: K, f: impl FnMut(Time) -> Outcome + 'f) {
        self.bell.add(k.clone());
        self.functions.insert(k, Box::new(f));
    }

    /// Unregister function `k` and drop its timer; returns whether it was registered.
    pub fn remove(&mut self, k: &K) -> bool {
        self.functions.remove(k);
        self.bell.remove(k)
    }

    /// Ring the doorbell: the next [`run_due`](Self::run_due) runs every function.
    pub fn ring(&mut self) {
        self.bell.ring();
    }

    /// See [`Doorbell::next_deadline`].
    pub fn next_deadline(&self) -> Option<Time> {
        self.bell.next_deadline()
    }

    /// The state machine underneath, to inspect timers.
    pub fn doorbell(&self) -> &Doorbell<K> {
        &self.bell
    }

    /// Run the passes due now, one after the other; returns how many ran.
    pub fn run_due(&mut self, clock: &dyn Clock) -> usize {
        let mut passes = 0;
        while let Some(pass) = self.bell.poll(clock.now()) {
            passes += 1;
            let results: Vec<(K, Outcome)> = pass
                .ids
                .into_iter()
                .filter_map(|k| {
                    let f = self.functions.get_mut(&k)?;
                    let outcome = f(clock.now());
                    Some((k, outcome))
                })
                .collect();
            self.bell.finish(clock.now(), results);
        }
        passes
    }

    /// Run due passes and sleep on `clock` to each next deadline, until `until`; returns
    /// how many passes ran.
    pub fn run_until(&mut self, clock: &dyn Clock, until: Time) -> usize {
        let mut passes = self.run_due(clock);
        while let Some(t) = self.next_deadline().filter(|&t| t <= until) {
            clock.sleep_until(t);
            passes += self.run_due(clock);
        }
        clock.sleep_until(until);
        passes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use proptest::prelude::*;
    use std::cell::RefCell;

    fn at(secs: f64) -> Time {
        Time::from_secs_f64(secs)
    }

    const MIN: Duration = Duration::from_secs(5);

    fn bell(ids: &[u8]) -> Doorbell<u8> {
        let mut b = Doorbell::new(MIN);
        for &k in ids {
            b.add(k);
        }
        b
    }

    fn quiet(ids: &[u8]) -> Vec<(u8, Outcome)> {
        ids.iter().map(|&k| (k, Ok(None))).collect()
    }

    #[test]
    fn no_pass_without_a_ring_or_a_due_timer() {
        let mut b = bell(&[1, 2]);
        assert_eq!(b.poll(at(100.0)), None);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn a_ring_starts_one_pass_of_every_function() {
        let mut b = bell(&[1, 2, 3]);
        b.ring();
        assert_eq!(b.next_deadline(), Some(Time::ZERO));
        let pass = b.poll(at(0.0)).unwrap();
        assert_eq!(
            pass,
            Pass {
                ids: vec![1, 2, 3],
                rung: true
            }
        );
        assert!(b.is_running());
        b.finish(at(1.0), quiet(&pass.ids));
        assert!(!b.is_running());
        assert_eq!(b.poll(at(1.0)), None);
    }

    #[test]
    fn rings_while_idle_coalesce_into_one_pass() {
        let mut b = bell(&[1]);
        b.ring();
        b.ring();
        b.ring();
        let pass = b.poll(at(0.0)).unwrap();
        b.finish(at(0.0), quiet(&pass.ids));
        assert_eq!(b.poll(at(0.0)), None);
    }

    #[test]
    fn ring_during_a_pass_starts_exactly_one_more_pass() {
        let mut b = bell(&[1, 2]);
        b.ring();
        let first = b.poll(at(0.0)).unwrap();
        for _ in 0..5 {
            b.ring();
            assert_eq!(b.poll(at(0.5)), None, "never two passes at once");
        }
        b.finish(at(1.0), quiet(&first.ids));
        let second = b.poll(at(1.0)).unwrap();
        assert_eq!(
            second,
            Pass {
                ids: vec![1, 2],
                rung: true
            }
        );
        b.finish(at(2.0), quiet(&second.ids));
        assert_eq!(b.poll(at(2.0)), None);
    }

    #[test]
    fn a_returned_wakeup_runs_just_that_function_when_due() {
        let mut b = bell(&[1, 2]);
        b.ring();
        b.poll(at(0.0)).unwrap();
        b.finish(at(0.0), [(1, Ok(Some(at(30.0)))), (2, Ok(None))]);
        assert_eq!(b.next_deadline(), Some(at(30.0)));
        assert_eq!(b.poll(at(29.9)), None);
        assert_eq!(
            b.poll(at(30.0)),
            Some(Pass {
                ids: vec![1],
                rung: false
            })
        );
        assert_eq!(b.timer(&1), None, "the timer is used up by its pass");
    }

    #[test]
    fn the_loop_wakes_at_the_earliest_timer() {
        let mut b = bell(&[1, 2, 3]);
        b.ring();
        b.poll(at(0.0)).unwrap();
        b.finish(
            at(0.0),
            [
                (1, Ok(Some(at(50.0)))),
                (2, Ok(Some(at(20.0)))),
                (3, Ok(Some(at(90.0)))),
            ],
        );
        assert_eq!(b.next_deadline(), Some(at(20.0)));
    }

    #[test]
    fn a_timer_is_replaced_by_a_later_return() {
        let mut b = bell(&[1]);
        b.ring();
        b.poll(at(0.0)).unwrap();
        b.finish(at(0.0), [(1, Ok(Some(at(10.0))))]);
        b.poll(at(10.0)).unwrap();
        b.finish(at(10.0), [(1, Ok(Some(at(100.0))))]);
        assert_eq!(b.timer(&1), Some(at(100.0)));
        assert_eq!(b.poll(at(99.0)), None);
        assert!(b.poll(at(100.0)).is_some());
    }

    #[test]
    fn a_wakeup_in_the_past_or_too_close_is_moved_to_min_delay() {
        let mut b = bell(&[1, 2]);
        b.ring();
        b.poll(at(100.0)).unwrap();
        b.finish(
            at(100.0),
            [(1, Ok(Some(at(3.0)))), (2, Ok(Some(at(101.0))))],
        );
        assert_eq!(b.timer(&1), Some(at(105.0)));
        assert_eq!(b.timer(&2), Some(at(105.0)));
    }

    #[test]
    fn a_function_added_twice_runs_once_per_pass() {
        let mut b = bell(&[7, 7]);
        b.add(7);
        b.ring();
        assert_eq!(b.poll(at(0.0)).unwrap().ids, [7]);
    }

    #[test]
    fn removing_a_function_drops_its_timer() {
        let mut b = bell(&[1, 2]);
        b.ring();
        b.poll(at(0.0)).unwrap();
        b.finish(at(0.0), [(1, Ok(Some(at(10.0)))), (2, Ok(Some(at(20.0))))]);
        assert!(b.remove(&1));
        assert_eq!(b.timer(&1), None);
        assert_eq!(b.next_deadline(), Some(at(20.0)));
        assert_eq!(b.poll(at(15.0)), None);
    }

    #[test]
    fn a_function_removed_during_its_pass_gets_no_timer() {
        let mut b = bell(&[1]);
        b.ring();
        b.poll(at(0.0)).unwrap();
        b.remove(&1);
        b.finish(at(0.0), [(1, Ok(Some(at(10.0))))]);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn a_ring_cancels_the_timers_its_full_pass_makes_redundant() {
        let mut b = bell(&[1]);
        b.ring();
        b.poll(at(0.0)).unwrap();
        b.finish(at(0.0), [(1, Ok(Some(at(60.0))))]);
        b.ring();
        assert_eq!(b.timer(&1), None);
        assert!(b.poll(at(1.0)).unwrap().rung);
    }

    #[test]
    fn finish_without_a_pass_is_ignored() {
        let mut b = bell(&[1]);
        b.finish(at(0.0), [(1, Ok(Some(at(60.0))))]);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn an_erroring_function_does_not_stop_the_others_or_the_loop() {
        let runs = RefCell::new(vec![]);
        let mut l = DoorbellLoop::new(MIN);
        for k in ["a", "bad", "c"] {
            let runs = &runs;
            l.add(k, move |_| {
                runs.borrow_mut().push(k);
                if k == "bad" {
                    Err("boom".into())
                } else {
                    Ok(None)
                }
            });
        }
        let clock = FakeClock::new();
        l.ring();
        assert_eq!(l.run_due(&clock), 1);
        l.ring();
        assert_eq!(l.run_due(&clock), 1);
        assert_eq!(*runs.borrow(), ["a", "bad", "c", "a", "bad", "c"]);
    }

    #[test]
    fn the_driver_sleeps_from_timer_to_timer() {
        let clock = FakeClock::new();
        let mut l = DoorbellLoop::new(MIN);
        l.add(1, |now: Time| Ok(Some(now + Duration::from_secs(10))));
        l.add(2, |now: Time| Ok(Some(now + Duration::from_secs(25))));
        l.ring();
        let passes = l.run_until(&clock, at(30.0));
        // The ring at 0; then 1 at 10 and 20, 2 at 25, 1 at 30; 1's next (40) is too late.
        assert_eq!(passes, 5);
        let secs: Vec<u64> = clock.sleeps().iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 10, 5, 5, 0]);
        assert!(l.remove(&2));
        assert_eq!(l.doorbell().timer(&1), Some(at(40.0)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Ring,
        Advance(u64),
        Poll,
        /// Per function of the pass: 0 no timer, 2 an error, else a wakeup at now - 2 s + ms.
        Finish(Vec<(u8, u64)>),
        Add(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Ring),
            3 => (0u64..10_000).prop_map(Op::Advance),
            4 => Just(Op::Poll),
            3 => prop::collection::vec((0u8..4, 0u64..20_000), 4).prop_map(Op::Finish),
            1 => (0u8..4).prop_map(Op::Add),
            1 => (0u8..4).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Against a plain model: never two passes at once; a full pass follows the last
        /// ring; no pass without a ring or a due timer; timers obey min_delay.
        #[test]
        fn passes_follow_rings_and_timers(ops in prop::collection::vec(op(), 1..120)) {
            let mut b = bell(&[0, 1, 2]);
            let mut registered: BTreeSet<u8> = [0, 1, 2].into();
            let mut timers: BTreeMap<u8, Time> = BTreeMap::new();
            let mut ring_pending = false;
            let mut running: Option<Pass<u8>> = None;
            let mut now = Time::ZERO;
            let ops = ops.into_iter().chain([Op::Finish(vec![]), Op::Poll]);
            for op in ops {
                match op {
                    Op::Ring => {
                        b.ring();
                        ring_pending = true;
                        timers.clear();
                    }
                    Op::Advance(ms) => now = now + Duration::from_millis(ms),
                    Op::Add(k) => {
                        b.add(k);
                        registered.insert(k);
                    }
                    Op::Remove(k) => {
                        b.remove(&k);
                        registered.remove(&k);
                        timers.remove(&k);
                    }
                    Op::Poll => match b.poll(now) {
                        Some(pass) => {
                            prop_assert!(running.is_none(), "two passes at once");
                            if pass.rung {
                                prop_assert!(ring_pending, "full pass without a ring");
                                prop_assert!(pass.ids.iter().eq(registered.iter()));
                                ring_pending = false;
                                timers.clear();
                            } else {
                                prop_assert!(!ring_pending, "a ring was answered by a timer pass");
                                let due: Vec<u8> = timers.iter()
                                    .filter(|&(_, &t)| t <= now).map(|(&k, _)| k).collect();
                                prop_assert!(!due.is_empty(), "timer pass with no due timer");
                                prop_assert_eq!(&pass.ids, &due);
                                for k in &due {
                                    timers.remove(k);
                                }
                            }
                            running = Some(pass);
                        }
                        None => {
                            if running.is_none() {
                                prop_assert!(!ring_pending || registered.is_empty(),
                                    "a ring went unanswered");
                                prop_assert!(timers.values().all(|&t| t > now),
                                    "a due timer went unanswered");
                                ring_pending = false;
                            }
                        }
                    },
                    Op::Finish(spec) => {
                        let Some(pass) = running.take() else {
                            b.finish(now, [(0, Ok(Some(now)))]); // must be ignored
                            continue;
                        };
                        let results: Vec<(u8, Outcome)> = pass.ids.iter().enumerate().map(|(i, &k)| {
                            let (kind, ms) = spec.get(i).copied().unwrap_or((0, 0));
                            let wake = now + Duration::from_millis(ms) - Duration::from_secs(2);
                            let outcome = match kind {
                                0 => Ok(None),
                                2 => Err("boom".to_string()),
                                _ => Ok(Some(wake)),
                            };
                            if let (Ok(Some(t)), true) = (&outcome, registered.contains(&k)) {
                                timers.insert(k, (*t).max(now + MIN));
                            }
                            (k, outcome)
                        }).collect();
                        b.finish(now, results);
                    }
                }
                prop_assert_eq!(b.is_running(), running.is_some());
                let want = if running.is_some() {
                    None
                } else if ring_pending {
                    Some(Time::ZERO)
                } else {
                    timers.values().min().copied()
                };
                prop_assert_eq!(b.next_deadline(), want);
                for k in 0..4 {
                    prop_assert_eq!(b.timer(&k), timers.get(&k).copied());
                }
            }
        }
    }
}
