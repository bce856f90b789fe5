"""The real annotation tables that ship in the torchxrayvision 1.5.7 wheel (CheXpert train.csv with
223,414 rows, VinDr-CXR's train annotations), read as the readers and row makers read them. The
wheel is downloaded by scripts/setup_venv.sh (dev extra) into .venv/test-data."""

from __future__ import annotations

import csv
import gzip
import io
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from radcorpora.corpora.radvlm.tasks import positive_labels
from radcorpora.sources.chexpert import chexpert_view, label_states

WHEEL = next(iter(sorted((Path(sys.prefix) / "test-data").glob("torchxrayvision-1.5.7-*.whl"))), None)
pytestmark = pytest.mark.skipif(WHEEL is None, reason="the torchxrayvision 1.5.7 wheel is not in .venv/test-data: "
                                                      "scripts/setup_venv.sh with the dev extra downloads it")


def member(name: str) -> str:
    with zipfile.ZipFile(WHEEL) as archive:
        return gzip.decompress(archive.read(f"torchxrayvision/data/{name}")).decode("utf-8")


def test_real_chexpert_labels_no_finding_with_support_devices_is_consistent():
    rows = list(csv.DictReader(io.StringIO(member("chexpert_train.csv.gz"))))
    assert len(rows) == 223_414
    problems, devices, views = Counter(), 0, Counter()
    for line, row in enumerate(rows, start=2):
        states = label_states(row, f"train.csv line {line}")
        found, problem = positive_labels(states, "absent")
        problems[problem] += 1
        devices += states["No Finding"] == "positive" and "Support Devices" in found
        views[chexpert_view(row["Frontal/Lateral"], row["AP/PA"], row["Path"])] += 1
    # counted independently: No Finding = 1 never sits next to a pathology, only next to support devices
    independent = sum(1 for r in rows if r["No Finding"] == "1.0" and r["Support Devices"] == "1.0")
    assert problems == {None: len(rows)} and devices == independent > 0
    assert views["LATERAL"] == sum(1 for r in rows if r["Frontal/Lateral"] == "Lateral")
    assert views["AP"] + views["PA"] == sum(1 for r in rows if r["Frontal/Lateral"] == "Frontal" and r["AP/PA"] in ("AP", "PA"))


def test_real_vindr_table_coordinates_read_as_numbers_or_empty():
    from radcorpora.sources.base import NotANumber, number

    rows = list(csv.DictReader(io.StringIO(member("vinbigdata-train.csv.gz"))))
    boxes = [r for r in rows if r["class_name"] != "No finding"]
    assert len(rows) == 67_914 and boxes
    for row in boxes:
        values = [number(row[c], c) for c in ("x_min", "y_min", "x_max", "y_max")]
        assert values[0] <= values[2] and values[1] <= values[3]
    for row in rows:
        if row["class_name"] == "No finding":
            with pytest.raises(NotANumber):
                number(row["x_min"], "x_min")  # empty: the reader's global/no-finding rows
