//! `bench`: decode tokens/s at several contexts: our model with the full
//! cache and with H2O, against candle-transformers' quantized Llama on the
//! same GGUF, in one process (same thread pool), interleaved rounds, medians.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use h2o_kv::H2O;
use h2o_kv_candle::llama::{self, LlamaCache};
use h2o_kv_candle::locate::find_data;

use crate::common::{self, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Contexts (tokens already in the sequence when decoding starts).
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    contexts: Vec<usize>,
    /// Decode steps per timed run.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// Interleaved rounds; the table gives the median.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Largest context at which candle-transformers' model is filled (token by token).
    #[arg(long, default_value_t = 2048)]
    peer_max: usize,
    /// H2O budget in % of the context (half heavy hitters, half recent).
    #[arg(long, default_value_t = 20.0)]
    budget: f64,
    /// The GGUF file.
    #[arg(long)]
    model: Option<PathBuf>,
}

fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}

pub fn run(a: &Args) -> Result<()> {
    if a.steps == 0 || a.rounds == 0 {
        return Err("--steps and --rounds must be at least 1".into());
    }
    let (path, model, tok) = common::load(a.model.as_deref(), false)?;
    let c = model.config().clone();
    let fill_model = model.dequantized()?;
    let text_path = find_data(None, "books/alice29.txt", "alice29.txt; set H2O_KV_DATA=DIR")?;
    let mut ids = tok.encode(&std::fs::read_to_string(&text_path)?)?;
    let longest = a.contexts.iter().copied().max().unwrap_or(0);
    while ids.len() < longest {
        ids.extend_from_within(..);
    }
    let threads = candle_core::utils::get_num_threads();
    println!("threads: {threads} (candle's pool, shared by both models)");
    println!(
        "| context | engine | tokens/s | × candle-transformers | × our full cache | resident KV |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for &ctx in &a.contexts {
        let prompt = &ids[..ctx];
        let pb = common::bar(3, &format!("fill {ctx}"));
        // Ours: one shared prefill into the full cache and the H2O cache, run
        // with f32 products (fast for a batch); decoding then uses the
        // quantized model on the same caches.
        let budget = ((ctx as f64 * a.budget / 100.0).round() as usize).max(2);
        let mut ours = vec![
            LlamaCache::new(&c, h2o_kv::Full::new(ctx + a.steps + 1)?.into())?,
            LlamaCache::new(&c, H2O::with_heavy_fraction(budget, 0.5)?.into())?,
        ];
        let first =
            common::argmax(&fill_model.prefill_shared(&mut ours, prompt)?.to_vec1::<f32>()?) as u32;
        pb.inc(2);
        // Theirs: the same prompt one token at a time (its batched quantized
        // prefill is slower on a CPU; its RoPE table stops at MAX_SEQ_LEN).
        let peer = if ctx <= a.peer_max && ctx + a.steps < MAX_SEQ_LEN {
            let (ct, mut r) = llama::open_gguf(&path)?;
            let mut p = ModelWeights::from_gguf(ct, &mut r, &Device::Cpu)?;
            for (i, &id) in prompt.iter().enumerate() {
                p.forward(&Tensor::new(&[[id]], &Device::Cpu)?, i)?;
            }
            Some(p)
        } else {
            None
        };
        pb.inc(1);
        pb.finish_and_clear();
        let names = ["candle-transformers", "h2o-kv full", "h2o-kv h2o"];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 3];
        for _ in 0..a.rounds {
            for (e, t) in times.iter_mut().enumerate() {
                let mut next = first;
                if e == 0 {
                    let Some(p) = &peer else { continue };
                    let mut p = p.clone(); // shares the weights and the prefilled K/V
                    let start = Instant::now();
                    for s in 0..a.steps {
                        let x = Tensor::new(&[[next]], &Device::Cpu)?;
                        next = p.forward(&x, ctx + s)?.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
                    }
                    t.push(a.steps as f64 / start.elapsed().as_secs_f64());
                } else {
                    let mut cache = ours[e - 1].clone();
                    let start = Instant::now();
                    for _ in 0..a.steps {
                        next = model.forward(&mut cache, &[next])?.argmax(0)?.to_scalar::<u32>()?;
                    }
                    t.push(a.steps as f64 / start.elapsed().as_secs_f64());
                }
            }
        }
        let tps: Vec<Option<f64>> =
            times.iter().map(|t| (!t.is_empty()).then(|| median(t.clone()))).collect();
        let peer_kv = 2 * c.n_layers * c.n_kv_heads * c.head_dim * ctx * 4;
        let kv = [Some(peer_kv), Some(ours[0].kv_bytes()), Some(ours[1].kv_bytes())];
        for e in 0..3 {
            let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.2}"));
            let ratio = |base: Option<f64>| match (tps[e], base) {
                (Some(a), Some(b)) => format!("{:.2}×", a / b),
                _ => "n/a".into(),
            };
            println!(
                "| {ctx} | {} | {} | {} | {} | {:.1} MiB |",
                names[e],
                fmt(tps[e]),
                ratio(tps[0]),
                ratio(tps[1]),
                common::mib(kv[e].unwrap_or(0) as u64),
            );
        }
    }
    if let (Some(p), Some(now)) = (common::peak_rss(), common::current_rss()) {
        println!(
            "\nprocess RSS: {:.0} MiB now, {:.0} MiB peak (both models, the f32 copy used \
             for filling, and every cache)",
            common::mib(now),
            common::mib(p)
        );
    }
    println!(
        "candle-transformers' quantized Llama precomputes RoPE for {MAX_SEQ_LEN} positions: \
         contexts past that are n/a for it."
    );
    Ok(())
}
