"""Pydantic models: the one source of truth for every record and its Arrow / HF features."""

from radcorpora.schemas.common import (
    ImageData,
    LicenceClass,
    Lineage,
    Reject,
    Turn,
)
from radcorpora.schemas.features import features_for, arrow_schema_for

__all__ = [
    "ImageData",
    "LicenceClass",
    "Lineage",
    "Reject",
    "Turn",
    "features_for",
    "arrow_schema_for",
]
