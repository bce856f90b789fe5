"""Derive `datasets.Features` and Arrow schemas from pydantic record models.

The record models are the single source of truth; the Parquet schema, the dataset card's
`dataset_info` and the validators all derive from them through this module.
"""

from __future__ import annotations

import json
import types
import typing
from functools import cache
from typing import Any, Literal, Union

import pyarrow as pa
from pydantic import BaseModel

from radcorpora.schemas.common import ImageData

_SCALARS: dict[type, str] = {str: "string", int: "int64", float: "float64", bool: "bool", bytes: "binary"}


@cache
def features_for(model: type[BaseModel]) -> Any:
    """HF `datasets.Features` of a record model (field order preserved), read back from the
    feature dict `_arrow_for` writes: one derivation serves both."""
    from datasets import Features

    return Features.from_dict(_arrow_for(model)[1])


_ARROW_SCALARS = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
                  "binary": pa.binary()}


def _arrow_for(annotation: Any) -> tuple[pa.DataType, dict[str, Any]]:
    """(Arrow type, HF feature dict) of an annotation, the way `datasets` writes them, without
    importing `datasets` (about a second at start-up, paid by every build and worker)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"only Optional[X] unions are supported, got {annotation!r}")
        return _arrow_for(members[0])
    if origin is Literal:
        kinds = {type(v) for v in typing.get_args(annotation)}
        if len(kinds) != 1:
            raise TypeError(f"mixed-type Literal {annotation!r}")
        dtype = _SCALARS[kinds.pop()]
        return _ARROW_SCALARS[dtype], {"dtype": dtype, "_type": "Value"}
    if origin in (list, tuple) or annotation in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (str,)
        item_type, item_feature = _arrow_for(item)
        return pa.list_(item_type), {"feature": item_feature, "_type": "List"}
    if isinstance(annotation, type) and issubclass(annotation, ImageData):
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())]), {"_type": "Image"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields, feature = [], {}
        for name, field in annotation.model_fields.items():
            column = field.serialization_alias or field.alias or name
            child_type, child_feature = _arrow_for(field.annotation)
            fields.append((column, child_type))
            feature[column] = child_feature
        return pa.struct(fields), feature
    if annotation in _SCALARS:
        dtype = _SCALARS[annotation]
        return _ARROW_SCALARS[dtype], {"dtype": dtype, "_type": "Value"}
    raise TypeError(f"no feature mapping for {annotation!r}")


@cache
def arrow_schema_for(model: type[BaseModel]) -> pa.Schema:
    """Arrow schema of a record model, with the HF feature metadata `datasets` writes, so readers
    restore `Image` and nested features; equal to `features_for(model).arrow_schema` (tested)."""
    struct, feature = _arrow_for(model)
    metadata = {"huggingface": json.dumps({"info": {"features": feature}})}
    return pa.schema(list(struct)).with_metadata(metadata)


def features_yaml_for(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The `features` list of a dataset card's `dataset_info`, as `datasets`'
    `Features._to_yaml_list` writes it, for the feature kinds `_arrow_for` makes (Value, List,
    Image, struct): the card is written at the end of every build, and importing `datasets` for
    it cost about a second. Equal to the `datasets` output for every registered config (tested)."""
    return _feature_yaml(_arrow_for(model)[1])["struct"]


def _feature_yaml(feature: dict[str, Any]) -> dict[str, Any]:
    kind = feature.get("_type")
    if kind == "Value":
        return {"dtype": feature["dtype"]}
    if kind == "Image":
        return {"dtype": "image"}
    if kind == "List":
        inner = _feature_yaml(feature["feature"])
        if list(inner) in (["dtype"], ["struct"]):  # `list: string`, `list: [fields]`
            return {"list": next(iter(inner.values()))}
        return {"list": inner}
    if kind is None:
        return {"struct": [{"name": name, **_feature_yaml(child)} for name, child in feature.items()]}
    raise TypeError(f"no YAML mapping for feature {feature!r}")
