//! Files open through the mount, and those removed while open: as on a local disk,
//! a file removed (or replaced by a rename) while a descriptor is open stays
//! readable and writable through it until the last one is closed. Its name and its
//! object are gone at once, as NFS clients and the bucket see; the mount keeps the
//! cache's data file open (the removal deletes only its name on the cache disk) and
//! the attributes in memory, with a link count of zero. Nothing of it reaches the
//! store, and after a restart it is gone, as after a reboot.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bucketgate_cache::{FileId, Inode};
use parking_lot::Mutex;

#[derive(Default)]
pub(super) struct Opens {
    files: Mutex<HashMap<FileId, Open>>,
}

struct Open {
    count: u32,
    removed: Option<Removed>,
}

/// A removed file's attributes and its data file.
#[derive(Clone)]
pub(super) struct Removed {
    pub attr: Inode,
    pub file: Arc<File>,
}

impl Removed {
    pub fn read(&self, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
        let len = self.attr.size.saturating_sub(offset).min(size as u64) as usize;
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut buf[done..], offset + done as u64)? {
                0 => break, // a sparse tail reads as zeros
                n => done += n,
            }
        }
        Ok(buf)
    }
}

impl Opens {
    pub fn opened(&self, id: FileId) {
        self.files
            .lock()
            .entry(id)
            .or_insert(Open {
                count: 0,
                removed: None,
            })
            .count += 1;
    }

    /// One descriptor closed; the last one lets a removed file's data go.
    pub fn released(&self, id: FileId) {
        let mut files = self.files.lock();
        if let Some(o) = files.get_mut(&id) {
            o.count = o.count.saturating_sub(1);
            if o.count == 0 {
                files.remove(&id);
            }
        }
    }

    pub fn is_open(&self, id: FileId) -> bool {
        self.files.lock().contains_key(&id)
    }

    /// `id` was removed: its descriptors keep `held` (when one is still open).
    pub fn removed(&self, id: FileId, held: (Inode, Arc<File>)) {
        if let Some(o) = self.files.lock().get_mut(&id) {
            let (attr, file) = held;
            o.removed = Some(Removed { attr, file });
        }
    }

    /// The removed file `id`, if it is one.
    pub fn get(&self, id: FileId) -> Option<Removed> {
        self.files.lock().get(&id)?.removed.clone()
    }

    /// Writes to a removed file; answers its attributes after.
    pub fn write(&self, id: FileId, r: &Removed, offset: u64, data: &[u8]) -> std::io::Result<Inode> {
        r.file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        self.update(id, |a| a.size = a.size.max(end))
    }

    /// Truncates or extends a removed file.
    pub fn set_size(&self, id: FileId, r: &Removed, size: u64) -> std::io::Result<Inode> {
        r.file.set_len(size)?;
        self.update(id, |a| a.size = size)
    }

    fn update(&self, id: FileId, f: impl FnOnce(&mut Inode)) -> std::io::Result<Inode> {
        let mut files = self.files.lock();
        let attr = files
            .get_mut(&id)
            .and_then(|o| o.removed.as_mut())
            .map(|r| &mut r.attr)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))?;
        f(attr);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        attr.mtime_ns = now;
        attr.ctime_ns = now;
        Ok(attr.clone())
    }
}
