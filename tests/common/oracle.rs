//! A brute-force model of one KV head, written from `docs/semantics.md`
//! (§1–§6) and `tests/data/h2o_traces/FORMAT.md`, not from the crate's code.
//!
//! - The cache is a `Vec` of tokens in position order, each with its key,
//!   value and accumulated score (f64).
//! - Attention is the textbook formula in f64 ([`attention_row`]): logits
//!   `scale · q·k`, softmax with the maximum subtracted, weighted sum of the
//!   values.
//! - Eviction sorts: keep the newest `recent` tokens, keep the `heavy` best of
//!   the others by score (ties by the tie rule), drop the rest.
//! - Prefill is causal (row `i` sees every resident token and chunk tokens
//!   `0..=i`), every token gains its column sum, one eviction at the end.
//!
//! Alongside each score the model carries the bound from
//! [`super::bounds`] on how far an implementation computing in a narrower
//! float may be from it; [`Model::adopt`] (in `bounds`) uses it to tell a
//! near-tie from a real disagreement.

use super::bounds::{Fp, Output, attention_row};

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
}

/// Best first: higher score, then the tie rule.
pub fn rank(tie: Tie, a: &Tok, b: &Tok) -> core::cmp::Ordering {
    b.score.total_cmp(&a.score).then_with(|| match tie {
        Tie::KeepOlder => a.position.cmp(&b.position),
        Tie::KeepNewer => b.position.cmp(&a.position),
    })
}
