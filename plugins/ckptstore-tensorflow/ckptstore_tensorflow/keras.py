"""A Keras 3 callback that checkpoints a model (and its optimizer) to a CheckpointStore and resumes from it.

Tensors are named by their Keras ``.path`` (``dnn/hiddenlayer_0/kernel``; the optimizer's under
``optimizer/``, e.g. ``optimizer/iteration``), so a model rebuilt with the same layer names in another process finds its
weights again. Layer names Keras generates (``dense_3``) depend on how many layers the process built
before; name the layers of a model you mean to resume.

The step is ``optimizer.iterations``, which counts batches across epochs and is itself saved, so a
resumed run continues the count (Keras' own batch index restarts at every epoch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from ckptstore.hooks import CheckpointSaverHook, Clock
from ckptstore.policies import AtBegin, AtEnd, SavePolicy, any_of, from_run_config
from ckptstore_tensorflow.session import TensorSpec

log = logging.getLogger(__name__)

if int(keras.__version__.split(".")[0]) < 3:  # pragma: no cover - depends on the installed Keras
    raise ImportError(f"ckptstore_tensorflow.keras needs Keras 3, found {keras.__version__}")


class StoreCallback(keras.callbacks.Callback):
    """Saves the model's and optimizer's variables to a store while ``fit`` runs; restores at its start.

    Args:
        store: the ``ckptstore.CheckpointStore``; its retention policy decides what is kept.
        save_freq: ``"epoch"`` (at the end of each epoch) or a number of batches; ignored with ``policy``.
            Either way a checkpoint is also saved at the start (when there is nothing to resume) and at
            the end of training, like Estimator.
        policy: a ``ckptstore.policies`` save policy, evaluated after every batch (e.g. every N seconds).
        restore: restore the store's latest checkpoint in ``on_train_begin``, after checking every
            variable's name, shape and dtype against it (``CheckpointMismatch`` lists every difference).
        include_optimizer: save and restore the optimizer's variables too.
        listeners: ``ckptstore.hooks.SaveListener`` objects; ``after_save`` returning True stops ``fit``.
        metadata: optional ``step -> mapping`` stored with each checkpoint; the default records the
            latest logs (loss, metrics) Keras reported.
    """

    def __init__(
        self,
        store: Any,
        save_freq: str | int = "epoch",
        *,
        policy: SavePolicy | None = None,
        restore: bool = True,
        include_optimizer: bool = True,
        listeners: Iterable[Any] = (),
        metadata: Any = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__()
        if policy is None:
            if save_freq == "epoch":
                policy = any_of(AtBegin(), AtEnd())
            elif isinstance(save_freq, int) and not isinstance(save_freq, bool) and save_freq > 0:
                policy = from_run_config(save_checkpoints_steps=save_freq)[0]
            else:
                raise ValueError(
                    f"save_freq must be 'epoch' or a positive number of batches, got {save_freq!r}"
                )
        self.store = store
        self.save_freq = save_freq
        self._restore = restore
        self._include_optimizer = include_optimizer
        self._logs: dict[str, float] = {}
        self._hook = CheckpointSaverHook(
            store,
            policy,
            get_state=self._read_state,
            listeners=list(listeners),
            metadata=metadata if metadata is not None else (lambda step: dict(self._logs)),
            clock=clock,
        )
        self.restored_step: int | None = None

    # -- state -----------------------------------------------------------------------------------

    def _variables(self) -> dict[str, Any]:
        named = [(v.path, v) for v in self.model.weights]
        optimizer = self.model.optimizer
        if self._include_optimizer and optimizer is not None:
            if not optimizer.built:
                # Keras builds the optimizer lazily on the first batch; its slots must exist now so they
                # can be restored (and checked) before training starts.
                optimizer.build(self.model.trainable_variables)
            # An optimizer's own name is generated per process ("adagrad", then "adagrad_1"), so its
            # variables are stored under a fixed "optimizer/" prefix instead.
            named += [("optimizer/" + v.path.split("/", 1)[-1], v) for v in optimizer.variables]
        out: dict[str, Any] = {}
        for name, v in named:
            if name in out:
                if out[name] is v:
                    continue
                raise ValueError(f"two variables share the name {name!r}; give the layers distinct names")
            out[name] = v
        return out

    def _read_state(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(v.numpy()) for name, v in self._variables().items()}

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    # -- Keras callbacks -------------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        variables = self._variables()
        self.restored_step = None
        if self._restore:
            latest = self.store.latest()
            if latest is not None:
                template = {
                    name: TensorSpec(tuple(v.shape), np.dtype(keras.backend.standardize_dtype(v.dtype)))
                    for name, v in variables.items()
                }
                state = self.store.restore(step=latest.step, like=template)
                for name, value in state.items():
                    variables[name].assign(value)
                self.restored_step = latest.step
                log.info(
                    "restored %d variables from step %d of %s", len(state), latest.step, self.store.model_dir
                )
        step = self._step()
        self._hook.begin()
        self._stop_if(self._hook.after_create_session(step, self, restored=self.restored_step == step))

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._remember(logs)
        self._stop_if(self._hook.after_run(self._step(), self))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._remember(logs)
        step = self._step()
        if self.save_freq == "epoch" and step != self._hook.last_step:
            self._stop_if(self._hook.save(step, self))

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._remember(logs)
        self._hook.end(self._step(), self)

    def _remember(self, logs: Mapping[str, Any] | None) -> None:
        for key, value in (logs or {}).items():
            try:
                self._logs[key] = float(value)
            except (TypeError, ValueError):
                continue

    def _stop_if(self, stop: bool) -> None:
        if stop:
            self.model.stop_training = True

    @property
    def last_saved(self) -> Any:
        """``CheckpointInfo`` of the last checkpoint this callback wrote."""
        return self._hook.last_saved
