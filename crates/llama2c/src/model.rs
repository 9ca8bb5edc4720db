//! A llama2.c checkpoint (version-0 legacy layout): header, weights, RoPE table.
//!
//! File layout (all little-endian): a header of 7 `i32` (`dim`, `hidden_dim`,
//! `n_layers`, `n_heads`, `n_kv_heads`, `vocab_size`, `seq_len`), then `f32`
//! tensors, row-major, in this order: token embedding `[vocab × dim]`,
//! attention RMSNorm `[layers × dim]`, `wq` `[layers × dim × dim]`, `wk` and `wv`
//! `[layers × kv_dim × dim]`, `wo` `[layers × dim × dim]`, FFN RMSNorm
//! `[layers × dim]`, `w1` `[layers × hidden × dim]`, `w2` `[layers × dim × hidden]`,
//! `w3` `[layers × hidden × dim]`, final RMSNorm `[dim]`, two unused RoPE tables
//! `[seq_len × head_dim / 2]` each, and, only when `vocab_size` is negative, a
//! separate classifier `[vocab × dim]` (otherwise the embedding is shared).
//! Each weight matrix is `[out × in]`: row `i` gives output `i`.

use std::path::Path;

use h2o_kv::{AnyPolicy, ModelCache};

use crate::error::{Error, Result};

/// Bytes of the 7-int header.
const HEADER_BYTES: u64 = 7 * 4;

/// The hyperparameters in a checkpoint header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of the FFN hidden layer.
    pub hidden_dim: usize,
    /// Transformer layers.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (`n_heads` is a multiple).
    pub n_kv_heads: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Context length the model was trained with, in tokens.
    pub seq_len: usize,
    /// Whether the classifier reuses the token embedding.
    pub shared_classifier: bool,
}

impl Config {
    /// Parses and checks a header; `path` only labels errors.
    ///
    /// # Errors
    /// [`Error::BadHeader`] for a non-positive field, `n_heads` not a multiple
    /// of `n_kv_heads`, `dim` not a multiple of `n_heads`, or an odd head size.
    pub fn parse(header: [i32; 7], path: &Path) -> Result<Self> {
        let bad = |reason| Error::BadHeader { path: path.to_path_buf(), reason };
        let [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len] = header;
        let positive = |x: i32| usize::try_from(x).ok().filter(|&x| x > 0);
        let field = |x: i32, reason| positive(x).ok_or_else(|| bad(reason));
        let c = Self {
            dim: field(dim, "dim must be positive")?,
            hidden_dim: field(hidden_dim, "hidden_dim must be positive")?,
            n_layers: field(n_layers, "n_layers must be positive")?,
            n_heads: field(n_heads, "n_heads must be positive")?,
            n_kv_heads: field(n_kv_heads, "n_kv_heads must be positive")?,
            vocab_size: field(vocab.checked_abs().unwrap_or(0), "vocab_size must be nonzero")?,
            seq_len: field(seq_len, "seq_len must be positive")?,
            shared_classifier: vocab > 0,
        };
        if c.n_heads % c.n_kv_heads != 0 {
            return Err(bad("n_heads is not a multiple of n_kv_heads"));
        }
        if c.dim % c.n_heads != 0 || c.head_dim() % 2 != 0 {
            return Err(bad("dim / n_heads must be a whole, even head size"));
        }
        Ok(c)
    }

    /// Elements per attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Width of the key and value projections: `n_kv_heads × head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim()
    }

    /// `f32` values after the header, in file order: (name, count) per tensor.
    /// `None` if a count overflows `u64`.
    fn tensor_sizes(&self) -> Option<[(&'static str, u64); 13]> {
        let u = |x: usize| x as u64;
        let (d, h, l) = (u(self.dim), u(self.hidden_dim), u(self.n_layers));
        let (kv, v, s) = (u(self.kv_dim()), u(self.vocab_size), u(self.seq_len));
        let m = |a: u64, b: u64| a.checked_mul(b);
        let rope = m(s, u(self.head_dim() / 2))?;
        Some([
            ("token_embedding", m(v, d)?),
            ("rms_att", m(l, d)?),
            ("wq", m(m(l, d)?, d)?),
            ("wk", m(m(l, kv)?, d)?),
            ("wv", m(m(l, kv)?, d)?),
            ("wo", m(m(l, d)?, d)?),
            ("rms_ffn", m(l, d)?),
            ("w1", m(m(l, h)?, d)?),
            ("w2", m(m(l, d)?, h)?),
            ("w3", m(m(l, h)?, d)?),
            ("rms_final", d),
            ("rope_tables", m(rope, 2)?),
            ("classifier", if self.shared_classifier { 0 } else { m(v, d)? }),
        ])
    }

    /// File size in bytes this header implies, or `None` on overflow.
    pub fn file_bytes(&self) -> Option<u64> {
        let values = self.tensor_sizes()?.iter().try_fold(0u64, |a, (_, n)| a.checked_add(*n))?;
        values.checked_mul(4)?.checked_add(HEADER_BYTES)
    }
}

/// A loaded checkpoint: config, weights and the RoPE table.
#[derive(Debug, Clone)]
pub struct Model {
    /// Hyperparameters.
    pub config: Config,
    pub(crate) token_embedding: Vec<f32>,
    pub(crate) rms_att: Vec<f32>,
    pub(crate) wq: Vec<f32>,
    pub(crate) wk: Vec<f32>,
    pub(crate) wv: Vec<f32>,
    pub(crate) wo: Vec<f32>,
    pub(crate) rms_ffn: Vec<f32>,
    pub(crate) w1: Vec<f32>,
    pub(crate) w2: Vec<f32>,
    pub(crate) w3: Vec<f32>,
    pub(crate) rms_final: Vec<f32>,
    /// `None` when the classifier is the token embedding.
    pub(crate) classifier: Option<Vec<f32>>,
    /// `[seq_len × head_dim / 2]` (cos, sin) of `pos · 10000^(-2i / head_dim)`.
    pub(crate) rope: Vec<(f32, f32)>,
}

impl Model {
    /// Reads a checkpoint file.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be read, [`Error::Truncated`] if it is
    /// shorter than the header, [`Error::BadHeader`] as [`Config::parse`],
    /// [`Error::SizeMismatch`] if its size differs from what the header implies.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a checkpoint from memory; `path` only labels errors.
    ///
    /// # Errors
    /// As [`Model::load`], except [`Error::Io`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let got = bytes.len() as u64;
        if got < HEADER_BYTES {
            let what = "header".to_string();
            return Err(Error::Truncated { path: path.into(), what, needed: HEADER_BYTES, got });
        }
        let mut header = [0i32; 7];
        for (h, b) in header.iter_mut().zip(bytes.chunks_exact(4)) {
            *h = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let config = Config::parse(header, path)?;
        let expected = config.file_bytes().unwrap_or(u64::MAX);
        if got != expected {
            return Err(Error::SizeMismatch { path: path.into(), expected, got });
        }
        let mut values = bytes[HEADER_BYTES as usize..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut tensors = config
            .tensor_sizes()
            .expect("checked by file_bytes")
            .map(|(_, n)| values.by_ref().take(n as usize).collect::<Vec<f32>>());
        let take = |t: &mut Vec<f32>| std::mem::take(t);
        let classifier = (!config.shared_classifier).then(|| take(&mut tensors[12]));
        Ok(Self {
            rope: rope_table(&config),
            config,
            token_embedding: take(&mut tensors[0]),
            rms_att: take(&mut tensors[1]),
            wq: take(&mut tensors[2]),
            wk: take(&mut tensors[3]),
            wv: take(&mut tensors[4]),
            wo: take(&mut tensors[5]),
            rms_ffn: take(&mut tensors[6]),
            w1: take(&mut tensors[7]),
            w2: take(&mut tensors[8]),
            w3: take(&mut tensors[9]),
            rms_final: take(&mut tensors[10]),
            classifier,
        })
    }

    /// An empty whole-model cache: one layer cache per layer, each under
    /// `policy`.
    ///
    /// # Errors
    /// [`Error::Cache`] if the cache rejects the head shape or policy.
    pub fn caches(&self, policy: AnyPolicy) -> Result<ModelCache<f32, AnyPolicy>> {
        let c = &self.config;
        Ok(ModelCache::new(c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim(), policy)?)
    }
}

/// RoPE rotations as in llama2.c's `run.c`, computed in `f32`:
/// `freq = 1 / 10000^(2i / head_dim)`, angle `pos · freq`, for positions
/// `0..seq_len`.
pub(crate) fn rope_table(c: &Config) -> Vec<(f32, f32)> {
    let half = c.head_dim() / 2;
    let mut table = vec![(0.0, 0.0); c.seq_len * half];
    for (pos, row) in table.chunks_exact_mut(half).enumerate() {
        rope_row(c, pos as u64, row);
    }
    table
}

/// The `head_dim / 2` RoPE rotations of one position, as [`rope_table`]
/// computes them; also for positions past `seq_len`, which the model never
/// saw in training.
pub(crate) fn rope_row(c: &Config, pos: u64, row: &mut [(f32, f32)]) {
    let hd = c.head_dim();
    for (i, r) in (0..hd).step_by(2).zip(row) {
        let freq = 1.0 / 10000f32.powf(i as f32 / hd as f32);
        let angle = pos as f32 * freq;
        *r = (angle.cos(), angle.sin());
    }
}

/// A tiny valid header for tests: dim 8, hidden 12, 2 layers, 4 heads, 2 KV
/// heads, vocab `vocab` (negative: separate classifier), seq_len 6.
#[cfg(test)]
pub(crate) fn test_header(vocab: i32) -> [i32; 7] {
    [8, 12, 2, 4, 2, vocab, 6]
}

/// A checkpoint file for `header`, `extra` bytes longer than it implies;
/// weight `i` (in file order) is `sin(i)`, so the model computes something.
#[cfg(test)]
pub(crate) fn test_file(header: [i32; 7], extra: i64) -> Vec<u8> {
    let n = Config::parse(header, Path::new("t")).unwrap().file_bytes().unwrap() as i64 + extra;
    let mut bytes: Vec<u8> = header.iter().flat_map(|h| h.to_le_bytes()).collect();
    let mut i = 0f32;
    while (bytes.len() as i64) + 4 <= n {
        bytes.extend((i.sin() * 0.5).to_le_bytes());
        i += 1.0;
    }
    bytes.resize(n.max(0) as usize, 0);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(vocab: i32) -> [i32; 7] {
        test_header(vocab)
    }

    fn file(header: [i32; 7], extra: i64) -> Vec<u8> {
        test_file(header, extra)
    }

    #[test]
    fn size_follows_the_layout() {
        // Counted per tensor from the layout in the module docs (head_dim 2,
        // kv_dim 4); the two RoPE tables are seq_len × head_dim / 2 each.
        let (d, h, l, kv, v, s, hd) = (8u64, 12, 2, 4, 16, 6, 2);
        let shared = v * d
            + l * d
            + l * d * d
            + 2 * l * kv * d
            + l * d * d
            + l * d
            + 3 * l * h * d
            + d
            + s * hd;
        let c = Config::parse(header(16), Path::new("t")).unwrap();
        assert_eq!(c.file_bytes(), Some(28 + 4 * shared));
        let c = Config::parse(header(-16), Path::new("t")).unwrap();
        assert!(!c.shared_classifier);
        assert_eq!(c.file_bytes(), Some(28 + 4 * (shared + v * d)));
    }

    #[test]
    fn a_well_sized_file_loads() {
        let m = Model::from_bytes(&file(header(16), 0), Path::new("t")).unwrap();
        assert_eq!(m.config.vocab_size, 16);
        let m = Model::from_bytes(&file(header(-16), 0), Path::new("t")).unwrap();
        assert_eq!(m.classifier.as_ref().map(Vec::len), Some(16 * 8));
    }

    #[test]
    fn a_short_file_is_truncated() {
        let err = Model::from_bytes(&[0; 27], Path::new("t")).unwrap_err();
        assert!(matches!(err, Error::Truncated { needed: 28, got: 27, .. }), "{err}");
    }

    #[test]
    fn a_size_that_disagrees_with_the_header_is_an_error() {
        for extra in [-4, -1, 4] {
            let bytes = file(header(16), extra);
            let err = Model::from_bytes(&bytes, Path::new("t")).unwrap_err();
            let got = bytes.len() as u64;
            assert!(matches!(err, Error::SizeMismatch { got: g, .. } if g == got), "{err}");
        }
    }

    #[test]
    fn bad_headers_are_rejected() {
        for h in [
            [0i32, 12, 2, 4, 2, 16, 6],
            [8, 12, 2, 4, 3, 16, 6],
            [8, 12, 2, 3, 3, 16, 6],
            [8, 12, 2, 8, 2, 16, 6],
            [8, 12, 2, 4, 2, 0, 6],
            [8, 12, -2, 4, 2, 16, 6],
        ] {
            let mut bytes: Vec<u8> = h.iter().flat_map(|x| x.to_le_bytes()).collect();
            bytes.resize(4096, 0);
            let err = Model::from_bytes(&bytes, Path::new("t")).unwrap_err();
            assert!(matches!(err, Error::BadHeader { .. }), "{h:?}: {err}");
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let err = Model::load(Path::new("/nonexistent/stories260K.bin")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
