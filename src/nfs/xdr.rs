//! Bounds-checked XDR decoding of untrusted call arguments, and encoding of replies.
//!
//! Why not `nfs3_types`' own `Unpack` for everything: `Opaque::unpack` allocates
//! `vec![0; claimed_len]` and `Vec<u32>::unpack` reserves `claimed_len` entries before a
//! single byte is checked, so one 8-byte call could make the server allocate 4 GiB.
//! [`XdrCursor`] checks every claimed length against a caller-given maximum AND the bytes
//! actually left in the record before it touches memory, and variable-length data comes
//! back as a zero-copy [`Bytes`] slice of the received record (WRITE data is never copied
//! again on its way to the handler).
//!
//! Fixed-size `nfs3_types` types (no opaque or list fields) are decoded with their own
//! `Unpack` through [`XdrCursor::unpack_fixed`], which only accepts types marked
//! [`FixedXdr`].

use std::io::Read;

use bytes::Bytes;
use nfs3_types::nfs3::{
    NFS3_FHSIZE, cookieverf3, createhow3, createmode3, createverf3, devicedata3, ftype3, mknoddata3, nfs_fh3,
    nfstime3, sattr3, sattrguard3, set_atime, set_mtime, specdata3, stable_how, writeverf3,
};
use nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

/// Longest file name component we accept on the wire (NFS3 has no fixed limit; 255 is
/// NAME_MAX on every client we serve and what PATHCONF answers).
pub const NAME_MAX: usize = 255;
/// Longest symlink target / path we accept. Linux PATH_MAX is 4096 (including the NUL).
pub const PATH_MAX: usize = 4096;
/// RFC 5531: an opaque_auth body is at most 400 bytes.
pub const MAX_AUTH_BYTES: usize = 400;

/// Why an argument did not decode. Every variant means "answer GARBAGE_ARGS" (or the
/// procedure's own error, e.g. NAMETOOLONG for [`XdrError::TooLong`]) — never "allocate".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    #[error("truncated: needed {needed} bytes, {remaining} left")]
    Truncated { needed: usize, remaining: usize },
    #[error("claimed length {len} exceeds the maximum {max}")]
    TooLong { len: usize, max: usize },
    #[error("invalid boolean {0}")]
    BadBool(u32),
    #[error("invalid enum value {0}")]
    BadEnum(u32),
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
}

pub type XdrResult<T> = Result<T, XdrError>;

/// Marker for `nfs3_types` types whose `Unpack` reads a bounded, fixed-size (or
/// bounded-union) encoding: no `Opaque`, no `Vec`, no `List`. Only these may be decoded
/// from untrusted input with their own `Unpack`.
pub trait FixedXdr: Unpack {}

macro_rules! fixed_xdr {
    ($($t:ty),* $(,)?) => { $(impl FixedXdr for $t {})* };
}
fixed_xdr!(
    u32,
    u64,
    bool,
    nfstime3,
    sattr3,
    sattrguard3,
    set_atime,
    set_mtime,
    createverf3,
    createmode3,
    cookieverf3,
    writeverf3,
    stable_how,
    ftype3,
    specdata3,
    createhow3,
    devicedata3,
    mknoddata3,
);

/// A forward-only reader over one received record (or a slice of it).
#[derive(Clone, Debug)]
pub struct XdrCursor {
    buf: Bytes,
    pos: usize,
}

/// WRITE3args with the data as a slice of the received record.
#[derive(Debug)]
pub struct Write3Args {
    pub file: nfs_fh3,
    pub offset: u64,
    pub count: u32,
    pub stable: stable_how,
    /// Zero-copy: shares the record buffer the bytes arrived in.
    pub data: Bytes,
}

impl XdrCursor {
    pub fn new(buf: Bytes) -> Self {
        XdrCursor { buf, pos: 0 }
    }

    /// For tests and small inputs: copies `buf` once.
    pub fn from_slice(buf: &[u8]) -> Self {
        XdrCursor::new(Bytes::copy_from_slice(buf))
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The undecoded rest of the input, zero-copy.
    pub fn rest(&self) -> Bytes {
        self.buf.slice(self.pos..)
    }

    /// Fails unless every byte was consumed (for strict sub-structures such as the
    /// AUTH_SYS body).
    pub fn expect_end(&self) -> XdrResult<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(XdrError::TrailingBytes(self.remaining()))
        }
    }

    fn need(&self, n: usize) -> XdrResult<()> {
        if n > self.remaining() {
            Err(XdrError::Truncated {
                needed: n,
                remaining: self.remaining(),
            })
        } else {
            Ok(())
        }
    }

    fn take(&mut self, n: usize) -> XdrResult<&[u8]> {
        self.need(n)?;
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..start + n])
    }

    pub fn u32(&mut self) -> XdrResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32(&mut self) -> XdrResult<i32> {
        self.u32().map(|v| v as i32)
    }

    pub fn u64(&mut self) -> XdrResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn bool(&mut self) -> XdrResult<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(XdrError::BadBool(v)),
        }
    }

    /// Fixed-length opaque of `len` bytes plus its padding, zero-copy.
    pub fn fixed_opaque(&mut self, len: usize) -> XdrResult<Bytes> {
        let padded = len
            .checked_add(pad(len))
            .ok_or(XdrError::TooLong { len, max: usize::MAX })?;
        self.need(padded)?;
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += padded;
        Ok(out)
    }

    /// Fixed-length opaque into an array (verifiers and the like).
    pub fn array<const N: usize>(&mut self) -> XdrResult<[u8; N]> {
        let padded = N + pad(N);
        self.need(padded)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += padded;
        Ok(out)
    }

    /// Variable-length opaque of at most `max` bytes, zero-copy. The claimed length is
    /// checked against `max` and against the bytes left before anything else happens:
    /// a claim of 0xFFFFFFFF costs nothing.
    pub fn opaque(&mut self, max: usize) -> XdrResult<Bytes> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        // `len <= max` and `len <= u32::MAX`, so `len + 3` cannot overflow.
        self.fixed_opaque(len)
    }

    /// Variable-length opaque copied into an owned `nfs3_types` `Opaque` (for small,
    /// bounded fields only).
    pub fn opaque_owned(&mut self, max: usize) -> XdrResult<Opaque<'static>> {
        Ok(Opaque::owned(self.opaque(max)?.to_vec()))
    }

    /// XDR string: same bounds as [`XdrCursor::opaque`]; bytes are returned as-is.
    pub fn string(&mut self, max: usize) -> XdrResult<Bytes> {
        self.opaque(max)
    }

    /// Variable-length array of u32 with at most `max` elements; the claimed count is
    /// checked against `max` and the bytes left before the vector is allocated.
    pub fn u32_array(&mut self, max: usize) -> XdrResult<Vec<u32>> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(XdrError::TooLong { len: n, max });
        }
        self.need(n * 4)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.u32()?);
        }
        Ok(out)
    }

    /// Decodes a fixed-size `nfs3_types` type with its own `Unpack` (safe: [`FixedXdr`]
    /// types contain no length-prefixed fields).
    pub fn unpack_fixed<T: FixedXdr>(&mut self) -> XdrResult<T> {
        let mut reader = CursorReader {
            cur: self,
            failed: None,
        };
        match T::unpack(&mut reader) {
            Ok((v, _)) => Ok(v),
            Err(e) => Err(reader.failed.take().unwrap_or(match e {
                nfs3_types::xdr_codec::Error::InvalidEnumValue(v) => XdrError::BadEnum(v),
                _ => XdrError::Truncated {
                    needed: 0,
                    remaining: 0,
                },
            })),
        }
    }

    // ---- NFSv3 argument helpers -------------------------------------------------

    /// nfs_fh3: at most 64 bytes (RFC 1813 NFS3_FHSIZE). Copied: handles are small.
    pub fn nfs_fh3(&mut self) -> XdrResult<nfs_fh3> {
        Ok(nfs_fh3 {
            data: self.opaque_owned(NFS3_FHSIZE)?,
        })
    }

    /// The raw bytes of an nfs_fh3 (≤ 64), zero-copy.
    pub fn fh_bytes(&mut self) -> XdrResult<Bytes> {
        self.opaque(NFS3_FHSIZE)
    }

    /// filename3 bytes, bounded only by the bytes left in the record: the caller checks
    /// [`NAME_MAX`] so it can answer NFS3ERR_NAMETOOLONG rather than GARBAGE_ARGS.
    pub fn filename3(&mut self) -> XdrResult<Bytes> {
        // No maximum: a claim beyond the record is `Truncated` (GARBAGE_ARGS).
        self.opaque(usize::MAX)
    }

    /// nfspath3 (symlink target) of at most [`PATH_MAX`] bytes.
    pub fn nfspath3(&mut self) -> XdrResult<Bytes> {
        self.opaque(PATH_MAX)
    }

    /// diropargs3: (directory handle, name bytes).
    pub fn diropargs3(&mut self) -> XdrResult<(nfs_fh3, Bytes)> {
        let dir = self.nfs_fh3()?;
        let name = self.filename3()?;
        Ok((dir, name))
    }

    pub fn nfstime3(&mut self) -> XdrResult<nfstime3> {
        self.unpack_fixed()
    }

    pub fn sattr3(&mut self) -> XdrResult<sattr3> {
        self.unpack_fixed()
    }

    pub fn sattrguard3(&mut self) -> XdrResult<sattrguard3> {
        self.unpack_fixed()
    }

    pub fn createhow3(&mut self) -> XdrResult<createhow3> {
        self.unpack_fixed()
    }

    pub fn createverf3(&mut self) -> XdrResult<createverf3> {
        self.unpack_fixed()
    }

    pub fn cookieverf3(&mut self) -> XdrResult<cookieverf3> {
        self.unpack_fixed()
    }

    pub fn stable_how(&mut self) -> XdrResult<stable_how> {
        self.unpack_fixed()
    }

    pub fn ftype3(&mut self) -> XdrResult<ftype3> {
        self.unpack_fixed()
    }

    pub fn specdata3(&mut self) -> XdrResult<specdata3> {
        self.unpack_fixed()
    }

    /// MKNOD's `what`. For NF3REG/NF3DIR/NF3LNK (no body) this is `mknoddata3::default`;
    /// answer NFS3ERR_BADTYPE for those.
    pub fn mknoddata3(&mut self) -> XdrResult<mknoddata3> {
        self.unpack_fixed()
    }

    /// WRITE3args. `data` is a slice of the record (no copy) and at most the bytes left;
    /// whether `count == data.len()` is the procedure's call (RFC 1813 says the data
    /// length wins, Linux knfsd answers GARBAGE_ARGS when count exceeds it).
    pub fn write3args(&mut self) -> XdrResult<Write3Args> {
        let file = self.nfs_fh3()?;
        let offset = self.u64()?;
        let count = self.u32()?;
        let stable = self.stable_how()?;
        let data = self.opaque(usize::MAX)?;
        Ok(Write3Args {
            file,
            offset,
            count,
            stable,
            data,
        })
    }
}

const fn pad(len: usize) -> usize {
    (4 - (len & 3)) & 3
}

/// `std::io::Read` view of a cursor for `nfs3_types`' `Unpack`, remembering the precise
/// error so callers see `Truncated` rather than an io error.
struct CursorReader<'a> {
    cur: &'a mut XdrCursor,
    failed: Option<XdrError>,
}

impl Read for CursorReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(self.cur.remaining());
        out[..n].copy_from_slice(&self.cur.buf[self.cur.pos..self.cur.pos + n]);
        self.cur.pos += n;
        Ok(n)
    }

    fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        match self.cur.take(out.len()) {
            Ok(b) => {
                out.copy_from_slice(b);
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e);
                Err(std::io::ErrorKind::UnexpectedEof.into())
            }
        }
    }
}

/// Encodes any `nfs3_types` value into a fresh buffer.
///
/// # Panics
/// Only if a value holds an opaque longer than 4 GiB, which no reply can.
pub fn encode<T: Pack + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.packed_size());
    encode_into(&mut out, value);
    out
}

/// Appends the XDR encoding of `value` to `out` (see [`encode`]).
pub fn encode_into<T: Pack + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail; packing fails only for > 4 GiB opaques.
    value.pack(out).expect("XDR value larger than 4 GiB");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    /// Records the largest single allocation made by the current thread, so tests can
    /// prove a decoder never allocated what a hostile length claimed.
    mod alloc_probe {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub struct Probe;
        thread_local! {
            static LARGEST: Cell<usize> = const { Cell::new(0) };
        }
        unsafe impl GlobalAlloc for Probe {
            unsafe fn alloc(&self, l: Layout) -> *mut u8 {
                let _ = LARGEST.try_with(|m| m.set(m.get().max(l.size())));
                unsafe { System.alloc(l) }
            }
            unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
                unsafe { System.dealloc(p, l) }
            }
            unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
                let _ = LARGEST.try_with(|m| m.set(m.get().max(n)));
                unsafe { System.realloc(p, l, n) }
            }
        }
        #[global_allocator]
        static GLOBAL: Probe = Probe;

        /// Largest allocation on this thread while `f` ran.
        pub fn largest_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
            LARGEST.with(|m| m.set(0));
            let r = f();
            (r, LARGEST.with(|m| m.get()))
        }
    }

    #[test]
    fn huge_claimed_opaque_is_rejected_without_allocating() {
        let huge = words(&[0xFFFF_FFFF, 1, 2]);
        let (err, largest) = alloc_probe::largest_during(|| XdrCursor::from_slice(&huge).opaque(usize::MAX));
        assert_eq!(
            err.unwrap_err(),
            XdrError::Truncated {
                needed: 0x1_0000_0000,
                remaining: 8
            }
        );
        assert!(largest < 1024, "allocated {largest} bytes");
        let (err, largest) = alloc_probe::largest_during(|| {
            let mut c = XdrCursor::from_slice(&huge);
            c.u32_array(usize::MAX)
        });
        assert!(matches!(err, Err(XdrError::Truncated { .. })));
        assert!(largest < 1024, "allocated {largest} bytes");
        let (err, largest) = alloc_probe::largest_during(|| XdrCursor::from_slice(&huge).nfs_fh3());
        assert_eq!(
            err.unwrap_err(),
            XdrError::TooLong {
                len: 0xFFFF_FFFF,
                max: 64
            }
        );
        assert!(largest < 1024, "allocated {largest} bytes");
        let mut c = XdrCursor::from_slice(&words(&[0xFFFF_FFFF]));
        assert_eq!(
            c.opaque(64).unwrap_err(),
            XdrError::TooLong {
                len: 0xFFFF_FFFF,
                max: 64
            }
        );
        let mut c = XdrCursor::from_slice(&words(&[0xFFFF_FFFF]));
        assert!(matches!(c.filename3(), Err(XdrError::Truncated { .. })));
        let mut c = XdrCursor::from_slice(&words(&[17]));
        assert_eq!(
            c.u32_array(16).unwrap_err(),
            XdrError::TooLong { len: 17, max: 16 }
        );
    }

    #[test]
    fn alloc_probe_sees_large_allocations() {
        // The probe itself works: the unsafe decoder in nfs3_types is caught by it.
        use nfs3_types::xdr_codec::Unpack;
        let claim = words(&[1 << 20]);
        let (r, largest) = alloc_probe::largest_during(|| Opaque::unpack(&mut &claim[..]));
        assert!(r.is_err());
        assert!(largest >= 1 << 20, "probe missed a {largest} byte allocation");
    }

    #[test]
    fn opaque_is_zero_copy_and_skips_padding() {
        let mut raw = words(&[5]);
        raw.extend_from_slice(b"hello\0\0\0");
        raw.extend_from_slice(&words(&[7]));
        let buf = Bytes::from(raw);
        let mut c = XdrCursor::new(buf.clone());
        let s = c.opaque(10).unwrap();
        assert_eq!(&s[..], b"hello");
        // Same allocation: the slice points into the record.
        assert_eq!(s.as_ptr(), buf[4..].as_ptr());
        assert_eq!(c.u32().unwrap(), 7);
        assert!(c.is_empty());
        assert!(matches!(
            c.u32(),
            Err(XdrError::Truncated {
                needed: 4,
                remaining: 0
            })
        ));
    }

    #[test]
    fn opaque_missing_padding_is_truncated() {
        let mut raw = words(&[5]);
        raw.extend_from_slice(b"hello");
        let mut c = XdrCursor::from_slice(&raw);
        assert!(matches!(c.opaque(10), Err(XdrError::Truncated { .. })));
    }

    #[test]
    fn fh_over_64_bytes_is_rejected() {
        let mut raw = words(&[65]);
        raw.extend_from_slice(&[0u8; 68]);
        assert_eq!(
            XdrCursor::from_slice(&raw).nfs_fh3().unwrap_err(),
            XdrError::TooLong { len: 65, max: 64 }
        );
        let mut raw = words(&[8]);
        raw.extend_from_slice(&[7u8; 8]);
        assert_eq!(
            XdrCursor::from_slice(&raw).nfs_fh3().unwrap().data.as_ref(),
            &[7u8; 8]
        );
    }

    #[test]
    fn bool_and_enums_are_validated() {
        assert_eq!(
            XdrCursor::from_slice(&words(&[2])).bool().unwrap_err(),
            XdrError::BadBool(2)
        );
        assert!(XdrCursor::from_slice(&words(&[1])).bool().unwrap());
        assert_eq!(
            XdrCursor::from_slice(&words(&[2])).stable_how().unwrap(),
            stable_how::FILE_SYNC
        );
        assert_eq!(
            XdrCursor::from_slice(&words(&[3])).stable_how().unwrap_err(),
            XdrError::BadEnum(3)
        );
        assert!(matches!(
            XdrCursor::from_slice(&words(&[])).stable_how().unwrap_err(),
            XdrError::Truncated {
                needed: 4,
                remaining: 0
            }
        ));
    }

    #[test]
    fn sattr3_and_u64() {
        // mode set 0o644, uid unset, gid set 7, size set 2^33, atime server, mtime client (1,2)
        let raw = words(&[1, 0o644, 0, 1, 7, 1, 2, 0, 1, 2, 1, 2]);
        let mut c = XdrCursor::from_slice(&raw);
        let s = c.sattr3().unwrap();
        assert!(matches!(s.mode, nfs3_types::nfs3::Nfs3Option::Some(0o644)));
        assert!(s.uid.is_none());
        assert!(matches!(s.gid, nfs3_types::nfs3::Nfs3Option::Some(7)));
        assert!(matches!(
            s.size,
            nfs3_types::nfs3::Nfs3Option::Some(0x2_0000_0000)
        ));
        assert!(matches!(s.atime, set_atime::SET_TO_SERVER_TIME));
        assert!(matches!(
            s.mtime,
            set_mtime::SET_TO_CLIENT_TIME(nfstime3 {
                seconds: 1,
                nseconds: 2
            })
        ));
        assert!(c.is_empty());
        // Truncated sattr3 reports Truncated, not a panic or an io error.
        let mut c = XdrCursor::from_slice(&raw[..raw.len() - 4]);
        assert!(matches!(c.sattr3(), Err(XdrError::Truncated { .. })));
    }

    #[test]
    fn write3args_data_is_a_slice_of_the_record() {
        let mut raw = words(&[4, 0xAABB_CCDD, 0, 4096, 3, 0, 3]);
        raw.extend_from_slice(b"abc\0");
        let buf = Bytes::from(raw);
        let w = XdrCursor::new(buf.clone()).write3args().unwrap();
        assert_eq!(w.file.data.as_ref(), &0xAABB_CCDDu32.to_be_bytes());
        assert_eq!((w.offset, w.count, w.stable), (4096, 3, stable_how::UNSTABLE));
        assert_eq!(&w.data[..], b"abc");
        assert_eq!(w.data.as_ptr(), buf[buf.len() - 4..].as_ptr());
    }

    #[test]
    fn encode_roundtrip() {
        let t = nfstime3 {
            seconds: 3,
            nseconds: 4,
        };
        assert_eq!(encode(&t), words(&[3, 4]));
        let mut out = vec![9];
        encode_into(&mut out, &7u32);
        assert_eq!(out, vec![9, 0, 0, 0, 7]);
    }
}
