"""Layering of the LLM engine: what `radcorpora/llm` may import, and that test equipment
(`radcorpora/testing`) stays out of library code."""

from __future__ import annotations

import ast
from pathlib import Path

import radcorpora

ROOT = Path(radcorpora.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_code_never_imports_test_equipment():
    offenders = [f"{path.relative_to(ROOT)}: {name}"
                 for path in ROOT.rglob("*.py") if "testing" not in path.relative_to(ROOT).parts
                 for name in _imports(path) if name == "radcorpora.testing" or name.startswith("radcorpora.testing.")]
    assert offenders == []
    assert not (ROOT / "llm" / "fake_server.py").exists()


