"""The benchmark engine behind ``ckptstore bench``: ckptstore next to a raw writer/reader, in one run.

Why it measures this way: absolute throughput on a shared machine or a loopback object store says little,
so every ckptstore operation is paired with a raw baseline doing the same job on the same storage with
the same concurrency — plain writes of the same tensor bytes (on local disk fsync'd, with writeback
started every 8 MiB as ckptstore's own backend does), plain reads into
page-aligned buffers — and the two are interleaved within each repetition (their order alternates), so
noise hits both alike. The ratio ckptstore/raw is the number to read. The raw baseline is a ceiling,
not a peer: it writes no manifest, computes no checksums and allocates one buffer per file instead of
one array per tensor.

Cold restores need the page cache emptied of the checkpoint's files. On local disk that is done with
``posix_fadvise(POSIX_FADV_DONTNEED)`` on each file after it is synced (targeted: it leaves other
processes' caches alone) or, when asked and permitted, by writing to ``/proc/sys/vm/drop_caches``. Remote
stores have caches this process cannot reach, so their cold restore is reported as not measured.

A warm restore is timed twice back to back and the faster run counts, for both sides: fresh destination
memory in a process that has just allocated and freed gigabytes may wait, at random, on transparent
huge-page compaction (single warm runs of 1 GiB here spread 0.2-1.8 s), and one stall would decide a
repetition's ratio.

Library code: the CLI only formats what ``run`` returns, and ``benchmarks/`` reuses the model generator,
the memory sampler and the cache dropper.
"""

from __future__ import annotations

import gc
import inspect
import json
import math
import os
import platform
import re
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckptstore.format import ALIGN, DEFAULT_MAX_SHARD_SIZE, LayoutPlan, plan_layout
from ckptstore.manager import CheckpointStore, __version__
from ckptstore.storage.interface import Storage
from ckptstore.storage.local import LocalStorage, start_writeback
from ckptstore.storage.registry import open_storage, split_scheme
from ckptstore.transfer import byte_view, empty_aligned, readers

SCHEMA = "ckptstore-bench/1"
PRESETS = ("few-large", "many-small", "mixed")
OPERATIONS = ("save", "restore_cold", "restore_warm", "save_blocked")
OPERATION_LABELS = {"save": "durable save", "restore_cold": "cold restore", "restore_warm": "warm restore",
                    "save_blocked": "background save, time blocked"}
IMPLEMENTATIONS = ("ckptstore", "raw")
COLD_METHODS = ("auto", "fadvise", "drop-caches", "off")

LARGE_TENSOR = 64 << 20
SMALL_AVERAGE = 256 << 10
MAX_TENSORS = 20_000

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``"1GiB"`` -> 1073741824, ``"500MB"`` -> 500000000, ``"4096"`` -> 4096 (binary and decimal units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64MiB, 1GiB, 500MB)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def format_size(n: float) -> str:
    """Binary units with three significant digits: ``1.00 GiB``, ``64.0 MiB``, ``512 B``."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "TiB":
            break
    return f"{n:.2f} {unit}" if abs(n) < 10 else f"{n:.1f} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"


def format_seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


# ---------------------------------------------------------------------------------------------
# The synthetic model
# ---------------------------------------------------------------------------------------------


def _split_evenly(total: int, count: int, itemsize: int) -> list[int]:
    units = total // itemsize
    base, extra = divmod(units, count)
    return [(base + (1 if i < extra else 0)) * itemsize for i in range(count)]


def _log_uniform(total: int, count: int, itemsize: int, rng: np.random.Generator) -> list[int]:
    """``count`` sizes spread log-uniformly over two decades, scaled to add up to about ``total``."""
    if count <= 0 or total <= 0:
        return []
    raw = np.exp(rng.uniform(0.0, math.log(100.0), count))
    units = np.maximum(1, np.floor(raw / raw.sum() * (total // itemsize))).astype(np.int64)
    return [int(u) * itemsize for u in units]


def tensor_sizes(total_bytes: int, preset: str, num_tensors: int | None = None, *, itemsize: int = 4,
                 seed: int = 0) -> list[int]:
    """Byte sizes of the synthetic model's tensors for a preset.

    - ``few-large``: equal tensors of about 64 MiB (16 for 1 GiB);
    - ``many-small``: about 256 KiB on average, spread over two decades (4096 for 1 GiB, at most 20k);
    - ``mixed``: 94% of the bytes in 64 MiB tensors, the rest in 200 small ones — the shape of a real
      model with its biases, norms and optimizer scalars.

    ``num_tensors`` overrides the count (for ``mixed``: the total count, of which the large ones come first).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if num_tensors is not None and num_tensors < 1:
        raise ValueError(f"the tensor count must be at least 1, got {num_tensors}")
    total_bytes = max(itemsize, total_bytes // itemsize * itemsize)
    rng = np.random.default_rng(seed)
    if preset == "few-large":
        count = num_tensors or max(1, round(total_bytes / LARGE_TENSOR))
        return _split_evenly(total_bytes, min(count, total_bytes // itemsize), itemsize)
    if preset == "many-small":
        count = num_tensors or max(1, min(MAX_TENSORS, total_bytes // SMALL_AVERAGE))
        return _log_uniform(total_bytes, min(count, total_bytes // itemsize), itemsize, rng)
    large_bytes = int(total_bytes * 0.94)
    n_large = max(1, round(large_bytes / LARGE_TENSOR))
    n_small = 200 if num_tensors is None else max(0, num_tensors - n_large)
    if num_tensors is not None and num_tensors <= n_large:
        n_large, n_small, large_bytes = num_tensors, 0, total_bytes
    sizes = _split_evenly(large_bytes, n_large, itemsize)
    return sizes + _log_uniform(total_bytes - sum(sizes), n_small, itemsize, rng)


def synthetic_model(sizes: Sequence[int], *, dtype: str = "float32", seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors of the given byte sizes, named like TF variables (``layer_0003/kernel``)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    model: dict[str, np.ndarray] = {}
    for i, nbytes in enumerate(sizes):
        n = nbytes // dt.itemsize
        if dt.kind == "f":
            arr = rng.random(n, dtype=np.float32).astype(dt, copy=False)
        else:
            arr = rng.integers(0, 256, nbytes, dtype=np.uint8).view(dt)
        if n % 1024 == 0 and n >= 1024 * 4:
            arr = arr.reshape(n // 1024, 1024)
        model[f"layer_{i:04d}/{'kernel' if nbytes >= (1 << 20) else 'bias'}"] = arr
    return model


def describe_sizes(sizes: Sequence[int]) -> str:
    """``15 × 64.2 MiB + 200 small (≤ 1.17 MiB)``."""
    threshold = 2 << 20
    large = [s for s in sizes if s >= threshold]
    small = [s for s in sizes if s < threshold]
    parts = []
    if large:
        if max(large) <= min(large) * 1.01:
            parts.append(f"{len(large)} × {format_size(max(large))}")
        else:
            parts.append(f"{len(large)} large ({format_size(min(large))}–{format_size(max(large))})")
    if small:
        parts.append(f"{len(small)} small (≤ {format_size(max(small))})")
    return " + ".join(parts)


# ---------------------------------------------------------------------------------------------
# Measuring memory and dropping caches
# ---------------------------------------------------------------------------------------------


def current_rss() -> int:
    """Resident set size of this process in bytes (psutil when installed, ``/proc`` otherwise)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        # Only the lifetime peak is available here; deltas will read as zero.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """The peak resident set size during a ``with`` block; ``peak_extra`` is the peak above the level
    at its start.

    Exact where Linux allows it: the kernel's high-water mark (``VmHWM``), reset on entry through
    ``/proc/self/clear_refs``. Otherwise sampled every ``interval`` seconds by a background thread —
    which takes the GIL each time it wakes, and so slows what it measures when that holds the GIL
    often: sampling every 2 ms slowed a warm restore of 10k small tensors from 0.229 to 0.277 s per
    GiB here, and left the large-tensor restore as it was (0.190 / 0.192 s; 9 interleaved repetitions)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start_rss = 0
        self.peak = 0
        self.exact = False  # whether the peak is the kernel's high-water mark (else sampled)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.start_rss = self.peak = current_rss()
        self.exact = _reset_peak_rss()
        if not self.exact:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ckptstore-rss", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss())

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self.exact:
            self.peak = max(self.peak, _peak_rss())
        self.peak = max(self.peak, current_rss())

    @property
    def peak_extra(self) -> int:
        return max(0, self.peak - self.start_rss)


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _peak_rss() > 0
    except OSError:
        return False


def _peak_rss() -> int:
    """This process's RSS high-water mark (``VmHWM``) in bytes; 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cold_cache_method(url: str, requested: str = "auto") -> tuple[str | None, str]:
    """Which way caches can be dropped for ``url``: (method or None, a sentence saying so)."""
    if requested not in COLD_METHODS:
        raise ValueError(f"unknown cold-cache method {requested!r} (choose from {', '.join(COLD_METHODS)})")
    if requested == "off":
        return None, "not measured (--cold off)"
    scheme, _ = split_scheme(url)
    if scheme != "file":
        return None, f"not measured: {scheme}:// storage keeps caches this process cannot drop"
    can_fadvise = hasattr(os, "posix_fadvise")
    can_drop = os.access("/proc/sys/vm/drop_caches", os.W_OK)
    if requested == "drop-caches" or (requested == "auto" and not can_fadvise and can_drop):
        if not can_drop:
            return None, "not measured: /proc/sys/vm/drop_caches is not writable (needs root)"
        return "drop-caches", "sync + echo 1 > /proc/sys/vm/drop_caches before each cold restore"
    if not can_fadvise:
        return None, "not measured: this OS has no posix_fadvise and drop_caches is not writable"
    return "fadvise", "posix_fadvise(POSIX_FADV_DONTNEED) on every file after fsync, before each cold restore"


def _files(root: str) -> list[str]:
    return [root] if os.path.isfile(root) else [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]


def fill_cache(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Evict ``paths`` (files or directories, walked) from the page cache, then read them through it
    sequentially, so that restores of them are warm — and every checkpoint's files are cached the same
    way, whichever reader touched them last.

    A restore does not leave its files cached when it read them past the cache
    (``LocalStorage.read_pieces_direct``), so the warm case cannot rely on the cold restore before it.
    Nor can it keep what a reader did leave cached: the kernel caches a file read in long sequential
    streams in large folios (up to 2 MiB), and one read a run at a time, each run from a fresh open, in
    small ones, which later copies out of the cache pay for (more lookups per byte). Until 2026-12-07
    this read only what was not cached: the large checkpoint, read past the cache, was cached anew
    sequentially, while the 10k-tensor one kept the small folios of its own cold restore (its warm
    restore measured 0.84-0.85x of the large one's that way, 0.86x with both evicted and read
    sequentially; 8 interleaved rounds, two processes each)."""
    paths = list(paths)
    if hasattr(os, "posix_fadvise"):
        drop_cache(paths, "fadvise")
    scratch = bytearray(8 << 20)
    for root in paths:
        for path in _files(os.fspath(root)):
            with open(path, "rb", buffering=0) as f:
                while f.readinto(scratch):
                    pass


def drop_cache(paths: Iterable[str | os.PathLike[str]], method: str) -> None:
    """Evict ``paths`` (files or directories, walked) from the page cache by ``method``."""
    if method == "drop-caches":
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return
    for root in paths:
        for path in _files(os.fspath(root)):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ---------------------------------------------------------------------------------------------
# The raw baseline
# ---------------------------------------------------------------------------------------------


def _parallel(tasks: Sequence[Callable[[], Any]], workers: int) -> list[Any]:
    if workers <= 1 or len(tasks) <= 1:
        return [t() for t in tasks]
    with ThreadPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        return list(pool.map(lambda t: t(), tasks))


BASELINES = ("backend", "fsspec")
# ckptstore backend options that are not fsspec filesystem options (dropped for the fsspec baseline).
_BACKEND_ONLY_OPTIONS = frozenset(
    {"part_size", "multipart_threshold", "max_concurrency", "retry", "connect_timeout", "read_timeout"}
)


def read_local_files(
    paths: Sequence[str | os.PathLike[str]], workers: int, into: Sequence[np.ndarray] | None = None
) -> list[np.ndarray]:
    """The raw local reader: each file into one page-aligned buffer (fresh, or ``into``'s: one per file,
    each exactly the file's size), one ``preadv`` per range. With more workers than files, each file is
    read as equal page-aligned ranges, so every worker has one long sequential read."""
    sizes = [os.path.getsize(p) for p in paths]
    if into is not None:
        if [len(b) for b in into] != sizes:
            raise ValueError(f"read_local_files: buffers of {[len(b) for b in into]} bytes for files of {sizes}")
        bufs = list(into)
    else:
        bufs = [empty_aligned((size,), np.dtype(np.uint8)) for size in sizes]
    per_file = max(1, workers // max(1, len(paths)))
    tasks = []
    for path, size, buf in zip(paths, sizes, bufs, strict=True):
        step = max(ALIGN, -(-size // per_file // ALIGN) * ALIGN)
        view = memoryview(buf)
        for start in range(0, size, step):
            tasks.append(lambda p=path, s=start, v=view[start : start + step]: _pread_all(p, s, v))
    _parallel(tasks, workers)
    return bufs


def _pread_all(path: str | os.PathLike[str], start: int, view: memoryview) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], start + done)
            if n == 0:
                raise OSError(f"{path}: short read at {start + done}")
            done += n
    finally:
        os.close(fd)


class RawBaseline:
    """Plain writes of a layout plan's bytes (no padding, no checksums, no manifest) and aligned reads.

    On local disk: ``os.write`` + ``fsync`` per file and one directory fsync; with ``writeback=True``,
    also ``start_writeback`` of every 8 MiB written (as ``LocalStorage`` does). On any other URL, with
    ``baseline="backend"``: the backend's own ``put``/``read_into``, the calls ckptstore makes, without
    anything around them (isolates ckptstore's overhead above its backend). With ``baseline="fsspec"``:
    the plain fsspec client of the URL (s3fs, gcsfs, ...) — ``fs.pipe`` of each file's bytes (prepared
    before the clock starts, see ``prepare``) and ``fs.cat``, ``workers`` files at a time — what a user
    would write without ckptstore.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, baseline: str = "backend",
                 *, writeback: bool = False):
        if baseline not in BASELINES:
            raise ValueError(f"unknown baseline {baseline!r} (choose from {', '.join(BASELINES)})")
        self.url = url
        self.writeback = writeback
        scheme, _ = split_scheme(url)
        self.local_root: Path | None = None
        self.storage: Storage | None = None
        self.fs: Any = None
        self._blobs: list[bytes] = []
        if scheme == "file":
            path = url[len("file://"):] if url.startswith("file://") else url
            self.local_root = Path(path)
            self.local_root.mkdir(parents=True, exist_ok=True)
        elif baseline == "fsspec":
            import fsspec

            options = {k: v for k, v in dict(storage_options or {}).items() if k not in _BACKEND_ONLY_OPTIONS}
            self.fs, self._root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
            self._root = self._root.rstrip("/")
        else:
            self.storage = open_storage(url, **dict(storage_options or {}))
        self.sizes: list[int] = []

    def _fs_path(self, index: int) -> str:
        return f"{self._root}/file-{index:05d}.bin"

    def prepare(self, arrays: Mapping[str, np.ndarray], plan: LayoutPlan) -> None:
        """Untimed set-up: the fsspec baseline's file contents as bytes (``fs.pipe`` takes bytes)."""
        if self.fs is None:
            return
        views = {name: byte_view(a) for name, a in arrays.items()}
        self._blobs = [b"".join(views[pc.name][pc.start : pc.start + pc.nbytes] for pc in shard)
                       for shard in plan.shards]

    def save(self, arrays: Mapping[str, np.ndarray], plan: LayoutPlan, workers: int) -> None:
        views = {name: byte_view(a) for name, a in arrays.items()}
        self.sizes = [sum(pc.nbytes for pc in shard) for shard in plan.shards]

        def pieces(index: int) -> Iterable[memoryview]:
            for pc in plan.shards[index]:
                yield views[pc.name][pc.start : pc.start + pc.nbytes]

        if self.fs is not None:
            if len(self._blobs) != len(plan.shards):
                self.prepare(arrays, plan)
            self.fs.pipe({self._fs_path(i): blob for i, blob in enumerate(self._blobs)}, batch_size=workers)
            return

        def write(index: int) -> None:
            if self.storage is not None:
                self.storage.put(f"file-{index:05d}.bin", pieces(index))
                return
            assert self.local_root is not None
            fd = os.open(self.local_root / f"file-{index:05d}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                written = flushed = 0
                for piece in pieces(index):
                    while len(piece):
                        n = os.write(fd, piece)
                        piece, written = piece[n:], written + n
                    if self.writeback and written - flushed >= LocalStorage.writeback_window:
                        start_writeback(fd, flushed, written - flushed)
                        flushed = written
                os.fsync(fd)
            finally:
                os.close(fd)

        _parallel([lambda i=i: write(i) for i in range(len(plan.shards))], workers)
        if self.local_root is not None:
            fd = os.open(self.local_root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def restore(self, workers: int) -> list[Any]:
        if self.fs is not None:
            paths = [self._fs_path(i) for i in range(len(self.sizes))]
            got = self.fs.cat(paths, batch_size=workers)
            return [got[p] for p in paths]

        if self.storage is None:
            assert self.local_root is not None
            names = [f"file-{i:05d}.bin" for i in range(len(self.sizes))]
            # As many threads as ckptstore's restore of the same bytes runs: fewer when cached (``readers``).
            workers = readers(LocalStorage(self.local_root), names, workers)
            return read_local_files([self.local_root / name for name in names], workers)
        # A remote backend splits one call into concurrent ranged GETs itself: one call per file.
        bufs = [empty_aligned((size,), np.dtype(np.uint8)) for size in self.sizes]
        storage = self.storage
        _parallel([lambda i=i, b=b: storage.read_into(f"file-{i:05d}.bin", 0, memoryview(b)) for i, b in enumerate(bufs)],
                  workers)
        return bufs

    def close(self) -> None:
        self._blobs = []
        if self.storage is not None:
            self.storage.close()


# ---------------------------------------------------------------------------------------------
# Configuration and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark.

    Attributes:
        url: where to write (a path or backend URL); ``None``: a fresh temporary directory.
        total_bytes: the synthetic model's size.
        preset: tensor size mix, one of ``PRESETS``.
        num_tensors: override the preset's tensor count.
        max_shard_size: ckptstore's shard size limit (and the raw baseline's file grouping).
        workers: parallel storage calls for both ckptstore and the raw baseline (default: the backend's).
        repeat: repetitions; results report median, min and max.
        cold: how to drop caches before cold restores (``COLD_METHODS``).
        verify: ckptstore checks chunk checksums on restore (the default, as in production).
        storage_options: backend options (endpoint_url, key, secret ...).
        keep: leave the written files in place afterwards.
        seed: seed of the synthetic model.
        baseline: what "raw" is on a non-local URL: ``backend`` (ckptstore's own backend calls, no
            checksums/manifest/commit) or ``fsspec`` (the URL's plain fsspec client: s3fs, gcsfs ...).
    """

    url: str | None = None
    total_bytes: int = 1 << 30
    preset: str = "mixed"
    num_tensors: int | None = None
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
    workers: int | None = None
    repeat: int = 3
    cold: str = "auto"
    verify: bool = True
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    keep: bool = False
    seed: int = 0
    baseline: str = "backend"

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown baseline {self.baseline!r} (choose from {', '.join(BASELINES)})")
        if self.repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {self.repeat}")
        if self.total_bytes < 4:
            raise ValueError(f"the model size must be at least 4 bytes, got {self.total_bytes}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (choose from {', '.join(PRESETS)})")
        if self.cold not in COLD_METHODS:
            raise ValueError(f"unknown cold-cache method {self.cold!r} (choose from {', '.join(COLD_METHODS)})")


@dataclass(frozen=True)
class Series:
    """One implementation's timings and memory for one operation, over every repetition."""

    seconds: tuple[float, ...]
    peak_extra_rss: tuple[int, ...]
    nbytes: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self) -> dict[str, Any]:
        med = self.median
        return {
            "seconds": list(self.seconds),
            "median_s": med,
            "min_s": min(self.seconds),
            "max_s": max(self.seconds),
            "throughput_mb_s": self.nbytes / med / 1e6 if med > 0 else None,
            "peak_extra_rss_bytes": max(self.peak_extra_rss),
        }


@dataclass(frozen=True)
class BenchResult:
    """Everything a benchmark run measured; ``to_json`` is the ``--json`` document."""

    config: BenchConfig
    url: str
    sizes: tuple[int, ...]
    shards: int
    workers: int
    cold_method: str | None
    cold_note: str
    series: Mapping[str, Mapping[str, Series]]  # operation -> implementation -> Series
    environment: Mapping[str, Any]
    kept: bool

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def ratio(self, operation: str) -> float | None:
        """ckptstore throughput / raw throughput for ``operation`` (medians); None when not measured."""
        s = self.series.get(operation)
        if not s:
            return None
        ckpt, raw = s["ckptstore"].median, s["raw"].median
        return raw / ckpt if ckpt > 0 else None

    def to_json(self) -> dict[str, Any]:
        config = asdict(self.config)
        config["storage_options"] = sorted(self.config.storage_options)  # names only: never credentials
        return {
            "schema": SCHEMA,
            "url": self.url,
            "kept": self.kept,
            "config": config,
            "model": {
                "nbytes": self.nbytes,
                "num_tensors": len(self.sizes),
                "largest_tensor": max(self.sizes),
                "smallest_tensor": min(self.sizes),
                "dtype": "float32",
                "shards": self.shards,
            },
            "workers": self.workers,
            "cold_cache": {"method": self.cold_method, "note": self.cold_note},
            "environment": dict(self.environment),
            "results": {
                op: {
                    **{impl: s.summary() for impl, s in by_impl.items()},
                    "ratio": self.ratio(op),
                }
                for op, by_impl in self.series.items()
            },
            "not_measured": [op for op in OPERATIONS if op not in self.series],
        }


def environment() -> dict[str, Any]:
    """The facts a reader needs to interpret the numbers."""
    env: dict[str, Any] = {
        "ckptstore": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
    }
    try:
        env["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    if hasattr(os, "getloadavg"):
        env["loadavg"] = [round(x, 2) for x in os.getloadavg()]  # a busy machine explains wide min–max ranges
    return env


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

Progress = Callable[[str], None]


def _join(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}" if "://" in url else os.path.join(url, name)


def _remove(url: str, storage_options: Mapping[str, Any]) -> None:
    scheme, _ = split_scheme(url)
    if scheme == "file":
        path = url[len("file://"):] if url.startswith("file://") else url
        shutil.rmtree(path, ignore_errors=True)
        return
    storage = open_storage(url, **dict(storage_options))
    try:
        keys = [obj.key for obj in storage.list()]
        _parallel([lambda k=k: storage.delete(k) for k in keys], 8)
    finally:
        storage.close()


def _timed(fn: Callable[[], Any]) -> tuple[float, int]:
    gc.collect()
    with RssSampler() as rss:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
    del result
    gc.collect()
    return seconds, rss.peak_extra


def run(config: BenchConfig, progress: Progress | None = None,
        announce: Callable[[str], None] | None = None) -> BenchResult:
    """Run the benchmark described by ``config``.

    ``announce(url)`` is called once the location is known (a fresh temporary directory when
    ``config.url`` is None); ``progress(label)`` after each measurement.

    Everything goes under a fresh ``<url>/ckptstore-bench-<time>-<id>/`` (or the temporary directory);
    each repetition writes a checkpoint and a raw copy under its ``r<N>/`` and removes them at its end
    (unless ``keep``), so disk use stays at about twice the model size.
    """
    made_temp = config.url is None
    if config.url is None:
        url = tempfile.mkdtemp(prefix="ckptstore-bench-")
    else:
        # A fresh folder of its own under the given URL: never touches what is already there.
        url = config.url
        if split_scheme(url)[0] == "file" and "://" not in url:
            url = os.path.abspath(os.path.expanduser(url))
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        url = _join(url, f"ckptstore-bench-{stamp}-{uuid.uuid4().hex[:6]}")
    options = dict(config.storage_options)
    if announce is not None:
        announce(url)
    cold_method, cold_note = cold_cache_method(url, config.cold)
    sizes = tensor_sizes(config.total_bytes, config.preset, config.num_tensors, seed=config.seed)
    model = synthetic_model(sizes, seed=config.seed)
    series: dict[str, dict[str, list[tuple[float, int]]]] = {
        op: {impl: [] for impl in IMPLEMENTATIONS}
        for op in OPERATIONS
        if (op != "restore_cold" or cold_method) and (op != "save_blocked" or has_background_save())
    }
    workers = shards = 0
    notify = progress or (lambda label: None)
    try:
        for rep in range(config.repeat):
            rep_url = _join(url, f"r{rep}")
            workers, shards = _repetition(rep, rep_url, model, config, cold_method, series, notify)
            if not config.keep:
                _remove(rep_url, options)
    finally:
        if not config.keep:
            if made_temp:
                shutil.rmtree(url, ignore_errors=True)
            else:
                _remove(url, options)
    nbytes = sum(sizes)
    return BenchResult(
        config=config,
        url=url,
        sizes=tuple(sizes),
        shards=shards,
        workers=workers,
        cold_method=cold_method,
        cold_note=cold_note,
        series={
            op: {
                impl: Series(tuple(s for s, _ in runs), tuple(m for _, m in runs), nbytes)
                for impl, runs in by_impl.items()
            }
            for op, by_impl in series.items()
        },
        environment=environment(),
        kept=config.keep,
    )


def _repetition(
    rep: int,
    rep_url: str,
    model: Mapping[str, np.ndarray],
    config: BenchConfig,
    cold_method: str | None,
    series: dict[str, dict[str, list[tuple[float, int]]]],
    notify: Progress,
) -> tuple[int, int]:
    """One interleaved repetition: save, cold restore, warm restore — each by ckptstore and raw."""
    options = dict(config.storage_options)
    store = CheckpointStore(_join(rep_url, "ckptstore"), storage_options=options,
                            max_shard_size=config.max_shard_size, workers=config.workers)
    # A ceiling with the same disk technique as LocalStorage (writeback started every 8 MiB; a plain
    # write + fsync writer is 10-20% slower here), so the ratio is what ckptstore costs above the bytes.
    raw = RawBaseline(_join(rep_url, "raw"), options, config.baseline, writeback=True)
    try:
        workers = store.workers
        read_workers = store.read_workers
        plan = store_plan(store, model)
        raw.prepare(model, plan)
        actions: dict[str, dict[str, Callable[[], Any]]] = {
            "save": {"ckptstore": lambda: store.save(0, model), "raw": lambda: raw.save(model, plan, workers)},
            "restore": {"ckptstore": lambda: store.restore(0, verify=config.verify),
                        "raw": lambda: raw.restore(read_workers)},
        }
        # Alternate who goes first, so a drifting machine favours neither.
        order = IMPLEMENTATIONS if rep % 2 == 0 else IMPLEMENTATIONS[::-1]
        for impl in order:
            series["save"][impl].append(_timed(actions["save"][impl]))
            notify(f"r{rep + 1} save {impl}")
        if cold_method:
            for impl in order:
                drop_cache([_local_path(rep_url)], cold_method)
                series["restore_cold"][impl].append(_timed(actions["restore"][impl]))
                notify(f"r{rep + 1} cold restore {impl}")
        # The warm case: the files in the page cache (a cold restore past the cache leaves them out).
        if cold_method:
            fill_cache([_local_path(rep_url)])
        for impl in order:
            series["restore_warm"][impl].append(min(_timed(actions["restore"][impl]), _timed(actions["restore"][impl])))
            notify(f"r{rep + 1} warm restore {impl}")
        if "save_blocked" in series:
            # How long a background save holds the training loop, in the steady state (the store's
            # staging memory is allocated by a first, untimed background save), against the least any
            # snapshot costs: one copy of the model into already-allocated memory, on as many threads.
            store.save(1, model, blocking=False).result()
            staging = empty_aligned((sum(a.nbytes for a in model.values()),), np.dtype(np.uint8))
            staging.fill(0)
            handles: list[Any] = []
            blocked = {"ckptstore": lambda: handles.append(store.save(2, model, overwrite=True, blocking=False)),
                       "raw": lambda: snapshot_copy(model, staging, workers)}
            for impl in order:
                series["save_blocked"][impl].append(_timed(blocked[impl]))
                for handle in handles:
                    handle.result()  # the write itself is not part of this measurement
                handles.clear()
                notify(f"r{rep + 1} background save {impl}")
            del staging
        return workers, len(plan.shards)
    finally:
        store.close()
        raw.close()


def has_background_save() -> bool:
    """Whether this version's ``CheckpointStore.save`` takes ``blocking=False``."""
    return "blocking" in inspect.signature(CheckpointStore.save).parameters


def snapshot_copy(model: Mapping[str, np.ndarray], dest: np.ndarray, workers: int) -> None:
    """The baseline of a background save's blocking time: copy the model into ``dest`` on ``workers`` threads."""
    jobs: list[tuple[np.ndarray, np.ndarray]] = []
    pos = 0
    for arr in model.values():
        src = arr.reshape(-1).view(np.uint8)
        for i in range(0, len(src), 8 << 20):
            piece = src[i : i + (8 << 20)]
            jobs.append((dest[pos : pos + len(piece)], piece))
            pos += len(piece)
    share = -(-len(jobs) // max(1, workers))
    groups = [jobs[i : i + share] for i in range(0, len(jobs), share)]

    def copy(group: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for d, src in group:
            np.copyto(d, src)

    _parallel([lambda g=g: copy(g) for g in groups], workers)


def store_plan(store: CheckpointStore, model: Mapping[str, np.ndarray]) -> LayoutPlan:
    """The shard layout ``store.save(model)`` uses, so the raw baseline writes the same files."""
    sizes = [(n, a.nbytes) for n, a in model.items()]
    planner = getattr(store, "_plan", None)  # the store's own planner, when this version has one
    if planner is not None:
        return planner(sizes)
    total = sum(n for _, n in sizes)
    return plan_layout(sizes, target_shard_size=max(1, math.ceil(total / store.workers)),
                       max_shard_size=store.max_shard_size, chunk_size=store.chunk_size)


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def steps_per_run(config: BenchConfig, url: str) -> int:
    """How many times ``run`` calls ``progress`` (for a progress bar's total)."""
    cold, _ = cold_cache_method(url, config.cold)
    ops = 2 + (1 if cold else 0) + (1 if has_background_save() else 0)
    return config.repeat * len(IMPLEMENTATIONS) * ops


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def format_table(rows: Sequence[Sequence[str]], align: str) -> str:
    """Aligned columns; ``align`` has one ``<`` or ``>`` per column."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_report(result: BenchResult) -> str:
    """The human-readable report ``ckptstore bench`` prints."""
    c = result.config
    lines = [
        f"ckptstore bench {__version__} on {result.url}",
        f"model:   {format_size(result.nbytes)} float32 in {len(result.sizes)} tensors "
        f"({c.preset}: {describe_sizes(result.sizes)}); {result.shards} shard(s) of ≤ "
        f"{format_size(c.max_shard_size)}; {result.workers} worker(s); {c.repeat} repeat(s)",
        f"cold:    {result.cold_note}",
    ]
    env = result.environment
    if "loadavg" in env:
        lines.append(f"machine: {env.get('nproc')} cores, load average {env['loadavg'][0]:.2f} at the end "
                     "(other work on the machine widens the min–max ranges)")
    lines += [
        "",
    ]
    rows = [["operation", "impl", "median", "min", "max", "MB/s", "peak extra RSS", "ckptstore/raw"]]
    for op in OPERATIONS:
        if op not in result.series:
            rows.append([OPERATION_LABELS[op], "-", "n/a", "", "", "", "", ""])
            continue
        for impl in IMPLEMENTATIONS:
            s = result.series[op][impl].summary()
            ratio = result.ratio(op)
            rows.append([
                OPERATION_LABELS[op] if impl == "ckptstore" else "",
                impl,
                format_seconds(s["median_s"]),
                format_seconds(s["min_s"]),
                format_seconds(s["max_s"]),
                f"{s['throughput_mb_s']:.0f}" if s["throughput_mb_s"] else "-",
                f"{format_size(s['peak_extra_rss_bytes'])} ({s['peak_extra_rss_bytes'] / result.nbytes:.2f}×)",
                f"{ratio:.2f}×" if impl == "ckptstore" and ratio is not None else "",
            ])
    lines.append(format_table(rows, "<<>>>>>>"))
    lines += [
        "",
        "ckptstore/raw is the throughput ratio of the medians (1.00× = as fast as plain I/O of the same bytes). "
        "Each warm restore is the faster of two back-to-back runs (both sides).",
        _raw_description(result),
    ]
    if "save_blocked" in result.series:
        lines.append("background save: how long save(blocking=False) holds the caller once its staging memory "
                     "exists; raw = one copy of the model into allocated memory on as many threads.")
    if result.config.verify:
        lines.append("ckptstore restores verify every chunk checksum (as in production).")
    if result.kept:
        lines.append(f"files kept under {result.url}")
    return "\n".join(lines)


def _raw_description(result: BenchResult) -> str:
    if split_scheme(result.url)[0] == "file":
        how = "plain writes (writeback started every 8 MiB, as ckptstore does) + fsync / reads into page-aligned buffers"
    elif result.config.baseline == "fsspec":
        how = "the plain fsspec client: fs.pipe of prepared bytes / fs.cat"
    else:
        how = "the backend's own put / read_into into page-aligned buffers"
    return f"raw = {how}, same files, same concurrency; no checksums, no manifest."


def plot(result: BenchResult, path: str | os.PathLike[str]) -> None:
    """Bar chart of median throughput (min–max error bars), ckptstore next to raw, per operation."""
    plt = require_matplotlib()
    ops = [op for op in OPERATIONS if op in result.series]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    width = 0.38
    for k, impl in enumerate(IMPLEMENTATIONS):
        meds, lo, hi = [], [], []
        for op in ops:
            s = result.series[op][impl]
            tp = [result.nbytes / t / 1e6 for t in s.seconds]
            med = result.nbytes / s.median / 1e6
            meds.append(med)
            lo.append(med - min(tp))
            hi.append(max(tp) - med)
        xs = [i + (k - 0.5) * width for i in range(len(ops))]
        bars = ax.bar(xs, meds, width, yerr=[lo, hi], capsize=4, label=impl,
                      color=("#3b6ea5" if impl == "ckptstore" else "#b0b0b0"))
        for bar, med in zip(bars, meds, strict=True):
            ax.annotate(f"{med:.0f}", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom",
                        fontsize=8, xytext=(0, 3), textcoords="offset points",
                        color="white" if impl == "ckptstore" else "black")
    ax.set_xticks(range(len(ops)))
    labels = [OPERATION_LABELS[op].replace(", ", ",\n") for op in ops]  # the long one on two lines
    ax.set_xticklabels([f"{label}\n{result.ratio(op):.2f}× raw" for label, op in zip(labels, ops, strict=True)])
    ax.set_ylabel("MB/s (median; bars: min–max)")
    ax.set_title(f"ckptstore bench: {format_size(result.nbytes)} {result.config.preset}, "
                 f"{result.workers} workers, {result.config.repeat} repeats", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` with a headless backend, or an ImportError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'ckptstore[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dumps(result: BenchResult) -> str:
    return json.dumps(result.to_json(), indent=2, sort_keys=False)
