"""Hostile tables for the readers tests/test_reader_fuzz.py does not poke: CheXpert, CheXpert-Plus,
MIMIC-CXR-JPG (its gzipped tables), PubMedVision, VQA-RAD and RadImageNet.

Property tests (hypothesis) take a demo source and (a) put a hostile value into a random cell of a
random row, (b) cut a table at a random byte, (c) flip random bytes, or (d) give a JSON record a
value of the wrong type. Whatever the damage, a scan either returns, with every data row accounted
for (kept or rejected with its reason), or stops with a SourceError that names the damaged file:
never another exception (a traceback for a user).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radcorpora.sources.chexpert import scan_chexpert
from radcorpora.sources.chexpert_plus import scan_chexpert_plus
from radcorpora.sources.errors import SourceError
from radcorpora.sources.mimic_cxr import scan_mimic_cxr
from radcorpora.sources.pubmedvision import scan_pubmedvision
from radcorpora.sources.radimagenet import scan_radimagenet
from radcorpora.sources.vqa_rad import read_vqa_rad_test

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
HOSTILE_CELL = st.one_of(
    st.sampled_from(["", " ", "abc", "inf", "-inf", "nan", "null", "None", "-1e400", "1e400", "[1, 2]", "{}", "true",
                     "0x1A", "1,5", "-1", "2", "-2", "0.5", "../../../etc/passwd", "/abs/path.jpg", "\\\\server\\x.jpg",
                     "a" * 3000, "Ünïcødé", "\u202etxt", "\x00", '"', "\n", "\r\n"]),
    st.text(max_size=20),
)
WRONG_TYPE = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                       st.text(max_size=10), st.lists(st.integers(0, 3), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2))


# ----------------------------------------------------------------------------- sources


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from radcorpora.demo.chexpert import write_demo_chexpert, write_demo_chexpert_plus
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.demo.pubmedvision import write_demo_pubmedvision, write_demo_vqa_rad
    from radcorpora.demo.radimagenet import write_demo_radimagenet

    root = tmp_path_factory.mktemp("table-demos")
    write_demo_chexpert(root / "chexpert")
    write_demo_chexpert_plus(root / "plus")
    write_demo_mimic_cxr(root / "mimic", root / "mimic-reports")
    write_demo_pubmedvision(root / "pmv")
    write_demo_vqa_rad(root / "vqarad")
    write_demo_radimagenet(root / "rin", images_per_class=2)
    return root


def linked_copy(source: Path, target: Path) -> Path:
    """`source` as a tree of links (images are never written); a table is replaced, never written
    through, by `rewrite`."""
    shutil.copytree(source, target, copy_function=os.symlink)
    return target


def rewrite(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def read_table(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


def write_table(path: Path, rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    rewrite(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


# reader name -> (demo folder, scan, tables a user could damage, data rows of a table as counted)
READERS: dict[str, tuple[str, Callable[[Path], object], tuple[str, ...]]] = {
    "chexpert": ("chexpert", scan_chexpert, ("CheXpert-v1.0-small/train.csv", "CheXpert-v1.0-small/valid.csv",
                                             "CheXpert-v1.0-small/test_labels.csv")),
    "chexpert-plus": ("plus", scan_chexpert_plus, ("df_chexpert_plus_240401.csv",)),
    "mimic-cxr": ("mimic", lambda root: scan_mimic_cxr(root, root.parent / "mimic-reports"),
                  ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz",
                   "patients.csv.gz")),
    "radimagenet": ("rin", scan_radimagenet, ("RadiologyAI_train.csv", "RadiologyAI_val.csv", "RadiologyAI_test.csv")),
}


def scan_or_source_error(scan: Callable[[Path], object], root: Path, damaged: Path) -> object | None:
    """The scan, or None when it stopped with a SourceError naming the damaged file (or its
    folder, for a file that can no longer be found as that kind of table)."""
    try:
        return scan(root)
    except SourceError as exc:
        assert damaged.name in str(exc) or str(damaged.parent) in str(exc), exc
        return None


def source_copy(demo: Path, reader: str, tmp: Path) -> Path:
    """The reader's demo source linked into `tmp` (MIMIC-CXR with its reports beside it)."""
    root = linked_copy(demo / READERS[reader][0], tmp / READERS[reader][0])
    if reader == "mimic-cxr":
        linked_copy(demo / "mimic-reports", tmp / "mimic-reports")
    return root


def accounted(reader: str, result: object, tables: dict[str, int]) -> None:
    """Every data row of the tables a reader's records come from is kept or rejected (with a
    reason); the other tables (splits, labels, patients) may only add rejects."""
    if reader == "chexpert":
        rows = sum(n for name, n in tables.items() if name.endswith(("train.csv", "valid.csv", "test_labels.csv")))
        assert len(result.records) + len(result.rejects) == rows
    assert all(r.reason and r.source for r in result.rejects)


@FUZZ
@given(reader=st.sampled_from(sorted(READERS)), data=st.data())
def test_a_hostile_cell_is_a_counted_reject_or_a_named_error(demo, reader, data):
    _, scan, names = READERS[reader]
    name = data.draw(st.sampled_from(names))
    with tempfile.TemporaryDirectory() as tmp:
        root = source_copy(demo, reader, Path(tmp))
        path = root / name
        if not path.exists():
            return
        rows = read_table(path)
        if len(rows) < 2:
            return
        line = data.draw(st.integers(1, len(rows) - 1))
        column = data.draw(st.integers(0, len(rows[0]) - 1))
        rows[line][column] = data.draw(HOSTILE_CELL)
        write_table(path, rows)
        tables = {n: len(read_csv_rows_safely(root / n)) for n in names if (root / n).exists()}
        result = scan_or_source_error(scan, root, path)
        if result is not None:
            accounted(reader, result, tables)


def read_csv_rows_safely(path: Path) -> list[list[str]]:
    """Data rows as Python's csv module reads them (the oracle for the row count)."""
    rows = read_table(path)
    return [r for r in rows[1:] if r]


@FUZZ
@given(reader=st.sampled_from(sorted(READERS)), data=st.data())
def test_a_cut_or_corrupted_table_is_a_named_error_or_counted_rows(demo, reader, data):
    _, scan, names = READERS[reader]
    name = data.draw(st.sampled_from(names))
    with tempfile.TemporaryDirectory() as tmp:
        root = source_copy(demo, reader, Path(tmp))
        path = root / name
        if not path.exists():
            return
        raw = bytearray(path.read_bytes())
        if data.draw(st.booleans(), label="cut"):
            raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
        else:
            for _ in range(data.draw(st.integers(1, 4))):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        rewrite(path, bytes(raw))
        result = scan_or_source_error(scan, root, path)
        if result is not None:
            assert all(r.reason and r.source for r in result.rejects)


# ----------------------------------------------------------------------------- JSON and Parquet


@FUZZ
@given(data=st.data())
def test_pubmedvision_records_of_the_wrong_shape_are_rejects(demo, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = linked_copy(demo / "pmv", Path(tmp) / "pmv")
        path = root / "PubMedVision_Alignment_VQA.json"
        records = json.loads(path.read_text())
        index = data.draw(st.integers(0, len(records) - 1))
        key = data.draw(st.sampled_from(["id", "image", "conversations", "modality", "body_part", None]))
        value = data.draw(WRONG_TYPE)
        if key is None:
            records[index] = value
        else:
            records[index][key] = value
        rewrite(path, json.dumps(records).encode())
        try:
            scan = scan_pubmedvision(root)
        except SourceError as exc:  # nothing usable left
            assert path.name in str(exc)
            return
    counts = scan.counts
    assert counts["records"] == len(records)
    assert len(scan.samples) + len(scan.rejects) + counts["not_ct_mr"] == len(records)


@FUZZ
@given(data=st.data())
def test_pubmedvision_images_outside_the_source_folder_are_not_read(demo, data):
    """A record naming an absolute path or one climbing out of the source is rejected: a
    hostile file must not make the build read (and publish) files from elsewhere on disk."""
    with tempfile.TemporaryDirectory() as tmp:
        root = linked_copy(demo / "pmv", Path(tmp) / "pmv")
        outside = Path(tmp) / "secret.jpg"
        shutil.copy(next(p for p in (demo / "pmv").rglob("*.jpg")), outside)
        path = root / "PubMedVision_Alignment_VQA.json"
        records = json.loads(path.read_text())
        index = next(i for i, r in enumerate(records) if "CT" in str(r.get("modality")) or "MR" in str(r.get("modality")))
        records[index]["image"] = [data.draw(st.sampled_from([str(outside), "../secret.jpg", "images/../../secret.jpg"]))]
        rewrite(path, json.dumps(records).encode())
        scan = scan_pubmedvision(root)
    assert not any(s.id == records[index]["id"] for s in scan.samples)
    assert any(r.row == str(index) and r.reason == "image_outside_source" for r in scan.rejects)


@FUZZ
@given(data=st.data())
def test_a_cut_or_corrupted_json_or_parquet_is_a_named_error(demo, data):
    which = data.draw(st.sampled_from(["pmv", "vqarad"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = linked_copy(demo / which, Path(tmp) / which)
        path = next(p for p in sorted(root.rglob("*")) if p.suffix in (".json", ".parquet"))
        raw = bytearray(path.read_bytes())
        if data.draw(st.booleans(), label="cut"):
            raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
        else:
            for _ in range(data.draw(st.integers(1, 6))):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        rewrite(path, bytes(raw))
        try:
            result = scan_pubmedvision(root) if which == "pmv" else read_vqa_rad_test(root)
        except SourceError as exc:
            assert path.name in str(exc), exc
            return
    rejects = result.rejects
    assert all(r.reason for r in rejects)


@FUZZ
@given(data=st.data())
def test_vqa_rad_parquet_cells_of_the_wrong_type_are_rejects(demo, data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        root = linked_copy(demo / "vqarad", Path(tmp) / "vqarad")
        path = next(root.rglob("test-*.parquet"))
        rows = pq.read_table(path).to_pylist()
        index = data.draw(st.integers(0, len(rows) - 1))
        column = data.draw(st.sampled_from(["question", "answer", "image"]))
        bad = ([None, {"bytes": None, "path": None}, {"bytes": b"", "path": "x.jpg"}] if column == "image"
               else [None, "", " ", "\n"])
        rows[index][column] = data.draw(st.sampled_from(bad))
        rewrite(path, b"")
        pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(next((demo / "vqarad").rglob("test-*.parquet")))),
                       path)
        result = read_vqa_rad_test(root)
    assert len(result.questions) + len(result.rejects) == len(rows)
    assert any(r.row == str(index) for r in result.rejects)


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/passwd", "train/patient00001/study1/../../../../x.jpg"])
def test_chexpert_and_plus_paths_outside_the_source_are_rejects(demo, tmp_path, name):
    """A path that leaves the source is never read: the row is a reject (outside the source, or
    no patient/study in it once a leading slash is dropped)."""
    reasons = {"image_outside_source", "unexpected_path"}
    root = linked_copy(demo / "chexpert", tmp_path / "chexpert")
    table = root / "CheXpert-v1.0-small" / "valid.csv"
    rows = read_table(table)
    rows[1][0] = name if name.startswith("/") else "CheXpert-v1.0-small/" + name
    write_table(table, rows)
    assert any(r.row == "2" and r.reason in reasons for r in scan_chexpert(root).rejects)
    plus = linked_copy(demo / "plus", tmp_path / "plus")
    table = plus / "df_chexpert_plus_240401.csv"
    rows = read_table(table)
    rows[1][rows[0].index("path_to_image")] = name
    write_table(table, rows)
    found = {r.reason for r in scan_chexpert_plus(plus).rejects if r.row == "2"}
    assert found & reasons and ("image_outside_source" in found) == (".." in name and "patient" in name)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm", "JPEG-lossy.dcm"]),
       data=st.data())
def test_a_cut_or_corrupted_dicom_is_a_named_dicom_error(name, data):
    """Real DICOMs from pydicom's test data, cut or with bytes flipped: converted, or a
    DicomError naming the file; never another exception."""
    from pydicom.data import get_testdata_file

    from radcorpora.sources.dicom import DicomError, read_dicom_image, read_dicom_size

    raw = bytearray(Path(get_testdata_file(name)).read_bytes())
    if data.draw(st.booleans(), label="cut"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(bytes(raw))
        for read in (read_dicom_size, lambda p: read_dicom_image(p, max_side=64)):
            try:
                read(path)
            except DicomError as exc:
                assert name in str(exc)


def test_a_name_no_file_can_have_is_a_counted_reject(demo, tmp_path):
    """Found by the fuzz test above: a split-CSV cell longer than any file name made `Path.exists`
    raise (ENAMETOOLONG); it is a `csv_row_without_file` reject like any missing image."""
    root = source_copy(demo, "radimagenet", tmp_path)
    path = root / "RadiologyAI_train.csv"
    rows = read_table(path)
    rows[1][0] = "radiology_ai/" + "a" * 4000
    write_table(path, rows)
    scan = scan_radimagenet(root)
    missing = [r for r in scan.rejects if r.reason == "csv_row_without_file"]
    assert len(missing) == 1 and missing[0].row == "2" and "a" * 100 in missing[0].detail


@pytest.mark.parametrize("cut", [152, 136])
def test_a_dicom_cut_inside_an_element_is_a_dicom_error(tmp_path, cut):
    """Found by the DICOM fuzz test: CT_small.dcm cut inside its file meta (pydicom's struct.error)
    or with a length that does not fit its VR (BytesLengthException) is a named DicomError."""
    from pydicom.data import get_testdata_file

    from radcorpora.sources.dicom import DicomError, read_dicom_image, read_dicom_size

    raw = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    if cut == 152:
        raw = raw[:cut]
    else:
        raw[cut] = 1  # the meta group length's value becomes one its VR cannot hold
    path = tmp_path / "CT_small.dcm"
    path.write_bytes(bytes(raw))
    for read in (read_dicom_size, lambda p: read_dicom_image(p, max_side=64)):
        with pytest.raises(DicomError, match="CT_small.dcm"):
            read(path)
