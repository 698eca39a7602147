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
command -v smbtorture >/dev/null || { echo "smbtorture: smbtorture not found (apt-get install samba-testsuite)"; exit 1; }
# shellcheck source=tests/interop/smb-lib.sh
. "$here/smb-lib.sh"
smb_setup smbtorture "$bin"
smb_serve

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
    tail -20 "$work/$suite.out"; smb_fail "$suite ran no case (exit $rc)"
  fi
done
echo "smbtorture: ran in $(( $(date +%s) - start ))s"

listed() { grep -qE "^$1[[:space:]]" "$known"; }
# A case listed as "flaky:" may pass or fail; its reason says why.
flaky() { grep -qE "^$1[[:space:]]+flaky:" "$known"; }
unexpected=() fixed=() passed=0 failed=0 skipped=0
while read -r result name; do
  case $result in
    failure|error) failed=$((failed + 1)); listed "$name" || unexpected+=("$name") ;;
    success) passed=$((passed + 1)); listed "$name" && ! flaky "$name" && fixed+=("$name") ;;
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
((status == 0)) || smb_fail "FAILED"
smb_stop
echo "smbtorture: PASSED"
