"""Which source rows a mix takes and in what order, decided before any image is read.

A unit is one source row with the examples it gives (1, or one per question / instance): units
are never split, so the examples of one row (one image) are written side by side and their image
is stored once (mix.build). The train split takes, from each input, a share of the rows (or of
the assistant-turn tokens) given by its weight: the input that runs out first bounds the mix, the
others are sampled without repetition in a seeded order (without weights: every row). Evaluation
splits take every row. Each split then spreads every input's units evenly through it, with a
seeded jitter: unit k of n sits near (k + u) / n. Every random number is a hash of (seed, corpus,
config, row key), so a row's fate does not depend on worker count or on the other inputs' rows."""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from radcorpora.mix.errors import MixError
from radcorpora.mix.settings import MixInput, MixSettings
from radcorpora.schemas.identity import EVAL_SPLITS, TRAIN_SPLITS
from radcorpora.spec.evaluation import EvalContext, Variant
from radcorpora.store.folder import all_shards, open_shard, read_manifest

MIX_SPLITS = (*TRAIN_SPLITS, *EVAL_SPLITS)
_TURNS = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
TOKEN = r"\w+|[^\w\s]"  # a word or a punctuation mark: `--by tokens` counts these in the assistant turns
_TOKEN_RE = re.compile(TOKEN)


class Unit(NamedTuple):
    input: int  # index into MixSettings.inputs
    split: str
    shard: str  # relpath in its build
    row: int  # row within the shard
    split_row: int  # row within its split (shards in order), as `radcorpora leakage` numbers them
    examples: int
    tokens: int
    key: str  # the source row's id


def parse_input(text: str) -> tuple[Path, str | None, float | None]:
    """`BUILD[:CONFIG][=WEIGHT]` -> (build, config or None, weight or None)."""
    weight: float | None = None
    body = text
    if "=" in text:
        body, _, raw = text.rpartition("=")
        try:
            weight = float(raw)
        except ValueError:
            raise MixError(f"{text}: weight {raw!r} is not a number (BUILD[:CONFIG][=WEIGHT])") from None
        if not np.isfinite(weight) or weight <= 0:
            raise MixError(f"{text}: weight must be a number > 0, not {raw}")
    config = None
    head, sep, tail = body.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        body, config = head, tail
    if not body:
        raise MixError(f"{text}: no build folder (BUILD[:CONFIG][=WEIGHT])")
    return Path(body), config, weight


def _is_turns(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) and pa.types.is_struct(kind.value_type) and \
        {f.name for f in kind.value_type} >= {"from", "value"}


def _is_image(kind: pa.DataType) -> bool:
    return pa.types.is_struct(kind) and {f.name for f in kind} >= {"bytes", "path"}


def _holds_bytes(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    if pa.types.is_struct(kind):
        return any(_holds_bytes(f.type) for f in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _holds_bytes(kind.value_type)
    return False


def renderer(item: MixInput, manifest: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An input's conversation of a row stored in its corpus' own shape (expand "render"): the
    function its `render` names, in its `rendering`, over the input build's manifest."""
    module, _, name = (item.render or "").partition(":")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise MixError(f"{item.build}:{item.config}: cannot import its conversation {item.render!r} ({exc})") from None
    context = EvalContext(manifest, Variant(item.rendering or "image", "the rendering the mix asked for"))
    return lambda row: function(row, context)


def shape_problem(schema: pa.Schema, expand: str) -> str | None:
    """Why rows of this schema are not trainable examples (conversations + images), or None."""
    names = set(schema.names)
    if expand == "render":  # the corpus makes the conversation; an example without an image is rejected
        return None if "lineage" in names else "its rows hold no `lineage`"
    image = ("image" in names and _is_image(schema.field("image").type)) or \
        ("images" in names and pa.types.is_list(schema.field("images").type)
         and _is_image(schema.field("images").type.value_type))
    if not image:
        return "its rows hold no `image` or `images` column"
    if expand == "instance":
        kind = schema.field("instances").type if "instances" in names else None
        if kind is None or not (pa.types.is_list(kind) and "conversations" in {f.name for f in kind.value_type}):
            return "its rows hold no `instances` with conversations"
        return None
    if "conversations" not in names or not _is_turns(schema.field("conversations").type):
        return "its rows hold no LLaVA `conversations` column (human/gpt turns)"
    if expand == "question" and "questions" not in names:
        return "its rows hold no `questions` column to give one example per question"
    if "lineage" not in names:
        return "its rows hold no `lineage`"
    return None


def _gpt_tokens(turns: pa.Array) -> np.ndarray:
    """Assistant-turn tokens of each list of turns."""
    flat = pc.list_flatten(turns)
    out = np.zeros(len(turns), dtype=np.int64)
    if not len(flat):
        return out
    counts = np.asarray(pc.count_substring_regex(pc.struct_field(flat, "value"), TOKEN).fill_null(0))
    gpt = np.asarray(pc.equal(pc.struct_field(flat, "from"), "gpt").fill_null(False))
    np.add.at(out, np.asarray(pc.list_parent_indices(turns)), counts * gpt)
    return out


def _gpt_roles(turns: pa.Array) -> np.ndarray:
    """Assistant turns in each list of turns."""
    flat = pc.list_flatten(turns)
    out = np.zeros(len(turns), dtype=np.int64)
    if len(flat):
        gpt = np.asarray(pc.equal(pc.struct_field(flat, "from"), "gpt").fill_null(False)).astype(np.int64)
        np.add.at(out, np.asarray(pc.list_parent_indices(turns)), gpt)
    return out


def read_units(build: Path, number: int, item: MixInput) -> dict[str, list[Unit]]:
    """split -> the units of one input, rows in shard order (no image is read)."""
    units: dict[str, list[Unit]] = {}
    counted: dict[str, int] = {}
    manifest = read_manifest(build) if item.expand == "render" else {}
    for shard in all_shards(build, [item.config]):
        if shard.split not in MIX_SPLITS:
            continue
        parquet = open_shard(shard.path)
        problem = shape_problem(parquet.schema_arrow, item.expand)
        if problem:
            raise MixError(f"{build}:{item.config}: not mixable: {problem} (a mix takes configs of the trainable "
                           "shape: conversations + images)")
        if item.expand == "render":  # the conversations without the image bytes: tokens and turns only
            table = parquet.read(columns=[f.name for f in parquet.schema_arrow if not _holds_bytes(f.type)])
            render = renderer(item, manifest)
            conv = pa.array([render(row)["conversations"] for row in table.to_pylist()], type=_TURNS)
            tokens = _gpt_tokens(conv)
            examples = np.ones(len(conv), dtype=np.int64)
            many = _gpt_roles(conv) > 1
        elif item.expand == "instance":
            table = parquet.read(columns=["id", "instances"])
            instances = table.column("instances").combine_chunks()
            examples = np.asarray(pc.list_value_length(instances).fill_null(0))
            conv = pc.struct_field(pc.list_flatten(instances), "conversations")
            per_instance = _gpt_tokens(conv)
            tokens = np.zeros(len(instances), dtype=np.int64)
            np.add.at(tokens, np.asarray(pc.list_parent_indices(instances)), per_instance)
            many = _gpt_roles(conv) > 1
        else:
            table = parquet.read(columns=["id", "conversations"])
            conv = table.column("conversations").combine_chunks()
            tokens = _gpt_tokens(conv)
            gpt_turns = _gpt_roles(conv)
            examples = gpt_turns if item.expand == "question" else np.ones(len(conv), dtype=np.int64)
            many = gpt_turns > 1 if item.expand == "row" else np.zeros(len(conv), dtype=bool)
        if item.loss == "final_assistant" and many.any():
            row = int(np.flatnonzero(many)[0])
            raise MixError(f"{build}:{item.config}: trains on the final answer only, and {shard.rel(build)} row {row} "
                           "holds several answers: a mix trains on every answer, so it cannot take this config")
        ids = [str(i) for i in table.column("id").to_pylist()]
        start = counted.get(shard.split, 0)
        rel = shard.rel(build)
        units.setdefault(shard.split, []).extend(
            Unit(number, shard.split, rel, r, start + r, int(examples[r]), int(tokens[r]), ids[r])
            for r in range(len(ids)) if examples[r] > 0)
        counted[shard.split] = start + len(ids)
    return units


def uniform(seed: int, purpose: str, item: MixInput, key: str) -> float:
    """A number in [0, 1) from (seed, purpose, corpus, config, row key) alone."""
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{item.corpus}\x1f{item.config}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def select(units: Sequence[Sequence[Unit]], settings: MixSettings) -> list[list[Unit]]:
    """Per input, the training units the mix takes, in their seeded order. Without weights every
    unit; with weights, shares of rows (or tokens) in proportion to them, as many as the input
    that runs out first allows (none is repeated)."""
    ordered = [sorted(us, key=lambda u: (uniform(settings.seed, "select", settings.inputs[u.input], u.key), u.key))
               for us in units]
    weights = [i.weight for i in settings.inputs]
    if any(w is None for w in weights):
        return ordered
    amount = [sum(u.tokens if settings.by == "tokens" else u.examples for u in us) for us in ordered]
    share = np.array(weights, dtype=np.float64) / float(sum(weights))  # type: ignore[arg-type]
    budget = min(a / s for a, s in zip(amount, share))
    chosen = []
    for us, s, total in zip(ordered, share, amount):
        target, taken, kept = s * budget, 0, []
        for unit in us:
            if taken >= total or target - taken <= 1e-9 * max(target, 1):
                break
            size = unit.tokens if settings.by == "tokens" else unit.examples
            if taken + size > target and (taken + size - target) > (target - taken):
                continue  # a smaller unit later may fit better; this one overshoots more than it fills
            kept.append(unit)
            taken += size
        chosen.append(kept)
    return chosen


def interleave(per_input: Sequence[Sequence[Unit]], settings: MixSettings) -> list[Unit]:
    """One sequence of every input's units, each input spread evenly (seeded jitter)."""
    keyed = []
    for units in per_input:
        n = len(units)
        for k, unit in enumerate(units):
            u = uniform(settings.seed, "place", settings.inputs[unit.input], unit.key)
            keyed.append(((k + u) / n, unit.input, unit.key, unit))
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]


def shards_of(units: Sequence[Unit], rows_per_shard: int) -> list[list[Unit]]:
    """Consecutive runs of whole units of about `rows_per_shard` examples each (at least one)."""
    out: list[list[Unit]] = [[]]
    rows = 0
    for unit in units:
        if rows and rows + unit.examples > rows_per_shard:
            out.append([])
            rows = 0
        out[-1].append(unit)
        rows += unit.examples
    return out
