"""Boxes: frame conversions, reader-consensus fusion, text renderings and parsing, grounding metrics."""

from __future__ import annotations

import itertools
import math
import random
import re
import sys
import types
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

import pytest

from radcorpora.ops.boxes import (
    RADVLM_DECIMALS,
    RADVLM_IOU_THR,
    RADVLM_SKIP_BOX_THR,
    box_pixels_text,
    box_text,
    boxes_text,
    crop_pixels,
    find_box_text,
    fuse_readers,
    fuse_table,
    iou,
    parse_boxes,
    text_box,
    union_box,
)
from radcorpora.schemas.boxes import EDGE_TOLERANCE, Box, BoxError

N = Box.from_normalised


# ------------------------------------------------------------------------------ helpers


def ref_round2(v: float) -> float:
    """Python's round(v, 2) computed independently: the exact binary value, half to even."""
    return float(Decimal(v).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


def ref_pixel(v: float) -> int:
    return int(Decimal(v).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def random_box(rng: random.Random, centre: tuple[float, float] | None = None, spread: float = 0.05,
               min_side: float = 0.02) -> Box:
    while True:
        if centre is None:
            cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
        else:
            cx, cy = centre[0] + rng.uniform(-spread, spread), centre[1] + rng.uniform(-spread, spread)
        w, h = rng.uniform(min_side, 0.3), rng.uniform(min_side, 0.3)
        x1, y1 = max(0.0, cx - w / 2), max(0.0, cy - h / 2)
        x2, y2 = min(1.0, cx + w / 2), min(1.0, cy + h / 2)
        if x2 - x1 >= min_side and y2 - y1 >= min_side:
            return N(x1, y1, x2, y2)


def random_readers(rng: random.Random, readers: int = 3, centres: int = 3, max_boxes: int = 4) -> dict[str, list[Box]]:
    """Boxes of a few readers scattered around shared centres (so some overlap, some do not)."""
    points = [(rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85)) for _ in range(centres)]
    out = {}
    for r in range(readers):
        out[f"R{rng.randint(1, 17)}-{r}"] = [random_box(rng, rng.choice(points), spread=0.08)
                                           for _ in range(rng.randint(0, max_boxes))]
    return out


def shuffled(mapping: dict[str, list[Box]], rng: random.Random) -> dict[str, list[Box]]:
    keys = list(mapping)
    rng.shuffle(keys)
    out = {}
    for k in keys:
        boxes = list(mapping[k])
        rng.shuffle(boxes)
        out[k] = boxes
    return out


# ------------------------------------------------------------------------------ Box frames


def test_pixel_xyxy_normalises_by_width_and_height():
    box = Box.from_pixels_xyxy(100, 200, 300, 500, width=1000, height=2000)
    assert box.xyxy == pytest.approx((100 / 1000, 200 / 2000, 300 / 1000, 500 / 2000))
    assert (box.frame, box.width, box.height) == ("pixel_xyxy", 1000, 2000)


def test_pixel_xywh_adds_size_to_corner():
    box = Box.from_pixels_xywh(100, 200, 50, 300, width=1000, height=1000)
    assert box.xyxy == pytest.approx((0.1, 0.2, 0.15, 0.5))
    assert box.frame == "pixel_xywh"
    with pytest.raises(BoxError) as err:
        Box.from_pixels_xywh(100, 200, -5, 10, width=1000, height=1000)
    assert err.value.reason == "inverted"


def test_grid_xyxy_divides_by_grid():
    box = Box.from_grid_xyxy(22.4, 44.8, 112, 224, grid=224, width=2544, height=3056)
    assert box.xyxy == pytest.approx((0.1, 0.2, 0.5, 1.0))
    assert (box.frame, box.width, box.height) == ("grid_xyxy", 2544, 3056)
    assert Box.from_grid_xyxy(100, 200, 300, 400, grid=1000).xyxy == pytest.approx((0.1, 0.2, 0.3, 0.4))


def test_normalised_and_pixels_round_trip():
    box = N(0.1, 0.2, 0.5, 0.75, width=640, height=480)
    assert box.frame == "normalised_xyxy"
    assert box.to_pixels(640, 480) == tuple(ref_pixel(v) for v in (0.1 * 640, 0.2 * 480, 0.5 * 640, 0.75 * 480))


def test_small_overshoot_is_clamped_larger_is_rejected():
    slip = EDGE_TOLERANCE / 2
    box = N(-slip, 0.1, 1 + slip, 0.9)
    assert (box.x1, box.x2) == (0.0, 1.0)
    pixels = Box.from_pixels_xyxy(-10, 0, 1010, 500, width=1000, height=1000)  # 1% past each side
    assert (pixels.x1, pixels.x2) == (0.0, 1.0)
    for bad in [(-2 * EDGE_TOLERANCE, 0.1, 0.5, 0.5), (0.1, 0.1, 1 + 2 * EDGE_TOLERANCE, 0.5)]:
        with pytest.raises(BoxError) as err:
            N(*bad)
        assert err.value.reason == "outside_frame"


@pytest.mark.parametrize("coords, reason", [
    ((0.5, 0.1, 0.4, 0.9), "inverted"),
    ((0.1, 0.9, 0.5, 0.2), "inverted"),
    ((0.3, 0.1, 0.3, 0.9), "zero_area"),
    ((0.1, 0.4, 0.9, 0.4), "zero_area"),
    ((1.0 + EDGE_TOLERANCE / 4, 0.1, 1.0 + EDGE_TOLERANCE / 2, 0.5), "zero_area"),  # nothing left inside
    ((float("nan"), 0.1, 0.5, 0.5), "not_a_number"),
    ((0.1, 0.1, float("inf"), 0.5), "not_a_number"),
    (("a", 0.1, 0.5, 0.5), "not_a_number"),
    ((None, 0.1, 0.5, 0.5), "not_a_number"),
])
def test_invalid_boxes_are_rejected_with_a_reason(coords, reason):
    with pytest.raises(BoxError) as err:
        N(*coords)
    assert err.value.reason == reason


def test_unknown_image_size_is_rejected():
    for w, h in [(0, 100), (100, -1), (None, 100)]:
        with pytest.raises(BoxError) as err:
            Box.from_pixels_xyxy(1, 1, 5, 5, width=w, height=h)
        assert err.value.reason == "unknown_image_size"


# ------------------------------------------------------------------------------ geometry


def test_iou_by_hand():
    a, b = N(0.0, 0.0, 0.2, 0.2), N(0.1, 0.0, 0.3, 0.2)
    inter = 0.1 * 0.2
    assert iou(a, b) == pytest.approx(inter / (0.04 + 0.04 - inter))
    assert iou(a, b) == pytest.approx(iou(b, a))
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, N(0.2, 0.2, 0.4, 0.4)) == 0.0  # touching corners share no area


def test_union_box_encloses_all_and_keeps_a_common_size():
    boxes = [N(0.1, 0.3, 0.2, 0.4, width=100, height=50), N(0.15, 0.1, 0.5, 0.35, width=100, height=50)]
    u = union_box(boxes)
    assert u.xyxy == (0.1, 0.1, 0.5, 0.4)
    assert (u.width, u.height, u.readers) == (100, 50, None)
    assert union_box([boxes[0], N(0.6, 0.6, 0.7, 0.7)]).width is None
    with pytest.raises(ValueError):
        union_box([])


def test_crop_pixels_covers_the_box_and_stays_in_the_image():
    box = N(0.1, 0.2, 0.5, 0.75)
    assert crop_pixels(box, 1000, 800) == (100, 160, 500, 600)
    # 10% margin of the box's own size on each side
    left = math.floor((0.1 - 0.04) * 1000)
    top = math.floor((0.2 - 0.055) * 800)
    right = math.ceil((0.5 + 0.04) * 1000)
    bottom = math.ceil((0.75 + 0.055) * 800)
    assert crop_pixels(box, 1000, 800, margin=0.1) == (left, top, right, bottom)
    assert crop_pixels(N(0.0, 0.0, 1.0, 1.0), 64, 32, margin=0.5) == (0, 0, 64, 32)
    # a box thinner than a pixel still gives a one-pixel crop
    l, t, r, b = crop_pixels(N(0.5, 0.5, 0.5001, 0.5001), 100, 100)
    assert r - l >= 1 and b - t >= 1
    with pytest.raises(ValueError):
        crop_pixels(box, 0, 10)
    with pytest.raises(ValueError):
        crop_pixels(box, 10, 10, margin=-0.1)


# ------------------------------------------------------------------------------ fusion


def test_published_defaults():
    import inspect

    params = inspect.signature(fuse_readers).parameters
    assert (RADVLM_IOU_THR, RADVLM_SKIP_BOX_THR, RADVLM_DECIMALS) == (0.1, 0.0, 3)
    assert params["iou_thr"].default == RADVLM_IOU_THR
    assert params["skip_box_thr"].default == RADVLM_SKIP_BOX_THR
    assert params["decimals"].default == RADVLM_DECIMALS
    assert params["min_readers"].default == 1


def test_three_overlapping_readers_make_one_box_of_three():
    boxes = {"R1": [N(0.10, 0.10, 0.50, 0.50)], "R2": [N(0.12, 0.11, 0.52, 0.49)], "R3": [N(0.11, 0.13, 0.50, 0.52)]}
    fused = fuse_readers(boxes)
    assert len(fused) == 1 and fused[0].readers == 3
    # equal scores and weights: the fused corners are the plain mean (computed in float32 by the library)
    mean = [sum(b[0].xyxy[i] for b in boxes.values()) / 3 for i in range(4)]
    assert fused[0].xyxy == pytest.approx(mean, abs=1e-3 / 2 + 1e-6)
    assert fused[0].frame == "normalised_xyxy"


def test_two_readers_plus_a_far_box():
    boxes = {"R1": [N(0.10, 0.10, 0.40, 0.40)], "R2": [N(0.12, 0.10, 0.42, 0.40)], "R3": [N(0.70, 0.70, 0.90, 0.90)]}
    fused = fuse_readers(boxes)
    assert sorted(b.readers for b in fused) == [1, 2]
    far = next(b for b in fused if b.readers == 1)
    assert far.xyxy == (0.7, 0.7, 0.9, 0.9)
    assert [b.readers for b in fuse_readers(boxes, min_readers=2)] == [2]
    assert fuse_readers(boxes, min_readers=3) == []


def test_two_boxes_of_one_reader_count_once():
    boxes = {"R1": [N(0.10, 0.10, 0.40, 0.40), N(0.11, 0.12, 0.41, 0.40)], "R2": [N(0.10, 0.11, 0.40, 0.41)]}
    fused = fuse_readers(boxes)
    assert [b.readers for b in fused] == [2]  # three boxes, two distinct readers
    assert fuse_readers({"R1": boxes["R1"]})[0].readers == 1


def test_iou_threshold_decides_merging():
    a, b = N(0.0, 0.0, 0.3, 0.3), N(0.15, 0.0, 0.45, 0.3)
    overlap = iou(a, b)
    assert 0.1 < overlap < 0.4
    assert [x.readers for x in fuse_readers({"A": [a], "B": [b]}, iou_thr=0.1)] == [2]
    assert [x.readers for x in fuse_readers({"A": [a], "B": [b]}, iou_thr=0.4)] == [1, 1]


def test_single_reader_single_box_and_empty_inputs():
    box = N(0.123456, 0.2, 0.654321, 0.8, width=3000, height=2500)
    fused = fuse_readers({"R9": [box]})
    assert len(fused) == 1
    assert fused[0].xyxy == tuple(round(v, 3) for v in box.xyxy)
    assert (fused[0].readers, fused[0].width, fused[0].height) == (1, 3000, 2500)
    assert fuse_readers({"R9": [box]}, decimals=None)[0].xyxy == box.xyxy
    assert fuse_readers({}) == []
    assert fuse_readers({"R1": [], "R2": []}) == []
    assert fuse_readers({"R1": [], "R2": [box]})[0].readers == 1


def test_fused_corners_are_rounded_to_three_decimals():
    rng = random.Random(7)
    for _ in range(20):
        for box in fuse_readers(random_readers(rng)):
            for v in box.xyxy:
                assert Decimal(repr(v)).as_tuple().exponent >= -3


def test_image_size_is_kept_and_must_agree():
    a = N(0.1, 0.1, 0.4, 0.4, width=2000, height=2500)
    b = N(0.12, 0.1, 0.42, 0.4, width=2000, height=2500)
    fused = fuse_readers({"R1": [a], "R2": [b]})
    assert (fused[0].width, fused[0].height) == (2000, 2500)
    with pytest.raises(ValueError):
        fuse_readers({"R1": [a], "R2": [N(0.1, 0.1, 0.4, 0.4, width=1000, height=1000)]})


@pytest.mark.parametrize("kwargs", [
    {"iou_thr": 0.0}, {"iou_thr": 1.5}, {"iou_thr": "0.1"}, {"min_readers": 0}, {"min_readers": 1.5},
    {"skip_box_thr": -0.1}, {"skip_box_thr": 2.0}, {"decimals": -1}, {"decimals": 2.0},
])
def test_bad_arguments_raise_instead_of_exiting(kwargs):
    with pytest.raises(ValueError):
        fuse_readers({"R1": [N(0.1, 0.1, 0.2, 0.2)]}, **kwargs)


def test_bad_inputs_raise_instead_of_exiting():
    with pytest.raises(TypeError):
        fuse_readers({"R1": [(0.1, 0.1, 0.2, 0.2)]})
    with pytest.raises(TypeError):
        fuse_readers({"R1": N(0.1, 0.1, 0.2, 0.2)})
    with pytest.raises(TypeError):
        fuse_readers([N(0.1, 0.1, 0.2, 0.2)])
    with pytest.raises(ValueError):
        fuse_readers({1: [N(0.1, 0.1, 0.2, 0.2)], "1": [N(0.1, 0.1, 0.2, 0.2)]})


def test_fusion_does_not_depend_on_row_or_reader_order():
    for seed in range(60):
        rng = random.Random(seed)
        boxes = random_readers(rng, readers=3, centres=rng.randint(1, 3), max_boxes=5)
        for kwargs in ({}, {"iou_thr": 0.4}, {"min_readers": 2}, {"decimals": None}):
            expected = fuse_readers(boxes, **kwargs)
            for _ in range(8):
                assert fuse_readers(shuffled(boxes, rng), **kwargs) == expected


def test_fuse_table_ignores_row_order_and_equals_per_group_fusion():
    rng = random.Random(11)
    rows, groups = [], {}
    for image in range(25):
        for cls in ("Nodule/Mass", "Pleural effusion"):
            boxes = random_readers(rng, readers=3, centres=rng.randint(1, 3))
            groups[(f"img{image:02d}", cls)] = boxes
            rows.extend((f"img{image:02d}", cls, reader, b) for reader, bs in boxes.items() for b in bs)
    for kwargs in ({}, {"iou_thr": 0.4, "min_readers": 2}):
        table = fuse_table(rows, **kwargs)
        expected = {key: fuse_readers(boxes, **kwargs) for key, boxes in groups.items()
                    if any(boxes.values())}
        assert table == expected
        assert list(table) == sorted(table)
        for seed in range(10):
            again = list(rows)
            random.Random(seed).shuffle(again)
            assert fuse_table(again, **kwargs) == table


def test_readers_count_agrees_with_a_second_derivation():
    """`readers` comes from the box_and_model_avg score (k / M). Derive k again from two other
    confidence types on the same clusters: avg with overflow gives n / M (n boxes in the cluster)
    and absent_model_aware_avg gives n / (n + M - k)."""
    from ensemble_boxes import weighted_boxes_fusion

    for seed in range(40):
        rng = random.Random(1000 + seed)
        boxes = random_readers(rng, readers=rng.randint(1, 4), centres=rng.randint(1, 3), max_boxes=4)
        if not any(boxes.values()):
            continue
        readers = sorted(boxes)
        lists = [sorted(list(b.xyxy) for b in boxes[r]) for r in readers]
        scores = [[1.0] * len(x) for x in lists]
        labels = [[0] * len(x) for x in lists]
        m = len(lists)

        def run(lists, scores, labels, **kw):
            out, s, _ = weighted_boxes_fusion(lists, scores, labels, iou_thr=0.1, skip_box_thr=0.0, **kw)
            return {tuple(round(v, 3) for v in c): x for c, x in zip(out.tolist(), s.tolist())}

        sizes = {c: round(s * m)
                 for c, s in run(lists, scores, labels, conf_type="avg", allows_overflow=True).items()}
        absent = run(lists, scores, labels, conf_type="absent_model_aware_avg")
        expected = sorted((round(sizes[c] + m - sizes[c] / absent[c]), *c) for c in sizes)
        got = sorted((b.readers, *b.xyxy) for b in fuse_readers(boxes))
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert got == expected


# ------------------------------------------------------------------------------ text


def test_box_text_uses_round_two_printed_as_python_floats():
    box = N(0.125, 0.005, 0.5, 1.0)
    expected = "[" + ", ".join(repr(ref_round2(v)) for v in box.xyxy) + "]"
    assert box_text(box) == expected
    # the documented edge cases: 0.125 is an exact tie (half to even), 0.005 is stored a hair above
    assert expected == "[0.12, 0.01, 0.5, 1.0]"
    assert box_text(box, fixed=True) == "[" + ", ".join(f"{ref_round2(v):.2f}" for v in box.xyxy) + "]"
    assert box_text(box, fixed=True) == "[0.12, 0.01, 0.50, 1.00]"
    assert box_text(N(-0.0, 0.0, 0.333333, 0.666666)) == "[0.0, 0.0, 0.33, 0.67]"


def test_box_text_matches_reference_rounding_on_many_values():
    rng = random.Random(3)
    for _ in range(500):
        box = random_box(rng)
        assert box_text(box) == "[" + ", ".join(repr(ref_round2(v)) for v in box.xyxy) + "]"
    for k in range(1000):  # every 3-decimal value, as fused boxes carry
        v = k / 1000
        assert box_text(N(v, 0.0, 1.0, 1.0)).startswith("[" + repr(ref_round2(v)) + ",")


def test_boxes_text_joins_like_radvlm():
    a, b, c = N(0.1, 0.1, 0.2, 0.2), N(0.3, 0.3, 0.4, 0.4), N(0.5, 0.5, 0.6, 0.6)
    assert boxes_text([a]) == box_text(a)
    assert boxes_text([a, b]) == f"{box_text(a)} and {box_text(b)}"
    assert boxes_text([a, b, c]) == f"{box_text(a)}, {box_text(b)} and {box_text(c)}"
    assert boxes_text([a, b], fixed=True) == f"{box_text(a, fixed=True)} and {box_text(b, fixed=True)}"
    with pytest.raises(ValueError):
        boxes_text([])


def test_box_pixels_text():
    box = N(0.1, 0.2, 0.5, 0.75)
    expected = [ref_pixel(Decimal(repr(v)) * s) for v, s in zip(box.xyxy, (640, 480, 640, 480))]
    assert box_pixels_text(box, 640, 480) == "[" + ", ".join(map(str, expected)) + "]"
    with pytest.raises(ValueError):
        box_pixels_text(box, 0, 480)


# ------------------------------------------------------------------------------ parsing


def test_parse_round_trip_to_two_decimals():
    rng = random.Random(5)
    for trial in range(200):
        boxes = [random_box(rng, min_side=0.05) for _ in range(rng.randint(1, 4))]
        for fixed in (False, True):
            text = f"The findings are located at {boxes_text(boxes, fixed=fixed)} on the image."
            parsed = parse_boxes(text)
            assert [p.xyxy for p in parsed] == [tuple(ref_round2(v) for v in b.xyxy) for b in boxes]


@pytest.mark.parametrize("text", [
    "[0.12, 0.34, 0.56, 0.78]",
    "(0.12,0.34,0.56,0.78)",
    "{0.12; 0.34; 0.56; 0.78}",
    "<box>0.12 0.34 0.56 0.78</box>",
    "<box>[0.12, 0.34, 0.56, 0.78]</box>",
    "<bbox>(0.12,0.34,0.56,0.78)</bbox>",
    "x1=0.12 y1=0.34 x2=0.56 y2=0.78",
    "x_min: 0.12, y_min: 0.34, x_max: 0.56, y_max: 0.78",
    "(0.12, 0.34), (0.56, 0.78)",
    "<|box_start|>(120,340),(560,780)<|box_end|>",
    '{"bbox_2d": [.12, .34, .56, .78], "label": "nodule"}',
])
def test_parse_common_forms(text):
    parsed = parse_boxes(f"The nodule is at {text}.")
    assert len(parsed) == 1
    assert parsed[0].xyxy == pytest.approx((0.12, 0.34, 0.56, 0.78))


def test_parse_several_boxes_in_order():
    text = "Cardiomegaly at [0.3, 0.4, 0.7, 0.8]; effusion at [0.05, 0.6, 0.3, 0.9] and (0.7,0.6,0.95,0.9)."
    assert [b.xyxy for b in parse_boxes(text)] == [(0.3, 0.4, 0.7, 0.8), (0.05, 0.6, 0.3, 0.9), (0.7, 0.6, 0.95, 0.9)]
    nested = "[[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4]]"
    assert [b.xyxy for b in parse_boxes(nested)] == [(0.1, 0.1, 0.2, 0.2), (0.3, 0.3, 0.4, 0.4)]


def test_parse_pixels_need_an_image_size():
    text = "The lesion is at [108, 104, 252, 277]."
    assert parse_boxes(text) == []
    (box,) = parse_boxes(text, width=512, height=400)
    assert box.xyxy == pytest.approx((108 / 512, 104 / 400, 252 / 512, 277 / 400))
    assert (box.frame, box.width, box.height) == ("pixel_xyxy", 512, 400)


def test_parse_qwen_grid_is_per_mille():
    (box,) = parse_boxes("<|object_ref_start|>heart<|object_ref_end|><|box_start|>(250,400),(750,900)<|box_end|>",
                         width=2000, height=2000)
    assert box.xyxy == pytest.approx((0.25, 0.4, 0.75, 0.9))
    assert (box.frame, box.width) == ("grid_xyxy", 2000)


def test_parse_skips_invalid_boxes_and_non_boxes():
    text = ("inverted [0.5, 0.5, 0.4, 0.6], flat [0.1, 0.2, 0.1, 0.3], outside [0.1, 0.1, 1.5, 0.5], "
            "three numbers [0.1, 0.2, 0.3], five [0.1, 0.2, 0.3, 0.4, 0.5], words [a, b, c, d], "
            "good [0.2, 0.2, 0.3, 0.3]")
    assert [b.xyxy for b in parse_boxes(text)] == [(0.2, 0.2, 0.3, 0.3)]
    assert parse_boxes("") == []
    assert parse_boxes("No abnormality is seen.") == []
    assert parse_boxes("[2000, 10, 2500, 50]", width=1000, height=1000) == []  # outside the image


# ------------------------------------------------------------------------------ grounding metrics


def test_grounding_perfect_prediction():
    from radcorpora.reference_models.grounding_metrics import grounding_scores

    targets = [[N(0.1, 0.1, 0.4, 0.4), N(0.6, 0.6, 0.9, 0.9)], [N(0.2, 0.3, 0.5, 0.7)]]
    scores = grounding_scores(targets, targets)
    assert scores["map50"] == pytest.approx(1.0)
    assert scores["mean_iou"] == pytest.approx(1.0)
    assert (scores["precision50"], scores["recall50"]) == (1.0, 1.0)
    assert (scores["predicted"], scores["targets"], scores["true_positives"]) == (3, 3, 3)


def test_grounding_one_of_two_found():
    from radcorpora.reference_models.grounding_metrics import grounding_scores

    a, b = N(0.1, 0.1, 0.4, 0.4), N(0.6, 0.6, 0.9, 0.9)
    scores = grounding_scores([[a]], [[a, b]])
    # COCO AP: precision 1 up to recall 0.5, nothing beyond; 101 recall points 0, 0.01, ..., 1
    reached = sum(1 for i in range(101) if i / 100 <= 0.5)
    assert scores["map50"] == pytest.approx(reached / 101)
    assert (scores["precision50"], scores["recall50"]) == (1.0, 0.5)
    assert scores["mean_iou"] == pytest.approx(1.0)


def test_grounding_wrong_box_and_empty_prediction():
    from radcorpora.reference_models.grounding_metrics import grounding_scores

    target = N(0.1, 0.1, 0.4, 0.4)
    wrong = grounding_scores([[N(0.6, 0.6, 0.9, 0.9)]], [[target]])
    assert wrong["map50"] == 0.0 and wrong["mean_iou"] == 0.0
    assert (wrong["precision50"], wrong["recall50"]) == (0.0, 0.0)
    empty = grounding_scores([[]], [[target]])
    assert empty["map50"] == 0.0 and empty["recall50"] == 0.0 and empty["precision50"] == 0.0
    assert empty["matched_pairs"] == 0
    assert grounding_scores([[target]], [[]])["map50"] == -1.0


def test_grounding_mean_iou_and_threshold_by_hand():
    from radcorpora.reference_models.grounding_metrics import grounding_scores

    pred, target = N(0.0, 0.0, 0.2, 0.2), N(0.1, 0.0, 0.3, 0.2)
    expected_iou = (0.1 * 0.2) / (0.04 + 0.04 - 0.1 * 0.2)  # 1/3: below 0.5
    scores = grounding_scores([[pred]], [[target]])
    assert scores["mean_iou"] == pytest.approx(expected_iou)
    assert scores["true_positives"] == 0 and scores["map50"] == 0.0
    close = N(0.02, 0.0, 0.22, 0.2)
    inter = 0.18 * 0.2
    assert grounding_scores([[close]], [[pred]])["mean_iou"] == pytest.approx(inter / (0.08 - inter))
    assert grounding_scores([[close]], [[pred]])["recall50"] == 1.0


def test_grounding_macro_over_labels():
    from radcorpora.reference_models.grounding_metrics import grounding_scores

    a, b = N(0.1, 0.1, 0.4, 0.4), N(0.6, 0.6, 0.9, 0.9)
    scores = grounding_scores([[a], [a]], [[a], [b]], labels=["nodule", "effusion"])
    assert scores["map50"] == pytest.approx((1.0 + 0.0) / 2)
    with pytest.raises(ValueError):
        grounding_scores([[a]], [[a], [b]])


def test_matching_is_optimal():
    from radcorpora.reference_models.grounding_metrics import _hungarian_max, max_weight_matching

    rng = random.Random(2)
    for _ in range(200):
        rows, cols = rng.randint(1, 5), rng.randint(1, 5)
        w = [[rng.choice([0.0, rng.random()]) for _ in range(cols)] for _ in range(rows)]
        # brute force over all injective maps of the smaller side into the larger
        small, large = (rows, cols) if rows <= cols else (cols, rows)
        def value(i, j, w=w, wide=rows <= cols):
            return w[i][j] if wide else w[j][i]

        best = max(sum(value(i, j) for i, j in zip(range(small), perm))
                   for perm in itertools.permutations(range(large), small))
        for pairs in (_hungarian_max(w), max_weight_matching(w)):
            assert len(pairs) == min(rows, cols)
            assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
            assert sum(w[i][j] for i, j in pairs) == pytest.approx(best)


def test_torchmetrics_and_pycocotools_agree(monkeypatch):
    """torchmetrics needs torchvision only for its xyxy -> xywh conversion; where torchvision is
    missing, stand one in so the torchmetrics path can be compared with direct pycocotools."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchmetrics")
    pytest.importorskip("pycocotools")
    from torchmetrics.detection import mean_ap

    from radcorpora.reference_models.grounding_metrics import grounding_scores

    try:
        import torchvision  # noqa: F401
    except ImportError:
        def box_convert(boxes, in_fmt, out_fmt):
            assert (in_fmt, out_fmt) == ("xyxy", "xywh")
            return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)

        fake = types.ModuleType("torchvision")
        fake_ops = types.ModuleType("torchvision.ops")
        fake_ops.box_convert = box_convert
        fake.ops = fake_ops
        monkeypatch.setitem(sys.modules, "torchvision", fake)
        monkeypatch.setitem(sys.modules, "torchvision.ops", fake_ops)
        monkeypatch.setattr(mean_ap, "_TORCHVISION_AVAILABLE", True)

    rng = random.Random(9)
    for _ in range(6):
        targets, predictions, labels = [], [], []
        for _ in range(12):
            t = [random_box(rng) for _ in range(rng.randint(1, 3))]
            p = [random_box(rng, centre=((b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2), spread=0.03)
                 for b in t if rng.random() < 0.7] + [random_box(rng) for _ in range(rng.randint(0, 1))]
            targets.append(t)
            predictions.append(p)
            labels.append(rng.choice(["a", "b"]))
        ours = grounding_scores(predictions, targets, labels=labels, backend="pycocotools")
        theirs = grounding_scores(predictions, targets, labels=labels, backend="torchmetrics")
        assert theirs["map_backend"] == "torchmetrics"
        assert ours["map50"] == pytest.approx(theirs["map50"], abs=1e-6)


def test_per_reader_lists_cluster_like_radvlms_single_list():
    """RadVLM passes all readers' boxes as ONE model list; passing one list per reader (in the same
    order) gives the same fused corners, only the score changes meaning."""
    from ensemble_boxes import weighted_boxes_fusion

    for seed in range(30):
        rng = random.Random(500 + seed)
        boxes = random_readers(rng, readers=3, centres=rng.randint(1, 3))
        flat = [list(b.xyxy) for r in sorted(boxes) for b in sorted(boxes[r], key=lambda b: b.xyxy)]
        if not flat:
            continue
        out, _, _ = weighted_boxes_fusion([flat], [[1.0] * len(flat)], [[1] * len(flat)], iou_thr=0.1,
                                          skip_box_thr=0.0)
        radvlm = sorted(tuple(round(v, 3) for v in c) for c in out.tolist())
        assert sorted(b.xyxy for b in fuse_readers(boxes)) == radvlm


# ------------------------------------------------------------------------------ one box-in-text reader

# The three patterns that read box text before `find_box_text` replaced them, copied here as they
# were: the preview's, the conversation checks' bracketed four numbers, and `parse_boxes`' forms.
_OLD_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_OLD_SEP = r"(?:\s*[,;]\s*|\s+)"
_OLD_PREVIEW = re.compile(r"\[\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*\]")
_OLD_BRACKET4 = re.compile(rf"[\[\(\{{]\s*({_OLD_NUM}){_OLD_SEP}({_OLD_NUM}){_OLD_SEP}({_OLD_NUM}){_OLD_SEP}({_OLD_NUM})"
                           rf"\s*[\]\)\}}]")
TEXTS = [
    "Nodule at [0.18, 0.22, 0.36, 0.4]; effusion at [0.58, 0.55, 0.9, 0.86]; marker [0.05, 0.06, 0.15, 0.14].",
    "pixels [12, 40, 300, 420] and (0.1 0.2 0.3 0.4) and {0.1;0.2;0.3;0.4}, inverted [0.5, 0.5, 0.1, 0.1]",
    "[-.5, 1e-1, 0.3, 4.] [1e999, 0, 1, 1] <box>[0.1, 0.2, 0.3, 0.4]</box> <bbox>0.1 0.2 0.3 0.4</bbox>",
    "x1=0.1 y1=0.2 x2=0.3 y2=0.4; (0.1, 0.2), (0.3, 0.4); <|box_start|>(100,200),(300,400)<|box_end|>",
    "[0.1, 0.2, 0.3] is three numbers, [0.1, 0.2, 0.3, 0.4, 0.5] five; [ 0.10 , 0.20 , 0.50 , 0.75 ]",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_conversation_checks_brackets_are_found_as_before(text):
    old = [(m.start(), m.end(), tuple(float(v) for v in m.groups())) for m in _OLD_BRACKET4.finditer(text)]
    new = [(b.start, b.end, b.values) for b in find_box_text(text, forms=("bracket",))]
    assert new == old


@pytest.mark.parametrize("text", TEXTS)
def test_every_box_the_old_preview_pattern_saw_is_found_with_the_same_numbers(text):
    """Found where it was written, or as part of the wider form around it (`<box>[..]</box>`)."""
    found = find_box_text(text)
    for m in _OLD_PREVIEW.finditer(text):
        (covering,) = [b for b in found if b.start <= m.start() and m.end() <= b.end]
        assert covering.values == tuple(float(v) for v in m.groups())


def test_find_box_text_names_each_form_and_text_box_reads_it():
    text = TEXTS[3] + " [0.1, 0.2, 0.3, 0.4] <box>5 6 7 8</box>"
    found = find_box_text(text)
    assert [b.form for b in found] == ["kv", "pairs", "qwen", "bracket", "tag"]
    assert [text[b.start:b.end] for b in found] == [b.text for b in found]
    assert [text_box(b).xyxy if text_box(b) else None for b in found] == [
        (0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4), (0.1, 0.2, 0.3, 0.4), None]
    assert text_box(found[-1], width=10, height=10).xyxy == pytest.approx((0.5, 0.6, 0.7, 0.8))
    assert [b.values for b in find_box_text("[1e999, 0, 1, 1]")] == [(float("inf"), 0.0, 1.0, 1.0)]
    assert text_box(find_box_text("[1e999, 0, 1, 1]")[0]) is None
    assert find_box_text("") == [] and find_box_text("no box here") == []
    with pytest.raises(ValueError, match="unknown box text form"):
        find_box_text("[0.1, 0.2, 0.3, 0.4]", forms=("square",))

