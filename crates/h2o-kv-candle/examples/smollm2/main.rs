//! SmolLM2-135M (GGUF) decoding through h2o-kv inside candle: generation,
//! long-context perplexity, passkey retrieval and decode speed.
//!
//! ```text
//! cargo run --release -p h2o-kv-candle --example smollm2 -- generate "Once upon a time"
//! cargo run --release -p h2o-kv-candle --example smollm2 -- ppl --csv ppl.csv --plot ppl.svg
//! cargo run --release -p h2o-kv-candle --example smollm2 -- passkey --plot passkey.svg
//! cargo run --release -p h2o-kv-candle --example smollm2 -- bench
//! ```
//!
//! The model is looked up at `--model`, then in `$H2O_KV_MODELS`, `./models/`
//! and `../shared/models/`; data files at `--data`, then in `$H2O_KV_DATA`,
//! `./data/` and `../shared/data/`.

mod bench;
mod common;
mod generate;
mod passkey;
mod plot;
mod ppl;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "SmolLM2-135M through h2o-kv caches in candle")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate text from a prompt.
    Generate(generate::Args),
    /// Teacher-forced perplexity on long windows of WikiText-2 and Alice.
    Ppl(ppl::Args),
    /// Merge `ppl --csv` files into one table, CSV and plot.
    PplMerge(ppl::MergeArgs),
    /// Passkey retrieval at several lengths and depths.
    Passkey(passkey::Args),
    /// The table, CSV and heat map of a `passkey --out` file.
    PasskeyReport(passkey::ReportArgs),
    /// Decode speed: ours (full, H2O) against candle-transformers' Llama.
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Generate(a) => generate::run(&a),
        Cmd::Ppl(a) => ppl::run(&a),
        Cmd::PplMerge(a) => ppl::merge(&a),
        Cmd::Passkey(a) => passkey::run(&a),
        Cmd::PasskeyReport(a) => passkey::report(&a),
        Cmd::Bench(a) => bench::run(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
