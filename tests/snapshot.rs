//! Session snapshots: a restored cache continues bit-identically, and every
//! truncated, corrupted, wrong-version or wrong-type snapshot is an `Err`.

use h2o_kv::SnapshotError;
use h2o_kv::{
    AnyPolicy, Cache, Element, Error, Full, FullCache, H2O, H2OCache, Heavy, HeavyOnly, KvCache,
    LayerCache, Recent, RecentOnly, SNAPSHOT_VERSION, SnapshotElement, SnapshotPolicy, TieRule,
};

mod common;

use common::Rng;

fn bits<T: Element>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.to_f64().to_bits()).collect()
}

/// One random call on a cache; returns everything it observably produced.
fn random_op<T: Element>(c: &mut dyn KvCache<T>, rng: &mut Rng) -> String {
    let d = c.head_dim();
    let op = rng.below(20);
    let out = match op {
        0..=9 => {
            let (q, k, v) = (rng.vec(d), rng.vec(d), rng.vec(d));
            format!("step {:?}", c.step(&q, &k, &v).map(bits))
        }
        10..=11 => {
            let (q, k, v) = (rng.vec(d), rng.vec(d), rng.vec(d));
            format!(
                "doc {:?}",
                c.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &v).map(bits)
            )
        }
        12..=13 => {
            let (k, v) = (rng.vec(d), rng.vec(d));
            format!("insert {:?}", c.insert(&k, &v))
        }
        14 => format!("evict {:?}", c.evict()),
        15..=16 => {
            let q = rng.vec(d);
            format!("attend {:?}", c.attend(&q).map(bits))
        }
        17..=18 => {
            let p = rng.below(5);
            let (q, k, v) = (rng.vec(p * d), rng.vec(p * d), rng.vec(p * d));
            let mut out = vec![T::default(); p * d];
            let r = c.prefill(&q, &k, &v, &mut out);
            format!("prefill {r:?} {:?}", bits(&out))
        }
        _ => {
            c.reset();
            "reset".into()
        }
    };
    let tokens: Vec<(u64, u64)> = c.tokens().map(|t| (t.position, t.score.to_bits())).collect();
    format!("{out} evicted {:?} tokens {tokens:?} next {}", c.last_evicted(), c.next_position())
}

/// Runs a random stream, snapshots at many points and checks that the
/// restored cache continues exactly like the original.
fn check_continuation<T: SnapshotElement, P: SnapshotPolicy>(
    label: &str,
    make: impl Fn() -> Cache<T, P>,
    seed: u64,
) {
    let mut c = make();
    let mut rng = Rng::new(seed);
    for n in 0..60 {
        random_op(&mut c, &mut rng);
        if n % 3 != 0 {
            continue;
        }
        let bytes = c.snapshot();
        let mut restored = Cache::<T, P>::from_snapshot(&bytes)
            .unwrap_or_else(|e| panic!("{label} op {n}: restore failed: {e}"));
        assert_eq!(restored.snapshot(), bytes, "{label} op {n}: re-encoding differs");
        let (mut a, mut b) = (c.clone(), rng.clone());
        let mut rng_b = rng.clone();
        for m in 0..25 {
            let x = random_op(&mut a, &mut b);
            let y = random_op(&mut restored, &mut rng_b);
            assert_eq!(x, y, "{label} snapshot at op {n}, step {m} after restore");
        }
        assert_eq!(a.snapshot(), restored.snapshot(), "{label} op {n}: final state");
    }
}

#[test]
fn restored_caches_continue_bit_identically() {
    for seed in 0..6 {
        check_continuation("full f32", || FullCache::<f32>::new(3, 40).unwrap(), seed);
        check_continuation("recent f64", || RecentOnly::<f64>::new(3, 4).unwrap(), seed);
        check_continuation("heavy f32", || HeavyOnly::<f32>::new(2, 3).unwrap(), seed);
        check_continuation("h2o f64", || H2OCache::<f64>::new(5, 2, 3).unwrap(), seed);
        check_continuation(
            "h2o f32 scale",
            || H2OCache::<f32>::new(4, 3, 1).unwrap().with_scale(0.7).unwrap(),
            seed,
        );
        check_continuation(
            "h2o recent 0 keep-newer",
            || {
                Cache::<f32, _>::with_policy(
                    2,
                    H2O::new(3, 0).unwrap().with_tie_rule(TieRule::KeepNewer),
                )
                .unwrap()
            },
            seed,
        );
        check_continuation(
            "heavy keep-newer",
            || {
                Cache::<f64, _>::with_policy(
                    2,
                    Heavy::new(4).unwrap().with_tie_rule(TieRule::KeepNewer),
                )
                .unwrap()
            },
            seed,
        );
        check_continuation(
            "any recent",
            || Cache::<f32, AnyPolicy>::with_policy(3, Recent::new(2).unwrap().into()).unwrap(),
            seed,
        );
        check_continuation(
            "any h2o",
            || Cache::<f64, AnyPolicy>::with_policy(3, H2O::new(2, 2).unwrap().into()).unwrap(),
            seed,
        );
    }
}

#[test]
fn layer_snapshots_continue_bit_identically() {
    let (h, kv, d) = (6, 2, 3);
    for policy in [
        AnyPolicy::from(H2O::new(2, 2).unwrap()),
        Full::new(30).unwrap().into(),
        Heavy::new(3).unwrap().into(),
    ] {
        let mut rng = Rng::new(7);
        let mut layer = LayerCache::<f32, AnyPolicy>::new(h, kv, d, policy).unwrap();
        for n in 0..20 {
            let (q, k, v) = (rng.vec::<f32>(h * d), rng.vec(kv * d), rng.vec(kv * d));
            if n == 3 {
                let mut out = vec![0.0; 2 * h * d];
                let (q, k, v) =
                    (rng.vec::<f32>(2 * h * d), rng.vec(2 * kv * d), rng.vec(2 * kv * d));
                layer.prefill(&q, &k, &v, &mut out).unwrap();
            } else if layer.len() < layer.heads()[0].capacity() {
                layer.step(&q, &k, &v).unwrap();
            }
            let bytes = layer.snapshot();
            let mut restored = LayerCache::<f32, AnyPolicy>::from_snapshot(&bytes).unwrap();
            assert_eq!(restored.snapshot(), bytes);
            let mut a = layer.clone();
            let mut r2 = rng.clone();
            let mut r1 = rng.clone();
            for _ in 0..10 {
                let (q, k, v) = (r1.vec::<f32>(h * d), r1.vec(kv * d), r1.vec(kv * d));
                let (q2, k2, v2) = (r2.vec::<f32>(h * d), r2.vec(kv * d), r2.vec(kv * d));
                let x = a.step(&q, &k, &v).map(bits);
                let y = restored.step(&q2, &k2, &v2).map(bits);
                assert_eq!(x, y, "{policy:?} snapshot after {n}");
            }
            assert_eq!(a.snapshot(), restored.snapshot());
        }
    }
    // A GQA layer keeps its group size: heads, outputs and shapes.
    let layer = LayerCache::<f64, _>::new(8, 2, 4, H2O::new(1, 1).unwrap()).unwrap();
    let r = LayerCache::<f64, H2O>::from_snapshot(&layer.snapshot()).unwrap();
    assert_eq!((r.n_heads(), r.n_kv_heads(), r.head_dim(), r.group_size()), (8, 2, 4, 4));
}

#[test]
fn policies_convert_through_any_policy() {
    let mut c = H2OCache::<f32>::new(2, 2, 2).unwrap();
    let mut rng = Rng::new(1);
    for _ in 0..10 {
        random_op(&mut c, &mut rng);
    }
    let bytes = c.snapshot();
    let mut any = Cache::<f32, AnyPolicy>::from_snapshot(&bytes).unwrap();
    assert_eq!(any.policy(), &AnyPolicy::H2O(*c.policy()));
    // The same decisions through the run-time policy.
    let (mut r1, mut r2) = (Rng::new(5), Rng::new(5));
    for _ in 0..30 {
        assert_eq!(random_op(&mut c, &mut r1), random_op(&mut any, &mut r2));
    }
    // And back: an AnyPolicy snapshot holding H2O restores as H2OCache.
    let back = H2OCache::<f32>::from_snapshot(&any.snapshot()).unwrap();
    assert_eq!(back.snapshot(), c.snapshot());
    // A policy the type cannot hold is a mismatch.
    for err in [
        RecentOnly::<f32>::from_snapshot(&bytes).unwrap_err(),
        HeavyOnly::<f32>::from_snapshot(&bytes).unwrap_err(),
        FullCache::<f32>::from_snapshot(&bytes).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::Snapshot(SnapshotError::Mismatch { found: "an h2o policy", .. })),
            "{err:?}"
        );
    }
}

fn sample() -> Vec<u8> {
    let mut c = H2OCache::<f32>::new(3, 2, 2).unwrap();
    let mut rng = Rng::new(11);
    for _ in 0..12 {
        random_op(&mut c, &mut rng);
    }
    assert!(c.len() >= 3, "a sample with tokens");
    c.snapshot()
}

#[test]
fn truncated_snapshots_are_errors() {
    let bytes = sample();
    for n in 0..bytes.len() {
        let err = H2OCache::<f32>::from_snapshot(&bytes[..n]).unwrap_err();
        assert!(
            matches!(err, Error::Snapshot(SnapshotError::Truncated { .. })),
            "cut at {n}: {err:?}"
        );
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        H2OCache::<f32>::from_snapshot(&long),
        Err(Error::Snapshot(SnapshotError::Invalid { .. }))
    ));
}

#[test]
fn every_single_byte_corruption_is_an_error() {
    let bytes = sample();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x10, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            let err = H2OCache::<f32>::from_snapshot(&bad).unwrap_err();
            match i {
                0..8 => assert_eq!(err, Error::Snapshot(SnapshotError::Magic), "byte {i}"),
                8..10 => assert!(
                    matches!(err, Error::Snapshot(SnapshotError::Version { .. })),
                    "byte {i}"
                ),
                12..20 => assert!(
                    matches!(
                        err,
                        Error::Snapshot(SnapshotError::Truncated { .. })
                            | Error::Snapshot(SnapshotError::Invalid { .. })
                    ),
                    "length byte {i}: {err:?}"
                ),
                _ => assert!(
                    matches!(err, Error::Snapshot(SnapshotError::Checksum { .. })),
                    "byte {i}: {err:?}"
                ),
            }
        }
    }
}

/// FNV-1a 64, written here again so the test can forge checksums.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Recomputes the checksum after a deliberate edit.
fn reseal(bytes: &mut [u8]) {
    let n = bytes.len() - 8;
    let sum = fnv(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn wrong_version_kind_and_type_are_errors() {
    let bytes = sample();
    let mut v2 = bytes.clone();
    v2[8..10].copy_from_slice(&(SNAPSHOT_VERSION + 1).to_le_bytes());
    reseal(&mut v2);
    assert_eq!(
        H2OCache::<f32>::from_snapshot(&v2).unwrap_err(),
        Error::Snapshot(SnapshotError::Version {
            found: SNAPSHOT_VERSION + 1,
            supported: SNAPSHOT_VERSION
        })
    );
    assert_eq!(
        H2OCache::<f64>::from_snapshot(&bytes).unwrap_err(),
        Error::Snapshot(SnapshotError::Mismatch { expected: "f64", found: "f32" })
    );
    assert!(matches!(
        LayerCache::<f32, H2O>::from_snapshot(&bytes),
        Err(Error::Snapshot(SnapshotError::Mismatch { expected: "a layer cache", .. }))
    ));
    let layer = LayerCache::<f32, _>::new(2, 1, 3, H2O::new(2, 2).unwrap()).unwrap();
    assert!(matches!(
        H2OCache::<f32>::from_snapshot(&layer.snapshot()),
        Err(Error::Snapshot(SnapshotError::Mismatch { expected: "a single-head cache", .. }))
    ));
    let mut unknown = bytes.clone();
    unknown[11] = 9;
    reseal(&mut unknown);
    assert!(matches!(
        H2OCache::<f32>::from_snapshot(&unknown),
        Err(Error::Snapshot(SnapshotError::Mismatch { found: "an unknown element type", .. }))
    ));
    assert_eq!(
        H2OCache::<f32>::from_snapshot(b"not a snapshot at all").unwrap_err(),
        Error::Snapshot(SnapshotError::Magic)
    );
    assert!(matches!(
        H2OCache::<f32>::from_snapshot(&[]),
        Err(Error::Snapshot(SnapshotError::Truncated { .. }))
    ));
}

/// Offsets in a single-head snapshot (the same in versions 1 and 2 up to the
/// end of the token rows).
const STATES: usize = 20 + 18 + 8 + 8 + 8 + 8 + 8;

#[test]
fn forged_impossible_contents_are_errors() {
    let bytes = sample();
    let hw = u64::from_le_bytes(bytes[70..78].try_into().unwrap()) as usize;
    let rows = STATES + hw;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("unknown policy", Box::new(|b| b[20] = 9)),
        ("zero budget", Box::new(|b| b[21..37].fill(0))),
        ("unknown tie rule", Box::new(|b| b[37] = 5)),
        ("head_dim 0", Box::new(|b| b[38..46].fill(0))),
        (
            "negative scale",
            Box::new(|b| b[46..54].copy_from_slice(&(-1.0f64).to_bits().to_le_bytes())),
        ),
        ("NaN scale", Box::new(|b| b[46..54].copy_from_slice(&f64::NAN.to_bits().to_le_bytes()))),
        ("next position 0", Box::new(|b| b[54..62].fill(0))),
        (
            "scale inexact in f32",
            Box::new(|b| b[46..54].copy_from_slice(&0.1f64.to_bits().to_le_bytes())),
        ),
        ("slot count off", Box::new(|b| b[62] ^= 1)),
        ("high-water past slots", Box::new(|b| b[70] = 200)),
        ("unknown slot state", Box::new(move |b| b[STATES] = 7)),
        (
            "a recent slot made candidate",
            Box::new(move |b| {
                let i = (STATES..STATES + hw).find(|&i| b[i] == 2).unwrap();
                b[i] = 1;
            }),
        ),
        (
            "NaN score",
            Box::new(move |b| {
                b[rows + 8..rows + 16].copy_from_slice(&f64::NAN.to_bits().to_le_bytes())
            }),
        ),
        (
            "negative score",
            Box::new(move |b| {
                b[rows + 8..rows + 16].copy_from_slice(&(-1.0f64).to_bits().to_le_bytes())
            }),
        ),
        (
            "infinite key",
            Box::new(move |b| {
                b[rows + 16..rows + 20].copy_from_slice(&f32::INFINITY.to_bits().to_le_bytes())
            }),
        ),
        (
            "NaN value",
            Box::new(move |b| {
                b[rows + 28..rows + 32].copy_from_slice(&f32::NAN.to_bits().to_le_bytes())
            }),
        ),
        (
            "position past next",
            Box::new(move |b| b[rows..rows + 8].copy_from_slice(&u64::MAX.to_le_bytes())),
        ),
        (
            "duplicate position",
            Box::new(move |b| {
                let row = 16 + 2 * 3 * 4;
                let p: [u8; 8] = b[rows..rows + 8].try_into().unwrap();
                b[rows + row..rows + row + 8].copy_from_slice(&p);
            }),
        ),
        (
            "trailing list count huge",
            Box::new(|b| {
                let n = b.len() - 8;
                let last_count = n - 8 * (1 + count_at_end(b));
                b[last_count..last_count + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            }),
        ),
    ];
    for (name, edit) in edits {
        let mut bad = bytes.clone();
        edit(&mut bad);
        assert_ne!(bad, bytes, "{name}: the edit changed nothing");
        reseal(&mut bad);
        let err = H2OCache::<f32>::from_snapshot(&bad).unwrap_err();
        assert!(matches!(err, Error::Snapshot(SnapshotError::Invalid { .. })), "{name}: {err:?}");
    }
}

/// The number of last-evicted positions, read from the end of a sample.
fn count_at_end(b: &[u8]) -> usize {
    let n = b.len() - 8;
    // Try each count k: the u64 at n - 8(k+1) must equal k.
    (0..64)
        .find(|&k| {
            n >= 8 * (k + 1)
                && u64::from_le_bytes(b[n - 8 * (k + 1)..n - 8 * k].try_into().unwrap()) == k as u64
        })
        .expect("last-evicted count")
}

#[test]
fn random_forged_snapshots_never_restore_a_different_cache() {
    // Random edits with a valid checksum: a restore either fails, or gives a
    // cache that encodes back to exactly the edited bytes (nothing silently
    // normalised) and runs without panicking.
    let bytes = sample();
    let mut rng = Rng::new(99);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut bad = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            let i = 20 + rng.below(bad.len() - 28);
            bad[i] = match rng.below(3) {
                0 => bad[i] ^ (1 << rng.below(8)),
                1 => rng.next_u64() as u8,
                _ => 0,
            };
        }
        reseal(&mut bad);
        match H2OCache::<f32>::from_snapshot(&bad) {
            Ok(mut c) => {
                ok += 1;
                assert_eq!(c.snapshot(), bad, "restored a different cache");
                let mut r = Rng::new(3);
                for _ in 0..5 {
                    random_op(&mut c, &mut r);
                }
            }
            Err(_) => err += 1,
        }
    }
    eprintln!("forged snapshots: {ok} restored exactly, {err} rejected");
    assert!(err > 0 && ok > 0);
}

#[cfg(feature = "half")]
#[test]
fn half_precision_snapshots_round_trip() {
    use half::{bf16, f16};
    fn check<T: SnapshotElement>(name: &str) {
        let mut c = H2OCache::<T>::new(3, 2, 2).unwrap();
        let mut rng = Rng::new(4);
        for _ in 0..30 {
            random_op(&mut c, &mut rng);
        }
        let bytes = c.snapshot();
        let mut r = H2OCache::<T>::from_snapshot(&bytes).unwrap();
        assert_eq!(r.snapshot(), bytes, "{name}");
        let (mut a, mut b) = (Rng::new(8), Rng::new(8));
        for _ in 0..20 {
            assert_eq!(random_op(&mut c, &mut a), random_op(&mut r, &mut b), "{name}");
        }
        assert!(matches!(
            H2OCache::<f32>::from_snapshot(&bytes),
            Err(Error::Snapshot(SnapshotError::Mismatch { expected: "f32", .. }))
        ));
    }
    check::<f16>("f16");
    check::<bf16>("bf16");
    let b = H2OCache::<bf16>::new(2, 1, 1).unwrap().snapshot();
    assert_eq!(
        H2OCache::<f16>::from_snapshot(&b).unwrap_err(),
        Error::Snapshot(SnapshotError::Mismatch { expected: "f16", found: "bf16" })
    );
}

/// Version 2 keeps each token's last weight and attention count, so TOVA
/// (ranks by the last weight) and mean score (divides by the count) decide
/// after a restore exactly as the original; the restored planner holds the
/// same statistics bit for bit.
#[test]
fn tova_and_mean_score_continue_exactly() {
    use h2o_kv::{MeanScore, Tova};
    let policies: [AnyPolicy; 2] =
        [Tova::new(5).unwrap().into(), MeanScore::new(3, 2).unwrap().into()];
    for policy in policies {
        let mut rng = Rng::new(21);
        let mut c = Cache::<f32, AnyPolicy>::with_policy(4, policy).unwrap();
        for _ in 0..9 {
            let (q, k, v) = (rng.vec(4), rng.vec(4), rng.vec(4));
            c.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &v).unwrap();
        }
        let mut back = Cache::<f32, AnyPolicy>::from_snapshot(&c.snapshot()).unwrap();
        let stats = |c: &Cache<f32, AnyPolicy>| -> Vec<(usize, u64, u64, u64, u64)> {
            c.planner()
                .residents()
                .map(|(s, t)| {
                    (s, t.position, t.score.to_bits(), t.last_weight.to_bits(), t.attended)
                })
                .collect()
        };
        assert_eq!(stats(&back), stats(&c), "{policy:?}");
        assert!(stats(&c).iter().any(|s| s.3 != 0 && s.4 != 0));
        for _ in 0..30 {
            let (q, k, v) = (rng.vec(4), rng.vec(4), rng.vec(4));
            let a = c.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &v).unwrap().to_vec();
            let b =
                back.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &v).unwrap().to_vec();
            assert_eq!(bits(&a), bits(&b), "{policy:?}");
            assert_eq!(c.last_evicted(), back.last_evicted(), "{policy:?}");
        }
        assert_eq!(stats(&back), stats(&c));
    }
}

/// A version-1 snapshot (no per-token statistics) is still read: the same
/// tokens, scores and rows, with last weights and counts at 0.
#[test]
fn version_1_snapshots_are_still_read() {
    let mut c = H2OCache::<f32>::new(3, 2, 2).unwrap();
    let mut rng = Rng::new(11);
    for _ in 0..12 {
        random_op(&mut c, &mut rng);
    }
    let v2 = c.snapshot();
    // Rebuild the version-1 bytes: drop the 16 bytes of statistics per
    // token after the token rows, set the version and the payload length.
    let hw = u64::from_le_bytes(v2[70..78].try_into().unwrap()) as usize;
    let tokens = c.len();
    let rows_end = STATES + hw + tokens * (16 + 2 * 3 * 4);
    let mut v1 = v2[..rows_end].to_vec();
    v1.extend_from_slice(&v2[rows_end + 16 * tokens..]);
    v1[8..10].copy_from_slice(&1u16.to_le_bytes());
    let payload = (v1.len() - 28) as u64;
    v1[12..20].copy_from_slice(&payload.to_le_bytes());
    reseal(&mut v1);
    let back = H2OCache::<f32>::from_snapshot(&v1).unwrap();
    let tokens = |c: &H2OCache<f32>| -> Vec<(u64, u64)> {
        c.tokens().map(|t| (t.position, t.score.to_bits())).collect()
    };
    assert_eq!(tokens(&back), tokens(&c));
    assert!(back.planner().residents().all(|(_, t)| t.last_weight == 0.0 && t.attended == 0));
    // Written again, it is a version-2 snapshot of the zeroed statistics.
    let again = back.snapshot();
    assert_eq!(u16::from_le_bytes([again[8], again[9]]), SNAPSHOT_VERSION);
    assert_eq!(again.len(), v2.len());
    // The same H2O decisions from here on (H2O ranks by score only).
    let (mut a, mut b) = (c, back);
    for _ in 0..20 {
        let (q, k, v) = (rng.vec(3), rng.vec(3), rng.vec(3));
        assert_eq!(bits(a.step(&q, &k, &v).unwrap()), bits(b.step(&q, &k, &v).unwrap()));
        assert_eq!(a.resident_positions(), b.resident_positions());
    }
}
