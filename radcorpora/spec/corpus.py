"""A corpus, declared once: what the CLI, the build lifecycle, `validate`, the card, `estimate`,
`check`, `publish` and the exports read. Each corpus package holds its `SPEC` in
`radcorpora/corpora/<name>/spec.py`, and `radcorpora/registry.py` lists the packages; see
docs/adding-a-corpus.md.

The pieces a spec points at live in their own layers (schemas, builders, validators, publish,
reference_models) and never import the spec: the engine hands each the part it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from radcorpora.schemas.common import LicenceClass
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.spec.evaluation import EvaluationRecipe
from radcorpora.spec.preview import PreviewSpec
from radcorpora.spec.rules import CorpusRules, RowRules


@dataclass(frozen=True)
class Cli:
    """How a settings field reads on the command line, put in its metadata:
    `tasks: Annotated[list[str] | None, Cli(parse=parse_tasks)] = Field(None, description=...)`.
    The CLI makes one option per settings field (help from the field's description), so a flag and
    its help are written once, with the setting."""

    flag: str | None = None  # default: --field-name
    parse: Callable[[str], Any] | None = None  # the option's text -> the field's value (reads a file, splits a list)
    repeat: bool = False  # a list given as a repeated option: --verify A --verify B
    auto: Callable[[dict[str, Any]], Any] | None = None  # the value when the option is not given, from the others
    hidden: bool = False  # not an option: set by the engine (adjudication decisions) or from Python
    required: bool = False  # required on the command line although the model has a default
    metavar: str | None = None


def fixed_licence(licence: LicenceClass) -> Callable[[BaseModel, dict[str, Path]], LicenceClass]:
    """`licence_class` of a corpus whose licence does not depend on its settings or sources."""
    return lambda _settings, _sources: licence


def cli_of(info: Any) -> Cli:
    """The Cli metadata of a pydantic field (a plain one when it has none)."""
    return next((m for m in getattr(info, "metadata", ()) if isinstance(m, Cli)), Cli())


LossIntent = Literal["all_assistant", "final_assistant", "none", "preference"]
"""Which assistant turns are training targets: every one (conversations, per-question VQA),
only the last (a chain of thought answering one question), none (evaluation-only configs)."""


@dataclass(frozen=True)
class ConfigSpec:
    """One Hub config: its record model (the schema), its splits and what trains on it."""

    name: str
    record: type[BaseModel]
    description: str
    splits: tuple[str, ...]
    default: bool = False
    loss: LossIntent = "all_assistant"
    # How a row reads as a training conversation, for a config stored in its own shape (no LLaVA
    # `conversations` column): `(row, EvalContext) -> {id, images, conversations}`, the k-th
    # `<image>` across turns being images[k]. The trainer exports render rows with it.
    conversation: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None


@dataclass(frozen=True)
class SourceOption:
    """A `--flag DIR` a build takes; `key` names it in the builder's `sources` mapping."""

    key: str
    flag: str
    help: str
    required: bool = False
    accepts_file: bool = False  # a single file (a zip, a table) is accepted as well as a folder


@dataclass(frozen=True)
class DemoSpec:
    """How `radcorpora demo` builds this corpus: write its demo sources (in the upstream layouts)
    under a folder and return them, the demo settings, whether its LLM stages run (with the offline
    stand-in), and whether the demo ends with the reference check on it."""

    write_sources: Callable[[Path, dict[str, Any]], dict[str, Path]]
    settings: Callable[[], BaseModel]
    uses_llm: bool = False
    check: bool = False
    check_max_steps: int | None = None  # a shorter reference check, to keep the demo within minutes


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    title: str
    summary: str
    settings: type[BaseModel]  # every field is part of the fingerprint
    configs: tuple[ConfigSpec, ...]
    sources: tuple[SourceOption, ...]
    licence_class: Callable[[BaseModel, dict[str, Path]], LicenceClass]
    prepare: Callable[[dict[str, Path], BaseModel, Callable[[str], None]], Prepared]
    run: Callable[[Prepared, BaseModel, BuildContext], StageOutput]
    rules: CorpusRules  # the corpus' own rules over a whole build (rules.py)
    card: Callable[[dict[str, Any]], Any]  # manifest -> publish.card.CardContent
    row_rules: RowRules | None = None  # vectorised per-row rules (records.py)
    llm_stages: tuple[type, ...] = ()  # its LLMStage classes (listed by `radcorpora corpora`; the builder runs them)
    # `radcorpora estimate`: (sources, settings, log) -> (plan, extra figures such as {"samples": n});
    # plan: [(stage class, model, requests)], or `plan(llm_settings, out)` -> the estimate of a corpus
    # on the LLM pipeline (commands.corpus.run_estimate_command); None for a corpus with no LLM stage.
    estimate: Callable[[dict[str, Path], BaseModel, Callable[[str], None]], tuple[list[Any], dict[str, Any]]] | None = None
    evaluation: EvaluationRecipe | None = None
    exports: dict[str, Callable[..., int]] = field(default_factory=dict)
    demo: DemoSpec | None = None
    preview: PreviewSpec | None = None  # `radcorpora preview`: plots and row renderer (None: from the schema)

    @property
    def records(self) -> dict[str, type[BaseModel]]:
        return {c.name: c.record for c in self.configs}

    @property
    def default_config(self) -> str | None:
        return next((c.name for c in self.configs if c.default), None)

    def config(self, name: str) -> ConfigSpec:
        for config in self.configs:
            if config.name == name:
                return config
        raise KeyError(name)

__all__ = ["BuildContext", "Cli", "ConfigSpec", "CorpusSpec", "DemoSpec", "EvaluationRecipe", "LossIntent", "Prepared", "SourceOption", "StageOutput"]
