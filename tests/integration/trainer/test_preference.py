"""Preference tuning in one process, one run per method: on a tiny Phi-3 and a preference set
with a learnable rule (preference_data.py), held-out reward accuracy rises from chance to above
0.9, the run reports its figures before and after, and the saved output prefers the chosen
answer of held-out pairs more than the base does. The runs spread the objective's paths over
the methods: dpo with a named reference model (lora, on chat pairs), dpo against the base with
the adapter switched off (qlora), dpo against a frozen copy (full), and orpo (dora)."""

from __future__ import annotations

import ast
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import DataFormat, FineTuneJobSpec, Truncation
from kubetune.api.tasks import objective_rows
from kubetune.catalog import Strategy
from kubetune.contract import ExitCode, RunSummary
from kubetune_trainer.checkpoints import MARKER, checkpoints
from kubetune_trainer.data.formats import to_example
from kubetune_trainer.data.preference import PairCollator, encode_pair
from kubetune_trainer.data.readers import Row
from kubetune_trainer.data.tokenize import DataStats
from kubetune_trainer.main import run
from kubetune_trainer.preference import score

from .conftest import Launched, launch, reload_output, runtime_in, summary_in, write_jsonl
from .preference_data import preference_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS: dict[str, dict[str, Any]] = {
    "lora": {
        "objective": "dpo",
        "chat": True,
        "preference": {"reference": {"pvc": {"claimName": "models", "path": "tiny-phi3"}}},
    },
    "qlora": {"objective": "dpo", "chat": False},
    "dora": {"objective": "orpo", "chat": False},
    "full": {"objective": "dpo", "chat": False},
}


def preference_spec(
    method: str,
    objective: str,
    data: str,
    preference: dict[str, Any] | None,
    distributed: dict[str, Any] | None = None,
    batch: int = 8,
    steps: int = 8,
) -> FineTuneJobSpec:
    """A run of `objective` with `method` on the pairs written as `data`, `steps` steps of
    `batch` pairs per process, logged every 4 steps and checkpointed every 8."""
    body: dict[str, Any] = {
        "objective": objective,
        "model": {"pvc": {"claimName": "models", "path": "tiny-phi3"}},
        "dataset": {
            "pvc": {"claimName": "data", "path": f"{data}-train.jsonl"},
            "maxSeqLength": 64,
            "evaluation": {"source": {"pvc": {"claimName": "data", "path": f"{data}-eval.jsonl"}}},
        },
        "method": {"type": method, "lora": {"dropout": 0.0}} if method != "full" else {"type": method},
        "training": {
            "maxSteps": steps,
            "learningRate": 3e-3 if method != "full" else 1e-3,
            "warmupSteps": 0,
            "perDeviceBatchSize": batch,
            "loggingInterval": 4,
            "optimizer": "adamw",
        },
        "resources": {"accelerators": 0},
        "checkpoint": {"intervalSteps": 8},
        "output": {
            "pvc": {"claimName": "results", "path": f"preference-{method}"},
            "formats": ["adapter" if method != "full" else "merged"],
        },
    }
    if method == "qlora":
        body["method"]["quantization"] = {"allowCpu": True}
    if preference:
        body["preference"] = preference
    if distributed:
        body["distributed"] = distributed
    return FineTuneJobSpec.model_validate(body)


def write_pairs(volumes: Path) -> None:
    """The training and held-out pairs, as text (`pairs`) and as chat messages (`chat-pairs`)."""
    for name, chat in (("pairs", False), ("chat-pairs", True)):
        write_jsonl(volumes / "data" / f"{name}-train.jsonl", preference_rows(48, seed=1, chat=chat))
        write_jsonl(volumes / "data" / f"{name}-eval.jsonl", preference_rows(16, seed=2, chat=chat))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, volumes: Path) -> dict[str, tuple[Path, Any]]:
    write_pairs(volumes)
    done = {}
    for method, how in RUNS.items():
        folder = tmp_path_factory.mktemp(f"preference-{method}")
        spec = preference_spec(
            method, how["objective"], "chat-pairs" if how["chat"] else "pairs", how.get("preference")
        )
        code, summary = run(spec, runtime_in(volumes, folder))
        assert code is ExitCode.OK, summary
        done[method] = (folder / "out", summary)
    return done


@pytest.mark.parametrize("method", list(RUNS))
def test_held_out_reward_accuracy_rises_from_chance_above_0_9(method: str, runs: dict[str, tuple[Path, Any]]) -> None:
    _, summary = runs[method]
    how = RUNS[method]
    assert_preference_learned(summary, ties=how["objective"] == "dpo" and "preference" not in how)


def assert_preference_learned(summary: RunSummary, samples: int = 3, ties: bool = False) -> None:
    """Held-out reward accuracy from chance to above 0.9, the margin and the log-probability gap
    growing, the figures in every training log record, and every sample preferring the chosen
    (none where rank 0 holds only a shard and answers no sample). Where the reference is the base
    (`ties`), the untrained model ties every pair with it: it computes as the policy does."""
    assert summary.baseline is not None and summary.metrics is not None and summary.data is not None
    before, after = summary.baseline.task_figures, summary.metrics.task_figures
    if ties:
        assert (before["evalRewardAccuracy"], before["evalRewardMargin"]) == (0.5, 0.0), before

    assert 0.25 <= before["evalRewardAccuracy"] <= 0.75, before
    assert after["evalRewardAccuracy"] > 0.9, after
    assert after["evalRewardMargin"] > before["evalRewardMargin"]
    assert after["evalLogpChosen"] - after["evalLogpRejected"] > before["evalLogpChosen"] - before["evalLogpRejected"]
    assert summary.data.format == "preference"
    logged = [record.logged() for record in summary.history or [] if record.loss is not None]
    assert logged and all("reward_accuracy" in record for record in logged)
    assert [s.after.startswith("prefers the chosen answer") for s in summary.samples or []] == [True] * samples


def held_out_scores(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> Any:
    import torch

    pairs = [to_example(DataFormat.PREFERENCE, Row(row, f"held-out pair {i}")) for i, row in enumerate(rows)]
    encoded = [
        encode_pair(p, tokenizer, max_length=64, truncation=Truncation.TRUNCATE, stats=DataStats()) for p in pairs
    ]
    model.eval()
    with torch.no_grad():
        return score(model, PairCollator(tokenizer.pad_token_id, together=False)(encoded))


@pytest.mark.parametrize("method", list(RUNS))
def test_the_saved_output_prefers_the_chosen_answer_more_than_the_base_does(
    method: str, runs: dict[str, tuple[Path, Any]], volumes: Path
) -> None:
    out, _ = runs[method]
    tuned, tokenizer = reload_output("adapter" if method != "full" else "merged", out, volumes)

    assert_output_prefers_the_chosen(tuned, tokenizer, volumes, chat=RUNS[method]["chat"])


def assert_output_prefers_the_chosen(tuned: Any, tokenizer: Any, volumes: Path, chat: bool) -> None:
    """DPO's implicit reward of the saved model against the base: chosen gains on rejected in
    every held-out pair."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny-phi3")
    held_out = preference_rows(8, seed=3, chat=chat)

    after, before = held_out_scores(tuned, tokenizer, held_out), held_out_scores(base, tokenizer, held_out)

    margins = (after.chosen - before.chosen) - (after.rejected - before.rejected)
    assert (margins > 0).all(), margins


def test_every_supported_single_process_row_is_run_or_covered() -> None:
    rows = [r for r in objective_rows() if r.supported and r.strategy is Strategy.SINGLE]
    ran = {(RUNS[m]["objective"], m) for m in RUNS}

    for row in rows:
        key = row.covered_by or row
        assert (key.objective.value, key.method.value) in ran, row


def test_a_killed_full_fine_tuning_run_resumes_against_the_base_as_its_reference(volumes: Path, tmp_path: Path) -> None:
    """The reference of full fine-tuning is a copy of the model taken before training; a resumed
    run loads the checkpoint after that copy, so its reference is still the base. Were it the
    checkpoint, the policy would tie with it after the resume, and every margin start from 0."""
    write_pairs(volumes)
    spec = preference_spec("full", "dpo", "pairs", None, steps=48)
    killed = launch(spec, volumes, tmp_path)
    reached = wait_for_checkpoint(tmp_path / "out" / "checkpoints", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    start = len((tmp_path / "log.txt").read_text())

    resumed = launch(spec, volumes, tmp_path)
    assert resumed.wait(timeout=600) == ExitCode.OK, (tmp_path / "log.txt").read_text()[-4000:]

    text = (tmp_path / "log.txt").read_text()
    before, after = _logged(text[:start]), _logged(text[start:])
    resumed_at = int(text[start:].split("resuming from ")[1].split("checkpoint-")[1].split()[0])
    assert resumed_at >= reached  # (the killed run may have completed another before the signal landed)
    # Against the base, the margin the killed run had reached grows on; against the checkpoint
    # it would start again from 0 (4 steps from 0 reach about half of it here).
    at_checkpoint = next(r for r in before if r["step"] == resumed_at and "reward_margin" in r)
    first = next(r for r in after if "reward_margin" in r)
    assert first["step"] > resumed_at and first["reward_margin"] > at_checkpoint["reward_margin"], (
        at_checkpoint,
        first,
    )
    # A resumed run has no untrained model left to measure a baseline on: the end alone.
    metrics = summary_in(tmp_path / "out").metrics
    assert metrics is not None and metrics.task_figures["evalRewardAccuracy"] > 0.9, metrics


def _logged(log: str) -> list[dict[str, Any]]:
    """The training log records a trainer's log shows (the tracker writes each as a dict)."""
    marker = "kubetune_trainer.progress: step "
    return [ast.literal_eval(line.split(": ", 2)[2]) for line in log.splitlines() if marker in line]


def wait_for_checkpoint(folder: Path, process: Launched) -> int:
    """The step of the first complete checkpoint in `folder`, once there is one."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = [step for step, path in checkpoints(folder) if (path / MARKER).exists()]
        if done:
            return max(done)
        assert process.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")
