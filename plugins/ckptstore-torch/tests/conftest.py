"""Fixtures for the torch plugin tests: the S3 test server, and a harness that runs real ranks.

The S3 model_dir runs against moto on 127.0.0.1, started with the repository's own ``tests/servers.py``
helpers. As in the core suite, a missing server skips the test on a laptop and fails it on CI (CI=true).

``run_ranks`` forks ``world_size`` processes *after* torch is imported (as torchrun's workers would be
warm), each joining a gloo job through a file rendezvous in the test's tmp_path (no fixed ports) and
building a ``TorchDistributedCoordinator``. Each rank's outcome comes back as JSON in a file; a rank that
was killed or had to be killed is reported as such.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[3]


@dataclass
class ModelDir:
    backend: str
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Any]:
    sys.path.insert(0, str(REPO / "tests"))  # the repository's own server helpers, not a copy
    from servers import MotoServer, start_for_tests  # type: ignore[import-not-found]

    server = start_for_tests(MotoServer(), ("boto3",))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def model_dir(request: pytest.FixtureRequest, tmp_path: Path) -> ModelDir:
    if request.param == "local":
        return ModelDir("local", str(tmp_path / "model_dir"))
    server = request.getfixturevalue("moto_server")
    return ModelDir("s3", f"s3://{server.bucket}/{uuid.uuid4().hex[:12]}", server.storage_options)


@pytest.fixture
def local_dir(tmp_path: Path) -> ModelDir:
    return ModelDir("local", str(tmp_path / "model_dir"))


# ---------------------------------------------------------------------------------------------
# Multi-rank harness
# ---------------------------------------------------------------------------------------------


_CLOCK = {"start": 0.0}


def restart_clock() -> None:
    """Inside a rank: measure ``RankResult.seconds`` from now (e.g. from the start of the save under test)."""
    _CLOCK["start"] = time.monotonic()


@dataclass
class RankResult:
    rank: int
    status: str  # "ok" | "error" | "died" (exited without reporting) | "killed" (by the harness)
    value: Any = None
    error_type: str | None = None
    message: str = ""
    failures: dict[str, str] | None = None
    seconds: float = 0.0  # inside the rank: from the scenario's start (or ``restart_clock``) to its end
    exitcode: int | None = None


def run_ranks(
    tmp_path: Path,
    world_size: int,
    scenario: Callable[[int, Any], Any],
    *,
    timeout: float = 60.0,
    deadline: float = 30.0,
    wait_for: set[int] | None = None,
) -> list[RankResult]:
    """Run ``scenario(rank, coordinator)`` on ``world_size`` forked ranks; return each rank's outcome.

    Args:
        timeout: the coordinator's collective timeout.
        deadline: seconds after which ranks still running are killed (reported as "killed").
        wait_for: stop waiting once these ranks have finished (default: all); the others are killed.
    """
    ctx = multiprocessing.get_context("fork")
    run = tmp_path / f"ranks-{uuid.uuid4().hex[:8]}"
    run.mkdir()
    procs = [ctx.Process(target=_rank_main, args=(rank, world_size, run, scenario, timeout), daemon=True)
             for rank in range(world_size)]
    for p in procs:
        p.start()
    wanted = set(range(world_size)) if wait_for is None else wait_for
    end = time.monotonic() + deadline
    while time.monotonic() < end and any(procs[r].is_alive() for r in wanted):
        time.sleep(0.02)
    killed = set()
    for rank, p in enumerate(procs):
        if p.is_alive():
            p.kill()
            killed.add(rank)
        p.join(5)
    results = []
    for rank, p in enumerate(procs):
        out = run / f"rank{rank}.json"
        if out.exists():
            results.append(RankResult(rank=rank, exitcode=p.exitcode, **json.loads(out.read_text())))
        else:
            results.append(RankResult(rank, "killed" if rank in killed else "died", exitcode=p.exitcode))
    return results


def _rank_main(rank: int, world_size: int, run: Path, scenario: Callable[[int, Any], Any], timeout: float) -> None:
    from ckptstore_torch import TorchDistributedCoordinator

    restart_clock()
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"file://{run}/rendezvous", rank=rank, world_size=world_size,
            timeout=timedelta(seconds=30),
        )
        coordinator = TorchDistributedCoordinator(timeout=timeout)
        restart_clock()
        result: dict[str, Any] = {"status": "ok", "value": scenario(rank, coordinator)}
    except BaseException as e:  # reported to the test, which asserts on it
        result = {
            "status": "error", "error_type": type(e).__name__, "message": f"{e}\n{traceback.format_exc()}",
            "failures": {str(k): v for k, v in getattr(e, "failures", {}).items()} or None,
        }
    result["seconds"] = time.monotonic() - _CLOCK["start"]
    tmp = run / f".rank{rank}.json"
    tmp.write_text(json.dumps(result, default=str))
    tmp.replace(run / f"rank{rank}.json")
    # Skip interpreter teardown: destroying a process group whose peers died can block.
    os._exit(0)
