//! The uploader's next step for one inode, decided from its record alone: the one
//! store operation that brings the store closer to what the inode holds. The
//! uploader performs it, records the outcome, reads the record again and asks anew,
//! so a crash between steps only repeats one.

use crate::engine::ROOT_ID;
use crate::inode::{Inode, Kind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadStep {
    /// Nothing left to send or delete.
    Clean,
    /// Known only from a listing (moved with its directory before it was read): its
    /// object's metadata is read first, so what goes up carries it, not placeholders.
    ReadAttrs,
    /// The object at its key already holds its bytes and attributes (a change undone,
    /// a directory written back as it was): only the record is behind.
    RecordClean,
    /// A directory's zero-byte marker, carrying the directory's attributes.
    PutMarker,
    /// Its bytes changed since the last upload (or were never uploaded): a PutObject
    /// or a multipart upload from the cache.
    Upload,
    /// Same bytes under a new key (a rename) or with new attributes: a server-side
    /// copy of the object.
    Copy,
    /// Objects at keys it no longer uses: its old names once the new one is recorded,
    /// or its own once it is removed.
    DeleteStale,
}

impl UploadStep {
    /// `key` is where the inode's object belongs now (relative to the share, ending
    /// in `/` for a directory), `None` for a removed inode: it has no name.
    pub fn next(ino: &Inode, key: Option<&str>) -> UploadStep {
        let content_due = !ino.unlinked && ino.synced_seq != ino.change_seq;
        let key = match key {
            Some(k) if content_due => k,
            _ if ino.remote.stale_keys.is_empty() => return UploadStep::Clean,
            _ => return UploadStep::DeleteStale,
        };
        if ino.id == ROOT_ID {
            // The share's root is the bucket prefix, not an object: its attributes
            // are the gateway's own (the share's defaults, then what clients set).
            return UploadStep::RecordClean;
        }
        if ino.meta_pending {
            return UploadStep::ReadAttrs;
        }
        let r = &ino.remote;
        let at_key = r.key.as_deref() == Some(key);
        let same_attrs = r.meta == ino.object_attrs();
        if ino.kind == Kind::Dir {
            return if at_key && same_attrs {
                UploadStep::RecordClean
            } else {
                UploadStep::PutMarker
            };
        }
        if r.key.is_none() || r.data_seq != ino.data_seq {
            UploadStep::Upload
        } else if !at_key || !same_attrs {
            UploadStep::Copy
        } else {
            UploadStep::RecordClean
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UploadStep::{self, *};
    use crate::inode::{Inode, Kind};

    /// A file as it stands after its first upload to `key`: clean.
    fn uploaded(kind: Kind, key: &str) -> Inode {
        let mut i = Inode::fresh(7, 1, kind, 0o644, 1000, 1000, 1);
        i.change_seq = 3;
        i.data_seq = 2;
        i.synced_seq = 3;
        i.remote.key = Some(key.to_string());
        i.remote.data_seq = 2;
        i.remote.meta = i.object_attrs();
        i
    }

    fn changed(mut i: Inode, data: bool) -> Inode {
        i.change_seq += 1;
        if data {
            i.data_seq = i.change_seq;
        }
        i
    }

    #[test]
    fn a_clean_file_needs_nothing() {
        assert_eq!(UploadStep::next(&uploaded(Kind::File, "a"), Some("a")), Clean);
    }

    #[test]
    fn new_or_rewritten_bytes_are_uploaded() {
        let mut new = Inode::fresh(7, 1, Kind::File, 0o644, 1000, 1000, 1);
        new.change_seq = 1;
        new.data_seq = 1;
        assert_eq!(UploadStep::next(&new, Some("a")), Upload);
        let written = changed(uploaded(Kind::File, "a"), true);
        assert_eq!(UploadStep::next(&written, Some("a")), Upload);
        // Renamed and rewritten: the bytes go up under the new name; no copy.
        assert_eq!(UploadStep::next(&written, Some("b")), Upload);
        let link = changed(uploaded(Kind::Symlink, "l"), true);
        assert_eq!(UploadStep::next(&link, Some("l")), Upload);
    }

    #[test]
    fn a_rename_or_an_attribute_change_is_a_copy() {
        let renamed = changed(uploaded(Kind::File, "a"), false);
        assert_eq!(UploadStep::next(&renamed, Some("b")), Copy);
        let mut chmod = changed(uploaded(Kind::File, "a"), false);
        chmod.mode = 0o600;
        assert_eq!(UploadStep::next(&chmod, Some("a")), Copy);
    }

    #[test]
    fn a_change_that_leaves_the_object_as_it_is_is_only_recorded() {
        // chmod 600 then back to 644: a change, but the object already says so.
        let undone = changed(uploaded(Kind::File, "a"), false);
        assert_eq!(UploadStep::next(&undone, Some("a")), RecordClean);
        let dir = changed(uploaded(Kind::Dir, "d/"), false);
        assert_eq!(UploadStep::next(&dir, Some("d/")), RecordClean);
    }

    #[test]
    fn a_directory_writes_its_marker() {
        let mut chmod = changed(uploaded(Kind::Dir, "d/"), false);
        chmod.mode = 0o700;
        assert_eq!(UploadStep::next(&chmod, Some("d/")), PutMarker);
        let renamed = changed(uploaded(Kind::Dir, "d/"), false);
        assert_eq!(UploadStep::next(&renamed, Some("e/")), PutMarker);
        let mut new = Inode::fresh(7, 1, Kind::Dir, 0o755, 1000, 1000, 1);
        new.change_seq = 1;
        assert_eq!(UploadStep::next(&new, Some("d/")), PutMarker);
    }

    #[test]
    fn the_share_root_has_no_object() {
        let mut root = Inode::fresh(crate::ROOT_ID, 1, Kind::Dir, 0o777, 0, 0, 1);
        root.change_seq = 2;
        assert_eq!(UploadStep::next(&root, Some("/")), RecordClean);
    }

    #[test]
    fn attributes_known_only_from_a_listing_are_read_first() {
        let mut moved = changed(uploaded(Kind::File, "a"), false);
        moved.meta_pending = true;
        assert_eq!(UploadStep::next(&moved, Some("b")), ReadAttrs);
    }

    #[test]
    fn old_keys_go_once_the_content_is_recorded() {
        let mut renamed = changed(uploaded(Kind::File, "a"), false);
        renamed.remote.stale_keys = vec!["old".into()];
        assert_eq!(
            UploadStep::next(&renamed, Some("b")),
            Copy,
            "the new object first"
        );
        let mut recorded = uploaded(Kind::File, "b");
        recorded.remote.stale_keys = vec!["a".into()];
        assert_eq!(UploadStep::next(&recorded, Some("b")), DeleteStale);
    }

    #[test]
    fn a_removed_file_only_deletes() {
        let mut removed = changed(uploaded(Kind::File, "a"), true);
        removed.unlinked = true;
        assert_eq!(
            UploadStep::next(&removed, None),
            Clean,
            "no object of its own left"
        );
        removed.remote.stale_keys = vec!["a".into()];
        assert_eq!(UploadStep::next(&removed, None), DeleteStale);
    }
}
