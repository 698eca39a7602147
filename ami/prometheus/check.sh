#!/bin/sh
# Lints the shipped Prometheus files with promtool (Debian: apt-get install prometheus).
#   ami/prometheus/check.sh                 # checks testdata/scrape.prom
#   ami/prometheus/check.sh scrape.txt      # a saved scrape
#   ami/prometheus/check.sh http://127.0.0.1:9108/metrics   # a live gateway (needs curl)
set -eu
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
