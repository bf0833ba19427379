"""``load_model(spec)``: from a model spec string to a ready ``Model``.

Provider modules are imported only when their prefix is asked for, so ``import
harness.models.registry`` stays cheap and never pulls in litellm.
"""

from __future__ import annotations

import importlib
import inspect
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


def load_model(
    spec: str,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    cooldown: CoolDown | None = None,
    retry: RetryPolicy | dict[str, Any] | None = None,
    **opts: Any,
) -> Model:
    """Build the model named by ``spec``.

    Network providers come wrapped in ``RetryingModel`` (``retry`` policy, optional shared
    ``cooldown``; ``model_options: {retry: {attempts: 3, base_wait: 0.5, ...}}`` arrives here as a
    dict of RetryPolicy fields). ``opts`` go to the provider: its settings (``price={"input":..,
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
        return RetryingModel(inner, policy=retry, cooldown=cooldown)
    raise AssertionError("check_spec accepted a spec no provider takes")
