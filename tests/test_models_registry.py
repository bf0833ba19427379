"""load_model: spec dispatch, credentials from the environment, and lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.models.base import Request
from harness.models.fake_server import FakeServer
from harness.models.registry import load_model
from harness.models.retry import CoolDown, RetryingModel, RetryPolicy

KEY = "sk-env-SECRET-abcdefghijkl"


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_importing_the_registry_does_not_import_litellm() -> None:
    code = (
        "import sys\n"
        "import harness.models.registry as r\n"
        "assert 'litellm' not in sys.modules, 'registry import pulled in litellm'\n"
        "r.load_model('openai/gpt-4o', api_key='k' * 10)\n"
        "r.load_model('anthropic/claude-sonnet-5', api_key='k' * 10)\n"
        "assert 'litellm' not in sys.modules, 'a non-litellm model pulled in litellm'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("spec", "cls", "model"),
    [
        ("anthropic/claude-sonnet-5", "AnthropicModel", "claude-sonnet-5"),
        ("openai/gpt-4o", "OpenAIModel", "gpt-4o"),
        ("litellm/openai/gpt-4o", "LiteLLMModel", "openai/gpt-4o"),
    ],
)
def test_dispatch_on_prefix(spec: str, cls: str, model: str, tmp_path: Path) -> None:
    cd = CoolDown(tmp_path / "cd.json")
    policy = RetryPolicy(attempts=2)
    m = load_model(spec, api_key=KEY, api_base="http://127.0.0.1:9/v1", cooldown=cd, retry=policy)
    assert isinstance(m, RetryingModel) and m.cooldown is cd and m.policy is policy
    assert type(m.inner).__name__ == cls and m.inner.model == model  # type: ignore[attr-defined]
    assert m.name == spec
    assert KEY not in repr(m)


@pytest.mark.parametrize("spec", ["gpt-4o", "bedrock/claude", "anthropic/", "litellm/gpt-4o", "scripted:"])
def test_bad_specs_name_the_accepted_forms(spec: str) -> None:
    with pytest.raises(
        UsageError, match=r"anthropic/<model>, openai/<model>, litellm/<provider>/<model>, scripted:<path>"
    ):
        load_model(spec, api_key=KEY)


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="temperature_typo"):
        load_model("openai/gpt-4o", api_key=KEY, temperature_typo=1)


@pytest.mark.parametrize(
    ("spec", "var"), [("anthropic/claude-sonnet-5", "ANTHROPIC_API_KEY"), ("openai/gpt-4o", "OPENAI_API_KEY")]
)
def test_missing_key_is_a_usage_error_naming_the_variable(spec: str, var: str) -> None:
    with pytest.raises(UsageError, match=var):
        load_model(spec)


def test_local_openai_compatible_server_needs_no_key() -> None:
    script = [{"match": "", "replies": [{"text": "local"}]}]
    with FakeServer(script) as srv:
        model = load_model("openai/llama-3", api_base=srv.openai_base_url)
        reply = model.complete(Request("s", [{"role": "user", "content": [{"type": "text", "text": "x"}]}], []))
    assert reply.text == "local"


@pytest.mark.parametrize(
    ("spec", "key_var", "base_var", "openai"),
    [
        ("anthropic/claude-sonnet-5", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", False),
        ("openai/gpt-4o", "OPENAI_API_KEY", "OPENAI_BASE_URL", True),
    ],
)
def test_key_and_base_url_from_the_environment(
    spec: str, key_var: str, base_var: str, openai: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = [{"match": "", "replies": [{"text": "from env"}]}]
    with FakeServer(script, api_key=KEY) as srv:
        monkeypatch.setenv(key_var, KEY)
        monkeypatch.setenv(base_var, srv.openai_base_url if openai else srv.base_url)
        model = load_model(spec)
        reply = model.complete(Request("s", [{"role": "user", "content": [{"type": "text", "text": "x"}]}], []))
        assert srv.requests[0]["authorized"]
    assert reply.text == "from env"


def test_scripted_spec_loads_the_scripted_model(tmp_path: Path) -> None:
    pytest.importorskip("harness.models.scripted")
    script = tmp_path / "script.yaml"
    script.write_text('- match: "."\n  actions:\n    - finish: "done"\n')
    model = load_model(f"scripted:{script}")
    assert type(model).__name__ == "ScriptedModel"
