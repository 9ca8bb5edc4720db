//! Prefill: a chunk of `P` tokens attended causally in one call, then one
//! eviction (DESIGN §2; the authors' forward pass with `q_len = P`).
//!
//! Row `i` of the chunk sees every resident token and chunk tokens `0..=i`.
//! Each resident token gains the column sum of its weights over the `P` rows;
//! each chunk token `j` starts with its own column sum `Σ_{i ≥ j} w[i][j]`.
//! If the cache then holds more than its budget, it keeps the newest
//! `recent_window` tokens and, among the others, the best by the policy's
//! order, evicting the rest at once.
//!
//! The chunk's keys and values are read from the caller's slices while the
//! attention runs; only kept tokens are copied into slots. The attention runs
//! on tiles of query tokens with the one-pass kernel (online softmax), so its
//! scratch is a tile's logits, `[tile × (resident + P)]`, never `[P × P]`. [`plan`] computes
//! everything into scratch and changes nothing; [`commit`] cannot fail.

use smallvec::SmallVec;

use crate::cache::Cache;
use crate::element::{Accumulator, Element, first_non_finite};
use crate::error::{Error, Result};
use crate::kernels::{self, OnlineSoftmax};
use crate::policy::{Candidate, EvictionPolicy};
use crate::store::SlotState;
use crate::store::try_vec;
use num_traits::{Float, Zero};

/// Query tokens per tile of the prefill's attention.
const TILE: usize = 16;

/// The result of a prefill's attention, not yet applied to the cache.
#[derive(Debug)]
pub(crate) struct Plan<T> {
    /// Chunk length in tokens.
    tokens: usize,
    /// `[high_water]`: score gained by each resident slot.
    resident_gain: Vec<f64>,
    /// `[P]`: score of each chunk token.
    chunk_scores: Vec<f64>,
    /// `[P × g × head_dim]`: attention outputs.
    pub(crate) outputs: Vec<T>,
}

/// Checks the shapes and values, then runs the causal attention of the chunk.
///
/// `queries` is `[P × g × head_dim]` (token-major, then the `g` queries that
/// share this head); `keys` and `values` are `[P × head_dim]`.
pub(crate) fn plan<T: Element, P: EvictionPolicy>(
    cache: &Cache<T, P>,
    group: usize,
    queries: &[T],
    keys: &[T],
    values: &[T],
) -> Result<Plan<T>> {
    let d = cache.store().head_dim();
    if keys.len() % d != 0 {
        return Err(Error::RaggedRows { what: "keys", len: keys.len(), row_len: d });
    }
    let p = keys.len() / d;
    let row = group * d;
    for (what, x, len) in [("values", values, p * d), ("queries", queries, p * row)] {
        if x.len() != len {
            return Err(Error::LengthMismatch { what, expected: len, got: x.len() });
        }
    }
    for (what, x) in [("queries", queries), ("keys", keys), ("values", values)] {
        if let Some((index, value)) = first_non_finite(x) {
            return Err(Error::NonFinite { what, index, value });
        }
    }
    if !cache.policy().evicts() {
        cache.check_room(p)?;
    }

    let store = cache.store();
    let hw = store.high_water();
    let width = hw + p;
    let zero = T::Acc::zero();
    // Tiles of `TILE` query tokens: each tile streams the key/value rows it
    // sees once for all its queries, and the scratch is `[TILE·g × width]`
    // logits, not `[P × P]`.
    let tq = TILE.min(p) * group;
    let mut logits = try_vec(tq * width, zero)?;
    let mut weights = try_vec(width, zero)?;
    let mut acc = try_vec(tq * d, zero)?;
    let mut state = try_vec(tq, OnlineSoftmax::new())?;
    let mut plan = Plan {
        tokens: p,
        resident_gain: try_vec(hw, 0.0)?,
        chunk_scores: try_vec(p, 0.0)?,
        outputs: try_vec(p * row, T::default())?,
    };
    let scale = cache.scale_acc();
    let free = |s: usize| store.state(s) == SlotState::Free;
    for i0 in (0..p).step_by(TILE) {
        let i1 = (i0 + TILE).min(p);
        let nq = (i1 - i0) * group;
        let qs = &queries[i0 * row..i1 * row];
        let (acc, state) = (&mut acc[..nq * d], &mut state[..nq]);
        acc.iter_mut().for_each(|x| *x = zero);
        state.iter_mut().for_each(|x| *x = OnlineSoftmax::new());
        // Resident tokens, one run of live slots at a time; free slots get
        // logit −∞ (weight 0).
        let mut s = 0;
        while s < hw {
            if free(s) {
                (0..nq).for_each(|q| logits[q * width + s] = T::Acc::neg_infinity());
                s += 1;
                continue;
            }
            let e = (s..hw).find(|&x| free(x)).unwrap_or(hw);
            let (k, v) = (&store.keys(e)[s * d..], &store.values(e)[s * d..]);
            kernels::online_attention(acc, state, &mut logits[s..], width, qs, k, v, d, scale);
            s = e;
        }
        // Chunk tokens before the tile: seen by every query of the tile.
        let (k, v) = (&keys[..i0 * d], &values[..i0 * d]);
        kernels::online_attention(acc, state, &mut logits[hw..], width, qs, k, v, d, scale);
        // The tile's own tokens: token `i` sees `i0..=i`.
        for i in i0..i1 {
            let a = (i - i0) * group;
            let (k, v) = (&keys[i0 * d..(i + 1) * d], &values[i0 * d..(i + 1) * d]);
            kernels::online_attention(
                &mut acc[a * d..(a + group) * d],
                &mut state[a..a + group],
                &mut logits[a * width + hw + i0..],
                width,
                &queries[i * row..][..row],
                k,
                v,
                d,
                scale,
            );
        }
        kernels::finish_online(acc, state, d);
        for i in i0..i1 {
            let seen = hw + i + 1;
            for q in 0..group {
                let l = &logits[((i - i0) * group + q) * width..][..seen];
                if l.iter().enumerate().any(|(s, x)| !x.is_finite() && !(s < hw && free(s))) {
                    return Err(Error::AttentionOverflow { what: "logit" });
                }
                let w = &mut weights[..seen];
                w.copy_from_slice(l);
                kernels::softmax_in_place(w);
                for (gain, x) in plan.resident_gain.iter_mut().zip(&w[..hw]) {
                    *gain += x.widen();
                }
                for (score, x) in plan.chunk_scores.iter_mut().zip(&w[hw..]) {
                    *score += x.widen();
                }
            }
            let a = (i - i0) * row;
            for (o, x) in plan.outputs[i * row..][..row].iter_mut().zip(&acc[a..][..row]) {
                if !x.is_finite() {
                    return Err(Error::AttentionOverflow { what: "output" });
                }
                *o = T::from_acc(*x);
            }
        }
    }
    Ok(plan)
}

/// Where a token of the prefill's selection lives.
#[derive(Debug, Clone, Copy)]
enum Loc {
    Slot(usize),
    Chunk(usize),
}

/// Applies a [`plan`]: adds the resident gains, evicts once, stores the kept
/// chunk tokens and rebuilds the recent window.
pub(crate) fn commit<T: Element, P: EvictionPolicy>(
    cache: &mut Cache<T, P>,
    plan: &Plan<T>,
    keys: &[T],
    values: &[T],
) {
    if plan.tokens == 0 {
        // An empty prefill is a no-op (documented): no eviction, and the
        // last call's evicted positions stay as they were.
        return;
    }
    cache.invalidate_attention();
    let parts = cache.parts_mut();
    let (store, scores) = (parts.store, parts.scores);
    let d = store.head_dim();
    let first = *parts.next_position;
    for (s, gain) in plan.resident_gain.iter().enumerate() {
        scores[s] += gain;
    }
    parts.last_evicted.clear();
    let n = store.len() + plan.tokens;
    let budget = parts.policy.budget();
    let place = |store: &mut crate::store::SlotStore<T>, scores: &mut [f64], j: usize| {
        let slot = store.vacant_slot().expect("kept tokens fit in the store");
        store.write_rows(slot, &keys[j * d..][..d], &values[j * d..][..d]);
        store.occupy(slot, first + j as u64);
        scores[slot] = plan.chunk_scores[j];
        slot
    };
    if !parts.policy.evicts() || n <= budget {
        for j in 0..plan.tokens {
            let slot = place(store, scores, j);
            store.push_recent(slot);
        }
    } else {
        // Every token, oldest first: residents (by position), then the chunk.
        let mut all: Vec<(Candidate, Loc)> = Vec::with_capacity(n);
        for (s, &state) in store.states().iter().enumerate() {
            if state != SlotState::Free {
                all.push((
                    Candidate { position: store.position(s), score: scores[s] },
                    Loc::Slot(s),
                ));
            }
        }
        all.sort_unstable_by_key(|(c, _)| c.position);
        for j in 0..plan.tokens {
            let c = Candidate { position: first + j as u64, score: plan.chunk_scores[j] };
            all.push((c, Loc::Chunk(j)));
        }
        let window = parts.policy.recent_window().min(n);
        let (candidates, recent) = all.split_at_mut(n - window);
        candidates.sort_by(|a, b| parts.policy.eviction_order(&a.0, &b.0));
        let (evicted, kept) = candidates.split_at_mut(n - budget);

        store.clear_recent();
        let mut evicted_positions: SmallVec<[u64; 2]> = SmallVec::new();
        for (c, loc) in evicted.iter() {
            if let Loc::Slot(s) = *loc {
                store.release(s);
            }
            evicted_positions.push(c.position);
        }
        kept.sort_unstable_by_key(|(c, _)| c.position);
        for (_, loc) in kept.iter_mut().chain(recent.iter_mut()) {
            if let Loc::Chunk(j) = *loc {
                *loc = Loc::Slot(place(store, scores, j));
            }
        }
        for (_, loc) in recent.iter() {
            if let Loc::Slot(s) = *loc {
                store.push_recent(s);
            }
        }
        evicted_positions.sort_unstable();
        *parts.last_evicted = evicted_positions;
    }
    *parts.next_position = first + plan.tokens as u64;
}

#[cfg(test)]
mod tests {
    use crate::{FullCache, H2OCache, KvCache};

    #[test]
    fn prefill_equals_inserts_and_attends_for_a_full_cache() {
        // Without eviction, a prefill's outputs equal decoding the same tokens
        // one by one in transformer order.
        let d = 3;
        let p = 5;
        let x = |i: usize| ((i * 7 % 11) as f64 - 5.0) / 4.0;
        let q: Vec<f64> = (0..p * d).map(|i| x(i + 1)).collect();
        let k: Vec<f64> = (0..p * d).map(|i| x(i + 3)).collect();
        let v: Vec<f64> = (0..p * d).map(|i| x(i + 5)).collect();
        let mut a = FullCache::<f64>::new(d, 8).unwrap();
        let mut out = vec![0.0; p * d];
        a.prefill(&q, &k, &v, &mut out).unwrap();
        let mut b = FullCache::<f64>::new(d, 8).unwrap();
        for i in 0..p {
            let o = b.step(&q[i * d..][..d], &k[i * d..][..d], &v[i * d..][..d]).unwrap();
            for j in 0..d {
                assert!((o[j] - out[i * d + j]).abs() < 1e-12);
            }
        }
        for (ta, tb) in a.tokens().zip(b.tokens()) {
            assert_eq!(ta.position, tb.position);
            assert!((ta.score - tb.score).abs() < 1e-12);
        }
    }

    #[test]
    fn prefill_over_budget_keeps_exactly_the_budget() {
        let d = 2;
        let p = 12;
        let k: Vec<f32> = (0..p * d).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut c = H2OCache::<f32>::new(d, 3, 5).unwrap();
        let mut out = vec![0.0; p * d];
        c.prefill(&k, &k, &k, &mut out).unwrap();
        let kept = c.resident_positions();
        assert_eq!(kept.len(), 8);
        assert!(kept.ends_with(&[7, 8, 9, 10, 11]));
        assert_eq!(c.last_evicted().len(), 4);
        assert_eq!(c.next_position(), 12);
    }
}
