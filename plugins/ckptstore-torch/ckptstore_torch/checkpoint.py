"""Save and restore torch modules, optimizers and tensors with a CheckpointStore, one or many ranks.

``save(store, step, {"model": model, "optim": optimizer, "epoch": 3})`` stores each object's
``state_dict()`` under its name (``model/layer.weight``, ``optim/state/0/exp_avg`` ...), tensors as
views of their own memory. ``restore(store, {"model": model, "optim": optimizer})`` first compares
every name, shape and dtype with what the objects hold now and raises one ``CheckpointMismatch`` that
lists every difference; only then does it read — a module's and a tensor's CPU tensors straight into
their own memory (``CheckpointStore.restore(into=...)``: no second copy of the model) — and load the
result back with ``load_state_dict``.
With a ``coordinator`` both run on every rank through ``ckptstore.distributed``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from ckptstore import CheckpointInfo, CheckpointStore, distributed
from ckptstore.errors import CheckpointMismatch, TensorMismatch
from ckptstore.format import dtype_from_name
from ckptstore.manager import compare
from ckptstore_torch.tensors import TREE, TensorSpec, flatten, names_under, tensor_spec, to_numpy, unflatten

log = logging.getLogger("ckptstore")


def state_of(objects: Mapping[str, Any]) -> dict[str, Any]:
    """The flat ckptstore state of named modules, optimizers, tensors, state dicts and scalars."""
    out: dict[str, Any] = {}
    for name, obj in objects.items():
        if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
            sd = obj.state_dict()
            if isinstance(obj, torch.nn.Module):
                # A module's state_dict is already flat; store its names as they are (no tree).
                for key, value in sd.items():
                    flatten(f"{name}/{key}", value, out)
                continue
            flatten(name, sd, out)
        else:
            flatten(name, obj, out)
    return out


def save(
    store: CheckpointStore,
    step: int,
    objects: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    *,
    coordinator: distributed.Coordinator | None = None,
    overwrite: bool = False,
) -> CheckpointInfo:
    """Save named torch objects as the checkpoint for ``step``.

    With a ``coordinator`` call it on every rank; each rank passes what it holds (replicated modules
    under the same name on every rank are written once; rank-local state needs rank-distinct names).
    """
    state = state_of(objects)
    if coordinator is None:
        return store.save(step, state, metadata, overwrite=overwrite)
    return distributed.save(store, step, state, coordinator, metadata, overwrite=overwrite)


def restore(
    store: CheckpointStore,
    objects: Mapping[str, Any],
    step: int | None = None,
    *,
    strict: bool = True,
    verify: bool | None = None,
    coordinator: distributed.Coordinator | None = None,
    in_place: bool = True,
) -> dict[str, Any]:
    """Restore named objects in place and return what was read, by name.

    Modules get ``load_state_dict``, optimizers ``load_state_dict``, tensors ``copy_``; any other value
    (a scalar, a nested state dict) is returned rebuilt, with tensors that share the read buffers.
    Only the names under ``objects`` are read.

    Args:
        strict: raise ``CheckpointMismatch`` on any difference; when false, restore what matches and
            log the rest (modules then load with ``strict=False``).
        in_place: read a module's (and a bare tensor's) CPU contiguous tensors straight into their
            memory — no second copy of the model; if that read fails (a corrupt chunk, the storage),
            they may hold part of the checkpoint. False: read everything into fresh memory first, so
            a failed restore leaves the objects exactly as they were.

    Raises:
        CheckpointMismatch: names, shapes or dtypes differ (every difference listed), before any read.
        ckptstore.distributed.RankFailed: with a coordinator, when any rank failed (its error inside).
    """

    def read(chosen: int | None) -> dict[str, Any]:
        manifest = store.manifest(chosen)
        where = f"{store.storage.url}@{manifest.step}"
        wanted: list[str] = []
        mismatches: list[TensorMismatch] = []
        for name, obj in objects.items():
            stored = names_under(name, list(manifest.tensors) + list(manifest.scalars))
            template = _template(name, obj)
            if template is None:  # nothing to compare against: take what is stored
                if not stored:
                    mismatches.append(TensorMismatch(name, "missing", None, type(obj).__name__))
                wanted += stored
                continue
            sub = replace(
                manifest,
                tensors={n: manifest.tensors[n] for n in stored if n in manifest.tensors},
                scalars={n: manifest.scalars[n] for n in stored if n in manifest.scalars and not n.endswith("/" + TREE)},
            )
            found = compare(sub, template, None, where)
            mismatches += found
            bad = {m.name for m in found}
            wanted += [n for n in stored if n not in bad]
        if mismatches:
            if strict:
                raise CheckpointMismatch(where, mismatches)
            log.warning("%s", CheckpointMismatch(where, mismatches))
        dests = _in_place(objects, set(wanted)) if in_place else {}
        if not dests:
            return store.restore(manifest.step, names=wanted, verify=verify)
        # Compared above already: the template is what is stored, into only says where tensors go.
        return store.restore(manifest.step, names=wanted, like=_stored(manifest, wanted), into=dests, verify=verify)

    if coordinator is None:
        flat = read(step)
    else:
        flat = distributed.restore_with(store, coordinator, read, step)
    return {name: _load(name, obj, flat, strict) for name, obj in objects.items()}


def _in_place(objects: Mapping[str, Any], wanted: set[str]) -> dict[str, Any]:
    """Flat name -> numpy view of the memory a module's or a tensor's tensor lives in, for each one that
    can be restored in place (on the CPU, contiguous, not a conjugate or negative view)."""
    out: dict[str, Any] = {}
    for name, obj in objects.items():
        if isinstance(obj, torch.nn.Module):
            items = [(f"{name}/{key}", t) for key, t in obj.state_dict().items()]
        elif isinstance(obj, torch.Tensor):
            items = [(name, obj)]
        else:
            continue
        for flat, t in items:
            if (flat in wanted and isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.layout == torch.strided
                    and not t.is_quantized and t.is_contiguous() and not t.is_conj() and not t.is_neg()):
                view = to_numpy(t)
                if view.ctypes.data == t.data_ptr():  # a view, not a copy
                    out[flat] = view
    return out


def _stored(manifest: Any, names: list[str]) -> dict[str, Any]:
    """A template that is exactly what ``manifest`` stores under ``names``."""
    out: dict[str, Any] = {}
    for n in names:
        if n in manifest.tensors:
            entry = manifest.tensors[n]
            out[n] = TensorSpec(tuple(entry.shape), dtype_from_name(entry.dtype))
        else:
            out[n] = manifest.scalars[n]
    return out


def _template(name: str, obj: Any) -> dict[str, Any] | None:
    """Flat name -> TensorSpec/scalar the stored entries must match, or None to accept what is stored."""
    if isinstance(obj, torch.nn.Module):
        return {f"{name}/{k}": tensor_spec(v) if isinstance(v, torch.Tensor) else v for k, v in obj.state_dict().items()}
    if isinstance(obj, torch.optim.Optimizer) and not obj.state:
        # A fresh optimizer has no state tensors yet to compare with; load_state_dict checks the groups.
        return None
    if isinstance(obj, torch.Tensor):
        return {name: tensor_spec(obj)}
    if isinstance(obj, (torch.optim.Optimizer, Mapping, list, tuple)):
        flat: dict[str, Any] = {}
        flatten(name, obj.state_dict() if isinstance(obj, torch.optim.Optimizer) else obj, flat)
        return {
            n: tensor_spec(v) if hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, str) else v
            for n, v in flat.items()
            if not n.endswith("/" + TREE)
        }
    return None


def _load(name: str, obj: Any, flat: Mapping[str, Any], strict: bool) -> Any:
    if isinstance(obj, torch.nn.Module):
        prefix = name + "/"
        sd = {n[len(prefix):]: unflatten(n, flat) for n in flat if n.startswith(prefix)}
        obj.load_state_dict(sd, strict=strict)
        return sd
    if isinstance(obj, torch.Tensor):
        value = unflatten(name, flat)
        with torch.no_grad():
            obj.copy_(value)
        return value
    if f"{name}/{TREE}" not in flat and name not in flat:
        return None  # not strict and nothing stored
    value = unflatten(name, flat)
    if isinstance(obj, torch.optim.Optimizer):
        obj.load_state_dict(value)
    return value
