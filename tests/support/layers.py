"""The import rules of the project's layers and packages, checked on the source (no imports run).

Layers: `config` < `transitions` < `worker` (and nothing of the product imports `playground`,
`tests` or `bench`). Inside `worker`, each capability package may import only the packages named
in CAPABILITY_EDGES, plus the shared modules; the entry points (app, session, cli, commands) sit
above them. No module imports `worker.app` but the command line's entry, and no import cycle
exists between modules — imports under `if TYPE_CHECKING:` and inside functions count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PRODUCT = ("config", "transitions", "worker")
DEVELOPMENT = ("playground", "tests", "bench", "scripts")
LAYER_BELOW: dict[str, tuple[str, ...]] = {  # what each layer may import of the product
    "config": (),
    "transitions": ("config",),
    "worker": ("config", "transitions"),
}
# Modules of `worker` every part may use.
SHARED = frozenset({"worker.logs", "worker.backoff", "worker.progress", "worker.identity",
                    "worker.reporting", "worker.stopping"})
# Capability package -> the capability packages it may import.
CAPABILITY_EDGES: dict[str, frozenset[str]] = {
    "couch": frozenset(),
    "rapidpro": frozenset({"couch"}),
    "cht": frozenset({"couch"}),
    "feed": frozenset({"couch"}),
    "lease": frozenset({"couch"}),
    "outgoing": frozenset({"couch", "rapidpro", "feed"}),
    "status": frozenset({"couch", "rapidpro", "outgoing"}),
    "incoming": frozenset({"couch", "rapidpro"}),
    "http": frozenset({"couch", "feed", "incoming"}),
}
CAPABILITIES = frozenset(CAPABILITY_EDGES)
# Entry points and wiring: module (or package) -> what of `worker` it may import.
ENTRY_EDGES: dict[str, frozenset[str]] = {
    "worker.sdnotify": frozenset(),
    "worker.limits": frozenset(),
    "worker.session": CAPABILITIES,
    "worker.commands": CAPABILITIES | {"commands", "limits"},
    "worker.app": CAPABILITIES | {"session", "sdnotify", "limits"},
    "worker.cli": frozenset({"app", "commands"}),
    "worker.__main__": frozenset({"cli"}),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (for `from a import b`, `a.b` when that is a module)
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path, modules: set[str]) -> Iterator[Import]:
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield Import(name, candidate if candidate in modules else base, node.lineno)


def all_imports(root: Path, tops: Iterable[str] = PRODUCT + DEVELOPMENT) -> list[Import]:
    paths = [p for top in tops if (root / top).is_dir() for p in (root / top).rglob("*.py")
             if "node_modules" not in p.parts]
    modules = {module_name(root, p) for p in paths}
    return [imp for p in paths for imp in imports_of(root, p, modules)]


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _worker_part(name: str) -> str:
    """`worker.outgoing.sender` -> `outgoing`; `worker.app` -> `app`."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(imports: Iterable[Import]) -> list[str]:
    found: list[str] = []
    for imp in imports:
        source_top, target_top = _top(imp.module), _top(imp.target)
        where = f"{imp.module}:{imp.line} imports {imp.target}"
        if source_top not in PRODUCT:
            continue
        if target_top in DEVELOPMENT:
            found.append(f"{where}: the product never imports {target_top}/")
            continue
        if target_top not in PRODUCT or (target_top == source_top and source_top != "worker"):
            continue
        if target_top != source_top:
            if target_top not in LAYER_BELOW[source_top]:
                found.append(f"{where}: {source_top}/ may not import {target_top}/ (layers: "
                             "config < transitions < worker)")
            continue
        # worker -> worker
        if imp.target in SHARED or imp.target == "worker":
            continue
        source, target = _worker_part(imp.module), _worker_part(imp.target)
        if source == target:
            continue
        if target == "app" and imp.module != "worker.cli":
            found.append(f"{where}: only the command line's entry imports worker.app")
            continue
        if imp.module in SHARED:
            found.append(f"{where}: a shared module imports only shared modules")
        elif source in CAPABILITY_EDGES:
            if target not in CAPABILITY_EDGES[source]:
                allowed = ", ".join(sorted(CAPABILITY_EDGES[source])) or "none"
                found.append(f"{where}: worker/{source}/ may import only {allowed} (and the shared modules)")
        else:
            entry = next((ENTRY_EDGES[key] for key in (f"worker.{source}",) if key in ENTRY_EDGES), None)
            if entry is None:
                found.append(f"{where}: worker.{source} is in no layer (add it to tests/support/layers.py)")
            elif target not in entry:
                found.append(f"{where}: worker.{source} may not import worker.{target}")
    return found


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Import cycles between modules of the product (strongly connected components > 1)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if _top(imp.module) in PRODUCT and _top(imp.target) in PRODUCT and imp.module != imp.target:
            graph.setdefault(imp.module, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:  # Tarjan's algorithm
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
