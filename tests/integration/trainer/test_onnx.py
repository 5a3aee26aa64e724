"""The onnx output format on tiny random Phi-3 and Llama models: the export passes its own
check, runs as a server would run it, and a broken export is caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubetune.api import TaskType
from kubetune_trainer.errors import InvalidSpec, TrainerError
from kubetune_trainer.onnx_export import (
    ATOL,
    CHECK_FILE,
    NEW_TOKENS,
    ONNX_FILE,
    PROMPTS,
    RTOL,
    OnnxCheck,
    check_onnx,
    export_onnx,
    require_causal_lm,
)

from .conftest import CORPUS

Export = tuple[Path, Path, OnnxCheck]


@pytest.fixture(scope="module", params=["phi3", "llama"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Export:
    """A tiny model standing for the merged output, and its export: made once per architecture."""
    from kubetune_trainer.tiny import make_tiny_model

    root = tmp_path_factory.mktemp(f"onnx-{request.param}")
    merged = make_tiny_model(root / "merged", CORPUS, architecture=request.param)
    return merged, root / "onnx", export_onnx(merged, root / "onnx")


def test_the_export_matches_pytorch(exported: Export) -> None:
    _, onnx_dir, check = exported

    assert check.passed
    assert check.max_abs_logit_diff <= check.tolerance == pytest.approx(ATOL + RTOL * check.logit_scale)
    assert check.tokens_equal == check.tokens_compared == len(PROMPTS) * NEW_TOKENS
    assert check.export_seconds is not None and check.export_seconds > 0
    written = json.loads((onnx_dir / CHECK_FILE).read_text())
    assert written["passed"] is True
    assert written["maxAbsLogitDiff"] == check.max_abs_logit_diff
    assert written["tokensEqual"] == check.tokens_equal


def test_the_weights_are_external_data_beside_the_graph(exported: Export) -> None:
    import onnx
    from onnx.external_data_helper import uses_external_data

    merged, onnx_dir, _ = exported
    graph = onnx.load(str(onnx_dir / ONNX_FILE), load_external_data=False).graph
    external = [tensor for tensor in graph.initializer if uses_external_data(tensor)]
    locations = {entry.value for tensor in external for entry in tensor.external_data if entry.key == "location"}

    assert locations == {f"{ONNX_FILE}.data"}
    # Every matrix is out there; what stays inline is a norm's vector or a constant.
    assert all(int(np.prod(tensor.dims)) <= 1024 for tensor in graph.initializer if not uses_external_data(tensor))
    assert (onnx_dir / f"{ONNX_FILE}.data").stat().st_size >= (merged / "model.safetensors").stat().st_size * 0.95


def test_a_consumer_finds_what_it_needs_beside_the_graph(exported: Export) -> None:
    from transformers import AutoConfig, AutoTokenizer

    _, onnx_dir, _ = exported
    genai = json.loads((onnx_dir / "genai_config.json").read_text())["model"]
    config = AutoConfig.from_pretrained(onnx_dir)

    assert AutoTokenizer.from_pretrained(onnx_dir)("hello")["input_ids"]
    assert (onnx_dir / "generation_config.json").is_file()
    assert genai["type"] == config.model_type
    assert genai["decoder"]["filename"] == ONNX_FILE
    assert genai["decoder"]["num_hidden_layers"] == config.num_hidden_layers
    assert genai["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"


def test_the_graph_continues_a_batch_of_two_from_a_past(exported: Export) -> None:
    """Half of each prompt goes through PyTorch into a cache; the graph takes that cache and
    the other half (several tokens at once, left-padded rows) and must give PyTorch's logits
    for the whole prompt, and a present as long as the whole prompt."""
    import onnxruntime
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged, onnx_dir, _ = exported
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged, padding_side="left")
    batch = tokenizer([CORPUS[0], CORPUS[3] + " " + CORPUS[5]], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0) * mask
    split = ids.shape[1] // 2
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
        first = model(
            input_ids=ids[:, :split], attention_mask=mask[:, :split], position_ids=positions[:, :split], use_cache=True
        )
    feed: dict[str, Any] = {
        "input_ids": ids[:, split:].numpy(),
        "attention_mask": mask.numpy(),
        "position_ids": positions[:, split:].numpy(),
    }
    for i, layer in enumerate(first.cache.layers):
        feed[f"past_key_values.{i}.key"] = layer.keys.numpy()
        feed[f"past_key_values.{i}.value"] = layer.values.numpy()

    session = onnxruntime.InferenceSession(str(onnx_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    logits, *presents = session.run(None, feed)

    expected = whole[:, split:]
    real = mask[:, split:].numpy().astype(bool)
    assert split > 1 and ids.shape[0] == 2 and not mask[:, :split].all()  # padding lies in the past
    assert np.abs(logits - expected)[real].max() <= ATOL + RTOL * np.abs(expected[real]).max()
    assert len(presents) == 2 * model.config.num_hidden_layers
    assert all(present.shape[0] == 2 and present.shape[2] == ids.shape[1] for present in presents)


def test_a_corrupted_weight_fails_the_check(exported: Export, tmp_path: Path) -> None:
    import onnx
    from onnx.external_data_helper import uses_external_data

    merged, onnx_dir, _ = exported
    broken = shutil.copytree(onnx_dir, tmp_path / "broken")
    graph = onnx.load(str(broken / ONNX_FILE), load_external_data=False).graph
    places = [
        {entry.key: entry.value for entry in tensor.external_data}
        for tensor in graph.initializer
        if uses_external_data(tensor)
    ]
    largest = max(places, key=lambda place: int(place["length"]))
    offset, length = int(largest.get("offset", 0)), int(largest["length"])
    with (broken / f"{ONNX_FILE}.data").open("r+b") as data:
        data.seek(offset)
        weights = np.frombuffer(data.read(length), dtype=np.float32) + np.float32(1.0)
        data.seek(offset)
        data.write(weights.tobytes())

    figures = rf"max \|logit difference\| .* greedy tokens equal \d+/{len(PROMPTS) * NEW_TOKENS}"
    with pytest.raises(TrainerError, match=figures):
        check_onnx(merged, broken)
    written = json.loads((broken / CHECK_FILE).read_text())
    assert written["passed"] is False
    assert written["maxAbsLogitDiff"] > written["tolerance"]


@pytest.mark.parametrize("task", [TaskType.SEQUENCE_CLASSIFICATION, TaskType.TOKEN_CLASSIFICATION, TaskType.SEQ2SEQ])
def test_only_causal_lm_is_exported(task: TaskType) -> None:
    require_causal_lm(TaskType.CAUSAL_LM)
    with pytest.raises(InvalidSpec, match="onnx export supports causal-lm only"):
        require_causal_lm(task)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("architecture", "changes"),
    [
        # Phi-3-mini-4k's sliding window, short enough that the prompts cross it.
        ("phi3", {"sliding_window": 6}),
        # Llama 3's grouped key/value heads and tied embeddings.
        ("llama", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    ],
)
def test_shapes_of_real_models_export(architecture: str, changes: dict[str, Any], tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.tiny import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny", CORPUS, architecture=architecture)  # type: ignore[arg-type]
    config = AutoConfig.from_pretrained(tiny)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    merged = tmp_path / "merged"
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(merged)  # as a bf16 merge is saved
    AutoTokenizer.from_pretrained(tiny).save_pretrained(merged)

    check = export_onnx(merged, tmp_path / "onnx")

    assert check.passed
    assert check.tokens_equal == len(PROMPTS) * NEW_TOKENS
