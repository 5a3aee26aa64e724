"""The model card (README.md) that travels with the outputs: what was trained, on what,
how, and how well, in words a person reads on a Hub page or a volume."""

from __future__ import annotations

from typing import Any

from kubetune.api.spec import FineTuneJobSpec
from kubetune_trainer.arguments import learning_rate


def model_card(spec: FineTuneJobSpec, summary: dict[str, Any]) -> str:
    metrics, data, formats = summary["metrics"], summary["data"], summary["output"]["formats"]
    method = spec.method
    lines: list[str | None] = [
        "---",
        f"base_model: {summary['model']}",
        "library_name: peft" if method.type.uses_adapter else "library_name: transformers",
        "tags: [kubetune, " + method.type.value + "]",
        "---",
        "",
        f"# Fine-tuned {summary['model']}",
        "",
        f"Trained by kubetune with **{method.type.value}**"
        + (
            f" (r {method.adapter.r}, alpha {method.adapter.alpha}, dropout {method.adapter.dropout})"
            if method.type.uses_adapter
            else " (every weight)"
        )
        + (f" over a 4-bit {method.quantized.type.value} base" if method.quantized else "")
        + ".",
        "",
        "## Data",
        "",
        f"- format: {data['format']}; examples: {data['examples']} read, {data['kept']} trained on",
        f"- truncated: {data['truncated']}; dropped as too long: {data['droppedTooLong']}; "
        f"dropped with nothing to learn: {data['droppedNothingToLearn']}",
        f"- tokens: {data['tokens']} ({data['trainableTokens']} trained on); longest example {data['longest']}",
        "",
        "## Training",
        "",
        f"- steps: {metrics['steps']}; learning rate {learning_rate(spec)} ({spec.training.scheduler.value}); "
        f"precision {metrics['precision']}",
        f"- batch: {spec.training.per_device_batch_size} per device x {spec.training.gradient_accumulation_steps} "
        f"accumulation; max sequence length {spec.dataset.max_seq_length}; packing {spec.dataset.packing}",
        f"- engine: {summary['engine']['engine']} on {summary['engine']['worldSize']} process(es)",
        "",
        "## Results",
        "",
        f"- final training loss: {_number(metrics.get('trainLoss'))}",
        f"- evaluation loss: {_number(metrics.get('evalLoss'))}; perplexity: {_number(metrics.get('perplexity'))}",
        f"- trained tokens per second: {_number(metrics.get('tokensPerSecond'))}",
        "",
        "## Files",
        "",
        "- `adapter/`: load with `PeftModel.from_pretrained(base, 'adapter')`" if "adapter" in formats else None,
        "- `merged/`: load with `AutoModelForCausalLM.from_pretrained('merged')`" if "merged" in formats else None,
        "- `metrics.jsonl`: the loss history; `summary.json`: everything above as JSON",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"
