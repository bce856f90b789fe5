"""`radcorpora mix BUILD[:CONFIG][=WEIGHT] ... --out DIR`: one Hub dataset interleaving the chosen
configs of several builds, written through the build lifecycle (validated, with its card), and
refused while `radcorpora leakage` finds a patient, study or image of a training row in an
evaluation split of any input, unless `--resolve drop-train` or `--allow-leakage`. Every refusal
is one line and exit 2."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from radcorpora.commands.leakage import executor_runtime, index_builds, join_builds
from radcorpora.commands.ui import USER_ERRORS, command_line, fail, print_summary, say
from radcorpora.mix.plan import MixError, parse_input, shape_problem
from radcorpora.mix.settings import MixInput, MixSettings
from radcorpora.schemas.identity import DEFAULT_PHASH_DISTANCE, KINDS
from radcorpora.store.folder import all_shards, open_shard, read_manifest
from radcorpora.store.local_paths import read_local


def _input(text: str, source: str, build: Path, manifest: dict[str, Any]) -> MixInput:
    from radcorpora.registry import spec_of_build

    _, config, weight = parse_input(text)
    spec = spec_of_build(build)
    config = config or spec.default_config
    if config is None:
        raise MixError(f"{text}: corpus {spec.name} has no default config; name one (BUILD:CONFIG)")
    on_disk = sorted(manifest.get("splits") or {})
    if config not in on_disk:
        raise MixError(f"{text}: {build} has no config {config!r} (configs: {', '.join(on_disk) or 'none'})")
    declared = spec.config(config) if config in spec.records else None
    if declared is not None and declared.loss not in ("all_assistant", "final_assistant"):
        raise MixError(f"{text}: config {config!r} is not mixable: its loss intent is {declared.loss!r} "
                       "(an evaluation-only or preference config; a mix takes conversations + images to train on)")
    recipe = spec.evaluation
    expand = "question" if recipe and config in recipe.per_question else \
        "instance" if recipe and config in recipe.per_instance else "row"
    loss = declared.loss if declared is not None else "all_assistant"
    render = rendering = None
    if declared is not None and declared.conversation is not None:  # stored in its own shape: the corpus renders it
        from radcorpora.spec.evaluation import IMAGE

        variant = recipe.chosen_variant() if recipe else IMAGE
        function = declared.conversation
        render, rendering = f"{function.__module__}:{function.__qualname__}", variant.name
        if "." in function.__qualname__ or "<" in function.__qualname__:
            raise MixError(f"{text}: config {config!r} renders its rows with {render}, which a worker cannot import")
        expand, loss = "render", variant.loss or loss
    shards = all_shards(build, [config])
    problem = shape_problem(open_shard(shards[0].path).schema_arrow, expand) if shards else "no shards"
    if problem:
        raise MixError(f"{text}: config {config!r} is not mixable: {problem} (a mix takes configs of the trainable "
                       "shape: conversations + images)")
    return MixInput(source=source, build=build.name, corpus=spec.name, config=config, weight=weight, expand=expand,
                    loss=loss,  # type: ignore[arg-type]
                    licence_class=manifest.get("licence_class") or "credentialed", render=render, rendering=rendering)


def _held(out: Path) -> str | None:
    """The corpus a folder holds (finished or not), or None."""
    for path in (out / "build" / "manifest.json", out / "build" / ".state" / "fingerprint.json"):
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("corpus")
        except (OSError, ValueError, AttributeError):
            continue
    return None


def mix_cmd(
    inputs: list[str] = typer.Argument(..., metavar="BUILD[:CONFIG][=WEIGHT] ...",
                                       help="Build folders, each with a config (default: the corpus' default config) "
                                            "and a weight (all or none; none: every row)"),
    out: Path = typer.Option(..., "--out", help="The mix folder to write (a Hub dataset repository)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the row sample and order"),
    by: str = typer.Option("rows", "--by", help="Weights are shares of rows or of tokens (of the assistant turns)"),
    resolve: str | None = typer.Option(None, "--resolve", help="drop-train: leave out the training rows leakage finds"),
    allow_leakage: bool = typer.Option(False, "--allow-leakage", help="Write the mix although leakage finds cases "
                                                                      "(recorded in its card)"),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (or Ray tasks) for hashing and writing"),
    executor: str = typer.Option("local", "--executor", help="local (processes here) or ray"),
) -> None:
    """Interleave the chosen configs of several builds by weight into one dataset (train: the mix;
    test / validation / benchmark: every held-out row of the inputs), keeping each row's corpus and
    config. Refused while a training row's patient, study or image is in an evaluation split of
    any input build, unless --resolve drop-train or --allow-leakage."""
    from radcorpora.engine.executors import ExecutorSettings
    from radcorpora.engine.lifecycle import build_fingerprint, run_build
    from radcorpora.mix.build import mix_fingerprint
    from radcorpora.mix.spec import MIX_CORPUS, MIX_SPEC

    try:
        if by not in ("rows", "tokens"):
            raise MixError(f"--by must be rows or tokens, not {by!r}")
        if resolve not in (None, "drop-train"):
            raise MixError(f"--resolve must be drop-train, not {resolve!r}")
        if resolve and allow_leakage:
            raise MixError("--resolve drop-train and --allow-leakage exclude each other: drop the colliding rows or "
                           "keep them, not both")
        if executor not in ("local", "ray"):
            raise MixError(f"--executor must be local or ray, not {executor!r}")
        builds: dict[Path, str] = {}
        manifests: dict[str, dict[str, Any]] = {}
        items: list[MixInput] = []
        for text in inputs:
            build, _, _ = parse_input(text)
            if not build.exists():
                raise MixError(f"{text}: {build}: no such build folder")
            key = builds.setdefault(build.resolve(), f"b{len(builds)}")
            if key not in manifests:
                manifests[key] = read_manifest(build)
            item = _input(text, key, build, manifests[key])
            if any((i.source, i.config) == (item.source, item.config) for i in items):
                raise MixError(f"{text}: {build}:{item.config} is given twice")
            items.append(item)
        weighted = [i.weight is not None for i in items]
        if any(weighted) and not all(weighted):
            missing = next(t for t, w in zip(inputs, weighted) if not w)
            raise MixError(f"{missing}: no weight, while other inputs have one: give every input a weight, or none")
        target = out.resolve()
        for path in builds:
            if target == path or path in target.parents or target in path.parents:
                raise MixError(f"--out {out}: overlaps the input build {path}; write the mix to another folder")
        held = _held(out) if out.is_dir() else None
        if out.is_dir() and any(out.iterdir()) and held != MIX_CORPUS:
            what = f"holds a {held} build" if held else "is not empty and holds no mix"
            raise MixError(f"--out {out}: {what}; choose a new or empty folder (a mix folder is replaced when its "
                           "inputs or settings change)")
        paths = {key: path for path, key in builds.items()}
        running = ExecutorSettings(name=executor, workers=workers)  # type: ignore[arg-type]
        lines: list[tuple[Any, ...]] = []  # shown once the mix is not refused: a refusal is one line
        with executor_runtime(running):
            cases = join_builds(index_builds([paths[k] for k in sorted(paths)], running, names=sorted(paths),
                                             log=lambda *line: lines.append(line)), DEFAULT_PHASH_DISTANCE, running)
        chosen = {(i.source, i.config) for i in items}
        relevant = [c for c in cases if (c["train"]["build"], c["train"]["config"]) in chosen]
        by_kind = Counter(c["kind"] for c in relevant)
        if relevant and not (resolve or allow_leakage):
            first = relevant[0]
            name = {k: str(v) for k, v in paths.items()}
            raise MixError(
                f"leakage: {len(relevant)} cases (" + ", ".join(f"{k} {by_kind[k]}" for k in KINDS if by_kind[k])
                + f") put a training row of the mix in an evaluation split, e.g. {first['kind']} {first['train']['key']}"
                f" in {name[first['train']['build']]}:{first['train']['config']} train and "
                f"{name[first['eval']['build']]}:{first['eval']['config']} {first['eval']['split']}; nothing written "
                "(see `radcorpora leakage`; --resolve drop-train drops those rows, --allow-leakage keeps them)")
        for line in lines:
            say(*line)
        say(f"leakage between the inputs (pHash distance <= {DEFAULT_PHASH_DISTANCE}): {len(relevant)} cases")
        drop: dict[str, set[int]] = {}
        if resolve == "drop-train":
            for case in relevant:
                drop.setdefault(f"{case['train']['build']}/{case['train']['config']}", set()).update(case["train"]["rows"])
        settings = MixSettings(inputs=items, seed=seed, by=by, resolve=resolve or "none",  # type: ignore[arg-type]
                               allow_leakage=allow_leakage, phash_distance=DEFAULT_PHASH_DISTANCE,
                               leakage={"cases": len(relevant), "by_kind": {k: by_kind[k] for k in KINDS}},
                               drop={k: sorted(v) for k, v in sorted(drop.items())})
        overwrite = False
        if held == MIX_CORPUS:  # a mix is derived data: made again whenever what it is made of changed
            previous = read_local(out).get("fingerprint") if (out / "build" / "manifest.json").exists() else None
            now = build_fingerprint(MIX_SPEC, settings, mix_fingerprint(paths, settings))
            overwrite = previous != now
        outcome = run_build(MIX_SPEC, paths, settings, out, overwrite=overwrite, command=command_line(), log=say,
                            executor=running)
    except (*USER_ERRORS, MixError, OSError) as exc:
        fail(exc)
    if relevant:
        say(f"leakage: {len(relevant)} cases " + ("allowed (recorded in the card)" if allow_leakage else
                                                   f"resolved: {outcome.manifest['mix']['dropped_train_rows']} "
                                                   "training examples dropped"), "yellow")
    print_summary(outcome)
