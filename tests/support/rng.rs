//! A tiny deterministic generator (splitmix64) shared by the integration
//! tests that need reproducible inputs without proptest's machinery.
//! Include it with `#[path = "support/rng.rs"] mod rng;`.

#![allow(dead_code)] // each test file uses a different subset

use h2o_kv::{Accumulator, Element};

/// splitmix64 (Steele, Lea & Flood 2014): one `u64` of state.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (slightly biased for huge `n`; fine for tests).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [-1, 1), with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// `n` values uniform in [-2, 2), rounded to `T`.
    pub fn vec<T: Element>(&mut self, n: usize) -> Vec<T> {
        (0..n).map(|_| T::from_acc(<T::Acc as Accumulator>::narrow(2.0 * self.unit()))).collect()
    }
}
