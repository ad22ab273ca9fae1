"""Upload stdin to S3: the "raw" stand-in for ``aws s3 cp - s3://BUCKET/KEY``.

There is no aws CLI on these machines, so the raw S3 pipeline of
``dump_bench.py`` ends in this script instead. Like ``aws s3 cp -`` it uses
boto3's managed transfer (s3transfer) with its defaults: multipart upload,
8 MiB parts, up to 10 parts in flight, checksums as botocore's defaults say.
Endpoint and credentials come from the standard ``AWS_*`` environment.

Usage: ``... | python bench/s3_stdin_upload.py BUCKET KEY``
"""

from __future__ import annotations

import sys

import boto3


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: s3_stdin_upload.py BUCKET KEY", file=sys.stderr)
        return 2
    bucket, key = argv
    boto3.client("s3").upload_fileobj(sys.stdin.buffer, bucket, key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
