//! Ada-KV applied inside the caches: a layer's KV heads get budgets split by
//! [`AdaKv`] from the scores one full prefill gave the prompt (each head's
//! column sums, the H2O accumulated scores), then derive their prefill from
//! that full cache, each by its own policy at its own budget.

use crate::compress::{AdaKv, Scratch};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::layer::LayerCache;
use crate::model::ModelCache;
use crate::planner::try_vec;
use crate::policy::EvictionPolicy;

impl<T: Element, Q: EvictionPolicy> LayerCache<T, Q> {
    /// How Ada-KV ([`AdaKv::split`]) shares `total` tokens across this
    /// layer's KV heads, scoring each prompt token by the accumulated score
    /// this layer gave it (its column sum `Σ_{i ≥ j} w[i][j]` over the
    /// prompt rows, its query heads' weights summed, as H2O scores it): one
    /// budget per KV head, head 0 first, summing to `total`.
    ///
    /// This layer must have taken a prompt of `P` tokens without evicting
    /// (a full cache, as for [`prefill_from`](LayerCache::prefill_from)).
    /// When `total ≥ n_kv_heads · P` every head can keep its whole prompt:
    /// the scores then say nothing, and `total` is split equally (the first
    /// `total mod n_kv_heads` heads get one token more), so the budgets
    /// still sum to `total` and bound the decode that follows.
    ///
    /// Only the column-sum score is available here: SnapKV's
    /// observation-window score needs the prompt's last queries, which a
    /// cache does not keep (for that, call [`AdaKv::split`] on your own
    /// window scores and build the layer with
    /// [`with_head_policies`](LayerCache::with_head_policies)).
    ///
    /// Allocates `O(n_kv_heads · P)` scratch. No panic.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `total < n_kv_heads` (every head
    /// needs a token); [`Error::PrefillSource`] if a head evicted a token or
    /// a token was not attended by every later query;
    /// [`Error::AllocationFailed`] if the scratch cannot be had.
    pub fn adakv_budgets(&self, ada: &AdaKv, total: usize) -> Result<Vec<usize>> {
        let n_kv = self.n_kv_heads();
        if total < n_kv {
            return Err(Error::InvalidParameter {
                what: "ada-kv total",
                value: total as f64,
                expected: "at least one token per KV head",
            });
        }
        for head in self.heads() {
            head.planner().check_prefill_source()?;
        }
        let p = usize::try_from(self.next_position())
            .map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        let mut budgets = try_vec(n_kv, 0)?;
        if n_kv.checked_mul(p).is_none_or(|all| total >= all) {
            for (h, b) in budgets.iter_mut().enumerate() {
                *b = total / n_kv + usize::from(h < total % n_kv);
            }
            return Ok(budgets);
        }
        let mut scores = try_vec(n_kv * p, 0.0)?;
        for (row, head) in scores.chunks_exact_mut(p).zip(self.heads()) {
            // A checked source holds exactly positions 0..P.
            for (_, t) in head.planner().residents() {
                if let Some(s) = row.get_mut(t.position as usize) {
                    *s = t.score;
                }
            }
        }
        ada.split(&scores, n_kv, total, &mut Scratch::new(), &mut budgets)?;
        Ok(budgets)
    }
}

impl<T: Element, P: EvictionPolicy> LayerCache<T, P> {
    /// Ada-KV on a prefill (Feng et al., 2024, arXiv:2407.11550, §4, on H2O
    /// scores): a new layer whose KV head `h` runs `policy(budget[h])`, with
    /// the budgets from [`adakv_budgets`](LayerCache::adakv_budgets) (the
    /// layer's `total` tokens shared by how concentrated each head's prompt
    /// attention is), holding what each head's own prefill of `source`'s
    /// prompt would keep (see [`prefill_from`](Self::prefill_from)). Same
    /// head counts, `head_dim` and softmax scale as `source`.
    ///
    /// Each head then keeps what its policy keeps at its budget: with
    /// [`Heavy`](crate::Heavy) policies that is, up to each
    /// policy's recent window, Ada-KV's global selection of the best
    /// `(head, token)` pairs. A head can get a budget of 0 (safeguard 0 and
    /// a concentrated head); most policies refuse it with
    /// [`Error::ZeroBudget`], so keep a safeguard with
    /// [`AdaKv::guaranteed`]` ≥ 1`, or map 0 to a policy you accept.
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{AdaKv, Full, Heavy, KvCache, LayerCache};
    ///
    /// // A 16-token prompt through a full layer of 2 KV heads.
    /// let (p, d) = (16, 4);
    /// let mut full = LayerCache::<f32, _>::new(2, 2, d, Full::new(p)?)?;
    /// let q: Vec<f32> = (0..p * 2 * d).map(|i| (i % 7) as f32 * 0.3).collect();
    /// let k: Vec<f32> = (0..p * 2 * d).map(|i| (i % 5) as f32 * 0.2).collect();
    /// full.prefill(&q, &k, &k, &mut vec![0.0; p * 2 * d])?;
    /// // 12 tokens for the layer, at least floor(0.5 · 12 / 2) = 3 per head.
    /// let ada = AdaKv::new(0.5)?;
    /// let layer = LayerCache::adakv_from(&full, &ada, 12, Heavy::new)?;
    /// assert_eq!(layer.total_budget(), 12);
    /// assert!(layer.head_budgets().all(|b| b >= 3));
    /// assert!(layer.heads().iter().zip(layer.head_budgets()).all(|(h, b)| h.len() == b));
    /// # Ok::<(), h2o_kv::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`adakv_budgets`](LayerCache::adakv_budgets), the `policy`
    /// closure, [`with_head_policies`](Self::with_head_policies) and
    /// [`prefill_from`](Self::prefill_from). `source` is never changed.
    pub fn adakv_from<Q: EvictionPolicy>(
        source: &LayerCache<T, Q>,
        ada: &AdaKv,
        total: usize,
        policy: impl FnMut(usize) -> Result<P>,
    ) -> Result<Self> {
        let budgets = source.adakv_budgets(ada, total)?;
        let policies = budgets.into_iter().map(policy).collect::<Result<Vec<_>>>()?;
        let scale = source.heads().first().map_or(1.0, |h| h.scale());
        let mut layer = Self::with_head_policies(source.n_heads(), source.head_dim(), policies)?
            .with_scale(scale)?;
        layer.prefill_from(source)?;
        Ok(layer)
    }
}

impl<T: Element, P: EvictionPolicy> ModelCache<T, P> {
    /// Ada-KV in every layer: layer `l` is
    /// [`LayerCache::adakv_from`]`(source layer l, ada, totals[l], policy)`,
    /// so each layer shares its own total across its KV heads (`totals`
    /// from a [`LayerSchedule`](crate::LayerSchedule) gives PyramidKV
    /// across layers and Ada-KV within them). The new cache's position is
    /// `source`'s.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] unless `totals` has one entry per layer;
    /// [`Error::PrefillSource`] if `source` is between layers of a token;
    /// otherwise as [`LayerCache::adakv_from`] for any layer. `source` is
    /// never changed; no panic.
    pub fn adakv_from<Q: EvictionPolicy>(
        source: &ModelCache<T, Q>,
        ada: &AdaKv,
        totals: &[usize],
        mut policy: impl FnMut(usize) -> Result<P>,
    ) -> Result<Self> {
        if totals.len() != source.n_layers() {
            return Err(Error::LengthMismatch {
                what: "ada-kv totals",
                expected: source.n_layers(),
                got: totals.len(),
            });
        }
        if source.layers().iter().any(|l| l.next_position() != source.position()) {
            return Err(Error::PrefillSource { reason: "the source is between layers of a token" });
        }
        let mut layers = Vec::new();
        layers
            .try_reserve_exact(totals.len())
            .map_err(|_| Error::AllocationFailed { bytes: usize::MAX })?;
        for (layer, &total) in source.layers().iter().zip(totals) {
            layers.push(LayerCache::adakv_from(layer, ada, total, &mut policy)?);
        }
        Self::from_layers(layers)
    }
}
