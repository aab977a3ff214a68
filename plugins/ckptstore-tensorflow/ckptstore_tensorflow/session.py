"""TF1-style session hooks that save every global variable to a CheckpointStore and restore from it.

:class:`StoreSaverHook` is a ``tf.compat.v1.train.CheckpointSaverHook`` on purpose: Estimator looks for
an instance of that class among the hooks passed to ``train()``, adopts it as its only saver (it then
writes no TF checkpoint of its own) and appends the ``saving_listeners`` given to ``train()`` to its
``_listeners`` list. Everything else — when to save, listeners, skipping a step that is already saved —
is the framework-agnostic :class:`ckptstore.hooks.CheckpointSaverHook`; this module only translates TF's
graph/session world into state mappings.

Two TF constraints shape the code: ops can only be added in ``begin()`` (the graph is finalized before
``after_create_session``), so the restore placeholders and assign ops are built there even when there may
be nothing to restore; and the global step fetched in ``before_run`` is stale (read before the train op
increments it, and inconsistently across TF versions), so a save decision re-reads it with its own
``session.run``, as TF's CheckpointSaverHook does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from ckptstore.errors import CheckpointMismatch, NotFound
from ckptstore.hooks import CheckpointSaverHook as _CoreSaverHook
from ckptstore.manager import compare
from ckptstore.policies import AnySave, EveryNSeconds, EveryNSteps, SavePolicy, from_run_config

log = logging.getLogger(__name__)

_v1 = tf.compat.v1


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one variable: the template ``CheckpointStore.restore(like=...)`` checks against."""

    shape: tuple[int, ...]
    dtype: np.dtype


def variable_name(variable: Any) -> str:
    """The checkpoint name of a graph variable: its op name (``dnn/hiddenlayer_0/kernel``), as TF's Saver uses."""
    return variable.op.name


class _GraphState:
    """Reads and assigns a fixed set of graph variables through one session call each.

    Built inside ``begin()``; the placeholders and the grouped assign op are created there because the
    graph is finalized afterwards.
    """

    def __init__(self, variables: Sequence[Any]) -> None:
        self.variables: dict[str, Any] = {}
        for variable in variables:
            name = variable_name(variable)
            if name in self.variables:
                raise ValueError(f"two graph variables share the checkpoint name {name!r}")
            self.variables[name] = variable
        self.template: dict[str, TensorSpec] = {}
        self._placeholders: dict[str, Any] = {}
        self._assigns: dict[str, Any] = {}
        with _v1.name_scope("ckptstore_restore"):
            for name, variable in self.variables.items():
                shape = variable.shape
                if not shape.is_fully_defined():
                    raise ValueError(f"variable {name!r} has a partially unknown shape {shape}")
                dtype = variable.dtype.base_dtype
                self.template[name] = TensorSpec(tuple(shape.as_list()), np.dtype(dtype.as_numpy_dtype))
                placeholder = _v1.placeholder(dtype, shape=shape)
                self._placeholders[name] = placeholder
                self._assigns[name] = variable.assign(placeholder, read_value=False)

    def read(self, session: Any) -> dict[str, np.ndarray]:
        """Every variable's current value, in one ``session.run``."""
        values = session.run(self.variables)
        return {name: np.asarray(value) for name, value in values.items()}

    def assign(self, session: Any, state: Mapping[str, Any]) -> None:
        """Assigns the given values (a subset of the variables is fine) in one ``session.run``."""
        names = [name for name in state if name in self._assigns]
        session.run(
            [self._assigns[name] for name in names],
            feed_dict={self._placeholders[name]: state[name] for name in names},
        )


def _restore_into(
    store: Any,
    graph_state: _GraphState,
    session: Any,
    *,
    allow_unexpected: bool,
    strict: bool,
) -> int | None:
    """Restores the store's latest checkpoint into the graph; returns its step, or None if the store is empty.

    Raises ``CheckpointMismatch`` listing every difference before anything is assigned.
    """
    latest = store.latest()
    if latest is None:
        log.info("no checkpoint in %s: variables keep their initial values", store.model_dir)
        return None
    template = graph_state.template
    names = None
    if allow_unexpected:
        # Evaluation and prediction graphs hold no optimizer slots. Compare the whole checkpoint here so
        # a variable the checkpoint lacks is still reported as missing (restore(names=...) would only
        # say NotFound for the first one), then read just the graph's names.
        manifest = store.manifest(latest.step)
        where = f"{store.model_dir}@{manifest.step}"
        mismatches = [m for m in compare(manifest, template, None, where) if m.kind != "unexpected"]
        if mismatches and strict:
            raise CheckpointMismatch(where, mismatches)
        bad = {m.name for m in mismatches}
        names = [name for name in template if name not in bad]
    state = store.restore(step=latest.step, names=names, like=template, strict=strict)
    graph_state.assign(session, state)
    log.info("restored %d variables from step %d of %s", len(state), latest.step, store.model_dir)
    return latest.step


def _global_step_tensor() -> Any:
    global_step = _v1.train.get_global_step()
    if global_step is None:
        raise RuntimeError(
            "the graph has no global step; create one with tf.compat.v1.train.get_or_create_global_step()"
        )
    return global_step


class StoreSaverHook(_v1.train.CheckpointSaverHook):
    """Saves every global variable to a ``CheckpointStore``; Estimator adopts it as its only saver.

    Saves at session creation, whenever the save policy fires, and at the end (as Estimator's own saver
    does), calling the listeners around each save; a listener's ``after_save`` returning True stops
    training. With ``restore=True`` (the default) it first restores the store's latest checkpoint at
    session creation, after checking every variable's name, shape and dtype against it.

    Args:
        store: the ``ckptstore.CheckpointStore`` to save to and restore from.
        policy: when to save; ``save_secs`` / ``save_steps`` are shorthands for a ``SavePolicy``.
        listeners: ``tf.compat.v1.train.CheckpointSaverListener`` (or ``ckptstore.hooks.SaveListener``)
            objects; their ``session`` argument is the ``tf.Session``.
        restore: restore the latest checkpoint at session creation.
        allow_unexpected: tolerate checkpoint tensors the graph does not have (they are not loaded).
        strict: passed to ``CheckpointStore.restore``; False restores the matching subset.
        var_list: the variables to save and restore; defaults to every global variable.
    """

    def __init__(
        self,
        store: Any,
        policy: SavePolicy | None = None,
        *,
        save_secs: float | None = None,
        save_steps: int | None = None,
        listeners: Iterable[Any] | None = None,
        restore: bool = True,
        allow_unexpected: bool = False,
        strict: bool = True,
        var_list: Sequence[Any] | None = None,
    ) -> None:
        if policy is None:
            policy = _policy_from_interval(save_secs, save_steps)
        elif save_secs is not None or save_steps is not None:
            raise ValueError("pass either a policy or save_secs/save_steps, not both")
        every_secs, every_steps = _interval_of(policy)
        # The parent's constructor insists on an interval; its timer and Saver are never used (every
        # decision is the core hook's), but Estimator and TPU code read attributes it sets.
        super().__init__(
            checkpoint_dir=str(store.model_dir),
            save_secs=None if every_steps else (every_secs or 600),
            save_steps=every_steps or None,
            listeners=None,
        )
        self.store = store
        self._graph_state: _GraphState | None = None
        self._session: Any = None
        self._core = _CoreSaverHook(
            store, policy, get_state=self._read_state, listeners=list(listeners or ())
        )
        # Estimator appends train()'s saving_listeners to this very list: share it with the core hook.
        self._listeners = self._core.listeners
        self._restore = restore
        self._allow_unexpected = allow_unexpected
        self._strict = strict
        self._var_list = var_list
        self.restored_step: int | None = None

    @property
    def policy(self) -> SavePolicy:
        return self._core.policy

    def _read_state(self) -> dict[str, np.ndarray]:
        assert self._graph_state is not None and self._session is not None
        return self._graph_state.read(self._session)

    def begin(self) -> None:
        self._global_step_tensor = _global_step_tensor()
        variables = self._var_list if self._var_list is not None else _v1.global_variables()
        self._graph_state = _GraphState(variables)
        self._core.begin()

    def after_create_session(self, session: Any, coord: Any) -> None:
        self._session = session
        assert self._graph_state is not None
        if self._restore:
            self.restored_step = _restore_into(
                self.store,
                self._graph_state,
                session,
                allow_unexpected=self._allow_unexpected,
                strict=self._strict,
            )
        step = int(session.run(self._global_step_tensor))
        # A stop asked for here takes effect at the first after_run: there is no run context yet.
        self._core.after_create_session(step, session, restored=self.restored_step == step)

    def before_run(self, run_context: Any) -> Any:
        return _v1.train.SessionRunArgs(self._global_step_tensor)

    def after_run(self, run_context: Any, run_values: Any) -> None:
        stale_step = int(run_values.results)
        # The fetched value predates this step's increment; only when a save could be due for the step
        # after it is the exact value worth a second session.run.
        if self._core.due(stale_step + 1):
            step = int(run_context.session.run(self._global_step_tensor))
            self._core.after_run(step, run_context.session)
        if self._core.stop_requested:
            run_context.request_stop()

    def end(self, session: Any) -> None:
        step = int(session.run(self._global_step_tensor))
        self._core.end(step, session)
        self._session = None

    @property
    def last_saved(self) -> Any:
        """``CheckpointInfo`` of the last checkpoint this hook wrote (None before the first)."""
        return self._core.last_saved


class StoreRestoreHook(_v1.train.SessionRunHook):
    """Restores the store's latest checkpoint at session creation; for ``evaluate`` and ``predict``.

    Estimator builds a fresh graph for evaluation and prediction and only restores TF checkpoints
    found in its model_dir; pass this hook in ``hooks=`` so the model sees the store's weights. The
    graph's variables are checked against the checkpoint (names, shapes, dtypes, every mismatch at
    once); checkpoint tensors the graph lacks (optimizer slots) are ignored by default.
    """

    def __init__(
        self,
        store: Any,
        *,
        allow_unexpected: bool = True,
        strict: bool = True,
        var_list: Sequence[Any] | None = None,
        required: bool = False,
    ) -> None:
        self.store = store
        self._allow_unexpected = allow_unexpected
        self._strict = strict
        self._var_list = var_list
        self._required = required
        self._graph_state: _GraphState | None = None
        self.restored_step: int | None = None

    def begin(self) -> None:
        variables = self._var_list if self._var_list is not None else _v1.global_variables()
        self._graph_state = _GraphState(variables)

    def after_create_session(self, session: Any, coord: Any) -> None:
        assert self._graph_state is not None
        self.restored_step = _restore_into(
            self.store,
            self._graph_state,
            session,
            allow_unexpected=self._allow_unexpected,
            strict=self._strict,
        )
        if self.restored_step is None and self._required:
            raise NotFound(f"no checkpoint in {self.store.model_dir} to restore")


def _policy_from_interval(save_secs: float | None, save_steps: int | None) -> SavePolicy:
    # CheckpointSaverHook's own arguments, with its schedule: at creation, on the timer, at the end.
    if save_secs is None and save_steps is None:
        return from_run_config()[0]
    if save_steps is None:
        return from_run_config(save_checkpoints_secs=save_secs)[0]
    return from_run_config(save_checkpoints_steps=save_steps)[0]


def _interval_of(policy: SavePolicy) -> tuple[float | None, int | None]:
    """The (seconds, steps) interval of a policy, for the parent class's bookkeeping only."""
    members = policy.policies if isinstance(policy, AnySave) else (policy,)
    secs = next((p.seconds for p in members if isinstance(p, EveryNSeconds)), None)
    steps = next((p.steps for p in members if isinstance(p, EveryNSteps)), None)
    return secs, steps
