"""radimagenet-vqa's corpus rules counted column-wise (Arrow group-by) give the report a
row-by-row count gives, on the demo build and on benchmarks broken in the ways a rule exists for."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from radcorpora.corpora.radimagenet_vqa import rules
from radcorpora.corpora.radimagenet_vqa.records import QUESTION_IDS
from radcorpora.spec.report import ValidationReport


def row_by_row(build, manifest) -> dict:
    """The rules as the build checked them before (one Python dict per benchmark row)."""
    report = ValidationReport(corpus="radimagenet-vqa")
    leak = report.check("split_disjoint", rules.RULES["split_disjoint"])
    sources_of_split: dict[str, set] = defaultdict(set)
    questions: dict[str, Counter] = defaultdict(Counter)
    strata: Counter = Counter()
    for config in ("alignment", "instruct", "benchmark"):
        for path in sorted((build / "data" / config).glob("*.parquet")):
            split = path.name.split("-")[0]
            table = pq.read_table(path, columns=["lineage", *(["metadata"] if config == "benchmark" else [])])
            sources = [row["source_id"] for row in table.column("lineage").to_pylist()]
            sources_of_split[split].update(sources)
            if config == "benchmark":
                for source, meta in zip(sources, table.column("metadata").to_pylist()):
                    questions[source][meta["question_id"]] += 1
                    if meta["question_id"] == QUESTION_IDS[0]:
                        strata[f"{meta['location']}|{meta['pathology']}"] += 1
    splits = sorted(sources_of_split)
    for i, first in enumerate(splits):
        leak.checked += len(sources_of_split[first])
        for second in splits[i + 1:]:
            for source in sorted(sources_of_split[first] & sources_of_split[second])[:5]:
                leak.fail(f"{source} is in both {first} and {second}")
    nine = report.check("benchmark_nine_questions", rules.RULES["benchmark_nine_questions"])
    for source, per_id in sorted(questions.items()):
        nine.expect(dict(per_id) == dict.fromkeys(QUESTION_IDS, 1), f"{source}: questions {dict(per_id)}")
    rules._check_stratification(manifest, strata, report)
    report.stats.update({"benchmark_images": sum(strata.values())})
    return report.model_dump()


def replace_leaf(table: pa.Table, column: str, leaf: str, values: list) -> pa.Table:
    struct = table.column(column).combine_chunks()
    children = [pa.array(values, pa.string()) if f.name == leaf else struct.field(i) for i, f in enumerate(struct.type)]
    return table.set_column(table.schema.get_field_index(column), column,
                            pa.StructArray.from_arrays(children, fields=list(struct.type)))


def broken(table: pa.Table, how: str, train_source: str) -> pa.Table:
    if how == "row_missing":
        return table.slice(1)
    if how == "row_repeated":
        return pa.concat_tables([table, table.slice(3, 2)])
    ids = table.column("metadata").combine_chunks().field("question_id").to_pylist()
    if how in ("unknown_id", "null_id"):
        ids[4] = "bogus" if how == "unknown_id" else None
        ids[13] = ids[12]
        return replace_leaf(table, "metadata", "question_id", ids)
    sources = table.column("lineage").combine_chunks().field("source_id").to_pylist()
    sources[0] = train_source  # a training image in the benchmark, with one question
    return replace_leaf(table, "lineage", "source_id", sources)


@pytest.mark.parametrize("how", ["intact", "row_missing", "row_repeated", "unknown_id", "null_id", "train_image"])
def test_column_wise_rules_report_what_row_by_row_counting_reports(demo_build, tmp_path, how):
    build = demo_build
    if how != "intact":
        build = tmp_path / "build"
        shutil.copytree(demo_build, build)
        shard = min((build / "data" / "benchmark").glob("*.parquet"))
        train = min((build / "data" / "alignment").glob("train-*.parquet"))
        train_source = pq.read_table(train, columns=["lineage"]).column("lineage")[0].as_py()["source_id"]
        pq.write_table(broken(pq.read_table(shard), how, train_source), shard)
    manifest = json.loads((build / "build" / "manifest.json").read_text())
    got = rules._corpus_rules(build, ValidationReport(corpus="radimagenet-vqa"), manifest).model_dump()
    assert got == row_by_row(build, manifest)
    nine = next(c for c in got["checks"] if c["name"] == "benchmark_nine_questions")
    assert (nine["violations"] == 0) == (how == "intact")
