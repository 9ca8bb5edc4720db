//! `Recent`: a sliding window over the newest tokens.

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, check_budget};
use crate::error::Result;

/// Keep the newest `budget` tokens; evict the oldest (the paper's "local"
/// baseline, a sliding window without attention sinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recent {
    budget: usize,
}

impl Recent {
    /// A window of `budget` tokens.
    ///
    /// # Errors
    /// [`Error::ZeroBudget`](crate::Error::ZeroBudget) if `budget == 0`,
    /// [`Error::BudgetTooLarge`](crate::Error::BudgetTooLarge) above
    /// [`MAX_BUDGET`](crate::MAX_BUDGET).
    pub fn new(budget: usize) -> Result<Self> {
        check_budget(budget)?;
        Ok(Self { budget })
    }
}

impl EvictionPolicy for Recent {
    fn budget(&self) -> usize {
        self.budget
    }
    fn evicts(&self) -> bool {
        true
    }
    fn recent_window(&self) -> usize {
        self.budget
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        a.position.cmp(&b.position)
    }
    fn name(&self) -> &'static str {
        "recent"
    }
}

#[cfg(test)]
mod tests {
    use crate::{KvCache, RecentOnly};

    #[test]
    fn evicts_the_oldest() {
        let mut c = RecentOnly::<f64>::new(1, 2).unwrap();
        for t in 0..5u32 {
            c.step(&[1.0], &[f64::from(t)], &[1.0]).unwrap();
        }
        assert_eq!(c.resident_positions(), [3, 4]);
        assert_eq!(c.last_evicted(), [2]);
    }
}
