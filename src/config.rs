//! The one TOML file that configures a gateway. Unknown keys are rejected and every
//! bad value is an error that names its key.

mod rate;
pub use rate::{Days, Hours, MIN_RATE, Rate, RateWindow};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
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
    #[serde(default)]
    pub smb: crate::smb::SmbConfig,
    #[serde(default, rename = "share")]
    pub shares: Vec<ShareConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NfsConfig {
    /// NFS, MOUNT and portmap all answer on this one address.
    pub listen: SocketAddr,
    pub max_connections: usize,
    /// Connections one client address may hold at once (Linux mounts use one each,
    /// up to 16 with `nconnect`).
    pub max_connections_per_client: usize,
    /// Calls served at once on one connection; more wait in the socket.
    pub max_calls_per_connection: usize,
    /// Memory for replies not yet written (READ data, directory pages), across all
    /// clients, and the most one client address may hold of it. A client that does
    /// not read its replies is stopped at its share.
    pub reply_memory: ByteSize,
    pub reply_memory_per_client: ByteSize,
    /// A portmapper (UDP and TCP) on another address, normally "0.0.0.0:111", for
    /// clients that always ask port 111 (Windows). Off when unset.
    pub portmap_listen: Option<SocketAddr>,
}

impl Default for NfsConfig {
    fn default() -> Self {
        NfsConfig {
            listen: "127.0.0.1:2049".parse().expect("valid literal"),
            max_connections: 1024,
            max_connections_per_client: 64,
            max_calls_per_connection: 64,
            reply_memory: ByteSize(256 << 20),
            reply_memory_per_client: ByteSize(32 << 20),
            portmap_listen: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A file holding the bearer token `/api/v1/*` requires (one line). Unset, the
    /// API answers only clients on this host (loopback); `/metrics`, `/healthz` and
    /// `/readyz` need no token.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9108".parse().expect("valid literal"),
            token_file: None,
        }
    }
}

impl AdminConfig {
    /// The token in `token_file`, if one is configured; an error names the file.
    pub fn token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("admin.token_file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "admin.token_file {}: the token must be one line of at least 16 characters without spaces",
                path.display()
            ));
        }
        Ok(Some(token.to_owned()))
    }

    /// Who may call the admin API: the token holder, or without a token anyone on
    /// this host (a network listener then serves others only metrics and health).
    pub fn api_access(&self) -> Result<crate::admin::ApiAccess, String> {
        use crate::admin::ApiAccess;
        Ok(match self.token()? {
            Some(t) => ApiAccess::Token(t),
            None if self.listen.ip().is_loopback() => ApiAccess::Open,
            None => ApiAccess::LocalOnly,
        })
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
    /// Memory for the attribute hot set: decoded inodes of recently used files.
    pub attr_cache: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("bucketgate-data/cache"),
            capacity: ByteSize(150 << 30),
            dirty_limit: None,
            upload_delay: HumanDuration(Duration::from_secs(10)),
            max_dirty_age: HumanDuration(Duration::from_secs(60)),
            attr_cache: ByteSize(64 << 20),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Files at or above this size go up as multipart uploads.
    pub multipart_threshold: ByteSize,
    pub part_size: ByteSize,
    /// Files of `small_file_threshold` and more uploaded at once.
    pub concurrency: usize,
    /// Files below this size upload on workers of their own, this many at once.
    pub small_file_threshold: ByteSize,
    pub small_file_concurrency: usize,
    /// Parts of one multipart upload in flight at once.
    pub part_concurrency: usize,
    /// Memory for upload bodies across all shares: a file below the multipart
    /// threshold is read into memory whole, a part in flight takes 2 MiB (parts are
    /// read from the cache disk while they are sent). Uploads wait for it.
    pub memory: ByteSize,
    /// Renames and attribute changes of larger objects are copied part by part
    /// (UploadPartCopy) instead of with one CopyObject: S3's limit is 5 GiB, some
    /// S3-compatible stores have a lower one.
    pub max_single_copy: ByteSize,
    /// Bytes sent to the store per second, across shares; unlimited by default.
    pub rate_limit: Rate,
    /// Other limits by day and hour (local time); the first that applies wins.
    pub rate_schedule: Vec<RateWindow>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            multipart_threshold: ByteSize(16 << 20),
            part_size: ByteSize(16 << 20),
            concurrency: 8,
            small_file_threshold: ByteSize(1 << 20),
            small_file_concurrency: 32,
            part_concurrency: 8,
            memory: ByteSize(256 << 20),
            max_single_copy: ByteSize(MAX_SINGLE_PUT),
            rate_limit: Rate::default(),
            rate_schedule: Vec::new(),
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
    /// Re-list a directory from the store when it was last listed longer ago than
    /// this (File Gateway's automated cache refresh). Unset: only `bucketgate refresh`
    /// and the first access list.
    #[serde(default)]
    pub cache_stale_after: Option<HumanDuration>,
    /// An SQS queue URL that receives the bucket's S3 event notifications
    /// (ObjectCreated:*, ObjectRemoved:*): objects other clients write, overwrite or
    /// delete under the share's prefix show within seconds instead of at the next
    /// listing. Off when unset.
    #[serde(default)]
    pub events: Option<String>,
    /// Upload notifications: a JSON-lines file that gets one line per object that
    /// reached the store, and/or a webhook (http://) that gets each as a POST.
    #[serde(default)]
    pub upload_log: Option<PathBuf>,
    #[serde(default)]
    pub upload_webhook: Option<String>,
    /// How long a file must go without another upload before its notification is
    /// sent (File Gateway's SettlingTimeInSeconds).
    #[serde(default = "default_upload_settle")]
    pub upload_settle: HumanDuration,
    /// JSON-lines audit log of changes made through this share; off when unset.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// The audit log also records reads: the first READ of a file by a client after
    /// a pause of 60 s (one record per read session, not per READ).
    #[serde(default)]
    pub audit_reads: bool,
    /// How an upload makes sure it does not replace a version of the object that
    /// someone else wrote since the gateway last saw it.
    #[serde(default)]
    pub conflict_check: ConflictCheck,
    /// Keep setuid/setgid bits that object metadata carries. Off by default: anyone
    /// who may write the bucket could plant a setuid-root program.
    #[serde(default)]
    pub import_setid: bool,
    /// Largest file the share accepts (writes and truncations past it answer
    /// `NFS3ERR_FBIG`). Default and most: S3's object size limit, 5 TiB.
    #[serde(default)]
    pub max_file_size: Option<ByteSize>,
    /// Also mount the share with FUSE here, on the gateway (for local programs and
    /// Samba); off when unset, except for an SMB share (`/run/bucketgate/smb/<name>`).
    #[serde(default)]
    pub fuse_mount: Option<PathBuf>,
    /// Serve the share over SMB too: Samba over its FUSE mount (see `[smb]`).
    #[serde(default)]
    pub smb: bool,
    /// Who may use it over SMB: users of the SMB user database, and Unix groups.
    #[serde(default)]
    pub smb_users: Vec<String>,
    #[serde(default)]
    pub smb_groups: Vec<String>,
    /// Anyone may use it over SMB, as the guest account (nobody).
    #[serde(default)]
    pub smb_guest: bool,
    /// SMB oplocks and leases. Off by default: changes made through NFS or found in
    /// the store do not break them, so a client could keep reading stale data.
    #[serde(default)]
    pub smb_oplocks: bool,
}

impl ShareConfig {
    /// Who may use the share over SMB, as smb.conf's `valid users` names them:
    /// users, then `@group`s.
    pub fn smb_valid_users(&self) -> Vec<String> {
        self.smb_users
            .iter()
            .cloned()
            .chain(self.smb_groups.iter().map(|g| format!("@{g}")))
            .collect()
    }

    /// Where the share is mounted with FUSE, if anywhere.
    pub fn fuse_path(&self) -> Option<PathBuf> {
        match &self.fuse_mount {
            Some(p) => Some(p.clone()),
            None if self.smb => Some(crate::smb::default_mount(&self.name)),
            None => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictCheck {
    /// Conditional requests (If-Match, x-amz-copy-source-if-match): atomic. S3 and
    /// most S3-compatible servers support them.
    #[default]
    IfMatch,
    /// A HEAD before each such write, for stores that ignore the conditions.
    Head,
    /// Overwrite, as File Gateway does: the last writer wins.
    Off,
}

/// What is wrong with a share's SMB keys, each by key.
fn smb_share_problems(s: &ShareConfig, add: &mut impl FnMut(&str, String)) {
    if !s.smb {
        for (key, set) in [
            ("smb_users", !s.smb_users.is_empty()),
            ("smb_groups", !s.smb_groups.is_empty()),
            ("smb_guest", s.smb_guest),
            ("smb_oplocks", s.smb_oplocks),
        ] {
            if set {
                add(key, "needs smb = true".into());
            }
        }
        return;
    }
    let named = !s.smb_users.is_empty() || !s.smb_groups.is_empty();
    match (s.smb_guest, named) {
        (false, false) => add(
            "smb",
            "says who may use the share: smb_users and/or smb_groups, or smb_guest = true".into(),
        ),
        (true, true) => add("smb_guest", "a guest share has no smb_users or smb_groups".into()),
        _ => {}
    }
    // Names go into smb.conf as they are: nothing that could end or extend a line.
    for (key, names) in [("smb_users", &s.smb_users), ("smb_groups", &s.smb_groups)] {
        for n in names {
            if !crate::smb::valid_name(n) {
                add(
                    key,
                    format!("`{n}` must be 1-32 characters of a-z A-Z 0-9 . _ - (not starting with -)"),
                );
            } else if n == "root" {
                add(
                    key,
                    "root never reaches a share over SMB (invalid users = root)".into(),
                );
            }
        }
    }
    if ["global", "homes", "printers", "ipc$"].contains(&s.name.to_ascii_lowercase().as_str())
        || s.name.len() > 80
    {
        add(
            "name",
            format!(
                "`{}` cannot be an SMB share name (global, homes and printers are Samba's; at most 80 characters)",
                s.name
            ),
        );
    }
}

fn default_upload_settle() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
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
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as \"150GiB\""))?;
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
        other => {
            return Err(format!("unknown size unit `{other}` (use KiB, MiB, GiB, TiB)"));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as \"5s\""))?;
    let too_long = || format!("`{s}` is too long");
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(too_long)?),
        other => {
            return Err(format!("unknown duration unit `{other}` (use ms, s, m, h, d)"));
        }
    })
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written visitor instead of an untagged enum: an untagged enum's error
        // ("did not match any variant") would hide which unit was wrong.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as \"150GiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("`{n}` is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_byte_size(s).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"5s\", \"500ms\", \"2m\"")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "`{n}` needs a unit: write \"{n}s\" or \"{n}ms\""
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "`{n}` needs a unit: write \"{n}s\" or \"{n}ms\""
                )))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                parse_duration(s).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for OctalMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(s.trim(), 8) {
            Ok(m) if m <= 0o7777 => Ok(OctalMode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not an octal mode such as \"0644\""
            ))),
        }
    }
}

/// S3 storage classes a share may write with. Classes whose objects cannot be read
/// back at once (GLACIER, DEEP_ARCHIVE) are left out on purpose: a gateway that cannot
/// read what it wrote breaks reads after eviction.
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "INTELLIGENT_TIERING",
    "STANDARD_IA",
    "ONEZONE_IA",
    "GLACIER_IR",
];
/// Server-side encryption modes: SSE-S3 and SSE-KMS.
pub const SSE_MODES: &[&str] = &["AES256", "aws:kms"];
/// S3 canned ACLs that apply to objects (log-delivery-write is bucket-only).
pub const CANNED_ACLS: &[&str] = &[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];
/// S3 limits on multipart part size.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// The largest object one PutObject may write.
pub const MAX_SINGLE_PUT: u64 = 5 << 30;

/// Where a share's objects live, parsed from its `url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareLocation {
    /// `prefix` is empty or ends with '/'.
    S3 { bucket: String, prefix: String },
    /// An absolute directory standing in for a bucket (tests, appliances without S3).
    File { path: PathBuf },
}

impl ShareLocation {
    pub fn parse(url: &str) -> Result<ShareLocation, String> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket_name(bucket)?;
            let mut prefix = prefix.to_string();
            if !prefix.is_empty() {
                if !prefix.ends_with('/') {
                    prefix.push('/');
                }
                let segs: Vec<&str> = prefix[..prefix.len() - 1].split('/').collect();
                if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
                    return Err(format!(
                        "`{url}`: the prefix must not contain empty, `.` or `..` segments"
                    ));
                }
            }
            Ok(ShareLocation::S3 {
                bucket: bucket.to_string(),
                prefix,
            })
        } else if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!("`{url}`: write file:///absolute/path (three slashes)"));
            }
            if rest.split('/').any(|s| s == "." || s == "..") {
                return Err(format!("`{url}`: the path must not contain `.` or `..`"));
            }
            Ok(ShareLocation::File {
                path: PathBuf::from(rest),
            })
        } else {
            Err(format!(
                "`{url}` is neither s3://bucket[/prefix/] nor file:///absolute/path"
            ))
        }
    }
}

/// S3 bucket naming rules (general purpose buckets).
fn check_bucket_name(b: &str) -> Result<(), String> {
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let ends_ok = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&b.len())
        || !ok_chars
        || !ends_ok(b.bytes().next())
        || !ends_ok(b.bytes().last())
        || b.contains("..")
    {
        return Err(format!(
            "`{b}` is not a valid bucket name (3-63 characters: a-z, 0-9, '.', '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// One allowed-clients rule: an address or a CIDR block. IPv4-mapped IPv6 rules
/// (`::ffff:10.0.0.0/104`) are stored as their IPv4 equivalent so one comparison
/// covers both spellings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket reports an
/// IPv4 client) as the IPv4 address it is; anything else unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let s = s.trim();
        let (addr_s, len_s) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len_s {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => return Err(format!("`{s}`: prefix length must be 0..={max}")),
            },
        };
        let net = IpNet { addr, prefix_len };
        if net.network() != addr {
            // Refuse rather than mask: "10.1.2.3/8" is more often a typo for /32 or
            // for 10.0.0.0/8 than a deliberate spelling, and guessing wrong opens a share.
            return Err(format!(
                "`{s}` has host bits set; did you mean {}/{prefix_len}?",
                net.network()
            ));
        }
        // Fold IPv4-mapped rules into IPv4 rules.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix_len >= 96
        {
            return Ok(IpNet {
                addr: IpAddr::V4(v4),
                prefix_len: prefix_len - 96,
            });
        }
        Ok(net)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let m = if self.prefix_len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix_len)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = if self.prefix_len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix_len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                IpNet {
                    addr: ip,
                    prefix_len: self.prefix_len,
                }
                .network()
                    == self.addr
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A share's `allowed_clients`, parsed. Empty allows every client (File Gateway's
/// default is 0.0.0.0/0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientList(pub Vec<IpNet>);

impl ClientList {
    /// Parses every rule; the error names the first bad one by index.
    pub fn parse(rules: &[String]) -> Result<ClientList, (usize, String)> {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| IpNet::parse(r).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()
            .map(ClientList)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(ip))
    }
}

impl ShareConfig {
    /// The share's `url`, parsed (infallible after [`Config::validate`]).
    pub fn location(&self) -> Result<ShareLocation, String> {
        ShareLocation::parse(&self.url)
    }

    /// The share's `allowed_clients`, parsed (infallible after [`Config::validate`]).
    pub fn client_list(&self) -> Result<ClientList, String> {
        ClientList::parse(&self.allowed_clients).map_err(|(i, e)| format!("allowed_clients[{i}]: {e}"))
    }

    /// The path NFS clients mount.
    pub fn export_path(&self) -> String {
        format!("/{}", self.name)
    }
}

/// Collects every problem found, each prefixed with its key, so one run of
/// `check-config` shows them all.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, key: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.0.push(format!("{key}: {msg}"));
    }
}

impl Config {
    /// Parses and validates. Errors name the key (`share[0].url: ...`); syntax and
    /// unknown-key errors come from the TOML parser with line and column.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file; errors start with the file name.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The configuration `bucketgate serve` runs without a config file: everything on
    /// loopback, data under `base` (made absolute), one share `data` backed by a
    /// directory so it works with no cloud account.
    pub fn embedded_default(base: &Path) -> Config {
        let base = if base.is_absolute() {
            base.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(base))
                .unwrap_or_else(|_| base.to_path_buf())
        };
        let share: ShareConfig = toml::from_str(&format!(
            "name = \"data\"\nurl = {}",
            toml::Value::String(format!("file://{}", base.join("bucket").display()))
        ))
        .expect("embedded share literal");
        Config {
            nfs: NfsConfig::default(),
            admin: AdminConfig::default(),
            // 10 GiB, not the appliance's 150 GiB: the embedded config is for trying the
            // gateway on a workstation, whose disk is shared with everything else.
            cache: CacheConfig {
                dir: base.join("cache"),
                capacity: ByteSize(10 << 30),
                ..CacheConfig::default()
            },
            upload: UploadConfig::default(),
            log: LogConfig::default(),
            smb: crate::smb::SmbConfig::default(),
            shares: vec![share],
        }
    }

    /// Dirty bytes at which writers are throttled: `cache.dirty_limit`, or 80% of capacity.
    pub fn dirty_limit_bytes(&self) -> u64 {
        self.cache
            .dirty_limit
            .map(|b| b.0)
            .unwrap_or(self.cache.capacity.0 / 10 * 8)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut p = Problems(Vec::new());
        self.validate_into(&mut p);
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(p.0.join("\n"))
        }
    }

    fn validate_into(&self, p: &mut Problems) {
        // [nfs] / [admin]
        if self.nfs.max_connections == 0 {
            p.add("nfs.max_connections", "must be at least 1");
        }
        if self.nfs.max_connections_per_client == 0 {
            p.add("nfs.max_connections_per_client", "must be at least 1");
        }
        if self.nfs.max_calls_per_connection == 0 {
            p.add("nfs.max_calls_per_connection", "must be at least 1");
        }
        for (k, v) in [
            ("nfs.reply_memory", self.nfs.reply_memory.0),
            ("nfs.reply_memory_per_client", self.nfs.reply_memory_per_client.0),
        ] {
            if !((2 << 20)..=(4 << 30)).contains(&v) {
                p.add(k, "must be 2MiB..4GiB (a READ reply takes up to 1 MiB)");
            }
        }
        if self.nfs.reply_memory_per_client.0 > self.nfs.reply_memory.0 {
            p.add("nfs.reply_memory_per_client", "must not exceed nfs.reply_memory");
        }
        let collide = |x: SocketAddr, y: SocketAddr| {
            x.port() != 0
                && x.port() == y.port()
                && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
        };
        let (n, a) = (self.nfs.listen, self.admin.listen);
        if collide(n, a) {
            p.add(
                "admin.listen",
                format!("{a} collides with nfs.listen {n}; use another port"),
            );
        }
        if let Some(pm) = self.nfs.portmap_listen {
            for (other, what) in [(n, "nfs.listen"), (a, "admin.listen")] {
                if collide(pm, other) {
                    p.add(
                        "nfs.portmap_listen",
                        format!("{pm} collides with {what} {other}; NFS's own port already answers portmap"),
                    );
                }
            }
        }

        // [cache]
        let c = &self.cache;
        if c.dir.as_os_str().is_empty() {
            p.add("cache.dir", "must not be empty");
        }
        if c.capacity.0 < (64 << 20) {
            p.add(
                "cache.capacity",
                format!("{} bytes is too small (at least 64MiB)", c.capacity.0),
            );
        }
        if let Some(d) = c.dirty_limit {
            if d.0 == 0 {
                p.add(
                    "cache.dirty_limit",
                    "must be more than 0 (no write could ever be accepted)",
                );
            } else if d.0 > c.capacity.0 {
                p.add(
                    "cache.dirty_limit",
                    format!("{} bytes exceeds cache.capacity ({} bytes)", d.0, c.capacity.0),
                );
            }
        }
        if c.max_dirty_age.0.is_zero() {
            p.add("cache.max_dirty_age", "must be more than 0");
        }
        if c.upload_delay.0 > c.max_dirty_age.0 {
            p.add(
                "cache.upload_delay",
                format!(
                    "{:?} exceeds cache.max_dirty_age ({:?}); a file would be forced out before it could go quiet",
                    c.upload_delay.0, c.max_dirty_age.0
                ),
            );
        }

        // [upload]
        let u = &self.upload;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&u.part_size.0) {
            p.add(
                "upload.part_size",
                format!("{} bytes is outside S3's limits (5MiB..5GiB)", u.part_size.0),
            );
        }
        if u.multipart_threshold.0 < u.part_size.0 {
            // Below part_size a "multipart" upload is a single part: one PutObject
            // does the same with two fewer requests.
            p.add(
                "upload.multipart_threshold",
                format!(
                    "{} bytes is below upload.part_size ({} bytes)",
                    u.multipart_threshold.0, u.part_size.0
                ),
            );
        }
        if u.multipart_threshold.0 > MAX_SINGLE_PUT {
            p.add(
                "upload.multipart_threshold",
                format!(
                    "{} bytes is above 5GiB, the largest single PutObject",
                    u.multipart_threshold.0
                ),
            );
        }
        if u.concurrency == 0 {
            p.add("upload.concurrency", "must be at least 1");
        }
        if u.small_file_concurrency == 0 {
            p.add("upload.small_file_concurrency", "must be at least 1");
        }
        if u.small_file_threshold.0 > u.multipart_threshold.0 {
            p.add(
                "upload.small_file_threshold",
                "must be at most upload.multipart_threshold (small files go up in one PutObject)",
            );
        }
        if !((4 << 20)..=(4 << 30)).contains(&u.memory.0) {
            p.add("upload.memory", "must be 4MiB..4GiB");
        } else if u.memory.0 < u.multipart_threshold.0 {
            p.add(
                "upload.memory",
                format!(
                    "must hold a whole single-request upload: at least upload.multipart_threshold ({} MiB)",
                    u.multipart_threshold.0 >> 20
                ),
            );
        }
        if u.part_concurrency == 0 {
            p.add("upload.part_concurrency", "must be at least 1");
        }
        if !(MIN_PART_SIZE..=MAX_SINGLE_PUT).contains(&u.max_single_copy.0) {
            p.add(
                "upload.max_single_copy",
                format!("{} bytes is not within 5MiB..5GiB", u.max_single_copy.0),
            );
        }

        // [log]
        if let Some(level) = &self.log.level
            && let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level)
        {
            p.add("log.level", format!("`{level}` is not a tracing filter: {e}"));
        }

        // [[share]]
        if self.shares.is_empty() {
            p.add("share", "at least one [[share]] is required");
        }
        for (i, s) in self.shares.iter().enumerate() {
            let k = |f: &str| format!("share[{i}].{f}");
            if s.name.is_empty()
                || s.name.len() > 255
                || !s
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
                || s.name == "."
                || s.name == ".."
            {
                p.add(
                    k("name"),
                    format!("`{}` must be 1-255 characters of a-z A-Z 0-9 . _ -", s.name),
                );
            }
            if let Some(m) = s.max_file_size
                && (m.0 == 0 || m.0 > bucketgate_cache::MAX_FILE_SIZE)
            {
                p.add(
                    k("max_file_size"),
                    "must be 1 byte..5TiB (S3's object size limit)",
                );
            }
            if let Some(j) = self.shares[..i].iter().position(|o| o.name == s.name) {
                p.add(
                    k("name"),
                    format!("`{}` is already the name of share[{j}]", s.name),
                );
            }
            let loc = match s.location() {
                Ok(l) => Some(l),
                Err(e) => {
                    p.add(k("url"), e);
                    None
                }
            };
            if let Err((j, e)) = ClientList::parse(&s.allowed_clients) {
                p.add(format!("share[{i}].allowed_clients[{j}]"), e);
            }
            if let Some(sc) = &s.storage_class
                && !STORAGE_CLASSES.contains(&sc.as_str())
            {
                p.add(
                    k("storage_class"),
                    format!("`{sc}` is not one of {}", STORAGE_CLASSES.join(", ")),
                );
            }
            match (&s.sse, &s.sse_kms_key_id) {
                (Some(m), _) if !SSE_MODES.contains(&m.as_str()) => {
                    p.add(k("sse"), format!("`{m}` is not one of {}", SSE_MODES.join(", ")))
                }
                (Some(m), Some(_)) if m != "aws:kms" => {
                    p.add(k("sse_kms_key_id"), "only applies with sse = \"aws:kms\"")
                }
                (None, Some(_)) => p.add(k("sse_kms_key_id"), "only applies with sse = \"aws:kms\""),
                (_, Some(id)) if id.trim().is_empty() => p.add(k("sse_kms_key_id"), "must not be empty"),
                _ => {}
            }
            if let Some(acl) = &s.acl
                && !CANNED_ACLS.contains(&acl.as_str())
            {
                p.add(
                    k("acl"),
                    format!("`{acl}` is not one of {}", CANNED_ACLS.join(", ")),
                );
            }
            if let Some(r) = &s.region
                && (r.is_empty()
                    || !r
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'))
            {
                p.add(
                    k("region"),
                    format!("`{r}` is not a region name such as \"eu-west-1\""),
                );
            }
            if let Some(e) = &s.endpoint {
                check_endpoint(e).unwrap_or_else(|m| p.add(k("endpoint"), m));
            }
            if matches!(loc, Some(ShareLocation::File { .. })) {
                // S3-only settings on a directory share are a sign the operator meant
                // something else; silently ignoring them would hide that.
                let s3_only: [(&str, bool); 8] = [
                    ("region", s.region.is_some()),
                    ("events", s.events.is_some()),
                    ("endpoint", s.endpoint.is_some()),
                    ("path_style", s.path_style),
                    ("storage_class", s.storage_class.is_some()),
                    ("sse", s.sse.is_some()),
                    ("acl", s.acl.is_some()),
                    ("requester_pays", s.requester_pays),
                ];
                for (key, set) in s3_only {
                    if set {
                        p.add(k(key), "only applies to s3:// shares");
                    }
                }
            }
            if let Some(q) = &s.events
                && let Err(m) = crate::events::QueueUrl::parse(q)
            {
                p.add(k("events"), m);
            }
            if s.audit_reads && s.audit_log.is_none() {
                p.add(k("audit_reads"), "needs audit_log");
            }
            // A path of this share's own: absolute, and no earlier share's.
            let own_path =
                |p: &mut Problems, key: &str, what: &str, get: fn(&ShareConfig) -> Option<&PathBuf>| {
                    let Some(path) = get(s) else { return };
                    if !path.is_absolute() {
                        p.add(k(key), format!("`{}` must be an absolute path", path.display()));
                    }
                    if let Some(j) = self.shares[..i].iter().position(|o| get(o) == Some(path)) {
                        p.add(
                            k(key),
                            format!("`{}` is already the {what} of share[{j}]", path.display()),
                        );
                    }
                };
            own_path(p, "audit_log", "audit log", |s| s.audit_log.as_ref());
            own_path(p, "upload_log", "upload log", |s| s.upload_log.as_ref());
            if let Some(w) = &s.upload_webhook
                && let Err(m) = crate::upload::Webhook::parse(w)
            {
                p.add(k("upload_webhook"), m);
            }
            if let Some(a) = &s.audit_log
                && a.is_absolute()
                && a.is_dir()
            {
                p.add(
                    k("audit_log"),
                    format!("`{}` is a directory; name a file", a.display()),
                );
            }
            own_path(p, "fuse_mount", "FUSE mount", |s| s.fuse_mount.as_ref());
            if s.fuse_mount
                .as_ref()
                .is_some_and(|m| m.starts_with(&self.cache.dir))
            {
                p.add(k("fuse_mount"), "must not be inside cache.dir");
            }
            smb_share_problems(s, &mut |key, msg| p.add(k(key), msg));
            for (key, m) in [
                ("default_file_mode", s.default_file_mode),
                ("default_dir_mode", s.default_dir_mode),
            ] {
                if m.0 > 0o777 {
                    p.add(
                        k(key),
                        format!("{:o}: only permission bits (at most 0777) are allowed", m.0),
                    );
                }
            }
        }
    }

    /// Valid but probably unintended settings, for `check-config` and the startup log.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let nfs_local = self.nfs.listen.ip().is_loopback();
        if nfs_local {
            w.push(format!(
                "nfs.listen: {} is loopback, so only this host can mount; use 0.0.0.0 or a private address to serve others",
                self.nfs.listen
            ));
        }
        // Read at start (it may be made at first boot, after the config is checked).
        if let Err(e) = self.admin.token() {
            w.push(format!("{e}: `serve` will refuse to start"));
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.token_file.is_none() {
            w.push(format!(
                "admin.listen: {} is reachable from the network and admin.token_file is unset: /api/v1 (status, flush, refresh) answers 403 to other hosts; /metrics, /healthz and /readyz answer anyone who reaches it, so firewall it",
                self.admin.listen
            ));
        }
        for (i, s) in self.shares.iter().enumerate() {
            if !nfs_local && s.allowed_clients.is_empty() {
                w.push(format!(
                    "share[{i}].allowed_clients: empty, so every host that reaches {} may mount {}",
                    self.nfs.listen,
                    s.export_path()
                ));
            }
            if s.squash == Squash::None && !s.read_only {
                w.push(format!(
                    "share[{i}].squash: \"none\" lets root on any allowed client act as root on {}",
                    s.export_path()
                ));
            }
        }
        w
    }

    /// A few lines for `check-config` and the startup log. Nothing here is secret (the
    /// config holds no credentials: they come from the AWS credential chain).
    pub fn summary(&self) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let mut out = format!(
            "nfs    {} (max {} connections)\nadmin  http://{}\ncache  {} capacity {:.1} GiB, dirty limit {:.1} GiB, upload after {:?} quiet / {:?} max\nupload multipart >= {} MiB, parts {} MiB, {} files x {} parts at once\n",
            self.nfs.listen,
            self.nfs.max_connections,
            self.admin.listen,
            self.cache.dir.display(),
            gib(self.cache.capacity.0),
            gib(self.dirty_limit_bytes()),
            self.cache.upload_delay.0,
            self.cache.max_dirty_age.0,
            self.upload.multipart_threshold.0 >> 20,
            self.upload.part_size.0 >> 20,
            self.upload.concurrency,
            self.upload.part_concurrency,
        );
        for s in &self.shares {
            let clients = if s.allowed_clients.is_empty() {
                "all clients".to_string()
            } else {
                s.allowed_clients.join(",")
            };
            out.push_str(&format!(
                "share  {} -> {} ({}, squash {}, {})\n",
                s.export_path(),
                s.url,
                if s.read_only { "ro" } else { "rw" },
                format!("{:?}", s.squash).to_lowercase(),
                clients
            ));
            if let (true, Some(m)) = (s.smb, s.fuse_path()) {
                let who = if s.smb_guest {
                    "guest".to_string()
                } else {
                    s.smb_valid_users().join(",")
                };
                out.push_str(&format!(
                    "       smb \\\\host\\{} over {} ({who})\n",
                    s.name,
                    m.display()
                ));
            }
        }
        if self.shares.iter().any(|s| s.smb) {
            out.push_str(&format!(
                "smb    {} (security {}{})\n",
                self.smb.listen,
                format!("{:?}", self.smb.security).to_lowercase(),
                if self.smb.run_smbd {
                    ", smbd run by the gateway"
                } else {
                    ""
                }
            ));
        }
        out
    }
}

fn check_endpoint(e: &str) -> Result<(), String> {
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .ok_or_else(|| format!("`{e}` must start with https:// or http://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        // Never accept credentials in a URL: they would end up in logs and status output.
        return Err("must not contain user:password@; credentials come from the AWS credential chain".into());
    }
    if authority.is_empty() {
        return Err(format!("`{e}` has no host"));
    }
    Ok(())
}

/// The fully commented example `bucketgate init` writes: every key, its default, why.
pub const EXAMPLE_TOML: &str = include_str!("example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    const SHARE: &str = "[[share]]\nname = \"data\"\nurl = \"s3://my-bucket/p/\"\n";

    fn err_of(text: &str) -> String {
        Config::from_toml(text).expect_err(&format!("should be rejected:\n{text}"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(SHARE).unwrap();
        assert_eq!(c.nfs.listen, "127.0.0.1:2049".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:9108".parse().unwrap());
        assert_eq!(c.shares[0].squash, Squash::Root);
        assert_eq!(c.dirty_limit_bytes(), (150u64 << 30) / 10 * 8);
        assert_eq!(
            c.shares[0].location().unwrap(),
            ShareLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "p/".into()
            }
        );
    }

    /// Every bad value is rejected with an error naming its key.
    #[test]
    fn each_bad_value_names_its_key() {
        let share = |extra: &str| format!("{SHARE}{extra}\n");
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "share: at least one"),
            (share("").replace("\"data\"", "\"da ta\""), "share[0].name"),
            (share("").replace("\"data\"", "\"\""), "share[0].name"),
            (
                format!("{SHARE}{SHARE}"),
                "share[1].name: `data` is already the name of share[0]",
            ),
            (share("").replace("s3://my-bucket/p/", "http://x"), "share[0].url"),
            (
                share("").replace("s3://my-bucket/p/", "s3://My_Bucket"),
                "share[0].url",
            ),
            (share("").replace("s3://my-bucket/p/", "s3://ab"), "share[0].url"),
            (
                share("").replace("s3://my-bucket/p/", "s3://bucket/a//b/"),
                "share[0].url",
            ),
            (
                share("").replace("s3://my-bucket/p/", "s3://bucket/../b/"),
                "share[0].url",
            ),
            (
                share("").replace("s3://my-bucket/p/", "file://relative/dir"),
                "share[0].url",
            ),
            (
                share("").replace("s3://my-bucket/p/", "file:///a/../b"),
                "share[0].url",
            ),
            (
                share("allowed_clients = [\"10.0.0.0/8\", \"bogus\"]"),
                "share[0].allowed_clients[1]",
            ),
            (
                share("allowed_clients = [\"10.0.0.0/33\"]"),
                "share[0].allowed_clients[0]",
            ),
            (
                share("allowed_clients = [\"10.1.2.3/8\"]"),
                "did you mean 10.0.0.0/8",
            ),
            (share("storage_class = \"GLACIER\""), "share[0].storage_class"),
            (share("sse = \"aes256\""), "share[0].sse"),
            (
                share("sse = \"AES256\"\nsse_kms_key_id = \"k\""),
                "share[0].sse_kms_key_id",
            ),
            (share("sse_kms_key_id = \"k\""), "share[0].sse_kms_key_id"),
            (share("acl = \"log-delivery-write\""), "share[0].acl"),
            (
                share("events = \"q1\""),
                "share[0].events: `q1` is not an SQS queue URL",
            ),
            (
                share("events = \"https://k:s@sqs.us-east-1.amazonaws.com/1/q\""),
                "share[0].events: must not carry credentials",
            ),
            (
                share("").replace("s3://my-bucket/p/", "file:///srv/b")
                    + "events = \"http://127.0.0.1:1/1/q\"\n",
                "share[0].events: only applies to s3:// shares",
            ),
            (
                share("events = \"https://sqs.us-east-1.amazonaws.com/\""),
                "share[0].events",
            ),
            (
                share("audit_log = \"audit.jsonl\""),
                "share[0].audit_log: `audit.jsonl` must be an absolute path",
            ),
            (
                share("audit_log = \"/tmp\""),
                "share[0].audit_log: `/tmp` is a directory",
            ),
            (
                share("fuse_mount = \"mnt\""),
                "share[0].fuse_mount: `mnt` must be an absolute path",
            ),
            (
                share("smb_users = [\"a\"]"),
                "share[0].smb_users: needs smb = true",
            ),
            (share("smb_guest = true"), "share[0].smb_guest: needs smb = true"),
            (share("smb = true"), "share[0].smb: says who may use the share"),
            (
                share("smb = true\nsmb_guest = true\nsmb_groups = [\"g\"]"),
                "share[0].smb_guest: a guest share has no smb_users",
            ),
            (
                share("smb = true\nsmb_users = [\"a b\"]"),
                "share[0].smb_users: `a b` must be 1-32 characters",
            ),
            (
                share("smb = true\nsmb_users = [\"x\\nread only = no\"]"),
                "share[0].smb_users: `x\nread only = no` must be",
            ),
            (
                share("smb = true\nsmb_users = [\"root\"]"),
                "share[0].smb_users: root never reaches a share",
            ),
            (
                "[smb]\nsecurity = \"strict\"\n".to_string() + &share(""),
                "unknown variant `strict`",
            ),
            (
                share("fuse_mount = \"/run/m\"")
                    + "[[share]]\nname = \"b\"\nurl = \"s3://b-bucket/\"\nfuse_mount = \"/run/m\"\n",
                "share[1].fuse_mount: `/run/m` is already the FUSE mount of share[0]",
            ),
            (
                share("audit_log = \"/var/log/a.jsonl\"")
                    + "[[share]]\nname = \"b\"\nurl = \"s3://b-bucket/\"\naudit_log = \"/var/log/a.jsonl\"\n",
                "share[1].audit_log: `/var/log/a.jsonl` is already the audit log of share[0]",
            ),
            (share("region = \"EU West\""), "share[0].region"),
            (share("endpoint = \"s3.example.com\""), "share[0].endpoint"),
            (
                share("endpoint = \"https://key:secret@s3.example.com\""),
                "share[0].endpoint",
            ),
            (
                share("default_file_mode = \"4755\""),
                "share[0].default_file_mode",
            ),
            (
                share("").replace("s3://my-bucket/p/", "file:///srv/b") + "storage_class = \"STANDARD\"\n",
                "share[0].storage_class: only applies to s3:// shares",
            ),
            (
                format!("[upload]\npart_size = \"4MiB\"\n{SHARE}"),
                "upload.part_size",
            ),
            (
                format!("[upload]\npart_size = \"6GiB\"\nmultipart_threshold = \"6GiB\"\n{SHARE}"),
                "upload.part_size",
            ),
            (
                format!("[upload]\nmultipart_threshold = \"8MiB\"\n{SHARE}"),
                "upload.multipart_threshold",
            ),
            (
                format!("[upload]\nmultipart_threshold = \"6GiB\"\n{SHARE}"),
                "upload.multipart_threshold",
            ),
            (
                format!("[upload]\nconcurrency = 0\n{SHARE}"),
                "upload.concurrency",
            ),
            (
                format!("[upload]\npart_concurrency = 0\n{SHARE}"),
                "upload.part_concurrency",
            ),
            (format!("[cache]\ncapacity = \"1MiB\"\n{SHARE}"), "cache.capacity"),
            (
                format!("[cache]\ncapacity = \"1GiB\"\ndirty_limit = \"2GiB\"\n{SHARE}"),
                "cache.dirty_limit",
            ),
            (format!("[cache]\ndirty_limit = 0\n{SHARE}"), "cache.dirty_limit"),
            (
                format!("[cache]\nupload_delay = \"2m\"\nmax_dirty_age = \"1m\"\n{SHARE}"),
                "cache.upload_delay",
            ),
            (
                format!("[cache]\nmax_dirty_age = \"0s\"\nupload_delay = \"0s\"\n{SHARE}"),
                "cache.max_dirty_age",
            ),
            (format!("[cache]\ndir = \"\"\n{SHARE}"), "cache.dir"),
            (
                format!("[nfs]\nmax_connections = 0\n{SHARE}"),
                "nfs.max_connections",
            ),
            (
                format!("[nfs]\nmax_calls_per_connection = 0\n{SHARE}"),
                "nfs.max_calls_per_connection",
            ),
            (
                format!("[nfs]\nlisten = \"0.0.0.0:9108\"\n{SHARE}"),
                "admin.listen",
            ),
            (
                format!("[log]\nlevel = \"bucketgate=loud\"\n{SHARE}"),
                "log.level",
            ),
        ];
        for (text, key) in cases {
            let e = err_of(&text);
            assert!(e.contains(key), "expected {key:?} in error {e:?} for\n{text}");
        }
    }

    /// Type and syntax errors come from the TOML parser: they name the key and line.
    #[test]
    fn parse_errors_name_key_and_line() {
        let e = err_of(&format!("[cache]\ncapcity = \"1GiB\"\n{SHARE}"));
        assert!(
            e.contains("unknown field `capcity`") && e.contains("line 2"),
            "{e}"
        );
        let e = err_of(&format!("{SHARE}read_olny = true\n"));
        assert!(
            e.contains("unknown field `read_olny`") && e.contains("line 4"),
            "{e}"
        );
        let e = err_of(&format!("[cache]\ncapacity = \"10XB\"\n{SHARE}"));
        assert!(
            e.contains("unknown size unit `XB`") && e.contains("line 2"),
            "{e}"
        );
        let e = err_of(&format!("[cache]\nupload_delay = 5\n{SHARE}"));
        assert!(e.contains("needs a unit") && e.contains("line 2"), "{e}");
        let e = err_of(&format!("[nfs]\nlisten = \"localhost\"\n{SHARE}"));
        assert!(e.contains("line 2") && e.contains("listen"), "{e}");
        let e = err_of(&format!("{SHARE}squash = \"root_squash\"\n"));
        assert!(e.contains("line 4") && e.contains("squash"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = err_of(&format!(
            "[upload]\nconcurrency = 0\n[cache]\ncapacity = 1\n{SHARE}acl = \"x\"\n"
        ));
        for key in ["upload.concurrency", "cache.capacity", "share[0].acl"] {
            assert!(e.contains(key), "{key} missing from {e}");
        }
        assert_eq!(e.lines().count(), 3, "{e}");
    }

    #[test]
    fn good_share_settings_pass() {
        let c = Config::from_toml(&format!(
            "{SHARE}region = \"eu-west-1\"\nendpoint = \"https://bucket.vpce-1.s3.eu-west-1.vpce.amazonaws.com\"\n\
             storage_class = \"INTELLIGENT_TIERING\"\nsse = \"aws:kms\"\nsse_kms_key_id = \"alias/k\"\n\
             acl = \"bucket-owner-full-control\"\nallowed_clients = [\"10.0.0.0/8\", \"fd00::/8\", \"192.168.1.7\"]\n\
             squash = \"all\"\n[[share]]\nname = \"b.2_x-y\"\nurl = \"file:///srv/bucket\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.shares[1].location().unwrap(),
            ShareLocation::File {
                path: "/srv/bucket".into()
            }
        );
        // a prefix without its trailing slash gets one
        assert_eq!(
            ShareLocation::parse("s3://bucket/a/b").unwrap(),
            ShareLocation::S3 {
                bucket: "bucket".into(),
                prefix: "a/b/".into()
            }
        );
        assert_eq!(
            ShareLocation::parse("s3://bucket").unwrap(),
            ShareLocation::S3 {
                bucket: "bucket".into(),
                prefix: "".into()
            }
        );
    }

    fn list(rules: &[&str]) -> ClientList {
        ClientList::parse(&rules.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_matching_v4_v6_and_mapped() {
        assert!(
            ClientList::default().allows(ip("203.0.113.9")),
            "empty list allows everyone"
        );
        let l = list(&["10.0.0.0/8", "192.168.1.17", "fd00::/8", "2001:db8::1"]);
        assert!(l.allows(ip("10.255.0.1")));
        assert!(!l.allows(ip("11.0.0.1")));
        assert!(l.allows(ip("192.168.1.17")));
        assert!(!l.allows(ip("192.168.1.18")));
        assert!(l.allows(ip("fd12:3456::1")));
        assert!(!l.allows(ip("fe80::1")));
        assert!(l.allows(ip("2001:db8::1")));
        assert!(!l.allows(ip("2001:db8::2")));
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        assert!(l.allows(ip("::ffff:10.1.2.3")));
        assert!(!l.allows(ip("::ffff:11.1.2.3")));
        // A v4 rule never matches a plain v6 address that merely shares bits.
        assert!(!list(&["0.0.0.0/0"]).allows(ip("::1")));
        assert!(list(&["0.0.0.0/0"]).allows(ip("::ffff:1.2.3.4")));
        assert!(list(&["::/0"]).allows(ip("::1")));
        // A mapped rule is folded into the IPv4 rule it means.
        let mapped = list(&["::ffff:10.0.0.0/104"]);
        assert_eq!(
            mapped.0[0],
            IpNet {
                addr: ip("10.0.0.0"),
                prefix_len: 8
            }
        );
        assert!(mapped.allows(ip("10.9.9.9")));
        // Edges: /0, /32, /128.
        assert!(list(&["0.0.0.0/0"]).allows(ip("255.255.255.255")));
        assert!(list(&["1.2.3.4/32"]).allows(ip("1.2.3.4")));
        assert!(list(&["::1/128"]).allows(ip("::1")));
    }

    #[test]
    fn cidr_parse_errors() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.1/8",
            "host.example",
            "10/8",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(IpNet::parse(" 10.0.0.0/8 ").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_byte_size("150GiB"), Ok(150 << 30));
        assert_eq!(parse_byte_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert!(parse_byte_size("1.5GiB").is_err());
        assert!(parse_byte_size("GiB").is_err());
        assert!(
            parse_byte_size("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(
            parse_duration("99999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
        // integers in TOML: bytes yes, durations no (no silent unit)
        let c = Config::from_toml(&format!("[cache]\ncapacity = 1073741824\n{SHARE}")).unwrap();
        assert_eq!(c.cache.capacity, ByteSize(1 << 30));
        assert!(err_of(&format!("[cache]\ncapacity = -1\n{SHARE}")).contains("negative"));
    }

    #[test]
    fn warnings_flag_risky_but_valid_settings() {
        let c = Config::from_toml(&format!(
            "[nfs]\nlisten = \"0.0.0.0:2049\"\n[admin]\nlisten = \"0.0.0.0:9108\"\n{SHARE}squash = \"none\"\n"
        ))
        .unwrap();
        let w = c.warnings().join("\n");
        for key in ["admin.listen", "share[0].allowed_clients", "share[0].squash"] {
            assert!(w.contains(key), "{key} missing from\n{w}");
        }
        assert!(!w.contains("nfs.listen"), "{w}");
        // The part size grows with the file: the default is no reason to warn.
        let local = Config::from_toml(SHARE).unwrap();
        let w = local.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("nfs.listen"), "{w:?}");
    }

    /// The admin API: open on loopback without a token, closed on a network listener
    /// without one, and behind the token when a token file is set; a token file
    /// that cannot be read or holds no usable token is an error at start (a warning
    /// for check-config, which may run before first boot makes it).
    #[test]
    fn admin_api_access_follows_listener_and_token() {
        use crate::admin::ApiAccess;
        let mut a = AdminConfig::default();
        assert_eq!(a.api_access().unwrap(), ApiAccess::Open);
        a.listen = "0.0.0.0:9108".parse().unwrap();
        assert_eq!(a.api_access().unwrap(), ApiAccess::LocalOnly);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        a.token_file = Some(f.clone());
        assert!(a.api_access().unwrap_err().contains("token"));
        std::fs::write(&f, "short\n").unwrap();
        assert!(a.api_access().is_err());
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        assert_eq!(
            a.api_access().unwrap(),
            ApiAccess::Token("0123456789abcdef0123".into())
        );
        let c = Config::from_toml(&format!(
            "[admin]\nlisten = \"0.0.0.0:9108\"\ntoken_file = \"{}\"\n{SHARE}",
            dir.path().join("missing").display()
        ))
        .unwrap();
        assert!(c.warnings().iter().any(|w| w.starts_with("admin.token_file")));
    }

    #[test]
    fn embedded_default_is_valid_and_local() {
        let c = Config::embedded_default(Path::new("/var/tmp/bg"));
        c.validate().unwrap();
        assert_eq!(c.nfs.listen, "127.0.0.1:2049".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:9108".parse().unwrap());
        assert_eq!(c.cache.dir, PathBuf::from("/var/tmp/bg/cache"));
        assert_eq!(c.cache.capacity, ByteSize(10 << 30));
        assert_eq!(c.shares.len(), 1);
        assert_eq!(c.shares[0].name, "data");
        assert_eq!(c.shares[0].url, "file:///var/tmp/bg/bucket");
        // A relative base is made absolute, so the file:// url is valid.
        let r = Config::embedded_default(Path::new("rel"));
        r.validate().unwrap();
        assert!(r.cache.dir.is_absolute());
        assert!(r.shares[0].url.starts_with("file:///"));
    }

    /// Field names of one section, read from serde's "expected one of" error.
    fn fields_of(section: &str) -> Vec<String> {
        let probe = if section == "share" {
            "[[share]]\n__probe = 1\n".to_string()
        } else {
            format!("[{section}]\n__probe = 1\n")
        };
        let e = toml::from_str::<Config>(&probe).unwrap_err().to_string();
        let list = e.split("expected").nth(1).unwrap_or_else(|| panic!("{e}"));
        list.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    #[test]
    fn example_passes_validation_and_documents_every_key() {
        let c = Config::from_toml(EXAMPLE_TOML).unwrap();
        // The example states the defaults: same values as an empty config.
        let d = Config::from_toml(SHARE).unwrap();
        assert_eq!(c.nfs.listen, d.nfs.listen);
        assert_eq!(c.cache.capacity, d.cache.capacity);
        assert_eq!(c.cache.upload_delay, d.cache.upload_delay);
        assert_eq!(c.upload.part_size, d.upload.part_size);
        assert_eq!(c.upload.concurrency, d.upload.concurrency);
        let lines: Vec<&str> = EXAMPLE_TOML.lines().map(|l| l.trim_start_matches("# ")).collect();
        let mut checked = 0;
        for section in ["nfs", "admin", "cache", "upload", "log", "smb", "share"] {
            let fields = fields_of(section);
            assert!(!fields.is_empty(), "{section}");
            for f in fields {
                assert!(
                    lines.iter().any(|l| l.starts_with(&format!("{f} = "))),
                    "example.toml does not mention [{section}] {f}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "{checked}");
        // Uncommenting every optional key still gives a valid file.
        let all: String = EXAMPLE_TOML
            .lines()
            .map(|l| {
                match l
                    .strip_prefix("# ")
                    .and_then(|k| Some((k, k.split_once(" = ")?.0)))
                {
                    Some((k, name)) if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') => k,
                    _ => l,
                }
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let all = Config::from_toml(&all).unwrap();
        assert_eq!(all.shares[0].sse.as_deref(), Some("aws:kms"));
        assert!(
            all.cache.dirty_limit.is_some() && all.log.level.is_some() && all.shares[0].endpoint.is_some()
        );
    }
}
