"""Pure format tests: golden bytes that pin version 1, layout planning, dtype set, validation basics.

The hostile-input corpus lives in test_hostile.py; these tests pin what a *valid* checkpoint is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from ckptstore.errors import FormatError
from ckptstore.format import (
    ALIGN,
    DTYPE_NAMES,
    decode_latest,
    decode_manifest,
    dtype_from_name,
    dtype_name,
    encode_manifest,
    plan_layout,
    seal,
)

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_golden import build, golden_state  # noqa: E402


def test_shard_bytes_match_golden():
    _, shards = build()
    assert sorted(shards) == [f"attempt-0000000000000000/shard-0000{i}.bin" for i in range(3)]
    for name, data in shards.items():
        assert data == (GOLDEN / name.replace("/", "__")).read_bytes(), name


def test_manifest_bytes_match_golden():
    manifest, _ = build()
    assert encode_manifest(manifest) == (GOLDEN / "manifest-v1.msgpack").read_bytes()


def test_golden_manifest_is_the_documented_structure():
    """The README's format section, as data: plain msgpack maps, lists, strings and integers."""
    doc = msgpack.unpackb((GOLDEN / "manifest-v1.msgpack").read_bytes())
    assert doc["format"] == "ckptstore" and doc["version"] == [1, 0] and doc["step"] == 42
    assert doc["shards"] == {
        "attempt-0000000000000000/shard-00000.bin": 4120,
        "attempt-0000000000000000/shard-00001.bin": 8192,
        "attempt-0000000000000000/shard-00002.bin": 1904,
    }
    kernel = doc["tensors"]["dnn/hiddenlayer_0/kernel"]
    assert kernel["dtype"] == "float32" and kernel["shape"] == [4, 3]
    [[shard, offset, nbytes, crc]] = kernel["chunks"]
    assert (shard, offset, nbytes) == ("attempt-0000000000000000/shard-00000.bin", 0, 48)
    import crc32c

    assert crc == crc32c.crc32c(np.arange(12, dtype="<f4").tobytes())
    big = doc["tensors"]["big"]["chunks"]
    assert [(c[0][-9:], c[1], c[2]) for c in big] == [("00001.bin", 4096, 4096), ("00002.bin", 0, 1904)]
    assert doc["scalars"] == {"lr": 0.5, "name": "iris"} and doc["metadata"] == {"loss": 0.25}
    assert list(doc)[-1] == "crc32c"  # the seal: see test_the_seal_is_the_crc32c_of_everything_before_it


def test_golden_shard_layout_is_aligned_little_endian_c_order():
    shard0 = (GOLDEN / "attempt-0000000000000000__shard-00000.bin").read_bytes()
    assert shard0[:48] == np.arange(12, dtype="<f4").reshape(4, 3).tobytes(order="C")
    assert shard0[48:4096] == bytes(4096 - 48)  # zero padding up to the next page
    assert shard0[4096:] == np.array([1, -2, 3], "<i8").tobytes()


def test_golden_files_decode():
    m = decode_manifest((GOLDEN / "manifest-v1.msgpack").read_bytes(), "golden")
    assert m.step == 42 and m.tensors["big"].shape == (3000,) and m.tensors["flag"].dtype == "bool"
    latest = decode_latest((GOLDEN / "LATEST-v1.msgpack").read_bytes(), "golden LATEST")
    assert latest.step == 42 and latest.manifest == "step-000000000042/manifest.msgpack"
    assert latest.num_tensors == len(golden_state()) + 2


# ---------------------------------------------------------------------------------------------
# Layout planning
# ---------------------------------------------------------------------------------------------


def test_plan_aligns_every_chunk_and_respects_max_shard_size():
    sizes = [("a", 10), ("b", 5000), ("c", 3 * 4096 + 1), ("d", 0), ("e", 4096)]
    plan = plan_layout(sizes, target_shard_size=8192, max_shard_size=8192, chunk_size=4096)
    seen: dict[str, int] = {}
    for index, shard in enumerate(plan.shards):
        end = 0
        for pc in shard:
            assert pc.offset % ALIGN == 0 and pc.start % ALIGN == 0 and pc.shard == index
            assert pc.offset >= end
            end = pc.offset + pc.nbytes
            seen[pc.name] = seen.get(pc.name, 0) + pc.nbytes
        assert end == plan.shard_sizes[index] <= 8192
    assert seen == dict(sizes)


def test_plan_packs_small_tensors_together():
    plan = plan_layout([(f"t{i}", 100) for i in range(10)], target_shard_size=1 << 20)
    assert len(plan.shards) == 1 and plan.shard_sizes[0] == 9 * 4096 + 100


def test_plan_balances_across_target_shards():
    plan = plan_layout([("big", 64 << 20)], target_shard_size=16 << 20, chunk_size=8 << 20)
    assert plan.shard_sizes == (16 << 20,) * 4


def test_plan_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="multiple of 4096"):
        plan_layout([("a", 1)], target_shard_size=4096, chunk_size=1000)


# ---------------------------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DTYPE_NAMES))
def test_dtype_names_round_trip(name):
    if name not in ("bfloat16",) and not name.startswith("float8"):
        assert dtype_name(dtype_from_name(name)) == name
        assert dtype_name(np.dtype(name).newbyteorder(">")) == name
    else:
        pytest.importorskip("ml_dtypes")
        assert dtype_name(dtype_from_name(name)) == name


@pytest.mark.parametrize("bad", ["<U3", "O", "S2", "V8", "datetime64[s]", "timedelta64[s]", [("a", "i4")]])
def test_dtypes_outside_the_closed_set_are_refused(bad):
    with pytest.raises(TypeError, match="cannot be stored"):
        dtype_name(np.dtype(bad))


def test_unknown_dtype_name_in_a_manifest():
    with pytest.raises(FormatError, match="unknown dtype 'float128'"):
        dtype_from_name("float128")


# ---------------------------------------------------------------------------------------------
# Validation: a few structural cases (the full hostile corpus is in test_hostile.py)
# ---------------------------------------------------------------------------------------------


def _golden_doc() -> dict:
    doc = msgpack.unpackb((GOLDEN / "manifest-v1.msgpack").read_bytes())
    del doc["crc32c"]
    return doc


def _decode(doc: dict):
    return decode_manifest(seal(msgpack.packb(doc)), "m")


@pytest.mark.parametrize("name", ["manifest-v1.msgpack", "LATEST-v1.msgpack"])
def test_the_seal_is_the_crc32c_of_everything_before_it(name):
    import crc32c

    data = (GOLDEN / name).read_bytes()
    doc = msgpack.unpackb(data)
    assert list(doc)[-1] == "crc32c"
    assert data[-5] == 0xCE and doc["crc32c"] == int.from_bytes(data[-4:], "big") == crc32c.crc32c(data[:-5])


@pytest.mark.parametrize("name", ["manifest-v1.msgpack", "LATEST-v1.msgpack"])
def test_every_flipped_bit_of_a_sealed_file_is_detected(name):
    data = (GOLDEN / name).read_bytes()
    decode = decode_manifest if name.startswith("manifest") else decode_latest
    for pos in range(len(data)):
        for mask in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[pos] ^= mask
            with pytest.raises(FormatError, match="golden: (crc32c mismatch|no crc32c seal)"):
                decode(bytes(damaged), "golden")


def test_an_unsealed_document_is_refused():
    doc = _golden_doc()
    with pytest.raises(FormatError, match="no crc32c seal"):
        decode_manifest(msgpack.packb(doc), "m")


def test_newer_minor_version_is_readable_and_newer_major_is_not():
    doc = _golden_doc()
    doc["version"] = [1, 7]
    doc["future_field"] = {"ignored": True}
    assert _decode(doc).minor == 7
    doc["version"] = [2, 0]
    with pytest.raises(FormatError, match="format version 2.0 is not supported"):
        _decode(doc)


def test_chunk_sizes_must_add_up_to_the_shape():
    doc = _golden_doc()
    doc["tensors"]["dnn/hiddenlayer_0/kernel"]["shape"] = [4, 4]
    with pytest.raises(FormatError, match=r"chunks hold 48 bytes but shape \[4, 4\] of float32 needs 64"):
        _decode(doc)


def test_booleans_are_not_integers():
    doc = _golden_doc()
    doc["step"] = True
    with pytest.raises(FormatError, match="step True"):
        _decode(doc)
