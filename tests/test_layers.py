"""The layer rules of ARCHITECTURE.md, checked on the source: imports run one way.

    cli, bench → deployments, pipelines → api → auth, storage → diagnosis, knowledge → hydraulics → configs

A module may import its own layer's and lower layers' packages, never a higher one;
inside a layer, ``storage`` does not import ``auth`` and ``deployments`` and
``pipelines`` do not import each other. No two modules of a package import each
other (directly or round a longer loop), no router imports another router, and
everything in ``deployments/`` is Ray Serve code (library code lives below it).
Imports inside functions count: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    {"cli", "bench"},
    {"deployments", "pipelines"},
    {"api"},
    {"auth", "storage"},
    {"diagnosis", "knowledge"},
    {"hydraulics"},
    {"configs"},
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
SAME_LAYER_FORBIDDEN = {
    ("storage", "auth"),
    ("deployments", "pipelines"),
    ("pipelines", "deployments"),
    ("cli", "bench"),
    ("bench", "cli"),
    ("knowledge", "diagnosis"),
    ("diagnosis", "knowledge"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in RANK for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports (the longest known prefix of each imported name)."""
    found = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for k in range(len(parts), 0, -1):
                candidate = ".".join(parts[:k])
                if candidate in known:
                    found.add(candidate)
                    break
    return found


MODULES = project_modules()
GRAPH = {name: imports_of(path, set(MODULES)) - {name} for name, path in MODULES.items()}


def test_the_walk_sees_the_project():
    assert {"api.application", "deployments.builder", "diagnosis.voting", "hydraulics.features"} <= set(GRAPH)
    assert "diagnosis.profiles" in GRAPH["deployments.diagnosis_ensemble"]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        package = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if RANK[other] < RANK[package] or (package, other) in SAME_LAYER_FORBIDDEN:
                bad.append(f"{module} imports {target}")
    return sorted(bad)


def test_imports_run_down_the_layers():
    assert layer_violations(GRAPH) == []


def test_the_check_catches_an_upward_import():
    assert layer_violations(
        {"api.routers.diagnostics": {"deployments.diagnosis_ensemble"}, "storage.db": {"auth.service"}}
    ) == ["api.routers.diagnostics imports deployments.diagnosis_ensemble", "storage.db imports auth.service"]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    # A package's __init__ importing its own modules is not a cycle between files.
    graph = {
        m: {t for t in ts if not (t == m.rsplit(".", 1)[0] and MODULES[t].name == "__init__.py")}
        for m, ts in GRAPH.items()
    }
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]


def test_no_router_imports_another_router():
    routers = {m for m in GRAPH if m.startswith("api.routers.")}
    assert sorted(f"{m} imports {t}" for m in routers for t in GRAPH[m] & routers) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("deployments.")))
def test_deployments_hold_only_serve_code(module):
    """Library code (anything that runs without Ray Serve) lives in a lower layer."""
    path = MODULES[module]
    if path.name == "__init__.py":
        return
    text = path.read_text()
    assert "from ray import serve" in text or "from ray.serve" in text, f"{module} is not Serve code"


def test_no_two_files_share_a_name():
    """Each path says what it holds. The one convention: a resource's router, schemas and
    repository share the resource's name (FastAPI's full-stack template)."""
    per_resource = ("api/routers/", "api/schemas/", "storage/repositories/")
    by_name = defaultdict(list)
    for path in MODULES.values():
        rel = path.relative_to(ROOT).as_posix()
        if path.name != "__init__.py" and not rel.startswith(per_resource) and "/migrations/" not in rel:
            by_name[path.name].append(rel)
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}
