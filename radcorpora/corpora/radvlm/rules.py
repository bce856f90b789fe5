"""Corpus rules of a radvlm build: patient split integrity across every task and source, unique
instance ids, tasks in the right configs. Row rules (boxes, turns) ran column-wise already."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow.compute as pc

from radcorpora.corpora.radvlm.records import CONFIG_RECORDS
from radcorpora.ops.image_check import ImageCheck
from radcorpora.spec.report import ValidationReport
from radcorpora.spec.rules import CorpusRules
from radcorpora.store.folder import config_shards, read_columns

RULES = {
    "unique_instance_ids": "instance ids are unique across the whole build",
    "task_matches_config": "every row's task is its config's",
    "replication_positive": "every instance has a replication count >= 1",
    "evaluation_instances_once": "test and validation splits hold each instance once (replication 1)",
    "patient_split_integrity": "no patient is in both train and test, across all tasks and sources",
}


def validate_radvlm(build: Path, report: ValidationReport, manifest: dict, image_check: ImageCheck = "full",
                    deep: bool = False) -> ValidationReport:
    split_patients: dict[str, set[str]] = defaultdict(set)
    ids = report.check("unique_instance_ids", RULES["unique_instance_ids"])
    tasks = report.check("task_matches_config", RULES["task_matches_config"])
    replicas = report.check("replication_positive", RULES["replication_positive"])
    held_out_once = report.check("evaluation_instances_once", RULES["evaluation_instances_once"])
    seen: dict[str, str] = {}
    for config in CONFIG_RECORDS:
        for split, paths in config_shards(build, config).items():
            for path in paths:
                try:
                    table = read_columns(path, ["task", "lineage.patient_id", "instances"])
                except Exception:  # unreadable shards are reported by the structure checks
                    continue
                where = path.relative_to(build)  # once per shard: messages are only formatted on failure
                split_patients[split].update(pc.unique(table.column("patient_id").combine_chunks()).to_pylist())
                for task in pc.unique(table.column("task").combine_chunks()).to_pylist():
                    tasks.expect(task == config, f"{where}: a {task} row in config {config}")
                instances = pc.list_flatten(table.column("instances").combine_chunks())
                instance_ids = pc.struct_field(instances, "id").to_pylist()
                ids.expect_unique(instance_ids, seen, str(where), what="instance id")
                factors = pc.struct_field(instances, "replication")
                bad = pc.fill_null(pc.less(factors, 1), True).to_numpy(zero_copy_only=False).nonzero()[0]
                for row in bad:
                    replicas.fail(f"{instance_ids[row]}: replication {factors[int(row)].as_py()}")
                replicas.checked += len(instances)
                if split != "train":
                    held_out_once.checked += len(instances)
                    repeated = pc.fill_null(pc.greater(factors, 1), False).to_numpy(zero_copy_only=False).nonzero()[0]
                    for row in repeated:
                        held_out_once.fail(f"{where}: {instance_ids[row]} has replication {factors[int(row)].as_py()}")
    integrity = report.check("patient_split_integrity", RULES["patient_split_integrity"])
    train, test = split_patients.get("train", set()), split_patients.get("test", set())
    integrity.checked += len(train | test)
    for patient in sorted(train & test)[:5]:
        integrity.fail(f"patient {patient} is in train and test")
    extra = len(train & test) - 5
    if extra > 0:
        integrity.violations += extra
    report.stats.update({"patients_train": len(train), "patients_test": len(test), "instances": len(seen)})
    return report


CORPUS_RULES = CorpusRules(RULES, validate_radvlm)
