//! Brute-force models of the policy family beyond H2O, written from the
//! policy table of `docs/semantics.md` (§8) and the papers, not from the
//! crate's code, plus the prefill compression and budget rules.
//!
//! - [`FamilyModel`]: one KV head as a `Vec` of tokens in position order,
//!   each with its key, value, accumulated score, the last attention's
//!   (group-summed) weight and the number of attentions that covered it.
//!   Attention is [`attention_row`] (the textbook formula in f64, with its
//!   rounding bound). Eviction sorts: keep the protected tokens (sinks and
//!   the recent window), then the best others by the policy's key.
//! - [`snapkv_keep`], [`adakv_budgets`]: SnapKV selection and Ada-KV's head
//!   split by full sorts.

use super::bounds::{Fp, Output, SLACK, attention_row};
use super::oracle::Tie;

/// A policy of the family as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// StreamingLLM: positions `0..n_sink` + the newest `budget − n_sink`.
    SinkWindow {
        /// Attention sinks (absolute positions `0..n_sink`).
        n_sink: usize,
        /// Tokens kept.
        budget: usize,
    },
    /// H2O with sinks: sinks + newest `recent` + the best `heavy − n_sink`
    /// others by accumulated score.
    H2OSinks {
        /// Heavy slots, sinks included.
        heavy: usize,
        /// Recent window.
        recent: usize,
        /// Sinks.
        n_sink: usize,
        /// Ties.
        tie: Tie,
    },
    /// TOVA: the best `budget` by the last attention's weight.
    Tova {
        /// Tokens kept.
        budget: usize,
        /// Ties.
        tie: Tie,
    },
    /// Mean score: like H2O, ranked by score / attentions.
    Mean {
        /// Heavy slots.
        heavy: usize,
        /// Recent window.
        recent: usize,
        /// Ties.
        tie: Tie,
    },
}

impl Family {
    /// Tokens kept after an eviction.
    pub fn budget(self) -> usize {
        match self {
            Family::SinkWindow { budget, .. } | Family::Tova { budget, .. } => budget,
            Family::H2OSinks { heavy, recent, .. } | Family::Mean { heavy, recent, .. } => {
                heavy + recent
            }
        }
    }

    /// The newest tokens that are never evicted.
    pub fn recent(self) -> usize {
        match self {
            Family::SinkWindow { n_sink, budget } => budget - n_sink,
            Family::H2OSinks { recent, .. } | Family::Mean { recent, .. } => recent,
            Family::Tova { .. } => 0,
        }
    }

    /// Positions `0..sinks()` are never evicted.
    pub fn sinks(self) -> usize {
        match self {
            Family::SinkWindow { n_sink, .. } | Family::H2OSinks { n_sink, .. } => n_sink,
            _ => 0,
        }
    }

    fn tie(self) -> Tie {
        match self {
            Family::SinkWindow { .. } => Tie::KeepNewer,
            Family::H2OSinks { tie, .. } | Family::Tova { tie, .. } | Family::Mean { tie, .. } => {
                tie
            }
        }
    }

    /// Tokens the store holds at once.
    pub fn slots(self) -> usize {
        self.budget() + 1
    }

    /// Whether scores (rather than positions alone) rank the candidates.
    pub fn scored(self) -> bool {
        !matches!(self, Family::SinkWindow { .. })
    }

    /// The ranking key of a candidate (higher is kept) and its error bound;
    /// `None` ranks by position alone (newer kept).
    fn key(self, t: &FTok) -> Option<(f64, f64)> {
        match self {
            Family::SinkWindow { .. } => None,
            Family::H2OSinks { .. } => Some((t.score, t.tol)),
            // A token no attention has covered yet has no evidence against
            // it: it ranks above every attended token.
            Family::Tova { .. } | Family::Mean { .. } if t.attended == 0 => {
                Some((f64::INFINITY, 0.0))
            }
            Family::Tova { .. } => Some((t.last, t.last_tol)),
            Family::Mean { .. } => {
                let n = t.attended as f64;
                Some((t.score / n, t.tol / n + 2.0 * f64::EPSILON * t.score / n))
            }
        }
    }
}

/// One cached token.
#[derive(Debug, Clone)]
pub struct FTok {
    /// Absolute position.
    pub position: u64,
    /// `[d]`.
    pub key: Vec<f64>,
    /// `[d]`.
    pub value: Vec<f64>,
    /// Accumulated weight.
    pub score: f64,
    /// Bound on the score's error (before `SLACK`).
    pub tol: f64,
    /// The last attention's weight on it, summed over the group.
    pub last: f64,
    /// Bound on `last`'s error.
    pub last_tol: f64,
    /// Attentions (rows) that covered it.
    pub attended: u64,
    /// First row that could see it.
    pub born: u64,
    /// The last row that covered it.
    pub last_row: Option<u64>,
}

/// An eviction the model made, with what it needs to judge another choice.
#[derive(Debug, Clone)]
pub struct FDecision {
    /// Tokens before the eviction.
    pub before: Vec<FTok>,
    /// Whether the token at each index of `before` was protected.
    pub protected: Vec<bool>,
    /// Rows issued before the eviction.
    pub rows: u64,
    /// Whether a key (not position alone) chose the victims.
    pub scored: bool,
}

/// What the model predicts a call fails with: no room for more tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    /// Tokens resident.
    pub len: usize,
    /// Store size.
    pub capacity: usize,
}

/// The brute-force model of one KV head under a [`Family`] policy.
#[derive(Debug, Clone)]
pub struct FamilyModel {
    rule: Family,
    d: usize,
    group: usize,
    scale: f64,
    fp: Fp,
    /// Resident tokens, ascending positions.
    pub tokens: Vec<FTok>,
    next_position: u64,
    rows: u64,
    /// Positions evicted by the last call, ascending.
    pub last_evicted: Vec<u64>,
}

type Step = Result<(Output, Option<FDecision>), NoRoom>;

impl FamilyModel {
    /// An empty head of `d` serving `group` query heads.
    pub fn new(rule: Family, d: usize, group: usize, scale: f64, fp: Fp) -> Self {
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

    /// The rule.
    pub fn rule(&self) -> Family {
        self.rule
    }

    /// Resident positions, ascending.
    pub fn positions(&self) -> Vec<u64> {
        self.tokens.iter().map(|t| t.position).collect()
    }

    /// Position of the next token.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    fn room(&self) -> Result<(), NoRoom> {
        if self.tokens.len() >= self.rule.slots() {
            return Err(NoRoom { len: self.tokens.len(), capacity: self.rule.slots() });
        }
        Ok(())
    }

    fn push(&mut self, key: &[f64], value: &[f64], born: u64) {
        self.tokens.push(FTok {
            position: self.next_position,
            key: key.to_vec(),
            value: value.to_vec(),
            score: 0.0,
            tol: 0.0,
            last: 0.0,
            last_tol: 0.0,
            attended: 0,
            born,
            last_row: None,
        });
        self.next_position += 1;
    }

    /// One attention row of the group's queries over the first `visible`
    /// tokens.
    fn attend_row(&mut self, q: &[f64], visible: usize) -> Output {
        let mut out = Output::default();
        for t in &mut self.tokens[..visible] {
            t.last = 0.0;
            t.last_tol = 0.0;
            t.attended += 1;
            t.last_row = Some(self.rows);
        }
        for qh in q.chunks(self.d) {
            let toks = &self.tokens[..visible];
            let keys: Vec<&[f64]> = toks.iter().map(|t| t.key.as_slice()).collect();
            let values: Vec<&[f64]> = toks.iter().map(|t| t.value.as_slice()).collect();
            let row = attention_row(qh, &keys, &values, self.scale, self.fp);
            for (t, w) in self.tokens.iter_mut().zip(&row.weights) {
                let err = w * row.weight_rel + row.weight_abs;
                t.score += w;
                t.tol += err + 2.0 * f64::EPSILON * t.score;
                t.last += w;
                t.last_tol += err + 2.0 * f64::EPSILON * t.last;
            }
            out.values.extend(row.out);
            out.tol.extend(row.out_tol);
        }
        self.rows += 1;
        out
    }

    /// Stores a token; never evicts.
    pub fn insert(&mut self, key: &[f64], value: &[f64]) -> Result<(), NoRoom> {
        self.room()?;
        self.last_evicted.clear();
        self.push(key, value, self.rows);
        Ok(())
    }

    /// Attends over every resident token; no eviction.
    pub fn attend(&mut self, q: &[f64]) -> Output {
        self.last_evicted.clear();
        self.attend_row(q, self.tokens.len())
    }

    /// Evicts down to the budget.
    pub fn evict(&mut self) -> Option<FDecision> {
        self.last_evicted.clear();
        self.evict_to(self.rule.budget(), self.rule.recent())
    }

    /// Keeps `target` tokens: the sinks, the newest `recent`, then the best
    /// others.
    fn evict_to(&mut self, target: usize, recent: usize) -> Option<FDecision> {
        let n = self.tokens.len();
        if n <= target {
            return None;
        }
        let sinks = self.rule.sinks() as u64;
        let protected: Vec<bool> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| t.position < sinks || i + recent >= n)
            .collect();
        let kept_protected = protected.iter().filter(|&&p| p).count();
        let mut others: Vec<&FTok> =
            self.tokens.iter().zip(&protected).filter(|(_, p)| !**p).map(|(t, _)| t).collect();
        let rule = self.rule;
        others.sort_by(|a, b| rank(rule, a, b));
        let keep = target.saturating_sub(kept_protected);
        let mut evicted: Vec<u64> =
            others[keep.min(others.len())..].iter().map(|t| t.position).collect();
        evicted.sort_unstable();
        let before = self.tokens.clone();
        self.tokens.retain(|t| !evicted.contains(&t.position));
        self.last_evicted = evicted;
        Some(FDecision { before, protected, rows: self.rows, scored: rule.scored() })
    }

    /// Insert, attend over everything, evict.
    pub fn step(&mut self, q: &[f64], k: &[f64], v: &[f64]) -> Step {
        self.room()?;
        self.push(k, v, self.rows);
        let out = self.attend_row(q, self.tokens.len());
        self.last_evicted.clear();
        Ok((out, self.evict_to(self.rule.budget(), self.rule.recent())))
    }

    /// Attend over the residents, insert, evict.
    pub fn step_document_order(&mut self, q: &[f64], k: &[f64], v: &[f64]) -> Step {
        self.room()?;
        let out = self.attend_row(q, self.tokens.len());
        self.push(k, v, self.rows);
        self.last_evicted.clear();
        Ok((out, self.evict_to(self.rule.budget(), self.rule.recent())))
    }

    /// Evict to `budget − 1` (the newest `recent − 1` protected: the new
    /// token will be the window's newest), insert, attend over everything.
    pub fn step_evict_first(&mut self, q: &[f64], k: &[f64], v: &[f64]) -> Step {
        let dec = self.evict_for_insert();
        Ok((self.insert_attend(q, k, v), dec))
    }

    /// The eviction phase of [`step_evict_first`](Self::step_evict_first).
    pub fn evict_for_insert(&mut self) -> Option<FDecision> {
        self.last_evicted.clear();
        self.evict_to(self.rule.budget() - 1, self.rule.recent().saturating_sub(1))
    }

    /// The insert and attention phase of
    /// [`step_evict_first`](Self::step_evict_first).
    pub fn insert_attend(&mut self, q: &[f64], k: &[f64], v: &[f64]) -> Output {
        self.push(k, v, self.rows);
        self.attend_row(q, self.tokens.len())
    }

    /// Prefill of `P` tokens, causal, one eviction at the end.
    pub fn prefill(&mut self, q: &[f64], keys: &[f64], values: &[f64]) -> Step {
        let p = keys.len() / self.d;
        if p == 0 {
            return Ok((Output::default(), None));
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
        self.last_evicted.clear();
        Ok((out, self.evict_to(self.rule.budget(), self.rule.recent())))
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.tokens.clear();
        self.next_position = 0;
        self.last_evicted.clear();
    }

    /// Whether two tokens' keys must be bit-identical in any correct
    /// implementation.
    fn exactly_tied(&self, a: &FTok, b: &FTok, rows: u64) -> bool {
        let same_key = a.key.iter().zip(&b.key).all(|(x, y)| x.to_bits() == y.to_bits());
        match self.rule {
            Family::SinkWindow { .. } => false,
            Family::Tova { .. } => {
                (a.attended == 0 && b.attended == 0)
                    || (same_key && a.last_row.is_some() && a.last_row == b.last_row)
            }
            Family::H2OSinks { .. } | Family::Mean { .. } => {
                a.born == b.born && (same_key || a.born >= rows)
            }
        }
    }

    /// Accepts `observed` (the implementation's kept positions after `dec`)
    /// if it differs from the model only by near-ties, and re-syncs to it.
    /// Returns whether a re-sync happened.
    pub fn adopt(&mut self, dec: &FDecision, observed: &[u64]) -> Result<bool, String> {
        let find = |p: u64| dec.before.iter().position(|t| t.position == p);
        if let Some(&p) = observed.iter().find(|&&p| find(p).is_none()) {
            return Err(format!("kept position {p} was not resident before the eviction"));
        }
        let mine = self.positions();
        if observed.len() != mine.len() {
            return Err(format!("kept {observed:?}, the model keeps {mine:?}"));
        }
        // Exact ties split by the observed choice must follow the tie rule.
        let tie = self.rule.tie();
        for (ia, a) in dec.before.iter().enumerate() {
            for (ib, b) in dec.before.iter().enumerate() {
                let split = observed.contains(&a.position) && !observed.contains(&b.position);
                if split
                    && !dec.protected[ia]
                    && !dec.protected[ib]
                    && dec.scored
                    && self.exactly_tied(a, b, dec.rows)
                    && tie_prefers(tie, b, a)
                {
                    return Err(format!(
                        "exact tie broken against {tie:?}: kept {}, evicted {}",
                        a.position, b.position
                    ));
                }
            }
        }
        if mine == observed {
            return Ok(false);
        }
        let only_mine: Vec<usize> =
            mine.iter().filter(|p| !observed.contains(p)).filter_map(|&p| find(p)).collect();
        let only_theirs: Vec<usize> =
            observed.iter().filter(|p| !mine.contains(p)).filter_map(|&p| find(p)).collect();
        if let Some(&i) = only_mine.iter().find(|&&i| dec.protected[i]) {
            return Err(format!("evicted protected position {}", dec.before[i].position));
        }
        if !dec.scored {
            return Err(format!("kept {observed:?}, the model keeps {mine:?} (positions only)"));
        }
        for &ia in &only_mine {
            for &ib in &only_theirs {
                let (a, b) = (&dec.before[ia], &dec.before[ib]);
                let (ka, ta) = self.rule.key(a).expect("scored");
                let (kb, tb) = self.rule.key(b).expect("scored");
                let gap = ka - kb;
                let band = SLACK * (ta + tb);
                if gap.is_nan() || gap > band || self.exactly_tied(a, b, dec.rows) {
                    return Err(format!(
                        "kept {} (key {kb}) over {} (key {ka}): gap {gap:e} is not a near-tie \
                         (band {band:e}); kept {observed:?}, the model keeps {mine:?}",
                        b.position, a.position
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

/// Whether the tie rule keeps `a` over `b` when their keys are equal.
fn tie_prefers(tie: Tie, a: &FTok, b: &FTok) -> bool {
    match tie {
        Tie::KeepOlder => a.position < b.position,
        Tie::KeepNewer => a.position > b.position,
    }
}

/// Kept first: higher key, then the tie rule; position-only rules keep the
/// newer.
fn rank(rule: Family, a: &FTok, b: &FTok) -> core::cmp::Ordering {
    match (rule.key(a), rule.key(b)) {
        (Some((ka, _)), Some((kb, _))) => kb.total_cmp(&ka).then_with(|| {
            if tie_prefers(rule.tie(), a, b) {
                core::cmp::Ordering::Less
            } else {
                core::cmp::Ordering::Greater
            }
        }),
        _ => b.position.cmp(&a.position),
    }
}

/// SnapKV by full sorting: which of `n` tokens a head keeps.
pub fn snapkv_keep(
    scores: &[f64],
    window: usize,
    kernel: usize,
    budget: usize,
    keep_older: bool,
) -> Vec<bool> {
    let n = scores.len();
    if n <= budget {
        return vec![true; n];
    }
    let w = window.min(budget).min(n);
    let m = n - w;
    let r = kernel / 2;
    let pooled: Vec<f64> = (0..m)
        .map(|j| {
            let mut best = f64::NEG_INFINITY;
            for i in 0..m {
                if i + r >= j && i <= j + r {
                    best = best.max(scores[i]);
                }
            }
            best
        })
        .collect();
    let mut idx: Vec<usize> = (0..m).collect();
    idx.sort_by(|&a, &b| {
        pooled[b].total_cmp(&pooled[a]).then(if keep_older { a.cmp(&b) } else { b.cmp(&a) })
    });
    let mut keep = vec![false; n];
    for &j in &idx[..budget - w] {
        keep[j] = true;
    }
    for k in keep.iter_mut().skip(m) {
        *k = true;
    }
    keep
}

/// Ada-KV by full sorting: each head's share of `total`.
pub fn adakv_budgets(
    scores: &[f64],
    heads: usize,
    total: usize,
    safeguard: f64,
    keep_older: bool,
) -> Vec<usize> {
    let n = scores.len() / heads;
    if total >= heads * n {
        return vec![n; heads];
    }
    let safe = ((safeguard * (total as f64 / heads as f64)).floor() as usize).min(n);
    let pos_order = |a: usize, b: usize| if keep_older { a.cmp(&b) } else { b.cmp(&a) };
    let mut budgets = vec![safe; heads];
    let mut rest: Vec<(f64, usize, usize)> = vec![];
    for h in 0..heads {
        let mut own: Vec<usize> = (0..n).collect();
        own.sort_by(|&a, &b| scores[h * n + b].total_cmp(&scores[h * n + a]).then(pos_order(a, b)));
        for &j in &own[safe..] {
            rest.push((scores[h * n + j], h, j));
        }
    }
    rest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(pos_order(a.2, b.2)));
    for &(_, h, _) in &rest[..total - heads * safe] {
        budgets[h] += 1;
    }
    budgets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(rule: Family) -> FamilyModel {
        FamilyModel::new(rule, 1, 1, 1.0, Fp::EXACT)
    }

    /// The model itself against numbers worked out by hand.
    #[test]
    fn family_model_sanity() {
        // Sinks + window: 2 sinks and a window of 3.
        let mut m = model(Family::SinkWindow { n_sink: 2, budget: 5 });
        for t in 0..9 {
            m.step(&[1.0], &[f64::from(t)], &[0.0]).unwrap();
        }
        assert_eq!((m.positions(), m.last_evicted.clone()), (vec![0, 1, 6, 7, 8], vec![5]));

        // TOVA, budget 2: weights 1 : 1 : e² (tie, the newer goes), then
        // q = −1 gives token 2 weight e⁻² and it goes.
        let mut m = model(Family::Tova { budget: 2, tie: Tie::KeepOlder });
        for (q, k) in [(1.0, 0.0), (1.0, 0.0), (1.0, 2.0), (-1.0, 0.0)] {
            m.step(&[q], &[k], &[0.0]).unwrap();
        }
        assert_eq!((m.positions(), m.last_evicted.clone()), (vec![0, 3], vec![2]));

        // Mean score vs H2O: token 0 has acc 1.6 over 3 attentions, token 1
        // acc 1.1 over 2; the mean keeps token 1.
        let mut m = model(Family::Mean { heavy: 1, recent: 1, tie: Tie::KeepOlder });
        m.insert(&[0.0], &[0.0]).unwrap();
        m.attend(&[0.0]);
        m.insert(&[6f64.ln()], &[0.0]).unwrap();
        m.attend(&[0.0]);
        m.insert(&[3f64.ln()], &[0.0]).unwrap();
        m.attend(&[1.0]);
        assert!((m.tokens[0].score - 1.6).abs() < 1e-12 && m.tokens[0].attended == 3);
        assert!((m.tokens[1].score - 1.1).abs() < 1e-12 && m.tokens[1].attended == 2);
        m.evict().unwrap();
        assert_eq!(m.positions(), [1, 2]);

        // Evict-insert-attend: a window of 3 sees exactly 3 tokens.
        let mut m = model(Family::SinkWindow { n_sink: 0, budget: 3 });
        for t in 0..5 {
            let (out, _) = m.step_evict_first(&[0.0], &[f64::from(t)], &[f64::from(t)]).unwrap();
            if t >= 2 {
                // Uniform weights over the newest 3 values.
                assert!((out.values[0] - f64::from(t - 1)).abs() < 1e-12);
            }
        }
        assert_eq!(m.positions(), [2, 3, 4]);
    }

    #[test]
    fn compression_models_by_hand() {
        let s = [0.1, 0.0, 0.9, 0.0, 0.0, 0.2, 0.0, 0.05, 7.0, 7.0];
        let keep = snapkv_keep(&s, 2, 3, 5, true);
        let kept: Vec<usize> = (0..10).filter(|&j| keep[j]).collect();
        assert_eq!(kept, [1, 2, 3, 8, 9]);
        let scores = [0.90, 0.05, 0.03, 0.02, 0.30, 0.25, 0.25, 0.20];
        assert_eq!(adakv_budgets(&scores, 2, 4, 0.0, true), [1, 3]);
        assert_eq!(adakv_budgets(&scores, 2, 4, 1.0, true), [2, 2]);
    }
}
