//! A share's configuration opens the store its URL names (`open_share_store`).
//! Alone in its binary because it sets credentials in the environment.

// This suite uses only some of the shared helpers.
#[allow(dead_code)]
mod common;

use std::time::Duration;

use bucketgate::remote::ObjectAttrs;
use bucketgate::remote::S_IFREG;
use bytes::Bytes;
use common::s3server::S3TestServer;

fn meta(mode: u32, mtime_ns: u64) -> ObjectAttrs {
    ObjectAttrs {
        uid: 1000,
        gid: 100,
        mode,
        mtime_ns,
    }
}

#[test]
fn shares_open_the_store_their_url_names() {
    // The config path takes credentials from the standard chain: give it the
    // test server's keys through the environment, before any thread exists (this
    // binary holds this one test, so nothing reads the environment concurrently).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", common::s3server::ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", common::s3server::SECRET_KEY);
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), run()).await })
        .expect("timed out");
}

async fn run() {
    use bucketgate::config::ShareConfig;
    let srv = S3TestServer::start().await;
    let share: ShareConfig = toml::from_str(&format!(
        r#"
        name = "data"
        url = "s3://{}/site-a/projects"
        endpoint = "{}"
        region = "us-east-1"
        path_style = true
        storage_class = "STANDARD"
        "#,
        srv.bucket, srv.endpoint
    ))
    .unwrap();
    let (store, prefix) = bucketgate::remote::open_share_store(&share, None).await.unwrap();
    assert_eq!(prefix, "site-a/projects/");
    let key = format!("{prefix}a.txt");
    store
        .put_object(&key, Bytes::from_static(b"a"), &meta(S_IFREG | 0o644, 1))
        .await
        .unwrap();
    let out = srv
        .client
        .head_object()
        .bucket(&srv.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_length(), Some(1));

    let dir = tempfile::tempdir().unwrap();
    let share: ShareConfig = toml::from_str(&format!(
        "name = \"l\"\nurl = \"file://{}\"",
        dir.path().display()
    ))
    .unwrap();
    let (store, prefix) = bucketgate::remote::open_share_store(&share, None).await.unwrap();
    assert_eq!(prefix, "");
    store
        .put_object("x/y", Bytes::from_static(b"y"), &meta(S_IFREG | 0o644, 1))
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("x/y")).unwrap(), b"y");

    let share: ShareConfig = toml::from_str("name = \"bad\"\nurl = \"s3://bbb/p\"\nsse = \"rot13\"").unwrap();
    let err = bucketgate::remote::open_share_store(&share, None)
        .await
        .err()
        .unwrap();
    assert!(err.contains("share `bad`") && err.contains("sse"), "{err}");
}
