//! Decode-step benches: every policy by resident tokens, head_dim and element
//! type, then the ratios against the baselines (read floor, `FullCache`, a
//! gather-style cache, f32 for the half types) and the 65,536-token scaling run.
//! (The accuracy of each element type against f64 is not a timing: it is the
//! test `tests/element_accuracy.rs`.)
//!
//! ```text
//! cargo bench --bench step                       # everything (a few minutes)
//! cargo bench --bench step --features half       # adds f16/bf16
//! H2O_KV_BENCH_QUICK=1 cargo bench --bench step  # reduced grid for CI
//! cargo bench --bench step -- ratios             # only the ratio lines
//! ```
//!
//! Ratio lines are printed as `ratio <name>: <median> ... goal <goal>: met`.
//! See `BENCHMARKS.md` for the numbers on the reference machine.

mod common;

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use h2o_kv::{Element, EvictionPolicy, H2O, Heavy, KvCache, Recent, kernels};

use common::fixtures::{self, FullAt, Tokens, run_steps, steady};
use common::quick;
use common::ratio::{self, interleaved, report};

/// Bytes of key and value rows a step over `rows` tokens reads.
fn step_bytes<T>(rows: usize, d: usize) -> u64 {
    (rows * 2 * d * size_of::<T>()) as u64
}

fn sizes() -> (&'static [usize], &'static [usize]) {
    if quick() { (&[256, 4096], &[128]) } else { (&[256, 1024, 4096, 16384], &[64, 128]) }
}

/// One evicting policy's steady-state step.
fn bench_evicting<T: Element, P: EvictionPolicy>(
    c: &mut Criterion,
    ty: &str,
    name: &str,
    policy: impl Fn(usize) -> P,
) {
    let (ns, ds) = sizes();
    let mut group = c.benchmark_group(format!("step/{ty}/{name}"));
    for &d in ds {
        for &n in ns {
            group.throughput(Throughput::Bytes(step_bytes::<T>(n + 1, d)));
            let mut tokens = Tokens::<T>::new(d, d, 1);
            let mut cache = steady(d, policy(n), &mut tokens);
            group.bench_function(BenchmarkId::new(format!("d{d}"), n), |b| {
                b.iter_custom(|iters| run_steps(&mut cache, iters, &mut tokens))
            });
        }
    }
    group.finish();
}

/// `FullCache` steps over `n + 1` tokens on average.
fn bench_full<T: Element>(c: &mut Criterion, ty: &str) {
    let (ns, ds) = sizes();
    let mut group = c.benchmark_group(format!("step/{ty}/full"));
    for &d in ds {
        for &n in ns {
            group.throughput(Throughput::Bytes(step_bytes::<T>(n + 1, d)));
            let mut tokens = Tokens::<T>::new(d, d, 1);
            let mut full = FullAt::new(d, n, &mut tokens);
            group.bench_function(BenchmarkId::new(format!("d{d}"), n), |b| {
                b.iter_custom(|iters| full.run(iters, &mut tokens))
            });
        }
    }
    group.finish();
}

fn bench_type<T: Element>(c: &mut Criterion, ty: &str) {
    bench_full::<T>(c, ty);
    bench_evicting::<T, _>(c, ty, "h2o", |n| H2O::new(n / 2, n - n / 2).unwrap());
    if quick() {
        return;
    }
    bench_evicting::<T, _>(c, ty, "recent", |n| Recent::new(n).unwrap());
    bench_evicting::<T, _>(c, ty, "heavy", |n| Heavy::new(n).unwrap());
}

/// A cache modelled on the authors' code: rows kept in position order in
/// contiguous buffers; every step appends the new row by copying the cache
/// (their `torch.cat` of past and new keys/values) and every eviction rebuilds
/// the buffers without the victim by copying the surviving rows (their
/// `k[mask]`). Uses this crate's kernels for the attention itself and double
/// buffers instead of allocating, so the only difference from `H2OCache` is
/// the data movement.
struct GatherCache {
    d: usize,
    heavy: usize,
    recent: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    spare_k: Vec<f32>,
    spare_v: Vec<f32>,
    scores: Vec<f64>,
    logits: Vec<f32>,
    out: Vec<f32>,
}

impl GatherCache {
    fn new(d: usize, heavy: usize, recent: usize) -> Self {
        let cap = (heavy + recent + 1) * d;
        Self {
            d,
            heavy,
            recent,
            keys: Vec::with_capacity(cap),
            values: Vec::with_capacity(cap),
            spare_k: Vec::with_capacity(cap),
            spare_v: Vec::with_capacity(cap),
            scores: Vec::with_capacity(heavy + recent + 1),
            logits: vec![0.0; heavy + recent + 1],
            out: vec![0.0; d],
        }
    }

    fn len(&self) -> usize {
        self.scores.len()
    }

    fn step(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> &[f32] {
        let d = self.d;
        for (src, dst, row) in
            [(&mut self.keys, &mut self.spare_k, k), (&mut self.values, &mut self.spare_v, v)]
        {
            dst.clear();
            dst.extend_from_slice(src);
            dst.extend_from_slice(row);
            std::mem::swap(src, dst);
        }
        self.scores.push(0.0);
        let n = self.len();
        let logits = &mut self.logits[..n];
        kernels::scaled_logits(logits, n, q, &self.keys, d, 1.0 / (d as f32).sqrt());
        kernels::softmax_in_place(logits);
        kernels::weighted_sum(&mut self.out, logits, n, &self.values, d);
        for (s, w) in self.scores.iter_mut().zip(logits.iter()) {
            *s += f64::from(*w);
        }
        if n > self.heavy + self.recent {
            let candidates = &self.scores[..n - self.recent];
            let victim = (0..candidates.len())
                .min_by(|&a, &b| candidates[a].total_cmp(&candidates[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            for (src, dst) in
                [(&mut self.keys, &mut self.spare_k), (&mut self.values, &mut self.spare_v)]
            {
                dst.clear();
                dst.extend_from_slice(&src[..victim * d]);
                dst.extend_from_slice(&src[(victim + 1) * d..]);
                std::mem::swap(src, dst);
            }
            self.scores.remove(victim);
        }
        &self.out
    }
}

/// Ratios at 4096 tokens, head_dim 128, f32, steady-state eviction.
fn ratios() {
    let (n, d) = (4096, 128);
    let mut tokens = Tokens::<f32>::new(d, d, 7);
    let mut h2o = steady(d, H2O::new(n / 2, n / 2).unwrap(), &mut tokens);

    // Read floor: the same number of key and value bytes as a step reads.
    let (fk, fv) = (fixtures::data::<f32>((n + 1) * d, 11), fixtures::data::<f32>((n + 1) * d, 12));
    let mut tk = Tokens::<f32>::new(d, d, 7);
    let r = interleaved(
        |it| run_steps(&mut h2o, it, &mut tk),
        |it| {
            let t = Instant::now();
            for _ in 0..it {
                black_box(fixtures::read_floor_f32(black_box(&fk), black_box(&fv)));
            }
            t.elapsed()
        },
    );
    report("h2o_step/read_floor (f32, d128, 4096)", &r, "<= 1.5", r.median <= 1.5);

    let mut t2 = Tokens::<f32>::new(d, d, 9);
    let mut full = FullAt::new(d, n, &mut t2);
    let r = interleaved(|it| run_steps(&mut h2o, it, &mut tk), |it| full.run(it, &mut t2));
    report("h2o_step/full_step (f32, d128, 4096)", &r, "<= 1.10", r.median <= 1.10);

    // The other evicting policies against H2O (information, no goal).
    let mut t4 = Tokens::<f32>::new(d, d, 13);
    let mut recent = steady(d, Recent::new(n).unwrap(), &mut t4);
    let r = interleaved(
        |it| run_steps(&mut recent, it, &mut t4),
        |it| run_steps(&mut h2o, it, &mut tk),
    );
    report("recent_step/h2o_step (f32, d128, 4096)", &r, "none (info)", true);
    let mut heavy = steady(d, Heavy::new(n).unwrap(), &mut t4);
    let r =
        interleaved(|it| run_steps(&mut heavy, it, &mut t4), |it| run_steps(&mut h2o, it, &mut tk));
    report("heavy_step/h2o_step (f32, d128, 4096)", &r, "none (info)", true);

    let mut gather = GatherCache::new(d, n / 2, n / 2);
    let mut t3 = Tokens::<f32>::new(d, d, 7);
    while gather.len() < n {
        let (q, k, v) = t3.next();
        gather.step(q, k, v);
    }
    let r = interleaved(
        |it| {
            let t = Instant::now();
            for _ in 0..it {
                let (q, k, v) = t3.next();
                black_box(gather.step(q, k, v));
            }
            t.elapsed()
        },
        |it| run_steps(&mut h2o, it, &mut tk),
    );
    report("gather_step/h2o_step (f32, d128, 4096)", &r, ">= 2.0", r.median >= 2.0);

    #[cfg(feature = "half")]
    half_ratios();
}

/// f16 and bf16 steps against f32 at 16,384 tokens, head_dim 128.
#[cfg(feature = "half")]
fn half_ratios() {
    fn against_f32<T: Element>(ty: &str) {
        let (n, d) = (if quick() { 4096 } else { 16384 }, 128);
        let mut tf = Tokens::<f32>::new(d, d, 3);
        let mut f = steady(d, H2O::new(n / 2, n / 2).unwrap(), &mut tf);
        let mut th = Tokens::<T>::new(d, d, 3);
        let mut h = steady(d, H2O::new(n / 2, n / 2).unwrap(), &mut th);
        let r =
            interleaved(|it| run_steps(&mut h, it, &mut th), |it| run_steps(&mut f, it, &mut tf));
        report(&format!("{ty}_step/f32_step (h2o, d128, {n})"), &r, "<= 0.6", r.median <= 0.6);
    }
    against_f32::<half::f16>("f16");
    against_f32::<half::bf16>("bf16");
}

/// Mean of `xs[range]`.
fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Decode 65,536 tokens with budget 2,048: the late steps must cost what the
/// early ones did. `FullCache` over the same stream: step time against
/// resident tokens, with its least-squares slope.
fn scaling() {
    let d = 128;
    let (total, budget, window) = if quick() { (8192, 512, 500) } else { (65_536, 2048, 1000) };
    let mut tokens = Tokens::<f32>::new(d, d, 5);
    let mut h2o = h2o_kv::H2OCache::<f32>::new(d, budget / 2, budget / 2).unwrap();
    let mut times = Vec::with_capacity(total);
    for _ in 0..total {
        let (q, k, v) = tokens.next();
        let t = Instant::now();
        black_box(h2o.step(q, k, v).expect("step"));
        times.push(t.elapsed().as_secs_f64());
    }
    let early = mean(&times[budget..budget + window]);
    let late = mean(&times[total - window..]);
    let r = late / early;
    println!(
        "ratio scaling h2o late/early ({total} tokens, budget {budget}, steps {}-{} vs last {window}): \
         {r:.3} ({} / {}) goal <= 1.10: {}",
        budget + 1,
        budget + window,
        ratio::human(late),
        ratio::human(early),
        if r <= 1.10 { "met" } else { "NOT met" }
    );

    // FullCache: insert the stream, timing `probe` steps at each checkpoint.
    let probe = 32;
    let checkpoints = 8;
    let mut full = h2o_kv::FullCache::<f32>::new(d, total).unwrap();
    let mut points = Vec::new();
    let mut tokens = Tokens::<f32>::new(d, d, 5);
    for c in 1..=checkpoints {
        let at = total * c / checkpoints - probe;
        fixtures::fill(&mut full, at, &mut tokens);
        let mut ts = Vec::with_capacity(probe);
        for _ in 0..probe {
            let (q, k, v) = tokens.next();
            let t = Instant::now();
            black_box(full.step(q, k, v).expect("step"));
            ts.push(t.elapsed().as_secs_f64());
        }
        ts.sort_by(f64::total_cmp);
        points.push(((at + probe / 2) as f64, ts[probe / 2]));
    }
    let (mx, my) = (
        mean(&points.iter().map(|p| p.0).collect::<Vec<_>>()),
        mean(&points.iter().map(|p| p.1).collect::<Vec<_>>()),
    );
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let syy: f64 = points.iter().map(|(_, y)| (y - my) * (y - my)).sum();
    let slope = sxy / sxx;
    let r2 = sxy * sxy / (sxx * syy);
    println!(
        "scaling full: slope {:.2} ns per resident token (R² {r2:.3}); step {} at {} tokens, {} at {} tokens",
        slope * 1e9,
        ratio::human(points[0].1),
        points[0].0,
        ratio::human(points[points.len() - 1].1),
        points[points.len() - 1].0,
    );
}

fn main() {
    let mut c = common::criterion();
    bench_type::<f32>(&mut c, "f32");
    if !quick() {
        bench_type::<f64>(&mut c, "f64");
    }
    #[cfg(feature = "half")]
    {
        bench_type::<half::f16>(&mut c, "f16");
        bench_type::<half::bf16>(&mut c, "bf16");
    }
    c.final_summary();
    if common::selected("ratios") {
        ratios();
    }
    if common::selected("scaling") {
        scaling();
    }
}
