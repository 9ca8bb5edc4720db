//! The policy family beyond H2O — sinks + window (StreamingLLM), H2O +
//! sinks, TOVA and mean score — against the brute-force model of
//! `tests/common/brute_family.rs`: random policies, budgets, head
//! dimensions, softmax scales, step orders (insert-attend-evict,
//! attend-insert-evict, evict-insert-attend and a mix), an opening of bare
//! inserts and a prefill; each policy through its own type and through
//! `AnyPolicy`; f32 and f64; single heads and GQA layers.
//!
//! After every call the kept and evicted positions must equal the model's,
//! and every output and score must be within `SLACK` times the model's
//! rounding bound. As in `prop_policies.rs`, a near-tie (two candidates whose
//! ranking keys are closer than their error bounds) may be decided either
//! way; the model then adopts the cache's choice, and such re-syncs must stay
//! at or below 1% of the score-based decisions. Exact ties must follow the
//! tie rule.

mod common;

use common::bounds::{Fp, Output, SLACK};
use common::brute_family::{FDecision, Family, FamilyModel, NoRoom};
use common::harness::{HeadState, Layer, Single, Subject, compare_output};
use common::oracle::Tie;
use common::{Gen, Real, Rng, Stats, Token, wide};
use h2o_kv::{
    AnyPolicy, Cache, Error, EvictionPolicy, H2OSinks, KvCache, LayerCache, MeanScore, SinkWindow,
    TieRule, Tova,
};
use proptest::prelude::*;

fn tie_rule(t: Tie) -> TieRule {
    match t {
        Tie::KeepOlder => TieRule::KeepOlder,
        Tie::KeepNewer => TieRule::KeepNewer,
    }
}

/// The crate's policy for a model rule, as a value of type `P` via `build`.
fn any_policy(rule: Family) -> AnyPolicy {
    match rule {
        Family::SinkWindow { n_sink, budget } => {
            SinkWindow::new(n_sink, budget - n_sink).unwrap().into()
        }
        Family::H2OSinks { heavy, recent, n_sink, tie } => {
            H2OSinks::new(heavy, recent, n_sink).unwrap().with_tie_rule(tie_rule(tie)).into()
        }
        Family::Tova { budget, tie } => {
            Tova::new(budget).unwrap().with_tie_rule(tie_rule(tie)).into()
        }
        Family::Mean { heavy, recent, tie } => {
            MeanScore::new(heavy, recent).unwrap().with_tie_rule(tie_rule(tie)).into()
        }
    }
}

fn tie() -> impl Strategy<Value = Tie> {
    prop_oneof![Just(Tie::KeepOlder), Just(Tie::KeepNewer)]
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![
        (0usize..=4, 1usize..=5)
            .prop_map(|(n_sink, w)| Family::SinkWindow { n_sink, budget: n_sink + w }),
        (0usize..=4, 0usize..=4, 0usize..=4, tie())
            .prop_filter("budget ≥ 1", |(h, r, _, _)| h + r > 0)
            .prop_map(|(h, r, s, tie)| Family::H2OSinks {
                heavy: h.max(s),
                recent: r,
                n_sink: s.min(h.max(s)),
                tie
            })
            .prop_filter("sinks leave room", |f| f.budget() > f.sinks()),
        (1usize..=8, tie()).prop_map(|(budget, tie)| Family::Tova { budget, tie }),
        (0usize..=5, 0usize..=5, tie())
            .prop_filter("budget ≥ 1", |(h, r, _)| h + r > 0)
            .prop_map(|(heavy, recent, tie)| Family::Mean { heavy, recent, tie }),
    ]
}

/// Which step order the decode phase uses.
#[derive(Debug, Clone, Copy)]
enum Order {
    InsertAttendEvict,
    AttendInsertEvict,
    EvictInsertAttend,
    Mixed,
}

#[derive(Debug, Clone)]
struct Scenario {
    rule: Family,
    via_any: bool,
    d: usize,
    scale: Option<f64>,
    opening: usize,
    prefill: usize,
    steps: usize,
    order: Order,
    amp: f64,
    dup: f64,
    seed: u64,
    n_kv: usize,
    g: usize,
}

fn scenario(max_steps: usize, gqa: bool) -> impl Strategy<Value = Scenario> {
    let shape = (
        family(),
        any::<bool>(),
        prop_oneof![1usize..=4, Just(8usize), Just(16usize)],
        prop_oneof![3 => Just(None), 1 => Just(Some(1.0)), 1 => Just(Some(0.3))],
    );
    let run = (
        0usize..=9,
        prop_oneof![Just(0usize), 1usize..=14],
        0usize..=max_steps,
        prop_oneof![
            Just(Order::InsertAttendEvict),
            Just(Order::AttendInsertEvict),
            Just(Order::EvictInsertAttend),
            Just(Order::Mixed)
        ],
        prop_oneof![Just(0.5), Just(1.5), Just(3.0), Just(6.0)],
        prop_oneof![Just(0.0), Just(0.3)],
        any::<u64>(),
    );
    let heads = if gqa { (1usize..=3, 1usize..=3).boxed() } else { Just((1, 1)).boxed() };
    (shape, run, heads).prop_map(
        |(
            (rule, via_any, d, scale),
            (opening, prefill, steps, order, amp, dup, seed),
            (n_kv, g),
        )| {
            Scenario {
                rule,
                via_any,
                d,
                scale,
                opening: opening.min(rule.slots()),
                prefill,
                steps,
                order,
                amp,
                dup,
                seed,
                n_kv,
                g,
            }
        },
    )
}

/// One operation of the lockstep run.
#[derive(Debug, Clone)]
enum FOp<T> {
    Insert(Token<T>),
    Attend(Token<T>),
    Evict,
    Step(Token<T>, Order),
    Prefill(Token<T>),
}

/// What the family tests need beyond [`Subject`]: the evict-insert-attend step.
trait FamilySubject<T: h2o_kv::Element>: Subject<T> {
    fn step_evict_first(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error>;
}

impl<T: h2o_kv::Element, C: KvCache<T>> FamilySubject<T> for Single<C> {
    fn step_evict_first(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error> {
        self.0.step_with(h2o_kv::StepOrder::EvictInsertAttend, q, k, v).map(<[T]>::to_vec)
    }
}

impl<T: h2o_kv::Element, P: EvictionPolicy> FamilySubject<T> for Layer<T, P> {
    fn step_evict_first(&mut self, q: &[T], k: &[T], v: &[T]) -> Result<Vec<T>, Error> {
        self.0.step_with(h2o_kv::StepOrder::EvictInsertAttend, q, k, v).map(<[T]>::to_vec)
    }
}

struct FHarness<S> {
    subject: S,
    models: Vec<FamilyModel>,
    d: usize,
    g: usize,
}

type ModelStep = Result<(Output, Option<FDecision>), NoRoom>;

impl<S> FHarness<S> {
    fn on_models(
        &mut self,
        tok: Option<&Token<f64>>,
        rows: usize,
        f: impl Fn(&mut FamilyModel, &[f64], &[f64], &[f64]) -> ModelStep,
    ) -> Result<(Output, Vec<Option<FDecision>>), NoRoom> {
        let (d, g, n_kv) = (self.d, self.g, self.models.len());
        let empty = Token { q: vec![], k: vec![], v: vec![] };
        let tok = tok.unwrap_or(&empty);
        let mut results = vec![];
        for (h, m) in self.models.iter_mut().enumerate() {
            let pick = |x: &[f64], width: usize| -> Vec<f64> {
                if x.is_empty() {
                    return vec![];
                }
                (0..rows)
                    .flat_map(|i| x[i * width * n_kv + h * width..][..width].to_vec())
                    .collect()
            };
            results.push(f(m, &pick(&tok.q, g * d), &pick(&tok.k, d), &pick(&tok.v, d))?);
        }
        let mut out = Output::default();
        for i in 0..rows {
            for (o, _) in &results {
                if !o.values.is_empty() {
                    out.values.extend_from_slice(&o.values[i * g * d..][..g * d]);
                    out.tol.extend_from_slice(&o.tol[i * g * d..][..g * d]);
                }
            }
        }
        Ok((out, results.into_iter().map(|(_, dec)| dec).collect()))
    }

    fn apply<T: Real>(&mut self, op: &FOp<T>, stats: &Stats) -> Result<(), String>
    where
        S: FamilySubject<T>,
    {
        let n_kv = self.models.len();
        let before: Vec<HeadState> = (0..n_kv).map(|h| self.subject.head(h)).collect();
        let w = |t: &Token<T>| Token { q: wide(&t.q), k: wide(&t.k), v: wide(&t.v) };
        let (label, got, want) = match op {
            FOp::Insert(t) => {
                let want = self.on_models(Some(&w(t)), 1, |m, _, k, v| {
                    m.insert(k, v).map(|()| (Output::default(), None))
                });
                ("insert", self.subject.insert(&t.k, &t.v).map(|_| vec![]), want)
            }
            FOp::Attend(t) => {
                let want = self.on_models(Some(&w(t)), 1, |m, q, _, _| Ok((m.attend(q), None)));
                ("attend", self.subject.attend(&t.q), want)
            }
            FOp::Evict => {
                let want = self.on_models(None, 0, |m, _, _, _| Ok((Output::default(), m.evict())));
                self.subject.evict();
                ("evict", Ok(vec![]), want)
            }
            FOp::Step(t, order) => match order {
                Order::AttendInsertEvict => {
                    let want =
                        self.on_models(Some(&w(t)), 1, |m, q, k, v| m.step_document_order(q, k, v));
                    (
                        "step attend-insert-evict",
                        self.subject.step_document_order(&t.q, &t.k, &t.v),
                        want,
                    )
                }
                Order::EvictInsertAttend => return self.evict_first(t, stats),
                _ => {
                    let want = self.on_models(Some(&w(t)), 1, |m, q, k, v| m.step(q, k, v));
                    ("step", self.subject.step(&t.q, &t.k, &t.v), want)
                }
            },
            FOp::Prefill(t) => {
                let rows = t.k.len() / (n_kv * self.d);
                let want = self.on_models(Some(&w(t)), rows, |m, q, k, v| m.prefill(q, k, v));
                ("prefill", self.subject.prefill(&t.q, &t.k, &t.v), want)
            }
        };
        let decisions = match (want, got) {
            (Err(NoRoom { len, capacity }), Err(e)) => {
                let expected = Error::CapacityExceeded { len, capacity, requested: 1 };
                if e != expected {
                    return Err(format!("{label}: got {e:?}, the model predicts {expected:?}"));
                }
                for (h, b) in before.iter().enumerate() {
                    if self.subject.head(h) != *b {
                        return Err(format!("{label}: the Err changed head {h}"));
                    }
                }
                stats.errors.set(stats.errors.get() + 1);
                return Ok(());
            }
            (Err(e), Ok(_)) => return Err(format!("{label}: the model predicts {e:?}, got Ok")),
            (Ok(_), Err(e)) => return Err(format!("{label}: unexpected {e:?}")),
            (Ok((want_out, decisions)), Ok(got)) => {
                compare_output(label, &got, &want_out, stats)?;
                decisions
            }
        };
        for (h, dec) in decisions.iter().enumerate() {
            let state = self.subject.head(h);
            let mut observed: Vec<u64> = state.tokens.iter().map(|t| t.0).collect();
            observed.sort_unstable();
            let model = &mut self.models[h];
            if let Some(dec) = dec {
                if dec.scored {
                    stats.decisions.set(stats.decisions.get() + 1);
                }
                if model.adopt(dec, &observed).map_err(|e| format!("{label} head {h}: {e}"))? {
                    stats.resyncs.set(stats.resyncs.get() + 1);
                }
            }
            compare_head(&format!("{label} head {h}"), &state, model, stats)?;
        }
        Ok(())
    }
}

impl<S> FHarness<S> {
    /// An evict-insert-attend step: the models evict first and adopt the
    /// cache's kept set (without the new token), then insert and attend, so
    /// a near-tie re-sync also changes what the step attends over.
    fn evict_first<T: Real>(&mut self, t: &Token<T>, stats: &Stats) -> Result<(), String>
    where
        S: FamilySubject<T>,
    {
        let label = "step evict-insert-attend";
        let before: Vec<HeadState> = (0..self.models.len()).map(|h| self.subject.head(h)).collect();
        let got = self.subject.step_evict_first(&t.q, &t.k, &t.v);
        // The new row goes to a vacant slot before anything is evicted: a
        // cache holding budget + 1 tokens refuses and changes nothing.
        let full = self.models.iter().any(|m| m.tokens.len() >= m.rule().slots());
        if full {
            let (len, capacity) = (self.models[0].tokens.len(), self.models[0].rule().slots());
            let want = h2o_kv::Error::CapacityExceeded { len, capacity, requested: 1 };
            if got.as_ref().err() != Some(&want) {
                return Err(format!("{label}: got {got:?}, the model predicts {want:?}"));
            }
            for (h, b) in before.iter().enumerate() {
                if self.subject.head(h) != *b {
                    return Err(format!("{label}: the Err changed head {h}"));
                }
            }
            stats.errors.set(stats.errors.get() + 1);
            return Ok(());
        }
        let got = got.map_err(|e| format!("{label}: unexpected {e:?}"))?;
        for h in 0..self.models.len() {
            let state = self.subject.head(h);
            let model = &mut self.models[h];
            let new = model.next_position();
            let mut observed: Vec<u64> =
                state.tokens.iter().map(|t| t.0).filter(|&p| p != new).collect();
            observed.sort_unstable();
            if let Some(dec) = model.evict_for_insert() {
                if dec.scored {
                    stats.decisions.set(stats.decisions.get() + 1);
                }
                if model.adopt(&dec, &observed).map_err(|e| format!("{label} head {h}: {e}"))? {
                    stats.resyncs.set(stats.resyncs.get() + 1);
                }
            } else if observed != model.positions() {
                return Err(format!("{label} head {h}: evicted, the model does not"));
            }
        }
        let wide_t = Token { q: wide(&t.q), k: wide(&t.k), v: wide(&t.v) };
        let (want, _) = self
            .on_models(Some(&wide_t), 1, |m, q, k, v| Ok((m.insert_attend(q, k, v), None)))
            .map_err(|e| format!("{label}: {e:?}"))?;
        compare_output(label, &got, &want, stats)?;
        for h in 0..self.models.len() {
            compare_head(
                &format!("{label} head {h}"),
                &self.subject.head(h),
                &self.models[h],
                stats,
            )?;
        }
        Ok(())
    }
}

fn compare_head(
    label: &str,
    state: &HeadState,
    model: &FamilyModel,
    _stats: &Stats,
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
            "{label}: next position {} vs {}",
            state.next_position,
            model.next_position()
        ));
    }
    for ((p, s), t) in kept.iter().zip(&model.tokens) {
        if (s - t.score).abs() > SLACK * t.tol {
            return Err(format!("{label}: score of {p} is {s}, the model has {}", t.score));
        }
    }
    Ok(())
}

fn drive<T: Real, S: FamilySubject<T>>(
    h: &mut FHarness<S>,
    s: &Scenario,
    stats: &Stats,
) -> Result<(), String> {
    let mut inputs = Gen::new(s.seed, s.d, s.n_kv * s.g, s.n_kv, s.amp, s.dup);
    let mut coin = Rng::new(s.seed ^ 0xfa11);
    for _ in 0..s.opening {
        h.apply(&FOp::Insert(inputs.token::<T>()), stats)?;
    }
    if s.opening > 0 {
        h.apply(&FOp::Attend(inputs.token::<T>()), stats)?;
    }
    h.apply::<T>(&FOp::Evict, stats)?;
    if s.prefill > 0 {
        h.apply(&FOp::Prefill(inputs.chunk::<T>(s.prefill)), stats)?;
    }
    for i in 0..s.steps {
        let order = match s.order {
            Order::Mixed => {
                [Order::InsertAttendEvict, Order::AttendInsertEvict, Order::EvictInsertAttend]
                    [coin.below(3)]
            }
            o => o,
        };
        h.apply(&FOp::Step(inputs.token::<T>(), order), stats)
            .map_err(|e| format!("decode step {i}: {e}"))?;
    }
    Ok(())
}

fn scale_of(s: &Scenario) -> f64 {
    s.scale.unwrap_or(1.0 / (s.d as f64).sqrt())
}

fn models(s: &Scenario, fp: Fp) -> Vec<FamilyModel> {
    (0..s.n_kv).map(|_| FamilyModel::new(s.rule, s.d, s.g, scale_of(s), fp)).collect()
}

fn single<T: Real>(s: &Scenario, stats: &Stats) -> Result<(), String> {
    fn go<T: Real, P: EvictionPolicy>(p: P, s: &Scenario, stats: &Stats) -> Result<(), String> {
        let mut c = Cache::<T, P>::with_policy(s.d, p).unwrap();
        if let Some(scale) = s.scale {
            c = c.with_scale(scale).unwrap();
        }
        let mut h = FHarness { subject: Single(c), models: models(s, T::FP), d: s.d, g: 1 };
        drive::<T, _>(&mut h, s, stats)
    }
    dispatch(
        s,
        |p| go::<T, _>(p, s, stats),
        |p| go::<T, _>(p, s, stats),
        |p| go::<T, _>(p, s, stats),
        |p| go::<T, _>(p, s, stats),
        |p| go::<T, _>(p, s, stats),
    )
}

fn layer<T: Real>(s: &Scenario, stats: &Stats) -> Result<(), String> {
    fn go<T: Real, P: EvictionPolicy>(p: P, s: &Scenario, stats: &Stats) -> Result<(), String> {
        let mut c = LayerCache::<T, P>::new(s.n_kv * s.g, s.n_kv, s.d, p).unwrap();
        if let Some(scale) = s.scale {
            c = c.with_scale(scale).unwrap();
        }
        let mut h = FHarness { subject: Layer(c), models: models(s, T::FP), d: s.d, g: s.g };
        drive::<T, _>(&mut h, s, stats)
    }
    dispatch(
        s,
        |p| go::<T, _>(p, s, stats),
        |p| go::<T, _>(p, s, stats),
        |p| go::<T, _>(p, s, stats),
        |p| go::<T, _>(p, s, stats),
        |p| go::<T, _>(p, s, stats),
    )
}

/// Calls the closure for the scenario's policy type (or `AnyPolicy`).
fn dispatch<R>(
    s: &Scenario,
    any_f: impl FnOnce(AnyPolicy) -> R,
    sinks_f: impl FnOnce(SinkWindow) -> R,
    h2o_sinks_f: impl FnOnce(H2OSinks) -> R,
    tova_f: impl FnOnce(Tova) -> R,
    mean_f: impl FnOnce(MeanScore) -> R,
) -> R {
    let p = any_policy(s.rule);
    if s.via_any {
        return any_f(p);
    }
    match p {
        AnyPolicy::SinkWindow(p) => sinks_f(p),
        AnyPolicy::H2OSinks(p) => h2o_sinks_f(p),
        AnyPolicy::Tova(p) => tova_f(p),
        AnyPolicy::MeanScore(p) => mean_f(p),
        other => any_f(other),
    }
}

#[test]
fn family_matches_the_model_f32() {
    let stats = Stats::default();
    common::run("prop_family", common::cases(1500), scenario(40, false), |s| {
        single::<f32>(&s, &stats)
    });
    stats.assert_rare_resyncs("family single head f32", 800);
}

#[test]
fn family_matches_the_model_f64() {
    let stats = Stats::default();
    common::run("prop_family", common::cases(1500), scenario(40, false), |s| {
        single::<f64>(&s, &stats)
    });
    stats.assert_rare_resyncs("family single head f64", 800);
}

#[test]
fn family_gqa_layers_match_per_head_models_f32() {
    let stats = Stats::default();
    common::run("prop_family", common::cases(600), scenario(30, true), |s| {
        layer::<f32>(&s, &stats)
    });
    stats.assert_rare_resyncs("family GQA f32", 400);
}

#[test]
fn family_gqa_layers_match_per_head_models_f64() {
    let stats = Stats::default();
    common::run("prop_family", common::cases(600), scenario(30, true), |s| {
        layer::<f64>(&s, &stats)
    });
    stats.assert_rare_resyncs("family GQA f64", 400);
}

/// Identical keys everywhere: every TOVA decision is between bit-identical
/// current weights, so the tie rule alone decides, with no re-sync.
#[test]
fn tova_exact_ties_follow_the_tie_rule() {
    let stats = Stats::default();
    let strategy = (scenario(20, false), 1usize..=6, tie()).prop_map(|(mut s, budget, tie)| {
        s.rule = Family::Tova { budget, tie };
        s.opening = s.opening.min(budget + 1);
        s.dup = 1.0;
        s
    });
    common::run("prop_family", common::cases(400), strategy, |s| single::<f64>(&s, &stats));
    assert_eq!(stats.resyncs.get(), 0, "identical keys must never need a re-sync");
    assert!(stats.decisions.get() >= 200, "too few decisions: {}", stats.decisions.get());
}

/// Evict-insert-attend writes the new row to a vacant slot before it evicts:
/// a cache holding budget + 1 tokens (bare inserts) refuses with a clear
/// error and changes nothing; after `evict()` the same step goes through.
#[test]
fn evict_first_on_a_full_store_asks_for_evict() {
    use h2o_kv::{H2OSinksCache, StepOrder};
    let mut c = H2OSinksCache::<f64>::new(1, 2, 1, 1).unwrap();
    for k in 0..4 {
        c.insert(&[f64::from(k)], &[0.0]).unwrap();
    }
    let before = c.snapshot();
    let eia = StepOrder::EvictInsertAttend;
    let err = c.step_with(eia, &[1.0], &[0.5], &[0.0]).unwrap_err();
    assert_eq!(err, Error::CapacityExceeded { len: 4, capacity: 4, requested: 1 });
    assert!(err.to_string().contains("must evict first"), "{err}");
    assert_eq!(c.snapshot(), before);
    // The sink (0) and the window (3) stay; 1 and 2 tie at score 0 and the
    // older is kept.
    assert_eq!(c.evict(), &[2]);
    c.step_with(eia, &[1.0], &[0.5], &[0.0]).unwrap();
    assert_eq!(c.len(), 3);
}
