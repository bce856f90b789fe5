"""`radcorpora adjudicate apply`: a person's decisions folded back into a build, sending nothing."""

from __future__ import annotations

from pathlib import Path

import typer

from radcorpora.commands.options import (
    build_named,
)
from radcorpora.commands.ui import USER_ERRORS, fail
from radcorpora.llm.audit import AdjudicationError
from radcorpora.registry import spec_of_build
from radcorpora.store.folder import BuildFolderError


def adjudicate_apply_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder with an adjudication queue (rad-ace-cot, radvlm)"),
    decisions_file: Path = typer.Argument(..., help="The queue file with `decision` filled in, or id,decision lines"),
) -> None:
    """Fold a person's accept/reject decisions on queued items back into the build (sends nothing)."""
    from radcorpora.llm.audit import DECISIONS_FILE, QUEUE_FILE, read_decisions, read_queue
    from radcorpora.llm.session import LLMSettings
    from radcorpora.store.folder import read_manifest
    from radcorpora.store.local_paths import LOCAL_FILE, read_local

    try:
        manifest = read_manifest(build_dir)
        spec = spec_of_build(build_dir)
        if "decisions" not in spec.settings.model_fields:
            raise AdjudicationError(f"{build_dir}: a {spec.name} build has no verification to adjudicate")
        previous = read_decisions(build_dir / DECISIONS_FILE) if (build_dir / DECISIONS_FILE).exists() else {}
        queue_ids = {entry.id for entry in read_queue(build_dir / QUEUE_FILE)} | set(previous)
        given = read_decisions(decisions_file, queue_ids)
        if not given:
            raise AdjudicationError(f"{decisions_file}: no line decides (accept or reject) an item: nothing to apply")
        decisions = {**previous, **given}
        local = read_local(build_dir)  # absolute paths and settings in full, on this machine (never pushed)
        config = spec.settings.model_validate({**(local.get("settings") or manifest["fingerprint"]["config"]),
                                               "decisions": decisions})
        if not local.get("sources"):
            raise BuildFolderError(f"{build_dir}: {LOCAL_FILE} is missing: adjudicate on the machine that built it")
        sources = {k: Path(v) for k, v in local["sources"].items()}
        settings = LLMSettings(cache_path=local.get("llm_cache") or manifest["llm"]["cache_path"], cache_only=True)
    except (*USER_ERRORS, KeyError, ValueError) as exc:
        fail(exc if not isinstance(exc, KeyError) else BuildFolderError(f"{build_dir}: manifest lacks {exc}"))
    build_named(spec.name, sources, config, build_dir, workers=1, overwrite=True, llm_settings=settings)
