//! Prompt-then-continue evaluation: policies that act on a prefill (Ada-KV's
//! per-head budgets) against the same policies with equal heads.
//!
//! Each window's first `prompt_len` tokens go through a full cache (decode
//! steps in the default order, which give every prompt token its column sum,
//! as a prefill would). Every configuration then derives its cache from that
//! full cache ([`h2o_kv::ModelCache::prefill_from`] for equal heads,
//! [`h2o_kv::ModelCache::adakv_from`] for Ada-KV), and the rest of the window
//! is decoded teacher-forced through it. Scored: the predictions made after
//! the prompt (the logits at step `i ≥ prompt_len` predict token `i + 1`),
//! against the ground truth and against the full cache.

use h2o_kv::{AdaKv, AnyPolicy, ModelCache, PolicyKind};

use crate::error::Result;
use crate::forward::{Decoder, StepOrder};
use crate::generate::argmax;
use crate::model::Model;

/// How a configuration shares its budget over a layer's KV heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// Every KV head keeps `budget` tokens.
    Uniform,
    /// Ada-KV: the layer's `n_kv_heads · budget` tokens shared by
    /// [`AdaKv`] with this safeguard, from the prompt's scores.
    AdaKv(f64),
}

/// One configuration: a policy, a budget per KV head (on average) and a
/// split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptSpec {
    /// The crate's policy kind (built with `with_budget(budget, 0.5)`).
    pub kind: PolicyKind,
    /// Tokens per KV head (the mean over heads for Ada-KV).
    pub budget: usize,
    /// The split over KV heads.
    pub split: Split,
}

impl PromptSpec {
    /// A label such as `h2o ada-kv(0.2)`.
    pub fn label(&self) -> String {
        match self.split {
            Split::Uniform => format!("{} uniform", self.kind.name()),
            Split::AdaKv(s) => format!("{} ada-kv({s})", self.kind.name()),
        }
    }

    /// This configuration's cache, derived from `full` (which took the
    /// prompt).
    fn derive(
        &self,
        full: &ModelCache<f32, AnyPolicy>,
    ) -> h2o_kv::Result<ModelCache<f32, AnyPolicy>> {
        let policy = |b: usize| self.kind.with_budget(b, 0.5);
        match self.split {
            Split::Uniform => {
                let layer = &full.layers()[0];
                let mut cache = ModelCache::new(
                    full.n_layers(),
                    layer.n_heads(),
                    layer.n_kv_heads(),
                    layer.head_dim(),
                    policy(self.budget)?,
                )?;
                cache.prefill_from(full)?;
                Ok(cache)
            }
            Split::AdaKv(safeguard) => {
                let total = self.budget * full.layers()[0].n_kv_heads();
                let totals = vec![total; full.n_layers()];
                ModelCache::adakv_from(full, &AdaKv::new(safeguard)?, &totals, policy)
            }
        }
    }
}

/// The measured quality of one configuration after the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    /// The configuration.
    pub spec: PromptSpec,
    /// Predictions scored.
    pub predictions: u64,
    /// Sum of negative log-likelihoods, in nats.
    pub nll_sum: f64,
    /// `exp(mean NLL)`.
    pub perplexity: f64,
    /// Perplexity divided by the full cache's over the same predictions.
    pub ratio: f64,
    /// Fraction of predictions whose argmax equals the full cache's.
    pub top1_agreement: f64,
}

/// The full cache's perplexity, then one row per spec, over `windows`
/// split after `prompt_len` tokens; `progress(done, total)` after each
/// window. Single-threaded (the model is small).
///
/// # Errors
/// As [`Decoder::forward`] and the derivations (for example a zero budget).
pub fn evaluate_after_prompt(
    model: &Model,
    windows: &[Vec<u32>],
    prompt_len: usize,
    specs: &[PromptSpec],
    progress: &dyn Fn(usize, usize),
) -> Result<(f64, Vec<PromptRow>)> {
    let c = &model.config;
    let full_policy: AnyPolicy = h2o_kv::Full::new(c.seq_len)?.into();
    let vocab = c.vocab_size;
    let mut reference_nll = 0.0;
    let mut sums = vec![(0.0f64, 0u64, 0u64); specs.len()];
    let mut lp = vec![0.0; vocab];
    for (w, window) in windows.iter().enumerate() {
        let mut full = Decoder::new(model, full_policy, StepOrder::InsertAttendEvict)?;
        for &t in window.iter().take(prompt_len) {
            full.forward(t)?;
        }
        let mut decoders =
            specs.iter().map(|s| full.derive(|f| s.derive(f))).collect::<Result<Vec<_>>>()?;
        let mut ref_top = Vec::new();
        for (i, &t) in window.iter().enumerate().skip(prompt_len) {
            let logits = full.forward(t)?;
            if i + 1 < window.len() {
                log_softmax(logits, &mut lp);
                reference_nll -= lp[window[i + 1] as usize];
                ref_top.push(argmax(logits));
            }
        }
        for (d, sum) in decoders.iter_mut().zip(&mut sums) {
            for (n, (i, &t)) in window.iter().enumerate().skip(prompt_len).enumerate() {
                let logits = d.forward(t)?;
                if i + 1 < window.len() {
                    log_softmax(logits, &mut lp);
                    sum.0 -= lp[window[i + 1] as usize];
                    sum.1 += 1;
                    sum.2 += u64::from(argmax(logits) == ref_top[n]);
                }
            }
        }
        progress(w + 1, windows.len());
    }
    let n = sums.first().map_or(0, |s| s.1).max(1) as f64;
    let full_ppl = (reference_nll / n).exp();
    let rows = specs
        .iter()
        .zip(&sums)
        .map(|(spec, &(nll, predictions, agree))| {
            let ppl = (nll / predictions.max(1) as f64).exp();
            PromptRow {
                spec: *spec,
                predictions,
                nll_sum: nll,
                perplexity: ppl,
                ratio: ppl / full_ppl,
                top1_agreement: agree as f64 / predictions.max(1) as f64,
            }
        })
        .collect();
    Ok((full_ppl, rows))
}

/// The rows as a Markdown table, the full cache first.
pub fn prompt_table(full_perplexity: f64, rows: &[PromptRow]) -> String {
    let mut out = String::from(
        "| policy | split | tokens per KV head | perplexity | × full | top-1 agree |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    out += &format!("| full | – | all | {full_perplexity:.3} | 1.000 | 1.000 |\n");
    for r in rows {
        let split = match r.spec.split {
            Split::Uniform => "uniform".to_string(),
            Split::AdaKv(s) => format!("ada-kv, safeguard {s}"),
        };
        out += &format!(
            "| {} | {split} | {} | {:.3} | {:.3} | {:.3} |\n",
            r.spec.kind.name(),
            r.spec.budget,
            r.perplexity,
            r.ratio,
            r.top1_agreement
        );
    }
    out
}

/// Writes `log softmax(logits)` into `out`, in `f64`.
fn log_softmax(logits: &[f32], out: &mut [f64]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = l as f64 - log_z;
    }
}
