//! POSIX permission checks from mode, owner and group, for the caller of each call.

use crate::args::{SetAttr, SetTime};
use crate::error::{CacheError, Result};
use crate::inode::{Inode, Kind};

pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const EXEC: u32 = 1;

/// Who is calling, after the share's squash rules were applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Caller {
    pub fn new(uid: u32, gid: u32, gids: Vec<u32>) -> Self {
        Caller { uid, gid, gids }
    }

    pub fn root() -> Self {
        Caller::new(0, 0, Vec::new())
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.gids.contains(&gid)
    }
}

/// The rwx bits (READ|WRITE|EXEC) `caller` holds on `ino`, whose attributes must be
/// [`known`].
pub fn granted(caller: &Caller, ino: &Inode) -> u32 {
    if caller.uid == 0 {
        // Root may do anything, but execute a file only if someone may.
        let any_x = ino.kind == Kind::Dir || ino.mode & 0o111 != 0;
        return READ | WRITE | if any_x { EXEC } else { 0 };
    }
    let shift = if caller.uid == ino.uid {
        6
    } else if caller.in_group(ino.gid) {
        3
    } else {
        0
    };
    (ino.mode >> shift) & 7
}

/// Attributes a decision may rest on: read from the store, or set here. An inode
/// known only from a listing carries placeholders, and no permission is decided on
/// those (`AttrsUnknown` sends the caller to read them first).
pub fn known(ino: &Inode) -> Result<()> {
    if ino.meta_pending {
        Err(CacheError::AttrsUnknown(ino.id))
    } else {
        Ok(())
    }
}

pub fn require(caller: &Caller, ino: &Inode, want: u32) -> Result<()> {
    known(ino)?;
    if granted(caller, ino) & want == want {
        Ok(())
    } else {
        Err(CacheError::Access)
    }
}

/// Who may change what, as chmod/chown/utimes/truncate allow.
pub fn check_setattr(caller: &Caller, ino: &Inode, set: &SetAttr) -> Result<()> {
    known(ino)?;
    let is_owner = caller.uid == 0 || caller.uid == ino.uid;
    if set.mode.is_some() && !is_owner {
        return Err(CacheError::Perm);
    }
    if let Some(u) = set.uid
        && u != ino.uid
        && caller.uid != 0
    {
        return Err(CacheError::Perm);
    }
    if let Some(g) = set.gid
        && g != ino.gid
        && caller.uid != 0
        && !(caller.uid == ino.uid && caller.in_group(g))
    {
        return Err(CacheError::Perm);
    }
    if set.size.is_some() && !is_owner {
        require(caller, ino, WRITE)?;
    }
    let client_time = matches!(set.atime, SetTime::Client(_)) || matches!(set.mtime, SetTime::Client(_));
    let server_time = set.atime == SetTime::ServerTime || set.mtime == SetTime::ServerTime;
    if client_time && !is_owner {
        return Err(CacheError::Perm);
    }
    if server_time && !is_owner {
        require(caller, ino, WRITE)?;
    }
    Ok(())
}

/// A change to a file's bytes by anyone but root clears setuid, and setgid when
/// group execute is set (without it, setgid means mandatory locking), as write(2)
/// and truncate(2) do on Linux: whoever may write a setuid program must not be able
/// to replace its code and keep the privilege.
pub(crate) fn drop_privileges(i: &mut Inode, caller: &Caller) {
    if caller.uid != 0 && i.mode & 0o6000 != 0 {
        i.mode &= !0o4000;
        if i.mode & 0o010 != 0 {
            i.mode &= !0o2000;
        }
    }
}
