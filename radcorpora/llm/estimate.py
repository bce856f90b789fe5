"""Dry-run estimates: requests, tokens (images included), cost online vs batch, and the time the
configured limits imply, before anything is paid. Nothing is sent; no key is needed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from radcorpora.llm.cache import AnswerCache
from radcorpora.llm.limits import RunnerLimits, estimate_input_tokens
from radcorpora.llm.providers import parse_llm_spec
from radcorpora.llm.request import LLMRequest, Usage
from radcorpora.llm.usage import PriceTable


def estimate_stage(spec: str, requests: Sequence[LLMRequest], expected_output_tokens: int, prices: PriceTable,
                   limits: RunnerLimits, cache: AnswerCache | None = None, endpoint: str | None = None,
                   latency_s: float = 20.0, cache_scope: str = "model") -> dict[str, Any]:
    """One model's share of a build. `expected_output_tokens` is a per-request guess (replies are
    capped by max_tokens); `latency_s` a typical reply time, for the concurrency-bound duration.

    Each request is keyed as a build would key it (`cache_scope`, and under "model" also the older
    key with the endpoint, which a build would still read) and looked up in `cache` without
    sending: tokens, cost and time count only what would be sent, once per distinct request."""
    provider, model = parse_llm_spec(spec)
    keyed_endpoint = endpoint if cache_scope == "endpoint" else None
    first_of: dict[str, LLMRequest] = {}
    keys = [r.cache_key(provider, keyed_endpoint, model) for r in requests]
    for key, request in zip(keys, requests):
        first_of.setdefault(key, request)
    answered: set[str] = set()
    if cache is not None:
        answered = set(cache.get_many(list(first_of)))
        if cache_scope == "model" and endpoint is not None:
            legacy = {r.cache_key(provider, endpoint, model): k for k, r in first_of.items() if k not in answered}
            answered |= {legacy[k] for k in cache.get_many(list(legacy))}
    sending = [r for k, r in first_of.items() if k not in answered]
    cached = sum(key in answered for key in keys)
    to_send = len(sending)
    usage = Usage(input_tokens=sum(estimate_input_tokens(r, provider) for r in sending),
                  output_tokens=sum(min(expected_output_tokens, r.sampling.max_tokens) for r in sending))
    image_count = sum(len(r.images()) for r in sending)
    online = 0.0 if provider == "offline" else prices.cost(model, usage)
    batch = 0.0 if provider == "offline" else prices.cost(model, usage, batch=True)
    minutes = {"concurrency": to_send * latency_s / limits.concurrency / 60}
    if limits.rpm:
        minutes["rpm"] = to_send / limits.rpm
    if limits.tpm:
        minutes["tpm"] = (usage.input_tokens + usage.output_tokens) / limits.tpm
    bound = max(minutes, key=minutes.get) if minutes else None
    return {
        "llm": f"{provider}:{model}",
        "requests": len(requests),
        "already_cached": cached,  # requests answered from the cache
        "to_send": to_send,  # distinct requests a build would send (retries and repairs aside)
        "images": image_count,  # in the requests to send
        "estimated_input_tokens": usage.input_tokens,
        "estimated_output_tokens": usage.output_tokens,
        "cost_usd_online": None if online is None else round(online, 4),
        "cost_usd_batch": None if batch is None else round(batch, 4),
        "minutes_online": round(max(minutes.values()), 1) if minutes else 0.0,
        "limited_by": bound,
    }


def total(stages: list[dict[str, Any]]) -> dict[str, Any]:
    def add(field: str) -> float | None:
        values = [s[field] for s in stages]
        return None if any(v is None for v in values) else round(sum(values), 4)

    return {"requests": sum(s["requests"] for s in stages), "to_send": sum(s["to_send"] for s in stages),
            "cost_usd_online": add("cost_usd_online"), "cost_usd_batch": add("cost_usd_batch"),
            "minutes_online": round(sum(s["minutes_online"] for s in stages), 1),
            "note": "estimates: text at ~4 characters per token, images by each provider's published rule; "
                    "batch answers arrive within 24 h"}

