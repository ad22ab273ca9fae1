"""Drive one storage operation in its own process (memory and kill tests).

    python -m tests.harness.storage_probe put URL KEY MEGABYTES [--slow]
    python -m tests.harness.storage_probe get URL KEY

Prints one JSON line: sha256, size and the process's peak RSS in MiB.
``--slow`` sleeps between chunks so a test can kill the process mid-put;
it prints ``started`` on stderr once the first chunk has been handed over.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from p88backup.storage import open_storage


class RandomSource:
    def __init__(self, total: int, slow: bool) -> None:
        self.left, self.slow, self.sha, self.size = total, slow, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, 1 << 20 if n < 0 else n)
        if n <= 0:
            return b""
        data = os.urandom(n)
        self.left -= n
        self.sha.update(data)
        self.size += n
        if self.slow:
            if self.size == n:
                print("started", file=sys.stderr, flush=True)
            time.sleep(0.05)
        return data


def peak_mib() -> float:
    # VmHWM, not ru_maxrss: the latter carries the parent's RSS over fork+exec.
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv: list[str]) -> None:
    op, url, key = argv[:3]
    storage = open_storage(url, retry_deadline=10)
    if op == "put":
        src = RandomSource(int(argv[3]) << 20, "--slow" in argv)
        storage.put(key, src, overwrite="--create-only" not in argv)
        out = {"sha256": src.sha.hexdigest(), "size": src.size}
    else:
        sha, size = hashlib.sha256(), 0
        with storage.open(key) as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
        out = {"sha256": sha.hexdigest(), "size": size}
    out["peak_rss_mib"] = round(peak_mib(), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
