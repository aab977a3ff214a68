"""The framework-agnostic saver hook, CheckpointLoop and restore_or_initialize, driven by plain loops.

Every test uses a fake clock (no sleeping) and an in-memory or temporary local store.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import numpy as np
import pytest

from ckptstore import CheckpointStore
from ckptstore.errors import CheckpointMismatch, CommitError
from ckptstore.hooks import CheckpointLoop, CheckpointSaverHook, SaveListener, restore_or_initialize
from ckptstore.policies import AtBegin, AtEnd, EveryNSeconds, EveryNSteps, any_of, from_run_config


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder(SaveListener):
    """Records every callback; asks to stop after the save of ``stop_at`` (if given)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.stop_at = stop_at

    def begin(self) -> None:
        self.events.append(("begin", None))

    def before_save(self, session: Any, step: int) -> None:
        self.events.append(("before_save", step))

    def after_save(self, session: Any, step: int) -> bool:
        self.events.append(("after_save", step))
        return self.stop_at is not None and step >= self.stop_at

    def end(self, session: Any, step: int) -> None:
        self.events.append(("end", step))

    def saves(self) -> list[int]:
        return [s for e, s in self.events if e == "after_save"]


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> CheckpointStore:
    if request.param == "memory":
        return CheckpointStore(f"memory://hooks-{uuid.uuid4().hex}")
    return CheckpointStore(tmp_path / "model")


def _params(value: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "dense/kernel": np.full((3, 2), value, np.float32),
        "dense/bias": np.full((2,), value, np.float32),
    }


def _steps(store: CheckpointStore) -> list[int]:
    return [info.step for info in store.list()]


def test_estimator_schedule_saves_at_begin_on_timer_and_at_end(store: CheckpointStore) -> None:
    """RunConfig's default policy: a save at session start, every 600 s, and at the end."""
    clock = FakeClock()
    params = _params()
    listener = Recorder()
    loop = CheckpointLoop(store, get_state=lambda: params, listeners=[listener], clock=clock)
    with loop.run(0):
        for step in range(1, 11):
            params = _params(step)
            clock.advance(100)  # a save is due once 600 s have passed since the last one
            assert not loop.step_done(step)
    assert _steps(store) == [0, 6, 10]
    assert listener.events[0] == ("begin", None)
    assert listener.events[-1] == ("end", 10)
    assert listener.saves() == [0, 6, 10]
    # Each save wrote the state as it was at that step (get_state is called at save time).
    assert store.restore(step=6)["dense/bias"][0] == 6.0


def test_step_policy_counts_from_the_last_save_and_final_save_is_not_repeated(store: CheckpointStore) -> None:
    policy = any_of(AtBegin(), EveryNSteps(4), AtEnd())
    loop = CheckpointLoop(store, policy, get_state=_params, clock=FakeClock())
    with loop.run(0):
        for step in range(1, 9):
            loop.step_done(step)
    # 8 was saved by the step policy, so the end does not save it again.
    assert _steps(store) == [0, 4, 8]


def test_before_run_predicts_the_save_without_changing_the_schedule(store: CheckpointStore) -> None:
    hook = CheckpointSaverHook(store, any_of(EveryNSteps(2)), get_state=_params, clock=FakeClock())
    hook.begin()
    hook.after_create_session(0)
    assert [hook.before_run(s) for s in (1, 2, 3)] == [False, True, True]
    assert _steps(store) == []
    assert hook.after_run(1) is False
    hook.after_run(2)
    assert _steps(store) == [2]
    assert hook.before_run(3) is False


def test_listener_returning_true_from_after_save_stops_the_loop(store: CheckpointStore) -> None:
    policy = any_of(AtBegin(), EveryNSteps(5), AtEnd())
    stopper, witness = Recorder(stop_at=10), Recorder()
    loop = CheckpointLoop(store, policy, get_state=_params, listeners=[stopper, witness], clock=FakeClock())
    last = None
    with loop.run(0):
        for step in range(1, 100):
            last = step
            if loop.step_done(step):
                break
    assert last == 10 and loop.should_stop
    assert _steps(store) == [0, 5, 10]
    # Every listener hears about the save that triggered the stop, and the end.
    assert witness.saves() == [0, 5, 10] and witness.events[-1] == ("end", 10)


def test_no_final_save_when_the_loop_raises(store: CheckpointStore) -> None:
    listener = Recorder()
    loop = CheckpointLoop(store, get_state=_params, listeners=[listener], clock=FakeClock())
    with pytest.raises(RuntimeError, match="diverged"):
        with loop.run(0):
            loop.step_done(1)
            raise RuntimeError("diverged")
    assert _steps(store) == [0]
    assert ("end", 1) not in listener.events


def test_restore_or_initialize_resumes_from_the_latest_checkpoint(store: CheckpointStore) -> None:
    clock = FakeClock()
    policy = any_of(AtBegin(), EveryNSteps(3), AtEnd())
    init_calls = itertools.count()

    def init() -> dict[str, np.ndarray]:
        next(init_calls)
        return _params(-1.0)

    def train(until: int, listener: Recorder) -> dict[str, np.ndarray]:
        resumed = restore_or_initialize(store, init)
        params = resumed.state
        loop = CheckpointLoop(store, policy, get_state=lambda: params, listeners=[listener], clock=clock)
        with loop.run(resumed.step, restored=resumed.restored):
            for step in range(resumed.step + 1, until + 1):
                params = {k: v + 1 for k, v in params.items()}
                loop.step_done(step)
        return params

    first, second = Recorder(), Recorder()
    params = train(5, first)
    assert _steps(store) == [0, 3, 5]
    assert params["dense/kernel"][0, 0] == 4.0  # -1 + 5 steps
    params = train(9, second)
    # The second run resumed at 5 with the saved values and counted its interval from there.
    assert _steps(store) == [0, 3, 5, 8, 9]
    assert params["dense/kernel"][0, 0] == 8.0
    # The resumed checkpoint is not rewritten, but listeners still hear of it, as Estimator does.
    assert second.saves() == [5, 8, 9]
    r = restore_or_initialize(store, init)
    assert r.restored and r.step == 9 and r.info.step == 9
    np.testing.assert_array_equal(r.state["dense/bias"], np.full((2,), 8.0, np.float32))


def test_restore_or_initialize_initializes_an_empty_store(store: CheckpointStore) -> None:
    r = restore_or_initialize(store, lambda: _params(7.0), initial_step=0)
    assert not r.restored and r.step == 0 and r.info is None
    assert r.state["dense/bias"][1] == 7.0


def test_restore_or_initialize_reports_every_mismatch_and_keeps_the_checkpoints(
    store: CheckpointStore,
) -> None:
    """The seeds' bad restore in miniature: a wider model must not load the narrower checkpoint."""
    store.save(
        200,
        {
            "hidden/kernel": np.zeros((4, 10), np.float32),
            "hidden/bias": np.zeros(10, np.float32),
            "old/extra": np.zeros(1),
        },
    )
    wider = {
        "hidden/kernel": np.zeros((4, 20), np.float32),
        "hidden/bias": np.zeros(20, np.float32),
        "new/thing": np.zeros(3, np.float64),
    }
    with pytest.raises(CheckpointMismatch) as info:
        restore_or_initialize(store, lambda: wider)
    kinds = {(m.name, m.kind) for m in info.value.mismatches}
    assert kinds == {
        ("hidden/kernel", "shape"),
        ("hidden/bias", "shape"),
        ("new/thing", "missing"),
        ("old/extra", "unexpected"),
    }
    kernel = next(m for m in info.value.mismatches if m.name == "hidden/kernel")
    assert "4, 10" in kernel.checkpoint and "4, 20" in kernel.model  # both shapes, in the message too
    assert kernel.checkpoint in str(info.value) and kernel.model in str(info.value)
    assert _steps(store) == [200]


def test_restore_or_initialize_checks_against_like_without_initializing(store: CheckpointStore) -> None:
    store.save(3, _params(3.0))

    def must_not_run() -> dict[str, np.ndarray]:
        raise AssertionError("initialize() called although like= was given")

    spec = {k: np.empty(v.shape, v.dtype) for k, v in _params().items()}
    r = restore_or_initialize(store, must_not_run, like=spec)
    assert r.step == 3 and r.state["dense/kernel"][2, 1] == 3.0


def test_restore_or_initialize_reads_into_the_initialized_arrays(store: CheckpointStore) -> None:
    """No second copy of the model: the checkpoint lands in the arrays initialize() just built —
    unless they cannot be written in place, or the caller says in_place=False."""
    store.save(4, _params(4.0))
    built: list[dict[str, np.ndarray]] = []

    def init() -> dict[str, np.ndarray]:
        built.append(_params(-1.0))
        return built[-1]

    r = restore_or_initialize(store, init)
    assert all(r.state[k] is v for k, v in built[-1].items())
    assert built[-1]["dense/kernel"][0, 0] == 4.0 and store.last_restore_stats.mode == "into"

    r = restore_or_initialize(store, init, in_place=False)
    assert not any(r.state[k] is v for k, v in built[-1].items())
    assert built[-1]["dense/kernel"][0, 0] == -1.0 and r.state["dense/kernel"][0, 0] == 4.0

    def read_only() -> dict[str, np.ndarray]:
        params = _params(-1.0)
        params["dense/bias"].setflags(write=False)
        built.append(params)
        return params

    r = restore_or_initialize(store, read_only)  # one array cannot take it: all read fresh, as before
    assert store.last_restore_stats.mode == "read" and built[-1]["dense/kernel"][0, 0] == -1.0
    assert r.state["dense/bias"][0] == 4.0


def test_a_fresh_run_does_not_silently_skip_an_existing_step(store: CheckpointStore) -> None:
    """Only a state known to be the stored one is not rewritten; any other collision is an error."""
    store.save(0, _params(1.0))
    loop = CheckpointLoop(store, get_state=_params, clock=FakeClock())
    with pytest.raises(CommitError):
        loop.start(0)


def test_metadata_and_forced_save(store: CheckpointStore) -> None:
    hook = CheckpointSaverHook(
        store,
        any_of(),
        get_state=_params,
        metadata=lambda step: {"loss": 1.0 / (step + 1)},
        clock=FakeClock(),
    )
    hook.begin()
    hook.after_create_session(0)
    assert _steps(store) == []  # any_of() never saves
    hook.save(4)
    assert store.latest().metadata == {"loss": 0.2}
    assert hook.last_saved.step == 4
    hook.end(4)
    assert _steps(store) == [4]


def test_run_config_policy_drives_the_hook(store: CheckpointStore) -> None:
    """from_run_config's save policy (the seeds' 20-minute schedule) works unchanged in a plain loop."""
    save, _ = from_run_config(save_checkpoints_secs=20 * 60, keep_checkpoint_max=10)
    clock = FakeClock()
    loop = CheckpointLoop(store, save, get_state=_params, clock=clock)
    with loop.run(0):
        for step in range(1, 6):
            clock.advance(5 * 60)
            loop.step_done(step)
    assert _steps(store) == [0, 4, 5]
    assert isinstance(save, type(any_of(EveryNSeconds(1.0))))
