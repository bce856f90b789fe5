"""Derive `datasets.Features` and Arrow schemas from pydantic record models.

The record models are the single source of truth; the Parquet schema, the dataset card's
`dataset_info` and the validators all derive from them through this module.
"""

from __future__ import annotations

import types
import typing
from functools import cache
from typing import Any, Literal, Union

import pyarrow as pa
from datasets import Features, Image, List, Value
from pydantic import BaseModel

from radcorpora.schemas.common import ImageData

_SCALARS: dict[type, str] = {str: "string", int: "int64", float: "float64", bool: "bool", bytes: "binary"}


def _feature_for(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"only Optional[X] unions are supported, got {annotation!r}")
        return _feature_for(members[0])
    if origin is Literal:
        kinds = {type(v) for v in typing.get_args(annotation)}
        if len(kinds) != 1:
            raise TypeError(f"mixed-type Literal {annotation!r}")
        return Value(_SCALARS[kinds.pop()])
    if origin in (list, tuple) or annotation in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (str,)
        return List(_feature_for(item))
    if isinstance(annotation, type) and issubclass(annotation, ImageData):
        return Image()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _struct_for(annotation)
    if annotation in _SCALARS:
        return Value(_SCALARS[annotation])
    raise TypeError(f"no feature mapping for {annotation!r}")


def _struct_for(model: type[BaseModel]) -> dict[str, Any]:
    return {
        (field.serialization_alias or field.alias or name): _feature_for(field.annotation)
        for name, field in model.model_fields.items()
    }


@cache
def features_for(model: type[BaseModel]) -> Features:
    """HF features of a record model (field order preserved)."""
    return Features(_struct_for(model))


def arrow_schema_for(model: type[BaseModel]) -> pa.Schema:
    """Arrow schema of a record model, with HF feature metadata so readers restore `Image`."""
    return features_for(model).arrow_schema
