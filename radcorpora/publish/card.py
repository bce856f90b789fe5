"""The dataset card (README.md): YAML configs, features, splits, licence, citations, how the
build was made, validation results. Built with huggingface_hub / datasets card helpers so the
Hub and `load_dataset` read it as they read their own."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from radcorpora.schemas.features import features_yaml_for
from radcorpora.spec.card import CardContent
from radcorpora.store import atomic
from radcorpora.store.folder import shard_footer


def _size_category(rows: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if rows < bound:
            return label
    return "10M<n<100M"


def card_metadata(build: Path, configs: dict[str, type[BaseModel]], default: str | None = None) -> tuple[Any, dict[str, dict[str, int]]]:
    """Card data with `configs` and `dataset_info` computed from the shards on disk, laid out as
    `datasets`' `MetadataConfigs` and `DatasetInfosDict` write them (configs sorted by name; one
    config's info as a mapping, several as a list), without importing `datasets` (tested equal)."""
    from huggingface_hub import DatasetCardData

    data = DatasetCardData()
    metadata_configs: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []
    split_rows: dict[str, dict[str, int]] = {}
    for name, model in sorted(configs.items()):
        folder = build / "data" / name
        splits = sorted({p.name.split("-")[0] for p in folder.glob("*.parquet")})
        if not splits:
            continue
        entry: dict[str, Any] = {"config_name": name,
                                 "data_files": [{"split": s, "path": f"data/{name}/{s}-*"} for s in splits]}
        if name == default:
            entry["default"] = True
        metadata_configs.append(entry)
        split_infos = []
        total_bytes = 0
        for split in splits:
            files = sorted(folder.glob(f"{split}-*.parquet"))
            rows = sum(shard_footer(f).num_rows for f in files)
            size = sum(f.stat().st_size for f in files)
            total_bytes += size
            split_infos.append({"name": split, "num_bytes": size, "num_examples": rows})
            split_rows.setdefault(name, {})[split] = rows
        infos.append({"config_name": name, "features": features_yaml_for(model), "splits": split_infos,
                      "download_size": total_bytes, "dataset_size": total_bytes})
    if metadata_configs:
        data["configs"] = metadata_configs
    if len(infos) == 1:
        data["dataset_info"] = infos[0] if infos[0]["config_name"] != "default" else \
            {k: v for k, v in infos[0].items() if k != "config_name"}
    elif infos:
        data["dataset_info"] = infos
    split_rows = {name: split_rows[name] for name in configs if name in split_rows}
    return data, split_rows


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_card(build: Path, configs: dict[str, type[BaseModel]], content: CardContent,
                manifest: dict[str, Any], default: str | None = None) -> str:
    data, split_rows = card_metadata(build, configs, default)
    data.pretty_name = content.pretty_name
    data.language = ["en"]
    data.task_categories = content.task_categories
    data.tags = content.tags
    data.size_categories = [_size_category(sum(sum(s.values()) for s in split_rows.values()))]
    for key, value in content.licence.items():
        setattr(data, key, value)
    data.license = content.licence.get("license")

    validation = manifest.get("validation") or {}
    rejects = manifest.get("rejects") or {}
    excluded = manifest.get("excluded") or {}
    build_info = manifest.get("build") or {}
    parts = [
        f"# {content.pretty_name}",
        content.summary,
        "## Configs and splits",
        _table(["config", "split", "rows"], [[c, s, n] for c, splits in split_rows.items() for s, n in splits.items()]),
        "## Usage",
        content.usage,
        *[piece for title, body in content.sections.items() for piece in (f"## {title}", body)],
        "## How it was built",
        f"Built by radcorpora {manifest.get('versions', {}).get('radcorpora', '?')} with:\n\n```\n{build_info.get('command', '?')}\n```",
        _table(["setting", "value"], [[k, f"`{v}`"] for k, v in sorted((manifest.get("fingerprint") or {}).get("config", {}).items())
                                     if not isinstance(v, (dict, list))]),
        "Library versions: " + ", ".join(f"{k} {v}" for k, v in sorted((manifest.get("versions") or {}).items())) + ".",
        "Every random choice is seeded from (seed, corpus, row key): the same sources and settings give byte-identical Parquet shards.",
        *(["## Warnings", "\n".join(f"- {w}" for w in manifest["warnings"])] if manifest.get("warnings") else []),
        "## Rejected source rows",
        ("Rows that did not become samples are listed with their reason in `build/rejects.jsonl`.\n\n"
         + (_table(["reason", "rows"], sorted(rejects.items())) if rejects else "None.")),
        *(["## Left out by the method",
           "Source rows the method does not take (not faults), per source and reason.\n\n"
           + _table(["source", "reason", "rows"], [[*k.split("/", 1), n] for k, n in sorted(excluded.items())])]
          if excluded else []),
        "## Validation",
        validation_text(validation),
        *_reference_check_section(build),
        "## Licence",
        content.licence_text,
        "## Citation",
        "\n\n".join(f"```bibtex\n{c.strip()}\n```" for c in content.citations),
    ]
    body = "\n\n".join(parts)
    # The text `str(DatasetCard(...))` gives for it (tested), without importing huggingface_hub's
    # card module, which brings its HTTP client along (a third of a second of every build).
    header = data.to_yaml()
    if not isinstance(yaml.load(header, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), dict):
        raise ValueError("the card's YAML header is not a mapping")
    return f"---\n{header}\n---\n\n{body}\n"


def validation_text(validation: dict[str, Any]) -> str:
    if not validation:
        return "Not validated yet."
    status = "passed" if validation.get("valid") else "FAILED"
    lines = [f"`radcorpora validate` {status}: {validation.get('checks', 0)} checks, "
             f"{validation.get('violations', 0)} violations."]
    if validation.get("failed_checks"):
        lines.append("Failed checks: " + ", ".join(validation["failed_checks"]) + ".")
    for warning in validation.get("warnings", []):
        lines.append(f"Warning: {warning}")
    return "\n\n".join(lines)


def write_card(build: Path, text: str) -> None:
    atomic.write_text(build / "README.md", text)


REFERENCE_CHECK = "Reference check"


def _reference_check_section(build: Path) -> list[str]:
    """Kept when a card is rendered again (e.g. after adjudication), so a check is never dropped."""
    path = build / "build" / "reference_check.json"
    return [f"## {REFERENCE_CHECK}", reference_check_text(json.loads(path.read_text()))] if path.exists() else []


def reference_check_text(report: dict[str, Any]) -> str:
    """Markdown of a `radcorpora check` report: every variant trained, the contrast and its gap, the
    verdict and pass rule, how it was run."""
    image, text = report["image"], report["text_only"]
    metric, settings = report["metric"], report["settings"]
    verdict = "passed" if report["passed"] else "FAILED"
    variants = report.get("variants") or {"image": image, "text-only": text}
    contrast = report.get("contrast") or {"model": "image", "baseline": "text-only"}
    if len(variants) == 2 and set(variants) == {"image", "text-only"}:
        lead = (f"`radcorpora check` {verdict}: a `{settings['model']}` model fine-tuned on `{settings['train_config']}` "
                f"(train) scores {image['score']} {metric} on the held-out `{settings['eval_config']}` config "
                f"({settings['eval_rows']} rows); its text-only twin, trained the same way with the images withheld, "
                f"scores {text['score']}. Gap {report['gap']:+} points; the check asks for at least {report['margin']}.")
    else:
        described = "; ".join(f"`{name}` ({v.get('description', '')}) scores {v['score']}" for name, v in variants.items())
        lead = (f"`radcorpora check` {verdict}: `{settings['model']}` models fine-tuned on `{settings['train_config']}` "
                f"(train), one per variant, evaluated on the held-out `{settings['eval_config']}` config "
                f"({settings['eval_rows']} rows) by {metric}: {described}. Pass rule: {contrast.get('rule', '')}; "
                f"gap `{contrast['model']}` - `{contrast['baseline']}` {report['gap']:+} points, at least "
                f"{report['margin']} asked.")
    names = list(variants)
    header = ["", *("image model" if n == "image" else "text-only twin" if n == "text-only" else n for n in names)]
    lines = [lead, "", _table(header, [
        [metric, *(variants[n]["score"] for n in names)],
        ["training steps", *(variants[n]["train"]["steps"] for n in names)],
        ["final training loss", *(_round(variants[n]["train"]["last_loss"]) for n in names)],
    ])]
    cells = [variants[n]["metrics"].get("by_task_and_type") for n in names]
    if all(cells) and cells:
        lines += ["", _table(["task/type", *header[1:]], [[cell, *(c.get(cell, "") for c in cells)] for cell in cells[0]])]
    lines += ["", (f"Preset `{settings['preset']}` ({settings['sft']['method']}, seed {settings['sft']['seed']}); "
                   f"{report['seconds']} s in all. Metrics, settings and per-sample predictions: "
                   f"`build/reference_check.json` and "
                   f"`build/reference_check/{{{','.join(names)}}}/{{metrics.json,predictions.jsonl}}`.")]
    return "\n".join(lines)


def _round(value: float | None) -> Any:
    return round(value, 4) if value is not None else ""


def upsert_card_section(build: Path, title: str, body: str) -> None:
    """Put `## title` + body into the card, replacing that section if present (before `## Licence`
    when new), atomically."""
    path = build / "README.md"
    text = path.read_text(encoding="utf-8")
    section = f"## {title}\n\n{body.strip()}\n\n"
    existing = re.search(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    if existing:
        text = text[:existing.start()] + section + text[existing.end():]
    else:
        anchor = re.search(r"^## Licence\n", text, flags=re.MULTILINE)
        at = anchor.start() if anchor else len(text)
        text = text[:at] + section + text[at:]
    from huggingface_hub import DatasetCard

    DatasetCard(text)  # the YAML header must still parse
    atomic.write_text(path, text)


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def llm_usage_text(usage: dict[str, Any], pipeline_stages: dict[str, Any] | None = None) -> str:
    """Per stage and model: what this run paid (every billed reply, repairs and failed parses
    included) next to what the answers the build holds cost (cache hits at their recorded cost).
    With pipeline figures, what the build holds comes from them: a resumed run reuses stored
    outputs without a request, so this run's session never sees those answers."""
    held_by_pipeline = bool(pipeline_stages)
    rows = []
    for stage, models in (usage.get("stages") or {}).items():
        for model, m in models.items():
            paid, held = m.get("paid") or {}, m.get("held") or {}
            row = [stage, model, m.get("requests"), paid.get("replies"), paid.get("repairs"),
                   f"{paid.get('input_tokens', 0)} / {paid.get('output_tokens', 0)}", _usd(paid.get("cost_usd"))]
            rows.append(row if held_by_pipeline else
                        [*row, held.get("answers"), held.get("from_cache"), _usd(held.get("cost_usd"))])
    header = ["stage", "model", "requests", "replies paid", "repairs", "tokens paid (in / out)", "paid this run"]
    paid = usage.get("paid_this_run") or {}
    held = _held_by_pipeline(pipeline_stages) if held_by_pipeline else usage.get("held") or {}
    if not rows and not held.get("answers"):
        return "No LLM requests."
    parts = [_table(header if held_by_pipeline else [*header, "answers held", "from cache", "cost of answers held"], rows)
             ] if rows else ["No LLM requests this run."]
    parts.append(f"Paid this run: {_usd(paid.get('cost_usd'))} for {paid.get('replies', 0)} billed replies. "
                 f"Cost of the {held.get('answers', 0)} answers this build holds: {_usd(held.get('cost_usd'))} "
                 f"(list prices as of {usage.get('prices_as_of')}; batch answers at the batch rate"
                 + ("; per stage in the pipeline table below)." if held_by_pipeline else ")."))
    if usage.get("unpriced_models"):
        parts.append("No price known for: " + ", ".join(f"`{m}`" for m in usage["unpriced_models"])
                     + " (their cost is left out of the totals).")
    return "\n\n".join(parts)


def _held_by_pipeline(stages: dict[str, Any]) -> dict[str, Any]:
    """Answers the build's stored pipeline outputs hold (parsed or rejected lines) and their cost;
    None when any stage's cost is unknown."""
    answers, cost = 0, 0.0
    for figures in stages.values():
        answers += (figures or {}).get("parsed", 0) + (figures or {}).get("rejected", 0)
        stage_cost = ((figures or {}).get("held") or {}).get("cost_usd")
        cost = None if cost is None or stage_cost is None else cost + stage_cost
    return {"answers": answers, "cost_usd": None if cost is None else round(cost, 6)}


def _kappa_text(report: dict[str, Any]) -> str:
    """Cohen's kappa for two auditors, Fleiss' for three or more; named undefined (not 0 or 1)
    where every verdict fell in one category."""
    for key, name in (("cohen_kappa", "Cohen's kappa"), ("fleiss_kappa", "Fleiss' kappa")):
        if key in report:
            value = report[key]
            return f", {name} {value}" if value is not None else f", {name} undefined (every verdict in one category)"
    return ""


def pipeline_order(stages: dict[str, Any]) -> list[str]:
    """Stage names in graph order (each after the stage it consumes): the manifest on disk holds
    them sorted by name."""
    order: list[str] = []
    layer = {"input"}
    while layer:
        found = sorted(n for n, f in stages.items() if n not in order and (f or {}).get("consumes", "input") in layer)
        order += found
        layer = set(found)
    return order + sorted(n for n in stages if n not in order)


def pipeline_text(figures: dict[str, Any]) -> str:
    """`manifest["llm"]["pipeline"]` (PipelineResult.figures()): one row per node with this run's
    traffic and what the build holds, then each audit's agreement and the adjudication left."""
    stages = figures.get("stages") or {}
    if not stages:
        return ""
    rows = []
    for name in pipeline_order(stages):
        f = stages[name]
        paid, held = f.get("paid") or {}, f.get("held") or {}
        rows.append([f"`{name}`", ", ".join(f"`{m}`" for m in f.get("models", [])), f.get("consumes"), f.get("items"),
                     f.get("requests"), f.get("reused"), f.get("cached"), f.get("sent"), f.get("failed"),
                     f.get("parsed"), f.get("repaired"), f.get("rejected"), f.get("outputs"),
                     f"{held.get('input_tokens', 0)} / {held.get('output_tokens', 0)}", _usd(held.get("cost_usd")),
                     _usd(paid.get("cost_usd"))])
    intro = ("Per pipeline stage: this run's requests (`reused`: taken from the outputs stored under `build/llm/`, "
             "nothing asked; `cached`: answered from the answer cache; `sent`: to a provider), what the stored "
             "outputs hold (parsed, repaired, rejected, items made, tokens and cost of their answers) and what this "
             "run paid.")
    lines = [intro,
             _table(["stage", "models", "consumes", "items", "requests", "reused", "cached", "sent", "failed", "parsed",
                     "repaired", "rejected", "outputs", "tokens (in / out)", "cost", "paid this run"], rows)]
    for name, audit in (figures.get("audits") or {}).items():
        models = audit.get("verifiers") or []
        text = (f"Audit `{name}` by {len(models)} model(s) ({', '.join(f'`{m}`' for m in models)}): "
                f"{audit.get('items', 0)} items judged by all, outcomes "
                + (", ".join(f"{k} {v}" for k, v in (audit.get("outcomes") or {}).items()) or "none"))
        if "percent_agreement" in audit:
            text += f", agreement {audit['percent_agreement']}%"
        text += _kappa_text(audit)
        if audit.get("settled"):
            text += "; settled: " + ", ".join(f"{k} {v}" for k, v in audit["settled"].items())
        lines.append(text + ".")
    lines.append(f"Awaiting adjudication: {figures.get('adjudication_pending', 0)} (`build/adjudication_queue.jsonl`).")
    return "\n\n".join(lines)


def llm_section(manifest: dict[str, Any]) -> str:
    """The LLM stages of a build: models, paid usage, failures, per-stage pipeline figures,
    verification and adjudication."""
    llm = manifest.get("llm") or {}
    usage = llm.get("usage") or {}
    lines = [f"Generator: `{llm.get('generator')}`" + (f"; verifiers: {', '.join(f'`{v}`' for v in llm.get('verifiers', []))}"
                                                         if llm.get("verifiers") else "; no verifier model.")]
    lines.append(llm_usage_text(usage, (llm.get("pipeline") or {}).get("stages")))
    failures = llm.get("failures") or {}
    lines.append("Failed requests: " + (", ".join(f"{k} {v}" for k, v in failures.items()) if failures else "none")
                 + " (each listed in `build/llm_failures.jsonl`).")
    pipeline = pipeline_text(llm.get("pipeline") or {})
    verification = llm.get("verification") or {}
    if pipeline:  # its audits carry the verification figures
        lines.append(pipeline)
    elif verification.get("items"):
        text = f"Verification of {verification['items']} items: outcomes {verification.get('outcomes')}"
        if "percent_agreement" in verification:
            text += f", agreement {verification['percent_agreement']}%"
        text += _kappa_text(verification)
        lines.append(text + f". Awaiting adjudication: {llm.get('adjudication_pending', 0)}.")
    if str(llm.get("generator") or "").startswith("offline"):
        lines.append("**Built with the offline stand-in, not a language model: demonstration data only.**")
    return "\n\n".join(lines)
