"""Client-side rate limits: an adaptive request pace and a tokens-per-minute bucket.

Requests are spaced at the RPM rate with a one-request burst, which is also how providers
meter (a 600 RPM limit is enforced as about 10 per second, not 600 in the first second). The pace
adapts to the server (`Pacer`): a 429 lowers it, a run of successes probes it back up to the
configured RPM, so a client set above the server's real limit settles just under that limit
instead of stalling on each refusal. Tokens are taken at the estimate before sending and
reconciled with the reported usage afterwards.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

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
    def __init__(self, per_minute: float, capacity: float, now: float):
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

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


class Pacer:
    """The request pace, lowered on 429s and probed back up, on the caller's clock (testable
    without sleeping).

    Why: a fixed pace set above the server's limit, with every sender frozen for each 429's whole
    Retry-After, reaches two thirds of a per-second limit (the window fills in half a second, then
    the rounded-up Retry-After of 1 s idles the next second too). Here:

    - a 429 opens an *episode* as long as its Retry-After. The first one cuts the pace: to what the
      server admitted over the last second (sends not refused), times `margin`, when that is below
      the pace (never below `deepest` x pace), else to `beta` x pace. Refusals of requests sent
      before the cut, or within the episode, cut nothing more: they were sent at the old pace or
      into the same full window (TCP's once-per-round rule);
    - senders are not frozen: the refused request waits its own Retry-After (the runner) and the
      others go on at the lowered pace. A wait given to the millisecond (retry-after-ms) holds the
      pace that long, since nothing sent sooner can pass. Otherwise only when `strikes` requests sent at the lowered pace are
      refused within the episode (the server refuses everything: a spent quota) is the pace held
      to the episode's end, so a long block costs a few refusals, not a storm;
    - each success of a request sent after the cut raises the pace, by `recover` per second back up
      to just under the pace that was refused, then by `probe` per second up to the configured
      ceiling: a server that allows more again gets it.

    Without a configured RPM the pace starts unlimited and the first 429 sets it from what was
    sent over the last second. Parameters were chosen on a simulated sliding-window, fixed-window
    and token-bucket server (tests/test_llm_pacing.py); the measured result is in docs/benchmarks.md.
    """

    WINDOW_S = 1.0  # providers meter per second; the admitted rate is counted over this window

    def __init__(self, per_second: float | None, now: float, *, beta: float = 0.8, margin: float = 0.95,
                 deepest: float = 0.5, recover: float = 0.1, probe: float = 0.01, strikes: int = 3,
                 floor_per_s: float = 1 / 60):
        self.ceiling = per_second
        self.rate = per_second  # requests per second now; None: unpaced
        self.beta, self.margin, self.deepest = beta, margin, deepest
        self.recover, self.probe, self.strikes_to_hold, self.floor = recover, probe, strikes, floor_per_s
        self.next_slot = now
        self.last_sent = -math.inf
        self.hold_until = -math.inf
        self.cut_at = -math.inf
        self.episode_end = -math.inf
        self.refused_pace = math.inf  # the pace of the last cut, before it
        self.strikes = 0
        self._sent: deque[float] = deque()  # send times within the last WINDOW_S
        self._refused: deque[float] = deque()  # send times of refused requests within it
        # counts, for reports and tests
        self.cuts = 0
        self.holds = 0
        self.refusals = 0

    def delay(self, now: float) -> float:
        """Seconds until the next request may go (0: now)."""
        slot = self.next_slot if self.rate is not None else -math.inf
        return max(0.0, self.hold_until - now, slot - now)

    def book(self, now: float) -> float:
        """Take the next slot (once `delay` says 0); returns the send time to report back."""
        self.last_sent = now
        self.next_slot = max(now, self.next_slot) + (1.0 / self.rate if self.rate else 0.0)
        self._sent.append(now)
        self._trim(now)
        return now

    def _trim(self, now: float) -> None:
        edge = now - self.WINDOW_S
        while self._sent and self._sent[0] < edge:
            self._sent.popleft()
        while self._refused and self._refused[0] < edge:
            self._refused.popleft()

    def succeeded(self, sent_at: float, now: float) -> None:
        if self.rate is None or sent_at < self.cut_at or (self.ceiling is not None and self.rate >= self.ceiling):
            return  # unpaced, at the ceiling, or sent at an older pace (says nothing about this one)
        gain = self.recover if self.rate < self.refused_pace * self.margin else self.probe
        self.rate += gain  # per success, so `gain` x pace per second
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)

    def refused(self, sent_at: float, now: float, retry_after: float | None, exact: bool = False) -> None:
        """A 429 for the request sent at `sent_at`; `retry_after`: the server's wait, if it said;
        `exact`: said to the millisecond (retry-after-ms), so nothing sent before then can pass."""
        self.refusals += 1
        self._refused.append(sent_at)
        self._trim(now)
        if sent_at < self.cut_at:
            return  # sent before the last cut: that cut answered it
        if exact and retry_after is not None:
            self.hold_until = max(self.hold_until, now + retry_after)
        if now < self.episode_end:  # refused at the lowered pace, within the episode
            self.strikes += 1
            if self.strikes >= self.strikes_to_hold and self.hold_until < self.episode_end:
                self.hold_until = self.episode_end
                self.holds += 1
            return
        admitted = max(len(self._sent) - len(self._refused), 1) / self.WINDOW_S
        current = self.rate if self.rate is not None else len(self._sent) / self.WINDOW_S
        target = max(admitted * self.margin, current * self.deepest) if admitted < current else current * self.beta
        self.refused_pace, self.rate = current, max(self.floor, target)
        self.cuts += 1
        wait = retry_after if retry_after is not None else self.WINDOW_S
        self.cut_at, self.episode_end, self.strikes = now, now + wait, 0
        self.next_slot = max(self.next_slot, self.last_sent + 1.0 / self.rate)


class RateLimiter:
    """The pacer and the token bucket for one run, awaited by every sender."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        now = clock()
        self.pacer = Pacer(rpm / 60.0 if rpm else None, now)
        self.tokens = _Bucket(tpm, max(tpm / 6.0, 1.0), now) if tpm else None  # ten seconds' worth of tokens
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> float:
        """Wait for a request slot (and `tokens`); returns the send time for `succeeded`/`refused`."""
        pacer = self.pacer
        now = self.clock()
        if self.tokens is None and pacer.rate is None and pacer.hold_until <= now:
            return pacer.book(now)  # unpaced and not held: nothing to wait for
        async with self._lock:  # one waiter at a time keeps the order fair and the pacing exact
            while True:
                now = self.clock()
                wait = max(pacer.delay(now), self.tokens.wait_for(tokens, now) if self.tokens else 0.0)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.tokens:
                self.tokens.take(tokens)
            return pacer.book(now)

    def succeeded(self, sent_at: float) -> None:
        self.pacer.succeeded(sent_at, self.clock())

    def refused(self, sent_at: float, retry_after: float | None, exact: bool = False) -> None:
        self.pacer.refused(sent_at, self.clock(), retry_after, exact)

    def reconcile(self, estimated: int, actual: int) -> None:
        if self.tokens:
            self.tokens.level += estimated - actual


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
