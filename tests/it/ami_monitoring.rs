//! The shipped Grafana dashboard and Prometheus rules only name metrics the gateway
//! registers, and (when promtool is installed) pass promtool's checks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use bucketgate::metrics::Metrics;

fn ami(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ami").join(rel)
}

/// `bucketgate_*` names in a text, histogram series suffixes stripped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("bucketgate_") {
        // Skip matches inside longer identifiers (e.g. `my_bucketgate_x`).
        let preceded = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            let mut name = &tail[..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base;
                }
            }
            out.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(ami("grafana/bucketgate.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let mut out = Vec::new();
    walk(&json, &mut out);
    out
}

#[test]
fn dashboard_and_alerts_name_only_registered_metrics() {
    let m = Metrics::new();
    let registered: BTreeSet<String> = m.names().into_iter().collect();
    assert!(registered.contains("bucketgate_cache_dirty_bytes"));

    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 25, "dashboard has {} queries", exprs.len());
    let used = metric_names(&exprs.join("\n"));
    assert!(used.len() >= 20, "{used:?}");
    let unknown: Vec<_> = used.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses unregistered metrics: {unknown:?}"
    );

    let rules = std::fs::read_to_string(ami("prometheus/alerts.yml")).unwrap();
    let used = metric_names(&rules);
    for want in [
        "bucketgate_cache_dirty_bytes",
        "bucketgate_upload_failing_files",
        "bucketgate_store_reachable",
    ] {
        assert!(used.contains(want), "alerts.yml does not use {want}");
    }
    let unknown: Vec<_> = used.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml uses unregistered metrics: {unknown:?}"
    );
    assert!(
        rules.contains("up{job=\"bucketgate\"} == 0"),
        "gateway-down alert"
    );
}

#[test]
fn every_alert_has_a_promtool_test() {
    let rules = std::fs::read_to_string(ami("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(ami("prometheus/alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 4, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "alerts_test.yml has no test for {a}"
        );
    }
}

/// The committed example scrape has exactly the families the registry exports, so
/// `check.sh` lints what the gateway really serves. Regenerate with
/// `BUCKETGATE_SAVE_SCRAPE=$PWD/ami/prometheus/testdata/scrape.prom cargo test --test it admin_api::health`.
#[test]
fn saved_scrape_matches_registry() {
    let text = std::fs::read_to_string(ami("prometheus/testdata/scrape.prom")).unwrap();
    let saved: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let registered: BTreeSet<String> = Metrics::new().names().into_iter().collect();
    assert_eq!(
        saved, registered,
        "regenerate ami/prometheus/testdata/scrape.prom"
    );
}

fn promtool() -> bool {
    crate::common::have_tool(
        "promtool",
        "prometheus",
        "promtool checks of the rules and dashboard queries",
    )
}

#[test]
fn check_script_passes() {
    if !promtool() {
        return;
    }
    let out = Command::new("sh")
        .arg(ami("prometheus/check.sh"))
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check.sh failed:\n{msg}");
    assert!(
        msg.contains("SUCCESS: prometheus config, rules, rule tests and metrics"),
        "{msg}"
    );
}

/// Every dashboard query is valid PromQL: they go into a rules file as recording rules
/// (Grafana variables replaced) and promtool parses them.
#[test]
fn dashboard_queries_parse() {
    if !promtool() {
        return;
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$share", ".*");
        // label_values() is Grafana's, not PromQL: check its selector.
        let e = match e.strip_prefix("label_values(") {
            Some(inner) => inner
                .rsplit_once(',')
                .map(|(sel, _)| sel.to_string())
                .unwrap_or(inner.to_string()),
            None => e,
        };
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard_rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dashboard PromQL does not parse:\n{msg}\n{rules}"
    );
}
