#!/usr/bin/env bash
# POSIX conformance of a share's FUSE mount: pjdfstest (crates.io) run on it, every
# case expected to fail listed with its reason in tests/interop/pjdfstest-fuse.toml.
# Fails when a case fails unexpectedly, or passes while listed as expected to fail.
# Needs root and /dev/fuse. Usage: tests/interop/fuse-pjdfstest.sh path/to/bucketgate
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
conf="$here/pjdfstest-fuse.toml"
pjd_version=0.2.2
pjd_root="${PJDFSTEST_ROOT:-$HOME/.cache/bucketgate-pjdfstest-$pjd_version}"
pjd="$pjd_root/bin/pjdfstest"
if [ ! -x "$pjd" ]; then
  cargo install pjdfstest --locked --version "$pjd_version" --root "$pjd_root" --quiet
fi
# pjdfstest switches to the users its config names.
id tests >/dev/null 2>&1 || useradd -M -U tests

work=$(mktemp -d)
# The suite's other users must reach the mount point.
chmod 0755 "$work"
gw_pid=
cleanup() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
  umount -l "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/gw.toml" <<TOML
[nfs]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[cache]
dir = "$work/cache"
capacity = "1GiB"
[[share]]
name = "data"
url = "file://$work/bucket"
fuse_mount = "$work/mnt"
TOML
mkdir -p "$work/bucket"
"$bin" serve --config "$work/gw.toml" >"$work/gw.log" 2>&1 &
gw_pid=$!
for _ in $(seq 1 100); do
  grep -q " $work/mnt fuse" /proc/mounts && break
  kill -0 "$gw_pid" 2>/dev/null || { cat "$work/gw.log"; echo "fuse-pjdfstest: the gateway exited"; exit 1; }
  sleep 0.1
done
grep -q " $work/mnt fuse" /proc/mounts || { cat "$work/gw.log"; echo "fuse-pjdfstest: not mounted"; exit 1; }
# The suite's users (nobody, tests) make their own files in the test directory.
chmod 0777 "$work/mnt"

start=$(date +%s)
set +e
timeout 900 "$pjd" -c "$conf" -p "$work/mnt" >"$work/pjd.out" 2>&1
rc=$?
set -e
summary=$(grep '^Summary:' "$work/pjd.out" || true)
echo "fuse-pjdfstest: ${summary:-no summary} in $(( $(date +%s) - start ))s"
# Unexpected failures, and listed cases that pass now (the list must stay true).
unexpected=$(grep -E 'FAILED$' "$work/pjd.out" | awk '{print $1}' | while read -r t; do
  grep -qF "\"$t\"," "$conf" || echo "$t"
done || true)
fixed=$(grep -oE '^    "[^"]+"' "$conf" | tr -d ' "' | while read -r t; do
  if grep -qE "^$t +(ok|skipped)\$" "$work/pjd.out"; then echo "$t"; fi
done || true)
if [ -n "$unexpected" ]; then
  echo "fuse-pjdfstest: unexpected failures:"; echo "$unexpected"
  grep -A4 -F -f <(echo "$unexpected") "$work/pjd.out" | grep -vE '^\s+[0-9]+:|^\s+at ' | head -100
fi
if [ -n "$fixed" ]; then
  echo "fuse-pjdfstest: listed as expected to fail but passed (take them off the list):"; echo "$fixed"
fi
[ -n "$summary" ] || { tail -40 "$work/pjd.out"; exit 1; }
[ -z "$unexpected" ] && [ -z "$fixed" ] || exit 1
# pjdfstest exits non-zero on expected failures too; the lists above decide.
[ "$rc" -le 1 ] || { tail -40 "$work/pjd.out"; exit 1; }

kill -TERM "$gw_pid"
wait "$gw_pid" || true
gw_pid=
if grep -q " $work/mnt fuse" /proc/mounts; then echo "fuse-pjdfstest: still mounted after SIGTERM"; exit 1; fi
echo "fuse-pjdfstest: PASSED"
