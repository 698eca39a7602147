#!/usr/bin/env bash
# SMB conformance of a share served by Samba over the gateway's FUSE mount: Samba's
# own smbtorture suites (Debian samba-testsuite) against a gateway that runs smbd
# itself on a loopback port, as an SMB user made with `bucketgate smb-user`. Every
# case expected to fail is listed with its reason in tests/interop/smbtorture-known.txt.
# Fails when a case fails unexpectedly, when a listed case passes, and when smbd panics.
# Needs root, /dev/fuse, smbd and smbtorture.
# Usage: tests/interop/smbtorture.sh path/to/bucketgate [suite ...]
set -euo pipefail
bin=$(realpath "$1")
shift
suites=("$@")
((${#suites[@]})) || suites=(smb2.connect smb2.read smb2.rw smb2.dir smb2.rename smb2.getinfo smb2.setinfo smb2.lock)
here=$(cd "$(dirname "$0")" && pwd)
known="$here/smbtorture-known.txt"
for tool in smbd smbtorture; do
  command -v "$tool" >/dev/null || { echo "smbtorture: $tool not found (apt-get install samba samba-vfs-modules samba-testsuite)"; exit 1; }
done

# A free loopback port for smbd (SMB clients would use 445; tests stay off it).
port=
for p in $(seq 14450 14499); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { echo "smbtorture: no free port in 14450-14499"; exit 1; }

work=$(mktemp -d)
chmod 0755 "$work"
gw_pid=
cleanup() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
  umount -l "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

user=bgtorture
password="torture-$RANDOM-$RANDOM"
cat > "$work/gw.toml" <<TOML
[nfs]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[cache]
dir = "$work/cache"
capacity = "1GiB"
[smb]
listen = "127.0.0.1:$port"
run_smbd = true
state_dir = "$work/smb"
[[share]]
name = "data"
url = "file://$work/bucket"
fuse_mount = "$work/mnt"
smb = true
smb_users = ["$user"]
TOML
mkdir -p "$work/bucket"
printf '%s\n' "$password" > "$work/password"
"$bin" smb-user --config "$work/gw.toml" add "$user" --password-file "$work/password" >/dev/null
"$bin" serve --config "$work/gw.toml" >"$work/gw.log" 2>&1 &
gw_pid=$!
for _ in $(seq 1 100); do
  grep -q "smbd serving" "$work/gw.log" && break
  kill -0 "$gw_pid" 2>/dev/null || { cat "$work/gw.log"; echo "smbtorture: the gateway exited"; exit 1; }
  sleep 0.1
done
grep -q "smbd serving" "$work/gw.log" || { cat "$work/gw.log"; echo "smbtorture: smbd did not start"; exit 1; }
# The share's root belongs to the share's default owner; the SMB user makes its
# files there.
chmod 0777 "$work/mnt"

start=$(date +%s)
: > "$work/results"
for suite in "${suites[@]}"; do
  set +e
  timeout 300 smbtorture "//127.0.0.1/data" -p "$port" -U "$user%$password" "$suite" >"$work/$suite.out" 2>&1
  rc=$?
  set -e
  # smbtorture reports each case as "success: NAME", "failure: NAME [", "skip: NAME"...
  sed -nE 's/^(success|failure|error|skip|xfail|uxsuccess): ([^ []+).*/\1 '"$suite"'.\2/p' "$work/$suite.out" >>"$work/results"
  if ! grep -qE "^(success|failure|error|skip): " "$work/$suite.out"; then
    tail -20 "$work/$suite.out"; echo "smbtorture: $suite ran no case (exit $rc)"; exit 1
  fi
done
echo "smbtorture: ran in $(( $(date +%s) - start ))s"

listed() { grep -qE "^$1[[:space:]]" "$known"; }
unexpected=() fixed=() passed=0 failed=0 skipped=0
while read -r result name; do
  case $result in
    failure|error) failed=$((failed + 1)); listed "$name" || unexpected+=("$name") ;;
    success) passed=$((passed + 1)); listed "$name" && fixed+=("$name") ;;
    skip) skipped=$((skipped + 1)) ;;
  esac
done < "$work/results"
echo "smbtorture: $passed passed, $failed failed ($(( failed - ${#unexpected[@]} )) of them listed as expected), $skipped skipped"
status=0
if ((${#unexpected[@]})); then
  echo "smbtorture: unexpected failures:"
  for name in "${unexpected[@]}"; do
    echo "  $name"
    grep -h -A2 "^failure: ${name#*.*.} \[\|^error: ${name#*.*.} \[" "$work"/*.out | sed 's/^/    /' | head -4
  done
  status=1
fi
if ((${#fixed[@]})); then
  echo "smbtorture: listed as expected to fail but passed (take them off the list): ${fixed[*]}"
  status=1
fi
if grep -q "PANIC" "$work/smb/log/smbd.log" 2>/dev/null; then
  grep -A12 "PANIC" "$work/smb/log/smbd.log" | head -30
  echo "smbtorture: smbd panicked"
  status=1
fi
if ((status)); then tail -20 "$work/gw.log"; exit 1; fi

kill -TERM "$gw_pid"
wait "$gw_pid" || true
gw_pid=
echo "smbtorture: PASSED"
