//! The optional portmapper on its own address (`[nfs] portmap_listen`, port 111 in
//! production): UDP and TCP portmap v2 pointing MOUNT and NFS at the NFS port, and
//! nothing else; bad input gets an RPC error or is dropped, never takes it down.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::gateway::{config, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const PMAP: u32 = 100_000;
const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const TCP: u32 = 6;
const UDP: u32 = 17;

/// A portmap v2 CALL with AUTH_NONE.
fn call(xid: u32, prog: u32, vers: u32, proc: u32, args: &[u32]) -> Vec<u8> {
    [xid, 0, 2, prog, vers, proc, 0, 0, 0, 0]
        .iter()
        .chain(args)
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

async fn udp_ask(addr: SocketAddr, msg: &[u8]) -> Option<Vec<u32>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(msg, addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await {
        Ok(n) => Some(words(&buf[..n.unwrap()])),
        Err(_) => None,
    }
}

async fn tcp_ask(s: &mut TcpStream, msg: &[u8]) -> Vec<u32> {
    let mut rec = (0x8000_0000u32 | msg.len() as u32).to_be_bytes().to_vec();
    rec.extend_from_slice(msg);
    s.write_all(&rec).await.unwrap();
    let mut mark = [0u8; 4];
    s.read_exact(&mut mark).await.unwrap();
    let mut body = vec![0u8; (u32::from_be_bytes(mark) & 0x7FFF_FFFF) as usize];
    s.read_exact(&mut body).await.unwrap();
    words(&body)
}

// Accepted reply: xid, REPLY(1), MSG_ACCEPTED(0), verf (0, 0), accept_stat, results.
const RESULTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_111_style_portmapper_points_at_the_nfs_port() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), &format!("file://{}", tmp.path().join("b").display()));
    cfg.nfs.portmap_listen = Some("127.0.0.1:0".parse().unwrap());
    let gw = start(cfg, None).await;
    let pm = gw.portmap_addr.expect("portmapper bound");
    let nfs_port = u32::from(gw.nfs_addr.port());
    assert_ne!(pm.port(), gw.nfs_addr.port());

    // UDP, as Windows asks: MOUNT and NFS over TCP are at the NFS port; over UDP, nowhere.
    for (xid, prog, vers, prot, want) in [
        (1, MOUNT, 3, TCP, nfs_port),
        (2, NFS, 3, TCP, nfs_port),
        (3, MOUNT, 3, UDP, 0),
        (4, NFS, 4, TCP, 0),
    ] {
        let r = udp_ask(pm, &call(xid, PMAP, 2, 3, &[prog, vers, prot, 0]))
            .await
            .expect("UDP answer");
        assert_eq!(&r[..RESULTS], &[xid, 1, 0, 0, 0, 0], "accepted, SUCCESS");
        assert_eq!(r[RESULTS], want, "GETPORT {prog} v{vers} prot {prot}");
    }
    // TCP: two calls on one connection, GETPORT then DUMP.
    let mut s = TcpStream::connect(pm).await.unwrap();
    let r = tcp_ask(&mut s, &call(7, PMAP, 2, 3, &[NFS, 3, TCP, 0])).await;
    assert_eq!(r[RESULTS], nfs_port);
    let r = tcp_ask(&mut s, &call(8, PMAP, 2, 4, &[])).await;
    let list = &r[RESULTS..];
    assert!(
        list.windows(5).any(|w| w == [1, MOUNT, 3, TCP, nfs_port]),
        "DUMP lists MOUNT: {list:?}"
    );
    // Only portmap is served there.
    let r = udp_ask(pm, &call(9, NFS, 3, 0, &[])).await.unwrap();
    assert_eq!(&r[..RESULTS], &[9, 1, 0, 0, 0, 1], "PROG_UNAVAIL");
    let r = udp_ask(pm, &call(10, PMAP, 3, 0, &[])).await.unwrap();
    assert_eq!(&r[..RESULTS], &[10, 1, 0, 0, 0, 2], "PROG_MISMATCH");
    // Garbage: a reply, a short datagram, junk: no answer, and it keeps working.
    for junk in [&[0u8, 0, 0, 1, 0, 0, 0, 1][..], &[1, 2, 3], &[0xFF; 1200]] {
        let _ = udp_ask(pm, junk).await;
    }
    // A record claiming 1 GiB closes that connection; others go on.
    let mut big = TcpStream::connect(pm).await.unwrap();
    big.write_all(&0xC000_0000u32.to_be_bytes()).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), big.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed: {closed:?}");
    let r = udp_ask(pm, &call(11, PMAP, 2, 3, &[MOUNT, 3, TCP, 0]))
        .await
        .unwrap();
    assert_eq!(r[RESULTS], nfs_port);
    gw.shutdown().await;
}

#[test]
fn portmap_listen_may_not_take_the_nfs_or_admin_port() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[nfs]\nlisten = \"0.0.0.0:2049\"\nportmap_listen = \"127.0.0.1:2049\"\n[cache]\ndir = \"{}\"\n\
         [[share]]\nname = \"d\"\nurl = \"file:///srv/b\"\n",
        tmp.path().display()
    );
    let err = bucketgate::config::Config::from_toml(&text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nfs.portmap_listen"), "{err}");
}
