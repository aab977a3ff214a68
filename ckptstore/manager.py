"""CheckpointStore: the public API, and the only module that wires storage, format, transfer and commit.

A store is bound to one model_dir (a path or any backend URL). ``save`` flattens a state mapping, streams
the tensors into shards, commits the manifest and advances LATEST (see ``ckptstore.commit`` for the
protocol); ``restore`` reads a committed checkpoint back, checking it against a template first when
given one.

Why background saves look like this: ``save(..., blocking=False)`` blocks the caller only for a copy of
the state into staging buffers laid out like the shard files (page-aligned, reused by the next
background save, so steady-state saves pay neither allocation nor page faults), and returns a
``SaveHandle``, not a ``CheckpointInfo``: nothing is committed yet when it returns, and the handle is
where the outcome arrives. One save in flight at a time bounds staging memory to one model; the next
save waits, and an uncollected failure is raised there rather than lost. Every save and restore reports
its cost (``TransferStats``) on its result and on the ``"ckptstore"`` logger.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, overload

import msgpack
import numpy as np

from ckptstore import commit
from ckptstore.checksum import DEFAULT as DEFAULT_CHECKSUM
from ckptstore.checksum import check_algorithm
from ckptstore.errors import (
    CheckpointMismatch,
    CommitError,
    FormatError,
    NotFound,
    ReadOnlyError,
    TensorMismatch,
)
from ckptstore.format import (
    ALIGN,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_SHARD_SIZE,
    LATEST_KEY,
    MANIFEST_FILE,
    Latest,
    LayoutPlan,
    Manifest,
    TensorEntry,
    TensorTable,
    check_tensor_name,
    decode_latest,
    dtype_from_name,
    dtype_name,
    manifest_key,
    nbytes_of,
    pack,
    parse_step_dir,
    plan_balanced,
    shards_of,
    step_dir,
)
from ckptstore.policies import (
    CheckpointRecord,
    KeepMax,
    RetentionPolicy,
    RetentionState,
    SavePolicy,
    from_run_config,
)
from ckptstore.storage._retry import RetryTally, counting_retries, submit
from ckptstore.storage.interface import Storage
from ckptstore.storage.registry import open_storage, split_scheme
from ckptstore.transfer import (
    StagingPool,
    check_shards,
    map_tensors,
    prepare_array,
    read_plan,
    read_tensors,
    run_parallel,
    stage,
    write_shards,
)

log = logging.getLogger("ckptstore")

__version__ = "0.1.0"

Scalar = bool | int | float | str
_SCALAR_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class TransferStats:
    """What one save or restore cost: ``CheckpointInfo.stats`` and ``CheckpointStore.last_restore_stats``.

    Every save and restore also logs these numbers at INFO on the ``"ckptstore"`` logger.

    Attributes:
        operation: ``"save"`` or ``"restore"``.
        step: the checkpoint's step.
        nbytes: bytes moved: shard bytes for a save (alignment padding included), tensor bytes for a
            restore.
        seconds: wall time from the call until the checkpoint was committed (save; for a background
            save, until its background write committed) or the arrays were returned (restore).
        blocked_seconds: how long the caller was blocked. Equal to ``seconds`` for blocking calls; for
            ``save(blocking=False)`` it is the wait for the previous background save plus the snapshot.
        retries: requests retried: storage requests that met a transient error (throttling, a 5xx, a
            dropped connection or a timeout, in any thread working for this call) and compare-and-swap
            races on LATEST lost to another writer (each a re-read and a rewrite). Transport retries
            are also logged at DEBUG by ``"ckptstore.storage"``. For a distributed save: this rank's. Not seen:
            resends an HTTP client makes by itself (aiohttp, under gcsfs, resends an idempotent GET or
            HEAD once when a kept-alive connection turns out closed).
        files: shard files written or read.
        mode: ``"blocking"``, ``"background"`` or ``"distributed"`` for saves; ``"read"``, ``"into"``
            or ``"mmap"`` for restores.
        readers: reads a restore ran at once: ``read_workers``, or the CPU count when its files were
            in the page cache (local disk); 0 for saves and ``mmap`` restores.
        direct: whether a restore read its large tensors past the page cache (local disk, files not in
            the page cache: see ``LocalStorage.read_pieces_direct``).
    """

    operation: str
    step: int
    nbytes: int
    seconds: float
    blocked_seconds: float
    retries: int = 0
    files: int = 0
    mode: str = "blocking"
    readers: int = 0
    direct: bool = False

    @property
    def throughput(self) -> float:
        """Bytes per second over ``seconds``."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """One line for a log: ``save step 200: 1.07 GB in 1.23 s (870 MB/s), blocked 0.06 s, 0 retries``."""
        return (
            f"{self.operation} step {self.step} ({self.mode}): {self.nbytes / 1e9:.3g} GB in {self.seconds:.3f} s "
            f"({self.throughput / 1e6:.0f} MB/s), blocked {self.blocked_seconds:.3f} s, {self.files} file(s), "
            + (f"{self.readers} reader(s), " if self.readers else "")
            + ("direct I/O, " if self.direct else "")
            + f"{self.retries} retr{'y' if self.retries == 1 else 'ies'}"
        )


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint, as ``save``, ``latest`` and ``list`` report it.

    Attributes:
        step: the training step it was saved at.
        time: when it was created (seconds since the epoch, by the saving machine's clock).
        nbytes: bytes of tensor data in its shards (padding included).
        metadata: the user metadata map saved with it.
        num_tensors: tensors and scalars it holds.
        seconds: wall time the ``save`` took (``None`` when the info was read back from storage).
        stats: what the save cost (``None`` when the info was read back from storage).
    """

    step: int
    time: float
    nbytes: int
    metadata: Mapping[str, Any] = field(default_factory=dict)
    num_tensors: int = 0
    seconds: float | None = None
    stats: TransferStats | None = None

    @classmethod
    def from_latest(cls, p: Latest) -> CheckpointInfo:
        return cls(p.step, p.created, p.nbytes, dict(p.metadata), p.num_tensors)

    @classmethod
    def from_manifest(cls, m: Manifest) -> CheckpointInfo:
        return cls(m.step, m.created, m.nbytes, dict(m.metadata), len(m.tensors) + len(m.scalars))


@dataclass(frozen=True)
class PruneResult:
    """What ``prune`` kept and deleted (or, with ``dry_run``, would delete).

    Attributes:
        kept: committed steps that stay.
        deleted: steps deleted (or that would be), oldest first.
        garbage: keys of uncommitted attempts and temp files removed by garbage collection.
        dry_run: nothing was deleted.
    """

    kept: tuple[int, ...]
    deleted: tuple[int, ...]
    garbage: tuple[str, ...] = ()
    dry_run: bool = False


class SaveHandle:
    """A save running in the background, as ``save(..., blocking=False)`` returns it.

    The state was snapshotted before ``save`` returned, so the caller may change its arrays at once.
    ``result()`` waits for the commit and returns its ``CheckpointInfo`` or raises its error; so does
    ``CheckpointStore.wait()``, and the next ``save`` raises a failure that nobody collected yet.
    """

    def __init__(self, step: int, future: Future[CheckpointInfo], blocked_seconds: float):
        self.step = step
        self.blocked_seconds = blocked_seconds
        self._future = future
        self._reported = False

    def done(self) -> bool:
        """True once the background save committed or failed."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> CheckpointInfo:
        """Wait (at most ``timeout`` seconds) and return the committed checkpoint, or raise why it failed.

        Raises:
            TimeoutError: still running after ``timeout`` seconds.
        """
        try:
            return self._future.result(timeout)
        except TimeoutError:
            raise
        except BaseException:
            self._reported = True
            raise

    def __repr__(self) -> str:
        state = "running" if not self.done() else "failed" if self._future.exception() else "committed"
        return f"SaveHandle(step={self.step}, {state})"


def _is_arraylike(value: Any) -> bool:
    return isinstance(value, (np.ndarray, np.generic)) or hasattr(value, "__array__") or hasattr(
        value, "__array_interface__"
    )


def flatten_state(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Scalar]]:
    """Split a (possibly nested) state mapping into ``/``-joined arrays and Python scalars.

    Raises:
        TypeError: a key is not a string, or a value is neither an array nor a bool/int/float/str.
        ValueError: a name is empty or unsafe, or two entries flatten to the same name.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to arrays, got {type(state).__name__}")
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Scalar] = {}

    def visit(prefix: str, mapping: Mapping[Any, Any]) -> None:
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise TypeError(f"state key {key!r} under {prefix or 'the top level'!r} is not a string")
            name = f"{prefix}/{key}" if prefix else key
            try:
                check_tensor_name(name)
            except FormatError as e:
                raise ValueError(str(e)) from None
            if name in arrays or name in scalars:
                raise ValueError(f"two state entries flatten to the same name {name!r}")
            if type(value) is np.ndarray and value.dtype.kind not in "OUSV":  # the common case, first
                arrays[name] = value
            elif isinstance(value, Mapping):
                visit(name, value)
            elif isinstance(value, _SCALAR_TYPES):
                scalars[name] = value
            elif _is_arraylike(value):
                arr = np.asarray(value)
                if arr.dtype.kind in "OUSV" and not _is_low_precision(arr.dtype):
                    raise TypeError(f"state[{name!r}] has dtype {arr.dtype}, which cannot be stored")
                arrays[name] = arr
            else:
                raise TypeError(
                    f"state[{name!r}] is a {type(value).__name__}; values must be arrays, nested mappings "
                    "or bool/int/float/str scalars"
                )

    visit("", state)
    # A name may be a prefix of another ("dnn/logits/bias" and TF1's slot "dnn/logits/bias/Adagrad"):
    # names are flat keys, not paths, so only exact duplicates collide.
    return arrays, scalars


def _is_low_precision(dtype: np.dtype) -> bool:
    try:
        dtype_name(dtype)
    except TypeError:
        return False
    return True


Spec = tuple[tuple[int, ...] | str, str]  # (shape, or "scalar"; dtype name, or a scalar's type name)


def _dtype_of(value: Any) -> str:
    raw = getattr(value.dtype, "as_numpy_dtype", value.dtype)  # tf.DType knows its numpy dtype
    try:
        return dtype_name(np.dtype(raw))
    except TypeError:
        return str(raw)


def _template_specs(values: Mapping[str, Any]) -> dict[str, Spec]:
    """(shape, dtype) of every template entry; dtype names are worked out once per distinct dtype."""
    out: dict[str, Spec] = {}
    names_of: dict[Any, str] = {}
    for name, value in values.items():
        if isinstance(value, _SCALAR_TYPES):
            # The type it is stored as: a numpy float64 (a float subclass) is saved as a float.
            out[name] = ("scalar", next(t for t in _SCALAR_TYPES if isinstance(value, t)).__name__)
            continue
        shape = value.shape
        if type(shape) is not tuple:  # e.g. a tf.TensorShape
            shape = tuple(int(d) for d in shape)
        try:
            dtype = names_of.get(value.dtype)
            if dtype is None:
                dtype = names_of[value.dtype] = _dtype_of(value)
        except TypeError:  # an unhashable dtype object
            dtype = _dtype_of(value)
        out[name] = (shape, dtype)
    return out


def _stored_specs(manifest: Manifest) -> dict[str, Spec]:
    """(shape, dtype) of every stored tensor, then every scalar — from the table's columns, no entries built."""
    out: dict[str, Spec] = dict(tensor_specs(manifest.tensors))
    for name, value in manifest.scalars.items():
        out[name] = ("scalar", type(value).__name__)
    return out


def tensor_specs(tensors: Mapping[str, TensorEntry]) -> Mapping[str, tuple[tuple[int, ...], str]]:
    """``name -> (shape, dtype name)`` of ``tensors`` (a table's without building its entries)."""
    if isinstance(tensors, TensorTable):
        return tensors.specs()
    return {name: (tuple(entry.shape), entry.dtype) for name, entry in tensors.items()}


def _shown(spec: Spec) -> tuple[str, str]:
    shape, dtype = spec
    return shape if isinstance(shape, str) else "[" + ", ".join(map(str, shape)) + "]", dtype


def compare(
    manifest: Manifest,
    template: Mapping[str, Any],
    names: Iterable[str] | None,
    where: str,
    flat: tuple[dict[str, Any], dict[str, Scalar]] | None = None,
) -> list[TensorMismatch]:
    """Every difference between a checkpoint and a template, in template order then checkpoint order
    (``flat``: the template's ``flatten_template``, when the caller has it already).

    Per name it compares two small tuples (strings only for the differences), so a 10k-tensor template
    costs milliseconds."""
    arrays, scalars = flat if flat is not None else flatten_template(template)
    wanted = _template_specs(dict(arrays) | dict(scalars))
    stored = _stored_specs(manifest)
    if names is not None:
        selected = set(names)
        wanted = {n: v for n, v in wanted.items() if n in selected}
        stored = {n: v for n, v in stored.items() if n in selected}
    out = []
    for name, spec in wanted.items():
        have = stored.get(name)
        if have is None:
            out.append(TensorMismatch(name, "missing", None, " ".join(_shown(spec))))
        elif have[0] != spec[0]:
            out.append(TensorMismatch(name, "shape", _shown(have)[0], _shown(spec)[0]))
        elif have[1] != spec[1]:
            out.append(TensorMismatch(name, "dtype", have[1], spec[1]))
    for name, have in stored.items():
        if name not in wanted:
            out.append(TensorMismatch(name, "unexpected", " ".join(_shown(have)), None))
    return out


def in_place_problem(value: Any) -> str | None:
    """Why ``value`` cannot be restored into in place (whatever its tensor), or None if it can."""
    if not isinstance(value, np.ndarray):
        return f"a {type(value).__name__}, not a numpy array (pass a writable numpy view of its memory, e.g. tensor.numpy())"
    if not value.flags.writeable:
        return "read-only"
    if not value.flags.c_contiguous:
        return "not C-contiguous"
    return None


def destinations(arrays: Mapping[str, Any], entries: Mapping[str, TensorEntry], where: str) -> dict[str, np.ndarray]:
    """The ``arrays`` (an ``into`` state, flattened) that the tensors in ``entries`` are read into, after
    checking that each can be written in place: a numpy array, writable, C-contiguous, of exactly the
    stored dtype (byte order included) and shape, sharing no memory with another. Every problem is
    listed in one error, before anything is read."""
    specs = tensor_specs(entries)
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    dtypes: dict[str, np.dtype] = {}
    for name, value in arrays.items():
        spec = specs.get(name)
        if spec is None:  # not restored (excluded by names=, or a mismatch under strict=False)
            continue
        problem = in_place_problem(value)
        if problem is not None:
            problems.append(f"{name}: {problem}")
            continue
        shape, dtype_str = spec
        dtype = dtypes.get(dtype_str)
        if dtype is None:
            dtype = dtypes[dtype_str] = dtype_from_name(dtype_str)
        if value.dtype != dtype or value.shape != shape:
            problems.append(f"{name}: {value.dtype.str} {list(value.shape)}, stored {dtype.str} {list(shape)}")
        else:
            out[name] = value
    problems += _sharing_memory(out, entries)
    if problems:
        raise ValueError(f"{where}: cannot restore in place into " + "; ".join(problems))
    return out


def _sharing_memory(arrays: Mapping[str, np.ndarray], entries: Mapping[str, TensorEntry]) -> list[str]:
    """The destinations whose memory overlaps another's: two tensors read into the same bytes, one
    silently overwriting the other. The exception is tied weights (a torch module's shared embedding
    and output projection, say: one tensor under two names): the same memory exactly, for two tensors
    stored with the same bytes (their chunks' checksums agree), so either read leaves the same values.
    Distinct arrays that own their memory never overlap, so addresses are only compared when some
    destination is a view (of a buffer, of a torch tensor...) or one array is given twice."""
    if all(a.base is None for a in arrays.values()) and len({id(a) for a in arrays.values()}) == len(arrays):
        return []
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes, name) for name, a in arrays.items() if a.nbytes)
    problems: list[str] = []
    reach, reacher, reacher_start = -1, "", -1  # the furthest end so far: whose it is, where it starts
    for start, end, name in spans:  # C-contiguous: each array is exactly [start, end)
        if start < reach:
            tied = start == reacher_start and end == reach and (
                [(c.nbytes, c.checksum) for c in entries[name].chunks]
                == [(c.nbytes, c.checksum) for c in entries[reacher].chunks]
            )
            if not tied:
                problems.append(f"{name}: shares memory with {reacher}")
        if end > reach:
            reach, reacher, reacher_start = end, name, start
    return problems


def flatten_template(template: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Scalar]]:
    """Like ``flatten_state`` but keeps array-likes as they are (only ``.shape``/``.dtype`` are used)."""
    arrays: dict[str, Any] = {}
    scalars: dict[str, Scalar] = {}

    def visit(prefix: str, mapping: Mapping[Any, Any]) -> None:
        for key, value in mapping.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            if type(value) is np.ndarray:  # the common case first: an ABC check costs more than the rest
                arrays[name] = value
            elif isinstance(value, Mapping):
                visit(name, value)
            elif isinstance(value, _SCALAR_TYPES):
                scalars[name] = value
            elif hasattr(value, "shape") and hasattr(value, "dtype"):
                arrays[name] = value
            else:
                raise TypeError(f"template[{name!r}] is a {type(value).__name__}, not an array-like or scalar")

    visit("", template)
    return arrays, scalars


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


def prepare_save(
    step: Any, state: Mapping[str, Any], metadata: Mapping[str, Any] | None
) -> tuple[int, dict[str, np.ndarray], dict[str, Scalar], dict[str, Any]]:
    """Validate a save's arguments before anything is written: the step, the flattened state as
    C-contiguous little-endian arrays (of a storable dtype) plus scalars, and the metadata normalised to
    what a restore will read back (numpy scalars -> Python, tuples -> lists).

    Raises:
        TypeError, ValueError: as ``CheckpointStore.save`` documents.
    """
    step = _check_step(step)
    arrays, scalars = flatten_state(state)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise TypeError("metadata must be a mapping with string keys")
    metadata = msgpack.unpackb(pack(dict(metadata), "metadata"), raw=False)
    pack(scalars, "state scalars")
    prepared = {name: prepare_array(a) for name, a in arrays.items()}
    for a in prepared.values():
        dtype_name(a.dtype)  # TypeError for a dtype outside the closed set
    return step, prepared, scalars, metadata


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be a non-negative integer, got {step!r}")
    if step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step}")
    return int(step)


class CheckpointStore:
    """Saves and restores checkpoints in one model_dir.

    Args:
        model_dir: a local path or a backend URL (``file://``, ``memory://``, ``s3://``, ``gs://`` or any
            fsspec URL). ``None`` creates a fresh ``tempfile.mkdtemp()`` directory and logs where it is.
        storage_options: passed to the backend (credentials, endpoint, ...), as fsspec users pass them.
        storage: an already-open backend to use instead of opening ``model_dir``.
        max_shard_size: upper bound on one shard file's size.
        chunk_size: tensors larger than this are split into separately checksummed chunks.
        workers: parallel storage calls; default: what the backend suggests (``io_workers``).
        read_workers: parallel reads in a restore; default: ``workers`` if given, else the backend's
            ``read_workers`` (local disk: 4 — cold reads gain from more requests in flight), else
            ``io_workers``. A restore whose files the backend reports in the page cache (local disk)
            runs no more reads at once than the process has CPUs: those reads are memory copies.
        verify: check every chunk's checksum on restore (the default; ``restore(verify=False)`` skips it).
        checksum: the chunk checksum algorithm saves use: ``"xxh3-64"`` (the default: about twice
            crc32c's speed, so a verified restore costs about what an unverified one does) or
            ``"crc32c"``. Restores verify with whatever algorithm the checkpoint's manifest names.
        retention: which checkpoints to keep; applied after every save and by ``prune``. ``None``
            (the default) keeps every checkpoint.
        keep_max: shorthand for ``retention=KeepMax(keep_max, every_n_hours=keep_every_n_hours)``.
        keep_every_n_hours: see ``keep_max`` (``tf.train.CheckpointManager`` semantics).
        save_policy: when trainer hooks should save (``ckptstore.hooks`` reads it); not used by
            ``save`` itself, which always saves.
        gc_grace_seconds: uncommitted attempts and temp files younger than this are never collected
            (a concurrent writer may still be writing them). Must exceed the longest save.
        clock: the time source for retention and garbage collection (tests pass a fake one).
        read_only: never write to the model_dir: ``save``, ``prune``, ``pin``, ``unpin`` and ``gc``
            raise ``ReadOnlyError``, and a missing or lagging LATEST is worked around in memory instead
            of repaired (for inspection tools and read-only credentials).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        storage: Storage | None = None,
        max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        workers: int | None = None,
        read_workers: int | None = None,
        verify: bool = True,
        checksum: str = DEFAULT_CHECKSUM,
        retention: RetentionPolicy | None = None,
        keep_max: int | None = None,
        keep_every_n_hours: float | None = None,
        save_policy: SavePolicy | None = None,
        gc_grace_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ):
        if retention is not None and (keep_max is not None or keep_every_n_hours is not None):
            raise ValueError("pass either retention= or keep_max=/keep_every_n_hours=, not both")
        if keep_max is not None or keep_every_n_hours is not None:
            retention = KeepMax(keep_max, every_n_hours=keep_every_n_hours)
        if gc_grace_seconds < 0:
            raise ValueError(f"gc_grace_seconds must be >= 0, got {gc_grace_seconds}")
        if storage is not None:
            self._storage = storage
            self._model_dir = storage.url
        else:
            if model_dir is None:
                model_dir = tempfile.mkdtemp(prefix="ckptstore-")
                log.warning("Using temporary folder as model directory: %s", model_dir)
            model_dir = os.fspath(model_dir)
            scheme, _ = split_scheme(model_dir)
            if scheme == "file" and "://" not in model_dir:
                model_dir = os.path.abspath(os.path.expanduser(model_dir))
            self._model_dir = model_dir
            self._storage = open_storage(model_dir, **dict(storage_options or {}))
        if chunk_size <= 0 or chunk_size % 4096:
            raise ValueError(f"chunk_size must be a positive multiple of 4096, got {chunk_size}")
        if max_shard_size < 4096:
            raise ValueError(f"max_shard_size must be at least 4096 bytes, got {max_shard_size}")
        for what, n in (("workers", workers), ("read_workers", read_workers)):
            if n is not None and (type(n) is not int or n < 1):
                raise ValueError(f"{what} must be an integer of at least 1, got {n!r}")
        self.max_shard_size = max_shard_size
        self.chunk_size = chunk_size
        self.workers = workers or self._storage.io_workers
        self.read_workers = read_workers or workers or getattr(self._storage, "read_workers", None) or self.workers
        self.verify = verify
        self.checksum = check_algorithm(checksum)
        self.retention = retention
        self.save_policy = save_policy
        self.gc_grace_seconds = gc_grace_seconds
        self._clock = clock
        self._in_use: dict[int, int] = {}
        self._lock = threading.Lock()
        self._manifests: dict[int, Manifest] = {}  # committed manifests are immutable (bar overwrite)
        self._rolled_forward = False
        self.read_only = read_only
        self._rolled: Latest | None = None  # read-only stores: what a roll-forward would have written
        self._retention_resumed = False
        self._save_lock = threading.RLock()  # one save call at a time (a background one counts)
        self._pending: SaveHandle | None = None
        self._background: ThreadPoolExecutor | None = None
        self._staging = StagingPool()
        self._last_restore_stats: TransferStats | None = None
        self._last_plan: tuple[Any, LayoutPlan] | None = None
        caps = self._storage.capabilities
        if not (caps.conditional_create and caps.compare_and_swap):
            log.warning(
                "%s cannot enforce conditional writes; ckptstore falls back to check-then-write, "
                "which is safe only with one writer per model_dir",
                self._storage.url,
            )

    @classmethod
    def from_run_config(
        cls,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        save_checkpoints_secs: Any = ...,
        save_checkpoints_steps: Any = ...,
        keep_checkpoint_max: int | None = 5,
        keep_checkpoint_every_n_hours: float | None = 10000,
        **kwargs: Any,
    ) -> CheckpointStore:
        """A store configured in TF ``RunConfig``'s words (and defaults: every 600 s, keep the 5 newest).

        ``store.save_policy`` and ``store.retention`` hold the matching policies; other keyword
        arguments go to the constructor.
        """
        run_config: dict[str, Any] = dict(
            keep_checkpoint_max=keep_checkpoint_max, keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours
        )
        if save_checkpoints_secs is not ...:
            run_config["save_checkpoints_secs"] = save_checkpoints_secs
        if save_checkpoints_steps is not ...:
            run_config["save_checkpoints_steps"] = save_checkpoints_steps
        save_policy, retention = from_run_config(**run_config)
        return cls(model_dir, retention=retention, save_policy=save_policy, **kwargs)

    # -- properties ------------------------------------------------------------------------------
    @property
    def model_dir(self) -> str:
        """The path or URL this store reads and writes."""
        return self._model_dir

    @property
    def storage(self) -> Storage:
        return self._storage

    def __repr__(self) -> str:
        return f"CheckpointStore({self._storage.url!r})"

    def close(self) -> None:
        """Wait for a background save (raising its error), then release the storage and staging memory."""
        try:
            self.wait()
        finally:
            if self._background is not None:
                self._background.shutdown(wait=True)
                self._background = None
            self._staging.release()
            self._storage.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an exception is already propagating: report a background failure, don't mask it
            self.close()
        except Exception as e:
            log.error("%s: background save failed: %s", self._storage.url, e)

    @contextmanager
    def _using(self, step: int) -> Iterator[None]:
        """Marks a step as being written or restored, so this process's retention never deletes it."""
        with self._lock:
            self._in_use[step] = self._in_use.get(step, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[step] -= 1
                if not self._in_use[step]:
                    del self._in_use[step]

    def in_use(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._in_use)

    # -- saving ----------------------------------------------------------------------------------
    @overload
    def save(self, step: int, state: Mapping[str, Any], metadata: Mapping[str, Any] | None = ..., *,
             overwrite: bool = ..., blocking: Literal[True] = ...) -> CheckpointInfo: ...

    @overload
    def save(self, step: int, state: Mapping[str, Any], metadata: Mapping[str, Any] | None = ..., *,
             overwrite: bool = ..., blocking: Literal[False]) -> SaveHandle: ...

    def save(
        self,
        step: int,
        state: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
        blocking: bool = True,
    ) -> CheckpointInfo | SaveHandle:
        """Write ``state`` as the checkpoint for ``step`` and make it the latest.

        Args:
            step: the training step; a non-negative integer.
            state: names to arrays (numpy or anything with ``__array__``), nested mappings (flattened to
                ``/``-joined names) and bool/int/float/str scalars.
            metadata: a small map of plain data (str keys; str/int/float/bool/None/bytes/lists/maps).
            overwrite: replace ``step`` atomically if it is already committed, instead of failing.
            blocking: when false, return a ``SaveHandle`` as soon as the state is copied into staging
                memory (page-aligned buffers of the model's size, reused by the next background save)
                and write, commit and apply retention on a background thread. At most one save is in
                flight: the next ``save`` (of either kind) and ``wait()`` wait for it first. A crash
                during the background write loses nothing already committed.

        Returns:
            The committed ``CheckpointInfo`` (with ``stats``), or with ``blocking=False`` a ``SaveHandle``
            whose ``result()`` is that info.

        Raises:
            TypeError, ValueError: the step, state or metadata is invalid (nothing is written).
            CommitError: the step is already committed and ``overwrite`` is false.
            StorageError: the storage failed; earlier checkpoints are untouched.
            Any error of the previous background save that was not collected yet (by ``wait()`` or its
            handle): it is raised instead of starting this save.
        """
        started = time.perf_counter()
        self._check_writable("save")
        with self._save_lock, counting_retries() as retried:
            self.wait()
            step, prepared, scalars, metadata = prepare_save(step, state, metadata)
            specs = {name: (dtype_name(a.dtype), tuple(a.shape)) for name, a in prepared.items()}
            storage = self._storage
            self._roll_forward_once()
            if not overwrite:
                try:
                    storage.head(manifest_key(step))
                except NotFound:
                    pass
                else:
                    raise CommitError(f"{storage.url}: step {step} is already committed; pass overwrite=True to replace it")
            plan = self._plan([(name, a.nbytes) for name, a in prepared.items()])
            if blocking:
                return self._write_and_commit(step, prepared, specs, scalars, metadata, plan, overwrite, None,
                                              started, None, retried)
            buffers = self._staging.acquire(plan.shard_sizes)
            stage(prepared, plan, buffers, self.workers)
            del prepared  # the caller owns its arrays again
            blocked = time.perf_counter() - started
            if self._background is None:
                self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptstore-save")
            future = submit(  # in this context: the background write's retries count for this save
                self._background, self._write_in_background,
                step, {}, specs, scalars, metadata, plan, overwrite, buffers, started, blocked, retried,
            )
            handle = SaveHandle(step, future, blocked)
            self._pending = handle
            log.debug("step %d snapshotted in %.3f s; writing in the background", step, blocked)
            return handle

    def reserve_staging(self, state: Mapping[str, Any]) -> int:
        """Allocate and touch now the staging memory a background save of ``state`` copies into, so the
        first ``save(..., blocking=False)`` blocks only for its copy.

        First touch of fresh memory can cost far more than the copy: on this benchmark VM, whose balloon
        driver hands free memory back to the host, the first background save blocked 1.3 s/GB against
        0.1-0.2 s/GB for later ones, which reuse the buffers. Call it at start-up with the state you will
        save (its names, shapes and dtypes decide the layout; it may be the initial state). Returns the
        bytes of staging memory held (the model plus alignment padding); ``close()`` frees it.

        Raises:
            TypeError, ValueError: the state is invalid (as for ``save``).
            The error of a background save not collected yet (it waits for one in flight first).
        """
        self._check_writable("reserve_staging")
        with self._save_lock:
            self.wait()  # a background save still writes from these buffers
            _, prepared, _, _ = prepare_save(0, state, None)
            plan = self._plan([(name, a.nbytes) for name, a in prepared.items()])
            for buffer in self._staging.acquire(plan.shard_sizes):
                np.frombuffer(buffer, np.uint8)[::ALIGN] = 0  # one write per page faults it in
            return self._staging.nbytes

    def wait(self) -> CheckpointInfo | None:
        """Wait for the background save, if one is in flight or unreported.

        Returns:
            Its ``CheckpointInfo``, or None when there was none (or its failure was already reported
            through its handle).

        Raises:
            The background save's error, once (whoever collects it first: ``wait``, the next ``save``,
            ``close`` or the handle's ``result``).
        """
        handle = self._pending
        if handle is None:
            return None
        try:
            return handle._future.result()
        except BaseException:
            if handle._reported:
                return None
            handle._reported = True
            raise
        finally:
            self._pending = None

    def _write_in_background(self, step: int, *args: Any) -> CheckpointInfo:
        """``_write_and_commit`` on the background thread, logging a failure before anyone can collect it.

        Never silent, even if nobody calls wait(); the next save also raises it. Logged here rather than
        in a done-callback, which runs after waiters wake, so a caller could see the error before the log.
        """
        try:
            return self._write_and_commit(step, *args)
        except BaseException as error:
            log.error("%s: background save of step %d failed: %s", self._storage.url, step, error)
            raise

    def _plan(self, sizes: Sequence[tuple[str, int]]) -> LayoutPlan:
        """A layout with about one equally sized shard per worker (``plan_balanced``)."""
        key = (tuple(sizes), self.workers, self.max_shard_size, self.chunk_size)
        cached = self._last_plan
        if cached is not None and cached[0] == key:
            return cached[1]  # a training job saves the same shapes every time: plan once
        plan = plan_balanced(sizes, self.workers, max_shard_size=self.max_shard_size, chunk_size=self.chunk_size)
        self._last_plan = (key, plan)
        return plan

    def _write_and_commit(
        self,
        step: int,
        prepared: Mapping[str, np.ndarray],
        specs: Mapping[str, tuple[str, tuple[int, ...]]],
        scalars: Mapping[str, Scalar],
        metadata: Mapping[str, Any],
        plan: LayoutPlan,
        overwrite: bool,
        staged: Sequence[memoryview] | None,
        started: float,
        blocked: float | None,
        retried: RetryTally,
    ) -> CheckpointInfo:
        """Write the shards (from the arrays or the staging buffers), commit, advance LATEST, prune."""
        storage = self._storage
        with self._using(step):
            attempt = commit.new_attempt_id()
            prefix = step_dir(step)
            try:
                written = write_shards(storage, prefix, attempt, prepared, plan, self.workers,
                                       checksum=self.checksum, staged=staged)
                manifest = Manifest(
                    step=step,
                    created=self._clock(),
                    library=__version__,
                    shards=written.shard_sizes,
                    tensors=written.tensor_table(specs),  # columns: no per-tensor objects
                    scalars=scalars,
                    metadata=metadata,
                    checksum=written.algorithm,
                )
                commit.commit_manifest(storage, manifest, overwrite=overwrite)
            except BaseException:
                self._discard_attempt(prefix, attempt)
                raise
            self._manifests[step] = manifest
            pointer = commit.advance_latest(storage, commit.latest_from_manifest(manifest))
        if pointer.step > step:
            log.warning(
                "%s: step %d is committed, but LATEST stays at the newer step %d (it never moves backwards)",
                storage.url, step, pointer.step,
            )
        info = CheckpointInfo.from_manifest(manifest)
        seconds = time.perf_counter() - started
        stats = TransferStats(
            "save", step, info.nbytes, seconds, seconds if blocked is None else blocked,
            retries=retried.count, files=len(plan.shards), mode="blocking" if staged is None else "background",
        )
        self._housekeeping()
        log.info("%s: %s", storage.url, stats.describe())
        return replace(info, seconds=seconds, stats=stats)

    def _discard_attempt(self, prefix: str, attempt: str) -> None:
        """Best-effort removal of a failed attempt's shards (garbage collection catches what this misses)."""
        try:
            for obj in list(self._storage.list(f"{prefix}/{attempt}/")):
                self._storage.delete(obj.key)
        except Exception as e:  # the original error matters more than a failed cleanup
            log.debug("could not clean up %s/%s: %s", prefix, attempt, e)

    # -- reading ---------------------------------------------------------------------------------
    def latest(self) -> CheckpointInfo | None:
        """The newest committed checkpoint (LATEST, checked against one listing), or None when there is none."""
        # Trainers resume from latest(): it must see a checkpoint committed just before a crash, like restore().
        # That takes one listing, once per store; after it, latest() is one read of LATEST.
        self._roll_forward_once()
        try:
            pointer: Latest | None = decode_latest(self._storage.get(LATEST_KEY), f"{self._storage.url}/{LATEST_KEY}")
        except (NotFound, FormatError):
            pointer = commit.resolve_latest(self._storage, repair=not self.read_only)  # list, and warn
        pointer = self._newest(pointer)
        return None if pointer is None else CheckpointInfo.from_latest(pointer)

    def list(self) -> list[CheckpointInfo]:
        """Every committed checkpoint, ascending by step. Damaged manifests are skipped with a warning."""
        out = []
        for manifest in self._committed_manifests():
            out.append(CheckpointInfo.from_manifest(manifest))
        return out

    def manifest(self, step: int | None = None) -> Manifest:
        """The validated manifest of ``step`` (default: the latest checkpoint)."""
        if step is not None:
            return self._read_manifest(_check_step(step), fresh=True)
        self._roll_forward_once()
        pointer = self._newest(commit.resolve_latest(self._storage, repair=not self.read_only))
        if pointer is None:
            raise NotFound(f"{self._storage.url}: no committed checkpoint")
        try:
            return self._read_manifest(pointer.step, fresh=True)
        except (NotFound, FormatError) as e:
            # LATEST names a checkpoint that is gone or damaged: use the newest one that is intact.
            log.warning("%s; falling back to the newest intact checkpoint", e)
            for candidate in reversed(commit.committed_steps(self._storage)):
                if candidate == pointer.step:
                    continue
                try:
                    return commit.read_manifest(self._storage, candidate)
                except (NotFound, FormatError) as e2:
                    log.warning("skipping step %d: %s", candidate, e2)
            raise NotFound(f"{self._storage.url}: no intact committed checkpoint") from e

    def restore(
        self,
        step: int | None = None,
        *,
        names: Iterable[str] | None = None,
        like: Mapping[str, Any] | None = None,
        into: Mapping[str, Any] | None = None,
        strict: bool = True,
        verify: bool | None = None,
        mmap: bool = False,
    ) -> dict[str, Any]:
        """Read a committed checkpoint back as a flat ``{name: array or scalar}`` dict.

        What it cost is in ``last_restore_stats`` afterwards (and logged at INFO).

        Args:
            step: which checkpoint; default the latest.
            names: restore only these tensors (reads only their bytes).
            like: a template mapping (arrays or anything with ``.shape``/``.dtype``, or scalars); every
                name, shape and dtype is compared before any data is read.
            into: restore in place: a state (nested like ``like``) of writable, C-contiguous numpy
                arrays, no two sharing memory, to read the tensors straight into; it is also the template unless ``like`` is
                given (then ``like`` is compared, and ``into`` supplies destinations for some of the
                restored tensors, each of exactly the stored shape and dtype; its other arrays are left
                as they are). The returned dict holds these same arrays. Nothing is allocated for them:
                the restore needs a scratch buffer per reader (at most 4 MiB) and no fresh memory, whose
                first touch can cost 10x the read on a virtual machine that hands free memory back to
                its host (as this project's benchmark machine does). Trade-off: a restore that fails (a
                checksum, a read) may have overwritten part of the arrays — small tensors are placed
                only once verified, large ones as they are read. With ``strict=False`` a mismatched
                array is left as it is.
            strict: with ``like``, raise on any difference; when false, restore the matching subset
                and log the rest.
            verify: check the chunks' checksums (default: the store's ``verify``; with ``mmap``, only when
                passed explicitly).
            mmap: local disk only, opt-in zero-copy restore: the arrays are read-only views of the
                memory-mapped shard files, so nothing is read until it is touched and the bytes live in
                the page cache, shared with other processes, instead of in this process's memory.
                Trade-offs: no checksum is verified unless ``verify=True`` (which reads every page
                once); the arrays are read-only (copy one to change it); the shard files must stay as
                they are while the arrays live — deleting them (prune) is safe on POSIX, but
                truncating or rewriting them in place is not (bus error); the first touch of each page
                may wait for the disk; a tensor split across shards is read into memory instead.

        Raises:
            NotFound: no such checkpoint, or a requested name is not in it.
            Unsupported: ``mmap=True`` on a store that is not on local disk.
            CheckpointMismatch: ``like`` or ``into`` differs from the checkpoint (lists every difference).
            ChecksumError, FormatError: the checkpoint is damaged; nothing is returned.
            TypeError, ValueError: an ``into`` array cannot be written in place (says which and why),
                or ``into`` with ``mmap``; checked before anything is read.
        """
        if into is not None and mmap:
            raise ValueError("restore: into (read into existing arrays) and mmap (map the files) exclude each other")
        with counting_retries() as retried:
            return self._restore(step, names, like if like is not None else into, into, strict, verify, mmap, retried)

    def _restore(
        self,
        step: int | None,
        names: Iterable[str] | None,
        like: Mapping[str, Any] | None,
        into: Mapping[str, Any] | None,
        strict: bool,
        verify: bool | None,
        mmap: bool,
        retried: RetryTally,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        manifest = self.manifest(step)
        where = f"{self._storage.url}@{manifest.step}"
        selected: list[str] = list(manifest.tensors) + list(manifest.scalars)
        if names is not None:
            names = list(names)
            missing = [n for n in names if n not in manifest.tensors and n not in manifest.scalars]
            if missing:
                raise NotFound(f"{where}: no tensor named {', '.join(map(repr, missing))}")
            selected = names
        flat = flatten_template(like) if like is not None else None
        if like is not None:
            mismatches = compare(manifest, like, names, where, flat)
            if mismatches and strict:
                raise CheckpointMismatch(where, mismatches)
            if mismatches:
                log.warning("%s", CheckpointMismatch(where, mismatches))
                bad = {m.name for m in mismatches}
                selected = [n for n in selected if n not in bad]
        tensors = manifest.tensors
        whole = names is None and len(selected) == len(tensors) + len(manifest.scalars)
        wanted = list(tensors) if whole else [n for n in selected if n in tensors]
        # Every tensor, in manifest order (the usual restore): the manifest's own mapping, so a 2.0
        # table is planned from its columns without an entry per tensor.
        entries = tensors if whole or wanted == list(tensors) else {n: tensors[n] for n in wanted}
        dests = None
        if into is not None:  # then like is not None either: into itself, or the template given with it
            into_arrays = flat[0] if flat is not None and into is like else flatten_template(into)[0]
            dests = destinations(into_arrays, entries, where)
        with self._using(manifest.step):
            prefix = step_dir(manifest.step)
            needed = shards_of(entries)
            check_shards(self._storage, prefix, manifest, needed, self.workers)
            reads, direct = 0, False
            if mmap:
                arrays = map_tensors(self._storage, prefix, entries, checksum=manifest.checksum if verify else None)
            else:
                check = self.verify if verify is None else verify
                plan = read_plan(self._storage, [f"{prefix}/{shard}" for shard in sorted(needed)], self.read_workers)
                reads, direct = plan.readers, plan.direct
                arrays = read_tensors(
                    self._storage, prefix, entries, checksum=manifest.checksum if check else None,
                    workers=reads, into=dests, piece_size=plan.piece_size, direct=plan.direct,
                )
        seconds = time.perf_counter() - started
        stats = TransferStats(
            "restore", manifest.step, nbytes_of(entries), seconds, seconds, retries=retried.count,
            files=len(needed), mode="mmap" if mmap else "into" if dests else "read", readers=reads,
            direct=direct,
        )
        self._last_restore_stats = stats
        log.info("%s: %s", self._storage.url, stats.describe())
        if whole:  # tensors in manifest order, then the scalars: no per-name pass
            arrays.update(manifest.scalars)
            return arrays
        return {n: arrays[n] if n in arrays else manifest.scalars[n] for n in selected}

    @property
    def last_restore_stats(self) -> TransferStats | None:
        """What the most recent ``restore`` of this store cost (None before the first)."""
        return self._last_restore_stats

    # -- retention, pins, garbage collection -----------------------------------------------------
    def _read_manifest(self, step: int, fresh: bool = False) -> Manifest:
        """A validated manifest; from this store's cache unless ``fresh`` (restores always re-read)."""
        cached = self._manifests.get(step)
        if cached is not None and not fresh:
            return cached
        try:
            manifest = commit.read_manifest(self._storage, step)
        except NotFound:
            self._manifests.pop(step, None)
            raise
        self._manifests[step] = manifest
        return manifest

    def _committed_manifests(self) -> list[Manifest]:
        """Manifests of every committed step, ascending; damaged ones are skipped with a warning."""
        steps = commit.committed_steps(self._storage)
        for gone in set(self._manifests) - set(steps):
            self._manifests.pop(gone, None)

        def read(step: int) -> Manifest | None:
            try:
                return self._read_manifest(step)
            except (NotFound, FormatError) as e:
                log.warning("skipping step %d: %s", step, e)
                return None

        found = run_parallel([lambda s=s: read(s) for s in steps], self.workers)
        return [m for m in found if m is not None]

    def _roll_forward_once(self) -> None:
        if not self._rolled_forward:
            self._rolled = commit.roll_forward(self._storage, repair=not self.read_only)
            self._rolled_forward = True

    def _newest(self, pointer: Latest | None) -> Latest | None:
        """``pointer``, or in a read-only store the newer committed step a roll-forward found."""
        if self.read_only and self._rolled is not None and (pointer is None or self._rolled.step > pointer.step):
            return self._rolled
        return pointer

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyError(f"{self._storage.url}: opened read-only; {what} would write")

    def _housekeeping(self) -> None:
        """Retention and garbage collection after a save. The save is committed whatever happens here,
        so a failure is logged, not raised; the next save or ``prune`` retries."""
        try:
            if self.retention is not None:
                self.prune()
            else:
                self.gc()
        except Exception as e:
            log.warning("%s: retention after the save failed (the save itself is committed): %s", self._storage.url, e)

    def pinned(self) -> frozenset[int]:
        """Steps protected from retention by ``pin``."""
        pointer = commit.resolve_latest(self._storage, repair=not self.read_only)
        return frozenset(pointer.retention.get("pinned", ())) if pointer else frozenset()

    def pin(self, step: int) -> None:
        """Protect a committed step from every retention policy until ``unpin``."""
        step = _check_step(step)
        self._read_manifest(step)  # NotFound for a step that is not committed
        self._update_retention(lambda r: {**r, "pinned": sorted(set(r.get("pinned", ())) | {step})})

    def unpin(self, step: int) -> None:
        """Let retention consider ``step`` again."""
        step = _check_step(step)
        self._update_retention(lambda r: {**r, "pinned": sorted(set(r.get("pinned", ())) - {step})})

    def _update_retention(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Latest:
        """Compare-and-swap LATEST's retention map (creating LATEST from the newest manifest if missing)."""
        self._check_writable("changing pins")
        self._roll_forward_once()

        def apply(current: Latest | None) -> Latest | None:
            if current is None:
                current = commit.resolve_latest(self._storage)
                if current is None:
                    raise NotFound(f"{self._storage.url}: no committed checkpoint")
            return replace(current, retention=change(dict(current.retention)))

        result = commit.update_latest(self._storage, apply)
        assert result is not None
        return result

    def prune(self, *, dry_run: bool = False, retention: RetentionPolicy | None = None) -> PruneResult:
        """Apply the retention policy: record the new kept set in LATEST, then delete the rest.

        Never deleted: the step LATEST names, pinned steps, steps this store is writing or restoring,
        and steps ``keep_every_n_hours`` preserved. Deletes remove the manifest before the shards, so
        an interrupted prune leaves no visible half checkpoint; the next prune finishes it. Garbage
        collection (``gc``) runs afterwards.

        Args:
            dry_run: report what would be deleted without deleting anything.
            retention: a policy for this call instead of the store's.
        """
        if not dry_run:
            self._check_writable("prune")
        policy = retention or self.retention
        storage = self._storage
        if not dry_run:
            self._finish_pending_deletes()
        manifests = self._committed_manifests()
        if policy is None or not manifests:
            garbage = () if dry_run else self.gc()
            return PruneResult(tuple(m.step for m in manifests), (), garbage, dry_run)
        now = self._clock()
        records = [CheckpointRecord(m.step, m.created, m.metadata) for m in manifests]
        decision = None

        def decide(current: Latest | None) -> Latest | None:
            nonlocal decision
            if current is None:
                current = commit.resolve_latest(storage)
                assert current is not None  # there are committed manifests
            raw = current.retention.get("state")
            if raw is not None:
                state = RetentionState.from_dict(raw)
            elif len(records) <= 1:
                state = RetentionState.start(min(r.time for r in records))  # a brand-new store
            else:
                state = RetentionState()  # state lost: the policy treats it conservatively
            if not self._retention_resumed:
                state = policy.resume(records, state, now)
            pins = frozenset(current.retention.get("pinned", ()))
            decision = policy.select(records, state, now, frozenset({current.step}) | pins | self.in_use())
            if dry_run:
                return None
            attempts = {m.step: sorted(commit.attempts_of(m)) for m in manifests}
            pending = [[s, attempts[s]] for s in decision.delete]
            retention_map = {**current.retention, "state": decision.state.to_dict(), "deleting": pending}
            return replace(current, retention=retention_map)

        self._roll_forward_once()
        commit.update_latest(storage, decide)
        assert decision is not None
        if dry_run:
            return PruneResult(tuple(sorted(decision.keep)), decision.delete, (), True)
        self._retention_resumed = True
        self._finish_pending_deletes()
        return PruneResult(tuple(sorted(decision.keep)), decision.delete, self.gc(), False)

    def _finish_pending_deletes(self) -> None:
        """Delete the steps LATEST records as being deleted, then clear the record."""
        try:
            pointer, _ = commit.read_latest(self._storage)
        except FormatError:
            return
        pending = [] if pointer is None else pointer.retention.get("deleting", [])
        if not pending:
            return
        done = set()
        for step, attempts in pending:
            if step == pointer.step:
                continue  # LATEST moved to it again meanwhile (a re-save): never delete what LATEST names
            commit.delete_step(self._storage, step, frozenset(attempts))
            self._manifests.pop(step, None)
            done.add(step)
        self._update_retention(
            lambda r: {**r, "deleting": [e for e in r.get("deleting", []) if e[0] not in done]}
        )

    def gc(self, *, grace_seconds: float | None = None, dry_run: bool = False) -> tuple[str, ...]:
        """Remove uncommitted attempts and temp files older than the grace period; return their keys.

        An attempt directory counts as alive while any file in it is younger than the grace period, so
        a concurrent writer's in-flight save is never touched. Keys ckptstore did not create are left alone.
        """
        if not dry_run:
            self._check_writable("gc")
        grace = self.gc_grace_seconds if grace_seconds is None else grace_seconds
        now = self._clock()
        storage = self._storage
        objects = list(storage.list())
        referenced: dict[int, frozenset[str] | None] = {}
        for obj in objects:
            parts = obj.key.split("/")
            step = parse_step_dir(parts[0])
            if step is not None and len(parts) == 2 and parts[1] == MANIFEST_FILE:
                try:
                    referenced[step] = commit.attempts_of(self._read_manifest(step))
                except FormatError:
                    referenced[step] = None  # damaged: keep all of this step's files for inspection
                except NotFound:
                    pass
        groups: dict[str, list[Any]] = {}
        for obj in objects:
            parts = obj.key.split("/")
            step = parse_step_dir(parts[0])
            if obj.key == LATEST_KEY or parts[0] == ".locks":
                continue
            if step is not None and len(parts) == 3:
                if referenced.get(step, frozenset()) is None or parts[1] in (referenced.get(step) or ()):
                    continue
                groups.setdefault(f"{parts[0]}/{parts[1]}/", []).append(obj)
            elif parts[-1].startswith(".tmp-"):
                groups.setdefault(obj.key, []).append(obj)
        garbage: list[str] = []
        for members in groups.values():
            times = [o.mtime for o in members]
            if any(t is None for t in times) or now - max(times) < grace:
                continue
            garbage.extend(o.key for o in members)
        if not dry_run:
            for key in garbage:
                storage.delete(key)
        if garbage:
            log.info("%s: garbage collection %s %d objects", storage.url, "found" if dry_run else "removed", len(garbage))
        return tuple(sorted(garbage))
