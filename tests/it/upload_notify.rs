//! Upload notifications: a JSON-lines upload log and a webhook get one event per
//! object that reached the store, after the file has settled; a file uploaded twice
//! within the settling time gives one event, for its last version; a webhook that
//! fails is retried; uploads never wait for either. Store: s3s-fs on loopback;
//! webhook: a plain HTTP listener on loopback.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bucketgate::config::HumanDuration;
use common::gateway::{flush, metric_sum, share_with, start};
use common::nfs::*;
use common::s3server::S3TestServer;
use nfs3_types::nfs3::stable_how;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A webhook receiver: answers 500 to the first `fail_first` requests, then 200;
/// keeps the bodies it accepted.
async fn receiver(fail_first: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    tokio::spawn(async move {
        let mut seen = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then as many body bytes as content-length says.
            let body = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            seen += 1;
            let status = if seen <= fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            if seen > fail_first {
                kept.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
            }
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                )
                .await;
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_notified_once_settled_to_the_log_and_the_webhook() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (hook, got) = receiver(1).await;
    let log = tmp.path().join("uploads.jsonl");
    let mut cfg = share_with(&common::gateway::s3_config(tmp.path(), &srv, "pre/"), |s| {
        s.upload_log = Some(log.clone());
        s.upload_webhook = Some(format!("http://{hook}/uploaded"));
        s.upload_settle = HumanDuration(Duration::from_millis(1500));
    });
    cfg.cache.upload_delay = HumanDuration(Duration::from_secs(3600));
    let gw = start(cfg, Some((srv.access_key.clone(), srv.secret_key.clone()))).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let a = put_file(&mut c, &root, "a.txt", b"first").await;
    flush(&gw).await;
    // Uploaded again within the settling time: one event, for this version.
    write_at(&mut c, &a, 0, b"second, longer", stable_how::FILE_SYNC)
        .await
        .unwrap();
    put_file(&mut c, &root, "b.txt", b"bee").await;
    flush(&gw).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= 2 && got.lock().unwrap().len() >= 2 {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log {lines:?}, webhook {:?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing more comes
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let mut by_key: Vec<serde_json::Value> = lines.clone();
    by_key.sort_by_key(|v| v["key"].as_str().unwrap().to_owned());
    assert_eq!(by_key[0]["event"], "uploaded");
    assert_eq!(by_key[0]["share"], "data");
    assert_eq!(by_key[0]["key"], "pre/a.txt");
    assert_eq!(by_key[0]["size"], 14);
    assert_eq!(by_key[0]["etag"], srv.etag("pre/a.txt").await);
    assert_eq!(by_key[1]["key"], "pre/b.txt");
    assert!(by_key[1]["time"].as_str().unwrap().ends_with('Z'));
    let mut hooked = got.lock().unwrap().clone();
    hooked.sort_by_key(|v| v["key"].as_str().unwrap().to_owned());
    assert_eq!(
        hooked, by_key,
        "the webhook got the same events, the first after a retry"
    );
    let m = gw.gateway.metrics.render();
    assert_eq!(
        metric_sum(&m, "bucketgate_upload_notifications_total", "result=\"sent\""),
        4.0
    );
    assert_eq!(
        metric_sum(&m, "bucketgate_upload_notifications_total", "result=\"dropped\""),
        0.0
    );
    gw.shutdown().await;
}

/// A webhook that nobody answers holds no upload back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_does_not_hold_uploads_back() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let closed = common::child::free_port();
    let cfg = share_with(&common::gateway::s3_config(tmp.path(), &srv, ""), |s| {
        s.upload_webhook = Some(format!("http://{closed}/"));
        s.upload_settle = HumanDuration(Duration::ZERO);
    });
    let gw = start(cfg, Some((srv.access_key.clone(), srv.secret_key.clone()))).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    for i in 0..20 {
        put_file(&mut c, &root, &format!("f{i}"), b"x").await;
    }
    common::gateway::flush_within(&gw, Duration::from_secs(20))
        .await
        .unwrap();
    gw.shutdown().await;
}
