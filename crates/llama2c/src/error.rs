//! The example's one error type: loading a checkpoint or tokenizer, and decoding.

use std::path::{Path, PathBuf};

/// Everything the llama2c example can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file ends before a structure it must contain.
    #[error("{path}: truncated: {what} needs {needed} bytes, the file has {got}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The structure that did not fit (`"header"`, `"token 17"`, ...).
        what: String,
        /// Bytes needed up to the end of that structure.
        needed: u64,
        /// Bytes in the file.
        got: u64,
    },
    /// A header field is out of range or inconsistent with another.
    #[error("{path}: invalid header: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Which rule the header breaks.
        reason: &'static str,
    },
    /// The header implies another file size than the file has.
    #[error(
        "{path}: the header implies {expected} bytes (version-0 llama2.c layout) but the file has {got}"
    )]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes in the file.
        got: u64,
    },
    /// The tokenizer lacks a byte-fallback token `<0xXX>`.
    #[error("{path}: no byte-fallback token <0x{byte:02X}>")]
    MissingByteToken {
        /// The file.
        path: PathBuf,
        /// The byte.
        byte: u8,
    },
    /// Tokenizer and model disagree on the vocabulary size.
    #[error("the tokenizer has {tokenizer} tokens but the model's vocabulary has {model}")]
    VocabMismatch {
        /// Tokens in the tokenizer file.
        tokenizer: usize,
        /// `vocab_size` in the model header.
        model: usize,
    },
    /// A token id at or above the vocabulary size.
    #[error("token {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The token.
        token: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// More decode steps than the model's context, with a cache that keeps
    /// every token (an evicting policy goes on past `seq_len`).
    #[error(
        "position {position} is past the model's seq_len {seq_len}, and the full cache keeps \
         every token: use an evicting policy to decode further"
    )]
    ContextFull {
        /// The position that was asked for.
        position: u64,
        /// The model's context length, in tokens.
        seq_len: usize,
    },
    /// A command-line value is out of range.
    #[error("invalid {what}: {value}")]
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// The KV cache rejected a call.
    #[error(transparent)]
    Cache(#[from] h2o_kv::Error),
}

impl Error {
    /// [`Error::Io`] for `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

/// The example's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
