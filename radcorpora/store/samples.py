"""Bounded reads of a finished build for a person to look at (`radcorpora preview`): a seeded
sample of rows, the columns a plot needs, a few examples from the rejects ledger, a line count.

Each read is bounded whatever the build's size: sampled rows come from their own row groups only,
plot columns from all row groups of a small config or a seeded subset of a large one, ledgers are
streamed. Same build + seed -> same rows.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from radcorpora.store.folder import BuildFolderError, open_shard

REJECT_EXAMPLES = 3
REJECT_LINES = 200_000  # rejects.jsonl lines read for examples at most


def num_rows(path: Path) -> int:
    """Rows of a shard, from its footer."""
    return open_shard(path).metadata.num_rows


def sample_rows(paths: list[Path], n: int, seed: str) -> list[tuple[Path, int, dict[str, Any]]]:
    """n rows drawn without replacement by a seeded choice over the shards' footer row counts;
    each read from its own row group only. (shard, row in shard, row), in shard/row order."""
    counts = [num_rows(p) for p in paths]
    total = sum(counts)
    picks = sorted(random.Random(seed).sample(range(total), min(n, total))) if total and n > 0 else []
    chosen: list[tuple[Path, int, dict[str, Any]]] = []
    start = 0
    for path, count in zip(paths, counts):
        mine = [i - start for i in picks if start <= i < start + count]
        start += count
        if not mine:
            continue
        file = open_shard(path)
        group_start = 0
        for g in range(file.metadata.num_row_groups):
            size = file.metadata.row_group(g).num_rows
            inside = [r for r in mine if group_start <= r < group_start + size]
            if inside:
                try:
                    table = file.read_row_group(g)
                except (OSError, pa.ArrowException) as exc:
                    raise BuildFolderError(f"{path}: row group {g} unreadable ({exc})") from exc
                for r in inside:
                    chosen.append((path, r, table.slice(r - group_start, 1).to_pylist()[0]))
            group_start += size
    return chosen


def stat_table(paths: list[Path], columns: list[str], stat_rows: int, seed: str) -> tuple[pa.Table, int, int]:
    """The plot columns of all row groups when the config has at most `stat_rows` rows, else of
    row groups drawn at random until `stat_rows` rows are in hand. (table, rows read, rows in all)."""
    groups = []
    for path in paths:
        file = open_shard(path)
        groups += [(path, g, file.metadata.row_group(g).num_rows) for g in range(file.metadata.num_row_groups)]
    total = sum(n for *_, n in groups)
    if total > stat_rows:
        order = list(range(len(groups)))
        random.Random(seed).shuffle(order)
        taken, rows = [], 0
        for i in order:
            if rows >= stat_rows:
                break
            taken.append(i)
            rows += groups[i][2]
        groups = [groups[i] for i in sorted(taken)]
    tables = []
    by_path: dict[Path, list[int]] = {}
    for path, g, _ in groups:
        by_path.setdefault(path, []).append(g)
    for path, gs in by_path.items():
        try:
            tables.append(open_shard(path).read_row_groups(gs, columns=columns))
        except (OSError, pa.ArrowException) as exc:
            raise BuildFolderError(f"{path}: unreadable ({exc})") from exc
    table = pa.concat_tables(tables) if tables else pa.table({})
    return table, table.num_rows, total


# --------------------------------------------------------------------------- column paths


def path_steps(path: str) -> list[str]:
    """`questions[].question_type` -> ["questions", "[]", "question_type"]."""
    return [s for s in re.split(r"(\[\])|\.", path) if s]


def resolvable(schema: pa.Schema, path: str) -> bool:
    """Whether `path` names a column (and fields / list elements inside it) of `schema`."""
    steps = path_steps(path)
    if not steps or steps[0] not in schema.names:
        return False
    t = schema.field(steps[0]).type
    for step in steps[1:]:
        if step == "[]":
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                return False
            t = t.value_type
        elif pa.types.is_struct(t) and t.get_field_index(step) >= 0:
            t = t.field(t.get_field_index(step)).type
        else:
            return False
    return True


def resolve(table: pa.Table, path: str) -> pa.Array:
    """The values at `path`, lists flattened where the path says `[]`."""
    steps = path_steps(path)
    column = table.column(steps[0])
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    for step in steps[1:]:
        array = pc.list_flatten(array) if step == "[]" else pc.struct_field(array, step)
    return array


# --------------------------------------------------------------------------- streamed ledgers


def read_reject_examples(path: Path, reasons: set[str], per_reason: int = REJECT_EXAMPLES,
                         max_lines: int = REJECT_LINES) -> tuple[dict[str, list[dict[str, Any]]], int, bool]:
    """A few examples per reason, read line by line; stops once every known reason has its
    examples or after `max_lines`. (examples, lines read, whether the file was read to its end or
    every reason was served)."""
    examples: dict[str, list[dict[str, Any]]] = {}
    if not path.exists():
        return examples, 0, True
    lines = 0
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                lines += 1
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = {"reason": "unparsable_reject_line", "detail": line[:200]}
                if not isinstance(entry, dict):
                    entry = {"reason": "unparsable_reject_line", "detail": line[:200]}
                reason = str(entry.get("reason", "?"))
                if len(examples.setdefault(reason, [])) < per_reason:
                    examples[reason].append(entry)
                if reasons and all(len(examples.get(r, [])) >= per_reason for r in reasons):
                    return examples, lines, True
                if lines >= max_lines:
                    return examples, lines, handle.readline() == ""
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildFolderError(f"{path}: unreadable ({exc})") from exc
    return examples, lines, True


def count_lines(path: Path) -> int:
    """Newlines in a file, read in 1 MiB chunks (a ledger of any size)."""
    n = 0
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                n += chunk.count(b"\n")
    except OSError as exc:
        raise BuildFolderError(f"{path}: unreadable ({exc})") from exc
    return n


__all__ = ["REJECT_EXAMPLES", "REJECT_LINES", "count_lines", "num_rows", "path_steps", "read_reject_examples",
           "resolvable", "resolve", "sample_rows", "stat_table"]
