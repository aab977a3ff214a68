"""ckptstore: crash-safe, fast, pluggable checkpoint storage for training jobs."""

from ckptstore.manager import (
    CheckpointInfo,
    CheckpointStore,
    PruneResult,
    SaveHandle,
    TransferStats,
    __version__,
)

__all__ = ["CheckpointInfo", "CheckpointStore", "PruneResult", "SaveHandle", "TransferStats", "__version__"]
