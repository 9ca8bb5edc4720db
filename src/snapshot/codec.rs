//! Bytes in and out: little-endian fields, the FNV-1a checksum, and the
//! frame (header, payload, checksum) around every snapshot.

use super::SNAPSHOT_VERSION;
use super::element::element_name;
use crate::error::SnapshotError;
use crate::error::{Error, Result};

const MAGIC: [u8; 8] = *b"H2OKVSNP";
pub(super) const KIND_CACHE: u8 = 1;
pub(super) const KIND_LAYER: u8 = 2;
pub(super) const KIND_MODEL: u8 = 3;
/// Magic, version, kind, element type, payload length.
const HEADER: usize = 8 + 2 + 1 + 1 + 8;
const TRAILER: usize = 8;

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

pub(super) fn put_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_le_bytes());
}

pub(super) fn put_usize(out: &mut Vec<u8>, x: usize) {
    put_u64(out, x as u64);
}

pub(super) fn put_f64(out: &mut Vec<u8>, x: f64) {
    put_u64(out, x.to_bits());
}

/// Wraps a payload in the header and the checksum.
pub(super) fn frame(kind: u8, tag: u8, payload: &[u8]) -> Vec<u8> {
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

/// A little-endian u64 from exactly 8 bytes.
fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or_default())
}

/// Checks the frame and returns the format version and the payload.
fn unframe(bytes: &[u8], kind: u8, tag: u8) -> Result<(u16, &[u8])> {
    let truncated =
        |needed: usize| Error::Snapshot(SnapshotError::Truncated { needed, got: bytes.len() });
    if bytes.len() < MAGIC.len() {
        // Too short to tell; a prefix of the magic is a cut-off snapshot.
        return Err(if MAGIC.starts_with(bytes) {
            truncated(HEADER)
        } else {
            Error::Snapshot(SnapshotError::Magic)
        });
    }
    if bytes[..8] != MAGIC {
        return Err(Error::Snapshot(SnapshotError::Magic));
    }
    if bytes.len() < HEADER {
        return Err(truncated(HEADER));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(Error::Snapshot(SnapshotError::Version {
            found: version,
            supported: SNAPSHOT_VERSION,
        }));
    }
    let len = le_u64(&bytes[12..20]);
    let total = usize::try_from(len)
        .ok()
        .and_then(|n| n.checked_add(HEADER + TRAILER))
        .ok_or(truncated(usize::MAX))?;
    if bytes.len() < total {
        return Err(truncated(total));
    }
    if bytes.len() > total {
        return Err(Error::Snapshot(SnapshotError::Invalid {
            reason: "trailing bytes after the checksum",
        }));
    }
    let body = &bytes[..total - TRAILER];
    let stored = le_u64(&bytes[total - TRAILER..]);
    let computed = fnv1a64(body);
    if stored != computed {
        return Err(Error::Snapshot(SnapshotError::Checksum { stored, computed }));
    }
    let (found_kind, found_tag) = (bytes[10], bytes[11]);
    if found_kind != kind {
        let name = |k| match k {
            KIND_CACHE => "a single-head cache",
            KIND_LAYER => "a layer cache",
            KIND_MODEL => "a model cache",
            _ => "an unknown kind of cache",
        };
        return Err(Error::Snapshot(SnapshotError::Mismatch {
            expected: name(kind),
            found: name(found_kind),
        }));
    }
    if found_tag != tag {
        return Err(Error::Snapshot(SnapshotError::Mismatch {
            expected: element_name(tag),
            found: element_name(found_tag),
        }));
    }
    Ok((version, &body[HEADER..]))
}

pub(super) fn invalid(reason: &'static str) -> Error {
    Error::Snapshot(SnapshotError::Invalid { reason })
}

/// A cursor over the payload; running out is an invalid snapshot (the frame
/// already checked the declared length).
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    version: u16,
}

impl<'a> Reader<'a> {
    /// Checks the frame of a `kind` snapshot of `tag` elements and starts at
    /// its payload.
    pub(super) fn open(bytes: &'a [u8], kind: u8, tag: u8) -> Result<Self> {
        let (version, bytes) = unframe(bytes, kind, tag)?;
        Ok(Reader { bytes, version })
    }

    /// The format version of the snapshot being read (1 to
    /// [`SNAPSHOT_VERSION`]).
    pub(super) fn version(&self) -> u16 {
        self.version
    }

    /// Bytes of payload not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.bytes.len() {
            return Err(invalid("payload ends inside a field"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(le_u64(self.take(8)?))
    }

    pub(super) fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| invalid("a count does not fit in usize"))
    }

    pub(super) fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// A count of `width`-byte items that must fit in the rest of the payload.
    pub(super) fn count(&mut self, width: usize) -> Result<usize> {
        let n = self.usize()?;
        if n.checked_mul(width).is_none_or(|b| b > self.bytes.len()) {
            return Err(invalid("a list is longer than the payload"));
        }
        Ok(n)
    }

    pub(super) fn slot_list(&mut self) -> Result<Vec<usize>> {
        let n = self.count(8)?;
        (0..n).map(|_| self.usize()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        // Test vectors from the FNV reference (empty string, "a", "foobar").
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
