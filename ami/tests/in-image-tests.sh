#!/bin/bash
# Runs INSIDE the provisioned root (chroot) made by ami/build-local.sh: checks what
# provision.sh installed, then exercises the cache-disk, first-boot and
# "not configured" scripts against fake disks (image files) and a fake IMDSv2.
#
# usage: in-image-tests.sh IMDS_DIR   (fake-imds.py serves IMDS_DIR/user-data; port in IMDS_DIR/port)
set -uo pipefail

IMDS_DIR=$1
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
check() { # check "description" command...
    local d=$1; shift
    if "$@" >/dev/null 2>&1; then ok "$d"; else bad "$d"; fi
}
mode_owner() { stat -c '%a %U:%G' "$1"; }
is() { # is "description" actual expected
    if [[ $2 == "$3" ]]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi
}

echo "# image contents"
is "user bucketgate: fixed uid/gid, no login, system home" \
    "$(getent passwd bucketgate | cut -d: -f3,4,6,7)" "951:951:/var/cache/bucketgate:/usr/sbin/nologin"
is "group bucketgate gid 951" "$(getent group bucketgate | cut -d: -f3)" "951"
check "bucketgate home is not created on the root disk" test ! -e /var/cache/bucketgate/.profile
is "binary /usr/local/bin/bucketgate" "$(mode_owner /usr/local/bin/bucketgate)" "755 root:root"
# A binary linked against a newer glibc than bookworm's would not start on the AMI.
check "binary's shared libraries all resolve in the image" bash -c '! ldd /usr/local/bin/bucketgate 2>&1 | grep -q "not found"'
for f in /usr/local/sbin/bucketgate-cache-disk /usr/local/sbin/bucketgate-firstboot \
    /usr/local/lib/bucketgate/not-configured-http; do
    is "$f" "$(mode_owner "$f")" "755 root:root"
done
is "/etc/bucketgate" "$(mode_owner /etc/bucketgate)" "750 root:bucketgate"
check "no config baked into the image" test ! -e /etc/bucketgate/bucketgate.toml
is "cache-disk.env names the mapping device" "$(grep '^CACHE_DEVICE_NAME=' /etc/bucketgate/cache-disk.env)" "CACHE_DEVICE_NAME=sdb"
is "cache mount point belongs to root until the volume is mounted" "$(mode_owner /var/cache/bucketgate)" "755 root:root"
is "sysctl file" "$(mode_owner /etc/sysctl.d/60-bucketgate.conf)" "644 root:root"
# Every setting has a comment above it saying why.
# shellcheck disable=SC2016 # awk program, not shell
check "every sysctl has a comment" awk '/^[a-z]/ { if (prev !~ /^#/ && prev !~ /^[a-z]/) exit 1 } { prev = $0 }' /etc/sysctl.d/60-bucketgate.conf
# The keys exist in the kernel (this host's; the AMI's Debian 6.1 kernel has them all):
# systemd-sysctl would log an error for an unknown one at every boot.
while read -r key; do
    check "sysctl $key exists" test -e "/proc/sys/${key//.//}"
done < <(awk '/^[a-z]/ { print $1 }' /etc/sysctl.d/60-bucketgate.conf)
check "README and example config in /usr/share/doc/bucketgate" test -s /usr/share/doc/bucketgate/bucketgate.toml.example
check "example user data starts with the header" grep -qx '#bucketgate-config' <(head -n1 /usr/share/doc/bucketgate/bucketgate.toml.example)
check "image version recorded" test -s /usr/share/bucketgate/VERSION
check "dashboards dir" test -d /usr/share/bucketgate/grafana
check "alert rules dir" test -d /usr/share/bucketgate/prometheus
for f in "$(dirname "$0")"/../grafana/*.json "$(dirname "$0")"/../prometheus/*.yml; do
    [[ -e $f ]] || continue
    d=$(basename "$(dirname "$f")")
    check "shipped $d/$(basename "$f")" cmp -s "$f" "/usr/share/bucketgate/$d/$(basename "$f")"
done
check "node_exporter installed" test -x /usr/bin/prometheus-node-exporter
for u in bucketgate.service bucketgate-smbd.service bucketgate-firstboot.service var-cache-bucketgate.mount \
    prometheus-node-exporter.service; do
    is "enabled: $u" "$(systemctl is-enabled "$u" 2>/dev/null)" "enabled"
done
for u in smbd.service nmbd.service; do
    is "Debian's $u masked (bucketgate-smbd.service serves SMB)" "$(systemctl is-enabled "$u" 2>/dev/null)" "masked"
done
check "Samba's smbd and its fileid module" test -f "$(/usr/sbin/smbd -b | sed -n 's/^ *MODULESDIR: *//p')/vfs/fileid.so"
is "not-configured socket is started on demand only" "$(systemctl is-enabled bucketgate-unconfigured.socket 2>/dev/null)" "static"
check "EBS NVMe udev rules (amazon-ec2-utils)" test -f /lib/udev/rules.d/70-ec2-nvme-devices.rules
check "xfs tools" command -v mkfs.xfs
check "no AWS keys anywhere in /etc or /root" bash -c '! grep -rIlE "AKIA[0-9A-Z]{16}|aws_secret_access_key" /etc /root /usr/local /usr/share/bucketgate'
u=/etc/systemd/system/bucketgate.service
for k in NoNewPrivileges=yes ProtectSystem=strict ReadWritePaths=/var/cache/bucketgate PrivateTmp=yes \
    LimitNOFILE=1048576 Restart=on-failure TimeoutStopSec=300 User=bucketgate \
    RequiresMountsFor=/var/cache/bucketgate ConditionPathExists=/etc/bucketgate/bucketgate.toml; do
    check "bucketgate.service has $k" grep -qx "$k" "$u"
done

echo "# systemd generator: bucketgate.service may mount FUSE only when its config says so"
is "generator installed" "$(mode_owner /etc/systemd/system-generators/bucketgate-generator)" "755 root:root"
gen() { # gen MOUNTS...: runs the generator with a bucketgate that lists MOUNTS as the config's
    rm -rf /tmp/gen && mkdir -p /tmp/gen/out
    if (($#)); then printf '%s\n' "$@" >/tmp/gen/mounts; else : >/tmp/gen/mounts; fi
    printf '#!/bin/sh\ncat /tmp/gen/mounts\n' >/tmp/gen/bin && chmod 0755 /tmp/gen/bin
    : >/tmp/gen/config.toml
    BUCKETGATE_BIN=/tmp/gen/bin BUCKETGATE_CONFIG=/tmp/gen/config.toml \
        /etc/systemd/system-generators/bucketgate-generator /tmp/gen/out /tmp/gen/early /tmp/gen/late
}
gen
check "no FUSE mount: no drop-in, the full sandbox" test ! -e /tmp/gen/out/bucketgate.service.d
gen /run/bucketgate/smb/data '/srv/odd name'
d=/tmp/gen/out/bucketgate.service.d/50-fuse.conf
for k in ProtectSystem=no PrivateTmp=no DeviceAllow=/dev/fuse\ rw CapabilityBoundingSet=CAP_SYS_ADMIN \
    AmbientCapabilities=CAP_SYS_ADMIN SystemCallFilter=@mount \
    "ExecStartPre=+-/usr/bin/install -d -o bucketgate -g bucketgate -m 0755 /run/bucketgate/smb/data"; do
    check "FUSE mounts: drop-in has $k" grep -qx "$k" "$d"
done
check "a mount point systemd would need quoted is left out" bash -c "! grep -q 'odd name' $d"
sandbox=$(sed -n 's/^Environment=BUCKETGATE_FUSE_MOUNTS=//p' "$d")
genc() { env BUCKETGATE_BIN=/tmp/gen/bin BUCKETGATE_CONFIG=/tmp/gen/config.toml "$@" \
    /etc/systemd/system-generators/bucketgate-generator --check; }
check "--check: the sandbox fits the config's mounts" genc BUCKETGATE_FUSE_MOUNTS="$sandbox"
check "--check: mounts added by hand without a reload fail the start" bash -c "$(declare -f genc); ! genc"
: >/tmp/gen/mounts
check "--check: mounts removed by hand without a reload fail the start" bash -c "$(declare -f genc); ! genc BUCKETGATE_FUSE_MOUNTS=$sandbox"
check "--check: no mounts and no drop-in is fine" genc
rm -rf /tmp/gen

echo "# cache disk: find, format once, never reformat"
cd_test() { # cd_test VAR=VALUE... -- runs the script with a fake /dev
    env BUCKETGATE_DEV_DIR=/tmp/cd/dev CACHE_WAIT_SECONDS="${WAIT:-2}" "$@" /usr/local/sbin/bucketgate-cache-disk
}
blank() { rm -f "$1"; truncate -s 320M "$1"; }
uuid() { blkid -p -o value -s UUID "$1"; }
rm -rf /tmp/cd && mkdir -p /tmp/cd/dev/disk/by-id
byid=/tmp/cd/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0aaaaaaaaaaaaaaaa

blank /tmp/cd/a.img
check "explicit CACHE_DEVICE, empty disk: formatted" cd_test CACHE_DEVICE=/tmp/cd/a.img
is "empty disk became xfs labelled bgcache" "$(blkid -p -o value -s TYPE /tmp/cd/a.img)/$(blkid -p -o value -s LABEL /tmp/cd/a.img)" "xfs/bgcache"
u1=$(uuid /tmp/cd/a.img)
check "second run succeeds" cd_test CACHE_DEVICE=/tmp/cd/a.img
is "second run did not reformat (same UUID)" "$(uuid /tmp/cd/a.img)" "$u1"

blank /tmp/cd/b.img
ln -s /tmp/cd/b.img "$byid"
ln -s /tmp/cd/b.img "$byid-part1"    # partition alias: ignored
ln -s /tmp/cd/b.img "${byid}_1"      # namespace alias: ignored
ln -s /tmp/cd/b.img "$byid-ns-1"     # amazon-ec2-utils alias: ignored
out=$(cd_test CACHE_EBS_VOLUME_ID=vol-0aaaaaaaaaaaaaaaa 2>&1)
check "CACHE_EBS_VOLUME_ID finds the NVMe by-id name: $(tail -n1 <<<"$out")" test "$(blkid -p -o value -s LABEL /tmp/cd/b.img)" = bgcache
check "a missing CACHE_EBS_VOLUME_ID is an error" bash -c '! BUCKETGATE_DEV_DIR=/tmp/cd/dev CACHE_WAIT_SECONDS=1 CACHE_EBS_VOLUME_ID=vol-0bbbbbbbbbbbbbbbb /usr/local/sbin/bucketgate-cache-disk'
out=$(cd_test 2>&1)
is "auto: the only EBS volume is chosen (aliases skipped)" "$(grep -c 'cache volume: .*vol0aaaaaaaaaaaaaaaa ' <<<"$out")" "1"

blank /tmp/cd/c.img
ln -s /tmp/cd/c.img /tmp/cd/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0cccccccccccccccc
out=$(cd_test 2>&1)
check "auto: two candidate volumes is an error, nothing formatted" test "$(blkid -p /tmp/cd/c.img; echo $?)" = 2
check "auto: the error says to set CACHE_EBS_VOLUME_ID" grep -q 'more than one EBS volume' <<<"$out"
ln -s /tmp/cd/c.img /tmp/cd/dev/sdb
out=$(cd_test CACHE_DEVICE_NAME=sdb 2>&1)
check "CACHE_DEVICE_NAME=sdb wins over auto-discovery" test "$(blkid -p -o value -s LABEL /tmp/cd/c.img)" = bgcache

blank /tmp/cd/e.img
mkfs.ext4 -q -F /tmp/cd/e.img
u1=$(uuid /tmp/cd/e.img)
rc=0; out=$(cd_test CACHE_DEVICE=/tmp/cd/e.img 2>&1) || rc=$?
check "a disk with another filesystem is refused" test "$rc" != 0
is "the ext4 disk is untouched" "$(blkid -p -o value -s TYPE /tmp/cd/e.img) $(uuid /tmp/cd/e.img)" "ext4 $u1"
check "refusal message says why" grep -q "refusing to use .*TYPE='ext4'" <<<"$out"

blank /tmp/cd/f.img
mkfs.xfs -q -L otherlabel /tmp/cd/f.img
check "an xfs disk not labelled bgcache is refused" bash -c '! CACHE_DEVICE=/tmp/cd/f.img /usr/local/sbin/bucketgate-cache-disk'
is "it keeps its label" "$(blkid -p -o value -s LABEL /tmp/cd/f.img)" "otherlabel"

blank /tmp/cd/g.img
printf 'precious data without any signature' | dd of=/tmp/cd/g.img bs=1 seek=70000 conv=notrunc status=none
before=$(sha256sum </tmp/cd/g.img)
check "signature-less but non-zero disk is refused" bash -c '! CACHE_DEVICE=/tmp/cd/g.img /usr/local/sbin/bucketgate-cache-disk'
is "its bytes are unchanged" "$(sha256sum </tmp/cd/g.img)" "$before"

check "no disk at all: error after the wait" bash -c '! BUCKETGATE_DEV_DIR=/tmp/cd/none CACHE_WAIT_SECONDS=1 /usr/local/sbin/bucketgate-cache-disk'
blank /tmp/cd/h.img
rm -rf /tmp/cd/late && mkdir -p /tmp/cd/late/disk/by-id
(sleep 3 && ln -s /tmp/cd/h.img /tmp/cd/late/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0hhhhhhhhhhhhhhhh) &
check "waits for a volume attached after boot" env BUCKETGATE_DEV_DIR=/tmp/cd/late CACHE_WAIT_SECONDS=30 /usr/local/sbin/bucketgate-cache-disk
is "the late volume was formatted" "$(blkid -p -o value -s LABEL /tmp/cd/h.img)" "bgcache"
wait
rm -rf /tmp/cd

echo "# first boot: config from user data (fake IMDSv2)"
port=$(cat "$IMDS_DIR/port")
fb() { # fb: run the first-boot script against the fake IMDS and a scratch /etc
    env BUCKETGATE_IMDS_ENDPOINT="http://127.0.0.1:$port" BUCKETGATE_IMDS_WAIT_SECONDS=2 \
        BUCKETGATE_ETC_DIR=/tmp/fb/etc BUCKETGATE_STATE_DIR=/tmp/fb/state BUCKETGATE_RUN_DIR=/tmp/fb/run \
        BUCKETGATE_START_RESPONDER=0 /usr/local/sbin/bucketgate-firstboot
}
rm -rf /tmp/fb && mkdir -p /tmp/fb/etc
cfg=/tmp/fb/etc/bucketgate.toml
rm -f "$IMDS_DIR/user-data"
out=$(fb 2>&1)
check "no user data: not configured, exit 0" test ! -e "$cfg"
check "no user data: the reason is recorded" grep -q 'no user data' /tmp/fb/run/not-configured
check "no user data: NOT CONFIGURED in the journal" grep -q 'NOT CONFIGURED' <<<"$out"
is "responder: /readyz is 503 with the reason" \
    "$(printf 'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n' | BUCKETGATE_REASON_FILE=/tmp/fb/run/not-configured /usr/local/lib/bucketgate/not-configured-http | tr -d '\r' | sed -n '1p;$p' | tr '\n' '|')" \
    "HTTP/1.0 503 Service Unavailable|not configured: the instance has no user data; launch it with a '#bucketgate-config' user data (see README)|"
check "responder: /metrics says bucketgate_configured 0" bash -c "printf 'GET /metrics HTTP/1.0\r\n\r\n' | /usr/local/lib/bucketgate/not-configured-http | grep -qx 'bucketgate_configured 0'"

printf '#!/bin/bash\necho hello\n' >"$IMDS_DIR/user-data"
fb >/dev/null 2>&1
check "user data of another kind (a script): not configured" test ! -e "$cfg"
check "... and the reason says so" grep -q "does not start with a '#bucketgate-config' line" /tmp/fb/run/not-configured

sed 's/$/\r/' /usr/share/doc/bucketgate/bucketgate.toml.example >"$IMDS_DIR/user-data" # CRLF, as pasted from Windows
out=$(fb 2>&1)
check "bucketgate user data: config written" test -f "$cfg"
is "config mode/owner" "$(mode_owner "$cfg")" "640 root:bucketgate"
is "config is the user data minus its header line, CRs removed" "$(sha256sum <"$cfg")" "$(tail -n +2 /usr/share/doc/bucketgate/bucketgate.toml.example | sha256sum)"
check "configured: no not-configured marker" test ! -e /tmp/fb/run/not-configured
is "admin token mode/owner" "$(mode_owner /tmp/fb/etc/admin-token)" "640 root:bucketgate"
is "admin token: 64 hex digits" "$(grep -cxE '[0-9a-f]{64}' /tmp/fb/etc/admin-token)" "1"
token_before=$(cat /tmp/fb/etc/admin-token)
out=$(fb 2>&1)
check "second boot with the same user data: unchanged" grep -q 'up to date' <<<"$out"
is "second boot keeps the admin token" "$(cat /tmp/fb/etc/admin-token)" "$token_before"

printf '#bucketgate-config\n[nfs]\nlisten = "0.0.0.0:2049"\n[cache]\ndir = "/var/cache/bucketgate"\n[[share]]\nname = "data2"\nurl = "s3://bucket-two/"\n' >"$IMDS_DIR/user-data"
fb >/dev/null 2>&1
check "user data changed while stopped: config follows it" grep -q 'data2' "$cfg"

echo '# edited by hand' >>"$cfg"
printf '#bucketgate-config\n[cache]\ndir = "/var/cache/bucketgate"\n[[share]]\nname = "data3"\nurl = "s3://bucket-three/"\n' >"$IMDS_DIR/user-data"
out=$(fb 2>&1)
check "a hand-edited config is kept" grep -q '# edited by hand' "$cfg"
check "... and the journal says why" grep -q 'edited by hand' <<<"$out"

rm -f "$cfg"
printf '#bucketgate-config\n[nfs]\nlisten = "0.0.0.0:2049"\n' >"$IMDS_DIR/user-data" # no [[share]]: check-config rejects
out=$(fb 2>&1)
check "a config check-config rejects is not installed" test ! -e "$cfg"
check "... it is kept as bucketgate.toml.rejected" test -f /tmp/fb/etc/bucketgate.toml.rejected
check "... and /readyz's reason quotes check-config" grep -q 'rejected by .bucketgate check-config' /tmp/fb/run/not-configured

out=$(BUCKETGATE_IMDS_ENDPOINT=http://127.0.0.1:1 BUCKETGATE_IMDS_WAIT_SECONDS=1 BUCKETGATE_ETC_DIR=/tmp/fb/etc \
    BUCKETGATE_STATE_DIR=/tmp/fb/state BUCKETGATE_RUN_DIR=/tmp/fb/run BUCKETGATE_START_RESPONDER=0 \
    /usr/local/sbin/bucketgate-firstboot 2>&1)
check "no IMDS (IMDSv2 token refused/unreachable): not configured, says why" grep -q 'cannot get an IMDSv2 token' /tmp/fb/run/not-configured
rm -rf /tmp/fb "$IMDS_DIR/user-data"

echo "$pass passed, $fail failed"
((fail == 0))
