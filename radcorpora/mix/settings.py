"""What a mix is made of: its inputs (a build's config with its weight, how its rows become
examples) and how it mixes them. Every field is part of the mix's fingerprint: the same inputs
(by their shards' checksums) and settings give the same mix."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from radcorpora.schemas.common import LicenceClass

Expand = Literal["row", "question", "instance", "render"]
"""How a source row becomes examples: as it is (conversations + image(s)), one per question of a
multi-question row (radimagenet-vqa `instruct`), one per instance (radvlm), or through its corpus'
conversation of a row stored in its own shape (`ConfigSpec.conversation`: mmrad-ivl, ct-reasoning)."""
Loss = Literal["all_assistant", "final_assistant"]


class MixInput(BaseModel):
    """One `BUILD[:CONFIG][=WEIGHT]` argument, resolved against the build's corpus."""

    source: str  # the build's key among the mix's sources (b0, b1, ...)
    build: str  # the folder's name, as the card shows it
    corpus: str
    config: str
    weight: float | None = Field(None, gt=0)
    expand: Expand = "row"
    loss: Loss = "all_assistant"
    licence_class: LicenceClass = "credentialed"  # the input build's (most restrictive when unknown)
    # expand "render": the corpus' conversation function as `module:function` (what the workers
    # import) and the rendering (variant) it is asked for; absent from the fingerprint otherwise
    render: str | None = None
    rendering: str | None = None

    @model_serializer(mode="wrap")
    def _without_unused_rendering(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in ("render", "rendering"):
            if key in data and data[key] is None:
                del data[key]
        return data


class MixSettings(BaseModel):
    inputs: list[MixInput] = Field(min_length=1)
    seed: int = 0
    by: Literal["rows", "tokens"] = "rows"
    resolve: Literal["none", "drop-train"] = "none"
    allow_leakage: bool = False
    phash_distance: int = 6
    # the leakage found between the inputs when the mix was made: {"cases", "by_kind"} (recorded in the card)
    leakage: dict[str, object] = Field(default_factory=dict)
    # --resolve drop-train: "<source>/<config>" -> the training rows (numbered within the split) left out
    drop: dict[str, list[int]] = Field(default_factory=dict)
    rows_per_shard: int = Field(2000, ge=1)
    image_check: Literal["crc", "full"] = "crc"
