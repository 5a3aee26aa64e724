"""Model as a service: a job that says `accelerators: auto` names model, data and method,
and the operator picks the accelerators from the cluster's profiles (chart values).

The smallest fit wins: profiles in the order the chart lists them (cheapest first, by
convention), then 1, 2, 4, 8 devices on one node, then whole nodes; at each size the
job's own strategy, or, where it left the choice to kubetune, DDP and then DeepSpeed
ZeRO-3, which pools the devices' memory. The memory figures are `kubetune estimate`'s.
"""

from __future__ import annotations

from collections.abc import Iterator

from kubetune.api import FineTuneJob
from kubetune.api.enums import StrategyType
from kubetune.api.facts import ModelFacts
from kubetune.api.spec import DeepSpeedSpec, DistributedSpec, FineTuneJobSpec
from kubetune.api.tasks import objective_row
from kubetune.catalog import presets
from kubetune.controller.builders import NotBuildable
from kubetune.controller.settings import AcceleratorProfile, Settings
from kubetune.estimate import GIB, estimate

MAX_NODES = 8


def known_facts(spec: FineTuneJobSpec, reported: ModelFacts | None) -> ModelFacts:
    """The model's facts: the preset's, or those the preflight reported (a job whose model is
    not a preset keeps its preflight: the API's rules refuse it otherwise)."""
    if spec.model.preset is not None:
        return ModelFacts.of_preset(presets()[spec.model.preset])
    if reported is not None:
        return reported
    raise NotBuildable(f"the preflight reported no facts of {spec.model.display} (its config.json) to size the job")


def size_job(job: FineTuneJob, settings: Settings, reported: ModelFacts | None = None) -> tuple[FineTuneJob, str]:
    """The job with its accelerators chosen, and a sentence saying what was chosen and why;
    a job that sized itself already comes back as it is, with an empty sentence. A model
    that is not a preset is sized from the facts the preflight `reported`."""
    spec = job.spec
    if spec.resources.accelerators != "auto":
        return job, ""
    if not settings.accelerator_profiles:
        raise NotBuildable(
            "accelerators: auto needs accelerator profiles in the operator's settings "
            "(chart value acceleratorProfiles); or set resources.accelerators"
        )
    model = known_facts(spec, reported)
    tried = []
    for profile in settings.accelerator_profiles:
        for nodes, per_node in _sizes(profile, spec.resources.nodes):
            for distributed in _strategies(spec.distributed, nodes * per_node):
                candidate = _with_size(spec, profile, nodes, per_node, distributed)
                if not _runs(candidate):
                    continue
                need = estimate(candidate, model, nodes * per_node)
                if need.fits(profile.memory_gib * GIB):
                    why = (
                        f"sized to {nodes} node(s) x {per_node} {profile.resource} ({profile.name}), "
                        f"strategy {distributed.strategy}: {need.total / GIB:.1f} GiB of "
                        f"{profile.memory_gib:g} GiB per device"
                    )
                    return job.model_copy(update={"spec": candidate}), why
        tried.append(profile.name)
    largest = max(settings.accelerator_profiles, key=lambda p: p.memory_gib * p.per_node)
    world = MAX_NODES * largest.per_node
    best = min(
        estimate(_with_size(spec, largest, MAX_NODES, largest.per_node, d), model, world).total
        for d in _strategies(spec.distributed, world)
    )
    raise NotBuildable(
        f"{spec.model.display} with method {spec.method.type} fits none of the accelerator profiles "
        f"({', '.join(tried)}): even on {MAX_NODES} nodes of {largest.per_node} x {largest.name} it needs "
        f"{best / GIB:.1f} GiB per device of {largest.memory_gib:g} GiB; "
        "try qlora, DeepSpeed offload, or a shorter maxSeqLength"
    )


def _runs(candidate: FineTuneJobSpec) -> bool:
    """Whether the support matrix runs the candidate's objective with its method and strategy
    (a preference objective runs on DDP and DeepSpeed, not yet under FSDP)."""
    strategy = candidate.matrix_strategy
    if not candidate.objective.prefers or strategy is None:
        return True
    row = objective_row(candidate.objective, candidate.method.type, strategy)
    return row is not None and row.supported


def _sizes(profile: AcceleratorProfile, nodes_asked: int) -> Iterator[tuple[int, int]]:
    """(nodes, devices per node), smallest first. A job that asked for several nodes keeps them."""
    if nodes_asked == 1:
        for per_node in (1, 2, 4, 8):
            if per_node <= profile.per_node:
                yield 1, per_node
    for nodes in range(max(2, nodes_asked), MAX_NODES + 1):
        yield nodes, profile.per_node


def _strategies(asked: DistributedSpec, world_size: int) -> Iterator[DistributedSpec]:
    if asked.strategy is not StrategyType.AUTO:
        if world_size == 1 or asked.strategy is not StrategyType.NONE:
            yield asked
        return
    yield asked
    if world_size > 1:
        yield DistributedSpec(strategy=StrategyType.DEEPSPEED, deepspeed=DeepSpeedSpec(stage=3))


def _with_size(
    spec: FineTuneJobSpec, profile: AcceleratorProfile, nodes: int, per_node: int, distributed: DistributedSpec
) -> FineTuneJobSpec:
    resources = spec.resources.model_copy(
        update={
            "nodes": nodes,
            "accelerators": per_node,
            "accelerator_resource": profile.resource,
            "node_selector": {**profile.node_selector, **spec.resources.node_selector},
        }
    )
    return spec.model_copy(update={"resources": resources, "distributed": distributed})
