"""Bounded retries for transient failures (DESIGN §3.9), in one place.

Every remote call goes through :func:`call_with_retries`: the client
library's exception is translated to ours by the caller's ``translate``,
errors of the ``transient`` type are retried with exponential backoff and
jitter until ``deadline`` seconds have passed (each attempt logged), and
anything else fails at once with its translated, actionable message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from p88backup.errors import P88Error

T = TypeVar("T")


def call_with_retries(
    what: str,
    fn: Callable[[], T],
    *,
    translate: Callable[[Exception, str], P88Error],
    transient: type[P88Error],
    deadline: float,
    log: logging.Logger,
    sleep: Callable[[float], None] | None = None,
) -> T:
    def attempt() -> T:
        try:
            return fn()
        except Exception as exc:  # re-raised as our own, typed error
            raise translate(exc, what) from exc

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning(
            "transient error, retrying", extra={"p88": {"op": what, "attempt": state.attempt_number, "error": str(err)}}
        )

    kwargs: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
    retrying = Retrying(
        retry=retry_if_exception_type(transient),
        stop=stop_after_delay(deadline),
        wait=wait_exponential_jitter(multiplier=0.2, max=10, jitter=0.5),
        before_sleep=before_sleep,
        reraise=True,
        **kwargs,
    )
    return retrying(attempt)
