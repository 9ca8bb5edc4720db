//! Helpers shared by the benches: quick mode, deterministic data, steady-state
//! caches, the read floor, and an interleaved timer for ratios.
//!
//! Every ratio is measured by alternating short batches of the two contenders
//! within one process (A, B, A, B, ...) and taking the median of the per-round
//! ratios, so drift on a shared machine hits both sides alike.

#![allow(dead_code)] // Each bench binary uses a different subset.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use h2o_kv::{Accumulator, Cache, Element, EvictionPolicy, Full, KvCache};

/// Whether `H2O_KV_BENCH_QUICK` asks for the reduced grid (CI smoke runs).
pub fn quick() -> bool {
    std::env::var_os("H2O_KV_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The first command-line argument that is not a flag: criterion's filter.
pub fn filter() -> Option<String> {
    std::env::args().skip(1).find(|a| !a.starts_with('-'))
}

/// Whether a custom (non-criterion) section named `name` should run under the
/// command-line filter.
pub fn selected(name: &str) -> bool {
    filter().is_none_or(|f| name.contains(f.as_str()))
}

/// Criterion with short warm-up and measurement times: the grid is large, the
/// machine shared, and the ratios come from the interleaved timer anyway.
pub fn criterion() -> Criterion {
    let (warm, measure, samples) = if quick() { (50, 200, 10) } else { (300, 900, 20) };
    Criterion::default()
        .warm_up_time(Duration::from_millis(warm))
        .measurement_time(Duration::from_millis(measure))
        .sample_size(samples)
        .without_plots()
        .configure_from_args()
}

/// Deterministic values in `[-1, 1)` (xorshift64*).
pub fn data<T: Element>(len: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            T::from_acc(T::Acc::narrow(2.0 * u - 1.0))
        })
        .collect()
}

/// A pool of per-step inputs cycled through by the benches.
pub struct Tokens<T> {
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub v: Vec<T>,
    /// Elements per query row.
    pub q_width: usize,
    /// Elements per key/value row.
    pub kv_width: usize,
    next: usize,
}

/// Rows in a [`Tokens`] pool.
const POOL: usize = 64;

impl<T: Element> Tokens<T> {
    pub fn new(q_width: usize, kv_width: usize, seed: u64) -> Self {
        Self {
            q: data(POOL * q_width, seed),
            k: data(POOL * kv_width, seed + 1),
            v: data(POOL * kv_width, seed + 2),
            q_width,
            kv_width,
            next: 0,
        }
    }

    /// The next `(query, key, value)`.
    pub fn next(&mut self) -> (&[T], &[T], &[T]) {
        let i = self.next;
        self.next = (i + 1) % POOL;
        (
            &self.q[i * self.q_width..][..self.q_width],
            &self.k[i * self.kv_width..][..self.kv_width],
            &self.v[i * self.kv_width..][..self.kv_width],
        )
    }
}

/// Inserts tokens (no attention) until `cache` holds `n`.
pub fn fill<T: Element, C: KvCache<T>>(cache: &mut C, n: usize, tokens: &mut Tokens<T>) {
    while cache.len() < n {
        let (_, k, v) = tokens.next();
        cache.insert(k, v).expect("fill");
        if cache.len() > cache.budget() {
            cache.evict();
        }
    }
}

/// An evicting cache in steady state: `budget` tokens resident, so every
/// step inserts one, attends over `budget + 1` and evicts one.
pub fn steady<T: Element, P: EvictionPolicy>(
    head_dim: usize,
    policy: P,
    tokens: &mut Tokens<T>,
) -> Cache<T, P> {
    let budget = policy.budget();
    let mut cache = Cache::with_policy(head_dim, policy).expect("cache");
    fill(&mut cache, budget, tokens);
    for _ in 0..4 {
        let (q, k, v) = tokens.next();
        cache.step(q, k, v).expect("step");
    }
    cache
}

/// A `FullCache` whose steps attend over `n + 1` tokens on average.
///
/// A full cache grows by one token per step, so it is refilled (untimed)
/// every `chunk` steps: each chunk starts at `n − chunk/2` resident tokens
/// and ends at `n + chunk/2`.
pub struct FullAt<T: Element> {
    pub cache: Cache<T, Full>,
    start: usize,
    chunk: usize,
}

impl<T: Element> FullAt<T> {
    pub fn new(head_dim: usize, n: usize, tokens: &mut Tokens<T>) -> Self {
        let chunk = (n / 32).clamp(2, 128);
        let start = n - chunk / 2;
        let mut cache = Cache::with_policy(head_dim, Full::new(start + chunk).unwrap()).unwrap();
        fill(&mut cache, start, tokens);
        Self { cache, start, chunk }
    }

    /// Runs `iters` steps and returns the time spent in them only.
    pub fn run(&mut self, iters: u64, tokens: &mut Tokens<T>) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            if self.cache.len() >= self.start + self.chunk {
                self.cache.reset();
                fill(&mut self.cache, self.start, tokens);
            }
            let room = (self.start + self.chunk - self.cache.len()) as u64;
            let batch = left.min(room);
            let t = Instant::now();
            for _ in 0..batch {
                let (q, k, v) = tokens.next();
                black_box(self.cache.step(q, k, v).expect("step"));
            }
            total += t.elapsed();
            left -= batch;
        }
        total
    }
}

/// Runs `iters` steps of an evicting cache and returns the time.
pub fn run_steps<T: Element, C: KvCache<T>>(
    cache: &mut C,
    iters: u64,
    tokens: &mut Tokens<T>,
) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        let (q, k, v) = tokens.next();
        black_box(cache.step(q, k, v).expect("step"));
    }
    t.elapsed()
}

/// The read floor: one streaming pass over every byte of `k` and `v`, as a
/// wrapping integer sum of the f32 bit patterns. Integer addition is
/// associative, so the compiler vectorizes and unrolls it freely; no decode
/// step can read the same bytes faster. (A float sum with explicit lanes
/// compiled to strided gathers and was slower than the step itself.)
pub fn read_floor_f32(k: &[f32], v: &[f32]) -> u32 {
    let mut acc = 0u32;
    for x in [k, v] {
        acc = x.iter().fold(acc, |a, y| a.wrapping_add(y.to_bits()));
    }
    acc
}

/// Median and spread of interleaved per-round ratios.
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median time per iteration of the numerator, seconds.
    pub a_secs: f64,
    /// Median time per iteration of the denominator, seconds.
    pub b_secs: f64,
}

/// Times `a` and `b` alternately and returns `time(a) / time(b)` per call.
///
/// Each closure takes an iteration count and returns the time those
/// iterations took (so untimed setup can be excluded). A batch is sized to
/// about 10 ms (3 ms in quick mode); there are 21 rounds (7 in quick mode).
pub fn interleaved(
    mut a: impl FnMut(u64) -> Duration,
    mut b: impl FnMut(u64) -> Duration,
) -> Ratio {
    let (target, rounds) = if quick() { (0.003, 7) } else { (0.010, 21) };
    let size = |f: &mut dyn FnMut(u64) -> Duration| {
        f(1);
        let once = f(4).as_secs_f64() / 4.0;
        ((target / once.max(1e-9)) as u64).clamp(1, 1_000_000)
    };
    let (na, nb) = (size(&mut a), size(&mut b));
    let mut ratios = Vec::with_capacity(rounds);
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let x = a(na).as_secs_f64() / na as f64;
        let y = b(nb).as_secs_f64() / nb as f64;
        ratios.push(x / y);
        ta.push(x);
        tb.push(y);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ratio {
        median: med(&mut ratios),
        min: ratios[0],
        max: ratios[ratios.len() - 1],
        a_secs: med(&mut ta),
        b_secs: med(&mut tb),
    }
}

/// Prints one ratio line: label, median, spread, both times, goal and verdict.
pub fn report(label: &str, r: &Ratio, goal: &str, met: bool) {
    println!(
        "ratio {label}: {:.3} (rounds {:.3}..{:.3}; {} / {}) goal {goal}: {}",
        r.median,
        r.min,
        r.max,
        human(r.a_secs),
        human(r.b_secs),
        if met { "met" } else { "NOT met" }
    );
}

/// Seconds as a short human string.
pub fn human(secs: f64) -> String {
    if secs >= 1e-3 {
        format!("{:.3} ms", secs * 1e3)
    } else if secs >= 1e-6 {
        format!("{:.2} µs", secs * 1e6)
    } else {
        format!("{:.1} ns", secs * 1e9)
    }
}
