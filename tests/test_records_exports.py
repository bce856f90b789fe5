"""Exports and validation of the next corpora's records (tests/records_fixture.py): multi-image
interleaved rows keep their image order in every trainer format, preference pairs take each
format's preference form, and the shared validation pass checks `<image>` placeholders against
the images. Proven by the consumers: TRL's own `prepare_multimodal_messages` and DPOTrainer,
LLaMA-Factory's loader, ms-swift's documented row rules."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import math
import os
import re
import sys
import types
from pathlib import Path

import pytest
from datasets import Image, Sequence, load_dataset
from records_fixture import (
    CORPUS,
    INTERLEAVED_ROWS,
    LOSS,
    PREFERENCE_ROWS,
    RECORDS,
    interleaved,
    preference,
    write_records_build,
)

from radcorpora.publish.exports import ExportError
from radcorpora.publish.exports import export as export_format
from radcorpora.spec.rules import CorpusRules
from radcorpora.validators.run import validate_build_folder, validate_finished_build

NO_CORPUS_RULES = CorpusRules({}, lambda *a, **k: None)

FORMATS = ("llava", "sharegpt", "trl", "swift")


@pytest.fixture(scope="module")
def records_build(tmp_path_factory) -> Path:
    return write_records_build(tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="module")
def exported(records_build, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("records-exports")
    out = {}
    for config in ("interleaved", "preference"):
        for fmt in FORMATS:
            if (config, fmt) == ("preference", "llava"):
                continue
            out[(config, fmt)] = root / f"{config}-{fmt}"
            export_format(fmt, records_build, out[(config, fmt)], config=config, loss=LOSS[config])
    return out


def _rows(folder: Path, config: str) -> list[dict]:
    path = next(folder.glob(f"{config}-train.json*"))
    return json.loads(path.read_text()) if path.suffix == ".json" else [json.loads(x) for x in path.open()]


def _digests(paths: list[str]) -> list[str]:
    """Export paths -> the sha256 each names (images/<2 hex>/<sha256>.<ext>)."""
    return [Path(p).stem for p in paths]


def _expected(config: str) -> dict[str, list[str]]:
    """id -> sha256 of its images in placeholder order, from the record objects themselves."""
    make, n = (interleaved, INTERLEAVED_ROWS) if config == "interleaved" else (preference, PREFERENCE_ROWS)
    records = [make(i) for i in range(n)]
    return {r.id: [hashlib.sha256(i.bytes).hexdigest() for i in r.images] for r in records}


# ----------------------------------------------------------------------------- several images per row


def test_interleaved_rows_keep_image_order_and_write_each_image_once(exported):
    expected = _expected("interleaved")
    assert max(len(v) for v in expected.values()) == 3 and min(len(v) for v in expected.values()) == 2
    for fmt in FORMATS:
        folder = exported[("interleaved", fmt)]
        settings = json.loads((folder / "export_settings.json").read_text())
        rows = _rows(folder, "interleaved")
        assert [r["id"] for r in rows] == list(expected)
        files = sorted((folder / "images").rglob("*.*"))
        assert len(files) == settings["images"]["count"] == len({d for v in expected.values() for d in v})
        assert all(p.stem == hashlib.sha256(p.read_bytes()).hexdigest() for p in files)
        for row in rows:
            paths = row["image"] if fmt == "llava" else row["images"]
            assert isinstance(paths, list) and _digests(paths) == expected[row["id"]], (fmt, row["id"])
            assert all((folder / p).is_file() for p in paths)
            if fmt == "trl":
                tags = sum(b["type"] == "image" for m in row["messages"] for b in m["content"])
            else:
                turns = row.get("conversations") or row["messages"]
                tags = sum(t.get("value", t.get("content", "")).count("<image>") for t in turns)
            assert tags == len(paths)
    assert json.loads((exported[("interleaved", "llava")] / "export_settings.json").read_text()
                      )["trainer"]["llava"]["images"].startswith("`image` is a list")


def test_trl_places_each_image_where_its_placeholder_was(exported):
    """TRL's own `prepare_multimodal_messages` fills the image blocks from `images`: the k-th
    filled block is the k-th image, and the text after it is the text after the k-th `<image>`."""
    from trl.data_utils import prepare_multimodal_messages

    by_id = {interleaved(i).id: interleaved(i) for i in range(INTERLEAVED_ROWS)}
    ds = load_dataset("json", data_files=str(exported[("interleaved", "trl")] / "interleaved-train.jsonl"), split="train")
    for row in ds:
        record = by_id[row["id"]]
        messages = prepare_multimodal_messages(row["messages"], images=row["images"])
        filled = [(block["image"], content[i + 1]["text"] if i + 1 < len(content) and content[i + 1]["type"] == "text" else "")
                  for m in messages for content in [m["content"]] for i, block in enumerate(content)
                  if block["type"] == "image"]
        want = [(hashlib.sha256(image.bytes).hexdigest(), after.strip("\n"))
                for image, after in zip(record.images, [piece.split("<image>")[0] for t in record.conversations
                                                        for piece in t.value.split("<image>")[1:]])]
        assert [(_digests([path])[0], text) for path, text in filled] == want


def _llamafactory():
    """LLaMA-Factory's dataset parser and loader (installed without its dependencies: a stand-in
    `torchaudio`, which its data package imports but the ShareGPT path never uses; as in
    tests/test_exports.py)."""
    pytest.importorskip("llamafactory")
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    if "torchaudio" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except ImportError:
            stub = types.ModuleType("torchaudio")
            stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
            sys.modules["torchaudio"] = stub
    try:
        from llamafactory.data.loader import _load_single_dataset
        from llamafactory.data.parser import get_dataset_list
    except ImportError as exc:
        pytest.skip(f"llamafactory data package does not import here: {exc}")
    return get_dataset_list, _load_single_dataset


def test_llamafactory_reads_multi_image_rows_and_ranking_pairs(exported):
    get_dataset_list, load_single = _llamafactory()
    for config in ("interleaved", "preference"):
        folder = exported[(config, "sharegpt")]
        info = json.loads((folder / "dataset_info.json").read_text())
        data_args = types.SimpleNamespace(dataset_dir=str(folder), media_dir=str(folder), preprocessing_num_workers=None,
                                          streaming=False, overwrite_cache=True, max_samples=None)
        (attr,) = get_dataset_list(sorted(info), str(folder))
        assert attr.ranking is (config == "preference")
        ds = load_single(attr, types.SimpleNamespace(cache_dir=None, hf_hub_token=None), data_args,
                         types.SimpleNamespace(local_process_index=0, dataloader_num_workers=0))
        expected = _expected(config)
        rows = _rows(folder, config)
        assert len(ds) == len(expected)
        for row, loaded in zip(rows, ds):
            assert _digests(loaded["_images"]) == expected[row["id"]]
            assert all(Path(p).is_absolute() and Path(p).is_file() for p in loaded["_images"])
            assert sum(m["content"].count("<image>") for m in loaded["_prompt"]) == len(loaded["_images"])
            if config == "preference":
                assert [m["content"] for m in loaded["_response"]] == [row["chosen"]["value"], row["rejected"]["value"]]
                assert loaded["_prompt"][-1]["role"] == "user"
            else:
                assert loaded["_response"][0]["role"] == "assistant", "LLaMA-Factory skipped a row"


def _swift_row_problems(row: dict) -> list[str]:
    """ms-swift's standard row rules (docs: Custom Dataset): roles user/assistant alternating from
    user (system first if any), one `<image>` tag per `images` entry, a DPO row ends with the
    chosen assistant message and gives `rejected_response` as a string, no loss flag on users."""
    problems = []
    roles = [m["role"] for m in row["messages"]]
    if roles != ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))] or roles[-1] != "assistant":
        problems.append(f"roles {roles}")
    if sum(m["content"].count("<image>") for m in row["messages"]) != len(row["images"]):
        problems.append("tags != images")
    if "rejected_response" in row and not (isinstance(row["rejected_response"], str) and row["rejected_response"]):
        problems.append("rejected_response")
    if any("loss" in m for m in row["messages"] if m["role"] == "user"):
        problems.append("loss on a user message")
    return problems


def test_swift_rows_follow_ms_swift_rules(exported):
    for config in ("interleaved", "preference"):
        rows = _rows(exported[(config, "swift")], config)
        assert rows and all(_swift_row_problems(r) == [] for r in rows)
        assert all(_digests(r["images"]) == _expected(config)[r["id"]] for r in rows)
    pairs = {r["id"]: r for r in _rows(exported[("preference", "swift")], "preference")}
    for i in range(PREFERENCE_ROWS):
        record = preference(i)
        row = pairs[record.id]
        assert row["messages"][-1]["content"] == record.chosen.value and row["rejected_response"] == record.rejected.value
        assert (row["chosen_score"], row["rejected_score"]) == (record.chosen_score, record.rejected_score)
        assert all("loss" not in m for m in row["messages"])


# ----------------------------------------------------------------------------- preference pairs


def test_trl_preference_rows_are_dpo_rows(exported):
    rows = _rows(exported[("preference", "trl")], "preference")
    settings = json.loads((exported[("preference", "trl")] / "export_settings.json").read_text())
    assert settings["loss"] == "preference" and settings["trainer"]["trl"]["trainer"] == "DPOTrainer"
    for i, row in enumerate(rows):
        record = preference(i)
        assert set(row) == {"id", "images", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"}
        assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"][:len(record.prompt)]
        assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": record.chosen.value}]}]
        assert row["rejected"][0]["content"][0]["text"] == record.rejected.value
        assert sum(b["type"] == "image" for m in row["prompt"] for b in m["content"]) == len(row["images"]) == 2
        assert row["chosen_score"] > row["rejected_score"]


def test_trl_dpo_trainer_trains_on_the_multi_image_preference_export(exported, tmp_path):
    from trl import DPOConfig, DPOTrainer

    from radcorpora.reference_models.models import build_tiny, load_model

    folder = exported[("preference", "trl")]
    texts = [t.value for i in range(PREFERENCE_ROWS) for t in (*preference(i).prompt, preference(i).chosen,
                                                                preference(i).rejected)] * 20
    model, processor = load_model(build_tiny(tmp_path / "tiny", texts, vocab_size=300, image_side=56))
    ds = load_dataset("json", data_files=str(folder / "preference-train.jsonl"), split="train")
    ds = ds.map(lambda r: {"images": [os.path.join(folder, p) for p in r["images"]]}).cast_column("images", Sequence(Image()))
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True, max_length=None)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)


def test_llava_refuses_pairs_and_loss_intents_must_match_the_rows(records_build, tmp_path):
    with pytest.raises(ExportError, match=r"'preference' holds preference pairs; `llava` has no preference form.*"
                                          r"--format trl .*sharegpt .*swift"):
        export_format("llava", records_build, tmp_path / "llava", config="preference", loss="preference")
    with pytest.raises(ExportError, match=r"holds preference pairs .* loss intent is 'all_assistant'"):
        export_format("trl", records_build, tmp_path / "trl", config="preference", loss="all_assistant")
    with pytest.raises(ExportError, match=r"loss intent 'preference' but no chosen/rejected"):
        export_format("swift", records_build, tmp_path / "swift", config="interleaved", loss="preference")
    assert not any(tmp_path.iterdir())


def test_records_exports_are_deterministic(records_build, exported, tmp_path):
    for config in ("interleaved", "preference"):
        export_format("sharegpt", records_build, tmp_path / config, config=config, loss=LOSS[config])
        first = exported[(config, "sharegpt")]
        for path in first.rglob("*"):
            if path.is_file():
                assert path.read_bytes() == (tmp_path / config / path.relative_to(first)).read_bytes(), path


# ----------------------------------------------------------------------------- validation


def _placeholder_check(report):
    return next(c for c in report.checks if c.name == "placeholders_match_images")


def test_validation_checks_placeholders_against_images_by_the_record_shape(tmp_path):
    """Both passes (from disk, and a build checking itself with no worker findings for the rule)
    run the check on both configs, decided by the schema (the corpus is unknown to the registry),
    and name the rows that break it."""
    good = write_records_build(tmp_path)
    bad = write_records_build(tmp_path, broken=True)
    for build, valid in ((good, True), (bad, False)):
        manifest = json.loads((build / "build" / "manifest.json").read_text())
        rows = sum(n for split in manifest["splits"].values() for n in split.values())
        for report in (validate_build_folder(build, CORPUS, RECORDS, NO_CORPUS_RULES, workers=2),
                       validate_finished_build(build, CORPUS, RECORDS, NO_CORPUS_RULES, manifest, [])):
            check = _placeholder_check(report)
            assert check.checked == rows and report.valid is valid, report.summary()
            if valid:
                assert check.violations == 0
                continue
            assert report.summary()["failed_checks"] == ["placeholders_match_images"]
            assert check.violations == 3
            assert [re.sub(r"^data/(\w+)/\S+ row (\d+) \(([\w-]+)\): ", r"\1 \2 \3: ", e) for e in check.examples] == [
                "interleaved 1 il-bad-many: too_many_placeholders",
                "interleaved 2 il-bad-gpt: placeholder_in_assistant_turn",
                "preference 4 pref-bad-answer: placeholder_in_chosen"]


def test_a_build_whose_workers_checked_placeholders_is_not_read_again(tmp_path, monkeypatch):
    from radcorpora.validators import run

    build = write_records_build(tmp_path)
    manifest = json.loads((build / "build" / "manifest.json").read_text())
    from radcorpora.store.state import ShardInfo

    # the workers wrote and checked every shard (record schema and placeholders): nothing is read again
    shards = {rel: ShardInfo(rows=info["rows"], sha256=info["sha256"], bytes=(build / rel).stat().st_size)
              for rel, info in manifest["shards"].items()}
    chunk = types.SimpleNamespace(checked={"placeholders_match_images": 8, "record_schema": 8}, violation_counts={},
                                  violations={}, shards=shards)
    monkeypatch.setattr(run, "_placeholders_from_disk", lambda *a: pytest.fail("re-read what the workers checked"))
    monkeypatch.setattr(run, "check_shard", lambda *a: pytest.fail("re-checked a shard a worker checked"))
    report = validate_finished_build(build, CORPUS, RECORDS, NO_CORPUS_RULES, manifest, [chunk])
    assert _placeholder_check(report).checked == 8 and report.valid
