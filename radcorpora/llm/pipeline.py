"""A corpus' LLM stages as a graph: declared once, run, stored, resumed, audited and estimated.

A `Node` is one LLM stage and what it consumes: the pipeline's inputs or the parsed outputs of an
earlier node. A stage's `parse` may make several items from one reply (fan-out: one per generated
question); a node with `audit=True` asks each of its models for a Verdict on every item and passes
on the items the auditors (or a person) accept.

Every node's parsed outputs and rejects are stored, one line per (item, model), in
`store_dir/<node>.jsonl`, each line tagged with the request's cache key and a key over that
request, the consumed item's content and the node's `version`. A rerun takes a line whose key
still matches as it is: no request, not even a cache lookup. So a killed run resumes mid-pipeline
(lines are written after every chunk of requests), a changed later stage sends nothing for the
earlier ones, and a changed upstream output re-asks exactly the downstream items made from it.
Failed requests are stored but never reused: a rerun retries them.

Ids: an input's id is `key(input)`; an item a node makes is named after the item it came from:
the same id when one item was made, `<id>/<index>` when several (or `<id>/<item_key(item)>`).
Everything is keyed by id, never by order or worker count.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from radcorpora.llm.audit import QueueEntry, Verdict, agreement, settle
from radcorpora.llm.cache import AnswerCache, default_cache_path
from radcorpora.llm.estimate import estimate_stage, total
from radcorpora.llm.providers import endpoint_for, parse_llm_spec
from radcorpora.llm.request import LLMRequest, LLMResponse
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.llm.structured import ParseError
from radcorpora.llm.usage import load_prices
from radcorpora.schemas.common import Reject
from radcorpora.store import atomic

INPUT = "input"  # what a first-layer node consumes: the items given to `run`
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- items as JSON


def to_json(value: Any) -> Any:
    """The JSON form items are stored and keyed in: pydantic models and dataclasses by field,
    bytes by their sha256, paths as text. Anything else is refused rather than guessed."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_json(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able: give pipeline items as dicts, pydantic models "
                    "or dataclasses of those")


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def request_key(request: LLMRequest, spec: str, settings: Any) -> str:
    """The answer cache's key for `request` sent to `spec`, as the runner computes it."""
    provider, model = parse_llm_spec(spec)
    endpoint = (endpoint_for(provider, getattr(settings, "base_url", None))
                if getattr(settings, "cache_scope", "model") == "endpoint" else None)
    return request.cache_key(provider, endpoint, model)


def model_id(spec: str) -> str:
    provider, model = parse_llm_spec(spec)
    return f"{provider}:{model}"


def distinct_models(specs: list[str], what: str) -> list[str]:
    """A settings validator's check: one verdict per model and item, so a model named twice
    (`openai:x` and `openai:x`) would vote twice. ValueError naming it; the list otherwise."""
    seen = [model_id(v) for v in specs]
    twice = sorted({m for m in seen if seen.count(m) > 1})
    if twice:
        raise ValueError(f"{what} {twice[0]} given twice")
    return specs


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Node:
    """One stage of the graph.

    models: one model, or for an audit the k auditors (each judges every item).
    consumes: INPUT or the name of an earlier node.
    fan_out: items expected per consumed item (for estimates; an audit's pass rate).
    audit: the stage returns a Verdict per item; items go on when the auditors (or a person) accept.
    item_type: pydantic model of the items `parse` makes (None: plain JSON values); stored items
        are read back as this type, so a resumed run hands downstream nodes the same objects.
    item_key: names each made item under its parent id (default: its index when several).
    stand_in: one item like those this node makes from a row, before it has run (estimates of
        the nodes downstream); an audit passes its rows on, so it needs none.
    describe: what a person sees of an item in the adjudication queue (default: the item).
    version: bump when `parse` changes without the prompt changing, to re-parse stored lines.
    join: maps the consumed node's outputs, as (id, item, weight) triples, to this node's items
        (e.g. one item per image from one output per distinct report); applied alike in a run
        (weights 1) and in an estimate (an id of None, a projected item, stays None).
    """

    name: str
    stage: LLMStage
    models: Sequence[str]
    consumes: str = INPUT
    fan_out: float = 1.0
    audit: bool = False
    item_type: type[BaseModel] | None = None
    item_key: Callable[[Any], str] | None = None
    stand_in: Callable[[Any], Any] | None = None
    describe: Callable[[Any], dict[str, Any]] | None = None
    version: str = ""
    join: Callable[[list[tuple[str | None, Any, float]]], list[tuple[str | None, Any, float]]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not _NAME.match(self.name) or self.name == INPUT:
            raise ValueError(f"node name {self.name!r}: use letters, digits, '_', '-' or '.' (and not {INPUT!r})")
        if not self.models:
            raise ValueError(f"node {self.name!r} names no model")
        if len({model_id(m) for m in self.models}) != len(self.models):
            raise ValueError(f"node {self.name!r} names a model twice")
        if len(self.models) > 1 and not self.audit:
            raise ValueError(f"node {self.name!r}: several models only for an audit (audit=True)")
        if self.fan_out < 0:
            raise ValueError(f"node {self.name!r}: fan_out must be >= 0")


@dataclass
class NodeResult:
    """One node's state after a run: what it made, what it rejected, and its figures."""

    name: str
    outputs: dict[str, Any] = field(default_factory=dict)  # item id -> item
    parents: dict[str, str] = field(default_factory=dict)  # item id -> id of the item it was made from
    rejects: dict[str, Reject] = field(default_factory=dict)  # consumed id -> why nothing came of it
    figures: dict[str, Any] = field(default_factory=dict)
    # audits only
    verdicts: dict[str, dict[str, Verdict]] = field(default_factory=dict)  # item id -> model -> verdict
    settled: dict[str, str] = field(default_factory=dict)  # item id -> passed, adjudicated, queued, ...
    agreement: dict[str, Any] = field(default_factory=dict)
    queue: list[QueueEntry] = field(default_factory=list)


@dataclass
class PipelineResult:
    nodes: dict[str, NodeResult]

    def __getitem__(self, name: str) -> NodeResult:
        return self.nodes[name]

    @property
    def queue(self) -> list[QueueEntry]:
        return [entry for node in self.nodes.values() for entry in node.queue]

    @property
    def rejects(self) -> list[Reject]:
        return [r for node in self.nodes.values() for _, r in sorted(node.rejects.items())]

    def figures(self) -> dict[str, Any]:
        """For the manifest, card and preview: per-stage figures, audits, pending adjudication."""
        return {"stages": {name: node.figures for name, node in self.nodes.items()},
                "audits": {name: node.agreement for name, node in self.nodes.items() if node.agreement},
                "adjudication_pending": len(self.queue)}


@dataclass
class _Pending:
    item_id: str
    row: Any
    request: LLMRequest
    request_key: str
    line_key: str


class Pipeline:
    """Nodes in topological order: each consumes INPUT or an earlier node."""

    def __init__(self, nodes: Sequence[Node], key: Callable[[Any], str]):
        self.nodes = tuple(nodes)
        self.key = key
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"two nodes are named {node.name!r}")
            if node.consumes != INPUT and node.consumes not in seen:
                raise ValueError(f"node {node.name!r} consumes {node.consumes!r}, which is not an earlier node")
            seen.add(node.name)
        classes: dict[str, type] = {}
        for node in self.nodes:  # usage, failures and offline stand-ins are found by stage name
            if classes.setdefault(node.stage.name, type(node.stage)) is not type(node.stage):
                raise ValueError(f"two different stages are named {node.stage.name!r}")
        self._audits = [n.name for n in self.nodes if n.audit]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def offline_responders(self) -> dict[str, Any]:
        """stage name -> stand-in answer, for the offline provider (`--llm offline`)."""
        return {node.stage.name: node.stage.offline for node in self.nodes}

    def queue_id(self, node: str, item_id: str) -> str:
        """An item's id in the adjudication queue: the item id, qualified by the node when the
        pipeline has more than one audit."""
        return item_id if len(self._audits) <= 1 else f"{node}:{item_id}"

    # ------------------------------------------------------------------ run

    def run(self, inputs: Iterable[Any], session: Any, store_dir: Path | str,
            decisions: Mapping[str, str] | None = None, *, until: str | None = None,
            chunk_size: int = 256) -> PipelineResult:
        """Run every node (or those up to `until`) with one session; stored lines whose key still
        matches are taken as they are. `decisions`: queue id -> accept | reject."""
        if until is not None and until not in {n.name for n in self.nodes}:
            raise ValueError(f"until={until!r}: no such node")
        store = Path(store_dir)
        store.mkdir(parents=True, exist_ok=True)
        decisions = dict(decisions or {})
        results: dict[str, NodeResult] = {}
        given = _by_id(inputs, self.key)
        for node in self.nodes:
            rows = given if node.consumes == INPUT else results[node.consumes].outputs
            if node.join is not None:
                rows = {i: x for i, x, _ in node.join([(i, x, 1.0) for i, x in rows.items()]) if i is not None}
            results[node.name] = self._run_node(node, rows, session, store, decisions, chunk_size)
            if node.name == until:
                break
        return PipelineResult(results)

    def _run_node(self, node: Node, rows: dict[str, Any], session: Any, store: Path,
                  decisions: dict[str, str], chunk_size: int) -> NodeResult:
        path = store / f"{node.name}.jsonl"
        stored = _read_lines(path)
        meter_before, sent_before = session.meter.summary()["stages"], session.sent
        lines: dict[tuple[str, str], dict[str, Any]] = {}
        counts: Counter[str] = Counter()
        stages: set[str] = set()
        for spec in node.models:
            mid = model_id(spec)
            pending: list[_Pending] = []
            for item_id, row in rows.items():
                request = node.stage.prompt(row)
                stages.add(request.stage)
                rkey = request_key(request, spec, session.settings)
                lkey = _line_key(node, rkey, row)
                old = stored.get((item_id, mid))
                if old is not None and old.get("key") == lkey and "failed" not in old:
                    lines[(item_id, mid)] = old
                    counts["reused"] += 1
                else:
                    pending.append(_Pending(item_id, row, request, rkey, lkey))
            for start in range(0, len(pending), max(1, chunk_size)):
                chunk = pending[start:start + max(1, chunk_size)]
                answers = session.run(spec, [p.request for p in chunk], node.stage.parser())
                for p, result in zip(chunk, answers):
                    lines[(p.item_id, mid)] = _line(p, mid, result, node.stage.parse(p.row, result))
                    counts["requests"] += 1
                    counts["cached"] += result.cached
                    counts["failed"] += not result.ok
                # progress is durable after every chunk, appended (a rewrite per chunk grew with the
                # square of the items); the last line of an item wins when the file is read back
                _append_lines(path, [lines[(p.item_id, mid)] for p in chunk])
        _write_lines(path, lines)  # exactly the current items: stale lines go
        result = (self._settle_audit(node, rows, lines, decisions) if node.audit
                  else self._collect(node, rows, lines))
        result.figures = _figures(node, rows, lines, result, counts, session, meter_before, sent_before, stages)
        return result

    def _collect(self, node: Node, rows: dict[str, Any], lines: dict[tuple[str, str], dict[str, Any]]) -> NodeResult:
        result = NodeResult(node.name)
        mid = model_id(node.models[0])
        for item_id in rows:
            line = lines[(item_id, mid)]
            if "reject" in line:
                result.rejects[item_id] = Reject.model_validate(line["reject"])
                continue
            for out_id, item in _made(node, item_id, line["items"]):
                if out_id in result.outputs:
                    raise ValueError(f"node {node.name!r} made two items with the id {out_id!r}; give it an item_key")
                result.outputs[out_id] = item
                result.parents[out_id] = item_id
        return result

    def _settle_audit(self, node: Node, rows: dict[str, Any], lines: dict[tuple[str, str], dict[str, Any]],
                      decisions: dict[str, str]) -> NodeResult:
        result = NodeResult(node.name)
        expected = {model_id(m) for m in node.models}
        unusable: dict[str, dict[str, str]] = defaultdict(dict)
        for item_id, row in rows.items():
            given: dict[str, Verdict] = {}
            for mid in sorted(expected):
                line = lines[(item_id, mid)]
                verdict = _verdict(line)
                if isinstance(verdict, Verdict):
                    given[mid] = verdict
                else:
                    unusable[item_id][mid] = verdict
            result.verdicts[item_id] = given
            queue_id = self.queue_id(node.name, item_id)
            status, _ = settle(given, expected, decisions.get(queue_id))
            result.settled[item_id] = status
            if status in ("passed", "adjudicated"):
                result.outputs[item_id] = row
                result.parents[item_id] = item_id
            elif status == "queued":
                shown = node.describe(row) if node.describe else {"content": to_json(row)}
                missing = sorted(expected - set(given))
                result.queue.append(QueueEntry(id=queue_id, verdicts=given, item={
                    "stage": node.name, **shown, **({"missing_verdicts": missing, "why_missing": unusable[item_id]}
                                                    if missing else {})}))
            else:
                detail = ("rejected by a person" if status == "adjudicator_rejected"
                          else "; ".join(f"{m}: {v.reason}" for m, v in sorted(given.items())))
                result.rejects[item_id] = Reject(source=node.name, row=item_id, reason=status, detail=detail)
        result.agreement = agreement(result.verdicts)
        result.agreement["settled"] = dict(sorted(Counter(result.settled.values()).items()))
        return result

    # ------------------------------------------------------------------ estimate

    def estimate(self, inputs: Iterable[Any], settings: Any, store_dir: Path | str | None = None,
                 corpus: str = "pipeline", latency_s: float = 20.0) -> dict[str, Any]:
        """What a run would send, per node and model, in the shape `radcorpora estimate` prints.

        Rows whose stored line still matches are `reused_from_build` (nothing sent, counted as
        cached); the others are keyed as a run would key them and looked up in the answer cache,
        and cached answers are parsed, so what they make is known. Nodes downstream of items not
        made yet are sized from each producer's `stand_in` item, weighted by the fan-out factors
        along the way (`expected_items`)."""
        prices = load_prices(Path(settings.prices_path) if getattr(settings, "prices_path", None) else None)
        cache_path = Path(settings.cache_path) if getattr(settings, "cache_path", None) else default_cache_path()
        cache = AnswerCache(cache_path) if cache_path.exists() else None
        store = Path(store_dir) if store_dir is not None else None
        # per node: (id or None when projected, row, weight = expected count it stands for)
        made: dict[str, list[tuple[str | None, Any, float]]] = {}
        given = _by_id(inputs, self.key)
        stages: list[dict[str, Any]] = []
        try:
            for node in self.nodes:
                rows = ([(i, x, 1.0) for i, x in given.items()] if node.consumes == INPUT else made[node.consumes])
                if node.join is not None:
                    rows = node.join(rows)
                stored = _read_lines(store / f"{node.name}.jsonl") if store is not None else {}
                valid: dict[tuple[str, str], dict[str, Any]] = {}
                for spec in node.models:
                    mid = model_id(spec)
                    groups: dict[float, list[LLMRequest]] = defaultdict(list)
                    reused = 0
                    asked: list[tuple[str, Any, LLMRequest, str]] = []
                    for item_id, row, weight in rows:
                        request = node.stage.prompt(row)
                        rkey = request_key(request, spec, settings)
                        line = stored.get((item_id, mid)) if item_id is not None else None
                        if line is not None and "failed" not in line and line.get("key") == _line_key(node, rkey, row):
                            valid[(item_id, mid)] = line
                            reused += 1
                            continue
                        groups[weight].append(request)
                        if item_id is not None:
                            asked.append((item_id, row, request, rkey))
                    # answers already in the cache are parsed, so what is made of them is known exactly
                    answers = cache.get_many([a[3] for a in asked]) if cache is not None and asked else {}
                    for item_id, row, request, rkey in asked:
                        if rkey in answers:
                            line = _line_from_answer(node, row, request, rkey, answers[rkey])
                            if line is not None:
                                valid[(item_id, mid)] = line
                    figures = _merge([_scaled(estimate_stage(spec, reqs, node.stage.expected_output_tokens, prices,
                                                          settings.limits, cache,
                                                          endpoint_for(parse_llm_spec(spec)[0],
                                                                       getattr(settings, "base_url", None)),
                                                          latency_s=latency_s,
                                                          cache_scope=getattr(settings, "cache_scope", "model")),
                                           weight)
                                   for weight, reqs in sorted(groups.items())], spec)
                    figures["requests"] += reused
                    figures["already_cached"] += reused
                    stages.append({"stage": node.name, **figures, "reused_from_build": reused, "fan_out": node.fan_out,
                                   "expected_items": round(sum(w for _, _, w in rows), 2)})
                made[node.name] = self._expected_outputs(node, rows, valid)
        finally:
            if cache is not None:
                cache.close()
        missing = sorted({s["llm"] for s in stages if s["cost_usd_online"] is None})
        result: dict[str, Any] = {"corpus": corpus, "samples": len(given), "stages": stages, "total": total(stages),
                                  "prices_as_of": prices.as_of}
        if missing:
            result["missing_prices"] = missing
        return result

    def _expected_outputs(self, node: Node, rows: list[tuple[str | None, Any, float]],
                          valid: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str | None, Any, float]]:
        """A node's outputs as far as they are known: stored items exactly, the rest projected."""
        out: list[tuple[str | None, Any, float]] = []
        mids = [model_id(m) for m in node.models]
        for item_id, row, weight in rows:
            lines = [valid.get((item_id, m)) for m in mids] if item_id is not None else [None]
            if node.audit:
                if all(lines):  # judged already: known to pass or not (undecided ones count as passing)
                    verdicts = {m: v for m, line in zip(mids, lines) if isinstance(v := _verdict(line), Verdict)}
                    if settle(verdicts, set(mids), None)[0] != "verifier_inconsistent":
                        out.append((item_id, row, weight))
                else:
                    out.append((item_id, row, weight * node.fan_out))
            elif lines[0] is not None:
                if "items" in lines[0]:
                    out.extend((out_id, item, weight) for out_id, item in _made(node, item_id, lines[0]["items"]))
            elif node.fan_out > 0 and any(n.consumes == node.name for n in self.nodes):
                if node.stand_in is None:
                    raise ValueError(f"node {node.name!r} needs a stand_in to estimate the nodes that consume it")
                out.append((None, node.stand_in(row), weight * node.fan_out))
        return out


# --------------------------------------------------------------------------- stored lines


def _by_id(items: Iterable[Any], key: Callable[[Any], str]) -> dict[str, Any]:
    """id -> input, refusing two inputs with one id (their stored lines would overwrite each other)."""
    out: dict[str, Any] = {}
    for item in items:
        item_id = str(key(item))
        if item_id in out:
            raise ValueError(f"two inputs have the id {item_id!r}")
        out[item_id] = item
    return out


def _line_key(node: Node, request_key_: str, row: Any) -> str:
    return _digest({"node": node.name, "request": request_key_, "row": to_json(row), "version": node.version})


def _line(p: _Pending, mid: str, result: CallResult, made: list[Any] | Reject) -> dict[str, Any]:
    line: dict[str, Any] = {"id": p.item_id, "model": mid, "key": p.line_key, "request": p.request_key,
                            "repaired": result.repaired, "cached": result.cached}
    if not result.ok:
        line["failed"] = result.error.kind if result.error is not None else "failed"
    if isinstance(made, Reject):
        line["reject"] = made.model_dump(mode="json")
    else:
        line["items"] = [to_json(x) for x in made]
    cost: float | None = 0.0
    tokens = {"input_tokens": 0, "output_tokens": 0}
    for reply in result.replies:
        tokens["input_tokens"] += reply.usage.input_tokens
        tokens["output_tokens"] += reply.usage.output_tokens
        cost = None if cost is None or reply.cost_usd is None else cost + reply.cost_usd
    if result.replies and result.replies[0].provider == "offline":
        cost = 0.0
    line["usage"] = {**tokens, "cost_usd": cost}
    return line


def _line_from_answer(node: Node, row: Any, request: LLMRequest, rkey: str,
                      answer: LLMResponse) -> dict[str, Any] | None:
    """What a run would store for a cached answer (None when it needs a repair: not known yet)."""
    parser = node.stage.parser()
    if parser is not None and hasattr(parser, "for_request"):
        parser = parser.for_request(request)
    try:
        parsed = parser(answer.content) if parser is not None else None
    except ParseError:
        return None
    made = node.stage.parse(row, CallResult(request=request, key=rkey, response=answer, parsed=parsed, cached=True,
                                            replies=(answer,)))
    if isinstance(made, Reject):
        return {"reject": made.model_dump(mode="json")}
    return {"items": [to_json(x) for x in made]}


def _read_lines(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(item id, model) -> stored line; a torn or foreign line is skipped (it is re-asked)."""
    lines: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.exists():
        return lines
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
            lines[(str(line["id"]), str(line["model"]))] = line
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return lines


def _write_lines(path: Path, lines: Mapping[tuple[str, str], dict[str, Any]]) -> None:
    atomic.write_jsonl(path, [lines[k] for k in sorted(lines)])


def _append_lines(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    """Add lines durably; a line torn by a kill before is ended first, so it stays one bad line
    (skipped when read: that item is asked again), never glued to the next."""
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(("\n" if torn else "") + "".join(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n"
                                                       for line in lines))
        handle.flush()
        os.fsync(handle.fileno())


def _load(node: Node, data: Any) -> Any:
    return node.item_type.model_validate(data) if node.item_type is not None else data


def _made(node: Node, item_id: str, stored: list[Any]) -> list[tuple[str, Any]]:
    items = [_load(node, x) for x in stored]
    if node.item_key is not None:
        return [(f"{item_id}/{node.item_key(item)}", item) for item in items]
    if len(items) == 1:
        return [(item_id, items[0])]
    return [(f"{item_id}/{i}", item) for i, item in enumerate(items)]


def _verdict(line: dict[str, Any] | None) -> Verdict | str:
    """The auditor's verdict in a stored line, or why there is none."""
    if line is None:
        return "no line"
    if "reject" in line:
        return f"{line['reject'].get('reason')}: {line['reject'].get('detail', '')}"
    items = line.get("items") or []
    if len(items) != 1:
        return f"{len(items)} verdicts in one reply"
    try:
        return Verdict.model_validate(items[0])
    except ValidationError as exc:
        return f"not a verdict: {exc.errors()[0]['msg']}"


# --------------------------------------------------------------------------- figures


def _paid(before: dict[str, Any], after: dict[str, Any], stages: set[str], mids: set[str]) -> dict[str, Any]:
    """What the provider billed this node in this run: the meter's change for its stages."""
    out: dict[str, Any] = {"replies": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    for stage in stages:
        for mid in mids:
            now = after.get(stage, {}).get(mid)
            if now is None:
                continue
            was = before.get(stage, {}).get(mid, {"paid": {}})["paid"]
            for name in ("replies", "input_tokens", "output_tokens"):
                out[name] += now["paid"][name] - was.get(name, 0)
            cost_now, cost_was = now["paid"]["cost_usd"], was.get("cost_usd", 0.0)
            out["cost_usd"] = (None if out["cost_usd"] is None or cost_now is None or cost_was is None
                               else out["cost_usd"] + cost_now - cost_was)
    if out["cost_usd"] is not None:
        out["cost_usd"] = round(out["cost_usd"], 6)
    return out


def _figures(node: Node, rows: dict[str, Any], lines: dict[tuple[str, str], dict[str, Any]], result: NodeResult,
             counts: Counter[str], session: Any, meter_before: dict[str, Any], sent_before: int,
             stages: set[str]) -> dict[str, Any]:
    """This run's traffic (requests, reused, cached, sent, failed, paid) and the state the build
    holds (parsed, repaired, rejected, outputs, held tokens and cost) for one node."""
    mids = {model_id(m) for m in node.models}
    held_cost: float | None = 0.0
    held = {"input_tokens": 0, "output_tokens": 0}
    for line in lines.values():
        usage = line.get("usage") or {}
        held["input_tokens"] += usage.get("input_tokens", 0)
        held["output_tokens"] += usage.get("output_tokens", 0)
        cost = usage.get("cost_usd")
        held_cost = None if held_cost is None or cost is None else held_cost + cost
    figures: dict[str, Any] = {
        "models": sorted(mids),
        "consumes": node.consumes,
        "items": len(rows),
        "requests": counts["requests"],
        "reused": counts["reused"],
        "cached": counts["cached"],
        "sent": session.sent - sent_before,
        "failed": counts["failed"],
        "parsed": sum("items" in line and "failed" not in line for line in lines.values()),
        "repaired": sum(bool(line.get("repaired")) for line in lines.values()),
        "rejected": sum("reject" in line for line in lines.values()),
        "outputs": len(result.outputs),
        "fan_out": round(len(result.outputs) / len(rows), 4) if rows else None,
        "expected_fan_out": node.fan_out,
        "paid": _paid(meter_before, session.meter.summary()["stages"], stages, mids),
        "held": {**held, "cost_usd": None if held_cost is None else round(held_cost, 6)},
    }
    if node.audit:
        figures["queued"] = len(result.queue)
    return figures


# --------------------------------------------------------------------------- estimate rows

_COUNTS = ("requests", "already_cached", "to_send", "images", "estimated_input_tokens", "estimated_output_tokens")
_MONEY = ("cost_usd_online", "cost_usd_batch")


def _scaled(row: dict[str, Any], weight: float) -> dict[str, Any]:
    if weight == 1.0:
        return row
    out = dict(row)
    for name in _COUNTS:
        out[name] = round(row[name] * weight)
    for name in _MONEY:
        out[name] = None if row[name] is None else round(row[name] * weight, 4)
    out["minutes_online"] = round(row["minutes_online"] * weight, 1)
    return out


def _merge(rows: list[dict[str, Any]], spec: str) -> dict[str, Any]:
    """One estimate row from groups of requests of one model (exact and projected)."""
    if not rows:
        return {"llm": model_id(spec), **dict.fromkeys(_COUNTS, 0), **dict.fromkeys(_MONEY, 0.0),
                "minutes_online": 0.0, "limited_by": None}
    out = dict(rows[0])
    for row in rows[1:]:
        for name in _COUNTS:
            out[name] += row[name]
        for name in _MONEY:
            out[name] = None if out[name] is None or row[name] is None else round(out[name] + row[name], 4)
        out["minutes_online"] = round(out["minutes_online"] + row["minutes_online"], 1)
    out["limited_by"] = max(rows, key=lambda r: r["minutes_online"])["limited_by"]
    return out
