"""Operator benchmark: N FineTuneJobs created at once against the emulated API server, the
operator running as its own process (`kubetune operator`), next to the floor: a minimal
Kopf operator whose one handler only creates a Job (bench/floor_operator.py), against the
same emulator.

Figures per case: latency from a FineTuneJob's creation to its first Job (p50, p99), API
requests per job by verb during that phase, the operator's peak resident memory, and for
kubetune, with every job running and rank 0's progress changing all the time, the steady
state: API requests per running job per progress interval by verb, status writes among them.

    python -m bench.operator                 # 100, 500 and 1000 jobs
    python -m bench.operator --sizes 100 500
    python -m bench.operator --sizes 20 --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kmock
import psutil
import yaml
from aiohttp import ClientSession, web
from tests.integration.conftest import kubeconfig_for
from tests.integration.emulator import StrictKubernetesEmulator

from kubetune.api.enums import TrainerPhase
from kubetune.contract import Progress

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CRD = REPO / "crds" / "kubetune.io_finetunejobs.yaml"
NAMESPACE = "default"
OPERATOR_AGENTS = ("kubetune-operator/", "kopf/")


@dataclass
class Case:
    operator: str
    jobs: int
    p50_seconds: float = 0.0
    p99_seconds: float = 0.0
    requests_per_job: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    status_writes_per_job_per_interval: float | None = None
    interval_seconds: float | None = None
    steady_requests_per_job_per_interval: dict[str, float] | None = None
    """With every job running: the operator's API requests (watches aside) by verb."""

    def steady_state(self) -> str | None:
        """The line the issue asks for, or None for a case without a running phase."""
        verbs = self.steady_requests_per_job_per_interval
        if verbs is None:
            return None
        total = round(sum(verbs.values()), 2)
        counts = ", ".join(f"{verb.upper()} {verbs.get(verb, 0.0)}" for verb in ("list", "get", "patch"))
        others = ", ".join(f"{v.upper()} {n}" for v, n in sorted(verbs.items()) if v not in ("list", "get", "patch"))
        return (
            f"steady state: {total} requests per running job per interval ({counts}{', ' + others if others else ''})"
        )


def _job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"preset": "phi-3-mini-4k-instruct"},
            "dataset": {"huggingFace": {"name": "tatsu-lab/alpaca"}, "format": "instruction", "preflight": False},
            "method": {"type": "lora"},
            "output": {"pvc": {"claimName": "results", "path": name}},
        },
    }


def _command(kind: str) -> list[str]:
    if kind == "kubetune":
        return [sys.executable, "-c", "from kubetune.cli import main; main()", "operator"]
    floor = str(REPO / "bench" / "floor_operator.py")
    return [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", NAMESPACE, "--quiet", floor]


class Memory:
    """Peak resident memory of a process and its children, sampled."""

    def __init__(self, pid: int) -> None:
        self.process, self.peak = psutil.Process(pid), 0

    async def sample(self) -> None:
        while True:
            try:
                total = self.process.memory_info().rss + sum(
                    c.memory_info().rss for c in self.process.children(recursive=True)
                )
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            await asyncio.sleep(0.1)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _verb(request: Any) -> str:
    method = str(getattr(request.method, "value", request.method)).upper()
    if request.params.get("watch") == "true":
        return "watch"
    if method == "GET":
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def _operator_requests(emulator: StrictKubernetesEmulator, since: int) -> list[Any]:
    return [
        r
        for r in emulator._requests[since:]
        if r.resource is not None and r.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS)
    ]


async def run_case(kind: str, jobs: int, interval: float, window: float) -> Case:
    crd = yaml.safe_load(CRD.read_text())
    async with StrictKubernetesEmulator(crds=[crd], keep_alive=True) as emulator, kmock.Server(emulator) as server:
        emulator.create_object("", "v1", "namespaces", {"metadata": {"name": NAMESPACE}})
        progress = _ProgressServer()
        await progress.start()
        with tempfile.TemporaryDirectory() as folder:
            kubeconfig = Path(folder) / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(str(server.url))))
            env = {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "KUBETUNE_NAMESPACES": NAMESPACE,
                "KUBETUNE_METRICS_PORT": "0",
                "KUBETUNE_HEALTH_PORT": "0",
                "KUBETUNE_PROGRESS_INTERVAL": str(interval),
                "KUBETUNE_PROGRESS_PORT": str(progress.port),
                "KUBETUNE_LOG_LEVEL": "warning",
            }
            process = subprocess.Popen(_command(kind), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            memory = Memory(process.pid)
            sampler = asyncio.get_running_loop().create_task(memory.sample())
            try:
                case = await _measure(kind, jobs, emulator, str(server.url), interval, window, progress)
            finally:
                process.terminate()
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
                sampler.cancel()
                emulator.close_watches()
                await progress.stop()
            case.peak_rss_mib = round(memory.peak / 2**20, 1)
            return case


async def _measure(
    kind: str,
    jobs: int,
    emulator: StrictKubernetesEmulator,
    url: str,
    interval: float,
    window: float,
    progress: _ProgressServer,
) -> Case:
    await _until(
        lambda: any(
            r.params.get("watch") == "true" and r.resource is not None and r.resource.plural == "finetunejobs"
            for r in _operator_requests(emulator, 0)
        ),
        "the operator to watch",
        120,
    )
    first_request = len(emulator._requests)
    names = [f"job-{i:04d}" for i in range(jobs)]
    created: dict[str, float] = {}
    async with ClientSession() as session:
        limit = asyncio.Semaphore(64)

        async def create(name: str) -> None:
            async with limit:
                answer = await session.post(
                    f"{url}/apis/kubetune.io/v1alpha1/namespaces/{NAMESPACE}/finetunejobs", json=_job(name)
                )
                created[name] = time.monotonic()
                answer.raise_for_status()

        await asyncio.gather(*(create(n) for n in names))

    first_job: dict[str, float] = {}
    seen = 0

    def new_jobs() -> bool:
        nonlocal seen
        writes = emulator.writes
        for write in writes[seen:]:
            if write.method == "POST" and write.plural == "jobs" and write.name:
                owner = write.name.rsplit("-a", 1)[0] if kind == "kubetune" else write.name
                first_job.setdefault(owner, time.monotonic())
        seen = len(writes)
        return len(first_job) >= jobs

    await _until(new_jobs, f"a Job for each of {jobs} FineTuneJobs", 60 + jobs * 0.5, every=0.01)
    latencies = [first_job[n] - created[n] for n in names]
    requests = Counter(_verb(r) for r in _operator_requests(emulator, first_request))
    case = Case(
        operator=kind,
        jobs=jobs,
        p50_seconds=round(statistics.median(latencies), 3),
        p99_seconds=round(_percentile(latencies, 0.99), 3),
        requests_per_job={verb: round(count / jobs, 2) for verb, count in sorted(requests.items())},
    )
    if kind == "kubetune":
        case.interval_seconds = interval
        writes, verbs = await _running(emulator, names, interval, window, progress)
        case.status_writes_per_job_per_interval, case.steady_requests_per_job_per_interval = writes, verbs
    return case


async def _running(
    emulator: StrictKubernetesEmulator, names: list[str], interval: float, window: float, progress: _ProgressServer
) -> tuple[float, dict[str, float]]:
    """Every job's rank 0 runs and reports new figures all the time; count the status writes,
    and every request of the operator's (but its watches), per running job per interval."""
    pods = emulator.store.resource("", "v1", "pods")
    assert pods is not None
    for name in names:
        job = emulator.get_object("batch", "v1", "jobs", NAMESPACE, f"{name}-a1")
        assert job is not None
        template = job["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-a1-0-x",
                "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": f"{name}-a1"},
                "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
            },
            "spec": template["spec"],
        }
        emulator.store.create(pods, NAMESPACE, pod)
        status = {
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "containerStatuses": [{"name": "trainer", "state": {"running": {}}}],
            }
        }
        emulator.store.patch(pods, NAMESPACE, pod["metadata"]["name"], "merge", status, subresource="status")
    await _until(
        lambda: all(
            (emulator.get_object("kubetune.io", "v1alpha1", "finetunejobs", NAMESPACE, n) or {})
            .get("status", {})
            .get("phase")
            == "Running"
            for n in names
        ),
        "every job Running",
        60 + len(names) * 0.2,
    )
    start, first_request = len(emulator.writes), len(emulator._requests)
    begun = time.monotonic()
    while time.monotonic() - begun < window:
        progress.step += 1
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - begun
    writes = sum(1 for w in emulator.writes[start:] if w.plural == "finetunejobs" and w.subresource == "status")
    per = len(names) * (elapsed / interval)
    requests = Counter(_verb(r) for r in _operator_requests(emulator, first_request))
    requests.pop("watch", None)
    return round(writes / per, 2), {verb: round(n / per, 3) for verb, n in sorted(requests.items())}


class _ProgressServer:
    """Rank 0's GET /progress for every job (all pods are 127.0.0.1), step always moving."""

    def __init__(self) -> None:
        self.step, self.port = 0, 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def answer(request: web.Request) -> web.Response:
            report = Progress(step=self.step, total_steps=10**6, loss=1.0, phase=TrainerPhase.TRAINING)
            return web.Response(
                text=report.model_dump_json(by_alias=True, exclude_none=True), content_type="application/json"
            )

        app = web.Application()
        app.router.add_get("/progress", answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _until(check: Any, what: str, timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


def table(cases: list[Case]) -> str:
    rows = [["operator", "jobs", "p50 s", "p99 s", "requests/job", "peak MiB", "status writes/job/interval"]]
    for c in cases:
        writes = "-" if c.status_writes_per_job_per_interval is None else f"{c.status_writes_per_job_per_interval}"
        verbs = " ".join(f"{v}={n}" for v, n in c.requests_per_job.items())
        rows.append(
            [c.operator, str(c.jobs), f"{c.p50_seconds}", f"{c.p99_seconds}", verbs, f"{c.peak_rss_mib}", writes]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", "--jobs", dest="sizes", type=int, nargs="+", default=[100, 500, 1000], help="numbers of jobs"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="progress interval (seconds)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of running jobs to count writes over")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; results are not written")
    args = parser.parse_args(argv)
    cases = []
    for jobs in args.sizes:
        for kind in ("floor", "kubetune"):
            cases.append(asyncio.run(run_case(kind, jobs, args.interval, args.window)))
            print(table(cases[-1:]) if len(cases) == 1 else table(cases[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(cases))
    for case in cases:
        if (line := case.steady_state()) is not None:
            print(f"{case.jobs} jobs, {case.operator}: {line}")
    if not args.smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        payload = json.dumps({"benchmark": "operator", "cases": [asdict(c) for c in cases]}, indent=2)
        (RESULTS / f"operator-{stamp}.json").write_text(payload)
        (RESULTS / "operator-latest.json").write_text(payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
