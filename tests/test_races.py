"""Eight concurrent writers on one model_dir, on every backend: LATEST only moves forward and ends on the
highest committed step; every committed checkpoint restores bit-exactly."""

from __future__ import annotations

import threading

import numpy as np

from ckptstore import CheckpointStore
from ckptstore.errors import CommitError

WRITERS = 8
SAVES_PER_WRITER = 4


def payload(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"w": rng.random(2000), "b": rng.integers(0, 100, 17)}


def test_concurrent_writers(model_dir):
    errors: list[BaseException] = []
    committed: list[int] = []
    observed: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def open_store() -> CheckpointStore:
        return CheckpointStore(model_dir.url, storage_options=model_dir.storage_options)

    def writer(index: int) -> None:
        store = open_store()
        try:
            for round_ in range(SAVES_PER_WRITER):
                step = round_ * WRITERS + index  # interleaved steps across writers
                store.save(step, payload(step))
                with lock:
                    committed.append(step)
            # every writer also tries a step another one owns: exactly one of them may commit it
            try:
                store.save(0, payload(0))
            except CommitError:
                pass
            else:
                errors.append(AssertionError(f"writer {index} re-committed step 0"))
        except BaseException as e:
            errors.append(e)

    def monitor() -> None:
        store = open_store()
        while not stop.is_set():
            info = store.latest()
            if info is not None:
                observed.append(info.step)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()

    assert not errors, errors
    assert sorted(committed) == list(range(WRITERS * SAVES_PER_WRITER))
    assert observed == sorted(observed), "LATEST moved backwards"
    store = open_store()
    assert store.latest().step == max(committed)
    assert [i.step for i in store.list()] == sorted(committed)
    for step in committed:
        restored = store.restore(step)
        expected = payload(step)
        assert restored["w"].tobytes() == expected["w"].tobytes()
        assert restored["b"].tobytes() == expected["b"].tobytes()
