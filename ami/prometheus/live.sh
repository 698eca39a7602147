#!/usr/bin/env bash
# A real Prometheus server (Debian's `prometheus` package) scrapes a real running
# gateway and answers a query about it through its HTTP API; the shipped alert rules
# load and evaluate cleanly against the live series, and none fires for a healthy,
# idle gateway. Loopback only, temp files only, bounded time (~2 minutes at most).
#
# Usage: ami/prometheus/live.sh path/to/bucketgate
# Prints SKIPPED (exit 0) only when prometheus is missing and cannot be installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 1 ] || { echo "usage: $0 path/to/bucketgate" >&2; exit 2; }
bin=$(realpath "$1")
[ -x "$bin" ] || { echo "$bin is not executable" >&2; exit 2; }

if ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } ||
      true
  fi
  if ! command -v prometheus >/dev/null; then
    echo "SKIPPED: prometheus is not installed and could not be installed (apt-get install prometheus)"
    exit 0
  fi
fi
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 2; }

work=$(mktemp -d)
gw_pid=
prom_pid=
cleanup() {
  for p in $prom_pid $gw_pid; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
deadline=$((SECONDS + 120))
fail() {
  echo "FAIL: $*"
  echo "--- gateway log"; tail -20 "$work/gw.log" 2>/dev/null || true
  echo "--- prometheus log"; tail -20 "$work/prom.log" 2>/dev/null || true
  exit 1
}
# Retries a command once a second until it succeeds or the script's deadline passes.
until_ok() {
  local what=$1; shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 1
  done
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nfs=$(free_port); admin=$(free_port); pport=$(free_port)

cat > "$work/gw.toml" <<TOML
[nfs]
listen = "127.0.0.1:$nfs"
[admin]
listen = "127.0.0.1:$admin"
[cache]
dir = "$work/cache"
capacity = "1GiB"
[[share]]
name = "data"
url = "file://$work/bucket"
TOML
"$bin" check-config --config "$work/gw.toml" >/dev/null || fail "gateway config"
RUST_LOG=warn "$bin" serve --config "$work/gw.toml" > "$work/gw.log" 2>&1 &
gw_pid=$!
until_ok "the gateway's /healthz" curl -fsS "http://127.0.0.1:$admin/healthz"
echo "ok: gateway up (NFS 127.0.0.1:$nfs, admin 127.0.0.1:$admin)"

# The live answer passes promtool's lint too (when promtool is there).
if command -v promtool >/dev/null; then
  curl -fsS "http://127.0.0.1:$admin/metrics" | promtool check metrics || fail "promtool check metrics on the live /metrics"
  echo "ok: promtool check metrics on the live /metrics"
fi

# The shipped alerts.yml, loaded by the real server and evaluated every second.
cp "$here/alerts.yml" "$work/alerts.yml"
cat > "$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $work/alerts.yml
scrape_configs:
  - job_name: bucketgate
    static_configs:
      - targets: ["127.0.0.1:$admin"]
        labels:
          gateway: live-test
YAML
if command -v promtool >/dev/null; then
  promtool check config "$work/prometheus.yml" >/dev/null || fail "promtool check config"
fi
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$pport" --log.level=warn > "$work/prom.log" 2>&1 &
prom_pid=$!
api="http://127.0.0.1:$pport/api/v1"
until_ok "prometheus to answer" curl -fsS "http://127.0.0.1:$pport/-/ready"
echo "ok: prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') up on 127.0.0.1:$pport"

# Reads one instant query and checks its single sample with a Python expression over
# `m` (labels) and `v` (value).
check_query() {
  local query=$1 cond=$2
  curl -fsS --get "$api/query" --data-urlencode "query=$query" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["status"] == "success", d
r = d["data"]["result"]
assert len(r) == 1, r
m, v = r[0]["metric"], float(r[0]["value"][1])
ok = eval(sys.argv[1])
assert ok, (m, v)
print(m, v)
' "$cond"
}

until_ok "bucketgate_build_info through the query API" \
  check_query bucketgate_build_info 'v == 1 and m["job"] == "bucketgate" and m["gateway"] == "live-test" and m["version"] != ""'
echo "ok: $(check_query bucketgate_build_info 'v == 1')"
check_query 'up{job="bucketgate"}' 'v == 1' >/dev/null || fail "up{job=\"bucketgate\"} is not 1"
check_query bucketgate_ready 'v == 1' >/dev/null || fail "bucketgate_ready is not 1"
check_query bucketgate_cache_capacity_bytes 'v == 1 << 30' >/dev/null || fail "cache capacity is not 1GiB"
echo "ok: up, bucketgate_ready and bucketgate_cache_capacity_bytes read back"

# Every shipped rule has been evaluated against the live series without error, and
# a healthy idle gateway raises no alert (not even pending).
rules_ok() {
  curl -fsS "$api/rules" | python3 -c '
import json, sys
d = json.load(sys.stdin)
rules = [r for g in d["data"]["groups"] for r in g["rules"]]
assert len(rules) >= 5, rules
bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
assert not bad, bad
active = [(r["name"], r["state"]) for r in rules if r.get("state") not in (None, "inactive")]
assert not active, active
print(len(rules))
'
}
until_ok "every alert rule to be evaluated" rules_ok
echo "ok: $(rules_ok) alert rules loaded and evaluated, none pending or firing"
echo "prometheus live: PASSED"
