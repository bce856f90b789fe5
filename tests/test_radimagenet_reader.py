import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest

from radcorpora.sources.errors import SourceError
from radcorpora.sources.radimagenet import LabelMapError, load_label_map, scan_radimagenet


@pytest.fixture
def tree(demo_source, tmp_path) -> Path:
    return Path(shutil.copytree(demo_source, tmp_path / "src"))


def _append_csv(path: Path, rows):
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_scan_labels_splits_and_us_skipped(tree):
    scan = scan_radimagenet(tree)
    assert scan.counts["skipped_us_images"] == 3
    assert {len(v) for v in scan.images.values()} and sum(len(v) for v in scan.images.values()) == 8 * 4 * 5
    lung = [i for i in scan.images["train"] if i.rel_path.startswith("radiology_ai/CT/lung/nodule/")]
    assert lung and lung[0].region == "chest" and lung[0].pathology == "nodule" and lung[0].modality == "CT"
    acl = [i for imgs in scan.images.values() for i in imgs if "/acl_pathology/" in i.rel_path]
    assert {i.pathology for i in acl} == {"anterior cruciate ligament pathology"}
    normal = [i for imgs in scan.images.values() for i in imgs if "/normal/" in i.rel_path]
    assert normal and not any(i.is_abnormal for i in normal)
    assert not scan.rejects


def test_accepts_the_radiology_ai_folder_itself(tree):
    assert scan_radimagenet(tree / "radiology_ai").counts["listed_images"] == scan_radimagenet(tree).counts["listed_images"]


def test_bad_csv_rows_are_rejected_with_file_and_row(tree):
    _append_csv(tree / "RadiologyAI_train.csv", [["radiology_ai/CT/lung/nodule/missing.png", "lung-nodule"], ["", "x"]])
    test_rows = list(csv.reader(open(tree / "RadiologyAI_test.csv")))
    _append_csv(tree / "RadiologyAI_train.csv", [test_rows[1]])  # same image in train and test
    scan = scan_radimagenet(tree)
    reasons = {r.reason: r for r in scan.rejects}
    assert reasons["csv_row_without_file"].source.endswith("RadiologyAI_train.csv")
    assert reasons["csv_row_without_file"].row is not None and "missing.png" in reasons["csv_row_without_file"].detail
    assert reasons["csv_row_without_filename"].row is not None
    assert reasons["image_in_several_splits"].detail.startswith(test_rows[1][0])
    in_any = {i.rel_path for imgs in scan.images.values() for i in imgs}
    assert test_rows[1][0] not in in_any


def test_unlisted_file_is_rejected_not_dropped(tree):
    src = next((tree / "radiology_ai/MR/knee/fracture").glob("*.png"))
    shutil.copy(src, src.with_name("extra.png"))
    scan = scan_radimagenet(tree)
    assert any(r.reason == "not_in_any_split_csv" and r.source.endswith("extra.png") for r in scan.rejects)


def test_without_csvs_everything_goes_to_train_with_warning(tree):
    for csv_file in tree.glob("RadiologyAI_*.csv"):
        csv_file.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = scan_radimagenet(tree)
    assert any("train" in str(w.message) for w in caught)
    assert len(scan.images["train"]) == 160 and not scan.images["test"]


def test_unknown_names_listed_together_before_work(tree):
    (tree / "radiology_ai/MR/elbow/normal").mkdir(parents=True)
    shutil.copy(next((tree / "radiology_ai/MR/knee/normal").glob("*.png")), tree / "radiology_ai/MR/elbow/normal/e.png")
    (tree / "radiology_ai/MR/knee/weird_thing").mkdir()
    shutil.copy(next((tree / "radiology_ai/MR/knee/normal").glob("*.png")), tree / "radiology_ai/MR/knee/weird_thing/w.png")
    with pytest.raises(LabelMapError) as info:
        scan_radimagenet(tree)
    message = str(info.value)
    assert "'elbow'" in message and "weird_thing" in message and "--label-map" in message


def test_user_label_map_overrides_and_pair_keys_win(tree, tmp_path):
    (tree / "radiology_ai/MR/knee/weird_thing").mkdir()
    shutil.copy(next((tree / "radiology_ai/MR/knee/normal").glob("*.png")), tree / "radiology_ai/MR/knee/weird_thing/w.png")
    _append_csv(tree / "RadiologyAI_train.csv", [["radiology_ai/MR/knee/weird_thing/w.png", "knee-weird"]])
    user = tmp_path / "map.yaml"
    user.write_text('pathology: {weird_thing: hematoma, "KNEE/weird_thing": muscle strain, fracture: null}\n')
    scan = scan_radimagenet(tree, load_label_map(user))
    weird = [i for imgs in scan.images.values() for i in imgs if "weird_thing" in i.rel_path]
    assert [i.pathology for i in weird] == ["muscle strain"]
    assert not any("/fracture/" in i.rel_path for imgs in scan.images.values() for i in imgs)
    assert sum(r.reason == "skipped_by_label_map" for r in scan.rejects) == 5
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps({"normal": ["weird_thing"]}))
    scan = scan_radimagenet(tree, load_label_map(as_json))
    assert [i.pathology for imgs in scan.images.values() for i in imgs if "weird_thing" in i.rel_path] == ["normal"]


def test_label_map_shape_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("anatomie: {abd: chest}\n")
    with pytest.raises(SourceError, match="bad.yaml.*anatomie"):
        load_label_map(bad)


def test_empty_tree_and_missing_column(tmp_path, tree):
    (tmp_path / "empty/radiology_ai").mkdir(parents=True)
    with pytest.raises(SourceError, match="no CT or MR images"):
        scan_radimagenet(tmp_path / "empty")
    with pytest.raises(SourceError, match="no `radiology_ai/`"):
        scan_radimagenet(tmp_path)
    (tree / "RadiologyAI_val.csv").write_text("file,label\nx,y\n")
    with pytest.raises(SourceError, match="RadiologyAI_val.csv.*filename"):
        scan_radimagenet(tree)
