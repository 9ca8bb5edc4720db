//! `MeanScoreCache`: H2O ranked by mean attention instead of accumulated
//! attention.
//!
//! H2O's accumulated score favours old tokens: a token attended by 500
//! queries has had 500 chances to gather weight, a token 10 steps old has
//! had 10. Dividing by the number of attentions that covered the token
//! compares them on equal terms. This is OpenVINO GenAI's `NORM_SUM`
//! aggregation mode for cache eviction ("same as SUM, but the importance
//! scores are additionally divided by the lifetime of a given token in
//! cache"). Keyformer (Adnan et al., MLSys 2024, arXiv:2403.09054) likewise
//! replaces the raw accumulated attention with an adjusted score; this policy
//! implements only the division by lifetime.
//!
//! ```text
//! mean[t] = acc[t] / (attentions that covered t)
//! keep: the newest `recent` tokens + the `heavy` others with the highest mean
//! evict: the lowest mean outside the window (ties: TieRule)
//! ```
//!
//! In the default step order a token inserted at step `s` has been covered
//! `now − s + 1` times. A token no attention has covered yet has no mean; it
//! is kept ahead of every attended token.

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, H2O, TieRule};
use crate::error::Result;

/// Keep the `recent` newest tokens and the `heavy` tokens with the highest
/// mean attention; budget = heavy + recent.
///
/// # Example
/// ```
/// use h2o_kv::{KvCache, MeanScoreCache};
///
/// let mut cache = MeanScoreCache::<f64>::new(1, 1, 1)?; // head_dim 1, 1 heavy + 1 recent
/// for _ in 0..6 {
///     cache.step(&[1.0], &[0.5], &[1.0])?;
/// }
/// assert_eq!(cache.len(), 2);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeanScore {
    h2o: H2O,
}

impl MeanScore {
    /// `heavy` slots ranked by mean attention plus a `recent`-token window.
    ///
    /// # Errors
    /// As [`H2O::new`].
    pub fn new(heavy: usize, recent: usize) -> Result<Self> {
        Ok(Self { h2o: H2O::new(heavy, recent)? })
    }

    /// `budget` split by `heavy_fraction` as [`H2O::with_heavy_fraction`].
    ///
    /// # Errors
    /// As [`H2O::with_heavy_fraction`].
    pub fn with_heavy_fraction(budget: usize, heavy_fraction: f64) -> Result<Self> {
        Ok(Self { h2o: H2O::with_heavy_fraction(budget, heavy_fraction)? })
    }

    /// The same policy with another tie rule.
    #[must_use]
    pub fn with_tie_rule(self, tie: TieRule) -> Self {
        Self { h2o: self.h2o.with_tie_rule(tie) }
    }

    /// Heavy slots.
    #[must_use]
    pub fn heavy(&self) -> usize {
        self.h2o.heavy()
    }

    /// Recent-window length in tokens.
    #[must_use]
    pub fn recent(&self) -> usize {
        self.h2o.recent()
    }

    /// The tie rule in force.
    #[must_use]
    pub fn tie_rule(&self) -> TieRule {
        self.h2o.tie_rule()
    }

    /// A candidate's mean attention, `None` if no attention covered it.
    #[must_use]
    pub fn mean(c: &Candidate) -> Option<f64> {
        (c.attended > 0).then(|| c.score / c.attended as f64)
    }
}

impl EvictionPolicy for MeanScore {
    fn budget(&self) -> usize {
        self.h2o.budget()
    }
    fn evicts(&self) -> bool {
        true
    }
    fn recent_window(&self) -> usize {
        self.h2o.recent()
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        let key = |c: &Candidate| Self::mean(c).unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b)).then_with(|| self.h2o.tie_rule().order(a, b))
    }
    fn name(&self) -> &'static str {
        "mean"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cache, H2OCache, KvCache, MeanScoreCache};

    /// Uniform attention twice (q = 0), then q = 1 over keys 0, ln 6, ln 3:
    /// weights 0.1, 0.6, 0.3. Token 0: acc 1 + 1/2 + 0.1 = 1.6 over 3
    /// attentions (mean 0.533); token 1: acc 1/2 + 0.6 = 1.1 over 2 (mean
    /// 0.55). H2O keeps token 0, mean score keeps token 1.
    fn run<P: EvictionPolicy>(mut c: Cache<f64, P>) -> Vec<u64> {
        c.insert(&[0.0], &[0.0]).unwrap();
        c.attend(&[0.0]).unwrap();
        c.insert(&[6f64.ln()], &[0.0]).unwrap();
        c.attend(&[0.0]).unwrap();
        c.insert(&[3f64.ln()], &[0.0]).unwrap();
        c.attend(&[1.0]).unwrap();
        let tokens: Vec<(u64, f64, u64)> =
            c.planner().residents().map(|(_, t)| (t.position, t.score, t.attended)).collect();
        for (p, score, n) in [(0, 1.6, 3), (1, 1.1, 2), (2, 0.3, 1)] {
            let t = tokens.iter().find(|t| t.0 == p).unwrap();
            assert!((t.1 - score).abs() < 1e-12 && t.2 == n, "{t:?}");
        }
        c.evict().to_vec()
    }

    #[test]
    fn removes_the_bias_against_young_tokens() {
        let mean = MeanScoreCache::<f64>::new(1, 1, 1).unwrap().with_scale(1.0).unwrap();
        assert_eq!(run(mean), [0]);
        let h2o = H2OCache::<f64>::new(1, 1, 1).unwrap().with_scale(1.0).unwrap();
        assert_eq!(run(h2o), [1]);
    }

    #[test]
    fn unattended_tokens_rank_last() {
        let p = MeanScore::new(1, 0).unwrap();
        let seen = Candidate { position: 0, score: 5.0, last_weight: 1.0, attended: 5 };
        let fresh = Candidate { position: 1, score: 0.0, last_weight: 0.0, attended: 0 };
        assert_eq!(p.eviction_order(&seen, &fresh), Ordering::Less);
        assert_eq!(MeanScore::mean(&seen), Some(1.0));
        assert_eq!(MeanScore::mean(&fresh), None);
    }
}
