"""``load_model(spec)``: from a model spec string to a ready ``Model``.

Provider modules are imported only when their prefix is asked for, so ``import
harness.models.registry`` stays cheap and never pulls in litellm.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from harness.errors import UsageError
from harness.models.base import Model
from harness.models.retry import CoolDown, RetryingModel, RetryPolicy

SPEC_FORMS = "anthropic/<model>, openai/<model>, litellm/<provider>/<model>, scripted:<path>"

# prefix -> (module, class); imported lazily.
_PROVIDERS = {
    "anthropic/": ("harness.models.anthropic_provider", "AnthropicModel"),
    "openai/": ("harness.models.openai_provider", "OpenAIModel"),
    "litellm/": ("harness.models.litellm_provider", "LiteLLMModel"),
}


def check_spec(spec: str) -> None:
    """Refuse a malformed spec without importing any SDK (the launcher checks before starting N agents)."""
    if spec.startswith("scripted:"):
        if not spec[len("scripted:"):]:
            raise UsageError(f"model spec {spec!r} names no script; accepted forms: {SPEC_FORMS}")
        return
    for prefix in _PROVIDERS:
        if spec.startswith(prefix):
            model = spec[len(prefix):]
            if not model or (prefix == "litellm/" and "/" not in model.strip("/")):
                raise UsageError(f"model spec {spec!r} is incomplete; accepted forms: {SPEC_FORMS}")
            return
    raise UsageError(f"unknown model spec {spec!r}; accepted forms: {SPEC_FORMS}")


def spend_countable(spec: str | None, options: Mapping[str, Any] | None = None) -> bool:
    """Whether the colony can count what ``spec`` spends, so a USD budget can trip.

    ``spec`` None is the command backend: an agent CLI calls its model itself and our ledgers never
    see a token of it. A scripted model is free by design. anthropic/ and openai/ need an entry in
    meter.PRICES or ``model_options.price``; litellm/ may also be priced by litellm's cost map
    (imported only here, and only for a litellm spec: it costs seconds). A bad ``price`` is refused.
    """
    from harness.meter import known_price, price_for

    if spec is None:
        return False
    check_spec(spec)
    if spec.startswith("scripted:"):
        return True
    price = (options or {}).get("price")
    if price is not None:
        price_for(spec, price)  # UsageError naming the shape a price must have
        return True
    model = spec.split("/", 1)[1]
    if known_price(model) is not None:
        return True
    return spec.startswith("litellm/") and _litellm_prices(model)


def _litellm_prices(model: str) -> bool:
    """litellm's cost map has a non-zero price for ``model`` ("<provider>/<model>"). An entry of
    zeros (its local ollama models) is counted as unpriced: the budget could not trip on it either,
    and `price: {input: 0, output: 0}` says so knowingly."""
    from harness.models.litellm_provider import _import_litellm

    try:
        info = _import_litellm().get_model_info(model)
    except Exception:  # noqa: BLE001 - litellm raises its own classes for "not mapped"
        return False
    return any(float(info.get(key) or 0) > 0 for key in ("input_cost_per_token", "output_cost_per_token"))


def load_model(
    spec: str,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    cooldown: CoolDown | None = None,
    retry: RetryPolicy | dict[str, Any] | None = None,
    max_tokens: int | None = None,
    **opts: Any,
) -> Model:
    """Build the model named by ``spec``.

    Network providers come wrapped in ``RetryingModel`` (``retry`` policy, optional shared
    ``cooldown``; ``model_options: {retry: {attempts: 3, base_wait: 0.5, ...}}`` arrives here as a
    dict of RetryPolicy fields; ``max_tokens`` caps each reply, 4096 unless given). ``opts`` go to the provider: its settings (``price={"input":..,
    "output":..}``, ``timeout``, ``stream`` (anthropic), ``max_tokens_param`` (openai)) and the request
    options it sends with every call (``harness.models.dialect``: temperature, tool_choice, extra_body,
    ...; ``tool_choice: null`` sends none). Anything else is refused with the accepted names.
    """
    check_spec(spec)
    if isinstance(retry, dict):
        retry = RetryPolicy.from_options(retry)
    if spec.startswith("scripted:"):
        from harness.models.scripted import ScriptedModel

        return ScriptedModel(spec[len("scripted:") :])
    for prefix, (module_name, class_name) in _PROVIDERS.items():
        if not spec.startswith(prefix):
            continue
        model = spec[len(prefix) :]
        cls = getattr(importlib.import_module(module_name), class_name)
        try:
            # Checked against the signature, not by catching TypeError from the call, so a real
            # bug inside a constructor is not reported as a usage mistake.
            inspect.signature(cls).bind(model, api_base=api_base, api_key=api_key, **opts)
        except TypeError as exc:
            raise UsageError(f"model spec {spec!r}: unsupported option ({exc})") from None
        inner = cls(model, api_base=api_base, api_key=api_key, **opts)
        return RetryingModel(inner, policy=retry, cooldown=cooldown, max_tokens=max_tokens)
    raise AssertionError("check_spec accepted a spec no provider takes")
