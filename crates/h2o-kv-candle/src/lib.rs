//! [h2o-kv](h2o_kv) inside [candle](candle_core): bounded-memory KV caches
//! (H2O and the other policies) for candle models, and a Llama-family GGUF
//! model whose every attention layer runs through them.
//!
//! # Overview
//! - [`TensorLayerCache`]: one layer's cache driven with candle tensors
//!   (query `[n_heads, head_dim]`, key/value `[n_kv_heads, head_dim]`,
//!   f32/f16/bf16; prefill of `[seq, ...]`, by the policy or by SnapKV's
//!   selection; a prefill derived from a full cache's), for your own model code.
//! - [`llama`]: a Llama-family GGUF model (SmolLM2, Llama, TinyLlama, ...)
//!   with quantized weights through candle's `QMatMul`, one policy and budget
//!   per layer ([`llama::LlamaCache`], an [`h2o_kv::ModelCache`] underneath), the tokenizer built from the GGUF's own
//!   vocabulary and merges, and the chat template; one prompt prefilled into
//!   many caches with one attention ([`llama::Llama::prefill_shared`]) and
//!   their decode steps batched ([`llama::Llama::decode_shared`]).
//! - [`locate`]: finding model and data files at run time.
//!
//! # Devices
//! The caches live in host memory; tensors on another device are copied to
//! the host and back (see [`TensorLayerCache`]). The model loads on the CPU.
//!
//! # Example
//! See [`TensorLayerCache`] for a layer and [`llama`] for a whole model.

#![doc(test(attr(deny(warnings))))]

mod adapter;
mod error;
pub mod llama;
pub mod locate;

pub use adapter::TensorLayerCache;
pub use error::{Error, Result};
