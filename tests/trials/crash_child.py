"""The writer that crash trials kill: saves checkpoints in a loop into one model_dir (local or S3).

Run as a *zygote*: it imports numpy and ckptstore once, then for every ``run MODEL_DIR SEED MAX_SAVES
KEEP_MAX`` line on stdin forks a writer process, reports ``<pid> FORKED``, waits for it and reports
``<pid> EXIT <status>`` once the kernel has reaped it (so the parent only inspects the model_dir after
every syscall of the killed writer has finished). Forking a warm process keeps a trial at a few
milliseconds instead of a fresh interpreter's ~0.3 s, which is what makes hundreds of trials fit
into the regular suite.

A writer resumes like a preempted training job: it reports ``<pid> R <latest().step>``, starts at
the step after it and saves step after step (pruning to KEEP_MAX after each when KEEP_MAX > 0; half
the saves in the background, ``save(blocking=False)`` then ``result()``), writing ``<pid> B <step>`` before and ``<pid> D <step> <seconds>`` after each save, with
``os.write`` so nothing sits in a buffer when SIGKILL arrives. The state saved at a step is a pure
function of the step (``state_for``), so the parent can check any restored checkpoint bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Test the checkout this file belongs to, whatever else is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

import ckptstore  # noqa: E402
from ckptstore.errors import CkptStoreError  # noqa: E402

# Small shards and chunks so that even small states span several shards, several chunks per tensor
# and both the batched and the large-chunk read paths.
STORE_OPTIONS: dict[str, Any] = dict(max_shard_size=1 << 20, chunk_size=256 << 10, workers=2)
_DTYPES = ("float32", "int64", "uint8", "float16", "float64", "bool")


def state_for(step: int) -> dict[str, Any]:
    """The state saved at ``step``: 1-5 tensors of random shapes and dtypes, seeded by the step."""
    rng = np.random.default_rng(step)
    state: dict[str, Any] = {"global_step": step, "tag": f"step-{step}"}
    for i in range(int(rng.integers(1, 6))):
        dtype = np.dtype(_DTYPES[int(rng.integers(len(_DTYPES)))])
        if rng.random() < 0.15:
            n = int(rng.integers(1 << 20, 3 << 20)) // dtype.itemsize  # a multi-chunk, multi-shard tensor
        else:
            n = int(rng.integers(0, 20_000))
        raw = rng.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8)
        arr = raw.view(dtype)
        if n and rng.random() < 0.5:
            arr = arr[: n - n % 7].reshape(-1, 7) if n >= 7 else arr
        state[f"layer_{i}/w"] = arr
    return state


def metadata_for(step: int) -> dict[str, Any]:
    return {"step": step, "loss": 1.0 / (step + 1)}


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def writer(model_dir: str, seed: int, max_saves: int, keep_max: int, storage_options: dict[str, Any]) -> int:
    pid = os.getpid()
    rng = np.random.default_rng(seed)
    # keep_max > 0: every save also prunes to the newest keep_max and collects garbage at once (one
    # writer per model_dir, so a grace period of 0 is safe), so kills land inside prune and gc too.
    retention: dict[str, Any] = dict(keep_max=keep_max, gc_grace_seconds=0) if keep_max else {}
    store = ckptstore.CheckpointStore(model_dir, storage_options=storage_options, **STORE_OPTIONS, **retention)
    latest = store.latest()
    step = latest.step + 1 if latest is not None else 1
    _say(f"{pid} R {latest.step if latest is not None else -1}")
    for _ in range(max_saves):
        state = state_for(step)
        _say(f"{pid} B {step}")
        started = time.perf_counter()
        try:
            if rng.random() < 0.5:
                store.save(step, state, metadata=metadata_for(step))
            else:
                # A background save, as a trainer uses it: snapshot, keep computing (here: overwrite the
                # arrays, which the snapshot must not notice), then collect the result.
                handle = store.save(step, state, metadata=metadata_for(step), blocking=False)
                for value in state.values():
                    if isinstance(value, np.ndarray) and value.size:
                        value.reshape(-1).view(np.uint8)[:] ^= 0xFF
                handle.result()
        except CkptStoreError as e:
            _say(f"{pid} E {step} {type(e).__name__}: {e}".replace("\n", " "))
            return 3
        _say(f"{pid} D {step} {time.perf_counter() - started:.6f}")
        step += int(rng.integers(1, 3))
    return 0


def zygote(storage_options: dict[str, Any]) -> None:
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "quit":
            break
        _, model_dir, seed, max_saves, keep_max = parts
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = writer(model_dir, int(seed), int(max_saves), int(keep_max), storage_options)
            except BaseException as e:  # report, never fall back into the zygote loop
                _say(f"{os.getpid()} X {type(e).__name__}: {e}".replace("\n", " "))
            finally:
                os._exit(code)
        _say(f"{pid} FORKED")
        _, status = os.waitpid(pid, 0)
        _say(f"{pid} EXIT {status}")


if __name__ == "__main__":
    # argv[1]: the backend's storage options as JSON (an object-store endpoint and keys; "{}" for disk).
    zygote(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
