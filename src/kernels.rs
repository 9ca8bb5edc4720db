//! Attention kernels: free functions over slices, destination first.
//!
//! They know nothing about slots, budgets or policies. Each one computes in the
//! accumulator type of the stored element ([`Element::Acc`]), reads its inputs
//! front to back once, and allocates nothing.
//!
//! Shapes use `g` for the number of queries that share the keys (a GQA group;
//! 1 for plain attention), `n` for the number of key/value rows and `d` for
//! `head_dim`. Every matrix is row-major.
//!
//! # Panics
//! The kernels are building blocks for the caches, which validate every shape
//! before calling them; each kernel states the slice lengths it requires and
//! panics (with a message) if they do not hold. Nothing reachable through a
//! cache's public API can trip these checks.

use num_traits::Zero;

use crate::element::{Accumulator, Element};

/// Independent accumulators in [`dot`]: enough to hide the add latency and to
/// let the compiler keep a vector register's worth of partial sums.
const LANES: usize = 8;

/// `Σ a[i]·b[i]` computed in `T::Acc`.
///
/// Uses [`LANES`] independent partial sums (so the result can differ from a
/// left-to-right sum in the last bits), then adds the partial sums pairwise.
///
/// # Panics
/// If `a.len() != b.len()`.
#[inline]
#[must_use]
#[track_caller]
pub fn dot<T: Element>(a: &[T], b: &[T]) -> T::Acc {
    assert_eq!(a.len(), b.len(), "dot: slices have different lengths");
    let zero = T::Acc::zero();
    let mut acc = [zero; LANES];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l].to_acc() * y[l].to_acc();
        }
    }
    let mut tail = zero;
    for (x, y) in a_tail.iter().zip(b_tail) {
        tail += x.to_acc() * y.to_acc();
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Scaled dot products of `g` queries against `n` keys.
///
/// `logits[q * stride + r] = scale · dot(queries[q], keys[r])` for `q < g`,
/// `r < n`; entries of a row past `n` are left untouched. Each key row is read
/// once for all `g` queries (the GQA saving).
///
/// - `queries`: `[g × d]`, `keys`: `[n × d]`, `logits`: at least
///   `(g − 1) · stride + n` elements.
///
/// # Panics
/// If `d == 0`, if `queries` or `keys` is not a whole number of rows, if
/// `stride < n`, or if `logits` is too short.
#[track_caller]
pub fn scaled_logits<T: Element>(
    logits: &mut [T::Acc],
    stride: usize,
    queries: &[T],
    keys: &[T],
    d: usize,
    scale: T::Acc,
) {
    assert!(d > 0, "scaled_logits: head_dim is zero");
    assert!(queries.len() % d == 0 && keys.len() % d == 0, "scaled_logits: ragged rows");
    let (g, n) = (queries.len() / d, keys.len() / d);
    assert!(stride >= n, "scaled_logits: stride shorter than the number of keys");
    if g == 0 || n == 0 {
        return;
    }
    assert!(logits.len() >= (g - 1) * stride + n, "scaled_logits: logits too short");
    if g == 1 {
        for (out, key) in logits[..n].iter_mut().zip(keys.chunks_exact(d)) {
            *out = dot(queries, key) * scale;
        }
        return;
    }
    for (r, key) in keys.chunks_exact(d).enumerate() {
        for (q, query) in queries.chunks_exact(d).enumerate() {
            logits[q * stride + r] = dot(query, key) * scale;
        }
    }
}

/// Max-subtracted softmax of one row, in place.
///
/// Entries equal to `-inf` (masked tokens) get weight exactly 0 and do not
/// enter the denominator. A row that is empty or entirely `-inf` becomes all
/// zeros (attention over nothing). Weights that underflow are kept as
/// subnormals or exact zeros, never flushed.
///
/// The caller guarantees no entry is NaN or `+inf` (the caches check logits
/// before calling this).
pub fn softmax_in_place<A: Accumulator>(row: &mut [A]) {
    let max = row.iter().copied().fold(A::neg_infinity(), A::max);
    if max == A::neg_infinity() {
        row.iter_mut().for_each(|x| *x = A::zero());
        return;
    }
    let mut sum = A::zero();
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    // sum >= 1: the maximum contributes exp(0).
    let inv = A::one() / sum;
    for x in row.iter_mut() {
        *x = *x * inv;
    }
}

/// Attention outputs: `out[q] = Σ_r weights[q * stride + r] · values[r]`.
///
/// Overwrites `out`. Each value row is read once for all `g` queries.
///
/// - `out`: `[g × d]`, `values`: `[n × d]`, `weights`: at least
///   `(g − 1) · stride + n` elements.
///
/// # Panics
/// If `d == 0`, if `out` or `values` is not a whole number of rows, if
/// `stride < n`, or if `weights` is too short.
#[track_caller]
pub fn weighted_sum<T: Element>(
    out: &mut [T::Acc],
    weights: &[T::Acc],
    stride: usize,
    values: &[T],
    d: usize,
) {
    assert!(d > 0, "weighted_sum: head_dim is zero");
    assert!(out.len() % d == 0 && values.len() % d == 0, "weighted_sum: ragged rows");
    let (g, n) = (out.len() / d, values.len() / d);
    assert!(stride >= n, "weighted_sum: stride shorter than the number of values");
    out.iter_mut().for_each(|x| *x = T::Acc::zero());
    if g == 0 || n == 0 {
        return;
    }
    assert!(weights.len() >= (g - 1) * stride + n, "weighted_sum: weights too short");
    for (r, value) in values.chunks_exact(d).enumerate() {
        for (q, out_row) in out.chunks_exact_mut(d).enumerate() {
            let w = weights[q * stride + r];
            if w != T::Acc::zero() {
                axpy(out_row, w, value);
            }
        }
    }
}

/// `out[i] += w · x[i]`.
#[inline]
fn axpy<T: Element>(out: &mut [T::Acc], w: T::Acc, x: &[T]) {
    let split = out.len() - out.len() % LANES;
    let (out_body, out_tail) = out.split_at_mut(split);
    let (x_body, x_tail) = x.split_at(split);
    for (o, v) in out_body.chunks_exact_mut(LANES).zip(x_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            o[l] += w * v[l].to_acc();
        }
    }
    for (o, v) in out_tail.iter_mut().zip(x_tail) {
        *o += w * v.to_acc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn dot_matches_naive_at_odd_lengths() {
        for len in [0usize, 1, 7, 8, 9, 31, 128, 1023] {
            let a: Vec<f64> = (0..len).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
            let b: Vec<f64> = (0..len).map(|i| ((i * 13 % 7) as f64 - 3.0) / 2.0).collect();
            let want = naive_dot(&a, &b);
            let got = dot(&a, &b);
            assert!((got - want).abs() <= 1e-12 * (1.0 + want.abs()), "len {len}: {got} vs {want}");
            let af: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let bf: Vec<f32> = b.iter().map(|&x| x as f32).collect();
            let gotf = f64::from(dot(&af, &bf));
            assert!((gotf - want).abs() <= 1e-4 * (1.0 + want.abs()), "f32 len {len}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_is_shift_invariant() {
        let mut a = [1.0f64, 2.0, 3.0, -4.0, 0.5];
        let mut b = a.map(|x| x + 1000.0);
        softmax_in_place(&mut a);
        softmax_in_place(&mut b);
        assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-15);
        }
    }

    #[test]
    fn softmax_is_stable_on_large_logits() {
        let mut row = [1234.0f32, 0.0];
        softmax_in_place(&mut row);
        assert_eq!(row, [1.0, 0.0]);
    }

    #[test]
    fn softmax_masks_neg_inf_and_handles_empty_rows() {
        let mut row = [0.0f32, f32::NEG_INFINITY, 0.0];
        softmax_in_place(&mut row);
        assert_eq!(row, [0.5, 0.0, 0.5]);
        let mut all_masked = [f64::NEG_INFINITY; 3];
        softmax_in_place(&mut all_masked);
        assert_eq!(all_masked, [0.0; 3]);
        let mut empty: [f32; 0] = [];
        softmax_in_place(&mut empty);
    }

    #[test]
    fn softmax_keeps_subnormal_weights() {
        // exp(-100) ≈ 3.7e-44 is subnormal in f32.
        let mut row = [0.0f32, -100.0];
        softmax_in_place(&mut row);
        assert!(row[1] > 0.0 && row[1] < f32::MIN_POSITIVE);
    }

    #[test]
    fn grouped_kernels_match_per_query_kernels() {
        let d = 5;
        let keys: Vec<f64> = (0..4 * d).map(|i| (i as f64 * 0.37).sin()).collect();
        let values: Vec<f64> = (0..4 * d).map(|i| (i as f64 * 0.11).cos()).collect();
        let queries: Vec<f64> = (0..3 * d).map(|i| (i as f64 * 0.53).sin()).collect();
        let stride = 6;
        let mut logits = vec![f64::NAN; 3 * stride];
        scaled_logits(&mut logits, stride, &queries, &keys, d, 0.5);
        for q in 0..3 {
            for r in 0..4 {
                let want = 0.5 * naive_dot(&queries[q * d..][..d], &keys[r * d..][..d]);
                assert_eq!(logits[q * stride + r], want);
            }
            assert!(logits[q * stride + 4].is_nan(), "entries past n are untouched");
            softmax_in_place(&mut logits[q * stride..][..4]);
        }
        let mut out = vec![0.0; 3 * d];
        weighted_sum(&mut out, &logits, stride, &values, d);
        for q in 0..3 {
            for j in 0..d {
                let want: f64 = (0..4).map(|r| logits[q * stride + r] * values[r * d + j]).sum();
                assert!((out[q * d + j] - want).abs() < 1e-14);
            }
        }
    }
}
