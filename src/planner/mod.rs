//! The eviction planner: slots, positions, the score table and the policy,
//! without key/value rows or attention (bring your own storage and kernel;
//! `docs/semantics.md §9`).
//!
//! [`Cache`](crate::Cache) is this planner plus a row store and the crate's
//! attention kernels: every decision a `Cache` makes is made here, so a
//! caller that feeds the planner the weights its own kernel computed gets
//! exactly the decisions a `Cache` would make.

use smallvec::SmallVec;

use crate::element::Accumulator;
use crate::error::{Error, Result};
use crate::policy::{Candidate, EvictionPolicy, check_budget};

mod derive;
mod prefill;
mod slots;
mod tokens;

pub use prefill::PrefillStats;
pub(crate) use slots::{SlotState, SlotTable, try_vec};
pub use tokens::{Token, Tokens};

/// A slot reserved for the next token, not yet occupied: the value
/// [`Planner::stage`] hands to [`Planner::insert`].
///
/// Between the two calls the caller writes the token's key and value into
/// row [`slot`](Self::slot) of its own buffers (and may run attention over
/// it); nothing in the planner changes until `insert`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a staged slot is only occupied by `Planner::insert`"]
pub struct Staged {
    slot: usize,
    position: u64,
}

impl Staged {
    /// The row the token's key and value go to.
    #[must_use]
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The absolute position the token will get (apply RoPE there).
    #[must_use]
    pub fn position(&self) -> u64 {
        self.position
    }
}

/// A token the planner evicted: its slot is free again (its row may be
/// overwritten by the next insertion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The slot (row) the token occupied.
    pub slot: usize,
    /// Its absolute position.
    pub position: u64,
}

/// One head's eviction decisions without storage: slot allocation,
/// positions, the accumulated-score table (f64), per-token attention
/// statistics and the policy `P` (`docs/semantics.md §9`).
///
/// A decode step with your own K/V buffers (`[capacity × head_dim]`) and
/// attention kernel, in the default order (`docs/semantics.md §2`):
/// 1. [`stage`](Self::stage) → the slot to write; write K and V into that row;
/// 2. [`insert`](Self::insert) the staged slot;
/// 3. run attention over rows `0..span()` (free rows get weight 0: see
///    [`is_resident`](Self::is_resident)), then
///    [`add_weights`](Self::add_weights) with the softmax weights;
/// 4. [`evict`](Self::evict) → the freed slots and positions.
///
/// Attend-insert-evict order is 3, 1, 2, 4; evict-insert-attend order is 1,
/// [`insert_evicting`](Self::insert_evicting) (instead of 2 and 4), 3. A
/// prompt goes through [`prefill`](Self::prefill).
///
/// Fed the weights [`Cache`](crate::Cache)'s kernels compute, a planner makes
/// exactly the decisions the cache makes (the cache is this planner plus
/// rows and kernels); `tests/planner.rs` checks it on random streams.
///
/// # Example: a caller-owned store and a hand-written attention
/// ```
/// use h2o_kv::{H2O, Planner};
///
/// let d = 2; // head_dim
/// let mut planner = Planner::new(H2O::new(1, 1)?)?; // 1 heavy + 1 recent
/// let mut keys = vec![0.0f32; planner.capacity() * d];
/// let mut values = vec![0.0f32; planner.capacity() * d];
/// let mut weights = vec![0.0f32; planner.capacity()];
/// for t in 0..6 {
///     let (q, k, v) = ([1.0, 0.0], [if t == 0 { 4.0 } else { 0.0 }, 1.0], [t as f32; 2]);
///     let staged = planner.stage()?;
///     keys[staged.slot() * d..][..d].copy_from_slice(&k);
///     values[staged.slot() * d..][..d].copy_from_slice(&v);
///     planner.insert(staged)?;
///     // Softmax of q·k over the resident rows (free rows get weight 0).
///     let n = planner.span();
///     let mut sum = 0.0;
///     for s in 0..n {
///         let logit = q[0] * keys[s * d] + q[1] * keys[s * d + 1];
///         weights[s] = if planner.is_resident(s) { logit.exp() } else { 0.0 };
///         sum += weights[s];
///     }
///     weights[..n].iter_mut().for_each(|w| *w /= sum);
///     planner.add_weights(&weights[..n], 1)?;
///     planner.evict();
/// }
/// // Token 0 (large q·k) is the heavy hitter; token 5 the recent window.
/// assert_eq!(planner.resident_positions(), [0, 5]);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
///
/// Errors leave the planner as it was; nothing here panics or allocates
/// after construction (a prefill allocates).
#[derive(Debug, Clone)]
pub struct Planner<P> {
    policy: P,
    slots: SlotTable,
    /// `[slots]`: accumulated attention score of the token in each slot.
    scores: Vec<f64>,
    /// `[slots]`: the last attention's (group-summed) weight on each slot.
    last_weights: Vec<f64>,
    /// `[slots]`: attentions (steps) that covered each slot's token.
    attended: Vec<u64>,
    /// Position the next inserted token gets.
    next_position: u64,
    /// The last call's evictions, ascending by position.
    evicted: SmallVec<[Evicted; 2]>,
    /// The same positions, for [`last_evicted`](Self::last_evicted).
    evicted_positions: SmallVec<[u64; 2]>,
}

impl<P: EvictionPolicy> Planner<P> {
    /// A planner for one head under `policy`; `budget + 1` slots for an
    /// evicting policy, `budget` otherwise.
    ///
    /// # Errors
    /// [`Error::InvalidSplit`] if the policy protects more tokens (recent
    /// window plus sinks) than its budget; budget errors as the policies'
    /// constructors; [`Error::AllocationFailed`].
    pub fn new(policy: P) -> Result<Self> {
        let budget = policy.budget();
        check_budget(budget)?;
        let protected = policy.recent_window().saturating_add(policy.sinks());
        // An evicting policy whose sinks fill the whole budget could never
        // keep another token (nor evict down to `budget − 1` before an
        // insertion): refused like any split that protects too much.
        if protected > budget || (policy.evicts() && policy.sinks() >= budget) {
            return Err(Error::InvalidSplit { budget, recent: protected });
        }
        let slots = if policy.evicts() { budget + 1 } else { budget };
        Ok(Self {
            slots: SlotTable::new(slots, policy.recent_window(), policy.sinks())?,
            scores: try_vec(slots, 0.0)?,
            last_weights: try_vec(slots, 0.0)?,
            attended: try_vec(slots, 0)?,
            next_position: 0,
            evicted: SmallVec::new(),
            evicted_positions: SmallVec::new(),
            policy,
        })
    }

    /// The eviction policy.
    #[must_use]
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Tokens kept after an eviction.
    #[must_use]
    pub fn budget(&self) -> usize {
        self.policy.budget()
    }

    /// Slots (rows) the caller's K/V buffers need: `budget + 1` for an
    /// evicting policy (room for the new token before the eviction), `budget`
    /// otherwise.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.slots()
    }

    /// Resident tokens.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no token is resident.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position the next inserted token gets.
    #[must_use]
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Rows an attention must cover: every resident slot is below this
    /// (slots are reused lowest-first from a free stack, so rows `0..span()`
    /// are mostly resident; free rows among them must get weight 0).
    #[must_use]
    pub fn span(&self) -> usize {
        self.slots.high_water()
    }

    /// Whether `slot` holds a resident token (false past [`span`](Self::span)).
    #[must_use]
    pub fn is_resident(&self, slot: usize) -> bool {
        slot < self.span() && self.slots.state(slot) != SlotState::Free
    }

    /// The resident token in `slot`, if any.
    #[must_use]
    pub fn token(&self, slot: usize) -> Option<Candidate> {
        self.is_resident(slot).then(|| self.candidate(slot))
    }

    /// Resident tokens as `(slot, token)`, in slot order.
    pub fn residents(&self) -> impl Iterator<Item = (usize, Candidate)> + '_ {
        (0..self.span()).filter(|&s| self.is_resident(s)).map(|s| (s, self.candidate(s)))
    }

    /// Resident positions, ascending (allocates the `Vec`).
    #[must_use]
    pub fn resident_positions(&self) -> Vec<u64> {
        let mut p: Vec<u64> = self.residents().map(|(_, t)| t.position).collect();
        p.sort_unstable();
        p
    }

    /// What the policy sees of the token in `slot`.
    #[inline]
    fn candidate(&self, s: usize) -> Candidate {
        Candidate {
            position: self.slots.position(s),
            score: self.scores[s],
            last_weight: self.last_weights[s],
            attended: self.attended[s],
        }
    }

    // ---- insert ---------------------------------------------------------

    /// The slot the next token goes to and its position. Changes nothing.
    ///
    /// # Errors
    /// [`Error::CapacityExceeded`] if every slot is taken (a full cache at
    /// capacity, or an evicting planner already one over budget: call
    /// [`evict`](Self::evict) first).
    pub fn stage(&self) -> Result<Staged> {
        self.check_room(1)?;
        let slot = self.slots.vacant_slot().ok_or(Error::CapacityExceeded {
            len: self.len(),
            capacity: self.capacity(),
            requested: 1,
        })?;
        Ok(Staged { slot, position: self.next_position })
    }

    /// Occupies a staged slot: the token at `staged.position()` is resident,
    /// with score 0, and is the newest of the recent window. Returns its
    /// position. Never evicts.
    ///
    /// # Errors
    /// [`Error::StaleStage`] if the planner changed since
    /// [`stage`](Self::stage) (another insert, an eviction, a reset).
    pub fn insert(&mut self, staged: Staged) -> Result<u64> {
        if self.slots.vacant_slot() != Some(staged.slot) || self.next_position != staged.position {
            return Err(Error::StaleStage);
        }
        self.clear_evicted();
        Ok(self.commit_insert(staged))
    }

    /// [`insert`](Self::insert) for a stage the crate itself just made.
    pub(crate) fn commit_insert(&mut self, staged: Staged) -> u64 {
        let Staged { slot, position } = staged;
        debug_assert_eq!(position, self.next_position);
        self.slots.occupy(slot, position);
        self.slots.push_recent(slot);
        self.scores[slot] = 0.0;
        self.last_weights[slot] = 0.0;
        self.attended[slot] = 0;
        self.next_position += 1;
        position
    }

    /// Whether `n` more tokens fit right now.
    pub(crate) fn check_room(&self, n: usize) -> Result<()> {
        let (len, capacity) = (self.len(), self.capacity());
        if n > capacity - len {
            return Err(Error::CapacityExceeded { len, capacity, requested: n });
        }
        Ok(())
    }

    // ---- attention weights ----------------------------------------------

    /// Adds one attention's softmax weights to the scores (`docs/semantics.md
    /// §1`): `weights` is `[group × span()]`, row-major, one row per query
    /// head of the group that shares this KV head; each resident token's
    /// score gains the sum of its `group` weights, its
    /// [`last_weight`](Candidate::last_weight) becomes that sum and its
    /// [`attended`](Candidate::attended) count grows by one. Weights of free
    /// rows are ignored.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `group == 0`;
    /// [`Error::LengthMismatch`] unless `weights.len() == group · span()`;
    /// [`Error::InvalidWeight`] for a weight that is negative or not finite.
    /// Nothing changes on an error.
    pub fn add_weights<A: Accumulator>(&mut self, weights: &[A], group: usize) -> Result<()> {
        if group == 0 {
            return Err(Error::InvalidParameter {
                what: "group",
                value: 0.0,
                expected: "at least one query head per KV head",
            });
        }
        let span = self.span();
        let expected = group.saturating_mul(span);
        if weights.len() != expected {
            return Err(Error::LengthMismatch { what: "weights", expected, got: weights.len() });
        }
        if let Some(index) = weights.iter().position(|w| !(w.is_finite() && *w >= A::zero())) {
            return Err(Error::InvalidWeight { index, value: weights[index].widen() });
        }
        self.add_weight_rows(weights, span, group);
        self.clear_evicted();
        Ok(())
    }

    /// [`add_weights`](Self::add_weights) on checked rows `stride` apart
    /// (the cache's scratch layout). Rows cover `span()` slots.
    pub(crate) fn add_weight_rows<A: Accumulator>(
        &mut self,
        weights: &[A],
        stride: usize,
        group: usize,
    ) {
        let span = self.span();
        // One pass for the first query of the group (which also resets the
        // last weights and counts the attention), one more per extra query.
        let first = &weights[..span];
        for (((score, last), n), w) in self.scores[..span]
            .iter_mut()
            .zip(&mut self.last_weights[..span])
            .zip(&mut self.attended[..span])
            .zip(first)
        {
            let w = w.widen();
            *score += w;
            *last = w;
            *n += 1;
        }
        for q in 1..group {
            let row = &weights[q * stride..][..span];
            for ((score, last), w) in
                self.scores[..span].iter_mut().zip(&mut self.last_weights[..span]).zip(row)
            {
                let w = w.widen();
                *score += w;
                *last += w;
            }
        }
    }

    // ---- eviction ---------------------------------------------------------

    /// Evicts down to the budget (at most one token in steady-state decode)
    /// and returns the freed slots with their positions, ascending by
    /// position. A no-op within budget or for a non-evicting policy.
    ///
    /// # Complexity
    /// One scan over the eviction candidates per evicted token: O(budget).
    /// A [`prefill`](Self::prefill) evicts many tokens at once with one sort
    /// instead, by the same order.
    pub fn evict(&mut self) -> &[Evicted] {
        self.evict_to(self.policy.budget());
        &self.evicted
    }

    /// Positions evicted by the last call that could evict, ascending;
    /// empty after an insert or an attention.
    #[must_use]
    pub fn last_evicted(&self) -> &[u64] {
        &self.evicted_positions
    }

    /// The last call's evictions with their slots, ascending by position.
    #[must_use]
    pub fn last_evicted_slots(&self) -> &[Evicted] {
        &self.evicted
    }

    pub(crate) fn clear_evicted(&mut self) {
        self.evicted.clear();
        self.evicted_positions.clear();
    }

    /// Evicts down to `target` tokens (a no-op for a non-evicting policy).
    pub(crate) fn evict_to(&mut self, target: usize) {
        self.clear_evicted();
        if !self.policy.evicts() {
            return;
        }
        while self.len() > target {
            let Some(victim) = self.select_victim(None, &[]) else { break };
            self.release(victim);
        }
        self.sort_evicted();
    }

    fn release(&mut self, slot: usize) {
        let position = self.slots.position(slot);
        self.evicted.push(Evicted { slot, position });
        self.slots.release(slot);
    }

    fn sort_evicted(&mut self) {
        self.evicted.sort_unstable_by_key(|e| e.position);
        self.evicted_positions.extend(self.evicted.iter().map(|e| e.position));
    }

    /// The candidate the policy evicts first, never one of `skip`: one scan
    /// over the candidates (`heavy + 1` of them in steady state), plus
    /// `extra` (a slot about to leave the recent window).
    fn select_victim(&self, extra: Option<usize>, skip: &[usize]) -> Option<usize> {
        let mut best: Option<(usize, Candidate)> = None;
        for &s in self.slots.candidates().iter().chain(extra.iter()) {
            if skip.contains(&s) {
                continue;
            }
            let c = self.candidate(s);
            match &best {
                Some((_, b)) if !self.policy.eviction_order(&c, b).is_lt() => {}
                _ => best = Some((s, c)),
            }
        }
        best.map(|(s, _)| s)
    }

    // ---- evict-insert-attend ----------------------------------------------

    /// Plans an evict-insert-attend step without changing anything
    /// (`docs/semantics.md §2`): the slot the new token takes (the vacant
    /// one, as for any insertion), and the tokens that go to bring the
    /// planner to `budget − 1` before it, with the newest `recent − 1`
    /// tokens protected (the new token is the window's newest, so the
    /// window's oldest competes). At most two victims.
    ///
    /// # Errors
    /// [`Error::CapacityExceeded`] if no slot is vacant.
    pub(crate) fn plan_evict_first(&self) -> Result<EvictFirst> {
        let staged = self.stage()?;
        let mut victims: SmallVec<[usize; 2]> = SmallVec::new();
        if self.policy.evicts() {
            let target = self.policy.budget() - 1;
            // The token the insertion pushes out of the window competes,
            // unless it is a sink.
            let sinks = self.policy.sinks() as u64;
            let extra = self.slots.graduating().filter(|&s| self.slots.position(s) >= sinks);
            while self.len() - victims.len() > target {
                match self.select_victim(extra, &victims) {
                    Some(v) => victims.push(v),
                    None => break,
                }
            }
        }
        Ok(EvictFirst { victims, staged })
    }

    /// Inserts a staged token in evict-insert-attend order
    /// (`docs/semantics.md §2`): first the planner evicts down to
    /// `budget − 1` tokens, ranking by the scores so far, with the new token
    /// counted as the newest of the recent window (so the window's oldest
    /// competes); then the token is inserted. Attend afterwards, over
    /// exactly `budget` tokens. Returns the evicted tokens.
    ///
    /// # Errors
    /// [`Error::StaleStage`] as [`insert`](Self::insert).
    pub fn insert_evicting(&mut self, staged: Staged) -> Result<&[Evicted]> {
        if self.slots.vacant_slot() != Some(staged.slot) || self.next_position != staged.position {
            return Err(Error::StaleStage);
        }
        let plan = self.plan_evict_first()?;
        debug_assert_eq!(plan.staged, staged);
        self.commit_insert(staged);
        self.commit_evictions(&plan.victims);
        Ok(&self.evicted)
    }

    /// Frees the victims of a [`plan_evict_first`](Self::plan_evict_first)
    /// once its token is inserted (the insertion moved the window, so every
    /// victim is a candidate now).
    pub(crate) fn commit_evictions(&mut self, victims: &[usize]) {
        self.clear_evicted();
        for &v in victims {
            self.release(v);
        }
        self.sort_evicted();
    }

    /// The resident tokens with their accumulated scores, in slot order.
    pub fn tokens(&self) -> Tokens<'_> {
        let span = self.span();
        Tokens::new(self.slots.positions(), self.slots.states(), &self.scores[..span])
    }

    // ---- crate-internal views ---------------------------------------------

    pub(crate) fn slots(&self) -> &SlotTable {
        &self.slots
    }

    /// Forgets every token and score; positions restart at 0.
    pub fn reset(&mut self) {
        self.slots.reset();
        self.scores.iter_mut().for_each(|s| *s = 0.0);
        self.last_weights.iter_mut().for_each(|s| *s = 0.0);
        self.attended.iter_mut().for_each(|s| *s = 0);
        self.next_position = 0;
        self.clear_evicted();
    }

    // ---- fork and truncate ------------------------------------------------

    /// Checks that [`copy_from`](Self::copy_from) can copy `src` into this
    /// planner: the same policy (compared with `==`) and so the same slot
    /// count, recent window and sinks. Changes nothing.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming what differs.
    pub fn check_copy(&self, src: &Planner<P>) -> Result<()>
    where
        P: PartialEq,
    {
        if self.policy != src.policy {
            return Err(Error::ShapeMismatch { what: "policy" });
        }
        if !self.slots.same_shape(&src.slots) {
            return Err(Error::ShapeMismatch { what: "slot table" });
        }
        Ok(())
    }

    /// Makes this planner an exact copy of `src` (a fork, for beam search):
    /// slot table, positions, scores, last weights, attention counts, the
    /// next position and the last call's evictions, slot for slot, so both
    /// make the same decisions from here on. A caller copying its own K/V
    /// buffers copies rows `0..span()`.
    ///
    /// Allocates nothing: every table is copied into this planner's own
    /// buffers, which have the same sizes. (One exception: a last-evicted
    /// list longer than two entries, which only a prefill leaves, grows this
    /// planner's list the first time it is copied.) O(`capacity`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the policies differ (see
    /// [`check_copy`](Self::check_copy)); nothing changes then.
    pub fn copy_from(&mut self, src: &Planner<P>) -> Result<()>
    where
        P: PartialEq,
    {
        self.check_copy(src)?;
        self.copy_checked(src);
        Ok(())
    }

    /// [`copy_from`](Self::copy_from) after [`check_copy`](Self::check_copy).
    pub(crate) fn copy_checked(&mut self, src: &Planner<P>) {
        self.slots.copy_from(&src.slots);
        self.scores.copy_from_slice(&src.scores);
        self.last_weights.copy_from_slice(&src.last_weights);
        self.attended.copy_from_slice(&src.attended);
        self.next_position = src.next_position;
        self.evicted.clear();
        self.evicted.extend_from_slice(&src.evicted);
        self.evicted_positions.clear();
        self.evicted_positions.extend_from_slice(&src.evicted_positions);
    }

    /// Checks that [`truncate`](Self::truncate) can drop the last `n`
    /// inserted tokens. Changes nothing.
    ///
    /// # Errors
    /// [`Error::CannotTruncate`] if `n` exceeds the tokens ever inserted or
    /// one of the last `n` is no longer resident.
    pub fn check_truncate(&self, n: usize) -> Result<()> {
        let next = self.next_position;
        if n as u64 > next {
            return Err(Error::CannotTruncate { n, reason: "more tokens than were ever inserted" });
        }
        if self.slots.count_from(next - n as u64) != n {
            return Err(Error::CannotTruncate {
                n,
                reason: "one of the last n tokens was evicted",
            });
        }
        Ok(())
    }

    /// Drops the last `n` inserted tokens, which must all be resident
    /// (speculative decoding's rejected drafts): their slots are free again
    /// and [`next_position`](Self::next_position) goes back by `n`, so the
    /// next token gets the first dropped position. The recent window again
    /// holds the newest remaining tokens.
    ///
    /// Rolled back exactly: the slots (each dropped token's slot returns to
    /// where its insertion took it from, so the next insertions reuse the
    /// same slots), the recent window and the positions.
    ///
    /// What is **not** rolled back: the attention the dropped tokens' queries
    /// paid to older tokens stays in those tokens' accumulated scores, last
    /// weights and attention counts (the planner keeps no per-step history,
    /// which would cost `steps × span` memory), and tokens evicted while the
    /// dropped ones were decoded stay evicted. So decisions after a truncate
    /// can differ from a cache that never saw the drafts once a score-ranked
    /// eviction happens, while a policy that ignores scores (sliding window,
    /// sinks and window) decides exactly as that cache would. The last
    /// call's evictions are cleared; `n = 0` only clears them.
    /// O(`n · capacity`); allocates nothing.
    ///
    /// # Errors
    /// As [`check_truncate`](Self::check_truncate); nothing changes then.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        self.check_truncate(n)?;
        self.truncate_checked(n);
        Ok(())
    }

    /// [`truncate`](Self::truncate) after [`check_truncate`](Self::check_truncate).
    pub(crate) fn truncate_checked(&mut self, n: usize) {
        let from = self.next_position - n as u64;
        self.slots.truncate(from, self.next_position);
        self.next_position = from;
        self.clear_evicted();
    }

    /// Rebuilds a fresh planner's state from a snapshot's layout (the table
    /// checks its invariants first): `tokens` are `(slot, position, score)`
    /// in slot order; `stats` their `(last_weight, attended)` in the same
    /// order, or empty (an old snapshot: both restart at 0).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore(
        &mut self,
        states: &[SlotState],
        tokens: &[(usize, u64, f64)],
        stats: &[(f64, u64)],
        free: &[usize],
        recent: &[usize],
        next_position: u64,
        last_evicted: &[u64],
    ) -> core::result::Result<(), &'static str> {
        if tokens.len() > self.capacity() {
            return Err("more tokens than the store holds");
        }
        if !stats.is_empty() && stats.len() != tokens.len() {
            return Err("per-token statistics do not match the tokens");
        }
        let positions: Vec<u64> = tokens.iter().map(|t| t.1).collect();
        let mut sorted = positions.clone();
        sorted.sort_unstable();
        if last_evicted.windows(2).any(|w| w[0] >= w[1])
            || last_evicted.iter().any(|&p| p >= next_position || sorted.binary_search(&p).is_ok())
        {
            return Err("last evicted positions are not ascending, past or evicted");
        }
        self.slots.restore(states, &positions, free, recent, next_position)?;
        for &(s, _, score) in tokens {
            self.scores[s] = score;
        }
        for (&(s, _, _), &(last, attended)) in tokens.iter().zip(stats) {
            self.last_weights[s] = last;
            self.attended[s] = attended;
        }
        self.next_position = next_position;
        self.clear_evicted();
        self.evicted_positions.extend_from_slice(last_evicted);
        // Slots are not saved with the evictions: report them as unknown.
        self.evicted
            .extend(last_evicted.iter().map(|&position| Evicted { slot: usize::MAX, position }));
        Ok(())
    }
}

/// An evict-insert-attend step planned on an unchanged planner.
#[derive(Debug)]
pub(crate) struct EvictFirst {
    /// Slots to free, in eviction order.
    pub(crate) victims: SmallVec<[usize; 2]>,
    /// The slot the new token takes after the evictions.
    pub(crate) staged: Staged,
}
