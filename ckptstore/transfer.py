"""Parallel shard writes and reads: tensor bytes between arrays and storage, checksummed on the way.

Why it looks like this: a save streams each shard straight from the arrays' own memory (no staging copy
of the model), computing each chunk's checksum piece by piece just before the piece is written, while it is
still in cache — one pass over memory. Small tensors are glued into a few-MiB buffer (with their
alignment padding) before they are written, so 10k tensors cost a few hundred writes, not 20k. One
thread per shard: the layout has about one shard per worker, because two fsync'd streams are what it
takes to saturate a local disk (one does not).

A restore reads straight into page-aligned destination arrays (reading a page-aligned file offset into
a page-aligned buffer copies 2–3x faster than into numpy's default allocation) and verifies each piece
right after it lands. Many small tensors are read as one ranged read per run of neighbours straight
into a shared arena and returned as views of it, so 10k tensors do not cost 10k storage calls, 10k
allocations or a second copy. ``map_tensors`` is the zero-copy alternative for local disk: read-only arrays that are
views of memory-mapped shard files.

An asynchronous save snapshots the state into ``StagingPool`` buffers laid out exactly like the shard
files (padding included), so the background write is a few large sequential writes per shard.
"""

from __future__ import annotations

import itertools
import logging
import math
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np

from ckptstore.checksum import checksum as checksum_of
from ckptstore.checksum import checksum_function, hasher
from ckptstore.errors import ChecksumError, CkptStoreError, FormatError, NotFound, Unsupported
from ckptstore.format import (
    ALIGN,
    BLOCK_RECORD,
    Chunk,
    LayoutPlan,
    Manifest,
    PlannedChunk,
    SmallChunks,
    TensorEntry,
    TensorTable,
    dtype_from_name,
)
from ckptstore.storage._retry import submit
from ckptstore.storage.interface import Storage, read_in_pieces, read_through_buffer

PIECE = 8 << 20  # checksum/write granularity: big enough for few calls, small enough to stay in cache
# Chunks below this are read in runs into one shared huge-page arena. Up to a few MiB a tensor allocated
# on its own is mostly 4 KiB pages (first touch 0.3-0.7 s/GB here against 0.09 with huge pages): with
# 1 MiB, a 1 GiB checkpoint of 4096 tensors of 12 KiB-1.2 MiB restored in 0.23 s, with 4 MiB in 0.19 s.
SMALL_CHUNK = 4 << 20
SMALL_WRITE = 256 << 10  # pieces below this are glued together before they are written
BATCH_SPAN = 16 << 20  # at most this many bytes per batched read
RUN_PIECE = 1 << 20  # reads through a scratch buffer (in-place restores) go piece by piece
BATCH_GAP = 64 << 10  # don't read (and keep) holes bigger than this to batch neighbours
INTO_SPAN = 4 << 20  # runs of small tensors restored in place: the scratch buffer each needs is fresh memory
ALIGNED_MIN = 64 << 10  # arrays at least this big are allocated page-aligned
HUGE_PAGE = 2 << 20  # a transparent huge page (x86-64, arm64 with 4 KiB pages)
COPY_ALIGN = 32  # destinations read into in place must be congruent with the file offset modulo this
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
_ZEROS = bytes(ALIGN)

T = TypeVar("T")
log = logging.getLogger("ckptstore")


def byte_view(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (works for dtypes the buffer protocol lacks, e.g. bfloat16)."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def empty_aligned(shape: Sequence[int], dtype: np.dtype, *, huge_pages: bool = True) -> np.ndarray:
    """An uninitialised C-order array whose data starts on a 4096-byte page boundary when it is large
    (and on a 2 MiB boundary when it may use huge pages and spans one).

    ``huge_pages``: transparent huge pages for the array, rather than an ordinary private anonymous
    mapping. First touch of fresh memory is most of a restore's system time (in a warm restore, the
    kernel zeroing fresh pages takes twice the CPU of copying the bytes in). With huge pages it is ~5x
    cheaper per GB here (0.11 vs 0.6 s/GB; warm 1 GiB local restores 0.33 vs 0.50 s), but where THP
    defrag is "madvise" (this VM, many distributions) a fault may stall on synchronous compaction:
    restores from the loopback object-store servers, whose memory churn fragments RAM, took 0.3-1.2 s
    per 260 MiB that way against a steady 0.41-0.54 s with ordinary pages. So backends choose
    (``StorageBase.huge_page_destinations``).

    A huge-page array of 2 MiB or more gets a mapping of its own that starts on a 2 MiB boundary,
    madvised for huge pages: numpy's allocation starts wherever malloc's mapping landed, so its first
    partial 2 MiB was faulted in 4 KiB pages (~5x the cost; up to 2 MiB of every array — for 64 MiB
    tensors, first touch measured 0.115 s/GB that way and 0.092 aligned). The part of the last 2 MiB
    the array does not fill stays in 4 KiB pages, so the array costs no memory beyond its bytes.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < ALIGNED_MIN:
        return np.empty(shape, dtype)
    if not huge_pages:
        # Page-aligned by construction, freed when the last view goes; THP only if the system says "always".
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return np.frombuffer(buf, np.uint8, nbytes).view(dtype).reshape(shape)
    if nbytes < HUGE_PAGE or _MADV_HUGEPAGE is None:
        raw = np.empty(nbytes + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        return raw[start : start + nbytes].view(dtype).reshape(shape)
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = np.frombuffer(buf, np.uint8)
    start = (-whole.ctypes.data) % HUGE_PAGE
    try:
        buf.madvise(_MADV_HUGEPAGE, start, nbytes)
    except OSError:  # a kernel without transparent huge pages: ordinary pages, still aligned
        pass
    return whole[start : start + nbytes].view(dtype).reshape(shape)


def run_parallel(tasks: Sequence[Callable[[], T]], workers: int) -> list[T]:
    """Run ``tasks`` on a thread pool; the first failure cancels what has not started and is raised."""
    if workers <= 1 or len(tasks) <= 1:
        return [t() for t in tasks]
    with ThreadPoolExecutor(max_workers=min(workers, len(tasks)), thread_name_prefix="ckptstore-io") as pool:
        futures: list[Future[T]] = [submit(pool, t) for t in tasks]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        return [f.result() for f in futures]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenShards:
    """What ``write_shards`` wrote: the plan's chunks (in tensor order) with their checksums, and the shards."""

    plan: LayoutPlan
    checksums: np.ndarray  # uint64 per chunk of ``plan.columns``, in the same order
    shard_sizes: Mapping[str, int]  # shard name (relative to the step directory) -> bytes
    algorithm: str  # of the checksums (``ckptstore.checksum``)
    blocks: np.ndarray  # BLOCK_RECORD per block of ``plan.blocks``, shard by shard ("shard": plan index)

    def tensor_table(self, specs: Mapping[str, tuple[str, tuple[int, ...]]]) -> TensorTable:
        """The manifest's tensors, built from columns (no per-tensor objects): ``specs`` maps each
        written tensor to its (dtype name, shape)."""
        columns = self.plan.columns
        if len(specs) != len(columns.names):
            raise ValueError(f"{len(specs)} tensor specs for {len(columns.names)} written tensors")
        return TensorTable.from_columns(
            columns.names, [specs[name] for name in columns.names], columns.nchunks, columns.shard,
            columns.offset, columns.nbytes, self.checksums, list(self.shard_sizes), blocks=self.blocks,
        )

    @property
    def chunks(self) -> dict[str, tuple[Chunk, ...]]:
        """Tensor name -> its chunks in tensor order, as objects (for callers that want them)."""
        columns = self.plan.columns
        shard_names = list(self.shard_sizes)
        flat = iter([
            Chunk(shard_names[s], o, n, c)
            for s, o, n, c in zip(columns.shard.tolist(), columns.offset.tolist(), columns.nbytes.tolist(),
                                  self.checksums.tolist(), strict=True)
        ])
        return {
            name: tuple(itertools.islice(flat, count))
            for name, count in zip(columns.names, columns.nchunks.tolist(), strict=True)
        }


def write_shards(
    storage: Storage,
    step_prefix: str,
    attempt: str,
    arrays: Mapping[str, np.ndarray],
    plan: LayoutPlan,
    workers: int,
    *,
    checksum: str,
    staged: Sequence[memoryview] | None = None,
) -> WrittenShards:
    """Write every shard of ``plan`` under ``step_prefix/attempt/``; return chunk checksums (of the
    ``checksum`` algorithm) and sizes.

    ``arrays`` must be C-contiguous and little-endian (``prepare_array`` makes them so). With ``staged``
    (one buffer per shard, filled by ``stage``), the bytes come from there instead of from ``arrays``.
    """
    views = {name: byte_view(a) for name, a in arrays.items()} if staged is None else {}
    crcs: list[list[int]] = [[] for _ in plan.shards]  # per shard, one per planned chunk in order
    block_sums: list[list[tuple[int, int, int, int]]] = [[] for _ in plan.shards]
    shard_names = [f"{attempt}/shard-{i:05d}.bin" for i in range(len(plan.shards))]

    def write_one(index: int) -> None:
        name = shard_names[index]
        planned = plan.shards[index]
        found: list[int] = []
        blocks = plan.blocks[index]

        def record_block(offset: int, nbytes: int, checksum: int) -> None:
            block_sums[index].append((index, offset, nbytes, checksum))

        def record(pc: PlannedChunk, crc: int) -> None:
            if planned[len(found)] is not pc:  # the pieces helpers checksum chunks in plan order
                raise RuntimeError(f"{name}: chunk of {pc.name} at {pc.start} checksummed out of order")
            found.append(crc)

        if staged is None:
            pieces = _stream_pieces(planned, views, record, checksum, blocks, record_block)
        else:
            pieces = _staged_pieces(planned, staged[index][: plan.shard_sizes[index]], record, checksum, blocks, record_block)
        info = storage.put(f"{step_prefix}/{name}", pieces)
        if info.size != plan.shard_sizes[index]:
            raise FormatError(
                f"{storage.url}/{step_prefix}/{name}: stored {info.size} bytes, expected {plan.shard_sizes[index]}"
            )
        if len(found) != len(planned) or len(block_sums[index]) != len(blocks):
            raise RuntimeError(f"{name}: {len(found)} of {len(planned)} chunks and {len(block_sums[index])} of "
                               f"{len(blocks)} blocks were checksummed")
        crcs[index] = found

    run_parallel([lambda i=i: write_one(i) for i in range(len(plan.shards))], workers)
    # plan.columns lists the chunks shard by shard, which is also tensor order (see LayoutPlan.columns).
    sums = np.fromiter(itertools.chain.from_iterable(crcs), "<u8", len(plan.columns.shard))
    blocks = np.array(list(itertools.chain.from_iterable(block_sums)), BLOCK_RECORD)
    return WrittenShards(plan, sums, dict(zip(shard_names, plan.shard_sizes, strict=False)), checksum, blocks)


def _stream_pieces(
    chunks: Sequence[PlannedChunk],
    views: Mapping[str, memoryview],
    record: Callable[[PlannedChunk, int], None],
    algorithm: str,
    blocks: Sequence[tuple[int, int]] = (),
    record_block: Callable[[int, int, int], None] | None = None,
) -> Iterator[memoryview | bytes]:
    """A shard's bytes straight from the arrays; small chunks and their padding glued into one buffer.

    Every glued buffer is a fresh ``bytearray``: a backend may keep the pieces until the whole iterable
    is consumed (object stores join them), so a buffer handed out is never written again.

    The bytes of each of ``blocks`` (``LayoutPlan.blocks``) are hashed as a whole too, in large pieces
    (a glued buffer at a time, a chunk of 256 KiB or more piece by piece: without the GIL), and
    ``record_block(offset, nbytes, checksum)``ed. Glued buffers start and end at block boundaries.
    """
    pos = 0
    glue: bytearray | None = None
    opens = dict(blocks)  # first chunk -> stop
    block: Any = None  # the hasher of the block being written
    block_start = block_stop = 0
    for k, pc in enumerate(chunks):
        view = views[pc.name][pc.start : pc.start + pc.nbytes]
        pad = pc.offset - pos
        if k in opens:  # no block is open: the glue so far and the padding before are outside it
            if glue is not None:
                yield glue
                glue = None
            if pad:
                yield _ZEROS[:pad]
                pad = 0
            block, block_start, block_stop = hasher(algorithm), pc.offset, opens[k]
        if pc.nbytes < SMALL_WRITE:
            if glue is None:
                glue = bytearray()
            if pad:
                glue += _ZEROS[:pad]
            glue += view
            record(pc, checksum_of(algorithm, view))
            if len(glue) >= PIECE:
                if block is not None:
                    block.update(glue)
                yield glue
                glue = None
        else:
            if glue is not None:
                if block is not None:
                    block.update(glue)
                yield glue
                glue = None
            if pad:
                if block is not None:
                    block.update(_ZEROS[:pad])
                yield _ZEROS[:pad]
            h = hasher(algorithm)
            for i in range(0, len(view), PIECE):
                piece = view[i : i + PIECE]
                h.update(piece)
                if block is not None:
                    block.update(piece)
                yield piece
            record(pc, h.intdigest())
        pos = pc.offset + pc.nbytes
        if block is not None and k + 1 == block_stop:
            if glue is not None:
                block.update(glue)
                yield glue
                glue = None
            record_block(block_start, pos - block_start, block.intdigest())  # type: ignore[misc]
            block = None
    if glue is not None:
        yield glue


def _staged_pieces(
    chunks: Sequence[PlannedChunk],
    buf: memoryview,
    record: Callable[[PlannedChunk, int], None],
    algorithm: str,
    blocks: Sequence[tuple[int, int]] = (),
    record_block: Callable[[int, int, int], None] | None = None,
) -> Iterator[memoryview]:
    """A staged shard in large views, each checksummed chunk by chunk just before it is handed out
    (and each of ``blocks`` as one range, once its last chunk is)."""
    pos = 0  # start of the bytes not yet handed out
    closes = {stop - 1: first for first, stop in blocks}  # last chunk -> first
    for k, pc in enumerate(chunks):
        h = hasher(algorithm)
        for i in range(0, pc.nbytes, PIECE):
            end = pc.offset + min(i + PIECE, pc.nbytes)
            h.update(buf[pc.offset + i : end])
            if end - pos >= PIECE:
                yield buf[pos:end]
                pos = end
        record(pc, h.intdigest())
        if k in closes:
            start, stop = chunks[closes[k]].offset, pc.offset + pc.nbytes
            block = hasher(algorithm)
            for i in range(start, stop, PIECE):
                block.update(buf[i : min(i + PIECE, stop)])
            record_block(start, stop - start, block.intdigest())  # type: ignore[misc]
    if pos < len(buf):
        yield buf[pos:]


def prepare_array(value: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian version of ``value`` (a copy only when the input is not already)."""
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    arr = value if value.flags.c_contiguous else np.array(value, order="C", copy=True)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


class StagingPool:
    """Page-aligned buffers, one per shard, reused by successive asynchronous saves.

    Holds at most one save's worth of staging memory (the shard sizes of the last save: the model plus
    its alignment padding). A save that needs more grows the pool; one that needs less reuses it.
    Not thread-safe: the store lets one save at a time use it.
    """

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        """Bytes of staging memory held."""
        return sum(b.nbytes for b in self._buffers)

    def acquire(self, sizes: Sequence[int]) -> list[memoryview]:
        """Buffers of at least ``sizes`` bytes (their contents are unspecified), reusing what it has."""
        old = sorted(self._buffers, key=lambda b: b.nbytes, reverse=True)
        kept: list[np.ndarray | None] = [None] * len(sizes)
        # The largest need gets the largest buffer, and so on down; a buffer too small is replaced.
        for rank, index in enumerate(sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True)):
            if rank < len(old) and old[rank].nbytes >= sizes[index]:
                kept[index] = old[rank]
            else:
                kept[index] = empty_aligned((max(sizes[index], 1),), np.dtype(np.uint8))
        self._buffers = [b for b in kept if b is not None]
        return [memoryview(b) for b in self._buffers]

    def release(self) -> None:
        """Free every buffer (the next asynchronous save allocates afresh)."""
        self._buffers = []


def stage(arrays: Mapping[str, np.ndarray], plan: LayoutPlan, buffers: Sequence[memoryview], workers: int) -> None:
    """Copy every planned chunk into its place in the shard buffers and zero the padding between them.

    The copies run on ``workers`` threads (numpy releases the GIL for plain copies); this is the whole
    time an asynchronous save blocks the caller.
    """
    views = {name: byte_view(a) for name, a in arrays.items()}
    jobs: list[tuple[memoryview, memoryview | None]] = []  # (destination, source or None for zeros)
    for index, shard in enumerate(plan.shards):
        buf = buffers[index]
        pos = 0
        for pc in shard:
            if pc.offset > pos:
                jobs.append((buf[pos : pc.offset], None))
            for i in range(0, pc.nbytes, PIECE):
                n = min(PIECE, pc.nbytes - i)
                jobs.append((buf[pc.offset + i : pc.offset + i + n], views[pc.name][pc.start + i : pc.start + i + n]))
            pos = pc.offset + pc.nbytes
    total = sum(len(d) for d, _ in jobs)
    # Split into contiguous runs of about equal bytes, one per thread.
    parts: list[list[tuple[memoryview, memoryview | None]]] = [[]]
    share = max(1, math.ceil(total / max(1, workers)))
    filled = 0
    for job in jobs:
        if filled >= share and len(parts) < workers:
            parts.append([])
            filled = 0
        parts[-1].append(job)
        filled += len(job[0])

    def copy(part: list[tuple[memoryview, memoryview | None]]) -> None:
        for dest, src in part:
            d = np.frombuffer(dest, np.uint8)
            if src is None:
                d.fill(0)
            else:
                np.copyto(d, np.frombuffer(src, np.uint8))

    run_parallel([lambda p=p: copy(p) for p in parts if p], workers)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def check_shards(storage: Storage, step_prefix: str, manifest: Manifest, needed: set[str], workers: int) -> None:
    """Fail before any allocation if a shard is missing or its real size differs from the manifest."""

    def check(shard: str) -> None:
        key = f"{step_prefix}/{shard}"
        try:
            size = storage.head(key).size
        except NotFound:
            raise FormatError(f"{storage.url}/{key}: shard named by the manifest is missing") from None
        if size != manifest.shards[shard]:
            raise FormatError(
                f"{storage.url}/{key}: shard is {size} bytes but the manifest says {manifest.shards[shard]} "
                "(truncated, extended or replaced)"
            )

    run_parallel([lambda s=s: check(s) for s in sorted(needed)], workers)


def _checksum_error(url: str, key: str, name: str, chunk: Chunk, actual: int, algorithm: str) -> ChecksumError:
    width = 18 if chunk.checksum > 0xFFFFFFFF or actual > 0xFFFFFFFF else 10
    return ChecksumError(
        f"{url}/{key}: tensor {name}: bytes [{chunk.offset}, {chunk.offset + chunk.nbytes}) fail their "
        f"{algorithm} check (stored {chunk.checksum:#0{width}x}, read {actual:#0{width}x}) — the shard is corrupt"
    )


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ReadPlan(NamedTuple):
    """How a restore reads its files: ``readers`` reads at once, large chunks in pieces of ``piece_size``
    bytes (0: the backend's ``read_piece_size``), past the page cache if ``direct``."""

    readers: int
    piece_size: int
    direct: bool = False  # large chunks through the backend's ``read_pieces_direct`` (past the page cache)


def read_plan(storage: Storage, keys: Iterable[str], workers: int) -> ReadPlan:
    """How a restore of the objects ``keys`` reads them, by whether the storage says all of them are in
    the page cache (a backend without ``cached`` cannot tell: ``workers`` reads in its own pieces).

    - Readers: ``workers``, or no more than there are CPUs when every file is cached. Reading cached files
      is memory copies, which more threads than CPUs only slow down: they take turns on the CPUs and evict
      each other's pieces from cache before they are hashed (the warm 1 GiB restore here: 0.306 s of CPU
      with 2 readers, 0.317 s with 4, and 0.81x against 0.78x of the raw reader's time; 30 alternating
      repetitions). Reads from a disk keep ``workers`` requests in flight, which is what makes cold reads
      fast.
    - Pieces: the backend's ``read_piece_size`` (small, hashed while in the CPU's cache) when every file
      is cached, else its ``cold_read_piece_size`` where it has one: a disk's cold reads run faster in
      fewer, longer calls (``LocalStorage.cold_read_piece_size``), and hashing a piece read back from
      memory is cheap next to waiting for the disk.
    - Direct: when some file is on disk, large chunks are read past the page cache where the backend
      can (``read_pieces_direct`` and ``direct_reads``; local disk: ``O_DIRECT``): no page cache to fill
      and copy out of.
    """
    cached = getattr(storage, "cached", None)
    cold_piece = getattr(storage, "cold_read_piece_size", 0)
    if cached is None or (workers <= usable_cpus() and not cold_piece):
        return ReadPlan(workers, 0)
    try:
        in_cache = all(cached(key) for key in keys)
    except (CkptStoreError, OSError):  # advice only: the reads themselves report what is wrong
        return ReadPlan(workers, 0)
    if in_cache:
        return ReadPlan(min(workers, usable_cpus()), 0)
    direct = getattr(storage, "direct_reads", False) is True and hasattr(storage, "read_pieces_direct")
    return ReadPlan(workers, cold_piece, direct)


def readers(storage: Storage, keys: Iterable[str], workers: int) -> int:
    """How many reads a restore of the objects ``keys`` runs at once (``read_plan``)."""
    return read_plan(storage, keys, workers).readers


def read_tensors(
    storage: Storage,
    step_prefix: str,
    entries: Mapping[str, TensorEntry],
    *,
    checksum: str | None,
    workers: int,
    into: Mapping[str, np.ndarray] | None = None,
    piece_size: int = 0,
    direct: bool = False,
) -> dict[str, np.ndarray]:
    """Read ``entries`` into fresh (page-aligned when large) arrays, verifying every chunk's checksum
    with the ``checksum`` algorithm (the manifest's; None: not verified).

    ``piece_size``: the size of the calls that read large chunks, each piece checked as it lands (0: the
    backend's ``read_piece_size``); ``direct``: read large chunks through the backend's
    ``read_pieces_direct`` (past the page cache). Both as ``read_plan`` decides; runs of small tensors
    are always read in the backend's own pieces.

    ``into``: existing arrays (writable, C-contiguous, of the entry's shape and little-endian dtype —
    the caller checks) to read some of the tensors into instead; they are returned as they are. Large
    ones are read straight into place (through a scratch buffer when misaligned, see ``_misaligned``);
    small ones a run of at most ``INTO_SPAN`` at a time through a scratch buffer per worker, each copied
    into place once verified. Nothing is allocated for them beyond ``workers`` scratch buffers.

    Small single-chunk tensors are views into one shared page-aligned arena laid out like their runs
    in the shard files: each run is one read straight into the arena, then every tensor in it is
    checked — with one hash per block where the manifest has block checksums (3.1), else one per
    tensor — and no allocation, copy or storage call per tensor. (So one kept small tensor keeps the
    arena alive: at most the small tensors' bytes.) Reads are planned from the manifest's columns (a
    subset of entries is turned into a ``TensorTable`` first) with numpy, so nothing per tensor happens
    before the reads start; the views are made once they are done.
    """
    url = storage.url
    huge = getattr(storage, "huge_page_destinations", True)
    # Every key in place up front, in the caller's order: the arrays fill in as planned and read, and
    # the result needs no reordering pass.
    out: dict[str, np.ndarray] = dict.fromkeys(entries)  # type: ignore[arg-type]
    tasks: list[Callable[[], None]] = []
    if isinstance(entries, TensorTable):
        table = entries
    else:  # a subset: the same columns, built from its entries
        shard_names = sorted({c.shard for e in entries.values() for c in e.chunks})
        table = TensorTable.from_entries(entries, shard_names)
    small, large_names = table.small_and_large(SMALL_CHUNK)
    placed: SmallChunks | None = None
    if into:
        small, placed = _split_small(small, into)

    placed_runs = _plan_runs(placed, INTO_SPAN) if placed is not None else []
    # One scratch buffer per concurrent read: big enough for the longest run of placed small tensors.
    scratch = _ScratchPool(max([RUN_PIECE] + [r.length for r in placed_runs])) if into else None
    for name in large_names:
        entry = entries[name]
        if into and name in into:
            arr = out[name] = into[name]
            if storage.read_piece_size and _misaligned(arr, entry.chunks):
                flat = arr.reshape(-1).view(np.uint8)
                pos = 0
                for chunk in entry.chunks:
                    if chunk.nbytes:
                        tasks.append(lambda n=name, c=chunk, d=flat[pos : pos + chunk.nbytes]: _read_large_into(
                            storage, url, step_prefix, n, c, d, checksum, scratch))  # type: ignore[arg-type]
                    pos += chunk.nbytes
                continue
        else:
            arr = out[name] = empty_aligned(entry.shape, dtype_from_name(entry.dtype), huge_pages=huge)
        dest = byte_view(arr)
        pos = 0
        for chunk in entry.chunks:
            if chunk.nbytes:
                tasks.append(lambda n=name, c=chunk, d=dest[pos : pos + chunk.nbytes]: _read_large(
                    storage, url, step_prefix, n, c, d, checksum, piece_size, direct))
            pos += chunk.nbytes

    # Where the manifest has block checksums (3.1), the small tensors of a block are verified with one
    # hash of the whole block (GIL released) instead of one call per tensor; the rest run per tensor.
    runs = _plan_runs(small, blocks=table.blocks if checksum is not None else None)
    arena_size = runs[-1].at + runs[-1].length if runs else 0
    arena = empty_aligned((arena_size,), np.dtype(np.uint8), huge_pages=huge) if runs else None
    # Runs are read as many at a time as large chunks (read_workers). Until the per-tensor work moved
    # out of the readers' way (planning in numpy, views made after the reads, one checksum call and
    # no dispatch per tensor), the checking loops of more than two runs at once mostly waited for each
    # other for the GIL and runs were limited to two; now four measure 0.85x of the large-tensor
    # restore against two's 0.76x (10k tensors, 1 GiB, 2 cores, 11 interleaved repetitions).
    whole = memoryview(arena) if arena is not None else None
    for run in runs:
        view = whole[run.at : run.at + run.length]  # type: ignore[index]
        tasks.append(lambda r=run, v=view: _read_run(storage, url, step_prefix, small, r, v, checksum))
    if placed is not None:
        for run in placed_runs:
            tasks.append(lambda r=run: _read_run_into(storage, url, step_prefix, placed, r, checksum, into, scratch))
            for i in placed.index[run.rows].tolist():
                out[placed.names[i]] = into[placed.names[i]]  # type: ignore[index]

    run_parallel(tasks, workers)
    if runs:
        # Everything per small tensor happens here, once the reads are done (made while the reads ran,
        # the views held the GIL the readers wanted back after every read and hash: the warm 10k-tensor
        # restore took 0.209 s (0.362 s of CPU) that way against 0.195 s (0.340 s); 2 readers, 16
        # alternating repetitions in one process).
        out.update(_arena_views(small, runs, arena))  # type: ignore[arg-type]
    return out


def _arena_views(small: SmallChunks, runs: Sequence[_Run], arena: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` for every small tensor read into ``arena``: one ndarray constructor each (0.5 us;
    a slice, view and reshape took 1.4 us), called by ``map`` from C with the columns numpy gathered
    for all the runs at once. For 10k tensors that takes 5.6-5.8 ms against 8.5-9.4 ms for the Python
    loop over each run's rows it replaced (15 alternating repetitions). A 1-d tensor's shape is passed
    as its one dim; only the others' are sliced out of the dims, in Python."""
    rows = np.concatenate([run.rows for run in runs])
    offsets = small.offset[rows] + np.repeat([run.at - run.start for run in runs], [len(run.rows) for run in runs])
    starts, stops = small.dim_start[rows], small.dim_stop[rows]
    one_dim = stops - starts == 1
    shapes: list[Any] = small.dims[np.where(one_dim, starts, 0)].tolist() if len(small.dims) else [()] * len(rows)
    others = np.flatnonzero(~one_dim).tolist()
    if others:
        dims, a, b = small.dims.tolist(), starts.tolist(), stops.tolist()
        for k in others:
            shapes[k] = dims[a[k] : b[k]]
    kinds = [dtype_from_name(d) for d in small.dtypes]
    dtypes: Iterable[np.dtype] = (
        itertools.repeat(kinds[0]) if len(kinds) == 1 else map(kinds.__getitem__, small.dtype[rows].tolist())
    )
    names = map(small.names.__getitem__, small.index[rows].tolist())
    return zip(names, map(np.ndarray, shapes, dtypes, itertools.repeat(arena), offsets.tolist()), strict=True)


@dataclass(frozen=True)
class _Run:
    """Small chunks read with one call: ``rows`` of the ``SmallChunks``, in file order, bytes
    ``start .. start + length`` of one shard, landing at ``at`` in the arena (page-aligned). Checked as
    units, in file order: bytes ``unit_start[i] .. unit_end[i]`` of the run, whose checksum is
    ``unit_sum[i]``, are the chunk of row ``unit_row[i]``, or a block when that is negative."""

    shard: str
    rows: np.ndarray
    start: int
    length: int
    at: int
    unit_start: np.ndarray
    unit_end: np.ndarray
    unit_sum: np.ndarray
    unit_row: np.ndarray


def _shard_bases(count: int, shard: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Where each of ``count`` shards starts in one address space for all of them, each as long as the
    furthest ``end`` in it: offsets in different shards become comparable (a manifest's shards hold
    < 2**63 bytes together: no overflow)."""
    extent = np.zeros(count, np.int64)
    np.maximum.at(extent, shard, end)
    base = np.zeros(count, np.int64)
    np.cumsum(extent[:-1], out=base[1:])
    return base


def _plan_runs(small: SmallChunks, span: int = BATCH_SPAN, blocks: np.ndarray | None = None) -> list[_Run]:
    """Group the small chunks into runs: neighbours in one shard, at most ``span`` bytes from the first's start to the last's end, no hole over ``BATCH_GAP`` (holes inside a
    run are read too), each page-aligned in the arena after the one before.

    With ``blocks`` (``TensorTable.blocks``), each block that the chunks inside it fill at least half of
    (so reading it whole costs at most twice what it returns) is checked with its one checksum instead
    of one per chunk, and is never split between runs. numpy sorts and finds the breaks; Python only
    loops once per run."""
    if not len(small):
        return []
    # The units a run is made of, each checked with one checksum: a chunk (row >= 0), or a block (-1).
    u_shard, u_start, u_end = small.shard, small.offset, small.offset + small.nbytes
    u_sum, u_row = small.checksum, np.arange(len(small))
    members = np.empty(0, np.int64)  # rows inside the blocks used, ordered by block
    member_bounds: list[int] = []  # block b's members: members[member_bounds[b] : member_bounds[b + 1]]
    if blocks is not None and len(blocks):
        b_shard = blocks["shard"].astype(np.int64)
        b_start = blocks["offset"].astype(np.int64)
        b_end = b_start + blocks["nbytes"].astype(np.int64)
        base = _shard_bases(len(small.shard_names), np.concatenate([u_shard, b_shard]), np.concatenate([u_end, b_end]))
        b_key = base[b_shard] + b_start
        b_order = np.argsort(b_key, kind="stable")  # decode checks the order; a save's table has it
        b_key, b_len = b_key[b_order], (b_end - b_start)[b_order]
        key = base[u_shard] + u_start
        k = np.maximum(np.searchsorted(b_key, key, "right") - 1, 0)
        inside = (key >= b_key[k]) & (key + (u_end - u_start) <= b_key[k] + b_len[k])
        filled = np.bincount(k[inside], weights=(u_end - u_start)[inside], minlength=len(b_key))
        usable = filled * 2 >= b_len
        blocked = inside & usable[k]
        members = np.flatnonzero(blocked)
        members = members[np.lexsort((key[members], k[members]))]
        member_bounds = np.searchsorted(k[members], np.arange(len(b_key) + 1)).tolist()
        used = np.flatnonzero(usable)
        original = b_order[used]
        keep = ~blocked
        u_shard = np.concatenate([u_shard[keep], b_shard[original]])
        u_start = np.concatenate([u_start[keep], b_start[original]])
        u_end = np.concatenate([u_end[keep], b_end[original]])
        u_sum = np.concatenate([u_sum[keep], blocks["checksum"][original]])
        u_row = np.concatenate([u_row[keep], -1 - used])  # a block unit: -1 - its index in b_key order
    order = np.lexsort((u_start, u_shard))
    u_shard, u_start, u_end, u_sum, u_row = u_shard[order], u_start[order], u_end[order], u_sum[order], u_row[order]
    # Chunks never overlap each other, nor blocks (decode checks both), but a crafted block may overlap a
    # chunk outside it: plan with the running maximum of the ends, so a run covers all of its units.
    # (Within each shard: in one address space where shard s starts at base[s], past every end in it.)
    base = _shard_bases(len(small.shard_names), u_shard, u_end)[u_shard]
    reach = np.maximum.accumulate(base + u_end) - base
    breaks = np.flatnonzero((u_shard[1:] != u_shard[:-1]) | (u_start[1:] - reach[:-1] > BATCH_GAP)) + 1
    runs: list[_Run] = []
    at = 0
    for lo, hi in zip([0, *breaks.tolist()], [*breaks.tolist(), len(order)], strict=True):
        while lo < hi:
            first = int(u_start[lo])
            stop = lo + max(1, int(np.searchsorted(reach[lo:hi], first + span, "right")))
            length = int(reach[stop - 1]) - first
            unit_rows = u_row[lo:stop]
            run_rows = unit_rows[unit_rows >= 0]
            if len(members) and (unit_rows < 0).any():
                parts = [run_rows]
                for b in (-1 - unit_rows[unit_rows < 0]).tolist():
                    parts.append(members[member_bounds[b] : member_bounds[b + 1]])
                run_rows = np.concatenate(parts)
                run_rows = run_rows[np.argsort(small.offset[run_rows], kind="stable")]
            runs.append(_Run(
                small.shard_names[int(u_shard[lo])], run_rows, first, length, at,
                u_start[lo:stop] - first, u_end[lo:stop] - first, u_sum[lo:stop], unit_rows,
            ))
            at += -(-length // ALIGN) * ALIGN  # every run starts page-aligned, as in the file
            lo = stop
    return runs


def _split_small(small: SmallChunks, into: Mapping[str, np.ndarray]) -> tuple[SmallChunks, SmallChunks]:
    """``small`` split into the rows to read into the arena and the rows with a destination in ``into``."""
    names = small.names
    mask = np.fromiter((names[i] in into for i in small.index.tolist()), bool, len(small))
    return small.take(~mask), small.take(mask)


class _ScratchPool:
    """Page-aligned buffers of ``size`` bytes for an in-place restore, one per concurrent reader, reused
    piece after piece and run after run."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def acquire(self) -> np.ndarray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return empty_aligned((self.size,), np.dtype(np.uint8), huge_pages=False)

    def release(self, buf: np.ndarray) -> None:
        with self._lock:
            self._free.append(buf)


def _pieces(storage: Storage, key: str, offset: int, out: memoryview, piece_size: int = 0) -> Iterator[memoryview]:
    """The backend's ``read_pieces``, or the ``read_into`` loop for a plugin that does not derive from
    ``StorageBase`` (the method is optional)."""
    read_pieces = getattr(storage, "read_pieces", None)
    if read_pieces is None:
        return read_in_pieces(storage, key, offset, out, piece_size)
    return read_pieces(key, offset, out, piece_size)


def _read_large(
    storage: Storage,
    url: str,
    prefix: str,
    name: str,
    chunk: Chunk,
    dest: memoryview,
    checksum: str | None,
    piece_size: int = 0,
    direct: bool = False,
) -> None:
    key = f"{prefix}/{chunk.shard}"
    if direct:
        pieces = storage.read_pieces_direct(key, chunk.offset, dest, piece_size)  # type: ignore[attr-defined]
    elif checksum is None:
        storage.read_into(key, chunk.offset, dest)
        return
    else:
        pieces = _pieces(storage, key, chunk.offset, dest, piece_size)
    if checksum is None:
        for _ in pieces:
            pass
        return
    # Local reads from the page cache go piece by piece so each piece is checksummed while it is still
    # in the CPU's cache; from the disk, a chunk per call, checked once it has landed (read_plan). A
    # remote backend gets the whole chunk in one call, which it splits into concurrent ranged GETs itself.
    h = hasher(checksum)
    for piece in pieces:
        h.update(piece)
    actual = h.intdigest()
    if actual != chunk.checksum:
        raise _checksum_error(url, key, name, chunk, actual, checksum)


def _misaligned(arr: np.ndarray, chunks: Sequence[Chunk]) -> bool:
    """Whether some chunk of ``arr`` lands at an address that is not ``COPY_ALIGN``-congruent with its
    file offset: the kernel copies from the page cache into such memory ~3x slower (here: 2.1-2.5 GB/s
    with the destination 8 or 16 bytes off, 6.2-8.2 GB/s at any multiple of 32, one thread). numpy's
    large arrays start 16 bytes into a page (malloc's header), torch's 64-byte aligned."""
    address = arr.ctypes.data
    pos = 0
    for chunk in chunks:
        if (address + pos - chunk.offset) % COPY_ALIGN:
            return True
        pos += chunk.nbytes
    return False


def _through(storage: Storage, key: str, offset: int, nbytes: int, buffer: memoryview) -> Iterator[memoryview]:
    """The backend's ``read_through``, or the ``read_into`` loop for a plugin without it (it is optional)."""
    read_through = getattr(storage, "read_through", None)
    if read_through is None:
        return read_through_buffer(storage, key, offset, nbytes, buffer)
    return read_through(key, offset, nbytes, buffer)


def _read_large_into(
    storage: Storage,
    url: str,
    prefix: str,
    name: str,
    chunk: Chunk,
    dest: np.ndarray,
    checksum: str | None,
    scratch: _ScratchPool,
) -> None:
    """A large chunk into an existing, misaligned array (flat uint8 ``dest``; see ``_misaligned``), piece
    by piece through a page-aligned scratch buffer: each piece is hashed while in cache and copied into
    place by numpy (GIL released). Read straight into numpy's arrays (16 bytes into a page), 1 GiB took
    0.36 s against 0.18 s this way and 0.15 s straight into aligned ones."""
    key = f"{prefix}/{chunk.shard}"
    buf = scratch.acquire()
    try:
        h = hasher(checksum) if checksum is not None else None
        pos = 0
        for piece in _through(storage, key, chunk.offset, chunk.nbytes, memoryview(buf)[:RUN_PIECE]):
            n = len(piece)
            if h is not None:
                h.update(piece)
            dest[pos : pos + n] = buf[:n]
            pos += n
        if h is not None and (actual := h.intdigest()) != chunk.checksum:
            raise _checksum_error(url, key, name, chunk, actual, checksum)  # type: ignore[arg-type]
    finally:
        scratch.release(buf)


def _read_run(
    storage: Storage,
    url: str,
    prefix: str,
    small: SmallChunks,
    run: _Run,
    view: memoryview,
    checksum: str | None,
    place: Callable[[int, int, int], None] | None = None,
) -> None:
    """A run of small chunks into ``view`` (its place in the arena, or a scratch buffer), each unit (a
    chunk, or a block of chunks) checksummed once its last byte has landed, while still in cache (a
    16 MiB run checked after the whole read would be read back from memory) — a unit of a piece or
    more piece by piece as it lands — then, if given, ``place(k, start, end)``d: the run's ``k``-th
    chunk (runs with a ``place`` have no blocks), bytes ``start:end`` of ``view``, copied to where it
    belongs."""
    key = f"{prefix}/{run.shard}"
    if checksum is None and place is None:
        storage.read_into(key, run.start, view)
        return
    starts, ends, stored = run.unit_start.tolist(), run.unit_end.tolist(), run.unit_sum.tolist()
    hash_of = checksum_function(checksum) if checksum is not None else None
    # Into the arena: the backend's pieces, cut where its (huge) pages start (see LocalStorage.read_pieces).
    # Through a scratch buffer, reused run after run: pieces small enough to be hashed from L2 cache.
    piece = RUN_PIECE if place is not None else 0
    pieces = _pieces(storage, key, run.start, view, piece) if storage.read_piece_size else None
    if pieces is None:
        storage.read_into(key, run.start, view)
        pieces = iter((view,))
    done = landed = hashed = 0  # units checked (and placed); bytes of the run read; of the unit hashed
    h: Any = None  # the hasher of a unit being hashed as it lands
    for piece in pieces:
        landed += len(piece)
        while done < len(ends):
            start, end = starts[done], ends[done]
            if hash_of is not None:
                if h is None and end > landed:
                    if end - start < RUN_PIECE or start >= landed:
                        break  # a small unit is hashed in one call once it has landed
                    h, hashed = hasher(checksum), start  # type: ignore[arg-type]
                if h is not None:
                    upto = min(landed, end)
                    h.update(view[hashed:upto])
                    hashed = upto
                    if upto < end:
                        break
                    actual = h.intdigest()
                    h = None
                else:
                    actual = hash_of(view[start:end])
                if actual != stored[done]:
                    _check_unit(url, key, small, run, view, done, actual, checksum)  # type: ignore[arg-type]
            elif end > landed:
                break
            if place is not None:
                place(done, start, end)
            done += 1


def _check_unit(
    url: str, key: str, small: SmallChunks, run: _Run, view: memoryview, k: int, actual: int, checksum: str
) -> None:
    """Unit ``k`` of ``run`` failed its check: raise for its chunk. A block's chunks (those of the run
    inside it) are checked one by one, and the first that fails is raised for; if none does, the damage
    is in bytes no restored tensor uses (padding, or a tensor not restored), which a restore without
    blocks would not have read: say so and go on."""
    start, end, stored = int(run.unit_start[k]), int(run.unit_end[k]), int(run.unit_sum[k])
    row = int(run.unit_row[k])
    hash_of = checksum_function(checksum)
    rows = [row] if row >= 0 else run.rows.tolist()
    for r in rows:
        s = int(small.offset[r]) - run.start
        e = s + int(small.nbytes[r])
        if start <= s and e <= end:
            value = actual if row >= 0 else hash_of(view[s:e])
            expected = stored if row >= 0 else int(small.checksum[r])
            if value != expected:
                name = small.names[int(small.index[r])]
                raise _checksum_error(url, key, name, Chunk(run.shard, run.start + s, e - s, expected), value, checksum)
    log.warning(
        "%s/%s: bytes [%d, %d) fail their block check, but every tensor restored from them passes its own: "
        "the damage is in padding or in a tensor not restored", url, key, run.start + start, run.start + end,
    )


def _read_run_into(
    storage: Storage,
    url: str,
    prefix: str,
    small: SmallChunks,
    run: _Run,
    checksum: str | None,
    into: Mapping[str, np.ndarray],
    scratch: _ScratchPool,
) -> None:
    """A run of small chunks through a scratch buffer, each chunk copied into its ``into`` array once
    it has landed and passed its check (so a corrupt chunk never reaches its destination)."""
    buf = scratch.acquire()
    names = small.names
    dests = [into[names[i]].reshape(-1).view(np.uint8) for i in small.index[run.rows].tolist()]

    def place(k: int, start: int, end: int) -> None:
        dests[k][:] = buf[start:end]  # numpy: the GIL is released while it copies

    try:
        _read_run(storage, url, prefix, small, run, memoryview(buf)[: run.length], checksum, place)
    finally:
        scratch.release(buf)


def map_tensors(
    storage: Storage,
    step_prefix: str,
    entries: Mapping[str, TensorEntry],
    *,
    checksum: str | None,
) -> dict[str, np.ndarray]:
    """Read-only arrays that are views of the memory-mapped shard files (local disk only).

    A tensor whose chunks are not one contiguous run of one shard (split across shards) is read into
    memory instead, and made read-only too, so every returned array behaves alike. With a ``checksum``
    algorithm every chunk is verified, which reads every page once.

    Raises:
        Unsupported: the storage is not a local directory.
    """
    if not hasattr(storage, "open_for_read") or not storage.url.startswith("file://"):
        raise Unsupported(f"{storage.url}: mmap restores need a local-disk store (file:// or a path)")
    maps: dict[str, mmap.mmap] = {}

    def shard_map(shard: str) -> mmap.mmap:
        if shard not in maps:
            try:
                fd = storage.open_for_read(f"{step_prefix}/{shard}")  # refuses symlinks out of the model_dir
            except FileNotFoundError:
                raise FormatError(f"{storage.url}/{step_prefix}/{shard}: shard named by the manifest is missing") from None
            try:
                maps[shard] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # the mapping outlives the fd
            finally:
                os.close(fd)
        return maps[shard]

    out: dict[str, np.ndarray] = {}
    copied: dict[str, TensorEntry] = {}
    url = storage.url
    for name, entry in entries.items():
        chunks = entry.chunks
        dtype = dtype_from_name(entry.dtype)
        if not chunks or entry.nbytes == 0:
            arr = np.zeros(entry.shape, dtype)
        elif all(c.shard == chunks[0].shard for c in chunks) and all(
            b.offset == a.offset + a.nbytes for a, b in zip(chunks, chunks[1:], strict=False)
        ):
            mm = shard_map(chunks[0].shard)
            arr = np.frombuffer(mm, np.uint8, entry.nbytes, chunks[0].offset).view(dtype).reshape(entry.shape)
            if checksum is not None:
                raw = memoryview(mm)
                try:
                    for c in chunks:
                        h = hasher(checksum)
                        for i in range(0, c.nbytes, PIECE):
                            h.update(raw[c.offset + i : c.offset + min(i + PIECE, c.nbytes)])
                        actual = h.intdigest()
                        if actual != c.checksum:
                            raise _checksum_error(url, f"{step_prefix}/{c.shard}", name, c, actual, checksum)
                finally:
                    raw.release()
        else:
            copied[name] = entry
            continue
        arr.flags.writeable = False
        out[name] = arr
    if copied:
        for name, arr in read_tensors(storage, step_prefix, copied, checksum=checksum, workers=1).items():
            arr.flags.writeable = False
            out[name] = arr
    return {name: out[name] for name in entries}
