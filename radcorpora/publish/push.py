"""Push a build folder to the Hugging Face Hub, licence-aware.

Credentialed data (PhysioNet-style agreements) is never pushed to a public repository;
restricted data (by-request terms) goes public only when the user says they hold the right to
share it. The token comes from the environment / huggingface_hub login, never from arguments
that end up in logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from radcorpora.validators.layout import read_card_yaml, read_manifest

PUSH_PATTERNS = ["README.md", "data/**/*.parquet", "build/manifest.json", "build/rejects.jsonl", "build/validation.json",
                 "build/reference_check.json"]


class PublishError(RuntimeError):
    """The build may not be pushed as asked; the message says why."""


@dataclass(frozen=True)
class PushPlan:
    repo_id: str
    private: bool
    files: list[str]
    licence_class: str
    corpus: str


def plan_push(build: Path, repo_id: str, private: bool, allow_public_restricted: bool = False) -> PushPlan:
    manifest = read_manifest(build)
    read_card_yaml(build)  # must parse
    validation = manifest.get("validation") or {}
    if not validation.get("valid"):
        raise PublishError(f"{build}: the build did not pass validation; run `radcorpora validate {build}`")
    licence = manifest.get("licence_class", "credentialed")
    if not private and licence == "credentialed":
        raise PublishError(f"{build}: holds credentialed (PhysioNet-licensed) data and can only be pushed to a private repository")
    if not private and licence == "restricted" and not allow_public_restricted:
        raise PublishError(f"{build}: holds data under by-request terms (restricted); push with --private, or "
                           "--allow-public-restricted if you hold the right to redistribute it")
    files = sorted({str(p.relative_to(build)) for pattern in PUSH_PATTERNS for p in build.glob(pattern)})
    return PushPlan(repo_id, private, files, licence, str(manifest.get("corpus")))


def push_build(build: Path, plan: PushPlan, api: Any = None, token: str | None = None,
               revision: str | None = None) -> Any:
    """Create the dataset repo (if needed) and upload the planned files in one call."""
    api = api or HfApi(token=token)
    api.create_repo(plan.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
    return api.upload_folder(
        repo_id=plan.repo_id,
        repo_type="dataset",
        folder_path=str(build),
        allow_patterns=plan.files,
        revision=revision,
        commit_message=f"radcorpora build ({plan.corpus})",
    )
