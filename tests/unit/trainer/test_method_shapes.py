"""Each method shapes the model as it should, before any training: LoRA layers alone trainable,
DoRA's magnitude vectors among them, QLoRA's base in 4 bits, every weight for full."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import MethodType
from kubetune_trainer.runtime import Runtime

from .conftest import memorise_spec


@pytest.mark.parametrize("method", list(MethodType))
def test_method_shapes_the_model(method: MethodType, volumes: Path, runtime: Runtime) -> None:
    from kubetune_trainer.model import apply_method, load_model, resolve_source, trainable_parameters

    spec = memorise_spec(method.value, ["merged"] if method is MethodType.FULL else ["adapter"])
    source = resolve_source(spec, runtime)
    from kubetune.api import Precision

    model = apply_method(load_model(spec, source, Precision.BF16, runtime), spec, source)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    trained_count, total = trainable_parameters(model)

    if method is MethodType.FULL:
        assert trained_count == total
        return
    assert trainable and all("lora_" in name for name in trainable)
    assert any("lora_magnitude_vector" in name for name in trainable) == (method is MethodType.DORA)
    if method is MethodType.QLORA:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
