"""Bad numbers in the grounding readers' tables (VinDr-CXR, MS-CXR, Chest ImaGenome, PadChest-GR):
text, empty cells, `inf`, `null`, NaN, values past the float range, booleans, lists. Each bad row
is a reject with a reason and a detail naming its file, row and value; the build never crashes
and the good rows come out as they would without the bad ones.

Property tests (hypothesis) poke random bad values into random rows of a demo source and scan it;
the oracle is a scan of the same source with those rows deleted. One CLI build per reader pokes
the fixed set `abc`, ``, `inf`, `null`, `-1e400`, `nan` and reads build/rejects.jsonl.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.sources.base import NotANumber, number, pixels
from radcorpora.sources.chest_imagenome import scan_chest_imagenome
from radcorpora.sources.mimic_cxr import scan_mimic_cxr
from radcorpora.sources.ms_cxr import scan_ms_cxr
from radcorpora.sources.padchest_gr import scan_padchest_gr
from radcorpora.sources.vindr_cxr import scan_vindr_cxr

FIXED_BAD = ("abc", "", "inf", "null", "-1e400", "nan")
FUZZ = settings(max_examples=20, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# A CSV cell that is no finite number: named spellings, or any text without a decimal digit
# (float() needs one); control characters and surrogates are left to the CSV layer's own tests.
BAD_CELL = st.one_of(
    st.sampled_from(FIXED_BAD + (" ", "-inf", "Infinity", "NaN", "None", "1e400", "[1, 2]", "true", "0x1A",
                                 "1,5", "12px", "1.2.3", "--1", "e5")),
    st.text(st.characters(blacklist_categories=("Nd", "Cc", "Cs")), max_size=12),
)
# A JSON value that is no finite number (NaN and the infinities are written as NaN / Infinity
# tokens, which Python's json reads back; 10**400 overflows a float).
BAD_JSON = st.one_of(
    BAD_CELL, st.none(), st.booleans(), st.lists(st.integers(-5, 5), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400, -(10**400)]),
)


# ----------------------------------------------------------------------------- demo sources


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """Every grounding demo source, written once (read-only for the tests)."""
    from radcorpora.demo.chest_imagenome import write_demo_chest_imagenome
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.demo.ms_cxr import write_demo_ms_cxr
    from radcorpora.demo.padchest_gr import write_demo_padchest_gr
    from radcorpora.demo.vindr_cxr import write_demo_vindr_cxr

    root = tmp_path_factory.mktemp("demo-sources")
    paths = {name: root / name for name in ("vindr", "mimic", "mimic-reports", "ms", "imagenome", "padchest")}
    write_demo_vindr_cxr(paths["vindr"])
    write_demo_mimic_cxr(paths["mimic"], paths["mimic-reports"])
    mimic = scan_mimic_cxr(paths["mimic"]).images
    write_demo_ms_cxr(paths["ms"], mimic)
    write_demo_chest_imagenome(paths["imagenome"], mimic)
    write_demo_padchest_gr(paths["padchest"])
    return paths


def mimic_sizes(demo) -> dict[str, tuple[int, int]]:
    return {i.image_id: (i.width, i.height) for i in scan_mimic_cxr(demo["mimic"]).images if i.width and i.height}


def beside(source: Path, target: Path, edited: tuple[str, ...]) -> Path:
    """`target` linking to everything in `source` but the `edited` names: a folder among them
    becomes a real folder of links, a file is left for the caller to write. A changed table
    without copying the images."""
    for entry in source.iterdir():
        if entry.name not in edited:
            (target / entry.name).symlink_to(entry)
        elif entry.is_dir():
            (target / entry.name).mkdir()
            for item in entry.iterdir():
                (target / entry.name / item.name).symlink_to(item)
    return target


def read_csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def write_csv(path: Path, rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.unlink(missing_ok=True)  # never write through a link into the shared demo
    path.write_text(buffer.getvalue(), encoding="utf-8")


def write_json(path: Path, value: object) -> None:
    path.unlink(missing_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")  # NaN / Infinity as Python's json writes them


def check_rejects(scan, baseline, poked: dict[tuple[str, str], list[tuple[str, object]]], reasons: set[str],
                  stripped: bool = False) -> None:
    """Each poked (file name, row) is rejected for one of `reasons`, its detail naming the file
    and one of the poked (name, value) pairs; every other reject is the baseline's."""
    got = {(Path(r.source).name, r.row): r for r in scan.rejects}
    assert len(got) == len(scan.rejects), "one reject per row"
    for (name, row), pairs in poked.items():
        reject = got.get((name, row))
        assert reject is not None, f"{name} {row} not rejected: {pairs}"
        assert reject.reason in reasons, reject
        assert name in reject.detail, reject
        if reject.reason != "box_missing_coordinates":  # every cell emptied: no value to name
            shown = [f"{key}={repr(value.strip() if stripped else value)[:50]}" for key, value in pairs]
            assert any(s in reject.detail for s in shown), (reject.detail, shown)
    others = {(Path(r.source).name, r.row, r.reason) for r in scan.rejects if (Path(r.source).name, r.row) not in poked}
    assert others == {(Path(r.source).name, r.row, r.reason) for r in baseline.rejects
                      if (Path(r.source).name, r.row) not in poked}


def findings(scan) -> list[tuple]:
    return [(f.image.image_id, f.label, f.phrase, f.readers, tuple(b.xyxy for b in f.boxes)) for f in scan.records]


def test_number_and_pixels_refuse_every_kind_of_non_number():
    for value in (*FIXED_BAD, " ", None, True, False, [1.0], {"x": 1}, float("nan"), float("-inf"), 10**400):
        with pytest.raises(NotANumber, match="x="):
            number(value, "x")
    assert [number(v) for v in ("12", " 3.5 ", "-1e3", 7, 2.5)] == [12.0, 3.5, -1000.0, 7.0, 2.5]
    assert [pixels(v) for v in ("2544", "2544.0", 3056)] == [2544, 2544, 3056]
    for value in ("0", "-3", "2544.5", "abc"):
        with pytest.raises(NotANumber):
            pixels(value, "Rows")


# ----------------------------------------------------------------------------- VinDr-CXR


def vindr_box_rows(demo) -> list[tuple[str, int]]:
    """(table, index into its rows) of every row that carries a box."""
    rows = []
    for table in ("annotations_train.csv", "annotations_test.csv"):
        for index, row in enumerate(read_csv(demo["vindr"] / "annotations" / table)):
            if index and row[2] != "No finding" and all(row[3:7]):
                rows.append((table, index))
    return rows


def poke_vindr(demo, root: Path, pokes: list[tuple[tuple[str, int], list[int], list[str]]], delete: bool = False
               ) -> dict[tuple[str, str], list[tuple[str, object]]]:
    beside(demo["vindr"], root, ("annotations",))
    poked: dict[tuple[str, str], list[tuple[str, object]]] = {}
    tables = {t: read_csv(demo["vindr"] / "annotations" / t) for t in ("annotations_train.csv", "annotations_test.csv")}
    for (table, index), columns, values in pokes:
        row = tables[table][index]
        for column, value in zip(columns, values):
            row[3 + column] = value
            poked.setdefault((table, str(index + 1)), []).append((tables[table][0][3 + column], value))
    for table, rows in tables.items():
        gone = {int(line) - 1 for t, line in poked if t == table} if delete else set()
        write_csv(root / "annotations" / table, [r for i, r in enumerate(rows) if i not in gone])
    return poked


@st.composite
def row_pokes(draw, rows: list, columns: int, values=BAD_CELL):
    """Distinct rows, and per row a non-empty set of its coordinate columns with bad values."""
    chosen = draw(st.lists(st.sampled_from(rows), min_size=1, max_size=5, unique=True))
    pokes = []
    for row in chosen:
        cols = draw(st.lists(st.integers(0, columns - 1), min_size=1, max_size=columns, unique=True))
        pokes.append((row, cols, [draw(values) for _ in cols]))
    return pokes


@pytest.fixture(scope="module")
def vindr_baseline(demo):
    return scan_vindr_cxr(demo["vindr"]), vindr_box_rows(demo)


@FUZZ
@given(data=st.data())
def test_vindr_bad_coordinates_are_rejects_and_good_rows_stay(demo, vindr_baseline, data):
    baseline, rows = vindr_baseline
    pokes = data.draw(row_pokes(rows, 4))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "poked").mkdir()
        (Path(tmp) / "deleted").mkdir()
        poked = poke_vindr(demo, Path(tmp) / "poked", pokes)
        scan = scan_vindr_cxr(Path(tmp) / "poked")
        poke_vindr(demo, Path(tmp) / "deleted", pokes, delete=True)
        oracle = scan_vindr_cxr(Path(tmp) / "deleted")
    check_rejects(scan, baseline, poked, {"box_not_a_number", "box_missing_coordinates"}, stripped=True)
    assert findings(scan) == findings(oracle)


# ----------------------------------------------------------------------------- MS-CXR

MS_TABLE = "MS_CXR_Local_Alignment_v1.1.0.csv"
MS_NUMBERS = ("x", "y", "w", "h", "image_width", "image_height")


def poke_ms(demo, root: Path, pokes, delete: bool = False) -> dict[tuple[str, str], list[tuple[str, object]]]:
    rows = read_csv(demo["ms"] / MS_TABLE)
    at = {name: rows[0].index(name) for name in MS_NUMBERS}
    poked: dict[tuple[str, str], list[tuple[str, object]]] = {}
    for index, columns, values in pokes:
        for column, value in zip(columns, values):
            rows[index][at[MS_NUMBERS[column]]] = value
            poked.setdefault((MS_TABLE, str(index + 1)), []).append((MS_NUMBERS[column], value))
    write_csv(root / MS_TABLE, [r for i, r in enumerate(rows) if not (delete and (MS_TABLE, str(i + 1)) in poked)])
    return poked


@pytest.fixture(scope="module")
def ms_baseline(demo):
    return scan_ms_cxr(demo["ms"], demo["mimic"]), list(range(1, len(read_csv(demo["ms"] / MS_TABLE))))


@FUZZ
@given(data=st.data())
def test_ms_cxr_bad_coordinates_and_sizes_are_rejects_and_good_rows_stay(demo, ms_baseline, data):
    baseline, rows = ms_baseline
    pokes = data.draw(row_pokes(rows, len(MS_NUMBERS)))
    with tempfile.TemporaryDirectory() as tmp:
        poked = poke_ms(demo, Path(tmp), pokes)
        scan = scan_ms_cxr(Path(tmp), demo["mimic"])
        poke_ms(demo, Path(tmp), pokes, delete=True)
        oracle = scan_ms_cxr(Path(tmp), demo["mimic"])
    check_rejects(scan, baseline, poked, {"box_not_a_number", "image_size_not_a_number"})
    assert findings(scan) == findings(oracle)


# ----------------------------------------------------------------------------- Chest ImaGenome

BOX_KEYS = ("original_x1", "original_y1", "original_x2", "original_y2")


@pytest.fixture(scope="module")
def imagenome_baseline(demo):
    sizes = mimic_sizes(demo)
    baseline = scan_chest_imagenome(demo["imagenome"], demo["mimic"], sizes)
    graphs = demo["imagenome"] / "silver_dataset" / "scene_graph"
    read = sorted(f"{i.image_id}_SceneGraph.json" for i in baseline.images)
    objects = [(name, k) for name in read for k in range(len(json.loads((graphs / name).read_text())["objects"]))]
    return sizes, baseline, objects


def poke_imagenome(demo, root: Path, pokes, delete: bool = False):
    silver = root / "silver_dataset"
    silver.mkdir()
    beside(demo["imagenome"] / "silver_dataset", silver, ("scene_graph",))
    graphs: dict[str, dict] = {}
    poked: dict[tuple[str, str], list[tuple[str, object]]] = {}
    for (name, index), columns, values in pokes:
        graph = graphs.setdefault(name, json.loads((silver / "scene_graph" / name).read_text()))
        obj = graph["objects"][index]
        for column, value in zip(columns, values):
            obj[BOX_KEYS[column]] = value
            poked.setdefault((name, f"objects[{index}] {obj['bbox_name']}"), []).append((BOX_KEYS[column], value))
    for name, graph in graphs.items():
        if delete:
            gone = {int(row.split("]")[0].removeprefix("objects[")) for n, row in poked if n == name}
            graph["objects"] = [o for k, o in enumerate(graph["objects"]) if k not in gone]
        write_json(silver / "scene_graph" / name, graph)
    return poked


@FUZZ
@given(data=st.data())
def test_chest_imagenome_bad_coordinates_are_rejects_and_good_regions_stay(demo, imagenome_baseline, data):
    sizes, baseline, objects = imagenome_baseline
    pokes = data.draw(row_pokes(objects, 4, BAD_JSON))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "poked").mkdir()
        (Path(tmp) / "deleted").mkdir()
        poked = poke_imagenome(demo, Path(tmp) / "poked", pokes)
        scan = scan_chest_imagenome(Path(tmp) / "poked", demo["mimic"], sizes)
        poke_imagenome(demo, Path(tmp) / "deleted", pokes, delete=True)
        oracle = scan_chest_imagenome(Path(tmp) / "deleted", demo["mimic"], sizes)
    check_rejects(scan, baseline, poked, {"box_not_a_number"})
    assert findings(scan) == findings(oracle)


def test_chest_imagenome_bad_image_size_is_a_reject(demo):
    sizes = mimic_sizes(demo)
    first = scan_chest_imagenome(demo["imagenome"], demo["mimic"], sizes).images[0].image_id
    for bad in ((None, 208), ("abc", 208), (float("inf"), 208), (176, 0), (176, float("nan"))):
        scan = scan_chest_imagenome(demo["imagenome"], demo["mimic"], {**sizes, first: bad})
        (reject,) = [r for r in scan.rejects if r.reason == "image_size_unknown"]
        assert first in reject.detail and repr(bad[0] if bad[1] == 208 else bad[1]) in reject.detail
        assert first not in {i.image_id for i in scan.images}


# ----------------------------------------------------------------------------- PadChest-GR

REPORTS = "grounded_reports_20240819.json"


@pytest.fixture(scope="module")
def padchest_baseline(demo):
    baseline = scan_padchest_gr(demo["padchest"])
    read = {i.image_id for i in baseline.images}
    studies = json.loads((demo["padchest"] / REPORTS).read_text())
    # (study, finding, key, box) of every box a read image carries
    boxes = [(s, f, key, b) for s, study in enumerate(studies) if study["ImageID"] in read
             for f, finding in enumerate(study["findings"]) for key in ("boxes", "extra_boxes")
             for b in range(len(finding.get(key) or []))]
    return baseline, boxes


def poke_padchest(demo, root: Path, pokes, delete: bool = False):
    beside(demo["padchest"], root, (REPORTS,))
    studies = json.loads((demo["padchest"] / REPORTS).read_text())
    poked: dict[tuple[str, str], list[tuple[str, object]]] = {}
    for (s, f, key, b), columns, values in pokes:
        for column, value in zip(columns, values):
            studies[s]["findings"][f][key][b][column] = value
            poked.setdefault((REPORTS, f"[{s}] {studies[s]['ImageID']} findings[{f}]"), []).append(
                (f"{key}[{b}][{column}]", value))
    if delete:
        for s, study in enumerate(studies):
            study["findings"] = [x for f, x in enumerate(study["findings"])
                                 if (REPORTS, f"[{s}] {study['ImageID']} findings[{f}]") not in poked]
    write_json(root / REPORTS, studies)
    return poked


@FUZZ
@given(data=st.data())
def test_padchest_gr_bad_coordinates_are_rejects_and_good_sentences_stay(demo, padchest_baseline, data):
    baseline, boxes = padchest_baseline
    pokes = data.draw(row_pokes(boxes, 4, BAD_JSON))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "poked").mkdir()
        (Path(tmp) / "deleted").mkdir()
        poked = poke_padchest(demo, Path(tmp) / "poked", pokes)
        scan = scan_padchest_gr(Path(tmp) / "poked")
        poke_padchest(demo, Path(tmp) / "deleted", pokes, delete=True)
        oracle = scan_padchest_gr(Path(tmp) / "deleted")
    check_rejects(scan, baseline, poked, {"box_not_a_number"})
    assert findings(scan) == findings(oracle)
    second = lambda s: [(f.image.image_id, f.phrase, tuple(b.xyxy for b in f.boxes)) for f in s.second_reader]
    assert second(scan) == second(oracle)


# ----------------------------------------------------------------------------- through the CLI


def build(out: Path, *args: str) -> tuple[dict, list[dict]]:
    """`radcorpora build radvlm` with `args`: (manifest counts, rejects), after checking it ran
    without a traceback."""
    result = CliRunner().invoke(app, ["build", "radvlm", "--out", str(out), "--workers", "1", *args])
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 0, (result.output, result.exception)
    counts = json.loads((out / "build" / "manifest.json").read_text())["counts"]
    rejects = [json.loads(line) for line in (out / "build" / "rejects.jsonl").read_text().splitlines()]
    return counts, rejects


def assert_rejected(rejects: list[dict], poked: dict, reasons: set[str]) -> None:
    by_row = {(Path(r["source"]).name, r["row"]): r for r in rejects}
    for key in poked:
        assert key in by_row, (key, rejects)
        assert by_row[key]["reason"] in reasons and key[0] in by_row[key]["detail"], by_row[key]


def test_vindr_fixed_bad_values_through_the_cli(demo, vindr_baseline, tmp_path):
    baseline, rows = vindr_baseline
    pokes = [(row, [k % 4], [value]) for k, (row, value) in enumerate(zip(rows, FIXED_BAD))]
    (tmp_path / "src").mkdir()
    poked = poke_vindr(demo, tmp_path / "src", pokes)
    counts, rejects = build(tmp_path / "out", "--vindr-cxr", str(tmp_path / "src"), "--tasks",
                            "abnormality_grounding")
    assert_rejected(rejects, poked, {"box_not_a_number"})
    assert counts["vindr-cxr/boxes"] == baseline.counts["boxes"] - len(FIXED_BAD)
    assert counts["vindr-cxr/rejected_box_not_a_number"] == len(FIXED_BAD)


def test_ms_cxr_fixed_bad_values_through_the_cli(demo, tmp_path):
    baseline = scan_ms_cxr(demo["ms"], demo["mimic"], mimic_sizes=mimic_sizes(demo))
    pokes = [(k + 1, [k % 4], [value]) for k, value in enumerate(FIXED_BAD)]
    (tmp_path / "ms").mkdir()
    poked = poke_ms(demo, tmp_path / "ms", pokes)
    counts, rejects = build(tmp_path / "out", "--mimic-cxr", str(demo["mimic"]), "--ms-cxr", str(tmp_path / "ms"),
                            "--tasks", "phrase_grounding")
    assert_rejected(rejects, poked, {"box_not_a_number"})
    assert counts["ms-cxr/boxes"] == baseline.counts["boxes"] - len(FIXED_BAD)


def test_chest_imagenome_fixed_bad_values_through_the_cli(demo, imagenome_baseline, tmp_path):
    _, baseline, objects = imagenome_baseline
    # JSON spellings of the fixed set: text, null, and the -1e400 / NaN number tokens
    values = ["abc", "", "inf", None, "@NEG_HUGE@", float("nan")]
    rejected = {(Path(r.source).name, (r.row or "").split(" ")[0]) for r in baseline.rejects}
    good = [(name, i) for name, i in objects if (name, f"objects[{i}]") not in rejected]
    pokes = [(obj, [k % 4], [value]) for k, (obj, value) in enumerate(zip(good[1::7], values))]
    (tmp_path / "src").mkdir()
    poked = poke_imagenome(demo, tmp_path / "src", pokes)
    for graph in (tmp_path / "src" / "silver_dataset" / "scene_graph").iterdir():
        if not graph.is_symlink():
            graph.write_text(graph.read_text().replace('"@NEG_HUGE@"', "-1e400"))
    counts, rejects = build(tmp_path / "out", "--mimic-cxr", str(demo["mimic"]), "--chest-imagenome",
                            str(tmp_path / "src"), "--tasks", "anatomical_grounding")
    assert_rejected(rejects, poked, {"box_not_a_number"})
    assert counts["chest-imagenome/regions"] == baseline.counts["regions"] - len(values)


def test_padchest_gr_fixed_bad_values_through_the_cli(demo, padchest_baseline, tmp_path):
    baseline, boxes = padchest_baseline
    sentences = list(dict.fromkeys((s, f) for s, f, _, _ in boxes))  # one poke per sentence
    first_box = {(s, f): (s, f, key, b) for s, f, key, b in reversed(boxes)}
    values = ["abc", "", "inf", None, "@NEG_HUGE@", float("nan")]
    pokes = [(first_box[sentence], [k % 4], [value]) for k, (sentence, value) in enumerate(zip(sentences, values))]
    assert len(pokes) == len(values)
    (tmp_path / "src").mkdir()
    poked = poke_padchest(demo, tmp_path / "src", pokes)
    report = tmp_path / "src" / REPORTS
    report.write_text(report.read_text().replace('"@NEG_HUGE@"', "-1e400"))
    counts, rejects = build(tmp_path / "out", "--padchest-gr", str(tmp_path / "src"), "--tasks", "phrase_grounding")
    assert_rejected(rejects, poked, {"box_not_a_number"})
    assert counts["padchest-gr/sentences"] == baseline.counts["sentences"] - len(values)
