"""radvlm task assembly and a whole build on hand-made source records (the readers have their own
tests): fusion independent of row order, the uncertain policy and No Finding, replication as a
count, patient split integrity across tasks, ids unique, images stored once, validation."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from radcorpora.corpora.radvlm import settings as rv_settings
from radcorpora.corpora.radvlm import sources as radvlm_sources
from radcorpora.corpora.radvlm import tasks as rv_tasks
from radcorpora.demo.cxr_drawing import draw_cxr, encode
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.cxr import CHEXPERT_LABELS, CxrImage, GroundedFinding, StudyReport


def _image(tmp: Path, source: str, image_id: str, subject: str, split: str, boxes=(), view="PA") -> CxrImage:
    path = tmp / source / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(draw_cxr(image_id, 128, 128, findings=boxes)))
    return CxrImage(source=source, image_id=image_id, subject_id=subject, study_id=f"s{image_id}", path=str(path),
                    view=view, split=split, width=128, height=128, licence_class="credentialed")


def _labels(**states: str) -> dict[str, str]:
    return {label: states.get(label.replace(" ", "_"), "not_mentioned") for label in CHEXPERT_LABELS}


def words() -> rv_tasks.Words:
    return rv_tasks.Words(rv_settings.load_templates(rv_settings.RadVLMConfig()), 0)


def test_uncertain_policy_and_no_finding():
    states = _labels(Pneumonia="uncertain", Edema="positive")
    assert rv_tasks.positive_labels(states, "absent") == (["Edema"], None)
    assert rv_tasks.positive_labels(states, "present") == (["Edema", "Pneumonia"], None)
    assert rv_tasks.positive_labels(_labels(No_Finding="positive"), "absent") == ([], None)
    assert rv_tasks.positive_labels(_labels(No_Finding="positive", Edema="positive"), "absent")[1] == \
        "no_finding_contradicts_labels"


def test_vindr_fusion_does_not_depend_on_row_order_and_counts_readers(tmp_path):
    image = _image(tmp_path, "vindr-cxr", "v1", "v1", "train")
    boxes = [Box.from_normalised(0.20, 0.30, 0.40, 0.50), Box.from_normalised(0.21, 0.31, 0.41, 0.52),
             Box.from_normalised(0.19, 0.29, 0.39, 0.49), Box.from_normalised(0.70, 0.10, 0.80, 0.20)]
    readers = ["R1", "R2", "R3", "R1"]
    outputs = set()
    for seed in range(8):
        order = list(range(4))
        random.Random(seed).shuffle(order)
        finding = GroundedFinding(image=image, label="Nodule/Mass", boxes=tuple(boxes[i] for i in order),
                                  readers=tuple(readers[i] for i in order))
        rows = rv_tasks.vindr_rows([finding], [image], set(), words(), rv_settings.RadVLMConfig(),
                             {"abnormality_grounding"}, [])
        outputs.add(repr(rows[0].instances))
    assert len(outputs) == 1
    instance = rows[0].instances[0]
    assert sorted(b["readers"] for b in instance["boxes"]) == [1, 3]
    assert instance["replication"] == 3  # published VinDr grounding factor
    majority = rv_tasks.vindr_rows([finding], [image], set(), words(), rv_settings.RadVLMConfig(min_readers=2),
                             {"abnormality_grounding"}, [])
    assert [b["readers"] for b in majority[0].instances[0]["boxes"]] == [3]


def test_patient_in_both_splits_keeps_only_test_rows(tmp_path):
    test_image = _image(tmp_path, "ms-cxr", "d1", "10000001", "test")
    train_image = _image(tmp_path, "mimic-cxr", "d2", "10000001", "train")
    other = _image(tmp_path, "mimic-cxr", "d3", "10000002", "train")
    reports = {"sd2": StudyReport(source="mimic-cxr", subject_id="10000001", study_id="sd2", findings="Clear lungs.",
                                  file="x"), "sd3": StudyReport(source="mimic-cxr", subject_id="10000002",
                                                                study_id="sd3", impression="No acute process.",
                                                                file="y")}
    rejects: list = []
    rows = rv_tasks.report_rows("mimic-cxr", [train_image, other], lambda i: reports.get(i.study_id), words(),
                          rv_settings.RadVLMConfig(), rejects)
    phrase = GroundedFinding(image=test_image, label="Edema", phrase="mild edema",
                             boxes=(Box.from_normalised(0.1, 0.1, 0.3, 0.3),))
    rows += rv_tasks.phrase_rows("ms-cxr", [phrase], words(), rv_settings.RadVLMConfig())
    kept = rv_tasks.enforce_patient_splits(rows, rejects)
    assert sorted(r.key for r in kept) == ["phrase_grounding/ms-cxr/d1", "report_generation/mimic-cxr/d3"]
    assert [r.reason for r in rejects] == ["patient_in_test_split"]
    assert rows[1].report_section == "impression"


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """Hand-made scans standing in for the readers (their layouts are tested with the readers)."""
    finding_box = (0.55, 0.6, 0.75, 0.8)
    images = [_image(tmp_path, "mimic-cxr", f"m{i}", f"1000000{i}", "test" if i % 4 == 0 else "train",
                     boxes=(finding_box,) if i % 2 else ()) for i in range(8)]
    reports = {img.study_id: StudyReport(source="mimic-cxr", subject_id=img.subject_id, study_id=img.study_id,
                                         findings=("Right lower opacity." if i % 2 else "Lungs are clear."), file="r")
               for i, img in enumerate(images)}
    labels = {img.study_id: _labels(Lung_Opacity="positive" if i % 2 else "not_mentioned")
              for i, img in enumerate(images)}
    mimic = SimpleNamespace(images=images, reports=reports, labels=labels, rejects=[], counts=Counter(images=8),
                            root=tmp_path / "mimic-cxr")
    vindr_images = [_image(tmp_path, "vindr-cxr", f"v{i}", f"v{i}", "test" if i == 0 else "train",
                           boxes=(finding_box,) if i % 2 else ()) for i in range(4)]
    annotations = [GroundedFinding(image=img, label="Nodule/Mass", boxes=(Box.from_normalised(*finding_box),) * 3,
                                   readers=("R1", "R2", "R3")) for i, img in enumerate(vindr_images) if i % 2]
    vindr = SimpleNamespace(images=vindr_images, annotations=annotations, no_finding={"v0", "v2"}, rejects=[],
                            counts=Counter(), root=tmp_path / "vindr-cxr")

    def read_sources(sources, config, log):
        read = radvlm_sources.SourcesRead()
        for name, scan in (("mimic-cxr", mimic), ("vindr-cxr", vindr)):
            radvlm_sources._take(read, name, scan)
        return read

    monkeypatch.setattr(radvlm_sources, "read_sources", read_sources)
    return {"mimic_cxr": tmp_path / "mimic-cxr", "vindr_cxr": tmp_path / "vindr-cxr"}


def test_whole_build_on_hand_made_sources(fake_sources, tmp_path):
    from radcorpora.registry import build, validate

    out = tmp_path / "out"
    outcome = build("radvlm", fake_sources, rv_settings.RadVLMConfig(), out)
    assert outcome.report.valid, outcome.report.summary()
    splits = outcome.manifest["splits"]
    assert set(splits) == {"report_generation", "abnormality_classification", "abnormality_grounding",
                           "abnormality_detection"}
    assert splits["report_generation"] == {"test": 2, "train": 6}
    detection = pq.read_table(sorted((out / "data/abnormality_detection").glob("train-*.parquet"))[0]).to_pylist()
    answers = {r["id"]: r["instances"][0]["conversations"][1]["value"] for r in detection}
    assert "Nodule/Mass: [0.55, 0.6, 0.75, 0.8]" in answers["abnormality_detection/vindr-cxr/v1"]
    assert answers["abnormality_detection/vindr-cxr/v2"] in rv_settings.load_templates(rv_settings.RadVLMConfig()).variants("detection_none")
    grounding = pq.read_table(out / "data/abnormality_grounding/train-00000-of-00001.parquet").to_pylist()
    assert [b["readers"] for b in grounding[0]["instances"][0]["boxes"]] == [3]
    assert outcome.manifest["licence_class"] == "credentialed"
    assert "rule-based detector" in (out / "README.md").read_text()  # default: prior removal by the rules
    build("radvlm", fake_sources, rv_settings.RadVLMConfig(), tmp_path / "again")
    for shard in sorted((out / "data").rglob("*.parquet")):
        assert shard.read_bytes() == (tmp_path / "again" / shard.relative_to(out)).read_bytes()
    assert validate(out, workers=2).valid


def test_a_task_without_its_source_is_a_clear_error(fake_sources, tmp_path):
    from radcorpora.registry import build

    with pytest.raises(rv_settings.RadVLMConfigError, match="phrase_grounding needs --ms-cxr or --padchest-gr"):
        build("radvlm", fake_sources, rv_settings.RadVLMConfig(tasks=["phrase_grounding"]), tmp_path / "out")
    # an unknown task is said before any source is read (the folder here does not even exist)
    from typer.testing import CliRunner

    from radcorpora.cli import app

    result = CliRunner().invoke(app, ["build", "radvlm", "--out", str(tmp_path / "o2"), "--mimic-cxr",
                                      str(tmp_path / "nowhere"), "--tasks", "report_generation,bogus"])
    assert result.exit_code == 2 and "unknown task(s) bogus" in result.output
    assert "does not exist" not in result.output


def test_credentialed_build_is_never_pushed_public(fake_sources, tmp_path):
    from typer.testing import CliRunner

    from radcorpora.cli import app
    from radcorpora.registry import build

    out = tmp_path / "out"
    build("radvlm", fake_sources, rv_settings.RadVLMConfig(tasks=["abnormality_classification"]), out)
    public = CliRunner().invoke(app, ["publish", str(out), "--repo", "org/name", "--public", "--dry-run"])
    assert public.exit_code == 2 and "credentialed" in public.output
    private = CliRunner().invoke(app, ["publish", str(out), "--repo", "org/name", "--private", "--dry-run"])
    assert private.exit_code == 0, private.output
    assert "credentialed (PhysioNet) data" in (out / "README.md").read_text()


def test_training_mix_repeats_each_instance_by_its_replication(fake_sources, tmp_path):
    import datasets

    from radcorpora.publish.views import MixView, training_mix
    from radcorpora.registry import build

    out = tmp_path / "out"
    build("radvlm", fake_sources, rv_settings.RadVLMConfig(), out)
    mix = training_mix(out)
    expected = Counter()
    for shard in (out / "data").rglob("train-*.parquet"):
        for row in pq.read_table(shard).to_pylist():
            for instance in row["instances"]:
                expected[row["task"]] += instance["replication"]
    seen = [mix[i] for i in range(len(mix))]
    assert Counter(e["task"] for e in seen) == expected and expected["abnormality_grounding"] > 0
    assert len({e["id"] for e in seen}) == len(seen)  # replicas carry #r<k>
    loaded = {c: datasets.load_dataset(str(out), name=c, split="train") for c in reversed(sorted(expected))}
    assert [e["id"] for e in MixView(loaded)] == [e["id"] for e in seen]  # order of the configs does not matter
    assert [e["id"] for e in MixView(loaded, seed=1)] != [e["id"] for e in seen]
    assert len(MixView(loaded, replicate=False)) == sum(1 for e in seen if "#r" not in e["id"])


def test_each_dicom_is_converted_once_for_both_vindr_configs(tmp_path, monkeypatch):
    """VinDr images appear in abnormality_grounding and abnormality_detection: the DICOM is
    converted once per build (kept with the build state, gone when the build finishes) and both
    configs store the same PNG bytes."""
    import hashlib

    from radcorpora.demo.vindr_cxr import write_demo_vindr_cxr
    from radcorpora.registry import build
    from radcorpora.sources import dicom

    write_demo_vindr_cxr(tmp_path / "vindr")
    calls: Counter = Counter()
    convert = dicom.read_dicom_image

    def counting(path, **kwargs):
        calls[str(path)] += 1
        return convert(path, **kwargs)

    monkeypatch.setattr(dicom, "read_dicom_image", counting)
    config = rv_settings.RadVLMConfig(tasks=("abnormality_grounding", "abnormality_detection"), max_side=96)
    outcome = build("radvlm", {"vindr_cxr": tmp_path / "vindr"}, config, tmp_path / "out")
    assert outcome.report.valid, outcome.report.summary()
    assert calls and max(calls.values()) == 1, calls.most_common(3)
    stored: dict[str, dict[str, str]] = {}
    for task in ("abnormality_grounding", "abnormality_detection"):
        for shard in (tmp_path / "out/data" / task).glob("*.parquet"):
            for row in pq.read_table(shard, columns=["lineage", "image"]).to_pylist():
                stored.setdefault(row["lineage"]["source_id"], {})[task] = hashlib.sha256(row["image"]["bytes"]).hexdigest()
    both = [digests for digests in stored.values() if len(digests) == 2]
    assert both and all(len(set(d.values())) == 1 for d in both)
    assert not (tmp_path / "out/build/.state").exists()


def test_chest_imagenome_reads_only_the_scene_graphs_anatomical_grounding_takes(tmp_path, monkeypatch):
    """anatomical_grounding keeps the first N images with regions in a seeded order: the reader
    opens scene graphs in that order and stops there, giving the same rows as reading all of
    them; a build without the task opens none."""
    import json as json_module

    from radcorpora.demo.chest_imagenome import write_demo_chest_imagenome
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.sources import chest_imagenome
    from radcorpora.sources.mimic_cxr import scan_mimic_cxr

    write_demo_mimic_cxr(tmp_path / "mimic", tmp_path / "reports", n_subjects=30)
    mimic = scan_mimic_cxr(tmp_path / "mimic", tmp_path / "reports")
    write_demo_chest_imagenome(tmp_path / "cig", mimic.images)
    sizes = {i.image_id: (i.width, i.height) for i in mimic.images if i.width and i.height}
    words = rv_tasks.Words(rv_settings.load_templates(rv_settings.RadVLMConfig()), 0)
    opened: list[str] = []
    loads = json_module.loads

    def counting_loads(data, *args, **kwargs):
        opened.append("graph")
        return loads(data, *args, **kwargs)

    monkeypatch.setattr(chest_imagenome.json, "loads", counting_loads)
    full = chest_imagenome.scan_chest_imagenome(tmp_path / "cig", tmp_path / "mimic", sizes)
    graphs = len(opened)
    assert graphs > 10
    for samples in (1, 5, graphs // 2, graphs + 5):
        config = rv_settings.RadVLMConfig(anatomical_grounding_samples=samples, seed=3)
        opened.clear()
        limited = chest_imagenome.scan_chest_imagenome(tmp_path / "cig", tmp_path / "mimic", sizes,
                                                       order=rv_tasks.anatomical_order(config), limit=samples)
        assert len(opened) <= graphs and (samples >= graphs or len(opened) < graphs)
        expected = rv_tasks.anatomical_rows(full.findings, words, config)
        got = rv_tasks.anatomical_rows(limited.findings, words, config)
        assert [(r.key, r.instances) for r in got] == [(r.key, r.instances) for r in expected]
        assert len(got) == min(samples, len({f.image.image_id for f in full.findings}))
    opened.clear()
    chest_imagenome.scan_chest_imagenome(tmp_path / "cig", tmp_path / "mimic", sizes, limit=0)
    assert opened == []
