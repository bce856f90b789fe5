"""Token accounting, prices and cost: per stage and model, split into what this run paid and what
the build holds."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from radcorpora.llm.errors import ProviderConfigError
from radcorpora.llm.request import LLMResponse, Usage
from radcorpora.schemas.file_errors import yaml_problem


class ModelPrice(BaseModel):
    input: float
    output: float
    cached_input: float | None = None


class PriceTable(BaseModel):
    as_of: str = ""
    batch_discount: float = Field(0.5, ge=0.0, le=1.0)
    models: dict[str, ModelPrice] = Field(default_factory=dict)

    def price_for(self, model: str) -> ModelPrice | None:
        """Exact name first, then the longest listed name the model starts with (dated snapshots
        such as gpt-4o-2024-08-06 price as gpt-4o)."""
        if model in self.models:
            return self.models[model]
        prefixes = [m for m in self.models if model.startswith(m)]
        return self.models[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str, usage: Usage, *, batch: bool = False) -> float | None:
        price = self.price_for(model)
        if price is None:
            return None
        cached = usage.cached_input_tokens
        cached_rate = price.cached_input if price.cached_input is not None else price.input
        usd = ((usage.input_tokens - cached) * price.input + cached * cached_rate
               + usage.output_tokens * price.output) / 1e6
        return usd * (self.batch_discount if batch else 1.0)


def load_prices(path: Path | None = None) -> PriceTable:
    """The packaged table, with entries from `path` (YAML/JSON, same shape) taking precedence."""
    text = resources.files("radcorpora.llm").joinpath("data/prices.yaml").read_text()
    table = PriceTable.model_validate(yaml.safe_load(text))
    if path is None:
        return table
    try:
        override = PriceTable.model_validate({**table.model_dump(exclude={"models"}),
                                              **(yaml.safe_load(Path(path).read_text()) or {})})
    except yaml.YAMLError as exc:
        raise ProviderConfigError(f"{path}: not a price table: not valid YAML ({yaml_problem(exc)})") from None
    except (OSError, ValueError) as exc:  # a user error wherever it is read (a build's session too)
        raise ProviderConfigError(f"{path}: not a price table: {exc}") from exc
    return PriceTable(as_of=override.as_of, batch_discount=override.batch_discount,
                      models={**table.models, **override.models})


TOKEN_FIELDS = ("input_tokens", "output_tokens", "reasoning_tokens", "cached_input_tokens")


class _Tally:
    """Replies, their tokens and their cost (None once any of them is unpriced)."""

    __slots__ = (
        "batch",
        "cached_input_tokens",
        "cost_usd",
        "count",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
    )

    def __init__(self) -> None:
        self.count = self.batch = 0
        self.input_tokens = self.output_tokens = self.reasoning_tokens = self.cached_input_tokens = 0
        self.cost_usd: float | None = 0.0

    def add(self, usage: Usage, cost: float | None, batch: bool) -> None:
        self.count += 1
        self.batch += batch
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        self.cached_input_tokens += usage.cached_input_tokens
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost

    def tokens(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in TOKEN_FIELDS}

    def cost(self) -> float | None:
        return None if self.cost_usd is None else round(self.cost_usd, 6)


class _Entry:
    """One (stage, provider:model): requests handed over, what was paid, what is held."""

    __slots__ = ("billed_errors", "failed", "from_cache", "held", "paid", "repaired", "repairs", "requests")

    def __init__(self) -> None:
        self.requests = self.failed = 0
        self.paid = _Tally()
        self.repairs = self.billed_errors = 0
        self.held = _Tally()
        self.from_cache = self.repaired = 0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "paid": {"replies": self.paid.count, "repairs": self.repairs, "billed_errors": self.billed_errors,
                     "batch": self.paid.batch, **self.paid.tokens(), "cost_usd": self.paid.cost()},
            "held": {"answers": self.held.count, "from_cache": self.from_cache, "repaired": self.repaired,
                     "batch": self.held.batch, **self.held.tokens(), "cost_usd": self.held.cost()},
        }


PaidKind = Literal["reply", "repair", "billed_error"]


class UsageMeter:
    """Token and cost accounting of one build, per (stage, provider:model), in two figures:

    - paid this run: every reply the provider billed in this run, each counted once: first
      replies, replies that failed to parse, their repairs, batch answers, and replies that came
      back unusable and were retried (`LLMError.billed`). Answers read from the cache cost nothing.
    - held: what the answers the build keeps cost when they were bought, once per distinct request
      (cache key), whether bought now or read from the cache (at the cost recorded with the cached
      answer). A repaired answer holds its first reply and its repair. Failed requests hold nothing.

    Stages are the requests' `stage` (a repair counts under the stage of the request it repairs), so
    a verifier that uses the generator's model is still counted as verification.
    """

    def __init__(self, prices: PriceTable):
        self.prices = prices
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._held_keys: set[str] = set()

    def _entry(self, stage: str, model_id: str) -> _Entry:
        entry = self._entries.get((stage, model_id))
        if entry is None:
            entry = self._entries[(stage, model_id)] = _Entry()
        return entry

    def cost(self, provider: str, model: str, usage: Usage, *, batch: bool = False) -> float | None:
        """USD at the current prices (offline answers are free; None: the model has no price)."""
        return 0.0 if provider == "offline" else self.prices.cost(model, usage, batch=batch)

    def paid(self, stage: str, provider: str, model: str, usage: Usage, *, batch: bool = False,
             kind: PaidKind = "reply") -> float | None:
        """Count one billed reply; returns its cost (recorded with the answer when it is cached).
        `model`: the model asked for (a reply may name a dated snapshot of it)."""
        cost = self.cost(provider, model, usage, batch=batch)
        entry = self._entry(stage, f"{provider}:{model}")
        entry.paid.add(usage, cost, batch)
        entry.repairs += kind == "repair"
        entry.billed_errors += kind == "billed_error"
        return cost

    def request(self, stage: str, provider: str, model: str, key: str, replies: Sequence[LLMResponse], *,
                ok: bool, cached: bool) -> None:
        """Count one request handed to the runner (duplicates included) and, the first time its key
        is seen with an answer kept, hold that answer's replies (first reply, then any repair)."""
        entry = self._entry(stage, f"{provider}:{model}")
        entry.requests += 1
        if not ok:
            entry.failed += 1
            return
        if key in self._held_keys:
            return
        self._held_keys.add(key)
        entry.from_cache += cached
        entry.repaired += len(replies) > 1
        usage, cost, batch = replies[0].usage, 0.0, replies[0].batch
        for reply in replies:
            reply_cost = reply.cost_usd if reply.cost_usd is not None else self.cost(
                provider, model, reply.usage, batch=reply.batch)
            cost = None if cost is None or reply_cost is None else cost + reply_cost
            if reply is not replies[0]:
                usage = usage + reply.usage
        entry.held.add(usage, cost, batch)

    def add(self, response: LLMResponse, *, cached: bool, model: str | None = None, stage: str = "unknown") -> None:
        """Older interface: one answer, paid now unless `cached`, and held (not deduplicated)."""
        name = model or response.model
        if not cached:
            response.cost_usd = self.paid(stage, response.provider, name, response.usage, batch=response.batch)
        entry = self._entry(stage, f"{response.provider}:{name}")
        entry.requests += 1
        entry.from_cache += cached
        cost = response.cost_usd if response.cost_usd is not None else self.cost(
            response.provider, name, response.usage, batch=response.batch)
        entry.held.add(response.usage, cost, response.batch)

    def summary(self) -> dict[str, Any]:
        """The figures for manifests and cards:

        {"stages": {STAGE: {"PROVIDER:MODEL": {
              "requests": n, "failed": n,
              "paid": {"replies", "repairs", "billed_errors", "batch", "input_tokens", "output_tokens",
                       "reasoning_tokens", "cached_input_tokens", "cost_usd"},
              "held": {"answers", "from_cache", "repaired", "batch", <the same tokens>, "cost_usd"}}}},
         "paid_this_run": {"replies", <tokens>, "cost_usd"},   # summed over stages and models
         "held": {"answers", <tokens>, "cost_usd"},
         "unpriced_models": ["PROVIDER:MODEL", ...],  # their cost_usd is None, left out of the totals
         "prices_as_of": "...",
         # deprecated, for readers of the older shape: per PROVIDER:MODEL over all stages
         "models": {"PROVIDER:MODEL": {"requests", "from_cache", "batch", <held tokens>,
                                       "cost_usd": held, "cost_usd_this_run": paid}},
         "total_cost_usd": held total, "total_cost_usd_this_run": paid total}

        Token counts include reasoning tokens (in output_tokens) and provider prompt-cache reads
        (in input_tokens) as the providers report them; costs are USD, None where unpriced.
        """
        stages: dict[str, dict[str, Any]] = {}
        paid_total, held_total = _Tally(), _Tally()
        legacy: dict[str, dict[str, Any]] = {}
        unpriced: set[str] = set()
        for (stage, model_id), entry in sorted(self._entries.items()):
            stages.setdefault(stage, {})[model_id] = entry.summary()
            for total, tally in ((paid_total, entry.paid), (held_total, entry.held)):
                total.count += tally.count
                for name in TOKEN_FIELDS:
                    setattr(total, name, getattr(total, name) + getattr(tally, name))
                if tally.cost_usd is None:
                    unpriced.add(model_id)
                else:
                    total.cost_usd = (total.cost_usd or 0.0) + tally.cost_usd
            model = legacy.setdefault(model_id, {"requests": 0, "from_cache": 0, "batch": 0,
                                                 **dict.fromkeys(TOKEN_FIELDS, 0),
                                                 "cost_usd": 0.0, "cost_usd_this_run": 0.0})
            model["requests"] += entry.requests
            model["from_cache"] += entry.from_cache
            model["batch"] += entry.held.batch
            for name in TOKEN_FIELDS:
                model[name] += getattr(entry.held, name)
            for field, tally in (("cost_usd", entry.held), ("cost_usd_this_run", entry.paid)):
                model[field] = None if model[field] is None or tally.cost_usd is None else model[field] + tally.cost_usd
        for model in legacy.values():
            for field in ("cost_usd", "cost_usd_this_run"):
                model[field] = None if model[field] is None else round(model[field], 6)
        priced = [m for m in legacy.values() if m["cost_usd"] is not None]
        if legacy and unpriced.issuperset(legacy):  # nothing priced: no total to give
            paid_total.cost_usd = held_total.cost_usd = None
        return {
            "stages": stages,
            "paid_this_run": {"replies": paid_total.count, **paid_total.tokens(), "cost_usd": paid_total.cost()},
            "held": {"answers": held_total.count, **held_total.tokens(), "cost_usd": held_total.cost()},
            "unpriced_models": sorted(unpriced),
            "prices_as_of": self.prices.as_of,
            "models": legacy,
            "total_cost_usd": round(sum(m["cost_usd"] for m in priced), 6) if priced else None,
            "total_cost_usd_this_run": round(sum(m["cost_usd_this_run"] or 0.0 for m in priced), 6) if priced else None,
        }
