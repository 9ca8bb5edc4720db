//! The lockstep harness: a cache under test (one head or a whole layer) and
//! one brute-force model per KV head; [`Harness::apply`] runs one operation
//! on both and compares everything observable.

use h2o_kv::{Element, Error, EvictionPolicy, KvCache, LayerCache};

use super::bounds::{Fp, Output, SLACK};
use super::oracle::{Decision, Model, ModelError, Rule};
use super::{Real, Stats, Token, wide};

/// One head's observable state. `tokens` is in slot order with score bits, so
/// two dumps are equal only if slots, positions and scores are bit-identical
/// (keys and values are checked through the outputs of later calls).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadState {
    /// (position, score bits) in slot order.
    pub tokens: Vec<(u64, u64)>,
    /// Positions evicted by the last call.
    pub last_evicted: Vec<u64>,
    /// Position of the next token.
    pub next_position: u64,
}

fn head_state<T: Element, C: KvCache<T> + ?Sized>(c: &C) -> HeadState {
    HeadState {
        tokens: c.tokens().map(|t| (t.position, t.score.to_bits())).collect(),
        last_evicted: c.last_evicted().to_vec(),
        next_position: c.next_position(),
    }
}

/// What a cache under test can do, single head or layer.
pub trait Subject<T: Element> {
    /// KV heads.
    fn kv_heads(&self) -> usize;
    /// Insert one token.
    fn insert(&mut self, k: &[T], v: &[T]) -> Result<u64, Error>;
    /// Attend without inserting.
    fn attend(&mut self, q: &[T]) -> Result<Vec<T>, Error>;
    /// Evict down to the budget.
    fn evict(&mut self);
    /// Transformer-order step.
    fn step(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error>;
    /// Document-order step.
    fn step_document_order(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error>;
    /// Prefill; the output has the length of `q`.
    fn prefill(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error>;
    /// Forget everything.
    fn reset(&mut self);
    /// One KV head's state.
    fn head(&self, h: usize) -> HeadState;
}

/// A single-head cache as a [`Subject`].
#[derive(Debug)]
pub struct Single<C>(pub C);

impl<T: Element, C: KvCache<T>> Subject<T> for Single<C> {
    fn kv_heads(&self) -> usize {
        1
    }
    fn insert(&mut self, k: &[T], v: &[T]) -> Result<u64, Error> {
        self.0.insert(k, v)
    }
    fn attend(&mut self, q: &[T]) -> Result<Vec<T>, Error> {
        self.0.attend(q).map(<[T]>::to_vec)
    }
    fn evict(&mut self) {
        let evicted = self.0.evict().to_vec();
        assert_eq!(evicted, self.0.last_evicted(), "evict() return vs last_evicted()");
    }
    fn step(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error> {
        self.0.step(q, k, v).map(<[T]>::to_vec)
    }
    fn step_document_order(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error> {
        self.0.step_with(h2o_kv::StepOrder::AttendInsertEvict, q, k, v).map(<[T]>::to_vec)
    }
    fn prefill(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error> {
        let mut out = vec![T::default(); q.len()];
        self.0.prefill(q, k, v, &mut out).map(|()| out)
    }
    fn reset(&mut self) {
        self.0.reset();
    }
    fn head(&self, _: usize) -> HeadState {
        head_state(&self.0)
    }
}

/// A [`LayerCache`] as a [`Subject`].
#[derive(Debug)]
pub struct Layer<T: Element, P: EvictionPolicy>(pub LayerCache<T, P>);

impl<T: Element, P: EvictionPolicy> Subject<T> for Layer<T, P> {
    fn kv_heads(&self) -> usize {
        self.0.n_kv_heads()
    }
    fn insert(&mut self, k: &[T], v: &[T]) -> Result<u64, Error> {
        self.0.insert(k, v)
    }
    fn attend(&mut self, q: &[T]) -> Result<Vec<T>, Error> {
        self.0.attend(q).map(<[T]>::to_vec)
    }
    fn evict(&mut self) {
        self.0.evict();
    }
    fn step(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error> {
        self.0.step(q, k, v).map(<[T]>::to_vec)
    }
    fn step_document_order(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error> {
        self.0.step_with(h2o_kv::StepOrder::AttendInsertEvict, q, k, v).map(<[T]>::to_vec)
    }
    fn prefill(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error> {
        let mut out = vec![T::default(); q.len()];
        self.0.prefill(q, k, v, &mut out).map(|()| out)
    }
    fn reset(&mut self) {
        self.0.reset();
    }
    fn head(&self, h: usize) -> HeadState {
        head_state(&self.0.heads()[h])
    }
}

/// One operation with its inputs, laid out for the whole layer.
#[derive(Debug, Clone)]
pub enum Op<T> {
    /// `insert(k, v)`.
    Insert(Token<T>),
    /// `attend(q)`.
    Attend(Token<T>),
    /// `evict()`.
    Evict,
    /// `step(q, k, v)`.
    Step(Token<T>),
    /// `step_document_order(q, k, v)`.
    StepDoc(Token<T>),
    /// `prefill(q, k, v)` of a chunk.
    Prefill(Token<T>),
    /// `reset()`.
    Reset,
}

/// A cache under test and one model per KV head, kept in lockstep.
#[derive(Debug)]
pub struct Harness<S> {
    /// The cache.
    pub subject: S,
    /// One model per KV head.
    pub models: Vec<Model>,
    d: usize,
    g: usize,
}

type ModelResult = Result<(Output, Option<Decision>), ModelError>;

impl<S> Harness<S> {
    /// A cache and its models: `n_kv` heads of `d`, `g` query heads per KV
    /// head, softmax `scale`, compared with bounds for the float `fp`.
    pub fn new(
        subject: S,
        rule: Rule,
        n_kv: usize,
        g: usize,
        d: usize,
        scale: f64,
        fp: Fp,
    ) -> Self {
        let models = (0..n_kv).map(|_| Model::new(rule, d, g, scale, fp)).collect();
        Self { subject, models, d, g }
    }

    /// Runs `f` on each head's model with its share of the layer's inputs and
    /// gathers the outputs back into the layer layout.
    fn on_models(
        &mut self,
        tok: Option<&Token<f64>>,
        rows: usize,
        f: impl Fn(&mut Model, &[f64], &[f64], &[f64]) -> ModelResult,
    ) -> Result<(Output, Vec<Option<Decision>>), ModelError> {
        let (d, g, n_kv) = (self.d, self.g, self.models.len());
        let empty = Token { q: vec![], k: vec![], v: vec![] };
        let tok = tok.unwrap_or(&empty);
        let mut results = vec![];
        for (h, m) in self.models.iter_mut().enumerate() {
            let pick = |x: &[f64], width: usize, n: usize| -> Vec<f64> {
                (0..n).flat_map(|i| x[i * width * n_kv + h * width..][..width].to_vec()).collect()
            };
            let q = pick(&tok.q, g * d, if tok.q.is_empty() { 0 } else { rows });
            let k = pick(&tok.k, d, if tok.k.is_empty() { 0 } else { rows });
            let v = pick(&tok.v, d, if tok.v.is_empty() { 0 } else { rows });
            results.push(f(m, &q, &k, &v)?);
        }
        let mut out = Output::default();
        for i in 0..rows {
            for (o, _) in &results {
                if o.values.is_empty() {
                    continue;
                }
                out.values.extend_from_slice(&o.values[i * g * d..][..g * d]);
                out.tol.extend_from_slice(&o.tol[i * g * d..][..g * d]);
            }
        }
        Ok((out, results.into_iter().map(|(_, dec)| dec).collect()))
    }
}

impl<S> Harness<S> {
    /// Applies `op` to the cache and the models, then compares: the same
    /// result kind (an `Err` must be the predicted one and leave every head
    /// bit-identical), outputs within `SLACK`× the error bound, kept positions
    /// exactly (modulo near-ties, see [`Model::adopt`]), evicted positions,
    /// next position and every score within its bound.
    pub fn apply<T: Real>(&mut self, op: &Op<T>, stats: &Stats) -> Result<(), String>
    where
        S: Subject<T>,
    {
        let before: Vec<HeadState> =
            (0..self.subject.kv_heads()).map(|h| self.subject.head(h)).collect();
        let wide_tok = |t: &Token<T>| Token { q: wide(&t.q), k: wide(&t.k), v: wide(&t.v) };
        let n_kv = self.models.len();
        let (got, want) = match op {
            Op::Insert(t) => {
                let w = wide_tok(t);
                let want = self.on_models(Some(&w), 1, |m, _, k, v| {
                    m.insert(k, v).map(|_| (Output::default(), None))
                });
                let got = self.subject.insert(&t.k, &t.v).map(|_| vec![]);
                (got, want)
            }
            Op::Attend(t) => {
                let w = wide_tok(&Token { q: t.q.clone(), k: vec![], v: vec![] });
                let want = self.on_models(Some(&w), 1, |m, q, _, _| Ok((m.attend(q), None)));
                (self.subject.attend(&t.q), want)
            }
            Op::Evict => {
                let want = self.on_models(None, 0, |m, _, _, _| Ok((Output::default(), m.evict())));
                self.subject.evict();
                (Ok(vec![]), want)
            }
            Op::Step(t) => {
                let want = self.on_models(Some(&wide_tok(t)), 1, |m, q, k, v| m.step(q, k, v));
                (self.subject.step(&t.q, &t.k, &t.v), want)
            }
            Op::StepDoc(t) => {
                let want = self
                    .on_models(Some(&wide_tok(t)), 1, |m, q, k, v| m.step_document_order(q, k, v));
                (self.subject.step_document_order(&t.q, &t.k, &t.v), want)
            }
            Op::Prefill(t) => {
                let rows = t.k.len() / (n_kv * self.d);
                let want =
                    self.on_models(Some(&wide_tok(t)), rows, |m, q, k, v| m.prefill(q, k, v));
                (self.subject.prefill(&t.q, &t.k, &t.v), want)
            }
            Op::Reset => {
                self.models.iter_mut().for_each(Model::reset);
                self.subject.reset();
                (Ok(vec![]), Ok((Output::default(), vec![None; n_kv])))
            }
        };
        let decisions = match (want, got) {
            (Err(ModelError::Capacity { len, capacity, requested }), Err(e)) => {
                let expected = Error::CapacityExceeded { len, capacity, requested };
                if e != expected {
                    return Err(format!(
                        "{}: got {e:?}, the model predicts {expected:?}",
                        op_name(op)
                    ));
                }
                for (h, b) in before.iter().enumerate() {
                    if self.subject.head(h) != *b {
                        return Err(format!("{}: the Err changed head {h}", op_name(op)));
                    }
                }
                stats.errors.set(stats.errors.get() + 1);
                return Ok(());
            }
            (Err(e), Ok(_)) => {
                return Err(format!("{}: the model predicts {e:?}, got Ok", op_name(op)));
            }
            (Ok(_), Err(e)) => return Err(format!("{}: unexpected {e:?}", op_name(op))),
            (Ok((want_out, decisions)), Ok(got)) => {
                compare_output(op_name(op), &got, &want_out, stats)?;
                decisions
            }
        };
        for (h, dec) in decisions.iter().enumerate() {
            let label = format!("{} head {h}", op_name(op));
            let state = self.subject.head(h);
            let mut observed: Vec<u64> = state.tokens.iter().map(|t| t.0).collect();
            observed.sort_unstable();
            let model = &mut self.models[h];
            if let Some(dec) = dec {
                if dec.scored {
                    stats.decisions.set(stats.decisions.get() + 1);
                }
                if dec.exact_tie {
                    stats.exact_ties.set(stats.exact_ties.get() + 1);
                }
                if model.adopt(dec, &observed).map_err(|e| format!("{label}: {e}"))? {
                    stats.resyncs.set(stats.resyncs.get() + 1);
                }
            }
            compare_head(&label, &state, model, stats)?;
        }
        Ok(())
    }
}

fn op_name<T>(op: &Op<T>) -> &'static str {
    match op {
        Op::Insert(_) => "insert",
        Op::Attend(_) => "attend",
        Op::Evict => "evict",
        Op::Step(_) => "step",
        Op::StepDoc(_) => "step_document_order",
        Op::Prefill(_) => "prefill",
        Op::Reset => "reset",
    }
}

/// Outputs within `SLACK`× their bounds.
pub fn compare_output<T: Element>(
    label: &str,
    got: &[T],
    want: &Output,
    stats: &Stats,
) -> Result<(), String> {
    if got.len() != want.values.len() {
        return Err(format!("{label}: {} outputs, the model has {}", got.len(), want.values.len()));
    }
    for (i, ((g, w), tol)) in got.iter().zip(&want.values).zip(&want.tol).enumerate() {
        let err = (g.to_f64() - w).abs();
        stats.ratio(err, SLACK * tol);
        if err > SLACK * tol {
            return Err(format!(
                "{label}: output[{i}] {g:?} vs model {w} (bound {:e})",
                SLACK * tol
            ));
        }
    }
    Ok(())
}

fn compare_head(
    label: &str,
    state: &HeadState,
    model: &Model,
    stats: &Stats,
) -> Result<(), String> {
    let mut kept: Vec<(u64, f64)> =
        state.tokens.iter().map(|&(p, s)| (p, f64::from_bits(s))).collect();
    kept.sort_by_key(|t| t.0);
    let positions: Vec<u64> = kept.iter().map(|t| t.0).collect();
    if positions != model.positions() {
        return Err(format!(
            "{label}: kept {positions:?}, the model keeps {:?}",
            model.positions()
        ));
    }
    if state.last_evicted != model.last_evicted {
        return Err(format!(
            "{label}: evicted {:?}, the model evicts {:?}",
            state.last_evicted, model.last_evicted
        ));
    }
    if state.next_position != model.next_position() {
        return Err(format!(
            "{label}: next position {} vs model {}",
            state.next_position,
            model.next_position()
        ));
    }
    for ((p, s), t) in kept.iter().zip(&model.tokens) {
        let err = (s - t.score).abs();
        stats.ratio(err, SLACK * t.tol);
        if err > SLACK * t.tol {
            return Err(format!(
                "{label}: score of {p} is {s}, the model has {} (bound {:e})",
                t.score,
                SLACK * t.tol
            ));
        }
    }
    Ok(())
}
