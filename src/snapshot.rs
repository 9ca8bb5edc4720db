//! Session snapshots: a cache's whole state as bytes, and back.
//!
//! [`Cache::snapshot`] and [`LayerCache::snapshot`] write everything that
//! decides the cache's future behaviour; [`Cache::from_snapshot`] and
//! [`LayerCache::from_snapshot`] rebuild it so that every following call
//! returns bit-identical outputs and makes identical eviction decisions to a
//! cache that was never interrupted. A server can park an idle session, move
//! it to another process, or checkpoint it, without losing its heavy hitters.
//!
//! # What is saved
//! The policy (kind, budget split, tie rule), `head_dim`, the softmax scale,
//! the next position, the positions evicted by the last call, and the slot
//! layout exactly: which slots are free, occupied or in the recent window,
//! the free-slot stack in order, the high-water mark, the recent ring oldest
//! first, and for each occupied slot its position, accumulated score, key and
//! value. Slot order matters because attention sums over slots in slot order,
//! so a restored cache keeps every token in the slot it had.
//!
//! Not saved: the rows of free slots (never read as tokens), the attention
//! scratch, and so [`Cache::last_attention`], which is empty after a restore
//! until the next attention.
//!
//! # Format (version 1)
//! All integers little-endian; floats as their IEEE-754 bits.
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `H2OKVSNP` |
//! | 2 | format version, u16 ([`SNAPSHOT_VERSION`]) |
//! | 1 | kind: 1 single-head cache, 2 layer |
//! | 1 | element type: 1 f32, 2 f64, 3 f16, 4 bf16 |
//! | 8 | payload length in bytes, u64 |
//! | payload | a head (below); for a layer: `n_heads`, `n_kv_heads` (u64 each), then each KV head in order |
//! | 8 | FNV-1a 64 checksum of every byte before it |
//!
//! A head: policy (tag u8: 0 full, 1 recent, 2 heavy, 3 h2o; two u64
//! parameters; tie rule u8), `head_dim` u64, scale f64, next position u64,
//! slots u64, high-water mark u64, one state byte per slot below the mark
//! (0 free, 1 candidate, 2 recent), then for each occupied slot in slot order
//! its position u64, score f64, key and value (`head_dim` elements each);
//! then three counted u64 lists: the free stack bottom first, the recent ring
//! oldest first, and the last evicted positions.
//!
//! # Errors, never panics
//! Reading checks, in order: length, magic, version, checksum, kind, element
//! type, then every field (policy and `head_dim` accepted by the
//! constructors, a slot layout the cache could have reached, finite keys,
//! values and scores). Any failure is an `Err` and no cache is built. FNV-1a
//! detects every change confined to one byte; longer corruption is caught
//! with probability 1 − 2⁻⁶⁴, and the field checks catch the rest of what an
//! impossible cache would need.

use crate::cache::Cache;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::layer::LayerCache;
use crate::policy::{AnyPolicy, EvictionPolicy, Full, H2O, Heavy, Recent, TieRule};
use crate::store::SlotState;

/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u16 = 1;

const MAGIC: [u8; 8] = *b"H2OKVSNP";
const KIND_CACHE: u8 = 1;
const KIND_LAYER: u8 = 2;
/// Magic, version, kind, element type, payload length.
const HEADER: usize = 8 + 2 + 1 + 1 + 8;
const TRAILER: usize = 8;

mod sealed {
    /// Keeps [`SnapshotElement`](super::SnapshotElement) and
    /// [`SnapshotPolicy`](super::SnapshotPolicy) to the crate's own types, so
    /// type tags stay unique.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    #[cfg(feature = "half")]
    impl Sealed for half::f16 {}
    #[cfg(feature = "half")]
    impl Sealed for half::bf16 {}
    impl Sealed for crate::Full {}
    impl Sealed for crate::Recent {}
    impl Sealed for crate::Heavy {}
    impl Sealed for crate::H2O {}
    impl Sealed for crate::AnyPolicy {}
}

/// An element type a snapshot can store: `f32`, `f64`, and with the `half`
/// feature `half::f16` and `half::bf16`. Elements are stored as their exact
/// bits, so a restore loses nothing.
///
/// Sealed: implemented for the crate's element types only.
pub trait SnapshotElement: Element + sealed::Sealed {
    /// The element-type byte in the header.
    const TAG: u8;
    /// Bytes per stored element.
    const BYTES: usize;
    /// Appends the element's bits, little-endian.
    fn put(self, out: &mut Vec<u8>);
    /// Reads an element from exactly [`BYTES`](Self::BYTES) bytes.
    fn get(bytes: &[u8]) -> Self;
}

impl SnapshotElement for f32 {
    const TAG: u8 = 1;
    const BYTES: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f32::from_bits(u32::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }
}

impl SnapshotElement for f64 {
    const TAG: u8 = 2;
    const BYTES: usize = 8;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f64::from_bits(u64::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }
}

#[cfg(feature = "half")]
impl SnapshotElement for half::f16 {
    const TAG: u8 = 3;
    const BYTES: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        half::f16::from_bits(u16::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }
}

#[cfg(feature = "half")]
impl SnapshotElement for half::bf16 {
    const TAG: u8 = 4;
    const BYTES: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        half::bf16::from_bits(u16::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }
}

fn element_name(tag: u8) -> &'static str {
    match tag {
        1 => "f32",
        2 => "f64",
        3 => "f16",
        4 => "bf16",
        _ => "an unknown element type",
    }
}

/// A policy a snapshot can store: the four built-in policies and
/// [`AnyPolicy`]. A snapshot records the policy as an [`AnyPolicy`]; a
/// snapshot of an `H2OCache` can be restored as a `Cache<T, AnyPolicy>` and
/// back, since both make the same decisions.
///
/// Sealed: implemented for the crate's policies only.
pub trait SnapshotPolicy: EvictionPolicy + sealed::Sealed {
    /// What the policy type accepts, for [`Error::SnapshotMismatch`].
    const EXPECTED: &'static str;
    /// The policy as the run-time enum.
    fn to_any(&self) -> AnyPolicy;
    /// The policy back from the run-time enum, if it is of this type.
    fn from_any(policy: AnyPolicy) -> Option<Self>;
}

impl SnapshotPolicy for Full {
    const EXPECTED: &'static str = "a full policy";
    fn to_any(&self) -> AnyPolicy {
        AnyPolicy::Full(*self)
    }
    fn from_any(policy: AnyPolicy) -> Option<Self> {
        if let AnyPolicy::Full(p) = policy { Some(p) } else { None }
    }
}

impl SnapshotPolicy for Recent {
    const EXPECTED: &'static str = "a recent policy";
    fn to_any(&self) -> AnyPolicy {
        AnyPolicy::Recent(*self)
    }
    fn from_any(policy: AnyPolicy) -> Option<Self> {
        if let AnyPolicy::Recent(p) = policy { Some(p) } else { None }
    }
}

impl SnapshotPolicy for Heavy {
    const EXPECTED: &'static str = "a heavy policy";
    fn to_any(&self) -> AnyPolicy {
        AnyPolicy::Heavy(*self)
    }
    fn from_any(policy: AnyPolicy) -> Option<Self> {
        if let AnyPolicy::Heavy(p) = policy { Some(p) } else { None }
    }
}

impl SnapshotPolicy for H2O {
    const EXPECTED: &'static str = "an h2o policy";
    fn to_any(&self) -> AnyPolicy {
        AnyPolicy::H2O(*self)
    }
    fn from_any(policy: AnyPolicy) -> Option<Self> {
        if let AnyPolicy::H2O(p) = policy { Some(p) } else { None }
    }
}

impl SnapshotPolicy for AnyPolicy {
    const EXPECTED: &'static str = "any policy";
    fn to_any(&self) -> AnyPolicy {
        *self
    }
    fn from_any(policy: AnyPolicy) -> Option<Self> {
        Some(policy)
    }
}

fn policy_name(policy: &AnyPolicy) -> &'static str {
    match policy {
        AnyPolicy::Full(_) => "a full policy",
        AnyPolicy::Recent(_) => "a recent policy",
        AnyPolicy::Heavy(_) => "a heavy policy",
        AnyPolicy::H2O(_) => "an h2o policy",
    }
}

// ---- checksum ------------------------------------------------------------

/// FNV-1a, 64-bit (Fowler, Noll, Vo; offset basis and prime from the
/// published parameters).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// ---- writing -------------------------------------------------------------

fn put_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_le_bytes());
}

fn put_usize(out: &mut Vec<u8>, x: usize) {
    put_u64(out, x as u64);
}

fn put_f64(out: &mut Vec<u8>, x: f64) {
    put_u64(out, x.to_bits());
}

fn tie_byte(tie: TieRule) -> u8 {
    match tie {
        TieRule::KeepOlder => 0,
        TieRule::KeepNewer => 1,
    }
}

fn put_policy(out: &mut Vec<u8>, policy: &AnyPolicy) {
    let (tag, a, b, tie) = match policy {
        AnyPolicy::Full(p) => (0, p.budget(), 0, TieRule::default()),
        AnyPolicy::Recent(p) => (1, p.budget(), 0, TieRule::default()),
        AnyPolicy::Heavy(p) => (2, p.budget(), 0, p.tie_rule()),
        AnyPolicy::H2O(p) => (3, p.heavy(), p.recent(), p.tie_rule()),
    };
    out.push(tag);
    put_usize(out, a);
    put_usize(out, b);
    out.push(tie_byte(tie));
}

fn put_head<T: SnapshotElement, P: SnapshotPolicy>(out: &mut Vec<u8>, cache: &Cache<T, P>) {
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

fn frame(kind: u8, tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.push(kind);
    out.push(tag);
    put_usize(&mut out, payload.len());
    out.extend_from_slice(payload);
    let sum = fnv1a64(&out);
    put_u64(&mut out, sum);
    out
}

// ---- reading -------------------------------------------------------------

/// Checks the frame and returns the payload.
fn unframe(bytes: &[u8], kind: u8, tag: u8) -> Result<&[u8]> {
    let truncated = |needed: usize| Error::SnapshotTruncated { needed, got: bytes.len() };
    if bytes.len() < MAGIC.len() {
        // Too short to tell; a prefix of the magic is a cut-off snapshot.
        return Err(if MAGIC.starts_with(bytes) {
            truncated(HEADER)
        } else {
            Error::SnapshotMagic
        });
    }
    if bytes[..8] != MAGIC {
        return Err(Error::SnapshotMagic);
    }
    if bytes.len() < HEADER {
        return Err(truncated(HEADER));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != SNAPSHOT_VERSION {
        return Err(Error::SnapshotVersion { found: version, supported: SNAPSHOT_VERSION });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    let total = usize::try_from(len)
        .ok()
        .and_then(|n| n.checked_add(HEADER + TRAILER))
        .ok_or(truncated(usize::MAX))?;
    if bytes.len() < total {
        return Err(truncated(total));
    }
    if bytes.len() > total {
        return Err(Error::SnapshotInvalid { reason: "trailing bytes after the checksum" });
    }
    let body = &bytes[..total - TRAILER];
    let stored = u64::from_le_bytes(bytes[total - TRAILER..].try_into().unwrap_or_default());
    let computed = fnv1a64(body);
    if stored != computed {
        return Err(Error::SnapshotChecksum { stored, computed });
    }
    let (found_kind, found_tag) = (bytes[10], bytes[11]);
    if found_kind != kind {
        let name = |k| match k {
            KIND_CACHE => "a single-head cache",
            KIND_LAYER => "a layer cache",
            _ => "an unknown kind of cache",
        };
        return Err(Error::SnapshotMismatch { expected: name(kind), found: name(found_kind) });
    }
    if found_tag != tag {
        return Err(Error::SnapshotMismatch {
            expected: element_name(tag),
            found: element_name(found_tag),
        });
    }
    Ok(&body[HEADER..])
}

fn invalid(reason: &'static str) -> Error {
    Error::SnapshotInvalid { reason }
}

/// A cursor over the payload; running out is an invalid snapshot (the frame
/// already checked the declared length).
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.bytes.len() {
            return Err(invalid("payload ends inside a field"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }

    fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| invalid("a count does not fit in usize"))
    }

    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// A count of `width`-byte items that must fit in the rest of the payload.
    fn count(&mut self, width: usize) -> Result<usize> {
        let n = self.usize()?;
        if n.checked_mul(width).is_none_or(|b| b > self.bytes.len()) {
            return Err(invalid("a list is longer than the payload"));
        }
        Ok(n)
    }

    fn slot_list(&mut self) -> Result<Vec<usize>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.usize()).collect()
    }
}

fn get_policy(r: &mut Reader<'_>) -> Result<AnyPolicy> {
    let tag = r.u8()?;
    let (a, b) = (r.usize()?, r.usize()?);
    let tie = match r.u8()? {
        0 => TieRule::KeepOlder,
        1 => TieRule::KeepNewer,
        _ => return Err(invalid("unknown tie rule")),
    };
    let bad = |_| invalid("policy parameters rejected by its constructor");
    let plain = |b: usize| if b == 0 { Ok(()) } else { Err(invalid("unused policy field set")) };
    Ok(match tag {
        0 => {
            plain(b)?;
            if tie != TieRule::default() {
                return Err(invalid("unused policy field set"));
            }
            AnyPolicy::Full(Full::new(a).map_err(bad)?)
        }
        1 => {
            plain(b)?;
            if tie != TieRule::default() {
                return Err(invalid("unused policy field set"));
            }
            AnyPolicy::Recent(Recent::new(a).map_err(bad)?)
        }
        2 => {
            plain(b)?;
            AnyPolicy::Heavy(Heavy::new(a).map_err(bad)?.with_tie_rule(tie))
        }
        3 => AnyPolicy::H2O(H2O::new(a, b).map_err(bad)?.with_tie_rule(tie)),
        _ => return Err(invalid("unknown policy")),
    })
}

/// One head's state, read and checked, not yet applied to a cache.
struct HeadState<T> {
    policy: AnyPolicy,
    head_dim: usize,
    scale: f64,
    next_position: u64,
    high_water: usize,
    /// `[high_water]`.
    states: Vec<SlotState>,
    /// Occupied slots in slot order: (slot, position, score).
    tokens: Vec<(usize, u64, f64)>,
    /// `[tokens × head_dim]` each, in the order of `tokens`.
    keys: Vec<T>,
    values: Vec<T>,
    free: Vec<usize>,
    recent: Vec<usize>,
    last_evicted: Vec<u64>,
}

fn get_head<T: SnapshotElement>(r: &mut Reader<'_>) -> Result<HeadState<T>> {
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
    if occupied.len().checked_mul(row_bytes).is_none_or(|b| b > r.bytes.len()) {
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

    // The layout must be one the cache could have reached.
    let mut positions: Vec<u64> = tokens.iter().map(|t| t.1).collect();
    positions.sort_unstable();
    if positions.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("two resident tokens share a position"));
    }
    let n_free = states.iter().filter(|&&s| s == SlotState::Free).count();
    let mut seen = vec![false; high_water];
    for &s in &free {
        if s >= high_water || states[s] != SlotState::Free || std::mem::replace(&mut seen[s], true)
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
    for &s in &recent {
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
        || last_evicted.iter().any(|&p| p >= next_position || positions.binary_search(&p).is_ok())
    {
        return Err(invalid("last evicted positions are not ascending, past or evicted"));
    }
    Ok(HeadState {
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
    })
}

/// Rebuilds a checked head state into a freshly constructed cache of the same
/// policy, `head_dim` and scale.
fn apply<T: Element, P: EvictionPolicy>(cache: &mut Cache<T, P>, head: &HeadState<T>) {
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

fn mismatch<P: SnapshotPolicy>(found: &AnyPolicy) -> Error {
    Error::SnapshotMismatch { expected: P::EXPECTED, found: policy_name(found) }
}

/// Passes allocation failures through; any other constructor error means the
/// snapshot's configuration is impossible.
fn config_error(e: Error) -> Error {
    match e {
        Error::AllocationFailed { .. } => e,
        _ => invalid("configuration rejected by the constructor"),
    }
}

impl<T: SnapshotElement, P: SnapshotPolicy> Cache<T, P> {
    /// The cache's whole state as bytes (format in the
    /// [`snapshot`](crate::snapshot) module docs):
    /// `len · (16 + 2 · head_dim · size_of::<T>())` bytes for the tokens, plus
    /// one byte per slot ever used, 8 per free slot, recent-window slot and
    /// last evicted position, and 110 bytes of header and fields.
    ///
    /// [`from_snapshot`](Self::from_snapshot) rebuilds a cache whose every
    /// following call is bit-identical to this one's.
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        put_head(&mut payload, self);
        frame(KIND_CACHE, T::TAG, &payload)
    }

    /// Rebuilds a cache from [`snapshot`](Self::snapshot) bytes.
    ///
    /// The snapshot may come from a cache of another policy type if it holds
    /// a policy this type can represent (any built-in one for
    /// `Cache<T, AnyPolicy>`; an H2O policy for `H2OCache<T>`).
    ///
    /// # Errors
    /// - [`Error::SnapshotTruncated`] if the bytes end early;
    /// - [`Error::SnapshotMagic`] if they are not a snapshot;
    /// - [`Error::SnapshotVersion`] for another format version;
    /// - [`Error::SnapshotChecksum`] if the bytes were corrupted;
    /// - [`Error::SnapshotMismatch`] for a layer snapshot, another element
    ///   type, or a policy `P` cannot hold;
    /// - [`Error::SnapshotInvalid`] if the contents describe an impossible cache;
    /// - [`Error::AllocationFailed`] if the buffers cannot be allocated.
    ///
    /// Like the constructors, a restore allocates the capacity the policy in
    /// the snapshot asks for; bytes from an untrusted source can ask for up
    /// to [`MAX_BUDGET`](crate::MAX_BUDGET) tokens of
    /// [`MAX_HEAD_DIM`](crate::MAX_HEAD_DIM) elements.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes: unframe(bytes, KIND_CACHE, T::TAG)? };
        let head = get_head::<T>(&mut r)?;
        if !r.bytes.is_empty() {
            return Err(invalid("bytes left over after the cache"));
        }
        let policy = P::from_any(head.policy).ok_or_else(|| mismatch::<P>(&head.policy))?;
        let mut cache = Cache::with_policy(head.head_dim, policy)
            .and_then(|c| c.with_scale(head.scale))
            .map_err(config_error)?;
        apply(&mut cache, &head);
        Ok(cache)
    }
}

impl<T: SnapshotElement, P: SnapshotPolicy> LayerCache<T, P> {
    /// The whole layer's state as bytes: the head counts, then every KV
    /// head's state as in [`Cache::snapshot`].
    #[must_use]
    pub fn snapshot(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        put_usize(&mut payload, self.n_heads());
        put_usize(&mut payload, self.n_kv_heads());
        for head in self.heads() {
            put_head(&mut payload, head);
        }
        frame(KIND_LAYER, T::TAG, &payload)
    }

    /// Rebuilds a layer from [`snapshot`](Self::snapshot) bytes.
    ///
    /// # Errors
    /// As [`Cache::from_snapshot`]; [`Error::SnapshotMismatch`] for a
    /// single-head snapshot, and [`Error::SnapshotInvalid`] if the heads
    /// disagree on policy, `head_dim`, scale, token count or next position.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes: unframe(bytes, KIND_LAYER, T::TAG)? };
        let (n_heads, n_kv_heads) = (r.usize()?, r.usize()?);
        if n_kv_heads == 0 || n_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(invalid("head counts are not a positive multiple"));
        }
        // Each head needs at least its fixed fields: bounds the allocation.
        if n_kv_heads > r.bytes.len() / 64 {
            return Err(invalid("more heads than the payload holds"));
        }
        let mut heads = Vec::with_capacity(n_kv_heads);
        for _ in 0..n_kv_heads {
            heads.push(get_head::<T>(&mut r)?);
        }
        if !r.bytes.is_empty() {
            return Err(invalid("bytes left over after the layer"));
        }
        let first = &heads[0];
        let agree = |h: &HeadState<T>| {
            h.policy == first.policy
                && h.head_dim == first.head_dim
                && h.scale.to_bits() == first.scale.to_bits()
                && h.next_position == first.next_position
                && h.tokens.len() == first.tokens.len()
        };
        if !heads.iter().all(agree) {
            return Err(invalid("the layer's heads disagree"));
        }
        let policy = P::from_any(first.policy).ok_or_else(|| mismatch::<P>(&first.policy))?;
        let mut layer = LayerCache::new(n_heads, n_kv_heads, first.head_dim, policy)
            .and_then(|l| l.with_scale(first.scale))
            .map_err(config_error)?;
        for (cache, head) in layer.heads_mut().iter_mut().zip(&heads) {
            apply(cache, head);
        }
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::H2OCache;

    #[test]
    fn fnv1a_matches_published_vectors() {
        // Test vectors from the FNV reference (empty string, "a", "foobar").
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn size_matches_the_documented_formula() {
        let mut c = H2OCache::<f32>::new(3, 2, 1).unwrap();
        assert_eq!(c.snapshot().len(), 110);
        for t in 0..6 {
            let x = t as f32;
            c.step(&[x, 1.0, 0.0], &[1.0, x, 0.5], &[x; 3]).unwrap();
        }
        let (len, hw) = (c.len(), c.store().high_water());
        let (free, recent) = (c.store().free_slots().len(), c.store().recent().count());
        let lists = 8 * (free + recent + c.last_evicted().len());
        assert_eq!(c.snapshot().len(), len * (16 + 2 * 3 * 4) + hw + lists + 110);
    }

    #[test]
    fn round_trip_keeps_the_layout() {
        let mut c = H2OCache::<f32>::new(2, 2, 1).unwrap();
        for t in 0..7 {
            let x = t as f32;
            c.step(&[1.0, x], &[x.sin(), 1.0], &[x, -x]).unwrap();
        }
        let bytes = c.snapshot();
        let r = H2OCache::<f32>::from_snapshot(&bytes).unwrap();
        assert_eq!(r.snapshot(), bytes);
        assert_eq!(r.store().free_slots(), c.store().free_slots());
        assert!(r.store().recent().eq(c.store().recent()));
        assert_eq!(r.store().high_water(), c.store().high_water());
    }
}
