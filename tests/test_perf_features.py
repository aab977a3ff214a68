"""Background saves, memory-mapped restores, cost reporting, and the shapes behind the performance targets.

No timing assertions here (the machine is shared): the benchmarks in ``benchmarks/perf_targets.py``
measure speed. These tests pin behaviour: what a background save snapshots, that at most one is in
flight, how its failure surfaces, that staging memory is reused, that a SIGKILL during a background
write loses nothing committed, what ``mmap=True`` returns, what the stats say, and how many storage
calls ``latest()`` makes.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptstore import checksum, commit, format, transfer
from ckptstore.errors import CheckpointMismatch, ChecksumError, StorageError, Unsupported
from ckptstore.format import plan_layout, step_dir
from ckptstore.manager import CheckpointInfo, CheckpointStore, SaveHandle, TransferStats
from ckptstore.storage.local import LocalStorage
from ckptstore.storage.memory import MemoryStorage
from ckptstore.testing import FaultInjectingStorage

REPO = Path(__file__).resolve().parents[1]


def _state(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "big": rng.random((512, 1024), dtype=np.float32),  # 2 MiB: the large-chunk path
        "small": {f"b{i}": rng.integers(0, 100, 37 + i, dtype=np.int64) for i in range(20)},
        "scalar0d": np.float64(seed),
        "global_step": seed,
    }


def _assert_same(restored: dict[str, Any], state: dict[str, Any]) -> None:
    flat = {"big": state["big"], "scalar0d": state["scalar0d"], "global_step": state["global_step"]}
    flat |= {f"small/{k}": v for k, v in state["small"].items()}
    assert set(restored) == set(flat)
    for name, value in flat.items():
        np.testing.assert_array_equal(restored[name], value)


class GatedStorage(FaultInjectingStorage):
    """Shard puts wait until ``release()``: makes a background save observably in flight."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def put(self, key: str, data: Any, mode: Any = "overwrite") -> Any:
        if key.endswith(".bin"):
            self.entered.set()
            assert self.gate.wait(30), "test forgot to release the gate"
        return super().put(key, data, mode)

    def release(self) -> None:
        self.gate.set()


@pytest.fixture(params=["memory", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return MemoryStorage(f"perf-{id(request)}") if request.param == "memory" else LocalStorage(tmp_path / "store")


# ---------------------------------------------------------------------------------------------
# Background saves
# ---------------------------------------------------------------------------------------------


def test_background_save_snapshots_the_state_before_returning(backend: Any) -> None:
    gated = GatedStorage(backend)
    store = CheckpointStore(storage=gated, workers=2)
    state = _state(1)
    expected = {"big": state["big"].copy(), "small": {k: v.copy() for k, v in state["small"].items()},
                "scalar0d": state["scalar0d"], "global_step": 1}
    handle = store.save(1, state, metadata={"loss": 0.5}, blocking=False)
    assert isinstance(handle, SaveHandle) and handle.step == 1
    assert gated.entered.wait(10)
    assert not handle.done()
    state["big"][:] = -1  # training goes on and changes its arrays: the checkpoint must not see it
    for v in state["small"].values():
        v[:] = -1
    gated.release()
    info = handle.result(timeout=30)
    assert isinstance(info, CheckpointInfo) and info.step == 1
    assert info.stats is not None and info.stats.mode == "background"
    assert info.stats.blocked_seconds <= info.stats.seconds
    assert store.wait() == info  # collected once more by wait(): same info, no error
    _assert_same(store.restore(1), expected)
    assert store.latest().step == 1
    store.close()


def test_at_most_one_save_in_flight(backend: Any) -> None:
    gated = GatedStorage(backend)
    store = CheckpointStore(storage=gated, workers=2)
    first = store.save(1, _state(1), blocking=False)
    assert gated.entered.wait(10)
    outcome: dict[str, Any] = {}

    def second() -> None:
        outcome["handle"] = store.save(2, _state(2), blocking=False)
        outcome["first_done_when_second_started"] = first.done()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.2)
    assert t.is_alive(), "the second save must wait for the first"
    gated.release()
    t.join(30)
    assert outcome["first_done_when_second_started"]
    assert outcome["handle"].result(30).step == 2
    assert [i.step for i in store.list()] == [1, 2]
    _assert_same(store.restore(1), _state(1))
    _assert_same(store.restore(2), _state(2))
    store.close()


def test_a_blocking_save_also_waits_for_the_background_one(backend: Any) -> None:
    store = CheckpointStore(storage=backend, workers=2)
    handle = store.save(1, _state(1), blocking=False)
    info = store.save(2, _state(2))
    assert handle.done() and info.stats is not None and info.stats.mode == "blocking"
    assert store.latest().step == 2
    store.close()


def test_background_failure_is_raised_once_by_the_next_save(backend: Any, caplog: Any) -> None:
    faulty = FaultInjectingStorage(backend)
    store = CheckpointStore(storage=faulty, workers=2)
    store.save(1, _state(1))
    faulty.fail_on(lambda method, key, i: method == "put" and key.endswith(".bin"))
    with caplog.at_level(logging.ERROR, logger="ckptstore"):
        store.save(2, _state(2), blocking=False)
        with pytest.raises(StorageError, match="injected fault"):
            store.save(3, _state(3))  # raises the background failure instead of saving step 3
    assert "background save of step 2 failed" in caplog.text  # logged even if nobody had asked
    faulty.heal()
    assert store.save(3, _state(3)).step == 3  # reported once: the retry goes ahead
    assert [i.step for i in store.list()] == [1, 3]
    store.close()


def test_background_failure_is_raised_by_wait_and_the_handle(backend: Any) -> None:
    faulty = FaultInjectingStorage(backend)
    store = CheckpointStore(storage=faulty, workers=2)
    faulty.fail_on(lambda method, key, i: method == "put" and key.endswith(".bin"))
    store.save(1, _state(1), blocking=False)
    with pytest.raises(StorageError):
        store.wait()
    assert store.wait() is None
    handle = store.save(2, _state(2), blocking=False)
    with pytest.raises(StorageError):
        handle.result(30)
    assert store.wait() is None  # already reported through the handle
    faulty.heal()
    store.save(2, _state(2))
    store.close()


def test_close_raises_an_uncollected_background_failure(backend: Any) -> None:
    faulty = FaultInjectingStorage(backend)
    store = CheckpointStore(storage=faulty, workers=2)
    faulty.fail_on(lambda method, key, i: method == "put" and key.endswith(".bin"))
    store.save(1, _state(1), blocking=False)
    with pytest.raises(StorageError):
        store.close()


def test_invalid_input_and_committed_steps_fail_before_returning(backend: Any) -> None:
    store = CheckpointStore(storage=backend, workers=2)
    store.save(1, _state(1))
    with pytest.raises(TypeError):
        store.save(2, {"x": object()}, blocking=False)
    from ckptstore.errors import CommitError

    with pytest.raises(CommitError):
        store.save(1, _state(1), blocking=False)
    assert store.wait() is None
    store.close()


def test_staging_buffers_are_reused_between_background_saves(backend: Any) -> None:
    store = CheckpointStore(storage=backend, workers=2)
    store.save(1, _state(1), blocking=False).result(30)
    first = [id(b) for b in store._staging._buffers]
    held = store._staging.nbytes
    model = sum(a.nbytes for a in [_state(1)["big"], *_state(1)["small"].values()])
    assert model <= held <= model + 64 * 4096  # the model plus its alignment padding
    for step in (2, 3, 4):
        store.save(step, _state(step), blocking=False)
    store.wait()
    assert [id(b) for b in store._staging._buffers] == first
    assert store._staging.nbytes == held
    _assert_same(store.restore(4), _state(4))
    store.close()
    assert store._staging.nbytes == 0


def test_reserve_staging_allocates_the_buffers_the_first_background_save_uses(backend: Any) -> None:
    store = CheckpointStore(storage=backend, workers=2)
    held = store.reserve_staging(_state(0))
    reserved = [id(b) for b in store._staging._buffers]
    model = sum(a.nbytes for a in [_state(0)["big"], *_state(0)["small"].values()])
    assert model <= held == store._staging.nbytes <= model + 64 * 4096
    handle = store.save(1, _state(1), blocking=False)
    assert [id(b) for b in store._staging._buffers] == reserved  # no allocation while the caller waited
    handle.result(30)
    # Reserving again while a save is in flight waits for it, so its buffers are not touched mid-write.
    gated = GatedStorage(backend)
    store2 = CheckpointStore(storage=gated, workers=2)
    store2.reserve_staging(_state(2))
    store2.save(2, _state(2), blocking=False)
    assert gated.entered.wait(30)
    releaser = threading.Timer(0.3, gated.release)
    releaser.start()
    store2.reserve_staging(_state(2))
    assert not store2._pending  # it waited for the save, which committed intact
    _assert_same(store2.restore(2), _state(2))
    with pytest.raises(TypeError):
        store2.reserve_staging({"bad": object()})
    store.close()
    store2.close()


def test_staged_shards_are_byte_identical_to_streamed_ones(tmp_path: Path) -> None:
    a = CheckpointStore(tmp_path / "a", workers=2, max_shard_size=1 << 20, chunk_size=256 << 10)
    b = CheckpointStore(tmp_path / "b", workers=2, max_shard_size=1 << 20, chunk_size=256 << 10)
    state = _state(7)
    a.save(7, state)
    b.save(7, state, blocking=False).result(30)
    ma, mb = a.manifest(7), b.manifest(7)
    assert {n: (e.shape, [(c.offset, c.nbytes, c.checksum) for c in e.chunks]) for n, e in ma.tensors.items()} == {
        n: (e.shape, [(c.offset, c.nbytes, c.checksum) for c in e.chunks]) for n, e in mb.tensors.items()
    }
    da = {k.split("/")[-1]: (tmp_path / "a" / "step-000000000007" / k).read_bytes() for k in ma.shards}
    db = {k.split("/")[-1]: (tmp_path / "b" / "step-000000000007" / k).read_bytes() for k in mb.shards}
    assert da == db
    a.close()
    b.close()


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, numpy as np
    sys.path.insert(0, {repo!r})
    import ckptstore

    store = ckptstore.CheckpointStore({model_dir!r}, workers=2)
    rng = np.random.default_rng(0)
    committed = {{"w": rng.random(1 << 20, dtype=np.float32), "step": 1}}
    store.save(1, committed)
    big = {{f"w{{i}}": np.full(8 << 20, i, dtype=np.float32) for i in range(4)}}  # 128 MiB
    handle = store.save(2, big, blocking=False)
    os.write(1, b"SNAPSHOTTED\\n")
    handle.result()
    os.write(1, b"DONE\\n")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_sigkill_during_a_background_save_loses_nothing_committed(tmp_path: Path) -> None:
    model_dir = tmp_path / "store"
    script = _KILLED_WRITER.format(repo=str(REPO), model_dir=str(model_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"SNAPSHOTTED\n", line
    time.sleep(0.05)  # inside the background write (128 MiB of fsync'd shards take far longer)
    proc.send_signal(signal.SIGKILL)
    proc.stdout.read()
    assert proc.wait(30) == -signal.SIGKILL
    store = CheckpointStore(model_dir, workers=2)
    latest = store.latest()
    assert latest is not None and latest.step in (1, 2)
    restored = store.restore(1)
    np.testing.assert_array_equal(restored["w"], np.random.default_rng(0).random(1 << 20, dtype=np.float32))
    if latest.step == 2:  # the kill came after the commit: then step 2 is complete
        restored2 = store.restore(2)
        assert set(restored2) == {f"w{i}" for i in range(4)}
    # Whatever was left behind is an unreferenced attempt; the next writer carries on past it.
    store.save(3, {"w": np.ones(10)})
    assert store.latest().step == 3
    store.close()


# ---------------------------------------------------------------------------------------------
# Memory-mapped restores
# ---------------------------------------------------------------------------------------------


def test_mmap_restore_returns_read_only_views_of_the_shards(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s", workers=2)
    state = _state(3)
    store.save(3, state)
    restored = store.restore(mmap=True)
    _assert_same(restored, state)
    big = restored["big"]
    assert not big.flags.writeable
    with pytest.raises(ValueError):
        big[0, 0] = 1.0
    assert big.base is not None  # a view, not an owned copy
    assert store.last_restore_stats is not None and store.last_restore_stats.mode == "mmap"
    # Pruning the step while the arrays live is safe on POSIX (the mapping keeps the inode).
    store.prune(retention=__import__("ckptstore.policies", fromlist=["KeepMax"]).KeepMax(1))
    store.save(4, _state(4))
    store.prune(retention=__import__("ckptstore.policies", fromlist=["KeepMax"]).KeepMax(1))
    np.testing.assert_array_equal(big, state["big"])
    store.close()


def test_mmap_restore_verifies_only_when_asked(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s", workers=2)
    store.save(1, _state(1))
    manifest = store.manifest(1)
    chunk = manifest.tensors["big"].chunks[0]
    path = tmp_path / "s" / "step-000000000001" / chunk.shard
    with open(path, "r+b") as f:
        f.seek(chunk.offset + 100)
        byte = f.read(1)
        f.seek(chunk.offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    store.restore(1, mmap=True)  # no checksum by default: the trade-off for not reading every page
    with pytest.raises(ChecksumError):
        store.restore(1, mmap=True, verify=True)
    with pytest.raises(ChecksumError):
        store.restore(1)
    store.close()


def test_mmap_restore_of_tensors_split_across_shards(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s", workers=2, max_shard_size=1 << 20, chunk_size=256 << 10)
    state = _state(5)
    store.save(5, state)
    assert len({c.shard for c in store.manifest(5).tensors["big"].chunks}) > 1
    restored = store.restore(5, mmap=True, verify=True)
    _assert_same(restored, state)
    assert not any(a.flags.writeable for a in restored.values() if isinstance(a, np.ndarray))
    store.close()


def test_mmap_restore_needs_local_disk() -> None:
    store = CheckpointStore("memory://perf-mmap")
    store.save(1, _state(1))
    with pytest.raises(Unsupported, match="local-disk"):
        store.restore(1, mmap=True)


# ---------------------------------------------------------------------------------------------
# Cost reporting
# ---------------------------------------------------------------------------------------------


def test_save_and_restore_report_their_cost(backend: Any, caplog: Any) -> None:
    store = CheckpointStore(storage=backend, workers=2)
    assert store.last_restore_stats is None
    with caplog.at_level(logging.INFO, logger="ckptstore"):
        info = store.save(1, _state(1))
        store.restore(1)
    s = info.stats
    assert isinstance(s, TransferStats)
    assert (s.operation, s.step, s.mode, s.retries) == ("save", 1, "blocking", 0)
    assert s.nbytes == info.nbytes > 0 and s.files >= 1
    assert s.seconds > 0 and s.blocked_seconds == s.seconds and s.throughput == s.nbytes / s.seconds
    assert info.seconds == s.seconds
    r = store.last_restore_stats
    assert r is not None and (r.operation, r.step, r.mode) == ("restore", 1, "read")
    assert r.nbytes == sum(a.nbytes for a in _state(1)["small"].values()) + _state(1)["big"].nbytes  # np.float64 is a float: a scalar
    assert "save step 1 (blocking)" in caplog.text and "restore step 1 (read)" in caplog.text
    assert store.latest().stats is None  # read back from storage: no cost to report
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.nbytes = 0  # type: ignore[misc]  # frozen


def test_retries_count_lost_races_on_latest(backend: Any) -> None:
    from ckptstore.errors import PreconditionFailed

    faulty = FaultInjectingStorage(backend)
    store = CheckpointStore(storage=faulty, workers=2)
    store.save(1, _state(1))
    lost = iter([True, True])
    faulty.fail_on(lambda method, key, i: method == "put" and key == "LATEST" and next(lost, False),
                   PreconditionFailed("injected lost race"))
    info = store.save(2, _state(2))
    assert info.stats is not None and info.stats.retries == 2
    assert store.latest().step == 2


# ---------------------------------------------------------------------------------------------
# Shapes behind the targets
# ---------------------------------------------------------------------------------------------


def test_latest_is_one_storage_read_with_1000_checkpoints() -> None:
    inner = MemoryStorage("perf-latest-1000")
    writer = CheckpointStore(storage=inner, workers=1)
    writer.save(0, {"w": np.zeros(4, np.float32)})
    # 999 more committed checkpoints, cloned from step 0 (1000 real saves would mostly test retention's GC).
    first = writer.manifest(0)
    shard_keys = [o.key for o in inner.list("step-000000000000/") if o.key.endswith(".bin")]
    for step in range(1, 1000):
        for key in shard_keys:
            inner.put(key.replace("step-000000000000", step_dir(step)), inner.get(key))
        manifest = replace(first, step=step)
        commit.commit_manifest(inner, manifest, overwrite=False)
        commit.advance_latest(inner, commit.latest_from_manifest(manifest))
    assert len(commit.committed_steps(inner)) == 1000
    counted = FaultInjectingStorage(inner)
    store = CheckpointStore(storage=counted)
    assert store.latest().step == 999  # the first call per store also checks for a newer manifest once
    for _ in range(3):
        counted.calls.clear()
        assert store.latest().step == 999
        assert counted.calls == [("get", "LATEST")]


def test_plan_has_one_shard_per_worker_when_chunks_do_not_divide_evenly(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s", workers=2)
    sizes = [(f"t{i}", 67_285_000) for i in range(15)] + [(f"b{i}", 50_000) for i in range(200)]
    naive = plan_layout(sizes, target_shard_size=-(-sum(n for _, n in sizes) // 2))
    assert len(naive.shards) == 3  # the greedy fill spills a third shard that one worker writes alone
    plan = store._plan(sizes)
    assert len(plan.shards) == 2
    assert max(plan.shard_sizes) / min(plan.shard_sizes) < 1.15


def test_many_small_tensors_are_written_in_few_pieces() -> None:
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.integers(0, 255, int(n), dtype=np.uint8) for i, n in enumerate(rng.integers(1, 20_000, 2000))}
    plan = plan_layout([(n, a.nbytes) for n, a in arrays.items()], target_shard_size=1 << 40)
    views = {n: transfer.byte_view(a) for n, a in arrays.items()}
    blocks = plan.blocks[0]
    assert blocks and blocks[0][0] == 0 and blocks[-1][1] == len(plan.shards[0])  # all of them small
    for algorithm in checksum.ALGORITHMS:
        sums: dict[str, int] = {}
        found: list[tuple[int, int, int]] = []
        pieces = list(transfer._stream_pieces(plan.shards[0], views, lambda pc, c, s=sums: s.__setitem__(pc.name, c),
                                              algorithm, blocks, lambda *b, f=found: f.append(b)))
        # A glued write per block (at most BLOCK_SPAN bytes) or per PIECE bytes, and the padding before each block.
        assert len(blocks) <= plan.shard_sizes[0] // (format.BLOCK_SPAN // 2) + 1
        assert len(pieces) <= 2 * len(blocks) + plan.shard_sizes[0] // transfer.PIECE
        shard = b"".join(bytes(p) for p in pieces)
        assert len(shard) == plan.shard_sizes[0]
        assert sums == {n: checksum.checksum(algorithm, v) for n, v in views.items()}
        chunks = plan.shards[0]
        assert found == [
            (chunks[a].offset, chunks[b - 1].offset + chunks[b - 1].nbytes - chunks[a].offset,
             checksum.checksum(algorithm, shard[chunks[a].offset : chunks[b - 1].offset + chunks[b - 1].nbytes]))
            for a, b in blocks
        ]


def test_blocks_group_neighbouring_small_chunks_only() -> None:
    """A block: two or more neighbouring chunks of 1 to BLOCK_MEMBER - 1 bytes, spanning at most
    BLOCK_SPAN bytes; a chunk that is too big (or empty) ends it."""
    member, span = format.BLOCK_MEMBER, format.BLOCK_SPAN
    sizes = [10, 20, member, 30, 40, 50, 0, 60, member - 1, 70, member, 5 * member, *[member - 1] * 40]
    plan = plan_layout([(f"t{i}", n) for i, n in enumerate(sizes)], target_shard_size=1 << 40)
    chunks = plan.shards[0]
    blocks = plan.blocks[0]
    assert blocks[:3] == ((0, 2), (3, 6), (7, 10))  # t2, t10 and t11 (too big) and t6 (empty) end blocks
    for a, b in blocks:
        assert b - a >= 2 and all(0 < c.nbytes < member for c in chunks[a:b])
        assert chunks[b - 1].offset + chunks[b - 1].nbytes - chunks[a].offset <= span
    tail = [blk for blk in blocks if blk[0] >= 12]
    assert [b - a for a, b in tail] == [8] * 5  # 8 chunks of 1 MiB (padded) fill 8 MiB
    assert plan_layout([("x", 10)], target_shard_size=1 << 40).blocks == ((),)


def test_staging_pool_reuses_buffers_whatever_the_shard_order() -> None:
    pool = transfer.StagingPool()
    pool.acquire([100_000, 200_000])
    held = sorted(id(b) for b in pool._buffers)
    pool.acquire([200_000, 100_000])  # the same shards, listed the other way round
    assert sorted(id(b) for b in pool._buffers) == held
    pool.acquire([300_000])
    assert pool.nbytes >= 300_000 and len(pool._buffers) == 1


def test_restored_large_arrays_are_page_aligned_writable_and_independent(tmp_path: Path) -> None:
    """Large destinations are page-aligned (fast copies from page-aligned file offsets), writable, and
    each owns its memory: freeing or writing one never touches another or the stored checkpoint."""
    store = CheckpointStore(tmp_path / "ckpt", workers=2)
    state = {f"w{i}": np.arange(300_000 + i, dtype=np.float32) for i in range(3)}
    store.save(1, state)
    got = store.restore(1)
    for name, arr in got.items():
        assert arr.ctypes.data % 4096 == 0, name
        assert arr.flags.writeable and arr.flags.c_contiguous
        np.testing.assert_array_equal(arr, state[name])
    got["w0"][:] = -1
    del got["w1"]
    np.testing.assert_array_equal(got["w2"], state["w2"])
    np.testing.assert_array_equal(store.restore(1)["w0"], state["w0"])
    for huge in (True, False):  # numpy's allocation (THP-madvised) or a plain anonymous mapping
        arr = transfer.empty_aligned((5, 1 << 16), np.dtype(np.float64), huge_pages=huge)
        assert arr.shape == (5, 1 << 16) and arr.ctypes.data % 4096 == 0 and arr.flags.writeable
        arr[:] = 2.0
        assert float(arr.sum()) == 2.0 * arr.size
    # From 2 MiB up, huge-page destinations start on a huge-page boundary (so every whole 2 MiB of them
    # can be a huge page); the others stay page-aligned. Each is its own memory.
    arrays = [transfer.empty_aligned((3 << 18,), np.dtype(np.float32), huge_pages=huge) for huge in (True, True, False)]
    assert arrays[0].ctypes.data % transfer.HUGE_PAGE == 0 and arrays[1].ctypes.data % transfer.HUGE_PAGE == 0
    assert arrays[2].ctypes.data % 4096 == 0
    for i, arr in enumerate(arrays):
        arr[:] = i
    assert [float(a.sum()) for a in arrays] == [0.0, 3 << 18, 2 * (3 << 18)]



def test_huge_page_destinations_fall_back_where_madvise_has_no_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the platform has no MADV_HUGEPAGE (macOS, ...), large destinations are numpy's memory,
    page-aligned, as before."""
    monkeypatch.setattr(transfer, "_MADV_HUGEPAGE", None)
    arr = transfer.empty_aligned((3 << 18,), np.dtype(np.float32))
    assert arr.ctypes.data % 4096 == 0 and arr.flags.writeable and arr.nbytes == 3 << 20
    assert isinstance(arr.base, np.ndarray) and arr.base.base is None  # numpy's own allocation
    arr[:] = 1.5
    assert float(arr.sum()) == 1.5 * arr.size


def test_restore_plans_a_whole_table_like_its_entries(tmp_path: Path) -> None:
    """A full restore plans a 2.0 manifest from its columns (no entry per tensor); the result, and the
    error for a damaged small tensor, are the same as through the entries themselves."""
    store = CheckpointStore(tmp_path / "ckpt", workers=2, chunk_size=1 << 16)
    rng = np.random.default_rng(3)
    state = {f"small/{i:03d}": rng.random(int(rng.integers(1, 3000))).astype(np.float32) for i in range(200)}
    state |= {"big": rng.random((300, 200)), "scalar0d": np.array(7, np.int16), "empty": np.zeros((0, 5))}
    store.save(1, state)
    manifest = store.manifest(1)
    assert isinstance(manifest.tensors, format.TensorTable)
    from_table = store.restore(1)
    storage, prefix = store.storage, format.step_dir(1)
    from_entries = transfer.read_tensors(storage, prefix, dict(manifest.tensors.items()), checksum=manifest.checksum,
                                        workers=2)
    for name, arr in state.items():
        for got in (from_table[name], from_entries[name]):
            assert got.dtype == arr.dtype and got.shape == arr.shape, name
            np.testing.assert_array_equal(got, arr)
    victim = manifest.tensors["small/117"].chunks[0]
    shard = tmp_path / "ckpt" / prefix / victim.shard
    data = bytearray(shard.read_bytes())
    data[victim.offset + 1] ^= 0x40
    shard.write_bytes(bytes(data))
    for restore in (lambda: store.restore(1),
                    lambda: transfer.read_tensors(storage, prefix, dict(manifest.tensors.items()),
                                                  checksum=manifest.checksum, workers=2)):
        with pytest.raises(ChecksumError, match="small/117"):
            restore()


@pytest.mark.parametrize("seed", range(6))
def test_small_chunk_runs_follow_the_batching_rules(seed: int) -> None:
    """Runs cover every small chunk once, in file order, never cross a shard or a hole over BATCH_GAP,
    span at most BATCH_SPAN unless one chunk alone does, and start page-aligned in the arena."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    shard = rng.integers(0, 3, n)
    sizes = rng.integers(1, transfer.SMALL_CHUNK, n)
    offsets = np.zeros(n, np.int64)
    for s in range(3):  # lay each shard's chunks out in a shuffled order with random holes
        rows = rng.permutation(np.flatnonzero(shard == s))
        holes = rng.choice([0, 64, 4096, transfer.BATCH_GAP, transfer.BATCH_GAP + 1, 3 << 20], len(rows))
        ends = np.cumsum(sizes[rows] + holes)
        offsets[rows] = ends - sizes[rows]
    small = format.SmallChunks(
        names=[f"t{i}" for i in range(n)], index=np.arange(n), shard_names=["a", "b", "c"], shard=shard,
        offset=offsets, nbytes=sizes, checksum=np.zeros(n, np.uint64), dtypes=["uint8"], dtype=np.zeros(n, np.uint8),
        dims=sizes.astype("<u8"), dim_start=np.arange(n), dim_stop=np.arange(n) + 1,
    )
    runs = transfer._plan_runs(small)
    rows = np.concatenate([r.rows for r in runs])
    assert sorted(rows.tolist()) == list(range(n))
    at = 0
    for r in runs:
        assert r.at == at and r.at % 4096 == 0
        at += -(-r.length // 4096) * 4096
        assert set(shard[r.rows].tolist()) == {"abc".index(r.shard)}
        start, end = offsets[r.rows], offsets[r.rows] + sizes[r.rows]
        assert (np.diff(start) > 0).all() and r.start == start[0] and r.length == end[-1] - start[0]
        assert (start[1:] - end[:-1] <= transfer.BATCH_GAP).all()
        assert r.length <= transfer.BATCH_SPAN or len(r.rows) == 1
    # Greedy: the next chunk in the same shard would have broken a rule.
    for r, nxt in zip(runs, runs[1:], strict=False):
        if r.shard == nxt.shard:
            first = nxt.rows[0]
            gap = offsets[first] - (r.start + r.length)
            assert gap > transfer.BATCH_GAP or offsets[first] + sizes[first] - r.start > transfer.BATCH_SPAN


@pytest.mark.parametrize("seed", range(20))
def test_runs_keep_each_block_whole_and_check_every_byte_once(seed: int) -> None:
    """With block checksums, a run's units are whole blocks (those at least half filled by the chunks
    read) and the chunks outside them: every chunk is read once, every block lies inside one run, and
    a chunk inside a used block is checked by the block only."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    shard = np.sort(rng.integers(0, 2, n))
    sizes = rng.integers(1, 300_000, n)
    offsets = np.zeros(n, np.int64)
    for s in range(2):
        rows = np.flatnonzero(shard == s)
        holes = rng.choice([0, 100, 5000, transfer.BATCH_GAP + 1], len(rows))
        ends = np.cumsum(-(-(sizes[rows] + holes) // 4096) * 4096)
        offsets[rows] = ends - -(-(sizes[rows] + holes) // 4096) * 4096
    # Blocks over random groups of neighbours (a group may include chunks the restore does not read).
    blocks = []
    i = 0
    while i < n:
        j = min(n, i + int(rng.integers(1, 6)))
        if shard[i] == shard[j - 1] and rng.random() < 0.7:
            blocks.append((shard[i], offsets[i], offsets[j - 1] + sizes[j - 1] - offsets[i]))
        i = j
    records = np.array([(s, o, b, 1000 + k) for k, (s, o, b) in enumerate(blocks)], format.BLOCK_RECORD)
    read = rng.random(n) < 0.8  # the chunks this restore reads
    small = format.SmallChunks(
        names=[f"t{i}" for i in range(n)], index=np.arange(n), shard_names=["a", "b"], shard=shard,
        offset=offsets, nbytes=sizes, checksum=np.arange(n, dtype=np.uint64), dtypes=["uint8"],
        dtype=np.zeros(n, np.uint8), dims=sizes.astype("<u8"), dim_start=np.arange(n), dim_stop=np.arange(n) + 1,
    ).take(read)
    runs = transfer._plan_runs(small, blocks=records)
    rows = np.concatenate([r.rows for r in runs])
    assert sorted(rows.tolist()) == list(range(len(small)))
    checked_alone: set[int] = set()
    used: list[int] = []
    for r in runs:
        assert (r.unit_start >= 0).all() and (r.unit_end <= r.length).all() and (np.diff(r.unit_start) > 0).all()
        for start, end, total, row in zip(r.unit_start.tolist(), r.unit_end.tolist(), r.unit_sum.tolist(),
                                          r.unit_row.tolist(), strict=True):
            if row >= 0:
                assert (start, end, total) == (small.offset[row] - r.start, small.offset[row] + small.nbytes[row] - r.start,
                                               small.checksum[row])
                checked_alone.add(row)
            else:
                k = total - 1000
                used.append(k)
                assert (start + r.start, end - start) == (blocks[k][1], blocks[k][2])
                members = [x for x in r.rows.tolist() if start <= small.offset[x] - r.start < end]
                assert 2 * small.nbytes[members].sum() >= blocks[k][2]  # at least half of it is read
        starts = small.offset[r.rows] - r.start
        assert (starts >= 0).all() and (starts + small.nbytes[r.rows] <= r.length).all()
    # Each chunk is checked by exactly one unit: alone, or by the one used block it lies in.
    for row in range(len(small)):
        holders = [k for k in used if blocks[k][0] == small.shard[row]
                   and blocks[k][1] <= small.offset[row] < blocks[k][1] + blocks[k][2]]
        assert (row in checked_alone) != bool(holders), row
    assert len(used) == len(set(used))


class ConcurrencyProbe(FaultInjectingStorage):
    """Counts how many reads are in flight at once; each read waits a little so overlaps are certain."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.active = 0
        self.most = 0
        self._count = threading.Lock()
        self.in_page_cache = False  # what ``cached`` answers

    def cached(self, key: str) -> bool:
        return self.in_page_cache

    def read_into(self, key: str, offset: int, out: memoryview) -> None:
        with self._count:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.05)
            super().read_into(key, offset, out)
        finally:
            with self._count:
                self.active -= 1


def test_restores_read_with_read_workers_and_writes_use_workers(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "s")
    assert local.read_workers >= 4 and local.read_workers >= local.io_workers
    defaults = CheckpointStore(storage=local)
    assert (defaults.workers, defaults.read_workers) == (local.io_workers, local.read_workers)
    assert CheckpointStore(storage=local, workers=3).read_workers == 3  # an explicit workers= limits both
    assert CheckpointStore(storage=MemoryStorage("rw-default")).read_workers == MemoryStorage.io_workers
    for bad in (0, -1, 2.0, "4"):
        with pytest.raises(ValueError, match="read_workers must be an integer of at least 1"):
            CheckpointStore(storage=local, read_workers=bad)

    big = transfer.SMALL_CHUNK // 4 + 1000  # items: each tensor is read on its own, not in a run
    state = {f"t{i}": np.full(big, i, np.float32) for i in range(8)}
    probe = ConcurrencyProbe(LocalStorage(tmp_path / "p"))
    store = CheckpointStore(storage=probe, workers=2, read_workers=5)
    store.save(1, state)
    assert len(store.manifest(1).shards) == 2  # the layout follows workers=, not read_workers=
    probe.most = 0
    restored = store.restore(1)
    assert probe.most == 5
    for name, value in state.items():
        np.testing.assert_array_equal(restored[name], value)
    # Files in the page cache are read as memory copies: no more at once than there are CPUs.
    assert store.last_restore_stats.readers == 5
    probe.in_page_cache, probe.most = True, 0
    restored = store.restore(1)
    assert probe.most == store.last_restore_stats.readers == min(5, transfer.usable_cpus())
    for name, value in state.items():
        np.testing.assert_array_equal(restored[name], value)


def test_read_plan_caps_readers_and_keeps_short_pieces_only_when_every_file_is_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Cache:
        def __init__(self, cached: set[str], broken: bool = False, cold_piece: int = 0):
            self.in_cache, self.broken, self.asked = cached, broken, []
            if cold_piece:
                self.cold_read_piece_size = cold_piece

        def cached(self, key: str) -> bool:
            self.asked.append(key)
            if self.broken:
                raise StorageError(f"{key}: cannot tell")
            return key in self.in_cache

    class Direct(Cache):
        direct_reads = True

        def read_pieces_direct(self, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Any:
            raise AssertionError("not called by the plan")

    monkeypatch.setattr(transfer, "usable_cpus", lambda: 2)
    both = {"s/a.bin", "s/b.bin"}
    keys = ["s/a.bin", "s/b.bin"]
    plan = transfer.read_plan
    assert plan(Cache(both), keys, 4) == (2, 0, False)
    assert plan(Cache({"s/a.bin"}), keys, 4) == (4, 0, False)  # one file still on disk
    assert plan(Cache(both, broken=True), ["s/a.bin"], 4) == (4, 0, False)  # advice only: no error
    assert plan(MemoryStorage("readers"), ["s/a.bin"], 4) == (4, 0, False)  # a backend that cannot tell
    not_asked = Cache(both)
    assert plan(not_asked, ["s/a.bin"], 2) == (2, 0, False) and not not_asked.asked  # no more than CPUs anyway
    # A backend with longer pieces for cold reads, and reads past the page cache: used when some file is
    # on disk, whatever the readers.
    for workers in (1, 2, 4):
        assert plan(Cache({"s/a.bin"}, cold_piece=64 << 20), keys, workers) == (workers, 64 << 20, False)
        assert plan(Direct({"s/a.bin"}, cold_piece=64 << 20), keys, workers) == (workers, 64 << 20, True)
        assert plan(Direct(both, cold_piece=64 << 20), keys, workers) == (min(workers, 2), 0, False)
        assert plan(Direct(both, broken=True, cold_piece=64 << 20), keys, workers) == (workers, 0, False)
    off = Direct(set(), cold_piece=64 << 20)
    off.direct_reads = False
    assert plan(off, keys, 4) == (4, 64 << 20, False)
    assert transfer.readers(Direct({"s/a.bin"}, cold_piece=64 << 20), keys, 4) == 4
    assert LocalStorage.cold_read_piece_size == 64 << 20 == format.DEFAULT_CHUNK_SIZE


class PieceLog(LocalStorage):
    """Local storage that records, per call of ``read_pieces`` and ``read_pieces_direct``, the key and the
    sizes of the pieces it yields."""

    def __init__(self, root: Path, **options: Any):
        super().__init__(root, **options)
        self.calls: list[tuple[str, str, list[int]]] = []
        self._log = threading.Lock()

    def _logged(self, how: str, key: str, pieces: Any) -> Any:
        sizes: list[int] = []
        with self._log:
            self.calls.append((how, key, sizes))
        for piece in pieces:
            sizes.append(len(piece))
            yield piece

    def read_pieces(self, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Any:
        return self._logged("cached", key, super().read_pieces(key, offset, out, piece_size))

    def read_pieces_direct(self, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Any:
        return self._logged("direct", key, super().read_pieces_direct(key, offset, out, piece_size))

    def sizes(self, how: str) -> list[list[int]]:
        return sorted(sizes for h, _, sizes in self.calls if h == how)


def _evict(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _read_through_page_cache(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.read_bytes()


def _cold_store(tmp_path: Path, **options: Any) -> tuple[CheckpointStore, PieceLog, dict[str, np.ndarray], set[str]]:
    """A saved checkpoint of two large tensors — "big", 20 MiB in chunks of 8, 8 and 4 MiB, and "odd",
    whose one chunk ends 12 bytes past a multiple of 4096 — with its files evicted from the page cache."""
    storage = PieceLog(tmp_path / "s", **options)
    store = CheckpointStore(storage=storage, workers=2, read_workers=4, chunk_size=8 << 20)
    rng = np.random.default_rng(3)
    state = {"big": rng.random(5 << 20, dtype=np.float32), "odd": rng.random((4 << 20) // 4 + 1027, dtype=np.float32)}
    store.save(1, state)
    tensors = store.manifest(1).tensors
    assert [c.nbytes for c in tensors["big"].chunks] == [8 << 20, 8 << 20, 4 << 20]
    assert tensors["odd"].chunks[0].nbytes % 4096 == 12
    shards = {f"{step_dir(1)}/{c.shard}" for t in tensors.values() for c in t.chunks}
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise to evict files from the page cache")
    _evict(tmp_path / "s")
    if any(storage.cached(key) for key in shards):
        pytest.skip("this filesystem keeps the files in the page cache (posix_fadvise cannot evict them)")
    return store, storage, state, shards


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise")
def test_bench_fill_cache_and_drop_cache_put_files_in_and_out_of_the_page_cache(tmp_path: Path) -> None:
    """What the benchmarks' warm and cold cases rest on, now that a cold restore no longer fills the cache."""
    from ckptstore.bench import drop_cache, fill_cache

    storage = LocalStorage(tmp_path / "s")
    for key in ("a.bin", "d/b.bin"):
        storage.put(key, np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8))
    drop_cache([tmp_path / "s"], "fadvise")
    if storage.cached("a.bin") or storage.cached("d/b.bin"):
        pytest.skip("this filesystem keeps the files in the page cache (posix_fadvise cannot evict them)")
    fill_cache([tmp_path / "s" / "a.bin"])  # a file
    assert storage.cached("a.bin") and not storage.cached("d/b.bin")
    fill_cache([tmp_path / "s"])  # a directory, walked; a.bin, already cached, is evicted and read again
    assert storage.cached("a.bin") and storage.cached("d/b.bin")


def _same(restored: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
    assert restored.keys() == state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(restored[name], value)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this OS")
def test_cold_restores_read_large_chunks_past_the_page_cache_and_still_check_every_byte(tmp_path: Path) -> None:
    """From files on disk, each large chunk is one direct read (no page cache filled, nothing copied out
    of it), hashed once it has landed; the 12 bytes past the odd chunk's last whole page come through the
    page cache. From files in the page cache, 512 KiB pieces hashed as they land. A flipped bit on disk
    fails the direct read's check."""
    store, storage, state, shards = _cold_store(tmp_path)
    odd = store.manifest(1).tensors["odd"].chunks[0].nbytes

    _same(store.restore(1), state)
    assert storage.sizes("direct") == sorted([[4 << 20], [8 << 20], [8 << 20], [odd - 12, 12]])
    assert storage.sizes("cached") == [[12]]  # only the odd chunk's tail
    assert not any(storage.cached(key) for key in shards)  # the restore left the page cache alone
    stats = store.last_restore_stats
    assert stats.readers == 4 and stats.direct and "4 reader(s), direct I/O" in stats.describe()

    _read_through_page_cache(tmp_path / "s")
    assert all(storage.cached(key) for key in shards)
    storage.calls.clear()
    _same(store.restore(1), state)
    assert storage.sizes("direct") == []
    reads = storage.sizes("cached")
    assert len(reads) == 4 and all(max(sizes) <= 512 << 10 for sizes in reads)
    assert sum(map(len, reads)) >= 48  # 24 MiB in pieces of at most 512 KiB
    assert store.last_restore_stats.readers == min(4, transfer.usable_cpus())
    assert not store.last_restore_stats.direct and "direct" not in store.last_restore_stats.describe()

    chunk = store.manifest(1).tensors["big"].chunks[1]
    path = tmp_path / "s" / step_dir(1) / chunk.shard
    with open(path, "r+b") as f:
        f.seek(chunk.offset + 12345)
        byte = f.read(1)
        f.seek(chunk.offset + 12345)
        f.write(bytes([byte[0] ^ 0x10]))
        f.flush()
        os.fsync(f.fileno())
    _evict(tmp_path / "s")
    storage.calls.clear()
    with pytest.raises(ChecksumError, match=r"tensor big: bytes \[8388608, 16777216\)"):
        store.restore(1)
    assert [8 << 20] in storage.sizes("direct")


def test_cold_restores_without_direct_reads_use_the_page_cache_in_whole_chunks(tmp_path: Path) -> None:
    """``direct_reads=False``: files on disk are read through the page cache, still a large chunk per
    call (a disk's cold reads run faster in longer calls), and stay cached."""
    with pytest.raises(ValueError, match="direct_reads must be True or False"):
        LocalStorage(tmp_path / "bad", direct_reads="no")  # type: ignore[arg-type]
    store, storage, state, shards = _cold_store(tmp_path, direct_reads=False)
    odd = store.manifest(1).tensors["odd"].chunks[0].nbytes
    _same(store.restore(1), state)
    assert storage.sizes("direct") == [] and not store.last_restore_stats.direct
    assert storage.sizes("cached") == sorted([[4 << 20], [8 << 20], [8 << 20], [odd]])
    assert all(storage.cached(key) for key in shards)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this OS")
@pytest.mark.parametrize("refused_at", ["open", "read"])
def test_direct_reads_fall_back_to_the_page_cache_where_the_filesystem_refuses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    """A filesystem may refuse O_DIRECT when the file is opened (EINVAL; older tmpfs) or on the first
    read. No filesystem here does (this kernel's tmpfs accepts it), so the refusal is the OS's answer
    injected at ``os.open`` / ``os.preadv``; the fallback reads are real."""
    from ckptstore.storage import local

    store, storage, state, shards = _cold_store(tmp_path)
    real_open, real_preadv = os.open, os.preadv
    refusals = []

    def refusing_open(path: Any, flags: int, *args: Any) -> int:
        if refused_at == "open" and flags & os.O_DIRECT:
            refusals.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def refusing_preadv(fd: int, buffers: Any, offset: int) -> int:
        if refused_at == "read" and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refusals.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(local.os, "open", refusing_open)
    monkeypatch.setattr(local.os, "preadv", refusing_preadv)
    _same(store.restore(1), state)
    assert refusals and storage.direct_reads is False  # off for this storage from now on
    assert len(storage.sizes("direct")) == 4  # the plan asked for direct reads of the 4 chunks...
    odd = store.manifest(1).tensors["odd"].chunks[0].nbytes
    assert storage.sizes("cached") == sorted([[4 << 20], [8 << 20], [8 << 20], [odd]])  # ...the cache served them
    assert all(storage.cached(key) for key in shards)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this OS")
def test_read_pieces_direct_returns_the_bytes_of_any_range_into_any_buffer(tmp_path: Path) -> None:
    """Aligned ranges into aligned memory go past the page cache (the tail through it); anything
    misaligned is ``read_pieces``. Every case returns exactly the stored bytes."""
    storage = LocalStorage(tmp_path / "s")
    data = np.random.default_rng(5).integers(0, 256, (3 << 20) + 777, dtype=np.uint8).tobytes()
    storage.put("obj", data)
    _evict(tmp_path / "s")
    arena = transfer.empty_aligned((len(data) + 8192,), np.dtype(np.uint8))
    for offset, nbytes, at, piece in [
        (0, len(data), 0, 0), (4096, 1 << 20, 0, 64 << 10), (4096, (1 << 20) + 5, 4096, 0),
        (1, 1 << 20, 0, 0), (8192, 1 << 20, 16, 0), (0, 4095, 0, 0), (len(data) - 777, 777, 0, 0),
    ]:
        out = memoryview(arena)[at : at + nbytes]
        pieces = [bytes(p) for p in storage.read_pieces_direct("obj", offset, out, piece)]
        assert b"".join(pieces) == data[offset : offset + nbytes] == bytes(out), (offset, nbytes, at)
        if piece:
            assert max(map(len, pieces)) <= piece
    with pytest.raises(StorageError, match="object ends at"):
        list(storage.read_pieces_direct("obj", 0, memoryview(transfer.empty_aligned((len(data) + 4096,), np.dtype(np.uint8)))))


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7])
def test_raw_baseline_reads_each_file_in_ranges_when_workers_outnumber_files(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckptstore.bench import RawBaseline

    monkeypatch.setattr(LocalStorage, "writeback_window", 64 << 10)  # the writeback writer starts it often

    rng = np.random.default_rng(workers)
    model = {"a": rng.random(300_001, dtype=np.float32), "b": rng.random(123_457, dtype=np.float32)}
    plan = plan_layout([(n, a.nbytes) for n, a in model.items()], target_shard_size=1_000_000)
    assert len(plan.shards) == 2
    expected = [b"".join(model[pc.name].tobytes()[pc.start : pc.start + pc.nbytes] for pc in shard) for shard in plan.shards]
    for writeback in (False, True):
        raw = RawBaseline(str(tmp_path / f"raw-{writeback}"), writeback=writeback)
        raw.save(model, plan, 2)
        got = raw.restore(workers)
        assert [bytes(g) for g in got] == expected


class NoReadPieces:
    """A plugin-style backend that does not derive from StorageBase and has no ``read_pieces``."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.read_calls = 0

    def read_into(self, key: str, offset: int, out: memoryview) -> None:
        self.read_calls += 1
        self.inner.read_into(key, offset, out)

    def __getattr__(self, name: str) -> Any:
        if name == "read_pieces":
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_restores_fall_back_to_read_into_pieces_without_read_pieces(tmp_path: Path) -> None:
    backend = NoReadPieces(LocalStorage(tmp_path / "p"))
    assert not hasattr(backend, "read_pieces") and backend.read_piece_size == 512 << 10
    store = CheckpointStore(storage=backend, workers=2)
    state = {"big": np.arange(3 << 20, dtype=np.float32), "small": np.arange(50, dtype=np.int64)}
    store.save(1, state)
    restored = store.restore(1)
    for name, value in state.items():
        np.testing.assert_array_equal(restored[name], value)
    assert backend.read_calls >= 24  # 12 MiB in 512 KiB pieces, plus the small run
    chunk = store.manifest(1).tensors["big"].chunks[0]
    path = tmp_path / "p" / step_dir(1) / chunk.shard
    data = bytearray(path.read_bytes())
    data[chunk.offset + 5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="tensor big"):
        store.restore(1)


# ---------------------------------------------------------------------------------------------
# Restoring into existing arrays
# ---------------------------------------------------------------------------------------------


def _zeros_like_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: _zeros_like_state(v) if isinstance(v, dict) else np.zeros_like(v) if isinstance(v, np.ndarray) else v
            for k, v in state.items()}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda into: into["big"].setflags(write=False), "big: read-only"),
        (lambda into: into.update(big=np.zeros((1024, 512), np.float32).T), "big: not C-contiguous"),
        (lambda into: into.update(big=np.zeros((512, 1024), ">f4")), "big: >f4 [512, 1024], stored <f4 [512, 1024]"),
        (lambda into: into["small"].update(b3=[0] * 40), "small/b3: a list, not a numpy array"),
    ],
    ids=["read-only", "transposed", "big-endian", "not-numpy"],
)
def test_restore_into_refuses_arrays_it_cannot_write_before_reading(tmp_path: Path, change: Any, problem: str) -> None:
    store = CheckpointStore(tmp_path / "s", workers=2)
    state = _state(1)
    store.save(1, state)
    into = _zeros_like_state(state)
    change(into)
    if isinstance(into["small"]["b3"], list):  # no shape/dtype: the template itself is refused
        with pytest.raises(TypeError, match="small/b3"):
            store.restore(into=into)
        return
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        store.restore(into=into)
    assert not any(v.any() for v in into["small"].values())  # nothing was read


def test_restore_into_refuses_destinations_that_share_memory(tmp_path: Path) -> None:
    """Two tensors read into overlapping memory would silently overwrite each other: refused, naming
    both, before anything is read. Views of one buffer that do not overlap are fine."""
    store = CheckpointStore(tmp_path / "s", workers=2)
    state = {"a": np.arange(1000, dtype=np.float32), "b": np.arange(1000, 2000, dtype=np.float32),
             "c": np.arange(5, dtype=np.int64)}
    store.save(1, state)
    buffer = np.zeros(3000, np.float32)
    overlapping = {"a": buffer[:1000], "b": buffer[999:1999], "c": np.zeros(5, np.int64)}
    with pytest.raises(ValueError, match="b: shares memory with a"):
        store.restore(into=overlapping)
    assert not buffer.any()  # nothing was read
    same = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match="shares memory with"):
        store.restore(into={"a": same, "b": same, "c": np.zeros(5, np.int64)})
    apart = {"a": buffer[:1000], "b": buffer[1000:2000], "c": np.zeros(5, np.int64)}
    restored = store.restore(into=apart)
    assert restored["a"] is apart["a"] and (buffer[:2000] == np.arange(2000)).all()


def test_restore_into_tied_weights_reads_the_shared_tensor(tmp_path: Path) -> None:
    """One tensor under two names (a torch module's tied embedding and output projection): saved twice
    with the same bytes, so restoring both into the one array is fine — unless the checkpoint holds
    different values under the two names, which would leave whichever was read last."""
    store = CheckpointStore(tmp_path / "s", workers=2)
    shared = np.arange(4096, dtype=np.float32)
    store.save(1, {"embed": shared, "head": shared, "bias": np.ones(3, np.float32)})
    store.save(2, {"embed": shared, "head": shared + 1, "bias": np.ones(3, np.float32)})
    tied = np.zeros(4096, np.float32)
    restored = store.restore(1, into={"embed": tied, "head": tied, "bias": np.zeros(3, np.float32)})
    assert restored["embed"] is tied and restored["head"] is tied and (tied == shared).all()
    tied[:] = 0
    with pytest.raises(ValueError, match="shares memory with embed"):
        store.restore(2, into={"embed": tied, "head": tied, "bias": np.zeros(3, np.float32)})
    assert not tied.any()


class ShapedThing:
    """A template entry that has a shape and dtype but no memory numpy can write (a TensorSpec, a torch
    tensor that needs grad)."""

    def __init__(self, like: np.ndarray):
        self.shape, self.dtype = like.shape, like.dtype


def test_restore_into_names_every_destination_it_cannot_write_and_the_way_out(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s", workers=2)
    state = _state(1)
    store.save(1, state)
    into = _zeros_like_state(state)
    into["big"] = ShapedThing(state["big"])
    into["small"]["b0"].setflags(write=False)
    with pytest.raises(ValueError) as err:
        store.restore(into=into)
    text = str(err.value)
    assert "big: a ShapedThing, not a numpy array" in text and "tensor.numpy()" in text
    assert "small/b0: read-only" in text and str(tmp_path / "s") in text
    with pytest.raises(ValueError, match="exclude each other"):
        store.restore(into=_zeros_like_state(state), mmap=True)


def test_restore_with_like_as_the_template_and_into_as_some_destinations(tmp_path: Path) -> None:
    """With ``like`` the template, ``into`` only supplies destinations: here for two of the tensors;
    the rest come back in fresh arrays. An ``into`` array that differs from its tensor is refused."""
    store = CheckpointStore(tmp_path / "s", workers=2)
    state = _state(6)
    store.save(1, state)
    dests = {"big": np.zeros_like(state["big"]), "small": {"b2": np.zeros_like(state["small"]["b2"])}}
    restored = store.restore(like=state, into=dests)
    assert restored["big"] is dests["big"] and restored["small/b2"] is dests["small"]["b2"]
    _assert_same(restored, state)
    assert store.last_restore_stats.mode == "into"
    with pytest.raises(ValueError, match=r"small/b2: <i8 \[3\], stored <i8 \[39\]"):
        store.restore(like=state, into={"small": {"b2": np.zeros(3, np.int64)}})


def test_restore_into_a_mismatched_state_reads_nothing(tmp_path: Path, caplog: Any) -> None:
    store = CheckpointStore(tmp_path / "s", workers=2)
    state = _state(2)
    store.save(1, state)
    into = _zeros_like_state(state)
    into["small"]["b0"] = np.zeros(99, np.int64)  # stored: 37
    with pytest.raises(CheckpointMismatch, match="small/b0"):
        store.restore(into=into)
    assert not into["big"].any()
    with caplog.at_level(logging.WARNING, "ckptstore"):
        restored = store.restore(into=into, strict=False)  # the rest is restored; b0 left as it was
    assert "small/b0" not in restored and not into["small"]["b0"].any()
    np.testing.assert_array_equal(into["big"], state["big"])
    np.testing.assert_array_equal(into["small"]["b1"], state["small"]["b1"])


@pytest.mark.parametrize("which", ["big", "small/b4"])
def test_restore_into_a_corrupt_checkpoint_raises_and_keeps_a_bad_small_tensor_out(tmp_path: Path, which: str) -> None:
    """A corrupt chunk raises ChecksumError naming the tensor. A small tensor is copied into place only
    once its bytes check out, so its destination keeps what it held; a large one is read into place
    piece by piece (documented: its destination may hold part of the damaged bytes)."""
    store = CheckpointStore(tmp_path / "s", workers=2)
    state = _state(4)
    store.save(1, state)
    chunk = store.manifest(1).tensors[which].chunks[0]
    path = tmp_path / "s" / step_dir(1) / chunk.shard
    data = bytearray(path.read_bytes())
    data[chunk.offset + chunk.nbytes - 1] ^= 0x40
    path.write_bytes(bytes(data))
    into = _zeros_like_state(state)
    with pytest.raises(ChecksumError, match=f"tensor {which}"):
        store.restore(into=into)
    if which.startswith("small/"):
        assert not into["small"][which.split("/")[1]].any()
    restored = CheckpointStore(tmp_path / "s").restore(1, verify=False, into=_zeros_like_state(state))
    assert restored[which].tobytes() != (state["big"] if which == "big" else state["small"]["b4"]).tobytes()


class NoReadThrough(NoReadPieces):
    def __getattr__(self, name: str) -> Any:
        if name == "read_through":
            raise AttributeError(name)
        return super().__getattr__(name)


def test_restore_into_falls_back_to_read_into_without_read_through(tmp_path: Path) -> None:
    backend = NoReadThrough(LocalStorage(tmp_path / "p"))
    assert not hasattr(backend, "read_through")
    store = CheckpointStore(storage=backend, workers=2)
    state = {"big": np.arange(3 << 20, dtype=np.float32), "small": np.arange(50, dtype=np.int64)}
    store.save(1, state)
    into = {"big": transfer.empty_aligned((state["big"].size + 1,), np.dtype(np.float32))[1:], "small": np.zeros(50, np.int64)}
    assert transfer._misaligned(into["big"], store.manifest(1).tensors["big"].chunks)
    store.restore(1, into=into)
    for name, value in state.items():
        np.testing.assert_array_equal(into[name], value)
    assert backend.read_calls >= 12  # 12 MiB through a 1 MiB scratch buffer, plus the small run


def test_read_through_reuses_one_buffer_and_reports_a_short_object(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "r")
    payload = bytes(range(256)) * 40  # 10240 bytes
    storage.put("obj", payload)
    buf = memoryview(bytearray(4096))
    seen = []
    for piece in storage.read_through("obj", 100, 10000, buf):
        assert piece.obj is buf.obj  # the caller's buffer, refilled
        seen.append(bytes(piece))
    assert [len(p) for p in seen] == [4096, 4096, 1808] and b"".join(seen) == payload[100:10100]
    with pytest.raises(StorageError, match="object ends at 10240 bytes, 1000 more expected"):
        list(storage.read_through("obj", 1240, 10000, buf))


def test_local_read_pieces_are_cut_where_the_destinations_pages_start(tmp_path: Path) -> None:
    """A piece size of whole pages is counted from the destination's address, so each piece fills
    whole pieces of memory (a fresh huge page is zeroed and filled at once); other sizes from its start."""
    storage = LocalStorage(tmp_path / "r")
    page = mmap.PAGESIZE
    payload = np.random.default_rng(5).integers(0, 256, 40 * page, dtype=np.uint8).tobytes()
    storage.put("obj", payload)
    buffer = transfer.empty_aligned((64 * page,), np.dtype(np.uint8))
    step = 4 * page
    base = -(-buffer.ctypes.data // step) * step  # the first multiple of 4 pages in the buffer
    start = base + 3 * page - buffer.ctypes.data  # 3 pages past it
    out = memoryview(buffer)[start : start + 20 * page + 100]
    ends = []
    for piece in storage.read_pieces("obj", 7, out, step):
        ends.append(np.frombuffer(piece, np.uint8).ctypes.data + len(piece) - base)
    assert ends == [4 * page, 8 * page, 12 * page, 16 * page, 20 * page, 23 * page + 100]
    assert bytes(out) == payload[7 : 7 + len(out)]
    odd = [len(p) for p in storage.read_pieces("obj", 0, memoryview(buffer)[100 : 100 + 3000], 1000)]
    assert odd == [1000, 1000, 1000]


def test_restore_into_reads_aligned_arrays_directly_and_misaligned_ones_through_scratch(tmp_path: Path) -> None:
    """The kernel copies into memory not 32-byte congruent with the file offset ~3x slower, and numpy's
    large arrays start 16 bytes into a page: those go through a scratch buffer, page-aligned ones
    (ckptstore's own, torch's 64-byte-aligned) are read straight into. Both land the same bytes."""
    store = CheckpointStore(tmp_path / "s", workers=2, chunk_size=1 << 20)
    state = {"w": np.random.default_rng(3).random(3 << 20, dtype=np.float32)}  # 12 MiB in 12 chunks
    store.save(1, state)
    chunks = store.manifest(1).tensors["w"].chunks
    assert all(c.offset % transfer.COPY_ALIGN == 0 for c in chunks)
    numpy_own = np.zeros_like(state["w"])
    aligned = transfer.empty_aligned(state["w"].shape, state["w"].dtype)
    shifted = transfer.empty_aligned((state["w"].size + 8,), state["w"].dtype)[8:]  # 32 bytes in: congruent
    off_by_4 = transfer.empty_aligned((state["w"].size + 1,), state["w"].dtype)[1:]
    assert transfer._misaligned(numpy_own, chunks) == (numpy_own.ctypes.data % 32 != 0)
    assert not transfer._misaligned(aligned, chunks) and not transfer._misaligned(shifted, chunks)
    assert transfer._misaligned(off_by_4, chunks)
    for dest in (numpy_own, aligned, shifted, off_by_4):
        store.restore(1, into={"w": dest})
        np.testing.assert_array_equal(dest, state["w"])


@pytest.mark.parametrize("exact", [True, False])
def test_rss_sampler_sees_a_peak_that_is_gone_by_the_end(monkeypatch: pytest.MonkeyPatch, exact: bool) -> None:
    """The memory figures of the benchmarks: the kernel's high-water mark where it can be reset (no
    sampling thread taking the GIL), else a sampling thread; both see memory freed before the end."""
    from ckptstore import bench

    if not exact:
        monkeypatch.setattr(bench, "_reset_peak_rss", lambda: False)
    elif not bench._reset_peak_rss():
        pytest.skip("no resettable RSS high-water mark here")
    with bench.RssSampler(0.002) as rss:
        block = np.ones(200 << 20, np.uint8)
        time.sleep(0.05)  # the sampling thread's chance
        del block
    assert rss.exact is exact and rss._thread is None
    assert 190 << 20 <= rss.peak_extra < 400 << 20  # give or take what RSS and the mark count apart
    with bench.RssSampler(0.002) as rss:  # the mark was reset: the earlier peak does not count
        time.sleep(0.01)
    assert rss.peak_extra < 50 << 20
