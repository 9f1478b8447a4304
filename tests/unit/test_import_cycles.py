"""No import cycle inside popwatch/: the module graph (every import, at module level or inside a
function, except those under ``if TYPE_CHECKING:``) must be acyclic."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "popwatch"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    if hasattr(n, "lineno"):
                        skip.add(n.lineno)
    return skip


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    out: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                if node.level:
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != mod:
                    out[mod].add(t)
    return out


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(g, white)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = grey
        stack.append(n)
        for m in sorted(g[n]):
            if colour[m] == grey:
                return [*stack[stack.index(m):], m]
            if colour[m] == white:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        colour[n] = black
        return None

    for n in sorted(g):
        if colour[n] == white:
            c = visit(n)
            if c:
                return c
    return None


def test_the_graph_is_read() -> None:
    g = graph()
    assert "popwatch.config" in g["popwatch.crowdsec.bridge"]
    assert "popwatch.firewall.base" in g["popwatch.firewall.kernel"]


def test_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_popwatch() -> None:
    cycle = find_cycle(graph())
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))
