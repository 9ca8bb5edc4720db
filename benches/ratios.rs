//! The speed goals as ratio lines, in well under a minute:
//!
//! ```text
//! cargo bench --bench ratios                      # the ratio lines
//! cargo bench --bench ratios --features rayon     # + parallel heads, 2 / 1 threads
//! cargo bench --bench ratios --features avx512    # one-pass kernel on AVX-512
//! H2O_KV_BENCH_QUICK=1 cargo bench --bench ratios # smoke run (smaller sizes)
//! ```
//!
//! Every line is `ratio <name>: <median> (rounds <min>..<max>; <time A> /
//! <time B>) goal <goal>: met|NOT met`, measured by alternating ~10 ms
//! batches of the two sides (21 rounds) and taking the median of the
//! per-round ratios. f32, head_dim 128, one thread unless stated.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use h2o_kv::kernels::{self, OnlineSoftmax};
use h2o_kv::{EvictionPolicy, Full, H2O, LayerCache};

use common::fixtures::{self, FullAt, Tokens, run_steps, steady};
use common::quick;
use common::ratio::{interleaved, report};

const D: usize = 128;

/// The read floor over `heads` heads of `rows` key and value rows.
struct Floor {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Floor {
    fn new(heads: usize, rows: usize) -> Self {
        Self { k: fixtures::data(heads * rows * D, 11), v: fixtures::data(heads * rows * D, 12) }
    }

    fn run(&self, iters: u64) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(fixtures::read_floor_f32(black_box(&self.k), black_box(&self.v)));
        }
        t.elapsed()
    }
}

/// A layer whose steps attend over `n + 1` tokens on average (refilled,
/// untimed, like [`FullAt`]), under policy `P`.
struct LayerAt<P: EvictionPolicy> {
    layer: LayerCache<f32, P>,
    tokens: Tokens<f32>,
    start: usize,
    chunk: usize,
}

impl LayerAt<Full> {
    fn full(heads: usize, kv: usize, n: usize) -> Self {
        let chunk = (n / 32).clamp(2, 128);
        let start = n - chunk / 2;
        let layer = LayerCache::new(heads, kv, D, Full::new(start + chunk).unwrap()).unwrap();
        let mut s = Self { layer, tokens: Tokens::new(heads * D, kv * D, 1), start, chunk };
        s.refill();
        s
    }
}

impl LayerAt<H2O> {
    /// An H2O layer in steady state (`n` resident, `n + 1` attended).
    fn h2o(heads: usize, kv: usize, n: usize) -> Self {
        let layer = LayerCache::new(heads, kv, D, H2O::new(n / 2, n - n / 2).unwrap()).unwrap();
        let mut s = Self { layer, tokens: Tokens::new(heads * D, kv * D, 1), start: n, chunk: 0 };
        s.refill();
        for _ in 0..4 {
            let (q, k, v) = s.tokens.next();
            s.layer.step(q, k, v).unwrap();
        }
        s
    }
}

impl<P: EvictionPolicy> LayerAt<P> {
    fn refill(&mut self) {
        self.layer.reset();
        while self.layer.len() < self.start {
            let (_, k, v) = self.tokens.next();
            self.layer.insert(k, v).unwrap();
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let batch = if self.chunk == 0 {
                left
            } else {
                if self.layer.len() >= self.start + self.chunk {
                    self.refill();
                }
                left.min((self.start + self.chunk - self.layer.len()) as u64)
            };
            let t = Instant::now();
            for _ in 0..batch {
                let (q, k, v) = self.tokens.next();
                black_box(self.layer.step(q, k, v).unwrap());
            }
            total += t.elapsed();
            left -= batch;
        }
        total
    }
}

/// The attention kernels alone on `g` queries over `n` rows: one pass
/// against the two-pass form (logits, softmax on a copy, weighted sum).
fn kernel_ratio(g: usize, n: usize) {
    let q = fixtures::data::<f32>(g * D, 1);
    let k = fixtures::data::<f32>(n * D, 2);
    let v = fixtures::data::<f32>(n * D, 3);
    let scale = 1.0 / (D as f32).sqrt();
    // Separate scratch per side: the two closures are alive together.
    let (mut logits, mut weights, mut out) =
        (vec![0.0f32; g * n], vec![0.0f32; g * n], vec![0.0f32; g * D]);
    let (mut logits2, mut weights2, mut out2) = (logits.clone(), weights.clone(), out.clone());
    let mut state = vec![OnlineSoftmax::new(); g];
    let r = interleaved(
        |it| {
            let t = Instant::now();
            for _ in 0..it {
                kernels::attention_one_pass(
                    &mut out,
                    &mut state,
                    &mut logits,
                    n,
                    &q,
                    &k,
                    &v,
                    D,
                    scale,
                );
                weights.copy_from_slice(&logits);
                for row in weights.chunks_exact_mut(n) {
                    kernels::softmax_in_place(row);
                }
                black_box(&out);
            }
            t.elapsed()
        },
        |it| {
            let t = Instant::now();
            for _ in 0..it {
                kernels::scaled_logits(&mut logits2, n, &q, &k, D, scale);
                weights2.copy_from_slice(&logits2);
                for row in weights2.chunks_exact_mut(n) {
                    kernels::softmax_in_place(row);
                }
                kernels::weighted_sum(&mut out2, &weights2, n, &v, D);
                black_box(&out2);
            }
            t.elapsed()
        },
    );
    report(
        &format!("kernel one-pass/two-pass (g {g}, {n} rows)"),
        &r,
        "< 1.0 (info)",
        r.median < 1.0,
    );
}

fn main() {
    if !common::selected("ratios") {
        return;
    }
    println!(
        "isa: {} (one-pass at head_dim {D}: {})",
        kernels::simd_isa(),
        kernels::one_pass_isa(D)
    );
    let long = if quick() { 4096 } else { 16384 };
    let mid = if quick() { 1024 } else { 4096 };

    // FullCache step over one head, against reading its bytes once.
    let mut tokens = Tokens::<f32>::new(D, D, 1);
    let mut full = FullAt::new(D, long, &mut tokens);
    let floor = Floor::new(1, long + 1);
    let r = interleaved(|it| full.run(it, &mut tokens), |it| floor.run(it));
    report(&format!("full step/read floor (1 head, {long})"), &r, "<= 1.15", r.median <= 1.15);
    drop((full, floor));

    let mut full8 = LayerAt::full(8, 8, mid);
    let floor = Floor::new(8, mid + 1);
    let r = interleaved(|it| full8.run(it), |it| floor.run(it));
    report(
        &format!("full layer step/read floor (8 kv heads, {mid})"),
        &r,
        "<= 1.15",
        r.median <= 1.15,
    );
    drop(full8);

    // H2O against FullCache at the same resident count, one head.
    let mut t_h = Tokens::<f32>::new(D, D, 1);
    let mut h2o = steady(D, H2O::new(mid / 2, mid - mid / 2).unwrap(), &mut t_h);
    let mut t_f = Tokens::<f32>::new(D, D, 1);
    let mut full = FullAt::new(D, mid, &mut t_f);
    let r = interleaved(|it| run_steps(&mut h2o, it, &mut t_h), |it| full.run(it, &mut t_f));
    report(&format!("h2o step/full step (1 head, {mid})"), &r, "<= 1.05", r.median <= 1.05);
    drop((h2o, full));

    // GQA layer against the read floor of its 8 KV heads.
    let mut gqa = LayerAt::h2o(32, 8, mid);
    let r = interleaved(|it| gqa.run(it), |it| floor.run(it));
    report(
        &format!("gqa layer step/read floor (h2o, 32q 8kv, {mid})"),
        &r,
        "<= 1.3",
        r.median <= 1.3,
    );

    #[cfg(feature = "rayon")]
    {
        // The same layer on a pool of 2 threads against 1 thread.
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut gqa1 = LayerAt::h2o(32, 8, mid);
        let r = interleaved(|it| two.install(|| gqa.run(it)), |it| one.install(|| gqa1.run(it)));
        report(
            &format!("gqa layer 2 threads/1 thread (32q 8kv, {mid})"),
            &r,
            "<= 0.6",
            r.median <= 0.6,
        );
        let mut mha2 = LayerAt::h2o(32, 32, mid / 4);
        let mut mha1 = LayerAt::h2o(32, 32, mid / 4);
        let r = interleaved(|it| two.install(|| mha2.run(it)), |it| one.install(|| mha1.run(it)));
        let n = mid / 4;
        report(
            &format!("32-head layer 2 threads/1 thread (32 kv heads, {n})"),
            &r,
            "<= 0.6",
            r.median <= 0.6,
        );
    }
    drop((gqa, floor));

    // Prefill of a 2048-token prompt into a full cache (tiles of 16 query
    // tokens, one-pass kernel) against one read of the bytes it must touch:
    // queries, keys, values and outputs (4 × P × 128 f32).
    let p = if quick() { 512 } else { 2048 };
    let (q, k, v) = (
        fixtures::data::<f32>(p * D, 1),
        fixtures::data::<f32>(p * D, 2),
        fixtures::data::<f32>(p * D, 3),
    );
    let mut out = vec![0.0f32; p * D];
    let mut cache = h2o_kv::FullCache::<f32>::new(D, p).unwrap();
    let floor = Floor::new(2, p);
    let r = interleaved(
        |it| {
            let mut total = Duration::ZERO;
            for _ in 0..it {
                h2o_kv::KvCache::reset(&mut cache);
                let t = Instant::now();
                h2o_kv::KvCache::prefill(&mut cache, &q, &k, &v, &mut out).unwrap();
                total += t.elapsed();
            }
            total
        },
        |it| floor.run(it),
    );
    report(
        &format!("prefill/read floor (full, {p} tokens, its q k v out bytes)"),
        &r,
        "none (info)",
        true,
    );
    drop(floor);

    // Where the one-pass kernel wins and where it does not.
    for g in [1, 4] {
        for n in [64, 512, mid, long] {
            kernel_ratio(g, n);
        }
    }
}
