//! Exponential backoff with oslo.service's jitter, shared by restarts, job retries and
//! the grabber's error backoff.
//!
//! oslo.service's `BackOffLoopingCall` grows each idle period as
//! `min(previous * 2 * gauss(jitter, 0.033), max_interval)`, bounded below by the
//! starting interval. We keep that rule and add the contract's reading of `jitter = 0`:
//! no randomness, the delay simply doubles.

use std::time::Duration;

use crate::random::Random;

/// The standard deviation oslo.service uses around `jitter`.
pub const JITTER_SD: f64 = 0.033;

/// Settings of one backoff: the config's `{initial_s, max_s, jitter}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay, and the floor of every later one.
    pub initial: Duration,
    /// The ceiling of every delay.
    pub max: Duration,
    /// oslo's jitter: each step multiplies the previous delay by `2 * gauss(jitter, 0.033)`;
    /// `0.0` means no jitter (plain doubling).
    pub jitter: f64,
}

impl Backoff {
    /// A backoff from seconds, as written in the config.
    pub fn from_secs(initial_s: f64, max_s: f64, jitter: f64) -> Backoff {
        Backoff {
            initial: crate::bounds::duration(initial_s),
            max: crate::bounds::duration(max_s),
            jitter,
        }
    }

    /// The delay that follows `previous` (or the first one, when there was none).
    ///
    /// ```
    /// use std::time::Duration;
    /// use supervisor_core::backoff::Backoff;
    /// use supervisor_core::random::SplitMix64;
    ///
    /// let b = Backoff::from_secs(1.0, 5.0, 0.0);
    /// let mut rng = SplitMix64::new(1);
    /// let d1 = b.next_delay(None, &mut rng);
    /// let d2 = b.next_delay(Some(d1), &mut rng);
    /// let d3 = b.next_delay(Some(d2), &mut rng);
    /// let d4 = b.next_delay(Some(d3), &mut rng);
    /// assert_eq!([d1, d2, d3, d4].map(|d| d.as_secs_f64()), [1.0, 2.0, 4.0, 5.0]);
    /// ```
    pub fn next_delay(&self, previous: Option<Duration>, rng: &mut dyn Random) -> Duration {
        let Some(prev) = previous else {
            return self.initial.min(self.max);
        };
        let factor = if self.jitter == 0.0 {
            2.0
        } else {
            2.0 * rng.gauss(self.jitter, JITTER_SD)
        };
        let next = prev.as_secs_f64() * factor.max(0.0);
        let next = next
            .min(self.max.as_secs_f64())
            .max(self.initial.as_secs_f64());
        crate::bounds::duration(next.min(self.max.as_secs_f64()))
    }

    /// The `n`-th delay (0-based) of an uninterrupted run of failures.
    pub fn nth_delay(&self, n: u32, rng: &mut dyn Random) -> Duration {
        let mut d = self.next_delay(None, rng);
        for _ in 0..n {
            d = self.next_delay(Some(d), rng);
        }
        d
    }
}

/// A backoff in progress: remembers the last delay so the next one can grow from it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackoffState {
    last: Option<Duration>,
}

impl BackoffState {
    /// The next delay, growing from the last one.
    pub fn next(&mut self, backoff: &Backoff, rng: &mut dyn Random) -> Duration {
        let d = backoff.next_delay(self.last, rng);
        self.last = Some(d);
        d
    }

    /// Forget the growth: the next delay is `initial` again.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// The last delay handed out, if any since the last reset.
    pub fn last(&self) -> Option<Duration> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SplitMix64;

    #[test]
    fn without_jitter_delays_double_up_to_the_max() {
        let b = Backoff::from_secs(0.1, 1.0, 0.0);
        let mut rng = SplitMix64::new(0);
        let ds: Vec<f64> = (0..6)
            .map(|n| b.nth_delay(n, &mut rng).as_secs_f64())
            .collect();
        let want = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0];
        for (d, w) in ds.iter().zip(want) {
            assert!((d - w).abs() < 1e-9, "{ds:?}");
        }
    }

    #[test]
    fn oslo_jitter_grows_by_about_twice_the_jitter() {
        let b = Backoff::from_secs(1.0, 1e9, 0.75);
        let mut rng = SplitMix64::new(3);
        let mut state = BackoffState::default();
        let first = state.next(&b, &mut rng);
        assert_eq!(first, Duration::from_secs(1));
        let mut prev = first;
        for _ in 0..20 {
            let d = state.next(&b, &mut rng);
            let ratio = d.as_secs_f64() / prev.as_secs_f64();
            // 2 * gauss(0.75, 0.033) lies within 1.5 ± 5 sd with overwhelming odds.
            assert!((1.5 - 0.33..=1.5 + 0.33).contains(&ratio), "ratio {ratio}");
            prev = d;
        }
    }

    #[test]
    fn delays_never_leave_the_initial_to_max_band() {
        let b = Backoff::from_secs(0.5, 3.0, 0.3); // factor 0.6: would shrink, floor holds
        let mut rng = SplitMix64::new(9);
        let mut state = BackoffState::default();
        for _ in 0..100 {
            let d = state.next(&b, &mut rng).as_secs_f64();
            assert!((0.5..=3.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn reset_starts_again_from_initial() {
        let b = Backoff::from_secs(1.0, 60.0, 0.0);
        let mut rng = SplitMix64::new(0);
        let mut state = BackoffState::default();
        state.next(&b, &mut rng);
        assert_eq!(state.next(&b, &mut rng), Duration::from_secs(2));
        state.reset();
        assert_eq!(state.next(&b, &mut rng), Duration::from_secs(1));
    }
}
