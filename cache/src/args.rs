//! What the engine's calls take and answer besides inodes.

use crate::inode::Inode;

/// How a SETATTR changes a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetTime {
    #[default]
    DontChange,
    ServerTime,
    Client(u64),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}

#[derive(Clone, Copy, Debug)]
pub enum CreateMode {
    Unchecked(SetAttr),
    Guarded(SetAttr),
    Exclusive([u8; 8]),
}

/// The pre-operation attributes NFS reports in wcc_data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WccAttr {
    pub size: u64,
    pub mtime_ns: u64,
    pub ctime_ns: u64,
}

impl From<&Inode> for WccAttr {
    fn from(i: &Inode) -> Self {
        WccAttr {
            size: i.size,
            mtime_ns: i.mtime_ns,
            ctime_ns: i.ctime_ns,
        }
    }
}

/// Before and after attributes of a directory an operation changed.
#[derive(Clone, Debug)]
pub struct DirChange {
    pub before: WccAttr,
    pub after: Inode,
}

#[derive(Clone, Debug)]
pub struct DirEntryInfo {
    pub name: Vec<u8>,
    pub cookie: u64,
    pub attr: Inode,
}

#[derive(Clone, Debug)]
pub struct Listing {
    pub entries: Vec<DirEntryInfo>,
    pub eof: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
}
