"""The import layers DESIGN.md promises: the API imports nothing of the controller, the
CLI or the trainer, and neither the API nor the builders, the status functions or the
planner import a Kubernetes client, Kopf, or the trainer's libraries: only the cluster
adapter and the Kopf handlers talk to a cluster."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


# ----------------------------------------------------------------------------- declared imports

ROOT = PACKAGE.parents[1]
TRAINER = ROOT / "trainer-image" / "kubetune_trainer"
FIRST_PARTY = {"kubetune", "kubetune_trainer"}


def _third_party(path: Path) -> set[str]:
    """The top-level names of what a module imports from outside the standard library and
    this project (relative imports are ours)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition(".")[0])
    return names - FIRST_PARTY - set(sys.stdlib_module_names) - {"__future__"}


def _declared(*extras: str) -> set[str]:
    """Distributions pyproject declares: the base dependencies and the named extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]
    return {canonicalize_name(Requirement(r).name) for r in listed}


def _undeclared(paths: list[Path], declared: set[str]) -> dict[str, set[str]]:
    distributions = importlib.metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for path in paths:
        for name in _third_party(path):
            # A name no installed distribution provides cannot be declared either.
            provided = {canonicalize_name(d) for d in distributions.get(name, [name])}
            if not provided & declared:
                missing.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return missing


def test_the_trainer_declares_every_library_it_imports_in_the_train_extra() -> None:
    """A library the trainer imports that arrives only through another package's
    requirements breaks the day that package drops it."""
    assert _undeclared(sorted(TRAINER.rglob("*.py")), _declared("train")) == {}


def test_the_operator_declares_every_library_it_imports() -> None:
    """The controller needs the operator extra; the API and the offline commands the base
    install; the CLI also reaches into the trainer (kubetune run) and the cluster."""
    controller = sorted((PACKAGE / "controller").rglob("*.py"))
    assert _undeclared(controller, _declared("operator")) == {}
    reaching = [PACKAGE / "cli.py", PACKAGE / "remote.py"]
    base = [p for p in PACKAGE.rglob("*.py") if p not in controller and p not in reaching]
    assert _undeclared(base, _declared()) == {}
    assert _undeclared(reaching, _declared("operator", "train")) == {}
