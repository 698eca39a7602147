//! A portmapper on its own address (normally port 111), for clients that cannot be
//! told the NFS port: the Windows Client for NFS always asks port 111, and Linux,
//! macOS and libnfs do too when no port is given. It answers portmap v2 over UDP and
//! TCP, pointing MOUNT and NFS at the NFS port; it serves nothing else. Off unless
//! `[nfs] portmap_listen` is set (port 111 needs root or CAP_NET_BIND_SERVICE).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{portmap, rpc};

/// Portmap calls are a few dozen bytes; anything near this is not one.
const MAX_CALL: usize = 8 << 10;
const MAX_CONNECTIONS: usize = 64;
/// A TCP client that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(30);

/// The reply (without record mark) to one portmap call, or `None` when the message
/// deserves no answer (not a call at all).
pub fn answer(msg: Bytes, nfs_port: u16) -> Option<Vec<u8>> {
    let (h, args) = match rpc::parse_call(msg) {
        Ok(call) => call,
        Err(e) => return e.reply(),
    };
    Some(match (h.prog, h.vers) {
        (portmap::PROGRAM, portmap::VERSION) => {
            let (head, body, data) = rpc::proc_reply(h.xid, portmap::call(h.proc, args, nfs_port));
            [head, body, data.to_vec()].concat()
        }
        (portmap::PROGRAM, _) => rpc::prog_mismatch(h.xid, portmap::VERSION, portmap::VERSION),
        _ => rpc::prog_unavail(h.xid),
    })
}

/// Binds UDP and TCP on `addr`. Fails at startup, naming the address, when either
/// cannot be bound (port 111 taken by rpcbind, or no privilege).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let ctx = |what: &str, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("portmap_listen {addr} ({what}): {e}"))
    };
    // Port 0 (tests): TCP takes the port UDP got, which a TCP socket may hold
    // already; another port is then tried.
    let mut tries = if addr.port() == 0 { 32 } else { 1 };
    loop {
        let udp = UdpSocket::bind(addr).await.map_err(|e| ctx("udp", e))?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
            Err(e) => return Err(ctx("tcp", e)),
        }
    }
}

/// Answers until `stop`.
pub async fn serve(udp: UdpSocket, tcp: TcpListener, nfs_port: u16, stop: CancellationToken) {
    info!(addr = ?udp.local_addr().ok(), nfs_port, "portmapper listening (UDP and TCP)");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; MAX_CALL];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            got = udp.recv_from(&mut buf) => match got {
                Ok((n, peer)) => {
                    if let Some(reply) = answer(Bytes::copy_from_slice(&buf[..n]), nfs_port)
                        && let Err(e) = udp.send_to(&reply, peer).await
                    {
                        debug!(%peer, error = %e, "portmap reply not sent");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "portmap UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        conns.spawn(async move {
                            if let Err(e) = connection(stream, nfs_port).await {
                                debug!(%peer, error = %e, "portmap connection ended");
                            }
                            drop(slot);
                        });
                    }
                    Err(_) => debug!(%peer, "portmap connection refused: too many"),
                },
                Err(e) => {
                    warn!(error = %e, "portmap accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

/// Record-marked calls, one at a time; a record over [`MAX_CALL`] closes the connection.
async fn connection(mut s: TcpStream, nfs_port: u16) -> std::io::Result<()> {
    let mut record = BytesMut::new();
    loop {
        let mut mark = [0u8; 4];
        match tokio::time::timeout(IDLE, s.read_exact(&mut mark)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // idle
        }
        let word = u32::from_be_bytes(mark);
        let (last, len) = (word & 0x8000_0000 != 0, (word & 0x7FFF_FFFF) as usize);
        if record.len() + len > MAX_CALL {
            return Err(std::io::Error::other(format!("record over {MAX_CALL} bytes")));
        }
        let at = record.len();
        record.resize(at + len, 0);
        tokio::time::timeout(IDLE, s.read_exact(&mut record[at..]))
            .await
            .map_err(|_| std::io::Error::other("stalled mid-record"))??;
        if !last {
            continue;
        }
        if let Some(reply) = answer(record.split().freeze(), nfs_port) {
            let mut out = rpc::last_fragment_header(reply.len()).to_vec();
            out.extend_from_slice(&reply);
            s.write_all(&out).await?;
        }
    }
}
