"""Multi-process save and restore: every rank writes its own shards, one commit makes them visible.

A training job that runs as many processes holds its state spread over them. ``save`` lets each rank
write the tensors it holds, in parallel, under the step's directory; rank 0 then writes one manifest
that names every rank's chunks and advances LATEST, exactly as a single-process save does (the
lifecycle in ``ckptstore.commit`` is unchanged: a step exists iff its manifest exists). The ranks talk
through a ``Coordinator`` — the collective layer the job already runs on (``ckptstore-torch`` ships one
over a torch.distributed gloo group) — and only ever exchange small plain-data messages (msgpack, never
pickle): tensor names, shapes and chunk tables, not tensor bytes.

A save is four tagged collectives:

1. ``plan`` (all-gather): every rank flattens and checks its state locally and sends what it holds
   (names, dtypes, shapes, sizes) or the error it hit.
2. ``decide`` (broadcast from rank 0): abort if any rank failed; otherwise a fresh attempt id and, for a
   name held by several ranks (a replicated tensor), which one of them writes it — the bytes are
   spread over the holders, so a replicated model is written once, in parallel.
3. ``written`` (all-gather): each rank writes its shards under ``step-N/<attempt>-rNNNNN/`` (its own
   directory: rank-distinct shard names, one shared attempt prefix, ``write_shards`` unchanged) and
   sends its chunk table or its error.
4. ``commit`` (broadcast from rank 0): rank 0 writes the manifest and advances LATEST, then tells every
   rank the outcome, so all ranks return the same ``CheckpointInfo`` or raise the same ``RankFailed``.

Why errors travel as data: a rank that raises still takes part in the next collective and reports its
error there, so the others learn *which* rank failed and why, instead of timing out. A rank that dies
or hangs cannot report; the coordinator's timeout (or the transport noticing the dead peer) turns that
into ``CoordinationError`` on the others. Shards are deleted only after rank 0 has said "abort before
commit": after a coordination failure a rank cannot know whether rank 0 committed, so it leaves its
shards for garbage collection rather than risk deleting a committed checkpoint's bytes.

Restore: rank 0 resolves which step to read (so a LATEST that moves meanwhile cannot split the ranks
over two checkpoints) and broadcasts it; each rank then reads only the names it asks for. The manifest
is one flat name table, so a checkpoint saved by any number of ranks restores on any other number, as
long as each rank asks for names that exist (rank-specific names, e.g. an optimizer shard per rank,
exist only for the world size that wrote them).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgpack

from ckptstore import commit, transfer
from ckptstore.errors import CheckpointMismatch, CommitError, CoordinationError, RankFailed
from ckptstore.format import (
    Chunk,
    Manifest,
    TensorEntry,
    dtype_name,
    manifest_key,
    pack,
    plan_layout,
    step_dir,
)
from ckptstore.manager import (
    CheckpointInfo,
    CheckpointStore,
    TransferStats,
    __version__,
    compare,
    flatten_template,
    prepare_save,
)
from ckptstore.storage._retry import RetryTally, counting_retries
from ckptstore.storage.interface import Storage

log = logging.getLogger("ckptstore")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# The coordinator interface
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Coordinator(Protocol):
    """The collectives a distributed save needs, over whatever the job already runs on.

    Every call carries a ``tag`` naming the protocol step (``"ckptstore.save/200/plan"``). All ranks
    must make the same calls in the same order with the same tags; an implementation compares the
    tags it receives and raises ``CoordinationError`` naming the first rank that disagrees, so a rank
    that skipped or repeated a step fails loudly instead of pairing its data with the wrong step.

    Payloads are plain data (dicts with str keys, lists, str, int, float, bool, None, bytes) and must
    travel as msgpack (``pack_message``/``unpack_message``), never pickle. Calls block; one that cannot
    complete within the implementation's timeout (a rank died or hangs) raises ``CoordinationError``.

    Note for implementers: ``broadcast`` is only ever used for small control messages, so it may be
    built on ``all_gather`` — that way every rank, not just the receivers, sees a mismatched tag.
    """

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_gather(self, obj: Any, tag: str) -> list[Any]:
        """Every rank's ``obj``, indexed by rank."""
        ...

    def broadcast(self, obj: Any, tag: str, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (the others' ``obj`` is ignored)."""
        ...

    def barrier(self, tag: str) -> None:
        """Return once every rank has called ``barrier`` with this tag."""
        ...


def pack_message(tag: str, obj: Any) -> bytes:
    """The bytes a coordinator sends for one call: the tag and the plain-data payload, as msgpack."""
    return pack([tag, obj], f"coordinator message {tag!r}")


def unpack_message(data: bytes, rank: int, expected_tag: str) -> Any:
    """The payload of another rank's message; ``CoordinationError`` if it was sent for another call."""
    try:
        tag, obj = msgpack.unpackb(data, raw=False, strict_map_key=False, max_ext_len=0)
    except Exception as e:  # a truncated or foreign message: msgpack raises many types
        raise CoordinationError(f"{expected_tag}: unreadable message from rank {rank} ({e})") from None
    if tag != expected_tag:
        raise CoordinationError(
            f"mismatched collectives: this rank is at {expected_tag!r} but rank {rank} is at {tag!r}"
        )
    return obj


class SingleProcessCoordinator:
    """The coordinator of a job with one process: rank 0 of 1. Collectives return at once.

    Payloads still go through msgpack, so code tested single-process cannot pass data that a real
    coordinator would refuse.
    """

    rank = 0
    world_size = 1

    def all_gather(self, obj: Any, tag: str) -> list[Any]:
        return [unpack_message(pack_message(tag, obj), 0, tag)]

    def broadcast(self, obj: Any, tag: str, src: int = 0) -> Any:
        if src != 0:
            raise ValueError(f"{tag}: broadcast from rank {src} in a world of one")
        return unpack_message(pack_message(tag, obj), 0, tag)

    def barrier(self, tag: str) -> None:
        pack_message(tag, None)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _failures(replies: list[Any]) -> dict[int, str]:
    return {rank: r["error"] for rank, r in enumerate(replies) if r.get("error") is not None}


# ---------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------


def save(
    store: CheckpointStore,
    step: int,
    state: Mapping[str, Any],
    coordinator: Coordinator,
    metadata: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> CheckpointInfo:
    """Save one checkpoint from every rank; call it on all ranks with the same ``step``.

    Args:
        store: this rank's store for the shared model_dir (every rank opens the same URL).
        step: the training step; the same on every rank.
        state: what this rank holds, as for ``CheckpointStore.save``. Names must be unique across
            ranks, except for replicated entries: a name several ranks hold must have the same dtype
            and shape (and, for scalars, value) everywhere; it is written once, by one of them.
        coordinator: the job's collectives (``SingleProcessCoordinator()`` for one process).
        metadata: the checkpoint's metadata map; rank 0's is used.
        overwrite: replace ``step`` if it is already committed.

    Returns:
        The same ``CheckpointInfo`` on every rank.

    Raises:
        RankFailed: a rank's state was invalid, its writes failed, or the commit failed; every rank
            raises the same error, which names each failed rank. LATEST is unchanged.
        CoordinationError: a rank died or hung (the coordinator's timeout), or ranks disagreed on the
            protocol step. If it was rank 0 dying after its commit, the checkpoint is committed anyway.
    """
    with counting_retries() as retried:
        return _save(store, step, state, coordinator, metadata, overwrite, retried)


def _save(
    store: CheckpointStore,
    step: int,
    state: Mapping[str, Any],
    coordinator: Coordinator,
    metadata: Mapping[str, Any] | None,
    overwrite: bool,
    retried: RetryTally,
) -> CheckpointInfo:
    started = time.perf_counter()
    me, world = coordinator.rank, coordinator.world_size
    tag = f"ckptstore.save/{step}"
    storage = store.storage

    # 1. plan: check the local state before anything is written.
    plan: dict[str, Any]
    prepared: dict[str, Any] = {}
    local: Exception | None = None  # this rank's own error, chained to the RankFailed it raises
    try:
        step, prepared, scalars, metadata = prepare_save(step, state, metadata)
        held = [[n, dtype_name(a.dtype), list(a.shape), a.nbytes] for n, a in prepared.items()]
        plan = {"error": None, "tensors": held, "scalars": scalars, "metadata": metadata if me == 0 else None}
    except Exception as e:
        plan, local = {"error": _describe(e)}, e
    plans = coordinator.all_gather(plan, f"{tag}/plan")

    # 2. decide (rank 0): abort, or an attempt id and who writes each replicated tensor.
    decision: dict[str, Any] = {}
    if me == 0:
        try:
            decision = _decide(store, step, plans, overwrite)
        except Exception as e:
            decision, local = {"error": {0: _describe(e)}}, e
    decision = coordinator.broadcast(decision, f"{tag}/decide")
    if decision.get("error"):
        raise RankFailed(f"save of step {step}", {int(r): m for r, m in decision["error"].items()}) from local

    # 3. write this rank's shards.
    attempt = f"{decision['attempt']}-r{me:05d}"
    owners: dict[str, int] = decision["owners"]
    mine = {n: a for n, a in prepared.items() if owners.get(n, me) == me}
    prefix = step_dir(step)
    written: dict[str, Any]
    try:
        written = _write(store, prefix, attempt, mine, decision["checksum"])
    except Exception as e:
        written, local = {"error": _describe(e)}, e
    results = coordinator.all_gather(written, f"{tag}/written")

    # 4. commit (rank 0), then everyone learns the outcome.
    outcome: dict[str, Any] = {}
    if me == 0:
        failed = _failures(results)
        if failed:
            outcome = {"error": failed, "cleanup": True}
        else:
            try:
                outcome = _commit(store, step, plans, results, overwrite, decision["checksum"])
            except Exception as e:
                # The manifest put may have landed before the error surfaced: keep the shards (GC has them).
                outcome, local = {"error": {0: _describe(e)}, "cleanup": False}, e
    outcome = coordinator.broadcast(outcome, f"{tag}/commit")
    if outcome.get("error"):
        if outcome.get("cleanup"):
            _discard(storage, prefix, attempt)
        raise RankFailed(f"save of step {step}", {int(r): m for r, m in outcome["error"].items()}) from local

    seconds = time.perf_counter() - started
    if me == 0:
        if outcome["latest"] > step:
            log.warning(
                "%s: step %d is committed, but LATEST stays at the newer step %d (it never moves backwards)",
                storage.url, step, outcome["latest"],
            )
        store._housekeeping()
    stats = TransferStats(
        "save", step, outcome["nbytes"], seconds, seconds, retries=retried.count,
        files=outcome.get("files", 0), mode="distributed",
    )
    if me == 0:
        log.info("%s: %s from %d ranks", storage.url, stats.describe(), world)
    return CheckpointInfo(step, outcome["created"], outcome["nbytes"], outcome["metadata"], outcome["num_tensors"],
                          seconds, stats)


def _decide(store: CheckpointStore, step: int, plans: list[Any], overwrite: bool) -> dict[str, Any]:
    failed = _failures(plans)
    if failed:
        return {"error": failed}
    holders: dict[str, list[int]] = {}
    specs: dict[str, tuple[str, list[int], int]] = {}
    problems: dict[int, str] = {}
    for rank, p in enumerate(plans):
        for name, dtype, shape, nbytes in p["tensors"]:
            if name in specs and specs[name][:2] != (dtype, shape):
                first = holders[name][0]
                problems.setdefault(rank, (
                    f"ValueError: {name} is {dtype} {shape} here but {specs[name][0]} {specs[name][1]} on "
                    f"rank {first}; a name held by several ranks must be the same tensor"
                ))
                continue
            specs[name] = (dtype, shape, nbytes)
            holders.setdefault(name, []).append(rank)
    scalar_values: dict[str, tuple[int, Any]] = {}
    for rank, p in enumerate(plans):
        for name, value in p["scalars"].items():
            if name in specs:
                problems.setdefault(rank, f"ValueError: {name} is a scalar here but a tensor on rank {holders[name][0]}")
            elif name in scalar_values and scalar_values[name][1] != value:
                problems.setdefault(rank, (
                    f"ValueError: scalar {name} is {value!r} here but {scalar_values[name][1]!r} on rank "
                    f"{scalar_values[name][0]}"
                ))
            else:
                scalar_values.setdefault(name, (rank, value))
    if problems:
        return {"error": problems}

    # Spread replicated tensors over their holders, largest first, to even out the bytes each writes.
    load = [sum(nbytes for n, _, _, nbytes in p["tensors"] if len(holders[n]) == 1) for p in plans]
    owners: dict[str, int] = {}
    for name in sorted((n for n, h in holders.items() if len(h) > 1), key=lambda n: (-specs[n][2], n)):
        owner = min(holders[name], key=lambda r: (load[r], r))
        owners[name] = owner
        load[owner] += specs[name][2]

    storage = store.storage
    store._roll_forward_once()
    if not overwrite:
        try:
            storage.head(manifest_key(step))
        except FileNotFoundError:
            pass
        else:
            raise CommitError(f"{storage.url}: step {step} is already committed; pass overwrite=True to replace it")
    # One manifest names one checksum algorithm: rank 0's, whatever the other ranks' stores say.
    return {"error": None, "attempt": commit.new_attempt_id(), "owners": owners, "checksum": store.checksum}


def _write(store: CheckpointStore, prefix: str, attempt: str, arrays: Mapping[str, Any], checksum: str) -> dict[str, Any]:
    """Write this rank's arrays (checksummed with ``checksum``); return its chunk table as plain data."""
    if not arrays:
        return {"error": None, "tensors": {}, "shards": {}}
    total = sum(a.nbytes for a in arrays.values())
    layout = plan_layout(
        [(name, a.nbytes) for name, a in arrays.items()],
        target_shard_size=max(1, math.ceil(total / store.workers)),
        max_shard_size=store.max_shard_size,
        chunk_size=store.chunk_size,
    )
    written = transfer.write_shards(store.storage, prefix, attempt, arrays, layout, store.workers, checksum=checksum)
    tensors = {
        name: [[c.shard, c.offset, c.nbytes, c.checksum] for c in chunks] for name, chunks in written.chunks.items()
    }
    return {"error": None, "tensors": tensors, "shards": dict(written.shard_sizes)}


def _commit(
    store: CheckpointStore, step: int, plans: list[Any], results: list[Any], overwrite: bool, checksum: str
) -> dict[str, Any]:
    """Rank 0: one manifest naming every rank's chunks (the commit), then LATEST."""
    shards: dict[str, int] = {}
    tensors: dict[str, TensorEntry] = {}
    specs = {name: (dtype, tuple(shape)) for p in plans for name, dtype, shape, _ in p["tensors"]}
    for r in results:
        shards.update(r["shards"])
        for name, chunks in r["tensors"].items():
            dtype, shape = specs[name]
            tensors[name] = TensorEntry(dtype, shape, tuple(Chunk(*c) for c in chunks))
    missing = set(specs) - set(tensors)
    if missing:  # a protocol bug, not a user error: never commit a manifest without every tensor
        raise CommitError(f"no rank wrote {', '.join(sorted(missing))}")
    scalars: dict[str, Any] = {}
    for p in plans:
        scalars.update(p["scalars"])
    manifest = Manifest(
        step=step,
        created=store._clock(),
        library=__version__,
        shards=shards,
        tensors=tensors,
        scalars=scalars,
        metadata=plans[0]["metadata"],
        checksum=checksum,
    )
    commit.commit_manifest(store.storage, manifest, overwrite=overwrite)
    pointer = commit.advance_latest(store.storage, commit.latest_from_manifest(manifest))
    info = CheckpointInfo.from_manifest(manifest)
    return {
        "error": None, "created": info.time, "nbytes": info.nbytes, "num_tensors": info.num_tensors,
        "metadata": dict(info.metadata), "latest": pointer.step, "files": len(shards),
    }


def _discard(storage: Storage, prefix: str, attempt: str) -> None:
    """Best-effort removal of this rank's shards of an aborted save (garbage collection catches the rest)."""
    try:
        for obj in list(storage.list(f"{prefix}/{attempt}/")):
            storage.delete(obj.key)
    except Exception as e:  # the save's own error matters more than a failed cleanup
        log.debug("could not clean up %s/%s: %s", prefix, attempt, e)


# ---------------------------------------------------------------------------------------------
# Restore
# ---------------------------------------------------------------------------------------------


def restore(
    store: CheckpointStore,
    coordinator: Coordinator,
    step: int | None = None,
    *,
    names: Iterable[str] | None = None,
    like: Mapping[str, Any] | None = None,
    strict: bool = True,
    verify: bool | None = None,
) -> dict[str, Any]:
    """Restore one checkpoint on every rank; each rank reads only the names it asks for.

    Call it on all ranks. Rank 0 picks the step (``step``, or the latest), so every rank reads the same
    checkpoint even if LATEST moves meanwhile. ``names``, ``like``, ``strict`` and ``verify`` are this
    rank's, as for ``CheckpointStore.restore``, except that ``like`` alone describes only this rank's
    part: every name in it must be stored and match, and nothing else is read (names only other ranks
    hold are not a mismatch). Without ``names`` or ``like`` a rank reads everything.

    Raises:
        RankFailed: some rank could not restore (missing checkpoint or name, a mismatch with its
            template, damaged data); every rank raises it, naming each failed rank and its error.
        CoordinationError: a rank died or hung, or ranks disagreed on the protocol step.
    """

    def read(chosen: int) -> dict[str, Any]:
        if like is None or names is not None:
            return store.restore(chosen, names=names, like=like, strict=strict, verify=verify)
        # A rank's template covers its own part of the checkpoint: names only other ranks use are not
        # "unexpected" here, but everything the template asks for must be there and fit.
        manifest = store.manifest(chosen)
        where = f"{store.storage.url}@{manifest.step}"
        mismatches = [m for m in compare(manifest, like, None, where) if m.kind != "unexpected"]
        if mismatches and strict:
            raise CheckpointMismatch(where, mismatches)
        if mismatches:
            log.warning("%s", CheckpointMismatch(where, mismatches))
        arrays, scalars = flatten_template(like)
        bad = {m.name for m in mismatches}
        wanted = [n for n in list(arrays) + list(scalars) if n not in bad]
        return store.restore(chosen, names=wanted, verify=verify)

    return restore_with(store, coordinator, read, step)


def restore_with(store: CheckpointStore, coordinator: Coordinator, read: Callable[[int], T], step: int | None = None) -> T:
    """Run ``read(step)`` on every rank for one step that rank 0 chose; fail on all ranks if any fails.

    The building block of ``restore`` for adapters that check or read in their own way (the torch
    plugin compares each module with its own template first). ``read`` gets the resolved step.

    Raises:
        RankFailed: the step could not be resolved, or ``read`` raised on some rank; every rank raises
            it (chained to its own exception where it had one).
    """
    tag = f"ckptstore.restore/{'latest' if step is None else step}"
    chosen: dict[str, Any] = {}
    if coordinator.rank == 0:
        try:
            chosen = {"error": None, "step": store.manifest(step).step}
        except Exception as e:
            chosen = {"error": {0: _describe(e)}}
    chosen = coordinator.broadcast(chosen, f"{tag}/step")
    if chosen.get("error"):
        raise RankFailed("restore", {int(r): m for r, m in chosen["error"].items()})
    out: T | None = None
    local: Exception | None = None
    try:
        out = read(chosen["step"])
    except Exception as e:
        local = e
    replies = coordinator.all_gather({"error": None if local is None else _describe(local)}, f"{tag}/read")
    failed = _failures(replies)
    if failed:
        raise RankFailed(f"restore of step {chosen['step']}", failed) from local
    return out  # type: ignore[return-value]
