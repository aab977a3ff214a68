"""The storage contract suite against the built-in local, memory and generic-fsspec backends."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

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


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "ckptstore.storage.s3" or m.startswith("boto3")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes "import boto3" raise ImportError
    with pytest.raises(PluginError, match=r"pip install 'ckptstore\[s3\]'"):
        open_storage("s3://bucket/run")
