"""Tensors without copies, every storable dtype, modules and optimizers through a CheckpointStore."""

from __future__ import annotations

import ckptstore_torch
import ml_dtypes
import numpy as np
import pytest
import torch
from ckptstore_torch import from_numpy, state_of, to_numpy, unflatten

from ckptstore import CheckpointStore
from ckptstore.errors import CheckpointMismatch, ChecksumError

DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool, torch.complex64, torch.complex128,
]


def sample(dtype: torch.dtype, shape: tuple[int, ...] = (3, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return (torch.randn(shape, generator=g, dtype=torch.float32) * 4).to(dtype)
    return torch.randint(0, 100, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_to_numpy_and_back_share_memory(dtype: torch.dtype) -> None:
    t = sample(dtype)
    a = to_numpy(t)
    assert a.ctypes.data == t.data_ptr() and a.shape == tuple(t.shape) and a.nbytes == t.nbytes
    back = from_numpy(a)
    assert back.dtype == dtype and back.data_ptr() == t.data_ptr()
    assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))


def test_bfloat16_views_are_ml_dtypes() -> None:
    t = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    np.testing.assert_array_equal(to_numpy(t), np.array([1.5, -2.0, 3.25], dtype=ml_dtypes.bfloat16))


def test_only_non_contiguous_or_lazy_tensors_are_copied() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    strided = to_numpy(base.t())
    assert strided.flags.c_contiguous and strided.ctypes.data != base.data_ptr()
    np.testing.assert_array_equal(strided, base.t().numpy())
    param = torch.nn.Parameter(torch.ones(2, 2))
    assert to_numpy(param).ctypes.data == param.data_ptr()  # requires_grad: detached, not copied
    np.testing.assert_array_equal(to_numpy(torch.tensor([1 + 2j]).conj()), np.array([1 - 2j], np.complex64))
    with pytest.raises(TypeError, match="meta"):
        to_numpy(torch.empty(2, device="meta"))
    with pytest.raises(TypeError, match="sparse"):
        to_numpy(torch.eye(2).to_sparse())


def test_every_dtype_round_trips_through_a_store(tmp_path) -> None:
    store = CheckpointStore(tmp_path / "md")
    tensors = {str(dt).removeprefix("torch."): sample(dt, (64, 33)) for dt in DTYPES}
    tensors["scalar"] = torch.tensor(2.5, dtype=torch.bfloat16)  # 0-d stays 0-d
    ckptstore_torch.save(store, 1, tensors)
    targets = {name: torch.zeros_like(t) for name, t in tensors.items()}
    out = ckptstore_torch.restore(store, targets)
    for name, t in tensors.items():
        assert targets[name].dtype == t.dtype and targets[name].shape == t.shape, name
        assert torch.equal(targets[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)), name
        assert out[name].dtype == t.dtype


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    m.register_buffer("scale", torch.ones(4, dtype=torch.bfloat16))
    return m


def train(m: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> float:
    g = torch.Generator().manual_seed(1)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        loss = m(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_module_and_optimizer_resume_exactly(tmp_path) -> None:
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.8, 0.95))
    train(m, opt, 3)
    flat = state_of({"model": m, "optim": opt})  # what save hands the store: views, not copies
    assert flat["model/0.weight"].ctypes.data == m[0].weight.data_ptr()
    assert flat["model/scale"].dtype == ml_dtypes.bfloat16 and flat["model/scale"].ctypes.data == m.scale.data_ptr()
    assert flat["optim/state/0/exp_avg"].ctypes.data == opt.state[m[0].weight]["exp_avg"].data_ptr()
    store = CheckpointStore(tmp_path / "md")
    info = ckptstore_torch.save(store, 3, {"model": m, "optim": opt, "epoch": 1})
    stored = set(store.manifest(3).tensors)
    assert "model/0.weight" in stored and "optim/state/0/exp_avg" in stored and "optim/state/0/step" in stored
    assert info.num_tensors == len(stored) + 2  # + epoch, + the optimizer's structure

    m2 = model()
    with torch.no_grad():
        for p in m2.parameters():
            p.zero_()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.5)  # fresh: no state yet, other hyper-parameters
    out = ckptstore_torch.restore(store, {"model": m2, "optim": opt2, "epoch": None})
    assert out["epoch"] == 1
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.param_groups[0]["betas"] == (0.8, 0.95)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # Both continue identically: optimizer moments and step counts came back exactly.
    assert train(m, opt, 2) == train(m2, opt2, 2)


def test_modules_and_tensors_are_restored_into_their_own_memory(tmp_path) -> None:
    """No second copy of the model: a module's CPU parameters and buffers (bfloat16 included) and a bare
    tensor are read straight into their memory; a non-contiguous tensor falls back to a copy_."""
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    train(m, opt, 2)
    counter = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    transposed = torch.arange(6, dtype=torch.int64).reshape(2, 3).t()  # not contiguous
    store = CheckpointStore(tmp_path / "md")
    ckptstore_torch.save(store, 2, {"model": m, "optim": opt, "counter": counter, "transposed": transposed})

    m2 = model()
    with torch.no_grad():
        for t in m2.state_dict().values():
            t.zero_()
    ptrs = {k: t.data_ptr() for k, t in m2.state_dict().items()}
    counter2, transposed2 = torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.int64).t().contiguous().t()
    assert not transposed2.is_contiguous()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    out = ckptstore_torch.restore(store, {"model": m2, "optim": opt2, "counter": counter2, "transposed": transposed2})
    assert store.last_restore_stats.mode == "into"
    assert {k: t.data_ptr() for k, t in m2.state_dict().items()} == ptrs
    for key, value in m.state_dict().items():
        assert torch.equal(m2.state_dict()[key], value), key
        assert out["model"][key].data_ptr() == ptrs[key], key  # what was read is the module's own memory
    assert torch.equal(counter2, counter) and out["counter"].data_ptr() == counter2.data_ptr()
    assert torch.equal(transposed2, transposed)
    assert train(m, opt, 1) == train(m2, opt2, 1)


class TiedLM(torch.nn.Module):
    """An embedding tied to the output projection, as in GPT-2 or T5: one tensor, two state_dict keys."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.hidden = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 50, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_are_restored_in_place_into_the_one_shared_tensor(tmp_path) -> None:
    torch.manual_seed(0)
    m = TiedLM()
    store = CheckpointStore(tmp_path / "md")
    ckptstore_torch.save(store, 1, {"model": m})
    m2 = TiedLM()
    with torch.no_grad():
        for t in m2.state_dict().values():
            t.zero_()
    ptr = m2.embed.weight.data_ptr()
    ckptstore_torch.restore(store, {"model": m2})
    assert store.last_restore_stats.mode == "into"
    assert m2.head.weight is m2.embed.weight and m2.embed.weight.data_ptr() == ptr
    for key, value in m.state_dict().items():
        assert torch.equal(m2.state_dict()[key], value), key


def test_a_corrupt_checkpoint_leaves_the_module_as_it_was_unless_restored_in_place(tmp_path) -> None:
    """in_place=False reads into fresh memory first: a corrupt chunk leaves the module as it was. In
    place, a small tensor is still copied in only once verified, but a large one (here 4 MiB) is read
    into the parameter piece by piece, so the failed restore leaves part of it written (documented)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 2))
    store = CheckpointStore(tmp_path / "md")
    ckptstore_torch.save(store, 1, {"model": m})
    path = tmp_path / "md" / f"step-{1:012d}"
    for name in ("model/0.weight", "model/1.weight"):  # a large and a small tensor, each damaged at its end
        chunk = store.manifest(1).tensors[name].chunks[-1]
        shard = path / chunk.shard
        data = bytearray(shard.read_bytes())
        data[chunk.offset + chunk.nbytes - 1] ^= 0x10
        shard.write_bytes(bytes(data))
    m2 = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 2))
    with torch.no_grad():
        for p in m2.parameters():
            p.fill_(7.0)
    with pytest.raises(ChecksumError, match=r"model/[01]\.weight"):
        ckptstore_torch.restore(store, {"model": m2}, in_place=False)
    assert all(bool((p == 7.0).all()) for p in m2.parameters())  # untouched
    with pytest.raises(ChecksumError, match=r"model/[01]\.weight"):
        ckptstore_torch.restore(store, {"model": m2})
    assert bool((m2[1].weight == 7.0).all())  # small: placed only once verified
    assert not bool((m2[0].weight == 7.0).all())  # large: partly overwritten before the check failed


def test_incompatible_module_lists_every_difference_before_reading(tmp_path) -> None:
    store = CheckpointStore(tmp_path / "md")
    ckptstore_torch.save(store, 1, {"model": model()})
    other = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.LayerNorm(64))
    with pytest.raises(CheckpointMismatch) as e:
        ckptstore_torch.restore(store, {"model": other})
    kinds = {(m.name, m.kind) for m in e.value.mismatches}
    assert ("model/0.weight", "shape") in kinds and ("model/2.weight", "unexpected") in kinds
    assert ("model/scale", "unexpected") in kinds
    assert "[64, 16] in the model, [32, 16] in the checkpoint" in str(e.value)
    half = model().half()
    with pytest.raises(CheckpointMismatch, match="dtype float16 in the model, float32 in the checkpoint"):
        ckptstore_torch.restore(store, {"model": half})


def test_nested_state_keeps_its_structure(tmp_path) -> None:
    state = {
        "sched": {"last_epoch": 4, "milestones": [1, 2], "gamma": 0.1, "none": None, "inf": float("inf")},
        "rng": torch.get_rng_state(),
        "pairs": (torch.ones(2), [torch.zeros(1, dtype=torch.bfloat16), "x"]),
        "by_id": {0: torch.arange(3), 7: {"odd/key": 1}},
    }
    flat = state_of(state)
    store = CheckpointStore(tmp_path / "md")
    store.save(1, flat)
    restored = store.restore()
    for name in state:
        rebuilt = unflatten(name, restored)
        if name == "sched":
            assert rebuilt == state["sched"]
    pairs = unflatten("pairs", restored)
    assert isinstance(pairs, tuple) and isinstance(pairs[1], list) and pairs[1][1] == "x"
    assert pairs[1][0].dtype == torch.bfloat16
    by_id = unflatten("by_id", restored)
    assert list(by_id) == [0, 7] and by_id[7] == {"odd/key": 1}
    assert torch.equal(unflatten("rng", restored), state["rng"])
    with pytest.raises(TypeError, match="cannot be stored without pickle"):
        state_of({"bad": {"obj": object()}})
