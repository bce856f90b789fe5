"""End-to-end builds of the demo source: loading, determinism, resume, bad input, validation."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from helpers import build_radimagenet_vqa
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.corpora.radimagenet_vqa import build as rvqa
from radcorpora.publish.views import QuestionView
from radcorpora.store.state import BuildStateError

runner = CliRunner()


def shard_bytes(build: Path) -> dict[str, bytes]:
    return {str(p.relative_to(build)): p.read_bytes() for p in sorted((build / "data").rglob("*.parquet"))}


def test_every_config_loads_through_datasets(demo_build):
    for config in ("alignment", "instruct", "benchmark"):
        ds = load_dataset(str(demo_build), config)
        manifest = json.loads((demo_build / "build/manifest.json").read_text())
        assert {s: len(d) for s, d in ds.items()} == manifest["splits"][config]
    bench = load_dataset(str(demo_build), "benchmark")["test"]
    row = bench[0]
    assert row["image"].size == (224, 224)
    assert set(row["metadata"]) >= {"content_type", "correct_text", "is_abnormal", "location", "modality", "pathology", "question_id"}
    assert row["question_type"] in {"open", "closed", "multiple_choice"}
    mc = [r for r in bench if r["question_type"] == "multiple_choice"]
    assert all(len(r["choices"]) == 4 and r["answer"] in "ABCD" for r in mc)
    assert all(r["choices"] is None for r in bench if r["question_type"] != "multiple_choice")
    assert len(bench) == 9 * 20
    default = load_dataset(str(demo_build))
    assert set(default) == {"train", "validation"} and "questions" in default["train"].column_names


def test_image_bytes_stored_as_read_and_once_per_image(demo_build, demo_source):
    table = pq.read_table(sorted((demo_build / "data/instruct").glob("train-*.parquet"))[0])
    row = table.slice(0, 1).to_pylist()[0]
    source = demo_source / row["lineage"]["source_id"]
    assert row["image"]["bytes"] == source.read_bytes()
    manifest = json.loads((demo_build / "build/manifest.json").read_text())
    for config in ("alignment", "instruct"):
        sources = set()
        for shard in (demo_build / "data" / config).glob("*.parquet"):
            sources |= {r["source_id"] for r in pq.read_table(shard, columns=["lineage"]).column("lineage").to_pylist()}
        source_bytes = sum((demo_source / s).stat().st_size for s in sources)
        output = manifest["storage"]["output_bytes"][config]
        assert output / source_bytes <= 1.2, (config, output / source_bytes)
    # the benchmark holds one row per question (nine per image), each with its image: the shards
    # store each image once, and every row still reads back its own image's bytes
    source_bytes, rows = 0, 0
    for shard in (demo_build / "data" / "benchmark").glob("*.parquet"):
        table = pq.read_table(shard, columns=["image", "lineage"])
        for image, lineage in zip(table.column("image").to_pylist(), table.column("lineage").to_pylist()):
            assert image["bytes"] == (demo_source / lineage["source_id"]).read_bytes()
            rows += 1
        source_bytes += sum((demo_source / s).stat().st_size
                            for s in {r["source_id"] for r in table.column("lineage").to_pylist()})
    assert rows == 9 * 20
    assert manifest["storage"]["output_bytes"]["benchmark"] / source_bytes <= 1.2


def test_question_view_gives_one_example_per_question(demo_build):
    instruct = load_dataset(str(demo_build), "instruct")["train"]
    view = QuestionView(instruct)
    assert len(view) == 9 * len(instruct)
    ids = [e["id"] for e in view]
    assert len(set(ids)) == len(ids)
    example = view[13]
    assert example["conversations"][0]["from"] == "human" and example["conversations"][0]["value"].startswith("<image>")
    assert example["conversations"][1]["value"] == example["answer"]
    assert example["image"].size == (224, 224)
    assert [e["id"] for e in view[9:12]] == ids[9:12]


def test_byte_identical_across_workers_and_resume_after_kill(demo_source, demo_build, tmp_path, monkeypatch):
    parallel = tmp_path / "parallel"
    build_radimagenet_vqa(demo_source, parallel, benchmark_images=20, images_per_shard=40, workers=2)
    assert shard_bytes(parallel) == shard_bytes(demo_build)

    killed = tmp_path / "killed"
    real = rvqa.build_chunk
    calls = {"n": 0}

    def dies_on_third_chunk(spec, out):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(spec, out)

    monkeypatch.setattr(rvqa, "build_chunk", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_radimagenet_vqa(demo_source, killed, benchmark_images=20, images_per_shard=40)
    assert not (killed / "build/manifest.json").exists()
    assert not list(killed.rglob("*.tmp"))  # the half-written shard was removed
    monkeypatch.setattr(rvqa, "build_chunk", real)
    resumed = build_radimagenet_vqa(demo_source, killed, benchmark_images=20, images_per_shard=40)
    assert resumed.state == "resume" and resumed.report.valid
    assert shard_bytes(killed) == shard_bytes(demo_build)

    again = build_radimagenet_vqa(demo_source, killed, benchmark_images=20, images_per_shard=40)
    assert again.state == "complete" and shard_bytes(killed) == shard_bytes(demo_build)
    with pytest.raises(BuildStateError, match="seed"):
        build_radimagenet_vqa(demo_source, killed, seed=1, benchmark_images=20, images_per_shard=40)
    rebuilt = build_radimagenet_vqa(demo_source, killed, seed=1, benchmark_images=20, images_per_shard=40,
                                    overwrite=True)
    assert rebuilt.state == "fresh" and shard_bytes(killed) != shard_bytes(demo_build)


def test_corrupt_and_missing_images_are_rejected_and_counted(demo_source, tmp_path):
    source = Path(shutil.copytree(demo_source, tmp_path / "src"))
    victims = sorted((source / "radiology_ai/MR/brain/edema").glob("*.png"))
    victims[0].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    victims[1].write_bytes(victims[1].read_bytes()[:200])  # truncated
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", "radimagenet-vqa", "--source", str(source), "--out", str(out),
                                 "--benchmark-images", "1000", "--workers", "1"])
    assert result.exit_code == 0, result.output
    rejects = [json.loads(line) for line in (out / "build/rejects.jsonl").read_text().splitlines()]
    bad = {Path(r["source"]).name: r for r in rejects}
    assert {victims[0].name, victims[1].name} <= set(bad)
    assert all(bad[v.name]["reason"] == "image_does_not_decode" for v in victims[:2])
    manifest = json.loads((out / "build/manifest.json").read_text())
    assert manifest["rejects"]["image_does_not_decode"] == 2 and manifest["rejected_rows"] == len(rejects)
    assert "image_does_not_decode" in (out / "README.md").read_text()


def test_validate_cli_passes_and_catches_tampering(demo_build, tmp_path):
    ok = runner.invoke(app, ["validate", str(demo_build)])
    assert ok.exit_code == 0, ok.output
    tampered = Path(shutil.copytree(demo_build, tmp_path / "tampered"))
    shard = sorted((tampered / "data/benchmark").glob("test-*.parquet"))[0]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    for row in rows:
        if row["metadata"]["question_id"] == "pathology_multiple_choice":
            row["choices"] = [c for c in row["choices"] if c != "no pathology seen"] + ["fracture"] * (
                1 if "no pathology seen" in row["choices"] else 0)
            break
    for row in rows:
        if row["metadata"]["question_id"] == "anatomy_closed_negative":
            row["subject"] = row["metadata"]["location"]
            break
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    bad = runner.invoke(app, ["validate", str(tampered)])
    assert bad.exit_code == 1
    assert "closed_polarity" in bad.output and ("multiple_choice_options" in bad.output or "record_schema" in bad.output)
    missing = runner.invoke(app, ["validate", str(tmp_path)])
    assert missing.exit_code == 2 and "manifest" in missing.output


def test_unknown_folder_fails_before_work(demo_source, tmp_path):
    source = Path(shutil.copytree(demo_source, tmp_path / "src"))
    (source / "radiology_ai/MR/elbow/normal").mkdir(parents=True)
    shutil.copy(next((source / "radiology_ai/MR/knee/normal").glob("*.png")), source / "radiology_ai/MR/elbow/normal/x.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", "radimagenet-vqa", "--source", str(source), "--out", str(out)])
    assert result.exit_code == 2 and "elbow" in result.output
    assert not out.exists() or not any(out.iterdir())
    label_map = tmp_path / "map.yaml"
    label_map.write_text("anatomy: {elbow: null}\n")
    result = runner.invoke(app, ["build", "radimagenet-vqa", "--source", str(source), "--out", str(out),
                                 "--label-map", str(label_map), "--benchmark-images", "10"])
    assert result.exit_code == 0, result.output


def test_card_yaml_declares_configs_features_and_licence(demo_build):
    from radcorpora.store.folder import read_card_yaml

    card = read_card_yaml(demo_build)
    assert {c["config_name"] for c in card["configs"]} == {"alignment", "instruct", "benchmark"}
    assert card["license"] == "other" and card["license_name"]
    infos = {i["config_name"]: i for i in card["dataset_info"]}
    assert infos["benchmark"]["splits"][0]["num_examples"] == 180
    text = (demo_build / "README.md").read_text()
    assert "radcorpora build radimagenet-vqa" in text and "passed" in text and "mei2022radimagenet" in text


def test_validate_finds_repeated_ids_within_and_across_shards(demo_build, tmp_path):
    """An id used twice, in one shard and across two shards of a config, is reported once per
    repeat with both places named, by the default and the --deep validation alike."""
    from radcorpora.registry import validate
    from radcorpora.spec.report import Check

    check = Check(name="unique_ids", description="")
    seen: dict[str, str] = {}
    check.expect_unique(["a", "b", "a"], seen, "shard-0")
    check.expect_unique(["c", "b"], seen, "shard-1")
    assert (check.checked, check.violations) == (5, 2)
    assert check.examples == ["shard-0: duplicate id 'a' (also in shard-0)", "shard-1: duplicate id 'b' (also in shard-0)"]

    tampered = Path(shutil.copytree(demo_build, tmp_path / "tampered"))
    shards = sorted((tampered / "data/alignment").glob("train-*.parquet"))
    assert len(shards) >= 2
    first = pq.read_table(shards[0])
    ids = first.column("id").to_pylist()
    pq.write_table(first.set_column(first.schema.get_field_index("id"), "id", pa.array(ids[:-1] + [ids[0]])), shards[0])
    second = pq.read_table(shards[1])
    other = second.column("id").to_pylist()
    pq.write_table(second.set_column(second.schema.get_field_index("id"), "id", pa.array([ids[1]] + other[1:])), shards[1])
    for deep in (False, True):
        report = validate(tampered, deep=deep, image_check="crc")
        unique = next(c for c in report.checks if c.name == "unique_ids")
        assert unique.violations == 2 and unique.checked == report.stats["rows"], (deep, unique)
        assert any(shards[1].name in e and shards[0].name in e and repr(ids[1]) in e for e in unique.examples), unique.examples
        assert not report.valid
