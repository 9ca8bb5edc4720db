//! The portable kernels, always compiled: the only path for f64, and for f32
//! (and widened f16/bf16) rows without the `simd` feature or without AVX2 +
//! FMA. Generic over the accumulator type; shapes are checked by the public
//! functions in the parent module.

use num_traits::Zero;

use super::{ROWS, rows4};
use crate::element::{Accumulator, Element};

/// Independent accumulators in [`dot`]: four SSE2 vectors of f32 partial
/// sums, enough to hide the add latency (with 8, the GQA layer's dot
/// products were latency-bound).
const LANES: usize = 16;

/// The scalar [`super::dot`].
#[inline]
pub(super) fn dot<T: Element>(a: &[T], b: &[T]) -> T::Acc {
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
    reduce(&acc, tail)
}

/// The sum of a dot product's partial sums in a fixed order: lanes `l` and
/// `l + 8` first, then a pairwise tree over the eight results, then the tail.
#[inline(always)]
fn reduce<A: Accumulator>(acc: &[A; LANES], tail: A) -> A {
    let mut h = [acc[0]; 8];
    for l in 0..8 {
        h[l] = acc[l] + acc[l + 8];
    }
    ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7])) + tail
}

/// [`dot`](super::dot) on rows already in the accumulator type, with the same order of
/// operations (so the same result, bit for bit).
#[inline(always)]
pub(super) fn dot_acc<A: Accumulator>(a: &[A], b: &[A]) -> A {
    let split = a.len() - a.len() % LANES;
    let (a_body, a_tail) = a.split_at(split);
    let (b_body, b_tail) = b.split_at(split);
    let mut acc = [A::zero(); LANES];
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = A::zero();
    for (x, y) in a_tail.iter().zip(b_tail) {
        tail += *x * *y;
    }
    reduce(&acc, tail)
}

/// The scalar [`super::scaled_logits`] on rows in the accumulator type.
///
/// One key row at a time: blocking four rows per query load made LLVM's SLP
/// vectorizer transpose the rows with shuffles (SSE2), which was slower.
pub(super) fn logits<A: Accumulator>(
    logits: &mut [A],
    stride: usize,
    queries: &[A],
    keys: &[A],
    d: usize,
    scale: A,
) {
    for (r, key) in keys.chunks_exact(d).enumerate() {
        for (q, query) in queries.chunks_exact(d).enumerate() {
            logits[q * stride + r] = dot_acc(query, key) * scale;
        }
    }
}

/// [`super::scaled_logits`] one element at a time, for half-precision rows
/// too wide for the widening blocks: each entry is a [`super::dot`].
pub(super) fn logits_per_element<T: Element>(
    logits: &mut [T::Acc],
    stride: usize,
    queries: &[T],
    keys: &[T],
    d: usize,
    scale: T::Acc,
) {
    for (r, key) in keys.chunks_exact(d).enumerate() {
        for (q, query) in queries.chunks_exact(d).enumerate() {
            logits[q * stride + r] = super::dot(query, key) * scale;
        }
    }
}

/// `Σ exp(row[i] − max)` with `exp` and a sum in row order, writing each
/// term into `row`.
pub(super) fn exp_sum<A: Accumulator>(row: &mut [A], max: A) -> A {
    // Two passes, so the running sum is not spilled around every `exp`
    // call.
    for x in row.iter_mut() {
        *x = (*x - max).exp();
    }
    let mut sum = A::zero();
    for x in row.iter() {
        sum += *x;
    }
    sum
}

/// The largest entry of a row without NaN (`-inf` if empty), in 8 lanes
/// that compile to vector maxima. Exact: a maximum does not round (its
/// sign may differ from a left-to-right fold when the maximum is zero,
/// which no caller can observe: `x − 0` and `x − (−0)` are equal up to the
/// sign of a zero, and `exp(±0) = 1`).
#[inline]
pub(super) fn max_of<A: Accumulator>(row: &[A]) -> A {
    let mut lanes = [A::neg_infinity(); 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = A::neg_infinity();
    for &x in lanes.iter().chain(chunks.remainder()) {
        max = if x > max { x } else { max };
    }
    max
}

/// `out[i] += w[0]·v[0][i] + … + w[3]·v[3][i]`, added one row at a time in
/// order (the same result, bit for bit, as four [`axpy`] calls).
///
/// A plain element-wise loop: the compiler vectorizes it along `i` with
/// contiguous loads. (Explicit lane arrays here made LLVM vectorize across
/// chunks with strided gathers.)
#[inline(always)]
fn axpy4<A: Accumulator>(out: &mut [A], w: [A; ROWS], v: [&[A]; ROWS]) {
    let n = out.len();
    let (v0, v1, v2, v3) = (&v[0][..n], &v[1][..n], &v[2][..n], &v[3][..n]);
    for ((((o, a), b), c), e) in out.iter_mut().zip(v0).zip(v1).zip(v2).zip(v3) {
        *o = (((*o + w[0] * *a) + w[1] * *b) + w[2] * *c) + w[3] * *e;
    }
}

/// `out[i] += w · x[i]`.
#[inline(always)]
fn axpy<A: Accumulator>(out: &mut [A], w: A, x: &[A]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += w * *v;
    }
}

/// Adds `Σ_r weights[q * stride + r] · values[r]` to `out[q]` on rows in the
/// accumulator type (the scalar [`super::weighted_sum`]). Blocks of rows whose
/// weights are all zero are skipped.
pub(super) fn accumulate<A: Accumulator>(
    out: &mut [A],
    weights: &[A],
    stride: usize,
    values: &[A],
    d: usize,
) {
    let zero = A::zero();
    let mut blocks = values.chunks_exact(ROWS * d);
    let mut r = 0;
    for block in &mut blocks {
        let v = rows4(block, d);
        for (q, out_row) in out.chunks_exact_mut(d).enumerate() {
            let w = &weights[q * stride + r..][..ROWS];
            if w.iter().any(|&x| x != zero) {
                axpy4(out_row, [w[0], w[1], w[2], w[3]], v);
            }
        }
        r += ROWS;
    }
    for value in blocks.remainder().chunks_exact(d) {
        for (q, out_row) in out.chunks_exact_mut(d).enumerate() {
            let w = weights[q * stride + r];
            if w != zero {
                axpy(out_row, w, value);
            }
        }
        r += 1;
    }
}

/// [`super::weighted_sum`] one element at a time (widened per element), for
/// half-precision rows too wide for the widening blocks. Adds to `out`.
pub(super) fn accumulate_per_element<T: Element>(
    out: &mut [T::Acc],
    weights: &[T::Acc],
    stride: usize,
    values: &[T],
    d: usize,
) {
    for (r, value) in values.chunks_exact(d).enumerate() {
        for (q, out_row) in out.chunks_exact_mut(d).enumerate() {
            let w = weights[q * stride + r];
            if w != T::Acc::zero() {
                for (o, x) in out_row.iter_mut().zip(value) {
                    *o += w * x.to_acc();
                }
            }
        }
    }
}
