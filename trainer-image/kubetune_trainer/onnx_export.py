"""The onnx output format: the merged causal LM as one ONNX decoder graph, checked with
ONNX Runtime against PyTorch before it ships.

One graph serves the prompt (prefill, an empty past) and every generated token (decode,
the past that the previous call returned), with batch, sequence and past lengths all
dynamic. Its inputs and outputs carry the names Optimum's and ONNX Runtime GenAI's
decoders use: input_ids, attention_mask (past and new tokens), position_ids and
past_key_values.N.key|value in; logits and present.N.key|value out, each cache tensor
[batch, key/value heads, length, head size]. The weights go to model.onnx.data beside
model.onnx, so a model past protobuf's 2 GB limit saves and loads like a small one.

The exporter is torch.onnx's own (torch.export, then onnxscript's translation): the
transformers cache is a DynamicCache, so a small wrapper builds one from the flat past
tensors and flattens the present back out.

The check runs the saved files, not the in-memory graph: the logits of a padded batch of
prompts, and of every greedy step taken through the key/value cache, against PyTorch's;
and the greedy tokens against PyTorch's `generate`. PyTorch's figures are taken first, so
the PyTorch model is gone before ONNX Runtime loads its own copy of the weights.
"""

from __future__ import annotations

import gc
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime
import torch
from torch.export import Dim
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from kubetune.api import TaskType
from kubetune_trainer.errors import InvalidSpec, TrainerError

ONNX_FILE = "model.onnx"
CHECK_FILE = "onnx_check.json"
GENAI_CONFIG_FILE = "genai_config.json"

# Two prompts of different lengths, so the batch is padded as a server's would be.
PROMPTS = ("The quick brown fox", "Once upon a time, in a land far away, there lived a")
NEW_TOKENS = 8
# The logits pass when |ONNX Runtime - PyTorch| <= ATOL + RTOL * (largest |logit|): float32
# rounding grows with the logits' range and with depth, which a fixed bound would not follow.
ATOL = 1e-4
RTOL = 1e-4

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class OnnxCheck:
    """What the check measured: ONNX Runtime against PyTorch on the same inputs."""

    max_abs_logit_diff: float
    logit_scale: float  # the largest |logit| PyTorch produced where they were compared
    tolerance: float
    tokens_compared: int
    tokens_equal: int
    export_seconds: float | None = None  # None when an existing export was checked

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.tolerance and self.tokens_equal == self.tokens_compared

    def describe(self) -> str:
        return (
            f"max |logit difference| {self.max_abs_logit_diff:.3g} (tolerance {self.tolerance:.3g}, "
            f"largest |logit| {self.logit_scale:.3g}); greedy tokens equal {self.tokens_equal}/{self.tokens_compared}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "maxAbsLogitDiff": self.max_abs_logit_diff,
            "logitScale": self.logit_scale,
            "tolerance": self.tolerance,
            "tokensCompared": self.tokens_compared,
            "tokensEqual": self.tokens_equal,
            "exportSeconds": self.export_seconds,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class _Reference:
    """PyTorch's answers on the check's inputs, kept after the model is dropped."""

    input_ids: Int64Array  # [batch, prompt], left-padded
    attention_mask: Int64Array
    prompt_logits: FloatArray  # [batch, prompt, vocab]
    step_logits: list[FloatArray]  # one [batch, vocab] per generated token
    tokens: Int64Array  # [batch, generated]
    cache_shapes: list[tuple[int, int]]  # (key/value heads, head size) per layer
    eos_token_ids: frozenset[int]
    pad_token_id: int


def require_causal_lm(task: TaskType) -> None:
    """The exported graph and its check are a decoder's; other heads are refused before training."""
    if task is not TaskType.CAUSAL_LM:
        raise InvalidSpec("onnx export supports causal-lm only")


def export_onnx(
    merged_dir: Path,
    onnx_dir: Path,
    prompts: Sequence[str] = PROMPTS,
    new_tokens: int = NEW_TOKENS,
) -> OnnxCheck:
    """Export the merged model in `merged_dir` to `onnx_dir` (model.onnx, model.onnx.data, its
    config, generation config, tokenizer and genai_config.json), then check it; the figures are
    written to onnx_check.json. Raises TrainerError, with the figures, when the check fails."""
    model, tokenizer = _load(merged_dir)
    onnx_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(onnx_dir)
    model.generation_config.save_pretrained(onnx_dir)
    tokenizer.save_pretrained(onnx_dir)  # as it came, before the check pads with it
    reference = _reference(model, tokenizer, prompts, new_tokens)
    (onnx_dir / GENAI_CONFIG_FILE).write_text(json.dumps(_genai_config(model, tokenizer, reference), indent=2) + "\n")
    started = time.monotonic()
    _export(model, reference.cache_shapes, onnx_dir / ONNX_FILE)
    seconds = time.monotonic() - started
    del model
    gc.collect()
    return _check(onnx_dir, reference, export_seconds=seconds)


def check_onnx(
    merged_dir: Path,
    onnx_dir: Path,
    prompts: Sequence[str] = PROMPTS,
    new_tokens: int = NEW_TOKENS,
) -> OnnxCheck:
    """Check an existing export in `onnx_dir` against the merged model it came from."""
    model, tokenizer = _load(merged_dir)
    reference = _reference(model, tokenizer, prompts, new_tokens)
    del model
    gc.collect()
    return _check(onnx_dir, reference, export_seconds=None)


def _load(merged_dir: Path) -> tuple[Any, Any]:
    # float32 whatever the merge was saved in: the graph and its check are exact to rounding.
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    return model, tokenizer


def _reference(model: Any, tokenizer: Any, prompts: Sequence[str], new_tokens: int) -> _Reference:
    if tokenizer.pad_token_id is None:  # Llama's tokenizers have none; a server pads with end-of-text
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # as for generation: every row's last token is a real one
    pad = tokenizer.pad_token_id
    batch = tokenizer(list(prompts), padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    with torch.no_grad():
        prefill = model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=torch.from_numpy(_positions(mask.numpy())),
            use_cache=True,
        )
        generated = model.generate(
            **batch,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )
    eos = model.generation_config.eos_token_id
    return _Reference(
        input_ids=batch["input_ids"].numpy(),
        attention_mask=mask.numpy(),
        prompt_logits=prefill.logits.numpy(),
        step_logits=[step.numpy() for step in generated.logits],
        tokens=generated.sequences[:, batch["input_ids"].shape[1] :].numpy(),
        cache_shapes=[(layer.keys.shape[1], layer.keys.shape[3]) for layer in prefill.cache.layers],
        eos_token_ids=frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        pad_token_id=int(pad),
    )


def _positions(mask: Int64Array) -> Int64Array:
    """Position ids as `generate` makes them: counted over the real tokens, 0 on padding."""
    return np.where(mask == 1, np.cumsum(mask, axis=-1) - 1, 0).astype(np.int64)


def _input_names(layers: int) -> list[str]:
    past = [f"past_key_values.{i}.{part}" for i in range(layers) for part in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past]


def _output_names(layers: int) -> list[str]:
    return ["logits", *(f"present.{i}.{part}" for i in range(layers) for part in ("key", "value"))]


def _export(model: Any, cache_shapes: list[tuple[int, int]], path: Path) -> None:
    # Sample sizes all distinct, and above 1: torch.export fixes a size of 0 or 1, and may
    # take two equal sizes for the same dimension.
    batch, sequence, past = 2, 3, 5
    sample_past = [
        (torch.zeros(batch, heads, past, size), torch.zeros(batch, heads, past, size)) for heads, size in cache_shapes
    ]
    sample = (
        torch.ones(batch, sequence, dtype=torch.long),
        torch.ones(batch, past + sequence, dtype=torch.long),
        torch.arange(past, past + sequence).repeat(batch, 1),
        sample_past,
    )
    batch_dim, sequence_dim, past_dim = Dim("batch"), Dim("sequence"), Dim("past_sequence")
    dynamic_shapes = {
        "input_ids": {0: batch_dim, 1: sequence_dim},
        "attention_mask": {0: batch_dim, 1: Dim("total_sequence")},
        "position_ids": {0: batch_dim, 1: sequence_dim},
        "past": [({0: batch_dim, 2: past_dim}, {0: batch_dim, 2: past_dim}) for _ in cache_shapes],
    }
    with warnings.catch_warnings():
        # One Dim named on several inputs is said to be "not used" once per extra input: it is.
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        program = torch.onnx.export(
            _FlatCacheDecoder(model).eval(),
            sample,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=_input_names(len(cache_shapes)),
            output_names=_output_names(len(cache_shapes)),
            verbose=False,
        )
    assert program is not None  # the dynamo exporter always returns its program
    program.save(str(path), external_data=True)


class _FlatCacheDecoder(torch.nn.Module):
    """The causal LM with its cache as flat tensors: a DynamicCache is built from the past
    on the way in, and its layers are taken apart on the way out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        # No config, so every layer is a plain one that keeps all it is given: a sliding-window
        # layer would crop its present, and the next call could no longer line the past up with
        # the attention mask. The window is applied by the mask instead, as for the prompt.
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=DynamicCache(past),
            use_cache=True,
        )
        return out.logits, [(layer.keys, layer.values) for layer in out.cache.layers]


def _check(onnx_dir: Path, reference: _Reference, export_seconds: float | None) -> OnnxCheck:
    session = onnxruntime.InferenceSession(str(onnx_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    diff, scale, tokens = _greedy(session, reference)
    check = OnnxCheck(
        max_abs_logit_diff=diff,
        logit_scale=scale,
        tolerance=ATOL + RTOL * scale,
        tokens_compared=reference.tokens.size,
        tokens_equal=int((tokens == reference.tokens).sum()),
        export_seconds=export_seconds,
    )
    (onnx_dir / CHECK_FILE).write_text(json.dumps(check.to_json(), indent=2) + "\n")
    if not check.passed:
        raise TrainerError(f"the ONNX export does not match the PyTorch model: {check.describe()}")
    return check


def _greedy(session: Any, reference: _Reference) -> tuple[float, float, Int64Array]:
    """Generate greedily through the graph's key/value cache as `generate` does (a finished
    row goes on with padding). Returns the largest logit difference from PyTorch's, the
    largest |logit| compared, and the tokens. Step logits are compared for as long as a
    row's tokens still equal PyTorch's: after they part, the inputs differ."""
    mask = reference.attention_mask
    ids = reference.input_ids
    past = {
        f"past_key_values.{i}.{part}": np.zeros((ids.shape[0], heads, 0, size), dtype=np.float32)
        for i, (heads, size) in enumerate(reference.cache_shapes)
        for part in ("key", "value")
    }
    logits, presents = _run(session, ids, mask, _positions(mask), past)
    real = mask.astype(bool)
    diff = float(np.abs(logits - reference.prompt_logits)[real].max())
    scale = float(np.abs(reference.prompt_logits[real]).max())
    tokens: list[Int64Array] = []
    agrees = np.ones(ids.shape[0], dtype=bool)
    finished = np.zeros(ids.shape[0], dtype=bool)
    for step, expected in enumerate(reference.step_logits):
        last = logits[:, -1, :]
        if agrees.any():
            # np.maximum, not max: a NaN from either side must reach the verdict.
            diff = float(np.maximum(diff, np.abs(last - expected)[agrees].max()))
            scale = max(scale, float(np.abs(expected[agrees]).max()))
        chosen = np.where(finished, reference.pad_token_id, last.argmax(-1)).astype(np.int64)
        tokens.append(chosen)
        agrees &= chosen == reference.tokens[:, step]
        finished |= np.isin(chosen, list(reference.eos_token_ids))
        if step + 1 == len(reference.step_logits):
            break
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.int64)], axis=1)
        positions = (mask.sum(-1, keepdims=True) - 1).astype(np.int64)
        logits, presents = _run(session, chosen[:, None], mask, positions, presents)
    return diff, scale, np.stack(tokens, axis=1)


def _run(
    session: Any,
    ids: Int64Array,
    mask: Int64Array,
    positions: Int64Array,
    past: dict[str, FloatArray],
) -> tuple[FloatArray, dict[str, FloatArray]]:
    outputs = session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
    names = [output.name for output in session.get_outputs()]
    by_name = dict(zip(names, outputs, strict=True))
    presents = {name.replace("present.", "past_key_values.", 1): by_name[name] for name in names[1:]}
    return by_name["logits"], presents


def _genai_config(model: Any, tokenizer: Any, reference: _Reference) -> dict[str, Any]:
    """ONNX Runtime GenAI's description of the graph, so its generator can run the folder as it is."""
    config = model.config
    heads, head_size = reference.cache_shapes[0]
    eos = sorted(reference.eos_token_ids)
    return {
        "model": {
            "bos_token_id": tokenizer.bos_token_id,
            "context_length": config.max_position_embeddings,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": ONNX_FILE,
                "head_size": head_size,
                "hidden_size": config.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": config.num_attention_heads,
                "num_hidden_layers": len(reference.cache_shapes),
                "num_key_value_heads": heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": reference.pad_token_id,
            "type": config.model_type,
            "vocab_size": config.vocab_size,
        },
        "search": {
            "do_sample": False,
            "max_length": config.max_position_embeddings,
            "num_beams": 1,
            # The graph concatenates each step's key/values onto the past it was given: the
            # present is a new, longer buffer, not the past one written in place.
            "past_present_share_buffer": False,
        },
    }
