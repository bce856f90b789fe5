"""Token accounting, prices and cost: per model, split into what this run paid and what it reused."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from radcorpora.llm.request import LLMResponse, Usage


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
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{path}: not a price table: {exc}") from exc
    return PriceTable(as_of=override.as_of, batch_discount=override.batch_discount,
                      models={**table.models, **override.models})


class ModelUsage(BaseModel):
    requests: int = 0
    from_cache: int = 0
    batch: int = 0
    usage: Usage = Usage()
    cost_usd: float | None = 0.0  # what the answers in this build cost when they were bought
    cost_usd_this_run: float | None = 0.0  # what this run paid (cached answers are free now)


class UsageMeter:
    """Adds up answers as the runner hands them over."""

    def __init__(self, prices: PriceTable):
        self.prices = prices
        self.per_model: dict[str, ModelUsage] = {}

    def add(self, response: LLMResponse, *, cached: bool, model: str | None = None) -> None:
        """`model`: the model asked for (a reply may name a dated snapshot of it)."""
        name = model or response.model
        entry = self.per_model.setdefault(f"{response.provider}:{name}", ModelUsage())
        entry.requests += 1
        entry.from_cache += int(cached)
        entry.batch += int(response.batch)
        entry.usage = entry.usage + response.usage
        cost = 0.0 if response.provider == "offline" else self.prices.cost(name, response.usage, batch=response.batch)
        if cost is None:
            entry.cost_usd = entry.cost_usd_this_run = None
        elif entry.cost_usd is not None:
            entry.cost_usd += cost
            if not cached and entry.cost_usd_this_run is not None:
                entry.cost_usd_this_run += cost

    def summary(self) -> dict[str, Any]:
        models = {name: {**m.model_dump(exclude={"usage"}), **m.usage.model_dump(),
                         "cost_usd": None if m.cost_usd is None else round(m.cost_usd, 6),
                         "cost_usd_this_run": None if m.cost_usd_this_run is None else round(m.cost_usd_this_run, 6)}
                  for name, m in sorted(self.per_model.items())}
        known = [m for m in self.per_model.values() if m.cost_usd is not None]
        return {
            "models": models,
            "total_cost_usd": round(sum(m.cost_usd for m in known), 6) if known else None,
            "total_cost_usd_this_run": round(sum(m.cost_usd_this_run or 0 for m in known), 6) if known else None,
            "unpriced_models": sorted(n for n, m in self.per_model.items() if m.cost_usd is None),
            "prices_as_of": self.prices.as_of,
        }
