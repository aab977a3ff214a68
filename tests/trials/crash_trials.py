"""Crash trials: SIGKILL a real writer process at random moments and check every promise after each kill.

Usage (thousands of trials; the regular suite runs ``tests/test_crash.py``, which calls ``run_trials``)::

    python tests/trials/crash_trials.py --trials 2000 [--seed 7] [--dir /tmp/somewhere]

One trial: a writer forked from a warm zygote (``crash_child.py``) resumes from LATEST in a model_dir
and saves in a loop; the parent waits for the writer's n-th "about to save" marker (n random, 1-2),
sleeps a random fraction of a typical save and kills it with SIGKILL (one trial in eight instead
kills at a random moment after the fork, start-up included). Once the kernel has reaped the writer,
the parent checks:

- LATEST names a committed checkpoint that restores bit-exactly to the state of its step, and that
  step is the last acknowledged save or the one in flight (LATEST never lags an acknowledged save
  and never moves backwards);
- every acknowledged save is still committed, and every committed step is an acknowledged save or
  a save that was in flight when a writer died (a committed step is complete: it restores bit-exactly);
- everything else in the model_dir is a leftover a reader ignores: temp files and shard
  directories of attempts that no manifest names; the next writer resumes and saves past them.

Each model_dir takes ``TRIALS_PER_DIR`` trials (a long-running job preempted again and again), then
one writer runs to completion uninterrupted, and every committed checkpoint is restored once more.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crash_child import STORE_OPTIONS, metadata_for, state_for  # noqa: E402

import ckptstore  # noqa: E402
from ckptstore import commit  # noqa: E402
from ckptstore.format import LATEST_KEY, MANIFEST_FILE, parse_step_dir  # noqa: E402
from ckptstore.storage import Storage  # noqa: E402

CHILD = Path(__file__).resolve().parent / "crash_child.py"
TRIALS_PER_DIR = 25
S3_SETTLE = 0.1  # object stores: let a request the server fully received before the kill land first
PRUNE_KEEP = 3  # every other model_dir is written with keep_max=PRUNE_KEEP (prune + gc after each save)
EVENT_TIMEOUT = 60.0  # a writer that says nothing for this long is hung: fail, don't wait forever


class TrialFailure(AssertionError):
    pass


@dataclass
class TrialStats:
    trials: int = 0
    killed_inside_save: int = 0  # the writer's last marker was "about to save"
    killed_between_saves: int = 0  # killed after an acknowledged save, before the next began
    killed_before_first_save: int = 0  # killed during start-up / resume
    acknowledged_saves: int = 0
    inflight_shards_only: int = 0  # killed after some shard bytes were written, before the manifest
    inflight_committed: int = 0  # killed after the manifest commit, before save() returned
    latest_lagging: int = 0  # ... and before LATEST moved: LATEST one save behind the newest manifest
    resumed_past_stale_latest: int = 0  # a writer resumed from a committed step LATEST did not name yet
    prune_mode_trials: int = 0  # trials whose writer pruned (keep_max) and collected garbage after every save
    max_committed: int = 0  # most checkpoints committed at once in prune mode (a kill may precede the prune)
    restores_checked: int = 0
    leftover_files: int = 0  # garbage seen after the last trial of each model_dir
    leftover_bytes: int = 0
    model_dirs: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.trials} trials in {self.model_dirs} model_dirs, {self.seconds:.1f} s: killed inside a "
            f"save {self.killed_inside_save}, between saves {self.killed_between_saves}, before the first "
            f"save {self.killed_before_first_save}; {self.acknowledged_saves} acknowledged saves; in-flight "
            f"saves that left shards only {self.inflight_shards_only}, found committed "
            f"{self.inflight_committed} (LATEST still behind them {self.latest_lagging}); "
            f"{self.resumed_past_stale_latest} resumes from a step LATEST did not name yet; "
            f"{self.prune_mode_trials} trials pruning to keep_max={PRUNE_KEEP} (most committed at once "
            f"{self.max_committed}); {self.restores_checked} bit-exact restores; leftovers after each "
            f"model_dir's recovery run: {self.leftover_files} files / {self.leftover_bytes} bytes"
        )


class Zygote:
    """The warm parent of all writers; see ``crash_child.py``."""

    def __init__(self, stderr_path: Path, storage_options: dict[str, Any]):
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(storage_options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        self.events: queue.Queue[tuple[float, list[str]] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.events.put((time.monotonic(), raw.decode().split(" ", 3)))
        self.events.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def next_event(self, timeout: float = EVENT_TIMEOUT) -> tuple[float, list[str]]:
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            raise TrialFailure(f"no word from the writer for {timeout} s (hung?)") from None
        if item is None:
            raise TrialFailure(f"the zygote died (exit {self.proc.wait()}); see {self._stderr.name}")
        return item

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def check_state(restored: dict[str, Any], step: int, where: str) -> None:
    """``restored`` must be exactly ``state_for(step)``: same names, dtypes, shapes, bytes and scalars."""
    expected = state_for(step)
    if set(restored) != set(expected):
        raise TrialFailure(f"{where}: names {sorted(restored)} != {sorted(expected)}")
    for name, want in expected.items():
        got = restored[name]
        if isinstance(want, np.ndarray):
            if not (isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
                    and got.tobytes() == want.tobytes()):
                raise TrialFailure(f"{where}: tensor {name} differs from what step {step} saved")
        elif type(got) is not type(want) or got != want:
            raise TrialFailure(f"{where}: scalar {name} = {got!r}, saved {want!r}")


def classify_files(storage: Storage, committed: dict[int, Any]) -> tuple[int, int]:
    """Check every object in the model_dir is accounted for; return (leftover objects, leftover bytes).

    Accounted for: LATEST, lock files, committed manifests and the shards they name. Leftovers (which a
    reader must ignore): temp files of interrupted puts and attempt directories no manifest names.
    """
    referenced = {
        f"{commit.step_dir(step)}/{shard}" for step, m in committed.items() for shard in m.shards
    }
    leftovers = nbytes = 0
    for obj in storage.list():
        key = obj.key
        parts = key.split("/")
        if key == LATEST_KEY or parts[0] == ".locks" or key in referenced:
            continue
        if len(parts) == 2 and parts[1] == MANIFEST_FILE and parse_step_dir(parts[0]) in committed:
            continue
        is_temp = parts[-1].startswith(".tmp-")
        unreferenced_attempt = (
            len(parts) == 3 and parse_step_dir(parts[0]) is not None and parts[1].startswith("attempt-")
            and not any(r.startswith(f"{parts[0]}/{parts[1]}/") for r in referenced)
        )
        if not (is_temp or unreferenced_attempt):
            raise TrialFailure(f"unexpected object in the model_dir: {key}")
        leftovers += 1
        nbytes += obj.size
    return leftovers, nbytes


class ModelDirHistory:
    """What the parent knows about one model_dir from the markers of every writer it killed."""

    def __init__(self, root: str, keep_max: int, storage_options: dict[str, Any]):
        self.root = root  # a path or an object-store URL
        self.name = root.rstrip("/").rsplit("/", 1)[-1]
        self.storage_options = storage_options
        self.keep_max = keep_max  # 0: keep everything; else writers prune (and gc) after every save
        self.acknowledged: set[int] = set()
        self.maybe: set[int] = set()  # steps in flight when a writer died
        self.latest_seen = -1
        self.pointer_step = -1  # what LATEST names now
        self.newest = -1  # the newest committed step now (what a resuming writer must continue after)
        self.verified: set[int] = set()

    def verify(self, stats: TrialStats, inflight: int | None, where: str) -> None:
        """Check the model_dir without changing it, so the next writer meets exactly what the killed one left."""
        store = self.open()
        try:
            self._verify(store, stats, inflight, where)
        finally:
            store.close()

    def open(self) -> ckptstore.CheckpointStore:
        return ckptstore.CheckpointStore(self.root, storage_options=self.storage_options, **STORE_OPTIONS)

    def _verify(self, store: ckptstore.CheckpointStore, stats: TrialStats, inflight: int | None, where: str) -> None:
        storage = store.storage
        steps = commit.committed_steps(storage)
        # Every visible step is whole: its manifest decodes (and below, its tensors restore), also right
        # after a prune was killed between deleting a manifest and its shards.
        manifests = {s: commit.read_manifest(storage, s) for s in steps}
        if self.keep_max:
            stats.max_committed = max(stats.max_committed, len(steps))
        pointer, _ = commit.read_latest(storage)
        if inflight is not None and inflight in manifests:
            stats.inflight_committed += 1
            stats.latest_lagging += pointer is None or pointer.step < inflight
        elif inflight is not None and any(o.key.startswith(f"{commit.step_dir(inflight)}/attempt-")
                                          for o in storage.list(commit.step_dir(inflight) + "/")):
            stats.inflight_shards_only += 1
        if self.keep_max:
            # Retention may drop old steps, never one of the newest keep_max (acknowledged or not).
            floor = steps[-self.keep_max] if len(steps) >= self.keep_max else -1
            missing = {a for a in self.acknowledged if a >= floor} - set(steps)
        else:
            missing = self.acknowledged - set(steps)
        if missing:
            raise TrialFailure(f"{where}: acknowledged saves {sorted(missing)} are no longer committed")
        strangers = set(steps) - self.acknowledged - self.maybe
        if strangers:
            raise TrialFailure(f"{where}: steps {sorted(strangers)} are committed but no writer saved them")
        if not steps:
            if self.acknowledged:
                raise TrialFailure(f"{where}: every checkpoint is gone although saves were acknowledged")
            return
        if pointer is None:
            if self.acknowledged:
                raise TrialFailure(f"{where}: LATEST is missing although saves were acknowledged")
            # The very first save was killed between its manifest and the first LATEST: readers list.
            check_state(store.restore(step=steps[-1]), steps[-1], f"{where}: restore(step={steps[-1]})")
            self.pointer_step, self.newest = -1, steps[-1]
            return
        if pointer.step not in manifests:
            raise TrialFailure(f"{where}: LATEST names step {pointer.step}, which is not committed")
        if self.acknowledged and pointer.step < max(self.acknowledged):
            raise TrialFailure(f"{where}: LATEST {pointer.step} lags acknowledged save {max(self.acknowledged)}")
        if pointer.step < self.latest_seen:
            raise TrialFailure(f"{where}: LATEST moved back from {self.latest_seen} to {pointer.step}")
        self.latest_seen = pointer.step
        if dict(pointer.metadata) != metadata_for(pointer.step):
            raise TrialFailure(f"{where}: LATEST metadata {pointer.metadata} is not step {pointer.step}'s")
        for step in [pointer.step, steps[-1], *sorted(set(steps) - self.verified)]:
            check_state(store.restore(step=step), step, f"{where}: restore(step={step})")
            stats.restores_checked += 1
            self.verified.add(step)
        classify_files(storage, manifests)
        after, _ = commit.read_latest(storage)  # in case a reader repaired it
        self.pointer_step = after.step if after is not None else -1
        self.newest = steps[-1]


def run_writer(
    zygote: Zygote,
    history: ModelDirHistory,
    rng: np.random.Generator,
    stats: TrialStats,
    est_save: list[float],
    *,
    kill: bool,
    max_saves: int,
) -> int | None:
    """Run one writer (killed at a random moment when ``kill``); return the step in flight at death."""
    zygote.send(f"run {history.root} {int(rng.integers(1 << 31))} {max_saves} {history.keep_max}")
    _, (pid_s, kind, *_rest) = zygote.next_event()
    if kind.strip() != "FORKED":
        raise TrialFailure(f"zygote said {pid_s} {kind} instead of FORKED")
    pid = int(pid_s)
    begins_before_kill = int(rng.integers(1, 3))
    early_kill_at = time.monotonic() + rng.uniform(0, 0.05) if kill and rng.random() < 0.125 else None
    kill_at: float | None = early_kill_at
    begins = 0
    inflight: int | None = None
    last = "start"
    killed = False
    status = None
    while status is None:
        timeout = EVENT_TIMEOUT if kill_at is None else max(0.0, kill_at - time.monotonic())
        if kill_at is not None and not killed and timeout <= 0:
            os.kill(pid, signal.SIGKILL)
            killed = True
            stats.killed_inside_save += last == "B"
            stats.killed_between_saves += last == "D"
            stats.killed_before_first_save += last in ("start", "R")
            continue
        try:
            item = zygote.events.get(timeout=timeout if not killed else EVENT_TIMEOUT)
        except queue.Empty:
            if kill_at is not None and not killed:
                continue
            raise TrialFailure(f"writer {pid} said nothing for {EVENT_TIMEOUT} s") from None
        if item is None:
            raise TrialFailure("the zygote died")
        _, (epid, kind, *rest) = item
        kind = kind.strip()
        if int(epid) != pid:
            raise TrialFailure(f"marker from unexpected process {epid}: {kind} {rest}")
        if kind == "EXIT":
            status = int(rest[0])
        elif kind == "R":
            last = "R"
            resumed = int(rest[0])
            # A writer resumes from the newest committed checkpoint, even when LATEST still names an
            # older one (its predecessor died between the manifest commit and the LATEST update).
            if resumed != history.newest:
                raise TrialFailure(
                    f"writer {pid} resumed from step {resumed}; the newest committed step is {history.newest} "
                    f"(LATEST names {history.pointer_step})"
                )
            stats.resumed_past_stale_latest += history.newest > history.pointer_step
        elif kind == "B":
            last, inflight = "B", int(rest[0])
            begins += 1
            if kill and kill_at is None and begins == begins_before_kill:
                kill_at = time.monotonic() + rng.uniform(0, 1.3 * float(np.median(est_save[-50:])))
        elif kind == "D":
            step = int(rest[0])
            history.acknowledged.add(step)
            stats.acknowledged_saves += 1
            est_save.append(float(rest[1]))
            last, inflight = "D", None
        elif kind == "E":
            raise TrialFailure(f"writer {pid} failed to save step {rest[0]}: {rest[1].strip()}")
        else:
            raise TrialFailure(f"writer {pid} crashed: {kind} {' '.join(rest)}".strip())
    if kill:
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise TrialFailure(f"writer {pid} ended with status {status} before it was killed")
    elif not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        raise TrialFailure(f"uninterrupted writer {pid} ended with status {status}")
    if inflight is not None:
        history.maybe.add(inflight)
    return inflight


def run_trials(
    trials: int,
    workdir: Path,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    base_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    settle: float = 0.0,
    trials_per_dir: int = TRIALS_PER_DIR,
) -> TrialStats:
    """Run ``trials`` crash trials; raise ``TrialFailure`` at the first broken promise.

    Model_dirs go under ``workdir`` on local disk, or under ``base_url`` (with ``storage_options``) on
    an object store. ``settle``: seconds to wait after a kill before looking, so a request the server
    had fully received when its client died is applied first (as it would be in production).
    """
    options = dict(storage_options or {})
    rng = np.random.default_rng(seed)
    stats = TrialStats()
    est_save = [0.03]
    started = time.monotonic()
    zygote = Zygote(workdir / "zygote-stderr.log", options)
    try:
        while stats.trials < trials:
            stats.model_dirs += 1
            keep = PRUNE_KEEP if stats.model_dirs % 2 == 0 else 0
            name = f"model_dir-{stats.model_dirs:04d}"
            root = f"{base_url.rstrip('/')}/{name}" if base_url else str(workdir / name)
            history = ModelDirHistory(root, keep, options)
            for _ in range(min(trials_per_dir, trials - stats.trials)):
                stats.trials += 1
                stats.prune_mode_trials += bool(keep)
                where = f"trial {stats.trials} (seed {seed}, {history.root})"
                inflight = run_writer(zygote, history, rng, stats, est_save, kill=True, max_saves=10_000)
                time.sleep(settle)
                history.verify(stats, inflight, where)
            # The promise that the next save copes with the leftovers: an uninterrupted writer resumes,
            # saves twice, and everything committed still restores.
            run_writer(zygote, history, rng, stats, est_save, kill=False, max_saves=2)
            history.verify(stats, None, f"recovery run of {history.root}")
            with history.open() as store:
                manifests = {s: commit.read_manifest(store.storage, s) for s in commit.committed_steps(store.storage)}
                latest = store.latest()  # the public API agrees with what the trials checked
                if latest is None or latest.step != max(manifests):
                    raise TrialFailure(f"{history.root}: latest() is {latest}, newest step {max(manifests)}")
                check_state(store.restore(), latest.step, f"{history.root}: restore()")
                files, nbytes = classify_files(store.storage, manifests)
            if keep and len(manifests) > keep:
                raise TrialFailure(f"{history.root}: {len(manifests)} checkpoints kept, keep_max={keep}")
            if keep and files:
                raise TrialFailure(f"{history.root}: {files} leftover objects survived gc(grace 0)")
            stats.leftover_files += files
            stats.leftover_bytes += nbytes
            if progress:
                stats.seconds = time.monotonic() - started
                progress(stats.summary())
    finally:
        zygote.close()
        stats.seconds = time.monotonic() - started
    return stats


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a new temp dir)")
    parser.add_argument("--backend", choices=["local", "s3-moto"], default="local",
                        help="s3-moto starts a moto S3 server on 127.0.0.1 (tests/servers.py) and writes there")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="ckptstore-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"crash trials: {args.trials}, seed {args.seed}, {args.backend}, in {workdir}", flush=True)
    server = None
    kwargs: dict[str, Any] = {}
    if args.backend == "s3-moto":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from servers import MotoServer

        server = MotoServer().start()
        kwargs = dict(base_url=f"s3://{server.bucket}/crash-{args.seed}", storage_options=server.storage_options,
                      settle=S3_SETTLE)
    try:
        stats = run_trials(args.trials, workdir, args.seed, progress=lambda s: print(s, flush=True), **kwargs)
    except TrialFailure as e:
        print(f"FAILED: {e}", flush=True)
        return 1
    finally:
        if server is not None:
            server.stop()
    print("OK:", stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
