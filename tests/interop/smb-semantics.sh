#!/usr/bin/env bash
# SMB semantics of a share with smbprotocol (PyPI), a client independent of Samba:
# create dispositions, delete-on-close, share modes, FLUSH, 5,000 entries listed from
# the store, an encrypted session (smb_semantics.py); then a file written and
# flushed (never closed) over SMB survives kill -9 of the gateway under the live
# session, and reaches the bucket after the restart; the files reach the bucket.
# Needs root, /dev/fuse, Samba and python3 (smbprotocol is installed into a venv
# under ~/.cache when missing).
# Usage: tests/interop/smb-semantics.sh path/to/bucketgate
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)

smbprotocol_version=1.17.0
py=python3
if ! "$py" -c 'import smbprotocol' 2>/dev/null; then
  venv="${SMBPROTOCOL_VENV:-$HOME/.cache/bucketgate-smbprotocol-$smbprotocol_version}"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import smbprotocol' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "smbprotocol==$smbprotocol_version"
  fi
  py="$venv/bin/python"
fi

# shellcheck source=tests/interop/smb-lib.sh
. "$here/smb-lib.sh"
smb_setup smb-semantics "$bin"
# 5,000 objects another S3 client wrote, for a listing the gateway has never made.
mkdir -p "$work/bucket/many"
for i in $(seq 0 4999); do printf 'object %d\n' "$i" > "$work/bucket/many/$(printf 'f%05d' "$i")"; done
smb_serve

"$py" "$here/smb_semantics.py" cases 127.0.0.1 "$port" "$user" "$password" "$work/mnt" ||
  smb_fail "a case failed"

echo "  kill -9 of the gateway under a live session holding a flushed, unclosed file"
"$py" "$here/smb_semantics.py" flush-and-hold 127.0.0.1 "$port" "$user" "$password" "$work/release" >"$work/held.out" 2>&1 &
held_pid=$!
for _ in $(seq 1 300); do grep -q FLUSHED "$work/held.out" && break; sleep 0.1; done
grep -q FLUSHED "$work/held.out" || { cat "$work/held.out"; smb_fail "the held file was not flushed"; }
want=$(awk '/FLUSHED/ {print $2}' "$work/held.out")
kill -9 "$gw_pid"
wait "$gw_pid" 2>/dev/null || true
smb_serve
touch "$work/release"
wait "$held_pid" || true
got=$(sha256sum < "$work/mnt/held.bin" | cut -d' ' -f1)
[ "$got" = "$want" ] || smb_fail "after kill -9, held.bin reads $got through the restarted mount, want $want"

"$bin" flush --config "$work/gw.toml" --wait >/dev/null || smb_fail "flush --wait"
got=$(sha256sum < "$work/bucket/held.bin" | cut -d' ' -f1)
[ "$got" = "$want" ] || smb_fail "the bucket's held.bin is $got, want $want"
[ "$(cat "$work/bucket/disp.txt")" = "third!" ] || smb_fail "the bucket's disp.txt"
for gone in doc.txt pending.txt dod; do
  [ ! -e "$work/bucket/$gone" ] || smb_fail "$gone is still in the bucket"
done
echo "  held.bin, and the files of the cases, are in the bucket as written"
smb_stop
echo "smb-semantics: PASSED"
