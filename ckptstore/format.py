"""The on-storage format: shard layout, the msgpack manifest and the LATEST pointer — encode, decode, validate.

Pure: no I/O. Everything read from storage passes through ``decode_manifest``/``decode_latest``, which
reject anything out of bounds with a precise ``FormatError`` *before* a single tensor byte is read or a
buffer is allocated. The normative description of the format is in the README ("File format").

Why these choices:

- Every chunk starts at a 4096-byte-aligned shard offset, and large chunks are at most
  ``chunk_size`` bytes long with chunk boundaries at 4096-byte multiples of the tensor, so a restore can
  read a file page straight into a page-aligned array (numpy's default allocation sits 16 bytes past a
  page and copies 2–3x slower).
- One checksum per chunk lets chunks be written, read and verified in parallel without a combine step.
  Since 3.0 the manifest names the algorithm (``ckptstore.checksum``): XXH3-64 by default, or crc32c
  (the only one before 3.0). The manifest's own seal is crc32c.
- Plain msgpack maps/lists/str/int/float/bytes only; ext types are refused at decode time and pickle is
  never involved, so a checkpoint from a stranger is data, not code.
- Since 2.0 the manifest holds the tensors as columns (names, a dtype table, and little-endian binaries
  of ndim, dims, chunk counts and 24-byte chunk records), validated with numpy and turned into
  ``TensorEntry`` objects only on demand: a 10k-tensor manifest encodes and decodes in a few ms instead
  of building and checking 20k objects. 3.0 is 2.0 with a named checksum algorithm and 64-bit chunk
  checksums (28-byte records). 3.1 adds optional block checksums: one hash over each run of neighbouring
  small chunks, so a restore verifies 10k small tensors with ~140 hash calls (without the GIL) instead of
  10k (holding it); every chunk keeps its own checksum, so a 3.0 reader reads 3.1 by ignoring them.
  1.x, 2.x and 3.0 manifests are still read.
"""

from __future__ import annotations

import gc
import itertools
import math
import re
from collections.abc import ItemsView, Iterator, Mapping, Sequence, ValuesView
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from typing import Any, NamedTuple

import crc32c as _crc32c
import msgpack
import numpy as np

from ckptstore import checksum as _checksum
from ckptstore.errors import FormatError

FORMAT_NAME = "ckptstore"
LATEST_NAME = "ckptstore-latest"
FORMAT_MAJOR = 3  # what writers write; readers also read READ_MAJORS
FORMAT_MINOR = 1  # 3.1: optional block checksums ("blocks"), which 3.0 readers ignore
READ_MAJORS = (1, 2, 3)
LATEST_MAJOR = 1  # the LATEST pointer did not change with manifests 2.0 and 3.0
LATEST_MINOR = 0
ALIGN = 4096
DEFAULT_CHUNK_SIZE = 64 << 20
DEFAULT_MAX_SHARD_SIZE = 1 << 30

# Block checksums (3.1): a save hashes each run of neighbouring chunks under BLOCK_MEMBER bytes, at most
# BLOCK_SPAN bytes from the first's start to the last's end, as a whole too.
BLOCK_MEMBER = 1 << 20
BLOCK_SPAN = 8 << 20
MAX_BLOCK_BYTES = 64 << 20  # what a reader accepts

MAX_MANIFEST_BYTES = 256 << 20
MAX_LATEST_BYTES = 16 << 20
MAX_NDIM = 64
MAX_NAME_LEN = 1024
MAX_SHARD_BYTES = 1 << 48
MAX_METADATA_DEPTH = 32
_MAX_DIM = 2**62
_MAX_CRC = 2**32 - 1
_UNPACK_LIMITS = dict(
    max_str_len=1 << 20,
    max_bin_len=64 << 20,
    max_array_len=1 << 24,
    max_map_len=1 << 24,
    max_ext_len=0,  # ext types (including msgpack timestamps) are not part of the format
)

# The closed set of dtypes. numpy's own types, plus ml_dtypes' low-precision floats when installed.
_NUMPY_DTYPES = {
    name: np.dtype(name)
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "complex64", "complex128",
    )
}
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
DTYPE_NAMES = frozenset(_NUMPY_DTYPES) | frozenset(_ML_DTYPES)
ITEMSIZE = {name: dt.itemsize for name, dt in _NUMPY_DTYPES.items()} | {
    name: 2 if name == "bfloat16" else 1 for name in _ML_DTYPES
}

_SHARD_PART = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_SHARD_RE = re.compile(rf"{_SHARD_PART}(/{_SHARD_PART})?")


@cache  # a closed set of names; a restore asks once per tensor
def dtype_from_name(name: str) -> np.dtype:
    """The numpy dtype (little-endian) for a format dtype name; ``FormatError`` outside the closed set."""
    if name in _NUMPY_DTYPES:
        return _NUMPY_DTYPES[name].newbyteorder("<")
    if name in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            raise FormatError(
                f"dtype {name} needs the ml_dtypes package: pip install 'ckptstore[bf16]'"
            ) from None
        return np.dtype(getattr(ml_dtypes, name))
    raise FormatError(f"unknown dtype {name!r} (supported: {', '.join(sorted(DTYPE_NAMES))})")


_NAME_OF: dict[np.dtype, str] = {}  # the dtypes dtype_name accepted so far (a handful)


def dtype_name(dtype: np.dtype) -> str:
    """The format name of a numpy dtype; ``TypeError`` for anything outside the closed set."""
    # Memoised: numpy computes ``dtype.name`` in Python (3 us; a save of 10k tensors asks 20k times).
    try:
        return _NAME_OF[dtype]
    except KeyError:
        pass
    name = dtype.name
    if (name in _NUMPY_DTYPES and dtype.kind in "biufc") or (name in _ML_DTYPES and dtype == dtype_from_name(name)):
        _NAME_OF[dtype] = name
        return name
    raise TypeError(
        f"dtype {dtype} cannot be stored (supported: {', '.join(sorted(DTYPE_NAMES))}); "
        "object, string and structured arrays are refused because they would need pickle"
    )


def check_tensor_name(name: Any) -> str:
    """Reject names that are empty, too long, or look like paths that escape (``..``, ``/x``, ``\\``, NUL)."""
    if not isinstance(name, str):
        raise FormatError(f"tensor name {name!r} is not a string")
    if not name or len(name) > MAX_NAME_LEN:
        raise FormatError(f"tensor name {name[:80]!r} must have 1..{MAX_NAME_LEN} characters")
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise FormatError(f"tensor name {name!r} contains a leading '/', a backslash or NUL")
    parts = name.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise FormatError(f"tensor name {name!r} has an empty, '.' or '..' component")
    return name


def check_shard_name(name: Any) -> str:
    """Shard names are relative keys inside the step directory: at most two safe path components."""
    if not isinstance(name, str) or not _SHARD_RE.fullmatch(name):
        raise FormatError(f"shard name {name!r} is not a safe relative key (attempt/shard-NNNNN.bin)")
    return name


# ---------------------------------------------------------------------------------------------
# Value objects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A contiguous run of one tensor's bytes inside one shard."""

    shard: str
    offset: int
    nbytes: int
    checksum: int  # of the manifest's algorithm (Manifest.checksum)


@dataclass(frozen=True)
class TensorEntry:
    """One stored tensor: its dtype, shape and the chunks that hold its bytes in order."""

    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[Chunk, ...]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)


# One chunk of a 3.0 manifest's "chunks" column: shard index, offset, nbytes, checksum; packed, little-endian.
CHUNK_RECORD = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("nbytes", "<u8"), ("checksum", "<u8")])
assert CHUNK_RECORD.itemsize == 28
# A block of a 3.1 manifest's "blocks" column has the same layout: shard index, offset, nbytes, checksum.
BLOCK_RECORD = CHUNK_RECORD
# The same in a 2.x manifest: a 32-bit crc32c (decoded into CHUNK_RECORDs).
CHUNK_RECORD_V2 = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("nbytes", "<u8"), ("checksum", "<u4")])
assert CHUNK_RECORD_V2.itemsize == 24


@dataclass(frozen=True, eq=False)
class SmallChunks:
    """Tensors held in one small chunk each, as columns (``TensorTable.small_and_large``): row ``k``
    is tensor ``names[index[k]]``. Offsets and sizes are int64 (validated shards hold < 2**63 bytes)."""

    names: Sequence[str]  # every name of the table; ``index`` picks
    index: np.ndarray  # position of each small tensor in the table
    shard_names: Sequence[str]
    shard: np.ndarray  # index into shard_names
    offset: np.ndarray
    nbytes: np.ndarray
    checksum: np.ndarray  # uint64
    dtypes: Sequence[str]  # the distinct dtype names ``dtype`` indexes
    dtype: np.ndarray
    dims: np.ndarray  # the table's concatenated shapes; a tensor's are dims[dim_start:dim_stop]
    dim_start: np.ndarray
    dim_stop: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def take(self, mask: np.ndarray) -> SmallChunks:
        """The rows where ``mask`` is true (the per-row columns filtered; the shared tables kept)."""
        return replace(
            self, index=self.index[mask], shard=self.shard[mask], offset=self.offset[mask],
            nbytes=self.nbytes[mask], checksum=self.checksum[mask], dtype=self.dtype[mask],
            dim_start=self.dim_start[mask], dim_stop=self.dim_stop[mask],
        )

    def rows(self) -> list[tuple[str, str, int, int, int, str, tuple[int, ...]]]:
        """``(name, shard, offset, nbytes, checksum, dtype, shape)`` per row (for tests and debugging)."""
        dims = self.dims.tolist()
        return [
            (self.names[i], self.shard_names[s], o, n, c, self.dtypes[d], tuple(dims[a:b]))
            for i, s, o, n, c, d, a, b in zip(
                self.index.tolist(), self.shard.tolist(), self.offset.tolist(), self.nbytes.tolist(),
                self.checksum.tolist(), self.dtype.tolist(), self.dim_start.tolist(), self.dim_stop.tolist(),
                strict=True,
            )
        ]


class TensorTable(Mapping[str, TensorEntry]):
    """The tensors of a manifest as columns: a read-only ``Mapping[str, TensorEntry]``.

    A 2.0 manifest stores its tensors column by column (see the README), so decoding one validates a
    handful of arrays instead of building two objects per tensor, and a save encodes the columns it
    already has. ``len``, iteration and ``in`` are cheap; ``table[name]`` builds that ``TensorEntry``
    (and its ``Chunk``s) on demand. Equality is ``Mapping`` equality, so a table equals a plain dict of
    the same entries. Built unvalidated from a save's columns (``from_columns``), from entries
    (``from_entries``), or validated from a file by ``decode_manifest``.
    """

    __slots__ = ("_names", "_index", "_dtypes", "_dtype", "_ndim", "_dims", "_nchunks", "_chunks",
                 "_shard_names", "_lists", "_specs", "_blocks")

    def __init__(
        self,
        names: Sequence[str],
        dtypes: Sequence[str],
        dtype: np.ndarray,
        ndim: np.ndarray,
        dims: np.ndarray,
        nchunks: np.ndarray,
        chunks: np.ndarray,
        shard_names: Sequence[str],
        index: dict[str, int] | None = None,
        blocks: np.ndarray | None = None,
    ):
        self._names = list(names)  # tensor names, in order
        self._index = index  # name -> position, built on first lookup
        self._dtypes = tuple(dtypes)  # the distinct dtype names ``dtype`` indexes
        self._dtype = dtype  # uint8 per tensor: index into _dtypes
        self._ndim = ndim  # uint8 per tensor
        self._dims = dims  # <u8: every tensor's shape, concatenated
        self._nchunks = nchunks  # <u4 per tensor
        self._chunks = chunks  # CHUNK_RECORD per chunk, in tensor order; "shard" indexes _shard_names
        self._shard_names = tuple(shard_names)
        self._lists: tuple[list[Any], ...] | None = None  # the columns as Python lists, on first lookup
        self._specs: dict[str, tuple[tuple[int, ...], str]] | None = None
        # BLOCK_RECORD per block (3.1), in (shard, offset) order; "shard" indexes _shard_names
        self._blocks = np.empty(0, BLOCK_RECORD) if blocks is None else blocks
        for a in (dtype, ndim, dims, nchunks, chunks, self._blocks):
            a.flags.writeable = False

    @classmethod
    def from_columns(
        cls,
        names: Sequence[str],
        specs: Sequence[tuple[str, Sequence[int]]],
        nchunks: np.ndarray,
        shard: np.ndarray,
        offset: np.ndarray,
        nbytes: np.ndarray,
        checksum: np.ndarray,
        shard_names: Sequence[str],
        blocks: np.ndarray | None = None,
    ) -> TensorTable:
        """A table from per-tensor (dtype name, shape) and per-chunk columns in tensor order (a save's),
        and the save's block checksums (``BLOCK_RECORD``s), if any."""
        dtype_index: dict[str, int] = {}
        dtype = np.fromiter((dtype_index.setdefault(d, len(dtype_index)) for d, _ in specs), np.uint8, len(specs))
        ndim = np.fromiter((len(shape) for _, shape in specs), np.uint8, len(specs))
        dims = np.fromiter(itertools.chain.from_iterable(shape for _, shape in specs), "<u8", int(ndim.sum()))
        records = np.empty(len(shard), CHUNK_RECORD)
        records["shard"] = shard
        records["offset"] = offset
        records["nbytes"] = nbytes
        records["checksum"] = checksum
        return cls(names, list(dtype_index), dtype, ndim, dims, np.asarray(nchunks, "<u4"), records, shard_names,
                   blocks=blocks)

    @classmethod
    def from_entries(cls, entries: Mapping[str, TensorEntry], shard_names: Sequence[str]) -> TensorTable:
        """A table holding ``entries`` (a table itself as it is); ``ValueError`` if a chunk names a shard
        not in ``shard_names``."""
        if isinstance(entries, TensorTable):
            return entries  # encoded_columns maps its shard indices to the manifest's shard order
        position = {name: i for i, name in enumerate(shard_names)}
        specs = []
        nchunks = []
        shard: list[int] = []
        offset: list[int] = []
        nbytes: list[int] = []
        crc: list[int] = []
        for name, entry in entries.items():
            specs.append((entry.dtype, entry.shape))
            nchunks.append(len(entry.chunks))
            for c in entry.chunks:
                if c.shard not in position:
                    raise ValueError(f"tensor {name} has a chunk in shard {c.shard!r}, which the manifest does not list")
                shard.append(position[c.shard])
                offset.append(c.offset)
                nbytes.append(c.nbytes)
                crc.append(c.checksum)
        return cls.from_columns(
            list(entries), specs, np.array(nchunks, "<u4"), np.array(shard, "<u4"), np.array(offset, "<u8"),
            np.array(nbytes, "<u8"), np.array(crc, "<u8"), shard_names,
        )

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._lookup()

    def __getitem__(self, name: str) -> TensorEntry:
        i = self._lookup()[name]
        dtype, dim_start, dims, chunk_start, shard, offset, nbytes, crc = self._columns()
        shard_names = self._shard_names
        first, stop = chunk_start[i], chunk_start[i + 1]
        if stop - first == 1:  # the common case, without a loop
            chunks: tuple[Chunk, ...] = (_frozen(Chunk, {
                "shard": shard_names[shard[first]], "offset": offset[first], "nbytes": nbytes[first],
                "checksum": crc[first],
            }),)
        else:
            chunks = tuple([
                _frozen(Chunk, {"shard": shard_names[shard[j]], "offset": offset[j], "nbytes": nbytes[j],
                                "checksum": crc[j]})
                for j in range(first, stop)
            ])
        return _frozen(TensorEntry, {
            "dtype": self._dtypes[dtype[i]], "shape": tuple(dims[dim_start[i] : dim_start[i + 1]]), "chunks": chunks,
        })

    def specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``name -> (shape, dtype name)`` of every tensor, without building entries (template checks;
        built once, shared: do not modify)."""
        if self._specs is None:
            dtype, dim_start, dims = self._columns()[:3]
            dtypes = self._dtypes
            self._specs = {
                name: (tuple(dims[dim_start[i] : dim_start[i + 1]]), dtypes[dtype[i]])
                for i, name in enumerate(self._names)
            }
        return self._specs

    def values(self) -> ValuesView[TensorEntry]:
        return _TableValues(self)

    def items(self) -> ItemsView[str, TensorEntry]:
        return _TableItems(self)

    def _entries(self) -> Iterator[TensorEntry]:
        """Every entry in order: ``table[name]`` for each name, with the lookups hoisted out of the loop
        and the cyclic GC paused (see ``_gc_paused``) while the 2 x 10k objects are built."""
        dtype, dim_start, dims, chunk_start, shard, offset, nbytes, crc = self._columns()
        dtypes = self._dtypes
        shard_names = self._shard_names
        new, set_dict = _new_object, _set_dict
        out = []
        with _gc_paused():
            for i in range(len(self._names)):
                chunks = []
                for j in range(chunk_start[i], chunk_start[i + 1]):
                    c = new(Chunk)
                    set_dict(c, "__dict__", {"shard": shard_names[shard[j]], "offset": offset[j],
                                             "nbytes": nbytes[j], "checksum": crc[j]})
                    chunks.append(c)
                e = new(TensorEntry)
                set_dict(e, "__dict__", {"dtype": dtypes[dtype[i]], "shape": tuple(dims[dim_start[i] : dim_start[i + 1]]),
                                         "chunks": tuple(chunks)})
                out.append(e)
        return iter(out)

    def __repr__(self) -> str:
        return f"<TensorTable of {len(self._names)} tensors, {len(self._chunks)} chunks>"

    def _lookup(self) -> dict[str, int]:
        index = self._index
        if index is None:
            index = self._index = dict(zip(self._names, range(len(self._names)), strict=True))
        return index

    def small_and_large(self, limit: int) -> tuple[SmallChunks, list[str]]:
        """Split the tensors for a restore without building entries: ``(small, large)`` where ``small``
        holds, as columns, every tensor held in one chunk of 1 to ``limit - 1`` bytes, and ``large``
        names the rest (read through ``table[name]``).

        A few numpy operations and no Python object per small tensor: a restore plans its reads from
        these columns while nothing is being read yet."""
        names = self._names
        first = np.zeros(len(names), np.int64)
        if len(names) > 1:
            np.cumsum(self._nchunks[:-1], out=first[1:])
        records = self._chunks
        if len(records):
            first_nbytes = records["nbytes"][np.minimum(first, len(records) - 1)]  # chunkless: any valid row
        else:
            first_nbytes = np.zeros(len(names), np.uint64)
        small_mask = (self._nchunks == 1) & (first_nbytes > 0) & (first_nbytes < limit)
        picked = np.flatnonzero(small_mask)
        large = [names[i] for i in np.flatnonzero(~small_mask).tolist()]
        rows = records[first[picked]]
        dim_start = np.zeros(len(names) + 1, np.int64)
        np.cumsum(self._ndim, out=dim_start[1:])
        small = SmallChunks(
            names=names, index=picked, shard_names=self._shard_names, shard=rows["shard"].astype(np.int64),
            offset=rows["offset"].astype(np.int64), nbytes=rows["nbytes"].astype(np.int64),
            checksum=rows["checksum"], dtypes=self._dtypes, dtype=self._dtype[picked],
            dims=self._dims, dim_start=dim_start[picked], dim_stop=dim_start[picked + 1],
        )
        return small, large

    @property
    def blocks(self) -> np.ndarray:
        """The block checksums (``BLOCK_RECORD``s, in (shard, offset) order; none before 3.1): each the
        checksum of one byte range of a shard that holds several small chunks, padding included. A
        restore of most of a block's tensors verifies the block with one hash instead of one per tensor."""
        return self._blocks

    @property
    def shard_names(self) -> tuple[str, ...]:
        """The shards the ``shard`` fields of chunk and block records index."""
        return self._shard_names

    def shards_used(self) -> set[str]:
        """The names of the shards some chunk lies in."""
        return {self._shard_names[i] for i in np.unique(self._chunks["shard"]).tolist()}

    def total_nbytes(self) -> int:
        """Bytes of all tensors together."""
        return int(self._chunks["nbytes"].sum(dtype=np.uint64))

    def _columns(self) -> tuple[list[Any], ...]:
        lists = self._lists
        if lists is None:
            records = self._chunks
            lists = self._lists = (
                self._dtype.tolist(),
                [0, *np.cumsum(self._ndim, dtype=np.int64).tolist()],
                self._dims.tolist(),
                [0, *np.cumsum(self._nchunks, dtype=np.int64).tolist()],
                records["shard"].tolist(),
                records["offset"].tolist(),
                records["nbytes"].tolist(),
                records["checksum"].tolist(),
            )
        return lists

    def encoded_columns(self, shard_names: Sequence[str]) -> dict[str, Any]:
        """The 3.x manifest fields for these tensors, with chunks (and blocks) indexing ``shard_names``."""
        records = self._chunks
        blocks = self._blocks
        if tuple(shard_names) != self._shard_names:
            position = {name: i for i, name in enumerate(shard_names)}
            remap = np.array([position.get(name, -1) for name in self._shard_names], np.int64)

            def remapped(rows: np.ndarray, what: str) -> np.ndarray:
                used = remap[rows["shard"]] if len(rows) else remap[:0]
                if (used < 0).any():
                    missing = self._shard_names[int(rows["shard"][np.argmax(used < 0)])]
                    raise ValueError(f"a {what} is in shard {missing!r}, which the manifest does not list")
                rows = rows.copy()
                rows["shard"] = used
                return rows

            records = remapped(records, "chunk")
            blocks = remapped(blocks, "block")
        extra = {"blocks": blocks.astype(BLOCK_RECORD, copy=False).tobytes()} if len(blocks) else {}
        return {
            "names": self._names,
            "dtypes": list(self._dtypes),
            "dtype": self._dtype.astype(np.uint8, copy=False).tobytes(),
            "ndim": self._ndim.astype(np.uint8, copy=False).tobytes(),
            "dims": self._dims.astype("<u8", copy=False).tobytes(),
            "nchunks": self._nchunks.astype("<u4", copy=False).tobytes(),
            "chunks": records.astype(CHUNK_RECORD, copy=False).tobytes(),
            **extra,
        }


def shards_of(tensors: Mapping[str, TensorEntry]) -> set[str]:
    """The shards any of ``tensors``' chunks lies in (from the columns when given a ``TensorTable``)."""
    if isinstance(tensors, TensorTable):
        return tensors.shards_used()
    return {c.shard for e in tensors.values() for c in e.chunks}


def nbytes_of(tensors: Mapping[str, TensorEntry]) -> int:
    """Bytes of ``tensors`` together (from the columns when given a ``TensorTable``)."""
    if isinstance(tensors, TensorTable):
        return tensors.total_nbytes()
    return sum(e.nbytes for e in tensors.values())


class _TableValues(ValuesView):  # type: ignore[type-arg]
    _mapping: TensorTable

    def __iter__(self) -> Iterator[TensorEntry]:
        return self._mapping._entries()


class _TableItems(ItemsView):  # type: ignore[type-arg]
    _mapping: TensorTable

    def __iter__(self) -> Iterator[tuple[str, TensorEntry]]:
        return zip(self._mapping._names, self._mapping._entries(), strict=True)


@dataclass(frozen=True)
class Manifest:
    """Everything a restore needs to know about one committed checkpoint.

    ``tensors`` is any ``Mapping[str, TensorEntry]``: a plain dict, or the ``TensorTable`` a save builds
    and a 2.0 or 3.0 manifest decodes to. ``major``/``minor`` are the version the manifest was read as;
    ``checksum`` the algorithm of the chunks' checksums (``ckptstore.checksum``; crc32c before 3.0).
    """

    step: int
    created: float
    library: str
    shards: Mapping[str, int]
    tensors: Mapping[str, TensorEntry]
    scalars: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    minor: int = field(default=FORMAT_MINOR, compare=False)
    major: int = field(default=FORMAT_MAJOR, compare=False)
    checksum: str = _checksum.DEFAULT

    @property
    def nbytes(self) -> int:
        return sum(self.shards.values())


@dataclass(frozen=True)
class Latest:
    """The LATEST pointer: which checkpoint is newest, a summary of it, and the retention state."""

    step: int
    manifest: str
    created: float
    nbytes: int
    num_tensors: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    retention: Mapping[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Layout planning
# ---------------------------------------------------------------------------------------------


def align_up(n: int, align: int = ALIGN) -> int:
    return -(-n // align) * align


class PlannedChunk(NamedTuple):  # a tuple: built 10k times per plan of 10k tensors (0.65 us, a dataclass 1.15)
    name: str
    start: int  # byte offset inside the tensor
    nbytes: int
    shard: int  # index into the plan's shard list
    offset: int  # byte offset inside the shard


@dataclass(frozen=True)
class LayoutPlan:
    """Where every byte of every tensor goes: chunks grouped by shard, in write order."""

    shards: tuple[tuple[PlannedChunk, ...], ...]
    shard_sizes: tuple[int, ...]

    @cached_property
    def columns(self) -> PlanColumns:
        """Every chunk in plan order — which is tensor order: ``plan_layout`` places each tensor's chunks
        one after another, shard after shard — as the columns of a 2.0 manifest (less the checksums).
        Computed once per plan (a store reuses the plan of a repeated layout)."""
        flat = [pc for shard in self.shards for pc in shard]
        names: list[str] = []
        counts: list[int] = []
        for pc in flat:
            if names and names[-1] == pc.name:
                counts[-1] += 1
            else:
                names.append(pc.name)
                counts.append(1)
        if len(set(names)) != len(names):
            raise ValueError("the plan does not keep each tensor's chunks together")
        n = len(flat)
        return PlanColumns(
            names=tuple(names),
            nchunks=np.array(counts, "<u4"),
            shard=np.fromiter((pc.shard for pc in flat), "<u4", n),
            offset=np.fromiter((pc.offset for pc in flat), "<u8", n),
            nbytes=np.fromiter((pc.nbytes for pc in flat), "<u8", n),
        )


    @cached_property
    def blocks(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per shard, the blocks a save checksums as a whole too: ``(first, stop)`` ranges of the shard's
        chunks — at least two neighbours, each of 1 to ``BLOCK_MEMBER - 1`` bytes, at most
        ``BLOCK_SPAN`` bytes from the first's offset to the last's end (padding between them included)."""
        return tuple(plan_blocks(shard) for shard in self.shards)


def plan_blocks(chunks: Sequence[PlannedChunk]) -> tuple[tuple[int, int], ...]:
    """The blocks of one shard's chunks (see ``LayoutPlan.blocks``)."""
    out: list[tuple[int, int]] = []
    first: int | None = None
    for i, pc in enumerate(chunks):
        member = 0 < pc.nbytes < BLOCK_MEMBER
        if first is not None and (not member or pc.offset + pc.nbytes - chunks[first].offset > BLOCK_SPAN):
            if i - first >= 2:
                out.append((first, i))
            first = None
        if member and first is None:
            first = i
    if first is not None and len(chunks) - first >= 2:
        out.append((first, len(chunks)))
    return tuple(out)


@dataclass(frozen=True)
class PlanColumns:
    """A plan's chunks as arrays, in tensor order: ``nchunks`` per tensor, the rest per chunk."""

    names: tuple[str, ...]
    nchunks: np.ndarray
    shard: np.ndarray
    offset: np.ndarray
    nbytes: np.ndarray


def _check_layout_args(max_shard_size: int, chunk_size: int) -> int:
    """The chunk size to use (at most ``max_shard_size``), or ``ValueError``."""
    if chunk_size <= 0 or chunk_size % ALIGN:
        raise ValueError(f"chunk_size must be a positive multiple of {ALIGN}, got {chunk_size}")
    if max_shard_size < ALIGN:
        raise ValueError(f"max_shard_size must be at least {ALIGN} bytes, got {max_shard_size}")
    return min(chunk_size, max_shard_size // ALIGN * ALIGN)


class _Packing:
    """The chunks of ``sizes`` in order (tensors over ``chunk_size`` split at multiples of it) and
    where each would start and end if all went into one shard, each page-aligned: ``begin`` and
    ``end`` per chunk. Packing at any target is then a few ``searchsorted`` calls, not a Python step
    per tensor, so a search over targets is cheap."""

    def __init__(self, sizes: Sequence[tuple[str, int]], chunk_size: int) -> None:
        self.names = [name for name, _ in sizes]
        nbytes = np.fromiter((n for _, n in sizes), np.int64, len(sizes))
        if len(nbytes) and nbytes.min() < 0:
            raise ValueError("tensor sizes must not be negative")
        per = np.maximum(1, -(-nbytes // chunk_size))  # chunks per tensor (an empty tensor has one)
        self.tensor = np.repeat(np.arange(len(sizes)), per)
        first = np.cumsum(per) - per  # each tensor's first chunk
        self.start = (np.arange(len(self.tensor)) - first[self.tensor]) * chunk_size
        self.nbytes = np.minimum(chunk_size, nbytes[self.tensor] - self.start)
        aligned = align_up(self.nbytes)  # element-wise
        self.begin = np.cumsum(aligned) - aligned
        self.end = self.begin + self.nbytes  # never decreasing: end[i] <= begin[i + 1] <= end[i + 1]

    def firsts(self, target: int) -> list[int]:
        """The first chunk of each shard of a greedy fill: a shard takes chunks while the next one still
        ends within ``target`` bytes (always at least one)."""
        out: list[int] = []
        i, count = 0, len(self.nbytes)
        while i < count:
            out.append(i)
            i = max(i + 1, int(np.searchsorted(self.end, self.begin[i] + target, "right")))
        return out

    def plan(self, target: int) -> LayoutPlan:
        firsts = self.firsts(target)
        if not firsts:
            return LayoutPlan(((),), (0,))
        bounds = [*firsts, len(self.nbytes)]
        shard = np.repeat(np.arange(len(firsts)), np.diff(bounds))
        offset = self.begin - self.begin[firsts][shard]
        names = self.names
        flat = [
            PlannedChunk(names[t], s, n, k, o)
            for t, s, n, k, o in zip(self.tensor.tolist(), self.start.tolist(), self.nbytes.tolist(),
                                     shard.tolist(), offset.tolist(), strict=True)
        ]
        shards = tuple(tuple(flat[a:b]) for a, b in itertools.pairwise(bounds))
        sizes = tuple(int(self.end[b - 1] - self.begin[a]) for a, b in itertools.pairwise(bounds))
        plan = LayoutPlan(shards, sizes)
        if len(set(names)) == len(names):  # else ``columns`` raises when asked for
            per = np.bincount(self.tensor, minlength=len(names))
            plan.__dict__["columns"] = PlanColumns(  # the cached property, from the arrays at hand
                tuple(names), per.astype("<u4"), shard.astype("<u4"), offset.astype("<u8"), self.nbytes.astype("<u8"))
        return plan


def plan_layout(
    sizes: Sequence[tuple[str, int]],
    *,
    target_shard_size: int,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> LayoutPlan:
    """Pack tensors, in the given order, into shards of about ``target_shard_size`` bytes.

    Tensors larger than ``chunk_size`` are split at ``chunk_size`` boundaries (a multiple of 4096), so
    every chunk starts page-aligned both in the shard and in the tensor. Small tensors share shards.
    No shard exceeds ``max_shard_size``.
    """
    chunk_size = _check_layout_args(max_shard_size, chunk_size)
    return _Packing(sizes, chunk_size).plan(max(ALIGN, min(target_shard_size, max_shard_size)))


def plan_balanced(
    sizes: Sequence[tuple[str, int]],
    parts: int,
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> LayoutPlan:
    """A layout of about ``parts`` equally sized shards (one fsync'd stream per writer thread).

    Shards hold whole chunks, so a greedy fill at ``total / parts`` can end a shard up to a chunk short
    and spill one small extra shard that one writer then writes alone, after the others. The smallest
    target (found by bisection) that yields at most ``parts`` shards avoids that. No shard exceeds
    ``max_shard_size``, which may force more shards.
    """
    chunk_size = _check_layout_args(max_shard_size, chunk_size)
    packing = _Packing(sizes, chunk_size)
    total = int(packing.nbytes.sum())
    lo = max(ALIGN, min(math.ceil(total / max(1, parts)), max_shard_size))
    if len(packing.firsts(lo)) <= parts or lo >= max_shard_size:
        return packing.plan(lo)
    hi = min(int(packing.end[-1]), max_shard_size)  # everything in one shard, or the limit
    if len(packing.firsts(hi)) > parts:  # then hi is max_shard_size: the limit decides the count
        return packing.plan(hi)  # the fewest shards it allows
    while hi - lo > 1:  # lo yields too many shards, hi few enough (a shard ends anywhere, not on a page)
        mid = (lo + hi) // 2
        if len(packing.firsts(mid)) <= parts:
            hi = mid
        else:
            lo = mid
    return packing.plan(hi)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy scalars become Python scalars; anything else is refused."""
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not plain data (use dict, list, str, int, float, bool, None, bytes)")


def pack(obj: Any, what: str) -> bytes:
    """msgpack-encode plain data, with an error that says which object was not plain."""
    try:
        return msgpack.packb(obj, use_bin_type=True, default=_plain, datetime=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{what} cannot be serialised: {e}") from None


def encode_manifest(m: Manifest) -> bytes:
    """The 3.0 encoding of ``m`` (sealed). Its tensors may be a dict of entries or a ``TensorTable``."""
    try:
        _checksum.check_algorithm(m.checksum)
    except ValueError as e:
        raise ValueError(f"manifest of step {m.step} cannot be encoded: {e}") from None
    shard_names = list(m.shards)
    try:
        columns = TensorTable.from_entries(m.tensors, shard_names).encoded_columns(shard_names)
    except ValueError as e:
        raise ValueError(f"manifest of step {m.step} cannot be encoded: {e}") from None
    doc = {
        "format": FORMAT_NAME,
        "version": [FORMAT_MAJOR, m.minor if m.major == FORMAT_MAJOR else FORMAT_MINOR],
        "step": m.step,
        "created": m.created,
        "library": m.library,
        "shards": [[name, size] for name, size in m.shards.items()],
        "checksum": m.checksum,
        **columns,
        "scalars": dict(m.scalars),
        "metadata": dict(m.metadata),
    }
    return seal(pack(doc, "manifest"))


def encode_latest(p: Latest) -> bytes:
    doc = {
        "format": LATEST_NAME,
        "version": [LATEST_MAJOR, LATEST_MINOR],
        "step": p.step,
        "manifest": p.manifest,
        "created": p.created,
        "nbytes": p.nbytes,
        "num_tensors": p.num_tensors,
        "metadata": dict(p.metadata),
        "retention": dict(p.retention),
    }
    return seal(pack(doc, "LATEST pointer"))


# The seal: a last top-level entry "crc32c" whose value, a msgpack uint32 (0xce + 4 big-endian bytes), is
# the CRC-32C of every byte before that value. The file stays one plain msgpack map, and a flipped bit
# anywhere — in a tensor name, a scalar, the metadata — is caught before the document is trusted.
SEAL_KEY = "crc32c"
_SEAL_KEY_BYTES = b"\xa6" + SEAL_KEY.encode()  # msgpack fixstr of length 6
_SEAL_TAIL = len(_SEAL_KEY_BYTES) + 5


def seal(body: bytes) -> bytes:
    """Append the ``crc32c`` entry to an encoded top-level map (see ``SEAL_KEY``)."""
    head = body[0]
    if 0x80 <= head < 0x8F:
        header, rest = bytes([head + 1]), body[1:]
    elif head == 0x8F:  # 15 entries + the seal no longer fit a fixmap
        header, rest = b"\xde\x00\x10", body[1:]
    elif head == 0xDE:
        header, rest = b"\xde" + (int.from_bytes(body[1:3], "big") + 1).to_bytes(2, "big"), body[3:]
    else:
        raise ValueError("only maps of fewer than 65535 entries can be sealed")
    covered = header + rest + _SEAL_KEY_BYTES
    return covered + b"\xce" + _crc32c.crc32c(covered).to_bytes(4, "big")


def _check_seal(data: bytes, where: str) -> None:
    if len(data) < _SEAL_TAIL + 1 or data[-_SEAL_TAIL:-5] != _SEAL_KEY_BYTES or data[-5] != 0xCE:
        raise FormatError(f"{where}: no crc32c seal at the end (truncated, damaged, or not written by ckptstore)")
    stored = int.from_bytes(data[-4:], "big")
    actual = _crc32c.crc32c(memoryview(data)[:-5])
    if stored != actual:
        raise FormatError(
            f"{where}: crc32c mismatch (stored {stored:#010x}, computed {actual:#010x}) — the file is damaged"
        )


# ---------------------------------------------------------------------------------------------
# Decoding and validation
# ---------------------------------------------------------------------------------------------


def _map_once(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack's ``object_pairs_hook``: a map, refusing a key given twice — a reader that keeps the first
    value and one that keeps the last would see two different documents."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[Any] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"map key {str(repeated)[:80]!r} appears more than once")
    return out


def _unpack(data: bytes, where: str, limit: int) -> Any:
    if len(data) > limit:
        raise FormatError(f"{where}: {len(data)} bytes is larger than the {limit}-byte limit")
    _check_seal(data, where)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, object_pairs_hook=_map_once,
                               **_UNPACK_LIMITS)
    except Exception as e:  # msgpack raises ValueError, StackError, ExtraData, UnicodeDecodeError ...
        raise FormatError(f"{where}: not a valid msgpack document ({type(e).__name__}: {e})") from None


def _field(doc: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise FormatError(f"{where}: missing field {key!r}")
    value = doc[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise FormatError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _int_in(value: Any, lo: int, hi: int, what: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise FormatError(f"{where}: {what} {value!r} is not an integer in [{lo}, {hi}]")
    return value


def _check_version(doc: Mapping[str, Any], name: str, where: str, majors: tuple[int, ...]) -> tuple[int, int]:
    if doc.get("format") != name:
        raise FormatError(f"{where}: not a {name} document (format={doc.get('format')!r})")
    version = doc.get("version")
    if not (isinstance(version, list) and len(version) == 2 and all(type(v) is int for v in version)):
        raise FormatError(f"{where}: malformed version {version!r}")
    if version[0] not in majors:
        readable = " and ".join([", ".join(map(str, majors[:-1])), str(majors[-1])] if len(majors) > 1 else [str(majors[0])])
        raise FormatError(
            f"{where}: format version {version[0]}.{version[1]} is not supported "
            f"(this ckptstore reads major version{'s' if len(majors) > 1 else ''} {readable}); upgrade ckptstore"
        )
    return version[0], version[1]


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise FormatError(f"{where}: nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise FormatError(f"{where}: map key {k!r} is not a string")
            _check_plain(v, where, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_plain(v, where, depth + 1)
    elif not (value is None or isinstance(value, (bool, int, float, str, bytes))):
        raise FormatError(f"{where}: value of type {type(value).__name__} is not plain data")


def _checked_name(check: Any, name: Any, where: str) -> str:
    """Run a name check, with ``where`` (the manifest) in its error."""
    try:
        return check(name)
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small containers.

    Decoding a 10k-tensor manifest creates ~100k lists, maps and entries, none of them cyclic; each
    allocation burst triggers collections that scan all of them again, which costs more than the
    decoding itself. Only a collector this call switched off is switched back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Accepts exactly the names check_tensor_name accepts that have no component starting with "." (those go
# to the full check): 1+ components, each starting with neither "/", ".", "\\" nor NUL, none empty.
_PLAIN_NAME_RE = re.compile(r"[^/.\\\x00][^/\\\x00]*(?:/[^/.\\\x00][^/\\\x00]*)*")
_new_object = object.__new__
_set_dict = object.__setattr__


def _frozen(cls: type, fields: dict[str, Any]) -> Any:
    # A frozen dataclass's __init__ pays object.__setattr__ per field; 20k entries make that most of a
    # 10k-tensor decode. Same fields, same __eq__/__hash__, a third of the cost.
    obj = _new_object(cls)
    _set_dict(obj, "__dict__", fields)
    return obj


def _fast_tensor_entry(name: Any, entry: Any, shards: Mapping[str, int]) -> TensorEntry | None:
    """The entry, if it is plainly valid; None when it needs (and gets) the full, precise check.

    Accepts a subset of what the full check accepts (``type(x) is int`` excludes bool as the full check
    does), so the fast path never lets through anything the full check would refuse.
    """
    if (
        type(name) is not str
        or len(name) > MAX_NAME_LEN
        or type(entry) is not dict
        or _PLAIN_NAME_RE.fullmatch(name) is None
    ):
        return None
    dname = entry.get("dtype")
    raw_shape = entry.get("shape")
    raw_chunks = entry.get("chunks")
    if type(dname) is not str or dname not in ITEMSIZE or type(raw_shape) is not list or type(raw_chunks) is not list:
        return None
    if len(raw_shape) > MAX_NDIM:
        return None
    expected = ITEMSIZE[dname]
    for d in raw_shape:
        if type(d) is not int or not 0 <= d <= _MAX_DIM:
            return None
        expected *= d
    chunks = []
    pos = 0
    for raw in raw_chunks:
        if type(raw) is not list or len(raw) != 4:
            return None
        shard, offset, nbytes, crc = raw
        if type(shard) is not str or type(offset) is not int or type(nbytes) is not int or type(crc) is not int:
            return None
        size = shards.get(shard)
        if (
            size is None
            or not 0 <= offset <= MAX_SHARD_BYTES
            or not 0 <= nbytes <= MAX_SHARD_BYTES
            or not 0 <= crc <= _MAX_CRC
            or offset % ALIGN
            or offset + nbytes > size
        ):
            return None
        chunks.append(_frozen(Chunk, {"shard": shard, "offset": offset, "nbytes": nbytes, "checksum": crc}))
        pos += nbytes
    if pos != expected:
        return None
    return _frozen(TensorEntry, {"dtype": dname, "shape": tuple(raw_shape), "chunks": tuple(chunks)})


def decode_manifest(data: bytes, where: str) -> Manifest:
    """Parse and fully validate a manifest; ``where`` names it in every error."""
    with _gc_paused():
        return _decode_manifest(data, where)


def _decode_manifest(data: bytes, where: str) -> Manifest:
    doc = _unpack(data, where, MAX_MANIFEST_BYTES)
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: the manifest is a {type(doc).__name__}, not a map")
    major, minor = _check_version(doc, FORMAT_NAME, where, READ_MAJORS)
    step = _int_in(doc.get("step"), 0, 2**63 - 1, "step", where)
    created = _field(doc, "created", (int, float), where)
    library = _field(doc, "library", str, where)
    if major == 1:
        algorithm = _checksum.CRC32C
        shards, tensors = _decode_tensors_v1(doc, where)
    else:
        if major == 2:
            algorithm = _checksum.CRC32C
        else:
            algorithm = _field(doc, "checksum", str, where)
            if algorithm not in _checksum.ALGORITHMS:
                raise FormatError(
                    f"{where}: unknown checksum algorithm {_short(algorithm)} (this ckptstore knows "
                    f"{', '.join(_checksum.ALGORITHMS)}); upgrade ckptstore"
                )
        shards, tensors = _decode_tensors_v2(doc, where, major, algorithm)

    scalars = _field(doc, "scalars", dict, where)
    for name, value in scalars.items():
        _checked_name(check_tensor_name, name, where)
        if name in tensors:
            raise FormatError(f"{where}: {name} is both a tensor and a scalar")
        if not isinstance(value, (bool, int, float, str)):
            raise FormatError(f"{where}: scalar {name} has type {type(value).__name__}")
    metadata = _field(doc, "metadata", dict, where)
    _check_plain(metadata, f"{where}: metadata")
    return Manifest(step, float(created), library, shards, tensors, scalars, metadata, minor, major, algorithm)


def _decode_tensors_v1(doc: dict[str, Any], where: str) -> tuple[dict[str, int], dict[str, TensorEntry]]:
    """Format 1.x: ``shards`` a map, ``tensors`` a map of per-tensor maps (the pre-2.0 reader, unchanged)."""
    raw_shards = _field(doc, "shards", dict, where)
    shards: dict[str, int] = {}
    for name, size in raw_shards.items():
        _checked_name(check_shard_name, name, where)
        shards[name] = _int_in(size, 0, MAX_SHARD_BYTES, f"size of shard {name}", where)

    raw_tensors = _field(doc, "tensors", dict, where)
    tensors: dict[str, TensorEntry] = {}
    extents: dict[str, list[tuple[int, int, str]]] = {name: [] for name in shards}
    for name, entry in raw_tensors.items():
        fast = _fast_tensor_entry(name, entry, shards)
        if fast is not None:
            tensors[name] = fast
            for c in fast.chunks:
                extents[c.shard].append((c.offset, c.offset + c.nbytes, name))
            continue
        # Anything the fast path does not accept gets the full check and its precise error.
        _checked_name(check_tensor_name, name, where)
        tw = f"{where}: tensor {name}"
        if not isinstance(entry, dict):
            raise FormatError(f"{tw}: entry is not a map")
        dname = _field(entry, "dtype", str, tw)
        if dname not in DTYPE_NAMES:
            raise FormatError(f"{tw}: unknown dtype {dname!r}")
        raw_shape = _field(entry, "shape", list, tw)
        if len(raw_shape) > MAX_NDIM:
            raise FormatError(f"{tw}: {len(raw_shape)} dimensions (at most {MAX_NDIM})")
        shape = tuple(_int_in(d, 0, 2**62, "dimension", tw) for d in raw_shape)
        expected = math.prod(shape) * ITEMSIZE[dname]  # Python ints: no overflow
        chunks = []
        pos = 0
        for raw in _field(entry, "chunks", list, tw):
            if not (isinstance(raw, list) and len(raw) == 4):
                raise FormatError(f"{tw}: chunk {raw!r} is not [shard, offset, nbytes, crc32c]")
            shard, offset, nbytes, crc = raw
            # A list or map here is unhashable: check the type before the lookup, not after.
            if not isinstance(shard, str) or shard not in shards:
                _checked_name(check_shard_name, shard, tw)
                raise FormatError(f"{tw}: chunk names shard {shard!r}, which the manifest does not list")
            _int_in(offset, 0, MAX_SHARD_BYTES, "chunk offset", tw)
            _int_in(nbytes, 0, MAX_SHARD_BYTES, "chunk size", tw)
            _int_in(crc, 0, 2**32 - 1, "crc32c", tw)
            if offset % ALIGN:
                raise FormatError(f"{tw}: chunk offset {offset} is not {ALIGN}-byte aligned")
            if offset + nbytes > shards[shard]:
                raise FormatError(
                    f"{tw}: chunk [{offset}, {offset + nbytes}) lies outside shard {shard} "
                    f"({shards[shard]} bytes)"
                )
            extents[shard].append((offset, offset + nbytes, name))
            chunks.append(Chunk(shard, offset, nbytes, crc))
            pos += nbytes
        if pos != expected:
            raise FormatError(
                f"{tw}: chunks hold {pos} bytes but shape {list(shape)} of {dname} needs {expected}"
            )
        tensors[name] = TensorEntry(dname, shape, tuple(chunks))
    for shard, spans in extents.items():
        spans.sort()
        for (_a0, a1, an), (b0, _b1, bn) in zip(spans, spans[1:], strict=False):
            if b0 < a1:
                raise FormatError(f"{where}: tensors {an} and {bn} overlap in shard {shard} at byte {b0}")
    return shards, tensors


# ---------------------------------------------------------------------------------------------
# Format 2.0: columns, validated with numpy
# ---------------------------------------------------------------------------------------------

# check_tensor_name's fast path over every name at once: join the names with NUL (which no valid name
# contains) between and around them, and make every "/" a NUL too; then a name is empty, has an empty
# component, a leading or trailing "/", or a component starting with "." exactly where one of these
# appears (plus: a backslash anywhere). A plain substring search each: no per-name work and no regex
# backtracking state (two searches of the one string: 0.38 ms for 10k names, against 0.9 ms for the six
# pairs searched for in the joined names before). A name that fails (or has a component starting with
# ".", which is allowed) gets the precise per-name check, which also produces the error.
_NAME_FLAWS = ("\x00\x00", "\x00.")
_MAX_TOTAL_BYTES = 2**63 - 1  # a 2.0 manifest's shards, together (LATEST's nbytes is an int64 too)
_MAX_PRODUCT = float(2**62)  # byte counts below this, estimated in float64, are exact in uint64


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _first(mask: np.ndarray) -> int | None:
    """The index of the first True in ``mask``, or None."""
    return int(np.argmax(mask)) if mask.any() else None


def _owner(starts: np.ndarray, j: int) -> int:
    """The tensor whose run (``starts[i]`` to ``starts[i + 1]``, one start per tensor) holds item ``j``."""
    return int(np.searchsorted(starts, j, side="right")) - 1


def _check_names(names: list[Any], where: str) -> None:
    try:
        joined = "\x00" + "\x00".join(names) + "\x00"
    except TypeError:  # a name that is not a string: the per-name check says which
        joined = None
    if joined is not None and (not names or (
        joined.count("\x00") == len(names) + 1  # no NUL inside a name
        and "\\" not in joined
        and not any(map((joined.replace("/", "\x00")).__contains__, _NAME_FLAWS))
        and max(map(len, names)) <= MAX_NAME_LEN
    )):
        return
    for name in names:
        if type(name) is not str or len(name) > MAX_NAME_LEN or _PLAIN_NAME_RE.fullmatch(name) is None:
            _checked_name(check_tensor_name, name, where)


def _column(doc: Mapping[str, Any], key: str, dtype: Any, count: int, what: str, where: str) -> np.ndarray:
    """A bin field as a read-only array of exactly ``count`` items (checked before anything is allocated)."""
    raw = _field(doc, key, bytes, where)
    itemsize = np.dtype(dtype).itemsize
    if len(raw) != count * itemsize:
        raise FormatError(f"{where}: field {key!r} holds {len(raw)} bytes, expected {count * itemsize} ({what})")
    return np.frombuffer(raw, dtype)


def _decode_tensors_v2(doc: dict[str, Any], where: str, major: int, algorithm: str) -> tuple[dict[str, int], TensorTable]:
    """Formats 2.x and 3.x: validate the tensor columns with array operations, as strictly as the 1.x
    reader. (3.x differs in its chunk records: 64-bit checksums of ``algorithm``.)

    Every count is checked against the byte length of the column that holds it before an array is
    made, so memory stays within a small multiple of the manifest's size whatever the counts claim.
    """
    raw_shards = _field(doc, "shards", list, where)
    shards: dict[str, int] = {}
    for i, raw in enumerate(raw_shards):
        if type(raw) is not list or len(raw) != 2:
            raise FormatError(f"{where}: shard entry #{i} {_short(raw)} is not [name, size]")
        name, size = raw
        _checked_name(check_shard_name, name, where)
        if name in shards:
            raise FormatError(f"{where}: shard {name} is listed twice")
        shards[name] = _int_in(size, 0, MAX_SHARD_BYTES, f"size of shard {name}", where)
    total = sum(shards.values())
    if total > _MAX_TOTAL_BYTES:
        raise FormatError(f"{where}: the shards hold {total} bytes together (at most {_MAX_TOTAL_BYTES})")
    shard_names = tuple(shards)

    names = _field(doc, "names", list, where)
    _check_names(names, where)
    count = len(names)
    index = dict(zip(names, range(count), strict=True))
    if len(index) != count:
        seen: set[str] = set()
        duplicate = next(n for n in names if n in seen or seen.add(n))  # type: ignore[func-returns-value]
        raise FormatError(f"{where}: tensor {duplicate} is listed twice")

    dtypes = _field(doc, "dtypes", list, where)
    for d in dtypes:
        if type(d) is not str or d not in DTYPE_NAMES:
            raise FormatError(f"{where}: unknown dtype {_short(d)} in field 'dtypes'")
    if len(set(dtypes)) != len(dtypes):
        raise FormatError(f"{where}: field 'dtypes' lists a dtype twice")

    dtype = _column(doc, "dtype", np.uint8, count, "one uint8 per tensor", where)
    ndim = _column(doc, "ndim", np.uint8, count, "one uint8 per tensor", where)
    nchunks = _column(doc, "nchunks", "<u4", count, "one uint32 per tensor", where)
    num_dims = int(ndim.sum(dtype=np.int64))
    dims = _column(doc, "dims", "<u8", num_dims, f"one uint64 per dimension; ndim adds up to {num_dims}", where)
    num_chunks = int(nchunks.sum(dtype=np.int64))
    record = CHUNK_RECORD if major >= 3 else CHUNK_RECORD_V2
    records = _column(doc, "chunks", record, num_chunks,
                      f"{record.itemsize} bytes per chunk; nchunks adds up to {num_chunks}", where)
    if record is not CHUNK_RECORD:
        records = records.astype(CHUNK_RECORD)

    def tensor(i: int) -> str:
        return f"{where}: tensor {names[i]}"

    i = _first(dtype >= len(dtypes))
    if i is not None:
        raise FormatError(f"{tensor(i)}: dtype index {dtype[i]} is out of range (field 'dtypes' lists {len(dtypes)})")
    i = _first(ndim > MAX_NDIM)
    if i is not None:
        raise FormatError(f"{tensor(i)}: {ndim[i]} dimensions (at most {MAX_NDIM})")
    dim_start = np.zeros(count + 1, np.int64)
    np.cumsum(ndim, out=dim_start[1:])
    j = _first(dims > _MAX_DIM)
    if j is not None:
        raise FormatError(f"{tensor(_owner(dim_start[:-1], j))}: dimension {dims[j]} is not an integer in [0, {_MAX_DIM}]")

    # Chunks, each on its own: in a listed shard, page-aligned, inside the shard.
    chunk_start = np.zeros(count + 1, np.int64)
    np.cumsum(nchunks, out=chunk_start[1:])

    def chunk_owner(j: int) -> str:
        return tensor(_owner(chunk_start[:-1], j))

    shard = records["shard"]
    offset = records["offset"]
    nbytes = records["nbytes"]
    j = _first(shard >= len(shard_names))
    if j is not None:
        raise FormatError(
            f"{chunk_owner(j)}: chunk names shard #{shard[j]}, but the manifest lists {len(shard_names)} shard(s)"
        )
    j = _first(offset > MAX_SHARD_BYTES)
    if j is not None:
        raise FormatError(f"{chunk_owner(j)}: chunk offset {offset[j]} is not an integer in [0, {MAX_SHARD_BYTES}]")
    j = _first(nbytes > MAX_SHARD_BYTES)
    if j is not None:
        raise FormatError(f"{chunk_owner(j)}: chunk size {nbytes[j]} is not an integer in [0, {MAX_SHARD_BYTES}]")
    j = _first(offset % ALIGN != 0)
    if j is not None:
        raise FormatError(f"{chunk_owner(j)}: chunk offset {offset[j]} is not {ALIGN}-byte aligned")
    top = _checksum.MAX_VALUE[algorithm]
    j = _first(records["checksum"] > top) if top < 2**64 - 1 else None
    if j is not None:
        raise FormatError(f"{chunk_owner(j)}: chunk checksum {records['checksum'][j]} is not a {algorithm} value (at most {top})")
    end = offset + nbytes  # both at most 2**48: no overflow
    sizes = np.array(list(shards.values()), np.uint64)
    j = _first(end > sizes[shard]) if num_chunks else None
    if j is not None:
        name = shard_names[shard[j]]
        raise FormatError(
            f"{chunk_owner(j)}: chunk [{offset[j]}, {end[j]}) lies outside shard {name} ({shards[name]} bytes)"
        )

    # No two chunks overlap within a shard. A save writes them in (shard, offset) order, which one pass
    # confirms; otherwise sort by (shard, offset, end), so a zero-length chunk sorts before a chunk
    # starting at the same byte and only a chunk starting inside another counts (as in 1.x).
    if num_chunks > 1 and not (
        (shard[1:] > shard[:-1]) | ((shard[1:] == shard[:-1]) & (offset[1:] >= end[:-1]))
    ).all():
        order = np.lexsort((end, offset, shard))
        s_shard, s_offset, s_end = shard[order], offset[order], end[order]
        k = _first((s_shard[1:] == s_shard[:-1]) & (s_offset[1:] < s_end[:-1]))
        if k is not None:
            a, b = int(order[k]), int(order[k + 1])
            raise FormatError(
                f"{where}: tensors {names[_owner(chunk_start[:-1], a)]} and {names[_owner(chunk_start[:-1], b)]} "
                f"overlap in shard {shard_names[s_shard[k]]} at byte {s_offset[k + 1]}"
            )

    # Each tensor's chunks hold exactly prod(shape) * itemsize bytes. Chunks lie inside shards without
    # overlapping and the shards hold < 2**63 bytes together, so the cumulative sum cannot overflow.
    held_cum = np.zeros(num_chunks + 1, np.uint64)
    np.cumsum(nbytes, out=held_cum[1:])
    held = held_cum[chunk_start[1:]] - held_cum[chunk_start[:-1]]
    itemsize = np.array([ITEMSIZE[d] for d in dtypes], np.uint64)[dtype] if dtypes else np.zeros(count, np.uint64)
    # The product of each shape's dims: exact modulo 2**64 in uint64, estimated in float64 to tell when
    # it wrapped. reduceat over the tensors that have dimensions only (it mishandles empty runs); a
    # 0-d tensor has one element.
    exact = np.ones(count, np.uint64)
    approx = np.ones(count, np.float64)
    zero = np.zeros(count, bool)
    has_dims = ndim > 0
    with np.errstate(all="ignore"):  # wrapping is expected (and detected); inf * 0 is nan, caught below
        if num_dims:
            starts = dim_start[:-1][has_dims]
            exact[has_dims] = np.multiply.reduceat(dims, starts)
            approx[has_dims] = np.multiply.reduceat(dims.astype(np.float64), starts)
            zero[has_dims] = np.logical_or.reduceat(dims == 0, starts)
        needed = exact * itemsize  # exact where a dimension is 0 or the estimate is well below 2**63
        small = zero | (approx * itemsize < _MAX_PRODUCT)
    # Check the rest, in order, with Python's exact integers. One of them that is right holds >= 2**62
    # bytes (less float error) of the shards' < 2**63, so at most two are: three are enough to find
    # an error if there is one.
    for i in np.flatnonzero(~small | (held != needed))[:3].tolist():
        shape = dims[dim_start[i] : dim_start[i + 1]].tolist()
        expected = math.prod(shape) * ITEMSIZE[dtypes[dtype[i]]]
        if int(held[i]) != expected:
            raise FormatError(
                f"{tensor(i)}: chunks hold {held[i]} bytes but shape {shape} of {dtypes[dtype[i]]} needs {expected}"
            )
    blocks = _decode_blocks(doc, where, shards, algorithm) if major >= 3 and "blocks" in doc else None
    table = TensorTable(names, dtypes, dtype, ndim, dims, nchunks, records, shard_names, index, blocks)
    return shards, table


def _decode_blocks(doc: dict[str, Any], where: str, shards: Mapping[str, int], algorithm: str) -> np.ndarray:
    """3.1's ``blocks``: each inside a listed shard, page-aligned, 1 to ``MAX_BLOCK_BYTES`` bytes, in
    (shard, offset) order without overlap. (A restore only uses a block to verify the chunks inside it
    with one hash, falling back to their own checksums, so nothing else about it needs to be true.)"""
    raw = _field(doc, "blocks", bytes, where)
    size = BLOCK_RECORD.itemsize
    if len(raw) % size:
        raise FormatError(f"{where}: field 'blocks' holds {len(raw)} bytes, not a multiple of {size} (one record per block)")
    blocks = np.frombuffer(raw, BLOCK_RECORD)
    shard, offset, nbytes = blocks["shard"], blocks["offset"], blocks["nbytes"]
    shard_names = list(shards)

    def block(j: int) -> str:
        return f"{where}: block #{j}"

    j = _first(shard >= len(shard_names))
    if j is not None:
        raise FormatError(f"{block(j)} names shard #{shard[j]}, but the manifest lists {len(shard_names)} shard(s)")
    j = _first(offset > MAX_SHARD_BYTES)
    if j is not None:
        raise FormatError(f"{block(j)}: offset {offset[j]} is not an integer in [0, {MAX_SHARD_BYTES}]")
    j = _first(offset % ALIGN != 0)
    if j is not None:
        raise FormatError(f"{block(j)}: offset {offset[j]} is not {ALIGN}-byte aligned")
    j = _first((nbytes == 0) | (nbytes > MAX_BLOCK_BYTES))
    if j is not None:
        raise FormatError(f"{block(j)}: size {nbytes[j]} is not in [1, {MAX_BLOCK_BYTES}]")
    top = _checksum.MAX_VALUE[algorithm]
    j = _first(blocks["checksum"] > top) if top < 2**64 - 1 else None
    if j is not None:
        raise FormatError(f"{block(j)}: checksum {blocks['checksum'][j]} is not a {algorithm} value (at most {top})")
    end = offset + nbytes  # offset <= 2**48, nbytes <= 2**26: no overflow
    sizes = np.array(list(shards.values()), np.uint64)
    j = _first(end > sizes[shard]) if len(blocks) else None
    if j is not None:
        name = shard_names[shard[j]]
        raise FormatError(f"{block(j)}: [{offset[j]}, {end[j]}) lies outside shard {name} ({shards[name]} bytes)")
    j = _first(~((shard[1:] > shard[:-1]) | ((shard[1:] == shard[:-1]) & (offset[1:] >= end[:-1]))))
    if j is not None:
        raise FormatError(f"{where}: blocks #{j} and #{j + 1} overlap or are not in (shard, offset) order")
    return blocks


def decode_latest(data: bytes, where: str) -> Latest:
    """Parse and validate the LATEST pointer."""
    doc = _unpack(data, where, MAX_LATEST_BYTES)
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: LATEST is a {type(doc).__name__}, not a map")
    _check_version(doc, LATEST_NAME, where, (LATEST_MAJOR,))
    step = _int_in(doc.get("step"), 0, 2**63 - 1, "step", where)
    manifest = _field(doc, "manifest", str, where)
    if manifest != manifest_key(step):
        raise FormatError(f"{where}: manifest key {manifest!r} does not belong to step {step}")
    created = float(_field(doc, "created", (int, float), where))
    nbytes = _int_in(doc.get("nbytes"), 0, 2**63 - 1, "nbytes", where)
    num_tensors = _int_in(doc.get("num_tensors"), 0, 2**63 - 1, "num_tensors", where)
    metadata = _field(doc, "metadata", dict, where)
    retention = _field(doc, "retention", dict, where)
    _check_plain(metadata, f"{where}: metadata")
    _check_plain(retention, f"{where}: retention")
    return Latest(step, manifest, created, nbytes, num_tensors, metadata, retention)


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------

LATEST_KEY = "LATEST"
MANIFEST_FILE = "manifest.msgpack"
_STEP_DIR_RE = re.compile(r"step-(\d{12,19})")


def step_dir(step: int) -> str:
    return f"step-{step:012d}"


def manifest_key(step: int) -> str:
    return f"{step_dir(step)}/{MANIFEST_FILE}"


def parse_step_dir(name: str) -> int | None:
    """The step of a ``step-NNNNNNNNNNNN`` directory name, or None for anything else."""
    m = _STEP_DIR_RE.fullmatch(name)
    return int(m.group(1)) if m else None
