"""The engine's promises, driven as a user drives them: layers, Ray = local byte for byte,
publish re-validates, changed sources are seen, user errors exit 2 without a traceback and
print paths as they are."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from helpers import build_radimagenet_vqa
from typer.testing import CliRunner

import radcorpora
from radcorpora.cli import app
from radcorpora.store.state import BuildStateError

ROOT = Path(radcorpora.__file__).parent
runner = CliRunner()


def shard_bytes(build: Path) -> dict[str, str]:
    return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((build / "data").rglob("*.parquet"))}


@pytest.mark.slow
def test_ray_build_equals_local_build_byte_for_byte(demo_source, demo_build, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    outcome = build_radimagenet_vqa(demo_source, out, benchmark_images=20, images_per_shard=40, workers=2,
                                    executor="ray")
    assert outcome.report.valid
    assert shard_bytes(out) == shard_bytes(demo_build)
    assert (out / "build/rejects.jsonl").read_bytes() == (demo_build / "build/rejects.jsonl").read_bytes()


def test_publish_refuses_what_does_not_validate_now(demo_build, tmp_path):
    import pyarrow.parquet as pq

    ok = runner.invoke(app, ["publish", str(demo_build), "--repo", "org/name", "--dry-run"])
    assert ok.exit_code == 0, ok.output
    edited = Path(shutil.copytree(demo_build, tmp_path / "edited"))
    shard = sorted((edited / "data/benchmark").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    mc = next(i for i, r in enumerate(rows) if r["question_type"] == "multiple_choice")
    rows[mc]["answer"] = "E"
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), shard)
    deleted = Path(shutil.copytree(demo_build, tmp_path / "deleted"))
    sorted((deleted / "data/instruct").glob("*.parquet"))[0].unlink()
    truncated = Path(shutil.copytree(demo_build, tmp_path / "truncated"))
    victim = sorted((truncated / "data/alignment").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    for bad in (edited, deleted, truncated):
        result = runner.invoke(app, ["publish", str(bad), "--repo", "org/name", "--dry-run"])
        assert result.exit_code == 2, (bad, result.output)
        assert "does not validate" in result.output
        manifest = (bad / "build/manifest.json").read_text()
        assert '"valid": false' in manifest  # the verdict is written back
        assert "`radcorpora validate` FAILED" in (bad / "README.md").read_text()


def test_a_changed_source_is_not_answered_with_the_old_build(demo_source, tmp_path):
    source = Path(shutil.copytree(demo_source, tmp_path / "src"))
    victim = sorted((source / "radiology_ai/MR/brain/edema").glob("*.png"))[0]
    good = victim.read_bytes()
    victim.write_bytes(good[:300])  # corrupt: rejected
    out = tmp_path / "out"
    first = build_radimagenet_vqa(source, out, benchmark_images=20, images_per_shard=40)
    assert first.manifest["rejected_rows"] >= 1
    victim.write_bytes(good)  # repaired: same path, new content
    with pytest.raises(BuildStateError, match="sources whose content changed"):
        build_radimagenet_vqa(source, out, benchmark_images=20, images_per_shard=40)
    again = build_radimagenet_vqa(source, out, benchmark_images=20, images_per_shard=40, overwrite=True)
    assert again.manifest["rejected_rows"] == first.manifest["rejected_rows"] - 1


def test_a_build_by_another_radcorpora_version_is_not_taken_as_current(demo_source, demo_build, tmp_path, monkeypatch):
    """The same sources and settings can give other bytes under other code (this round changed
    which wording a seed picks): a folder built by another version is refused, naming both."""
    import radcorpora.engine.lifecycle as lifecycle

    out = Path(shutil.copytree(demo_build, tmp_path / "out"))
    monkeypatch.setattr(lifecycle, "__version__", "9.9.9")
    with pytest.raises(BuildStateError, match=rf"made by radcorpora {radcorpora.__version__} \(this is 9\.9\.9\)"):
        build_radimagenet_vqa(demo_source, out, benchmark_images=20, images_per_shard=40)
    again = build_radimagenet_vqa(demo_source, out, benchmark_images=20, images_per_shard=40, overwrite=True)
    assert again.manifest["fingerprint"]["radcorpora"] == "9.9.9" and again.report.valid


def test_user_errors_exit_2_without_traceback_and_name_the_path(demo_source, demo_build, tmp_path, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["build", "radimagenet-vqa", "--source", str(demo_source), "--out", str(a_file)], str(a_file)),
        (["build", "radimagenet-vqa", "--source", str(demo_source), "--out", str(a_file / "sub")], str(a_file)),
        (["build", "radimagenet-vqa", "--source", str(tmp_path / "data[v2]"), "--out", str(tmp_path / "o")], "data[v2]"),
        (["publish", str(demo_build), "--repo", "not a repo id!!"], "not a repo id!!"),
    ]
    broken = Path(shutil.copytree(demo_build, tmp_path / "broken"))
    shard = sorted((broken / "data/instruct").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:500])
    for argv, named in cases:
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert named in result.output and "Traceback" not in result.output, result.output
    validate = runner.invoke(app, ["validate", str(broken)])
    assert validate.exit_code == 1 and "Traceback" not in validate.output
    assert shard.name in (broken / "build/validation.json").read_text()  # named, and written back
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    no_token = runner.invoke(app, ["publish", str(demo_build), "--repo", "org/name"])
    assert no_token.exit_code == 2 and "hf auth login" in no_token.output


def test_rejects_are_byte_identical_across_builds_and_name_every_place(demo_source, tmp_path):
    source = Path(shutil.copytree(demo_source, tmp_path / "src"))
    victim = sorted((source / "radiology_ai/CT/lung/nodule").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    a = build_radimagenet_vqa(source, tmp_path / "a", benchmark_images=20, images_per_shard=40)
    b = build_radimagenet_vqa(source, tmp_path / "b", benchmark_images=20, images_per_shard=40, workers=2)
    ledger = (tmp_path / "a/build/rejects.jsonl").read_bytes()
    assert ledger == (tmp_path / "b/build/rejects.jsonl").read_bytes()
    assert b"object at 0x" not in ledger and victim.name.encode() in ledger
    assert a.manifest["rejects"] == b.manifest["rejects"]


def test_help_and_version_and_corpora():
    assert runner.invoke(app, ["--version"]).output.startswith("radcorpora ")
    listing = runner.invoke(app, ["corpora"])
    assert listing.exit_code == 0 and "radimagenet-vqa" in listing.output and "rad-ace-cot" in listing.output
    help_text = runner.invoke(app, ["build", "radimagenet-vqa", "--help"], terminal_width=80).output
    assert "--overwrite" in help_text and "--executor" in help_text
    assert "--overwrite BOOLEAN" not in help_text


def test_arrow_schemas_derived_without_datasets_equal_the_datasets_features():
    """The build path derives Arrow schemas itself (no `datasets` import at start-up); they must
    be exactly what `datasets.Features` writes, metadata included, or loading would differ."""
    from radcorpora.registry import CORPORA
    from radcorpora.schemas.features import arrow_schema_for, features_for

    for spec in CORPORA.values():
        for config in spec.configs:
            derived, reference = arrow_schema_for(config.record), features_for(config.record).arrow_schema
            assert derived.equals(reference, check_metadata=True), (spec.name, config.name)


def _card_metadata_by_datasets(build: Path, configs: dict, default: str | None) -> dict:
    """The card's `configs` and `dataset_info` as `datasets`' own helpers write them."""
    import pyarrow.parquet as pq
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    from radcorpora.schemas.features import features_for

    data, metadata_configs, infos = DatasetCardData(), {}, {}
    for name, model in configs.items():
        folder = build / "data" / name
        splits = sorted({p.name.split("-")[0] for p in folder.glob("*.parquet")})
        if not splits:
            continue
        metadata_configs[name] = {"data_files": [{"split": s, "path": f"data/{name}/{s}-*"} for s in splits],
                                  **({"default": True} if name == default else {})}
        split_dict, total = SplitDict(), 0
        for split in splits:
            files = sorted(folder.glob(f"{split}-*.parquet"))
            size = sum(f.stat().st_size for f in files)
            total += size
            split_dict.add(SplitInfo(name=split, num_bytes=size,
                                     num_examples=sum(pq.ParquetFile(f).metadata.num_rows for f in files)))
        infos[name] = DatasetInfo(features=features_for(model), splits=split_dict, config_name=name,
                                  dataset_size=total, download_size=total)
    MetadataConfigs(metadata_configs).to_dataset_card_data(data)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data.to_dict()


def test_card_yaml_written_without_datasets_equals_what_datasets_writes(demo_build, tmp_path):
    """The card's features, splits and configs are laid out without importing `datasets` (a
    second of every build): for every registered config's features, and for whole cards of a
    build with several configs, one config and a config named `default`, the YAML must be what
    `datasets`' own helpers write, key order included."""
    import pyarrow.parquet as pq
    import yaml
    from datasets import Features

    from radcorpora.publish.card import card_metadata
    from radcorpora.registry import CORPORA
    from radcorpora.schemas.features import features_for, features_yaml_for

    for spec in CORPORA.values():
        for config in spec.configs:
            assert features_yaml_for(config.record) == features_for(config.record)._to_yaml_list(), (spec.name, config.name)
            assert Features._from_yaml_list(features_yaml_for(config.record)) == features_for(config.record)
    spec = CORPORA["radimagenet-vqa"]
    records = {c.name: c.record for c in spec.configs}
    one = tmp_path / "one"
    (one / "data" / "default").mkdir(parents=True)
    shard = sorted((demo_build / "data" / "instruct").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(shard), one / "data" / "default" / "train-00000-of-00001.parquet")
    for build, configs, default in ((demo_build, records, spec.default_config),
                                    (demo_build, {"benchmark": records["benchmark"]}, None),
                                    (one, {"default": records["instruct"]}, "default")):
        ours, _ = card_metadata(build, configs, default)
        reference = _card_metadata_by_datasets(build, configs, default)
        assert yaml.safe_dump(ours.to_dict(), sort_keys=False) == yaml.safe_dump(reference, sort_keys=False)


def test_card_text_is_what_huggingface_hub_makes_of_it(demo_build):
    """The card is written without huggingface_hub's `DatasetCard`; parsed and printed by it (as
    the Hub and `push` do), it must come back unchanged."""
    from huggingface_hub import DatasetCard

    text = (demo_build / "README.md").read_text(encoding="utf-8")
    card = DatasetCard(text)
    assert str(card) == text
    assert card.data.to_dict()["configs"][0]["config_name"] == "alignment"


def test_cards_tell_the_truth(demo_source, tmp_path):
    source = Path(shutil.copytree(demo_source, tmp_path / "src"))
    (source / "RadiologyAI_test.csv").unlink()  # no test split: no benchmark
    outcome = build_radimagenet_vqa(source, tmp_path / "out", benchmark_images=20, images_per_shard=40)
    card = (tmp_path / "out/README.md").read_text()
    assert "benchmark" not in outcome.manifest["splits"]
    assert '"benchmark")' not in card and "config_name: benchmark" not in card
    assert "## Warnings" in card and "benchmark config was not built" in card
    assert "license: other" in card


def test_every_cli_option_has_help_text():
    import click
    import typer.main

    command = typer.main.get_command(app)
    missing = []

    def walk(cmd: click.Command, path: str) -> None:
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.help and param.name != "help":
                missing.append(f"{path} {param.opts[0]}")
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(command, "radcorpora")
    assert missing == []


def test_a_build_never_imports_datasets(demo_source, tmp_path):
    """`import datasets` costs about a second, huggingface_hub's card and API modules (with their
    HTTP client) a third of one, `pyarrow.dataset` a tenth; the build path (scan, workers,
    validation, card) does without them, so a build pays only for what it does."""
    import subprocess
    import sys

    script = ("import sys\nfrom radcorpora.registry import build\nfrom radcorpora.corpora.radimagenet_vqa.build import make_settings\n"
              f"build('radimagenet-vqa', {{'source': {str(demo_source)!r}}}, make_settings(benchmark_images=20), "
              f"__import__('pathlib').Path({str(tmp_path / 'out')!r}))\n"
              "print(sorted(m for m in sys.modules if m == 'datasets' or m.startswith('datasets.')\n"
              "             or m in ('huggingface_hub.repocard', 'huggingface_hub.hf_api', 'pyarrow.dataset')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "README.md").is_file()


def test_estimate_table_reads_at_80_columns_at_any_scale():
    """Issue 10.7: a readable table at 80 columns, nothing cut to "…", totals as text, a hint for
    a model without a price; checked with a million-request stage and a long model name."""
    from rich.console import Console

    from radcorpora.engine.estimate import print_estimate

    stage = {"stage": "conversation_verify", "llm": "anthropic:claude-sonnet-4-5", "requests": 1_089_000,
             "already_cached": 12_345, "estimated_input_tokens": 987_654_321, "estimated_output_tokens": 87_120_000,
             "cost_usd_online": 12_345.67, "cost_usd_batch": 6_172.84, "minutes_online": 10_890.5, "limited_by": "rpm"}
    unpriced = dict(stage, stage="prior_removal", llm="openai:my-local-vllm-model", cost_usd_online=None,
                    cost_usd_batch=None, limited_by="concurrency")
    result = {"corpus": "radvlm", "samples": 1_089_000, "stages": [stage, unpriced], "prices_as_of": "2025-11",
              "total": {"requests": 2_178_000, "to_send": 2_153_310, "cost_usd_online": None, "cost_usd_batch": None},
              "missing_prices": ["openai:my-local-vllm-model"]}
    console = Console(width=80, record=True)
    print_estimate(result, console)
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines()) and "…" not in text
    flat = "".join(text.split())
    for value in ("anthropic:claude-sonnet-4-5", "1,089,000", "987,654,321", "$12,345.67", "10,890.5",
                  "conversation_verifyrpm", "Nopriceknownforopenai:my-local-vllm-model"):
        assert value in flat, value


@pytest.mark.parametrize("options", [{"executor": "dask"}, {"workers": 0}, {"workers": "2"}])
def test_python_build_refuses_bad_executor_options_before_any_work(tmp_path, options):
    """`corpora.build` from Python: a wrong executor or worker count is refused at once, not by the
    manifest writer after the whole build (as it was for an executor that was not a string)."""
    from radcorpora.corpora.radimagenet_vqa.build import make_settings
    from radcorpora.registry import build

    with pytest.raises(ValueError, match="executor|workers"):
        build("radimagenet-vqa", {"source": tmp_path / "nothing-here"}, make_settings(), tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_python_dash_m_runs_the_command_line_with_its_exit_codes(tmp_path):
    """`python -m radcorpora` is the `radcorpora` script: same output, same exit codes (the
    script's quick exit must not swallow them)."""
    import subprocess
    import sys

    version = subprocess.run([sys.executable, "-m", "radcorpora", "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"radcorpora {radcorpora.__version__}"
    missing = subprocess.run([sys.executable, "-m", "radcorpora", "validate", str(tmp_path / "missing")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "not a folder" in missing.stderr and "Traceback" not in missing.stderr


def test_read_columns_gives_what_read_table_gives(tmp_path):
    """Validators read projected columns through `store.folder.read_columns` (no dataset layer);
    nested leaves, whole structs and lists must come back as `pq.read_table` gives them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from radcorpora.store.folder import read_columns

    table = pa.table({
        "id": ["a", "b", "c"],
        "lineage": pa.array([{"source_id": "s1", "patient_id": "p1"}, {"source_id": "s2", "patient_id": None},
                             {"source_id": "s3", "patient_id": "p3"}]),
        "instances": pa.array([[{"id": "i1", "replication": 2}], [], None]),
    })
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, path, row_group_size=2)
    for columns in (["id"], ["lineage.patient_id", "instances"], ["lineage", "lineage.source_id"]):
        assert read_columns(path, columns).equals(pq.read_table(path, columns=columns)), columns


def test_worker_processes_can_keep_freed_heap():
    """Workers (and the command line's own process) raise glibc's trim threshold so a chunk's
    freed image slices are reused, not faulted in again; where glibc is the C library the call
    must take."""
    import platform

    from radcorpora.engine.executors import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt's trim threshold is glibc's")
    assert keep_freed_memory() is True
