"""`radcorpora check` runs on every corpus whose demo build is trainable. radimagenet-vqa and radvlm
are checked in full by the demo test, mmrad-ivl and ct-reasoning by their own check tests; here
rad-ace-cot's plumbing: both variants trained a few steps and evaluated on VQA-RAD test rows, the
report and predictions written (a margin no random model can miss, so the exit code is the
plumbing's, not the corpus')."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from test_leakage import build_demo
from typer.testing import CliRunner

from radcorpora.cli import app


def test_check_on_rad_ace_cot(tmp_path):
    root = build_demo(tmp_path, names=("rad-ace-cot",))
    build = root / "rad-ace-cot"
    result = CliRunner().invoke(app, ["check", str(build), "--max-steps", "2", "--eval-limit", "3", "--margin", "-1000",
                                      "--max-new-tokens", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads((build / "build" / "reference_check.json").read_text())
    assert report["corpus"] == "rad-ace-cot" and report["passed"]
    assert report["settings"]["eval_rows"] == 3 and report["image"]["train"]["steps"] == 2
    for variant in ("image", "text-only"):
        lines = (build / "build" / "reference_check" / variant / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 3 and {"prediction", "reference"} <= set(json.loads(lines[0]))
    assert "Reference check" in (build / "README.md").read_text()
