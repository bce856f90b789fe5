"""Evaluation metrics and LLM judges: answer parsing, text metrics against hand-computed values, the
rad-ace-cot evaluation with a five-criteria judge through the real OpenAI SDK and a local server."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from radcorpora.corpora.rad_ace_cot.evaluation import EVALUATION as RAD_ACE
from radcorpora.corpora.rad_ace_cot.evaluation import score_vqa_rad
from radcorpora.corpora.radimagenet_vqa.evaluation import parse_letter
from radcorpora.llm.session import LLMSession, LLMSettings
from radcorpora.reference_models.evaluate import evaluate
from radcorpora.reference_models.judge import Judge, JudgeItem
from radcorpora.reference_models.metric_kit import text_scores
from radcorpora.spec.evaluation import parse_closed
from radcorpora.testing.fake_llm_server import FakeProviderServer

KEY = "sk-test-reference-0123456789"


@pytest.mark.parametrize("text,expected", [
    ("no", "no"), ("Yes.", "yes"), ("nodule", None), ("a nodule is seen", None), ("Notably, no.", "no"),
    ("No, there is no nodule", "no"), ("yesterday", None), ("", None),
])
def test_closed_answers_are_read_on_word_boundaries(text, expected):
    assert parse_closed(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("(c)", "C"), ("Answer: D", "D"), ("The answer is (A).", "A"), ("B. knee", "B"),
    ("knee", "B"), ("brain or knee", None), ("E", None), ("Because the image shows...", None),
])
def test_multiple_choice_letters(text, expected):
    assert parse_letter(text, ["brain", "knee", "hip", "spine"]) == expected


def test_vqa_rad_answers():
    assert score_vqa_rad("CLOSED", "No", "There is no effusion, so no.")
    assert not score_vqa_rad("CLOSED", "no", "A nodule is present.")
    assert score_vqa_rad("OPEN", "left lung", "The lesion is in the left lung.")
    assert not score_vqa_rad("OPEN", "left lung", "The lesion is in the right lung.")
    assert score_vqa_rad("CLOSED", "left", "It is on the left side")


def test_text_metrics_match_hand_computed_values():
    # ROUGE-L F1 from the longest common subsequence: "the cat sat" vs "the cat sat down" -> LCS 3,
    # P = 3/3, R = 3/4, F = 2PR/(P+R) = 6/7.
    metrics = text_scores(["the cat sat", "left lung"], ["the cat sat down", "left lung"])
    assert metrics["rouge_l"] == round(100 * (6 / 7 + 1.0) / 2, 2)
    assert metrics["per_sample"]["rouge_l"] == [round(100 * 6 / 7, 2), 100.0]
    assert text_scores(["a b c d e"], ["a b c d e"])["bleu"] == pytest.approx(100.0)
    assert text_scores(["x y z"], ["a b c d"])["bleu"] == 0.0


def _judge_server(model, system, messages):
    text = json.dumps(messages)
    if "malformed" in text:  # also refuses the repair request, which repeats the conversation
        return "I would rate it highly.", None
    good = "<answer>Yes" in text
    score = 5 if good else 2
    return json.dumps({"clinical_relevance": score, "factuality": score, "reasoning_coherence": 4,
                       "completeness": score, "final_answer_quality": score}), None


def test_rad_ace_evaluation_with_a_five_criteria_judge(monkeypatch, tmp_path):
    rows = [
        {"id": "q1", "question": "Is there a fracture?", "answer": "yes", "answer_type": "CLOSED",
         "lineage": {"licence_class": "public"}},
        {"id": "q2", "question": "Which lung is affected?", "answer": "left lung", "answer_type": "OPEN",
         "lineage": {"licence_class": "public"}},
        {"id": "q3", "question": "Is the output malformed?", "answer": "no", "answer_type": "CLOSED",
         "lineage": {"licence_class": "public"}},
    ]
    outputs = ["<think>The cortex is broken.</think><answer>Yes, a fracture.</answer>",
               "<think>Opacity on one side.</think><answer>The right lung.</answer>",
               "malformed output, tags missing"]
    asked: list[list[str]] = []

    class Canned:
        name = "canned"

        def answer(self, histories, images, max_new_tokens):
            asked.append([h[-1]["value"] for h in histories])
            assert all(len(h) == 1 for h in histories) and images == [None] * len(histories)
            return [outputs[int(h[-1]["value"].startswith("<image>\nWhich")) if "malformed" not in h[-1]["value"] else 2]
                    for h in histories]

    with FakeProviderServer(_judge_server) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        session = LLMSession(LLMSettings(cache_path=str(tmp_path / "cache.sqlite")))
        metrics, samples = evaluate(RAD_ACE, Canned(), rows, text_only=True, judge=Judge("openai:gpt-4o", session))
        bodies = list(server.request_bodies)
    assert asked == [[f"<image>\n{r['question']}" for r in rows]]  # each question with its own prompt, one batch
    # three questions, plus one repair request for the reply that was not JSON
    assert len(bodies) == 4 and all(b["temperature"] == 0.0 for b in bodies)
    assert metrics["format_rate"] == round(100 * 2 / 3, 2)
    assert metrics["answer_accuracy"] == round(100 * 1 / 3, 2)  # q1 right, q2 wrong lung, q3 "no" not said
    assert metrics["closed_accuracy"] == 50.0 and metrics["open_accuracy"] == 0.0
    judge = metrics["judge"]
    assert judge["scored"] == 2 and judge["failed"] == 1  # the malformed reply is counted, not dropped
    assert judge["criteria"]["clinical_relevance"] == 3.5 and judge["criteria"]["reasoning_coherence"] == 4.0
    mean = ((5 * 4 + 4) / 5 + (2 * 4 + 4) / 5) / 2
    assert judge["mean"] == round(mean, 3)
    assert metrics["judge_score"] == round(100 * (mean - 1) / 4, 2)
    assert samples[2]["judge_error"] and "judge" not in samples[2]
    assert samples[0]["judge"]["final_answer_quality"] == 5
    assert RAD_ACE.primary(metrics) == "judge_score"
    assert KEY not in (tmp_path / "cache.sqlite").read_bytes().decode("latin-1")


def test_open_answer_judge_verdicts(monkeypatch, tmp_path):
    def server(model, system, messages):
        text = messages[-1]["content"]
        return json.dumps({"correct": "Model answer: kidney lesion" in text}), None

    with FakeProviderServer(server) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_base_url)
        judge = Judge("openai:gpt-4o-mini", LLMSession(LLMSettings(cache_path=str(tmp_path / "c.sqlite"))))
        verdicts = judge.open_answers([JudgeItem("a", "Main finding?", "renal lesion", "kidney lesion"),
                                       JudgeItem("b", "Main finding?", "renal lesion", "kidney")])
    assert [v.parsed.correct for v in verdicts] == [True, False]
