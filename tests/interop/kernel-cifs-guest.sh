#!/usr/bin/dash
# Runs in the guest of kernel-nfs.sh --smb (dash): the Linux kernel's SMB client (cifs,
# SMB 3.1.1) against the gateway's SMB share. Steps as in kernel-nfs-guest.sh: each
# prints "BGTEST PASS|FAIL <step> (<seconds>)"; one asks the host to kill -9 and
# restart the gateway under the live mount. Not meant to run anywhere else.
# "A && B || fail" is on purpose: fail when either check is false.
# shellcheck disable=SC2012,SC2015
# shellcheck source=tests/interop/kernel-guest-lib.sh
. /guest-lib.sh
SMBPORT=$(arg bgsmbport)
SMBUSER=$(arg bgsmbuser)
SMBPASS=$(arg bgsmbpass)
# No mount.cifs in the guest: the kernel takes the server's address as ip=.
OPTS="vers=3.1.1,ip=10.0.2.2,port=$SMBPORT,username=$SMBUSER,password=$SMBPASS,uid=0,gid=0,hard"
M=/mnt
# A listing of a tree: type, size and checksum of every entry, by path.
tree_sum() { (cd "$1" && find . -mindepth 1 | sort | while read -r p; do
  if [ -d "$p" ]; then echo "d $p"; else echo "f $p $(stat -c %s "$p") $(sha "$p")"; fi
done); }

s_mount() {
  # The kernel loads the SMB 3 crypto modules on demand through its modprobe path;
  # the image's modprobe is busybox's, in /bin.
  echo /bin/modprobe > /proc/sys/kernel/modprobe
  modprobe cifs
  mkdir -p $M
  mount -t cifs -o "$OPTS" //10.0.2.2/data $M
  line=$(grep " $M cifs " /proc/mounts)
  info "mounted: $(echo "$line" | sed 's/password=[^,]*/password=***/')"
  case "$line" in *vers=3.1.1*) ;; *) fail "not SMB 3.1.1" ;; esac
}
s_copy_tree() {
  mkdir -p /tmp/src/a/b/c /tmp/src/empty
  dd if=/dev/urandom of=/tmp/src/big.bin bs=1M count=24 2>&1
  info "big.bin sha256 $(sha /tmp/src/big.bin)"
  i=1
  while [ $i -le 100 ]; do printf 'file %d\n' $i > /tmp/src/a/small-$i.txt; i=$((i + 1)); done
  printf 'deep\n' > /tmp/src/a/b/c/deep.txt
  tree_sum /tmp/src > /tmp/src.sum
  cp -r /tmp/src $M/tree
  sync
  cold
  tree_sum $M/tree > /tmp/mnt.sum
  cmp /tmp/src.sum /tmp/mnt.sum || { diff /tmp/src.sum /tmp/mnt.sum | head; fail "the tree read back differs"; }
}
s_rename() {
  mv $M/tree/a/small-1.txt $M/tree/a/renamed.txt
  mv $M/tree/a/b $M/tree/moved-b
  cold
  [ ! -e $M/tree/a/small-1.txt ] && [ ! -e $M/tree/a/b ] || fail "old names still there"
  eq "$(cat $M/tree/a/renamed.txt)" "file 1" "renamed file"
  eq "$(cat $M/tree/moved-b/c/deep.txt)" "deep" "file in a renamed directory"
}
s_remove() {
  rm $M/tree/a/small-2.txt
  rm -r $M/tree/empty
  cold
  [ ! -e $M/tree/a/small-2.txt ] && [ ! -e $M/tree/empty ] || fail "removed entries still there"
  eq "$(ls $M/tree/a | wc -l)" 99 "entries left in a/"
}
s_read_back() {
  cold
  eq "$(sha $M/tree/big.bin)" "$(sha /tmp/src/big.bin)" "big.bin after drop_caches"
}
s_kill9_restart() {
  dd if=/dev/urandom of=/tmp/held.src bs=1M count=8 2>&1
  info "held.bin sha256 $(sha /tmp/held.src)"
  cp /tmp/held.src $M/held.bin
  sync
  # the host answers on the second serial port once the new gateway serves SMB
  exec 6< /dev/ttyS1
  stty -F /dev/ttyS1 raw -echo
  host restart-gateway
  ack=$(timeout 60 head -n 1 <&6) || fail "no answer from the host on ttyS1"
  exec 6<&-
  case "$ack" in restarted*) info "host: $ack" ;; *) fail "host answered '$ack'" ;; esac
  # The client reconnects to the restarted gateway's smbd on its own.
  cold
  eq "$(sha $M/held.bin)" "$(sha /tmp/held.src)" "held.bin after the restart"
  printf 'after the restart\n' > $M/after.txt
  sync
  cold
  eq "$(cat $M/after.txt)" "after the restart" "a file written after the restart"
  eq "$(sha $M/tree/big.bin)" "$(sha /tmp/src/big.bin)" "big.bin after the restart"
}
s_umount() {
  umount $M
}

run mount s_mount
# Without the mount the other steps would only test the guest's own /mnt.
grep -q " $M cifs " /proc/mounts || ABORT=1
run copy-tree s_copy_tree
run rename s_rename
run remove s_remove
run read-back s_read_back
run kill9-restart s_kill9_restart
run umount s_umount
echo "BGTEST DONE"
dmesg | sed 's/^/BGDMESG /'
