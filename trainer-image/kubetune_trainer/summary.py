"""The trainer's last word: a summary with the outcome, where the output is and the final
figures. The full one lands beside the outputs (summary.json); a compact one goes to the
termination-message file, which Kubernetes caps at 4096 bytes and the operator reads even
when the pod's network is gone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.contract import MODEL_FACTS_KEY, TERMINATION_MESSAGE_LIMIT

TRUNCATED = " [truncated]"


def termination_message(summary: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Compact JSON of the summary within `limit` bytes: the message is cut first (marked),
    then the bulky parts (data statistics, metrics) are left out."""
    compact: dict[str, Any] = {
        k: summary[k] for k in ("status", "reason", "message", "output", "metrics", MODEL_FACTS_KEY) if k in summary
    }
    text = _dump(compact)
    if len(text.encode()) <= limit:
        return text
    message = str(compact.get("message", ""))
    overflow = len(text.encode()) - limit
    if message and overflow < len(message.encode()):
        keep = len(message.encode()) - overflow - len(TRUNCATED.encode()) - 8
        compact["message"] = message.encode()[: max(keep, 0)].decode(errors="ignore") + TRUNCATED
        text = _dump(compact)
    for bulky in ("metrics", "output"):
        if len(text.encode()) <= limit:
            break
        compact.pop(bulky, None)
        text = _dump(compact)
    if len(text.encode()) > limit:  # a message with many multi-byte characters
        compact["message"] = TRUNCATED.strip()
        text = _dump(compact)
    return text


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def write_summary(summary: dict[str, Any], termination_log: Path) -> None:
    """The compact summary into the termination-message file (the full one is written by
    the trainer beside the outputs)."""
    try:
        termination_log.parent.mkdir(parents=True, exist_ok=True)
        termination_log.write_text(termination_message(summary))
    except OSError:
        pass  # outside a pod the file may not be writable; the full summary is still there
