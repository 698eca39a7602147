#!/bin/bash
# Provision a Debian 12 (bookworm) root into a bucketgate appliance.
#
# The same script runs on the Packer build instance (amazon-ebs) and, for CI, inside
# a debootstrap chroot (ami/build-local.sh). Idempotent: running it twice gives the
# same image.
#
#   provision.sh --binary PATH --version VERSION [--cache-device-name sdb] [--src DIR]
#
#   --binary             the bucketgate executable to install as /usr/local/bin/bucketgate
#   --version            the image version (recorded in /usr/share/bucketgate/VERSION)
#   --cache-device-name  block-device-mapping name of the cache volume (default sdb)
#   --src                the ami/ directory (default: this script's parent); its
#                        files/, grafana/*.json and prometheus/*.yml are installed
set -euo pipefail

BUCKETGATE_UID=951 # fixed, so a cache volume reattached to an instance from a newer
BUCKETGATE_GID=951 # AMI keeps its ownership (see README: upgrade path)

binary="" version="" cache_device_name=sdb
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

while (($#)); do
    case $1 in
    --binary) binary=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --cache-device-name) cache_device_name=${2#/dev/}; shift 2 ;;
    --src) src=$2; shift 2 ;;
    *) echo "provision.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n $binary && -n $version ]] || { echo "usage: provision.sh --binary PATH --version VERSION" >&2; exit 2; }
[[ -x $binary ]] || { echo "provision.sh: $binary is not an executable file" >&2; exit 2; }
[[ $cache_device_name =~ ^[a-z0-9]+$ ]] || { echo "provision.sh: bad --cache-device-name" >&2; exit 2; }
((EUID == 0)) || { echo "provision.sh: must run as root" >&2; exit 2; }

files=$src/files
log() { echo "provision: $*"; }

log "packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# curl: IMDSv2 in the first-boot script. xfsprogs: the cache filesystem.
# amazon-ec2-utils: udev rules that name EBS NVMe volumes by their block-device-mapping
#   name (/dev/sdb) and turn off the NVMe I/O timeout on EBS volumes.
# prometheus-node-exporter: host metrics on :9100.
# samba, samba-vfs-modules: smbd for shares with smb = true (bucketgate-smbd.service).
apt-get install -y -qq --no-install-recommends \
    ca-certificates curl xfsprogs util-linux udev amazon-ec2-utils \
    prometheus-node-exporter samba samba-vfs-modules >/dev/null
# Debian's own Samba units would take 445/tcp with the host's smb.conf: the gateway's
# smbd runs from bucketgate-smbd.service on the smb.conf of the configured shares.
systemctl mask smbd.service nmbd.service samba-ad-dc.service 2>&1 | sed 's/^/provision: /'
if [[ -d /run/systemd/system ]]; then
    systemctl stop smbd.service nmbd.service 2>/dev/null || true
fi

log "system user bucketgate ($BUCKETGATE_UID:$BUCKETGATE_GID)"
if getent group bucketgate >/dev/null; then
    gid=$(getent group bucketgate | cut -d: -f3)
    [[ $gid == "$BUCKETGATE_GID" ]] || { echo "provision.sh: group bucketgate has gid $gid, want $BUCKETGATE_GID" >&2; exit 1; }
else
    if getent group "$BUCKETGATE_GID" >/dev/null; then
        echo "provision.sh: gid $BUCKETGATE_GID is taken by $(getent group "$BUCKETGATE_GID" | cut -d: -f1)" >&2
        exit 1
    fi
    groupadd --system --gid "$BUCKETGATE_GID" bucketgate
fi
if getent passwd bucketgate >/dev/null; then
    uid=$(id -u bucketgate)
    [[ $uid == "$BUCKETGATE_UID" ]] || { echo "provision.sh: user bucketgate has uid $uid, want $BUCKETGATE_UID" >&2; exit 1; }
else
    if getent passwd "$BUCKETGATE_UID" >/dev/null; then
        echo "provision.sh: uid $BUCKETGATE_UID is taken by $(getent passwd "$BUCKETGATE_UID" | cut -d: -f1)" >&2
        exit 1
    fi
    useradd --system --uid "$BUCKETGATE_UID" --gid bucketgate --no-create-home \
        --home-dir /var/cache/bucketgate --shell /usr/sbin/nologin \
        --comment "bucketgate NFS gateway" bucketgate
fi

log "binary and scripts"
install -m 0755 -o root -g root "$binary" /usr/local/bin/bucketgate
install -m 0755 -o root -g root "$files/bin/bucketgate-cache-disk" /usr/local/sbin/bucketgate-cache-disk
install -m 0755 -o root -g root "$files/bin/bucketgate-firstboot" /usr/local/sbin/bucketgate-firstboot
install -d -m 0755 /usr/local/lib/bucketgate
install -m 0755 -o root -g root "$files/bin/not-configured-http" /usr/local/lib/bucketgate/not-configured-http
install -m 0644 -o root -g root "$files/systemd/fuse-sandbox.conf" /usr/local/lib/bucketgate/fuse-sandbox.conf
install -d -m 0755 /etc/systemd/system-generators
install -m 0755 -o root -g root "$files/bin/bucketgate-generator" /etc/systemd/system-generators/bucketgate-generator

log "directories and configuration"
# /etc/bucketgate: the config (written at boot from user data) is readable by the service.
install -d -m 0750 -o root -g bucketgate /etc/bucketgate
sed "s/@CACHE_DEVICE_NAME@/$cache_device_name/" "$files/etc/cache-disk.env" >/etc/bucketgate/cache-disk.env.tmp
install -m 0644 -o root -g root /etc/bucketgate/cache-disk.env.tmp /etc/bucketgate/cache-disk.env
rm -f /etc/bucketgate/cache-disk.env.tmp
# The mount point on the root disk stays root's: the service user can write there only
# once the cache volume is mounted (bucketgate.service hands the mounted root over).
install -d -m 0755 -o root -g root /var/cache/bucketgate
install -m 0644 -o root -g root "$files/etc/60-bucketgate.conf" /etc/sysctl.d/60-bucketgate.conf
install -d -m 0755 /usr/share/doc/bucketgate
install -m 0644 "$files/etc/bucketgate.toml.example" /usr/share/doc/bucketgate/bucketgate.toml.example
if [[ -f $src/README.md ]]; then
    install -m 0644 "$src/README.md" /usr/share/doc/bucketgate/README.md
fi
install -d -m 0755 /usr/share/bucketgate
printf '%s\n' "$version" >/usr/share/bucketgate/VERSION

log "dashboards and alert rules"
# Shipped with the image for the monitoring server to pick up; replaced as a whole so
# a file removed from the repo disappears from the image too.
shopt -s nullglob
for kind in grafana:json prometheus:yml; do
    dir=${kind%%:*} ext=${kind#*:}
    rm -rf "/usr/share/bucketgate/$dir"
    install -d -m 0755 "/usr/share/bucketgate/$dir"
    for f in "$src/$dir"/*."$ext"; do
        install -m 0644 "$f" "/usr/share/bucketgate/$dir/"
    done
done
shopt -u nullglob

log "systemd units"
for unit in bucketgate.service bucketgate-smbd.service bucketgate-cache-disk.service var-cache-bucketgate.mount \
    bucketgate-firstboot.service bucketgate-unconfigured.socket bucketgate-unconfigured@.service; do
    install -m 0644 -o root -g root "$files/systemd/$unit" "/etc/systemd/system/$unit"
done
dropin='dev-disk-by\x2dlabel-bgcache.device.d'
install -d -m 0755 "/etc/systemd/system/$dropin"
install -m 0644 "$files/systemd/$dropin/bucketgate-timeout.conf" "/etc/systemd/system/$dropin/bucketgate-timeout.conf"
# Offline in a chroot (systemctl only makes the symlinks), live on the build instance.
systemctl enable bucketgate.service bucketgate-smbd.service bucketgate-firstboot.service \
    var-cache-bucketgate.mount prometheus-node-exporter.service 2>&1 | sed 's/^/provision: /'
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi

apt-get clean
log "done: bucketgate image $version"
