"""The seeds (TF's checkpoint guide for Estimators) replayed with the store as model_dir.

Needs ``tf.estimator`` (TF 2.15 with tensorflow-estimator); skipped on TF >= 2.16, where the
``test_session`` tests cover the same hooks through ``tf.compat.v1.train.MonitoredTrainingSession``.
Step counts are tiny: the schedule, not the learning, is under test.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_estimator")

import ckptstore_tensorflow as cst  # noqa: E402

from ckptstore import policies  # noqa: E402
from ckptstore.errors import CheckpointMismatch  # noqa: E402

MODEL_VARIABLES = [
    "dnn/hiddenlayer_0/kernel",
    "dnn/hiddenlayer_0/bias",
    "dnn/hiddenlayer_1/kernel",
    "dnn/hiddenlayer_1/bias",
    "dnn/logits/kernel",
    "dnn/logits/bias",
]


class Recorder(tf.compat.v1.train.CheckpointSaverListener):
    """Records Estimator's listener calls; asks to stop after the save of ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple[str, int | None]] = []
        self.stop_at = stop_at

    def begin(self) -> None:
        self.events.append(("begin", None))

    def before_save(self, session: Any, step: int) -> None:
        self.events.append(("before_save", int(step)))

    def after_save(self, session: Any, step: int) -> bool:
        self.events.append(("after_save", int(step)))
        return self.stop_at is not None and step >= self.stop_at

    def end(self, session: Any, step: int) -> None:
        self.events.append(("end", int(step)))


def feature_columns() -> list[Any]:
    return [tf.feature_column.numeric_column(f"x{i}") for i in range(4)]


def train_input_fn(iris: Any, batch_size: int = 32) -> Any:
    def input_fn() -> Any:
        ds = tf.data.Dataset.from_tensor_slices((iris.features, iris.y))
        return ds.shuffle(len(iris.y), seed=0).repeat().batch(batch_size)

    return input_fn


def eval_input_fn(iris: Any, labels: bool = True) -> Any:
    def input_fn() -> Any:
        data = (iris.features, iris.y) if labels else iris.features
        return tf.data.Dataset.from_tensor_slices(data).batch(len(iris.y))

    return input_fn


def classifier(model_dir: Any, hidden_units: list[int], config: Any = None) -> cst.StoreEstimator:
    """The guide's DNNClassifier, with the one-line change that puts its checkpoints in a store."""
    return cst.estimator(
        tf.estimator.DNNClassifier,
        feature_columns=feature_columns(),
        hidden_units=hidden_units,
        n_classes=3,
        model_dir=model_dir.url,
        storage_options=model_dir.storage_options,
        config=config,
    )


def steps_in(store: Any) -> list[int]:
    return [info.step for info in store.list()]


def forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """DNNClassifier's forward pass in numpy (features enter sorted by column name: x0..x3)."""
    h = x
    for layer in ("hiddenlayer_0", "hiddenlayer_1"):
        h = np.maximum(h @ weights[f"dnn/{layer}/kernel"] + weights[f"dnn/{layer}/bias"], 0.0)
    logits = h @ weights["dnn/logits/kernel"] + weights["dnn/logits/bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_seed_train_resume_evaluate_predict(model_dir: Any, iris: Any) -> None:
    """RunConfig(20 min, keep 10): saves at start and end; a second train() resumes; eval/predict restore."""
    config = tf.estimator.RunConfig(save_checkpoints_secs=20 * 60, keep_checkpoint_max=10)
    clf = classifier(model_dir, [10, 10], config)
    first = Recorder()
    clf.train(train_input_fn(iris), steps=10, saving_listeners=[first])
    # Within 20 minutes the timer never fires: one save at session creation, one at the end.
    assert steps_in(clf.store) == [0, 10]
    assert first.events == [
        ("begin", None),
        ("before_save", 0),
        ("after_save", 0),
        ("before_save", 10),
        ("after_save", 10),
        ("end", 10),
    ]
    saved = clf.store.restore()
    assert set(MODEL_VARIABLES) <= set(saved)
    assert {f"training/Adagrad/{n}/accumulator" for n in MODEL_VARIABLES} <= set(saved)
    assert int(saved["global_step"]) == 10
    # Estimator adopted the store's hook as its only saver: no TF checkpoint was written anywhere.
    assert not tf.io.gfile.glob(os.path.join(clf.estimator.model_dir, "model.ckpt*"))
    assert tf.train.latest_checkpoint(clf.estimator.model_dir) is None

    # A second train() (a new graph and session) continues from the latest step, as the guide says.
    second = Recorder()
    clf.train(train_input_fn(iris), steps=10, saving_listeners=[second])
    assert steps_in(clf.store) == [0, 10, 20]
    assert [e for e in second.events if e[0] == "after_save"] == [("after_save", 10), ("after_save", 20)]
    weights = clf.store.restore()
    assert not np.array_equal(weights["dnn/logits/kernel"], saved["dnn/logits/kernel"])

    # evaluate and predict build fresh graphs; they see the store's weights, not a fresh initialization.
    metrics = clf.evaluate(eval_input_fn(iris), steps=1)
    assert metrics["global_step"] == 20
    predictions = list(clf.predict(eval_input_fn(iris, labels=False)))
    probabilities = np.stack([p["probabilities"] for p in predictions])
    np.testing.assert_allclose(probabilities, forward(weights, iris.x), rtol=1e-4, atol=1e-5)
    expected_accuracy = np.mean(np.argmax(forward(weights, iris.x), axis=1) == iris.y)
    assert metrics["accuracy"] == pytest.approx(expected_accuracy, abs=1e-6)


def test_bad_restore_lists_every_mismatched_variable(model_dir: Any, iris: Any) -> None:
    """The guide's [10,10] -> [20,20] change fails with every mismatch, optimizer slots included."""
    config = tf.estimator.RunConfig(save_checkpoints_secs=20 * 60, keep_checkpoint_max=10)
    classifier(model_dir, [10, 10], config).train(train_input_fn(iris), steps=3)
    clf2 = classifier(model_dir, [20, 20], config)
    with pytest.raises(CheckpointMismatch) as info:
        clf2.train(train_input_fn(iris), steps=3)
    found = {m.name: (m.kind, m.checkpoint, m.model) for m in info.value.mismatches}
    changed = [n for n in MODEL_VARIABLES if n != "dnn/logits/bias"]
    expected = changed + [f"training/Adagrad/{n}/accumulator" for n in changed]
    assert sorted(found) == sorted(expected)
    assert found["dnn/hiddenlayer_0/kernel"] == ("shape", "[4, 10]", "[4, 20]")
    assert found["training/Adagrad/dnn/hiddenlayer_1/kernel/accumulator"] == ("shape", "[10, 10]", "[20, 20]")
    message = str(info.value)
    assert all(name in message for name in expected)
    # Nothing was saved by the failed run: the [10,10] checkpoints are intact and still the latest.
    assert steps_in(clf2.store) == [0, 3]
    # Evaluation has no optimizer slots: it reports the model variables only.
    with pytest.raises(CheckpointMismatch) as info:
        clf2.evaluate(eval_input_fn(iris), steps=1)
    assert sorted(m.name for m in info.value.mismatches) == sorted(changed)


def test_listener_stops_training_from_after_save(tmp_path: Any, iris: Any) -> None:
    config = tf.estimator.RunConfig(save_checkpoints_steps=3)
    clf = cst.estimator(
        tf.estimator.DNNClassifier,
        feature_columns=feature_columns(),
        hidden_units=[10, 10],
        n_classes=3,
        model_dir=str(tmp_path / "stop"),
        config=config,
    )
    stopper = Recorder(stop_at=6)
    clf.train(train_input_fn(iris), steps=100, saving_listeners=[stopper])
    assert steps_in(clf.store) == [0, 3, 6]
    assert int(clf.store.restore(names=["global_step"])["global_step"]) == 6
    assert stopper.events[-1] == ("end", 6)


def test_no_model_dir_uses_a_reported_temporary_directory(
    iris: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the default lands where pytest cleans up
    with caplog.at_level(logging.WARNING):
        clf = cst.estimator(
            tf.estimator.DNNClassifier, feature_columns=feature_columns(), hidden_units=[10, 10], n_classes=3
        )
    assert clf.model_dir.startswith(f"{tmp_path}/ckptstore-")
    assert any(clf.model_dir in record.getMessage() for record in caplog.records)
    # Estimator writes its event files to the same local directory, as it would on its own.
    assert clf.estimator.model_dir == clf.model_dir
    clf.train(train_input_fn(iris), steps=2)
    assert steps_in(clf.store) == [0, 2]
    assert os.path.isdir(clf.model_dir)


def test_max_steps_already_reached_skips_training(tmp_path: Any, iris: Any) -> None:
    clf = cst.estimator(
        tf.estimator.DNNClassifier,
        feature_columns=feature_columns(),
        hidden_units=[10, 10],
        n_classes=3,
        model_dir=str(tmp_path / "max"),
    )
    clf.train(train_input_fn(iris), max_steps=4)
    clf.train(train_input_fn(iris), max_steps=4)
    assert steps_in(clf.store) == [0, 4]


def test_run_config_bridge_maps_every_setting(tmp_path: Any) -> None:
    config = tf.estimator.RunConfig(
        model_dir=str(tmp_path / "bridge"),
        save_checkpoints_steps=7,
        keep_checkpoint_max=3,
        keep_checkpoint_every_n_hours=2,
    )
    c = cst.from_run_config(config)
    assert (c.save_policy, c.retention) == policies.from_run_config(
        save_checkpoints_secs=None,
        save_checkpoints_steps=7,
        keep_checkpoint_max=3,
        keep_checkpoint_every_n_hours=2,
    )
    assert c.store.model_dir == str(tmp_path / "bridge") and c.local_dir == c.store.model_dir
    default = cst.from_run_config(tf.estimator.RunConfig(model_dir=str(tmp_path / "default")))
    assert default.save_policy == policies.from_run_config()[0]
    assert default.retention == policies.KeepMax(5, every_n_hours=10000)


def test_hooks_alone_with_a_plain_estimator(tmp_path: Any, iris: Any) -> None:
    """Without the wrapper: Estimator adopts StoreSaverHook from hooks= and attaches saving_listeners."""
    from ckptstore import CheckpointStore

    store = CheckpointStore(str(tmp_path / "store"))
    est = tf.estimator.DNNClassifier(
        feature_columns=feature_columns(),
        hidden_units=[10, 10],
        n_classes=3,
        model_dir=str(tmp_path / "events"),
    )
    listener = Recorder()
    est.train(
        train_input_fn(iris),
        steps=4,
        hooks=[cst.StoreSaverHook(store, save_steps=2)],
        saving_listeners=[listener],
    )
    assert steps_in(store) == [0, 2, 4]
    assert [s for e, s in listener.events if e == "after_save"] == [0, 2, 4]
    assert tf.train.latest_checkpoint(str(tmp_path / "events")) is None
    metrics = est.evaluate(eval_input_fn(iris), steps=1, hooks=[cst.StoreRestoreHook(store)])
    assert metrics["global_step"] == 4


def test_keep_checkpoint_max_is_enforced_by_the_store(tmp_path: Any, iris: Any) -> None:
    config = tf.estimator.RunConfig(save_checkpoints_steps=2, keep_checkpoint_max=2)
    clf = cst.estimator(
        tf.estimator.DNNClassifier,
        feature_columns=feature_columns(),
        hidden_units=[10, 10],
        n_classes=3,
        model_dir=str(tmp_path / "keep"),
        config=config,
    )
    clf.train(train_input_fn(iris), steps=7)
    assert steps_in(clf.store) == [6, 7]
