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

/// Logits of `queries` against the `BLOCK` key rows of `kblk`, into `s`
/// (one row of `BLOCK` per query) and the logits matrix at column `r0`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_logits<S: Simd>(
    simd: S,
    s: &mut [[f32; BLOCK]],
    logits: &mut [f32],
    stride: usize,
    r0: usize,
    queries: &[f32],
    kblk: &[f32],
    d: usize,
    scale: f32,
) {
    for ((q, query), row) in queries.chunks_exact(d).enumerate().zip(s.iter_mut()) {
        for j in 0..BLOCK / 4 {
            let (k4, _) = kblk[4 * j * d..].split_at(4 * d);
            let (a, rest) = k4.split_at(d);
            let (b, rest) = rest.split_at(d);
            let (c, e) = rest.split_at(d);
            let dots = dot_rows::<S, 4>(simd, query, [a, b, c, e]);
            for i in 0..4 {
                row[4 * j + i] = dots[i] * scale;
            }
        }
        logits[q * stride + r0..][..BLOCK].copy_from_slice(row);
    }
}

/// The largest of `BLOCK` logits, in vector maxima.
#[inline(always)]
fn block_max<S: Simd>(simd: S, row: &[f32; BLOCK]) -> f32 {
    let (head, tail) = S::as_simd_f32s(row);
    let mut m = tail.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if let Some((first, rest)) = head.split_first() {
        let v = rest.iter().fold(*first, |a, b| simd.max_f32s(a, *b));
        let h = simd.reduce_max_f32s(v);
        m = if h > m { h } else { m };
    }
    m
}

impl WithSimd for Online<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { acc, max, sum, logits, stride, queries, keys, values, d, scale } = self;
        let g = queries.len() / d;
        debug_assert!(g <= super::QCHUNK);
        let full = keys.len() / (BLOCK * d);
        // Software pipelined: the logits of block `b + 1` are computed before
        // the softmax update and the weighted sum of block `b`, so the
        // latency chain of the update (maximum, exponentials) overlaps with
        // independent multiply-adds.
        // Double-buffered block logits, swapped by index (not by copying).
        let mut bufs = [[[0.0f32; BLOCK]; super::QCHUNK]; 2];
        if full > 0 {
            let first = &mut bufs[0][..g];
            block_logits(simd, first, logits, stride, 0, queries, &keys[..BLOCK * d], d, scale);
        }
        for b in 0..full {
            let r0 = b * BLOCK;
            let (lo, hi) = bufs.split_at_mut(1);
            let (cur, next) =
                if b % 2 == 0 { (&mut lo[0], &mut hi[0]) } else { (&mut hi[0], &mut lo[0]) };
            if b + 1 < full {
                let kblk = &keys[(r0 + BLOCK) * d..][..BLOCK * d];
                block_logits(
                    simd,
                    &mut next[..g],
                    logits,
                    stride,
                    r0 + BLOCK,
                    queries,
                    kblk,
                    d,
                    scale,
                );
            }
            // Softmax update of every query first (independent chains), then
            // the weighted value rows.
            for q in 0..g {
                let out = &mut acc[q * d..][..d];
                let bm = block_max(simd, &cur[q]);
                raise(simd, &mut max[q], &mut sum[q], out, bm);
                if max[q] == f32::NEG_INFINITY {
                    cur[q] = [0.0; BLOCK];
                    continue;
                }
                sum[q] += exp_block(simd, &mut cur[q], max[q]);
            }
            let vblk = &values[r0 * d..][..BLOCK * d];
            for q in 0..g {
                let out = &mut acc[q * d..][..d];
                for h in 0..BLOCK / VROWS {
                    let w = &cur[q][h * VROWS..][..VROWS];
                    if w.iter().any(|&x| x != 0.0) {
                        let w = [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]];
                        let vb = &vblk[h * VROWS * d..][..VROWS * d];
                        let (v0, vb) = vb.split_at(d);
                        let (v1, vb) = vb.split_at(d);
                        let (v2, vb) = vb.split_at(d);
                        let (v3, vb) = vb.split_at(d);
                        let (v4, vb) = vb.split_at(d);
                        let (v5, vb) = vb.split_at(d);
                        let (v6, v7) = vb.split_at(d);
                        axpy_rows::<S, VROWS>(simd, out, w, [v0, v1, v2, v3, v4, v5, v6, v7]);
                    }
                }
            }
        }
        // The last partial block, one row at a time.
        let r0 = full * BLOCK;
        let (kr, vr) = (&keys[r0 * d..], &values[r0 * d..]);
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
            let bm = s.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
            let out = &mut acc[q * d..][..d];
            raise(simd, &mut max[q], &mut sum[q], out, bm);
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
