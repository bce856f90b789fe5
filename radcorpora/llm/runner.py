"""Running many requests: cache first, then bounded concurrency under RPM/TPM limits (a pace
that adapts to 429s), retries with backoff that honour retry-after-ms / Retry-After, a bounded number of attempts, timeouts, one repair attempt
for unparseable replies, and a failure ledger. Nothing is dropped: every request ends as an
answer or a ledger entry.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from radcorpora.llm.cache import AnswerCache
from radcorpora.llm.errors import ComplianceError, LLMError
from radcorpora.llm.limits import RateLimiter, RunnerLimits, estimate_input_tokens
from radcorpora.llm.providers import Provider
from radcorpora.llm.request import LLMRequest, LLMResponse, Message
from radcorpora.llm.structured import ParseError
from radcorpora.llm.usage import PaidKind, UsageMeter

_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+: no extra task per call, unlike wait_for

REPAIR_STAGE_SUFFIX = "/repair"


@dataclass
class CallResult:
    request: LLMRequest
    key: str
    response: LLMResponse | None = None
    parsed: Any = None
    error: LLMError | None = None
    attempts: int = 0
    cached: bool = False
    repaired: bool = False
    # the cached replies this answer is made of: the first reply and, when repaired, the repair
    replies: tuple[LLMResponse, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class FailureLedger:
    """Failed requests of a run, written to `build/llm_failures.jsonl` by the caller."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, result: CallResult) -> None:
        assert result.error is not None
        self.entries.append({"id": result.request.id, "stage": result.request.stage, "key": result.key,
                             "kind": result.error.kind, "status": result.error.status,
                             "message": str(result.error), "attempts": result.attempts})

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(e["kind"] for e in self.entries).items()))


def compliance_message(provider: Provider, count: int, example: str) -> str:
    return (f"{count} item(s) (e.g. {example!r}) come from credentialed sources (PhysioNet data use agreement) "
            f"and may only go to a provider you approved for that data; provider {provider.name!r} at "
            f"{provider.endpoint} is not approved. If your agreement allows this provider (for example a "
            f"zero-retention Azure OpenAI deployment), approve it with --approve-credentialed {provider.name} "
            f"(LLMSettings.approve_credentialed=[{provider.name!r}]); otherwise use a local endpoint or the "
            "offline provider. Answers already in the cache need no approval.")


def check_compliance(requests: Sequence[LLMRequest], provider: Provider) -> None:
    """Refuse before anything is sent if credentialed items would go to an unapproved provider.
    Pass only the requests that would be sent (answers read from the cache send nothing)."""
    if provider.approved_for_credentialed:
        return
    blocked = [r.id for r in requests if r.licence_class == "credentialed"]
    if blocked:
        raise ComplianceError(compliance_message(provider, len(blocked), blocked[0]))


Parser = Callable[[str], Any]

COMMIT_TICK_S = 0.25  # how often a run commits buffered answers while it waits on replies


class LLMRunner:
    def __init__(self, provider: Provider, cache: AnswerCache, meter: UsageMeter,
                 limits: RunnerLimits | None = None, ledger: FailureLedger | None = None,
                 cache_only: bool = False, cache_scope: CacheScope = "model"):
        self.provider = provider
        self.cache = cache
        self.meter = meter
        self.limits = limits or RunnerLimits()
        self.ledger = ledger or FailureLedger()
        self.cache_only = cache_only  # answer from the cache or fail; never send
        self.cache_scope = cache_scope  # "model": keys leave the endpoint out; "endpoint": keep it
        self.sent = 0  # HTTP calls actually made (retries included)
        self.limiter: RateLimiter | None = None  # the last run's (its pacer counts cuts and 429s)
        self._jitter = random.Random()  # only timing depends on it, never content

    def key_of(self, request: LLMRequest) -> str:
        return request.cache_key(self.provider.name, self._keyed_endpoint, self.provider.model)

    @property
    def _keyed_endpoint(self) -> str | None:
        return self.provider.endpoint if self.cache_scope == "endpoint" else None

    # ------------------------------------------------------------------ one request

    def _backoff(self, attempt: int) -> float:
        base = min(self.limits.backoff_max_s, self.limits.backoff_base_s * 2 ** (attempt - 1))
        return base * (0.5 + self._jitter.random())

    async def _complete(self, request: LLMRequest) -> LLMResponse:
        if _timeout is None:  # Python 3.10
            return await asyncio.wait_for(self.provider.complete(request), self.limits.timeout_s)
        async with _timeout(self.limits.timeout_s):
            return await self.provider.complete(request)

    async def _call(self, request: LLMRequest, key: str, stage: str, kind: PaidKind, limiter: RateLimiter,
                    gate: asyncio.Semaphore) -> tuple[LLMResponse | None, LLMError | None, int, bool]:
        """(response, error, attempts, cached) for one rendered request. `stage` and `kind` say how
        the replies it pays for are counted (a repair counts under the stage it repairs)."""
        cached = self.cache.get(key)
        if cached is not None:
            return cached, None, 0, True
        if self.cache_only:
            return None, LLMError("refused", "not in the answer cache, and this run may not send requests"), 0, False
        if request.licence_class == "credentialed" and not self.provider.approved_for_credentialed:
            return None, LLMError("refused", compliance_message(self.provider, 1, request.id)), 0, False
        provider, meter = self.provider, self.meter
        estimate = (estimate_input_tokens(request, provider.name) + request.sampling.max_tokens
                    if limiter.tokens is not None else 0)
        attempts = 0
        while True:
            attempts += 1
            async with gate:
                sent_at = await limiter.acquire(estimate)
                self.sent += 1
                try:
                    response = await self._complete(request)
                except (asyncio.TimeoutError, TimeoutError):
                    error: LLMError | None = LLMError("timeout", f"no reply within {self.limits.timeout_s:g} s")
                except LLMError as exc:
                    error = exc
                except Exception as exc:  # noqa: BLE001 - an unexpected failure is recorded, never fatal to the run
                    error = LLMError("client", f"{type(exc).__name__}: {exc}")
                else:
                    error = None
            if error is None:
                limiter.succeeded(sent_at)
                usage = response.usage
                if estimate:
                    limiter.reconcile(estimate, usage.input_tokens + usage.output_tokens)
                response.cost_usd = meter.paid(stage, provider.name, provider.model, usage, batch=response.batch,
                                               kind=kind)
                self.cache.put(key, response, request.stage)
                return response, None, attempts, False
            if error.billed is not None:  # a reply came back and was charged, but is unusable
                meter.paid(stage, provider.name, provider.model, error.billed, kind="billed_error")
            if error.kind == "rate_limit":  # lowers the pace for every sender (see Pacer)
                limiter.refused(sent_at, error.retry_after, error.retry_after_exact)
            if not error.retryable or attempts >= self.limits.max_attempts:
                return None, error, attempts, False
            # this request waits as the server said (retry-after-ms, else Retry-After), else backs off
            delay = error.retry_after if error.retry_after is not None else self._backoff(attempts)
            await asyncio.sleep(delay)

    async def _one(self, request: LLMRequest, key: str, parser: Parser | None, limiter: RateLimiter,
                   gate: asyncio.Semaphore, known: LLMResponse | None = None) -> CallResult:
        result = CallResult(request=request, key=key)
        if known is not None:
            response, error, attempts, cached = known, None, 0, True
        else:
            response, error, attempts, cached = await self._call(request, key, request.stage, "reply", limiter, gate)
        result.attempts, result.cached = attempts, cached
        if error is not None:
            result.error = error
            return result
        assert response is not None
        result.response = response
        result.replies = (response,)
        if parser is None:
            return result
        if hasattr(parser, "for_request"):  # checks that depend on the row (given boxes, ...)
            parser = parser.for_request(request)
        try:
            result.parsed = parser(response.content)
            return result
        except ParseError as first:
            repair = repair_request(request, response.content, first)
            repair_key = self.key_of(repair)
            fixed, error, more, _ = await self._call(repair, repair_key, request.stage, "repair", limiter, gate)
            result.attempts += more
            if error is not None:
                result.error = error
                return result
            assert fixed is not None
            try:
                result.parsed = parser(fixed.content)
            except ParseError as second:
                result.error = LLMError("parse", f"reply not in the required format after one repair: {second}")
                return result
            result.response, result.repaired, result.replies = fixed, True, (response, fixed)
            return result

    # ------------------------------------------------------------------ many requests

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_TICK_S)
            self.cache.commit_if_due()

    async def run(self, requests: Sequence[LLMRequest], parser: Parser | None = None,
                  bought_now: frozenset[str] = frozenset()) -> list[CallResult]:
        """Results in request order. Identical requests (same cache key) are sent once.
        `bought_now`: cached keys paid for by this run (batch answers), accounted as new.

        Answers are read from the cache first; credentialed requests that would be sent are
        checked against the provider's approval before anything is sent. Answers are committed to
        the cache in short batches, and all of them before this returns (see AnswerCache)."""
        keys = [self.key_of(request) for request in requests]
        first_of: dict[str, LLMRequest] = {}
        for key, request in zip(keys, requests):
            first_of.setdefault(key, request)
        known = cached_answers(self.cache, first_of, self.provider, self.cache_scope)
        if not self.cache_only:
            check_compliance([r for k, r in first_of.items() if k not in known], self.provider)
        limiter = self.limiter = RateLimiter(self.limits.rpm, self.limits.tpm)
        gate = asyncio.Semaphore(self.limits.concurrency)
        tasks = [asyncio.ensure_future(self._one(request, key, parser, limiter, gate, known.get(key)))
                 for key, request in first_of.items()]
        committer = asyncio.ensure_future(self._commit_periodically())
        try:
            by_key = dict(zip(first_of, await asyncio.gather(*tasks)))
        finally:
            committer.cancel()
            for task in tasks:
                task.cancel()
            self.cache.commit()
        results: list[CallResult] = []
        for request, key in zip(requests, keys):
            result = by_key[key]
            if key in bought_now:
                result.cached = False
            if result.request is not request:  # a duplicate: same answer, its own id
                result = replace(result, request=request, cached=True)
            results.append(result)
            self._account(result)
        return results

    def _account(self, result: CallResult) -> None:
        self.meter.request(result.request.stage, self.provider.name, self.provider.model, result.key, result.replies,
                           ok=result.error is None, cached=result.cached)
        if result.error is not None:
            self.ledger.add(result)


CacheScope = Literal["model", "endpoint"]


def cached_answers(cache: AnswerCache, first_of: dict[str, LLMRequest], provider: Any,
                   scope: CacheScope = "model") -> dict[str, LLMResponse]:
    """The cached answers of these keys (key -> first request with it). Under scope "model",
    answers cached by earlier versions, whose keys held the endpoint, are found by that key and
    copied under the new one, so a cache from before the change is not paid for again."""
    known = cache.get_many(list(first_of))
    missing = {k: r for k, r in first_of.items() if k not in known}
    if scope == "model" and missing and provider.endpoint:
        legacy = {r.cache_key(provider.name, provider.endpoint, provider.model): k for k, r in missing.items()}
        for old_key, answer in cache.get_many(list(legacy)).items():
            key = legacy[old_key]
            known[key] = answer
            cache.put(key, answer, first_of[key].stage)
    return known


def repair_request(request: LLMRequest, reply: str, error: ParseError) -> LLMRequest:
    """The original conversation, the unusable reply, and what was wrong with it."""
    note = (f"Your reply could not be used: {error}. Reply again with the same content in exactly the "
            "required format, and nothing else.")
    return request.model_copy(update={
        "stage": request.stage + REPAIR_STAGE_SUFFIX,
        "messages": (*request.messages, Message.assistant(reply), Message.user(note)),
    })

