"""Every exception ckptstore raises, under one root.

Each subclass also inherits the builtin a caller would naturally catch (``FileNotFoundError``,
``ValueError`` ...), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class CkptStoreError(Exception):
    """Root of every ckptstore error."""


class StorageError(CkptStoreError, OSError):
    """A storage operation failed (I/O error, unreachable server, denied access, exhausted retries)."""


class NotFound(CkptStoreError, FileNotFoundError):
    """A key, checkpoint or tensor does not exist."""


class AlreadyExists(CkptStoreError, FileExistsError):
    """A create-only write lost: the key already exists."""


class PreconditionFailed(CkptStoreError):
    """A compare-and-swap write lost: the object changed since it was read."""


class Unsupported(CkptStoreError, NotImplementedError):
    """The backend cannot enforce what was asked (for example a conditional write)."""


class FormatError(CkptStoreError, ValueError):
    """A manifest, pointer or shard is malformed, hostile or of an unknown version."""


class ChecksumError(FormatError):
    """Bytes read back do not match the checksum recorded when they were written."""


class ReadOnlyError(CkptStoreError, PermissionError):
    """A write was asked of a store opened with ``read_only=True``."""


class CommitError(CkptStoreError):
    """A checkpoint could not be committed (for example the step already exists)."""


class PluginError(CkptStoreError, LookupError):
    """A storage backend cannot be found or loaded for a URL."""


class CoordinationError(CkptStoreError):
    """A collective failed: a rank died or hung past the timeout, or ranks called mismatched collectives."""


class RankFailed(CkptStoreError):
    """A distributed save or restore failed on one or more ranks; raised identically on every rank.

    Attributes:
        failures: rank -> ``"ExceptionType: message"`` for every rank that failed.
    """

    def __init__(self, what: str, failures: Mapping[int, str]):
        self.failures = dict(sorted(failures.items()))
        parts = [f"rank {r}: {msg}" for r, msg in self.failures.items()]
        super().__init__(f"{what} failed on {'; '.join(parts)}")


@dataclass(frozen=True)
class TensorMismatch:
    """One difference between a checkpoint and the model it is restored into."""

    name: str
    kind: str  # "missing" | "unexpected" | "shape" | "dtype"
    checkpoint: str | None = None  # shape or dtype in the checkpoint
    model: str | None = None  # shape or dtype in the model

    def describe(self) -> str:
        if self.kind == "missing":
            return f"{self.name}: in the model but not in the checkpoint (model {self.model})"
        if self.kind == "unexpected":
            return f"{self.name}: in the checkpoint but not in the model (checkpoint {self.checkpoint})"
        return f"{self.name}: {self.kind} {self.model} in the model, {self.checkpoint} in the checkpoint"


class CheckpointMismatch(CkptStoreError, ValueError):
    """A checkpoint does not fit the model it is restored into; lists every difference at once."""

    def __init__(self, where: str, mismatches: Sequence[TensorMismatch]):
        self.where = where
        self.mismatches = tuple(mismatches)
        counts: dict[str, int] = {}
        for m in self.mismatches:
            counts[m.kind] = counts.get(m.kind, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        lines = [f"checkpoint {where} does not match the model ({summary}):"]
        lines += ["  " + m.describe() for m in self.mismatches]
        super().__init__("\n".join(lines))

