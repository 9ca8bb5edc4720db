//! Tests of the kernels: blocked against unblocked (bit for bit), the
//! dispatched kernels against the scalar ones (within rounding bounds).

use num_traits::One;

use super::widen::WIDEN;
use super::*;
use crate::element::AsF32;

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
    crate::arch::tests::scalar(f)
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
                    let magn: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x * *y).abs()).sum();
                    let (x, y) = (fast[qi * stride + r], slow[qi * stride + r]);
                    let bound = fma_bound::<f32>(d + 1, magn * 0.25);
                    assert!(f64::from((x - y).abs()) <= bound, "logit {qi},{r} {ctx}: {x} vs {y}");
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
                    assert!(f64::from((x - y).abs()) <= bound, "out {qi},{j} {ctx}: {x} vs {y}");
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
