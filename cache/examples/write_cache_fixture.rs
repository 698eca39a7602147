//! Writes a small cache in this build's format, for `tests/fixtures/` (see
//! `tests/format.rs`): `cargo run -p bucketgate-cache --example write_cache_fixture --
//! /tmp/cache-format-N`, then copy that directory to `tests/fixtures/cache-format-N`.
//! A fixture is made by the last build of a format, before the format changes.

use std::path::PathBuf;

use bucketgate_cache::*;

fn main() {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: write_cache_fixture NEW-DIR"),
    );
    assert!(!dir.exists(), "{} exists: give a new directory", dir.display());
    let user = Caller::new(1000, 1000, vec![]);
    let c = Cache::open(&dir, CacheOptions::default()).unwrap();
    let set = |mode| SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    };
    let (d, _) = c.mkdir(&user, ROOT_ID, b"docs", set(0o750)).unwrap();
    let (a, _) = c
        .create(&user, d.id, b"a.txt", CreateMode::Unchecked(set(0o640)))
        .unwrap();
    c.write(&user, a.id, 0, b"hello fixture\n", false).unwrap();
    c.commit(a.id).unwrap();
    c.symlink(&user, d.id, b"link", b"a.txt", SetAttr::default())
        .unwrap();
    let (b, _) = c
        .create(&user, ROOT_ID, b"big.bin", CreateMode::Unchecked(set(0o644)))
        .unwrap();
    // 70 KiB of a pattern (a file of many pages).
    let big: Vec<u8> = (0..70 * 1024u32).map(|i| (i % 251) as u8).collect();
    c.write(&user, b.id, 0, &big, false).unwrap();
    c.commit(b.id).unwrap();
    // Uploaded: clean, its object recorded.
    let (u, _) = c
        .create(&user, ROOT_ID, b"clean.txt", CreateMode::Unchecked(set(0o600)))
        .unwrap();
    c.write(&user, u.id, 0, b"in the store too\n", false).unwrap();
    c.commit(u.id).unwrap();
    let i = c.load_any(u.id).unwrap().unwrap();
    let recorded = c
        .record_upload(
            u.id,
            i.change_seq,
            "clean.txt",
            "\"0123456789abcdef0123456789abcdef\"",
            i.data_seq,
            i.object_attrs(),
        )
        .unwrap();
    assert!(recorded);
    c.flush_metadata().unwrap();
    println!("wrote {}", dir.display());
}
