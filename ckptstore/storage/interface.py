"""The storage contract: bytes in, bytes out, under ``/``-separated keys relative to a backend root.

A backend knows nothing of steps or tensors. It must be honest: ``Capabilities`` says what it truly
enforces, and a write mode it cannot enforce raises ``Unsupported`` instead of silently overwriting.

Rules every backend follows (``ckptstore.testing.StorageContract`` checks them):

1. A missing key raises ``NotFound`` from ``get``, ``read_into`` and ``head``; ``delete`` of a missing
   key is a no-op (deletes are idempotent, so an interrupted prune can simply be repeated).
2. ``put(mode="create")`` raises ``AlreadyExists`` when the key exists; ``put(mode=Version(v))`` raises
   ``PreconditionFailed`` unless the key's current version is ``v``. Both are atomic with respect to
   concurrent writers when ``capabilities`` says so; otherwise they raise ``Unsupported``.
3. A reader sees either the whole old object or the whole new one, never a torn write.
4. Every native error (``OSError``, botocore, gcsfs ...) is translated at the backend boundary into
   ``ckptstore.errors``; messages name the URL and the operation and never contain credentials.
5. ``list(prefix)`` returns every key under the prefix, recursively, in no particular order.

Parallelism lives above this layer (``ckptstore.transfer`` runs calls from a thread pool), so every
method must be safe to call from several threads at once.

A backend that retries a request after a transient error calls ``ckptstore.storage.note_retry()`` once
per retry, so the retry shows in the calling save's or restore's ``TransferStats.retries``; requests it
runs on threads of its own are started in a copy of the caller's context (``contextvars``) so they count
for the call that caused them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Capabilities:
    """What a backend truly enforces, not what it would like to.

    Attributes:
        conditional_create: ``put(mode="create")`` is atomic against concurrent writers.
        compare_and_swap: ``put(mode=Version(...))`` is atomic against concurrent writers.
        ranged_get: ``get(start=, end=)`` fetches only the requested bytes.
        durable: committed objects survive the writing process (false for ``memory://``).
    """

    conditional_create: bool
    compare_and_swap: bool
    ranged_get: bool
    durable: bool


@dataclass(frozen=True)
class Version:
    """An opaque object version (ETag, generation, inode+mtime) for compare-and-swap writes."""

    token: str


PutMode = Literal["overwrite", "create"] | Version


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head``/``list``/``put`` report about one stored object."""

    key: str
    size: int
    version: Version | None = None
    mtime: float | None = None  # seconds since the epoch, by the storage's clock


@runtime_checkable
class Storage(Protocol):
    """A key-value byte store rooted at ``url``."""

    url: str
    capabilities: Capabilities
    io_workers: int  # how many calls are worth running at once (threads in ckptstore.transfer)
    read_piece_size: int  # split large reads into calls of this size (0: one call per range)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Return bytes ``[start, end)`` of ``key`` (the whole object by default)."""
        ...

    def read_into(self, key: str, offset: int, out: memoryview) -> None:
        """Fill ``out`` with ``len(out)`` bytes of ``key`` starting at ``offset``.

        A short object raises ``StorageError``; this is the zero-copy path restores use.
        """
        ...

    def put(self, key: str, data: Buffer | Iterable[Buffer], mode: PutMode = "overwrite") -> ObjectInfo:
        """Store ``data`` (one buffer, or an iterable of buffers consumed once, in order) under ``key``."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Describe ``key`` without reading it."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``."""
        ...

    def close(self) -> None:
        """Release connections and threads. The backend is unusable afterwards."""
        ...


class StorageBase:
    """Optional base class with generic fallbacks for the convenience parts of the contract."""

    url: str
    capabilities: Capabilities
    io_workers: int = 8  # remote stores hide latency behind concurrency
    read_piece_size: int = 0  # remote stores split a big range into concurrent GETs themselves
    # How many reads a restore runs at once; optional, ``io_workers`` when absent or None.
    read_workers: int | None = None
    # Whether restores may allocate their destination arrays with transparent huge pages (see
    # ``ckptstore.transfer.empty_aligned``); optional, True when absent.
    huge_page_destinations: bool = True

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        raise NotImplementedError

    def read_into(self, key: str, offset: int, out: memoryview) -> None:
        data = self.get(key, offset, offset + len(out))
        if len(data) != len(out):
            from ckptstore.errors import StorageError

            raise StorageError(
                f"{self.url}/{key}: expected {len(out)} bytes at offset {offset}, object has {len(data)}"
            )
        out[:] = data

    def read_pieces(self, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Iterator[memoryview]:
        """Fill ``out`` like ``read_into``, in calls of at most ``piece_size`` bytes (default
        ``read_piece_size``; one call when both are 0), yielding each filled piece of ``out`` as it lands
        — so the caller checksums it while it is in cache. Where the pieces are cut is the backend's
        choice (``LocalStorage`` cuts them where the destination's pages start); callers use each
        piece's length. Optional: restores fall back to this loop of ``read_into`` calls; a backend
        overrides it to keep one handle open for all the pieces."""
        return read_in_pieces(self, key, offset, out, piece_size)

    def read_through(self, key: str, offset: int, nbytes: int, buffer: memoryview) -> Iterator[memoryview]:
        """Read ``nbytes`` from ``offset`` through ``buffer``: fill it (the last time, the part needed)
        again and again, yielding the filled part each time, to be used before the next one lands (an
        in-place restore checks each piece and copies it into place). Optional, like ``read_pieces``;
        restores fall back to a loop of ``read_into`` calls."""
        return read_through_buffer(self, key, offset, nbytes, buffer)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def read_in_pieces(storage: Storage, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Iterator[memoryview]:
    """``read_pieces`` as a loop of ``storage.read_into`` calls: the fallback for any backend."""
    step = piece_size or storage.read_piece_size or len(out) or 1
    for i in range(0, len(out), step):
        piece = out[i : i + step]
        storage.read_into(key, offset + i, piece)
        yield piece


def read_through_buffer(storage: Storage, key: str, offset: int, nbytes: int, buffer: memoryview) -> Iterator[memoryview]:
    """``read_through`` as a loop of ``storage.read_into`` calls: the fallback for any backend."""
    step = len(buffer)
    for i in range(0, nbytes, step):
        piece = buffer[: min(step, nbytes - i)]
        storage.read_into(key, offset + i, piece)
        yield piece


def join_buffers(data: Buffer | Iterable[Buffer]) -> bytes | memoryview:
    """One contiguous buffer for backends whose client needs one (copies only when given several)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    return b"".join(data)


def as_bytes_view(buf: Buffer) -> memoryview:
    """A flat unsigned-byte view of any C-contiguous buffer."""
    mv = memoryview(buf)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def check_key(key: str) -> str:
    """Reject keys that could escape the backend root (``..``, absolute, backslash, NUL, empty parts)."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid storage key {key!r}")
    return key
