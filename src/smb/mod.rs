//! SMB2/3 through Samba: `smbd` serves each SMB share's FUSE mount on this gateway,
//! so Samba does the protocol, the users and the signing and encryption, while every
//! file call reaches the share layer as the SMB user's uid (Samba switches to it
//! before each call and FUSE carries it). This module renders the smb.conf for the
//! configured shares (`conf`), checks that Samba is installed (`host_problems`),
//! runs `smbd` itself when `[smb] run_smbd` asks for it (`smbd`), keeps the SMB
//! users in Samba's database (`users`), and counts smbd's sessions (`status`).

mod conf;
mod smbd;
mod status;
pub mod users;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use conf::render;
pub use smbd::Smbd;
pub use status::poll_sessions;

/// The `[smb]` section: what applies to every SMB share.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmbConfig {
    /// Where smbd listens (address and port); SMB clients expect port 445.
    pub listen: SocketAddr,
    /// Signing and encryption (File Gateway's SMBSecurityStrategy).
    pub security: SmbSecurity,
    /// `bucketgate serve` starts smbd itself, in the foreground, after the FUSE
    /// mounts exist, and stops it before they go: for trying it out and for tests.
    /// The appliance runs smbd as its own systemd unit instead.
    pub run_smbd: bool,
    /// Samba's state (its smb.conf when run by the gateway, the tdbsam user
    /// database, locks, logs). Default: `smb` beside `cache.dir`.
    pub state_dir: Option<PathBuf>,
}

impl Default for SmbConfig {
    fn default() -> Self {
        SmbConfig {
            listen: "127.0.0.1:445".parse().expect("valid literal"),
            security: SmbSecurity::default(),
            run_smbd: false,
            state_dir: None,
        }
    }
}

impl SmbConfig {
    /// `state_dir`, or `smb` beside the cache directory.
    pub fn state_dir(&self, cache_dir: &Path) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| cache_dir.parent().unwrap_or(Path::new("/")).join("smb"))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmbSecurity {
    /// The client chooses (File Gateway's ClientSpecified).
    #[default]
    Default,
    /// Every session is signed (MandatorySigning).
    Mandatory,
    /// Every session is encrypted, SMB 3 only (MandatoryEncryption).
    Required,
}

/// Where a share is mounted with FUSE for smbd when `fuse_mount` is not set.
pub fn default_mount(share: &str) -> PathBuf {
    Path::new("/run/bucketgate/smb").join(share)
}

/// Whether `name` may be an SMB user or group: a Linux account name (at most 32
/// characters) with nothing that could end or extend an smb.conf line.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Writes the smb.conf for `cfg` into the SMB state directory, and makes the
/// directories Samba writes to there; returns the smb.conf's path.
pub(crate) fn write_conf(cfg: &crate::config::Config) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let state = cfg.smb.state_dir(&cfg.cache.dir);
    for sub in [
        "private",
        "lock",
        "state",
        "cache",
        "run/ncalrpc",
        "bind-dns",
        "log",
    ] {
        std::fs::create_dir_all(state.join(sub))
            .with_context(|| format!("creating {}", state.join(sub).display()))?;
    }
    // Samba refuses a private directory others can read.
    std::fs::set_permissions(
        state.join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let conf = state.join("smb.conf");
    std::fs::write(&conf, render(cfg, &state)).with_context(|| format!("writing {}", conf.display()))?;
    Ok(conf)
}

/// The Debian packages SMB shares need.
pub const PACKAGES: &str = "samba samba-vfs-modules";

/// What this host lacks to serve the configured SMB shares: smbd, or the `fileid`
/// VFS module the generated smb.conf loads. `None` when nothing (or no share uses
/// SMB).
pub fn host_problems(cfg: &crate::config::Config) -> Option<String> {
    if !cfg.shares.iter().any(|s| s.smb) {
        return None;
    }
    let Some(smbd) = smbd::find() else {
        return Some(format!(
            "SMB shares need Samba's smbd, which is not installed: apt-get install {PACKAGES}"
        ));
    };
    match smbd::module_dir(&smbd) {
        Some(dir) if dir.join("vfs/fileid.so").exists() => None,
        _ => Some(format!(
            "SMB shares need Samba's fileid module ({} has none): apt-get install {PACKAGES}",
            smbd.display()
        )),
    }
}
