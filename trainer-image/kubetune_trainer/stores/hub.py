"""Push the result to a repository on the Hugging Face Hub.

The token is the Secret key that output.huggingFace.tokenSecret names, mounted as a file;
it never appears in logs or messages. The repository is created when it is missing
(private unless the spec sets private: false), and so is the branch when it is not main.
HF_ENDPOINT names a mirror or a private Hub in place of huggingface.co.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.api.spec import HubDestination
from kubetune_trainer.errors import InvalidSpec, TrainerError
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.secrets import redact, secret_value

log = logging.getLogger(__name__)


def hub_endpoint() -> str:
    """The Hub's address: HF_ENDPOINT when set, else huggingface_hub's default."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def hub_location(destination: HubDestination) -> str:
    """The repository's page (on its branch, when that is not main)."""
    page = f"{hub_endpoint()}/{destination.repo}"
    return page if destination.revision == "main" else f"{page}/tree/{destination.revision}"


@dataclass(frozen=True)
class HubRepo:
    """A Hub repository to push to, with the token that may write to it."""

    destination: HubDestination
    token: str = field(repr=False)

    @classmethod
    def open(cls, destination: HubDestination, runtime: Runtime) -> HubRepo:
        secret = destination.token_secret
        if secret is None:
            raise InvalidSpec("output.huggingFace.tokenSecret: pushing to the Hub needs a token with write access")
        token = secret_value(runtime, secret.name, secret.key)
        if not token:
            raise InvalidSpec(f"Secret {secret.name} key {secret.key} is empty; it should hold a Hub token")
        return cls(destination, token)

    def upload(self, folder: Path, message: str, skip: tuple[str, ...] = ()) -> str:
        """Every file under `folder`, but for the `skip` folders, in one commit on the
        destination's branch. Returns the commit id."""
        import httpx2
        from huggingface_hub import HfApi

        api = HfApi(endpoint=hub_endpoint(), token=self.token, library_name="kubetune")
        repo, branch = self.destination.repo, self.destination.revision
        doing = "create the repository"
        try:
            api.create_repo(repo, private=self.destination.private, exist_ok=True)
            if branch != "main":
                doing = f"create branch {branch}"
                api.create_branch(repo, branch=branch, exist_ok=True)
            doing = "commit the files"
            commit = api.upload_folder(
                repo_id=repo,
                folder_path=folder,
                revision=branch,
                commit_message=message,
                ignore_patterns=[f"{name}/" for name in skip],
            )
        except (httpx2.HTTPError, OSError, ValueError) as error:
            said = redact(str(error), self.token)
            raise TrainerError(f"Hugging Face Hub {hub_location(self.destination)}: cannot {doing}: {said}") from None
        log.info("pushed %s to %s", folder, hub_location(self.destination))
        return str(commit.oid)
