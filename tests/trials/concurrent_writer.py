"""One of several processes saving into the same local model_dir at once (see tests/test_faults.py).

Usage: ``python concurrent_writer.py MODEL_DIR WRITER_ID SEED N_STEPS [KEEP_MAX]``. The writer walks the
steps 1..N_STEPS in order, saving a random ~2/3 of them (so writers collide on some steps and a slow
writer ends up saving steps older than LATEST), and prints one line per attempt:
``D <step>`` (committed), ``E <step> <ErrorType>: <message>`` (refused). The state of a step names its
writer, so the parent can tell whose bytes a committed step holds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

import ckptstore  # noqa: E402
from ckptstore.errors import CkptStoreError  # noqa: E402


def state_for(step: int, writer: int) -> dict[str, Any]:
    rng = np.random.default_rng([step, writer])
    return {
        "w": rng.standard_normal(int(rng.integers(1, 3000))).astype(np.float32),
        "b": rng.integers(0, 1 << 30, size=int(rng.integers(0, 600)), dtype=np.int64),
        "writer": writer,
        "step": step,
    }


def main() -> int:
    model_dir, writer, seed, n_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    keep_max = int(sys.argv[5]) if len(sys.argv) > 5 else None
    rng = np.random.default_rng(seed)
    store = ckptstore.CheckpointStore(model_dir, workers=2, keep_max=keep_max)
    for step in range(1, n_steps + 1):
        if rng.random() < 1 / 3:
            continue
        try:
            store.save(step, state_for(step, writer))
        except CkptStoreError as e:
            print(f"E {step} {type(e).__name__}: {e}".replace("\n", " "), flush=True)
        else:
            print(f"D {step}", flush=True)
        time.sleep(float(rng.uniform(0, 0.004)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
