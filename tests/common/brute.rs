//! A brute-force model of one KV head, written from `DESIGN.md` §1–§4 and
//! `tests/data/h2o_traces/FORMAT.md`, not from the crate's code.
//!
//! - The cache is a `Vec` of tokens in position order, each with its key,
//!   value and accumulated score (f64).
//! - Attention is the textbook formula in f64: logits `scale · q·k`, softmax
//!   with the maximum subtracted, weighted sum of the values.
//! - Eviction sorts: keep the newest `recent` tokens, keep the `heavy` best of
//!   the others by score (ties by the tie rule), drop the rest.
//! - Prefill is causal (row `i` sees every resident token and chunk tokens
//!   `0..=i`), every token gains its column sum, one eviction at the end.
//!
//! Alongside each number the model carries a bound on how far an
//! implementation computing in a float of machine epsilon `u` may be from it
//! (a first-order rounding analysis; see [`attention_row`]). The tests compare
//! with `SLACK` times that bound, and use it to tell a near-tie (where
//! rounding may legitimately flip an eviction) from a real disagreement.

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

/// Which tokens a policy keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Never evicts; holds at most `capacity` tokens.
    Full {
        /// Tokens the cache can hold.
        capacity: usize,
    },
    /// Keeps the newest `recent` tokens plus the `heavy` highest-scoring others.
    Evicting {
        /// Heavy-hitter slots.
        heavy: usize,
        /// Newest tokens always kept (including the ones inserted this call).
        recent: usize,
        /// How exact score ties are broken.
        tie: Tie,
    },
}

/// Which of two exactly equal scores survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tie {
    /// Keep the older token (smaller position).
    KeepOlder,
    /// Keep the newer token.
    KeepNewer,
}

impl Rule {
    /// FullCache: everything, up to `capacity`.
    pub fn full(capacity: usize) -> Self {
        Rule::Full { capacity }
    }
    /// RecentOnly: a window of `budget` tokens (no heavy hitters).
    pub fn recent_only(budget: usize) -> Self {
        Rule::Evicting { heavy: 0, recent: budget, tie: Tie::KeepOlder }
    }
    /// HeavyOnly: the newest token is protected, `budget − 1` heavy hitters.
    pub fn heavy_only(budget: usize, tie: Tie) -> Self {
        Rule::Evicting { heavy: budget - 1, recent: 1, tie }
    }
    /// H2O: `heavy` heavy hitters + `recent` newest tokens.
    pub fn h2o(heavy: usize, recent: usize, tie: Tie) -> Self {
        Rule::Evicting { heavy, recent, tie }
    }
    /// Tokens the store can hold at once: the capacity, or budget + 1.
    pub fn slots(&self) -> usize {
        match *self {
            Rule::Full { capacity } => capacity,
            Rule::Evicting { heavy, recent, .. } => heavy + recent + 1,
        }
    }
}

/// One cached token.
#[derive(Debug, Clone)]
pub struct Tok {
    /// Absolute position (insertion order from 0).
    pub position: u64,
    /// `[head_dim]`.
    pub key: Vec<f64>,
    /// `[head_dim]`.
    pub value: Vec<f64>,
    /// Accumulated attention weight.
    pub score: f64,
    /// Bound on |implementation score − `score`| (before `SLACK`).
    pub tol: f64,
    /// Index of the first attention row that can see this token. Two tokens
    /// with the same `born` were seen by exactly the same rows.
    pub born: u64,
}

/// What the model predicts a call fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelError {
    /// No room for `requested` more tokens.
    Capacity {
        /// Tokens resident.
        len: usize,
        /// Tokens the store holds at most.
        capacity: usize,
        /// Tokens the call tried to add.
        requested: usize,
    },
}

/// Attention outputs of one call with their error bounds, `[rows × head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The outputs.
    pub values: Vec<f64>,
    /// Per element bound on |implementation − model| (before `SLACK`).
    pub tol: Vec<f64>,
}

/// An eviction the model made, with what it needs to judge another choice.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The tokens before the eviction.
    pub before: Vec<Tok>,
    /// Number of candidates (tokens outside the recent window).
    pub candidates: usize,
    /// Whether scores chose the victims (some heavy hitter slots and more
    /// candidates than slots); otherwise position alone decides.
    pub scored: bool,
    /// Attention rows issued before the eviction.
    pub rows: u64,
    /// Whether the weakest kept and the strongest evicted candidate were
    /// exactly tied (decided by the tie rule alone).
    pub exact_tie: bool,
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

/// The brute-force model of one KV head (serving `group` query heads).
#[derive(Debug, Clone)]
pub struct Model {
    rule: Rule,
    d: usize,
    group: usize,
    scale: f64,
    fp: Fp,
    /// Resident tokens, ascending positions.
    pub tokens: Vec<Tok>,
    next_position: u64,
    rows: u64,
    /// Positions evicted by the last call, ascending.
    pub last_evicted: Vec<u64>,
}

impl Model {
    /// An empty head of `d` elements serving `group` query heads, with
    /// softmax `scale`, checked against an implementation computing in `fp`.
    pub fn new(rule: Rule, d: usize, group: usize, scale: f64, fp: Fp) -> Self {
        Self {
            rule,
            d,
            group,
            scale,
            fp,
            tokens: vec![],
            next_position: 0,
            rows: 0,
            last_evicted: vec![],
        }
    }

    /// The policy rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Resident positions, ascending.
    pub fn positions(&self) -> Vec<u64> {
        self.tokens.iter().map(|t| t.position).collect()
    }

    /// Position the next token gets.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    fn room(&self, n: usize) -> Result<(), ModelError> {
        let (len, capacity) = (self.tokens.len(), self.rule.slots());
        if len + n > capacity {
            return Err(ModelError::Capacity { len, capacity, requested: n });
        }
        Ok(())
    }

    fn push(&mut self, key: &[f64], value: &[f64], born: u64) -> u64 {
        let position = self.next_position;
        let (key, value) = (key.to_vec(), value.to_vec());
        self.tokens.push(Tok { position, key, value, score: 0.0, tol: 0.0, born });
        self.next_position += 1;
        position
    }

    /// Stores a token; never evicts. Fails when the store is full.
    pub fn insert(&mut self, key: &[f64], value: &[f64]) -> Result<u64, ModelError> {
        self.room(1)?;
        self.last_evicted.clear();
        Ok(self.push(key, value, self.rows))
    }

    /// One attention row of the `group` queries `[group × d]` over the first
    /// `visible` tokens: adds the weights to their scores, returns the outputs.
    fn attend_row(&mut self, q: &[f64], visible: usize) -> Output {
        let mut output = Output::default();
        for qh in q.chunks(self.d) {
            let toks = &self.tokens[..visible];
            let keys: Vec<&[f64]> = toks.iter().map(|t| t.key.as_slice()).collect();
            let values: Vec<&[f64]> = toks.iter().map(|t| t.value.as_slice()).collect();
            let row = attention_row(qh, &keys, &values, self.scale, self.fp);
            for (t, w) in self.tokens.iter_mut().zip(&row.weights) {
                t.score += w;
                // The weight's own error plus two f64 roundings of the sum.
                t.tol += w * row.weight_rel + row.weight_abs + 2.0 * f64::EPSILON * t.score;
            }
            output.values.extend(row.out);
            output.tol.extend(row.out_tol);
        }
        self.rows += 1;
        output
    }

    /// Attends with `q` `[group × d]` over every resident token; no eviction.
    pub fn attend(&mut self, q: &[f64]) -> Output {
        self.last_evicted.clear();
        self.attend_row(q, self.tokens.len())
    }

    /// Evicts down to the budget. `None` when nothing is evicted.
    pub fn evict(&mut self) -> Option<Decision> {
        self.last_evicted.clear();
        let Rule::Evicting { heavy, recent, tie } = self.rule else { return None };
        let n = self.tokens.len();
        if n <= heavy + recent {
            return None;
        }
        let before = self.tokens.clone();
        let candidates = n - recent;
        let mut order: Vec<&Tok> = before[..candidates].iter().collect();
        order.sort_by(|a, b| rank(tie, a, b));
        let kept: Vec<u64> = order[..heavy].iter().map(|t| t.position).collect();
        let exact_tie = heavy > 0 && self.exactly_tied(order[heavy - 1], order[heavy], self.rows);
        self.last_evicted = order[heavy..].iter().map(|t| t.position).collect();
        self.last_evicted.sort_unstable();
        self.tokens.retain(|t| !self.last_evicted.contains(&t.position));
        debug_assert!(kept.iter().all(|p| self.positions().contains(p)));
        Some(Decision { before, candidates, scored: heavy > 0, rows: self.rows, exact_tie })
    }

    /// Transformer order: insert, attend over everything, evict.
    pub fn step(
        &mut self,
        q: &[f64],
        key: &[f64],
        value: &[f64],
    ) -> Result<(Output, Option<Decision>), ModelError> {
        self.room(1)?;
        self.push(key, value, self.rows);
        let out = self.attend_row(q, self.tokens.len());
        Ok((out, self.evict()))
    }

    /// Document order: attend over the resident tokens, insert, evict.
    pub fn step_document_order(
        &mut self,
        q: &[f64],
        key: &[f64],
        value: &[f64],
    ) -> Result<(Output, Option<Decision>), ModelError> {
        self.room(1)?;
        let out = self.attend_row(q, self.tokens.len());
        self.push(key, value, self.rows);
        Ok((out, self.evict()))
    }

    /// Prefill of `P` tokens: `q` `[P × group × d]`, `keys`/`values`
    /// `[P × d]`. Row `i` sees the residents and chunk tokens `0..=i`; one
    /// eviction at the end. `P = 0` changes nothing. Only a full cache can
    /// run out of room.
    pub fn prefill(
        &mut self,
        q: &[f64],
        keys: &[f64],
        values: &[f64],
    ) -> Result<(Output, Option<Decision>), ModelError> {
        let p = keys.len() / self.d;
        if p == 0 {
            return Ok((Output::default(), None));
        }
        if let Rule::Full { .. } = self.rule {
            self.room(p)?;
        }
        let resident = self.tokens.len();
        for j in 0..p {
            let born = self.rows + j as u64;
            self.push(&keys[j * self.d..][..self.d], &values[j * self.d..][..self.d], born);
        }
        let mut out = Output::default();
        let width = self.group * self.d;
        for i in 0..p {
            let row = self.attend_row(&q[i * width..][..width], resident + i + 1);
            out.values.extend(row.values);
            out.tol.extend(row.tol);
        }
        Ok((out, self.evict()))
    }

    /// Forgets everything; positions restart at 0.
    pub fn reset(&mut self) {
        self.tokens.clear();
        self.next_position = 0;
        self.last_evicted.clear();
    }

    /// Whether `a` and `b` must have bit-identical scores in any correct
    /// implementation: seen by exactly the same attention rows, and either
    /// with identical keys or not seen by any row yet (both exactly 0).
    pub fn exactly_tied(&self, a: &Tok, b: &Tok, rows: u64) -> bool {
        let same_key = a.key.iter().zip(&b.key).all(|(x, y)| x.to_bits() == y.to_bits());
        a.born == b.born && (same_key || a.born >= rows)
    }

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
        let Rule::Evicting { tie, .. } = self.rule else {
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

/// Best first: higher score, then the tie rule.
fn rank(tie: Tie, a: &Tok, b: &Tok) -> core::cmp::Ordering {
    b.score.total_cmp(&a.score).then_with(|| match tie {
        Tie::KeepOlder => a.position.cmp(&b.position),
        Tie::KeepNewer => b.position.cmp(&a.position),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model itself against numbers worked out by hand.
    #[test]
    fn model_sanity() {
        // Two tokens, equal logits: weights 1/2 each.
        let row = attention_row(&[1.0], &[&[0.5], &[0.5]], &[&[2.0], &[4.0]], 1.0, Fp::EXACT);
        assert_eq!(row.weights, [0.5, 0.5]);
        assert_eq!(row.out, [3.0]);
        // H2O(1, 1): the newest is kept, the heaviest other too.
        let mut m = Model::new(Rule::h2o(1, 1, Tie::KeepOlder), 1, 1, 1.0, Fp::EXACT);
        m.step(&[1.0], &[3.0], &[0.0]).unwrap();
        m.step(&[1.0], &[0.0], &[0.0]).unwrap();
        m.step(&[1.0], &[0.0], &[0.0]).unwrap();
        assert_eq!(m.positions(), [0, 2]);
        assert_eq!(m.last_evicted, [1]);
    }

    /// Two candidates for one heavy slot, scores `a` and `b`, error bounds
    /// 1e-6 each; the model keeps the higher.
    fn two_candidates(a: f64, b: f64, same_key: bool) -> (Model, Decision) {
        let mut m = Model::new(Rule::h2o(1, 0, Tie::KeepOlder), 1, 1, 1.0, Fp::EXACT);
        m.insert(&[1.0], &[0.0]).unwrap();
        m.insert(&[if same_key { 1.0 } else { 2.0 }], &[0.0]).unwrap();
        m.attend(&[0.0]);
        for (t, s) in m.tokens.iter_mut().zip([a, b]) {
            (t.score, t.tol) = (s, 1e-6);
        }
        let dec = m.evict().unwrap();
        (m, dec)
    }

    #[test]
    fn adopt_accepts_only_near_ties() {
        // Within SLACK·(1e-6 + 1e-6): the other choice is accepted.
        let (mut m, dec) = two_candidates(1.0, 1.0 - 1e-6, false);
        assert_eq!(m.positions(), [0]);
        assert_eq!(m.adopt(&dec, &[1]), Ok(true));
        assert_eq!((m.positions(), m.last_evicted.clone()), (vec![1], vec![0]));
        // Far apart: rejected.
        let (mut m, dec) = two_candidates(1.0, 0.9, false);
        assert!(m.adopt(&dec, &[1]).is_err());
        // Agreeing: no re-sync.
        let (mut m, dec) = two_candidates(1.0, 0.9, false);
        assert_eq!(m.adopt(&dec, &[0]), Ok(false));
        // Exactly tied (same key, same rows): only the tie rule's choice.
        let (mut m, dec) = two_candidates(0.5, 0.5, true);
        assert!(dec.exact_tie);
        assert_eq!(m.positions(), [0]);
        assert!(m.adopt(&dec, &[1]).is_err());
    }
}
