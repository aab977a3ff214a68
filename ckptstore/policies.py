"""When to save a checkpoint and which checkpoints to keep: pure decisions, no I/O, no clock.

Every policy is a small frozen dataclass with one decision method. Callers pass the time in (``now``),
so a fake clock drives the tests and nothing here calls ``time.time()``.

Save policies (``should_save``)
-------------------------------
``EveryNSeconds`` and ``EveryNSteps`` follow TF's ``SecondOrStepTimer`` exactly: with no trigger
recorded they fire; never twice for the same step; otherwise when ``now >= last_time + seconds`` or
``step >= last_step + steps``. The trigger point is the *last save or session start*, whatever caused
the save (a save at a specific step restarts the interval too). ``AtBegin``, ``AtEnd`` and ``AtSteps``
complete the vocabulary; ``any_of`` combines them. A trainer hook drives them like
``tf.compat.v1.train.CheckpointSaverHook``::

    last = None                                   # (step, time) of the last trigger
    # after_create_session -- a new session counts from the restored step, as TF does
    last = (step, now)
    if policy.should_save(SaveContext(step, now, is_begin=True, last_saved_step=step, last_saved_time=now)):
        save(step); last = (step, now)
    # after_run (re-read the global step first: the one fetched in before_run is stale)
    if policy.should_save(SaveContext(step, now, last_saved_step=last[0], last_saved_time=last[1])):
        save(step); last = (step, now)
    # end
    if policy.should_save(SaveContext(step, now, is_end=True, last_saved_step=last[0], last_saved_time=last[1])):
        save(step)

``AtEnd`` saves only if the final step differs from the last trigger (TF's
``last_step != timer.last_triggered_step()``), so a session that ran no step does not re-save.

Retention policies (``select``)
-------------------------------
A retention policy looks at the committed checkpoints (``CheckpointRecord``: step, commit time,
metadata) and answers which to keep. Rules combined with ``any_of`` keep the union of what each keeps.
Whatever the rules say, ``select`` never deletes a step in ``protected`` (the step LATEST names, pinned
steps, steps being restored or written) nor a step the ``keep_every_n_hours`` schedule has preserved.

``KeepMax(n, every_n_hours=h)`` is ``tf.train.CheckpointManager(max_to_keep=n,
keep_checkpoint_every_n_hours=h)``, decision for decision:

1. The *window* is the ``n`` newest checkpoints (by step) that are not preserved. Older ones leave it
   oldest first; each leaving checkpoint is preserved if ``time - h*3600 >= last_preserved_time``
   (which then becomes its time), else deleted. Preserved checkpoints are kept forever and no longer
   count toward ``n``. ``n=None`` keeps everything and leaves the schedule untouched, as TF does.
2. The schedule survives restarts: ``RetentionState`` (last preserved time, preserved steps) is a
   small dict the store persists in LATEST and passes back.
3. When a new process opens the store it calls ``resume``, which applies what TF's constructor does
   with a recovered ``CheckpointState``: if the clock is behind the last preserved time, that time is
   moved back to now; window checkpoints stamped in the future are treated as stamped now; and window
   checkpoints no newer than the last preserved time become unmanaged -- TF drops them from its list so
   they are never deleted; here they join the preserved set, with the same effect.
4. TF starts a new manager's schedule at ``creation time - 1 s``; ``RetentionState.start(now)`` does
   the same for a brand-new store. A state without a start (LATEST lost, or written without
   retention) is treated conservatively: checkpoints already outside the window are preserved rather
   than risk deleting one TF would have preserved.

Where ckptstore differs: Estimator itself uses ``tf.compat.v1.train.Saver``, whose every-n-hours
schedule starts afresh in each process (and steps by exactly ``h`` from its start rather than from the
last preserved time); we follow ``CheckpointManager`` as the more useful and restart-safe rule. A
protected checkpoint that leaves the window is kept but counts as having left it (TF has no pins).

``KeepBest(n, metric, mode)``: checkpoints whose metadata lacks the metric, or holds a non-numeric,
boolean or NaN value, rank below every measured one and are never kept by this rule -- they survive only
if another rule (usually ``KeepMax``) keeps them. Equal metrics prefer the newer step.

``from_run_config`` maps TF ``RunConfig`` arguments (with their defaults) to a policy pair.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ckptstore.errors import FormatError

__all__ = [
    "AnyRetention",
    "AnySave",
    "AtBegin",
    "AtEnd",
    "AtSteps",
    "CheckpointRecord",
    "EveryNSeconds",
    "EveryNSteps",
    "KeepBest",
    "KeepEveryNSteps",
    "KeepMax",
    "KeepSteps",
    "MaxAge",
    "RetentionDecision",
    "RetentionPolicy",
    "RetentionState",
    "SaveContext",
    "SavePolicy",
    "any_of",
    "from_run_config",
]


# --------------------------------------------------------------------------------------------------
# validation helpers


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_step(name: str, value: object) -> int:
    if not _is_int(value) or value < 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value  # type: ignore[return-value]


def _check_positive_int(name: str, value: object) -> None:
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_positive_number(name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type,operator]
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_time(name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a finite number, got {value!r}")


# --------------------------------------------------------------------------------------------------
# save policies


@dataclass(frozen=True)
class SaveContext:
    """What a save policy sees when asked whether to save now.

    Attributes:
        step: The current global step (after the training step ran).
        now: The current clock reading, in seconds.
        is_begin: True once per session, right after it is created (or restored).
        is_end: True once, when training ends.
        last_saved_step: Step of the last trigger: the last save, or the session start (a new session
            counts from the restored step). None before any trigger.
        last_saved_time: Clock reading of that trigger; None exactly when ``last_saved_step`` is None.
    """

    step: int
    now: float
    is_begin: bool = False
    is_end: bool = False
    last_saved_step: int | None = None
    last_saved_time: float | None = None

    def __post_init__(self) -> None:
        _check_step("step", self.step)
        _check_time("now", self.now)
        if (self.last_saved_step is None) != (self.last_saved_time is None):
            raise ValueError("last_saved_step and last_saved_time must be both set or both None")
        if self.last_saved_step is not None:
            _check_step("last_saved_step", self.last_saved_step)
            _check_time("last_saved_time", self.last_saved_time)


@runtime_checkable
class SavePolicy(Protocol):
    """Decides whether to save a checkpoint now."""

    def should_save(self, context: SaveContext) -> bool:
        """Returns True when a checkpoint should be saved at ``context.step``."""
        ...


@dataclass(frozen=True)
class EveryNSeconds:
    """Save when ``seconds`` have passed since the last trigger (``SecondOrStepTimer(every_secs=)``).

    Fires when no trigger is recorded; never twice for the same step.
    """

    seconds: float = 600.0

    def __post_init__(self) -> None:
        _check_positive_number("seconds", self.seconds)

    def should_save(self, context: SaveContext) -> bool:
        if context.last_saved_step is None or context.last_saved_time is None:
            return True
        if context.step == context.last_saved_step:
            return False
        return context.now >= context.last_saved_time + self.seconds


@dataclass(frozen=True)
class EveryNSteps:
    """Save when ``step >= last trigger step + steps`` (``SecondOrStepTimer(every_steps=)``).

    Fires when no trigger is recorded; never twice for the same step. Counting from the last trigger
    (not ``step % steps == 0``) means a run resumed at step 1234 with ``steps=1000`` next saves at 2234.
    """

    steps: int

    def __post_init__(self) -> None:
        _check_positive_int("steps", self.steps)

    def should_save(self, context: SaveContext) -> bool:
        if context.last_saved_step is None:
            return True
        if context.step == context.last_saved_step:
            return False
        return context.step >= context.last_saved_step + self.steps


@dataclass(frozen=True)
class AtBegin:
    """Save once when a session starts (TF saves at session creation, also on every resume)."""

    def should_save(self, context: SaveContext) -> bool:
        return context.is_begin


@dataclass(frozen=True)
class AtEnd:
    """Save when training ends, unless the final step is the one last triggered."""

    def should_save(self, context: SaveContext) -> bool:
        return context.is_end and context.step != context.last_saved_step


@dataclass(frozen=True)
class AtSteps:
    """Save when the run reaches or passes one of ``steps``.

    A listed step ``s`` fires when ``last_saved_step < s <= step``, so a step skipped by a multi-step
    run (``steps_per_run > 1``) is not silently missed; with no trigger recorded only an exact match
    fires.
    """

    steps: frozenset[int]

    def __init__(self, steps: Iterable[int]):
        values = frozenset(steps)
        for s in values:
            _check_step("AtSteps step", s)
        object.__setattr__(self, "steps", values)

    def should_save(self, context: SaveContext) -> bool:
        last = context.last_saved_step
        if last is None:
            return context.step in self.steps
        return any(last < s <= context.step for s in self.steps)


@dataclass(frozen=True)
class AnySave:
    """Save when any member policy says so. With no members it never saves."""

    policies: tuple[SavePolicy, ...]

    def should_save(self, context: SaveContext) -> bool:
        return any(p.should_save(context) for p in self.policies)


# --------------------------------------------------------------------------------------------------
# retention: records, state, decision


@dataclass(frozen=True)
class CheckpointRecord:
    """One committed checkpoint as retention sees it.

    Attributes:
        step: The checkpoint's step; unique within a store.
        time: When it was committed (the manifest's creation time), in seconds of the store's clock.
        metadata: The user metadata map from the manifest (``KeepBest`` reads its metric from it).
    """

    step: int
    time: float
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_step("step", self.step)
        _check_time("time", self.time)


@dataclass(frozen=True)
class RetentionState:
    """What a retention policy must remember between prunes and across restarts.

    Persist it with ``to_dict()`` (plain ints, floats, lists: msgpack- and JSON-safe) and read it back
    with ``from_dict()``.

    Attributes:
        last_preserved_time: The ``keep_every_n_hours`` reference point (TF's
            ``last_preserved_timestamp``); None when no schedule was started (see ``start``).
        preserved: Steps preserved by ``keep_every_n_hours`` (or left unmanaged by a restart); never
            deleted, whatever the policy.
        clamped_times: Commit times moved back to the clock at a restart whose clock was behind them
            (TF's ``min(timestamp, now)``); empty unless a clock went backwards.
    """

    last_preserved_time: float | None = None
    preserved: frozenset[int] = frozenset()
    clamped_times: Mapping[int, float] = field(default_factory=dict, hash=False)

    @classmethod
    def start(cls, now: float) -> RetentionState:
        """The state of a brand-new store: the schedule starts one second before ``now``, as TF does."""
        _check_time("now", now)
        return cls(last_preserved_time=now - 1.0)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for LATEST; ``from_dict`` reverses it."""
        return {
            "last_preserved_time": self.last_preserved_time,
            "preserved": sorted(self.preserved),
            "clamped_times": [[s, t] for s, t in sorted(self.clamped_times.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetentionState:
        """Reads a dict written by ``to_dict``.

        Raises:
            FormatError: ``data`` is not a retention state (wrong types, negative steps, NaN times).
        """
        if not isinstance(data, Mapping):
            raise FormatError(f"retention state must be a map, got {type(data).__name__}")
        lpt = data.get("last_preserved_time")
        if lpt is not None and (not _is_number(lpt) or not math.isfinite(lpt)):
            raise FormatError(f"retention state: bad last_preserved_time {lpt!r}")
        preserved = data.get("preserved", [])
        if not isinstance(preserved, (list, tuple)) or not all(_is_int(s) and s >= 0 for s in preserved):
            raise FormatError("retention state: preserved must be a list of non-negative ints")
        clamped = data.get("clamped_times", [])
        if not isinstance(clamped, (list, tuple)) or not all(
            isinstance(p, (list, tuple))
            and len(p) == 2
            and _is_int(p[0])
            and p[0] >= 0
            and _is_number(p[1])
            and math.isfinite(p[1])
            for p in clamped
        ):
            raise FormatError("retention state: clamped_times must be a list of [step, time] pairs")
        return cls(
            last_preserved_time=None if lpt is None else float(lpt),
            preserved=frozenset(preserved),
            clamped_times={int(s): float(t) for s, t in clamped},
        )

    def effective_time(self, record: CheckpointRecord) -> float:
        """The record's time as the ``keep_every_n_hours`` schedule sees it."""
        return self.clamped_times.get(record.step, record.time)


@dataclass(frozen=True)
class RetentionDecision:
    """The outcome of ``RetentionPolicy.select``.

    Attributes:
        keep: Steps to keep.
        delete: Steps to delete, oldest first. Together with ``keep`` they cover every input record.
        state: The state to persist (in LATEST) *before* deleting anything.
    """

    keep: frozenset[int]
    delete: tuple[int, ...]
    state: RetentionState


# --------------------------------------------------------------------------------------------------
# retention policies


class RetentionPolicy(abc.ABC):
    """Decides which committed checkpoints to keep.

    Subclasses implement ``retained``; ``select`` adds the guarantees every policy shares.
    """

    @abc.abstractmethod
    def retained(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> tuple[frozenset[int], RetentionState]:
        """The steps this rule keeps and the updated state.

        Args:
            checkpoints: Every committed checkpoint, sorted by step, steps unique.
            state: The state returned by the previous decision.
            now: The current clock reading.
        """

    def resume(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> RetentionState:
        """The state to use in a new process, given the state persisted by an earlier one.

        Call it once when a process opens an existing store, before the first ``select``.
        """
        return state

    def select(
        self,
        checkpoints: Sequence[CheckpointRecord],
        state: RetentionState,
        now: float,
        protected: frozenset[int] = frozenset(),
    ) -> RetentionDecision:
        """Decides what to keep and what to delete.

        Args:
            checkpoints: Every committed checkpoint, in any order.
            state: The state from the previous decision (``RetentionState.from_dict`` of LATEST's copy,
                ``RetentionState.start(now)`` for a new store).
            now: The current clock reading, in seconds.
            protected: Steps never to delete: the step LATEST names, pinned steps, steps being
                restored or written. Steps not among ``checkpoints`` are ignored.

        Returns:
            The decision; its ``delete`` never contains a protected or preserved step.

        Raises:
            ValueError: Two records share a step, or ``now`` is not a finite number.
        """
        _check_time("now", now)
        records = _sorted_unique(checkpoints)
        keep, new_state = self.retained(records, state, now)
        steps = frozenset(r.step for r in records)
        preserved = new_state.preserved & steps
        keep = (keep | preserved | protected) & steps
        new_state = RetentionState(
            last_preserved_time=new_state.last_preserved_time,
            preserved=preserved,
            clamped_times={s: t for s, t in new_state.clamped_times.items() if s in keep},
        )
        return RetentionDecision(keep=keep, delete=tuple(sorted(steps - keep)), state=new_state)


def _sorted_unique(checkpoints: Sequence[CheckpointRecord]) -> list[CheckpointRecord]:
    records = sorted(checkpoints, key=lambda r: r.step)
    for a, b in zip(records, records[1:], strict=False):
        if a.step == b.step:
            raise ValueError(f"two checkpoint records for step {a.step}")
    return records


@dataclass(frozen=True)
class KeepMax(RetentionPolicy):
    """Keep the ``n`` newest checkpoints, plus one every ``every_n_hours`` (``tf.train.CheckpointManager``).

    Attributes:
        n: How many of the newest non-preserved checkpoints to keep; None keeps all.
        every_n_hours: Preserve a checkpoint leaving the window if it was committed at least this many
            hours after the last preserved one; None disables the schedule.
    """

    n: int | None = 5
    every_n_hours: float | None = None

    def __post_init__(self) -> None:
        if self.n is not None:
            _check_positive_int("keep_max", self.n)
        if self.every_n_hours is not None:
            _check_positive_number("every_n_hours", self.every_n_hours)

    def _window(self, records: Sequence[CheckpointRecord], state: RetentionState) -> list[CheckpointRecord]:
        managed = [r for r in records if r.step not in state.preserved]
        return managed if self.n is None else managed[-self.n :]

    def resume(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> RetentionState:
        _check_time("now", now)
        if state.last_preserved_time is None:
            return state
        last = min(state.last_preserved_time, now)
        preserved = set(state.preserved)
        clamped = dict(state.clamped_times)
        for r in self._window(_sorted_unique(checkpoints), state):
            t = min(state.effective_time(r), now)
            if t <= last:
                preserved.add(r.step)
                clamped.pop(r.step, None)
            elif t != r.time:
                clamped[r.step] = t
        return RetentionState(last_preserved_time=last, preserved=frozenset(preserved), clamped_times=clamped)

    def retained(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> tuple[frozenset[int], RetentionState]:
        managed = [r for r in checkpoints if r.step not in state.preserved]
        last = state.last_preserved_time
        preserved = set(state.preserved)
        if last is None:
            if self.n is not None and self.every_n_hours is not None:
                # No recorded schedule: preserve what already left the window rather than risk
                # deleting a checkpoint an earlier process preserved.
                leaving = managed[: max(0, len(managed) - self.n)]
                preserved.update(r.step for r in leaving)
                managed = managed[len(leaving) :]
                if leaving:
                    last = max(state.effective_time(r) for r in leaving)
            if last is None and checkpoints:
                last = min(state.effective_time(r) for r in checkpoints) - 1.0
        if self.n is None:
            keep = frozenset(r.step for r in managed)
        else:
            leaving, window = managed[: max(0, len(managed) - self.n)], managed[-self.n :]
            for r in leaving:
                t = state.effective_time(r)
                if (
                    self.every_n_hours is not None
                    and last is not None
                    and t - self.every_n_hours * 3600.0 >= last
                ):
                    preserved.add(r.step)
                    last = t
            keep = frozenset(r.step for r in window)
        new_state = RetentionState(
            last_preserved_time=last, preserved=frozenset(preserved), clamped_times=state.clamped_times
        )
        return keep | frozenset(preserved), new_state


@dataclass(frozen=True)
class KeepBest(RetentionPolicy):
    """Keep the ``n`` best checkpoints by a numeric metric in their metadata.

    Checkpoints without a usable metric (missing, non-numeric, boolean, NaN) are never kept by this
    rule. Ties prefer the newer step.

    Attributes:
        n: How many to keep.
        metric: Key of the metric in the checkpoint metadata.
        mode: ``"min"`` when lower is better (a loss), ``"max"`` when higher is better (an accuracy).
    """

    n: int
    metric: str
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        _check_positive_int("n", self.n)
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric must be a non-empty string, got {self.metric!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")

    def retained(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> tuple[frozenset[int], RetentionState]:
        sign = 1.0 if self.mode == "min" else -1.0
        scored = []
        for r in checkpoints:
            value = r.metadata.get(self.metric)
            if _is_number(value) and not math.isnan(value):
                scored.append((sign * float(value), -r.step))
        scored.sort()
        return frozenset(-neg_step for _, neg_step in scored[: self.n]), state


@dataclass(frozen=True)
class MaxAge(RetentionPolicy):
    """Keep checkpoints committed at most ``seconds`` ago; older ones only if another rule keeps them.

    Alone it is a maximum age; ``any_of(KeepMax(3), MaxAge(7 * 86400))`` keeps a week of checkpoints
    but never fewer than the 3 newest.
    """

    seconds: float

    def __post_init__(self) -> None:
        _check_positive_number("seconds", self.seconds)

    def retained(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> tuple[frozenset[int], RetentionState]:
        return frozenset(r.step for r in checkpoints if now - r.time <= self.seconds), state


@dataclass(frozen=True)
class KeepSteps(RetentionPolicy):
    """Keep the listed steps (a configured pin list; the store's own pins go in ``protected``)."""

    steps: frozenset[int]

    def __init__(self, steps: Iterable[int]):
        values = frozenset(steps)
        for s in values:
            _check_step("KeepSteps step", s)
        object.__setattr__(self, "steps", values)

    def retained(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> tuple[frozenset[int], RetentionState]:
        return frozenset(r.step for r in checkpoints if r.step in self.steps), state


@dataclass(frozen=True)
class KeepEveryNSteps(RetentionPolicy):
    """Keep checkpoints whose step is a multiple of ``n``."""

    n: int

    def __post_init__(self) -> None:
        _check_positive_int("n", self.n)

    def retained(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> tuple[frozenset[int], RetentionState]:
        return frozenset(r.step for r in checkpoints if r.step % self.n == 0), state


@dataclass(frozen=True)
class AnyRetention(RetentionPolicy):
    """Keep what any member keeps. At most one member may be a ``KeepMax`` with ``every_n_hours``."""

    policies: tuple[RetentionPolicy, ...]

    def __post_init__(self) -> None:
        scheduled = [p for p in self.policies if isinstance(p, KeepMax) and p.every_n_hours is not None]
        if len(scheduled) > 1:
            raise ValueError("at most one KeepMax with every_n_hours may be combined: they share one state")

    def resume(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> RetentionState:
        for p in self.policies:
            state = p.resume(checkpoints, state, now)
        return state

    def retained(
        self, checkpoints: Sequence[CheckpointRecord], state: RetentionState, now: float
    ) -> tuple[frozenset[int], RetentionState]:
        keep: frozenset[int] = frozenset()
        for p in self.policies:
            kept, state = p.retained(checkpoints, state, now)
            keep |= kept
        return keep, state


def any_of(*policies: Any) -> Any:
    """Combines save policies into an ``AnySave`` or retention policies into an ``AnyRetention``.

    Nested combinations are flattened. ``any_of()`` is a save policy that never saves.

    Raises:
        TypeError: The arguments mix save and retention policies, or are neither.
    """
    flat: list[Any] = []
    for p in policies:
        flat.extend(p.policies if isinstance(p, (AnySave, AnyRetention)) else (p,))
    if all(isinstance(p, RetentionPolicy) for p in flat) and flat:
        return AnyRetention(tuple(flat))
    if all(isinstance(p, SavePolicy) and not isinstance(p, RetentionPolicy) for p in flat):
        return AnySave(tuple(flat))
    raise TypeError("any_of() takes only save policies or only retention policies")


# --------------------------------------------------------------------------------------------------
# TF RunConfig vocabulary


class _Default(enum.Enum):
    TOKEN = "default"


_DEFAULT = _Default.TOKEN


def from_run_config(
    *,
    save_checkpoints_secs: float | None | _Default = _DEFAULT,
    save_checkpoints_steps: int | None | _Default = _DEFAULT,
    keep_checkpoint_max: int | None = 5,
    keep_checkpoint_every_n_hours: float | None = 10000,
) -> tuple[SavePolicy, RetentionPolicy]:
    """The (save, retention) policies of a TF Estimator ``RunConfig`` with these arguments.

    As in ``RunConfig``: with neither save argument, checkpoints are saved every 600 seconds; setting
    both is an error; a save argument of None or 0 (with the other unset) turns saving off -- Estimator
    then installs no saver at all, so there is no save at begin or end either. Otherwise a checkpoint is
    saved at session start, on the timer, and at the end. ``keep_checkpoint_max`` of None or 0 keeps
    every checkpoint. ``keep_checkpoint_every_n_hours`` follows ``tf.train.CheckpointManager`` (see
    the module docstring); its default of 10000 hours is in effect off.

    Raises:
        ValueError: Both save arguments are set, or an argument is negative or of the wrong type.
    """
    secs_given = save_checkpoints_secs is not _DEFAULT
    steps_given = save_checkpoints_steps is not _DEFAULT
    secs = save_checkpoints_secs if secs_given else (None if steps_given else 600)
    steps = save_checkpoints_steps if steps_given else None
    if secs is not None and steps is not None:
        raise ValueError("save_checkpoints_steps and save_checkpoints_secs cannot be both set")
    if secs is not None and (not _is_number(secs) or not math.isfinite(secs) or secs < 0):  # type: ignore[arg-type,operator]
        raise ValueError(f"save_checkpoints_secs must be >= 0, got {secs!r}")
    if steps is not None and (not _is_int(steps) or steps < 0):  # type: ignore[operator]
        raise ValueError(f"save_checkpoints_steps must be an int >= 0, got {steps!r}")
    if keep_checkpoint_max is not None and (not _is_int(keep_checkpoint_max) or keep_checkpoint_max < 0):
        raise ValueError(f"keep_checkpoint_max must be an int >= 0, got {keep_checkpoint_max!r}")
    if keep_checkpoint_every_n_hours is not None:
        _check_positive_number("keep_checkpoint_every_n_hours", keep_checkpoint_every_n_hours)

    save: SavePolicy
    if secs:
        save = AnySave((AtBegin(), EveryNSeconds(float(secs)), AtEnd()))
    elif steps:
        save = AnySave((AtBegin(), EveryNSteps(steps), AtEnd()))
    else:
        save = AnySave(())
    retention = KeepMax(keep_checkpoint_max or None, every_n_hours=keep_checkpoint_every_n_hours)
    return save, retention
