"""Which checkpoint a run resumes from: the newest complete one, and never one whose pickled
files hold anything but tensors and plain data."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import TrainingArguments

from kubetune.contract import ExitCode
from kubetune_trainer.checkpoints import MARKER, newest_complete
from kubetune_trainer.errors import UnsafeCheckpoint


def _checkpoint(folder: Path, step: int, complete: bool = True, state_step: int | None = None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": state_step or step}))
    if complete:
        (path / MARKER).write_text("{}")
    return path


def test_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 10)
    newest = _checkpoint(tmp_path, 30)
    _checkpoint(tmp_path, 20)

    assert newest_complete(tmp_path) == newest


def test_a_checkpoint_cut_off_mid_write_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    previous = _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 20, complete=False)

    assert newest_complete(tmp_path) == previous
    assert "skipping checkpoint checkpoint-20: it was not completed" in caplog.text


def test_a_corrupted_checkpoint_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    previous = _checkpoint(tmp_path, 10)
    broken = _checkpoint(tmp_path, 20)
    (broken / "trainer_state.json").write_text("{not json")

    assert newest_complete(tmp_path) == previous
    assert "unreadable trainer state" in caplog.text


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert newest_complete(tmp_path / "missing") is None


# ----------------------------------------------------------------------------- untrusted files

_RAN = "ran.txt"


class _RunsCode:
    """Pickles into a call of exec: unpickling it writes a file beside the checkpoint."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.folder / _RAN)!r}, 'w').write('ran')",))


def _plain_states(path: Path) -> None:
    """What the Trainer writes into a checkpoint, made the way it makes it."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.LinearLR(optimizer).state_dict(), path / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    torch.save(rng, path / "rng_state.pth")
    torch.save(TrainingArguments(output_dir=str(path)), path / "training_args.bin")


def _deepspeed_shard(path: Path) -> Path:
    """An optimizer shard as DeepSpeed writes it, with its own classes beside the tensors."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    shard = path / "global_step20" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.parent.mkdir()
    state = {
        "optimizer_state_dict": {
            "loss_scaler": LossScaler(),
            "dynamic": DynamicLossScaler(
                init_scale=2**16, scale_window=1000, min_scale=1, delayed_shift=2, consecutive_hysteresis=False
            ),
            "zero_stage": ZeroStageEnum.gradients,
            "param_slice_mappings": [{"w": fragment_address(numel=8, start=0)}],
            "single_partition_of_fp32_groups": [torch.zeros(8)],
        },
        "ds_config": {"zero_optimization": {"stage": 2}},
        "ds_version": "0.19.8",
    }
    torch.save(state, shard)
    return shard


def test_a_checkpoint_of_tensors_and_plain_data_is_resumed_from(tmp_path: Path) -> None:
    newest = _checkpoint(tmp_path, 20)
    _plain_states(newest)
    _deepspeed_shard(newest)

    assert newest_complete(tmp_path) == newest


@pytest.mark.parametrize(
    "name", ["rng_state.pth", "optimizer.pt", "global_step20/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"]
)
def test_a_pickle_that_would_run_code_is_refused_not_run(tmp_path: Path, name: str) -> None:
    _checkpoint(tmp_path, 10)
    tampered = _checkpoint(tmp_path, 20)
    _plain_states(tampered)
    (tampered / name).parent.mkdir(exist_ok=True)
    torch.save({"state": {}, "payload": _RunsCode(tmp_path)}, tampered / name)

    with pytest.raises(UnsafeCheckpoint) as refused:
        newest_complete(tmp_path)

    message = str(refused.value)
    assert message.startswith(f"checkpoint-20/{name}: Unsupported global: GLOBAL exec; the checkpoint was not loaded")
    assert "since unpickling it could run code" in message and f"Remove the folder {tampered}" in message
    assert refused.value.exit_code is ExitCode.INVALID_SPEC
    assert not (tmp_path / _RAN).exists()


def test_the_trainer_loads_its_own_states_weights_only(tmp_path: Path) -> None:
    """transformers reads rng_state.pth as below (Trainer._load_rng_state); the same refusal
    protects a run without DeepSpeed even before our check."""
    from transformers.trainer_pt_utils import safe_globals

    torch.save({"python": random.getstate(), "payload": _RunsCode(tmp_path)}, tmp_path / "rng_state.pth")

    with safe_globals(), pytest.raises(pickle.UnpicklingError, match="Unsupported global: GLOBAL exec"):
        torch.load(tmp_path / "rng_state.pth", weights_only=True)
    assert not (tmp_path / _RAN).exists()


def test_a_damaged_pickle_skips_the_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    previous = _checkpoint(tmp_path, 10)
    damaged = _checkpoint(tmp_path, 20)
    _plain_states(damaged)
    (damaged / "optimizer.pt").write_bytes((damaged / "optimizer.pt").read_bytes()[:100])

    assert newest_complete(tmp_path) == previous
    assert "skipping checkpoint checkpoint-20: optimizer.pt cannot be read" in caplog.text
