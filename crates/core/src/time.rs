//! Time as a value: the core never reads a clock; the shell passes `now` in, or lends a
//! [`Clock`] to a loop driver that must tell the time between calls.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on a monotonic timeline, measured from an origin the caller chooses
/// (the shell uses the moment the supervisor started; tests use zero).
///
/// The core compares and adds these; it never asks what time it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The origin of the timeline.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// The time `d` after the origin.
    pub const fn from_origin(d: Duration) -> Time {
        Time(d)
    }

    /// The time `secs` seconds after the origin (NaN and negative values: the origin;
    /// values too large for a `Duration`: the end of time).
    pub fn from_secs_f64(secs: f64) -> Time {
        if secs.is_nan() || secs <= 0.0 {
            return Time::ZERO;
        }
        Time(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
    }

    /// How far this time lies after the origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d))
    }
}

/// Tells the time: what a loop driver ([`crate::doorbell::DoorbellLoop`]) reads between
/// the functions it calls, so that this crate never reads a real clock itself. The
/// shell's clock counts from the moment its process started.
pub trait Clock {
    /// The current time.
    fn now(&self) -> Time;
}

/// Seconds as `f64`, the unit of the config and the events file.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
