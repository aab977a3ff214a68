"""Plumbing shared by the object-store backends: bounded retries, cutting data into parts, joining futures.

Why our own loop rather than the clients': botocore and gcsfs each retry on their own schedule (gcsfs
sleeps up to 32 s between six attempts; botocore's budget is counted in attempts, not seconds), so a
dead endpoint could hold a training job for minutes. The backends switch client retries off and call
``retry_call``, which stops at whichever comes first: ``max_attempts`` or ``deadline`` seconds since the
first attempt. The caller decides what is transient; everything else propagates at once.

Every retry is also counted for whoever is watching: ``counting_retries()`` opens a tally in the calling
context, ``note_retry()`` adds to it (``retry_call`` does; so can a plugin with its own retry loop), and
``submit`` carries the caller's context into pool threads, so a save's ``TransferStats.retries`` includes
the retries of every request made on its behalf, in whichever thread.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ckptstore.storage.interface import Buffer, as_bytes_view

T = TypeVar("T")

logger = logging.getLogger("ckptstore.storage")


class RetryTally:
    """Requests retried after a transient error while a ``counting_retries()`` block ran (any thread)."""

    def __init__(self, parent: RetryTally | None = None):
        self._lock = threading.Lock()
        self._parent = parent
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1
        if self._parent is not None:
            self._parent.add()


_tally: contextvars.ContextVar[RetryTally | None] = contextvars.ContextVar("ckptstore_retries", default=None)


@contextmanager
def counting_retries() -> Iterator[RetryTally]:
    """Count the retries of every request made in this block, including threads started with ``submit``.

    Blocks nest: a retry counts in the innermost tally and in every tally around it.
    """
    tally = RetryTally(_tally.get())
    token = _tally.set(tally)
    try:
        yield tally
    finally:
        _tally.reset(token)


def note_retry() -> None:
    """Record one retried request in the caller's tally, if any (for storage plugins that retry)."""
    tally = _tally.get()
    if tally is not None:
        tally.add()


def submit(pool: Executor, fn: Callable[..., T], /, *args: Any) -> Future[T]:
    """``pool.submit(fn, *args)`` run in a copy of the caller's context (so its retries count for the caller)."""
    return pool.submit(contextvars.copy_context().run, fn, *args)


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often one storage operation is retried.

    Attributes:
        deadline: seconds from the first attempt after which no new attempt starts.
        max_attempts: attempts in total (1 = no retry).
        base_delay: the first backoff ceiling in seconds; it doubles per attempt ("full jitter": the
            actual sleep is uniform in ``[0, ceiling]``, which spreads out writers that failed together).
        max_delay: the largest backoff ceiling in seconds.
    """

    deadline: float = 30.0
    max_attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if self.deadline <= 0 or self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"invalid retry policy {self!r}")

    def delay(self, attempt: int) -> float:
        """The sleep before retry number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0.0, ceiling)


class RetriesExhausted(Exception):
    """The last transient error, re-raised once the policy gives up; ``attempts`` says how many ran."""

    def __init__(self, last: BaseException, attempts: int, elapsed: float):
        super().__init__(f"gave up after {attempts} attempt(s) in {elapsed:.1f}s")
        self.last = last
        self.attempts = attempts
        self.elapsed = elapsed


def retry_call(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    what: str,
) -> T:
    """Run ``fn`` until it succeeds, raises a non-transient error, or ``policy`` is spent.

    Args:
        what: names the operation in debug logs (a URL and verb; never credentials).

    Raises:
        RetriesExhausted: the last error was transient but no attempt is left; its ``last`` is that
            error (also chained as ``__cause__``).
    """
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            elapsed = time.monotonic() - start
            pause = policy.delay(attempt)
            if attempt >= policy.max_attempts or elapsed + pause >= policy.deadline:
                raise RetriesExhausted(e, attempt, elapsed) from e
            logger.debug("%s: transient %s (attempt %d), retrying in %.2fs", what, type(e).__name__, attempt, pause)
            note_retry()
            time.sleep(pause)


def split_parts(data: Buffer | Iterable[Buffer], part_size: int) -> Iterator[memoryview | bytes]:
    """Cut ``data`` into ``part_size`` pieces (the last may be shorter), consuming an iterable once.

    Slices of a large input buffer are views (no copy); only small pieces that must be glued together to
    reach ``part_size`` are copied, so at most one part is buffered here at a time.
    """
    pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    pending: list[memoryview] = []
    pending_len = 0
    emitted = False
    for piece in pieces:
        view = as_bytes_view(piece)
        while len(view):
            if not pending and len(view) >= part_size:
                emitted = True
                yield view[:part_size]
                view = view[part_size:]
                continue
            take = min(len(view), part_size - pending_len)
            pending.append(view[:take])
            pending_len += take
            view = view[take:]
            if pending_len == part_size:
                emitted = True
                yield b"".join(pending)
                pending, pending_len = [], 0
    if pending or not emitted:  # an empty input is one empty part
        yield b"".join(pending)


def split_upload(
    data: Buffer | Iterable[Buffer], part_size: int, threshold: int
) -> tuple[memoryview | bytes | None, Iterator[memoryview | bytes] | None]:
    """``(body, None)`` for data of at most ``threshold`` bytes, else ``(None, parts of part_size)``.

    One request per object up to the threshold (like s3transfer's ``multipart_threshold``): parts only pay
    off for objects big enough that one stream is the bottleneck; below that they add requests (S3:
    create + parts + complete; GCS: components + compose + deletes) and server-side reassembly. The
    threshold is rounded up to a multiple of ``part_size`` so every part but the last is full size.
    Buffering stays at most one ``threshold``-sized piece (slices of a single input buffer are views).
    """
    span = -(-max(threshold, part_size) // part_size) * part_size
    pieces = split_parts(data, span)
    first = next(pieces)
    second = next(pieces, None)
    if second is None:
        return first, None

    def parts() -> Iterator[memoryview | bytes]:
        for blob in itertools.chain((first, second), pieces):
            view = as_bytes_view(blob)
            for lo in range(0, len(view), part_size):
                yield view[lo : lo + part_size]

    return None, parts()


def wait_all(futures: list[Future[Any]]) -> list[Any]:
    """Results in submission order; on the first failure cancel the rest and raise it."""
    results = []
    try:
        for f in futures:
            results.append(f.result())
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return results


def redact_url(endpoint: str) -> str:
    """An endpoint URL without any ``user:password@`` part."""
    if not endpoint:
        return endpoint
    parts = urlsplit(endpoint)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return endpoint
