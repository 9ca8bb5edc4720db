//! h2o-kv against candle on the same decode and prefill shapes, single thread,
//! f32, head_dim 128.
//!
//! ```text
//! cargo bench -p h2o-kv-bench-candle                    # criterion times + ratio lines
//! cargo bench -p h2o-kv-bench-candle -- ratios          # only the ratio lines
//! H2O_KV_BENCH_QUICK=1 cargo bench -p h2o-kv-bench-candle -- ratios   # smoke run
//! ```
//!
//! Decode (one step: append one token's key and value, attend with one query
//! per query head):
//! - `full`: h2o-kv's `LayerCache` under `Full` against candle-nn's `KvCache` +
//!   matmul attention (`q·kᵀ`, scale, `softmax_last_dim`, `·v`). Both grow by
//!   one token a step and are refilled (untimed) around `n` tokens, so both
//!   attend over `n + 1` tokens on average.
//! - `recent`: h2o-kv's `LayerCache` under `Recent` (budget `n`, steady state:
//!   insert, attend over `n + 1`, evict one) against candle-nn's
//!   `RotatingKvCache` of `n` tokens (append over the oldest, attend over `n`).
//!
//! For grouped-query attention the candle side multiplies a `[kv, g, d]` query
//! block with `[kv, n, d]` keys, so each key row is read once per group, as
//! h2o-kv does (no `repeat_kv` copy: the fastest form candle offers).
//!
//! Prefill: a 2048-token causal prefill of one layer into an empty full cache
//! against candle's `softmax(q·kᵀ·scale + causal mask)·v` on the same tensors.
//!
//! Ratio lines: `ratio <name>: <h2o-kv time / candle time> ...`; goal ≤ 1.0.
//! candle's CPU kernels are pinned to one thread: the bench re-runs itself
//! with `RAYON_NUM_THREADS=1` if that variable is not already `1`.

#[path = "../../../benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use candle_nn::kv_cache::{KvCache as CandleKv, RotatingKvCache};
use h2o_kv::{Full, LayerCache, Recent};

use common::fixtures::{self, Tokens};
use common::quick;
use common::ratio::{interleaved, report};

const HEAD_DIM: usize = 128;

/// `(label, query heads, KV heads)`.
const SHAPES: [(&str, usize, usize); 3] = [("1h", 1, 1), ("8h", 8, 8), ("gqa32q8kv", 32, 8)];

fn lengths() -> &'static [usize] {
    if quick() { &[512] } else { &[512, 4096, 16384] }
}

/// candle's decode attention: `q` `[kv, g, d]`, `k`/`v` `[1, kv, n, d]`.
fn candle_attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    let k = k.squeeze(0).unwrap();
    let v = v.squeeze(0).unwrap();
    let att = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
    let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
    att.matmul(&v).unwrap()
}

/// Per-step inputs as candle tensors: a pool cycled through like [`Tokens`].
struct CandleTokens {
    q: Vec<Tensor>,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    next: usize,
}

impl CandleTokens {
    fn new(tokens: &Tokens<f32>, heads: usize, kv: usize) -> Self {
        let g = heads / kv;
        let dev = Device::Cpu;
        let rows = tokens.q.len() / tokens.q_width;
        let q = (0..rows)
            .map(|i| {
                let x = &tokens.q[i * tokens.q_width..][..tokens.q_width];
                Tensor::from_slice(x, (kv, g, HEAD_DIM), &dev).unwrap()
            })
            .collect();
        let kv_rows = |src: &[f32]| -> Vec<Tensor> {
            (0..rows)
                .map(|i| {
                    let x = &src[i * tokens.kv_width..][..tokens.kv_width];
                    Tensor::from_slice(x, (1, kv, 1, HEAD_DIM), &dev).unwrap()
                })
                .collect()
        };
        Self { q, k: kv_rows(&tokens.k), v: kv_rows(&tokens.v), next: 0 }
    }

    fn next(&mut self) -> (&Tensor, &Tensor, &Tensor) {
        let i = self.next;
        self.next = (i + 1) % self.q.len();
        (&self.q[i], &self.k[i], &self.v[i])
    }
}

/// `n` tokens of keys and values `[1, kv, n, d]` for refilling a candle cache.
fn block(kv: usize, n: usize, seed: u64) -> Tensor {
    let x = fixtures::data::<f32>(kv * n * HEAD_DIM, seed);
    Tensor::from_vec(x, (1, kv, n, HEAD_DIM), &Device::Cpu).unwrap()
}

/// Refill schedule shared by both full caches: start at `n − chunk/2`
/// tokens, step `chunk` times, refill.
fn chunk(n: usize) -> (usize, usize) {
    let chunk = (n / 32).clamp(2, 128);
    (n - chunk / 2, chunk)
}

struct H2oFull {
    layer: LayerCache<f32, Full>,
    tokens: Tokens<f32>,
    start: usize,
    chunk: usize,
}

impl H2oFull {
    fn new(heads: usize, kv: usize, n: usize) -> Self {
        let (start, chunk) = chunk(n);
        let layer =
            LayerCache::new(heads, kv, HEAD_DIM, Full::new(start + chunk).unwrap()).unwrap();
        let tokens = Tokens::new(heads * HEAD_DIM, kv * HEAD_DIM, 1);
        let mut s = Self { layer, tokens, start, chunk };
        s.refill();
        s
    }

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
            if self.layer.len() >= self.start + self.chunk {
                self.refill();
            }
            let batch = left.min((self.start + self.chunk - self.layer.len()) as u64);
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

struct CandleFull {
    cache: CandleKv,
    fill: Tensor,
    tokens: CandleTokens,
    start: usize,
    chunk: usize,
    scale: f64,
}

impl CandleFull {
    fn new(heads: usize, kv: usize, n: usize) -> Self {
        let (start, chunk) = chunk(n);
        let tokens = CandleTokens::new(&Tokens::new(heads * HEAD_DIM, kv * HEAD_DIM, 1), heads, kv);
        let cache = CandleKv::new(2, start + chunk);
        let fill = block(kv, start, 7);
        let scale = 1.0 / (HEAD_DIM as f64).sqrt();
        let mut s = Self { cache, fill, tokens, start, chunk, scale };
        s.refill();
        s
    }

    fn refill(&mut self) {
        self.cache.reset();
        self.cache.append(&self.fill, &self.fill).unwrap();
    }

    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            if self.cache.current_seq_len() >= self.start + self.chunk {
                self.refill();
            }
            let batch = left.min((self.start + self.chunk - self.cache.current_seq_len()) as u64);
            let t = Instant::now();
            for _ in 0..batch {
                let (q, k, v) = self.tokens.next();
                let (k, v) = self.cache.append(k, v).unwrap();
                black_box(candle_attend(q, &k, &v, self.scale));
            }
            total += t.elapsed();
            left -= batch;
        }
        total
    }
}

struct H2oRecent {
    layer: LayerCache<f32, Recent>,
    tokens: Tokens<f32>,
}

impl H2oRecent {
    fn new(heads: usize, kv: usize, n: usize) -> Self {
        let mut layer = LayerCache::new(heads, kv, HEAD_DIM, Recent::new(n).unwrap()).unwrap();
        let mut tokens = Tokens::new(heads * HEAD_DIM, kv * HEAD_DIM, 1);
        while layer.len() < n {
            let (_, k, v) = tokens.next();
            layer.insert(k, v).unwrap();
        }
        Self { layer, tokens }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            let (q, k, v) = self.tokens.next();
            black_box(self.layer.step(q, k, v).unwrap());
        }
        t.elapsed()
    }
}

struct CandleRecent {
    cache: RotatingKvCache,
    tokens: CandleTokens,
    scale: f64,
}

impl CandleRecent {
    fn new(heads: usize, kv: usize, n: usize) -> Self {
        let tokens = CandleTokens::new(&Tokens::new(heads * HEAD_DIM, kv * HEAD_DIM, 1), heads, kv);
        let mut cache = RotatingKvCache::new(2, n);
        let fill = block(kv, n, 7);
        cache.append(&fill, &fill).unwrap();
        Self { cache, tokens, scale: 1.0 / (HEAD_DIM as f64).sqrt() }
    }

    fn run(&mut self, iters: u64) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            let (q, k, v) = self.tokens.next();
            let (k, v) = self.cache.append(k, v).unwrap();
            black_box(candle_attend(q, &k, &v, self.scale));
        }
        t.elapsed()
    }
}

fn decode_ratios() {
    for &n in lengths() {
        for (label, heads, kv) in SHAPES {
            let mut a = H2oFull::new(heads, kv, n);
            let mut b = CandleFull::new(heads, kv, n);
            let r = interleaved(|it| a.run(it), |it| b.run(it));
            report(
                &format!("candle full {label} {n}: h2o-kv/candle"),
                &r,
                "<= 1.0",
                r.median <= 1.0,
            );
            drop((a, b));
            let mut a = H2oRecent::new(heads, kv, n);
            let mut b = CandleRecent::new(heads, kv, n);
            let r = interleaved(|it| a.run(it), |it| b.run(it));
            report(
                &format!("candle recent {label} {n}: h2o-kv/candle"),
                &r,
                "<= 1.0",
                r.median <= 1.0,
            );
        }
    }
}

fn prefill_len() -> usize {
    if quick() { 256 } else { 2048 }
}

/// Causal prefill of `p` tokens into an empty full cache, `heads` query heads
/// on `kv` KV heads: h2o-kv's `LayerCache::prefill` against candle's
/// materialized `[kv, g·p, p]` attention (mask, softmax, matmul).
fn prefill_ratio(label: &str, heads: usize, kv: usize) {
    let p = prefill_len();
    let g = heads / kv;
    let q = fixtures::data::<f32>(p * heads * HEAD_DIM, 21);
    let k = fixtures::data::<f32>(p * kv * HEAD_DIM, 22);
    let v = fixtures::data::<f32>(p * kv * HEAD_DIM, 23);
    let mut out = vec![0.0f32; q.len()];
    let mut layer =
        LayerCache::<f32, Full>::new(heads, kv, HEAD_DIM, Full::new(p).unwrap()).unwrap();
    let dev = Device::Cpu;
    // candle layout: q `[kv, g·p, d]` (query head-major within a group), k/v `[kv, p, d]`.
    let qt = Tensor::from_slice(&q, (p, kv, g, HEAD_DIM), &dev)
        .unwrap()
        .permute((1, 2, 0, 3))
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((kv, g * p, HEAD_DIM))
        .unwrap();
    let kt = Tensor::from_slice(&k, (p, kv, HEAD_DIM), &dev)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap();
    let vt = Tensor::from_slice(&v, (p, kv, HEAD_DIM), &dev)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap();
    let mask: Vec<f32> = (0..g * p)
        .flat_map(|r| (0..p).map(move |c| if c > r % p { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (1, g * p, p), &dev).unwrap();
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let r = interleaved(
        |it| {
            let mut total = Duration::ZERO;
            for _ in 0..it {
                layer.reset();
                let t = Instant::now();
                layer.prefill(&q, &k, &v, &mut out).unwrap();
                total += t.elapsed();
            }
            total
        },
        |it| {
            let t = Instant::now();
            for _ in 0..it {
                let att = (qt.matmul(&kt.t().unwrap()).unwrap() * scale).unwrap();
                let att = att.broadcast_add(&mask).unwrap();
                let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
                black_box(att.matmul(&vt).unwrap());
            }
            t.elapsed()
        },
    );
    report(&format!("candle prefill {label} {p}: h2o-kv/candle"), &r, "<= 1.0", r.median <= 1.0);
}

/// Criterion times for one shape at 4096 tokens, for scale.
fn criterion_times() {
    let mut c = common::criterion();
    let n = if quick() { 512 } else { 4096 };
    let mut group = c.benchmark_group(format!("candle/decode/{n}"));
    for (label, heads, kv) in SHAPES {
        let mut a = H2oFull::new(heads, kv, n);
        group.bench_function(format!("h2o-kv full {label}"), |b| b.iter_custom(|it| a.run(it)));
        let mut b_ = CandleFull::new(heads, kv, n);
        group.bench_function(format!("candle kvcache {label}"), |b| b.iter_custom(|it| b_.run(it)));
    }
    group.finish();
    c.final_summary();
}

/// Re-runs this bench with `RAYON_NUM_THREADS=1` (candle's CPU kernels read
/// it) unless it is already set to 1. Returns whether this process should run.
fn single_threaded() -> bool {
    if std::env::var("RAYON_NUM_THREADS").is_ok_and(|v| v == "1") {
        return true;
    }
    let exe = std::env::current_exe().expect("bench executable");
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", "1")
        .status()
        .expect("re-run the bench single-threaded");
    std::process::exit(status.code().unwrap_or(1));
}

fn main() {
    if !single_threaded() {
        return;
    }
    if !common::selected("ratios") {
        criterion_times();
    }
    if common::selected("ratios") || common::selected("candle") {
        println!(
            "simd: {}; candle threads: {}",
            h2o_kv::kernels::simd_isa(),
            candle_core::utils::get_num_threads()
        );
        decode_ratios();
        prefill_ratio("1h", 1, 1);
    }
}
