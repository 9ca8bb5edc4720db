//! How far each element type's outputs and eviction decisions are from an f64
//! cache fed the same stream, printed as a report and checked against the
//! rounding of the type.
//!
//! One stream (inputs drawn in f64, uniform in `[-1, 1)`, rounded to the
//! type) runs through an H2O cache (256 heavy + 256 recent, head_dim 128) for
//! 2,048 steps. For each type: the largest |output − f64 output| over every
//! output element, and the steps whose kept set equals the f64 cache's.
//!
//! ```text
//! cargo test --release --features half --test element_accuracy -- --nocapture
//! ```
//!
//! The bound is eight times the type's machine epsilon (outputs are weighted
//! means of values in `[-1, 1)`, so absolute and relative error agree):
//! rounding the inputs and the returned output dominate, since all arithmetic
//! runs in f32 or wider and the scores in f64. The kept sets must be equal in
//! every step.

mod common;

use common::Rng;
use h2o_kv::{Accumulator, Element, H2OCache, KvCache};

const D: usize = 128;
const STEPS: usize = 2048;
/// Distinct input tokens, cycled through in a fixed irregular order.
const POOL: usize = 64;

/// The f64 inputs: query, key and value pools `[POOL × D]`.
fn inputs() -> [Vec<f64>; 3] {
    [21, 22, 23].map(|seed| Rng::new(seed).uniform::<f64>(POOL * D, 1.0))
}

/// Which pool row step `t` uses.
fn row(t: usize) -> usize {
    (t * 7 + t / POOL) % POOL
}

/// Every step's output and kept positions, for a cache of `T`.
fn run<T: Element>() -> (Vec<Vec<f64>>, Vec<Vec<u64>>) {
    let conv = |x: &[f64]| -> Vec<T> {
        x.iter().map(|&y| T::from_acc(<T::Acc as Accumulator>::narrow(y))).collect()
    };
    let [q, k, v] = inputs().map(|x| conv(&x));
    let mut cache = H2OCache::<T>::new(D, 256, 256).unwrap();
    let (mut outs, mut kept) = (Vec::with_capacity(STEPS), Vec::with_capacity(STEPS));
    for t in 0..STEPS {
        let i = row(t) * D;
        let out = cache.step(&q[i..][..D], &k[i..][..D], &v[i..][..D]).unwrap();
        outs.push(out.iter().map(|x| x.to_f64()).collect());
        kept.push(cache.resident_positions());
    }
    (outs, kept)
}

/// Compares `T` with the f64 run, prints the report line and checks it.
fn check<T: Element>(ty: &str, eps: f64, reference: &(Vec<Vec<f64>>, Vec<Vec<u64>>)) {
    let (outs, kept) = run::<T>();
    let mut max_err = 0.0f64;
    for (o, r) in outs.iter().zip(&reference.0) {
        for (a, b) in o.iter().zip(r) {
            max_err = max_err.max((a - b).abs());
        }
    }
    let same = kept.iter().zip(&reference.1).filter(|(a, b)| a == b).count();
    println!(
        "accuracy {ty} vs f64 (h2o 256+256, d{D}, {STEPS} steps): max |output error| \
         {max_err:.2e}; kept set equal to f64 in {same}/{STEPS} steps"
    );
    assert!(max_err <= 8.0 * eps, "{ty}: max error {max_err:e} > 8 × epsilon {eps:e}");
    assert_eq!(same, STEPS, "{ty}: kept sets differ from f64 in {} steps", STEPS - same);
}

#[test]
fn each_element_type_stays_within_its_rounding_of_f64() {
    let reference = run::<f64>();
    check::<f32>("f32", f64::from(f32::EPSILON), &reference);
    #[cfg(feature = "half")]
    {
        check::<half::f16>("f16", f64::from(half::f16::EPSILON), &reference);
        check::<half::bf16>("bf16", f64::from(half::bf16::EPSILON), &reference);
    }
}
