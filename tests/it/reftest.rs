//! A reference model of the share and the bucket, in the manner of mountpoint-s3's
//! reftests: random sequences of NFS operations through a real gateway, interleaved
//! with another S3 client's puts, deletes and copies in the same bucket, refreshes and
//! gateway restarts. After every flush the bucket must equal the model: every object
//! it expects with its bytes, a conflict copy wherever it predicts one, nothing else.
//!
//! Seeded and replayable: `BUCKETGATE_REFTEST_SEED=<n>` runs one seed,
//! `BUCKETGATE_REFTEST_CASES=<n>` that many seeds from 1 (default 4 here, of
//! `BUCKETGATE_REFTEST_ROUNDS` rounds, default 10). A failure prints its seed and
//! every operation so far. Long run, about 10 minutes on two cores:
//! `BUCKETGATE_REFTEST_CASES=100 BUCKETGATE_REFTEST_ROUNDS=20 cargo test --release --test it reftest::`.
//!
//! What the model knows of the gateway: a directory is listed from the store on its
//! first use and at `refresh`; an entry a listing made has its attributes read (a
//! HEAD) the first time an operation uses it, which also finds a deletion or another
//! version; an upload replaces only the version the gateway knows at that key (none:
//! the key must be empty), else the local file becomes `<name>.conflict-<time>`; a
//! removed file's object is deleted only while it is still the version the gateway
//! knew. Uploads run only at flushes (upload_delay is an hour).
//!
//! Not generated, because the model would have to guess: remote changes to the
//! object a renamed file is still to be copied from (covered by
//! `rename_races`, `conflicts`), directory renames (`bucket_truth`), attribute
//! changes (`conflicts::a_chmod_over_a_remote_change_applies_to_the_new_version`).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bucketgate::admin::RefreshRequest;
use bucketgate::config::{Config, HumanDuration};
use bucketgate::gateway::Running;
use common::gateway::{config, flush, share_with, start};
use common::nfs::*;
use common::s3server::S3TestServer;
use nfs3_types::nfs3::*;

const DIRS: [&str; 2] = ["d0", "d1"];
const FILES: [&str; 3] = ["f0", "f1", "f2"];
const PREFIX: &str = "pre/";

/// A small deterministic generator (xorshift64*), so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write(String),
    Remove(String),
    Rename(String, String),
    Mkdir(String),
    Rmdir(String),
    TheirPut(String),
    TheirDelete(String),
    TheirCopy(String, String),
    Flush,
    RefreshFlush,
    RestartFlush,
}

/// One version of an object; every version has its own length, so a listing that
/// carries no ETag (s3s-fs's) still tells versions apart by size.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Obj {
    ver: u64,
    bytes: Vec<u8>,
    /// (file-owner, file-permissions) it carries; another client's carry none.
    meta: Option<Attrs>,
}

/// Owner and st_mode, as a file shows them and as object metadata carries them.
type Attrs = (u32, u32);
/// A file made here by uid 1000 with mode 0644.
const OURS: Attrs = (1000, 0o100644);
/// An object without metadata: the share's defaults.
const DEFAULTS: Attrs = (65534, 0o100666);

#[derive(Clone, Debug)]
enum Entry {
    Dir {
        /// The gateway has written (or knows of) a marker `d/`.
        marker: Option<u64>,
        /// Made here and not uploaded yet.
        dirty: bool,
    },
    File(File),
}

#[derive(Clone, Debug)]
struct File {
    /// The version of the object at this path the gateway knows (its own upload, a
    /// listing, a HEAD, or one it left there): what an upload may replace.
    known: Option<u64>,
    /// Bytes not yet uploaded.
    dirty: Option<Vec<u8>>,
    /// Known only from a listing: attributes not read yet.
    pending: bool,
    /// Renamed here: the object its bytes are still in, until the copy.
    moved_from: Option<(String, Option<u64>)>,
    /// The bytes of the known version, when the cache holds all of them (written
    /// or uploaded here; a listed file is fetched only as it is read).
    cached: Option<Vec<u8>>,
    /// Owner and mode as the gateway shows them (what its uploads carry).
    attrs: Attrs,
}

impl File {
    fn listed(ver: u64) -> File {
        File {
            known: Some(ver),
            dirty: None,
            pending: true,
            moved_from: None,
            cached: None,
            attrs: DEFAULTS, // read at first use
        }
    }

    fn uploaded(ver: u64, bytes: Vec<u8>, attrs: Attrs) -> File {
        File {
            known: Some(ver),
            dirty: None,
            pending: false,
            moved_from: None,
            cached: Some(bytes),
            attrs,
        }
    }
}

#[derive(Default)]
struct Model {
    bucket: BTreeMap<String, Obj>,
    /// What NFS shows: share-relative path → entry ("" is the root).
    local: BTreeMap<String, Entry>,
    listed: BTreeSet<String>,
    /// Objects the gateway removed here and still has to delete: key → version.
    left: BTreeMap<String, u64>,
    /// Conflict copies the model expects per original key, with their bytes.
    conflicts: BTreeMap<String, Vec<Vec<u8>>>,
    next_ver: u64,
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

fn key(p: &str) -> String {
    format!("{PREFIX}{p}")
}

impl Model {
    fn version(&mut self, seed: u64) -> Obj {
        self.next_ver += 1;
        let len = 16 + self.next_ver as usize;
        Obj {
            ver: self.next_ver,
            bytes: body(len, seed ^ self.next_ver),
            meta: None,
        }
    }

    fn children(&self, dir: &str) -> Vec<String> {
        self.local
            .keys()
            .filter(|p| !p.is_empty() && parent(p) == dir)
            .cloned()
            .collect()
    }

    fn moved_sources(&self) -> BTreeSet<String> {
        self.local
            .values()
            .filter_map(|e| match e {
                Entry::File(File {
                    moved_from: Some((from, Some(_))),
                    ..
                }) => Some(from.clone()),
                _ => None,
            })
            .collect()
    }

    /// The bucket's immediate entries below directory `dir` as a listing shows them
    /// to the gateway: files with their version, and subdirectory names. Objects the
    /// gateway is deleting or moving away are not there for it (s3s-fs's listings
    /// carry no ETag, so another client's version at such a key is not told apart);
    /// conflict copies are the model's own entries.
    /// A subdirectory shows while anything below it is not leaving; one that holds
    /// only leaving objects still stays if it is there already (the third set).
    fn bucket_entries(&self, dir: &str) -> (BTreeMap<String, u64>, BTreeSet<String>, BTreeSet<String>) {
        let base = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let (mut files, mut dirs, mut any_dirs) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
        let moved = self.moved_sources();
        for (k, o) in &self.bucket {
            let Some(rel) = k.strip_prefix(PREFIX).and_then(|r| r.strip_prefix(&base)) else {
                continue;
            };
            if let Some((d, _)) = rel.split_once('/') {
                any_dirs.insert(d.to_string());
            }
            let path = k.strip_prefix(PREFIX).unwrap();
            if self.left.contains_key(k) || moved.contains(path) || k.contains(".conflict-") {
                continue;
            }
            match rel.split_once('/') {
                Some((d, _)) => {
                    dirs.insert(d.to_string());
                }
                None if !rel.is_empty() => {
                    files.insert(rel.to_string(), o.ver);
                }
                None => {}
            }
        }
        (files, dirs, any_dirs)
    }

    /// A listing of `dir` merged into what NFS shows, as `Cache::apply_listing` does:
    /// a local change not yet uploaded wins; another version of a clean file is
    /// taken (its attributes read again on next use); a clean file the store no
    /// longer has goes; a name the gateway is still deleting is not brought back.
    fn list(&mut self, dir: &str) {
        let (files, dirs, any_dirs) = self.bucket_entries(dir);
        let join = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{dir}/{n}")
            }
        };
        for (n, ver) in &files {
            let p = join(n);
            if dirs.contains(n) {
                continue; // a name that is both shows as the directory
            }
            match self.local.get_mut(&p) {
                Some(Entry::File(f)) => {
                    if f.dirty.is_none() && f.moved_from.is_none() && f.known != Some(*ver) {
                        *f = File::listed(*ver);
                    }
                }
                Some(Entry::Dir { .. }) => {}
                None => {
                    self.local.insert(p, Entry::File(File::listed(*ver)));
                }
            }
        }
        for n in &dirs {
            self.local.entry(join(n)).or_insert(Entry::Dir {
                marker: None,
                dirty: false,
            });
        }
        for p in self.children(dir) {
            let n = p.rsplit('/').next().unwrap().to_string();
            if n.contains(".conflict-") {
                continue;
            }
            let gone = match &self.local[&p] {
                Entry::File(f) => {
                    f.dirty.is_none()
                        && f.moved_from.is_none()
                        && f.known.is_some()
                        && (!files.contains_key(&n) || dirs.contains(&n))
                }
                Entry::Dir { dirty, .. } => !dirty && !any_dirs.contains(&n) && self.children(&p).is_empty(),
            };
            if gone {
                self.local.remove(&p);
                self.listed.remove(&p);
            }
        }
        self.listed.insert(dir.to_string());
    }

    /// An operation's use of directory `dir`: it and the directories above it are
    /// listed on first use.
    fn use_dir(&mut self, dir: &str) {
        let mut at = String::new();
        let parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
        for i in 0..=parts.len() {
            if !self.exists_dir(&at) {
                return;
            }
            if !self.listed.contains(&at) {
                self.list(&at);
            }
            if let Some(p) = parts.get(i) {
                at = if at.is_empty() {
                    p.to_string()
                } else {
                    format!("{at}/{p}")
                };
            }
        }
    }

    /// An operation's use of entry `p`: attributes read if a listing made it, which
    /// also finds a deletion or another version.
    fn use_entry(&mut self, p: &str) {
        let now = self.bucket.get(&key(p)).map(|o| (o.ver, o.meta));
        if let Some(Entry::File(f)) = self.local.get_mut(p)
            && f.pending
        {
            f.pending = false;
            match now {
                None => {
                    self.local.remove(p);
                }
                Some((v, meta)) => {
                    if f.known != Some(v) {
                        f.known = Some(v);
                        f.cached = None;
                    }
                    f.attrs = meta.unwrap_or(DEFAULTS);
                }
            }
        }
    }

    /// File `p` leaves the namespace: the object it had (at its own key, or at the
    /// key it was renamed from) is left behind, to be deleted.
    fn unlink(&mut self, p: &str, f: File) {
        self.local.remove(p);
        match f.moved_from {
            Some((from, Some(v))) => {
                self.left.insert(key(&from), v);
            }
            Some((_, None)) => {}
            None => {
                if let Some(v) = f.known {
                    self.left.insert(key(p), v);
                }
            }
        }
    }

    /// A rename of `p` can be carried out: its object is there to copy, or the
    /// cache holds its bytes (else the file is reported failing: `SourceGone`).
    fn rebuildable(&self, p: &str) -> bool {
        match self.local.get(p) {
            Some(Entry::File(f)) if f.dirty.is_none() && f.cached.is_none() && !f.pending => {
                let src = f.moved_from.as_ref().map_or(p, |(from, _)| from.as_str());
                self.bucket.contains_key(&key(src))
            }
            _ => true,
        }
    }

    fn exists_dir(&self, d: &str) -> bool {
        d.is_empty() || matches!(self.local.get(d), Some(Entry::Dir { .. }))
    }

    /// The version a new file at `p` may replace: one the gateway left there (a
    /// removed file's), or that of a file renamed away whose object is still there.
    fn left_at(&self, p: &str) -> Option<u64> {
        self.left.get(&key(p)).copied().or_else(|| {
            self.local.values().find_map(|e| match e {
                Entry::File(File {
                    moved_from: Some((from, Some(v))),
                    ..
                }) if from == p => Some(*v),
                _ => None,
            })
        })
    }

    /// A flush, as the uploader carries it out.
    fn flush(&mut self) {
        let paths: Vec<String> = self.local.keys().cloned().collect();
        let mut vacated: Vec<(String, u64)> = Vec::new();
        // A renamed file's bytes are those of its object when the flush began: a new
        // file at its old name takes that key over only after they are safe.
        let before = self.bucket.clone();
        for p in &paths {
            match self.local.get(p).cloned() {
                Some(Entry::Dir { dirty: true, .. }) => {
                    let ver = self.bump();
                    let k = key(&format!("{p}/"));
                    self.bucket.insert(
                        k.clone(),
                        Obj {
                            ver,
                            bytes: Vec::new(),
                            meta: Some((1000, 0o040755)),
                        },
                    );
                    self.left.remove(&k);
                    self.local.insert(
                        p.clone(),
                        Entry::Dir {
                            marker: Some(ver),
                            dirty: false,
                        },
                    );
                }
                Some(Entry::File(f)) if f.dirty.is_some() || f.moved_from.is_some() => {
                    let bytes = match (&f.dirty, &f.moved_from) {
                        (Some(b), _) => {
                            if let Some((from, Some(v))) = &f.moved_from {
                                vacated.push((from.clone(), *v));
                            }
                            b.clone()
                        }
                        // Only renamed: the store's bytes win. When another client
                        // replaced the object meanwhile, its version is what moves;
                        // when it deleted it, the cached bytes go up instead.
                        (None, Some((from, _))) => match before.get(&key(from)) {
                            Some(o) => {
                                vacated.push((from.clone(), o.ver));
                                o.bytes.clone()
                            }
                            None => f
                                .cached
                                .clone()
                                .expect("the generator renames no file it could not rebuild"),
                        },
                        (None, None) => unreachable!(),
                    };
                    let now = self.bucket.get(&key(p)).map(|o| o.ver);
                    if std::env::var_os("BUCKETGATE_REFTEST_TRACE").is_some() {
                        eprintln!(
                            "model flush {p}: known {:?}, now {now:?}, moved {:?}, dirty {}",
                            f.known,
                            f.moved_from,
                            f.dirty.is_some()
                        );
                    }
                    if now.is_none() || now == f.known {
                        let ver = self.bump();
                        self.bucket.insert(
                            key(p),
                            Obj {
                                ver,
                                bytes: bytes.clone(),
                                meta: Some(f.attrs),
                            },
                        );
                        self.left.remove(&key(p));
                        self.local
                            .insert(p.clone(), Entry::File(File::uploaded(ver, bytes, f.attrs)));
                    } else {
                        // Another client's version keeps the name; the local one is
                        // kept beside it, and the directory is listed again.
                        self.conflicts.entry(key(p)).or_default().push(bytes.clone());
                        self.local.remove(p);
                        let n = self.conflicts.values().map(Vec::len).sum::<usize>();
                        self.local.insert(
                            format!("{p}.conflict-{n}"),
                            Entry::File(File::uploaded(0, bytes, f.attrs)),
                        );
                        self.listed.remove(parent(p));
                    }
                }
                _ => {}
            }
        }
        // A renamed file's old key goes once its bytes moved, unless a file has that
        // name again (its upload replaced the object).
        for (from, v) in vacated {
            if !matches!(self.local.get(&from), Some(Entry::File(_))) {
                self.left.insert(key(&from), v);
            }
        }
        // Removed files' objects: deleted only while still the version left there.
        let left: Vec<(String, u64)> = self.left.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (k, v) in left {
            self.left.remove(&k);
            let path = k.strip_prefix(PREFIX).unwrap().trim_end_matches('/').to_string();
            if !k.ends_with('/') && matches!(self.local.get(&path), Some(Entry::File(_))) {
                continue;
            }
            match self.bucket.get(&k) {
                Some(o) if o.ver == v => {
                    self.bucket.remove(&k);
                }
                Some(_) => {
                    self.listed.remove(parent(&path));
                }
                None => {}
            }
        }
    }

    fn bump(&mut self) -> u64 {
        self.next_ver += 1;
        self.next_ver
    }
}

/// The gateway and the other S3 client, driven together with the model.
struct World {
    srv: S3TestServer,
    cfg: Config,
    gw: Option<Running>,
    c: Option<Conn>,
    m: Model,
    rng: Rng,
    seed: u64,
    log: Vec<String>,
}

impl World {
    async fn start(&mut self) {
        let gw = start(
            self.cfg.clone(),
            Some((self.srv.access_key.clone(), self.srv.secret_key.clone())),
        )
        .await;
        self.c = Some(mount(gw.nfs_addr).await);
        self.gw = Some(gw);
    }

    fn conn(&mut self) -> &mut Conn {
        self.c.as_mut().unwrap()
    }

    async fn fh(&mut self, path: &str) -> Result<nfs_fh3, nfsstat3> {
        let c = self.conn();
        let mut h = c.root_nfs_fh3();
        for part in path.split('/').filter(|s| !s.is_empty()) {
            h = lookup(c, &h, part).await?;
        }
        Ok(h)
    }

    fn name(p: &str) -> &str {
        p.rsplit('/').next().unwrap()
    }

    /// A random operation the model can predict, given what it holds now.
    fn choose(&mut self) -> Op {
        let dirs: Vec<String> = std::iter::once(String::new())
            .chain(DIRS.iter().map(|d| d.to_string()))
            .collect();
        let files: Vec<String> = dirs
            .iter()
            .flat_map(|d| {
                FILES.iter().map(move |f| {
                    if d.is_empty() {
                        f.to_string()
                    } else {
                        format!("{d}/{f}")
                    }
                })
            })
            .collect();
        let moved = self.m.moved_sources();
        loop {
            let f = self.rng.pick(&files).clone();
            let g = self.rng.pick(&files).clone();
            let d = self.rng.pick(&DIRS).to_string();
            let op = match self.rng.below(100) {
                0..=24 => Op::Write(f),
                25..=32 => Op::Remove(f),
                33..=42 => Op::Rename(f, g),
                43..=47 => Op::Mkdir(d),
                48..=50 => Op::Rmdir(d),
                51..=66 => Op::TheirPut(f),
                67..=74 => Op::TheirDelete(f),
                75..=79 => Op::TheirCopy(f, g),
                80..=89 => Op::Flush,
                90..=95 => Op::RefreshFlush,
                _ => Op::RestartFlush,
            };
            let ok = match &op {
                Op::Write(p) | Op::Remove(p) => self.m.exists_dir(parent(p)) || matches!(op, Op::Remove(_)),
                Op::Rename(a, b) => a != b && self.m.exists_dir(parent(b)) && self.m.rebuildable(a),
                Op::Mkdir(d) => !self.m.local.contains_key(d),
                Op::TheirPut(p) | Op::TheirDelete(p) => !moved.contains(p),
                Op::TheirCopy(a, b) => {
                    a != b
                        && !moved.contains(b)
                        && self.m.bucket.contains_key(&key(a))
                        && !self.m.bucket.contains_key(&key(b))
                }
                _ => true,
            };
            if ok {
                return op;
            }
        }
    }

    async fn apply(&mut self, op: Op) {
        self.log.push(format!("{op:?}"));
        match op {
            Op::Write(p) => self.write(&p).await,
            Op::Remove(p) => self.remove(&p).await,
            Op::Rename(a, b) => self.rename(&a, &b).await,
            Op::Mkdir(d) => self.mkdir(&d).await,
            Op::Rmdir(d) => self.rmdir(&d).await,
            Op::TheirPut(p) => {
                let o = self.m.version(self.seed);
                self.srv.their_put(&key(&p), &o.bytes, None).await;
                self.m.bucket.insert(key(&p), o);
            }
            Op::TheirDelete(p) => {
                self.srv
                    .client
                    .delete_object()
                    .bucket(&self.srv.bucket)
                    .key(key(&p))
                    .send()
                    .await
                    .unwrap();
                self.m.bucket.remove(&key(&p));
            }
            Op::TheirCopy(a, b) => {
                self.srv
                    .client
                    .copy_object()
                    .bucket(&self.srv.bucket)
                    .key(key(&b))
                    .copy_source(format!("{}/{}", self.srv.bucket, key(&a)))
                    .send()
                    .await
                    .unwrap();
                // A copy keeps the length: a new version must differ in size for a
                // listing without ETags to notice, so only empty keys are copied to.
                let mut o = self.m.bucket[&key(&a)].clone();
                o.ver = self.m.bump();
                self.m.bucket.insert(key(&b), o);
            }
            Op::Flush => self.flush().await,
            Op::RefreshFlush => {
                let api = bucketgate::gateway::admin_api(&self.gw.as_ref().unwrap().gateway);
                api.refresh(RefreshRequest {
                    path: Some("/".into()),
                    recursive: true,
                })
                .await
                .unwrap();
                // The root always; below it, the directories listed before.
                self.m.list("");
                let again: Vec<String> = DIRS
                    .iter()
                    .map(|d| d.to_string())
                    .filter(|d| self.m.exists_dir(d) && self.m.listed.contains(d))
                    .collect();
                for d in again {
                    self.m.list(&d);
                }
                self.flush().await;
                self.check_view().await;
            }
            Op::RestartFlush => {
                self.c = None;
                self.gw.take().unwrap().shutdown().await;
                self.start().await;
                self.flush().await;
            }
        }
    }

    /// The gateway's answer must be what the model predicts.
    fn expect_status(&self, what: &str, got: Result<(), nfsstat3>, want: Result<(), nfsstat3>) {
        assert_eq!(got, want, "{what}: seed {} after {:#?}", self.seed, self.log);
    }

    async fn write(&mut self, p: &str) {
        let d = parent(p).to_string();
        self.m.use_dir(&d);
        let dir_ok = self.m.exists_dir(&d);
        self.m.use_entry(p);
        let o = self.m.version(self.seed);
        let got = match self.fh(&d).await {
            Ok(dh) => {
                let c = self.conn();
                let made = c
                    .create(&CREATE3args {
                        where_: diropargs3 {
                            dir: dh,
                            name: name(Self::name(p)),
                        },
                        how: createhow3::UNCHECKED(sattr3 {
                            mode: Nfs3Option::Some(0o644),
                            size: Nfs3Option::Some(0),
                            ..sattr3::default()
                        }),
                    })
                    .await
                    .unwrap();
                match made {
                    Nfs3Result::Ok(ok) => {
                        let Nfs3Option::Some(fh) = ok.obj else {
                            panic!("no handle")
                        };
                        write_all(c, &fh, &o.bytes).await;
                        Ok(())
                    }
                    Nfs3Result::Err((st, _)) => Err(st),
                }
            }
            Err(st) => Err(st),
        };
        if !dir_ok {
            self.expect_status(&format!("write {p}"), got, Err(nfsstat3::NFS3ERR_NOENT));
            return;
        }
        self.expect_status(&format!("write {p}"), got, Ok(()));
        let known = match self.m.local.get(p) {
            Some(Entry::File(f)) => f.known,
            _ => self.m.left_at(p),
        };
        // A file that exists keeps its owner and mode (CREATE UNCHECKED of an
        // existing file only truncates it); a new one is ours.
        let (moved_from, attrs) = match self.m.local.get(p) {
            Some(Entry::File(f)) => (f.moved_from.clone(), f.attrs),
            _ => (None, OURS),
        };
        self.m.local.insert(
            p.to_string(),
            Entry::File(File {
                known,
                dirty: Some(o.bytes.clone()),
                pending: false,
                moved_from,
                cached: Some(o.bytes),
                attrs,
            }),
        );
    }

    async fn remove(&mut self, p: &str) {
        let d = parent(p).to_string();
        self.m.use_dir(&d);
        self.m.use_entry(p);
        let got = match self.fh(&d).await {
            Ok(dh) => remove(self.conn(), &dh, Self::name(p)).await,
            Err(st) => Err(st),
        };
        match self.m.local.get(p).cloned() {
            Some(Entry::File(f)) => {
                self.expect_status(&format!("remove {p}"), got, Ok(()));
                self.m.unlink(p, f);
            }
            Some(Entry::Dir { .. }) => {
                self.expect_status(&format!("remove {p}"), got, Err(nfsstat3::NFS3ERR_ISDIR))
            }
            None => self.expect_status(&format!("remove {p}"), got, Err(nfsstat3::NFS3ERR_NOENT)),
        }
    }

    async fn rename(&mut self, a: &str, b: &str) {
        let (da, db) = (parent(a).to_string(), parent(b).to_string());
        self.m.use_dir(&da);
        self.m.use_dir(&db);
        self.m.use_entry(a);
        if self.m.local.contains_key(a) {
            self.m.use_entry(b);
        }
        let got = match (self.fh(&da).await, self.fh(&db).await) {
            (Ok(ha), Ok(hb)) => rename(self.conn(), &ha, Self::name(a), &hb, Self::name(b)).await,
            (Err(st), _) | (_, Err(st)) => Err(st),
        };
        let what = format!("rename {a} {b}");
        let Some(Entry::File(mut f)) = self.m.local.get(a).cloned() else {
            return self.expect_status(&what, got, Err(nfsstat3::NFS3ERR_NOENT));
        };
        if !self.m.exists_dir(&db) {
            return self.expect_status(&what, got, Err(nfsstat3::NFS3ERR_NOENT));
        }
        match self.m.local.get(b).cloned() {
            Some(Entry::Dir { .. }) => return self.expect_status(&what, got, Err(nfsstat3::NFS3ERR_ISDIR)),
            // A file there is replaced: removed as by REMOVE.
            Some(Entry::File(victim)) => self.m.unlink(b, victim),
            None => {}
        }
        self.expect_status(&what, got, Ok(()));
        self.m.local.remove(a);
        if f.moved_from.is_none() {
            f.moved_from = Some((a.to_string(), f.known));
        }
        f.known = self.m.left_at(b);
        self.m.local.insert(b.to_string(), Entry::File(f));
    }

    async fn mkdir(&mut self, d: &str) {
        self.m.use_dir("");
        let got = match self.fh("").await {
            Ok(root) => {
                let c = self.conn();
                match c
                    .mkdir(&MKDIR3args {
                        where_: diropargs3 {
                            dir: root,
                            name: name(d),
                        },
                        attributes: mode_attr(0o755),
                    })
                    .await
                    .unwrap()
                {
                    Nfs3Result::Ok(_) => Ok(()),
                    Nfs3Result::Err((st, _)) => Err(st),
                }
            }
            Err(st) => Err(st),
        };
        if self.m.local.contains_key(d) {
            self.expect_status(&format!("mkdir {d}"), got, Err(nfsstat3::NFS3ERR_EXIST));
            return;
        }
        self.expect_status(&format!("mkdir {d}"), got, Ok(()));
        self.m.local.insert(
            d.to_string(),
            Entry::Dir {
                marker: None,
                dirty: true,
            },
        );
        self.m.listed.insert(d.to_string());
    }

    async fn rmdir(&mut self, d: &str) {
        self.m.use_dir("");
        let got = match self.fh("").await {
            Ok(root) => {
                let c = self.conn();
                match c
                    .rmdir(&RMDIR3args {
                        object: diropargs3 {
                            dir: root,
                            name: name(d),
                        },
                    })
                    .await
                    .unwrap()
                {
                    Nfs3Result::Ok(_) => Ok(()),
                    Nfs3Result::Err((st, _)) => Err(st),
                }
            }
            Err(st) => Err(st),
        };
        let Some(Entry::Dir { marker, .. }) = self.m.local.get(d).cloned() else {
            self.expect_status(&format!("rmdir {d}"), got, Err(nfsstat3::NFS3ERR_NOENT));
            return;
        };
        // Everything the store holds below is listed first.
        self.m.list(d);
        if !self.m.children(d).is_empty() {
            self.expect_status(&format!("rmdir {d}"), got, Err(nfsstat3::NFS3ERR_NOTEMPTY));
            return;
        }
        self.expect_status(&format!("rmdir {d}"), got, Ok(()));
        self.m.local.remove(d);
        self.m.listed.remove(d);
        if let Some(v) = marker {
            self.m.left.insert(key(&format!("{d}/")), v);
        }
        let _ = marker;
    }

    /// Every local change goes up; the bucket must then be what the model says.
    async fn flush(&mut self) {
        flush(self.gw.as_ref().unwrap()).await;
        self.m.flush();
        self.check_bucket().await;
    }

    async fn check_bucket(&self) {
        let got = common::child::bucket_contents(&self.srv).await;
        let mut want: BTreeMap<String, Vec<u8>> = self
            .m
            .bucket
            .iter()
            .map(|(k, o)| (k.clone(), o.bytes.clone()))
            .collect();
        let mut copies: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (k, v) in &got {
            if let Some((orig, _)) = k.split_once(".conflict-") {
                copies.entry(orig.to_string()).or_default().push(v.clone());
            }
        }
        want.retain(|k, _| !k.contains(".conflict-"));
        let plain: BTreeMap<String, Vec<u8>> = got
            .iter()
            .filter(|(k, _)| !k.contains(".conflict-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let show = |m: &BTreeMap<String, Vec<u8>>| {
            m.iter()
                .map(|(k, v)| format!("{k}:{}", v.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            show(&plain),
            show(&want),
            "bucket keys: seed {} after {:#?}",
            self.seed,
            self.log
        );
        assert!(plain == want, "bucket bytes: seed {}", self.seed);
        // Every object carries the metadata the model says: the file's owner and
        // mode for what the gateway wrote or copied, none for the other client's.
        for (k, o) in &self.m.bucket {
            let h = self
                .srv
                .client
                .head_object()
                .bucket(&self.srv.bucket)
                .key(k)
                .send()
                .await
                .unwrap_or_else(|e| panic!("head {k}: {e:?}"));
            let md = h.metadata().cloned().unwrap_or_default();
            let got = match (md.get("file-owner"), md.get("file-permissions")) {
                (Some(u), Some(m)) => Some((u.parse().unwrap(), u32::from_str_radix(m, 8).unwrap())),
                _ => None,
            };
            assert_eq!(
                got, o.meta,
                "metadata of {k}: seed {} after {:#?}",
                self.seed, self.log
            );
        }
        let mut want_copies = self.m.conflicts.clone();
        for v in want_copies.values_mut() {
            v.sort();
        }
        for v in copies.values_mut() {
            v.sort();
        }
        assert!(
            copies == want_copies,
            "conflict copies: got {:?}, want {:?}; seed {} after {:#?}",
            copies
                .iter()
                .map(|(k, v)| (
                    k,
                    v.iter().map(|b| (b.len(), b[..4].to_vec())).collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>(),
            want_copies
                .iter()
                .map(|(k, v)| (
                    k,
                    v.iter().map(|b| (b.len(), b[..4].to_vec())).collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>(),
            self.seed,
            self.log
        );
    }

    /// After a refresh, each directory shows the names the model predicts.
    async fn check_view(&mut self) {
        let dirs: Vec<String> = self.m.listed.iter().cloned().collect();
        for d in dirs {
            if !self.m.exists_dir(&d) {
                continue;
            }
            let Ok(h) = self.fh(&d).await else {
                panic!("{d:?} missing: seed {} after {:#?}", self.seed, self.log);
            };
            let mut got = list_names(self.conn(), &h).await;
            // READDIRPLUS reads the attributes of every entry it answers with.
            for p in self.m.children(&d) {
                self.m.use_entry(&p);
            }
            got.retain(|n| !n.contains(".conflict-"));
            got.sort();
            let want: Vec<String> = self
                .m
                .children(&d)
                .iter()
                .map(|p| Self::name(p).to_string())
                .filter(|n| !n.contains(".conflict-"))
                .collect();
            assert_eq!(
                got, want,
                "names in {d:?}: seed {} after {:#?}",
                self.seed, self.log
            );
        }
    }
}

async fn run_seed(seed: u64, rounds: usize) {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), &format!("s3://{}/pre/", srv.bucket));
    cfg = share_with(&cfg, |s| {
        s.endpoint = Some(srv.endpoint.clone());
        s.path_style = true;
        s.region = Some("us-east-1".into());
    });
    // Uploads happen at the flushes only, so the model knows when.
    cfg.cache.upload_delay = HumanDuration(Duration::from_secs(3600));
    cfg.cache.max_dirty_age = HumanDuration(Duration::from_secs(3600));
    let mut w = World {
        srv,
        cfg,
        gw: None,
        c: None,
        m: Model::default(),
        rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        seed,
        log: Vec::new(),
    };
    // Outside the share: nothing the gateway does may touch it.
    let outside = Obj {
        ver: 0,
        bytes: b"not the share's".to_vec(),
        meta: None,
    };
    w.srv.their_put("elsewhere/untouched", &outside.bytes, None).await;
    w.m.bucket.insert("elsewhere/untouched".into(), outside);
    w.start().await;
    for _ in 0..rounds {
        for _ in 0..6 {
            let op = w.choose();
            let is_sync = matches!(op, Op::Flush | Op::RefreshFlush | Op::RestartFlush);
            w.apply(op).await;
            if is_sync {
                break;
            }
        }
        w.apply(Op::Flush).await;
    }
    w.apply(Op::RefreshFlush).await;
    w.c = None;
    w.gw.take().unwrap().shutdown().await;
    let conflicts: usize = w.m.conflicts.values().map(Vec::len).sum();
    eprintln!(
        "reftest seed {seed}: {} operations, {} objects, {conflicts} conflict copies, {} restarts",
        w.log.len(),
        w.m.bucket.len(),
        w.log.iter().filter(|l| l.starts_with("RestartFlush")).count()
    );
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_against_another_writer_end_with_the_bucket_the_model_predicts() {
    let rounds = env("BUCKETGATE_REFTEST_ROUNDS", 10) as usize;
    let seeds: Vec<u64> = match std::env::var("BUCKETGATE_REFTEST_SEED") {
        Ok(s) => vec![s.parse().expect("a seed is a number")],
        Err(_) => (1..=env("BUCKETGATE_REFTEST_CASES", 4)).collect(),
    };
    for seed in seeds {
        let limit = Duration::from_secs(60 + 30 * rounds as u64);
        tokio::time::timeout(limit, run_seed(seed, rounds))
            .await
            .unwrap_or_else(|_| panic!("seed {seed} did not finish in {limit:?}"));
    }
}
