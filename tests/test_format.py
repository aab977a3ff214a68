"""Pure format tests: golden bytes that pin manifest 3.0 (and 1.0 and 2.0, still read), layout planning,
the dtype set, the columns of 2.0/3.0 and their validation.

The hostile-input corpus lives in test_hostile.py; these tests pin what a *valid* checkpoint is.
"""

from __future__ import annotations

import math
import struct
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptstore.errors import FormatError
from ckptstore.format import (
    ALIGN,
    DTYPE_NAMES,
    ITEMSIZE,
    Chunk,
    Manifest,
    TensorEntry,
    TensorTable,
    decode_latest,
    decode_manifest,
    dtype_from_name,
    dtype_name,
    encode_manifest,
    plan_balanced,
    plan_layout,
    seal,
)
from ckptstore.storage.memory import MemoryStorage
from ckptstore.transfer import write_shards

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
    assert encode_manifest(manifest) == (GOLDEN / "manifest-v3.1.msgpack").read_bytes()


def test_golden_v31_manifest_is_30_plus_block_checksums():
    """3.1 adds one optional field, ``blocks``: 28-byte records (shard, offset, nbytes, checksum), each
    the checksum of a byte range that holds several small chunks, the padding between them included."""
    import xxhash

    doc = msgpack.unpackb((GOLDEN / "manifest-v3.1.msgpack").read_bytes())
    v30 = msgpack.unpackb((GOLDEN / "manifest-v3.msgpack").read_bytes())
    assert list(doc) == [*list(v30)[:14], "blocks", *list(v30)[14:]]
    assert doc["version"] == [3, 1] and v30["version"] == [3, 0]
    for key in set(v30) - {"version", "crc32c"}:
        assert doc[key] == v30[key], key
    shard0, shard1 = ((GOLDEN / f"attempt-0000000000000000__shard-0000{i}.bin").read_bytes() for i in (0, 1))
    # shard 0: kernel (48 bytes at 0) and bias (24 at 4096); shard 1: flag (1 at 0), big's first 4096 at
    # 4096; shard 2 holds one chunk, so no block.
    assert [struct.unpack_from("<IQQQ", doc["blocks"], 28 * i) for i in range(2)] == [
        (0, 0, 4120, xxhash.xxh3_64_intdigest(shard0)), (1, 0, 8192, xxhash.xxh3_64_intdigest(shard1))]
    assert len(doc["blocks"]) == 56
    # A 3.0 reader ignores the field (unknown fields are ignored): without it, the same checkpoint.
    v31 = decode_manifest((GOLDEN / "manifest-v3.1.msgpack").read_bytes(), "golden")
    del doc["blocks"], doc["crc32c"]
    assert _decode(doc) == v31 and len(_decode(doc).tensors.blocks) == 0


def test_golden_v3_manifest_is_the_documented_structure():
    """3.0 is 2.0 plus the checksum algorithm and 64-bit checksums in 28-byte chunk records."""
    import xxhash

    doc = msgpack.unpackb((GOLDEN / "manifest-v3.msgpack").read_bytes())
    assert list(doc) == ["format", "version", "step", "created", "library", "shards", "checksum", "names", "dtypes",
                         "dtype", "ndim", "dims", "nchunks", "chunks", "scalars", "metadata", "crc32c"]
    assert doc["format"] == "ckptstore" and doc["version"] == [3, 0] and doc["checksum"] == "xxh3-64"
    v2 = msgpack.unpackb((GOLDEN / "manifest-v2.msgpack").read_bytes())
    for key in ("step", "created", "library", "shards", "names", "dtypes", "dtype", "ndim", "dims", "nchunks",
                "scalars", "metadata"):
        assert doc[key] == v2[key], key
    assert len(doc["chunks"]) == 28 * 5
    records = [struct.unpack_from("<IQQQ", doc["chunks"], 28 * i) for i in range(5)]
    assert [r[:3] for r in records] == [struct.unpack_from("<IQQ", v2["chunks"], 24 * i) for i in range(5)]
    state = golden_state()
    big = state["big"].tobytes()
    expected = [state["dnn/hiddenlayer_0/kernel"].tobytes(), state["dnn/hiddenlayer_0/bias"].tobytes(),
                state["flag"].tobytes(), big[:4096], big[4096:]]
    assert [r[3] for r in records] == [xxhash.xxh3_64_intdigest(b) for b in expected]
    assert max(r[3] for r in records) > 2**32  # really 64 bits wide


def test_golden_v2_manifest_is_the_documented_structure():
    """The README's format section, as data: plain msgpack maps, lists, strings, integers and bins."""
    doc = msgpack.unpackb((GOLDEN / "manifest-v2.msgpack").read_bytes())
    assert list(doc) == ["format", "version", "step", "created", "library", "shards", "names", "dtypes", "dtype",
                         "ndim", "dims", "nchunks", "chunks", "scalars", "metadata", "crc32c"]
    assert doc["format"] == "ckptstore" and doc["version"] == [2, 0] and doc["step"] == 42
    assert doc["shards"] == [
        ["attempt-0000000000000000/shard-00000.bin", 4120],
        ["attempt-0000000000000000/shard-00001.bin", 8192],
        ["attempt-0000000000000000/shard-00002.bin", 1904],
    ]
    assert doc["names"] == ["dnn/hiddenlayer_0/kernel", "dnn/hiddenlayer_0/bias", "flag", "big"]
    assert doc["dtypes"] == ["float32", "int64", "bool", "uint16"]
    assert doc["dtype"] == bytes([0, 1, 2, 3])
    assert doc["ndim"] == bytes([2, 1, 0, 1])  # "flag" is 0-d
    assert doc["dims"] == struct.pack("<4Q", 4, 3, 3, 3000)
    assert doc["nchunks"] == struct.pack("<4I", 1, 1, 1, 2)
    import crc32c

    records = [struct.unpack_from("<IQQI", doc["chunks"], 24 * i) for i in range(5)]
    assert len(doc["chunks"]) == 24 * 5
    assert records[0] == (0, 0, 48, crc32c.crc32c(np.arange(12, dtype="<f4").tobytes()))
    assert [r[:3] for r in records] == [(0, 0, 48), (0, 4096, 24), (1, 0, 1), (1, 4096, 4096), (2, 0, 1904)]
    assert doc["scalars"] == {"lr": 0.5, "name": "iris"} and doc["metadata"] == {"loss": 0.25}


def test_golden_manifest_is_the_documented_structure():
    """Format 1.0 (still read): plain msgpack maps, lists, strings and integers."""
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
    built_crc32c, _ = build("crc32c", blocks=False)
    v2 = decode_manifest((GOLDEN / "manifest-v2.msgpack").read_bytes(), "golden")
    assert m == v2 == replace(built_crc32c, minor=0) and (m.major, v2.major) == (1, 2)
    assert m.checksum == v2.checksum == "crc32c"
    assert list(m.tensors) == list(v2.tensors) and list(m.shards) == list(v2.shards)
    built, _ = build()
    v3 = decode_manifest((GOLDEN / "manifest-v3.msgpack").read_bytes(), "golden")
    assert v3 == replace(built, minor=0) and v3.major == 3 and v3.checksum == "xxh3-64"
    v31 = decode_manifest((GOLDEN / "manifest-v3.1.msgpack").read_bytes(), "golden")
    assert v31 == built and (v31.major, v31.minor) == (3, 1)
    assert v31.tensors.blocks.tolist() == built.tensors.blocks.tolist() and len(v31.tensors.blocks) == 2
    assert v3 != v2 and replace(v3, tensors=v2.tensors, checksum="crc32c") == v2  # only the checksums differ
    # 1.x and 2.x manifests re-encode as 3.1 naming crc32c (no blocks: they have none), byte for byte
    # what a crc32c writer writes for these entries.
    assert encode_manifest(m) == encode_manifest(v2) == encode_manifest(built_crc32c)
    assert decode_manifest(encode_manifest(m), "re-encoded") == m
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


def _greedy_reference(sizes, target, max_shard_size, chunk_size):
    """The layout rule in its plainest form, one chunk at a time: (name, start, nbytes, shard, offset)."""
    chunk_size = min(chunk_size, max_shard_size // ALIGN * ALIGN)
    target = max(ALIGN, min(target, max_shard_size))
    out, shard, end = [], 0, 0
    for name, nbytes in sizes:
        for start in range(0, nbytes, chunk_size) if nbytes else [0]:
            n = min(chunk_size, nbytes - start)
            offset = -(-end // ALIGN) * ALIGN
            if out and out[-1][3] == shard and offset + n > target:
                shard, offset = shard + 1, 0
            out.append((name, start, n, shard, offset))
            end = offset + n
    return out


_layout_sizes = st.lists(st.sampled_from([0, 1, 10, 4095, 4096, 4097, 12288, 50_000, 300_000]), max_size=30)


@given(_layout_sizes, st.sampled_from([1, 4096, 9000, 30_000, 1 << 40]), st.sampled_from([4096, 20_000, 1 << 30]),
       st.sampled_from([4096, 16384, 65536]))
@settings(max_examples=300, deadline=None)
def test_plan_layout_is_the_greedy_fill(sizes, target, max_shard_size, chunk_size):
    named = [(f"t{i}", n) for i, n in enumerate(sizes)]
    plan = plan_layout(named, target_shard_size=target, max_shard_size=max_shard_size, chunk_size=chunk_size)
    expected = _greedy_reference(named, target, max_shard_size, chunk_size)
    assert [tuple(pc) for shard in plan.shards for pc in shard] == expected
    assert len(plan.shards) == (expected[-1][3] + 1 if expected else 1)
    for index, shard in enumerate(plan.shards):
        assert plan.shard_sizes[index] == (shard[-1].offset + shard[-1].nbytes if shard else 0)
    if named:  # the columns the plan fills in from its arrays are the ones its chunks give
        columns = plan.columns
        assert columns.names == tuple(n for n, _ in named)
        assert columns.nchunks.tolist() == [sum(1 for e in expected if e[0] == n) for n, _ in named]
        assert columns.shard.tolist() == [e[3] for e in expected]
        assert columns.offset.tolist() == [e[4] for e in expected]
        assert columns.nbytes.tolist() == [e[2] for e in expected]


@given(_layout_sizes, st.integers(1, 5), st.sampled_from([8192, 100_000, 1 << 30]), st.sampled_from([4096, 65536]))
@settings(max_examples=300, deadline=None)
def test_plan_balanced_uses_the_smallest_target_that_fits_the_parts(sizes, parts, max_shard_size, chunk_size):
    named = [(f"t{i}", n) for i, n in enumerate(sizes)]
    plan = plan_balanced(named, parts, max_shard_size=max_shard_size, chunk_size=chunk_size)
    placed = {}
    for shard in plan.shards:
        for pc in shard:
            placed[pc.name] = placed.get(pc.name, 0) + pc.nbytes
    assert placed == dict(named)
    assert max(plan.shard_sizes) <= max_shard_size

    def layout(target):
        return plan_layout(named, target_shard_size=target, max_shard_size=max_shard_size, chunk_size=chunk_size)

    low = max(ALIGN, math.ceil(sum(sizes) / parts))
    fewest = len(layout(max_shard_size).shards)
    if fewest > parts:  # the shard size limit decides the count
        assert len(plan.shards) == fewest
    elif len(layout(low).shards) <= parts:  # the even split fits
        assert plan == layout(low)
    else:  # no worse balanced than any target between the even split and the limit that fits
        assert len(plan.shards) <= parts
        for target in range(low, max_shard_size + 1, max(1, (max_shard_size - low) // 97)):
            fits = layout(target)
            if len(fits.shards) <= parts:
                assert max(plan.shard_sizes) <= max(fits.shard_sizes)


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


def _golden_doc(version: str = "v1") -> dict:
    doc = msgpack.unpackb((GOLDEN / f"manifest-{version}.msgpack").read_bytes())
    del doc["crc32c"]
    return doc


def _decode(doc: dict):
    return decode_manifest(seal(msgpack.packb(doc)), "m")


@pytest.mark.parametrize("name", ["manifest-v1.msgpack", "manifest-v2.msgpack", "manifest-v3.msgpack",
                                  "manifest-v3.1.msgpack", "LATEST-v1.msgpack"])
def test_the_seal_is_the_crc32c_of_everything_before_it(name):
    import crc32c

    data = (GOLDEN / name).read_bytes()
    doc = msgpack.unpackb(data)
    assert list(doc)[-1] == "crc32c"
    assert data[-5] == 0xCE and doc["crc32c"] == int.from_bytes(data[-4:], "big") == crc32c.crc32c(data[:-5])


@pytest.mark.parametrize("name", ["manifest-v1.msgpack", "manifest-v2.msgpack", "manifest-v3.msgpack",
                                  "manifest-v3.1.msgpack", "LATEST-v1.msgpack"])
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
    doc["version"] = [4, 0]
    with pytest.raises(FormatError, match=r"format version 4.0 is not supported \(this ckptstore reads major "
                       r"versions 1, 2 and 3\); upgrade ckptstore"):
        _decode(doc)
    for version in ("v2", "v3"):
        doc = _golden_doc(version)
        doc["version"][1] = 7
        doc["future_field"] = {"ignored": True}
        assert _decode(doc).minor == 7


def _with_small_checksums(doc: dict) -> dict:
    """``doc`` (3.0) with every chunk checksum set to 7: a valid crc32c value too."""
    records = bytearray(doc["chunks"])
    for i in range(len(records) // 28):
        struct.pack_into("<Q", records, 28 * i + 20, 7)
    return {**doc, "chunks": bytes(records)}


def test_a_3x_manifest_names_a_known_checksum_algorithm():
    doc = _golden_doc("v3")
    assert _decode(doc).checksum == "xxh3-64"
    doc = _with_small_checksums(doc)
    doc["checksum"] = "crc32c"  # the same record layout, the other algorithm
    assert _decode(doc).checksum == "crc32c"
    doc["checksum"] = "sha256"
    with pytest.raises(FormatError, match=r"m: unknown checksum algorithm 'sha256' \(this ckptstore knows "
                       r"crc32c, xxh3-64\); upgrade ckptstore"):
        _decode(doc)
    doc["checksum"] = 7
    with pytest.raises(FormatError, match="m: field 'checksum' has type int"):
        _decode(doc)
    del doc["checksum"]
    with pytest.raises(FormatError, match="m: missing field 'checksum'"):
        _decode(doc)
    # A 2.x manifest has no such field: its checksums are crc32c, whatever a stray field says.
    doc = _golden_doc("v2")
    doc["checksum"] = "xxh3-64"
    assert _decode(doc).checksum == "crc32c"


def test_crc32c_values_of_a_3x_manifest_must_fit_32_bits():
    doc = _with_small_checksums(_golden_doc("v3"))
    doc["checksum"] = "crc32c"
    records = bytearray(doc["chunks"])
    struct.pack_into("<Q", records, 28 * 3 + 20, 2**32)  # the 4th chunk: "big"'s first
    doc["chunks"] = bytes(records)
    with pytest.raises(FormatError, match=r"m: tensor big: chunk checksum 4294967296 is not a crc32c value "
                       r"\(at most 4294967295\)"):
        _decode(doc)
    doc["checksum"] = "xxh3-64"
    assert _decode(doc).tensors["big"].chunks[0].checksum == 2**32


def test_encoding_refuses_an_unknown_checksum_algorithm():
    built, _ = build()
    with pytest.raises(ValueError, match=r"manifest of step 42 cannot be encoded: unknown checksum 'md5' "
                       r"\(choose from crc32c, xxh3-64\)"):
        encode_manifest(replace(built, checksum="md5"))


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


# ---------------------------------------------------------------------------------------------
# Format 2.0: round trips, the lazy tensor table, and the same strictness as the 1.x reader
# ---------------------------------------------------------------------------------------------

ALL_DTYPES = sorted(DTYPE_NAMES)


def _laid_out(specs: dict[str, tuple[str, tuple[int, ...]]], **plan: int) -> Manifest:
    """A manifest of ``specs`` laid out by ``plan_layout`` (fake crc32c checksums: 1.x can say the same),
    tensors as a plain dict."""
    sizes = [(name, math.prod(shape) * ITEMSIZE[dtype]) for name, (dtype, shape) in specs.items()]
    layout = plan_layout(sizes, **{"target_shard_size": 1 << 20, **plan})
    shard_names = [f"attempt-0/shard-{i:05d}.bin" for i in range(len(layout.shards))]
    chunks: dict[str, list[Chunk]] = {name: [] for name in specs}
    for shard in layout.shards:
        for pc in shard:
            crc = (hash((pc.name, pc.start)) & 0xFFFFFFFF) if pc.start else 2**32 - 1
            chunks[pc.name].append(Chunk(shard_names[pc.shard], pc.offset, pc.nbytes, crc))
    return Manifest(
        step=3, created=1.5, library="test", shards=dict(zip(shard_names, layout.shard_sizes, strict=True)),
        tensors={name: TensorEntry(dtype, shape, tuple(chunks[name])) for name, (dtype, shape) in specs.items()},
        scalars={"lr": 0.1, "note": "x"}, metadata={"a": [1, {"b": None}]}, checksum="crc32c",
    )


MIXED = {
    "scalar0d": ("float32", ()),  # 0-d: no dims, one element
    "empty": ("int64", (0,)),  # zero bytes
    "empty2d": ("float16", (3, 0, 5)),
    "multi": ("float64", (3, 4096)),  # 96 KiB: 24 chunks of 4 KiB
    ".hidden/ok": ("uint8", (7,)),  # a component starting with "." (allowed, off the regex fast path)
    "deep": ("int8", (1,) * 64),  # MAX_NDIM dimensions
    **{f"all/{d}": (d, (2, 3)) for d in ALL_DTYPES},  # every dtype, bfloat16 and float8s included
    "after0d": ("bool", ()),
}


@pytest.mark.parametrize("plan", [{}, {"chunk_size": 4096, "max_shard_size": 16384, "target_shard_size": 8192}])
def test_v2_round_trip(plan):
    m = _laid_out(MIXED, **plan)
    data = encode_manifest(m)
    assert msgpack.unpackb(data)["version"] == [3, 1] and msgpack.unpackb(data)["checksum"] == "crc32c"
    back = decode_manifest(data, "m")
    assert isinstance(back.tensors, TensorTable) and back == m
    assert list(back.tensors) == list(m.tensors) and list(back.shards) == list(m.shards)
    assert back.tensors["scalar0d"].shape == () and back.tensors["empty2d"].shape == (3, 0, 5)
    assert back.tensors["multi"] == m.tensors["multi"] and back.tensors["multi"].nbytes == 3 * 4096 * 8
    if plan:
        assert len(back.shards) > 4 and len({c.shard for c in back.tensors["multi"].chunks}) > 1
    assert encode_manifest(back) == data  # a decoded table re-encodes to the same bytes


def test_v2_round_trip_of_nothing():
    m = Manifest(step=0, created=0.0, library="x", shards={}, tensors={})
    back = decode_manifest(encode_manifest(m), "m")
    assert back == m and len(back.tensors) == 0 and list(back.tensors) == []


def test_tensor_table_is_a_read_only_mapping():
    m = _laid_out(MIXED)
    table = decode_manifest(encode_manifest(m), "m").tensors
    assert len(table) == len(MIXED) and "multi" in table and "nope" not in table and 3 not in table
    assert table.get("nope") is None and table.get("empty") == m.tensors["empty"]
    with pytest.raises(KeyError):
        table["nope"]
    assert table == m.tensors and m.tensors == table and dict(table) == m.tensors
    assert table != {**m.tensors, "extra": m.tensors["empty"]}
    assert dict(table.items()) == dict(m.tensors.items()) and list(table.values()) == list(m.tensors.values())
    with pytest.raises(TypeError):
        table["x"] = m.tensors["empty"]  # type: ignore[index]
    with pytest.raises(ValueError, match="read-only"):
        table._dims[0] = 5


def test_the_save_path_table_equals_the_entries():
    """What write_shards returns, as columns, is what the per-chunk objects say."""
    state = {"a": np.arange(6, dtype="<f4").reshape(2, 3), "z": np.array(1.5), "e": np.zeros((0, 4), "<i2"),
             "big": np.arange(5000, dtype="<u2")}
    layout = plan_layout([(k, v.nbytes) for k, v in state.items()], target_shard_size=8192, chunk_size=4096)
    for algorithm in ("xxh3-64", "crc32c"):
        written = write_shards(MemoryStorage(f"t-{algorithm}"), "step-000000000001", "attempt-0", state, layout,
                               workers=2, checksum=algorithm)
        specs = {k: (dtype_name(v.dtype), v.shape) for k, v in state.items()}
        table = written.tensor_table(specs)
        assert table == {k: TensorEntry(d, s, written.chunks[k]) for k, (d, s) in specs.items()}
        m = Manifest(step=1, created=0.0, library="x", shards=written.shard_sizes, tensors=table, checksum=algorithm)
        assert decode_manifest(encode_manifest(m), "m") == m


def _decode_traced(data: bytes) -> tuple[Manifest, int, int]:
    tracemalloc.start()
    try:
        m = decode_manifest(data, "m")
        size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return m, size, peak


def test_decoding_builds_no_per_tensor_objects():
    specs = {f"layer_{i:05d}/weight": ("float32", (i % 7 + 1, 3)) for i in range(10_000)}
    manifest = _laid_out(specs)
    data = encode_manifest(manifest)
    m, kept, peak = _decode_traced(data)
    _, kept_v1, peak_v1 = _decode_traced(_seal_v1(manifest))
    # The msgpack document, the names and their index are most of it (measured: peak 4.2x the file,
    # kept 2.7x); the 1.x reader's two objects per tensor cost 5x more (measured 14 MB vs 2.7 MB).
    assert peak < 5 * len(data) and kept < 3 * len(data), (peak, kept, len(data))
    assert peak * 3 < peak_v1 and kept * 3 < kept_v1, (peak, peak_v1, kept, kept_v1)
    assert m.tensors["layer_00003/weight"].shape == (4, 3)


def test_v1_and_v2_readers_agree_on_a_big_manifest():
    specs = {f"t{i}": (ALL_DTYPES[i % len(ALL_DTYPES)], (i % 3, 2) if i % 5 else ()) for i in range(3000)}
    m = _laid_out(specs, chunk_size=4096, target_shard_size=1 << 16)
    assert decode_manifest(_seal_v1(m), "m") == decode_manifest(encode_manifest(m), "m") == m


def _seal_v1(m: Manifest) -> bytes:
    """``m`` encoded as format 1.0 (as ckptstore wrote before 2.0)."""
    doc = {
        "format": "ckptstore", "version": [1, 0], "step": m.step, "created": m.created, "library": m.library,
        "shards": dict(m.shards),
        "tensors": {
            name: {"dtype": t.dtype, "shape": list(t.shape),
                   "chunks": [[c.shard, c.offset, c.nbytes, c.checksum] for c in t.chunks]}
            for name, t in m.tensors.items()
        },
        "scalars": dict(m.scalars), "metadata": dict(m.metadata),
    }
    return seal(msgpack.packb(doc))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text("a./\\\x00é", max_size=6), max_size=6))
def test_the_all_names_check_is_the_per_name_check(names):
    from ckptstore.format import _check_names, check_tensor_name

    def valid(name: str) -> bool:
        try:
            check_tensor_name(name)
            return True
        except FormatError:
            return False

    if all(map(valid, names)):
        _check_names(names, "m")
    else:
        first = next(n for n in names if not valid(n))
        with pytest.raises(FormatError, match="^m: tensor name ") as e:
            _check_names(names, "m")
        assert repr(first)[:20] in str(e.value)


def _outcome(data: bytes) -> Manifest | str:
    try:
        return decode_manifest(data, "m")
    except FormatError:
        return "refused"


_U64 = st.one_of(st.sampled_from([0, 1, 4095, 4096, 4097, 8192, 2**48, 2**48 + 1, 2**62, 2**62 + 1, 2**63, 2**64 - 1]),
                 st.integers(0, 2**64 - 1))
_NAMES = st.sampled_from(["ok", "a/b", ".", "..", "a/../b", "a//b", "/a", "a/", "a\\b", "a\x00b", "", ".x/y",
                          "x" * 1025, "x" * 1024, "é/ü", "a/./b", "scalar"])


@st.composite
def _mutated(draw: st.DrawFn) -> Manifest:
    m = _laid_out({
        "a": ("float32", (4, 3)), "b": ("int64", ()), "c": ("uint16", (3000,)), "d": ("bool", (0, 2)),
    }, chunk_size=4096, target_shard_size=8192)
    tensors = dict(m.tensors)
    shards = dict(m.shards)
    scalars = dict(m.scalars)
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(sorted(tensors)))
        e = tensors[name]
        kind = draw(st.sampled_from(["offset", "nbytes", "dim", "ndim", "dtype", "shard_size", "rename",
                                     "scalar", "chunk_shard", "drop_chunk", "dup_chunk"]))
        if kind in ("offset", "nbytes") and e.chunks:
            i = draw(st.integers(0, len(e.chunks) - 1))
            c = e.chunks[i]
            c = replace(c, **{kind: draw(_U64)})
            e = replace(e, chunks=e.chunks[:i] + (c,) + e.chunks[i + 1:])
        elif kind == "dim" and e.shape:
            i = draw(st.integers(0, len(e.shape) - 1))
            e = replace(e, shape=e.shape[:i] + (draw(_U64),) + e.shape[i + 1:])
        elif kind == "ndim":
            e = replace(e, shape=e.shape + (1,) * draw(st.integers(1, 70)))
        elif kind == "dtype":
            e = replace(e, dtype=draw(st.sampled_from(ALL_DTYPES)))
        elif kind == "shard_size":
            shard = draw(st.sampled_from(sorted(shards)))
            shards[shard] = draw(st.sampled_from([0, shards[shard] - 1, shards[shard] + 4096, 2**48]))
        elif kind == "rename":
            tensors[draw(_NAMES)] = tensors.pop(name)
            continue
        elif kind == "scalar":
            scalars[draw(st.sampled_from(sorted(tensors)))] = 1
        elif kind == "chunk_shard" and e.chunks:
            e = replace(e, chunks=(replace(e.chunks[0], shard=draw(st.sampled_from(sorted(shards)))),) + e.chunks[1:])
        elif kind == "drop_chunk" and e.chunks:
            e = replace(e, chunks=e.chunks[1:])
        elif kind == "dup_chunk" and e.chunks:
            e = replace(e, chunks=e.chunks + e.chunks[-1:])
        tensors[name] = e
    return replace(m, shards=shards, tensors=tensors, scalars=scalars)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_the_v2_reader_is_exactly_as_strict_as_the_v1_reader(m):
    """Differential: the same (often damaged) manifest, written as 1.0 and as 2.0, is accepted by both
    readers — and decodes to the same thing — or refused by both."""
    v1 = _outcome(_seal_v1(m))
    v2 = _outcome(encode_manifest(m))
    assert v1 == v2


@pytest.mark.parametrize("dims,held,needs", [
    ([2**61 + 512, 2], 4096, 2**64 + 4096),  # wraps to exactly the bytes held in uint64
    ([2**32, 2**32, 2**32], 0, 2**98),
    ([2**62] * 64, 4096, 2**(62 * 64 + 2)),  # float64 says inf
    ([0, 2**62, 2**62, 2**62], 4096, 0),  # a zero dimension: 0 bytes needed, however big the others
])
def test_shapes_whose_size_overflows_are_refused_with_the_exact_size(dims, held, needs):
    doc = _golden_doc("v2")
    nd = list(doc["ndim"])
    old = nd[0]
    nd[0] = len(dims)
    doc["ndim"] = bytes(nd)
    doc["dims"] = struct.pack(f"<{len(dims)}Q", *dims) + doc["dims"][8 * old:]
    records = bytearray(doc["chunks"])
    struct.pack_into("<Q", records, 12, held)
    doc["chunks"] = bytes(records)
    with pytest.raises(FormatError, match=rf"m: tensor dnn/hiddenlayer_0/kernel: chunks hold {held} bytes but "
                       rf"shape \[{', '.join(map(str, dims))}\] of float32 needs {needs}$"):
        _decode(doc)


def _huge(nshards: int, tensor_bytes: int) -> Manifest:
    """A uint8 tensor of ``tensor_bytes`` in 2**48-byte chunks, one per shard, in ``nshards`` full shards."""
    shards = {f"attempt-0/shard-{i:05d}.bin": 2**48 for i in range(nshards)}
    chunks = tuple(Chunk(name, 0, min(2**48, tensor_bytes - 2**48 * i), 0)
                   for i, name in enumerate(list(shards)[: -(-tensor_bytes // 2**48)]))
    return Manifest(step=1, created=0.0, library="x", shards=shards,
                    tensors={"huge": TensorEntry("uint8", (tensor_bytes,), chunks)}, checksum="crc32c")


def test_a_tensor_of_2_to_the_62_bytes_is_exact():
    """Byte counts too big for the float estimate are checked with exact integers, and can be right."""
    m = _huge(2**14 + 1, 2**62)
    assert decode_manifest(encode_manifest(m), "m") == decode_manifest(_seal_v1(m), "m") == m
    off_by_two = replace(m, tensors={"huge": replace(m.tensors["huge"], shape=(2**61 + 1, 2))})
    with pytest.raises(FormatError, match=rf"tensor huge: chunks hold {2**62} bytes but shape \[{2**61 + 1}, 2\] "
                       rf"of uint8 needs {2**62 + 2}"):
        decode_manifest(encode_manifest(off_by_two), "m")


def test_shards_holding_more_than_2_to_the_63_bytes_are_refused():
    """The bound that keeps every byte sum of a 2.0 manifest inside uint64 (LATEST's nbytes is an int64)."""
    data = encode_manifest(_huge(2**15, 0))
    with pytest.raises(FormatError, match=rf"m: the shards hold {2**63} bytes together \(at most {2**63 - 1}\)"):
        decode_manifest(data, "m")
    decode_manifest(encode_manifest(_huge(2**15 - 1, 0)), "m")


@pytest.mark.parametrize("plan", [{}, {"chunk_size": 4096, "max_shard_size": 16384, "target_shard_size": 8192}])
@pytest.mark.parametrize("limit", [1, 8, 4096, 4097, 1 << 20])
def test_small_and_large_splits_exactly_as_the_entries_say(plan, limit):
    """The vectorized split a restore plans from equals the definition, computed entry by entry."""
    m = _laid_out(MIXED, **plan)
    table = decode_manifest(encode_manifest(m), "m").tensors
    expected_small, expected_large = [], []
    for name, e in m.tensors.items():
        if len(e.chunks) == 1 and 0 < e.chunks[0].nbytes < limit:
            c = e.chunks[0]
            expected_small.append((name, c.shard, c.offset, c.nbytes, c.checksum, e.dtype, e.shape))
        else:
            expected_large.append(name)
    columns, large = table.small_and_large(limit)
    small = columns.rows()
    assert (small, large) == (expected_small, expected_large)
    assert all(type(v) is int for item in small for v in (*item[2:5], *item[6]))  # plain ints, not numpy
    assert {s[0] for s in small} | set(large) == set(m.tensors) and (limit == 1) == (not small)


def test_small_and_large_of_an_empty_table():
    table = decode_manifest(encode_manifest(_laid_out({})), "m").tensors
    columns, large = table.small_and_large(1 << 20)
    assert (columns.rows(), large) == ([], [])
