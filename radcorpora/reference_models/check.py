"""The build check: train a reference model on a build's training split, evaluate it on the
held-out config, do the same for each variant the corpus declares (at least a text-only twin, images
withheld; mmrad-ivl also a twin without its crops), and pass only when the corpus' contrast holds:
its model variant beats its baseline variant by the margin on the primary metric. A corpus whose
answers do not depend on its images fails.

Everything lands in the build folder: `build/reference_check.json` (every variant's metrics, the
gaps, the pass rule, settings, times), per-sample predictions under `build/reference_check/<variant>/`,
and a "Reference check" section in the dataset card. A killed check resumes its training runs when
started again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

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
from radcorpora.reference_models.evaluate import InProcessGenerator, evaluate
from radcorpora.reference_models.judge import Judge
from radcorpora.reference_models.metric_kit import Kit
from radcorpora.reference_models.models import resolve_model
from radcorpora.reference_models.sft import (
    PRESETS,
    SettingsChanged,
    SFTConfig,
    TrainingError,
    load_trained,
    train,
)
from radcorpora.spec.evaluation import Variant
from radcorpora.store.atomic import write_json, write_jsonl
from radcorpora.store.folder import BuildFolderError, config_shards, read_manifest


class CheckRefused(BuildFolderError):
    """The corpus says this build cannot be checked as it was built (the message says how to build it)."""


class CheckConfig(BaseModel):
    model: str = "tiny"
    margin: float = Field(5.0, description="points (0-100 scale) the image model must beat the text-only twin by")
    preset: str | None = None  # default: tiny-check for the tiny model, the corpus recipe otherwise
    max_steps: int | None = Field(None, ge=1)
    eval_limit: int | None = Field(None, ge=1)
    seed: int = 0
    # training settings over the preset's (None: the preset's own)
    method: Literal["lora", "qlora", "full"] | None = None
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    report_to: str = "none"


def default_preset(model: str, recipe: EvaluationRecipe | None) -> str:
    return "tiny-check" if model == "tiny" or recipe is None else recipe.preset


def sft_config(config: CheckConfig, recipe: EvaluationRecipe | None) -> SFTConfig:
    """The preset with the command line's settings over it. `max_steps` counts every step,
    alignment included (SFTConfig says how the alignment steps shrink in a shortened run)."""
    name = config.preset or default_preset(config.model, recipe)
    if name not in PRESETS:
        raise TrainingError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    update: dict[str, Any] = {"seed": config.seed, "gradient_checkpointing": config.gradient_checkpointing,
                              "report_to": config.report_to}
    for key in ("max_steps", "method", "bf16"):
        if getattr(config, key) is not None:
            update[key] = getattr(config, key)
    return PRESETS[name].model_copy(update=update)


def check_variants(recipe: EvaluationRecipe, names: Sequence[str] | None = None) -> list[Variant]:
    """The variants to train: all the corpus declares, or the named ones (which must hold both
    sides of its contrast)."""
    if not names:
        return list(recipe.variants)
    try:
        chosen = [recipe.variant(n) for n in dict.fromkeys(names)]
    except KeyError as exc:
        raise CheckRefused(f"--variant: {exc.args[0]}") from None
    missing = [n for n in recipe.contrast if n not in {v.name for v in chosen}]
    if missing:
        raise CheckRefused(f"--variant: the check compares {recipe.contrast[0]} with {recipe.contrast[1]}; "
                           f"add {', '.join(missing)}")
    return chosen


def run_check(build: Path, config: CheckConfig, recipe: EvaluationRecipe, judge: Judge | None = None,
              log: Callable[[str], None] | None = None, versions: dict[str, str] | None = None,
              variants: Sequence[str] | None = None, kit: Kit | None = None,
              max_new_tokens: int | None = None) -> dict[str, Any]:
    """Run the check and return what was written to `build/reference_check.json`. `variants`: a
    subset of the corpus' (both sides of its contrast); `max_new_tokens` caps generation (quick runs)."""
    build = Path(build)
    say = log or (lambda _: None)
    started_at, started = datetime.now(timezone.utc), time.time()
    corpus = corpus_of(build)
    manifest = read_manifest(build)
    refusal = recipe.check_refusal(manifest) if recipe.check_refusal else None
    if refusal:
        raise CheckRefused(f"{build}: {refusal}")
    chosen = check_variants(recipe, variants)
    work = _work_folder(build)
    sft = sft_config(config, recipe)
    examples = {v.name: training_examples(build, recipe, variant=v) for v in chosen}
    captions = alignment_examples(build, recipe)
    rows = evaluation_rows(build, recipe, limit=config.eval_limit)
    judged = judged_rows(build, recipe, judge, config.eval_limit)
    base = resolve_model(config.model, work, lambda: training_texts(build, recipe), seed=config.seed)
    model_name, baseline_name = recipe.contrast
    say(f"reference check of {build} ({corpus}): {len(examples[model_name])} training examples, {len(rows)} "
        f"held-out rows, model {config.model}, {sft.method} fine-tuning; variants {', '.join(v.name for v in chosen)}")
    results: dict[str, Any] = {}
    for variant in chosen:
        out = work / variant.name
        t0 = time.time()
        log_variant = (lambda m, v=variant.name: say(f"[{v}] {m}"))
        text_only = not variant.images
        try:
            trained = train(base, examples[variant.name], out, sft, text_only=text_only, log=log_variant,
                            alignment_rows=captions, variant=recipe.rendering(variant))
        except SettingsChanged:  # the folder holds a run with other settings: this check owns it, start over
            shutil.rmtree(out)
            trained = train(base, examples[variant.name], out, sft, text_only=text_only, log=log_variant,
                            alignment_rows=captions, variant=recipe.rendering(variant))
        model, processor, _ = load_trained(out)
        generator = InProcessGenerator(model, processor)
        t1 = time.time()
        metrics, samples = evaluate(recipe, generator, rows, manifest=manifest, variant=variant, judge=judge, kit=kit,
                                    max_new_tokens=max_new_tokens)
        write_jsonl(out / "predictions.jsonl", samples)
        write_json(out / "metrics.json", metrics)
        primary = recipe.primary(metrics)
        results[variant.name] = {
            "variant": variant.name, "description": variant.description, "images": variant.images,
            "metrics": metrics, "primary": primary, "score": metrics[primary],
            "train": {k: getattr(trained, k) for k in ("steps", "examples_seen", "first_loss", "last_loss",
                                                       "samples_per_second", "tokens_per_second")},
            "training_examples": len(examples[variant.name]),
            "train_seconds": round(t1 - t0, 1), "eval_seconds": round(time.time() - t1, 1),
            "predictions": str((out / "predictions.jsonl").relative_to(build))}
        say(f"[{variant.name}] {primary} {metrics[primary]}")
        for name, extra_rows in judged.items():  # reported next to the main metrics, not part of pass/fail
            t2 = time.time()
            extra, extra_samples = evaluate(recipe, generator, extra_rows, manifest=manifest, variant=variant,
                                            judge=judge, kit=kit, max_new_tokens=max_new_tokens)
            write_jsonl(out / f"{name}_predictions.jsonl", extra_samples)
            write_json(out / f"{name}_metrics.json", extra)
            results[variant.name].setdefault("judged_configs", {})[name] = {
                "metrics": extra, "score": extra.get(f"{name}_judge_score_100"), "eval_seconds": round(time.time() - t2, 1),
                "predictions": str((out / f"{name}_predictions.jsonl").relative_to(build))}
            say(f"[{variant.name}] {name}: judge score {extra.get(f'{name}_judge_score')} / 10 "
                f"({extra.get(f'{name}_judge_failures')} judge failures)")
        del model, processor, generator
    model_result, baseline_result = results[model_name], results[baseline_name]
    gap = _gap(model_result["score"], baseline_result["score"])
    twin = next((v.name for v in chosen if not v.images), baseline_name)
    report = {
        "corpus": corpus,
        "passed": gap is not None and gap >= config.margin,
        "gap": gap,
        "margin": config.margin,
        "metric": model_result["primary"],
        "contrast": {"model": model_name, "baseline": baseline_name, "rule": recipe.pass_rule},
        "gaps": {f"{model_name} - {name}": _gap(model_result["score"], r["score"])
                 for name, r in results.items() if name != model_name},
        "image": model_result,
        "text_only": results[twin],
        "variants": results,
        "judged_configs": {name: _judged_summary(name, model_result, results[twin]) for name in judged},
        "settings": {"model": config.model, "base_checkpoint": str(base), "preset": config.preset or default_preset(
            config.model, recipe), "sft": sft.model_dump(mode="json"),
            "train_config": recipe.train_config, "eval_config": recipe.eval_config, "eval_split": recipe.eval_split,
            "eval_rows": len(rows), "judged_eval_rows": {name: len(r) for name, r in judged.items()},
            "training_examples": len(examples[model_name]),
            "alignment_examples": len(captions) if captions is not None and sft.alignment_steps else 0,
            "judge": judge.spec if judge else None, "max_new_tokens": max_new_tokens,
            "variants": [v.name for v in chosen]},
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "versions": (versions or {}) | _train_versions(),
    }
    write_json(build / "build" / "reference_check.json", report)
    upsert_card_section(build, "Reference check", reference_check_text(report))
    return report


def _gap(a: Any, b: Any) -> float | None:
    return round(a - b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def judged_rows(build: Path, recipe: EvaluationRecipe, judge: Judge | None,
                limit: int | None = None) -> dict[str, Sequence[dict[str, Any]]]:
    """config -> held-out rows of the corpus' judged configs (radvlm's conversations) that this
    build has: only with a judge, since without one they have no score to report."""
    if judge is None:
        return {}
    return {name: evaluation_rows(build, recipe, name, limit) for name in recipe.judged_configs
            if name != recipe.eval_config and recipe.eval_split in config_shards(build, name)}


def _judged_summary(name: str, image: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """Both models' judge scores (0-100) on one judged config, their gap and the judge failures."""
    image, text = image["judged_configs"][name], text["judged_configs"][name]
    return {"metric": f"{name}_judge_score_100", "image": image["score"], "text_only": text["score"],
            "gap": _gap(image["score"], text["score"]),
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
