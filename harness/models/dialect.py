"""What the three network providers share about talking to servers that differ: the request
options ``model_options`` may pass through, the time a call may take, and a transport that
makes that time hold even against a server that keeps sending bytes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx2

from harness.errors import UsageError
from harness.models.base import Request

# Request options each wire format takes from model_options, sent as given in every request.
OPENAI_REQUEST_OPTIONS = frozenset(
    {"tool_choice", "temperature", "top_p", "seed", "stop", "parallel_tool_calls", "extra_body", "extra_headers"}
)
ANTHROPIC_REQUEST_OPTIONS = frozenset(
    {"tool_choice", "temperature", "top_p", "top_k", "stop_sequences", "extra_body", "extra_headers"}
)


def request_options(name: str, given: Mapping[str, Any], accepted: Iterable[str],
                    settings: Iterable[str]) -> dict[str, Any]:
    """The request options in ``given``, or a UsageError naming each unknown one and all that are
    accepted (``settings``: the provider's own constructor options, listed for the user too)."""
    accepted = frozenset(accepted)
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise UsageError(
            f"{name}: unsupported model option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(settings))}, "
            f"and request options {', '.join(sorted(accepted))} (check model_options in .stigmergy/config.yaml)"
        )
    return dict(given)


def call_timeout(own: float, request: Request) -> tuple[float, bool]:
    """(seconds this call may take, whether that is the caller's time left rather than our own
    configured timeout): a timeout then is the caller's deadline, not a slow server."""
    if request.timeout is None or request.timeout >= own:
        return own, False
    return max(0.001, request.timeout), True


def after(request: Request, spent: float) -> Request:
    """``request`` with ``spent`` seconds taken off its time left (a provider's own second try)."""
    if request.timeout is None:
        return request
    return dataclasses.replace(request, timeout=max(0.0, request.timeout - spent))


# --------------------------------------------------------------------------- the whole-call deadline

# The deadline of the call this thread is making (monotonic seconds), read by the transport: the
# SDKs build the HTTP request themselves, so there is no other way to hand it down to them.
_local = threading.local()


class Deadline:
    """``with Deadline(seconds):`` around an SDK call makes ``DeadlineTransport`` end it then."""

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._outer: float | None = None

    def __enter__(self) -> Deadline:
        self._outer = getattr(_local, "deadline", None)
        _local.deadline = None if self._seconds is None else time.monotonic() + self._seconds
        return self

    def __exit__(self, *exc: object) -> None:
        _local.deadline = self._outer


class _DeadlineStream(httpx2.SyncByteStream):
    """A response body that stops at the deadline: the per-read timeout alone never trips on a
    server that trickles a byte every few hundred milliseconds, forever."""

    def __init__(self, inner: httpx2.SyncByteStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if time.monotonic() > self._deadline:
                raise httpx2.ReadTimeout("the call's time ran out while the response was still arriving")
            yield chunk

    def close(self) -> None:
        self._inner.close()  # hangs up: a server streaming forever sees the client go


class DeadlineTransport(httpx2.HTTPTransport):
    """The SDKs' usual transport, with the body cut off at the calling thread's ``Deadline``."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        deadline = getattr(_local, "deadline", None)
        if deadline is not None and isinstance(response.stream, httpx2.SyncByteStream):
            response.stream = _DeadlineStream(response.stream, deadline)
        return response


def deadline_http_client(timeout: float) -> httpx2.Client:
    """An httpx2 client as the openai/anthropic SDKs would build, but honouring ``Deadline``."""
    return httpx2.Client(transport=DeadlineTransport(), timeout=timeout, follow_redirects=True)
