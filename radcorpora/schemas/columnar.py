"""Vectorised checks of Arrow batches against a record model.

The pydantic models stay the single declaration of every schema; this module derives, from the
same field annotations and `Field` constraints, the checks that hold for every row — the column's
Arrow type, required (non-null) fields at every nesting level, allowed values of `Literal` fields,
string and list length bounds, patterns, numeric bounds — and runs them on whole columns with
pyarrow.compute instead of building one object per row. Cross-field rules (a model's
`model_validator`) are per corpus, written vectorised next to its builder.

A failure names the row and the field path (`conversations[].value`), so the validators can say
shard, row and field.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, Union

import annotated_types
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from radcorpora.schemas.common import ImageData
from radcorpora.schemas.features import arrow_schema_for


@dataclass(frozen=True)
class FieldRule:
    """One derived rule on a (possibly nested) column."""

    path: tuple[str, ...]  # struct field names; "[]" marks a list level
    required: bool
    allowed: tuple[Any, ...] | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    ge: float | None = None
    le: float | None = None

    @property
    def name(self) -> str:
        return ".".join(self.path).replace(".[]", "[]")


@dataclass(frozen=True)
class Violation:
    row: int  # row number within the batch
    field: str
    message: str


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner annotation, optional?)"""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return members[0], len(members) != len(typing.get_args(annotation))
    return annotation, False


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.MinLen):
            found["min_length"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            found["max_length"] = item.max_length
        elif isinstance(item, annotated_types.Ge):
            found["ge"] = item.ge
        elif isinstance(item, annotated_types.Le):
            found["le"] = item.le
        elif getattr(item, "pattern", None):
            found["pattern"] = item.pattern
    return found


def _rules_for(model: type[BaseModel], prefix: tuple[str, ...], parent_required: bool) -> list[FieldRule]:
    rules: list[FieldRule] = []
    for name, info in model.model_fields.items():
        column = info.serialization_alias or info.alias or name
        annotation, optional = _unwrap(info.annotation)
        required = not optional
        path = (*prefix, column)
        limits = _constraints(list(info.metadata))
        origin = typing.get_origin(annotation)
        if origin in (list, tuple):
            (item,) = typing.get_args(annotation)[:1] or (str,)
            rules.append(FieldRule(path, required, min_length=limits.get("min_length"),
                                   max_length=limits.get("max_length")))
            item, _ = _unwrap(item)
            if isinstance(item, type) and issubclass(item, BaseModel) and not issubclass(item, ImageData):
                rules += _rules_for(item, (*path, "[]"), True)
            elif isinstance(item, type) and issubclass(item, ImageData):
                rules.append(FieldRule((*path, "[]", "bytes"), True, min_length=1))
            else:
                rules.append(_leaf_rule((*path, "[]"), item, True, {}))
            continue
        if isinstance(annotation, type) and issubclass(annotation, ImageData):
            rules.append(FieldRule(path, required))
            rules.append(FieldRule((*path, "bytes"), required, min_length=1))
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rules.append(FieldRule(path, required))
            rules += _rules_for(annotation, path, required)
            continue
        rules.append(_leaf_rule(path, annotation, required, limits))
    return rules


def _leaf_rule(path: tuple[str, ...], annotation: Any, required: bool, limits: dict[str, Any]) -> FieldRule:
    allowed = tuple(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else None
    return FieldRule(path, required, allowed=allowed, **limits)


@cache
def field_rules(model: type[BaseModel]) -> tuple[FieldRule, ...]:
    """Every rule the model declares, derived once per model."""
    return tuple(_rules_for(model, (), True))


def _column(table: pa.Table | pa.RecordBatch, path: tuple[str, ...]) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """The values at `path` flattened over list levels, the row each value belongs to, and a
    mask of values whose parents are all present (a null parent makes its children moot)."""
    array: pa.Array = table.column(path[0])
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    rows = np.arange(len(array))
    present = pc.is_valid(array)
    for step in path[1:]:
        if step == "[]":
            parents = pc.list_parent_indices(array).to_numpy()
            present = pc.take(present, pa.array(parents))
            array = pc.list_flatten(array)
            rows = rows[parents]
        else:
            present = pc.and_kleene(present, pc.is_valid(array))
            array = pc.struct_field(array, step)
    return array, rows, present


def check_table(table: pa.Table | pa.RecordBatch, model: type[BaseModel], limit: int = 5) -> tuple[list[Violation], int]:
    """Run every derived rule on the batch; returns up to `limit` violations per rule (with row and
    field) and the total number of violating values."""
    expected = arrow_schema_for(model)
    violations: list[Violation] = []
    total = 0
    if not table.schema.remove_metadata().equals(expected.remove_metadata()):
        return [Violation(0, "<schema>", f"columns/types differ from {model.__name__}")], 1
    for rule in field_rules(model):
        values, rows, parents_present = _column(table, rule.path)
        if not len(values):
            continue
        checks: list[tuple[pa.Array, str]] = []
        if rule.required:
            checks.append((pc.and_(parents_present, pc.is_null(values)), "is missing"))
        valid = pc.and_kleene(parents_present, pc.is_valid(values))
        if rule.allowed is not None:
            checks.append((pc.and_(valid, pc.invert(pc.is_in(values, value_set=pa.array(rule.allowed)))),
                           f"not one of {list(rule.allowed)}"))
        if rule.min_length is not None or rule.max_length is not None:
            if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
                lengths = pc.list_value_length(values)
            elif pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
                lengths = pc.binary_length(values)
            else:
                lengths = pc.utf8_length(values)
            if rule.min_length is not None:
                checks.append((pc.and_(valid, pc.less(lengths, rule.min_length)), f"shorter than {rule.min_length}"))
            if rule.max_length is not None:
                checks.append((pc.and_(valid, pc.greater(lengths, rule.max_length)), f"longer than {rule.max_length}"))
        if rule.pattern is not None:
            checks.append((pc.and_(valid, pc.invert(pc.match_substring_regex(values, rule.pattern))),
                           f"does not match {rule.pattern!r}"))
        if rule.ge is not None:
            checks.append((pc.and_(valid, pc.less(values, rule.ge)), f"below {rule.ge}"))
        if rule.le is not None:
            checks.append((pc.and_(valid, pc.greater(values, rule.le)), f"above {rule.le}"))
        for mask, message in checks:
            bad = np.flatnonzero(mask.fill_null(False).to_numpy(zero_copy_only=False))
            if len(bad):
                total += len(bad)
                for index in bad[:limit]:
                    shown = values[int(index)].as_py() if message.startswith("not one") else None
                    violations.append(Violation(int(rows[index]), rule.name,
                                                f"{message}" + (f" (got {shown!r})" if shown is not None else "")))
    return violations, total
