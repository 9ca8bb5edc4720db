//! AVX2 + FMA forms of the f32 kernels, chosen at run time through `pulp`.
//!
//! `pulp` detects the instruction set once (`crate::arch`) and compiles each
//! kernel body for it; this crate stays free of `unsafe`. Every entry point
//! returns `false` / `None` when the CPU has no AVX2 + FMA (pulp's scalar
//! level), and the caller then runs the scalar kernels, which are always
//! compiled. AVX-512 machines use the same 8-lane code (pulp's `x86-v3`
//! level): the rows here are 8 to 128 elements, and 16 lanes would leave
//! head_dim 8 entirely to the scalar tail.
//!
//! The results differ from the scalar kernels only by rounding: a dot
//! product sums 8 lanes in 2 accumulators (the scalar one, 16 partial sums),
//! and every multiply-add is fused, tails included. The per-row order of
//! operations does not depend on how rows are blocked, so [`logits`] equals
//! [`dot`] times the scale bit for bit, and [`accumulate`] adds value rows in
//! row order.

use pulp::{Simd, WithSimd};

use super::{ROWS, rows4};
use crate::arch::arch;

/// `Σ a[i]·b[i]`, `None` without SIMD. The lengths are equal (checked by the
/// caller).
pub(super) fn dot(a: &[f32], b: &[f32]) -> Option<f32> {
    arch().map(|arch| arch.dispatch(Dot { a, b }))
}

/// [`super::scaled_logits`] on f32 rows; `false` (nothing written) without
/// SIMD. Shapes are checked by the caller.
pub(super) fn logits(
    logits: &mut [f32],
    stride: usize,
    queries: &[f32],
    keys: &[f32],
    d: usize,
    scale: f32,
) -> bool {
    let Some(arch) = arch() else { return false };
    arch.dispatch(Logits { logits, stride, queries, keys, d, scale });
    true
}

/// Adds the weighted value rows to `out` (see [`super::weighted_sum`]) on
/// f32 rows; `false` (nothing written) without SIMD. Shapes are checked by
/// the caller.
pub(super) fn accumulate(
    out: &mut [f32],
    weights: &[f32],
    stride: usize,
    values: &[f32],
    d: usize,
) -> bool {
    let Some(arch) = arch() else { return false };
    arch.dispatch(Accumulate { out, weights, stride, values, d });
    true
}

/// `Σ exp(row[i] − max)` in 8 lanes, writing each term into `row`; `None`
/// (nothing written) without SIMD. `row` holds no NaN, `max` is finite and
/// no entry exceeds it (the caller's softmax guarantees both).
pub(super) fn exp_sum(row: &mut [f32], max: f32) -> Option<f32> {
    arch().map(|arch| arch.dispatch(ExpSum { row, max }))
}

struct ExpSum<'a> {
    row: &'a mut [f32],
    max: f32,
}

impl WithSimd for ExpSum<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        let (head, tail) = S::as_mut_simd_f32s(self.row);
        let max = simd.splat_f32s(self.max);
        let mut acc = simd.splat_f32s(0.0);
        for x in head.iter_mut() {
            *x = exp_lanes(simd, simd.sub_f32s(*x, max));
            acc = simd.add_f32s(acc, *x);
        }
        let mut sum = simd.reduce_sum_f32s(acc);
        for x in tail.iter_mut() {
            *x = exp_one(*x - self.max);
            sum += *x;
        }
        sum
    }
}

// `exp(x)` for `x ≤ 0`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by
// the degree-7 polynomial below (the coefficients of the Cephes library's
// `expf`, relative error ≤ 1.2e-7 on that interval), then the scaling by
// `2^n` done as `2^(n + 64)` (exact, normal) times `2^-64`, so that results
// below `f32::MIN_POSITIVE` round once to a subnormal instead of being
// flushed. Inputs below `LOWEST` (`-inf` included) give exactly 0, as
// `exp` does; `exp(0)` is exactly 1.

/// Below this, `exp` rounds to 0 in f32 (`e^-104 < 2^-150`).
const LOWEST: f32 = -104.0;
/// `1.5 · 2^23`: adding it rounds a float in `(-2^22, 2^22)` to an integer,
/// which then sits in the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;
/// `ln 2` in two parts, the first with few significant bits so that
/// `n · LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `e^r ≈ 1 + r + r² · (((((P[0]·r + P[1])·r + P[2])·r + P[3])·r + P[4])·r + P[5])`.
const P: [f32; 6] =
    [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
/// `2^-64`.
const TWO_M64: f32 = 5.421_011e-20;
/// The biased exponent of `2^(n + 64)` is `n + 64 + 127`.
const BIAS: u32 = 64 + 127;

/// `exp` of each lane; see above. The same operations as [`exp_one`].
#[inline(always)]
fn exp_lanes<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    let x = simd.max_f32s(x, simd.splat_f32s(LOWEST));
    let t =
        simd.mul_add_f32s(x, simd.splat_f32s(core::f32::consts::LOG2_E), simd.splat_f32s(ROUNDER));
    let n = simd.sub_f32s(t, simd.splat_f32s(ROUNDER));
    let r = simd.mul_add_f32s(n, simd.splat_f32s(-LN2_HI), x);
    let r = simd.mul_add_f32s(n, simd.splat_f32s(-LN2_LO), r);
    let mut p = simd.splat_f32s(P[0]);
    for c in &P[1..] {
        p = simd.mul_add_f32s(p, r, simd.splat_f32s(*c));
    }
    let y = simd.add_f32s(simd.mul_add_f32s(p, simd.mul_f32s(r, r), r), simd.splat_f32s(1.0));
    // The integer `n` is the low bits of `t`; `(n + BIAS) << 23` is `2^(n + 64)`.
    let n_int = simd.sub_u32s(pulp::cast(t), simd.splat_u32s(ROUNDER.to_bits()));
    let bits = simd.mul_u32s(simd.add_u32s(n_int, simd.splat_u32s(BIAS)), simd.splat_u32s(1 << 23));
    let scale: S::f32s = pulp::cast(bits);
    simd.mul_f32s(simd.mul_f32s(y, scale), simd.splat_f32s(TWO_M64))
}

/// One lane of [`exp_lanes`], for row tails: the same operations, so the
/// same result.
#[inline(always)]
fn exp_one(x: f32) -> f32 {
    let x = if x > LOWEST { x } else { LOWEST };
    let t = x.mul_add(core::f32::consts::LOG2_E, ROUNDER);
    let n = t - ROUNDER;
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = P[0];
    for c in &P[1..] {
        p = p.mul_add(r, *c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    let n_int = t.to_bits().wrapping_sub(ROUNDER.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(BIAS) << 23);
    y * scale * TWO_M64
}

struct Dot<'a> {
    a: &'a [f32],
    b: &'a [f32],
}

impl WithSimd for Dot<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        dot_rows::<S, 1>(simd, self.a, [self.b])[0]
    }
}

/// Dot products of `q` with `R` rows of its length: per row two vector
/// accumulators (even and odd vectors), added, reduced across lanes, then
/// the scalar tail fused in order. The operations on one row do not depend
/// on `R`.
#[inline(always)]
fn dot_rows<S: Simd, const R: usize>(simd: S, q: &[f32], k: [&[f32]; R]) -> [f32; R] {
    let (qv, qt) = S::as_simd_f32s(q);
    let kv = k.map(|row| S::as_simd_f32s(row));
    let n = qv.len();
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; 2]; R];
    for i in 0..n / 2 {
        let (x0, x1) = (qv[2 * i], qv[2 * i + 1]);
        for r in 0..R {
            let row = &kv[r].0[..n];
            acc[r][0] = simd.mul_add_f32s(x0, row[2 * i], acc[r][0]);
            acc[r][1] = simd.mul_add_f32s(x1, row[2 * i + 1], acc[r][1]);
        }
    }
    if n % 2 == 1 {
        for r in 0..R {
            acc[r][0] = simd.mul_add_f32s(qv[n - 1], kv[r].0[n - 1], acc[r][0]);
        }
    }
    let mut sums = [0.0f32; R];
    for r in 0..R {
        let mut sum = simd.reduce_sum_f32s(simd.add_f32s(acc[r][0], acc[r][1]));
        for (x, y) in qt.iter().zip(kv[r].1) {
            sum = x.mul_add(*y, sum);
        }
        sums[r] = sum;
    }
    sums
}

struct Logits<'a> {
    logits: &'a mut [f32],
    stride: usize,
    queries: &'a [f32],
    keys: &'a [f32],
    d: usize,
    scale: f32,
}

impl WithSimd for Logits<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { logits, stride, queries, keys, d, scale } = self;
        // Four key rows per pass: each query vector load feeds 8 FMA chains.
        let mut blocks = keys.chunks_exact(ROWS * d);
        let mut r = 0;
        for block in &mut blocks {
            let k = rows4(block, d);
            for (q, query) in queries.chunks_exact(d).enumerate() {
                let dots = dot_rows::<S, ROWS>(simd, query, k);
                let row = &mut logits[q * stride + r..][..ROWS];
                for (l, x) in row.iter_mut().zip(dots) {
                    *l = x * scale;
                }
            }
            r += ROWS;
        }
        for key in blocks.remainder().chunks_exact(d) {
            for (q, query) in queries.chunks_exact(d).enumerate() {
                logits[q * stride + r] = dot_rows::<S, 1>(simd, query, [key])[0] * scale;
            }
            r += 1;
        }
    }
}

/// Value rows added per pass over an output row in [`Accumulate`].
const VROWS: usize = 8;

struct Accumulate<'a> {
    out: &'a mut [f32],
    weights: &'a [f32],
    stride: usize,
    values: &'a [f32],
    d: usize,
}

/// `out[i] = fma(w[3], v[3][i], fma(w[2], v[2][i], fma(w[1], v[1][i],
/// fma(w[0], v[0][i], out[i]))))` for the first `R` rows.
#[inline(always)]
fn axpy_rows<S: Simd, const R: usize>(simd: S, out: &mut [f32], w: [f32; R], v: [&[f32]; R]) {
    let (ov, ot) = S::as_mut_simd_f32s(out);
    let n = ov.len();
    let vv = v.map(|row| S::as_simd_f32s(row));
    let ws = w.map(|x| simd.splat_f32s(x));
    for (i, o) in ov.iter_mut().enumerate() {
        let mut acc = *o;
        for r in 0..R {
            acc = simd.mul_add_f32s(ws[r], vv[r].0[..n][i], acc);
        }
        *o = acc;
    }
    for (i, o) in ot.iter_mut().enumerate() {
        let mut acc = *o;
        for r in 0..R {
            acc = w[r].mul_add(vv[r].1[i], acc);
        }
        *o = acc;
    }
}

impl WithSimd for Accumulate<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { out, weights, stride, values, d } = self;
        // Eight value rows per pass over an output row.
        let mut blocks = values.chunks_exact(VROWS * d);
        let mut r = 0;
        for block in &mut blocks {
            let v: [&[f32]; VROWS] = core::array::from_fn(|i| &block[i * d..][..d]);
            for (q, out_row) in out.chunks_exact_mut(d).enumerate() {
                let w = &weights[q * stride + r..][..VROWS];
                if w.iter().any(|&x| x != 0.0) {
                    let w: [f32; VROWS] = core::array::from_fn(|i| w[i]);
                    axpy_rows::<S, VROWS>(simd, out_row, w, v);
                }
            }
            r += VROWS;
        }
        for value in blocks.remainder().chunks_exact(d) {
            for (q, out_row) in out.chunks_exact_mut(d).enumerate() {
                let w = weights[q * stride + r];
                if w != 0.0 {
                    axpy_rows::<S, 1>(simd, out_row, [w], [value]);
                }
            }
            r += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The SIMD `exp` (lanes and tails) against f64's, on a dense grid
    /// over `[-110, 0]`: within 2 ulp where the result is normal, within
    /// one subnormal spacing below, exactly 0 where `exp` rounds to 0, and
    /// exactly 1 at 0.
    #[test]
    fn exp_is_within_two_ulp() {
        // Lengths 8k + 5: every value goes through the lanes in one row and
        // (for some) the tail in another.
        let grid: Vec<f32> = (0..=110_000).map(|i| -(i as f32) * 1e-3).collect();
        for len in [13usize, 1029] {
            for chunk in grid.chunks(len) {
                let mut row = chunk.to_vec();
                if super::exp_sum(&mut row, 0.0).is_none() {
                    return; // no AVX2 + FMA: nothing to test
                }
                for (&x, &got) in chunk.iter().zip(&row) {
                    let want = f64::from(x).exp();
                    let err = (f64::from(got) - want).abs();
                    if want >= f64::from(f32::MIN_POSITIVE) {
                        let ulp = f64::from(f32::EPSILON) * want;
                        assert!(err <= 2.0 * ulp, "exp({x}) = {got}, want {want}");
                    } else {
                        let spacing = f64::from(f32::from_bits(1));
                        assert!(err <= spacing, "exp({x}) = {got}, want {want}");
                    }
                }
            }
        }
        let mut row = [0.0f32, -200.0, f32::NEG_INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1e30];
        let sum = super::exp_sum(&mut row, 0.0).unwrap();
        assert_eq!(row, [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        assert_eq!(sum, 7.0);
    }
}
