//! Error bounds: textbook softmax attention in f64 with a first-order
//! rounding analysis of an implementation that computes in a narrower float,
//! and the near-tie rule built on it.
//!
//! The oracle ([`super::oracle`]) computes every number in f64; an
//! implementation in f32 (or f16/bf16 widened to f32) rounds differently. The
//! bound says how far it may legitimately be: the tests compare with [`SLACK`]
//! times the bound, and [`Model::adopt`] accepts another eviction choice only
//! when the two candidates' scores are within it (a near-tie), never at an
//! exact tie, where the tie rule decides.

use super::oracle::{Decision, Model, Rule, Tok, rank};

/// Safety factor applied to every first-order error bound.
pub const SLACK: f64 = 4.0;

/// The float type an implementation computes in, as the error bounds see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fp {
    /// Machine epsilon.
    pub eps: f64,
    /// Smallest positive normal number: below it, results are only good to
    /// about this much in absolute terms (gradual underflow).
    pub tiny: f64,
}

impl Fp {
    /// Exact arithmetic (for hand-checked unit tests).
    pub const EXACT: Fp = Fp { eps: 0.0, tiny: 0.0 };
}

/// Attention outputs of one call with their error bounds, `[rows × head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The outputs.
    pub values: Vec<f64>,
    /// Per element bound on |implementation − model| (before `SLACK`).
    pub tol: Vec<f64>,
}

/// One row of softmax attention in f64 with error bounds.
#[derive(Debug, Clone)]
pub struct Row {
    /// `[n]` softmax weights.
    pub weights: Vec<f64>,
    /// Relative error bound on each weight.
    pub weight_rel: f64,
    /// Absolute error bound on each weight from underflow.
    pub weight_abs: f64,
    /// `[d]` output.
    pub out: Vec<f64>,
    /// `[d]` absolute error bound on each output element.
    pub out_tol: Vec<f64>,
}

/// Naive attention of `q` over `keys`/`values`, all f64.
///
/// The bound assumes the implementation works in the float `fp` (machine
/// epsilon `u`) on the same inputs: each logit is off by at most
/// `(d + 2)·u·scale·Σ|q_i k_i|` (dot product and scaling), so each exponent
/// `l − max` by twice that plus its own rounding; `exp` adds `u`, the sum of
/// `n` terms `n·u`, the division `2u`. The output adds the weights' error
/// times `|v|` and its own `n`-term summation. Weights and products below
/// the smallest normal number may be off by that much in absolute terms. An
/// empty row attends to nothing and gives zeros.
pub fn attention_row(q: &[f64], keys: &[&[f64]], values: &[&[f64]], scale: f64, fp: Fp) -> Row {
    let d = q.len();
    let n = keys.len();
    if n == 0 {
        let zeros = vec![0.0; d];
        return Row {
            weights: vec![],
            weight_rel: 0.0,
            weight_abs: 0.0,
            out: zeros.clone(),
            out_tol: zeros,
        };
    }
    let u = fp.eps;
    let dot = |k: &[f64]| q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>();
    let abs_dot = |k: &[f64]| q.iter().zip(k).map(|(a, b)| (a * b).abs()).sum::<f64>();
    let logits: Vec<f64> = keys.iter().map(|k| scale * dot(k)).collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let weights: Vec<f64> = exps.iter().map(|e| e / sum).collect();

    let logit_err = keys
        .iter()
        .zip(&logits)
        .map(|(k, l)| (d as f64 + 2.0) * u * scale * abs_dot(k) + u * l.abs())
        .fold(0.0, f64::max);
    let spread = logits.iter().map(|l| max - l).fold(0.0, f64::max);
    let exp_rel = 2.0 * logit_err + u * spread + u;
    let weight_rel = 2.0 * exp_rel + (n as f64 + 2.0) * u;
    let weight_abs = 2.0 * fp.tiny;

    let mut out = vec![0.0; d];
    let mut abs = vec![0.0; d];
    for (w, v) in weights.iter().zip(values) {
        for i in 0..d {
            out[i] += w * v[i];
            abs[i] += w * v[i].abs();
        }
    }
    let vmax = values.iter().flat_map(|v| v.iter()).fold(0.0f64, |m, x| m.max(x.abs()));
    let underflow = n as f64 * (weight_abs * vmax + fp.tiny);
    let out_tol = (0..d)
        .map(|i| (weight_rel + (n as f64 + 1.0) * u) * abs[i] + u * out[i].abs() + underflow)
        .collect();
    Row { weights, weight_rel, weight_abs, out, out_tol }
}

impl Model {
    /// Accepts `observed` (another implementation's kept positions after the
    /// eviction `dec`) if it differs from the model's only by near-ties, and
    /// re-syncs the model to it. Returns whether a re-sync happened.
    ///
    /// A swap of a model-kept token `a` for a model-evicted token `b` is
    /// accepted only when the eviction was decided by scores, both were
    /// candidates, `score(a) − score(b) ≤ SLACK·(tol(a) + tol(b))`, and the two
    /// are not exactly tied (exact ties must follow the tie rule). In every
    /// case, exactly tied pairs split by `observed` must follow the tie rule.
    pub fn adopt(&mut self, dec: &Decision, observed: &[u64]) -> Result<bool, String> {
        let Rule::Evicting { tie, .. } = self.rule() else {
            return Err("a full cache made an eviction decision".into());
        };
        let find = |p: u64| dec.before.iter().find(|t| t.position == p);
        let cands = &dec.before[..dec.candidates];
        let is_cand = |p: u64| cands.iter().any(|t| t.position == p);
        if let Some(&p) = observed.iter().find(|&&p| find(p).is_none()) {
            return Err(format!("kept position {p} was not resident before the eviction"));
        }
        if observed.len() != self.tokens.len() {
            return Err(format!(
                "kept {} tokens, the model keeps {}: {observed:?} vs {:?}",
                observed.len(),
                self.tokens.len(),
                self.positions()
            ));
        }
        // Exact ties split by the observed choice must follow the rule.
        for a in cands.iter().filter(|t| observed.contains(&t.position)) {
            for b in cands.iter().filter(|t| !observed.contains(&t.position)) {
                if self.exactly_tied(a, b, dec.rows) && rank(tie, a, b).is_gt() {
                    return Err(format!(
                        "exact tie (score {}) broken against the tie rule {tie:?}: kept {}, \
                         evicted {}",
                        a.score, a.position, b.position
                    ));
                }
            }
        }
        let mine = self.positions();
        if mine == observed {
            return Ok(false);
        }
        let only_mine: Vec<&Tok> =
            mine.iter().filter(|p| !observed.contains(p)).filter_map(|&p| find(p)).collect();
        let only_theirs: Vec<&Tok> =
            observed.iter().filter(|p| !mine.contains(p)).filter_map(|&p| find(p)).collect();
        if let Some(t) = only_mine.iter().find(|t| !is_cand(t.position)) {
            return Err(format!("evicted {} from the protected recent window", t.position));
        }
        if !dec.scored {
            return Err(format!(
                "kept {observed:?}, the model keeps {mine:?} (no scores involved)"
            ));
        }
        for a in &only_mine {
            for b in &only_theirs {
                let gap = a.score - b.score;
                let band = SLACK * (a.tol + b.tol);
                if gap > band || self.exactly_tied(a, b, dec.rows) {
                    return Err(format!(
                        "kept {} (score {}) over {} (score {}): gap {gap:e} is not a near-tie \
                         (band {band:e}); kept {observed:?}, the model keeps {mine:?}",
                        b.position, b.score, a.position, a.score
                    ));
                }
            }
        }
        self.tokens =
            dec.before.iter().filter(|t| observed.contains(&t.position)).cloned().collect();
        self.last_evicted =
            dec.before.iter().map(|t| t.position).filter(|p| !observed.contains(p)).collect();
        Ok(true)
    }
}
