"""One build lifecycle for every corpus: fingerprint -> prepare the folder -> the corpus' stages
-> rejects -> manifest -> validation -> card -> state.

The manifest and the card are written once, after validation, so neither ever shows a verdict
the build did not earn. A finished build rerun with the same settings and unchanged sources
completes at once; a changed setting or source content is refused with a message saying what
changed (or rebuilt with --overwrite).
"""

from __future__ import annotations

import gc
import importlib
import json
import platform
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from radcorpora import __version__
from radcorpora.engine.executors import ExecutorSettings, run_chunks
from radcorpora.engine.progress import BuildProgress
from radcorpora.publish.card import render_card, upsert_card_section, validation_text, write_card
from radcorpora.schemas.common import Reject
from radcorpora.spec.corpus import BuildContext, CorpusSpec, StageOutput
from radcorpora.store import atomic, source_index
from radcorpora.store.local_paths import LocalPaths, write_local
from radcorpora.store.shards import BackgroundSync, sync_files
from radcorpora.store.state import (
    LLM_STORE,
    BuildStateError,
    ChunkResult,
    ChunkSpec,
    check_out_corpus,
    check_out_dir,
    clear_state,
    prepare_out_dir,
)
from radcorpora.validators import ValidationReport
from radcorpora.validators.run import validate_finished_build

REJECTS_FILE = "build/rejects.jsonl"


@dataclass
class BuildOutcome:
    out: Path
    state: str  # fresh | resume | complete
    manifest: dict[str, Any]
    report: ValidationReport | None
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, distribution

    found = {"radcorpora": __version__, "python": platform.python_version()}
    for name in ("pyarrow", "datasets", "huggingface_hub", "pydantic", "pillow", "openai", "anthropic"):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        # the Version header read off the metadata file: `dist.version` parses the whole file as
        # an email message first (long descriptions included), ~5 ms of every build's end
        header = re.search(r"^Version:[ \t]*(\S+)", dist.read_text("METADATA") or "", re.MULTILINE)
        found[name] = header.group(1) if header else dist.version
    return found


def build_fingerprint(spec: CorpusSpec, settings: BaseModel, prepared_fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {"corpus": spec.name, "config": json.loads(settings.model_dump_json()), **prepared_fingerprint,
            "radcorpora": __version__}


def sorted_rejects(rejects: Sequence[Reject]) -> list[Reject]:
    """A stable order, so identical builds write identical ledgers whatever the worker count."""
    return sorted(rejects, key=lambda r: (r.source, r.row or "", r.reason, r.detail))


GLOB_CHARACTERS = "[]*?"


def glob_warnings(out: Path) -> list[str]:
    """`datasets.load_dataset(path)` reads `[`, `]`, `*` and `?` in a local path as a glob pattern."""
    found = sorted({c for c in str(Path(out).absolute()) if c in GLOB_CHARACTERS})
    if not found:
        return []
    return [f"the build path holds {' '.join(found)}, which datasets.load_dataset reads as a glob pattern: "
            "loading it by path may fail or pick other folders; rename it or load the Parquet files explicitly"]


def check_source_paths(spec: CorpusSpec, sources: dict[str, Path]) -> None:
    """A folder where a folder is expected (whether it exists, and what it holds, the reader says)."""
    for option in spec.sources:
        path = sources.get(option.key)
        if path is not None and Path(path).is_file() and not option.accepts_file:
            raise BuildStateError(f"{option.flag} {path}: is a file; give the folder ({option.help})")


def local_reject(reject: Reject, local: LocalPaths) -> Reject:
    return reject.model_copy(update={"source": local.text(reject.source), "detail": local.text(reject.detail),
                                     "row": local.text(reject.row) if reject.row else reject.row})


def portable_manifest(manifest: dict[str, Any], sources: dict[str, Path], out: Path,
                      local: LocalPaths, settings: BaseModel | None = None) -> dict[str, Any]:
    """The manifest as pushed: no absolute local path (sources by folder name, files relative to
    their source folder, the answer cache by file name); the absolute ones go to build/local.json
    for `adjudicate apply` on this machine, with the settings in full (a setting may keep part of
    itself out of the manifest, e.g. `--avoid`'s id lists: `model_dump` with context "local")."""
    llm = manifest.get("llm") if isinstance(manifest.get("llm"), dict) else {}
    write_local(out, {"sources": {k: str(Path(v).resolve()) for k, v in sources.items()},
                      "llm_cache": llm.get("cache_path"),
                      # as computed, local paths included: what a rerun here is compared with
                      "fingerprint": manifest["fingerprint"],
                      **({"settings": settings.model_dump(mode="json", context={"local": True})}
                         if settings is not None else {})})
    command = local.command(manifest["build"]["command"])

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return local.text(value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    manifest = walk(manifest)
    manifest["build"]["command"] = command
    if llm.get("cache_path"):
        manifest["llm"]["cache_path"] = Path(llm["cache_path"]).name
    return manifest


def splits_of(chunks: Sequence[ChunkResult]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]]]:
    splits: dict[str, dict[str, int]] = {}
    shards: dict[str, dict[str, Any]] = {}
    for result in chunks:
        for relpath, info in result.shards.items():
            _, config, name = relpath.split("/")
            split = name.split("-")[0]
            splits.setdefault(config, {})[split] = splits.get(config, {}).get(split, 0) + info.rows
            shards[relpath] = {"rows": info.rows, "sha256": info.sha256}
    return ({c: dict(sorted(s.items())) for c, s in sorted(splits.items())}, dict(sorted(shards.items())))


def storage_report(out: Path, source_bytes: int) -> dict[str, Any]:
    per_config = {}
    for folder in sorted((out / "data").glob("*")):
        per_config[folder.name] = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    return {"source_image_bytes": source_bytes, "output_bytes": per_config}


# Modules every build ends up importing: pandas (0.2-0.3 s; pyarrow imports it on its first `pa.array`
# of Python objects, in the driver and in each worker, to recognise pandas objects), pyarrow's
# pandas glue and numpy.ma (each chunk worker imported them on its first chunk: `pa.array` of a
# numpy array looks at `np.ma`): imported in a thread while the scan runs (which waits on the file
# system much of the time), so forked workers inherit them; see warm_imports. huggingface_hub's card
# data (the dataset card's YAML, ~20 ms) only the driver needs, at the end: imported once every
# worker has forked, while the chunks run, not in the scan's way. Validation reads shards without
# `pyarrow.dataset`.
WARM_IMPORTS = ("pandas", "pyarrow.pandas_compat", "numpy.ma")
DRIVER_IMPORTS = ("huggingface_hub.repocard_data",)
PANDAS_IMPORTS = ("pandas", "pyarrow.pandas_compat")
_pandas_refused = False


class _RefusePandas:
    """A meta path finder that answers `import pandas` with ModuleNotFoundError."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:  # None: ask the next finder
        if name == "pandas":
            raise ModuleNotFoundError("radcorpora: pandas is not used by this process", name="pandas")


def pyarrow_without_pandas() -> bool:
    """Let pyarrow find no pandas in this process, so no build pays for importing it (the wait
    for it was a tenth of a second before the first chunk of a 5k-image build; each forked worker
    inherits the answer). pyarrow asks once, on its first conversion, and only to recognise pandas
    objects given to `pa.array`, which radcorpora never does; an explicit `import pandas` later
    works, and so does pyarrow's `to_pandas`, which asks again. For the console script's `build`,
    a process that ends with its build (cli.run); never a Python caller's process. Returns False,
    changing nothing, when pandas is already imported."""
    global _pandas_refused
    import sys

    import pyarrow as pa

    if "pandas" in sys.modules:
        return False
    sys.meta_path.insert(0, _RefusePandas)  # type: ignore[arg-type]
    try:
        pa.array([0])  # pyarrow looks for pandas here (`pa.array([], pa.null())` does not look)
    finally:
        sys.meta_path.remove(_RefusePandas)  # type: ignore[arg-type]
    _pandas_refused = True
    return True


def warm_imports(names: tuple[str, ...] = WARM_IMPORTS) -> threading.Thread:
    """Import `names` in a background thread. Joined before any worker process starts: a
    fork while another thread is halfway through an import could leave that module's import
    lock held forever in the child; after the join, forked workers inherit the modules free."""
    def run() -> None:
        for name in names:
            if _pandas_refused and name in PANDAS_IMPORTS:
                continue
            try:
                importlib.import_module(name)
            except ImportError:  # optional here: whoever needs it raises its own error later
                pass

    thread = threading.Thread(target=run, name="radcorpora-warm-imports", daemon=True)
    thread.start()
    return thread


def run_build(spec: CorpusSpec, sources: dict[str, Path], settings: BaseModel, out: Path, *,
              executor: ExecutorSettings = ExecutorSettings(), llm_settings: Any = None,
              overwrite: bool = False, command: str = "", log: Callable[[str], None] | None = None,
              progress: BuildProgress | None = None, allow_empty: bool = False) -> BuildOutcome:
    started = time.time()
    check_out_dir(out)  # an --out that cannot be written is refused before any source is scanned
    check_out_corpus(out, spec.name, overwrite)
    check_source_paths(spec, sources)
    say = log or (lambda _message: None)
    for warning in glob_warnings(out):
        say(f"warning: {warning}")
    progress = progress or BuildProgress(disable=True)
    warming = [warm_imports()]  # each joined before any fork and before `finish`
    scanning = progress.start("scanning sources", None)

    def say_while_scanning(message: str) -> None:
        say(message)
        progress.describe(scanning, f"scanning: {message[:60]}")

    collecting = gc.isenabled()
    gc.disable()  # a scan makes an object or more per source file and no garbage cycles: each
    try:  # collector pass would walk all of them again (a tenth of a 20k-file scan)
        prepared = spec.prepare(sources, settings, say_while_scanning)
    finally:
        if collecting:
            gc.enable()
        progress.describe(scanning, "scanning sources")
        progress.stop(scanning)
    phases = {"prepare": round(time.time() - started, 2)}
    fingerprint = build_fingerprint(spec, settings, prepared.fingerprint)
    state = prepare_out_dir(out, fingerprint, overwrite, command)
    if state == "complete":
        manifest = json.loads((out / "build" / "manifest.json").read_text())
        return BuildOutcome(out, state, manifest, None, round(time.time() - started, 2))

    syncer = BackgroundSync()

    def chunks(specs: Sequence[ChunkSpec], worker, description: str) -> list[ChunkResult]:
        task = progress.start(description, sum(s.size for s in specs))

        def done(spec: ChunkSpec, result: ChunkResult) -> None:
            progress.advance(task, spec.size)
            syncer.submit(out / rel for rel in result.shards)  # flush to disk while other chunks compute

        for thread in warming:
            thread.join()  # before any worker forks

        def started() -> None:  # every worker has forked: the driver's own imports may run now
            if len(warming) == 1:
                warming.append(warm_imports(DRIVER_IMPORTS))

        gc.freeze()  # the plan lives through the chunks: collections here and in forked workers skip it
        try:
            return run_chunks(specs, worker, out, executor, on_done=done, on_started=started)
        finally:
            gc.unfreeze()
            progress.stop(task)

    def session(offline: dict[str, Any] | None = None):
        from radcorpora.llm.session import LLMSession, LLMSettings

        return LLMSession(llm_settings or LLMSettings(), offline=offline, log=say)

    context = BuildContext(out=out, llm_store=out / LLM_STORE, run_chunks=chunks, llm_session=session, log=say)
    stages_started = time.time()
    try:
        output: StageOutput = spec.run(prepared, settings, context)
    finally:
        synced = syncer.wait()
    phases["stages"] = round(time.time() - stages_started, 2)
    for thread in warming:
        thread.join()  # finish may fork validation workers; a corpus without chunks never joined it
    manifest, report = finish(spec, sources, settings, out, fingerprint, output, executor, command, started, progress,
                              phases, synced, allow_empty)
    return BuildOutcome(out, state, manifest, report, round(time.time() - started, 2))


def finish(spec: CorpusSpec, sources: dict[str, Path], settings: BaseModel, out: Path, fingerprint: dict[str, Any],
           output: StageOutput, executor: ExecutorSettings, command: str, started: float,
           progress: BuildProgress, phases: dict[str, float] | None = None,
           synced: set[Path] | None = None, allow_empty: bool = False) -> tuple[dict[str, Any], ValidationReport]:
    """Ledgers, manifest, validation and card, written once; then the chunk state goes."""
    local = LocalPaths(sources, out)
    rejects = sorted_rejects([local_reject(r, local) for r in (*output.rejects, *(r for c in output.chunks for r in c.rejects))])
    atomic.write_jsonl(out / REJECTS_FILE, [r.model_dump() for r in rejects])
    counts: Counter = Counter(output.counts)
    for result in output.chunks:
        counts.update(result.counts)
    splits, shards = splits_of(output.chunks)
    index = {path: tuple(entry) for c in output.chunks for path, entry in c.sources.items()}
    if index:
        source_index.write_index(out, index)  # type: ignore[arg-type]
    manifest: dict[str, Any] = {
        "corpus": spec.name,
        "fingerprint": fingerprint,
        "versions": library_versions(),
        "build": {"command": command or f"radcorpora build {spec.name} --out {out}",
                  "executor": executor.name, "workers": executor.workers, "started_unix": round(started, 3)},
        "licence_class": spec.licence_class(settings, sources),
        **output.manifest,
        "splits": splits,
        "shards": shards,
        "counts": dict(sorted(counts.items())),
        "rejects": dict(sorted(Counter(r.reason for r in rejects).items())),
        "rejected_rows": len(rejects),
        "excluded": dict(sorted(output.excluded.items())),
        "configs_asked": sorted(output.configs_asked) if output.configs_asked is not None else sorted(splits),
        "allow_empty": allow_empty,
        "warnings": [*glob_warnings(out), *output.warnings],
        "files": sorted({REJECTS_FILE, *output.files}),
    }
    manifest["storage"] = storage_report(out, counts.get("source_image_bytes", 0))
    manifest = portable_manifest(manifest, sources, out, local, settings)
    phases = dict(phases or {})
    mark = time.time()
    sync_files(p for p in (out / rel for rel in shards) if p not in (synced or set()))  # durable before the manifest
    phases["sync"] = round(time.time() - mark, 2)
    mark = time.time()
    task = progress.start("validating", 1)
    report = validate_finished_build(out, spec.name, spec.records, spec.rules, manifest, output.chunks,
                                     image_check=getattr(settings, "image_check", "full"), row_rules=spec.row_rules)
    progress.advance(task, 1)
    progress.stop(task)
    manifest["validation"] = report.summary()
    phases["validate"] = round(time.time() - mark, 2)
    manifest["build"]["seconds"] = round(time.time() - started, 2)
    manifest["build"]["phases"] = phases
    atomic.write_json(out / "build" / "validation.json", json.loads(report.model_dump_json()))
    atomic.write_json(out / "build" / "manifest.json", manifest)
    write_card(out, render_card(out, spec.records, spec.card(manifest), manifest, default=spec.default_config))
    clear_state(out)
    return manifest, report


def record_validation(build: Path, report: ValidationReport) -> None:
    """Write a `validate` result back into the build (validation.json, the manifest's summary,
    the card's Validation section), so nothing in the folder shows a stale verdict. Only that
    section of the card is replaced: a damaged folder still gets its verdict written."""
    manifest = json.loads((build / "build" / "manifest.json").read_text())
    manifest["validation"] = report.summary()
    atomic.write_json(build / "build" / "validation.json", json.loads(report.model_dump_json()))
    atomic.write_json(build / "build" / "manifest.json", manifest)
    if (build / "README.md").exists():
        upsert_card_section(build, "Validation", validation_text(manifest["validation"]))
