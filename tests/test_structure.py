"""The import structure the design promises, read from the source (every import counts: module
level, inside functions, and type-only ones under ``if TYPE_CHECKING``)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"mesh": ROOT / "mesh", "mesh_codecs": ROOT / "codecs", "mesh_bench": ROOT / "bench"}
PYMONGO_ALLOWED = {"mesh.registry", "mesh.embedded_db"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Absolute names of the project modules (or external top-level packages) an import names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    names = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        names.append(sub if sub in MODULES else target)
    return names


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_resolve(name, node))
        graph[name] = edges
    return graph


GRAPH = _graph()


def _internal(target: str) -> str | None:
    """The project module an import lands in (a package's __init__ for `from pkg import x`)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _project_edges() -> dict[str, set[str]]:
    return {m: {t for e in deps if (t := _internal(e)) and t != m} for m, deps in GRAPH.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_the_walker_sees_real_imports_and_would_see_a_circle() -> None:
    assert "mesh.registry" in GRAPH["mesh.nodes.origin"]
    assert "pymongo" in GRAPH["mesh.registry"]
    assert "mesh.hls.window" in _project_edges()["mesh.hls.streams"]  # a relative import
    edges = _project_edges()
    edges["mesh.names"] = edges["mesh.names"] | {"mesh.broker.wire"}  # wire imports names
    assert ["mesh.broker.wire", "mesh.names"] in _cycles(edges)


def test_no_import_circles_anywhere() -> None:
    assert _cycles(_project_edges()) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("mesh_codecs")))
def test_codecs_import_nothing_from_mesh(module: str) -> None:
    bad = {t for t in GRAPH[module] if t == "mesh" or t.startswith(("mesh.", "mesh_bench"))}
    assert not bad, f"{module} imports {bad}: codecs/ must stay pure media code"


def test_the_bus_imports_no_node_hls_or_http_code() -> None:
    for module in (m for m in MODULES if m.startswith("mesh.broker")):
        bad = {t for t in GRAPH[module] if t.startswith(("mesh.nodes", "mesh.hls", "mesh.http"))}
        assert not bad, f"{module} imports {bad}"


def test_only_the_registry_and_the_embedded_db_runner_import_pymongo() -> None:
    users = {m for m, deps in GRAPH.items() if m.startswith("mesh.")
             and any(d == "pymongo" or d.startswith("pymongo.") for d in deps)}
    assert users <= PYMONGO_ALLOWED, f"pymongo imported by {sorted(users - PYMONGO_ALLOWED)}"


def test_domain_code_raises_no_http_errors() -> None:
    for module in MODULES:
        if module.startswith(("mesh.http", "mesh.hls.routes", "mesh.nodes")) or module == "mesh.cli":
            continue
        assert "mesh.http.app" not in GRAPH[module] or module.startswith("mesh_bench"), \
            f"{module} imports the HTTP layer"


def test_metrics_are_declared_only_in_mesh_metrics() -> None:
    for module, path in MODULES.items():
        if module == "mesh.metrics":
            continue
        text = path.read_text()
        for declaration in ("Counter(", "Gauge(", "Histogram(", "Summary(", "MetricFamily("):
            assert declaration not in text, f"{module} declares a metric ({declaration})"


def test_every_declared_metric_is_updated_somewhere() -> None:
    import mesh.metrics as m
    from prometheus_client import Counter, Gauge, Histogram

    declared = [name for name, value in vars(m).items()
                if isinstance(value, (Counter, Gauge, Histogram, m.SummedCounter))]
    assert "STREAMS" in declared and "RTMP_RECEIVED_BYTES" in declared
    sources = {mod: p.read_text() for mod, p in MODULES.items() if mod.startswith("mesh.") and mod != "mesh.metrics"}
    for name in declared:
        if name == "BAD_INPUT":
            users = [mod for mod, text in sources.items() if "metrics.reject(" in text]
        else:
            users = [mod for mod, text in sources.items() if f"metrics.{name}." in text]
        assert users, f"metrics.{name} is declared but nothing updates it"
