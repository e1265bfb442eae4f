//! oslo.service's looping calls (`oslo_service/loopingcall.py`) as sans-IO schedules: a
//! schedule never calls anything and never sleeps; it is told when a run began and ended
//! and how it went, and answers when the next run is due. The caller keeps its own event
//! loop and arms its own timer for that time.
//!
//! | oslo.service | here | for |
//! |---|---|---|
//! | `FixedIntervalLoopingCall` | [`FixedIntervalSchedule`] | the supervisor's heartbeats: a ping round every `heartbeat.interval_s` |
//! | `BackOffLoopingCall`, with the asked delays of `DynamicLoopingCall` | [`BackoffSchedule`] | the grabber's passes over the store: every `poll_interval_s`, backing off by `error_backoff` while the store fails |
//!
//! The grabber drives its [`BackoffSchedule`] from a [`DoorbellLoop`]: each pass returns
//! the time the schedule gives as its wakeup.
//!
//! [`DoorbellLoop`]: crate::doorbell::DoorbellLoop

use std::time::Duration;

use crate::backoff::{Backoff, BackoffState};
use crate::random::Random;
use crate::time::{secs, Time};

/// oslo's `FixedIntervalLoopingCall`: runs start `interval` apart, start to start; a run
/// that outlasts the interval is logged and the next one starts at once.
///
/// ```
/// use std::time::Duration;
/// use supervisor_core::looping::FixedIntervalSchedule;
/// use supervisor_core::Time;
///
/// let mut pings = FixedIntervalSchedule::new(Duration::from_secs(5))
///     .with_initial_delay(Duration::from_secs(5));
/// let due = pings.start(Time::ZERO); // arm a timer for `due`; when it fires, run:
/// assert_eq!(due, Time::from_secs_f64(5.0));
/// let ended = due + Duration::from_secs(1); // the run took a second
/// let next = pings.after_run(due, ended);
/// assert_eq!(next, Time::from_secs_f64(10.0)); // start to start, not end to start
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedIntervalSchedule {
    interval: Duration,
    initial_delay: Duration,
}

impl FixedIntervalSchedule {
    /// Runs `interval` apart, the first at once.
    pub fn new(interval: Duration) -> Self {
        FixedIntervalSchedule {
            interval,
            initial_delay: Duration::ZERO,
        }
    }

    /// Wait `delay` after [`start`](Self::start) before the first run.
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Run `interval` apart from the next run on (a reload changed it).
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// The time from one run's start to the next.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The loop starts at `now`: when the first run is due.
    pub fn start(&self, now: Time) -> Time {
        now + self.initial_delay
    }

    /// A run that began at `run_started` ended at `now`: when the next one is due
    /// (`now` itself when the run outlasted the interval).
    pub fn after_run(&self, run_started: Time, now: Time) -> Time {
        let due = run_started + self.interval;
        if now > due {
            log::warn!(
                "fixed interval looping call: run outlasted interval by {:.2} sec",
                secs(now.saturating_since(due))
            );
        }
        due.max(now)
    }
}

/// oslo's `BackOffLoopingCall`, as the grabber polls the store with it: a run that fails
/// backs off exponentially with oslo's jitter (the [`Backoff`] rule), and the first run
/// that succeeds starts the backoff over; a run that succeeds is followed by the next
/// one `interval` later, or sooner when the run asks for a shorter delay, as the function
/// of oslo's `DynamicLoopingCall` may (a job whose retry is due before the next poll).
///
/// Where this differs from oslo, it follows the contract's config (`poll_interval_s`,
/// `error_backoff: {initial_s, max_s, jitter}`): a success waits exactly `interval` (oslo
/// scales its starting interval by a jitter factor); the first failure waits
/// `initial` (oslo doubles its starting interval); and there is no timeout (the grabber
/// keeps trying for as long as the store fails).
///
/// ```
/// use std::time::Duration;
/// use supervisor_core::backoff::Backoff;
/// use supervisor_core::looping::BackoffSchedule;
/// use supervisor_core::{SplitMix64, Time};
///
/// let t = Time::from_secs_f64;
/// let errors = Backoff::from_secs(0.5, 30.0, 0.0);
/// let mut polls = BackoffSchedule::new(Duration::from_secs(1), errors, SplitMix64::new(1));
/// assert_eq!(polls.succeeded(t(10.0), None), t(11.0)); // the poll interval
/// assert_eq!(polls.succeeded(t(10.0), Some(Duration::from_millis(200))), t(10.2));
/// assert_eq!(polls.failed(t(20.0)), t(20.5)); // the store failed: back off
/// assert_eq!(polls.failed(t(20.5)), t(21.5));
/// assert_eq!(polls.succeeded(t(22.0), None), t(23.0));
/// assert_eq!(polls.failed(t(30.0)), t(30.5)); // a success started the backoff over
/// ```
#[derive(Clone, Debug)]
pub struct BackoffSchedule<R> {
    interval: Duration,
    backoff: Backoff,
    errors: BackoffState,
    rng: R,
}

impl<R: Random> BackoffSchedule<R> {
    /// Runs `interval` apart while they succeed, backing off by `backoff` while they
    /// fail; jitter drawn from `rng`.
    pub fn new(interval: Duration, backoff: Backoff, rng: R) -> Self {
        BackoffSchedule {
            interval,
            backoff,
            errors: BackoffState::default(),
            rng,
        }
    }

    /// Wait `interval` after the successes from now on (a reload changed it).
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// Back off by `backoff` from now on; a backoff under way grows on from its last
    /// delay, within the new bounds.
    pub fn set_backoff(&mut self, backoff: Backoff) {
        self.backoff = backoff;
    }

    /// A run ended well at `now`, asking to run again after `asked` (at most the
    /// interval; `None`: the interval): when the next run is due. Ends any backoff.
    pub fn succeeded(&mut self, now: Time, asked: Option<Duration>) -> Time {
        self.errors.reset();
        now + asked.map_or(self.interval, |d| d.min(self.interval))
    }

    /// A run failed at `now`: when the next run is due, one backoff step later than the
    /// last failure's wait.
    pub fn failed(&mut self, now: Time) -> Time {
        now + self.errors.next(&self.backoff, &mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SplitMix64;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn at(secs: f64) -> Time {
        Time::from_secs_f64(secs)
    }

    #[test]
    fn fixed_interval_runs_start_to_start_after_the_initial_delay() {
        let f = FixedIntervalSchedule::new(s(10)).with_initial_delay(s(4));
        let first = f.start(at(1.0));
        assert_eq!(first, at(5.0));
        assert_eq!(f.after_run(first, at(7.0)), at(15.0));
        assert_eq!(f.after_run(at(15.0), at(15.0)), at(25.0));
    }

    #[test]
    fn fixed_interval_without_initial_delay_runs_at_once() {
        let f = FixedIntervalSchedule::new(s(10));
        assert_eq!(f.start(at(3.0)), at(3.0));
    }

    #[test]
    fn a_run_that_outlasts_the_interval_is_followed_at_once() {
        let f = FixedIntervalSchedule::new(s(5));
        assert_eq!(f.after_run(at(0.0), at(7.0)), at(7.0));
    }

    #[test]
    fn a_new_interval_applies_from_the_next_run() {
        let mut f = FixedIntervalSchedule::new(s(5));
        f.set_interval(s(2));
        assert_eq!(f.interval(), s(2));
        assert_eq!(f.after_run(at(10.0), at(10.0)), at(12.0));
    }

    fn plain(interval: u64) -> BackoffSchedule<SplitMix64> {
        BackoffSchedule::new(
            s(interval),
            Backoff::from_secs(1.0, 10.0, 0.0),
            SplitMix64::new(0),
        )
    }

    #[test]
    fn successes_wait_the_interval_or_the_shorter_delay_asked() {
        let mut b = plain(5);
        assert_eq!(b.succeeded(at(0.0), None), at(5.0));
        assert_eq!(b.succeeded(at(0.0), Some(s(2))), at(2.0));
        assert_eq!(
            b.succeeded(at(0.0), Some(s(60))),
            at(5.0),
            "capped at the interval"
        );
        assert_eq!(b.succeeded(at(0.0), Some(Duration::ZERO)), at(0.0));
    }

    #[test]
    fn failures_double_from_the_initial_delay_up_to_the_max() {
        let mut b = plain(5);
        let waits: Vec<Duration> = (0..6)
            .map(|_| b.failed(at(100.0)).saturating_since(at(100.0)))
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10].map(s));
    }

    #[test]
    fn a_success_starts_the_backoff_over() {
        let mut b = plain(5);
        b.failed(at(0.0));
        b.failed(at(1.0));
        b.succeeded(at(3.0), None);
        assert_eq!(b.failed(at(8.0)), at(9.0));
    }

    #[test]
    fn failures_back_off_with_oslo_jitter() {
        let mut b =
            BackoffSchedule::new(s(1), Backoff::from_secs(1.0, 1e9, 0.75), SplitMix64::new(5));
        let mut prev = b.failed(at(0.0)).saturating_since(at(0.0));
        assert_eq!(prev, s(1), "the first failure waits the initial delay");
        for _ in 0..10 {
            let d = b.failed(at(0.0)).saturating_since(at(0.0));
            let ratio = d.as_secs_f64() / prev.as_secs_f64();
            // 2 * gauss(0.75, 0.033) lies within 1.5 ± 5 sd with overwhelming odds.
            assert!((1.5 - 0.33..=1.5 + 0.33).contains(&ratio), "ratio {ratio}");
            prev = d;
        }
    }

    #[test]
    fn new_settings_apply_to_the_next_run_and_a_backoff_grows_on() {
        let mut b = plain(5);
        b.failed(at(0.0));
        b.failed(at(0.0)); // waited 2 s
        b.set_backoff(Backoff::from_secs(0.5, 3.0, 0.0));
        assert_eq!(
            b.failed(at(0.0)),
            at(3.0),
            "grows on from 2 s, within the new max"
        );
        b.set_interval(s(1));
        assert_eq!(b.succeeded(at(0.0), None), at(1.0));
    }
}
