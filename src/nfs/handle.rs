//! File handles: (share, file id, generation) and a MAC over them, 25 bytes.
//!
//! A client may send any bytes as a handle, so a handle proves itself: the last 8
//! bytes are HMAC-SHA256 of the rest, keyed with a secret kept in the share's
//! metadata store (made from the OS CSPRNG when the cache is created). Guessing
//! file ids and generations therefore yields nothing (issue 14: a client recovered
//! the old xorshift generations from two of its own handles and read a file in
//! another user's 0700 directory). File ids are never reused and the share id and
//! the key live in the cache, so handles stay valid across restarts; a handle of a
//! deleted file is STALE, one whose MAC does not verify BADHANDLE. Handles of
//! format 1 (no MAC, before this version) answer STALE: clients remount.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const VERSION: u8 = 2;
/// Format 1: (share, file id, generation) without a MAC.
const OLD_VERSION: u8 = 1;
const BODY_LEN: usize = 17;
const MAC_LEN: usize = 8;
pub const HANDLE_LEN: usize = BODY_LEN + MAC_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle {
    pub share_id: u32,
    pub file_id: u64,
    pub generation: u32,
}

/// Why bytes sent as a handle are not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHandle {
    /// Not a handle this gateway makes (length, version).
    Malformed,
    /// A handle of the format before MACs: answered STALE (clients remount).
    Old,
    /// The MAC does not verify: forged or corrupted.
    Forged,
}

fn mac(key: &[u8; 32]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length")
}

impl Handle {
    pub fn encode(&self, key: &[u8; 32]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HANDLE_LEN);
        v.push(VERSION);
        v.extend_from_slice(&self.share_id.to_be_bytes());
        v.extend_from_slice(&self.file_id.to_be_bytes());
        v.extend_from_slice(&self.generation.to_be_bytes());
        let mut m = mac(key);
        m.update(&v);
        v.extend_from_slice(&m.finalize().into_bytes()[..MAC_LEN]);
        v
    }

    /// The share a handle names, read before its MAC can be checked (the key is
    /// the share's). Nothing else of an unchecked handle may be used.
    pub fn share_of(b: &[u8]) -> Result<u32, BadHandle> {
        match (b.len(), b.first()) {
            (HANDLE_LEN, Some(&VERSION)) => Ok(u32::from_be_bytes(b[1..5].try_into().expect("4 bytes"))),
            (BODY_LEN, Some(&OLD_VERSION)) => Err(BadHandle::Old),
            _ => Err(BadHandle::Malformed),
        }
    }

    /// The handle `b` is, once its MAC verifies with the share's `key`.
    pub fn verify(b: &[u8], key: &[u8; 32]) -> Result<Handle, BadHandle> {
        Self::share_of(b)?;
        let mut m = mac(key);
        m.update(&b[..BODY_LEN]);
        m.verify_truncated_left(&b[BODY_LEN..])
            .map_err(|_| BadHandle::Forged)?;
        Ok(Self::fields(b))
    }

    /// The fields of a handle without checking it: for log lines only (the call
    /// itself is refused if the MAC does not verify).
    pub fn unverified(b: &[u8]) -> Option<Handle> {
        Self::share_of(b).ok().map(|_| Self::fields(b))
    }

    fn fields(b: &[u8]) -> Handle {
        Handle {
            share_id: u32::from_be_bytes(b[1..5].try_into().expect("4 bytes")),
            file_id: u64::from_be_bytes(b[5..13].try_into().expect("8 bytes")),
            generation: u32::from_be_bytes(b[13..17].try_into().expect("4 bytes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn round_trip_and_rejects_garbage_old_and_forged_handles() {
        let h = Handle {
            share_id: 7,
            file_id: 1 << 40,
            generation: 99,
        };
        let b = h.encode(&KEY);
        assert_eq!(b.len(), HANDLE_LEN);
        assert_eq!(Handle::verify(&b, &KEY), Ok(h));
        assert_eq!(
            Handle::verify(&b, &[8; 32]),
            Err(BadHandle::Forged),
            "another cache's key"
        );
        assert_eq!(Handle::verify(&[], &KEY), Err(BadHandle::Malformed));
        assert_eq!(Handle::verify(&b[..24], &KEY), Err(BadHandle::Malformed));
        let mut old = vec![1u8];
        old.extend_from_slice(&b[1..17]);
        assert_eq!(Handle::verify(&old, &KEY), Err(BadHandle::Old));
        // Any change to the fields, as a forger makes, breaks the MAC.
        for i in 1..BODY_LEN {
            let mut f = b.clone();
            f[i] ^= 1;
            assert_eq!(Handle::verify(&f, &KEY), Err(BadHandle::Forged), "byte {i}");
        }
    }
}
