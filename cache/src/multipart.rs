//! Multipart uploads this gateway started and has not finished: recorded durably
//! before their first part, so that after a crash exactly these are aborted, and
//! never an upload another gateway or S3 client has in progress under the same
//! prefix.

use crate::attrs::Batch;
use crate::engine::Cache;
use crate::error::Result;
use crate::inode::keys;

impl Cache {
    /// Upload `upload_id` of `key` (full object key) was started: durable before
    /// this returns.
    pub fn record_multipart(&self, upload_id: &str, key: &str) -> Result<()> {
        let mut b = Batch::default();
        b.insert(keys::multipart(upload_id), key.as_bytes());
        self.commit_batch(b)?;
        self.flush_metadata()
    }

    /// Upload `upload_id` was completed or aborted.
    pub fn forget_multipart(&self, upload_id: &str) -> Result<()> {
        let mut b = Batch::default();
        b.remove(keys::multipart(upload_id));
        self.commit_batch(b)
    }

    /// (upload id, key) of every upload recorded and not forgotten.
    pub fn multiparts(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([keys::MULTIPART]) {
            let (k, v) = kv?;
            out.push((
                String::from_utf8_lossy(&k[1..]).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        Ok(out)
    }
}
