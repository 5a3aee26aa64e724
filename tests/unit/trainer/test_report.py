from __future__ import annotations

from kubetune.contract import RunSummary
from kubetune_trainer.report import plot, render_html

from .conftest import memorise_spec

HISTORY = [
    {"step": 1, "loss": 5.0, "learning_rate": 1e-4, "tokensPerSecond": 900.0},
    {"step": 10, "loss": 1.0, "learning_rate": 2e-4, "tokensPerSecond": 1000.0},
    {"step": 10, "eval_loss": 1.5},
]


def test_plot_is_a_png() -> None:
    assert plot(HISTORY)[:4] == b"\x89PNG"


def test_report_escapes_what_the_model_said() -> None:
    summary = {
        "status": "Succeeded",
        "message": "ok",
        "model": "tiny",
        "method": "lora",
        "output": {"location": "/out", "formats": ["adapter"]},
        "metrics": {"steps": 10, "evalLoss": 1.5},
        "data": {"examples": 2},
        "samples": [{"prompt": "hi", "expected": "<b>x</b>", "before": "<script>alert(1)</script>", "after": "x"}],
    }

    page = render_html(RunSummary.from_json(summary), memorise_spec("lora", ["adapter"]), plot(HISTORY))

    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<th>evalLoss</th><td>1.5</td>" in page


def test_classification_report_shows_figures_before_and_after_and_the_confusion_matrix() -> None:
    from kubetune_trainer.report import plot_confusion

    summary = {
        "status": "Succeeded",
        "task": "sequence-classification",
        "method": "lora",
        "metrics": {"evalAccuracy": 0.9, "evalLoss": 0.3},
        "baseline": {"evalAccuracy": 0.25, "evalLoss": 1.4},
        "confusion": {"labels": ["no", "yes"], "matrix": [[4, 1], [0, 5]]},
    }
    picture = plot_confusion(summary["confusion"]["labels"], summary["confusion"]["matrix"])

    page = render_html(RunSummary.from_json(summary), memorise_spec("lora", ["adapter"]), plot(HISTORY), picture)

    assert picture[:4] == b"\x89PNG"
    assert "<tr><th>evalAccuracy</th><td>0.25</td><td>0.9</td></tr>" in page
    assert '<img alt="confusion matrix of the evaluation split"' in page
    assert "<p>sequence-classification with lora" in page


def test_a_run_without_evaluation_shows_no_comparison() -> None:
    summary = {"status": "Succeeded", "metrics": {"steps": 1}, "baseline": {}}

    page = render_html(RunSummary.from_json(summary), memorise_spec("lora", ["adapter"]), plot(HISTORY))

    assert "Evaluation before and after" not in page and "Confusion matrix" not in page
