# shellcheck shell=bash
# Shared by fuse-pjdfstest.sh and kernel-pjdfstest.sh (sourced, not run).

pjd_version=0.2.2
# Installs pjdfstest (crates.io) once into a cache directory; prints its path.
pjd_install() {
  local root="${PJDFSTEST_ROOT:-$HOME/.cache/bucketgate-pjdfstest-$pjd_version}"
  if [ ! -x "$root/bin/pjdfstest" ]; then
    cargo install pjdfstest --locked --version "$pjd_version" --root "$root" --quiet >&2
  fi
  echo "$root/bin/pjdfstest"
}

# pjd_compare NAME CONF OUT: checks pjdfstest's output OUT against the expected
# failures listed in CONF. Fails on a case that fails unexpectedly, and on a listed
# case that passes (the list must stay true).
pjd_compare() {
  local name=$1 conf=$2 out=$3 summary unexpected fixed
  summary=$(grep '^Summary:' "$out" || true)
  echo "$name: ${summary:-no summary}"
  unexpected=$(grep -E 'FAILED$' "$out" | awk '{print $1}' | while read -r t; do
    grep -qF "\"$t\"," "$conf" || echo "$t"
  done || true)
  # pjdfstest marks a listed case that passes "PASSED UNEXPECTEDLY".
  fixed=$(grep -E 'PASSED UNEXPECTEDLY$' "$out" | awk '{print $1}' || true)
  if [ -n "$unexpected" ]; then
    echo "$name: unexpected failures:"; echo "$unexpected"
    grep -A4 -F -f <(echo "$unexpected") "$out" | grep -vE '^\s+[0-9]+:|^\s+at ' | head -100
  fi
  if [ -n "$fixed" ]; then
    echo "$name: listed as expected to fail but passed (take them off the list):"; echo "$fixed"
  fi
  [ -n "$summary" ] || { tail -40 "$out"; return 1; }
  [ -z "$unexpected" ] && [ -z "$fixed" ]
}
