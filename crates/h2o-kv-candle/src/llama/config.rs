//! The model's hyper-parameters, read from GGUF metadata.

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{Error, Result};

/// How RoPE pairs the elements of a head vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(0, 1), (2, 3), ...`: GGML's "normal" layout, used by every
    /// `llama` GGUF (its Q/K weights are permuted for it at conversion).
    Interleaved,
    /// Pairs `(i, i + d/2)`: GGML's "neox" layout (Qwen, Phi, ...).
    Halves,
}

/// A Llama-family model's shape, read from the GGUF metadata
/// (`llama.*` keys) and the tensor shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Transformer blocks (`llama.block_count`).
    pub n_layers: usize,
    /// Residual width (`llama.embedding_length`).
    pub dim: usize,
    /// SwiGLU hidden width (`llama.feed_forward_length`).
    pub ffn_dim: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads (`llama.attention.head_count_kv`; GQA when fewer).
    pub n_kv_heads: usize,
    /// Elements per head vector (`dim / n_heads`).
    pub head_dim: usize,
    /// RoPE base frequency (`llama.rope.freq_base`, 10000 when absent).
    pub rope_theta: f32,
    /// RoPE pairing, from the architecture (`llama`: interleaved, as llama.cpp).
    pub rope_layout: RopeLayout,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f64,
    /// Context length the model was trained for (`llama.context_length`).
    pub context_length: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab_size: usize,
}

fn get<'a>(ct: &'a Content, key: &str) -> Result<&'a Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| Error::Metadata { key: key.into(), reason: "missing".into() })
}

fn bad(key: &str, e: candle_core::Error) -> Error {
    Error::Metadata { key: key.into(), reason: e.to_string() }
}

pub(crate) fn get_usize(ct: &Content, key: &str) -> Result<usize> {
    let v = get(ct, key)?;
    let n = match v {
        Value::U64(x) => *x,
        Value::I64(x) => u64::try_from(*x).map_err(|_| Error::Metadata {
            key: key.into(),
            reason: format!("negative value {x}"),
        })?,
        _ => u64::from(v.to_u32().map_err(|e| bad(key, e))?),
    };
    usize::try_from(n).map_err(|_| Error::Metadata { key: key.into(), reason: "too large".into() })
}

pub(crate) fn get_str<'a>(ct: &'a Content, key: &str) -> Result<&'a str> {
    Ok(get(ct, key)?.to_string().map_err(|e| bad(key, e))?.as_str())
}

impl Config {
    /// Reads the configuration of a `llama` GGUF.
    ///
    /// # Errors
    /// [`Error::UnsupportedArchitecture`] unless `general.architecture` is
    /// `llama`; [`Error::Metadata`] for a missing or ill-typed key or
    /// inconsistent head counts; [`Error::Tensor`] if `token_embd.weight` is
    /// missing.
    pub fn from_gguf(ct: &Content) -> Result<Self> {
        let arch = get_str(ct, "general.architecture")?;
        if arch != "llama" {
            return Err(Error::UnsupportedArchitecture(arch.to_string()));
        }
        let n_layers = get_usize(ct, "llama.block_count")?;
        let dim = get_usize(ct, "llama.embedding_length")?;
        let ffn_dim = get_usize(ct, "llama.feed_forward_length")?;
        let n_heads = get_usize(ct, "llama.attention.head_count")?;
        let n_kv_heads = get_usize(ct, "llama.attention.head_count_kv").or_else(|e| {
            if ct.metadata.contains_key("llama.attention.head_count_kv") {
                Err(e)
            } else {
                Ok(n_heads)
            }
        })?;
        let context_length = get_usize(ct, "llama.context_length")?;
        let rms_eps = f64::from(
            get(ct, "llama.attention.layer_norm_rms_epsilon")?
                .to_f32()
                .map_err(|e| bad("llama.attention.layer_norm_rms_epsilon", e))?,
        );
        let rope_theta = match ct.metadata.get("llama.rope.freq_base") {
            Some(v) => v.to_f32().map_err(|e| bad("llama.rope.freq_base", e))?,
            None => 10_000.0,
        };
        let invalid =
            |reason: String| Error::Metadata { key: "llama.attention.head_count".into(), reason };
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || dim % n_heads != 0 {
            return Err(invalid(format!(
                "{n_heads} query heads, {n_kv_heads} KV heads and width {dim} do not fit together"
            )));
        }
        let head_dim = dim / n_heads;
        if let Some(v) = ct.metadata.get("llama.rope.dimension_count") {
            let rope_dim = v.to_u32().map_err(|e| bad("llama.rope.dimension_count", e))? as usize;
            if rope_dim != head_dim {
                return Err(Error::Metadata {
                    key: "llama.rope.dimension_count".into(),
                    reason: format!("partial RoPE ({rope_dim} of {head_dim}) is not supported"),
                });
            }
        }
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(Error::Metadata {
                key: "llama.rope.freq_base".into(),
                reason: format!("{rope_theta} is not a usable base"),
            });
        }
        let embd = ct.tensor_infos.get("token_embd.weight").ok_or_else(|| Error::Tensor {
            name: "token_embd.weight".into(),
            reason: "missing".into(),
        })?;
        let vocab_size = match embd.shape.dims() {
            [v, d] if *d == dim => *v,
            dims => {
                return Err(Error::Tensor {
                    name: "token_embd.weight".into(),
                    reason: format!("shape {dims:?}, expected [vocab, {dim}]"),
                });
            }
        };
        Ok(Self {
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta,
            rope_layout: RopeLayout::Interleaved,
            rms_eps,
            context_length,
            vocab_size,
        })
    }
}
