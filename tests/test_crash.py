"""Crash trials: a real writer process is SIGKILLed at random moments, mostly inside ``save``.

Runs ``CKPTSTORE_CRASH_TRIALS`` trials (default 200; see ``tests/trials/crash_trials.py`` for what one
trial checks and for a standalone ``--trials N`` mode). Every trial asserts: LATEST restores bit-exactly
to a completed save and never lags an acknowledged one or moves back, no committed checkpoint is missing,
every file left behind is an unreferenced leftover, and the next writer resumes and saves past it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "trials"))

from crash_trials import run_trials  # noqa: E402

TRIALS = int(os.environ.get("CKPTSTORE_CRASH_TRIALS", "200"))


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork and SIGKILL")
def test_sigkill_during_saves_never_breaks_latest(tmp_path: Path) -> None:
    stats = run_trials(TRIALS, tmp_path, seed=int(os.environ.get("CKPTSTORE_CRASH_SEED", "20261127")))
    print(stats.summary())
    assert stats.trials == TRIALS
    # The kill moments must actually land inside saves, or the trials prove little: most of them do,
    # and some kills must have caught a save after its commit (the roll-forward case) and some before.
    assert stats.killed_inside_save >= TRIALS // 2, stats.summary()
    assert stats.inflight_committed > 0 and stats.inflight_shards_only > 0, stats.summary()
    assert stats.restores_checked >= stats.trials, stats.summary()
