"""Build helpers shared by the tests: the Python API with the settings tests use most."""

from __future__ import annotations

from pathlib import Path


def build_radimagenet_vqa(source: Path, out: Path, *, workers: int = 1, overwrite: bool = False,
                          executor: str = "local", **settings):
    from radcorpora.corpora.radimagenet_vqa.build import make_settings
    from radcorpora.registry import build

    return build("radimagenet-vqa", {"source": source}, make_settings(**settings), out, workers=workers,
                 overwrite=overwrite, executor=executor)


def build_rad_ace_cot(source: Path, out: Path, config, llm_settings, *, vqa_rad: Path | None = None,
                      overwrite: bool = False):
    from radcorpora.registry import build

    return build("rad-ace-cot", {"source": source, "vqa_rad": vqa_rad}, config, out, llm_settings=llm_settings,
                 overwrite=overwrite)
