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
//! # SIMD
//! With the `simd` feature (on by default) the f32 kernels (also used for
//! f16/bf16 rows, which are widened to f32) run as AVX2 + FMA code when the
//! CPU has both, chosen at run time through the `pulp` crate (detected once;
//! [`simd_isa`] says which). Otherwise, and always for f64, the scalar
//! kernels run; they are always compiled, and the unit tests check the two
//! against each other. The SIMD results differ from the scalar ones only by
//! rounding (fused multiply-adds, another summation order for dot products
//! and softmax sums, an `exp` within 2 ulp), so an f32 cache's outputs can
//! differ in the last bits between CPUs.
//!
//! # Panics
//! The kernels are building blocks for the caches, which validate every shape
//! before calling them; each kernel states the slice lengths it requires and
//! panics (with a message) if they do not hold. Nothing reachable through a
//! cache's public API can trip these checks.

use num_traits::Zero;

use crate::element::{Accumulator, Element};

mod fused;
#[cfg(feature = "simd")]
mod simd;

pub use fused::{OnlineSoftmax, attention_one_pass, finish_online, online_attention};

/// The instruction set the f32 kernels run with on this CPU: `"avx2+fma"`
/// when the `simd` feature is on and the CPU has AVX2 and FMA (detected once,
/// at the first call), `"scalar"` otherwise.
#[must_use]
pub fn simd_isa() -> &'static str {
    #[cfg(feature = "simd")]
    return simd::isa();
    #[cfg(not(feature = "simd"))]
    "scalar"
}

/// The instruction set [`attention_one_pass`] runs with for rows of
/// `head_dim` elements: `"avx512f"` with the `avx512` feature on a CPU with
/// AVX-512 when `head_dim` is a multiple of 16, otherwise as [`simd_isa`].
#[must_use]
pub fn one_pass_isa(head_dim: usize) -> &'static str {
    #[cfg(feature = "simd")]
    if fused::uses_avx512(head_dim) {
        return "avx512f";
    }
    let _ = head_dim;
    simd_isa()
}

/// Widens f16 bit patterns to f32 with the SIMD kernels; `false` (nothing
/// written) without them. `dst.len() == src.len()`.
#[cfg(feature = "half")]
#[inline]
pub(crate) fn widen_f16(src: &[u16], dst: &mut [f32]) -> bool {
    #[cfg(feature = "simd")]
    return simd::widen_f16(src, dst);
    #[cfg(not(feature = "simd"))]
    {
        let _ = (src, dst);
        false
    }
}

/// `Some(x)` as f32 if `A` is f32.
#[cfg(feature = "simd")]
#[inline(always)]
fn as_f32<A: Accumulator>(x: &A) -> Option<f32> {
    A::as_f32s(core::slice::from_ref(x)).map(|s| s[0])
}

/// Independent accumulators in [`dot`]: four SSE2 vectors of f32 partial
/// sums, enough to hide the add latency (with 8, the GQA layer's dot
/// products were latency-bound).
const LANES: usize = 16;

/// `Σ a[i]·b[i]` computed in `T::Acc`.
///
/// Uses 16 independent partial sums (so the result can differ from a
/// left-to-right sum in the last bits), then adds the partial sums pairwise.
/// With the `simd` feature on a CPU with AVX2 + FMA, f32 accumulation
/// (f32, and f16/bf16 rows up to 512 elements) uses 2 × 8 fused lanes
/// instead, as [`scaled_logits`] does, so the two agree bit for bit.
///
/// # Panics
/// If `a.len() != b.len()`.
#[inline]
#[must_use]
#[track_caller]
pub fn dot<T: Element>(a: &[T], b: &[T]) -> T::Acc {
    assert_eq!(a.len(), b.len(), "dot: slices have different lengths");
    #[cfg(feature = "simd")]
    if let Some(x) = dot_simd(a, b) {
        return x;
    }
    dot_scalar(a, b)
}

/// [`dot`] through the SIMD kernels when `T::Acc` is f32 and SIMD is
/// available; half rows are widened on the stack first, up to the same
/// width [`scaled_logits`] widens (so both take the same path).
#[cfg(feature = "simd")]
#[inline]
fn dot_simd<T: Element>(a: &[T], b: &[T]) -> Option<T::Acc> {
    let narrow = |x: f32| T::Acc::narrow(f64::from(x));
    if let (Some(a), Some(b)) = (T::as_acc_slice(a), T::as_acc_slice(b)) {
        let (a, b) = (T::Acc::as_f32s(a)?, T::Acc::as_f32s(b)?);
        return simd::dot(a, b).map(narrow);
    }
    if a.len() > WIDEN / ROWS || T::Acc::as_f32s(&[T::Acc::zero()]).is_none() {
        return None;
    }
    let zero = T::Acc::zero();
    let (mut a_buf, mut b_buf) = ([zero; WIDEN / ROWS], [zero; WIDEN / ROWS]);
    let (a_acc, b_acc) = (&mut a_buf[..a.len()], &mut b_buf[..b.len()]);
    T::widen_slice(a, a_acc);
    T::widen_slice(b, b_acc);
    let (a, b) = (T::Acc::as_f32s(a_acc)?, T::Acc::as_f32s(b_acc)?);
    simd::dot(a, b).map(narrow)
}

/// The scalar [`dot`].
#[inline]
fn dot_scalar<T: Element>(a: &[T], b: &[T]) -> T::Acc {
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

/// Value rows added together by [`weighted_sum`]: each output element is
/// loaded and stored once per four value rows instead of once per row.
const ROWS: usize = 4;

/// Elements of stack scratch per operand when stored rows are widened to the
/// accumulator type before the arithmetic (the half types): 8 KiB of f32.
const WIDEN: usize = 2048;

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

/// [`dot`] on rows already in the accumulator type, with the same order of
/// operations (so the same result, bit for bit).
#[inline(always)]
fn dot_acc<A: Accumulator>(a: &[A], b: &[A]) -> A {
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

/// Splits `ROWS` consecutive rows of `d` elements.
#[inline(always)]
fn rows4<X>(block: &[X], d: usize) -> [&[X]; ROWS] {
    let (a, rest) = block.split_at(d);
    let (b, rest) = rest.split_at(d);
    let (c, e) = rest.split_at(d);
    [a, b, c, &e[..d]]
}

/// [`scaled_logits`] on queries and keys in the accumulator type; the
/// shapes are checked by the caller. f32 goes through the SIMD kernels when
/// they are available.
fn logits_acc<A: Accumulator>(
    logits: &mut [A],
    stride: usize,
    queries: &[A],
    keys: &[A],
    d: usize,
    scale: A,
) {
    #[cfg(feature = "simd")]
    if let (Some(l), Some(q), Some(k), Some(s)) =
        (A::as_f32s_mut(logits), A::as_f32s(queries), A::as_f32s(keys), as_f32(&scale))
    {
        if simd::logits(l, stride, q, k, d, s) {
            return;
        }
    }
    logits_scalar(logits, stride, queries, keys, d, scale);
}

/// The scalar [`logits_acc`].
///
/// One key row at a time: blocking four rows per query load made LLVM's SLP
/// vectorizer transpose the rows with shuffles (SSE2), which was slower.
fn logits_scalar<A: Accumulator>(
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

/// Scaled dot products of `g` queries against `n` keys.
///
/// `logits[q * stride + r] = scale · dot(queries[q], keys[r])` for `q < g`,
/// `r < n` (the same value, bit for bit, as [`dot`]); entries of a row past
/// `n` are left untouched. Each key row is read once for all `g` queries (the
/// GQA saving). Half-precision rows are widened to f32 a block of rows at a
/// time (one vectorized conversion per block) before the arithmetic.
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
    if let (Some(q), Some(k)) = (T::as_acc_slice(queries), T::as_acc_slice(keys)) {
        logits_acc(logits, stride, q, k, d, scale);
    } else if d <= WIDEN / ROWS {
        let zero = T::Acc::zero();
        let (mut q_buf, mut k_buf) = ([zero; WIDEN], [zero; WIDEN]);
        let q_rows = WIDEN / d;
        let k_rows = WIDEN / d / ROWS * ROWS;
        for (qi, q_block) in queries.chunks(q_rows * d).enumerate() {
            let q = &mut q_buf[..q_block.len()];
            T::widen_slice(q_block, q);
            for (ki, k_block) in keys.chunks(k_rows * d).enumerate() {
                let k = &mut k_buf[..k_block.len()];
                T::widen_slice(k_block, k);
                let at = qi * q_rows * stride + ki * k_rows;
                logits_acc(&mut logits[at..], stride, q, k, d, scale);
            }
        }
    } else {
        for (r, key) in keys.chunks_exact(d).enumerate() {
            for (q, query) in queries.chunks_exact(d).enumerate() {
                logits[q * stride + r] = dot(query, key) * scale;
            }
        }
    }
}

/// Max-subtracted softmax of one row, in place.
///
/// With the SIMD kernels (f32 only) the exponentials come from a polynomial
/// within 2 ulp of `exp` (exactly 1 at the maximum, exactly 0 for `-inf`)
/// and the sum runs in 8 lanes; the properties below hold on both paths.
///
/// Entries equal to `-inf` (masked tokens) get weight exactly 0 and do not
/// enter the denominator. A row that is empty or entirely `-inf` becomes all
/// zeros (attention over nothing). Weights that underflow are kept as
/// subnormals or exact zeros, never flushed.
///
/// The caller guarantees no entry is NaN or `+inf` (the caches check logits
/// before calling this).
pub fn softmax_in_place<A: Accumulator>(row: &mut [A]) {
    let max = max_of(row);
    if max == A::neg_infinity() {
        row.iter_mut().for_each(|x| *x = A::zero());
        return;
    }
    let sum = exp_sum(row, max);
    // sum >= 1: the maximum contributes exp(0).
    let inv = A::one() / sum;
    for x in row.iter_mut() {
        *x = *x * inv;
    }
}

/// `Σ exp(row[i] − max)`, writing each term into `row`. With SIMD (f32
/// only) the exponentials are a polynomial within 2 ulp of `exp` and the sum
/// runs in 8 lanes; otherwise `exp` and a sum in row order.
#[inline]
fn exp_sum<A: Accumulator>(row: &mut [A], max: A) -> A {
    #[cfg(feature = "simd")]
    if let (Some(r), Some(m)) = (A::as_f32s_mut(row), as_f32(&max)) {
        if let Some(sum) = simd::exp_sum(r, m) {
            return A::narrow(f64::from(sum));
        }
    }
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
fn max_of<A: Accumulator>(row: &[A]) -> A {
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

/// Adds `Σ_r weights[q * stride + r] · values[r]` to `out[q]`, on values in
/// the accumulator type; shapes are checked by the caller. Blocks of rows
/// whose weights are all zero (masked or underflowed) are skipped. f32 goes
/// through the SIMD kernels when they are available.
fn accumulate_acc<A: Accumulator>(
    out: &mut [A],
    weights: &[A],
    stride: usize,
    values: &[A],
    d: usize,
) {
    #[cfg(feature = "simd")]
    if let (Some(o), Some(w), Some(v)) =
        (A::as_f32s_mut(out), A::as_f32s(weights), A::as_f32s(values))
    {
        if simd::accumulate(o, w, stride, v, d) {
            return;
        }
    }
    accumulate_scalar(out, weights, stride, values, d);
}

/// The scalar [`accumulate_acc`].
fn accumulate_scalar<A: Accumulator>(
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

/// Attention outputs: `out[q] = Σ_r weights[q * stride + r] · values[r]`.
///
/// Overwrites `out`. Each value row is read once for all `g` queries; each
/// output row is loaded and stored once per four value rows. The sum runs
/// over `r` in order, so the result does not depend on the blocking (the
/// SIMD kernels fuse each multiply-add, in the same order).
/// Half-precision rows are widened to f32 a block at a time.
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
    if let Some(v) = T::as_acc_slice(values) {
        accumulate_acc(out, weights, stride, v, d);
    } else if d <= WIDEN / ROWS {
        let mut v_buf = [T::Acc::zero(); WIDEN];
        let v_rows = WIDEN / d / ROWS * ROWS;
        for (i, block) in values.chunks(v_rows * d).enumerate() {
            let v = &mut v_buf[..block.len()];
            T::widen_slice(block, v);
            accumulate_acc(out, &weights[i * v_rows..], stride, v, d);
        }
    } else {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_traits::One;

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

    /// Deterministic values in `[-2, 2)`.
    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 51) as f64 - 2.0
            })
            .collect()
    }

    /// The blocked kernels against one `dot` / one in-order sum per entry,
    /// for any element type: equal bit for bit (`==`, so ±0 compare equal).
    ///
    /// With the SIMD kernels on (`exact == false`), the outputs use fused
    /// multiply-adds, so they are compared with the in-order unfused sum
    /// within [`fma_bound`]; the logits still equal [`dot`] bit for bit.
    fn blocked_equals_unblocked<T: Element>(
        g: usize,
        n: usize,
        d: usize,
        from: impl Fn(f64) -> T,
        exact: bool,
    ) {
        let q: Vec<T> = values(g * d, 1).into_iter().map(&from).collect();
        let k: Vec<T> = values(n * d, 2).into_iter().map(&from).collect();
        let v: Vec<T> = values(n * d, 3).into_iter().map(&from).collect();
        let stride = n + 3;
        let scale = T::Acc::one() / T::Acc::from_usize(3);
        let mut logits = vec![T::Acc::zero(); g * stride];
        scaled_logits(&mut logits, stride, &q, &k, d, scale);
        for qi in 0..g {
            for r in 0..n {
                let want = dot(&q[qi * d..][..d], &k[r * d..][..d]) * scale;
                assert!(logits[qi * stride + r] == want, "g{g} n{n} d{d}: logit {qi},{r}");
            }
            // Some zero weights, as masked slots have.
            let row = &mut logits[qi * stride..][..n];
            softmax_in_place(row);
            row.iter_mut().step_by(3).for_each(|w| *w = T::Acc::zero());
        }
        let mut out = vec![T::Acc::zero(); g * d];
        weighted_sum(&mut out, &logits, stride, &v, d);
        for qi in 0..g {
            for j in 0..d {
                let mut want = T::Acc::zero();
                let mut magnitude = 0.0;
                for r in 0..n {
                    let w = logits[qi * stride + r];
                    if w != T::Acc::zero() {
                        want += w * v[r * d + j].to_acc();
                        magnitude += (w * v[r * d + j].to_acc()).widen().abs();
                    }
                }
                let got = out[qi * d + j];
                if exact {
                    assert!(got == want, "g{g} n{n} d{d}: out {qi},{j}");
                } else {
                    let bound = fma_bound::<T::Acc>(n, magnitude);
                    let diff = (got.widen() - want.widen()).abs();
                    assert!(diff <= bound, "g{g} n{n} d{d}: out {qi},{j}: {got:?} vs {want:?}");
                }
            }
        }
    }

    #[test]
    fn blocked_kernels_match_row_by_row_at_odd_shapes() {
        for (g, n, d) in [(1, 1, 1), (1, 3, 7), (1, 4, 8), (2, 5, 9), (1, 9, 16), (4, 13, 24)] {
            both_paths::<f32>(g, n, d, |x| x as f32);
            both_paths::<f64>(g, n, d, |x| x);
        }
        // A whole widening block and a partial one.
        both_paths::<f32>(3, 2 * WIDEN / 64 + 5, 64, |x| x as f32);
    }

    /// [`blocked_equals_unblocked`] on the scalar kernels (exactly) and on
    /// the kernels this CPU dispatches to (f32 accumulation within rounding).
    fn both_paths<T: Element>(g: usize, n: usize, d: usize, from: impl Fn(f64) -> T + Copy) {
        scalar(|| blocked_equals_unblocked::<T>(g, n, d, from, true));
        let simd = simd_isa() != "scalar" && T::Acc::as_f32s(&[T::Acc::zero()]).is_some();
        blocked_equals_unblocked::<T>(g, n, d, from, !simd);
    }

    /// Runs `f` on the scalar kernels.
    #[cfg(feature = "simd")]
    fn scalar<R>(f: impl FnOnce() -> R) -> R {
        super::simd::tests::scalar(f)
    }

    /// Runs `f` on the scalar kernels (the only ones without `simd`).
    #[cfg(not(feature = "simd"))]
    fn scalar<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// How far two `n`-term sums (dot product or weighted sum) computed in
    /// `A` in different orders, with or without fused multiply-adds, can be
    /// apart: each is within `n·ε·Σ|terms|` of the exact sum (the standard
    /// bound for any summation order, ε the unit roundoff), plus one subnormal
    /// spacing per operation for terms that underflow.
    fn fma_bound<A: Accumulator>(n: usize, magnitude: f64) -> f64 {
        let eps = A::epsilon().widen() / 2.0;
        let tiny = (A::min_positive_value() * A::epsilon()).widen();
        2.0 * ((n + 2) as f64 * eps * magnitude + (2 * n + 2) as f64 * tiny)
    }

    /// Inputs for the SIMD-vs-scalar tests: `len` values in `[-2, 2)` times
    /// `magnitude`, rounded to f32.
    fn scaled(len: usize, seed: u64, magnitude: f64) -> Vec<f32> {
        values(len, seed).into_iter().map(|x| (x * magnitude) as f32).collect()
    }

    #[cfg(all(feature = "simd", target_arch = "x86_64"))]
    #[test]
    fn simd_is_chosen_when_the_cpu_has_avx2_and_fma() {
        let has = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        assert_eq!(simd_isa(), if has { "avx2+fma" } else { "scalar" });
        assert_eq!(scalar(simd_isa), "scalar");
    }

    /// The dispatched f32 kernels against the scalar ones (always compiled),
    /// at odd lengths and magnitudes from 1e-30 to 1e30, within
    /// [`fma_bound`]; on a CPU without AVX2 + FMA both are the scalar path.
    #[test]
    fn simd_kernels_match_scalar_within_rounding() {
        for d in [1usize, 7, 8, 9, 31, 128, 1023] {
            for magnitude in [1e-30, 1e-10, 1.0, 1e10, 1e30] {
                let (g, n) = (2, 9);
                let q = scaled(g * d, 5, 1.0);
                let k = scaled(n * d, 6, magnitude);
                let v = scaled(n * d, 7, magnitude);
                let ctx = format!("d {d}, magnitude {magnitude:e}");

                // dot
                let (a, b) = (&q[..d], &k[..d]);
                let magn: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x * *y).abs()).sum();
                let exact: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
                let (fast, slow) = (dot(a, b), scalar(|| dot(a, b)));
                let bound = fma_bound::<f32>(d, magn);
                assert!(f64::from((fast - slow).abs()) <= bound, "dot {ctx}: {fast} vs {slow}");
                assert!((f64::from(fast) - exact).abs() <= bound, "dot {ctx}: {fast} vs {exact}");

                // scaled_logits
                let stride = n + 1;
                let scale = 0.25;
                let mut fast = vec![0.0f32; g * stride];
                let mut slow = fast.clone();
                scaled_logits(&mut fast, stride, &q, &k, d, scale);
                scalar(|| scaled_logits(&mut slow, stride, &q, &k, d, scale));
                for qi in 0..g {
                    for r in 0..n {
                        let (a, b) = (&q[qi * d..][..d], &k[r * d..][..d]);
                        let magn: f64 =
                            a.iter().zip(b).map(|(x, y)| f64::from(*x * *y).abs()).sum();
                        let (x, y) = (fast[qi * stride + r], slow[qi * stride + r]);
                        let bound = fma_bound::<f32>(d + 1, magn * 0.25);
                        assert!(
                            f64::from((x - y).abs()) <= bound,
                            "logit {qi},{r} {ctx}: {x} vs {y}"
                        );
                    }
                }

                // softmax over logits spread by `magnitude` (from all weight
                // on one entry to nearly uniform), with a masked entry: each
                // exp within 2 ulp (SIMD) or 0.5 ulp (libm), each sum within
                // n·ε/2 relative, so every weight within (n + 4)·ε relative.
                let mut fast: Vec<f32> = scaled(d, 9, magnitude.min(1e3));
                fast[d / 2] = f32::NEG_INFINITY;
                let mut slow = fast.clone();
                softmax_in_place(&mut fast);
                scalar(|| softmax_in_place(&mut slow));
                for (i, (x, y)) in fast.iter().zip(&slow).enumerate() {
                    let bound = (d + 4) as f64 * f64::from(f32::EPSILON) * f64::from(*y)
                        + 2.0 * f64::from(f32::from_bits(1));
                    assert!(f64::from((x - y).abs()) <= bound, "weight {i} {ctx}: {x} vs {y}");
                }
                assert_eq!(fast[d / 2], 0.0, "masked {ctx}");

                // weighted_sum, with weights in [0, 1] and some exact zeros
                let mut w: Vec<f32> =
                    values(g * stride, 8).iter().map(|x| x.abs() as f32 / 2.0).collect();
                w.iter_mut().step_by(4).for_each(|x| *x = 0.0);
                let mut fast = vec![0.0f32; g * d];
                let mut slow = fast.clone();
                weighted_sum(&mut fast, &w, stride, &v, d);
                scalar(|| weighted_sum(&mut slow, &w, stride, &v, d));
                for qi in 0..g {
                    for j in 0..d {
                        let terms = (0..n).map(|r| w[qi * stride + r] * v[r * d + j]);
                        let magn: f64 = terms.map(|t| f64::from(t).abs()).sum();
                        let (x, y) = (fast[qi * d + j], slow[qi * d + j]);
                        let bound = fma_bound::<f32>(n, magn);
                        assert!(
                            f64::from((x - y).abs()) <= bound,
                            "out {qi},{j} {ctx}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    #[cfg(feature = "half")]
    #[test]
    fn widened_half_rows_match_per_element_arithmetic() {
        // Shapes that hit full and partial widening blocks, more queries than
        // fit one block (d = 512: 4 queries per block), and the per-element
        // path for rows wider than a block allows (d = 520).
        for (g, n, d) in [(1, 5, 8), (2, 70, 128), (5, 9, 512), (1, 6, 520), (2, 3, 7)] {
            both_paths::<half::f16>(g, n, d, half::f16::from_f64);
            both_paths::<half::bf16>(g, n, d, half::bf16::from_f64);
        }
    }
}
