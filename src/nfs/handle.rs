//! File handles: (share, file id, generation), 17 bytes. File ids are never reused
//! and the share id is stored in the share's metadata, so handles stay valid across
//! restarts and upgrades; a handle of a deleted file is STALE, a malformed one BADHANDLE.

const VERSION: u8 = 1;
pub const HANDLE_LEN: usize = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle {
    pub share_id: u32,
    pub file_id: u64,
    pub generation: u32,
}

impl Handle {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HANDLE_LEN);
        v.push(VERSION);
        v.extend_from_slice(&self.share_id.to_be_bytes());
        v.extend_from_slice(&self.file_id.to_be_bytes());
        v.extend_from_slice(&self.generation.to_be_bytes());
        v
    }

    /// `None` for anything that is not a handle we could have issued.
    pub fn decode(b: &[u8]) -> Option<Handle> {
        if b.len() != HANDLE_LEN || b[0] != VERSION {
            return None;
        }
        Some(Handle {
            share_id: u32::from_be_bytes(b[1..5].try_into().ok()?),
            file_id: u64::from_be_bytes(b[5..13].try_into().ok()?),
            generation: u32::from_be_bytes(b[13..17].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let h = Handle {
            share_id: 7,
            file_id: 1 << 40,
            generation: 99,
        };
        assert_eq!(Handle::decode(&h.encode()), Some(h));
        assert_eq!(Handle::decode(&[]), None);
        assert_eq!(Handle::decode(&[2; HANDLE_LEN]), None);
        assert_eq!(Handle::decode(&h.encode()[..16]), None);
    }
}
