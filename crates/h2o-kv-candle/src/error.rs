//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong when loading a model or driving a cache
/// through tensors.
///
/// A failed call changes nothing: shapes, dtypes and values are checked
/// before any cache is touched.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cache refused the call (shape, non-finite value, capacity, ...).
    #[error(transparent)]
    Cache(#[from] h2o_kv::Error),
    /// A candle operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A tensor argument has the wrong shape.
    #[error("{what} has shape {got:?}, expected {expected}")]
    Shape {
        /// Which argument (`"query"`, `"key"`, `"value"`).
        what: &'static str,
        /// The shape given.
        got: Vec<usize>,
        /// The shape the call needs, in words.
        expected: String,
    },
    /// A tensor argument is not a floating-point tensor.
    #[error("{what} has dtype {dtype:?}; expected f32, f16, bf16 or f64")]
    DType {
        /// Which argument.
        what: &'static str,
        /// The dtype given.
        dtype: candle_core::DType,
    },
    /// A file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file is not a GGUF file, or its header is damaged or cut short.
    #[error("{} is not a readable GGUF file: {reason}", path.display())]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// What the reader found.
        reason: String,
    },
    /// The GGUF's tensor data ends before the last tensor does.
    #[error("{} is truncated: tensor {tensor} needs bytes up to {needed}, the file has {len}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The first tensor that does not fit.
        tensor: String,
        /// Bytes the tensor data needs, from the start of the file.
        needed: u64,
        /// The file's length in bytes.
        len: u64,
    },
    /// `general.architecture` names a model family this crate does not run.
    #[error("unsupported architecture {0:?} (supported: \"llama\")")]
    UnsupportedArchitecture(String),
    /// A weight tensor is stored in a type this crate does not multiply.
    #[error("tensor {tensor} has unsupported type {dtype:?}")]
    UnsupportedQuantization {
        /// The tensor's name.
        tensor: String,
        /// Its GGUF type.
        dtype: candle_core::quantized::GgmlDType,
    },
    /// A metadata key is missing or has the wrong type.
    #[error("GGUF metadata {key}: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// Missing, or the type it had.
        reason: String,
    },
    /// A tensor is missing or has the wrong shape.
    #[error("GGUF tensor {name}: {reason}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// Missing, or the shape it had.
        reason: String,
    },
    /// The tokenizer and the model disagree on the vocabulary.
    #[error("vocabulary mismatch: the tokenizer has {tokenizer} tokens, the model {model}")]
    VocabMismatch {
        /// Tokens in the tokenizer.
        tokenizer: usize,
        /// Rows of the model's embedding.
        model: usize,
    },
    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The id given.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A full (non-evicting) cache cannot take the tokens: the sequence would
    /// outgrow its capacity, which is the model's context length by default.
    #[error(
        "{tokens} tokens do not fit: the full cache holds {capacity} (the context length); \
         use an evicting policy to go further"
    )]
    ContextExceeded {
        /// Tokens the sequence would hold after the call.
        tokens: usize,
        /// The cache's capacity.
        capacity: usize,
    },
    /// A per-layer list of policies has the wrong length.
    #[error("{got} per-layer policies for a model of {layers} layers")]
    LayerCount {
        /// Policies given.
        got: usize,
        /// Layers in the model.
        layers: usize,
    },
    /// Several caches were asked to share one prefill but are not all empty.
    #[error("a shared prefill needs empty caches; cache {index} holds {len} tokens")]
    NotEmpty {
        /// Which cache.
        index: usize,
        /// Tokens it holds.
        len: usize,
    },
    /// A batched decode step got a different number of tokens and caches.
    #[error("{tokens} tokens for {caches} caches: a batched step takes one token per cache")]
    BatchMismatch {
        /// Tokens given.
        tokens: usize,
        /// Caches given.
        caches: usize,
    },
    /// An empty token list where at least one token is needed.
    #[error("no tokens given")]
    NoTokens,
    /// A file was not found in any of the searched places.
    #[error("{name} not found; looked in: {}. {hint}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// The file's name.
        name: String,
        /// Every path tried, in order.
        searched: Vec<PathBuf>,
        /// Where to get it.
        hint: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
