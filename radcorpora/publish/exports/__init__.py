"""Exports of a build for the trainers people use: `llava`, `sharegpt` (LLaMA-Factory), `trl`,
`swift` (ms-swift). `EXPORTERS` maps a format name to its function
`(build, out, *, config, splits, loss) -> export settings`; the corpus spec (`corpora.export`)
supplies the config's loss intent. Each writes, atomically, one file per config/split, each image
once under `images/`, and `export_settings.json`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from radcorpora.publish.exports import llava, sharegpt, swift, trl
from radcorpora.publish.exports.common import (
    SETTINGS_FILE,
    ExportError,
    ImageWriter,
    LinesWriter,
    Source,
    build_identity,
    check_example,
    examples,
    file_entry,
    refuse_untrained,
    sources,
    write_export,
)

FORMATS: dict[str, ModuleType] = {m.NAME: m for m in (llava, sharegpt, trl, swift)}


def export(fmt: str, build: Path, out: Path, *, config: str, splits: list[str] | None = None,
           loss: str = "all_assistant", render: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
           rendering: str | None = None) -> dict[str, Any]:
    """Export `config` (its `splits`, default all) of `build` to `out` in format `fmt`; returns
    what was recorded in `export_settings.json`. `render` turns a row stored in its corpus' own
    shape into its conversation ({id, images, conversations}); `rendering` names it in the settings."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    module = FORMATS[fmt]
    build = Path(build)
    chosen = sources(build, config, splits, loss, render)
    for source in chosen:
        refuse_untrained(source, fmt, has_preference_form=getattr(module, "PREFERENCE", False))

    def write(folder: Path, images: ImageWriter) -> dict[str, Any]:
        files: dict[str, Any] = {}
        preference: dict[str, bool] = {}
        for source in chosen:
            name = f"{source.config}-{source.split}.{module.EXTENSION}"
            writer = LinesWriter(folder / name, as_list=module.AS_LIST)
            try:
                for example in examples(source, images):
                    where = f"{build}/data/{source.config} ({source.split})"
                    check_example(example, where)
                    preference[name] = preference.get(name, False) or example.preference
                    writer.write(module.record(example, source, where))
            finally:
                writer.close()
            files[name] = {**file_entry(folder / name, writer.rows), "split": source.split,
                           "layout": module.layout(source)}
        if hasattr(module, "finish"):
            module.finish(folder, chosen, preference)
            files["dataset_info.json"] = file_entry(folder / "dataset_info.json", len(chosen))
        return {"files": files}

    settings = {"format": fmt, "build": build_identity(build), "config": config,
                "splits": [s.split for s in chosen], "loss": loss,
                "per_question": any(s.per_question for s in chosen),
                **({"rendering": rendering} if rendering else {}),
                "replication": "repeated: ids <id>, <id>#r1, ... (no target format has a per-row weight)",
                "trainer": module.trainer_notes(chosen)}
    return write_export(out, write, settings)


def export_file(fmt: str, write_file: Callable[..., int], build: Path, out: Path, file_name: str,
                **options: Any) -> dict[str, Any]:
    """A corpus-specific export that writes one file (`write_file(build, path, **options) -> rows`,
    e.g. rad-ace-csv), placed in `out` like the trainer formats, with its settings recorded."""
    build = Path(build)

    def write(folder: Path, images: ImageWriter) -> dict[str, Any]:
        rows = write_file(build, folder / file_name, **options)
        return {"files": {file_name: file_entry(folder / file_name, rows)}}

    settings = {"format": fmt, "build": build_identity(build),
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    return write_export(out, write, settings)


EXPORTERS: dict[str, Callable[..., dict[str, Any]]] = {name: partial(export, name) for name in FORMATS}

__all__ = ["EXPORTERS", "FORMATS", "SETTINGS_FILE", "ExportError", "Source", "export", "export_file"]
