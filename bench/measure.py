"""Measurements: a contender's process from outside, the shared evaluation, and the ceiling.

Everything a figure is computed from is measured the same way for every contender: the
process is started and watched by the harness, the trained weights are evaluated by one
function, and the FLOP counts come from the model's shape and the data, not from the
contender.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.contenders import RunSpec
from bench.workload import ModelShape, Setting

SAMPLE_SECONDS = 0.05
MIB = 1024 * 1024


@dataclass(frozen=True)
class Measured:
    """One contender's run, seen from outside and from its own result file."""

    wall_seconds: float
    """From starting the process to the end of its training loop."""
    train_seconds: float
    """The training loop alone (the trainer's on_train_begin to on_train_end)."""
    peak_rss_mib: float
    """Peak resident memory of the process tree (which ends with its training loop)."""
    cpu_share: float
    """CPU time of the training loop over (its wall time x the trainer's threads): below 1
    when other work on the machine took some of the CPUs."""
    result: dict[str, Any]


class RssSampler:
    """Samples the resident memory of a process and its descendants until it exits."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while True:
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                total = 0
                for member in tree:
                    try:
                        total += member.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.monotonic(), total))
            if not self.process.is_running() or self.process.status() == psutil.STATUS_ZOMBIE:
                return
            time.sleep(SAMPLE_SECONDS)

    def join(self) -> None:
        self._thread.join()

    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


def wait_for_quiet(limit: float, busy: float = 0.25, sample: float = 1.0) -> float:
    """Wait up to `limit` seconds for the CPUs to be mostly idle (other work slows a
    contender by far more than its share: its threads wait for each other). Returns the
    busy fraction seen last."""
    import psutil

    deadline = time.monotonic() + limit
    while True:
        seen = float(psutil.cpu_percent(interval=sample)) / 100
        if seen <= busy or time.monotonic() >= deadline:
            return seen
        time.sleep(sample)


def child_command(run: RunSpec, folder: Path) -> list[str]:
    """The command that trains one contender; ZeRO-3 runs under torchrun, as in a pod."""
    if run.zero3:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
        return [*launcher, "-m", "bench.contenders", str(folder)]
    return [sys.executable, "-m", "bench.contenders", str(folder)]


def run_contender(run: RunSpec, folder: Path, timeout: float) -> Measured:
    """Train one contender in a fresh process and measure it from outside."""
    run.write(folder)
    log = (folder / "log.txt").open("w")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), *_pythonpath()])}
    started = time.monotonic()
    process = subprocess.Popen(child_command(run, folder), stdout=log, stderr=subprocess.STDOUT, env=env)
    sampler = RssSampler(process.pid)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"{run.contender} ran past {timeout:.0f} s; see {folder / 'log.txt'}") from None
    finally:
        log.close()
    sampler.join()
    if code != 0:
        tail = (folder / "log.txt").read_text()[-4000:]
        raise RuntimeError(f"{run.contender} exited with {code}:\n{tail}")
    result = json.loads((folder / "result.json").read_text())
    ended = result["trainEnded"]
    train_seconds = ended - result["trainBegan"]
    return Measured(
        wall_seconds=ended - started,
        train_seconds=train_seconds,
        peak_rss_mib=sampler.peak() / MIB,
        cpu_share=result["trainCpuSeconds"] / (train_seconds * result["threads"]),
        result=result,
    )


def _pythonpath() -> list[str]:
    existing = os.environ.get("PYTHONPATH")
    return existing.split(os.pathsep) if existing else []


# ----------------------------------------------------------------------------- evaluation


def eval_loss(base: str, checkpoint: str, adapter: bool, rows: list[dict[str, Any]], precision: str) -> float:
    """Mean next-token cross-entropy over every token of the held-out chats, one example at
    a time (no padding), with the weights of the checkpoint (an adapter over `base`, or the
    whole model). The one evaluation all contenders get."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if precision == "bf16" and device == "cuda" else torch.float32
    tokenizer: Any = AutoTokenizer.from_pretrained(base)
    weights = base if adapter else checkpoint
    model: Any = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, attn_implementation="sdpa")
    model = model.to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    model.eval()
    total, count = 0.0, 0
    # On CPU, bf16 settings are evaluated under bf16 autocast over fp32 weights: as the
    # training computed, and several times faster than fp32.
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.no_grad(), autocast:
        for row in rows:
            ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
            batch = torch.tensor([ids], device=device)
            logits = model(input_ids=batch).logits.float()
            losses = torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum")
            total += float(losses)
            count += len(ids) - 1
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the next contender gets the whole accelerator
    return total / count


# ----------------------------------------------------------------------------- FLOPs and the ceiling


def flops_per_example(shape: ModelShape, setting: Setting, length: int, lora_r: int) -> float:
    """Model FLOPs to train on one example of `length` tokens (no padding, causal attention).

    Each weight matrix costs 2 FLOPs per element and token forward, 2 more for the input
    gradient, and 2 more for its own gradient when it is trained: 6N for full fine-tuning,
    4N + 6n with LoRA (N frozen base weights, n adapter weights). Attention scores and the
    weighted sum cost 4 * hidden FLOPs per layer for each (query, key) pair forward, three
    times that with the backward pass; causal attention has length * (length + 1) / 2 pairs.
    """
    base = shape.linear_parameters()
    linear = 4 * base + 6 * shape.adapter_parameters(lora_r) if setting.uses_adapter else 6 * base
    pairs = length * (length + 1) / 2
    attention = 3 * 4 * shape.hidden * shape.layers * pairs
    return linear * length + attention


def flops(shape: ModelShape, setting: Setting, lengths: list[int], lora_r: int) -> float:
    return sum(flops_per_example(shape, setting, length, lora_r) for length in lengths)


def matmul_rate(shape: ModelShape, precision: str, rows: int, seconds: float = 0.3) -> float:
    """FLOP/s of plain matrix products of the model's weight shapes with `rows` tokens, in
    the compute dtype, weighted as often as the model uses each shape."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    work, spent = 0.0, 0.0
    for inputs, outputs, count in shape.linear_shapes():
        a = torch.randn(rows, inputs, dtype=dtype, device=device)
        # Laid out as nn.Linear keeps its weight ([outputs, inputs], multiplied transposed): on a
        # CPU a bf16 product with a [inputs, outputs] weight takes a path tens of times slower
        # once outputs run to tens of thousands (a vocabulary), and is not what a model runs.
        b = torch.randn(outputs, inputs, dtype=dtype, device=device).T
        per_product = _time_product(a, b, seconds)
        work += 2.0 * rows * inputs * outputs * count
        spent += per_product * count
    return work / spent


def _time_product(a: Any, b: Any, seconds: float) -> float:
    import torch

    def sync() -> None:
        if a.is_cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    repeats, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        repeats += 1
    sync()
    return (time.perf_counter() - started) / repeats
