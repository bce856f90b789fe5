"""The console script's start and end (radcorpora.console) and the start-up and end-of-build costs
trimmed with it: a build ends through `os._exit` only after its exit handlers ran and its output
was flushed, with the command's exit code; nothing a build needs is left unimported, and nothing
it does not need is imported (PIL for the `crc` check, the dpo corpus for the command line)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from radcorpora import console

RUN_CONSOLE = """
import atexit, os, sys
atexit.register(lambda: print("exit handlers ran; OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS"),
                              file=sys.stderr))
from radcorpora.console import main
main()
"""


def console_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_CONSOLE, *args], capture_output=True, text=True, check=False,
                          env=env)


def test_console_build_exits_with_its_code_after_exit_handlers_and_all_output(demo_source, demo_build, tmp_path):
    out = tmp_path / "out"
    done = console_run("build", "radimagenet-vqa", "--source", str(demo_source), "--out", str(out),
                       "--benchmark-images", "20", "--images-per-shard", "40", "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "exit handlers ran; OPENBLAS_NUM_THREADS 1" in done.stderr
    assert "validation: passed" in done.stdout + done.stderr  # the summary's last line reached the pipe
    shards = sorted(p.relative_to(demo_build) for p in (demo_build / "data").rglob("*.parquet"))
    assert shards and all((out / p).read_bytes() == (demo_build / p).read_bytes() for p in shards)
    assert json.loads((out / "build" / "manifest.json").read_text())["validation"]["valid"] is True

    refused = console_run("build", "radimagenet-vqa", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "nowhere" in refused.stdout + refused.stderr and "exit handlers ran" in refused.stderr


def test_other_commands_keep_a_normal_exit_and_blas_threads(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    done = console_run("--version")
    assert done.returncode == 0 and done.stdout.startswith("radcorpora ")
    assert "OPENBLAS_NUM_THREADS None" in done.stderr
    given = console_run("build", "--help", env={**__import__("os").environ, "OPENBLAS_NUM_THREADS": "3"})
    assert given.returncode == 0 and "OPENBLAS_NUM_THREADS 3" in given.stderr  # the user's setting stands


def test_quick_exit_runs_exit_handlers_and_waits_for_other_threads(monkeypatch):
    calls: list[object] = []
    monkeypatch.setattr(console.atexit, "_run_exitfuncs", lambda: calls.append("exit handlers"))
    monkeypatch.setattr(console.os, "_exit", lambda code: calls.append(("_exit", code)))
    monkeypatch.setattr(console.threading, "active_count", lambda: 1)
    console.quick_exit(3)
    assert calls == ["exit handlers", ("_exit", 3)]

    calls.clear()
    monkeypatch.setattr(console.threading, "active_count", lambda: 2)
    with pytest.raises(SystemExit) as exited:
        console.quick_exit(2)  # another thread still runs: a normal exit, which waits for it
    assert exited.value.code == 2 and calls == []  # the interpreter runs the exit handlers, once


def test_main_passes_typers_exit_codes_through(monkeypatch):
    import radcorpora.cli

    ended: list[int] = []
    monkeypatch.setattr(console, "quick_exit", ended.append)
    monkeypatch.setattr(sys, "argv", ["radcorpora", "build", "x"])
    for code in (None, 0, 2):
        def run(code=code):
            raise SystemExit(code)
        monkeypatch.setattr(radcorpora.cli, "run", run)
        console.main()
    monkeypatch.setattr(radcorpora.cli, "run", lambda: None)
    console.main()
    assert ended == [0, 0, 2, 0]

    def says(text="bad"):
        raise SystemExit(text)
    monkeypatch.setattr(radcorpora.cli, "run", says)
    with pytest.raises(SystemExit, match="bad"):  # a message exit is left to the interpreter (prints it, code 1)
        console.main()


IMPORTED = r"""
import sys
from radcorpora.cli import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in ("PIL", "radcorpora.corpora.ct_reasoning.dpo") if m in sys.modules), file=sys.stderr)
from radcorpora.ops.image_check import check_image
import zlib, struct
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))
print(check_image(png, "crc"), "PIL" in sys.modules, file=sys.stderr)
print(check_image(png, "full"), "PIL" in sys.modules, file=sys.stderr)
"""


def test_start_up_leaves_out_pil_and_the_dpo_corpus():
    done = subprocess.run([sys.executable, "-c", IMPORTED, "build", "radimagenet-vqa", "--help"],
                          capture_output=True, text=True, check=True)
    *_, modules, crc, full = done.stderr.strip().splitlines()
    assert modules == "[]", done.stderr
    assert crc == "(1, 1) False" and full == "(1, 1) True"  # PIL only for a decode


@pytest.mark.parametrize("mode", ["build", "estimate"])
def test_dpo_corpus_command_wires_the_local_sampler(mode):
    from radcorpora.commands import dpo as dpo_command
    from radcorpora.commands.corpus import CorpusGroup, EstimateGroup
    from radcorpora.corpora.ct_reasoning import dpo

    assert dpo_command.CORPORA == {dpo.CASES_CORPUS: dpo.CORPUS}  # the names the command line keeps
    dpo.LOCAL_SAMPLERS.pop("hf", None)
    group = (CorpusGroup if mode == "build" else EstimateGroup)(name=mode)
    group.generate(dpo.CORPUS)
    sampler, rest = dpo.local_sampler("hf:/some/checkpoint")
    assert sampler is dpo_command._hf_sampler and rest == "/some/checkpoint"


def test_shard_footer_is_read_again_when_the_file_changes(tmp_path):
    from radcorpora.store.folder import open_shard, read_columns, shard_footer, shard_schema

    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"id": ["a", "b"]}), path)
    first = shard_footer(path)
    assert shard_footer(path) is first and first.num_rows == 2
    pq.write_table(pa.table({"id": ["a", "b", "c"], "n": [1, 2, 3]}), path)
    assert shard_footer(path).num_rows == 3
    assert shard_schema(path).names == ["id", "n"] and open_shard(path).metadata.num_rows == 3
    assert read_columns(path, ["id"]).column("id").to_pylist() == ["a", "b", "c"]
    assert shard_schema(path).equals(pq.read_schema(path), check_metadata=True)


def test_library_versions_are_the_installed_ones():
    from radcorpora.engine.lifecycle import library_versions

    found = library_versions()
    for name in ("pyarrow", "pydantic", "huggingface_hub", "pillow"):
        assert found[name] == importlib.metadata.version(name)


ARROW_POOL = """
import sys
import pyarrow as pa
from radcorpora.engine.executors import keep_freed_memory, worker_memory
tuned = worker_memory() if sys.argv[1] == "worker" else keep_freed_memory()
print(tuned, pa.default_memory_pool().backend_name)
"""


@pytest.mark.parametrize("kind", ["worker", "command line"])
def test_arrow_buffers_come_from_the_kept_heap(kind, monkeypatch):
    """Arrow's buffers come from glibc's heap, kept for reuse (mimalloc hands freed pages back at
    once); a pool the user names with ARROW_DEFAULT_MEMORY_POOL is kept."""
    import os
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run([sys.executable, "-c", ARROW_POOL, kind], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.split() == ["True", "system"]
    chosen = subprocess.run([sys.executable, "-c", ARROW_POOL, kind], capture_output=True, text=True, check=True,
                            env={**env, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc" if pa.jemalloc_memory_pool else "mimalloc"})
    assert chosen.stdout.split()[1] != "system"
