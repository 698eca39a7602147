//! SMB2/3 through Samba: `smbd` serves each SMB share's FUSE mount on this gateway,
//! so Samba does the protocol, the users and the signing and encryption, while every
//! file call reaches the share layer as the SMB user's uid (Samba switches to it
//! before each call and FUSE carries it). This module renders the smb.conf for the
//! configured shares (`conf`), checks that Samba is installed (`host_problems`), and
//! runs `smbd` itself when `[smb] run_smbd` asks for it (`smbd`).

mod conf;
mod smbd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use conf::render;
pub use smbd::Smbd;

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
