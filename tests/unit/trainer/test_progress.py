from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from kubetune.api.enums import TrainerPhase
from kubetune.contract import Progress
from kubetune.controller.observe import progress_from_report
from kubetune.remote import progress_line
from kubetune_trainer.local import ProgressLine
from kubetune_trainer.progress import ProgressServer, ProgressTracker, TokenMeter, prometheus_text


def test_rank_zero_serves_progress_and_prometheus_metrics() -> None:
    with ProgressServer(job="demo", port=0, host="127.0.0.1") as server:
        base = f"http://127.0.0.1:{server.port}"
        starting = json.loads(urllib.request.urlopen(f"{base}/progress", timeout=5).read())
        server.show(Progress(step=5, total_steps=50, loss=1.25, tokens_per_second=900.0, phase=TrainerPhase.TRAINING))
        body = json.loads(urllib.request.urlopen(f"{base}/progress", timeout=5).read())
        server.show(server.progress.model_copy(update={"step": 6}))
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()

    assert starting == {"step": 0, "phase": "starting"}
    assert body == {"step": 5, "totalSteps": 50, "loss": 1.25, "tokensPerSecond": 900.0, "phase": "training"}
    assert 'kubetune_step{job="demo"} 6' in metrics
    assert "# TYPE kubetune_loss gauge" in metrics


def test_what_the_tracker_reports_the_keeper_reads_back_whole() -> None:
    shown: list[Progress] = []
    meter = TokenMeter()
    tracker = ProgressTracker(meter, world_size=2, listeners=[shown.append])
    state = SimpleNamespace(global_step=0, max_steps=40, epoch=0.0, log_history=[])

    tracker.on_train_begin(None, state, None)
    meter.tokens, state.global_step, state.epoch = 4096, 10, 0.25
    tracker.on_log(None, state, None, logs={"loss": 1.5, "learning_rate": 2e-4})
    tracker.on_train_end(None, state, None)

    assert [p.phase for p in shown] == [TrainerPhase.TRAINING, TrainerPhase.TRAINING, TrainerPhase.SAVING]
    report = json.loads(shown[1].model_dump_json(by_alias=True, exclude_none=True))  # GET /progress
    assert report["updatedAt"].endswith("Z") and report["eta"].endswith("Z")
    mirrored = progress_from_report(report)
    assert mirrored == shown[1].model_copy(update={"percent": 25.0})
    assert (mirrored.step, mirrored.total_steps, mirrored.loss, mirrored.learning_rate) == (10, 40, 1.5, 2e-4)
    assert shown[0].step == 0 and shown[0].loss is None  # each report is a new object, never changed later


def test_the_history_keeps_each_log_record_under_the_trainers_names_and_in_metrics_jsonl(tmp_path: Path) -> None:
    tracker = ProgressTracker(TokenMeter(), world_size=1, metrics_file=tmp_path / "metrics.jsonl")
    state = SimpleNamespace(global_step=0, max_steps=40, epoch=0, log_history=[])

    tracker.on_train_begin(None, state, None)
    state.global_step, state.epoch = 5, 0.5
    logs = {"loss": 1.5, "grad_norm": 3.0, "learning_rate": 2e-4, "epoch": 0.5, "note": "text", "total_flos": 7}
    tracker.on_log(None, state, None, logs=logs)

    record = tracker.history[0]
    assert (record.step, record.loss, record.learning_rate) == (5, 1.5, 2e-4)
    assert record.logged() == {k: v for k, v in logs.items() if k != "note"} | {"step": 5}
    assert (tmp_path / "metrics.jsonl").read_text() == json.dumps(record.as_json()) + "\n"
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["total_flos"] == 7


def test_a_resumed_run_keeps_the_history_the_checkpoint_logged_before_it() -> None:
    tracker = ProgressTracker(TokenMeter(), world_size=1)
    logged = [
        {"eval_loss": 4.2, "epoch": 0.0, "step": 0},
        {"loss": 3.1, "learning_rate": 2e-4, "epoch": 0.5, "step": 20},
    ]
    state = SimpleNamespace(global_step=20, max_steps=40, epoch=0.5, log_history=logged)

    tracker.on_train_begin(None, state, None)
    state.global_step = 40
    tracker.on_log(None, state, None, logs={"loss": 1.2})

    assert [(r.step, r.loss, r.eval_loss) for r in tracker.history] == [
        (0, None, 4.2),
        (20, 3.1, None),
        (40, 1.2, None),
    ]
    assert [r.tokens_per_second for r in tracker.history[:2]] == [None, None]


def test_a_preference_run_reports_its_reward_figures_live_and_keeps_the_last_evaluation_s() -> None:
    shown: list[Progress] = []
    tracker = ProgressTracker(TokenMeter(), world_size=1, listeners=[shown.append])
    state = SimpleNamespace(global_step=0, max_steps=8, epoch=0.0, log_history=[])

    tracker.on_train_begin(None, state, None)
    state.global_step = 4
    tracker.on_log(None, state, None, logs={"eval_loss": 0.3, "eval_reward_accuracy": 0.75})
    tracker.on_log(None, state, None, logs={"loss": 0.4, "reward_accuracy": 0.875, "reward_margin": 1.5})

    report = json.loads(shown[-1].model_dump_json(by_alias=True, exclude_none=True))
    assert (report["rewardAccuracy"], report["rewardMargin"], report["evalRewardAccuracy"]) == (0.875, 1.5, 0.75)
    assert progress_from_report(report).reward_accuracy == 0.875
    assert 'kubetune_reward_accuracy{job="demo"} 0.875' in prometheus_text(shown[-1], "demo")
    assert "reward accuracy 0.88" in progress_line(shown[-1])
    assert shown[1].reward_accuracy is None  # the evaluation reported no training figure


def test_only_the_tracker_that_speaks_writes_the_log_records(caplog: pytest.LogCaptureFixture) -> None:
    state = SimpleNamespace(global_step=0, max_steps=8, epoch=0.0, log_history=[])
    trackers = [ProgressTracker(TokenMeter(), world_size=2, speaks=rank == 0) for rank in (0, 1)]

    with caplog.at_level(logging.INFO, logger="kubetune_trainer.progress"):
        for tracker in trackers:
            tracker.on_train_begin(None, state, None)
            state.global_step = 4
            tracker.on_log(None, state, None, logs={"loss": 0.5})

    assert [r.getMessage() for r in caplog.records] == ["step 4: {'step': 4, 'epoch': 0.0, 'loss': 0.5}"]
    assert all(len(tracker.history) == 1 for tracker in trackers)  # both keep the figures


def test_kubetune_run_s_progress_line_shows_a_preference_run_s_reward_accuracy() -> None:
    written: list[str] = []
    line = ProgressLine(written.append)

    line(Progress(step=5, total_steps=20, loss=0.31, reward_accuracy=0.875))
    line(Progress(step=6, total_steps=20, loss=0.29))

    assert "loss 0.3100  reward accuracy 0.88" in written[0]
    assert "reward" not in written[1]
