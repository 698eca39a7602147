#!/usr/bin/env bash
# POSIX conformance of a share's FUSE mount: pjdfstest (crates.io) run on it, every
# case expected to fail listed with its reason in tests/interop/pjdfstest-fuse.toml.
# Fails when a case fails unexpectedly, or passes while listed as expected to fail.
# Needs root and /dev/fuse. Usage: tests/interop/fuse-pjdfstest.sh path/to/bucketgate
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
conf="$here/pjdfstest-fuse.toml"
# shellcheck source=tests/interop/pjdfstest-lib.sh
. "$here/pjdfstest-lib.sh"
pjd=$(pjd_install)
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
echo "fuse-pjdfstest: ran in $(( $(date +%s) - start ))s"
pjd_compare fuse-pjdfstest "$conf" "$work/pjd.out"
# pjdfstest exits non-zero on expected failures too; the lists above decide.
[ "$rc" -le 1 ] || { tail -40 "$work/pjd.out"; exit 1; }

kill -TERM "$gw_pid"
wait "$gw_pid" || true
gw_pid=
if grep -q " $work/mnt fuse" /proc/mounts; then echo "fuse-pjdfstest: still mounted after SIGTERM"; exit 1; fi
echo "fuse-pjdfstest: PASSED"
