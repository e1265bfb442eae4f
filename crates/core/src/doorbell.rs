//! buildbot's doorbell loop (`buildbot/util/loop.py`, `LoopBase`): processing functions
//! run one pass at a time when the doorbell rings or a function's own timer comes due,
//! as a sans-IO [`Doorbell`] keyed by function ids plus a small [`DoorbellLoop`] driver.
//! The grabber's loop is a [`DoorbellLoop`] (over a [`Doorbell`]). The supervisor's
//! reloads coalesce the same way, one entry of its timer table for a burst of SIGHUPs.
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
//! - Functions are a set: one added twice runs once per pass. [`add`](Doorbell::add)
//!   does not ring: ring if the newcomer should run soon. (buildbot can also remove a
//!   function; nothing here needs to.)
//! - A failing function is logged (`log::error!`) and loses its timer; the other
//!   functions and later passes are unaffected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::time::{Clock, Time};

/// What a processing function reports: an optional wakeup time, or an error to log.
pub type PassResult = Result<Option<Time>, String>;

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
    pub fn finish(&mut self, now: Time, results: impl IntoIterator<Item = (K, PassResult)>) {
        if !self.running {
            log::warn!("doorbell: finish called with no pass running; ignored");
            return;
        }
        self.running = false;
        let earliest = now + self.min_delay;
        for (k, outcome) in results {
            match outcome {
                // A result for a function never added sets no timer.
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

/// Why a processing function of a [`DoorbellLoop`] is called, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// The time of the call.
    pub now: Time,
    /// Whether the call answers a ring (every function runs), rather than the function's
    /// own timer coming due.
    pub rung: bool,
}

/// A processing function of a [`DoorbellLoop`] over a context `C`: it works on the
/// context and returns when it wants to run again, if ever, or an error to log.
pub type ProcessingFn<C> = fn(&mut C, Call) -> PassResult;

/// A [`Doorbell`] with its processing functions, run over a [`Clock`] on a context `C`
/// that the caller lends to each [`run_due`](Self::run_due) (the caller works on the
/// same context between passes: it handles the messages that ring the doorbell).
///
/// The grabber is one: its pass over the store is the processing function, its state
/// the context, and a message from the supervisor (a credit, a submit's doorbell) rings.
///
/// ```
/// use std::time::Duration;
/// use supervisor_core::doorbell::{DoorbellLoop, Call};
/// use supervisor_core::time::Clock;
/// use supervisor_core::Time;
///
/// struct At(Time);
/// impl Clock for At {
///     fn now(&self) -> Time {
///         self.0
///     }
/// }
///
/// let mut bell = DoorbellLoop::new(Duration::from_secs(1));
/// bell.add("scheduler", |calls: &mut Vec<(u64, bool)>, call: Call| {
///     calls.push((call.now.since_origin().as_secs(), call.rung));
///     Ok(Some(call.now + Duration::from_secs(60))) // wake me in a minute
/// });
/// let mut calls = vec![];
/// bell.ring();
/// bell.ring(); // coalesces with the first
/// assert_eq!(bell.run_due(&At(Time::ZERO), &mut calls), 1);
/// assert_eq!(bell.next_deadline(), Some(Time::from_secs_f64(60.0)));
/// assert_eq!(bell.run_due(&At(Time::from_secs_f64(59.0)), &mut calls), 0);
/// assert_eq!(bell.run_due(&At(Time::from_secs_f64(60.0)), &mut calls), 1);
/// assert_eq!(calls, [(0, true), (60, false)]);
/// ```
pub struct DoorbellLoop<K, C> {
    bell: Doorbell<K>,
    functions: BTreeMap<K, ProcessingFn<C>>,
}

impl<K: fmt::Debug, C> fmt::Debug for DoorbellLoop<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoorbellLoop")
            .field("bell", &self.bell)
            .finish_non_exhaustive()
    }
}

impl<K: Ord + Clone + fmt::Debug, C> DoorbellLoop<K, C> {
    /// An idle loop with no functions; see [`Doorbell::new`] for `min_delay`.
    pub fn new(min_delay: Duration) -> Self {
        DoorbellLoop {
            bell: Doorbell::new(min_delay),
            functions: BTreeMap::new(),
        }
    }

    /// Register `f` as function `k`, replacing any function already registered as `k`.
    pub fn add(&mut self, k: K, f: ProcessingFn<C>) {
        self.bell.add(k.clone());
        self.functions.insert(k, f);
    }

    /// Ring the doorbell: the next [`run_due`](Self::run_due) runs every function.
    pub fn ring(&mut self) {
        self.bell.ring();
    }

    /// See [`Doorbell::next_deadline`].
    pub fn next_deadline(&self) -> Option<Time> {
        self.bell.next_deadline()
    }

    /// Run the passes due now on `context`, one after the other, each function of a
    /// pass called at the time `clock` tells; returns how many passes ran.
    pub fn run_due(&mut self, clock: &dyn Clock, context: &mut C) -> usize {
        let mut passes = 0;
        while let Some(pass) = self.bell.poll(clock.now()) {
            passes += 1;
            let results: Vec<(K, PassResult)> = pass
                .ids
                .into_iter()
                .filter_map(|k| {
                    let f = self.functions.get(&k)?;
                    let call = Call {
                        now: clock.now(),
                        rung: pass.rung,
                    };
                    Some((k, f(context, call)))
                })
                .collect();
            self.bell.finish(clock.now(), results);
        }
        passes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;

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

    fn quiet(ids: &[u8]) -> Vec<(u8, PassResult)> {
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
    fn a_result_for_a_function_never_added_sets_no_timer() {
        let mut b = bell(&[1]);
        b.ring();
        b.poll(at(0.0)).unwrap();
        b.finish(at(0.0), [(9, Ok(Some(at(10.0))))]);
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

    /// A clock that moves only when a test (or a function it runs) says so.
    struct TestClock(Cell<Time>);

    impl Clock for TestClock {
        fn now(&self) -> Time {
            self.0.get()
        }
    }

    impl TestClock {
        fn at(secs: f64) -> TestClock {
            TestClock(Cell::new(at(secs)))
        }

        fn advance(&self, d: Duration) {
            self.0.set(self.0.get() + d);
        }
    }

    #[test]
    fn an_erroring_function_does_not_stop_the_others_or_the_loop() {
        let mut l: DoorbellLoop<&str, Vec<&str>> = DoorbellLoop::new(MIN);
        l.add("a", |runs, _| {
            runs.push("a");
            Ok(None)
        });
        l.add("bad", |runs, _| {
            runs.push("bad");
            Err("boom".into())
        });
        l.add("c", |runs, _| {
            runs.push("c");
            Ok(None)
        });
        let clock = TestClock::at(0.0);
        let mut runs = vec![];
        l.ring();
        assert_eq!(l.run_due(&clock, &mut runs), 1);
        l.ring();
        assert_eq!(l.run_due(&clock, &mut runs), 1);
        assert_eq!(runs, ["a", "bad", "c", "a", "bad", "c"]);
        assert_eq!(l.next_deadline(), None, "a failed function has no timer");
    }

    #[test]
    fn due_timers_run_their_functions_alone_and_not_as_rung() {
        let mut l: DoorbellLoop<u8, Vec<(u8, Call)>> = DoorbellLoop::new(MIN);
        l.add(1, |calls, call| {
            calls.push((1, call));
            Ok(Some(call.now + Duration::from_secs(10)))
        });
        l.add(2, |calls, call| {
            calls.push((2, call));
            Ok(Some(call.now + Duration::from_secs(25)))
        });
        let mut calls = vec![];
        l.ring();
        assert_eq!(l.run_due(&TestClock::at(0.0), &mut calls), 1);
        assert_eq!(l.next_deadline(), Some(at(10.0)));
        assert_eq!(l.run_due(&TestClock::at(9.0), &mut calls), 0);
        assert_eq!(l.run_due(&TestClock::at(10.0), &mut calls), 1);
        // 1 is due again at 20, 2 at 25: one pass at 30 runs both.
        assert_eq!(l.run_due(&TestClock::at(30.0), &mut calls), 1);
        let call = |secs, rung| Call {
            now: at(secs),
            rung,
        };
        assert_eq!(
            calls,
            [
                (1, call(0.0, true)),
                (2, call(0.0, true)),
                (1, call(10.0, false)),
                (1, call(30.0, false)),
                (2, call(30.0, false)),
            ]
        );
    }

    #[test]
    fn a_wakeup_counts_from_the_end_of_the_pass() {
        struct Work<'c> {
            clock: &'c TestClock,
        }
        let clock = TestClock::at(100.0);
        let mut l: DoorbellLoop<u8, Work> = DoorbellLoop::new(MIN);
        l.add(1, |w, call| {
            w.clock.advance(Duration::from_secs(2)); // the pass takes 2 s
            Ok(Some(call.now)) // "again at once"
        });
        l.ring();
        assert_eq!(l.run_due(&clock, &mut Work { clock: &clock }), 1);
        assert_eq!(l.next_deadline(), Some(at(102.0) + MIN));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Ring,
        Advance(u64),
        Poll,
        /// Per function of the pass: 0 no timer, 2 an error, else a wakeup at now - 2 s + ms.
        Finish(Vec<(u8, u64)>),
        Add(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::Ring),
            3 => (0u64..10_000).prop_map(Op::Advance),
            4 => Just(Op::Poll),
            3 => prop::collection::vec((0u8..4, 0u64..20_000), 4).prop_map(Op::Finish),
            1 => (0u8..4).prop_map(Op::Add),
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
                        let results: Vec<(u8, PassResult)> = pass.ids.iter().enumerate().map(|(i, &k)| {
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
