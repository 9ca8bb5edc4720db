//! Teacher-forced evaluation of cache policies against the full cache.
//!
//! Each story is encoded with BOS; all stories are concatenated and cut into
//! consecutive windows of `seq_len` tokens (an incomplete last window is
//! dropped). Every window starts from empty caches and feeds each of its
//! tokens as one decode step, so every prediction sees the bounded cache. The
//! logits at step `i` predict token `i + 1`: a window of 512 tokens gives 511
//! predictions.
//!
//! Windows are independent, so worker threads take whole windows and the
//! per-window sums are added in window order: the result does not depend on
//! the thread count.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Result;
use crate::forward::{Decoder, StepOrder};
use crate::generate::argmax;
use crate::model::Model;
use crate::policy::{PolicyKind, budget_tokens};
use crate::tokenizer::Tokenizer;

/// Line separating stories in the TinyStories text files.
pub const STORY_SEPARATOR: &str = "<|endoftext|>";

/// The stories of a TinyStories-style file, trimmed, without empty ones.
pub fn stories(text: &str) -> Vec<&str> {
    text.split(STORY_SEPARATOR).map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// Encodes each story with BOS, concatenates them and cuts the stream into
/// `seq_len`-token windows; at most `max_windows` (0: all).
pub fn windows(
    tokenizer: &Tokenizer,
    text: &str,
    seq_len: usize,
    max_windows: usize,
) -> Vec<Vec<u32>> {
    let stream: Vec<u32> = stories(text).iter().flat_map(|s| tokenizer.encode(s, true)).collect();
    let n = if max_windows == 0 { usize::MAX } else { max_windows };
    stream.chunks_exact(seq_len).take(n).map(<[u32]>::to_vec).collect()
}

/// One configuration of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// The policy.
    pub kind: PolicyKind,
    /// Budget as a percentage of `seq_len` (100 for the full cache).
    pub percent: u32,
    /// Budget in tokens per KV head.
    pub budget: usize,
    /// Heavy share of an H2O budget (unused by the other policies).
    pub heavy_fraction: f64,
}

impl Spec {
    /// `kind` at `percent` % of `seq_len` (rounded half up).
    pub fn new(kind: PolicyKind, percent: u32, heavy_fraction: f64, seq_len: usize) -> Self {
        Self { kind, percent, budget: budget_tokens(percent, seq_len), heavy_fraction }
    }

    /// The full cache.
    pub fn full(seq_len: usize) -> Self {
        Self::new(PolicyKind::Full, 100, 0.0, seq_len)
    }

    /// Label such as `h2o(0.5)`.
    pub fn label(&self) -> String {
        match self.kind {
            PolicyKind::H2o => format!("h2o({})", self.heavy_fraction),
            k => k.name().to_string(),
        }
    }
}

/// The grid: full; recent, heavy and H2O (heavy fraction 0.5) at each
/// of `percents`; then H2O at `sweep_percent` with each other `fractions`.
pub fn grid(percents: &[u32], fractions: &[f64], sweep_percent: u32, seq_len: usize) -> Vec<Spec> {
    let mut specs = vec![Spec::full(seq_len)];
    for &p in percents {
        for (kind, f) in
            [(PolicyKind::Recent, 0.0), (PolicyKind::Heavy, 0.0), (PolicyKind::H2o, 0.5)]
        {
            specs.push(Spec::new(kind, p, f, seq_len));
        }
    }
    for &f in fractions {
        let s = Spec::new(PolicyKind::H2o, sweep_percent, f, seq_len);
        if !specs.contains(&s) {
            specs.push(s);
        }
    }
    specs
}

/// Per-window sums of one configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sums {
    predictions: u64,
    nll: f64,
    agree: u64,
    kl: f64,
    kv_bytes_end: u64,
    kv_bytes_steps: u64,
    steps: u64,
}

impl Sums {
    fn add(&mut self, o: &Self) {
        self.predictions += o.predictions;
        self.nll += o.nll;
        self.agree += o.agree;
        self.kl += o.kl;
        self.kv_bytes_end += o.kv_bytes_end;
        self.kv_bytes_steps += o.kv_bytes_steps;
        self.steps += o.steps;
    }
}

/// The measured quality of one configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// The configuration.
    pub spec: Spec,
    /// Predictions scored.
    pub predictions: u64,
    /// Sum of negative log-likelihoods, in nats.
    pub nll_sum: f64,
    /// `exp(mean NLL)`.
    pub perplexity: f64,
    /// Perplexity divided by the full cache's.
    pub ratio: f64,
    /// Fraction of predictions whose argmax equals the full cache's.
    pub top1_agreement: f64,
    /// Mean KL(full ‖ this) over predictions, in nats.
    pub kl: f64,
    /// Key/value bytes resident at the end of a window (all layers and heads),
    /// averaged over windows.
    pub kv_bytes_end: f64,
    /// Key/value bytes resident after each step, averaged over all steps.
    pub kv_bytes_mean: f64,
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

/// Sums of the reference and of each spec over one window.
type WindowResult = Result<(Sums, Vec<Sums>)>;

/// One worker's decoders: the full-cache reference and one per spec.
struct Worker<'m> {
    reference: Decoder<'m>,
    decoders: Vec<Decoder<'m>>,
    /// `[predictions × vocab]` full-cache log-probabilities and probabilities.
    ref_logp: Vec<f64>,
    ref_p: Vec<f64>,
    ref_top: Vec<u32>,
    logp: Vec<f64>,
}

impl<'m> Worker<'m> {
    fn new(model: &'m Model, specs: &[Spec], order: StepOrder) -> Result<Self> {
        let c = &model.config;
        let policy = |s: &Spec| s.kind.build(s.budget, s.heavy_fraction, c.seq_len);
        Ok(Self {
            reference: Decoder::new(model, policy(&Spec::full(c.seq_len))?, order)?,
            decoders: specs
                .iter()
                .map(|s| Decoder::new(model, policy(s)?, order))
                .collect::<Result<_>>()?,
            ref_logp: vec![0.0; c.seq_len * c.vocab_size],
            ref_p: vec![0.0; c.seq_len * c.vocab_size],
            ref_top: vec![0; c.seq_len],
            logp: vec![0.0; c.vocab_size],
        })
    }

    /// Sums of the reference, then of each spec, over one window.
    fn window(&mut self, window: &[u32]) -> WindowResult {
        let vocab = self.logp.len();
        let predictions = window.len().saturating_sub(1);
        let mut reference = Sums::default();
        self.reference.reset();
        for (i, &t) in window.iter().enumerate() {
            let logits = self.reference.forward(t)?;
            if i < predictions {
                let lp = &mut self.ref_logp[i * vocab..][..vocab];
                log_softmax(logits, lp);
                reference.nll -= lp[window[i + 1] as usize];
                reference.predictions += 1;
                for (p, l) in self.ref_p[i * vocab..][..vocab].iter_mut().zip(lp.iter()) {
                    *p = l.exp();
                }
                self.ref_top[i] = argmax(logits);
            }
        }
        let mut out = Vec::with_capacity(self.decoders.len());
        for d in &mut self.decoders {
            d.reset();
            let mut s = Sums::default();
            for (i, &t) in window.iter().enumerate() {
                let logits = d.forward(t)?;
                if i < predictions {
                    log_softmax(logits, &mut self.logp);
                    s.nll -= self.logp[window[i + 1] as usize];
                    s.agree += u64::from(argmax(logits) == self.ref_top[i]);
                    let (rl, rp) = (&self.ref_logp[i * vocab..][..vocab], &self.ref_p[i * vocab..]);
                    s.kl += rp
                        .iter()
                        .zip(rl)
                        .zip(&self.logp)
                        .map(|((p, a), b)| p * (a - b))
                        .sum::<f64>();
                    s.predictions += 1;
                }
                s.kv_bytes_steps += d.kv_bytes() as u64;
                s.steps += 1;
            }
            s.kv_bytes_end = d.kv_bytes() as u64;
            out.push(s);
        }
        Ok((reference, out))
    }
}

/// Runs every spec over every window on `threads` threads (at least 1);
/// `progress(done, total)` is called after each window. Ratios, agreement
/// and KL are relative to a full-cache reference run over the same windows.
///
/// # Errors
/// The first error of any window (in window order), as [`Decoder::forward`].
pub fn evaluate(
    model: &Model,
    windows: &[Vec<u32>],
    specs: &[Spec],
    order: StepOrder,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<Row>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<WindowResult>>> =
        Mutex::new((0..windows.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, windows.len().max(1)) {
            scope.spawn(|| {
                let mut worker = match Worker::new(model, specs, order) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        results.lock().unwrap_or_else(|p| p.into_inner())[0] = Some(Err(e));
                        None
                    }
                };
                while let Some(w) = worker.as_mut() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= windows.len() {
                        break;
                    }
                    let r = w.window(&windows[i]);
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, windows.len());
                }
            });
        }
    });
    let mut totals = vec![Sums::default(); specs.len()];
    let mut reference = Sums::default();
    for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let (r, sums) = r.expect("every window is taken by a worker")?;
        for (t, s) in totals.iter_mut().zip(&sums) {
            t.add(s);
        }
        reference.add(&r);
    }
    let ppl = |s: &Sums| (s.nll / s.predictions.max(1) as f64).exp();
    let full_ppl = ppl(&reference);
    Ok(specs
        .iter()
        .zip(&totals)
        .map(|(spec, s)| {
            let n = s.predictions.max(1) as f64;
            let windows = windows.len().max(1) as f64;
            Row {
                spec: *spec,
                predictions: s.predictions,
                nll_sum: s.nll,
                perplexity: ppl(s),
                ratio: ppl(s) / full_ppl,
                top1_agreement: s.agree as f64 / n,
                kl: s.kl / n,
                kv_bytes_end: s.kv_bytes_end as f64 / windows,
                kv_bytes_mean: s.kv_bytes_steps as f64 / s.steps.max(1) as f64,
            }
        })
        .collect())
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| policy | budget | tokens | perplexity | × full | top-1 agree | KL (nats) | KV KiB at end |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out += &format!(
            "| {} | {}% | {} | {:.3} | {:.3} | {:.3} | {:.4} | {:.0} |\n",
            r.spec.label(),
            r.spec.percent,
            r.spec.budget,
            r.perplexity,
            r.ratio,
            r.top1_agreement,
            r.kl,
            r.kv_bytes_end / 1024.0
        );
    }
    out
}

/// The rows as CSV, one header line.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "policy,heavy_fraction,budget_percent,budget_tokens,predictions,perplexity,\
         ratio_to_full,top1_agreement,mean_kl_nats,kv_bytes_end,kv_bytes_mean\n",
    );
    for r in rows {
        let fraction = match r.spec.kind {
            PolicyKind::H2o => r.spec.heavy_fraction.to_string(),
            _ => String::new(),
        };
        out += &format!(
            "{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.0},{:.0}\n",
            r.spec.kind.name(),
            fraction,
            r.spec.percent,
            r.spec.budget,
            r.predictions,
            r.perplexity,
            r.ratio,
            r.top1_agreement,
            r.kl,
            r.kv_bytes_end,
            r.kv_bytes_mean
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories_split_on_the_separator() {
        let text = "One.\nTwo.\n<|endoftext|>\nThree.\n<|endoftext|>\n";
        assert_eq!(stories(text), ["One.\nTwo.", "Three."]);
    }

    #[test]
    fn log_softmax_normalizes() {
        let mut out = [0.0; 3];
        log_softmax(&[1.0, 2.0, 3.0], &mut out);
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for (o, l) in out.iter().zip([1.0, 2.0, 3.0]) {
            assert!((o - (l - z)).abs() < 1e-12);
        }
    }

    #[test]
    fn the_grid_has_each_configuration_once() {
        let g = grid(&[5, 10, 20, 40, 60], &[0.1, 0.25, 0.5, 0.75], 20, 512);
        assert_eq!(g.len(), 1 + 3 * 5 + 3);
        assert_eq!(g[0].kind, PolicyKind::Full);
        let budgets: Vec<usize> = g[1..].iter().step_by(3).take(5).map(|s| s.budget).collect();
        assert_eq!(budgets, [26, 51, 102, 205, 307]);
    }
}
