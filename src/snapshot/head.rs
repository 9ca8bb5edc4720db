//! One head's state: written from a `Cache`, read back and checked against
//! every layout the cache could have reached, then applied to a fresh cache.
//! A `Cache` snapshot holds one head; a layer snapshot one per KV head.

use super::SnapshotElement;
use super::codec::{Reader, invalid, put_f64, put_u64, put_usize};
use super::policy::{SnapshotPolicy, get_policy, put_policy};
use crate::cache::Cache;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::policy::{AnyPolicy, EvictionPolicy};
use crate::store::SlotState;

/// One head's state, read and checked, not yet applied to a cache.
pub(super) struct HeadState<T> {
    pub(super) policy: AnyPolicy,
    pub(super) head_dim: usize,
    pub(super) scale: f64,
    pub(super) next_position: u64,
    high_water: usize,
    /// `[high_water]`.
    states: Vec<SlotState>,
    /// Occupied slots in slot order: (slot, position, score).
    pub(super) tokens: Vec<(usize, u64, f64)>,
    /// `[tokens × head_dim]` each, in the order of `tokens`.
    keys: Vec<T>,
    values: Vec<T>,
    free: Vec<usize>,
    recent: Vec<usize>,
    last_evicted: Vec<u64>,
}

/// Appends the head's fields (format in the module docs).
pub(super) fn put_head<T: SnapshotElement, P: SnapshotPolicy>(
    out: &mut Vec<u8>,
    cache: &Cache<T, P>,
) {
    let store = cache.store();
    let d = store.head_dim();
    put_policy(out, &cache.policy().to_any());
    put_usize(out, d);
    put_f64(out, cache.scale());
    put_u64(out, cache.next_position());
    put_usize(out, store.slots());
    let hw = store.high_water();
    put_usize(out, hw);
    out.extend(store.states().iter().map(|s| match s {
        SlotState::Free => 0u8,
        SlotState::Candidate => 1,
        SlotState::Recent => 2,
    }));
    // `tokens()` yields the occupied slots in slot order.
    let occupied = (0..hw).filter(|&s| store.state(s) != SlotState::Free);
    let (keys, values) = (store.keys(hw), store.values(hw));
    for (s, token) in occupied.zip(cache.tokens()) {
        put_u64(out, token.position);
        put_f64(out, token.score);
        keys[s * d..][..d].iter().for_each(|x| x.put(out));
        values[s * d..][..d].iter().for_each(|x| x.put(out));
    }
    put_usize(out, store.free_slots().len());
    store.free_slots().iter().for_each(|&s| put_usize(out, s));
    put_usize(out, store.recent().count());
    store.recent().for_each(|s| put_usize(out, s));
    put_usize(out, cache.last_evicted().len());
    cache.last_evicted().iter().for_each(|&p| put_u64(out, p));
}

/// Reads one head, checking every field as it goes and then the layout.
pub(super) fn get_head<T: SnapshotElement>(r: &mut Reader<'_>) -> Result<HeadState<T>> {
    let policy = get_policy(r)?;
    let head_dim = r.usize()?;
    if head_dim == 0 || head_dim > crate::MAX_HEAD_DIM {
        return Err(invalid("head_dim out of range"));
    }
    let scale = r.f64()?;
    // The scale is stored widened from the accumulator type: it must narrow back exactly.
    let narrow = <T::Acc as crate::Accumulator>::narrow(scale);
    if !(scale.is_finite() && scale > 0.0)
        || <T::Acc as crate::Accumulator>::widen(narrow).to_bits() != scale.to_bits()
    {
        return Err(invalid("scale not finite, positive and exact in the accumulator type"));
    }
    let next_position = r.u64()?;
    let slots = r.usize()?;
    let budget = policy.budget();
    if slots != if policy.evicts() { budget + 1 } else { budget } {
        return Err(invalid("slot count does not match the policy"));
    }
    let high_water = r.usize()?;
    if high_water > slots {
        return Err(invalid("high-water mark above the slot count"));
    }
    let states = r
        .take(high_water)?
        .iter()
        .map(|&b| match b {
            0 => Ok(SlotState::Free),
            1 => Ok(SlotState::Candidate),
            2 => Ok(SlotState::Recent),
            _ => Err(invalid("unknown slot state")),
        })
        .collect::<Result<Vec<_>>>()?;
    let occupied: Vec<usize> = (0..high_water).filter(|&s| states[s] != SlotState::Free).collect();
    let row_bytes = 16 + 2 * head_dim * T::BYTES;
    if occupied.len().checked_mul(row_bytes).is_none_or(|b| b > r.remaining()) {
        return Err(invalid("payload shorter than its token rows"));
    }
    let mut tokens = Vec::with_capacity(occupied.len());
    let mut keys = Vec::with_capacity(occupied.len() * head_dim);
    let mut values = Vec::with_capacity(occupied.len() * head_dim);
    for &s in &occupied {
        let (position, score) = (r.u64()?, r.f64()?);
        if position >= next_position {
            return Err(invalid("a resident position is not below the next position"));
        }
        if !(score.is_finite() && score >= 0.0) {
            return Err(invalid("a score is negative or not finite"));
        }
        tokens.push((s, position, score));
        for buf in [&mut keys, &mut values] {
            for chunk in r.take(head_dim * T::BYTES)?.chunks_exact(T::BYTES) {
                let x = T::get(chunk);
                if !x.is_finite() {
                    return Err(invalid("a key or value is not finite"));
                }
                buf.push(x);
            }
        }
    }
    let free = r.slot_list()?;
    let recent = r.slot_list()?;
    let n = r.count(8)?;
    let last_evicted = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
    let head = HeadState {
        policy,
        head_dim,
        scale,
        next_position,
        high_water,
        states,
        tokens,
        keys,
        values,
        free,
        recent,
        last_evicted,
    };
    head.check_layout()?;
    Ok(head)
}

impl<T> HeadState<T> {
    /// Checks that the layout is one the cache could have reached.
    fn check_layout(&self) -> Result<()> {
        let HeadState { policy, states, tokens, free, recent, last_evicted, .. } = self;
        let (next_position, high_water) = (self.next_position, self.high_water);
        let budget = policy.budget();
        let mut positions: Vec<u64> = tokens.iter().map(|t| t.1).collect();
        positions.sort_unstable();
        if positions.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("two resident tokens share a position"));
        }
        let n_free = states.iter().filter(|&&s| s == SlotState::Free).count();
        let mut seen = vec![false; high_water];
        for &s in free {
            if s >= high_water
                || states[s] != SlotState::Free
                || std::mem::replace(&mut seen[s], true)
            {
                return Err(invalid("free stack does not match the free slots"));
            }
        }
        if free.len() != n_free {
            return Err(invalid("free stack does not match the free slots"));
        }
        let window = policy.recent_window();
        let n_recent = states.iter().filter(|&&s| s == SlotState::Recent).count();
        if recent.len() != window.min(tokens.len()) || recent.len() != n_recent {
            return Err(invalid("recent ring does not match the recent slots"));
        }
        let position_of = |s: usize| tokens.iter().find(|t| t.0 == s).map(|t| t.1);
        let mut previous = None;
        for &s in recent {
            if s >= high_water || states[s] != SlotState::Recent {
                return Err(invalid("recent ring does not match the recent slots"));
            }
            let p = position_of(s);
            if p <= previous {
                return Err(invalid("recent ring is not oldest first"));
            }
            previous = p;
        }
        let oldest_recent = recent.first().and_then(|&s| position_of(s));
        let newest_candidate =
            tokens.iter().filter(|t| states[t.0] == SlotState::Candidate).map(|t| t.1).max();
        if let (Some(r), Some(c)) = (oldest_recent, newest_candidate) {
            if c > r {
                return Err(invalid("a candidate is newer than the recent window"));
            }
        }
        if tokens.len() > budget + usize::from(policy.evicts()) {
            return Err(invalid("more tokens than the store holds"));
        }
        if last_evicted.windows(2).any(|w| w[0] >= w[1])
            || last_evicted
                .iter()
                .any(|&p| p >= next_position || positions.binary_search(&p).is_ok())
        {
            return Err(invalid("last evicted positions are not ascending, past or evicted"));
        }
        Ok(())
    }
}

/// Rebuilds a checked head state into a freshly constructed cache of the same
/// policy, `head_dim` and scale.
pub(super) fn apply<T: Element, P: EvictionPolicy>(cache: &mut Cache<T, P>, head: &HeadState<T>) {
    let d = head.head_dim;
    let parts = cache.parts_mut();
    let store = parts.store;
    // Occupy every slot below the mark in order (a fresh store hands them
    // out from the mark), then free the free ones in stack order, then
    // rebuild the recent ring oldest first.
    let mut rows = head.tokens.iter().enumerate().peekable();
    for s in 0..head.high_water {
        match rows.next_if(|(_, t)| t.0 == s) {
            Some((i, &(_, position, score))) => {
                store.write_rows(s, &head.keys[i * d..][..d], &head.values[i * d..][..d]);
                store.occupy(s, position);
                parts.scores[s] = score;
            }
            None => store.occupy(s, 0),
        }
    }
    for &s in &head.free {
        store.release(s);
    }
    for &s in &head.recent {
        store.push_recent(s);
    }
    debug_assert!(store.states().iter().eq(head.states.iter()));
    *parts.next_position = head.next_position;
    parts.last_evicted.clear();
    parts.last_evicted.extend_from_slice(&head.last_evicted);
}

/// Passes allocation failures through; any other constructor error means the
/// snapshot's configuration is impossible.
pub(super) fn config_error(e: Error) -> Error {
    match e {
        Error::AllocationFailed { .. } => e,
        _ => invalid("configuration rejected by the constructor"),
    }
}
