//! Starts a real gateway in-process on loopback, for tests.

use std::sync::Arc;
use std::time::Duration;

use bucketgate::config::{ByteSize, Config, HumanDuration, ShareConfig};
use bucketgate::gateway::{Gateway, Running};
use bucketgate::remote::ObjectStore;

/// A config with one share `data` at `url`, NFS on an ephemeral loopback port, the
/// cache under `dir`, and quick uploads.
pub fn config(dir: &std::path::Path, url: &str) -> Config {
    let mut cfg = Config::from_toml(&format!(
        r#"
        [nfs]
        listen = "127.0.0.1:0"
        [admin]
        listen = "127.0.0.1:0"
        [cache]
        dir = "{}"
        capacity = "8GiB"
        upload_delay = "100ms"
        max_dirty_age = "2s"
        [[share]]
        name = "data"
        url = "{url}"
        "#,
        dir.join("cache").display()
    ))
    .expect("test config");
    cfg.upload.multipart_threshold = ByteSize(8 << 20);
    cfg.upload.part_size = ByteSize(8 << 20);
    cfg.cache.upload_delay = HumanDuration(Duration::from_millis(100));
    cfg
}

/// [`config`] for a share at `prefix` in the test S3 server's bucket.
pub fn s3_config(dir: &std::path::Path, srv: &super::s3server::S3TestServer, prefix: &str) -> Config {
    share_with(&config(dir, &format!("s3://{}/{prefix}", srv.bucket)), |s| {
        s.endpoint = Some(srv.endpoint.clone());
        s.path_style = true;
        s.region = Some("us-east-1".into());
    })
}

pub fn share_with(cfg: &Config, f: impl FnOnce(&mut ShareConfig)) -> Config {
    let mut c = cfg.clone();
    f(&mut c.shares[0]);
    c
}

/// Logs to the test's output when RUST_LOG is set (e.g. RUST_LOG=bucketgate=debug).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub async fn start(cfg: Config, creds: Option<(String, String)>) -> Running {
    init_logs();
    Gateway::open(cfg, creds, None)
        .await
        .expect("open gateway")
        .start()
        .await
        .expect("start gateway")
}

pub async fn start_with_store(cfg: Config, store: Arc<dyn ObjectStore>) -> Running {
    init_logs();
    Gateway::open(cfg, None, Some(store))
        .await
        .expect("open gateway")
        .start()
        .await
        .expect("start gateway")
}

/// Uploads everything now and waits until the store holds it (like `flush --wait`).
pub async fn flush(r: &Running) {
    flush_within(r, Duration::from_secs(60))
        .await
        .expect("flush within 60 s")
}

pub async fn flush_within(r: &Running, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    for s in &r.gateway.shares {
        let targets = s.uploader.flush_now(None);
        while !s.uploader.reached(&targets) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "not uploaded in time; failing: {:?}",
                    s.uploader.failing()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The sum of the samples of metric `name` whose line contains `with` ("" for all),
/// in Prometheus text format.
pub fn metric_sum(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The records of a share's audit log so far, one JSON object a line.
pub fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
