//! The seed example, run through the library: one H2O decode step on tiny
//! integer matrices, every intermediate printed as a text matrix.
//!
//! ```text
//! cargo run --release --example walkthrough
//! cargo run --release --example walkthrough -- --tie keep-newer
//! cargo run --release --example walkthrough -- --heavy 1 --recent 2 --scale inv-sqrt-d
//! cargo run --release --example walkthrough -- --eviction-map walkthrough.svg
//! ```
//!
//! It reproduces the seed's worked example (the document this crate started
//! from): Q5 over keys tok1..tok4 (see
//! `report::Q5` for why the query is [1, 1, 1] rather than the printed [1, 1, 0]),
//! raw scores [2, 2, 2, 0], weights ≈ [0.318945 ×3, 0.043165], token 3 evicted
//! (ties kept towards the older token), S4 = {1, 2, 4}, the re-attention over
//! S4 ≈ [0.468311, 0.468311, 0.063379], acc ≈ [0.787256, 0.787256, 0.318945,
//! 0.106543], then token 5 enters, token 4 leaves: S5 = {1, 2, 5}.

mod report;

use clap::{Parser, ValueEnum};
use h2o_kv::TieRule;

/// Command-line knobs (the ones the seed document names).
#[derive(Debug, Parser)]
#[command(about = "The H2O seed walkthrough, computed by h2o-kv")]
struct Args {
    /// Heavy-hitter slots, in tokens (budget = heavy + recent).
    #[arg(long, default_value_t = 2)]
    heavy: usize,
    /// Recent-window slots, in tokens.
    #[arg(long, default_value_t = 1)]
    recent: usize,
    /// Which token survives an exact tie in accumulated score.
    #[arg(long, value_enum, default_value_t = Tie::KeepOlder)]
    tie: Tie,
    /// Softmax scaling: none (the document's choice) or 1/sqrt(head_dim).
    #[arg(long, value_enum, default_value_t = Scale::None)]
    scale: Scale,
    /// Skip the optional step 6.
    #[arg(long)]
    no_step6: bool,
    /// Use Q5 = [1, 1, 0] as printed in the document instead of [1, 1, 1],
    /// the query its arithmetic actually uses.
    #[arg(long)]
    query_as_printed: bool,
    /// Also write the eviction map (an SVG: one column per insert or
    /// eviction, token position up) to this file.
    #[arg(long, value_name = "FILE")]
    eviction_map: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Tie {
    KeepOlder,
    KeepNewer,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scale {
    None,
    InvSqrtD,
}

fn main() {
    let args = Args::parse();
    let knobs = report::Knobs {
        heavy: args.heavy,
        recent: args.recent,
        tie: match args.tie {
            Tie::KeepOlder => TieRule::KeepOlder,
            Tie::KeepNewer => TieRule::KeepNewer,
        },
        scale: match args.scale {
            Scale::None => 1.0,
            Scale::InvSqrtD => 1.0 / 3f64.sqrt(),
        },
        step6: !args.no_step6,
        query_as_printed: args.query_as_printed,
    };
    let trace = match report::run(&knobs, &mut std::io::stdout().lock()) {
        Ok(trace) => trace,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(path) = &args.eviction_map {
        let title = format!("H2O walkthrough: {} heavy + {} recent", args.heavy, args.recent);
        let svg = trace.eviction_map_svg(0, args.recent, 0, &title);
        if let Err(e) = std::fs::write(path, svg) {
            eprintln!("error: cannot write {}: {e}", path.display());
            std::process::exit(2);
        }
        println!("\neviction map written to {}", path.display());
    }
}
