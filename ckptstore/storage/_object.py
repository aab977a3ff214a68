"""What the object-store backends (S3, GCS) share: the bucket URL and the sizes of parts, the thread pool
the parts of one call run on, secrets kept out of messages, telling a missing bucket from a missing key,
and reads of several ranges pinned to the version the first range saw."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from ckptstore.errors import NotFound, StorageError
from ckptstore.storage._retry import RetriesExhausted, RetryPolicy, submit, wait_all
from ckptstore.storage.interface import Capabilities, StorageBase, as_bytes_view


class ObjectStoreBase(StorageBase):
    """A bucket (``scheme://bucket[/prefix]``) on an object store. Subclasses set the class attributes
    below and implement ``_read_range`` and ``_probe_bucket``."""

    schemes: tuple[str, ...] = ()  # URL schemes accepted; the first is the one ``url`` uses
    what: str = ""  # how messages name the kind of URL: "an S3 URL"
    min_part_size: int = 0
    min_part_size_text: str = ""  # how messages state it
    capabilities = Capabilities(conditional_create=True, compare_and_swap=True, ranged_get=True, durable=True)
    # Chunks read or shards written at once. Each call fans out into up to ``max_concurrency`` part
    # requests of its own, so 4 keeps ~8-16 requests in flight; 8 here doubled restore time and client
    # CPU on loopback servers (threads contending for the GIL in socket reads). A high-latency link may
    # want more: ``CheckpointStore(workers=...)``.
    io_workers = 4
    # Ordinary pages for restore destinations: with THP the loopback benchmark's restores stalled on
    # compaction (0.3-1.2 s per 260 MiB against a steady 0.41-0.54 s); see transfer.empty_aligned.
    huge_page_destinations = False

    def _configure(self, url: str, part_size: int, multipart_threshold: int, max_concurrency: int,
                   retry: RetryPolicy | None) -> None:
        """Parse ``url`` and check and keep the sizes (``ValueError`` naming what is wrong)."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in self.schemes or not rest.strip("/"):
            raise ValueError(f"not {self.what}: {url!r} (expected {self.schemes[0]}://bucket[/prefix])")
        if part_size < self.min_part_size:
            raise ValueError(f"part_size must be at least {self.min_part_size_text}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if multipart_threshold < 0:
            raise ValueError("multipart_threshold must not be negative")
        bucket, _, prefix = rest.strip("/").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"{self.schemes[0]}://{bucket}/{prefix.strip('/')}".rstrip("/")
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self._secrets: list[str] = []
        self._bucket_checked = False
        self._closed = False
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- the thread pool ---------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise StorageError(f"{self.url}: storage is closed")
            if self._pool is None:
                name = f"ckptstore-{self.schemes[0]}"
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix=name)
            return self._pool

    def _close_pool(self) -> None:
        """Refuse further calls and wait for the parts in flight."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- messages ----------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    @staticmethod
    def _unwrap(e: BaseException) -> tuple[BaseException, str]:
        """The error to translate, and what to add to its message when the retries gave up on it."""
        if isinstance(e, RetriesExhausted):
            return e.last, f" (gave up after {e.attempts} attempts in {e.elapsed:.1f}s)"
        return e, ""

    def _check_bucket(self, op: str, key: str) -> None:
        """Tell "missing bucket" from "missing key" when a 404 does not say which (once per backend)."""
        if self._bucket_checked:
            return
        try:
            self._probe_bucket(op, key)
        except NotFound:
            raise StorageError(f"{self._where(key)}: {op} failed: bucket {self.bucket!r} does not exist") from None
        except StorageError as e:
            # Reading the bucket's metadata may be forbidden while reading its objects is not.
            if "access denied" not in str(e):
                raise
        self._bucket_checked = True

    def _probe_bucket(self, op: str, key: str) -> None:
        """One request about the bucket itself: ``NotFound`` if it does not exist."""
        raise NotImplementedError

    # -- reads -------------------------------------------------------------------------------------
    @staticmethod
    def _check_range(start: int | None, end: int | None) -> None:
        if (start is not None and start < 0) or (end is not None and end < 0):
            raise ValueError("negative offsets are not supported")

    def read_into(self, key: str, offset: int, out: memoryview) -> None:
        """Ranges of ``part_size``, in parallel after the first: it says which version of the object is
        there (an ETag, a generation), and the others ask for that version only, so an object replaced
        mid-read fails loudly instead of yielding a mix of old and new bytes."""
        view = as_bytes_view(out)
        if offset < 0:
            raise ValueError("negative offsets are not supported")
        if len(view) == 0:
            self.head(key)
            return
        first = min(len(view), self.part_size)
        version = self._read_range(key, offset, view[:first], None)
        if first == len(view):
            return
        pool = self._executor()
        futures = [submit(pool, self._read_range, key, offset + lo, view[lo:lo + self.part_size], version)
                   for lo in range(first, len(view), self.part_size)]
        wait_all(futures)

    def _read_range(self, key: str, offset: int, view: memoryview, version: str | None) -> str | None:
        """Fill ``view`` from ``offset`` of ``key`` — of that ``version`` only, if given — and return the
        version read."""
        raise NotImplementedError
