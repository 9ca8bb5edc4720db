//! Half-precision (f16/bf16) rows widened to their accumulator type (f32) a
//! block of rows at a time, into stack buffers, so the arithmetic can run on
//! the accumulator-type kernels (SIMD included). One vectorized conversion
//! per block ([`Element::widen_slice`]) instead of one per element. Rows
//! wider than a block fall back to the per-element kernels in
//! [`super::scalar`].

use num_traits::Zero;

use super::ROWS;
use crate::element::Element;

/// Elements of stack scratch per operand when stored rows are widened to the
/// accumulator type before the arithmetic: 8 KiB of f32.
pub(super) const WIDEN: usize = 2048;

/// [`super::scaled_logits`] on rows not in the accumulator type: widens
/// blocks of queries and keys, then runs [`super::logits_acc`] on them.
/// `false` (nothing written) if a row is wider than `WIDEN / ROWS`.
pub(super) fn logits<T: Element>(
    logits: &mut [T::Acc],
    stride: usize,
    queries: &[T],
    keys: &[T],
    d: usize,
    scale: T::Acc,
) -> bool {
    if d > WIDEN / ROWS {
        return false;
    }
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
            super::logits_acc(&mut logits[at..], stride, q, k, d, scale);
        }
    }
    true
}

/// Adds the weighted value rows to `out` (see [`super::weighted_sum`]) for
/// rows not in the accumulator type: widens blocks of value rows, then runs
/// [`super::accumulate_acc`] on them. `false` (nothing written) if a row is
/// wider than `WIDEN / ROWS`.
pub(super) fn accumulate<T: Element>(
    out: &mut [T::Acc],
    weights: &[T::Acc],
    stride: usize,
    values: &[T],
    d: usize,
) -> bool {
    if d > WIDEN / ROWS {
        return false;
    }
    let mut v_buf = [T::Acc::zero(); WIDEN];
    let v_rows = WIDEN / d / ROWS * ROWS;
    for (i, block) in values.chunks(v_rows * d).enumerate() {
        let v = &mut v_buf[..block.len()];
        T::widen_slice(block, v);
        super::accumulate_acc(out, &weights[i * v_rows..], stride, v, d);
    }
    true
}

/// [`super::dot`] of two rows not in the accumulator type through the SIMD
/// kernels: widened on the stack first, up to the same width
/// [`logits`] widens (so both take the same path). `None` if the rows are
/// too wide or the accumulator is not f32 (or SIMD is unavailable).
#[cfg(feature = "simd")]
pub(super) fn dot_simd<T: Element>(a: &[T], b: &[T]) -> Option<T::Acc> {
    use crate::element::AsF32;
    if a.len() > WIDEN / ROWS || T::Acc::as_f32s(&[T::Acc::zero()]).is_none() {
        return None;
    }
    let zero = T::Acc::zero();
    let (mut a_buf, mut b_buf) = ([zero; WIDEN / ROWS], [zero; WIDEN / ROWS]);
    let (a_acc, b_acc) = (&mut a_buf[..a.len()], &mut b_buf[..b.len()]);
    T::widen_slice(a, a_acc);
    T::widen_slice(b, b_acc);
    super::dot_acc_simd(a_acc, b_acc)
}
