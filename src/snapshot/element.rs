//! The element types a snapshot can store, and their header tags.

use super::sealed;
use crate::element::Element;

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

/// Implements [`SnapshotElement`] for a float stored as its bits: the float
/// type, its tag, its width in bytes and the unsigned type of that width.
macro_rules! as_bits {
    ($float:ty, $tag:literal, $bytes:literal, $bits:ty) => {
        impl SnapshotElement for $float {
            const TAG: u8 = $tag;
            const BYTES: usize = $bytes;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_bits().to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                <$float>::from_bits(<$bits>::from_le_bytes(bytes.try_into().unwrap_or_default()))
            }
        }
    };
}

as_bits!(f32, 1, 4, u32);
as_bits!(f64, 2, 8, u64);
#[cfg(feature = "half")]
as_bits!(half::f16, 3, 2, u16);
#[cfg(feature = "half")]
as_bits!(half::bf16, 4, 2, u16);

/// The name of the element type a header tag stands for, as
/// [`SnapshotError::Mismatch`](crate::SnapshotError::Mismatch) reports it.
pub(super) fn element_name(tag: u8) -> &'static str {
    match tag {
        1 => "f32",
        2 => "f64",
        3 => "f16",
        4 => "bf16",
        _ => "an unknown element type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `x`, reads it back, and checks the width, the bits and the name.
    fn round_trip<T: SnapshotElement>(x: T, name: &str) {
        let mut out = vec![0xAA];
        x.put(&mut out);
        assert_eq!(out.len(), 1 + T::BYTES);
        assert_eq!(T::get(&out[1..]).to_f64().to_bits(), x.to_f64().to_bits());
        assert_eq!(element_name(T::TAG), name);
    }

    #[test]
    fn elements_round_trip_with_their_width_and_name() {
        round_trip(-1.5e-40f32, "f32");
        round_trip(f64::MIN_POSITIVE / 3.0, "f64");
        #[cfg(feature = "half")]
        {
            round_trip(half::f16::from_f32(-0.333), "f16");
            round_trip(half::bf16::from_f32(3.0e38), "bf16");
        }
        // 1.5 is 0x3FC0_0000; little-endian puts the low byte first.
        let mut out = Vec::new();
        1.5f32.put(&mut out);
        assert_eq!(out, [0x00, 0x00, 0xC0, 0x3F]);
    }
}
