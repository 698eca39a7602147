//! The one TOML file that configures a gateway. Unknown keys are rejected and every
//! bad value is an error that names its key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nfs: NfsConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub upload: UploadConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default, rename = "share")]
    pub shares: Vec<ShareConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NfsConfig {
    /// NFS, MOUNT and portmap all answer on this one address.
    pub listen: SocketAddr,
    pub max_connections: usize,
    /// Calls served at once on one connection; more wait in the socket.
    pub max_calls_per_connection: usize,
}

impl Default for NfsConfig {
    fn default() -> Self {
        NfsConfig {
            listen: "127.0.0.1:2049".parse().expect("valid literal"),
            max_connections: 1024,
            max_calls_per_connection: 64,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: "127.0.0.1:9108".parse().expect("valid literal") }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub capacity: ByteSize,
    /// Dirty bytes at which writers are slowed down, then answered NFS3ERR_JUKEBOX.
    /// Default: 80% of capacity.
    pub dirty_limit: Option<ByteSize>,
    pub upload_delay: HumanDuration,
    pub max_dirty_age: HumanDuration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("bucketgate-data/cache"),
            capacity: ByteSize(150 << 30),
            dirty_limit: None,
            upload_delay: HumanDuration(Duration::from_secs(5)),
            max_dirty_age: HumanDuration(Duration::from_secs(60)),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Files at or above this size go up as multipart uploads.
    pub multipart_threshold: ByteSize,
    pub part_size: ByteSize,
    /// Files uploaded at once.
    pub concurrency: usize,
    /// Parts of one multipart upload in flight at once.
    pub part_concurrency: usize,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            multipart_threshold: ByteSize(16 << 20),
            part_size: ByteSize(16 << 20),
            concurrency: 8,
            part_concurrency: 8,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "bucketgate=debug"; RUST_LOG wins when set.
    pub level: Option<String>,
    pub json: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Squash {
    /// uid/gid 0 become 65534 (File Gateway's RootSquash, the default).
    #[default]
    Root,
    /// Every caller becomes 65534.
    All,
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// Exported as `/<name>`.
    pub name: String,
    /// `s3://bucket/prefix/` or `file:///srv/bucket`.
    pub url: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    /// IPv4/IPv6 addresses and CIDR blocks; empty allows every client.
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    #[serde(default)]
    pub squash: Squash,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub storage_class: Option<String>,
    /// "AES256" (SSE-S3) or "aws:kms" (SSE-KMS, with `sse_kms_key_id`).
    #[serde(default)]
    pub sse: Option<String>,
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    #[serde(default)]
    pub acl: Option<String>,
    #[serde(default = "default_true")]
    pub guess_mime_type: bool,
    #[serde(default)]
    pub requester_pays: bool,
    #[serde(default = "default_file_mode")]
    pub default_file_mode: OctalMode,
    #[serde(default = "default_dir_mode")]
    pub default_dir_mode: OctalMode,
    #[serde(default = "default_nobody")]
    pub default_owner: u32,
    #[serde(default = "default_nobody")]
    pub default_group: u32,
}

fn default_true() -> bool {
    true
}
fn default_file_mode() -> OctalMode {
    OctalMode(0o666)
}
fn default_dir_mode() -> OctalMode {
    OctalMode(0o777)
}
fn default_nobody() -> u32 {
    65534
}

/// A byte count written as "150GiB", "64MiB", "512KiB", "10GB" or a plain number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration written as "5s", "500ms", "2m", "1h".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Permission bits written as an octal string ("0644").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OctalMode(pub u32);

pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size such as \"150GiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration such as \"5s\""))?;
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m, h, d)")),
    })
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_byte_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for OctalMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(s.trim(), 8) {
            Ok(m) if m <= 0o7777 => Ok(OctalMode(m)),
            _ => Err(serde::de::Error::custom(format!("`{s}` is not an octal mode such as \"0644\""))),
        }
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.shares.is_empty() {
            return Err("at least one [[share]] is required".into());
        }
        Ok(())
    }
}
