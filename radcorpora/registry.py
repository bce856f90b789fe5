"""The corpus registry: one line per corpus, its name and package (radcorpora/corpora/<name>/spec.py
holds its `SPEC`). The CLI, `validate`, `publish`, `estimate`, `check` and the exports read it.
Adding a corpus is one new folder plus one line here (docs/adding-a-corpus.md). Packages are
imported when a spec is first asked for, so a command imports only the corpora it uses.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radcorpora.spec.corpus import CorpusSpec

# corpus name -> its package. The name is here so that `radcorpora build NAME` imports NAME's
# package only (a spec imports its corpus' builders: all of them cost ~0.25 s of every command);
# loading a spec checks that it declares the same name.
CORPUS_PACKAGES: dict[str, str] = {
    "radimagenet-vqa": "radcorpora.corpora.radimagenet_vqa",
    "rad-ace-cot": "radcorpora.corpora.rad_ace_cot",
    "radvlm": "radcorpora.corpora.radvlm",
    "mmrad-ivl": "radcorpora.corpora.mmrad_ivl",
    "ct-reasoning": "radcorpora.corpora.ct_reasoning",
    "ct-reasoning-dpo": "radcorpora.corpora.ct_reasoning.pairs",  # `radcorpora dpo ct-reasoning` writes it
}


def load_spec(package: str) -> CorpusSpec:
    """The `SPEC` of a corpus package (its `spec` module, imported now)."""
    return importlib.import_module(f"{package}.spec").SPEC


def load_specs(packages: tuple[str, ...]) -> dict[str, CorpusSpec]:
    """name -> spec, from each package's `spec.SPEC` (registered in the order given)."""
    specs: dict[str, CorpusSpec] = {}
    for package in packages:
        spec = load_spec(package)
        if spec.name in specs:
            raise ValueError(f"{package}: corpus name {spec.name!r} is registered twice")
        specs[spec.name] = spec
    return specs


def declared_summary(package: str) -> str | None:
    """The `summary="..."` of `SPEC = CorpusSpec(...)` in the package's spec.py, read without
    running it (what `radcorpora build --help` lists); None where it is not a plain string."""
    try:
        found = importlib.util.find_spec(f"{package}.spec")
    except ImportError:  # no such package: importing it says so, where that is asked for
        return None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(found.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SPEC" for t in node.targets)
                and isinstance(node.value, ast.Call)):
            for keyword in node.value.keywords:
                if keyword.arg == "summary":
                    value = keyword.value
                    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None
    return None


class Registry(MutableMapping[str, "CorpusSpec"]):
    """name -> spec, in registration order. A corpus' package is imported the first time its spec
    is asked for (`CORPORA[name]`, `.values()`); its name, membership and order need no import."""

    def __init__(self, packages: dict[str, str]) -> None:
        self._entries: dict[str, str | CorpusSpec] = dict(packages)  # a package not yet loaded, or its spec

    def __getitem__(self, name: str) -> CorpusSpec:
        entry = self._entries[name]
        if isinstance(entry, str):
            spec = load_spec(entry)
            if spec.name != name:
                raise ValueError(f"{entry}: its spec declares corpus {spec.name!r}, registered as {name!r}")
            self._entries[name] = entry = spec
        return entry

    def __setitem__(self, name: str, spec: CorpusSpec) -> None:
        self._entries[name] = spec

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def loaded(self, name: str) -> bool:
        return not isinstance(self._entries.get(name), str)

    def summary(self, name: str) -> str:
        """A corpus' one-line summary, without importing its package where its spec.py states it
        as a plain string."""
        entry = self._entries[name]
        if isinstance(entry, str):
            declared = declared_summary(entry)
            if declared is not None:
                return declared
        return self[name].summary


CORPORA: Registry = Registry(CORPUS_PACKAGES)


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


def export(build: Path, fmt: str, out: Path, config: str | None = None, split: str | None = None,
           variant: str | None = None) -> dict[str, Any]:
    """`radcorpora export BUILD --format FMT --out DIR`: a trainer format (publish.exports) for the
    config (default: the corpus' default config) with its declared loss intent, or one of the
    corpus' own public formats (`CorpusSpec.exports`). A config stored in its own shape is
    exported as its conversation (`ConfigSpec.conversation`), in the corpus' rendering `variant`
    (default its first: mmrad-ivl's crops conversation). Returns the recorded export settings."""
    from radcorpora.publish.exports import EXPORTERS, ExportError, export_file
    from radcorpora.spec.evaluation import IMAGE, EvalContext
    from radcorpora.store.folder import read_manifest

    build = Path(build)
    spec = spec_of_build(build)
    if fmt in spec.exports:
        if variant:
            raise ExportError(f"--variant: `{fmt}` is {spec.name}'s own layout, written one way")
        options = {"splits": (split,)} if split else {}
        return export_file(fmt, spec.exports[fmt], build, Path(out), f"{fmt.removesuffix('-csv')}.csv", **options)
    if fmt not in EXPORTERS:
        known = sorted(EXPORTERS) + sorted(spec.exports)
        raise ExportError(f"unknown export format {fmt!r} for a {spec.name} build (known: {', '.join(known)})")
    config = config or spec.default_config
    try:
        chosen_config = spec.config(config or "")
    except KeyError:
        raise ExportError(f"{build}: corpus {spec.name} has no config {config!r} "
                          f"(configs: {', '.join(c.name for c in spec.configs)})") from None
    intent, render, rendering = chosen_config.loss, None, None
    if chosen_config.conversation is not None and intent != "none":
        try:
            rendered = spec.evaluation.chosen_variant(variant) if spec.evaluation else IMAGE
        except KeyError as exc:
            raise ExportError(f"--variant: {exc.args[0]}") from None
        if variant and not rendered.images:
            raise ExportError(f"--variant {variant}: a text-only twin withholds the images at training time "
                              "(`radcorpora train --text-only`); export an image rendering")
        context = EvalContext(read_manifest(build), rendered)
        conversation = chosen_config.conversation
        render, rendering, intent = (lambda row: conversation(row, context)), rendered.name, rendered.loss or intent
    elif variant:
        raise ExportError(f"--variant: config {config!r} of {spec.name} holds its conversations as they are "
                          "(one rendering)")
    return EXPORTERS[fmt](build, Path(out), config=config, splits=[split] if split else None, loss=intent,
                          render=render, rendering=rendering)
