//! Operations against a REAL running gateway (in-process `Gateway` on loopback, or the
//! `bucketgate` binary): the audit log as an NFS client drives it, the CLI's
//! status/flush/refresh, /readyz through a store outage, a live /metrics scrape that
//! passes `promtool check metrics` and shows the traffic, and JSON logs from the binary.

use crate::common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bucketgate::admin::AdminClient;
use bucketgate::metrics::Metrics;
use common::faulty::Faulty;
use common::gateway::{audit_lines, config, flush, share_with, start, start_with_store};
use common::nfs::*;
use common::s3server::S3TestServer;
use nfs3_types::nfs3::stable_how;

const LIMIT: Duration = Duration::from_secs(120);

fn bucketgate(args: Vec<String>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bucketgate"))
        .args(&args)
        .output()
        .expect("run bucketgate")
}

/// Runs the CLI off the async workers (it makes its own runtime).
async fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let o = tokio::task::spawn_blocking(move || bucketgate(args))
        .await
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- audit log

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_records_changes_made_through_nfs() {
    tokio::time::timeout(LIMIT, audit_log_body())
        .await
        .expect("bounded");
}

async fn audit_log_body() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let log = tmp.path().join("audit-data.jsonl");
    let cfg = share_with(&config(tmp.path(), &url), |s| s.audit_log = Some(log.clone()));
    let gw = start(cfg, None).await;

    let mut c = mount_as(gw.nfs_addr, "/data", 1000, 1000).await;
    let root = c.root_nfs_fh3();
    let d = mkdir(&mut c, &root, "proj", 0o755).await;
    let f = create(&mut c, &d, "a.txt", 0o644).await;
    // Three WRITEs, one COMMIT, one more WRITE: two `write` records, not four.
    for i in 0..3u64 {
        write_at(&mut c, &f, i * 4, b"data", stable_how::UNSTABLE)
            .await
            .unwrap();
    }
    commit(&mut c, &f).await;
    write_at(&mut c, &f, 12, b"more", stable_how::UNSTABLE)
        .await
        .unwrap();
    set_mode(&mut c, &f, 0o600).await.unwrap();
    rename(&mut c, &d, "a.txt", &d, "b.txt").await.unwrap();
    symlink(&mut c, &d, "link", "b.txt").await;
    remove(&mut c, &d, "b.txt").await.unwrap();
    assert_eq!(
        remove(&mut c, &d, "missing").await,
        Err(nfs3_types::nfs3::nfsstat3::NFS3ERR_NOENT)
    );
    remove(&mut c, &d, "link").await.unwrap();
    // Reads and lookups are not changes: no records.
    let _ = lookup(&mut c, &root, "proj").await;
    let _ = getattr(&mut c, &d).await;

    // Root is squashed to 65534 on this share; the record shows who the file system saw.
    let mut r = mount_as(gw.nfs_addr, "/data", 0, 0).await;
    let rroot = r.root_nfs_fh3();
    create(&mut r, &rroot, "by-root", 0o644).await;
    let st = c
        .rmdir(&nfs3_types::nfs3::RMDIR3args {
            object: nfs3_types::nfs3::diropargs3 {
                dir: root.clone(),
                name: name("proj"),
            },
        })
        .await
        .unwrap();
    assert!(matches!(st, nfs3_types::nfs3::Nfs3Result::Ok(_)));

    let want = 12;
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let l = audit_lines(&log);
        if l.len() >= want || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let summary: Vec<String> = lines
        .iter()
        .map(|l| format!("{} {} {}", l["op"], l["path"], l["status"]))
        .collect();
    let expect = [
        ("mkdir", "/proj", "OK"),
        ("create", "/proj/a.txt", "OK"),
        ("write", "/proj/a.txt", "OK"),
        ("write", "/proj/a.txt", "OK"),
        ("setattr", "/proj/a.txt", "OK"),
        ("rename", "/proj/a.txt", "OK"),
        ("symlink", "/proj/link", "OK"),
        ("remove", "/proj/b.txt", "OK"),
        ("remove", "/proj/missing", "ENOENT"),
        ("remove", "/proj/link", "OK"),
        ("create", "/by-root", "OK"),
        ("rmdir", "/proj", "OK"),
    ];
    assert_eq!(lines.len(), expect.len(), "{summary:#?}");
    for (l, (op, path, status)) in lines.iter().zip(expect) {
        assert_eq!(
            (l["op"].as_str(), l["path"].as_str(), l["status"].as_str()),
            (Some(op), Some(path), Some(status)),
            "{summary:#?}"
        );
        assert_eq!(l["share"], "data");
        assert_eq!((&l["via"], &l["client"]), (&"nfs".into(), &"127.0.0.1".into()));
        let t = l["time"].as_str().unwrap();
        assert!(
            t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
    let by = |op: &str, path: &str| {
        lines
            .iter()
            .find(|l| l["op"] == op && l["path"] == path)
            .unwrap_or_else(|| panic!("{op} {path}"))
    };
    assert_eq!(
        (
            by("create", "/proj/a.txt")["uid"].as_u64(),
            by("create", "/proj/a.txt")["gid"].as_u64()
        ),
        (Some(1000), Some(1000))
    );
    assert_eq!(
        (
            by("create", "/by-root")["uid"].as_u64(),
            by("create", "/by-root")["gid"].as_u64()
        ),
        (Some(65534), Some(65534))
    );
    assert_eq!(by("rename", "/proj/a.txt")["new_path"], "/proj/b.txt");
    assert_eq!(by("symlink", "/proj/link")["target"], "b.txt");
    assert_eq!(by("setattr", "/proj/a.txt")["attrs"]["mode"], "0600");
    assert!(by("mkdir", "/proj").get("new_path").is_none());
    assert_eq!(gw.gateway.shares[0].share.audit.as_ref().unwrap().dropped(), 0);
    let text = gw.gateway.metrics.render();
    assert!(
        text.contains("bucketgate_audit_dropped_total{share=\"data\"} 0"),
        "{text}"
    );
    gw.shutdown().await;
}

/// `audit_reads`: one `read` record per read session of a user on a client (three
/// READs of a file make one), another for another user, and one for each refused
/// READ, with the fields of a write record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_records_each_read_session_once() {
    tokio::time::timeout(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", tmp.path().join("bucket").display());
        let log = tmp.path().join("audit-data.jsonl");
        let cfg = share_with(&config(tmp.path(), &url), |s| {
            s.audit_log = Some(log.clone());
            s.audit_reads = true;
        });
        let gw = start(cfg, None).await;
        let mut alice = mount_as(gw.nfs_addr, "/data", 1000, 1000).await;
        let root = alice.root_nfs_fh3();
        let shared = put_file(&mut alice, &root, "shared", b"for everyone").await;
        let private = put_file(&mut alice, &root, "private", b"alice only").await;
        set_mode(&mut alice, &private, 0o600).await.unwrap();
        for _ in 0..3 {
            assert_eq!(read_all(&mut alice, &shared).await, b"for everyone");
        }
        let mut bob = mount_as(gw.nfs_addr, "/data", 2000, 2000).await;
        assert_eq!(read_all(&mut bob, &shared).await, b"for everyone");
        for _ in 0..2 {
            let r = bob
                .read(&nfs3_types::nfs3::READ3args {
                    file: private.clone(),
                    offset: 0,
                    count: 100,
                })
                .await
                .unwrap();
            assert!(matches!(
                r,
                nfs3_types::nfs3::Nfs3Result::Err((nfs3_types::nfs3::nfsstat3::NFS3ERR_ACCES, _))
            ));
        }
        let want = 4;
        let deadline = Instant::now() + Duration::from_secs(10);
        let reads = loop {
            let r: Vec<_> = audit_lines(&log)
                .into_iter()
                .filter(|l| l["op"] == "read")
                .collect();
            if r.len() >= want || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let summary: Vec<String> = reads
            .iter()
            .map(|l| format!("{} {} {} {}", l["uid"], l["op"], l["path"], l["status"]))
            .collect();
        assert_eq!(
            summary,
            [
                "1000 \"read\" \"/shared\" \"OK\"",
                "2000 \"read\" \"/shared\" \"OK\"",
                "2000 \"read\" \"/private\" \"EACCES\"",
                "2000 \"read\" \"/private\" \"EACCES\"",
            ]
        );
        assert!(
            reads
                .iter()
                .all(|l| l["client"] == "127.0.0.1" && l["share"] == "data")
        );
        gw.shutdown().await;
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_is_off_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let gw = start(config(tmp.path(), &url), None).await;
    assert!(gw.gateway.shares[0].share.audit.is_none());
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    put_file(&mut c, &root, "x", b"x").await;
    let jsonl: Vec<_> = walk(tmp.path())
        .into_iter()
        .filter(|p| p.ends_with(".jsonl"))
        .collect();
    assert!(jsonl.is_empty(), "{jsonl:?}");
    gw.shutdown().await;
}

fn walk(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            out.push(path.display().to_string());
            if path.is_dir() {
                out.extend(walk(&path));
            }
        }
    }
    out
}

// ---------------------------------------------------------- CLI and /readyz

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_readyz_against_a_running_gateway_through_an_outage() {
    tokio::time::timeout(LIMIT, cli_body()).await.expect("bounded");
}

async fn cli_body() {
    let srv = S3TestServer::start().await;
    let faulty = Faulty::new(Arc::new(srv.store().await));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &format!("s3://{}/site/", srv.bucket));
    let gw = start_with_store(cfg, faulty.clone()).await;
    let admin = gw.admin_addr.to_string();
    let api = AdminClient::new(gw.admin_addr);
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();

    // Healthy: a file written and flushed with `flush --wait` is in the bucket.
    put_file(&mut c, &root, "ok.txt", &body(200_000, 1)).await;
    let (code, out, err) = cli(&["flush", "--admin", &admin, "--wait", "--timeout", "30"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("all in the store"), "{out}");
    assert_eq!(
        std::fs::read(srv.object_path("site/ok.txt")).unwrap(),
        body(200_000, 1)
    );
    let ready = api.request("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    // One file's status: clean, with the object that holds it.
    let ok = api.file_status("/data/ok.txt").await.unwrap();
    assert_eq!(
        (
            ok.kind.as_str(),
            ok.size,
            ok.state.as_str(),
            ok.object_key.as_deref()
        ),
        ("file", 200_000, "clean", Some("ok.txt")),
        "{ok:?}"
    );
    assert!(!ok.etag.as_deref().unwrap_or_default().is_empty(), "{ok:?}");
    assert_eq!(
        ok.store_holds_etag,
        Some(true),
        "checked against the bucket: {ok:?}"
    );
    let (code, out, err) = cli(&["status", "--admin", &admin, "/data/ok.txt"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("state   clean") && out.contains("object  ok.txt  ETag"),
        "{out}"
    );
    let (code, _, err) = cli(&["status", "--admin", &admin, "/data/nothing-here"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("404") && err.contains("nothing-here"), "{err}");

    // While its upload is held in flight, a file is "uploading".
    faulty.hold.store(true, Ordering::SeqCst);
    put_file(&mut c, &root, "held.txt", b"held").await;
    api.flush(&bucketgate::admin::FlushRequest::default())
        .await
        .unwrap();
    eventually("an upload in flight", || async {
        api.file_status("/data/held.txt").await.unwrap().state.as_str() == "uploading"
    })
    .await;
    faulty.hold.store(false, Ordering::SeqCst);
    faulty.gate.add_permits(1000);
    let wait = bucketgate::admin::FlushRequest {
        wait: true,
        timeout_s: Some(30.0),
        ..Default::default()
    };
    assert!(api.flush(&wait).await.unwrap().complete);

    // The store goes down: the next upload fails and is listed with its last error.
    faulty.down.store(true, Ordering::SeqCst);
    put_file(&mut c, &root, "stuck.bin", &body(50_000, 2)).await;
    eventually("a failing file", || async {
        api.status().await.unwrap().upload_queue.failing_files == 1
    })
    .await;

    let (code, out, err) = cli(&["status", "--admin", &admin]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    for want in [
        "/data",
        &format!("s3://{}/site/", srv.bucket),
        "1 failing",
        "/data/stuck.bin",
        "injected outage",
        "FAILING",
    ] {
        assert!(out.contains(want), "{want:?} missing from\n{out}");
    }
    let (code, out, _) = cli(&["status", "--admin", &admin, "--json"]).await;
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["shares"][0]["name"], "data");
    assert_eq!(v["cache"]["capacity_bytes"], 8u64 << 30);
    assert!(v["cache"]["dirty_bytes"].as_u64().unwrap() >= 50_000, "{v}");
    assert!(v["cache"]["used_bytes"].as_u64().unwrap() >= 250_000, "{v}");
    assert_eq!(v["upload_queue"]["failing_files"], 1);
    assert!(v["upload_queue"]["files"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["failing_files"][0]["path"], "/stuck.bin");
    let (code, out, err) = cli(&["status", "--admin", &admin, "/data/stuck.bin"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("object  none yet") && out.contains("injected outage"),
        "{out}"
    );
    let stuck = api.file_status("/data/stuck.bin").await.unwrap();
    assert!(
        matches!(stuck.state.as_str(), "failing" | "uploading")
            && stuck.failure.as_ref().is_some_and(|f| f.attempts >= 1),
        "{stuck:?}"
    );
    let dir = api.file_status("/data").await.unwrap();
    assert_eq!(
        (dir.kind.as_str(), dir.pending_below),
        ("directory", Some(1)),
        "{dir:?}"
    );
    assert!(v["failing_files"][0]["attempts"].as_u64().unwrap() >= 1);
    assert!(
        v["failing_files"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("injected outage"),
        "{v}"
    );

    // /readyz: 503, and the body says which check fails.
    let r = api.request("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let body_json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body_json["ready"], false);
    let check = |b: &serde_json::Value, name: &str| {
        b["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(check(&body_json, "store_reachable")["ok"], false);
    assert!(
        check(&body_json, "store_reachable")["detail"]
            .as_str()
            .unwrap()
            .contains("data")
    );
    assert_eq!(check(&body_json, "nfs_listening")["ok"], true);
    let m = api.metrics_text().await.unwrap();
    assert!(
        m.contains("bucketgate_store_reachable 0\n") && m.contains("bucketgate_upload_failing_files 1\n"),
        "{m}"
    );
    assert!(
        m.contains("bucketgate_store_errors_total{code=\"ServiceUnavailable\""),
        "{m}"
    );

    // flush --wait while down gives up at its timeout: exit 1, uploads go on.
    let (code, out, err) = cli(&["flush", "--admin", &admin, "--wait", "--timeout", "1"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("uploads continue"), "{err}");

    // Back up: flush --wait completes, the object lands, /readyz is 200 again.
    faulty.down.store(false, Ordering::SeqCst);
    let (code, out, err) = cli(&["flush", "--admin", &admin, "--wait", "--timeout", "30"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("all in the store"), "{out}");
    assert_eq!(
        std::fs::read(srv.object_path("site/stuck.bin")).unwrap(),
        body(50_000, 2)
    );
    let r = api.request("GET", "/readyz", None, None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, out, _) = cli(&["status", "--admin", &admin]).await;
    assert!(out.contains("0 failing") && !out.contains("FAILING"), "{out}");

    // refresh re-lists the share from the store; an unknown share is a 404.
    let (code, out, err) = cli(&["refresh", "--admin", &admin, "/data"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = cli(&["refresh", "--admin", &admin, "/nope"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");

    // --config finds the admin address in the gateway's configuration file.
    let conf = tmp.path().join("gw.toml");
    std::fs::write(
        &conf,
        format!("[admin]\nlisten = \"{admin}\"\n[[share]]\nname = \"data\"\nurl = \"s3://some-bucket/\"\n"),
    )
    .unwrap();
    let (code, out, err) = cli(&["status", "--config", conf.to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 failing"), "{out}");
    gw.shutdown().await;
}

// ------------------------------------------------------------- live /metrics

/// The value of one sample line `name{labels} value` (labels as rendered, sorted).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn promtool_present() -> bool {
    crate::common::have_tool(
        "promtool",
        "prometheus",
        "promtool check metrics of a live scrape",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_show_the_traffic() {
    tokio::time::timeout(LIMIT, metrics_body())
        .await
        .expect("bounded");
}

async fn metrics_body() {
    let srv = S3TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &format!("s3://{}/m/", srv.bucket));
    let gw = start_with_store(cfg, Arc::new(srv.store().await)).await;
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    let data = body(3 << 20, 7);
    let f = put_file(&mut c, &root, "three-mib.bin", &data).await;
    assert_eq!(read_all(&mut c, &f).await, data);
    flush(&gw).await;
    // A rename of an uploaded file is carried to the store (CopyObject + DeleteObject).
    rename(&mut c, &root, "three-mib.bin", &root, "moved.bin")
        .await
        .unwrap();
    flush(&gw).await;

    let text = AdminClient::new(gw.admin_addr).metrics_text().await.unwrap();

    // Every family the registry promises is in the live answer. store_errors_total
    // has an error `code` label, so it appears with the first error (as Prometheus
    // client conventions have it); the outage test above sees it. The FUSE families
    // appear with a FUSE mount (`fuse::changes_through_the_mount_are_audited`), the
    // SMB one with an open SMB session (`smb::smbclient_reads_and_writes_a_guest_share`),
    // the events and upload notification ones on shares with `events`, `upload_log`
    // or `upload_webhook` (`events::`, `upload_notify::`).
    let live: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let registered: BTreeSet<String> = Metrics::new().names().into_iter().collect();
    let missing: Vec<_> = registered
        .difference(&live)
        .filter(|n| {
            *n != "bucketgate_store_errors_total"
                && !n.starts_with("bucketgate_fuse_")
                && !n.starts_with("bucketgate_smb_")
                && !n.starts_with("bucketgate_events_")
                && !n.starts_with("bucketgate_upload_notifications_")
        })
        .collect();
    assert!(missing.is_empty(), "missing from a live scrape: {missing:?}");

    let at_least = |series: &str, min: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(v >= min, "{series} = {v}, want >= {min}");
    };
    let mib3 = (3u64 << 20) as f64;
    at_least(
        "bucketgate_nfs_calls_total{procedure=\"WRITE\",status=\"OK\"}",
        3.0,
    );
    at_least(
        "bucketgate_nfs_calls_total{procedure=\"CREATE\",status=\"OK\"}",
        1.0,
    );
    at_least(
        "bucketgate_nfs_calls_total{procedure=\"COMMIT\",status=\"OK\"}",
        1.0,
    );
    at_least(
        "bucketgate_nfs_call_duration_seconds_count{procedure=\"WRITE\",status=\"OK\"}",
        3.0,
    );
    at_least(
        "bucketgate_nfs_call_duration_seconds_sum{procedure=\"WRITE\",status=\"OK\"}",
        1e-9,
    );
    at_least("bucketgate_nfs_write_bytes_total{share=\"data\"}", mib3);
    at_least("bucketgate_nfs_read_bytes_total{share=\"data\"}", mib3);
    at_least("bucketgate_cache_hits_total{share=\"data\"}", 1.0);
    at_least("bucketgate_store_uploaded_bytes_total{share=\"data\"}", mib3);
    at_least("bucketgate_uploads_total{result=\"ok\",share=\"data\"}", 1.0);
    at_least("bucketgate_files_renamed_total{share=\"data\"}", 1.0);
    at_least(
        "bucketgate_store_request_duration_seconds_count{operation=\"PutObject\",share=\"data\"}",
        1.0,
    );
    at_least(
        "bucketgate_store_request_duration_seconds_sum{operation=\"PutObject\",share=\"data\"}",
        1e-9,
    );
    at_least(
        "bucketgate_store_request_duration_seconds_count{operation=\"CopyObject\",share=\"data\"}",
        1.0,
    );
    at_least(
        "bucketgate_store_request_duration_seconds_count{operation=\"DeleteObject\",share=\"data\"}",
        1.0,
    );
    at_least("bucketgate_cache_used_bytes", mib3);
    at_least("bucketgate_cache_capacity_bytes", (8u64 << 30) as f64);
    at_least("bucketgate_build_info{version=\"0.1.0\"}", 1.0);
    at_least("bucketgate_ready", 1.0);
    at_least("bucketgate_store_reachable", 1.0);
    at_least("bucketgate_start_time_seconds", 1.7e9);
    assert_eq!(
        sample(&text, "bucketgate_cache_dirty_bytes"),
        Some(0.0),
        "all flushed"
    );
    assert_eq!(sample(&text, "bucketgate_upload_failing_files"), Some(0.0));

    if promtool_present() {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        let msg = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "promtool check metrics:\n{msg}");
        // promtool's lint findings go to stdout with exit 0 on some versions: none allowed.
        assert!(msg.trim().is_empty(), "promtool lint findings:\n{msg}");
    }
    gw.shutdown().await;
}

// ------------------------------------------------------------------- logs

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `bucketgate serve` with `[log] json = true`, makes one NFS call, stops it
/// with SIGTERM, and returns its stderr lines.
async fn serve_and_collect(level: &str, rust_log: Option<&str>) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let (nfs, admin) = (free_port(), free_port());
    let conf = tmp.path().join("gw.toml");
    std::fs::write(
        &conf,
        format!(
            "[nfs]\nlisten = \"127.0.0.1:{nfs}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [cache]\ndir = \"{}\"\ncapacity = \"1GiB\"\n[log]\nlevel = \"{level}\"\njson = true\n\
             [[share]]\nname = \"data\"\nurl = \"file://{}\"\n",
            tmp.path().join("cache").display(),
            tmp.path().join("bucket").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bucketgate"));
    cmd.args(["serve", "--config", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    if let Some(r) = rust_log {
        cmd.env("RUST_LOG", r);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let api = AdminClient::new(admin_addr);
    eventually("the binary's admin listener", || async {
        api.healthz().await.is_ok()
    })
    .await;
    let mut c = mount(format!("127.0.0.1:{nfs}").parse().unwrap()).await;
    let root = c.root_nfs_fh3();
    getattr(&mut c, &root).await.unwrap();
    drop(c);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful stop on SIGTERM: {status:?}");
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_json_logs_with_per_call_spans() {
    tokio::time::timeout(LIMIT, async {
        let lines = serve_and_collect("info,bucketgate::nfs=debug", None).await;
        assert!(!lines.is_empty());
        let mut parsed = Vec::new();
        for l in &lines {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            parsed.push(v);
        }
        assert!(
            parsed
                .iter()
                .any(|v| v["message"] == "serving" && v["nfs"].is_string()),
            "{lines:#?}"
        );
        // The per-call debug line carries the call's span: xid, procedure, file id.
        let call = parsed
            .iter()
            .find(|v| v["message"] == "nfs call" && v["span"]["proc"] == "GETATTR")
            .unwrap_or_else(|| panic!("no GETATTR call line in {lines:#?}"));
        assert!(call["span"]["xid"].is_u64(), "{call}");
        assert_eq!(call["span"]["fileid"], 1, "the root's file id: {call}");
        assert_eq!(call["status"], "OK");
        assert!(call["elapsed_us"].is_u64(), "{call}");

        // RUST_LOG wins over [log] level: at warn, neither line appears.
        let quiet = serve_and_collect("info,bucketgate::nfs=debug", Some("warn")).await;
        assert!(
            quiet
                .iter()
                .all(|l| !l.contains("\"serving\"") && !l.contains("nfs call")),
            "{quiet:#?}"
        );
    })
    .await
    .expect("bounded");
}

// ------------------------------------------------- readiness of an idle gateway

/// With no NFS traffic at all, an outage still turns /readyz to 503 and the recovery
/// back to 200: the gateway probes an idle or failed store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_gateway_readiness_follows_the_store() {
    tokio::time::timeout(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", tmp.path().join("bucket").display());
        let inner = bucketgate::remote::open_share_store(&config(tmp.path(), &url).shares[0], None)
            .await
            .unwrap()
            .0;
        let faulty = Faulty::new(inner);
        let mut gw = bucketgate::gateway::Gateway::open(config(tmp.path(), &url), None, Some(faulty.clone()))
            .await
            .unwrap();
        gw.probe_interval = Duration::from_millis(100);
        let gw = gw.start().await.unwrap();
        let api = AdminClient::new(gw.admin_addr);
        let status = |api: AdminClient| async move { api.request("GET", "/readyz", None, None).await.unwrap().status };
        assert_eq!(status(api.clone()).await, 200);

        faulty.down.store(true, Ordering::SeqCst);
        eventually("/readyz 503 while idle", || {
            let api = api.clone();
            async move { status(api).await == 503 }
        })
        .await;
        let m = api.metrics_text().await.unwrap();
        assert!(m.contains("bucketgate_store_reachable 0\n"), "{m}");
        assert!(
            m.contains("bucketgate_store_errors_total{code=\"ServiceUnavailable\",operation=\"ListObjectsV2\",share=\"data\"}"),
            "the probe is a counted ListObjectsV2: {m}"
        );

        faulty.down.store(false, Ordering::SeqCst);
        eventually("/readyz 200 after recovery, with nothing to upload", || {
            let api = api.clone();
            async move { status(api).await == 200 }
        })
        .await;
        assert!(api.metrics_text().await.unwrap().contains("bucketgate_store_reachable 1\n"));
        gw.shutdown().await;
    })
    .await
    .expect("bounded");
}

// ------------------------------------------------------------------- docs

/// The README lists every metric the gateway registers and every shipped alert.
#[test]
fn monitoring_doc_lists_every_metric_and_alert() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("README.md")).unwrap();
    for name in Metrics::new().names() {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "README.md does not list {name}"
        );
    }
    let rules = std::fs::read_to_string(root.join("ami/prometheus/alerts.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            doc.contains(&format!("| {alert} |")),
            "README.md does not list {alert}"
        );
    }
}
