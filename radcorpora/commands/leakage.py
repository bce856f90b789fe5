"""`radcorpora leakage BUILD [BUILD ...]`: patients, studies and images in a training split of one
build (or config) and an evaluation split of another. Exit 1 when any case is found, 0 when none,
2 on bad input."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from radcorpora.commands.ui import USER_ERRORS, fail, say
from radcorpora.engine.executors import ExecutorSettings, map_tasks, ray_runtime
from radcorpora.ops.leakage import BuildRows, build_rows, count_by_pair, find_cases, inline
from radcorpora.ops.phash import hash_image, warm
from radcorpora.schemas.identity import DEFAULT_PHASH_DISTANCE, EVAL_SPLITS, KINDS, TRAIN_SPLITS
from radcorpora.store.atomic import write_text
from radcorpora.store.folder import BuildFolderError, read_manifest
from radcorpora.store.identity import load_index

MAX_PHASH_DISTANCE = 16  # beyond this, unrelated radiographs match (and the bands get too narrow to help)


def index_builds(builds: list[Path], executor: ExecutorSettings, names: list[str] | None = None,
                 log: Callable[..., None] = say) -> list[BuildRows]:
    """Each build's identity index (read back, or hashed on the executor: one task per shard),
    numbered for the join, with a line per build saying what was read and what was hashed."""
    warm()  # before any worker forks
    rows = []
    for number, build in enumerate(builds):
        index = load_index(build, hash_image, lambda fn, jobs: map_tasks(fn, jobs, executor))
        read = f"{len(index.reused)} shards read from the stored index" if index.reused else ""
        hashed = f"{len(index.indexed)} shards hashed" if index.indexed else ""
        log(f"{build}: {index.lines} images; " + ", ".join(p for p in (read, hashed) if p))
        if index.undecodable:
            log(f"warning: {build}: {index.undecodable} images do not decode; compared by sha256 only", "yellow")
        if index.note:
            log(f"warning: {index.note}", "yellow")
        rows.append(build_rows(names[number] if names else str(build), index.path, index.rows, keep=index))
    return rows


def join_builds(builds: list[BuildRows], phash_distance: int, executor: ExecutorSettings) -> list[dict]:
    """The leakage cases of indexed builds. The join's spilled parts and pHash block pairs are
    tasks: on the local pool they read the parts from this machine's temporary folder; on Ray
    they are sent the parts' contents (a node may not see that folder), a few in flight at once."""
    on_ray = executor.name == "ray"

    def run(fn: Callable[[Any], Any], jobs: list[Any]) -> Iterator[Any]:
        if on_ray:
            return map_tasks(fn, jobs, executor, prepare=inline, window=2 * max(1, executor.workers))
        return map_tasks(fn, jobs, executor)

    return find_cases(builds, phash_distance, map_tasks=run, workers=executor.workers)


def executor_runtime(executor: ExecutorSettings) -> AbstractContextManager:
    """One Ray runtime for the whole command (hashing each build, then the join), not one each."""
    return ray_runtime(executor) if executor.name == "ray" else nullcontext()


def leakage_cmd(
    builds: list[Path] = typer.Argument(..., metavar="BUILD [BUILD ...]", help="Build folders to compare"),
    report: Path = typer.Option(Path("leakage.jsonl"), "--report",
                                help="JSON lines file to write, one line per case"),
    phash_distance: int = typer.Option(DEFAULT_PHASH_DISTANCE, "--phash-distance",
                                       help=f"Largest Hamming distance of two 64-bit pHashes taken as one image "
                                            f"(0-{MAX_PHASH_DISTANCE}; default {DEFAULT_PHASH_DISTANCE})"),
    workers: int = typer.Option(1, "--workers", min=1,
                                help="Worker processes (or Ray tasks) hashing the images and joining the parts"),
    executor: str = typer.Option("local", "--executor", help="local (processes here) or ray"),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to join (default: a local one)"),
) -> None:
    """Report every patient, study and image found in a training split (train) of one build and
    an evaluation split (test, validation, benchmark) of another, or of another config of the same
    build. Identity: namespaced patient, study and source image ids from lineage (MIMIC-CXR and its
    derivatives share one namespace), image sha256, and near-duplicates by pHash. Image hashes are
    kept in BUILD/build/identity.parquet, so a second run reads them instead of the images."""
    try:
        if not 0 <= phash_distance <= MAX_PHASH_DISTANCE:
            raise BuildFolderError(f"--phash-distance must be between 0 and {MAX_PHASH_DISTANCE}, not {phash_distance}")
        if report.is_dir():
            raise BuildFolderError(f"--report {report}: is a folder; name the JSON lines file to write")
        seen: dict[Path, Path] = {}
        for build in builds:
            if not build.exists():
                raise BuildFolderError(f"{build}: no such build folder")
            if build.resolve() in seen:
                raise BuildFolderError(f"{build}: given twice (also as {seen[build.resolve()]})")
            seen[build.resolve()] = build
            read_manifest(build)  # every build checked before any is hashed: a bad one fails at once
        if executor not in ("local", "ray"):
            raise BuildFolderError(f"--executor must be local or ray, not {executor!r}")
        settings = ExecutorSettings(name=executor, workers=workers, ray_address=ray_address)  # type: ignore[arg-type]
        with executor_runtime(settings):
            cases = join_builds(index_builds(builds, settings), phash_distance, settings)
        write_text(report, "".join(json.dumps(c, sort_keys=True, ensure_ascii=False) + "\n" for c in cases))
    except (*USER_ERRORS, OSError) as exc:
        fail(exc)
    _print_table(count_by_pair(cases))
    say(f"{len(cases)} cases ({', '.join(TRAIN_SPLITS)} x {', '.join(EVAL_SPLITS)}; pHash distance <= "
        f"{phash_distance}) written to {report}", "red" if cases else "green")
    raise typer.Exit(1 if cases else 0)


def _print_table(counts: dict[tuple[str, str], dict[str, int]]) -> None:
    if not counts:
        say("no leakage found")
        return
    table = Table(title="leakage: distinct identities per pair of builds")
    table.add_column("train build", overflow="fold")
    table.add_column("eval build", overflow="fold")
    for kind in KINDS:
        table.add_column(kind, justify="right")
    for (train, held_out), kinds in counts.items():
        table.add_row(train, held_out, *(str(kinds[k]) for k in KINDS))
    Console().print(table)
