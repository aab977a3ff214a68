"""Drive a CheckpointStore from a training loop: when to save, who to tell, where to resume.

The lifecycle is TensorFlow Estimator's, without TensorFlow: ``begin`` (before the loop),
``after_create_session`` (the state exists; a save at the start), ``before_run`` / ``after_run`` around
each step (a save whenever the save policy says so), ``end`` (a final save). Listeners get Estimator's
``CheckpointSaverListener`` callbacks with the same signatures — ``begin()``, ``before_save(session, step)``,
``after_save(session, step)`` (returning True asks the trainer to stop) and ``end(session, step)`` — so a
TensorFlow listener works unchanged and an adapter (``plugins/ckptstore-tensorflow``, a Keras callback, a
plain loop) only translates its trainer's events into these calls. The hook holds no storage logic: what
to keep is the store's retention policy, how bytes land is the store's commit protocol.

Why the step is always passed in rather than counted here: trainers own the step (TF's global step,
Keras' ``optimizer.iterations``), it survives restarts through the checkpoint, and a hook that counted
on its own would drift from it after a resume or a skipped step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ckptstore.manager import flatten_template, in_place_problem
from ckptstore.policies import SaveContext, SavePolicy, from_run_config

log = logging.getLogger(__name__)

State = Mapping[str, Any]
"""Name -> array (or Python scalar), as ``CheckpointStore.save`` takes it."""


class SaveListener:
    """Callbacks around the saves a :class:`CheckpointSaverHook` makes; every method is optional.

    The signatures are TensorFlow's ``CheckpointSaverListener``'s, so either kind of object may be
    passed as a listener. ``session`` is whatever the trainer passed to the hook: a ``tf.Session``
    under TensorFlow, the :class:`CheckpointLoop` in a plain loop, or None.
    """

    def begin(self) -> None:
        """Called once before the first save, while the trainer can still set things up."""

    def before_save(self, session: Any, step: int) -> None:
        """Called right before the checkpoint of ``step`` is written."""

    def after_save(self, session: Any, step: int) -> bool | None:
        """Called once the checkpoint of ``step`` is committed; return True to ask the trainer to stop."""
        return None

    def end(self, session: Any, step: int) -> None:
        """Called once after the final save, with the last step."""


class Clock(Protocol):
    def __call__(self) -> float: ...


class StateStore(Protocol):
    """The part of ``CheckpointStore`` the hooks use (kept narrow so tests can count calls)."""

    def save(self, step: int, state: State, metadata: Mapping[str, Any] | None = None) -> Any: ...

    def latest(self) -> Any: ...


class CheckpointSaverHook:
    """Saves a trainer's state to a store on Estimator's schedule and notifies listeners around each save.

    Args:
        store: the ``CheckpointStore`` to write to.
        policy: when to save (``ckptstore.policies``: every N seconds or steps, at begin, at end,
            combined with ``any_of``); defaults to Estimator's RunConfig default: at begin, every
            600 s, and at end.
        get_state: returns the state to save, called only when a save happens (reading device memory
            is the expensive part of a save, so it is never done speculatively).
        listeners: :class:`SaveListener` or TensorFlow ``CheckpointSaverListener`` objects. The list is
            kept as given (not copied) because Estimator appends its ``saving_listeners`` to the list
            of the saver hook it adopts.
        metadata: optional ``step -> mapping`` stored with each checkpoint (e.g. the last loss).
        clock: seconds as a float, monotonic; injectable so tests need not sleep.
    """

    def __init__(
        self,
        store: StateStore,
        policy: SavePolicy | None = None,
        *,
        get_state: Callable[[], State],
        listeners: list[Any] | None = None,
        metadata: Callable[[int], Mapping[str, Any]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self.policy: SavePolicy = policy if policy is not None else from_run_config()[0]
        self.get_state = get_state
        self.listeners: list[Any] = listeners if listeners is not None else []
        self._metadata = metadata
        self._clock = clock
        self._last_step: int | None = None  # step of the last save (or of the checkpoint we started from)
        self._last_time: float | None = None
        self._stored_step: int | None = None  # a step known to be committed with exactly this state
        self.last_saved: Any = None  # CheckpointInfo of the last checkpoint this hook wrote
        self.stop_requested = False

    # -- Estimator lifecycle -------------------------------------------------------------------------

    def begin(self) -> None:
        """Before the loop: resets the schedule and calls every listener's ``begin``."""
        self._last_step = None
        self._last_time = None
        self.stop_requested = False
        for listener in self.listeners:
            listener.begin()

    def after_create_session(self, step: int, session: Any = None, *, restored: bool = False) -> bool:
        """The state exists at ``step``: saves now if the policy saves at begin. Returns True to stop.

        Pass ``restored=True`` when the state was just restored from the store's checkpoint of ``step``:
        that checkpoint is then not written again (listeners are still called, as Estimator calls them
        at every resume).
        """
        now = self._clock()
        self._stored_step = step if restored else None
        # A session counts its intervals from its start (the restored step), as TF's timer does,
        # whether or not it saves there.
        self._last_step, self._last_time = step, now
        context = SaveContext(step, now, is_begin=True, last_saved_step=step, last_saved_time=now)
        if self.policy.should_save(context):
            return self._save(step, session, now)
        return False

    def before_run(self, step: int) -> bool:
        """Before the step that will end at ``step``: True if that step will end with a save.

        A trainer may use the answer to fetch its state from the device only when it is needed.
        """
        return self.due(step)

    def after_run(self, step: int, session: Any = None) -> bool:
        """After a step, with the step counter as it is now: saves when due. Returns True to stop."""
        now = self._clock()
        if self.due(step, now):
            return self._save(step, session, now)
        return self.stop_requested

    def end(self, step: int, session: Any = None) -> None:
        """After the loop: the final save if the policy asks for one, then listeners' ``end``."""
        now = self._clock()
        if self.policy.should_save(self._context(step, now, is_end=True)):
            self._save(step, session, now)
        for listener in self.listeners:
            listener.end(session, step)

    @property
    def last_step(self) -> int | None:
        """Step of the last save, or of the session start when nothing was saved since."""
        return self._last_step

    # -- decisions and the save itself ----------------------------------------------------------------

    def due(self, step: int, now: float | None = None) -> bool:
        """Whether the policy asks for a save at ``step`` (pure: changes nothing)."""
        return self.policy.should_save(self._context(step, self._clock() if now is None else now))

    def _context(self, step: int, now: float, *, is_end: bool = False) -> SaveContext:
        return SaveContext(
            int(step), now, is_end=is_end, last_saved_step=self._last_step, last_saved_time=self._last_time
        )

    def save(self, step: int, session: Any = None) -> bool:
        """Saves now, whatever the policy says, with listener callbacks. Returns True to stop."""
        return self._save(step, session, self._clock())

    def _save(self, step: int, session: Any, now: float) -> bool:
        for listener in self.listeners:
            listener.before_save(session, step)
        if step == self._stored_step:
            # This exact state is already committed (the trainer resumed from it, or this hook saved it):
            # the store refuses to commit a step twice, and the bytes would be identical anyway. Any other
            # collision with an existing step is a real conflict, and the store's error is left to surface.
            log.info("checkpoint of step %d already in %s; not written again", step, _where(self.store))
        else:
            metadata = dict(self._metadata(step)) if self._metadata is not None else None
            self.last_saved = self.store.save(step, self.get_state(), metadata=metadata)
            self._stored_step = step
            log.debug("saved checkpoint of step %d to %s", step, _where(self.store))
        self._last_step, self._last_time = step, now
        stop = False
        for listener in self.listeners:
            # Every listener hears about every save even if an earlier one already asked to stop.
            if listener.after_save(session, step):
                stop = True
        if stop:
            log.info("a saving listener asked to stop training after step %d", step)
            self.stop_requested = True
        return self.stop_requested


def _where(store: Any) -> str:
    return str(getattr(store, "model_dir", store))


class CheckpointLoop:
    """A :class:`CheckpointSaverHook` shaped for a plain Python training loop.

    Example::

        store = CheckpointStore("s3://bucket/run", keep_max=5)
        resumed = restore_or_initialize(store, init_params)
        params = resumed.state
        policy = any_of(AtBegin(), EveryNSteps(100), AtEnd())
        loop = CheckpointLoop(store, policy, get_state=lambda: params)
        with loop.run(resumed.step, restored=resumed.restored):
            for step in range(resumed.step + 1, 10_001):
                params = train_step(params)
                if loop.step_done(step):   # saves when due; True once a listener asked to stop
                    break

    ``session`` passed to listeners is the loop itself, so a listener can read ``loop.store`` or
    ``loop.hook.last_saved``.
    """

    def __init__(
        self,
        store: StateStore,
        policy: SavePolicy | None = None,
        *,
        get_state: Callable[[], State],
        listeners: Iterable[Any] = (),
        metadata: Callable[[int], Mapping[str, Any]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self.hook = CheckpointSaverHook(
            store, policy, get_state=get_state, listeners=list(listeners), metadata=metadata, clock=clock
        )
        self.step: int | None = None

    def start(self, step: int, *, restored: bool = False) -> bool:
        """Begins the loop at ``step`` (the step the state is at): listeners' begin, then the save at begin.

        ``restored=True`` says the state is the store's checkpoint of ``step`` (see
        :func:`restore_or_initialize`), so the save at begin does not write it again.
        """
        self.step = step
        self.hook.begin()
        return self.hook.after_create_session(step, self, restored=restored)

    def step_done(self, step: int) -> bool:
        """Reports that the state is now at ``step``; saves if due. Returns True to stop training."""
        self.step = step
        return self.hook.after_run(step, self)

    def finish(self) -> None:
        """Ends the loop: the final save (unless already saved at this step) and listeners' end."""
        if self.step is None:
            raise RuntimeError("CheckpointLoop.finish() called before start()")
        self.hook.end(self.step, self)

    def run(self, step: int, *, restored: bool = False) -> _LoopContext:
        """Context manager: ``start(step, restored=...)`` on entry, ``finish()`` on a normal exit.

        On an exception no final save is made: the state may be half-updated, and the last periodic
        checkpoint is the one to resume from.
        """
        return _LoopContext(self, step, restored)

    @property
    def should_stop(self) -> bool:
        """True once a listener's ``after_save`` asked to stop."""
        return self.hook.stop_requested


@dataclass
class _LoopContext:
    loop: CheckpointLoop
    step: int
    restored: bool

    def __enter__(self) -> CheckpointLoop:
        self.loop.start(self.step, restored=self.restored)
        return self.loop

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.loop.finish()


@dataclass(frozen=True)
class Resumed:
    """What :func:`restore_or_initialize` found: the state to train from and the step it is at."""

    step: int
    state: dict[str, Any]
    restored: bool  # False: freshly initialized (the store had no checkpoint)
    info: Any = field(default=None)  # CheckpointInfo of the restored checkpoint


def restore_or_initialize(
    store: Any,
    initialize: Callable[[], State],
    *,
    like: Mapping[str, Any] | None = None,
    names: Sequence[str] | None = None,
    strict: bool = True,
    initial_step: int = 0,
    in_place: bool = True,
) -> Resumed:
    """Resumes from the store's latest checkpoint, or initializes when there is none.

    Args:
        store: the ``CheckpointStore`` to resume from.
        initialize: builds a fresh state (name -> array); called when the store is empty, and also
            when ``like`` is not given, to serve as the template the checkpoint is checked against —
            and then, when all its arrays are writable C-contiguous numpy arrays of the stored byte
            order, the checkpoint is read straight into them (``restore(into=...)``): no second copy of
            the model in memory. ``in_place=False`` reads into fresh arrays instead (for an
            ``initialize`` that returns arrays shared with something else).
        like: name -> anything with ``.shape`` and ``.dtype``; the checkpoint must match it (every
            missing, unexpected, reshaped or retyped tensor is reported at once in ``CheckpointMismatch``).
            Pass it to avoid materializing a fresh state just for the check.
        names: restore only these tensors.
        strict: passed to ``CheckpointStore.restore``.
        initial_step: the step of a freshly initialized state.

    Raises:
        CheckpointMismatch: the latest checkpoint does not fit the model; nothing is overwritten.
    """
    latest = store.latest()
    if latest is None:
        log.info("no checkpoint in %s: initializing at step %d", _where(store), initial_step)
        return Resumed(step=initial_step, state=dict(initialize()), restored=False)
    if like is None:
        template = initialize()
        if in_place and _writable_in_place(template):
            state = store.restore(step=latest.step, names=names, into=template, strict=strict)
        else:
            state = store.restore(step=latest.step, names=names, like=template, strict=strict)
    else:
        state = store.restore(step=latest.step, names=names, like=like, strict=strict)
    log.info("restored step %d from %s", latest.step, _where(store))
    return Resumed(step=latest.step, state=dict(state), restored=True, info=latest)


def _writable_in_place(state: Mapping[str, Any]) -> bool:
    """Whether every array of a (nested) state can be restored into as it is (byte order included)."""
    arrays, _ = flatten_template(state)
    return all(in_place_problem(a) is None and a.dtype == a.dtype.newbyteorder("<") for a in arrays.values())
