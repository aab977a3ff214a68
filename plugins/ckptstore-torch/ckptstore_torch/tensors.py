"""torch tensors <-> numpy arrays over the same memory, and nested state dicts <-> flat ckptstore names.

Why views and not ``tensor.numpy()``: numpy has no bfloat16 or float8, so ``.numpy()`` refuses those
tensors, and a cast would copy the model and change its bytes. Instead the tensor is reinterpreted as
an integer tensor of the same width, handed to numpy without a copy, and viewed as the matching
``ml_dtypes`` type — the bytes ckptstore writes are the tensor's own. Restoring runs the same views
backwards, so the torch tensor a restore returns lives in the page-aligned buffer the shards were read
into.

Why a tree description: a ``state_dict()`` is not always a flat name -> tensor map. An optimizer's
has integer keys, lists (``param_groups``), tuples (``betas``) and ``None``; a Lightning checkpoint
nests all of that. Tensors become flat ``/``-joined names (so each can be restored, listed and checked
on its own); the shape of the containers and the small Python values are kept in one JSON string
stored beside them (``<name>/.tree``), so the structure comes back exactly, with no pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import torch

TREE = ".tree"  # name component of the JSON structure description beside a flattened container

# torch dtypes numpy lacks: (the ml_dtypes type, the same-width integer dtype used to cross over).
_VIA_INT: dict[torch.dtype, tuple[np.dtype, torch.dtype, np.dtype]] = {
    torch.bfloat16: (np.dtype(ml_dtypes.bfloat16), torch.int16, np.dtype(np.int16)),
    torch.float8_e4m3fn: (np.dtype(ml_dtypes.float8_e4m3fn), torch.uint8, np.dtype(np.uint8)),
    torch.float8_e5m2: (np.dtype(ml_dtypes.float8_e5m2), torch.uint8, np.dtype(np.uint8)),
    torch.float8_e4m3fnuz: (np.dtype(ml_dtypes.float8_e4m3fnuz), torch.uint8, np.dtype(np.uint8)),
    torch.float8_e5m2fnuz: (np.dtype(ml_dtypes.float8_e5m2fnuz), torch.uint8, np.dtype(np.uint8)),
}
_FROM_NUMPY = {np_dtype: (torch_dtype, int_np) for torch_dtype, (np_dtype, _, int_np) in _VIA_INT.items()}


@dataclass(frozen=True)
class TensorSpec:
    """The shape and numpy dtype of a tensor, for ``CheckpointStore.restore(like=...)`` templates."""

    shape: tuple[int, ...]
    dtype: np.dtype


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype ckptstore stores a torch dtype as (``TypeError`` for one it cannot store)."""
    if dtype in _VIA_INT:
        return _VIA_INT[dtype][0]
    try:
        return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
    except (TypeError, RuntimeError) as e:
        raise TypeError(f"torch dtype {dtype} cannot be stored: {e}") from None


def tensor_spec(t: torch.Tensor) -> TensorSpec:
    return TensorSpec(tuple(t.shape), numpy_dtype(t.dtype))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy array over ``t``'s own memory (CPU, contiguous: no copy), for any storable dtype.

    A tensor on another device is copied to the CPU, and a non-contiguous one is made contiguous —
    the only copies made, since shards need contiguous host bytes.
    """
    if t.layout != torch.strided or t.is_quantized:
        raise TypeError(f"cannot store a {t.layout} {'quantized ' if t.is_quantized else ''}tensor")
    if t.device.type == "meta":
        raise TypeError("cannot store a tensor on the meta device (it has no data)")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    if t.dtype in _VIA_INT:
        np_dtype, int_torch, _ = _VIA_INT[t.dtype]
        return t.view(int_torch).numpy().view(np_dtype)
    try:
        return t.numpy()
    except TypeError as e:
        raise TypeError(f"torch dtype {t.dtype} cannot be stored: {e}") from None


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """A torch tensor over ``a``'s memory (no copy), bfloat16/float8 included."""
    if a.dtype in _FROM_NUMPY:
        torch_dtype, int_np = _FROM_NUMPY[a.dtype]
        return torch.from_numpy(a.view(int_np)).view(torch_dtype)
    return torch.from_numpy(a)


# ---------------------------------------------------------------------------------------------
# Nested state <-> flat names
# ---------------------------------------------------------------------------------------------

_PLAIN = (bool, int, float, str)


def _component(key: Any, index: int) -> str:
    """A name component for a container key: the key itself when it is a safe name, else ``~index``."""
    text = str(key)
    if (
        isinstance(key, (str, int)) and not isinstance(key, bool) and text and text not in (".", "..")
        and not text.startswith(("~", ".")) and not any(c in text for c in "/\\\x00") and len(text) <= 200
    ):
        return text
    return f"~{index}"


def flatten(name: str, value: Any, out: dict[str, Any]) -> None:
    """Add ``value`` to ``out`` under ``name``: tensors as numpy views, containers flattened below it.

    Containers (mappings with str/int keys, lists, tuples) become one entry per tensor plus a JSON
    structure description at ``name/.tree`` holding the keys and every non-tensor leaf (None, bool,
    int, float, str). A bare tensor, array or scalar is stored as itself.

    Raises:
        TypeError: a leaf is neither a tensor, an array, nor plain data.
    """
    if isinstance(value, (Mapping, list, tuple)):
        out[f"{name}/{TREE}"] = json.dumps(_describe(name, value, out), separators=(",", ":"), allow_nan=True)
    elif isinstance(value, torch.Tensor):
        out[name] = to_numpy(value)
    elif isinstance(value, (np.ndarray, np.generic)) or isinstance(value, _PLAIN):
        out[name] = value
    else:
        raise TypeError(f"{name}: a {type(value).__name__} cannot be stored without pickle")


def _describe(path: str, value: Any, out: dict[str, Any]) -> Any:
    if isinstance(value, Mapping):
        items = []
        for i, (key, child) in enumerate(value.items()):
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"{path}: key {key!r} is a {type(key).__name__}; only str and int keys can be stored")
            comp = _component(key, i)
            items.append([key, comp, _describe(f"{path}/{comp}", child, out)])
        return {"map": items}
    if isinstance(value, (list, tuple)):
        children = [_describe(f"{path}/{_component(i, i)}", child, out) for i, child in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": children}
    if isinstance(value, torch.Tensor):
        out[path] = to_numpy(value)
        return {"tensor": 1}
    if isinstance(value, np.ndarray):
        out[path] = value
        return {"array": 1}
    if value is None or isinstance(value, _PLAIN):
        if isinstance(value, float) and not math.isfinite(value):
            return {"float": repr(value)}  # JSON has no inf/nan; keep them exact
        return {"value": value}
    if isinstance(value, np.generic):
        return {"value": value.item()}
    raise TypeError(f"{path}: a {type(value).__name__} cannot be stored without pickle")


def unflatten(name: str, flat: Mapping[str, Any]) -> Any:
    """Rebuild what ``flatten(name, ...)`` stored, from a restored flat map (tensors over its arrays)."""
    tree = flat.get(f"{name}/{TREE}")
    if tree is None:
        value = flat[name]
        return from_numpy(value) if isinstance(value, np.ndarray) else value
    return _build(name, json.loads(tree), flat)


def _build(path: str, node: Mapping[str, Any], flat: Mapping[str, Any]) -> Any:
    if "map" in node:
        return {key: _build(f"{path}/{comp}", child, flat) for key, comp, child in node["map"]}
    if "list" in node or "tuple" in node:
        kind = "list" if "list" in node else "tuple"
        children = [_build(f"{path}/{i}", child, flat) for i, child in enumerate(node[kind])]
        return children if kind == "list" else tuple(children)
    if "tensor" in node:
        return from_numpy(flat[path])
    if "array" in node:
        return flat[path]
    if "float" in node:
        return float(node["float"])
    return node["value"]


def names_under(name: str, flat_names: Any) -> list[str]:
    """The stored names that belong to ``name`` (itself, or anything below it)."""
    return [n for n in flat_names if n == name or n.startswith(name + "/")]
