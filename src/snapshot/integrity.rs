//! etcd's own integrity check of a snapshot stream, done while the bytes pass.
//!
//! etcd's Maintenance Snapshot sends the bolt database and then, as the stream's last 32 bytes,
//! the sha256 of that database. `etcdutl snapshot restore` recognises the trailer by the size
//! alone (`hasChecksum`: `size % 512 == 32`, as a database is whole pages) and compares it with
//! the sha256 of everything before it. [`EtcdChecksum`] does the same in one pass with a 32-byte
//! window: every byte is hashed once it is known not to belong to the trailer.

use sha2::{Digest, Sha256 as Hasher};

/// Bytes of etcd's trailing checksum.
pub const TRAILER_BYTES: usize = 32;
/// A database is whole sectors of this size; with its trailer a snapshot is `n * 512 + 32`.
const SECTOR_BYTES: u64 = 512;

/// Why a stream is not a whole etcd snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    #[error(
        "{size} bytes is not a database followed by etcd's sha256 (size % 512 must be 32): \
         the stream was cut or is not an etcd snapshot"
    )]
    NoTrailer { size: u64 },
    #[error("etcd's trailing sha256 does not match the database it follows: the bytes changed")]
    Mismatch,
}

/// The running check of one stream; feed every byte in order, then [`EtcdChecksum::finish`].
#[derive(Debug, Clone, Default)]
pub struct EtcdChecksum {
    database: Hasher,
    /// The last bytes seen, at most [`TRAILER_BYTES`], not hashed yet.
    window: Vec<u8>,
    size: u64,
}

impl EtcdChecksum {
    /// Takes the next bytes of the stream.
    pub fn update(&mut self, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        if chunk.len() >= TRAILER_BYTES {
            let (body, tail) = chunk.split_at(chunk.len() - TRAILER_BYTES);
            self.database.update(&self.window);
            self.database.update(body);
            self.window.clear();
            self.window.extend_from_slice(tail);
        } else {
            self.window.extend_from_slice(chunk);
            let excess = self.window.len().saturating_sub(TRAILER_BYTES);
            self.database.update(&self.window[..excess]);
            self.window.drain(..excess);
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The sha256 of every byte seen, trailer included: the database's running hash finished
    /// with the last bytes held back, so the stream is hashed once for both digests.
    pub fn raw_sha256(&self) -> [u8; 32] {
        let mut all = self.database.clone();
        all.update(&self.window);
        all.finalize().into()
    }

    /// Whether the stream seen was a database followed by its matching sha256.
    pub fn finish(self) -> Result<(), IntegrityError> {
        let size = self.size;
        if size < TRAILER_BYTES as u64 || size % SECTOR_BYTES != TRAILER_BYTES as u64 {
            return Err(IntegrityError::NoTrailer { size });
        }
        if self.database.finalize().as_slice() == self.window.as_slice() {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake snapshot: `pages` sectors of patterned bytes, then their sha256.
    fn snapshot(sectors: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..sectors * 512).map(|i| (i * 7 % 251) as u8).collect();
        let digest = Hasher::digest(&bytes);
        bytes.extend_from_slice(&digest);
        bytes
    }

    fn check(bytes: &[u8], chunk: usize) -> Result<(), IntegrityError> {
        let mut sum = EtcdChecksum::default();
        for piece in bytes.chunks(chunk) {
            sum.update(piece);
        }
        assert_eq!(sum.size(), bytes.len() as u64);
        sum.finish()
    }

    #[test]
    fn a_whole_snapshot_passes_whatever_the_chunking() {
        let good = snapshot(9);
        for chunk in [1, 5, 31, 32, 33, 512, 1000, good.len()] {
            assert_eq!(check(&good, chunk), Ok(()), "chunks of {chunk}");
        }
    }

    #[test]
    fn the_raw_digest_is_every_byte_seen_whatever_the_chunking() {
        let good = snapshot(9);
        for bytes in [&good[..], &good[..10], &good[..0]] {
            for chunk in [1, 5, 31, 32, 33, 512, 1000, good.len()] {
                let mut sum = EtcdChecksum::default();
                for piece in bytes.chunks(chunk) {
                    sum.update(piece);
                }
                let want: [u8; 32] = Hasher::digest(bytes).into();
                assert_eq!(
                    sum.raw_sha256(),
                    want,
                    "{} bytes in chunks of {chunk}",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn a_changed_cut_or_foreign_stream_is_refused() {
        let good = snapshot(9);
        let flipped = |at: usize| {
            let mut bytes = good.clone();
            bytes[at] ^= 1;
            bytes
        };
        let cases = [
            (
                "a byte of the database",
                flipped(100),
                IntegrityError::Mismatch,
            ),
            (
                "a byte of the trailer",
                flipped(good.len() - 1),
                IntegrityError::Mismatch,
            ),
            (
                "cut mid-database",
                good[..1000].to_vec(),
                IntegrityError::NoTrailer { size: 1000 },
            ),
            (
                "cut at a sector plus 32",
                good[..512 * 3 + 32].to_vec(),
                IntegrityError::Mismatch,
            ),
            ("empty", Vec::new(), IntegrityError::NoTrailer { size: 0 }),
            (
                "a database without trailer",
                good[..512 * 9].to_vec(),
                IntegrityError::NoTrailer { size: 512 * 9 },
            ),
        ];
        for (what, bytes, want) in cases {
            for chunk in [1, 33, 4096] {
                assert_eq!(
                    check(&bytes, chunk),
                    Err(want.clone()),
                    "{what}, chunks of {chunk}"
                );
            }
        }
    }
}
