"""Secrets are read in one place and redacted in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.contract import Env
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.secrets import redact, secret_keys, secret_value


@pytest.fixture
def pod(tmp_path: Path) -> Runtime:
    secret = tmp_path / "tracking"
    secret.mkdir()
    (secret / "WANDB_API_KEY").write_text("k-123\n")
    return Runtime.from_env({Env.SECRETS: str(tmp_path)})


def test_the_keys_a_secret_has_are_read_stripped_and_the_others_left_out(pod: Runtime) -> None:
    assert secret_keys(pod, "tracking", ("WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN")) == {"WANDB_API_KEY": "k-123"}
    assert secret_keys(pod, "absent", ("WANDB_API_KEY",)) == {}


def test_a_key_that_must_be_there_names_the_key_and_never_a_value(pod: Runtime) -> None:
    assert secret_value(pod, "tracking", "WANDB_API_KEY") == "k-123"
    with pytest.raises(InvalidSpec, match=r"^Secret tracking key token is not mounted at "):
        secret_value(pod, "tracking", "token")
    with pytest.raises(InvalidSpec, match=r"leads outside"):
        secret_keys(pod, "tracking", ("../tracking/WANDB_API_KEY",))


def test_redaction_hides_every_value_and_keeps_the_message_on_one_line() -> None:
    said = "401 for token hf_abc:\n  user robot, token hf_abc refused"

    assert redact(said, "hf_abc", None, "") == "401 for token ***: user robot, token *** refused"
    assert redact(said) == "401 for token hf_abc: user robot, token hf_abc refused"
