"""Where a build's CPU-bound chunks run: worker processes on this machine, or Ray tasks on a
cluster. A chunk's content depends only on its payload, so both give byte-identical shards, and
both resume the same way (chunks with an intact done-marker are skipped).

Ray needs the source and output folders on a filesystem every node sees at the same path (NFS,
Lustre, a mounted bucket); each node needs radcorpora installed in the same version. LLM stages
never run here: they stay on the driver's asyncio runner, with one cache and one rate limiter.
Which Ray node ran each chunk is written to `build/ray_nodes.json` (RAY_NODES_FILE), beside the
data and never in it, so a cluster build can be checked and its slow nodes found.
"""

from __future__ import annotations

import ctypes
import json
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from radcorpora.store import atomic
from radcorpora.store.state import ChunkResult, ChunkSpec, chunk_done, mark_done

ExecutorName = Literal["local", "ray"]
ChunkWorker = Callable[[ChunkSpec, Path], ChunkResult]
RAY_NODES_FILE = "build/ray_nodes.json"  # chunk id -> Ray node id that ran it


class ExecutorError(RuntimeError):
    """The executor cannot start (Ray missing, cluster unreachable); the message says what to do."""


@dataclass(frozen=True)
class ExecutorSettings:
    name: ExecutorName = "local"
    workers: int = 1
    ray_address: str | None = None


M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3
KEEP_FREED_BYTES = 256 << 20
HEAP_BLOCKS_UP_TO = 32 << 20  # glibc's largest allowed mmap threshold on 64-bit


def keep_freed_memory(worker: bool = False) -> bool:
    """Let this process keep up to KEEP_FREED_BYTES of freed heap instead of handing it back to
    the OS. By default glibc trims its heap as soon as 128 KB at the top is free, so each slice
    of images a chunk reads (~32 MB, freed before the next slice) was faulted in again page by
    page: that cost a third of the time spent reading a 32 KB image. Called by the command line
    for its own process; a Python caller's process is left as it is.

    A `worker` (a process that runs chunks or tasks: `worker_memory`) also takes blocks up to
    HEAP_BLOCKS_UP_TO from that heap. Setting the trim threshold stops glibc from raising its
    mmap threshold as it goes, so every block of 128 KB or more (the ~1 MB Parquet pages a shard
    writer hands to its hashing file) got fresh mmapped pages, faulted in and unmapped again:
    ~16k page faults per 64 MB shard, most of a worker's system time; with blocks up to 32 MB
    from the heap a worker's first chunk faults ~4k pages, not ~35k. Only in workers, which live
    for one build: a long-lived process (training) keeps glibc's own choice for large blocks.

    Arrow's buffers (Parquet pages, `take` results, built columns) come from that same heap too:
    pyarrow's default pool on Linux, mimalloc, hands freed pages back to the OS milliseconds after
    they are freed, so a worker faulted in fresh, zeroed pages for nearly every buffer it asked
    for (the kernel zeroing pages was a fifth of a 5k-image build's CPU). A pool chosen with
    ARROW_DEFAULT_MEMORY_POOL is left as it is.

    Returns False where the C library has no `mallopt` (macOS, Windows)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    kept = bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    if kept and worker:
        kept = bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO))
    if kept and "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())
    return kept


def worker_memory() -> bool:
    """`keep_freed_memory` for a worker process (the pools' initializer, each Ray task)."""
    return keep_freed_memory(worker=True)


def _tuned(worker: ChunkWorker, spec: ChunkSpec, out: Path) -> ChunkResult:
    """A chunk in a process that did not fork from the driver (a Ray worker)."""
    worker_memory()
    return worker(spec, out)


def _tuned_on_node(worker: ChunkWorker, spec: ChunkSpec, out: Path) -> tuple[str, ChunkResult]:
    """A Ray task: the chunk's result and the id of the node that made it."""
    import ray

    return ray.get_runtime_context().get_node_id(), _tuned(worker, spec, out)


def read_ray_nodes(out: Path) -> dict[str, str]:
    """Chunk id -> Ray node id, for the chunks Ray ran in this output folder ({} if none)."""
    try:
        return dict(json.loads((out / RAY_NODES_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _local(pending: Sequence[ChunkSpec], worker: ChunkWorker, out: Path, workers: int,
           on_started: Callable[[], None]) -> Iterator[tuple[ChunkSpec, ChunkResult]]:
    if workers <= 1 or len(pending) <= 1:
        on_started()
        for spec in pending:
            yield spec, worker(spec, out)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(pending)), initializer=worker_memory) as pool:
        futures = {pool.submit(worker, spec, out): spec for spec in pending}
        # A pool that forks starts all its workers on the first submit (it never forks again);
        # one that spawns or uses a forkserver forks nothing from this process.
        on_started()
        for future in as_completed(futures):
            yield futures[future], future.result()


@contextmanager
def ray_runtime(settings: ExecutorSettings) -> Iterator[Any]:
    """The `ray` module with a runtime up: the cluster at `ray_address`, or one of our own on this
    machine (shut down again on leaving); an ExecutorError says what to do when it cannot start."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError("--executor ray needs Ray: pip install 'radcorpora[ray]'") from exc
    started_here = False
    if not ray.is_initialized():
        try:
            if settings.ray_address:
                ray.init(address=settings.ray_address, log_to_driver=False)
            else:
                # address="local": a runtime of our own, even when a cluster started on this machine
                # (`ray start`) would otherwise be joined without being asked for; on the loopback
                # address, so nothing listens on the machine's network interfaces
                ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=max(1, settings.workers),
                         include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(_python_path())}})
        except Exception as exc:  # ConnectionError, RuntimeError, ...: Ray reports many kinds
            where = settings.ray_address or "a local Ray runtime"
            raise ExecutorError(f"cannot start Ray on {where}: {exc}") from exc
        started_here = True
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _ray(pending: Sequence[ChunkSpec], worker: ChunkWorker, out: Path, settings: ExecutorSettings,
         on_started: Callable[[], None]) -> Iterator[tuple[ChunkSpec, ChunkResult]]:
    with ray_runtime(settings) as ray:
        remote = ray.remote(num_cpus=1, max_retries=2)(_tuned_on_node)
        refs = {remote.remote(worker, spec, out): spec for spec in pending}
        on_started()
        nodes = read_ray_nodes(out)  # a resumed build keeps the nodes of the chunks it skips
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                node, result = ray.get(ref)
                nodes[refs[ref].chunk_id] = node
                atomic.write_json(out / RAY_NODES_FILE, nodes)
                yield refs[ref], result


def _task(fn: Callable[[Any], Any], payload: Any) -> Any:
    worker_memory()
    return fn(payload)


def map_tasks(fn: Callable[[Any], Any], payloads: Sequence[Any], settings: ExecutorSettings,
              prepare: Callable[[Any], Any] | None = None, window: int | None = None) -> Iterator[Any]:
    """`fn(payload)` for each payload, on worker processes here or as Ray tasks, results in payload
    order (so what is made of them does not depend on the worker count). For work that keeps no
    state in a build folder (hashing a build's images, the leakage join's parts); `fn` and the
    payloads must pickle. On Ray, `prepare` turns each payload into what is sent (e.g. a local
    file's contents, for nodes that cannot read it) just before it is submitted, and at most
    `window` tasks are in flight (default: all), so the prepared payloads are not all held at once."""
    if settings.name == "ray" and payloads:
        with ray_runtime(settings) as ray:
            remote = ray.remote(num_cpus=1, max_retries=2)(_task)
            pending: deque = deque()
            for payload in payloads:
                pending.append(remote.remote(fn, prepare(payload) if prepare else payload))
                if window and len(pending) >= window:
                    yield ray.get(pending.popleft())
            while pending:
                yield ray.get(pending.popleft())
        return
    if settings.workers <= 1 or len(payloads) <= 1:
        for payload in payloads:
            yield fn(payload)
        return
    with ProcessPoolExecutor(max_workers=min(settings.workers, len(payloads)), initializer=worker_memory) as pool:
        yield from pool.map(fn, payloads)


def _python_path() -> list[str]:
    import radcorpora

    return [str(Path(radcorpora.__file__).resolve().parent.parent)]


def run_chunks(specs: Sequence[ChunkSpec], worker: ChunkWorker, out: Path, settings: ExecutorSettings,
               on_done: Callable[[ChunkSpec, ChunkResult], None] | None = None,
               on_started: Callable[[], None] | None = None) -> list[ChunkResult]:
    """Run every chunk not already done; results come back in spec order. `on_done` is called
    for finished and for already-done chunks (progress); `on_started` once no more worker
    process will be forked from this one (the caller may start threads then)."""
    results: dict[str, ChunkResult] = {}
    pending: list[ChunkSpec] = []
    for spec in specs:
        done = chunk_done(out, spec.chunk_id)
        if done is not None:
            results[spec.chunk_id] = done
            if on_done:
                on_done(spec, done)
        else:
            pending.append(spec)
    started = on_started or (lambda: None)
    stream = _ray(pending, worker, out, settings, started) if settings.name == "ray" and pending else \
        _local(pending, worker, out, settings.workers, started)
    for spec, result in stream:
        mark_done(out, result)
        results[spec.chunk_id] = result
        if on_done:
            on_done(spec, result)
    return [results[s.chunk_id] for s in specs]
