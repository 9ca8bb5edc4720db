//! A prefill derived from another cache's: the prompt's keys, values and
//! scores copied from a cache that took it without evicting, then this
//! cache's policy evicts once (see [`Planner::prefill_from`]).

use super::Cache;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::planner::Planner;
use crate::policy::EvictionPolicy;

impl<T: Element, P: EvictionPolicy> Cache<T, P> {
    /// What [`prefill`](crate::KvCache::prefill) of the prompt `source`
    /// holds would leave in this empty cache, without running the
    /// attention again: `source` (typically a full cache) took positions
    /// `0..P` and never evicted, so its scores are the prompt's column sums
    /// (`docs/semantics.md §3`); this cache copies the rows of the tokens its
    /// own policy keeps. The prefill's outputs are `source`'s (a prefill's
    /// attention does not depend on the policy).
    ///
    /// Use it to compare policies on one prompt: prefill one full cache, then
    /// derive every bounded cache from it (`O(P · head_dim)` per cache instead
    /// of the `O(P² · head_dim)` attention).
    ///
    /// # Errors
    /// [`Error::PrefillSource`] if `head_dim` differs, or as
    /// [`Planner::prefill_from`]. Nothing changes on an error; no panic.
    pub fn prefill_from<Q: EvictionPolicy>(&mut self, source: &Cache<T, Q>) -> Result<()> {
        self.check_prefill_from(source)?;
        self.commit_prefill_from(source);
        Ok(())
    }

    /// The checks of [`prefill_from`](Self::prefill_from). Changes nothing.
    pub(crate) fn check_prefill_from<Q: EvictionPolicy>(&self, source: &Cache<T, Q>) -> Result<()> {
        if source.rows.head_dim() != self.rows.head_dim() {
            return Err(Error::PrefillSource { reason: "head_dim differs" });
        }
        self.planner.check_prefill_from(source.planner())
    }

    /// Applies a checked [`prefill_from`](Self::prefill_from).
    pub(crate) fn commit_prefill_from<Q: EvictionPolicy>(&mut self, source: &Cache<T, Q>) {
        let source_planner: &Planner<Q> = source.planner();
        if source_planner.is_empty() {
            return;
        }
        self.shown = None;
        self.shown_evicted.clear();
        let rows = &mut self.rows;
        self.planner.commit_prefill_from(source_planner, |from, to| {
            rows.write(to, source.rows.key(from), source.rows.value(from));
        });
    }
}
