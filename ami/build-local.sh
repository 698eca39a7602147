#!/bin/bash
# The AMI build without AWS: debootstrap a Debian 12 (bookworm) root, run the SAME
# provisioning as Packer (provision/provision.sh, twice: it must be idempotent) in a
# chroot, `systemd-analyze verify` the units inside it, run tests/in-image-tests.sh in
# it (files, users, permissions; cache-disk, first-boot and not-configured behaviour
# against image files and a fake IMDSv2), boots a copy of it with its own systemd
# (tests/boot-test.sh), then runs the image cleanup step.
#
#   ami/build-local.sh --binary PATH [--version V] [--keep]
#
# Needs root, debootstrap, python3 (the fake IMDS) and the Debian mirror. The minbase
# root is cached as a tarball in $BUCKETGATE_AMI_CACHE (default
# /var/cache/bucketgate-ami-build) and rebuilt when older than 7 days.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
binary="" version=0.0.0-local keep=0
while (($#)); do
    case $1 in
    --binary) binary=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "build-local.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n $binary && -x $binary ]] || { echo "usage: build-local.sh --binary PATH (an executable)" >&2; exit 2; }
((EUID == 0)) || { echo "build-local.sh: must run as root (debootstrap, chroot)" >&2; exit 2; }

cache=${BUCKETGATE_AMI_CACHE:-/var/cache/bucketgate-ami-build}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the official Debian 12 AMI has and minbase lacks, that the provisioning relies on.
base_pkgs=systemd,systemd-sysv,udev,ca-certificates
tarball=$cache/bookworm-minbase-$(echo "$base_pkgs" | sha256sum | cut -c1-8).tar

step() { echo "== build-local: $* ($(date -u +%T))"; }

mkdir -p "$cache"
if [[ ! -s $tarball ]] || [[ -n $(find "$tarball" -mtime +7) ]]; then
    step "debootstrap bookworm minbase (cached as $tarball)"
    tmp=$(mktemp -d "$cache/debootstrap.XXXXXX")
    debootstrap --variant=minbase --include="$base_pkgs" bookworm "$tmp/root" "$mirror" >"$tmp/log" 2>&1 ||
        { tail -n 30 "$tmp/log" >&2; rm -rf "$tmp"; exit 1; }
    tar -C "$tmp/root" -cf "$tarball.new" .
    mv -f "$tarball.new" "$tarball"
    rm -rf "$tmp"
else
    step "reusing cached $tarball"
fi

work=$(mktemp -d /var/tmp/bucketgate-ami.XXXXXX)
root=$work/root
imds_pid=""
umount_all() {
    local m
    for m in dev/pts dev proc; do
        if mountpoint -q "$root/$m"; then umount -l "$root/$m"; fi
    done
}
cleanup() {
    if [[ -n $imds_pid ]]; then kill "$imds_pid" 2>/dev/null || true; fi
    umount_all
    if ((keep)); then
        echo "build-local: kept $root"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

step "unpack root into $root"
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# Nothing may start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

mkdir -p "$root/tmp/bucketgate-ami"
tar -C "$here" --exclude=.packer-validate -cf - . | tar -C "$root/tmp/bucketgate-ami" -xf -
install -m 0755 "$binary" "$root/tmp/bucketgate-ami/bucketgate"

provision() {
    chroot "$root" bash /tmp/bucketgate-ami/provision/provision.sh \
        --binary /tmp/bucketgate-ami/bucketgate --version "$version" --cache-device-name /dev/sdb
}
# Everything provisioning owns, with content hashes and modes: must not change on a rerun.
manifest() {
    (cd "$root" && find etc usr/local usr/share/bucketgate usr/share/doc/bucketgate var/cache/bucketgate \
        -path etc/ld.so.cache -prune -o -printf '%p %m %u:%g %l\n' | sort &&
        find etc usr/local usr/share/bucketgate usr/share/doc/bucketgate -type f \
            ! -path etc/ld.so.cache -print0 | sort -z | xargs -0 sha256sum)
}

step "provision (1st run)"
provision
manifest >"$work/manifest.1"
step "provision (2nd run: idempotent?)"
provision
manifest >"$work/manifest.2"
if ! diff -u "$work/manifest.1" "$work/manifest.2"; then
    echo "build-local: FAIL: a second provisioning run changed the image (diff above)" >&2
    exit 1
fi
echo "build-local: idempotent: second run changed nothing ($(wc -l <"$work/manifest.1") entries compared)"

step "systemd-analyze verify (the image's own systemd)"
units=(bucketgate.service bucketgate-smbd.service bucketgate-cache-disk.service var-cache-bucketgate.mount
    bucketgate-firstboot.service bucketgate-unconfigured.socket bucketgate-unconfigured@0.service)
verify_out=$(chroot "$root" systemd-analyze verify "${units[@]/#//etc/systemd/system/}" 2>&1) && verify_rc=0 || verify_rc=$?
# verify prints warnings (unknown keys, bad values) but exits 0 for them: any output fails.
if ((verify_rc != 0)) || [[ -n $verify_out ]]; then
    echo "$verify_out" >&2
    echo "build-local: FAIL: systemd-analyze verify (exit $verify_rc)" >&2
    exit 1
fi
echo "build-local: systemd-analyze verify: ${units[*]}: no warnings, exit 0"

step "in-image tests"
mkdir -p "$root/tmp/imds"
/usr/bin/python3 "$here/tests/fake-imds.py" "$root/tmp/imds" &
imds_pid=$!
for _ in $(seq 50); do [[ -s $root/tmp/imds/port ]] && break; sleep 0.1; done
chroot "$root" bash /tmp/bucketgate-ami/tests/in-image-tests.sh /tmp/imds

kill "$imds_pid" 2>/dev/null || true
imds_pid=""
umount_all

if [[ ${BUCKETGATE_BOOT_TEST:-1} == 1 ]]; then
    step "boot test: the image's systemd as PID 1 in isolated namespaces"
    bash "$here/tests/boot-test.sh" "$root"
else
    step "boot test skipped (BUCKETGATE_BOOT_TEST=0)"
fi

step "image cleanup step"
chroot "$root" bash /tmp/bucketgate-ami/provision/cleanup-image.sh
for gone in etc/bucketgate/bucketgate.toml tmp/bucketgate-ami root/.ssh/authorized_keys; do
    [[ ! -e $root/$gone ]] || { echo "build-local: FAIL: /$gone left in the image" >&2; exit 1; }
done
[[ ! -s $root/etc/machine-id ]] || { echo "build-local: FAIL: machine-id baked into the image" >&2; exit 1; }
rm -f "$root/usr/sbin/policy-rc.d"

step "ok: image for bucketgate $version provisioned and verified"
