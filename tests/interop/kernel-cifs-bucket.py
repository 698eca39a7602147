"""What the bucket must hold after kernel-cifs-guest.sh ran and the gateway flushed:
run by kernel-nfs.sh --bucket-check BUCKET CONSOLE. Prints PASS/FAIL lines. The local
store keeps each object as a plain file under BUCKET, its metadata in a JSON sidecar
under BUCKET/.bucketgate/meta/ (src/remote/local.rs)."""

import hashlib
import json
import os
import pwd
import re
import sys

root, console = sys.argv[1], sys.argv[2]
info = {}
for line in open(console, errors="replace"):
    m = re.match(r"BGTEST INFO (\S+) sha256 ([0-9a-f]{64})", line)
    if m:
        info[m.group(1)] = m.group(2)
meta = {}
for dp, _, fs in os.walk(os.path.join(root, ".bucketgate", "meta")):
    for f in fs:
        if f.endswith(".json"):
            with open(os.path.join(dp, f)) as fh:
                sc = json.load(fh)
            meta[sc["key"]] = sc.get("meta")


def path(p):
    return os.path.join(root, p)


def sha(p):
    if not os.path.isfile(path(p)):
        return "no object"
    with open(path(p), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f" ({detail})"))


for key, guest in (("tree/big.bin", "big.bin"), ("held.bin", "held.bin")):
    check(f"bucket:{key}-sha256", bool(info.get(guest)) and sha(key) == info.get(guest),
          f"want {info.get(guest)}, got {sha(key)}")
small = sorted(f for f in os.listdir(path("tree/a"))) if os.path.isdir(path("tree/a")) else []
want = sorted([f"small-{i}.txt" for i in range(3, 101)] + ["renamed.txt"])
check("bucket:copied-renamed-removed", small == want, f"tree/a holds {len(small)} objects")
gone = [p for p in ("tree/a/small-1.txt", "tree/a/small-2.txt", "tree/a/b", "tree/empty") if os.path.lexists(path(p))]
check("bucket:removed-and-renamed-away", not gone, f"still there: {gone}")
deep = open(path("tree/moved-b/c/deep.txt"), "rb").read() if os.path.isfile(path("tree/moved-b/c/deep.txt")) else None
check("bucket:renamed-directory", deep == b"deep\n", f"tree/moved-b/c/deep.txt holds {deep!r}")
after = open(path("after.txt"), "rb").read() if os.path.isfile(path("after.txt")) else None
check("bucket:written-after-restart", after == b"after the restart\n", f"after.txt holds {after!r}")
uid = pwd.getpwnam("bgcifs").pw_uid
owners = {m["uid"] for k, m in meta.items() if m and k.startswith("tree/")}
check("bucket:owned-by-the-smb-user", owners == {uid}, f"owners {owners}, want {{{uid}}}")
