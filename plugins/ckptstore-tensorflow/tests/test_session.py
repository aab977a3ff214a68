"""StoreSaverHook / StoreRestoreHook under ``tf.compat.v1.train.MonitoredTrainingSession`` (TF 2.15 and 2.21).

The model is a two-layer softmax classifier written with raw ``tf.compat.v1`` variables (TF 2.21 has no
``tf.compat.v1.layers``), trained by Adagrad so optimizer slot variables are part of the state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ckptstore_tensorflow import StoreRestoreHook, StoreSaverHook  # noqa: E402

from ckptstore import CheckpointStore  # noqa: E402
from ckptstore.errors import CheckpointMismatch  # noqa: E402

v1 = tf.compat.v1


class Recorder(v1.train.CheckpointSaverListener):
    def __init__(self, stop_at: int | None = None) -> None:
        self.saves: list[int] = []
        self.ended: int | None = None
        self.stop_at = stop_at

    def after_save(self, session: Any, step: int) -> bool:
        self.saves.append(int(step))
        return self.stop_at is not None and step >= self.stop_at

    def end(self, session: Any, step: int) -> None:
        self.ended = int(step)


def build(iris: Any, hidden: int = 10, train: bool = True) -> dict[str, Any]:
    """Builds the model in the default graph; returns its train op (if ``train``) and logits."""
    global_step = v1.train.get_or_create_global_step()
    x = tf.constant(iris.x)
    with v1.variable_scope("dnn"):
        w0 = v1.get_variable(
            "hiddenlayer_0/kernel", [4, hidden], initializer=v1.glorot_uniform_initializer(seed=1)
        )
        b0 = v1.get_variable("hiddenlayer_0/bias", [hidden], initializer=v1.zeros_initializer())
        w1 = v1.get_variable("logits/kernel", [hidden, 3], initializer=v1.glorot_uniform_initializer(seed=2))
        b1 = v1.get_variable("logits/bias", [3], initializer=v1.zeros_initializer())
    logits = tf.matmul(tf.nn.relu(tf.matmul(x, w0) + b0), w1) + b1
    out = {"logits": logits, "global_step": global_step}
    if train:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=iris.y, logits=logits))
        out["train_op"] = v1.train.AdagradOptimizer(0.1).minimize(loss, global_step=global_step)
    return out


class FinalStep(v1.train.SessionRunHook):
    """Reads the global step when the session ends (the monitored session refuses runs after a stop)."""

    def begin(self) -> None:
        self.tensor = v1.train.get_global_step()

    def end(self, session: Any) -> None:
        self.step = int(session.run(self.tensor))


def train(store: Any, iris: Any, steps: int, hooks: list[Any], hidden: int = 10) -> int:
    """Runs ``steps`` steps (StopAtStepHook counts from the restored step); returns the final global step."""
    final = FinalStep()
    with tf.Graph().as_default():
        model = build(iris, hidden)
        all_hooks = [*hooks, v1.train.StopAtStepHook(num_steps=steps), final]
        with v1.train.MonitoredTrainingSession(hooks=all_hooks, checkpoint_dir=None) as sess:
            while not sess.should_stop():
                sess.run(model["train_op"])
    return final.step


def steps_in(store: Any) -> list[int]:
    return [info.step for info in store.list()]


def test_saves_on_schedule_and_resumes(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "run"))
    listener = Recorder()
    assert train(store, iris, 12, [StoreSaverHook(store, save_steps=5, listeners=[listener])]) == 12
    assert steps_in(store) == [0, 5, 10, 12]
    assert listener.saves == [0, 5, 10, 12] and listener.ended == 12
    names = set(store.restore())
    assert {"global_step", "dnn/hiddenlayer_0/kernel", "dnn/logits/bias"} <= names
    assert "dnn/hiddenlayer_0/kernel/Adagrad" in names  # optimizer slots are global variables too

    # A new session restores step 12 and counts its interval from there (SecondOrStepTimer semantics).
    resumed = Recorder()
    hook = StoreSaverHook(store, save_steps=5, listeners=[resumed])
    assert train(store, iris, 12, [hook]) == 24
    assert hook.restored_step == 12
    assert steps_in(store) == [0, 5, 10, 12, 17, 22, 24]
    assert resumed.saves == [12, 17, 22, 24]


def test_restored_values_are_the_saved_ones(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "run"))
    train(store, iris, 3, [StoreSaverHook(store, save_steps=100)])
    saved = store.restore()
    with tf.Graph().as_default():
        model = build(iris, train=False)
        hook = StoreRestoreHook(store)  # an inference graph: no optimizer slots, ignored in the checkpoint
        with v1.train.MonitoredSession(hooks=[hook]) as sess:
            variables = {v.op.name: v for v in v1.global_variables()}
            logits, step, values = sess.run([model["logits"], model["global_step"], variables])
    assert hook.restored_step == 3 and step == 3
    dense = ["dnn/hiddenlayer_0/kernel", "dnn/hiddenlayer_0/bias", "dnn/logits/kernel", "dnn/logits/bias"]
    assert set(dense) <= set(values) & set(saved)
    for name in set(values) & set(saved):  # bit for bit: every variable the graph has and the checkpoint holds
        np.testing.assert_array_equal(values[name], saved[name], err_msg=name)
    # And the graph computes with them. TF's kernels and numpy sum in different orders (which differ
    # between CPUs), so a logit near zero can differ by ~1e-7 absolute: hence atol.
    h = np.maximum(iris.x @ saved["dnn/hiddenlayer_0/kernel"] + saved["dnn/hiddenlayer_0/bias"], 0)
    np.testing.assert_allclose(logits, h @ saved["dnn/logits/kernel"] + saved["dnn/logits/bias"], rtol=1e-5, atol=1e-6)


def test_mismatched_model_is_refused_with_every_difference(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "run"))
    train(store, iris, 2, [StoreSaverHook(store)])
    with pytest.raises(CheckpointMismatch) as info:
        train(store, iris, 2, [StoreSaverHook(store)], hidden=20)
    names = {m.name for m in info.value.mismatches}
    assert names == {
        "dnn/hiddenlayer_0/kernel",
        "dnn/hiddenlayer_0/bias",
        "dnn/logits/kernel",
        "dnn/hiddenlayer_0/kernel/Adagrad",
        "dnn/hiddenlayer_0/bias/Adagrad",
        "dnn/logits/kernel/Adagrad",
    }
    assert all(m.kind == "shape" for m in info.value.mismatches)
    assert steps_in(store) == [0, 2]


def test_listener_stops_the_session(tmp_path: Any, iris: Any) -> None:
    store = CheckpointStore(str(tmp_path / "run"))
    stopper = Recorder(stop_at=4)
    assert train(store, iris, 50, [StoreSaverHook(store, save_steps=2, listeners=[stopper])]) == 4
    assert steps_in(store) == [0, 2, 4]
    assert stopper.ended == 4


def test_store_on_s3(model_dir: Any, iris: Any) -> None:
    store = CheckpointStore(model_dir.url, storage_options=model_dir.storage_options)
    train(store, iris, 3, [StoreSaverHook(store, save_steps=2)])
    assert train(store, iris, 2, [StoreSaverHook(store, save_steps=2)]) == 5
    assert steps_in(store) == [0, 2, 3, 5]
