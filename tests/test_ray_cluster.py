"""Ray past one node: a two-node cluster on the loopback address (one CPU each) builds the demo
corpus through `--ray-address`; its chunks run on both nodes and its data files are byte for byte
those of a local build. Bounded: about 10 chunks of a 163-image tree, well under a minute."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
NODE_ARGS = {"num_cpus": 1, "node_ip_address": LOOPBACK, "object_store_memory": 80 << 20}


def data_files(build: Path) -> dict[str, str]:
    return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((build / "data").rglob("*.parquet"))}


def test_two_node_cluster_runs_chunks_on_both_nodes_and_equals_local_build(demo_source, demo_build, tmp_path,
                                                                           monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'radcorpora[ray]')")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from radcorpora.corpora.radimagenet_vqa.build import make_settings
    from radcorpora.engine.executors import RAY_NODES_FILE, read_ray_nodes
    from radcorpora.registry import build

    # Ray rewrites a loopback address to the machine's IP unless it believes it runs without a
    # cluster; these keep the driver, and every process the nodes start, on 127.0.0.1. A private
    # RAY_TMPDIR keeps this cluster's address file away from any other Ray user on the machine
    # (a bare `ray.init()` elsewhere would otherwise join it). Short path: Ray's Unix sockets.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rc-ray-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    if ray.is_initialized():
        ray.shutdown()
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "include_dashboard": False})
    try:
        worker = cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes(timeout=60)
        node_ids = {cluster.head_node.node_id, worker.node_id}
        assert cluster.address.startswith(f"{LOOPBACK}:")
        assert {cluster.head_node.node_ip_address, worker.node_ip_address} == {LOOPBACK}

        out = tmp_path / "cluster"
        outcome = build("radimagenet-vqa", {"source": demo_source},  # demo_build's settings
                        make_settings(benchmark_images=20, images_per_shard=40), out, executor="ray",
                        ray_address=cluster.address)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not ray.is_initialized()  # the executor disconnects from a cluster it joined

    assert outcome.report.valid, outcome.report.summary()
    assert data_files(out) == data_files(demo_build)
    assert (out / "build/rejects.jsonl").read_bytes() == (demo_build / "build/rejects.jsonl").read_bytes()

    # One chunk per shard name (`<split>-<index>`, the same index in every config that has the split).
    chunks = {Path(rel).name.split("-of-")[0] for rel in data_files(out)}
    ran_on = read_ray_nodes(out)
    assert (out / RAY_NODES_FILE).is_file() and len(chunks) >= 4
    assert set(ran_on) == chunks
    assert set(ran_on.values()) == node_ids, "every chunk ran on one node"
    assert not (demo_build / RAY_NODES_FILE).exists()  # a local build has no such file
    assert time.monotonic() - started < 120, "cluster build took far longer than its ~20 s"
