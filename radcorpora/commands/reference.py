"""`radcorpora train / evaluate / check`: reference models on a build (needs the [train] extra)."""

from __future__ import annotations

from pathlib import Path

from radcorpora.commands.ui import USER_ERRORS, fail
from radcorpora.registry import spec_of_build
from radcorpora.store.folder import BuildFolderError

TRAIN_MISSING = ("the reference-model commands need the training stack: "
                 "pip install torch==2.13.0 'radcorpora[train]' (or a CUDA torch on a GPU machine)")


def train_stack() -> None:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers
    except ImportError as exc:
        fail(RuntimeError(f"{TRAIN_MISSING} ({exc})"))
    # our own progress lines say where training is; transformers' bars for every save and load of
    # the checkpoints in between would bury them
    transformers.utils.logging.disable_progress_bar()


def _model_errors() -> tuple[type[Exception], ...]:
    from radcorpora.reference_models.models import ModelSpecError
    from radcorpora.reference_models.sft import TrainingError

    return (*USER_ERRORS, ModelSpecError, TrainingError)


def _judge(spec: str | None, cache: Path | None, concurrency: int, approve_credentialed: list[str] | None = None):
    if spec is None:
        return None
    from radcorpora.llm.limits import RunnerLimits
    from radcorpora.llm.session import LLMSession, LLMSettings
    from radcorpora.reference_models.judge import Judge

    return Judge(spec, LLMSession(LLMSettings(limits=RunnerLimits(concurrency=concurrency),
                                              cache_path=str(cache) if cache else None,
                                              approve_credentialed=list(approve_credentialed or []))))


def _recipe(build_dir: Path):

    spec = spec_of_build(build_dir)
    if spec.evaluation is None:
        raise BuildFolderError(f"{build_dir}: corpus {spec.name!r} has no reference-model recipe")
    return spec.evaluation


def _loss_intent(build_dir: Path, config: str) -> str:
    """The trained config's loss intent, as the corpus declares it (and the exports carry it)."""

    spec = spec_of_build(build_dir)
    loss = spec.config(config).loss if config in spec.records else "all_assistant"
    if loss == "none":
        raise BuildFolderError(f"{build_dir}: config {config!r} is evaluation-only (loss intent 'none'); train on another")
    return loss
