"""What the cluster commands print, from FineTuneJobs and Events as the API returns them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune.api import Phase
from kubetune.api.status import Progress
from kubetune.remote import (
    UnreadableStatus,
    age,
    failure_message,
    finished,
    job_report,
    job_status,
    job_table,
    progress_line,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _job(name: str, phase: str | None = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "team", "creationTimestamp": "2026-11-28T11:00:00Z"},
        "spec": {"method": {"type": "qlora"}},
    }
    if phase:
        body["status"] = {"phase": phase, **status}
    return body


def test_the_table_reads_like_kubectl_get() -> None:
    running = _job(
        "big", "Running", model="phi-3-mini-4k-instruct", progress={"step": 5, "percent": 12.5, "loss": 1.23}
    )

    lines = job_table([running, _job("new")], NOW).splitlines()

    assert lines[0].split() == ["NAME", "PHASE", "METHOD", "MODEL", "PROGRESS", "LOSS", "AGE"]
    assert lines[1].split() == ["big", "Running", "qlora", "phi-3-mini-4k-instruct", "12%", "1.2300", "1h"]
    assert lines[2].split() == ["new", "Pending", "qlora", "-", "-", "-", "1h"]


def test_the_table_of_every_namespace_names_each_job_s_namespace_first() -> None:
    other = _job("other", "Pending")
    other["metadata"]["namespace"] = "research"

    lines = job_table([_job("big", "Running"), other], NOW, namespaces=True).splitlines()

    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [line.split()[:3] for line in lines[1:]] == [["team", "big", "Running"], ["research", "other", "Pending"]]


def test_the_method_shown_is_the_one_in_training_once_the_job_started() -> None:
    edited = _job("edited", "Running", method="lora")  # spec says qlora: an edit the operator did not apply

    lines = job_table([edited, _job("new")], NOW).splitlines()

    assert [line.split()[2] for line in lines[1:]] == ["lora", "qlora"]


def test_status_shows_the_final_metrics() -> None:
    done = _job("demo", "Succeeded", metrics={"trainLoss": 0.41234, "evalAccuracy": 0.9})

    assert "Metrics:   evalAccuracy 0.9  trainLoss 0.4123" in job_report(done, [], NOW)


def test_ages_are_short() -> None:
    assert [age(t, NOW) for t in ("2026-11-28T11:59:15Z", "2026-11-28T11:48:00Z", "2026-11-25T12:00:00Z", None)] == [
        "45s",
        "12m",
        "3d",
        "-",
    ]


def test_progress_is_a_bar_with_the_figures_that_matter() -> None:
    progress = Progress.model_validate(
        {"step": 30, "totalSteps": 40, "loss": 0.5, "tokensPerSecond": 1234.4, "eta": "2026-11-28T12:30:00Z"}
    )

    line = progress_line(progress, 8)

    assert line == "[######..] 30/40  loss 0.5000  tok/s 1234  eta 2026-11-28 12:30:00 UTC"
    assert progress_line(None) == "step 0"


def test_status_shows_conditions_output_and_the_last_events() -> None:
    job = _job(
        "demo",
        "Failed",
        attempts=3,
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": "RetriesExhausted",
                "message": "3 attempts failed",
                "lastTransitionTime": "2026-11-28T11:58:00Z",
            }
        ],
        output={"location": "pvc://results/demo", "formats": ["adapter"]},
    )
    events = [
        {
            "metadata": {},
            "lastTimestamp": "2026-11-28T11:58:00Z",
            "type": "Warning",
            "reason": "TrainingFailed",
            "message": "pod demo-a3-0 exited with code 1",
        },
    ]

    report = job_report(job, events, NOW)

    assert "Phase:     Failed" in report
    assert "Attempts:  3 (preemptions: 0)" in report
    assert "Output:    pvc://results/demo (adapter)" in report
    assert "Failed     True   RetriesExhausted - 3 attempts failed" in report
    assert "2m Warning  TrainingFailed" in report
    assert finished(job_status(job)) is Phase.FAILED
    assert failure_message(job_status(job)) == "RetriesExhausted: 3 attempts failed"
    assert finished(job_status(_job("x", "Running"))) is None


def test_status_counts_the_preflight_retries_that_spent_the_budget() -> None:
    job = _job("demo", "Pending", attempts=0, preflightRetries=2)

    assert "Attempts:  0 (preemptions: 0, preflight retries: 2)" in job_report(job, [], NOW)


def test_a_status_the_api_model_does_not_read_is_refused_naming_the_field() -> None:
    renamed = _job("demo", "Running", progress={"step": "ten"})

    with pytest.raises(UnreadableStatus, match=r"finetunejob demo: status\.progress\.step"):
        job_table([renamed], NOW)


def test_a_job_without_a_status_yet_reads_as_pending() -> None:
    assert job_status(_job("new")).phase is Phase.PENDING
    assert "Phase:     Pending" in job_report(_job("new"), [], NOW)
