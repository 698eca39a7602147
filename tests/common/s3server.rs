//! An in-process S3 protocol server for tests: s3s-fs (a real S3 wire-protocol
//! implementation over a temp directory) served by hyper on 127.0.0.1, with
//! SigV4 authentication against static keys.
//!
//! ```ignore
//! let srv = S3TestServer::start().await;           // bucket already created
//! let store = srv.store().await;                    // bucketgate S3Store for it
//! srv.client.head_bucket().bucket(&srv.bucket).send().await?; // plain SDK client
//! srv.handle.stop().await;                          // port closed, requests in flight finish
//! srv.handle.restart().await;                       // same port, same data
//! ```
//!
//! By default s3s-fs is wrapped in [`Compat`], which fills gaps where s3s-fs 0.14.1
//! differs from S3 in ways the gateway depends on (see there). `start_raw()` serves
//! bare s3s-fs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bucketgate::remote::{S3Settings, S3Store};
use hyper_util::rt::TokioIo;
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tokio::net::TcpSocket;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub const ACCESS_KEY: &str = "bucketgate-test-ak";
pub const SECRET_KEY: &str = "bucketgate-test-sk-0123456789";
pub const BUCKET: &str = "bucketgate-test";
pub const REGION: &str = "us-east-1";

pub struct S3TestServer {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// A plain aws-sdk-s3 client for this server (path style, static keys), for
    /// checking what landed in the bucket independently of bucketgate's code.
    pub client: aws_sdk_s3::Client,
    /// Stops and restarts the server; clone it into other tasks freely.
    pub handle: ServerHandle,
    /// s3s-fs's data directory: `<data_dir>/<bucket>/<key>` are the objects.
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// The accept loop of a running server and the token that stops it.
type Serving = (JoinHandle<()>, CancellationToken);

/// Stops and restarts one server on the same port, keeping its data.
#[derive(Clone)]
pub struct ServerHandle {
    addr: SocketAddr,
    service: S3Service,
    task: Arc<Mutex<Option<Serving>>>,
    /// Requests being served, including those whose client has gone.
    in_flight: Arc<AtomicUsize>,
}

impl ServerHandle {
    /// Closes the listening socket and every idle connection; returns when the port
    /// refuses connections. Requests already being served finish first, each on its
    /// own: S3 applies a request whole or not at all, while cancelling s3s-fs in the
    /// middle of one can leave an object without its ETag or metadata, which no real
    /// store does. Idempotent.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some((task, stop)) = task {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Listens again on the same address (after `stop`). Idempotent.
    pub async fn restart(&self) {
        if self.is_running() {
            return;
        }
        let listener = bind(self.addr).await;
        *self.task.lock().unwrap() = Some(spawn_server(
            listener,
            self.service.clone(),
            self.in_flight.clone(),
        ));
    }

    pub fn is_running(&self) -> bool {
        self.task
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(t, _)| !t.is_finished())
    }

    /// Waits (up to 60 s) until no request is being served. A request whose client
    /// died still runs to its end, as on S3; a test that restarts a killed gateway
    /// waits for this first, as a real restart outlasts S3 finishing a request.
    pub async fn wait_idle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "S3 test server never idle"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    // SO_REUSEADDR so a restart can take the port while closed connections linger
    // in TIME_WAIT. A few tries in case the kernel is slow to release it.
    let mut last_err = None;
    for _ in 0..50 {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_reuseaddr(true).expect("SO_REUSEADDR");
        match sock.bind(addr).and_then(|()| sock.listen(128)) {
            Ok(l) => return l,
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind {addr}: {last_err:?}");
}

fn spawn_server(
    listener: tokio::net::TcpListener,
    service: S3Service,
    in_flight: Arc<AtomicUsize>,
) -> Serving {
    let stop = CancellationToken::new();
    (
        tokio::spawn(serve(listener, service, stop.clone(), in_flight)),
        stop,
    )
}

/// Counts one request in flight while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(n: &Arc<AtomicUsize>) -> InFlight {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections until `stop`; then closes the listener and asks every
/// connection to close once its current request is answered (idle ones at once).
/// Aborting the task instead (test teardown) cuts everything.
async fn serve(
    listener: tokio::net::TcpListener,
    service: S3Service,
    stop: CancellationToken,
    in_flight: Arc<AtomicUsize>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                                let service = service.clone();
                let stop = stop.clone();
                let in_flight = in_flight.clone();
                conns.spawn(async move {
                    // Each request runs in a task of its own, so a client that goes
                    // away (a gateway killed with SIGKILL) cannot cancel s3s-fs in the
                    // middle of it either: see `ServerHandle::stop`.
                    let whole = hyper::service::service_fn(move |req| {
                                                let call = hyper::service::Service::call(&service, req);
                        let counted = InFlight::new(&in_flight);
                        async move {
                            let whole = async move {
                                let answer = call.await;
                                drop(counted);
                                answer
                            };
                            match tokio::spawn(whole).await {
                                Ok(answer) => answer,
                                Err(e) => Err(s3s::HttpError::new(Box::new(e))),
                            }
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), whole);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.detach_all();
}

impl Drop for S3TestServer {
    /// The data directory goes away with the server: stop serving it.
    fn drop(&mut self) {
        if let Some((task, _)) = self.handle.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

impl S3TestServer {
    /// Puts an object as another S3 client would, with POSIX metadata
    /// (owner, group, permissions) when given.
    pub async fn their_put(&self, key: &str, body: &[u8], meta: Option<(&str, &str, &str)>) {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.to_vec()));
        if let Some((owner, group, perms)) = meta {
            req = req
                .metadata("file-owner", owner)
                .metadata("file-group", group)
                .metadata("file-permissions", perms);
        }
        req.send().await.unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// Deletes an object as another S3 client would.
    pub async fn their_delete(&self, key: &str) {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
    }

    /// The ETag of the object at `key` now, unquoted.
    pub async fn etag(&self, key: &str) -> String {
        let h = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
        h.e_tag().unwrap_or_default().trim_matches('"').to_owned()
    }

    /// s3s-fs behind [`Compat`], bucket [`BUCKET`] created.
    pub async fn start() -> S3TestServer {
        Self::start_with(true).await
    }

    /// Bare s3s-fs, to observe its own behaviour.
    pub async fn start_raw() -> S3TestServer {
        Self::start_with(false).await
    }

    async fn start_with(compat: bool) -> S3TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("s3");
        std::fs::create_dir_all(&data_dir).unwrap();
        let fs = s3s_fs::FileSystem::new(&data_dir).expect("s3s-fs");
        let b = if compat {
            S3ServiceBuilder::new(Compat {
                fs,
                root: data_dir.canonicalize().unwrap(),
            })
        } else {
            S3ServiceBuilder::new(fs)
        };
        Self::serve(b, tmp, data_dir).await
    }

    pub(crate) async fn serve(
        mut b: S3ServiceBuilder,
        tmp: tempfile::TempDir,
        data_dir: PathBuf,
    ) -> S3TestServer {
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();

        let listener = bind("127.0.0.1:0".parse().unwrap()).await;
        let addr = listener.local_addr().unwrap();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let handle = ServerHandle {
            addr,
            service: service.clone(),
            task: Arc::new(Mutex::new(Some(spawn_server(
                listener,
                service.clone(),
                in_flight.clone(),
            )))),
            in_flight,
        };
        let endpoint = format!("http://{addr}");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        client
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("create bucket");
        S3TestServer {
            endpoint,
            bucket: BUCKET.into(),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            client,
            handle,
            data_dir,
            _tmp: tmp,
        }
    }

    /// S3Store settings for this server, with short timeouts and one retry so
    /// outage tests finish quickly. Storage class, SSE, ACL and requester-pays are
    /// set so every request carries those headers too.
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            region: Some(REGION.into()),
            endpoint: Some(self.endpoint.clone()),
            path_style: true,
            storage_class: Some("STANDARD".into()),
            sse: Some("AES256".into()),
            acl: Some("private".into()),
            requester_pays: true,
            credentials: Some((self.access_key.clone(), self.secret_key.clone())),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(30),
            max_attempts: 2,
            ..S3Settings::new(&self.bucket)
        }
    }

    pub async fn store(&self) -> S3Store {
        S3Store::new(self.settings()).await.expect("S3Store")
    }

    /// Where s3s-fs keeps object `key`.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data_dir.join(&self.bucket).join(key)
    }

    /// Records the ETag of an object written straight to [`Self::object_path`]
    /// (faster than uploading a large one through a debug-built SDK). Without it
    /// s3s-fs computes the MD5 of the whole object for every GET.
    pub fn set_etag(&self, key: &str, etag: &str) {
        let info = self.data_dir.canonicalize().unwrap().join(format!(
            ".bucket-{}.object-{}.internal.json",
            b64url_encode(&self.bucket),
            b64url_encode(key)
        ));
        std::fs::write(info, format!("{{\"e_tag\":\"{etag}\"}}")).unwrap();
    }
}

/// s3s-fs with the gaps the gateway depends on filled, each as S3 documents it:
/// - an unknown upload id is `404 NoSuchUpload` (s3s-fs: `403 AccessDenied`, or
///   `400 InvalidRequest` when it is not a UUID) for UploadPart, UploadPartCopy,
///   CompleteMultipartUpload, AbortMultipartUpload and ListParts;
/// - ListMultipartUploads (s3s-fs: NotImplemented), read from s3s-fs's own
///   per-upload metadata files, prefix filter only, one page;
/// - multipart checksums: an upload created with CRC32C needs every part's
///   checksum in CompleteMultipartUpload, each matching its part (s3s-fs ignores
///   them), and ListParts gives each part's ETag and CRC32C (s3s-fs: neither);
/// - CompleteMultipartUpload over an existing key drops the old object's stored
///   full-object checksum (s3s-fs keeps it, so GETs then fail their checksum);
/// - directory markers (`key/`): s3s-fs makes a bare directory, drops the
///   metadata and answers HEAD/GET with 500. Compat keeps the metadata beside it
///   and answers HEAD/GET as S3 does for an empty object.
///
/// - ListObjectsV2 lists markers as keys (and an empty marker as a common
///   prefix); s3s-fs lists only files. Listings still carry no ETag. With
///   `encoding-type=url` keys, prefixes and the delimiter are URL-encoded as S3
///   does (`+` for a space); without it they go into the XML verbatim, so a key
///   with a control character makes the answer unparsable, as on S3.
///   Continuation tokens are opaque (base64 of the last key).
/// - CopyObject honours `If-Match` / `If-None-Match` on the destination, and
///   DeleteObject `If-Match` (s3s-fs ignores them); a PutObject of a marker with
///   `If-None-Match: *` is refused only when the marker exists (s3s-fs: when any
///   object below it does).
///
/// Still missing (not filled): a key cannot be both an object and a directory ("a" and "a/b"), UploadPart does not verify checksums, and a PutObject
/// refused with BadDigest still replaces the object.
///
/// Everything else is passed to s3s-fs unchanged.
pub struct Compat {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
}

impl Compat {
    /// The ETag S3 would give `key` now; `None` when no object is there.
    fn current_etag(&self, bucket: &str, key: &str) -> Option<String> {
        if key.ends_with('/') {
            return self.marker(bucket, key).map(|_| MD5_EMPTY.to_owned());
        }
        let path = self.root.join(bucket).join(key);
        if !path.is_file() {
            return None;
        }
        let info = self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            b64url_encode(bucket),
            b64url_encode(key)
        ));
        let stored = std::fs::read(info)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("e_tag")?.as_str().map(str::to_owned));
        stored.or_else(|| {
            use s3s::crypto::Checksum;
            let data = std::fs::read(&path).ok()?;
            Some(
                s3s::crypto::Md5::checksum(&data)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            )
        })
    }

    /// `If-Match` / `If-None-Match` of a write onto `key`, checked as S3 does.
    fn check_conditions(&self, headers: &hyper::HeaderMap, bucket: &str, key: &str) -> S3Result<()> {
        let current = self.current_etag(bucket, key);
        if let Some(v) = headers.get("if-none-match").and_then(|v| v.to_str().ok())
            && v.trim() == "*"
            && current.is_some()
        {
            return Err(s3_error!(PreconditionFailed, "an object exists at the key"));
        }
        if let Some(v) = headers.get("if-match").and_then(|v| v.to_str().ok()) {
            match &current {
                None => return Err(s3_error!(NoSuchKey)),
                Some(c) if v.trim() != "*" && c != v.trim().trim_matches('"') => {
                    return Err(s3_error!(PreconditionFailed, "ETag does not match"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn upload_exists(&self, upload_id: &str) -> bool {
        uuid_like(upload_id) && self.root.join(format!(".upload-{upload_id}.json")).exists()
    }

    fn check_upload(&self, upload_id: &str) -> S3Result<()> {
        if self.upload_exists(upload_id) {
            Ok(())
        } else {
            Err(s3_error!(NoSuchUpload))
        }
    }

    fn marker_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".compat-marker-{}-{}.json",
            b64url_encode(bucket),
            b64url_encode(key)
        ))
    }

    /// Every key under `dir` (files, and directories that are markers): a file with
    /// its path (stat'ed only if it goes into the page, as S3 reads an index rather
    /// than every object per page), a marker with its time.
    fn collect_keys(&self, bucket: &str, dir: &Path, rel: &str, out: &mut Vec<ListedKey>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in rd.flatten() {
            let Ok(ft) = entry.file_type() else {
                continue;
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if ft.is_dir() {
                let key = format!("{rel}{name}/");
                if let Some((_, t)) = self.marker(bucket, &key) {
                    out.push((key.clone(), Err(t)));
                }
                self.collect_keys(bucket, &entry.path(), &key, out);
            } else if ft.is_file() {
                out.push((format!("{rel}{name}"), Ok(entry.path())));
            }
        }
    }

    fn upload_has_crc32c(&self, upload_id: &str) -> bool {
        uuid_like(upload_id)
            && self
                .root
                .join(format!(".compat-upload-{upload_id}.crc32c"))
                .exists()
    }

    /// (hex MD5, base64 CRC32C) of a staged part, from s3s-fs's part file.
    fn part_bytes(&self, upload_id: &str, part: i32) -> S3Result<Vec<u8>> {
        let path = self.root.join(format!(".upload_id-{upload_id}.part-{part}"));
        std::fs::read(&path).map_err(|_| s3_error!(InvalidPart))
    }

    /// (MD5 hex, CRC32C base64) of a stored part.
    fn part_digests(&self, upload_id: &str, part: i32) -> S3Result<(String, String)> {
        use s3s::crypto::Checksum;
        let data = self.part_bytes(upload_id, part)?;
        let md5: String = s3s::crypto::Md5::checksum(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((md5, b64_std(&crc32c::crc32c(&data).to_be_bytes())))
    }

    /// CRC32C (base64) of a stored part: the check at completion needs no MD5.
    fn part_crc32c(&self, upload_id: &str, part: i32) -> S3Result<String> {
        Ok(b64_std(
            &crc32c::crc32c(&self.part_bytes(upload_id, part)?).to_be_bytes(),
        ))
    }

    /// User metadata and time of a directory marker, if `key` is one.
    fn marker(&self, bucket: &str, key: &str) -> Option<(Metadata, std::time::SystemTime)> {
        if !self.root.join(bucket).join(key).is_dir() {
            return None;
        }
        let path = self.marker_path(bucket, key);
        let md = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        Some((md, std::fs::metadata(&path).ok()?.modified().ok()?))
    }

    /// (bucket, key, upload id) of every upload in progress, from s3s-fs's files
    /// `.bucket-<b64>.object-<b64>.upload-<uuid>.metadata.json`.
    fn uploads(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".bucket-") else {
                continue;
            };
            let Some(rest) = rest.strip_suffix(".metadata.json") else {
                continue;
            };
            let Some((b, rest)) = rest.split_once(".object-") else {
                continue;
            };
            let Some((k, id)) = rest.split_once(".upload-") else {
                continue;
            };
            if !self.upload_exists(id) {
                continue;
            }
            if let (Some(b), Some(k)) = (b64url_decode(b), b64url_decode(k)) {
                out.push((b, k, id.to_owned()));
            }
        }
        out.sort();
        out
    }
}

/// A key as S3 encodes it for `encoding-type=url`: `+` for a space, `%XX` for every
/// other byte that is not alphanumeric.
fn url_encode(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%20", "+")
}

/// A key found by walking s3s-fs's directory: a file's path, or a marker's time.
type ListedKey = (String, Result<PathBuf, std::time::SystemTime>);

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

pub(crate) const MD5_EMPTY: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// Standard base64 with padding (checksum header values).
pub fn b64_std(bytes: &[u8]) -> String {
    let mut s = b64(
        bytes,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    );
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

fn b64url_encode(s: &str) -> String {
    b64(
        s.as_bytes(),
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    )
}

fn b64(bytes: &[u8], table: &[u8; 64]) -> String {
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64url_decode(s: &str) -> Option<String> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

#[async_trait::async_trait]
impl S3 for Compat {
    // s3s's trait methods go through #[async_trait], so they are written out.
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.check_conditions(&req.headers, &req.input.bucket, &req.input.key)?;
        self.fs.copy_object(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        // s3s-fs's listing, redone so that directory markers are keys like any other.
        let input = req.input;
        let bucket_root = self.root.join(&input.bucket);
        if !bucket_root.is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max = usize::try_from(input.max_keys.unwrap_or(1000).clamp(0, 1000)).unwrap();
        let token = match input.continuation_token.as_deref() {
            Some(t) => {
                Some(b64url_decode(t).ok_or_else(|| s3_error!(InvalidArgument, "bad continuation token"))?)
            }
            None => None,
        };
        let after = match (token.as_deref(), input.start_after.as_deref()) {
            (Some(a), Some(b)) => Some(a.max(b).to_owned()),
            (a, b) => a.or(b).map(str::to_owned),
        };
        let url = input.encoding_type.as_ref().map(|e| e.as_str()) == Some(EncodingType::URL);
        let enc = |k: String| if url { url_encode(&k) } else { k };
        let mut all = Vec::new();
        // Only the directory the prefix names can hold its keys (a marker of that
        // directory itself is one of them).
        let (dir_rel, _) = prefix.rsplit_once('/').unwrap_or(("", ""));
        let start = if dir_rel.is_empty() {
            bucket_root.clone()
        } else {
            bucket_root.join(dir_rel)
        };
        if !dir_rel.is_empty() {
            let marker = format!("{dir_rel}/");
            if let Some((_, t)) = self.marker(&input.bucket, &marker) {
                all.push((marker, Err(t)));
            }
        }
        let base = if dir_rel.is_empty() {
            String::new()
        } else {
            format!("{dir_rel}/")
        };
        self.collect_keys(&input.bucket, &start, &base, &mut all);
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut contents, mut prefixes, mut last, mut truncated) =
            (Vec::new(), Vec::<CommonPrefix>::new(), None, false);
        for (key, file) in all.into_iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let cp = delimiter.as_deref().and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|i| key[..prefix.len() + i + d.len()].to_owned())
            });
            let item = cp.clone().unwrap_or_else(|| key.clone());
            if after.as_deref().is_some_and(|a| item.as_str() <= a)
                || (cp.is_some() && prefixes.last().and_then(|p| p.prefix.clone()) == cp.clone().map(enc))
            {
                continue;
            }
            if contents.len() + prefixes.len() >= max {
                truncated = true;
                break;
            }
            last = Some(item);
            match cp {
                Some(p) => prefixes.push(CommonPrefix { prefix: Some(enc(p)) }),
                None => {
                    let (size, modified) = match file {
                        Ok(path) => match std::fs::metadata(&path) {
                            Ok(md) => (md.len(), md.modified().unwrap_or(std::time::UNIX_EPOCH)),
                            Err(_) => continue, // deleted meanwhile
                        },
                        Err(marker_time) => (0, marker_time),
                    };
                    contents.push(Object {
                        key: Some(enc(key)),
                        size: Some(size as i64),
                        last_modified: Some(modified.into()),
                        ..Default::default()
                    })
                }
            }
        }
        Ok(S3Response::new(ListObjectsV2Output {
            key_count: Some((contents.len() + prefixes.len()) as i32),
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            continuation_token: input.continuation_token,
            next_continuation_token: if truncated {
                last.map(|k| b64url_encode(&k))
            } else {
                None
            },
            delimiter: input.delimiter.map(enc),
            encoding_type: input.encoding_type,
            name: Some(input.bucket),
            prefix: input.prefix.map(enc),
            start_after: input.start_after.map(enc),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let crc32c =
            req.input.checksum_algorithm.as_ref().map(|a| a.as_str()) == Some(ChecksumAlgorithm::CRC32C);
        let out = self.fs.create_multipart_upload(req).await?;
        if crc32c && let Some(id) = &out.output.upload_id {
            std::fs::write(self.root.join(format!(".compat-upload-{id}.crc32c")), b"")
                .map_err(|e| s3_error!(e, InternalError))?;
        }
        Ok(out)
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        if !req.input.key.ends_with('/') {
            return self.fs.put_object(req).await;
        }
        // s3s-fs takes the directory its objects below make for an existing marker.
        self.check_conditions(&req.headers, &req.input.bucket, &req.input.key)?;
        let mut req = req;
        req.input.if_match = None;
        req.input.if_none_match = None;
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let md = req.input.metadata.clone().unwrap_or_default();
        let out = self.fs.put_object(req).await?;
        let json = serde_json::to_vec(&md).map_err(|e| s3_error!(e, InternalError))?;
        std::fs::write(self.marker_path(&bucket, &key), json).map_err(|e| s3_error!(e, InternalError))?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(MD5_EMPTY.into())),
            ..out.output
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let (bucket, key) = (&req.input.bucket, &req.input.key);
        if !key.ends_with('/') {
            // s3s-fs answers 500 for a key that is a directory of its files (other
            // keys are below it); S3 has no such object.
            if self.root.join(bucket).join(key).is_dir() {
                return Err(s3_error!(NoSuchKey));
            }
            return self.fs.head_object(req).await;
        }
        let (md, modified) = self.marker(bucket, key).ok_or_else(|| s3_error!(NoSuchKey))?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(0),
            e_tag: Some(ETag::Strong(MD5_EMPTY.into())),
            last_modified: Some(modified.into()),
            metadata: Some(md),
            ..Default::default()
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let (bucket, key) = (&req.input.bucket, &req.input.key);
        if !key.ends_with('/') {
            return self.fs.get_object(req).await;
        }
        let (md, modified) = self.marker(bucket, key).ok_or_else(|| s3_error!(NoSuchKey))?;
        if req.input.range.is_some() {
            // Any range of an empty object is unsatisfiable.
            return Err(s3_error!(InvalidRange));
        }
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::from(s3s::Body::empty())),
            content_length: Some(0),
            e_tag: Some(ETag::Strong(MD5_EMPTY.into())),
            last_modified: Some(modified.into()),
            metadata: Some(md),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        if req.headers.contains_key("if-match")
            && self.current_etag(&req.input.bucket, &req.input.key).is_some()
        {
            self.check_conditions(&req.headers, &req.input.bucket, &req.input.key)?;
        }
        if req.input.key.ends_with('/') {
            let _ = std::fs::remove_file(self.marker_path(&req.input.bucket, &req.input.key));
        }
        self.fs.delete_object(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.check_upload(&req.input.upload_id)?;
        self.fs.upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.check_upload(&req.input.upload_id)?;
        self.fs.upload_part_copy(req).await
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.check_upload(&req.input.upload_id)?;
        let id = req.input.upload_id.clone();
        let crc = self.upload_has_crc32c(&id);
        let mut out = self.fs.list_parts(req).await?;
        // S3 lists each part's ETag, and its checksum when the upload has an
        // algorithm; s3s-fs lists neither.
        for part in out.output.parts.iter_mut().flatten() {
            let Some(n) = part.part_number else { continue };
            let (md5, crc32c) = self.part_digests(&id, n)?;
            part.e_tag = Some(ETag::Strong(md5));
            if crc {
                part.checksum_crc32c = Some(crc32c);
            }
        }
        Ok(out)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.check_upload(&req.input.upload_id)?;
        let id = req.input.upload_id.clone();
        if self.upload_has_crc32c(&id) {
            // As S3 does for an upload created with a checksum algorithm: every part
            // must come with its checksum, and it must be the part's.
            for part in req
                .input
                .multipart_upload
                .iter()
                .flat_map(|m| m.parts.iter().flatten())
            {
                let n = part.part_number.unwrap_or(0);
                let Some(sent) = &part.checksum_crc32c else {
                    return Err(s3_error!(
                        InvalidRequest,
                        "The upload was created using a crc32c checksum. The complete request must include the checksum for each part. It was missing for part {n} in the request."
                    ));
                };
                if *sent != self.part_crc32c(&id, n)? {
                    return Err(s3_error!(InvalidPart, "checksum of part {n} does not match"));
                }
            }
        }
        // s3s-fs keeps the key's previous internal info and only updates the ETag, so
        // a full-object CRC32C left by an earlier PutObject of the same key stays and
        // every later GET fails its checksum. S3 replaces the object whole: keep only
        // the new ETag. (Afterwards: s3s-fs checks If-Match against the old info.)
        let info = self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            b64url_encode(&req.input.bucket),
            b64url_encode(&req.input.key)
        ));
        let out = self.fs.complete_multipart_upload(req).await?;
        let kept: serde_json::Map<String, serde_json::Value> = std::fs::read(&info)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let kept: serde_json::Map<_, _> = kept.into_iter().filter(|(k, _)| k == "e_tag").collect();
        let json = serde_json::to_vec(&kept).map_err(|e| s3_error!(e, InternalError))?;
        std::fs::write(&info, json).map_err(|e| s3_error!(e, InternalError))?;
        Ok(out)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.check_upload(&req.input.upload_id)?;
        self.fs.abort_multipart_upload(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads: Vec<MultipartUpload> = self
            .uploads()
            .into_iter()
            .filter(|(b, k, _)| *b == input.bucket && k.starts_with(&prefix))
            .map(|(_, key, id)| MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}
