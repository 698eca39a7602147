//! End-to-end figures for bucketgate, each beside a baseline measured in the same run
//! on the same machine, and their ratio. Run with `cargo bench --bench gateway`;
//! sizes can be scaled down with BENCH_MIB (default 2048) for a quick look. That run
//! measures figures 1 to 8; figures 9 to 15 each need a setup of their own and run
//! one at a time, named by BENCH_FIGURES (`BENCH_FIGURES=11 cargo bench --bench
//! gateway`).
//!
//! 1. ingest: 1 MiB UNSTABLE WRITEs, 16 in flight on one connection, COMMIT at the end
//!    (what the Linux client does) vs writing the same bytes to a file on the cache
//!    disk plus fdatasync.
//! 2. upload drain: COMMIT → clean for that file to an in-process S3 server vs a direct
//!    aws-sdk-s3 multipart upload of the same bytes from the same disk.
//! 3. small files: 10,000 × 4 KiB created, written, committed by 8 clients; files/s to
//!    the cache, and the upload rate to S3 separately.
//! 4. metadata: READDIRPLUS of a 10,000-entry directory; GETATTR and LOOKUP calls/s.
//! 5. warm read through the gateway vs a raw read of the cache file, and vs the same
//!    bytes read from the file and sent through a loopback TCP socket (the floor for
//!    any network file server on this machine); cold sequential read through a second
//!    gateway with an empty cache vs direct GETs of the same object with aws-sdk-s3.
//! 6. CPU seconds per GiB for 1 and 5 (client and gateway share the process).
//! 7. upload_delay vs a client that flushes a growing file every `period`: uploads and
//!    bytes sent per byte written, for a delay below, near and above the period.
//! 8. `ls -l` of a directory of 10,000 objects another client wrote, never listed:
//!    READDIRPLUS (which reads each entry's metadata, 64 HEADs in flight, started as
//!    the listing's pages arrive and kept going across the client's pages), then a
//!    GETATTR of every entry (the worst case: no attribute cache), vs the same again
//!    once the attributes are known, and vs the HEADs alone from a plain aws-sdk-s3
//!    client; the same against a store 5 ms away; and the alternative of leaving
//!    attributes out of READDIRPLUS: names by READDIR, then a LOOKUP (one HEAD) of
//!    each, one at a time as `ls -l` asks. `BENCH_FIGURES=8` runs only this figure.
//! 9. one client's 5 TiB sparse file uploading (a 1-byte WRITE at 5 TiB, parts of
//!    525 MiB streamed from the cache disk to an S3 server that keeps no bytes) while
//!    another client writes 4 KiB FILE_SYNC: its latency beside the same writes with
//!    nothing uploading, and the process's peak RSS (gateway, client and server
//!    share it; the server's threads run niced, as the stand-in for an S3 elsewhere).
//!    `BENCH_FIGURES=9` runs only this figure.
//! 10. 16 connections from one address that each send 64 READs of 1 MiB and never
//!     read a reply, while a client at another address READs 1 MiB at a time: its
//!     latency beside the same READs with no such connections, the process's peak
//!     RSS and the reply memory held. `BENCH_FIGURES=10` runs only this figure.
//! 11. small durable files, uploads held back: CREATE + WRITE 4 KiB FILE_SYNC, and
//!     CREATE + WRITE UNSTABLE + COMMIT, on 8 and on 32 connections, 20,000 files each
//!     (BENCH_SMALL_FILES), then FILE_SYNC on 8 connections at 10x the count (no
//!     decay; BENCH_SMALL_DECAY=0 skips it): files/s, each file's p50 and p99, and
//!     durable requests per metadata flush (group commit), vs 8 threads creating,
//!     writing and fdatasyncing their own files on the same disk.
//!     `BENCH_FIGURES=11` runs only this figure.
//! 12. SMB beside NFS on one gateway: Samba's smbd (run by the gateway) serving the
//!     share's FUSE mount to smbclient (SMB 3), against the bench's NFS client on the
//!     same gateway: a sequential write, a warm read and a read again of BENCH_MIB
//!     (NFS: 16 x 1 MiB in flight, COMMIT at the end; SMB: `put` and `get`; the first
//!     `get` goes through the gateway, the second finds the mount's page cache), and
//!     1,000 files of 4 KiB
//!     written one at a time (NFS: CREATE and WRITE FILE_SYNC; SMB: `mput`, each file
//!     closed, which `strict sync` makes durable). Needs root, /dev/fuse, smbd and
//!     smbclient; says SKIPPED without them. `BENCH_FIGURES=12` runs only this figure.
//! 13. upload rate limit: BENCH_MIB/4 written through NFS and drained to S3 with no
//!     limit (the baseline: what this machine can send), then with `[upload]
//!     rate_limit` at a quarter of that, then with the same limit from a
//!     `rate_schedule` entry that applies all day: the achieved upload rate against
//!     the limit (goal: within 10%), and the NFS write rate into the cache with the
//!     limit against without it. `BENCH_FIGURES=13` runs only this figure.
//! 14. two gateways on one bucket, each long-polling its own SQS queue fed by the
//!     bucket's S3 events through an SNS topic, all on moto's server: for 50 files,
//!     the time from the end of a file's upload through gateway A (`flush`) until a
//!     LOOKUP through gateway B finds it, vs the time from a plain PutObject until
//!     its event is received from a third queue (the notification path alone).
//!     Needs `moto_server` (pip install 'moto[server]'); says SKIPPED without it.
//!     `BENCH_FIGURES=14` runs only this figure.
//! 15. small uploads: 20,000 files of 4 KiB (BENCH_SMALL_FILES) written and
//!     committed with uploads held back, then `flush` until all are clean, with
//!     `small_file_concurrency` at 8, 32 and 64; vs aws-sdk-s3 PutObject of the same
//!     bytes, the same number at a time, to the same server, plain and with what a
//!     gateway upload carries too (POSIX metadata, If-None-Match). `BENCH_FIGURES=15`
//!     runs only this figure.

#[path = "../tests/common/faulty.rs"]
mod faulty;
#[path = "../tests/common/moto.rs"]
mod moto;
#[path = "../tests/common/null_s3.rs"]
mod null_s3;
#[path = "../tests/common/s3server.rs"]
#[allow(dead_code)]
mod s3server;
mod support;

use std::io::Write;
use tokio::io::AsyncWriteExt;

use futures::StreamExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bucketgate::config::{ByteSize, Config, HumanDuration};
use bucketgate::gateway::{Gateway, Running};
use s3server::S3TestServer;
use support::rpc::Client;

const MIB: usize = 1 << 20;

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn row(name: &str, value: f64, unit: &str, baseline: Option<(f64, &str)>) {
    match baseline {
        Some((b, what)) => println!(
            "{name:<34} {value:>10.1} {unit:<8} baseline {b:>10.1} {unit:<8} ({what})  ratio {:.2}",
            value / b
        ),
        None => println!("{name:<34} {value:>10.1} {unit}"),
    }
}

async fn gateway(srv: &S3TestServer, dir: &std::path::Path, upload_delay: Duration) -> Running {
    let max_dirty_age = upload_delay.max(Duration::from_secs(60));
    gateway_with(srv, dir, upload_delay, max_dirty_age).await
}

async fn gateway_with(
    srv: &S3TestServer,
    dir: &std::path::Path,
    upload_delay: Duration,
    max_dirty_age: Duration,
) -> Running {
    start(srv, config(srv, dir, upload_delay, max_dirty_age)).await
}

/// A gateway on `cfg`, with the test server's keys.
async fn start(srv: &S3TestServer, cfg: Config) -> Running {
    let creds = Some((srv.access_key.clone(), srv.secret_key.clone()));
    Gateway::open(cfg, creds, None)
        .await
        .expect("open")
        .start()
        .await
        .expect("start")
}

/// Files per run of figures 11 and 15: BENCH_SMALL_FILES, else 20,000.
fn small_files() -> usize {
    std::env::var("BENCH_SMALL_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn config(
    srv: &S3TestServer,
    dir: &std::path::Path,
    upload_delay: Duration,
    max_dirty_age: Duration,
) -> Config {
    let mut cfg = Config::from_toml(&format!(
        r#"
        [nfs]
        listen = "127.0.0.1:0"
        [admin]
        listen = "127.0.0.1:0"
        [cache]
        dir = "{}"
        capacity = "64GiB"
        [[share]]
        name = "data"
        url = "s3://{}/bench/"
        endpoint = "{}"
        path_style = true
        region = "us-east-1"
        "#,
        dir.join("cache").display(),
        srv.bucket,
        srv.endpoint
    ))
    .expect("bench config");
    cfg.cache.upload_delay = HumanDuration(upload_delay);
    cfg.cache.max_dirty_age = HumanDuration(max_dirty_age);
    cfg.upload.part_size = ByteSize(16 << 20);
    cfg.upload.multipart_threshold = ByteSize(16 << 20);
    cfg
}

async fn flush(r: &Running) {
    for s in &r.gateway.shares {
        // Looked at in upload order, from the first not yet arrived: asking after
        // 20,000 small files every few ms would take a core from the gateway measured.
        let t = s.uploader.flush_now(None);
        let mut next = 0;
        while next < t.len() {
            while next < t.len() && s.uploader.reached(&t[next..=next]) {
                next += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Writes `total` bytes into one file: 1 MiB UNSTABLE WRITEs, `depth` in flight.
async fn nfs_write(c: &Arc<Client>, fh: &[u8], total: usize, depth: usize, block: &Arc<Vec<u8>>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0usize;
    while next < total || !tasks.is_empty() {
        while next < total && tasks.len() < depth {
            let (c, fh, block) = (c.clone(), fh.to_vec(), block.clone());
            let off = next as u64;
            tasks.spawn(async move { c.write(&fh, off, &block, 0).await });
            next += MIB;
        }
        tasks.join_next().await.unwrap().unwrap();
    }
    c.commit(fh).await;
}

async fn nfs_read(c: &Arc<Client>, fh: &[u8], total: usize, depth: usize) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    let (mut next, mut got) = (0usize, 0usize);
    while next < total || !tasks.is_empty() {
        while next < total && tasks.len() < depth {
            let (c, fh) = (c.clone(), fh.to_vec());
            let off = next as u64;
            tasks.spawn(async move { c.read(&fh, off, MIB as u32).await });
            next += MIB;
        }
        got += tasks.join_next().await.unwrap().unwrap();
    }
    got
}

fn raw_write(path: &std::path::Path, total: usize, block: &[u8]) -> Duration {
    let t = Instant::now();
    let mut f = std::fs::File::create(path).unwrap();
    for _ in 0..total / MIB {
        f.write_all(block).unwrap();
    }
    f.sync_data().unwrap();
    t.elapsed()
}

async fn direct_multipart(srv: &S3TestServer, path: &std::path::Path, total: usize) -> Duration {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let t = Instant::now();
    let key = "direct/baseline.bin";
    let up = srv
        .client
        .create_multipart_upload()
        .bucket(&srv.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_string();
    let part = 16 * MIB;
    let mut tasks = tokio::task::JoinSet::new();
    let mut parts = Vec::new();
    let mut next = 0usize;
    while next < total || !tasks.is_empty() {
        while next < total && tasks.len() < 8 {
            let (client, bucket, id, path) = (
                srv.client.clone(),
                srv.bucket.clone(),
                id.clone(),
                path.to_path_buf(),
            );
            let (off, n) = (next, part.min(total - next));
            let number = (off / part + 1) as i32;
            tasks.spawn(async move {
                let body = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    std::fs::File::open(path)
                        .unwrap()
                        .read_exact_at(&mut buf, off as u64)
                        .unwrap();
                    buf
                })
                .await
                .unwrap();
                let r = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(number)
                    .body(body.into())
                    .send()
                    .await
                    .unwrap();
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(r.e_tag().unwrap())
                    .build()
            });
            next += n;
        }
        parts.push(tasks.join_next().await.unwrap().unwrap());
    }
    parts.sort_by_key(|p| p.part_number());
    srv.client
        .complete_multipart_upload()
        .bucket(&srv.bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    t.elapsed()
}

/// Reads the file in 1 MiB pieces and sends them through a loopback TCP connection to
/// a reader that drops them: the kernel copies a networked reader cannot avoid.
fn file_over_tcp(path: &std::path::Path) -> Duration {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; MIB];
        while s.read(&mut buf).unwrap() > 0 {}
    });
    let t = Instant::now();
    let mut out = std::net::TcpStream::connect(addr).unwrap();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).unwrap();
    }
    drop(out);
    sink.join().unwrap();
    t.elapsed()
}

/// GETs `total` bytes of `key` as ranges of `piece` bytes, `depth` at a time.
/// GETs `total` bytes of `key` in `piece`-sized ranges, `depth` at once; with `sink`,
/// each chunk is also written to that file at its offset (what any cache must do).
async fn direct_get(
    srv: &S3TestServer,
    key: &str,
    total: usize,
    (piece, depth): (usize, usize),
    sink: Option<&Path>,
) -> Duration {
    let sink = sink.map(|p| Arc::new(std::fs::File::create(p).unwrap()));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (mut next, mut got) = (0usize, 0usize);
    while next < total || !tasks.is_empty() {
        while next < total && tasks.len() < depth {
            let (client, bucket, key) = (srv.client.clone(), srv.bucket.clone(), key.to_string());
            let range = format!("bytes={next}-{}", (next + piece).min(total) - 1);
            let (sink, start) = (sink.clone(), next as u64);
            tasks.spawn(async move {
                let mut body = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .range(range)
                    .send()
                    .await
                    .unwrap()
                    .body;
                let mut n = 0;
                while let Some(chunk) = body.try_next().await.unwrap() {
                    if let Some(f) = &sink {
                        std::os::unix::fs::FileExt::write_all_at(&**f, &chunk, start + n as u64).unwrap();
                    }
                    n += chunk.len();
                }
                n
            });
            next += piece;
        }
        got += tasks.join_next().await.unwrap().unwrap();
    }
    assert_eq!(got, total);
    t.elapsed()
}

/// Inode reads straight from the cache engine, two threads over 2,000 files: calls/s
/// with the attribute hot set of `attr_cache_bytes` (0: every read from sled).
fn engine_inode_reads(dir: &Path, attr_cache_bytes: u64) -> f64 {
    use bucketgate_cache::{Cache, CacheOptions, Caller, CreateMode, ROOT_ID, SetAttr};
    let opts = CacheOptions {
        attr_cache_bytes,
        ..CacheOptions::default()
    };
    let c = Cache::open(dir, opts).unwrap();
    let u = Caller::new(1000, 1000, vec![]);
    let mut ids: Vec<u64> = Vec::new();
    for i in 0..2000 {
        let name = format!("f{i}");
        let id = match c.lookup(&u, ROOT_ID, name.as_bytes()) {
            Ok(f) => f.id,
            Err(_) => {
                let how = CreateMode::Unchecked(SetAttr::default());
                c.create(&u, ROOT_ID, name.as_bytes(), how).unwrap().0.id
            }
        };
        ids.push(id);
    }
    let reads = 400_000usize;
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..2 {
            let (c, ids) = (&c, &ids);
            s.spawn(move || {
                for n in (w..reads).step_by(2) {
                    std::hint::black_box(c.get(ids[n * 7919 % ids.len()]).unwrap());
                }
            });
        }
    });
    reads as f64 / t.elapsed().as_secs_f64()
}

/// Figure 8: `ls -l` of a directory of 10,000 objects the gateway never listed.
async fn ls_of_unlisted(srv: &S3TestServer, tmp: &Path) {
    let objects = 10_000usize;
    for i in 0..objects {
        let key = format!("bench/unlisted/o{i:05}");
        let path = srv.object_path(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![b'u'; 100]).unwrap();
        srv.set_etag(&key, &format!("{i:032x}"));
    }
    // Each client, and the baseline's, runs on a runtime worker: a reply handed to the
    // bench's main thread costs a thread wake-up per call, which a kernel client does
    // not pay.
    let ls = move |c: Arc<Client>, root: Vec<u8>| async move {
        let t = Instant::now();
        let d = c.lookup(&root, "unlisted").await;
        let looked_up = t.elapsed();
        let handles = c.readdirplus_handles(&d).await;
        assert_eq!(handles.len(), objects, "every entry with its handle");
        let listed = t.elapsed();
        for h in &handles {
            c.getattr(h).await;
        }
        let all = t.elapsed();
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            println!(
                "  LOOKUP {looked_up:?}, READDIRPLUS {:?}, GETATTRs {:?}",
                listed - looked_up,
                all - listed
            );
        }
        (listed, all)
    };
    let dir = tmp.join("ls");
    std::fs::create_dir_all(&dir).unwrap();
    let gw = gateway(srv, &dir, Duration::from_secs(3600)).await;
    let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
    let root = c.mount("/data").await;
    let (cold_plus, cold) = tokio::spawn(ls(c.clone(), root.clone())).await.unwrap();
    let (warm_plus, warm) = tokio::spawn(ls(c.clone(), root.clone())).await.unwrap();
    // The floor of reading 10,000 objects' metadata: as many HEADs, 64 in flight, from
    // a plain aws-sdk-s3 client.
    let (client, bucket) = (srv.client.clone(), srv.bucket.clone());
    let direct_heads = tokio::spawn(async move {
        let t = Instant::now();
        let heads = futures::stream::iter(0..objects)
            .map(|i| {
                let (client, bucket) = (client.clone(), bucket.clone());
                async move {
                    client
                        .head_object()
                        .bucket(bucket)
                        .key(format!("bench/unlisted/o{i:05}"))
                        .send()
                        .await
                        .expect("HEAD")
                }
            })
            .buffer_unordered(64);
        futures::pin_mut!(heads);
        while heads.next().await.is_some() {}
        t.elapsed()
    })
    .await
    .unwrap();
    // The Linux client answers ls -l's stat() calls from the attributes READDIRPLUS
    // brought; the GETATTR of every entry after it is the worst case (no attribute
    // cache).
    row(
        "8 ls -l: READDIRPLUS, never listed",
        cold_plus.as_secs_f64() * 1000.0,
        "ms",
        Some((warm_plus.as_secs_f64() * 1000.0, "the same, attributes known")),
    );
    row(
        "8 ls -l, 10,000 objects never listed",
        cold.as_secs_f64() * 1000.0,
        "ms",
        Some((warm.as_secs_f64() * 1000.0, "the same, attributes known")),
    );
    row(
        "8 ls -l, 10,000 objects never listed",
        cold.as_secs_f64() * 1000.0,
        "ms",
        Some((
            direct_heads.as_secs_f64() * 1000.0,
            "10,000 HEADs, 64 in flight, aws-sdk-s3",
        )),
    );
    gw.shutdown().await;
    // The same against a store 5 ms away (every HEAD, GET and LIST waits that long
    // first), as a gateway in another region than its bucket would see.
    let dir = tmp.join("ls-far");
    std::fs::create_dir_all(&dir).unwrap();
    let far = faulty::Faulty::new(Arc::new(srv.store().await));
    far.read_latency_us
        .store(5_000, std::sync::atomic::Ordering::Relaxed);
    let cfg = config(srv, &dir, Duration::from_secs(3600), Duration::from_secs(3600));
    let gw = Gateway::open(cfg, None, Some(far))
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
    let root = c.mount("/data").await;
    let (_, far_ls) = tokio::spawn(ls(c.clone(), root.clone())).await.unwrap();
    row(
        "8 ls -l, the store 5 ms away",
        far_ls.as_secs_f64() * 1000.0,
        "ms",
        Some((cold.as_secs_f64() * 1000.0, "store in-process")),
    );
    gw.shutdown().await;
    // The alternative: attributes left out of READDIRPLUS, so the client LOOKUPs each.
    let dir = tmp.join("ls-lookup");
    std::fs::create_dir_all(&dir).unwrap();
    let gw = gateway(srv, &dir, Duration::from_secs(3600)).await;
    let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
    let root = c.mount("/data").await;
    let t = Instant::now();
    let d = c.lookup(&root, "unlisted").await;
    let names = c.readdir_names(&d).await;
    assert_eq!(names.len(), objects);
    row(
        "8 READDIR alone, cold (the listing)",
        t.elapsed().as_secs_f64() * 1000.0,
        "ms",
        None,
    );
    for n in &names {
        c.lookup(&d, n).await;
    }
    row(
        "8 READDIR + a LOOKUP of each, cold",
        t.elapsed().as_secs_f64() * 1000.0,
        "ms",
        Some((cold.as_secs_f64() * 1000.0, "READDIRPLUS reading attributes")),
    );
    gw.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let total = mib * MIB;
    let gib = total as f64 / (1u64 << 30) as f64;
    let srv = S3TestServer::start().await;
    // BENCH_DIR is made when missing; one that cannot be made is named in the panic.
    let bench_dir = std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into());
    std::fs::create_dir_all(&bench_dir).unwrap_or_else(|e| panic!("BENCH_DIR {bench_dir}: {e}"));
    let tmp = tempfile::tempdir_in(&bench_dir).unwrap_or_else(|e| panic!("BENCH_DIR {bench_dir}: {e}"));
    let block: Arc<Vec<u8>> = Arc::new((0..MIB).map(|i| (i * 31 % 251) as u8).collect());
    println!(
        "bucketgate bench: {mib} MiB, cache and S3 data under {}",
        tmp.path().display()
    );
    // BENCH_FIGURES=N runs only figure N, for the figures with a setup of their own
    // (figures 1-7 share one gateway and its data).
    match std::env::var("BENCH_FIGURES").as_deref() {
        Ok("8") => return ls_of_unlisted(&srv, tmp.path()).await,
        Ok("9") => return sparse_upload(tmp.path()).await,
        Ok("10") => return non_readers(&srv, tmp.path()).await,
        Ok("11") => return small_durable_files(&srv, tmp.path()).await,
        Ok("12") => return smb_beside_nfs(&srv, tmp.path(), total, &block).await,
        Ok("13") => return rate_limited_uploads(&srv, tmp.path(), total / 4, &block).await,
        Ok("14") => return propagation(tmp.path()).await,
        Ok("15") => return small_uploads(&srv, tmp.path()).await,
        _ => {}
    }

    // 1. ingest
    let raw = raw_write(&tmp.path().join("raw.bin"), total, &block);
    let gw = gateway(&srv, tmp.path(), Duration::from_secs(3600)).await;
    let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
    let root = c.mount("/data").await;
    let fh = c.create(&root, "ingest.bin").await;
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    nfs_write(&c, &fh, total, 16, &block).await;
    let ingest = t.elapsed();
    let ingest_cpu = cpu_seconds() - cpu0;
    let mbps = |d: Duration| total as f64 / MIB as f64 / d.as_secs_f64();
    // The same baseline again right after: on a VM whose free memory goes back to
    // the host, writing fresh page cache costs several times more at one moment than
    // at the next; the two baselines bracket what the gateway's run met.
    let raw_after_path = tmp.path().join("raw-after.bin");
    let raw_after = raw_write(&raw_after_path, total, &block);
    std::fs::remove_file(&raw_after_path).unwrap();
    row(
        "1 ingest (16 x 1 MiB in flight)",
        mbps(ingest),
        "MiB/s",
        Some((mbps(raw), "write + fdatasync, before")),
    );
    row(
        "1 ingest (16 x 1 MiB in flight)",
        mbps(ingest),
        "MiB/s",
        Some((mbps(raw_after), "write + fdatasync, after")),
    );
    row("6 ingest CPU", ingest_cpu / gib, "s/GiB", None);

    // 2. upload drain
    let t = Instant::now();
    flush(&gw).await;
    let drain = t.elapsed();
    let direct = direct_multipart(&srv, &tmp.path().join("raw.bin"), total).await;
    row(
        "2 upload drain COMMIT -> clean",
        mbps(drain),
        "MiB/s",
        Some((mbps(direct), "aws-sdk-s3 multipart")),
    );

    // 5. warm read
    let cache_file = std::fs::read_dir(tmp.path().join("cache/shares/data/data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .unwrap()
        .path();
    let t = Instant::now();
    let mut f = std::fs::File::open(&cache_file).unwrap();
    let mut sink = vec![0u8; MIB];
    let mut n = 0;
    while let Ok(k) = std::io::Read::read(&mut f, &mut sink) {
        if k == 0 {
            break;
        }
        n += k;
    }
    let raw_read = t.elapsed();
    assert_eq!(n, total);
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let got = nfs_read(&c, &fh, total, 16).await;
    let warm = t.elapsed();
    let read_cpu = cpu_seconds() - cpu0;
    assert_eq!(got, total);
    row(
        "5 warm read (16 x 1 MiB in flight)",
        mbps(warm),
        "MiB/s",
        Some((mbps(raw_read), "read of the cache file")),
    );
    row(
        "5 warm read",
        mbps(warm),
        "MiB/s",
        Some((mbps(file_over_tcp(&cache_file)), "read + loopback TCP")),
    );
    row("6 warm read CPU", read_cpu / gib, "s/GiB", None);

    // 5. cold read: a second gateway with an empty cache reads what the first uploaded.
    let cold_dir = tmp.path().join("cold");
    std::fs::create_dir_all(&cold_dir).unwrap();
    let gw2 = gateway(&srv, &cold_dir, Duration::from_secs(3600)).await;
    let c2 = Client::connect(gw2.nfs_addr, 1000, 1000).await;
    let root2 = c2.mount("/data").await;
    let fh2 = c2.lookup(&root2, "ingest.bin").await;
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let got = nfs_read(&c2, &fh2, total, 16).await;
    let cold = t.elapsed();
    let cold_cpu = cpu_seconds() - cpu0;
    let cpu0 = cpu_seconds();
    let ranged = direct_get(&srv, "bench/ingest.bin", total, (8 * MIB, 8), None).await;
    let ranged_cpu = cpu_seconds() - cpu0;
    let single = direct_get(&srv, "bench/ingest.bin", total, (total, 1), None).await;
    let cpu0 = cpu_seconds();
    let stored_path = tmp.path().join("ranged-to-disk.bin");
    let stored = direct_get(&srv, "bench/ingest.bin", total, (8 * MIB, 8), Some(&stored_path)).await;
    let stored_cpu = cpu_seconds() - cpu0;
    std::fs::remove_file(&stored_path).unwrap();
    assert_eq!(got, total);
    row(
        "5 cold read (16 x 1 MiB in flight)",
        mbps(cold),
        "MiB/s",
        Some((mbps(ranged), "8 x 8 MiB ranged GETs")),
    );
    row(
        "5 cold read",
        mbps(cold),
        "MiB/s",
        Some((mbps(single), "one GET, streamed")),
    );
    row(
        "5 cold read",
        mbps(cold),
        "MiB/s",
        Some((mbps(stored), "ranged GETs + pwrite to a file")),
    );
    row(
        "6 cold read CPU (S3 server included)",
        cold_cpu / gib,
        "s/GiB",
        Some((ranged_cpu / gib, "ranged GETs")),
    );
    row(
        "6 cold read CPU (S3 server included)",
        cold_cpu / gib,
        "s/GiB",
        Some((stored_cpu / gib, "ranged GETs + pwrite")),
    );
    // What the cold read cost the store: GETs and bytes (more bytes than the file
    // means a block was fetched twice).
    let m = gw2.gateway.metrics.render();
    let metric = |prefix: &str, with: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(with))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!(
        "5 cold read cost                   {:>10.0} GETs, {:.0} MiB fetched for {} MiB read",
        metric("bucketgate_store_request_duration_seconds_count", "\"GetObject\""),
        metric("bucketgate_store_downloaded_bytes_total", "") / MIB as f64,
        total / MIB
    );
    gw2.shutdown().await;

    // 3. small files
    let files = 10_000usize;
    let dir = c.mkdir(&root, "small").await;
    let small = Arc::new(vec![7u8; 4096]);
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (addr, dir, small) = (gw.nfs_addr, dir.clone(), small.clone());
        tasks.spawn(async move {
            let c = Client::connect(addr, 1000, 1000).await;
            for i in (w..files).step_by(8) {
                let fh = c.create(&dir, &format!("f{i:05}")).await;
                c.write(&fh, 0, &small, 0).await;
                c.commit(&fh).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let created = t.elapsed();
    row(
        "3 small files to the cache (8 clients)",
        files as f64 / created.as_secs_f64(),
        "files/s",
        None,
    );
    let t = Instant::now();
    flush(&gw).await;
    row(
        "3 small files uploaded to S3",
        files as f64 / t.elapsed().as_secs_f64(),
        "files/s",
        None,
    );

    // 4. metadata
    let t = Instant::now();
    let n = c.readdirplus_all(&dir).await;
    assert_eq!(n, files + 2);
    row(
        "4 READDIRPLUS 10,000 entries",
        t.elapsed().as_secs_f64() * 1000.0,
        "ms",
        None,
    );
    for (name, lookup) in [
        ("4 GETATTR (8 in flight)", false),
        ("4 LOOKUP (8 in flight)", true),
    ] {
        let calls = 20_000usize;
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (c, fh, dir) = (c.clone(), fh.clone(), dir.clone());
            tasks.spawn(async move {
                for i in (w..calls).step_by(8) {
                    if lookup {
                        c.lookup(&dir, &format!("f{:05}", i % files)).await;
                    } else {
                        c.getattr(&fh).await;
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        row(name, calls as f64 / t.elapsed().as_secs_f64(), "calls/s", None);
    }
    let engine_dir = tmp.path().join("engine");
    let sled_only = engine_inode_reads(&engine_dir, 0);
    row(
        "4 inode reads in the engine (2 threads)",
        engine_inode_reads(&engine_dir, 64 << 20),
        "calls/s",
        Some((sled_only, "sled, no hot set")),
    );
    gw.shutdown().await;

    ls_of_unlisted(&srv, tmp.path()).await;

    // 7. upload_delay against a client that flushes its dirty pages periodically (the
    //    Linux kernel's flusher wakes every 5 s, dirty_writeback_centisecs): a growing
    //    file gets a WRITE burst + COMMIT every `period`. Time is scaled down 10x.
    let period = Duration::from_millis(500);
    let bursts = 12u32;
    let chunk = Arc::new(vec![3u8; 256 << 10]);
    for factor in [0.6, 1.2, 2.0] {
        let delay = period.mul_f64(factor);
        let dir = tmp.path().join(format!("delay-{factor}"));
        std::fs::create_dir_all(&dir).unwrap();
        let gw = gateway_with(&srv, &dir, delay, period * 100).await;
        let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
        let root = c.mount("/data").await;
        let fh = c.create(&root, &format!("growing-{factor}")).await;
        for i in 0..bursts {
            c.write(&fh, u64::from(i) * chunk.len() as u64, &chunk, 0).await;
            c.commit(&fh).await;
            tokio::time::sleep(period).await;
        }
        flush(&gw).await;
        let counters = &gw.gateway.shares[0].uploader.counters;
        let uploads = counters.objects_put.load(std::sync::atomic::Ordering::Relaxed);
        let sent = counters.bytes_uploaded.load(std::sync::atomic::Ordering::Relaxed);
        let written = u64::from(bursts) * chunk.len() as u64;
        println!(
            "7 upload_delay {factor:.1} x flush interval   {uploads:>4} uploads, {:.1}x the bytes written sent",
            sent as f64 / written as f64
        );
        gw.shutdown().await;
    }
}

/// Resident and peak resident memory of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `n` sequential 4 KiB FILE_SYNC WRITEs into a new file; each one's latency, sorted.
async fn filesync_latencies(c: &Arc<Client>, dir: &[u8], name: &str, n: usize) -> Vec<Duration> {
    let fh = c.create(dir, name).await;
    let block = vec![5u8; 4096];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        c.write(&fh, (i * block.len()) as u64, &block, 2).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

/// p50 and p99 rows of sorted latencies `busy` (while `during`) beside `quiet`.
fn latency_rows(what: &str, during: &str, busy: &[Duration], quiet: &[Duration], baseline: &str) {
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            &format!("{what} {name}, {during}"),
            pct(busy, p),
            "ms",
            Some((pct(quiet, p), baseline)),
        );
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

async fn sparse_upload(tmp: &Path) {
    // The S3 server stands in for one on another machine: its threads must not
    // compete with the gateway's file service as equals, so they run niced too.
    let s3_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(bucketgate::gateway::lower_thread_priority)
        .enable_all()
        .build()
        .unwrap();
    let (srv, received) = s3_rt.spawn(S3TestServer::start_null()).await.unwrap();
    let dir = tmp.join("sparse");
    std::fs::create_dir_all(&dir).unwrap();
    let gw = gateway_with(&srv, &dir, Duration::from_millis(100), Duration::from_secs(60)).await;
    let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
    let root = c.mount("/data").await;
    let n = 2000;
    let quiet = filesync_latencies(&c, &root, "quiet", n).await;
    let huge = c.create(&root, "huge.img").await;
    c.write(&huge, (5u64 << 40) - 1, b"x", 2).await;
    // Measure once the upload is under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(std::sync::atomic::Ordering::Relaxed) < 1 << 30 {
        assert!(
            Instant::now() < deadline,
            "the sparse file's upload did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let peak = Arc::new(std::sync::Mutex::new(0f64));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let (rss, _) = rss_mib();
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let sent0 = received.load(std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    let other = Client::connect(gw.nfs_addr, 2000, 2000).await;
    let other_root = other.mount("/data").await;
    let busy = filesync_latencies(&other, &other_root, "busy", n).await;
    let window = t.elapsed();
    let sent = received.load(std::sync::atomic::Ordering::Relaxed) - sent0;
    sampler.abort();
    let peak = *peak.lock().unwrap();
    let (_, hwm) = rss_mib();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    latency_rows(
        "9 FILE_SYNC 4 KiB",
        "5 TiB uploading",
        &busy,
        &quiet,
        "the same, nothing uploading",
    );
    println!(
        "9 while uploading: peak RSS {peak:.0} MiB (process high-water mark {hwm:.0} MiB); {:.1} GiB of the sparse file sent in {:.1} s ({:.0} MiB/s)",
        gib(sent),
        window.as_secs_f64(),
        sent as f64 / MIB as f64 / window.as_secs_f64()
    );
    gw.shutdown().await;
    drop(srv);
    s3_rt.shutdown_background();
}

/// `n` sequential READs of 1 MiB (cycling over the file); each one's latency, sorted.
async fn read_latencies(c: &Arc<Client>, fh: &[u8], file_mib: u64, n: u64) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        c.read(fh, (i % file_mib) * MIB as u64, MIB as u32).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

async fn non_readers(srv: &S3TestServer, tmp: &Path) {
    let dir = tmp.join("non-readers");
    std::fs::create_dir_all(&dir).unwrap();
    let gw = gateway(srv, &dir, Duration::from_secs(3600)).await;
    let good = Client::connect_from(gw.nfs_addr, [127, 0, 0, 2].into(), 1000, 1000).await;
    let root = good.mount("/data").await;
    let fh = good.create(&root, "shared.bin").await;
    let file_mib = 16u64;
    let block = vec![9u8; MIB];
    for i in 0..file_mib {
        good.write(&fh, i * MIB as u64, &block, 0).await;
    }
    good.commit(&fh).await;
    let n = 400;
    let quiet = read_latencies(&good, &fh, file_mib, n).await;
    let (rss_before, _) = rss_mib();
    let records = support::rpc::read_records(&fh, MIB as u32, 64);
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut s = tokio::net::TcpStream::connect(gw.nfs_addr).await.unwrap();
        s.write_all(&records).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = read_latencies(&good, &fh, file_mib, n).await;
    let (rss, hwm) = rss_mib();
    let held = gw.gateway.metrics.nfs_reply_bytes.get();
    latency_rows(
        "10 READ 1 MiB",
        "16 non-readers",
        &busy,
        &quiet,
        "the same, no non-readers",
    );
    println!(
        "10 with 16 non-readers: RSS {rss:.0} MiB (before them {rss_before:.0} MiB, process high-water mark {hwm:.0} MiB); reply memory held {:.1} MiB",
        held as f64 / MIB as f64
    );
    drop(stalled);
    gw.shutdown().await;
}

/// Figure 11: CREATE + WRITE FILE_SYNC of 4 KiB files on 8 connections, beside 8
/// threads doing create + write + fdatasync of their own files on the same disk.
/// Figure 11's baseline: `threads` threads creating, writing 4 KiB and fdatasyncing
/// files of their own in `dir`; files per second.
fn raw_small_files(dir: &Path, files: usize, threads: usize) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..threads {
            s.spawn(move || {
                use std::io::Write;
                for i in (w..files).step_by(threads) {
                    let mut f = std::fs::File::create(dir.join(format!("f{i:06}"))).unwrap();
                    f.write_all(&[7u8; 4096]).unwrap();
                    f.sync_data().unwrap();
                }
            });
        }
    });
    files as f64 / t.elapsed().as_secs_f64()
}

/// Figure 11: `files` files of 4 KiB made durable through `conns` connections into a
/// new directory `dir_name`, each CREATE + WRITE FILE_SYNC (`commit` false) or CREATE
/// + WRITE UNSTABLE + COMMIT; (files/s, each file's latency).
async fn durable_small_files(
    gw: &Running,
    dir_name: &str,
    files: usize,
    conns: usize,
    commit: bool,
) -> (f64, Vec<Duration>) {
    let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
    let root = c.mount("/data").await;
    let dir = c.mkdir(&root, dir_name).await;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..conns {
        let (addr, dir) = (gw.nfs_addr, dir.clone());
        tasks.spawn(async move {
            let c = Client::connect(addr, 1000, 1000).await;
            let mut lat = Vec::new();
            for i in (w..files).step_by(conns) {
                let one = Instant::now();
                let fh = c.create(&dir, &format!("f{i:06}")).await;
                if commit {
                    c.write(&fh, 0, &[7u8; 4096], 0).await;
                    c.commit(&fh).await;
                } else {
                    c.write(&fh, 0, &[7u8; 4096], 2).await;
                }
                lat.push(one.elapsed());
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.unwrap());
    }
    lat.sort();
    (files as f64 / t.elapsed().as_secs_f64(), lat)
}

async fn small_durable_files(srv: &S3TestServer, tmp: &Path) {
    let files = small_files();
    let raw = raw_small_files(&tmp.join("raw-small"), files, 8);
    let dir = tmp.join("gw-small");
    std::fs::create_dir_all(&dir).unwrap();
    // Uploads held back: the figure is the durable path to the cache.
    let gw = gateway(srv, &dir, Duration::from_secs(3600)).await;
    let cache = gw.gateway.shares[0].share.cache.clone();
    let mut runs = vec![
        ("FILE_SYNC", 8, files, false),
        ("FILE_SYNC", 32, files, false),
        ("UNSTABLE+COMMIT", 8, files, true),
        ("UNSTABLE+COMMIT", 32, files, true),
    ];
    if std::env::var("BENCH_SMALL_DECAY").as_deref() != Ok("0") {
        runs.push(("FILE_SYNC", 8, files * 10, false));
    }
    for (n, (how, conns, count, commit)) in runs.into_iter().enumerate() {
        let (flushes0, answered0) = cache.flush_counts();
        let (rate, lat) = durable_small_files(&gw, &format!("run{n}"), count, conns, commit).await;
        let (flushes, answered) = cache.flush_counts();
        row(
            &format!("11 {how} 4 KiB, {conns} conns, {count}"),
            rate,
            "files/s",
            Some((raw, "8 threads: create, write, fdatasync")),
        );
        println!(
            "11   p50 {:.1} ms, p99 {:.1} ms per file; {:.2} durable requests per metadata flush",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            (answered - answered0) as f64 / (flushes - flushes0).max(1) as f64
        );
    }
    gw.shutdown().await;
}

/// smbclient (SMB 3, as the guest) against `//127.0.0.1/data` on `port`, running
/// `commands` in `dir`; panics with its output when it reports an error.
fn smbclient(port: u16, dir: &Path, commands: &str) {
    let out = std::process::Command::new("smbclient")
        .args([
            "//127.0.0.1/data",
            "-p",
            &port.to_string(),
            "-N",
            "-m",
            "SMB3",
            "-c",
            commands,
        ])
        .current_dir(dir)
        .output()
        .expect("running smbclient");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("NT_STATUS_"),
        "smbclient -c '{commands}':\n{text}"
    );
}

async fn smb_beside_nfs(srv: &S3TestServer, tmp: &Path, total: usize, block: &Arc<Vec<u8>>) {
    const SMALL: usize = 1000;
    let have = |tool: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("smbd") && have("smbclient") && Path::new("/dev/fuse").exists()) {
        println!(
            "12 SKIPPED: needs smbd, smbclient and /dev/fuse (apt-get install samba samba-vfs-modules smbclient)"
        );
        return;
    }
    let dir = tmp.join("gw-smb");
    let local = dir.join("local");
    std::fs::create_dir_all(local.join("small")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(srv, &dir, Duration::from_secs(3600), Duration::from_secs(3600));
    cfg.shares[0].fuse_mount = Some(dir.join("mnt"));
    cfg.shares[0].smb = true;
    cfg.shares[0].smb_guest = true;
    cfg.smb.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.smb.run_smbd = true;
    cfg.smb.state_dir = Some(dir.join("smb"));
    let gw = start(srv, cfg).await;
    // What smbclient sends, in the page cache before it is timed.
    let src = local.join("src.bin");
    let mut f = std::fs::File::create(&src).unwrap();
    for _ in 0..total / MIB {
        f.write_all(block).unwrap();
    }
    drop(f);
    std::fs::read(&src).unwrap();
    for i in 0..SMALL {
        std::fs::write(local.join(format!("small/f{i:04}")), [7u8; 4096]).unwrap();
    }
    let smb = |commands: String| {
        let local = local.clone();
        async move {
            let t = Instant::now();
            tokio::task::spawn_blocking(move || smbclient(port, &local, &commands))
                .await
                .unwrap();
            t.elapsed()
        }
    };
    let mbps = |d: Duration| total as f64 / MIB as f64 / d.as_secs_f64();

    let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
    let root = c.mount("/data").await;
    let fh = c.create(&root, "nfs.bin").await;
    let t = Instant::now();
    nfs_write(&c, &fh, total, 16, block).await;
    let nfs_write_time = t.elapsed();
    let smb_write = smb("put src.bin smb.bin".into()).await;
    row(
        "12 SMB sequential write",
        mbps(smb_write),
        "MiB/s",
        Some((mbps(nfs_write_time), "NFS, 16 x 1 MiB in flight")),
    );
    let t = Instant::now();
    assert_eq!(nfs_read(&c, &fh, total, 16).await, total);
    let nfs_read_time = t.elapsed();
    // The first read after the write goes through the gateway (FUSE READs: the
    // kernel dropped the pages it wrote when their mtime moved); the next one finds
    // them in the mount's page cache (FOPEN_KEEP_CACHE), as a file read again would.
    let smb_read = smb("get smb.bin /dev/null".into()).await;
    row(
        "12 SMB warm read",
        mbps(smb_read),
        "MiB/s",
        Some((mbps(nfs_read_time), "NFS, 16 x 1 MiB in flight")),
    );
    let smb_again = smb("get smb.bin /dev/null".into()).await;
    row(
        "12 SMB read again",
        mbps(smb_again),
        "MiB/s",
        Some((mbps(nfs_read_time), "NFS, 16 x 1 MiB in flight")),
    );

    let small = c.mkdir(&root, "small-nfs").await;
    let t = Instant::now();
    for i in 0..SMALL {
        let fh = c.create(&small, &format!("f{i:04}")).await;
        c.write(&fh, 0, &[7u8; 4096], 2).await;
    }
    let nfs_small = SMALL as f64 / t.elapsed().as_secs_f64();
    let smb_small = smb("mkdir small-smb; cd small-smb; lcd small; prompt off; mput f*".into()).await;
    row(
        "12 SMB 4 KiB files, one client",
        SMALL as f64 / smb_small.as_secs_f64(),
        "files/s",
        Some((nfs_small, "NFS CREATE + WRITE FILE_SYNC")),
    );
    gw.shutdown().await;
}

/// Figure 13: one gateway per run, `total` bytes in 8 files written through NFS
/// while they upload (upload_delay 100 ms); returns (seconds until every write is
/// committed, seconds until every byte is in the store), both from the first write.
async fn limited_run(
    srv: &S3TestServer,
    dir: &Path,
    total: usize,
    block: &Arc<Vec<u8>>,
    limit: impl FnOnce(&mut Config),
) -> (Duration, Duration) {
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg = config(srv, dir, Duration::from_millis(100), Duration::from_secs(60));
    limit(&mut cfg);
    let gw = start(srv, cfg).await;
    let c = Client::connect(gw.nfs_addr, 1000, 1000).await;
    let root = c.mount("/data").await;
    let t = Instant::now();
    for i in 0..8 {
        let fh = c.create(&root, &format!("limited-{i}.bin")).await;
        nfs_write(&c, &fh, total / 8, 16, block).await;
    }
    let write = t.elapsed();
    flush(&gw).await;
    let drain = t.elapsed();
    gw.shutdown().await;
    (write, drain)
}

async fn rate_limited_uploads(srv: &S3TestServer, tmp: &Path, total: usize, block: &Arc<Vec<u8>>) {
    use bucketgate::config::{Rate, RateWindow};
    let total = total.max(128 * MIB) / (8 * MIB) * (8 * MIB);
    let mbps = |d: Duration| total as f64 / MIB as f64 / d.as_secs_f64();
    let (free_write, free_drain) = limited_run(srv, &tmp.join("unlimited"), total, block, |_| {}).await;
    // A quarter of what this machine sends, so the limit is what holds uploads back.
    let limit = ((mbps(free_drain) / 4.0) as u64).max(1) << 20;
    let limit_mib = (limit >> 20) as f64;
    let (write, drain) = limited_run(srv, &tmp.join("limited"), total, block, |c| {
        c.upload.rate_limit = Rate(Some(limit))
    })
    .await;
    let window: RateWindow = toml::from_str(&format!(
        "days = \"daily\"\nhours = \"00:00-24:00\"\nrate = \"{}MiB/s\"",
        limit >> 20
    ))
    .unwrap();
    let (sched_write, sched_drain) = limited_run(srv, &tmp.join("scheduled"), total, block, |c| {
        c.upload.rate_schedule = vec![window]
    })
    .await;
    // The unlimited run again: this VM's disk and page cache vary from one run to the
    // next; the two bracket what the limited runs met.
    let (free_write2, _) = limited_run(srv, &tmp.join("unlimited-again"), total, block, |_| {}).await;
    println!(
        "13 upload rate limit {limit_mib:.0} MiB/s, {} MiB: unlimited write+upload {:.1} MiB/s; unlimited NFS writes {:.1} and {:.1} MiB/s",
        total / MIB,
        mbps(free_drain),
        mbps(free_write),
        mbps(free_write2)
    );
    row(
        "13 upload rate, rate_limit",
        mbps(drain),
        "MiB/s",
        Some((limit_mib, "the limit")),
    );
    row(
        "13 upload rate, rate_schedule",
        mbps(sched_drain),
        "MiB/s",
        Some((limit_mib, "the limit")),
    );
    let free = mbps(free_write).max(mbps(free_write2));
    row(
        "13 NFS writes, uploads limited",
        mbps(write),
        "MiB/s",
        Some((free, "best unlimited run")),
    );
    row(
        "13 NFS writes, uploads scheduled",
        mbps(sched_write),
        "MiB/s",
        Some((free, "best unlimited run")),
    );
}

/// Figure 14: the median and the largest of `d`.
fn median_max(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    (ms(d[d.len() / 2]), ms(d[d.len() - 1]))
}

async fn propagation(tmp: &Path) {
    const FILES: usize = 50;
    let here = std::process::Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !here {
        println!("14 SKIPPED: needs moto_server (pip install 'moto[server]')");
        return;
    }
    let m = moto::Moto::start().await;
    let bucket = "bench-events";
    let queues = m
        .bucket_with_queues(bucket, &["gateway-a", "gateway-b", "plain"])
        .await;

    // The notification path alone: PutObject, then the event from a queue.
    let mut plain = Vec::new();
    for i in 0..FILES {
        let key = format!("plain/{i}");
        m.s3.put_object()
            .bucket(bucket)
            .key(&key)
            .body(vec![1u8; 4096].into())
            .send()
            .await
            .unwrap();
        let t = Instant::now();
        'wait: loop {
            let got = m
                .sqs
                .receive_message()
                .queue_url(&queues[2])
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            for msg in got.messages() {
                let _ = m
                    .sqs
                    .delete_message()
                    .queue_url(&queues[2])
                    .receipt_handle(msg.receipt_handle().unwrap())
                    .send()
                    .await;
                let events =
                    bucketgate::events::parse::parse(msg.body().unwrap_or_default()).unwrap_or_default();
                if events.iter().any(|e| e.key == key) {
                    break 'wait;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no event for {key}");
        }
        plain.push(t.elapsed());
    }

    let gateway = |name: &str, queue: &str| {
        let dir = tmp.join(name);
        let toml = format!(
            "[nfs]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[cache]\ndir = \"{}\"\ncapacity = \"4GiB\"\nupload_delay = \"100ms\"\n\
             [[share]]\nname = \"data\"\nurl = \"s3://{bucket}/gw/\"\nendpoint = \"{}\"\npath_style = true\nregion = \"us-east-1\"\nevents = \"{queue}\"\n",
            dir.join("cache").display(),
            m.endpoint
        );
        Config::from_toml(&toml).unwrap()
    };
    let creds = || Some((moto::ACCESS_KEY.to_owned(), moto::SECRET_KEY.to_owned()));
    let a = Gateway::open(gateway("a", &queues[0]), creds(), None)
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    let b = Gateway::open(gateway("b", &queues[1]), creds(), None)
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    let ca = Client::connect(a.nfs_addr, 1000, 1000).await;
    let cb = Client::connect(b.nfs_addr, 1000, 1000).await;
    let (ra, rb) = (ca.mount("/data").await, cb.mount("/data").await);
    cb.readdir_names(&rb).await; // B has listed the directory: what follows are events
    let mut through = Vec::new();
    for i in 0..FILES {
        let name = format!("f{i}.txt");
        let fh = ca.create(&ra, &name).await;
        ca.write(&fh, 0, &[7u8; 4096], 2).await;
        flush(&a).await;
        let t = Instant::now();
        while cb.try_lookup(&rb, &name).await.is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{name} never showed through B"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        through.push(t.elapsed());
    }
    let (pm, px) = median_max(plain);
    let (gm, gx) = median_max(through);
    row(
        "14 A's upload -> B shows it, median",
        gm,
        "ms",
        Some((pm, "PutObject -> its event, median")),
    );
    row(
        "14 A's upload -> B shows it, max",
        gx,
        "ms",
        Some((px, "PutObject -> its event, max")),
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Figure 15's baselines: `files` PutObjects of 4 KiB, `conc` in flight; files/s.
/// `as_gateway`: with what every gateway upload carries too, the file's POSIX
/// attributes as user metadata and `If-None-Match: *` (the conflict check).
async fn direct_small_puts(
    srv: &S3TestServer,
    prefix: &str,
    files: usize,
    conc: usize,
    as_gateway: bool,
) -> f64 {
    let permits = Arc::new(tokio::sync::Semaphore::new(conc));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..files {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (client, bucket, key) = (
            srv.client.clone(),
            srv.bucket.clone(),
            format!("{prefix}/f{i:06}"),
        );
        tasks.spawn(async move {
            let mut put = client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(vec![7u8; 4096].into());
            if as_gateway {
                put = put
                    .if_none_match("*")
                    .metadata("file-owner", "1000")
                    .metadata("file-group", "1000")
                    .metadata("file-permissions", "0100644")
                    .metadata("file-mtime", "1796653206454584346ns");
            }
            put.send().await.unwrap();
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    files as f64 / t.elapsed().as_secs_f64()
}

async fn small_uploads(srv: &S3TestServer, tmp: &Path) {
    let files = small_files();
    for conc in [8, 32, 64] {
        let dir = tmp.join(format!("small-up-{conc}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = config(srv, &dir, Duration::from_secs(3600), Duration::from_secs(3600));
        cfg.upload.small_file_concurrency = conc;
        let gw = start(srv, cfg).await;
        durable_small_files(&gw, &format!("up{conc}"), files, 8, true).await;
        let cache = gw.gateway.shares[0].share.cache.clone();
        let (flushes0, answered0) = cache.flush_counts();
        let t = Instant::now();
        flush(&gw).await;
        let rate = files as f64 / t.elapsed().as_secs_f64();
        let (flushes, answered) = cache.flush_counts();
        println!(
            "15   {:.2} metadata flushes per file uploaded, {:.2} durable requests per flush",
            (flushes - flushes0) as f64 / files as f64,
            (answered - answered0) as f64 / (flushes - flushes0).max(1) as f64
        );
        gw.shutdown().await;
        let plain = direct_small_puts(srv, &format!("plain-{conc}"), files, conc, false).await;
        let alike = direct_small_puts(srv, &format!("alike-{conc}"), files, conc, true).await;
        row(
            &format!("15 small uploads, {conc} at a time"),
            rate,
            "files/s",
            Some((plain, "aws-sdk-s3 PutObject, as many at a time")),
        );
        row(
            &format!("15 small uploads, {conc} at a time"),
            rate,
            "files/s",
            Some((alike, "the same with metadata + If-None-Match")),
        );
    }
}
