//! The bytes of one upload part: in memory, or a range of a cached file that is read
//! while it is sent. A part can be hundreds of MiB (5 TiB / 10,000 parts), and a
//! sparse file's holes must never be allocated as buffers.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

/// How much of a file range is read at a time.
pub const CHUNK: usize = 1 << 20;

pub enum PartBody {
    Memory(Bytes),
    /// `len` bytes of `file` from `offset`; bytes past the file's end read as zeros
    /// (the sparse tail a truncate that extended the file leaves).
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
}

impl PartBody {
    pub fn len(&self) -> u64 {
        match self {
            PartBody::Memory(b) => b.len() as u64,
            PartBody::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All of it in one buffer: for stores that cannot take a stream (tests).
    pub fn into_bytes(self) -> io::Result<Bytes> {
        match self {
            PartBody::Memory(b) => Ok(b),
            PartBody::File { file, offset, len } => {
                let mut out = Vec::with_capacity(len as usize);
                let mut pos = offset;
                while pos < offset + len {
                    let want = CHUNK.min((offset + len - pos) as usize);
                    out.extend_from_slice(&read_chunk(&file, pos, want)?);
                    pos += want as u64;
                }
                Ok(out.into())
            }
        }
    }
}

impl From<Bytes> for PartBody {
    fn from(b: Bytes) -> PartBody {
        PartBody::Memory(b)
    }
}

/// `want` bytes of `file` at `pos`, zeros past its end.
pub fn read_chunk(file: &File, pos: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; want];
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.into())
}

/// An HTTP body reading a file range one chunk at a time, off the async threads:
/// memory per part in flight is one chunk, whatever the part's size.
pub struct FileRangeBody {
    file: Arc<File>,
    pos: u64,
    end: u64,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
}

impl FileRangeBody {
    pub fn new(file: Arc<File>, offset: u64, len: u64) -> FileRangeBody {
        FileRangeBody {
            file,
            pos: offset,
            end: offset + len,
            reading: None,
        }
    }
}

impl Body for FileRangeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.reading.is_none() {
            if this.pos >= this.end {
                return Poll::Ready(None);
            }
            let (file, pos, want) = (
                this.file.clone(),
                this.pos,
                CHUNK.min((this.end - this.pos) as usize),
            );
            this.reading = Some(tokio::task::spawn_blocking(move || read_chunk(&file, pos, want)));
        }
        let reading = this.reading.as_mut().expect("set above");
        let done = std::task::ready!(Pin::new(reading).poll(cx));
        this.reading = None;
        Poll::Ready(Some(match done {
            Ok(Ok(chunk)) => {
                this.pos += chunk.len() as u64;
                Ok(Frame::data(chunk))
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(io::Error::other(format!("read task failed: {e}"))),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.reading.is_none() && self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.pos)
    }
}
