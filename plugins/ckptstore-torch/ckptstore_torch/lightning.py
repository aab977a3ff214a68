"""A PyTorch Lightning ``CheckpointIO`` that keeps Lightning's checkpoints in a ckptstore model_dir.

``Trainer(plugins=[CkptStoreCheckpointIO("s3://bucket/run")])``: every checkpoint Lightning saves
(``epoch=0-step=100.ckpt``, ``last.ckpt`` ...) becomes a ckptstore checkpoint under
``<model_dir>/<file name>/``, at step ``global_step``. Lightning still decides when to save and which
files to keep (``ModelCheckpoint``); it hands this plugin paths, and only their last component is used
as the checkpoint's name, so the directory ``ModelCheckpoint`` computes does not matter. Resume with
``trainer.fit(model, ckpt_path=".../epoch=0-step=100.ckpt")`` (any path ending in that name).

Why one store per file name: Lightning may save the same step twice under two names (a top-k file and
``last.ckpt``) and deletes them independently, which one step-indexed store could not express. A save
replaces what its name held, as it would replace a file: ``last.ckpt`` is saved again and again, and
keeps only its newest checkpoint, not every one ever saved under it.

Under DDP (and the other multi-process strategies), Lightning saves and deletes from global rank 0 and
loads on every rank; each rank builds its own plugin from the same arguments.

The checkpoint dict (state_dict, optimizer states, loops, callbacks, hyper-parameters) is flattened with
``ckptstore_torch.tensors.flatten``: tensors as views of their memory, everything else as plain data.
A value that is neither (an arbitrary object in ``hyper_parameters``) raises ``TypeError`` instead of
being pickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ckptstore import CheckpointStore
from ckptstore.errors import NotFound
from ckptstore.format import LATEST_KEY, MANIFEST_FILE
from ckptstore.policies import KeepMax
from ckptstore_torch.tensors import flatten, unflatten

try:  # the `lightning` package (lightning.fabric) or the standalone `pytorch-lightning` (lightning_fabric)
    from lightning_fabric.plugins import CheckpointIO as _FabricCheckpointIO
except ImportError:  # pragma: no cover - depends on which Lightning distribution is installed
    from lightning.fabric.plugins import CheckpointIO as _FabricCheckpointIO

ROOT = "checkpoint"  # the name the checkpoint dict is flattened under


class CkptStoreCheckpointIO(_FabricCheckpointIO):
    """Lightning ``CheckpointIO`` backed by ckptstore.

    Args:
        model_dir: a local path or backend URL (``s3://``, ``gs://``, ...).
        storage_options: passed to the backend (credentials, endpoint ...).
        **store_kwargs: other ``CheckpointStore`` arguments (``workers``, ``max_shard_size`` ...). Not a
            retention policy: Lightning's ``ModelCheckpoint`` decides which files to keep, and each file
            name holds the one checkpoint last saved under it.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None,
                 **store_kwargs: Any):
        super().__init__()
        retention = sorted({"retention", "keep_max", "keep_every_n_hours"} & set(store_kwargs))
        if retention:
            raise ValueError(f"{', '.join(retention)}: ModelCheckpoint (save_top_k, save_last) decides which "
                             "checkpoints Lightning keeps; each file name holds the one checkpoint saved last")
        self.model_dir = os.fspath(model_dir).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.store_kwargs = store_kwargs

    def store_for(self, path: str | os.PathLike[str]) -> CheckpointStore:
        """The store that holds the checkpoint Lightning calls ``path``."""
        name = os.path.basename(os.fspath(path).rstrip("/"))
        if not name or name in (".", ".."):
            raise ValueError(f"{path!r} does not end in a checkpoint file name")
        return CheckpointStore(f"{self.model_dir}/{name}", storage_options=self.storage_options, retention=KeepMax(1),
                               **self.store_kwargs)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Store ``checkpoint`` as the one checkpoint under ``path``'s file name, as a file written there
        would replace the one before: the new step commits, then the older one is pruned (a crash in
        between leaves the older one). A step older than the one the name holds (a new run in an old
        directory) deletes that one first, because LATEST never moves backwards: a crash in between leaves
        no checkpoint under the name, like a file half overwritten."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes storage options in its constructor, not per save")
        state: dict[str, Any] = {}
        flatten(ROOT, checkpoint, state)
        step = int(checkpoint.get("global_step", 0))
        with self.store_for(path) as store:
            held = store.latest()
            if held is not None and held.step > step:
                _delete_all(store)
            store.save(step, state, {"lightning_path": os.fspath(path)}, overwrite=True)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        with self.store_for(path) as store:
            try:
                flat = store.restore()
            except NotFound as e:
                raise FileNotFoundError(f"no ckptstore checkpoint for {path!r} in {self.model_dir}: {e}") from e
        checkpoint = unflatten(ROOT, flat)
        # Tensors come back on the CPU; a callable map_location is a deserializer's storage hook (Lightning
        # passes an identity one), which has nothing to do here.
        if map_location is not None and not callable(map_location):
            checkpoint = _to_device(checkpoint, map_location)
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        """Delete every checkpoint stored for ``path``."""
        with self.store_for(path) as store:
            _delete_all(store)


def _delete_all(store: CheckpointStore) -> None:
    """Delete everything in ``store``: manifests first (each step vanishes atomically), then LATEST, then
    the shards."""
    keys = [o.key for o in store.storage.list()]
    manifests = [k for k in keys if k.endswith("/" + MANIFEST_FILE)]
    rest = [k for k in keys if k not in manifests and k != LATEST_KEY]
    for key in manifests + ([LATEST_KEY] if LATEST_KEY in keys else []) + rest:
        store.storage.delete(key)


def _to_device(value: Any, location: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if isinstance(location, Mapping):
            return value.to(location.get("cpu", "cpu"))
        return value.to(location)
    if isinstance(value, dict):
        return {k: _to_device(v, location) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, location) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_device(v, location) for v in value)
    return value


def _register_with_the_other_namespace() -> None:
    """``lightning`` and ``pytorch-lightning`` ship the same CheckpointIO ABC under two module names; a
    Trainer accepts only its own. Register this class with whichever one it does not subclass."""
    for module in ("lightning.fabric.plugins", "lightning_fabric.plugins"):
        try:
            other = __import__(module, fromlist=["CheckpointIO"]).CheckpointIO
        except ImportError:
            continue
        if not issubclass(CkptStoreCheckpointIO, other):
            other.register(CkptStoreCheckpointIO)


_register_with_the_other_namespace()
