"""The forked launch the test rows use (forked.py) gives each rank what torchrun gives it, and
ends a run as torchrun does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubetune.contract import ExitCode

from .conftest import _free_port, launch, memorise_spec
from .forked import ForkedRun, rank_environment, server

# torchrun's alone: the file its @record decorator writes a rank's traceback to.
TORCHRUN_ONLY = {"TORCHELASTIC_ERROR_FILE"}
# The rendezvous store is served by torchrun's agent, and by rank 0 without one.
DIFFERENT_BY_DESIGN = {"TORCHELASTIC_USE_AGENT_STORE"}
DUMP = "import json, os, sys; json.dump(dict(os.environ), open(f'{sys.argv[1]}/rank-{os.environ[\"RANK\"]}', 'w'))"


def _added(environment: dict[str, str], base: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in environment.items() if base.get(name) != value}


def test_a_forked_rank_is_given_the_variables_torchrun_gives(tmp_path: Path) -> None:
    base = os.environ | {"OMP_NUM_THREADS": "1"}
    port = _free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    command += ["--no-python", sys.executable, "-c", DUMP, str(tmp_path)]
    done = subprocess.run(command, env=base, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    for rank in (0, 1):
        given = _added(json.loads((tmp_path / f"rank-{rank}").read_text()), base)
        ours = _added(rank_environment(base, rank, 2, port), base)
        assert set(given) - TORCHRUN_ONLY == set(ours), rank
        differing = {name for name in ours if ours[name] != given[name]}
        assert differing == DIFFERENT_BY_DESIGN, {name: (ours[name], given[name]) for name in differing}


def _fails(code: int) -> None:
    sys.exit(code)


def _waits(seconds: float) -> None:
    time.sleep(seconds)


def test_when_one_rank_fails_the_others_are_stopped_and_its_code_is_the_run_s() -> None:
    # Forks of the server `forked.start` uses: a fork of this process would inherit the SIGTERM
    # handler an in-process training run installed.
    context = server(os.environ | {"OMP_NUM_THREADS": "1"})
    ranks = [context.Process(target=_waits, args=(120,)), context.Process(target=_fails, args=(3,))]
    for rank in ranks:
        rank.start()
    run = ForkedRun(list(ranks))

    assert run.wait(timeout=60) == 3
    assert ranks[0].exitcode == -15  # SIGTERM, as torchrun's agent sends it


def test_forked_ranks_exit_with_the_trainer_s_code_and_log_to_the_run_s_log(volumes: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    spec = memorise_spec("lora", ["adapter"], distributed={"strategy": "ddp"})
    process = launch(spec, volumes, tmp_path, processes=2, env={"KUBETUNE_SPEC": str(tmp_path / "broken.json")})

    assert process.wait(timeout=300) == ExitCode.INVALID_SPEC
    # The rank that failed second may have been stopped first, as under torchrun.
    assert {rank.exitcode for rank in process.ranks} <= {ExitCode.INVALID_SPEC, -signal.SIGTERM}
    log = (tmp_path / "log.txt").read_text()
    assert f"ERROR kubetune_trainer: cannot read the spec at {tmp_path / 'broken.json'}" in log, log[-3000:]
