"""The package's architecture, checked on its source: the import graph has no cycle (imports inside
functions count), the layers point one way (core <- config <- drivers <- cli), a long module is flagged
for review, and every package directory is installed."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dni_agents"
# Modules are split by idea, not by a line count: past REVIEW_LINES a module is a question for review (a
# warning in the test report: is it one idea?); past MAX_LINES, more than one reader takes in, it fails.
REVIEW_LINES = 400
MAX_LINES = 800


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, anywhere in its body (``from . import x`` counts as x)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                stem = ".".join(anchor + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # dni_agents.core.Interface -> dni_agents.core
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports_of(n, p, set(mods)) for n, p in mods.items()}


def test_the_import_graph_has_no_cycle():
    g = graph()
    # a package's __init__ re-exporting its own modules is not a cycle; a module importing its package is
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    edges = {n: {t for t in ts if not (n in packages and t.rpartition(".")[0] == n)} for n, ts in g.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for t in sorted(edges.get(n, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert "dni_agents.drivers.hier.model" in edges  # the walk saw the driver packages


def test_the_layers_point_one_way():
    g = graph()
    for n, targets in g.items():
        if n.startswith("dni_agents.core"):
            assert all(t.startswith("dni_agents.core") for t in targets), (n, targets)
        if n.startswith("dni_agents.runtime") or n in ("dni_agents.config", "dni_agents.schema",
                                                         "dni_agents.config_errors", "dni_agents.logging",
                                                         "dni_agents.data"):
            assert not any(t.startswith(("dni_agents.drivers", "dni_agents.benches", "dni_agents.cli"))
                           for t in targets), (n, targets)
        if n.startswith(("dni_agents.drivers", "dni_agents.benches")):
            assert "dni_agents.cli" not in targets, n
        if n.startswith("dni_agents.drivers."):  # a driver does not reach into another driver's package
            own = ".".join(n.split(".")[:3])
            shared = ("dni_agents.drivers.common", "dni_agents.drivers.rnn.model")  # hier: rnn's Core
            others = {t for t in targets if t.startswith("dni_agents.drivers.") and not t.startswith(own)
                      and t not in shared}
            assert not others, (n, others)


def test_long_modules_are_flagged_for_review():
    sizes = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    long = {n: s for n, s in sorted(sizes.items()) if s > REVIEW_LINES}
    if long:
        warnings.warn(f"modules over {REVIEW_LINES} lines, for review (one idea each?): {long}", stacklevel=1)
    too_long = {n: s for n, s in long.items() if s > MAX_LINES}
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"


def test_every_package_directory_is_installed():
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    found = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
