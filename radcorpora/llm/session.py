"""One build's LLM work: a shared cache, usage meter and failure ledger over any number of
models (a generator, its verifiers), run online or through batch APIs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from radcorpora.llm.batch import BatchRunner
from radcorpora.llm.cache import AnswerCache, default_cache_path
from radcorpora.llm.errors import LLMError
from radcorpora.llm.limits import RunnerLimits
from radcorpora.llm.providers import (
    HttpClientKind,
    OfflineProvider,
    OfflineResponder,
    Provider,
    endpoint_for,
    make_provider,
    parse_llm_spec,
)
from radcorpora.llm.request import LLMRequest, LLMResponse
from radcorpora.llm.runner import CacheScope, CallResult, FailureLedger, LLMRunner, Parser
from radcorpora.llm.usage import UsageMeter, load_prices

APPROVABLE_PROVIDERS = ("openai", "azure", "anthropic")
ANY_PROVIDER = "*"  # what the older `approve_credentialed=True` meant: whichever provider is used


class LLMSettings(BaseModel):
    """How a build talks to models (not part of a build's content fingerprint: the cache key is)."""

    limits: RunnerLimits = Field(default_factory=RunnerLimits)
    batch: bool = False
    batch_poll_s: float = 30.0
    cache_path: str | None = None
    prices_path: str | None = None
    # Providers approved for credentialed (PhysioNet) data, by name: e.g. ["azure"]. Credentialed
    # requests are sent only to these (the offline stand-in always); cached answers need no approval.
    # The older bool is accepted: True approves whichever provider is used, False none.
    approve_credentialed: list[str] = Field(default_factory=list)
    base_url: str | None = None
    cache_only: bool = False  # answer from the cache only (re-finalising a build after adjudication)
    http_client: HttpClientKind = "auto"  # aiohttp transport where installed, else httpx
    # "model": answers are keyed on the model and the rendered request, so a local server restarted
    # on another port answers from the cache; "endpoint": the endpoint is part of the key too
    cache_scope: CacheScope = "model"

    @field_validator("approve_credentialed", mode="before")
    @classmethod
    def _providers(cls, value: object) -> object:
        if isinstance(value, bool):
            return [ANY_PROVIDER] if value else []
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            names = [str(v).strip().lower() for v in value]
            unknown = [n for n in names if n not in (*APPROVABLE_PROVIDERS, "offline", ANY_PROVIDER)]
            if unknown:
                raise ValueError(f"--approve-credentialed {unknown[0]!r}: not a provider; use one of "
                                 f"{', '.join(APPROVABLE_PROVIDERS)}")
            return sorted(set(names))
        return value

    def approves(self, provider: str) -> bool:
        """May credentialed requests be sent to this provider?"""
        return provider == "offline" or ANY_PROVIDER in self.approve_credentialed or provider in self.approve_credentialed


class CacheOnlyProvider:
    """Stands in for a real provider when answers may only come from the cache."""

    approved_for_credentialed = False

    def __init__(self, name: str, endpoint: str, model: str):
        self.name, self.endpoint, self.model = name, endpoint, model

    async def complete(self, request: LLMRequest) -> LLMResponse:
        raise LLMError("refused", "not in the answer cache, and this run may not send requests")

    def batch_body(self, request: LLMRequest) -> dict[str, Any]:
        raise LLMError("refused", "cache-only run")

    def parse_reply(self, body: dict[str, Any], *, batch: bool = False) -> LLMResponse:
        raise LLMError("refused", "cache-only run")

    async def close(self) -> None:
        return None


class LLMSession:
    def __init__(self, settings: LLMSettings, offline: dict[str, OfflineResponder] | None = None,
                 log: Callable[[str], None] | None = None):
        self.settings = settings
        self.cache = AnswerCache(Path(settings.cache_path) if settings.cache_path else default_cache_path())
        self.meter = UsageMeter(load_prices(Path(settings.prices_path) if settings.prices_path else None))
        self.ledger = FailureLedger()
        self.offline = dict(offline or {})
        self.log = log
        self.sent = 0
        # 429s and how the pace answered them, over every run of this session (see limits.Pacer)
        self.pacing = {"refusals": 0, "cuts": 0, "holds": 0}

    def provider(self, spec: str) -> Provider:
        kind, model = parse_llm_spec(spec)
        if kind == "offline":
            return OfflineProvider(model, self.offline)
        if self.settings.cache_only:  # same cache keys, no client and no key needed
            return CacheOnlyProvider(kind, endpoint_for(kind, self.settings.base_url), model)
        return make_provider(spec, approved_for_credentialed=self.settings.approves(kind),
                             timeout=self.settings.limits.timeout_s, base_url=self.settings.base_url,
                             max_connections=self.settings.limits.concurrency, http_client=self.settings.http_client)

    def model_id(self, spec: str) -> str:
        kind, model = parse_llm_spec(spec)
        return f"{kind}:{model}"

    def run(self, spec: str, requests: Sequence[LLMRequest], parser: Parser | None = None) -> list[CallResult]:
        """Answer every request with the model `spec` (cache first); results in request order."""
        provider = self.provider(spec)  # a fresh client per event loop
        runner = LLMRunner(provider, self.cache, self.meter, self.settings.limits, self.ledger,
                           cache_only=self.settings.cache_only, cache_scope=self.settings.cache_scope)

        async def main() -> list[CallResult]:
            try:
                if self.settings.batch and not self.settings.cache_only and not isinstance(provider, OfflineProvider):
                    return await BatchRunner(runner, poll_interval_s=self.settings.batch_poll_s, log=self.log).run(
                        requests, parser)
                return await runner.run(requests, parser)
            finally:
                await provider.close()

        try:
            return asyncio.run(main())
        finally:
            self.sent += runner.sent
            if runner.limiter is not None:
                pacer = runner.limiter.pacer
                for name in self.pacing:
                    self.pacing[name] += getattr(pacer, name)

    def summary(self) -> dict[str, Any]:
        return {"usage": self.meter.summary(), "failures": self.ledger.counts(),
                "failed_requests": len(self.ledger.entries), "requests_sent": self.sent,
                "batch": self.settings.batch}

    def close(self) -> None:
        self.cache.close()
