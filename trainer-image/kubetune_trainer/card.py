"""The model card (README.md) that travels with the outputs: what was trained, on what,
how, and how well, in words a person reads on a Hub page or a volume."""

from __future__ import annotations

from kubetune.api.spec import FineTuneJobSpec
from kubetune.contract import Figures, RunSummary
from kubetune_trainer.arguments import learning_rate
from kubetune_trainer.tasks import task_for


def model_card(spec: FineTuneJobSpec, summary: RunSummary) -> str:
    """The card of a finished run, from its spec and summary alone. Raises ValueError for a
    summary without the data statistics or the engine (no finished training run's)."""
    metrics, data, engine = summary.metrics or Figures(), summary.data, summary.engine
    if data is None or engine is None:
        raise ValueError("a model card is made of a finished run's summary, with its data and engine")
    formats = (summary.output.formats if summary.output else None) or []
    method = spec.method
    model_class = task_for(spec.task).model_class_name
    labels = summary.labels
    lines: list[str | None] = [
        "---",
        f"base_model: {summary.model}",
        "library_name: peft" if method.type.uses_adapter else "library_name: transformers",
        f"tags: [kubetune, {method.type.value}, {spec.task.value}"
        + (f", {spec.objective.value}]" if spec.objective.prefers else "]"),
        "---",
        "",
        f"# Fine-tuned {summary.model}",
        "",
        f"Trained by kubetune with **{method.type.value}**"
        + (
            f" (r {method.adapter.r}, alpha {method.adapter.alpha}, dropout {method.adapter.dropout})"
            if method.type.uses_adapter
            else " (every weight)"
        )
        + (f" over a 4-bit {method.quantized.type.value} base" if method.quantized else "")
        + f", task **{spec.task.value}**"
        + (_objective(spec) if spec.objective.prefers else "")
        + ".",
        "",
        f"Labels, in id order: {', '.join(labels)} (also in `labels.json`)." if labels else None,
        "" if labels else None,
        "## Data",
        "",
        f"- format: {data.format}; examples: {data.examples} read, {data.kept} trained on",
        f"- truncated: {data.truncated}; dropped as too long: {data.dropped_too_long}; "
        f"dropped with nothing to learn: {data.dropped_nothing_to_learn}",
        f"- tokens: {data.tokens} ({data.trainable_tokens} trained on); longest example {data.longest}",
        "",
        "## Training",
        "",
        f"- steps: {metrics.steps}; learning rate {learning_rate(spec)} ({spec.training.scheduler.value}); "
        f"precision {metrics.precision}",
        f"- batch: {spec.training.per_device_batch_size} per device x {spec.training.gradient_accumulation_steps} "
        f"accumulation; max sequence length {spec.dataset.max_seq_length}; packing {spec.dataset.packing}",
        f"- engine: {engine.engine} on {engine.world_size} process(es)",
        "",
        "## Results",
        "",
        f"- final training loss: {_number(metrics.train_loss)}",
        f"- evaluation loss: {_number(metrics.eval_loss)}; perplexity: {_number(metrics.perplexity)}",
        *_before_and_after(summary),
        f"- trained tokens per second: {_number(metrics.tokens_per_second)}",
        "",
        "## Files",
        "",
        f"- `adapter/`: load with `PeftModel.from_pretrained({model_class}.from_pretrained(base"
        + (", num_labels=len(labels)" if labels else "")
        + "), 'adapter')`"
        if "adapter" in formats
        else None,
        f"- `merged/`: load with `{model_class}.from_pretrained('merged')`" if "merged" in formats else None,
        "- `metrics.jsonl`: the loss history; `summary.json`: everything above as JSON",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def _before_and_after(summary: RunSummary) -> list[str]:
    """One line per task figure of the evaluation split: before the first step, and at the end
    (the loss and perplexity have their own line)."""
    after = (summary.metrics or Figures()).task_figures
    return [
        f"- {name}: {_number(before)} before training, {_number(after.get(name))} after"
        for name, before in (summary.baseline or Figures()).task_figures.items()
    ]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _objective(spec: FineTuneJobSpec) -> str:
    """The preference objective in words: dpo with its beta, loss and reference, or orpo."""
    preference = spec.preferences
    if not spec.objective.uses_reference:
        return f", objective **{spec.objective.value}** (beta {preference.beta}, no reference model)"
    reference = preference.reference.display if preference.reference else "the base model"
    return (
        f", objective **{spec.objective.value}** (beta {preference.beta}, {preference.loss} loss, against {reference})"
    )
