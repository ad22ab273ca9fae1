"""catalog.objects.store: a create-only put that finds its key taken is accepted only when the
stored object is provably this put's (issue 10 item 17). The same fault against a real S3
server, answer lost on the wire: tests/integration/test_lost_response.py."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from typing import Any

import pytest

from p88backup.catalog.objects import store
from p88backup.errors import ObjectExistsError
from p88backup.storage.base import Readable
from p88backup.storage.memory import MemoryStorage
from p88backup.stream import encode, make_codec, read_all
from tests.harness.helpers import initialised

KEY = "dumps/20261127T021500Z/p88.pgdump.zst"
DATA = os.urandom(100_000) + b"compressible " * 50_000
CODEC = make_codec(threads=1)


class RetryFindsKeyTaken(MemoryStorage):
    """A create-only put that reads its whole stream and is then told the key exists, as
    S3 answers the retry of a PUT whose first answer was lost. ``lands``: that first
    attempt stored what it read (a lost answer); otherwise the key was someone else's."""

    def __init__(self, lands: bool) -> None:
        super().__init__(uuid.uuid4().hex)
        initialised(self)
        self.lands = lands

    def put(self, key: str, data: Readable, *, overwrite: bool = True) -> Any:
        if self.lands:
            super().put(key, data, overwrite=overwrite)
        else:
            read_all(data)
        raise ObjectExistsError(f"put {key}: already exists")


def encoded() -> bytes:
    return read_all(encode(io.BytesIO(DATA), CODEC))


def test_a_lost_answer_to_our_own_put_is_success(caplog: pytest.LogCaptureFixture) -> None:
    storage = RetryFindsKeyTaken(lands=True)
    with caplog.at_level(logging.INFO, logger="p88backup.catalog.objects"):
        obj = store(storage, KEY, io.BytesIO(DATA), CODEC)
    with storage.open(KEY) as fh:
        body = fh.read()
    assert (obj.size, obj.sha256, obj.raw_size) == (len(body), hashlib.sha256(body).hexdigest(), len(DATA))
    assert "already stored by an earlier attempt" in caplog.text


def flipped(body: bytes) -> bytes:
    return body[:100] + bytes([body[100] ^ 1]) + body[101:]


@pytest.mark.parametrize(
    ("theirs", "why"),
    [
        (flipped, "same size, different bytes"),
        (lambda body: body + b"x", "different size"),
        (lambda body: body, "identical bytes stored by someone else before we sent anything"),
    ],
)
def test_an_object_that_is_not_provably_ours_stays_a_conflict(theirs: Any, why: str) -> None:
    storage = RetryFindsKeyTaken(lands=False)
    MemoryStorage.put(storage, KEY, io.BytesIO(theirs(encoded())))
    if why.startswith("identical"):
        storage = MemoryStorage(storage.url.removeprefix("memory://"))  # refuses before reading
    with pytest.raises(ObjectExistsError):
        store(storage, KEY, io.BytesIO(DATA), CODEC)
    with storage.open(KEY) as fh:
        assert fh.read() == theirs(encoded()), why  # left as it was
