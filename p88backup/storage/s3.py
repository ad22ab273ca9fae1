"""S3 storage (``s3://bucket/prefix``) through boto3.

Endpoint, region and credentials come from boto3's own standard sources
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, profiles, instance roles...).

* Puts stream: one ``PutObject`` when the data fits in a part, otherwise a
  multipart upload with a few parts in flight (bounded memory), aborted on any
  failure so nothing partial is ever visible. Create-only puts send
  ``If-None-Match: *`` (honoured by S3, MinIO and moto).
* Every call is retried with bounded exponential backoff on network errors,
  5xx and throttling (tenacity, deadline from settings), and logged per
  attempt. botocore's own retries are off so the policy lives in one place.
* botocore errors are translated here; nothing above imports botocore.
* Every call stays inside the prefix: ``check`` lists the prefix instead of
  asking about the bucket (HeadBucket), so credentials scoped to the prefix
  (``s3:ListBucket`` with an ``s3:prefix`` condition, object actions on
  ``prefix/*``) are enough.
* The marker (``<prefix>/p88backup.json``) is looked up once per instance
  and remembered once seen: an S3 prefix cannot be unmounted under a running
  process, and a HEAD per call would double the requests of a ``wal-push``.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from p88backup.retry import call_with_retries
from p88backup.storage.base import (
    InitOutcome,
    ObjectInfo,
    Readable,
    not_initialised,
    read_full,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_PART = 8 * 1024 * 1024
MAX_PARTS = 10_000
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeTooSkewed",
    "XMinioServerNotInitialized",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def translate(exc: Exception, what: str) -> StorageError:
    """Map a botocore exception to our error tree (the only place that knows both)."""
    if isinstance(exc, StorageError):
        return exc
    err = _translate(exc, what)
    if isinstance(exc, bce.ClientError):
        err.s3_code = str(exc.response.get("Error", {}).get("Code", ""))  # type: ignore[attr-defined]
    return err


def _translate(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND_CODES:
            return ObjectNotFoundError(f"{what}: not found")
        if code in ("PreconditionFailed", "412") or status == 412:
            return ObjectExistsError(f"{what}: already exists")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStorageError(f"{what}: S3 answered {code or status}")
        if code == "NoSuchBucket":
            return StorageError(f"{what}: bucket does not exist", hint="create it or fix P88_STORAGE_URL")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return StorageError(
                f"{what}: access denied ({code})",
                hint="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy: p88backup needs "
                "s3:ListBucket on its prefix and s3:GetObject, s3:PutObject, s3:DeleteObject on prefix/*",
            )
        return StorageError(f"{what}: S3 error {code or status}: {err.get('Message', '')}".rstrip(": "))
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return StorageError(
            f"{what}: no S3 credentials",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile/role)",
        )
    if isinstance(exc, bce.ConnectionError | bce.HTTPClientError):
        return TransientStorageError(f"{what}: cannot reach S3 ({type(exc).__name__})")
    if isinstance(exc, bce.BotoCoreError):
        return StorageError(f"{what}: {exc}")
    if isinstance(exc, OSError):
        return TransientStorageError(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


class S3Storage:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        retry_deadline: float = 120.0,
        part_size: int = MIN_PART,
        max_in_flight: int = 3,
        client: S3Client | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.retry_deadline = retry_deadline
        self.part_size = max(part_size, 5 * 1024 * 1024)
        self.max_in_flight = max(1, max_in_flight)
        self._initialised = False
        self._client = client or boto3.session.Session().client(
            "s3",
            config=Config(
                # total_max_attempts counts the first try (max_attempts counts retries: 1 would be one more).
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                tcp_keepalive=True,
                max_pool_connections=self.max_in_flight + 4,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    # -- retry ---------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with bounded retries on transient failures; translate errors."""
        return call_with_retries(
            what, fn, translate=translate, transient=TransientStorageError, deadline=self.retry_deadline, log=log
        )

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    # -- contract ------------------------------------------------------------

    def _require_init(self) -> None:
        if self._initialised:
            return
        try:
            self._head(f"check {STORAGE_MARKER}", STORAGE_MARKER)
        except ObjectNotFoundError:
            self.check()  # raises: a missing bucket, denied, or only the marker missing
        self._initialised = True

    def _head(self, what: str, key: str) -> Any:
        full = self.prefix + key
        return self._call(what, lambda: self._client.head_object(Bucket=self.bucket, Key=full))

    def _list_one(self) -> bool:
        """Whether anything is stored under the prefix; the bucket's existence and our
        right to list the prefix are checked on the way."""
        page = self._call(
            f"list {self.url}",
            lambda: self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1),
        )
        return bool(page.get("Contents"))

    def init(self, marker: bytes) -> InitOutcome:
        had_objects = self._list_one()
        try:
            self._head(f"check {STORAGE_MARKER}", STORAGE_MARKER)
            self._initialised = True
            return "already"
        except ObjectNotFoundError:
            pass
        try:
            self._call(
                f"put {STORAGE_MARKER}",
                lambda: self._client.put_object(
                    Bucket=self.bucket, Key=self.prefix + STORAGE_MARKER, Body=marker, IfNoneMatch="*"
                ),
            )
        except ObjectExistsError:
            self._initialised = True
            return "already"  # a concurrent init won, or our own earlier attempt: marked either way
        self._initialised = True
        return "adopted" if had_objects else "initialised"

    def put(self, key: str, data: Readable, *, overwrite: bool = True) -> ObjectInfo:
        full = self._key(key)
        self._require_init()
        cond: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
        if not overwrite:
            # Fail fast before streaming anything; the conditional write below
            # still protects against a concurrent writer.
            try:
                self.stat(key)
                raise ObjectExistsError(f"{key} already exists in {self.url}")
            except ObjectNotFoundError:
                pass
        first = read_full(data, self.part_size)
        if len(first) < self.part_size:
            self._call(
                f"put {key}",
                lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=first, **cond),
            )
            return ObjectInfo(key, len(first))
        return self._put_multipart(key, full, first, data, cond)

    def _put_multipart(self, key: str, full: str, first: bytes, data: Readable, cond: dict[str, Any]) -> ObjectInfo:
        upload_id = self._call(
            f"start upload of {key}",
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"],
        )
        parts: builtins.list[dict[str, Any]] = []
        size = 0
        try:
            with ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="s3put") as pool:
                in_flight: builtins.list[Future[dict[str, Any]]] = []
                body, number, part_size = first, 1, self.part_size
                while body:
                    size += len(body)
                    in_flight.append(pool.submit(self._upload_part, key, full, upload_id, number, body))
                    # Bytes in flight stay flat when parts grow: fewer parts at a time.
                    while len(in_flight) >= max(1, self.max_in_flight * self.part_size // part_size):
                        parts.append(in_flight.pop(0).result())
                    number += 1
                    if number % 1000 == 0:
                        part_size *= 2  # stay under S3's 10,000-part limit for any size
                    body = read_full(data, part_size)
                for fut in in_flight:
                    parts.append(fut.result())
            self._call(
                f"complete upload of {key}",
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                    **cond,
                ),
            )
        except BaseException:
            self._abort(full, upload_id)
            raise
        return ObjectInfo(key, size)

    def _upload_part(self, key: str, full: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        for attempt in range(1, 6):
            try:
                resp = self._call(
                    f"upload part {number} of {key}",
                    lambda: self._client.upload_part(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body
                    ),
                )
                return {"ETag": resp["ETag"], "PartNumber": number}
            except StorageError as exc:
                # MinIO can answer NoSuchUpload for an upload it created milliseconds ago
                # (seen by bench/dump_bench.py): for our own fresh upload that is transient.
                if getattr(exc, "s3_code", None) != "NoSuchUpload" or attempt == 5:
                    raise
                log.warning("upload not visible yet, retrying", extra={"p88": {"key": key, "part": number}})
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except Exception as exc:  # the upload stays invisible; a bucket lifecycle rule reaps it
            log.warning("could not abort multipart upload", extra={"p88": {"key": full, "error": str(exc)}})

    def check(self) -> None:
        # A listing of our own prefix, not HeadBucket: that needs bucket-wide ListBucket,
        # which a policy scoped to the prefix does not grant.
        self._list_one()
        try:
            self._head(f"check {STORAGE_MARKER}", STORAGE_MARKER)
        except ObjectNotFoundError:
            raise not_initialised(self.url) from None
        self._initialised = True

    def open(self, key: str) -> BinaryIO:
        full = self._key(key)
        self._require_init()
        head = self._call(f"get {key}", lambda: self._client.head_object(Bucket=self.bucket, Key=full))
        return _ResumingReader(self, key, full, int(head["ContentLength"]), str(head["ETag"]))  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo:
        full = self._key(key)
        self._require_init()
        head = self._call(f"stat {key}", lambda: self._client.head_object(Bucket=self.bucket, Key=full))
        return ObjectInfo(key, int(head["ContentLength"]), head.get("LastModified"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        self._require_init()
        full_prefix = self.prefix + prefix
        token: str | None = None
        cut = len(self.prefix)
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._list_page(prefix, kwargs)
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"][cut:], int(obj["Size"]), obj.get("LastModified"))
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def _list_page(self, prefix: str, kwargs: dict[str, Any]) -> Any:
        return self._call(f"list {prefix or '/'}", lambda: self._client.list_objects_v2(**kwargs))

    def sync(self, key: str) -> None:
        self._key(key)  # a completed PUT or multipart upload is durable when S3 answers
        self._require_init()

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._require_init()
        self._call(f"delete {key}", lambda: self._client.delete_object(Bucket=self.bucket, Key=full))

    def delete_many(self, keys: Iterable[str]) -> None:
        self._require_init()
        batch: builtins.list[str] = []
        for key in keys:
            batch.append(self._key(key))
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, fulls: builtins.list[str]) -> None:
        resp = self._call(
            f"delete {len(fulls)} objects",
            lambda: self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in fulls], "Quiet": True}
            ),
        )
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(f"could not delete {len(errors)} objects, e.g. {first.get('Key')}: {first.get('Code')}")

    def reap_interrupted(self, older_than_seconds: float) -> builtins.list[str]:
        """Abort multipart uploads left by killed runs; return their keys."""
        import datetime as dt

        self._require_init()
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than_seconds)
        uploads: builtins.list[Any] = []
        markers: dict[str, Any] = {}
        try:
            while True:
                page = dict(markers)
                resp = self._call(
                    "list uploads",
                    lambda page=page: self._client.list_multipart_uploads(  # type: ignore[misc]
                        Bucket=self.bucket, Prefix=self.prefix, **page
                    ),
                )
                uploads += resp.get("Uploads", [])
                if not resp.get("IsTruncated"):
                    break
                markers = {"KeyMarker": resp["NextKeyMarker"], "UploadIdMarker": resp["NextUploadIdMarker"]}
        except StorageError as exc:
            # A policy scoped to the prefix cannot grant this (no s3:prefix condition for it on
            # MinIO): the leftovers are invisible, so say who must clean them instead of failing expire.
            if getattr(exc, "s3_code", None) not in ("AccessDenied", "403"):
                raise
            log.warning(
                "cannot list interrupted uploads (s3:ListBucketMultipartUploads not granted); "
                "a bucket lifecycle rule (AbortIncompleteMultipartUpload) must remove them",
                extra={"p88": {"storage": self.url}},
            )
            return []
        aborted: builtins.list[str] = []
        for up in uploads:
            if up["Initiated"] < cutoff:
                self._abort(up["Key"], up["UploadId"])
                aborted.append(up["Key"][len(self.prefix) :])
        return aborted

    def close(self) -> None:
        self._client.close()


class _ResumingReader:
    """A GetObject body that resumes with a Range request after a network error.

    ``If-Match`` pins the object version: if the object changed in between,
    the resume fails instead of splicing two versions together.
    """

    def __init__(self, storage: S3Storage, key: str, full: str, size: int, etag: str) -> None:
        self._s, self._key, self._full, self.size, self._etag = storage, key, full, size, etag
        self._pos = 0
        self._body: Any = None

    def _open_body(self) -> Any:
        extra: dict[str, Any] = {"IfMatch": self._etag}
        if self._pos:
            extra["Range"] = f"bytes={self._pos}-"
        return self._s._call(
            f"get {self._key}",
            lambda: self._s._client.get_object(Bucket=self._s.bucket, Key=self._full, **extra)["Body"],
        )

    def read(self, size: int = -1, /) -> bytes:
        if self._pos >= self.size:
            return b""
        for attempt in range(1, 6):
            if self._body is None:
                self._body = self._open_body()
            try:
                chunk: bytes = self._body.read(size if size and size > 0 else None)
            except (bce.HTTPClientError, bce.ConnectionError, OSError) as exc:
                log.warning(
                    "read interrupted, resuming",
                    extra={"p88": {"key": self._key, "offset": self._pos, "attempt": attempt, "error": str(exc)}},
                )
                self._body = None
                continue
            if not chunk and self._pos < self.size:
                self._body = None  # connection ended early; resume from _pos
                continue
            self._pos += len(chunk)
            return chunk
        raise TransientStorageError(f"get {self._key}: connection kept failing at byte {self._pos}")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def __enter__(self) -> _ResumingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
