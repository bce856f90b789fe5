"""Issue 19: what the authors' code, the real tables and a new user found in radvlm, each checked
through the CLI as a user meets it."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from radcorpora.cli import app

runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def rows_of(build: Path, config: str, split: str) -> list[dict]:
    rows: list[dict] = []
    for shard in sorted((build / "data" / config).glob(f"{split}-*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    from radcorpora.demo.chexpert import write_demo_chexpert
    from radcorpora.demo.vindr_cxr import write_demo_vindr_cxr

    root = tmp_path_factory.mktemp("sources")
    write_demo_chexpert(root / "chexpert")
    write_demo_vindr_cxr(root / "vindr-cxr", n_train=6, n_test=3)
    return {"chexpert": root / "chexpert", "vindr": root / "vindr-cxr"}


@pytest.fixture(scope="module")
def build(sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "radvlm"
    result = cli("build", "radvlm", "--chexpert", sources["chexpert"], "--vindr-cxr", sources["vindr"],
                 "--out", out, "--workers", "1")
    assert result.exit_code == 0, result.output
    return out


# ----------------------------------------------------------------------------- wrong data


def test_evaluation_splits_hold_each_instance_once(build, tmp_path):
    from radcorpora.publish.views import instance_view

    manifest = json.loads((build / "build/manifest.json").read_text())
    replicated = [c for c in ("abnormality_grounding", "abnormality_detection")
                  if any(i["replication"] > 1 for r in rows_of(build, c, "train") for i in r["instances"])]
    assert replicated == ["abnormality_grounding", "abnormality_detection"]  # training rows keep the published factors
    for config in manifest["splits"]:
        test_rows = rows_of(build, config, "test")
        instances = [i for r in test_rows for i in r["instances"]]
        assert instances and all(i["replication"] == 1 for i in instances), config
        assert len(list(instance_view(test_rows))) == len(instances)
    test_instances = sum(len(r["instances"]) for r in rows_of(build, "abnormality_grounding", "test"))
    result = cli("export", build, "--format", "llava", "--config", "abnormality_grounding", "--split", "test",
                 "--out", tmp_path / "llava")
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for p in (tmp_path / "llava").rglob("*.json*") if "settings" not in p.name
                for line in ([p.read_text()] if p.suffix == ".json" else p.read_text().splitlines())]
    ids = [e["id"] for doc in exported for e in (doc if isinstance(doc, list) else [doc])]
    assert len(ids) == test_instances and not any("#r" in i for i in ids)
    validation = json.loads((build / "build/validation.json").read_text())
    assert any(c["name"] == "evaluation_instances_once" and c["violations"] == 0 for c in validation["checks"])


def _image_id(csv_path: str) -> str:
    """CheXpert's image id: the CSV path without its `CheXpert-v1.0*` folder."""
    first, _, rest = csv_path.partition("/")
    return rest if first.startswith("CheXpert-v1.0") else csv_path


def _chexpert_tables(folder: Path) -> tuple[Path, list[Path]]:
    dataset = next(folder.rglob("train.csv")).parent
    return dataset, [dataset / name for name in ("train.csv", "valid.csv", "test_labels.csv")]


def _edit_chexpert_train(folder: Path, edits: list[dict[str, str]]) -> list[str]:
    """Set the labels of the first frontal train rows whose image exists; returns their image ids."""
    dataset, (table, *_) = _chexpert_tables(folder)
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    frontal = [r for r in rows if r["Frontal/Lateral"] == "Frontal" and (dataset / _image_id(r["Path"])).exists()]
    labels = [k for k in rows[0] if k not in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")]
    for row, edit in zip(frontal, edits):
        for label in labels:
            row[label] = edit.get(label, "")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    table.write_text(out.getvalue())
    return [_image_id(r["Path"]) for r in frontal[:len(edits)]]


def test_no_finding_with_support_devices_is_kept_and_named(sources, tmp_path):
    folder = shutil.copytree(sources["chexpert"], tmp_path / "chexpert")
    ids = _edit_chexpert_train(folder, [{"No Finding": "1.0", "Support Devices": "1.0"},
                                        {"No Finding": "1.0", "Support Devices": "-1.0"},
                                        {"No Finding": "1.0", "Edema": "1.0"}])
    out = tmp_path / "out"
    result = cli("build", "radvlm", "--chexpert", folder, "--tasks", "abnormality_classification", "--out", out,
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    rows = {r["lineage"]["source_id"]: r for split in ("train", "test")
            for r in rows_of(out, "abnormality_classification", split)}
    devices, uncertain_devices = rows[ids[0]], rows[ids[1]]
    assert devices["positive_labels"] == ["Support Devices"]
    assert "support devices" in devices["instances"][0]["conversations"][1]["value"].lower()
    assert uncertain_devices["positive_labels"] == []  # uncertain counts as absent (the paper's policy)
    assert ids[2] not in rows
    rejects = [json.loads(line) for line in (out / "build/rejects.jsonl").read_text().splitlines()]
    contradicted = [r for r in rejects if r["reason"] == "no_finding_contradicts_labels"]
    assert [r["row"] for r in contradicted] == [ids[2]]


def test_every_image_left_out_for_its_view_is_counted(build, sources):
    manifest = json.loads((build / "build/manifest.json").read_text())
    dataset, tables = _chexpert_tables(sources["chexpert"])
    lateral = {_image_id(row["Path"]) for table in tables for row in csv.DictReader(io.StringIO(table.read_text()))
               if row["Path"].endswith("_lateral.jpg") and (dataset / _image_id(row["Path"])).exists()}
    assert lateral and manifest["excluded"] == {"chexpert/view_lateral": len(lateral)}
    assert "## Left out by the method" in (build / "README.md").read_text()
    assert "view_lateral" in (build / "README.md").read_text()
    preview = cli("preview", build, "--out", build.parent / "preview.html")
    assert preview.exit_code == 0, preview.output
    page = (build.parent / "preview.html").read_text()
    assert "Left out by the method" in page and f'view_lateral</td><td class="n">{len(lateral):,}' in page
    # CheXpert's test_labels.csv has no view columns: the view comes from the file name
    test_ids = {r["lineage"]["source_id"] for r in rows_of(build, "abnormality_classification", "test")}
    with (dataset / "test_labels.csv").open() as handle:
        frontal_test = {row["Path"] for row in csv.DictReader(handle) if row["Path"].endswith("_frontal.jpg")}
    assert frontal_test and test_ids == frontal_test


def test_max_side_boxes_describe_the_stored_image(sources, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    result = cli("build", "radvlm", "--vindr-cxr", sources["vindr"], "--tasks", "abnormality_grounding",
                 "--max-side", "64", "--out", out, "--workers", "1")
    assert result.exit_code == 0, result.output
    rows = rows_of(out, "abnormality_grounding", "train") + rows_of(out, "abnormality_grounding", "test")
    assert rows
    for row in rows:
        size = Image.open(io.BytesIO(row["image"]["bytes"])).size
        assert max(size) <= 64 and row["image"]["path"].endswith(".png")
        for instance in row["instances"]:
            for box in instance["boxes"]:
                assert (box["width"], box["height"]) == size


# ----------------------------------------------------------------------------- nothing lost, no traceback


def test_an_unwritable_out_is_refused_before_the_scan(sources):
    result = cli("build", "radvlm", "--vindr-cxr", sources["vindr"], "--out", "/proc/radcorpora-test/out")
    assert result.exit_code == 2 and "cannot write the output folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_empty_config_fails_the_build_unless_allowed(sources, tmp_path):
    empty = tmp_path / "vindr-empty"
    shutil.copytree(sources["vindr"], empty)
    for table in (empty / "annotations").glob("annotations_*.csv"):
        table.write_text(table.read_text().splitlines()[0] + "\n")
    out = tmp_path / "out"
    result = cli("build", "radvlm", "--vindr-cxr", empty, "--tasks", "abnormality_grounding", "--out", out)
    assert result.exit_code == 1 and "abnormality_grounding holds no rows" in result.output
    allowed = cli("build", "radvlm", "--vindr-cxr", empty, "--tasks", "abnormality_grounding", "--out", tmp_path / "ok",
                  "--allow-empty")
    assert allowed.exit_code == 0, allowed.output
    assert "holds no rows" in allowed.output  # said as a warning
    publish = cli("publish", tmp_path / "ok", "--repo", "org/name", "--private", "--dry-run")
    assert publish.exit_code == 2 and "hold no rows" in publish.output


def _corrupt_sources(sources: dict[str, Path], root: Path) -> dict[str, Path]:
    """CheXpert with an image that does not decode and one whose file is missing."""
    folder = shutil.copytree(sources["chexpert"], root / "chexpert")
    images = sorted(folder.rglob("view1_frontal.jpg"))
    images[0].write_bytes(b"not a jpeg at all")
    images[1].unlink()
    return {"chexpert": folder, "vindr": sources["vindr"]}


def test_rejects_are_byte_identical_and_pushed_files_hold_no_absolute_path(sources, tmp_path):
    from radcorpora.publish.push import plan_push

    bad = _corrupt_sources(sources, tmp_path / "src")
    builds = []
    for name in ("one", "two"):
        out = tmp_path / name / "radvlm"
        result = cli("build", "radvlm", "--chexpert", bad["chexpert"], "--vindr-cxr", bad["vindr"], "--out", out,
                     "--workers", "1")
        assert result.exit_code == 0, result.output
        builds.append(out)
    one, two = ((b / "build/rejects.jsonl").read_bytes() for b in builds)
    assert one == two and b" at 0x" not in one
    reasons = Counter(json.loads(line)["reason"] for line in one.decode().splitlines())
    assert reasons["image_does_not_decode"] == 1 and len(reasons) >= 3, reasons
    plan = plan_push(builds[0], "org/name", private=True)
    forbidden = [str(p) for p in (builds[0].resolve(), bad["chexpert"].resolve(), bad["vindr"].resolve(),
                                  tmp_path.resolve())]
    for rel in plan.files:
        text = (builds[0] / rel).read_bytes()
        for path in forbidden:
            assert path.encode() not in text, f"{rel} holds {path}"
    local = json.loads((builds[0] / "build/local.json").read_text())
    assert local["sources"]["chexpert"] == str(bad["chexpert"].resolve()) and "build/local.json" not in plan.files


def test_estimate_takes_the_build_command_with_the_verb_changed(sources, build, tmp_path):
    args = ["radvlm", "--chexpert", str(sources["chexpert"]), "--vindr-cxr", str(sources["vindr"]), "--out", str(build),
            "--workers", "1", "--max-side", "64", "--allow-empty", "--llm", "offline", "--prior-removal", "rules", "--conversations", "0"]
    result = cli("estimate", *args)
    assert result.exit_code == 0, result.output
    assert "no LLM stage" in result.output
    json_result = cli("estimate", *args, "--json")
    assert json.loads(json_result.output)["samples"] > 0


def test_replication_accepts_every_task_and_refuses_an_unknown_source(sources, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("conversation_grounded: 2\nabnormality_grounding/vindr-cxr: 5\n")
    result = cli("build", "radvlm", "--vindr-cxr", sources["vindr"], "--tasks", "abnormality_grounding",
                 "--replication", good, "--out", tmp_path / "out", "--workers", "1")
    assert result.exit_code == 0, result.output
    factors = {i["replication"] for r in rows_of(tmp_path / "out", "abnormality_grounding", "train") for i in r["instances"]}
    assert factors == {5}
    bad = tmp_path / "bad.yaml"
    bad.write_text("abnormality_grounding/vindr: 2\n")
    refused = cli("build", "radvlm", "--vindr-cxr", sources["vindr"], "--replication", bad, "--out", tmp_path / "o2")
    assert refused.exit_code == 2 and "takes no source 'vindr'" in refused.output


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize("args, said", [
    (["--wbf-iou", "2"], "--wbf-iou must be <= 1"),
    (["--tasks", ","], "names no task"),
    (["--tasks", "conversation"], "--conversations N"),
])
def test_option_errors_name_the_option(sources, tmp_path, args, said):
    result = cli("build", "radvlm", "--vindr-cxr", sources["vindr"], "--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and said in result.output, result.output


def test_a_file_given_for_a_folder_says_so(sources, tmp_path):
    table = next((sources["vindr"] / "annotations").glob("*.csv"))
    result = cli("build", "radvlm", "--vindr-cxr", table, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "--vindr-cxr" in result.output and "is a file" in result.output


def test_another_corpus_folder_an_added_source_and_an_unfinished_build(sources, build, tmp_path):
    from radcorpora.store.state import STATE_DIR

    out = tmp_path / "vindr-only"
    assert cli("build", "radvlm", "--vindr-cxr", sources["vindr"], "--out", out, "--workers", "1").exit_code == 0
    added = cli("build", "radvlm", "--vindr-cxr", sources["vindr"], "--chexpert", sources["chexpert"], "--out", out)
    assert added.exit_code == 2 and "added: chexpert" in added.output and "content changed" not in added.output
    other = cli("build", "rad-ace-cot", "--source", sources["vindr"], "--llm", "offline", "--out", out)
    assert other.exit_code == 2 and "holds a radvlm build" in other.output, other.output
    # a build killed before it finished: validate / preview / export / publish say so and how to resume
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    (killed / "build/manifest.json").unlink()
    (killed / STATE_DIR).mkdir(parents=True, exist_ok=True)
    (killed / STATE_DIR / "fingerprint.json").write_text("{}")
    (killed / STATE_DIR / "command.txt").write_text("radcorpora build radvlm --vindr-cxr V --out killed")
    for command in (["validate", killed], ["preview", killed, "--out", tmp_path / "p.html"],
                    ["export", killed, "--format", "llava", "--out", tmp_path / "x"],
                    ["publish", killed, "--repo", "org/name", "--private", "--dry-run"]):
        result = cli(*command)
        assert result.exit_code == 2 and "unfinished build" in result.output, (command, result.output)
        assert "radcorpora build radvlm --vindr-cxr V --out killed" in result.output


def test_build_log_counts_rows_and_a_glob_path_is_warned_about(sources, tmp_path):
    out = tmp_path / "run[1]"
    result = cli("build", "radvlm", "--vindr-cxr", sources["vindr"], "--tasks", "abnormality_detection", "--out", out,
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    rows = len(rows_of(out, "abnormality_detection", "train")) + len(rows_of(out, "abnormality_detection", "test"))
    assert f"abnormality_detection: {rows} rows" in result.output
    assert "datasets.load_dataset reads as a glob" in result.output


def test_corpora_fits_80_columns_and_cuts_no_name(monkeypatch):
    from radcorpora.registry import CORPORA

    monkeypatch.setenv("COLUMNS", "80")
    result = cli("corpora")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.output
    for spec in CORPORA.values():
        for config in spec.configs:
            assert config.name in result.output
        for option in spec.sources:
            assert option.flag in result.output


def test_every_reject_kind_is_reproducible_across_builds(tmp_path):
    """All seven demo sources (each with its own faults: a missing file, an inverted box, a box
    outside the frame, a study without labels, an image in no split) plus an undecodable JPEG, a
    truncated DICOM and an undecodable PNG, built twice into two folders."""
    from radcorpora.corpora.radvlm.spec import _demo_radvlm

    sources = _demo_radvlm(tmp_path / "src", {})
    sorted(sources["mimic_cxr"].rglob("*.jpg"))[3].write_bytes(b"\xff\xd8 not really a jpeg")
    dicom = sorted((sources["vindr_cxr"] / "train").glob("*.dicom"))[1]
    dicom.write_bytes(dicom.read_bytes()[:400])
    pngs = sorted(sources["padchest_gr"].rglob("*.png"))
    if pngs:
        pngs[0].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    flags = [a for key, path in sources.items() for a in (f"--{key.replace('_', '-')}", path)]
    outs = []
    for name in ("one", "two"):
        out = tmp_path / name / "radvlm"
        result = cli("build", "radvlm", *flags, "--max-side", "128", "--out", out, "--workers", "2")
        assert result.exit_code == 0, result.output
        outs.append(out)
    one, two = ((o / "build/rejects.jsonl").read_bytes() for o in outs)
    assert one == two and b" at 0x" not in one and str(tmp_path).encode() not in one
    reasons = Counter(json.loads(line)["reason"] for line in one.decode().splitlines())
    assert {"image_does_not_decode", "image_file_missing", "box_inverted", "no_split"} <= set(reasons), reasons
    for shard in sorted((outs[0] / "data").rglob("*.parquet")):
        assert shard.read_bytes() == (outs[1] / shard.relative_to(outs[0])).read_bytes()


def test_a_settings_file_inside_a_source_folder_reruns_as_complete(sources, tmp_path):
    """The pushed manifest names it relative to its folder; the rerun compares the fingerprint as
    computed on this machine (build/local.json), so a finished build is still complete."""
    from importlib import resources

    vindr = shutil.copytree(sources["vindr"], tmp_path / "vindr")
    wording = vindr / "my_wording.yaml"
    wording.write_text(resources.files("radcorpora.corpora.radvlm").joinpath("prompts/radvlm.yaml").read_text())
    args = ("build", "radvlm", "--vindr-cxr", vindr, "--tasks", "abnormality_detection", "--templates", wording,
            "--out", tmp_path / "out", "--workers", "1")
    assert cli(*args).exit_code == 0
    manifest = json.loads((tmp_path / "out/build/manifest.json").read_text())
    assert str(tmp_path) not in json.dumps(manifest)
    again = cli(*args)
    assert again.exit_code == 0 and "already complete" in again.output, again.output
