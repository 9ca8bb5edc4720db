//! `generate`: a prompt in, the prompt and its continuation out.

use std::io::Write;
use std::path::PathBuf;

use h2o_kv::{EvictionPolicy, LayerSchedule, Trace};
use h2o_kv_candle::Error;
use h2o_kv_candle::llama::LlamaCache;

use crate::common::{self, Budget, Method, Result, Rng};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The prompt.
    #[arg(default_value = "Once upon a time")]
    prompt: String,
    /// Read the prompt from this file instead.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Keep only the first N tokens of the prompt (e.g. of a long file).
    #[arg(long)]
    prompt_tokens: Option<usize>,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Start the prompt with BOS (the GGUF says SmolLM2 does not use one).
    #[arg(long)]
    bos: bool,
    /// Tokens to generate (stops earlier at EOS).
    #[arg(long, default_value_t = 128)]
    steps: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens with this much probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value = "full", help = common::policy_help("Eviction policy"))]
    policy: Method,
    /// How the total budget is shared across layers: uniform, or pyramid
    /// (PyramidKV: linear decreasing from the first layer to the last).
    #[arg(long, default_value = "uniform", value_parser = common::parse_schedule)]
    schedule: LayerSchedule,
    /// Tokens kept per head: a number, or a percentage of prompt + steps
    /// (default 20%). Needs an evicting --policy.
    #[arg(long)]
    budget: Option<Budget>,
    /// H2O's heavy-hitter share of the budget.
    #[arg(long, default_value_t = 0.5)]
    heavy_fraction: f64,
    /// Write an eviction map (SVG) of one KV head: which positions it holds
    /// after the prompt prefill and after every generated token.
    #[arg(long)]
    eviction_map: Option<PathBuf>,
    /// The map's layer (default: the middle layer).
    #[arg(long)]
    map_layer: Option<usize>,
    /// The map's KV head.
    #[arg(long, default_value_t = 0)]
    map_head: usize,
    /// Print one more line `ids: ...` with the generated token ids.
    #[arg(long)]
    print_ids: bool,
    /// The GGUF file (default: looked up, see the crate README).
    #[arg(long)]
    model: Option<PathBuf>,
}

/// Samples a token from `logits` at `temperature` with nucleus `top_p`.
fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 {
        return common::argmax(logits) as u32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, ((x as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = p.iter().map(|x| x.1).sum();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut n = 0;
    for &(_, w) in &p {
        kept += w / total;
        n += 1;
        if kept >= top_p {
            break;
        }
    }
    let mass: f64 = p[..n].iter().map(|x| x.1).sum();
    let mut r = rng.next_f64() * mass;
    for &(id, w) in &p[..n] {
        if r < w {
            return id;
        }
        r -= w;
    }
    p[n - 1].0
}

pub fn run(a: &Args) -> Result<()> {
    let top_p_ok = a.top_p > 0.0 && a.top_p <= 1.0;
    let temperature_ok = a.temperature.is_finite() && a.temperature >= 0.0;
    if !(top_p_ok && temperature_ok) {
        return Err("--top-p must be in (0, 1] and --temperature finite and ≥ 0".into());
    }
    let (_, model, tok) = common::load(a.model.as_deref(), false)?;
    let raw = match &a.prompt_file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => a.prompt.clone(),
    };
    let text = if a.chat { tok.chat_prompt(&raw)? } else { raw };
    let mut prompt = tok.encode(&text)?;
    if let Some(n) = a.prompt_tokens {
        prompt.truncate(n);
    }
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if a.bos {
        prompt.insert(0, tok.bos_id().ok_or("the GGUF names no BOS token")?);
    }
    let context = model.config().context_length;
    if a.policy == Method::FULL && a.budget.is_some() {
        return Err("--budget needs an evicting --policy: the full cache keeps every token up to \
                    the model's context"
            .into());
    }
    let budget = a.budget.unwrap_or(Budget::Percent(20.0)).tokens(prompt.len() + a.steps);
    let (policies, snap) = common::layer_policies(
        a.policy,
        budget,
        a.heavy_fraction,
        a.schedule,
        context,
        model.config().n_layers,
    )?;
    let mut cache = LlamaCache::per_layer(model.config(), &policies)?;
    if let Some(snap) = snap {
        cache = cache.with_snapkv(snap);
    }

    let mut out = std::io::stdout().lock();
    write!(out, "{}", tok.decode(&prompt)?)?;
    out.flush()?;
    let n_layers = model.config().n_layers;
    let map_layer = a.map_layer.unwrap_or(n_layers / 2);
    if a.eviction_map.is_some()
        && (map_layer >= n_layers || a.map_head >= model.config().n_kv_heads)
    {
        return Err(format!(
            "--map-layer {map_layer} --map-head {}: the model has {n_layers} layers of {} KV heads",
            a.map_head,
            model.config().n_kv_heads
        )
        .into());
    }
    let mut trace = a.eviction_map.as_ref().map(|_| Trace::default());
    let record = |trace: &mut Option<Trace>, cache: &LlamaCache| {
        if let Some(t) = trace {
            t.record(a.map_head, cache.layers()[map_layer].heads()[a.map_head].planner());
        }
    };
    let mut rng = Rng::new(a.seed);
    let mut logits = model.forward(&mut cache, &prompt)?.to_vec1::<f32>()?;
    record(&mut trace, &cache);
    let mut generated = Vec::new();
    let mut shown = String::new();
    for _ in 0..a.steps {
        let next = sample(&logits, a.temperature, a.top_p, &mut rng);
        if Some(next) == tok.eos_id() {
            break;
        }
        generated.push(next);
        // Print whole characters only: a byte-level token may end mid-character.
        let text = tok.decode(&generated)?;
        if !text.ends_with('\u{FFFD}') && text.len() > shown.len() && text.starts_with(&shown) {
            write!(out, "{}", &text[shown.len()..])?;
            out.flush()?;
            shown = text;
        }
        match model.forward(&mut cache, &[next]) {
            Ok(l) => {
                logits = l.to_vec1::<f32>()?;
                record(&mut trace, &cache);
            }
            Err(Error::ContextExceeded { capacity, .. }) => {
                eprintln!(
                    "\nstopped: the full cache holds {capacity} tokens (the model's context); \
                     an evicting policy (--policy h2o) continues past it"
                );
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let text = tok.decode(&generated)?;
    if text.len() > shown.len() && text.starts_with(&shown) {
        write!(out, "{}", &text[shown.len()..])?;
    }
    writeln!(out)?;
    if a.print_ids {
        let ids: Vec<String> = generated.iter().map(u32::to_string).collect();
        writeln!(out, "ids: {}", ids.join(" "))?;
    }
    if let (Some(path), Some(trace)) = (&a.eviction_map, &trace) {
        let policy = policies[map_layer];
        let title = format!(
            "SmolLM2-135M, {} keeping {} tokens: layer {map_layer}, KV head {}",
            a.policy.name(),
            policy.budget(),
            a.map_head
        );
        let svg =
            trace.eviction_map_svg(a.map_head, policy.recent_window(), policy.sinks(), &title);
        std::fs::write(path, svg)?;
        eprintln!("eviction map: {}", path.display());
    }
    Ok(())
}
