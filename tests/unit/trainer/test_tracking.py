from __future__ import annotations

from pathlib import Path

from kubetune_trainer.runtime import Runtime
from kubetune_trainer.tracking import tracking_environment

from .conftest import memorise_spec


def test_mlflow_gets_its_server_experiment_run_and_credentials(runtime: Runtime, tmp_path: Path) -> None:
    (runtime.secrets / "mlflow").mkdir(parents=True)
    (runtime.secrets / "mlflow" / "MLFLOW_TRACKING_TOKEN").write_text("tok-123\n")
    spec = memorise_spec(
        "lora",
        ["adapter"],
        training={
            "tracking": {
                "backend": "mlflow",
                "uri": "http://mlflow.mlops:5000",
                "credentialsSecret": {"name": "mlflow"},
            }
        },
    )

    env = tracking_environment(spec, runtime, tmp_path)

    assert env == {
        "MLFLOW_TRACKING_URI": "http://mlflow.mlops:5000",
        "MLFLOW_EXPERIMENT_NAME": "default",
        "MLFLOW_RUN_NAME": "local",
        "MLFLOW_TRACKING_TOKEN": "tok-123",
    }


def test_wandb_project_and_key(runtime: Runtime, tmp_path: Path) -> None:
    (runtime.secrets / "wandb").mkdir(parents=True)
    (runtime.secrets / "wandb" / "WANDB_API_KEY").write_text("k")
    spec = memorise_spec(
        "lora",
        ["adapter"],
        training={
            "tracking": {
                "backend": "wandb",
                "project": "sft",
                "runName": "try-3",
                "credentialsSecret": {"name": "wandb"},
            }
        },
    )

    env = tracking_environment(spec, runtime, tmp_path)

    assert env == {"WANDB_PROJECT": "sft", "WANDB_NAME": "try-3", "WANDB_API_KEY": "k"}


def test_tensorboard_writes_beside_the_outputs(runtime: Runtime, tmp_path: Path) -> None:
    spec = memorise_spec("lora", ["adapter"], training={"tracking": {"backend": "tensorboard"}})

    assert tracking_environment(spec, runtime, tmp_path) == {"TENSORBOARD_LOGGING_DIR": str(tmp_path / "tensorboard")}


def test_no_tracking_no_environment(runtime: Runtime, tmp_path: Path) -> None:
    assert tracking_environment(memorise_spec("lora", ["adapter"]), runtime, tmp_path) == {}
