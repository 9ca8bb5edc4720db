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
//!
//! # Files
//! - `mod.rs`: the public functions (shape checks, then dispatch);
//! - `scalar.rs`: the portable kernels, always compiled;
//! - `widen.rs`: f16/bf16 rows widened to f32 in stack blocks;
//! - `simd.rs` (feature `simd`): the AVX2 + FMA kernels through `pulp`;
//! - `tests.rs`: blocked against unblocked, SIMD against scalar.

use num_traits::Zero;

use crate::element::{Accumulator, Element};

mod scalar;
#[cfg(feature = "simd")]
mod simd;
#[cfg(test)]
mod tests;
mod widen;

/// The instruction set the f32 kernels run with on this CPU: `"avx2+fma"`
/// when the `simd` feature is on and the CPU has AVX2 and FMA (detected once,
/// at the first call), `"scalar"` otherwise.
#[must_use]
pub fn simd_isa() -> &'static str {
    #[cfg(feature = "simd")]
    return crate::arch::isa();
    #[cfg(not(feature = "simd"))]
    "scalar"
}

/// Value rows added together by [`weighted_sum`]: each output element is
/// loaded and stored once per four value rows instead of once per row.
const ROWS: usize = 4;

/// Splits `ROWS` consecutive rows of `d` elements.
#[inline(always)]
fn rows4<X>(block: &[X], d: usize) -> [&[X]; ROWS] {
    let (a, rest) = block.split_at(d);
    let (b, rest) = rest.split_at(d);
    let (c, e) = rest.split_at(d);
    [a, b, c, &e[..d]]
}

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
    scalar::dot(a, b)
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
    } else if !widen::logits(logits, stride, queries, keys, d, scale) {
        scalar::logits_per_element(logits, stride, queries, keys, d, scale);
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
    let max = scalar::max_of(row);
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
    } else if !widen::accumulate(out, weights, stride, values, d) {
        scalar::accumulate_per_element(out, weights, stride, values, d);
    }
}

// ---- dispatch: the SIMD kernels for f32 when the CPU has them, else scalar

/// `Some(x)` as f32 if `A` is f32.
#[cfg(feature = "simd")]
#[inline(always)]
fn as_f32<A: Accumulator>(x: &A) -> Option<f32> {
    A::as_f32s(core::slice::from_ref(x)).map(|s| s[0])
}

/// [`dot`] through the SIMD kernels when `T::Acc` is f32 and SIMD is
/// available; half rows are widened on the stack first ([`widen::dot_simd`]).
#[cfg(feature = "simd")]
#[inline]
fn dot_simd<T: Element>(a: &[T], b: &[T]) -> Option<T::Acc> {
    match (T::as_acc_slice(a), T::as_acc_slice(b)) {
        (Some(a), Some(b)) => dot_acc_simd(a, b),
        _ => widen::dot_simd(a, b),
    }
}

/// The SIMD dot product of two rows in the accumulator type; `None` unless
/// `A` is f32 and SIMD is available.
#[cfg(feature = "simd")]
#[inline]
fn dot_acc_simd<A: Accumulator>(a: &[A], b: &[A]) -> Option<A> {
    let (a, b) = (A::as_f32s(a)?, A::as_f32s(b)?);
    simd::dot(a, b).map(|x| A::narrow(f64::from(x)))
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
    scalar::logits(logits, stride, queries, keys, d, scale);
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
    scalar::exp_sum(row, max)
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
    scalar::accumulate(out, weights, stride, values, d);
}
