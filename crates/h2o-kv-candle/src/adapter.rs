//! [`TensorLayerCache`]: one attention layer's KV cache, driven with candle
//! tensors.

use candle_core::{Device, Tensor, WithDType};
use h2o_kv::{Accumulator, AnyPolicy, Element, EvictionPolicy, LayerCache, SnapKv};

use crate::error::{Error, Result};

/// A [`LayerCache`] that takes and returns candle [`Tensor`]s.
///
/// Per decode step a layer hands over its query `[n_heads, head_dim]` and the
/// new token's key and value `[n_kv_heads, head_dim]` (after RoPE) and gets
/// the attention output `[n_heads, head_dim]` back. The cache inserts the
/// token, attends over what it holds, adds the softmax weights to each
/// token's accumulated score and evicts down to its policy's budget (the
/// order of [`LayerCache::step`]). Query heads `h·g .. (h+1)·g` share KV head
/// `h` (grouped-query attention, `g = n_heads / n_kv_heads`).
///
/// # Element types
/// The cache stores `T` (`f32`, `half::f16` or `half::bf16`; computing in
/// f32). Input tensors may be f32, f16, bf16 or f64 whatever `T` is: they
/// are converted to `T`. The output has the query's dtype.
///
/// # Devices
/// The cache lives in host memory. Tensors on another device (CUDA, Metal)
/// are **copied** to the host, and the output is copied back to the query's
/// device: correct, but each call pays two transfers. An engine that keeps
/// K/V on the GPU should drive the eviction decisions itself instead.
///
/// # Memory
/// The slot store is allocated when the [`LayerCache`] is built. Each call
/// copies its input tensors into host vectors and allocates the output tensor
/// (candle tensors own their storage); the cache itself allocates nothing per
/// decode step.
///
/// # Errors, never panics
/// Shapes and dtypes are checked first ([`Error::Shape`], [`Error::DType`]),
/// then the cache checks values ([`h2o_kv::Error::NonFinite`], capacity):
/// a failed call leaves the cache as it was.
///
/// # Example
/// ```
/// use candle_core::{Device, Tensor};
/// use h2o_kv::{H2O, LayerCache};
/// use h2o_kv_candle::TensorLayerCache;
///
/// # fn main() -> Result<(), h2o_kv_candle::Error> {
/// // 4 query heads share 2 KV heads of dimension 8; keep 4 heavy + 4 recent tokens.
/// let layer = LayerCache::<f32, _>::new(4, 2, 8, H2O::new(4, 4)?)?;
/// let mut cache = TensorLayerCache::new(layer);
///
/// // A 12-token prompt as one prefill: [seq, heads, head_dim].
/// let dev = Device::Cpu;
/// let q = Tensor::randn(0f32, 1.0, (12, 4, 8), &dev)?;
/// let k = Tensor::randn(0f32, 1.0, (12, 2, 8), &dev)?;
/// let v = Tensor::randn(0f32, 1.0, (12, 2, 8), &dev)?;
/// let out = cache.prefill(&q, &k, &v)?;
/// assert_eq!(out.dims(), [12, 4, 8]);
/// assert_eq!(cache.layer().len(), 8); // evicted down to the budget
///
/// // Decode steps: one token each, f16 inputs are fine too.
/// for _ in 0..5 {
///     let q = Tensor::randn(0f32, 1.0, (4, 8), &dev)?.to_dtype(candle_core::DType::F16)?;
///     let k = Tensor::randn(0f32, 1.0, (2, 8), &dev)?;
///     let v = Tensor::randn(0f32, 1.0, (2, 8), &dev)?;
///     let out = cache.step(&q, &k, &v)?;
///     assert_eq!((out.dims(), out.dtype()), (&[4usize, 8][..], candle_core::DType::F16));
/// }
/// assert_eq!(cache.layer().len(), 8);
/// assert_eq!(cache.layer().next_position(), 17);
///
/// // A wrong shape is an error, and the cache is unchanged.
/// let bad = Tensor::zeros((3, 8), candle_core::DType::F32, &dev)?;
/// assert!(cache.step(&bad, &bad, &bad).is_err());
/// assert_eq!(cache.layer().next_position(), 17);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TensorLayerCache<T: Element = f32, P: EvictionPolicy = AnyPolicy> {
    layer: LayerCache<T, P>,
}

impl<T: Element + WithDType, P: EvictionPolicy> TensorLayerCache<T, P> {
    /// Wraps a layer cache.
    #[must_use]
    pub fn new(layer: LayerCache<T, P>) -> Self {
        Self { layer }
    }

    /// The wrapped layer cache (positions, scores, `kv_bytes`, ...).
    #[must_use]
    pub fn layer(&self) -> &LayerCache<T, P> {
        &self.layer
    }

    /// Mutable access to the wrapped layer cache (`reset`, slice-level calls).
    pub fn layer_mut(&mut self) -> &mut LayerCache<T, P> {
        &mut self.layer
    }

    /// Unwraps the layer cache.
    #[must_use]
    pub fn into_inner(self) -> LayerCache<T, P> {
        self.layer
    }

    /// One decode step: insert the token's `key`/`value` `[n_kv_heads,
    /// head_dim]`, attend with `query` `[n_heads, head_dim]`, evict to the
    /// budget. Returns the attention output `[n_heads, head_dim]` in the
    /// query's dtype, on the query's device.
    ///
    /// # Errors
    /// [`Error::Shape`], [`Error::DType`], then as [`LayerCache::step`]
    /// (non-finite values, a full cache at capacity).
    pub fn step(&mut self, query: &Tensor, key: &Tensor, value: &Tensor) -> Result<Tensor> {
        TensorLayer(&mut self.layer).step(query, key, value)
    }

    /// Prefill of a `[seq, ...]` chunk as one call: `query` `[seq, n_heads,
    /// head_dim]`, `key`/`value` `[seq, n_kv_heads, head_dim]`. Causal
    /// attention (row `i` sees every resident token and chunk rows `0..=i`),
    /// each token scored by the sum of the weights it received, then one
    /// eviction down to the budget (see [`LayerCache::prefill`]). Returns the
    /// outputs `[seq, n_heads, head_dim]`.
    ///
    /// Allocates O(seq · (len + seq)) scratch inside the cache for the call.
    ///
    /// # Errors
    /// [`Error::Shape`] (including unequal `seq`), [`Error::DType`], then as
    /// [`LayerCache::prefill`].
    pub fn prefill(&mut self, query: &Tensor, key: &Tensor, value: &Tensor) -> Result<Tensor> {
        TensorLayer(&mut self.layer).prefill(query, key, value)
    }

    /// A prefill (shapes as [`prefill`](Self::prefill)) whose one eviction
    /// at the end keeps, in each KV head, the prompt tokens SnapKV selects
    /// (Li et al., NeurIPS 2024, arXiv:2404.14469, §4): the newest
    /// `snap.window()` tokens (the observation window, at least the policy's
    /// recent window) and the sinks, plus the tokens the last
    /// `snap.window()` queries of the chunk attended to most, max-pooled
    /// over `snap.kernel()` neighbours. Every kept token keeps its column-sum
    /// score, so decoding then continues under the cache's own policy. A
    /// cache that does not need to evict gets an ordinary prefill. See
    /// [`LayerCache::prefill_snapkv`].
    ///
    /// Allocates O(seq · (len + seq)) scratch inside the cache for the call.
    ///
    /// # Example
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use h2o_kv::{H2O, LayerCache, SnapKv};
    /// use h2o_kv_candle::TensorLayerCache;
    ///
    /// # fn main() -> Result<(), h2o_kv_candle::Error> {
    /// // Keep 8 of a 40-token prompt: the 4-query observation window and the
    /// // 4 tokens those queries attend to most; decode then runs H2O(4, 4).
    /// let layer = LayerCache::<f32, _>::new(4, 2, 8, H2O::new(4, 4)?)?;
    /// let mut cache = TensorLayerCache::new(layer);
    /// let dev = Device::Cpu;
    /// let q = Tensor::randn(0f32, 1.0, (40, 4, 8), &dev)?;
    /// let k = Tensor::randn(0f32, 1.0, (40, 2, 8), &dev)?;
    /// let v = Tensor::randn(0f32, 1.0, (40, 2, 8), &dev)?;
    /// let out = cache.prefill_snapkv(&SnapKv::new(4, 7)?, &q, &k, &v)?;
    /// assert_eq!((out.dims(), cache.layer().len()), (&[40usize, 4, 8][..], 8));
    /// // The observation window (the 4 newest tokens) is always kept.
    /// assert!(cache.layer().heads()[0].planner().resident_positions().ends_with(&[36, 37, 38, 39]));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`prefill`](Self::prefill); nothing changes on an error.
    pub fn prefill_snapkv(
        &mut self,
        snap: &SnapKv,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
    ) -> Result<Tensor> {
        TensorLayer(&mut self.layer).prefill_snapkv(snap, query, key, value)
    }

    /// What [`prefill`](Self::prefill) of the prompt `source` holds would
    /// leave in this empty cache, without running the attention again:
    /// `source` (typically a full cache) took the prompt and never evicted,
    /// so its scores are the prompt's column sums, and this cache keeps, by
    /// its own policy, the rows of the tokens it would have kept (see
    /// [`LayerCache::prefill_from`]). O(prompt · head_dim) per KV head
    /// instead of the prefill's O(prompt² · head_dim) attention; the
    /// prefill's outputs are `source`'s.
    ///
    /// # Example
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use h2o_kv::{Full, H2O, LayerCache};
    /// use h2o_kv_candle::TensorLayerCache;
    ///
    /// # fn main() -> Result<(), h2o_kv_candle::Error> {
    /// let dev = Device::Cpu;
    /// let q = Tensor::randn(0f32, 1.0, (30, 4, 8), &dev)?;
    /// let k = Tensor::randn(0f32, 1.0, (30, 2, 8), &dev)?;
    /// let mut full = TensorLayerCache::new(LayerCache::<f32, _>::new(4, 2, 8, Full::new(64)?)?);
    /// full.prefill(&q, &k, &k)?; // the one O(P²) attention
    /// let mut h2o = TensorLayerCache::new(LayerCache::<f32, _>::new(4, 2, 8, H2O::new(4, 4)?)?);
    /// h2o.prefill_from(&full)?;
    /// let mut direct = TensorLayerCache::new(LayerCache::<f32, _>::new(4, 2, 8, H2O::new(4, 4)?)?);
    /// direct.prefill(&q, &k, &k)?;
    /// let positions = |c: &TensorLayerCache<f32, H2O>| {
    ///     c.layer().heads().iter().map(|h| h.planner().resident_positions()).collect::<Vec<_>>()
    /// };
    /// assert_eq!(positions(&h2o), positions(&direct));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`LayerCache::prefill_from`] (this cache is not empty, `source`
    /// evicted or has other head counts); nothing changes on an error.
    pub fn prefill_from<Q: EvictionPolicy>(
        &mut self,
        source: &TensorLayerCache<T, Q>,
    ) -> Result<()> {
        Ok(self.layer.prefill_from(&source.layer)?)
    }

    /// `seq` decode steps in a row, one per token of the chunk (same shapes as
    /// [`prefill`](Self::prefill)): token `i` is inserted, attends and the
    /// cache evicts before token `i + 1` comes. This is exactly what decoding
    /// the chunk token by token does, so teacher-forced evaluation of an
    /// evicting policy can batch everything but the attention.
    ///
    /// # Errors
    /// As [`prefill`](Self::prefill) for the shapes; then as
    /// [`LayerCache::step`]. Every row is checked for finiteness before the
    /// first step, so a bad value changes nothing; a full cache that runs
    /// out of capacity part-way stops there with
    /// [`h2o_kv::Error::CapacityExceeded`] (check the room first: see
    /// [`crate::llama::LlamaCache`]).
    pub fn step_sequence(
        &mut self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
    ) -> Result<Tensor> {
        TensorLayer(&mut self.layer).step_sequence(query, key, value)
    }
}

/// A layer cache owned elsewhere (a [`ModelCache`](h2o_kv::ModelCache)'s
/// layer, handed out under its turn rule), driven with tensors: the bodies
/// of [`TensorLayerCache`]'s calls.
pub(crate) struct TensorLayer<'a, T: Element, P: EvictionPolicy>(
    pub(crate) &'a mut LayerCache<T, P>,
);

impl<T: Element + WithDType, P: EvictionPolicy> TensorLayer<'_, T, P> {
    /// See [`TensorLayerCache::step`].
    pub(crate) fn step(&mut self, query: &Tensor, key: &Tensor, value: &Tensor) -> Result<Tensor> {
        let (h, kv, d) = self.dims();
        let q = host_rows::<T>("query", query, &[h, d])?;
        let k = host_rows::<T>("key", key, &[kv, d])?;
        let v = host_rows::<T>("value", value, &[kv, d])?;
        let out = self.0.step(&q, &k, &v)?;
        output(out, &[h, d], query)
    }

    /// See [`TensorLayerCache::prefill`].
    pub(crate) fn prefill(
        &mut self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
    ) -> Result<Tensor> {
        self.prefill_with(None, query, key, value)
    }

    /// See [`TensorLayerCache::prefill_snapkv`].
    pub(crate) fn prefill_snapkv(
        &mut self,
        snap: &SnapKv,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
    ) -> Result<Tensor> {
        self.prefill_with(Some(snap), query, key, value)
    }

    fn prefill_with(
        &mut self,
        snap: Option<&SnapKv>,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
    ) -> Result<Tensor> {
        let (h, kv, d) = self.dims();
        let seq = query.dims().first().copied().unwrap_or(0);
        let q = host_rows::<T>("query", query, &[seq, h, d])?;
        let k = host_rows::<T>("key", key, &[seq, kv, d])?;
        let v = host_rows::<T>("value", value, &[seq, kv, d])?;
        let mut out = vec![T::default(); seq * h * d];
        match snap {
            Some(snap) => self.0.prefill_snapkv(snap, &q, &k, &v, &mut out)?,
            None => self.0.prefill(&q, &k, &v, &mut out)?,
        }
        output(&out, &[seq, h, d], query)
    }

    /// See [`TensorLayerCache::step_sequence`].
    pub(crate) fn step_sequence(
        &mut self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
    ) -> Result<Tensor> {
        let (h, kv, d) = self.dims();
        let seq = query.dims().first().copied().unwrap_or(0);
        let q = host_rows::<T>("query", query, &[seq, h, d])?;
        let k = host_rows::<T>("key", key, &[seq, kv, d])?;
        let v = host_rows::<T>("value", value, &[seq, kv, d])?;
        for (what, x) in [("query", &q), ("key", &k), ("value", &v)] {
            if let Some(index) = x.iter().position(|e| !e.to_acc().widen().is_finite()) {
                let value = x[index].to_acc().widen();
                return Err(h2o_kv::Error::NonFinite { what, index, value }.into());
            }
        }
        let mut out = vec![T::default(); seq * h * d];
        for i in 0..seq {
            let o = self.0.step(
                &q[i * h * d..][..h * d],
                &k[i * kv * d..][..kv * d],
                &v[i * kv * d..][..kv * d],
            )?;
            out[i * h * d..][..h * d].copy_from_slice(o);
        }
        output(&out, &[seq, h, d], query)
    }

    fn dims(&self) -> (usize, usize, usize) {
        (self.0.n_heads(), self.0.n_kv_heads(), self.0.head_dim())
    }
}

/// Checks `t`'s dtype and shape, then copies it to a host vector of `T`.
fn host_rows<T: WithDType>(what: &'static str, t: &Tensor, dims: &[usize]) -> Result<Vec<T>> {
    if !t.dtype().is_float() {
        return Err(Error::DType { what, dtype: t.dtype() });
    }
    if t.dims() != dims {
        return Err(Error::Shape { what, got: t.dims().to_vec(), expected: format!("{dims:?}") });
    }
    let t = if t.device().is_cpu() { t.clone() } else { t.to_device(&Device::Cpu)? };
    Ok(t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?)
}

/// The output tensor in the query's dtype, on the query's device.
fn output<T: WithDType>(out: &[T], dims: &[usize], query: &Tensor) -> Result<Tensor> {
    let t = Tensor::from_slice(out, dims, &Device::Cpu)?;
    let t = if query.dtype() == T::DTYPE { t } else { t.to_dtype(query.dtype())? };
    if query.device().is_cpu() { Ok(t) } else { Ok(t.to_device(query.device())?) }
}
