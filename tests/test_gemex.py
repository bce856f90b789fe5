"""GEMeX-ThinkVG (Parquet) and GEMeX (JSONL) readers, the region -> group mapping and the
anatomical aggregation. Expected values are computed here from the files (integer corners read
with the test's own pattern, divided by 224) or by hand, never from the reader's output."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radcorpora.ops.regions import RegionStep, group_steps, merge_texts
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.regions import (
    REGION_GROUPS,
    parse_region_map,
    region_group,
    region_names,
)
from radcorpora.sources.errors import SourceError
from radcorpora.sources.gemex import region_boxes_in_text, scan_gemex_jsonl, scan_gemex_thinkvg

PARQUET = "data/train-00000-of-00001.parquet"
TYPE_RANK = {"closed_ended_questions": 0, "open_ended_questions": 1, "single_choice_questions": 2,
             "multi_choice_questions": 3}
FUZZ = settings(max_examples=15, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# the test's own reading of `(name [x1, y1, x2, y2])`
REGION = re.compile(r"\(([a-z ]+) \[(\d+), (\d+), (\d+), (\d+)\]\)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    from radcorpora.demo.gemex import write_demo_gemex_jsonl, write_demo_gemex_thinkvg
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.sources.mimic_cxr import scan_mimic_cxr

    root = tmp_path_factory.mktemp("gemex-demo")
    write_demo_mimic_cxr(root / "mimic", root / "reports")
    mimic = scan_mimic_cxr(root / "mimic", root / "reports")
    counts = write_demo_gemex_thinkvg(root / "thinkvg", mimic.images, mimic.reports)
    jsonl_counts = write_demo_gemex_jsonl(root / "jsonl", mimic.images, mimic.reports)
    return {"root": root, "mimic": mimic, "counts": counts, "jsonl_counts": jsonl_counts,
            "rows": pq.read_table(root / "thinkvg" / PARQUET).to_pylist()}


def questions(scan) -> list[tuple]:
    """What a scan says, without where it read it (row numbers shift when rows are deleted)."""
    return [(i.image_id, i.subject_id, i.study_id, i.image_path,
             tuple((q.question_type, q.question, q.answer, q.reasoning, tuple((r.region, r.box.xyxy) for r in q.regions))
                   for q in i.questions)) for i in scan.records]


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# ----------------------------------------------------------------------------- ThinkVG reader


def test_thinkvg_demo_counts_boxes_and_paths(demo):
    scan = scan_gemex_thinkvg(demo["root"] / "thinkvg")
    rows, counts = demo["rows"], demo["counts"]
    assert scan.counts["rows"] == len(rows) == counts["rows"]
    assert [(r.row, r.reason) for r in scan.rejects] == [
        (str(i), "box_inverted") for i, row in enumerate(rows)
        if any(int(m[1]) > int(m[3]) or int(m[2]) > int(m[4]) for m in REGION.findall(row["thinkVG"]))]
    assert len(scan.rejects) == counts["bad_box_rows"] == 1
    assert scan.counts["images"] == counts["images"] == len({r["image_path"] for r in rows})
    assert scan.counts["questions"] == len(rows) - 1
    assert scan.reasoning_columns == {str(demo["root"] / "thinkvg" / PARQUET): "thinkVG"}
    by_key = {(q.source, q.row): (image, q) for image in scan.records for q in image.questions}
    for index, row in enumerate(rows):
        if str(index) == scan.rejects[0].row:
            continue
        image, question = by_key[(str(demo["root"] / "thinkvg" / PARQUET), str(index))]
        assert row["image_path"].startswith("/")
        assert image.image_path == row["image_path"][1:]
        group, subject, study, name = row["image_path"][1:].split("/")
        assert (image.subject_id, image.study_id, image.image_id) == (subject[1:], study[1:], name[:-4])
        assert group == subject[:3]
        assert question.answer == row["response"][len("<answer>"):-len("</answer>")]
        expected = [(m[0], tuple(int(v) / 224 for v in m[1:])) for m in REGION.findall(row["thinkVG"])]
        got = [(r.region, r.box.xyxy) for r in question.regions]
        assert [g[0] for g in got] == [e[0] for e in expected]
        for (_, a), (_, b) in zip(got, expected):
            assert a == pytest.approx(b, abs=1e-12)
        assert all(r.box.frame == "grid_xyxy" for r in question.regions)


def test_hand_written_boxes_and_box_frame(tmp_path):
    row = {"question_type": "closed_ended_questions", "image_path": "/p10/p10046166/s50051329/abc-1.jpg",
           "question": "Is the heart enlarged?", "response": "<think>x</think><answer> No. </answer>",
           "thinkVG": "<think>The heart (cardiac region [56, 112, 168, 224]) is normal; the left lung "
                      "([0, 28, 112, 196]) is clear.</think>"}
    path = write_parquet(tmp_path / "one.parquet", [row])
    scan = scan_gemex_thinkvg(path)
    (image,) = scan.records
    (question,) = image.questions
    assert (image.image_id, image.subject_id, image.study_id) == ("abc-1", "10046166", "50051329")
    assert image.image_path == "p10/p10046166/s50051329/abc-1.jpg"
    assert question.answer == "No."
    assert "<think>" not in question.reasoning
    assert [(r.region, r.box.xyxy) for r in question.regions] == [
        ("cardiac region", (0.25, 0.5, 0.75, 1.0)), ("left lung", (0.0, 0.125, 0.5, 0.875))]
    halves = scan_gemex_thinkvg(path, box_frame=448).records[0].questions[0].regions
    assert [r.box.xyxy for r in halves] == [(0.125, 0.25, 0.375, 0.5), (0.0, 0.0625, 0.25, 0.4375)]
    with pytest.raises(ValueError):
        scan_gemex_thinkvg(path, box_frame=0)


def test_reasoning_column_found_by_content_and_extra_columns_ignored(demo, tmp_path):
    rows = [{"image_id": f"id{i}", "model_trace_v2": row["thinkVG"], "score": i, **{k: v for k, v in row.items()
                                                                                    if k != "thinkVG"}}
            for i, row in enumerate(demo["rows"])]
    path = write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", rows)
    renamed = scan_gemex_thinkvg(tmp_path)
    assert renamed.reasoning_columns == {str(path): "model_trace_v2"}
    assert questions(renamed) == questions(scan_gemex_thinkvg(demo["root"] / "thinkvg"))
    no_reasoning = [{k: v for k, v in row.items() if k != "model_trace_v2"} for row in rows]
    write_parquet(path, no_reasoning)
    with pytest.raises(SourceError, match=r"columns: image_id, score, question_type, image_path, question, response\)"):
        scan_gemex_thinkvg(tmp_path)
    write_parquet(path, [{k: v for k, v in row.items() if k != "response"} for row in rows])
    with pytest.raises(SourceError, match="missing column.*response"):
        scan_gemex_thinkvg(tmp_path)
    (tmp_path / "data" / "train-00000-of-00001.parquet").write_text("not parquet")
    with pytest.raises(SourceError, match="not a readable Parquet"):
        scan_gemex_thinkvg(tmp_path)


def test_merge_order_is_type_then_row(demo):
    scan = scan_gemex_thinkvg(demo["root"] / "thinkvg")
    rows = demo["rows"]
    rejected = {int(r.row) for r in scan.rejects}
    for image in scan.records:
        mine = [i for i, row in enumerate(rows) if row["image_path"] == "/" + image.image_path and i not in rejected]
        expected = sorted(mine, key=lambda i: (TYPE_RANK[rows[i]["question_type"]], i))
        assert [int(q.row) for q in image.questions] == expected
        # the demo writes open, multi, closed, single: the order really changed
        assert [q.question_type for q in image.questions][:1] == ["closed"]
    assert any([int(q.row) for q in i.questions] != sorted(int(q.row) for q in i.questions) for i in scan.records)


# ----------------------------------------------------------------------------- JSONL reader


def test_jsonl_demo_matches_parquet_and_keeps_reports(demo):
    scan = scan_gemex_jsonl(demo["root"] / "jsonl")
    parquet = scan_gemex_thinkvg(demo["root"] / "thinkvg")
    assert scan.counts["questions"] == parquet.counts["questions"]
    assert [(Path(r.source).name, r.reason) for r in scan.rejects] == [("closed_ended_question.jsonl", "box_inverted")]
    assert questions(scan) == questions(parquet)
    reports = demo["mimic"].reports
    for image in scan.records:
        report = reports[image.study_id]
        assert image.report == " ".join(p for p in (report.findings, report.impression) if p)
    raw = (demo["root"] / "jsonl" / "closed_ended_question.jsonl").read_bytes()
    assert not raw.endswith(b"\n")  # as upstream; the last line is still read
    last = json.loads(raw.split(b"\n")[-1])
    assert any(q.question == last["question"] for i in scan.records for q in i.questions
               if i.image_path == last["image_path"])


def test_jsonl_upstream_shape(tmp_path):
    """Rows shaped like the public GEMeX sample (multi-choice answer list, choices, q_id, row_id)."""
    base = {"type": "location", "reason": "r", "image_path": "p10/p10268877/s50042142/4c3c-ca61.jpg",
            "ori_report": "The heart size is moderately enlarged.", "row_id": "row_1"}
    (tmp_path / "multi_choice_question.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {**base, "question": "Q2", "answer": ["A", "C"], "choices": ["A: x", "B: y", "C: z"], "q_id": 7,
         "visual_regions": ["trachea", "svc"], "visual_locations": [[98, 0, 131, 222], [56, 99, 152, 136]]},
        {**base, "question": "Q1", "answer": ["B"], "choices": ["A: x", "B: y"], "q_id": 3,
         "visual_regions": ["bilateral lung"], "visual_locations": [[43, 35, 212, 156]]},
    ]))
    (tmp_path / "closed_ended_question.jsonl").write_text(json.dumps(
        {**base, "question": "Q0", "answer": "No.", "q_id": 9, "visual_regions": ["cardiac region"],
         "visual_locations": [[62, 82, 152, 133]]}) + "\n\n")
    scan = scan_gemex_jsonl(tmp_path)
    assert len(scan.warnings) == 2  # open and single files missing
    (image,) = scan.records
    assert [(q.question_type, q.question, q.answer, q.q_id) for q in image.questions] == [
        ("closed", "Q0", "No.", 9), ("multi", "Q1", "B", 3), ("multi", "Q2", "A, C", 7)]
    assert image.questions[2].regions[0].box.xyxy == pytest.approx((98 / 224, 0.0, 131 / 224, 222 / 224))
    assert image.questions[2].choices == ("A: x", "B: y", "C: z")
    assert image.report == "The heart size is moderately enlarged."
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no GEMeX question files"):
        scan_gemex_jsonl(tmp_path / "empty")


def test_bad_image_paths_are_rejects(tmp_path):
    good = {"question_type": "open_ended_questions", "question": "Q", "response": "<answer>A</answer>",
            "thinkVG": "(spine [1, 2, 3, 4])"}
    paths = ["/p10/p10000001/s50000001/a.jpg", "/p11/p10000001/s50000001/b.jpg", "p10/p10000001/a.jpg",
             "/p10/p10000002/s50000009/a.jpg", None, "/p10/p10000001/s50000001/c.png"]
    scan = scan_gemex_thinkvg(write_parquet(tmp_path / "t.parquet", [{**good, "image_path": p} for p in paths]))
    assert [(r.row, r.reason) for r in scan.rejects] == [
        ("1", "bad_image_path"), ("2", "bad_image_path"), ("3", "image_path_conflict"), ("4", "bad_image_path"),
        ("5", "bad_image_path")]
    assert [i.image_id for i in scan.records] == ["a"]


# ----------------------------------------------------------------------------- fuzz


def corrupt_reasoning(text: str, how: str, junk: str) -> str | None:
    first = re.search(r"\[[^\]]*\]", text)
    if how == "none":
        return None
    if how == "empty":
        return "   "
    if how == "no_region":
        return "The lungs are clear and the heart is normal."
    if how == "junk_box":
        return text[:first.start()] + f"[{junk}]" + text[first.end():]
    if how == "huge":
        return text[:first.start()] + "[12, 30, 400000, 50]" + text[first.end():]
    if how == "overflow":
        return text[:first.start()] + "[1e400, 2, 3, 4]" + text[first.end():]
    if how == "three":
        return text[:first.start()] + "[10, 20, 30]" + text[first.end():]
    if how == "no_brackets":
        return text[:first.start()] + "10, 20, 30, 40" + text[first.end():]
    raise AssertionError(how)


HOWS = ("none", "empty", "no_region", "junk_box", "huge", "overflow", "three", "no_brackets")
JUNK = st.text(st.characters(blacklist_categories=("Nd", "Cs")), max_size=12)


def check_rejects(scan, baseline, poked: set[tuple[str, str]]) -> None:
    got = {(Path(r.source).name, r.row): r for r in scan.rejects}
    assert len(got) == len(scan.rejects), "one reject per row"
    for key in poked:
        assert key in got, f"{key} not rejected"
        assert key[0] in got[key].detail
    others = {(Path(r.source).name, r.row, r.reason) for r in scan.rejects if (Path(r.source).name, r.row) not in poked}
    assert others == {(Path(r.source).name, r.row, r.reason) for r in baseline.rejects
                      if (Path(r.source).name, r.row) not in poked}


@FUZZ
@given(data=st.data())
def test_thinkvg_bad_cells_are_rejects_and_good_rows_stay(demo, data):
    rows = demo["rows"]
    baseline = scan_gemex_thinkvg(demo["root"] / "thinkvg")
    picks = data.draw(st.lists(st.tuples(st.integers(0, len(rows) - 1), st.sampled_from(HOWS + ("path",)), JUNK),
                               min_size=1, max_size=5, unique_by=lambda p: p[0]))
    poked_rows = [dict(row) for row in rows]
    for index, how, junk in picks:
        if how == "path":
            poked_rows[index]["image_path"] = junk
        else:
            poked_rows[index]["thinkVG"] = corrupt_reasoning(rows[index]["thinkVG"], how, junk)
    name = Path(PARQUET).name
    schema = pq.read_schema(demo["root"] / "thinkvg" / PARQUET)
    with tempfile.TemporaryDirectory() as tmp:
        scan = scan_gemex_thinkvg(write_parquet(Path(tmp) / "poked" / name, poked_rows, schema))
        kept = [row for i, row in enumerate(rows) if i not in {p[0] for p in picks}]
        oracle = scan_gemex_thinkvg(write_parquet(Path(tmp) / "deleted" / name, kept, schema))
    check_rejects(scan, baseline, {(name, str(p[0])) for p in picks})
    assert questions(scan) == questions(oracle)


BAD_LOCATION = st.one_of(
    st.sampled_from(["[1, 2, 3, 4]", None, "", [1, 2, 3], [1, 2, 3, 4, 5], [300, 10, 400, 50], [50, 10, 20, 40],
                     [float("inf"), 1, 2, 3], [10**400, 1, 2, 3], ["a", "b", "c", "d"], [None, 1, 2, 3],
                     [True, 1, 2, 3], {"x1": 1}, [[1, 2, 3]]]),  # [[1, 2, 3, 4]] would be valid for a one-region row
    st.text(max_size=8),
)


@FUZZ
@given(data=st.data())
def test_jsonl_bad_locations_are_rejects_and_good_rows_stay(demo, data):
    folder = demo["root"] / "jsonl"
    baseline = scan_gemex_jsonl(folder)
    files = {p.name: p.read_text(encoding="utf-8").split("\n") for p in sorted(folder.glob("*.jsonl"))}
    picks = data.draw(st.lists(st.tuples(st.sampled_from(sorted(files)), st.integers(0, 18), BAD_LOCATION,
                                         st.booleans()), min_size=1, max_size=5, unique_by=lambda p: p[:2]))
    with tempfile.TemporaryDirectory() as tmp:
        for kind, delete in (("poked", False), ("deleted", True)):
            out = Path(tmp) / kind
            out.mkdir()
            for name, lines in files.items():
                lines = list(lines)
                for file, index, value, whole in picks:
                    if file == name:
                        row = json.loads(lines[index])
                        if whole:
                            row["visual_locations"] = value
                        else:
                            row["visual_locations"][0] = value
                        lines[index] = None if delete else json.dumps(row)
                (out / name).write_text("\n".join(line for line in lines if line is not None), encoding="utf-8")
        scan = scan_gemex_jsonl(Path(tmp) / "poked")
        oracle = scan_gemex_jsonl(Path(tmp) / "deleted")
    check_rejects(scan, baseline, {(p[0], str(p[1] + 1)) for p in picks})
    assert questions(scan) == questions(oracle)


def test_jsonl_unreadable_lines_are_rejects(demo, tmp_path):
    lines = (demo["root"] / "jsonl" / "open_ended_question.jsonl").read_text(encoding="utf-8").split("\n")
    lines[0], lines[1], lines[2] = "{not json", "[1, 2]", '{"question": "Q", "image_path": 5}'
    (tmp_path / "open_ended_question.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe")
    scan = scan_gemex_jsonl(tmp_path)
    assert [(r.row, r.reason) for r in scan.rejects] == [
        ("1", "unreadable_row"), ("2", "unreadable_row"), ("3", "bad_image_path"), (str(len(lines) + 1), "unreadable_row")]
    assert scan.counts["questions"] == len(lines) - 3


# ----------------------------------------------------------------------------- region mapping


def test_region_mapping_covers_35_names_in_four_groups():
    names = region_names()
    assert len(names) == len(set(names)) == 35
    raw = yaml.safe_load((Path(__file__).parent.parent / "radcorpora/schemas/data/cxr_region_groups.yaml").read_text())
    assert tuple(raw["groups"]) == REGION_GROUPS == ("mediastinal", "lung", "bone", "other")
    assert {n: g for g, ns in raw["regions"].items() for n in ns} == {n: region_group(n) for n in names}
    from radcorpora.sources.chest_imagenome import RGRG_REGIONS

    assert set(RGRG_REGIONS) <= set(names)
    # every region name in the public GEMeX sample files
    for name in ("bilateral lung", "cardiac region", "right lower lung zone", "bilateral hilar structures",
                 "right hemidiaphragm", "right lung", "trachea", "spine", "abdomen", "left lower lung zone",
                 "bilateral lower lung zone", "svc", "mediastinum", "left lung"):
        assert region_group(name) is not None, name
    assert region_group("  Cardiac_Region ") == "mediastinal"
    assert region_group("right-clavicle") == "bone"
    assert region_group("Abdomen") == "other"
    assert region_group("left breast") is None
    assert region_group("heart") is None  # no guessing
    with pytest.raises(ValueError, match="listed twice"):
        parse_region_map({"groups": list(REGION_GROUPS), "regions": {
            "mediastinal": ["trachea"], "lung": ["Trachea"], "bone": ["spine"], "other": ["abdomen"]}})
    with pytest.raises(ValueError, match="groups must be"):
        parse_region_map({"groups": ["lung"], "regions": {"lung": ["x"]}})


def box(x1, y1, x2, y2) -> Box:
    return Box.from_normalised(x1, y1, x2, y2)


def test_aggregation_orders_texts_and_unions_boxes():
    steps = [
        RegionStep("left lower lung zone", "Left base clear", (box(0.55, 0.6, 0.85, 0.8),)),
        RegionStep("Cardiac Region", "The heart is enlarged.", (box(0.35, 0.45, 0.7, 0.8),)),
        RegionStep("spine", "No fracture.", (box(0.47, 0.05, 0.53, 0.95),)),
        RegionStep("right upper lung zone", "Opacity in the right upper zone.", (box(0.15, 0.2, 0.45, 0.4),)),
        RegionStep("left breast", "Soft tissue.", (box(0.6, 0.5, 0.8, 0.7),)),
        RegionStep("trachea", "Trachea midline.", (box(0.47, 0.02, 0.53, 0.3),)),
        RegionStep("bilateral lung", "Lungs are hyperinflated.", (box(0.12, 0.15, 0.88, 0.85),)),
        RegionStep("right upper lung zone", "opacity in the right upper zone", ()),
    ]
    groups, rejects = group_steps(steps)
    assert [g.group for g in groups] == ["mediastinal", "lung", "bone"]
    mediastinal, lung, bone = groups
    assert mediastinal.regions == ("trachea", "cardiac region")
    assert mediastinal.text == "Trachea midline. The heart is enlarged."
    assert mediastinal.box.xyxy == (min(0.47, 0.35), min(0.02, 0.45), max(0.53, 0.7), max(0.3, 0.8))
    assert lung.regions == ("bilateral lung", "right upper lung zone", "left lower lung zone")
    assert lung.text == "Lungs are hyperinflated. Opacity in the right upper zone. Left base clear."
    assert lung.box.xyxy == (0.12, 0.15, 0.88, 0.85)
    assert len(lung.boxes) == 3
    assert bone.box.xyxy == (0.47, 0.05, 0.53, 0.95) and bone.text == "No fracture."
    assert [(r.region, r.reason) for r in rejects] == [("left breast", "region_outside_mapping")]
    assert merge_texts(["a", "", "A.", "b!"]) == "a. b!"
    only_text, _ = group_steps([RegionStep("abdomen", "No free air.")])
    assert only_text[0].box is None and only_text[0].group == "other"


def test_demo_trace_aggregates_into_groups(demo):
    """Every demo image's regions fall in the mapping but the one planted outside it."""
    scan = scan_gemex_thinkvg(demo["root"] / "thinkvg")
    outside = 0
    for image in scan.records:
        steps = [RegionStep(r.region, q.reasoning, (r.box,)) for q in image.questions for r in q.regions]
        groups, rejects = group_steps(steps)
        outside += len(rejects)
        assert {g.group for g in groups} == {"mediastinal", "lung", "bone", "other"}
        for group in groups:
            assert group.box.x1 == min(b.x1 for b in group.boxes) and group.box.y2 == max(b.y2 for b in group.boxes)
    assert outside == demo["counts"]["unknown_region_rows"] == 1


def test_region_text_forms():
    found = region_boxes_in_text("x [visual location: right lung ([0, 0, 112, 224])] and (the spine [10, 20, 30, 40])")
    assert [(r.region, r.box.xyxy) for r in found] == [("right lung", (0.0, 0.0, 0.5, 1.0)),
                                                       ("spine", (10 / 224, 20 / 224, 30 / 224, 40 / 224))]
