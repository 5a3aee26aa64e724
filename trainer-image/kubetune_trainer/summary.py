"""The trainer's last word: a summary with the outcome, where the output is and the final
figures. The full one lands beside the outputs (summary.json); a compact one goes to the
termination-message file, which Kubernetes caps at 4096 bytes and the operator reads even
when the pod's network is gone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.contract import HEADLINE_FIGURES, MODEL_FACTS_KEY, TERMINATION_MESSAGE_LIMIT, RunSummary

TRUNCATED = " [truncated]"


def termination_message(run: RunSummary, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Compact JSON of the summary within `limit` bytes. What the operator's status is made
    of goes in first: the outcome, the model's facts (a preflight's), the output's location
    and the headline figures (steps, losses); then the message, its tail cut (marked) if it must be; then the output's
    formats and digest, then the other metrics one by one while they fit. The data
    statistics, history and samples stay in the full summary. The model's JSON form is
    measured, since the limit is on its bytes."""
    summary = run.as_json()
    compact: dict[str, Any] = {k: summary[k] for k in ("status", "reason") if k in summary}
    output: dict[str, Any] | None = summary.get("output")
    metrics: dict[str, Any] | None = summary.get("metrics")
    essentials: list[tuple[str, Any]] = []
    if MODEL_FACTS_KEY in summary:  # what the operator sizes an `accelerators: auto` job from
        essentials.append((MODEL_FACTS_KEY, summary[MODEL_FACTS_KEY]))
    if output is not None and "location" in output:
        essentials.append(("output", {"location": output["location"]}))
    if metrics is not None:
        essentials.append(("metrics", {k: metrics[k] for k in HEADLINE_FIGURES if k in metrics}))
    for key, value in essentials:
        _add_if_it_fits(compact, key, value, limit)
    if run.message is not None:
        _add_message(compact, run.message, limit)
    if output is not None and "output" in compact:
        _add_if_it_fits(compact, "output", output, limit)
    if metrics is not None and "metrics" in compact:
        for name, value in metrics.items():
            _add_if_it_fits(compact, "metrics", {**compact["metrics"], name: value}, limit)
    return _dump(compact)


def _add_if_it_fits(compact: dict[str, Any], key: str, value: Any, limit: int) -> None:
    if _size({**compact, key: value}) <= limit:
        compact[key] = value


def _add_message(compact: dict[str, Any], message: str, limit: int) -> None:
    """The message whole, or its longest head that fits with the marker."""
    if _size({**compact, "message": message}) <= limit:
        compact["message"] = message
        return
    low, high = 0, min(len(message), limit)  # every character takes a byte at least
    while low < high:
        middle = (low + high + 1) // 2
        if _size({**compact, "message": message[:middle] + TRUNCATED}) <= limit:
            low = middle
        else:
            high = middle - 1
    _add_if_it_fits(compact, "message", message[:low] + TRUNCATED, limit)


def _size(value: dict[str, Any]) -> int:
    return len(_dump(value).encode())


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def write_summary(summary: RunSummary, termination_log: Path) -> None:
    """The compact summary into the termination-message file (the full one is written by
    the trainer beside the outputs)."""
    try:
        termination_log.parent.mkdir(parents=True, exist_ok=True)
        termination_log.write_text(termination_message(summary))
    except OSError:
        pass  # outside a pod the file may not be writable; the full summary is still there
