//! The records kept in sled. One tree, keys prefixed by record type, so that a
//! namespace change touching several records is one atomic `apply_batch`.

use serde::{Deserialize, Serialize};

pub type FileId = u64;

/// READDIR cookies 1 and 2 are "." and ".."; entries count up from here.
pub(crate) const FIRST_DIR_SEQ: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    // Cache format 2: appended, so format-1 records decode unchanged.
    /// A FIFO or a socket made with MKNOD: a zero-byte object whose metadata carries
    /// the type, as the DataSync/FSx schema does for symlinks and directories. What
    /// passes through one never reaches the gateway (the client's kernel keeps it).
    Fifo,
    Socket,
}

impl Kind {
    /// st_mode type bits, as written to `x-amz-meta-file-permissions`.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => 0o100000,
            Kind::Dir => 0o040000,
            Kind::Symlink => 0o120000,
            Kind::Fifo => 0o010000,
            Kind::Socket => 0o140000,
        }
    }
}

/// An object's POSIX attributes as its user metadata carries them (`file-owner`,
/// `file-group`, `file-permissions`, `file-mtime`). In records it is encoded as the
/// `(uid, gid, mode, mtime_ns)` tuple it replaced: the same bytes (bincode writes a
/// struct's fields in order), so the cache format did not change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    pub uid: u32,
    pub gid: u32,
    /// st_mode including the file type bits, e.g. 0o100644.
    pub mode: u32,
    pub mtime_ns: u64,
}

/// What the store holds for one inode, as far as the gateway knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteState {
    /// Key (relative to the share prefix) of the object that carries this inode's
    /// current uploaded version; `None` before the first upload.
    pub key: Option<String>,
    pub etag: String,
    /// The `data_seq` whose bytes that object holds.
    pub data_seq: u64,
    /// The attributes that object carries.
    pub meta: ObjectAttrs,
    /// Keys that once held this inode and must be deleted once nothing live claims
    /// them (the old name after a rename, the key of a removed file).
    pub stale_keys: Vec<String>,
    /// When the store last took an upload for this inode, or when a listing showed it
    /// (ns since epoch): a listing started before this cannot contradict it.
    pub synced_ns: u64,
    /// Size and Last-Modified of the object as a listing last showed them (0 when
    /// unknown): changes are detected by ETag, or by these when a store's listings
    /// carry no ETag.
    pub listed_size: u64,
    pub listed_mtime_ns: u64,
    /// The attributes of an overwrite of `key` that may have reached the store
    /// without being recorded (a crash in between): a version there carrying exactly
    /// these is ours, not another writer's. Set durably before such a write.
    pub overwrite_meta: Option<ObjectAttrs>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub id: FileId,
    /// Changes whenever a file id is reused; never, today, since ids only grow; kept
    /// in handles so a future id reuse cannot alias an old handle.
    pub generation: u32,
    pub kind: Kind,
    /// Permission bits only (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_ns: u64,
    pub mtime_ns: u64,
    pub ctime_ns: u64,
    pub parent: FileId,
    pub name: Vec<u8>,
    pub symlink_target: Vec<u8>,
    /// Set by an EXCLUSIVE create so a retransmitted create succeeds.
    pub create_verifier: Option<[u8; 8]>,
    /// Directories: next READDIR cookie to hand out.
    pub next_dir_seq: u64,
    /// Bumped by every change the store must learn about (data, attributes, name).
    pub change_seq: u64,
    /// The `change_seq` of the last change to the bytes.
    pub data_seq: u64,
    /// The `change_seq` the store reflects; clean when equal to `change_seq`.
    pub synced_seq: u64,
    /// When it first became dirty, and when it last changed (ns since epoch); used to
    /// schedule its upload. 0 when clean.
    pub dirty_since_ns: u64,
    pub last_change_ns: u64,
    /// Removed from the namespace; kept until its object is deleted from the store.
    pub unlinked: bool,
    pub remote: RemoteState,
    /// Files: the data file holds only the blocks its block map lists; the rest is
    /// read from the store on demand. A dirty file is never partial.
    pub partial: bool,
    /// Directories: when the store was last listed into this directory (ns since
    /// epoch); 0 when never (its entries may be incomplete).
    pub listed_ns: u64,
    /// Attributes are the share's defaults because the object's metadata has not been
    /// read yet (a listing carries none); a HEAD fills them on LOOKUP.
    pub meta_pending: bool,
    /// Directories: how many directories it holds, so its link count is 2 plus this,
    /// as on a local file system (a subdirectory's ".." links to it). Cache format 2.
    pub subdirs: u32,
}

impl Inode {
    /// A new, empty inode: not in the store, nothing to list (`listed_ns` = now).
    pub(crate) fn fresh(
        id: FileId,
        generation: u32,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        now: u64,
    ) -> Inode {
        Inode {
            id,
            generation,
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            size: 0,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            parent: 0,
            name: Vec::new(),
            symlink_target: Vec::new(),
            create_verifier: None,
            next_dir_seq: FIRST_DIR_SEQ,
            change_seq: 0,
            data_seq: 0,
            synced_seq: 0,
            dirty_since_ns: 0,
            last_change_ns: 0,
            unlinked: false,
            remote: RemoteState::default(),
            partial: false,
            listed_ns: now,
            meta_pending: false,
            subdirs: 0,
        }
    }

    /// st_nlink: a directory's "." and its name, and each subdirectory's ".."; one
    /// name for anything else (no hard links).
    pub fn nlink(&self) -> u32 {
        if self.kind == Kind::Dir {
            2u32.saturating_add(self.subdirs)
        } else {
            1
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.synced_seq != self.change_seq || !self.remote.stale_keys.is_empty()
    }

    /// Bytes not yet in the store (counted against the dirty limit).
    pub fn dirty_data_bytes(&self) -> u64 {
        if self.kind == Kind::File && !self.unlinked && self.remote.data_seq != self.data_seq {
            self.size
        } else {
            0
        }
    }

    pub fn st_mode(&self) -> u32 {
        self.kind.type_bits() | (self.mode & 0o7777)
    }

    /// The attributes its object is to carry.
    pub fn object_attrs(&self) -> ObjectAttrs {
        ObjectAttrs {
            uid: self.uid,
            gid: self.gid,
            mode: self.st_mode(),
            mtime_ns: self.mtime_ns,
        }
    }
}

pub(crate) mod keys {
    use super::FileId;

    pub const INODE: u8 = b'I';
    pub const NAME: u8 = b'N';
    pub const SEQ: u8 = b'S';
    pub const QUEUE: u8 = b'Q';
    pub const META: u8 = b'M';
    pub const BLOCKS: u8 = b'B';
    /// Per inode: the attributes of earlier writes of ours that may have reached the
    /// store unrecorded (see `Cache::record_intent`); absent: none.
    pub const INTENTS: u8 = b'T';
    /// Object key → the file that moved away from it before its object followed.
    pub const MOVED: u8 = b'R';
    /// Object key → the ETag of the version the gateway last saw there, for a key
    /// that no inode holds as its object any more while the object is still in the
    /// store (a removed file not yet deleted there, the old key of a renamed file):
    /// the version a new write of that key may replace, and a name a listing must
    /// not bring back.
    pub const LEFT: u8 = b'L';
    /// Left key → the attributes of writes of ours that may sit there unrecorded
    /// (the intents of the inode that left it, `Cache::record_intent`); absent: none.
    pub const LEFT_WRITES: u8 = b'W';
    /// Upload id → object key of a multipart upload this gateway started.
    pub const MULTIPART: u8 = b'U';

    pub fn inode(id: FileId) -> [u8; 9] {
        let mut k = [INODE; 9];
        k[1..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn queue(id: FileId) -> [u8; 9] {
        let mut k = [QUEUE; 9];
        k[1..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn name(dir: FileId, name: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(9 + name.len());
        k.push(NAME);
        k.extend_from_slice(&dir.to_be_bytes());
        k.extend_from_slice(name);
        k
    }

    pub fn seq(dir: FileId, seq: u64) -> [u8; 17] {
        let mut k = [SEQ; 17];
        k[1..9].copy_from_slice(&dir.to_be_bytes());
        k[9..].copy_from_slice(&seq.to_be_bytes());
        k
    }

    pub fn seq_prefix(dir: FileId) -> [u8; 9] {
        let mut k = [SEQ; 9];
        k[1..].copy_from_slice(&dir.to_be_bytes());
        k
    }

    pub fn blocks(id: FileId) -> [u8; 9] {
        let mut k = [BLOCKS; 9];
        k[1..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn intents(id: FileId) -> [u8; 9] {
        let mut k = [INTENTS; 9];
        k[1..].copy_from_slice(&id.to_be_bytes());
        k
    }

    pub fn meta(name: &str) -> Vec<u8> {
        let mut k = vec![META];
        k.extend_from_slice(name.as_bytes());
        k
    }

    pub fn moved(key: &str) -> Vec<u8> {
        let mut k = vec![MOVED];
        k.extend_from_slice(key.as_bytes());
        k
    }

    pub fn multipart(upload_id: &str) -> Vec<u8> {
        let mut k = vec![MULTIPART];
        k.extend_from_slice(upload_id.as_bytes());
        k
    }

    pub fn left(key: &str) -> Vec<u8> {
        let mut k = vec![LEFT];
        k.extend_from_slice(key.as_bytes());
        k
    }

    pub fn left_writes(key: &str) -> Vec<u8> {
        let mut k = vec![LEFT_WRITES];
        k.extend_from_slice(key.as_bytes());
        k
    }

    pub fn id_from_value(v: &[u8]) -> FileId {
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[..8]);
        u64::from_be_bytes(b)
    }

    pub fn id_from(k: &[u8]) -> FileId {
        let mut b = [0u8; 8];
        b.copy_from_slice(&k[1..9]);
        u64::from_be_bytes(b)
    }
}

/// A directory entry's value under its `N` key: the child and its READDIR cookie.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct DirEntry {
    pub child: FileId,
    pub seq: u64,
}

/// Records are positional bincode: a change to their shape is a new cache format
/// (`crate::format`), with its migration.
pub(crate) fn decode_inode(bytes: &[u8]) -> crate::error::Result<Inode> {
    Ok(bincode::deserialize(bytes)?)
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory records always serialize")
}
