//! Metadata read-ahead for a directory read with READDIRPLUS for the first time.
//!
//! Every entry's attributes come from its object's metadata (a HEAD each) before the
//! entry goes into a reply. Read page by page after the listing, the HEADs wait for
//! the whole listing, and the store idles at the end of every page while the client
//! asks for the next. Here the HEADs start as the listing's pages arrive and keep
//! [`HEAD_CONCURRENCY`] in flight across the client's pages, at most [`WINDOW`]
//! entries beyond what the pages have asked for: a client that reads one page does
//! not pay a HEAD of every object. Results are applied in batches once the listing
//! has made the entries' inodes, each only to the inode that still stands for the
//! key and version it read; a page waits only for its own entries, and reads itself
//! any that the read-ahead did not start, gave up on or could not apply.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bucketgate_cache::{Cache, CacheError, FileId, Kind, ObjectHead, same_etag};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::{HEAD_CONCURRENCY, blocking, head_key};
use crate::remote::ObjectStore;

/// Entries headed beyond those the READDIRPLUS pages have asked for (counted, not
/// positions: the read-ahead goes in listing order): about 1 s of HEADs at the rate
/// figure 8 measures, so the next pages find their attributes read.
const WINDOW: usize = 4096;
/// Names taken on per directory, so that memory stays bounded for a directory of
/// millions; the pages of a larger directory read the rest themselves.
const MAX_NAMES: usize = 4 * WINDOW;
/// A read-ahead with nothing happening (no page, no HEAD answered, no listing page)
/// for this long ends: its client has stopped reading the directory.
const IDLE: Duration = Duration::from_secs(30);

/// One object (or common prefix) the read-ahead is to HEAD.
struct Item {
    name: Vec<u8>,
    key: String,
    dir: bool,
}

enum Msg {
    Entry(Item),
    /// The listing is in the namespace: HEAD results can be applied.
    Listed,
}

/// The shared state of one directory's read-ahead.
pub(super) struct Ahead {
    /// Names taken on and not yet applied or given up, and whether their HEAD has
    /// started (a page takes one that has not for itself).
    covered: Mutex<HashMap<Vec<u8>, bool>>,
    /// Entries the READDIRPLUS pages have asked for so far.
    served: watch::Sender<usize>,
    /// Changes after every applied batch; closed when the read-ahead ends.
    applied: watch::Receiver<()>,
}

/// The listing's end: hands each name to the read-ahead as its page arrives.
pub(super) struct Feed {
    tx: mpsc::UnboundedSender<Msg>,
    ahead: Arc<Ahead>,
    fed: AtomicUsize,
}

impl Feed {
    pub(super) fn entry(&self, name: &str, key: &str, dir: bool) {
        if self.fed.fetch_add(1, Ordering::Relaxed) >= MAX_NAMES {
            return;
        }
        let name = name.as_bytes().to_vec();
        self.ahead.covered.lock().insert(name.clone(), false);
        let item = Item {
            name,
            key: key.to_owned(),
            dir,
        };
        if let Err(mpsc::error::SendError(Msg::Entry(item))) = self.tx.send(Msg::Entry(item)) {
            self.ahead.covered.lock().remove(&item.name);
        }
    }

    /// The listing has been applied. A feed dropped without this (the listing
    /// failed) ends the read-ahead: nothing it read could be applied.
    pub(super) fn listed(self) {
        let _ = self.tx.send(Msg::Listed);
    }
}

impl Ahead {
    /// Starts the read-ahead of `dir`'s entries; `done` runs when it ends.
    pub(super) fn start(
        cache: Arc<Cache>,
        store: Arc<dyn ObjectStore>,
        prefix: String,
        dir: FileId,
        done: impl FnOnce() + Send + 'static,
    ) -> (Arc<Ahead>, Feed) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (applied_tx, applied) = watch::channel(());
        let ahead = Arc::new(Ahead {
            covered: Mutex::default(),
            served: watch::Sender::new(0),
            applied,
        });
        let run = Run {
            cache,
            store,
            prefix,
            dir,
            ahead: ahead.clone(),
        };
        tokio::spawn(async move {
            run.run(rx, applied_tx).await;
            done();
        });
        let feed = Feed {
            tx,
            ahead: ahead.clone(),
            fed: Default::default(),
        };
        (ahead, feed)
    }

    /// A page of `entries` entries is being answered: the read-ahead may go on to
    /// [`WINDOW`] entries beyond it. Of the page's entries still to be read, returns
    /// those whose HEAD the read-ahead has started, to be waited for; the page reads
    /// the others itself, and the read-ahead leaves them.
    pub(super) fn take_page(&self, entries: usize, pending: &[&[u8]]) -> Vec<bool> {
        self.served.send_modify(|s| *s += entries);
        let mut covered = self.covered.lock();
        pending
            .iter()
            .map(|n| match covered.get(*n) {
                Some(true) => true,
                Some(false) => {
                    covered.remove(*n);
                    false
                }
                None => false,
            })
            .collect()
    }

    /// Waits until none of `names` is still being read (applied, or given up), or
    /// the read-ahead has ended.
    pub(super) async fn wait(&self, names: &[&[u8]]) {
        let mut applied = self.applied.clone();
        loop {
            let reading = {
                let covered = self.covered.lock();
                names.iter().any(|n| covered.contains_key(*n))
            };
            if !reading || applied.changed().await.is_err() {
                return;
            }
        }
    }
}

struct Run {
    cache: Arc<Cache>,
    store: Arc<dyn ObjectStore>,
    /// The share's key prefix.
    prefix: String,
    dir: FileId,
    ahead: Arc<Ahead>,
}

type Headed = (Item, Result<Option<ObjectHead>, CacheError>);

impl Run {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Msg>, applied: watch::Sender<()>) {
        let mut served = self.ahead.served.subscribe();
        let mut queue = VecDeque::new();
        let (mut fed, mut listed) = (false, false);
        let mut started = 0usize;
        let mut heads: FuturesUnordered<BoxFuture<'static, Headed>> = FuturesUnordered::new();
        let mut done: Vec<(Item, Option<ObjectHead>)> = Vec::new();
        let mut applying: Option<BoxFuture<'static, Vec<Vec<u8>>>> = None;
        loop {
            let limit = *served.borrow_and_update() + WINDOW;
            while heads.len() < HEAD_CONCURRENCY && started < limit {
                let Some(item) = queue.pop_front() else { break };
                if !self.take(&item) {
                    // A page waiting for it (if any) reads it itself.
                    applied.send_replace(());
                    continue;
                }
                started += 1;
                let store = self.store.clone();
                heads.push(Box::pin(async move {
                    let r = head_key(store.as_ref(), &item.key, !item.dir).await;
                    (item, r)
                }));
            }
            if listed && applying.is_none() && !done.is_empty() {
                let batch = std::mem::take(&mut done);
                applying = Some(Box::pin(apply(
                    self.cache.clone(),
                    self.prefix.clone(),
                    self.dir,
                    batch,
                )));
            }
            if fed && queue.is_empty() && heads.is_empty() && done.is_empty() && applying.is_none() {
                break;
            }
            tokio::select! {
                m = rx.recv(), if !fed => match m {
                    Some(Msg::Entry(item)) => queue.push_back(item),
                    Some(Msg::Listed) => listed = true,
                    None if listed => fed = true,
                    None => break,
                },
                Some((item, r)) = heads.next(), if !heads.is_empty() => match r {
                    Ok(head) => done.push((item, head)),
                    Err(e) => {
                        tracing::debug!(key = item.key, error = %e, "read-ahead HEAD failed; the page reads it");
                        self.ahead.covered.lock().remove(&item.name);
                        applied.send_replace(());
                    }
                },
                names = async { applying.as_mut().expect("guarded").await }, if applying.is_some() => {
                    applying = None;
                    let mut covered = self.ahead.covered.lock();
                    for n in names {
                        covered.remove(&n);
                    }
                    drop(covered);
                    applied.send_replace(());
                }
                _ = served.changed() => {}
                _ = tokio::time::sleep(IDLE) => break,
            }
        }
        self.ahead.covered.lock().clear();
    }

    /// Whether `item` is still for the read-ahead to HEAD, and marks it started: not
    /// when a page has taken it, nor when its attributes are known already (a name
    /// listed before).
    fn take(&self, item: &Item) -> bool {
        let known = matches!(self.cache.peek(self.dir, &item.name), Ok(Some(i)) if !i.meta_pending);
        let mut covered = self.ahead.covered.lock();
        match covered.get_mut(&item.name) {
            Some(_) if known => {
                covered.remove(&item.name);
                false
            }
            Some(started) => {
                *started = true;
                true
            }
            None => false,
        }
    }
}

/// Applies HEAD results to the inodes the listing made for their names; returns the
/// names, now no longer being read. A result applies only to an inode that still
/// stands for the key it read (not a file renamed onto the name meanwhile, nor the
/// directory when the name is also an object's) and, for a file, for the version
/// the listing showed; any other is left for the page to read.
async fn apply(
    cache: Arc<Cache>,
    prefix: String,
    dir: FileId,
    batch: Vec<(Item, Option<ObjectHead>)>,
) -> Vec<Vec<u8>> {
    let names: Vec<Vec<u8>> = batch.iter().map(|(i, _)| i.name.clone()).collect();
    let r = blocking(move || {
        let mut found = Vec::with_capacity(batch.len());
        for (item, head) in batch {
            let Some(i) = cache.peek(dir, &item.name)? else {
                continue;
            };
            let same_key = i
                .remote
                .key
                .as_deref()
                .is_some_and(|k| item.key.strip_prefix(prefix.as_str()) == Some(k));
            let same_version = match &head {
                Some(h) if i.kind != Kind::Dir => {
                    i.remote.etag.is_empty() || same_etag(&i.remote.etag, &h.etag)
                }
                _ => true,
            };
            if i.meta_pending && (i.kind == Kind::Dir) == item.dir && same_key && same_version {
                found.push((i.id, head));
            }
        }
        cache.apply_heads(found)
    })
    .await;
    if let Err(e) = r {
        tracing::debug!(dir, error = %e, "applying read-ahead attributes failed; the pages read them");
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use bucketgate_cache::{Caller, ObjectAttrs, ROOT_ID, RemoteEntry, RemoteKind};

    fn file(name: &str, etag: &str) -> RemoteEntry {
        RemoteEntry {
            name: name.as_bytes().to_vec(),
            kind: RemoteKind::File {
                size: 1,
                etag: etag.into(),
                mtime_ns: 1,
            },
        }
    }

    fn head(etag: &str, uid: u32) -> Option<ObjectHead> {
        Some(ObjectHead {
            etag: etag.into(),
            size: 1,
            attrs: Some(ObjectAttrs {
                uid,
                gid: uid,
                mode: 0o100600,
                mtime_ns: 1,
            }),
            symlink_target: None,
        })
    }

    fn item(name: &str, key: &str) -> Item {
        Item {
            name: name.as_bytes().to_vec(),
            key: key.into(),
            dir: false,
        }
    }

    /// A HEAD read for a name applies only to the inode that still stands for the key
    /// and version it read: not to another file renamed onto the name meanwhile, nor
    /// to a version the listing did not show, nor when the key is another (the
    /// directory moved). Those stay to be read again.
    #[tokio::test]
    async fn a_result_applies_only_to_the_key_and_version_it_read() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::open(tmp.path(), Default::default()).unwrap());
        let entries = vec![
            file("foo", "e1"),
            file("x", "e2"),
            file("newer", "e3"),
            file("moved", "e4"),
        ];
        cache.apply_listing(ROOT_ID, entries, 1).unwrap();
        // A rename reads both files' attributes first (the share does, on
        // AttrsUnknown); the read-ahead's HEAD of `foo` was sent before.
        let x = cache.peek(ROOT_ID, b"x").unwrap().unwrap();
        let foo = cache.peek(ROOT_ID, b"foo").unwrap().unwrap();
        cache
            .apply_heads(vec![(x.id, head("e2", 2000)), (foo.id, head("e1", 1000))])
            .unwrap();
        let root = Caller::new(0, 0, vec![]);
        cache.rename(&root, ROOT_ID, b"x", ROOT_ID, b"foo").unwrap();
        let batch = vec![
            (item("foo", "pre/foo"), head("e1", 1000)),
            (item("newer", "pre/newer"), head("e9", 1000)),
            (item("moved", "pre/elsewhere/moved"), head("e4", 1000)),
        ];
        let names = apply(cache.clone(), "pre/".into(), ROOT_ID, batch).await;
        assert_eq!(names.len(), 3, "every name is done with");
        let foo = cache.peek(ROOT_ID, b"foo").unwrap().unwrap();
        assert_eq!((foo.id, foo.uid), (x.id, 2000), "the renamed file keeps its own");
        for n in ["newer", "moved"] {
            let i = cache.peek(ROOT_ID, n.as_bytes()).unwrap().unwrap();
            assert!(i.meta_pending, "{n}: left for the page to read");
        }
        let batch = vec![(item("newer", "pre/newer"), head("e3", 1000))];
        apply(cache.clone(), "pre/".into(), ROOT_ID, batch).await;
        let i = cache.peek(ROOT_ID, b"newer").unwrap().unwrap();
        assert!(!i.meta_pending);
        assert_eq!((i.uid, i.mode & 0o7777), (1000, 0o600));
    }
}
