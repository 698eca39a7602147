//! POSIX attributes as S3 user metadata, in the schema AWS DataSync, FSx for Lustre
//! and S3 Files read and write, so the bucket stays readable by those tools.

use std::collections::HashMap;

pub const META_OWNER: &str = "file-owner";
pub const META_GROUP: &str = "file-group";
pub const META_PERMISSIONS: &str = "file-permissions";
pub const META_MTIME: &str = "file-mtime";
pub const META_USER_AGENT: &str = "user-agent";

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;

/// Owner, group, st_mode (with type bits) and mtime of one object: the cache's type,
/// so what the cache records and what the store carries are one thing.
pub use bucketgate_cache::ObjectAttrs;

/// The user-metadata pairs (without the `x-amz-meta-` prefix) for a write.
pub fn to_user_metadata(m: &ObjectAttrs) -> Vec<(String, String)> {
    vec![
        (META_OWNER.into(), m.uid.to_string()),
        (META_GROUP.into(), m.gid.to_string()),
        (META_PERMISSIONS.into(), format!("{:07o}", m.mode)),
        (META_MTIME.into(), format!("{}ns", m.mtime_ns)),
        (
            META_USER_AGENT.into(),
            concat!("bucketgate/", env!("CARGO_PKG_VERSION")).into(),
        ),
    ]
}

/// Reads the schema back. Returns `None` unless owner, group and permissions are
/// all present and parse; a missing or unparsable mtime falls back to `default_mtime_ns`.
/// An mtime without the `ns` suffix is milliseconds, as FSx for Lustre reads it.
pub fn from_user_metadata(md: &HashMap<String, String>, default_mtime_ns: u64) -> Option<ObjectAttrs> {
    let uid = md.get(META_OWNER)?.trim().parse().ok()?;
    let gid = md.get(META_GROUP)?.trim().parse().ok()?;
    let mode = u32::from_str_radix(md.get(META_PERMISSIONS)?.trim(), 8).ok()?;
    let mtime_ns = md
        .get(META_MTIME)
        .and_then(|v| parse_mtime_ns(v.trim()))
        .unwrap_or(default_mtime_ns);
    Some(ObjectAttrs {
        uid,
        gid,
        mode,
        mtime_ns,
    })
}

fn parse_mtime_ns(v: &str) -> Option<u64> {
    match v.strip_suffix("ns") {
        Some(ns) => ns.parse().ok(),
        None => v.parse::<u64>().ok()?.checked_mul(1_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_formats_like_datasync() {
        let m = ObjectAttrs {
            uid: 1000,
            gid: 100,
            mode: 0o100644,
            mtime_ns: 1_700_000_000_123_456_789,
        };
        let pairs = to_user_metadata(&m);
        let map: HashMap<_, _> = pairs.into_iter().collect();
        assert_eq!(map[META_PERMISSIONS], "0100644");
        assert_eq!(map[META_MTIME], "1700000000123456789ns");
        assert_eq!(from_user_metadata(&map, 0), Some(m));
    }

    #[test]
    fn accepts_unpadded_mode_and_millisecond_mtime() {
        let map: HashMap<String, String> = [
            ("file-owner", "999"),
            ("file-group", "416636"),
            ("file-permissions", "100755"),
            ("file-mtime", "1700000000123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let m = from_user_metadata(&map, 0).unwrap();
        assert_eq!(m.mode, 0o100755);
        assert_eq!(m.mtime_ns, 1_700_000_000_123_000_000);
    }

    #[test]
    fn missing_owner_means_no_metadata() {
        let map = HashMap::from([("file-group".to_string(), "1".to_string())]);
        assert_eq!(from_user_metadata(&map, 0), None);
    }
}
