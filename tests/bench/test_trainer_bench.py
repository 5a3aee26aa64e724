"""The trainer benchmark's harness: its pure parts, the GPU configuration built on a CPU,
and one whole run at tiny sizes so the harness cannot rot. No test asserts a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.contenders import (
    KUBETUNE,
    KUBETUNE_COMPILED,
    TRL_KAITO,
    TRL_PACKING,
    TRL_PACKING_COMPILED,
    TRL_PADDING_FREE,
    TRL_PADDING_FREE_COMPILED,
    RunSpec,
    kubetune_manifest,
    run_kubetune,
    trl_arguments,
)
from bench.measure import flops_per_example
from bench.report import Run, SettingReport, render
from bench.trainer import DEFAULT_CONTENDERS, kubetune_estimate_mib, main, packed_rows, rows_per_step, run_spec
from bench.workload import LLAMA_30M, SIZES, Prepared, Setting, chats, prepare

from kubetune.api import parse_finetunejob

LORA = Setting("lora", "bf16")
FULL = Setting("full", "bf16")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return prepare(SIZES["smoke"], tmp_path_factory.mktemp("prepared"))


def test_the_cpu_model_has_about_30m_parameters() -> None:
    embeddings = LLAMA_30M.vocab * LLAMA_30M.hidden

    total = LLAMA_30M.linear_parameters() + embeddings

    assert 28e6 < total < 32e6


def test_lora_costs_two_thirds_of_full_fine_tuning_per_token_plus_the_adapter() -> None:
    lora = flops_per_example(LLAMA_30M, LORA, 100, lora_r=16)
    full = flops_per_example(LLAMA_30M, FULL, 100, lora_r=16)
    attention = 12 * LLAMA_30M.hidden * LLAMA_30M.layers * 100 * 101 / 2

    assert full == 6 * LLAMA_30M.linear_parameters() * 100 + attention
    assert lora == (4 * LLAMA_30M.linear_parameters() + 6 * LLAMA_30M.adapter_parameters(16)) * 100 + attention


def test_chats_spread_from_a_few_tokens_to_the_maximum_and_repeat_with_the_seed(smoke: Prepared) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smoke.model)
    workload = SIZES["smoke"]
    lengths = smoke.train_lengths + smoke.eval_lengths
    again = chats(workload.train_examples, workload.max_length, workload.median_fraction, tokenizer, workload.seed, 0)

    assert max(lengths) <= workload.max_length
    assert min(lengths) < workload.max_length / 2 < max(lengths)
    assert [json.loads(line) for line in smoke.train.read_text().splitlines()] == again
    assert smoke.train.read_text() != smoke.eval.read_text()


@pytest.mark.parametrize("setting", SIZES["gpu"].settings, ids=lambda s: s.name)
def test_the_gpu_configuration_builds_on_a_cpu(setting: Setting, tmp_path: Path) -> None:
    workload = SIZES["gpu"]
    workload.check()
    prepared = Prepared(
        tmp_path, tmp_path / "model", tmp_path / "data" / "train.jsonl", tmp_path / "data" / "eval.jsonl", [300], [300]
    )
    for contender in DEFAULT_CONTENDERS:
        run = run_spec(workload, setting, prepared, contender, accelerators=1)
        if contender == KUBETUNE:
            spec = parse_finetunejob(kubetune_manifest(run)).spec
            assert spec.method.type.value == setting.method
            assert (spec.distributed.deepspeed is not None) == setting.zero3
        else:
            arguments = trl_arguments(run, tmp_path)
            assert ("deepspeed" in arguments) == setting.zero3
            assert arguments["per_device_train_batch_size"] * arguments["gradient_accumulation_steps"] == (
                run.effective_batch
            )


def test_packed_rows_per_step_make_the_step_count_nearest_the_others() -> None:
    assert packed_rows([200, 100, 60, 50, 30], max_length=256) == 2
    assert rows_per_step(21, steps=8) == 3  # 7 steps; 2 rows a step would make 11
    assert rows_per_step(10, steps=4) == 3  # 4 steps
    assert rows_per_step(3, steps=8) == 1


def test_every_contender_does_the_same_steps_of_the_same_batch(smoke: Prepared) -> None:
    workload = SIZES["smoke"]
    runs = {c: run_spec(workload, LORA, smoke, c, accelerators=0) for c in (KUBETUNE, TRL_KAITO, TRL_PADDING_FREE)}

    assert {run.steps for run in runs.values()} == {workload.steps}
    assert {run.effective_batch for run in runs.values()} == {workload.effective_batch}
    assert runs[TRL_KAITO].per_device_batch == 1
    assert len({run.learning_rate for run in runs.values()}) == 1


def fake_run(contender: str, round_: int, seconds: float, loss: float = 2.0, steps: int = 8, share: float = 1.0) -> Run:
    return Run(
        contender=contender,
        round=round_,
        wall_seconds=seconds + 10,
        train_seconds=seconds,
        tokens=1000,
        steps=steps,
        peak_rss_mib=500.0,
        cpu_share=share,
        busy_before=0.0,
        attempts=1,
        eval_loss=loss,
        model_flops=1e12,
        matmul_flops_per_second=1e12,
    )


def report_of(*runs: Run) -> SettingReport:
    return SettingReport(LORA, "a test", steps=8, tokens=1000, flops_formula="4N", runs=list(runs))


def test_ratios_pair_the_rounds_and_report_median_and_spread() -> None:
    report = report_of(
        fake_run(KUBETUNE, 0, 1.0),
        fake_run(TRL_KAITO, 0, 2.0),
        fake_run(KUBETUNE, 1, 2.0),
        fake_run(TRL_KAITO, 1, 3.0),
        fake_run(KUBETUNE, 2, 1.0),
        fake_run(TRL_KAITO, 2, 3.0),
    )

    speedup = report.ratio(TRL_KAITO, lambda run: run.tokens_per_second, kubetune_over_other=True)

    assert speedup is not None
    assert (speedup.median, speedup.low, speedup.high) == (2.0, 1.5, 3.0)
    assert report.spread(KUBETUNE, report.mfu).median == 1.0
    assert not report.problems()
    assert "2.00x (1.50-3.00)" in render(report)
    assert report.fastest_trl() == TRL_KAITO


def test_compiled_contenders_compile_through_their_own_settings(smoke: Prepared, tmp_path: Path) -> None:
    workload = SIZES["smoke"]
    compiled = run_spec(workload, LORA, smoke, KUBETUNE_COMPILED, accelerators=0)
    plain = run_spec(workload, LORA, smoke, KUBETUNE, accelerators=0)

    assert parse_finetunejob(kubetune_manifest(compiled)).spec.training.compile.value == "always"
    assert parse_finetunejob(kubetune_manifest(plain)).spec.training.compile.value == "auto"
    assert compiled.per_device_batch == plain.per_device_batch
    for trl, uncompiled in ((TRL_PACKING_COMPILED, TRL_PACKING), (TRL_PADDING_FREE_COMPILED, TRL_PADDING_FREE)):
        arguments = trl_arguments(run_spec(workload, LORA, smoke, trl, accelerators=0), tmp_path)
        baseline = trl_arguments(run_spec(workload, LORA, smoke, uncompiled, accelerators=0), tmp_path)
        assert arguments.pop("torch_compile") is True
        assert arguments == baseline


def test_a_compiled_kubetune_is_never_the_fastest_trl() -> None:
    report = report_of(fake_run(KUBETUNE, 0, 2.0), fake_run(KUBETUNE_COMPILED, 0, 1.0), fake_run(TRL_KAITO, 0, 3.0))

    assert report.fastest_trl() == TRL_KAITO


def test_runs_other_work_slowed_are_left_out_where_unslowed_ones_exist() -> None:
    report = report_of(
        fake_run(KUBETUNE, 0, 10.0, share=0.3),
        fake_run(TRL_KAITO, 0, 2.0),
        fake_run(KUBETUNE, 1, 1.0),
        fake_run(TRL_KAITO, 1, 2.0),
    )

    speedup = report.ratio(TRL_KAITO, lambda run: run.tokens_per_second, kubetune_over_other=True)

    assert speedup is not None and speedup.median == speedup.low == 2.0
    assert report.spread(KUBETUNE, lambda run: run.train_seconds).median == 1.0
    assert "slowed 1 of 4 runs" in render(report)


def test_a_report_prints_the_same_from_its_json() -> None:
    report = report_of(fake_run(KUBETUNE, 0, 1.0), fake_run(TRL_KAITO, 0, 2.0, share=0.5))

    again = SettingReport.from_dict(json.loads(json.dumps(report.as_dict())))

    assert render(again) == render(report)


def test_unequal_eval_loss_or_steps_void_the_comparison() -> None:
    report = report_of(fake_run(KUBETUNE, 0, 1.0, loss=2.0), fake_run(TRL_KAITO, 0, 2.0, loss=2.2, steps=7))

    problems = report.problems()

    assert any("eval loss of trl-kaito" in problem for problem in problems)
    assert any("ran 7 optimizer steps" in problem for problem in problems)
    assert report.as_dict()["void"]
    assert "VOID: " in render(report)


# Each contender is a process that imports torch and transformers (about 15 s here) for a
# second of training. kubetune and one TRL configuration make a table with a speed-up; the
# row-batched one (packing) is the TRL configuration whose steps the harness computes itself.
SMOKE_CONTENDERS = (KUBETUNE, TRL_PACKING)


@pytest.mark.slow
def test_a_tiny_run_prints_a_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = main(
        [
            *("--size", "smoke", "--results", str(tmp_path), "--wait-for-quiet", "0", "--retries", "0"),
            *("--contenders", ",".join(SMOKE_CONTENDERS)),
        ]
    )

    printed = capsys.readouterr().out
    (setting,) = document["settings"]
    assert "== lora-fp32" in printed and "kubetune speed-up" in printed
    assert f"fastest TRL: {TRL_PACKING}" in printed
    assert list(setting["contenders"]) == list(SMOKE_CONTENDERS)
    assert not setting["problems"]
    assert {run["steps"] for run in setting["runs"]} == {SIZES["smoke"].steps}
    assert json.loads((tmp_path / "latest.json").read_text()) == json.loads(json.dumps(document))
    assert len(list(tmp_path.glob("*-smoke.json"))) == 1


def test_the_gpu_configuration_holds_its_memory_estimate_against_the_measured_peak(tmp_path: Path) -> None:
    """On a GPU each table says how far `kubetune estimate` is from kubetune's measured peak;
    here the estimates are computed and the line is rendered from made-up measurements."""
    workload = SIZES["gpu"]
    prepared = Prepared(
        tmp_path, tmp_path / "model", tmp_path / "data" / "train.jsonl", tmp_path / "data" / "eval.jsonl", [300], [300]
    )
    estimates = {
        s.name: kubetune_estimate_mib(
            run_spec(workload, s, prepared, KUBETUNE, 1), workload.shape, workload.shape.vocab
        )
        for s in workload.settings
    }
    # A 3.8B model: QLoRA's 4-bit base needs the least, full fine-tuning under ZeRO-3 on one device
    # the most (16 bytes per weight, and activations for 8 rows of 1,024 tokens, under 16 more);
    # DoRA keeps more per token than LoRA.
    assert min(estimates, key=estimates.__getitem__).startswith("qlora")
    assert max(estimates, key=estimates.__getitem__).startswith("full")
    assert 3.8e9 * 16 / 2**20 < max(estimates.values()) < 3.8e9 * 32 / 2**20
    assert estimates["dora-bf16"] > estimates["lora-bf16"]

    setting = workload.settings[0]
    report = SettingReport(setting, "t", steps=1, tokens=1, flops_formula="f", estimate_mib=estimates[setting.name])
    measured = estimates[setting.name] / 1.1
    report.runs.append(
        Run(
            contender=KUBETUNE,
            round=0,
            wall_seconds=1.0,
            train_seconds=1.0,
            tokens=1,
            steps=1,
            peak_rss_mib=1.0,
            cpu_share=1.0,
            busy_before=0.0,
            attempts=1,
            eval_loss=1.0,
            model_flops=1.0,
            matmul_flops_per_second=1.0,
            accelerator_peak_mib=measured,
        )
    )
    assert report.estimate_error() == pytest.approx(0.1)
    assert "+10.0% (within the 15% target)" in render(report)
    assert SettingReport.from_dict(json.loads(json.dumps(report.as_dict()))).estimate_mib == report.estimate_mib


def test_a_kubetune_run_that_ends_before_its_training_loop_says_why(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    (prepared / "model").mkdir(parents=True)
    run = RunSpec(
        contender=KUBETUNE,
        method="lora",
        precision="fp32",
        zero3=False,
        model=str(prepared / "model"),
        train=str(prepared / "missing.jsonl"),  # the data is not there: the run ends in its prepare phase
        steps=2,
        effective_batch=1,
        per_device_batch=1,
        learning_rate=1e-4,
        warmup_steps=0,
        lora_r=4,
        lora_alpha=8,
        max_length=64,
        seed=1,
        accelerators=0,
    )
    (tmp_path / "run").mkdir()

    with pytest.raises(RuntimeError, match=r"kubetune ended before its training loop did: \w+: .*missing\.jsonl"):
        run_kubetune(run, tmp_path / "run")
