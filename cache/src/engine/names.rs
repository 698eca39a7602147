//! Names: what a directory entry may be called, and paths to and from inodes.

use super::{Cache, MAX_NAME_BYTES, ROOT_ID};
use crate::error::{CacheError, Result};
use crate::inode::{Inode, Kind};

impl Cache {
    /// A name as a single component: no '/', NUL, "." or "..", UTF-8, ≤ 255 bytes.
    pub(crate) fn check_listed_name(&self, _dir: &Inode, name: &[u8]) -> Result<()> {
        if name.len() > MAX_NAME_BYTES {
            return Err(CacheError::NameTooLong);
        }
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(CacheError::Invalid);
        }
        // Object keys are UTF-8; a name that is not cannot become a key.
        if std::str::from_utf8(name).is_err() {
            return Err(CacheError::Invalid);
        }
        Ok(())
    }

    pub(super) fn check_name(&self, dir: &Inode, name: &[u8]) -> Result<()> {
        self.check_listed_name(dir, name)?;
        let dir_path = self.path_of(dir)?;
        if dir_path.len() + 1 + name.len() + 1 > self.opts.max_path_bytes {
            return Err(CacheError::NameTooLong);
        }
        let name = std::str::from_utf8(name).map_err(|_| CacheError::Invalid)?;
        let path = if dir_path.is_empty() {
            name.to_string()
        } else {
            format!("{dir_path}/{name}")
        };
        if let Some(why) = self.opts.key_check.refuses(&path) {
            tracing::debug!(path, why, "refused a name the store cannot hold");
            return Err(CacheError::Invalid);
        }
        Ok(())
    }

    /// Path of an inode relative to the share root ("" for the root, "a/b" below).
    pub fn path_of(&self, ino: &Inode) -> Result<String> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = ino.clone();
        let mut hops = 0;
        while cur.id != ROOT_ID {
            parts.push(cur.name.clone());
            cur = self.load(cur.parent)?.ok_or(CacheError::Stale)?;
            hops += 1;
            if hops > 4096 {
                return Err(CacheError::Meta("directory loop".into()));
            }
        }
        parts.reverse();
        let joined = parts.join(&b'/');
        String::from_utf8(joined).map_err(|_| CacheError::Meta("non-UTF-8 name".into()))
    }

    /// The inode a share-relative path names, if any.
    pub fn resolve(&self, path: &str) -> Result<Option<Inode>> {
        let mut cur = self.get(ROOT_ID)?;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if cur.kind != Kind::Dir {
                return Ok(None);
            }
            match self.lookup_entry(cur.id, part.as_bytes())? {
                Some(e) => match self.load(e.child)? {
                    Some(i) => cur = i,
                    None => return Ok(None),
                },
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }
}
