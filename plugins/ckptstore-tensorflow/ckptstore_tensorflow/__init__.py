"""ckptstore adapters for TensorFlow: Estimator / MonitoredTrainingSession hooks, a RunConfig bridge, Keras 3.

``StoreSaverHook`` / ``StoreRestoreHook`` work wherever ``tf.compat.v1`` sessions do (TF 2.15 Estimator,
TF 2.21 ``MonitoredTrainingSession``); ``estimator()`` and ``from_run_config()`` need ``tf.estimator``
(TF <= 2.15 with tensorflow-estimator) only to build an Estimator; ``StoreCallback`` needs Keras 3 and is
imported on first use so that importing this package never requires it.
"""

from __future__ import annotations

from typing import Any

from ckptstore_tensorflow.estimator import StoreCheckpointing, StoreEstimator, estimator, from_run_config
from ckptstore_tensorflow.session import StoreRestoreHook, StoreSaverHook, TensorSpec, variable_name

__all__ = [
    "StoreCallback",
    "StoreCheckpointing",
    "StoreEstimator",
    "StoreRestoreHook",
    "StoreSaverHook",
    "TensorSpec",
    "estimator",
    "from_run_config",
    "variable_name",
]


def __getattr__(name: str) -> Any:
    if name == "StoreCallback":
        from ckptstore_tensorflow.keras import StoreCallback

        return StoreCallback
    raise AttributeError(f"module 'ckptstore_tensorflow' has no attribute {name!r}")
