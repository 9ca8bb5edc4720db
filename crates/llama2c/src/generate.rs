//! Text generation with llama2.c's `run.c` semantics: sampling, the decode
//! loop and what gets printed.

use std::time::Instant;

use h2o_kv::AnyPolicy;

use crate::error::{Error, Result};
use crate::forward::{Decoder, StepOrder};
use crate::model::Model;
use crate::tokenizer::{BOS, Tokenizer};

/// Index of the largest value; the first on ties (as `run.c`).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Temperature and top-p sampling with `run.c`'s xorshift generator, so a
/// seed gives the same tokens as `run.c -s seed`.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    state: u64,
    /// `[vocab]` probabilities.
    probs: Vec<f32>,
    /// (probability, token) candidates for top-p.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler; temperature 0 is greedy (argmax).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a negative or non-finite temperature,
    /// a top-p outside `[0, 1]`, or seed 0 (xorshift would stay at 0).
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Result<Self> {
        let invalid = |what, value: String| Err(Error::InvalidArgument { what, value });
        if !(temperature.is_finite() && temperature >= 0.0) {
            return invalid("temperature", temperature.to_string());
        }
        if !(0.0..=1.0).contains(&top_p) {
            return invalid("top-p", top_p.to_string());
        }
        if seed == 0 {
            return invalid("seed", "0 (must be nonzero)".into());
        }
        Ok(Self { temperature, top_p, state: seed, probs: Vec::new(), candidates: Vec::new() })
    }

    fn next_u32(&mut self) -> u32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// Uniform in `[0, 1)` from the top 24 bits.
    fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16_777_216.0
    }

    /// The next token given `logits` `[vocab]`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        self.probs.clear();
        self.probs.extend(logits.iter().map(|l| l / self.temperature));
        let max = self.probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for p in &mut self.probs {
            *p = (*p - max).exp();
            sum += *p;
        }
        self.probs.iter_mut().for_each(|p| *p /= sum);
        let coin = self.next_f32();
        if self.top_p <= 0.0 || self.top_p >= 1.0 {
            return multinomial(&self.probs, coin);
        }
        // Top-p: the smallest prefix of tokens by falling probability whose
        // mass exceeds top_p. Tokens below (1 - top_p) / (n - 1) cannot be in
        // it, so they are dropped before sorting.
        let cutoff = (1.0 - self.top_p) / (self.probs.len().max(2) - 1) as f32;
        self.candidates.clear();
        self.candidates.extend(
            self.probs
                .iter()
                .enumerate()
                .filter(|(_, p)| **p >= cutoff)
                .map(|(i, p)| (*p, i as u32)),
        );
        self.candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut mass = 0.0;
        let mut last = self.candidates.len().saturating_sub(1);
        for (i, (p, _)) in self.candidates.iter().enumerate() {
            mass += p;
            if mass > self.top_p {
                last = i;
                break;
            }
        }
        let r = coin * mass;
        let mut cdf = 0.0;
        for &(p, token) in &self.candidates[..=last] {
            cdf += p;
            if r < cdf {
                return token;
            }
        }
        self.candidates.get(last).map_or(0, |c| c.1)
    }
}

/// Token `i` with probability `probs[i]`, for `coin` uniform in `[0, 1)`.
fn multinomial(probs: &[f32], coin: f32) -> u32 {
    let mut cdf = 0.0;
    for (i, p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i as u32;
        }
    }
    probs.len().saturating_sub(1) as u32
}

/// Whether `run.c` prints `piece`: not empty, and not a lone byte that is
/// neither printable ASCII nor whitespace.
fn printable(piece: &[u8]) -> bool {
    match piece {
        [] => false,
        [b] => b.is_ascii_graphic() || *b == b' ' || b"\t\n\x0b\x0c\r".contains(b),
        _ => true,
    }
}

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct Options {
    /// Text to start from (after BOS); its tokens are forced.
    pub prompt: String,
    /// Decode steps including the BOS position; 0 means `seq_len`. More than
    /// `seq_len` runs past the model's context with an evicting policy, and
    /// stops at `seq_len` with a cache that keeps every token (see [`End`]).
    pub steps: usize,
    /// Cache policy of every layer.
    pub policy: AnyPolicy,
    /// Step order of every layer.
    pub order: StepOrder,
    /// Keep keys and values in llama2.c's plain arrays instead of the crate's
    /// caches (`policy` and `order` are then unused): the baseline.
    pub plain: bool,
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It ran the steps asked for.
    Steps,
    /// BOS was sampled (`run.c` stops there too).
    Bos,
    /// More steps were asked for than the model's `seq_len`, and the cache
    /// keeps every token (full cache or plain arrays), so it stopped at
    /// `seq_len`.
    ContextFull {
        /// Steps asked for.
        asked: usize,
        /// The model's context length, where it stopped.
        seq_len: usize,
    },
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The bytes `run.c` would print before its final newline.
    pub text: Vec<u8>,
    /// Decode steps run (= positions fed, `0..steps`).
    pub steps: usize,
    /// Why it stopped.
    pub end: End,
    /// Key/value bytes resident at the end, all layers.
    pub kv_bytes: usize,
    /// Wall time of the decode loop, in seconds.
    pub seconds: f64,
}

/// Runs `run.c`'s generation loop: feed BOS and the prompt, then sampled
/// tokens; stop after `steps` positions or when BOS is sampled.
///
/// `run.c` caps the steps at `seq_len`. Here that cap applies only to a cache
/// that keeps every token, and [`Generation::end`] says so; an evicting
/// policy goes on at absolute positions `seq_len, seq_len + 1, …`, with RoPE
/// at those positions (past what the model was trained on).
///
/// # Errors
/// As [`Decoder::new`] and [`Decoder::forward`].
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    options: &Options,
) -> Result<Generation> {
    let seq_len = model.config.seq_len;
    let prompt = tokenizer.encode(&options.prompt, true);
    let mut decoder = if options.plain {
        Decoder::plain(model)
    } else {
        Decoder::new(model, options.policy, options.order)?
    };
    let (steps, mut end) = match options.steps {
        0 => (seq_len, End::Steps),
        asked if asked > seq_len && !decoder.evicts() => {
            (seq_len, End::ContextFull { asked, seq_len })
        }
        asked => (asked, End::Steps),
    };
    let start = Instant::now();
    let mut text = Vec::new();
    let mut token = prompt[0];
    let mut pos = 0;
    while pos < steps {
        let logits = decoder.forward(token)?;
        let next = match prompt.get(pos + 1) {
            Some(&forced) => forced,
            None => sampler.sample(logits),
        };
        pos += 1;
        if next == BOS {
            end = End::Bos;
            break;
        }
        let piece = tokenizer.piece(token, next);
        if printable(piece) {
            text.extend_from_slice(piece);
        }
        token = next;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Generation { text, steps: pos, end, kv_bytes: decoder.kv_bytes(), seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }

    #[test]
    fn xorshift_matches_its_definition() {
        // Independent recomputation of one step from seed 1.
        let mut s = Sampler::new(1.0, 0.9, 1).unwrap();
        let mut x: u64 = 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        assert_eq!(
            s.next_u32(),
            ((u128::from(x) * 0x2545F4914F6CDD1D % (1u128 << 64)) >> 32) as u32
        );
    }

    #[test]
    fn one_dominant_logit_is_always_sampled() {
        let mut s = Sampler::new(1.0, 0.9, 7).unwrap();
        let logits = [0.0, 50.0, 0.0, 0.0];
        assert!((0..100).all(|_| s.sample(&logits) == 1));
        let mut s = Sampler::new(0.8, 1.0, 7).unwrap();
        assert!((0..100).all(|_| s.sample(&logits) == 1));
    }

    #[test]
    fn top_p_never_samples_outside_the_nucleus() {
        // Probabilities 1/2, 1/4, 1/8, 1/16, 1/16: with top-p 0.4 token 0
        // alone exceeds the mass.
        let logits = [8f32, 4.0, 2.0, 1.0, 1.0].map(f32::ln);
        let mut s = Sampler::new(1.0, 0.4, 3).unwrap();
        assert!((0..200).all(|_| s.sample(&logits) == 0));
    }

    #[test]
    fn bad_sampler_settings_are_errors() {
        assert!(Sampler::new(-1.0, 0.9, 1).is_err());
        assert!(Sampler::new(1.0, 1.5, 1).is_err());
        assert!(Sampler::new(1.0, 0.9, 0).is_err());
    }

    #[test]
    fn printable_skips_control_bytes() {
        assert!(printable(b"\n") && printable(b"a") && printable(b"\x01\x02"));
        assert!(!printable(b"\x01") && !printable(b""));
    }
}
