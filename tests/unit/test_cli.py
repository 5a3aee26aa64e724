from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from kubetune.cli import cli
from kubetune.contract import RunSummary
from kubetune.crd import CRD_FILE


def _write(tmp_path: Path, body: Any, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


def test_validate_accepts_a_valid_manifest(tmp_path: Path, job: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli, ["validate", str(_write(tmp_path, job))])

    assert result.exit_code == 0, result.output
    assert "valid   " in result.output
    assert "1 FineTuneJob manifest(s) checked, 0 invalid" in result.output


def test_validate_lists_problems_by_path_and_exits_1(tmp_path: Path, job: dict[str, Any]) -> None:
    job["spec"]["method"] = {"type": "full", "lora": {"r": 4}}
    job["spec"]["training"] = {"epochs": 1, "maxSteps": 5}

    result = CliRunner().invoke(cli, ["validate", str(_write(tmp_path, job))])

    assert result.exit_code == 1
    assert "INVALID" in result.output and "2 problems" in result.output
    assert "  - spec.method.lora: full fine-tuning trains every weight" in result.output
    assert "  - spec.training.epochs: set epochs or maxSteps, not both" in result.output


def test_validate_reports_unreadable_yaml_and_goes_on(tmp_path: Path, job: dict[str, Any]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    good = _write(tmp_path, job, "good.yaml")

    result = CliRunner().invoke(cli, ["validate", str(bad), str(good)])

    assert result.exit_code == 1
    assert "bad.yaml: line 2" in result.output
    assert "valid   " in result.output


def test_crd_command_prints_the_committed_crd(repo: Path) -> None:
    result = CliRunner().invoke(cli, ["crd"])

    assert result.exit_code == 0
    assert result.output == (repo / CRD_FILE).read_text()


def test_presets_command_lists_phi3(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["presets"])

    assert result.exit_code == 0
    assert "phi-3-mini-4k-instruct" in result.output
    assert "microsoft/Phi-3-mini-4k-instruct" in result.output


def test_the_same_commands_work_as_a_kubectl_plugin() -> None:
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.value.startswith("kubetune.")}

    assert scripts == {"kubetune": "kubetune.cli:main", "kubectl-finetune": "kubetune.cli:main"}


def test_render_shows_an_auto_sized_job_as_the_operator_would_create_it(
    tmp_path: Path, job: dict[str, Any], monkeypatch: Any
) -> None:
    job["spec"]["resources"] = {"accelerators": "auto"}
    profiles = '[{"name": "a100", "resource": "nvidia.com/gpu", "memoryGiB": 80, "perNode": 8}]'
    monkeypatch.setenv("KUBETUNE_ACCELERATOR_PROFILES", profiles)
    monkeypatch.setenv("KUBETUNE_DEFAULT_QUEUE", "shared")

    result = CliRunner().invoke(cli, ["render", str(_write(tmp_path, job))])

    assert result.exit_code == 0, result.output
    training = next(d for d in yaml.safe_load_all(result.output) if d["metadata"]["name"] == "demo-a1")
    assert training["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert training["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "shared"

    monkeypatch.setenv("KUBETUNE_ACCELERATOR_PROFILES", "[{")
    refused = CliRunner().invoke(cli, ["render", str(_write(tmp_path, job))])
    assert refused.exit_code == 1 and "KUBETUNE_ACCELERATOR_PROFILES is not JSON" in refused.output


def _url_job(tmp_path: Path, job: dict[str, Any], url: str) -> Path:
    job["spec"]["model"] = {"pvc": {"claimName": "models", "path": "none"}}
    job["spec"]["dataset"] = {"urls": [{"url": url}], "format": "instruction"}
    job["spec"]["resources"] = {"accelerators": 0}
    return _write(tmp_path, job)


def test_run_refuses_a_dataset_url_on_a_private_network(tmp_path: Path, job: dict[str, Any]) -> None:
    manifest = _url_job(tmp_path, job, "https://10.255.255.1/train.jsonl")

    result = CliRunner().invoke(cli, ["run", str(manifest), "--volumes", str(tmp_path / "volumes")])

    # Refused while reading the manifest, before a model is loaded or a process started.
    assert result.exit_code == 1, result.output
    assert "spec.dataset.urls[0].url: the trainer refuses to fetch https://10.255.255.1/train.jsonl" in result.output
    assert "a private address (in 10.0.0.0/8)" in result.output
    assert "--allow-network" in result.output


def test_run_allow_network_lets_the_trainer_reach_a_listed_network(tmp_path: Path, job: dict[str, Any]) -> None:
    # Port 1 on loopback: nothing listens, so once allowed the download fails at once.
    manifest = _url_job(tmp_path, job, "https://127.0.0.1:1/train.jsonl")
    args = ["run", str(manifest), "--volumes", str(tmp_path / "volumes")]

    refused = CliRunner().invoke(cli, args)
    allowed = CliRunner().invoke(cli, [*args, "--allow-network", "10.0.0.0/8", "--allow-network", "127.0.0.0/8"])

    assert "its host 127.0.0.1 is a loopback address" in refused.output
    assert allowed.exit_code == 42, allowed.output
    assert "https://127.0.0.1:1/train.jsonl: cannot fetch:" in allowed.output
    assert "refused," not in allowed.output


def test_run_refuses_an_allowed_network_that_is_not_one(tmp_path: Path, job: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli, ["run", str(_write(tmp_path, job)), "--allow-network", "minio.local"])

    assert result.exit_code == 2
    assert "--allow-network" in result.output and "'minio.local' is not a network in CIDR notation" in result.output


def test_run_hands_the_model_cache_and_namespace_to_the_trainer(
    tmp_path: Path, job: dict[str, Any], monkeypatch: Any
) -> None:
    import kubetune_trainer.local

    plans: list[Any] = []

    def run_local(plan: Any, progress: Any) -> tuple[int, dict[str, Any]]:  # trains nothing: the plan is the point
        plans.append(plan)
        return 0, RunSummary.failure("NotRun", "not run in this test")

    monkeypatch.setattr(kubetune_trainer.local, "run_local", run_local)
    job["metadata"]["namespace"] = "team-a"
    manifest = _write(tmp_path, job)
    args = ["run", str(manifest), "--volumes", str(tmp_path / "volumes"), "--nproc", "2"]

    given = CliRunner().invoke(cli, [*args, "--model-cache", str(tmp_path / "models")])
    from_env = CliRunner().invoke(cli, args, env={"KUBETUNE_MODEL_CACHE": str(tmp_path / "shared")})

    assert given.exit_code == from_env.exit_code == 0, given.output + from_env.output
    told = [plan.process_environment({}) for plan in plans]
    assert [t["KUBETUNE_MODEL_CACHE"] for t in told] == [str(tmp_path / "models"), str(tmp_path / "shared")]
    assert {t["KUBETUNE_NAMESPACE"] for t in told} == {"team-a"}
