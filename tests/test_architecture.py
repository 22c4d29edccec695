"""The import graph of solidrl, built from the source with ast: no cycle, no upward import.

Layers (docs/architecture.md), lowest first; a module may import its own layer and the layers below:
  theory (0) <- trainer (1) <- probes core (2) <- probes.integrations (3) <- probes.check (4) <- probes.commands (5)
Every import counts, the ones inside functions too (a lazy import hides a cycle, it does not remove it).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"theory": "solidrl.theory", "trainer": "solidrl.trainer", "probes": "solidrl.probes"}


def layer(mod: str) -> int:
    """The layer of a dotted module name under solidrl."""
    parts = mod.split(".")
    if parts[1] == "theory":
        return 0
    if parts[1] == "trainer":
        return 1
    sub = parts[2] if len(parts) > 2 else ""
    return {"integrations": 3, "check": 4, "commands": 5}.get(sub, 2)


def modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in PACKAGES.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def imports_of(mod: str, path: Path, known: set[str]) -> set[str]:
    """The solidrl modules `mod` imports (resolving relative imports and `from pkg import submodule`)."""
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                head = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                head = node.module or ""
            names = [f"{head}.{a.name}" if f"{head}.{a.name}" in known else head for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n.startswith("solidrl.") and n != mod:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_the_graph_sees_relative_and_lazy_imports():
    g = graph()
    # probes/probeset.py: `from . import consistency, ...`; commands/cli.py: `from . import audit, ...`
    assert "solidrl.probes.consistency" in g["solidrl.probes.probeset"]
    assert "solidrl.probes.commands.audit" in g["solidrl.probes.commands.cli"]
    assert "solidrl.trainer.sft" in g["solidrl.trainer.loop"]  # imported inside Trainer.__init__


def test_no_upward_import():
    up = sorted(f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
                for m, deps in graph().items() for d in deps if layer(d) > layer(m))
    assert not up, "\n".join(up)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_importlib_of_our_own_modules():
    bad = []
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
                if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("solidrl"):
                    bad.append(f"{m}: import_module({node.args[0].value!r})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("mod", sorted(modules()))
def test_no_module_over_500_lines_without_a_reason(mod):
    """A module over ~500 lines says why in its docstring (a line starting 'Size:')."""
    p = modules()[mod]
    n = len(p.read_text().splitlines())
    if n > 520:
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        assert "Size:" in doc, f"{p.relative_to(ROOT)} has {n} lines and no 'Size:' reason in its docstring"
