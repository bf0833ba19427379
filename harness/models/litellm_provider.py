"""``litellm/<provider>/<model>``: the long tail of providers through litellm.

litellm costs seconds and ~200 MB to import, so it is imported here, inside the constructor,
and nowhere else: agents on other backends never pay for it. It speaks the OpenAI chat format,
so the OpenAI provider's translation is reused both ways.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import httpx
import httpx2
import openai

from harness.errors import ModelError, ModelTimeout, ModelTransient
from harness.meter import Price
from harness.models.base import Reply, Request
from harness.models.dialect import (OPENAI_REQUEST_OPTIONS, Deadline, call_timeout, deadline_http_client,
                                    request_options)
from harness.models.openai_provider import ToolChoice, reply_from_completion, to_openai_messages, to_openai_tools
from harness.models.retry import OVERFLOW_STATUSES, error_for_status
from harness.redact import redact, secret_env


def _import_litellm() -> ModuleType:
    # Must be set before the import: otherwise litellm fetches its cost map from GitHub at
    # import time (slow, and fails on offline hosts after several retries).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # Otherwise litellm prints "Give Feedback / Get Help" banners to stdout on every error.
    litellm.suppress_debug_info = True
    return litellm


def _upstream_status(exc: BaseException) -> int | None:
    """The HTTP status the server really answered. litellm re-files errors by their wording and
    rewrites the status to match (an Anthropic 400 saying "Invalid API Key" anywhere becomes a
    401 AuthenticationError, a 413 a 400), so trust the innermost status in the chain instead."""
    status: int | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        value = getattr(current, "status_code", None)
        if isinstance(value, int) and not isinstance(value, bool):
            status = value
        current = current.__cause__ or current.__context__
    return status


class LiteLLMModel:
    """One ``litellm.completion`` per ``complete`` (litellm's retries off); wrap in RetryingModel."""

    SETTINGS = ("api_key", "api_base", "timeout")

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        timeout: float = 600.0,
        **options: Any,
    ) -> None:
        self.model = model  # "<provider>/<model>", as litellm wants it
        self.name = f"litellm/{model}"
        # Sent with every request (litellm passes them on in the provider's terms); typos refused.
        self._options = request_options(self.name, options, OPENAI_REQUEST_OPTIONS, self.SETTINGS)
        self._tool_choice = ToolChoice(self._options)
        self.base_url = api_base
        self._api_key = api_key
        self._timeout = timeout
        # litellm reads provider keys from the environment itself; any of them could be echoed.
        self._secrets = (api_key or "", *secret_env(os.environ).values())
        self._litellm = _import_litellm()
        # For OpenAI-compatible endpoints our own SDK client, so Request.timeout holds against a
        # server that trickles bytes forever (litellm's other backends get litellm's timeout only).
        self._client: openai.OpenAI | None = None
        if model.startswith("openai/"):
            self._client = openai.OpenAI(
                api_key=api_key or os.environ.get("OPENAI_API_KEY") or "no-key", base_url=api_base,
                max_retries=0, timeout=timeout, http_client=deadline_http_client(timeout),
            )

    def __repr__(self) -> str:
        return f"LiteLLMModel({self.model!r}, base_url={self.base_url!r})"

    def complete(self, request: Request) -> Reply:
        params: dict[str, Any] = {
            **self._options,
            "model": self.model,
            "messages": to_openai_messages(request.system, request.messages),
            "max_tokens": request.max_tokens,
            # Both knobs: num_retries is litellm's own loop, max_retries the SDK's underneath.
            "num_retries": 0,
            "max_retries": 0,
        }
        if request.tools:
            params["tools"] = to_openai_tools(request.tools)
        if self.base_url:
            params["api_base"] = self.base_url
        if self._api_key:
            params["api_key"] = self._api_key
        if self._client is not None:
            params["client"] = self._client
        return self._tool_choice.send(params, request, self.name, self._call)

    def _call(self, params: dict[str, Any], request: Request) -> Reply:
        timeout, deadline_bound = call_timeout(self._timeout, request)
        try:
            with Deadline(timeout if deadline_bound else None):
                response = self._litellm.completion(**params, timeout=timeout)
            reply = reply_from_completion(response)
        except ModelTransient as exc:
            raise ModelTransient(self._say(str(exc))) from None
        except Exception as exc:  # noqa: BLE001 - litellm raises many classes; this is the boundary
            raise self._map(exc, deadline_bound, timeout) from None
        return reply

    def _map(self, exc: Exception, deadline_bound: bool = False, timeout: float = 0.0) -> ModelError:
        status = _upstream_status(exc)
        http = f"HTTP {status}: " if status is not None else ""
        message = self._say(f"{http}{type(exc).__name__}: {exc}")
        timed_out = isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, httpx2.TimeoutException,
                                     TimeoutError))
        if timed_out and deadline_bound:
            return ModelTimeout(self._say(f"no reply within the {timeout:.1f}s left for this call; "
                                          "the attempt stops by its time limit"))
        if isinstance(exc, self._litellm.ContextWindowExceededError) and status in (*OVERFLOW_STATUSES, None):
            # litellm recognised its own providers' wording for an overlong prompt; the class name
            # in the message is one of the wordings error_for_status knows.
            return error_for_status(status or 400, message)
        if isinstance(
            exc, (openai.APIConnectionError, httpx.HTTPError, httpx2.HTTPError, TimeoutError, ConnectionError)
        ):
            return ModelTransient(message, status=status)
        if status is not None and status >= 400:
            response = getattr(exc, "response", None)
            headers = getattr(exc, "litellm_response_headers", None) or getattr(response, "headers", None)
            return error_for_status(status, message, dict(headers) if headers else None)
        return ModelError(message)

    def _say(self, message: str) -> str:
        return redact(f"{self.name}: {message}", self._secrets)


def map_price(model: str) -> Price | None:
    """``model``'s price ("<provider>/<model>") in litellm's cost map, or None when it has none
    (or only zeros: its local ollama models are unpriced, not free by choice)."""
    try:
        info = _import_litellm().get_model_info(model)
    except Exception:  # noqa: BLE001 - litellm raises its own classes for "not mapped"
        return None
    per_m = {key: float(info.get(key) or 0) * 1_000_000 for key in (
        "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost", "cache_creation_input_token_cost")}
    inp, out = per_m["input_cost_per_token"], per_m["output_cost_per_token"]
    if inp <= 0 and out <= 0:
        return None
    return Price(inp, out, per_m["cache_read_input_token_cost"] or inp, per_m["cache_creation_input_token_cost"] or inp)
