#!/usr/bin/env bash
# The Linux kernel's SMB client (cifs, SMB 3.1.1) against a share the gateway serves
# over SMB (Samba's smbd over its FUSE mount), in the qemu VM of kernel-nfs.sh: the
# guest (kernel-cifs-guest.sh) copies a tree, renames, removes, reads back after
# dropping its caches, and has the host kill -9 and restart the gateway under the live
# mount; the host then flushes and checks the bucket (kernel-cifs-bucket.py).
# Needs root, /dev/fuse and Samba on the host. Usage: tests/interop/kernel-cifs.sh path/to/bucketgate
set -euo pipefail
bin=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/kernel-nfs.sh" --binary "$bin" --smb --guest "$here/kernel-cifs-guest.sh" \
  --bucket-check "$here/kernel-cifs-bucket.py"
