//! `Full`: keeps every token, never evicts (the quality baseline).

use core::cmp::Ordering;

use super::{Candidate, EvictionPolicy, check_budget};
use crate::error::Result;

/// Keep everything, up to a fixed capacity in tokens.
///
/// The baseline every bounded policy is measured against. Inserting past the
/// capacity is an [`Error::CapacityExceeded`](crate::Error::CapacityExceeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    capacity: usize,
}

impl Full {
    /// A policy holding up to `capacity` tokens.
    ///
    /// # Errors
    /// [`Error::ZeroBudget`](crate::Error::ZeroBudget) if `capacity == 0`,
    /// [`Error::BudgetTooLarge`](crate::Error::BudgetTooLarge) above
    /// [`MAX_BUDGET`](crate::MAX_BUDGET).
    pub fn new(capacity: usize) -> Result<Self> {
        check_budget(capacity)?;
        Ok(Self { capacity })
    }
}

impl EvictionPolicy for Full {
    fn budget(&self) -> usize {
        self.capacity
    }
    fn evicts(&self) -> bool {
        false
    }
    fn recent_window(&self) -> usize {
        0
    }
    #[inline]
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        a.position.cmp(&b.position)
    }
    fn name(&self) -> &'static str {
        "full"
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, FullCache, KvCache};

    #[test]
    fn never_evicts_and_refuses_past_capacity() {
        let mut c = FullCache::<f32>::new(2, 3).unwrap();
        for t in 0..3 {
            c.step(&[1.0, 0.0], &[t as f32, 1.0], &[1.0, 1.0]).unwrap();
            assert!(c.last_evicted().is_empty());
        }
        assert_eq!(c.resident_positions(), [0, 1, 2]);
        let err = c.step(&[1.0, 0.0], &[0.0, 1.0], &[1.0, 1.0]).unwrap_err();
        assert_eq!(err, Error::CapacityExceeded { len: 3, capacity: 3, requested: 1 });
        assert_eq!(c.len(), 3);
    }
}
