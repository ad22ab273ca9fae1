"""Build the real test services ahead of the test run (MinIO, OpenSearch, the Compose CLI),
timing each.

All are cached under ``P88_CACHE``; a second run only checks the cache.
"""

from __future__ import annotations

import time

from tests.harness import opensearch_node
from tests.harness.compose import compose_binary
from tests.harness.s3 import minio_binary


def main() -> None:
    for what, build in (
        ("MinIO", minio_binary),
        ("OpenSearch node", opensearch_node.build),
        ("Compose CLI", compose_binary),
    ):
        t0 = time.monotonic()
        build()
        print(f"{what}: ready in {time.monotonic() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
