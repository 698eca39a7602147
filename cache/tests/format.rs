//! The cache's on-disk format across upgrades: a cache written by an earlier main,
//! checked in under `tests/fixtures/` (made with `examples/write_cache_fixture.rs`),
//! opens and gives back every file, with what is still to be uploaded still queued.

use std::path::{Path, PathBuf};

use bucketgate_cache::*;

fn user() -> Caller {
    Caller::new(1000, 1000, vec![])
}

/// 70 KiB of a pattern (a file of many pages), as `examples/write_cache_fixture.rs`
/// writes it.
fn big() -> Vec<u8> {
    (0..70 * 1024u32).map(|i| (i % 251) as u8).collect()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn read_whole(c: &Cache, path: &str) -> Vec<u8> {
    let i = c
        .resolve(path)
        .unwrap()
        .unwrap_or_else(|| panic!("{path} is gone"));
    let (data, eof, _) = c.read(&user(), i.id, 0, 1 << 20).unwrap();
    assert!(eof);
    data
}

/// Written by main at 3716a53 (2026-12-03), before caches recorded their format:
/// opened by this build as format 1 and migrated (to format 2: subdirectory counts),
/// every file reads back as written, the files still to upload are still queued, and
/// the format is recorded from then on.
#[test]
fn a_cache_written_before_formats_were_recorded_opens_and_reads_back() {
    opens_and_reads_back("cache-format-1");
}

/// Written by main at 96a0e09 (2026-12-07), the last build without the metadata
/// journal (format 3): opened, migrated and read back the same way.
#[test]
fn a_cache_written_before_the_metadata_journal_opens_and_reads_back() {
    opens_and_reads_back("cache-format-2");
}

fn opens_and_reads_back(name: &str) {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&fixture(name), t.path());
    for _ in 0..2 {
        let c = Cache::open(t.path(), CacheOptions::default()).unwrap();
        assert_eq!(read_whole(&c, "docs/a.txt"), b"hello fixture\n");
        assert_eq!(read_whole(&c, "big.bin"), big());
        assert_eq!(read_whole(&c, "clean.txt"), b"in the store too\n");
        let link = c.resolve("docs/link").unwrap().unwrap();
        assert_eq!(c.readlink(&user(), link.id).unwrap(), b"a.txt");
        let docs = c.resolve("docs").unwrap().unwrap();
        assert_eq!((docs.kind, docs.mode, docs.uid), (Kind::Dir, 0o750, 1000));
        // Format 2 counts subdirectories: the root holds one, docs none.
        assert_eq!((c.get(ROOT_ID).unwrap().nlink(), docs.nlink()), (3, 2));
        let clean = c.resolve("clean.txt").unwrap().unwrap();
        assert_eq!(clean.mode, 0o600);
        assert_eq!(clean.remote.key.as_deref(), Some("clean.txt"));
        // The object's attributes were a tuple in format 1's records: still read as such.
        assert_eq!(clean.remote.meta, clean.object_attrs());
        assert_eq!(clean.remote.meta.mode, 0o100600);
        let mut queued: Vec<String> = c
            .pending()
            .unwrap()
            .into_iter()
            .map(|id| c.path_of(&c.get(id).unwrap()).unwrap())
            .collect();
        queued.sort();
        assert_eq!(queued, ["big.bin", "docs", "docs/a.txt", "docs/link"]);
    }
}
