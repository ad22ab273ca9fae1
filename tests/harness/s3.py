"""Real S3 servers: moto (fast, Python) and MinIO (built from its Go module).

Both run as child processes speaking HTTP on loopback, so a test can kill
or stop them to inject faults, and the test process's memory is its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.procs import cache_dir, free_port, stop_process, tail, wait_for

# Pinned: the MinIO server module at a known commit (its releases are not semver tags).
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
ACCESS_KEY = "p88test"
SECRET_KEY = "p88test-secret-key"
# What a prefix-scoped policy grants on prefix/* (with s3:ListBucket on the prefix): the object actions.
PREFIX_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")


@dataclass
class S3Server:
    kind: str  # "moto" | "minio"
    endpoint: str
    proc: subprocess.Popen[bytes] | None
    workdir: Path
    logfile: Path
    start_args: list[str] = field(default_factory=list)
    start_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}),
        )

    def scoped_env(self, bucket: str, prefix: str, actions: tuple[str, ...] = PREFIX_ACTIONS) -> dict[str, str]:
        """AWS_* for credentials that may touch only ``bucket/prefix/``: s3:ListBucket with an
        ``s3:prefix`` condition, and ``actions`` on ``prefix/*`` (MinIO).

        Temporary credentials from STS AssumeRole with a session policy: the root user's rights
        cut down to the policy, as a prefix-scoped IAM user would have (no admin API, no mc).
        """
        import json

        import boto3

        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{bucket}"],
                    "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
                },
                {"Effect": "Allow", "Action": list(actions), "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"]},
            ],
        }
        sts = boto3.client(
            "sts",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        creds = sts.assume_role(
            RoleArn="arn:minio:iam:::role/p88-scoped",  # MinIO ignores the role for its own users
            RoleSessionName="p88-scoped",
            Policy=json.dumps(policy),
            DurationSeconds=3600,
        )["Credentials"]
        return {
            **self.env(),
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"],
        }

    def create_bucket(self, name: str) -> str:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Start again on the same port (and, for MinIO, the same data)."""
        self.stop()
        with open(self.logfile, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                self.start_args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.start_env}
            )
        wait_for(self._ready, 60, f"{self.kind} S3 server")

    def _ready(self) -> bool:
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False


def start_moto(workdir: Path, port: int | None = None) -> S3Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = S3Server("moto", f"http://127.0.0.1:{port}", None, workdir, workdir / "moto.log", args)
    try:
        server.restart()
    except TimeoutError:
        raise RuntimeError(f"moto server did not start:\n{tail(server.logfile)}") from None
    return server


def minio_binary(build: bool = True) -> Path:
    """The pinned MinIO server binary, built once with ``go install`` into the cache."""
    target = cache_dir() / "bin" / f"minio-{MINIO_VERSION}"
    if target.exists():
        return target
    if not build:
        raise FileNotFoundError(target)
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("MinIO is built from its Go module and needs the 'go' command")
    gobin = cache_dir() / "gobin"
    env = {
        **os.environ,
        "GOBIN": str(gobin),
        "GOMODCACHE": os.environ.get("GOMODCACHE", str(cache_dir() / "gomod")),
        "GOCACHE": os.environ.get("GOCACHE", str(cache_dir() / "gobuild")),
        "CGO_ENABLED": "0",
    }
    r = subprocess.run(
        [go, "install", f"{MINIO_MODULE}@{MINIO_VERSION}"], env=env, capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"go install {MINIO_MODULE}@{MINIO_VERSION} failed:\n{r.stderr[-3000:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(gobin / "minio"), target)
    return target


def start_minio(workdir: Path, port: int | None = None) -> S3Server:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    port = port or free_port()
    console = free_port()
    args = [
        str(minio_binary()),
        "server",
        str(workdir / "data"),
        "--quiet",
        "--address",
        f"127.0.0.1:{port}",
        "--console-address",
        f"127.0.0.1:{console}",
    ]
    env = {
        "MINIO_ROOT_USER": ACCESS_KEY,
        "MINIO_ROOT_PASSWORD": SECRET_KEY,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
    }
    server = S3Server("minio", f"http://127.0.0.1:{port}", None, workdir, workdir / "minio.log", args, env)
    try:
        server.restart()
    except TimeoutError:
        raise RuntimeError(f"MinIO did not start:\n{tail(server.logfile)}") from None
    return server


def from_env(prefix: str = "P88_TEST_S3_") -> dict[str, str] | None:
    """An S3 server given by the environment (wins over starting one)."""
    endpoint = os.environ.get(prefix + "ENDPOINT")
    if not endpoint:
        return None
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": os.environ.get(prefix + "ACCESS_KEY_ID", ACCESS_KEY),
        "AWS_SECRET_ACCESS_KEY": os.environ.get(prefix + "SECRET_ACCESS_KEY", SECRET_KEY),
        "AWS_DEFAULT_REGION": os.environ.get(prefix + "REGION", "us-east-1"),
    }
