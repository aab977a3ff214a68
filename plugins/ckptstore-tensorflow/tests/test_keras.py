"""The Keras 3 callback: save frequency, restore on train begin, retention, the mismatch check, stopping.

Runs where Keras 3 is installed (TF 2.21); skipped with TF 2.15's Keras 2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
if int(keras.__version__.split(".")[0]) < 3:
    pytest.skip(f"needs Keras 3, found {keras.__version__}", allow_module_level=True)

from ckptstore_tensorflow import StoreCallback  # noqa: E402

from ckptstore import CheckpointStore  # noqa: E402
from ckptstore.errors import CheckpointMismatch  # noqa: E402
from ckptstore.hooks import SaveListener  # noqa: E402
from ckptstore.policies import KeepMax  # noqa: E402

BATCHES_PER_EPOCH = 8  # 240 examples, batch size 30


def build(hidden: int = 10) -> Any:
    # Named layers give stable variable paths (dnn/hiddenlayer_0/kernel) across models and processes.
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(hidden, activation="relu", name="hiddenlayer_0"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="dnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adagrad(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit(model: Any, iris: Any, callback: Any, epochs: int = 1) -> Any:
    return model.fit(
        iris.x, iris.y, batch_size=30, epochs=epochs, callbacks=[callback], verbose=0, shuffle=False
    )


def steps_in(store: Any) -> list[int]:
    return [info.step for info in store.list()]


def test_saves_every_n_batches_and_resumes(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "k"))
    model = build()
    fit(model, iris, StoreCallback(store, save_freq=5), epochs=2)
    assert steps_in(store) == [0, 5, 10, 15, 16]
    latest = store.restore()
    np.testing.assert_array_equal(latest["dnn/hiddenlayer_0/kernel"], model.weights[0].numpy())
    assert int(latest["optimizer/iteration"]) == 16
    assert "loss" in store.latest().metadata

    # A freshly built model resumes: weights, optimizer slots and the step counter.
    resumed = build()
    callback = StoreCallback(store, save_freq="epoch")
    fit(resumed, iris, callback)
    assert callback.restored_step == 16
    assert int(resumed.optimizer.iterations) == 16 + BATCHES_PER_EPOCH
    assert steps_in(store) == [0, 5, 10, 15, 16, 24]


def test_restore_loads_the_saved_weights_before_the_first_batch(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "k"))
    fit(build(), iris, StoreCallback(store))
    saved = store.restore()
    seen: dict[str, np.ndarray] = {}

    class Peek(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if not seen:
                seen.update({v.path: v.numpy() for v in self.model.weights})

    model = build()
    model.fit(iris.x, iris.y, batch_size=30, epochs=1, verbose=0, callbacks=[StoreCallback(store), Peek()])
    for name, value in seen.items():
        np.testing.assert_array_equal(value, saved[name])


def test_mismatched_model_is_refused(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "k"))
    fit(build(), iris, StoreCallback(store))
    with pytest.raises(CheckpointMismatch) as info:
        fit(build(hidden=20), iris, StoreCallback(store))
    assert {m.name for m in info.value.mismatches} == {
        "dnn/hiddenlayer_0/kernel",
        "dnn/hiddenlayer_0/bias",
        "dnn/logits/kernel",
        "optimizer/dnn_hiddenlayer_0_kernel_accumulator",
        "optimizer/dnn_hiddenlayer_0_bias_accumulator",
        "optimizer/dnn_logits_kernel_accumulator",
    }
    assert steps_in(store) == [0, BATCHES_PER_EPOCH]


def test_listener_stops_fit(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "k"))

    class StopAt(SaveListener):
        def after_save(self, session: Any, step: int) -> bool:
            return step >= 4

    model = build()
    fit(model, iris, StoreCallback(store, save_freq=2, listeners=[StopAt()]), epochs=5)
    assert int(model.optimizer.iterations) == 4
    assert steps_in(store) == [0, 2, 4]


def test_retention_keeps_the_newest(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "k"), retention=KeepMax(2))
    fit(build(), iris, StoreCallback(store, save_freq=1))
    assert steps_in(store) == [BATCHES_PER_EPOCH - 1, BATCHES_PER_EPOCH]
