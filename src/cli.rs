//! The `bucketgate` command line. `main.rs` only calls [`main`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::admin::{AdminClient, FileStatus, FlushRequest, ReadinessBody, RefreshRequest, StatusReport};
use crate::config::{AdminConfig, Config, EXAMPLE_TOML};

#[derive(Debug, Parser)]
#[command(
    name = "bucketgate",
    version,
    about = "NFSv3 file gateway: a local write-back cache in front of S3"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway. Without --config: NFS on 127.0.0.1:2049, admin on
    /// 127.0.0.1:9108, data and a directory "bucket" under ./bucketgate-data.
    Serve {
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Write a fully commented example configuration (to stdout without --output).
    Init {
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Validate a configuration file: prints OK and a summary, or every error (exit 1).
    CheckConfig {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Print only the FUSE mount points of a valid configuration, one per line
        /// (for the AMI's systemd generator, which lets the gateway mount them).
        #[arg(long)]
        fuse_mounts: bool,
    },
    /// Print the smb.conf that serves the configured SMB shares (for smbd's own
    /// systemd unit; `[smb] run_smbd` writes it itself).
    SmbConf {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Write it to FILE instead, and into [smb] state_dir with the directories
        /// Samba writes to, as `run_smbd` does; run as root, also widen each SMB
        /// share's mount read-ahead as the gateway does.
        #[arg(long, short, value_name = "FILE", conflicts_with = "check")]
        output: Option<PathBuf>,
        /// Print nothing; exit 0 when a share has smb = true, 1 when none does (for
        /// systemd's ExecCondition).
        #[arg(long)]
        check: bool,
    },
    /// The SMB users of the shares (Samba's user database under [smb] state_dir).
    SmbUser {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        #[command(subcommand)]
        action: SmbUserAction,
    },
    /// Show shares, cache use, the upload queue and failing files of a running gateway;
    /// with a PATH, where that file or directory stands with the store.
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// A file or directory, /<share>/<path>: clean, dirty since, uploading, or
        /// failing (last error, attempts), with its object's key and ETag.
        path: Option<String>,
    },
    /// Upload dirty files now instead of after upload_delay.
    Flush {
        #[command(flatten)]
        target: AdminTarget,
        /// Return only once everything written before this call is in the store.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 1; uploads go on).
        #[arg(long, value_name = "SECONDS", requires = "wait")]
        timeout: Option<f64>,
        /// /<share> or /<share>/path; every share when omitted.
        path: Option<String>,
    },
    /// Re-list the bucket so objects written behind the gateway show up.
    Refresh {
        #[command(flatten)]
        target: AdminTarget,
        /// Also refresh subdirectories.
        #[arg(long)]
        recursive: bool,
        /// /<share> or a directory in it; every share when omitted.
        path: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SmbUserAction {
    /// Add a user, or set its password; makes its Unix account (a system account
    /// without home or shell) when there is none. The password is the first line
    /// of --password-file, or of standard input.
    Add {
        name: String,
        /// The Unix account's uid, for an account made here: the same on every
        /// gateway of a bucket keeps files the user's everywhere.
        #[arg(long)]
        uid: Option<u32>,
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Remove a user; its Unix account stays (it owns files).
    Del { name: String },
    /// The users and their uids.
    List,
}

/// Which gateway the client commands talk to.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// Admin API address (host:port); default 127.0.0.1:9108.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    pub admin: Option<String>,
    /// Take the admin address (and admin.token_file) from this configuration file.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The admin API's bearer token is in this file (default: the config's
    /// admin.token_file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl AdminTarget {
    /// A client for the gateway this names, with its token when one is configured.
    pub fn client(&self) -> anyhow::Result<AdminClient> {
        let mut admin = match &self.config {
            Some(path) => Config::load(path).map_err(anyhow::Error::msg)?.admin,
            None => AdminConfig::default(),
        };
        if let Some(f) = &self.token_file {
            admin.token_file = Some(f.clone());
        }
        let token = admin.token().map_err(anyhow::Error::msg)?;
        let addr = match &self.admin {
            Some(a) => {
                let a = a.trim_start_matches("http://").trim_end_matches('/');
                a.to_socket_addrs()
                    .with_context(|| format!("--admin {a}: expected host:port"))?
                    .next()
                    .with_context(|| format!("--admin {a}: no address"))?
            }
            None => connectable(admin.listen),
        };
        Ok(AdminClient::new(addr).with_token(token))
    }
}

fn smb_user(cfg: &Config, action: SmbUserAction) -> anyhow::Result<()> {
    use crate::smb::users;
    match action {
        SmbUserAction::Add {
            name,
            uid,
            password_file,
        } => {
            let text = match password_file {
                Some(f) => std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            };
            let password = text.lines().next().unwrap_or("");
            users::add(cfg, &name, uid, password)?;
            println!("SMB user {name} added");
        }
        SmbUserAction::Del { name } => {
            users::del(cfg, &name)?;
            println!("SMB user {name} removed (its Unix account stays)");
        }
        SmbUserAction::List => {
            for (name, uid) in users::list(cfg)? {
                println!("{name}\t{uid}");
            }
        }
    }
    Ok(())
}

/// A wildcard listen address is not one to connect to: use loopback instead.
pub(crate) fn connectable(mut a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

/// Parses the command line, runs it, and maps errors to exit status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Init { output, force } => init(output.as_deref(), force),
        Command::CheckConfig { config, fuse_mounts } => match Config::load(&config) {
            // What the config mounts, whatever this host lacks to serve it.
            Ok(cfg) if fuse_mounts => {
                for path in cfg.shares.iter().filter_map(|s| s.fuse_path()) {
                    println!("{}", path.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            Ok(cfg) if let Some(p) = crate::smb::host_problems(&cfg) => {
                eprintln!("{}: {p}", config.display());
                Ok(ExitCode::FAILURE)
            }
            Ok(cfg) => {
                print!("OK {}\n{}", config.display(), cfg.summary());
                for w in cfg.warnings() {
                    println!("warning: {w}");
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::SmbConf {
            config,
            output,
            check,
        } => {
            let cfg = Config::load(&config).map_err(anyhow::Error::msg)?;
            let smb = cfg.shares.iter().any(|s| s.smb);
            if check {
                return Ok(if smb { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            if !smb {
                anyhow::bail!("{}: no share has smb = true", config.display());
            }
            match output {
                Some(path) => {
                    let conf = crate::smb::write_conf(&cfg)?;
                    std::fs::copy(&conf, &path).with_context(|| format!("writing {}", path.display()))?;
                    for s in cfg.shares.iter().filter(|s| s.smb) {
                        if let Some(mount) = s.fuse_path() {
                            crate::fuse::widen_read_ahead(&mount);
                        }
                    }
                }
                None => print!("{}", crate::smb::render(&cfg, &cfg.smb.state_dir(&cfg.cache.dir))),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SmbUser { config, action } => {
            let cfg = Config::load(&config).map_err(anyhow::Error::msg)?;
            smb_user(&cfg, action)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            target,
            json,
            path: Some(path),
        } => {
            let client = target.client()?;
            let f = block_on(client.file_status(&path))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                print!("{}", render_file_status(&f, unix_now()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            target,
            json,
            path: None,
        } => {
            let client = target.client()?;
            let (status, ready) = block_on(async { (client.status().await, client.readiness().await) });
            let status = status?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render_status(&status, unix_now()));
                match ready {
                    Ok(r) => print!("{}", render_readiness(&r)),
                    Err(e) => println!("\nready   unknown ({e})"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Flush {
            target,
            wait,
            timeout,
            path,
        } => {
            let client = target.client()?;
            let req = FlushRequest {
                path,
                wait,
                timeout_s: timeout,
            };
            let rep = block_on(client.flush(&req))?;
            let state = if rep.complete {
                "all in the store"
            } else if wait {
                "not complete"
            } else {
                "uploads started"
            };
            println!("flush: {} files, {}: {state}", rep.files, human_bytes(rep.bytes));
            // --wait that timed out is a failure for scripts (`flush --wait && stop`).
            Ok(if wait && !rep.complete {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Refresh {
            target,
            recursive,
            path,
        } => {
            let client = target.client()?;
            let rep = block_on(client.refresh(&RefreshRequest { path, recursive }))?;
            println!(
                "refresh: {} directories, {} objects listed, {} entries changed",
                rep.directories, rep.objects_listed, rep.entries_changed
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (cfg, embedded) = match config {
        Some(path) => (Config::load(path).map_err(anyhow::Error::msg)?, false),
        None => (Config::embedded_default(Path::new("bucketgate-data")), true),
    };
    crate::logging::init(&cfg.log)?;
    if embedded {
        tracing::info!(
            "no --config: running the embedded configuration (write your own with `bucketgate init`)"
        );
    }
    for line in cfg.summary().lines() {
        tracing::info!("{line}");
    }
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    crate::gateway::run(cfg, embedded)?;
    Ok(ExitCode::SUCCESS)
}

fn init(output: Option<&Path>, force: bool) -> anyhow::Result<ExitCode> {
    match output {
        None => print!("{EXAMPLE_TOML}"),
        Some(path) => {
            if path.exists() && !force {
                bail!("{} exists; use --force to overwrite it", path.display());
            }
            std::fs::write(path, EXAMPLE_TOML).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {}; check it with: bucketgate check-config --config {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "1.5 GiB" style, for people.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// "3d 4h", "5m 2s", "12s".
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The readiness lines of `bucketgate status`.
pub fn render_readiness(r: &ReadinessBody) -> String {
    let mut o = String::from(if r.ready {
        "\nready   yes\n"
    } else {
        "\nready   NO\n"
    });
    for c in r.checks.iter().filter(|c| !c.ok) {
        let what = if c.advisory { "warning" } else { "failing check" };
        o.push_str(&format!(
            "  {what} {}: {}\n",
            c.name,
            c.detail.as_deref().unwrap_or("-")
        ));
    }
    o
}

/// The human-readable `bucketgate status PATH` output.
pub fn render_file_status(f: &FileStatus, now_unix_s: u64) -> String {
    let mut o = format!("/{}{}  {}, {}\n", f.share, f.path, f.kind, human_bytes(f.size));
    let state = match f.dirty_since_unix_s {
        Some(t) => format!(
            "{} (changed {} ago)",
            f.state.as_str(),
            human_duration(now_unix_s.saturating_sub(t as u64))
        ),
        None => f.state.as_str().to_string(),
    };
    o.push_str(&format!("state   {state}\n"));
    match (&f.object_key, &f.etag) {
        (Some(k), Some(e)) => o.push_str(&format!("object  {k}  ETag {e}\n")),
        _ => o.push_str("object  none yet\n"),
    }
    if f.object_key.is_some() {
        let store = match (f.store_holds_etag, &f.version_id) {
            (Some(true), Some(v)) => format!("holds this ETag, version {v} (checked now)"),
            (Some(true), None) => "holds this ETag (checked now)".to_string(),
            (Some(false), _) => "holds another version, or none: another client changed it".to_string(),
            (None, _) => "not checked: the store did not answer".to_string(),
        };
        o.push_str(&format!("store   {store}\n"));
    }
    if let Some(ff) = &f.failure {
        o.push_str(&format!(
            "failing {} attempts since {} ago: {}\n",
            ff.attempts,
            human_duration(now_unix_s.saturating_sub(ff.failing_since_unix_s)),
            ff.last_error
        ));
    }
    if let Some(n) = f.pending_below {
        o.push_str(&format!("below   {n} waiting for the store\n"));
    }
    if f.conflict_copy {
        o.push_str(
            "note    a conflict copy: the local version set aside when another client wrote the object\n",
        );
    }
    o
}

/// The human-readable `bucketgate status` output.
pub fn render_status(s: &StatusReport, now_unix_s: u64) -> String {
    let mut o = format!(
        "bucketgate {}  up {}\n\n",
        s.version,
        human_duration(s.uptime_seconds)
    );
    let w = s
        .shares
        .iter()
        .map(|x| x.export_path.len())
        .max()
        .unwrap_or(0)
        .max("EXPORT".len());
    o.push_str(&format!("{:<w$}  {:<2}  URL\n", "EXPORT", "RW"));
    for sh in &s.shares {
        o.push_str(&format!(
            "{:<w$}  {:<2}  {}\n",
            sh.export_path,
            if sh.read_only { "ro" } else { "rw" },
            sh.url
        ));
    }
    let c = &s.cache;
    let used_pct = if c.capacity_bytes == 0 {
        0.0
    } else {
        100.0 * c.used_bytes as f64 / c.capacity_bytes as f64
    };
    o.push_str(&format!(
        "\ncache   {} of {} used ({used_pct:.1}%), {} dirty ({:.1}%)\n",
        human_bytes(c.used_bytes),
        human_bytes(c.capacity_bytes),
        human_bytes(c.dirty_bytes),
        c.dirty_percent
    ));
    let q = &s.upload_queue;
    let oldest = q
        .oldest_dirty_age_seconds
        .map(|a| human_duration(a as u64))
        .unwrap_or_else(|| "-".into());
    o.push_str(&format!(
        "upload  {} files ({}) queued, oldest dirty {oldest}, {} failing\n",
        q.files,
        human_bytes(q.bytes),
        q.failing_files
    ));
    if !s.failing_files.is_empty() {
        o.push_str("\nFAILING  ATTEMPTS  SINCE     PATH  (LAST ERROR)\n");
        for f in &s.failing_files {
            let since = human_duration(now_unix_s.saturating_sub(f.failing_since_unix_s));
            o.push_str(&format!(
                "         {:<8}  {:<8}  /{}{}  ({})\n",
                f.attempts, since, f.share, f.path, f.last_error
            ));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{CacheStatus, FailingFile, QueueStatus, ShareStatus};

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_client_commands() {
        let c = Cli::try_parse_from(["bucketgate", "flush", "--wait", "--timeout", "30", "/data/x"]).unwrap();
        match c.command {
            Command::Flush {
                wait, timeout, path, ..
            } => {
                assert!(wait);
                assert_eq!(timeout, Some(30.0));
                assert_eq!(path.as_deref(), Some("/data/x"));
            }
            other => panic!("{other:?}"),
        }
        // --timeout without --wait is refused: it would mean nothing.
        assert!(Cli::try_parse_from(["bucketgate", "flush", "--timeout", "3"]).is_err());
        // --admin and --config name the same thing twice.
        assert!(Cli::try_parse_from(["bucketgate", "status", "--admin", "a:1", "--config", "f"]).is_err());
    }

    #[test]
    fn admin_target_resolution() {
        let t = AdminTarget {
            admin: Some("127.0.0.1:9999".into()),
            config: None,
            token_file: None,
        };
        assert_eq!(t.client().unwrap().addr, "127.0.0.1:9999".parse().unwrap());
        let t = AdminTarget {
            admin: None,
            config: None,
            token_file: None,
        };
        assert_eq!(t.client().unwrap().addr, "127.0.0.1:9108".parse().unwrap());
        let t = AdminTarget {
            admin: None,
            config: None,
            token_file: Some("/nonexistent/token".into()),
        };
        assert!(t.client().unwrap_err().to_string().contains("/nonexistent/token"));
        assert_eq!(
            connectable("0.0.0.0:9108".parse().unwrap()),
            "127.0.0.1:9108".parse().unwrap()
        );
        assert_eq!(
            connectable("[::]:9108".parse().unwrap()),
            "[::1]:9108".parse().unwrap()
        );
    }

    #[test]
    fn a_files_status_says_where_it_stands() {
        use crate::admin::{FileState, FileStatus};
        assert_eq!(FileState::of(false, false, false), FileState::Clean);
        assert_eq!(FileState::of(true, false, false), FileState::Dirty);
        assert_eq!(FileState::of(true, true, false), FileState::Uploading);
        assert_eq!(FileState::of(true, false, true), FileState::Failing);
        // A retry in flight is uploading; its failures still show.
        assert_eq!(FileState::of(true, true, true), FileState::Uploading);
        let f = FileStatus {
            share: "data".into(),
            path: "/a/report.txt.conflict-20261207T120000Z".into(),
            kind: "file".into(),
            size: 2048,
            state: FileState::Failing,
            dirty_since_unix_s: Some(1_000.0),
            object_key: None,
            etag: None,
            store_holds_etag: None,
            version_id: None,
            failure: Some(FailingFile {
                share: "data".into(),
                path: "/a/report.txt.conflict-20261207T120000Z".into(),
                attempts: 3,
                last_error: "AccessDenied".into(),
                failing_since_unix_s: 1_030,
            }),
            conflict_copy: true,
            pending_below: None,
        };
        let t = render_file_status(&f, 1_090);
        for want in [
            "/data/a/report.txt.conflict-20261207T120000Z  file, 2.0 KiB",
            "state   failing (changed 1m 30s ago)",
            "object  none yet",
            "failing 3 attempts since 1m 0s ago: AccessDenied",
            "a conflict copy",
        ] {
            assert!(t.contains(want), "{want:?} missing from\n{t}");
        }
        assert!(!t.contains("store   "), "no object, nothing checked:\n{t}");
        let clean = FileStatus {
            state: FileState::Clean,
            dirty_since_unix_s: None,
            object_key: Some("a/report.txt".into()),
            etag: Some("abc".into()),
            store_holds_etag: Some(true),
            version_id: Some("v7".into()),
            failure: None,
            conflict_copy: false,
            ..f
        };
        let t = render_file_status(&clean, 1_090);
        assert!(
            t.contains("store   holds this ETag, version v7 (checked now)"),
            "{t}"
        );
    }

    #[test]
    fn status_table_shows_every_figure() {
        let s = StatusReport {
            version: "0.1.0".into(),
            uptime_seconds: 3 * 3600 + 120,
            shares: vec![ShareStatus {
                name: "data".into(),
                export_path: "/data".into(),
                url: "s3://b/p/".into(),
                read_only: true,
            }],
            cache: CacheStatus::new(100 << 30, 50 << 30, 25 << 30),
            upload_queue: QueueStatus {
                files: 7,
                bytes: 3 << 20,
                oldest_dirty_age_seconds: Some(75.0),
                failing_files: 1,
            },
            failing_files: vec![FailingFile {
                share: "data".into(),
                path: "/a/b.txt".into(),
                attempts: 4,
                last_error: "AccessDenied".into(),
                failing_since_unix_s: 1000,
            }],
        };
        let t = render_status(&s, 1000 + 600);
        for want in [
            "up 3h 2m",
            "/data",
            "ro",
            "s3://b/p/",
            "50.0 GiB of 100.0 GiB used (50.0%)",
            "25.0 GiB dirty (25.0%)",
            "7 files (3.0 MiB)",
            "oldest dirty 1m 15s",
            "1 failing",
            "/data/a/b.txt",
            "AccessDenied",
            "10m 0s",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn readiness_lines_name_failing_checks() {
        use crate::admin::ReadinessCheck;
        let check = |name: &str, ok: bool, detail: Option<&str>| ReadinessCheck {
            name: name.into(),
            ok,
            detail: detail.map(str::to_string),
            advisory: false,
        };
        let r = ReadinessBody {
            ready: false,
            checks: vec![
                check("nfs_listening", true, None),
                check("store_reachable", false, Some("timeout")),
            ],
        };
        let t = render_readiness(&r);
        assert!(
            t.contains("ready   NO") && t.contains("store_reachable: timeout"),
            "{t}"
        );
        assert!(!t.contains("nfs_listening"), "{t}");
        assert!(
            render_readiness(&ReadinessBody {
                ready: true,
                checks: vec![]
            })
            .contains("ready   yes")
        );
        let degraded = render_readiness(&ReadinessBody {
            ready: true,
            checks: vec![ReadinessCheck {
                advisory: true,
                ..check("events_queue_reachable", false, Some("refused"))
            }],
        });
        assert!(
            degraded.contains("ready   yes") && degraded.contains("warning events_queue_reachable: refused"),
            "{degraded}"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(2 * 86400 + 3600), "2d 1h");
    }
}
