"""The import layers DESIGN.md promises: the API imports nothing of the controller, the
CLI or the trainer, and neither the API nor the builders import a Kubernetes client,
Kopf, or the trainer's libraries."""

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


def test_api_and_builders_never_import_a_kubernetes_client_or_the_trainer() -> None:
    forbidden = ("kubernetes", "kopf", "torch", "transformers", "kubetune_trainer")
    # The CLI alone reaches into the trainer, for `kubetune run` (lazily, on that command).
    modules = [p for p in PACKAGE.glob("*.py") if p.name != "cli.py"]
    for path in [*modules, *(PACKAGE / "api").glob("*.py"), *(PACKAGE / "controller").glob("*.py")]:
        assert not {n for n in _imports(path) if n.startswith(forbidden)}, path.name
