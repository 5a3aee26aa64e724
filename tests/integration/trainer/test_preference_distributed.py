"""Preference tuning on two processes, launched as the image launches them (torchrun, gloo):
the rows of the support matrix's `objectives` that name no covering run. DDP runs qlora (the
base with its adapter switched off as the reference, the adapter methods' path) and full (a
frozen copy, its linear layers in 16 bits under autocast); ZeRO-2 runs full (a copy wholly in
16 bits, as DeepSpeed holds the model); ZeRO-3 runs dora (the adapter switched off on a sharded
base) and full (the base loaded again as a sharded reference in an engine of its own). Each asserts what the one-process
runs do, the engine asked for on both ranks, and that the logged figures pool both ranks' pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api import MethodType
from kubetune.api.tasks import ObjectiveKey, objective_rows
from kubetune.catalog import Strategy
from kubetune.contract import ExitCode

from .conftest import _free_port, launch, rank_engines, reload_output, summary_in
from .test_distributed import ENGINES, STRATEGIES
from .test_preference import assert_output_prefers_the_chosen, assert_preference_learned, preference_spec, write_pairs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MULTI_RANK = [r for r in objective_rows() if r.supported and r.strategy is not Strategy.SINGLE]
ROWS = [r for r in MULTI_RANK if r.covered_by is None]


def test_every_multi_rank_row_runs_or_names_a_run_that_covers_it() -> None:
    assert all(row.objective.uses_reference for row in ROWS)  # dpo, each against the base
    """A covering run is a dpo run (orpo takes no reference; the batches, the pooled figures and
    the engine are dpo's) with the same kind of reference: the adapter switched off for an
    adapter method, the base itself for full fine-tuning. Under DDP and ZeRO-3 it is the same
    strategy; ZeRO-1 and ZeRO-2 shard no weights, so an adapter row is covered by the stricter
    ZeRO-3 and a full row by ZeRO-2's run, whose engine holds the model and its copy in 16 bits."""
    ran = {(r.objective, r.method, r.strategy) for r in ROWS}
    assert {strategy for _, _, strategy in ran} == {Strategy.DDP, Strategy.ZERO2, Strategy.ZERO3}
    for row in MULTI_RANK:
        cover: ObjectiveKey | None = row.covered_by
        if cover is None:
            continue
        assert (cover.objective, cover.method, cover.strategy) in ran, row
        assert cover.objective.uses_reference and cover.method.uses_adapter == row.method.uses_adapter, row
        if row.strategy in (Strategy.ZERO1, Strategy.ZERO2):
            assert cover.strategy is (Strategy.ZERO3 if row.method.uses_adapter else Strategy.ZERO2), row
        else:
            assert cover.strategy is row.strategy, row


def _pool(rank: int, port: int, results: Any) -> None:
    import torch.distributed as dist

    from kubetune_trainer.preference import FIGURES, pooled_means

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # Rank 0 saw three pairs, rank 1 one; a figure only rank 1 logged still counts.
    kept = [{"reward_accuracy": [1.0, 1.0, 0.0], "reward_margin": [2.0, 4.0, 0.0]}, {"reward_accuracy": [0.0]}]
    results[rank] = pooled_means({name: kept[rank].get(name, []) for name in FIGURES}, 2, "cpu")
    if rank == 0:
        results["alone"] = pooled_means({name: kept[0].get(name, []) for name in FIGURES}, 1, "cpu")
    dist.destroy_process_group()


def test_the_logged_figures_are_means_over_every_rank_s_pairs() -> None:
    import multiprocessing

    import torch.multiprocessing as mp

    results = multiprocessing.Manager().dict()
    # Forked from this process, which has torch imported: no second import.
    mp.start_processes(_pool, args=(_free_port(), results), nprocs=2, start_method="fork")

    pooled = {"reward_accuracy": 0.5, "reward_margin": 2.0}
    assert results[0] == results[1] == pooled
    assert results["alone"] == {"reward_accuracy": 2 / 3, "reward_margin": 2.0}


@pytest.fixture(scope="module")
def pairs(volumes: Path) -> Path:
    write_pairs(volumes)
    return volumes


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.objective}-{r.method}-{r.strategy}" for r in ROWS])
def test_row_learns_the_preference_on_two_processes(row: Any, pairs: Path, tmp_path: Path) -> None:
    method = row.method.value
    # 4 pairs per process: the one-process runs' batch of 8 pairs per step.
    spec = preference_spec(method, row.objective.value, "pairs", None, STRATEGIES[row.strategy], batch=4)
    process = launch(spec, pairs, tmp_path, processes=2)
    assert process.wait(timeout=600) == ExitCode.OK, (tmp_path / "log.txt").read_text()[-4000:]

    summary = summary_in(tmp_path / "out")
    # Every row run is dpo against the base (the adapter switched off, a copy, or the base loaded
    # again), which the untrained model ties with exactly; but for dora, whose recomposition of
    # magnitude and direction rounds (a margin of -0.002 here).
    ties = row.method is not MethodType.DORA
    assert_preference_learned(summary, samples=0 if row.strategy is Strategy.ZERO3 else 3, ties=ties)
    ranks = rank_engines(tmp_path / "work")
    assert [r.engine for r in ranks] == [ENGINES[row.strategy]] * 2 and all(r.world_size == 2 for r in ranks)
    if row.strategy is Strategy.ZERO3:
        assert all(r.zero_stage == 3 for r in ranks)
        assert "built successfully" not in (tmp_path / "log.txt").read_text()  # no DeepSpeed op compiled
    tuned, tokenizer = reload_output("adapter" if row.method.uses_adapter else "merged", tmp_path / "out", pairs)
    assert_output_prefers_the_chosen(tuned, tokenizer, pairs, chat=False)
