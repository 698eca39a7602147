# shellcheck shell=dash
# Shared by the guests of kernel-nfs.sh (kernel-nfs-guest.sh, kernel-cifs-guest.sh):
# kernel-nfs.sh puts it in the VM as /guest-lib.sh, and they source it. Every step
# run by `run` prints "BGTEST PASS|FAIL <step> (<seconds>)"; a failing step prints its
# output and the kernel's last messages. A step that hangs past STEP_TIMEOUT is killed
# and reported, and the remaining steps are skipped.

# arg NAME: the value of NAME= on the kernel command line (kernel-nfs.sh sets them).
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
STEP_TIMEOUT=$(arg bgsteptimeout)
STEP_TIMEOUT=${STEP_TIMEOUT:-180}
ABORT=
now() { date +%s.%N; }
fail() { printf '%s\n' "$*" >&2; exit 1; }
eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }
info() { printf 'BGTEST INFO %s\n' "$*" > /dev/console; }
host() { echo "BGTEST HOST $*" > /dev/console; }
cold() { echo 3 > /proc/sys/vm/drop_caches; }
sha() { sha256sum < "$1" | cut -d' ' -f1; }

# run NAME FUNCTION: one step, in a subshell with `set -e`.
run() {
  name=$1; fn=$2
  if [ -n "$ABORT" ]; then echo "BGTEST SKIP $name"; return; fi
  echo "BGTEST START $name"
  t0=$(now)
  rm -f /tmp/step.timeout
  ( set -e; $fn ) > /tmp/step.out 2>&1 &
  pid=$!
  ( sleep "$STEP_TIMEOUT"; echo x > /tmp/step.timeout; kill -9 "$pid" ) 2>/dev/null &
  wd=$!
  wait "$pid"; rc=$?
  kill "$wd" 2>/dev/null; wait "$wd" 2>/dev/null
  dt=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
  if [ -e /tmp/step.timeout ]; then
    echo "BGTEST FAIL $name (hung: killed after ${STEP_TIMEOUT}s; remaining steps skipped)"
    ABORT=1
  elif [ "$rc" = 0 ]; then
    echo "BGTEST PASS $name (${dt}s)"
  else
    echo "BGTEST FAIL $name (exit $rc, ${dt}s)"
  fi
  if [ -e /tmp/step.timeout ] || [ "$rc" != 0 ]; then
    tail -n 40 /tmp/step.out | sed 's/^/BGTEST   | /'
    dmesg | tail -n 25 | sed 's/^/BGTEST   dmesg| /'
  fi
}
