//! The version of the cache's on-disk format, checked when a cache is opened.
//!
//! Records are positional bincode, so a build that misread another format's records
//! would misread every one of them. Each cache therefore carries its format number
//! (`M` "format"): a cache of this format opens, one of an older format is migrated
//! in place first, and one of a newer format is refused with what to do.
//!
//! Changing a record's shape (an `Inode` field, a new key family whose absence
//! means something) takes three steps: raise [`CACHE_FORMAT`], add the step from
//! the old number in [`migrate`], and check in a fixture of the old format under
//! `tests/fixtures/` (see `tests/format.rs`) that the new build opens and reads.

use std::path::Path;

use std::collections::HashMap;

use crate::engine::ROOT_ID;
use crate::error::{CacheError, Result};
use crate::inode::{FileId, Kind, decode_inode, encode, keys};

/// The format this build writes and reads.
pub const CACHE_FORMAT: u32 = 3;

/// Caches written before the format was recorded (main up to 2026-12-03) are
/// format 1: the records this build reads, unchanged.
const UNRECORDED: u32 = 1;

/// Refuses a cache of a newer format before anything of it is touched: its
/// journal is not this build's to replay or delete, and the newer build must find
/// it as it left it.
pub(crate) fn refuse_newer(db: &sled::Db, dir: &Path) -> Result<()> {
    found(db, dir).map(drop)
}

/// The format of the cache in `db`; an error for one newer than this build's.
fn found(db: &sled::Db, dir: &Path) -> Result<u32> {
    let found = match db.get(keys::meta("format"))? {
        Some(v) => u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
            CacheError::Meta(format!(
                "the cache in {} has a malformed format record",
                dir.display()
            ))
        })?),
        // A new cache is written in this format from its first record.
        None if !db.was_recovered() => CACHE_FORMAT,
        None => UNRECORDED,
    };
    if found > CACHE_FORMAT {
        return Err(CacheError::Meta(format!(
            "the cache in {} has format {found}, written by a newer bucketgate; this one reads format \
             {CACHE_FORMAT}. Run the newer version again, or let it upload everything (`bucketgate flush`), \
             stop it, and start this version on an empty cache directory",
            dir.display()
        )));
    }
    Ok(found)
}

/// Checks the format of the cache in `db` (at `dir`, for messages), migrating an
/// older one and recording the format of a new or unrecorded one.
pub(crate) fn check(db: &sled::Db, dir: &Path) -> Result<()> {
    let found = found(db, dir)?;
    for from in found..CACHE_FORMAT {
        migrate(db, from)?;
        tracing::info!(cache = %dir.display(), from, to = from + 1, "cache format migrated");
    }
    db.insert(keys::meta("format"), &CACHE_FORMAT.to_be_bytes())?;
    db.flush()?;
    Ok(())
}

/// Rewrites a cache of format `from` into format `from + 1`, durably.
fn migrate(db: &sled::Db, from: u32) -> Result<()> {
    match from {
        1 => to_format_2(db),
        // Format 3 keeps the metadata changes since the last checkpoint in the
        // journal (`crate::journal`), where a build that knows none would lose them.
        // A format-2 cache has no journal: every change is in sled already.
        2 => Ok(()),
        _ => Err(CacheError::Meta(format!("no migration from cache format {from}"))),
    }
}

/// Format 2 added the FIFO and socket kinds at the end of `Kind` (format-1 records
/// name neither) and `Inode::subdirs` at the end of the inode record: each record
/// gets a zero count appended, then each directory the count of its subdirectories.
/// A record that already decodes whole was done by an earlier, interrupted run, so
/// running this again is harmless.
fn to_format_2(db: &sled::Db) -> Result<()> {
    let mut subdirs: HashMap<FileId, u32> = HashMap::new();
    for kv in db.scan_prefix([keys::INODE]) {
        let (k, v) = kv?;
        let ino = match decode_inode(&v) {
            Ok(i) => i,
            Err(_) => {
                let mut whole = v.to_vec();
                whole.extend_from_slice(&0u32.to_le_bytes());
                let i = decode_inode(&whole)?;
                db.insert(k, whole)?;
                i
            }
        };
        if ino.kind == Kind::Dir && !ino.unlinked && ino.id != ROOT_ID {
            *subdirs.entry(ino.parent).or_default() += 1;
        }
    }
    for kv in db.scan_prefix([keys::INODE]) {
        let (k, v) = kv?;
        let mut ino = decode_inode(&v)?;
        let n = subdirs.get(&ino.id).copied().unwrap_or(0);
        if ino.kind == Kind::Dir && ino.subdirs != n {
            ino.subdirs = n;
            db.insert(k, encode(&ino))?;
        }
    }
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cache, CacheOptions};

    /// sled lets go of a closed database's lock from a background thread: what
    /// opens it right after may find it still held, so these tests wait for it (one
    /// of them failed once under load, most likely so; its message was not kept).
    fn when_unlocked<T, E: std::fmt::Display>(
        open: impl Fn() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        for _ in 0..50 {
            match open() {
                Err(e) if e.to_string().contains("acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                r => return r,
            }
        }
        open()
    }

    fn set_format(dir: &Path, n: u32) {
        let db = when_unlocked(|| sled::open(dir.join("meta"))).unwrap();
        db.insert(keys::meta("format"), &n.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }

    fn reopen(dir: &Path) -> Result<Cache> {
        when_unlocked(|| Cache::open(dir, CacheOptions::default()))
    }

    #[test]
    fn a_new_cache_records_its_format_and_opens_again() {
        let t = tempfile::tempdir().unwrap();
        drop(Cache::open(t.path(), CacheOptions::default()).unwrap());
        let db = when_unlocked(|| sled::open(t.path().join("meta"))).unwrap();
        assert_eq!(
            db.get(keys::meta("format")).unwrap().as_deref(),
            Some(&CACHE_FORMAT.to_be_bytes()[..])
        );
        drop(db);
        reopen(t.path()).unwrap();
    }

    #[test]
    fn a_cache_of_a_newer_format_is_refused_with_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        drop(Cache::open(t.path(), CacheOptions::default()).unwrap());
        set_format(t.path(), CACHE_FORMAT + 1);
        // What the newer build left in its journal stays for it.
        let theirs = t.path().join("journal").join(format!("{:016x}", 1));
        std::fs::write(&theirs, b"a record of a format this build does not know").unwrap();
        let e = reopen(t.path()).err().expect("refused").to_string();
        assert!(
            e.contains(&format!("has format {}", CACHE_FORMAT + 1)) && e.contains("empty cache directory"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&theirs).unwrap(),
            b"a record of a format this build does not know",
            "the newer build's journal was touched"
        );
    }

    #[test]
    fn a_format_with_no_migration_is_refused() {
        let t = tempfile::tempdir().unwrap();
        drop(Cache::open(t.path(), CacheOptions::default()).unwrap());
        set_format(t.path(), 0);
        let e = reopen(t.path()).err().expect("refused").to_string();
        assert!(e.contains("no migration from cache format 0"), "{e}");
    }
}
