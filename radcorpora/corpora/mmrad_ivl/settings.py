"""The settings of an mmrad-ivl build: every field is a build/estimate option and part of the fingerprint."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from radcorpora.corpora.avoid import AvoidSetting, avoid_field
from radcorpora.llm.pipeline import distinct_models, model_id
from radcorpora.llm.request import Sampling
from radcorpora.spec.corpus import Cli

CORPUS = "mmrad-ivl"
LICENCE_CLASS = "credentialed"  # MIMIC-CXR-JPG images and reports (PhysioNet DUA)


def read_expert_sheet(path: str) -> dict[str, int]:
    """id -> expert score (1-5) of a filled fidelity sheet (build/fidelity_sheet.csv); rows left blank
    are skipped. ValueError naming the file and row for anything else (the CLI exits 2)."""
    scores: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"id", "expert_score"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: needs the columns id and expert_score (found: {reader.fieldnames})")
            for row_number, row in enumerate(reader, start=2):
                value = (row.get("expert_score") or "").strip()
                if not value:
                    continue
                if value not in {"1", "2", "3", "4", "5"}:
                    raise ValueError(f"{path} row {row_number}: expert_score {value!r} is not a whole number 1-5")
                scores[row["id"]] = int(value)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{Path(path)}: cannot read the fidelity sheet ({exc})") from exc
    return dict(sorted(scores.items()))


class MmradIvlSettings(BaseModel):
    """Everything that decides a build's content."""

    seed: int = Field(0, description="Seed of every random choice (benchmark split, audit sample)")
    llm: Annotated[str, Cli(required=True, metavar="PROVIDER:MODEL")] = Field(
        "offline", description="Model that summarises each trace and then self-reflects on it against the report: "
                               "openai:MODEL (OPENAI_BASE_URL for compatible servers), anthropic:MODEL, azure:DEPLOYMENT, "
                               "offline")
    auditors: Annotated[list[str], Cli(flag="--auditor", repeat=True, metavar="PROVIDER:MODEL")] = Field(
        default_factory=list, description="Cross-audit model, other than --llm (repeat for several); also the "
                                          "fidelity judge (the first one)")
    box_frame: int = Field(224, ge=1, description="Grid the GEMeX-ThinkVG boxes are written on (pixels per side)")
    crop_margin: float = Field(0.0, ge=0.0, le=1.0,
                               description="Share of a group box's width/height added on each side of its crop")
    audit_sample: int = Field(500, ge=0, description="Traces (seeded sample) the fidelity judge scores 1-5 (0: none)")
    benchmark_fraction: float = Field(0.05, ge=0.0, lt=1.0,
                                      description="Share of the train traces held out as `benchmark`, stratified by steps")
    avoid: AvoidSetting = avoid_field()  # its patients stay out of the benchmark
    expert_scores: Annotated[dict[str, int], Cli(flag="--fidelity-expert", parse=read_expert_sheet, metavar="CSV")] = \
        Field(default_factory=dict, description="The fidelity sheet with a person's expert_score filled in: the "
                                                "manifest and card then give human/AI agreement (nothing is re-sent)")
    sampling: Annotated[Sampling, Cli(hidden=True)] = Sampling(temperature=0.0, max_tokens=1500)
    images_per_shard: int = Field(500, ge=1, description="Traces per Parquet shard")
    decisions: Annotated[dict[str, Literal["accept", "reject"]], Cli(hidden=True)] = Field(default_factory=dict)

    @field_validator("auditors")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return distinct_models(value, "auditor")

    @model_validator(mode="after")
    def _other_models(self) -> MmradIvlSettings:
        """A cross-audit by the model that wrote the trace is no cross-audit (the offline stand-in excepted)."""
        own = model_id(self.llm)
        if not own.startswith("offline:") and own in {model_id(a) for a in self.auditors}:
            raise ValueError(f"auditor {own} is the --llm model; the cross-audit needs another model")
        return self
