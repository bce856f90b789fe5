"""Reader for AbdomenAtlas 3.0 (RadGPT; HF `AbdomenAtlas/AbdomenAtlas3.0` and `...3.0Mini`).

On disk (FORMATS.md §14c): the report table `AbdomenAtlas3.0.csv` with `BDMAP ID, structured report,
narrative report, fusion structured report, fusion narrative report, radiologist note` (checked in
u2Tokenizer's synthesis scripts, which read these six columns by name, and its evaluation script,
which reads `narrative report` by `BDMAP ID`); the CT of a case at `<BDMAP ID>/ct.nii.gz` below the
image folder (`image_only/` in the Mini download, RadGPT's `download_atlas_3.sh`; the root itself in
other copies); the official split in `TrainTestIDS/IID_train.csv` and `IID_test.csv` (same script;
the in-distribution split; the OOD files are another protocol and not read).

The ID files' columns are not documented: a `BDMAP ID` column is used when there is one, else the
first column. With split files present a case in neither is rejected (`no_split`); without them
every case is `train` and a warning says so. One scan per BDMAP ID, which is also the patient id
(the release publishes no patient key across its 17 source datasets).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from radcorpora.schemas.ct import CtReport, CtVolumeFile
from radcorpora.sources.base import SourceInfo, SourceScan, cell, open_text, read_csv_rows
from radcorpora.sources.errors import SourceError

INFO = SourceInfo(
    name="abdomen-atlas-3",
    title="AbdomenAtlas 3.0",
    licence_class="restricted",
    licence=("AbdomenAtlas 3.0 (RadGPT, Johns Hopkins University): CC BY-NC-SA 4.0 per third-party notes; "
             "non-commercial use; check the Hugging Face dataset page before redistributing."),
    citation="""@article{bassi2025radgpt,
  title   = {RadGPT: Constructing 3D Image-Text Tumor Datasets},
  author  = {Bassi, Pedro R. A. S. and Yavuz, Mehmet Can and Wang, Kang and Chen, Xiaoxi and Li, Wenxuan
             and Decherchi, Sergio and Cavalli, Andrea and Yang, Yang and Yuille, Alan and Zhou, Zongwei},
  journal = {arXiv preprint arXiv:2501.04678},
  year    = {2025}
}""",
)

REPORT_TABLE = "AbdomenAtlas3.0.csv"
ID_COLUMN = "BDMAP ID"
REPORT_COLUMNS = (ID_COLUMN, "structured report", "narrative report")
EXTRA_COLUMNS = ("fusion structured report", "fusion narrative report", "radiologist note")
IMAGE_FOLDERS = ("", "image_only", "AbdomenAtlas3.0Mini", "AbdomenAtlas3.0")
SPLIT_FILES = (("train", "IID_train.csv"), ("test", "IID_test.csv"))
SCAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class AtlasScan(SourceScan[CtReport]):
    files: dict[str, str] = field(default_factory=dict)

    @property
    def reports(self) -> list[CtReport]:
        return self.records


def find_report_table(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: AbdomenAtlas folder does not exist")
    for candidate in (root / REPORT_TABLE, root / f"{REPORT_TABLE}.gz"):
        if candidate.is_file():
            return candidate
    hits = sorted(p for p in root.glob("AbdomenAtlas3.0*.csv") if "Meta" not in p.name)
    if hits:
        return hits[0]
    raise SourceError(f"{root}: no {REPORT_TABLE} found")


def read_split_ids(scan: AtlasScan, root: Path) -> dict[str, tuple[str, str]] | None:
    """BDMAP ID -> (split, "file line N") from the IID split files, None when there are none."""
    ids: dict[str, tuple[str, str]] = {}
    found = False
    for split, name in SPLIT_FILES:
        path = next((p for p in (root / "TrainTestIDS" / name, root / name) if p.is_file()), None)
        if path is None:
            continue
        found = True
        scan.files[f"{split} ids"] = str(path)
        try:
            with open_text(path) as handle:
                rows = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
            raise SourceError(f"{path}: unreadable ({exc})") from None
        if not rows:
            continue
        header = [h.strip() for h in rows[0]]
        if ID_COLUMN in header:  # a header naming the id column
            column, body, start = header.index(ID_COLUMN), rows[1:], 2
        elif header and header[0].upper().startswith("BDMAP_"):  # no header: ids from line 1
            column, body, start = 0, rows, 1
        else:  # some other header: ids in the first column
            column, body, start = 0, rows[1:], 2
        for line, row in enumerate(body, start=start):
            value = row[column].strip() if column < len(row) else ""
            if not value:
                continue
            if value in ids and ids[value][0] != split:
                scan.reject(path, line, "split_conflict", f"{value} is also in {ids[value][1]}")
                continue
            ids.setdefault(value, (split, f"{path.name} line {line}"))
    return ids if found else None


def find_volume(root: Path, scan_id: str) -> str | None:
    for folder in IMAGE_FOLDERS:
        rel = f"{folder}/{scan_id}/ct.nii.gz" if folder else f"{scan_id}/ct.nii.gz"
        if os.path.isfile(root / rel):
            return rel
    return None


def scan_abdomen_atlas(root: Path) -> AtlasScan:
    """Read the report table into one CtReport per BDMAP ID with its `ct.nii.gz`. Rows with no id,
    no report text, no CT file, a duplicate id or (with split files) no split are rejects."""
    table = find_report_table(root)
    base = table.parent
    scan = AtlasScan(info=INFO, root=base)
    scan.files["reports"] = str(table)
    splits = read_split_ids(scan, base)
    if splits is None:
        scan.warnings.append(f"{base}: no TrainTestIDS/IID_train.csv or IID_test.csv; every case is train")
    seen: dict[str, int] = {}
    for line, row in read_csv_rows(table, REPORT_COLUMNS):
        scan.counts["rows"] += 1
        scan_id = cell(row, ID_COLUMN)
        if scan_id is None:
            scan.reject(table, line, "no_scan_id")
            continue
        if not SCAN_ID.match(scan_id):
            scan.reject(table, line, "bad_scan_id", f"{scan_id!r} is not a folder name like BDMAP_00000001")
            continue
        if scan_id in seen:
            scan.reject(table, line, "duplicate_scan", f"{scan_id} already on line {seen[scan_id]}")
            continue
        structured, narrative = cell(row, "structured report"), cell(row, "narrative report")
        if structured is None and narrative is None:
            scan.reject(table, line, "no_report_text", f"{scan_id}: structured and narrative report are empty")
            continue
        if splits is None:
            split = "train"
        elif scan_id in splits:
            split = splits[scan_id][0]
        else:
            scan.reject(table, line, "no_split", f"{scan_id} is in neither IID_train.csv nor IID_test.csv")
            continue
        rel = find_volume(base, scan_id)
        if rel is None:
            scan.reject(table, line, "volume_file_missing", f"no {scan_id}/ct.nii.gz under {base}")
            continue
        seen[scan_id] = line
        extra = {c: v for c in EXTRA_COLUMNS if (v := cell(row, c)) is not None}
        scan.records.append(CtReport(
            source=INFO.name, scan_id=scan_id, patient_id=scan_id, split=split, licence_class=INFO.licence_class,
            volumes=(CtVolumeFile(volume_id=scan_id, path=rel, layout=rel.split("/")[0] if rel.count("/") > 1 else None),),
            structured_report=structured, narrative_report=narrative, extra_text=extra,
            file=str(table), row=str(line)))
    scan.records.sort(key=lambda r: (r.split, r.scan_id))
    scan.counts["scans"] = len(scan.records)
    return scan
