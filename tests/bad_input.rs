//! Bad input, table-driven: every public constructor and call, given each
//! kind of bad input, returns the documented `Err` and leaves the cache
//! bit-identical to before.
//!
//! "Bit-identical" is checked on a full state dump: the cache's snapshot
//! bytes (policy, scale, slot layout, free stack, recent ring, positions,
//! scores, keys, values, next position, last evicted) plus the entries of
//! `last_attention`. A clone taken before the failed call must then behave
//! exactly like the cache after it for a few more steps.
//!
//! The tables cross: policies (each alias and `AnyPolicy`) × element types
//! (f32, f64) × cache states (fresh, mid-stream, reset, at capacity) × bad
//! calls. Subnormal inputs are not bad: a separate table checks they work.

use core::cmp::Ordering;

use h2o_kv::{
    Accumulator, AnyPolicy, Cache, Candidate, Element, Error, EvictionPolicy, Full, FullCache, H2O,
    H2OCache, Heavy, HeavyOnly, KvCache, LayerCache, MAX_BUDGET, MAX_HEAD_DIM, Recent, RecentOnly,
    SnapshotElement, SnapshotPolicy,
};

const D: usize = 4;

/// The element types under test, with their extreme values.
trait Num: SnapshotElement {
    /// A finite value whose square overflows the accumulator.
    const HUGE: f64;
    /// A finite value near the largest, so a query overflows against keys ≥ 1.
    const NEAR_MAX: f64;
    /// A positive subnormal.
    const SUBNORMAL: f64;
}
impl Num for f32 {
    const HUGE: f64 = 1e30;
    const NEAR_MAX: f64 = 3e38;
    const SUBNORMAL: f64 = 1e-40;
}
impl Num for f64 {
    const HUGE: f64 = 1e200;
    const NEAR_MAX: f64 = 1.7e308;
    const SUBNORMAL: f64 = 1e-310;
}

fn t<T: Element>(x: f64) -> T {
    T::from_acc(<T::Acc as Accumulator>::narrow(x))
}

fn vec_of<T: Element>(n: usize, f: impl Fn(usize) -> f64) -> Vec<T> {
    (0..n).map(|i| t(f(i))).collect()
}

/// Keys and queries are positive and above 1, so a huge query overflows
/// against any resident key.
fn qkv<T: Element>(step: usize, n: usize) -> (Vec<T>, Vec<T>, Vec<T>) {
    let q = vec_of(n, |j| 1.0 + 0.125 * ((step * 3 + j) % 5) as f64);
    let k = vec_of(n, |j| 1.0 + 0.25 * ((step * 7 + j) % 3) as f64);
    let v = vec_of(n, |j| ((step * n + j) as f64 * 0.37).sin());
    (q, k, v)
}

/// A full state dump: snapshot bytes plus the last attention.
fn dump<T: SnapshotElement, P: SnapshotPolicy>(c: &Cache<T, P>) -> Vec<u8> {
    let mut b = c.snapshot();
    for e in c.last_attention() {
        b.extend(e.position.to_le_bytes());
        b.extend(e.logit.to_bits().to_le_bytes());
        b.extend(e.weight.to_bits().to_le_bytes());
    }
    b
}

fn layer_dump<T: SnapshotElement, P: SnapshotPolicy>(l: &LayerCache<T, P>) -> Vec<u8> {
    let mut b = l.snapshot();
    for h in l.heads() {
        b.extend(dump(h));
    }
    b
}

/// Bit patterns of an output, for exact comparison.
fn bits<T: Element>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.to_f64().to_bits()).collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Prep {
    Fresh,
    MidStream,
    JustReset,
    AfterReset,
    /// A full cache at capacity, or an evicting cache one token over budget.
    Loaded,
}
const PREPS: [Prep; 5] =
    [Prep::Fresh, Prep::MidStream, Prep::JustReset, Prep::AfterReset, Prep::Loaded];

fn prepare<T: Element>(c: &mut dyn KvCache<T>, prep: Prep) {
    let steps = |c: &mut dyn KvCache<T>, n: usize| {
        for s in 0..n {
            let (q, k, v) = qkv::<T>(s, D);
            c.step(&q, &k, &v).unwrap();
        }
    };
    match prep {
        Prep::Fresh => {}
        Prep::MidStream => steps(c, 5),
        Prep::JustReset => {
            steps(c, 5);
            c.reset();
        }
        Prep::AfterReset => {
            steps(c, 5);
            c.reset();
            steps(c, 2);
        }
        Prep::Loaded => {
            if c.policy_name() == "full" {
                let n = c.capacity();
                steps(c, n);
            } else {
                steps(c, 5);
                let (_, k, v) = qkv::<T>(99, D);
                c.insert(&k, &v).unwrap();
            }
            assert_eq!(c.len(), c.capacity());
        }
    }
}

/// What a bad call must return.
type Want = fn(&Error) -> bool;
type Call<T> = Box<dyn Fn(&mut dyn KvCache<T>) -> Result<(), Error>>;

struct BadCall<T> {
    name: String,
    call: Call<T>,
    want: Want,
    /// Only bad when the cache holds a token (a huge query against nothing is fine).
    needs_tokens: bool,
}

fn bad<T>(name: impl Into<String>, want: Want, call: Call<T>) -> BadCall<T> {
    BadCall { name: name.into(), call, want, needs_tokens: false }
}

fn length(e: &Error) -> bool {
    matches!(e, Error::LengthMismatch { .. })
}
fn ragged(e: &Error) -> bool {
    matches!(e, Error::RaggedRows { .. })
}
fn non_finite(e: &Error) -> bool {
    matches!(e, Error::NonFinite { .. })
}
fn overflow(e: &Error) -> bool {
    matches!(e, Error::AttentionOverflow { .. })
}
fn capacity(e: &Error) -> bool {
    matches!(e, Error::CapacityExceeded { .. })
}

/// Every call that takes data, with every kind of bad data.
fn bad_calls<T: Num>() -> Vec<BadCall<T>> {
    let mut table = Vec::new();
    let (q, k, v) = qkv::<T>(42, D);
    // Wrong lengths, per argument of every decode call.
    for len in [0, 1, D - 1, D + 1, 3 * D] {
        let short = vec_of::<T>(len, |_| 0.5);
        let (q2, k2, v2, s) = (q.clone(), k.clone(), v.clone(), short.clone());
        table.push(bad(
            format!("insert key len {len}"),
            length,
            Box::new(move |c| c.insert(&s, &v2).map(drop)),
        ));
        let (k3, s) = (k2.clone(), short.clone());
        table.push(bad(
            format!("insert value len {len}"),
            length,
            Box::new(move |c| c.insert(&k3, &s).map(drop)),
        ));
        let s = short.clone();
        table.push(bad(
            format!("attend query len {len}"),
            length,
            Box::new(move |c| c.attend(&s).map(drop)),
        ));
        for (arg, doc) in [(0, false), (1, false), (2, false), (0, true), (1, true), (2, true)] {
            let mut args = [q2.clone(), k2.clone(), v.clone()];
            args[arg] = short.clone();
            let name =
                format!("step{} arg {arg} len {len}", if doc { "_document_order" } else { "" });
            table.push(bad(
                name,
                length,
                Box::new(move |c| {
                    if doc {
                        c.step_with(
                            h2o_kv::StepOrder::AttendInsertEvict,
                            &args[0],
                            &args[1],
                            &args[2],
                        )
                        .map(drop)
                    } else {
                        c.step(&args[0], &args[1], &args[2]).map(drop)
                    }
                }),
            ));
        }
    }
    // Prefill shapes: P = 2 rows, one argument off.
    let rows = |n: usize| vec_of::<T>(n, |i| 1.0 + 0.1 * (i % 3) as f64);
    for (name, nq, nk, nv, no, want) in [
        ("prefill ragged keys", 2 * D, 2 * D + 1, 2 * D, 2 * D, ragged as Want),
        ("prefill short values", 2 * D, 2 * D, D, 2 * D, length),
        ("prefill long queries", 3 * D, 2 * D, 2 * D, 2 * D, length),
        ("prefill short out", 2 * D, 2 * D, 2 * D, D, length),
        ("prefill empty out", 2 * D, 2 * D, 2 * D, 0, length),
    ] {
        let (pq, pk, pv) = (rows(nq), rows(nk), rows(nv));
        table.push(bad(
            name,
            want,
            Box::new(move |c| c.prefill(&pq, &pk, &pv, &mut vec![T::default(); no])),
        ));
    }
    // Non-finite values at the first and last index of every argument.
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for at in [0, D - 1] {
            let poison = |base: &[T]| {
                let mut p = base.to_vec();
                p[at] = t(x);
                p
            };
            let (pq, pk, pv) = (poison(&q), poison(&k), poison(&v));
            let (q2, k2, v2) = (q.clone(), k.clone(), v.clone());
            let tag = format!("{x} at {at}");
            {
                let (pk, v2) = (pk.clone(), v2.clone());
                table.push(bad(
                    format!("insert key {tag}"),
                    non_finite,
                    Box::new(move |c| c.insert(&pk, &v2).map(drop)),
                ));
            }
            {
                let (k2, pv) = (k2.clone(), pv.clone());
                table.push(bad(
                    format!("insert value {tag}"),
                    non_finite,
                    Box::new(move |c| c.insert(&k2, &pv).map(drop)),
                ));
            }
            {
                let pq = pq.clone();
                table.push(bad(
                    format!("attend query {tag}"),
                    non_finite,
                    Box::new(move |c| c.attend(&pq).map(drop)),
                ));
            }
            for arg in 0..3 {
                for doc in [false, true] {
                    let mut args = [q2.clone(), k2.clone(), v2.clone()];
                    args[arg] = [&pq, &pk, &pv][arg].clone();
                    table.push(bad(
                        format!("step (doc {doc}) arg {arg} {tag}"),
                        non_finite,
                        Box::new(move |c| {
                            if doc {
                                c.step_with(
                                    h2o_kv::StepOrder::AttendInsertEvict,
                                    &args[0],
                                    &args[1],
                                    &args[2],
                                )
                                .map(drop)
                            } else {
                                c.step(&args[0], &args[1], &args[2]).map(drop)
                            }
                        }),
                    ));
                }
                // Prefill of 2 rows, poison in the second row.
                let mut args = [rows(2 * D), rows(2 * D), rows(2 * D)];
                args[arg][D + at] = t(x);
                table.push(bad(
                    format!("prefill arg {arg} {tag}"),
                    non_finite,
                    Box::new(move |c| {
                        c.prefill(&args[0], &args[1], &args[2], &mut [T::default(); 2 * D])
                    }),
                ));
            }
        }
    }
    // Huge finite values: the logit overflows.
    for sign in [1.0, -1.0] {
        let huge = vec_of::<T>(D, |_| sign * T::HUGE);
        let plain = vec_of::<T>(D, |_| 1.0);
        let (h, p) = (huge.clone(), plain.clone());
        table.push(bad(
            format!("step huge q,k sign {sign}"),
            overflow,
            Box::new(move |c| c.step(&h, &h, &p).map(drop)),
        ));
        let (h, p) = (huge.clone(), plain.clone());
        table.push(bad(
            format!("prefill huge q,k sign {sign}"),
            overflow,
            Box::new(move |c| {
                let hh = [h.clone(), h.clone()].concat();
                let pp = [p.clone(), p.clone()].concat();
                c.prefill(&hh, &hh, &pp, &mut [T::default(); 2 * D])
            }),
        ));
        // Against resident keys (all ≥ 1): only bad when there are tokens.
        let h = vec_of::<T>(D, |_| sign * T::NEAR_MAX);
        let mut call = bad(
            format!("attend huge q sign {sign}"),
            overflow,
            Box::new(move |c| c.attend(&h).map(drop)),
        );
        call.needs_tokens = true;
        table.push(call);
        let (h, p) = (vec_of::<T>(D, |_| sign * T::NEAR_MAX), plain.clone());
        let mut call = bad(
            format!("step_document_order huge q sign {sign}"),
            overflow,
            Box::new(move |c| {
                c.step_with(h2o_kv::StepOrder::AttendInsertEvict, &h, &p, &p).map(drop)
            }),
        );
        call.needs_tokens = true;
        table.push(call);
    }
    table
}

/// Valid calls that must fail on a loaded cache (full at capacity, or an
/// evicting cache one over budget).
fn capacity_calls<T: Num>(full: bool) -> Vec<BadCall<T>> {
    let (q, k, v) = qkv::<T>(7, D);
    let mut table = Vec::new();
    let (k2, v2) = (k.clone(), v.clone());
    table.push(bad("insert", capacity, Box::new(move |c| c.insert(&k2, &v2).map(drop))));
    let (q2, k2, v2) = (q.clone(), k.clone(), v.clone());
    table.push(bad("step", capacity, Box::new(move |c| c.step(&q2, &k2, &v2).map(drop))));
    table.push(bad(
        "step_document_order",
        capacity,
        Box::new(move |c| c.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &v).map(drop)),
    ));
    if full {
        let (pq, pk, pv) = qkv::<T>(8, 3 * D);
        table.push(bad(
            "prefill past capacity",
            capacity,
            Box::new(move |c| c.prefill(&pq, &pk, &pv, &mut [T::default(); 3 * D])),
        ));
    }
    table
}

/// Runs one bad call on a prepared cache and checks error and state.
fn check_call<T: Num, P: SnapshotPolicy>(
    label: &str,
    make: &dyn Fn() -> Cache<T, P>,
    prep: Prep,
    bad: &BadCall<T>,
) -> usize {
    let mut c = make();
    prepare::<T>(&mut c, prep);
    if bad.needs_tokens && c.is_empty() {
        return 0;
    }
    let twin = c.clone();
    let before = dump(&c);
    let before_room = if c.policy_name() == "full" { c.capacity() - c.len() } else { usize::MAX };
    let err = match (bad.call)(&mut c) {
        Ok(()) => panic!("{label} {prep:?} {}: accepted bad input", bad.name),
        Err(e) => e,
    };
    // A loaded cache checks room before it attends.
    let room_first = prep == Prep::Loaded && bad.name.contains("huge") && capacity(&err)
        // A full cache without room for the 2-row prefill: two faults at once.
        || bad.name.starts_with("prefill") && capacity(&err) && before_room < 2;
    assert!((bad.want)(&err) || room_first, "{label} {prep:?} {}: wrong error {err:?}", bad.name);
    assert!(!err.to_string().is_empty());
    assert!(
        dump(&c) == before,
        "{label} {prep:?} {}: state changed by a failed call ({err})",
        bad.name
    );
    // The failed call left nothing behind: the same future as the twin.
    let mut twin = twin;
    if c.len() < c.capacity() {
        for s in 0..3 {
            let (q, k, v) = qkv::<T>(50 + s, D);
            if c.policy_name() == "full" && c.len() == c.capacity() {
                break;
            }
            let a = bits(c.step(&q, &k, &v).unwrap());
            let b = bits(twin.step(&q, &k, &v).unwrap());
            assert_eq!(a, b, "{label} {prep:?} {}: output after the failed call", bad.name);
        }
        assert!(dump(&c) == dump(&twin), "{label} {prep:?} {}: diverged later", bad.name);
    }
    1
}

fn check_policy<T: Num, P: SnapshotPolicy>(label: &str, make: &dyn Fn() -> Cache<T, P>) -> usize {
    let table = bad_calls::<T>();
    let mut n = 0;
    for prep in PREPS {
        for call in &table {
            n += check_call(label, make, prep, call);
        }
    }
    let full = make().policy_name() == "full";
    for call in &capacity_calls::<T>(full) {
        n += check_call(label, make, Prep::Loaded, call);
    }
    n
}

fn check_type<T: Num>() -> usize {
    let mut n = 0;
    n += check_policy::<T, _>("full", &|| FullCache::<T>::new(D, 6).unwrap());
    n += check_policy::<T, _>("recent", &|| RecentOnly::<T>::new(D, 4).unwrap());
    n += check_policy::<T, _>("heavy", &|| HeavyOnly::<T>::new(D, 4).unwrap());
    n += check_policy::<T, _>("h2o", &|| H2OCache::<T>::new(D, 2, 2).unwrap());
    n += check_policy::<T, _>("h2o keep-newer", &|| {
        Cache::with_policy(D, H2O::new(2, 1).unwrap().with_tie_rule(h2o_kv::TieRule::KeepNewer))
            .unwrap()
    });
    n += check_policy::<T, _>("h2o scale 1", &|| {
        H2OCache::<T>::new(D, 3, 1).unwrap().with_scale(1.0).unwrap()
    });
    for p in [
        AnyPolicy::from(Full::new(6).unwrap()),
        Recent::new(3).unwrap().into(),
        Heavy::new(3).unwrap().into(),
        H2O::new(1, 2).unwrap().into(),
    ] {
        n += check_policy::<T, AnyPolicy>(&format!("any {}", p.name()), &move || {
            Cache::with_policy(D, p).unwrap()
        });
    }
    n
}

#[test]
fn bad_calls_are_errors_and_change_nothing_f32() {
    let n = check_type::<f32>();
    eprintln!("f32: {n} bad calls checked");
    assert!(n > 3000, "{n} cases");
}

#[test]
fn bad_calls_are_errors_and_change_nothing_f64() {
    let n = check_type::<f64>();
    eprintln!("f64: {n} bad calls checked");
    assert!(n > 3000, "{n} cases");
}

/// A policy that breaks its contract: protects more tokens than it keeps.
#[derive(Debug, Clone)]
struct Oversplit;
impl EvictionPolicy for Oversplit {
    fn budget(&self) -> usize {
        2
    }
    fn evicts(&self) -> bool {
        true
    }
    fn recent_window(&self) -> usize {
        3
    }
    fn eviction_order(&self, a: &Candidate, b: &Candidate) -> Ordering {
        a.position.cmp(&b.position)
    }
    fn name(&self) -> &'static str {
        "oversplit"
    }
}

#[test]
fn bad_configurations_are_errors() {
    type R = Result<(), Error>;
    let big = MAX_BUDGET + 1;
    let cases: Vec<(&str, R, Error)> = vec![
        ("Full::new(0)", Full::new(0).map(drop), Error::ZeroBudget),
        ("Recent::new(0)", Recent::new(0).map(drop), Error::ZeroBudget),
        ("Heavy::new(0)", Heavy::new(0).map(drop), Error::ZeroBudget),
        ("H2O::new(0, 0)", H2O::new(0, 0).map(drop), Error::ZeroBudget),
        (
            "Full::new(big)",
            Full::new(big).map(drop),
            Error::BudgetTooLarge { budget: big, max: MAX_BUDGET },
        ),
        (
            "Recent::new(big)",
            Recent::new(big).map(drop),
            Error::BudgetTooLarge { budget: big, max: MAX_BUDGET },
        ),
        (
            "Heavy::new(big)",
            Heavy::new(big).map(drop),
            Error::BudgetTooLarge { budget: big, max: MAX_BUDGET },
        ),
        (
            "H2O::new(big, 0)",
            H2O::new(big, 0).map(drop),
            Error::BudgetTooLarge { budget: big, max: MAX_BUDGET },
        ),
        (
            "H2O::new(MAX, 1)",
            H2O::new(usize::MAX, 1).map(drop),
            Error::BudgetTooLarge { budget: usize::MAX, max: MAX_BUDGET },
        ),
        (
            "H2O fraction NaN",
            H2O::with_heavy_fraction(8, f64::NAN).map(drop),
            Error::InvalidHeavyFraction { fraction: f64::NAN },
        ),
        (
            "H2O fraction -0.1",
            H2O::with_heavy_fraction(8, -0.1).map(drop),
            Error::InvalidHeavyFraction { fraction: -0.1 },
        ),
        (
            "H2O fraction 1.5",
            H2O::with_heavy_fraction(8, 1.5).map(drop),
            Error::InvalidHeavyFraction { fraction: 1.5 },
        ),
        (
            "H2O fraction inf",
            H2O::with_heavy_fraction(8, f64::INFINITY).map(drop),
            Error::InvalidHeavyFraction { fraction: f64::INFINITY },
        ),
        ("H2O fraction budget 0", H2O::with_heavy_fraction(0, 0.5).map(drop), Error::ZeroBudget),
        ("FullCache d 0", FullCache::<f32>::new(0, 4).map(drop), Error::ZeroHeadDim),
        ("RecentOnly d 0", RecentOnly::<f64>::new(0, 4).map(drop), Error::ZeroHeadDim),
        ("HeavyOnly d 0", HeavyOnly::<f32>::new(0, 4).map(drop), Error::ZeroHeadDim),
        ("H2OCache d 0", H2OCache::<f32>::new(0, 2, 2).map(drop), Error::ZeroHeadDim),
        (
            "H2OCache d huge",
            H2OCache::<f32>::new(MAX_HEAD_DIM + 1, 2, 2).map(drop),
            Error::HeadDimTooLarge { head_dim: MAX_HEAD_DIM + 1, max: MAX_HEAD_DIM },
        ),
        (
            "H2OCache d MAX",
            H2OCache::<f32>::new(usize::MAX, 2, 2).map(drop),
            Error::HeadDimTooLarge { head_dim: usize::MAX, max: MAX_HEAD_DIM },
        ),
        ("FullCache budget 0", FullCache::<f32>::new(4, 0).map(drop), Error::ZeroBudget),
        ("H2OCache budget 0", H2OCache::<f64>::new(4, 0, 0).map(drop), Error::ZeroBudget),
        (
            "H2OCache fraction NaN",
            H2OCache::<f32>::with_heavy_fraction(4, 8, f64::NAN).map(drop),
            Error::InvalidHeavyFraction { fraction: f64::NAN },
        ),
        (
            "AnyPolicy d 0",
            Cache::<f32, AnyPolicy>::with_policy(0, Recent::new(2).unwrap().into()).map(drop),
            Error::ZeroHeadDim,
        ),
        (
            "custom oversplit policy",
            Cache::<f32, _>::with_policy(4, Oversplit).map(drop),
            Error::InvalidSplit { budget: 2, recent: 3 },
        ),
        (
            "scale 0",
            H2OCache::<f32>::new(4, 1, 1).unwrap().with_scale(0.0).map(drop),
            Error::InvalidScale { scale: 0.0 },
        ),
        (
            "scale -1",
            H2OCache::<f32>::new(4, 1, 1).unwrap().with_scale(-1.0).map(drop),
            Error::InvalidScale { scale: -1.0 },
        ),
        (
            "scale inf",
            H2OCache::<f32>::new(4, 1, 1).unwrap().with_scale(f64::INFINITY).map(drop),
            Error::InvalidScale { scale: f64::INFINITY },
        ),
        (
            "scale NaN",
            H2OCache::<f32>::new(4, 1, 1).unwrap().with_scale(f64::NAN).map(drop),
            Error::InvalidScale { scale: f64::NAN },
        ),
        (
            "f32 scale rounds to inf",
            H2OCache::<f32>::new(4, 1, 1).unwrap().with_scale(1e300).map(drop),
            Error::InvalidScale { scale: 1e300 },
        ),
        (
            "f32 scale rounds to 0",
            H2OCache::<f32>::new(4, 1, 1).unwrap().with_scale(1e-50).map(drop),
            Error::InvalidScale { scale: 1e-50 },
        ),
        (
            "layer 0 heads",
            LayerCache::<f32, _>::new(0, 1, 4, H2O::new(1, 1).unwrap()).map(drop),
            Error::InvalidHeadCounts { n_heads: 0, n_kv_heads: 1 },
        ),
        (
            "layer 0 kv heads",
            LayerCache::<f32, _>::new(4, 0, 4, H2O::new(1, 1).unwrap()).map(drop),
            Error::InvalidHeadCounts { n_heads: 4, n_kv_heads: 0 },
        ),
        (
            "layer 6/4 heads",
            LayerCache::<f32, _>::new(6, 4, 4, H2O::new(1, 1).unwrap()).map(drop),
            Error::InvalidHeadCounts { n_heads: 6, n_kv_heads: 4 },
        ),
        (
            "layer 2/4 heads",
            LayerCache::<f32, _>::new(2, 4, 4, H2O::new(1, 1).unwrap()).map(drop),
            Error::InvalidHeadCounts { n_heads: 2, n_kv_heads: 4 },
        ),
        (
            "layer d 0",
            LayerCache::<f32, _>::new(4, 2, 0, Full::new(3).unwrap()).map(drop),
            Error::ZeroHeadDim,
        ),
        (
            "layer scale 0",
            LayerCache::<f32, _>::new(4, 2, 4, Full::new(3).unwrap())
                .unwrap()
                .with_scale(0.0)
                .map(drop),
            Error::InvalidScale { scale: 0.0 },
        ),
    ];
    for (name, got, want) in cases {
        let got = got.expect_err(name);
        // NaN fields never compare equal: compare the variant and message.
        assert_eq!(got.to_string(), want.to_string(), "{name}");
        assert_eq!(core::mem::discriminant(&got), core::mem::discriminant(&want), "{name}");
    }
}

#[test]
fn absurd_allocations_fail_cleanly() {
    // 2^16 × (2^26 + 1) × 2 × 8 bytes ≈ 64 TiB: more than any machine; the
    // constructor must report it rather than abort.
    let err = FullCache::<f64>::new(MAX_HEAD_DIM, MAX_BUDGET).unwrap_err();
    assert!(matches!(err, Error::AllocationFailed { .. }), "{err:?}");
    let err = LayerCache::<f64, _>::new(
        64,
        64,
        MAX_HEAD_DIM,
        H2O::new(MAX_BUDGET / 2, MAX_BUDGET / 2).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::AllocationFailed { .. }), "{err:?}");
}

/// Layer calls with wrong head counts or one bad head: nothing changes in any head.
fn check_layer<T: Num, P: SnapshotPolicy>(label: &str, policy: P) {
    let (h, kv) = (4, 2);
    let make = || LayerCache::<T, P>::new(h, kv, D, policy.clone()).unwrap();
    let (q, k, v) = (qkv::<T>(1, h * D).0, qkv::<T>(1, kv * D).1, qkv::<T>(1, kv * D).2);
    type LCall<T, P> = Box<dyn Fn(&mut LayerCache<T, P>) -> Result<(), Error>>;
    let mut cases: Vec<(String, LCall<T, P>, Want)> = Vec::new();
    // The usual mix-up: query sized for the KV heads, keys for the query heads.
    let (qs, ks, vs) = (qkv::<T>(2, kv * D).0, qkv::<T>(2, h * D).1, qkv::<T>(2, h * D).2);
    {
        let (qs, k, v) = (qs.clone(), k.clone(), v.clone());
        cases.push((
            "step q of n_kv_heads".into(),
            Box::new(move |l| l.step(&qs, &k, &v).map(drop)),
            length,
        ));
    }
    {
        let (q, ks, v) = (q.clone(), ks.clone(), v.clone());
        cases.push((
            "step k of n_heads".into(),
            Box::new(move |l| l.step(&q, &ks, &v).map(drop)),
            length,
        ));
    }
    {
        let (q, k, vs) = (q.clone(), k.clone(), vs.clone());
        cases.push((
            "step_document_order v of n_heads".into(),
            Box::new(move |l| {
                l.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &vs).map(drop)
            }),
            length,
        ));
    }
    {
        let qs = qs.clone();
        cases.push((
            "attend q of n_kv_heads".into(),
            Box::new(move |l| l.attend(&qs).map(drop)),
            length,
        ));
    }
    {
        let (ks, v) = (ks.clone(), v.clone());
        cases.push((
            "insert k of n_heads".into(),
            Box::new(move |l| l.insert(&ks, &v).map(drop)),
            length,
        ));
    }
    {
        let (q, k, v) = (q.clone(), k.clone(), v.clone());
        cases.push((
            "prefill out of n_kv_heads".into(),
            Box::new(move |l| l.prefill(&q, &k, &v, &mut vec![T::default(); kv * D])),
            length,
        ));
    }
    {
        let (qs, k, v) = (qs.clone(), k.clone(), v.clone());
        cases.push((
            "prefill q of n_kv_heads".into(),
            Box::new(move |l| l.prefill(&qs, &k, &v, &mut vec![T::default(); h * D])),
            length,
        ));
    }
    {
        let (q, k) = (q.clone(), k.clone());
        let vr = vec![T::default(); kv * D + 1];
        cases.push((
            "prefill ragged values".into(),
            Box::new(move |l| l.prefill(&q, &k, &vr, &mut vec![T::default(); h * D])),
            length,
        ));
    }
    {
        let (q, v) = (q.clone(), v.clone());
        let kr = vec![T::default(); kv * D + 1];
        cases.push((
            "prefill ragged keys".into(),
            Box::new(move |l| l.prefill(&q, &kr, &v, &mut vec![T::default(); h * D])),
            ragged,
        ));
    }
    // Poison only in the last head's part: head 0 must not change either.
    for x in [f64::NAN, f64::INFINITY] {
        let mut pq = q.clone();
        pq[h * D - 1] = t(x);
        let mut pk = k.clone();
        pk[kv * D - 1] = t(x);
        {
            let (pq, k, v) = (pq.clone(), k.clone(), v.clone());
            cases.push((
                format!("step q last head {x}"),
                Box::new(move |l| l.step(&pq, &k, &v).map(drop)),
                non_finite,
            ));
        }
        {
            let (pk1, v1) = (pk.clone(), v.clone());
            cases.push((
                format!("insert k last head {x}"),
                Box::new(move |l| l.insert(&pk1, &v1).map(drop)),
                non_finite,
            ));
            let (q2, pk2, v2) = (q.clone(), pk.clone(), v.clone());
            cases.push((
                format!("prefill k last head {x}"),
                Box::new(move |l| l.prefill(&q2, &pk2, &v2, &mut vec![T::default(); h * D])),
                non_finite,
            ));
        }
        {
            let pq = pq.clone();
            cases.push((
                format!("attend q last head {x}"),
                Box::new(move |l| l.attend(&pq).map(drop)),
                non_finite,
            ));
        }
    }
    // Overflow in the last KV head only: head 0 attends fine first.
    {
        let g = h / kv;
        let mut oq = q.clone();
        oq[(kv - 1) * g * D..].iter_mut().for_each(|x| *x = t(T::NEAR_MAX));
        let mut ok = k.clone();
        ok[(kv - 1) * D..].iter_mut().for_each(|x| *x = t(T::HUGE));
        let (oq2, ok2, v2) = (oq.clone(), ok.clone(), v.clone());
        cases.push((
            "step overflow in last head".into(),
            Box::new(move |l| l.step(&oq2, &ok2, &v2).map(drop)),
            overflow,
        ));
        let (oq2, ok2, v2) = (oq.clone(), ok.clone(), v.clone());
        cases.push((
            "prefill overflow in last head".into(),
            Box::new(move |l| l.prefill(&oq2, &ok2, &v2, &mut vec![T::default(); h * D])),
            overflow,
        ));
        let oq2 = oq.clone();
        cases.push((
            "attend overflow in last head".into(),
            Box::new(move |l| l.attend(&oq2).map(drop)),
            overflow,
        ));
        let (oq2, v2) = (oq.clone(), v.clone());
        let k2 = k.clone();
        cases.push((
            "step_document_order overflow in last head".into(),
            Box::new(move |l| {
                l.step_with(h2o_kv::StepOrder::AttendInsertEvict, &oq2, &k2, &v2).map(drop)
            }),
            overflow,
        ));
    }
    for warm in [0usize, 3] {
        for reset in [false, true] {
            for (name, call, want) in &cases {
                let mut l = make();
                for s in 0..warm {
                    let (q, k, v) =
                        (qkv::<T>(s, h * D).0, qkv::<T>(s, kv * D).1, qkv::<T>(s, kv * D).2);
                    l.step(&q, &k, &v).unwrap();
                }
                if reset {
                    l.reset();
                }
                if l.is_empty() && name.starts_with("attend overflow")
                    || l.is_empty() && name.starts_with("step_document_order overflow")
                {
                    continue;
                }
                let before = layer_dump(&l);
                let twin = l.clone();
                let err = call(&mut l).expect_err(name);
                assert!(want(&err), "{label} warm {warm} reset {reset} {name}: {err:?}");
                assert!(
                    l.snapshot() == twin.snapshot(),
                    "{label} warm {warm} reset {reset} {name}: snapshot changed ({err})"
                );
                assert!(
                    layer_dump(&l) == before,
                    "{label} warm {warm} reset {reset} {name}: state changed ({err})"
                );
                let mut twin = twin;
                let (q, k, v) =
                    (qkv::<T>(9, h * D).0, qkv::<T>(9, kv * D).1, qkv::<T>(9, kv * D).2);
                assert_eq!(bits(l.step(&q, &k, &v).unwrap()), bits(twin.step(&q, &k, &v).unwrap()));
                assert!(layer_dump(&l) == layer_dump(&twin), "{label} {name}: diverged later");
            }
        }
    }
    // A full layer at capacity refuses one more token in every call.
    if policy.to_any() == AnyPolicy::from(Full::new(policy.budget()).unwrap()) {
        let mut l = make();
        for s in 0..policy.budget() {
            let (q, k, v) = (qkv::<T>(s, h * D).0, qkv::<T>(s, kv * D).1, qkv::<T>(s, kv * D).2);
            l.step(&q, &k, &v).unwrap();
        }
        let before = layer_dump(&l);
        assert!(capacity(&l.step(&q, &k, &v).unwrap_err()));
        assert!(capacity(
            &l.step_with(h2o_kv::StepOrder::AttendInsertEvict, &q, &k, &v).unwrap_err()
        ));
        assert!(capacity(&l.insert(&k, &v).unwrap_err()));
        assert!(capacity(&l.prefill(&q, &k, &v, &mut vec![T::default(); h * D]).unwrap_err()));
        assert!(layer_dump(&l) == before, "{label}: full layer changed");
    }
}

#[test]
fn layer_bad_calls_change_no_head() {
    check_layer::<f32, _>("full", Full::new(5).unwrap());
    check_layer::<f32, _>("h2o", H2O::new(2, 2).unwrap());
    check_layer::<f64, _>("heavy", Heavy::new(3).unwrap());
    check_layer::<f64, _>("recent", Recent::new(3).unwrap());
    check_layer::<f32, AnyPolicy>("any h2o", H2O::new(1, 2).unwrap().into());
}

/// Subnormal inputs are valid: every call takes them and stays finite.
fn check_subnormals<T: Num, P: SnapshotPolicy>(make: impl Fn() -> Cache<T, P>) {
    let s = T::SUBNORMAL;
    let sub = vec_of::<T>(D, |j| s * (1 + j) as f64);
    assert!(sub.iter().all(|x| x.to_f64() != 0.0 && x.to_f64().abs() < 1e-37), "not subnormal");
    let (q, k, v) = qkv::<T>(3, D);
    for (arg, doc) in [(0, false), (1, false), (2, false), (0, true), (1, true), (2, true)] {
        let mut c = make();
        for s in 0..3 {
            let (q, k, v) = qkv::<T>(s, D);
            c.step(&q, &k, &v).unwrap();
        }
        let mut args = [q.clone(), k.clone(), v.clone()];
        args[arg] = sub.clone();
        let out = if doc {
            c.step_with(h2o_kv::StepOrder::AttendInsertEvict, &args[0], &args[1], &args[2])
        } else {
            c.step(&args[0], &args[1], &args[2])
        }
        .unwrap_or_else(|e| panic!("subnormal arg {arg}: {e}"));
        assert!(out.iter().all(|x| x.is_finite()));
        assert!(c.tokens().all(|t| t.score.is_finite()));
        assert_eq!(c.next_position(), 4);
    }
    let mut c = make();
    c.insert(&sub, &sub).unwrap();
    // One token: all weight on it, so the output is its (subnormal) value, exactly.
    assert_eq!(bits(c.attend(&sub).unwrap()), bits(&sub));
    let mut out = vec![T::default(); 2 * D];
    let rows = [sub.clone(), sub.clone()].concat();
    c.prefill(&rows, &rows, &rows, &mut out).unwrap();
    assert!(out.iter().all(|x| x.is_finite()));
}

#[test]
fn subnormal_inputs_work() {
    check_subnormals(|| FullCache::<f32>::new(D, 8).unwrap());
    check_subnormals(|| RecentOnly::<f32>::new(D, 3).unwrap());
    check_subnormals(|| HeavyOnly::<f64>::new(D, 3).unwrap());
    check_subnormals(|| H2OCache::<f64>::new(D, 1, 2).unwrap());
    check_subnormals(|| H2OCache::<f32>::new(D, 2, 1).unwrap());
    check_subnormals(|| {
        Cache::<f64, AnyPolicy>::with_policy(D, Heavy::new(2).unwrap().into()).unwrap()
    });
}
