"""The spec of a mix, so the engine, `validate`, `preview`, `export` and `train` know a mix folder
(its manifest names corpus `mix`) as they know a corpus build. It is not a registered corpus: a
mix is made by `radcorpora mix` from builds, not by `radcorpora build` from sources."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from radcorpora.mix.build import CONFIG, mix_licence, prepare, run
from radcorpora.mix.card import mix_card
from radcorpora.mix.plan import MIX_SPLITS, MixError
from radcorpora.mix.records import MIX_ROW_RULES, MixRecord
from radcorpora.mix.rules import RULES, validate_mix
from radcorpora.mix.settings import MixSettings
from radcorpora.spec.corpus import ConfigSpec, CorpusSpec
from radcorpora.spec.evaluation import EvaluationRecipe
from radcorpora.spec.rules import CorpusRules

MIX_CORPUS = "mix"
NOT_EVALUATED = ("a mix has no benchmark of its own: evaluate a model trained on it on each input build's "
                 "benchmark (radcorpora evaluate BUILD --adapter RUN)")


def _not_evaluated(*_args: Any, **_kwargs: Any) -> Any:
    raise MixError(NOT_EVALUATED)


def _evaluation() -> EvaluationRecipe:
    """Training on the mix's train split (every assistant turn is a target: the inputs' final-answer
    configs hold one answer per row, mix.plan checks), with the generic LoRA preset."""
    declared = {f.name for f in fields(EvaluationRecipe)}
    options: dict[str, Any] = {"train_config": CONFIG, "eval_config": CONFIG, "eval_split": "test", "preset": "radvlm"}
    if "queries" in declared:  # the declarative recipe: nothing to score
        options.update(queries=_not_evaluated, score=_not_evaluated, primary=_not_evaluated,
                       check_refusal=lambda _manifest: NOT_EVALUATED)
    else:
        options["evaluator"] = MIX_CORPUS
    return EvaluationRecipe(**options)


def _not_built(*_args: Any, **_kwargs: Any) -> Any:
    raise MixError("a mix is made with `radcorpora mix`, not built from sources")


MIX_SPEC = CorpusSpec(
    name=MIX_CORPUS,
    title="Training mix",
    summary="The chosen configs of several builds interleaved by weight (radcorpora mix)",
    settings=MixSettings,
    configs=(ConfigSpec(CONFIG, MixRecord, "one training example per row: images + conversations, with its corpus "
                        "and config", MIX_SPLITS, default=True, loss="all_assistant"),),
    sources=(),
    licence_class=mix_licence,
    prepare=prepare,
    run=run,
    rules=CorpusRules(RULES, validate_mix),
    card=mix_card,
    row_rules=MIX_ROW_RULES,
    evaluation=_evaluation(),
)
