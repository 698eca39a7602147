#!/usr/bin/env bash
# Interop with an independent NFS client (Debian's libnfs-utils): copy a 64 MiB file
# in and out, list a directory of 5,000 entries, and check the objects reach the bucket.
# Usage: tests/interop/libnfs.sh path/to/bucketgate
set -euo pipefail
bin=$(realpath "$1")
work=$(mktemp -d)
gw_pid=
cleanup() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Port 111 as well (clients that are given no port ask the portmapper there), when we
# may bind it and no rpcbind holds it.
pm_111=no
if [ "$(id -u)" = 0 ] && python3 -c 'import socket
for t in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    socket.socket(socket.AF_INET, t).bind(("127.0.0.1", 111))' 2>/dev/null; then
  pm_111=yes
fi
cat > "$work/gw.toml" <<TOML
[nfs]
listen = "127.0.0.1:$port"
$([ "$pm_111" = yes ] && echo 'portmap_listen = "127.0.0.1:111"')
[admin]
listen = "127.0.0.1:$admin"
[cache]
dir = "$work/cache"
capacity = "4GiB"
upload_delay = "1s"
max_dirty_age = "10s"
[[share]]
name = "data"
url = "file://$work/bucket"
TOML
"$bin" check-config --config "$work/gw.toml"
RUST_LOG=warn "$bin" serve --config "$work/gw.toml" > "$work/gw.log" 2>&1 &
gw_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
url() { echo "nfs://127.0.0.1//data/$1?nfsport=$port&mountport=$port&version=3"; }
fail() { echo "FAIL: $*"; echo "--- gateway log"; tail -50 "$work/gw.log"; exit 1; }

echo "-- nfs-cp 64 MiB in and out"
head -c $((64 << 20)) /dev/urandom > "$work/in.bin"
nfs-cp "$work/in.bin" "$(url big.bin)" || fail "nfs-cp in"
nfs-cp "$(url big.bin)" "$work/out.bin" || fail "nfs-cp out"
want=$(sha256sum < "$work/in.bin"); got=$(sha256sum < "$work/out.bin")
[ "$want" = "$got" ] || fail "64 MiB copy differs"
echo "ok: checksums equal"

echo "-- nfs-cat"
printf 'hello from libnfs\n' > "$work/small.txt"
nfs-cp "$work/small.txt" "$(url small.txt)" || fail "nfs-cp small"
[ "$(nfs-cat "$(url small.txt)")" = "hello from libnfs" ] || fail "nfs-cat"
echo "ok: nfs-cat"

if [ "$pm_111" = yes ]; then
  echo "-- no ports in the URL: libnfs asks the portmapper on port 111"
  [ "$(nfs-cat "nfs://127.0.0.1//data/small.txt?version=3")" = "hello from libnfs" ] || fail "nfs-cat via port 111"
  echo "ok: found through port 111"
else
  echo "-- skipped: port 111 (not root, or taken by rpcbind)"
fi


echo "-- 5,000 entries, listed by nfs-ls"
: > "$work/empty"
nfs-cp "$work/empty" "$(url seed)" || fail "seed"
python3 - "$port" <<'PY' || fail "creating 5,000 entries"
# One nfs-cp per file would take minutes; a tiny NFSv3 client over one connection
# creates them instead (MOUNT + LOOKUP-free CREATEs against the root handle).
import socket, struct, sys, random
port = int(sys.argv[1])
def rpc(sock, prog, vers, proc, body, xid=[1]):
    xid[0] += 1
    cred = struct.pack(">IIII", 0, 0, 0, 0)  # stamp, empty machine name, uid 0, gid 0
    cred += struct.pack(">I", 0)             # no supplementary gids
    msg = struct.pack(">IIIIII", xid[0], 0, 2, prog, vers, proc)
    msg += struct.pack(">II", 1, len(cred)) + cred + struct.pack(">II", 0, 0) + body
    sock.sendall(struct.pack(">I", 0x80000000 | len(msg)) + msg)
    def read(n):
        b = b""
        while len(b) < n:
            c = sock.recv(n - len(b))
            if not c: raise SystemExit("connection closed")
            b += c
        return b
    hdr = struct.unpack(">I", read(4))[0]
    rep = read(hdr & 0x7fffffff)
    # xid, REPLY, MSG_ACCEPTED, verifier (flavor, empty body), accept_stat, results
    stat = struct.unpack(">I", rep[20:24])[0]
    return stat, rep[24:]
def opaque(b): return struct.pack(">I", len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)
s = socket.create_connection(("127.0.0.1", port))
st, res = rpc(s, 100005, 3, 1, opaque(b"/data"))
assert st == 0, f"rpc status {st}"
(mst,) = struct.unpack(">I", res[:4]); assert mst == 0, f"mount status {mst}"
(fhlen,) = struct.unpack(">I", res[4:8]); root = res[8:8 + fhlen]
st, res = rpc(s, 100003, 3, 9, opaque(root) + opaque(b"many") + struct.pack(">IIIIIII", 1, 0o755, 0, 0, 0, 0, 0))
assert st == 0, f"mkdir rpc status {st}"
(nst,) = struct.unpack(">I", res[:4]); assert nst == 0, f"mkdir status {nst}"
assert struct.unpack(">I", res[4:8])[0] == 1
(dlen,) = struct.unpack(">I", res[8:12]); d = res[12:12 + dlen]
for i in range(5000):
    name = f"entry-{i:05d}".encode()
    sattr = struct.pack(">IIIIIII", 1, 0o644, 0, 0, 0, 0, 0)
    st, res = rpc(s, 100003, 3, 8, opaque(d) + opaque(name) + struct.pack(">I", 0) + sattr)
    assert st == 0 and struct.unpack(">I", res[:4])[0] == 0, f"create {name} failed"
PY
nfs-ls "$(url many)" > "$work/ls.txt" || fail "nfs-ls"
count=$(grep -c 'entry-' "$work/ls.txt" || true)
uniq_count=$(grep -o 'entry-[0-9]*' "$work/ls.txt" | sort -u | wc -l)
if [ "$count" != 5000 ] || [ "$uniq_count" != 5000 ]; then
  fail "nfs-ls listed $count entries ($uniq_count distinct), want 5000"
fi
echo "ok: 5000 entries, each once"

echo "-- flush to the bucket and compare"
"$bin" flush --wait --admin "127.0.0.1:$admin" || fail "flush --wait"
cmp "$work/in.bin" "$work/bucket/big.bin" || fail "bucket object differs from the file written"
[ -f "$work/bucket/many/entry-04999" ] || fail "entry-04999 not in the bucket"
echo "ok: objects in the bucket"
echo "libnfs interop: all checks passed"
