//! One-pass attention: logits, online softmax and the weighted sum of the
//! values in one streaming pass over blocks of key/value rows.
//!
//! For each block of [`BLOCK`] rows and each query, the kernel computes the
//! block's logits (and stores them), raises the query's running maximum if
//! the block holds a larger logit (rescaling the running sum and the
//! unnormalized output by `exp(old − new)`), then adds
//! `exp(logit − max) · value` for the block's rows. Each key and value row is
//! read once for all queries of a group, and the value rows of a block are
//! read right after their keys, while both streams are in flight.
//!
//! The softmax weights themselves (for a score table) are not produced here:
//! they follow from the stored logits and the final [`OnlineSoftmax`]
//! statistics without touching the keys or values again
//! ([`super::softmax_in_place`] on a copy of the logits gives them, as in the
//! two-pass form).
//!
//! Rounding: the output differs from the two-pass form ([`super::scaled_logits`],
//! [`super::softmax_in_place`], [`super::weighted_sum`]) by the rescaling
//! (one rounding per raise of the maximum) and the division by the sum at the
//! end instead of a multiplication of each weight; the tests bound both
//! against an f64 computation.

use num_traits::Zero;

use super::widen::WIDEN;
use crate::element::{Accumulator, Element};

#[cfg(feature = "simd")]
mod simd;
#[cfg(feature = "simd")]
pub(crate) use simd::uses_avx512;

/// Key/value rows per block: the logits of a block are computed before its
/// value rows are added, and the maximum is raised at most once per block.
pub(crate) const BLOCK: usize = 16;

/// Running softmax statistics of one query in [`online_attention`]: the
/// largest logit seen so far and `Σ exp(logit − max)` over the rows seen.
///
/// Starts at `max = −∞`, `sum = 0` (no rows). After a pass, the softmax
/// weight of a row with logit `l` is `exp(l − max) / sum`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnlineSoftmax<A> {
    /// The largest logit seen (`−∞` before any row).
    pub max: A,
    /// `Σ exp(logit − max)` over the rows seen.
    pub sum: A,
}

impl<A: Accumulator> OnlineSoftmax<A> {
    /// The state before any row: `max = −∞`, `sum = 0`.
    #[must_use]
    pub fn new() -> Self {
        Self { max: A::neg_infinity(), sum: A::zero() }
    }
}

impl<A: Accumulator> Default for OnlineSoftmax<A> {
    fn default() -> Self {
        Self::new()
    }
}

/// Continues the online softmax attention of `g` queries over `n` more
/// key/value rows, in one pass over the rows.
///
/// - `acc`: `[g × d]` unnormalized outputs, `Σ exp(logit − max) · value` over
///   the rows seen so far (zeros and [`OnlineSoftmax::new`] to start);
/// - `state`: `[g]` running statistics, updated;
/// - `logits`: at least `(g − 1) · stride + n` elements; entry
///   `q · stride + r` receives `scale · dot(queries[q], keys[r])` (the same
///   value as [`super::scaled_logits`] writes), other entries are untouched;
/// - `queries`: `[g × d]`, `keys` and `values`: `[n × d]`.
///
/// Call [`finish_online`] to divide by the sums. Half-precision rows are
/// widened to f32 a block of rows at a time, on the stack.
///
/// The caller must not pass NaN or `+inf` inputs (the caches check them);
/// a logit that overflows makes the outputs NaN or infinite, which the
/// caches detect afterwards. Masked rows are not supported here: every row
/// takes part (use the two-pass kernels to mask).
///
/// # Panics
/// If `d == 0`, if a matrix is not a whole number of rows, if `keys` and
/// `values` differ in length, if `state` or `acc` does not match `g`, if
/// `stride < n`, or if `logits` is too short.
#[track_caller]
#[allow(clippy::too_many_arguments)] // The kernel's shapes, as in `scaled_logits`.
pub fn online_attention<T: Element>(
    acc: &mut [T::Acc],
    state: &mut [OnlineSoftmax<T::Acc>],
    logits: &mut [T::Acc],
    stride: usize,
    queries: &[T],
    keys: &[T],
    values: &[T],
    d: usize,
    scale: T::Acc,
) {
    assert!(d > 0, "online_attention: head_dim is zero");
    assert!(queries.len() % d == 0 && keys.len() % d == 0, "online_attention: ragged rows");
    assert_eq!(keys.len(), values.len(), "online_attention: keys and values differ in length");
    let (g, n) = (queries.len() / d, keys.len() / d);
    assert_eq!(state.len(), g, "online_attention: one state per query");
    assert_eq!(acc.len(), g * d, "online_attention: acc is not [g × d]");
    assert!(stride >= n, "online_attention: stride shorter than the number of keys");
    if g == 0 || n == 0 {
        return;
    }
    assert!(logits.len() >= (g - 1) * stride + n, "online_attention: logits too short");
    if let (Some(q), Some(k), Some(v)) =
        (T::as_acc_slice(queries), T::as_acc_slice(keys), T::as_acc_slice(values))
    {
        online_acc(acc, state, logits, stride, q, k, v, d, scale);
    } else if d <= WIDEN / BLOCK {
        let zero = T::Acc::zero();
        let mut q_buf = [zero; WIDEN];
        let (mut k_buf, mut v_buf) = ([zero; WIDEN], [zero; WIDEN]);
        let rows = WIDEN / d / BLOCK * BLOCK;
        // Queries: up to `WIDEN / d` at a time (each group of queries streams
        // the rows once).
        let q_rows = WIDEN / d;
        for (qi, q_block) in queries.chunks(q_rows * d).enumerate() {
            let q = &mut q_buf[..q_block.len()];
            T::widen_slice(q_block, q);
            let g_here = q_block.len() / d;
            let acc_q = &mut acc[qi * q_rows * d..][..g_here * d];
            let state_q = &mut state[qi * q_rows..][..g_here];
            for (i, (kb, vb)) in keys.chunks(rows * d).zip(values.chunks(rows * d)).enumerate() {
                let (k, v) = (&mut k_buf[..kb.len()], &mut v_buf[..vb.len()]);
                T::widen_slice(kb, k);
                T::widen_slice(vb, v);
                let at = qi * q_rows * stride + i * rows;
                online_acc(acc_q, state_q, &mut logits[at..], stride, q, k, v, d, scale);
            }
        }
    } else {
        // Rows wider than the stack scratch: widen one row at a time.
        let zero = T::Acc::zero();
        let mut q_row = vec![zero; d];
        let (mut k_row, mut v_row) = (vec![zero; d], vec![zero; d]);
        for (qi, query) in queries.chunks_exact(d).enumerate() {
            T::widen_slice(query, &mut q_row);
            for (r, (kr, vr)) in keys.chunks_exact(d).zip(values.chunks_exact(d)).enumerate() {
                T::widen_slice(kr, &mut k_row);
                T::widen_slice(vr, &mut v_row);
                online_acc(
                    &mut acc[qi * d..][..d],
                    &mut state[qi..=qi],
                    &mut logits[qi * stride + r..],
                    stride,
                    &q_row,
                    &k_row,
                    &v_row,
                    d,
                    scale,
                );
            }
        }
    }
}

/// Divides each query's unnormalized output by its sum: `acc[q] /= sum[q]`.
/// A query that saw no row (sum 0) keeps its zeros.
///
/// # Panics
/// If `acc.len() != state.len() · d`.
#[track_caller]
pub fn finish_online<A: Accumulator>(acc: &mut [A], state: &[OnlineSoftmax<A>], d: usize) {
    assert_eq!(acc.len(), state.len() * d, "finish_online: acc is not [g × d]");
    for (row, s) in acc.chunks_exact_mut(d.max(1)).zip(state) {
        if s.sum > A::zero() {
            let inv = A::one() / s.sum;
            row.iter_mut().for_each(|x| *x = *x * inv);
        }
    }
}

/// Attention of `g` queries over `n` rows in one pass: [`online_attention`]
/// from the empty state, then [`finish_online`]. `out` (`[g × d]`) receives
/// the outputs, `logits` the scaled logits, `state` (`[g]`) the final maxima
/// and sums.
///
/// # Panics
/// As [`online_attention`].
#[track_caller]
#[allow(clippy::too_many_arguments)] // The kernel's shapes, as in `scaled_logits`.
pub fn attention_one_pass<T: Element>(
    out: &mut [T::Acc],
    state: &mut [OnlineSoftmax<T::Acc>],
    logits: &mut [T::Acc],
    stride: usize,
    queries: &[T],
    keys: &[T],
    values: &[T],
    d: usize,
    scale: T::Acc,
) {
    out.iter_mut().for_each(|x| *x = T::Acc::zero());
    state.iter_mut().for_each(|s| *s = OnlineSoftmax::new());
    online_attention(out, state, logits, stride, queries, keys, values, d, scale);
    finish_online(out, state, d);
}

/// [`online_attention`] on rows in the accumulator type (shapes checked).
#[allow(clippy::too_many_arguments)]
fn online_acc<A: Accumulator>(
    acc: &mut [A],
    state: &mut [OnlineSoftmax<A>],
    logits: &mut [A],
    stride: usize,
    queries: &[A],
    keys: &[A],
    values: &[A],
    d: usize,
    scale: A,
) {
    #[cfg(feature = "simd")]
    if let (Some(o), Some(q), Some(k), Some(v), Some(l), Some(s)) = (
        A::as_f32s_mut(acc),
        A::as_f32s(queries),
        A::as_f32s(keys),
        A::as_f32s(values),
        A::as_f32s_mut(logits),
        super::as_f32(&scale),
    ) {
        if simd::available() {
            // The statistics go through f32 arrays on the stack, `QCHUNK`
            // queries at a time (each chunk streams the rows once).
            for (c, st) in state.chunks_mut(QCHUNK).enumerate() {
                let g = st.len();
                let mut max = [0.0f32; QCHUNK];
                let mut sum = [0.0f32; QCHUNK];
                for (i, x) in st.iter().enumerate() {
                    (max[i], sum[i]) = (narrow(x.max), narrow(x.sum));
                }
                let (q0, o0) = (c * QCHUNK * d, c * QCHUNK * d);
                simd::online(
                    &mut o[o0..][..g * d],
                    &mut max[..g],
                    &mut sum[..g],
                    &mut l[c * QCHUNK * stride..],
                    stride,
                    &q[q0..][..g * d],
                    k,
                    v,
                    d,
                    s,
                );
                for (i, x) in st.iter_mut().enumerate() {
                    (x.max, x.sum) = (A::narrow(f64::from(max[i])), A::narrow(f64::from(sum[i])));
                }
            }
            return;
        }
    }
    online_scalar(acc, state, logits, stride, queries, keys, values, d, scale);
}

/// Queries whose statistics and block logits the SIMD pass keeps on the
/// stack at once (each chunk streams the rows once).
#[cfg(feature = "simd")]
const QCHUNK: usize = 16;

/// An f32 accumulator value as f32 (exact: `A` is f32 where this is called).
#[cfg(feature = "simd")]
#[inline(always)]
fn narrow<A: Accumulator>(x: A) -> f32 {
    x.widen() as f32
}

/// Raises `state.max` to `block_max` if larger, rescaling `sum` and `acc`.
#[inline(always)]
fn raise<A: Accumulator>(state: &mut OnlineSoftmax<A>, acc: &mut [A], block_max: A) {
    if block_max > state.max {
        if state.sum != A::zero() {
            let c = (state.max - block_max).exp();
            state.sum = state.sum * c;
            acc.iter_mut().for_each(|x| *x = *x * c);
        }
        state.max = block_max;
    }
}

/// The scalar [`online_acc`].
#[allow(clippy::too_many_arguments)]
fn online_scalar<A: Accumulator>(
    acc: &mut [A],
    state: &mut [OnlineSoftmax<A>],
    logits: &mut [A],
    stride: usize,
    queries: &[A],
    keys: &[A],
    values: &[A],
    d: usize,
    scale: A,
) {
    let zero = A::zero();
    for (b, (kb, vb)) in keys.chunks(BLOCK * d).zip(values.chunks(BLOCK * d)).enumerate() {
        let rows = kb.len() / d;
        for (q, query) in queries.chunks_exact(d).enumerate() {
            let l = &mut logits[q * stride + b * BLOCK..][..rows];
            for (x, key) in l.iter_mut().zip(kb.chunks_exact(d)) {
                *x = super::scalar::dot_acc(query, key) * scale;
            }
            let block_max = l.iter().fold(A::neg_infinity(), |m, &x| if x > m { x } else { m });
            let out = &mut acc[q * d..][..d];
            let st = &mut state[q];
            raise(st, out, block_max);
            if st.max == A::neg_infinity() {
                continue; // every logit so far is −∞: nothing to add
            }
            let mut p = [zero; BLOCK];
            for (w, &x) in p.iter_mut().zip(l.iter()) {
                *w = (x - st.max).exp();
                st.sum += *w;
            }
            let mut four = vb.chunks_exact(4 * d);
            let mut r = 0;
            for v4 in &mut four {
                let w = [p[r], p[r + 1], p[r + 2], p[r + 3]];
                if w.iter().any(|&x| x != zero) {
                    super::scalar::axpy4(out, w, super::rows4(v4, d));
                }
                r += 4;
            }
            for v in four.remainder().chunks_exact(d) {
                if p[r] != zero {
                    super::scalar::axpy(out, p[r], v);
                }
                r += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{scaled_logits, simd_isa};

    /// Runs `f` on the scalar kernels.
    #[cfg(feature = "simd")]
    fn scalar<R>(f: impl FnOnce() -> R) -> R {
        crate::arch::tests::scalar(f)
    }

    #[cfg(not(feature = "simd"))]
    fn scalar<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// Deterministic values in `[-1, 1)`.
    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    struct Case {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        g: usize,
        n: usize,
        d: usize,
    }

    /// Keys drawn times `spread`; with `rising`, key `r` also gets `r / n`
    /// times `spread` along the first query, so the running maximum rises in
    /// (nearly) every block and the output is rescaled each time.
    fn case(g: usize, n: usize, d: usize, spread: f64, rising: bool) -> Case {
        let q: Vec<f32> = values(g * d, 1).iter().map(|&x| x as f32).collect();
        let mut k: Vec<f64> = values(n * d, 2).iter().map(|&x| x * spread).collect();
        if rising {
            for r in 0..n {
                for j in 0..d {
                    k[r * d + j] += spread * r as f64 / n as f64 * f64::from(q[j]).signum();
                }
            }
        }
        let k = k.iter().map(|&x| x as f32).collect();
        let v = values(n * d, 3).iter().map(|&x| x as f32).collect();
        Case { q, k, v, g, n, d }
    }

    /// One-pass outputs, logits and statistics for `c`.
    fn run(c: &Case, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<OnlineSoftmax<f32>>) {
        let stride = c.n + 2;
        let mut out = vec![f32::NAN; c.g * c.d];
        let mut logits = vec![f32::NAN; c.g * stride];
        let mut state = vec![OnlineSoftmax::new(); c.g];
        attention_one_pass(&mut out, &mut state, &mut logits, stride, &c.q, &c.k, &c.v, c.d, scale);
        (out, logits, state)
    }

    /// The stated bound on `|one-pass output − exact softmax(l)·V|`, where
    /// the exact value is computed in f64 from the kernel's own f32 logits:
    /// `((2n + 4·blocks + 16)·ε + u·range)·Σ wᵢ·|vᵢ| + (2n + 2)·tiny`, with
    /// ε = f32::EPSILON, u = ε/2, `range` the spread of the logits (the
    /// rounding of `l − max` is relative to it), `blocks` the number of
    /// possible rescalings and `tiny` the smallest subnormal. It covers the
    /// polynomial `exp` (2 ulp), each rescaling (2 ulp + the rounding of the
    /// difference of maxima), the fused sums in any order (n·u each for the
    /// numerator and the denominator) and the final division.
    fn check(c: &Case, out: &[f32], logits: &[f32], stride: usize, what: &str) {
        let eps = f64::from(f32::EPSILON);
        let tiny = f64::from(f32::from_bits(1));
        let blocks = c.n.div_ceil(BLOCK) as f64;
        for qi in 0..c.g {
            let l: Vec<f64> = (0..c.n).map(|r| f64::from(logits[qi * stride + r])).collect();
            let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lo = l.iter().copied().fold(f64::INFINITY, f64::min);
            let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for j in 0..c.d {
                let exact: f64 = (0..c.n).map(|r| e[r] / sum * f64::from(c.v[r * c.d + j])).sum();
                let magnitude: f64 =
                    (0..c.n).map(|r| e[r] / sum * f64::from(c.v[r * c.d + j]).abs()).sum();
                let rel = (2.0 * c.n as f64 + 4.0 * blocks + 16.0) * eps + eps / 2.0 * (m - lo);
                let bound = rel * magnitude + (2 * c.n + 2) as f64 * tiny;
                let got = f64::from(out[qi * c.d + j]);
                assert!(
                    (got - exact).abs() <= bound,
                    "{what} g{} n{} d{}: out {qi},{j} = {got}, exact {exact}, bound {bound:e}",
                    c.g,
                    c.n,
                    c.d
                );
            }
        }
    }

    #[test]
    fn one_pass_matches_f64_and_two_pass_logits_on_both_paths() {
        let shapes = [(1, 1, 1), (1, 15, 8), (1, 16, 128), (2, 17, 9), (4, 100, 128), (3, 530, 64)];
        for (g, n, d) in shapes {
            for spread in [0.01, 1.0, 10.0, 60.0] {
                for rising in [false, true] {
                    let c = case(g, n, d, spread, rising);
                    let scale = 1.0 / (d as f32).sqrt();
                    let stride = n + 2;
                    let (fast, fast_l, _) = run(&c, scale);
                    let (slow, slow_l, _) = scalar(|| run(&c, scale));
                    check(&c, &fast, &fast_l, stride, "dispatched");
                    check(&c, &slow, &slow_l, stride, "scalar");
                    // The logits equal the two-pass kernel's on each path
                    // (with 16-lane AVX-512 the sums run in another order:
                    // then within the rounding bound of two dot products).
                    let mut two = vec![f32::NAN; g * stride];
                    scaled_logits(&mut two, stride, &c.q, &c.k, d, scale);
                    let same_isa = crate::kernels::one_pass_isa(d) == simd_isa();
                    for qi in 0..g {
                        for r in 0..n {
                            let i = qi * stride + r;
                            let magnitude: f64 = (0..d)
                                .map(|j| f64::from(c.q[qi * d + j] * c.k[r * d + j]).abs())
                                .sum::<f64>()
                                * f64::from(scale);
                            let bound = if same_isa {
                                0.0
                            } else {
                                (d + 2) as f64 * f64::from(f32::EPSILON) * magnitude
                                    + f64::from(f32::MIN_POSITIVE)
                            };
                            let diff = f64::from((fast_l[i] - two[i]).abs());
                            assert!(diff <= bound, "logit {qi},{r}: {} vs {}", fast_l[i], two[i]);
                        }
                        assert!(fast_l[qi * stride + n].is_nan(), "entries past n untouched");
                    }
                    let mut two = vec![f32::NAN; g * stride];
                    scalar(|| scaled_logits(&mut two, stride, &c.q, &c.k, d, scale));
                    for i in (0..g).flat_map(|qi| (0..n).map(move |r| qi * stride + r)) {
                        assert!(slow_l[i] == two[i], "scalar logit {i}");
                    }
                }
            }
        }
        // The dispatched path really is SIMD on a CPU with AVX2 + FMA.
        if simd_isa() != "scalar" {
            let c = case(1, 40, 16, 1.0, false);
            assert_ne!(
                run(&c, 0.25).0,
                scalar(|| run(&c, 0.25)).0,
                "both paths gave the same bits"
            );
        }
    }

    #[test]
    fn each_query_of_a_group_equals_the_query_alone() {
        // 33 queries: more than one chunk of statistics on the SIMD path.
        let c = case(33, 70, 16, 3.0, false);
        let (out, logits, state) = run(&c, 0.5);
        for qi in [0, 5, 31, 32] {
            let one = Case {
                q: c.q[qi * c.d..][..c.d].to_vec(),
                k: c.k.clone(),
                v: c.v.clone(),
                g: 1,
                n: c.n,
                d: c.d,
            };
            let (o, l, s) = run(&one, 0.5);
            assert_eq!(&out[qi * c.d..][..c.d], &o[..], "query {qi}");
            assert_eq!(&logits[qi * (c.n + 2)..][..c.n], &l[..c.n]);
            assert_eq!(state[qi], s[0]);
        }
    }

    #[test]
    fn statistics_give_the_softmax_weights() {
        let c = case(2, 45, 8, 5.0, true);
        let stride = c.n + 2;
        let (_, logits, state) = run(&c, 1.0);
        for qi in 0..2 {
            let l = &logits[qi * stride..][..c.n];
            let mut w = l.to_vec();
            crate::kernels::softmax_in_place(&mut w);
            for (x, &y) in l.iter().zip(&w) {
                let z = (x - state[qi].max).exp() / state[qi].sum;
                assert!((z - y).abs() <= 1e-5 * y + 1e-30, "{z} vs {y}");
            }
            assert_eq!(state[qi].max, l.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        }
    }

    #[test]
    fn resuming_over_row_blocks_equals_one_call() {
        // Two calls over rows split at a block boundary equal one call.
        let c = case(2, 64, 8, 2.0, true);
        let (d, n) = (c.d, c.n);
        let mut acc = vec![0.0f32; 2 * d];
        let mut state = vec![OnlineSoftmax::new(); 2];
        let mut logits = vec![0.0f32; 2 * n];
        let split = 2 * BLOCK * d;
        online_attention(
            &mut acc,
            &mut state,
            &mut logits,
            n,
            &c.q,
            &c.k[..split],
            &c.v[..split],
            d,
            1.0,
        );
        online_attention(
            &mut acc,
            &mut state,
            &mut logits[2 * BLOCK..],
            n,
            &c.q,
            &c.k[split..],
            &c.v[split..],
            d,
            1.0,
        );
        finish_online(&mut acc, &state, d);
        let mut out = vec![0.0f32; 2 * d];
        let mut state2 = vec![OnlineSoftmax::new(); 2];
        let mut logits2 = vec![0.0f32; 2 * n];
        attention_one_pass(&mut out, &mut state2, &mut logits2, n, &c.q, &c.k, &c.v, d, 1.0);
        assert_eq!(acc, out);
        assert_eq!(logits, logits2);
    }

    #[test]
    fn no_rows_give_zeros_and_f64_is_exact_enough() {
        let mut out = [f64::NAN; 4];
        let mut state = [OnlineSoftmax::new(); 2];
        attention_one_pass::<f64>(&mut out, &mut state, &mut [], 0, &[1.0; 4], &[], &[], 2, 1.0);
        assert_eq!(out, [0.0; 4]);
        // f64 (scalar path) against a two-pass computation.
        let q = values(8, 4);
        let k = values(8 * 37, 5);
        let v = values(8 * 37, 6);
        let mut out = [0.0f64; 8];
        let mut logits = vec![0.0; 37];
        attention_one_pass(&mut out, &mut state[..1], &mut logits, 37, &q, &k, &v, 8, 0.3);
        let mut w = logits.clone();
        crate::kernels::softmax_in_place(&mut w);
        let mut want = [0.0f64; 8];
        crate::kernels::weighted_sum(&mut want, &w, 37, &v, 8);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
    }

    #[cfg(feature = "half")]
    #[test]
    fn half_rows_equal_their_widened_f32_rows() {
        // Rows widened a block at a time on the stack give the same bits as
        // the f32 kernel on the widened rows (d = 128: 16 rows per block;
        // d = 520: one row at a time, so only the f32 scalar-path order).
        for (g, n, d) in [(1, 70, 128), (3, 40, 16), (20, 20, 128)] {
            let c = case(g, n, d, 3.0, false);
            let h = |x: &[f32]| x.iter().map(|&y| half::f16::from_f32(y)).collect::<Vec<_>>();
            let (q, k, v) = (h(&c.q), h(&c.k), h(&c.v));
            let w = |x: &[half::f16]| x.iter().map(|y| y.to_f32()).collect::<Vec<_>>();
            let wide = Case { q: w(&q), k: w(&k), v: w(&v), g, n, d };
            let (want, want_l, _) = run(&wide, 0.25);
            let stride = n + 2;
            let mut out = vec![0.0f32; g * d];
            let mut logits = vec![f32::NAN; g * stride];
            let mut state = vec![OnlineSoftmax::new(); g];
            attention_one_pass(&mut out, &mut state, &mut logits, stride, &q, &k, &v, d, 0.25);
            assert_eq!(out, want, "g{g} n{n} d{d}");
            for i in (0..g).flat_map(|qi| (0..n).map(move |r| qi * stride + r)) {
                assert_eq!(logits[i], want_l[i]);
            }
        }
    }
}
