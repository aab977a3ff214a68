"""ckptstore for PyTorch: tensors without copies, module/optimizer state, multi-rank saves, Lightning.

The Lightning ``CheckpointIO`` lives in ``ckptstore_torch.lightning`` (it imports Lightning).
"""

from ckptstore_torch.checkpoint import restore, save, state_of
from ckptstore_torch.coordinator import TorchDistributedCoordinator
from ckptstore_torch.tensors import TensorSpec, flatten, from_numpy, numpy_dtype, to_numpy, unflatten

__all__ = [
    "TensorSpec",
    "TorchDistributedCoordinator",
    "flatten",
    "from_numpy",
    "numpy_dtype",
    "restore",
    "save",
    "state_of",
    "to_numpy",
    "unflatten",
]
