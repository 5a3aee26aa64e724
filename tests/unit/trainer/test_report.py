from __future__ import annotations

from kubetune.contract import Confusion, Figures, HistoryRecord, RunSummary, SampleAnswers, SummaryOutput
from kubetune_trainer.report import plot, render_html, series

from .conftest import memorise_spec

HISTORY = [
    HistoryRecord(step=1, loss=5.0, learning_rate=1e-4, tokens_per_second=900.0),
    HistoryRecord(step=10, loss=1.0, learning_rate=2e-4, tokens_per_second=1000.0),
    HistoryRecord(step=10, eval_loss=1.5, tokens_per_second=950.0),
]


def test_plot_is_a_png() -> None:
    assert plot(HISTORY)[:4] == b"\x89PNG"


def test_the_curves_take_each_figure_from_the_records_that_have_it() -> None:
    assert series(HISTORY, lambda r: r.loss) == ([1, 10], [5.0, 1.0])
    assert series(HISTORY, lambda r: r.eval_loss) == ([10], [1.5])


def test_report_escapes_what_the_model_said() -> None:
    summary = RunSummary(
        status="Succeeded",
        message="ok",
        model="tiny",
        method="lora",
        output=SummaryOutput(location="/out", formats=["adapter"]),
        metrics=Figures(steps=10, eval_loss=1.5),
        samples=[SampleAnswers(prompt="hi", expected="<b>x</b>", before="<script>alert(1)</script>", after="x")],
    )

    page = render_html(summary, memorise_spec("lora", ["adapter"]), plot(HISTORY))

    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<th>evalLoss</th><td>1.5</td>" in page


def test_classification_report_shows_figures_before_and_after_and_the_confusion_matrix() -> None:
    from kubetune_trainer.report import plot_confusion

    summary = RunSummary(
        status="Succeeded",
        task="sequence-classification",
        method="lora",
        metrics=Figures.model_validate({"evalAccuracy": 0.9, "evalLoss": 0.3}),
        baseline=Figures.model_validate({"evalAccuracy": 0.25, "evalLoss": 1.4}),
        confusion=Confusion(labels=["no", "yes"], matrix=[[4, 1], [0, 5]]),
    )
    assert summary.confusion is not None
    picture = plot_confusion(summary.confusion.labels, summary.confusion.matrix)

    page = render_html(summary, memorise_spec("lora", ["adapter"]), plot(HISTORY), picture)

    assert picture[:4] == b"\x89PNG"
    assert "<tr><th>evalAccuracy</th><td>0.25</td><td>0.9</td></tr>" in page
    assert '<img alt="confusion matrix of the evaluation split"' in page
    assert "<p>sequence-classification with lora" in page


def test_a_run_without_evaluation_shows_no_comparison() -> None:
    summary = RunSummary(status="Succeeded", metrics=Figures(steps=1), baseline=Figures())

    page = render_html(summary, memorise_spec("lora", ["adapter"]), plot(HISTORY))

    assert "Evaluation before and after" not in page and "Confusion matrix" not in page
