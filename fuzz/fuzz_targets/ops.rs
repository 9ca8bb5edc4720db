//! Fuzz target: arbitrary bytes become a cache configuration and a sequence
//! of operations, applied to a cache of every policy (each alias and
//! `AnyPolicy`) and to a GQA layer, in f32 or f64.
//!
//! Run (from the repository root):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run ops -- -max_total_time=600`
//!
//! Checked after every call, besides "no panic":
//! - an `Err` leaves the state bit-identical (snapshot bytes before and after);
//! - `len <= capacity`, and `len <= budget` after every call that evicts;
//! - outputs of successful calls and all scores are finite;
//! - `last_evicted` is ascending and none of it is still resident;
//! - positions are distinct and below `next_position`;
//! - a snapshot restores to a cache that re-encodes to the same bytes and
//!   answers the next call identically; a corrupted snapshot is an `Err`.
#![no_main]

use h2o_kv::{
    AnyPolicy, Cache, Element, Full, FullCache, H2O, H2OCache, Heavy, HeavyOnly, KvCache,
    LayerCache, Recent, RecentOnly, SnapshotElement, SnapshotPolicy, TieRule,
};
use libfuzzer_sys::fuzz_target;

/// Reads the fuzzer's bytes; past the end it yields zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn small(&mut self, n: u8) -> usize {
        usize::from(self.byte() % n)
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    /// A value: mostly ordinary, sometimes extreme, subnormal or non-finite.
    fn value(&mut self) -> f64 {
        let b = self.byte();
        const SPECIAL: [f64; 16] = [
            0.0,
            -0.0,
            1e-40,
            -1e-310,
            1e-30,
            1e4,
            -1e4,
            1e30,
            -1e30,
            3e38,
            1.7e308,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1.0,
            -1.0,
        ];
        if b < 240 { (f64::from(b) - 120.0) / 30.0 } else { SPECIAL[usize::from(b - 240)] }
    }
    fn vec<T: Element>(&mut self, n: usize) -> Vec<T> {
        (0..n).map(|_| T::from_acc(<T::Acc as h2o_kv::Accumulator>::narrow(self.value()))).collect()
    }
}

/// Checks the invariants that hold after any call.
fn check_invariants<T: Element>(c: &dyn KvCache<T>) {
    assert!(c.len() <= c.capacity());
    let positions = c.resident_positions();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions distinct");
    assert!(positions.iter().all(|&p| p < c.next_position()));
    assert!(c.tokens().all(|t| t.score.is_finite() && t.score >= 0.0), "scores finite");
    let evicted = c.last_evicted();
    assert!(evicted.windows(2).all(|w| w[0] < w[1]), "last_evicted ascending");
    assert!(evicted.iter().all(|p| positions.binary_search(p).is_err()), "evicted is gone");
}

fn finite<T: Element>(x: &[T]) -> bool {
    x.iter().all(|v| v.is_finite())
}

/// One operation on one cache, decided by `op` and the values in `input`.
fn apply<T: SnapshotElement, P: SnapshotPolicy>(
    c: &mut Cache<T, P>,
    op: u8,
    input: &mut Bytes<'_>,
) {
    let d = c.head_dim();
    let before = c.snapshot();
    let evicting = c.policy_name() != "full";
    let (result, evicts): (Result<(), h2o_kv::Error>, bool) = match op % 10 {
        0 | 1 => {
            let (q, k, v) = (input.vec(d), input.vec(d), input.vec(d));
            (c.step(&q, &k, &v).map(|o| assert!(finite(o))), true)
        }
        2 => {
            let (q, k, v) = (input.vec(d), input.vec(d), input.vec(d));
            (c.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &v).map(|o| assert!(finite(o))), true)
        }
        3 => {
            let (k, v) = (input.vec(d), input.vec(d));
            (c.insert(&k, &v).map(drop), false)
        }
        4 => {
            let evicted = c.evict().to_vec();
            assert_eq!(evicted, c.last_evicted());
            (Ok(()), true)
        }
        5 => {
            let q = input.vec(d);
            (c.attend(&q).map(|o| assert!(finite(o))), false)
        }
        6 => {
            // Prefill of up to 7 rows; sometimes with wrong shapes.
            let p = input.small(8);
            let skew = input.small(4);
            let (nq, nk, nv, no) = match skew {
                0 => (p * d, p * d + 1, p * d, p * d),
                1 => (p * d, p * d, p * d + d, p * d),
                2 => (p * d, p * d, p * d, p * d + 1),
                _ => (p * d, p * d, p * d, p * d),
            };
            let (q, k, v) = (input.vec(nq), input.vec(nk), input.vec(nv));
            let mut out = vec![T::default(); no];
            let r = c.prefill(&q, &k, &v, &mut out);
            if r.is_ok() {
                assert!(finite(&out));
            }
            // An empty prefill is a no-op: it need not evict.
            (r, p > 0)
        }
        7 => {
            c.reset();
            assert_eq!(c.len(), 0);
            assert_eq!(c.next_position(), 0);
            (Ok(()), false)
        }
        8 => {
            // Snapshot round trip: the restored cache answers identically.
            let bytes = c.snapshot();
            let mut r = Cache::<T, P>::from_snapshot(&bytes).expect("own snapshot restores");
            assert_eq!(r.snapshot(), bytes);
            let (q, k, v) = (input.vec(d), input.vec(d), input.vec(d));
            let a = c
                .step(&q, &k, &v)
                .map(|o| o.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>());
            let b = r
                .step(&q, &k, &v)
                .map(|o| o.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>());
            // Debug text: an error carrying a NaN is not `==` to itself.
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            assert_eq!(c.snapshot(), r.snapshot());
            (a.map(drop), true)
        }
        _ => {
            // A corrupted snapshot: one byte changed, or cut short.
            let mut bytes = c.snapshot();
            let at = input.byte() as usize * 7 % bytes.len();
            if input.byte() & 1 == 0 {
                bytes[at] ^= input.byte() | 1;
            } else {
                bytes.truncate(at);
            }
            assert!(Cache::<T, P>::from_snapshot(&bytes).is_err(), "corrupted snapshot accepted");
            (Ok(()), false)
        }
    };
    match result {
        Err(_) => assert_eq!(c.snapshot(), before, "a failed call changed the cache"),
        Ok(()) if evicts && evicting => {
            assert!(c.len() <= c.budget(), "over budget after eviction")
        }
        Ok(()) => {}
    }
    check_invariants::<T>(c);
}

fn run<T: SnapshotElement>(input: &mut Bytes<'_>) {
    let d = 1 + input.small(6);
    let budget = 1 + input.small(7);
    let split = input.small(8).min(budget);
    let tie = if input.byte() & 1 == 0 { TieRule::KeepOlder } else { TieRule::KeepNewer };
    let scale = [0.0, 1.0, 0.125, 1e3][input.small(4)];
    let with_scale =
        |c: Cache<T, AnyPolicy>| if scale > 0.0 { c.with_scale(scale).unwrap() } else { c };
    let h2o = H2O::new(budget - split, split).unwrap().with_tie_rule(tie);
    let heavy = Heavy::new(budget).unwrap().with_tie_rule(tie);
    let mut full = FullCache::<T>::new(d, budget + 3).unwrap();
    let mut recent = RecentOnly::<T>::new(d, budget).unwrap();
    let mut heavy_only = HeavyOnly::<T>::with_policy(d, heavy).unwrap();
    let mut h2o_cache = H2OCache::<T>::with_policy(d, h2o).unwrap();
    let mut any: Vec<Cache<T, AnyPolicy>> = [
        AnyPolicy::from(Full::new(budget).unwrap()),
        Recent::new(budget).unwrap().into(),
        heavy.into(),
        h2o.into(),
    ]
    .into_iter()
    .map(|p| with_scale(Cache::with_policy(d, p).unwrap()))
    .collect();
    let g = 1 + input.small(3);
    let mut layer = LayerCache::<T, AnyPolicy>::new(2 * g, 2, d, h2o.into()).unwrap();
    while !input.done() {
        let op = input.byte();
        // Each cache reads its own values: the streams differ between caches.
        match op >> 5 {
            0 => apply(&mut full, op, input),
            1 => apply(&mut recent, op, input),
            2 => apply(&mut heavy_only, op, input),
            3 => apply(&mut h2o_cache, op, input),
            4..=6 => {
                let i = usize::from(op) % any.len();
                apply(&mut any[i], op, input)
            }
            _ => {
                let before = layer.snapshot();
                let (q, k, v) = (input.vec(2 * g * d), input.vec(2 * d), input.vec(2 * d));
                let r = match op % 4 {
                    0 => layer.step(&q, &k, &v).map(drop),
                    1 => layer.attend(&q).map(drop),
                    2 => layer.insert(&k, &v).map(drop),
                    _ => {
                        let mut out = vec![T::default(); 2 * g * d];
                        layer.prefill(&q, &k, &v, &mut out)
                    }
                };
                if r.is_err() {
                    assert_eq!(layer.snapshot(), before, "a failed layer call changed it");
                }
                let bytes = layer.snapshot();
                assert_eq!(
                    LayerCache::<T, AnyPolicy>::from_snapshot(&bytes).unwrap().snapshot(),
                    bytes
                );
                let n = layer.heads()[0].len();
                assert!(layer.heads().iter().all(|h| h.len() == n));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes(data);
    if input.byte() & 1 == 0 {
        run::<f32>(&mut input);
    } else {
        run::<f64>(&mut input);
    }
});
