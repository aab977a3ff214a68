"""Hostile checkpoints: a corpus of crafted manifests and LATEST pointers (``tests/hostile/``).

Each manifest in the corpus sits at step 7 of an otherwise valid model_dir (a real 8 KiB shard beside
it) and must be rejected with its specific ``FormatError`` before any shard byte is read, with no
write, no key outside the step, and no allocation beyond what the real files justify. Each crafted
LATEST must be refused with its specific error, and readers must fall back (with a warning) to the
valid checkpoint found by listing. The storage is wrapped in ``FaultInjectingStorage`` only to record
every call.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

from ckptstore import CheckpointStore, commit
from ckptstore.errors import CkptStoreError, FormatError, NotFound
from ckptstore.format import (
    LATEST_KEY,
    MAX_LATEST_BYTES,
    MAX_MANIFEST_BYTES,
    decode_manifest,
    encode_manifest,
    manifest_key,
    step_dir,
)
from ckptstore.storage import local as local_backend
from ckptstore.storage.local import LocalStorage
from ckptstore.testing import FaultInjectingStorage

HOSTILE = Path(__file__).resolve().parent / "hostile"
sys.path.insert(0, str(HOSTILE))

import make_corpus  # noqa: E402

CASES: dict[str, dict[str, str]] = json.loads((HOSTILE / "cases.json").read_text())
MANIFEST_CASES = sorted(k for k in CASES if k.startswith("manifests/"))
LATEST_CASES = sorted(k for k in CASES if k.startswith("latest/"))
STEP = make_corpus.STEP
SHARD_KEY = f"{step_dir(STEP)}/{make_corpus.SHARD}"
ALLOCATION_BUDGET = 4 << 20  # bytes a rejected manifest may cost: far below any claimed size


def _expected_state() -> dict[str, Any]:
    return {
        "a": np.arange(1024, dtype="<f4"),
        "b": np.arange(512, dtype="<i8") * -3,
        "global_step": STEP,
    }


def _build(root: Path, manifest: bytes | None = None, latest: bytes | None = None) -> None:
    (root / step_dir(STEP) / make_corpus.SHARD).parent.mkdir(parents=True)
    (root / SHARD_KEY).write_bytes((HOSTILE / "base-shard.bin").read_bytes())
    if manifest is None:
        manifest = (HOSTILE / "base-manifest.msgpack").read_bytes()
    if latest is None:
        latest = (HOSTILE / "base-latest.msgpack").read_bytes()
    (root / manifest_key(STEP)).write_bytes(manifest)
    (root / LATEST_KEY).write_bytes(latest)


class Recorded:
    def __init__(self, root: Path):
        self.root = root
        self.storage = FaultInjectingStorage(LocalStorage(root))
        self.store = CheckpointStore(storage=self.storage, workers=1)

    def data_reads(self) -> set[str]:
        """Keys whose bytes were read."""
        return {key for method, key in self.storage.calls if method in ("get", "read_into")}

    def assert_stayed_inside(self) -> None:
        """Only keys of this model_dir were touched, and the only write was a repaired LATEST."""
        for method, key in self.storage.calls:
            assert method == "list" or key == LATEST_KEY or key.startswith(f"{step_dir(STEP)}/"), (method, key)
            assert method != "delete" and (method != "put" or key == LATEST_KEY), f"a reader wrote {key}"
        if ("put", LATEST_KEY) in self.storage.calls:  # readers may repair a damaged LATEST, never break it
            pointer, _ = commit.read_latest(self.storage.inner)
            assert pointer is not None and pointer.step == STEP and pointer.manifest == manifest_key(STEP)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A file beside the model_dir that traversal keys would reach; it must be neither read nor changed."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"do not read")
    before = os.stat(secret)
    yield secret
    after = os.stat(secret)
    assert secret.read_bytes() == b"do not read"
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


def test_committed_corpus_is_what_make_corpus_generates() -> None:
    make_corpus.MANIFEST_CASES.clear()
    make_corpus.LATEST_CASES.clear()
    make_corpus.build()
    generated = {f"manifests/{n}.msgpack": c for n, c in make_corpus.MANIFEST_CASES.items()}
    generated |= {f"latest/{n}.msgpack": c for n, c in make_corpus.LATEST_CASES.items()}
    assert set(generated) == set(CASES)
    for rel, (data, error, why) in generated.items():
        assert (HOSTILE / rel).read_bytes() == data, f"{rel} is stale: run tests/hostile/make_corpus.py"
        assert CASES[rel] == {"error": error, "why": why}
    assert len(MANIFEST_CASES) >= 60 and len(LATEST_CASES) >= 10


def test_the_bases_are_one_checkpoint_and_v3_is_what_the_writer_writes() -> None:
    """The 2.0 and 3.0 cases edit the same checkpoint as the 1.0 ones; the 3.0 base is exactly what
    ckptstore writes for it (XXH3-64 checksums, the default)."""
    v1, v2, v3 = (decode_manifest((HOSTILE / f"base-manifest{v}.msgpack").read_bytes(), "base") for v in ("", "-v2", "-v3"))
    assert v1 == v2 and (v1.checksum, v2.checksum, v3.checksum) == ("crc32c", "crc32c", "xxh3-64")
    data = (HOSTILE / "base-shard.bin").read_bytes()
    entries = {
        name: replace(entry, chunks=tuple(replace(c, checksum=xxhash.xxh3_64_intdigest(data[c.offset : c.offset + c.nbytes]))
                                          for c in entry.chunks))
        for name, entry in v1.tensors.items()
    }
    assert v3 == replace(v1, tensors=entries, checksum="xxh3-64", major=3)
    assert encode_manifest(v3) == (HOSTILE / "base-manifest-v3.msgpack").read_bytes()


def test_the_31_base_is_30_plus_what_the_writer_adds() -> None:
    """3.1 adds one block checksum over the base shard's two tensors; re-encoded, it is the same bytes."""
    v3, v31 = (decode_manifest((HOSTILE / f"base-manifest{v}.msgpack").read_bytes(), "base") for v in ("-v3", "-v31"))
    assert v31 == v3 and (v3.minor, v31.minor) == (0, 1)
    data = (HOSTILE / "base-shard.bin").read_bytes()
    assert v31.tensors.blocks.tolist() == [(0, 0, len(data), xxhash.xxh3_64_intdigest(data))]
    assert encode_manifest(v31) == (HOSTILE / "base-manifest-v31.msgpack").read_bytes()


@pytest.mark.parametrize(
    ("blocks", "warned"),
    [
        (make_corpus.record_v3(0, 0, 8192, 12345), True),  # a block checksum that no longer matches
        (make_corpus.record_v3(0, 0, 6000, 12345), True),  # and ends inside b: a is checked by the block only
        (make_corpus.record_v3(0, 4096, 100, 12345), False),  # inside b, which fills less than half of it: unused
    ],
    ids=["lying", "lying-and-straddling", "unused"],
)
def test_a_crafted_block_never_changes_what_a_restore_returns(tmp_path: Path, caplog: Any, blocks: bytes, warned: bool) -> None:
    """A block is only a faster way to verify the chunks inside it: whatever the (well-formed) blocks
    say, the tensors come back exactly as stored, each checked by its own checksum when a block
    disagrees."""
    doc = make_corpus.base_manifest_v31()
    doc["blocks"] = blocks
    _build(tmp_path, manifest=make_corpus.sealed(make_corpus.pack(doc)))
    with caplog.at_level(logging.WARNING, logger="ckptstore"):
        restored = Recorded(tmp_path).store.restore(step=STEP)
    for name, want in _expected_state().items():
        got = restored[name]
        assert (got.tobytes() == want.tobytes()) if isinstance(want, np.ndarray) else got == want, name
    assert ("fail their block check, but every tensor restored from them passes its own" in caplog.text) == warned


@pytest.mark.parametrize("base", ["base-manifest.msgpack", "base-manifest-v2.msgpack", "base-manifest-v3.msgpack",
                                  "base-manifest-v31.msgpack"])
def test_base_checkpoint_restores(tmp_path: Path, base: str) -> None:
    """The control: without the hostile edit the same harness restores the checkpoint exactly."""
    _build(tmp_path, manifest=(HOSTILE / base).read_bytes())
    r = Recorded(tmp_path)
    restored = r.store.restore(step=STEP)
    expected = _expected_state()
    assert set(restored) == set(expected)
    for name in ("a", "b"):
        assert restored[name].dtype == expected[name].dtype
        assert restored[name].tobytes() == expected[name].tobytes()
    assert restored["global_step"] == STEP
    assert SHARD_KEY in r.data_reads()  # so the "no shard read" checks below can fail


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=lambda c: c.split("/")[1][: -len(".msgpack")])
def test_hostile_manifest_is_rejected_before_any_data_is_read(tmp_path: Path, outside: Path, case: str) -> None:
    root = tmp_path / "model_dir"
    _build(root, manifest=(HOSTILE / case).read_bytes())
    r = Recorded(root)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as exc:
            r.store.restore(step=STEP)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(exc.value)
    assert re.search(CASES[case]["error"], message), f"{case}: {message}"
    assert message.startswith(r.storage.url + "/"), message  # it names the file
    assert peak < ALLOCATION_BUDGET, f"{case}: {peak} bytes allocated to reject it"
    assert SHARD_KEY not in r.data_reads(), f"{case}: shard bytes were read"
    r.assert_stayed_inside()
    # Every other way in refuses it too.
    if manifest_key(STEP) in message:  # refused by the validator: the step is not a checkpoint at all
        with pytest.raises(FormatError):
            r.store.manifest(STEP)
        with pytest.raises(NotFound, match="no intact committed checkpoint"):
            r.store.restore()
        assert r.store.list() == []
    else:  # a valid manifest whose shard does not match it: refused when the shard is checked
        with pytest.raises(FormatError, match=CASES[case]["error"]):
            r.store.restore()
    assert SHARD_KEY not in r.data_reads()
    r.assert_stayed_inside()


@pytest.mark.parametrize("case", LATEST_CASES, ids=lambda c: c.split("/")[1][: -len(".msgpack")])
def test_hostile_latest_is_refused_and_readers_fall_back(
    tmp_path: Path, outside: Path, case: str, caplog: Any
) -> None:
    root = tmp_path / "model_dir"
    _build(root, latest=(HOSTILE / case).read_bytes())
    r = Recorded(root)
    with pytest.raises(FormatError) as exc:
        commit.read_latest(r.storage)
    assert re.search(CASES[case]["error"], str(exc.value)), f"{case}: {exc.value}"
    with caplog.at_level(logging.WARNING, logger="ckptstore"):
        latest = r.store.latest()
        restored = r.store.restore()
    assert latest is not None and latest.step == STEP
    assert restored["a"].tobytes() == _expected_state()["a"].tobytes()
    # Readers say what was wrong with LATEST and what they do about it (fall back to listing, or replace it).
    assert re.search(CASES[case]["error"] + r".*(falling back|will be replaced)", caplog.text), caplog.text
    r.assert_stayed_inside()


def test_hostile_latest_is_replaced_by_the_next_save(tmp_path: Path) -> None:
    root = tmp_path / "model_dir"
    _build(root, latest=(HOSTILE / "latest/manifest-traversal.msgpack").read_bytes())
    store = CheckpointStore(root)
    store.save(8, {"w": np.ones(3)})
    pointer, _ = commit.read_latest(store.storage)
    assert pointer is not None and pointer.step == 8 and pointer.manifest == manifest_key(8)


@pytest.mark.parametrize("key,limit", [(LATEST_KEY, MAX_LATEST_BYTES), (manifest_key(STEP), MAX_MANIFEST_BYTES)])
def test_a_huge_file_is_refused_without_reading_it_whole(tmp_path: Path, key: str, limit: int, caplog: Any) -> None:
    """A 2 GiB (sparse) LATEST or manifest costs at most the format's size limit in memory, not 2 GiB."""
    root = tmp_path / "model_dir"
    _build(root)
    with open(root / key, "r+b") as f:
        f.truncate(2 << 30)
    r = Recorded(root)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="ckptstore"), pytest.raises(CkptStoreError):
            r.store.restore(step=STEP) if key != LATEST_KEY else commit.read_latest(r.storage)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= limit + ALLOCATION_BUDGET, f"{peak} bytes allocated for a {limit}-byte limit"


def test_a_symlinked_shard_is_not_followed_out_of_the_model_dir(tmp_path: Path, outside: Path) -> None:
    """A model_dir from a stranger (an unpacked tarball) may hold symlinks; restore must not follow them out."""
    root = tmp_path / "model_dir"
    _build(root)
    shard = root / SHARD_KEY
    target = tmp_path / "outside-shard.bin"
    target.write_bytes(shard.read_bytes())  # same bytes, so only the escape itself can fail the restore
    shard.unlink()
    shard.symlink_to(target)
    with pytest.raises(CkptStoreError, match="is a symlink; links in a model_dir are not followed"):
        Recorded(root).store.restore(step=STEP)


def test_a_symlinked_step_directory_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "model_dir"
    _build(root)
    elsewhere = tmp_path / "elsewhere"
    (root / f"step-{STEP:012d}").rename(elsewhere)
    (root / f"step-{STEP:012d}").symlink_to(elsewhere)
    with pytest.raises(CkptStoreError, match="a directory on the way is a symlink"):
        Recorded(root).store.restore(step=STEP)


def test_symlinks_are_refused_where_the_kernel_does_not_say_what_was_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without /proc/self/fd (not Linux, or not mounted) the directories are checked with realpath."""
    monkeypatch.setattr(local_backend, "_opened_path", lambda fd: None)
    root = tmp_path / "model_dir"
    _build(root)
    assert Recorded(root).store.restore(step=STEP)
    elsewhere = tmp_path / "elsewhere"
    (root / f"step-{STEP:012d}").rename(elsewhere)
    (root / f"step-{STEP:012d}").symlink_to(elsewhere)
    with pytest.raises(CkptStoreError, match="a directory on the way is a symlink"):
        Recorded(root).store.restore(step=STEP)


def test_mmap_restore_does_not_follow_a_symlinked_shard(tmp_path: Path) -> None:
    root = tmp_path / "model_dir"
    _build(root)
    shard = root / SHARD_KEY
    target = tmp_path / "outside-shard.bin"
    target.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(target)
    with pytest.raises(CkptStoreError, match="is a symlink"):
        Recorded(root).store.restore(step=STEP, mmap=True)
