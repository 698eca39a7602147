//! Soak: several NFS clients write, overwrite, rename and delete (each change
//! COMMITted before it counts) while the S3 server is stopped and restarted and the
//! real gateway binary is killed with SIGKILL (or stopped with SIGTERM) and started
//! again between rounds. At the end the bucket equals a model of what was committed.
//! About a minute; SOAK_ROUNDS=<n> makes it longer, SOAK_SEED=<n> replays a run.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::child::{ChildGateway, bucket_contents};
use common::nfs::*;
use common::s3server::S3TestServer;
use nfs3_types::nfs3::stable_how;

const CLIENTS: usize = 3;
const OPS_PER_ROUND: usize = 25;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One client's directory: name → committed bytes.
type Model = BTreeMap<String, Vec<u8>>;

/// Runs one round of random committed changes in `dir` of client `me`.
async fn client_round(addr: std::net::SocketAddr, me: usize, mut model: Model, seed: u64) -> Model {
    let mut rng = Rng(seed | 1);
    let mut c = mount(addr).await;
    let root = c.root_nfs_fh3();
    let dir_name = format!("c{me}");
    let dir = match lookup(&mut c, &root, &dir_name).await {
        Ok(fh) => fh,
        Err(_) => mkdir(&mut c, &root, &dir_name, 0o755).await,
    };
    for _ in 0..OPS_PER_ROUND {
        let names: Vec<String> = model.keys().cloned().collect();
        let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
        let fresh = format!("f{}", rng.below(1_000_000));
        match rng.below(100) {
            // New file (now and then a multipart-sized one).
            r if r < 35 || names.is_empty() => {
                if model.contains_key(&fresh) {
                    continue;
                }
                let len = if r < 2 {
                    6 << 20
                } else {
                    rng.below(200_000) as usize
                };
                let data = body(len, rng.next());
                put_file(&mut c, &dir, &fresh, &data).await;
                model.insert(fresh, data);
            }
            // Overwrite part of a file (maybe extending it), then COMMIT.
            r if r < 65 => {
                let n = pick(&mut rng);
                let fh = lookup(&mut c, &dir, &n)
                    .await
                    .unwrap_or_else(|e| panic!("lookup c{me}/{n}: {e:?}"));
                let cur = model.get_mut(&n).unwrap();
                let off = rng.below(cur.len() as u64 + 1) as usize;
                let patch = body(1 + rng.below(70_000) as usize, rng.next());
                write_at(&mut c, &fh, off as u64, &patch, stable_how::UNSTABLE)
                    .await
                    .expect("write");
                commit(&mut c, &fh).await;
                if cur.len() < off + patch.len() {
                    cur.resize(off + patch.len(), 0);
                }
                cur[off..off + patch.len()].copy_from_slice(&patch);
            }
            // Rename to a fresh name or over another file.
            r if r < 85 => {
                let from = pick(&mut rng);
                let to = if rng.below(3) == 0 { pick(&mut rng) } else { fresh };
                if from == to {
                    continue;
                }
                rename(&mut c, &dir, &from, &dir, &to)
                    .await
                    .unwrap_or_else(|e| panic!("rename c{me}/{from} -> {to}: {e:?}"));
                let data = model.remove(&from).unwrap();
                model.insert(to, data);
            }
            _ => {
                let n = pick(&mut rng);
                remove(&mut c, &dir, &n)
                    .await
                    .unwrap_or_else(|e| panic!("remove c{me}/{n}: {e:?}"));
                model.remove(&n);
            }
        }
    }
    model
}

/// The temporary directory goes with the test: a failure keeps the gateway's log
/// (RUST_LOG=bucketgate=debug makes it name every object written and deleted).
fn keep_log(gw: &ChildGateway, seed: u64) -> std::path::PathBuf {
    let kept = std::env::temp_dir().join(format!("soak-{seed}.log"));
    let _ = std::fs::copy(&gw.log_path, &kept);
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outages_and_kills_end_with_bucket_equal_to_model() {
    let rounds: usize = std::env::var("SOAK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("soak: {rounds} rounds, SOAK_SEED={seed}");
    let tmp = tempfile::tempdir().unwrap();
    let s3 = S3TestServer::start().await;
    let mut gw = ChildGateway::new(
        tmp.path(),
        &s3,
        "upload_delay = \"200ms\"\nmax_dirty_age = \"2s\"",
        "multipart_threshold = \"5MiB\"\npart_size = \"5MiB\"\nconcurrency = 4",
    );
    tokio::task::block_in_place(|| gw.start());
    let mut models: Vec<Model> = vec![Model::new(); CLIENTS];
    let mut rng = Rng(seed | 1);
    for round in 0..rounds {
        // The store goes away for a while during the round, at a random moment.
        let handle = s3.handle.clone();
        let (down_after, down_for) = (rng.below(1500), 300 + rng.below(2000));
        let outage = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(down_after)).await;
            handle.stop().await;
            tokio::time::sleep(Duration::from_millis(down_for)).await;
            handle.restart().await;
        });
        let mut tasks = Vec::new();
        for (me, m) in models.drain(..).enumerate() {
            tasks.push(tokio::spawn(client_round(gw.nfs_addr, me, m, rng.next())));
        }
        for t in tasks {
            match t.await {
                Ok(m) => models.push(m),
                Err(e) => panic!(
                    "SOAK_SEED={seed}: a client failed in round {round}: {e}; gateway log in {}",
                    keep_log(&gw, seed).display()
                ),
            }
        }
        outage.await.unwrap();
        // Uploads are running (short upload_delay): stop the gateway under them.
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        let kill = round % 3 != 2;
        eprintln!(
            "round {round}: {} files; {}",
            models.iter().map(|m| m.len()).sum::<usize>(),
            if kill { "kill -9" } else { "SIGTERM" }
        );
        tokio::task::block_in_place(|| if kill { gw.kill9() } else { gw.stop() });
        // Requests of the killed gateway that reached S3 still complete there.
        s3.handle.wait_idle().await;
        tokio::task::block_in_place(|| gw.start());
    }
    s3.handle.restart().await;
    tokio::task::block_in_place(|| gw.flush_wait(180));

    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (me, m) in models.iter().enumerate() {
        want.insert(format!("c{me}/"), Vec::new());
        for (n, data) in m {
            want.insert(format!("c{me}/{n}"), data.clone());
        }
    }
    let got = bucket_contents(&s3).await;
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, v)| {
            let g = &got[k];
            let shown = if g.starts_with(b"<unreadable") {
                let raw = std::fs::read(s3.object_path(k)).unwrap_or_default();
                format!(
                    "{} (s3s-fs file: {} bytes, equals the model: {})",
                    String::from_utf8_lossy(g),
                    raw.len(),
                    raw == *v
                )
            } else {
                format!("{} bytes, want {}", g.len(), v.len())
            };
            format!("{k}: {shown}")
        })
        .collect();
    let ok = missing.is_empty() && extra.is_empty() && wrong.is_empty();
    assert!(
        ok,
        "SOAK_SEED={seed}: missing {missing:?}, extra {extra:?}, wrong {wrong:?}; gateway log in {}",
        keep_log(&gw, seed).display()
    );
    // And through NFS after all that, every file reads as committed.
    let mut c = mount(gw.nfs_addr).await;
    let root = c.root_nfs_fh3();
    for (me, m) in models.iter().enumerate() {
        let dir = lookup(&mut c, &root, &format!("c{me}")).await.unwrap();
        for (n, data) in m {
            let fh = lookup(&mut c, &dir, n).await.unwrap();
            assert!(
                &read_all(&mut c, &fh).await == data,
                "SOAK_SEED={seed}: c{me}/{n}"
            );
        }
    }
    tokio::task::block_in_place(|| gw.stop());
}
