"""The import layers DESIGN.md promises: the API imports nothing of the controller, the
CLI or the trainer, and neither the API nor the builders, the status functions or the
planner import a Kubernetes client, Kopf, or the trainer's libraries: only the cluster
adapter and the Kopf handlers talk to a cluster."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "kubetune"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_api_imports_only_itself_and_the_catalog() -> None:
    for path in (PACKAGE / "api").glob("*.py"):
        ours = {n for n in _imports(path) if n.startswith("kubetune")}
        assert all(n.startswith(("kubetune.api", "kubetune.catalog")) for n in ours), (path.name, ours)


CLUSTER_SIDE = {"cluster.py", "handlers.py"}


def test_api_and_builders_never_import_a_kubernetes_client_or_the_trainer() -> None:
    forbidden = ("kubernetes", "kopf", "torch", "transformers", "kubetune_trainer")
    # The CLI alone reaches into the trainer, for `kubetune run` (lazily, on that command); its
    # cluster commands call the API through remote.py.
    modules = [p for p in PACKAGE.glob("*.py") if p.name not in ("cli.py", "remote.py")]
    pure = [p for p in (PACKAGE / "controller").glob("*.py") if p.name not in CLUSTER_SIDE]
    assert {p.name for p in pure} >= {"builders.py", "status.py", "reconcile.py", "observe.py", "sizing.py"}
    for path in [*modules, *(PACKAGE / "api").glob("*.py"), *pure]:
        imported = _imports(path)
        assert not {n for n in imported if n.startswith(forbidden)}, path.name
        assert not {n for n in imported if n.removeprefix("kubetune.controller.") + ".py" in CLUSTER_SIDE}, path.name
