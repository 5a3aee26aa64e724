"""Preference tuning in one process, one run per method: on a tiny Phi-3 and a preference set
with a learnable rule (preference_data.py), held-out reward accuracy rises from chance to above
0.9, the run reports its figures before and after, and the saved output prefers the chosen
answer of held-out pairs more than the base does. The runs spread the objective's paths over
the methods: dpo with a named reference model (lora, on chat pairs), dpo against the base with
the adapter switched off (qlora), dpo against a frozen copy (full), and orpo (dora)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api import DataFormat, FineTuneJobSpec, Truncation
from kubetune.api.tasks import objective_rows
from kubetune.catalog import Strategy
from kubetune.contract import ExitCode
from kubetune_trainer.data.formats import to_example
from kubetune_trainer.data.preference import PairCollator, encode_pair
from kubetune_trainer.data.readers import Row
from kubetune_trainer.data.tokenize import DataStats
from kubetune_trainer.main import run
from kubetune_trainer.preference import score

from .conftest import reload_output, runtime_in, write_jsonl
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


def _spec(method: str, objective: str, data: str, preference: dict[str, Any] | None) -> FineTuneJobSpec:
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
            "maxSteps": 8,
            "learningRate": 3e-3 if method != "full" else 1e-3,
            "warmupSteps": 0,
            "perDeviceBatchSize": 8,
            "loggingInterval": 4,
            "optimizer": "adamw",
        },
        "resources": {"accelerators": 0},
        "output": {
            "pvc": {"claimName": "results", "path": f"preference-{method}"},
            "formats": ["adapter" if method != "full" else "merged"],
        },
    }
    if method == "qlora":
        body["method"]["quantization"] = {"allowCpu": True}
    if preference:
        body["preference"] = preference
    return FineTuneJobSpec.model_validate(body)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, volumes: Path) -> dict[str, tuple[Path, Any]]:
    for name, chat in (("pairs", False), ("chat-pairs", True)):
        write_jsonl(volumes / "data" / f"{name}-train.jsonl", preference_rows(48, seed=1, chat=chat))
        write_jsonl(volumes / "data" / f"{name}-eval.jsonl", preference_rows(16, seed=2, chat=chat))
    done = {}
    for method, how in RUNS.items():
        folder = tmp_path_factory.mktemp(f"preference-{method}")
        spec = _spec(method, how["objective"], "chat-pairs" if how["chat"] else "pairs", how.get("preference"))
        code, summary = run(spec, runtime_in(volumes, folder))
        assert code is ExitCode.OK, summary
        done[method] = (folder / "out", summary)
    return done


@pytest.mark.parametrize("method", list(RUNS))
def test_held_out_reward_accuracy_rises_from_chance_above_0_9(method: str, runs: dict[str, tuple[Path, Any]]) -> None:
    _, summary = runs[method]
    assert summary.baseline is not None and summary.metrics is not None and summary.data is not None
    before, after = summary.baseline.task_figures, summary.metrics.task_figures

    assert 0.25 <= before["evalRewardAccuracy"] <= 0.75, before
    assert after["evalRewardAccuracy"] > 0.9, after
    assert after["evalRewardMargin"] > before["evalRewardMargin"]
    assert after["evalLogpChosen"] - after["evalLogpRejected"] > before["evalLogpChosen"] - before["evalLogpRejected"]
    assert summary.data.format == "preference"
    logged = [record.logged() for record in summary.history or [] if record.loss is not None]
    assert logged and all("reward_accuracy" in record for record in logged)
    assert [s.after.startswith("prefers the chosen answer") for s in summary.samples or []] == [True] * 3


def _scores(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> Any:
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
    from transformers import AutoModelForCausalLM

    out, _ = runs[method]
    tuned, tokenizer = reload_output("adapter" if method != "full" else "merged", out, volumes)
    base = AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny-phi3")
    held_out = preference_rows(8, seed=3, chat=RUNS[method]["chat"])

    after, before = _scores(tuned, tokenizer, held_out), _scores(base, tokenizer, held_out)

    # DPO's implicit reward of the saved model against the base: chosen gains on rejected in every pair.
    margins = (after.chosen - before.chosen) - (after.rejected - before.rejected)
    assert (margins > 0).all(), margins


def test_every_supported_single_process_row_is_run_or_covered() -> None:
    rows = [r for r in objective_rows() if r.supported and r.strategy is Strategy.SINGLE]
    ran = {(RUNS[m]["objective"], m) for m in RUNS}

    for row in rows:
        key = row.covered_by or row
        assert (key.objective.value, key.method.value) in ran, row
