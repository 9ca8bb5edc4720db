//! `H2OSinksCache`: H2O with the first positions pinned as attention sinks.
//!
//! The H2O rule (Zhang et al., NeurIPS 2023, arXiv:2306.14048, §4) with the
//! StreamingLLM observation (Xiao et al., ICLR 2024, arXiv:2309.17453, §3.1)
//! that the first tokens draw attention whatever they say: they are kept
//! unconditionally instead of competing for a heavy-hitter slot.
//!
//! ```text
//! keep: positions 0..n_sink                        (sinks, never evicted)
//!     + the newest `recent` tokens                  (never evicted)
//!     + the `heavy − n_sink` others with the highest accumulated score
//! evict: the lowest accumulated score among the rest (ties: TieRule)
//! ```

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, H2O, TieRule, lowest_score_first};
use crate::error::{Error, Result};

/// H2O with `n_sink` attention sinks counted inside its `heavy` slots:
/// budget = `heavy + recent`.
///
/// # Example
/// ```
/// use h2o_kv::{H2OSinksCache, KvCache};
///
/// // head_dim 1, 1 heavy slot (taken by the sink) + 2 recent tokens.
/// let mut cache = H2OSinksCache::<f64>::new(1, 1, 2, 1)?;
/// cache.step(&[1.0], &[-5.0], &[0.0])?; // token 0: little attention after its first step
/// for _ in 0..5 {
///     cache.step(&[1.0], &[0.0], &[0.0])?;
/// }
/// // Plain H2O evicts token 0 at step 3 (token 1 has the higher score); as
/// // a sink it stays.
/// assert_eq!(cache.resident_positions(), [0, 4, 5]);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2OSinks {
    h2o: H2O,
    n_sink: usize,
}

impl H2OSinks {
    /// `heavy` heavy-hitter slots, of which the first `n_sink` positions take
    /// `n_sink`, plus a `recent`-token window.
    ///
    /// # Errors
    /// As [`H2O::new`]; [`Error::InvalidSplit`] if `n_sink > heavy`.
    pub fn new(heavy: usize, recent: usize, n_sink: usize) -> Result<Self> {
        Self::from_h2o(H2O::new(heavy, recent)?, n_sink)
    }

    /// `budget` split by `heavy_fraction` as [`H2O::with_heavy_fraction`],
    /// then `n_sink` of the heavy slots given to the sinks.
    ///
    /// # Errors
    /// As [`H2O::with_heavy_fraction`]; [`Error::InvalidSplit`] if `n_sink`
    /// exceeds the heavy slots.
    pub fn with_heavy_fraction(budget: usize, heavy_fraction: f64, n_sink: usize) -> Result<Self> {
        Self::from_h2o(H2O::with_heavy_fraction(budget, heavy_fraction)?, n_sink)
    }

    /// The same H2O policy (with its tie rule) with `n_sink` sinks.
    ///
    /// # Errors
    /// [`Error::InvalidSplit`] if `n_sink > h2o.heavy()`, or if the sinks
    /// would fill the whole budget (`recent = 0` and `n_sink = heavy`: no
    /// other token could ever stay).
    pub fn from_h2o(h2o: H2O, n_sink: usize) -> Result<Self> {
        if n_sink > h2o.heavy() || n_sink >= h2o.heavy() + h2o.recent() {
            return Err(Error::InvalidSplit {
                budget: h2o.heavy() + h2o.recent(),
                recent: h2o.recent() + n_sink,
            });
        }
        Ok(Self { h2o, n_sink })
    }

    /// The same policy with another tie rule.
    #[must_use]
    pub fn with_tie_rule(self, tie: TieRule) -> Self {
        Self { h2o: self.h2o.with_tie_rule(tie), ..self }
    }

    /// Heavy slots, sinks included.
    #[must_use]
    pub fn heavy(&self) -> usize {
        self.h2o.heavy()
    }

    /// Recent-window length in tokens.
    #[must_use]
    pub fn recent(&self) -> usize {
        self.h2o.recent()
    }

    /// Attention sinks: positions `0..n_sink()`.
    #[must_use]
    pub fn n_sink(&self) -> usize {
        self.n_sink
    }

    /// The tie rule in force.
    #[must_use]
    pub fn tie_rule(&self) -> TieRule {
        self.h2o.tie_rule()
    }
}

impl EvictionPolicy for H2OSinks {
    fn budget(&self) -> usize {
        self.h2o.budget()
    }
    fn evicts(&self) -> bool {
        true
    }
    fn recent_window(&self) -> usize {
        self.h2o.recent()
    }
    fn sinks(&self) -> usize {
        self.n_sink
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        lowest_score_first(self.h2o.tie_rule(), a, b)
    }
    fn name(&self) -> &'static str {
        "h2o+sinks"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{H2OCache, H2OSinksCache, KvCache};

    #[test]
    fn the_sink_stays_where_h2o_drops_it() {
        // Token 0's key points away from every query: after its first step
        // (weight 1, alone) it gains about e^-5 per step, while the others
        // share the rest. At step 3 plain H2O (1 heavy + 2 recent) keeps
        // token 1 (≈1.82) over token 0 (≈1.01); with one sink, token 0 holds
        // the heavy slot and every other token passes through the window.
        let mut with = H2OSinksCache::<f64>::new(1, 1, 2, 1).unwrap();
        let mut without = H2OCache::<f64>::new(1, 1, 2).unwrap();
        for k in [-5.0, 0.0, 0.0, 0.0, 0.0, 0.0] {
            with.step(&[1.0], &[k], &[0.0]).unwrap();
            without.step(&[1.0], &[k], &[0.0]).unwrap();
        }
        assert_eq!(with.resident_positions(), [0, 4, 5]);
        assert_eq!(without.resident_positions(), [1, 4, 5]);
    }

    #[test]
    fn configurations() {
        let p = H2OSinks::new(6, 2, 4).unwrap();
        assert_eq!((p.budget(), p.recent_window(), p.sinks(), p.name()), (8, 2, 4, "h2o+sinks"));
        assert!(matches!(H2OSinks::new(3, 2, 4), Err(Error::InvalidSplit { .. })));
        // Sinks filling the budget: nothing else could stay.
        assert!(matches!(H2OSinks::new(2, 0, 2), Err(Error::InvalidSplit { .. })));
        assert!(H2OSinks::new(2, 0, 1).is_ok());
        let p = H2OSinks::with_heavy_fraction(20, 0.5, 4).unwrap();
        assert_eq!((p.heavy(), p.recent(), p.n_sink()), (10, 10, 4));
        assert_eq!(H2OSinks::new(0, 0, 0), Err(Error::ZeroBudget));
    }
}
