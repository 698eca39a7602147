//! SMB sessions for the metrics: smbd's own view, from `smbstatus --json`, every few
//! seconds while the gateway runs. Without smbd (not running yet, or its unit
//! stopped) the figures are none, and the gateway says so once in its log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often smbstatus is asked, and how long it may take.
const EVERY: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(5);

/// Keeps `bucketgate_smb_sessions{dialect}` up to date from smbd serving `conf`,
/// until `stop`.
pub async fn poll_sessions(conf: PathBuf, metrics: Metrics, stop: CancellationToken) {
    let mut warned = false;
    loop {
        match sessions(&conf).await {
            Ok(by_dialect) => {
                warned = false;
                metrics.smb_sessions.reset();
                for (dialect, n) in by_dialect {
                    metrics.smb_sessions.with_label_values(&[&dialect]).set(n);
                }
            }
            Err(e) => {
                metrics.smb_sessions.reset();
                if !warned {
                    tracing::info!(error = %e, "no SMB session figures from smbstatus");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Open sessions by dialect ("SMB3_11", ...).
async fn sessions(conf: &std::path::Path) -> anyhow::Result<BTreeMap<String, i64>> {
    use anyhow::Context;
    let out = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new("smbstatus")
            .args(["--json", "-b", "-s"])
            .arg(conf)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("smbstatus did not answer")?
    .context("running smbstatus")?;
    if !out.status.success() {
        anyhow::bail!("smbstatus: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(count_by_dialect(&out.stdout)?)
}

fn count_by_dialect(json: &[u8]) -> serde_json::Result<BTreeMap<String, i64>> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let mut by = BTreeMap::new();
    for s in v["sessions"].as_object().into_iter().flat_map(|m| m.values()) {
        let d = s["session_dialect"].as_str().unwrap_or("unknown");
        *by.entry(d.to_string()).or_insert(0) += 1;
    }
    Ok(by)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sessions_are_counted_by_dialect() {
        // The shape smbstatus 4.17 prints (trimmed).
        let json = br#"{"version": "4.17.12-Debian", "sessions": {
            "1": {"session_id": "1", "uid": 65534, "session_dialect": "SMB3_11"},
            "2": {"session_id": "2", "uid": 1000, "session_dialect": "SMB3_11"},
            "3": {"session_id": "3", "uid": 1000, "session_dialect": "SMB2_10"}}}"#;
        let by = super::count_by_dialect(json).unwrap();
        assert_eq!(
            by.into_iter().collect::<Vec<_>>(),
            [("SMB2_10".into(), 1), ("SMB3_11".into(), 2)]
        );
        assert!(
            super::count_by_dialect(br#"{"sessions": {}}"#)
                .unwrap()
                .is_empty()
        );
        assert!(super::count_by_dialect(b"not json").is_err());
    }
}
