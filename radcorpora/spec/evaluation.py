"""How a corpus is trained on and evaluated: declared in its spec, carried out by
reference_models (which knows the evaluators by name)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EvaluationRecipe:
    """How a corpus is trained on and evaluated (declared in its corpus spec)."""

    train_config: str  # default config trained on
    eval_config: str  # the held-out config evaluated
    eval_split: str
    evaluator: str  # key in reference_models.evaluate.EVALUATORS
    preset: str  # training preset for real checkpoints
    per_question: frozenset[str] = frozenset()  # configs whose rows expand to one example per question
    per_instance: frozenset[str] = frozenset()  # configs whose rows expand to one example per instance
    alignment_config: str | None = None  # captions for a preset's alignment steps, if the corpus has them
    prompt_renderer: Callable[[dict[str, Any]], Callable[[dict[str, Any]], str]] | None = None
    """manifest -> (eval row -> human turn), the builder's own renderer, so a model is asked as it was taught."""
