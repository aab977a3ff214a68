"""The storage contract suite against the built-in local, memory and generic-fsspec backends."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from ckptstore import CheckpointStore
from ckptstore.errors import NotFound, PluginError, StorageError
from ckptstore.storage import open_storage
from ckptstore.storage.fsspec import FsspecStorage
from ckptstore.storage.local import LocalStorage
from ckptstore.storage.memory import MemoryStorage
from ckptstore.testing import StorageContract


class TestLocal(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        with LocalStorage(tmp_path / "root") as s:
            yield s


class TestMemory(StorageContract):
    @pytest.fixture
    def storage(self):
        with MemoryStorage(uuid.uuid4().hex) as s:
            yield s


class TestGenericFsspec(StorageContract):
    """fsspec's own local filesystem through the generic backend (no conditional writes)."""

    @pytest.fixture
    def storage(self, tmp_path):
        root = tmp_path / "fs"
        root.mkdir()
        with FsspecStorage(f"local://{root}") as s:
            yield s


def test_registry_resolves_schemes(tmp_path):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    assert isinstance(open_storage("memory://reg"), MemoryStorage)
    assert isinstance(open_storage(f"local://{tmp_path}"), FsspecStorage)


def test_unknown_scheme_names_the_choices():
    with pytest.raises(PluginError, match="no storage backend for nosuch://") as e:
        open_storage("nosuch://x/y")
    assert "s3" in str(e.value) and isinstance(e.value, LookupError)


def test_local_root_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        LocalStorage(f)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page cache control through fadvise and RWF_NOWAIT")
def test_local_cached_tells_whether_a_file_is_in_the_page_cache(tmp_path):
    s = LocalStorage(tmp_path)
    s.put("d/x.bin", os.urandom(4 << 20))
    s.put("d/empty", b"")
    assert s.cached("d/x.bin")  # just written
    assert s.cached("d/empty")
    fd = os.open(tmp_path / "d" / "x.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean (put fsyncs): dropped
        answer = s.cached("d/x.bin")
        try:  # the oracle: a read that may not wait for the disk, of the last page
            still_there = os.preadv(fd, [bytearray(1)], (4 << 20) - 1, os.RWF_NOWAIT) == 1
        except BlockingIOError:
            still_there = False
        if still_there:
            pytest.skip("this filesystem keeps files in memory (tmpfs): nothing to drop")
        assert not answer
        assert os.preadv(fd, [bytearray(4 << 20)], 0) == 4 << 20  # read back in
        assert s.cached("d/x.bin")
    finally:
        os.close(fd)
    with pytest.raises(NotFound):
        s.cached("d/missing")
    os.symlink(tmp_path / "d" / "x.bin", tmp_path / "d" / "link")
    with pytest.raises(StorageError, match="is a symlink"):
        s.cached("d/link")


def test_local_temp_files_of_interrupted_puts_are_listed(tmp_path):
    s = LocalStorage(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".tmp-x.123").write_bytes(b"partial")
    assert [o.key for o in s.list()] == ["d/.tmp-x.123"]


# Read-modify-write of a counter by compare-and-swap, retried until it lands: a lost update (two writers
# let through the key's lock at once, both swapping from the same version) leaves the count short.
_INCREMENTER = textwrap.dedent("""
    import sys
    from ckptstore.errors import PreconditionFailed
    from ckptstore.storage.local import LocalStorage

    s = LocalStorage(sys.argv[1], fsync=False)
    for _ in range(int(sys.argv[2])):
        while True:
            version = s.head("counter").version
            value = int(s.get("counter"))
            try:
                s.put("counter", str(value + 1).encode(), mode=version)
                break
            except PreconditionFailed:
                continue
""")


def test_local_compare_and_swap_loses_no_update_between_processes(tmp_path):
    """Processes hammering one key: every increment lands exactly once, though the lock file comes and goes
    (each holder unlinks it; a waiter granted the lock of an unlinked file must start again)."""
    LocalStorage(tmp_path).put("counter", b"0")
    processes, rounds = 4, 400
    children = [
        subprocess.Popen([sys.executable, "-c", _INCREMENTER, str(tmp_path), str(rounds)]) for _ in range(processes)
    ]
    assert [c.wait(timeout=120) for c in children] == [0] * processes
    assert int(LocalStorage(tmp_path).get("counter")) == processes * rounds
    assert os.listdir(tmp_path / ".locks") == []


def test_local_lock_files_do_not_pile_up(tmp_path):
    """A lock file lives only while its key is locked: replacing a step's manifest (``overwrite=True``) and
    moving LATEST leave none behind, however many steps were locked."""
    store = CheckpointStore(tmp_path)
    for step in range(3):
        store.save(step, {"w": np.full(4, step, np.float32)})
        store.save(step, {"w": np.full(4, step + 10, np.float32)}, overwrite=True)
    assert store.restore(2)["w"][0] == 12
    assert os.listdir(tmp_path / ".locks") == []


class _CacheStat(ctypes.Structure):
    _fields_ = [(f, ctypes.c_uint64) for f in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def _dirty_pages(path, nbytes):
    """Dirty page-cache pages of the first ``nbytes`` of ``path`` (Linux 6.5+ ``cachestat``), None where the
    kernel cannot say."""
    if platform.machine() not in ("x86_64", "aarch64"):  # where 451 is cachestat (the generic table and x86-64)
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    span = (ctypes.c_uint64 * 2)(0, nbytes)
    stat = _CacheStat()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(451, fd, ctypes.byref(span), ctypes.byref(stat), 0) != 0:  # 451: cachestat
            return None
    finally:
        os.close(fd)
    return stat.dirty


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range and cachestat are Linux calls")
@pytest.mark.parametrize("window", [4 << 20, 0])
def test_local_put_starts_writeback_while_it_writes(tmp_path, window):
    """A durable put asks the kernel to write each window to disk once it is written, not all at the final
    fsync: the bytes a put has written so far are no longer dirty (being written, or written) while it
    still writes. With the window at 0 they stay dirty until the fsync, unless the kernel flushed them on
    its own (another job's writes passing the dirty threshold): then this machine cannot tell, and the
    case is skipped rather than passed."""
    s = LocalStorage(tmp_path, writeback_window=window)
    piece = os.urandom(4 << 20)
    seen = []

    def pieces():
        for i in range(4):
            if i == 3:  # 12 MiB written: look at them from the outside while the put waits for more
                (tmp,) = (p for p in os.listdir(tmp_path) if p.startswith(".tmp-x.bin."))
                seen.append(_dirty_pages(tmp_path / tmp, 12 << 20))
            yield piece

    s.put("x.bin", pieces())
    assert s.get("x.bin") == piece * 4
    if seen[0] is None or _dirty_pages(tmp_path / "x.bin", 16 << 20) != 0:
        pytest.skip("no cachestat, or a filesystem whose fsync leaves pages dirty (tmpfs): nothing to see")
    pages = (12 << 20) // os.sysconf("SC_PAGE_SIZE")
    if window:
        assert seen[0] <= pages // 4, f"{seen[0]} of {pages} pages still dirty: writeback did not start"
    elif seen[0] < pages:
        pytest.skip(f"the kernel flushed {pages - seen[0]} pages on its own: the control tells nothing")


@pytest.mark.parametrize("bad", [-1, 1.5, "8MiB", True])
def test_local_writeback_window_must_be_bytes(tmp_path, bad):
    with pytest.raises(ValueError, match=r"writeback_window must be a number of bytes >= 0 \(0: off\), got"):
        LocalStorage(tmp_path, writeback_window=bad)


def test_local_writeback_window_through_storage_options(tmp_path):
    store = CheckpointStore(tmp_path, storage_options={"writeback_window": 0})
    assert store.storage.writeback_window == 0
    assert LocalStorage(tmp_path).writeback_window == 8 << 20
    store.save(1, {"w": np.arange(3 << 18, dtype=np.float32)})  # 3 MiB: saved whole, writeback off
    assert store.restore(1)["w"][-1] == (3 << 18) - 1


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "ckptstore.storage.s3" or m.startswith("boto3")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes "import boto3" raise ImportError
    with pytest.raises(PluginError, match=r"pip install 'ckptstore\[s3\]'"):
        open_storage("s3://bucket/run")
