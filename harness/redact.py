"""Keep secrets (API keys, tokens) out of everything we write down or show a model."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Shorter strings are too likely to be ordinary words or numbers: redacting them would
# mangle transcripts without protecting anything worth protecting.
MIN_SECRET_LENGTH = 8

# An environment variable whose name matches holds a secret: hidden from the model's commands,
# redacted from what is written down, looked for by the secrets scan of `report`. A name that
# ends by saying it holds a place (TIKTOKEN_CACHE_DIR, which litellm sets on import, or
# SSH_KEY_PATH) holds a path, not the secret itself.
SECRET_NAME = re.compile(r"(?i)(KEY|TOKEN|SECRET|PASSWORD)")
PLACE_NAME = re.compile(r"(?i)_(DIR|PATH|FILE|HOME)$")


def secret_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Name -> value of the variables in ``environ`` whose name looks secret and whose value is
    long enough to be worth redacting (``MIN_SECRET_LENGTH``)."""
    return {k: v for k, v in environ.items() if SECRET_NAME.search(k) and not PLACE_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}


# Credentials written into a URL (`https://user:token@host`, as git echoes a remote's URL).
_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with the credentials of any URL in it replaced by ``***`` and every
    secret of at least 8 characters by ``[REDACTED]``: the one redaction, for what is written
    down (transcripts, logs, faults) and for git's messages."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def redact_data(value: Any, secrets: Iterable[str]) -> Any:
    """``redact`` applied to every string inside nested dicts/lists (keys included)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact_data(k, secrets): redact_data(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v, secrets) for v in value]
    return value
