"""Fault injection: every storage call of save, restore, prune and gc fails in turn; full and read-only disks;
two processes saving into one model_dir.

The pattern of every trial: count the storage calls of a clean run, then for each call index (and each
kind of fault: an exception, a short write, a call that hangs for ``HANG`` seconds and then times out) run
the operation again on a fresh copy of the same model_dir with exactly that call failing — on local disk,
and for restore, prune and gc (save: its commit path) on moto's S3 as well. The operation must complete or
raise a ``CkptStoreError`` that says what failed; the store must stay consistent (a fresh store's LATEST
and every listed checkpoint restore bit-exactly, no earlier checkpoint is lost); and once the fault is
gone, a retry must succeed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptstore import CheckpointStore, commit, transfer
from ckptstore.errors import CkptStoreError, CommitError, FormatError, StorageError
from ckptstore.format import LATEST_KEY, decode_latest, step_dir
from ckptstore.policies import KeepMax
from ckptstore.storage import local as local_module
from ckptstore.storage.interface import Buffer
from ckptstore.storage.local import LocalStorage
from ckptstore.testing import FaultInjectingStorage

TRIALS = Path(__file__).resolve().parent / "trials"
sys.path.insert(0, str(TRIALS))

from concurrent_writer import state_for as writer_state  # noqa: E402


def state(step: int) -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return {
        "dense/kernel": rng.standard_normal((64, 32)).astype(np.float32),
        "dense/bias": rng.standard_normal(32),
        "embedding": rng.integers(0, 1 << 40, size=(1200, 128)),  # 1.2 MB: the large-chunk read path
        "global_step": step,
    }


def assert_exact(restored: dict[str, Any], expected: dict[str, Any], where: str = "") -> None:
    assert set(restored) == set(expected), where
    for name, want in expected.items():
        got = restored[name]
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.shape == want.shape, f"{where} {name}"
            assert got.tobytes() == want.tobytes(), f"{where}: {name} holds wrong data"
        else:
            assert type(got) is type(want) and got == want, f"{where} {name}"


def _open_store(root: Path | str | Any, storage_options: dict[str, Any] | None = None) -> CheckpointStore:
    """A fresh store on a path or URL, or on a storage object (the S3 trials reuse their connection)."""
    if isinstance(root, (str, Path)):
        return CheckpointStore(root, storage_options=storage_options)
    return CheckpointStore(storage=root)


def check_consistent(
    root: Path | str | Any, must_have: Iterable[int], where: str,
    state_of: Callable[[int], dict[str, Any]] = state, storage_options: dict[str, Any] | None = None,
) -> int:
    """A fresh store on ``root``: LATEST and every listed checkpoint restore exactly; returns LATEST's step."""
    with _open_store(root, storage_options) as store:
        steps = [info.step for info in store.list()]
        missing = set(must_have) - set(steps)
        assert not missing, f"{where}: committed checkpoints {sorted(missing)} are gone"
        latest = store.latest()
        assert latest is not None and latest.step == max(steps), f"{where}: latest {latest}, listed {steps}"
        assert_exact(store.restore(), state_of(latest.step), f"{where}: restore()")
        for step in steps:
            assert_exact(store.restore(step=step), state_of(step), f"{where}: restore(step={step})")
        return latest.step


def leftovers(root: Path | str | Any, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Files that are neither LATEST, locks, manifests nor shards some manifest names."""
    with _open_store(root, storage_options) as store:
        referenced = {LATEST_KEY}
        for step in commit.committed_steps(store.storage):
            m = commit.read_manifest(store.storage, step)
            referenced.add(f"{step_dir(step)}/manifest.msgpack")
            referenced |= {f"{step_dir(step)}/{s}" for s in m.shards}
        return sorted(
            o.key for o in store.storage.list() if o.key not in referenced and not o.key.startswith(".locks/")
        )


class Faults(FaultInjectingStorage):
    """``FaultInjectingStorage`` plus one more kind of fault: a read that returns damaged bytes."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.corrupt_reads = False

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        if self.corrupt_reads and self._hit("get", key):
            data = bytearray(self.inner.get(key, start, end))
            if data:
                data[len(data) // 2] ^= 0x10
            return bytes(data)
        return super().get(key, start, end)

    def read_into(self, key: str, offset: int, out: memoryview) -> None:
        if self.corrupt_reads and self._hit("read_into", key):
            self.inner.read_into(key, offset, out)
            view = out.cast("B")
            if len(view):
                view[len(view) // 2] ^= 0x10
            return
        super().read_into(key, offset, out)

    def _hit(self, method: str, key: str) -> bool:
        with self._lock:
            index = len(self.calls)
            self.calls.append((method, key))
        return self._predicate is not None and self._predicate(method, key, index)


def clean_calls(root: Path, run: Callable[[CheckpointStore], Any], **store_options: Any) -> list[tuple[str, str]]:
    rec = Faults(LocalStorage(root))
    run(CheckpointStore(storage=rec, **store_options))
    return list(rec.calls)


@dataclass
class Tally:
    completed: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.completed + self.failed} trials: {self.completed} completed, {self.failed} failed clearly"


HANG = 0.2  # seconds an injected hang blocks before it "times out" (keeps ~100 hang trials short)


def fail_one_call(faults: Faults, index: int, kind: str) -> None:
    """Arm ``faults`` so that call ``index`` fails with ``kind``: error, short (write), hang or corrupt (read)."""
    if kind == "corrupt":
        faults.corrupt_reads = True
        faults.fail_on(lambda m, k, i: i == index and m in ("get", "read_into") and k != LATEST_KEY
                       and not k.endswith("manifest.msgpack"))
    elif kind == "hang":
        faults.fail_on(lambda m, k, i: i == index, hang=HANG)
    else:
        faults.fail_on(lambda m, k, i: i == index, short_write=kind == "short")


def kinds_of(mode: str, method: str) -> tuple[str, ...]:
    """The faults a trial injects at one call: ``hang`` mode hangs every call, ``fault`` mode raises
    (and also short-writes a put)."""
    if mode == "hang":
        return ("hang",)
    return ("error", "short") if method == "put" else ("error",)


def run_with_fault(
    template: Path, tmp: Path, index: int, kind: str, run: Callable[[CheckpointStore], Any], **store_options: Any
) -> tuple[Path, Faults, CheckpointStore, BaseException | None]:
    root = tmp / f"trial-{uuid.uuid4().hex[:8]}"
    shutil.copytree(template, root)
    faults = Faults(LocalStorage(root))
    store = CheckpointStore(storage=faults, **store_options)
    fail_one_call(faults, index, kind)
    error: BaseException | None = None
    started = time.monotonic()
    try:
        run(store)
    except CkptStoreError as e:
        error = e
    if kind == "hang":
        assert_hang_bounded(time.monotonic() - started, error, f"hang at call {index}")
    faults.heal()
    faults.corrupt_reads = False
    return root, faults, store, error


def assert_hang_bounded(elapsed: float, error: BaseException | None, where: str) -> None:
    """A hanging call holds the operation up for the hang and no longer; a failure says it timed out."""
    assert elapsed < HANG + 10, f"{where}: the operation took {elapsed:.1f} s"
    if error is not None:
        text = f"{error} {error.__cause__ or ''} {error.__context__ or ''}"
        assert "timed out" in text, f"{where}: a hang failed with {error!r}, which does not say it timed out"


def assert_clear(error: BaseException, faults: Faults, where: str) -> None:
    """The error must come from the injected fault (or say why the store refused) and name a location."""
    text = f"{error} {error.__cause__ or ''} {error.__context__ or ''}"
    assert faults.url in text or "file://" in text, f"{where}: error does not say where: {error!r}"


@pytest.fixture(scope="module")
def saved_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Steps 0 and 1 committed (so a save with keep_max=2 also prunes)."""
    root = tmp_path_factory.mktemp("template") / "model_dir"
    with CheckpointStore(root) as store:
        store.save(0, state(0))
        store.save(1, state(1))
    return root


# ---------------------------------------------------------------------------------------------
# save / restore / prune / gc, one failing call at a time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fault", "hang"])
def test_a_fault_at_every_storage_call_of_save(saved_template: Path, tmp_path: Path, mode: str) -> None:
    options = dict(workers=2, keep_max=2, gc_grace_seconds=0)

    def save(store: CheckpointStore) -> None:
        store.save(2, state(2))

    base = tmp_path / "clean"
    shutil.copytree(saved_template, base)
    calls = clean_calls(base, save, **options)
    assert any(m == "put" for m, _ in calls) and any(m == "delete" for m, _ in calls)  # commit and prune
    tally = Tally()
    for index, (method, _key) in enumerate(calls):
        for kind in kinds_of(mode, method):
            where = f"fault {kind} at call {index} ({method} {_key})"
            root, faults, store, error = run_with_fault(saved_template, tmp_path, index, kind, save, **options)
            if error is None:
                tally.completed += 1
            else:
                tally.failed += 1
                assert_clear(error, faults, where)
            latest = check_consistent(root, must_have=[1], where=where)
            if error is None:
                assert latest == 2, where
            if error is None:  # completed (a fault in housekeeping is logged): the store carries on
                store.save(3, state(3))
                assert check_consistent(root, must_have=[2, 3], where=f"{where}, next save") == 3
                shutil.rmtree(root)
                continue
            # Retry with the same store, fault gone.
            try:
                store.save(2, state(2))
            except CommitError as e:
                assert "already committed" in str(e), where
                if kind == "short" and _key.endswith("manifest.msgpack"):
                    # FaultInjectingStorage's short write leaves half a manifest at the final key — a torn
                    # object no backend following the contract (rule 3) can produce. Readers skip it with
                    # a warning; the step needs overwrite=True to be saved again.
                    tally.notes.append(f"{where}: torn manifest, re-saved with overwrite=True")
                    store.save(2, state(2), overwrite=True)
                else:
                    # The failed call had committed step 2 before its fault (LATEST or retention failed
                    # after); the retry is told so, and the checkpoint is complete.
                    tally.notes.append(f"{where}: retry said already committed")
            assert check_consistent(root, must_have=[1, 2], where=f"{where}, after retry") == 2
            shutil.rmtree(root)
    print(f"save, {mode}: {tally}", *tally.notes, sep="\n  ")
    # Every fault up to and including the LATEST write fails the save; the housekeeping after it may not.
    assert tally.failed >= calls.index(("put", LATEST_KEY)) + 1


@pytest.mark.parametrize("mode", ["fault", "hang"])
def test_a_fault_or_a_damaged_read_at_every_storage_call_of_restore(
    saved_template: Path, tmp_path: Path, mode: str
) -> None:
    options = dict(workers=1)  # one call order every time, so call i is the same call in every trial

    def restore(store: CheckpointStore) -> None:
        assert_exact(store.restore(), state(1), "restore() under a fault")  # never wrong data

    calls = clean_calls(saved_template, restore, **options)
    assert any(m == "read_into" for m, _ in calls)
    tally = Tally()
    for index, (method, key) in enumerate(calls):
        kinds = list(kinds_of(mode, method))
        if mode == "fault" and method in ("get", "read_into") and key != LATEST_KEY and not key.endswith("manifest.msgpack"):
            kinds.append("corrupt")
        for kind in kinds:
            where = f"fault {kind} at call {index} ({method} {key})"
            root, faults, store, error = run_with_fault(saved_template, tmp_path, index, kind, restore, **options)
            if error is None:
                tally.completed += 1
            else:
                tally.failed += 1
                assert_clear(error, faults, where)
                if kind == "corrupt":
                    assert isinstance(error, FormatError), f"{where}: {error!r}"
            assert_exact(store.restore(), state(1), f"{where}, retry")
            shutil.rmtree(root)
    print(f"restore, {mode}: {tally}")
    assert tally.failed > 0


def test_a_fault_reaches_an_in_place_restore_through_its_scratch_buffer(tmp_path: Path) -> None:
    """Arrays read into in place that are misaligned go through a scratch buffer (``read_through``):
    the fault-injecting wrapper's own reads, so a fault there is raised, and a retry restores."""
    storage = FaultInjectingStorage(LocalStorage(tmp_path / "m"))
    store = CheckpointStore(storage=storage, workers=1)
    saved = {"w": np.arange(3 << 20, dtype=np.float32)}  # 12 MiB: a large tensor
    store.save(1, saved)
    into = {"w": transfer.empty_aligned(((3 << 20) + 1,), np.dtype(np.float32))[1:]}  # 4 bytes off: misaligned
    assert transfer._misaligned(into["w"], store.manifest(1).tensors["w"].chunks)
    storage.fail_on(lambda method, key, index: method == "read_into" and "/shard-" in key)
    with pytest.raises(StorageError, match="injected fault in read_into"):
        store.restore(1, into=into)
    storage.heal()
    store.restore(1, into=into)
    np.testing.assert_array_equal(into["w"], saved["w"])


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("six") / "model_dir"
    with CheckpointStore(root, workers=1) as store:
        for step in range(1, 7):
            store.save(step, state(step))
    # Garbage for gc: an uncommitted attempt (a copy of a committed one) and a temp file.
    src = next((root / step_dir(6)).glob("attempt-*"))
    shutil.copytree(src, root / step_dir(7) / "attempt-0000000000000000")
    (root / step_dir(3) / ".tmp-manifest.msgpack.0123456789ab").write_bytes(b"half")
    return root


@pytest.mark.parametrize("mode", ["fault", "hang"])
def test_a_fault_at_every_storage_call_of_prune(six_steps: Path, tmp_path: Path, mode: str) -> None:
    def prune(store: CheckpointStore) -> None:
        store.prune(retention=KeepMax(2))

    base = tmp_path / "clean"
    shutil.copytree(six_steps, base)
    calls = clean_calls(base, prune, workers=1, gc_grace_seconds=0)
    assert sum(m == "delete" for m, _ in calls) >= 4
    assert [i.step for i in CheckpointStore(base).list()] == [5, 6]
    tally = Tally()
    for index, (method, key) in enumerate(calls):
        kind = "hang" if mode == "hang" else "error"
        where = f"fault {kind} at call {index} ({method} {key})"
        root, faults, store, error = run_with_fault(six_steps, tmp_path, index, kind, prune,
                                                    workers=1, gc_grace_seconds=0)
        if error is None:
            tally.completed += 1
        else:
            tally.failed += 1
            assert_clear(error, faults, where)
        # Whatever was interrupted, every step still listed restores (no half-deleted checkpoint is
        # visible) and the two newest are there.
        check_consistent(root, must_have=[5, 6], where=where)
        store.prune(retention=KeepMax(2))
        assert [i.step for i in CheckpointStore(root).list()] == [5, 6], where
        store.gc(grace_seconds=0)
        assert leftovers(root) == [], f"{where}: {leftovers(root)}"
        shutil.rmtree(root)
    print(f"prune, {mode}: {tally}")
    assert tally.failed > 0


@pytest.mark.parametrize("mode", ["fault", "hang"])
def test_a_fault_at_every_storage_call_of_gc(six_steps: Path, tmp_path: Path, mode: str) -> None:
    def gc(store: CheckpointStore) -> None:
        store.gc(grace_seconds=0)

    base = tmp_path / "clean"
    shutil.copytree(six_steps, base)
    assert len(leftovers(base)) >= 2
    calls = clean_calls(base, gc, workers=1)
    assert leftovers(base) == []
    tally = Tally()
    for index, (method, key) in enumerate(calls):
        kind = "hang" if mode == "hang" else "error"
        where = f"fault {kind} at call {index} ({method} {key})"
        root, faults, store, error = run_with_fault(six_steps, tmp_path, index, kind, gc, workers=1)
        if error is None:
            tally.completed += 1
        else:
            tally.failed += 1
            assert_clear(error, faults, where)
        check_consistent(root, must_have=range(1, 7), where=where)
        store.gc(grace_seconds=0)
        assert leftovers(root) == [], where
        shutil.rmtree(root)
    print(f"gc, {mode}: {tally}")
    assert tally.failed > 0


def test_housekeeping_faults_after_a_commit_do_not_fail_the_save(saved_template: Path, tmp_path: Path, caplog: Any) -> None:
    """Once the manifest and LATEST are written the save has succeeded; a failing prune is logged and retried."""
    root = tmp_path / "m"
    shutil.copytree(saved_template, root)
    faults = Faults(LocalStorage(root))
    store = CheckpointStore(storage=faults, keep_max=2)
    faults.fail_on(lambda m, k, i: m == "delete")
    with caplog.at_level(logging.WARNING, logger="ckptstore"):
        info = store.save(2, state(2))
    assert info.step == 2 and "injected fault in delete" in caplog.text
    faults.heal()
    store.save(3, state(3))
    assert [i.step for i in store.list()] == [2, 3]


# ---------------------------------------------------------------------------------------------
# Full disk, read-only disk
# ---------------------------------------------------------------------------------------------


class _OsWithBudget(types.SimpleNamespace):
    """Stands in for ``os`` inside ``ckptstore.storage.local``: ``write`` fails with ENOSPC past a budget."""

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget
        self.written = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Buffer) -> int:
        room = self.budget - self.written
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, memoryview(data)[:room])
        self.written += n
        return n


def _bytes_written_by(run: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> int:
    counter = _OsWithBudget(1 << 62)
    monkeypatch.setattr(local_module, "os", counter)
    run()
    monkeypatch.setattr(local_module, "os", os)
    return counter.written


def test_injected_enospc_at_any_point_of_a_save(saved_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = tmp_path / "probe"
    shutil.copytree(saved_template, probe)
    total = _bytes_written_by(lambda: CheckpointStore(probe, workers=1).save(2, state(2)), monkeypatch)
    budgets = sorted({0, 1, 4096, total // 3, total // 2, total - 600, total - 300, total - 100, total - 1})
    for budget in budgets:
        root = tmp_path / f"enospc-{budget}"
        shutil.copytree(saved_template, root)
        store = CheckpointStore(root, workers=1)
        monkeypatch.setattr(local_module, "os", _OsWithBudget(budget))
        try:
            store.save(2, state(2))
        except StorageError as e:
            assert "No space left on device" in str(e) and "the disk is full" in str(e), str(e)
            assert "earlier checkpoints are untouched" in str(e)
        else:
            raise AssertionError(f"a save of {total} bytes succeeded with {budget} bytes of room")
        finally:
            monkeypatch.setattr(local_module, "os", os)
        check_consistent(root, must_have=[0, 1], where=f"ENOSPC after {budget} bytes")
        assert not [p for p in root.rglob(".tmp-*")], "temp files of the failed save were left behind"
        store.save(2, state(2)) if 2 not in [i.step for i in store.list()] else None
        assert check_consistent(root, must_have=[0, 1, 2], where="after space was freed") == 2


def test_injected_erofs_gives_a_clear_error_and_loses_nothing(
    saved_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a read-only model_dir looks like to the backend: every create fails with EROFS."""
    root = tmp_path / "m"
    shutil.copytree(saved_template, root)

    class ReadOnlyOs(types.SimpleNamespace):
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def open(self, path: Any, flags: int, *args: Any) -> int:
            if flags & os.O_CREAT:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return os.open(path, flags, *args)

    store = CheckpointStore(root)
    monkeypatch.setattr(local_module, "os", ReadOnlyOs())
    with pytest.raises(StorageError, match="Read-only file system — the model_dir is not writable"):
        store.save(2, state(2))
    assert_exact(store.restore(), state(1))  # reading still works
    monkeypatch.setattr(local_module, "os", os)
    check_consistent(root, must_have=[0, 1], where="after EROFS")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=20)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=20)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MiB filesystem (needs mount rights; skipped with the reason otherwise)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt))
    except (OSError, subprocess.SubprocessError) as e:
        reason = getattr(e, "stderr", b"") or str(e)
        pytest.skip(f"cannot mount a tmpfs here ({reason!r}); test_injected_enospc_* covers a full disk")
    try:
        yield mnt
    finally:
        _umount(mnt)


def test_a_real_full_disk(small_tmpfs: Path) -> None:
    root = small_tmpfs / "model_dir"
    store = CheckpointStore(root, workers=1)
    store.save(0, state(0))
    store.save(1, state(1))  # ~2.5 MiB of 3 MiB used
    with pytest.raises(StorageError, match="No space left on device — the disk is full; earlier checkpoints"):
        store.save(2, state(2))
    check_consistent(root, must_have=[0, 1], where="after a real ENOSPC")
    assert not list(root.rglob(".tmp-*")) and not list((root / step_dir(2)).rglob("*.bin"))
    store.prune(retention=KeepMax(1))  # frees step 0
    store.save(2, state(2))
    assert check_consistent(root, must_have=[1, 2], where="after freeing space") == 2


@pytest.fixture
def read_only_model_dir(saved_template: Path, tmp_path: Path) -> Iterator[Path]:
    """The template's checkpoints behind a real read-only bind mount (chmod does not stop root)."""
    src = tmp_path / "src"
    shutil.copytree(saved_template, src)
    dst = tmp_path / "ro"
    dst.mkdir()
    try:
        _mount("--bind", str(src), str(dst))
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot bind-mount here ({getattr(e, 'stderr', b'') or e!r}); the injected EROFS test covers it")
    try:
        _mount("-o", "remount,bind,ro", str(dst))
        yield dst
    finally:
        _umount(dst)


def test_a_real_read_only_model_dir(read_only_model_dir: Path) -> None:
    root = read_only_model_dir
    with pytest.raises(OSError):
        (root / "probe").write_bytes(b"x")  # the mount really is read-only, even for root
    store = CheckpointStore(root)
    assert store.latest().step == 1  # type: ignore[union-attr]
    assert_exact(store.restore(), state(1))
    with pytest.raises(StorageError, match="Read-only file system — the model_dir is not writable"):
        store.save(2, state(2))
    with pytest.raises(StorageError, match="Read-only file system"):
        store.prune(retention=KeepMax(1))
    check_consistent(root, must_have=[0, 1], where="read-only")


# ---------------------------------------------------------------------------------------------
# Two writers, one model_dir
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_max", [None, 3])
def test_two_processes_saving_into_one_model_dir(tmp_path: Path, keep_max: int | None) -> None:
    root = tmp_path / "shared"
    n_steps = 60
    args = [str(keep_max)] if keep_max else []
    writers = {
        w: subprocess.Popen(
            [sys.executable, str(TRIALS / "concurrent_writer.py"), str(root), str(w), str(1000 + w), str(n_steps), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in (1, 2)
    }
    samples: list[int] = []
    torn: list[str] = []
    stop = threading.Event()

    def sample_latest() -> None:  # the third loop: LATEST as any reader sees it, as often as possible
        while not stop.is_set():
            try:
                samples.append(decode_latest((root / LATEST_KEY).read_bytes(), "LATEST").step)
            except FileNotFoundError:
                pass
            except FormatError as e:
                torn.append(str(e))
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample_latest)
    sampler.start()
    outputs = {}
    try:
        for w, proc in writers.items():
            outputs[w] = proc.communicate(timeout=300)
    finally:
        stop.set()
        sampler.join()
        for proc in writers.values():
            proc.kill() if proc.poll() is None else None
    done: dict[int, set[int]] = {1: set(), 2: set()}
    refused: dict[int, list[str]] = {1: [], 2: []}
    behind = 0
    for w, (out, err) in outputs.items():
        assert writers[w].returncode == 0, err
        for line in out.splitlines():
            kind, step, *rest = line.split(" ", 2)
            if kind == "D":
                done[w].add(int(step))
            else:
                refused[w].append(line)
                # The only refusal two honest writers may get: the step is someone else's already.
                assert "CommitError" in line and f"step {step} " in line and "already committed" in line, line
        behind += err.count("LATEST stays at the newer step")
    assert not torn, torn[:3]
    assert samples and all(a <= b for a, b in zip(samples, samples[1:], strict=False)), "LATEST moved backwards"
    recreated = done[1] & done[2]
    if keep_max is None:  # create-only commits: one winner per step
        assert not recreated, f"both writers committed steps {sorted(recreated)}"
    # With retention, a step one writer committed and then pruned may be committed again by the slower
    # writer (its create finds no manifest); the checks below still hold for whatever is committed.
    with CheckpointStore(root) as store:
        committed = set(commit.committed_steps(store.storage))
        acknowledged = done[1] | done[2]
        assert committed <= acknowledged
        if keep_max is None:
            assert committed == acknowledged
        else:  # retention by either writer may drop old steps, never the newest ones
            assert set(sorted(acknowledged)[-keep_max:]) <= committed
        latest = store.latest()
        assert latest is not None and latest.step == max(acknowledged) == samples[-1]
        for step in sorted(committed):
            restored = store.restore(step=step)
            writer = restored["writer"]
            assert step in done[writer], f"step {step} holds writer {writer}'s state, which it did not commit"
            assert_exact(restored, writer_state(step, writer), f"step {step}")
    print(
        f"keep_max={keep_max}: {len(done[1])}+{len(done[2])} commits, {len(refused[1]) + len(refused[2])} refused as "
        f"already committed, {behind} committed behind LATEST (LATEST stayed), {len(recreated)} steps committed "
        f"by both (after a prune), {len(samples)} LATEST samples monotonic, {len(committed)} checkpoints restored"
    )
    assert refused[1] or refused[2]  # the writers really did collide


# ---------------------------------------------------------------------------------------------
# Object stores behind a faulty network (servers from tests/conftest.py, proxy from tests/servers.py)
# ---------------------------------------------------------------------------------------------

_OBJECT_STORES = {"s3-moto": ("s3", "s3_moto"), "gcs": ("gs", "gcs_fake")}


def _object_store(request: pytest.FixtureRequest, name: str) -> tuple[Any, str]:
    scheme, fixture = _OBJECT_STORES[name]
    server = request.getfixturevalue(fixture)  # skips (or fails on CI) when the server cannot start
    return server, f"{scheme}://{server.bucket}/faults-{uuid.uuid4().hex[:12]}"


def _small_state(step: int) -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return {"w": rng.standard_normal((50, 40)).astype(np.float32), "b": rng.integers(0, 9, 300), "step": step}


@pytest.mark.parametrize("name", list(_OBJECT_STORES))
def test_saves_and_restores_succeed_through_a_flaky_network(request: pytest.FixtureRequest, name: str) -> None:
    """A quarter of all requests fail: 503 SlowDown, 500, reset, applied with the reply lost, or stalled
    past the client's read timeout."""
    from servers import FaultProxy  # tests/ is on sys.path via conftest

    from ckptstore.storage._retry import RetryPolicy

    server, url = _object_store(request, name)
    rng = np.random.default_rng(11)
    kinds = ["503", "500", "reset", "lost-reply", "503", "500", "reset", "lost-reply", "stall"]
    schedule = [str(rng.choice(kinds)) if rng.random() < 0.25 else None for _ in range(2000)]
    policy = RetryPolicy(deadline=30, max_attempts=10, base_delay=0.01, max_delay=0.1)
    with FaultProxy(server.endpoint, faults=schedule, max_requests=10_000, stall_seconds=1.0) as proxy:
        options = {**server.storage_options, "endpoint_url": proxy.endpoint, "retry": policy, "read_timeout": 0.3}
        with CheckpointStore(url, storage_options=options, keep_max=3, gc_grace_seconds=0) as store:
            for step in range(1, 7):
                store.save(step, state(step) if step == 6 else _small_state(step))
            assert [i.step for i in store.list()] == [4, 5, 6]
            assert_exact(store.restore(), state(6))
            for step in (4, 5):
                assert_exact(store.restore(step=step), _small_state(step))
        served = proxy.faults_served
    assert served >= 20, f"only {served} faults were served"
    with CheckpointStore(url, storage_options=server.storage_options) as direct:  # no proxy in between
        assert direct.latest().step == 6  # type: ignore[union-attr]
        assert_exact(direct.restore(), state(6))
    stalls = schedule[: proxy.requests].count("stall")
    print(f"{name}: {served} faults ({stalls} stalls) over {proxy.requests} requests; 6 saves, 3 restores exact")


@pytest.mark.parametrize("name", list(_OBJECT_STORES))
def test_a_permanent_outage_fails_within_the_deadline_and_loses_nothing(request: pytest.FixtureRequest, name: str) -> None:
    from servers import FaultProxy

    from ckptstore.storage._retry import RetryPolicy

    server, url = _object_store(request, name)
    with CheckpointStore(url, storage_options=server.storage_options) as direct:
        direct.save(1, _small_state(1))
    policy = RetryPolicy(deadline=1.5, max_attempts=50, base_delay=0.05, max_delay=0.3)
    for outage in ("503", "reset"):
        with FaultProxy(server.endpoint, always=outage, max_requests=500) as proxy:
            options = {**server.storage_options, "endpoint_url": proxy.endpoint, "retry": policy}
            with CheckpointStore(url, storage_options=options) as store:
                started = time.monotonic()
                with pytest.raises(StorageError) as exc:
                    store.save(2, _small_state(2))
                elapsed = time.monotonic() - started
                with pytest.raises(StorageError):
                    store.restore()
        assert elapsed < 10, f"{outage}: gave up after {elapsed:.1f} s"
        assert url.split("://", 1)[1].split("/", 1)[1] in str(exc.value) and "gave up" in str(exc.value), str(exc.value)
    with CheckpointStore(url, storage_options=server.storage_options) as direct:
        assert [i.step for i in direct.list()] == [1]
        assert_exact(direct.restore(), _small_state(1))


@pytest.mark.slow
def test_a_fault_at_every_storage_call_of_a_save_to_s3(s3_moto: Any) -> None:
    """The commit path of a save (every call up to the LATEST write, and the next two) on moto's S3."""
    from ckptstore.storage import open_storage

    opts = s3_moto.storage_options

    def fresh() -> str:
        url = f"s3://{s3_moto.bucket}/save-faults-{uuid.uuid4().hex[:12]}"
        with CheckpointStore(url, storage_options=opts) as store:
            store.save(0, _small_state(0))
            store.save(1, _small_state(1))
        return url

    def faulted(url: str) -> tuple[Faults, CheckpointStore]:
        faults = Faults(open_storage(url, **opts))
        return faults, CheckpointStore(storage=faults, workers=1, keep_max=2, gc_grace_seconds=0)

    faults, store = faulted(fresh())
    store.save(2, _small_state(2))
    calls = list(faults.calls)
    last = min(len(calls), calls.index(("put", LATEST_KEY)) + 3)
    tally = Tally()
    for index, (method, key) in enumerate(calls[:last]):
        for kind in ("error", "short") if method == "put" else ("error",):
            where = f"s3: fault {kind} at call {index} ({method} {key})"
            url = fresh()
            faults, store = faulted(url)
            faults.fail_on(lambda m, k, i, index=index: i == index, short_write=kind == "short")
            try:
                store.save(2, _small_state(2))
                tally.completed += 1
            except CkptStoreError as e:
                tally.failed += 1
                assert_clear(e, faults, where)
            faults.heal()
            check_consistent(url, [1], where, _small_state, opts)
            try:
                store.save(2, _small_state(2))
            except CommitError as e:
                assert "already committed" in str(e), where
                if kind == "short" and key.endswith("manifest.msgpack"):
                    store.save(2, _small_state(2), overwrite=True)  # a torn manifest (see the local test)
            assert check_consistent(url, [1, 2], f"{where}, after retry", _small_state, opts) == 2
    print(tally)
    assert tally.failed >= calls.index(("put", LATEST_KEY)) + 1


# restore, prune and gc on moto's S3: the same trials as on local disk, fewer and smaller tensors

class _Borrowed(FaultInjectingStorage):
    """A backend lent to a short-lived ``CheckpointStore``: closing the store leaves the connection open."""

    def close(self) -> None:
        pass


def _s3_prefix(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[1] + "/"


def _s3_copy(bucket: Any, src: str, dst: str) -> None:
    """What ``shutil.copytree`` is to the local trials (``bucket``: a storage on the bucket's root)."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [o.key for o in bucket.list(_s3_prefix(src))]
    tail = len(_s3_prefix(src))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: bucket.put(_s3_prefix(dst) + k[tail:], bucket.get(k)), keys))


def _s3_remove(bucket: Any, url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(bucket.delete, [o.key for o in bucket.list(_s3_prefix(url))]))


def _tiny_state(step: int) -> dict[str, Any]:
    """One shard per checkpoint: the S3 prune and gc trials copy, restore and delete fewer objects."""
    return {"w": np.random.default_rng(step).standard_normal((20, 10)).astype(np.float32), "step": step}


@pytest.fixture(scope="module")
def s3_templates(s3_moto: Any) -> Iterator[dict[str, Any]]:
    """``saved``: steps 0 and 1; ``four``: steps 1-4 plus garbage for gc (an uncommitted attempt, a temp
    file); ``bucket``: a storage on the bucket's root, to copy and remove model_dirs."""
    from ckptstore.storage import open_storage

    opts = s3_moto.storage_options
    base = f"s3://{s3_moto.bucket}/fault-templates-{uuid.uuid4().hex[:12]}"
    urls = {"saved": f"{base}/saved", "four": f"{base}/four"}
    with CheckpointStore(urls["saved"], storage_options=opts) as store:
        store.save(0, _small_state(0))
        store.save(1, _small_state(1))
    with CheckpointStore(urls["four"], storage_options=opts, workers=1) as store:
        for step in range(1, 5):
            store.save(step, _tiny_state(step))
    with open_storage(urls["four"], **opts) as s:
        for obj in list(s.list(f"{step_dir(4)}/attempt-")):
            tail = obj.key.split("/", 2)[2]
            s.put(f"{step_dir(5)}/attempt-0000000000000000/{tail}", s.get(obj.key))
        s.put(f"{step_dir(3)}/.tmp-manifest.msgpack.0123456789ab", b"half")
        assert len(leftovers(urls["four"], opts)) >= 2
    with open_storage(f"s3://{s3_moto.bucket}", **opts) as bucket:
        yield {**urls, "bucket": bucket}
        _s3_remove(bucket, base)


def _s3_trials(
    s3_moto: Any, templates: dict[str, Any], name: str, mode: str, run: Callable[[CheckpointStore], Any],
    check: Callable[[Any, CheckpointStore, str], None], **store_options: Any,
) -> tuple[Tally, list[tuple[str, str]]]:
    """Every call of ``run`` on a copy of template ``name`` failed in turn (``mode``: fault or hang), then
    ``check(direct, store, where)``: ``direct`` is the copy without faults, ``store`` the faulted store, healed.
    Trials run four at a time (each on its own copy): they mostly wait for moto. Hang trials take every
    third call (the local hang trials take every call; on S3 a hang differs from an error only in the wait,
    and every call's error trial runs here), to keep the S3 trials near 30 s."""
    from concurrent.futures import ThreadPoolExecutor

    from ckptstore.storage import open_storage

    bucket = templates["bucket"]

    def copy() -> tuple[str, Faults, CheckpointStore]:
        url = f"s3://{s3_moto.bucket}/s3-trial-{uuid.uuid4().hex[:12]}"
        _s3_copy(bucket, templates[name], url)
        faults = Faults(open_storage(url, **s3_moto.storage_options))
        return url, faults, CheckpointStore(storage=faults, **store_options)

    url, faults, store = copy()
    run(store)
    calls = list(faults.calls)
    store.close()
    _s3_remove(bucket, url)
    tally = Tally()
    kind = "hang" if mode == "hang" else "error"

    def trial(index: int) -> None:
        method, key = calls[index]
        where = f"s3: fault {kind} at call {index} ({method} {key})"
        url, faults, store = copy()
        fail_one_call(faults, index, kind)
        error: BaseException | None = None
        started = time.monotonic()
        try:
            run(store)
        except CkptStoreError as e:
            error = e
            assert_clear(e, faults, where)
        if kind == "hang":
            assert_hang_bounded(time.monotonic() - started, error, where)
        faults.heal()
        check(_Borrowed(faults.inner), store, where)
        store.close()
        _s3_remove(bucket, url)
        with lock:
            if error is None:
                tally.completed += 1
            else:
                tally.failed += 1

    lock = threading.Lock()
    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(trial, index) for index in range(0, len(calls), 3 if mode == "hang" else 1)]:
            done.result()  # re-raises a failed trial's assertion
    return tally, calls


@pytest.mark.parametrize("mode", ["fault", "hang"])
def test_a_fault_at_every_storage_call_of_restore_on_s3(s3_moto: Any, s3_templates: dict[str, Any], mode: str) -> None:
    def restore(store: CheckpointStore) -> None:
        assert_exact(store.restore(), _small_state(1), "restore() under a fault")  # never wrong data

    def check(direct: Any, store: CheckpointStore, where: str) -> None:
        check_consistent(direct, [0, 1], where, _small_state)
        assert_exact(store.restore(), _small_state(1), f"{where}, retry")

    tally, calls = _s3_trials(s3_moto, s3_templates, "saved", mode, restore, check, workers=1)
    print(f"s3 restore, {mode}: {tally}")
    assert tally.failed > 0


@pytest.mark.parametrize("mode", ["fault", "hang"])
def test_a_fault_at_every_storage_call_of_prune_on_s3(s3_moto: Any, s3_templates: dict[str, Any], mode: str) -> None:
    def prune(store: CheckpointStore) -> None:
        store.prune(retention=KeepMax(2))

    def check(direct: Any, store: CheckpointStore, where: str) -> None:
        check_consistent(direct, [3, 4], where, _tiny_state)
        store.prune(retention=KeepMax(2))
        with CheckpointStore(storage=direct) as fresh:
            assert [i.step for i in fresh.list()] == [3, 4], where
        store.gc(grace_seconds=0)
        assert leftovers(direct) == [], f"{where}: {leftovers(direct)}"

    tally, calls = _s3_trials(s3_moto, s3_templates, "four", mode, prune, check, workers=1, gc_grace_seconds=0)
    print(f"s3 prune, {mode}: {tally}")
    assert sum(m == "delete" for m, _ in calls) >= 2
    assert tally.failed > 0


@pytest.mark.parametrize("mode", ["fault", "hang"])
def test_a_fault_at_every_storage_call_of_gc_on_s3(s3_moto: Any, s3_templates: dict[str, Any], mode: str) -> None:
    def gc(store: CheckpointStore) -> None:
        store.gc(grace_seconds=0)

    def check(direct: Any, store: CheckpointStore, where: str) -> None:
        check_consistent(direct, range(1, 5), where, _tiny_state)
        store.gc(grace_seconds=0)
        assert leftovers(direct) == [], f"{where}: {leftovers(direct)}"

    tally, calls = _s3_trials(s3_moto, s3_templates, "four", mode, gc, check, workers=1)
    print(f"s3 gc, {mode}: {tally}")
    assert sum(m == "delete" for m, _ in calls) >= 2
    assert tally.failed > 0
