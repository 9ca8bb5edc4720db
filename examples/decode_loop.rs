//! A synthetic decode loop, written as a downstream crate would write it:
//! every policy decodes the same 400-token stream through the `KvCache` trait
//! (one `Box<dyn KvCache<f32>>` per policy), and the example prints which
//! positions each one kept, how far its outputs drift from the full cache,
//! and the key/value bytes it holds.
//!
//! ```text
//! cargo run --release --example decode_loop
//! ```
//!
//! The stream has a few "anchor" tokens (positions 0, 37 and 150) whose keys
//! line up with every query, so they soak up attention: the heavy hitters H2O
//! is built to keep, and a sliding window forgets.

use h2o_kv::{FullCache, H2OCache, HeavyOnly, KvCache, RecentOnly};

const HEAD_DIM: usize = 64;
const STEPS: usize = 400;
const BUDGET: usize = 40;
const ANCHORS: [usize; 3] = [0, 37, 150];

/// A deterministic pseudo-random stream in [-1, 1) (xorshift; no dependency).
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vector(&mut self, scale: f32) -> Vec<f32> {
        (0..HEAD_DIM).map(|_| self.next() * scale).collect()
    }
}

fn main() -> Result<(), h2o_kv::Error> {
    let mut caches: Vec<Box<dyn KvCache<f32>>> = vec![
        Box::new(FullCache::<f32>::new(HEAD_DIM, STEPS)?),
        Box::new(RecentOnly::<f32>::new(HEAD_DIM, BUDGET)?),
        Box::new(HeavyOnly::<f32>::new(HEAD_DIM, BUDGET)?),
        Box::new(H2OCache::<f32>::with_heavy_fraction(HEAD_DIM, BUDGET, 0.5)?),
    ];
    let direction: Vec<f32> = Stream(7).vector(1.0);
    let mut rng = Stream(42);
    let mut drift = vec![0.0f64; caches.len()];
    let mut full_out = vec![0.0f32; HEAD_DIM];

    for t in 0..STEPS {
        // Queries lean towards `direction`; anchor keys point along it.
        let noise = rng.vector(0.3);
        let q: Vec<f32> = direction.iter().zip(&noise).map(|(d, n)| d + n).collect();
        let k = if ANCHORS.contains(&t) {
            direction.iter().map(|d| 2.0 * d).collect()
        } else {
            rng.vector(1.0)
        };
        let v = rng.vector(1.0);
        for (i, cache) in caches.iter_mut().enumerate() {
            let out = cache.step(&q, &k, &v)?;
            if i == 0 {
                full_out.copy_from_slice(out);
            } else {
                let err: f32 = out.iter().zip(&full_out).map(|(a, b)| (a - b) * (a - b)).sum();
                drift[i] += f64::from(err.sqrt());
            }
        }
    }

    let full_bytes = caches[0].kv_bytes();
    println!(
        "{STEPS} decode steps, head_dim {HEAD_DIM}, budget {BUDGET} tokens, anchors at {ANCHORS:?}\n"
    );
    println!(
        "{:<8} {:>9} {:>10} {:>8} {:>16}  kept positions (oldest 8)",
        "policy", "resident", "KV bytes", "vs full", "mean |out-full|"
    );
    for (cache, d) in caches.iter().zip(&drift) {
        let kept = cache.resident_positions();
        let anchors_kept = ANCHORS.iter().filter(|a| kept.contains(&(**a as u64))).count();
        println!(
            "{:<8} {:>9} {:>10} {:>7.1}% {:>16.4}  {:?} … ({anchors_kept}/{} anchors kept)",
            cache.policy_name(),
            cache.len(),
            cache.kv_bytes(),
            100.0 * cache.kv_bytes() as f64 / full_bytes as f64,
            d / STEPS as f64,
            &kept[..kept.len().min(8)],
            ANCHORS.len(),
        );
    }
    Ok(())
}
