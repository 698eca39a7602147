#!/bin/bash
# Boots a provisioned root with its own systemd as PID 1 (in new PID, mount, network,
# UTS and IPC namespaces: loopback only, read-only /sys and /proc/sys, the image's own
# static /dev,
# so nothing reaches the host's devices, kernel settings or network) and checks what
# the units do at boot:
#   boot 1: no user data -> firstboot says NOT CONFIGURED, the responder answers
#           /readyz 503 "not configured: ..." on 9108, bucketgate.service is skipped;
#           no cache volume -> the cache-disk unit fails and the mount is not made.
#   boot 2: bucketgate user data -> config written; bucketgate.service still does not
#           start, because its cache volume is missing (RequiresMountsFor).
#   boot 3: a cache volume (loop device over a file of our own) -> formatted, mounted,
#           the service (a probing stand-in) runs as bucketgate inside its sandbox;
#           stops gracefully on SIGTERM.
#   boot 4: same volume -> not reformatted, files still there, service runs.
#   boot 5: user data with an SMB share and the image's own gateway -> the generator
#           lets it mount FUSE, bucketgate-smbd.service serves the mount, an SMB
#           client's file reaches the bucket, kill -9 restarts both.
# IMDS is a fake (tests/fake-imds.py) inside the booted system on 127.0.0.1.
#
# usage: boot-test.sh ROOT   (works on a copy; ROOT is not changed)
set -euo pipefail

src=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d /var/tmp/bucketgate-boot.XXXXXX)
root=$work/root
pid=""
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   - boot: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - boot: $*"; }
is() { if [[ $2 == "$3" ]]; then ok "$1"; else bad "$1: got '$2', want '$3'"; fi; }
has() { # has "description" PATTERN command...: the command's output matches PATTERN
    local d=$1 pat=$2
    shift 2
    local out
    out=$("$@" 2>/dev/null || true)
    if grep -q -- "$pat" <<<"$out"; then ok "$d"; else bad "$d"; fi
}

stop_boot() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true # PID 1 of its namespace: takes all with it
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    pid=""
}
loopdev=""
cleanup() {
    stop_boot
    if [[ -n $loopdev ]]; then losetup -d "$loopdev" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# -x: never copy whatever is mounted inside the source (proc, dev).
cp -a -x "$src" "$root"

# Test-only additions to the copy: a fake IMDS inside the booted system, the first-boot
# script pointed at it, and a short wait for the (absent) cache volume.
install -m 0755 "$here/fake-imds.py" "$root/usr/local/lib/bucketgate/fake-imds.py"
cat >"$root/etc/systemd/system/fake-imds.service" <<'UNIT'
[Unit]
Description=fake IMDSv2 for the boot test
Before=bucketgate-firstboot.service
[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/bucketgate/fake-imds.py /var/lib/fake-imds 16925
[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/var/lib/fake-imds" \
    "$root/etc/systemd/system/bucketgate-firstboot.service.d"
ln -sf /etc/systemd/system/fake-imds.service "$root/etc/systemd/system/multi-user.target.wants/fake-imds.service"
cat >"$root/etc/systemd/system/bucketgate-firstboot.service.d/test.conf" <<'UNIT'
[Unit]
Wants=fake-imds.service
After=fake-imds.service
[Service]
Environment=BUCKETGATE_IMDS_ENDPOINT=http://127.0.0.1:16925 BUCKETGATE_IMDS_WAIT_SECONDS=20
UNIT
sed -i 's/^CACHE_WAIT_SECONDS=.*/CACHE_WAIT_SECONDS=3/' "$root/etc/bucketgate/cache-disk.env"
# The hostname/machine id a real first boot would make.
: >"$root/etc/machine-id"

boot() {
    cat >"$work/boot.sh" <<BOOT
set -e
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
# /dev: the image's own static nodes (null, zero, random, tty, ...; no disks), with
# the console sent to /dev/null.
mount --bind /dev/null "$root/dev/console"
mkdir -p "$root/dev/pts" "$root/dev/shm"
# pivot_root, not chroot: systemd's sandboxing needs the root to be the namespace's root.
mkdir -p "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
exec /bin/bash -c 'umount -l /.oldroot && rmdir /.oldroot && exec env container=bucketgate-boot-test /lib/systemd/systemd --system --log-target=journal'

BOOT
    unshare --pid --fork --mount --net --uts --ipc bash "$work/boot.sh" </dev/null >"$work/boot.log" 2>&1 &
    local unshare_pid=$!
    # The booted systemd is the child of unshare.
    for _ in $(seq 100); do
        pid=$(pgrep -P "$unshare_pid" -x systemd || true)
        [[ -n $pid ]] && break
        sleep 0.1
    done
    [[ -n $pid ]] || { cat "$work/boot.log" >&2; echo "boot-test: systemd did not start" >&2; exit 1; }
    for _ in $(seq 100); do
        nsenter -t "$pid" -m -r test -S /run/systemd/private 2>/dev/null && break
        sleep 0.1
    done
    local state
    state=$(timeout 120 nsenter -t "$pid" -m -p -n -r -w systemctl is-system-running --wait 2>&1 || true)
    echo "boot-test: system state after boot: $state"
}
in_vm() { nsenter -t "$pid" -m -p -n -r -w "$@"; }

# Boot 5: user data with an SMB share, the image's own gateway and smbd, an SMB client
# from this host (inside the booted system's network namespace only).
boot_smb() {
    cp "$work/bucketgate.image" "$root/usr/local/bin/bucketgate"
    rm -rf "$root/etc/systemd/system/bucketgate.service.d"
    [[ -e $root/dev/fuse ]] || mknod -m 0666 "$root/dev/fuse" c 10 229
    cat >"$root/var/lib/fake-imds/user-data" <<'TOML'
#bucketgate-config
[nfs]
listen = "127.0.0.1:2049"
[admin]
listen = "127.0.0.1:9108"
[cache]
dir = "/var/cache/bucketgate/cache"
capacity = "200MiB"
[smb]
listen = "127.0.0.1:445"
[[share]]
name = "data"
url = "file:///var/cache/bucketgate/bucket/"
smb = true
smb_guest = true
TOML
    boot
    local main smbd1 smbd2 got
    is "SMB share: bucketgate.service runs" "$(in_vm systemctl is-active bucketgate.service)" "active"
    is "... with the FUSE drop-in the generator wrote from the new user data" \
        "$(in_vm systemctl show -P DropInPaths bucketgate.service | tr ' ' '\n' | grep -c 50-fuse.conf)" "1"
    if [[ $(in_vm systemctl is-active bucketgate-smbd.service) != active ]]; then
        in_vm journalctl -b --no-pager -o short-monotonic -u bucketgate-firstboot.service -u bucketgate.service \
            -u bucketgate-smbd.service | tail -n 40 >&2
    fi
    main=$(in_vm systemctl show -P MainPID bucketgate.service)
    is "... as bucketgate, not root" "$(in_vm stat -c %U "/proc/$main")" "bucketgate"
    # CAP_NET_BIND_SERVICE (bit 10) and CAP_SYS_ADMIN (bit 21), nothing else.
    has "... with CAP_SYS_ADMIN added to CAP_NET_BIND_SERVICE only" '^CapEff:.0000000000200400' in_vm grep CapEff "/proc/$main/status"
    is "... in the host's mount namespace (a mount in its own would be seen by nobody)" \
        "$(in_vm readlink "/proc/$main/ns/mnt")" "$(in_vm readlink /proc/1/ns/mnt)"
    has "the share is mounted with FUSE" '^fuse' in_vm findmnt -no FSTYPE /run/bucketgate/smb/data
    is "bucketgate-smbd.service runs" "$(in_vm systemctl is-active bucketgate-smbd.service)" "active"
    smbc() { nsenter -t "$pid" -n smbclient //127.0.0.1/data -N -m SMB3 -c "$1" 2>&1; }
    head -c 3000000 /dev/urandom >"$work/put.bin"
    smbc "put $work/put.bin file.bin" >"$work/smb.log" || cat "$work/smb.log"
    in_vm bucketgate flush --wait --timeout 60 --admin 127.0.0.1:9108 >/dev/null 2>&1 || true
    is "a file put over SMB reaches the bucket whole" \
        "$(in_vm sha256sum /var/cache/bucketgate/bucket/file.bin 2>&1 | cut -d' ' -f1)" "$(sha256sum <"$work/put.bin" | cut -d' ' -f1)"
    smbd1=$(in_vm systemctl show -P MainPID bucketgate-smbd.service)
    in_vm systemctl kill -s KILL --kill-whom=main bucketgate.service
    for _ in $(seq 60); do
        smbd2=$(in_vm systemctl show -P MainPID bucketgate-smbd.service)
        [[ $smbd2 != 0 && $smbd2 != "$smbd1" && $(in_vm systemctl is-active bucketgate-smbd.service) == active ]] && break
        sleep 0.5
    done
    is "kill -9 of the gateway: it restarts" "$(in_vm systemctl is-active bucketgate.service)" "active"
    is "... and smbd was restarted with it" "$( [[ $smbd2 != "$smbd1" && $smbd2 != 0 ]] && echo yes)" "yes"
    rm -f "$work/get.bin"
    smbc "get file.bin $work/get.bin" >"$work/smb.log" || cat "$work/smb.log"
    got=$(sha256sum <"$work/get.bin" 2>/dev/null | cut -d' ' -f1)
    is "... and the share serves the file again over SMB" "$got" "$(sha256sum <"$work/put.bin" | cut -d' ' -f1)"
    in_vm systemctl stop bucketgate.service
    is "stopping the gateway stops smbd" "$(in_vm systemctl is-active bucketgate-smbd.service)" "inactive"
    is "... and its FUSE mount is gone" "$(in_vm findmnt -no FSTYPE /run/bucketgate/smb/data)" ""
    local smbd_gone gw_stopping
    smbd_gone=$(in_vm systemctl show -P InactiveEnterTimestampMonotonic bucketgate-smbd.service)
    gw_stopping=$(in_vm systemctl show -P ActiveExitTimestampMonotonic bucketgate.service)
    is "... smbd was gone before the gateway began to stop (and unmount)" "$((smbd_gone <= gw_stopping))" "1"
    stop_boot
}

echo "# boot 1: no user data, no cache volume"
boot
is "firstboot ran" "$(in_vm systemctl is-active bucketgate-firstboot.service)" "active"
is "not-configured responder holds the admin port" "$(in_vm systemctl is-active bucketgate-unconfigured.socket)" "active"
readyz=$(in_vm curl -s -w ' HTTP %{http_code}' http://127.0.0.1:9108/readyz || true)
is "/readyz answers 503 not configured, with the reason" "$readyz" \
    "not configured: the instance has no user data; launch it with a '#bucketgate-config' user data (see README)
 HTTP 503"
[[ $readyz == *"HTTP 503" ]] || in_vm journalctl -b -u 'bucketgate-unconfigured@*' --no-pager | tail -n 20 >&2
is "/metrics says bucketgate_configured 0" "$(in_vm curl -s http://127.0.0.1:9108/metrics | grep -v '^#')" "bucketgate_configured 0"
is "bucketgate.service skipped (no config)" "$(in_vm systemctl show -P ConditionResult bucketgate.service)" "no"
has "journal: NOT CONFIGURED" 'NOT CONFIGURED' in_vm journalctl -b -u bucketgate-firstboot.service --no-pager -o cat
is "no cache volume: cache-disk unit failed" "$(in_vm systemctl is-failed bucketgate-cache-disk.service)" "failed"
has "journal: no cache volume found" 'no cache volume found' in_vm journalctl -b -u bucketgate-cache-disk.service --no-pager -o cat
is "nothing mounted on /var/cache/bucketgate" "$(in_vm systemctl is-active var-cache-bucketgate.mount)" "inactive"
is "node_exporter runs" "$(in_vm systemctl is-active prometheus-node-exporter.service)" "active"
has "node_exporter serves /metrics on 9100" '^node_boot_time_seconds' in_vm curl -sS http://127.0.0.1:9100/metrics
failed=$(in_vm systemctl list-units --failed --plain --no-legend 'bucketgate*' 'var-cache*' 'prometheus*' | awk '{print $1}' | sort | tr '\n' ' ')
is "failed units: only the cache-disk one (no volume)" "$failed" "bucketgate-cache-disk.service "
stop_boot

echo "# boot 2: bucketgate user data, still no cache volume"
cp "$root/usr/share/doc/bucketgate/bucketgate.toml.example" "$root/var/lib/fake-imds/user-data"
boot
is "config written from user data (0640 root:bucketgate)" "$(stat -c '%a %u:%g' "$root/etc/bucketgate/bucketgate.toml")" "640 0:951"
is "responder not started when configured" "$(in_vm systemctl is-active bucketgate-unconfigured.socket)" "inactive"
is "bucketgate.service does not start without its cache volume" "$(in_vm systemctl is-active bucketgate.service)" "inactive"
has "journal: bucketgate.service 'Dependency failed'" 'Dependency failed' in_vm journalctl -b -u bucketgate.service --no-pager -o cat
is "nothing written to the root disk's /var/cache/bucketgate" "$(find "$root/var/cache/bucketgate" -mindepth 1 | wc -l)" "0"
stop_boot

echo "# boots 3 and 4: with a cache volume (a loop device), the service runs under its sandbox"
if [[ ! -e /dev/loop-control ]] || ! command -v losetup >/dev/null; then
    bad "no loop devices on this host: cannot test the service with a cache volume"
else
    truncate -s 320M "$work/cache.img"
    loopdev=$(losetup -f --show "$work/cache.img")
    # The image's static /dev gets that one disk; without udev (a container) there is no
    # /dev/disk/by-label link, so the test names the device in the mount unit.
    loopnum=${loopdev#/dev/loop}
    mknod -m 0660 "$root$loopdev" b 7 "$loopnum"
    sed -i "s|^#CACHE_DEVICE=.*|CACHE_DEVICE=$loopdev|" "$root/etc/bucketgate/cache-disk.env"
    mkdir -p "$root/etc/systemd/system/var-cache-bucketgate.mount.d"
    printf '[Mount]\nWhat=%s\n' "$loopdev" >"$root/etc/systemd/system/var-cache-bucketgate.mount.d/test.conf"
    # The image's own binary, for boot 5; boots 3 and 4 run a stand-in that reports
    # what its sandbox lets it do, then serves until SIGTERM and records a graceful stop.
    cp "$root/usr/local/bin/bucketgate" "$work/bucketgate.image"
    cat >"$root/usr/local/bin/bucketgate" <<'STANDIN'
#!/bin/bash
case $1 in
check-config) exit 0 ;;
serve)
    out=/var/cache/bucketgate/probe
    {
        echo "user=$(id -un) cwd=$PWD nofile=$(ulimit -n)"
        grep -E '^(NoNewPrivs|CapEff):' /proc/self/status | tr -s '\t ' ' '
        touch /etc/bucketgate/x 2>/dev/null && echo "etc=writable" || echo "etc=readonly"
        touch /var/lib/x 2>/dev/null && echo "varlib=writable" || echo "varlib=readonly"
        touch /var/cache/bucketgate/x && echo "cache=writable" || echo "cache=readonly"
        touch /tmp/x && [[ ! -e /tmp/host-tmp-marker ]] && echo "tmp=private"
    } >"$out.tmp" 2>&1
    mv "$out.tmp" "$out"
    trap 'echo graceful >/var/cache/bucketgate/stopped; exit 0' TERM
    systemd-notify --ready
    while :; do sleep 1 & wait $!; done
    ;;
*) exit 1 ;;
esac
STANDIN
    chmod 0755 "$root/usr/local/bin/bucketgate"
    # The stand-in's READY=1 comes from systemd-notify, a child of the main process.
    mkdir -p "$root/etc/systemd/system/bucketgate.service.d"
    printf '[Service]\nNotifyAccess=all\n' >"$root/etc/systemd/system/bucketgate.service.d/standin.conf"
    touch "$root/tmp/host-tmp-marker"
    boot
    is "cache-disk unit formatted and is done" "$(in_vm systemctl is-active bucketgate-cache-disk.service)" "active"
    is "cache volume mounted" "$(in_vm findmnt -no SOURCE,FSTYPE /var/cache/bucketgate)" "$loopdev xfs"
    is "bucketgate.service runs" "$(in_vm systemctl is-active bucketgate.service)" "active"
    for _ in $(seq 50); do in_vm test -e /var/cache/bucketgate/probe && break; sleep 0.1; done
    probe=$(in_vm cat /var/cache/bucketgate/probe 2>&1 || true)
    # LimitNOFILE=1048576, or this sandbox's own hard limit if lower (it cannot be raised).
    hard=$(ulimit -Hn)
    [[ $hard == unlimited ]] && hard=1048576
    is "runs as bucketgate in the cache dir, LimitNOFILE applied" "$(head -n1 <<<"$probe")" \
        "user=bucketgate cwd=/var/cache/bucketgate nofile=$((hard < 1048576 ? hard : 1048576))"
    is "unit asks for LimitNOFILE=1048576" "$(in_vm systemctl show -P LimitNOFILE bucketgate.service)" "1048576"
    has "NoNewPrivileges" '^NoNewPrivs: 1' echo "$probe"
    # CAP_NET_BIND_SERVICE (bit 10, for portmap_listen on port 111) and nothing else.
    has "only CAP_NET_BIND_SERVICE" '^CapEff: 0000000000000400' echo "$probe"
    has "ProtectSystem=strict: /etc read-only" '^etc=readonly' echo "$probe"
    has "ProtectSystem=strict: /var/lib read-only" '^varlib=readonly' echo "$probe"
    has "ReadWritePaths: the cache is writable" '^cache=writable' echo "$probe"
    has "PrivateTmp" '^tmp=private' echo "$probe"
    is "cache root handed to the service user" "$(in_vm stat -c '%a %U:%G' /var/cache/bucketgate)" "750 bucketgate:bucketgate"
    is "no FUSE mount in the config: no drop-in relaxes the sandbox" \
        "$(in_vm systemctl show -P DropInPaths bucketgate.service | tr ' ' '\n' | grep -c 50-fuse.conf)" "0"
    is "no SMB share: bucketgate-smbd.service is skipped" "$(in_vm systemctl is-active bucketgate-smbd.service)" "inactive"
    uuid1=$(blkid -p -o value -s UUID "$work/cache.img")
    in_vm systemctl stop bucketgate.service
    is "SIGTERM stop is graceful" "$(in_vm cat /var/cache/bucketgate/stopped 2>&1)" "graceful"
    stop_boot
    is "the volume is XFS labelled bgcache" "$(blkid -p -o value -s LABEL "$work/cache.img")" "bgcache"

    boot
    is "reboot: same filesystem, not reformatted" "$(blkid -p -o value -s UUID "$work/cache.img")" "$uuid1"
    is "reboot: the cache's files survived" "$(in_vm cat /var/cache/bucketgate/stopped 2>&1)" "graceful"
    has "reboot: journal says it kept the filesystem" 'not formatting' in_vm journalctl -b -u bucketgate-cache-disk.service --no-pager -o cat
    is "reboot: bucketgate.service runs" "$(in_vm systemctl is-active bucketgate.service)" "active"
    # The operator's path out of "not configured": config written, then start the
    # gateway; it takes the admin port from the responder (Conflicts=).
    in_vm systemctl stop bucketgate.service
    in_vm mv /etc/bucketgate/bucketgate.toml /etc/bucketgate/bucketgate.toml.off
    in_vm systemctl start bucketgate-unconfigured.socket
    is "responder holds 9108 while unconfigured" "$(in_vm systemctl is-active bucketgate-unconfigured.socket)" "active"
    in_vm mv /etc/bucketgate/bucketgate.toml.off /etc/bucketgate/bucketgate.toml
    in_vm systemctl start bucketgate.service
    is "starting bucketgate stops the responder" "$(in_vm systemctl is-active bucketgate-unconfigured.socket)" "inactive"
    is "... and bucketgate runs" "$(in_vm systemctl is-active bucketgate.service)" "active"
    stop_boot

    echo "# boot 5: the image's gateway serving an SMB share through bucketgate-smbd.service"
    if grep -q standin <("$work/bucketgate.image" --version 2>&1); then
        echo "SKIPPED: boot 5 (SMB on the image): the image holds a stand-in, not the gateway (give ami/ci.sh the binary)"
    elif ! command -v smbclient >/dev/null; then
        bad "boot 5 needs smbclient on this host (apt-get install smbclient)"
    else
        boot_smb
    fi
fi

echo "$pass passed, $fail failed"
((fail == 0))
