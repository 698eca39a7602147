"""What the bucket checks of kernel-nfs.sh and kernel-cifs-bucket.py read: a local
store's bucket directory (each object a plain file under the root, its metadata in a
JSON sidecar under .bucketgate/meta/, as src/remote/local.rs writes them) and the
"BGTEST INFO <name> sha256 <hex>" lines a guest printed on its console."""

import hashlib
import json
import os
import re


class Bucket:
    def __init__(self, root, console):
        self.root = root
        self.info = {}
        for line in open(console, errors="replace"):
            m = re.match(r"BGTEST INFO (\S+) sha256 ([0-9a-f]{64})", line)
            if m:
                self.info[m.group(1)] = m.group(2)
        self.meta = {}
        for dp, _, fs in os.walk(os.path.join(root, ".bucketgate", "meta")):
            for f in fs:
                if f.endswith(".json"):
                    with open(os.path.join(dp, f)) as fh:
                        sc = json.load(fh)
                    self.meta[sc["key"]] = sc.get("meta")

    def path(self, key):
        return os.path.join(self.root, key)

    def exists(self, key):
        return os.path.lexists(self.path(key))

    def body(self, key):
        if not os.path.isfile(self.path(key)):
            return None
        with open(self.path(key), "rb") as fh:
            return fh.read()

    def sha(self, key):
        if not os.path.isfile(self.path(key)):
            return "no object"
        h = hashlib.sha256()
        with open(self.path(key), "rb") as fh:
            for b in iter(lambda: fh.read(1 << 20), b""):
                h.update(b)
        return h.hexdigest()


def check(name, ok, detail=""):
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f" ({detail})"))
