//! The float types a cache can store, and the type each one accumulates in.

use core::fmt::Debug;
use core::ops::AddAssign;

use num_traits::Float;

/// The type attention arithmetic runs in: `f32` or `f64`.
///
/// Logits, softmax weights and output sums are computed in the accumulator of
/// the stored type (see [`Element::Acc`]); accumulated scores are always `f64`.
/// Sealed: implemented for `f32` and `f64` only (the kernels pick their SIMD
/// path through a crate-private supertrait).
pub trait Accumulator:
    sealed::AsF32 + Float + AddAssign + Debug + Default + Send + Sync + 'static
{
    /// Widens to `f64` (exact for `f32` and `f64`).
    fn widen(self) -> f64;
    /// Narrows from `f64`, rounding to nearest.
    fn narrow(x: f64) -> Self;
    /// Converts a `usize` (used for `sqrt(head_dim)`).
    fn from_usize(x: usize) -> Self;
}

/// The crate-private side of [`Accumulator`]: a trait in a private module,
/// so users can neither implement [`Accumulator`] nor call these casts.
mod sealed {
    /// Views a slice of an accumulator type as `f32` when it is `f32`, so the
    /// kernels can take their SIMD path; `None` for other types.
    pub trait AsF32: Sized {
        /// `xs` itself when `Self` is `f32`.
        #[inline]
        fn as_f32s(xs: &[Self]) -> Option<&[f32]> {
            let _ = xs;
            None
        }

        /// The mutable form of [`as_f32s`](Self::as_f32s).
        #[inline]
        fn as_f32s_mut(xs: &mut [Self]) -> Option<&mut [f32]> {
            let _ = xs;
            None
        }
    }

    impl AsF32 for f32 {
        #[inline]
        fn as_f32s(xs: &[f32]) -> Option<&[f32]> {
            Some(xs)
        }
        #[inline]
        fn as_f32s_mut(xs: &mut [f32]) -> Option<&mut [f32]> {
            Some(xs)
        }
    }

    impl AsF32 for f64 {}
}

#[cfg(any(feature = "simd", test))]
pub(crate) use sealed::AsF32;

impl Accumulator for f32 {
    #[inline]
    fn widen(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn narrow(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn from_usize(x: usize) -> Self {
        x as f32
    }
}

impl Accumulator for f64 {
    #[inline]
    fn widen(self) -> f64 {
        self
    }
    #[inline]
    fn narrow(x: f64) -> Self {
        x
    }
    #[inline]
    fn from_usize(x: usize) -> Self {
        x as f64
    }
}

/// A key/value element type: `f32`, `f64`, and with the `half` feature
/// `half::f16` and `half::bf16`.
///
/// | type | stored as | attention computed in |
/// |---|---|---|
/// | `f32` | f32 | f32 |
/// | `f64` | f64 | f64 |
/// | `half::f16` | f16 | f32 |
/// | `half::bf16` | bf16 | f32 |
///
/// Half types accumulate in f32 because rounding a logit to f16 before the
/// softmax loses precision and can overflow to infinity.
pub trait Element: Copy + Debug + Default + PartialEq + Send + Sync + 'static {
    /// The type logits, weights and outputs are computed in.
    type Acc: Accumulator;
    /// Widens to the accumulator type.
    fn to_acc(self) -> Self::Acc;
    /// Narrows from the accumulator type, rounding to nearest.
    fn from_acc(x: Self::Acc) -> Self;
    /// Widens to `f64`, for error reports and tests.
    fn to_f64(self) -> f64;
    /// Whether the value is neither NaN nor infinite.
    fn is_finite(self) -> bool;

    /// `xs` itself when `Self` is its own accumulator type (f32, f64), so the
    /// kernels can read stored rows without converting them.
    #[inline]
    fn as_acc_slice(xs: &[Self]) -> Option<&[Self::Acc]> {
        let _ = xs;
        None
    }

    /// Widens `src` into `dst` element by element; `dst.len() == src.len()`.
    ///
    /// The kernels call this on blocks of rows, so half types can use a
    /// vectorized slice conversion instead of one call per element.
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [Self::Acc]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_acc();
        }
    }
}

impl Element for f32 {
    type Acc = f32;
    #[inline]
    fn to_acc(self) -> f32 {
        self
    }
    #[inline]
    fn from_acc(x: f32) -> Self {
        x
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    #[inline]
    fn as_acc_slice(xs: &[f32]) -> Option<&[f32]> {
        Some(xs)
    }
}

impl Element for f64 {
    type Acc = f64;
    #[inline]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline]
    fn from_acc(x: f64) -> Self {
        x
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
    #[inline]
    fn as_acc_slice(xs: &[f64]) -> Option<&[f64]> {
        Some(xs)
    }
}

#[cfg(feature = "half")]
impl Element for half::f16 {
    type Acc = f32;
    #[inline]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn from_acc(x: f32) -> Self {
        half::f16::from_f32(x)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    #[inline]
    fn is_finite(self) -> bool {
        half::f16::is_finite(self)
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        // AVX2 bit manipulation, 8 at a time in one dispatched loop (feature
        // `simd`); else F16C (runtime-detected) through `half`, one call per
        // 8 elements. An exact branch-free software widening that the
        // compiler vectorizes with SSE2 measured 1.7× slower than `half` on
        // x86-64 (see BENCHMARKS.md).
        use half::slice::HalfFloatSliceExt;
        #[cfg(feature = "simd")]
        if crate::arch::widen_f16(src.reinterpret_cast(), dst) {
            return;
        }
        src.convert_to_f32_slice(dst);
    }
}

#[cfg(feature = "half")]
impl Element for half::bf16 {
    type Acc = f32;
    #[inline]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline]
    fn from_acc(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    #[inline]
    fn is_finite(self) -> bool {
        half::bf16::is_finite(self)
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        // A bf16 is the high half of an f32: the widening is a shift, which
        // the compiler vectorizes.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
}

/// Returns the index and value of the first non-finite element, if any.
#[inline]
pub(crate) fn first_non_finite<T: Element>(xs: &[T]) -> Option<(usize, f64)> {
    // A branch-free fold first: the common case (all finite) stays one pass.
    if xs.iter().all(|x| x.is_finite()) {
        return None;
    }
    xs.iter().position(|x| !x.is_finite()).map(|i| (i, xs[i].to_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_non_finite() {
        assert_eq!(first_non_finite(&[1.0f32, 2.0]), None);
        let (i, v) = first_non_finite(&[1.0f32, f32::INFINITY, f32::NAN]).unwrap();
        assert_eq!(i, 1);
        assert!(v.is_infinite());
        // Subnormals are finite and accepted.
        assert_eq!(first_non_finite(&[f32::MIN_POSITIVE / 2.0]), None);
    }

    #[cfg(feature = "half")]
    #[test]
    fn half_widening_matches_the_half_crate_for_every_bit_pattern() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let f16s: Vec<half::f16> = all.iter().map(|&b| half::f16::from_bits(b)).collect();
        let bf16s: Vec<half::bf16> = all.iter().map(|&b| half::bf16::from_bits(b)).collect();
        let mut got = vec![0.0f32; all.len()];
        half::f16::widen_slice(&f16s, &mut got);
        for (x, g) in f16s.iter().zip(&got) {
            let want = x.to_f32();
            assert!(want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()), "{x:?}");
        }
        half::bf16::widen_slice(&bf16s, &mut got);
        for (x, g) in bf16s.iter().zip(&got) {
            let want = x.to_f32();
            assert!(want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()), "{x:?}");
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(f32::from_acc(1.5f32.to_acc()), 1.5);
        assert_eq!(<f64 as Element>::to_f64(2.25), 2.25);
    }
}
