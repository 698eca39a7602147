#!/usr/bin/dash
# Runs in the guest (dash, not busybox sh: busybox runs its own applets before the GNU
# tools in PATH). Every step prints "BGTEST PASS|FAIL <step> (<seconds>)"; a failing
# step prints its output and the kernel's last messages. A step that hangs past
# STEP_TIMEOUT is killed and reported, and the remaining steps are skipped.
# Copied into the VM's initramfs by kernel-nfs.sh, which reads the results off the
# serial console; it is not meant to run anywhere else.
#
# ls | grep is on purpose: what ls prints over NFS is under test. "A && B || fail" is
# on purpose too: fail when either check is false.
# shellcheck disable=SC2010,SC2012,SC2015
# shellcheck source=tests/interop/kernel-guest-lib.sh
. /guest-lib.sh
PORT=$(arg bgport)
OPTS="vers=3,proto=tcp,port=$PORT,mountport=$PORT,nolock"
M=/mnt
# must_fail 'text|other text' CMD...: CMD must fail with a message holding one of them
must_fail() {
  want=$1; shift
  if out=$("$@" 2>&1); then fail "'$*' succeeded, want an error ($want)"; fi
  rest=$want
  while :; do
    w=${rest%%|*}
    case "$out" in *"$w"*) info "refused as expected: $out"; return 0 ;; esac
    [ "$rest" = "$w" ] && break
    rest=${rest#*|}
  done
  fail "'$*': got '$out', want '$want'"
}


s_mount() {
  mkdir -p $M
  mount -t nfs -o "$OPTS" 10.0.2.2:/data $M
  line=$(grep " $M nfs " /proc/mounts)
  info "mounted: $line"
  case "$line" in *vers=3*) ;; *) fail "not NFSv3" ;; esac
  case "$line" in *proto=tcp*) ;; *) fail "not TCP" ;; esac
}
s_df() { df -k $M; df -i $M; }
s_write_big() {
  dd if=/dev/urandom of=/tmp/big.src bs=1M count=24 2>&1
  sha /tmp/big.src > /tmp/big.sha
  dd if=/tmp/big.src of=$M/big.bin bs=1M 2>&1
  sync
  eq "$(stat -c %s $M/big.bin)" 25165824 "size of big.bin"
  eq "$(sha $M/big.bin)" "$(cat /tmp/big.sha)" "sha256 from the page cache"
}
s_read_big_cold() {
  cold
  eq "$(sha $M/big.bin)" "$(cat /tmp/big.sha)" "sha256 read back after drop_caches"
}
s_overwrite_middle() {
  # 1 MiB of zeros at offset 3 MiB, in place (conv=notrunc), then compare cold
  dd if=/dev/zero of=$M/big.bin bs=1M seek=3 count=1 conv=notrunc,fsync 2>&1
  dd if=/dev/zero of=/tmp/big.src bs=1M seek=3 count=1 conv=notrunc 2>&1
  sha /tmp/big.src > /tmp/big.sha
  cold
  eq "$(stat -c %s $M/big.bin)" 25165824 "size after in-place write"
  eq "$(sha $M/big.bin)" "$(cat /tmp/big.sha)" "sha256 after in-place write"
}
s_direct_io() {
  mkdir -p $M/t
  dd if=/tmp/big.src of=$M/t/direct.bin bs=64k count=40 oflag=direct 2>&1
  dd if=/tmp/big.src of=/tmp/direct.want bs=64k count=40 2>/dev/null
  dd if=$M/t/direct.bin of=/tmp/direct.got bs=64k iflag=direct 2>&1
  cmp /tmp/direct.want /tmp/direct.got || fail "O_DIRECT read back differs"
  # an unaligned O_DIRECT tail: 1000 bytes at offset 2621440 (end of file)
  head -c 1000 /tmp/big.src | dd of=$M/t/direct.bin bs=1000 seek=2621 oflag=direct,seek_bytes conv=notrunc 2>&1 || true
}
s_mkdir() {
  mkdir -p $M/t
  mkdir $M/t/d1 $M/t/d1/sub
  mkdir -p $M/t/deep/a/b/c
  [ -d $M/t/d1/sub ] && [ -d $M/t/deep/a/b/c ] || fail "directories missing"
  must_fail "File exists" mkdir $M/t/d1
}
s_mv() {
  printf 'moving\n' > $M/t/d1/m.txt
  mv $M/t/d1/m.txt $M/t/d1/m2.txt
  [ ! -e $M/t/d1/m.txt ] && [ "$(cat $M/t/d1/m2.txt)" = moving ] || fail "rename in a directory"
  mv $M/t/d1/m2.txt $M/t/deep/a/m3.txt
  [ "$(cat $M/t/deep/a/m3.txt)" = moving ] || fail "rename across directories"
  printf 'old\n' > $M/t/over.txt; printf 'new\n' > $M/t/src.txt
  mv -f $M/t/src.txt $M/t/over.txt
  eq "$(cat $M/t/over.txt)" new "rename over an existing file"
  mv $M/t/d1 $M/t/d2
  [ -d $M/t/d2/sub ] && [ ! -e $M/t/d1 ] || fail "directory rename"
  must_fail "subdirectory of itself|Invalid argument" mv $M/t/d2 $M/t/d2/sub/inside
  mkdir $M/t/full; : > $M/t/full/x; mkdir $M/t/empty
  must_fail "not empty|File exists" mv -T $M/t/empty $M/t/full
  rmdir $M/t/empty
  cold
  ls -la $M/t $M/t/d2 $M/t/deep/a
  [ -d $M/t/d2/sub ] && [ "$(cat $M/t/deep/a/m3.txt)" = moving ] || fail "renames lost after drop_caches"
}
s_rm() {
  printf 'bye\n' > $M/t/gone.txt
  rm $M/t/gone.txt
  [ ! -e $M/t/gone.txt ] || fail "removed file still there"
  rmdir $M/t/deep/a/b/c
  [ ! -e $M/t/deep/a/b/c ] || fail "removed directory still there"
  must_fail "not empty" rmdir $M/t/deep/a
  mkdir -p $M/t/tree/x/y; printf 1 > $M/t/tree/x/y/f; printf 2 > $M/t/tree/x/g
  rm -rf $M/t/tree
  [ ! -e $M/t/tree ] || fail "rm -rf left the tree"
  cold
  if ls $M/t | grep -qx gone.txt; then fail "gone.txt listed after drop_caches"; fi
}
s_names() {
  long=$(printf '%0255d' 0 | tr 0 n)
  printf 'long\n' > "$M/t/$long"
  eq "$(cat "$M/t/$long")" long "255-byte name"
  must_fail "File name too long" touch "$M/t/${long}x"
  printf 'sp\n' > "$M/t/with space"
  printf 'u\n' > "$M/t/été-€-名前"
  printf 'd\n' > "$M/t/-dash"
  cold
  ls $M/t > /tmp/names.txt
  grep -qx "$long" /tmp/names.txt && grep -qx "with space" /tmp/names.txt \
    && grep -qx "été-€-名前" /tmp/names.txt && grep -qx -- "-dash" /tmp/names.txt || { cat /tmp/names.txt; fail "names missing from the listing"; }
  eq "$(cat "$M/t/été-€-名前")" u "utf-8 name"
}
s_many() {
  mkdir $M/many
  i=1
  while [ $i -le 500 ]; do : > $M/many/file-$i-with-a-rather-long-name-to-fill-readdir-replies-quickly-0123456789; i=$((i + 1)); done
  n=$(ls -l $M/many | grep -c ' file-')
  eq "$n" 500 "entries in ls -l (warm)"
}
s_many_cold() {
  cold
  ls -l $M/many > /tmp/many.txt
  eq "$(grep -c ' file-' /tmp/many.txt)" 500 "entries in ls -l after drop_caches"
  eq "$(ls $M/many | sort | uniq | wc -l)" 500 "distinct names"
  cold
  eq "$(ls -f $M/many | grep -c '^file-')" 500 "entries in an unsorted listing"
  head -n 3 /tmp/many.txt
}
s_rm_rf_500() {
  mkdir $M/t/doomed
  i=1
  while [ $i -le 500 ]; do : > $M/t/doomed/victim-$i-padding-padding-padding-padding; i=$((i + 1)); done
  mv $M/t/doomed $M/t/doomed2
  cold
  rm -rf $M/t/doomed2
  [ ! -e $M/t/doomed2 ] || fail "rm -rf of 500 entries left the directory"
}
s_symlink() {
  ln -s ../big.bin $M/t/link
  ln -s /no/such/target $M/t/dangling
  target=$(printf '%01000d' 0 | tr 0 L)
  ln -s "$target" $M/t/longlink
  eq "$(readlink $M/t/link)" ../big.bin "readlink"
  eq "$(stat -c %F $M/t/link)" "symbolic link" "type"
  cold
  eq "$(readlink $M/t/link)" ../big.bin "readlink after drop_caches"
  eq "$(readlink $M/t/dangling)" /no/such/target "readlink of a dangling link"
  eq "$(readlink $M/t/longlink)" "$target" "readlink of a 1000-byte target"
  eq "$(sha $M/t/link)" "$(cat /tmp/big.sha)" "reading through the link"
}
s_chmod_chown() {
  printf 'attributes\n' > $M/t/attrs.txt
  chmod 0640 $M/t/attrs.txt
  chown 1234:5678 $M/t/attrs.txt
  eq "$(stat -c '%a %u %g' $M/t/attrs.txt)" "640 1234 5678" "mode/owner (warm)"
  chmod 0751 $M/t/d2
  chmod 4755 $M/t/over.txt
  eq "$(stat -c '%a' $M/t/over.txt)" 4755 "setuid bit"
  chgrp 42 $M/t/over.txt
  chown 77 $M/t/over.txt
  cold
  eq "$(stat -c '%a %u %g' $M/t/attrs.txt)" "640 1234 5678" "mode/owner after drop_caches"
  eq "$(stat -c '%a' $M/t/d2)" 751 "directory mode"
  # chown by root clears setuid on Linux servers; either answer is allowed here
  eq "$(stat -c '%u %g' $M/t/over.txt)" "77 42" "chgrp then chown"
  info "over.txt after chown: mode $(stat -c %a $M/t/over.txt)"
  stat $M/t/attrs.txt
}
s_permissions() {
  mkdir $M/t/perm; chmod 0777 $M/t/perm
  printf 'root only\n' > $M/t/perm/rootfile; chmod 0644 $M/t/perm/rootfile
  as() { setpriv --reuid 1000 --regid 1000 --clear-groups -- "$@"; }
  must_fail "Permission denied" as dash -c "echo x >> $M/t/perm/rootfile"
  eq "$(as cat $M/t/perm/rootfile)" "root only" "reading a 0644 file as uid 1000"
  as dash -c "printf mine > $M/t/perm/userfile"
  eq "$(stat -c '%u %g' $M/t/perm/userfile)" "1000 1000" "owner of a file created by uid 1000"
  chmod 0700 $M/t/perm/userfile; chown 0:0 $M/t/perm/userfile
  cold
  must_fail "Permission denied" as cat $M/t/perm/userfile
  must_fail "Operation not permitted" as chown 1000 $M/t/perm/rootfile
}
# Objects another writer left in the bucket (seeded by kernel-nfs.sh): the owner and
# mode READDIRPLUS shows are the objects' own, and they decide what uid 2000 may do.
s_listed_objects() {
  # shellcheck disable=SC2317 # called through must_fail
  as2() { setpriv --reuid 2000 --regid 2000 --clear-groups -- "$@"; }
  cold
  ls -l $M/home
  eq "$(stat -c '%u %g %a' $M/home/secret)" "1000 1000 600" "home/secret as listed"
  eq "$(stat -c '%u %a' $M/home2)" "1000 700" "home2 from its marker"
  must_fail "Permission denied" as2 cat $M/home/secret
  must_fail "Permission denied" as2 dash -c "echo x > $M/home/secret"
  must_fail "Permission denied" as2 ls $M/home2
  eq "$(cat $M/home/secret)" "top secret" "root still reads it"
}
s_touch_d() {
  touch -d '2001-02-03 04:05:06 UTC' $M/t/attrs.txt
  touch -m -d '1999-12-31 23:59:59.5 UTC' $M/t/d2
  touch -a -d '2002-01-01 00:00:00 UTC' $M/t/over.txt
  cold
  eq "$(stat -c %Y $M/t/attrs.txt)" 981173106 "mtime of a file"
  eq "$(stat -c %y $M/t/d2)" "1999-12-31 23:59:59.500000000 +0000" "mtime of a directory (ns)"
  eq "$(stat -c %X $M/t/over.txt)" 1009843200 "atime"
  touch $M/t/new-by-touch
  [ -f $M/t/new-by-touch ] || fail "touch did not create"
  eq "$(stat -c '%a %u %g' $M/t/attrs.txt)" "640 1234 5678" "mode/owner kept by touch"
}
s_exclusive_create() {
  # mktemp opens with O_CREAT|O_EXCL: the kernel sends CREATE EXCLUSIVE (a verifier the
  # server may keep in atime/mtime), then a SETATTR for the mode and the times.
  f=$(mktemp $M/t/excl.XXXXXX)
  t=$(date +%s)
  eq "$(stat -c %a "$f")" 600 "mode of an O_EXCL file"
  printf 'exclusive\n' > "$f"
  cold
  eq "$(stat -c '%a %s' "$f")" "600 10" "mode/size after drop_caches"
  for x in X Y; do
    v=$(stat -c %$x "$f")
    [ $((v - t)) -le 120 ] && [ $((t - v)) -le 120 ] || fail "time %$x of an O_EXCL file is $v, now is $t (the create verifier kept as a time?)"
  done
  must_fail "File exists" dash -c "set -C; echo again > $f"
  mv "$f" $M/t/excl.txt
}
s_timestamps() {
  # the client revalidates its caches by mtime/ctime: the server must move them
  d=$M/t/ts
  mkdir $d; printf a > $d/f
  sleep 1.1
  dm0=$(stat -c %Y $d); fm0=$(stat -c %Y $d/f); fc0=$(stat -c %Z $d/f)
  sleep 1.1; printf b >> $d/f; cold
  fm1=$(stat -c %Y $d/f); fc1=$(stat -c %Z $d/f)
  [ "$fm1" -gt "$fm0" ] || fail "file mtime did not advance on a write ($fm0 -> $fm1)"
  [ "$fc1" -gt "$fc0" ] || fail "file ctime did not advance on a write ($fc0 -> $fc1)"
  sleep 1.1; chmod 600 $d/f; cold
  fc2=$(stat -c %Z $d/f)
  [ "$fc2" -gt "$fc1" ] || fail "file ctime did not advance on chmod ($fc1 -> $fc2)"
  eq "$(stat -c %Y $d/f)" "$fm1" "file mtime after chmod"
  sleep 1.1; : > $d/g; cold
  dm1=$(stat -c %Y $d)
  [ "$dm1" -gt "$dm0" ] || fail "directory mtime did not advance on create ($dm0 -> $dm1)"
  sleep 1.1; rm $d/g; cold
  dm2=$(stat -c %Y $d)
  [ "$dm2" -gt "$dm1" ] || fail "directory mtime did not advance on remove ($dm1 -> $dm2)"
  sleep 1.1; mv $d/f $d/h; cold
  dm3=$(stat -c %Y $d)
  [ "$dm3" -gt "$dm2" ] || fail "directory mtime did not advance on rename ($dm2 -> $dm3)"
  touch -d '2001-01-01 UTC' $d/h; touch $d/h; cold
  t=$(date +%s); v=$(stat -c %Y $d/h)
  [ $((t - v)) -le 120 ] && [ $((v - t)) -le 120 ] || fail "touch (server time) set mtime $v, now is $t"
}
s_two_clients() {
  # a second, separate client cache on the same export (nosharecache) with attribute
  # caching off, READDIR instead of READDIRPLUS and 64 KiB transfers: what one
  # mount changes the other must see at its next open/stat/listing
  mkdir -p /mnt2
  mount -t nfs -o "$OPTS,nosharecache,noac,nordirplus,rsize=65536,wsize=65536" 10.0.2.2:/data /mnt2
  B=/mnt2
  mkdir $M/t/co
  printf 'aaaa' > $M/t/co/f
  eq "$(cat $B/t/co/f)" aaaa "B reads A's new file"
  printf 'bbbb' > $M/t/co/f
  eq "$(cat $B/t/co/f)" bbbb "B reads A's same-size overwrite in the same second"
  dd if=/dev/zero bs=2 count=1 seek=1 conv=notrunc of=$M/t/co/f 2>/dev/null
  eq "$(od -An -tx1 $B/t/co/f | tr -d ' ')" 62620000 "B reads A's in-place write"
  : > $M/t/co/new
  ls $B/t/co | grep -qx new || fail "B does not list A's new file"
  mv $M/t/co/f $M/t/co/g
  [ ! -e $B/t/co/f ] || fail "B still sees the old name"
  eq "$(od -An -tx1 $B/t/co/g | tr -d ' ')" 62620000 "B reads the renamed file"
  chmod 0604 $M/t/co/g
  eq "$(stat -c %a $B/t/co/g)" 604 "B sees A's chmod"
  truncate -s 1 $M/t/co/g
  eq "$(cat $B/t/co/g)" b "B sees A's truncate"
  printf 'from B\n' > $B/t/co/fromb
  eq "$(cat $M/t/co/fromb)" "from B" "A reads B's new file"
  rm $M/t/co/g
  if out=$(stat $B/t/co/g 2>&1); then fail "B still sees a removed file"; fi
  case "$out" in *"No such file"*) ;; *) fail "stat of a removed file on B: $out" ;; esac
  # 3 MiB through B's small, synchronous (noac) writes; A reads it cold
  dd if=/tmp/big.src of=$B/t/co/small-io.bin bs=1M count=3 2>&1
  cold
  head -c 3145728 /tmp/big.src > /tmp/smallio.want
  cmp /tmp/smallio.want $M/t/co/small-io.bin || fail "A reads B's 3 MiB differently"
  eq "$(ls -l $B/many | grep -c ' file-')" 500 "500 entries listed with READDIR (nordirplus)"
  umount /mnt2
}
s_truncate() {
  head -c 100000 /tmp/big.src > $M/t/trunc.bin
  truncate -s 1000 $M/t/trunc.bin
  eq "$(stat -c %s $M/t/trunc.bin)" 1000 "size after shrinking"
  truncate -s 5000 $M/t/trunc.bin
  cold
  head -c 1000 /tmp/big.src > /tmp/want.bin
  head -c 4000 /dev/zero >> /tmp/want.bin
  cmp /tmp/want.bin $M/t/trunc.bin || fail "content after shrink + grow"
  : > $M/t/trunc.bin
  eq "$(stat -c %s $M/t/trunc.bin)" 0 "size after O_TRUNC"
}
s_sparse() {
  # 4 KiB of data at 40 MiB: a hole the server must read back as zeros
  head -c 4096 /tmp/big.src > /tmp/blk
  dd if=/tmp/blk of=$M/t/sparse.bin bs=4096 seek=10240 2>&1
  dd if=/tmp/blk of=/tmp/sparse.want bs=4096 seek=10240 2>/dev/null
  cold
  eq "$(stat -c %s $M/t/sparse.bin)" 41947136 "size of the sparse file"
  eq "$(sha $M/t/sparse.bin)" "$(sha /tmp/sparse.want)" "sparse file content"
  info "t/sparse.bin sha256 $(sha /tmp/sparse.want)"
}
s_append() {
  printf 'line 1\n' > $M/t/log.txt
  # one open(O_APPEND) per line, on purpose
  # shellcheck disable=SC2129
  printf 'line 2\n' >> $M/t/log.txt
  dd if=/tmp/big.src bs=4096 count=100 2>/dev/null >> $M/t/log.txt
  printf 'line 3\n' >> $M/t/log.txt
  { printf 'line 1\nline 2\n'; head -c 409600 /tmp/big.src; printf 'line 3\n'; } > /tmp/log.want
  cold
  cmp /tmp/log.want $M/t/log.txt || fail "appended content"
}
s_concurrent() {
  dd if=/tmp/big.src of=$M/t/c1.bin bs=256k count=32 2>/dev/null &
  p1=$!
  dd if=/tmp/big.src of=$M/t/c2.bin bs=1M skip=8 count=8 2>/dev/null &
  p2=$!
  wait $p1 || fail "writer 1"
  wait $p2 || fail "writer 2"
  dd if=/tmp/big.src of=/tmp/c1.want bs=256k count=32 2>/dev/null
  dd if=/tmp/big.src of=/tmp/c2.want bs=1M skip=8 count=8 2>/dev/null
  cold
  cmp /tmp/c1.want $M/t/c1.bin || fail "c1.bin"
  cmp /tmp/c2.want $M/t/c2.bin || fail "c2.bin"
}
s_open_unlinked() {
  # removing an open file: the kernel "silly-renames" it to .nfsXXXX and removes that
  # at the last close
  printf 'still readable\n' > $M/t/open.txt
  exec 3< $M/t/open.txt
  rm $M/t/open.txt
  [ ! -e $M/t/open.txt ] || fail "removed open file still visible"
  ls -a $M/t | grep '^\.nfs' || true
  eq "$(cat <&3)" "still readable" "reading the removed open file"
  exec 3<&-
  # renaming over an open file: the target is silly-renamed as well
  printf 'old target\n' > $M/t/target.txt; printf 'replacement\n' > $M/t/repl.txt
  exec 3< $M/t/target.txt
  mv $M/t/repl.txt $M/t/target.txt
  eq "$(cat $M/t/target.txt)" replacement "new content under the name"
  eq "$(cat <&3)" "old target" "old content through the open descriptor"
  exec 3<&-
  sleep 1
  left=$(ls -a $M/t | grep '^\.nfs' || true)
  [ -z "$left" ] || fail "silly-renamed file left after close: $left"
}
s_unsupported() {
  printf 'x\n' > $M/t/hl-src
  must_fail "Operation not permitted" ln $M/t/hl-src $M/t/hardlink
  [ ! -e $M/t/hardlink ] || fail "a hard link appeared"
  # A FIFO is kept (a zero-byte object carrying its type; the host checks it).
  mkfifo -m 0640 $M/t/fifo
  eq "$(stat -c '%F %a %s' $M/t/fifo)" "fifo 640 0" "a FIFO made over NFS"
  eq "$(cat $M/t/hl-src)" x "mount still works"
}
s_gateway_restart() {
  # The host kills the gateway with SIGKILL and starts it again while this mount is
  # live: a file is being written, another is open with dirty pages, a third is open
  # for reading. Handles must stay valid and no byte may be lost.
  echo 50 > /proc/sys/vm/dirty_expire_centisecs
  echo 20 > /proc/sys/vm/dirty_writeback_centisecs
  exec 4> $M/t/held.bin
  dd if=/tmp/big.src bs=1M count=6 2>/dev/null >&4
  exec 5< $M/big.bin
  # the host answers on the second serial port once the new gateway listens
  exec 6< /dev/ttyS1
  stty -F /dev/ttyS1 raw -echo
  sleep 1
  # a writer that keeps going until told to stop: 1 MiB at a time (each dd's close sends
  # WRITEs and a COMMIT), over and over the same 24 MiB, so calls are in flight when
  # the gateway dies and the final content is known
  rm -f /tmp/stop
  (
    i=0
    while :; do
      dd if=/tmp/big.src of=$M/t/during.bin bs=1M skip=$i seek=$i count=1 conv=notrunc 2>/dev/null || exit 1
      i=$(( (i + 1) % 24 ))
      if [ $i = 0 ] && [ -e /tmp/stop ]; then exit 0; fi
    done
  ) &
  writer=$!
  sleep 1
  host restart-gateway
  ack=$(timeout 60 head -n 1 <&6) || fail "no answer from the host on ttyS1"
  exec 6<&-
  case "$ack" in restarted*) info "host: $ack" ;; *) fail "host answered '$ack'" ;; esac
  dd if=/tmp/big.src bs=1M skip=6 count=6 2>/dev/null >&4
  exec 4>&-
  touch /tmp/stop
  wait $writer || fail "the writer across the restart failed"
  cold
  eq "$(sha256sum <&5 | cut -d' ' -f1)" "$(cat /tmp/big.sha)" "big.bin through a descriptor opened before the restart"
  exec 5<&-
  head -c 12582912 /tmp/big.src > /tmp/held.want
  cmp /tmp/held.want $M/t/held.bin || fail "held.bin (dirty pages across the restart)"
  cmp /tmp/big.src $M/t/during.bin || fail "during.bin (written across the restart)"
  mkdir $M/t/d2/after-restart
  printf 'after\n' > $M/t/d2/after-restart/f
  eq "$(stat -c '%a %u %g %Y' $M/t/attrs.txt)" "640 1234 5678 981173106" "attrs.txt after the restart"
  echo 3000 > /proc/sys/vm/dirty_expire_centisecs
  echo 500 > /proc/sys/vm/dirty_writeback_centisecs
}
s_sync() {
  sync
  sync -f $M/big.bin
}
s_umount() {
  umount $M
  if grep -q " $M nfs " /proc/mounts; then fail "still mounted"; fi
}
s_remount_verify() {
  cold
  mount -t nfs -o "$OPTS" 10.0.2.2:/data $M
  eq "$(sha $M/big.bin)" "$(cat /tmp/big.sha)" "big.bin after remount"
  eq "$(stat -c '%a %u %g %Y' $M/t/attrs.txt)" "640 1234 5678 981173106" "attrs.txt after remount"
  eq "$(readlink $M/t/link)" ../big.bin "link after remount"
  eq "$(ls $M/many | wc -l)" 500 "many/ after remount"
  eq "$(cat $M/t/deep/a/m3.txt)" moving "m3.txt after remount"
  cmp /tmp/log.want $M/t/log.txt || fail "log.txt after remount"
  cmp /tmp/big.src $M/t/during.bin || fail "during.bin after remount"
  ls -la $M $M/t
  umount $M
}

info "gateway port $PORT"
run mount s_mount
run df s_df
run write-24MiB-dd s_write_big
run read-back-after-drop-caches s_read_big_cold
run overwrite-in-place s_overwrite_middle
run o-direct s_direct_io
run mkdir s_mkdir
run mv s_mv
run rm s_rm
run names s_names
run create-500-files s_many
run ls-l-500-files-cold s_many_cold
run rm-rf-500-files s_rm_rf_500
run symlink-readlink s_symlink
run chmod-chown-stat s_chmod_chown
run permissions-as-uid-1000 s_permissions
run listed-objects-keep-their-owner s_listed_objects
run touch-d s_touch_d
run exclusive-create s_exclusive_create
run timestamps-advance s_timestamps
run two-mounts-coherence s_two_clients
run truncate s_truncate
run sparse-file s_sparse
run append s_append
run concurrent-writers s_concurrent
run open-unlinked-file s_open_unlinked
run hardlink-refused-fifo-kept s_unsupported
run gateway-kill9-restart s_gateway_restart
run sync s_sync
run umount s_umount
run remount-and-verify s_remount_verify
[ -e /tmp/big.sha ] && info "big.bin sha256 $(cat /tmp/big.sha)"
[ -e /tmp/log.want ] && info "t/log.txt sha256 $(sha /tmp/log.want)"
info "guest uptime $(cut -d' ' -f1 /proc/uptime)s"
dmesg | sed 's/^/BGDMESG /'
echo "BGTEST DONE"
