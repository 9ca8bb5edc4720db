//! One head's state: written from a `Cache`, read back with every field
//! checked, then applied to a fresh cache, whose slot table checks the
//! layout against its own invariants (stated once, in the planner's slot
//! table). A `Cache` snapshot holds one head; a layer snapshot one per KV
//! head.

use super::SnapshotElement;
use super::codec::{Reader, invalid, put_f64, put_u64, put_usize};
use super::policy::{SnapshotPolicy, get_policy, put_policy};
use crate::cache::Cache;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::planner::SlotState;
use crate::policy::{AnyPolicy, EvictionPolicy};

/// One head's state, read and checked, not yet applied to a cache.
pub(super) struct HeadState<T> {
    pub(super) policy: AnyPolicy,
    pub(super) head_dim: usize,
    pub(super) scale: f64,
    pub(super) next_position: u64,
    /// `[high_water]`.
    states: Vec<SlotState>,
    /// Occupied slots in slot order: (slot, position, score).
    pub(super) tokens: Vec<(usize, u64, f64)>,
    /// `(last_weight, attended)` of each token, in the order of `tokens`;
    /// empty for a version-1 snapshot.
    stats: Vec<(f64, u64)>,
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
    let slots = cache.planner().slots();
    put_policy(out, &cache.policy().to_any());
    put_usize(out, cache.head_dim());
    put_f64(out, cache.scale());
    put_u64(out, cache.next_position());
    put_usize(out, slots.slots());
    put_usize(out, slots.high_water());
    out.extend(slots.states().iter().map(|s| match s {
        SlotState::Free => 0u8,
        SlotState::Candidate => 1,
        SlotState::Recent => 2,
        SlotState::Sink => 3,
    }));
    // `tokens()` yields the occupied slots in slot order.
    for ((s, _), token) in cache.planner().residents().zip(cache.tokens()) {
        put_u64(out, token.position);
        put_f64(out, token.score);
        let (key, value) = cache.rows_of(s);
        key.iter().for_each(|x| x.put(out));
        value.iter().for_each(|x| x.put(out));
    }
    for (_, c) in cache.planner().residents() {
        put_f64(out, c.last_weight);
        put_u64(out, c.attended);
    }
    put_usize(out, slots.free_slots().len());
    slots.free_slots().iter().for_each(|&s| put_usize(out, s));
    put_usize(out, slots.recent().count());
    slots.recent().for_each(|s| put_usize(out, s));
    put_usize(out, cache.last_evicted().len());
    cache.last_evicted().iter().for_each(|&p| put_u64(out, p));
}

/// Reads one head, checking every field as it goes (the layout is checked by
/// [`apply`]).
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
            3 => Ok(SlotState::Sink),
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
    let mut stats = Vec::new();
    if r.version() >= 2 {
        if tokens.len().checked_mul(16).is_none_or(|b| b > r.remaining()) {
            return Err(invalid("payload shorter than its token statistics"));
        }
        stats.reserve_exact(tokens.len());
        for _ in 0..tokens.len() {
            let (last, attended) = (r.f64()?, r.u64()?);
            if !(last.is_finite() && last >= 0.0) {
                return Err(invalid("a last weight is negative or not finite"));
            }
            stats.push((last, attended));
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
        states,
        tokens,
        stats,
        keys,
        values,
        free,
        recent,
        last_evicted,
    };
    Ok(head)
}

/// Rebuilds a read head state into a freshly constructed cache of the same
/// policy, `head_dim` and scale.
///
/// # Errors
/// [`SnapshotError::Invalid`](crate::SnapshotError::Invalid) naming the broken invariant if the layout is
/// not one the cache could have reached.
pub(super) fn apply<T: Element, P: EvictionPolicy>(
    cache: &mut Cache<T, P>,
    head: &HeadState<T>,
) -> Result<()> {
    cache
        .restore(
            &head.states,
            &head.tokens,
            &head.stats,
            &head.keys,
            &head.values,
            &head.free,
            &head.recent,
            head.next_position,
            &head.last_evicted,
        )
        .map_err(invalid)
}

/// Passes allocation failures through; any other constructor error means the
/// snapshot's configuration is impossible.
pub(super) fn config_error(e: Error) -> Error {
    match e {
        Error::AllocationFailed { .. } => e,
        _ => invalid("configuration rejected by the constructor"),
    }
}
