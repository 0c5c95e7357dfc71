"""The package's layers: every import (function-level ones included) goes down, never up,
never sideways into a sibling package of the same layer, and no two modules import each
other, directly or through others. `docs/architecture.md` draws the same picture."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "bilens"

# layer of each top-level subpackage; a module may import its own package or a lower layer
LAYERS = {
    "core": 0,
    "training": 1, "attribution": 1, "ablation": 1,
    "analysis": 2,
    "experiments": 3,
    "report": 4,
    "cli": 5,
}
TOP_LEVEL = {"__init__", "__main__"}     # the lazy re-exports and `python -m bilens`


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every `bilens...` module `path` imports, at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bilens"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "bilens":
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}     # `from pkg import module`
    modules = _modules()
    return {m for m in found if m in modules and m != name}


def _layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in TOP_LEVEL:
        return None
    return parts[1], LAYERS[parts[1]]


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(LAYERS), "add the new subpackage to LAYERS and docs/architecture.md"
    loose = sorted(p.name for p in ROOT.glob("*.py") if p.stem not in TOP_LEVEL)
    assert not loose, f"modules outside the layers: {loose}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_imports_go_down(name):
    here = _layer(name)
    if here is None:
        return
    bad = []
    for target in sorted(_imports(name, _modules()[name])):
        there = _layer(target)
        if there is None:
            if target != "bilens":
                bad.append(target)
            continue
        if there[0] != here[0] and there[1] >= here[1]:
            bad.append(target)
    assert not bad, f"{name} (layer {here[1]}, {here[0]}) imports upward or sideways: {bad}"


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p) - {"bilens"} for m, p in modules.items()}
    # a package imports its submodules' names by design (re-exports); those edges are no cycle
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60            # of code: the docstring is not counted
SIZE_EXCEPTIONS = {"bilens.ablation._engine.triton_ops"}   # the Triton kernels, kept together


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    length = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        length -= first.end_lineno - first.lineno + 1
    return length


@pytest.mark.parametrize("name", sorted(set(_modules()) - SIZE_EXCEPTIONS))
def test_modules_and_functions_stay_small(name):
    path = _modules()[name]
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{name}: over {MAX_MODULE_LINES} lines; split it"
    long = [f"{node.name} ({_code_lines(node)} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and _code_lines(node) > MAX_FUNCTION_LINES]
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines of code: {long}"
