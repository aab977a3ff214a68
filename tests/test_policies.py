"""Save and retention policies: table-driven with a fake clock, plus property tests against reference
algorithms written here from TF's documented behaviour (``SecondOrStepTimer`` +
``CheckpointSaverHook``, ``tf.train.CheckpointManager``). No I/O."""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptstore.errors import FormatError
from ckptstore.policies import (
    AnyRetention,
    AnySave,
    AtBegin,
    AtEnd,
    AtSteps,
    CheckpointRecord,
    EveryNSeconds,
    EveryNSteps,
    KeepBest,
    KeepEveryNSteps,
    KeepMax,
    KeepSteps,
    MaxAge,
    RetentionPolicy,
    RetentionState,
    SaveContext,
    any_of,
    from_run_config,
)

HOUR = 3600.0


def ctx(step: int, now: float, last: tuple[int, float] | None = None, **kw: bool) -> SaveContext:
    return SaveContext(
        step,
        now,
        last_saved_step=None if last is None else last[0],
        last_saved_time=None if last is None else last[1],
        **kw,
    )


# --------------------------------------------------------------------------------------------------
# save policies, one table per policy


@pytest.mark.parametrize(
    "context, expected",
    [
        (ctx(0, 0.0), True),  # nothing triggered yet: fire (SecondOrStepTimer)
        (ctx(5, 100.0, last=(0, 0.0)), False),
        (ctx(5, 599.9, last=(0, 0.0)), False),
        (ctx(5, 600.0, last=(0, 0.0)), True),  # >=, not >
        (ctx(5, 900.0, last=(0, 0.0)), True),
        (ctx(0, 900.0, last=(0, 0.0)), False),  # never twice for the same step
        (ctx(7, 1300.0, last=(5, 700.0)), True),
    ],
)
def test_every_n_seconds(context: SaveContext, expected: bool) -> None:
    assert EveryNSeconds(600).should_save(context) is expected


def test_every_n_seconds_defaults_to_600() -> None:
    assert EveryNSeconds().seconds == 600


@pytest.mark.parametrize(
    "context, expected",
    [
        (ctx(0, 0.0), True),
        (ctx(99, 0.0, last=(0, 0.0)), False),
        (ctx(100, 0.0, last=(0, 0.0)), True),
        (ctx(250, 0.0, last=(0, 0.0)), True),  # a skipped boundary still fires
        (ctx(1334, 0.0, last=(1234, 0.0)), True),  # counts from the restored step, not step % n
        (ctx(1300, 0.0, last=(1234, 0.0)), False),
        (ctx(1234, 1e9, last=(1234, 0.0)), False),
    ],
)
def test_every_n_steps(context: SaveContext, expected: bool) -> None:
    assert EveryNSteps(100).should_save(context) is expected


@pytest.mark.parametrize(
    "policy, context, expected",
    [
        (AtBegin(), ctx(7, 0.0, last=(7, 0.0), is_begin=True), True),
        (AtBegin(), ctx(8, 1.0, last=(7, 0.0)), False),
        (AtEnd(), ctx(9, 5.0, last=(7, 0.0), is_end=True), True),
        (AtEnd(), ctx(7, 5.0, last=(7, 0.0), is_end=True), False),  # nothing ran since the last trigger
        (AtEnd(), ctx(9, 5.0, last=(7, 0.0)), False),
        (AtSteps([10, 20]), ctx(10, 0.0, last=(9, 0.0)), True),
        (AtSteps([10, 20]), ctx(12, 0.0, last=(9, 0.0)), True),  # passed 10 in one multi-step run
        (AtSteps([10, 20]), ctx(12, 0.0, last=(10, 0.0)), False),
        (AtSteps([10, 20]), ctx(10, 0.0, last=(10, 0.0)), False),
        (AtSteps([10, 20]), ctx(10, 0.0), True),
        (AtSteps([10, 20]), ctx(11, 0.0), False),
        (AtSteps([]), ctx(11, 0.0, last=(0, 0.0)), False),
    ],
)
def test_event_policies(policy: object, context: SaveContext, expected: bool) -> None:
    assert policy.should_save(context) is expected  # type: ignore[attr-defined]


def test_any_of_save_policies() -> None:
    policy = any_of(AtBegin(), any_of(EveryNSteps(10), AtEnd()))
    assert isinstance(policy, AnySave)
    assert len(policy.policies) == 3  # flattened
    assert policy.should_save(ctx(3, 0.0, last=(3, 0.0), is_begin=True))
    assert policy.should_save(ctx(13, 0.0, last=(3, 0.0)))
    assert not policy.should_save(ctx(12, 0.0, last=(3, 0.0)))
    assert policy.should_save(ctx(12, 0.0, last=(3, 0.0), is_end=True))
    assert not any_of().should_save(ctx(0, 0.0))


def test_any_of_rejects_mixtures() -> None:
    with pytest.raises(TypeError):
        any_of(AtBegin(), KeepMax(3))
    with pytest.raises(TypeError):
        any_of(42)


@pytest.mark.parametrize(
    "make",
    [
        lambda: EveryNSeconds(0),
        lambda: EveryNSeconds(-1),
        lambda: EveryNSeconds(math.inf),
        lambda: EveryNSteps(0),
        lambda: EveryNSteps(-5),
        lambda: EveryNSteps(2.5),
        lambda: EveryNSteps(True),
        lambda: AtSteps([3, -1]),
        lambda: SaveContext(-1, 0.0),
        lambda: SaveContext(1, math.nan),
        lambda: SaveContext(1, 0.0, last_saved_step=0),
        lambda: SaveContext(1, 0.0, last_saved_time=0.0),
    ],
)
def test_save_arguments_are_validated(make) -> None:
    with pytest.raises(ValueError):
        make()


# --------------------------------------------------------------------------------------------------
# SecondOrStepTimer + CheckpointSaverHook reference


class RefTimer:
    """``SecondOrStepTimer`` as documented, with the clock passed in."""

    def __init__(self, every_secs: float | None, every_steps: int | None):
        assert (every_secs is None) != (every_steps is None)
        self.every_secs, self.every_steps = every_secs, every_steps
        self.last_step: int | None = None
        self.last_time: float | None = None

    def should_trigger_for_step(self, step: int, now: float) -> bool:
        if self.last_step is None:
            return True
        if self.last_step == step:
            return False
        if self.every_secs is not None and now >= self.last_time + self.every_secs:  # type: ignore[operator]
            return True
        return self.every_steps is not None and step >= self.last_step + self.every_steps

    def update_last_triggered_step(self, step: int, now: float) -> None:
        self.last_step, self.last_time = step, now


@dataclass
class Session:
    """One training session: it restores ``start_step``; ``runs`` are (step after the run, clock)."""

    start_step: int
    start_time: float
    runs: list[tuple[int, float]] = field(default_factory=list)
    end_time: float = 0.0

    @property
    def final_step(self) -> int:
        return self.runs[-1][0] if self.runs else self.start_step


def reference_saves(every_secs: float | None, every_steps: int | None, sessions: Sequence[Session]) -> list:
    """Steps a ``CheckpointSaverHook`` saves: after_create_session, after_run, end."""
    saves = []
    for s in sessions:
        timer = RefTimer(every_secs, every_steps)  # a fresh hook per session
        saves.append(("begin", s.start_step))
        timer.update_last_triggered_step(s.start_step, s.start_time)
        for step, now in s.runs:
            if timer.should_trigger_for_step(step, now):
                timer.update_last_triggered_step(step, now)
                saves.append(("run", step))
        if s.final_step != timer.last_step:
            saves.append(("end", s.final_step))
    return saves


def policy_saves(policy: object, sessions: Sequence[Session]) -> list:
    """The same sessions driven through the protocol of the policies module docstring."""
    saves = []
    for s in sessions:
        last = (s.start_step, s.start_time)  # a new session counts from the restored step
        if policy.should_save(ctx(s.start_step, s.start_time, last=last, is_begin=True)):  # type: ignore[attr-defined]
            saves.append(("begin", s.start_step))
            last = (s.start_step, s.start_time)
        for step, now in s.runs:
            if policy.should_save(ctx(step, now, last=last)):  # type: ignore[attr-defined]
                saves.append(("run", step))
                last = (step, now)
        if policy.should_save(ctx(s.final_step, s.end_time, last=last, is_end=True)):  # type: ignore[attr-defined]
            saves.append(("end", s.final_step))
    return saves


def _steady(start_step: int, start_time: float, n: int, dt: float, end_extra: float = 0.0) -> Session:
    runs = [(start_step + i, start_time + i * dt) for i in range(1, n + 1)]
    return Session(start_step, start_time, runs, (runs[-1][1] if runs else start_time) + end_extra)


TIMER_TABLE = [
    # (every_secs, every_steps, sessions, expected saves)
    (600, None, [_steady(0, 0.0, 10, 100.0)], [("begin", 0), ("run", 6), ("end", 10)]),
    (600, None, [_steady(0, 0.0, 12, 100.0)], [("begin", 0), ("run", 6), ("run", 12)]),
    (600, None, [_steady(0, 0.0, 0, 1.0)], [("begin", 0)]),  # no step ran: no end save
    (None, 3, [_steady(0, 0.0, 7, 1.0)], [("begin", 0), ("run", 3), ("run", 6), ("end", 7)]),
    # restart at 7: counting starts from the restored step, not from step % 3
    (
        None,
        3,
        [_steady(0, 0.0, 7, 1.0), _steady(7, 50.0, 4, 1.0)],
        [("begin", 0), ("run", 3), ("run", 6), ("end", 7), ("begin", 7), ("run", 10), ("end", 11)],
    ),
    # multi-step runs jump over boundaries; the step that triggered is remembered
    (
        None,
        10,
        [Session(0, 0.0, [(4, 1.0), (12, 2.0), (20, 3.0), (22, 4.0), (35, 5.0)], 6.0)],
        [("begin", 0), ("run", 12), ("run", 22), ("run", 35)],
    ),
    # the same step twice (racy global step) never saves twice
    (
        1,
        None,
        [Session(0, 0.0, [(1, 5.0), (1, 10.0), (2, 20.0)], 30.0)],
        [("begin", 0), ("run", 1), ("run", 2)],
    ),
]


@pytest.mark.parametrize("secs, steps, sessions, expected", TIMER_TABLE)
def test_second_or_step_timer_table(secs, steps, sessions, expected) -> None:
    assert reference_saves(secs, steps, sessions) == expected
    periodic = EveryNSeconds(secs) if secs is not None else EveryNSteps(steps)
    assert policy_saves(any_of(AtBegin(), periodic, AtEnd()), sessions) == expected


@st.composite
def sessions_strategy(draw) -> list[Session]:
    sessions = []
    step, now = draw(st.integers(0, 50)), draw(st.floats(0, 1e4))
    for _ in range(draw(st.integers(1, 3))):
        runs = []
        for _ in range(draw(st.integers(0, 25))):
            step += draw(st.integers(0, 4))  # 0: the racy repeated step
            now += draw(st.sampled_from([0.0, 0.5, 1.0, 7.0, 30.0, 59.9, 60.0, 61.0, 200.0]))
            runs.append((step, now))
        end = now + draw(st.floats(0, 100))
        sessions.append(Session(sessions[-1].final_step if sessions else step, now, runs, end))
        now = end + draw(st.floats(0, 1000))
    return sessions


@settings(max_examples=300, deadline=None)
@given(
    sessions=sessions_strategy(),
    secs=st.one_of(st.none(), st.sampled_from([1.0, 30.0, 60.0, 600.0])),
    steps=st.integers(1, 12),
)
def test_second_or_step_timer_matches_reference(sessions, secs, steps) -> None:
    every_steps = None if secs is not None else steps
    periodic = EveryNSeconds(secs) if secs is not None else EveryNSteps(steps)
    expected = reference_saves(secs, every_steps, sessions)
    assert policy_saves(any_of(AtBegin(), periodic, AtEnd()), sessions) == expected


# --------------------------------------------------------------------------------------------------
# retention tables


def recs(*items: tuple[int, float] | tuple[int, float, dict]) -> list[CheckpointRecord]:
    return [CheckpointRecord(*item) for item in items]  # type: ignore[arg-type]


def select(policy: RetentionPolicy, records, now: float = 1e6, state=None, protected=frozenset()):
    return policy.select(records, state or RetentionState.start(0.0), now, frozenset(protected))


RETENTION_TABLE = [
    # (policy, records, now, protected, expected kept)
    (KeepMax(3), recs((1, 1), (2, 2), (3, 3), (4, 4), (5, 5)), 10, (), {3, 4, 5}),
    (KeepMax(3), recs((5, 5), (1, 1), (3, 3)), 10, (), {1, 3, 5}),  # any order in
    (KeepMax(None), recs((1, 1), (2, 2), (3, 3)), 10, (), {1, 2, 3}),
    (KeepMax(1), recs((1, 1), (2, 2), (3, 3)), 10, {1}, {1, 3}),  # pinned
    (KeepMax(1), recs((1, 1), (2, 2), (3, 3)), 10, {2, 99}, {2, 3}),  # unknown protected steps ignored
    (KeepMax(1), recs(), 10, (), set()),
    (
        KeepBest(2, "loss"),
        recs((1, 1, {"loss": 0.5}), (2, 2, {"loss": 0.1}), (3, 3, {}), (4, 4, {"loss": 0.3})),
        10,
        (),
        {2, 4},
    ),
    (
        KeepBest(2, "acc", "max"),
        recs((1, 1, {"acc": 0.9}), (2, 2, {"acc": 0.1}), (3, 3, {"acc": 0.95}), (4, 4, {"acc": 0.2})),
        10,
        (),
        {1, 3},
    ),
    # missing / NaN / bool / string metrics are never kept by KeepBest, even if fewer than n are measured
    (
        KeepBest(3, "loss"),
        recs(
            (1, 1, {"loss": math.nan}),
            (2, 2, {"loss": True}),
            (3, 3, {"loss": "0.1"}),
            (4, 4, {"loss": 0.7}),
            (5, 5, {}),
        ),
        10,
        (),
        {4},
    ),
    # ties prefer the newer step
    (KeepBest(1, "loss"), recs((1, 1, {"loss": 0.2}), (2, 2, {"loss": 0.2})), 10, (), {2}),
    # ...and other rules keep what KeepBest does not
    (
        any_of(KeepMax(1), KeepBest(1, "loss")),
        recs((1, 1, {"loss": 0.1}), (2, 2, {"loss": 0.5}), (3, 3, {})),
        10,
        (),
        {1, 3},
    ),
    (MaxAge(100), recs((1, 0), (2, 50), (3, 150)), 200, (), {3}),
    (MaxAge(150), recs((1, 0), (2, 50), (3, 150)), 200, (), {2, 3}),  # age == limit is kept
    (any_of(KeepMax(2), MaxAge(10)), recs((1, 0), (2, 50), (3, 150)), 10_000, (), {2, 3}),
    (KeepSteps([2, 7]), recs((1, 1), (2, 2), (3, 3)), 10, (), {2}),
    (any_of(KeepMax(1), KeepSteps([1])), recs((1, 1), (2, 2), (3, 3)), 10, (), {1, 3}),
    (KeepEveryNSteps(100), recs((100, 1), (150, 2), (200, 3), (250, 4)), 10, (), {100, 200}),
    (MaxAge(1), recs((1, 0), (2, 1)), 1000, {2}, {2}),  # LATEST protected whatever the policy
]


@pytest.mark.parametrize("policy, records, now, protected, expected", RETENTION_TABLE)
def test_retention_table(policy, records, now, protected, expected) -> None:
    decision = select(policy, records, now=now, protected=protected)
    assert decision.keep == frozenset(expected)
    assert decision.delete == tuple(sorted({r.step for r in records} - set(expected)))


def test_keep_every_n_hours_basic() -> None:
    # keep 2 newest; one per hour preserved; saves every 20 minutes for 3 hours
    policy = KeepMax(2, every_n_hours=1)
    state = RetentionState.start(0.0)  # schedule starts at -1 s
    records: list[CheckpointRecord] = []
    for i in range(1, 10):
        records.append(CheckpointRecord(i, i * 1200.0))
        decision = policy.select(records, state, i * 1200.0, frozenset({i}))
        records = [r for r in records if r.step in decision.keep]
        state = decision.state
    # t=1200 (step 1) - 3600 < -1: deleted; step 3 (t=3600) >= -1+3600: preserved; step 6 (7200): yes
    assert {r.step for r in records} == {3, 6, 8, 9}
    assert state.preserved == {3, 6}
    assert state.last_preserved_time == 7200.0


def test_preserved_steps_are_never_deleted_even_if_the_policy_changes() -> None:
    state = RetentionState(last_preserved_time=100.0, preserved=frozenset({1}))
    decision = select(KeepMax(1), recs((1, 1), (2, 2), (3, 3)), state=state)
    assert decision.keep == {1, 3}
    assert decision.state.preserved == {1}
    # a preserved checkpoint deleted by hand drops out of the state
    decision = select(KeepMax(1), recs((2, 2), (3, 3)), state=state)
    assert decision.state.preserved == frozenset()


def test_unknown_state_is_conservative() -> None:
    """LATEST lost: checkpoints already outside the window may have been preserved, so keep them."""
    records = recs((1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0))
    decision = KeepMax(2, every_n_hours=1).select(records, RetentionState(), 5.0, frozenset())
    assert decision.keep == {1, 2, 3, 4}
    assert decision.state.preserved == {1, 2}
    assert decision.state.last_preserved_time == 2.0
    # without a schedule nothing is at stake: plain keep_max, and the schedule start gets recorded
    decision = KeepMax(2).select(records, RetentionState(), 5.0, frozenset())
    assert decision.keep == {3, 4}
    assert decision.state.last_preserved_time == 0.0


def test_duplicate_steps_are_rejected() -> None:
    with pytest.raises(ValueError, match="step 2"):
        select(KeepMax(3), recs((2, 1), (2, 2)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: KeepMax(0),
        lambda: KeepMax(-1),
        lambda: KeepMax(2, every_n_hours=0),
        lambda: KeepMax(2, every_n_hours=-3),
        lambda: KeepBest(0, "loss"),
        lambda: KeepBest(1, ""),
        lambda: KeepBest(1, "loss", "median"),  # type: ignore[arg-type]
        lambda: MaxAge(0),
        lambda: KeepSteps([-1]),
        lambda: KeepEveryNSteps(0),
        lambda: CheckpointRecord(-1, 0.0),
        lambda: CheckpointRecord(1, math.inf),
        lambda: any_of(KeepMax(1, every_n_hours=1), KeepMax(5, every_n_hours=2)),
    ],
)
def test_retention_arguments_are_validated(make) -> None:
    with pytest.raises(ValueError):
        make()


def test_state_round_trips_through_msgpack_and_json() -> None:
    state = RetentionState(last_preserved_time=12.5, preserved=frozenset({3, 1}), clamped_times={4: 9.0})
    for dumps, loads in ((msgpack.packb, msgpack.unpackb), (json.dumps, json.loads)):
        assert RetentionState.from_dict(loads(dumps(state.to_dict()))) == state
    assert RetentionState.from_dict(RetentionState().to_dict()) == RetentionState()


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"last_preserved_time": "yesterday"},
        {"last_preserved_time": math.nan},
        {"preserved": [1, -2]},
        {"preserved": "1,2"},
        {"preserved": [True]},
        {"clamped_times": [[1]]},
        {"clamped_times": [[1, "x"]]},
    ],
)
def test_bad_state_is_a_format_error(data) -> None:
    with pytest.raises(FormatError):
        RetentionState.from_dict(data)


# --------------------------------------------------------------------------------------------------
# RunConfig vocabulary


def _cases(save) -> list[tuple[int, float, bool, bool]]:
    """A fixed probe: (step, now, is_begin, is_end) decisions after a trigger at step 0, t=0."""
    probes = [
        (0, 0.0, True, False),
        (1, 599.0, False, False),
        (100, 600.0, False, False),
        (5, 1.0, False, True),
    ]
    return [save.should_save(ctx(s, t, last=(0, 0.0), is_begin=b, is_end=e)) for s, t, b, e in probes]


@pytest.mark.parametrize(
    "kwargs, probe, retention",
    [
        ({}, [True, False, True, True], KeepMax(5, every_n_hours=10000)),
        ({"save_checkpoints_secs": 600}, [True, False, True, True], KeepMax(5, every_n_hours=10000)),
        ({"save_checkpoints_steps": 100}, [True, False, True, True], KeepMax(5, every_n_hours=10000)),
        ({"save_checkpoints_steps": 1000}, [True, False, False, True], KeepMax(5, every_n_hours=10000)),
        ({"save_checkpoints_secs": None}, [False, False, False, False], KeepMax(5, every_n_hours=10000)),
        (
            {"save_checkpoints_secs": None, "save_checkpoints_steps": None},
            [False, False, False, False],
            KeepMax(5, every_n_hours=10000),
        ),
        ({"save_checkpoints_secs": 0}, [False, False, False, False], KeepMax(5, every_n_hours=10000)),
        ({"keep_checkpoint_max": 0}, [True, False, True, True], KeepMax(None, every_n_hours=10000)),
        ({"keep_checkpoint_max": None}, [True, False, True, True], KeepMax(None, every_n_hours=10000)),
        ({"keep_checkpoint_max": 2, "keep_checkpoint_every_n_hours": 1}, None, KeepMax(2, every_n_hours=1)),
        ({"keep_checkpoint_every_n_hours": None}, None, KeepMax(5)),
    ],
)
def test_from_run_config(kwargs, probe, retention) -> None:
    save, keep = from_run_config(**kwargs)
    if probe is not None:
        assert _cases(save) == probe
    assert keep == retention


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"save_checkpoints_secs": 60, "save_checkpoints_steps": 100}, "cannot be both set"),
        ({"save_checkpoints_secs": -1}, "save_checkpoints_secs"),
        ({"save_checkpoints_steps": -1}, "save_checkpoints_steps"),
        ({"save_checkpoints_steps": 1.5}, "save_checkpoints_steps"),
        ({"keep_checkpoint_max": -1}, "keep_checkpoint_max"),
        ({"keep_checkpoint_every_n_hours": 0}, "keep_checkpoint_every_n_hours"),
    ],
)
def test_from_run_config_validates(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        from_run_config(**kwargs)


# --------------------------------------------------------------------------------------------------
# keep_max + keep_every_n_hours == tf.train.CheckpointManager, across restarts


class RefCheckpointManager:
    """``tf.train.CheckpointManager``'s retention, from its documented behaviour, clock passed in.

    ``recovered`` is what a previous instance recorded in its CheckpointState: the last preserved
    timestamp and the managed (path, timestamp) list.
    """

    def __init__(self, max_to_keep: int | None, hours: float | None, now: float, recovered=None):
        self.max_to_keep, self.hours = max_to_keep, hours
        self.maybe_delete: collections.OrderedDict[int, float] = collections.OrderedDict()
        self.deleted: set[int] = set()
        if recovered is None:
            self.last_preserved = now - 1.0  # set back slightly, as TF does
        else:
            self.last_preserved, managed = recovered
            if now < self.last_preserved:  # the clock went backwards
                self.last_preserved = now
            for step, t in managed:
                t = min(t, now)
                if t > self.last_preserved:
                    self.maybe_delete[step] = t
                # else: no longer managed -- never deleted

    def save(self, step: int, now: float) -> None:
        self.maybe_delete.pop(step, None)
        self.maybe_delete[step] = now
        if not self.max_to_keep:
            return  # everything kept; the schedule is not updated
        while len(self.maybe_delete) > self.max_to_keep:
            step, t = self.maybe_delete.popitem(last=False)
            if self.hours and t - self.hours * 3600.0 >= self.last_preserved:
                self.last_preserved = t
                continue
            self.deleted.add(step)

    def recorded(self):
        return self.last_preserved, list(self.maybe_delete.items())


class SimulatedStore:
    """What CheckpointStore does with a retention policy: state round-tripped through LATEST (msgpack)."""

    def __init__(self, policy: RetentionPolicy, now: float):
        self.policy = policy
        self.records: dict[int, CheckpointRecord] = {}
        self.latest_state = msgpack.packb(RetentionState.start(now).to_dict())

    def restart(self, now: float) -> None:
        state = RetentionState.from_dict(msgpack.unpackb(self.latest_state))
        state = self.policy.resume(list(self.records.values()), state, now)
        self.latest_state = msgpack.packb(state.to_dict())

    def save(self, step: int, now: float) -> None:
        self.records[step] = CheckpointRecord(step, now, {})
        state = RetentionState.from_dict(msgpack.unpackb(self.latest_state))
        decision = self.policy.select(list(self.records.values()), state, now, frozenset({step}))
        self.latest_state = msgpack.packb(decision.state.to_dict())  # recorded before deleting
        for s in decision.delete:
            del self.records[s]


# Clock steps, in hours: mostly forward, sometimes equal (same tick), sometimes backwards (NTP).
_DT_HOURS = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0, 1.5, 2.0, 3.0, -0.3, -2.0])


@settings(max_examples=400, deadline=None)
@given(
    max_to_keep=st.one_of(st.none(), st.integers(1, 5)),
    hours=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.0])),
    start=st.floats(0, 1e6),
    first_save=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    deltas=st.lists(_DT_HOURS, min_size=1, max_size=40),
    restarts=st.lists(
        st.tuples(st.integers(0, 40), st.sampled_from([0.0, 0.3, 1.0, 5.0, -1.0, -10.0])), max_size=3
    ),
)
def test_keep_max_and_every_n_hours_match_checkpoint_manager(
    max_to_keep, hours, start, first_save, deltas, restarts
) -> None:
    policy = KeepMax(max_to_keep, every_n_hours=hours)
    ref = RefCheckpointManager(max_to_keep, hours, start)
    store = SimulatedStore(policy, start)
    saved: list[int] = []
    restart_at = dict(restarts)
    now = start + first_save * HOUR
    for i, dt in enumerate(deltas):
        now += dt * HOUR
        if i in restart_at:
            # a new process: its clock may be ahead of or behind the last save
            restart_now = now + restart_at[i] * HOUR
            deleted = ref.deleted
            ref = RefCheckpointManager(max_to_keep, hours, restart_now, ref.recorded())
            ref.deleted = deleted
            store.restart(restart_now)
            now = restart_now
        step = i + 1
        ref.save(step, now)
        store.save(step, now)
        saved.append(step)
        assert set(store.records) == set(saved) - ref.deleted, f"after saving step {step}"


def test_restart_reproduces_checkpoint_manager_unmanaged_rule() -> None:
    """On restart TF stops managing checkpoints no newer than the last preserved time: never deleted."""
    policy = KeepMax(2, every_n_hours=1)
    store = SimulatedStore(policy, 0.0)
    ref = RefCheckpointManager(2, 1, 0.0)
    # steps 1..3 at the same tick, 3600 s after the start: step 1 is preserved at t=3600 when step 3
    # arrives; 2 and 3 share its timestamp, so a restarted TF manager no longer manages them.
    for step in (1, 2, 3):
        ref.save(step, 3600.0)
        store.save(step, 3600.0)
    store.restart(4000.0)
    ref = RefCheckpointManager(2, 1, 4000.0, ref.recorded())
    assert ref.maybe_delete == {}
    for step, t in ((4, 4100.0), (5, 4200.0), (6, 4300.0)):
        ref.save(step, t)
        store.save(step, t)
    assert set(store.records) == {1, 2, 3, 5, 6} == {1, 2, 3, 4, 5, 6} - ref.deleted


def test_any_of_resume_and_state_flow() -> None:
    policy = any_of(KeepBest(1, "loss"), KeepMax(1, every_n_hours=1))
    assert isinstance(policy, AnyRetention)
    records = [
        CheckpointRecord(1, 0.0, {"loss": 0.1}),
        CheckpointRecord(2, 4000.0, {"loss": 0.9}),
        CheckpointRecord(3, 8000.0, {"loss": 0.8}),
    ]
    decision = policy.select(records, RetentionState.start(0.0), 8000.0)
    # 1 is best (not preserved: 0 - 3600 < -1); 2 is preserved by the schedule; 3 is the newest
    assert decision.keep == {1, 2, 3}
    assert decision.state.preserved == {2}
    assert policy.resume(records, decision.state, 9000.0) == decision.state


def test_schedule_starts_one_second_before_the_store() -> None:
    """TF sets a new manager's last preserved time to creation - 1 s; ``RetentionState.start`` too."""
    policy = KeepMax(1, every_n_hours=1)
    ref = RefCheckpointManager(1, 1, 0.0)
    store = SimulatedStore(policy, 0.0)
    for step, t in ((1, 3599.0), (2, 3600.0)):
        ref.save(step, t)
        store.save(step, t)
    assert ref.deleted == set()
    assert set(store.records) == {1, 2}  # 3599 - 3600 >= -1: preserved
