"""Distributed save/restore protocol, with ranks as threads sharing an in-process coordinator (no torch).

``ThreadGroup`` is a reference ``Coordinator``: messages go through ``pack_message``/``unpack_message``
(msgpack, tags checked) and a ``threading.Barrier`` whose timeout stands in for a dead or hung rank.
The torch.distributed coordinator and real processes are tested in plugins/ckptstore-torch.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ckptstore import CheckpointStore, distributed
from ckptstore.distributed import (
    CoordinationError,
    Coordinator,
    RankFailed,
    SingleProcessCoordinator,
    pack_message,
    unpack_message,
)
from ckptstore.errors import CheckpointMismatch, StorageError
from ckptstore.format import LATEST_KEY
from ckptstore.testing import FaultInjectingStorage


class ThreadGroup:
    """``world_size`` coordinators for ranks running as threads of one process."""

    def __init__(self, world_size: int, timeout: float = 5.0):
        self.world_size = world_size
        self.timeout = timeout
        self._barrier = threading.Barrier(world_size, timeout=timeout)
        self._slots: list[bytes] = [b""] * world_size

    def coordinator(self, rank: int) -> ThreadCoordinator:
        return ThreadCoordinator(self, rank)

    def exchange(self, rank: int, data: bytes, tag: str) -> list[bytes]:
        self._slots[rank] = data
        self._wait(tag)
        out = list(self._slots)
        self._wait(tag)  # nobody overwrites a slot before every rank has read them all
        return out

    def _wait(self, tag: str) -> None:
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise CoordinationError(f"{tag}: not every rank arrived within {self.timeout} s") from None


class ThreadCoordinator:
    def __init__(self, group: ThreadGroup, rank: int):
        self.group = group
        self.rank = rank
        self.world_size = group.world_size

    def all_gather(self, obj: Any, tag: str) -> list[Any]:
        raw = self.group.exchange(self.rank, pack_message(tag, obj), tag)
        return [unpack_message(data, r, tag) for r, data in enumerate(raw)]

    def broadcast(self, obj: Any, tag: str, src: int = 0) -> Any:
        return self.all_gather(obj if self.rank == src else None, tag)[src]

    def barrier(self, tag: str) -> None:
        self.all_gather(None, tag)


def run_ranks(world_size: int, fn: Callable[[Coordinator], Any], timeout: float = 5.0) -> list[Any]:
    """Run ``fn(coordinator)`` on ``world_size`` threads; each rank's return value or exception."""
    group = ThreadGroup(world_size, timeout)
    results: list[Any] = [None] * world_size

    def run(rank: int) -> None:
        try:
            results[rank] = fn(group.coordinator(rank))
        except BaseException as e:  # the test inspects each rank's outcome
            results[rank] = e

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * 4)
    return results


@pytest.fixture
def url() -> str:
    return f"memory://dist-{uuid.uuid4().hex[:12]}"


def rank_state(rank: int) -> dict[str, Any]:
    """What rank ``rank`` holds: its own optimizer shard, a replicated model, a replicated scalar."""
    rng = np.random.default_rng(rank)
    return {
        "model": {"w": np.arange(3000, dtype=np.float32).reshape(30, 100), "b": np.ones(7, np.float64)},
        f"optim/rank{rank}": rng.standard_normal((rank + 1, 64)).astype(np.float32),
        "epoch": 3,
    }


def attempt_dirs(store: CheckpointStore, step: int) -> set[str]:
    return {o.key.split("/")[1] for o in store.storage.list(f"step-{step:012d}/") if o.key.count("/") == 2}


# ---------------------------------------------------------------------------------------------


def test_single_process_coordinator_round_trips_plain_data_only() -> None:
    c = SingleProcessCoordinator()
    assert (c.rank, c.world_size) == (0, 1)
    assert c.all_gather({"a": [1, 2.5, None, b"x"]}, "t") == [{"a": [1, 2.5, None, b"x"]}]
    assert c.broadcast("hi", "t") == "hi"
    c.barrier("t")
    with pytest.raises(TypeError, match="not plain data"):
        c.all_gather(object(), "t")
    assert isinstance(c, Coordinator)


def test_unpack_message_names_the_mismatched_rank_and_tags() -> None:
    with pytest.raises(CoordinationError, match=r"at 'save/1/plan' but rank 3 is at 'save/2/plan'"):
        unpack_message(pack_message("save/2/plan", 1), 3, "save/1/plan")
    with pytest.raises(CoordinationError, match="unreadable message from rank 2"):
        unpack_message(b"\xc1", 2, "x")


def test_single_process_save_matches_a_plain_save(url: str) -> None:
    store = CheckpointStore(url)
    state = rank_state(0)
    info = distributed.save(store, 5, state, SingleProcessCoordinator(), metadata={"loss": 0.5})
    assert (info.step, info.metadata, info.num_tensors) == (5, {"loss": 0.5}, 4)
    assert store.latest().step == 5
    out = distributed.restore(store, SingleProcessCoordinator())
    np.testing.assert_array_equal(out["model/w"], state["model"]["w"])
    assert out["epoch"] == 3
    assert store.restore(5, names=["optim/rank0"])["optim/rank0"].shape == (1, 64)


def test_four_ranks_commit_one_manifest_and_restore_at_any_world_size(model_dir) -> None:
    stores = [CheckpointStore(model_dir.url, storage_options=model_dir.storage_options) for _ in range(4)]

    def save(c: Coordinator) -> Any:
        return distributed.save(stores[c.rank], 10, rank_state(c.rank), c, metadata={"rank0": c.rank})

    infos = run_ranks(4, save)
    assert all(not isinstance(i, BaseException) for i in infos), infos
    assert len({(i.step, i.time, i.nbytes, i.num_tensors) for i in infos}) == 1
    assert infos[0].metadata == {"rank0": 0} and infos[0].num_tensors == 7
    for i in infos:  # each rank's own cost report, the whole checkpoint's bytes and shard files
        assert i.stats is not None and (i.stats.operation, i.stats.mode, i.stats.retries) == ("save", "distributed", 0)
        assert i.stats.nbytes == i.nbytes and i.stats.files == len(stores[0].manifest(10).shards) and i.stats.seconds > 0
    store = stores[0]
    assert store.latest().step == 10
    manifest = store.manifest(10)
    assert sorted(manifest.tensors) == ["model/b", "model/w", "optim/rank0", "optim/rank1", "optim/rank2", "optim/rank3"]
    # Every rank wrote under the same attempt prefix, in its own rank-named directory; the replicated
    # model was written once (by whichever ranks the planner picked), not four times.
    attempts = attempt_dirs(store, 10)
    assert len({a.rsplit("-r", 1)[0] for a in attempts}) == 1
    assert {a.rsplit("-r", 1)[1] for a in attempts} == {"00000", "00001", "00002", "00003"}
    assert sum(e.nbytes for e in manifest.tensors.values()) == 3000 * 4 + 7 * 8 + 64 * 4 * (1 + 2 + 3 + 4)

    # Two ranks: each reads only its names (a replicated model plus one rank's optimizer shard).
    def restore(c: Coordinator) -> Any:
        return distributed.restore(stores[c.rank], c, names=["model/w", f"optim/rank{c.rank + 2}", "epoch"])

    outs = run_ranks(2, restore)
    for rank, out in enumerate(outs):
        assert set(out) == {"model/w", f"optim/rank{rank + 2}", "epoch"}
        np.testing.assert_array_equal(out[f"optim/rank{rank + 2}"], rank_state(rank + 2)[f"optim/rank{rank + 2}"])
    # One process reads it all back, as from a single-process save.
    whole = CheckpointStore(model_dir.url, storage_options=model_dir.storage_options).restore()
    np.testing.assert_array_equal(whole["model/w"], rank_state(0)["model"]["w"])

    # A template per rank: it need not mention the other ranks' shards, but must match what it names.
    def restore_like(c: Coordinator) -> Any:
        like = {"model": {"w": np.zeros((30, 100), np.float32)}, "optim": {f"rank{c.rank}": np.zeros((c.rank + 1, 64), np.float32)}}
        return distributed.restore(stores[c.rank], c, like=like)

    outs = run_ranks(4, restore_like)
    assert [sorted(o) for o in outs] == [["model/w", f"optim/rank{r}"] for r in range(4)], outs


def test_a_rank_with_invalid_state_aborts_every_rank(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(4)]
    distributed.save(stores[0], 1, {"x": np.zeros(3)}, SingleProcessCoordinator())

    def save(c: Coordinator) -> Any:
        state = rank_state(c.rank)
        if c.rank == 2:
            state["bad"] = np.array(["a", object()], dtype=object)
        return distributed.save(stores[c.rank], 2, state, c)

    errors = run_ranks(4, save)
    assert all(isinstance(e, RankFailed) for e in errors), errors
    assert len({str(e) for e in errors}) == 1
    assert set(errors[0].failures) == {2} and "rank 2: TypeError" in str(errors[0])
    assert isinstance(errors[2].__cause__, TypeError) and errors[0].__cause__ is None
    assert stores[0].latest().step == 1
    assert attempt_dirs(stores[0], 2) == set()


def test_a_rank_whose_writes_fail_aborts_every_rank_and_its_shards_go(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(4)]
    faulty = FaultInjectingStorage(stores[1].storage)
    faulty.fail_on(lambda method, key, i: method == "put" and "shard" in key)
    stores[1] = CheckpointStore(storage=faulty)

    errors = run_ranks(4, lambda c: distributed.save(stores[c.rank], 7, rank_state(c.rank), c))
    assert all(isinstance(e, RankFailed) for e in errors), errors
    assert list(errors[3].failures) == [1] and "StorageError" in errors[3].failures[1]
    assert stores[0].latest() is None
    with pytest.raises(FileNotFoundError):
        stores[0].storage.head("step-000000000007/manifest.msgpack")
    assert attempt_dirs(stores[0], 7) == set()  # every rank removed its own shards


def test_a_failed_commit_keeps_the_shards_for_gc(url: str) -> None:
    """The manifest put may have landed before its error: nobody deletes shards it could name."""
    stores = [CheckpointStore(url) for _ in range(2)]
    faulty = FaultInjectingStorage(stores[0].storage)
    faulty.fail_on(lambda method, key, i: method == "put" and key.endswith("manifest.msgpack"))
    stores[0] = CheckpointStore(storage=faulty)
    errors = run_ranks(2, lambda c: distributed.save(stores[c.rank], 3, rank_state(c.rank), c))
    assert all(isinstance(e, RankFailed) and list(e.failures) == [0] for e in errors), errors
    assert len(attempt_dirs(stores[1], 3)) == 2


def test_conflicting_replicated_entries_are_refused(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(3)]

    def save(c: Coordinator) -> Any:
        state: dict[str, Any] = {"w": np.zeros(4 if c.rank == 1 else 3), "lr": 0.1 if c.rank < 2 else 0.2}
        return distributed.save(stores[c.rank], 1, state, c)

    errors = run_ranks(3, save)
    assert all(isinstance(e, RankFailed) for e in errors), errors
    assert set(errors[0].failures) == {1, 2}
    assert "w is float64 [4] here but float64 [3] on rank 0" in errors[0].failures[1]
    assert "scalar lr is 0.2 here but 0.1 on rank 0" in errors[0].failures[2]


def test_a_committed_step_is_refused_on_every_rank(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(2)]
    run_ranks(2, lambda c: distributed.save(stores[c.rank], 4, rank_state(c.rank), c))
    errors = run_ranks(2, lambda c: distributed.save(stores[c.rank], 4, rank_state(c.rank), c))
    assert all(isinstance(e, RankFailed) and "already committed" in str(e) for e in errors), errors
    infos = run_ranks(2, lambda c: distributed.save(stores[c.rank], 4, {"v": np.ones(2)}, c, overwrite=True))
    assert [i.num_tensors for i in infos] == [1, 1]
    assert list(stores[0].restore(4)) == ["v"]


def test_ranks_at_different_steps_fail_instead_of_mixing_data(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(3)]
    errors = run_ranks(3, lambda c: distributed.save(stores[c.rank], 8 if c.rank != 1 else 9, {"x": np.ones(1)}, c))
    assert all(isinstance(e, CoordinationError) for e in errors), errors
    assert "ckptstore.save/9/plan" in str(errors[0])
    assert stores[0].latest() is None


def test_a_rank_that_never_arrives_fails_the_others_within_the_timeout(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(3)]
    release = threading.Event()

    def save(c: Coordinator) -> Any:
        if c.rank == 2:
            release.wait(1)  # a hung rank
            return None
        return distributed.save(stores[c.rank], 1, {"x": np.ones(1)}, c)

    t0 = time.monotonic()
    results = run_ranks(3, save, timeout=0.5)
    release.set()
    assert time.monotonic() - t0 < 5
    assert isinstance(results[0], CoordinationError) and isinstance(results[1], CoordinationError)
    assert stores[0].latest() is None


def test_restore_fails_on_every_rank_when_one_cannot(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(3)]
    run_ranks(3, lambda c: distributed.save(stores[c.rank], 2, rank_state(c.rank), c))

    def restore(c: Coordinator) -> Any:
        like = {"model": {"w": np.zeros((30, 100), np.float32 if c.rank != 1 else np.float16)}}
        return distributed.restore(stores[c.rank], c, like=like, strict=True, names=["model/w"])

    errors = run_ranks(3, restore)
    assert all(isinstance(e, RankFailed) for e in errors), errors
    assert list(errors[0].failures) == [1] and "CheckpointMismatch" in errors[0].failures[1]
    assert isinstance(errors[1].__cause__, CheckpointMismatch)

    def restore_like(c: Coordinator) -> Any:
        like: dict[str, Any] = {"model": {"b": np.zeros(7)}}
        if c.rank == 2:
            like["optim/rank9"] = np.zeros(3, np.float32)  # no rank 9 saved anything
        return distributed.restore(stores[c.rank], c, like=like)

    errors = run_ranks(3, restore_like)
    assert all(isinstance(e, RankFailed) for e in errors), errors
    assert list(errors[0].failures) == [2] and "optim/rank9: in the model but not in the checkpoint" in str(errors[0])


def test_restore_with_no_checkpoint_fails_on_every_rank(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(2)]
    errors = run_ranks(2, lambda c: distributed.restore(stores[c.rank], c))
    assert all(isinstance(e, RankFailed) and "NotFound" in str(e) for e in errors), errors


def test_retention_runs_once_after_a_distributed_save(url: str) -> None:
    stores = [CheckpointStore(url, keep_max=2) for _ in range(2)]
    for step in (1, 2, 3):
        infos = run_ranks(2, lambda c, s=step: distributed.save(stores[c.rank], s, rank_state(c.rank), c))
        assert not any(isinstance(i, BaseException) for i in infos), infos
    assert [i.step for i in stores[1].list()] == [2, 3]
    assert stores[1].storage.head(LATEST_KEY).size > 0


def test_storage_errors_surface_as_rank_failures_not_hangs(url: str) -> None:
    stores = [CheckpointStore(url) for _ in range(2)]
    faulty = FaultInjectingStorage(stores[0].storage)
    faulty.fail_on(lambda method, key, i: method == "head" and key.endswith("manifest.msgpack"))
    stores[0] = CheckpointStore(storage=faulty)
    errors = run_ranks(2, lambda c: distributed.save(stores[c.rank], 1, {"x": np.ones(1)}, c))
    assert all(isinstance(e, RankFailed) and StorageError.__name__ in str(e) for e in errors), errors


def test_every_rank_checksums_with_rank_0s_algorithm(url: str) -> None:
    """One manifest names one algorithm: ranks configured differently still write one consistent checkpoint."""
    algorithms = ["crc32c", "xxh3-64", "xxh3-64"]
    stores = [CheckpointStore(url, checksum=a) for a in algorithms]

    def save(c: Coordinator) -> Any:
        return distributed.save(stores[c.rank], 3, rank_state(c.rank), c)

    infos = run_ranks(3, save)
    assert all(not isinstance(i, BaseException) for i in infos), infos
    manifest = stores[1].manifest(3)
    assert manifest.checksum == "crc32c" and all(c.checksum < 2**32 for e in manifest.tensors.values() for c in e.chunks)
    restored = stores[2].restore(3, verify=True)
    for rank in range(3):
        np.testing.assert_array_equal(restored[f"optim/rank{rank}"], rank_state(rank)[f"optim/rank{rank}"])
