//! Run-time CPU feature detection for the SIMD code, and the one SIMD routine
//! the element types need (f16 widening).
//!
//! A leaf module: it uses nothing else from this crate, so both
//! the element types (f16 widening) and the kernels (attention) can
//! call it without importing each other. `pulp` detects the instruction set
//! once (cached here); this crate stays free of `unsafe`. Without AVX2 + FMA
//! (pulp's scalar level) every entry point here reports "no SIMD" and callers
//! run their portable code.

use std::sync::OnceLock;

use pulp::Arch;
#[cfg(all(feature = "half", any(target_arch = "x86", target_arch = "x86_64")))]
use pulp::Simd;

/// The detected instruction set, `None` without AVX2 + FMA (or inside
/// [`tests::scalar`] on this thread).
pub(crate) fn arch() -> Option<Arch> {
    static ARCH: OnceLock<Option<Arch>> = OnceLock::new();
    #[cfg(test)]
    if tests::FORCE_SCALAR.with(std::cell::Cell::get) {
        return None;
    }
    *ARCH.get_or_init(|| match Arch::new() {
        Arch::Scalar => None,
        simd => Some(simd),
    })
}

/// The instruction set the kernels run with on this machine: `"avx2+fma"`
/// or `"scalar"`.
pub(crate) fn isa() -> &'static str {
    if arch().is_some() { "avx2+fma" } else { "scalar" }
}

/// Widens f16 bit patterns to f32 (exactly, as `half::f16::to_f32` does;
/// NaNs stay NaN), 8 at a time in AVX2; `false` (nothing written) without
/// AVX2 + FMA. `dst.len() == src.len()`.
///
/// Without F16C in pulp's x86-v3 level, the conversion is done on the bits:
/// the exponent and mantissa shifted into place and multiplied by 2^112
/// (which rebiases the exponent and normalizes subnormals exactly), the sign
/// put back, and infinities/NaNs given an all-ones exponent.
#[cfg(feature = "half")]
pub(crate) fn widen_f16(src: &[u16], dst: &mut [f32]) -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(Arch::V3(simd)) = arch() {
        simd.vectorize(WidenF16 { simd, src, dst });
        return true;
    }
    let _ = (src, dst);
    false
}

#[cfg(all(feature = "half", any(target_arch = "x86", target_arch = "x86_64")))]
struct WidenF16<'a> {
    simd: pulp::x86::V3,
    src: &'a [u16],
    dst: &'a mut [f32],
}

/// 2^112: the f32 exponent bias minus the f16 one is 127 − 15 = 112.
#[cfg(feature = "half")]
const F16_REBIAS: f32 = 5.192_297e33;

/// One f16 widened the way [`WidenF16`] does it, for the tail.
#[cfg(feature = "half")]
#[inline(always)]
fn widen_one(h: u16) -> f32 {
    let x = u32::from(h);
    let em = x & 0x7fff;
    let mag = f32::from_bits(em << 13) * F16_REBIAS;
    let special = if em > 0x7bff { 0x7f80_0000 } else { 0 };
    f32::from_bits(mag.to_bits() | ((x & 0x8000) << 16) | special)
}

#[cfg(all(feature = "half", any(target_arch = "x86", target_arch = "x86_64")))]
impl pulp::NullaryFnOnce for WidenF16<'_> {
    type Output = ();
    #[inline(always)]
    fn call(self) {
        let Self { simd, src, dst } = self;
        let (s8, s_tail) = pulp::as_arrays::<8, u16>(src);
        let (d8, d_tail) = pulp::as_arrays_mut::<8, f32>(dst);
        let low = simd.splat_u32s(0x7fff);
        let sign_bit = simd.splat_u32s(0x8000);
        let max_finite = simd.splat_u32s(0x7bff);
        let exp_ones = simd.splat_u32s(0x7f80_0000);
        let zero = simd.splat_u32s(0);
        let rebias = simd.splat_f32s(F16_REBIAS);
        for (s, d) in s8.iter().zip(d8.iter_mut()) {
            let x = simd.convert_u16x8_to_u32x8(pulp::cast(*s));
            let em = simd.and_u32s(x, low);
            let sign = simd.shl_const_u32x8::<16>(simd.and_u32s(x, sign_bit));
            let mag = simd.mul_f32s(pulp::cast(simd.shl_const_u32x8::<13>(em)), rebias);
            let special = simd.select_u32s(simd.greater_than_u32s(em, max_finite), exp_ones, zero);
            let bits = simd.or_u32s(simd.or_u32s(pulp::cast(mag), sign), special);
            *d = pulp::cast(bits);
        }
        for (s, d) in s_tail.iter().zip(d_tail) {
            *d = widen_one(*s);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    thread_local! {
        /// Set by a test to run the scalar kernels on this thread.
        pub(super) static FORCE_SCALAR: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `f` with the SIMD code switched off on this thread.
    pub(crate) fn scalar<R>(f: impl FnOnce() -> R) -> R {
        FORCE_SCALAR.with(|c| c.set(true));
        let r = f();
        FORCE_SCALAR.with(|c| c.set(false));
        r
    }
}
