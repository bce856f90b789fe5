"""`radcorpora dpo ct-reasoning`: a build of ct-reasoning-dpo (config `preference`, loss intent
"preference") that validate, preview, export --format trl and `datasets.load_dataset` read; pairs
from a candidates file checked against ROUGE-L computed here with rouge-score; ties / all-zero /
single candidates skipped and counted; bad lines rejected by file and line; the offline, OpenAI
(real SDK against the local server) and local-checkpoint (hf:, the tiny model) samplers seeded;
scorers registered in Python and as module:function; GREEN absent -> one line; TRL's DPOTrainer on
the trl export."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from radcorpora import cli, registry
from radcorpora.corpora.ct_reasoning import dpo
from radcorpora.corpora.ct_reasoning.records import CtPreferencePair
from radcorpora.registry import CORPORA
from radcorpora.testing.fake_llm_server import FakeProviderServer

runner = CliRunner()
KEY = "sk-test-ct-dpo-0123456789"


def rouge(candidate: str, reference: str) -> float:
    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, candidate)["rougeL"].fmeasure


def words_scorer(candidate: str, reference: str) -> float:
    """A scorer named on the command line as tests.test_ct_dpo:words_scorer: shared words."""
    return float(len(set(candidate.lower().split()) & set(reference.lower().split())))


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    spec = CORPORA["ct-reasoning"]
    root = tmp_path_factory.mktemp("ct-dpo")
    sources = spec.demo.write_sources(root / "sources", {})
    out = root / "build"
    result = runner.invoke(cli.app, ["build", "ct-reasoning", "--ct-rate", str(sources["ct_rate"]), "--amos-mm",
                                     str(sources["amos_mm"]), "--abdomen-atlas", str(sources["abdomen_atlas"]),
                                     "--out", str(out), "--cache", str(root / "c.sqlite"), "--llm", "offline",
                                     "--slices", "2"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def cases(build):
    """scan id -> report_thinking row, read here from the build's Parquet."""
    return {r["scan_id"]: r for p in (build / "data/report_thinking").glob("*.parquet")
            for r in pq.read_table(p).to_pylist()}


def rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "data/preference").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def manifest(out: Path) -> dict:
    return json.loads((out / "build/manifest.json").read_text())


def one_error_line(output: str, message: str) -> bool:
    """The output ends with one `error: ...` line holding `message` (progress lines may come before)."""
    lines = output.strip().splitlines()
    return lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in output and \
        sum(x.startswith("error: ") for x in lines) == 1


def dpo_run(build: Path, out: Path, *extra: str):
    return runner.invoke(cli.app, ["dpo", "ct-reasoning", str(build), "--out", str(out), *extra])


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
    result = dpo_run(build, out, "--candidates", str(path))
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
    scored = [json.loads(x) for x in (out / dpo.CANDIDATES_FILE).read_text().splitlines()]
    assert len(scored) == 10 and all(math.isclose(s["score"], rouge(s["report"], cases[s["scan"].split("/")[1]]["report"]))
                                    for s in scored)


def test_rows_are_preference_pairs_with_every_volume(from_file, cases):
    _, out, _ = from_file
    for row in rows(out):
        case = cases[row["scan_id"]]
        pair = CtPreferencePair.model_validate(row)
        assert row["volume"] == case["volume"] and row["volumes"] == case["volumes"]
        assert [i.bytes for i in pair.images] == [s["image"]["bytes"] for s in case["volume"]["slices"]]
        assert len(pair.images) == 2 and pair.prompt[0].value.count("<image>") == 2
        assert pair.lineage.source_id == case["scan_id"]
        assert pair.lineage.image_sha256 == ",".join(hashlib.sha256(i.bytes).hexdigest() for i in pair.images)
        assert pair.image_provenance[0].source_sha256 == case["volume"]["sha256"]
        assert row["patient_id"] == case["patient_id"]
    # train_1_a has two reconstructions: both referenced, by their own sha256
    two = next(r for r in rows(out) if r["scan_id"] == "train_1_a")["volumes"]
    assert [Path(v["path"]).name for v in two] == ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz"]
    assert two[0]["sha256"] != two[1]["sha256"]


def test_skips_and_rejects_are_counted(from_file, cases):
    _, out, _ = from_file
    m = manifest(out)
    assert m["corpus"] == "ct-reasoning-dpo" and m["dpo"]["skipped"] == {"tie": 1, "all_zero": 1, "single_candidate": 1}
    assert m["excluded"] == {"amos-mm/single_candidate": 1, "ct-rate/all_zero": 1, "ct-rate/tie": 1}
    assert m["dpo"]["scans_without_candidates"] == len(cases) - 5
    rejects = [json.loads(x) for x in (out / "build/rejects.jsonl").read_text().splitlines()]
    assert sorted(int(r["row"].split()[1]) for r in rejects) == [4, 7, 11, 14, 15]
    assert m["rejects"] == {"candidate_blank": 1, "candidate_fields": 1, "candidate_not_json": 1,
                            "candidate_not_object": 1, "candidate_unknown_scan": 1}
    assert any("unknown scan 'unknown_9'" in r["detail"] and ":11:" in r["detail"] for r in rejects)
    assert m["licence_class"] == "restricted" and m["validation"]["valid"]


def test_the_engine_reads_the_pairs_folder(from_file, tmp_path):
    """validate, preview, export --format trl and datasets.load_dataset on the dpo output."""
    from datasets import load_dataset

    _, out, _ = from_file
    assert registry.loss_intent("ct-reasoning-dpo", "preference") == "preference"
    valid = runner.invoke(cli.app, ["validate", str(out)])
    assert valid.exit_code == 0, valid.output
    checks = {c["name"] for c in json.loads((out / "build/validation.json").read_text())["checks"]}
    assert {"split_by_patient", "images_are_slices", "score_order", "volume_grid"} <= checks
    page = runner.invoke(cli.app, ["preview", str(out), "--out", str(tmp_path / "p.html")])
    assert page.exit_code == 0, page.output
    assert 'data-side="chosen"' in (tmp_path / "p.html").read_text()
    exported = runner.invoke(cli.app, ["export", str(out), "--format", "trl", "--out", str(tmp_path / "trl")])
    assert exported.exit_code == 0, exported.output
    line = json.loads((tmp_path / "trl/preference-train.jsonl").read_text().splitlines()[0])
    assert [b["type"] for b in line["prompt"][0]["content"]] == ["image", "image", "text"]
    assert line["chosen"][0]["role"] == "assistant" and len(line["images"]) == 2
    ds = load_dataset(str(out), "preference", split="train")
    assert ds.num_rows == 1 and {"prompt", "chosen", "rejected", "images", "volume", "volumes"} <= set(ds.column_names)
    assert "README.md" in os.listdir(out) and "Scorer `rougeL`" in (out / "README.md").read_text()


def test_offline_sampler_is_seeded(build, cases, tmp_path):
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        result = dpo_run(build, tmp_path / name, "--sampler", "offline", "--n", "3", "--seed", seed,
                         "--cache", str(tmp_path / f"{name}.sqlite"))
        assert result.exit_code == 0, result.output
        outs.append([(r["id"], r["chosen"]["value"], r["rejected"]["value"]) for r in rows(tmp_path / name)])
    assert outs[0] == outs[1] and outs[0] != outs[2]
    m = manifest(tmp_path / "a")
    assert m["dpo"]["pairs"] + sum(m["dpo"]["skipped"].values()) == len(cases)
    assert m["dpo"]["sampler"] == "offline:stand-in" and m["dpo"]["sampling_failures"] == 0
    seeds = {(s["scan"], s["index"]): s["seed"] for s in map(json.loads, (tmp_path / "a" / dpo.CANDIDATES_FILE)
                                                             .read_text().splitlines())}
    assert seeds[("ct-rate/train_1_a", 1)] == dpo.candidate_seed(3, "train_1_a", 1, 0)
    for row in rows(tmp_path / "a"):
        reference = cases[row["lineage"]["source_id"]]["report"]
        assert math.isclose(row["chosen_score"], rouge(row["chosen"]["value"], reference))
        assert row["chosen_score"] > row["rejected_score"] == pytest.approx(rouge(row["rejected"]["value"], reference))
        assert row["lineage"]["models"][-1] == "offline:stand-in"


def test_openai_sampler_through_the_sdk_retries_empty_samples(build, cases, tmp_path, monkeypatch):
    """The real OpenAI SDK against the local server: each request carries its candidate's seed;
    one empty reply is asked again with the next attempt's seed (bounded by --retries)."""
    empty_once = {"done": False}
    seen: dict[str, int] = {}  # the candidates of one scan share their messages (only the seed differs)
    texts = ("A solid nodule is seen in the lung. No pleural effusion.", "Normal study.", "Lungs are clear.")

    def responder(model, system, messages):
        content = messages[-1]["content"]
        assert system == dpo.SYSTEM_TEXT and sum(p.get("type") == "image_url" for p in content) == 2
        if not empty_once["done"]:
            empty_once["done"] = True
            return "", None
        key = json.dumps(content)
        seen[key] = seen.get(key, -1) + 1
        return texts[seen[key] % 3], None

    with FakeProviderServer(responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        result = dpo_run(build, tmp_path / "o", "--sampler", "openai:sampler-model", "--n", "2", "--seed", "5",
                         "--base-url", server.openai_base_url, "--cache", str(tmp_path / "c.sqlite"))
        assert result.exit_code == 0, result.output
        sent = server.request_bodies
    assert len(sent) == 2 * len(cases) + 1  # one re-ask
    seeds = sorted(b["seed"] for b in sent)
    expected = sorted([dpo.candidate_seed(5, s, i, 0) for s in cases for i in range(2)]
                      + [dpo.candidate_seed(5, s, i, 1) for s in cases for i in range(2)
                         if dpo.candidate_seed(5, s, i, 1) in {b["seed"] for b in sent}])
    assert seeds == expected and all(b["model"] == "sampler-model" for b in sent)
    m = manifest(tmp_path / "o")
    assert m["dpo"]["sampler"] == "openai:sampler-model" and m["dpo"]["sampling_failures"] == 0
    assert m["llm"]["generator"] == "openai:sampler-model"
    retried = [json.loads(x) for x in (tmp_path / "o" / dpo.CANDIDATES_FILE).read_text().splitlines()]
    assert sum(c["attempt"] == 1 for c in retried) == 1


@pytest.fixture(scope="module")
def tiny(cases, tmp_path_factory):
    from radcorpora.reference_models.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "m", [c["report"] for c in cases.values()] * 5,
                      vocab_size=300, image_side=56)


def test_local_checkpoint_sampler_is_seeded(build, tiny):
    """The hf: sampler on the tiny Qwen2.5-VL: the same seed gives the same candidates, each
    candidate its own seed (so it does not depend on N), another seed other candidates."""
    from radcorpora.reference_models.sampler import sample_local

    cases = {k: v for k, v in dpo.load_cases(build).items() if k in ("train_1_a", "amos_0001")}

    def run(seed: int, n: int):
        found, failed = sample_local(str(tiny), cases, dpo.DpoSettings(sampler=f"hf:{tiny}", seed=seed, n=n,
                                                                         max_tokens=4, retries=1))
        return {(s, c["index"]): (c["report"], c["seed"]) for s, items in found.by_scan.items() for c in items}, failed

    first, failed = run(1, 2)
    assert run(1, 2) == (first, failed) and run(2, 2)[0] != first
    assert {k: v for k, v in run(1, 3)[0].items() if k[1] < 2} == first  # a third candidate changes none
    assert all(seed == dpo.candidate_seed(1, scan, i, 0) or seed == dpo.candidate_seed(1, scan, i, 1)
               for (scan, i), (_, seed) in first.items())
    assert len(first) + len(failed) == 4


def test_local_checkpoint_sampler_from_the_command_line(build, cases, tiny, tmp_path):
    result = dpo_run(build, tmp_path / "a", "--sampler", f"hf:{tiny}", "--n", "2", "--max-tokens", "3",
                     "--retries", "0", "--seed", "1")
    assert result.exit_code in (0, 1), result.output  # 1: random tiny-model text may pair no train scan
    m = manifest(tmp_path / "a")
    assert m["dpo"]["sampler"] == f"hf:{tiny}" and m["fingerprint"]["sources"]["checkpoint"]["config"]
    scored = [json.loads(x) for x in (tmp_path / "a" / dpo.CANDIDATES_FILE).read_text().splitlines()]
    failed = [json.loads(x)["row"] for x in (tmp_path / "a/build/rejects.jsonl").read_text().splitlines()]
    assert sorted([f"{c['scan']}#{c['index']}" for c in scored] + failed) == sorted(
        f"{c['id']}#{i}" for c in cases.values() for i in range(2))
    assert all(c["seed"] == dpo.candidate_seed(1, c["scan"].split("/")[1], c["index"], 0) for c in scored)


def test_a_registered_and_a_module_function_scorer(from_file, build, tmp_path):
    path, _, _ = from_file
    dpo.register_scorer("length", lambda candidate, reference: float(len(candidate)))
    try:
        result = dpo_run(build, tmp_path / "o", "--candidates", str(path), "--metric", "length")
    finally:
        dpo.SCORERS.pop("length")
    assert result.exit_code == 0, result.output
    got = {r["id"]: r for r in rows(tmp_path / "o")}
    # lengths: train_1_b's two texts tie; train_2_a's differ (7 vs 3), so it pairs now
    assert sorted(got) == ["ct-rate/train_1_a#dpo", "ct-rate/train_2_a#dpo", "ct-rate/valid_1_a#dpo"]
    assert (got["ct-rate/train_2_a#dpo"]["chosen"]["value"], got["ct-rate/train_2_a#dpo"]["chosen_score"]) == ("qqq zzz", 7)
    assert got["ct-rate/train_1_a#dpo"]["scorer"] == "length"
    named = dpo_run(build, tmp_path / "m", "--candidates", str(path), "--metric", "test_ct_dpo:words_scorer")
    assert named.exit_code == 0, named.output
    for row in rows(tmp_path / "m"):
        reference = registry_case_report(build, row["scan_id"])
        assert row["chosen_score"] == words_scorer(row["chosen"]["value"], reference)
        assert row["scorer"] == "test_ct_dpo:words_scorer"


def registry_case_report(build: Path, scan: str) -> str:
    return dpo.load_cases(build)[scan].report


def test_green_without_its_package_is_one_line(from_file, build, tmp_path, monkeypatch):
    monkeypatch.setattr(dpo, "_green_available", lambda: False)
    result = dpo_run(build, tmp_path / "o", "--candidates", str(from_file[0]), "--metric", "green")
    assert result.exit_code == 2 and one_error_line(result.output, "pip install green-score"), result.output


@pytest.mark.parametrize("extra, message", [
    (["--sampler", "hf:"], "needs the checkpoint folder"),
    (["--sampler", "hf:/no/such/model"], "is not a checkpoint folder"),
    ([], "exactly one of --candidates"),
    (["--candidates", "CANDS", "--sampler", "offline"], "exactly one of --candidates"),
    (["--candidates", "missing.jsonl"], "no such file"),
    (["--candidates", "CANDS", "--metric", "bleu"], "unknown metric 'bleu'"),
    (["--candidates", "CANDS", "--metric", "no_such_module:f"], "cannot import"),
    (["--sampler", "offline", "--n", "1"], "--n must be >= 2"),
    (["--sampler", "nope:model"], "unknown provider"),
])
def test_bad_input_is_one_line_exit_2(from_file, build, tmp_path, extra, message):
    extra = [str(from_file[0]) if x == "CANDS" else str(tmp_path / x) if x == "missing.jsonl" else x for x in extra]
    result = dpo_run(build, tmp_path / "o", *extra)
    assert result.exit_code == 2 and one_error_line(result.output, message), result.output


def test_other_corpora_and_folders_are_refused(from_file, tmp_path):
    for corpus, folder in (("radvlm", tmp_path), ("ct-reasoning", tmp_path / "none"), ("ct-reasoning", tmp_path),
                           ("ct-reasoning", from_file[1])):  # the last: a dpo build, not a ct-reasoning one
        result = runner.invoke(cli.app, ["dpo", corpus, str(folder), "--out", str(tmp_path / "o"),
                                         "--candidates", str(from_file[0])])
        assert result.exit_code == 2 and one_error_line(result.output, ""), result.output


def test_trl_dpo_trainer_trains_on_the_export(build, tmp_path):
    from datasets import Image, Sequence, load_dataset
    from trl import DPOConfig, DPOTrainer

    from radcorpora.reference_models.models import build_tiny, load_model

    out = tmp_path / "pairs"
    assert dpo_run(build, out, "--sampler", "offline", "--n", "3", "--cache", str(tmp_path / "c.sqlite")).exit_code == 0
    assert runner.invoke(cli.app, ["export", str(out), "--format", "trl", "--out", str(tmp_path / "trl")]).exit_code == 0
    folder = tmp_path / "trl"
    lines = [json.loads(x) for x in (folder / "preference-train.jsonl").read_text().splitlines()]
    texts = [b["text"] or "" for r in lines for m in (*r["prompt"], *r["chosen"], *r["rejected"])
             for b in m["content"]] * 10
    model, processor = load_model(build_tiny(tmp_path / "tiny", texts, vocab_size=300, image_side=56))
    ds = load_dataset("json", data_files=str(folder / "preference-train.jsonl"), split="train")
    ds = ds.map(lambda r: {"images": [os.path.join(folder, p) for p in r["images"]]}).cast_column("images", Sequence(Image()))
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True, max_length=None)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_cases_keep_slices_in_their_shard_until_asked(build, cases, tmp_path, monkeypatch):
    """load_cases holds each case's row without its slices (all of them at once would be the whole
    report_thinking config); `slices` reads them back from the shard, equal to the stored ones; a
    shard changed during the run is refused, not read at the wrong rows. Candidates sampled a few
    scans per session call equal those of one call."""
    import shutil

    from radcorpora.llm.session import LLMSession, LLMSettings

    copy = tmp_path / "cases"
    shutil.copytree(build, copy)
    loaded = dpo.load_cases(copy)
    assert set(loaded) == set(cases)
    for scan, case in loaded.items():
        stored = cases[scan]["volume"]["slices"]
        assert case.row["volume"]["slices"] == [] and len(stored) == 2
        assert case.slices == stored and case.volume == cases[scan]["volume"]
    settings = dpo.DpoSettings(sampler="offline", n=3)

    def sampled(per_call: int):
        monkeypatch.setattr(dpo, "CASES_PER_CALL", per_call)
        session = LLMSession(LLMSettings(cache_path=str(tmp_path / f"cache-{per_call}.sqlite")),
                             {dpo.STAGE: dpo.offline_candidate})
        try:
            found, never = dpo.sample_candidates(session, "offline", loaded, settings)
        finally:
            session.close()
        return found.by_scan, never

    by_call, never = sampled(2)
    assert (by_call, never) == sampled(10_000) and len(by_call) == len(loaded) and not never

    shard = next(iter(sorted((copy / "data/report_thinking").glob("*.parquet"))))
    later = next(c for c in loaded.values() if c.where and c.where[0] == str(shard.resolve()))
    dpo._row_group_slices.cache_clear()
    os.utime(shard, ns=(later.where[4] + 10**9, later.where[4] + 10**9))
    with pytest.raises(dpo.DpoError, match="changed during the run"):
        later.slices
