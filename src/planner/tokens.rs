//! The resident tokens as [`KvCache::tokens`](crate::KvCache::tokens)
//! reports them: position and accumulated score, in slot order.

use super::SlotState;

/// A resident token as reported by [`KvCache::tokens`](crate::KvCache::tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Token {
    /// Absolute token position.
    pub position: u64,
    /// Accumulated attention score (sum of softmax weights; no unit).
    pub score: f64,
}

/// Iterator over resident tokens, in slot order. See
/// [`KvCache::tokens`](crate::KvCache::tokens).
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    positions: &'a [u64],
    states: &'a [SlotState],
    scores: &'a [f64],
    slot: usize,
}

impl<'a> Tokens<'a> {
    /// Iterates over slots `0..states.len()`, skipping free ones.
    pub(super) fn new(positions: &'a [u64], states: &'a [SlotState], scores: &'a [f64]) -> Self {
        Self { positions, states, scores, slot: 0 }
    }
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        while self.slot < self.states.len() {
            let s = self.slot;
            self.slot += 1;
            if self.states[s] != SlotState::Free {
                return Some(Token { position: self.positions[s], score: self.scores[s] });
            }
        }
        None
    }
}
