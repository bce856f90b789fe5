"""`radcorpora preview`: the HTML report of a build. Unit tests on the page, and a headless
Chromium test that the drawn boxes sit where the row's boxes say (within a pixel)."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.publish.preview import (
    PlotSpec,
    PreviewSpec,
    find_boxes,
    iter_sample_boxes,
    render_preview,
    sample_rows,
    write_preview,
)
from radcorpora.schemas.boxes import Box
from radcorpora.schemas.common import ImageData, Lineage, Turn
from radcorpora.store.shards import ShardWriter, shard_relpath

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


# --------------------------------------------------------------------------- a hand-made build with boxes


class Instance(BaseModel):
    label: str
    boxes: list[Box]


class BoxRecord(BaseModel):
    image: ImageData
    id: str
    boxes: list[Box]
    labels: list[str]  # one per box: the parallel list labels them
    instances: list[Instance]
    conversations: list[Turn]
    view: str
    lineage: Lineage


WIDTH, HEIGHT = 640, 512  # not square: x and y scale differently in the thumbnail
FINDINGS = [  # (label, normalised box, readers)
    ("Nodule <b>&amp;", (0.18, 0.22, 0.36, 0.40), 3),
    ("Pleural effusion", (0.58, 0.55, 0.90, 0.86), 2),
]
INSTANCE = ("Cardiomegaly", (0.40, 0.45, 0.66, 0.80))


def _image(seed: int) -> bytes:
    """A dark 'radiograph' with bright blobs exactly inside the boxes, so a screenshot shows
    whether each drawn box sits on its finding."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (WIDTH, HEIGHT), 20 + seed)
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 30, WIDTH - 40, HEIGHT - 20), fill=70)
    for _, (x1, y1, x2, y2), _ in FINDINGS:
        draw.rectangle((x1 * WIDTH, y1 * HEIGHT, x2 * WIDTH - 1, y2 * HEIGHT - 1), fill=200)
    x1, y1, x2, y2 = INSTANCE[1]
    draw.ellipse((x1 * WIDTH, y1 * HEIGHT, x2 * WIDTH - 1, y2 * HEIGHT - 1), outline=255, width=3)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _record(i: int) -> BoxRecord:
    boxes = [Box.from_normalised(*xyxy, width=WIDTH, height=HEIGHT, readers=readers) for _, xyxy, readers in FINDINGS]
    text_box = "[0.05, 0.06, 0.15, 0.14]"  # in the text only: drawn dashed
    return BoxRecord(
        image=ImageData(bytes=_image(i), path=f"cxr_{i}.png"),
        id=f"cxr-{i:03d}",
        boxes=boxes,
        labels=[label for label, _, _ in FINDINGS],
        instances=[Instance(label=INSTANCE[0], boxes=[Box.from_normalised(*INSTANCE[1])])],
        conversations=[
            Turn(**{"from": "human", "value": "<image>\nWhere are the nodule and the effusion? <script>alert(1)</script>"}),
            Turn(**{"from": "gpt", "value": f"Nodule at [0.18, 0.22, 0.36, 0.4]; effusion at [0.58, 0.55, 0.9, 0.86]; "
                                            f"marker {text_box}."}),
        ],
        view="PA" if i % 2 else "AP",
        lineage=Lineage(source_dataset="hand-made", source_id=str(i), source_split="train", licence_class="public",
                        image_sha256="0" * 64),
    )


def make_box_build(root: Path, rows: int = 5) -> Path:
    build = root / "boxes-build"
    writer = ShardWriter(build / shard_relpath("default", "train", 0, 1), BoxRecord)
    for i in range(rows):
        writer.write(_record(i))
    writer.close()
    (build / "build").mkdir(parents=True)
    (build / "build" / "manifest.json").write_text(json.dumps({
        "corpus": "hand-made-boxes", "licence_class": "public", "splits": {"default": {"train": rows}},
        "rejects": {"box_outside_frame": 2, "image_missing": 1},
        "validation": {"valid": True, "checks": 1, "violations": 0, "failed_checks": [], "warnings": []},
    }))
    (build / "build" / "rejects.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in [
        {"source": "boxes.csv", "row": "7", "reason": "box_outside_frame", "detail": "x2 1.4 <beyond>"},
        {"source": "boxes.csv", "row": "9", "reason": "box_outside_frame", "detail": "y2 1.2"},
        {"source": "images/", "row": None, "reason": "image_missing", "detail": "cxr_99.png"},
    ]))
    (build / "build" / "validation.json").write_text(json.dumps({"checks": [
        {"name": "boxes_in_frame", "description": "boxes inside the image", "checked": rows, "violations": 0,
         "examples": []}]}))
    return build


@pytest.fixture(scope="module")
def box_build(tmp_path_factory) -> Path:
    return make_box_build(tmp_path_factory.mktemp("preview"))


# --------------------------------------------------------------------------- unit tests


def test_boxes_found_anywhere_in_a_row_with_labels_and_readers(box_build):
    rows = sample_rows(sorted((box_build / "data/default").glob("*.parquet")), 1, "0")
    found = find_boxes(rows[0][2])
    assert [(b.label, b.readers) for b in found] == [
        ("Nodule <b>&amp;", 3), ("Pleural effusion", 2), ("Cardiomegaly", None)]
    assert found[2].source == "instances[0].boxes[0]"
    assert found[0].matches(FINDINGS[0][1])


def test_box_build_renders_through_the_schema_default(box_build):
    page, shown = render_preview(box_build, samples=3, seed=1)
    assert shown == 3
    overlays = list(iter_sample_boxes(page))
    # three struct boxes + the box that is only in the text, per row
    assert len(overlays) == 3 * 4
    expected = [xyxy for _, xyxy, _ in FINDINGS] + [INSTANCE[1], (0.05, 0.06, 0.15, 0.14)]
    for row in range(3):
        got = [b[k] for b in overlays[4 * row:4 * row + 4] for k in ("x1", "y1", "x2", "y2")]
        assert got == pytest.approx([v for xyxy in expected for v in xyxy])
    # pixel geometry: thumbnail 384 x 307 (640 x 512 scaled), box = normalised x size
    first = re.search(r'<div class="box" style="left:([\d.]+)px;top:([\d.]+)px;width:([\d.]+)px;height:([\d.]+)px', page)
    assert first is not None
    assert [float(v) for v in first.groups()] == pytest.approx([0.18 * 384, 0.22 * 307, 0.18 * 384, 0.18 * 307], abs=0.01)
    assert 'width="384" height="307"' in page
    assert "3 readers" in page and "×3" in page
    assert "Cardiomegaly" in page
    assert 'class="box fromtext"' in page  # the text-only box, dashed
    assert page.count('class="boxtext"') == 3 * 3  # box text in the turns, coloured like its box
    # plots from the schema: box sizes, readers, view, rounds; rejects grouped with examples
    for title in ("box sizes (boxes[])", "box sizes (instances[].boxes[])", "readers agreeing per box (boxes[])",
                  "conversation rounds (conversations)", 'alt="view"'):
        assert html.escape(title, quote=True) in page or title in page
    assert "box_outside_frame" in page and "x2 1.4 &lt;beyond&gt;" in page and "cxr_99.png" in page
    assert "boxes_in_frame" in page


def test_every_data_text_is_escaped_and_nothing_is_fetched(box_build):
    page, _ = render_preview(box_build, samples=2)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Nodule <b>" not in page and "Nodule &lt;b&gt;&amp;amp;" in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "http://" not in page and "https://" not in page.replace("http://www.w3.org", "")


def test_same_build_and_seed_give_the_same_bytes_and_another_seed_other_rows(demo_build, tmp_path):
    a = write_preview(demo_build, tmp_path / "a.html", samples=3, seed=7)
    b = write_preview(demo_build, tmp_path / "b.html", samples=3, seed=7)
    c = write_preview(demo_build, tmp_path / "c.html", samples=3, seed=8)
    assert a.path.read_bytes() == b.path.read_bytes()
    rows = lambda p: re.findall(r'data-row="(\d+)"', p.read_text())
    assert rows(a.path) != rows(c.path)
    assert a.rows_shown == 3 * 5  # 3 rows of each of the five config/splits


def test_corpus_spec_plots_and_rows_of_a_real_build(demo_build, tmp_path):
    result = runner.invoke(app, ["preview", str(demo_build), "--out", str(tmp_path / "p.html"), "--samples", "2",
                                 "--config", "instruct", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "written to" in result.output
    page = (tmp_path / "p.html").read_text()
    assert "RadImageNet-VQA" in page
    for title in ("questions per type", "pathology", "region", "conversation rounds"):
        assert f'alt="{title}"' in page
    assert "instruct / train: 2 of" in page and 'id="rows-benchmark-test"' not in page
    assert '<li class="right">' in page  # a multiple-choice answer marked
    assert page.count('class="turn human"') == 2 * 2 * 9
    assert "no source rows rejected" in page


def test_cli_errors_exit_2(demo_build, tmp_path):
    for args in (["--config", "nope"], ["--split", "nope"]):
        result = runner.invoke(app, ["preview", str(demo_build), "--out", str(tmp_path / "x.html"), *args])
        assert result.exit_code == 2, result.output
        assert "nope" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["preview", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a folder" in result.output


def test_a_spec_row_renderer_and_plots_replace_the_defaults(box_build):
    def render(row, tools):
        return f'<p class="mine">{tools.escape(row["id"])}</p>' + tools.images([row["image"]], tools.find_boxes(row))

    page, _ = render_preview(box_build, samples=2, spec=PreviewSpec(
        plots=(PlotSpec("views", "view"), PlotSpec("never", "no.such.column")), render_row=render))
    assert page.count('<p class="mine">cxr-') == 2
    assert 'alt="views"' in page and 'alt="never"' not in page and "box sizes" not in page
    assert len(list(iter_sample_boxes(page))) == 2 * 3


def test_reads_only_the_sampled_row_groups(tmp_path, monkeypatch):
    """Rows come from their own row groups: whole-table reads are refused, and only as many row
    groups are read as rows are shown."""
    build = make_box_build(tmp_path, rows=200)  # 64-row groups: 4 row groups
    shard = next((build / "data/default").glob("*.parquet"))
    assert pq.ParquetFile(shard).metadata.num_row_groups == 4
    read: list[int] = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        read.append(i)
        return original(self, i, *args, **kwargs)

    def refuse(self, *args, **kwargs):
        raise AssertionError("the whole table was read")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    page, shown = render_preview(build, samples=1, seed=0, stat_rows=64)
    assert shown == 1 and len(read) == 1
    assert "64 of 200 rows (a seeded sample of row groups)" in page


# --------------------------------------------------------------------------- in a real browser


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_report_renders_in_headless_chromium_with_boxes_on_their_pixels(box_build, tmp_path):
    found = _chromium()
    if found is None:
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver); not installed here")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    report = write_preview(box_build, tmp_path / "preview.html", samples=3, seed=0).path
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400",
                "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(found[1]), options=options)
    except WebDriverException as exc:  # a broken local browser install is an environment problem, said plainly
        pytest.fail(f"chromium is installed but did not start under chromedriver: {exc}")
    try:
        driver.get(report.as_uri())
        assert driver.title.endswith("preview")
        errors = [entry for entry in driver.get_log("browser") if entry.get("level") in ("SEVERE", "ERROR")]
        assert errors == [], errors
        # every image decoded (an undecodable data URI has naturalWidth 0)
        broken = driver.execute_script(
            "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)")
        assert broken == []
        boxes = driver.find_elements(By.CSS_SELECTOR, ".frame .box")
        assert len(boxes) == 3 * 4
        for box in boxes:
            geometry = driver.execute_script(
                "const b = arguments[0], img = b.parentElement.querySelector('img');"
                "const r = b.getBoundingClientRect(), i = img.getBoundingClientRect();"
                "return [r.left - i.left, r.top - i.top, r.right - i.left, r.bottom - i.top, i.width, i.height];", box)
            left, top, right, bottom, width, height = geometry
            want = [float(box.get_attribute(f"data-{k}")) for k in ("x1", "y1", "x2", "y2")]
            assert (width, height) == (384, 307)
            assert left == pytest.approx(want[0] * width, abs=1.0)
            assert top == pytest.approx(want[1] * height, abs=1.0)
            assert right == pytest.approx(want[2] * width, abs=1.0)
            assert bottom == pytest.approx(want[3] * height, abs=1.0)
        first = driver.find_element(By.CSS_SELECTOR, ".sample")
        driver.execute_script("arguments[0].scrollIntoView()", first)
        shot = tmp_path / "preview.png"
        assert first.screenshot(str(shot))
        page_shot = tmp_path / "preview-page.png"
        driver.save_screenshot(str(page_shot))
    finally:
        driver.quit()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(shot, artifacts / "preview.png")
    shutil.copyfile(page_shot, artifacts / "preview-page.png")
    assert shot.stat().st_size > 10_000


def test_chromium_binary_answers_when_present():
    """Says which browser the browser test used (or why it skipped) in the test log."""
    found = _chromium()
    if found is None:
        pytest.skip("chromium / chromedriver not installed (apt-get install -y chromium chromium-driver)")
    version = subprocess.run([found[1], "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    assert "ChromeDriver" in version
