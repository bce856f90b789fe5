"""Record parts shared by every corpus: images, conversation turns, lineage, rejects."""

from __future__ import annotations

import builtins
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NOT_BLANK = r"\S"
"""`Field(pattern=NOT_BLANK)`: at least one non-space character (checked per row and per column)."""

LicenceClass = Literal["public", "restricted", "credentialed"]
"""public: openly licensed; restricted: by request / research-use terms (e.g. RadImageNet);
credentialed: PhysioNet-style data use agreement. Credentialed data is never pushed publicly and
never sent to an LLM provider the user has not approved for it."""


class ImageData(BaseModel):
    """An encoded image exactly as read from the source (never re-encoded).

    Maps to `datasets.Image()`; `path` is the source file's name, kept for provenance.
    """

    model_config = ConfigDict(frozen=True)

    bytes: builtins.bytes = Field(min_length=1)
    path: str | None = None


class Turn(BaseModel):
    """One LLaVA-style conversation turn."""

    model_config = ConfigDict(frozen=True)

    from_: Literal["human", "gpt"] = Field(alias="from", serialization_alias="from")
    value: str = Field(pattern=NOT_BLANK)


class Lineage(BaseModel):
    """Where a sample came from and what produced it."""

    model_config = ConfigDict(frozen=True)

    source_dataset: str
    source_id: str
    source_split: str
    licence_class: LicenceClass
    image_sha256: str
    prompt_ids: list[str] = Field(default_factory=list)
    prompt_hashes: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)


class Reject(BaseModel):
    """A source row that did not become a sample, and why. Written to build/rejects.jsonl."""

    model_config = ConfigDict(frozen=True)

    source: str
    row: str | None = None
    reason: str
    detail: str = ""
