"""The shape of the code holds: each layer imports only the layers below it (function-level
imports included), and no module imports itself through others (no import cycle)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import radcorpora

ROOT = Path(radcorpora.__file__).parent
# Each layer may import only the layers listed (and itself): docs/adding-a-corpus.md draws it.
BASE = {"schemas"}
LAYERS: dict[str, set[str]] = {
    "schemas": set(),
    "sources": BASE,
    "ops": BASE,
    "prompts": BASE,
    "store": BASE,
    "llm": BASE | {"prompts", "store"},
    "spec": BASE | {"store"},
    "demo": BASE | {"ops", "sources", "store"},
    "validators": BASE | {"ops", "store", "llm", "spec"},
    "publish": BASE | {"ops", "store", "llm", "spec"},
    "mix": BASE | {"ops", "store", "spec", "publish"},
    "corpora": BASE | {"sources", "ops", "prompts", "store", "llm", "spec", "demo", "validators", "publish"},
    "reference_models": BASE | {"ops", "store", "llm", "prompts", "spec", "publish", "corpora"},
    "engine": BASE | {"ops", "store", "llm", "prompts", "spec", "validators", "publish", "reference_models"},
    "testing": BASE | {"llm", "prompts", "store"},
    "registry": BASE | {"spec", "corpora", "mix", "engine", "validators", "publish", "store", "reference_models"},
    "commands": BASE | {"sources", "ops", "prompts", "store", "llm", "spec", "demo", "validators", "publish",
                        "corpora", "reference_models", "engine", "registry", "mix"},
    "cli": {"registry", "engine", "commands"},
    "console": {"cli"},
    "__main__": {"console"},
    "__init__": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every radcorpora module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    inside = path.is_relative_to(ROOT)
    package = "" if not inside else module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from radcorpora.corpora.radvlm import build` names a module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if module_path(candidate) else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name == "radcorpora" or name.startswith("radcorpora.")}


def module_path(name: str) -> Path | None:
    relative = Path(*name.split(".")[1:])
    for candidate in (ROOT / relative.with_suffix(".py"), ROOT / relative / "__init__.py"):
        if name.startswith("radcorpora.") and candidate.exists():
            return candidate
    return None


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@functools.cache
def all_modules() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def test_every_module_is_in_a_layer():
    assert {layer_of(m) for m in all_modules()} <= set(LAYERS)


def test_no_module_imports_from_a_layer_above_its_own():
    offenders = []
    for module, imported in sorted(all_modules().items()):
        layer = layer_of(module)
        bad = sorted({layer_of(i) for i in imported} - LAYERS[layer] - {layer, "__init__"})  # __version__
        if bad:
            offenders.append(f"{module} -> {bad}")
    assert offenders == []


def test_no_import_cycles():
    modules = all_modules()
    graph = {m: {i for i in imported if i in modules and i != "radcorpora"} for m, imported in modules.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checker_sees_function_level_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from radcorpora.engine import lifecycle\n    import radcorpora.cli\n")
    assert imports_of(source) >= {"radcorpora.engine.lifecycle", "radcorpora.cli"}
