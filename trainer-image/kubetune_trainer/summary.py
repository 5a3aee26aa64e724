"""The trainer's last word: a summary with the outcome, where the output is and the final
figures. The full one lands beside the outputs (summary.json); a compact one goes to the
termination-message file, which Kubernetes caps at 4096 bytes and the operator reads even
when the pod's network is gone."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.contract import TERMINATION_MESSAGE_LIMIT, Figures, RunSummary, SummaryOutput

TRUNCATED = " [truncated]"


def termination_message(run: RunSummary, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Compact JSON of the summary within `limit` bytes. What the operator's status is made
    of goes in first: the outcome, the model's facts (a preflight's), the output's location
    and the headline figures (steps, losses); then the message, its tail cut (marked) if it
    must be; then the output's formats and digest, then the other metrics one by one while
    they fit. The data statistics, history and samples stay in the full summary. The
    model's JSON form is measured, since the limit is on its bytes."""
    compact = RunSummary(status=run.status, reason=run.reason)
    location = run.output.location if run.output is not None else None
    essentials = {
        "model_facts": run.model_facts,  # what the operator sizes an `accelerators: auto` job from
        "output": SummaryOutput(location=location) if location is not None else None,
        "metrics": run.metrics.headline() if run.metrics is not None else None,
    }
    for name, value in essentials.items():
        if value is not None:
            compact = _with_if_it_fits(compact, limit, name, value)
    if run.message is not None:
        compact = _with_message(compact, run.message, limit)
    if run.output is not None and compact.output is not None:
        compact = _with_if_it_fits(compact, limit, "output", run.output)
    if run.metrics is not None and compact.metrics is not None:
        for name, value in run.metrics.as_json().items():
            more = Figures.model_validate(compact.metrics.as_json() | {name: value})
            compact = _with_if_it_fits(compact, limit, "metrics", more)
    return _dump(compact)


def _with_if_it_fits(compact: RunSummary, limit: int, name: str, value: object) -> RunSummary:
    larger = compact.model_copy(update={name: value})
    return larger if _size(larger) <= limit else compact


def _with_message(compact: RunSummary, message: str, limit: int) -> RunSummary:
    """The message whole, or its longest head that fits with the marker."""
    if _size(compact.model_copy(update={"message": message})) <= limit:
        return compact.model_copy(update={"message": message})
    low, high = 0, min(len(message), limit)  # every character takes a byte at least
    while low < high:
        middle = (low + high + 1) // 2
        if _size(compact.model_copy(update={"message": message[:middle] + TRUNCATED})) <= limit:
            low = middle
        else:
            high = middle - 1
    return _with_if_it_fits(compact, limit, "message", message[:low] + TRUNCATED)


def _size(summary: RunSummary) -> int:
    return len(_dump(summary).encode())


def _dump(summary: RunSummary) -> str:
    return json.dumps(summary.as_json(), separators=(",", ":"), ensure_ascii=False)


def write_summary(summary: RunSummary, termination_log: Path) -> None:
    """The compact summary into the termination-message file (the full one is written by
    the trainer beside the outputs)."""
    try:
        termination_log.parent.mkdir(parents=True, exist_ok=True)
        termination_log.write_text(termination_message(summary))
    except OSError:
        pass  # outside a pod the file may not be writable; the full summary is still there
