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
                   latency_s: float = 20.0) -> dict[str, Any]:
    """One model's share of a build. `expected_output_tokens` is a per-request guess (replies are
    capped by max_tokens); `latency_s` a typical reply time, for the concurrency-bound duration."""
    provider, model = parse_llm_spec(spec)
    cached = 0
    if cache is not None and endpoint is not None:
        keys = [r.cache_key(provider, endpoint, model) for r in requests]
        cached = len(cache.get_many(keys))
    to_send = len(requests) - cached
    input_tokens = sum(estimate_input_tokens(r, provider) for r in requests)
    image_count = sum(len(r.images()) for r in requests)
    output = sum(min(expected_output_tokens, r.sampling.max_tokens) for r in requests)
    share = to_send / len(requests) if requests else 0.0
    usage = Usage(input_tokens=round(input_tokens * share), output_tokens=round(output * share))
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
        "already_cached": cached,
        "to_send": to_send,
        "images": image_count,
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

