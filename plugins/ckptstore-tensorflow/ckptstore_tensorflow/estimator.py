"""Bridge from a TF Estimator ``RunConfig`` to a CheckpointStore, its policies and hooks.

An Estimator script changes one line — ``tf.estimator.DNNClassifier(...)`` becomes
``ckptstore_tensorflow.estimator(tf.estimator.DNNClassifier, ...)`` — and its ``model_dir`` may then be
any ckptstore URL (local path, ``s3://``, ``gs://``, ``memory://``) while ``RunConfig`` keeps meaning what
the TF guide says: ``save_checkpoints_secs`` / ``save_checkpoints_steps`` (plus saves at the start and
end of every ``train()``), ``keep_checkpoint_max`` and ``keep_checkpoint_every_n_hours`` (retention),
``model_dir=None`` (a fresh temporary directory, logged). ``train``, ``evaluate`` and ``predict`` restore
the store's latest checkpoint, after checking it against the model.

Why a wrapper and not only hooks: Estimator offers no way to install default hooks, and each ``train()``
needs a fresh saver hook (Estimator appends ``saving_listeners`` to the adopted hook's list, so a reused
hook would accumulate them). Estimator itself still needs a local directory for its event files and
graph; when the store is remote that directory is a temporary one, reported in the log.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ckptstore import CheckpointStore
from ckptstore.policies import RetentionPolicy, SavePolicy
from ckptstore.policies import from_run_config as _policies_from_run_config
from ckptstore.storage.registry import split_scheme
from ckptstore_tensorflow.session import StoreRestoreHook, StoreSaverHook

log = logging.getLogger(__name__)

# RunConfig's defaults, for configs given as plain objects (TF >= 2.16 has no tf.estimator.RunConfig).
_RUN_CONFIG_DEFAULTS = {
    "save_checkpoints_secs": 600,
    "save_checkpoints_steps": None,
    "keep_checkpoint_max": 5,
    "keep_checkpoint_every_n_hours": 10000,
}


@dataclass(frozen=True)
class StoreCheckpointing:
    """A store with the save and retention policies a RunConfig asks for, and hooks that apply them.

    Attributes:
        store: where checkpoints go.
        save_policy: when the saver hook saves.
        retention: which checkpoints the store keeps.
        local_dir: the local directory TF may write its event files and graph to (the store's own
            directory when it is local, else a temporary one).
    """

    store: CheckpointStore
    save_policy: SavePolicy
    retention: RetentionPolicy
    local_dir: str

    def saver_hook(self, listeners: Iterable[Any] | None = None, **kwargs: Any) -> StoreSaverHook:
        """A fresh saver hook (restores at session creation, then saves on the policy); one per ``train()``."""
        return StoreSaverHook(self.store, self.save_policy, listeners=listeners, **kwargs)

    def restore_hook(self, **kwargs: Any) -> StoreRestoreHook:
        """A hook that restores the latest checkpoint into an evaluation or prediction graph."""
        return StoreRestoreHook(self.store, **kwargs)


def from_run_config(
    config: Any = None,
    *,
    model_dir: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> StoreCheckpointing:
    """Store, policies and hook factory matching a ``RunConfig`` (or any object with its attribute names).

    Args:
        config: a ``tf.estimator.RunConfig``; None means RunConfig's defaults.
        model_dir: overrides ``config.model_dir``; None in both means a fresh temporary directory.
        storage_options: passed to the store's backend (endpoint, credentials).
    """
    settings = {name: getattr(config, name, default) for name, default in _RUN_CONFIG_DEFAULTS.items()}
    save_policy, retention = _policies_from_run_config(**settings)
    if model_dir is None:
        model_dir = getattr(config, "model_dir", None)
    store = CheckpointStore(model_dir, storage_options=storage_options, retention=retention)
    return StoreCheckpointing(store, save_policy, retention, _local_dir_for(store))


def _local_dir_for(store: CheckpointStore) -> str:
    scheme, _ = split_scheme(store.model_dir)
    if scheme == "file" and "://" not in store.model_dir:
        return store.model_dir
    local = tempfile.mkdtemp(prefix="ckptstore-tf-events-")
    log.warning("checkpoints go to %s; TensorFlow's event files go to %s", store.model_dir, local)
    return local


class StoreEstimator:
    """An Estimator whose checkpoints live in a CheckpointStore; every other attribute is the Estimator's.

    ``train`` installs a fresh :class:`StoreSaverHook` (which Estimator adopts as its only saver, with
    ``saving_listeners`` attached), and ``evaluate`` / ``predict`` a :class:`StoreRestoreHook`; all three
    restore the store's latest checkpoint after checking every variable against it.
    """

    def __init__(self, estimator: Any, checkpointing: StoreCheckpointing) -> None:
        self.estimator = estimator
        self.checkpointing = checkpointing

    @property
    def store(self) -> CheckpointStore:
        return self.checkpointing.store

    @property
    def model_dir(self) -> str:
        """Where the checkpoints are (the store's path or URL)."""
        return self.checkpointing.store.model_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(self.estimator, name)

    def train(
        self,
        input_fn: Any,
        hooks: Iterable[Any] | None = None,
        steps: int | None = None,
        max_steps: int | None = None,
        saving_listeners: Iterable[Any] | None = None,
    ) -> StoreEstimator:
        """``Estimator.train`` with the store as its checkpoint: resumes from the latest step."""
        if max_steps is not None:
            latest = self.store.latest()
            # Estimator makes this check against TF checkpoints in model_dir, which the store does not write.
            if latest is not None and latest.step >= max_steps:
                log.info("skipping training: step %d already reached max_steps=%d", latest.step, max_steps)
                return self
        # The saver hook goes first: hooks after it (StopAtStepHook counts `steps` from the global step
        # it reads at session creation) must see the restored step.
        all_hooks = [self.checkpointing.saver_hook(), *(hooks or ())]
        self.estimator.train(
            input_fn, hooks=all_hooks, steps=steps, max_steps=max_steps, saving_listeners=saving_listeners
        )
        return self

    def evaluate(
        self, input_fn: Any, steps: int | None = None, hooks: Iterable[Any] | None = None, **kwargs: Any
    ) -> Any:
        """``Estimator.evaluate`` on the weights of the store's latest checkpoint."""
        all_hooks = [self.checkpointing.restore_hook(), *(hooks or ())]
        return self.estimator.evaluate(input_fn, steps=steps, hooks=all_hooks, **kwargs)

    def predict(self, input_fn: Any, hooks: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        """``Estimator.predict`` on the weights of the store's latest checkpoint."""
        all_hooks = [self.checkpointing.restore_hook(), *(hooks or ())]
        return self.estimator.predict(input_fn, hooks=all_hooks, **kwargs)


def estimator(
    estimator_cls: Any,
    *args: Any,
    model_dir: str | os.PathLike[str] | None = None,
    config: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> StoreEstimator:
    """Builds ``estimator_cls(*args, **kwargs)`` with its checkpoints in a CheckpointStore.

    ``model_dir`` and ``config`` mean what they mean to Estimator (``model_dir`` may also be a URL);
    the Estimator gets ``config`` with ``model_dir`` replaced by a local directory for its event files.
    """
    import tensorflow as tf

    checkpointing = from_run_config(config, model_dir=model_dir, storage_options=storage_options)
    base = config if config is not None else tf.estimator.RunConfig()
    tf_config = base.replace(model_dir=checkpointing.local_dir)
    return StoreEstimator(estimator_cls(*args, config=tf_config, **kwargs), checkpointing)
