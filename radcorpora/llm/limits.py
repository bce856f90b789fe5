"""Client-side rate limits: requests and tokens per minute as paced token buckets.

Requests are spaced at the RPM rate with a one-request burst, which is also how providers
meter (a 600 RPM limit is enforced as about 10 per second, not 600 in the first second). Tokens
are taken at the estimate before sending and reconciled with the reported usage afterwards. A 429
pauses every sender, not only the one that got it, so one refusal does not become a storm.
"""

from __future__ import annotations

import asyncio
import math
import time

from pydantic import BaseModel, Field

from radcorpora.llm.request import ImagePart, LLMRequest


class RunnerLimits(BaseModel):
    concurrency: int = Field(8, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_attempts: int = Field(5, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)


class _Bucket:
    def __init__(self, per_minute: float, capacity: float):
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (amounts above capacity wait for a full bucket)."""
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None):
        self.requests = _Bucket(rpm, 1.0) if rpm else None
        self.tokens = _Bucket(tpm, max(tpm / 6.0, 1.0)) if tpm else None  # ten seconds' worth of tokens
        self._lock = asyncio.Lock()
        self._paused_until = 0.0

    async def acquire(self, tokens: int) -> None:
        if self.requests is None and self.tokens is None and self._paused_until <= time.monotonic():
            return  # no limits and no 429 pause: nothing to wait for or to book
        async with self._lock:  # one waiter at a time keeps the order fair and the pacing exact
            while True:
                now = time.monotonic()
                wait = max(self._paused_until - now,
                           self.requests.wait_for(1, now) if self.requests else 0.0,
                           self.tokens.wait_for(tokens, now) if self.tokens else 0.0)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.requests:
                self.requests.take(1)
            if self.tokens:
                self.tokens.take(tokens)

    def reconcile(self, estimated: int, actual: int) -> None:
        if self.tokens:
            self.tokens.level += estimated - actual

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)


# --------------------------------------------------------------------------- token estimates

CHARS_PER_TOKEN = 4.0  # rough for English/medical prose; estimates only, reconciled with usage


def image_tokens(provider: str, image: ImagePart) -> int:
    """Image input tokens by each provider's published rule (OpenAI high-detail tiles; Anthropic
    width x height / 750 after fitting 1568 px). Unknown sizes count as 512 x 512."""
    width, height = image.width or 512, image.height or 512
    if provider == "anthropic":
        scale = min(1.0, 1568 / max(width, height))
        return math.ceil(width * scale * height * scale / 750)
    if provider == "offline":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def estimate_input_tokens(request: LLMRequest, provider: str) -> int:
    text = math.ceil(request.text_chars() / CHARS_PER_TOKEN) + 4 * (len(request.messages) + 1)
    return text + sum(image_tokens(provider, image) for image in request.images())
