"""Trainer exports (llava, sharegpt, trl, swift, rad-ace-csv), proven by their consumers: `datasets`
reads every JSON/JSONL file, LLaMA-Factory's own dataset parser/loader/converter reads the ShareGPT
export and its dataset_info.json, TRL's collator builds the labels each loss intent asks for,
TRL's SFTTrainer trains the tiny reference model on the trl exports and DPOTrainer reads a
preference export. Replication, determinism, bad input and the CLI forms too."""

from __future__ import annotations

import hashlib
import importlib.machinery
import io
import json
import math
import os
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Image, Sequence, load_dataset
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.corpora.rad_ace_cot.spec import SPEC as RAD_ACE_COT
from radcorpora.corpora.radimagenet_vqa.spec import SPEC as RADIMAGENET_VQA
from radcorpora.publish.exports import EXPORTERS, ExportError
from radcorpora.publish.exports import export as export_format
from radcorpora.registry import export, loss_intent

FORMATS = ("llava", "sharegpt", "trl", "swift")


@pytest.fixture(scope="module")
def cot_build(tmp_path_factory) -> Path:
    from helpers import build_rad_ace_cot

    from radcorpora.corpora.rad_ace_cot.build import RadAceCotConfig
    from radcorpora.demo.pubmedvision import write_demo_pubmedvision, write_demo_vqa_rad
    from radcorpora.llm.session import LLMSettings

    root = tmp_path_factory.mktemp("cot-export")
    write_demo_pubmedvision(root / "pubmedvision")
    write_demo_vqa_rad(root / "vqa-rad")
    outcome = build_rad_ace_cot(root / "pubmedvision", root / "build", RadAceCotConfig(llm="offline"),
                                LLMSettings(cache_path=str(root / "cache.sqlite")), vqa_rad=root / "vqa-rad")
    assert outcome.report is not None and outcome.report.valid, outcome.report.summary()
    return root / "build"


@pytest.fixture(scope="module")
def exports(demo_build, cot_build, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every trainer format of both demo builds (default configs)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, build in (("radimagenet-vqa", demo_build), ("rad-ace-cot", cot_build)):
        for fmt in FORMATS:
            out[(name, fmt)] = root / f"{name}-{fmt}"
            export(build, fmt, out[(name, fmt)])
    return out


def _settings(folder: Path) -> dict:
    return json.loads((folder / "export_settings.json").read_text())


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".json", ".jsonl") and p.name not in
                  ("export_settings.json", "dataset_info.json"))


def _png(value: int) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (28, 28), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _handmade(root: Path, config: str, rows: list[dict], corpus: str = "handmade") -> Path:
    """A minimal build folder (manifest + one shard) for shapes no current corpus has."""
    (root / "build").mkdir(parents=True)
    (root / "build" / "manifest.json").write_text(json.dumps({"corpus": corpus, "splits": {config: {"train": len(rows)}}}))
    (root / "data" / config).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / config / "train-00000-of-00001.parquet")
    return root


# ----------------------------------------------------------------------------- every file, read back


def test_every_json_export_loads_with_datasets_and_points_at_real_images(exports, demo_build, cot_build):
    for (name, fmt), folder in exports.items():
        settings = _settings(folder)
        assert settings["format"] == fmt and settings["loss"] == loss_intent(name, settings["config"])
        files = _data_files(folder)
        assert [f.name for f in files] == sorted(n for n in settings["files"] if n != "dataset_info.json")
        images = sorted((folder / "images").rglob("*.*"))
        assert len(images) == settings["images"]["count"]
        # each distinct image once, named by its content
        assert all(p.stem == hashlib.sha256(p.read_bytes()).hexdigest() for p in images)
        for path in files:
            ds = load_dataset("json", data_files=str(path), split="train")
            assert len(ds) == settings["files"][path.name]["rows"] > 0
            assert len(set(ds["id"])) == len(ds), f"{path}: ids repeat"
            column = "image" if fmt == "llava" else "images"
            refs = ds[column]
            paths = {p for ref in refs for p in ([ref] if isinstance(ref, str) else ref)}
            assert paths and all((folder / p).is_file() for p in paths)
    # radimagenet-vqa instruct: one example per question, like the reference models
    rv = _settings(exports[("radimagenet-vqa", "trl")])
    assert rv["per_question"] and rv["files"]["instruct-train.jsonl"]["rows"] == 9 * _rows(demo_build, "instruct", "train")
    assert _settings(exports[("rad-ace-cot", "trl")])["files"]["default-train.jsonl"]["rows"] == _rows(cot_build, "default", "train")


def _rows(build: Path, config: str, split: str) -> int:
    return json.loads((build / "build" / "manifest.json").read_text())["splits"][config][split]


def test_image_placeholders_match_images_in_every_format(exports):
    for (name, fmt), folder in exports.items():
        for path in _data_files(folder):
            records = json.loads(path.read_text()) if path.suffix == ".json" else \
                [json.loads(line) for line in path.read_text().splitlines()]
            for record in records:
                if fmt == "trl":
                    turns = record.get("messages") or record["prompt"] + record["completion"]
                    tags = sum(1 for t in turns for block in t["content"] if block["type"] == "image")
                    images = record["images"]
                else:
                    turns = record.get("conversations") or record.get("messages")
                    tags = sum(t.get("value", t.get("content", "")).count("<image>") for t in turns)
                    images = record.get("images", record.get("image"))
                    images = [images] if isinstance(images, str) else images
                assert tags == len(images) >= 1, (fmt, record["id"])
    multi = [json.loads(line) for line in (exports[("rad-ace-cot", "sharegpt")] / "default-train.jsonl").open()]
    assert any(len(r["images"]) == 2 for r in multi), "the demo's multi-image rows are exported"


def test_exports_are_deterministic_and_replace_a_previous_export(demo_build, tmp_path):
    export(demo_build, "sharegpt", tmp_path / "a")
    first = _settings(tmp_path / "a")
    export(demo_build, "sharegpt", tmp_path / "b")
    export(demo_build, "sharegpt", tmp_path / "a")  # again, over the first
    assert (tmp_path / "a" / "export_settings.json").read_bytes() == (tmp_path / "b" / "export_settings.json").read_bytes()
    assert _settings(tmp_path / "a") == first
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    assert not (tmp_path / "a.partial").exists()


# ----------------------------------------------------------------------------- loss intent, per format


def test_loss_intent_comes_from_the_spec_and_each_format_carries_it(exports):
    assert loss_intent("rad-ace-cot", "default") == "final_assistant" == RAD_ACE_COT.config("default").loss
    assert loss_intent("radimagenet-vqa", "instruct") == "all_assistant" == RADIMAGENET_VQA.config("instruct").loss
    rv_trl = load_dataset("json", data_files=str(exports[("radimagenet-vqa", "trl")] / "instruct-train.jsonl"), split="train")
    cot_trl = load_dataset("json", data_files=str(exports[("rad-ace-cot", "trl")] / "default-train.jsonl"), split="train")
    assert "messages" in rv_trl.column_names and "prompt" not in rv_trl.column_names
    assert {"prompt", "completion"} <= set(cot_trl.column_names) and "messages" not in cot_trl.column_names
    assert all(len(c) == 1 and c[0]["role"] == "assistant" for c in cot_trl["completion"])
    assert _settings(exports[("radimagenet-vqa", "trl")])["trainer"]["trl"]["sft_config"] == {"assistant_only_loss": True}
    swift = [json.loads(line) for line in (exports[("rad-ace-cot", "swift")] / "default-train.jsonl").open()]
    assert all([m.get("loss") for m in r["messages"]] == [None, True] for r in swift)


def test_final_assistant_multi_turn_per_format(tmp_path):
    """A final-answer-only conversation with two assistant turns: swift flags the turns, trl makes
    the last turn the completion, llava and sharegpt (no per-turn flag) refuse it."""
    conversations = [{"from": "human", "value": "<image>\nWhat modality?"}, {"from": "gpt", "value": "CT"},
                     {"from": "human", "value": "Any lesion?"}, {"from": "gpt", "value": "<think>..</think><answer>yes</answer>"}]
    build = _handmade(tmp_path / "b", "default", [{"id": "x1", "image": {"bytes": _png(10), "path": "x.png"},
                                                    "conversations": conversations}])
    export_format("swift", build, tmp_path / "swift", config="default", loss="final_assistant")
    record = json.loads((tmp_path / "swift" / "default-train.jsonl").read_text())
    assert [m.get("loss") for m in record["messages"]] == [None, False, None, True]
    export_format("swift", build, tmp_path / "swift-all", config="default", loss="all_assistant")
    record = json.loads((tmp_path / "swift-all" / "default-train.jsonl").read_text())
    assert [m.get("loss") for m in record["messages"]] == [None, True, None, True]
    export_format("trl", build, tmp_path / "trl", config="default", loss="final_assistant")
    record = json.loads((tmp_path / "trl" / "default-train.jsonl").read_text())
    assert len(record["prompt"]) == 3 and record["completion"][0]["content"][0]["text"].endswith("</answer>")
    for fmt in ("llava", "sharegpt"):
        with pytest.raises(ExportError, match=r"'x1' has several assistant turns.*swift"):
            export_format(fmt, build, tmp_path / fmt, config="default", loss="final_assistant")
        assert not (tmp_path / fmt).exists()


def test_trl_collator_labels_follow_the_loss_intent(exports, demo_build, tmp_path_factory):
    """TRL's own VLM collator on the trl exports: messages rows + assistant_only_loss and
    prompt/completion rows label exactly the assistant answer."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from radcorpora.reference_models.data import training_texts
    from radcorpora.reference_models.models import build_tiny, load_processor

    tiny = build_tiny(tmp_path_factory.mktemp("tiny") / "base", training_texts(demo_build, RADIMAGENET_VQA.evaluation),
                      vocab_size=600)
    processor = load_processor(tiny)
    tokenizer = processor.tokenizer
    for name, layout in (("radimagenet-vqa", "messages"), ("rad-ace-cot", "prompt_completion")):
        ds = _trl_dataset(exports[(name, "trl")])
        rows = [ds[i] for i in range(3)]
        collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=layout == "messages",
                                                         completion_only_loss=None if layout == "messages" else True)
        batch = collator([dict(r) for r in rows])
        assert "pixel_values" in batch
        for i, row in enumerate(rows):
            labelled = batch["labels"][i][batch["labels"][i] != -100]
            answer = (row["messages"][-1] if layout == "messages" else row["completion"][0])["content"][0]["text"]
            assert tokenizer.decode(labelled).replace("<|im_end|>", "").strip() == answer.strip()


def _trl_dataset(folder: Path, name: str | None = None):
    path = folder / (name or _data_files(folder)[0].name)
    ds = load_dataset("json", data_files=str(path), split="train")
    return ds.map(lambda r: {"images": [os.path.join(folder, p) for p in r["images"]]}).cast_column("images", Sequence(Image()))


# ----------------------------------------------------------------------------- LLaMA-Factory


def _llamafactory():
    """LLaMA-Factory installs here only without its dependencies (it pins torchvision and
    torchaudio). Its data package imports torchaudio at the top but the ShareGPT path never uses
    it: a placeholder module stands in so its own parser, loader and converter can run."""
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


def test_llamafactory_reads_the_sharegpt_export_and_its_dataset_info(exports):
    get_dataset_list, load_single = _llamafactory()
    for name in ("radimagenet-vqa", "rad-ace-cot"):
        folder = exports[(name, "sharegpt")]
        info = json.loads((folder / "dataset_info.json").read_text())
        data_args = types.SimpleNamespace(dataset_dir=str(folder), media_dir=str(folder), preprocessing_num_workers=None,
                                          streaming=False, overwrite_cache=True, max_samples=None)
        for attr in get_dataset_list(sorted(info), str(folder)):
            assert attr.formatting == "sharegpt" and attr.messages == "conversations" and attr.images == "images"
            ds = load_single(attr, types.SimpleNamespace(cache_dir=None, hf_hub_token=None), data_args,
                             types.SimpleNamespace(local_process_index=0, dataloader_num_workers=0))
            assert len(ds) == _settings(folder)["files"][attr.dataset_name]["rows"]
            for row in ds.select(range(min(20, len(ds)))):
                assert row["_prompt"] and row["_response"][0]["role"] == "assistant", "LLaMA-Factory skipped a row"
                assert all(Path(p).is_file() and Path(p).is_absolute() for p in row["_images"])
                assert sum(m["content"].count("<image>") for m in row["_prompt"]) == len(row["_images"])


# ----------------------------------------------------------------------------- replication, preference pairs


def test_replication_repeats_examples_with_unique_ids(tmp_path):
    turn = [{"from": "human", "value": "<image>\nFinding?"}, {"from": "gpt", "value": "effusion"}]
    image = {"bytes": _png(50), "path": "a.png"}
    build = _handmade(tmp_path / "b", "grounding", [
        {"id": "a", "image": image, "conversations": turn, "replication": 3},
        {"id": "b", "image": image, "conversations": turn, "replication": 1}])
    for fmt in FORMATS:
        settings = export_format(fmt, build, tmp_path / fmt, config="grounding")
        path = tmp_path / fmt / f"grounding-train.{'json' if fmt == 'llava' else 'jsonl'}"
        ids = load_dataset("json", data_files=str(path), split="train")["id"]
        assert ids == ["a", "a#r1", "a#r2", "b"] and settings["images"]["count"] == 1
    # radvlm-style rows: instances with their own replication, times the row's
    build = _handmade(tmp_path / "v", "phrase_grounding", [{"id": "img1", "image": image, "replication": 2, "instances": [
        {"id": "i1", "conversations": turn, "replication": 2}, {"id": "i2", "conversations": turn, "replication": 1}]}])
    export_format("trl", build, tmp_path / "vlm", config="phrase_grounding")
    ids = [json.loads(line)["id"] for line in (tmp_path / "vlm" / "phrase_grounding-train.jsonl").open()]
    assert ids == ["i1", "i1#r1", "i1#r2", "i1#r3", "i2", "i2#r1"]


@pytest.fixture(scope="module")
def dpo_export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dpo")
    rows = [{"id": f"p{i}", "image": {"bytes": _png(20 * i), "path": f"{i}.png"},
             "conversations": [{"from": "human", "value": "<image>\nIs there a pleural effusion?"}],
             "chosen": "yes" if i % 2 else "no", "rejected": "no" if i % 2 else "yes"} for i in range(6)]
    build = _handmade(root / "b", "dpo", rows)
    for fmt in ("trl", "sharegpt", "swift"):
        export_format(fmt, build, root / fmt, config="dpo", loss="preference")
    with pytest.raises(ExportError, match="preference pairs; `llava` has no preference form"):
        export_format("llava", build, root / "llava", config="dpo", loss="preference")
    return root


def test_preference_exports(dpo_export):
    trl = load_dataset("json", data_files=str(dpo_export / "trl" / "dpo-train.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected", "images"} <= set(trl.column_names)
    assert _settings(dpo_export / "trl")["trainer"]["trl"]["layouts"] == ["preference"]
    info = json.loads((dpo_export / "sharegpt" / "dataset_info.json").read_text())
    assert info["handmade_dpo_train"]["ranking"] is True
    swift = json.loads((dpo_export / "swift" / "dpo-train.jsonl").open().readline())
    assert swift["messages"][-1]["role"] == "assistant" and swift["rejected_response"] in ("yes", "no")


def test_trl_dpo_trainer_reads_the_preference_export(dpo_export, demo_build, tmp_path):
    from trl import DPOConfig, DPOTrainer

    from radcorpora.reference_models.data import training_texts
    from radcorpora.reference_models.models import build_tiny, load_model

    tiny = build_tiny(tmp_path / "tiny", training_texts(demo_build, RADIMAGENET_VQA.evaluation)[:2000], vocab_size=400,
                      image_side=56)
    model, processor = load_model(tiny)
    ds = _trl_dataset(dpo_export / "trl")
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True, max_length=None)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)


# ----------------------------------------------------------------------------- TRL SFTTrainer, end to end


@pytest.mark.parametrize("name", ["radimagenet-vqa", "rad-ace-cot"])
def test_trl_sft_trainer_trains_the_tiny_model_on_the_trl_export(name, exports, demo_build, cot_build, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from radcorpora.reference_models.data import training_texts
    from radcorpora.reference_models.models import build_tiny, load_model

    texts = training_texts(demo_build, RADIMAGENET_VQA.evaluation) + training_texts(cot_build, RAD_ACE_COT.evaluation)
    tiny = build_tiny(tmp_path / "tiny", texts, vocab_size=600, image_side=56)
    model, processor = load_model(tiny)
    ds = _trl_dataset(exports[(name, "trl")])
    messages = "messages" in ds.column_names
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=4, learning_rate=3e-3,
                     lr_scheduler_type="constant", logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                     assistant_only_loss=messages, max_length=None, seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


# ----------------------------------------------------------------------------- refusals and the CLI


def test_evaluation_configs_and_bad_input_are_refused(demo_build, cot_build, tmp_path):
    with pytest.raises(ExportError, match=r"'benchmark' is evaluation-only"):
        export(demo_build, "trl", tmp_path / "x", config="benchmark")
    with pytest.raises(ExportError, match=r"'eval' is evaluation-only"):
        export(cot_build, "llava", tmp_path / "x", config="eval")
    with pytest.raises(ExportError, match=r"unknown export format 'axolotl'.*llava"):
        export(demo_build, "axolotl", tmp_path / "x")
    with pytest.raises(ExportError, match=r"no config 'nope'"):
        export(demo_build, "trl", tmp_path / "x", config="nope")
    with pytest.raises(ValueError, match=r"no split test"):
        export(demo_build, "trl", tmp_path / "x", split="test")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"busy: folder is not empty"):
        export(demo_build, "trl", tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists()
    assert set(EXPORTERS) == set(FORMATS)


def test_cli_export_new_and_legacy_forms(cot_build, demo_build, tmp_path):
    runner = CliRunner()
    new = runner.invoke(app, ["export", str(demo_build), "--format", "swift", "--out", str(tmp_path / "sw" / "deep"),
                              "--split", "validation"])
    assert new.exit_code == 0, new.output
    assert [p.name for p in _data_files(tmp_path / "sw" / "deep")] == ["instruct-validation.jsonl"]
    legacy = runner.invoke(app, ["export", "rad-ace-csv", str(cot_build), "--out", str(tmp_path / "cot.csv")])
    assert legacy.exit_code == 0, legacy.output
    as_format = runner.invoke(app, ["export", str(cot_build), "--format", "rad-ace-csv", "--out", str(tmp_path / "csv")])
    assert as_format.exit_code == 0, as_format.output
    assert (tmp_path / "csv" / "rad-ace.csv").read_bytes() == (tmp_path / "cot.csv").read_bytes()
    assert _settings(tmp_path / "csv")["format"] == "rad-ace-csv"
    for args, message in (
        (["export", str(demo_build), "--format", "trl", "--config", "benchmark", "--out", str(tmp_path / "b")], "evaluation-only"),
        (["export", str(tmp_path / "missing"), "--format", "trl", "--out", str(tmp_path / "m")], "not a folder"),
        (["export", str(demo_build), "--out", str(tmp_path / "n")], "--format is required"),
        (["export", str(demo_build), "--format", "rad-ace-csv", "--out", str(tmp_path / "r")], "unknown export format"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_reference_training_reads_the_same_loss_intent(demo_build, tmp_path):
    """collate.collate labels every assistant turn, or only the last for "final_assistant" (what the
    swift flags and the trl prompt/completion rows say)."""
    from radcorpora.reference_models import collate
    from radcorpora.reference_models.data import training_texts
    from radcorpora.reference_models.models import build_tiny, load_processor

    tiny = build_tiny(tmp_path / "tiny", training_texts(demo_build, RADIMAGENET_VQA.evaluation)[:2000], vocab_size=400,
                      image_side=56)
    processor = load_processor(tiny)
    row = {"id": "x", "image": {"bytes": _png(9), "path": "x.png"},
           "conversations": [{"from": "human", "value": "<image>\nWhat modality?"}, {"from": "gpt", "value": "CT"},
                             {"from": "human", "value": "Any lesion?"}, {"from": "gpt", "value": "yes"}]}
    for loss, expected in (("all_assistant", "CT<|im_end|>yes<|im_end|>"), ("final_assistant", "yes<|im_end|>")):
        batch = collate.collate(processor, [row], text_only=False, max_length=512, loss=loss)
        labelled = batch["labels"][0][batch["labels"][0] != -100]
        assert processor.tokenizer.decode(labelled).replace("\n", "") == expected
