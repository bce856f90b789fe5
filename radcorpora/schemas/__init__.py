"""Pydantic models: the one source of truth for every record and its Arrow / HF features."""

from radcorpora.schemas.common import (
    ImageData,
    LicenceClass,
    Lineage,
    Reject,
    Turn,
)
from radcorpora.schemas.features import arrow_schema_for, features_for

__all__ = [
    "ImageData",
    "LicenceClass",
    "Lineage",
    "Reject",
    "Turn",
    "arrow_schema_for",
    "features_for",
]
