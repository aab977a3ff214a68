"""Crash trials: a real writer process is SIGKILLed at random moments, mostly inside ``save``.

Runs ``CKPTSTORE_CRASH_TRIALS`` trials (default 200; see ``tests/trials/crash_trials.py`` for what one
trial checks and for a standalone ``--trials N`` mode). Every trial asserts: LATEST restores bit-exactly
to a completed save and never lags an acknowledged one or moves back, no committed checkpoint is missing
(in the model_dirs written with keep_max, none of the newest keep_max), every visible checkpoint is
whole even when a prune was killed, every file left behind is an unreferenced leftover, and the next
writer resumes from the newest committed step and saves past the leftovers (which gc then removes).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "trials"))

from crash_trials import S3_SETTLE, run_trials  # noqa: E402

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
    # Some writers met a LATEST one save behind a committed manifest and resumed after the manifest.
    assert stats.resumed_past_stale_latest > 0, stats.summary()
    assert stats.prune_mode_trials >= TRIALS // 3, stats.summary()
    assert stats.restores_checked >= stats.trials, stats.summary()


S3_TRIALS = int(os.environ.get("CKPTSTORE_S3_CRASH_TRIALS", "10"))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs fork and SIGKILL")
def test_sigkill_during_saves_to_s3(tmp_path: Path, s3_moto: Any) -> None:
    """The same trials against moto's S3 on 127.0.0.1 (about 1-3 s a trial, so fewer of them here;
    ``crash_trials.py --backend s3-moto --trials N`` runs more)."""
    stats = run_trials(
        S3_TRIALS, tmp_path, seed=int(os.environ.get("CKPTSTORE_CRASH_SEED", "20261127")),
        base_url=f"s3://{s3_moto.bucket}/crash-{uuid.uuid4().hex[:8]}",
        storage_options=s3_moto.storage_options, settle=S3_SETTLE, trials_per_dir=5,  # half with prune
    )
    print(stats.summary())
    assert stats.trials == S3_TRIALS
    assert stats.killed_inside_save >= S3_TRIALS // 2, stats.summary()
    assert stats.restores_checked >= stats.trials, stats.summary()
    assert stats.prune_mode_trials >= S3_TRIALS // 3, stats.summary()
