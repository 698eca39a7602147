//! Wires one gateway together from its config: per share a cache engine, an object
//! store and an uploader; one NFS listener; the admin listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bucketgate_cache::{Cache, CacheOptions};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ShareConfig};
use crate::nfs::nfs3::{NfsService, Share};
use crate::nfs::server::{Limits, serve};
use crate::remote::url::{ShareUrl, parse_share_url};
use crate::remote::{ObjectStore, local::LocalStore, s3::S3Settings, s3::S3Store};
use crate::upload::{UploadSettings, Uploader};

/// S3's limit on key length, which bounds paths in a share.
const MAX_KEY_BYTES: usize = 1024;

/// One share at run time.
pub struct ShareRuntime {
    pub config: ShareConfig,
    pub share: Arc<Share>,
    pub uploader: Arc<Uploader>,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: String,
}

/// The parts of a running gateway that the admin API and tests look at.
pub struct Gateway {
    pub config: Config,
    pub shares: Vec<ShareRuntime>,
    pub nfs: Arc<NfsService>,
    pub started: Instant,
}

/// A started gateway; dropping it does not stop it, `shutdown` does.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub nfs_addr: SocketAddr,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// The store a share URL names. `credentials` overrides the standard chain (tests).
pub async fn open_store(
    share: &ShareConfig,
    credentials: Option<(String, String)>,
) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    match parse_share_url(&share.url).map_err(anyhow::Error::msg)? {
        ShareUrl::S3 { bucket, prefix } => {
            let mut settings = S3Settings::from_share(share, bucket);
            settings.credentials = credentials;
            let store = S3Store::new(settings).await.map_err(anyhow::Error::msg)?;
            Ok((Arc::new(store), prefix))
        }
        ShareUrl::Local { root } => {
            let store = LocalStore::new(root)?;
            Ok((Arc::new(store), String::new()))
        }
    }
}

impl Gateway {
    /// Opens every share's cache and store. `store_override` lets tests hand in a
    /// wrapped store (fault injection) for every share.
    pub async fn open(
        config: Config,
        credentials: Option<(String, String)>,
        store_override: Option<Arc<dyn ObjectStore>>,
    ) -> anyhow::Result<Gateway> {
        let mut shares = Vec::new();
        let dirty_limit = config.cache.dirty_limit.map(|b| b.0).unwrap_or(config.cache.capacity.0 / 10 * 8);
        for sc in &config.shares {
            let (store, prefix) = match &store_override {
                Some(s) => (s.clone(), parse_prefix(&sc.url)),
                None => open_store(sc, credentials.clone()).await.with_context(|| format!("share {}", sc.name))?,
            };
            if prefix.len() + 2 > MAX_KEY_BYTES {
                bail!("share {}: prefix too long", sc.name);
            }
            let dir: PathBuf = config.cache.dir.join("shares").join(&sc.name);
            let opts = CacheOptions {
                max_path_bytes: MAX_KEY_BYTES - prefix.len(),
                root_mode: sc.default_dir_mode.0,
                root_uid: sc.default_owner,
                root_gid: sc.default_group,
                dirty_limit_bytes: dirty_limit,
            };
            let cache = Arc::new(
                tokio::task::spawn_blocking(move || Cache::open(&dir, opts))
                    .await?
                    .with_context(|| format!("opening the cache of share {}", sc.name))?,
            );
            let uploader = Uploader::new(cache.clone(), store.clone(), prefix.clone(), upload_settings(&config));
            let list = sc.allowed_clients.clone();
            let share = Arc::new(Share {
                name: sc.name.clone(),
                export_path: format!("/{}", sc.name),
                cache,
                squash: sc.squash,
                read_only: sc.read_only,
                allowed_clients: list.clone(),
                allows: crate::config::client_matcher(&list).map_err(anyhow::Error::msg)?,
            });
            shares.push(ShareRuntime { config: sc.clone(), share, uploader, store, prefix });
        }
        let nfs = Arc::new(NfsService::new(shares.iter().map(|s| s.share.clone()).collect()));
        Ok(Gateway { config, shares, nfs, started: Instant::now() })
    }

    /// Starts the uploaders and the NFS listener.
    pub async fn start(self) -> anyhow::Result<Running> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for s in &self.shares {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            s.share.cache.set_notifier(tx);
            tasks.spawn(s.uploader.clone().run(rx, stop.clone()));
        }
        let listener = TcpListener::bind(self.config.nfs.listen)
            .await
            .with_context(|| format!("binding the NFS listener on {}", self.config.nfs.listen))?;
        let nfs_addr = listener.local_addr()?;
        let gateway = Arc::new(self);
        let nfs = gateway.nfs.clone();
        let limits = Limits::from_config(&gateway.config.nfs);
        let token = stop.clone();
        tasks.spawn(async move {
            if let Err(e) = serve(listener, nfs.clone(), nfs, limits, token.cancelled_owned()).await {
                tracing::error!(error = %e, "NFS server stopped");
            }
        });
        Ok(Running { gateway, nfs_addr, stop, tasks })
    }
}

fn parse_prefix(url: &str) -> String {
    match parse_share_url(url) {
        Ok(ShareUrl::S3 { prefix, .. }) => prefix,
        _ => String::new(),
    }
}

pub fn upload_settings(config: &Config) -> UploadSettings {
    UploadSettings {
        upload_delay: config.cache.upload_delay.0,
        max_dirty_age: config.cache.max_dirty_age.0,
        multipart_threshold: config.upload.multipart_threshold.0,
        part_size: config.upload.part_size.0,
        concurrency: config.upload.concurrency,
        part_concurrency: config.upload.part_concurrency,
    }
}

impl Running {
    /// Stops taking calls, lets calls in flight finish, stops the uploaders (the
    /// queue stays durable) and flushes every share's metadata.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        for s in &self.gateway.shares {
            let cache = s.share.cache.clone();
            let _ = tokio::task::spawn_blocking(move || cache.flush_metadata()).await;
        }
    }
}

/// `bucketgate serve`: runs until SIGTERM or SIGINT.
pub async fn run(config: Config, embedded: bool) -> anyhow::Result<()> {
    let gateway = Gateway::open(config, None, None).await?;
    let running = gateway.start().await?;
    let addr = running.nfs_addr;
    for s in &running.gateway.shares {
        tracing::info!(share = %s.share.export_path, url = %s.config.url, "exporting");
    }
    if embedded {
        println!("bucketgate is serving the embedded default configuration.");
        println!("  objects: {}", running.gateway.shares[0].config.url);
        println!("Mount it (Linux):");
        println!(
            "  sudo mount -t nfs -o vers=3,proto=tcp,port={p},mountport={p},nolock {h}:/data /mnt",
            p = addr.port(),
            h = addr.ip()
        );
        println!("or with libnfs: nfs-ls 'nfs://{h}//data/?nfsport={p}&mountport={p}&version=3'", p = addr.port(), h = addr.ip());
    }
    wait_for_signal().await;
    tracing::info!("stopping: finishing calls in flight, leaving the upload queue durable");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
