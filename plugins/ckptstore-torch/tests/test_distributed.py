"""Four real ranks over torch.distributed (gloo, file rendezvous): saves, restores, and every way to fail.

Each scenario runs inside forked ranks (see ``conftest.run_ranks``); faults are injected in the ranks by
replacing a ckptstore function in that process only. Timeouts are short (3 s) so a dead or hung rank
fails the others quickly; the assertions check they do.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import ckptstore_torch
import numpy as np
import pytest
import torch
from conftest import ModelDir, restart_clock, run_ranks

from ckptstore import CheckpointStore, commit, transfer
from ckptstore.distributed import CoordinationError

WORLD = 4
TIMEOUT = 5.0  # for the tests that measure failing within the timeout (a dead or hung rank)
# For everything else: generous, since it costs nothing when the ranks are healthy, and a short one made
# gloo's connection setup of a new group time out on a loaded machine (seen in a CI rehearsal).
GENEROUS = 60.0


def model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same replicated model on every rank
    m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 16))
    m.register_buffer("mask", torch.ones(16, dtype=torch.bfloat16))
    return m


def rank_objects(rank: int) -> dict[str, Any]:
    """A replicated model, plus a shard of state only this rank holds (as ZeRO-style training has)."""
    g = torch.Generator().manual_seed(100 + rank)
    return {"model": model(), f"shard/rank{rank}": torch.randn(rank + 1, 256, generator=g).to(torch.bfloat16),
            "epoch": 2}


def checksum(t: torch.Tensor) -> int:
    return int(t.reshape(-1).view(torch.uint8).to(torch.int64).sum())


def open_store(md: ModelDir) -> CheckpointStore:
    return CheckpointStore(md.url, storage_options=md.storage_options)


def save_step(md: ModelDir, step: int) -> Any:
    """A scenario: every rank saves its objects for ``step``; returns the CheckpointInfo as plain data."""

    def scenario(rank: int, coordinator: Any) -> Any:
        info = ckptstore_torch.save(open_store(md), step, rank_objects(rank), coordinator=coordinator)
        return [info.step, info.time, info.nbytes, info.num_tensors]

    return scenario


def assert_committed(md: ModelDir, step: int) -> None:
    store = open_store(md)
    flat = store.restore()
    assert store.latest().step == step
    for rank in range(WORLD):
        expected = rank_objects(rank)[f"shard/rank{rank}"]
        assert checksum(ckptstore_torch.from_numpy(flat[f"shard/rank{rank}"])) == checksum(expected)
    np.testing.assert_array_equal(flat["model/0.weight"], model()[0].weight.detach().numpy())


def test_four_ranks_save_and_restore(tmp_path, model_dir: ModelDir) -> None:
    open_store(model_dir).close()  # load the backend's client data once, before the ranks fork
    def scenario(rank: int, coordinator: Any) -> Any:
        store = open_store(model_dir)
        saved = ckptstore_torch.save(store, 10, rank_objects(rank), {"run": "t"}, coordinator=coordinator)
        # Restore into fresh objects: each rank reads the model and its own shard, nothing else.
        fresh = model()
        with torch.no_grad():
            for p in fresh.parameters():
                p.zero_()
        shard = torch.zeros(rank + 1, 256, dtype=torch.bfloat16)
        out = ckptstore_torch.restore(store, {"model": fresh, f"shard/rank{rank}": shard, "epoch": None},
                                      coordinator=coordinator)
        same = all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model().state_dict().values(), strict=True))
        return {"info": [saved.step, saved.time, saved.nbytes, saved.num_tensors, saved.metadata],
                "model_ok": same, "shard": checksum(shard), "epoch": out["epoch"]}

    results = run_ranks(tmp_path, WORLD, scenario, timeout=30)
    assert [r.status for r in results] == ["ok"] * WORLD, [r.message for r in results]
    assert len({str(r.value["info"]) for r in results}) == 1  # every rank returned the same result
    assert results[0].value["info"][0] == 10 and results[0].value["info"][4] == {"run": "t"}
    for r in results:
        assert r.value["model_ok"] and r.value["epoch"] == 2
        assert r.value["shard"] == checksum(rank_objects(r.rank)[f"shard/rank{r.rank}"])
    assert_committed(model_dir, 10)
    store = open_store(model_dir)
    attempts = {o.key.split("/")[1] for o in store.storage.list("step-000000000010/") if o.key.count("/") == 2}
    assert len(attempts) == WORLD and len({a.rsplit("-r", 1)[0] for a in attempts}) == 1

    # Another world size: two ranks restore the replicated model (not sharded, so it fits any world).
    def two_ranks(rank: int, coordinator: Any) -> Any:
        fresh = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 16))
        fresh.register_buffer("mask", torch.zeros(16, dtype=torch.bfloat16))
        ckptstore_torch.restore(open_store(model_dir), {"model": fresh}, coordinator=coordinator)
        return checksum(fresh[1].weight.detach())

    results = run_ranks(tmp_path, 2, two_ranks, timeout=30)
    assert [r.value for r in results] == [checksum(model()[1].weight.detach())] * 2, [r.message for r in results]


def test_a_rank_that_raises_aborts_the_save_on_every_rank(tmp_path, local_dir: ModelDir) -> None:
    def scenario(rank: int, coordinator: Any) -> Any:
        save_step(local_dir, 1)(rank, coordinator)
        if rank == 2:
            def broken(*args: Any, **kwargs: Any) -> Any:
                raise OSError("disk on fire")
            transfer.write_shards = broken
        restart_clock()
        return save_step(local_dir, 2)(rank, coordinator)

    results = run_ranks(tmp_path, WORLD, scenario, timeout=GENEROUS)
    assert [r.error_type for r in results] == ["RankFailed"] * WORLD, [r.message for r in results]
    assert all(r.failures == {"2": "OSError: disk on fire"} for r in results)
    assert len({r.message.splitlines()[0] for r in results}) == 1
    assert "save of step 2 failed on rank 2: OSError: disk on fire" in results[0].message
    assert open_store(local_dir).latest().step == 1
    assert not list(open_store(local_dir).storage.list("step-000000000002/"))  # shards cleaned up


def test_a_rank_killed_mid_save_fails_the_others_within_the_timeout(tmp_path, local_dir: ModelDir) -> None:
    def scenario(rank: int, coordinator: Any) -> Any:
        save_step(local_dir, 1)(rank, coordinator)
        if rank == 1:
            real = transfer.write_shards

            def write_then_die(*args: Any, **kwargs: Any) -> Any:
                real(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
            transfer.write_shards = write_then_die
        restart_clock()
        return save_step(local_dir, 2)(rank, coordinator)

    results = run_ranks(tmp_path, WORLD, scenario, timeout=TIMEOUT)
    assert results[1].status == "died" and results[1].exitcode == -signal.SIGKILL
    for r in (results[0], results[2], results[3]):
        assert r.error_type == "CoordinationError", r.message
        assert r.seconds < TIMEOUT + 3, r.seconds
    assert open_store(local_dir).latest().step == 1
    assert open_store(local_dir).restore(1)["epoch"] == 2


def test_a_hung_rank_fails_the_others_within_the_timeout(tmp_path, local_dir: ModelDir) -> None:
    def scenario(rank: int, coordinator: Any) -> Any:
        if rank == 3:
            transfer.write_shards = lambda *args, **kwargs: time.sleep(60)
        return save_step(local_dir, 5)(rank, coordinator)

    t0 = time.monotonic()
    results = run_ranks(tmp_path, WORLD, scenario, timeout=TIMEOUT, wait_for={0, 1, 2})
    assert time.monotonic() - t0 < TIMEOUT + 10
    assert results[3].status == "killed"
    for r in results[:3]:
        assert r.error_type == "CoordinationError", r.message
        assert TIMEOUT - 0.5 < r.seconds < TIMEOUT + 3, r.seconds
    assert open_store(local_dir).latest() is None


@pytest.mark.parametrize("dies_after", ["commit_manifest", "advance_latest"])
def test_rank0_dying_right_after_the_commit_leaves_a_checkpoint_that_restores(
    tmp_path, local_dir: ModelDir, dies_after: str
) -> None:
    def scenario(rank: int, coordinator: Any) -> Any:
        save_step(local_dir, 1)(rank, coordinator)
        if rank == 0:
            real = getattr(commit, dies_after)

            def then_die(*args: Any, **kwargs: Any) -> Any:
                real(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
            setattr(commit, dies_after, then_die)
        restart_clock()
        return save_step(local_dir, 2)(rank, coordinator)

    results = run_ranks(tmp_path, WORLD, scenario, timeout=TIMEOUT)
    assert results[0].status == "died"
    for r in results[1:]:
        assert r.error_type == "CoordinationError", r.message
        assert r.seconds < TIMEOUT + 3, r.seconds
    # The other ranks could not know the outcome, so they kept their shards: the checkpoint is whole.
    # (Dying before LATEST moved, the manifest is the commit: a restarted job rolls LATEST forward.)
    assert_committed(local_dir, 2)


def test_coordinator_detects_mismatched_calls(tmp_path) -> None:
    def scenario(rank: int, coordinator: Any) -> Any:
        assert (coordinator.rank, coordinator.world_size) == (rank, 2)
        assert coordinator.all_gather({"r": rank, "b": b"\x00" * rank}, "a") == [{"r": 0, "b": b""}, {"r": 1, "b": b"\x00"}]
        assert coordinator.broadcast(f"from {rank}", "b", src=1) == "from 1"
        coordinator.barrier("c")
        coordinator.barrier("step-1" if rank == 0 else "step-2")

    results = run_ranks(tmp_path, 2, scenario, timeout=GENEROUS)
    assert [r.error_type for r in results] == ["CoordinationError"] * 2, [r.message for r in results]
    assert "this rank is at 'step-1' but rank 1 is at 'step-2'" in results[0].message


def test_a_coordinator_over_some_ranks(tmp_path) -> None:
    def scenario(rank: int, coordinator: Any) -> Any:
        sub = ckptstore_torch.TorchDistributedCoordinator(timeout=GENEROUS, ranks=[1, 2])
        if rank in (1, 2):
            seen = [sub.rank, sub.world_size, sub.all_gather(rank, "sub")]
        else:
            with pytest.raises(CoordinationError, match="not one of the coordinator's ranks"):
                sub.barrier("sub")
            seen = [sub.rank]
        # Rank 0 stays until the members are done, as a job's ranks do: a non-member exiting while
        # the members still connect breaks gloo's set-up at random (see the coordinator's docstring).
        coordinator.barrier("done")
        return seen

    results = run_ranks(tmp_path, 3, scenario, timeout=GENEROUS)
    assert [r.value for r in results] == [[-1], [0, 2, [1, 2]], [1, 2, [1, 2]]], [r.message for r in results]


def test_the_coordinator_needs_an_initialised_job() -> None:
    with pytest.raises(RuntimeError, match="not initialised"):
        ckptstore_torch.TorchDistributedCoordinator()
    assert issubclass(CoordinationError, Exception)
