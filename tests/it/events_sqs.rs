//! Two gateways on one bucket and prefix, each long-polling its own SQS queue, which
//! an SNS topic fans the bucket's S3 event notifications out to: what one writes, the
//! other shows within seconds, with no listing. All of it on moto's server (S3, SNS,
//! SQS and S3's real notification format), through the real aws-sdk-s3 and
//! aws-sdk-sqs; NFS through nfs3_client. Needs `moto_server` (pip install
//! 'moto[server]'); says SKIPPED without it.

use crate::common;

use std::time::{Duration, Instant};

use bucketgate::config::Config;
use bucketgate::gateway::Running;
use common::gateway::{config, flush, metric_sum, share_with, start};
use common::moto::{self, Moto};
use common::nfs::*;
use nfs3_types::nfs3::{nfs_fh3, nfsstat3, stable_how};

const BUCKET: &str = "shared-bucket";
/// How long a change may take to show on the other gateway before the test fails
/// (the measured figures are far below; see `benches/`).
const LIMIT: Duration = Duration::from_secs(30);

fn gateway_config(dir: &std::path::Path, moto: &Moto, queue: &str) -> Config {
    share_with(&config(dir, &format!("s3://{BUCKET}/pre/")), |s| {
        s.endpoint = Some(moto.endpoint.clone());
        s.path_style = true;
        s.region = Some("us-east-1".into());
        s.events = Some(queue.to_owned());
    })
}

async fn gateway(dir: &std::path::Path, moto: &Moto, queue: &str) -> Running {
    let creds = Some((moto::ACCESS_KEY.to_owned(), moto::SECRET_KEY.to_owned()));
    start(gateway_config(dir, moto, queue), creds).await
}

/// Polls until `check` holds, or panics with `what` after [`LIMIT`].
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut check: F) -> Duration {
    let t0 = Instant::now();
    while !check().await {
        assert!(t0.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}

async fn content(c: &mut Conn, dir: &nfs_fh3, name: &str) -> Option<Vec<u8>> {
    let fh = lookup(c, dir, name).await.ok()?;
    Some(read_all(c, &fh).await)
}

async fn sorted_names(c: &mut Conn, dir: &nfs_fh3) -> Vec<String> {
    let mut n = list_names(c, dir).await;
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_see_each_others_changes_through_s3_events() {
    if !common::moto_here("two gateways over moto's S3, SNS and SQS") {
        return;
    }
    let moto = Moto::start().await;
    let queues = moto.bucket_with_queues(BUCKET, &["gateway-a", "gateway-b"]).await;
    let (ta, tb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = gateway(ta.path(), &moto, &queues[0]).await;
    let b = gateway(tb.path(), &moto, &queues[1]).await;
    let (mut ca, mut cb) = (mount(a.nfs_addr).await, mount(b.nfs_addr).await);
    let (ra, rb) = (ca.root_nfs_fh3(), cb.root_nfs_fh3());
    assert_eq!(sorted_names(&mut cb, &rb).await, Vec::<String>::new());

    // New files, each from the moment its upload through A is done.
    let mut waits = Vec::new();
    for i in 0..50 {
        let (name, body) = (format!("f{i:02}.txt"), body(1000 + i, i as u64));
        put_file(&mut ca, &ra, &name, &body).await;
        flush(&a).await;
        let wait = until(&format!("{name} through B"), async || {
            content(&mut cb, &rb, &name).await.as_deref() == Some(&body[..])
        })
        .await;
        waits.push(wait);
    }
    waits.sort();
    eprintln!(
        "propagation A -> B over moto, 50 files: median {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );

    // An overwrite shows on B's handle; a delete takes the name away.
    let on_b = lookup(&mut cb, &rb, "f00.txt").await.unwrap();
    let f00 = lookup(&mut ca, &ra, "f00.txt").await.unwrap();
    set_size(&mut ca, &f00, 0).await.unwrap();
    write_at(&mut ca, &f00, 0, b"rewritten by A", stable_how::FILE_SYNC)
        .await
        .unwrap();
    remove(&mut ca, &ra, "f01.txt").await.unwrap();
    flush(&a).await;
    until("the overwrite through B", async || {
        read_all(&mut cb, &on_b).await == b"rewritten by A"
    })
    .await;
    until("the delete through B", async || {
        lookup(&mut cb, &rb, "f01.txt").await == Err(nfsstat3::NFS3ERR_NOENT)
    })
    .await;

    // Both change one file: one version keeps the name, the other is kept beside it
    // as a conflict copy, and both gateways show both.
    let fa = lookup(&mut ca, &ra, "f02.txt").await.unwrap();
    let fb = lookup(&mut cb, &rb, "f02.txt").await.unwrap();
    write_at(&mut ca, &fa, 0, b"edited on A", stable_how::FILE_SYNC)
        .await
        .unwrap();
    write_at(&mut cb, &fb, 0, b"edited on B", stable_how::FILE_SYNC)
        .await
        .unwrap();
    flush(&a).await;
    flush(&b).await;
    let keys = |names: Vec<String>| -> Vec<String> {
        names.into_iter().filter(|n| n.starts_with("f02.txt")).collect()
    };
    let both = async |c: &mut Conn, root: &nfs_fh3| {
        let n = keys(sorted_names(c, root).await);
        n.len() == 2 && n[1].starts_with("f02.txt.conflict-")
    };
    until("both versions through A", async || both(&mut ca, &ra).await).await;
    until("both versions through B", async || both(&mut cb, &rb).await).await;
    let names = keys(sorted_names(&mut ca, &ra).await);
    assert_eq!(keys(sorted_names(&mut cb, &rb).await), names);
    let mut seen = Vec::new();
    for (c, root) in [(&mut ca, &ra), (&mut cb, &rb)] {
        let mut texts = Vec::new();
        for n in &names {
            let t = content(c, root, n).await.unwrap();
            texts.push(String::from_utf8_lossy(&t[..11]).into_owned());
        }
        seen.push(texts);
    }
    assert_eq!(seen[0], seen[1], "both gateways show the same versions");
    let mut versions = seen[0].clone();
    versions.sort();
    assert_eq!(versions, ["edited on A", "edited on B"]);

    // With versioning on (only now: moto sends no event for a delete marker, which
    // S3 does as ObjectRemoved:DeleteMarkerCreated), a file's status and its upload
    // event carry the version the bucket holds.
    moto.s3
        .put_bucket_versioning()
        .bucket(BUCKET)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    // A third gateway, under a prefix of its own, started now: it reports its uploads.
    let tc = tempfile::tempdir().unwrap();
    let uploads = tc.path().join("uploads.jsonl");
    let c_config = share_with(&config(tc.path(), &format!("s3://{BUCKET}/ver/")), |s| {
        s.endpoint = Some(moto.endpoint.clone());
        s.path_style = true;
        s.region = Some("us-east-1".into());
        s.upload_log = Some(uploads.clone());
        s.upload_settle = bucketgate::config::HumanDuration(Duration::ZERO);
    });
    let creds = Some((moto::ACCESS_KEY.to_owned(), moto::SECRET_KEY.to_owned()));
    let gc = start(c_config, creds).await;
    let mut cc = mount(gc.nfs_addr).await;
    let rc = cc.root_nfs_fh3();
    put_file(&mut cc, &rc, "versioned.txt", b"one version").await;
    flush(&gc).await;
    let head = moto
        .s3
        .head_object()
        .bucket(BUCKET)
        .key("ver/versioned.txt")
        .send()
        .await
        .unwrap();
    let version = head.version_id().expect("a versioned bucket").to_owned();
    let status = bucketgate::gateway::admin_api(&gc.gateway)
        .file_status("/data/versioned.txt")
        .await
        .unwrap();
    assert_eq!(status.store_holds_etag, Some(true), "{status:?}");
    assert_eq!(status.version_id.as_deref(), Some(version.as_str()), "{status:?}");
    let logged = async || {
        std::fs::read_to_string(&uploads)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("\"key\":\"ver/versioned.txt\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    };
    until("the upload event", async || logged().await.is_some()).await;
    let line = logged().await.unwrap();
    assert_eq!(line["version_id"], version.as_str(), "{line}");
    gc.shutdown().await;

    let m = b.gateway.metrics.render();
    assert!(
        metric_sum(&m, "bucketgate_events_total", "result=\"applied\"") >= 52.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "bucketgate_events_queue_reachable", ""), 1.0);
    a.shutdown().await;
    b.shutdown().await;
}
