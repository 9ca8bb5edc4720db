//! [`LlamaCache`]: one sequence's KV caches, one per layer.

use h2o_kv::{AnyPolicy, EvictionPolicy, Full, LayerCache, ModelCache, SnapKv};

use super::config::Config;
use crate::adapter::TensorLayer;
use crate::error::{Error, Result};

/// One sequence's KV caches for every layer of a [`Llama`](super::Llama):
/// a policy and budget per layer (the same for all, or a list), held in one
/// [`h2o_kv::ModelCache`] (one position counter; the model drives its layers
/// in turn, and [`model`](Self::model) gives read access to everything it
/// offers, such as snapshots and per-layer inspection).
///
/// The model weights are shared and immutable; a `LlamaCache` is the state of
/// one sequence, so many can run on one model (one per policy in an eval, one
/// per user in a server).
///
/// # Example
/// ```
/// use h2o_kv::{AnyPolicy, H2O, Recent};
/// use h2o_kv_candle::llama::{Config, LlamaCache, RopeLayout};
///
/// # fn main() -> Result<(), h2o_kv_candle::Error> {
/// let config = Config {
///     n_layers: 3, dim: 16, ffn_dim: 32, n_heads: 4, n_kv_heads: 2, head_dim: 4,
///     rope_theta: 10_000.0, rope_layout: RopeLayout::Interleaved, rms_eps: 1e-5,
///     context_length: 64, vocab_size: 10,
/// };
/// // H2O with 8 + 8 tokens in every layer.
/// let cache = LlamaCache::new(&config, H2O::new(8, 8)?.into())?;
/// assert_eq!(cache.layers().len(), 3);
/// // A per-layer schedule: wider budgets in the lower layers.
/// let schedule: Vec<AnyPolicy> =
///     [32, 16, 8].iter().map(|&b| Recent::new(b).map(Into::into)).collect::<Result<_, _>>()?;
/// let cache = LlamaCache::per_layer(&config, &schedule)?;
/// assert_eq!(cache.layers()[2].budget(), 8);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LlamaCache {
    model: ModelCache<f32, AnyPolicy>,
    /// How a multi-token prefill chooses what stays: `None` by the policy
    /// (column-sum scores), `Some` by SnapKV.
    snapkv: Option<SnapKv>,
}

impl LlamaCache {
    /// The same `policy` in every layer. The cache stores f32 keys and values.
    ///
    /// # Errors
    /// As [`LayerCache::new`] (an impossible allocation, bad head counts).
    pub fn new(config: &Config, policy: AnyPolicy) -> Result<Self> {
        Self::per_layer(config, &vec![policy; config.n_layers])
    }

    /// A full cache of the model's context length in every layer: exact
    /// attention, and an [`Error::ContextExceeded`] past the context.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn full(config: &Config) -> Result<Self> {
        Self::new(config, Full::new(config.context_length)?.into())
    }

    /// `policies[l]` in layer `l` (e.g. a per-layer budget schedule).
    ///
    /// # Errors
    /// [`Error::LayerCount`] unless there is one policy per layer; then as
    /// [`LayerCache::new`].
    pub fn per_layer(config: &Config, policies: &[AnyPolicy]) -> Result<Self> {
        if policies.len() != config.n_layers {
            return Err(Error::LayerCount { got: policies.len(), layers: config.n_layers });
        }
        let model = ModelCache::with_policies(
            config.n_heads,
            config.n_kv_heads,
            config.head_dim,
            policies.iter().copied(),
        )?;
        Ok(Self { model, snapkv: None })
    }

    /// The same cache, whose prompt prefills select the tokens to keep with
    /// SnapKV (Li et al., NeurIPS 2024, arXiv:2404.14469, §4) instead of the
    /// policy's order: the observation window (the last `snap.window()`
    /// prompt tokens, at least the policy's recent window) and the sinks,
    /// plus the prompt tokens those last queries attended to most, max-pooled
    /// over `snap.kernel()` neighbours (see
    /// [`TensorLayerCache::prefill_snapkv`](crate::TensorLayerCache::prefill_snapkv)). Decode steps run under each
    /// layer's policy as before. The paper's setting is an H2O policy whose
    /// recent window is the observation window (`H2O::new(budget − 32, 32)`
    /// with `SnapKv::default()`).
    ///
    /// # Example
    /// ```
    /// use h2o_kv::{H2O, SnapKv};
    /// use h2o_kv_candle::llama::{Config, LlamaCache, RopeLayout};
    ///
    /// # fn main() -> Result<(), h2o_kv_candle::Error> {
    /// let config = Config {
    ///     n_layers: 2, dim: 16, ffn_dim: 32, n_heads: 4, n_kv_heads: 2, head_dim: 4,
    ///     rope_theta: 10_000.0, rope_layout: RopeLayout::Interleaved, rms_eps: 1e-5,
    ///     context_length: 64, vocab_size: 10,
    /// };
    /// let cache = LlamaCache::new(&config, H2O::new(96, 32)?.into())?.with_snapkv(SnapKv::default());
    /// assert_eq!(cache.snapkv().map(|s| (s.window(), s.kernel())), Some((32, 7)));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_snapkv(self, snap: SnapKv) -> Self {
        Self { snapkv: Some(snap), ..self }
    }

    /// The SnapKV rule prompt prefills use, if any (see
    /// [`with_snapkv`](Self::with_snapkv)).
    #[must_use]
    pub fn snapkv(&self) -> Option<&SnapKv> {
        self.snapkv.as_ref()
    }

    /// The layers' caches, in layer order.
    #[must_use]
    pub fn layers(&self) -> &[LayerCache<f32, AnyPolicy>] {
        self.model.layers()
    }

    /// The whole-model cache underneath (read-only: positions, budgets,
    /// `kv_bytes`, snapshots).
    #[must_use]
    pub fn model(&self) -> &ModelCache<f32, AnyPolicy> {
        &self.model
    }

    /// Layer `l`, driven with tensors, for a call adding `tokens` tokens
    /// (checked against the model cache's turn rule).
    pub(crate) fn layer_in_turn(
        &mut self,
        l: usize,
        tokens: usize,
    ) -> Result<TensorLayer<'_, f32, AnyPolicy>> {
        Ok(TensorLayer(self.model.layer_in_turn(l, tokens)?))
    }

    /// The position the next token gets (tokens seen so far).
    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.model.position()
    }

    /// Tokens resident per KV head, summed over layers.
    #[must_use]
    pub fn resident_tokens(&self) -> usize {
        self.layers().iter().map(LayerCache::len).sum()
    }

    /// Key and value bytes held by resident tokens, over all layers and heads.
    #[must_use]
    pub fn kv_bytes(&self) -> usize {
        self.model.kv_bytes()
    }

    /// Forgets every token; positions restart at 0.
    pub fn reset(&mut self) {
        self.model.reset();
    }

    /// Whether `n` more tokens fit: an evicting layer always has room; a full
    /// layer holds at most its capacity.
    ///
    /// # Errors
    /// [`Error::ContextExceeded`] for the first full layer without room.
    pub fn check_room(&self, n: usize) -> Result<()> {
        for layer in self.layers() {
            let policy = layer.heads()[0].policy();
            if !policy.evicts() && layer.len() + n > policy.budget() {
                return Err(Error::ContextExceeded {
                    tokens: layer.len() + n,
                    capacity: policy.budget(),
                });
            }
        }
        Ok(())
    }
}
