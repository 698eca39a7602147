//! Running `smbd` from `bucketgate serve` (`[smb] run_smbd`): in the foreground, in
//! its own process group so a terminal's Ctrl-C reaches the gateway alone, with its
//! smb.conf, its log (`log/smbd.log`) and every directory it writes under the SMB
//! state directory, so nothing of the host's own Samba setup is used or changed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::config::Config;

/// How long smbd has to start listening, and to stop after SIGTERM.
const START: Duration = Duration::from_secs(20);
const STOP: Duration = Duration::from_secs(10);

/// smbd on PATH or in /usr/sbin (root's PATH has it; a user's may not).
pub(super) fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("smbd"))
        .find(|p| p.is_file())
}

/// Where this smbd loads its modules from (`smbd -b`'s MODULESDIR).
pub(super) fn module_dir(smbd: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new(smbd).arg("-b").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("MODULESDIR:"))
        .map(|d| PathBuf::from(d.trim()))
}

/// A running smbd; [`Smbd::stop`] ends it.
pub struct Smbd {
    child: Child,
    /// Its pid, for the next start to find it if this gateway dies without stopping it.
    pid_file: PathBuf,
}

/// Ends the smbd a gateway killed without stopping it left running on `conf` (in its
/// own process group, it outlives the gateway): it would hold the port and serve a
/// dead mount. Only a process whose command line names `conf` is touched.
async fn stop_left_behind(pid_file: &Path, conf: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .any(|arg| arg == conf.as_os_str().as_encoded_bytes())
    });
    if !ours {
        return;
    }
    tracing::warn!(
        pid,
        "stopping the smbd an earlier run of the gateway left running"
    );
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let deadline = tokio::time::Instant::now() + STOP;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if tokio::time::Instant::now() > deadline {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its connection children, which may outlive the main process by a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = std::fs::remove_file(pid_file);
}

impl Smbd {
    /// Writes the smb.conf and starts smbd on it; returns once smbd accepts
    /// connections on `[smb] listen`.
    pub async fn start(cfg: &Config) -> anyhow::Result<Smbd> {
        if let Some(p) = super::host_problems(cfg) {
            bail!(p);
        }
        let smbd = find().context("smbd not found")?;
        let conf = super::write_conf(cfg)?;
        let state = cfg.smb.state_dir(&cfg.cache.dir);
        let pid_file = state.join("run/bucketgate-smbd.pid");
        stop_left_behind(&pid_file, &conf).await;
        // Something else on the port would answer the readiness check below for an
        // smbd that could not bind.
        std::net::TcpListener::bind(cfg.smb.listen)
            .with_context(|| format!("[smb] listen {} is not free", cfg.smb.listen))?;
        let mut child = Command::new(&smbd)
            .args(["--foreground", "--no-process-group", "-s"])
            .arg(&conf)
            .process_group(0)
            // Its readiness is the gateway's to report (Type=notify).
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", smbd.display()))?;
        if let Some(pid) = child.id() {
            std::fs::write(&pid_file, pid.to_string())
                .with_context(|| format!("writing {}", pid_file.display()))?;
        }
        let addr = crate::cli::connectable(cfg.smb.listen);
        let deadline = tokio::time::Instant::now() + START;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                tracing::info!(listen = %cfg.smb.listen, conf = %conf.display(), "smbd serving");
                return Ok(Smbd { child, pid_file });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "smbd exited ({status}) before listening on {}; its log: {}",
                    cfg.smb.listen,
                    state.join("log/smbd.log").display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                bail!("smbd did not listen on {} within {START:?}", cfg.smb.listen);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL if smbd has not ended within a few seconds.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // Its process group: smbd forks a child per connection.
            unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
        }
        if tokio::time::timeout(STOP, self.child.wait()).await.is_err() {
            tracing::warn!("smbd did not stop after SIGTERM; killing it");
            if let Some(pid) = self.child.id() {
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = self.child.wait().await;
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}
