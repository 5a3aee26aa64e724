"""The run report a person opens: report.html (self-contained, the plots embedded), loss.png
and, for classification, confusion.png beside the outputs. Built from the summary alone, so
the same report can be made again from summary.json."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.spec import FineTuneJobSpec
from kubetune.contract import Figures, HistoryRecord, RunSummary

Series = tuple[list[int], list[float]]


def series(history: Sequence[HistoryRecord], figure: Callable[[HistoryRecord], float | None]) -> Series:
    """A figure by step, over the records that have it."""
    points = [(record.step, value) for record in history if (value := figure(record)) is not None]
    return [step for step, _ in points], [value for _, value in points]


def plot(history: Sequence[HistoryRecord]) -> bytes:
    """Loss and evaluation loss, learning rate and trained tokens per second, by step, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    training = [record for record in history if record.loss is not None]
    figure, (loss_axes, rate_axes, speed_axes) = pyplot.subplots(3, 1, figsize=(8, 8), sharex=True)
    loss_axes.plot(*series(history, lambda r: r.loss), marker=".", label="training loss")
    evaluation = series(history, lambda r: r.eval_loss)
    if evaluation[0]:
        loss_axes.plot(*evaluation, marker="o", label="evaluation loss")
    loss_axes.set_ylabel("loss")
    loss_axes.legend()
    loss_axes.grid(alpha=0.3)
    rate_axes.plot(*series(history, lambda r: r.learning_rate), color="tab:green")
    rate_axes.set_ylabel("learning rate")
    rate_axes.grid(alpha=0.3)
    # The speed of training steps: an evaluation's record carries the speed of the last ones.
    speed_axes.plot(*series(training, lambda r: r.tokens_per_second), color="tab:purple")
    speed_axes.set_ylabel("tokens / s")
    speed_axes.set_xlabel("optimizer step")
    speed_axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot.close(figure)
    return buffer.getvalue()


def plot_confusion(labels: list[str], matrix: list[list[int]]) -> bytes:
    """The confusion matrix as PNG: true labels down, predicted labels across, counts in the
    cells, each row shaded by its share so that rare classes read as clearly as common ones."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    shares = [[count / max(sum(row), 1) for count in row] for row in matrix]
    size = min(4 + 0.45 * len(labels), 16)
    figure, axes = pyplot.subplots(figsize=(size, size))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(labels) <= 30:
        for row, counts in enumerate(matrix):
            for column, count in enumerate(counts):
                dark = shares[row][column] > 0.5
                axes.text(column, row, str(count), ha="center", va="center", color="white" if dark else "black")
    axes.set_title("evaluation split after training")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    pyplot.close(figure)
    return buffer.getvalue()


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "n/a" if value is None else str(value)


def _before_and_after(summary: RunSummary) -> str:
    """The task's figures on the evaluation split, before the first step and at the end."""
    before, after = (summary.baseline or Figures()).as_json(), (summary.metrics or Figures()).as_json()
    if not before:
        return ""
    cells = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{_text(value)}</td><td>{_text(after.get(name))}</td></tr>"
        for name, value in before.items()
    )
    return (
        "<h2>Evaluation before and after training</h2>\n"
        f"<table><tr><th>figure</th><th>before</th><th>after</th></tr>{cells}</table>"
    )


def _confusion(picture: bytes | None) -> str:
    if picture is None:
        return ""
    image = base64.b64encode(picture).decode()
    return (
        "<h2>Confusion matrix</h2>\n"
        f'<img alt="confusion matrix of the evaluation split" src="data:image/png;base64,{image}">'
    )


def render_html(summary: RunSummary, spec: FineTuneJobSpec, png: bytes, confusion: bytes | None = None) -> str:
    """The page, from the run's summary, its spec and its pictures alone."""
    metrics = summary.metrics.as_json() if summary.metrics else {}
    data = summary.data.as_json() if summary.data else {}
    location = summary.output.location if summary.output else None
    sample_rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(answer)}</td>" for answer in (s.prompt, s.expected, s.before, s.after))
        + "</tr>"
        for s in summary.samples or []
    )
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_unset=True), sort_keys=False)
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kubetune report: {html.escape(summary.model or "")}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} pre {{ background: #f6f6f6; padding: 1rem; overflow-x: auto; }}
.status {{ font-size: 1.2rem; font-weight: bold; }}
</style></head><body>
<h1>Fine-tuning report</h1>
<p class="status">{html.escape(str(summary.status))}: {html.escape(summary.message or "")}</p>
<p>{html.escape(summary.task or "causal-lm")} with {html.escape(summary.method or "")}
on {html.escape(summary.model or "")};
output in <code>{html.escape(location or "")}</code></p>
<h2>Training curves</h2>
<img alt="loss, learning rate and tokens per second by step" src="data:image/png;base64,{image}">
<h2>Final metrics</h2>
{_table(sorted(metrics.items()))}
{_before_and_after(summary)}
{_confusion(confusion)}
<h2>Data</h2>
{_table(sorted(data.items()))}
<h2>Answers before and after training</h2>
<table><tr><th>prompt</th><th>expected</th><th>before</th><th>after</th></tr>{sample_rows}</table>
<h2>Spec</h2>
<pre>{html.escape(spec_yaml)}</pre>
</body></html>
"""


def write_report(summary: RunSummary, spec: FineTuneJobSpec, folder: Path) -> None:
    png = plot(summary.history or [])
    (folder / "loss.png").write_bytes(png)
    confusion = None
    if summary.confusion is not None:
        confusion = plot_confusion(summary.confusion.labels, summary.confusion.matrix)
        (folder / "confusion.png").write_bytes(confusion)
    (folder / "report.html").write_text(render_html(summary, spec, png, confusion))
