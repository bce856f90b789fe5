"""The build check: train a reference model on a build's training split, evaluate it on the
held-out config, do the same for a text-only twin (images withheld), and pass only when the image
model beats the twin by the margin. A corpus whose answers do not depend on its images fails.

Everything lands in the build folder: `build/reference_check.json` (both models' metrics, the
gap, settings, times), per-sample predictions under `build/reference_check/`, and a "Reference
check" section in the dataset card. A killed check resumes its training runs when started again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from radcorpora.publish.card import reference_check_text, upsert_card_section
from radcorpora.reference_models.data import (
    EvaluationRecipe,
    alignment_examples,
    corpus_of,
    evaluation_rows,
    training_examples,
    training_texts,
)
from radcorpora.reference_models.evaluate import EVALUATORS, Evaluator
from radcorpora.reference_models.judge import Judge
from radcorpora.reference_models.models import resolve_model
from radcorpora.reference_models.sft import (
    PRESETS,
    SettingsChanged,
    SFTConfig,
    TrainingError,
    load_trained,
    train,
)
from radcorpora.store.atomic import write_json, write_jsonl
from radcorpora.store.folder import config_shards, read_manifest

VARIANTS = {"image": False, "text-only": True}  # variant -> images withheld


class CheckConfig(BaseModel):
    model: str = "tiny"
    margin: float = Field(5.0, description="points (0-100 scale) the image model must beat the text-only twin by")
    preset: str | None = None  # default: tiny-check for the tiny model, the corpus recipe otherwise
    max_steps: int | None = Field(None, ge=1)
    eval_limit: int | None = Field(None, ge=1)
    seed: int = 0


def default_preset(model: str, recipe: EvaluationRecipe) -> str:
    return "tiny-check" if model == "tiny" else recipe.preset


def sft_config(config: CheckConfig, recipe: EvaluationRecipe) -> SFTConfig:
    name = config.preset or default_preset(config.model, recipe)
    if name not in PRESETS:
        raise TrainingError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    update: dict[str, Any] = {"seed": config.seed}
    if config.max_steps:
        update["max_steps"] = config.max_steps
    return PRESETS[name].model_copy(update=update)


def run_check(build: Path, config: CheckConfig, recipe: EvaluationRecipe, judge: Judge | None = None,
              log: Callable[[str], None] | None = None, versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the check and return what was written to `build/reference_check.json`."""
    build = Path(build)
    say = log or (lambda _: None)
    started_at, started = datetime.now(timezone.utc), time.time()
    corpus = corpus_of(build)
    evaluator = EVALUATORS[recipe.evaluator]
    work = _work_folder(build)
    sft = sft_config(config, recipe)
    examples = training_examples(build, recipe)
    captions = alignment_examples(build, recipe)
    rows = evaluation_rows(build, recipe, limit=config.eval_limit)
    judged = judged_rows(build, recipe, evaluator, judge, config.eval_limit)
    render = recipe.prompt_renderer(read_manifest(build)) if recipe.prompt_renderer else None
    base = resolve_model(config.model, work, lambda: training_texts(build, recipe), seed=config.seed)
    say(f"reference check of {build} ({corpus}): {len(examples)} training examples, {len(rows)} held-out rows, "
        f"model {config.model}, {sft.method} fine-tuning")
    results: dict[str, Any] = {}
    for variant, text_only in VARIANTS.items():
        out = work / variant
        t0 = time.time()
        log_variant = (lambda m, v=variant: say(f"[{v}] {m}"))
        try:
            trained = train(base, examples, out, sft, text_only=text_only, log=log_variant, alignment_rows=captions)
        except SettingsChanged:  # the folder holds a run with other settings: this check owns it, start over
            shutil.rmtree(out)
            trained = train(base, examples, out, sft, text_only=text_only, log=log_variant, alignment_rows=captions)
        model, processor, _ = load_trained(out)
        t1 = time.time()
        metrics, samples = evaluator.run(model, processor, rows, text_only=text_only, judge=judge, render=render)
        write_jsonl(out / "predictions.jsonl", samples)
        write_json(out / "metrics.json", metrics)
        primary = evaluator.primary(metrics)
        results[variant] = {"metrics": metrics, "primary": primary, "score": metrics[primary],
                            "train": {k: getattr(trained, k) for k in ("steps", "examples_seen", "first_loss", "last_loss",
                                                                       "samples_per_second", "tokens_per_second")},
                            "train_seconds": round(t1 - t0, 1), "eval_seconds": round(time.time() - t1, 1),
                            "predictions": str((out / "predictions.jsonl").relative_to(build))}
        say(f"[{variant}] {primary} {metrics[primary]}")
        for name, extra_rows in judged.items():  # reported next to the main metrics, not part of pass/fail
            t2 = time.time()
            extra, extra_samples = evaluator.run(model, processor, extra_rows, text_only=text_only, judge=judge,
                                                 render=render)
            write_jsonl(out / f"{name}_predictions.jsonl", extra_samples)
            write_json(out / f"{name}_metrics.json", extra)
            results[variant].setdefault("judged_configs", {})[name] = {
                "metrics": extra, "score": extra.get(f"{name}_judge_score_100"), "eval_seconds": round(time.time() - t2, 1),
                "predictions": str((out / f"{name}_predictions.jsonl").relative_to(build))}
            say(f"[{variant}] {name}: judge score {extra.get(f'{name}_judge_score')} / 10 "
                f"({extra.get(f'{name}_judge_failures')} judge failures)")
    gap = round(results["image"]["score"] - results["text-only"]["score"], 2)
    report = {
        "corpus": corpus,
        "passed": gap >= config.margin,
        "gap": gap,
        "margin": config.margin,
        "metric": results["image"]["primary"],
        "image": results["image"],
        "text_only": results["text-only"],
        "judged_configs": {name: _judged_summary(name, results) for name in judged},
        "settings": {"model": config.model, "base_checkpoint": str(base), "preset": config.preset or default_preset(
            config.model, recipe), "sft": sft.model_dump(mode="json"),
            "train_config": recipe.train_config, "eval_config": recipe.eval_config,
            "eval_rows": len(rows), "judged_eval_rows": {name: len(r) for name, r in judged.items()},
            "training_examples": len(examples),
            "alignment_examples": len(captions) if captions is not None and sft.alignment_steps else 0,
            "judge": judge.spec if judge else None},
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "versions": (versions or {}) | _train_versions(),
    }
    write_json(build / "build" / "reference_check.json", report)
    upsert_card_section(build, "Reference check", reference_check_text(report))
    return report


def judged_rows(build: Path, recipe: EvaluationRecipe, evaluator: Evaluator, judge: Judge | None,
                limit: int | None = None) -> dict[str, Sequence[dict[str, Any]]]:
    """config -> held-out rows of the evaluator's judged configs (radvlm's conversations) that this
    build has: only with a judge, since without one they have no score to report."""
    if judge is None:
        return {}
    return {name: evaluation_rows(build, recipe, name, limit) for name in evaluator.judged_configs
            if name != recipe.eval_config and recipe.eval_split in config_shards(build, name)}


def _judged_summary(name: str, results: dict[str, Any]) -> dict[str, Any]:
    """Both models' judge scores (0-100) on one judged config, their gap and the judge failures."""
    image, text = (results[v]["judged_configs"][name] for v in VARIANTS)
    gap = round(image["score"] - text["score"], 2) if image["score"] is not None and text["score"] is not None else None
    return {"metric": f"{name}_judge_score_100", "image": image["score"], "text_only": text["score"], "gap": gap,
            "judge_failures": {"image": image["metrics"].get(f"{name}_judge_failures"),
                               "text_only": text["metrics"].get(f"{name}_judge_failures")}}


def _work_folder(build: Path) -> Path:
    """`build/reference_check/`, emptied when the build it was made for has since been rebuilt
    with other content (its tiny base and trained runs would be stale)."""
    work = build / "build" / "reference_check"
    fingerprint = read_manifest(build).get("fingerprint")
    stamp = work / "build_fingerprint.json"
    if stamp.exists() and json.loads(stamp.read_text()) != fingerprint:
        shutil.rmtree(work)
    if not stamp.exists():
        write_json(stamp, fingerprint)
    return work


def _train_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def read_check(build: Path) -> dict[str, Any] | None:
    path = Path(build) / "build" / "reference_check.json"
    return json.loads(path.read_text()) if path.exists() else None
