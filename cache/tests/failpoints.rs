//! Crash points inside the engine (build with `--features failpoints`).
#![cfg(feature = "failpoints")]

use bucketgate_cache::*;

fn user() -> Caller {
    Caller::new(1000, 1000, vec![])
}

/// A WRITE whose bytes reached the data file but whose metadata batch did not (a
/// crash between the two): the WRITE fails, the file keeps its committed content,
/// and after a restart the unrecorded bytes are gone, so a hole or an extending
/// truncate reads zeros rather than them.
#[test]
fn write_dying_between_data_and_metadata_leaves_no_trace() {
    let scenario = fail::FailScenario::setup();
    let t = tempfile::tempdir().unwrap();
    let (id, orphan_path) = {
        let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
        let (f, _) = c
            .create(&user(), ROOT_ID, b"f", CreateMode::Unchecked(SetAttr::default()))
            .unwrap();
        c.write(&user(), f.id, 0, &[b'A'; 100], true).unwrap();

        fail::cfg("cache::write::after_data", "return").unwrap();
        let r = c.write(&user(), f.id, 100, &[b'B'; 100], false);
        assert!(matches!(r, Err(CacheError::Io(_))), "{r:?}");
        // The failed write did not change what the file is.
        let (data, eof, attr) = c.read(&user(), f.id, 0, 1000).unwrap();
        assert_eq!((data, eof, attr.size), (vec![b'A'; 100], true, 100));

        // A file created, written and "lost" (its record removed as a crash before
        // the batch would have): its data file must not leak into a later file.
        let (g, _) = c
            .create(&user(), ROOT_ID, b"g", CreateMode::Unchecked(SetAttr::default()))
            .unwrap();
        let r = c.write(&user(), g.id, 0, b"secret", false);
        assert!(r.is_err());
        fail::cfg("cache::write::after_data", "off").unwrap();
        let orphan = t.path().join("data").join(format!("{:016x}", g.id));
        assert!(orphan.exists());
        c.remove(&user(), ROOT_ID, b"g").unwrap();
        std::fs::write(&orphan, b"secret").unwrap(); // as if the unlink's removal was lost
        c.commit(f.id).unwrap();
        (f.id, orphan)
    };

    let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
    assert!(
        !orphan_path.exists(),
        "a data file nobody owns is removed at open"
    );
    let (data, _, attr) = c.read(&user(), id, 0, 1000).unwrap();
    assert_eq!((data, attr.size), (vec![b'A'; 100], 100));
    // Extend with a truncate, then write past a hole: both read as zeros.
    c.setattr(
        &user(),
        id,
        SetAttr {
            size: Some(150),
            ..SetAttr::default()
        },
        None,
    )
    .unwrap();
    c.write(&user(), id, 250, b"end", true).unwrap();
    let (data, _, attr) = c.read(&user(), id, 0, 1000).unwrap();
    assert_eq!(attr.size, 253);
    assert_eq!(&data[..100], &[b'A'; 100][..]);
    assert!(
        data[100..250].iter().all(|&b| b == 0),
        "unrecorded bytes showed through"
    );
    assert_eq!(&data[250..], b"end");
    scenario.teardown();
}

fn make(c: &Cache, name: &[u8]) -> Inode {
    c.create(&user(), ROOT_ID, name, CreateMode::Unchecked(SetAttr::default()))
        .unwrap()
        .0
}

/// A namespace or attribute change is made durable (a metadata flush) before it is
/// answered, but outside the engine's lock: another request goes ahead while one
/// waits for a slow disk.
#[test]
fn no_request_waits_for_another_requests_flush() {
    let scenario = fail::FailScenario::setup();
    let t = tempfile::tempdir().unwrap();
    let c = std::sync::Arc::new(Cache::open(t.path(), CacheOptions::default()).unwrap());
    let file = make(&c, b"file");
    make(&c, b"victim");
    type Op = fn(&Cache, FileId) -> Result<()>;
    let slow_ops: [(&str, Op); 5] = [
        ("create", |c, _| {
            c.create(&user(), ROOT_ID, b"new", CreateMode::Guarded(SetAttr::default()))
                .map(|_| ())
        }),
        ("mkdir", |c, _| {
            c.mkdir(&user(), ROOT_ID, b"dir", SetAttr::default()).map(|_| ())
        }),
        ("chmod", |c, id| {
            let set = SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            };
            c.setattr(&user(), id, set, None).map(|_| ())
        }),
        ("rename", |c, _| {
            c.rename(&user(), ROOT_ID, b"new", ROOT_ID, b"renamed")
                .map(|_| ())
        }),
        ("remove", |c, _| c.remove(&user(), ROOT_ID, b"victim").map(|_| ())),
    ];
    for (i, (what, op)) in slow_ops.into_iter().enumerate() {
        // The next flush takes 2 s: the slow request's own.
        fail::cfg("cache::flush_metadata", "1*sleep(2000)").unwrap();
        let slow = {
            let c = c.clone();
            std::thread::spawn(move || op(&c, file.id))
        };
        // Its change is applied (visible) before its flush; give it time to get there.
        std::thread::sleep(std::time::Duration::from_millis(300));
        make(&c, format!("quick{i}").as_bytes());
        assert!(
            !slow.is_finished(),
            "a create waited for the flush of a concurrent {what}"
        );
        slow.join().unwrap().unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    scenario.teardown();
}

/// A removed file's data file goes only once its removal is durable: a crash before
/// would otherwise bring the file back without its bytes. The same for a file a
/// rename replaces.
#[test]
fn a_removed_files_data_outlives_a_failed_flush_of_its_removal() {
    let scenario = fail::FailScenario::setup();
    let t = tempfile::tempdir().unwrap();
    let data_of = |id: FileId| t.path().join("data").join(format!("{id:016x}"));
    let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
    let f = make(&c, b"f");
    c.write(&user(), f.id, 0, b"precious", true).unwrap();
    let g = make(&c, b"g");
    c.write(&user(), g.id, 0, b"replaced", true).unwrap();
    make(&c, b"h");

    fail::cfg("cache::flush_metadata", "return").unwrap();
    let r = c.remove(&user(), ROOT_ID, b"f");
    assert!(matches!(r, Err(CacheError::Io(_))), "{r:?}");
    let r = c.rename(&user(), ROOT_ID, b"h", ROOT_ID, b"g");
    assert!(matches!(r, Err(CacheError::Io(_))), "{r:?}");
    fail::cfg("cache::flush_metadata", "off").unwrap();
    assert_eq!(std::fs::read(data_of(f.id)).unwrap(), b"precious");
    assert_eq!(std::fs::read(data_of(g.id)).unwrap(), b"replaced");

    // Once the removals are durable (the next flush), a restart drops the data.
    c.flush_metadata().unwrap();
    drop(c);
    let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
    assert!(!data_of(f.id).exists() && !data_of(g.id).exists());
    assert!(matches!(
        c.lookup(&user(), ROOT_ID, b"f"),
        Err(CacheError::NotFound)
    ));
    scenario.teardown();
}

/// A listing of many names is recorded in several batches; a crash between two
/// leaves the names recorded so far whole (each with its inode, its cookie and the
/// directory's counts), the directory still marked as never listed, and the next
/// listing adds the rest without doubling any.
#[test]
fn a_listing_cut_short_between_batches_is_whole_and_completed_by_the_next() {
    let scenario = fail::FailScenario::setup();
    let t = tempfile::tempdir().unwrap();
    let entries: Vec<RemoteEntry> = (0..1500)
        .map(|i| RemoteEntry {
            name: format!("n{i:04}").into_bytes(),
            kind: if i % 10 == 0 {
                RemoteKind::Dir
            } else {
                RemoteKind::File {
                    size: 5,
                    etag: format!("e{i}"),
                    mtime_ns: 1_000,
                }
            },
        })
        .collect();
    let names = |c: &Cache| -> Vec<Vec<u8>> {
        let l = c.readdir(&user(), ROOT_ID, 0, 10_000).unwrap();
        assert!(l.eof);
        l.entries
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != b"." && n != b"..")
            .collect()
    };
    {
        let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
        fail::cfg("cache::apply_listing::between_batches", "return").unwrap();
        assert!(c.apply_listing(ROOT_ID, entries.clone(), 1).is_err());
        fail::cfg("cache::apply_listing::between_batches", "off").unwrap();
    }
    let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
    let first = names(&c);
    assert!(!first.is_empty() && first.len() < 1500, "{} names", first.len());
    assert!(c.needs_listing(ROOT_ID, None).unwrap(), "not marked as listed");
    let root = c.getattr(ROOT_ID).unwrap();
    let dirs = first.iter().filter(|n| n.ends_with(b"0")).count() as u32;
    assert_eq!(root.nlink(), 2 + dirs, "the link count counts what is recorded");
    let ch = c.apply_listing(ROOT_ID, entries, 2).unwrap();
    assert_eq!(ch.added as usize, 1500 - first.len());
    let all = names(&c);
    assert_eq!(all.len(), 1500);
    assert_eq!(c.getattr(ROOT_ID).unwrap().nlink(), 2 + 150);
    assert!(!c.needs_listing(ROOT_ID, None).unwrap());
    scenario.teardown();
}
