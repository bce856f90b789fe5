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

from radcorpora.store.folder import read_card_yaml, read_manifest

PUSH_PATTERNS = ["README.md", "data/**/*.parquet", "build/manifest.json", "build/rejects.jsonl", "build/validation.json",
                 "build/reference_check.json", "build/llm_failures.jsonl", "build/adjudication_queue.jsonl",
                 "build/adjudication_decisions.jsonl", "build/reference_check/*/metrics.json",
                 "build/reference_check/*/predictions.jsonl"]
# Never pushed: build/source_index.parquet (local paths), reference-check weights and checkpoints, build/.state.


class PublishError(RuntimeError):
    """The build may not be pushed as asked; the message says why."""


@dataclass(frozen=True)
class PushPlan:
    repo_id: str
    private: bool
    files: list[str]
    licence_class: str
    corpus: str


def check_repo_id(repo_id: str) -> None:
    """A repo id the Hub accepts (`org/name`), checked locally before anything is sent."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PublishError(f"--repo {repo_id!r} is not a valid Hub repo id ({exc})") from exc
    if "/" not in repo_id:
        raise PublishError(f"--repo {repo_id!r}: give the namespace too, e.g. my-org/{repo_id}")


def require_token() -> str:
    """The Hub token from HF_TOKEN or a `hf auth login`; a clear message before any network call."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then publish again")
    return token


def plan_push(build: Path, repo_id: str, private: bool, allow_public_restricted: bool = False,
              allow_public_demo: bool = False) -> PushPlan:
    manifest = read_manifest(build)
    read_card_yaml(build)  # must parse
    validation = manifest.get("validation") or {}
    if not validation.get("valid"):
        raise PublishError(f"{build}: the build did not pass validation; run `radcorpora validate {build}`")
    splits = manifest.get("splits") or {}
    empty = [c for c in manifest.get("configs_asked") or [] if not sum((splits.get(c) or {}).values())]
    if empty or not any(sum(per.values()) for per in splits.values()):
        raise PublishError(f"{build}: config(s) {', '.join(empty) or 'all'} hold no rows; an empty config is not "
                           "published (rebuild it, or without that config)")
    licence = manifest.get("licence_class", "credentialed")
    if not private and licence == "credentialed":
        raise PublishError(f"{build}: holds credentialed (PhysioNet-licensed) data and can only be pushed to a private repository")
    if not private and licence == "restricted" and not allow_public_restricted:
        raise PublishError(f"{build}: holds data under by-request terms (restricted); push with --private, or "
                           "--allow-public-restricted if you hold the right to redistribute it")
    if not private and str((manifest.get("build") or {}).get("command", "")).startswith("radcorpora demo") \
            and not allow_public_demo:
        raise PublishError(f"{build}: is a demo build (synthetic sources); push it with --private, or "
                           "--allow-public-demo if you really want it public")
    files = sorted({str(p.relative_to(build)) for pattern in PUSH_PATTERNS for p in build.glob(pattern)})
    return PushPlan(repo_id, private, files, licence, str(manifest.get("corpus")))


def push_build(build: Path, plan: PushPlan, api: Any = None, token: str | None = None,
               revision: str | None = None) -> Any:
    """Create the dataset repo (if needed) and upload the planned files in one call."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(plan.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
    return api.upload_folder(
        repo_id=plan.repo_id,
        repo_type="dataset",
        folder_path=str(build),
        allow_patterns=plan.files,
        revision=revision,
        commit_message=f"radcorpora build ({plan.corpus})",
    )
