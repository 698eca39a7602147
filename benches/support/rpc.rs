//! A pipelined NFSv3 client that behaves like the Linux kernel client: many calls in
//! flight on one TCP connection, 1 MiB READs and WRITEs. Used only by the benches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, oneshot};

type Pending = Arc<parking_lot::Mutex<HashMap<u32, oneshot::Sender<Vec<u8>>>>>;

pub struct Client {
    write: Mutex<tokio::net::tcp::OwnedWriteHalf>,
    pending: Pending,
    xid: AtomicU32,
    cred: Vec<u8>,
}

fn opaque(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
    out.resize(out.len() + (4 - b.len() % 4) % 4, 0);
}

/// AUTH_SYS credentials of `uid`/`gid` (no supplementary groups).
fn auth_sys(uid: u32, gid: u32) -> Vec<u8> {
    let mut cred = Vec::new();
    cred.extend_from_slice(&0u32.to_be_bytes()); // stamp
    opaque(&mut cred, b"bench");
    cred.extend_from_slice(&uid.to_be_bytes());
    cred.extend_from_slice(&gid.to_be_bytes());
    cred.extend_from_slice(&0u32.to_be_bytes());
    cred
}

/// One RPC call record (record mark included) with AUTH_SYS `cred`.
fn call_record(xid: u32, prog: u32, vers: u32, proc: u32, cred: &[u8], args: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64 + args.len());
    msg.extend_from_slice(&[0; 4]);
    for v in [xid, 0, 2, prog, vers, proc, 1] {
        msg.extend_from_slice(&v.to_be_bytes());
    }
    opaque(&mut msg, cred);
    msg.extend_from_slice(&[0; 8]); // AUTH_NONE verifier
    msg.extend_from_slice(args);
    let len = (msg.len() - 4) as u32 | 0x8000_0000;
    msg[0..4].copy_from_slice(&len.to_be_bytes());
    msg
}

/// READ3args: `fh`, `offset`, `count`.
pub fn read_args(fh: &[u8], offset: u64, count: u32) -> Vec<u8> {
    let mut a = Vec::new();
    opaque(&mut a, fh);
    a.extend_from_slice(&offset.to_be_bytes());
    a.extend_from_slice(&count.to_be_bytes());
    a
}

/// `n` pipelined NFSv3 READ call records of `count` bytes of `fh`, as uid 1000: for a
/// client that sends them and never reads a reply.
pub fn read_records(fh: &[u8], count: u32, n: u32) -> Vec<u8> {
    let cred = auth_sys(1000, 1000);
    (0..n)
        .flat_map(|xid| call_record(xid, 100003, 3, 6, &cred, &read_args(fh, 0, count)))
        .collect()
}

impl Client {
    pub async fn connect(addr: SocketAddr, uid: u32, gid: u32) -> Arc<Client> {
        let s = TcpStream::connect(addr).await.expect("connect");
        Self::over(s, uid, gid)
    }

    /// Connected from local address `from` (another loopback address is another client).
    pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr, uid: u32, gid: u32) -> Arc<Client> {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(from, 0)).expect("bind");
        Self::over(sock.connect(addr).await.expect("connect"), uid, gid)
    }

    fn over(s: TcpStream, uid: u32, gid: u32) -> Arc<Client> {
        s.set_nodelay(true).ok();
        let (mut r, w) = s.into_split();
        let pending: Pending = Default::default();
        let p = pending.clone();
        tokio::spawn(async move {
            loop {
                let mut hdr = [0u8; 4];
                if r.read_exact(&mut hdr).await.is_err() {
                    return;
                }
                let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
                let mut buf = vec![0u8; len];
                if r.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let xid = u32::from_be_bytes(buf[0..4].try_into().unwrap());
                if let Some(tx) = p.lock().remove(&xid) {
                    let _ = tx.send(buf);
                }
            }
        });
        Arc::new(Client {
            write: Mutex::new(w),
            pending,
            xid: AtomicU32::new(1),
            cred: auth_sys(uid, gid),
        })
    }

    /// One call; returns the results after the accept status (which must be SUCCESS).
    pub async fn call(&self, prog: u32, vers: u32, proc: u32, args: &[u8]) -> Vec<u8> {
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let msg = call_record(xid, prog, vers, proc, &self.cred, args);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(xid, tx);
        self.write.lock().await.write_all(&msg).await.expect("send");
        let reply = rx.await.expect("reply");
        let accept = u32::from_be_bytes(reply[20..24].try_into().unwrap());
        assert_eq!(accept, 0, "RPC not accepted");
        reply[24..].to_vec()
    }

    pub async fn mount(&self, path: &str) -> Vec<u8> {
        let mut a = Vec::new();
        opaque(&mut a, path.as_bytes());
        let r = self.call(100005, 3, 1, &a).await;
        assert_eq!(&r[0..4], &[0; 4], "MNT failed");
        let len = u32::from_be_bytes(r[4..8].try_into().unwrap()) as usize;
        r[8..8 + len].to_vec()
    }

    fn status(r: &[u8]) -> u32 {
        u32::from_be_bytes(r[0..4].try_into().unwrap())
    }

    /// CREATE (UNCHECKED, mode 0644) → the new file's handle.
    pub async fn create(&self, dir: &[u8], name: &str) -> Vec<u8> {
        let mut a = Vec::new();
        opaque(&mut a, dir);
        opaque(&mut a, name.as_bytes());
        for v in [0u32, 1, 0o644, 0, 0, 0, 0, 0] {
            a.extend_from_slice(&v.to_be_bytes());
        }
        let r = self.call(100003, 3, 8, &a).await;
        assert_eq!(Self::status(&r), 0, "CREATE {name}");
        assert_eq!(u32::from_be_bytes(r[4..8].try_into().unwrap()), 1);
        let len = u32::from_be_bytes(r[8..12].try_into().unwrap()) as usize;
        r[12..12 + len].to_vec()
    }

    pub async fn mkdir(&self, dir: &[u8], name: &str) -> Vec<u8> {
        let mut a = Vec::new();
        opaque(&mut a, dir);
        opaque(&mut a, name.as_bytes());
        for v in [1u32, 0o755, 0, 0, 0, 0, 0] {
            a.extend_from_slice(&v.to_be_bytes());
        }
        let r = self.call(100003, 3, 9, &a).await;
        assert_eq!(Self::status(&r), 0, "MKDIR {name}");
        let len = u32::from_be_bytes(r[8..12].try_into().unwrap()) as usize;
        r[12..12 + len].to_vec()
    }

    pub async fn write(&self, fh: &[u8], offset: u64, data: &[u8], stable: u32) {
        let mut a = Vec::with_capacity(data.len() + 96);
        opaque(&mut a, fh);
        a.extend_from_slice(&offset.to_be_bytes());
        a.extend_from_slice(&(data.len() as u32).to_be_bytes());
        a.extend_from_slice(&stable.to_be_bytes());
        opaque(&mut a, data);
        let r = self.call(100003, 3, 7, &a).await;
        assert_eq!(Self::status(&r), 0, "WRITE");
    }

    pub async fn commit(&self, fh: &[u8]) {
        let mut a = Vec::new();
        opaque(&mut a, fh);
        a.extend_from_slice(&[0; 12]);
        let r = self.call(100003, 3, 21, &a).await;
        assert_eq!(Self::status(&r), 0, "COMMIT");
    }

    /// READ; returns the data length.
    pub async fn read(&self, fh: &[u8], offset: u64, count: u32) -> usize {
        let r = self.call(100003, 3, 6, &read_args(fh, offset, count)).await;
        assert_eq!(Self::status(&r), 0, "READ");
        // status, post_op_attr (bool + 84-byte fattr3), count, eof, data length
        let at = if u32::from_be_bytes(r[4..8].try_into().unwrap()) == 1 {
            8 + 84
        } else {
            8
        };
        u32::from_be_bytes(r[at + 8..at + 12].try_into().unwrap()) as usize
    }

    pub async fn getattr(&self, fh: &[u8]) {
        let mut a = Vec::new();
        opaque(&mut a, fh);
        let r = self.call(100003, 3, 1, &a).await;
        assert_eq!(Self::status(&r), 0, "GETATTR");
    }

    /// LOOKUP → the handle, or `None` when the name is not there.
    pub async fn try_lookup(&self, dir: &[u8], name: &str) -> Option<Vec<u8>> {
        let mut a = Vec::new();
        opaque(&mut a, dir);
        opaque(&mut a, name.as_bytes());
        let r = self.call(100003, 3, 3, &a).await;
        if Self::status(&r) != 0 {
            return None;
        }
        let len = u32::from_be_bytes(r[4..8].try_into().unwrap()) as usize;
        Some(r[8..8 + len].to_vec())
    }

    /// LOOKUP → the handle.
    pub async fn lookup(&self, dir: &[u8], name: &str) -> Vec<u8> {
        let mut a = Vec::new();
        opaque(&mut a, dir);
        opaque(&mut a, name.as_bytes());
        let r = self.call(100003, 3, 3, &a).await;
        assert_eq!(Self::status(&r), 0, "LOOKUP {name}");
        let len = u32::from_be_bytes(r[4..8].try_into().unwrap()) as usize;
        r[8..8 + len].to_vec()
    }

    /// READDIRPLUS through the whole directory as `ls -l` has the Linux client do it;
    /// returns the handles of the entries that came with one.
    pub async fn readdirplus_handles(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        let (mut cookie, mut verf, mut out) = (0u64, [0u8; 8], Vec::new());
        loop {
            let mut a = Vec::new();
            opaque(&mut a, dir);
            a.extend_from_slice(&cookie.to_be_bytes());
            a.extend_from_slice(&verf);
            a.extend_from_slice(&32768u32.to_be_bytes());
            a.extend_from_slice(&(1u32 << 20).to_be_bytes());
            let r = self.call(100003, 3, 17, &a).await;
            assert_eq!(Self::status(&r), 0, "READDIRPLUS");
            let word = |p: usize| u32::from_be_bytes(r[p..p + 4].try_into().unwrap());
            let mut p = if word(4) == 1 { 8 + 84 } else { 8 };
            verf.copy_from_slice(&r[p..p + 8]);
            p += 8;
            while word(p) == 1 {
                p += 4 + 8;
                let nl = word(p) as usize;
                let dot = matches!(&r[p + 4..p + 4 + nl], b"." | b"..");
                p += 4 + nl.div_ceil(4) * 4;
                cookie = u64::from_be_bytes(r[p..p + 8].try_into().unwrap());
                p += 8;
                p += if word(p) == 1 { 4 + 84 } else { 4 };
                if word(p) == 1 {
                    let hl = word(p + 4) as usize;
                    if !dot {
                        out.push(r[p + 8..p + 8 + hl].to_vec());
                    }
                    p += 8 + hl.div_ceil(4) * 4;
                } else {
                    p += 4;
                }
            }
            if word(p + 4) == 1 {
                return out;
            }
        }
    }

    /// READDIR (names only, no attributes) through the whole directory.
    pub async fn readdir_names(&self, dir: &[u8]) -> Vec<String> {
        let (mut cookie, mut verf, mut out) = (0u64, [0u8; 8], Vec::new());
        loop {
            let mut a = Vec::new();
            opaque(&mut a, dir);
            a.extend_from_slice(&cookie.to_be_bytes());
            a.extend_from_slice(&verf);
            a.extend_from_slice(&(1u32 << 20).to_be_bytes());
            let r = self.call(100003, 3, 16, &a).await;
            assert_eq!(Self::status(&r), 0, "READDIR");
            let word = |p: usize| u32::from_be_bytes(r[p..p + 4].try_into().unwrap());
            let mut p = if word(4) == 1 { 8 + 84 } else { 8 };
            verf.copy_from_slice(&r[p..p + 8]);
            p += 8;
            while word(p) == 1 {
                p += 4 + 8;
                let nl = word(p) as usize;
                let name = String::from_utf8_lossy(&r[p + 4..p + 4 + nl]).into_owned();
                p += 4 + nl.div_ceil(4) * 4;
                cookie = u64::from_be_bytes(r[p..p + 8].try_into().unwrap());
                p += 8;
                if name != "." && name != ".." {
                    out.push(name);
                }
            }
            if word(p + 4) == 1 {
                return out;
            }
        }
    }

    /// READDIRPLUS through the whole directory; returns the entries seen.
    pub async fn readdirplus_all(&self, dir: &[u8]) -> usize {
        let (mut cookie, mut verf, mut n) = (0u64, [0u8; 8], 0);
        loop {
            let mut a = Vec::new();
            opaque(&mut a, dir);
            a.extend_from_slice(&cookie.to_be_bytes());
            a.extend_from_slice(&verf);
            a.extend_from_slice(&32768u32.to_be_bytes());
            a.extend_from_slice(&(1u32 << 20).to_be_bytes());
            let r = self.call(100003, 3, 17, &a).await;
            assert_eq!(Self::status(&r), 0, "READDIRPLUS");
            let mut p = 4;
            let word = |p: usize| u32::from_be_bytes(r[p..p + 4].try_into().unwrap());
            if word(p) == 1 {
                p += 4 + 84;
            } else {
                p += 4;
            }
            verf.copy_from_slice(&r[p..p + 8]);
            p += 8;
            while word(p) == 1 {
                p += 4 + 8; // follows, fileid
                let nl = word(p) as usize;
                p += 4 + nl.div_ceil(4) * 4;
                cookie = u64::from_be_bytes(r[p..p + 8].try_into().unwrap());
                p += 8;
                p += if word(p) == 1 { 4 + 84 } else { 4 };
                if word(p) == 1 {
                    let hl = word(p + 4) as usize;
                    p += 8 + hl.div_ceil(4) * 4;
                } else {
                    p += 4;
                }
                n += 1;
            }
            p += 4;
            if word(p) == 1 {
                return n;
            }
        }
    }
}
