"""The corpus registry: one line per corpus package (radcorpora/corpora/<name>/spec.py holds its
`SPEC`). The CLI, `validate`, `publish`, `estimate`, `check` and the exports read it. Adding a
corpus is one new folder plus one line here (docs/adding-a-corpus.md).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from radcorpora.spec.corpus import CorpusSpec

CORPUS_PACKAGES: tuple[str, ...] = (
    "radcorpora.corpora.radimagenet_vqa",
    "radcorpora.corpora.rad_ace_cot",
    "radcorpora.corpora.radvlm",
    "radcorpora.corpora.mmrad_ivl",
    "radcorpora.corpora.ct_reasoning",
    "radcorpora.corpora.ct_reasoning.pairs",  # ct-reasoning-dpo: `radcorpora dpo ct-reasoning` writes it
)


def load_specs(packages: tuple[str, ...]) -> dict[str, CorpusSpec]:
    """name -> spec, from each package's `spec.SPEC` (registered in the order given)."""
    specs: dict[str, CorpusSpec] = {}
    for package in packages:
        spec = importlib.import_module(f"{package}.spec").SPEC
        if spec.name in specs:
            raise ValueError(f"{package}: corpus name {spec.name!r} is registered twice")
        specs[spec.name] = spec
    return specs


CORPORA: dict[str, CorpusSpec] = load_specs(CORPUS_PACKAGES)


def register(spec: CorpusSpec) -> CorpusSpec:
    """Add a corpus declared elsewhere (a plugin, a test): what the registry line does for ours."""
    if spec.name in CORPORA and CORPORA[spec.name] is not spec:
        raise ValueError(f"corpus {spec.name!r} is already registered")
    CORPORA[spec.name] = spec
    return spec


class UnknownCorpus(ValueError):
    pass


def corpus(name: str) -> CorpusSpec:
    if name not in CORPORA:
        raise UnknownCorpus(f"unknown corpus {name!r} (known: {', '.join(sorted(CORPORA))})")
    return CORPORA[name]


def spec_of_build(build: Path) -> CorpusSpec:
    """The spec of the corpus a build folder holds (from its manifest)."""
    from radcorpora.store.folder import BuildFolderError, read_manifest

    name = read_manifest(build).get("corpus")
    if name == "mix":  # a `radcorpora mix` folder: not a registered corpus, but read like one
        from radcorpora.mix.spec import MIX_SPEC

        return MIX_SPEC
    if name not in CORPORA:
        raise BuildFolderError(f"{build}: manifest names corpus {name!r}, which this radcorpora does not know "
                               f"(known: {', '.join(sorted(CORPORA))})")
    return CORPORA[name]


def preview(build: Path, out: Path | None = None, **options: Any) -> Any:
    """`radcorpora preview`: the build's HTML report, with its corpus' plots and row renderer when
    this radcorpora knows the corpus, else the schema-driven defaults."""
    from radcorpora.publish.preview import write_preview
    from radcorpora.store.folder import read_manifest

    name = read_manifest(build).get("corpus")
    spec = spec_of_build(build) if name == "mix" else CORPORA.get(name)
    return write_preview(build, out, spec=spec.preview if spec else None, title=spec.title if spec else None,
                         **options)


def validate(build: Path, *, image_check: str = "full", workers: int = 1, deep: bool = False) -> Any:
    """`radcorpora validate`: every check of the build's corpus, from disk."""
    from radcorpora.validators.run import validate_build_folder

    spec = spec_of_build(build)
    return validate_build_folder(build, spec.name, spec.records, spec.rules, spec.row_rules,
                                 image_check=image_check, workers=workers, deep=deep)


def build(name: str, sources: dict[str, Path], settings: Any, out: Path, *, workers: int = 1, executor: str = "local",
          ray_address: str | None = None, llm_settings: Any = None, overwrite: bool = False, command: str = "",
          log: Any = None) -> Any:
    """Build a corpus from Python, as `radcorpora build NAME ...` does (no progress display)."""
    from radcorpora.engine.executors import ExecutorSettings
    from radcorpora.engine.lifecycle import run_build

    if executor not in ("local", "ray"):  # caught here, not by the manifest after the whole build
        raise ValueError(f"executor must be 'local' or 'ray', not {executor!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, not {workers!r}")
    return run_build(corpus(name), {k: Path(v) for k, v in sources.items() if v is not None}, settings, Path(out),
                     executor=ExecutorSettings(name=executor, workers=workers, ray_address=ray_address),  # type: ignore[arg-type]
                     llm_settings=llm_settings, overwrite=overwrite, command=command, log=log)


def loss_intent(name: str, config: str) -> str:
    """Which assistant turns of a config train ("all_assistant" | "final_assistant" | "none"), as
    the corpus declares it: what the exports carry and the reference models train on."""
    return corpus(name).config(config).loss


def export(build: Path, fmt: str, out: Path, config: str | None = None, split: str | None = None) -> dict[str, Any]:
    """`radcorpora export BUILD --format FMT --out DIR`: a trainer format (publish.exports) for the
    config (default: the corpus' default config) with its declared loss intent, or one of the
    corpus' own public formats (`CorpusSpec.exports`). Returns the recorded export settings."""
    from radcorpora.publish.exports import EXPORTERS, ExportError, export_file

    build = Path(build)
    spec = spec_of_build(build)
    if fmt in spec.exports:
        options = {"splits": (split,)} if split else {}
        return export_file(fmt, spec.exports[fmt], build, Path(out), f"{fmt.removesuffix('-csv')}.csv", **options)
    if fmt not in EXPORTERS:
        known = sorted(EXPORTERS) + sorted(spec.exports)
        raise ExportError(f"unknown export format {fmt!r} for a {spec.name} build (known: {', '.join(known)})")
    config = config or spec.default_config
    try:
        intent = spec.config(config or "").loss
    except KeyError:
        raise ExportError(f"{build}: corpus {spec.name} has no config {config!r} "
                          f"(configs: {', '.join(c.name for c in spec.configs)})") from None
    return EXPORTERS[fmt](build, Path(out), config=config, splits=[split] if split else None, loss=intent)
