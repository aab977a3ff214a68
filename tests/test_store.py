"""CheckpointStore behaviour on every backend: round trips, commit rules, fallbacks, compatibility, bad input."""

from __future__ import annotations

import logging
import math
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ckptstore import CheckpointInfo, CheckpointStore
from ckptstore.errors import (
    CheckpointMismatch,
    CkptStoreError,
    CommitError,
    FormatError,
    NotFound,
    StorageError,
)
from ckptstore.format import LATEST_KEY, manifest_key
from ckptstore.manager import flatten_state

REMOTE = ("s3-moto", "s3-seaweedfs", "gcs")


def open_store(md, **kwargs) -> CheckpointStore:
    return CheckpointStore(md.url, storage_options=md.storage_options, **kwargs)


def assert_same(restored: dict, expected: dict) -> None:
    assert set(restored) == set(expected)
    for name, value in expected.items():
        got = restored[name]
        if isinstance(value, np.ndarray):
            assert isinstance(got, np.ndarray), name
            assert got.dtype == value.dtype.newbyteorder("<") or got.dtype == value.dtype, name
            assert got.shape == value.shape, name
            assert got.tobytes() == np.ascontiguousarray(value).astype(got.dtype).tobytes(), name
        else:
            assert type(got) is type(value) and got == value, name


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128"]


def arrays_of_every_class():
    rng = np.random.default_rng(0)
    out = {}
    for name in DTYPES:
        dt = np.dtype(name)
        out[f"dtypes/{name}"] = (rng.integers(0, 2, 37) if dt.kind == "b" else rng.random(37) * 100).astype(dt)
    out["shapes/scalar0d"] = np.array(3.5, np.float32)
    out["shapes/empty"] = np.zeros((0, 7), np.float64)
    out["shapes/fortran"] = np.asfortranarray(rng.random((33, 17)))
    out["shapes/strided"] = rng.random((40, 40))[::3, 1::2]
    out["shapes/big_endian"] = np.arange(100, dtype=">i4")
    out["shapes/large"] = rng.random(300_000).astype(np.float32)  # > ALIGNED_MIN: page-aligned on restore
    return out


def test_roundtrip_every_dtype_and_shape_class(model_dir):
    store = open_store(model_dir)
    state = arrays_of_every_class()
    info = store.save(7, state)
    assert isinstance(info, CheckpointInfo) and info.step == 7 and info.nbytes > 0
    restored = store.restore()
    assert_same(restored, state)
    assert restored["shapes/big_endian"].dtype == np.dtype("<i4")
    assert restored["shapes/large"].ctypes.data % 4096 == 0
    assert restored["shapes/fortran"].flags.c_contiguous


def test_nested_state_scalars_and_metadata(model_dir):
    store = open_store(model_dir)
    state = {
        "dnn": {"hiddenlayer_0": {"kernel": np.ones((4, 10), np.float32), "bias": np.zeros(10, np.float32)}},
        "global_step": 200,
        "lr": 0.25,
        "done": False,
        "tag": "iris",
    }
    store.save(200, state, metadata={"loss": np.float32(0.5), "notes": ["a", 1], "nested": {"k": None}})
    restored = store.restore(200)
    assert sorted(restored) == ["dnn/hiddenlayer_0/bias", "dnn/hiddenlayer_0/kernel", "done", "global_step", "lr", "tag"]
    assert restored["global_step"] == 200 and type(restored["global_step"]) is int
    assert restored["lr"] == 0.25 and restored["done"] is False and restored["tag"] == "iris"
    np.testing.assert_array_equal(restored["dnn/hiddenlayer_0/kernel"], np.ones((4, 10), np.float32))
    info = store.latest()
    assert info is not None and info.metadata == {"loss": 0.5, "notes": ["a", 1], "nested": {"k": None}}


@st.composite
def states(draw):
    n = draw(st.integers(1, 6))
    out = {}
    for i in range(n):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
        arr = draw(hnp.arrays(np.dtype(dtype), shape))
        order = draw(st.sampled_from(["C", "F", "strided"]))
        if order == "F":
            arr = np.asfortranarray(arr)
        elif order == "strided" and arr.ndim:
            arr = np.repeat(arr, 2, axis=0)[::2]
        out[f"t{i}/" + draw(st.from_regex(r"[a-z_][a-z0-9_.-]{0,8}", fullmatch=True))] = arr
    return out


def test_roundtrip_property(model_dir):
    store = open_store(model_dir, chunk_size=4096, max_shard_size=16384)  # force chunking and many shards
    steps = iter(range(10**6))
    examples = 8 if model_dir.backend in REMOTE else 40

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(states())
    def check(state):
        step = next(steps)
        store.save(step, state)
        assert_same(store.restore(step), state)

    check()


def test_low_precision_dtypes(model_dir):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    store = open_store(model_dir)
    state = {
        "bf16": np.arange(50, dtype=np.float32).astype(ml_dtypes.bfloat16),
        "f8": np.linspace(-2, 2, 9).astype(ml_dtypes.float8_e4m3fn),
        "f8b": np.linspace(-2, 2, 9).astype(ml_dtypes.float8_e5m2),
    }
    store.save(1, state)
    restored = store.restore()
    for name, value in state.items():
        assert restored[name].dtype == value.dtype
        assert restored[name].tobytes() == value.tobytes()


def test_low_precision_without_ml_dtypes_is_a_clear_error(monkeypatch):
    from ckptstore.format import dtype_from_name

    monkeypatch.setitem(__import__("sys").modules, "ml_dtypes", None)
    dtype_from_name.cache_clear()  # earlier tests may have resolved bfloat16 while ml_dtypes was there
    with pytest.raises(FormatError, match=r"bfloat16 needs the ml_dtypes package: pip install 'ckptstore\[bf16\]'"):
        dtype_from_name("bfloat16")


def test_large_tensor_is_split_into_chunks_and_shards(model_dir):
    store = open_store(model_dir, chunk_size=1 << 20, max_shard_size=3 << 20, workers=3)
    big = np.random.default_rng(1).random(5 << 17)  # 5 MiB of float64
    store.save(1, {"big": big, "small": np.arange(3)})
    m = store.manifest(1)
    assert len(m.tensors["big"].chunks) == 5
    assert all(size <= 3 << 20 for size in m.shards.values()) and len(m.shards) >= 2
    assert all(c.offset % 4096 == 0 for e in m.tensors.values() for c in e.chunks)
    restored = store.restore()
    np.testing.assert_array_equal(restored["big"], big)
    assert restored["big"].ctypes.data % 4096 == 0


def test_restore_subset_by_name(model_dir):
    store = open_store(model_dir)
    state = {f"layer{i}/w": np.full((64, 64), i, np.float32) for i in range(20)}
    store.save(3, state)
    part = store.restore(names=["layer3/w", "layer17/w"])
    assert sorted(part) == ["layer17/w", "layer3/w"]
    assert (part["layer17/w"] == 17).all()
    with pytest.raises(NotFound, match="'nope'"):
        store.restore(names=["nope"])


# ---------------------------------------------------------------------------------------------
# Commit rules and LATEST
# ---------------------------------------------------------------------------------------------


def test_a_name_may_prefix_another(tmp_path):
    """TF1 names optimizer slots after their variable: "dnn/logits/bias" and "dnn/logits/bias/Adagrad"."""
    store = CheckpointStore(tmp_path)
    state = {"dnn/logits/bias": np.zeros(3), "dnn/logits/bias/Adagrad": np.ones(3)}
    store.save(1, state)
    assert_same(store.restore(), state)


def test_latest_and_list(model_dir):
    store = open_store(model_dir)
    assert store.latest() is None and store.list() == []
    with pytest.raises(NotFound, match="no committed checkpoint"):
        store.restore()
    for step in (5, 1, 30):
        store.save(step, {"w": np.full(3, step)}, metadata={"step": step})
    assert [i.step for i in store.list()] == [1, 5, 30]
    latest = store.latest()
    assert latest is not None and latest.step == 30 and latest.metadata == {"step": 30}
    assert (store.restore()["w"] == 30).all()
    assert (store.restore(step=5)["w"] == 5).all()


def test_latest_never_moves_backwards(model_dir, caplog):
    store = open_store(model_dir)
    store.save(200, {"w": np.full(2, 200)})
    with caplog.at_level(logging.WARNING, "ckptstore"):
        store.save(100, {"w": np.full(2, 100)})
    assert "LATEST stays at the newer step 200" in caplog.text
    assert store.latest().step == 200
    assert (store.restore(100)["w"] == 100).all()


def test_saving_a_committed_step_needs_overwrite(model_dir):
    store = open_store(model_dir)
    store.save(10, {"w": np.zeros(4)})
    with pytest.raises(CommitError, match="step 10 is already committed; pass overwrite=True"):
        store.save(10, {"w": np.ones(4)})
    assert (store.restore(10)["w"] == 0).all()
    store.save(10, {"w": np.ones(4), "extra": np.arange(2)}, overwrite=True)
    restored = store.restore(10)
    assert (restored["w"] == 1).all() and "extra" in restored
    assert store.latest().num_tensors == 2


def test_second_store_on_same_dir_sees_checkpoints(model_dir):
    open_store(model_dir).save(4, {"w": np.arange(4)})
    again = open_store(model_dir)
    assert again.latest().step == 4
    np.testing.assert_array_equal(again.restore()["w"], np.arange(4))


def test_missing_latest_falls_back_to_listing(model_dir, caplog):
    store = open_store(model_dir)
    store.save(1, {"w": np.full(2, 1)})
    store.save(2, {"w": np.full(2, 2)})
    store.storage.delete(LATEST_KEY)
    with caplog.at_level(logging.WARNING, "ckptstore"):
        assert store.latest().step == 2
        assert (store.restore()["w"] == 2).all()
    assert "LATEST is missing; using step 2" in caplog.text
    store.save(3, {"w": np.full(2, 3)})  # and the next save writes a fresh LATEST
    assert store.storage.get(LATEST_KEY)


def test_damaged_latest_falls_back_to_listing(model_dir, caplog):
    store = open_store(model_dir)
    store.save(1, {"w": np.full(2, 1)})
    store.storage.put(LATEST_KEY, b"\xc1garbage")
    with caplog.at_level(logging.WARNING, "ckptstore"):
        assert (store.restore()["w"] == 1).all()
    assert "LATEST: no crc32c seal at the end" in caplog.text
    store.save(2, {"w": np.full(2, 2)})
    assert store.latest().step == 2


def test_latest_naming_a_deleted_manifest_falls_back(model_dir, caplog):
    store = open_store(model_dir)
    store.save(1, {"w": np.full(2, 1)})
    store.save(2, {"w": np.full(2, 2)})
    store.storage.delete(manifest_key(2))
    with caplog.at_level(logging.WARNING, "ckptstore"):
        assert (store.restore()["w"] == 1).all()
    assert "falling back" in caplog.text


def test_no_save_overwrites_committed_shards(model_dir):
    store = open_store(model_dir)
    store.save(1, {"w": np.zeros(1000)})
    before = {o.key: store.storage.get(o.key) for o in store.storage.list("step-")}
    store.save(1, {"w": np.ones(1000)}, overwrite=True)
    after = {o.key for o in store.storage.list("step-")}
    for key, data in before.items():
        if key.endswith(".bin"):
            assert key in after and store.storage.get(key) == data  # old attempt untouched (GC removes later)


# ---------------------------------------------------------------------------------------------
# Compatibility check (the seeds' bad restore)
# ---------------------------------------------------------------------------------------------


def dnn_classifier_variables(hidden_units: list[int], n_features: int = 4, n_classes: int = 3) -> dict:
    """The variables tf.estimator.DNNClassifier creates (names as TF names them), with Adagrad slots."""
    shapes: dict[str, tuple[int, ...]] = {}
    fan_in = n_features
    for i, units in enumerate(hidden_units):
        shapes[f"dnn/hiddenlayer_{i}/kernel"] = (fan_in, units)
        shapes[f"dnn/hiddenlayer_{i}/bias"] = (units,)
        fan_in = units
    shapes["dnn/logits/kernel"] = (fan_in, n_classes)
    shapes["dnn/logits/bias"] = (n_classes,)
    out = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    for name, shape in shapes.items():
        out[f"training/Adagrad/{name}/accumulator"] = np.full(shape, 0.1, np.float32)
    out["global_step"] = np.array(200, np.int64)
    return out


def test_incompatible_model_lists_every_mismatch(model_dir):
    store = open_store(model_dir)
    store.save(200, dnn_classifier_variables([10, 10]))
    with pytest.raises(CheckpointMismatch) as err:
        store.restore(like=dnn_classifier_variables([20, 20]))
    e = err.value
    shape_mismatches = {m.name: (m.checkpoint, m.model) for m in e.mismatches if m.kind == "shape"}
    assert shape_mismatches == {
        "dnn/hiddenlayer_0/kernel": ("[4, 10]", "[4, 20]"),
        "dnn/hiddenlayer_0/bias": ("[10]", "[20]"),
        "dnn/hiddenlayer_1/kernel": ("[10, 10]", "[20, 20]"),
        "dnn/hiddenlayer_1/bias": ("[10]", "[20]"),
        "dnn/logits/kernel": ("[10, 3]", "[20, 3]"),
        "training/Adagrad/dnn/hiddenlayer_0/kernel/accumulator": ("[4, 10]", "[4, 20]"),
        "training/Adagrad/dnn/hiddenlayer_0/bias/accumulator": ("[10]", "[20]"),
        "training/Adagrad/dnn/hiddenlayer_1/kernel/accumulator": ("[10, 10]", "[20, 20]"),
        "training/Adagrad/dnn/hiddenlayer_1/bias/accumulator": ("[10]", "[20]"),
        "training/Adagrad/dnn/logits/kernel/accumulator": ("[10, 3]", "[20, 3]"),
    }
    text = str(e)
    assert "10 shape" in text
    assert "dnn/hiddenlayer_1/bias: shape [20] in the model, [10] in the checkpoint" in text
    assert isinstance(e, ValueError) and isinstance(e, CkptStoreError)


def test_mismatch_reports_missing_unexpected_and_dtype_together(model_dir):
    store = open_store(model_dir)
    store.save(1, {"a": np.zeros(3, np.float32), "b": np.zeros(2), "old": np.zeros(1)})
    template = {"a": np.zeros(3, np.float16), "b": np.zeros(2), "new": np.zeros((2, 2))}
    with pytest.raises(CheckpointMismatch) as err:
        store.restore(like=template)
    kinds = {(m.name, m.kind, m.checkpoint, m.model) for m in err.value.mismatches}
    assert kinds == {
        ("a", "dtype", "float32", "float16"),
        ("new", "missing", None, "[2, 2] float64"),
        ("old", "unexpected", "[1] float64", None),
    }


def test_non_strict_restores_the_matching_subset(model_dir, caplog):
    store = open_store(model_dir)
    store.save(1, {"a": np.arange(3.0), "b": np.zeros(2)})
    with caplog.at_level(logging.WARNING, "ckptstore"):
        restored = store.restore(like={"a": np.zeros(3), "b": np.zeros(5)}, strict=False)
    assert list(restored) == ["a"]
    assert "b: shape [5] in the model, [2] in the checkpoint" in caplog.text


def test_a_numpy_float_scalar_in_the_template_matches_the_float_it_was_saved_as(tmp_path):
    store = CheckpointStore(tmp_path / "s")
    store.save(1, {"lr": np.float64(0.1), "w": np.zeros(2)})  # saved as a Python float
    assert store.restore(like={"lr": np.float64(0.5), "w": np.zeros(2)})["lr"] == 0.1
    with pytest.raises(CheckpointMismatch, match="lr: dtype int in the model, float in the checkpoint"):
        store.restore(like={"lr": 1, "w": np.zeros(2)})


def test_compatible_template_restores_everything(model_dir):
    store = open_store(model_dir)
    state = dnn_classifier_variables([10, 10])
    store.save(1, state)
    assert_same(store.restore(like=dnn_classifier_variables([10, 10])), state)


def test_restore_into_existing_arrays(model_dir):
    """``into``: every tensor lands in the caller's own arrays (whatever their address: numpy's large
    allocations start 16 bytes into a page), large ones split into chunks included; scalars come back
    from the checkpoint, and the result holds the very same array objects."""
    store = open_store(model_dir, chunk_size=1 << 20)
    rng = np.random.default_rng(7)
    state = {
        "big": rng.random((1200, 1000), dtype=np.float32),  # 4.6 MiB: large, 5 chunks
        "layer": {f"w{i}": rng.integers(-9, 9, (3 + i, 50 + i), dtype=np.int16) for i in range(30)},
        "odd": rng.random(100_003, dtype=np.float64),  # ends mid-page
        "empty": np.zeros((0, 4), np.float32),
        "epoch": 3,
    }
    store.save(1, state)
    into = {
        "big": np.zeros((1200, 1000), np.float32),
        "layer": {k: np.zeros_like(v) for k, v in state["layer"].items()},
        "odd": np.full(100_003, -1.0),
        "empty": np.zeros((0, 4), np.float32),
        "epoch": 0,
    }
    before = {"big": into["big"], "odd": into["odd"], **{f"layer/{k}": v for k, v in into["layer"].items()}}
    restored = store.restore(into=into)
    for name, array in before.items():
        assert restored[name] is array, name
    arrays, scalars = flatten_state(state)
    assert_same(restored, arrays | scalars)
    assert restored["epoch"] == 3 and into["epoch"] == 0  # scalars cannot be written in place
    assert store.last_restore_stats.mode == "into"

    # A subset: only the named tensors are written, the rest keep their contents.
    into["odd"][:] = -1.0
    into["big"][:] = 0.0
    store.restore(names=["odd"], into={"odd": into["odd"], "big": into["big"]})
    np.testing.assert_array_equal(into["odd"], state["odd"])
    assert not into["big"].any()


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, and nothing lost
# ---------------------------------------------------------------------------------------------

BAD_SAVES = [
    (dict(step=2, state={"w": [1, 2, 3]}), TypeError, "state\\['w'\\] is a list"),
    (dict(step=2, state={"w": None}), TypeError, "state\\['w'\\] is a NoneType"),
    (dict(step=2, state={"w": np.array(["a"])}), TypeError, "dtype <U1"),
    (dict(step=2, state={"w": np.array([object()])}), TypeError, "dtype object"),
    (dict(step=2, state={"": np.zeros(1)}), ValueError, "must have 1..1024 characters"),
    (dict(step=2, state={"a/b": np.zeros(1), "a": {"b": np.zeros(1)}}), ValueError, "same name 'a/b'"),
    (dict(step=2, state={"a": {"b": np.zeros(1)}, "a/b": np.zeros(1)}), ValueError, "same name 'a/b'"),
    (dict(step=2, state={"../x": np.zeros(1)}), ValueError, "'..' component"),
    (dict(step=2, state={"/abs": np.zeros(1)}), ValueError, "leading '/'"),
    (dict(step=2, state={"a\\b": np.zeros(1)}), ValueError, "backslash"),
    (dict(step=2, state={"a\x00b": np.zeros(1)}), ValueError, "NUL"),
    (dict(step=2, state={1: np.zeros(1)}), TypeError, "state key 1"),
    (dict(step=2, state=[np.zeros(1)]), TypeError, "state must be a mapping"),
    (dict(step=-1, state={"w": np.zeros(1)}), ValueError, "non-negative integer, got -1"),
    (dict(step=1.5, state={"w": np.zeros(1)}), TypeError, "non-negative integer, got 1.5"),
    (dict(step="3", state={"w": np.zeros(1)}), TypeError, "non-negative integer"),
    (dict(step=True, state={"w": np.zeros(1)}), TypeError, "non-negative integer"),
    (dict(step=2, state={"w": np.zeros(1)}, metadata={"f": object()}), TypeError, "metadata cannot be serialised"),
    (dict(step=2, state={"w": np.zeros(1)}, metadata={1: "x"}), TypeError, "string keys"),
    (dict(step=2, state={"w": np.zeros(1)}, metadata="x"), TypeError, "metadata must be a mapping"),
    (dict(step=2, state={"big": 2**70}), TypeError, "cannot be serialised"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_SAVES)
def test_bad_save_is_refused_and_loses_nothing(kwargs, error, message, tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, {"w": np.arange(5)})
    before = sorted(o.key for o in store.storage.list() if not o.key.startswith(".locks"))
    with pytest.raises(error, match=message):
        store.save(**kwargs)
    assert sorted(o.key for o in store.storage.list() if not o.key.startswith(".locks")) == before
    assert store.latest().step == 1
    np.testing.assert_array_equal(store.restore()["w"], np.arange(5))


def test_model_dir_that_is_a_file(tmp_path):
    f = tmp_path / "model_dir"
    f.write_text("not a directory")
    with pytest.raises(StorageError, match="exists and is not a directory"):
        CheckpointStore(f)


def test_unwritable_model_dir_is_a_clear_error():
    # Root ignores file modes; sysfs refuses new directories to everyone.
    with pytest.raises(StorageError, match="/sys/ckptstore-test.*(not writable|failed)"):
        CheckpointStore("/sys/ckptstore-test")


def test_invalid_store_arguments(tmp_path):
    with pytest.raises(ValueError, match="chunk_size"):
        CheckpointStore(tmp_path, chunk_size=1000)
    with pytest.raises(ValueError, match="workers"):
        CheckpointStore(tmp_path, workers=0)
    with pytest.raises(ValueError, match="max_shard_size"):
        CheckpointStore(tmp_path, max_shard_size=10)


def test_no_model_dir_uses_a_reported_temp_dir(caplog, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the default lands where pytest cleans up
    with caplog.at_level(logging.WARNING, "ckptstore"):
        store = CheckpointStore()
    assert store.model_dir.startswith(f"{tmp_path}/ckptstore-")
    assert f"Using temporary folder as model directory: {store.model_dir}" in caplog.text
    store.save(1, {"w": np.zeros(2)})
    assert CheckpointStore(store.model_dir).latest().step == 1


def test_plain_path_file_url_and_memory_url(tmp_path):
    CheckpointStore(tmp_path / "a").save(1, {"w": np.zeros(1)})
    assert CheckpointStore(f"file://{tmp_path / 'a'}").latest().step == 1
    CheckpointStore("memory://shared-name").save(3, {"w": np.zeros(1)})
    assert CheckpointStore("memory://shared-name").latest().step == 3


def test_generic_fsspec_url_works_and_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, "ckptstore"):
        store = CheckpointStore(f"local://{tmp_path}")
    assert "cannot enforce conditional writes" in caplog.text
    store.save(1, {"w": np.arange(3)})
    with pytest.raises(CommitError):
        store.save(1, {"w": np.arange(3)})
    np.testing.assert_array_equal(store.restore()["w"], np.arange(3))
    assert math.isclose(store.latest().time, store.list()[0].time)


def test_read_only_store_never_writes(model_dir):
    from ckptstore.commit import latest_from_manifest
    from ckptstore.errors import ReadOnlyError
    from ckptstore.format import encode_latest

    writer = open_store(model_dir)
    writer.save(1, {"w": np.full(2, 1)})
    writer.save(2, {"w": np.full(2, 2)})
    # LATEST lags behind step 2 (a writer died between commit and pointer update)
    writer.storage.put(LATEST_KEY, encode_latest(latest_from_manifest(writer.manifest(1))))
    before = {o.key: o.version for o in writer.storage.list()}
    reader = open_store(model_dir, read_only=True)
    assert reader.latest().step == 2
    assert (reader.restore()["w"] == 2).all()
    assert [i.step for i in reader.list()] == [1, 2]
    for call in (lambda: reader.save(3, {"w": np.zeros(1)}), lambda: reader.prune(), lambda: reader.pin(1),
                 lambda: reader.gc()):
        with pytest.raises(ReadOnlyError, match="opened read-only"):
            call()
    assert reader.prune(dry_run=True).dry_run
    writer.storage.delete(LATEST_KEY)
    assert open_store(model_dir, read_only=True).latest().step == 2
    after = {o.key: o.version for o in writer.storage.list() if o.key != LATEST_KEY}
    assert after == {k: v for k, v in before.items() if k != LATEST_KEY}
    assert LATEST_KEY not in {o.key for o in writer.storage.list()}
