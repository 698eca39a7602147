#!/usr/bin/env bash
# Interop with the Linux kernel's NFSv3 client, in a qemu VM under software emulation
# (TCG). The sandbox kernel has no NFS client, so a small VM boots a Debian kernel with an
# initramfs (busybox, GNU coreutils, util-linux mount, nfs-common's mount.nfs, and the
# kernel's nfsv3/sunrpc/virtio-net modules). The guest reaches the gateway on the host's
# 127.0.0.1 as 10.0.2.2 through qemu's user-mode network (nothing else is reached),
# mounts /data as the README says for Linux, runs the steps of kernel-nfs-guest.sh (each
# prints PASS/FAIL on the serial console; one of them has this script kill -9 and
# restart the gateway under the live mount), and powers off. The host then runs
# `bucketgate flush --wait` and checks the objects and their metadata in the bucket
# directory. Cold (image built): about a minute; warm (image cached): 40-50 s.
#
# Usage: tests/interop/kernel-nfs.sh [--binary PATH] [--accel tcg|kvm] [--keep]
#                                    [--guest SCRIPT --extra DIR --console FILE]
#                                    [--smb] [--bucket-check SCRIPT]
#   --binary PATH  the gateway (default: $CARGO_TARGET_DIR/debug/bucketgate or
#                  target/debug/bucketgate; built with `cargo build --bin bucketgate`
#                  only when missing)
#   --accel        qemu accelerator (default tcg, software emulation; the sandbox has a
#                  /dev/kvm, but a KVM guest there never boots: "failed to set MSR")
#   --keep         keep the work directory (logs, console, bucket) even on success
#   --guest SCRIPT another guest script instead of kernel-nfs-guest.sh (its steps are
#                  reported the same way; this script's own bucket and restart checks
#                  are then left out), with DIR's tree added to the guest's root and
#                  the serial console copied to FILE (kernel-pjdfstest.sh uses these)
#   --smb          the share is also served over SMB (its FUSE mount, the smbd the
#                  gateway runs, an SMB user); the guest finds the port, user and
#                  password as bgsmbport=, bgsmbuser=, bgsmbpass= on its kernel command
#                  line, and a restart waits for the new smbd (kernel-cifs-guest.sh)
#   --bucket-check SCRIPT  with --guest: after the flush, python3 SCRIPT BUCKET CONSOLE
#                  prints "PASS name" / "FAIL name (why)" lines, counted as results
# Environment:
#   BUCKETGATE_VM_CACHE    kernel, packages and initramfs cache
#                          (default ${XDG_CACHE_HOME:-$HOME/.cache}/bucketgate-vm)
#   BUCKETGATE_VM_TIMEOUT  total time limit in seconds (default 900)
#   BUCKETGATE_VM_LOG      the gateway's log filter (default "info,bucketgate::nfs=debug":
#                          one line per NFS call with its procedure and status)
#   BUCKETGATE_VM_STEP_TIMEOUT  seconds before the guest kills a hung step (default 180)
set -euo pipefail

total_timeout=${BUCKETGATE_VM_TIMEOUT:-900}
# The whole run sits under timeout(1), which signals the whole process group (qemu,
# the gateway) when the limit is reached; the trap below then reports and cleans up.
if [ -z "${BUCKETGATE_VM_WATCHDOG:-}" ]; then
  export BUCKETGATE_VM_WATCHDOG=1
  exec timeout -k 30 "$total_timeout" bash "$0" "$@"
fi

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=
accel=tcg
keep=0
guest=
extra=
console_copy=
smb=0
bucket_script=
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=$2; shift 2 ;;
    --binary=*) bin=${1#--binary=}; shift ;;
    --accel) accel=$2; shift 2 ;;
    --accel=*) accel=${1#--accel=}; shift ;;
    --keep) keep=1; shift ;;
    --guest) guest=$(realpath "$2"); shift 2 ;;
    --extra) extra=$(realpath "$2"); shift 2 ;;
    --console) console_copy=$2; shift 2 ;;
    --smb) smb=1; shift ;;
    --bucket-check) bucket_script=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$accel" in tcg|kvm) ;; *) echo "--accel must be tcg or kvm" >&2; exit 2 ;; esac

cache=${BUCKETGATE_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bucketgate-vm}
t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t_start ))s"; }
say() { printf '[kernel-nfs %5s] %s\n' "$(elapsed)" "$*"; }

# ---------------------------------------------------------------------------- tools
need_apt=()
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
command -v cpio >/dev/null || need_apt+=(cpio)
# a static busybox (it runs in the guest without libraries) that has depmod
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1 || ! grep -qx depmod < <(/bin/busybox --list); then
  need_apt+=(busybox-static)
fi
# mount.nfs comes from nfs-common's package, unpacked only into the image; the host
# needs its libraries for the ldd closure.
[ -e /etc/netconfig ] || need_apt+=(libtirpc-common)
grep -q 'libtirpc.so.3 ' < <(ldconfig -p) || need_apt+=(libtirpc3)
command -v ldd >/dev/null || need_apt+=(libc-bin)
command -v python3 >/dev/null || need_apt+=(python3)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
busybox=/bin/busybox

# -------------------------------------------------------------------------- gateway
if [ -z "$bin" ]; then
  bin="${CARGO_TARGET_DIR:-$repo/target}/debug/bucketgate"
  if [ ! -x "$bin" ]; then
    say "building the gateway (cargo build --bin bucketgate)"
    (cd "$repo" && cargo build --bin bucketgate)
  fi
fi
[ -x "$bin" ] || { echo "gateway binary not found: $bin" >&2; exit 2; }
bin=$(realpath "$bin")

# ------------------------------------------------------------- kernel and initramfs
# The base image (kernel + initramfs) is cached; its key covers this builder's version
# and the kernel package. The guest's test script goes in a small second cpio archive
# appended at each run, so changing the tests never rebuilds the image.
image_version=6
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

build_image() {
  local kpkg kver debs stage root lib m d f
  if ! kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}') || [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  kver=${kpkg#linux-image-}
  say "building the VM image: kernel $kver (first run only)"
  debs="$cache/debs"
  mkdir -p "$debs"
  ( cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" nfs-common >/dev/null 2>&1 ) || {
    apt-get update -qq
    ( cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" nfs-common >/dev/null )
  }
  stage=$(mktemp -d "$cache/stage.XXXXXX")
  root="$stage/root"
  mkdir -p "$stage/pkg" "$root"
  for d in "$debs/${kpkg}"_*.deb "$debs"/nfs-common_*.deb; do
    dpkg-deb -x "$d" "$stage/pkg"
  done
  cp "$stage/pkg/boot/vmlinuz-$kver" "$stage/vmlinuz"

  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,etc,proc,sys,dev,tmp,mnt,run,var/lib/nfs,root}
  # busybox for the shell and the system tools; GNU coreutils and util-linux from this
  # Debian host for what the tests exercise (as a real client machine would run them).
  cp "$busybox" "$root/bin/busybox"
  for a in $("$busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
  done
  local tools=(ls stat touch dd sha256sum cp mv rm mkdir rmdir ln readlink chmod chown truncate
    sync cat head tail wc sort uniq date seq sleep df printf cmp find od tr mount umount dash
    mktemp setpriv chgrp mkfifo)
  local t p
  for t in "${tools[@]}"; do
    p=$(type -P "$t") || { echo "host tool missing: $t" >&2; exit 2; }
    cp -L "$p" "$root/usr/bin/$t"
  done
  cp "$stage/pkg/sbin/mount.nfs" "$root/sbin/mount.nfs"
  ln -sf mount.nfs "$root/sbin/umount.nfs"
  # shared libraries of everything dynamic
  for p in "$root"/usr/bin/* "$root/sbin/mount.nfs"; do
    ldd "$p" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\/lib64\// {print $1}'
  done | sort -u | while read -r lib; do
    case "$lib" in
      /lib64/*) cp -L "$lib" "$root/lib64/" ;;
      *) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
    esac
  done
  if ldd "$root/sbin/mount.nfs" | grep 'not found' >&2; then
    echo "mount.nfs has unresolved libraries (above)" >&2; exit 2
  fi
  # kernel modules: the NIC, the NFSv3 client and the SMB client (cifs, fs/cifs or
  # fs/smb/client by kernel version), with their dependencies, and the crypto
  # modules SMB 3 signing and encryption load on demand
  m="$stage/pkg/lib/modules/$kver"
  "$busybox" depmod -b "$stage/pkg" "$kver"
  local want=(kernel/drivers/virtio/virtio_pci.ko kernel/drivers/net/virtio_net.ko kernel/fs/nfs/nfsv3.ko)
  local more
  mapfile -t more < <(cd "$m" && { find kernel/fs -name 'cifs.ko*' | head -1
    find kernel/crypto kernel/lib/crypto kernel/arch/x86/crypto -name '*.ko*' 2>/dev/null; })
  want+=("${more[@]}")
  local w
  for w in "${want[@]}"; do
    echo "$w"
    grep "^$w:" "$m/modules.dep" | cut -d: -f2 | tr ' ' '\n'
  done | sort -u | while read -r w; do
    [ -n "$w" ] || continue
    mkdir -p "$root/lib/modules/$kver/$(dirname "$w")"
    cp "$m/$w" "$root/lib/modules/$kver/$w"
  done
  cp "$m/modules.builtin" "$m/modules.order" "$root/lib/modules/$kver/"
  "$busybox" depmod -b "$root" "$kver"

  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\nrpc: files\n' > "$root/etc/nsswitch.conf"
  printf '127.0.0.1 localhost\n10.0.2.2 gateway\n' > "$root/etc/hosts"
  echo guest > "$root/etc/hostname"
  cp /etc/netconfig "$root/etc/netconfig"
  for f in /etc/protocols /etc/services /etc/rpc; do
    if [ -e "$f" ]; then cp "$f" "$root/etc/"; fi
  done
  ln -sf /proc/self/mounts "$root/etc/mtab"

  cat > "$root/init" <<'INIT'
#!/bin/sh
# bucketgate kernel-nfs guest: bring up the NIC, run /tests.sh, power off.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "BGTEST INFO guest up: $(uname -r), $(cut -d' ' -f1 /proc/uptime)s after boot"
modprobe -a virtio_pci virtio_net nfsv3 || echo "BGTEST FAIL modprobe"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# kernel messages stay out of the serial console (the tests dump dmesg themselves)
dmesg -n 1
if [ -x /tests.sh ]; then /tests.sh; else echo "BGTEST FAIL no /tests.sh"; fi
echo "BGTEST POWEROFF"
poweroff -f -n
INIT
  chmod +x "$root/init"
  (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) > "$stage/initramfs.cpio"
  echo "$kver" > "$stage/kver"
  rm -rf "$cache/image"
  mkdir -p "$cache/image"
  mv "$stage/vmlinuz" "$stage/initramfs.cpio" "$stage/kver" "$cache/image/"
  rm -rf "$stage"
  echo "$image_version" > "$cache/image/version"
}

if [ "$(cat "$cache/image/version" 2>/dev/null)" != "$image_version" ] \
  || [ ! -s "$cache/image/vmlinuz" ] || [ ! -s "$cache/image/initramfs.cpio" ]; then
  build_image
else
  say "VM image from the cache: kernel $(cat "$cache/image/kver") ($cache/image)"
fi
flock -u 9
exec 9>&-

# ------------------------------------------------------------------ the gateway, live
work=$(mktemp -d "${TMPDIR:-/tmp}/bucketgate-kernel-nfs.XXXXXX")
gw_pid=
qemu_pid=
finished=0
cleanup() {
  local rc=$?
  if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true; fi
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
  if [ "$finished" = 1 ] && [ "$rc" = 0 ] && [ "$keep" = 0 ]; then
    rm -rf "$work"
  else
    echo "work directory kept: $work (gateway.log, console.log, guest-dmesg.txt, bucket/)"
  fi
}
trap cleanup EXIT
trap 'echo "FAIL: total timeout of ${total_timeout}s reached (or interrupted) at $(elapsed)"; exit 124' TERM INT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)
mkdir -p "$work/bucket"
cat > "$work/gw.toml" <<TOML
[nfs]
listen = "127.0.0.1:$port"
[admin]
listen = "127.0.0.1:$admin"
[cache]
dir = "$work/cache"
capacity = "2GiB"
upload_delay = "200ms"
[[share]]
name = "data"
url = "file://$work/bucket"
squash = "none"
TOML
smb_args=
if [ "$smb" = 1 ]; then
  # smbd reaches the FUSE mount inside the work directory as the SMB user.
  chmod 0755 "$work"
  smb_port=$(free_port)
  smb_pass="cifs-$RANDOM-$RANDOM"
  cat >> "$work/gw.toml" <<TOML
fuse_mount = "$work/mnt"
smb = true
smb_users = ["bgcifs"]
[smb]
listen = "127.0.0.1:$smb_port"
run_smbd = true
state_dir = "$work/smb"
TOML
  printf '%s\n' "$smb_pass" > "$work/smb-password"
  "$bin" smb-user --config "$work/gw.toml" add bgcifs --password-file "$work/smb-password" >/dev/null
  smb_args="bgsmbport=$smb_port bgsmbuser=bgcifs bgsmbpass=$smb_pass"
fi
"$bin" check-config --config "$work/gw.toml" >/dev/null
# Objects another S3 writer left in the bucket before the gateway ever listed it: a
# private file and a private directory (marker) of uid 1000, in the local store's own
# format (the object a plain file, its metadata in a JSON sidecar named by the FNV-1a
# hash of the key, as src/remote/local.rs writes them).
seed_object() {
  python3 - "$work/bucket" "$@" <<'PY'
import json, os, sys
root, key, body, uid, gid, mode = sys.argv[1], sys.argv[2], sys.argv[3].encode(), *map(lambda v: int(v, 8) if v.startswith("0") else int(v), sys.argv[4:7])
path = os.path.join(root, key.rstrip("/"))
if key.endswith("/"):
    os.makedirs(path, exist_ok=True)
    size, mtime = 0, 0
else:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(body)
    st = os.stat(path)
    size, mtime = st.st_size, st.st_mtime_ns
h = 0x6c62272e07bb014262b821756295c58d
for b in key.encode():
    h = ((h ^ b) * 0x0000000001000000000000000000013B) % (1 << 128)
h = f"{h:032x}"
sc = os.path.join(root, ".bucketgate", "meta", h[:2], h + ".json")
os.makedirs(os.path.dirname(sc), exist_ok=True)
etag = "d41d8cd98f00b204e9800998ecf8427e" if key.endswith("/") else f"seed{h[:28]}"
json.dump({"key": key, "etag": etag, "size": size, "data_mtime_ns": mtime,
           "meta": {"uid": uid, "gid": gid, "mode": mode, "mtime_ns": 981173106 * 10**9}}, open(sc, "w"))
PY
}
seed_object home/secret $'top secret\n' 1000 1000 0100600
seed_object home2/ "" 1000 1000 040700
seed_object home2/inside $'inside\n' 1000 1000 0100644
start_gateway() {
  # With --smb the gateway serves once its own smbd does (after a kill -9 the old
  # smbd still holds the port until the new gateway stops it).
  local smbd_before _
  smbd_before=$(grep -c "smbd serving" "$work/gateway.log" 2>/dev/null) || smbd_before=0
  RUST_LOG=${BUCKETGATE_VM_LOG:-info,bucketgate::nfs=debug} "$bin" serve --config "$work/gw.toml" >> "$work/gateway.log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
      && { [ "$smb" = 0 ] || [ "$(grep -c "smbd serving" "$work/gateway.log")" -gt "$smbd_before" ]; }; then
      return 0
    fi
    sleep 0.1
  done
  echo "gateway did not start"; tail -30 "$work/gateway.log"; exit 1
}
restarts=0
restart_gateway() {
  say "host: kill -9 of the gateway (pid $gw_pid) and a restart, as the guest asked"
  echo "=== kernel-nfs.sh: kill -9 of pid $gw_pid at $(date -u +%FT%T.%NZ), then a restart" >> "$work/gateway.log"
  kill -9 "$gw_pid"
  wait "$gw_pid" 2>/dev/null || true
  start_gateway
  restarts=$((restarts + 1))
  say "host: gateway restarted (pid $gw_pid)"
  echo "restarted: pid $gw_pid" >&7
}
start_gateway
say "gateway $("$bin" --version) on 127.0.0.1:$port (admin $admin), bucket $work/bucket"

# ------------------------------------------------------------------ the guest's tests
mkdir -p "$work/extra"
[ -z "$extra" ] || cp -a "$extra/." "$work/extra/"
cp "${guest:-$repo/tests/interop/kernel-nfs-guest.sh}" "$work/extra/tests.sh"
cp "$repo/tests/interop/kernel-guest-lib.sh" "$work/extra/guest-lib.sh"
chmod +x "$work/extra/tests.sh"
(cd "$work/extra" && find . -print0 | cpio --null -o -H newc --quiet) > "$work/extra.cpio"
cat "$cache/image/initramfs.cpio" "$work/extra.cpio" > "$work/initrd.cpio"

# ---------------------------------------------------------------------- boot the VM
accel_args=(-accel tcg)
[ "$accel" = tcg ] || accel_args=(-accel kvm -cpu host)
vm_timeout=$(( total_timeout - $(date +%s) + t_start - 90 ))
[ "$vm_timeout" -gt 60 ] || vm_timeout=60
say "booting the VM (${accel_args[*]}, at most ${vm_timeout}s)"
t_vm=$(date +%s)
# the second serial port: the host's answers to the guest (held open read-write here,
# so a write never blocks even if qemu is gone)
mkfifo "$work/ack.in" "$work/ack.out"
exec 7<>"$work/ack.in"
timeout -k 5 "$vm_timeout" qemu-system-x86_64 \
  -nodefaults -no-user-config -display none -no-reboot \
  "${accel_args[@]}" -smp 1 -m 1024 \
  -kernel "$cache/image/vmlinuz" -initrd "$work/initrd.cpio" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init bgport=$port bgsteptimeout=${BUCKETGATE_VM_STEP_TIMEOUT:-180} $smb_args" \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
  -serial "file:$work/console.log" -chardev "pipe,id=ack,path=$work/ack" -serial chardev:ack \
  < /dev/null > "$work/qemu.log" 2>&1 &
qemu_pid=$!
touch "$work/console.log"
# show the guest's test lines live, and do what it asks of the host
while IFS= read -r line; do
  line=${line%$'\r'}
  case "$line" in
    "BGTEST HOST restart-gateway"*) restart_gateway ;;
    "BGTEST "PASS*|"BGTEST "FAIL*|"BGTEST "SKIP*|"BGTEST "INFO*) echo "  guest: ${line#BGTEST }" ;;
  esac
done < <(tail --pid="$qemu_pid" -n +1 -f "$work/console.log")
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=
vm_secs=$(( $(date +%s) - t_vm ))
tr -d '\r' < "$work/console.log" > "$work/console.txt"
sed -n 's/^BGDMESG //p' "$work/console.txt" > "$work/guest-dmesg.txt"
[ -z "$console_copy" ] || cp "$work/console.txt" "$console_copy"
say "VM ended after ${vm_secs}s (qemu exit $qemu_rc)"

# ------------------------------------------------------------- results and the bucket
pass=0; failn=0
results=()
while read -r verdict name rest; do
  results+=("$verdict $name $rest")
  case "$verdict" in PASS) pass=$((pass + 1)) ;; *) failn=$((failn + 1)) ;; esac
done < <(sed -n 's/^BGTEST \(PASS\|FAIL\|SKIP\) /\1 /p' "$work/console.txt")
host_result() {
  results+=("$1 $2")
  if [ "$1" = PASS ]; then pass=$((pass + 1)); else failn=$((failn + 1)); fi
}
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  host_result FAIL "vm (timed out after ${vm_secs}s; last guest step: $(sed -n 's/^BGTEST START //p' "$work/console.txt" | tail -1))"
elif ! grep -aq '^BGTEST DONE' "$work/console.txt"; then
  host_result FAIL "vm (the guest did not finish its tests; qemu exit $qemu_rc)"
fi

if "$bin" flush --wait --timeout 120 --admin "127.0.0.1:$admin" > "$work/flush.log" 2>&1; then
  host_result PASS "flush-wait"
else
  host_result FAIL "flush-wait ($(tail -3 "$work/flush.log" | tr '\n' ' '))"
fi
# What the bucket directory must hold once everything is uploaded. The local store
# keeps each object as a plain file under bucket/, its metadata in a JSON sidecar under
# bucket/.bucketgate/meta/ (see src/remote/local.rs).
bucket_check() {
  python3 - "$work/bucket" "$work/console.txt" "$repo/tests/interop" <<'PY'
import os, sys
sys.path.insert(0, sys.argv[3])
from bucket_dir import Bucket, check
b = Bucket(sys.argv[1], sys.argv[2])
info, meta, path, exists, sha, body = b.info, b.meta, b.path, b.exists, b.sha, b.body
for key, guest in (("big.bin", "big.bin"), ("t/log.txt", "t/log.txt"), ("t/during.bin", "big.bin"),
                   ("t/sparse.bin", "t/sparse.bin")):
    want = info.get(guest)
    got = sha(key)
    check(f"bucket:{key}-sha256", bool(want) and got == want, f"want {want}, got {got}")
want = {"uid": 1234, "gid": 5678, "mode": 0o100640, "mtime_ns": 981173106 * 10**9}
check("bucket:attrs.txt-metadata", meta.get("t/attrs.txt") == want, f"want {want}, got {meta.get('t/attrs.txt')}")
link = meta.get("t/link") or {}
check("bucket:symlink-object", body("t/link") == b"../big.bin" and link.get("mode") == 0o120777,
      f"body {body('t/link')!r}, meta {meta.get('t/link')}")
ll = body("t/longlink")
check("bucket:long-symlink-object", ll == b"L" * 1000, f"body of {len(ll or b'')} bytes")
n = len(os.listdir(path("many"))) if exists("many") else 0
check("bucket:500-objects-in-many", n == 500, f"{n} objects")
gone = [p for p in ("t/gone.txt", "t/d1", "t/src.txt", "t/tree", "t/deep/a/b/c", "t/doomed", "t/doomed2",
                    "t/open.txt", "t/hardlink", "t/empty") if exists(p)]
gone += [f"t/{f}" for f in os.listdir(path("t")) if f.startswith(".nfs") or (f.startswith("excl.") and f != "excl.txt")] if exists("t") else []
check("bucket:removed-and-renamed-away", not gone, f"still there: {gone}")
there = [p for p in ("t/d2/sub", "t/deep/a/m3.txt", "t/over.txt", "t/dangling", "t/new-by-touch", "t/excl.txt",
                     "t/d2/after-restart/f", "t/full/x", "t/perm/userfile", "t/" + "n" * 255,
                     "t/with space", "t/été-€-名前", "t/-dash") if not exists(p)]
check("bucket:renamed-and-created", not there, f"missing: {there}")
check("bucket:rename-over-existing", body("t/over.txt") == b"new\n", f"t/over.txt holds {body('t/over.txt')!r}")
check("bucket:held-open-file", body("t/held.bin") is not None and body("t/held.bin") == body("big.bin")[:12 << 20]
      if body("big.bin") else False, "t/held.bin differs from the first 12 MiB of big.bin")
d2 = meta.get("t/d2/")
check("bucket:directory-marker-metadata",
      bool(d2) and d2["mode"] == 0o40751 and d2["mtime_ns"] == 946684799 * 10**9 + 500_000_000, f"t/d2/ meta {d2}")
ex = meta.get("t/excl.txt")
check("bucket:exclusive-create-metadata", bool(ex) and ex["mode"] == 0o100600 and body("t/excl.txt") == b"exclusive\n",
      f"meta {ex}, body {body('t/excl.txt')!r}")
fifo = meta.get("t/fifo") or {}
check("bucket:fifo-object", body("t/fifo") == b"" and fifo.get("mode") == 0o010640, f"body {body('t/fifo')!r}, meta {fifo}")
uf = meta.get("t/perm/userfile")
check("bucket:chown-metadata", bool(uf) and (uf["uid"], uf["gid"], uf["mode"]) == (0, 0, 0o100700), f"meta {uf}")
sec = meta.get("home/secret") or {}
check("bucket:listed-private-file-untouched", body("home/secret") == b"top secret\n"
      and (sec.get("uid"), sec.get("mode")) == (1000, 0o100600), f"body {body('home/secret')!r}, meta {sec}")
PY
}
# (only when the guest ran every step: after a hang its files are not all there)
guest_complete=0
if [ -n "$guest" ] && [ -n "$bucket_script" ]; then
  while read -r verdict name rest; do
    host_result "$verdict" "$name${rest:+ $rest}"
  done < <(python3 "$bucket_script" "$work/bucket" "$work/console.txt" 2>&1 \
    | sed -n 's/^\(PASS\|FAIL\) /\1 /p;s/^\(Traceback\|[A-Za-z]*Error\)/FAIL bucket-check-crashed: &/p')
elif [ -n "$guest" ]; then
  echo "(bucket and restart checks left out: another guest script ran)"
elif grep -aq '^BGTEST DONE' "$work/console.txt" && ! grep -aq '^BGTEST SKIP' "$work/console.txt"; then
  guest_complete=1
fi
[ "$guest_complete" = 1 ] || [ -n "$guest" ] || echo "(bucket and restart checks skipped: the guest did not run every step)"
[ "$guest_complete" = 0 ] || while read -r verdict name rest; do
  host_result "$verdict" "$name${rest:+ $rest}"
done < <(bucket_check 2>&1 | sed -n 's/^\(PASS\|FAIL\) /\1 /p;s/^\(Traceback\|[A-Za-z]*Error\)/FAIL bucket-check-crashed: &/p')

# the gateway restart happened, and neither side logged trouble
if [ -n "$guest" ]; then
  :
elif [ "$restarts" = 1 ]; then
  host_result PASS "host:gateway-restarted-once"
elif [ "$guest_complete" = 1 ]; then
  host_result FAIL "host:gateway-restarted-once ($restarts restarts)"
fi
# With --smb, the restart after the host's kill -9 takes back the FUSE mount and stops
# the smbd the killed gateway left: warnings that kill caused.
gw_trouble=$(grep -E ' (ERROR|WARN) ' "$work/gateway.log" \
  | grep -vE 'bucketgate::cli: (nfs\.listen|share\[0\]\.squash)' \
  | grep -vE 'unmounting a FUSE mount left by a gateway that stopped|stopping the smbd an earlier run of the gateway left running' || true)
if [ -z "$gw_trouble" ]; then host_result PASS "host:gateway-log-clean"; else host_result FAIL "host:gateway-log-clean ($(echo "$gw_trouble" | wc -l) WARN/ERROR lines)"; fi
guest_trouble=$(grep -iE 'nfs|rpc|lockd|xdr|CIFS: VFS' "$work/guest-dmesg.txt" | grep -vE 'RPC: Registered|FS-Cache: Loaded|drop_caches' || true)
if [ -z "$guest_trouble" ]; then host_result PASS "host:guest-dmesg-clean"; else host_result FAIL "host:guest-dmesg-clean ($(echo "$guest_trouble" | wc -l) kernel messages)"; fi
# NFS calls the kernel made, by procedure and status (debug lines of bucketgate::nfs)
calls=$(sed -n 's/.*proc="\{0,1\}\([A-Z_0-9]*\).*nfs call status=\([A-Za-z_0-9]*\).*/\1 \2/p' "$work/gateway.log" | sort | uniq -c | sort -rn || true)

# ---------------------------------------------------------------------------- report
echo
echo "== kernel NFSv3 client against bucketgate: $(grep -a -m1 'BGTEST INFO guest up' "$work/console.txt" | sed 's/.*guest up: //' || true)"
for r in "${results[@]}"; do echo "  $r"; done
if [ "$failn" -gt 0 ]; then
  echo
  echo "-- guest output of failing steps"
  grep -aE '^BGTEST (FAIL|  )' "$work/console.txt" | sed 's/^BGTEST /  /' || true
  echo "-- guest kernel messages about nfs/rpc"
  echo "${guest_trouble:-  (none)}" | tail -n 30 | sed 's/^/  /'
  if [ -s "$work/qemu.log" ]; then
    echo "-- qemu's own messages"
    tail -n 10 "$work/qemu.log" | sed 's/^/  /'
  fi
  echo "-- guest console after the tests, before the dmesg dump"
  grep -avE '^(BGTEST|BGDMESG)' "$work/console.txt" | tail -n 20 | sed 's/^/  /' || true
  echo "-- gateway log (warnings and errors, last 40)"
  grep -E ' (WARN|ERROR) ' "$work/gateway.log" | tail -n 40 | sed 's/^/  /' || true
fi
if [ -n "$calls" ]; then
  echo
  echo "-- NFS calls answered by the gateway (procedure status count); not OK:"
  echo "$calls" | awk '$3 != "OK" {printf "  %s %s %s\n", $2, $3, $1}'
  echo "   all: $(echo "$calls" | awk '{printf "%s%s/%s=%s", sep, $2, $3, $1; sep=" "}')"
fi
echo
echo "VM: ${vm_secs}s; total: $(elapsed) (accel ${accel_args[1]})"
echo "kernel-nfs: $pass passed, $failn failed"
finished=1
[ "$failn" = 0 ]
