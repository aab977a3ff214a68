"""Test helpers that ship with ckptstore: the storage contract suite and a fault-injecting wrapper.

A backend plugin proves it follows the contract by subclassing ``StorageContract`` in its own tests and
providing a ``storage`` pytest fixture that yields a fresh, empty backend::

    class TestMyBackend(StorageContract):
        @pytest.fixture
        def storage(self):
            with MyStorage("my://bucket/some-unique-prefix") as s:
                yield s
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ckptstore.errors import AlreadyExists, NotFound, PreconditionFailed, StorageError, Unsupported
from ckptstore.storage.interface import (
    Buffer,
    ObjectInfo,
    PutMode,
    Storage,
    Version,
    read_in_pieces,
    read_through_buffer,
)


class StorageContract:
    """Behaviour every backend must show. Needs a ``storage`` fixture yielding an empty backend."""

    def test_put_get_roundtrip(self, storage: Storage) -> None:
        info = storage.put("a/b/c.bin", b"hello world")
        assert info.size == 11
        assert storage.get("a/b/c.bin") == b"hello world"

    def test_put_many_buffers(self, storage: Storage) -> None:
        storage.put("multi", [b"ab", memoryview(b"cd"), bytearray(b"ef")])
        assert storage.get("multi") == b"abcdef"

    def test_ranged_get(self, storage: Storage) -> None:
        storage.put("r", bytes(range(100)))
        assert storage.get("r", 10, 20) == bytes(range(10, 20))
        assert storage.get("r", 90) == bytes(range(90, 100))
        assert storage.get("r", None, 5) == bytes(range(5))

    def test_read_into(self, storage: Storage) -> None:
        storage.put("r", bytes(range(100)))
        out = bytearray(30)
        storage.read_into("r", 50, memoryview(out))
        assert bytes(out) == bytes(range(50, 80))

    def test_read_pieces(self, storage: Storage) -> None:
        read_pieces = getattr(storage, "read_pieces", None)
        if read_pieces is None:  # optional: restores fall back to read_into
            return
        data = bytes(range(256)) * 40
        storage.put("p", data)
        out = bytearray(7000)
        view = memoryview(out)
        landed = []
        for piece in read_pieces("p", 300, view, 1024):
            landed.append(bytes(piece))  # each piece is filled when it is yielded
        assert all(0 < len(p) <= 1024 for p in landed), [len(p) for p in landed]  # cut where the backend likes
        assert b"".join(landed) == bytes(out) == data[300:7300]
        out2 = bytearray(10)
        try:
            for _ in read_pieces("p", len(data) - 5, memoryview(out2), 4):
                pass
        except (StorageError, NotFound):
            return
        raise AssertionError("read_pieces past the end of an object must raise")

    def test_read_into_past_end_fails(self, storage: Storage) -> None:
        storage.put("short", b"12345")
        out = bytearray(10)
        try:
            storage.read_into("short", 0, memoryview(out))
        except (StorageError, NotFound):
            return
        raise AssertionError("read_into past the end of an object must raise")

    def test_missing_key_raises_not_found(self, storage: Storage) -> None:
        for call in (lambda: storage.get("nope"), lambda: storage.head("nope"),
                     lambda: storage.read_into("nope", 0, memoryview(bytearray(1)))):
            try:
                call()
            except NotFound as e:
                assert isinstance(e, FileNotFoundError)
                assert "nope" in str(e)
            else:
                raise AssertionError("a missing key must raise NotFound")

    def test_overwrite_replaces(self, storage: Storage) -> None:
        storage.put("k", b"one")
        storage.put("k", b"two-longer")
        assert storage.get("k") == b"two-longer"
        assert storage.head("k").size == 10

    def test_empty_object(self, storage: Storage) -> None:
        storage.put("empty", b"")
        assert storage.get("empty") == b""
        assert storage.head("empty").size == 0

    def test_create_only(self, storage: Storage) -> None:
        if not storage.capabilities.conditional_create:
            try:
                storage.put("c", b"x", mode="create")
            except Unsupported:
                return
            raise AssertionError("a backend without conditional create must raise Unsupported")
        storage.put("c", b"first", mode="create")
        try:
            storage.put("c", b"second", mode="create")
        except AlreadyExists as e:
            assert isinstance(e, FileExistsError)
        else:
            raise AssertionError("a second create-only put must raise AlreadyExists")
        assert storage.get("c") == b"first"

    def test_compare_and_swap(self, storage: Storage) -> None:
        first = storage.put("p", b"v1")
        if not storage.capabilities.compare_and_swap:
            try:
                storage.put("p", b"v2", mode=first.version or Version("x"))
            except Unsupported:
                return
            raise AssertionError("a backend without compare-and-swap must raise Unsupported")
        assert first.version is not None
        assert storage.head("p").version == first.version
        second = storage.put("p", b"v2", mode=first.version)
        assert second.version != first.version
        try:
            storage.put("p", b"v3", mode=first.version)
        except PreconditionFailed:
            pass
        else:
            raise AssertionError("a put with a stale version must raise PreconditionFailed")
        assert storage.get("p") == b"v2"

    def test_cas_on_missing_key_fails(self, storage: Storage) -> None:
        if not storage.capabilities.compare_and_swap:
            return
        other = storage.put("elsewhere", b"x")
        assert other.version is not None
        try:
            storage.put("absent", b"v", mode=other.version)
        except PreconditionFailed:
            pass
        else:
            raise AssertionError("compare-and-swap on a missing key must fail")
        try:
            storage.head("absent")
        except NotFound:
            return
        raise AssertionError("a failed compare-and-swap must not create the key")

    def test_racing_creates_have_one_winner(self, storage: Storage) -> None:
        if not storage.capabilities.conditional_create:
            return
        winners: list[int] = []
        errors: list[BaseException] = []

        def attempt(i: int) -> None:
            try:
                storage.put("race", f"writer-{i}".encode(), mode="create")
                winners.append(i)
            except AlreadyExists:
                pass
            except BaseException as e:  # anything else is a contract violation
                errors.append(e)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(winners) == 1, winners
        assert storage.get("race") == f"writer-{winners[0]}".encode()

    def test_racing_cas_has_one_winner(self, storage: Storage) -> None:
        if not storage.capabilities.compare_and_swap:
            return
        base = storage.put("ptr", b"base").version
        assert base is not None
        winners: list[int] = []

        def attempt(i: int) -> None:
            try:
                storage.put("ptr", f"writer-{i}".encode(), mode=base)
                winners.append(i)
            except PreconditionFailed:
                pass

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1, winners
        assert storage.get("ptr") == f"writer-{winners[0]}".encode()

    def test_delete_is_idempotent(self, storage: Storage) -> None:
        storage.put("d/x", b"1")
        storage.delete("d/x")
        storage.delete("d/x")
        try:
            storage.get("d/x")
        except NotFound:
            return
        raise AssertionError("a deleted key must be gone")

    def test_list_prefix(self, storage: Storage) -> None:
        for key in ("s1/a", "s1/sub/b", "s2/c", "top"):
            storage.put(key, key.encode())
        assert sorted(o.key for o in storage.list("s1/")) == ["s1/a", "s1/sub/b"]
        found = {o.key: o for o in storage.list()}
        assert {"s1/a", "s1/sub/b", "s2/c", "top"} <= set(found)
        assert found["s1/sub/b"].size == len(b"s1/sub/b")
        assert list(storage.list("nothing-here/")) == []

    def test_head_reports_size_and_version(self, storage: Storage) -> None:
        put = storage.put("h", b"12345")
        head = storage.head("h")
        assert head.size == 5
        if storage.capabilities.compare_and_swap:
            assert head.version == put.version

    def test_binary_safe_large_object(self, storage: Storage) -> None:
        blob = bytes(range(256)) * (3 * 4096 + 17)
        storage.put("big/blob", blob)
        assert storage.get("big/blob") == blob
        assert storage.get("big/blob", 4096, 4096 + 300) == blob[4096:4396]

    def test_keys_that_escape_are_rejected(self, storage: Storage) -> None:
        for key in ("../x", "/abs", "a/../b", "a\\b", "a\x00b", "", "a//b"):
            try:
                storage.put(key, b"x")
            except ValueError:
                continue
            raise AssertionError(f"key {key!r} must be rejected")


class FaultInjectingStorage:
    """Wraps a backend and fails chosen calls, to test what callers do when storage misbehaves.

    ``fail_on(predicate)`` makes every call for which ``predicate(method, key, call_index)`` is true
    raise ``error`` (a ``StorageError`` by default) before reaching the wrapped backend, or, with
    ``short_write=True``, store only the first half of a ``put`` and then raise, or, with ``hang=seconds``,
    block for that long and then raise a ``StorageError`` saying the call timed out (what a backend
    raises when its client's read or connect timeout expires). A hang never reaches the wrapped backend;
    ``heal()`` releases a call that is still hanging early (it still fails).
    """

    def __init__(self, inner: Storage):
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.calls: list[tuple[str, str]] = []
        self._predicate: Callable[[str, str, int], bool] | None = None
        self._error: BaseException | None = None
        self._short_write = False
        self._hang: float | None = None
        self._released = threading.Event()
        self._lock = threading.Lock()

    def fail_on(self, predicate: Callable[[str, str, int], bool], error: BaseException | None = None,
                short_write: bool = False, hang: float | None = None) -> None:
        if hang is not None and not 0 <= hang < float("inf"):
            raise ValueError(f"hang must be a finite number of seconds, not {hang!r}")
        if hang is not None and (short_write or error is not None):
            raise ValueError("hang= cannot be combined with short_write= or error=")
        self._released.clear()
        self._predicate = predicate
        self._error = error
        self._short_write = short_write
        self._hang = hang

    def heal(self) -> None:
        self._predicate = None
        self._released.set()

    def _check(self, method: str, key: str) -> bool:
        with self._lock:
            index = len(self.calls)
            self.calls.append((method, key))
        if self._predicate is not None and self._predicate(method, key, index):
            if self._hang is not None:
                started = time.monotonic()
                self._released.wait(self._hang)
                raise StorageError(f"{self.url}/{key}: {method} timed out after "
                                   f"{time.monotonic() - started:.2f}s (injected hang)")
            if method == "put" and self._short_write:
                return True
            raise self._error or StorageError(f"{self.url}/{key}: injected fault in {method}")
        return False

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        self._check("get", key)
        return self.inner.get(key, start, end)

    def read_into(self, key: str, offset: int, out: memoryview) -> None:
        self._check("read_into", key)
        self.inner.read_into(key, offset, out)

    def read_pieces(self, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Iterator[memoryview]:
        # Each piece is a read_into call of this wrapper, so faults apply to (and calls record) every piece.
        return read_in_pieces(self, key, offset, out, piece_size)

    def read_pieces_direct(self, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Iterator[memoryview]:
        # A backend's reads past the page cache (LocalStorage's, for a cold restore): the same read_into
        # calls, so faults apply to them too (forwarded, cold local restores bypassed faults).
        return read_in_pieces(self, key, offset, out, piece_size)

    def read_through(self, key: str, offset: int, nbytes: int, buffer: memoryview) -> Iterator[memoryview]:
        # The same: every piece a read_into call of this wrapper (forwarded, in-place restores bypassed faults).
        return read_through_buffer(self, key, offset, nbytes, buffer)

    def put(self, key: str, data: Buffer | Iterable[Buffer], mode: PutMode = "overwrite") -> ObjectInfo:
        if self._check("put", key):
            blob = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else b"".join(data)
            self.inner.put(key, blob[: len(blob) // 2], mode="overwrite")
            raise StorageError(f"{self.url}/{key}: injected short write")
        return self.inner.put(key, data, mode)

    def head(self, key: str) -> ObjectInfo:
        self._check("head", key)
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self._check("delete", key)
        self.inner.delete(key)

    def list(self, prefix: str = ""):
        self._check("list", prefix)
        return self.inner.list(prefix)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
