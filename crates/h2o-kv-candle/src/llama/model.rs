//! [`Llama`]: the weights and the forward pass.

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use h2o_kv::{AnyPolicy, EvictionPolicy, Full, LayerCache};

use super::cache::LlamaCache;
use super::config::Config;
use super::rope::Rope;
use crate::adapter::TensorLayerCache;
use crate::error::{Error, Result};

/// Weight types [`Llama`] multiplies with (through candle's `QMatMul`).
pub const SUPPORTED_TYPES: [GgmlDType; 13] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// A Llama-family decoder (SmolLM2, Llama 2/3, TinyLlama, ...) loaded from
/// GGUF, whose attention runs through h2o-kv caches.
///
/// Per block: RMSNorm → Q/K/V projections (`QMatMul`) → RoPE at the token's
/// absolute position → attention through the layer's
/// [`TensorLayerCache`](crate::TensorLayerCache) → output projection →
/// residual; RMSNorm → SwiGLU MLP → residual. A final RMSNorm and the output
/// projection (tied to the token embedding when the GGUF has no
/// `output.weight`) give the logits.
///
/// The weights are immutable: every method takes the sequence's
/// [`LlamaCache`], so one model serves many caches.
///
/// # Positions
/// Token `i` of a sequence is rotated at position `i`, whatever was evicted.
/// With an evicting policy a sequence may run past `context_length`: the
/// positions keep counting, beyond what the model was trained on.
///
/// # Errors, never panics
/// Every method checks the token ids, and that full caches have room, before
/// it touches a cache. A failure inside a layer (a non-finite activation)
/// leaves the earlier layers having taken the tokens: reset the cache then.
#[derive(Debug, Clone)]
pub struct Llama {
    config: Config,
    embedding: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    output: QMatMul,
    rope: Rope,
}

/// How a chunk's attention runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attention {
    /// One prefill call per layer: causal attention, one eviction at the end.
    Prefill,
    /// One decode step per token (teacher forcing).
    Steps,
    /// One prefill attention per layer for all caches: a non-evicting cache
    /// (or a temporary full one) prefills, the others derive from it
    /// (SnapKV caches prefill themselves: they need the prompt's queries).
    Shared,
}

fn read_tensor<R: Read + Seek>(
    ct: &Content,
    r: &mut R,
    name: &str,
    dims: &[usize],
    device: &Device,
) -> Result<QTensor> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| Error::Tensor { name: name.into(), reason: "missing".into() })?;
    if info.shape.dims() != dims {
        return Err(Error::Tensor {
            name: name.into(),
            reason: format!("shape {:?}, expected {dims:?}", info.shape.dims()),
        });
    }
    if !SUPPORTED_TYPES.contains(&info.ggml_dtype) {
        return Err(Error::UnsupportedQuantization { tensor: name.into(), dtype: info.ggml_dtype });
    }
    Ok(ct.tensor(r, name, device)?)
}

impl Llama {
    /// Loads the weights of a `llama` GGUF already opened with
    /// [`open_gguf`](super::open_gguf) (or candle's `Content::read`).
    ///
    /// # Errors
    /// As [`Config::from_gguf`]; [`Error::Tensor`] for a missing or
    /// misshapen tensor; [`Error::UnsupportedQuantization`] for a type outside
    /// [`SUPPORTED_TYPES`]; [`Error::Candle`] if the data cannot be read.
    pub fn from_gguf<R: Read + Seek>(
        ct: &Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let c = Config::from_gguf(ct)?;
        let kv = c.n_kv_heads * c.head_dim;
        let mut t = |name: &str, dims: &[usize]| read_tensor(ct, reader, name, dims, device);
        let embd_q = t("token_embd.weight", &[c.vocab_size, c.dim])?;
        let embedding = embd_q.dequantize(device)?;
        let norm = t("output_norm.weight", &[c.dim])?.dequantize(device)?;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            t("output.weight", &[c.vocab_size, c.dim])?
        } else {
            embd_q
        };
        let mut blocks = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let mut m = |n: &str, dims: &[usize]| -> Result<QMatMul> {
                Ok(QMatMul::from_qtensor(t(&format!("blk.{l}.{n}.weight"), dims)?)?)
            };
            let (wq, wk, wv) = (
                m("attn_q", &[c.dim, c.dim])?,
                m("attn_k", &[kv, c.dim])?,
                m("attn_v", &[kv, c.dim])?,
            );
            let wo = m("attn_output", &[c.dim, c.dim])?;
            let gate = m("ffn_gate", &[c.ffn_dim, c.dim])?;
            let up = m("ffn_up", &[c.ffn_dim, c.dim])?;
            let down = m("ffn_down", &[c.dim, c.ffn_dim])?;
            let attn_norm =
                t(&format!("blk.{l}.attn_norm.weight"), &[c.dim])?.dequantize(device)?;
            let ffn_norm = t(&format!("blk.{l}.ffn_norm.weight"), &[c.dim])?.dequantize(device)?;
            blocks.push(Block { attn_norm, wq, wk, wv, wo, ffn_norm, gate, up, down });
        }
        let rope = Rope::new(c.head_dim, c.rope_theta, c.rope_layout);
        Ok(Self {
            output: QMatMul::from_qtensor(output)?,
            config: c,
            embedding,
            blocks,
            norm,
            rope,
        })
    }

    /// The same model with RoPE base `theta` instead of the GGUF's (for
    /// experiments: the GGUF's value is the one the model was trained with).
    ///
    /// # Errors
    /// [`Error::Metadata`] unless `theta` is finite and above 1.
    pub fn with_rope_theta(mut self, theta: f32) -> Result<Self> {
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::Metadata {
                key: "llama.rope.freq_base".into(),
                reason: format!("{theta} is not a usable base"),
            });
        }
        self.config.rope_theta = theta;
        self.rope = Rope::new(self.config.head_dim, theta, self.config.rope_layout);
        Ok(self)
    }

    /// The same model with every quantized weight dequantized to f32, so the
    /// matrix products run in candle's f32 GEMM instead of its quantized
    /// kernels. The weights are the same numbers; activations are no longer
    /// rounded to 8 bits before each product. Costs 4 bytes per parameter
    /// (about 540 MB for SmolLM2-135M). On a CPU this is much faster for
    /// batched work (a 512-token teacher-forced window ran 14× faster here)
    /// and slower for single-token decoding, which is bound by reading the
    /// weights.
    ///
    /// # Errors
    /// [`Error::Candle`] if a weight cannot be dequantized.
    pub fn dequantized(&self) -> Result<Self> {
        let deq = |m: &QMatMul| -> Result<QMatMul> {
            Ok(match m {
                QMatMul::QTensor(q) => QMatMul::Tensor(q.dequantize(&q.device())?),
                other => other.clone(),
            })
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    wq: deq(&b.wq)?,
                    wk: deq(&b.wk)?,
                    wv: deq(&b.wv)?,
                    wo: deq(&b.wo)?,
                    gate: deq(&b.gate)?,
                    up: deq(&b.up)?,
                    down: deq(&b.down)?,
                    ..b.clone()
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { blocks, output: deq(&self.output)?, ..self.clone() })
    }

    /// The model's configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Feeds `tokens` (a prompt as one prefill, or one token as a decode
    /// step) and returns the logits `[vocab]` after the last one. A prefill
    /// evicts once at its end, by the policy's order or, for a cache made
    /// [`with_snapkv`](LlamaCache::with_snapkv), by SnapKV's selection.
    ///
    /// # Errors
    /// [`Error::NoTokens`], [`Error::TokenOutOfRange`],
    /// [`Error::ContextExceeded`] (a full cache without room), checked before
    /// anything changes; then candle or cache errors.
    pub fn forward(&self, cache: &mut LlamaCache, tokens: &[u32]) -> Result<Tensor> {
        let h = self.run(std::slice::from_mut(cache), tokens, Attention::Prefill)?;
        let last = h.narrow(0, tokens.len() - 1, 1)?;
        Ok(self.output.forward(&last)?.squeeze(0)?)
    }

    /// As [`forward`](Self::forward) (one prefill), but returns the logits
    /// at every position, `[seq, vocab]`.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_all(&self, cache: &mut LlamaCache, tokens: &[u32]) -> Result<Tensor> {
        let h = self.run(std::slice::from_mut(cache), tokens, Attention::Prefill)?;
        Ok(self.output.forward(&h)?)
    }

    /// Teacher-forced logits `[seq, vocab]`: exactly what decoding `tokens`
    /// one at a time would give at each position, under any policy.
    ///
    /// The model runs layer by layer over the whole chunk: the projections
    /// and the MLP are batched matrix products over the chunk, and only the
    /// attention runs token by token through the layer's cache (insert,
    /// attend, evict per token). This is exact because a layer's cache
    /// depends only on that layer's inputs, which teacher forcing fixes.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn teacher_forced(&self, cache: &mut LlamaCache, tokens: &[u32]) -> Result<Tensor> {
        let h = self.run(std::slice::from_mut(cache), tokens, Attention::Steps)?;
        Ok(self.output.forward(&h)?)
    }

    /// One prompt prefilled into several empty caches at once (e.g. one per
    /// policy), returning the logits `[vocab]` after the last token, which
    /// are the same for every cache.
    ///
    /// A prefill attends causally over the whole prompt and evicts only at
    /// its end, so its activations do not depend on the policy: the matrix
    /// products run once. So does the attention: per layer, the first cache
    /// that does not evict (a full cache), or a temporary full layer if there
    /// is none, runs the prefill, and every other cache derives its prefill
    /// from it ([`TensorLayerCache::prefill_from`](crate::TensorLayerCache::prefill_from):
    /// the rows its policy keeps, scored by the column sums). Only a cache
    /// made [`with_snapkv`](LlamaCache::with_snapkv) runs its own attention,
    /// since SnapKV needs the last prompt queries' weights. Each cache ends
    /// as it would alone (the scores up to the order of their f64 sums).
    ///
    /// # Errors
    /// [`Error::NotEmpty`] unless every cache is empty; [`Error::LayerCount`]
    /// if a cache has another number of layers; then as
    /// [`forward`](Self::forward).
    pub fn prefill_shared(&self, caches: &mut [LlamaCache], tokens: &[u32]) -> Result<Tensor> {
        for (index, c) in caches.iter().enumerate() {
            if c.next_position() != 0 {
                return Err(Error::NotEmpty { index, len: c.resident_tokens() });
            }
        }
        let h = self.run(caches, tokens, Attention::Shared)?;
        let last = h.narrow(0, tokens.len() - 1, 1)?;
        Ok(self.output.forward(&last)?.squeeze(0)?)
    }

    /// One decode step for several caches at once, each with its own token
    /// (`tokens[i]` goes to `caches[i]`, at that cache's next position), e.g.
    /// one cache per policy after [`prefill_shared`](Self::prefill_shared).
    /// Returns the logits `[caches, vocab]`, row `i` for `caches[i]`.
    ///
    /// The matrix products run once over all rows, so the weights are read
    /// once for the whole batch instead of once per cache (a single-token step
    /// is bound by reading them); each cache then attends with its own row.
    /// Row `i` equals `forward(&mut caches[i], &[tokens[i]])` up to the
    /// rounding of the batched products.
    ///
    /// # Errors
    /// [`Error::NoTokens`]; [`Error::BatchMismatch`] unless there is one token
    /// per cache; [`Error::TokenOutOfRange`], [`Error::LayerCount`],
    /// [`Error::ContextExceeded`], checked for every cache before any
    /// changes; then candle or cache errors.
    pub fn decode_shared(&self, caches: &mut [LlamaCache], tokens: &[u32]) -> Result<Tensor> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(Error::NoTokens);
        }
        if tokens.len() != caches.len() {
            return Err(Error::BatchMismatch { tokens: tokens.len(), caches: caches.len() });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab: c.vocab_size });
        }
        for cache in caches.iter() {
            if cache.layers().len() != c.n_layers {
                return Err(Error::LayerCount { got: cache.layers().len(), layers: c.n_layers });
            }
            cache.check_room(1)?;
        }
        let n = tokens.len();
        let positions: Vec<u64> = caches.iter().map(LlamaCache::next_position).collect();
        let ids = Tensor::new(tokens, self.embedding.device())?;
        let mut x = self.embedding.index_select(&ids, 0)?; // [n, dim]
        let eps = c.rms_eps as f32;
        let mut rows = Vec::with_capacity(n);
        for (l, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let q = b.wq.forward(&h)?.reshape((n, c.n_heads, c.head_dim))?;
            let k = b.wk.forward(&h)?.reshape((n, c.n_kv_heads, c.head_dim))?;
            let v = b.wv.forward(&h)?.reshape((n, c.n_kv_heads, c.head_dim))?;
            let q = self.rope.apply_at(&q, &positions)?;
            let k = self.rope.apply_at(&k, &positions)?;
            rows.clear();
            for (i, cache) in caches.iter_mut().enumerate() {
                let mut layer = cache.layer_in_turn(l, 1)?;
                rows.push(layer.step(&q.get(i)?, &k.get(i)?, &v.get(i)?)?);
            }
            let attn = Tensor::stack(&rows, 0)?.reshape((n, c.dim))?;
            x = self.finish_block(b, &x, &attn)?;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        Ok(self.output.forward(&x)?)
    }

    /// The rest of a block after its attention `attn` `[rows, dim]`: the
    /// output projection and residual, then RMSNorm → SwiGLU MLP → residual.
    fn finish_block(&self, b: &Block, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
        let x = (x + b.wo.forward(attn)?)?;
        let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, self.config.rms_eps as f32)?;
        let gate = candle_nn::ops::silu(&b.gate.forward(&h)?)?;
        let mlp = b.down.forward(&(gate * b.up.forward(&h)?)?)?;
        Ok((x + mlp)?)
    }

    /// The final normalised hidden states `[seq, dim]`; `caches[0]`'s
    /// attention output feeds the next layer, the others only take the
    /// tokens.
    fn run(&self, caches: &mut [LlamaCache], tokens: &[u32], mode: Attention) -> Result<Tensor> {
        let c = &self.config;
        if tokens.is_empty() || caches.is_empty() {
            return Err(Error::NoTokens);
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab: c.vocab_size });
        }
        for cache in caches.iter() {
            if cache.layers().len() != c.n_layers {
                return Err(Error::LayerCount { got: cache.layers().len(), layers: c.n_layers });
            }
            cache.check_room(tokens.len())?;
        }
        let seq = tokens.len();
        let device = self.embedding.device();
        let ids = Tensor::new(tokens, device)?;
        let mut x = self.embedding.index_select(&ids, 0)?; // [seq, dim]
        let eps = c.rms_eps as f32;
        let start = caches[0].next_position();
        for (l, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let q = b.wq.forward(&h)?.reshape((seq, c.n_heads, c.head_dim))?;
            let k = b.wk.forward(&h)?.reshape((seq, c.n_kv_heads, c.head_dim))?;
            let v = b.wv.forward(&h)?.reshape((seq, c.n_kv_heads, c.head_dim))?;
            let q = self.rope.apply(&q, start)?;
            let k = self.rope.apply(&k, start)?;
            let attn = if mode == Attention::Shared && seq > 1 {
                shared_prefill(caches, l, &q, &k, &v)?
            } else {
                // Every cache takes the chunk; the first one's output goes on.
                let mut first = None;
                for cache in caches.iter_mut() {
                    let snap = cache.snapkv().copied();
                    let mut layer = cache.layer_in_turn(l, seq)?;
                    let out = match (mode, seq, snap) {
                        (_, 1, _) => layer
                            .step(&q.squeeze(0)?, &k.squeeze(0)?, &v.squeeze(0)?)?
                            .unsqueeze(0)?,
                        (Attention::Steps, _, _) => layer.step_sequence(&q, &k, &v)?,
                        (_, _, Some(snap)) => layer.prefill_snapkv(&snap, &q, &k, &v)?,
                        (_, _, None) => layer.prefill(&q, &k, &v)?,
                    };
                    first.get_or_insert(out);
                }
                first.ok_or(Error::NoTokens)?
            };
            x = self.finish_block(b, &x, &attn.reshape((seq, c.dim))?)?;
        }
        Ok(candle_nn::ops::rms_norm(&x, &self.norm, eps)?)
    }
}

/// Layer `l`'s prefill for every cache with one attention (see
/// [`Llama::prefill_shared`]); returns the attention output `[seq, n_heads,
/// head_dim]`, the same for every cache.
fn shared_prefill(
    caches: &mut [LlamaCache],
    l: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<Tensor> {
    let seq = q.dims()[0];
    let source = caches
        .iter()
        .position(|c| c.snapkv().is_none() && !c.layers()[l].heads()[0].policy().evicts());
    let (out, temporary) = match source {
        Some(s) => (caches[s].layer_in_turn(l, seq)?.prefill(q, k, v)?, None),
        None => {
            let like = &caches[0].layers()[l];
            let full = AnyPolicy::from(Full::new(seq)?);
            let layer = LayerCache::new(like.n_heads(), like.n_kv_heads(), like.head_dim(), full)?;
            let mut full = TensorLayerCache::new(layer);
            (full.prefill(q, k, v)?, Some(full))
        }
    };
    for i in (0..caches.len()).filter(|&i| Some(i) != source) {
        if let Some(snap) = caches[i].snapkv().copied() {
            caches[i].layer_in_turn(l, seq)?.prefill_snapkv(&snap, q, k, v)?;
        } else if let Some(full) = &temporary {
            caches[i].layer_in_turn(l, seq)?.0.prefill_from(full.layer())?;
        } else if let Some(s) = source {
            let (target, from) = pair(caches, i, s);
            target.layer_in_turn(l, seq)?.0.prefill_from(&from.layers()[l])?;
        }
    }
    Ok(out)
}

/// `caches[i]` mutably and `caches[s]` shared, `i != s`.
fn pair(caches: &mut [LlamaCache], i: usize, s: usize) -> (&mut LlamaCache, &LlamaCache) {
    if i < s {
        let (a, b) = caches.split_at_mut(s);
        (&mut a[i], &b[0])
    } else {
        let (a, b) = caches.split_at_mut(i);
        (&mut b[0], &a[s])
    }
}
