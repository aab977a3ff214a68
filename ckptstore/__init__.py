"""ckptstore: crash-safe, fast, pluggable checkpoint storage for training jobs."""

from ckptstore.manager import CheckpointInfo, CheckpointStore, __version__

__all__ = ["CheckpointInfo", "CheckpointStore", "__version__"]
