"""Verification by one or more models, agreement between them, and the human adjudication queue.

Each verifier returns a Verdict per item. Items every verifier passes are kept, items every
verifier fails are rejected, and items they disagree on go to a queue file a person fills in
(`decision: accept | reject`); `radcorpora adjudicate apply` folds those decisions back.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

Outcome = Literal["pass", "fail", "disagree"]
# Where a build keeps its queue and a person's decisions (every corpus with verifiers).
QUEUE_FILE = "build/adjudication_queue.jsonl"
DECISIONS_FILE = "build/adjudication_decisions.jsonl"
FAILURES_FILE = "build/llm_failures.jsonl"
DECISIONS = ("accept", "reject")


class Verdict(BaseModel):
    """What a verifier model answers about one item."""

    consistent: bool = Field(description="true when the item is consistent with its source")
    reason: str = Field("", description="one sentence on why")


def route(verdicts: dict[str, Verdict]) -> Outcome:
    """Unanimous pass, unanimous fail, or a disagreement for a person to settle."""
    values = {v.consistent for v in verdicts.values()}
    if values == {True}:
        return "pass"
    if values == {False}:
        return "fail"
    return "disagree"


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Chance-corrected agreement of two raters over the same items (None when undefined)."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else None
    return (observed - expected) / (1 - expected)


def agreement(verdicts: dict[str, dict[str, Verdict]]) -> dict[str, Any]:
    """verdicts: item id -> verifier -> verdict. Items judged by every verifier are compared."""
    verifiers = sorted({v for per_item in verdicts.values() for v in per_item})
    complete = [per_item for per_item in verdicts.values() if set(per_item) == set(verifiers)]
    outcomes = Counter(route(per_item) for per_item in complete)
    report: dict[str, Any] = {"verifiers": verifiers, "items": len(complete), "outcomes": dict(sorted(outcomes.items()))}
    if len(verifiers) >= 2 and complete:
        report["percent_agreement"] = round(100 * (outcomes["pass"] + outcomes["fail"]) / len(complete), 2)
    if len(verifiers) == 2 and complete:
        a = [item[verifiers[0]].consistent for item in complete]
        b = [item[verifiers[1]].consistent for item in complete]
        kappa = cohen_kappa(a, b)
        report["cohen_kappa"] = None if kappa is None else round(kappa, 4)
    return report


Settled = Literal["passed", "adjudicated", "verifier_inconsistent", "adjudicator_rejected", "queued"]


def settle(given: dict[str, Verdict], expected: set[str], decision: str | None) -> tuple[Settled, Outcome]:
    """What happens to one verified item: kept (every verifier passed it, or a person accepted
    it), rejected (every verifier failed it, or a person rejected it), or queued for a person
    (verifiers disagree, or one gave no verdict). Also the verifiers' own route, for agreement."""
    verdict_route: Outcome = route(given) if given and set(given) == expected else "disagree"
    if verdict_route == "pass":
        return "passed", verdict_route
    if verdict_route == "fail" and decision is None:
        return "verifier_inconsistent", verdict_route
    if decision == "accept":
        return "adjudicated", verdict_route
    if decision == "reject":
        return "adjudicator_rejected", verdict_route
    return "queued", verdict_route


class QueueEntry(BaseModel):
    """One disagreement for a person: the item, every verdict, and an empty decision to fill in."""

    id: str
    item: dict[str, Any]
    verdicts: dict[str, Verdict]
    decision: Literal["accept", "reject"] | None = None
    note: str = ""


class AdjudicationError(ValueError):
    """A decisions file is malformed; the message names the file and line."""


def read_decisions(path: Path, queue_ids: set[str] | None = None) -> dict[str, Literal["accept", "reject"]]:
    """id -> decision from a JSONL (queue lines with `decision` filled) or CSV-like `id,decision`
    file. Unknown ids, blank or invalid decisions are errors naming the line: nothing is guessed."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AdjudicationError(f"{path}: cannot read decisions: {exc}") from exc
    decisions: dict[str, Literal["accept", "reject"]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#") or line.strip().lower() == "id,decision":
            continue
        if line.lstrip().startswith("{"):
            try:
                raw = json.loads(line)
                item_id, decision = str(raw["id"]), raw.get("decision")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise AdjudicationError(f"{path} line {number}: not a queue entry with an id: {exc}") from exc
        else:
            item_id, _, decision = (part.strip() for part in line.partition(","))
        if decision is None or decision == "":
            continue  # not decided yet: stays in the queue
        if decision not in DECISIONS:
            raise AdjudicationError(f"{path} line {number}: decision {decision!r} for {item_id!r}; use accept or reject")
        if queue_ids is not None and item_id not in queue_ids:
            raise AdjudicationError(f"{path} line {number}: {item_id!r} is not in this build's adjudication queue")
        if decisions.get(item_id, decision) != decision:
            raise AdjudicationError(f"{path} line {number}: {item_id!r} decided twice, differently")
        decisions[item_id] = decision
    return decisions


def read_queue(path: Path) -> list[QueueEntry]:
    entries = []
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                entries.append(QueueEntry.model_validate_json(line))
            except ValidationError as exc:
                raise AdjudicationError(f"{path} line {number}: not a queue entry: {exc.errors()[0]['msg']}") from exc
    return entries
