//! Where a share's objects live: `s3://bucket/prefix/` or `file:///abs/path`.

use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareUrl {
    /// `prefix` is empty or ends in `/`; keys are `prefix + path`.
    S3 { bucket: String, prefix: String },
    /// A local directory standing in for a bucket (see [`super::local::LocalStore`]).
    Local { root: PathBuf },
}

/// Parses a share URL. `s3://bucket`, `s3://bucket/` and `s3://bucket/a/b` (the
/// prefix becomes `a/b/`) are accepted; `file://` needs an absolute path.
pub fn parse_share_url(url: &str) -> Result<ShareUrl, String> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "`{url}`: no bucket name (expected s3://bucket/prefix/)"
            ));
        }
        let valid_bucket = bucket.len() >= 3
            && bucket.len() <= 63
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && bucket.as_bytes()[0].is_ascii_alphanumeric()
            && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
        if !valid_bucket {
            return Err(format!(
                "`{url}`: `{bucket}` is not a valid bucket name (3-63 characters: a-z, 0-9, '-', '.')"
            ));
        }
        let trimmed = prefix.trim_matches('/');
        if trimmed.split('/').any(|s| s == "." || s == "..") || trimmed.contains("//") {
            return Err(format!(
                "`{url}`: the prefix may not contain empty, `.` or `..` segments"
            ));
        }
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        return Ok(ShareUrl::S3 {
            bucket: bucket.to_owned(),
            prefix,
        });
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(format!(
                "`{url}`: a file URL needs an absolute path (file:///srv/bucket)"
            ));
        }
        if path.split('/').any(|s| s == "..") {
            return Err(format!("`{url}`: the path may not contain `..`"));
        }
        return Ok(ShareUrl::Local {
            root: PathBuf::from(path),
        });
    }
    Err(format!(
        "`{url}`: unsupported share URL (expected s3://bucket/prefix/ or file:///path)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_normalize_the_prefix() {
        let s3 = |b: &str, p: &str| ShareUrl::S3 {
            bucket: b.into(),
            prefix: p.into(),
        };
        assert_eq!(
            parse_share_url("s3://my-bucket").unwrap(),
            s3("my-bucket", "")
        );
        assert_eq!(
            parse_share_url("s3://my-bucket/").unwrap(),
            s3("my-bucket", "")
        );
        assert_eq!(
            parse_share_url("s3://my-bucket/a/b").unwrap(),
            s3("my-bucket", "a/b/")
        );
        assert_eq!(
            parse_share_url("s3://my-bucket/a/b/").unwrap(),
            s3("my-bucket", "a/b/")
        );
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        for bad in [
            "s3://",
            "s3:///x",
            "s3://UPPER/x",
            "s3://b/../x",
            "s3://bb/a//b",
            "http://x",
            "file://rel",
            "/tmp",
        ] {
            let err = parse_share_url(bad).unwrap_err();
            assert!(err.contains(bad.trim()), "{err}");
        }
    }

    #[test]
    fn file_urls() {
        assert_eq!(
            parse_share_url("file:///srv/bucket").unwrap(),
            ShareUrl::Local {
                root: "/srv/bucket".into()
            }
        );
    }
}
