"""`radcorpora check` end to end on CPU: it must fail a corpus whose answers do not depend on the
image (the demo's passing run is covered by the demo test)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from helpers import build_radimagenet_vqa

from radcorpora.cli import app
from radcorpora.demo.radimagenet import write_demo_radimagenet


@pytest.mark.slow
def test_check_fails_when_answers_do_not_depend_on_the_image(tmp_path):
    # The demo's own size and settings; only the pixels no longer follow the labels.
    write_demo_radimagenet(tmp_path / "source", images_per_class=12, pixels_carry_labels=False)
    outcome = build_radimagenet_vqa(tmp_path / "source", tmp_path / "build", benchmark_images=100)
    assert outcome.report is not None and outcome.report.valid  # a valid corpus, but a broken one
    result = CliRunner().invoke(app, ["check", str(tmp_path / "build")])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "build/build/reference_check.json").read_text())
    assert report["passed"] is False and report["gap"] < report["margin"] == 5.0
    assert report["image"]["train"]["steps"] == report["text_only"]["train"]["steps"]
    card = (tmp_path / "build/README.md").read_text()
    assert "## Reference check\n\n`radcorpora check` FAILED" in card
    predictions = (tmp_path / "build" / report["image"]["predictions"]).read_text().splitlines()
    assert len(predictions) == report["image"]["metrics"]["questions"] == report["settings"]["eval_rows"]
