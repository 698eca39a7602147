//! The metadata journal: what makes a change to the metadata store durable.
//!
//! sled's own flush is a poor fit for a request that must be durable before its
//! reply. It hands its write to sled's I/O threads and waits for them, and while it
//! runs it holds sled's process-wide lock that every batch takes exclusively: a
//! request applying a batch under the state lock waits for whatever flush is in
//! progress, and every other request of the share waits behind it (bench figure
//! 11 measured ~1,500 durable small files/s on a disk that does ~14,000).
//!
//! sled's batches are no better: each one makes sled seal and write its log
//! buffer (two writes and two sync_file_range calls on sled's I/O threads per
//! batch, flushed or not).
//!
//! So each batch is first appended to this journal (a `write` into the page
//! cache), then applied to sled key by key, both under one lock so the journal
//! holds the batches in the order sled applied them. The journal makes a batch
//! atomic: replay after a crash applies again, whole, every record sled may hold
//! only in part. A request that must be durable waits for an fdatasync of the
//! journal, shared with every request that arrives meanwhile (group commit).
//! sled is flushed only at checkpoints, by a thread of its own, after which the
//! journal files it covers are deleted.
//!
//! Replay applies every record since the last checkpoint, in order, whatever sled
//! recovered: a record applied again only sets its keys to what they became, so
//! the store ends as it was after the last record written, never a mix of two
//! moments. Only the checkpoint's flush needs to be durable for that; nothing
//! rests on which of its later writes sled happened to recover.
//!
//! What a power loss (rather than a crash of the process) can do: every change
//! acknowledged as durable survives, since its record was fdatasynced. A batch
//! being applied at that moment, never acknowledged, can come back in part if
//! sled's log reached the disk before the journal's page did.
//!
//! A record is `len u32 | crc32 u32 | lsn u64 | ops`, little-endian, its crc over
//! the lsn and the ops; an op is `1 | key len u32 | key | value len u32 | value`
//! (an insert) or `0 | key len u32 | key` (a removal). Files are
//! `journal/<lsn of their first record, 16 hex digits>` in the cache directory.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use sled::IVec;

use crate::error::{CacheError, Result};
use crate::group_flush::GroupFlush;
use crate::inode::keys;

/// A journal file this long starts a checkpoint: replay after a crash then reads
/// at most about this much.
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Even a quiet journal is checkpointed this often when it holds anything, so a
/// restart has little to replay.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);
const CHECKPOINT_RETRY: Duration = Duration::from_secs(5);
/// Bytes before a record's ops: len, crc, lsn.
const HEADER: usize = 16;

/// One change to a key: its new value, or `None` for a removal.
pub(crate) type Op = (IVec, Option<IVec>);

pub(crate) struct Journal {
    shared: Arc<Shared>,
    checkpointer: Option<JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    meta_dir: PathBuf,
    db: sled::Db,
    writer: Mutex<Writer>,
    group: GroupFlush,
    /// Set when a checkpoint is due (or the journal closes); the checkpointer
    /// waits on it.
    due: Mutex<Due>,
    wake: Condvar,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
}

#[derive(Default)]
struct Due {
    checkpoint: bool,
    closing: bool,
}

struct Writer {
    file: Arc<File>,
    /// Bytes in `file`: where the next record goes.
    len: u64,
    /// The lsn the next record takes.
    next: u64,
    /// Why no record can be written any more: a failed write whose torn bytes
    /// could not be cut off (a record after them would be lost with them at replay)
    /// or a batch that is in the journal but that sled refused.
    broken: Option<String>,
}

impl Journal {
    /// Opens the journal of the cache in `dir` whose metadata store is `db` (in
    /// `meta_dir`): replays it into sled, makes sled durable, and starts an empty
    /// journal.
    pub(crate) fn open(dir: &Path, meta_dir: &Path, db: &sled::Db) -> Result<Journal> {
        let dir = dir.join("journal");
        fs::create_dir_all(&dir).map_err(CacheError::from_io)?;
        let next = replay(&dir, db)?;
        flush_sled(db, meta_dir)?;
        remove_files_before(&dir, u64::MAX)?;
        let file = new_file(&dir, next)?;
        let shared = Arc::new(Shared {
            dir,
            meta_dir: meta_dir.to_path_buf(),
            db: db.clone(),
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                len: 0,
                next,
                broken: None,
            }),
            group: GroupFlush::default(),
            due: Mutex::new(Due::default()),
            wake: Condvar::new(),
            checkpointing: Mutex::new(()),
        });
        let s = shared.clone();
        let checkpointer = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || s.checkpoints())
            .map_err(CacheError::from_io)?;
        Ok(Journal {
            shared,
            checkpointer: Some(checkpointer),
        })
    }

    /// Writes `ops` to the journal, then applies them to sled: the last op of each
    /// key, inserts first, each in the order given, so a reader that sees one
    /// insert sees every insert before it. Once this returns, the change is
    /// visible, and durable after the next [`Journal::durable`].
    pub(crate) fn apply(&self, ops: &[Op]) -> Result<()> {
        // Nothing to record: a record holds at least one op (see `decode`).
        if ops.is_empty() {
            return Ok(());
        }
        let s = &self.shared;
        let mut w = s.writer.lock();
        if let Some(why) = &w.broken {
            return Err(CacheError::Io(std::io::Error::other(why.clone())));
        }
        let lsn = w.next;
        let ops = last_per_key(ops);
        let record = encode(lsn, &ops);
        if let Err(e) = w.file.write_all_at(&record, w.len) {
            if let Err(cut) = w.file.set_len(w.len) {
                w.broken = Some(format!(
                    "the metadata journal could not cut off a failed write ({e}): {cut}"
                ));
            }
            return Err(CacheError::from_io(e));
        }
        // Inserts before removals: a name moved by RENAME is never missing from
        // both places, and a removed name is gone before its inode is.
        let inserts = ops.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        let removals = ops.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k);
        let applied = inserts
            .map(|(k, v)| s.db.insert(k, v.clone()).map(drop))
            .chain(removals.map(|k| s.db.remove(k).map(drop)))
            .collect::<sled::Result<()>>();
        if let Err(e) = applied {
            // The record will be applied whole at the next start while this caller
            // was told it failed: nothing more may be written until then.
            w.broken = Some(format!(
                "the metadata store refused a batch the journal holds: {e}"
            ));
            return Err(e.into());
        }
        w.next += 1;
        w.len += record.len() as u64;
        if w.len >= CHECKPOINT_BYTES {
            drop(w);
            s.due.lock().checkpoint = true;
            s.wake.notify_one();
        }
        Ok(())
    }

    /// Returns once everything applied before this call is durable: an fdatasync
    /// of the journal that started after the call has finished (shared with
    /// concurrent callers, `crate::group_flush`).
    pub(crate) fn durable(&self) -> Result<()> {
        let s = &self.shared;
        s.group.durable(|| {
            // A checkpoint syncs the file it retires before the next one is
            // current: syncing the current one covers everything written so far.
            let file = s.writer.lock().file.clone();
            file.sync_data().map_err(CacheError::from_io)
        })
    }

    /// Makes sled hold everything the journal holds, then deletes the journal
    /// files, as the checkpointer does.
    #[cfg(test)]
    fn checkpoint(&self) -> Result<()> {
        self.shared.checkpoint()
    }

    /// (fdatasyncs run, durable requests they answered) since the cache opened.
    pub(crate) fn counts(&self) -> (u64, u64) {
        self.shared.group.counts()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.due.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// The checkpointer: runs a checkpoint when one is due (the journal file grew
    /// past [`CHECKPOINT_BYTES`]) or every [`CHECKPOINT_EVERY`], until the journal
    /// closes. After a failure (a full disk, say) it waits [`CHECKPOINT_RETRY`]
    /// before trying again rather than spinning on every write.
    fn checkpoints(&self) {
        let mut not_before = Instant::now();
        loop {
            {
                let mut due = self.due.lock();
                loop {
                    if due.closing {
                        return;
                    }
                    if due.checkpoint && Instant::now() >= not_before {
                        break;
                    }
                    let until = match due.checkpoint {
                        true => not_before,
                        false => Instant::now() + CHECKPOINT_EVERY,
                    };
                    if self.wake.wait_until(&mut due, until).timed_out() && !due.checkpoint {
                        break;
                    }
                }
                due.checkpoint = false;
            }
            if self.writer.lock().len == 0 {
                continue;
            }
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "metadata checkpoint failed; the journal keeps every change until one succeeds");
                not_before = Instant::now() + CHECKPOINT_RETRY;
            }
        }
    }

    fn checkpoint(&self) -> Result<()> {
        let _one = self.checkpointing.lock();
        // Retire the current file: synced first, so that whatever a request was
        // answered on is in a synced file until sled holds it.
        let first_kept = {
            let mut w = self.writer.lock();
            w.file.sync_data().map_err(CacheError::from_io)?;
            let file = new_file(&self.dir, w.next)?;
            w.file = Arc::new(file);
            w.len = 0;
            w.next
        };
        // sled applied every record before `first_kept` as it was written.
        flush_sled(&self.db, &self.meta_dir)?;
        remove_files_before(&self.dir, first_kept)
    }
}

/// Makes everything sled holds durable. sled 0.34.7 loses the last batch applied
/// before a kill -9 even after a successful flush unless some other write follows
/// it in its log (tests/it/crash.rs, acknowledged_namespace_changes_survive_kill9,
/// caught a SETATTR lost this way): a one-key write goes after it. sled's flush
/// syncs its log with sync_file_range, which neither records a grown file's size
/// nor empties the disk's write cache: its files are fsynced too, since journal
/// files are deleted on the word of this flush.
fn flush_sled(db: &sled::Db, meta_dir: &Path) -> Result<()> {
    db.insert(keys::meta("flushed_at"), &crate::engine::now_ns().to_be_bytes())?;
    db.flush()?;
    for entry in fs::read_dir(meta_dir).map_err(CacheError::from_io)? {
        let entry = entry.map_err(CacheError::from_io)?;
        if entry.file_type().map_err(CacheError::from_io)?.is_file() {
            File::open(entry.path())
                .and_then(|f| f.sync_all())
                .map_err(CacheError::from_io)?;
        }
    }
    Ok(())
}

fn new_file(dir: &Path, first_lsn: u64) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(format!("{first_lsn:016x}")))
        .map_err(CacheError::from_io)?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CacheError::from_io)
}

/// The journal files in `dir`, by the lsn of their first record.
fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(CacheError::from_io)? {
        let entry = entry.map_err(CacheError::from_io)?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn remove_files_before(dir: &Path, first_kept: u64) -> Result<()> {
    for (first, path) in files(dir)? {
        if first < first_kept {
            fs::remove_file(path).map_err(CacheError::from_io)?;
        }
    }
    sync_dir(dir)
}

/// Applies to `db` every record in the journal files in `dir`, in order; the lsn
/// the next record takes.
fn replay(dir: &Path, db: &sled::Db) -> Result<u64> {
    let mut next = None;
    let mut replayed = 0u64;
    'files: for (first, path) in files(dir)? {
        let bytes = fs::read(&path).map_err(CacheError::from_io)?;
        let mut rest = &bytes[..];
        let mut expect = next.unwrap_or(first);
        while !rest.is_empty() {
            let Some((lsn, ops, used)) = decode(rest) else {
                // A record cut short by the crash: it was never acknowledged (its
                // fdatasync did not finish), and nothing after it was either.
                tracing::warn!(file = %path.display(), bytes = rest.len(), "metadata journal ends in a partial record; it is dropped");
                next = Some(expect);
                break 'files;
            };
            if lsn != expect {
                return Err(CacheError::Meta(format!(
                    "the metadata journal skips from record {expect} to {lsn} in {}",
                    path.display()
                )));
            }
            rest = &rest[used..];
            db.apply_batch(sled_batch(&ops))?;
            expect += 1;
            replayed += 1;
        }
        next = Some(expect);
    }
    if replayed > 0 {
        tracing::info!(records = replayed, "metadata changes replayed from the journal");
    }
    Ok(next.unwrap_or(1))
}

/// Each key's last op, in the order of those last ops.
fn last_per_key(ops: &[Op]) -> Vec<Op> {
    let mut seen = std::collections::HashSet::new();
    let mut last: Vec<Op> = ops
        .iter()
        .rev()
        .filter(|(k, _)| seen.insert(k))
        .cloned()
        .collect();
    last.reverse();
    last
}

fn sled_batch(ops: &[Op]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (k, v) in ops {
        match v {
            Some(v) => batch.insert(k.clone(), v.clone()),
            None => batch.remove(k.clone()),
        }
    }
    batch
}

fn encode(lsn: u64, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER];
    out[8..16].copy_from_slice(&lsn.to_le_bytes());
    for (k, v) in ops {
        out.push(v.is_some() as u8);
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        if let Some(v) = v {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    let len = (out.len() - HEADER) as u32;
    let crc = crc32fast::hash(&out[8..]);
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The record at the start of `buf`: (lsn, ops, bytes it takes); `None` when it is
/// cut short or does not match its crc.
fn decode(buf: &[u8]) -> Option<(u64, Vec<Op>, usize)> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let len = u32_at(buf, 0)? as usize;
    let crc = u32_at(buf, 4)?;
    let end = HEADER.checked_add(len)?;
    let body = buf.get(8..end)?;
    // Every record holds at least one op (`Journal::apply` writes none for an
    // empty batch).
    if len == 0 || crc32fast::hash(body) != crc {
        return None;
    }
    let lsn = u64::from_le_bytes(body[..8].try_into().ok()?);
    let mut ops = Vec::new();
    let mut at = HEADER;
    let take = |at: &mut usize| -> Option<IVec> {
        let n = u32_at(buf, *at)? as usize;
        let v = buf.get(*at + 4..(*at + 4).checked_add(n)?)?;
        *at += 4 + n;
        Some(IVec::from(v))
    };
    while at < end {
        let insert = *buf.get(at)? == 1;
        at += 1;
        let k = take(&mut at)?;
        let v = if insert { Some(take(&mut at)?) } else { None };
        ops.push((k, v));
    }
    (at == end).then_some((lsn, ops, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(n: u8) -> Vec<Op> {
        vec![
            (IVec::from(&[b'k', n][..]), Some(IVec::from(vec![n; 300]))),
            (IVec::from(&b"gone"[..]), None),
        ]
    }

    #[test]
    fn a_record_reads_back_and_a_damaged_one_does_not() {
        let rec = encode(7, &ops(3));
        let (lsn, back, used) = decode(&rec).unwrap();
        assert_eq!((lsn, back, used), (7, ops(3), rec.len()));
        for cut in [1, HEADER, rec.len() - 1] {
            assert!(decode(&rec[..cut]).is_none(), "cut at {cut}");
        }
        let mut flipped = rec.clone();
        flipped[HEADER + 5] ^= 1;
        assert!(decode(&flipped).is_none());
        assert!(decode(&[0u8; 64]).is_none());
    }

    /// The last op of a key in a batch is what sled holds after it, and a replay
    /// of the journal into an empty store gives the same store.
    #[test]
    fn a_batch_ends_with_each_keys_last_op_and_replays_the_same() {
        let t = tempfile::tempdir().unwrap();
        let meta = t.path().join("meta");
        let db = sled::Config::new().path(&meta).open().unwrap();
        let j = Journal::open(t.path(), &meta, &db).unwrap();
        let k = |s: &str| IVec::from(s.as_bytes());
        j.apply(&[(k("a"), Some(k("1"))), (k("b"), Some(k("1")))])
            .unwrap();
        // An empty batch (the engine makes some) leaves no record to trip replay.
        j.apply(&[]).unwrap();
        j.apply(&[
            (k("a"), None),
            (k("a"), Some(k("2"))),
            (k("b"), Some(k("2"))),
            (k("b"), None),
        ])
        .unwrap();
        j.durable().unwrap();
        assert_eq!((db.get("a").unwrap(), db.get("b").unwrap()), (Some(k("2")), None));
        let again = sled::Config::new().temporary(true).open().unwrap();
        assert_eq!(replay(&t.path().join("journal"), &again).unwrap(), 3);
        assert_eq!(
            (again.get("a").unwrap(), again.get("b").unwrap()),
            (Some(k("2")), None)
        );
        // A checkpoint leaves sled holding it all and the journal empty.
        j.checkpoint().unwrap();
        let left: u64 = files(&t.path().join("journal"))
            .unwrap()
            .iter()
            .map(|(_, p)| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(left, 0);
        assert_eq!(db.get("a").unwrap(), Some(k("2")));
    }

    /// Every record comes back in order, the later one winning for a key, and a
    /// torn last record is dropped.
    #[test]
    fn replay_applies_every_record_in_order_and_drops_a_torn_tail() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("journal");
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        for lsn in 1..=3u8 {
            bytes.extend(encode(lsn as u64, &ops(lsn)));
        }
        bytes.extend(encode(
            4,
            &[(IVec::from(&b"k\x02"[..]), Some(IVec::from(&b"new"[..])))],
        ));
        let torn = encode(5, &ops(5));
        bytes.extend(&torn[..torn.len() / 2]);
        fs::write(dir.join(format!("{:016x}", 1)), &bytes).unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        // What sled recovered does not matter: a record is applied again whole.
        db.insert(b"k\x01", &b"stale"[..]).unwrap();
        db.insert(b"gone", &b"stale"[..]).unwrap();
        assert_eq!(replay(&dir, &db).unwrap(), 5);
        assert_eq!(db.get(b"k\x01").unwrap().unwrap(), vec![1u8; 300]);
        assert_eq!(&*db.get(b"k\x02").unwrap().unwrap(), b"new");
        assert_eq!(db.get(b"k\x03").unwrap().unwrap(), vec![3u8; 300]);
        assert_eq!(db.get(b"gone").unwrap(), None);
        assert_eq!(db.get(b"k\x05").unwrap(), None);
        // A record missing in the middle is an error, not a silent gap.
        let mut gap = encode(1, &ops(1));
        gap.extend(encode(3, &ops(3)));
        fs::write(dir.join(format!("{:016x}", 1)), &gap).unwrap();
        assert!(replay(&dir, &db).is_err());
    }
}
