"""What the bucket must hold after kernel-cifs-guest.sh ran and the gateway flushed:
run by kernel-nfs.sh --bucket-check BUCKET CONSOLE. Prints PASS/FAIL lines."""

import os
import pwd
import sys

from bucket_dir import Bucket, check

b = Bucket(sys.argv[1], sys.argv[2])
for key, guest in (("tree/big.bin", "big.bin"), ("held.bin", "held.bin")):
    want, got = b.info.get(guest), b.sha(key)
    check(f"bucket:{key}-sha256", bool(want) and got == want, f"want {want}, got {got}")
small = sorted(os.listdir(b.path("tree/a"))) if os.path.isdir(b.path("tree/a")) else []
want = sorted([f"small-{i}.txt" for i in range(3, 101)] + ["renamed.txt"])
check("bucket:copied-renamed-removed", small == want, f"tree/a holds {len(small)} objects")
gone = [p for p in ("tree/a/small-1.txt", "tree/a/small-2.txt", "tree/a/b", "tree/empty") if b.exists(p)]
check("bucket:removed-and-renamed-away", not gone, f"still there: {gone}")
deep = b.body("tree/moved-b/c/deep.txt")
check("bucket:renamed-directory", deep == b"deep\n", f"tree/moved-b/c/deep.txt holds {deep!r}")
after = b.body("after.txt")
check("bucket:written-after-restart", after == b"after the restart\n", f"after.txt holds {after!r}")
uid = pwd.getpwnam("bgcifs").pw_uid
owners = {m["uid"] for k, m in b.meta.items() if m and k.startswith("tree/")}
check("bucket:owned-by-the-smb-user", owners == {uid}, f"owners {owners}, want {{{uid}}}")
