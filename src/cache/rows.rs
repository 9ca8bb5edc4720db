//! The key/value rows of one head: `[slots × head_dim]` each, row `s`
//! holding the token in slot `s` (the slot numbers come from the
//! [`Planner`](crate::Planner)). Copies rows in; no arithmetic, no decisions.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::planner::try_vec;

/// Keys and values, allocated once.
#[derive(Debug, Clone)]
pub(super) struct Rows<T> {
    head_dim: usize,
    /// `[slots × head_dim]`, row-major.
    keys: Vec<T>,
    /// `[slots × head_dim]`, row-major.
    values: Vec<T>,
}

impl<T: Element> Rows<T> {
    /// `slots` rows of `head_dim` elements for keys and for values.
    pub(super) fn new(slots: usize, head_dim: usize) -> Result<Self> {
        let elems =
            slots.checked_mul(head_dim).ok_or(Error::AllocationFailed { bytes: usize::MAX })?;
        Ok(Self {
            head_dim,
            keys: try_vec(elems, T::default())?,
            values: try_vec(elems, T::default())?,
        })
    }

    pub(super) fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Keys of slots `0..rows`, `[rows × head_dim]`.
    pub(super) fn keys(&self, rows: usize) -> &[T] {
        &self.keys[..rows * self.head_dim]
    }

    /// Values of slots `0..rows`, `[rows × head_dim]`.
    pub(super) fn values(&self, rows: usize) -> &[T] {
        &self.values[..rows * self.head_dim]
    }

    /// The key row of `slot`.
    pub(super) fn key(&self, slot: usize) -> &[T] {
        &self.keys[slot * self.head_dim..][..self.head_dim]
    }

    /// The value row of `slot`.
    pub(super) fn value(&self, slot: usize) -> &[T] {
        &self.values[slot * self.head_dim..][..self.head_dim]
    }

    /// Copies rows `0..rows` of `src` (the same `head_dim`, at least as many
    /// slots) into this store.
    pub(super) fn copy_from(&mut self, src: &Rows<T>, rows: usize) {
        let n = rows * self.head_dim;
        self.keys[..n].copy_from_slice(&src.keys[..n]);
        self.values[..n].copy_from_slice(&src.values[..n]);
    }

    /// Copies a key and a value into `slot`'s rows.
    pub(super) fn write(&mut self, slot: usize, key: &[T], value: &[T]) {
        let d = self.head_dim;
        self.keys[slot * d..][..d].copy_from_slice(key);
        self.values[slot * d..][..d].copy_from_slice(value);
    }
}
