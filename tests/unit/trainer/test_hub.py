"""Results pushed to the Hugging Face Hub, tested up to the HTTP boundary: HF_ENDPOINT points
huggingface_hub at a loopback server that answers the calls of a push (create the
repository, validate the card, preupload, commit) and records them. No real network."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.spec import FineTuneJobSpec, OutputSpec
from kubetune_trainer.errors import InvalidSpec, TrainerError
from kubetune_trainer.outputs import check_destination, output_folder, output_location, publish
from kubetune_trainer.runtime import Runtime

from .conftest import memorise_spec, serve_on_loopback

TOKEN = "hf_not-a-real-token-but-a-planted-one"
REPO = "kubetune-tests/tiny-phi3-lora"
CARD = "---\nlibrary_name: peft\nbase_model: tiny-phi3\n---\n# tiny-phi3 LoRA\n"


@dataclass
class FakeHub:
    """What a push asked of the Hub, and what it committed."""

    endpoint: str = ""
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)
    committed: dict[str, bytes] = field(default_factory=dict)
    commit_paths: list[str] = field(default_factory=list)
    existing: bool = False
    refuse_commits: bool = False


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hub.calls.append(("POST", self.path.split("?")[0], self.headers.get("Authorization")))
            route = self.path.split("?")[0].split("/")
            if self.path == "/api/repos/create":
                hub.created.append(json.loads(body))
                url = {"url": f"{hub.endpoint}/{REPO}"}  # the Hub names the repository in both answers
                if hub.existing:
                    self._answer(409, url | {"error": "You already created this model repo"})
                else:
                    self._answer(200, url)
            elif self.path == "/api/validate-yaml":
                self._answer(200, {"errors": [], "warnings": []})
            elif route[-2] == "preupload":
                files = json.loads(body)["files"]
                self._answer(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            elif route[-2] == "branch":
                self._answer(200, {})
            elif route[-2] == "commit" and hub.refuse_commits:
                self._answer(403, {"error": "You don't have the rights to create a commit under this namespace"})
            elif route[-2] == "commit":
                hub.commit_paths.append(self.path.split("?")[0])
                for line in body.decode().splitlines():
                    entry = json.loads(line)
                    if entry["key"] == "file":
                        hub.committed[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                self._answer(200, {"commitUrl": f"{hub.endpoint}/{REPO}/commit/{'a' * 40}", "commitOid": "a" * 40})
            else:
                self._answer(404, {"error": f"no route {self.path}"})

        def _answer(self, status: int, document: dict[str, Any]) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    record = FakeHub()
    server, record.endpoint = serve_on_loopback(_handler(record))
    monkeypatch.setenv("HF_ENDPOINT", record.endpoint)
    yield record
    server.shutdown()


@pytest.fixture
def trainer(runtime: Runtime) -> Runtime:
    secret = runtime.secrets / "hub-token"
    secret.mkdir(parents=True)
    (secret / "token").write_text(TOKEN + "\n")
    return dataclasses.replace(runtime, output_override=None)


def hub_job(**destination: Any) -> FineTuneJobSpec:
    spec = memorise_spec("lora", ["adapter"])
    target = {"repo": REPO, "tokenSecret": {"name": "hub-token"}} | destination
    return spec.model_copy(update={"output": OutputSpec.model_validate({"huggingFace": target})})


def written_output(folder: Path) -> Path:
    """What the trainer leaves in its output folder, checkpoints included."""
    for name, content in {
        "adapter/adapter_config.json": b'{"peft_type": "LORA", "r": 4}',
        "adapter/adapter_model.safetensors": bytes(range(256)) * 4,
        "README.md": CARD.encode(),
        "summary.json": b'{"status": "Succeeded"}',
        "checkpoints/checkpoint-10/optimizer.pt": b"optimizer state",
    }.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def test_pushes_the_output_folder_but_its_checkpoints(hub: FakeHub, trainer: Runtime) -> None:
    spec = hub_job()
    folder = written_output(output_folder(spec, trainer))

    check_destination(spec, trainer)
    location = publish(spec, trainer, folder)

    assert folder == trainer.work / "output"
    assert location == output_location(spec, trainer, folder) == f"{hub.endpoint}/{REPO}"
    assert hub.created == [{"name": "tiny-phi3-lora", "organization": "kubetune-tests", "visibility": "private"}]
    assert hub.commit_paths == [f"/api/models/{REPO}/commit/main"]
    assert hub.committed == {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and "checkpoints" not in path.parts
    }
    assert {path for _, path, _ in hub.calls} >= {"/api/repos/create", "/api/validate-yaml"}
    assert all(authorization == f"Bearer {TOKEN}" for _, _, authorization in hub.calls), hub.calls


def test_an_existing_public_repository_on_a_branch(hub: FakeHub, trainer: Runtime) -> None:
    hub.existing = True
    spec = hub_job(private=False, revision="experiments")

    location = publish(spec, trainer, written_output(output_folder(spec, trainer)))

    assert location == f"{hub.endpoint}/{REPO}/tree/experiments"
    assert hub.created[0]["visibility"] == "public"
    assert ("POST", f"/api/models/{REPO}/branch/experiments", f"Bearer {TOKEN}") in hub.calls
    assert hub.commit_paths == [f"/api/models/{REPO}/commit/experiments"]


def test_a_refused_commit_names_the_repository_and_what_the_hub_said(hub: FakeHub, trainer: Runtime) -> None:
    hub.refuse_commits = True
    spec = hub_job()

    with pytest.raises(TrainerError) as refused:
        publish(spec, trainer, written_output(output_folder(spec, trainer)))

    message = str(refused.value)
    assert message.startswith(f"Hugging Face Hub {hub.endpoint}/{REPO}: cannot commit the files: ")
    assert "403" in message and "don't have the rights" in message
    assert TOKEN not in message


def test_an_unmounted_token_is_refused_before_training(runtime: Runtime) -> None:
    with pytest.raises(InvalidSpec, match="Secret hub-token key token is not mounted"):
        check_destination(hub_job(), dataclasses.replace(runtime, output_override=None))
