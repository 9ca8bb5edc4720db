//! Ada-KV: share a layer's budget across its KV heads by how concentrated
//! each head's attention is (Feng et al., *Ada-KV: Optimizing KV Cache
//! Eviction by Adaptive Budget Allocation for Efficient LLM Inference*, 2024,
//! arXiv:2407.11550, §4, Algorithm 1, with the safeguard of its later
//! versions).
//!
//! ```text
//! scores s[h][j] ≥ 0 for n_heads heads and n tokens (SnapKV's pooled window
//! scores, or H2O's accumulated scores), a total of B tokens to share
//! safe     = floor(alpha · B / n_heads)       each head's guaranteed share
//! each head first takes its own `safe` best tokens
//! the other B − n_heads · safe are the best of all remaining (head, token)
//!   pairs, compared across heads
//! budget[h] = the number of tokens head h ends up with
//! ```
//!
//! A head whose attention is concentrated on a few tokens has a few large
//! scores and many near zero, so beyond its guaranteed share it wins few of
//! the global picks; a head that spreads its attention wins more. Selecting
//! each head's `budget[h]` best tokens by the same scores and tie rule gives
//! exactly the global selection.
//!
//! [`LayerCache::adakv_from`](crate::LayerCache::adakv_from) applies the split
//! inside a cache: one policy per KV head at its budget, on the scores a full
//! prefill gave the prompt.

use core::cmp::Ordering;

use super::{Scratch, check_scores, top_k};
use crate::error::{Error, Result};
use crate::policy::TieRule;

/// Ada-KV's head-adaptive budget split.
///
/// # Example
/// ```
/// use h2o_kv::compress::{AdaKv, Scratch};
///
/// // Head 0 attends almost only to token 0; head 1 spreads its attention.
/// let scores = [
///     0.90, 0.05, 0.03, 0.02, // head 0
///     0.30, 0.25, 0.25, 0.20, // head 1
/// ];
/// let mut budgets = [0; 2];
/// // 4 tokens to share (2 per head if uniform), no safeguard.
/// AdaKv::new(0.0)?.split(&scores, 2, 4, &mut Scratch::new(), &mut budgets)?;
/// assert_eq!(budgets, [1, 3]);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaKv {
    safeguard: f64,
    tie: TieRule,
}

impl Default for AdaKv {
    fn default() -> Self {
        Self { safeguard: Self::DEFAULT_SAFEGUARD, tie: TieRule::default() }
    }
}

impl AdaKv {
    /// The safeguard fraction of the later Ada-KV versions (and kvpress).
    pub const DEFAULT_SAFEGUARD: f64 = 0.2;

    /// A split in which every head keeps at least `safeguard` of an equal
    /// share (`0` is the original Algorithm 1, `1` is an equal split).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `0 ≤ safeguard ≤ 1`.
    pub fn new(safeguard: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&safeguard) {
            return Err(Error::InvalidParameter {
                what: "ada-kv safeguard",
                value: safeguard,
                expected: "within [0, 1]",
            });
        }
        Ok(Self { safeguard, tie: TieRule::default() })
    }

    /// The same split with another tie rule for equal scores within a head
    /// (across heads, equal scores go to the lower head).
    #[must_use]
    pub fn with_tie_rule(self, tie: TieRule) -> Self {
        Self { tie, ..self }
    }

    /// The safeguard fraction.
    #[must_use]
    pub fn safeguard(&self) -> f64 {
        self.safeguard
    }

    /// The tie rule in force.
    #[must_use]
    pub fn tie_rule(&self) -> TieRule {
        self.tie
    }

    /// Each head's guaranteed share of `total` tokens over `n_heads` heads of
    /// `n` tokens: `min(n, floor(safeguard · total / n_heads))`.
    #[must_use]
    pub fn guaranteed(&self, total: usize, n_heads: usize, n: usize) -> usize {
        if n_heads == 0 {
            return 0;
        }
        let share = (self.safeguard * (total as f64 / n_heads as f64)).floor();
        // `share` is finite and at most total (≤ usize::MAX as f64).
        (share as usize).min(n)
    }

    /// Writes into `budgets` (`[n_heads]`) how many of `total` tokens each
    /// head keeps, given `scores` `[n_heads × n]` (head-major). The budgets
    /// sum to `min(total, n_heads · n)`: a head never gets more tokens than
    /// it has.
    ///
    /// Allocates only if `scratch` holds fewer than `n_heads · n` entries.
    ///
    /// # Errors
    /// [`Error::InvalidHeadCounts`] if `n_heads == 0`;
    /// [`Error::RaggedRows`] unless `scores.len()` is a multiple of
    /// `n_heads`; [`Error::LengthMismatch`] unless `budgets.len() ==
    /// n_heads`; [`Error::NonFinite`] for a NaN or infinite score;
    /// [`Error::AllocationFailed`] if the scratch cannot grow. `budgets` is
    /// unchanged on error.
    pub fn split(
        &self,
        scores: &[f64],
        n_heads: usize,
        total: usize,
        scratch: &mut Scratch,
        budgets: &mut [usize],
    ) -> Result<()> {
        if n_heads == 0 {
            return Err(Error::InvalidHeadCounts { n_heads, n_kv_heads: n_heads });
        }
        if scores.len() % n_heads != 0 {
            return Err(Error::RaggedRows { what: "scores", len: scores.len(), row_len: n_heads });
        }
        if budgets.len() != n_heads {
            return Err(Error::LengthMismatch {
                what: "budgets",
                expected: n_heads,
                got: budgets.len(),
            });
        }
        check_scores("scores", scores)?;
        let n = scores.len() / n_heads;
        if total >= scores.len() {
            budgets.fill(n);
            return Ok(());
        }
        let safe = self.guaranteed(total, n_heads, n);
        let (rank_scores, order) = scratch.buffers(scores.len())?;
        rank_scores.copy_from_slice(scores);
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        let tie = self.tie;
        // Each head's guaranteed tokens rank above everything else.
        for h in 0..n_heads {
            let own = &mut order[h * n..][..n];
            top_k(own, safe, |a, b| rank(tie, n, rank_scores, a, b));
            for &i in &own[..safe] {
                rank_scores[i] = f64::INFINITY;
            }
        }
        top_k(order, total, |a, b| rank(tie, n, rank_scores, a, b));
        budgets.fill(0);
        for &i in &order[..total] {
            budgets[i / n] += 1;
        }
        Ok(())
    }
}

/// Higher score first; then the lower head; within a head, the tie rule on
/// position. Entries are flat indices `head · n + position`.
fn rank(tie: TieRule, n: usize, scores: &[f64], a: usize, b: usize) -> Ordering {
    scores[b].total_cmp(&scores[a]).then_with(|| (a / n).cmp(&(b / n))).then_with(|| match tie {
        TieRule::KeepOlder => a.cmp(&b),
        TieRule::KeepNewer => b.cmp(&a),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCORES: [f64; 8] = [0.90, 0.05, 0.03, 0.02, 0.30, 0.25, 0.25, 0.20];

    fn split(ada: AdaKv, scores: &[f64], heads: usize, total: usize) -> Vec<usize> {
        let mut b = vec![0; heads];
        ada.split(scores, heads, total, &mut Scratch::new(), &mut b).unwrap();
        b
    }

    #[test]
    fn split_by_hand() {
        // No safeguard: the global top 4 are 0.9 (h0), 0.3, 0.25, 0.25 (h1).
        assert_eq!(split(AdaKv::new(0.0).unwrap(), &SCORES, 2, 4), [1, 3]);
        // Safeguard 0.5: one guaranteed each (0.9 and 0.3), the 2 others
        // globally: 0.25, 0.25 from head 1.
        assert_eq!(split(AdaKv::new(0.5).unwrap(), &SCORES, 2, 4), [1, 3]);
        // Safeguard 1: an equal split.
        assert_eq!(split(AdaKv::new(1.0).unwrap(), &SCORES, 2, 4), [2, 2]);
        // Total 6, default safeguard 0.2: floor(0.2·3) = 0 guaranteed; the
        // top 6: 0.9, 0.3, 0.25, 0.25, 0.2 (h1 has 4), then 0.05 (h0).
        assert_eq!(split(AdaKv::default(), &SCORES, 2, 6), [2, 4]);
        // Everything fits: each head keeps all its tokens.
        assert_eq!(split(AdaKv::default(), &SCORES, 2, 8), [4, 4]);
        assert_eq!(split(AdaKv::default(), &SCORES, 2, 50), [4, 4]);
        assert_eq!(split(AdaKv::default(), &SCORES, 2, 0), [0, 0]);
    }

    #[test]
    fn equal_scores_across_heads_go_to_the_lower_head() {
        let flat = [0.5; 6];
        assert_eq!(split(AdaKv::new(0.0).unwrap(), &flat, 3, 2), [2, 0, 0]);
        // floor(0.5 · 4/3) = 0 guaranteed: the global order alone.
        assert_eq!(split(AdaKv::new(0.5).unwrap(), &flat, 3, 4), [2, 2, 0]);
        // floor(1 · 4/3) = 1 guaranteed each, the fourth to head 0.
        assert_eq!(split(AdaKv::new(1.0).unwrap(), &flat, 3, 4), [2, 1, 1]);
    }

    #[test]
    fn per_head_top_k_reproduces_the_global_selection() {
        // A pseudo-random layer: per-head selection of budget[h] tokens by
        // the same order equals the global top-B with guarantees.
        let (heads, n, total) = (3, 9, 11);
        let scores: Vec<f64> = (0..heads * n).map(|i| ((i * 37 % 17) as f64) / 17.0).collect();
        let ada = AdaKv::new(0.3).unwrap();
        let b = split(ada, &scores, heads, total);
        assert_eq!(b.iter().sum::<usize>(), total);
        assert!(b.iter().all(|&x| x >= ada.guaranteed(total, heads, n)));
        // Brute force: try every head's threshold implied by the budgets.
        for h in 0..heads {
            let row = &scores[h * n..][..n];
            let mut sorted: Vec<f64> = row.to_vec();
            sorted.sort_by(|a, c| c.total_cmp(a));
            if b[h] > 0 && b[h] < n {
                // Every token this head drops scores no higher than what any
                // head keeps beyond its guarantee.
                let dropped_best = sorted[b[h]];
                for g in 0..heads {
                    let kept_beyond = b[g].saturating_sub(ada.guaranteed(total, heads, n));
                    if kept_beyond > 0 {
                        let mut other: Vec<f64> = scores[g * n..][..n].to_vec();
                        other.sort_by(|a, c| c.total_cmp(a));
                        assert!(dropped_best <= other[b[g] - 1], "head {h} vs {g}: {b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        assert!(AdaKv::new(-0.1).is_err());
        assert!(AdaKv::new(f64::NAN).is_err());
        let ada = AdaKv::default();
        let mut s = Scratch::new();
        let mut b = [7usize; 2];
        assert!(ada.split(&SCORES, 0, 4, &mut s, &mut b).is_err());
        assert!(ada.split(&SCORES[..7], 2, 4, &mut s, &mut b).is_err());
        assert!(ada.split(&SCORES, 4, 4, &mut s, &mut b).is_err());
        let mut bad = SCORES;
        bad[3] = f64::INFINITY;
        assert!(matches!(ada.split(&bad, 2, 4, &mut s, &mut b), Err(Error::NonFinite { .. })));
        assert_eq!(b, [7, 7]);
    }
}
