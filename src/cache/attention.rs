//! The attention rule every path shares (decode, layer and prefill): mask the
//! slots a query must not see, reject a live logit that overflowed, softmax.
//! One function, so the decode step and the prefill cannot drift apart.

use crate::element::Accumulator;
use crate::error::{Error, Result};
use crate::kernels;

/// Turns `g` rows of logits (`stride` apart, the first `rows` entries of
/// each) into softmax weights in `weights` (same layout).
///
/// Entries where `live(s)` is false get weight exactly 0 (masked with
/// `-inf`: free slots holding stale rows, a token a step has already
/// evicted); `masked` says whether any such entry exists below `rows`, so a
/// steady-state step skips the mask pass. A non-finite logit on a live entry
/// is [`Error::AttentionOverflow`]; on a masked one it is ignored.
pub(super) fn softmax_rows<A: Accumulator>(
    logits: &[A],
    weights: &mut [A],
    stride: usize,
    g: usize,
    rows: usize,
    masked: bool,
    live: impl Fn(usize) -> bool,
) -> Result<()> {
    for q in 0..g {
        let logits = &logits[q * stride..][..rows];
        // One branch-free pass; only if it fails, find out whether the
        // overflow is in a live slot.
        if !logits.iter().fold(true, |ok, x| ok & x.is_finite())
            && (0..rows).any(|s| live(s) && !logits[s].is_finite())
        {
            return Err(Error::AttentionOverflow { what: "logit" });
        }
        let weights = &mut weights[q * stride..][..rows];
        weights.copy_from_slice(logits);
        if masked {
            for (s, w) in weights.iter_mut().enumerate() {
                if !live(s) {
                    *w = A::neg_infinity();
                }
            }
        }
        kernels::softmax_in_place(weights);
    }
    Ok(())
}
