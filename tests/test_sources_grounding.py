"""Readers of the grounding sources (VinDr-CXR, Chest ImaGenome, MS-CXR, PadChest-GR) and the DICOM
converter, on small fixtures written here; expected values are computed by hand from the
fixtures, never from the reader's own output."""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radcorpora.demo.cxr_drawing import draw_cxr, encode
from radcorpora.sources.chest_imagenome import RGRG_REGIONS, SILVER_REGIONS, scan_chest_imagenome
from radcorpora.sources.dicom import DicomError, read_dicom_image, read_dicom_size
from radcorpora.sources.errors import SourceError
from radcorpora.sources.ms_cxr import scan_ms_cxr
from radcorpora.sources.padchest_gr import read_image_bytes, scan_padchest_gr
from radcorpora.sources.vindr_cxr import (
    GLOBAL_LABELS,
    KAGGLE_CLASSES,
    LOCAL_LABELS,
    scan_vindr_cxr,
)

# ----------------------------------------------------------------------------- helpers


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **extra) -> Path:
    from radcorpora.demo.vindr_cxr import write_dicom

    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(path, path.name, pixels.astype(np.uint8), photometric == "MONOCHROME1")
    if extra:
        import pydicom

        ds = pydicom.dcmread(path)
        for key, value in extra.items():
            setattr(ds, key, value)
        ds.save_as(path)
    return path


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def mimic_like(root: Path) -> list[tuple]:
    """Three tiny MIMIC-CXR-JPG images (dicom_id, subject, study, path, width, height, split)."""
    images = []
    for k, (width, height, split) in enumerate(((200, 250, "train"), (160, 200, "validation"), (180, 180, "test"))):
        subject, study = f"1{k}00000{k}", f"5{k}00000{k}"
        dicom_id = "-".join(f"{k}{j}abcdef" for j in range(5))
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(draw_cxr(dicom_id, width, height), "JPEG"))
        images.append((dicom_id, subject, study, str(path), width, height, split))
    return images


# ----------------------------------------------------------------------------- DICOM


def test_dicom_monochrome1_is_inverted_and_monochrome2_is_not(tmp_path):
    ramp = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (40, 1))  # 100 columns, 40 rows: 0..198
    plain = read_dicom_image(dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2"))
    inverted = read_dicom_image(dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1"))
    a = np.asarray(Image.open(io.BytesIO(plain.png)))
    b = np.asarray(Image.open(io.BytesIO(inverted.png)))
    assert (plain.width, plain.height) == (100, 40) == a.shape[::-1]
    # stored MONOCHROME1 values are 4095 - 16 v, displayed they must read as the original ramp
    assert a[0, 0] == 0 and a[0, -1] == 255 and b[0, 0] == 0 and b[0, -1] == 255
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.all(np.diff(a[0].astype(int)) >= 0)


def test_dicom_window_is_applied_before_scaling(tmp_path):
    ramp = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (10, 1))  # stored 0..3168 (x16)
    # window centre 1600, width 801: stored values <= 1200 black, > 2000 white
    png = read_dicom_image(dicom(tmp_path / "w.dcm", ramp, WindowCenter=1600, WindowWidth=801)).png
    row = np.asarray(Image.open(io.BytesIO(png)))[0]
    stored = np.arange(0, 200, 2) * 16
    assert (row[stored <= 1199] == 0).all() and (row[stored > 2000] == 255).all()
    assert 0 < row[np.argmax(stored >= 1600)] < 255


def test_dicom_max_side_keeps_aspect_ratio_and_is_deterministic():
    path = Path(get_testdata_file("JPEG2000.dcm") or "")
    if not path.is_file():
        path = Path(get_testdata_file("CT_small.dcm"))
    first, again = read_dicom_image(path, max_side=64), read_dicom_image(path, max_side=64)
    assert first.png == again.png
    width, height = read_dicom_size(path)
    assert (first.width, first.height) == (width, height)
    assert max(first.output_width, first.output_height) == 64
    assert abs(first.output_width / first.output_height - width / height) < 0.05
    assert Image.open(io.BytesIO(first.png)).size == (first.output_width, first.output_height)
    small = read_dicom_image(get_testdata_file("MR_small.dcm"), max_side=1000)
    assert (small.output_width, small.output_height) == (64, 64)


def test_dicom_without_pixels_or_broken_names_the_file(tmp_path):
    with pytest.raises(DicomError, match="rtplan.dcm.*no pixel data"):
        read_dicom_image(get_testdata_file("rtplan.dcm"))
    junk = write(tmp_path / "junk.dicom", "not a dicom file")
    with pytest.raises(DicomError, match="junk.dicom"):
        read_dicom_image(junk)
    with pytest.raises(DicomError, match="MR_truncated"):
        read_dicom_image(get_testdata_file("MR_truncated.dcm"))


# ----------------------------------------------------------------------------- VinDr-CXR

A, B, C = "a" * 32, "b" * 32, "c" * 32


def physionet_vindr(root: Path, reader_column: str = "rad_id") -> Path:
    dicom(root / "train" / f"{A}.dicom", np.zeros((300, 200), np.uint8) + 9)  # Columns 200, Rows 300
    dicom(root / "train" / f"{B}.dicom", np.zeros((100, 100), np.uint8) + 9, "MONOCHROME1")
    dicom(root / "test" / f"{C}.dicom", np.zeros((50, 80), np.uint8) + 9)
    write(root / "annotations" / "annotations_train.csv", "\n".join([
        f"image_id,{reader_column},class_name,x_min,y_min,x_max,y_max",
        f"{A},R1,Cardiomegaly,50,150,150,240",          # line 2
        f"{A},R2,Cardiomegaly,40.5,140,160,250.0",      # line 3
        f"{A},R3,Nodule/Mass,10,20,30,60",              # line 4
        f"{A},R3,Cardiomegaly,150,150,50,240",          # line 5: inverted
        f"{A},R2,Aortic enlargement,,,,",               # line 6: box missing
        f"{B},R1,No finding,,,,",
        f"{B},R4,No finding,,,,",
        f"{B},R5,No finding,,,,",
    ]) + "\n")
    write(root / "annotations" / "annotations_test.csv", "\n".join([
        "image_id,rad_ID,class_name,x_min,y_min,x_max,y_max",
        f"{C},R8,Pleural effusion,40,25,80,50",
    ]) + "\n")
    return root


@pytest.mark.parametrize("reader_column", ["rad_id", "rad_ID"])
def test_vindr_physionet_groups_readers_and_normalises_on_the_dicom_grid(tmp_path, reader_column):
    scan = scan_vindr_cxr(physionet_vindr(tmp_path, reader_column))
    assert scan.layout == "physionet"
    sizes = {i.image_id: (i.width, i.height, i.split) for i in scan.images}
    assert sizes == {A: (200, 300, "train"), B: (100, 100, "train"), C: (80, 50, "test")}
    assert all(i.subject_id == i.image_id for i in scan.images)
    by_key = {(f.image.image_id, f.label): f for f in scan.annotations}
    assert set(by_key) == {(A, "Cardiomegaly"), (A, "Nodule/Mass"), (C, "Pleural effusion")}
    cardio = by_key[(A, "Cardiomegaly")]
    assert cardio.readers == ("R1", "R2")  # one box per reader, raw (not fused)
    assert [b.xyxy for b in cardio.boxes] == [
        pytest.approx((50 / 200, 150 / 300, 150 / 200, 240 / 300)),
        pytest.approx((40.5 / 200, 140 / 300, 160 / 200, 250 / 300))]
    assert by_key[(C, "Pleural effusion")].boxes[0].xyxy == pytest.approx((0.5, 0.5, 1.0, 1.0))
    assert scan.no_finding == {B}
    rejects = {(r.reason, r.row) for r in scan.rejects}
    assert rejects == {("box_inverted", "5"), ("box_missing_coordinates", "6")}
    assert all(r.source.endswith("annotations_train.csv") for r in scan.rejects)


def test_vindr_order_of_rows_does_not_change_findings(tmp_path):
    first = scan_vindr_cxr(physionet_vindr(tmp_path / "a"))
    root = physionet_vindr(tmp_path / "b")
    table = root / "annotations" / "annotations_train.csv"
    header, *rows = table.read_text().splitlines()
    table.write_text("\n".join([header, *reversed(rows)]) + "\n")
    second = scan_vindr_cxr(root)
    key = lambda s: [(f.image.image_id, f.label, f.readers, [b.xyxy for b in f.boxes]) for f in s.annotations]
    assert key(first) == key(second)


def test_vindr_kaggle_layout_png_and_gz(tmp_path):
    import gzip

    (tmp_path / "train").mkdir()
    Image.new("L", (120, 90)).save(tmp_path / "train" / f"{A}.png")
    Image.new("L", (64, 64)).save(tmp_path / "train" / f"{B}.jpg")
    text = "\n".join(["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max",
                      f"{A},Cardiomegaly,3,R10,12,9,60,45",
                      f"{A},No finding,14,R11,,,,",
                      f"{B},No finding,14,R9,,,,"]) + "\n"
    (tmp_path / "vinbigdata-train.csv.gz").write_bytes(gzip.compress(text.encode(), mtime=0))
    scan = scan_vindr_cxr(tmp_path)
    assert scan.layout == "kaggle"
    assert [(i.image_id, i.width, i.height) for i in scan.images] == [(A, 120, 90), (B, 64, 64)]
    (finding,) = scan.annotations
    assert finding.boxes[0].xyxy == pytest.approx((0.1, 0.1, 0.5, 0.5))
    assert scan.no_finding == {B}  # A: one reader found cardiomegaly


def test_vindr_unknown_class_and_missing_column_are_source_errors(tmp_path):
    root = physionet_vindr(tmp_path / "a")
    table = root / "annotations" / "annotations_train.csv"
    table.write_text(table.read_text() + f"{A},R1,Dragon,1,1,2,2\n")
    with pytest.raises(SourceError, match=r"'Dragon' \(annotations_train.csv line 10\)"):
        scan_vindr_cxr(root)
    root = physionet_vindr(tmp_path / "b")
    table = root / "annotations" / "annotations_test.csv"
    table.write_text("image_id,rad_id,class_name,x_min,y_min,x_max\n")
    with pytest.raises(SourceError, match=r"annotations_test.csv: missing column\(s\) y_max"):
        scan_vindr_cxr(root)


def test_vindr_missing_image_is_rejected_with_its_rows(tmp_path):
    root = physionet_vindr(tmp_path)
    (root / "test" / f"{C}.dicom").unlink()
    scan = scan_vindr_cxr(root)
    assert C not in {i.image_id for i in scan.images}
    assert ("image_file_missing", "2") in {(r.reason, r.row) for r in scan.rejects}
    assert scan.counts["rows_of_rejected_images"] == 1


def test_vindr_label_vocabulary():
    assert len(LOCAL_LABELS) == 22 and len(GLOBAL_LABELS) == 6 and len(KAGGLE_CLASSES) == 14
    assert set(KAGGLE_CLASSES) <= set(LOCAL_LABELS)


def test_vindr_68k_row_table_is_read_whole(tmp_path):
    rng = random.Random(7)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(15000)]
    (tmp_path / "train").mkdir()
    lines = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    for image_id in ids:
        (tmp_path / "train" / f"{image_id}.png").touch()
        readers = rng.sample(range(1, 18), 3)
        if rng.random() < 0.707:  # as in the real table: 10,606 of 15,000 images normal, ~36k boxes
            lines += [f"{image_id},No finding,14,R{r},,,," for r in readers]
        else:
            for _ in range(8):
                c, x, y = rng.randrange(14), rng.uniform(0, 2000), rng.uniform(0, 2000)
                lines.append(f"{image_id},{KAGGLE_CLASSES[c]},{c},R{rng.choice(readers)},{x:.1f},{y:.1f},"
                             f"{x + 300:.1f},{y + 400:.1f}")
    lines = lines[:68001]
    assert len(lines) > 67000
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    sizes = {i: (2500, 3000) for i in ids}
    scan = scan_vindr_cxr(tmp_path, image_sizes=sizes)  # its speed is measured in benchmarks/bench_wbf.py
    assert scan.counts["annotation_rows"] == len(lines) - 1 and not scan.rejects
    assert len({f.image.image_id for f in scan.annotations}) + len(scan.no_finding) <= len(ids)


def test_vindr_demo_is_deterministic_and_readable(tmp_path):
    from radcorpora.demo.vindr_cxr import CLASS_BOXES, write_demo_vindr_cxr

    counts = write_demo_vindr_cxr(tmp_path / "a")
    write_demo_vindr_cxr(tmp_path / "b")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    scan = scan_vindr_cxr(tmp_path / "a", max_side=64)
    assert len(scan.images) == counts["train_images"] + counts["test_images"]
    assert [r.reason for r in scan.rejects] == ["box_inverted"]
    assert len(scan.no_finding) == counts["no_finding_images"]
    assert sum(len(f.boxes) for f in scan.annotations) == counts["box_rows"] - 1
    train = [f for f in scan.annotations if f.image.split == "train"]
    assert train and all(len(set(f.readers)) >= 2 for f in train)  # several readers per class to fuse
    # every box lies on its drawn blob: the base box's centre is bright in the converted image
    for finding in scan.annotations:
        png = read_dicom_image(Path(finding.image.path)).png
        pixels = np.asarray(Image.open(io.BytesIO(png)))
        x1, y1, x2, y2 = CLASS_BOXES[finding.label]
        h, w = pixels.shape
        assert pixels[int((y1 + y2) / 2 * h), int((x1 + x2) / 2 * w)] > 200
        for box in finding.boxes:
            assert abs(box.x1 - x1) < 0.02 and abs(box.y2 - y2) < 0.02
    assert counts["monochrome1_images"] > 0
    converted = scan.read_image(scan.images[0])
    assert max(Image.open(io.BytesIO(converted)).size) == 64


# ----------------------------------------------------------------------------- Chest ImaGenome


def imagenome(root: Path, images: list[tuple], graphs: dict[str, list[dict]]) -> Path:
    silver = root / "silver_dataset"
    names = {"train": "train", "validation": "valid", "test": "test"}
    rows: dict[str, list[str]] = {n: [",subject_id,study_id,dicom_id,path,ViewPosition"] for n in names.values()}
    for index, (dicom_id, subject, study, _, _, _, split) in enumerate(images):
        rows[names[split]].append(f"{index},{subject},{study},{dicom_id},"
                                  f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.dcm,PA")
    for name, lines in rows.items():
        write(silver / "splits" / f"{name}.csv", "\n".join(lines) + "\n")
    for dicom_id, objects in graphs.items():
        write(silver / "scene_graph" / f"{dicom_id}_SceneGraph.json", json.dumps(
            {"image_id": dicom_id, "viewpoint": "AP", "patient_id": 1, "study_id": 2, "gender": "F", "objects": objects}))
    return root


def region(name: str, x1, y1, x2, y2) -> dict:
    return {"bbox_name": name, "x1": 0, "y1": 0, "x2": 1, "y2": 1, "original_x1": x1, "original_y1": y1,
            "original_x2": x2, "original_y2": y2}


def test_chest_imagenome_regions_use_original_pixels_and_mimic_size(tmp_path):
    images = mimic_like(tmp_path / "mimic")
    (d0, s0, st0, p0, w0, h0, _), (d1, *_), _ = images
    root = imagenome(tmp_path / "cig", images, {
        d0: [region("right lung", 20, 50, 100, 200), region("left lung", 110, 50, 190, 240),
             region("trachea", 90, -30, 110, 40)],  # trachea leaves the image by 12%: rejected
        d1: [region("cardiac silhouette", 40, 80, 120, 160)],
    })
    sizes = {d0: (w0, h0), d1: (160, 200)}  # d2 has no size (and no scene graph)
    scan = scan_chest_imagenome(root / "silver_dataset", tmp_path / "mimic" / "files", sizes)
    assert [i.image_id for i in scan.images] == [d0, d1]
    image = scan.images[0]
    assert (image.subject_id, image.study_id, image.split, image.view, image.sex) == (s0, st0, "train", "AP", "F")
    assert image.path == p0 and (image.width, image.height) == (200, 250)
    assert scan.images[1].split == "validation"
    found = {(f.image.image_id, f.label): f.boxes[0].xyxy for f in scan.findings}
    assert found[(d0, "right lung")] == pytest.approx((20 / 200, 50 / 250, 100 / 200, 200 / 250))
    assert found[(d1, "cardiac silhouette")] == pytest.approx((40 / 160, 80 / 200, 120 / 160, 160 / 200))
    (reject,) = scan.rejects
    assert reject.reason == "box_outside_frame" and reject.source.endswith(f"{d0}_SceneGraph.json")
    assert "trachea" in reject.row
    assert scan.counts["skipped_no_scene_graph"] == 1


def test_chest_imagenome_size_unknown_missing_jpg_and_avoid_list(tmp_path):
    images = mimic_like(tmp_path / "mimic")
    (d0, *_), (d1, *_), (d2, _, _, p2, *_) = images
    objects = [region("spine", 1, 1, 20, 20)]
    root = imagenome(tmp_path / "cig", images, {d0: objects, d1: objects, d2: objects})
    write(root / "silver_dataset" / "splits" / "images_to_avoid.csv", f"dicom_id\n{d1}\n")
    Path(p2).unlink()
    scan = scan_chest_imagenome(root, tmp_path / "mimic", {d2: (180, 180)})
    assert scan.images == []
    assert sorted(r.reason for r in scan.rejects) == ["image_file_missing", "image_size_unknown"]
    assert scan.counts["skipped_images_to_avoid"] == 1
    assert {r.source.rsplit("/", 1)[-1] for r in scan.rejects} == {"train.csv", "test.csv"}


def test_chest_imagenome_missing_column_names_the_file(tmp_path):
    write(tmp_path / "silver_dataset" / "splits" / "train.csv", ",subject_id,study_id,dicom_id\n0,1,2,3\n")
    (tmp_path / "silver_dataset" / "scene_graph").mkdir()
    with pytest.raises(SourceError, match=r"train.csv: missing column\(s\) path"):
        scan_chest_imagenome(tmp_path, tmp_path, {})


def test_chest_imagenome_region_constants():
    assert len(RGRG_REGIONS) == 29 and len(SILVER_REGIONS) == 36 and RGRG_REGIONS[24] == "cardiac silhouette"


def test_chest_imagenome_demo_follows_the_drawn_anatomy(tmp_path):
    from radcorpora.demo.chest_imagenome import write_demo_chest_imagenome

    images = mimic_like(tmp_path / "mimic")
    counts = write_demo_chest_imagenome(tmp_path / "a", images)
    write_demo_chest_imagenome(tmp_path / "b", images)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    sizes = {i[0]: (i[4], i[5]) for i in images}
    scan = scan_chest_imagenome(tmp_path / "a", tmp_path / "mimic", sizes)
    assert len(scan.images) == counts["scene_graphs"] - counts["images_to_avoid"]
    assert [r.reason for r in scan.rejects] == ["box_outside_frame"] * counts["bad_boxes"]
    for finding in scan.findings:
        if finding.label not in ("right lung", "left lung", "cardiac silhouette"):
            continue
        pixels = np.asarray(Image.open(finding.image.path).convert("L"), dtype=float)
        h, w = pixels.shape
        x1, y1, x2, y2 = finding.boxes[0].to_pixels(w, h)
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        # lungs are drawn dark (40), the heart bright (150)
        centre = pixels[cy - 2:cy + 3, cx - 2:cx + 3].mean()
        assert centre < 90 if "lung" in finding.label else centre > 110


# ----------------------------------------------------------------------------- MS-CXR


def ms_cxr_table(images: list[tuple], with_split: bool) -> str:
    (d0, s0, st0, _, w0, h0, _), (d1, s1, st1, _, w1, h1, _), _ = images
    head = "dicom_id,category_name,label_text,x,y,w,h,image_width,image_height,path" + (",split" if with_split else "")
    tail = lambda split: f",{split}" if with_split else ""
    return "\n".join([
        head,
        f"{d0},Pneumonia,patchy opacity at both bases,10,20,50,40,{w0},{h0},files/p{s0[:2]}/p{s0}/s{st0}/{d0}.jpg{tail('train')}",
        f"{d0},Pneumonia,patchy opacity at both bases,120,30,60,80,{w0},{h0},files/p{s0[:2]}/p{s0}/s{st0}/{d0}.jpg{tail('train')}",
        f"{d0},Cardiomegaly,enlarged heart,60,90,80,100,{w0},{h0},files/p{s0[:2]}/p{s0}/s{st0}/{d0}.jpg{tail('train')}",
        f"{d1},Edema,mild edema,10,10,-5,30,{w1},{h1},files/p{s1[:2]}/p{s1}/s{st1}/{d1}.jpg{tail('val')}",
        f"{d1},Edema,hazy lungs,0,0,160,200,{w1},{h1},files/p{s1[:2]}/p{s1}/s{st1}/{d1}.jpg{tail('val')}",
    ]) + "\n"


def test_ms_cxr_v11_groups_phrases_and_reads_split(tmp_path):
    images = mimic_like(tmp_path / "mimic")
    write(tmp_path / "ms" / "MS_CXR_Local_Alignment_v1.0.0.csv", "dicom_id\n")  # older: ignored
    write(tmp_path / "ms" / "MS_CXR_Local_Alignment_v1.1.0.csv", ms_cxr_table(images, True))
    scan = scan_ms_cxr(tmp_path / "ms", tmp_path / "mimic" / "files")
    d0, s0, st0, p0 = images[0][:4]
    phrases = {(f.image.image_id, f.phrase): f for f in scan.findings}
    pneumonia = phrases[(d0, "patchy opacity at both bases")]
    assert pneumonia.label == "Pneumonia"
    assert [b.xyxy for b in pneumonia.boxes] == [pytest.approx((10 / 200, 20 / 250, 60 / 200, 60 / 250)),
                                                 pytest.approx((120 / 200, 30 / 250, 180 / 200, 110 / 250))]
    image = pneumonia.image
    assert (image.subject_id, image.study_id, image.path, image.split) == (s0, st0, p0, "train")
    assert phrases[(images[1][0], "hazy lungs")].image.split == "validation"
    (reject,) = scan.rejects
    assert (reject.reason, reject.row) == ("box_inverted", "5") and "v1.1.0" in reject.source


def test_ms_cxr_v01_takes_the_mimic_split_or_rejects(tmp_path):
    images = mimic_like(tmp_path / "mimic")
    write(tmp_path / "ms" / "MS_CXR_Local_Alignment_v1.0.0.csv", ms_cxr_table(images, False))
    scan = scan_ms_cxr(tmp_path / "ms", tmp_path / "mimic", {images[0][0]: "validate"})
    assert {f.image.split for f in scan.findings} == {"validation"}
    assert sorted(r.reason for r in scan.rejects).count("no_split") == 1
    assert scan.counts["rejected_image_rejected"] == 1  # the second row of that image


def test_ms_cxr_missing_column_names_the_file(tmp_path):
    write(tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv", "dicom_id,category_name,label_text,x,y,w,h,path\n")
    with pytest.raises(SourceError, match=r"v1.1.0.csv: missing column\(s\) image_width, image_height"):
        scan_ms_cxr(tmp_path, tmp_path)


def test_ms_cxr_demo_boxes_sit_on_drawn_blobs(tmp_path):
    from radcorpora.demo.mimic_cxr import FINDING_BOXES
    from radcorpora.demo.ms_cxr import write_demo_ms_cxr

    images = []
    for k, label in enumerate(("Cardiomegaly", "Pleural Effusion", "Lung Opacity")):
        subject, study, dicom_id = f"1900000{k}", f"5900000{k}", f"{k}" * 8 + "-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd"
        path = tmp_path / "mimic" / "files" / "p19" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        path.parent.mkdir(parents=True)
        path.write_bytes(encode(draw_cxr(dicom_id, 176, 208, [FINDING_BOXES[label]]), "JPEG"))
        images.append(((dicom_id, subject, study, str(path), 176, 208, "train"), label))
    counts = write_demo_ms_cxr(tmp_path / "a", [i for i, _ in images])
    write_demo_ms_cxr(tmp_path / "b", [i for i, _ in images])
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    scan = scan_ms_cxr(tmp_path / "a", tmp_path / "mimic")
    assert counts["rows"] == 3 and not scan.rejects
    assert {(f.image.image_id, f.label) for f in scan.findings} == {(i[0], label) for i, label in images}
    for finding in scan.findings:
        x1, y1, x2, y2 = FINDING_BOXES[finding.label]
        assert finding.boxes[0].xyxy == pytest.approx((x1, y1, x2, y2), abs=0.03)


def test_ms_cxr_normalises_by_the_real_size_and_rejects_a_row_that_states_another(tmp_path):
    images = mimic_like(tmp_path / "mimic")  # JPGs of 200x250 and 160x200
    (d0, *_), (d1, *_), _ = images
    table = ms_cxr_table(images, True).replace(  # line 3: the second box of d0 says 400x250
        "120,30,60,80,200,250,", "120,30,60,80,400,250,")
    write(tmp_path / "ms" / "MS_CXR_Local_Alignment_v1.1.0.csv", table)
    scan = scan_ms_cxr(tmp_path / "ms", tmp_path / "mimic")  # no MIMIC sizes: the JPG headers
    mismatch = [r for r in scan.rejects if r.reason == "image_size_mismatch"]
    assert [(r.row, "400x250" in r.detail, "200x250" in r.detail, f"header of {d0}.jpg" in r.detail,
             "v1.1.0.csv line 3" in r.detail) for r in mismatch] == [("3", True, True, True, True)]
    phrases = {(f.image.image_id, f.phrase): f for f in scan.findings}
    assert [b.xyxy for b in phrases[(d0, "patchy opacity at both bases")].boxes] == [
        pytest.approx((10 / 200, 20 / 250, 60 / 200, 60 / 250))]  # the row that agrees
    assert (phrases[(d1, "hazy lungs")].image.width, phrases[(d1, "hazy lungs")].image.height) == (160, 200)
    # the MIMIC metadata size is the real one where given: every row of d0 states another
    scan = scan_ms_cxr(tmp_path / "ms", tmp_path / "mimic", mimic_sizes={d0: (100, 125)})
    mismatch = [r for r in scan.rejects if r.reason == "image_size_mismatch"]
    assert [r.row for r in mismatch] == ["2", "3", "4"]
    assert all("the image is 100x125 (MIMIC-CXR metadata)" in r.detail for r in mismatch)
    assert {f.image.image_id for f in scan.findings} == {d1}


def test_ms_cxr_bad_size_cells_and_unreadable_jpg_are_rejects(tmp_path):
    images = mimic_like(tmp_path / "mimic")
    (d0, *_), (_, _, _, p1, *_), _ = images
    table = ms_cxr_table(images, True).replace("60,90,80,100,200,250,", "60,90,80,100,inf,250,")  # line 4
    write(tmp_path / "ms" / "MS_CXR_Local_Alignment_v1.1.0.csv", table)
    Path(p1).write_bytes(b"not a jpeg")
    scan = scan_ms_cxr(tmp_path / "ms", tmp_path / "mimic")
    assert sorted((r.reason, r.row) for r in scan.rejects) == [
        ("image_rejected", "6"), ("image_size_not_a_number", "4"), ("image_unreadable", "5")]
    size_reject = next(r for r in scan.rejects if r.row == "4")
    assert "image_width='inf'" in size_reject.detail and d0 in size_reject.detail
    assert {(f.image.image_id, f.phrase) for f in scan.findings} == {(d0, "patchy opacity at both bases")}


def test_ms_cxr_sizes_through_the_cli(tmp_path):
    """Boxes come out as x / real width etc. (real sizes read here from the JPGs), and a row whose
    stated width was edited is rejected naming both sizes."""
    import csv

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from radcorpora.cli import app
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.demo.ms_cxr import write_demo_ms_cxr
    from radcorpora.sources.mimic_cxr import scan_mimic_cxr

    write_demo_mimic_cxr(tmp_path / "mimic", tmp_path / "reports")
    write_demo_ms_cxr(tmp_path / "ms", scan_mimic_cxr(tmp_path / "mimic").images)
    table = tmp_path / "ms" / "MS_CXR_Local_Alignment_v1.1.0.csv"
    with open(table, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    real = {}
    for row in rows:
        with Image.open(tmp_path / "mimic" / row["path"]) as image:
            real[row["dicom_id"]] = image.size
    edited = rows[2]
    width, height = real[edited["dicom_id"]]
    assert (int(edited["image_width"]), int(edited["image_height"])) == (width, height)
    edited["image_width"] = str(width + 24)
    with open(table, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "radvlm", "--out", str(out), "--workers", "1", "--mimic-cxr",
                                      str(tmp_path / "mimic"), "--ms-cxr", str(tmp_path / "ms"),
                                      "--tasks", "phrase_grounding"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    rejects = [json.loads(line) for line in (out / "build" / "rejects.jsonl").read_text().splitlines()]
    (mismatch,) = [r for r in rejects if r["reason"] == "image_size_mismatch"]
    assert mismatch["row"] == "4" and mismatch["source"].endswith(table.name)
    assert f"{width + 24}x{height}" in mismatch["detail"] and f"the image is {width}x{height}" in mismatch["detail"]

    expected: dict[tuple[str, str], list] = {}  # (image, phrase) -> boxes of the rows that were not edited
    for row in rows:
        if row is not edited:
            w, h = real[row["dicom_id"]]
            x, y, bw, bh = (float(row[k]) for k in ("x", "y", "w", "h"))
            expected.setdefault((row["dicom_id"], row["label_text"]), []).append(
                (x / w, y / h, (x + bw) / w, (y + bh) / h))
    found: dict[tuple[str, str], list] = {}
    for shard in (out / "data" / "phrase_grounding").glob("*.parquet"):
        for record in pq.read_table(shard, columns=["lineage", "instances"]).to_pylist():
            for instance in record["instances"]:
                found[(record["lineage"]["source_id"], instance["label"])] = sorted(
                    (b["x1"], b["y1"], b["x2"], b["y2"]) for b in instance["boxes"])
    assert set(found) == set(expected)
    for key, boxes in found.items():
        assert boxes == [pytest.approx(box) for box in sorted(expected[key])], key


# ----------------------------------------------------------------------------- PadChest-GR


def padchest(root: Path, split_zip: bool, master_zip: bool = False) -> dict[str, bytes]:
    pngs = {"img1.png": encode(Image.new("L", (100, 80), 7)), "img2.png": encode(Image.new("L", (64, 32), 9))}
    studies = [
        {"StudyID": "s1", "ImageID": "img1.png", "findings": [
            {"sentence_en": "Cardiomegaly.", "sentence_es": "Cardiomegalia.", "abnormal": True,
             "boxes": [[0.25, 0.5, 0.75, 1.0]], "extra_boxes": [[0.2, 0.45, 0.7, 0.95], [0.1, 0.1, 0.2, 0.2]],
             "labels": ["cardiomegaly"], "locations": ["cardiac"], "progression": None},
            {"sentence_en": "No effusion.", "sentence_es": "Sin derrame.", "abnormal": False},
            {"sentence_en": "Broken box.", "abnormal": True, "boxes": [[0.5, 0.5, 0.4, 0.9]], "labels": ["nodule"]},
        ]},
        {"StudyID": "s2", "ImageID": "img2.png", "findings": [
            {"sentence_en": "Nodule.", "abnormal": True, "boxes": [[0.1, 0.2, 0.3, 0.4]], "labels": []}]},
        {"StudyID": "s3", "ImageID": "ghost.png", "findings": []},
    ]
    write(root / "grounded_reports_20240819.json", json.dumps(studies))
    master = ("ImageID,StudyID,PatientID,split,PatientSex_DICOM,label_group\n"
              "img1.png,s1,p1,train,F,Cardiomegaly\nimg1.png,s1,p1,train,F,Nodule\n"
              "img2.png,s2,p2,validation,M,Nodule\nghost.png,s3,p3,test,F,Normal\n")
    if master_zip:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("master_table.csv", master)
        (root / "master_table.csv.zip").write_bytes(buffer.getvalue())
    else:
        write(root / "master_table.csv", master)
    files = root / "Padchest_GR_files"
    files.mkdir()
    if split_zip:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in pngs.items():
                zf.writestr(f"PadChest_GR/{name}", data)
        data = buffer.getvalue()
        cuts = [0, 100, len(data) // 2, len(data)]
        for part in range(3):  # numbered .001..003, written in an order unlike their names
            (files / f"PadChest_GR.zip.{3 - part:03d}").write_bytes(data[cuts[2 - part]:cuts[3 - part]])
    else:
        for name, data in pngs.items():
            (files / name).write_bytes(data)
    return pngs


@pytest.mark.parametrize("split_zip,master_zip", [(True, False), (False, True)])
def test_padchest_gr_both_storage_forms(tmp_path, split_zip, master_zip):
    pngs = padchest(tmp_path, split_zip, master_zip)
    scan = scan_padchest_gr(tmp_path)
    assert [(i.image_id, i.subject_id, i.split, i.sex, i.width, i.height) for i in scan.images] == [
        ("img1.png", "p1", "train", "F", 100, 80), ("img2.png", "p2", "validation", "M", 64, 32)]
    for image in scan.images:
        assert read_image_bytes(image) == pngs[image.image_id]
        assert ("::" in image.path) == split_zip
    by_phrase = {f.phrase: f for f in scan.findings}
    assert set(by_phrase) == {"Cardiomegaly.", "No effusion.", "Nodule."}
    cardio = by_phrase["Cardiomegaly."]
    assert cardio.label == "cardiomegaly" and cardio.abnormal and cardio.boxes[0].xyxy == (0.25, 0.5, 0.75, 1.0)
    assert by_phrase["No effusion."].boxes == () and not by_phrase["No effusion."].abnormal
    assert by_phrase["Nodule."].label == "finding"
    (second,) = scan.second_reader
    assert second.phrase == "Cardiomegaly." and second.readers == ("reader2", "reader2")
    assert [b.xyxy for b in second.boxes] == [(0.2, 0.45, 0.7, 0.95), (0.1, 0.1, 0.2, 0.2)]
    assert sorted(r.reason for r in scan.rejects) == ["box_inverted", "image_file_missing"]
    assert any("Projection" in w for w in scan.warnings)


def test_padchest_gr_missing_column_names_the_file(tmp_path):
    padchest(tmp_path, split_zip=False)
    write(tmp_path / "master_table.csv", "ImageID,StudyID,split\nimg1.png,s1,train\n")
    with pytest.raises(SourceError, match=r"master_table.csv: missing column\(s\) PatientID"):
        scan_padchest_gr(tmp_path)


def test_padchest_gr_projection_filter_when_present(tmp_path):
    padchest(tmp_path, split_zip=False)
    write(tmp_path / "master_table.csv", "ImageID,StudyID,PatientID,split,Projection\n"
                                         "img1.png,s1,p1,train,PA\nimg2.png,s2,p2,test,L\n")
    scan = scan_padchest_gr(tmp_path)
    assert [(i.image_id, i.view) for i in scan.images] == [("img1.png", "PA")]
    assert scan.counts["skipped_projection_L"] == 1 and not scan.warnings


def test_padchest_gr_demo_is_deterministic_and_boxes_sit_on_blobs(tmp_path):
    from radcorpora.demo.padchest_gr import write_demo_padchest_gr

    counts = write_demo_padchest_gr(tmp_path / "a")
    write_demo_padchest_gr(tmp_path / "b")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert len(list((tmp_path / "a" / "Padchest_GR_files").glob("PadChest_GR.zip.0*"))) == 3
    scan = scan_padchest_gr(tmp_path / "a")
    assert not scan.rejects and len(scan.images) == counts["studies"]
    assert sum(1 for f in scan.findings if f.boxes) == counts["positive_sentences"]
    assert len(scan.second_reader) == counts["extra_boxes"]
    for finding in scan.findings:
        if not finding.boxes:
            continue
        pixels = np.asarray(Image.open(io.BytesIO(read_image_bytes(finding.image))))
        h, w = pixels.shape
        box = finding.boxes[0]
        assert pixels[int((box.y1 + box.y2) / 2 * h), int((box.x1 + box.x2) / 2 * w)] > 200
    patients = {}
    for image in scan.images:
        assert patients.setdefault(image.subject_id, image.split) == image.split  # patient-disjoint splits
