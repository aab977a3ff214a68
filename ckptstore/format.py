"""The on-storage format: shard layout, the msgpack manifest and the LATEST pointer — encode, decode, validate.

Pure: no I/O. Everything read from storage passes through ``decode_manifest``/``decode_latest``, which
reject anything out of bounds with a precise ``FormatError`` *before* a single tensor byte is read or a
buffer is allocated. The normative description of the format is in the README ("File format").

Why these choices:

- Every chunk starts at a 4096-byte-aligned shard offset, and large chunks are at most
  ``chunk_size`` bytes long with chunk boundaries at 4096-byte multiples of the tensor, so a restore can
  read a file page straight into a page-aligned array (numpy's default allocation sits 16 bytes past a
  page and copies 2–3x slower).
- One crc32c per chunk (the checksum GCS and S3 report) lets chunks be written, read and verified in
  parallel without a combine step.
- Plain msgpack maps/lists/str/int/float/bytes only; ext types are refused at decode time and pickle is
  never involved, so a checkpoint from a stranger is data, not code.
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import crc32c as _crc32c
import msgpack
import numpy as np

from ckptstore.errors import FormatError

FORMAT_NAME = "ckptstore"
LATEST_NAME = "ckptstore-latest"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0
ALIGN = 4096
DEFAULT_CHUNK_SIZE = 64 << 20
DEFAULT_MAX_SHARD_SIZE = 1 << 30

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


def dtype_name(dtype: np.dtype) -> str:
    """The format name of a numpy dtype; ``TypeError`` for anything outside the closed set."""
    name = dtype.name
    if name in _NUMPY_DTYPES and dtype.kind in "biufc":
        return name
    if name in _ML_DTYPES and dtype == dtype_from_name(name):
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
    if any(part in ("", ".", "..") for part in name.split("/")):
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
    crc32c: int


@dataclass(frozen=True)
class TensorEntry:
    """One stored tensor: its dtype, shape and the chunks that hold its bytes in order."""

    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[Chunk, ...]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)


@dataclass(frozen=True)
class Manifest:
    """Everything a restore needs to know about one committed checkpoint."""

    step: int
    created: float
    library: str
    shards: Mapping[str, int]
    tensors: Mapping[str, TensorEntry]
    scalars: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    minor: int = FORMAT_MINOR

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


@dataclass(frozen=True)
class PlannedChunk:
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
    if chunk_size <= 0 or chunk_size % ALIGN:
        raise ValueError(f"chunk_size must be a positive multiple of {ALIGN}, got {chunk_size}")
    if max_shard_size < chunk_size:
        chunk_size = max(ALIGN, max_shard_size // ALIGN * ALIGN)
    if max_shard_size < ALIGN:
        raise ValueError(f"max_shard_size must be at least {ALIGN} bytes, got {max_shard_size}")
    target = max(ALIGN, min(target_shard_size, max_shard_size))
    shards: list[list[PlannedChunk]] = [[]]
    sizes_out = [0]
    for name, nbytes in sizes:
        starts = range(0, nbytes, chunk_size) if nbytes else [0]
        for start in starts:
            n = min(chunk_size, nbytes - start)
            offset = align_up(sizes_out[-1])
            if shards[-1] and (offset + n > target or offset + n > max_shard_size):
                shards.append([])
                sizes_out.append(0)
                offset = 0
            shards[-1].append(PlannedChunk(name, start, n, len(shards) - 1, offset))
            sizes_out[-1] = offset + n
    return LayoutPlan(tuple(tuple(s) for s in shards), tuple(sizes_out))


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
    with _gc_paused():  # 10k tensors are 20k fresh containers: see _gc_paused
        return _encode_manifest(m)


def _encode_manifest(m: Manifest) -> bytes:
    doc = {
        "format": FORMAT_NAME,
        "version": [FORMAT_MAJOR, m.minor],
        "step": m.step,
        "created": m.created,
        "library": m.library,
        "shards": dict(m.shards),
        "tensors": {
            name: {
                "dtype": t.dtype,
                "shape": list(t.shape),
                "chunks": [[c.shard, c.offset, c.nbytes, c.crc32c] for c in t.chunks],
            }
            for name, t in m.tensors.items()
        },
        "scalars": dict(m.scalars),
        "metadata": dict(m.metadata),
    }
    return seal(pack(doc, "manifest"))


def encode_latest(p: Latest) -> bytes:
    doc = {
        "format": LATEST_NAME,
        "version": [FORMAT_MAJOR, FORMAT_MINOR],
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


def _unpack(data: bytes, where: str, limit: int) -> Any:
    if len(data) > limit:
        raise FormatError(f"{where}: {len(data)} bytes is larger than the {limit}-byte limit")
    _check_seal(data, where)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, **_UNPACK_LIMITS)
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


def _check_version(doc: Mapping[str, Any], name: str, where: str) -> int:
    if doc.get("format") != name:
        raise FormatError(f"{where}: not a {name} document (format={doc.get('format')!r})")
    version = doc.get("version")
    if not (isinstance(version, list) and len(version) == 2 and all(type(v) is int for v in version)):
        raise FormatError(f"{where}: malformed version {version!r}")
    if version[0] != FORMAT_MAJOR:
        raise FormatError(
            f"{where}: format version {version[0]}.{version[1]} is not supported "
            f"(this ckptstore reads major version {FORMAT_MAJOR}); upgrade ckptstore"
        )
    return version[1]


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
        chunks.append(_frozen(Chunk, {"shard": shard, "offset": offset, "nbytes": nbytes, "crc32c": crc}))
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
    minor = _check_version(doc, FORMAT_NAME, where)
    step = _int_in(doc.get("step"), 0, 2**63 - 1, "step", where)
    created = _field(doc, "created", (int, float), where)
    library = _field(doc, "library", str, where)

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

    scalars = _field(doc, "scalars", dict, where)
    for name, value in scalars.items():
        _checked_name(check_tensor_name, name, where)
        if name in tensors:
            raise FormatError(f"{where}: {name} is both a tensor and a scalar")
        if not isinstance(value, (bool, int, float, str)):
            raise FormatError(f"{where}: scalar {name} has type {type(value).__name__}")
    metadata = _field(doc, "metadata", dict, where)
    _check_plain(metadata, f"{where}: metadata")
    return Manifest(step, float(created), library, shards, tensors, scalars, metadata, minor)


def decode_latest(data: bytes, where: str) -> Latest:
    """Parse and validate the LATEST pointer."""
    doc = _unpack(data, where, MAX_LATEST_BYTES)
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: LATEST is a {type(doc).__name__}, not a map")
    _check_version(doc, LATEST_NAME, where)
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
