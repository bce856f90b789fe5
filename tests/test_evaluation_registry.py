"""The evaluation registry: every corpus declares its evaluation with its package; the prompt a
model is evaluated with is the one its training example was rendered with (per variant); the
runner hands the generator the images the queries name (none for a text-only model); metric
values against values computed here (ROUGE-1, BLEU-1, grounding mIoU from the rows' own pixel
boxes, the semantic term through a fake encoder); optional metrics skipped saying why; and a
served model scored through an OpenAI-compatible endpoint (the local wire-format server) with the
in-process prompts and the images as PNG data URLs, also through `radcorpora evaluate --endpoint`."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from radcorpora import cli
from radcorpora.reference_models import evaluate as runner_module
from radcorpora.reference_models.data import evaluation_rows, load_split, training_examples
from radcorpora.reference_models.endpoint import EndpointGenerator, chat_messages
from radcorpora.reference_models.evaluate import decode, evaluate
from radcorpora.reference_models.metric_kit import Kit, text_scores
from radcorpora.registry import CORPORA
from radcorpora.spec.evaluation import CorpusEvaluation, EvalContext
from radcorpora.store.folder import read_manifest
from radcorpora.testing.fake_llm_server import FakeProviderServer

cli_runner = CliRunner()
QUICK = Kit(meteor=None)  # METEOR's jar takes seconds to start; its values are tested in test_trace_metrics


@pytest.fixture(scope="module")
def mmrad_build(tmp_path_factory) -> Path:
    sources = CORPORA["mmrad-ivl"].demo.write_sources(tmp_path_factory.mktemp("mm-src"), {})
    out = tmp_path_factory.mktemp("mm") / "build"
    result = cli_runner.invoke(cli.app, [
        "build", "mmrad-ivl", "--gemex-thinkvg", str(sources["gemex_thinkvg"]), "--mimic-cxr", str(sources["mimic_cxr"]),
        "--mimic-cxr-reports", str(sources["mimic_cxr_reports"]), "--out", str(out), "--cache", str(out.parent / "c.sqlite"),
        "--llm", "offline", "--auditor", "offline", "--crop-margin", "0.05", "--audit-sample", "4"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def ct_build(tmp_path_factory) -> Path:
    sources = CORPORA["ct-reasoning"].demo.write_sources(tmp_path_factory.mktemp("ct-src"), {})
    out = tmp_path_factory.mktemp("ct") / "build"
    flags = {"ct_rate": "--ct-rate", "amos_mm": "--amos-mm", "abdomen_atlas": "--abdomen-atlas"}
    result = cli_runner.invoke(cli.app, ["build", "ct-reasoning", *[x for k, f in flags.items() for x in (f, str(sources[k]))],
                                         "--out", str(out), "--cache", str(out.parent / "c.sqlite"), "--llm", "offline",
                                         "--questions-per-report", "3", "--slices", "2"])
    assert result.exit_code == 0, result.output
    return out


class Recording:
    """A generator that records what it was asked and answers from `reply(history)`."""

    name = "recording"

    def __init__(self, reply=lambda history: "no idea"):
        self.reply, self.calls = reply, []

    def answer(self, histories, images, max_new_tokens):
        self.calls.append(([list(h) for h in histories], list(images), max_new_tokens))
        return [self.reply(h) for h in histories]


def _humans(example: dict) -> list[str]:
    return [t["value"] for t in example["conversations"] if t["from"] == "human"]


# --------------------------------------------------------------------------------- the registry


def test_every_corpus_declares_its_evaluation_with_its_package():
    import radcorpora.reference_models.evaluate as evaluate_module

    assert not hasattr(evaluate_module, "EVALUATORS")  # no name-keyed table any more
    for name, spec in CORPORA.items():
        if all(c.loss == "preference" for c in spec.configs):
            continue  # preference pairs (ct-reasoning-dpo) are trained by DPO, not benchmarked here
        evaluation = spec.evaluation
        assert isinstance(evaluation, CorpusEvaluation), name
        package = spec.run.__module__.rsplit(".", 1)[0]
        assert evaluation.queries.__module__ == evaluation.score.__module__ == f"{package}.evaluation"
        assert set(evaluation.contrast) <= {v.name for v in evaluation.variants}
        assert any(not v.images for v in evaluation.variants), f"{name} has no text-only twin"
        assert {evaluation.train_config, evaluation.eval_config} <= set(spec.records)
    assert [v.name for v in CORPORA["mmrad-ivl"].evaluation.variants] == ["crops", "no-crops", "text-only"]
    assert CORPORA["mmrad-ivl"].evaluation.contrast == ("crops", "no-crops")


@pytest.mark.parametrize("variant", ["crops", "no-crops", "text-only"])
def test_mmrad_prompts_are_the_training_examples_turns(mmrad_build, variant):
    recipe = CORPORA["mmrad-ivl"].evaluation
    examples = training_examples(mmrad_build, recipe, variant=variant)
    rows = load_split(mmrad_build, "default", "train")
    ctx = EvalContext(read_manifest(mmrad_build), recipe.variant(variant))
    queries = recipe.queries([dict(r) for r in rows], ctx)
    assert len(queries) == len(examples) == len(rows) > 0
    for query, example, row in zip(queries, examples, rows):
        assert list(query.turns) == _humans(example)  # one renderer for training and evaluation
        gpt = [t["value"] for t in example["conversations"] if t["from"] == "gpt"]
        assert query.meta["references"] == gpt
        placeholders = sum(t.count("<image>") for t in query.turns)
        assert placeholders == len(example["images"]) == (len(row["images"]) if variant == "crops" else 1)
        if variant == "crops":  # the response cut at its placeholders, crops as human turns between
            assert " <image> ".join(gpt).split() == row["response"].split() and len(query.turns) == len(row["images"])
        else:
            assert len(gpt) == 1 and "<image>" not in gpt[0] and gpt[0].endswith(row["report"])


def test_ct_and_radimagenet_prompts_are_the_training_examples_turns(ct_build, demo_build):
    recipe = CORPORA["ct-reasoning"].evaluation
    examples = training_examples(ct_build, recipe)
    rows = [dict(r) for r in load_split(ct_build, "vqa_thinking", "train")]
    queries = recipe.queries(rows, EvalContext(read_manifest(ct_build)))
    for query, example, row in zip(queries, examples, rows):
        assert list(query.turns) == _humans(example) == [f"<image><image>\n{row['question']}"]
        assert len(example["images"]) == 2
        assert example["conversations"][1]["value"] == f"<think>\n{row['thinking']}\n</think>\n<answer>{row['answer']}</answer>"
    # radimagenet-vqa trains on its stored turns, rendered by the builder's render_question; the
    # benchmark renderer must give the very same turn for the same question
    rvqa = CORPORA["radimagenet-vqa"].evaluation
    view = training_examples(demo_build, rvqa)
    ctx = EvalContext(read_manifest(demo_build))
    sample = [view[i] for i in range(0, len(view), max(1, len(view) // 40))]
    assert any(e["choices"] for e in sample) and any(not e["choices"] for e in sample)
    assert [q.turns[0] for q in rvqa.queries(sample, ctx)] == [e["conversations"][0]["value"] for e in sample]


def test_the_runner_gives_the_queries_images_and_withholds_them_for_a_text_only_model(mmrad_build, ct_build):
    recipe = CORPORA["ct-reasoning"].evaluation
    rows = evaluation_rows(ct_build, recipe, limit=2)
    seen = Recording()
    evaluate(recipe, seen, rows, manifest=read_manifest(ct_build), kit=QUICK, max_new_tokens=5)
    (_, images, budget), = seen.calls
    assert budget == 5 and [len(p) for p in images] == [2, 2]
    expected = decode([s["image"] for s in rows[0]["volume"]["slices"]])
    assert [np.asarray(a).tobytes() for a in images[0]] == [np.asarray(b).tobytes() for b in expected]
    seen = Recording()
    evaluate(recipe, seen, rows, variant="text-only", kit=QUICK)
    assert seen.calls[0][1] == [None, None]

    mm = CORPORA["mmrad-ivl"].evaluation
    rows = evaluation_rows(mmrad_build, mm, limit=1)
    for variant, turns, pictures in (("crops", len(rows[0]["images"]), len(rows[0]["images"])), ("no-crops", 1, 1)):
        seen = Recording(lambda h: f"answer {len(h)}")
        evaluate(mm, seen, rows, variant=variant, kit=QUICK)
        assert len(seen.calls) == turns and all(len(c[1][0]) == pictures for c in seen.calls)
        if variant == "crops":  # each turn sees the model's own earlier answers, never the reference
            last = seen.calls[-1][0][0]
            assert [t["value"] for t in last if t["from"] == "gpt"] == [f"answer {2 * k + 1}" for k in range(turns - 1)]


# ------------------------------------------------------------------------------------- metrics


def test_text_metrics_against_hand_computed_values():
    # ROUGE-1 F1: "the cat sat" vs "the cat sat down": 3 shared unigrams, P 3/3, R 3/4 -> 6/7
    # corpus BLEU-1: 5 of 5 candidate unigrams match, brevity penalty exp(1 - 6/5)
    found = text_scores(["the cat sat", "the cat sat on mat"], ["the cat sat down", "the cat sat on the mat"],
                        ("rouge_1", "bleu1"))
    assert found["rouge_1"] == round(100 * (6 / 7 + 2 * (5 / 5) * (5 / 6) / (5 / 5 + 5 / 6)) / 2, 2)
    assert found["bleu1"] == round(100 * math.exp(1 - 10 / 8), 2)  # 8 of 8 match; lengths 8 vs 10
    with pytest.raises(ValueError, match="unknown text metric"):
        text_scores(["a"], ["a"], ("cider",))


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


class FakeEncoder:
    """Images -> (mean brightness / 255, 1); texts -> (number of words / 10, 1)."""

    def encode_images(self, images):
        return np.array([[np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=float).mean() / 255, 1.0]
                         for b in images])

    def encode_texts(self, texts):
        return np.array([[len(t.split()) / 10, 1.0] for t in texts])


def test_mmrad_scores_a_perfect_trace_against_the_rows_own_boxes(mmrad_build):
    mm = CORPORA["mmrad-ivl"].evaluation
    rows = evaluation_rows(mmrad_build, mm, limit=2)
    texts = [dict(r) for r in rows]
    fulls = [decode([r["images"][0]])[0] for r in rows]

    class Perfect:  # answers each turn with the row's own response segment (the row known by its full image)
        name = "perfect"

        def answer(self, histories, images, max_new_tokens):
            out = []
            for history, pictures in zip(histories, images):
                k = next(i for i, f in enumerate(fulls) if np.array_equal(np.asarray(f), np.asarray(pictures[0])))
                out.append(texts[k]["response"].split("<image>")[len(history) // 2].strip())
            return out

    metrics, samples = evaluate(mm, Perfect(), rows, variant="crops", kit=Kit(meteor=None, encoder=FakeEncoder()))
    assert metrics["report_rouge_l"] == 100.0 and metrics["report_bleu4"] == 100.0 and metrics["reports_found"] == 2
    assert metrics["report_meteor"] == {"skipped": "METEOR turned off (metric_kit.Kit(meteor=None))"}
    assert "skipped" in metrics["radgraph"] and metrics["generation_consistency"].startswith("n/a")
    # the printed pixel boxes read back over the stored image's size, against the normalised step boxes
    per_row, semantic = [], []
    for row, full, sample in zip(texts, fulls, samples):
        width, height = row["steps"][0]["box"]["width"], row["steps"][0]["box"]["height"]
        assert (width, height) == full.size
        boxes = [[p / s for p, s in zip(step["box_pixels"], (width, height, width, height))] for step in row["steps"]]
        per_row.append(np.mean([_iou(b, [step["box"][k] for k in ("x1", "y1", "x2", "y2")])
                                for b, step in zip(boxes, row["steps"])]))
        assert [s["group"] for s in sample["steps"]] == [s["group"] for s in row["steps"]]
        # semantic term: cos((brightness of the crop at the printed box, 1), (rationale words / 10, 1))
        trace = Kit().parse_trace(sample["prediction"], "the report reads:", width, height)
        cosines = []
        for step, box in zip(trace.steps, boxes):
            crop = full.convert("L").crop((round(box[0] * width), round(box[1] * height), round(box[2] * width),
                                           round(box[3] * height)))
            a = np.array([np.asarray(crop, dtype=float).mean() / 255, 1])
            b = np.array([len(step.rationale.split()) / 10, 1])
            cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        semantic.append(np.mean(cosines))
    assert metrics["grounding_consistency"] == pytest.approx(round(100 * float(np.mean(per_row)), 2), abs=0.01)
    assert metrics["grounded_share"] == 100.0 and all(s["report"] == s["reference_report"] for s in samples)
    assert metrics["semantic_consistency"]["traces"] == 2
    assert metrics["semantic_consistency"]["text_image"] == pytest.approx(float(np.mean(semantic)), abs=2e-3)


def test_ct_metrics_match_judge_and_optional_scorers(ct_build, tmp_path):
    from radcorpora.llm.session import LLMSession, LLMSettings
    from radcorpora.reference_models.judge import Judge

    ct = CORPORA["ct-reasoning"].evaluation
    rows = evaluation_rows(ct_build, ct, limit=3)
    texts = [dict(r) for r in rows]
    by_question = {r["question"]: r for r in texts}

    def reply(history):
        row = by_question[history[-1]["value"].split("\n", 1)[1]]
        return f"<think>\n{row['thinking']}\n</think>\n<answer>{row['answer']}</answer>" if row is texts[0] else "unsure"

    green_calls = []
    kit = Kit(meteor=None, green_scorer=lambda p, r: green_calls.append(len(p)) or {"green": 42.0},
              bertscore_model=tmp_path / "no-such-model")
    metrics, samples = evaluate(ct, Recording(reply), rows, kit=kit)
    assert metrics["format_rate"] == round(100 / 3, 2) and metrics["match_accuracy"] == round(100 / 3, 2)
    assert metrics["answer_accuracy"] == metrics["match_accuracy"] and ct.primary(metrics) == "rouge_1"
    assert metrics["green"] == {"green": 42.0} and green_calls == [3]
    assert "not on disk" in metrics["bertscore"]["skipped"] or "config.json" in metrics["bertscore"]["skipped"]
    assert samples[0]["rouge_1"] == 100.0 and metrics["rouge_1"] == pytest.approx(
        round(sum(s["rouge_1"] for s in samples) / 3, 2), abs=0.01)

    verdicts = iter([True, False, True])
    session = LLMSession(LLMSettings(cache_path=str(tmp_path / "c.sqlite"), approve_credentialed=["offline"]),
                         offline={"judge": lambda request: json.dumps({"correct": next(verdicts)})})
    judged, samples = evaluate(ct, Recording(reply), rows, kit=kit, judge=Judge("offline", session))
    assert judged["answer_accuracy"] == round(200 / 3, 2) and ct.primary(judged) == "answer_accuracy"
    assert [s["correct"] for s in samples] == [True, False, True] and judged["accuracy_by"] == "LLM judge offline"


# ------------------------------------------------------------------------------------ endpoint


def test_endpoint_messages_are_the_in_process_messages():
    torch = pytest.importorskip("torch")  # noqa: F841 - collate imports it
    from radcorpora.reference_models.collate import to_messages

    images = [Image.new("RGB", (8, 8), (k * 40, 0, 0)) for k in range(3)]
    history = [{"from": "human", "value": "<image><image>\nWhat is seen?"}, {"from": "gpt", "value": "A lesion."},
               {"from": "human", "value": "<image>"}]
    ours, theirs = chat_messages(history, images), to_messages(history, images)
    assert [m["role"] for m in ours] == [m["role"] for m in theirs]
    for mine, reference in zip(ours, theirs):
        if mine["role"] == "assistant":
            assert mine["content"] == "".join(p["text"] for p in reference["content"])
            continue
        assert [p["type"] for p in mine["content"]] == [{"image": "image_url"}.get(p["type"], p["type"])
                                                        for p in reference["content"]]
        for part, ref in zip(mine["content"], reference["content"]):
            if ref["type"] == "text":
                assert part["text"] == ref["text"]
            else:
                decoded = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
                assert np.array_equal(np.asarray(decoded), np.asarray(ref["image"]))
    assert chat_messages(history, None)[0]["content"] == [{"type": "text", "text": "What is seen?"}]


def test_a_served_model_is_scored_through_the_endpoint(ct_build, tmp_path, monkeypatch):
    ct = CORPORA["ct-reasoning"].evaluation
    rows = evaluation_rows(ct_build, ct, limit=2)
    sent = []

    def server_reply(model, system, messages):
        sent.append((model, messages))
        return "<think>\nI look.\n</think>\n<answer>No acute finding.</answer>", None

    monkeypatch.setenv("OPENAI_API_KEY", "sk-endpoint-test-0123456789")
    with FakeProviderServer(server_reply) as server:
        in_process = Recording(lambda h: "<think>\nI look.\n</think>\n<answer>No acute finding.</answer>")
        ours = evaluate(ct, in_process, rows, kit=QUICK)
        served = evaluate(ct, EndpointGenerator(server.openai_base_url, "served-vlm"), rows, kit=QUICK)
        assert served == ours  # same prompts, same answers: same metrics and samples
        assert len(sent) == 2 and {m for m, _ in sent} == {"served-vlm"}
        asked = {msgs[-1]["content"][-1]["text"]: msgs for _, msgs in sent}
        for history, pictures in zip(*in_process.calls[0][:2]):
            messages = asked[history[-1]["value"].split("\n", 1)[1]]
            parts = messages[-1]["content"]
            urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
            assert len(urls) == len(pictures) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
            for url, picture in zip(urls, pictures):
                decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                assert np.array_equal(np.asarray(decoded), np.asarray(picture))

        out = tmp_path / "served"
        result = cli_runner.invoke(cli.app, ["evaluate", str(ct_build), "--endpoint", server.openai_base_url,
                                             "--served-model", "served-vlm", "--out", str(out), "--limit", "2"])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["questions"] == 2 and len((out / "predictions.jsonl").read_text().splitlines()) == 2
        assert "endpoint" in result.output and "rouge_1" in result.output
    bad = cli_runner.invoke(cli.app, ["evaluate", str(ct_build), "--endpoint", "http://127.0.0.1:9/v1",
                                      "--served-model", "m", "--out", str(tmp_path / "x"), "--limit", "1"])
    assert bad.exit_code == 2 and "cannot connect" in bad.output and "Traceback" not in bad.output
    neither = cli_runner.invoke(cli.app, ["evaluate", str(ct_build)])
    assert neither.exit_code == 2 and "either --adapter" in neither.output


def test_credentialed_rows_go_to_an_endpoint_only_when_approved(mmrad_build, tmp_path):
    result = cli_runner.invoke(cli.app, ["evaluate", str(mmrad_build), "--endpoint", "http://127.0.0.1:9/v1",
                                         "--served-model", "m", "--out", str(tmp_path / "x"), "--limit", "1"])
    assert result.exit_code == 2 and "--approve-credentialed endpoint" in result.output


def test_runner_module_keeps_no_torch_at_import():
    import ast

    tree = ast.parse(Path(runner_module.__file__).read_text())
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not {"torch", "radcorpora.reference_models.generation"} & top  # an endpoint run needs no torch


def test_a_credentialed_build_is_refused_for_an_endpoint_even_without_row_lineage():
    from radcorpora.commands.evaluate import _credentialed_refusal
    from radcorpora.store.folder import BuildFolderError

    rows = [{"id": "a"}, {"id": "b", "lineage": None}]
    with pytest.raises(BuildFolderError, match="--approve-credentialed endpoint"):
        _credentialed_refusal(rows, [], "http://x/v1", {"licence_class": "credentialed"})
    _credentialed_refusal(rows, [], "http://x/v1", {"licence_class": "public"})  # nothing says credentialed
    _credentialed_refusal(rows, ["endpoint"], "http://x/v1", {"licence_class": "credentialed"})  # approved


def test_evaluate_refuses_a_config_its_metrics_do_not_read(demo_build, tmp_path):
    """`evaluate --config` on a config whose rows the corpus' scorer does not read (radimagenet-vqa
    `instruct`: the benchmark scorer reads one question per row) is one line and exit 2 before any
    model is loaded (it reached the scorer and ended in a KeyError once `--split` let it through);
    the recipe says which configs it scores."""
    from radcorpora.registry import CORPORA

    runner = CliRunner()
    result = runner.invoke(cli.app, ["evaluate", str(demo_build), "--adapter", str(tmp_path / "none"),
                                     "--config", "instruct", "--split", "validation"])
    assert result.exit_code == 2 and "score `benchmark` rows only" in result.output, result.output
    missing = runner.invoke(cli.app, ["evaluate", str(demo_build), "--adapter", str(tmp_path / "none"),
                                      "--split", "nope"])
    assert missing.exit_code == 2 and "no benchmark/nope shards" in missing.output
    radvlm, rvqa = CORPORA["radvlm"].evaluation, CORPORA["radimagenet-vqa"].evaluation
    assert all(radvlm.scores(c) for c in radvlm.per_instance) and rvqa.scores("benchmark")
    assert not rvqa.scores("instruct") and not rvqa.scores("alignment") and not CORPORA["rad-ace-cot"].evaluation.scores("default")
