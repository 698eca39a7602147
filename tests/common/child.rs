//! The real `bucketgate serve` binary as a child process, for crash tests: it can be
//! killed with SIGKILL and started again on the same cache directory and ports.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::s3server::S3TestServer;

pub struct ChildGateway {
    pub config_path: PathBuf,
    pub nfs_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub log_path: PathBuf,
    s3: (String, String, String),
    child: Option<Child>,
}

/// A loopback port nobody listens on right now (the gateway binds with SO_REUSEADDR,
/// so it can take the same port again after a kill).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The gateway binary: `BUCKETGATE_BIN` when set, else cargo's. A target directory
/// shared by several checkouts has one `debug/bucketgate` that every checkout's build
/// overwrites; `BUCKETGATE_BIN=target/debug/deps/bucketgate-<hash>` pins this one's.
pub fn binary() -> std::ffi::OsString {
    std::env::var_os("BUCKETGATE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_bucketgate").into())
}

impl ChildGateway {
    /// Writes a config under `dir` for one share `data` in the test server's bucket.
    /// `extra_cache` and `upload` are TOML lines for the [cache] and [upload] tables
    /// (`extra_cache` may set `capacity`; 8 GiB otherwise).
    pub fn new(dir: &Path, s3: &S3TestServer, extra_cache: &str, upload: &str) -> ChildGateway {
        let capacity = if extra_cache.contains("capacity") {
            ""
        } else {
            "capacity = \"8GiB\""
        };
        let nfs_addr = free_port();
        let admin_addr = free_port();
        let config_path = dir.join("bucketgate.toml");
        let text = format!(
            r#"
[nfs]
listen = "{nfs_addr}"
[admin]
listen = "{admin_addr}"
[cache]
dir = "{cache}"
{capacity}
{extra_cache}
[upload]
{upload}
[log]
level = "info"
[[share]]
name = "data"
url = "s3://{bucket}/"
endpoint = "{endpoint}"
region = "us-east-1"
path_style = true
"#,
            cache = dir.join("cache").display(),
            bucket = s3.bucket,
            endpoint = s3.endpoint,
        );
        std::fs::write(&config_path, text).unwrap();
        ChildGateway {
            config_path,
            nfs_addr,
            admin_addr,
            log_path: dir.join("gateway.log"),
            s3: (s3.access_key.clone(), s3.secret_key.clone(), "us-east-1".into()),
            child: None,
        }
    }

    /// Starts the binary and waits until its NFS port accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_default())
            .env("AWS_ACCESS_KEY_ID", &self.s3.0)
            .env("AWS_SECRET_ACCESS_KEY", &self.s3.1)
            .env("AWS_REGION", &self.s3.2)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn bucketgate serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.nfs_addr).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("SIGKILL");
        c.wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let st = c.wait().unwrap();
        assert!(st.success(), "graceful stop: {st}: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (30 s at most) until the log, which runs on across restarts, holds
    /// `line` `times` times: what a start does after its NFS port listens (FUSE
    /// mounts, smbd) is done only then.
    pub fn wait_for_log(&self, line: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(line).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {times} x {line:?} in the log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `bucketgate flush --wait` against the admin API; panics unless it reports
    /// everything in the store.
    pub fn flush_wait(&self, timeout_s: u32) {
        let out = Command::new(binary())
            .args(["flush", "--wait", "--timeout", &timeout_s.to_string(), "--admin"])
            .arg(self.admin_addr.to_string())
            .output()
            .expect("run bucketgate flush");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("all in the store"),
            "flush --wait: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every object in the bucket: key → body. Objects deleted between the listing and
/// the GET are left out.
pub async fn bucket_contents(s3: &S3TestServer) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut token = None;
    loop {
        let page = s3
            .client
            .list_objects_v2()
            .bucket(&s3.bucket)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("list");
        for o in page.contents() {
            let key = o.key().unwrap().to_string();
            // Listed then deleted by a running gateway: it is gone, skip it.
            let got = match s3.client.get_object().bucket(&s3.bucket).key(&key).send().await {
                Ok(g) => g,
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => continue,
                Err(e) => panic!("get {key}: {e:?}"),
            };
            // A body that fails its checksum is reported as such (it equals no model).
            let body = match got.body.collect().await {
                Ok(b) => b.into_bytes().to_vec(),
                Err(e) => format!("<unreadable: {e:?}>").into_bytes(),
            };
            out.insert(key, body);
        }
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => return out,
        }
    }
}

/// Every key in the bucket (one listing, no GETs: quick enough to poll).
pub async fn bucket_keys(s3: &S3TestServer) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .client
            .list_objects_v2()
            .bucket(&s3.bucket)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("list");
        out.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => return out,
        }
    }
}

/// Multipart uploads the server still holds: (key, upload id).
pub async fn multipart_uploads(s3: &S3TestServer) -> Vec<(String, String)> {
    let r = s3
        .client
        .list_multipart_uploads()
        .bucket(&s3.bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    r.uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap_or_default().to_string(),
                u.upload_id().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// How many parts upload `id` of `key` holds on the server.
pub async fn part_count(s3: &S3TestServer, key: &str, id: &str) -> usize {
    s3.client
        .list_parts()
        .bucket(&s3.bucket)
        .key(key)
        .upload_id(id)
        .send()
        .await
        .map(|r| r.parts().len())
        .unwrap_or(0)
}
