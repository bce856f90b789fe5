"""Local paths stay local: what `publish` uploads (rejects, manifest, card) names source files
relative to the source folder given on the command line, and the build folder not at all.

The absolute paths a later command on this machine needs (`adjudicate apply` rebuilding from the
same sources and answer cache) go to `build/local.json`, which is never pushed.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from radcorpora.store import atomic

LOCAL_FILE = "build/local.json"
# `repr()` of an object names its address (`<_io.BytesIO object at 0x7f...>`): not reproducible.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")


class LocalPaths:
    """Rewrites text so that no absolute path of a source folder or of the build folder is left:
    a file under a source folder is named relative to it, the folder itself by its name."""

    def __init__(self, sources: Mapping[str, Path], out: Path):
        pairs: dict[str, str] = {}
        for root in sources.values():
            for spelling in {str(Path(root).absolute()), str(Path(root).resolve())}:
                pairs[spelling] = Path(root).name
        for spelling in {str(Path(out).absolute()), str(Path(out).resolve())}:
            pairs[spelling] = Path(out).name
        # longest first: a source folder inside the build folder (or the reverse) is named by the nearer one
        self._roots = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def text(self, value: str) -> str:
        for root, name in self._roots:
            if root in value:
                value = value.replace(root + os.sep, "").replace(root, name)
        return _ADDRESS.sub(">", value)

    def command(self, command: str) -> str:
        """A command line with each absolute path argument rewritten (a path outside every known
        folder, e.g. a cache file, is named by its file name)."""
        try:
            words = shlex.split(command)
        except ValueError:
            return self.text(command)
        out = []
        for word in words:
            flag, eq, value = word.partition("=") if word.startswith("--") and "=" in word else ("", "", word)
            value = self.text(value)
            if os.path.isabs(value):
                value = Path(value).name
            out.append(f"{flag}{eq}{value}")
        return shlex.join(out)


def write_local(out: Path, record: dict[str, Any]) -> None:
    atomic.write_json(out / LOCAL_FILE, record)


def read_local(build: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((build / LOCAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
