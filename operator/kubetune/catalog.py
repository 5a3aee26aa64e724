"""Data that ships with kubetune: model presets and the method x strategy x output support matrix.

Both are YAML files in `kubetune/data`, read once. The API validators and the trainer's
tests read the same files, so what is refused at submission is what is untested.
"""

from __future__ import annotations

import enum
from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class _Data(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, use_attribute_docstrings=True
    )


class ChatTemplate(_Data):
    style: str
    """Family of the tokenizer's template: phi3, llama3, mistral, chatml."""
    system_role: bool
    """Whether the template accepts a system message (if not, it joins the first user turn)."""
    end_of_turn: str
    """Token that closes an assistant turn; training teaches the model to emit it."""


class Shape(_Data):
    """The sizes of a decoder-only transformer, enough to count its parameters by layer."""

    hidden: int
    """Width of the hidden states."""
    intermediate: int
    """Width of the feed-forward layer a token passes through (with experts: those it is routed to)."""
    layers: int
    """Transformer blocks (an encoder-decoder's both stacks)."""
    heads: int
    """Attention heads."""
    kv_heads: int
    """Key and value heads (fewer than heads under grouped-query attention)."""
    vocab: int
    """Vocabulary entries."""
    fused: str = "none"
    """How the linear layers are packed: phi3 fuses q/k/v and gate/up, phi3small q/k/v, none keeps them apart."""

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one decoder block, by module name."""
        head = self.hidden // self.heads
        kv = self.kv_heads * head
        h, i = self.hidden, self.intermediate
        if self.fused == "phi3":
            return {"qkv_proj": (h, h + 2 * kv), "o_proj": (h, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        if self.fused == "phi3small":
            return {"query_key_value": (h, h + 2 * kv), "dense": (h, h), "up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_parameters(self) -> int:
        """Parameters in the decoder blocks' linear layers (what 4-bit quantisation packs)."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())


class PresetResources(_Data):
    accelerators: int
    accelerator_memory_gi: int
    cpu: str
    memory: str


class Preset(_Data):
    repo: str
    architecture: str
    parameters: int
    context_length: int
    shape: Shape
    target_modules: tuple[str, ...]
    chat_template: ChatTemplate
    resources: PresetResources
    trust_remote_code: bool = False
    gated: bool = False


class Strategy(enum.StrEnum):
    """Rows of the support matrix: how the training processes share the work."""

    SINGLE = "single"
    DDP = "ddp"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    ZERO3 = "zero3"
    FSDP = "fsdp"


class RowKey(_Data):
    method: str
    strategy: Strategy
    output: str


class SupportRow(RowKey):
    supported: bool
    reason: str | None = None
    asserts: str | None = None
    needs: str | None = None
    """"accelerator" when the row runs only with GPUs."""
    covered_by: RowKey | None = None
    """A row the CPU tests do not run on its own: the row whose run takes the same paths."""

    @property
    def needs_accelerator(self) -> bool:
        return self.needs == "accelerator"


def _load(name: str) -> Any:
    return yaml.safe_load(resources.files("kubetune").joinpath("data", name).read_text())


@cache
def presets() -> dict[str, Preset]:
    return {name: Preset.model_validate(body) for name, body in _load("presets.yaml").items()}


@cache
def support_matrix() -> tuple[SupportRow, ...]:
    return tuple(SupportRow.model_validate(row) for row in _load("support-matrix.yaml")["rows"])


def support_row(method: str, strategy: Strategy, output: str) -> SupportRow:
    for row in support_matrix():
        if (row.method, row.strategy, row.output) == (method, strategy, output):
            return row
    raise KeyError(f"support matrix has no row for {method} x {strategy} x {output}")
