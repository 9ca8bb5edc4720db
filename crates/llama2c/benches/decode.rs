//! End-to-end decode speed: the stories260K forward pass over 512 decode steps
//! with a full cache and with H2O at 20% budget (102 tokens per KV head), in
//! one run so their ratio is measured on the same machine state; plus the
//! same forward pass on llama2.c-style plain K/V arrays (no h2o-kv), which
//! shows what the crate's attention costs.
//!
//! Needs `stories260K.bin` (from huggingface.co/karpathy/tinyllamas, folder
//! `stories260K/`, looked up as `llama2c::files` says); without it the bench
//! prints where to get it and exits.
//!
//! `cargo bench -p llama2c --bench decode`. Throughput is reported in tokens (= decode
//! steps) per second of the benchmark thread's CPU time (see `ThreadCpuTime`):
//! on a shared machine wall time mostly measures the other processes.

use std::hint::black_box;

use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use llama2c::files::{self, Kind};
use llama2c::forward::{Decoder, StepOrder};
use llama2c::generate::argmax;
use llama2c::model::Model;
use llama2c::policy::{PolicyKind, budget_tokens};
use llama2c::tokenizer;

/// CPU time of the benchmarking thread, from Linux's
/// `/proc/thread-self/schedstat` (nanoseconds on a CPU), so that other
/// processes sharing the cores do not inflate the figures; wall time where
/// that file cannot be read. Formatted as criterion's wall time.
#[derive(Debug)]
struct ThreadCpuTime;

/// Nanoseconds this thread has run, if the kernel reports it.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

static WALL: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = (Option<u64>, Instant);
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        (thread_cpu_ns(), Instant::now())
    }
    fn end(&self, (cpu, wall): Self::Intermediate) -> Self::Value {
        match (cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => wall.elapsed(),
        }
    }
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Self::Value {
        *a + *b
    }
    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

fn decode(c: &mut Criterion<ThreadCpuTime>) {
    let path = files::find_or_first(Kind::Model, "stories260K.bin");
    let model = match Model::load(&path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping the decode bench: {e}\nhint: {}", files::HINT);
            return;
        }
    };
    let seq_len = model.config.seq_len;
    let mut group = c.benchmark_group("decode_512");
    group.throughput(Throughput::Elements(seq_len as u64));
    group.sample_size(30);
    let configs = [
        ("full", PolicyKind::Full, seq_len),
        ("h2o_20pct", PolicyKind::H2o, budget_tokens(20, seq_len)),
    ];
    let decoders = configs.map(|(name, kind, budget)| {
        let policy = kind.build(budget, 0.5, seq_len).expect("valid policy");
        (name, Decoder::new(&model, policy, StepOrder::InsertAttendEvict).expect("decoder"))
    });
    // The baseline: the same forward pass on llama2.c's plain K/V arrays.
    let plain = ("plain_arrays", Decoder::plain(&model));
    for (name, mut decoder) in decoders.into_iter().chain([plain]) {
        group.bench_function(name, |b| {
            b.iter(|| {
                // Greedy decode from BOS: each step feeds the previous argmax.
                decoder.reset();
                let mut token = tokenizer::BOS;
                for _ in 0..seq_len {
                    token = argmax(decoder.forward(black_box(token)).expect("forward"));
                }
                token
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = decode
}
criterion_main!(benches);
