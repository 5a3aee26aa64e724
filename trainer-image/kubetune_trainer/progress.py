"""Live progress: a snapshot updated from the Trainer's logs, kept in metrics.jsonl, and
served over HTTP by rank 0 (GET /progress as JSON, GET /metrics as Prometheus text) for
the operator to poll. Trainer pods carry no Kubernetes credentials; this is how they talk."""

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

log = logging.getLogger(__name__)


@dataclass
class TokenMeter:
    """Trained (non-padding) tokens seen by this process, counted by the collator's batches."""

    tokens: int = 0


@dataclass
class Progress:
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta: str | None = None
    updated_at: str | None = None
    phase: str = "starting"

    def as_dict(self) -> dict[str, Any]:
        keys = {
            "total_steps": "totalSteps",
            "eval_loss": "evalLoss",
            "learning_rate": "learningRate",
            "tokens_per_second": "tokensPerSecond",
            "updated_at": "updatedAt",
        }
        return {keys.get(k, k): v for k, v in self.__dict__.items() if v is not None}

    def prometheus(self, job: str) -> str:
        gauges = {
            "kubetune_step": self.step,
            "kubetune_total_steps": self.total_steps,
            "kubetune_loss": self.loss,
            "kubetune_eval_loss": self.eval_loss,
            "kubetune_learning_rate": self.learning_rate,
            "kubetune_tokens_per_second": self.tokens_per_second,
            "kubetune_epoch": self.epoch,
        }
        lines = []
        for name, value in gauges.items():
            if value is not None:
                lines += [f"# TYPE {name} gauge", f'{name}{{job="{job}"}} {value}']
        return "\n".join(lines) + "\n"


@dataclass
class ProgressTracker(TrainerCallback):
    """Turns the Trainer's log records into Progress, metrics.jsonl lines and listener calls."""

    meter: TokenMeter
    world_size: int
    metrics_file: Path | None = None
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    history: list[dict[str, Any]] = field(default_factory=list)
    _started: float = 0.0
    _tokens_at_start: int = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = time.monotonic()
        self._tokens_at_start = self.meter.tokens
        self.progress.phase = "training"
        self.progress.total_steps = state.max_steps
        self.progress.step = state.global_step
        self._publish()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if not logs:
            return
        progress = self.progress
        progress.step, progress.epoch = state.global_step, state.epoch
        progress.loss = logs.get("loss", progress.loss)
        progress.eval_loss = logs.get("eval_loss", progress.eval_loss)
        progress.learning_rate = logs.get("learning_rate", progress.learning_rate)
        elapsed = time.monotonic() - self._started
        if elapsed > 0:
            # Every rank sees batches of the same shape on average; scale to the whole job.
            trained = (self.meter.tokens - self._tokens_at_start) * self.world_size
            progress.tokens_per_second = round(trained / elapsed, 1)
        if state.global_step and state.max_steps:
            remaining = elapsed / state.global_step * (state.max_steps - state.global_step)
            progress.eta = _iso(datetime.now(UTC) + timedelta(seconds=remaining))
        progress.updated_at = _iso(datetime.now(UTC))
        record = {
            "step": state.global_step,
            "epoch": state.epoch,
            "tokensPerSecond": progress.tokens_per_second,
            **logs,
        }
        self.history.append(record)
        log.info("step %s: %s", state.global_step, {k: v for k, v in logs.items() if isinstance(v, float | int)})
        if self.metrics_file is not None:
            with self.metrics_file.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self._publish()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress.phase = "saving"
        self._publish()

    def _publish(self) -> None:
        for listener in self.listeners:
            listener(self.progress)


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class ProgressServer:
    """GET /progress and GET /metrics on a port, in a daemon thread (rank 0 only)."""

    def __init__(self, progress: Progress, job: str, port: int, host: str = "0.0.0.0") -> None:
        snapshot = progress

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/progress":
                    body, kind = json.dumps(snapshot.as_dict()).encode(), "application/json"
                elif self.path == "/metrics":
                    body, kind = snapshot.prometheus(job).encode(), "text/plain; version=0.0.4"
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

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> ProgressServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
