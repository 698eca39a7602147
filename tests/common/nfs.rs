//! A real NFSv3 client (the `nfs3_client` crate) and small helpers over it.

use std::net::SocketAddr;

use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};
use nfs3_types::nfs3::*;
use nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_types::xdr_codec::Opaque;
use tokio::net::TcpStream;

pub type Conn = Nfs3Connection<TokioIo<TcpStream>>;

/// Mounts `export` as uid/gid over NFS and MOUNT on the gateway's one port.
pub async fn mount_as(addr: SocketAddr, export: &str, uid: u32, gid: u32) -> Conn {
    try_mount_as(addr, export, uid, gid).await.expect("mount")
}

pub async fn try_mount_as(
    addr: SocketAddr,
    export: &str,
    uid: u32,
    gid: u32,
) -> Result<Conn, nfs3_client::ConnectError> {
    let cred = opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"test-client"),
        uid,
        gid,
        gids: vec![],
    });
    Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), export)
        .connect_from_privileged_port(false)
        .mount_port(addr.port())
        .nfs3_port(addr.port())
        .credential(cred)
        .mount()
        .await
}

pub async fn mount(addr: SocketAddr) -> Conn {
    mount_as(addr, "/data", 1000, 1000).await
}

pub fn name(n: &str) -> filename3<'static> {
    filename3(Opaque::owned(n.as_bytes().to_vec()))
}

pub fn mode_attr(mode: u32) -> sattr3 {
    sattr3 {
        mode: Nfs3Option::Some(mode),
        ..sattr3::default()
    }
}

pub async fn create(c: &mut Conn, dir: &nfs_fh3, n: &str, mode: u32) -> nfs_fh3 {
    let r = c
        .create(&CREATE3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(n),
            },
            how: createhow3::UNCHECKED(mode_attr(mode)),
        })
        .await
        .expect("rpc");
    match r {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => fh,
            Nfs3Option::None => panic!("no handle"),
        },
        Nfs3Result::Err((st, _)) => panic!("create {n}: {st:?}"),
    }
}

pub async fn mkdir(c: &mut Conn, dir: &nfs_fh3, n: &str, mode: u32) -> nfs_fh3 {
    let r = c
        .mkdir(&MKDIR3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(n),
            },
            attributes: mode_attr(mode),
        })
        .await
        .expect("rpc");
    match r {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => fh,
            Nfs3Option::None => panic!("no handle"),
        },
        Nfs3Result::Err((st, _)) => panic!("mkdir {n}: {st:?}"),
    }
}

pub async fn lookup(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Result<nfs_fh3, nfsstat3> {
    match c
        .lookup(&LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: name(n),
            },
        })
        .await
        .expect("rpc")
    {
        Nfs3Result::Ok(ok) => Ok(ok.object),
        Nfs3Result::Err((st, _)) => Err(st),
    }
}

pub async fn getattr(c: &mut Conn, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
    match c
        .getattr(&GETATTR3args { object: fh.clone() })
        .await
        .expect("rpc")
    {
        Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
        Nfs3Result::Err((st, _)) => Err(st),
    }
}

pub async fn write_at(
    c: &mut Conn,
    fh: &nfs_fh3,
    offset: u64,
    data: &[u8],
    stable: stable_how,
) -> Result<WRITE3resok, nfsstat3> {
    let r = c
        .write(&WRITE3args {
            file: fh.clone(),
            offset,
            count: data.len() as u32,
            stable,
            data: Opaque::borrowed(data),
        })
        .await
        .expect("rpc");
    match r {
        Nfs3Result::Ok(ok) => Ok(ok),
        Nfs3Result::Err((st, _)) => Err(st),
    }
}

pub async fn commit(c: &mut Conn, fh: &nfs_fh3) -> COMMIT3resok {
    match c
        .commit(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .expect("rpc")
    {
        Nfs3Result::Ok(ok) => ok,
        Nfs3Result::Err((st, _)) => panic!("commit: {st:?}"),
    }
}

/// Writes `data` from offset 0 in 1 MiB UNSTABLE writes, then COMMITs, like the
/// Linux client does, which also resends a WRITE answered JUKEBOX (the dirty limit
/// is reached until uploads free room) after a pause; here for up to a minute.
pub async fn write_all(c: &mut Conn, fh: &nfs_fh3, data: &[u8]) {
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let mut tries = 0;
        loop {
            match write_at(c, fh, (i as u64) << 20, chunk, stable_how::UNSTABLE).await {
                Err(nfsstat3::NFS3ERR_JUKEBOX) if tries < 120 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                r => {
                    r.expect("write");
                    break;
                }
            }
        }
    }
    commit(c, fh).await;
}

pub async fn put_file(c: &mut Conn, dir: &nfs_fh3, n: &str, data: &[u8]) -> nfs_fh3 {
    let fh = create(c, dir, n, 0o644).await;
    write_all(c, &fh, data).await;
    fh
}

pub async fn read_all(c: &mut Conn, fh: &nfs_fh3) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let r = c
            .read(&READ3args {
                file: fh.clone(),
                offset: out.len() as u64,
                count: 1 << 20,
            })
            .await
            .expect("rpc");
        match r {
            Nfs3Result::Ok(ok) => {
                out.extend_from_slice(&ok.data);
                if ok.eof || ok.data.is_empty() {
                    return out;
                }
            }
            Nfs3Result::Err((st, _)) => panic!("read: {st:?}"),
        }
    }
}

pub async fn setattr(c: &mut Conn, fh: &nfs_fh3, attrs: sattr3) -> Result<(), nfsstat3> {
    let r = c
        .setattr(&SETATTR3args {
            object: fh.clone(),
            new_attributes: attrs,
            guard: Nfs3Option::None,
        })
        .await
        .expect("rpc");
    match r {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((st, _)) => Err(st),
    }
}

pub async fn set_mode(c: &mut Conn, fh: &nfs_fh3, mode: u32) -> Result<(), nfsstat3> {
    setattr(c, fh, mode_attr(mode)).await
}

/// A truncate (or extend) to `size`.
pub async fn set_size(c: &mut Conn, fh: &nfs_fh3, size: u64) -> Result<(), nfsstat3> {
    let attrs = sattr3 {
        size: Nfs3Option::Some(size),
        ..sattr3::default()
    };
    setattr(c, fh, attrs).await
}

pub async fn remove(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Result<(), nfsstat3> {
    match c
        .remove(&REMOVE3args {
            object: diropargs3 {
                dir: dir.clone(),
                name: name(n),
            },
        })
        .await
        .expect("rpc")
    {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((st, _)) => Err(st),
    }
}

pub async fn rename(
    c: &mut Conn,
    from: &nfs_fh3,
    fname: &str,
    to: &nfs_fh3,
    tname: &str,
) -> Result<(), nfsstat3> {
    let r = c
        .rename(&RENAME3args {
            from: diropargs3 {
                dir: from.clone(),
                name: name(fname),
            },
            to: diropargs3 {
                dir: to.clone(),
                name: name(tname),
            },
        })
        .await
        .expect("rpc");
    match r {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((st, _)) => Err(st),
    }
}

pub async fn symlink(c: &mut Conn, dir: &nfs_fh3, n: &str, target: &str) -> nfs_fh3 {
    let r = c
        .symlink(&SYMLINK3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(n),
            },
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::owned(target.as_bytes().to_vec())),
            },
        })
        .await
        .expect("rpc");
    match r {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => fh,
            Nfs3Option::None => panic!("no handle"),
        },
        Nfs3Result::Err((st, _)) => panic!("symlink: {st:?}"),
    }
}

/// Every name in a directory through READDIRPLUS, following cookies.
pub async fn list_names(c: &mut Conn, dir: &nfs_fh3) -> Vec<String> {
    let mut names = Vec::new();
    let mut cookie = 0;
    let mut verf = cookieverf3::default();
    loop {
        let r = c
            .readdirplus(&READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                dircount: 8192,
                maxcount: 32768,
            })
            .await
            .expect("rpc");
        let ok = match r {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((st, _)) => panic!("readdirplus: {st:?}"),
        };
        verf = ok.cookieverf;
        for e in ok.reply.entries.0 {
            cookie = e.cookie;
            let n = String::from_utf8(e.name.0.to_vec()).unwrap();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        if ok.reply.eof {
            return names;
        }
    }
}

/// A deterministic pseudo-random body.
pub fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// AUTH_SYS credentials with supplementary groups.
pub fn unix_cred(uid: u32, gid: u32, gids: &[u32]) -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"test-client"),
        uid,
        gid,
        gids: gids.to_vec(),
    })
}

/// Mounts `export` with any credential (`opaque_auth::default()` is AUTH_NONE).
pub async fn try_mount_cred(
    addr: SocketAddr,
    export: &str,
    cred: opaque_auth<'static>,
) -> Result<Conn, nfs3_client::ConnectError> {
    Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), export)
        .connect_from_privileged_port(false)
        .mount_port(addr.port())
        .nfs3_port(addr.port())
        .credential(cred)
        .mount()
        .await
}

pub async fn mount_cred(addr: SocketAddr, export: &str, cred: opaque_auth<'static>) -> Conn {
    try_mount_cred(addr, export, cred).await.expect("mount")
}

pub type Client = nfs3_client::Nfs3Client<TokioIo<TcpStream>>;

/// An NFS client connection that never called MNT (a client reusing a handle it
/// got earlier, or guessed).
pub async fn raw_client(addr: SocketAddr, cred: opaque_auth<'static>) -> Client {
    let s = TcpStream::connect(addr).await.expect("connect");
    nfs3_client::Nfs3Client::new_with_auth(TokioIo::new(s), cred, opaque_auth::default())
}

/// A handle made of arbitrary bytes.
pub fn fh(bytes: &[u8]) -> nfs_fh3 {
    nfs_fh3 {
        data: Opaque::owned(bytes.to_vec()),
    }
}

/// A name made of arbitrary bytes (NUL, "/", not UTF-8, ...).
pub fn bname(n: &[u8]) -> filename3<'static> {
    filename3(Opaque::owned(n.to_vec()))
}

pub fn dirop(dir: &nfs_fh3, n: &[u8]) -> diropargs3<'static> {
    diropargs3 {
        dir: dir.clone(),
        name: bname(n),
    }
}

/// Connects from a chosen loopback source address (127.0.0.2, ...): another client
/// host, as far as the gateway can tell.
pub struct FromAddr(pub std::net::IpAddr);

impl nfs3_client::net::Connector for FromAddr {
    type Connection = TokioIo<TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Connection> {
        self.connect_with_port(addr, 0).await
    }

    async fn connect_with_port(
        &self,
        addr: SocketAddr,
        local_port: u16,
    ) -> std::io::Result<Self::Connection> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.0, local_port))?;
        Ok(TokioIo::new(socket.connect(addr).await?))
    }
}

/// Mounts `/data` as uid 1000 from source address `from`.
pub async fn mount_from(addr: SocketAddr, from: &str) -> Nfs3Connection<TokioIo<TcpStream>> {
    Nfs3ConnectionBuilder::new(FromAddr(from.parse().unwrap()), addr.ip().to_string(), "/data")
        .connect_from_privileged_port(false)
        .mount_port(addr.port())
        .nfs3_port(addr.port())
        .credential(unix_cred(1000, 1000, &[]))
        .mount()
        .await
        .expect("mount")
}
