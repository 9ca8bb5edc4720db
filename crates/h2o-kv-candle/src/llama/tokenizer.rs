//! The tokenizer stored in a GGUF (`tokenizer.ggml.*`), built with the
//! `tokenizers` crate, and the chat template.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use super::config::{get_str, get_usize};
use crate::error::{Error, Result};

/// GGUF token type of control tokens (`<|im_start|>`, ...).
const CONTROL: i32 = 3;

/// A byte-level BPE tokenizer built from the GGUF's own vocabulary and merges
/// (`tokenizer.ggml.model = gpt2`), with the pre-tokenizer that
/// `tokenizer.ggml.pre` names:
///
/// | `tokenizer.ggml.pre` | pre-tokenizer |
/// |---|---|
/// | `smollm`, `starcoder`, `refact`, `codeshell` | every digit alone, then GPT-2's byte-level split |
/// | `gpt2`, `default` | GPT-2's byte-level split |
///
/// (the same mapping as llama.cpp). Control tokens (`<|im_start|>`,
/// `<|im_end|>`, ...) written in the text are encoded as themselves.
///
/// No BOS is added by [`encode`](Self::encode); [`add_bos`](Self::add_bos)
/// says whether the model wants one (`tokenizer.ggml.add_bos_token`, false
/// for SmolLM2).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// The default system prompt of the GGUF's ChatML template, if any;
    /// `None` inside when the template has none; outer `None` without a
    /// ChatML template.
    chat_system: Option<Option<String>>,
}

fn strings<'a>(ct: &'a Content, key: &str) -> Result<Vec<&'a str>> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| Error::Metadata { key: key.into(), reason: "missing".into() })?;
    let bad = |reason: String| Error::Metadata { key: key.into(), reason };
    v.to_vec()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(|x| x.to_string().map(String::as_str).map_err(|e| bad(e.to_string())))
        .collect()
}

fn optional_id(ct: &Content, key: &str) -> Result<Option<u32>> {
    if ct.metadata.contains_key(key) { Ok(Some(get_usize(ct, key)? as u32)) } else { Ok(None) }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF's metadata.
    ///
    /// # Errors
    /// [`Error::Metadata`] for missing keys; [`Error::Tokenizer`] for a
    /// tokenizer model other than `gpt2`, an unknown pre-tokenizer, or
    /// merges that name tokens outside the vocabulary.
    pub fn from_gguf(ct: &Content) -> Result<Self> {
        let model = get_str(ct, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let pre = match ct.metadata.get("tokenizer.ggml.pre") {
            Some(v) => v.to_string().map(String::as_str).unwrap_or("default"),
            None => "default",
        };
        let split_digits = match pre {
            "smollm" | "starcoder" | "refact" | "codeshell" => true,
            "gpt2" | "default" => false,
            other => {
                return Err(Error::Tokenizer(format!("pre-tokenizer {other:?} is not supported")));
            }
        };
        let tokens = strings(ct, "tokenizer.ggml.tokens")?;
        let merges = strings(ct, "tokenizer.ggml.merges")?;
        let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: Vocab =
            tokens.iter().enumerate().map(|(i, t)| ((*t).to_string(), i as u32)).collect();
        let mut pairs = Vec::with_capacity(merges.len());
        for m in &merges {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| Error::Tokenizer(format!("merge {m:?} is not two tokens")))?;
            if !vocab.contains_key(a) || !vocab.contains_key(b) {
                return Err(Error::Tokenizer(format!(
                    "merge {m:?} names a token outside the vocabulary"
                )));
            }
            pairs.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = if split_digits {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == CONTROL)
            .map(|(s, _)| AddedToken::from((*s).to_string(), true))
            .collect();
        inner.add_special_tokens(specials).map_err(|e| Error::Tokenizer(e.to_string()))?;

        let add_bos = match ct.metadata.get("tokenizer.ggml.add_bos_token") {
            Some(v) => v.to_bool().unwrap_or(false),
            None => false,
        };
        let chat_system = match ct.metadata.get("tokenizer.chat_template") {
            Some(v) => v.to_string().ok().and_then(|t| chatml_system(t.as_str())),
            None => None,
        };
        Ok(Self {
            inner,
            vocab_size: tokens.len(),
            bos: optional_id(ct, "tokenizer.ggml.bos_token_id")?,
            eos: optional_id(ct, "tokenizer.ggml.eos_token_id")?,
            add_bos,
            chat_system,
        })
    }

    /// Token ids of `text`, without BOS. Control tokens in the text
    /// (`<|im_start|>`) become their ids.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (control tokens written out).
    ///
    /// # Errors
    /// [`Error::TokenOutOfRange`] for an id outside the vocabulary;
    /// [`Error::Tokenizer`] if decoding fails.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::TokenOutOfRange { id, vocab: self.vocab_size });
        }
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Tokens in the vocabulary.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The BOS id (`tokenizer.ggml.bos_token_id`).
    #[must_use]
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS id (`tokenizer.ggml.eos_token_id`): generation stops there.
    #[must_use]
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`).
    #[must_use]
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// `user` wrapped in the GGUF's ChatML chat template with the generation
    /// prompt: `<|im_start|>system\n{system}<|im_end|>\n` (when the template
    /// has a default system prompt, as SmolLM2's does), then
    /// `<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the GGUF has no ChatML template.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        let system = self.chat_system.as_ref().ok_or_else(|| {
            Error::Tokenizer(
                "the GGUF has no ChatML chat template (tokenizer.chat_template)".into(),
            )
        })?;
        let mut s = String::new();
        if let Some(sys) = system {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
        s.push_str(&format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"));
        Ok(s)
    }

    /// The underlying `tokenizers` tokenizer.
    #[must_use]
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// For a ChatML template: `Some(default system prompt or None)`; `None` if
/// the template is not ChatML.
fn chatml_system(template: &str) -> Option<Option<String>> {
    if !template.contains("<|im_start|>") {
        return None;
    }
    let start = "<|im_start|>system\\n";
    let alt = "<|im_start|>system\n";
    let body = template
        .find(start)
        .map(|i| &template[i + start.len()..])
        .or_else(|| template.find(alt).map(|i| &template[i + alt.len()..]));
    Some(body.and_then(|b| b.find("<|im_end|>").map(|j| b[..j].to_string())))
}

#[cfg(test)]
mod tests {
    use super::chatml_system;

    #[test]
    fn chatml_default_system_prompt_is_read_from_the_template() {
        let t = "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{{'<|im_start|>' + role}}";
        assert_eq!(chatml_system(t), Some(Some("Be brief.".into())));
        assert_eq!(chatml_system("{{'<|im_start|>' + role}}"), Some(None));
        assert_eq!(chatml_system("[INST] {{ content }} [/INST]"), None);
    }
}
