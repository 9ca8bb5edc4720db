//! Prefill compression and budget allocation: pure functions that decide
//! which prompt tokens to keep and how many tokens each layer or head gets.
//!
//! Nothing here touches a cache. Each function reads scores the caller
//! computed (or the crate's prefill computed) and writes its answer into
//! caller-provided slices, so it can serve [`Cache`](crate::Cache) and an
//! engine that runs its own attention alike.
//!
//! | item | decides | source |
//! |---|---|---|
//! | [`SnapKv`] | which prompt tokens one KV head keeps after a prefill | Li et al. 2024, arXiv:2404.14469 |
//! | [`LayerSchedule`] | each layer's share of a model's total budget | Cai et al. 2024 (PyramidKV), arXiv:2406.02069 |
//! | [`AdaKv`] | each KV head's share of a layer's budget | Feng et al. 2024 (Ada-KV), arXiv:2407.11550 |
//!
//! # Allocation
//! [`LayerSchedule::split`] allocates nothing. [`SnapKv::select`] and
//! [`AdaKv::split`] sort indices in a [`Scratch`] the caller keeps: it grows
//! (fallibly) the first time it meets a larger input and is reused after
//! that, so a caller that sizes it once with [`Scratch::with_capacity`]
//! never allocates again.

use core::cmp::Ordering;

use crate::error::{Error, Result};

mod adakv;
mod pyramid;
mod snapkv;

pub use adakv::AdaKv;
pub use pyramid::LayerSchedule;
pub use snapkv::SnapKv;

/// Reusable working memory for [`SnapKv::select`] and [`AdaKv::split`].
///
/// Holds one `f64` and one `usize` per scored entry (`n` for SnapKV,
/// `n_heads × n` for Ada-KV).
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    values: Vec<f64>,
    order: Vec<usize>,
}

impl Scratch {
    /// Empty scratch; it grows on first use.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Scratch for inputs of up to `entries` scored entries, allocated now.
    ///
    /// # Errors
    /// [`Error::AllocationFailed`] if the memory cannot be had.
    pub fn with_capacity(entries: usize) -> Result<Self> {
        let mut s = Self::new();
        s.reserve(entries)?;
        Ok(s)
    }

    /// Entries this scratch takes without allocating.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.values.capacity().min(self.order.capacity())
    }

    /// Makes room for `entries` and sets both buffers to that length.
    fn reserve(&mut self, entries: usize) -> Result<()> {
        let fail = |size: usize| Error::AllocationFailed { bytes: entries.saturating_mul(size) };
        if entries > self.values.capacity() {
            self.values
                .try_reserve_exact(entries - self.values.len())
                .map_err(|_| fail(size_of::<f64>()))?;
        }
        if entries > self.order.capacity() {
            self.order
                .try_reserve_exact(entries - self.order.len())
                .map_err(|_| fail(size_of::<usize>()))?;
        }
        self.values.resize(entries, 0.0);
        self.order.resize(entries, 0);
        Ok(())
    }

    /// Both buffers at length `entries`.
    fn buffers(&mut self, entries: usize) -> Result<(&mut [f64], &mut [usize])> {
        self.reserve(entries)?;
        Ok((&mut self.values[..entries], &mut self.order[..entries]))
    }
}

/// Puts the `k` best entries of `order` first, best by `rank` (`Less` means
/// the first argument ranks higher). Average O(len).
pub(crate) fn top_k(order: &mut [usize], k: usize, rank: impl Fn(usize, usize) -> Ordering) {
    if k > 0 && k < order.len() {
        order.select_nth_unstable_by(k - 1, |&a, &b| rank(a, b));
    }
}

/// The first non-finite score, as an error.
fn check_scores(what: &'static str, scores: &[f64]) -> Result<()> {
    match scores.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(Error::NonFinite { what, index, value: scores[index] }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_puts_the_best_first() {
        let scores = [0.3f64, 0.9, 0.1, 0.9, 0.5];
        let mut order: Vec<usize> = (0..5).collect();
        // Higher score first, then the lower index.
        top_k(&mut order, 3, |a, b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let mut best = order[..3].to_vec();
        best.sort_unstable();
        assert_eq!(best, [1, 3, 4]);
    }

    #[test]
    fn scratch_grows_once_and_is_reused() {
        let mut s = Scratch::with_capacity(8).unwrap();
        assert!(s.capacity() >= 8);
        let cap = s.capacity();
        s.buffers(5).unwrap();
        s.buffers(8).unwrap();
        assert_eq!(s.capacity(), cap);
        assert!(matches!(
            Scratch::with_capacity(usize::MAX / 4),
            Err(Error::AllocationFailed { .. })
        ));
    }
}
