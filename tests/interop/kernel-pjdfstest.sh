#!/usr/bin/env bash
# POSIX conformance through the Linux kernel's NFSv3 client: pjdfstest (crates.io),
# built on this host, runs in the qemu VM of kernel-nfs.sh against a share of the
# gateway running here (no root squash, so the suite can switch users). Every case
# expected to fail is listed with its reason in tests/interop/pjdfstest-nfs.toml; the
# script fails when a case fails unexpectedly, or passes while listed.
# Usage: tests/interop/kernel-pjdfstest.sh path/to/bucketgate
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
conf="$here/pjdfstest-nfs.toml"
# shellcheck source=tests/interop/pjdfstest-lib.sh
. "$here/pjdfstest-lib.sh"
pjd=$(pjd_install)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# What the guest needs beyond kernel-nfs.sh's image: pjdfstest with its libraries,
# its config, and the users it switches to.
root="$work/extra"
mkdir -p "$root/usr/bin" "$root/lib/x86_64-linux-gnu" "$root/lib64" "$root/etc"
cp "$pjd" "$root/usr/bin/pjdfstest"
ldd "$pjd" | awk '/=> \// {print $3} /^[[:space:]]*\/lib64\// {print $1}' | while read -r lib; do
  case "$lib" in
    /lib64/*) cp -L "$lib" "$root/lib64/" ;;
    *) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
  esac
done
cp "$conf" "$root/pjdfstest.toml"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\ntests:x:1000:1000:tests:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\ntests:x:1000:\n' > "$root/etc/group"

start=$(date +%s)
vm_rc=0
bash "$here/kernel-nfs.sh" --binary "$bin" --guest "$here/kernel-pjdfstest-guest.sh" \
  --extra "$root" --console "$work/console.txt" || vm_rc=$?
sed -n 's/^BGPJD //p' "$work/console.txt" > "$work/pjd.out" 2>/dev/null || true
echo "kernel-pjdfstest: VM run in $(( $(date +%s) - start ))s"
pjd_compare kernel-pjdfstest "$conf" "$work/pjd.out"
[ "$vm_rc" = 0 ] || { echo "kernel-pjdfstest: the VM run failed (above)"; exit 1; }
echo "kernel-pjdfstest: PASSED"
