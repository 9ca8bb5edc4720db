//! The llama2.c tokenizer: score-greedy BPE with byte fallback.
//!
//! File format (little-endian): `u32` max token length, then per token an
//! `f32` merge score, a `u32` byte length and the bytes. The file does not
//! store the vocabulary size: it is the number of entries up to the end.
//!
//! Encoding follows llama2.c's `encode`: optional BOS, a dummy-prefix space
//! token for non-empty text, one token per UTF-8 code point when the code
//! point is in the vocabulary (otherwise one `<0xXX>` byte token per byte),
//! then repeatedly merge the adjacent pair whose concatenation is the
//! vocabulary entry with the highest score (the leftmost pair on ties) until
//! no pair merges.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Beginning-of-sequence token id (llama2.c convention).
pub const BOS: u32 = 1;

/// A loaded tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Token bytes, by id.
    vocab: Vec<Vec<u8>>,
    /// Merge scores, by id.
    scores: Vec<f32>,
    /// Token bytes → id (the lowest id when a string repeats).
    ids: HashMap<Vec<u8>, u32>,
    /// Id of `<0xXX>`, by byte.
    byte_tokens: [u32; 256],
    /// Bytes each token decodes to (`<0xXX>` → that byte).
    pieces: Vec<Vec<u8>>,
}

/// Reads a little-endian `u32`/`f32` field at `*at`, or reports truncation.
fn field(bytes: &[u8], at: &mut usize, what: &dyn Fn() -> String, path: &Path) -> Result<[u8; 4]> {
    let end = *at + 4;
    let Some(b) = bytes.get(*at..end) else {
        let (needed, got) = (end as u64, bytes.len() as u64);
        return Err(Error::Truncated { path: path.into(), what: what(), needed, got });
    };
    *at = end;
    Ok([b[0], b[1], b[2], b[3]])
}

/// `Some(b)` if `piece` is exactly `<0xXX>` (hex, either case).
fn byte_piece(piece: &[u8]) -> Option<u8> {
    let hex = piece.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

impl Tokenizer {
    /// Reads a tokenizer file.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Truncated`] if the file ends inside an entry,
    /// [`Error::MissingByteToken`] if a `<0xXX>` token is missing.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Reads a tokenizer file and checks it against the model's vocabulary size.
    ///
    /// # Errors
    /// As [`Tokenizer::load`], and [`Error::VocabMismatch`].
    pub fn load_for(path: &Path, vocab_size: usize) -> Result<Self> {
        let t = Self::load(path)?;
        t.check_vocab(vocab_size)?;
        Ok(t)
    }

    /// Parses a tokenizer from memory; `path` only labels errors.
    ///
    /// # Errors
    /// As [`Tokenizer::load`], except [`Error::Io`].
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut at = 0;
        field(bytes, &mut at, &|| "max token length".into(), path)?;
        let (mut vocab, mut scores) = (Vec::new(), Vec::new());
        while at < bytes.len() {
            let i = vocab.len();
            let what = || format!("token {i}");
            let score = f32::from_le_bytes(field(bytes, &mut at, &what, path)?);
            let len = u32::from_le_bytes(field(bytes, &mut at, &what, path)?) as usize;
            let Some(piece) = bytes.get(at..at.saturating_add(len)) else {
                let needed = at as u64 + len as u64;
                let got = bytes.len() as u64;
                return Err(Error::Truncated { path: path.into(), what: what(), needed, got });
            };
            at += len;
            vocab.push(piece.to_vec());
            scores.push(score);
        }
        let mut ids = HashMap::with_capacity(vocab.len());
        for (id, piece) in vocab.iter().enumerate() {
            ids.entry(piece.clone()).or_insert(id as u32);
        }
        let mut byte_tokens = [0; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            let name = format!("<0x{b:02X}>");
            *slot = *ids
                .get(name.as_bytes())
                .ok_or(Error::MissingByteToken { path: path.into(), byte: b as u8 })?;
        }
        let pieces =
            vocab.iter().map(|p| byte_piece(p).map_or_else(|| p.clone(), |b| vec![b])).collect();
        Ok(Self { vocab, scores, ids, byte_tokens, pieces })
    }

    /// # Errors
    /// [`Error::VocabMismatch`] unless the vocabulary has `model_vocab` tokens.
    pub fn check_vocab(&self, model_vocab: usize) -> Result<()> {
        if self.vocab.len() == model_vocab {
            Ok(())
        } else {
            Err(Error::VocabMismatch { tokenizer: self.vocab.len(), model: model_vocab })
        }
    }

    /// Encodes `text` (see the module docs); starts with [`BOS`] if `bos`.
    pub fn encode(&self, text: &str, bos: bool) -> Vec<u32> {
        let mut tokens = Vec::with_capacity(text.len() + 2);
        if bos {
            tokens.push(BOS);
        }
        if !text.is_empty() {
            if let Some(&space) = self.ids.get(&b" "[..]) {
                tokens.push(space);
            }
        }
        let mut buf = [0u8; 4];
        for ch in text.chars() {
            let s = ch.encode_utf8(&mut buf).as_bytes();
            match self.ids.get(s) {
                Some(&id) => tokens.push(id),
                None => tokens.extend(s.iter().map(|&b| self.byte_tokens[b as usize])),
            }
        }
        self.merge(&mut tokens, usize::from(bos));
        tokens
    }

    /// The best merge of `a` then `b`: (score, id) of their concatenation.
    fn pair(&self, a: u32, b: u32, scratch: &mut Vec<u8>) -> Option<(f32, u32)> {
        scratch.clear();
        scratch.extend_from_slice(&self.vocab[a as usize]);
        scratch.extend_from_slice(&self.vocab[b as usize]);
        self.ids.get(scratch.as_slice()).map(|&id| (self.scores[id as usize], id))
    }

    /// Score-greedy BPE merges over `tokens[from..]`. Keeps the candidate
    /// merge of each adjacent pair and recomputes only the two neighbours of a
    /// merge; picks the highest score, leftmost on ties (as llama2.c's rescan).
    fn merge(&self, tokens: &mut Vec<u32>, from: usize) {
        let mut scratch = Vec::new();
        let mut t = tokens.split_off(from);
        let mut pairs: Vec<Option<(f32, u32)>> =
            t.windows(2).map(|w| self.pair(w[0], w[1], &mut scratch)).collect();
        loop {
            let mut best: Option<(usize, f32, u32)> = None;
            for (i, p) in pairs.iter().enumerate() {
                if let Some((score, id)) = *p {
                    if best.is_none_or(|(_, s, _)| score > s) {
                        best = Some((i, score, id));
                    }
                }
            }
            let Some((i, _, id)) = best else { break };
            t[i] = id;
            t.remove(i + 1);
            pairs.remove(i);
            if i + 1 < t.len() {
                pairs[i] = self.pair(t[i], t[i + 1], &mut scratch);
            }
            if i > 0 {
                pairs[i - 1] = self.pair(t[i - 1], t[i], &mut scratch);
            }
        }
        tokens.append(&mut t);
    }

    /// The bytes `token` prints as after `prev`: `<0xXX>` is that byte, and
    /// a leading space is dropped right after [`BOS`]. Out-of-range ids give
    /// nothing.
    pub fn piece(&self, prev: u32, token: u32) -> &[u8] {
        let piece = self.pieces.get(token as usize).map_or(&[][..], Vec::as_slice);
        if prev == BOS { piece.strip_prefix(b" ").unwrap_or(piece) } else { piece }
    }

    /// Concatenated pieces of `tokens`, skipping a leading [`BOS`].
    #[allow(dead_code)] // the binary only prints pieces; tests/llama2c.rs round-trips with it
    pub fn decode(&self, tokens: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = BOS;
        for (i, &t) in tokens.iter().enumerate() {
            if !(i == 0 && t == BOS) {
                out.extend_from_slice(self.piece(prev, t));
            }
            prev = t;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer file with the three specials, 256 byte tokens and `extra`.
    fn file(extra: &[(&str, f32)]) -> Vec<u8> {
        let mut entries: Vec<(Vec<u8>, f32)> =
            ["<unk>", "\n<s>\n", "\n</s>\n"].iter().map(|s| (s.as_bytes().to_vec(), 0.0)).collect();
        entries.extend((0..256).map(|b| (format!("<0x{b:02X}>").into_bytes(), 0.0)));
        entries.extend(extra.iter().map(|(s, sc)| (s.as_bytes().to_vec(), *sc)));
        let mut out = 16u32.to_le_bytes().to_vec();
        for (piece, score) in entries {
            out.extend(score.to_le_bytes());
            out.extend((piece.len() as u32).to_le_bytes());
            out.extend(piece);
        }
        out
    }

    fn tok(extra: &[(&str, f32)]) -> Tokenizer {
        Tokenizer::from_bytes(&file(extra), Path::new("t")).unwrap()
    }

    #[test]
    fn merges_follow_scores_then_leftmost() {
        // ids: " " 259, a 260, b 261, ab 262, ba 263, " a" 264
        let t =
            tok(&[(" ", 0.0), ("a", 0.0), ("b", 0.0), ("ab", -1.0), ("ba", -2.0), (" a", -5.0)]);
        // " aba": pairs " a"(-5), ab(-1), ba(-2): ab merges first, then " a"+"b"? no entry.
        assert_eq!(t.encode("aba", true), [BOS, 259, 262, 260]);
        // Ties go to the leftmost pair: "abab" → ab ab.
        assert_eq!(t.encode("abab", false), [259, 262, 262]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let t = tok(&[(" ", 0.0)]);
        // 'é' is 0xC3 0xA9; byte token ids are 3 + byte.
        assert_eq!(t.encode("é", false), [259, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&t.encode("é", true)), "é".as_bytes());
        assert_eq!(t.encode("", true), [BOS]);
    }

    #[test]
    fn decode_drops_the_space_after_bos() {
        let t = tok(&[(" ", 0.0), ("a", 0.0), (" a", 1.0)]);
        assert_eq!(t.decode(&[BOS, 261, 261]), b"a a");
    }

    #[test]
    fn a_truncated_file_is_an_error() {
        let bytes = file(&[("abc", 0.0)]);
        for cut in [2, 6, 10, bytes.len() - 1] {
            let err = Tokenizer::from_bytes(&bytes[..cut], Path::new("t")).unwrap_err();
            assert!(matches!(err, Error::Truncated { got, .. } if got == cut as u64), "{err}");
        }
    }

    #[test]
    fn a_vocabulary_size_mismatch_is_an_error() {
        let t = tok(&[]);
        assert!(t.check_vocab(259).is_ok());
        let err = t.check_vocab(512).unwrap_err();
        assert!(matches!(err, Error::VocabMismatch { tokenizer: 259, model: 512 }), "{err}");
    }

    #[test]
    fn missing_byte_tokens_are_an_error() {
        let mut bytes = 16u32.to_le_bytes().to_vec();
        bytes.extend(0f32.to_le_bytes());
        bytes.extend(1u32.to_le_bytes());
        bytes.push(b'a');
        let err = Tokenizer::from_bytes(&bytes, Path::new("t")).unwrap_err();
        assert!(matches!(err, Error::MissingByteToken { byte: 0, .. }), "{err}");
    }
}
