//! The four caches by name, one constructor each. Every one is
//! [`Cache::with_policy`] with the policy built from plain numbers.

use super::Cache;
use crate::element::Element;
use crate::error::Result;
use crate::policy::{Full, H2O, Heavy, Recent};

/// A cache that keeps every token: [`Cache`] with the [`Full`] policy.
pub type FullCache<T> = Cache<T, Full>;

/// A sliding-window cache: [`Cache`] with the [`Recent`] policy.
pub type RecentOnly<T> = Cache<T, Recent>;

/// A heavy-hitter-only cache: [`Cache`] with the [`Heavy`] policy.
pub type HeavyOnly<T> = Cache<T, Heavy>;

/// The H2O cache: [`Cache`] with the [`H2O`] policy.
pub type H2OCache<T> = Cache<T, H2O>;

/// # [`FullCache`]: every token, up to a capacity
impl<T: Element> Cache<T, Full> {
    /// A full cache for one head of `head_dim` with room for `capacity` tokens.
    ///
    /// Allocates `2 · capacity · head_dim` elements once.
    ///
    /// # Errors
    /// As [`Full::new`] and [`Cache::with_policy`].
    pub fn new(head_dim: usize, capacity: usize) -> Result<Self> {
        Cache::with_policy(head_dim, Full::new(capacity)?)
    }
}

/// # [`RecentOnly`]: a sliding window
impl<T: Element> Cache<T, Recent> {
    /// A sliding window of `budget` tokens for one head of `head_dim`.
    ///
    /// # Errors
    /// As [`Recent::new`] and [`Cache::with_policy`].
    pub fn new(head_dim: usize, budget: usize) -> Result<Self> {
        Cache::with_policy(head_dim, Recent::new(budget)?)
    }
}

/// # [`HeavyOnly`]: heavy hitters and the newest token
impl<T: Element> Cache<T, Heavy> {
    /// A heavy-hitter cache of `budget` tokens for one head of `head_dim`.
    ///
    /// # Errors
    /// As [`Heavy::new`] and [`Cache::with_policy`].
    pub fn new(head_dim: usize, budget: usize) -> Result<Self> {
        Cache::with_policy(head_dim, Heavy::new(budget)?)
    }
}

/// # [`H2OCache`]: heavy hitters and a recent window
impl<T: Element> Cache<T, H2O> {
    /// An H2O cache for one head of `head_dim`: `heavy` heavy hitters plus a
    /// `recent`-token window.
    ///
    /// # Errors
    /// As [`H2O::new`] and [`Cache::with_policy`].
    pub fn new(head_dim: usize, heavy: usize, recent: usize) -> Result<Self> {
        Cache::with_policy(head_dim, H2O::new(heavy, recent)?)
    }

    /// An H2O cache of `budget` tokens split by `heavy_fraction` (see
    /// [`H2O::with_heavy_fraction`] for the rounding).
    ///
    /// # Errors
    /// As [`H2O::with_heavy_fraction`] and [`Cache::with_policy`].
    pub fn with_heavy_fraction(
        head_dim: usize,
        budget: usize,
        heavy_fraction: f64,
    ) -> Result<Self> {
        Cache::with_policy(head_dim, H2O::with_heavy_fraction(budget, heavy_fraction)?)
    }
}
