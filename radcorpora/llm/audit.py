"""Audits: k models judge each item, how far they agree, and the human adjudication queue.

Each auditor returns a Verdict per item. Items every auditor passes are kept, items every auditor
fails are rejected, and items they disagree on (or that an auditor gave no verdict for) go to a
queue file a person fills in (`decision: accept | reject`); `radcorpora adjudicate apply` folds
those decisions back. Agreement is the share of items the auditors agree on unanimously, with
Cohen's kappa for two auditors and Fleiss' kappa for three or more, both from statsmodels.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from radcorpora.schemas.file_errors import utf8_problem

Outcome = Literal["pass", "fail", "disagree"]
# Where a build keeps its queue and a person's decisions (every corpus with auditors).
QUEUE_FILE = "build/adjudication_queue.jsonl"
DECISIONS_FILE = "build/adjudication_decisions.jsonl"
FAILURES_FILE = "build/llm_failures.jsonl"
DECISIONS = ("accept", "reject")


class Verdict(BaseModel):
    """What an auditor model answers about one item."""

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


def _defined(value: float) -> float | None:
    """statsmodels answers NaN where kappa is undefined (every rating in one category: no chance
    agreement left to correct for); we say None rather than print a number that means nothing."""
    return None if math.isnan(value) else float(value)


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters over the same items (statsmodels); None when undefined."""
    if not a or len(a) != len(b):
        return None
    import numpy as np
    from statsmodels.stats.inter_rater import cohens_kappa

    table = np.zeros((2, 2))
    for x, y in zip(a, b):
        table[int(bool(x)), int(bool(y))] += 1
    with warnings.catch_warnings():  # 0/0 when both raters used one category only
        warnings.simplefilter("ignore", RuntimeWarning)
        return _defined(cohens_kappa(table, return_results=False))


def fleiss_kappa(ratings: Sequence[Sequence[bool]]) -> float | None:
    """Fleiss' kappa of items x raters (every item rated by the same number of raters), from
    statsmodels; None when undefined."""
    if not ratings or len({len(r) for r in ratings}) != 1 or len(ratings[0]) < 2:
        return None
    import numpy as np
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as _fleiss

    table, _ = aggregate_raters(np.array([[int(bool(x)) for x in row] for row in ratings]), n_cat=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _defined(_fleiss(table, method="fleiss"))


def agreement(verdicts: dict[str, dict[str, Verdict]]) -> dict[str, Any]:
    """verdicts: item id -> auditor -> verdict. Items judged by every auditor are compared:
    outcomes, percent agreement (unanimous items), Cohen's kappa (2 auditors) or Fleiss' kappa
    (3 or more); kappas are None where undefined."""
    auditors = sorted({v for per_item in verdicts.values() for v in per_item})
    complete = [per_item for _, per_item in sorted(verdicts.items()) if set(per_item) == set(auditors)]
    outcomes = Counter(route(per_item) for per_item in complete)
    report: dict[str, Any] = {"verifiers": auditors, "items": len(complete), "outcomes": dict(sorted(outcomes.items()))}
    if len(auditors) >= 2 and complete:
        report["percent_agreement"] = round(100 * (outcomes["pass"] + outcomes["fail"]) / len(complete), 2)
        ratings = [[item[a].consistent for a in auditors] for item in complete]
        if len(auditors) == 2:
            kappa = cohen_kappa([r[0] for r in ratings], [r[1] for r in ratings])
            report["cohen_kappa"] = None if kappa is None else round(kappa, 4)
        else:
            kappa = fleiss_kappa(ratings)
            report["fleiss_kappa"] = None if kappa is None else round(kappa, 4)
    return report


Settled = Literal["passed", "adjudicated", "verifier_inconsistent", "adjudicator_rejected", "queued"]


def settle(given: dict[str, Verdict], expected: set[str], decision: str | None) -> tuple[Settled, Outcome]:
    """What happens to one audited item: kept (every auditor passed it, or a person accepted
    it), rejected (every auditor failed it, or a person rejected it), or queued for a person
    (auditors disagree, or one gave no verdict). Also the auditors' own route, for agreement."""
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
    except UnicodeDecodeError as exc:
        raise AdjudicationError(f"{path}: {utf8_problem(exc)}") from None
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
        elif "," in line:
            item_id, _, decision = (part.strip() for part in line.partition(","))
        else:
            raise AdjudicationError(f"{path} line {number}: neither a queue entry (a JSON line) nor `id,decision`")
        if queue_ids is not None and item_id not in queue_ids:
            raise AdjudicationError(f"{path} line {number}: {item_id!r} is not in this build's adjudication queue")
        if decision is None or decision == "":
            continue  # not decided yet: stays in the queue
        if decision not in DECISIONS:
            raise AdjudicationError(f"{path} line {number}: decision {decision!r} for {item_id!r}; use accept or reject")
        if decisions.get(item_id, decision) != decision:
            raise AdjudicationError(f"{path} line {number}: {item_id!r} decided twice, differently")
        decisions[item_id] = decision
    return decisions


def read_queue(path: Path) -> list[QueueEntry]:
    entries: list[QueueEntry] = []
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                entries.append(QueueEntry.model_validate_json(line))
            except ValidationError as exc:
                raise AdjudicationError(f"{path} line {number}: not a queue entry: {exc.errors()[0]['msg']}") from exc
    return entries
