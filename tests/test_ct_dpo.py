"""`radcorpora dpo ct-reasoning`: pairs from a candidates file checked against ROUGE-L computed here
with rouge-score, ties / all-zero / single candidates skipped and counted, bad lines rejected by
file and line, rows that are PreferencePairs with the scan's volume reference, the offline sampler
seeded, a registered scorer, bad input as one line with exit 2, and TRL's DPOTrainer on the export."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from radcorpora import cli
from radcorpora.corpora.ct_reasoning import dpo
from radcorpora.registry import CORPORA, load_specs
from radcorpora.schemas.preference import PreferencePair

runner = CliRunner()


def rouge(candidate: str, reference: str) -> float:
    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, candidate)["rougeL"].fmeasure


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    spec = CORPORA.get("ct-reasoning") or next(iter(load_specs(("radcorpora.corpora.ct_reasoning",)).values()))
    added = "ct-reasoning" not in CORPORA
    if added:
        cli.add_corpus(spec)
    root = tmp_path_factory.mktemp("ct-dpo")
    sources = spec.demo.write_sources(root / "sources", {})
    out = root / "build"
    result = runner.invoke(cli.app, ["build", "ct-reasoning", "--ct-rate", str(sources["ct_rate"]), "--amos-mm",
                                     str(sources["amos_mm"]), "--abdomen-atlas", str(sources["abdomen_atlas"]),
                                     "--out", str(out), "--cache", str(root / "c.sqlite"), "--llm", "offline",
                                     "--slices", "2"])
    assert result.exit_code == 0, result.output
    yield out
    if added:
        CORPORA.pop(spec.name)
        for app in (cli.build_app, cli.estimate_app):
            app.registered_commands[:] = [c for c in app.registered_commands if c.name != spec.name]


@pytest.fixture(scope="module")
def cases(build):
    """scan id -> report_thinking row, read here from the build's Parquet."""
    return {r["scan_id"]: r for p in (build / "data/report_thinking").glob("*.parquet")
            for r in pq.read_table(p).to_pylist()}


def rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "data/preference").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def trl_rows(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "trl").glob("preference-*.jsonl"))
            for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def from_file(build, cases, tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-file")
    ref = {s: cases[s]["report"] for s in ("train_1_a", "train_1_b", "train_2_a", "amos_0001", "valid_1_a")}
    first = ref["train_1_a"].split(". ")
    lines = [
        {"scan": "train_1_a", "report": first[0] + "."},  # part of the report
        {"scan": "train_1_a", "report": "The heart is enlarged with a pericardial effusion."},
        {"scan": "train_1_a", "report": ref["train_1_a"]},  # the report itself: 1.0
        "not json",
        {"scan": "train_1_b", "report": "Nodule seen."},  # tie: the same text twice (above zero)
        {"scan": "train_1_b", "report": "Nodule seen."},
        ["a list"],
        {"scan": "train_2_a", "report": "qqq zzz"},  # all zero
        {"scan": "train_2_a", "report": "xxx"},
        {"scan": "amos_0001", "report": "Lung bases clear."},  # single
        {"scan": "unknown_9", "report": "x"},
        {"scan": "ct-rate/valid_1_a", "report": ref["valid_1_a"][:60]},  # "source/scan_id" works too
        {"scan": "valid_1_a", "report": "A 4 mm nodule."},
        {"scan": "valid_1_a"},
        {"scan": "valid_1_a", "report": "   "},
    ]
    path = root / "candidates.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = root / "out"
    result = runner.invoke(cli.app, ["dpo", "ct-reasoning", str(build), "--out", str(out), "--candidates", str(path)])
    assert result.exit_code == 0, result.output
    return path, out, result.output


def test_candidates_file_pairs_best_and_worst_by_rouge_l(from_file, cases):
    path, out, _ = from_file
    candidates = {}
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
            candidates.setdefault(item["scan"].split("/")[-1], []).append(item["report"].strip())
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
    got = {r["id"]: r for r in rows(out)}
    assert sorted(got) == ["ct-rate/train_1_a#dpo", "ct-rate/valid_1_a#dpo"]
    for scan in ("train_1_a", "valid_1_a"):
        texts = [t for t in candidates[scan] if t]
        scores = [rouge(t, cases[scan]["report"]) for t in texts]
        row = got[f"ct-rate/{scan}#dpo"]
        assert row["chosen"]["value"] == texts[scores.index(max(scores))]
        assert row["rejected"]["value"] == texts[scores.index(min(scores))]
        assert math.isclose(row["chosen_score"], max(scores)) and math.isclose(row["rejected_score"], min(scores))
        assert row["scorer"] == "rougeL"
    assert got["ct-rate/train_1_a#dpo"]["chosen_score"] == 1.0


def test_rows_are_preference_pairs_with_the_volume(from_file, cases):
    _, out, _ = from_file
    for row in rows(out):
        case = cases[row["id"].split("/")[1].split("#")[0]]
        pair = PreferencePair.model_validate({k: v for k, v in row.items() if k != "volume"})
        assert row["volume"] == case["volume"]
        assert [i.bytes for i in pair.images] == [s["image"]["bytes"] for s in case["volume"]["slices"]]
        assert len(pair.images) == 2 and pair.prompt[0].value.count("<image>") == 2
        assert pair.lineage.source_id == case["scan_id"] and pair.lineage.image_sha256 == case["volume"]["sha256"]
        assert pair.image_provenance[0].source_sha256 == case["volume"]["sha256"]
    trl = {r["id"]: r for r in trl_rows(out)}
    for row in rows(out):
        t = trl[row["id"]]
        assert t["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": row["chosen"]["value"]}]}]
        assert t["rejected"][0]["content"][0]["text"] == row["rejected"]["value"]
        assert [b["type"] for b in t["prompt"][0]["content"]] == ["image", "image", "text"]
        assert [(out / "trl" / p).read_bytes() for p in t["images"]] == [i["bytes"] for i in row["images"]]


def test_skips_and_rejects_are_counted(from_file, cases):
    path, out, output = from_file
    manifest = json.loads((out / "dpo_manifest.json").read_text())
    assert manifest["skipped"] == {"tie": 1, "all_zero": 1, "single_candidate": 1}
    assert manifest["scans_without_candidates"] == len(cases) - 5
    assert [(r["file"], r["line"]) for r in manifest["rejects"]] == [(str(path), n) for n in (4, 7, 11, 14, 15)]
    assert "unknown scan 'unknown_9'" in manifest["rejects"][2]["reason"]
    assert f"{path}:11: unknown scan" in output and manifest["loss"] == "preference"


def test_offline_sampler_is_seeded(build, cases, tmp_path):
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        result = runner.invoke(cli.app, ["dpo", "ct-reasoning", str(build), "--out", str(tmp_path / name),
                                         "--sampler", "offline", "--n", "3", "--seed", seed])
        assert result.exit_code == 0, result.output
        outs.append([(r["id"], r["chosen"]["value"], r["rejected"]["value"]) for r in rows(tmp_path / name)])
    assert outs[0] == outs[1] and outs[0] != outs[2]
    manifest = json.loads((tmp_path / "a/dpo_manifest.json").read_text())
    assert sum(manifest["pairs"].values()) + sum(manifest["skipped"].values()) == len(cases)
    assert manifest["sampler"] == "offline:stand-in" and manifest["sampling_failures"] == 0
    for row in rows(tmp_path / "a"):
        reference = cases[row["lineage"]["source_id"]]["report"]
        assert math.isclose(row["chosen_score"], rouge(row["chosen"]["value"], reference))
        assert row["chosen_score"] > row["rejected_score"] == pytest.approx(rouge(row["rejected"]["value"], reference))
        assert row["lineage"]["models"][-1] == "offline:stand-in"


def test_a_registered_scorer(from_file, build, tmp_path):
    path, _, _ = from_file
    dpo.register_scorer("length", lambda candidate, reference: float(len(candidate)))
    try:
        result = runner.invoke(cli.app, ["dpo", "ct-reasoning", str(build), "--out", str(tmp_path / "o"),
                                         "--candidates", str(path), "--metric", "length"])
    finally:
        dpo.SCORERS.pop("length")
    assert result.exit_code == 0, result.output
    got = {r["id"]: r for r in rows(tmp_path / "o")}
    # lengths: train_1_b's two texts tie; train_2_a's differ (7 vs 3), so it pairs now
    assert sorted(got) == ["ct-rate/train_1_a#dpo", "ct-rate/train_2_a#dpo", "ct-rate/valid_1_a#dpo"]
    assert (got["ct-rate/train_2_a#dpo"]["chosen"]["value"], got["ct-rate/train_2_a#dpo"]["chosen_score"]) == ("qqq zzz", 7)
    assert got["ct-rate/train_1_a#dpo"]["scorer"] == "length"


@pytest.mark.parametrize("extra, message", [
    (["--sampler", "hf:/models/x"], "not supported yet"),
    ([], "exactly one of --candidates"),
    (["--candidates", "CANDS", "--sampler", "offline"], "exactly one of --candidates"),
    (["--candidates", "missing.jsonl"], "no such file"),
    (["--candidates", "CANDS", "--metric", "bleu"], "unknown metric 'bleu'"),
    (["--sampler", "offline", "--n", "1"], "--n must be >= 2"),
    (["--sampler", "nope:model"], "unknown provider"),
])
def test_bad_input_is_one_line_exit_2(from_file, build, tmp_path, extra, message):
    extra = [str(from_file[0]) if x == "CANDS" else str(tmp_path / x) if x == "missing.jsonl" else x for x in extra]
    result = runner.invoke(cli.app, ["dpo", "ct-reasoning", str(build), "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.strip().count("\n") == 0


def test_other_corpora_and_folders_are_refused(from_file, tmp_path):
    for corpus, folder in (("radvlm", tmp_path), ("ct-reasoning", tmp_path / "none"), ("ct-reasoning", tmp_path)):
        result = runner.invoke(cli.app, ["dpo", corpus, str(folder), "--out", str(tmp_path / "o"),
                                         "--candidates", str(from_file[0])])
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output


def test_trl_dpo_trainer_trains_on_the_pairs(build, tmp_path):
    from datasets import Image, Sequence, load_dataset
    from trl import DPOConfig, DPOTrainer

    from radcorpora.reference_models.models import build_tiny, load_model

    out = tmp_path / "pairs"
    result = runner.invoke(cli.app, ["dpo", "ct-reasoning", str(build), "--out", str(out), "--sampler", "offline",
                                     "--n", "3"])
    assert result.exit_code == 0, result.output
    folder = out / "trl"
    texts = [b["text"] or "" for r in trl_rows(out) for m in (*r["prompt"], *r["chosen"], *r["rejected"])
             for b in m["content"]] * 10
    model, processor = load_model(build_tiny(tmp_path / "tiny", texts, vocab_size=300, image_side=56))
    ds = load_dataset("json", data_files=str(folder / "preference-train.jsonl"), split="train")
    ds = ds.map(lambda r: {"images": [os.path.join(folder, p) for p in r["images"]]}).cast_column("images", Sequence(Image()))
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True, max_length=None)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
