//! Per-share audit log: one JSON object per line for every change asked for through
//! the share, over NFS or its FUSE mount (create, first write, rename, remove, mkdir,
//! symlink, mknod, setattr) and, with `audit_reads`, the first read of a file by a client
//! after a pause, with who asked, from where, and what the gateway answered. The
//! share layer (`crate::share`) writes the records.
//!
//! Calls never wait for the disk: a call hands its record to a bounded channel
//! with `try_send`, and one writer thread per share appends the lines. When the
//! channel is full (the log disk is slow or stuck) the record is dropped and
//! `bucketgate_audit_dropped_total{share}` counts it, so a stuck log disk cannot stall
//! file service, and the loss is visible.
//!
//! The writer reopens the file when it has been moved or removed (logrotate's default
//! `create` mode), checked at most once a second.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::share::Origin;

/// Records waiting for the writer; beyond this they are dropped (and counted).
pub const CHANNEL_CAPACITY: usize = 8192;
/// Files remembered as "written since open/commit" before the set is cleared (then a
/// few extra `write` lines appear; memory stays bounded).
const WRITE_SET_MAX: usize = 65_536;
/// A client's READs of a file are one read session until it pauses this long. NFSv3
/// has no OPEN: a reader's pause is the nearest thing to a close.
pub const READ_PAUSE: Duration = Duration::from_secs(60);

/// When each (origin, uid, file) last read successfully.
type ReadSessions = HashMap<(Origin, u32, u64), Instant>;

/// What was done. Serialized in lower case (`"create"`, `"write"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Write,
    Read,
    Rename,
    Remove,
    Rmdir,
    Mkdir,
    Symlink,
    Mknod,
    Setattr,
}

/// The attributes a SETATTR asked to change (only those present are written).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AttrChange {
    /// Octal permission bits, e.g. "0644".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// A truncate or extend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub atime: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mtime: bool,
}

/// One line of the audit log.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// RFC 3339 UTC with milliseconds, when the reply was sent.
    pub time: String,
    pub share: String,
    /// "nfs" or "fuse".
    pub via: &'static str,
    /// The NFS client's IP address (IPv4-mapped IPv6 shown as IPv4); "local" for a
    /// process on the gateway.
    pub client: String,
    /// FUSE: the calling process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// After the share's squash rules (what the file system saw).
    pub uid: u32,
    pub gid: u32,
    pub op: Op,
    /// Share-relative, starting with '/'; `null` when the handle named nothing.
    pub path: Option<String>,
    /// RENAME: the new path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_path: Option<String>,
    /// SYMLINK: the link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attrs: Option<AttrChange>,
    /// "OK" or the error answered, as its POSIX name ("ENOENT", "EACCES", ...;
    /// `ShareError::code`).
    pub status: String,
}

/// A share's audit log. Cheap to share behind an `Arc`; dropping the last one lets the
/// writer thread drain what is queued, flush and exit.
pub struct AuditLog {
    share: String,
    tx: mpsc::Sender<Record>,
    dropped: AtomicU64,
    dropped_metric: Option<IntCounter>,
    /// Files whose first write since CREATE/COMMIT was already logged.
    written: Mutex<HashSet<u64>>,
    /// With `audit_reads`: when each (client, uid, file) last read successfully.
    reads: Option<Mutex<ReadSessions>>,
}

impl AuditLog {
    /// Opens (creating, mode 0640) `path` for appending and starts the writer thread.
    /// Fails at startup rather than at the first change if the file cannot be opened.
    pub fn open(share: &str, path: &Path, dropped_metric: Option<IntCounter>) -> std::io::Result<AuditLog> {
        let tx = json_lines(&format!("audit-{share}"), path, CHANNEL_CAPACITY)?;
        Ok(AuditLog {
            share: share.to_string(),
            tx,
            dropped: AtomicU64::new(0),
            dropped_metric,
            written: Mutex::new(HashSet::new()),
            reads: None,
        })
    }

    /// Logs reads too (the first of each read session).
    pub fn with_reads(mut self) -> AuditLog {
        self.reads = Some(Mutex::new(HashMap::new()));
        self
    }

    /// Whether this log records reads at all (`audit_reads`).
    pub fn records_reads(&self) -> bool {
        self.reads.is_some()
    }

    /// Whether a READ of `file_id` by user `uid` from `origin` starts a read session
    /// and is logged: reads are logged, and that user there has not read the file
    /// successfully within [`READ_PAUSE`]. A read inside a session extends it.
    pub fn first_read(&self, origin: Origin, uid: u32, file_id: u64) -> bool {
        self.first_read_at((origin, uid, file_id), Instant::now())
    }

    fn first_read_at(&self, who: (Origin, u32, u64), now: Instant) -> bool {
        let Some(reads) = &self.reads else {
            return false;
        };
        let mut r = reads.lock();
        match r.get_mut(&who) {
            Some(last) if now.saturating_duration_since(*last) <= READ_PAUSE => {
                *last = now;
                false
            }
            _ => true,
        }
    }

    /// A logged READ of `file_id` by `uid` from `origin` succeeded: its session
    /// starts.
    pub fn read(&self, origin: Origin, uid: u32, file_id: u64) {
        self.read_at((origin, uid, file_id), Instant::now());
    }

    fn read_at(&self, who: (Origin, u32, u64), now: Instant) {
        let Some(reads) = &self.reads else { return };
        let mut r = reads.lock();
        if r.len() >= WRITE_SET_MAX {
            r.retain(|_, t| now.saturating_duration_since(*t) <= READ_PAUSE);
            if r.len() >= WRITE_SET_MAX {
                r.clear(); // a few extra `read` lines; memory stays bounded
            }
        }
        r.insert(who, now);
    }

    pub fn share(&self) -> &str {
        &self.share
    }

    /// Records dropped because the writer could not keep up (or has stopped).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one record; never blocks.
    pub fn log(&self, r: Record) {
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.dropped_metric {
                m.inc();
            }
        }
    }

    /// Whether a WRITE to `file_id` should be logged: the first since the file was
    /// created, committed, or first seen by this process. NFSv3 has no OPEN, so
    /// COMMIT (the client's close-to-open flush) marks the end of a write session.
    pub fn first_write(&self, file_id: u64) -> bool {
        !self.written.lock().contains(&file_id)
    }

    /// A write to `file_id` was logged and succeeded: do not log the next ones.
    pub fn wrote(&self, file_id: u64) {
        let mut w = self.written.lock();
        if w.len() >= WRITE_SET_MAX {
            w.clear();
        }
        w.insert(file_id);
    }

    /// `file_id` was committed (or removed): its next write is logged again.
    pub fn committed(&self, file_id: u64) {
        self.written.lock().remove(&file_id);
    }

    /// A record for this share, stamped now.
    pub fn record(
        &self,
        origin: Origin,
        uid: u32,
        gid: u32,
        op: Op,
        path: Option<String>,
        status: &str,
    ) -> Record {
        let (via, client, pid) = match origin {
            Origin::Nfs(ip) => ("nfs", crate::config::canonical_ip(ip).to_string(), None),
            Origin::Fuse { pid } => ("fuse", "local".to_string(), Some(pid)),
        };
        Record {
            time: rfc3339_now(),
            share: self.share.clone(),
            via,
            client,
            pid,
            uid,
            gid,
            op,
            path,
            new_path: None,
            target: None,
            attrs: None,
            status: status.to_string(),
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Opens (creating, mode 0640) the JSON-lines file `path` for appending and starts a
/// writer thread named `name` for it; records sent to the channel become lines.
/// Fails at once if the file cannot be opened.
pub(crate) fn json_lines<R: Serialize + Send + 'static>(
    name: &str,
    path: &Path,
    capacity: usize,
) -> std::io::Result<mpsc::Sender<R>> {
    let file = open_append(path)?;
    let (tx, rx) = mpsc::channel(capacity);
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || writer(p, file, rx))?;
    Ok(tx)
}

/// The writer thread: appends lines, flushes whenever the queue runs dry (so a line is
/// on disk within moments of the call, not when a buffer fills), reopens a rotated file.
fn writer<R: Serialize>(path: PathBuf, file: File, mut rx: mpsc::Receiver<R>) {
    let mut ino = file.metadata().map(|m| (m.dev(), m.ino())).ok();
    let mut out = BufWriter::new(file);
    let mut last_check = Instant::now();
    let mut warned = false;
    while let Some(first) = rx.blocking_recv() {
        // Before writing: a file rotated away while we were idle gets nothing more.
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            let now = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
            if now != ino {
                let _ = out.flush();
                match open_append(&path) {
                    Ok(f) => {
                        ino = f.metadata().map(|m| (m.dev(), m.ino())).ok();
                        out = BufWriter::new(f);
                        warned = false;
                    }
                    Err(e) if !warned => {
                        tracing::warn!(path = %path.display(), error = %e, "log reopen failed");
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
        }
        let mut next = Some(first);
        // At most a batch between flushes and rotation checks, even under steady load.
        let mut batch = 0;
        while let Some(r) = next {
            batch += 1;
            let mut line = serde_json::to_vec(&r).expect("records serialize");
            line.push(b'\n');
            if let Err(e) = out.write_all(&line)
                && !warned
            {
                tracing::warn!(path = %path.display(), error = %e, "log write failed");
                warned = true;
            }
            next = if batch < 1024 { rx.try_recv().ok() } else { None };
        }
        if let Err(e) = out.flush()
            && !warned
        {
            tracing::warn!(path = %path.display(), error = %e, "log write failed");
            warned = true;
        }
    }
    let _ = out.flush();
}

/// "2026-11-29T09:50:00.123Z"
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(Duration::from_millis(951_782_400_000 + 3_723_456)),
            "2000-02-29T01:02:03.456Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(1_798_761_599)),
            "2026-12-31T23:59:59.000Z"
        );
    }

    fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<_> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn nfs(ip: &str) -> Origin {
        Origin::Nfs(ip.parse().unwrap())
    }

    #[test]
    fn writes_lines_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open("data", &path, None).unwrap();
        let mut r = log.record(
            nfs("::ffff:10.1.2.3"),
            1000,
            100,
            Op::Rename,
            Some("/a".into()),
            "OK",
        );
        r.new_path = Some("/b".into());
        log.log(r);
        let lines = wait_lines(&path, 1);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["client"], "10.1.2.3");
        assert_eq!(lines[0]["via"], "nfs");
        assert!(lines[0].get("pid").is_none(), "{}", lines[0]);
        assert_eq!(lines[0]["op"], "rename");
        assert_eq!(lines[0]["new_path"], "/b");
        assert!(lines[0].get("attrs").is_none(), "{}", lines[0]);

        // logrotate (create mode): move the file away; new lines go to a new file.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let r = log.record(
            Origin::Fuse { pid: 42 },
            0,
            0,
            Op::Remove,
            Some("/b".into()),
            "ENOENT",
        );
        log.log(r);
        let lines = wait_lines(&path, 1);
        assert_eq!(lines.len(), 1, "the rotated-away file is not written to");
        assert_eq!(lines[0]["status"], "ENOENT");
        assert_eq!(
            (&lines[0]["via"], &lines[0]["client"], &lines[0]["pid"]),
            (&"fuse".into(), &"local".into(), &42.into())
        );
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn first_write_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open("data", &dir.path().join("a.jsonl"), None).unwrap();
        assert!(log.first_write(7));
        log.wrote(7);
        assert!(!log.first_write(7));
        assert!(log.first_write(8));
        log.committed(7);
        assert!(log.first_write(7));
    }

    /// One `read` per read session of a client: again after a pause, again for
    /// another client, and never when reads are not audited.
    #[test]
    fn first_read_per_client_until_a_pause() {
        let dir = tempfile::tempdir().unwrap();
        let off = AuditLog::open("data", &dir.path().join("off.jsonl"), None).unwrap();
        assert!(!off.first_read(nfs("10.0.0.1"), 1000, 7));
        let log = AuditLog::open("data", &dir.path().join("a.jsonl"), None)
            .unwrap()
            .with_reads();
        let a = (nfs("10.0.0.1"), 1000, 7);
        let t0 = Instant::now();
        assert!(log.first_read_at(a, t0));
        log.read_at(a, t0);
        // Reads 50 s apart keep one session going past READ_PAUSE from its start.
        assert!(!log.first_read_at(a, t0 + Duration::from_secs(50)));
        assert!(!log.first_read_at(a, t0 + Duration::from_secs(100)));
        assert!(
            log.first_read_at((nfs("10.0.0.2"), 1000, 7), t0),
            "another client"
        );
        assert!(log.first_read_at((a.0, 2000, 7), t0), "another user");
        assert!(log.first_read_at((a.0, 1000, 8), t0), "another file");
        assert!(
            log.first_read_at(a, t0 + Duration::from_secs(161)),
            "after a pause"
        );
    }

    #[test]
    fn a_full_channel_drops_and_counts() {
        let counter = IntCounter::new("d", "d").unwrap();
        let (tx, _rx) = mpsc::channel(1);
        // A log whose writer never reads: the second record has nowhere to go.
        let log = AuditLog {
            share: "data".into(),
            tx,
            dropped: AtomicU64::new(0),
            dropped_metric: Some(counter.clone()),
            written: Mutex::new(HashSet::new()),
            reads: None,
        };
        for _ in 0..3 {
            log.log(log.record(nfs("10.0.0.1"), 1, 1, Op::Create, None, "OK"));
        }
        assert_eq!(log.dropped(), 2);
        assert_eq!(counter.get(), 2);
    }
}
