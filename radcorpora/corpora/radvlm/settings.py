"""radvlm's settings: everything that decides a build's content (its fingerprint), how the CLI's
--tasks and --replication read, and the wording file. A leaf of the package: it imports only the
records module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from radcorpora.corpora.radvlm.records import (
    CONVERSATION_SOURCES,
    CONVERSATION_TASKS,
    DEFAULT_REPLICATION,
    TASK_SOURCES,
    TASKS,
)
from radcorpora.prompts.loader import TemplateSet, load_template_set
from radcorpora.schemas.file_errors import utf8_problem, yaml_problem
from radcorpora.sources.errors import SourceError
from radcorpora.spec.corpus import Cli

CORPUS = "radvlm"
TEMPLATE_SLOTS = ("report_request", "classification_request", "classification_answer", "classification_normal",
                  "anatomy_request", "anatomy_answer", "finding_request", "finding_answer", "detection_request",
                  "detection_none", "phrase_request", "phrase_answer")
PLACEHOLDERS = frozenset({"view", "region", "finding", "phrase", "findings", "boxes"})
CREDENTIALED_SOURCES = frozenset({"mimic-cxr", "chest-imagenome", "vindr-cxr", "ms-cxr"})
SOURCE_FLAGS = {"mimic-cxr": "--mimic-cxr", "chexpert": "--chexpert", "chexpert-plus": "--chexpert-plus",
                "chest-imagenome": "--chest-imagenome", "vindr-cxr": "--vindr-cxr", "ms-cxr": "--ms-cxr",
                "padchest-gr": "--padchest-gr"}
VIEW_WORDS = {"PA": "frontal (PA)", "AP": "frontal (AP)", "FRONTAL": "frontal", "LATERAL": "lateral", "LL": "lateral"}


class RadVLMConfigError(SourceError):
    """Options and sources do not fit (a task without its source, an unknown task)."""


class RadVLMConfig(BaseModel):
    """Everything that decides a build's content (part of its fingerprint)."""

    seed: int = Field(0, description="Seed of every random choice")
    tasks: Annotated[list[str] | None, Cli(parse=lambda text: parse_tasks(text), metavar="TASK,...")] = Field(
        None, description="Comma-separated tasks (default: all the sources allow)")
    uncertain: Literal["absent", "present"] = Field(
        "absent", description="absent (paper) or present: how uncertain CheXpert labels count")
    wbf_iou: float = Field(0.1, gt=0.0, le=1.0, description="IoU threshold of the readers' box fusion (published 0.1)")
    min_readers: int = Field(1, ge=1, description="Readers a fused box needs (1 published, 2 majority)")
    replication: Annotated[dict[str, int], Cli(parse=lambda text: load_replication(Path(text)), metavar="FILE")] = Field(
        default_factory=dict, description="YAML task[/source] -> factor overrides")
    max_side: int | None = Field(None, ge=16, description="Long side of DICOMs converted to PNG (default: full size)")
    anatomical_grounding_samples: int = Field(80_000, ge=0, description="Images of anatomical_grounding (paper: 80,000)")
    images_per_shard: int = Field(1000, ge=1, description="Images per Parquet shard")
    templates_path: Annotated[str | None, Cli(flag="--templates", metavar="FILE")] = Field(
        None, description="Your own wording file (same slots as the packaged one)")
    # The LLM stages. `prior_removal`: "llm" rewrites each report with `llm`; "rules" drops the
    # sentences the prior-study detector flags (no text leaves the machine); "off" keeps the
    # extracted text (the card warns).
    llm: str | None = Field(None, description="PROVIDER:MODEL of prior-study removal and conversations: openai:MODEL "
                                              "(OPENAI_BASE_URL for compatible servers), anthropic:MODEL, "
                                              "azure:DEPLOYMENT, offline")
    prior_removal: Annotated[Literal["llm", "rules", "off"], Cli(auto=lambda given: "llm" if given.get("llm") else "rules")] = (
        Field("rules", description="llm | rules | off: how references to earlier studies leave the reports "
                                   "(default: llm with --llm, else rules)"))
    conversations: int = Field(0, ge=0, description="Standard train conversations to write with --llm (paper: 86,155; "
                                                    "grounded ones come from every MS-CXR / PadChest-GR image)")
    conversation_test: int = Field(500, ge=0, description="Held-out standard conversations (paper: 500)")
    grounded_test: int = Field(155, ge=0, description="Held-out grounded conversations from MS-CXR test (paper: 155)")
    min_rounds: int = Field(5, ge=1, description="Fewest rounds of a conversation")
    max_rounds: int = Field(10, ge=1, description="Most rounds of a conversation")
    verifiers: Annotated[list[str], Cli(flag="--verify", repeat=True, metavar="PROVIDER:MODEL")] = Field(
        default_factory=list, description="Verifier model judging each conversation (repeatable)")
    decisions: Annotated[dict[str, Literal["accept", "reject"]], Cli(hidden=True)] = Field(
        default_factory=dict)  # a person's adjudication (build/adjudication_decisions.jsonl)

    @model_validator(mode="after")
    def _llm_for_llm_stages(self) -> RadVLMConfig:
        if self.prior_removal == "llm" and not self.llm:
            raise ValueError("--prior-removal llm needs --llm PROVIDER:MODEL (or use --prior-removal rules)")
        if self.conversations and not self.llm:
            raise ValueError("--conversations needs --llm PROVIDER:MODEL: conversations are written by an LLM")
        if self.verifiers and not self.conversations:
            raise ValueError("--verify checks conversations: give --conversations N too")
        if self.min_rounds > self.max_rounds:
            raise ValueError(f"min_rounds {self.min_rounds} > max_rounds {self.max_rounds}")
        unknown = [t for t in self.tasks or () if t not in TASKS]
        if unknown:  # said before any source is scanned
            raise ValueError(f"unknown task(s) {', '.join(unknown)} (tasks: {', '.join(TASKS)})")
        return self

    @property
    def uses_llm(self) -> bool:
        return self.prior_removal == "llm" or self.conversations > 0

    def replication_for(self, task: str, source: str, split: str) -> int:
        """How often the training mix repeats an instance. Replication is a training-mix device:
        an evaluation split (test, validation) holds each instance once."""
        if split != "train":
            return 1
        for key in (f"{task}/{source}", task):
            if key in self.replication:
                return self.replication[key]
        return DEFAULT_REPLICATION.get(f"{task}/{source}", 1)


def parse_tasks(tasks: str | None) -> list[str] | None:
    """`--tasks a,b` -> [a, b]; None: every task the sources allow. Conversations are not a task
    but a count (`--conversations N`), and a list with no task in it is refused."""
    if tasks is None:
        return None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise RadVLMConfigError(f"--tasks {tasks!r} names no task (tasks: {', '.join(TASKS)})")
    conversational = [t for t in names if t in CONVERSATION_TASKS or t.startswith("conversation")]
    if conversational:
        raise RadVLMConfigError(
            f"--tasks {','.join(conversational)}: conversations are not a task of --tasks; ask for them with "
            "--conversations N and --llm PROVIDER:MODEL (grounded ones come with --ms-cxr or --padchest-gr)")
    return names


def load_templates(config: RadVLMConfig) -> TemplateSet:
    path = Path(config.templates_path) if config.templates_path else None
    return load_template_set("radvlm", path, TEMPLATE_SLOTS, PLACEHOLDERS, package=__package__)


def load_replication(path: Path | None) -> dict[str, int]:
    """A YAML/JSON mapping `task` or `task/source` -> factor (>= 1)."""
    if path is None:
        return {}
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise RadVLMConfigError(f"{path}: cannot read the replication file ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise RadVLMConfigError(f"{path}: {utf8_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise RadVLMConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(raw, dict):
        raise RadVLMConfigError(f"{path}: expected a mapping of task or task/source to a factor")
    out: dict[str, int] = {}
    feeds = {**TASK_SOURCES, **CONVERSATION_SOURCES}
    for key, value in raw.items():
        task, _, source = str(key).partition("/")
        if task not in feeds:
            raise RadVLMConfigError(f"{path}: unknown task {task!r} (tasks: {', '.join(feeds)})")
        if source and source not in feeds[task]:
            raise RadVLMConfigError(f"{path}: {key}: {task} takes no source {source!r} "
                                    f"(its sources: {', '.join(feeds[task])})")
        if not isinstance(value, int) or value < 1:
            raise RadVLMConfigError(f"{path}: {key}: the factor must be a whole number >= 1, got {value!r}")
        out[str(key)] = value
    return out
