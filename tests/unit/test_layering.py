"""ciliumlite's import graph: no circles, and arrows that point down only.

Runtime imports only (``if TYPE_CHECKING:`` blocks are annotations, not arrows). The layers, from
the bottom: ``bpf`` (the SDK) imports nothing above it; ``datapath`` only ``bpf`` and the pure
``bgp.config`` model; the parts of ``node`` never import the facade (``node.datapath``) or the
package that re-exports it; the parts of a package split by job (``STACKS``) import only the
parts below them. Used by ``tests/unit/test_layering.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2] / "ciliumlite"
#: What each layer may import besides itself.
ALLOWED = {
    "ciliumlite.bpf": (),
    "ciliumlite.datapath": ("ciliumlite.bpf", "ciliumlite.bgp.config", "ciliumlite.bgp.errors"),
    "ciliumlite.bgp.config": ("ciliumlite.bpf", "ciliumlite.bgp.errors"),
    # The policy engine is pure Python: the kernel side (node.policy) imports it, never the reverse.
    "ciliumlite.policy": ("ciliumlite.bpf.errors",),
}
FACADE = ("ciliumlite.node", "ciliumlite.node.datapath")
#: Packages split by job into a stack of parts: a part imports only the parts before it, never the
#: package that re-exports them (nor one after it).
STACKS = {
    "ciliumlite.cluster.etcd": ("keys", "records", "client", "stream", "lease", "watch", "identities", "store"),
    "ciliumlite.bgp": ("errors", "config", "status", "proc", "bird"),
    "ciliumlite.policy": ("labels", "identity", "mapstate", "ports", "selector", "rules", "engine", "verdict"),
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.stmt]:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = [ast.Pass()]  # annotations only (ast.walk queued the old body already: walk again)
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the ciliumlite modules it imports at run time."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ciliumlite"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("ciliumlite"))
        graph[name] = {d for d in deps if d != name and not d.startswith(name + ".")}
    return graph


def problems() -> list[str]:
    """Circles and upward arrows, in words (empty: the graph is clean)."""
    graph = imports(modules())
    out = []
    for mod, deps in sorted(graph.items()):
        for layer, allowed in ALLOWED.items():
            if mod == layer or mod.startswith(layer + "."):
                out += [f"{mod} imports {d}, above {layer}" for d in sorted(deps)
                        if not d.startswith(layer) and not any(d == a or d.startswith(a + ".") for a in allowed)]
        if mod.startswith("ciliumlite.node.") and mod not in FACADE:
            out += [f"{mod} (a part) imports the facade {d}" for d in sorted(deps) if d in FACADE]
    for pkg, parts in STACKS.items():
        for i, part in enumerate(parts):
            mod = f"{pkg}.{part}"
            allowed = {f"{pkg}.{p}" for p in parts[:i]}
            out += [f"{mod} imports {d}, not a part below it in {pkg}" for d in sorted(graph.get(mod, ()))
                    if (d == pkg or d.startswith(pkg + ".")) and d not in allowed]
        listed = {f"{pkg}.{p}" for p in parts}
        out += [f"{mod} is not in the stack of {pkg} (list it in STACKS)" for mod in sorted(graph)
                if mod.startswith(pkg + ".") and mod not in listed]
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                out.append("circle: " + " -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)
    return out


def test_no_circles_and_arrows_point_down() -> None:
    assert problems() == []


def test_the_checker_sees_a_circle_and_an_upward_arrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "ciliumlite"
    (pkg / "bpf").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bpf" / "__init__.py").write_text("from ciliumlite import top\n")
    (pkg / "top.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ciliumlite.x\n"
                                "import ciliumlite.bpf\n")
    monkeypatch.setitem(globals(), "ROOT", pkg)
    found = problems()
    assert "ciliumlite.bpf imports ciliumlite.top, above ciliumlite.bpf" in found
    assert any(p.startswith("circle: ") and "ciliumlite.top" in p for p in found)
    assert not any("ciliumlite.x" in p for p in found), "TYPE_CHECKING imports are not arrows"


def test_the_checker_sees_a_part_that_imports_upward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "ciliumlite"
    (pkg / "p").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "p" / "__init__.py").write_text("from ciliumlite.p.b import B\n")
    (pkg / "p" / "a.py").write_text("from ciliumlite.p.b import B\n")
    (pkg / "p" / "b.py").write_text("from ciliumlite.p.a import A\nB = 1\n")
    (pkg / "p" / "c.py").write_text("from ciliumlite.p import B\n")
    monkeypatch.setitem(globals(), "ROOT", pkg)
    monkeypatch.setitem(globals(), "STACKS", {"ciliumlite.p": ("a", "b")})
    found = problems()
    assert "ciliumlite.p.a imports ciliumlite.p.b, not a part below it in ciliumlite.p" in found
    assert "ciliumlite.p.b imports ciliumlite.p.a, not a part below it in ciliumlite.p" not in found
    assert "ciliumlite.p.c is not in the stack of ciliumlite.p (list it in STACKS)" in found
