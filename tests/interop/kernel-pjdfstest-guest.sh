#!/usr/bin/dash
# Runs in the guest for kernel-pjdfstest.sh: mounts the share as the README says for
# Linux and runs pjdfstest in it as root (the share does not squash root here), each
# result line sent to the serial console as "BGPJD <line>". Not meant to run anywhere
# else.
PORT=$(sed -n 's/.*bgport=\([0-9]*\).*/\1/p' /proc/cmdline)
M=/mnt
echo "BGTEST START mount"
mkdir -p $M
if mount -t nfs -o "vers=3,proto=tcp,port=$PORT,mountport=$PORT,nolock" 10.0.2.2:/data $M; then
  echo "BGTEST PASS mount"
else
  echo "BGTEST FAIL mount"
  echo "BGTEST DONE"
  exit 0
fi
mkdir -p $M/pjd
# The suite's users (nobody, tests) make their own files in the test directory.
chmod 0777 $M/pjd
echo "BGTEST START pjdfstest"
t0=$(date +%s)
/usr/bin/pjdfstest -c /pjdfstest.toml -p $M/pjd > /tmp/pjd.out 2>&1
rc=$?
sed 's/^/BGPJD /' /tmp/pjd.out
if grep -q '^Summary:' /tmp/pjd.out; then
  echo "BGTEST PASS pjdfstest (exit $rc, $(( $(date +%s) - t0 ))s)"
else
  echo "BGTEST FAIL pjdfstest (no summary, exit $rc)"
fi
cd /
umount $M || echo "BGTEST FAIL umount"
echo "BGTEST DONE"
