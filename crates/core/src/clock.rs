//! A clock as a trait, so the blocking loop drivers can wait without this crate reading
//! real time: the OS shell supplies the real clock, tests use [`FakeClock`].

use std::cell::{Cell, RefCell};
use std::time::Duration;

use crate::time::Time;

/// Tells the time and waits for it.
///
/// Both methods take `&self` so a clock can be shared by a loop driver and the function
/// it calls (a test's function may advance a [`FakeClock`] to pretend it worked for a
/// while); implementations use interior mutability where they need state.
pub trait Clock {
    /// The current time.
    fn now(&self) -> Time;

    /// Block until `t`; returns at once when `t` is not after [`Clock::now`].
    fn sleep_until(&self, t: Time);
}

/// A clock that only moves when told to, and remembers every sleep asked of it.
///
/// `sleep_until` jumps straight to the asked time (never backward), so a loop that
/// would sleep for minutes runs in microseconds and its schedule can be asserted.
///
/// ```
/// use std::time::Duration;
/// use supervisor_core::clock::{Clock, FakeClock};
/// use supervisor_core::Time;
///
/// let clock = FakeClock::new();
/// clock.advance(Duration::from_secs(2));
/// clock.sleep_until(Time::from_secs_f64(5.0));
/// clock.sleep_until(Time::from_secs_f64(1.0)); // in the past: time stays put
/// assert_eq!(clock.now(), Time::from_secs_f64(5.0));
/// assert_eq!(clock.sleeps(), [Duration::from_secs(3), Duration::ZERO]);
/// ```
#[derive(Debug, Default)]
pub struct FakeClock {
    now: Cell<Time>,
    sleeps: RefCell<Vec<Duration>>,
}

impl FakeClock {
    /// A clock standing at [`Time::ZERO`] with no sleeps recorded.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Move the clock forward by `d` (not recorded as a sleep: this is time the code
    /// under test spent working).
    pub fn advance(&self, d: Duration) {
        self.now.set(self.now.get() + d);
    }

    /// Put the clock at `t`, backward if need be (to test how code copes with that).
    pub fn set(&self, t: Time) {
        self.now.set(t);
    }

    /// How long each `sleep_until` call slept, in call order; a sleep until a time not
    /// in the future is recorded as zero, so "ran again at once" shows up too.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.borrow().clone()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Time {
        self.now.get()
    }

    fn sleep_until(&self, t: Time) {
        let now = self.now.get();
        self.sleeps.borrow_mut().push(t.saturating_since(now));
        self.now.set(now.max(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_zero_and_advances() {
        let c = FakeClock::new();
        assert_eq!(c.now(), Time::ZERO);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now(), Time::from_secs_f64(1.5));
        assert!(c.sleeps().is_empty(), "advancing is not sleeping");
    }

    #[test]
    fn sleep_until_jumps_forward_and_records_the_sleep() {
        let c = FakeClock::new();
        c.sleep_until(Time::from_secs_f64(4.0));
        assert_eq!(c.now(), Time::from_secs_f64(4.0));
        assert_eq!(c.sleeps(), [Duration::from_secs(4)]);
    }

    #[test]
    fn sleep_until_the_past_never_moves_time_backward() {
        let c = FakeClock::new();
        c.set(Time::from_secs_f64(10.0));
        c.sleep_until(Time::from_secs_f64(3.0));
        assert_eq!(c.now(), Time::from_secs_f64(10.0));
        assert_eq!(c.sleeps(), [Duration::ZERO]);
    }

    #[test]
    fn set_can_move_time_anywhere() {
        let c = FakeClock::new();
        c.set(Time::from_secs_f64(7.0));
        c.set(Time::from_secs_f64(2.0));
        assert_eq!(c.now(), Time::from_secs_f64(2.0));
    }
}
