//! Shared helpers: the real model (or a skip), and a tiny synthetic GGUF.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use h2o_kv_candle::locate::{SMOLLM2_FILE, SMOLLM2_HINT, find_model};

/// The SmolLM2 GGUF, or `None` after printing "skipped" (a failure under CI=true).
pub fn smollm2(test: &str) -> Option<PathBuf> {
    match find_model(None, SMOLLM2_FILE, SMOLLM2_HINT) {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: the model file is required under CI=true: {e}"
            );
            eprintln!("skipped {test}: {e}");
            None
        }
    }
}

/// What to break in the synthetic model.
#[derive(Debug, Clone)]
pub struct Tiny {
    pub arch: &'static str,
    pub weight_type: GgmlDType,
    /// Tokens in the tokenizer (the embedding has `VOCAB` rows).
    pub tokens: usize,
    pub context: u32,
}

pub const VOCAB: usize = 10;
pub const DIM: usize = 256;

impl Default for Tiny {
    fn default() -> Self {
        Self { arch: "llama", weight_type: GgmlDType::F32, tokens: VOCAB, context: 16 }
    }
}

/// A 2-layer Llama GGUF with random weights: width 256 (the k-quant block),
/// 2 query heads, 1 KV head (head_dim 128), MLP 64, a 10-token byte-level
/// vocabulary.
pub fn tiny_gguf(t: &Tiny) -> Vec<u8> {
    let dev = Device::Cpu;
    let words =
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "d", "e", "f", "ab", "x"];
    let tokens: Vec<Value> = words[..t.tokens].iter().map(|w| Value::String((*w).into())).collect();
    let types: Vec<Value> = (0..t.tokens).map(|i| Value::I32(if i < 3 { 3 } else { 1 })).collect();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(t.arch.into())),
        ("llama.block_count", Value::U32(2)),
        ("llama.context_length", Value::U32(t.context)),
        ("llama.embedding_length", Value::U32(DIM as u32)),
        ("llama.feed_forward_length", Value::U32(64)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.rope.dimension_count", Value::U32(128)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(vec![Value::String("a b".into())])),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ];
    let w = |rows: usize, cols: usize, ty: GgmlDType| -> QTensor {
        let t = Tensor::randn(0f32, 0.3, (rows, cols), &dev).unwrap();
        QTensor::quantize(&t, ty).unwrap()
    };
    let ones = |n: usize| {
        QTensor::quantize(&Tensor::ones(n, candle_core::DType::F32, &dev).unwrap(), GgmlDType::F32)
            .unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), w(VOCAB, DIM, GgmlDType::F32)),
        ("output_norm.weight".into(), ones(DIM)),
    ];
    for l in 0..2 {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.push((p("attn_norm"), ones(DIM)));
        tensors.push((p("ffn_norm"), ones(DIM)));
        tensors.push((p("attn_q"), w(DIM, DIM, t.weight_type)));
        tensors.push((p("attn_k"), w(128, DIM, GgmlDType::F32)));
        tensors.push((p("attn_v"), w(128, DIM, GgmlDType::F32)));
        tensors.push((p("attn_output"), w(DIM, DIM, GgmlDType::F32)));
        tensors.push((p("ffn_gate"), w(64, DIM, GgmlDType::F32)));
        tensors.push((p("ffn_up"), w(64, DIM, GgmlDType::F32)));
        tensors.push((p("ffn_down"), w(DIM, 64, GgmlDType::F32)));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
    out.into_inner()
}

/// Writes `bytes` to a fresh file in the target directory and returns its path.
///
/// Each call gets its own file (process id and a counter in the name), so tests
/// running in parallel never read a file another test is rewriting.
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let p = dir.join(format!("{}-{n}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}
