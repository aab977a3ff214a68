"""Generic backend over any fsspec filesystem (``hdfs://``, ``az://``, ``sftp://`` ...).

fsspec offers no portable conditional write, so this backend is honest about it: its capabilities
report no conditional create and no compare-and-swap, and ``put`` with those modes raises
``Unsupported``. The commit layer then falls back to check-then-write, which is safe for one writer per
model_dir and says so in a warning. S3 and GCS have dedicated backends that do enforce conditions.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

from ckptstore.errors import NotFound, StorageError, Unsupported
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


def _mtime(info: dict[str, Any]) -> float | None:
    for field in ("mtime", "LastModified", "updated", "created"):
        value = info.get(field)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return None


class FsspecStorage(StorageBase):
    """Any fsspec filesystem, rooted at ``url``."""

    capabilities = Capabilities(conditional_create=False, compare_and_swap=False, ranged_get=True, durable=True)

    def __init__(self, url: str, **storage_options: Any):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, check_key(key))

    def _error(self, op: str, key: str, e: Exception) -> Exception:
        if isinstance(e, FileNotFoundError):
            return NotFound(f"{self.url}/{key}: not found ({op})")
        return StorageError(f"{self.url}/{key}: {op} failed: {type(e).__name__}: {e}")

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        try:
            return self.fs.cat_file(self._path(key), start=start, end=end)
        except Exception as e:
            raise self._error("get", key, e) from e

    def put(self, key: str, data: Buffer | Iterable[Buffer], mode: PutMode = "overwrite") -> ObjectInfo:
        if mode != "overwrite":
            what = "create-only" if mode == "create" else "compare-and-swap"
            raise Unsupported(f"{self.url}: {what} writes are not enforceable through generic fsspec")
        path = self._path(key)
        try:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            self.fs.pipe_file(path, bytes(join_buffers(data)))
        except Exception as e:
            raise self._error("put", key, e) from e
        return self.head(key)

    def head(self, key: str) -> ObjectInfo:
        try:
            info = self.fs.info(self._path(key))
        except Exception as e:
            raise self._error("head", key, e) from e
        if info.get("type") == "directory":
            raise NotFound(f"{self.url}/{key}: not found (head; it is a directory)")
        return self._object(key, info)

    def _object(self, key: str, info: dict[str, Any]) -> ObjectInfo:
        token = info.get("ETag") or info.get("etag") or info.get("generation")
        return ObjectInfo(key, int(info.get("size") or 0), Version(str(token)) if token else None, _mtime(info))

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            return
        except Exception as e:
            raise self._error("delete", key, e) from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            found = self.fs.find(self.root, detail=True, withdirs=False)
        except FileNotFoundError:
            return
        except Exception as e:
            raise self._error("list", prefix, e) from e
        for path, info in found.items():
            key = posixpath.relpath(self.fs._strip_protocol(path), self.fs._strip_protocol(self.root))
            if key.startswith(prefix) and info.get("type") != "directory":
                yield self._object(key, info)

    def close(self) -> None:
        pass
