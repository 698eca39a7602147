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
