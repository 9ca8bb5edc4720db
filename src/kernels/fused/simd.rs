//! The SIMD form of the one-pass attention (f32 rows), through `pulp`.
//!
//! It uses the same building blocks as the two-pass SIMD kernels: logits as
//! [`dot_rows`] four key rows at a time (so each logit equals the two-pass
//! one bit for bit), the exponentials as [`exp_lanes`] (within 2 ulp of
//! `exp`), and the weighted value rows added eight per pass over the output
//! row with fused multiply-adds ([`axpy_rows`]).
//!
//! With the `avx512` feature, on a CPU with AVX-512F/BW/VL/DQ and a
//! `head_dim` that is a multiple of 16, the pass runs with 16-lane vectors
//! (pulp's x86-v4 level); otherwise with the 8-lane AVX2 + FMA level.

use pulp::{Simd, WithSimd};

use super::BLOCK;
use crate::arch::arch;
use crate::kernels::simd::{axpy_rows, dot_rows, exp_lanes, exp_one};

/// Whether the SIMD pass can run here (AVX2 + FMA, and not switched off by a
/// test).
pub(super) fn available() -> bool {
    arch().is_some()
}

/// The AVX-512 level, detected once.
#[cfg(all(feature = "avx512", target_arch = "x86_64"))]
fn v4() -> Option<pulp::x86::V4> {
    static V4: std::sync::OnceLock<Option<pulp::x86::V4>> = std::sync::OnceLock::new();
    *V4.get_or_init(pulp::x86::V4::try_new)
}

/// Whether the one-pass kernel runs 16-lane AVX-512 code for rows of `d`.
pub(crate) fn uses_avx512(d: usize) -> bool {
    #[cfg(all(feature = "avx512", target_arch = "x86_64"))]
    return available() && d % 16 == 0 && v4().is_some();
    #[cfg(not(all(feature = "avx512", target_arch = "x86_64")))]
    {
        let _ = d;
        false
    }
}

/// See [`super::online_attention`]; `max` and `sum` are the `g` queries'
/// statistics. Shapes are checked by the caller; [`available`] is true.
#[allow(clippy::too_many_arguments)]
pub(super) fn online(
    acc: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
    logits: &mut [f32],
    stride: usize,
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    d: usize,
    scale: f32,
) {
    let Some(arch) = arch() else { return };
    let op = Online { acc, max, sum, logits, stride, queries, keys, values, d, scale };
    #[cfg(all(feature = "avx512", target_arch = "x86_64"))]
    if uses_avx512(d) {
        if let Some(v4) = v4() {
            Simd::vectorize(v4, op);
            return;
        }
    }
    arch.dispatch(op);
}

struct Online<'a> {
    acc: &'a mut [f32],
    max: &'a mut [f32],
    sum: &'a mut [f32],
    logits: &'a mut [f32],
    stride: usize,
    queries: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    d: usize,
    scale: f32,
}

/// Raises `max` to `block_max` if larger, rescaling `sum` and `out`.
#[inline(always)]
fn raise<S: Simd>(simd: S, max: &mut f32, sum: &mut f32, out: &mut [f32], block_max: f32) {
    if block_max > *max {
        if *sum != 0.0 {
            let c = exp_one(*max - block_max);
            *sum *= c;
            let (ov, ot) = S::as_mut_simd_f32s(out);
            let cv = simd.splat_f32s(c);
            for o in ov {
                *o = simd.mul_f32s(*o, cv);
            }
            for o in ot {
                *o *= c;
            }
        }
        *max = block_max;
    }
}

/// `row[i] = exp(row[i] − max)`, returning their sum.
#[inline(always)]
fn exp_block<S: Simd>(simd: S, row: &mut [f32], max: f32) -> f32 {
    let (head, tail) = S::as_mut_simd_f32s(row);
    let m = simd.splat_f32s(max);
    let mut acc = simd.splat_f32s(0.0);
    for x in head.iter_mut() {
        *x = exp_lanes(simd, simd.sub_f32s(*x, m));
        acc = simd.add_f32s(acc, *x);
    }
    let mut s = simd.reduce_sum_f32s(acc);
    for x in tail.iter_mut() {
        *x = exp_one(*x - max);
        s += *x;
    }
    s
}

/// Value rows added per pass over an output row.
const VROWS: usize = 8;

impl WithSimd for Online<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { acc, max, sum, logits, stride, queries, keys, values, d, scale } = self;
        let mut kb = keys.chunks_exact(BLOCK * d);
        let mut vb = values.chunks_exact(BLOCK * d);
        let mut r0 = 0;
        for (kblk, vblk) in (&mut kb).zip(&mut vb) {
            let k: [&[f32]; BLOCK] = core::array::from_fn(|i| &kblk[i * d..][..d]);
            let v: [&[f32]; BLOCK] = core::array::from_fn(|i| &vblk[i * d..][..d]);
            for (q, query) in queries.chunks_exact(d).enumerate() {
                let mut s = [0.0f32; BLOCK];
                for j in 0..BLOCK / 4 {
                    let dots = dot_rows::<S, 4>(
                        simd,
                        query,
                        [k[4 * j], k[4 * j + 1], k[4 * j + 2], k[4 * j + 3]],
                    );
                    for i in 0..4 {
                        s[4 * j + i] = dots[i] * scale;
                    }
                }
                logits[q * stride + r0..][..BLOCK].copy_from_slice(&s);
                let block_max = s.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                let out = &mut acc[q * d..][..d];
                raise(simd, &mut max[q], &mut sum[q], out, block_max);
                if max[q] == f32::NEG_INFINITY {
                    continue;
                }
                sum[q] += exp_block(simd, &mut s, max[q]);
                for h in 0..BLOCK / VROWS {
                    let w: [f32; VROWS] = core::array::from_fn(|i| s[h * VROWS + i]);
                    if w.iter().any(|&x| x != 0.0) {
                        let rows: [&[f32]; VROWS] = core::array::from_fn(|i| v[h * VROWS + i]);
                        axpy_rows::<S, VROWS>(simd, out, w, rows);
                    }
                }
            }
            r0 += BLOCK;
        }
        // The last partial block, one row at a time.
        let (kr, vr) = (kb.remainder(), vb.remainder());
        let rows = kr.len() / d;
        if rows == 0 {
            return;
        }
        for (q, query) in queries.chunks_exact(d).enumerate() {
            let mut s = [0.0f32; BLOCK];
            for (x, key) in s.iter_mut().zip(kr.chunks_exact(d)) {
                *x = dot_rows::<S, 1>(simd, query, [key])[0] * scale;
            }
            let s = &mut s[..rows];
            logits[q * stride + r0..][..rows].copy_from_slice(s);
            let block_max = s.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
            let out = &mut acc[q * d..][..d];
            raise(simd, &mut max[q], &mut sum[q], out, block_max);
            if max[q] == f32::NEG_INFINITY {
                continue;
            }
            for x in s.iter_mut() {
                *x = exp_one(*x - max[q]);
                sum[q] += *x;
            }
            for (w, value) in s.iter().zip(vr.chunks_exact(d)) {
                if *w != 0.0 {
                    axpy_rows::<S, 1>(simd, out, [*w], [value]);
                }
            }
        }
    }
}
