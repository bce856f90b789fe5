"""Issue 24 item 1: `radcorpora leakage` through the CLI, on the demo builds (MIMIC patients that
radvlm trains on and mmrad-ivl evaluates on) and on small hand-made builds (a PNG and a JPEG of one
radiograph), with expected values computed here from the shards and from imagehash directly."""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections import Counter
from pathlib import Path

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.demo.cxr_drawing import draw_cxr, encode
from radcorpora.ops.phash import near_pairs, phash64
from radcorpora.schemas.identity import DEFAULT_PHASH_DISTANCE, FAMILY, IDENTITY_INDEX

runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def report_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def split_rows(build: Path, config: str, split: str) -> list[dict]:
    rows: list[dict] = []
    for shard in sorted((build / "data" / config).glob(f"{split}-*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


def table_row(output: str, train: str, held_out: str) -> list[str]:
    """The counts of one line of the printed table."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells[:2] == [train, held_out]:
            return cells[2:]
    raise AssertionError(f"no table line {train} -> {held_out} in\n{output}")


def write_build(root: Path, splits: dict[tuple[str, str], list[dict]]) -> Path:
    """A minimal build folder: one shard per (config, split), rows with `id`, `image` and
    `lineage`, and a manifest naming each shard's sha256, as the builders write them."""
    lineage = pa.struct([("source_dataset", pa.string()), ("source_id", pa.string()), ("patient_id", pa.string()),
                         ("study_id", pa.string()), ("source_split", pa.string())])
    schema = pa.schema([("id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("lineage", lineage)])
    shards = {}
    for (config, split), rows in splits.items():
        rel = f"data/{config}/{split}-00000-of-00001.parquet"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / rel)
        shards[rel] = {"rows": len(rows), "sha256": hashlib.sha256((root / rel).read_bytes()).hexdigest()}
    (root / "build").mkdir(parents=True, exist_ok=True)
    (root / "build" / "manifest.json").write_text(json.dumps({"corpus": "hand-made", "shards": shards}))
    return root


def row(rid: str, data: bytes, source: str, source_id: str, patient: str | None = None) -> dict:
    return {"id": rid, "image": {"bytes": data, "path": f"{rid}.img"},
            "lineage": {"source_dataset": source, "source_id": source_id, "patient_id": patient, "study_id": None,
                        "source_split": "train"}}


def build_demo(root: Path, names=("radimagenet-vqa", "rad-ace-cot", "radvlm", "mmrad-ivl")) -> Path:
    """The demo builds these tests read, made as `radcorpora demo` makes them (its sources, its
    settings, the offline LLM stand-in), without the corpora they do not read."""
    from radcorpora.llm.session import LLMSettings
    from radcorpora.registry import build, corpus

    for name in names:
        spec = corpus(name)
        sources = spec.demo.write_sources(root / "sources", {"images_per_class": 5})
        llm = LLMSettings(cache_path=str(root / "llm-cache.sqlite")) if spec.demo.uses_llm else None
        outcome = build(name, sources, spec.demo.settings(), root / name, llm_settings=llm)
        assert outcome.report is not None and outcome.report.valid, (name, outcome.report.summary())
    return root


FRONTAL = draw_cxr("leakage-frontal", findings=[(0.2, 0.3, 0.4, 0.5)])
LATERAL = draw_cxr("leakage-lateral", lateral=True)


def test_phash_threshold_png_jpeg_in_two_radiographs_out():
    png, jpeg = encode(FRONTAL, "PNG"), encode(FRONTAL, "JPEG")  # JPEG at quality 90
    assert png != jpeg
    by_lib = {name: imagehash.phash(Image.open(io.BytesIO(data))) for name, data in
              (("png", png), ("jpeg", jpeg), ("lateral", encode(LATERAL)))}
    assert phash64(png) == int(str(by_lib["png"]), 16)
    assert by_lib["png"] - by_lib["jpeg"] <= DEFAULT_PHASH_DISTANCE
    assert by_lib["png"] - by_lib["lateral"] > DEFAULT_PHASH_DISTANCE
    # a 16-bit PNG of the radiograph is scaled, not clipped white by Pillow's convert('L')
    wide = Image.fromarray(np.asarray(FRONTAL, dtype=np.uint16) * 257)
    buffer = io.BytesIO()
    wide.save(buffer, "PNG")
    assert (phash64(buffer.getvalue()) ^ phash64(png)).bit_count() <= DEFAULT_PHASH_DISTANCE


@pytest.mark.parametrize("max_distance", [0, 3, 6, 10])
def test_banded_search_finds_what_all_pairs_find(max_distance):
    rng = random.Random(max_distance)
    left = [rng.getrandbits(64) for _ in range(300)]
    right = [rng.getrandbits(64) for _ in range(200)]
    for k in range(120):  # planted neighbours at 0..12 bits
        flipped = left[k]
        for bit in rng.sample(range(64), k % 13):
            flipped ^= 1 << bit
        right.append(flipped)
    i, j, d = near_pairs(np.array(left, dtype=np.uint64), np.array(right, dtype=np.uint64), max_distance)
    got = {(int(a), int(b), int(c)) for a, b, c in zip(i, j, d)}
    want = {(a, b, (x ^ y).bit_count()) for a, x in enumerate(left) for b, y in enumerate(right)
            if (x ^ y).bit_count() <= max_distance}
    assert got == want and len(want) > 0


def test_namespace_table_agrees_with_radvlm():
    from radcorpora.corpora.radvlm.records import PATIENT_NAMESPACE

    assert {source: FAMILY[source] for source in PATIENT_NAMESPACE} == PATIENT_NAMESPACE


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory.mktemp("demo"))


def test_mimic_patients_radvlm_trains_on_and_mmrad_ivl_evaluates_on(demo, monkeypatch):
    monkeypatch.chdir(demo)
    result = cli("leakage", "radvlm", "mmrad-ivl", "--report", "out.jsonl")
    assert result.exit_code == 1, result.output
    cases = report_of(demo / "out.jsonl")
    # expected, from the shards: radvlm's namespaced patient ids against mmrad-ivl's subject ids
    radvlm_configs = sorted(p.name for p in (demo / "radvlm" / "data").iterdir())
    radvlm = {split: {r["lineage"]["patient_id"] for c in radvlm_configs for r in split_rows(demo / "radvlm", c, split)}
              for split in ("train", "test")}
    mmrad = {split: {"mimic:" + r["subject_id"] for r in split_rows(demo / "mmrad-ivl", "default", split)}
             for split in ("train", "test", "validation", "benchmark")}
    expected = radvlm["train"] & (mmrad["test"] | mmrad["validation"] | mmrad["benchmark"])
    backwards = mmrad["train"] & radvlm["test"]
    assert expected  # the demo's radvlm trains on MIMIC validation and train patients mmrad-ivl holds out
    patients = [c for c in cases if c["kind"] == "patient"]
    assert {c["train"]["key"] for c in patients if c["train"]["build"] == "radvlm"} == expected
    assert {c["train"]["key"] for c in patients if c["train"]["build"] == "mmrad-ivl"} == backwards
    for case in patients:  # each side names its build, config, split and rows, and the rows hold the patient
        train, held_out = case["train"], case["eval"]
        assert {train["build"], held_out["build"]} == {"radvlm", "mmrad-ivl"} and train["split"] == "train"
        assert held_out["split"] in ("test", "validation", "benchmark")
        rows = split_rows(demo / train["build"], train["config"], train["split"])
        assert all(rows[r]["lineage"]["patient_id"] == train["key"] for r in train["rows"])
        rows = split_rows(demo / held_out["build"], held_out["config"], held_out["split"])
        assert all("mimic:" + rows[r]["subject_id"] == held_out["key"] for r in held_out["rows"])
    assert table_row(result.output, "radvlm", "mmrad-ivl")[0] == str(len(expected))
    # the same MIMIC images: mmrad-ivl's first image is the source JPEG radvlm stores
    images = {c["train"]["key"] for c in cases if c["kind"] == "sha256" and c["train"]["build"] == "radvlm"}
    held = {hashlib.sha256(r["images"][0]["bytes"]).hexdigest() for s in ("test", "validation", "benchmark")
            for r in split_rows(demo / "mmrad-ivl", "default", s)}
    trained = {hashlib.sha256(r["image"]["bytes"]).hexdigest() for c in radvlm_configs
               for r in split_rows(demo / "radvlm", c, "train")}
    assert images == held & trained and images


def test_png_in_one_builds_eval_jpeg_in_anothers_train(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_build(tmp_path / "plus", {("default", "test"): [
        row("p0", encode(FRONTAL, "PNG"), "chexpert-plus", "test/patient9/study1/view1_frontal.png"),
        row("p1", encode(LATERAL, "PNG"), "padchest-gr", "lat-1")]})
    write_build(tmp_path / "jpeg", {("default", "train"): [
        row("j0", encode(LATERAL, "PNG"), "vindr-cxr", "lat-copy"),  # the same bytes as plus' p1
        row("j1", encode(FRONTAL, "JPEG"), "chexpert", "train/patient3/study1/view1_frontal.jpg")]})
    result = cli("leakage", "plus", "jpeg")
    assert result.exit_code == 1, result.output
    cases = report_of(tmp_path / "leakage.jsonl")  # the default report file, in the current folder
    assert [(c["kind"], c["train"]["build"], c["train"]["rows"], c["train"]["ids"], c["eval"]["build"],
             c["eval"]["rows"], c["eval"]["ids"]) for c in cases] == [
        ("sha256", "jpeg", [0], ["j0"], "plus", [1], ["p1"]),
        ("phash", "jpeg", [1], ["j1"], "plus", [0], ["p0"])]
    expected = imagehash.phash(Image.open(io.BytesIO(encode(FRONTAL, "JPEG")))) - \
        imagehash.phash(Image.open(io.BytesIO(encode(FRONTAL, "PNG"))))
    assert cases[1]["distance"] == expected
    assert cases[1]["train"]["config"] == cases[1]["eval"]["config"] == "default"
    assert table_row(result.output, "jpeg", "plus") == ["0", "0", "0", "1", "1"]
    # at distance 0 the JPEG is caught only where its hash did not move at all
    strict = cli("leakage", "plus", "jpeg", "--phash-distance", "0", "--report", "strict.jsonl")
    assert strict.exit_code == 1
    assert [c["kind"] for c in report_of(tmp_path / "strict.jsonl")] == ["sha256"] + ["phash"] * int(expected == 0)


def test_configs_of_one_build_compared_its_own_splits_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = encode(draw_cxr("cfg-a")), encode(LATERAL)
    write_build(tmp_path / "one", {
        ("task_a", "train"): [row("a0", a, "mimic-cxr", "dicom-1", "mimic:100")],
        ("task_a", "test"): [row("a1", a, "mimic-cxr", "dicom-1", "mimic:100")],  # same config: the builder's business
        ("task_b", "test"): [row("b0", b, "ms-cxr", "dicom-2", "mimic:100")]})  # same patient, other task
    result = cli("leakage", "one")
    assert result.exit_code == 1, result.output
    cases = report_of(tmp_path / "leakage.jsonl")
    assert [(c["kind"], c["train"]["config"], c["eval"]["config"], c["eval"]["key"]) for c in cases] == [
        ("patient", "task_a", "task_b", "mimic:100")]


def test_no_leakage_exit_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_build(tmp_path / "a", {("default", "train"): [row("a0", encode(FRONTAL), "chexpert", "x/1.jpg", "chexpert:p1")]})
    write_build(tmp_path / "b", {("default", "test"): [row("b0", encode(LATERAL), "chexpert", "x/2.jpg", "chexpert:p2")]})
    (tmp_path / "leakage.jsonl").write_text("stale\n")
    result = cli("leakage", "a", "b")
    assert result.exit_code == 0, result.output
    assert "no leakage found" in result.output
    assert (tmp_path / "leakage.jsonl").read_text() == ""


def test_bad_input_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_build(tmp_path / "a", {("default", "train"): [row("a0", encode(FRONTAL), "chexpert", "x/1.jpg")]})
    (tmp_path / "not-a-build").mkdir()
    for args, message in [(["a", "missing"], "missing: no such build folder"),
                          (["a", "not-a-build"], "build manifest missing"),
                          (["a", "./a"], "given twice"),
                          (["a", "--phash-distance", "40"], "--phash-distance must be between 0 and 16"),
                          (["a", "--report", "not-a-build"], "is a folder")]:
        result = cli("leakage", *args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert result.output.strip().count("\n") == 0 and result.output.startswith("error: "), result.output


def test_second_run_reads_the_stored_index_and_a_changed_shard_is_hashed_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_build(tmp_path / "a", {("default", "train"): [row("a0", encode(FRONTAL, "JPEG"), "chexpert", "x/1.jpg")]})
    b = write_build(tmp_path / "b", {("default", "test"): [row("b0", encode(FRONTAL), "padchest", "y")],
                                     ("default", "validation"): [row("b1", encode(LATERAL), "padchest", "z")]})
    first = cli("leakage", "a", "b")
    assert first.exit_code == 1 and "2 shards hashed" in first.output, first.output
    before = (tmp_path / "leakage.jsonl").read_text()
    assert (b / IDENTITY_INDEX).exists()
    from radcorpora.publish.push import PUSH_PATTERNS  # the index stays local

    assert IDENTITY_INDEX not in {str(p.relative_to(b)) for pattern in PUSH_PATTERNS for p in b.glob(pattern)}

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    with monkeypatch.context() as patched:
        patched.setattr(Image, "open", no_decoding)
        second = cli("leakage", "a", "b")
    assert second.exit_code == 1 and "2 shards read from the stored index" in second.output, second.output
    assert (tmp_path / "leakage.jsonl").read_text() == before

    # b's test shard rebuilt with another radiograph (the manifest left as it was): hashed again, no leak
    shard = b / "data" / "default" / "test-00000-of-00001.parquet"
    table = pq.read_table(shard)
    swapped = table.set_column(1, "image", pa.array([{"bytes": encode(LATERAL, "JPEG"), "path": "b0.img"}],
                                                    type=table.schema.field("image").type))
    pq.write_table(swapped, shard)
    third = cli("leakage", "a", "b")
    assert "1 shards read from the stored index, 1 shards hashed" in third.output, third.output
    assert third.exit_code == 0 and (tmp_path / "leakage.jsonl").read_text() == ""
    stored = pq.read_table(b / IDENTITY_INDEX).to_pylist()
    assert {r["shard"]: r["sha256"] for r in stored}["data/default/test-00000-of-00001.parquet"] == \
        hashlib.sha256(encode(LATERAL, "JPEG")).hexdigest()


def test_hashing_the_same_at_any_worker_count(demo, tmp_path, monkeypatch):
    """One task per shard on the engine's executors: 1 and 2 workers index the same lines and
    report the same cases."""
    import shutil

    from radcorpora.engine.executors import ExecutorSettings, map_tasks
    from radcorpora.ops.phash import hash_image
    from radcorpora.store.identity import load_index

    tables = []
    for workers in (1, 2):
        build = shutil.copytree(demo / "radvlm", tmp_path / f"radvlm-{workers}")
        (build / IDENTITY_INDEX).unlink(missing_ok=True)
        settings = ExecutorSettings(workers=workers)
        index = load_index(build, hash_image, lambda fn, jobs, s=settings: map_tasks(fn, jobs, s))
        assert len(index.indexed) > 1 and not index.reused
        tables.append(index.table)
    assert tables[0].equals(tables[1]) and tables[0].num_rows > 0
    monkeypatch.chdir(tmp_path)
    reports = []
    for workers in (1, 2):
        result = cli("leakage", f"radvlm-{workers}", demo / "mmrad-ivl", "--workers", workers, "--report", f"{workers}.jsonl")
        assert result.exit_code == 1, result.output
        reports.append((tmp_path / f"{workers}.jsonl").read_text().replace("radvlm-2", "radvlm-1"))
    assert reports[0] == reports[1]


EXACT = ("patient", "study", "source_id", "sha256")


def held_out_cases(report: Path, train_build: str, split: str) -> Counter:
    return Counter(c["kind"] for c in report_of(report)
                   if c["train"]["build"] == train_build and c["eval"]["split"] == split)


def test_avoid_keeps_radvlm_training_patients_out_of_mmrad_ivl_benchmark(demo, tmp_path, monkeypatch):
    """radvlm's `conversation` config trains on both patients the demo's mmrad-ivl benchmark
    draws (and leaves others for a benchmark): with --avoid, none of them is drawn."""
    import shutil

    from radcorpora.corpora.avoid import training_identities
    from radcorpora.llm.session import LLMSettings
    from radcorpora.registry import build, corpus
    from radcorpora.store.local_paths import read_local

    monkeypatch.chdir(tmp_path)
    radvlm = shutil.copytree(demo / "radvlm", tmp_path / "radvlm-conversation")
    for folder in (radvlm / "data").iterdir():
        if folder.name != "conversation":
            shutil.rmtree(folder)
    (radvlm / IDENTITY_INDEX).unlink(missing_ok=True)
    name = str(radvlm.name)
    assert cli("leakage", name, demo / "mmrad-ivl", "--report", "before.jsonl").exit_code == 1
    before = held_out_cases(tmp_path / "before.jsonl", name, "benchmark")
    assert before["patient"] > 0  # the pair leaks: the benchmark draws patients radvlm trains on
    spec = corpus("mmrad-ivl")
    avoid = training_identities(radvlm)
    settings = spec.demo.settings().model_copy(update={"avoid": avoid})
    outcome = build("mmrad-ivl", read_local(demo / "mmrad-ivl")["sources"], settings, tmp_path / "mmrad-ivl",
                    llm_settings=LLMSettings(cache_path=str(demo / "llm-cache.sqlite")))
    assert outcome.report.valid and outcome.manifest["splits"]["default"].get("benchmark", 0) > 0
    assert cli("leakage", name, "mmrad-ivl", "--report", "after.jsonl").exit_code in (0, 1)
    after = held_out_cases(tmp_path / "after.jsonl", name, "benchmark")
    # no patient (hence no study or image of one) radvlm trains on; the demo's synthetic radiographs
    # can still look alike to pHash across patients, which --avoid (patients) does not decide
    assert {k: after[k] for k in EXACT} == {k: 0 for k in EXACT}, after
    bench = split_rows(tmp_path / "mmrad-ivl", "default", "benchmark")
    assert not {"mimic:" + r["subject_id"] for r in bench} & set(avoid.patients)
    recorded = outcome.manifest["fingerprint"]["config"]["avoid"]
    assert recorded["build"] == name and recorded["patient_count"] == len(avoid.patients) > 0
    assert "patients" not in recorded and len(recorded["sha256"]) == 64  # the lists stay out of the manifest


def test_avoid_keeps_a_builds_training_images_out_of_the_radimagenet_vqa_benchmark(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench = split_rows(demo / "radimagenet-vqa", "benchmark", "test")
    taken = {r["lineage"]["source_id"]: r["image"]["bytes"] for r in bench}
    chosen = sorted(taken)[:4]  # four benchmark images some other build trains on
    write_build(tmp_path / "other", {("default", "train"): [
        row(f"o{k}", taken[s], "RadImageNet", s) for k, s in enumerate(chosen)]})
    source = read_local_sources(demo / "radimagenet-vqa")["source"]
    args = ["build", "radimagenet-vqa", "--source", source, "--benchmark-images", len({r["image"]["bytes"] for r in bench})]
    assert cli(*args, "--out", "plain").exit_code == 0
    assert cli("leakage", "other", "plain", "--report", "before.jsonl").exit_code == 1
    assert held_out_cases(tmp_path / "before.jsonl", "other", "test")["source_id"] == len(chosen)
    result = cli(*args, "--out", "avoided", "--avoid", "other")
    assert result.exit_code == 0, result.output
    cli("leakage", "other", "avoided", "--report", "after.jsonl")
    after = held_out_cases(tmp_path / "after.jsonl", "other", "test")
    assert {k: after[k] for k in EXACT} == {k: 0 for k in EXACT}, after
    kept = {r["lineage"]["source_id"] for r in split_rows(tmp_path / "avoided", "benchmark", "test")}
    assert kept and not kept & set(chosen)
    bad = cli(*args, "--out", "never", "--avoid", "missing")
    assert bad.exit_code == 2 and bad.output.strip().count("\n") == 0 and "no such build folder" in bad.output


def read_local_sources(build: Path) -> dict:
    from radcorpora.store.local_paths import read_local

    return read_local(build)["sources"]


def test_avoid_lists_stay_out_of_the_manifest_and_in_local_json():
    """The manifest (pushed) keeps only the digest and counts of --avoid's ids; build/local.json
    (never pushed) keeps the lists, and a setting read back without them is refused, not emptied."""
    from radcorpora.corpora.avoid import AvoidList

    avoid = AvoidList.of("radvlm-demo", {"mimic:p1", "mimic:p2"}, {"mimic-cxr:a.jpg"})
    public = avoid.model_dump(mode="json")
    assert "patients" not in public and public["patient_count"] == 2 and public["image_count"] == 1
    local = avoid.model_dump(mode="json", context={"local": True})
    assert local["patients"] == ["mimic:p1", "mimic:p2"] and AvoidList.model_validate(local) == avoid
    with pytest.raises(ValueError, match="give --avoid BUILD again"):
        AvoidList.model_validate(public)
    other = AvoidList.of("radvlm-demo", {"mimic:p1", "mimic:p3"}, {"mimic-cxr:a.jpg"})
    assert other.model_dump(mode="json")["sha256"] != public["sha256"]  # the fingerprint follows the ids



@pytest.mark.parametrize("corpus", ["radimagenet-vqa", "mmrad-ivl"])
def test_avoid_help_shows_no_model_repr(corpus):
    """`--avoid`'s help names what it takes, not the repr of its empty default (it printed
    "[default: build='' patients=[] ...]"); plain defaults still show."""
    result = CliRunner().invoke(app, ["build", corpus, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--avoid BUILD" in text and "patients=[]" not in text and "build=''" not in text
    assert "[default: 0]" in text  # --seed

# -- the columnar join (issue 24 item 4) against the obvious per-line reading ----------------------


@pytest.mark.parametrize("block", [1 << 16, 7])
@pytest.mark.parametrize("max_distance,tolerance", [(6, 1), (6, 2), (3, 1), (10, 1), (16, 2), (0, 0)])
def test_multi_probe_bands_find_what_all_pairs_find(max_distance, tolerance, block, monkeypatch):
    """Every pair within the distance, whatever the band scheme, probing in one block or many."""
    from radcorpora.ops import phash

    monkeypatch.setattr(phash, "_BLOCK", block)
    rng = random.Random(100 + max_distance)
    left = [rng.getrandbits(64) for _ in range(250)]
    right = [rng.getrandbits(64) for _ in range(150)]
    for k in range(150):
        flipped = left[k]
        for bit in rng.sample(range(64), k % 18):
            flipped ^= 1 << bit
        right.append(flipped)
    i, j, d = near_pairs(np.array(left, dtype=np.uint64), np.array(right, dtype=np.uint64), max_distance, tolerance)
    got = [(int(a), int(b), int(c)) for a, b, c in zip(i, j, d)]
    want = sorted((a, b, (x ^ y).bit_count()) for a, x in enumerate(left) for b, y in enumerate(right)
                  if (x ^ y).bit_count() <= max_distance)
    assert got == want and len(want) > 0


def test_band_scheme_widens_with_the_number_of_hashes():
    from radcorpora.ops.phash import choose_tolerance

    assert choose_tolerance(500, 500, 6) == 0  # 7 exact 9-bit bands: few candidates at this size
    assert choose_tolerance(50_000, 50_000, 6) == 1  # n^2 / 80 candidates would dominate: 16-bit bands, 1 flip


def test_keys_column_wise_are_the_schema_functions_keys():
    """Arrow's regexes (RE2) and Python's differ on Unicode digits and whitespace, `$` before a final
    newline, case folding: the column-wise keys must still be the scalar functions' own."""
    import pyarrow as pa

    from radcorpora.ops.leakage import identity_keys
    from radcorpora.schemas.identity import patient_key, source_key, study_key

    sources = ["mimic-cxr", "MIMIC-CXR ", "chexpert-plus", "vindr-cxr", None, "", "Unknown-Set", "gemex"]
    values = ["p10000032", "s50414267", "10000032", "mimic:p123", "chexpert:patient9", "nowhere:p1", "p12a",
              "  p77  ", "mimic:p99\n", "p\u0661\u0662", "x/1.JPG", "train/patient3/view1_frontal.jpeg", "a.png.png",
              "b.DICOM", "c.tif", "d.TIFF ", "e.jpg\n", "", None, "mimic: s42", "é.png", "pé", "MIMIC:p5", "-:x",
              "p123\u00a0", "a:b:c", "x.jpgx", "weird\tid"]
    pairs = [(s, v) for s in sources for v in values]
    column_source = pa.array([s for s, _ in pairs], pa.string())
    column_value = pa.array([v for _, v in pairs], pa.string())
    for kind, scalar in (("patient", patient_key), ("study", study_key), ("source_id", source_key)):
        got = identity_keys(kind, column_source, column_value).to_pylist()
        assert got == [scalar(s, v) for s, v in pairs], kind


def _reference_cases(builds, max_distance):
    """The join read line by line, as the definition says (the pre-columnar implementation)."""
    from collections import defaultdict

    from radcorpora.schemas.identity import KINDS, patient_key, source_key, split_role, study_key

    exact = {k: {"train": defaultdict(lambda: defaultdict(set)), "eval": defaultdict(lambda: defaultdict(set))}
             for k in EXACT}
    near = {"train": defaultdict(lambda: defaultdict(lambda: defaultdict(set))),
            "eval": defaultdict(lambda: defaultdict(lambda: defaultdict(set)))}
    ids = {}
    for number, (name, lines) in enumerate(builds):
        for line in lines:
            role = split_role(line["split"])
            if role is None:
                continue
            loc, r, source = (number, line["config"], line["split"]), line["row"], line["source_dataset"]
            ids[(loc, r)] = line["id"]
            keys = {"patient": patient_key(source, line["patient_id"]), "study": study_key(source, line["study_id"]),
                    "source_id": source_key(source, line["source_id"]), "sha256": line["sha256"]}
            for kind, key in keys.items():
                if key:
                    exact[kind][role][key][loc].add(r)
            if line["phash"] is not None and line["sha256"]:
                near[role][line["phash"]][loc][line["sha256"]].add(r)

    def side(loc, key, rows):
        rows = sorted(rows)
        return {"build": builds[loc[0]][0], "config": loc[1], "split": loc[2], "key": key, "rows": rows,
                "ids": [ids[(loc, r)] for r in rows]}

    def allowed(a, b):
        return a[0] != b[0] or a[1] != b[1]

    cases = []
    for order, kind in enumerate(EXACT):
        for key in exact[kind]["train"].keys() & exact[kind]["eval"].keys():
            for tloc, trows in exact[kind]["train"][key].items():
                for eloc, erows in exact[kind]["eval"][key].items():
                    if allowed(tloc, eloc):
                        cases.append(((order, tloc, eloc, key),
                                      {"kind": kind, "train": side(tloc, key, trows), "eval": side(eloc, key, erows)}))
    for a, tside in near["train"].items():
        for b, eside in near["eval"].items():
            d = (a ^ b).bit_count()
            if d > max_distance:
                continue
            for tloc, tshas in tside.items():
                for eloc, eshas in eside.items():
                    if not allowed(tloc, eloc):
                        continue
                    trows = {r for s, rows in tshas.items() if set(eshas) - {s} for r in rows}
                    erows = {r for s, rows in eshas.items() if set(tshas) - {s} for r in rows}
                    if trows and erows:
                        cases.append(((list(KINDS).index("phash"), tloc, eloc, f"{a:016x}{b:016x}"),
                                      {"kind": "phash", "distance": d, "train": side(tloc, f"{a:016x}", trows),
                                       "eval": side(eloc, f"{b:016x}", erows)}))
    return [c for _, c in sorted(cases, key=lambda item: item[0])]


def _random_index(seed: int, shards: int) -> tuple[list[dict], dict[str, int]]:
    """An identity index drawn from small pools, so every kind collides across builds, configs and
    splits: several images a row, rows without images, images shared by rows, pHashes a few bits
    apart with the same and with other bytes, ids that need the schema's Python functions."""
    rng = random.Random(seed)
    patients = ["p100", "p101", "mimic:p102", "chexpert:pa", "103", " p104 ", "p\u0661", "", None]
    sources = ["mimic-cxr", "mimic-cxr-jpg", "chexpert", "chexpert-plus", "vindr-cxr", None]
    base = [rng.getrandbits(64) for _ in range(6)]
    lines, rows = [], {}
    for s in range(shards):
        config, split = rng.choice(["a", "b"]), rng.choice(["train", "train", "test", "validation", "dev"])
        shard = f"data/{config}/{split}-{s:05d}-of-{shards:05d}.parquet"
        rows[shard] = rng.randint(1, 8)
        for r in range(rows[shard]):
            row = {"shard": shard, "config": config, "split": split, "row": r, "id": f"{seed}-{s}-{r}",
                   "source_dataset": rng.choice(sources), "source_id": rng.choice(["x/1.jpg", "x/1.PNG", "y", None]),
                   "patient_id": rng.choice(patients), "study_id": rng.choice(["s1", "s2", "3", None])}
            for place in range(rng.choice([0, 1, 1, 2])):
                image = rng.randrange(12)
                phash = None if image == 11 else base[image % 6] ^ (1 << rng.randrange(64) if rng.random() < 0.3 else 0)
                lines.append({**row, "image": place, "sha256": f"{image:064x}" if image != 10 else "", "phash": phash})
            if not any(line["row"] == r and line["shard"] == shard for line in lines):
                lines.append({**row, "image": -1, "sha256": None, "phash": None})
    return lines, rows


def _numbered_within_splits(lines: list[dict], rows: dict[str, int]) -> list[dict]:
    """The reference numbers rows within a split itself: shards in order."""
    offsets, seen = {}, {}
    for shard in sorted(rows):
        config, split = shard.split("/")[1], shard.rsplit("/", 1)[-1].rsplit("-", 3)[0]
        offsets[shard] = seen.get((config, split), 0)
        seen[(config, split)] = offsets[shard] + rows[shard]
    return [{**line, "row": offsets[line["shard"]] + line["row"]} for line in lines]


@pytest.mark.parametrize("seed", range(6))
def test_columnar_join_gives_the_line_by_line_cases(seed):
    """Random indexes of three builds: the same cases, in the same order, as the definition read one
    line at a time, at several pHash distances."""
    import pyarrow as pa

    from radcorpora.ops.leakage import build_rows, find_cases
    from radcorpora.schemas.identity import IDENTITY_SCHEMA

    builds, numbered = [], []
    for b in range(3):
        lines, rows = _random_index(seed * 10 + b, shards=6)
        table = pa.Table.from_pylist(lines, schema=IDENTITY_SCHEMA)
        numbered.append(build_rows(f"build{b}", table, rows))
        builds.append((f"build{b}", _numbered_within_splits(lines, rows)))
    for distance in (0, 2, 6):
        want = _reference_cases(builds, distance)
        assert {c["kind"] for c in want} >= {"patient", "sha256", "phash"}, want
        assert find_cases(numbered, distance) == want


@pytest.mark.parametrize("part_lines,hash_block", [(1, 1), (5, 3), (40, 1 << 20)])
@pytest.mark.parametrize("seed", range(3))
def test_join_in_parts_gives_the_cases_of_one_part(seed, part_lines, hash_block, tmp_path):
    """Memory flat in the images: the join partitions each exact kind by a hash of its key and
    joins a part at a time, and searches pHashes block against block. Tiny parts and blocks (many
    spilled files, one line or hash each at 1) give the line-by-line definition's cases, from
    tables and from index files read in batches."""
    from radcorpora.ops.leakage import build_rows, find_cases
    from radcorpora.schemas.identity import IDENTITY_SCHEMA

    builds, numbered = [], []
    for b in range(3):
        lines, rows = _random_index(seed * 10 + b + 100, shards=8)
        table = pa.Table.from_pylist(lines, schema=IDENTITY_SCHEMA)
        path = tmp_path / f"index{b}.parquet"
        pq.write_table(table, path, row_group_size=7)  # read back in batches across row groups
        numbered.append(build_rows(f"build{b}", path if b % 2 else table, rows))
        builds.append((f"build{b}", _numbered_within_splits(lines, rows)))
    spill = tmp_path / "spill"
    spill.mkdir()
    for distance in (0, 3, 6):
        want = _reference_cases(builds, distance)
        assert find_cases(numbered, distance, part_lines=part_lines, spill=spill, hash_block=hash_block) == want
        assert not list(spill.iterdir())  # the spilled parts are gone


def test_string_hash_depends_on_the_bytes_only():
    """A key's part must not depend on the batch it came in: the same strings hash the same from
    a slice, a chunked column, string or large_string, with empty and non-ASCII values."""
    from radcorpora.ops.leakage import _string_hash

    values = ["mimic:10000032", "", "chexpert:patient00001", "p\u0661", "x" * 300, "mimic:10000032", "a", "b"]
    whole = _string_hash(pa.array(values))
    assert whole[0] == whole[5] and len(set(whole.tolist())) == 7
    assert (_string_hash(pa.array(["pad", *values]).slice(1)) == whole).all()
    assert (_string_hash(pa.chunked_array([values[:3], values[3:]])) == whole).all()
    assert (_string_hash(pa.array(values, pa.large_string())) == whole).all()
    assert (_string_hash(pa.array(values[3:])) == whole[3:]).all()


def test_read_only_build_is_indexed_without_storing(tmp_path, monkeypatch):
    """A build whose index cannot be written is still compared: the index goes to a temporary
    file, read the same way, and the run says it was not stored."""
    from radcorpora.store import identity

    pixels = draw_cxr(np.random.default_rng(5))
    write_build(tmp_path / "a", {("default", "train"): [row("a0", encode(pixels, "PNG"), "mimic-cxr", "x/1", "p1")]})
    write_build(tmp_path / "b", {("default", "test"): [row("b0", encode(pixels, "PNG"), "mimic-cxr", "x/2", "p2")]})
    (tmp_path / "blocked").write_text("a file, so nothing can be made under it")
    monkeypatch.setattr(identity, "tmp_path_for", lambda path: tmp_path / "blocked" / path.name)
    monkeypatch.chdir(tmp_path)
    result = cli("leakage", "a", "b")
    assert result.exit_code == 1, result.output
    assert "not stored" in result.output
    assert [c["kind"] for c in report_of(tmp_path / "leakage.jsonl")] == ["sha256"]
    assert not (tmp_path / "b" / IDENTITY_INDEX).exists()


def test_join_parts_on_worker_processes_give_the_same_cases(tmp_path, monkeypatch):
    """The spilled parts and pHash block pairs run as tasks on the local pool (2 processes, as
    `radcorpora leakage --workers 2` runs them): the same cases as joined here, one after another."""
    from radcorpora.engine.executors import ExecutorSettings, map_tasks
    from radcorpora.ops import leakage
    from radcorpora.ops.leakage import build_rows, find_cases
    from radcorpora.schemas.identity import IDENTITY_SCHEMA

    builds, numbered = [], []
    for b in range(3):
        lines, rows = _random_index(200 + b, shards=8)
        numbered.append(build_rows(f"build{b}", pa.Table.from_pylist(lines, schema=IDENTITY_SCHEMA), rows))
        builds.append((f"build{b}", _numbered_within_splits(lines, rows)))
    pool = ExecutorSettings(workers=2)
    want = _reference_cases(builds, 6)
    assert {c["kind"] for c in want} >= {"patient", "sha256", "phash"}
    on_pool = {"map_tasks": lambda fn, jobs: map_tasks(fn, jobs, pool), "workers": 2}
    assert find_cases(numbered, 6, part_lines=4, hash_block=3, spill=tmp_path, **on_pool) == want
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(leakage, "MIN_PROBES", 2)  # one block pair, its probing side cut in two tasks
    assert find_cases(numbered, 6, spill=tmp_path, **on_pool) == want


def _damaged(kind: str, path: Path) -> None:
    """Spoil a stored identity index the ways a cache meets: cut short, overwritten, another
    version, another shape, lines out of shard order."""
    from radcorpora.schemas.identity import IDENTITY_META

    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(b"PAR1 not really" * 50)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        table = pq.read_table(path)
        meta = json.loads(pq.ParquetFile(path).metadata.metadata[IDENTITY_META])
        if kind == "other_version":
            meta["version"] = 999
        elif kind == "other_shape":
            table = table.drop_columns(["phash"])
        elif kind == "unsorted":  # the second shard's lines first
            table = table.take(pa.array(list(range(table.num_rows))[::-1]))
        pq.write_table(table.replace_schema_metadata({IDENTITY_META: json.dumps(meta)}), path)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "other_version", "other_shape", "unsorted"])
def test_a_damaged_stored_index_is_rebuilt(kind, tmp_path, monkeypatch):
    """The stored index is a cache: whatever happened to it, the next run hashes the images
    again (no traceback, no stale answer), reports the same cases and stores a sound index."""
    monkeypatch.chdir(tmp_path)
    write_build(tmp_path / "a", {("default", "train"): [row("a0", encode(FRONTAL, "JPEG"), "chexpert", "x/1.jpg"),
                                                        row("a1", encode(LATERAL), "chexpert", "x/2.jpg")]})
    b = write_build(tmp_path / "b", {("default", "test"): [row("b0", encode(FRONTAL), "padchest", "y")],
                                     ("default", "validation"): [row("b1", encode(LATERAL), "padchest", "z")]})
    first = cli("leakage", "a", "b")
    assert first.exit_code == 1, first.output
    want = (tmp_path / "leakage.jsonl").read_text()
    stored = pq.read_table(b / IDENTITY_INDEX)
    _damaged(kind, b / IDENTITY_INDEX)
    again = cli("leakage", "a", "b")
    assert again.exit_code == 1 and "b: 2 images; 2 shards hashed" in again.output, again.output
    assert (tmp_path / "leakage.jsonl").read_text() == want
    assert pq.read_table(b / IDENTITY_INDEX).equals(stored)


def test_join_parts_as_ray_tasks_give_the_local_report(tmp_path, monkeypatch):
    """`leakage --executor ray`: one Ray runtime hashes both builds and runs the join's parts and
    pHash block pairs as Ray tasks, sent the parts' contents (a node may not see this machine's
    temporary folder): the same report as the local run."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'radcorpora[ray]')")
    from radcorpora.ops import leakage

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(11)  # three unrelated pictures (far apart in pHash), each as JPEG and PNG
    pictures = [Image.fromarray(np.kron(rng.uniform(0, 255, (8, 8)), np.ones((16, 16))).astype(np.uint8))
                for _ in range(3)]
    write_build(tmp_path / "a", {("default", "train"): [
        row(f"a{k}", encode(p, "JPEG"), "mimic-cxr", f"x/{k}", f"p{k}") for k, p in enumerate(pictures)]})
    write_build(tmp_path / "b", {("default", "test"): [
        row(f"b{k}", encode(p), "mimic-cxr", f"y/{k}", f"p{k + 1}") for k, p in enumerate(pictures)]})
    local = cli("leakage", "a", "b", "--report", "local.jsonl")
    assert local.exit_code == 1, local.output
    monkeypatch.setattr(leakage, "PART_LINES", 1)  # every line its own spilled part
    monkeypatch.setattr(leakage, "HASH_BLOCK", 1)  # every pHash its own block
    sent = []

    def inline(job):
        sent.append(job)
        return leakage.inline(job)

    monkeypatch.setattr("radcorpora.commands.leakage.inline", inline)
    on_ray = cli("leakage", "a", "b", "--executor", "ray", "--workers", "2", "--report", "ray.jsonl")
    assert on_ray.exit_code == 1, on_ray.output
    parts = [job for job in sent if len(job) == 3]  # (places, part file, kind)
    pairs = [job for job in sent if len(job) == 4]  # (left block, right block, distance, tolerance)
    assert len(parts) >= 6 and len(pairs) == 3 * 3, (len(parts), len(pairs))  # spilled: many parts, 3x3 blocks
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
    kinds = {c["kind"] for c in report_of(tmp_path / "ray.jsonl")}
    assert {"patient", "phash"} <= kinds, kinds
