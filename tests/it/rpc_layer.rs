//! The RPC layer end to end over loopback: portmap, MOUNT and NFS NULL through the real
//! `nfs3_client` crate, and raw-socket tests for framing, limits, authentication
//! errors, the reply cache, concurrency and shutdown. Every test is bounded in time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bucketgate::nfs::{CallContext, ExportEntry, Exports, Nfs3Program, ProcReply};
use bucketgate::nfs::{Limits, serve};
use bytes::Bytes;
use nfs3_client::io::{AsyncRead as ClientRead, AsyncWrite as ClientWrite};
use nfs3_client::nfs3_types::mount::{dirpath, mountstat3};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{MountClient, MountError, Nfs3ConnectionBuilder, PortmapError, PortmapperClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const PORTMAP: u32 = 100_000;
const ROOT_FH: &[u8] = b"ROOTFH01";
const T: Duration = Duration::from_secs(10);

// Test procedure numbers (NFS numbering where it matters for the reply cache).
const P_NULL: u32 = 0;
const P_ECHO: u32 = 1; // GETATTR slot: echoes its arguments
const P_WHOAMI: u32 = 4; // ACCESS slot: returns uid, gid, #gids
const P_BIG: u32 = 6; // READ slot: 1 MiB of results
const P_CREATE: u32 = 8; // non-idempotent: counts, optionally waits on the gate
const P_GATED: u32 = 19; // FSINFO slot: waits on the gate
const P_BARRIER: u32 = 21; // COMMIT slot: waits until 20 calls are inside at once
const P_PANIC: u32 = 20; // PATHCONF slot: panics

struct TestNfs {
    creates: AtomicUsize,
    bigs: AtomicUsize,
    gate_create: bool,
    gate: Notify,
    barrier: Barrier,
}

impl TestNfs {
    fn new(gate_create: bool) -> Arc<Self> {
        Arc::new(TestNfs {
            creates: AtomicUsize::new(0),
            bigs: AtomicUsize::new(0),
            gate_create,
            gate: Notify::new(),
            barrier: Barrier::new(20),
        })
    }
}

impl Nfs3Program for TestNfs {
    async fn call(&self, ctx: CallContext, proc: u32, args: Bytes) -> ProcReply {
        match proc {
            P_NULL => ProcReply::Success(Vec::new()),
            P_ECHO => ProcReply::Success(args.to_vec()),
            P_WHOAMI => {
                let a = ctx.auth.expect("AUTH_SYS credentials");
                ProcReply::Success(words(&[a.uid, a.gid, a.gids.len() as u32]))
            }
            P_BIG => {
                self.bigs.fetch_add(1, Ordering::SeqCst);
                // READ-shaped arguments (fh, offset, count): `count` bytes, else 1 MiB.
                let len = match args.len() {
                    n if n >= 16 => u32::from_be_bytes(args[n - 4..].try_into().unwrap()) as usize,
                    _ => 1 << 20,
                };
                ProcReply::Success(vec![7u8; len])
            }
            P_CREATE => {
                if self.gate_create {
                    self.gate.notified().await;
                }
                let n = self.creates.fetch_add(1, Ordering::SeqCst) + 1;
                ProcReply::Success(words(&[n as u32]))
            }
            P_GATED => {
                self.gate.notified().await;
                ProcReply::Success(words(&[ctx.xid]))
            }
            P_BARRIER => {
                self.barrier.wait().await;
                ProcReply::Success(words(&[ctx.xid]))
            }
            P_PANIC => panic!("handler bug"),
            _ => ProcReply::ProcUnavail,
        }
    }
}

struct TestExports;

impl Exports for TestExports {
    fn allows(&self, _client: IpAddr) -> bool {
        true // /data allows everyone
    }

    fn exports(&self, _client: IpAddr) -> Vec<ExportEntry> {
        vec![
            ExportEntry {
                path: "/data".into(),
                allowed_clients: vec![],
            },
            ExportEntry {
                path: "/secret".into(),
                allowed_clients: vec!["10.9.9.9".into(), "10.1.0.0/16".into()],
            },
        ]
    }

    fn mount(&self, path: &[u8], client: IpAddr) -> Result<Vec<u8>, mountstat3> {
        match path {
            b"/data" => Ok(ROOT_FH.to_vec()),
            b"/secret" if client.to_string() == "10.9.9.9" => Ok(b"SECRETFH".to_vec()),
            b"/secret" => Err(mountstat3::MNT3ERR_ACCES),
            _ => Err(mountstat3::MNT3ERR_NOENT),
        }
    }
}

struct Server {
    addr: SocketAddr,
    nfs: Arc<TestNfs>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: Limits, nfs: Arc<TestNfs>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            nfs.clone(),
            Arc::new(TestExports),
            limits,
            async {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            nfs,
            stop: Some(stop),
            task,
        }
    }

    async fn default() -> Server {
        Server::start(Limits::default(), TestNfs::new(false)).await
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(T, self.task)
            .await
            .expect("serve returns")
            .unwrap()
            .unwrap();
    }
}

// ---- nfs3_client over tokio (the crate's `tokio` feature is not enabled here) ----

struct Io(TcpStream);

impl ClientRead for Io {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).await
    }
}

impl ClientWrite for Io {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).await
    }
}

struct Connector;

impl nfs3_client::net::Connector for Connector {
    type Connection = Io;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Io> {
        Ok(Io(TcpStream::connect(addr).await?))
    }

    async fn connect_with_port(&self, addr: SocketAddr, _local_port: u16) -> std::io::Result<Io> {
        self.connect(addr).await
    }
}

async fn io(s: &Server) -> Io {
    Io(s.connect().await)
}

fn path(p: &[u8]) -> dirpath<'static> {
    dirpath(Opaque::owned(p.to_vec()))
}

// ---- raw RPC helpers ----

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_be_bytes()).collect()
}

fn to_words(b: &[u8]) -> Vec<u32> {
    b.chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn auth_sys(uid: u32, gid: u32, gids: &[u32]) -> Vec<u8> {
    let mut b = words(&[0, 4]);
    b.extend_from_slice(b"host");
    b.extend(words(&[uid, gid, gids.len() as u32]));
    b.extend(words(gids));
    b
}

fn call_with_cred(
    xid: u32,
    prog: u32,
    vers: u32,
    proc: u32,
    flavor: u32,
    cred: &[u8],
    args: &[u8],
) -> Vec<u8> {
    let mut m = words(&[xid, 0, 2, prog, vers, proc, flavor, cred.len() as u32]);
    m.extend_from_slice(cred);
    m.resize(m.len().next_multiple_of(4), 0);
    m.extend(words(&[0, 0]));
    m.extend_from_slice(args);
    m
}

fn call(xid: u32, prog: u32, vers: u32, proc: u32, args: &[u8]) -> Vec<u8> {
    call_with_cred(xid, prog, vers, proc, 1, &auth_sys(1000, 100, &[4, 5]), args)
}

async fn send(s: &mut TcpStream, msg: &[u8]) {
    let mut rec = ((msg.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(msg);
    s.write_all(&rec).await.unwrap();
}

/// Reads one reply record; panics on EOF or after the time limit.
async fn recv(s: &mut TcpStream) -> Vec<u8> {
    timeout(T, async {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).await.expect("reply header");
        let h = u32::from_be_bytes(h);
        assert!(h & 0x8000_0000 != 0, "replies are single fragments");
        let mut body = vec![0u8; (h & 0x7FFF_FFFF) as usize];
        s.read_exact(&mut body).await.expect("reply body");
        body
    })
    .await
    .expect("reply within time limit")
}

/// True if the server closed the connection (EOF or reset) within the time limit.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(timeout(T, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// (xid, accept_stat, results) of an accepted reply with an AUTH_NONE verifier.
fn accepted(r: &[u8]) -> (u32, u32, Vec<u8>) {
    let w = to_words(&r[..24]);
    assert_eq!(
        (w[1], w[2], w[3], w[4]),
        (1, 0, 0, 0),
        "accepted reply, AUTH_NONE verifier: {w:?}"
    );
    (w[0], w[5], r[24..].to_vec())
}

async fn null_works(s: &Server) {
    let mut c = s.connect().await;
    send(&mut c, &call(77, NFS, 3, P_NULL, &[])).await;
    let (xid, stat, res) = accepted(&recv(&mut c).await);
    assert_eq!((xid, stat, res.len()), (77, 0, 0));
}

// ---- through nfs3_client ----

#[tokio::test]
async fn portmap_null_getport_dump() {
    let s = Server::default().await;
    let port = s.addr.port();
    let mut pm = PortmapperClient::new(io(&s).await);
    pm.null().await.unwrap();
    assert_eq!(pm.getport(NFS, 3, 6).await.unwrap(), port);
    assert_eq!(pm.getport(MOUNT, 3, 6).await.unwrap(), port);
    assert!(matches!(
        pm.getport(NFS, 3, 17).await,
        Err(PortmapError::ProgramUnavailable)
    ));
    assert!(matches!(
        pm.getport(NFS, 4, 6).await,
        Err(PortmapError::ProgramUnavailable)
    ));
    assert!(matches!(
        pm.getport(100_021, 4, 6).await,
        Err(PortmapError::ProgramUnavailable)
    ));
    let mut dump: Vec<_> = pm
        .dump()
        .await
        .unwrap()
        .iter()
        .map(|m| (m.prog, m.vers, m.prot, m.port))
        .collect();
    dump.sort();
    let p = u32::from(port);
    assert_eq!(dump, vec![(PORTMAP, 2, 6, p), (NFS, 3, 6, p), (MOUNT, 3, 6, p)]);
    s.shutdown().await;
}

#[tokio::test]
async fn mount_mnt_export_dump_umnt() {
    let s = Server::default().await;
    let mut m = MountClient::new(io(&s).await);
    m.null().await.unwrap();

    let exports: Vec<(Vec<u8>, Vec<Vec<u8>>)> = m
        .export()
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|e| {
            (
                e.ex_dir.0.to_vec(),
                e.ex_groups.0.into_iter().map(|g| g.0.to_vec()).collect(),
            )
        })
        .collect();
    assert_eq!(
        exports,
        vec![
            (b"/data".to_vec(), vec![]),
            (
                b"/secret".to_vec(),
                vec![b"10.9.9.9".to_vec(), b"10.1.0.0/16".to_vec()]
            )
        ]
    );

    let ok = m.mnt(path(b"/data")).await.unwrap();
    assert_eq!(ok.fhandle.0.as_ref(), ROOT_FH);
    assert_eq!(ok.auth_flavors, vec![1, 0]);
    let dump: Vec<_> = m
        .dump()
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|b| (b.ml_hostname.0.to_vec(), b.ml_directory.0.to_vec()))
        .collect();
    assert_eq!(dump, vec![(b"127.0.0.1".to_vec(), b"/data".to_vec())]);

    m.umnt(path(b"/data")).await.unwrap();
    assert!(m.dump().await.unwrap().0.is_empty());
    m.mnt(path(b"/data")).await.unwrap();
    m.umntall().await.unwrap();
    assert!(m.dump().await.unwrap().0.is_empty());

    // The allowed-clients check sees the caller's real address.
    assert!(matches!(
        m.mnt(path(b"/secret")).await,
        Err(MountError::Denied(mountstat3::MNT3ERR_ACCES))
    ));
    assert!(matches!(
        m.mnt(path(b"/nope")).await,
        Err(MountError::Denied(mountstat3::MNT3ERR_NOENT))
    ));
    assert!(matches!(
        m.mnt(path(&[b'a'; 1025])).await,
        Err(MountError::Denied(mountstat3::MNT3ERR_NAMETOOLONG))
    ));
    // A refused mount is not listed.
    assert!(m.dump().await.unwrap().0.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn full_mount_through_portmap_then_nfs_null() {
    let s = Server::default().await;
    let cred = opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::borrowed(b"client"),
        uid: 1000,
        gid: 1000,
        gids: vec![1000, 27],
    });
    let conn = timeout(
        T,
        Nfs3ConnectionBuilder::new(Connector, "127.0.0.1", "/data")
            .portmapper_port(s.addr.port())
            .connect_from_privileged_port(false)
            .credential(cred)
            .mount(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(conn.mount_port, s.addr.port());
    assert_eq!(conn.nfs3_port, s.addr.port());
    assert_eq!(conn.root_nfs_fh3().data.as_ref(), ROOT_FH);
    let mut conn = conn;
    conn.null().await.unwrap();
    conn.unmount().await.unwrap();
    s.shutdown().await;
}

// ---- raw sockets ----

#[tokio::test]
async fn auth_sys_reaches_the_handler() {
    let s = Server::default().await;
    let mut c = s.connect().await;
    send(
        &mut c,
        &call_with_cred(1, NFS, 3, P_WHOAMI, 1, &auth_sys(501, 20, &[1, 2, 3]), &[]),
    )
    .await;
    let (xid, stat, res) = accepted(&recv(&mut c).await);
    assert_eq!((xid, stat, to_words(&res)), (1, 0, vec![501, 20, 3]));
    s.shutdown().await;
}

#[tokio::test]
async fn multi_fragment_record() {
    let s = Server::default().await;
    let mut c = s.connect().await;
    let args: Vec<u8> = (0..4000u32).flat_map(|i| i.to_be_bytes()).collect();
    let msg = call(5, NFS, 3, P_ECHO, &args);
    // Uneven fragments, one empty, sent with pauses so they arrive separately.
    let cuts = [0, 3, 3, 100, 7001, msg.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let last = i == cuts.len() - 2;
        let part = &msg[w[0]..w[1]];
        let mut frag = ((part.len() as u32) | if last { 0x8000_0000 } else { 0 })
            .to_be_bytes()
            .to_vec();
        frag.extend_from_slice(part);
        c.write_all(&frag).await.unwrap();
        c.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (xid, stat, res) = accepted(&recv(&mut c).await);
    assert_eq!((xid, stat), (5, 0));
    assert_eq!(res, args);
    s.shutdown().await;
}

#[tokio::test]
async fn record_over_limit_closes_only_that_connection() {
    let limits = Limits {
        max_record_bytes: 64 << 10,
        ..Limits::default()
    };
    let s = Server::start(limits, TestNfs::new(false)).await;
    let mut other = s.connect().await;

    // A 2 GiB claim: closed at once, nothing of that size allocated.
    let mut c = s.connect().await;
    c.write_all(&0xFFFF_FFFFu32.to_be_bytes()).await.unwrap();
    assert!(closed_by_server(&mut c).await);

    // Just over the limit, spread over fragments that each look harmless.
    let mut c = s.connect().await;
    let chunk = vec![0u8; 16 << 10];
    let mut closed = false;
    for _ in 0..5 {
        let mut frag = (chunk.len() as u32).to_be_bytes().to_vec();
        frag.extend_from_slice(&chunk);
        if c.write_all(&frag).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed || closed_by_server(&mut c).await);

    // A record within the limit still works, on an existing and a new connection.
    send(&mut other, &call(9, NFS, 3, P_ECHO, &vec![1u8; 60 << 10])).await;
    let (xid, stat, res) = accepted(&recv(&mut other).await);
    assert_eq!((xid, stat, res.len()), (9, 0, 60 << 10));
    null_works(&s).await;
    s.shutdown().await;
}

#[tokio::test]
async fn client_disconnecting_mid_record_frees_its_slot() {
    // Two connection slots: if abandoned connections leaked, the last call would be refused.
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let s = Server::start(limits, TestNfs::new(false)).await;
    for _ in 0..6 {
        let mut c = s.connect().await;
        let msg = call(1, NFS, 3, P_ECHO, &[0u8; 1000]);
        let mut rec = ((msg.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
        rec.extend_from_slice(&msg[..msg.len() / 2]);
        c.write_all(&rec).await.unwrap();
        drop(c);
    }
    // Slots are released asynchronously after the server sees EOF.
    let ok = timeout(T, async {
        loop {
            let mut c = s.connect().await;
            send(&mut c, &call(3, NFS, 3, P_NULL, &[])).await;
            let mut h = [0u8; 4];
            if c.read_exact(&mut h).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "server refuses connections after clients vanished mid-record"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn connection_limit_closes_an_idle_connection_or_the_new_one() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let s = Server::start(limits, TestNfs::new(false)).await;
    // The first, idle after its answer, is closed for the second, which is served.
    let mut first = s.connect().await;
    send(&mut first, &call(1, NFS, 3, P_NULL, &[])).await;
    assert_eq!(accepted(&recv(&mut first).await).0, 1);
    let mut second = s.connect().await;
    send(&mut second, &call(2, NFS, 3, P_NULL, &[])).await;
    assert_eq!(accepted(&recv(&mut second).await).0, 2);
    assert!(closed_by_server(&mut first).await);
    // One in the middle of sending a call is not idle: a third is closed instead.
    let msg = call(3, NFS, 3, P_NULL, &[]);
    let mut rec = ((msg.len() as u32) | 0x8000_0000).to_be_bytes().to_vec();
    rec.extend_from_slice(&msg);
    second.write_all(&rec[..rec.len() / 2]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut third = s.connect().await;
    assert!(closed_by_server(&mut third).await);
    // The second is unaffected.
    second.write_all(&rec[rec.len() / 2..]).await.unwrap();
    assert_eq!(accepted(&recv(&mut second).await).0, 3);
    s.shutdown().await;
}

#[tokio::test]
async fn garbage_headers() {
    let s = Server::default().await;
    let mut c = s.connect().await;
    // Too short for an xid: dropped silently, the connection stays usable.
    send(&mut c, &[1, 2]).await;
    // Cut after rpcvers: GARBAGE_ARGS for that xid.
    send(&mut c, &words(&[0x1234, 0, 2])).await;
    let (xid, stat, _) = accepted(&recv(&mut c).await);
    assert_eq!((xid, stat), (0x1234, 4));
    // A REPLY sent to the server is ignored.
    send(&mut c, &words(&[0x99, 1, 0, 0, 0, 0])).await;
    send(&mut c, &call(0x55, NFS, 3, P_NULL, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await).0, 0x55);
    s.shutdown().await;
}

#[tokio::test]
async fn rpc_level_errors() {
    let s = Server::default().await;
    let mut c = s.connect().await;
    let denied = |r: Vec<u8>| to_words(&r);

    // rpcvers 3 -> MSG_DENIED RPC_MISMATCH(2, 2)
    let mut m = call(10, NFS, 3, P_NULL, &[]);
    m[8..12].copy_from_slice(&3u32.to_be_bytes());
    send(&mut c, &m).await;
    assert_eq!(denied(recv(&mut c).await), vec![10, 1, 1, 0, 2, 2]);

    // AUTH_SYS with 17 gids -> AUTH_ERROR BADCRED
    let gids: Vec<u32> = (0..17).collect();
    send(
        &mut c,
        &call_with_cred(11, NFS, 3, P_NULL, 1, &auth_sys(0, 0, &gids), &[]),
    )
    .await;
    assert_eq!(denied(recv(&mut c).await), vec![11, 1, 1, 1, 1]);

    // AUTH_SYS body whose gid count runs past its end -> BADCRED
    let mut cred = auth_sys(0, 0, &[]);
    let n = cred.len();
    cred[n - 4..].copy_from_slice(&1000u32.to_be_bytes());
    send(&mut c, &call_with_cred(12, NFS, 3, P_NULL, 1, &cred, &[])).await;
    assert_eq!(denied(recv(&mut c).await), vec![12, 1, 1, 1, 1]);

    // RPCSEC_GSS -> BADCRED (we offer AUTH_SYS and AUTH_NONE only)
    send(&mut c, &call_with_cred(13, NFS, 3, P_NULL, 6, &[0; 8], &[])).await;
    assert_eq!(denied(recv(&mut c).await), vec![13, 1, 1, 1, 1]);

    // AUTH_NONE is fine for NULL
    send(&mut c, &call_with_cred(14, NFS, 3, P_NULL, 0, &[], &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (14, 0, vec![]));

    // Unknown program (NFS ACL) -> PROG_UNAVAIL
    send(&mut c, &call(15, 100_227, 3, 0, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (15, 1, vec![]));

    // Wrong versions -> PROG_MISMATCH(low, high)
    send(&mut c, &call(16, NFS, 4, 0, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (16, 2, words(&[3, 3])));
    send(&mut c, &call(17, MOUNT, 1, 0, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (17, 2, words(&[3, 3])));
    send(&mut c, &call(18, PORTMAP, 3, 0, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (18, 2, words(&[2, 2])));

    // Unknown procedures -> PROC_UNAVAIL (handler's answer and portmap CALLIT)
    send(&mut c, &call(19, NFS, 3, 99, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (19, 3, vec![]));
    send(&mut c, &call(20, PORTMAP, 2, 5, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (20, 3, vec![]));

    // Truncated MNT arguments -> GARBAGE_ARGS
    send(&mut c, &call(21, MOUNT, 3, 1, &words(&[100]))).await;
    assert_eq!(accepted(&recv(&mut c).await), (21, 4, vec![]));

    // A panicking handler -> SYSTEM_ERR, and the connection lives on
    send(&mut c, &call(22, NFS, 3, P_PANIC, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (22, 5, vec![]));
    send(&mut c, &call(23, NFS, 3, P_NULL, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await), (23, 0, vec![]));
    s.shutdown().await;
}

#[tokio::test]
async fn retransmitted_create_runs_once() {
    let s = Server::default().await;
    let msg = call(0xC0FFEE, NFS, 3, P_CREATE, b"name");
    let mut a = s.connect().await;
    send(&mut a, &msg).await;
    let first = recv(&mut a).await;
    send(&mut a, &msg).await;
    let second = recv(&mut a).await;
    // The client reconnects from a new port and retransmits again.
    let mut b = s.connect().await;
    send(&mut b, &msg).await;
    let third = recv(&mut b).await;
    assert_eq!(accepted(&first), (0xC0FFEE, 0, words(&[1])));
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(s.nfs.creates.load(Ordering::SeqCst), 1);

    // A new xid is a new call; so is the same xid with different arguments.
    send(&mut b, &call(0xC0FFEF, NFS, 3, P_CREATE, b"name")).await;
    assert_eq!(accepted(&recv(&mut b).await).2, words(&[2]));
    send(&mut b, &call(0xC0FFEE, NFS, 3, P_CREATE, b"other")).await;
    assert_eq!(accepted(&recv(&mut b).await).2, words(&[3]));
    // Idempotent procedures are not cached.
    for _ in 0..2 {
        send(&mut b, &call(0xAB, NFS, 3, P_ECHO, b"abcd")).await;
        assert_eq!(accepted(&recv(&mut b).await).2, b"abcd".to_vec());
    }
    s.shutdown().await;
}

#[tokio::test]
async fn retransmission_while_running_is_dropped() {
    let s = Server::start(Limits::default(), TestNfs::new(true)).await;
    let mut c = s.connect().await;
    let msg = call(42, NFS, 3, P_CREATE, b"x");
    send(&mut c, &msg).await;
    send(&mut c, &msg).await;
    // Let both reach the server before the first completes.
    send(&mut c, &call(43, NFS, 3, P_NULL, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await).0, 43);
    // Slack only (not a timing assert): the duplicate has long been seen by now.
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.nfs.gate.notify_one();
    assert_eq!(accepted(&recv(&mut c).await), (42, 0, words(&[1])));
    // Exactly one reply for xid 42: the next thing on the wire answers xid 44.
    send(&mut c, &call(44, NFS, 3, P_NULL, &[])).await;
    assert_eq!(accepted(&recv(&mut c).await).0, 44);
    assert_eq!(s.nfs.creates.load(Ordering::SeqCst), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn twenty_calls_in_flight_on_one_connection() {
    let s = Server::default().await;
    let mut c = s.connect().await;
    // Each call waits until all 20 are inside the handler at once: this only
    // completes if the server runs them concurrently.
    let mut batch = Vec::new();
    for xid in 100..120u32 {
        let msg = call(xid, NFS, 3, P_BARRIER, &[]);
        batch.extend(((msg.len() as u32) | 0x8000_0000).to_be_bytes());
        batch.extend(msg);
    }
    c.write_all(&batch).await.unwrap();
    let mut xids = Vec::new();
    for _ in 0..20 {
        let (xid, stat, res) = accepted(&recv(&mut c).await);
        assert_eq!((stat, res), (0, words(&[xid])));
        xids.push(xid);
    }
    xids.sort();
    assert_eq!(xids, (100..120).collect::<Vec<_>>());
    s.shutdown().await;
}

#[tokio::test]
async fn stalled_client_does_not_hold_up_others() {
    // Few global handler slots, so a stalled connection holding them would block B.
    let limits = Limits {
        max_calls_total: 2,
        max_calls_per_connection: 16,
        ..Limits::default()
    };
    let s = Server::start(limits, TestNfs::new(false)).await;
    let mut stalled = s.connect().await;
    // 100 calls for 1 MiB replies that A never reads: far beyond socket buffers.
    let mut batch = Vec::new();
    for xid in 0..100u32 {
        let msg = call(xid, NFS, 3, P_BIG, &[]);
        batch.extend(((msg.len() as u32) | 0x8000_0000).to_be_bytes());
        batch.extend(msg);
    }
    stalled.write_all(&batch).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        null_works(&s).await;
    }
    // B can also get large replies.
    let mut b = s.connect().await;
    send(&mut b, &call(1, NFS, 3, P_BIG, &[])).await;
    assert_eq!(accepted(&recv(&mut b).await).2.len(), 1 << 20);
    // A's unwritten replies count against its 16 calls: the server stopped reading
    // from A long before its 100th call (loopback buffers hold a few replies at most).
    let ran_for_a = s.nfs.bigs.load(Ordering::SeqCst) - 1;
    assert!(ran_for_a < 60, "{ran_for_a} calls of a stalled client ran");
    drop(stalled);
    s.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_calls_in_flight() {
    let s = Server::start(Limits::default(), TestNfs::new(false)).await;
    let addr = s.addr;
    let mut c = s.connect().await;
    send(&mut c, &call(7, NFS, 3, P_GATED, &[])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Server { nfs, stop, task, .. } = s;
    stop.unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // No longer accepting...
    assert!(
        TcpStream::connect(addr).await.is_err() || {
            let mut n = TcpStream::connect(addr).await.unwrap();
            closed_by_server(&mut n).await
        }
    );
    assert!(!task.is_finished(), "serve waits for the call in flight");
    // ...but the call in flight completes and is answered.
    nfs.gate.notify_one();
    assert_eq!(accepted(&recv(&mut c).await), (7, 0, words(&[7])));
    timeout(T, task).await.unwrap().unwrap().unwrap();
    assert!(closed_by_server(&mut c).await);
}

#[tokio::test]
async fn shutdown_grace_is_bounded() {
    let limits = Limits {
        shutdown_grace: Duration::from_millis(200),
        ..Limits::default()
    };
    let s = Server::start(limits, TestNfs::new(false)).await;
    let mut c = s.connect().await;
    send(&mut c, &call(7, NFS, 3, P_GATED, &[])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The gate never opens: serve still returns once the grace period is over.
    s.shutdown().await;
    assert!(closed_by_server(&mut c).await);
}

#[tokio::test]
async fn idle_connections_are_closed_but_busy_ones_are_not() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = Server::start(limits, TestNfs::new(false)).await;
    let mut busy = s.connect().await;
    send(&mut busy, &call(1, NFS, 3, P_GATED, &[])).await;
    let mut idle = s.connect().await;
    send(&mut idle, &call(2, NFS, 3, P_NULL, &[])).await;
    assert_eq!(accepted(&recv(&mut idle).await).0, 2);
    assert!(closed_by_server(&mut idle).await);
    // The busy connection outlived the idle timeout with its call running.
    s.nfs.gate.notify_one();
    assert_eq!(accepted(&recv(&mut busy).await), (1, 0, words(&[1])));
    s.shutdown().await;
}

#[tokio::test]
async fn endless_junk_records_close_the_connection() {
    let s = Server::default().await;
    let mut c = s.connect().await;
    // Records too short to hold an xid get no reply; after a few the server gives up.
    let mut junk = Vec::new();
    for _ in 0..64 {
        junk.extend([0x80, 0, 0, 2, 0xde, 0xad]);
    }
    let _ = c.write_all(&junk).await;
    assert!(closed_by_server(&mut c).await);
    // Authentication errors are answers, not junk: they never close the connection.
    let mut c = s.connect().await;
    for xid in 0..40 {
        send(&mut c, &call_with_cred(xid, NFS, 3, P_NULL, 6, &[], &[])).await;
        assert_eq!(to_words(&recv(&mut c).await), vec![xid, 1, 1, 1, 1]);
    }
    null_works(&s).await;
    s.shutdown().await;
}

/// READ arguments: an 8-byte handle, offset 0, `count`.
fn read_args(count: u32) -> Vec<u8> {
    let mut a = words(&[8]);
    a.extend_from_slice(b"FILEFH01");
    a.extend(words(&[0, 0, count]));
    a
}

/// Issue 14: 16 connections that pipeline 64 READs of 1 MiB and never read the
/// replies used to pin 64 replies each in memory (1 GiB). Replies now take reply
/// memory before their call runs: the non-readers together hold at most their
/// client address's share, and a client at another address is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_hold_at_most_their_share_of_reply_memory() {
    let metrics = bucketgate::metrics::Metrics::new();
    let limits = Limits {
        reply_memory: 16 << 20,
        reply_memory_per_client: 4 << 20,
        metrics: Some(metrics.clone()),
        ..Limits::default()
    };
    let s = Server::start(limits, TestNfs::new(false)).await;
    let mut batch = Vec::new();
    for xid in 0..64u32 {
        let msg = call(xid, NFS, 3, P_BIG, &read_args(1 << 20));
        batch.extend(((msg.len() as u32) | 0x8000_0000).to_be_bytes());
        batch.extend(msg);
    }
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut c = s.connect().await;
        c.write_all(&batch).await.unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = metrics.nfs_reply_bytes.get();
    assert!(
        held <= 4 << 20,
        "{held} bytes of replies held for one client address"
    );
    let ran = s.nfs.bigs.load(Ordering::SeqCst);
    assert!(ran < 16 * 64, "{ran} of the non-readers' calls ran");
    // Another address is answered at once.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut good = timeout(T, sock.connect(s.addr)).await.unwrap().unwrap();
    for xid in 0..8 {
        send(&mut good, &call(xid, NFS, 3, P_BIG, &read_args(1 << 20))).await;
        assert_eq!(accepted(&recv(&mut good).await).2.len(), 1 << 20);
    }
    println!("non-readers: {ran} calls ran, {held} reply bytes held");
    drop(stalled);
    s.shutdown().await;
}
