"""Errors of the LLM engine, classified for retrying, and key redaction for every message."""

from __future__ import annotations

import os
import re
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from radcorpora.llm.request import Usage

ErrorKind = Literal["rate_limit", "server", "timeout", "connection", "client", "auth", "malformed", "parse",
                    "refused", "batch"]
RETRYABLE: frozenset[str] = frozenset({"rate_limit", "server", "timeout", "connection", "malformed"})

KEY_ENV_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY", "DEEPSEEK_API_KEY")
_KEY_SHAPES = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,})\b")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys (the given ones, those in the usual environment variables, and anything
    shaped like a provider key) from a message before it is logged, stored or raised."""
    for secret in (*secrets, *(os.environ.get(v, "") for v in KEY_ENV_VARS)):
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return _KEY_SHAPES.sub("***", text)


class LLMError(Exception):
    """A failed call, with how to treat it. The message is always redacted.

    `billed`: the usage of a reply that came back (and was charged) but could not be used, e.g. a
    reply cut off before any text; the runner counts it as paid before retrying."""

    def __init__(self, kind: ErrorKind, message: str, *, status: int | None = None,
                 retry_after: float | None = None, billed: Usage | None = None, retry_after_exact: bool = False):
        super().__init__(redact(message))
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.retry_after_exact = retry_after_exact  # given to the millisecond (retry-after-ms)
        self.billed = billed

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class ComplianceError(ValueError):
    """Credentialed data would go to a provider the user has not approved for it."""


class ProviderConfigError(ValueError):
    """A `--llm` spec or provider setting is wrong (unknown provider, missing key, ...)."""


class CacheFileError(ProviderConfigError):
    """`--cache` names a file that is not an answer cache (or a place where none can be made)."""


def parse_retry_after(headers: object) -> float | None:
    """Seconds to wait from Retry-After / retry-after-ms / x-ratelimit-reset-* headers, if any."""
    if headers is None:
        return None
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value = get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        value = get(name)
        if value:
            seconds = _duration_seconds(value)
            if seconds is not None:
                return seconds
    return None


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def _duration_seconds(text: str) -> float | None:
    """OpenAI's reset durations: '1s', '6m0s', '20ms', '1h2m3.5s'."""
    match = _DURATION.match(text.strip())
    if not match or not any(match.groups()):
        return None
    h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def retry_after_is_exact(headers: object) -> bool:
    """Did the server give its wait to the millisecond (`retry-after-ms`, which takes precedence)?"""
    get = getattr(headers, "get", None)
    if get is None:
        return False
    try:
        return float(get("retry-after-ms") or "x") >= 0
    except ValueError:
        return False
