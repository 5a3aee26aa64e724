"""Model files are untrusted: weights load from safetensors only, and code shipped with a
model runs only when the spec says to trust it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api import FineTuneJobSpec, Precision
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.model import load_model, load_tokenizer, resolve_source
from kubetune_trainer.runtime import Runtime

from .conftest import memorise_spec

RAN = "ran.txt"


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _spec(path: str) -> FineTuneJobSpec:
    return memorise_spec("lora", ["adapter"], model={"pvc": {"claimName": "models", "path": path}})


def _runtime(volumes: Path, tmp_path: Path) -> Runtime:
    return Runtime.from_env({"KUBETUNE_VOLUMES": str(volumes), "KUBETUNE_WORK": str(tmp_path / "work")})


def _copy_config(volumes: Path, root: Path, name: str, **changes: Any) -> Path:
    """The tiny model's config (changed) in a folder of its own under `root`."""
    folder = root / "models" / name
    folder.mkdir(parents=True)
    config = json.loads((volumes / "models" / "tiny-phi3" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))
    return folder


def test_a_model_with_only_pickled_weights_is_refused_unloaded(volumes: Path, tmp_path: Path) -> None:
    folder = _copy_config(volumes, tmp_path / "volumes", "pickled")
    torch.save(
        {"model.embed_tokens.weight": torch.zeros(2), "x": _RunsCode(tmp_path / RAN)}, folder / "pytorch_model.bin"
    )

    with pytest.raises(InvalidSpec) as refused:
        resolve_source(_spec("pickled"), _runtime(tmp_path / "volumes", tmp_path))

    assert str(refused.value) == (
        "model models:pickled has no safetensors weights (it holds pytorch_model.bin); pickle checkpoints are "
        "refused because loading them can run code: convert the weights to safetensors (save_pretrained writes "
        "them by default)"
    )
    assert not (tmp_path / RAN).exists()


def test_a_model_asking_to_run_its_own_code_is_refused_when_the_spec_does_not_trust_it(
    volumes: Path, tmp_path: Path
) -> None:
    """The model's Python would write a file on import; it never runs."""
    root = tmp_path / "volumes"
    auto_map = {"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.Custom"}
    folder = _copy_config(volumes, root, "custom", model_type="kubetune-custom", auto_map=auto_map)
    shutil.copy(volumes / "models" / "tiny-phi3" / "model.safetensors", folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(volumes / "models" / "tiny-phi3" / name, folder)
    runs = f"open({str(tmp_path / RAN)!r}, 'w').write('ran')\n"
    (folder / "configuration_custom.py").write_text(runs)
    (folder / "modeling_custom.py").write_text(runs)
    spec = _spec("custom")
    runtime = _runtime(root, tmp_path)
    source = resolve_source(spec, runtime)

    with pytest.raises(InvalidSpec, match="contains custom code which must be executed") as refused:
        load_model(spec, source, Precision.FP32, runtime)

    assert str(refused.value).startswith("cannot load model")
    assert "trust_remote_code=True" in str(refused.value)
    assert not source.trust_remote_code
    assert not (tmp_path / RAN).exists()
    load_tokenizer(source, runtime)  # the tokenizer's own files are data: it loads without the model's code
    assert not (tmp_path / RAN).exists()


def test_an_evaluation_before_training_leaves_4bit_weights_trainable(volumes: Path, runtime: Runtime) -> None:
    """On a CPU a 4-bit layer run in evaluation mode would repack its weights into a layout
    without a backward; after such a pass, gradients must still reach the lowest adapter."""
    import torch

    from kubetune.api import Precision
    from kubetune_trainer.model import apply_method, load_model, resolve_source

    from .conftest import memorise_spec

    spec = memorise_spec("qlora", ["adapter"])
    source = resolve_source(spec, runtime)
    model = apply_method(load_model(spec, source, Precision.BF16, runtime), spec, source)
    ids = torch.arange(3, 19).reshape(2, 8)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)

    model.train()
    model(input_ids=ids, labels=ids).loss.backward()

    packed = [m for m in model.modules() if getattr(getattr(m, "weight", None), "quant_state", None) is not None]
    assert packed and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in packed)
    lowest = next(p for name, p in model.named_parameters() if "layers.0." in name and "lora_B" in name)
    assert lowest.grad is not None and lowest.grad.abs().sum() > 0
