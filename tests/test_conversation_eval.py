"""radvlm conversation evaluation: the model answers each human turn with its own earlier answers in
the history (the tiny offline model, really generating), and an LLM judge scores each conversation
0-10 from the last `Score: N` line of its reply (the real OpenAI SDK against the local wire-format
server): last line wins, one repair then a counted failure, answers cached, credentialed rows
refused by an unapproved provider, the metrics' mean traceable to the per-sample scores, and the
`radcorpora evaluate --config conversation --judge` path over a build folder."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

pytest.importorskip("torch")

from PIL import Image

from radcorpora.corpora.radvlm.evaluation import EVALUATION as RADVLM
from radcorpora.corpora.radvlm.records import RadVLMRecord
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.llm.structured import ParseError
from radcorpora.reference_models import evaluate
from radcorpora.reference_models.evaluate import InProcessGenerator
from radcorpora.reference_models.judge import Judge, ScoreLineParser
from radcorpora.testing.fake_llm_server import FakeProviderServer

KEY = "sk-test-conversation-0123456789"


def _png(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("L", (56, 56))
    image.putdata([rng.randrange(256) for _ in range(56 * 56)])
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def _record(n: int, rounds: int, task: str = "conversation", tag: str = "", licence: str = "public") -> RadVLMRecord:
    source = "mimic-cxr" if task == "conversation" else "ms-cxr"
    boxes = [] if task == "conversation" else [{"x1": 0.1, "y1": 0.2, "x2": 0.4, "y2": 0.6}]
    turns = []
    for k in range(rounds):
        question = f"{tag} Question {k} about image {n}: is there an effusion?".strip()
        turns += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + question},
                  {"from": "gpt", "value": f"Expected answer {k} for image {n}: a small left pleural effusion."}]
    return RadVLMRecord.model_validate({
        "image": {"bytes": _png(n)}, "id": f"{task}/{source}/img{n}", "task": task, "source": source,
        "view": "PA", "sex": "F", "report": "Small left pleural effusion.", "positive_labels": ["Pleural Effusion"],
        "instances": [{"id": f"{task}/{source}/img{n}#0", "conversations": turns, "label": None, "boxes": boxes}],
        "lineage": {"source_dataset": source, "source_id": f"img{n}", "patient_id": f"mimic:p{n}",
                    "source_split": "test", "licence_class": licence, "image_sha256": "0" * 64}})


def _rows(*records: RadVLMRecord) -> list[dict]:
    return [r.model_dump(by_alias=True) for r in records]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from radcorpora.reference_models.models import load_model, resolve_model

    texts = [t["value"].replace("<image>", "") for r in _rows(*(_record(n, 3) for n in range(4)))
             for t in r["instances"][0]["conversations"]] * 5
    path = resolve_model("tiny", tmp_path_factory.mktemp("tiny"), lambda: texts)
    return (path, *load_model(path))


def _session(tmp_path: Path) -> LLMSession:
    return LLMSession(LLMSettings(cache_path=str(tmp_path / "cache.sqlite")))


# ---------------------------------------------------------------------------------------- parser

@pytest.mark.parametrize("text,score", [
    ("Agrees on the effusion.\nScore: 7", 7.0),
    ("First pass.\nScore: 3\nOn reflection the sides match.\n**Score:** 8/10", 8.0),  # the last line wins
    ("Final score = 6.5", 6.5),
    ("score: 10 out of 10.", 10.0),
    ("Score: 0", 0.0),
])
def test_the_last_score_line_is_read(text, score):
    assert ScoreLineParser()(text).score == score


@pytest.mark.parametrize("text", [
    "The model did well overall.",  # no score line
    "The score: 7 is what I would give",  # not a line of its own
    "Score: 7\nScore: 12",  # the last line is out of range; the earlier one does not stand in
    "Score: -1",
    "Score: seven",
])
def test_replies_without_a_valid_last_score_line_are_refused(text):
    with pytest.raises(ParseError):
        ScoreLineParser()(text)


def test_reason_is_the_text_before_the_score_line():
    parsed = ScoreLineParser()("Right side named, left expected.\nScore: 4\n")
    assert parsed.reason == "Right side named, left expected." and parsed.score == 4


# -------------------------------------------------------------------------- multi-turn answering

def test_each_turn_sees_the_models_own_earlier_answers(tiny, monkeypatch):
    _, model, processor = tiny
    rows = _rows(_record(1, 3), _record(2, 2), _record(3, 3, task="conversation_grounded"))
    calls: list[tuple[list, list]] = []
    real = InProcessGenerator(model, processor)

    class Recording:
        name = "recording"

        def answer(self, histories, images, max_new_tokens):
            replies = real.answer(histories, images, max_new_tokens)
            calls.append(([list(h) for h in histories], list(images)))
            return replies

    metrics, samples = evaluate.evaluate(RADVLM, Recording(), rows, batch_size=8, max_new_tokens=6)

    # one group of three conversations, batched turn by turn: 3, 3, then the two 3-round ones
    assert [len(h) for h, _ in calls] == [3, 3, 2]
    for histories, images in calls:
        for history, pictures in zip(histories, images):
            assert pictures is not None and len(pictures) == 1  # the image model sees its image
            assert history[0]["value"].startswith("<image>\n") and history[-1]["from"] == "human"
            sample = next(s for s in samples if history[0]["value"].endswith(s["turns"][0]["question"]))
            earlier = [t["value"] for t in history if t["from"] == "gpt"]
            turn = len(earlier)
            assert earlier == [t["prediction"] for t in sample["turns"][:turn]]  # its own answers...
            assert not set(earlier) & {t["reference"] for t in sample["turns"]}  # ...never the references
            assert history[-1]["value"].endswith(sample["turns"][turn]["question"])
    assert [len(s["turns"]) for s in samples] == [3, 2, 3]
    assert all(s["judge_status"] == "not_run" and s["judge_score"] is None for s in samples)
    assert metrics["conversation_conversations"] == 2 and metrics["conversation_rounds"] == 5
    assert metrics["conversation_grounded_conversations"] == 1
    assert metrics["conversation_judge"]["run"] is False and "conversation_judge_score" not in metrics
    assert metrics["instances"] == 3 and RADVLM.primary(metrics) == "instances"

    calls.clear()
    evaluate.evaluate(RADVLM, Recording(), rows[:1], text_only=True, max_new_tokens=4)
    assert [images for _, images in calls] == [[None]] * 3  # the text-only twin: images withheld


# ------------------------------------------------------------------------------------- the judge

def _judge_reply(model, system, messages):
    """By the tag in the conversation: two score lines, none at all (also after the repair), none
    then a valid one in the repair, or one plain line."""
    text = messages[0]["content"]
    repair = len(messages) > 1
    if "[two-lines]" in text:
        return "Effusion found.\nScore: 2\nOn reflection the side is right too.\nScore: 9", None
    if "[no-score]" in text:
        return "I would rate it fairly well.", None
    if "[repaired]" in text:
        return ("Partly right.\nScore: 5" if repair else "Partly right, maybe a five."), None
    return "Score: 6", None


class Canned:
    """Answers every turn with "my answer K" (K: the turn's index)."""

    name = "canned"

    def answer(self, histories, images, max_new_tokens):
        return [f"my answer {len(h) // 2}" for h in histories]


def _fake_answers(monkeypatch):
    """Canned answers from the in-process generator too (the checkpoint is still loaded for real)."""
    monkeypatch.setattr(InProcessGenerator, "answer", Canned.answer)


def _radvlm(rows, judge=None):
    return evaluate.evaluate(RADVLM, Canned(), rows, judge=judge)


def test_judge_scores_repairs_failures_and_cache(monkeypatch, tmp_path):
    _fake_answers(monkeypatch)
    rows = _rows(_record(1, 2, tag="[two-lines]"), _record(2, 2, tag="[no-score]"), _record(3, 3, tag="[repaired]"),
                 _record(4, 2, tag="[plain]"), _record(5, 2, task="conversation_grounded", tag="[two-lines]", licence="credentialed"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(_judge_reply) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        session = LLMSession(LLMSettings(cache_path=str(tmp_path / "cache.sqlite"), approve_credentialed=["openai"]))
        metrics, samples = _radvlm(rows, judge=Judge("openai:judge-model", session))
        bodies = list(server.request_bodies)
        # five conversations, plus one repair each for [no-score] and [repaired]
        assert len(bodies) == 7 and all(b["temperature"] == 0.0 for b in bodies)
        # the judge sees every round: question, expected answer, and the model's own answer
        first = next(b for b in bodies if "[repaired]" in b["messages"][-1]["content"])["messages"][-1]["content"]
        assert "Round 3" in first and "Expected answer 2 for image 3" in first and "Model answer: my answer 2" in first

        again = LLMSession(LLMSettings(cache_path=str(tmp_path / "cache.sqlite"), approve_credentialed=["openai"]))
        metrics2, samples2 = _radvlm(rows, judge=Judge("openai:judge-model", again))
        assert len(server.request_bodies) == 7 and again.sent == 0  # every answer, repairs too, from the cache
    assert metrics2 == metrics and samples2 == samples

    by_tag = {s["turns"][0]["question"].split()[0]: s for s in samples if s["task"] == "conversation"}
    assert by_tag["[two-lines]"]["judge_score"] == 9.0  # the last score line only
    assert "Score: 2" in by_tag["[two-lines]"]["judge_reason"]
    assert by_tag["[repaired]"]["judge_score"] == 5.0 and by_tag["[plain]"]["judge_score"] == 6.0
    failed = by_tag["[no-score]"]
    assert failed["judge_status"] == "failed" and failed["judge_score"] is None
    assert failed["judge_error"].startswith("parse:") and "after one repair" in failed["judge_error"]

    scored = [s["judge_score"] for s in samples if s["task"] == "conversation" and s["judge_status"] == "scored"]
    mean = round(sum(scored) / len(scored), 3)
    assert metrics["conversation_judge_score"] == mean == round((9 + 5 + 6) / 3, 3)
    assert metrics["conversation_judge_score_100"] == round(10 * mean, 2)
    assert metrics["conversation_judged"] == 3 and metrics["conversation_judge_failures"] == 1
    assert metrics["conversation_judge"] == {"run": True, "model": "openai:judge-model"}
    # the grounded conversation has its own metrics
    assert metrics["conversation_grounded_judge_score"] == 9.0 and metrics["conversation_grounded_judge_failures"] == 0
    assert metrics["conversation_conversations"] == 4 and metrics["conversation_grounded_conversations"] == 1
    assert RADVLM.primary(metrics) == "conversation_judge_score_100"
    assert session.ledger.counts() == {"parse": 1}  # the failure is in the ledger too
    assert KEY not in (tmp_path / "cache.sqlite").read_bytes().decode("latin-1")


def test_credentialed_conversations_are_refused_by_an_unapproved_judge(monkeypatch, tmp_path):
    _fake_answers(monkeypatch)
    rows = _rows(_record(1, 2, licence="credentialed"), _record(2, 2, licence="credentialed"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(_judge_reply) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        metrics, samples = _radvlm(rows, judge=Judge("openai:judge-model", _session(tmp_path)))
        assert server.calls == 0  # nothing left the machine
    assert metrics["conversation_judge_failures"] == 2 and metrics["conversation_judged"] == 0
    assert metrics["conversation_judge_score"] is None and "approve-credentialed" in metrics["conversation_judge"]["error"]
    assert all(s["judge_status"] == "failed" and s["judge_error"].startswith("refused:") for s in samples)
    assert all(t["prediction"] for s in samples for t in s["turns"])  # the model's answers are kept
    assert RADVLM.primary(metrics) == "instances"


def test_offline_judge_through_the_session(monkeypatch, tmp_path):
    """The offline stand-in answers by stage like any builder's, so demos can run the judge."""
    _fake_answers(monkeypatch)
    seen = []

    def responder(request):
        seen.append(request)
        return "Close enough.\nScore: 7"

    session = LLMSession(LLMSettings(cache_path=str(tmp_path / "c.sqlite")), offline={"conversation_judge": responder})
    metrics, _ = _radvlm(_rows(_record(1, 2, licence="credentialed")), judge=Judge("offline", session))
    assert metrics["conversation_judge_score"] == 7.0 and seen[0].licence_class == "credentialed"
    assert seen[0].prompt_id == "radvlm/conversation-judge/v1"


# ------------------------------------------------------------- build folder: evaluate command, check

def _write_build(out: Path, splits: dict[str, list[RadVLMRecord]]) -> Path:
    """A build folder as `datasets` and the reference-model readers see one: `config[/split]` ->
    records (split `test` by default), with the card's config metadata and a manifest."""
    from radcorpora.publish.card import card_metadata
    from radcorpora.store.atomic import write_json, write_text
    from radcorpora.store.shards import write_split

    for name, records in splits.items():
        config, _, split = name.partition("/")
        write_split(out, config, split or "test", records, len(records), RadVLMRecord, 100)
    data, _ = card_metadata(out, {name.partition("/")[0]: RadVLMRecord for name in splits})
    write_text(out / "README.md", f"---\n{data.to_yaml()}\n---\n")
    write_json(out / "build" / "manifest.json", {"corpus": "radvlm"})
    return out


def test_evaluate_command_on_the_conversation_config(tiny, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from radcorpora.cli import app
    from radcorpora.reference_models.check import judged_rows
    from radcorpora.reference_models.sft import SFTConfig, TrainResult
    from radcorpora.registry import CORPORA

    base, _, _ = tiny
    _fake_answers(monkeypatch)  # the checkpoint is loaded for real; its multi-turn answering is tested above
    build = _write_build(tmp_path / "build", {"conversation": [_record(1, 2), _record(2, 2, tag="[two-lines]")],
                                              "conversation_grounded": [_record(3, 2, task="conversation_grounded")]})
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "model").symlink_to(base, target_is_directory=True)
    (trained / "train_result.json").write_text(TrainResult(
        out=str(trained), method="full", base_model=str(base), text_only=False, steps=0, examples_seen=0, seconds=0,
        first_loss=None, last_loss=None, samples_per_second=0, tokens_per_second=0,
        config=SFTConfig(method="full")).model_dump_json())

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeProviderServer(_judge_reply) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        result = CliRunner().invoke(app, ["evaluate", str(build), "--adapter", str(trained), "--config", "conversation",
                                          "--judge", "openai:judge-model", "--cache", str(tmp_path / "c.sqlite")])
        assert result.exit_code == 0, result.output
        assert server.calls == 2
    metrics = json.loads((trained / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (trained / "predictions.jsonl").read_text().splitlines()]
    assert metrics["conversation_judge_score"] == round((6 + 9) / 2, 3) and metrics["conversation_judge_failures"] == 0
    assert [p["judge_score"] for p in predictions] == [6.0, 9.0] and all(len(p["turns"]) == 2 for p in predictions)
    assert predictions[0]["turns"][1] == {"question": "Question 1 about image 1: is there an effusion?",
                                          "reference": "Expected answer 1 for image 1: a small left pleural effusion.",
                                          "prediction": "my answer 1"}
    assert "conversation_judge_score_100" in result.output

    # the check picks up both conversation configs, only when a judge is given
    recipe = CORPORA["radvlm"].evaluation
    judge = Judge("offline", _session(tmp_path))
    found = judged_rows(build, recipe, judge, limit=1)
    assert {k: len(v) for k, v in found.items()} == {"conversation": 1, "conversation_grounded": 1}
    assert judged_rows(build, recipe, None) == {}


def _classification(n: int) -> RadVLMRecord:
    record = _record(n, 1)
    instance = record.instances[0].model_copy(update={
        "id": f"abnormality_classification/mimic-cxr/img{n}#0",
        "conversations": [record.instances[0].conversations[0].model_copy(update={"value": "<image>\nWhich findings?"}),
                          record.instances[0].conversations[1].model_copy(update={"value": "Pleural Effusion"})]})
    return record.model_copy(update={"task": "abnormality_classification", "instances": [instance],
                                     "id": f"abnormality_classification/mimic-cxr/img{n}"})


def test_check_reports_conversations_next_to_the_main_metric(monkeypatch, tmp_path):
    from radcorpora.reference_models.check import CheckConfig, read_check, run_check
    from radcorpora.registry import CORPORA

    _fake_answers(monkeypatch)  # both parts: real training, canned answers
    build = _write_build(tmp_path / "build", {"abnormality_classification": [_classification(n) for n in range(2)],
                                              "conversation": [_record(10, 2, tag="[two-lines]"), _record(11, 2, tag="[no-score]")],
                                              "conversation_grounded": [_record(12, 2, task="conversation_grounded")],
                                              "abnormality_classification/train": [_classification(n) for n in range(2, 6)]})

    def judge_reply(request):
        text = request.messages[0].text()
        return "no score at all" if "[no-score]" in text else ("Score: 8" if "[two-lines]" in text else "Score: 4")

    session = LLMSession(LLMSettings(cache_path=str(tmp_path / "c.sqlite")), offline={"conversation_judge": judge_reply,
                                                                                      "conversation_judge/repair": judge_reply})
    report = run_check(build, CheckConfig(max_steps=1, preset="tiny-lora"), CORPORA["radvlm"].evaluation,
                       judge=Judge("offline", session))
    assert report["metric"] == "classification_macro_f1" and report["gap"] == 0.0  # the same canned answers
    summary = report["judged_configs"]
    assert summary["conversation"] == {"metric": "conversation_judge_score_100", "image": 80.0, "text_only": 80.0,
                                       "gap": 0.0, "judge_failures": {"image": 1, "text_only": 1}}
    assert summary["conversation_grounded"]["image"] == 40.0
    for variant in ("image", "text_only"):
        part = report[variant]["judged_configs"]["conversation"]
        assert part["metrics"]["conversation_judge_failures"] == 1
        assert (build / part["predictions"]).exists()
    assert not any(k.startswith("conversation") for k in report["image"]["metrics"])  # part 1 is untouched
    assert read_check(build)["judged_configs"] == summary
