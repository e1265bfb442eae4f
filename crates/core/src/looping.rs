//! oslo.service's looping calls and retry helper (`oslo_service/loopingcall.py`), as
//! sans-IO schedules that any event loop can drive, plus a blocking [`run`] over a [`Clock`].
//!
//! A schedule never calls anything: [`Schedule::start`] says when the first run is due,
//! [`Schedule::after_run`] takes what a run reported and says when the next one is due
//! or why the loop must stop. A caller with its own event loop (the supervisor's grabber)
//! keeps the schedule and arms its own timer; everyone else hands schedule and function
//! to [`run`].
//!
//! | oslo.service                          | here                                        | the function returns (`Ok`) |
//! |---------------------------------------|---------------------------------------------|-----------------------------|
//! | `FixedIntervalLoopingCall`            | [`FixedIntervalSchedule`]                   | `Step<T>`                   |
//! | `FixedIntervalWithTimeoutLoopingCall` | [`FixedIntervalSchedule::with_timeout`]     | `Step<T>`                   |
//! | `DynamicLoopingCall`                  | [`DynamicSchedule`]                         | `Step<T, Option<Duration>>` |
//! | `BackOffLoopingCall`                  | [`BackoffSchedule`]                         | `Step<T, bool>`             |
//! | `RetryDecorator`                      | [`Retry`]                                   | `T`                         |
//!
//! oslo's `raise LoopingCallDone(value)` is [`Step::Done`]; a raised exception is `Err(e)`;
//! `LoopingCallTimeOut` is [`LoopError::TimedOut`]. oslo's `stop()` from another green
//! thread has no counterpart: the function returns `Step::Done` instead.
//!
//! Driving a schedule by hand, as an event loop does:
//!
//! ```
//! use std::time::Duration;
//! use supervisor_core::looping::{FixedIntervalSchedule, Schedule};
//! use supervisor_core::Time;
//!
//! let mut polling = FixedIntervalSchedule::new(Duration::from_secs(5));
//! let due = polling.start(Time::ZERO); // arm a timer for `due`; when it fires, poll:
//! let finished = due + Duration::from_secs(1); // the poll took a second
//! let next = polling.after_run(due, finished, ()).unwrap();
//! assert_eq!(next, Time::from_secs_f64(5.0)); // start to start, not end to start
//! ```

use std::fmt;
use std::time::Duration;

use crate::backoff::{Backoff, JITTER_SD};
use crate::clock::Clock;
use crate::random::Random;
use crate::time::{secs, Time};

/// What one run of a looped function tells the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<T, C = ()> {
    /// Keep looping; `C` is what the schedule plans the next run with: nothing for a
    /// fixed interval, the wanted delay for a dynamic loop, success for a backoff loop.
    Continue(C),
    /// Stop looping and hand `T` to the caller: oslo's `raise LoopingCallDone(T)`.
    Done(T),
}

/// Why a schedule stopped a loop on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// The loop ran past its timeout (oslo's `LoopingCallTimeOut`); `after` is the time
    /// the timeout was measured against (since start, or spent backing off).
    TimedOut {
        /// How long the loop had been running, or backing off, when it gave up.
        after: Duration,
    },
    /// A dynamic loop's function asked for the default delay (`None`) but the loop has no
    /// `periodic_interval_max` (oslo raises `RuntimeError`).
    NoDelay,
}

/// Why [`run`] returned without a [`Step::Done`] value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopError<E> {
    /// The function failed and the loop stops on errors.
    Failed(E),
    /// See [`Halt::TimedOut`].
    TimedOut {
        /// How long the loop had been running, or backing off, when it gave up.
        after: Duration,
    },
    /// See [`Halt::NoDelay`].
    NoDelay,
}

impl<E> From<Halt> for LoopError<E> {
    fn from(halt: Halt) -> Self {
        match halt {
            Halt::TimedOut { after } => LoopError::TimedOut { after },
            Halt::NoDelay => LoopError::NoDelay,
        }
    }
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Halt::TimedOut { after } => {
                write!(f, "looping call timed out after {:.2} seconds", secs(*after))
            }
            Halt::NoDelay => f.write_str(
                "a dynamic looping call must get a delay from its function or a periodic_interval_max",
            ),
        }
    }
}

impl std::error::Error for Halt {}

impl<E: fmt::Display> fmt::Display for LoopError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoopError::Failed(e) => write!(f, "looped function failed: {e}"),
            LoopError::TimedOut { after } => Halt::TimedOut { after: *after }.fmt(f),
            LoopError::NoDelay => Halt::NoDelay.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoopError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoopError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// When the runs of one looping call are due: the sans-IO half of a looping call.
pub trait Schedule {
    /// What a run hands the schedule in [`Step::Continue`].
    type Feedback;

    /// oslo's name for this kind of loop, for logs.
    fn kind(&self) -> &'static str;

    /// (Re)start the loop at `now`, forgetting earlier runs; returns when the first run is
    /// due (`now` plus the initial delay).
    fn start(&mut self, now: Time) -> Time;

    /// A run that began at `run_started` ended at `now` and reported `feedback`: when is the
    /// next run due, or must the loop stop?
    fn after_run(
        &mut self,
        run_started: Time,
        now: Time,
        feedback: Self::Feedback,
    ) -> Result<Time, Halt>;

    /// What a failed run counts as: `None` when a failure stops the loop (oslo's
    /// `stop_on_exception=True`), else the feedback to plan the next run with, which is
    /// what oslo's `_safe_wrapper` makes of a failure (a result of `0`).
    fn error_feedback(&self) -> Option<Self::Feedback>;
}

/// oslo's `FixedIntervalLoopingCall`, and with [`with_timeout`](Self::with_timeout) its
/// `FixedIntervalWithTimeoutLoopingCall`: runs start `interval` apart, start to start; a
/// run that outlasts the interval is logged and the next one starts at once.
///
/// ```
/// use std::time::Duration;
/// use supervisor_core::clock::{Clock, FakeClock};
/// use supervisor_core::looping::{run, FixedIntervalSchedule, LoopError, Step};
///
/// let clock = FakeClock::new();
/// let mut polls = 0;
/// let mut schedule = FixedIntervalSchedule::new(Duration::from_secs(10));
/// let result = run(&mut schedule, &clock, || {
///     polls += 1;
///     clock.advance(Duration::from_secs(3)); // each poll takes 3 s
///     Ok::<_, String>(if polls == 3 { Step::Done("found") } else { Step::Continue(()) })
/// });
/// assert_eq!(result, Ok("found"));
/// assert_eq!(clock.sleeps(), [Duration::from_secs(7); 2]);
///
/// // With a timeout, the loop gives up once a run ends past it.
/// let mut schedule = FixedIntervalSchedule::new(Duration::from_secs(10))
///     .with_timeout(Duration::from_secs(25));
/// let result = run(&mut schedule, &clock, || Ok::<Step<()>, String>(Step::Continue(())));
/// assert_eq!(result, Err(LoopError::TimedOut { after: Duration::from_secs(30) }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedIntervalSchedule {
    interval: Duration,
    initial_delay: Duration,
    stop_on_exception: bool,
    timeout: Option<Duration>,
    started: Time,
}

impl FixedIntervalSchedule {
    /// Runs `interval` apart, no initial delay, stopping on the first error, no timeout.
    pub fn new(interval: Duration) -> Self {
        FixedIntervalSchedule {
            interval,
            initial_delay: Duration::ZERO,
            stop_on_exception: true,
            timeout: None,
            started: Time::ZERO,
        }
    }

    /// Wait `delay` after [`Schedule::start`] before the first run.
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Whether an error stops the loop (the default) or is logged and the loop goes on.
    pub fn with_stop_on_exception(mut self, stop: bool) -> Self {
        self.stop_on_exception = stop;
        self
    }

    /// Stop with [`Halt::TimedOut`] once a run ends more than `timeout` after the start
    /// (initial delay included, as oslo measures it). Zero means no timeout, as in oslo.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }

    /// The time from one run's start to the next.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

impl Schedule for FixedIntervalSchedule {
    type Feedback = ();

    fn kind(&self) -> &'static str {
        match self.timeout {
            None => "Fixed interval looping call",
            Some(_) => "Fixed interval looping call with timeout checking",
        }
    }

    fn start(&mut self, now: Time) -> Time {
        self.started = now;
        now + self.initial_delay
    }

    fn after_run(&mut self, run_started: Time, now: Time, (): ()) -> Result<Time, Halt> {
        let due = run_started + self.interval;
        if now > due {
            log::warn!(
                "{}: run outlasted interval by {:.2} sec",
                self.kind(),
                secs(now.saturating_since(due))
            );
        }
        if let Some(timeout) = self.timeout {
            let elapsed = now.saturating_since(self.started);
            if elapsed > timeout {
                return Err(Halt::TimedOut { after: elapsed });
            }
        }
        Ok(due.max(now))
    }

    fn error_feedback(&self) -> Option<()> {
        (!self.stop_on_exception).then_some(())
    }
}

/// oslo's `DynamicLoopingCall`: the function says how long to sleep after it
/// (`Some(delay)`), capped at `periodic_interval_max` when one is set; `None` asks for
/// `periodic_interval_max` itself.
///
/// With `stop_on_exception(false)` a failed run counts as a delay of zero, as in oslo:
/// the function is called again at once.
///
/// ```
/// use std::time::Duration;
/// use supervisor_core::clock::{Clock, FakeClock};
/// use supervisor_core::looping::{run, DynamicSchedule, Step};
///
/// let clock = FakeClock::new();
/// let mut asked = [Some(5), Some(600), None].into_iter();
/// let mut schedule = DynamicSchedule::new().with_periodic_interval_max(Duration::from_secs(60));
/// let result = run(&mut schedule, &clock, || {
///     Ok::<_, String>(match asked.next() {
///         Some(secs) => Step::Continue(secs.map(Duration::from_secs)),
///         None => Step::Done(clock.now()),
///     })
/// });
/// assert_eq!(clock.sleeps(), [5, 60, 60].map(Duration::from_secs));
/// assert_eq!(result.unwrap().since_origin(), Duration::from_secs(125));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicSchedule {
    initial_delay: Duration,
    periodic_interval_max: Option<Duration>,
    stop_on_exception: bool,
}

impl Default for DynamicSchedule {
    fn default() -> Self {
        DynamicSchedule::new()
    }
}

impl DynamicSchedule {
    /// No initial delay, no cap, stopping on the first error.
    pub fn new() -> Self {
        DynamicSchedule {
            initial_delay: Duration::ZERO,
            periodic_interval_max: None,
            stop_on_exception: true,
        }
    }

    /// Wait `delay` after [`Schedule::start`] before the first run.
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Cap every delay at `max`, and use `max` when the function asks for the default.
    pub fn with_periodic_interval_max(mut self, max: Duration) -> Self {
        self.periodic_interval_max = Some(max);
        self
    }

    /// Whether an error stops the loop (the default) or is logged and the loop goes on.
    pub fn with_stop_on_exception(mut self, stop: bool) -> Self {
        self.stop_on_exception = stop;
        self
    }
}

impl Schedule for DynamicSchedule {
    type Feedback = Option<Duration>;

    fn kind(&self) -> &'static str {
        "Dynamic interval looping call"
    }

    fn start(&mut self, now: Time) -> Time {
        now + self.initial_delay
    }

    fn after_run(&mut self, _: Time, now: Time, asked: Option<Duration>) -> Result<Time, Halt> {
        let delay = match (asked, self.periodic_interval_max) {
            (Some(d), Some(max)) => d.min(max),
            (Some(d), None) => d,
            (None, Some(max)) => max,
            (None, None) => return Err(Halt::NoDelay),
        };
        Ok(now + delay)
    }

    fn error_feedback(&self) -> Option<Option<Duration>> {
        (!self.stop_on_exception).then_some(Some(Duration::ZERO))
    }
}

/// oslo's `BackOffLoopingCall`: the function reports success (`true`) or failure
/// (`false`); failures back off exponentially with jitter, successes reset the backoff.
///
/// With `j = |gauss(jitter, JITTER_SD)|` drawn once per run:
/// - success: interval and error time reset; sleep `starting_interval * j`;
/// - failure: `idle = max(min(interval * 2 * j, max_interval), min_interval)`, the
///   [`Backoff`] rule; if `error_time + idle` would exceed `timeout` the loop stops with
///   [`Halt::TimedOut`] instead of sleeping (so it never sleeps past the timeout); else
///   `error_time += idle`, `interval = idle`, sleep `idle`.
///
/// As everywhere in this project, `jitter == 0.0` means no randomness: `j = 1`, so
/// failures plainly double the interval. Errors from the function always stop the loop,
/// as oslo's `BackOffLoopingCall` offers no `stop_on_exception`.
///
/// ```
/// use std::time::Duration;
/// use supervisor_core::clock::FakeClock;
/// use supervisor_core::looping::{run, BackoffSchedule, LoopError, Step};
/// use supervisor_core::SplitMix64;
///
/// let clock = FakeClock::new();
/// let mut schedule = BackoffSchedule::new(SplitMix64::new(1))
///     .with_jitter(0.0)
///     .with_timeout(Duration::from_secs(10));
/// let always_failing = || Ok::<Step<(), bool>, String>(Step::Continue(false));
/// let result = run(&mut schedule, &clock, always_failing);
/// // Slept 2 s then 4 s; another 8 s would pass the 10 s timeout, so it gives up.
/// assert_eq!(clock.sleeps(), [2, 4].map(Duration::from_secs));
/// assert_eq!(result, Err(LoopError::TimedOut { after: Duration::from_secs(6) }));
/// ```
#[derive(Clone, Debug)]
pub struct BackoffSchedule<R> {
    initial_delay: Duration,
    starting_interval: Duration,
    timeout: Option<Duration>,
    max_interval: Duration,
    min_interval: Duration,
    jitter: f64,
    rng: R,
    interval: Duration,
    error_time: Duration,
}

impl<R: Random> BackoffSchedule<R> {
    /// oslo's defaults: starting interval 1 s, timeout 300 s, max interval 300 s, jitter
    /// 0.75, min interval 1 ms, no initial delay; jitter drawn from `rng`.
    pub fn new(rng: R) -> Self {
        BackoffSchedule {
            initial_delay: Duration::ZERO,
            starting_interval: Duration::from_secs(1),
            timeout: Some(Duration::from_secs(300)),
            max_interval: Duration::from_secs(300),
            min_interval: Duration::from_millis(1),
            jitter: 0.75,
            rng,
            interval: Duration::from_secs(1),
            error_time: Duration::ZERO,
        }
    }

    /// Wait `delay` after [`Schedule::start`] before the first run.
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The interval a success returns to, and the first failure doubles.
    pub fn with_starting_interval(mut self, interval: Duration) -> Self {
        self.starting_interval = interval;
        self.interval = interval;
        self
    }

    /// The most time a run of failures may spend sleeping; zero means no timeout, as in oslo.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }

    /// The ceiling of a failure's sleep.
    pub fn with_max_interval(mut self, max: Duration) -> Self {
        self.max_interval = max;
        self
    }

    /// The floor of a failure's sleep.
    pub fn with_min_interval(mut self, min: Duration) -> Self {
        self.min_interval = min;
        self
    }

    /// The mean of the random factor (see the type's doc); `0.0` turns jitter off.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The interval the next failure grows from.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The time slept since the last success (or the start).
    pub fn error_time(&self) -> Duration {
        self.error_time
    }
}

impl<R: Random> Schedule for BackoffSchedule<R> {
    type Feedback = bool;

    fn kind(&self) -> &'static str {
        "Dynamic backoff interval looping call"
    }

    fn start(&mut self, now: Time) -> Time {
        self.interval = self.starting_interval;
        self.error_time = Duration::ZERO;
        now + self.initial_delay
    }

    fn after_run(&mut self, _: Time, now: Time, success: bool) -> Result<Time, Halt> {
        if success {
            self.interval = self.starting_interval;
            self.error_time = Duration::ZERO;
            let j = if self.jitter == 0.0 {
                1.0
            } else {
                self.rng.gauss(self.jitter, JITTER_SD).abs()
            };
            let idle = self.starting_interval.as_secs_f64() * j;
            return Ok(now + Duration::try_from_secs_f64(idle).unwrap_or(Duration::MAX));
        }
        // oslo's failure step is exactly backoff.rs's rule growing from the current
        // interval, with min_interval as the floor; reuse it rather than restate it.
        let rule = Backoff {
            initial: self.min_interval,
            max: self.max_interval,
            jitter: self.jitter,
        };
        let idle = rule.next_delay(Some(self.interval), &mut self.rng);
        if let Some(timeout) = self.timeout {
            if self.error_time + idle > timeout {
                return Err(Halt::TimedOut {
                    after: self.error_time,
                });
            }
        }
        self.error_time += idle;
        self.interval = idle;
        Ok(now + idle)
    }

    fn error_feedback(&self) -> Option<bool> {
        None
    }
}

/// Run `f` on `schedule` until it returns [`Step::Done`] (its value is returned), fails
/// while the schedule stops on errors, or the schedule halts; sleeps on `clock`.
///
/// Like oslo, sleeps only for a non-zero initial delay, but after every run (a zero
/// sleep when the next run is already due). Failures are logged with `log::error!`.
/// See the schedules for examples.
pub fn run<S, T, E>(
    schedule: &mut S,
    clock: &dyn Clock,
    mut f: impl FnMut() -> Result<Step<T, S::Feedback>, E>,
) -> Result<T, LoopError<E>>
where
    S: Schedule + ?Sized,
    E: fmt::Display,
{
    let now = clock.now();
    let first = schedule.start(now);
    if first > now {
        clock.sleep_until(first);
    }
    loop {
        let run_started = clock.now();
        let feedback = match f() {
            Ok(Step::Done(value)) => return Ok(value),
            Ok(Step::Continue(feedback)) => feedback,
            Err(e) => {
                log::error!("{} failed: {e}", schedule.kind());
                match schedule.error_feedback() {
                    Some(feedback) => feedback,
                    None => return Err(LoopError::Failed(e)),
                }
            }
        };
        let next = schedule
            .after_run(run_started, clock.now(), feedback)
            .inspect_err(|halt| log::error!("{} failed: {halt}", schedule.kind()))?;
        log::trace!("{} sleeping until {next:?}", schedule.kind());
        clock.sleep_until(next);
    }
}

/// oslo's `RetryDecorator`: call a function until it succeeds, retrying only the errors
/// `retryable` accepts, sleeping `inc_sleep_time` longer before each retry (at most
/// `max_sleep_time`). Unlike the decorator, the retry count restarts with every
/// [`call`](Self::call).
///
/// ```
/// use std::time::Duration;
/// use supervisor_core::clock::FakeClock;
/// use supervisor_core::looping::Retry;
///
/// let clock = FakeClock::new();
/// let retry = Retry {
///     max_retry_count: 5,
///     inc_sleep_time: Duration::from_secs(10),
///     max_sleep_time: Duration::from_secs(25),
///     ..Retry::new(|e: &&str| *e == "busy")
/// };
/// let mut answers = ["busy", "busy", "busy"].into_iter();
/// let result = retry.call(&clock, || answers.next().map_or(Ok(42), Err));
/// assert_eq!(result, Ok(42));
/// assert_eq!(clock.sleeps(), [10, 20, 25].map(Duration::from_secs));
///
/// // An error the predicate does not accept comes back at once.
/// assert_eq!(retry.call(&clock, || Err::<(), _>("broken")), Err("broken"));
/// ```
pub struct Retry<P> {
    /// How many retries before the last error is returned; negative (oslo: `-1`) retries
    /// forever.
    pub max_retry_count: i64,
    /// How much longer each sleep before a retry is than the one before (the first is this).
    pub inc_sleep_time: Duration,
    /// The longest sleep before a retry.
    pub max_sleep_time: Duration,
    /// Which errors are worth a retry (oslo's `exceptions`); others are returned at once.
    pub retryable: P,
}

impl<P> fmt::Debug for Retry<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("max_retry_count", &self.max_retry_count)
            .field("inc_sleep_time", &self.inc_sleep_time)
            .field("max_sleep_time", &self.max_sleep_time)
            .finish_non_exhaustive()
    }
}

impl<P> Retry<P> {
    /// oslo's defaults: retry forever, sleeps growing by 10 s up to 60 s.
    pub fn new(retryable: P) -> Self {
        Retry {
            max_retry_count: -1,
            inc_sleep_time: Duration::from_secs(10),
            max_sleep_time: Duration::from_secs(60),
            retryable,
        }
    }

    /// Call `f` until it succeeds or fails in a way not to retry, sleeping on `clock`
    /// between attempts; returns the success or the error that ended the retries.
    pub fn call<T, E>(&self, clock: &dyn Clock, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E>
    where
        P: Fn(&E) -> bool,
        E: fmt::Display,
    {
        let mut retries: i64 = 0;
        let mut sleep = Duration::ZERO;
        loop {
            let e = match f() {
                Ok(value) => return Ok(value),
                Err(e) if !(self.retryable)(&e) => return Err(e),
                Err(e) => e,
            };
            if self.max_retry_count >= 0 && retries >= self.max_retry_count {
                log::error!(
                    "cannot retry upon suggested error since retry count ({retries}) \
                     reached max retry count ({}): {e}",
                    self.max_retry_count
                );
                return Err(e);
            }
            retries += 1;
            // oslo's sleep keeps growing past the cap and the dynamic loop caps what is slept.
            sleep = sleep.saturating_add(self.inc_sleep_time);
            let nap = sleep.min(self.max_sleep_time);
            log::debug!("retry {retries} in {:.2} s after: {e}", secs(nap));
            clock.sleep_until(clock.now() + nap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::random::SplitMix64;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn at(secs: f64) -> Time {
        Time::from_secs_f64(secs)
    }

    #[test]
    fn fixed_interval_runs_start_to_start() {
        let clock = FakeClock::new();
        let mut starts = vec![];
        let mut schedule = FixedIntervalSchedule::new(s(10)).with_initial_delay(s(4));
        let r = run(&mut schedule, &clock, || {
            starts.push(clock.now());
            clock.advance(s(2));
            Ok::<_, String>(if starts.len() == 3 {
                Step::Done(())
            } else {
                Step::Continue(())
            })
        });
        assert_eq!(r, Ok(()));
        assert_eq!(starts, [at(4.0), at(14.0), at(24.0)]);
        assert_eq!(clock.sleeps(), [s(4), s(8), s(8)]);
    }

    #[test]
    fn fixed_interval_overrun_runs_next_immediately() {
        let clock = FakeClock::new();
        let mut starts = vec![];
        let mut schedule = FixedIntervalSchedule::new(s(5));
        let r = run(&mut schedule, &clock, || {
            starts.push(clock.now());
            // the first run overruns the interval by 2 s, the second is quick
            clock.advance(if starts.len() == 1 { s(7) } else { s(1) });
            Ok::<_, String>(if starts.len() == 3 {
                Step::Done(())
            } else {
                Step::Continue(())
            })
        });
        assert_eq!(r, Ok(()));
        assert_eq!(starts, [at(0.0), at(7.0), at(12.0)]);
        assert_eq!(clock.sleeps(), [Duration::ZERO, s(4)]);
    }

    #[test]
    fn an_error_stops_the_loop_by_default_and_run_returns_it() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let mut schedule = FixedIntervalSchedule::new(s(1));
        let r = run(&mut schedule, &clock, || -> Result<Step<()>, String> {
            calls += 1;
            Err("store down".into())
        });
        assert_eq!(r, Err(LoopError::Failed("store down".to_string())));
        assert_eq!(calls, 1);
    }

    #[test]
    fn without_stop_on_exception_errors_are_logged_and_the_loop_goes_on() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let mut schedule = FixedIntervalSchedule::new(s(3)).with_stop_on_exception(false);
        let r = run(&mut schedule, &clock, || {
            calls += 1;
            if calls < 4 {
                Err("flaky".to_string())
            } else {
                Ok(Step::Done(calls))
            }
        });
        assert_eq!(r, Ok(4));
        assert_eq!(clock.sleeps(), [s(3); 3], "errors keep the fixed interval");
    }

    #[test]
    fn fixed_interval_with_timeout_stops_once_a_run_ends_past_it() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let mut schedule = FixedIntervalSchedule::new(s(10))
            .with_initial_delay(s(5))
            .with_timeout(s(30));
        let r = run(&mut schedule, &clock, || {
            calls += 1;
            clock.advance(s(1));
            Ok::<Step<()>, String>(Step::Continue(()))
        });
        // Runs end at 6, 16, 26, 36: the one ending at 36 (> 30) stops the loop.
        assert_eq!(r, Err(LoopError::TimedOut { after: s(36) }));
        assert_eq!(calls, 4);
    }

    #[test]
    fn a_zero_timeout_means_none_as_in_oslo() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let mut schedule = FixedIntervalSchedule::new(s(10)).with_timeout(Duration::ZERO);
        let r = run(&mut schedule, &clock, || {
            calls += 1;
            Ok::<_, String>(if calls == 100 {
                Step::Done(())
            } else {
                Step::Continue(())
            })
        });
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn dynamic_sleeps_what_the_function_asks_capped_at_the_max() {
        let clock = FakeClock::new();
        let mut asked = [Some(s(3)), Some(s(500)), None, Some(Duration::ZERO)].into_iter();
        let mut schedule = DynamicSchedule::new().with_periodic_interval_max(s(20));
        let r = run(&mut schedule, &clock, || {
            clock.advance(s(1)); // the sleep counts from the end of the run
            Ok::<_, String>(asked.next().map_or(Step::Done(()), Step::Continue))
        });
        assert_eq!(r, Ok(()));
        assert_eq!(clock.sleeps(), [s(3), s(20), s(20), Duration::ZERO]);
        assert_eq!(clock.now(), at(48.0));
    }

    #[test]
    fn dynamic_without_a_delay_or_max_stops_with_no_delay() {
        let clock = FakeClock::new();
        let r = run(&mut DynamicSchedule::new(), &clock, || {
            Ok::<Step<(), _>, String>(Step::Continue(None))
        });
        assert_eq!(r, Err(LoopError::NoDelay));
    }

    #[test]
    fn dynamic_failure_without_stop_on_exception_retries_at_once_as_oslo() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let mut schedule = DynamicSchedule::new().with_stop_on_exception(false);
        let r = run(&mut schedule, &clock, || {
            calls += 1;
            if calls == 1 {
                Err("oops".to_string())
            } else {
                Ok(Step::Done(()))
            }
        });
        assert_eq!(r, Ok(()));
        assert_eq!(clock.sleeps(), [Duration::ZERO]);
    }

    fn plain_backoff() -> BackoffSchedule<SplitMix64> {
        BackoffSchedule::new(SplitMix64::new(0)).with_jitter(0.0)
    }

    /// Runs a backoff loop over `outcomes`, then stops with Done.
    fn run_backoff(
        schedule: &mut BackoffSchedule<SplitMix64>,
        outcomes: &[bool],
    ) -> (Result<(), LoopError<String>>, Vec<Duration>) {
        let clock = FakeClock::new();
        let mut outcomes = outcomes.iter().copied();
        let r = run(schedule, &clock, || {
            Ok(outcomes.next().map_or(Step::Done(()), Step::Continue))
        });
        (r, clock.sleeps())
    }

    #[test]
    fn backoff_failures_double_from_the_starting_interval_up_to_the_max() {
        let mut b = plain_backoff().with_max_interval(s(10));
        let (r, sleeps) = run_backoff(&mut b, &[false; 5]);
        assert_eq!(r, Ok(()));
        assert_eq!(sleeps, [2, 4, 8, 10, 10].map(s));
    }

    #[test]
    fn backoff_failures_never_sleep_less_than_the_min_interval() {
        let mut b = plain_backoff()
            .with_starting_interval(Duration::from_millis(100))
            .with_min_interval(Duration::from_millis(500));
        let (_, sleeps) = run_backoff(&mut b, &[false; 2]);
        assert_eq!(sleeps, [Duration::from_millis(500), s(1)]);
    }

    #[test]
    fn backoff_success_resets_the_interval_and_the_error_time() {
        // Timeout 7 s: without the reset, the third failure's 2 s would pass it (6+2 > 7).
        let mut b = plain_backoff().with_timeout(s(7));
        let (r, sleeps) = run_backoff(&mut b, &[false, false, true, false, false, false]);
        // success sleeps starting_interval * 1 (no jitter)
        assert_eq!(sleeps, [2, 4, 1, 2, 4].map(s));
        assert_eq!(r, Err(LoopError::TimedOut { after: s(6) }));
    }

    #[test]
    fn backoff_timeout_hit_mid_backoff_never_sleeps_past_the_timeout() {
        let mut b = plain_backoff().with_timeout(s(20));
        let (r, sleeps) = run_backoff(&mut b, &[false; 10]);
        // 2+4+8 = 14; the next 16 s would end at 30 > 20, so the loop stops instead.
        assert_eq!(sleeps, [2, 4, 8].map(s));
        assert!(sleeps.iter().sum::<Duration>() <= s(20));
        assert_eq!(r, Err(LoopError::TimedOut { after: s(14) }));
    }

    #[test]
    fn backoff_jitter_grows_failures_by_about_twice_the_jitter() {
        let mut b = BackoffSchedule::new(SplitMix64::new(5)).with_timeout(Duration::ZERO);
        let (_, sleeps) = run_backoff(&mut b, &[false; 8]);
        let mut prev = 1.0; // the starting interval
        for d in sleeps {
            let ratio = d.as_secs_f64() / prev;
            assert!((1.5 - 0.33..=1.5 + 0.33).contains(&ratio), "ratio {ratio}");
            prev = d.as_secs_f64();
        }
    }

    #[test]
    fn backoff_errors_always_stop_the_loop() {
        let clock = FakeClock::new();
        let r = run(
            &mut plain_backoff(),
            &clock,
            || -> Result<Step<(), bool>, String> { Err("boom".into()) },
        );
        assert_eq!(r, Err(LoopError::Failed("boom".to_string())));
    }

    #[test]
    fn done_stops_every_kind_of_loop_and_hands_over_its_value() {
        let clock = FakeClock::new();
        fn done<C>() -> Result<Step<u32, C>, String> {
            Ok(Step::Done(7))
        }
        assert_eq!(
            run(&mut FixedIntervalSchedule::new(s(1)), &clock, done),
            Ok(7)
        );
        assert_eq!(run(&mut DynamicSchedule::new(), &clock, done), Ok(7));
        assert_eq!(run(&mut plain_backoff(), &clock, done), Ok(7));
        assert!(clock.sleeps().is_empty());
    }

    #[test]
    fn schedules_can_be_driven_without_a_clock() {
        let mut b = plain_backoff();
        let t0 = b.start(at(100.0));
        assert_eq!(t0, at(100.0));
        assert_eq!(b.after_run(t0, at(101.0), false), Ok(at(103.0)));
        assert_eq!(b.interval(), s(2));
        assert_eq!(b.error_time(), s(2));
        assert_eq!(b.after_run(at(103.0), at(103.0), true), Ok(at(104.0)));
        assert_eq!(b.error_time(), Duration::ZERO);
        // start() forgets an earlier backoff
        b.after_run(at(104.0), at(104.0), false).unwrap();
        b.start(at(200.0));
        assert_eq!((b.interval(), b.error_time()), (s(1), Duration::ZERO));
    }

    fn busy_retry() -> Retry<fn(&String) -> bool> {
        Retry::new(|e: &String| e.starts_with("busy"))
    }

    #[test]
    fn retry_forever_until_success() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let r = busy_retry().call(&clock, || {
            calls += 1;
            if calls <= 50 {
                Err("busy".to_string())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r, Ok(51));
        assert_eq!(clock.sleeps().len(), 50);
    }

    #[test]
    fn retry_returns_an_error_not_listed_at_once() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let r = busy_retry().call(&clock, || -> Result<(), String> {
            calls += 1;
            Err("corrupt".into())
        });
        assert_eq!(r, Err("corrupt".to_string()));
        assert_eq!(calls, 1);
        assert!(clock.sleeps().is_empty());
    }

    #[test]
    fn retry_sleeps_grow_by_the_increment_up_to_the_cap() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let r = busy_retry().call(&clock, || {
            calls += 1;
            if calls <= 8 {
                Err("busy".to_string())
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Ok(()));
        assert_eq!(clock.sleeps(), [10, 20, 30, 40, 50, 60, 60, 60].map(s));
    }

    #[test]
    fn retry_gives_up_after_max_retry_count_with_the_last_error() {
        let clock = FakeClock::new();
        let mut calls = 0;
        let retry = Retry {
            max_retry_count: 3,
            ..busy_retry()
        };
        let r = retry.call(&clock, || -> Result<(), String> {
            calls += 1;
            Err(format!("busy {calls}"))
        });
        assert_eq!(r, Err("busy 4".to_string()));
        assert_eq!(calls, 4, "the first call and three retries");
        assert_eq!(clock.sleeps(), [10, 20, 30].map(s));
    }
}
