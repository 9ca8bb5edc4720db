//! Rotary position embedding at absolute positions, with no table limit.

use candle_core::{Device, Tensor};

use super::config::RopeLayout;
use crate::error::Result;

/// RoPE for one head size and base: rotates element pairs of each head by
/// `position · θ_i`, `θ_i = base^(−2i/head_dim)`.
///
/// The angles are computed per call for the positions asked, in f32 as
/// candle's own Llama does, so any position works (also past the trained
/// context, which an evicting cache can reach).
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    inv_freq: Vec<f32>,
    layout: RopeLayout,
}

impl Rope {
    pub(crate) fn new(head_dim: usize, theta: f32, layout: RopeLayout) -> Self {
        let inv_freq = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        Self { inv_freq, layout }
    }

    /// `cos` and `sin` tables `[positions.len(), head_dim / 2]`.
    fn tables(&self, positions: &[u64], device: &Device) -> Result<(Tensor, Tensor)> {
        let (seq, half) = (positions.len(), self.inv_freq.len());
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for &p in positions {
            let p = p as f32;
            for &f in &self.inv_freq {
                let a = p * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (seq, half), device)?,
            Tensor::from_vec(sin, (seq, half), device)?,
        ))
    }

    /// Rotates `x` `[seq, heads, head_dim]` (row `t` at position `start + t`).
    pub(crate) fn apply(&self, x: &Tensor, start: u64) -> Result<Tensor> {
        let (seq, _, _) = x.dims3()?;
        let positions: Vec<u64> = (start..start + seq as u64).collect();
        self.apply_at(x, &positions)
    }

    /// Rotates `x` `[rows, heads, head_dim]`, row `t` at `positions[t]`.
    pub(crate) fn apply_at(&self, x: &Tensor, positions: &[u64]) -> Result<Tensor> {
        let (cos, sin) = self.tables(positions, x.device())?;
        let x = x.transpose(0, 1)?.unsqueeze(0)?.contiguous()?; // [1, heads, rows, d]
        let y = match self.layout {
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
            RopeLayout::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
        };
        Ok(y.squeeze(0)?.transpose(0, 1)?.contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_rotates_adjacent_pairs_by_position_times_frequency() {
        let (d, theta) = (4, 100_000f32);
        let rope = Rope::new(d, theta, RopeLayout::Interleaved);
        let x = Tensor::new(&[[[1f32, 0.0, 0.0, 1.0]]], &Device::Cpu).unwrap(); // [1, 1, 4]
        let y = rope.apply(&x, 7).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a0, a1) = (7.0f64, 7.0 * (theta as f64).powf(-2.0 / 4.0));
        let want = [a0.cos(), a0.sin(), -a1.sin(), a1.cos()];
        for (g, w) in y.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn halves_pairs_i_with_i_plus_half() {
        let rope = Rope::new(4, 10_000.0, RopeLayout::Halves);
        let x = Tensor::new(&[[[1f32, 0.0, 0.0, 0.0]]], &Device::Cpu).unwrap();
        let y = rope.apply(&x, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a = 3.0f64;
        let want = [a.cos(), 0.0, a.sin(), 0.0];
        for (g, w) in y.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{y:?} vs {want:?}");
        }
    }
}
