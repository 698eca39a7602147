use bucketgate_cache::*;

fn open(dir: &std::path::Path) -> Cache {
    Cache::open(dir, CacheOptions::default()).unwrap()
}

fn user() -> Caller {
    Caller::new(1000, 1000, vec![])
}

/// What an uploaded object carries: owner, group and mode (mtime 0).
fn attrs(uid: u32, gid: u32, mode: u32) -> ObjectAttrs {
    ObjectAttrs {
        uid,
        gid,
        mode,
        mtime_ns: 0,
    }
}

fn unchecked(mode: u32) -> CreateMode {
    CreateMode::Unchecked(SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    })
}

#[test]
fn write_read_and_survive_reopen() {
    let t = tempfile::tempdir().unwrap();
    let (id, generation) = {
        let c = open(t.path());
        let (f, _) = c.create(&user(), ROOT_ID, b"a.txt", unchecked(0o644)).unwrap();
        c.write(&user(), f.id, 0, b"hello ", false).unwrap();
        let (_, after) = c.write(&user(), f.id, 6, b"world", false).unwrap();
        assert_eq!(after.size, 11);
        c.commit(f.id).unwrap();
        (f.id, f.generation)
    };
    let c = open(t.path());
    let f = c.get_checked(id, generation).unwrap();
    assert_eq!(f.size, 11);
    let (data, eof, _) = c.read(&user(), id, 0, 100).unwrap();
    assert_eq!(data, b"hello world");
    assert!(eof);
    assert!(matches!(
        c.get_checked(id, generation ^ 1),
        Err(CacheError::Stale)
    ));
    assert_eq!(
        c.pending().unwrap().len(),
        1,
        "the committed file is still queued for upload"
    );
    assert_eq!(c.dirty_bytes(), 11);
}

#[test]
fn permissions_follow_mode_owner_and_group() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    let (d, _) = c
        .mkdir(
            &user(),
            ROOT_ID,
            b"private",
            SetAttr {
                mode: Some(0o700),
                ..SetAttr::default()
            },
        )
        .unwrap();
    let other = Caller::new(2000, 2000, vec![]);
    assert!(matches!(
        c.create(&other, d.id, b"x", unchecked(0o644)),
        Err(CacheError::Access)
    ));
    assert!(matches!(c.lookup(&other, d.id, b"x"), Err(CacheError::Access)));
    let (f, _) = c.create(&user(), d.id, b"x", unchecked(0o640)).unwrap();
    let (_, granted) = c.access(&Caller::new(3000, 1000, vec![]), f.id).unwrap();
    assert_eq!(granted, READ, "group members read a 0640 file");
    assert!(matches!(
        c.setattr(
            &other,
            f.id,
            SetAttr {
                mode: Some(0o777),
                ..SetAttr::default()
            },
            None
        ),
        Err(CacheError::Perm)
    ));
    assert!(matches!(
        c.setattr(
            &user(),
            f.id,
            SetAttr {
                uid: Some(0),
                ..SetAttr::default()
            },
            None
        ),
        Err(CacheError::Perm)
    ));
    c.setattr(
        &Caller::root(),
        f.id,
        SetAttr {
            uid: Some(4242),
            ..SetAttr::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(c.get(f.id).unwrap().uid, 4242);
}

#[test]
fn hostile_names_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    for bad in [&b"a/b"[..], b"", b".", b"..", b"nul\0x", b"\xff\xfe"] {
        assert!(
            matches!(
                c.create(&user(), ROOT_ID, bad, unchecked(0o644)),
                Err(CacheError::Invalid)
            ),
            "{bad:?}"
        );
    }
    let long = vec![b'x'; 256];
    assert!(matches!(
        c.create(&user(), ROOT_ID, &long, unchecked(0o644)),
        Err(CacheError::NameTooLong)
    ));
}

#[test]
fn exclusive_create_is_idempotent_for_the_same_verifier() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    let (a, _) = c
        .create(&user(), ROOT_ID, b"e", CreateMode::Exclusive([7; 8]))
        .unwrap();
    let (b, _) = c
        .create(&user(), ROOT_ID, b"e", CreateMode::Exclusive([7; 8]))
        .unwrap();
    assert_eq!(a.id, b.id);
    assert!(matches!(
        c.create(&user(), ROOT_ID, b"e", CreateMode::Exclusive([8; 8])),
        Err(CacheError::Exists)
    ));
    assert!(matches!(
        c.create(&user(), ROOT_ID, b"e", CreateMode::Guarded(SetAttr::default())),
        Err(CacheError::Exists)
    ));
}

#[test]
fn readdir_cookies_survive_changes() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    for i in 0..10 {
        c.create(&user(), ROOT_ID, format!("f{i}").as_bytes(), unchecked(0o644))
            .unwrap();
    }
    let first = c.readdir(&user(), ROOT_ID, 0, 6).unwrap();
    assert!(!first.eof);
    assert_eq!(first.entries[0].name, b".");
    assert_eq!(first.entries[1].name, b"..");
    let last = first.entries.last().unwrap().cookie;
    // Removing an already-listed entry must not shift the rest.
    c.remove(&user(), ROOT_ID, b"f0").unwrap();
    let rest = c.readdir(&user(), ROOT_ID, last, 100).unwrap();
    assert!(rest.eof);
    let mut names: Vec<_> = first.entries[2..]
        .iter()
        .chain(rest.entries.iter())
        .map(|e| e.name.clone())
        .collect();
    names.sort();
    let mut want: Vec<_> = (0..10).map(|i| format!("f{i}").into_bytes()).collect();
    want.sort();
    assert_eq!(names, want, "every name once");
}

#[test]
fn rename_directory_requeues_its_subtree_and_rejects_loops() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    let (d, _) = c.mkdir(&user(), ROOT_ID, b"d", SetAttr::default()).unwrap();
    let (s, _) = c.mkdir(&user(), d.id, b"s", SetAttr::default()).unwrap();
    let (f, _) = c.create(&user(), s.id, b"f", unchecked(0o644)).unwrap();
    let seq_before = c.get(f.id).unwrap().change_seq;
    c.rename(&user(), ROOT_ID, b"d", ROOT_ID, b"e").unwrap();
    let f2 = c.get(f.id).unwrap();
    assert!(f2.change_seq > seq_before);
    assert_eq!(c.path_of(&f2).unwrap(), "e/s/f");
    assert!(matches!(
        c.rename(&user(), ROOT_ID, b"e", s.id, b"inside"),
        Err(CacheError::Invalid)
    ));
    assert!(matches!(
        c.rmdir(&user(), ROOT_ID, b"e"),
        Err(CacheError::NotEmpty)
    ));
}

#[test]
fn removing_an_uploaded_file_leaves_its_key_to_delete() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    let (f, _) = c.create(&user(), ROOT_ID, b"gone", unchecked(0o644)).unwrap();
    let seq = c.get(f.id).unwrap().change_seq;
    assert!(
        c.record_upload(f.id, seq, "gone", "etag1", seq, attrs(1000, 1000, 0o100644))
            .unwrap()
    );
    assert!(c.pending().unwrap().is_empty(), "clean after upload");
    c.remove(&user(), ROOT_ID, b"gone").unwrap();
    let rec = c.load_any(f.id).unwrap().unwrap();
    assert!(rec.unlinked);
    assert_eq!(rec.remote.stale_keys, vec!["gone".to_string()]);
    assert!(!c.key_is_live("gone").unwrap());
    c.record_deleted(f.id, "gone", true).unwrap();
    assert!(
        c.load_any(f.id).unwrap().is_none(),
        "record dropped once the object is gone"
    );
    assert!(c.pending().unwrap().is_empty());
}

#[test]
fn dirty_limit_answers_try_later() {
    let t = tempfile::tempdir().unwrap();
    let c = Cache::open(
        t.path(),
        CacheOptions {
            dirty_limit_bytes: 100,
            ..CacheOptions::default()
        },
    )
    .unwrap();
    let (f, _) = c.create(&user(), ROOT_ID, b"big", unchecked(0o644)).unwrap();
    c.write(&user(), f.id, 0, &[1; 80], false).unwrap();
    let (g, _) = c.create(&user(), ROOT_ID, b"other", unchecked(0o644)).unwrap();
    assert!(matches!(
        c.write(&user(), g.id, 0, &[1; 40], false),
        Err(CacheError::TryLater)
    ));
    // Overwriting bytes already dirty adds nothing and is allowed.
    c.write(&user(), f.id, 0, &[2; 40], false).unwrap();
    // A file alone may grow past the limit: otherwise a file larger than the limit
    // could never be written again once uploaded.
    c.write(&user(), f.id, 80, &[1; 40], false).unwrap();
}

fn listed_file(name: &str, size: u64, etag: &str) -> RemoteEntry {
    RemoteEntry {
        name: name.as_bytes().to_vec(),
        kind: RemoteKind::File {
            size,
            etag: etag.into(),
            mtime_ns: 1_000,
        },
    }
}

#[test]
fn listings_add_change_and_remove_entries_but_local_changes_win() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    assert!(
        c.needs_listing(ROOT_ID, None).unwrap(),
        "a new share lists its bucket first"
    );
    let started = 1; // before any upload of ours
    let ch = c
        .apply_listing(
            ROOT_ID,
            vec![
                listed_file("a.txt", 3 << 20, "e1"),
                listed_file("b.txt", 10, "e1"),
                RemoteEntry {
                    name: b"sub".to_vec(),
                    kind: RemoteKind::Dir,
                },
                listed_file("bad/name", 1, "e"),
            ],
            started,
        )
        .unwrap();
    assert_eq!(ch.added, 3, "the name with a slash is skipped");
    assert!(!c.needs_listing(ROOT_ID, None).unwrap());
    // A listing carries no attributes: nothing is decided or answered on the
    // placeholders until the object's metadata is read.
    let a = c.peek(ROOT_ID, b"a.txt").unwrap().unwrap();
    assert!(a.partial && a.meta_pending);
    assert!(matches!(c.lookup(&user(), ROOT_ID, b"a.txt"), Err(CacheError::AttrsUnknown(id)) if id == a.id));
    assert!(matches!(
        c.read(&user(), a.id, 0, 1),
        Err(CacheError::AttrsUnknown(_))
    ));
    assert!(matches!(c.getattr(a.id), Err(CacheError::AttrsUnknown(_))));
    let head = |etag: &str, size| ObjectHead {
        etag: etag.into(),
        size,
        attrs: None,
        symlink_target: None,
    };
    for name in [&b"a.txt"[..], b"b.txt"] {
        let id = c.peek(ROOT_ID, name).unwrap().unwrap().id;
        c.apply_head(id, Some(head("e1", if name == b"a.txt" { 3 << 20 } else { 10 })))
            .unwrap();
    }
    let a = c.lookup(&user(), ROOT_ID, b"a.txt").unwrap();
    assert_eq!(
        (a.size, a.mode, a.uid),
        (3 << 20, 0o666, 65534),
        "no metadata: the share's defaults"
    );
    let sub = c.peek(ROOT_ID, b"sub").unwrap().unwrap();
    assert!(c.needs_listing(sub.id, None).unwrap());
    c.apply_head(sub.id, None).unwrap();
    // Reading needs the store: the engine names the block-aligned ranges to fetch.
    match c.read(&user(), a.id, (1 << 20) + 5, 10) {
        Err(CacheError::NotCached(id, r)) => {
            assert_eq!(id, a.id);
            assert_eq!(r, vec![(1 << 20, 1 << 20)]);
        }
        other => panic!("{other:?}"),
    }
    c.fill(a.id, "e1", 1 << 20, &vec![9u8; 1 << 20]).unwrap();
    assert_eq!(c.read(&user(), a.id, (1 << 20) + 5, 10).unwrap().0, vec![9u8; 10]);
    // A write needs the whole file first, then the file is whole and dirty.
    assert!(matches!(
        c.write(&user(), a.id, 0, b"x", false),
        Err(CacheError::NotCached(..))
    ));
    c.fill(a.id, "e1", 0, &vec![1u8; 1 << 20]).unwrap();
    c.fill(a.id, "e1", 2 << 20, &vec![2u8; 1 << 20]).unwrap();
    c.write(&Caller::root(), a.id, 0, b"x", false).unwrap();
    assert!(!c.get(a.id).unwrap().partial);
    // The store changes both files and drops everything else.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let ch = c
        .apply_listing(
            ROOT_ID,
            vec![listed_file("a.txt", 5, "e2"), listed_file("b.txt", 20, "e2")],
            later,
        )
        .unwrap();
    assert_eq!(ch.changed, 1, "b.txt (clean) takes the new version");
    assert_eq!(ch.removed, 1, "sub is gone");
    assert_eq!(
        c.get(a.id).unwrap().size,
        3 << 20,
        "a.txt has local changes: they win"
    );
    let b = c.peek(ROOT_ID, b"b.txt").unwrap().unwrap();
    assert_eq!(b.size, 20);
    assert!(b.meta_pending, "a new version's attributes are read again");
    assert!(matches!(
        c.lookup(&user(), ROOT_ID, b"sub"),
        Err(CacheError::NotFound)
    ));
}

#[test]
fn clean_data_is_evicted_beyond_capacity_and_dirty_data_never() {
    let t = tempfile::tempdir().unwrap();
    let c = Cache::open(
        t.path(),
        CacheOptions {
            capacity_bytes: 4 << 20,
            ..CacheOptions::default()
        },
    )
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        let (f, _) = c
            .create(&user(), ROOT_ID, format!("f{i}").as_bytes(), unchecked(0o644))
            .unwrap();
        c.write(&user(), f.id, 0, &vec![i as u8; 2 << 20], false).unwrap();
        ids.push(f.id);
    }
    // Upload the first three; the fourth stays dirty.
    for &id in &ids[..3] {
        let i = c.get(id).unwrap();
        c.record_upload(
            id,
            i.change_seq,
            &format!("f{id}"),
            "etag",
            i.data_seq,
            ObjectAttrs::default(),
        )
        .unwrap();
    }
    c.run_evictions();
    let evicted: Vec<_> = ids[..3]
        .iter()
        .filter(|&&id| c.get(id).unwrap().partial)
        .collect();
    assert!(!evicted.is_empty(), "6 MiB of clean data does not fit 4 MiB");
    assert!(!c.get(ids[3]).unwrap().partial, "dirty data is never evicted");
    assert_eq!(c.read(&user(), ids[3], 0, 4).unwrap().0, vec![3u8; 4]);
    let gone = *evicted[0];
    assert!(matches!(
        c.read(&user(), gone, 0, 4),
        Err(CacheError::NotCached(..))
    ));
    assert!(c.evicted().0 >= 1);
}

/// Every call that takes a name refuses the same hostile names, and paths stay
/// within the key limit whichever way a file gets deep: create, mkdir, symlink,
/// rename of a file, rename of a directory whose descendants would grow too long.
#[test]
fn hostile_names_are_refused_by_every_call() {
    let t = tempfile::tempdir().unwrap();
    let opts = CacheOptions {
        max_path_bytes: 64,
        ..CacheOptions::default()
    };
    let c = Cache::open(t.path(), opts).unwrap();
    let u = user();
    let (f, _) = c.create(&u, ROOT_ID, b"f", unchecked(0o644)).unwrap();
    let (d, _) = c.mkdir(&u, ROOT_ID, b"d", SetAttr::default()).unwrap();
    let long = vec![b'x'; 256];
    type Check = fn(&CacheError) -> bool;
    let cases: [(&[u8], Check); 7] = [
        (b"a/b", |e| matches!(e, CacheError::Invalid)),
        (b"", |e| matches!(e, CacheError::Invalid)),
        (b".", |e| matches!(e, CacheError::Invalid)),
        (b"..", |e| matches!(e, CacheError::Invalid)),
        (b"nul\0x", |e| matches!(e, CacheError::Invalid)),
        (b"\xff\xfe", |e| matches!(e, CacheError::Invalid)),
        (&long, |e| matches!(e, CacheError::NameTooLong)),
    ];
    for (bad, want) in cases {
        let shown = String::from_utf8_lossy(&bad[..bad.len().min(8)]).into_owned();
        let e = c.mkdir(&u, ROOT_ID, bad, SetAttr::default()).unwrap_err();
        assert!(want(&e), "mkdir {shown:?}: {e:?}");
        let e = c
            .symlink(&u, ROOT_ID, bad, b"target", SetAttr::default())
            .unwrap_err();
        assert!(want(&e), "symlink {shown:?}: {e:?}");
        let e = c.rename(&u, ROOT_ID, b"f", ROOT_ID, bad).unwrap_err();
        assert!(want(&e), "rename to {shown:?}: {e:?}");
        let e = c
            .create(&u, d.id, bad, CreateMode::Exclusive(*b"verifier"))
            .unwrap_err();
        assert!(want(&e), "exclusive create {shown:?}: {e:?}");
    }
    // Removing "." or ".." is refused, never acts on the directory or its parent.
    assert!(c.remove(&u, d.id, b".").is_err());
    assert!(c.rmdir(&u, d.id, b"..").is_err());
    assert!(c.rename(&u, d.id, b"..", ROOT_ID, b"z").is_err());
    assert!(matches!(
        c.lookup(&u, ROOT_ID, &long),
        Err(CacheError::NameTooLong)
    ));
    assert!(matches!(c.lookup(&u, ROOT_ID, b"d/f"), Err(CacheError::NotFound)));
    // Symlink targets: no NUL, at most 4096 bytes.
    assert!(
        c.symlink(&u, ROOT_ID, b"s1", b"a\0b", SetAttr::default())
            .is_err()
    );
    assert!(matches!(
        c.symlink(&u, ROOT_ID, b"s2", &[b'a'; 4097], SetAttr::default()),
        Err(CacheError::NameTooLong)
    ));
    // 255 bytes is a fine name where the path allows it.
    let c2_dir = tempfile::tempdir().unwrap();
    let c2 = open(c2_dir.path());
    c2.create(&u, ROOT_ID, &[b'n'; 255], unchecked(0o644)).unwrap();

    // Paths: 64 bytes here, one kept for a directory marker's "/": "d/" + 62 is
    // over, however the file gets there.
    let name62 = vec![b'y'; 62];
    assert!(matches!(
        c.create(&u, d.id, &name62, unchecked(0o644)),
        Err(CacheError::NameTooLong)
    ));
    assert!(matches!(
        c.rename(&u, ROOT_ID, b"f", d.id, &name62),
        Err(CacheError::NameTooLong)
    ));
    // A directory holding a 50-byte name may not move under a 20-byte name.
    let name50 = vec![b'z'; 50];
    c.create(&u, d.id, &name50, unchecked(0o644)).unwrap();
    let (deep, _) = c.mkdir(&u, ROOT_ID, &[b'w'; 20], SetAttr::default()).unwrap();
    assert!(matches!(
        c.rename(&u, ROOT_ID, b"d", deep.id, b"d"),
        Err(CacheError::NameTooLong)
    ));
    // Nothing above changed the namespace.
    assert_eq!(c.lookup(&u, ROOT_ID, b"f").unwrap().id, f.id);
    assert_eq!(c.lookup(&u, ROOT_ID, b"d").unwrap().id, d.id);
    let names: Vec<_> = c
        .readdir(&u, ROOT_ID, 0, 100)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 5, "., .., f, d, w…: {names:?}");
    for e in c.pending().unwrap() {
        let i = c.load_any(e).unwrap().unwrap();
        assert!(c.path_of(&i).unwrap().len() < 64);
    }
}

/// A stale key whose path a live file names again is handed to that file, not
/// forgotten: when the file moves on before uploading there, the key is still
/// deleted (this used to leave the old object in the bucket for ever).
#[test]
fn a_stale_key_taken_by_another_file_is_still_cleaned_up_when_it_moves_on() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    let u = user();
    let meta = attrs(1000, 1000, 0o100644);
    let (a, _) = c.create(&u, ROOT_ID, b"k", unchecked(0o644)).unwrap();
    let seq = c.get(a.id).unwrap().change_seq;
    assert!(c.record_upload(a.id, seq, "k", "e1", seq, meta).unwrap());
    // b is renamed over k: a is unlinked and owes the deletion of "k".
    let (b, _) = c.create(&u, ROOT_ID, b"b", unchecked(0o644)).unwrap();
    c.rename(&u, ROOT_ID, b"b", ROOT_ID, b"k").unwrap();
    assert_eq!(c.load_any(a.id).unwrap().unwrap().remote.stale_keys, ["k"]);
    // The uploader finds "k" live (it is b's path): b takes the duty over.
    assert!(c.hand_over_stale_key(a.id, "k").unwrap());
    c.record_deleted(a.id, "k", false).unwrap();
    assert_eq!(
        c.left_version("k").unwrap().as_deref(),
        Some("e1"),
        "a's object is still there"
    );
    assert!(c.load_any(a.id).unwrap().is_none());
    assert_eq!(c.get(b.id).unwrap().remote.stale_keys, ["k"]);
    // b moves on before its upload and is uploaded under its new name...
    c.rename(&u, ROOT_ID, b"k", ROOT_ID, b"z").unwrap();
    let seq = c.get(b.id).unwrap().change_seq;
    let data_seq = c.get(b.id).unwrap().data_seq;
    assert!(c.record_upload(b.id, seq, "z", "e2", data_seq, meta).unwrap());
    // ...and still owes "k", which nothing names now: it gets deleted.
    assert_eq!(c.get(b.id).unwrap().remote.stale_keys, ["k"]);
    assert!(!c.hand_over_stale_key(b.id, "k").unwrap());
    c.record_deleted(b.id, "k", true).unwrap();
    assert!(c.pending().unwrap().is_empty(), "clean at the end");
}

#[test]
fn a_conflict_moves_the_local_file_aside_and_leaves_the_name_to_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let me = user();
    let f = cache
        .create(&me, ROOT_ID, b"report.txt", unchecked(0o644))
        .unwrap()
        .0;
    cache.write(&me, f.id, 0, b"local", true).unwrap();
    // A clash with an earlier conflict copy gets a counter.
    cache
        .create(
            &me,
            ROOT_ID,
            b"report.txt.conflict-20261129T120000Z",
            unchecked(0o644),
        )
        .unwrap();
    let got = cache
        .set_aside_conflict(f.id, "report.txt", "20261129T120000Z")
        .unwrap();
    assert_eq!(got.as_deref(), Some("report.txt.conflict-20261129T120000Z-2"));
    assert!(matches!(
        cache.lookup(&me, ROOT_ID, b"report.txt"),
        Err(CacheError::NotFound)
    ));
    let moved = cache
        .lookup(&me, ROOT_ID, b"report.txt.conflict-20261129T120000Z-2")
        .unwrap();
    assert_eq!(moved.id, f.id);
    assert!(moved.remote.key.is_none() && moved.remote.stale_keys.is_empty());
    assert!(moved.is_dirty());
    // The store's version comes back at the next access.
    assert!(cache.needs_listing(ROOT_ID, None).unwrap());
    // No longer at that key: nothing to do.
    assert_eq!(cache.set_aside_conflict(f.id, "report.txt", "x").unwrap(), None);
}

#[test]
fn a_conflict_copy_of_a_long_name_is_cut_at_a_character_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let me = user();
    let long = "é".repeat(127); // 254 bytes
    let f = cache
        .create(&me, ROOT_ID, long.as_bytes(), unchecked(0o644))
        .unwrap()
        .0;
    let got = cache
        .set_aside_conflict(f.id, &long, "20261129T120000Z")
        .unwrap()
        .unwrap();
    assert!(
        got.len() <= 255 && got.ends_with(".conflict-20261129T120000Z"),
        "{got}"
    );
    assert!(got.starts_with("éé"));
}

#[test]
fn a_directory_made_in_a_setgid_directory_inherits_its_group_and_setgid() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open(tmp.path());
    let root = Caller::new(0, 0, vec![]);
    let shared = cache
        .mkdir(
            &root,
            ROOT_ID,
            b"shared",
            SetAttr {
                mode: Some(0o2775),
                gid: Some(500),
                ..SetAttr::default()
            },
        )
        .unwrap()
        .0;
    let me = Caller::new(1000, 1000, vec![500]);
    let sub = cache
        .mkdir(
            &me,
            shared.id,
            b"sub",
            SetAttr {
                mode: Some(0o755),
                ..SetAttr::default()
            },
        )
        .unwrap()
        .0;
    assert_eq!((sub.gid, sub.mode), (500, 0o2755));
    let file = cache.create(&me, shared.id, b"f", unchecked(0o644)).unwrap().0;
    assert_eq!(
        (file.gid, file.mode),
        (500, 0o644),
        "files get the group, not setgid"
    );
}

/// A listing that started before the uploader deleted a removed file's object may
/// still show that object; applied afterwards, it must not bring the file back
/// (RMDIR after `rm -rf` answered NOTEMPTY when the delete won that race; found by
/// the Linux kernel client in the VM check). Another client's version written
/// there later still shows.
#[test]
fn a_listing_from_before_a_delete_does_not_bring_the_removed_file_back() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    let u = user();
    let meta = attrs(1000, 1000, 0o100644);
    let (f, _) = c.create(&u, ROOT_ID, b"f", unchecked(0o644)).unwrap();
    let seq = c.get(f.id).unwrap().change_seq;
    assert!(c.record_upload(f.id, seq, "f", "e1", seq, meta).unwrap());
    let started = c.get(f.id).unwrap().remote.synced_ns + 1;
    c.remove(&u, ROOT_ID, b"f").unwrap();
    assert!(c.leaving("f", "e1", started).unwrap());
    c.record_deleted(f.id, "f", true).unwrap();
    assert!(c.left_version("f").unwrap().is_none());
    let ch = c
        .apply_listing(ROOT_ID, vec![listed_file("f", 10, "e1")], started)
        .unwrap();
    assert_eq!(ch.added, 0, "the deleted version is not a new file");
    assert!(c.peek(ROOT_ID, b"f").unwrap().is_none());
    // A listing started after the delete saw the store as it is now.
    let later = started + 1_000_000_000_000;
    assert!(!c.leaving("f", "e1", later).unwrap());
    let ch = c
        .apply_listing(ROOT_ID, vec![listed_file("f", 10, "e2")], started)
        .unwrap();
    assert_eq!(ch.added, 1, "another client's version is theirs");
}

/// The uploader picked a file that is removed before it notes its intent: nothing
/// may be written for it (the object would be nobody's, and a crash before its
/// deletion kept it for ever).
#[test]
fn no_intent_for_a_file_removed_before_its_upload() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    let (f, _) = c.create(&user(), ROOT_ID, b"f", unchecked(0o644)).unwrap();
    c.remove(&user(), ROOT_ID, b"f").unwrap();
    assert!(!c.record_intent(f.id, "f", None).unwrap());
    assert!(c.left_version("f").unwrap().is_none());
}

/// A sparse file counts the disk it holds, not its size: a 5 TiB truncate, or a
/// write far past the end, leaves room under the dirty limit for other files, and so
/// does writing to such a file again once it is clean.
#[test]
fn sparse_files_count_what_they_hold_against_the_dirty_limit() {
    let t = tempfile::tempdir().unwrap();
    let c = Cache::open(
        t.path(),
        CacheOptions {
            dirty_limit_bytes: 1 << 20,
            ..CacheOptions::default()
        },
    )
    .unwrap();
    let u = user();
    let (huge, _) = c.create(&u, ROOT_ID, b"huge", unchecked(0o644)).unwrap();
    let size = SetAttr {
        size: Some(5 << 40),
        ..SetAttr::default()
    };
    c.setattr(&u, huge.id, size, None).unwrap();
    c.write(&u, huge.id, (5 << 40) - 4096, &[1; 4096], false).unwrap();
    assert!(c.dirty_bytes() < 1 << 20, "{} dirty", c.dirty_bytes());
    let (other, _) = c.create(&u, ROOT_ID, b"other", unchecked(0o644)).unwrap();
    c.write(&u, other.id, 0, &[2; 4096], false).unwrap();
    // Clean again, then written: its holes do not turn dirty.
    let i = c.get(huge.id).unwrap();
    assert!(
        c.record_upload(
            huge.id,
            i.change_seq,
            "huge",
            "e1",
            i.data_seq,
            attrs(1000, 1000, 0o100644)
        )
        .unwrap()
    );
    c.write(&u, huge.id, 0, &[3; 4096], false).unwrap();
    c.write(&u, other.id, 4096, &[2; 4096], false).unwrap();
    assert!(c.dirty_bytes() < 1 << 20, "{} dirty", c.dirty_bytes());
}

/// A clean sparse file weighs in the LRU what the cache disk holds of it: an
/// uploaded 5 TiB sparse file used to weigh 5 TiB, more than the whole cache, and
/// was evicted at once (its next reads fetched zeros from the store).
#[test]
fn a_clean_sparse_file_stays_cached_and_leaves_room_for_others() {
    let t = tempfile::tempdir().unwrap();
    let c = Cache::open(
        t.path(),
        CacheOptions {
            capacity_bytes: 64 << 20,
            ..CacheOptions::default()
        },
    )
    .unwrap();
    let u = user();
    let meta = attrs(1000, 1000, 0o100644);
    let clean = |id: FileId, key: &str| {
        let i = c.get(id).unwrap();
        assert!(
            c.record_upload(id, i.change_seq, key, "e", i.data_seq, meta)
                .unwrap()
        );
    };
    let (small, _) = c.create(&u, ROOT_ID, b"small", unchecked(0o644)).unwrap();
    c.write(&u, small.id, 0, &[1; 4096], false).unwrap();
    clean(small.id, "small");
    let (huge, _) = c.create(&u, ROOT_ID, b"huge", unchecked(0o644)).unwrap();
    let size = SetAttr {
        size: Some(5 << 40),
        ..SetAttr::default()
    };
    c.setattr(&u, huge.id, size, None).unwrap();
    clean(huge.id, "huge");
    c.run_evictions();
    assert!(!c.get(huge.id).unwrap().partial, "the sparse file stays cached");
    let (data, _, _) = c.read(&u, small.id, 0, 4096).unwrap();
    assert_eq!(data, vec![1; 4096], "and so does the small one");
    assert!(!c.get(small.id).unwrap().partial);
}

/// Another client replaces a file the gateway wrote with an object that carries no
/// POSIX metadata: once its HEAD is read, the file has the share's defaults, not the
/// owner and mode of the version that is gone (found by reftest seed 27, where the
/// next write uploaded the old owner and mode into the other client's object).
#[test]
fn a_replaced_object_without_metadata_gets_the_defaults_not_the_old_attributes() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    let u = user();
    let (f, _) = c.create(&u, ROOT_ID, b"f", unchecked(0o600)).unwrap();
    c.write(&u, f.id, 0, b"ours", false).unwrap();
    let i = c.get(f.id).unwrap();
    assert!(
        c.record_upload(
            f.id,
            i.change_seq,
            "f",
            "e1",
            i.data_seq,
            attrs(1000, 1000, 0o100600)
        )
        .unwrap()
    );
    let started = c.get(f.id).unwrap().remote.synced_ns + 1;
    let ch = c
        .apply_listing(ROOT_ID, vec![listed_file("f", 6, "e2")], started)
        .unwrap();
    assert_eq!(ch.changed, 1);
    let head = ObjectHead {
        etag: "e2".into(),
        size: 6,
        attrs: None,
        symlink_target: None,
    };
    let i = c.apply_head(f.id, Some(head)).unwrap();
    let d = CacheOptions::default();
    assert_eq!(
        (i.uid, i.gid, i.mode),
        (d.root_uid, d.root_gid, d.default_file_mode)
    );
    assert!(
        c.pending().unwrap().is_empty(),
        "reading the store uploads nothing"
    );
}

/// A clean file whose cached bytes went missing behind its record's back (a crash
/// between an eviction's truncation, or a listing's removal of the data file, and
/// the batch recording it) is not served as zeros after a restart: it is fetched
/// from the store again.
#[test]
fn a_clean_file_whose_cached_bytes_were_lost_is_fetched_again_after_restart() {
    let t = tempfile::tempdir().unwrap();
    let ids: Vec<FileId> = {
        let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
        ["truncated", "deleted", "dirty"]
            .iter()
            .map(|n| {
                let (f, _) = c
                    .create(&user(), ROOT_ID, n.as_bytes(), unchecked(0o644))
                    .unwrap();
                c.write(&user(), f.id, 0, &[7u8; 10_000], true).unwrap();
                if *n != "dirty" {
                    let i = c.get(f.id).unwrap();
                    c.record_upload(
                        f.id,
                        i.change_seq,
                        n,
                        "etag",
                        i.data_seq,
                        attrs(1000, 1000, 0o100644),
                    )
                    .unwrap();
                }
                f.id
            })
            .collect()
    };
    let data_of = |id: FileId| t.path().join("data").join(format!("{id:016x}"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(data_of(ids[0]))
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::remove_file(data_of(ids[1])).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(data_of(ids[2]))
        .unwrap()
        .set_len(100)
        .unwrap();
    let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
    for &id in &ids[..2] {
        assert!(
            c.get(id).unwrap().partial,
            "file {id} is whole over missing bytes"
        );
        let r = c.read(&user(), id, 0, 100);
        assert!(matches!(r, Err(CacheError::NotCached(..))), "file {id}: {r:?}");
    }
    // A dirty file keeps what it has: nothing else holds its bytes.
    assert!(!c.get(ids[2]).unwrap().partial);
}

/// A directory's link count is 2 plus its subdirectories, through mkdir, rmdir,
/// renames between directories and over an empty directory, and listings that add
/// or drop a directory (pjdfstest `rename::updates_link_parent`), and a reopen.
#[test]
fn a_directory_counts_its_subdirectories_in_its_link_count() {
    let t = tempfile::tempdir().unwrap();
    let c = open(t.path());
    c.apply_listing(ROOT_ID, vec![], 1).unwrap();
    let nlink = |c: &Cache, id| c.get(id).unwrap().nlink();
    let set = SetAttr::default();
    let (a, _) = c.mkdir(&user(), ROOT_ID, b"a", set).unwrap();
    let (b, _) = c.mkdir(&user(), ROOT_ID, b"b", set).unwrap();
    c.mkdir(&user(), a.id, b"x", set).unwrap();
    c.mkdir(&user(), a.id, b"y", set).unwrap();
    c.create(&user(), a.id, b"f", unchecked(0o644)).unwrap();
    assert_eq!((nlink(&c, ROOT_ID), nlink(&c, a.id), nlink(&c, b.id)), (4, 4, 2));
    // A directory moving to another parent takes its ".." along.
    c.rename(&user(), a.id, b"x", b.id, b"x").unwrap();
    assert_eq!((nlink(&c, a.id), nlink(&c, b.id)), (3, 3));
    // Within one directory nothing changes; over an empty directory, one goes.
    c.rename(&user(), a.id, b"y", a.id, b"z").unwrap();
    assert_eq!(nlink(&c, a.id), 3);
    c.mkdir(&user(), b.id, b"empty", set).unwrap();
    c.rename(&user(), a.id, b"z", b.id, b"empty").unwrap();
    assert_eq!((nlink(&c, a.id), nlink(&c, b.id)), (2, 4));
    c.rmdir(&user(), b.id, b"x").unwrap();
    assert_eq!(nlink(&c, b.id), 3);
    // A file is not counted, nor is its removal.
    c.remove(&user(), a.id, b"f").unwrap();
    assert_eq!(nlink(&c, a.id), 2);
    drop(c);
    let c = open(t.path());
    assert_eq!((nlink(&c, ROOT_ID), nlink(&c, b.id)), (4, 3));
    // Listings: a directory the store shows is counted; one it no longer shows goes.
    let (d, _) = c.mkdir(&user(), ROOT_ID, b"d", set).unwrap();
    let dir = |n: &str| RemoteEntry {
        name: n.as_bytes().to_vec(),
        kind: RemoteKind::Dir,
    };
    c.apply_listing(d.id, vec![dir("p"), dir("q")], 1).unwrap();
    assert_eq!(nlink(&c, d.id), 4);
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    c.apply_listing(d.id, vec![dir("p")], later).unwrap();
    assert_eq!(nlink(&c, d.id), 3);
}
