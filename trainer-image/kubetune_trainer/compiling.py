"""torch.compile, one repeated layer at a time.

A decoder's layers run the same code, so Dynamo compiles one of them and every other layer
reuses the graph (their weights are inputs to it, not constants in it): the compile costs
what one layer's does, not what the whole model's does (bench/NOTES.md: 157 s for the
whole benchmark model on 2 CPU cores). Lengths are marked dynamic from the start, since
padding-free batches change width and rows every step; a graph per shape would recompile
every step.

The compile still takes tens of seconds (minutes on a busy CPU), so `auto` compiles only
a run that trains enough tokens to pay it back, and only in the setups it is tested in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubetune.api.enums import Compile
from kubetune.api.spec import FineTuneJobSpec
from kubetune.catalog import Strategy

log = logging.getLogger(__name__)

PAYBACK_TOKENS = 1_000_000
"""Trained tokens per process from which `auto` compiles. On 2 busy CPU cores the compile
took about two minutes and then saved about 0.3 ms a token (bench/NOTES.md, change 3): a
run pays it back from some 400,000 tokens; the margin covers slower compiles and smaller
gains."""

UNCOMPILED_STRATEGIES = frozenset({Strategy.ZERO1, Strategy.ZERO2, Strategy.ZERO3, Strategy.FSDP})
"""DeepSpeed and FSDP wrap and hook the layers themselves; compiling under them is untested."""


def planned_tokens(spec: FineTuneJobSpec, train_examples: int, mean_length: float, world_size: int) -> int:
    """The tokens one process will train on, as planned: its share of the epochs, or of the
    steps times the examples a step takes."""
    training = spec.training
    if training.max_steps is not None:
        examples: float = training.max_steps * training.per_device_batch_size * training.gradient_accumulation_steps
    else:
        examples = training.epochs * train_examples / max(1, world_size)
    return round(examples * mean_length)


def wants_compile(spec: FineTuneJobSpec, tokens: int, device: str) -> bool:
    """Whether the run compiles its layers: the spec's choice, and for `auto` a run long
    enough, on a CPU (where the gain and the payback were measured; on a GPU they were not
    yet), in a setup compiling is tested in."""
    match spec.training.compile:
        case Compile.ALWAYS:
            return True
        case Compile.NEVER:
            return False
        case Compile.AUTO:
            return (
                device == "cpu"
                and tokens >= PAYBACK_TOKENS
                and spec.matrix_strategy not in UNCOMPILED_STRATEGIES
                and spec.method.quantized is None
                and not spec.training.gradient_checkpointing
            )
    raise AssertionError(f"unhandled compile choice {spec.training.compile}")


def repeated_layers(model: Any) -> list[Any]:
    """The model's repeated blocks: the modules of the classes transformers keeps whole when
    it splits a model across devices (`_no_split_modules`, the decoder layer), under any
    adapter wrapping."""
    names = set(getattr(_base(model), "_no_split_modules", None) or ())
    return [module for module in _base(model).modules() if type(module).__name__ in names]


@contextmanager
def compiled_layers(model: Any, wanted: bool) -> Iterator[int]:
    """Within: every repeated layer compiled in place, with dynamic lengths (after peft wraps
    the model, so the graph holds the adapters' work too); yields how many. After: the layers
    run eagerly again, so the final evaluation, the sample answers (generation, with a
    key/value cache: other graphs) and the exports (merging adapters changes the layers)
    compile nothing more."""
    base = _base(model)
    layers = repeated_layers(model) if wanted else []
    # Over a frozen embedding the first layer's input needs no gradient and every other
    # layer's does: two graphs, a second compile. Asking for the input's gradient costs the
    # first layer's input gradient, a few percent of a step.
    hooked = bool(layers) and not getattr(base, "_require_grads_hooks", None)
    if hooked:
        base.enable_input_require_grads()
    for layer in layers:
        layer.compile(dynamic=True)
    if layers:
        log.info("compiling %d %s layers with torch.compile", len(layers), type(layers[0]).__name__)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            # nn.Module.compile keeps the compiled call here; no public way undoes it.
            layer._compiled_call_impl = None
        if hooked:
            base.disable_input_require_grads()


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model
