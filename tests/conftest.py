from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory) -> Path:
    """A small RadImageNet-format tree with split CSVs (read-only for tests)."""
    from radcorpora.demo.radimagenet import write_demo_radimagenet

    root = tmp_path_factory.mktemp("radimagenet")
    write_demo_radimagenet(root, images_per_class=5)
    return root


@pytest.fixture(scope="session")
def demo_build(demo_source, tmp_path_factory) -> Path:
    from helpers import build_radimagenet_vqa

    out = tmp_path_factory.mktemp("build") / "radimagenet-vqa"
    outcome = build_radimagenet_vqa(demo_source, out, benchmark_images=20, images_per_shard=40)
    assert outcome.report is not None and outcome.report.valid, outcome.report.summary()
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def pytest_configure(config):
    """Under xdist, give each worker its share of the cores (torch would start one thread per core
    in every worker, and the training tests would fight over them)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        try:
            import torch
        except ImportError:
            return
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
