"""Live progress: a snapshot updated from the Trainer's logs, kept in metrics.jsonl, and
served over HTTP by rank 0 (GET /progress as JSON, GET /metrics as Prometheus text) for
the operator to poll. The snapshot is the contract's `Progress`, the model the operator
parses the answer with and writes into the job's status. Trainer pods carry no Kubernetes
credentials; this is how they talk."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune.api.enums import TrainerPhase
from kubetune.contract import HistoryRecord
from kubetune.contract import Progress as Progress  # re-exported: train.py and the bench name it here

log = logging.getLogger(__name__)


@dataclass
class TokenMeter:
    """Trained (non-padding) tokens seen by this process, counted by the collator's batches."""

    tokens: int = 0


def prometheus_text(progress: Progress, job: str) -> str:
    """The figures as Prometheus gauges, labelled with the job."""
    gauges = {
        "kubetune_step": progress.step,
        "kubetune_total_steps": progress.total_steps,
        "kubetune_loss": progress.loss,
        "kubetune_eval_loss": progress.eval_loss,
        "kubetune_learning_rate": progress.learning_rate,
        "kubetune_tokens_per_second": progress.tokens_per_second,
        "kubetune_epoch": progress.epoch,
        "kubetune_reward_accuracy": progress.reward_accuracy,
        "kubetune_reward_margin": progress.reward_margin,
        "kubetune_eval_reward_accuracy": progress.eval_reward_accuracy,
    }
    lines = []
    for name, value in gauges.items():
        if value is not None:
            lines += [f"# TYPE {name} gauge", f'{name}{{job="{job}"}} {value}']
    return "\n".join(lines) + "\n"


def history_record(
    step: int, epoch: float | None, tokens_per_second: float | None, logs: dict[str, Any]
) -> HistoryRecord:
    """One log record of the Trainer as the history keeps it: its numbers under its own names
    (what else it may log, such as a string, is no figure to plot or compare)."""
    numbers = {k: v for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return HistoryRecord.model_validate({"step": step, "epoch": epoch, "tokensPerSecond": tokens_per_second} | numbers)


SPEED = "tokens_per_second"
"""The key of the trained tokens per second in the Trainer's log history."""


@dataclass
class ProgressTracker(TrainerCallback):
    """Turns the Trainer's log records into Progress, metrics.jsonl lines and listener calls,
    and writes each record to the log where `speaks` (rank 0: every rank logs the same figures,
    and a pod's ranks share one log)."""

    meter: TokenMeter
    world_size: int
    metrics_file: Path | None = None
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)
    speaks: bool = True
    progress: Progress = field(default_factory=lambda: Progress(phase=TrainerPhase.STARTING))
    """The latest figures; replaced (never changed in place) at each report, so a reader on
    another thread always sees one whole report."""
    history: list[HistoryRecord] = field(default_factory=list)
    _started: float = 0.0
    _tokens_at_start: int = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = time.monotonic()
        self._tokens_at_start = self.meter.tokens
        # A run resumed from a checkpoint keeps what was logged before it (the untrained
        # model's evaluation, the first losses): the report and the summary show the whole run.
        self.history = [
            history_record(r["step"], r.get("epoch"), r.get(SPEED), {k: v for k, v in r.items() if k != SPEED})
            for r in state.log_history
        ]
        self._publish(phase=TrainerPhase.TRAINING, total_steps=state.max_steps, step=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if not logs:
            return
        progress = self.progress
        now = datetime.now(UTC).replace(microsecond=0)
        update: dict[str, Any] = {
            "step": state.global_step,
            "epoch": state.epoch,
            "loss": logs.get("loss", progress.loss),
            "eval_loss": logs.get("eval_loss", progress.eval_loss),
            "learning_rate": logs.get("learning_rate", progress.learning_rate),
            "reward_accuracy": logs.get("reward_accuracy", progress.reward_accuracy),
            "reward_margin": logs.get("reward_margin", progress.reward_margin),
            "eval_reward_accuracy": logs.get("eval_reward_accuracy", progress.eval_reward_accuracy),
            "updated_at": now,
        }
        elapsed = time.monotonic() - self._started
        if elapsed > 0:
            # Every rank sees batches of the same shape on average; scale to the whole job.
            trained = (self.meter.tokens - self._tokens_at_start) * self.world_size
            update["tokens_per_second"] = round(trained / elapsed, 1)
        if state.global_step and state.max_steps:
            remaining = elapsed / state.global_step * (state.max_steps - state.global_step)
            update["eta"] = now + timedelta(seconds=round(remaining))
        record = history_record(
            state.global_step, state.epoch, update.get("tokens_per_second", progress.tokens_per_second), logs
        )
        self.history.append(record)
        if state.log_history and record.tokens_per_second is not None:
            # Beside the record the Trainer keeps (and checkpoints): a resumed run has it back.
            state.log_history[-1][SPEED] = record.tokens_per_second
        if self.speaks:
            log.info("step %s: %s", state.global_step, record.logged())
        if self.metrics_file is not None:
            with self.metrics_file.open("a") as handle:
                handle.write(json.dumps(record.as_json()) + "\n")
        self._publish(**update)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._publish(phase=TrainerPhase.SAVING)

    def _publish(self, **update: Any) -> None:
        # Validated: a figure the API would refuse (a negative rate) fails here, not in the keeper.
        self.progress = Progress.model_validate(self.progress.model_dump() | update)
        for listener in self.listeners:
            listener(self.progress)


class ProgressServer:
    """GET /progress and GET /metrics on a port, in a daemon thread (rank 0 only). `show`
    is a progress listener: the server answers with the latest progress it was shown."""

    def __init__(self, job: str, port: int, host: str = "0.0.0.0") -> None:
        self.progress = Progress(phase=TrainerPhase.STARTING)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                progress = server.progress
                if self.path == "/progress":
                    body = progress.model_dump_json(by_alias=True, exclude_none=True).encode()
                    kind = "application/json"
                elif self.path == "/metrics":
                    body, kind = prometheus_text(progress, job).encode(), "text/plain; version=0.0.4"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # polls every few seconds would drown the training log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="progress", daemon=True)

    def show(self, progress: Progress) -> None:
        self.progress = progress

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> ProgressServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
