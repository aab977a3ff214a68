"""On-storage layout and the commit protocol: manifest-last commits, an atomic LATEST, safe deletes.

Layout under a model_dir::

    LATEST                                          msgpack pointer: newest step, its summary, retention state
    step-000000000200/manifest.msgpack              written last: a step is committed iff this exists
    step-000000000200/<attempt-id>/shard-00000.bin  tensor bytes, under a fresh prefix per save attempt

Lifecycle of a save (the same for every backend):

1. Shards are written under ``step-N/<attempt-id>/``, a prefix no other save uses, so a save never
   overwrites bytes that a committed manifest names, and a crashed attempt leaves only unreferenced
   garbage.
2. The manifest is written with a create-only put. That put *is* the commit: before it the step does not
   exist for any reader; after it the step is complete, because every shard it names was fully written
   first. Replacing a committed step on purpose uses compare-and-swap against the manifest just read.
3. LATEST is advanced with compare-and-swap (local: flock + temp file + fsync + ``os.replace``; S3
   ``If-Match``; GCS ``ifGenerationMatch``). It never moves backwards: a writer that finds a newer step
   there leaves it; a lost swap re-reads and retries.
4. Only then does retention run: the new kept set is recorded in LATEST first, then each dropped step
   is deleted manifest first, shards after, so an interrupted prune never leaves a visible half
   checkpoint and simply finishes on the next run.

Readers go LATEST -> manifest -> shards. If LATEST is missing or unreadable, or names a manifest that is
gone, they fall back to the newest committed manifest found by listing and say so in a warning. They also
list to catch a committed manifest newer than LATEST (see below) and use it, with a warning.

Assumptions: the backend honours the create-only and compare-and-swap modes its ``Capabilities`` claim.
A backend that cannot (generic fsspec) gets check-then-write instead, which is safe for one writer per
model_dir only; the store warns about it once. A crash between steps 2 and 3 leaves LATEST one save
behind the newest manifest, which is still a complete checkpoint; readers roll forward to it (so a
resumed job continues after it instead of re-saving it) and the next save moves LATEST on.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from ckptstore.errors import (
    AlreadyExists,
    CommitError,
    FormatError,
    NotFound,
    PreconditionFailed,
    StorageError,
    Unsupported,
)
from ckptstore.format import (
    LATEST_KEY,
    MANIFEST_FILE,
    MAX_LATEST_BYTES,
    MAX_MANIFEST_BYTES,
    Latest,
    Manifest,
    decode_latest,
    decode_manifest,
    encode_latest,
    encode_manifest,
    manifest_key,
    parse_step_dir,
    step_dir,
)
from ckptstore.storage._retry import note_retry
from ckptstore.storage.interface import ObjectInfo, PutMode, Storage, Version

log = logging.getLogger("ckptstore")

_CAS_ATTEMPTS = 64


def new_attempt_id() -> str:
    """A fresh, collision-free directory name for one save attempt's shards."""
    return f"attempt-{uuid.uuid4().hex[:16]}"


def _backoff(attempt: int) -> None:
    # Racing writers retry a lost swap; jitter keeps them from colliding again in lockstep.
    time.sleep(min(0.2, 0.002 * (2 ** min(attempt, 7))) * random.random())


def _conditional_put(storage: Storage, key: str, data: bytes, mode: PutMode) -> ObjectInfo:
    """Put with ``mode``, degrading to check-then-write on backends that cannot enforce conditions."""
    caps = storage.capabilities
    if mode == "create" and not caps.conditional_create:
        try:
            storage.head(key)
        except NotFound:
            return storage.put(key, data, "overwrite")
        raise AlreadyExists(f"{storage.url}/{key}: already exists")
    if isinstance(mode, Version) and not caps.compare_and_swap:
        try:
            current = storage.head(key).version
        except NotFound:
            current = None
        if current is not None and current != mode:
            raise PreconditionFailed(f"{storage.url}/{key}: changed since it was read")
        return storage.put(key, data, "overwrite")
    return storage.put(key, data, mode)


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


def commit_manifest(storage: Storage, manifest: Manifest, *, overwrite: bool) -> None:
    """Step 2 of the lifecycle: make the checkpoint exist by writing its manifest."""
    key = manifest_key(manifest.step)
    data = encode_manifest(manifest)
    if not overwrite:
        try:
            _conditional_put(storage, key, data, "create")
        except AlreadyExists:
            raise CommitError(
                f"{storage.url}: step {manifest.step} is already committed; "
                "pass overwrite=True to replace it"
            ) from None
        return
    try:
        current = storage.head(key).version
    except NotFound:
        current = None
    mode: PutMode = "create" if current is None else current
    try:
        _conditional_put(storage, key, data, mode)
    except (AlreadyExists, PreconditionFailed):
        raise CommitError(
            f"{storage.url}: step {manifest.step} was committed by another writer while this save replaced it"
        ) from None


def read_manifest(storage: Storage, step: int) -> Manifest:
    key = manifest_key(step)
    try:
        # Bounded read: a huge (or hostile) file is refused after at most the format's limit, not read whole.
        data = storage.get(key, 0, MAX_MANIFEST_BYTES + 1)
    except NotFound:
        raise NotFound(f"{storage.url}: no committed checkpoint for step {step}") from None
    manifest = decode_manifest(data, f"{storage.url}/{key}")
    if manifest.step != step:
        raise FormatError(f"{storage.url}/{key}: manifest says step {manifest.step}, its key says {step}")
    return manifest


def committed_steps(storage: Storage) -> list[int]:
    """Every step with a manifest, ascending. Costs one listing of the model_dir."""
    steps = set()
    for obj in storage.list("step-"):
        parts = obj.key.split("/")
        if len(parts) == 2 and parts[1] == MANIFEST_FILE:
            step = parse_step_dir(parts[0])
            if step is not None:
                steps.add(step)
    return sorted(steps)


# ---------------------------------------------------------------------------------------------
# LATEST
# ---------------------------------------------------------------------------------------------


def read_latest(storage: Storage) -> tuple[Latest | None, Version | None]:
    """The LATEST pointer and its version; ``(None, None)`` when absent. Raises ``FormatError`` if damaged."""
    try:
        info = storage.head(LATEST_KEY)
        data = storage.get(LATEST_KEY, 0, MAX_LATEST_BYTES + 1)
    except NotFound:
        return None, None
    return decode_latest(data, f"{storage.url}/{LATEST_KEY}"), info.version


def latest_from_manifest(manifest: Manifest, retention: dict | None = None) -> Latest:
    return Latest(
        step=manifest.step,
        manifest=manifest_key(manifest.step),
        created=manifest.created,
        nbytes=manifest.nbytes,
        num_tensors=len(manifest.tensors) + len(manifest.scalars),
        metadata=manifest.metadata,
        retention=retention or {},
    )


def update_latest(storage: Storage, change: Callable[[Latest | None], Latest | None]) -> Latest | None:
    """Compare-and-swap loop on LATEST: ``change(current)`` returns the new pointer, or None to leave it.

    A damaged LATEST is treated as absent (and replaced), since readers already ignore it.
    """
    for attempt in range(_CAS_ATTEMPTS):
        mode: PutMode
        try:
            current, version = read_latest(storage)
            mode = version if version is not None else "create"
        except FormatError as e:
            # Compare against what is committed instead of treating the pointer as absent: replacing a
            # damaged LATEST blindly could move it backwards.
            log.warning("%s; it will be replaced", e)
            version = storage.head(LATEST_KEY).version
            mode = version if version is not None else "overwrite"
            current = _newest_listed(storage)
            new = change(current) or current
        else:
            new = change(current)
        if new is None:
            return current
        try:
            _conditional_put(storage, LATEST_KEY, encode_latest(new), mode)
            return new
        except (AlreadyExists, PreconditionFailed):
            note_retry()  # a lost race is retried like a transient error, and counted with them
            _backoff(attempt)
    raise CommitError(f"{storage.url}/{LATEST_KEY}: gave up after {_CAS_ATTEMPTS} lost compare-and-swap races")


def advance_latest(storage: Storage, pointer: Latest) -> Latest:
    """Step 3 of the lifecycle: point LATEST at ``pointer.step`` unless it already names a newer step."""

    def change(current: Latest | None) -> Latest | None:
        if current is None:
            return pointer
        if current.step > pointer.step:
            return None
        return replace(pointer, retention=current.retention)

    result = update_latest(storage, change)
    assert result is not None
    return result


def _newest_listed(storage: Storage) -> Latest | None:
    """A pointer to the newest committed manifest that reads back intact, found by listing."""
    for step in reversed(committed_steps(storage)):
        try:
            return latest_from_manifest(read_manifest(storage, step))
        except (NotFound, FormatError) as e:
            log.warning("skipping step %d: %s", step, e)
    return None


def resolve_latest(storage: Storage, *, repair: bool = True) -> Latest | None:
    """What LATEST names (one read), or — when it is missing or damaged — the newest committed manifest
    found by listing, with a warning.

    A missing or damaged LATEST is also rewritten to name that manifest (with the usual never-backwards
    swap), so every reader sees the same, monotonic answer from then on; a reader without write access
    just gets the answer.
    """
    try:
        pointer, _ = read_latest(storage)
    except FormatError as e:
        log.warning("%s; falling back to the newest committed checkpoint found by listing", e)
        pointer = None
        damaged = True
    else:
        damaged = False
    if pointer is not None:
        return pointer
    newest = _newest_listed(storage)
    if newest is None:
        return None
    if not damaged:
        log.warning(
            "%s/%s is missing; using step %d, the newest committed checkpoint found by listing",
            storage.url, LATEST_KEY, newest.step,
        )
    if not repair:
        return newest
    try:
        return advance_latest(storage, newest)
    except (StorageError, Unsupported, CommitError) as e:
        log.debug("could not repair %s/%s: %s", storage.url, LATEST_KEY, e)
        return newest


def roll_forward(storage: Storage, *, repair: bool = True) -> Latest | None:
    """Move LATEST on to a committed manifest newer than the one it names, if there is one.

    LATEST never moves backwards, so a newer manifest means a writer died between committing it (step
    2) and advancing LATEST (step 3). That checkpoint is complete; a job resuming from the stale pointer
    would recompute and re-save the committed step and fail on it at every restart. One listing: the
    store does this once, when it first touches the model_dir, so ``latest()`` stays one read after that.
    """
    try:
        pointer, _ = read_latest(storage)
    except FormatError:
        pointer = None  # resolve_latest/advance_latest deal with (and warn about) a damaged LATEST
    steps = committed_steps(storage)
    floor = -1 if pointer is None else pointer.step
    for step in reversed([s for s in steps if s > floor]):
        try:
            newest = read_manifest(storage, step)
        except (NotFound, FormatError) as e:
            log.warning("skipping step %d: %s", step, e)
            continue
        if pointer is not None:
            log.warning(
                "%s/%s names step %d, but step %d is committed too (its writer stopped before advancing "
                "LATEST); moving LATEST to step %d", storage.url, LATEST_KEY, pointer.step, step, step,
            )
        found = latest_from_manifest(newest)
        return advance_latest(storage, found) if repair else found
    return pointer


# ---------------------------------------------------------------------------------------------
# Deleting
# ---------------------------------------------------------------------------------------------


def attempts_of(manifest: Manifest) -> frozenset[str]:
    """The attempt directories whose shards a manifest names."""
    return frozenset(name.split("/", 1)[0] for name in manifest.shards if "/" in name)


def delete_step(storage: Storage, step: int, attempts: frozenset[str]) -> None:
    """Delete a committed step: the manifest first (the step vanishes atomically), then its shards.

    Only the manifest that names exactly ``attempts`` is deleted, and only shards under those attempt
    directories, so a save of the same step that started after the prune decided is never touched.
    Idempotent: a repeated call finishes what an interrupted one began.
    """
    try:
        current = read_manifest(storage, step)
    except NotFound:
        current = None
    except FormatError:
        current = None  # a damaged manifest of a step being deleted: deleting it is the point
        storage.delete(manifest_key(step))
    if current is not None and attempts_of(current) == attempts:
        storage.delete(manifest_key(step))
    for attempt in sorted(attempts):
        for obj in list(storage.list(f"{step_dir(step)}/{attempt}/")):
            storage.delete(obj.key)
