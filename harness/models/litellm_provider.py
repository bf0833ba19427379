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

from harness.errors import ModelError, ModelTransient
from harness.meter import cost_usd, price_for
from harness.models.base import Reply, Request
from harness.models.openai_provider import reply_from_completion, to_openai_messages, to_openai_tools
from harness.models.retry import error_for_status
from harness.redact import redact, secret_env


def _import_litellm() -> ModuleType:
    # Must be set before the import: otherwise litellm fetches its cost map from GitHub at
    # import time (slow, and fails on offline hosts after several retries).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # Otherwise litellm prints "Give Feedback / Get Help" banners to stdout on every error.
    litellm.suppress_debug_info = True
    return litellm


class LiteLLMModel:
    """One ``litellm.completion`` per ``complete`` (litellm's retries off); wrap in RetryingModel."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        api_base: str | None = None,
        timeout: float = 600.0,
        price: dict[str, float] | None = None,
    ) -> None:
        self.model = model  # "<provider>/<model>", as litellm wants it
        self.name = f"litellm/{model}"
        self.base_url = api_base
        self._api_key = api_key
        self._timeout = timeout
        self._price_override = price
        # litellm reads provider keys from the environment itself; any of them could be echoed.
        self._secrets = (api_key or "", *secret_env(os.environ).values())
        self._litellm = _import_litellm()

    def __repr__(self) -> str:
        return f"LiteLLMModel({self.model!r}, base_url={self.base_url!r})"

    def complete(self, request: Request) -> Reply:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(request.system, request.messages),
            "max_tokens": request.max_tokens,
            "timeout": self._timeout,
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
        try:
            response = self._litellm.completion(**params)
            reply = reply_from_completion(response)
        except ModelTransient as exc:
            raise ModelTransient(self._say(str(exc))) from None
        except Exception as exc:  # noqa: BLE001 - litellm raises many classes; this is the boundary
            raise self._map(exc) from None
        reply.cost_usd = self._cost(response, reply)
        return reply

    def _cost(self, response: Any, reply: Reply) -> float:
        if self._price_override is None:
            try:
                cost = float(self._litellm.completion_cost(completion_response=response) or 0.0)
                if cost > 0:
                    return cost
            except Exception:  # noqa: BLE001 - unmapped model: fall back to our table
                pass
        return cost_usd(reply.usage, price_for(self.model, self._price_override))

    def _map(self, exc: Exception) -> ModelError:
        status = getattr(exc, "status_code", None)
        http = f"HTTP {status}: " if isinstance(status, int) else ""
        message = self._say(f"{http}{type(exc).__name__}: {exc}")
        if isinstance(
            exc, (openai.APIConnectionError, httpx.HTTPError, httpx2.HTTPError, TimeoutError, ConnectionError)
        ):
            return ModelTransient(message, status=status if isinstance(status, int) else None)
        if isinstance(status, int) and status >= 400:
            response = getattr(exc, "response", None)
            headers = getattr(exc, "litellm_response_headers", None) or getattr(response, "headers", None)
            return error_for_status(status, message, dict(headers) if headers else None)
        return ModelError(message)

    def _say(self, message: str) -> str:
        return redact(f"{self.name}: {message}", self._secrets)
