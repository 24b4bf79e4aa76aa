"""Dependencies point one way. The layers, bottom to top:

    engine  <-  cluster (floor: env, Ray environment, resources)  <-  sharding
            <-  deployments, autoscale (side by side)  <-  autoscale/sim (the fleet
            simulator)  <-  cluster/commands (the CLI)

A module may import its own layer and the layers below it, never one above. The engine
imports neither Ray nor any other layer; folders form no import cycle, nor do modules; the
bundled model's training code is imported by nothing that serves; deployments/ and autoscale/
import `engine` itself (its facade), never an engine submodule. The fleet simulator
(autoscale/sim) is the exception: it runs the engine's own scheduler, block manager and
step shapes with the forward replaced, so it builds them from the engine's modules, and it
reads the serving config (deployments) and runs the router and autoscaler (autoscale).
Imports are read from the source (ast): lazy imports inside functions and type-only ones
(`if TYPE_CHECKING:`) are dependencies all the same and count. Nothing here is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "cluster", "sharding", "deployments", "autoscale")
CLI = "cluster/commands"
CLUSTER_FLOOR = "cluster"  # every cluster module outside cluster/commands
SIMULATOR = "autoscale/sim"
# layer -> height; a module may import layers of its height or lower
LAYER_HEIGHTS = {
    "engine": 0,
    CLUSTER_FLOOR: 1,
    "sharding": 2,
    "deployments": 3,
    "autoscale": 3,
    SIMULATOR: 4,
    CLI: 5,
}
ENGINE_FORBIDDEN = ("sharding", "ray", "deployments", "cluster", "autoscale")
FACADE_ONLY = ("deployments", "autoscale")  # layers that reach the engine through `engine` alone
TRAINING_MODULES = (
    "engine.assets.train",
    "engine.assets.training",
    "engine.assets.smollm2_draft.build",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def source_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports anywhere (functions included).
    `from pkg import name` counts as pkg.name when that is a module, else as pkg."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if is_module(full) else base)
    return found


def layer_of(module: str) -> str | None:
    """The layer a module belongs to; None outside the project (stdlib, third party)."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if top == "cluster":
        return CLI if module.startswith("cluster.commands") else CLUSTER_FLOOR
    if module == "autoscale.sim" or module.startswith("autoscale.sim."):
        return SIMULATOR
    return top


def import_edges() -> list[tuple[str, str]]:
    """(importer, imported) for every import of one project module by another."""
    return [
        (module_name(path), target)
        for path in source_files()
        for target in sorted(imported_modules(path))
        if layer_of(target) is not None
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # node -> "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_every_package_is_scanned():
    modules = {module_name(p) for p in source_files()}
    assert {"engine.llm_engine", "sharding.executor", "deployments.server"} <= modules
    assert any(m.startswith("cluster.commands.") for m in modules)


def test_the_engine_imports_no_other_layer_and_no_ray():
    bad = [
        f"{module} imports {target}"
        for path in source_files()
        if (module := module_name(path)).split(".")[0] == "engine"
        for target in sorted(imported_modules(path))
        if target.split(".")[0] in ENGINE_FORBIDDEN
    ]
    assert not bad, "\n".join(bad)


def facade_names() -> set[str]:
    """The names `engine` exports: the keys of its _EXPORTS (read, not imported)."""
    tree = ast.parse((ROOT / "engine" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_EXPORTS":
            return set(ast.literal_eval(node.value))
    raise AssertionError("engine/__init__.py has no _EXPORTS")


def test_serving_layers_use_only_the_engine_facade():
    exported = facade_names()
    bad = [
        f"{importer} imports {target}; import its names from `engine` (engine.__all__)"
        for importer, target in import_edges()
        if layer_of(importer) in FACADE_ONLY and target.startswith("engine.")
    ]
    for path in source_files():
        if layer_of(module_name(path)) not in FACADE_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "engine" and not node.level:
                bad += [
                    f"{module_name(path)} imports engine.{alias.name}, which engine does not export"
                    for alias in node.names
                    if alias.name not in exported
                ]
    assert not bad, "\n".join(bad)


def test_imports_point_down_the_layers():
    bad = [
        f"{importer} ({layer_of(importer)}) imports {target} ({layer_of(target)})"
        for importer, target in import_edges()
        if LAYER_HEIGHTS[layer_of(target)] > LAYER_HEIGHTS[layer_of(importer)]
    ]
    assert not bad, "imports that point up a layer:\n" + "\n".join(bad)


def test_folders_form_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for importer, target in import_edges():
        source, dest = layer_of(importer), layer_of(target)
        if source != dest:
            graph.setdefault(source, set()).add(dest)
    assert find_cycle(graph) is None, f"folder import cycle: {' -> '.join(find_cycle(graph))}"


def test_modules_form_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for importer, target in import_edges():
        if importer != target:
            graph.setdefault(importer, set()).add(target)
    cycle = find_cycle(graph)
    assert cycle is None, f"module import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("training", TRAINING_MODULES)
def test_training_code_is_imported_only_by_training_code(training):
    bad = [
        f"{importer} imports {target}"
        for importer, target in import_edges()
        if (target == training or target.startswith(f"{training}."))
        and not importer.startswith(TRAINING_MODULES)
    ]
    assert not bad, "\n".join(bad)
