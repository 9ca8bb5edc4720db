//! The one seeded generator of the integration tests: splitmix64 (Steele, Lea
//! & Flood 2014), one `u64` of state, so every input is reproducible from its
//! seed without proptest's machinery.

use h2o_kv::{Accumulator, Element};

/// splitmix64. `Rng::new(s).next_u64()` is splitmix64's output for state `s`,
/// so a seed can also be hashed into one value.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-1, 1)`, with 53 random bits.
    pub fn signed(&mut self) -> f64 {
        self.unit() * 2.0 - 1.0
    }

    /// Uniform in `0..n` (`n > 0`; slightly biased for huge `n`, fine for tests).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` values uniform in `[-amp, amp)`, rounded to `T`.
    pub fn uniform<T: Element>(&mut self, n: usize, amp: f64) -> Vec<T> {
        (0..n).map(|_| T::from_acc(<T::Acc as Accumulator>::narrow(amp * self.signed()))).collect()
    }

    /// `n` values uniform in `[-2, 2)`, rounded to `T`.
    pub fn vec<T: Element>(&mut self, n: usize) -> Vec<T> {
        self.uniform(n, 2.0)
    }
}
