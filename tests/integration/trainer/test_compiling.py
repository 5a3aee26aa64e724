"""A compiled model trains as the eager one does: torch.compile builds its kernels (and starts
its compiler processes) for real here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.spec import LoraSpec
from kubetune.contract import Figures
from kubetune_trainer.compiling import compiled_layers, repeated_layers
from kubetune_trainer.runtime import Runtime
from tests.unit.trainer.test_compiling import _model

from .conftest import memorise_spec, runtime_in, training_losses


def _loss_and_gradients(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    gradients = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return loss.item(), gradients


@pytest.mark.slow
def test_compiled_layers_train_as_eager_ones_across_lengths(volumes: Path, runtime: Runtime) -> None:
    model = _model("lora", volumes, runtime)
    model.train()
    batches = []
    for rows, width in ((2, 24), (3, 40)):  # padding-free batches change shape every step
        ids = torch.randint(3, 200, (rows, width))
        positions = torch.arange(width).repeat(rows, 1) % (width // 2)  # two examples per row
        batches.append({"input_ids": ids, "labels": ids, "position_ids": positions})

    eager = [_loss_and_gradients(model, batch) for batch in batches]
    with compiled_layers(model, wanted=True) as count:
        compiled = [_loss_and_gradients(model, batch) for batch in batches]

    assert count == model.config.num_hidden_layers
    assert all(layer._compiled_call_impl is None for layer in repeated_layers(model))
    for (eager_loss, eager_grads), (compiled_loss, compiled_grads) in zip(eager, compiled, strict=True):
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
        assert (compiled_grads - eager_grads).norm() <= 1e-3 * eager_grads.norm()


@pytest.mark.slow
def test_a_run_with_compile_always_trains_as_an_uncompiled_one(volumes: Path, tmp_path: Path) -> None:
    from kubetune.contract import ExitCode
    from kubetune_trainer.main import run

    summaries = {}
    for choice in ("always", "never"):
        runtime = runtime_in(volumes, tmp_path / choice)
        # fp32 and no dropout (whose masks are random): the two runs start equal.
        training = {"maxSteps": 12, "loggingInterval": 4, "precision": "fp32", "compile": choice}
        spec = memorise_spec("lora", ["adapter"], training=training)
        spec = spec.model_copy(update={"method": spec.method.model_copy(update={"lora": LoraSpec(dropout=0.0)})})
        code, summaries[choice] = run(spec, runtime)
        assert code is ExitCode.OK, summaries[choice]

    losses = {choice: training_losses(summary) for choice, summary in summaries.items()}
    compiled = {choice: (summary.metrics or Figures()).compiled_layers for choice, summary in summaries.items()}
    assert compiled == {"always": 2, "never": 0}
    assert losses["always"][-1] < losses["always"][0] / 2
    # The first loss comes before any update; after it, Adam turns rounding-sized differences
    # of near-zero gradients into whole steps, and a tiny model memorising at a high learning
    # rate follows them (1-2% apart after 12 steps).
    assert losses["always"][0] == pytest.approx(losses["never"][0], rel=1e-5)
    assert losses["always"][-1] == pytest.approx(losses["never"][-1], rel=0.05)
