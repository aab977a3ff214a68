"""Corruption: flipped, truncated and extended bytes in shards, manifests and LATEST are never returned as data.

Every test damages one file of a real local checkpoint (byte positions and masks chosen by Hypothesis),
then checks what a reader sees: a ``ChecksumError``/``FormatError`` that names the damaged tensor or
file, or — only where the damaged byte carries no information, such as alignment padding — exactly the
data and information that were saved. The file is put back after each example.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptstore import CheckpointStore
from ckptstore.errors import ChecksumError, FormatError
from ckptstore.format import LATEST_KEY, manifest_key, step_dir

# Several shards for the full-size state.
STORE_OPTIONS: dict[str, Any] = dict(max_shard_size=2 << 20, chunk_size=1 << 20, workers=2)
EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _state(step: int, big: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return {
        "dnn/hiddenlayer_0/kernel": rng.standard_normal((40, 30)).astype(np.float32),
        "dnn/hiddenlayer_0/bias": rng.standard_normal(30).astype(np.float32),
        "dnn/logits/kernel": rng.standard_normal((30, 3)),
        # 1.6 MB: a large chunk (the direct read path) and a small one (the batched path)
        "embedding": rng.integers(-(2**40), 2**40, size=(300, 700) if big else (30, 7)),
        "mask": rng.random(1000) < 0.5,
        "global_step": step,
        "optimizer": "adagrad",
    }


@dataclass
class Saved:
    root: Path
    store: CheckpointStore
    states: dict[int, dict[str, Any]]
    infos: dict[int, tuple]

    def path(self, key: str) -> Path:
        return self.root / key

    def shard_paths(self, step: int) -> list[Path]:
        return [self.root / step_dir(step) / s for s in sorted(self.store.manifest(step).shards)]


def _info_tuple(info: Any) -> tuple:
    return (info.step, info.time, info.nbytes, dict(info.metadata), info.num_tensors)


def _save_two(root: Path, big: bool = True) -> Saved:
    # Small states run with one worker: no thread pool per call, so a restore per flipped byte is cheap.
    store = CheckpointStore(root, **(STORE_OPTIONS if big else dict(STORE_OPTIONS, workers=1)))
    states, infos = {}, {}
    for step in (100, 200):
        states[step] = _state(step, big)
        info = store.save(step, states[step], metadata={"loss": 1.0 / step, "note": "run-7"})
        infos[step] = _info_tuple(info)
    assert not big or len(store.manifest(200).shards) >= 2  # damage must be able to hit each of several
    return Saved(root, store, states, infos)


@pytest.fixture
def saved(tmp_path: Path) -> Iterator[Saved]:
    s = _save_two(tmp_path / "model_dir")
    yield s
    s.store.close()


@pytest.fixture
def small_saved(tmp_path: Path) -> Iterator[Saved]:
    """The same structure with small tensors, for tests that restore once per byte of a file."""
    s = _save_two(tmp_path / "model_dir", big=False)
    yield s
    s.store.close()


def assert_exact(restored: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(restored) == set(expected), f"names {sorted(restored)}"
    for name, want in expected.items():
        got = restored[name]
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.tobytes() == want.tobytes(), f"{name}: wrong data returned"
        else:
            assert type(got) is type(want) and got == want, name


class damaged:
    """Context manager: replace a file's bytes, put the original back on exit."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data = path, data

    def __enter__(self) -> None:
        self.original = self.path.read_bytes()
        self.path.write_bytes(self.data)

    def __exit__(self, *exc: object) -> None:
        self.path.write_bytes(self.original)


def flip(data: bytes, pos: int, mask: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


def owner_of(saved: Saved, step: int, shard_path: Path, pos: int) -> str | None:
    """The tensor whose bytes sit at ``pos`` of the shard, or None for padding."""
    shard = shard_path.relative_to(saved.root / step_dir(step)).as_posix()
    for name, entry in saved.store.manifest(step).tensors.items():
        for c in entry.chunks:
            if c.shard == shard and c.offset <= pos < c.offset + c.nbytes:
                return name
    return None


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


@EXAMPLES
@given(data=st.data(), mask=st.integers(1, 255))
def test_flipped_shard_byte_is_a_checksum_error_naming_the_tensor(saved: Saved, data: st.DataObject, mask: int) -> None:
    paths = saved.shard_paths(200)
    shard = data.draw(st.sampled_from(paths), label="shard")
    original = shard.read_bytes()
    # Half the examples aim at tensor bytes (the interesting case), half anywhere in the file.
    pos = data.draw(st.integers(0, len(original) - 1), label="pos")
    owner = owner_of(saved, 200, shard, pos)
    with damaged(shard, flip(original, pos, mask)):
        if owner is None:  # alignment padding: carries no data, and none of the data changed
            assert_exact(saved.store.restore(step=200), saved.states[200])
            return
        with pytest.raises(ChecksumError) as exc:
            saved.store.restore(step=200)
        assert f"tensor {owner}:" in str(exc.value)
        assert shard.name in str(exc.value)
        # The default restore (LATEST = step 200) fails the same way: damage is never skipped silently.
        with pytest.raises(ChecksumError):
            saved.store.restore()
        # Tensors that do not share the damaged bytes still restore on their own.
        others = [n for n in saved.store.manifest(200).tensors if n != owner]
        restored = saved.store.restore(step=200, names=others)
        assert_exact(restored, {n: saved.states[200][n] for n in others})
        # And the other checkpoint is untouched.
        assert_exact(saved.store.restore(step=100), saved.states[100])


@EXAMPLES
@given(data=st.data())
def test_truncated_or_extended_shard_is_a_format_error_naming_the_file(saved: Saved, data: st.DataObject) -> None:
    shard = data.draw(st.sampled_from(saved.shard_paths(200)), label="shard")
    original = shard.read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        new = original[: data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        new = original + data.draw(st.binary(min_size=1, max_size=5000), label="extra")
    with damaged(shard, new):
        with pytest.raises(FormatError) as exc:
            saved.store.restore(step=200)
        assert f"{step_dir(200)}/{shard.parent.name}/{shard.name}" in str(exc.value)
        assert "truncated, extended or replaced" in str(exc.value)
        assert_exact(saved.store.restore(step=100), saved.states[100])


def test_missing_shard_is_a_format_error_naming_the_file(saved: Saved) -> None:
    shard = saved.shard_paths(200)[0]
    os.unlink(shard)
    with pytest.raises(FormatError, match=f"{shard.name}: shard named by the manifest is missing"):
        saved.store.restore(step=200)


def test_verify_false_is_the_only_way_to_get_unchecked_bytes(saved: Saved) -> None:
    """The escape hatch exists and is explicit; the default and ``verify=True`` both check."""
    shard = saved.shard_paths(200)[0]
    owner_pos = saved.store.manifest(200).tensors
    name, entry = next((n, e) for n, e in owner_pos.items() if e.chunks[0].shard.endswith(shard.name))
    pos = entry.chunks[0].offset
    with damaged(shard, flip(shard.read_bytes(), pos, 0x40)):
        with pytest.raises(ChecksumError):
            saved.store.restore(step=200, verify=True)
        got = saved.store.restore(step=200, verify=False)[name]
        assert got.tobytes() != saved.states[200][name].tobytes()


# ---------------------------------------------------------------------------------------------
# Manifests and LATEST: every byte position, several masks
# ---------------------------------------------------------------------------------------------

MASKS = (0x01, 0x10, 0x80, 0xFF)


@dataclass
class FlipOutcomes:
    """What readers saw for each (position, mask) flip of one small file."""

    size: int
    detected: list[tuple[int, int, str]]  # a FormatError (ChecksumError included)
    harmless: list[tuple[int, int]]  # everything a caller can observe is exactly as saved
    silent: list[tuple[int, int, str]]  # no error, but something observable changed
    wrong_tensor_bytes: list[tuple[int, int, str]]  # a saved tensor name came back with other bytes
    crashed: list[tuple[int, int, str]]  # an exception that is not a FormatError (a validator bug)
    no_fallback_warning: list[tuple[int, int]]  # detected in LATEST, but readers did not say so
    minor_version_pos: int  # where the minor format version is: newer minors are readable by design

    def report(self) -> str:
        total = self.size * len(MASKS)
        return (
            f"{total} flips: {len(self.detected)} detected, {len(self.harmless)} harmless, "
            f"{len(self.silent)} silent, {len(self.crashed)} crashed; silent examples: {self.silent[:5]}; "
            f"crashes: {self.crashed[:5]}"
        )


def _observe(store: CheckpointStore, step: int | None) -> tuple[dict[str, Any], tuple]:
    restored = store.restore(step=step)
    info = store.latest() if step is None else next(i for i in store.list() if i.step == step)
    return restored, _info_tuple(info)


def _flip_every_byte(saved: Saved, key: str, step: int | None, expected_step: int) -> FlipOutcomes:
    path = saved.path(key)
    original = path.read_bytes()
    # "version": [major, minor] with a fixint major (2 for a manifest, 1 for LATEST): the minor follows it.
    minor_pos = re.search(rb"\xa7version\x92[\x01\x02\x03]", original).end()  # type: ignore[union-attr]
    out = FlipOutcomes(len(original), [], [], [], [], [], [], minor_pos)
    logger = logging.getLogger("ckptstore")
    for pos in range(len(original)):
        for mask in MASKS:
            records: list[logging.LogRecord] = []
            handler = logging.Handler(logging.WARNING)
            handler.emit = records.append  # type: ignore[method-assign]
            logger.addHandler(handler)
            try:
                with damaged(path, flip(original, pos, mask)):
                    restored, info = _observe(saved.store, step)
            except FormatError as e:
                out.detected.append((pos, mask, str(e)))
                continue
            except Exception as e:  # noqa: BLE001 - anything else is a bug the test reports
                out.crashed.append((pos, mask, f"{type(e).__name__}: {e}"))
                continue
            finally:
                logger.removeHandler(handler)
            expected = saved.states[expected_step]
            for name, want in expected.items():
                if isinstance(want, np.ndarray) and name in restored and (
                    not isinstance(restored[name], np.ndarray) or restored[name].tobytes() != want.tobytes()
                ):
                    out.wrong_tensor_bytes.append((pos, mask, name))
            try:
                assert_exact(restored, expected)
                assert info == saved.infos[expected_step], f"info {info}"
            except AssertionError as e:
                out.silent.append((pos, mask, (str(e).splitlines() or [repr(e)])[0]))
                continue
            out.harmless.append((pos, mask))
            if key == LATEST_KEY and flip(original, pos, mask) != original:
                warned = any(LATEST_KEY in r.getMessage() for r in records)
                if not warned:
                    out.no_fallback_warning.append((pos, mask))
    return out


@pytest.fixture(scope="module")
def manifest_flips(tmp_path_factory: pytest.TempPathFactory) -> FlipOutcomes:
    # Small tensors: the manifest has the same structure, and each of the ~3000 restores is cheap.
    saved = _save_two(tmp_path_factory.mktemp("manifest-flips"), big=False)
    try:
        return _flip_every_byte(saved, manifest_key(200), 200, 200)
    finally:
        saved.store.close()


@pytest.fixture(scope="module")
def latest_flips(tmp_path_factory: pytest.TempPathFactory) -> FlipOutcomes:
    saved = _save_two(tmp_path_factory.mktemp("latest-flips"), big=False)
    try:
        return _flip_every_byte(saved, LATEST_KEY, None, 200)
    finally:
        saved.store.close()


def test_manifest_flips_never_crash_or_return_wrong_tensor_bytes(manifest_flips: FlipOutcomes) -> None:
    print(manifest_flips.report())
    assert not manifest_flips.crashed, manifest_flips.report()
    assert not manifest_flips.wrong_tensor_bytes, manifest_flips.wrong_tensor_bytes[:10]
    assert len(manifest_flips.detected) > manifest_flips.size  # most flips are caught
    for pos, mask, message in manifest_flips.detected:
        # Every error says where: the manifest itself, the tensor whose checksum failed, or the shard.
        assert manifest_key(200) in message or "tensor " in message or "shard" in message, (pos, mask, message)


def test_every_manifest_flip_is_detected(manifest_flips: FlipOutcomes) -> None:
    assert not manifest_flips.silent, manifest_flips.report()


def test_latest_flips_never_change_what_restore_returns(latest_flips: FlipOutcomes) -> None:
    """Restore reads tensors through the manifest, so no LATEST damage can make it return other data."""
    print(latest_flips.report())
    assert not latest_flips.crashed, latest_flips.report()
    assert not latest_flips.wrong_tensor_bytes
    assert all("tensor" not in reason and "names" not in reason for _, _, reason in latest_flips.silent)
    # Every flip that changed nothing observable was caught (the pointer was refused and readers fell
    # back to listing), and readers said so — except in the minor version, which readers may ignore.
    assert len(latest_flips.harmless) > latest_flips.size
    assert {pos for pos, _ in latest_flips.no_fallback_warning} <= {latest_flips.minor_version_pos}


def test_every_latest_flip_falls_back_with_a_warning(latest_flips: FlipOutcomes) -> None:
    assert not latest_flips.silent, latest_flips.report()


def test_damaged_latest_falls_back_with_a_warning(saved: Saved, caplog: Any) -> None:
    """Where a flip *is* detected (here: the format name), readers fall back and say so."""
    path = saved.path(LATEST_KEY)
    original = path.read_bytes()
    pos = original.index(b"ckptstore-latest")
    with damaged(path, flip(original, pos, 0x01)), caplog.at_level(logging.WARNING, logger="ckptstore"):
        assert _info_tuple(saved.store.latest()) == saved.infos[200]
        assert_exact(saved.store.restore(), saved.states[200])
    assert f"{LATEST_KEY}: crc32c mismatch" in caplog.text
    assert re.search(r"LATEST: crc32c mismatch.*(falling back|will be replaced)", caplog.text)


@pytest.mark.parametrize("key", [LATEST_KEY, manifest_key(200)])
def test_every_truncation_of_manifest_or_latest_is_detected(small_saved: Saved, key: str, caplog: Any) -> None:
    saved = small_saved
    path = saved.path(key)
    original = path.read_bytes()
    for length in range(len(original)):
        with damaged(path, original[:length]):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="ckptstore"):
                if key == LATEST_KEY:
                    assert_exact(saved.store.restore(), saved.states[200])  # found by listing
                else:
                    with pytest.raises(FormatError, match=manifest_key(200)):
                        saved.store.restore(step=200)
                    assert_exact(saved.store.restore(), saved.states[100])  # the newest intact one
            assert re.search(rf"{key}: .*(falling back|will be replaced)", caplog.text), (length, caplog.text)


@EXAMPLES
@given(data=st.data())
def test_extended_manifest_or_latest_is_detected(saved: Saved, data: st.DataObject, caplog: Any) -> None:
    key = data.draw(st.sampled_from([LATEST_KEY, manifest_key(200)]), label="key")
    path = saved.path(key)
    extra = data.draw(st.binary(min_size=1, max_size=300), label="extra")
    with damaged(path, path.read_bytes() + extra):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ckptstore"):
            if key == LATEST_KEY:
                assert_exact(saved.store.restore(), saved.states[200])
            else:
                with pytest.raises(FormatError, match=f"{manifest_key(200)}: no crc32c seal at the end"):
                    saved.store.restore(step=200)
                assert_exact(saved.store.restore(), saved.states[100])
        assert f"{key}: no crc32c seal at the end" in caplog.text


def test_missing_latest_falls_back_with_a_warning(saved: Saved, caplog: Any) -> None:
    os.unlink(saved.path(LATEST_KEY))
    with caplog.at_level(logging.WARNING, logger="ckptstore"):
        assert_exact(saved.store.restore(), saved.states[200])
    assert "LATEST is missing; using step 200" in caplog.text


def test_a_damaged_latest_is_replaced_by_the_next_save(saved: Saved, caplog: Any) -> None:
    saved.path(LATEST_KEY).write_bytes(b"\xc1garbage")
    with caplog.at_level(logging.WARNING, logger="ckptstore"):
        saved.store.save(300, _state(300))
    assert "it will be replaced" in caplog.text
    latest = saved.store.latest()
    assert latest is not None and latest.step == 300
    assert_exact(saved.store.restore(), _state(300))


@pytest.mark.parametrize("algorithm", ["xxh3-64", "crc32c"])
@pytest.mark.parametrize("blocking", [True, False])
def test_each_checksum_algorithm_catches_a_flipped_byte(tmp_path: Path, algorithm: str, blocking: bool) -> None:
    """Both algorithms, written by a streamed and by a background (staged) save, read back by a store
    configured for the other one (restores use the algorithm the manifest names)."""
    state = {"big": np.arange(600_000, dtype=np.float32), "small": np.arange(100, dtype=np.int64)}
    writer = CheckpointStore(tmp_path / "m", checksum=algorithm, chunk_size=1 << 20)
    if blocking:
        writer.save(1, state)
    else:
        writer.save(1, state, blocking=False)
        writer.wait()
    manifest = writer.manifest(1)
    assert manifest.checksum == algorithm and manifest.major == 3
    other = "crc32c" if algorithm == "xxh3-64" else "xxh3-64"
    reader = CheckpointStore(tmp_path / "m", checksum=other)
    for name, value in reader.restore(1).items():
        np.testing.assert_array_equal(value, state[name])
    for name in ("big", "small"):
        chunk = manifest.tensors[name].chunks[-1]
        path = tmp_path / "m" / step_dir(1) / chunk.shard
        data = bytearray(path.read_bytes())
        data[chunk.offset + chunk.nbytes // 2] ^= 0x04
        path.write_bytes(bytes(data))
        for mmap in (False, True):
            with pytest.raises(ChecksumError, match=rf"tensor {name}: bytes .* fail their {algorithm} check"):
                reader.restore(1, names=[name], mmap=mmap, verify=True)
        data[chunk.offset + chunk.nbytes // 2] ^= 0x04
        path.write_bytes(bytes(data))
    writer.close()
    reader.close()


def test_an_unknown_checksum_algorithm_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown checksum 'sha1' \(choose from crc32c, xxh3-64\)"):
        CheckpointStore(tmp_path / "m", checksum="sha1")
    assert CheckpointStore(tmp_path / "m").checksum == "xxh3-64"


# ---------------------------------------------------------------------------------------------
# Block checksums (format 3.1)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocking", [True, False])
def test_block_checksums_still_name_the_damaged_tensor(tmp_path: Path, caplog: Any, blocking: bool) -> None:
    """A full restore verifies neighbouring small tensors with one checksum per block. A damaged byte
    of a tensor is still a ``ChecksumError`` naming that tensor (the block's tensors are then checked
    one by one); a damaged padding byte inside a block changes no data, so the restore returns exactly
    what was saved and says in a warning which bytes failed their block check."""
    rng = np.random.default_rng(5)
    state = {f"t{i:02d}": rng.standard_normal(int(n)).astype(np.float32) for i, n in enumerate(rng.integers(1, 3000, 40))}
    state["big"] = rng.standard_normal(400_000)
    store = CheckpointStore(tmp_path / "m", workers=2)
    if blocking:
        store.save(1, state)
    else:
        store.save(1, state, blocking=False)
        store.wait()
    manifest = store.manifest(1)
    blocks = manifest.tensors.blocks
    assert manifest.minor == 1 and len(blocks) >= 1
    # The same blocks whichever way the bytes were written (streamed, or staged in the background).
    other = CheckpointStore(tmp_path / "o", workers=2)
    other.save(1, state, blocking=not blocking)
    other.wait()
    assert other.manifest(1).tensors.blocks.tolist() == blocks.tolist()
    assert_exact(store.restore(1), state)

    shard_names = list(manifest.shards)
    block = blocks[0]
    path = tmp_path / "m" / step_dir(1) / shard_names[int(block["shard"])]
    inside = sorted(
        (c.offset, name) for name, e in manifest.tensors.items() for c in e.chunks
        if c.shard == shard_names[int(block["shard"])] and block["offset"] <= c.offset < block["offset"] + block["nbytes"]
    )
    assert len(inside) >= 2
    offset, victim = inside[1]
    original = path.read_bytes()
    with damaged(path, flip(original, offset + 2, 0x10)):
        with pytest.raises(ChecksumError, match=rf"tensor {victim}: bytes \[{offset}, .* fail their xxh3-64 check"):
            store.restore(1)
    pad = int(block["offset"]) + manifest.tensors[inside[0][1]].nbytes  # right after the block's first tensor
    assert pad < offset and owner_of(Saved(tmp_path / "m", store, {}, {}), 1, path, pad) is None
    with damaged(path, flip(original, pad, 0x01)), caplog.at_level(logging.WARNING, logger="ckptstore"):
        assert_exact(store.restore(1), state)
    end = int(block["offset"] + block["nbytes"])
    assert f"bytes [{int(block['offset'])}, {end}) fail their block check, but every tensor restored" in caplog.text
    store.close()
    other.close()
