//! A Llama-family GGUF model whose every attention layer runs through an
//! h2o-kv cache, with the tokenizer and chat template stored in the GGUF.
//!
//! # Example
//! ```no_run
//! use h2o_kv::H2O;
//! use h2o_kv_candle::llama::{self, LlamaCache};
//!
//! # fn main() -> Result<(), h2o_kv_candle::Error> {
//! let (model, tok) = llama::load("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! // H2O with 20% of the 8192-token context: 819 heavy hitters + 819 recent tokens per head.
//! let mut cache = LlamaCache::new(model.config(), H2O::new(819, 819)?.into())?;
//! let mut ids = tok.encode("Once upon a time")?;
//! let mut logits = model.forward(&mut cache, &ids)?; // the prompt as one prefill
//! for _ in 0..20 {
//!     let next = logits.argmax(0)?.to_scalar::<u32>()?; // greedy
//!     if Some(next) == tok.eos_id() {
//!         break;
//!     }
//!     ids.push(next);
//!     logits = model.forward(&mut cache, &[next])?; // one decode step
//! }
//! println!("{}", tok.decode(&ids)?);
//! # Ok(())
//! # }
//! ```

mod cache;
mod config;
mod model;
mod rope;
mod tokenizer;

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;

pub use cache::LlamaCache;
pub use config::{Config, RopeLayout};
pub use model::{Llama, SUPPORTED_TYPES};
pub use tokenizer::Tokenizer;

use crate::error::{Error, Result};

/// Opens a GGUF file and reads its header, checking that every tensor's data
/// lies inside the file.
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened; [`Error::NotGguf`] if the
/// header cannot be parsed (wrong magic, cut short, corrupt);
/// [`Error::Truncated`] if a tensor's data runs past the end of the file.
pub fn open_gguf(path: &Path) -> Result<(Content, BufReader<File>)> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::new(file);
    let ct = Content::read(&mut reader).map_err(|e| {
        // candle appends a backtrace to its message when RUST_BACKTRACE is
        // set: keep the first line, the reason.
        let reason = e.to_string().lines().next().unwrap_or_default().to_string();
        Error::NotGguf { path: path.to_path_buf(), reason }
    })?;
    let mut infos: Vec<_> = ct.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    for (name, info) in infos {
        let (bs, ts) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        let bytes = (info.shape.elem_count() / bs * ts) as u64;
        let needed = ct.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
        if needed > len {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                tensor: name.clone(),
                needed,
                len,
            });
        }
    }
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok((ct, reader))
}

/// Loads the model and its tokenizer from a GGUF file, on the CPU.
///
/// # Errors
/// As [`open_gguf`], [`Llama::from_gguf`] and [`Tokenizer::from_gguf`];
/// [`Error::VocabMismatch`] if the tokenizer's vocabulary and the
/// embedding's rows differ.
pub fn load(path: &Path) -> Result<(Llama, Tokenizer)> {
    let (ct, mut reader) = open_gguf(path)?;
    let tok = Tokenizer::from_gguf(&ct)?;
    let config = Config::from_gguf(&ct)?;
    if tok.vocab_size() != config.vocab_size {
        return Err(Error::VocabMismatch { tokenizer: tok.vocab_size(), model: config.vocab_size });
    }
    let model = Llama::from_gguf(&ct, &mut reader, &Device::Cpu)?;
    Ok((model, tok))
}
