"""The `radcorpora` console script (and `python -m radcorpora`): what a command-line process sets
before the command line is imported, then `cli.run`, then, for a build, a quick exit.

- The collector is off while the command line imports: the imports make several hundred
  thousand objects and no garbage, and each full collection on the way walked all of them again
  (~30 ms of a ~0.3 s start-up); they are then frozen (`gc.freeze`), so the collections of the
  command itself (parsing options, importing a corpus, scanning) do not walk them either.
- A `build` process runs numpy's OpenBLAS with one thread (unless OPENBLAS_NUM_THREADS is set):
  OpenBLAS starts a thread per core when numpy is imported, and each spins for ~0.2 s waiting
  for work a build never gives it (its numpy multiplies no matrices), a tenth of a 5k-image
  build's CPU, taken from whatever else the machine runs. It must be set before numpy loads.
- A `build` process ends without tearing the interpreter down (every module and object freed
  one by one, ~30 ms): once the command has returned, the exit handlers have run, the output is
  flushed and no other thread is left, `os._exit`. Every file a build writes is closed (and
  renamed into place) before its command returns.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading


def main() -> None:
    building = sys.argv[1:2] == ["build"]
    if building:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    collecting = gc.isenabled()
    gc.disable()
    try:
        from radcorpora.cli import run
    finally:
        gc.freeze()  # what the imports made lives to the end: later collections skip it
        if collecting:
            gc.enable()
    if not building:
        run()
        return
    try:
        run()
    except SystemExit as stop:
        if not (stop.code is None or isinstance(stop.code, int)):
            raise
        code = stop.code or 0
    else:
        code = 0
    quick_exit(code)


def quick_exit(code: int) -> None:
    """Exit handlers, flushed output, then `os._exit(code)`; a normal exit (which runs the exit
    handlers itself) while any other thread still runs, as its work would be cut short."""
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing more can be written anyway
            pass
    os._exit(code)
