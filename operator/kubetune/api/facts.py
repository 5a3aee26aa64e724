"""What kubetune knows of a model's size: the facts the memory estimate needs. Presets carry
them; for any other model the preflight reads them from its config.json and the operator
keeps them in the FineTuneJob's status, to size an `accelerators: auto` job from them.
One model for both sides: the trainer writes it, the operator and `kubetune estimate` read it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.enums import TaskType
from kubetune.api.spec import FineTuneJobSpec
from kubetune.catalog import Preset, Shape

Count = Annotated[int, Field(ge=0)]


class Linear(ApiModel):
    """Linear layers of one kind in a model: the name peft targets them by, and their size."""

    name: Annotated[str, Field(max_length=128)]
    """Module name, as adapters target it."""
    inputs: Count
    """Input features."""
    outputs: Count
    """Output features."""
    count: Count
    """Layers of this kind in the whole model."""

    @property
    def parameters(self) -> int:
        return self.count * self.inputs * self.outputs


class ModelFacts(ApiModel):
    """What the estimate needs of a model: its shape, parameter count and default targets.
    `shape.layers` counts every transformer block (an encoder-decoder's both stacks)."""

    shape: Shape
    """The transformer's sizes."""
    parameters: Count
    """Parameters of the whole model, every expert's included."""
    target_modules: Annotated[tuple[Annotated[str, Field(max_length=128)], ...], Field(max_length=64)] = ()
    """Modules adapters target by default (empty: all linear layers)."""
    linears: Annotated[tuple[Linear, ...], Field(max_length=64)] | None = None
    """Every linear layer of the blocks; unset for a dense decoder, whose shape says them."""
    lm_head: Count | None = None
    """Parameters of the language-model head counted in `parameters`, which a classifier
    drops; unset for an untied decoder head (vocab x hidden)."""
    pooler: Linear | None = None
    """An encoder's pooler (counted in `parameters`, apart from `linears`): only a sequence
    classifier keeps it."""
    expert_adapters: Annotated[tuple[Linear, ...], Field(max_length=16)] = ()
    """What adapters over all-linear add on the experts' fused 3-D weights (counted in
    `parameters`, apart from `linears`: 4-bit quantisation leaves them in 16 bits), as linear
    layers of the same adapter size."""
    experts: Count = 0
    """Experts per mixture-of-experts layer, all held in memory (0: a dense model)."""
    active_experts: Count = 0
    """Experts each token is routed to (the shape's intermediate width counts them)."""

    def linear_layers(self, task: TaskType = TaskType.CAUSAL_LM) -> tuple[Linear, ...]:
        linears = self.linears if self.linears is not None else decoder_linears(self.shape)
        return (*linears, self.pooler) if self.pooler and task is TaskType.SEQUENCE_CLASSIFICATION else linears

    def adapted_layers(self, task: TaskType, targets: list[str] | str) -> tuple[Linear, ...]:
        """The layers adapters over `targets` (names, or all-linear) go on."""
        layers = self.linear_layers(task) + (self.expert_adapters if targets == "all-linear" else ())
        return tuple(layer for layer in layers if targets == "all-linear" or layer.name in targets)

    def linear_parameters(self, task: TaskType = TaskType.CAUSAL_LM) -> int:
        return sum(layer.parameters for layer in self.linear_layers(task))

    def dropped(self, task: TaskType) -> int:
        """Parameters of `parameters` that the task's model does not have (an unused pooler)."""
        if self.pooler is None or task is TaskType.SEQUENCE_CLASSIFICATION:
            return 0
        return self.pooler.parameters + self.pooler.outputs

    @property
    def lm_head_parameters(self) -> int:
        return self.lm_head if self.lm_head is not None else self.shape.vocab * self.shape.hidden

    @classmethod
    def of_preset(cls, preset: Preset) -> ModelFacts:
        # Every preset keeps its output head apart from its input embeddings.
        return cls(shape=preset.shape, parameters=preset.parameters, target_modules=preset.target_modules)


def needs_model_facts(spec: FineTuneJobSpec) -> bool:
    """Whether sizing the job waits for the preflight to read the model's config.json: the
    job says `accelerators: auto` and its model is not a preset, whose size kubetune knows."""
    return spec.resources.accelerators == "auto" and spec.model.preset is None


def decoder_linears(shape: Shape) -> tuple[Linear, ...]:
    return tuple(
        Linear(name=name, inputs=a, outputs=b, count=shape.layers) for name, (a, b) in shape.linear_shapes().items()
    )
