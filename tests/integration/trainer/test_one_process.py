"""A one-process pod goes through torchrun, as the image's launcher does: the process trains
the plain model, not a DistributedDataParallel wrapper of it. Two processes keep DDP: the
distributed tests cover them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.contract import ExitCode

from .conftest import launch, memorise_spec, summary_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_one_process_under_torchrun_trains_the_plain_model(method: str, volumes: Path, tmp_path: Path) -> None:
    spec = memorise_spec(method, ["adapter"] if method == "lora" else ["merged"], training={"maxSteps": 3})

    process = launch(spec, volumes, tmp_path, processes=1, torchrun=True)

    assert process.wait(timeout=600) == ExitCode.OK, (tmp_path / "log.txt").read_text()[-4000:]
    engine = summary_in(tmp_path / "out").engine
    assert engine is not None and engine.world_size == 1
    assert engine.engine != "DistributedDataParallel"
    assert engine.engine == ("PeftModelForCausalLM" if method == "lora" else "Phi3ForCausalLM")
