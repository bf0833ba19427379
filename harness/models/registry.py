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
from harness.meter import FREE, Price, known_price, price_for
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


def price_of(spec: str | None, options: Mapping[str, Any] | None = None) -> Price | None:
    """The price of every call to ``spec``, decided once here (the agent's meter applies it to
    each reply's usage; providers only report usage): ``model_options.price``, else
    meter.PRICES, else for litellm/ litellm's cost map (imported only then: it costs seconds).
    A scripted model is free by design; None: the colony cannot count what it spends (an unknown
    model, or spec None, the command backend, whose agent CLI calls its model itself). A bad
    ``price`` is refused (UsageError)."""
    if spec is None:
        return None
    check_spec(spec)
    if spec.startswith("scripted:"):
        return FREE
    price = (options or {}).get("price")
    if price is not None:
        return price_for(spec, price)
    model = spec.split("/", 1)[1]
    known = known_price(model)
    if known is not None or not spec.startswith("litellm/"):
        return known
    from harness.models.litellm_provider import map_price
    return map_price(model)


def spend_countable(spec: str | None, options: Mapping[str, Any] | None = None) -> bool:
    """Whether the colony can count what ``spec`` spends, so a USD budget can trip (``price_of``)."""
    return price_of(spec, options) is not None


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
    dict of RetryPolicy fields; ``max_tokens`` caps each reply, 4096 unless given; ``price`` is
    the meter's, ``price_of``). ``opts`` go to the provider: its settings (``timeout``, ``stream``
    (anthropic), ``max_tokens_param`` (openai)) and the request
    options it sends with every call (``harness.models.dialect``: temperature, tool_choice, extra_body,
    ...; ``tool_choice: null`` sends none). Anything else is refused with the accepted names.
    """
    check_spec(spec)
    opts.pop("price", None)  # not the provider's: a reply's cost is the meter's (price_of)
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
