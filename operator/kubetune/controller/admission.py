"""What this installation allows a FineTuneJob to ask for. Creating a FineTuneJob creates
pods, so the chart's allowlists of trainer images and service accounts bound what a
user who may create FineTuneJobs can run, and with which identity; and the networks
dataset URLs may reach are the installation's to say, not the job's."""

from __future__ import annotations

from kubetune.api.problems import Problem
from kubetune.api.spec import FineTuneJobSpec
from kubetune.contract import Env
from kubetune.controller.settings import Settings
from kubetune.validate import dataset_url_problems


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    """An entry allows itself and its tags and digests ("repo" allows "repo:v1", "repo@sha256:..");
    an entry ending in "/" allows everything under that path. Nothing else: "repo" does not
    allow "repo-other"."""
    for entry in allowed:
        if entry.endswith("/") and image.startswith(entry):
            return True
        if image == entry or image.startswith((f"{entry}:", f"{entry}@")):
            return True
    return False


def admission_problems(spec: FineTuneJobSpec, settings: Settings) -> list[Problem]:
    """Reasons to refuse the job here (reported as NotAllowed); empty when it may run."""
    problems = []
    image = spec.resources.image
    if image is not None and settings.allowed_images and not image_allowed(image, settings.allowed_images):
        problems.append(
            Problem(
                "spec.resources.image",
                f"trainer image {image} is not allowed in this "
                f"installation; allowed: {', '.join(settings.allowed_images)}",
            )
        )
    account = spec.resources.service_account_name
    if account is not None and account not in settings.allowed_service_accounts:
        allowed = ", ".join(settings.allowed_service_accounts) or "none (pods run as the namespace default)"
        problems.append(
            Problem(
                "spec.resources.serviceAccountName",
                f"service account {account} is not allowed for trainer pods; allowed: {allowed}",
            )
        )
    problems += _installation_env(spec)
    problems += dataset_url_problems(spec, settings.dataset_allowed_networks)
    return problems


def _installation_env(spec: FineTuneJobSpec) -> list[Problem]:
    """A job's extra environment comes after the operator's in the pod, so it would win."""
    reserved = Env.DATASET_ALLOWED_NETWORKS.value
    return [
        Problem(
            f"spec.resources.env[{index}]",
            f"{reserved} is set by the installation (operator setting {reserved}), not by a FineTuneJob",
        )
        for index, variable in enumerate(spec.resources.env)
        if variable.get("name") == reserved
    ]
