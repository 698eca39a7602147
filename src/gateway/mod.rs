//! Wires one gateway together from its config: per share a cache engine, an object
//! store and an uploader; one NFS listener; the admin listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bucketgate_cache::{Cache, CacheOptions, KeyCheck};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::config::ShareLocation;
use crate::config::{Config, ConflictCheck, ShareConfig};
use crate::metrics::Metrics;
use crate::nfs::NfsService;
use crate::nfs::portmap_server;
use crate::nfs::{Limits, serve};
use crate::remote::Instrumented;
use crate::remote::{ObjectStore, open_share_store};
use crate::share::ReadThrough;
use crate::share::Share;
use crate::upload::{UploadSettings, Uploader};

mod admin;
mod background;
pub use background::lower_thread_priority;
mod probe;

/// The admin API of a gateway, for tests that call it without HTTP.
pub fn admin_api(g: &Arc<Gateway>) -> Arc<dyn crate::admin::AdminApi> {
    Arc::new(admin::Api(g.clone()))
}

/// S3's limit on key length, which bounds paths in a share.
const MAX_KEY_BYTES: usize = 1024;

/// One share at run time.
pub struct ShareRuntime {
    pub config: ShareConfig,
    pub share: Arc<Share>,
    pub uploader: Arc<Uploader>,
    /// The share's store, as the uploader sees it (instrumented).
    pub store: Arc<dyn ObjectStore>,
    instrumented: Arc<Instrumented>,
    pub prefix: String,
}

/// The parts of a running gateway that the admin API and tests look at.
pub struct Gateway {
    pub config: Config,
    pub shares: Vec<ShareRuntime>,
    pub nfs: Arc<NfsService>,
    /// One poller per S3 event queue the shares name (`events`).
    pub event_feeds: Vec<Arc<crate::events::EventFeed>>,
    /// `[upload] rate_limit` and its schedule, shared by every share's store.
    pub rate_limiter: Option<Arc<crate::upload::RateLimiter>>,
    pub metrics: Metrics,
    pub started: Instant,
    /// How often an idle or unreachable store is probed for `/readyz` (see `probe`).
    pub probe_interval: Duration,
    nfs_listening: AtomicBool,
}

/// A started gateway; `shutdown` stops it.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub nfs_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The extra portmapper's address (UDP and TCP), when configured.
    pub portmap_addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// The shares' FUSE mounts (`fuse_mount`, SMB shares); unmounted when dropped.
    fuse: Vec<crate::fuse::FuseMount>,
    /// smbd, when `[smb] run_smbd` started it; stopped before the mounts go.
    smbd: Option<crate::smb::Smbd>,
    /// Dropped last: the uploaders' runtime (see `background`).
    _background: background::Background,
}

impl Gateway {
    /// Opens every share's cache and store. `store_override` hands every share the
    /// same store (tests wrap a real one with fault injection).
    pub async fn open(
        config: Config,
        credentials: Option<(String, String)>,
        store_override: Option<Arc<dyn ObjectStore>>,
    ) -> anyhow::Result<Gateway> {
        let metrics = Metrics::from_config(&config);
        let mut shares = Vec::new();
        let upload_memory = Arc::new(tokio::sync::Semaphore::new(config.upload.memory.0 as usize));
        let rate_limiter =
            crate::upload::RateLimiter::new(config.upload.rate_limit, config.upload.rate_schedule.clone());
        for sc in &config.shares {
            let (raw, prefix) = match &store_override {
                Some(s) => (s.clone(), prefix_of(&sc.url)),
                None => open_share_store(sc, credentials.clone())
                    .await
                    .map_err(anyhow::Error::msg)?,
            };
            if prefix.len() + 2 > MAX_KEY_BYTES {
                bail!("share {}: prefix too long", sc.name);
            }
            let instrumented = Instrumented::new(raw, metrics.clone(), &sc.name, rate_limiter.clone());
            let store: Arc<dyn ObjectStore> = instrumented.clone();
            let dir: PathBuf = config.cache.dir.join("shares").join(&sc.name);
            let opts = CacheOptions {
                max_path_bytes: MAX_KEY_BYTES - prefix.len(),
                root_mode: sc.default_dir_mode.0,
                root_uid: sc.default_owner,
                root_gid: sc.default_group,
                dirty_limit_bytes: config.dirty_limit_bytes(),
                capacity_bytes: config.cache.capacity.0,
                default_file_mode: sc.default_file_mode.0,
                attr_cache_bytes: config.cache.attr_cache.0,
                import_setid: sc.import_setid,
                max_file_size: sc.max_file_size.map_or(bucketgate_cache::MAX_FILE_SIZE, |m| m.0),
                key_check: {
                    let (store, prefix) = (store.clone(), prefix.clone());
                    KeyCheck::new(move |path| store.refuses_key(&format!("{prefix}{path}")))
                },
                ..CacheOptions::default()
            };
            let cache = Arc::new(
                tokio::task::spawn_blocking(move || Cache::open(&dir, opts))
                    .await?
                    .with_context(|| format!("opening the cache of share {}", sc.name))?,
            );
            let uploader = Uploader::new(
                cache.clone(),
                store.clone(),
                prefix.clone(),
                UploadSettings {
                    check_conflicts: sc.conflict_check != ConflictCheck::Off,
                    ..upload_settings(&config, upload_memory.clone())
                },
                Some((metrics.clone(), sc.name.clone())),
            );
            if sc.upload_log.is_some() || sc.upload_webhook.is_some() {
                let settings = crate::upload::NotifySettings {
                    log: sc.upload_log.clone(),
                    webhook: sc.upload_webhook.clone(),
                    settle: sc.upload_settle.0,
                };
                let n = crate::upload::UploadNotifier::start(
                    &sc.name,
                    settings,
                    store.clone(),
                    Some(metrics.clone()),
                )
                .with_context(|| format!("share {}: opening upload_log", sc.name))?;
                uploader.notify_to(n);
            }
            let audit = match &sc.audit_log {
                Some(path) => Some(Arc::new(
                    AuditLog::open(
                        &sc.name,
                        path,
                        Some(metrics.audit_dropped_total.with_label_values(&[&sc.name])),
                    )
                    .map(|log| if sc.audit_reads { log.with_reads() } else { log })
                    .with_context(|| format!("share {}: opening audit_log {}", sc.name, path.display()))?,
                )),
                None => None,
            };
            let clients = sc.client_list().map_err(anyhow::Error::msg)?;
            let rt = ReadThrough::new(
                cache.clone(),
                store.clone(),
                prefix.clone(),
                sc.cache_stale_after.map(|d| d.0),
                Some(metrics.store_keys_hidden_total.with_label_values(&[&sc.name])),
            );
            let share = Arc::new(Share {
                name: sc.name.clone(),
                export_path: sc.export_path(),
                cache,
                squash: sc.squash,
                read_only: sc.read_only,
                allowed_clients: sc.allowed_clients.clone(),
                allows: Box::new(move |ip| clients.allows(ip)),
                rt,
                audit,
                metrics: Some(metrics.clone()),
            });
            shares.push(ShareRuntime {
                config: sc.clone(),
                share,
                uploader,
                store,
                instrumented,
                prefix,
            });
        }
        // File handles name their share by this id; two shares with one id (a cache
        // directory copied from another share) would answer each other's handles.
        for (i, a) in shares.iter().enumerate() {
            if let Some(b) = shares[..i]
                .iter()
                .find(|b| b.share.cache.share_id() == a.share.cache.share_id())
            {
                bail!(
                    "shares {} and {} have the same share id in their caches (was one cache \
                     directory copied from the other?); give one a fresh cache directory",
                    b.config.name,
                    a.config.name
                );
            }
        }
        let nfs = Arc::new(NfsService::new(
            shares.iter().map(|s| s.share.clone()).collect(),
            Some(metrics.clone()),
        ));
        let mut event_feeds = Vec::new();
        let mut queues: Vec<&str> = config.shares.iter().filter_map(|s| s.events.as_deref()).collect();
        queues.sort_unstable();
        queues.dedup();
        for url in queues {
            let queue = crate::events::QueueUrl::parse(url).map_err(anyhow::Error::msg)?;
            let fed: Vec<&ShareRuntime> = shares
                .iter()
                .filter(|s| s.config.events.as_deref() == Some(url))
                .collect();
            let region = fed.iter().find_map(|s| s.config.region.clone());
            let feed = crate::events::EventFeed::new(
                queue,
                event_targets(fed),
                region,
                credentials.clone(),
                Some(metrics.clone()),
            )
            .await;
            event_feeds.push(Arc::new(feed));
        }
        Ok(Gateway {
            config,
            shares,
            nfs,
            event_feeds,
            rate_limiter,
            metrics,
            started: Instant::now(),
            probe_interval: probe::PROBE_INTERVAL,
            nfs_listening: AtomicBool::new(false),
        })
    }

    /// Starts the uploaders, the NFS listener and the admin listener.
    pub async fn start(self) -> anyhow::Result<Running> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let background = background::Background::start().context("starting the upload threads")?;
        for s in &self.shares {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            s.share.cache.set_notifier(tx);
            s.uploader.queue_pending();
            tasks.spawn_on(s.uploader.clone().run(rx, stop.clone()), background.handle());
        }
        let access = self.config.admin.api_access().map_err(anyhow::Error::msg)?;
        let nfs_listener = TcpListener::bind(self.config.nfs.listen)
            .await
            .with_context(|| format!("binding the NFS listener on {}", self.config.nfs.listen))?;
        let admin_listener = TcpListener::bind(self.config.admin.listen)
            .await
            .with_context(|| format!("binding the admin listener on {}", self.config.admin.listen))?;
        let nfs_addr = nfs_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let portmap = match self.config.nfs.portmap_listen {
            Some(addr) => Some(portmap_server::bind(addr).await?),
            None => None,
        };
        let portmap_addr = match &portmap {
            Some((udp, _)) => Some(udp.local_addr()?),
            None => None,
        };
        if let Some((udp, tcp)) = portmap {
            tasks.spawn(portmap_server::serve(udp, tcp, nfs_addr.port(), stop.clone()));
        }
        let gateway = Arc::new(self);
        gateway.nfs_listening.store(true, Ordering::Relaxed);

        let nfs = gateway.nfs.clone();
        let limits = Limits {
            metrics: Some(gateway.metrics.clone()),
            ..Limits::from_config(&gateway.config.nfs)
        };
        let token = stop.clone();
        let gw = gateway.clone();
        tasks.spawn(async move {
            if let Err(e) = serve(nfs_listener, nfs.clone(), nfs, limits, token.cancelled_owned()).await {
                tracing::error!(error = %e, "NFS server stopped");
            }
            gw.nfs_listening.store(false, Ordering::Relaxed);
        });

        tasks.spawn(probe::run(gateway.clone(), stop.clone()));
        for feed in &gateway.event_feeds {
            tasks.spawn(feed.clone().run(stop.clone()));
        }
        admin::install_scrape_hook(&gateway);
        let api = admin_api(&gateway);
        let metrics = gateway.metrics.clone();
        let token = stop.clone();
        tasks.spawn(async move {
            if let Err(e) =
                crate::admin::serve_admin(admin_listener, api, metrics, access, token.cancelled_owned()).await
            {
                tracing::error!(error = %e, "admin listener stopped");
            }
        });
        let mut fuse = Vec::new();
        for s in &gateway.shares {
            if let Some(path) = &s.config.fuse_path() {
                let handle = tokio::runtime::Handle::current();
                let (share, path) = (s.share.clone(), path.clone());
                let m =
                    tokio::task::spawn_blocking(move || crate::fuse::mount(share, &path, handle)).await??;
                tracing::info!(share = %s.share.name, path = %m.path().display(), "mounted with FUSE");
                fuse.push(m);
            }
        }
        // After the mounts it serves exist.
        let smb = gateway.config.shares.iter().any(|s| s.smb);
        let smbd = if gateway.config.smb.run_smbd && smb {
            Some(crate::smb::Smbd::start(&gateway.config).await?)
        } else {
            None
        };
        if smb {
            let conf = gateway
                .config
                .smb
                .state_dir(&gateway.config.cache.dir)
                .join("smb.conf");
            tasks.spawn(crate::smb::poll_sessions(
                conf,
                gateway.metrics.clone(),
                stop.clone(),
            ));
        }
        Ok(Running {
            gateway,
            nfs_addr,
            admin_addr,
            portmap_addr,
            stop,
            tasks,
            fuse,
            smbd,
            _background: background,
        })
    }
}

/// The shares S3 events reach, with the bucket and prefix each is under.
fn event_targets<'a>(shares: impl IntoIterator<Item = &'a ShareRuntime>) -> Vec<crate::events::Target> {
    shares
        .into_iter()
        .filter_map(|s| match s.config.location() {
            Ok(ShareLocation::S3 { bucket, .. }) => Some(crate::events::Target {
                share: s.share.clone(),
                bucket,
                prefix: s.prefix.clone(),
            }),
            _ => None,
        })
        .collect()
}

impl Gateway {
    /// Applies S3 events to every share they fall under, as the queue pollers do
    /// (for tests of what an event does, without a queue).
    pub async fn apply_events(&self, events: &[crate::events::S3Event]) -> crate::events::Applied {
        crate::events::apply(&event_targets(&self.shares), events, Some(&self.metrics))
            .await
            .0
    }
}

fn prefix_of(url: &str) -> String {
    match ShareLocation::parse(url) {
        Ok(ShareLocation::S3 { prefix, .. }) => prefix,
        _ => String::new(),
    }
}

pub fn upload_settings(config: &Config, memory: Arc<tokio::sync::Semaphore>) -> UploadSettings {
    UploadSettings {
        memory,
        upload_delay: config.cache.upload_delay.0,
        max_dirty_age: config.cache.max_dirty_age.0,
        multipart_threshold: config.upload.multipart_threshold.0,
        part_size: config.upload.part_size.0,
        concurrency: config.upload.concurrency,
        small_file_threshold: config.upload.small_file_threshold.0,
        small_file_concurrency: config.upload.small_file_concurrency,
        part_concurrency: config.upload.part_concurrency,
        max_single_copy: config.upload.max_single_copy.0,
        check_conflicts: true,
    }
}

impl Running {
    /// Stops taking calls, lets calls in flight finish, stops the uploaders (the
    /// queue stays durable) and flushes every share's metadata.
    pub async fn shutdown(mut self) {
        // SMB, then FUSE: unmounting waits for the calls the kernel has in flight.
        if let Some(s) = self.smbd.take() {
            s.stop().await;
        }
        for m in std::mem::take(&mut self.fuse) {
            m.unmount().await;
        }
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        for s in &self.gateway.shares {
            s.uploader.blocking_done().await;
        }
        for s in &self.gateway.shares {
            let cache = s.share.cache.clone();
            let _ = tokio::task::spawn_blocking(move || cache.flush_metadata()).await;
        }
    }
}

/// `bucketgate serve`: runs until SIGTERM or SIGINT.
pub fn run(config: Config, embedded: bool) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(config, embedded))
}

async fn run_async(config: Config, embedded: bool) -> anyhow::Result<()> {
    let gateway = Gateway::open(config, None, None).await?;
    let running = gateway.start().await?;
    let addr = running.nfs_addr;
    for s in &running.gateway.shares {
        tracing::info!(share = %s.share.export_path, url = %s.config.url, "exporting");
    }
    tracing::info!(nfs = %addr, admin = %running.admin_addr, "serving");
    crate::sd_notify::notify("READY=1");
    if embedded {
        let (h, p) = (addr.ip(), addr.port());
        println!("bucketgate is serving the embedded default configuration.");
        println!("  objects land in: {}", running.gateway.shares[0].config.url);
        println!("Mount the share (Linux):");
        println!("  sudo mount -t nfs -o vers=3,proto=tcp,port={p},mountport={p},nolock {h}:/data /mnt");
        println!("or list it with libnfs:");
        println!("  nfs-ls 'nfs://{h}//data/?nfsport={p}&mountport={p}&version=3'");
    }
    wait_for_signal().await;
    tracing::info!("stopping: finishing calls in flight; the upload queue stays on disk");
    crate::sd_notify::notify("STOPPING=1");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
