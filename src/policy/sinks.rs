//! `SinkWindowCache`: attention sinks plus a sliding window (StreamingLLM).
//!
//! Xiao et al., *Efficient Streaming Language Models with Attention Sinks*,
//! ICLR 2024, arXiv:2309.17453, §3.2: a model trained with full attention
//! puts a large share of every query's weight on the first few tokens (the
//! "attention sinks") whatever they say; a sliding window that drops them
//! breaks down, while keeping 4 of them plus the window streams stably.
//!
//! ```text
//! keep: positions 0..n_sink (the first tokens ever inserted; never evicted)
//!     + the newest `window` tokens
//! evict: the oldest token that is neither
//! ```

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, MAX_BUDGET, check_budget};
use crate::error::{Error, Result};

/// Keep the first `n_sink` positions of the sequence and the newest `window`
/// tokens; budget = `n_sink + window`.
///
/// The sinks are absolute positions `0..n_sink`, not "the oldest resident":
/// once inserted they are never evicted. Positions are not re-indexed inside
/// the cache (StreamingLLM's own implementation re-rotates keys by their
/// cache index); keys keep the RoPE of their absolute position.
///
/// # Example
/// ```
/// use h2o_kv::{KvCache, SinkWindowCache};
///
/// // head_dim 2, 2 sinks + a window of 2.
/// let mut cache = SinkWindowCache::<f32>::new(2, 2, 2)?;
/// for t in 0..8 {
///     let x = [t as f32, 1.0];
///     cache.step(&x, &x, &x)?;
/// }
/// assert_eq!(cache.resident_positions(), [0, 1, 6, 7]);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkWindow {
    n_sink: usize,
    window: usize,
}

impl SinkWindow {
    /// StreamingLLM's default: 4 attention sinks.
    pub const DEFAULT_SINKS: usize = 4;

    /// `n_sink` sinks plus a window of `window` tokens.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `window == 0` (the newest token would
    /// be evicted at once); [`Error::BudgetTooLarge`] if the budget
    /// `n_sink + window` overflows or exceeds [`MAX_BUDGET`].
    pub fn new(n_sink: usize, window: usize) -> Result<Self> {
        if window == 0 {
            return Err(Error::InvalidParameter {
                what: "sink-window window",
                value: 0.0,
                expected: "at least 1 token",
            });
        }
        let budget = n_sink
            .checked_add(window)
            .ok_or(Error::BudgetTooLarge { budget: usize::MAX, max: MAX_BUDGET })?;
        check_budget(budget)?;
        Ok(Self { n_sink, window })
    }

    /// [`DEFAULT_SINKS`](Self::DEFAULT_SINKS) sinks and a window filling the
    /// rest of `budget`.
    ///
    /// # Errors
    /// [`Error::BudgetTooSmall`] if `budget <= 4`; otherwise as
    /// [`new`](Self::new).
    pub fn with_budget(budget: usize) -> Result<Self> {
        let n_sink = Self::DEFAULT_SINKS;
        if budget <= n_sink {
            return Err(Error::BudgetTooSmall { total: budget, parts: 1, needed: n_sink + 1 });
        }
        Self::new(n_sink, budget - n_sink)
    }

    /// Attention sinks: positions `0..n_sink()`.
    #[must_use]
    pub fn n_sink(&self) -> usize {
        self.n_sink
    }

    /// Sliding-window length in tokens.
    #[must_use]
    pub fn window(&self) -> usize {
        self.window
    }
}

impl EvictionPolicy for SinkWindow {
    fn budget(&self) -> usize {
        self.n_sink + self.window
    }
    fn evicts(&self) -> bool {
        true
    }
    fn recent_window(&self) -> usize {
        self.window
    }
    fn sinks(&self) -> usize {
        self.n_sink
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        a.position.cmp(&b.position)
    }
    fn name(&self) -> &'static str {
        "sinks"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KvCache, SinkWindowCache};

    #[test]
    fn keeps_the_sinks_and_the_window() {
        let mut c = SinkWindowCache::<f64>::new(1, 2, 3).unwrap();
        for t in 0..9u32 {
            c.step(&[1.0], &[f64::from(t)], &[1.0]).unwrap();
        }
        assert_eq!(c.resident_positions(), [0, 1, 6, 7, 8]);
        assert_eq!(c.last_evicted(), [5]);
    }

    #[test]
    fn sinks_survive_any_scores() {
        // Sinks with the lowest possible scores (keys pointing away from
        // every query) still stay.
        let mut c = SinkWindowCache::<f64>::new(1, 1, 1).unwrap();
        c.step(&[1.0], &[-50.0], &[0.0]).unwrap();
        for _ in 0..5 {
            c.step(&[1.0], &[50.0], &[0.0]).unwrap();
        }
        assert_eq!(c.resident_positions(), [0, 5]);
    }

    #[test]
    fn configurations() {
        let p = SinkWindow::with_budget(10).unwrap();
        assert_eq!((p.n_sink(), p.window(), p.budget(), p.sinks()), (4, 6, 10, 4));
        assert!(matches!(SinkWindow::with_budget(4), Err(Error::BudgetTooSmall { .. })));
        assert!(matches!(SinkWindow::new(4, 0), Err(Error::InvalidParameter { .. })));
        assert!(matches!(SinkWindow::new(usize::MAX, 1), Err(Error::BudgetTooLarge { .. })));
        // No sinks: a plain sliding window.
        assert_eq!(SinkWindow::new(0, 5).unwrap().recent_window(), 5);
    }
}
