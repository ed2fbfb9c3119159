"""The package's architecture, checked on its source: no import cycles (lazy imports inside
functions count too), ``svl_env`` never imports ``agents``, and ``agents`` uses only public
``svl_env`` names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("svl_env", "agents")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, name: str, is_pkg: bool) -> list[tuple[str, list[str]]]:
    """(imported module, [names taken from it]) for every import statement, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names]))
    return out


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Module -> the project modules it imports; and every (importer, module, name) import of a
    ``_private`` name."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, path in mods.items():
        for mod, names in _imports(path, m, path.name == "__init__.py"):
            targets = [mod] if mod in mods else []
            for n in names:  # "from pkg import module"
                if f"{mod}.{n}" in mods:
                    targets.append(f"{mod}.{n}")
                elif mod in mods and n.startswith("_") and not n.startswith("__"):
                    private.append((m, mod, n))
            for t in targets:
                if t != m:
                    graph[m].add(t)
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _without_package_inits(graph):
    # a package's __init__ re-exporting its submodules is not a cycle of logic: a submodule
    # importing a sibling goes through the package, which Python resolves as the sibling itself
    mods = set(graph)
    pkgs = {m for m in mods if (ROOT / m.replace(".", "/") / "__init__.py").is_file()}
    return {m: {t for t in ts if not (t in pkgs and m.startswith(t + "."))} for m, ts in graph.items()}


def test_no_import_cycles():
    graph, _ = _graph()
    cycles = _cycles(_without_package_inits(graph))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_svl_env_never_imports_agents():
    graph, _ = _graph()
    bad = sorted((m, t) for m, ts in graph.items() if m.startswith("svl_env") for t in ts if t.startswith("agents"))
    assert not bad, f"svl_env imports agents: {bad}"


def test_agents_use_only_public_svl_env_names():
    _, private = _graph()
    bad = sorted((m, f"{mod}.{n}") for m, mod, n in private if m.startswith("agents") and mod.startswith("svl_env"))
    assert not bad, f"agents import private svl_env names: {bad}"


def test_cycle_finder_finds_a_cycle():
    # the check above can fail: a two-module loop and a three-module loop are both reported
    g = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": set()}
    assert sorted(map(tuple, _cycles(g))) == [("a", "b"), ("c", "d", "e")]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_module_over_500_lines(pkg):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
