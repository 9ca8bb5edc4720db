//! Shared test machinery, included by every integration test as `mod common;`:
//!
//! - [`oracle`]: the brute-force model of one KV head (a `Vec` and a sort);
//! - [`bounds`]: textbook attention in f64 with first-order rounding bounds,
//!   and the near-tie rule that uses them;
//! - [`harness`]: applies one operation to a cache and to the model and
//!   compares them;
//! - [`rng`]: the one seeded generator ([`Rng`]);
//! - here: random layer inputs ([`Gen`]), policy descriptions ([`Spec`]),
//!   float types ([`Real`]) and the proptest runner.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod bounds;
pub mod harness;
pub mod oracle;
pub mod rng;

use std::cell::Cell;

use bounds::Fp;
use h2o_kv::{
    AnyPolicy, Cache, Element, EvictionPolicy, Full, H2O, Heavy, KvCache, Recent, TieRule,
};
use oracle::{Rule, Tie};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
pub use rng::Rng;

/// The float types under test, with what the tests need beyond [`Element`].
pub trait Real: Element {
    /// The float the attention runs in (for the error bounds).
    const FP: Fp;
    /// Rounds an f64 to this type.
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    const FP: Fp = Fp { eps: f32::EPSILON as f64, tiny: f32::MIN_POSITIVE as f64 };
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    const FP: Fp = Fp { eps: f64::EPSILON, tiny: f64::MIN_POSITIVE };
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// Widens a slice to f64.
pub fn wide<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// Proptest cases: `H2O_KV_PROPTEST_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    match std::env::var("H2O_KV_PROPTEST_CASES") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("H2O_KV_PROPTEST_CASES={s:?}")),
        Err(_) => default,
    }
}

/// Eviction decisions made by scores, and how many were near-ties where the
/// model adopted the cache's choice.
#[derive(Debug, Default)]
pub struct Stats {
    /// Score-based eviction decisions checked.
    pub decisions: Cell<usize>,
    /// Of those, near-ties where the cache chose differently (accepted).
    pub resyncs: Cell<usize>,
    /// Score-based decisions whose boundary was an exact tie.
    pub exact_ties: Cell<usize>,
    /// Calls that returned the predicted error.
    pub errors: Cell<usize>,
    /// Largest observed |error| / bound over all compared numbers.
    pub worst_ratio: Cell<f64>,
}

impl Stats {
    /// Panics unless re-syncs are at most 1% of the decisions, and enough
    /// decisions were made for that to mean something.
    pub fn assert_rare_resyncs(&self, what: &str, min_decisions: usize) {
        let (d, r) = (self.decisions.get(), self.resyncs.get());
        eprintln!(
            "{what}: {d} score-based eviction decisions ({} at an exact tie), {r} near-tie \
             re-syncs, {} predicted errors, worst error/bound {:.3}",
            self.exact_ties.get(),
            self.errors.get(),
            self.worst_ratio.get()
        );
        assert!(d >= min_decisions, "{what}: only {d} eviction decisions (want ≥ {min_decisions})");
        assert!(r * 100 <= d, "{what}: {r} re-syncs in {d} decisions is more than 1%");
    }

    fn ratio(&self, err: f64, bound: f64) {
        let r = if bound > 0.0 {
            err / bound
        } else if err > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        if r > self.worst_ratio.get() {
            self.worst_ratio.set(r);
        }
    }
}

/// Runs `test` over `cases` inputs from `strategy`; failing seeds are saved
/// in (and replayed first from) `proptest-regressions/<name>.txt`.
pub fn run<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), String>,
) {
    let path = format!("{}/proptest-regressions/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let config = Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(path.leak()))),
        ..Config::with_cases(cases)
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, |v| test(v).map_err(TestCaseError::fail)) {
        panic!("{e}");
    }
}

/// Random query/key/value rows for a layer of `n_heads` query heads and
/// `n_kv` KV heads of dimension `d`, elements uniform in `[-amp, amp]`.
///
/// With probability `dup` a token copies the key and value of an earlier
/// token (all heads), so exact ties occur; with probability 1/16 a query is
/// all zeros (every resident token gets the same weight).
#[derive(Debug, Clone)]
pub struct Gen {
    rng: Rng,
    d: usize,
    n_heads: usize,
    n_kv: usize,
    amp: f64,
    dup: f64,
    seen: Vec<(Vec<f64>, Vec<f64>)>,
}

/// One token's inputs: q `[n_heads × d]`, k and v `[n_kv × d]`.
#[derive(Debug, Clone)]
pub struct Token<T> {
    /// Query.
    pub q: Vec<T>,
    /// Key.
    pub k: Vec<T>,
    /// Value.
    pub v: Vec<T>,
}

impl Gen {
    /// A generator; see the type docs.
    pub fn new(seed: u64, d: usize, n_heads: usize, n_kv: usize, amp: f64, dup: f64) -> Self {
        Self { rng: Rng::new(seed), d, n_heads, n_kv, amp, dup, seen: vec![] }
    }

    fn row(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| (2.0 * self.rng.unit() - 1.0) * self.amp).collect()
    }

    /// The next token.
    pub fn token<T: Real>(&mut self) -> Token<T> {
        let q = if self.rng.below(16) == 0 {
            vec![0.0; self.n_heads * self.d]
        } else {
            self.row(self.n_heads * self.d)
        };
        let (k, v) = if !self.seen.is_empty() && self.rng.unit() < self.dup {
            self.seen[self.rng.below(self.seen.len())].clone()
        } else {
            (self.row(self.n_kv * self.d), self.row(self.n_kv * self.d))
        };
        self.seen.push((k.clone(), v.clone()));
        let cast = |x: &[f64]| x.iter().map(|&e| T::from_f64(e)).collect::<Vec<T>>();
        Token { q: cast(&q), k: cast(&k), v: cast(&v) }
    }

    /// `p` tokens laid out for a prefill: q `[p × n_heads × d]`, k and v
    /// `[p × n_kv × d]`.
    pub fn chunk<T: Real>(&mut self, p: usize) -> Token<T> {
        let mut c = Token { q: vec![], k: vec![], v: vec![] };
        for _ in 0..p {
            let t = self.token::<T>();
            c.q.extend(t.q);
            c.k.extend(t.k);
            c.v.extend(t.v);
        }
        c
    }
}

/// A policy as the tests describe it; builds both the crate's policy and the
/// model's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `FullCache` with this capacity.
    Full(usize),
    /// `RecentOnly` with this budget.
    Recent(usize),
    /// `HeavyOnly` with this budget and tie rule.
    Heavy(usize, Tie),
    /// `H2OCache` with (heavy, recent) and tie rule.
    H2O(usize, usize, Tie),
}

fn tie_rule(t: Tie) -> TieRule {
    match t {
        Tie::KeepOlder => TieRule::KeepOlder,
        Tie::KeepNewer => TieRule::KeepNewer,
    }
}

impl Spec {
    /// The model's rule.
    pub fn rule(self) -> Rule {
        match self {
            Spec::Full(c) => Rule::full(c),
            Spec::Recent(b) => Rule::recent_only(b),
            Spec::Heavy(b, t) => Rule::heavy_only(b, t),
            Spec::H2O(h, r, t) => Rule::h2o(h, r, t),
        }
    }

    /// The crate's policy, as an [`AnyPolicy`].
    pub fn any(self) -> AnyPolicy {
        match self {
            Spec::Full(c) => Full::new(c).unwrap().into(),
            Spec::Recent(b) => Recent::new(b).unwrap().into(),
            Spec::Heavy(b, t) => Heavy::new(b).unwrap().with_tie_rule(tie_rule(t)).into(),
            Spec::H2O(h, r, t) => H2O::new(h, r).unwrap().with_tie_rule(tie_rule(t)).into(),
        }
    }

    /// A single-head cache with the concrete policy type (or [`AnyPolicy`]
    /// when `via_any`), as a trait object, with softmax `scale` if given.
    pub fn cache<T: Real>(
        self,
        d: usize,
        scale: Option<f64>,
        via_any: bool,
    ) -> Box<dyn KvCache<T>> {
        fn boxed<T: Real, P: EvictionPolicy>(
            d: usize,
            p: P,
            scale: Option<f64>,
        ) -> Box<dyn KvCache<T>> {
            let c = Cache::<T, P>::with_policy(d, p).unwrap();
            Box::new(match scale {
                Some(s) => c.with_scale(s).unwrap(),
                None => c,
            })
        }
        if via_any {
            return boxed::<T, _>(d, self.any(), scale);
        }
        match self {
            Spec::Full(c) => boxed::<T, _>(d, Full::new(c).unwrap(), scale),
            Spec::Recent(b) => boxed::<T, _>(d, Recent::new(b).unwrap(), scale),
            Spec::Heavy(b, t) => {
                boxed::<T, _>(d, Heavy::new(b).unwrap().with_tie_rule(tie_rule(t)), scale)
            }
            Spec::H2O(h, r, t) => {
                boxed::<T, _>(d, H2O::new(h, r).unwrap().with_tie_rule(tie_rule(t)), scale)
            }
        }
    }
}
