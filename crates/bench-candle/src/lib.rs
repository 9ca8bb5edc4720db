//! Benchmarks only: `cargo bench -p h2o-kv-bench-candle` compares h2o-kv's decode
//! and prefill attention with candle's `KvCache` / `RotatingKvCache` and matmul
//! attention on the same shapes. This library is empty; see `benches/candle.rs`.
