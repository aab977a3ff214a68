"""In-process memory backend: fast, enforces every condition, and forgets everything at exit.

Stores are shared per URL within a process (``memory://run1`` opened twice sees the same objects), the
way fsspec's memory filesystem behaves, so a job and its tests can hand a URL around.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Iterator

from ckptstore.errors import AlreadyExists, NotFound, PreconditionFailed
from ckptstore.storage.interface import (
    Buffer,
    Capabilities,
    ObjectInfo,
    PutMode,
    StorageBase,
    Version,
    check_key,
    join_buffers,
)


class _Bucket:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, tuple[bytes, Version, float]] = {}
        self.counter = itertools.count(1)


_BUCKETS: dict[str, _Bucket] = {}
_BUCKETS_LOCK = threading.Lock()


class MemoryStorage(StorageBase):
    """Objects held in a dict; versions are a per-bucket counter."""

    capabilities = Capabilities(conditional_create=True, compare_and_swap=True, ranged_get=True, durable=False)
    io_workers = 2
    # Reads in 8 MiB pieces, each checksummed right after it lands, while it is still in cache.
    read_piece_size = 8 << 20

    def __init__(self, name: str = ""):
        self.url = f"memory://{name}"
        with _BUCKETS_LOCK:
            self._bucket = _BUCKETS.setdefault(name, _Bucket())

    def _get(self, key: str) -> tuple[bytes, Version, float]:
        try:
            return self._bucket.objects[check_key(key)]
        except KeyError:
            raise NotFound(f"{self.url}/{key}: not found") from None

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return self._get(key)[0][start:end]

    def put(self, key: str, data: Buffer | Iterable[Buffer], mode: PutMode = "overwrite") -> ObjectInfo:
        blob = bytes(join_buffers(data))
        check_key(key)
        b = self._bucket
        with b.lock:
            current = b.objects.get(key)
            if mode == "create" and current is not None:
                raise AlreadyExists(f"{self.url}/{key}: already exists (create-only put)")
            if isinstance(mode, Version) and (current is None or current[1] != mode):
                raise PreconditionFailed(f"{self.url}/{key}: changed since version {mode.token} was read")
            if mode not in ("create", "overwrite") and not isinstance(mode, Version):
                raise ValueError(f"invalid put mode {mode!r}")
            version = Version(str(next(b.counter)))
            now = time.time()
            b.objects[key] = (blob, version, now)
        return ObjectInfo(key, len(blob), version, now)

    def head(self, key: str) -> ObjectInfo:
        blob, version, mtime = self._get(key)
        return ObjectInfo(key, len(blob), version, mtime)

    def delete(self, key: str) -> None:
        with self._bucket.lock:
            self._bucket.objects.pop(check_key(key), None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._bucket.lock:
            items = [(k, v) for k, v in self._bucket.objects.items() if k.startswith(prefix)]
        for key, (blob, version, mtime) in items:
            yield ObjectInfo(key, len(blob), version, mtime)


def open_url(url: str) -> MemoryStorage:
    """Factory for ``memory://NAME`` URLs."""
    return MemoryStorage(url.split("://", 1)[1].strip("/"))
