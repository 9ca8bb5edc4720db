//! Which eviction policy a run uses, and how a budget in tokens becomes one.

use h2o_kv::{AnyPolicy, Full, H2O, Heavy, Recent};

use crate::error::Result;

/// The four policies of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    /// Keep every token (`FullCache`).
    Full,
    /// Sliding window of the newest tokens (`RecentOnly`).
    Recent,
    /// Highest accumulated attention plus the newest token (`HeavyOnly`).
    Heavy,
    /// Heavy hitters plus a recent window (`H2OCache`).
    H2o,
}

impl PolicyKind {
    /// Short name, as in the crate's `policy_name`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Recent => "recent",
            Self::Heavy => "heavy",
            Self::H2o => "h2o",
        }
    }

    /// The policy keeping `budget` tokens per KV head; for H2O
    /// `floor(budget × heavy_fraction)` of them are heavy hitters. A full cache
    /// ignores the budget and holds `seq_len` tokens.
    ///
    /// # Errors
    /// [`Error::Cache`](crate::error::Error::Cache) for a zero budget or a
    /// fraction outside `[0, 1]`.
    pub fn build(self, budget: usize, heavy_fraction: f64, seq_len: usize) -> Result<AnyPolicy> {
        Ok(match self {
            Self::Full => Full::new(seq_len)?.into(),
            Self::Recent => Recent::new(budget)?.into(),
            Self::Heavy => Heavy::new(budget)?.into(),
            Self::H2o => {
                let policy = H2O::with_heavy_fraction(budget, heavy_fraction)?;
                if policy.recent() == 0 {
                    eprintln!(
                        "warning: heavy fraction {heavy_fraction} leaves no recent window: each new \
                         token competes with one self-weight and is usually evicted at once"
                    );
                }
                policy.into()
            }
        })
    }
}

/// `percent` % of `seq_len` in tokens, rounded half up: 5, 10, 20, 40, 60 %
/// of 512 are 26, 51, 102, 205, 307 tokens.
pub fn budget_tokens(percent: u32, seq_len: usize) -> usize {
    (percent as usize * seq_len * 2 + 100) / 200
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2o_kv::EvictionPolicy;

    #[test]
    fn budgets_round_half_up() {
        let b: Vec<usize> = [5, 10, 20, 40, 60, 100].map(|p| budget_tokens(p, 512)).to_vec();
        assert_eq!(b, [26, 51, 102, 205, 307, 512]);
        assert_eq!(budget_tokens(50, 5), 3); // 2.5 → 3
    }

    #[test]
    fn build_splits_h2o_budgets() {
        let p = PolicyKind::H2o.build(26, 0.5, 512).unwrap();
        assert_eq!((p.budget(), p.recent_window()), (26, 13));
        assert_eq!(PolicyKind::Full.build(1, 0.5, 512).unwrap().budget(), 512);
        assert!(PolicyKind::Recent.build(0, 0.5, 512).is_err());
    }
}
