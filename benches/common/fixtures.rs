//! Bench inputs and cache states: deterministic data, a pool of per-step
//! inputs, caches filled to a steady state, a full cache held at a size, and
//! the read floor.

use std::hint::black_box;
use std::time::{Duration, Instant};

use h2o_kv::{Accumulator, Cache, Element, EvictionPolicy, Full, KvCache};

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
