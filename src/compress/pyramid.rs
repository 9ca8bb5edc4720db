//! Per-layer budget schedules: how a model's total token budget is shared
//! between its layers (PyramidKV: Cai et al., *PyramidKV: Dynamic KV Cache
//! Compression based on Pyramidal Information Funneling*, 2024,
//! arXiv:2406.02069, §3.2).
//!
//! PyramidKV observes that attention is spread widely in the lower layers and
//! concentrated in the upper ones, and gives the lower layers more tokens:
//!
//! ```text
//! S      = total − n · reserve            (the part the schedule shares)
//! avg    = S / n
//! min    = avg / beta                     (the top layer)
//! max    = 2 · avg − min                  (the bottom layer)
//! layer i gets  max − (max − min) · i / (n − 1)       (an arithmetic sequence)
//! ```
//!
//! The shares sum to `S` exactly as real numbers. Rounding is done exactly,
//! in integer arithmetic, by largest remainder: every layer gets the floor of
//! its share, and the tokens left over go one each to the layers with the
//! largest fractional parts (ties to the lower layer). The result sums to
//! `total`, is non-increasing from layer 0 up, and differs from the real
//! share by less than one token per layer. (The authors' code floors a
//! common step instead, which can lose up to `n − 1` tokens of the total.)

use crate::error::{Error, Result};

/// How a total budget is shared across layers, layer 0 (nearest the
/// embeddings) first.
///
/// # Example
/// ```
/// use h2o_kv::compress::LayerSchedule;
///
/// // 4 layers share 100 tokens; PyramidKV with beta = 2: 37.5 … 12.5 tokens.
/// let mut budgets = [0; 4];
/// LayerSchedule::Pyramid { beta: 2 }.split(100, 0, &mut budgets)?;
/// assert_eq!(budgets, [38, 29, 21, 12]);
/// LayerSchedule::Uniform.split(102, 0, &mut budgets)?;
/// assert_eq!(budgets, [26, 26, 25, 25]);
/// # Ok::<(), h2o_kv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerSchedule {
    /// Every layer the same share; the remainder of `S / n` goes one token
    /// each to the lowest layers.
    #[default]
    Uniform,
    /// PyramidKV's linear decrease: the top layer gets `1 / beta` of the
    /// average share, the bottom layer `2 − 1 / beta` of it. `beta = 1` is
    /// [`Uniform`](Self::Uniform); the authors use 20.
    Pyramid {
        /// Ratio of the average share to the top layer's share (at least 1).
        beta: u32,
    },
}

impl LayerSchedule {
    /// The authors' `beta`.
    pub const PYRAMID_BETA: u32 = 20;

    /// PyramidKV with the authors' `beta = 20`.
    #[must_use]
    pub fn pyramid() -> Self {
        LayerSchedule::Pyramid { beta: Self::PYRAMID_BETA }
    }

    /// A short name for tables and logs: `"uniform"` or `"pyramid"`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            LayerSchedule::Uniform => "uniform",
            LayerSchedule::Pyramid { .. } => "pyramid",
        }
    }

    /// Writes each layer's budget into `budgets` (one entry per layer, in
    /// tokens): `reserve` tokens for every layer (PyramidKV keeps the
    /// observation window outside the schedule), plus its share of the rest.
    /// The entries sum to `total`. O(n²) in the number of layers at worst
    /// (the rounding), no allocation.
    ///
    /// # Errors
    /// - [`Error::InvalidParameter`] for no layers or `beta == 0`;
    /// - [`Error::BudgetTooSmall`] if `total < n · reserve` or some layer
    ///   would get zero tokens (a steep pyramid over a small total);
    /// - [`Error::BudgetTooLarge`] if a layer's budget would exceed
    ///   [`MAX_BUDGET`](crate::MAX_BUDGET).
    ///
    /// `budgets` is unchanged on error.
    pub fn split(&self, total: usize, reserve: usize, budgets: &mut [usize]) -> Result<()> {
        let n = budgets.len();
        if n == 0 {
            return Err(Error::InvalidParameter {
                what: "layers",
                value: 0.0,
                expected: "at least one layer",
            });
        }
        let beta = match *self {
            LayerSchedule::Uniform => 1,
            LayerSchedule::Pyramid { beta: 0 } => {
                return Err(Error::InvalidParameter {
                    what: "pyramid beta",
                    value: 0.0,
                    expected: "at least 1",
                });
            }
            LayerSchedule::Pyramid { beta } => u128::from(beta),
        };
        let too_small = Error::BudgetTooSmall { total, parts: n, needed: reserve.max(1) };
        let reserved = reserve.checked_mul(n).filter(|&r| r <= total).ok_or(too_small.clone())?;
        let (s, n128) = ((total - reserved) as u128, n as u128);
        // Share of layer i = s · (a − c·i) / den, exactly (see the module docs).
        let (a, c, den) = if n == 1 || beta == 1 {
            (1, 0, n128)
        } else {
            ((2 * beta - 1) * (n128 - 1), 2 * (beta - 1), n128 * beta * (n128 - 1))
        };
        let overflow = Error::InvalidParameter {
            what: "pyramid beta",
            value: beta as f64,
            expected: "small enough for the layer count",
        };
        s.checked_mul(a).ok_or(overflow)?;
        let num = |i: usize| s * (a - c * i as u128);
        let floor = |i: usize| (num(i) / den) as usize;
        let rem = |i: usize| num(i) % den;
        let left = (s as usize) - (0..n).map(floor).sum::<usize>();
        // Largest remainder, ties to the lower layer: layer i gets one more
        // token if fewer than `left` layers rank before it.
        let bumped = |i: usize| {
            let ahead = (0..n).filter(|&j| rem(j) > rem(i) || (rem(j) == rem(i) && j < i)).count();
            usize::from(ahead < left)
        };
        let budget = |i: usize| reserve + floor(i) + bumped(i);
        // Validate every layer before writing any.
        for i in 0..n {
            let b = budget(i);
            if b == 0 {
                return Err(too_small);
            }
            if b > crate::MAX_BUDGET {
                return Err(Error::BudgetTooLarge { budget: b, max: crate::MAX_BUDGET });
            }
        }
        for (i, b) in budgets.iter_mut().enumerate() {
            *b = budget(i);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: LayerSchedule, total: usize, reserve: usize, n: usize) -> Result<Vec<usize>> {
        let mut b = vec![0; n];
        s.split(total, reserve, &mut b).map(|()| b)
    }

    #[test]
    fn uniform_by_hand() {
        assert_eq!(split(LayerSchedule::Uniform, 10, 0, 3).unwrap(), [4, 3, 3]);
        assert_eq!(split(LayerSchedule::Uniform, 12, 2, 3).unwrap(), [4, 4, 4]);
        assert_eq!(split(LayerSchedule::Uniform, 7, 0, 1).unwrap(), [7]);
    }

    #[test]
    fn pyramid_by_hand() {
        // beta 2, S = 100, n = 4: 37.5, 29.17, 20.83, 12.5 → floors 37, 29,
        // 20, 12 (98); the 2 left go to .83 (layer 2) and the first .5 (layer 0).
        let p2 = LayerSchedule::Pyramid { beta: 2 };
        assert_eq!(split(p2, 100, 0, 4).unwrap(), [38, 29, 21, 12]);
        assert_eq!(split(p2, 132, 8, 4).unwrap(), [46, 37, 29, 20]);
        // beta 20, S = 256: 124.8, 84.27, 43.73, 3.2 → [125, 84, 44, 3].
        assert_eq!(split(LayerSchedule::pyramid(), 256, 0, 4).unwrap(), [125, 84, 44, 3]);
        // beta 1 is uniform.
        assert_eq!(
            split(LayerSchedule::Pyramid { beta: 1 }, 10, 0, 3).unwrap(),
            split(LayerSchedule::Uniform, 10, 0, 3).unwrap()
        );
    }

    #[test]
    fn totals_are_exact_and_shapes_monotone() {
        for n in 1..12 {
            for total in [n, n + 1, 3 * n + 2, 97, 1000, 4099] {
                for beta in [1, 2, 3, 7, 20] {
                    let s = LayerSchedule::Pyramid { beta };
                    let Ok(b) = split(s, total, 0, n) else {
                        continue;
                    };
                    assert_eq!(b.iter().sum::<usize>(), total, "{n} {total} {beta}");
                    assert!(b.windows(2).all(|w| w[0] >= w[1]), "{b:?}");
                    assert!(b.iter().all(|&x| x >= 1));
                    // Within one token of the real share.
                    let (sf, nf, bf) = (total as f64, n as f64, f64::from(beta));
                    let (lo, hi) = (sf / nf / bf, 2.0 * sf / nf - sf / nf / bf);
                    for (i, &x) in b.iter().enumerate() {
                        let real = if n == 1 { sf } else { hi - (hi - lo) * i as f64 / (nf - 1.0) };
                        assert!((x as f64 - real).abs() < 1.0 + 1e-9, "{b:?} layer {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        let mut b = [9usize; 3];
        let e = LayerSchedule::Uniform.split(2, 0, &mut b).unwrap_err();
        assert_eq!(e, Error::BudgetTooSmall { total: 2, parts: 3, needed: 1 });
        assert!(LayerSchedule::Uniform.split(5, 2, &mut b).is_err());
        assert!(LayerSchedule::Pyramid { beta: 0 }.split(30, 0, &mut b).is_err());
        // beta 20 over 3 layers of 6 tokens: the top layer's share 0.1 → 0.
        assert!(LayerSchedule::pyramid().split(6, 0, &mut b).is_err());
        assert_eq!(b, [9; 3]);
        assert!(LayerSchedule::Uniform.split(1, 0, &mut []).is_err());
        let mut one = [0];
        assert!(matches!(
            LayerSchedule::Uniform.split(crate::MAX_BUDGET + 1, 0, &mut one),
            Err(Error::BudgetTooLarge { .. })
        ));
    }
}
