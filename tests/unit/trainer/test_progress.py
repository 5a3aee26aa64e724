from __future__ import annotations

import json
import urllib.request

from kubetune_trainer.progress import Progress, ProgressServer


def test_rank_zero_serves_progress_and_prometheus_metrics() -> None:
    progress = Progress(step=5, total_steps=50, loss=1.25, tokens_per_second=900.0)

    with ProgressServer(progress, job="demo", port=0, host="127.0.0.1") as server:
        base = f"http://127.0.0.1:{server.port}"
        body = json.loads(urllib.request.urlopen(f"{base}/progress", timeout=5).read())
        progress.step = 6
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()

    assert body == {"step": 5, "totalSteps": 50, "loss": 1.25, "tokensPerSecond": 900.0, "phase": "starting"}
    assert 'kubetune_step{job="demo"} 6' in metrics
    assert "# TYPE kubetune_loss gauge" in metrics
