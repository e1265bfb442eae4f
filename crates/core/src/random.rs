//! Randomness as a value: jitter needs random numbers, so the caller passes the source in.

/// A source of uniformly distributed 64-bit numbers.
///
/// The shell seeds a [`SplitMix64`] from the process id and the clock; tests seed it
/// with a constant so every schedule is reproducible.
pub trait Random {
    /// The next uniformly distributed 64-bit number.
    fn next_u64(&mut self) -> u64;

    /// A uniform number in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        // 53 random bits make every f64 in [0, 1) with that spacing equally likely.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A normally distributed number (Box–Muller), as Python's `random.gauss`.
    fn gauss(&mut self, mean: f64, sd: f64) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1], so ln is finite
        let u2 = self.uniform();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        mean + sd * z
    }
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }
}

impl Random for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A source that always answers the same number; handy in stories where jitter would
/// only blur what is being told.
#[derive(Clone, Debug)]
pub struct Fixed(pub f64);

impl Random for Fixed {
    fn next_u64(&mut self) -> u64 {
        ((self.0.clamp(0.0, 1.0 - f64::EPSILON) * (1u64 << 53) as f64) as u64) << 11
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_stays_in_unit_interval_and_is_reproducible() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..10_000 {
            let x = a.uniform();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x, b.uniform());
        }
    }

    #[test]
    fn gauss_has_the_asked_mean_and_spread() {
        let mut r = SplitMix64::new(1);
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| r.gauss(0.75, 0.033)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.75).abs() < 0.002, "mean {mean}");
        assert!((var.sqrt() - 0.033).abs() < 0.002, "sd {}", var.sqrt());
    }
}
