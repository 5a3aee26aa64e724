"""Experiment tracking: the environment MLflow and Weights & Biases read, built from the
spec and the mounted credentials Secret. Values from the Secret go into this process's
environment only, never into logs or the summary."""

from __future__ import annotations

from pathlib import Path

from kubetune.api.enums import TrackingBackend
from kubetune.api.spec import FineTuneJobSpec
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.secrets import secret_keys

CREDENTIAL_KEYS = {
    TrackingBackend.MLFLOW: ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"),
    TrackingBackend.WANDB: ("WANDB_API_KEY",),
    TrackingBackend.TENSORBOARD: (),
}


def tracking_environment(spec: FineTuneJobSpec, runtime: Runtime, out: Path) -> dict[str, str]:
    tracking = spec.training.tracking
    if tracking is None:
        return {}
    project = tracking.project or runtime.namespace
    run_name = tracking.run_name or runtime.job_name
    env: dict[str, str] = {}
    match tracking.backend:
        case TrackingBackend.MLFLOW:
            env |= {"MLFLOW_EXPERIMENT_NAME": project, "MLFLOW_RUN_NAME": run_name}
            if tracking.uri:
                env["MLFLOW_TRACKING_URI"] = tracking.uri
        case TrackingBackend.WANDB:
            env |= {"WANDB_PROJECT": project, "WANDB_NAME": run_name}
            if tracking.uri:
                env["WANDB_BASE_URL"] = tracking.uri
        case TrackingBackend.TENSORBOARD:
            env["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    if tracking.credentials_secret is not None:
        env |= secret_keys(runtime, tracking.credentials_secret.name, CREDENTIAL_KEYS[tracking.backend])
    return env
