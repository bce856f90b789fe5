"""mmrad-ivl trace metrics: values checked against hand-worked cases and against scikit-image
called directly; parsing on a trace in the public example's style (FORMATS.md §12); every metric
that cannot run says why."""

from __future__ import annotations

import io
import math
import shutil
import sys
import types

import numpy as np
import pytest
from PIL import Image

from radcorpora.reference_models import trace_metrics as tm
from radcorpora.schemas.boxes import Box

TRACE = (
    "First, to check the cardiac size and mediastinal contours, I will highlight the heart and the "
    "mediastinal region of this X-ray. <image> The bounding box of this area is [108, 104, 252, 277] . "
    "The cardiac silhouette is normal in size. The hilar contours are unremarkable.\n\n"
    "Second, to assess the lungs, I will highlight the lung region of this X-ray. <image> The bounding "
    "box of this area is [32, 40, 480, 424] . The lungs are clear without focal consolidation.\n\n"
    "Summarizing the previous analysis, I will generate the following report: The heart size is normal. "
    "The lungs are clear. No acute cardiopulmonary process."
)


def box(x1: float, y1: float, x2: float, y2: float) -> Box:
    return Box.from_normalised(x1, y1, x2, y2)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ parsing


def test_parse_trace_reads_steps_groups_boxes_and_report():
    trace = tm.parse_trace(TRACE, width=512, height=512)
    assert [s.group for s in trace.steps] == ["mediastinal", "lung"]
    assert [s.image_indices for s in trace.steps] == [(0,), (1,)]
    assert trace.steps[0].box_values == ((108.0, 104.0, 252.0, 277.0),)
    assert trace.steps[0].box.xyxy == pytest.approx((108 / 512, 104 / 512, 252 / 512, 277 / 512))
    assert trace.steps[1].box.xyxy == pytest.approx((32 / 512, 40 / 512, 480 / 512, 424 / 512))
    # the rationale keeps the findings, drops the placeholder and the sentence printing the box
    assert trace.steps[1].rationale == ("Second, to assess the lungs, I will highlight the lung region of this "
                                        "X-ray. The lungs are clear without focal consolidation.")
    assert trace.steps[0].rationale.endswith("this X-ray. The cardiac silhouette is normal in size. "
                                             "The hilar contours are unremarkable.")
    # the lead-in to the report belongs to no step
    assert trace.steps[1].text.endswith("without focal consolidation.")
    assert trace.report == "The heart size is normal. The lungs are clear. No acute cardiopulmonary process."
    assert trace.preamble == ""


def test_parse_trace_without_blank_lines_cuts_before_the_sentence_leading_to_each_image():
    one_paragraph = tm.parse_trace(TRACE.replace("\n\n", " "), width=512, height=512)
    split = tm.parse_trace(TRACE, width=512, height=512)
    assert [s.text for s in one_paragraph.steps] == [s.text for s in split.steps]
    assert one_paragraph.report == split.report
    # a box printed in its own paragraph belongs to the image just before it
    apart = tm.parse_trace(TRACE.replace(" <image> The bounding box", " <image>\n\nThe bounding box"),
                           width=512, height=512)
    assert [(s.group, s.image_indices, s.box_values) for s in apart.steps] == [
        (s.group, s.image_indices, s.box_values) for s in split.steps]


def test_parse_trace_marker_is_a_parameter_and_missing_marker_gives_no_report():
    custom = TRACE.replace("I will generate the following report:", "FINAL REPORT ->")
    assert tm.parse_trace(custom).report is None
    assert tm.parse_trace(custom, report_marker="final report ->").report.startswith("The heart size is normal.")
    # a marker word inside a step (before the last image) is not taken for the report
    early = "Report: first look. I will highlight the lung region. <image> [0.1, 0.1, 0.9, 0.9] Clear."
    assert tm.parse_trace(early).report is None
    # an answer with no step at all: all of it is preamble or report
    bare = tm.parse_trace("Looking at the film.\n\nReport: No acute process.")
    assert bare.steps == () and bare.report == "No acute process." and bare.preamble == "Looking at the film."


def test_parse_trace_pixel_boxes_without_size_keep_their_numbers_only():
    trace = tm.parse_trace(TRACE)
    assert trace.steps[0].box is None and trace.steps[0].boxes == ()
    assert trace.steps[0].box_values == ((108.0, 104.0, 252.0, 277.0),)
    # the group named last before the image wins ("having checked the lungs" names another one)
    normalised = tm.parse_trace("Having checked the lungs, I will highlight the bone region. <image> The box is "
                                "[0.1, 0.2, 0.3, 0.4]. No fracture of the ribs. Report: normal.")
    assert normalised.steps[0].group == "bone"
    assert normalised.steps[0].box.xyxy == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert normalised.report == "normal."
    # two boxes in one step: the step's crop is their union (as the corpus unions a group's boxes)
    two = tm.parse_trace("I will highlight the lung region. <image> The boxes are [0.1, 0.1, 0.4, 0.9] and "
                         "[0.6, 0.2, 0.9, 0.8]. Both lungs are clear. Report: ok")
    assert two.steps[0].box.xyxy == pytest.approx((0.1, 0.1, 0.9, 0.9)) and len(two.steps[0].boxes) == 2
    assert two.steps[0].rationale == "I will highlight the lung region. Both lungs are clear."


# -------------------------------------------------------------------------------- report text


def test_bleu_and_rouge_match_hand_computed_values():
    # "the cat sat on the mat" vs "the cat is on the mat": n-gram precisions 5/6, 3/5, 1/4, 0/3,
    # equal lengths (brevity penalty 1); LCS "the cat on the mat" = 5 of 6 words.
    out = tm.report_metrics(["the cat sat on the mat"], ["the cat is on the mat"], meteor=None)
    assert out["bleu1"] == pytest.approx(5 / 6)
    assert out["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert out["bleu3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert out["bleu4"] == 0.0
    assert out["rouge_l"] == pytest.approx(5 / 6)
    assert out["meteor"] is None and out["samples"][0]["meteor"] is None
    # brevity penalty exp(1 - 6/2); LCS 4: precision 1, recall 4/6 -> F 0.8
    short = tm.report_metrics(["the cat", "the cat on mat"], ["the cat is on the mat", "the cat sat on the mat"],
                              meteor=None)
    assert short["bleu1"] == pytest.approx(math.exp(1 - 12 / 6))  # corpus: 6 of 6 words match, 6 vs 12
    assert [s["rouge_l"] for s in short["samples"]] == pytest.approx([2 * 1 * (2 / 6) / (1 + 2 / 6), 0.8])
    assert short["rouge_l"] == pytest.approx((0.5 + 0.8) / 2)
    assert short["samples"][0]["bleu1"] == pytest.approx(math.exp(1 - 6 / 2))


def test_identical_texts_score_perfectly_and_meteor_runs_or_says_why():
    texts = ["The heart size is normal.", "No focal consolidation, effusion or pneumothorax."]
    out = tm.report_metrics(texts + ["alpha beta gamma"], texts + ["delta epsilon zeta"])
    assert [out["samples"][i][f"bleu{n}"] for i in (0, 1) for n in tm.BLEU_ORDERS] == pytest.approx([1.0] * 8)
    assert [s["rouge_l"] for s in out["samples"]] == pytest.approx([1.0, 1.0, 0.0])
    if shutil.which("java") is not None:  # pycocoevalcap's METEOR 1.5 jar (the [train] extra)
        assert out["meteor_backend"] == "pycocoevalcap"
        assert [s["meteor"] for s in out["samples"]] == pytest.approx([1.0, 1.0, 0.0])
        assert 0.0 < out["meteor"] < 1.0
    else:
        assert out["meteor_backend"] in (None, "nltk")
        if out["meteor_backend"] is None:
            assert "java" in out["meteor"]["skipped"]


def test_nltk_meteor_without_wordnet_is_skipped_with_the_reason(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    out = tm.report_metrics(["a b"], ["a b"], meteor="nltk")
    assert "WordNet" in out["meteor"]["skipped"]
    assert out["meteor_backend"] is None and out["samples"][0]["meteor"] is None
    not_a_dict = tm.report_metrics(["a b"], ["a b"], meteor="nltk", nltk_data=tmp_path)
    assert "holds no corpora/wordnet" in not_a_dict["meteor"]["skipped"]


def test_radgraph_without_radeval_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "RadEval", None)  # import of RadEval raises ImportError
    out = tm.radgraph_f1(["no effusion"], ["no effusion"])
    assert set(out) == {"skipped"} and "RadEval not available" in out["skipped"]


# -------------------------------------------------------------------- grounding consistency


def test_grounding_consistency_matches_by_group_with_hand_computed_iou():
    refs = [("mediastinal", box(0.2, 0.2, 0.6, 0.6)), ("lung", box(0.0, 0.0, 0.5, 1.0)),
            ("bone", box(0.1, 0.1, 0.3, 0.3))]
    preds = [("lung", box(0.0, 0.0, 0.5, 1.0)), ("mediastinal", box(0.4, 0.4, 0.8, 0.8)), ("other", None),
             (None, box(0.0, 0.0, 0.1, 0.1))]
    out = tm.grounding_consistency(preds, refs)
    # mediastinal: intersection 0.2 x 0.2 = 0.04, union 0.16 + 0.16 - 0.04 = 0.28 -> 1/7
    assert [(s["group"], s["iou"]) for s in out["steps"]] == [
        ("mediastinal", pytest.approx(1 / 7)), ("lung", pytest.approx(1.0)), ("bone", 0.0)]
    assert out["mean_iou"] == pytest.approx((1 / 7 + 1 + 0) / 3)
    assert out["matched_mean_iou"] == pytest.approx((1 / 7 + 1) / 2)
    assert out["grounded_share"] == pytest.approx(3 / 4)
    assert out["extra_groups"] == ["other"] and out["unnamed_steps"] == 1
    assert out["reference_steps"] == 3 and out["predicted_steps"] == 4
    same = tm.grounding_consistency(dict(refs), dict(refs))
    assert same["mean_iou"] == pytest.approx(1.0) and same["grounded_share"] == 1.0


# ------------------------------------------------------------------- generation consistency


def _test_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:160, 0:200]
    base = 120 + 80 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 12, (160, 200))
    array = np.clip(base, 0, 255).astype(np.uint8)
    array[0, 0], array[-1, -1] = 0, 255  # full range, so a 16-bit copy scales back exactly
    return array


def _ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    def prepared(x: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(x).resize((256, 256), Image.Resampling.BILINEAR), dtype=np.float64)

    return float(structural_similarity(prepared(a), prepared(b), data_range=255))


def test_generation_consistency_ssim_against_skimage_directly():
    array = _test_image()
    image = png(array)
    predicted = box(0.25, 0.25, 0.75, 0.75)  # on 200 x 160: pixels x 50..150, y 40..120
    same = array[40:120, 50:150]
    shifted = array[48:128, 58:158]
    out = tm.generation_consistency([png(same), png(shifted), None, png(same)], image,
                                    [predicted, predicted, predicted, None])
    assert out["ssim"][0] == pytest.approx(1.0)
    expected = _ssim_direct(shifted, same)
    assert expected < 0.9
    assert out["ssim"][1] == pytest.approx(expected)
    assert out["ssim"][2:] == [None, None] and out["no_image"] == 1 and out["no_box"] == 1
    assert out["scored"] == 2 and out["mean_ssim"] == pytest.approx((1.0 + expected) / 2)


def test_generation_consistency_scales_a_16_bit_original_instead_of_clipping():
    array = _test_image()
    wide = Image.fromarray(array.astype(np.uint16) * 257)  # I;16, 0..65535
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    out = tm.generation_consistency([png(array[40:120, 50:150])], buffer.getvalue(), [box(0.25, 0.25, 0.75, 0.75)])
    assert out["ssim"][0] == pytest.approx(1.0)


# --------------------------------------------------------------------- semantic consistency


class TableEncoder:
    """A test double: each image / text maps to a fixed vector, so cosines are worked by hand."""

    def __init__(self, vectors: dict):
        self.vectors = vectors

    def encode_images(self, images):
        return np.array([self.vectors[i] for i in images], dtype=float)

    def encode_texts(self, texts):
        return np.array([self.vectors[t] for t in texts], dtype=float)


def test_semantic_consistency_sums_text_image_and_image_image_cosines():
    encoder = TableEncoder({b"gen1": [1.0, 1.0], b"cut1": [0.0, 3.0], "heart normal": [2.0, 0.0],
                            b"gen2": [1.0, 0.0], b"cut2": [1.0, 0.0], "lungs clear": [-1.0, 0.0]})
    assert isinstance(encoder, tm.ImageTextEncoder)
    out = tm.semantic_consistency(encoder, [b"gen1", b"gen2", None], ["heart normal", "lungs clear", "bones"],
                                  [b"cut1", b"cut2", b"cut3"])
    # step 1: cos([1,1],[1,0]) = cos([1,1],[0,1]) = 1/sqrt(2); step 2: -1 and 1; step 3 has no image
    assert out["text_image_steps"] == pytest.approx([1 / math.sqrt(2), -1.0, None])
    assert out["image_image_steps"] == pytest.approx([1 / math.sqrt(2), 1.0, None])
    assert out["text_image"] == pytest.approx((1 / math.sqrt(2) - 1) / 2)
    assert out["image_image"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert out["score"] == pytest.approx(1 / math.sqrt(2))  # (1/sqrt2 - 1)/2 + (1/sqrt2 + 1)/2
    assert out["no_image"] == 1
    text_only = tm.semantic_consistency(encoder, [b"gen1"], ["heart normal"])
    assert text_only["score"] is None and text_only["text_image"] == pytest.approx(1 / math.sqrt(2))


def test_semantic_consistency_without_encoder_reports_the_loader_reason(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    encoder, why = tm.load_biomedclip()
    assert encoder is None and "open_clip not available" in why
    assert tm.semantic_consistency(encoder, [b"x"], ["t"], unavailable=why) == {"skipped": why}
    monkeypatch.setitem(sys.modules, "open_clip", types.ModuleType("open_clip"))  # importable, no weights
    encoder, why = tm.load_biomedclip(tmp_path)
    assert encoder is None and "weights not on disk" in why and "open_clip_config.json" in why
    encoder, why = tm.load_biomedclip("radcorpora-tests/no-such-model")
    assert encoder is None and "not in the Hugging Face cache" in why


def test_crop_bytes_cuts_the_predicted_box():
    array = _test_image()
    cut = Image.open(io.BytesIO(tm.crop_bytes(png(array), box(0.25, 0.25, 0.75, 0.75))))
    assert np.array_equal(np.asarray(cut), array[40:120, 50:150])
    assert tm.mean_of([None, 0.5, float("nan"), 1.0]) == pytest.approx(0.75) and tm.mean_of([None]) is None
