"""MIMIC-CXR-JPG, CheXpert and CheXpert-Plus readers on hand-written upstream-shaped fixtures and on
the demo sources. Expected values come from the fixtures as written here, never from the reader."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radcorpora.schemas.cxr import CHEXPERT_LABELS
from radcorpora.sources.chexpert import scan_chexpert
from radcorpora.sources.chexpert_plus import scan_chexpert_plus
from radcorpora.sources.errors import SourceError
from radcorpora.sources.mimic_cxr import findings_and_impression, scan_mimic_cxr, view_position

STATE = {"1.0": "positive", "0.0": "negative", "-1.0": "uncertain", "": "not_mentioned"}


def write_csv(path: Path, header, rows, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
            handle.write(text.getvalue())
    else:
        path.write_text(text.getvalue(), encoding="utf-8")
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 not decoded by the reader")
    return path


# --- MIMIC-CXR ------------------------------------------------------------------------------------

METADATA = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
            "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
            "PatientOrientationCodeSequence_CodeMeaning")
D1 = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
D2 = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"
D3 = "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"
GHOST = "aaaaaaaa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee"  # listed, never written
ORPHAN = "11111111-22222222-33333333-44444444-55555555"  # written, no split row
LABELS_ALPHA = sorted(CHEXPERT_LABELS)
# study 50414267 labels in the alphabetical MIMIC column order
S1_VALUES = {"Atelectasis": "", "Cardiomegaly": "1.0", "Consolidation": "", "Edema": "-1.0",
             "Enlarged Cardiomediastinum": "", "Fracture": "", "Lung Lesion": "", "Lung Opacity": "0.0",
             "No Finding": "", "Pleural Effusion": "1.0", "Pleural Other": "", "Pneumonia": "-1.0",
             "Pneumothorax": "0.0", "Support Devices": ""}

REPORT_FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with new onset ascites  // eval for infection
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  None.
 
 FINDINGS:
 
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.
 
 IMPRESSION:
 
 No acute cardiopulmonary process.
"""
REPORT_IMPRESSION_ONLY = """                                 FINAL REPORT
 INDICATION:  Intubated patient, assess tube position.
 
 COMPARISON:  Chest radiograph from ___.
 
 IMPRESSION:  Endotracheal tube terminates 4 cm above the carina.  Unchanged
 mild pulmonary edema.
"""


def mimic_fixture(root: Path, gz: bool = True, reports: bool = True) -> Path:
    files = root / "files"
    for subject, study, dicom in (("10000032", "50414267", D1), ("10000032", "50414267", D2),
                                  ("10000764", "57375967", D3), ("10000032", "50414267", ORPHAN)):
        touch(files / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", METADATA, [
        (D1, 10000032, 50414267, "CHEST (PA AND LAT)", "PA", 3056, 2544, 21800506, 213014.531,
         "CHEST (PA AND LAT)", "postero-anterior", "Erect"),  # line 2
        (D2, 10000032, 50414267, "CHEST (PA AND LAT)", "LATERAL", 3056, 2544, 21800506, 213014.531,
         "CHEST (PA AND LAT)", "lateral", "Erect"),  # line 3
        (GHOST, 10000032, 50414267, "CHEST (PA AND LAT)", "PA", 3056, 2544, 21800506, 213014.531,
         "CHEST (PA AND LAT)", "postero-anterior", "Erect"),  # line 4: jpg missing
        (D3, 10000764, 57375967, "CHEST (PORTABLE AP)", "AP", 2705, 2539, 21800723, 80556.875,
         "CHEST (PORTABLE AP)", "antero-posterior", ""),  # line 5
        (ORPHAN, 10000032, 50414267, "CHEST (PA AND LAT)", "", 2000, 1800, 21800506, 213014.531,
         "CHEST (PA AND LAT)", "", ""),  # line 6: no split row
    ], gz)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "study_id", "subject_id", "split"), [
        (D1, 50414267, 10000032, "train"), (D2, 50414267, 10000032, "train"), (GHOST, 50414267, 10000032, "train"),
        (D3, 57375967, 10000764, "validate")], gz)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ("subject_id", "study_id", *LABELS_ALPHA), [
        (10000032, 50414267, *(S1_VALUES[label] for label in LABELS_ALPHA))], gz)
    if reports:
        report_dir = root / "reports" / "files" / "p10"
        (report_dir / "p10000032").mkdir(parents=True)
        (report_dir / "p10000032" / "s50414267.txt").write_text(REPORT_FULL)
        (report_dir / "p10000764").mkdir(parents=True)
        (report_dir / "p10000764" / "s57375967.txt").write_text(REPORT_IMPRESSION_ONLY)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_mimic_images_splits_labels_and_rejects(tmp_path, gz):
    root = mimic_fixture(tmp_path / "mimic", gz=gz)
    scan = scan_mimic_cxr(root, root / "reports")
    by_id = {i.image_id: i for i in scan.images}
    assert [i.image_id for i in scan.images] == [D1, D2, D3]  # sorted by subject, study, dicom
    assert by_id[D1].view == "PA" and by_id[D2].view == "LATERAL" and by_id[D3].view == "AP"
    assert (by_id[D1].width, by_id[D1].height) == (2544, 3056) and (by_id[D3].width, by_id[D3].height) == (2539, 2705)
    assert by_id[D1].split == "train" and by_id[D3].split == "validation"
    assert by_id[D1].path == str(root / "files/p10/p10000032/s50414267" / f"{D1}.jpg")
    assert by_id[D3].study_id == "57375967" and by_id[D3].subject_id == "10000764"
    assert all(i.licence_class == "credentialed" and i.sex == "unknown" for i in scan.images)
    metadata_name = "mimic-cxr-2.0.0-metadata.csv" + (".gz" if gz else "")
    found = {(r.reason, Path(r.source).name, r.row) for r in scan.rejects}
    assert found == {("image_file_missing", metadata_name, "4"), ("no_split", metadata_name, "6")}
    assert GHOST in next(r.detail for r in scan.rejects if r.reason == "image_file_missing")
    assert set(scan.labels) == {"50414267"}
    assert scan.labels["50414267"] == {label: STATE[S1_VALUES[label]] for label in CHEXPERT_LABELS}
    assert list(scan.labels["50414267"]) == list(CHEXPERT_LABELS)
    assert scan.counts["studies_without_labels"] == 1


def test_mimic_reports_from_tree_zip_and_files_folder(tmp_path):
    root = mimic_fixture(tmp_path / "mimic")
    expected = {
        "50414267": (("There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
                      "opacities that most likely represent nipple shadows. The cardiomediastinal silhouette is "
                      "normal."), "No acute cardiopulmonary process."),
        "57375967": (None, "Endotracheal tube terminates 4 cm above the carina. Unchanged mild pulmonary edema."),
    }
    archive = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("files/p10/p10000032/s50414267.txt", REPORT_FULL)
        zf.writestr("files/p10/p10000764/s57375967.txt", REPORT_IMPRESSION_ONLY)
    for reports_root in (root / "reports", root / "reports" / "files", archive, tmp_path):
        scan = scan_mimic_cxr(root, reports_root)
        assert {k: (r.findings, r.impression) for k, r in scan.reports.items()} == expected, reports_root
        assert scan.reports["57375967"].subject_id == "10000764"
    # reports unpacked beside the images need no reports_root
    (root / "files/p10/p10000032/s50414267.txt").write_text(REPORT_FULL)
    assert set(scan_mimic_cxr(root).reports) == {"50414267"}
    assert scan_mimic_cxr(mimic_fixture(tmp_path / "plain", reports=False)).reports == {}
    with pytest.raises(SourceError, match="no MIMIC-CXR reports"):
        scan_mimic_cxr(root, root / "files" / "p10" / "p10000032" / "s50414267")


def test_mimic_missing_column_names_the_file(tmp_path):
    root = mimic_fixture(tmp_path / "mimic")
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "study_id", "subject_id"), [(D1, 1, 2)], gz=True)
    with pytest.raises(SourceError, match=r"mimic-cxr-2\.0\.0-split\.csv\.gz.*split"):
        scan_mimic_cxr(root)
    os.remove(root / "mimic-cxr-2.0.0-split.csv.gz")
    with pytest.raises(SourceError, match="split table"):
        scan_mimic_cxr(root)


def test_mimic_bad_label_value_rejected_with_line_and_sex_from_patients(tmp_path):
    root = mimic_fixture(tmp_path / "mimic")
    bad = dict(S1_VALUES, Edema="2.0")
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ("subject_id", "study_id", *LABELS_ALPHA), [
        (10000764, 57375967, *([""] * 14)), (10000032, 50414267, *(bad[label] for label in LABELS_ALPHA))], gz=True)
    write_csv(root / "patients.csv", ("subject_id", "gender", "anchor_age"), [(10000032, "F", 52), (10000764, "M", 76)],
              gz=True)
    scan = scan_mimic_cxr(root)
    assert [(r.reason, r.row) for r in scan.rejects if r.reason == "bad_label_value"] == [("bad_label_value", "3")]
    assert "Edema" in next(r.detail for r in scan.rejects if r.reason == "bad_label_value")
    assert scan.labels == {"57375967": dict.fromkeys(CHEXPERT_LABELS, "not_mentioned")}
    assert {i.image_id: i.sex for i in scan.images} == {D1: "F", D2: "F", D3: "M"}


def test_view_position_normalised():
    assert [view_position(v) for v in ("PA", "AP", "LATERAL", "LL", "AP AXIAL", "LAO", "XTABLE LATERAL", None)] == [
        "PA", "AP", "LATERAL", "LL", "OTHER", "OTHER", "LATERAL", "UNKNOWN"]


# --- report sections (official header rule) ------------------------------------------------------

def test_sections_last_impression_and_findings_and_impression_header():
    two_impressions = (" FINAL REPORT\n IMPRESSION:  Preliminary read of a left effusion.\n \n"
                       " FINDINGS:  Left effusion, small.\n \n IMPRESSION:  Small left pleural effusion.\n")
    assert findings_and_impression(two_impressions) == ("Left effusion, small.", "Small left pleural effusion.")
    combined = (" FINAL REPORT\n INDICATION:  Fever.\n \n FINDINGS AND IMPRESSION:\n \n Right lower lobe"
                " pneumonia.\n No effusion.\n")
    assert findings_and_impression(combined) == (None, "Right lower lobe pneumonia. No effusion.")
    slash = " FINAL REPORT\n FINDINGS/IMPRESSION:  Clear lungs.\n"
    assert findings_and_impression(slash) == (None, "Clear lungs.")
    conclusion = " FINAL REPORT\n FINDINGS:  Mild cardiomegaly.\n \n CONCLUSION:  Cardiomegaly, stable since ___.\n"
    assert findings_and_impression(conclusion) == ("Mild cardiomegaly.", "Cardiomegaly, stable since ___.")


def test_sections_addendum_empty_headers_and_no_header():
    addendum_first = """                                 FINAL REPORT
 ADDENDUM:
 IMPRESSION:  Wrong side was dictated, see below.
 
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)
 
 FINDINGS:
 
 Right PICC tip in the mid SVC.  Lungs are clear.
 
 IMPRESSION:
 
 Right PICC ends in the mid SVC, as discussed with Dr. ___ at ___.
"""
    assert findings_and_impression(addendum_first) == (
        "Right PICC tip in the mid SVC. Lungs are clear.",
        "Right PICC ends in the mid SVC, as discussed with Dr. ___ at ___.")
    addendum_last = (" FINAL REPORT\n FINDINGS:  Lungs clear.\n \n IMPRESSION:  Normal chest.\n \n"
                     " ADDENDUM:  Results called to the floor.\n")
    assert findings_and_impression(addendum_last) == ("Lungs clear.", "Normal chest.")
    # an empty study-description header ("CHEST, PA AND LATERAL:") counts as findings and is dropped
    empty_title = (" FINAL REPORT\n CHEST, PA AND LATERAL:\n \n INDICATION:  Cough.\n \n FINDINGS:  No effusion.\n"
                   " \n IMPRESSION:\n \n")
    assert findings_and_impression(empty_title) == ("No effusion.", None)
    assert findings_and_impression("Lungs are clear.\nno header at all") == (None, None)
    # a header is upper case and starts a line (newline, space); mid-line or mixed case is text
    assert findings_and_impression(" FINAL REPORT\n Impression: mixed case\n see IMPRESSION: inline\n") == (None, None)


# --- CheXpert ------------------------------------------------------------------------------------

CHEXPERT_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
ROW_LABELS = {"No Finding": "", "Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"}


def labels_cells(values: dict[str, str]) -> list[str]:
    return [values.get(label, "") for label in CHEXPERT_LABELS]


@pytest.mark.parametrize("folder", ["CheXpert-v1.0-small", "CheXpert-v1.0"])
@pytest.mark.parametrize("point_at_folder", [False, True])
def test_chexpert_prefixes_views_sex_labels_and_missing_file(tmp_path, folder, point_at_folder):
    dataset = tmp_path / folder
    for rel in ("train/patient00001/study1/view1_frontal.jpg", "train/patient00002/study1/view2_lateral.jpg",
                "train/patient00002/study1/view1_frontal.jpg", "valid/patient64541/study1/view1_frontal.jpg"):
        touch(dataset / rel)
    write_csv(dataset / "train.csv", CHEXPERT_HEADER, [
        (f"{folder}/train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP",
         *labels_cells(ROW_LABELS)),  # line 2
        (f"{folder}/train/patient00002/study1/view2_lateral.jpg", "Male", 83, "Lateral", "",
         *labels_cells({"Lung Opacity": "1.0"})),  # line 3
        (f"{folder}/train/patient00003/study1/view1_frontal.jpg", "Male", 40, "Frontal", "PA",
         *labels_cells({})),  # line 4: no such file
        ("train/patient00002/study1/view1_frontal.jpg", "Unknown", 0, "Frontal", "PA",
         *labels_cells({"No Finding": "1.0"})),  # line 5: path without the folder prefix
    ])
    write_csv(dataset / "valid.csv", CHEXPERT_HEADER, [
        (f"{folder}/valid/patient64541/study1/view1_frontal.jpg", "Female", 55, "Frontal", "PA",
         *labels_cells({"Cardiomegaly": "0.0", "Support Devices": "1.0"}))])
    scan = scan_chexpert(dataset if point_at_folder else tmp_path)
    by_id = {i.image_id: i for i in scan.images}
    first = by_id["train/patient00001/study1/view1_frontal.jpg"]
    assert (first.subject_id, first.study_id, first.view, first.sex, first.split) == (
        "patient00001", "patient00001/study1", "AP", "F", "train")
    assert first.path == str(dataset / "train/patient00001/study1/view1_frontal.jpg")
    lateral = by_id["train/patient00002/study1/view2_lateral.jpg"]
    assert (lateral.view, lateral.sex, lateral.frontal) == ("LATERAL", "M", False)
    assert by_id["train/patient00002/study1/view1_frontal.jpg"].sex == "unknown"
    assert by_id["valid/patient64541/study1/view1_frontal.jpg"].split == "validation"
    assert scan.labels["train/patient00001/study1/view1_frontal.jpg"] == {
        label: STATE[ROW_LABELS.get(label, "")] for label in CHEXPERT_LABELS}
    assert [(r.reason, Path(r.source).name, r.row) for r in scan.rejects] == [("image_file_missing", "train.csv", "4")]
    assert [i.image_id for i in scan.images] == sorted(by_id, key=lambda p: (p.split("/")[1], p.split("/")[2], p))


def test_chexpert_test_labels_and_missing_column(tmp_path):
    dataset = tmp_path / "CheXpert-v1.0-small"
    touch(dataset / "train/patient00001/study1/view1_frontal.jpg")
    touch(dataset / "test/patient64741/study1/view1_frontal.jpg")
    touch(dataset / "test/patient64741/study1/view2_lateral.jpg")
    write_csv(dataset / "train.csv", CHEXPERT_HEADER, [
        ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Male", 30, "Frontal", "AP",
         *labels_cells({}))])
    write_csv(dataset / "test_labels.csv", ("Path", *CHEXPERT_LABELS), [
        ("test/patient64741/study1/view1_frontal.jpg", *labels_cells({"Atelectasis": "1.0"})),
        ("test/patient64741/study1/view2_lateral.jpg", *labels_cells({}))])
    scan = scan_chexpert(tmp_path)
    tests = {i.image_id: i for i in scan.images if i.split == "test"}
    assert set(tests) == {"test/patient64741/study1/view1_frontal.jpg", "test/patient64741/study1/view2_lateral.jpg"}
    # no view columns: the file name says frontal (projection unstated) or lateral
    assert tests["test/patient64741/study1/view1_frontal.jpg"].view == "FRONTAL"
    assert tests["test/patient64741/study1/view1_frontal.jpg"].frontal
    assert tests["test/patient64741/study1/view2_lateral.jpg"].view == "LATERAL"
    assert not tests["test/patient64741/study1/view2_lateral.jpg"].frontal
    assert scan.counts["images_view_unknown"] == 0
    assert scan.labels["test/patient64741/study1/view1_frontal.jpg"]["Atelectasis"] == "positive"
    write_csv(dataset / "valid.csv", ("Path", "Sex", "Age", "Frontal/Lateral", *CHEXPERT_LABELS), [])
    with pytest.raises(SourceError, match=r"valid\.csv.*AP/PA"):
        scan_chexpert(tmp_path)
    with pytest.raises(SourceError, match="no CheXpert train.csv"):
        scan_chexpert(tmp_path / "CheXpert-v1.0-small" / "train")


def test_chexpert_view_columns_first_then_the_file_name(tmp_path):
    dataset = tmp_path / "CheXpert-v1.0-small"
    cases = [  # (file, Frontal/Lateral, AP/PA, view)
        ("patient00001/study1/view1_frontal.jpg", "Frontal", "PA", "PA"),
        ("patient00001/study1/view2_frontal.jpg", "Frontal", "", "FRONTAL"),  # projection unstated
        ("patient00001/study1/view3_lateral.jpg", "Lateral", "", "LATERAL"),
        ("patient00002/study1/view1_frontal.jpg", "", "", "FRONTAL"),  # no column says it
        ("patient00002/study1/view2_lateral.jpg", "", "", "LATERAL"),
        ("patient00002/study1/view3_frontal.jpg", "", "AP", "AP"),
        ("patient00003/study1/view1_frontal.jpg", "Lateral", "", "LATERAL"),  # the column wins
        ("patient00003/study1/view2_frontal.jpg", "Frontal", "RL", "OTHER"),
        ("patient00003/study1/image.jpg", "", "", "UNKNOWN"),
    ]
    for rel, *_ in cases:
        touch(dataset / "train" / rel)
    write_csv(dataset / "train.csv", CHEXPERT_HEADER, [
        (f"CheXpert-v1.0-small/train/{rel}", "Female", 50, kind, projection, *labels_cells({}))
        for rel, kind, projection, _ in cases])
    scan = scan_chexpert(tmp_path)
    views = {i.image_id.removeprefix("train/"): (i.view, i.frontal) for i in scan.images}
    assert views == {rel: (view, view in ("PA", "AP", "FRONTAL")) for rel, _, _, view in cases}
    assert scan.counts["images_view_unknown"] == 1


def test_chexpert_test_images_without_view_columns_are_classified(tmp_path):
    """The demo's test_labels.csv has no view columns (as CheXlocalize's): its frontal images
    become test rows of abnormality_classification."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from radcorpora.cli import app
    from radcorpora.demo.chexpert import write_demo_chexpert

    write_demo_chexpert(tmp_path / "chexpert")
    test_csv = tmp_path / "chexpert" / "CheXpert-v1.0-small" / "test_labels.csv"
    with open(test_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert "Frontal/Lateral" not in rows[0] and "AP/PA" not in rows[0]
    frontal = {r["Path"] for r in rows if r["Path"].endswith("_frontal.jpg")}
    assert frontal and len(frontal) < len(rows)  # laterals too
    result = CliRunner().invoke(app, ["build", "radvlm", "--out", str(tmp_path / "out"), "--workers", "1",
                                      "--chexpert", str(tmp_path / "chexpert"),
                                      "--tasks", "abnormality_classification"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    shards = sorted((tmp_path / "out" / "data" / "abnormality_classification").glob("test-*.parquet"))
    table = pq.read_table(shards, columns=["view", "lineage"]).to_pylist()
    assert {r["lineage"]["source_id"] for r in table} == frontal
    assert {r["view"] for r in table} == {"FRONTAL"}


# --- CheXpert-Plus -------------------------------------------------------------------------------

PLUS_HEADER = ("path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id",
               "patient_report_date_order", "report", "section_narrative", "section_clinical_history",
               "section_history", "section_comparison", "section_technique", "section_procedure_comments",
               "section_findings", "section_impression", "section_end_of_impression", "section_summary",
               "section_accession_number", "age", "sex", "race", "ethnicity", "interpreter_needed",
               "insurance_type", "recent_bmi", "deceased", "split")


def plus_row(path: str, findings: str, impression: str, end: str, split: str = "train", view=("Frontal", "AP"),
             sex: str = "Female") -> list[str]:
    values = dict.fromkeys(PLUS_HEADER, "")
    values.update(path_to_image=path, path_to_dcm=path[:-4] + ".dcm", frontal_lateral=view[0], ap_pa=view[1],
                  report=f"NARRATIVE:\nCHEST.\n\nIMPRESSION:\n{impression}", section_findings=findings,
                  section_impression=impression, section_end_of_impression=end, sex=sex, age="62.0", split=split)
    return [values[c] for c in PLUS_HEADER]


def plus_fixture(root: Path, png: bool) -> Path:
    images = ("train/patient42142/study5/view1_frontal.jpg", "train/patient42142/study5/view2_lateral.jpg",
              "valid/patient64541/study1/view1_frontal.jpg")
    for rel in images:
        touch(root / "PNG" / Path(rel).with_suffix(".png") if png else root / rel)
    write_csv(root / "df_chexpert_plus_240401.csv", PLUS_HEADER, [
        plus_row(images[0], "1.TRACHEOSTOMY TUBE REMAINS\nIN PLACE.", "", ""),  # line 2
        plus_row(images[1], "", "", "2-ABNORMAL, PREVIOUSLY REPORTED", view=("Lateral", ""), sex="Male"),
        plus_row(images[2], "", "  NO ACUTE DISEASE. ", "1-NORMAL", split="valid", view=("Frontal", "")),
        plus_row("train/patient00009/study1/view1_frontal.jpg", "X", "Y", "", ),  # image missing
        plus_row("valid/patient64542/study1/view1_frontal.jpg", "", "", "", split="valid", view=("", "")),
    ])
    touch(root / ("PNG/valid/patient64542/study1/view1_frontal.png" if png else
                  "valid/patient64542/study1/view1_frontal.jpg"))
    lines = [json.dumps({"path_to_image": images[0], **dict.fromkeys(CHEXPERT_LABELS, None),
                         "Support Devices": 1.0, "Edema": -1.0, "Cardiomegaly": 0.0}),
             "{not json",
             json.dumps({"path_to_image": images[2], **dict.fromkeys(CHEXPERT_LABELS, 0.0), "No Finding": 1.0})]
    (root / "chexbert_labels").mkdir(parents=True)
    (root / "chexbert_labels" / "report_fixed.json").write_text("\n".join(lines) + "\n")
    (root / "chexbert_labels" / "impression_fixed.json").write_text(lines[2] + "\n")
    return root


@pytest.mark.parametrize("png", [False, True])
def test_chexpert_plus_images_reports_labels(tmp_path, png):
    root = plus_fixture(tmp_path / "plus", png)
    scan = scan_chexpert_plus(root)
    a, b, c = ("train/patient42142/study5/view1_frontal.jpg", "train/patient42142/study5/view2_lateral.jpg",
               "valid/patient64541/study1/view1_frontal.jpg")
    by_id = {i.image_id: i for i in scan.images}
    assert set(by_id) == {a, b, c, "valid/patient64542/study1/view1_frontal.jpg"}
    suffix = ".png" if png else ".jpg"
    assert by_id[a].path == str(root / ("PNG/" + a[:-4] + ".png" if png else a)) and by_id[a].path.endswith(suffix)
    assert (by_id[a].view, by_id[a].sex, by_id[a].split, by_id[a].subject_id, by_id[a].study_id) == (
        "AP", "F", "train", "patient42142", "patient42142/study5")
    assert (by_id[b].view, by_id[b].sex, by_id[c].split) == ("LATERAL", "M", "validation")
    assert (by_id[c].view, by_id[c].frontal) == ("FRONTAL", True)  # Frontal, ap_pa empty
    assert by_id["valid/patient64542/study1/view1_frontal.jpg"].view == "FRONTAL"  # no view cells: the file name
    assert (scan.reports[a].findings, scan.reports[a].impression) == ("1.TRACHEOSTOMY TUBE REMAINS IN PLACE.", None)
    assert (scan.reports[b].findings, scan.reports[b].impression) == (None, "2-ABNORMAL, PREVIOUSLY REPORTED")
    assert (scan.reports[c].findings, scan.reports[c].impression) == (None, "NO ACUTE DISEASE.")
    assert "valid/patient64542/study1/view1_frontal.jpg" not in scan.reports
    assert scan.counts["images_without_report_text"] == 1 and scan.counts["reports_from_end_of_impression"] == 1
    expected_a = dict.fromkeys(CHEXPERT_LABELS, "not_mentioned")
    expected_a.update({"Support Devices": "positive", "Edema": "uncertain", "Cardiomegaly": "negative"})
    assert scan.labels[a] == expected_a
    assert scan.labels[c] == {label: "positive" if label == "No Finding" else "negative" for label in CHEXPERT_LABELS}
    rejects = sorted((r.reason, Path(r.source).name, r.row) for r in scan.rejects)
    assert rejects == [("bad_json_line", "report_fixed.json", "2"),
                       ("image_file_missing", "df_chexpert_plus_240401.csv", "5")]
    other = scan_chexpert_plus(root, label_file="impression_fixed")
    assert set(other.labels) == {c}
    missing = scan_chexpert_plus(root, label_file="findings_fixed")
    assert missing.labels == {} and any("findings_fixed.json" in w for w in missing.warnings)


def test_chexpert_plus_missing_column_and_table(tmp_path):
    root = tmp_path / "plus"
    write_csv(root / "df_chexpert_plus_240401.csv", [c for c in PLUS_HEADER if c != "section_impression"], [])
    with pytest.raises(SourceError, match=r"df_chexpert_plus_240401\.csv.*section_impression"):
        scan_chexpert_plus(root)
    with pytest.raises(SourceError, match="no CheXpert-Plus table"):
        scan_chexpert_plus(tmp_path)


# --- demo sources --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
    from radcorpora.demo.chexpert import write_demo_chexpert, write_demo_chexpert_plus
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr

    base = tmp_path_factory.mktemp("cxr-demo")
    counts = {"mimic": write_demo_mimic_cxr(base / "mimic", base / "mimic-reports"),
              "chexpert": write_demo_chexpert(base / "chexpert"),
              "plus": write_demo_chexpert_plus(base / "plus")}
    return base, counts


def read_gz_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def region_mean(path: str, box) -> float:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    h, w = pixels.shape
    x1, y1, x2, y2 = box
    inner = pixels[int(y1 * h) + 2:int(y2 * h) - 2, int(x1 * w) + 2:int(x2 * w) - 2]
    return float(inner.mean())


def test_demo_mimic_matches_its_files(demo_dirs):
    base, counts = demo_dirs
    root = base / "mimic"
    metadata = read_gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    splits = {r["dicom_id"]: r["split"] for r in read_gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz")}
    label_rows = read_gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert list(metadata[0]) == list(METADATA)
    assert list(label_rows[0]) == ["subject_id", "study_id", *LABELS_ALPHA]
    on_disk = {r["dicom_id"] for r in metadata if (root / "files" / f"p{r['subject_id'][:2]}" / f"p{r['subject_id']}"
                                                   / f"s{r['study_id']}" / f"{r['dicom_id']}.jpg").exists()}
    usable = {d for d in on_disk if d in splits}
    assert len(metadata) - len(usable) == 2 == counts["mimic"]["missing_jpg_rows"] + counts["mimic"]["images_without_split"]
    scan = scan_mimic_cxr(root, base / "mimic-reports")
    assert {i.image_id for i in scan.images} == usable
    assert sorted(r.reason for r in scan.rejects) == ["image_file_missing", "no_split"]
    assert scan.labels == {r["study_id"]: {label: STATE[r[label]] for label in CHEXPERT_LABELS} for r in label_rows}
    assert len(scan.reports) == counts["mimic"]["reports"] == counts["mimic"]["studies"]
    split_name = {"train": "train", "validate": "validation", "test": "test"}
    assert all(i.split == split_name[splits[i.image_id]] for i in scan.images)
    assert {i.split for i in scan.images} == {"train", "validation", "test"}
    assert {i.view for i in scan.images} >= {"PA", "AP", "LATERAL"}
    subjects_by_split = defaultdict(set)
    for image in scan.images:
        subjects_by_split[image.subject_id].add(image.split)
    assert all(len(s) == 1 for s in subjects_by_split.values())
    values = {v for r in label_rows for v in (r[label] for label in CHEXPERT_LABELS)}
    assert values == {"1.0", "0.0", "-1.0", ""}
    assert all(i.sex in ("F", "M") for i in scan.images)
    # ID shapes and report text layout
    for r in metadata:
        assert re.fullmatch(r"1\d{7}", r["subject_id"]) and re.fullmatch(r"5\d{7}", r["study_id"])
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", r["dicom_id"])
    texts = [p.read_text() for p in sorted((base / "mimic-reports" / "files").rglob("s*.txt"))]
    assert all(t.splitlines()[0].strip() == "FINAL REPORT" for t in texts)
    assert all(line.startswith(" ") for t in texts for line in t.splitlines() if line)
    assert any("___" in t for t in texts) and any(" COMPARISON:" in t for t in texts)
    assert any(" IMPRESSION:" in t and " FINDINGS:" not in t for t in texts)
    assert any(" FINDINGS AND IMPRESSION:" in t for t in texts) and any(" ADDENDUM:" in t for t in texts)


def test_demo_findings_are_visible_per_label(demo_dirs):
    """Every positive image is brighter in its label's region than every image without the label."""
    from radcorpora.demo.mimic_cxr import FINDING_BOXES

    base, _ = demo_dirs
    scan = scan_mimic_cxr(base / "mimic", base / "mimic-reports")
    frontal = [i for i in scan.images if i.frontal and i.study_id in scan.labels]
    checked = 0
    for label in ("Pleural Effusion", "Cardiomegaly", "Lung Opacity", "Support Devices", "Pneumothorax", "Edema",
                  "Consolidation", "Atelectasis", "Lung Lesion"):
        positive = [region_mean(i.path, FINDING_BOXES[label]) for i in frontal
                    if scan.labels[i.study_id][label] == "positive"]
        absent = [region_mean(i.path, FINDING_BOXES[label]) for i in frontal
                  if scan.labels[i.study_id][label] in ("negative", "not_mentioned")]
        if positive and absent:
            assert min(positive) > max(absent) + 20, label
            checked += 1
    assert checked >= 4


def test_demo_chexpert_and_plus_match_their_files(demo_dirs):
    base, counts = demo_dirs
    dataset = base / "chexpert" / "CheXpert-v1.0-small"
    scan = scan_chexpert(base / "chexpert")
    expected: dict[str, dict[str, str]] = {}
    for name in ("train.csv", "valid.csv", "test_labels.csv"):
        with open(dataset / name, newline="") as handle:
            for row in csv.DictReader(handle):
                rel = row["Path"].split("/", 1)[1] if row["Path"].startswith("CheXpert-v1.0") else row["Path"]
                if (dataset / rel).exists():
                    expected[rel] = {label: STATE[row[label]] for label in CHEXPERT_LABELS}
    assert scan.labels == expected
    assert [(r.reason, Path(r.source).name) for r in scan.rejects] == [("image_file_missing", "train.csv")]
    assert {i.split for i in scan.images} == {"train", "validation", "test"}
    assert len(scan.images) == counts["chexpert"]["images"]

    plus_root = base / "plus"
    plus = scan_chexpert_plus(plus_root)
    with open(plus_root / "df_chexpert_plus_240401.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(PLUS_HEADER)
    present = {r["path_to_image"] for r in rows if (plus_root / "PNG" / Path(r["path_to_image"]).with_suffix(".png")).exists()}
    assert {i.image_id for i in plus.images} == present and len(rows) - len(present) == 1
    for row in rows:
        if row["path_to_image"] in present and (row["section_findings"] or row["section_impression"]):
            report = plus.reports[row["path_to_image"]]
            assert report.findings == (" ".join(row["section_findings"].split()) or None)
            assert report.impression == (" ".join(row["section_impression"].split()) or None)
    assert plus.counts["reports_from_end_of_impression"] == counts["plus"]["reports_from_end_of_impression"] >= 1
    with open(plus_root / "chexbert_labels" / "report_fixed.json") as handle:
        records = [json.loads(line) for line in handle]
    mapping = {1.0: "positive", 0.0: "negative", -1.0: "uncertain", None: "not_mentioned"}
    assert plus.labels == {r["path_to_image"]: {label: mapping[r[label]] for label in CHEXPERT_LABELS} for r in records}
    # the two CheXpert demos share patients and their splits, as the real releases do
    chexpert_split = {i.image_id: i.split for i in scan.images}
    assert all(chexpert_split.get(i.image_id, i.split) == i.split for i in plus.images)


def test_demo_writes_are_deterministic(tmp_path):
    from radcorpora.demo.chexpert import write_demo_chexpert, write_demo_chexpert_plus
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr

    def tree(base: Path) -> dict[str, bytes]:
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    for run in ("a", "b"):
        write_demo_mimic_cxr(tmp_path / run / "mimic", tmp_path / run / "reports", n_subjects=6)
        write_demo_chexpert(tmp_path / run / "chexpert")
        write_demo_chexpert_plus(tmp_path / run / "plus")
    first, second = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert first.keys() == second.keys() and len(first) > 50
    assert [k for k in first if first[k] != second[k]] == []
