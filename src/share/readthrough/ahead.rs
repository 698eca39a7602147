//! Metadata read-ahead for a directory read with READDIRPLUS for the first time.
//!
//! Every entry's attributes come from its object's metadata (a HEAD each) before the
//! entry goes into a reply. Read page by page after the listing, the HEADs wait for
//! the whole listing, and the store idles at the end of every page while the client
//! asks for the next. Here the HEADs start as the listing's pages arrive and keep
//! [`HEAD_CONCURRENCY`] in flight across the client's pages, at most [`WINDOW`]
//! entries beyond what the pages have asked for: a client that reads one page does
//! not pay a HEAD of every object. Results are applied in batches once the listing
//! has made the entries' inodes; a page waits only for its own entries, and reads
//! itself any that the read-ahead gave up on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bucketgate_cache::{Cache, CacheError, FileId, Kind, ObjectHead};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::{HEAD_CONCURRENCY, blocking, head_key};
use crate::remote::ObjectStore;

/// Entries headed beyond the last page asked for: about 1 s of HEADs at the rate
/// figure 8 measures, so the next pages find their attributes read.
pub(super) const WINDOW: usize = 4096;
/// A read-ahead that has had nothing to do (no page asked for more) for this long
/// gives up: its client has stopped reading the directory.
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
}

impl Feed {
    pub(super) fn entry(&self, name: &str, key: &str, dir: bool) {
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
                applying = Some(Box::pin(apply(
                    self.cache.clone(),
                    self.dir,
                    std::mem::take(&mut done),
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
/// names, now no longer being read.
async fn apply(cache: Arc<Cache>, dir: FileId, batch: Vec<(Item, Option<ObjectHead>)>) -> Vec<Vec<u8>> {
    let names: Vec<Vec<u8>> = batch.iter().map(|(i, _)| i.name.clone()).collect();
    let r = blocking(move || {
        let mut found = Vec::with_capacity(batch.len());
        for (item, head) in batch {
            // A name both an object and a prefix shows as the directory: only the
            // HEAD of what the inode is applies.
            if let Some(i) = cache.peek(dir, &item.name)?
                && i.meta_pending
                && (i.kind == Kind::Dir) == item.dir
            {
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
