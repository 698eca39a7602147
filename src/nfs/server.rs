//! The TCP server: one port answers portmap (100000 v2), MOUNT (100005 v3) and NFS
//! (100003 v3), so clients mount with `-o port=2049,mountport=2049,mountproto=tcp`
//! (Linux) or `?nfsport=2049&mountport=2049` (libnfs) and need no rpcbind.
//!
//! Per connection: one reader (this task) that cuts RPC records out of the byte
//! stream, one task per call (bounded by `max_calls_per_connection`), and one writer
//! task fed by an mpsc channel so replies, which may complete in any order, are never
//! interleaved on the wire. A client that stops reading stalls only its own writer
//! (and after `reply_write_timeout` loses its connection); the server-wide call
//! permit is released as soon as the handler returns, before the reply is queued.
//! Before a call runs it takes the memory its reply may need from the reply budget
//! (`replies`), gateway-wide and per client address, until the reply is written.
//!
//! Memory: a record's claimed length is checked against `max_record_bytes` before
//! anything is reserved, and the receive buffer grows only with bytes actually
//! received (at most doubling), so a client that claims 2 GiB, or claims 1 MiB and
//! disconnects, costs nothing of the claimed size.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::mount::{self, MountTable};
use super::replies::{self, Held, ReplyBudget};
use super::rpc::{self, CallError, CallHeader};
use super::{CallContext, Exports, Nfs3Program, ProcReply, portmap};
use crate::config::NfsConfig;
use crate::conns::Registry;

/// NFS procedures that must not run twice when a client retransmits (RFC 1813 §4.6
/// lists these as non-idempotent): SETATTR, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE,
/// RMDIR, RENAME, LINK.
pub const NON_IDEMPOTENT_PROCS: [u32; 9] = [2, 8, 9, 10, 11, 12, 13, 14, 15];

/// How much the server accepts and keeps. See `Default` for the chosen values.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once. At the limit the connection idle the longest is
    /// closed for a new one; when none is idle the new one is closed.
    pub max_connections: usize,
    /// Connections one client address holds at once, with the same rule.
    pub max_connections_per_client: usize,
    /// Calls running at once on one connection; the reader stops reading beyond this,
    /// so TCP flow control pushes back on the client.
    pub max_calls_per_connection: usize,
    /// NFS handlers running at once across all connections.
    pub max_calls_total: usize,
    /// Largest RPC record (all fragments, including their 4-byte headers). A larger
    /// claim closes the connection. Must exceed the largest WRITE advertised in FSINFO
    /// (`wtmax`) plus headers.
    pub max_record_bytes: usize,
    /// How long a non-idempotent call's reply is kept for retransmissions.
    pub reply_cache_ttl: Duration,
    /// Replies kept at most in the reply cache.
    pub reply_cache_entries: u64,
    /// A reply that cannot be written within this time closes the connection.
    pub reply_write_timeout: Duration,
    /// Memory for replies not yet written, across all connections, and what one
    /// client address may hold of it (see `replies`).
    pub reply_memory: u64,
    pub reply_memory_per_client: u64,
    /// After shutdown is signalled, how long calls in flight get to finish.
    pub shutdown_grace: Duration,
    /// A connection with no call running and nothing received for this long is
    /// closed (clients reconnect transparently; Linux knfsd does the same after ~6
    /// minutes). Frees the slots of clients that vanished without a FIN.
    pub idle_timeout: Duration,
    /// Where the open-connection gauge and the refused-connection counter go
    /// (`bucketgate_nfs_connections`, `bucketgate_nfs_connections_rejected_total`).
    pub metrics: Option<crate::metrics::Metrics>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_client: 64,
            max_calls_per_connection: 64,
            max_calls_total: 512,
            // 1 MiB WRITE data + 64 KiB for RPC/NFS headers and fragment marks.
            max_record_bytes: (1 << 20) + (64 << 10),
            // Linux retransmits after timeo=600 (60 s) by default, up to retrans=2.
            reply_cache_ttl: Duration::from_secs(120),
            reply_cache_entries: 16 * 1024,
            reply_write_timeout: Duration::from_secs(120),
            reply_memory: 256 << 20,
            reply_memory_per_client: 32 << 20,
            shutdown_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(360),
            metrics: None,
        }
    }
}

impl Limits {
    /// Limits from the `[nfs]` config section; the rest keep their defaults.
    pub fn from_config(cfg: &NfsConfig) -> Self {
        Limits {
            max_connections: cfg.max_connections.max(1),
            max_connections_per_client: cfg.max_connections_per_client.max(1),
            max_calls_per_connection: cfg.max_calls_per_connection.max(1),
            reply_memory: cfg.reply_memory.0,
            reply_memory_per_client: cfg.reply_memory_per_client.0,
            ..Limits::default()
        }
    }
}

/// Serves NFS, MOUNT and portmap on `listener` until `shutdown` completes; then stops
/// accepting, lets calls in flight finish for up to `limits.shutdown_grace`, and
/// returns. `shutdown` can be any future: `token.cancelled()`, a `watch` receiver's
/// `changed()`, `tokio::signal::ctrl_c()` mapped to `()`.
pub async fn serve<P: Nfs3Program, E: Exports>(
    listener: TcpListener,
    nfs: Arc<P>,
    exports: Arc<E>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let shared = Arc::new(Shared {
        nfs,
        exports,
        mounts: MountTable::new(),
        conns: Arc::new(Registry::default()),
        port: local.port(),
        calls: Semaphore::new(limits.max_calls_total.max(1)),
        drc: ReplyCache::new(limits.reply_cache_entries, limits.reply_cache_ttl),
        replies: ReplyBudget::new(
            limits.reply_memory,
            limits.reply_memory_per_client,
            limits.metrics.as_ref().map(|m| m.nfs_reply_bytes.clone()),
        ),
        limits,
    });
    let conn_slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    info!(%local, "NFS/MOUNT/portmap listening");

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => admit(stream, peer, &shared, &conn_slots, &stop_rx, &mut conns),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }

    drop(listener);
    let _ = stop_tx.send(true);
    info!(
        connections = conns.len(),
        "NFS server shutting down, letting calls in flight finish"
    );
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.limits.shutdown_grace, drain)
        .await
        .is_err()
    {
        warn!(
            connections = conns.len(),
            "shutdown grace period over, aborting remaining calls"
        );
        conns.shutdown().await;
    }
    info!("NFS server stopped");
    Ok(())
}

/// How long a newcomer waits for the slot of the idle connection closed for it.
const SHED_WAIT: Duration = Duration::from_secs(2);

/// Starts serving an accepted connection, or closes it: at once for a host that no
/// share allows; at a limit, unless a connection idle the longest can be closed for it.
fn admit<P: Nfs3Program, E: Exports>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared<P, E>>,
    slots: &Arc<Semaphore>,
    stop: &watch::Receiver<bool>,
    conns: &mut JoinSet<()>,
) {
    // An IPv4 client of a dual-stack `[::]` listener shows up as ::ffff:a.b.c.d;
    // allowed-client lists and the reply cache want a.b.c.d.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let refuse = |reason: &str| {
        if let Some(m) = &shared.limits.metrics {
            m.nfs_connections_rejected_total
                .with_label_values(&[reason])
                .inc();
        }
    };
    if !shared.exports.allows(peer.ip()) {
        // Not even a slot: a host no share allows could otherwise hold them all.
        debug!(%peer, "connection from a host no share allows, closed");
        refuse("not_allowed");
        return;
    }
    let limit = shared.limits.max_connections_per_client;
    if shared.conns.count(peer.ip()) >= limit && !shared.conns.shed_oldest_idle(Some(peer.ip())) {
        warn!(%peer, limit, "client connection limit reached, closing new connection");
        refuse("client_limit");
        return;
    }
    let slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) if shared.conns.shed_oldest_idle(None) => None,
        Err(_) => {
            refuse("limit");
            warn!(
                %peer,
                max = shared.limits.max_connections,
                "connection limit reached and no connection idle, closing new connection"
            );
            return;
        }
    };
    let open = OpenConnection::new(shared.limits.metrics.clone());
    let (shared, slots, stop) = (shared.clone(), slots.clone(), stop.clone());
    conns.spawn(
        async move {
            // Dropped with the task, also when shutdown aborts it.
            let _open = open;
            let slot = match slot {
                Some(s) => s,
                // The idle connection closed for this one gives its slot up shortly.
                None => match tokio::time::timeout(SHED_WAIT, slots.acquire_owned()).await {
                    Ok(Ok(s)) => {
                        debug!("took the slot of an idle connection");
                        s
                    }
                    _ => {
                        if let Some(m) = &shared.limits.metrics {
                            m.nfs_connections_rejected_total
                                .with_label_values(&["limit"])
                                .inc();
                        }
                        return;
                    }
                },
            };
            connection(stream, peer, shared, stop, slot).await
        }
        .instrument(info_span!("nfs_conn", %peer)),
    );
}

/// Counts one open connection in `bucketgate_nfs_connections` while it lives.
struct OpenConnection(Option<crate::metrics::Metrics>);

impl OpenConnection {
    fn new(metrics: Option<crate::metrics::Metrics>) -> Self {
        if let Some(m) = &metrics {
            m.nfs_connections.inc();
        }
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.nfs_connections.dec();
        }
    }
}

struct Shared<P, E> {
    nfs: Arc<P>,
    exports: Arc<E>,
    mounts: MountTable,
    conns: Arc<Registry>,
    port: u16,
    calls: Semaphore,
    drc: ReplyCache,
    replies: ReplyBudget,
    limits: Limits,
}

/// One reply as it goes on the wire: record mark + RPC header, the results, then READ
/// data. Kept in parts so the data is written with writev, never copied into a header.
struct Outgoing {
    head: Bytes,
    body: Bytes,
    data: Bytes,
}

impl Outgoing {
    fn new(rpc_header: Vec<u8>, body: Vec<u8>) -> Self {
        Self::with_data(rpc_header, body, Bytes::new())
    }

    fn with_data(rpc_header: Vec<u8>, body: Vec<u8>, data: Bytes) -> Self {
        let mut head = Vec::with_capacity(4 + rpc_header.len());
        let len = rpc_header.len() + body.len() + data.len();
        head.extend_from_slice(&rpc::last_fragment_header(len));
        head.extend_from_slice(&rpc_header);
        Outgoing {
            head: head.into(),
            body: body.into(),
            data,
        }
    }

    fn whole(bytes: Bytes) -> Self {
        Outgoing {
            head: bytes,
            body: Bytes::new(),
            data: Bytes::new(),
        }
    }

    fn to_bytes(&self) -> Bytes {
        if self.body.is_empty() && self.data.is_empty() {
            return self.head.clone();
        }
        [&self.head[..], &self.body, &self.data].concat().into()
    }
}

/// The first bytes read into an empty buffer and the growth step: growth beyond this
/// is bounded by what the client has actually sent.
const READ_CHUNK: usize = 64 << 10;
/// Malformed records (no usable header) tolerated on one connection before it is
/// closed: a confused or hostile peer should not get a log line per record forever.
const MAX_MALFORMED_RECORDS: usize = 16;
/// With less spare room than this (and short of the bytes needed), grow before reading.
const MIN_READ: usize = 4 << 10;

async fn connection<P: Nfs3Program, E: Exports>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<P, E>>,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    debug!("connection accepted");
    let reg = shared.conns.register(peer.ip());
    // Replies are single small writes answered by the client at once: Nagle only adds latency.
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let per_conn = shared.limits.max_calls_per_connection;
    // Never full: each queued reply holds one of the `per_conn` call permits.
    let (tx, rx) = mpsc::channel::<Queued>(per_conn);
    let mut tasks = JoinSet::new();
    tasks.spawn(writer(wr, rx, shared.limits.reply_write_timeout).in_current_span());
    let permits = Arc::new(Semaphore::new(per_conn));
    // Told when the connection's last call has been answered. The reader is woken
    // for that alone, not as each call ends: a wake-up per call put the reader ahead
    // of the writer with the reply on the worker's queue.
    let quiet = Arc::new(Notify::new());
    let mut inbuf = BytesMut::new();
    let mut decoder = RecordDecoder::new(shared.limits.max_record_bytes);
    let idle = shared.limits.idle_timeout;
    let mut malformed = 0usize;

    'conn: loop {
        // Finished calls, reaped without waiting.
        while tasks.try_join_next().is_some() {}
        let record = match decoder.decode(&mut inbuf) {
            Err(claimed) => {
                warn!(
                    claimed,
                    max = shared.limits.max_record_bytes,
                    "RPC record over the size limit, closing connection"
                );
                break;
            }
            Ok(Decoded::Record(r)) => {
                reg.set_idle(false);
                r
            }
            Ok(Decoded::NeedMore(need)) => {
                // Every call answered (each holds a permit until its reply is
                // written), waiting for the client.
                let answered = permits.available_permits() == per_conn;
                reg.set_idle(answered && inbuf.is_empty());
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = reg.close.cancelled() => {
                        debug!("idle connection closed for a new one");
                        break;
                    }
                    _ = tx.closed() => break,
                    _ = quiet.notified(), if !answered => continue,
                    _ = tokio::time::sleep(idle), if answered => {
                        debug!(?idle, "idle connection closed");
                        break;
                    }
                    read = fill(&mut rd, &mut inbuf, need) => match read {
                        Ok(0) => {
                            if !inbuf.is_empty() {
                                debug!(buffered = inbuf.len(), "client disconnected mid-record");
                            }
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            debug!(error = %e, "read failed");
                            break;
                        }
                    },
                }
            }
        };
        // Headers are parsed here, not in the call task, so a connection sending
        // junk is noticed (and closed) by its reader.
        let parsed = rpc::parse_call(record);
        if let Err(e) = &parsed {
            warn!(error = ?e, "bad RPC call");
            if matches!(e, CallError::Unanswerable(_) | CallError::Garbage { .. }) {
                malformed += 1;
                if malformed > MAX_MALFORMED_RECORDS {
                    warn!(malformed, "too many malformed RPC records, closing connection");
                    break;
                }
            }
            if e.reply().is_none() {
                continue;
            }
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = stop.wait_for(|s| *s) => break 'conn,
            _ = tx.closed() => break 'conn,
        };
        let need = match &parsed {
            Ok((h, args)) if h.prog == nfs3_types::nfs3::PROGRAM => {
                replies::reply_estimate(h.proc, args, shared.limits.max_record_bytes as u32)
            }
            _ => replies::SMALL_REPLY,
        };
        let held = tokio::select! {
            h = shared.replies.acquire(peer.ip(), need) => h,
            _ = stop.wait_for(|s| *s) => break 'conn,
            _ = tx.closed() => break 'conn,
        };
        let hold = Hold {
            permit: Some(permit),
            _held: held,
            quiet: quiet.clone(),
            per_conn,
        };
        tasks.spawn(handle_call(shared.clone(), parsed, peer, tx.clone(), hold).in_current_span());
    }

    // Stop reading; calls in flight finish and their replies are written, then the
    // writer sees every sender gone and closes the socket.
    drop(tx);
    drop(rd);
    while tasks.join_next().await.is_some() {}
    shared.replies.release_client(peer.ip());
    debug!("connection closed");
}

/// Reads more bytes into `inbuf`. `need` is how many more bytes complete the current
/// fragment (or its header).
async fn fill(rd: &mut OwnedReadHalf, inbuf: &mut BytesMut, need: usize) -> std::io::Result<usize> {
    if let Some(additional) = grow_by(inbuf.len(), inbuf.capacity() - inbuf.len(), need) {
        inbuf.reserve(additional);
    }
    rd.read_buf(inbuf).await
}

/// How much to reserve before the next read, if anything.
///
/// Memory follows bytes received, never the client's claim: a client claiming 1 MiB
/// and sending 10 bytes holds [`READ_CHUNK`]; beyond that the spare room is at most
/// four times what has arrived. Within that bound we reserve exactly what completes
/// the fragment, so a record never needs a reallocation for its last few bytes. A
/// 1 MiB WRITE arriving into an empty buffer is reallocated twice (64 KiB -> 320 KiB
/// -> 1 MiB), copying about 0.4x its payload; WRITEs up to ~64 KiB not at all.
fn grow_by(len: usize, spare: usize, need: usize) -> Option<usize> {
    // Read into the room there is until it is nearly used up: growing early would
    // reallocate more often.
    if spare >= need || spare >= MIN_READ {
        return None;
    }
    let target = need.max(READ_CHUNK).min(READ_CHUNK.max(len.saturating_mul(4)));
    Some(target)
}

/// A call's hold on the connection's call permits and on the reply budget, kept
/// until its reply is written: a call counts against `max_calls_per_connection` and
/// its reply's bytes against the budget until then, so a client that does not read
/// its replies stops being read from, and what waits in memory for it is bounded.
/// The last to go tells the reader, whose idle state and timeout count only while
/// no call is unanswered.
struct Hold {
    permit: Option<OwnedSemaphorePermit>,
    _held: Held,
    quiet: Arc<Notify>,
    per_conn: usize,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        let permits = permit.semaphore().clone();
        drop(permit);
        if permits.available_permits() == self.per_conn {
            self.quiet.notify_one();
        }
    }
}

type Queued = (Outgoing, Hold);

async fn writer(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Queued>, timeout: Duration) {
    while let Some((out, _hold)) = rx.recv().await {
        let mut buf = out.head.chain(out.body).chain(out.data);
        match tokio::time::timeout(timeout, wr.write_all_buf(&mut buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "write failed");
                return;
            }
            Err(_) => {
                warn!(?timeout, "client is not reading replies, closing connection");
                return;
            }
        }
    }
    let _ = wr.shutdown().await;
}

enum Decoded {
    Record(Bytes),
    /// At least this many more bytes are needed.
    NeedMore(usize),
}

/// Cuts RPC records (RFC 5531 §11 record marking) out of the receive buffer.
/// A single-fragment record (what Linux and libnfs send) becomes a zero-copy `Bytes`;
/// a multi-fragment one is joined with one copy.
struct RecordDecoder {
    max: usize,
    /// Bytes at the front of the buffer that form complete, non-last fragments of
    /// the current record (headers included).
    scanned: usize,
    /// Data bytes in those fragments.
    data: usize,
    fragments: usize,
}

impl RecordDecoder {
    fn new(max: usize) -> Self {
        RecordDecoder {
            max,
            scanned: 0,
            data: 0,
            fragments: 0,
        }
    }

    /// `Err(claimed)` when the record would exceed the limit (counting fragment
    /// headers, so a stream of empty fragments is bounded too).
    fn decode(&mut self, inbuf: &mut BytesMut) -> Result<Decoded, usize> {
        loop {
            if inbuf.len() < self.scanned + 4 {
                return Ok(Decoded::NeedMore(self.scanned + 4 - inbuf.len()));
            }
            let h = &inbuf[self.scanned..self.scanned + 4];
            let header = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            let last = header & 0x8000_0000 != 0;
            let len = (header & 0x7FFF_FFFF) as usize;
            let end = self.scanned + 4 + len;
            if end > self.max {
                return Err(self.data + len);
            }
            if inbuf.len() < end {
                return Ok(Decoded::NeedMore(end - inbuf.len()));
            }
            self.scanned = end;
            self.data += len;
            self.fragments += 1;
            if !last {
                continue;
            }
            let record = if self.fragments == 1 {
                inbuf.advance(4);
                inbuf.split_to(len).freeze()
            } else {
                let mut raw = inbuf.split_to(self.scanned);
                let mut joined = BytesMut::with_capacity(self.data);
                while !raw.is_empty() {
                    let n = (raw.get_u32() & 0x7FFF_FFFF) as usize;
                    joined.extend_from_slice(&raw[..n]);
                    raw.advance(n);
                }
                joined.freeze()
            };
            *self = RecordDecoder::new(self.max);
            return Ok(Decoded::Record(record));
        }
    }
}

async fn handle_call<P: Nfs3Program, E: Exports>(
    shared: Arc<Shared<P, E>>,
    parsed: Result<(CallHeader, Bytes), CallError>,
    peer: SocketAddr,
    tx: mpsc::Sender<Queued>,
    permit: Hold,
) {
    let (hdr, args) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            if let Some(reply) = e.reply() {
                let _ = tx.send((Outgoing::new(reply, Vec::new()), permit)).await;
            }
            return;
        }
    };
    let CallHeader {
        xid,
        prog,
        vers,
        proc,
        ..
    } = hdr;
    debug!(xid, prog, vers, proc, "call");
    let out = match (prog, vers) {
        (portmap::PROGRAM, portmap::VERSION) => {
            Outgoing::from_proc(xid, portmap::call(proc, args, shared.port))
        }
        (mount::PROGRAM, mount::VERSION) => Outgoing::from_proc(
            xid,
            mount::call(&*shared.exports, &shared.mounts, peer.ip(), proc, args),
        ),
        (nfs3_types::nfs3::PROGRAM, nfs3_types::nfs3::VERSION) => {
            match nfs_call(&shared, hdr, args, peer).await {
                Some(out) => out,
                None => return,
            }
        }
        (portmap::PROGRAM, _) => Outgoing::new(
            rpc::prog_mismatch(xid, portmap::VERSION, portmap::VERSION),
            Vec::new(),
        ),
        (mount::PROGRAM, _) => Outgoing::new(
            rpc::prog_mismatch(xid, mount::VERSION, mount::VERSION),
            Vec::new(),
        ),
        (nfs3_types::nfs3::PROGRAM, _) => Outgoing::new(
            rpc::prog_mismatch(xid, nfs3_types::nfs3::VERSION, nfs3_types::nfs3::VERSION),
            Vec::new(),
        ),
        _ => {
            debug!(xid, prog, "program unavailable");
            Outgoing::new(rpc::prog_unavail(xid), Vec::new())
        }
    };
    // Fails only when the writer is gone (connection closing): nothing to answer to.
    let _ = tx.send((out, permit)).await;
}

impl Outgoing {
    fn from_proc(xid: u32, r: ProcReply) -> Self {
        let (head, body, data) = rpc::proc_reply(xid, r);
        Outgoing::with_data(head, body, data)
    }
}

/// Runs an NFS procedure behind the reply cache. `None`: send nothing (a retransmission
/// of a call still running; its first reply answers both).
async fn nfs_call<P: Nfs3Program, E: Exports>(
    shared: &Shared<P, E>,
    hdr: CallHeader,
    args: Bytes,
    peer: SocketAddr,
) -> Option<Outgoing> {
    let CallHeader {
        xid,
        prog,
        vers,
        proc,
        auth,
    } = hdr;
    let mut guard = None;
    if NON_IDEMPOTENT_PROCS.contains(&proc) {
        let key = DrcKey {
            client: peer.ip(),
            xid,
            prog,
            vers,
            proc,
        };
        match shared.drc.begin(key, &args) {
            Begin::Run(g) => guard = Some(g),
            Begin::InProgress => {
                debug!(xid, proc, "retransmission of a call still running, dropped");
                return None;
            }
            Begin::Replay(bytes) => {
                debug!(xid, proc, "retransmission answered from the reply cache");
                return Some(Outgoing::whole(bytes));
            }
        }
    }
    let ctx = CallContext {
        xid,
        client: peer,
        auth,
    };
    let reply = {
        let _running = shared.calls.acquire().await.expect("semaphore never closed");
        CatchUnwind(Box::pin(shared.nfs.call(ctx, proc, args))).await
    };
    let reply = match reply {
        Ok(r) => r,
        Err(()) => {
            // Not cached (the guard drops): a retransmission gets a fresh try.
            warn!(xid, proc, "NFS handler panicked, answering SYSTEM_ERR");
            return Some(Outgoing::new(rpc::system_err(xid), Vec::new()));
        }
    };
    let out = Outgoing::from_proc(xid, reply);
    if let Some(g) = guard {
        g.complete(out.to_bytes());
    }
    Some(out)
}

/// Turns a panic inside a handler into an error for this call only (the task would
/// otherwise die without a reply and the client would retransmit forever).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

// ---- duplicate request cache ----------------------------------------------------------

/// Keyed by client IP, not port: clients retransmit over a new connection from a new
/// port after a reconnect, which is exactly when the cache matters.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct DrcKey {
    client: IpAddr,
    xid: u32,
    prog: u32,
    vers: u32,
    proc: u32,
}

#[derive(Clone, Debug)]
enum DrcState {
    InProgress { sum: u64 },
    Done { sum: u64, reply: Bytes },
}

enum Begin<'a> {
    Run(DrcGuard<'a>),
    InProgress,
    Replay(Bytes),
}

struct ReplyCache {
    cache: moka::sync::Cache<DrcKey, DrcState>,
}

impl ReplyCache {
    fn new(entries: u64, ttl: Duration) -> Self {
        ReplyCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// A checksum of the arguments guards against xid reuse (a rebooted client
    /// starting its xids again) being mistaken for a retransmission.
    fn checksum(args: &[u8]) -> u64 {
        let mut h = DefaultHasher::new();
        args.len().hash(&mut h);
        args[..args.len().min(512)].hash(&mut h);
        h.finish()
    }

    fn begin(&self, key: DrcKey, args: &[u8]) -> Begin<'_> {
        let sum = Self::checksum(args);
        let entry = self
            .cache
            .entry(key.clone())
            .or_insert_with(|| DrcState::InProgress { sum });
        if !entry.is_fresh() {
            match entry.into_value() {
                DrcState::InProgress { sum: s } if s == sum => return Begin::InProgress,
                DrcState::Done { sum: s, reply } if s == sum => return Begin::Replay(reply),
                // Same xid, different call: run it and let it take the slot.
                _ => self.cache.insert(key.clone(), DrcState::InProgress { sum }),
            }
        }
        Begin::Run(DrcGuard {
            drc: self,
            key,
            sum,
            done: false,
        })
    }
}

/// Marks a call in progress; dropped without `complete` (handler panicked, task
/// aborted at shutdown) it forgets the call so a retransmission runs it again.
struct DrcGuard<'a> {
    drc: &'a ReplyCache,
    key: DrcKey,
    sum: u64,
    done: bool,
}

impl DrcGuard<'_> {
    fn complete(mut self, reply: Bytes) {
        self.done = true;
        self.drc
            .cache
            .insert(self.key.clone(), DrcState::Done { sum: self.sum, reply });
    }
}

impl Drop for DrcGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.drc.cache.invalidate(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(last: bool, data: &[u8]) -> Vec<u8> {
        let mut v = ((data.len() as u32) | if last { 0x8000_0000 } else { 0 })
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decoder_single_fragment_is_zero_copy() {
        let mut d = RecordDecoder::new(1024);
        let mut buf = BytesMut::from(&frag(true, b"abcd")[..]);
        buf.extend_from_slice(&frag(true, b"ef")[..2]);
        let base = buf.as_ptr();
        let Ok(Decoded::Record(r)) = d.decode(&mut buf) else {
            panic!("expected a record")
        };
        assert_eq!(&r[..], b"abcd");
        assert_eq!(r.as_ptr(), base.wrapping_add(4));
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::NeedMore(2))));
    }

    #[test]
    fn decoder_joins_fragments_and_enforces_limit() {
        let mut d = RecordDecoder::new(1024);
        let mut raw = frag(false, b"ab");
        raw.extend(frag(false, b""));
        raw.extend(frag(true, b"cdef"));
        let mut buf = BytesMut::new();
        // Byte at a time: partial headers and bodies everywhere.
        for (i, b) in raw.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            match d.decode(&mut buf) {
                Ok(Decoded::Record(r)) => {
                    assert_eq!(i, raw.len() - 1);
                    assert_eq!(&r[..], b"abcdef");
                }
                Ok(Decoded::NeedMore(n)) => assert!(n >= 1 && i < raw.len() - 1),
                Err(_) => panic!("within limit"),
            }
        }
        assert!(buf.is_empty());
        let mut d = RecordDecoder::new(1024);
        let mut buf = BytesMut::from(&0xFFFF_FFFFu32.to_be_bytes()[..]);
        assert_eq!(d.decode(&mut buf).err(), Some(0x7FFF_FFFF));
        assert!(buf.capacity() < 64, "nothing reserved for the claim");
        // Endless empty fragments are bounded by counting their headers.
        let mut d = RecordDecoder::new(64);
        let mut buf = BytesMut::new();
        for _ in 0..17 {
            buf.extend_from_slice(&frag(false, b""));
        }
        assert!(d.decode(&mut buf).is_err());
    }

    /// Models `fill`: BytesMut/Vec growth to max(2 x capacity, len + additional),
    /// reads of at most `chunk` bytes. Returns (peak capacity, bytes copied by reallocations).
    fn simulate(claim: usize, arrive: usize, chunk: usize) -> (usize, usize, Vec<(usize, usize)>) {
        let (mut len, mut cap, mut copied, mut trace) = (0usize, 0usize, 0usize, Vec::new());
        while len < arrive {
            if let Some(extra) = grow_by(len, cap - len, claim - len)
                && cap - len < extra
            {
                copied += len;
                cap = (2 * cap).max(len + extra);
            }
            len += (cap - len).min(chunk).min(arrive - len);
            trace.push((len, cap));
        }
        (cap, copied, trace)
    }

    #[test]
    fn receive_buffer_grows_with_bytes_received_not_claims() {
        // A 1 MiB claim with nothing or little received reserves one read chunk.
        assert_eq!(grow_by(0, 0, 1 << 20), Some(READ_CHUNK));
        assert_eq!(grow_by(10, 0, 1 << 20), Some(READ_CHUNK));
        // Room for what is needed: no growth.
        assert_eq!(grow_by(100, 4096, 4), None);
        // Growth is at most 4x what arrived, and exactly what is needed when allowed.
        assert_eq!(grow_by(256 << 10, 0, 2 << 20), Some(1 << 20));
        assert_eq!(grow_by(256 << 10, 0, 300 << 10), Some(300 << 10));
        // A 2 GiB claim trickling in: capacity stays proportional to bytes received.
        let (_, _, trace) = simulate(1 << 31, 8 << 20, 1000);
        for (len, cap) in trace {
            assert!(
                cap <= (10 * len).max(2 * READ_CHUNK),
                "cap {cap} for {len} received"
            );
        }
    }

    #[test]
    fn write_sized_records_are_rarely_copied() {
        // 1 MiB of data plus ~200 bytes of RPC/NFS headers, arriving 64 KiB at a time.
        let rec = (1 << 20) + 200;
        let (cap, copied, _) = simulate(rec, rec, 64 << 10);
        assert!(copied * 2 < rec, "{copied} bytes copied for a {rec} byte record");
        assert!(cap < rec + READ_CHUNK, "no tail reallocation: cap {cap}");
        // A 32 KiB WRITE fits the first read chunk: never copied.
        assert_eq!(simulate(32 << 10, 32 << 10, 64 << 10).1, 0);
    }

    #[test]
    fn drc_states() {
        let drc = ReplyCache::new(100, Duration::from_secs(60));
        let key = DrcKey {
            client: "10.0.0.1".parse().unwrap(),
            xid: 1,
            prog: 100003,
            vers: 3,
            proc: 8,
        };
        let Begin::Run(g) = drc.begin(key.clone(), b"args") else {
            panic!("first call runs")
        };
        assert!(matches!(drc.begin(key.clone(), b"args"), Begin::InProgress));
        g.complete(Bytes::from_static(b"reply"));
        assert!(matches!(drc.begin(key.clone(), b"args"), Begin::Replay(r) if &r[..] == b"reply"));
        // Same xid, different arguments: a new call.
        let Begin::Run(g) = drc.begin(key.clone(), b"other") else {
            panic!("xid reuse runs")
        };
        drop(g);
        // Abandoned: the next attempt runs.
        assert!(matches!(drc.begin(key, b"other"), Begin::Run(_)));
    }
}
