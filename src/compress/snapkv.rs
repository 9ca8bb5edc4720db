//! SnapKV: choose which prompt tokens a KV head keeps after a prefill
//! (Li et al., *SnapKV: LLM Knows What You are Looking for Before
//! Generation*, NeurIPS 2024, arXiv:2404.14469, §4 and Algorithm 1).
//!
//! ```text
//! prompt of n tokens, budget B, observation window w = min(window, B, n)
//! if n <= B: keep everything
//! s[j]  = Σ over the last w prompt queries (and the query heads of the group)
//!         of their softmax weight on token j,   for j in 0..n-w
//! p[j]  = max(s[j-r ..= j+r]) clipped to 0..n-w, r = kernel / 2   (max-pool)
//! keep    the B - w tokens with the largest p (ties: TieRule), plus the w
//!         tokens of the observation window
//! ```
//!
//! Pooling keeps the neighbours of a strongly attended token with it, so a
//! kept token comes with its context (the paper's "clustering", §4.2).

use core::cmp::Ordering;

use super::{Scratch, check_scores, top_k};
use crate::error::{Error, Result};
use crate::policy::TieRule;

/// SnapKV's selection rule: observation window, pooling kernel and tie rule.
///
/// Defaults (the paper's): a 32-query observation window and a max-pool of
/// kernel 7. The window's queries' scores come from the caller (or the
/// crate's prefill); this type only selects.
///
/// # Example
/// ```
/// use h2o_kv::compress::{Scratch, SnapKv};
///
/// // 10 prompt tokens, keep 5: the 2-token observation window + 3 by score.
/// let snap = SnapKv::new(2, 3)?;
/// let scores = [0.1, 0.0, 0.9, 0.0, 0.0, 0.2, 0.0, 0.05, 0.0, 0.0];
/// let mut keep = [false; 10];
/// let kept = snap.select(&scores, 5, &mut Scratch::new(), &mut keep)?;
/// assert_eq!(kept, 5);
/// // Token 2 drew the most attention; pooling keeps its neighbours with it.
/// let kept: Vec<usize> = (0..10).filter(|&j| keep[j]).collect();
/// assert_eq!(kept, [1, 2, 3, 8, 9]);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapKv {
    window: usize,
    kernel: usize,
    tie: TieRule,
}

impl Default for SnapKv {
    fn default() -> Self {
        Self { window: Self::DEFAULT_WINDOW, kernel: Self::DEFAULT_KERNEL, tie: TieRule::default() }
    }
}

impl SnapKv {
    /// The paper's observation window: the last 32 prompt queries.
    pub const DEFAULT_WINDOW: usize = 32;
    /// The paper's pooling kernel: 7 positions (3 on each side).
    pub const DEFAULT_KERNEL: usize = 7;

    /// An observation window of `window` queries and a max-pool of `kernel`
    /// positions (odd, so it is centred; 1 turns pooling off).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `window == 0` or `kernel` is even.
    pub fn new(window: usize, kernel: usize) -> Result<Self> {
        if window == 0 {
            return Err(Error::InvalidParameter {
                what: "snapkv window",
                value: 0.0,
                expected: "at least 1 query",
            });
        }
        if kernel % 2 == 0 {
            return Err(Error::InvalidParameter {
                what: "snapkv pooling kernel",
                value: kernel as f64,
                expected: "an odd number of positions (1 turns pooling off)",
            });
        }
        Ok(Self { window, kernel, tie: TieRule::default() })
    }

    /// The same rule with another tie rule for equal pooled scores
    /// (`KeepOlder` by default; the authors' `torch.topk` has no rule).
    #[must_use]
    pub fn with_tie_rule(self, tie: TieRule) -> Self {
        Self { tie, ..self }
    }

    /// Observation window in queries (and tokens).
    #[must_use]
    pub fn window(&self) -> usize {
        self.window
    }

    /// Pooling kernel in positions.
    #[must_use]
    pub fn kernel(&self) -> usize {
        self.kernel
    }

    /// The tie rule in force.
    #[must_use]
    pub fn tie_rule(&self) -> TieRule {
        self.tie
    }

    /// The observation window actually used for a prompt of `n` tokens and a
    /// budget of `budget`: `min(window, budget, n)`. A window larger than
    /// the budget leaves no room for selected tokens; it is clipped to the
    /// budget (the selection is then the newest `budget` tokens).
    #[must_use]
    pub fn observation_window(&self, n: usize, budget: usize) -> usize {
        self.window.min(budget).min(n)
    }

    /// Max-pools `scores` into `pooled`: `pooled[j]` is the largest score
    /// within `kernel / 2` positions of `j`, clipped at both ends (as a
    /// padded `max_pool1d` with stride 1). O(n · kernel); allocates nothing.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] unless `pooled.len() == scores.len()`.
    pub fn pool(&self, scores: &[f64], pooled: &mut [f64]) -> Result<()> {
        if pooled.len() != scores.len() {
            return Err(Error::LengthMismatch {
                what: "pooled",
                expected: scores.len(),
                got: pooled.len(),
            });
        }
        let r = self.kernel / 2;
        let n = scores.len();
        for (j, p) in pooled.iter_mut().enumerate() {
            let window = &scores[j.saturating_sub(r)..(j + r + 1).min(n)];
            *p = window.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        }
        Ok(())
    }

    /// Marks in `keep` (`[n]`, position order) the tokens a KV head keeps
    /// under `budget`, and returns how many: `min(n, budget)`.
    ///
    /// `window_scores` is `[n]`: for each prompt token, the summed softmax
    /// weight the last `w` prompt queries gave it (over the query heads that
    /// share this KV head, see [`observation_window`](Self::observation_window)
    /// for `w`). The entries of the observation window itself are ignored:
    /// those tokens are always kept.
    ///
    /// Allocates only if `scratch` is smaller than `n`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] unless `keep.len() == window_scores.len()`;
    /// [`Error::ZeroBudget`]; [`Error::NonFinite`] for a NaN or infinite
    /// score; [`Error::AllocationFailed`] if the scratch cannot grow.
    /// `keep` is unchanged on error.
    pub fn select(
        &self,
        window_scores: &[f64],
        budget: usize,
        scratch: &mut Scratch,
        keep: &mut [bool],
    ) -> Result<usize> {
        let n = window_scores.len();
        if keep.len() != n {
            return Err(Error::LengthMismatch { what: "keep", expected: n, got: keep.len() });
        }
        if budget == 0 {
            return Err(Error::ZeroBudget);
        }
        let w = self.observation_window(n, budget);
        let prefix = &window_scores[..n - w];
        check_scores("window scores", prefix)?;
        if n <= budget {
            keep.fill(true);
            return Ok(n);
        }
        let (pooled, order) = scratch.buffers(prefix.len())?;
        self.pool(prefix, pooled)?;
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        let k = budget - w;
        top_k(order, k, |a, b| rank(self.tie, pooled, a, b));
        keep.fill(false);
        order[..k].iter().for_each(|&j| keep[j] = true);
        keep[n - w..].fill(true);
        Ok(budget)
    }
}

/// Higher pooled score first; equal scores by the tie rule on position.
fn rank(tie: TieRule, pooled: &[f64], a: usize, b: usize) -> Ordering {
    pooled[b].total_cmp(&pooled[a]).then_with(|| match tie {
        TieRule::KeepOlder => a.cmp(&b),
        TieRule::KeepNewer => b.cmp(&a),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCORES: [f64; 10] = [0.1, 0.0, 0.9, 0.0, 0.0, 0.2, 0.0, 0.05, 7.0, 7.0];

    fn kept(snap: SnapKv, scores: &[f64], budget: usize) -> Vec<usize> {
        let mut keep = vec![false; scores.len()];
        let n = snap.select(scores, budget, &mut Scratch::new(), &mut keep).unwrap();
        let kept: Vec<usize> = (0..scores.len()).filter(|&j| keep[j]).collect();
        assert_eq!(kept.len(), n);
        kept
    }

    #[test]
    fn pooling_by_hand() {
        let snap = SnapKv::new(2, 3).unwrap();
        let mut pooled = [0.0; 8];
        snap.pool(&SCORES[..8], &mut pooled).unwrap();
        assert_eq!(pooled, [0.1, 0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.05]);
        let mut same = [0.0; 8];
        SnapKv::new(2, 1).unwrap().pool(&SCORES[..8], &mut same).unwrap();
        assert_eq!(same, SCORES[..8]);
        // Kernel 7 reaches 3 positions each way.
        let mut wide = [0.0; 8];
        SnapKv::default().pool(&SCORES[..8], &mut wide).unwrap();
        assert_eq!(wide, [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2, 0.2]);
    }

    #[test]
    fn selection_by_hand() {
        // Pooled prefix [0.1, 0.9, 0.9, 0.9, 0.2, 0.2, 0.2, 0.05]; the
        // window's own scores (7.0) are ignored.
        let snap = SnapKv::new(2, 3).unwrap();
        assert_eq!(kept(snap, &SCORES, 5), [1, 2, 3, 8, 9]);
        // Without pooling: the raw top 3 are 2 (0.9), 5 (0.2), 0 (0.1).
        assert_eq!(kept(SnapKv::new(2, 1).unwrap(), &SCORES, 5), [0, 2, 5, 8, 9]);
        // One more slot: a tie of 0.2 at 4, 5, 6, broken by the tie rule.
        assert_eq!(kept(snap, &SCORES, 6), [1, 2, 3, 4, 8, 9]);
        let newer = snap.with_tie_rule(TieRule::KeepNewer);
        assert_eq!(kept(newer, &SCORES, 6), [1, 2, 3, 6, 8, 9]);
    }

    #[test]
    fn small_prompts_and_large_windows() {
        let snap = SnapKv::new(2, 3).unwrap();
        // Under budget: everything.
        assert_eq!(kept(snap, &SCORES, 10), (0..10).collect::<Vec<_>>());
        assert_eq!(kept(snap, &SCORES, 99), (0..10).collect::<Vec<_>>());
        // A window wider than the budget is clipped to it: the newest tokens.
        let wide = SnapKv::new(32, 7).unwrap();
        assert_eq!(wide.observation_window(10, 3), 3);
        assert_eq!(kept(wide, &SCORES, 3), [7, 8, 9]);
        // Budget = window + 0 selected.
        assert_eq!(kept(snap, &SCORES, 2), [8, 9]);
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        assert!(matches!(SnapKv::new(0, 7), Err(Error::InvalidParameter { .. })));
        assert!(matches!(SnapKv::new(8, 4), Err(Error::InvalidParameter { .. })));
        let snap = SnapKv::default();
        let mut keep = [true; 3];
        let mut s = Scratch::new();
        assert_eq!(snap.select(&[0.0; 3], 0, &mut s, &mut keep), Err(Error::ZeroBudget));
        assert!(matches!(
            snap.select(&[0.0; 4], 2, &mut s, &mut keep),
            Err(Error::LengthMismatch { what: "keep", .. })
        ));
        let snap = SnapKv::new(1, 1).unwrap();
        assert!(matches!(
            snap.select(&[0.0, f64::NAN, 0.0], 2, &mut s, &mut keep),
            Err(Error::NonFinite { index: 1, .. })
        ));
        assert_eq!(keep, [true; 3]);
        let mut short = [0.0; 2];
        assert!(snap.pool(&[0.0; 3], &mut short).is_err());
    }
}
