#!/bin/sh
# Lints the shipped Prometheus files with promtool (Debian: apt-get install prometheus).
#   ami/prometheus/check.sh                 # checks testdata/scrape.prom
#   ami/prometheus/check.sh scrape.txt      # a saved scrape
#   ami/prometheus/check.sh http://127.0.0.1:9108/metrics   # a live gateway (needs curl)
#   ami/prometheus/check.sh path/to/bucketgate  # the saved scrape, then live.sh with that binary
set -eu
bin=
if [ $# -gt 0 ] && [ -f "$1" ] && [ -x "$1" ]; then
  # A gateway binary (as .ci/run passes it): lint the saved scrape here, and a live
  # scrape by a real Prometheus server in live.sh.
  bin=$(realpath "$1")
  shift
fi
cd "$(dirname "$0")"
command -v promtool >/dev/null || { echo "promtool not found (apt-get install prometheus)" >&2; exit 2; }

promtool check config prometheus.yml
promtool check rules alerts.yml
promtool test rules alerts_test.yml

src=${1:-testdata/scrape.prom}
echo "Checking metrics from $src"
case "$src" in
  http://*|https://*) curl -fsS "$src" | promtool check metrics ;;
  *) promtool check metrics < "$src" ;;
esac
echo "SUCCESS: prometheus config, rules, rule tests and metrics"
if [ -n "$bin" ]; then
  bash ./live.sh "$bin"
fi
