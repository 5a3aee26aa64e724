"""The trainer benchmark: kubetune's trainer against TRL's SFTTrainer on the same work.

    python -m bench.trainer                 # the CPU configuration: the 30M model, then the realistic shapes
    python -m bench.trainer --size cpu      # the 30M model alone (a few minutes)
    python -m bench.trainer --size gpu      # Phi-3-mini-shaped, on one GPU
    python -m bench.trainer --size smoke    # tiny, for the test suite

For each setting (method and precision) every contender trains the same model on the
same examples, in its own process, round after round in a rotated order; the harness
measures each from outside, evaluates each result with one function, and prints one
table per setting. JSON goes to bench/results/ (a timestamped file and latest.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.contenders import (
    CONTENDERS,
    DESCRIPTIONS,
    KUBETUNE,
    KUBETUNES,
    ROW_BATCHED,
    TRL_BEST,
    TRL_KAITO,
    RunSpec,
    kubetune_manifest,
)
from bench.measure import Measured, eval_loss, flops, matmul_rate, run_contender, wait_for_quiet
from bench.report import BUSY_SHARE, DEFAULT_TOLERANCE, Run, SettingReport, render
from bench.workload import SIZES, ModelShape, Prepared, Setting, Workload, prepare

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CONTENDERS = (KUBETUNE, TRL_KAITO, *TRL_BEST)
CPU_CONFIGURATION = ("cpu", "smollm2-135m", "qwen2.5-0.5b")
"""What `make bench-trainer` runs: the 30M model's four settings, then LoRA bf16 on the shapes
of SmolLM2-135M and Qwen2.5-0.5B, where the vocabulary makes the head and the loss weigh."""


def run_spec(workload: Workload, setting: Setting, prepared: Prepared, contender: str, accelerators: int) -> RunSpec:
    """The same work for every contender; only the per-device batch is the trainer's own."""
    batch = workload.kubetune_batch if contender in KUBETUNES else 1 if contender == TRL_KAITO else workload.best_batch
    if contender in ROW_BATCHED:
        batch = rows_per_step(packed_rows(prepared.train_lengths, workload.max_length), workload.steps)
    return RunSpec(
        contender=contender,
        method=setting.method,
        precision=setting.precision,
        zero3=setting.zero3,
        model=str(prepared.model),
        train=str(prepared.train),
        steps=workload.steps,
        effective_batch=batch if contender in ROW_BATCHED else workload.effective_batch,
        per_device_batch=batch,
        learning_rate=workload.learning_rate[setting.method],
        warmup_steps=workload.warmup_steps,
        lora_r=workload.lora_r,
        lora_alpha=workload.lora_alpha,
        max_length=workload.max_length,
        seed=workload.seed,
        accelerators=accelerators,
    )


def kubetune_estimate_mib(run: RunSpec, shape: ModelShape, vocab: int) -> float:
    """What `kubetune estimate` says kubetune's run needs per device, in MiB."""
    from kubetune.api import parse_finetunejob
    from kubetune.estimate import estimate, read_model_facts

    spec = parse_finetunejob(kubetune_manifest(run)).spec
    facts = read_model_facts(shape.config(vocab))
    return estimate(spec, facts, world_size=max(1, run.accelerators)).total / 2**20


def packed_rows(lengths: Sequence[int], max_length: int) -> int:
    """Rows of `max_length` that first-fit-decreasing packing fills (TRL's best-fit packing
    fills as many, give or take one)."""
    room: list[int] = []
    for length in sorted(lengths, reverse=True):
        fits = next((index for index, free in enumerate(room) if length <= free), None)
        if fits is None:
            room.append(max_length - length)
        else:
            room[fits] -= length
    return len(room)


def rows_per_step(rows: int, steps: int) -> int:
    """Packed rows per optimizer step that make one epoch's step count nearest `steps`."""
    low = max(1, rows // steps)
    return min((low, low + 1), key=lambda per_step: abs(-(-rows // per_step) - steps))


def flops_formula(setting: Setting) -> str:
    linear = "4N + 6n (N frozen weights, n LoRA weights)" if setting.uses_adapter else "6N (N weights)"
    return (
        f"{linear} per token + 12 x hidden x layers per causal (query, key) pair, "
        "on the trained tokens only (weights: every projection and the output head)"
    )


@dataclass(frozen=True)
class Options:
    rounds: int | None
    """Rounds of every setting (default: the setting's own)."""
    timeout: float
    tolerance: float
    quiet: float
    """Seconds to wait, before each run, for other work on the machine to stop."""
    retries: int
    """Runs again (CPU only) when other work took the CPUs from a training loop."""


def bench_setting(
    workload: Workload, setting: Setting, prepared: Prepared, contenders: Sequence[str], scratch: Path, options: Options
) -> SettingReport:
    """Every contender, round after round in a rotated order, on one setting."""
    import torch

    on_cpu = not torch.cuda.is_available()
    rounds = options.rounds or setting.rounds
    report = SettingReport(
        setting=setting,
        title=title(workload, prepared, rounds),
        steps=workload.steps,
        tokens=prepared.train_tokens,
        flops_formula=flops_formula(setting),
        tolerance=options.tolerance,
    )
    model_flops = flops(workload.shape, setting, prepared.train_lengths, workload.lora_r)
    if not on_cpu:
        vocab = json.loads((prepared.model / "config.json").read_text())["vocab_size"]
        kubetune_run = run_spec(workload, setting, prepared, KUBETUNE, accelerators=1)
        report.estimate_mib = kubetune_estimate_mib(kubetune_run, workload.shape, vocab)
    held_out = [json.loads(line) for line in prepared.eval.read_text().splitlines()]
    for index in range(rounds):
        if index == 1:
            contenders = fastest_of_best(report, contenders)
        wait_for_quiet(options.quiet)
        ceiling = matmul_rate(workload.shape, setting.precision, workload.kubetune_batch * workload.max_length)
        shift = index % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            run = run_spec(workload, setting, prepared, contender, accelerators=0 if on_cpu else 1)
            folder = scratch / setting.name / f"round-{index}" / contender
            measured, busy, attempts = measure_quietly(run, folder, options, retry=on_cpu)
            result = measured.result
            loss = eval_loss(run.model, result["checkpoint"], setting.uses_adapter, held_out, setting.precision)
            for checkpoints in folder.glob("attempt-*/output"):
                shutil.rmtree(checkpoints, ignore_errors=True)  # large; the logs stay
            report.runs.append(
                Run(
                    contender=contender,
                    round=index,
                    wall_seconds=measured.wall_seconds,
                    train_seconds=measured.train_seconds,
                    tokens=prepared.train_tokens,
                    steps=result["steps"],
                    peak_rss_mib=measured.peak_rss_mib,
                    cpu_share=measured.cpu_share,
                    busy_before=busy,
                    attempts=attempts,
                    eval_loss=loss,
                    model_flops=model_flops,
                    matmul_flops_per_second=ceiling,
                    tokens_counted=result["tokens"],
                    accelerator_peak_mib=result["acceleratorPeakMiB"],
                )
            )
            print(
                f"  {setting.name} round {index + 1}/{rounds} {contender}: {measured.train_seconds:.1f} s "
                f"training, {prepared.train_tokens / measured.train_seconds:,.0f} tokens/s, eval loss {loss:.4f}",
                file=sys.stderr,
            )
    return report


def fastest_of_best(report: SettingReport, contenders: Sequence[str]) -> list[str]:
    """The contenders without the slower of TRL's two best configurations, by the first round."""
    candidates = [c for c in TRL_BEST if c in contenders]
    if len(candidates) < 2:
        return list(contenders)
    slower = min(candidates, key=lambda c: report.spread(c, lambda run: run.tokens_per_second).median)
    return [c for c in contenders if c != slower]


def measure_quietly(run: RunSpec, folder: Path, options: Options, retry: bool) -> tuple[Measured, float, int]:
    """One run, measured; run again while other work took the CPUs from its training loop,
    keeping the attempt that had most of them. Returns it, the busy share seen before it,
    and the attempts made."""
    best: tuple[Measured, float] | None = None
    attempts = 1 + (options.retries if retry else 0)
    for attempt in range(attempts):
        busy = wait_for_quiet(options.quiet)
        measured = run_contender(run, folder / f"attempt-{attempt + 1}", options.timeout)
        if best is None or measured.cpu_share > best[0].cpu_share:
            best = (measured, busy)
        if not retry or measured.cpu_share >= BUSY_SHARE:
            return (*best, attempt + 1)
    assert best is not None
    return (*best, attempts)


def title(workload: Workload, prepared: Prepared, rounds: int) -> str:
    shape = workload.shape
    return (
        f"{shape.like + '-shaped ' if shape.like else ''}{shape.architecture}, vocabulary {shape.vocab:,}, "
        f"{shape.linear_parameters() / 1e6:.1f}M weights in its matrices (hidden "
        f"{shape.hidden}, {shape.layers} layers), {workload.train_examples} chats = {prepared.train_tokens:,} "
        f"tokens, {workload.steps} steps of {workload.effective_batch}, max length {workload.max_length}, "
        f"{rounds} round(s)"
    )


def machine() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torchThreads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name) for name in ("kubetune", "torch", "transformers", "peft", "trl", "accelerate")
        },
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    else:
        facts["bf16MatrixInstructions"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_results(document: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2) + "\n"
    stamped = folder / f"{document['started'].replace(':', '').replace('-', '')}-{document['size']}.json"
    stamped.write_text(text)
    (folder / "latest.json").write_text(text)
    return stamped


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.trainer", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        default=",".join(CPU_CONFIGURATION),
        help=f"comma-separated workloads, from {', '.join(SIZES)} (default: %(default)s)",
    )
    parser.add_argument("--settings", help="comma-separated settings to run, e.g. lora-bf16,full-fp32 (default: all)")
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated, from {', '.join(CONTENDERS)} (default: %(default)s)",
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds of every setting (default: the setting's)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes (default: bench/results)")
    parser.add_argument("--keep", type=Path, help="keep the prepared data and each run's logs in this folder")
    parser.add_argument(
        "--show", type=Path, metavar="JSON", help="print the tables of an earlier run's results, and stop"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one contender's run may take")
    parser.add_argument(
        "--wait-for-quiet",
        type=float,
        default=30,
        metavar="SECONDS",
        help="before each run, wait up to this long for other work on the machine to stop (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="on a CPU, runs again while other work takes over a fifth of a training loop's CPU time",
    )
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="eval loss agreement (fraction)")
    return parser.parse_args(argv)


def chosen(workloads: Sequence[Workload], args: argparse.Namespace) -> tuple[list[str] | None, list[str]]:
    """The settings asked for (None: every setting of each size) and the contenders, checked."""
    names = args.settings.split(",") if args.settings else None
    if names is not None:
        known = {s.name for workload in workloads for s in workload.settings}
        unknown = set(names) - known
        if unknown:
            raise SystemExit(
                f"unknown setting(s) {', '.join(sorted(unknown))}; the sizes asked for have {', '.join(sorted(known))}"
            )
    contenders = args.contenders.split(",")
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contender(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONTENDERS)}")
    return names, contenders


def sizes(args: argparse.Namespace) -> list[Workload]:
    names = args.size.split(",")
    unknown = [name for name in names if name not in SIZES]
    if unknown:
        raise SystemExit(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    return [SIZES[name] for name in names]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Each size in turn, each writing its own results; returns the last size's."""
    args = parse_arguments(argv)
    if args.show:
        document: dict[str, Any] = json.loads(args.show.read_text())
        for setting in document["settings"]:
            print(render(SettingReport.from_dict(setting)) + "\n")
        return document
    workloads = sizes(args)
    names, contenders = chosen(workloads, args)
    emulated = not native_bf16()
    document = {}
    for workload in workloads:
        settings = [s for s in workload.settings if names is None or s.name in names]
        if names is None and emulated:
            skipped = [s for s in settings if s.precision == "bf16"]
            settings = [s for s in settings if s not in skipped]
            for setting in skipped:
                print(f"{workload.size} {setting.name}: skipped, {EMULATED_BF16} (--settings {setting.name} runs it)")
        if settings:
            document = bench_size(workload, settings, contenders, args)
    return document


EMULATED_BF16 = "this CPU has no native bf16 matrix products (AVX512-BF16 or AMX), so bf16 would measure an emulation"


def native_bf16() -> bool:
    """Whether bf16 matrix products are native here (on a GPU: Ampere and later)."""
    from kubetune_trainer.hardware import Hardware

    return Hardware.detect().bf16


def bench_size(
    workload: Workload, settings: Sequence[Setting], contenders: Sequence[str], args: argparse.Namespace
) -> dict[str, Any]:
    options = Options(args.rounds, args.timeout, args.tolerance, args.wait_for_quiet, args.retries)
    started = datetime.now(UTC).replace(microsecond=0)
    clock = time.monotonic()
    scratch = args.keep / workload.size if args.keep else Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    try:
        prepared = prepare(workload, scratch / "prepared")
        reports = []
        for setting in settings:
            report = bench_setting(workload, setting, prepared, contenders, scratch / "runs", options)
            reports.append(report)
            print(render(report) + "\n", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    document = {
        "benchmark": "trainer",
        "size": workload.size,
        "started": started.isoformat().replace("+00:00", "Z"),
        "seconds": round(time.monotonic() - clock, 1),
        "machine": machine(),
        "workload": dataclasses.asdict(workload) | {"steps": workload.steps, "trainedTokens": prepared.train_tokens},
        "contenders": {name: DESCRIPTIONS[name] for name in contenders},
        "settings": [report.as_dict() for report in reports],
    }
    path = write_results(document, args.results)
    print(f"results: {path} ({document['seconds']:.0f} s)")
    return document


if __name__ == "__main__":
    main()
