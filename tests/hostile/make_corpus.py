"""Generate the hostile-checkpoint corpus: crafted manifests and LATEST pointers, one file per attack.

Run ``python tests/hostile/make_corpus.py`` to (re)write ``manifests/*.msgpack``, ``latest/*.msgpack``,
``base-shard.bin`` and ``cases.json`` next to this file; the generated files are committed, so the
tests read the exact bytes a stranger could hand us. Output is deterministic.

Every case is the valid base checkpoint (step 7: one 8192-byte shard holding a float32[1024] "a" and
an int64[512] "b"), written as format 1.0 (cases without a prefix: 1.x manifests are still read), as
format 2.0 (cases named ``v2-...``), as format 3.0 (``v3-...``: XXH3-64 checksums) or as format 3.1
(``v31-...``: 3.0 plus block checksums), with one thing made hostile. ``cases.json`` maps each file to the specific error a
reader must raise (a regular expression matched against the ``FormatError`` message) and says why the
case matters. The bytes are written by hand where msgpack would refuse to produce them (headers that
claim billions of elements, ext types, nesting deeper than any packer allows).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import crc32c
import msgpack
import numpy as np
import xxhash

from ckptstore.format import seal

HERE = Path(__file__).resolve().parent
STEP = 7
SHARD = "attempt-0000000000000000/shard-00000.bin"
SHARD_SIZE = 8192
M = "step-000000000007/manifest.msgpack"  # how errors name the manifest (after the model_dir URL)


def base_shard() -> bytes:
    a = np.arange(1024, dtype="<f4")
    b = np.arange(512, dtype="<i8") * -3
    return a.tobytes() + b.tobytes()


def base_manifest() -> dict[str, Any]:
    data = base_shard()
    return {
        "format": "ckptstore",
        "version": [1, 0],
        "step": STEP,
        "created": 1_700_000_000.0,
        "library": "0.1.0",
        "shards": {SHARD: SHARD_SIZE},
        "tensors": {
            "a": {"dtype": "float32", "shape": [1024], "chunks": [[SHARD, 0, 4096, crc32c.crc32c(data[:4096])]]},
            "b": {"dtype": "int64", "shape": [512], "chunks": [[SHARD, 4096, 4096, crc32c.crc32c(data[4096:])]]},
        },
        "scalars": {"global_step": STEP},
        "metadata": {"loss": 0.5},
    }


def u64(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def u32(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def record(shard: int, offset: int, nbytes: int, crc: int) -> bytes:
    """One 24-byte chunk record of a 2.0 manifest."""
    return struct.pack("<IQQI", shard, offset, nbytes, crc)


def base_manifest_v2() -> dict[str, Any]:
    """The same checkpoint as ``base_manifest``, as format 2.0 writes it."""
    data = base_shard()
    return {
        "format": "ckptstore",
        "version": [2, 0],
        "step": STEP,
        "created": 1_700_000_000.0,
        "library": "0.1.0",
        "shards": [[SHARD, SHARD_SIZE]],
        "names": ["a", "b"],
        "dtypes": ["float32", "int64"],
        "dtype": bytes([0, 1]),
        "ndim": bytes([1, 1]),
        "dims": u64(1024, 512),
        "nchunks": u32(1, 1),
        "chunks": record(0, 0, 4096, crc32c.crc32c(data[:4096])) + record(0, 4096, 4096, crc32c.crc32c(data[4096:])),
        "scalars": {"global_step": STEP},
        "metadata": {"loss": 0.5},
    }


def record_v3(shard: int, offset: int, nbytes: int, checksum: int) -> bytes:
    """One 28-byte chunk record of a 3.0 manifest."""
    return struct.pack("<IQQQ", shard, offset, nbytes, checksum)


def base_manifest_v3() -> dict[str, Any]:
    """The same checkpoint as format 3.0 writes it by default: XXH3-64 checksums in 28-byte records."""
    data = base_shard()
    doc = base_manifest_v2()
    doc["version"] = [3, 0]
    v3: dict[str, Any] = {}
    for key, value in doc.items():
        v3[key] = value
        if key == "shards":
            v3["checksum"] = "xxh3-64"
    v3["chunks"] = (record_v3(0, 0, 4096, xxhash.xxh3_64_intdigest(data[:4096]))
                    + record_v3(0, 4096, 4096, xxhash.xxh3_64_intdigest(data[4096:])))
    return v3


def base_manifest_v31() -> dict[str, Any]:
    """The same checkpoint as format 3.1 writes it: 3.0 plus one block checksum over both tensors."""
    doc = base_manifest_v3()
    doc["version"] = [3, 1]
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out[key] = value
        if key == "chunks":
            out["blocks"] = record_v3(0, 0, SHARD_SIZE, xxhash.xxh3_64_intdigest(base_shard()))
    return out


def base_latest() -> dict[str, Any]:
    return {
        "format": "ckptstore-latest",
        "version": [1, 0],
        "step": STEP,
        "manifest": M,
        "created": 1_700_000_000.0,
        "nbytes": SHARD_SIZE,
        "num_tensors": 3,
        "metadata": {"loss": 0.5},
        "retention": {},
    }


def pack(doc: Any) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


class Raw:
    """Already-encoded msgpack bytes to splice into a document in place of a value."""

    def __init__(self, data: bytes):
        self.data = data


def pack_with_raw(doc: Any) -> bytes:
    """msgpack-encode ``doc``, inserting ``Raw`` values verbatim (for bytes no packer would write)."""
    if isinstance(doc, Raw):
        return doc.data
    if isinstance(doc, dict):
        n = len(doc)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(pack(k) + pack_with_raw(v) for k, v in doc.items())
    if isinstance(doc, list):
        n = len(doc)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(pack_with_raw(v) for v in doc)
    return pack(doc)


def edit(fn: Callable[[dict[str, Any]], Any], base: Callable[[], dict[str, Any]] = base_manifest) -> bytes:
    doc = deepcopy(base())
    fn(doc)
    return pack_with_raw(doc)


def chunk(doc: dict[str, Any], name: str = "a") -> list[Any]:
    return doc["tensors"][name]["chunks"][0]


def nested_lists(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


# name -> (bytes, expected error regex, why it matters)
Case = tuple[bytes, str, str]
MANIFEST_CASES: dict[str, Case] = {}
LATEST_CASES: dict[str, Case] = {}


def sealed(data: bytes) -> bytes:
    """Give every map-shaped case a valid crc32c seal: an attacker can compute one as easily as we can,
    so the validator behind the seal must catch each attack on its own. Other shapes stay as crafted
    (they are refused for lacking the seal)."""
    if data and (0x80 <= data[0] <= 0x8F or data[0] == 0xDE):
        try:
            return seal(data)
        except ValueError:
            return data
    return data


def manifest_case(name: str, data: bytes, error: str, why: str, *, as_crafted: bool = False) -> None:
    MANIFEST_CASES[name] = (data if as_crafted else sealed(data), error, why)


def latest_case(name: str, data: bytes, error: str, why: str, *, as_crafted: bool = False) -> None:
    LATEST_CASES[name] = (data if as_crafted else sealed(data), error, why)


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def fn(doc: dict[str, Any]) -> None:
        target = doc
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value

    return fn


def _rename_shard(new: str) -> Callable[[dict[str, Any]], None]:
    def fn(doc: dict[str, Any]) -> None:
        doc["shards"] = {new: SHARD_SIZE}
        for t in doc["tensors"].values():
            t["chunks"][0][0] = new

    return fn


def build_v1_v2() -> None:
    q = "'"
    # -- keys that escape the model_dir -----------------------------------------------------------
    for name, shard in {
        "shard-traversal": "../../../../etc/passwd",
        "shard-traversal-inside-attempt": "attempt-0/../../step-000000000001/x.bin",
        "shard-absolute": "/etc/passwd",
        "shard-backslash": "attempt-0\\..\\..\\x.bin",
        "shard-nul": "attempt-0/shard\x00.bin",
        "shard-dot-component": "attempt-0/./shard.bin",
        "shard-three-components": "attempt-0/sub/shard.bin",
        "shard-empty-name": "",
        "shard-url": "s3://other-bucket/x.bin",
    }.items():
        manifest_case(
            name, edit(_rename_shard(shard)),
            rf"{M}: shard name .* is not a safe relative key",
            f"shard key {shard!r} would resolve outside step-000000000007/",
        )
    manifest_case(
        "chunk-names-unlisted-traversal", edit(lambda d: chunk(d).__setitem__(0, "../../../etc/shadow")),
        rf"{M}: tensor a: shard name '../../../etc/shadow' is not a safe relative key",
        "a chunk naming an escaping shard the shards map does not list",
    )
    manifest_case(
        "chunk-names-unlisted-shard", edit(lambda d: chunk(d).__setitem__(0, "attempt-0/other.bin")),
        rf"{M}: tensor a: chunk names shard 'attempt-0/other.bin', which the manifest does not list",
        "a chunk in a shard whose size was never declared (so never checked against the file)",
    )
    for kind, value in {"list": Raw(b"\x91\xa1x"), "map": Raw(b"\x81\xa1x\x01")}.items():
        manifest_case(
            f"chunk-shard-is-a-{kind}", edit(lambda d, v=value: chunk(d).__setitem__(0, v)),
            rf"{M}: tensor a: shard name .* is not a safe relative key",
            "an unhashable shard name once escaped the validator as TypeError",
        )
    for name, tensor in {
        "tensor-name-traversal": "../../a",
        "tensor-name-absolute": "/a",
        "tensor-name-backslash": "a\\b",
        "tensor-name-nul": "a\x00b",
        "tensor-name-empty-component": "a//b",
        "tensor-name-empty": "",
    }.items():
        manifest_case(
            name, edit(lambda d, t=tensor: d["tensors"].__setitem__(t, d["tensors"].pop("a"))),
            rf"{M}: tensor name .*",
            "tensor names become dict keys and, in adapters, file or variable paths",
        )
    manifest_case(
        "scalar-name-traversal", edit(lambda d: d["scalars"].__setitem__("../x", 1)),
        rf"{M}: tensor name '../x' has an empty, '.' or '..' component",
        "scalar names are names too",
    )

    # -- offsets and sizes ---------------------------------------------------------------------------
    manifest_case(
        "offset-beyond-shard", edit(lambda d: chunk(d, "b").__setitem__(1, 8192)),
        rf"{M}: tensor b: chunk \[8192, 12288\) lies outside shard {SHARD} \(8192 bytes\)",
        "a read past the end of the declared shard",
    )
    manifest_case(
        "offset-huge", edit(lambda d: chunk(d, "b").__setitem__(1, 2**64 - 4096)),
        rf"{M}: tensor b: chunk offset 18446744073709547520 is not an integer in \[0, 281474976710656\]",
        "an offset that wraps around in 64-bit arithmetic",
    )
    manifest_case(
        "offset-negative", edit(lambda d: chunk(d, "b").__setitem__(1, -4096)),
        rf"{M}: tensor b: chunk offset -4096 is not an integer in",
        "a negative offset (a seek from the end in some APIs)",
    )
    manifest_case(
        "offset-misaligned", edit(lambda d: chunk(d, "b").__setitem__(1, 4000)),
        rf"{M}: tensor b: chunk offset 4000 is not 4096-byte aligned",
        "a misaligned chunk (and an overlap) the layout never produces",
    )
    manifest_case(
        "chunks-overlap", edit(lambda d: chunk(d, "b").__setitem__(1, 0)),
        rf"{M}: tensors [ab] and [ab] overlap in shard {SHARD} at byte 0",
        "two tensors aliasing the same bytes",
    )
    manifest_case(
        "chunks-overlap-within-tensor",
        edit(lambda d: d["tensors"]["b"].update(
            shape=[1024], chunks=[chunk(d, "b"), list(chunk(d, "b"))])),
        rf"{M}: tensors b and b overlap in shard {SHARD} at byte 4096",
        "one tensor reading the same bytes twice to reach its declared size",
    )
    manifest_case(
        "chunk-offset-is-bool", edit(lambda d: chunk(d).__setitem__(1, False)),
        rf"{M}: tensor a: chunk offset False is not an integer",
        "booleans are ints in Python; the format does not accept them as ints",
    )
    manifest_case(
        "chunk-offset-is-float", edit(lambda d: chunk(d).__setitem__(1, 0.0)),
        rf"{M}: tensor a: chunk offset 0.0 is not an integer",
        "a float offset",
    )
    manifest_case(
        "chunk-wrong-arity", edit(lambda d: d["tensors"]["a"].__setitem__("chunks", [[SHARD, 0, 4096]])),
        rf"{M}: tensor a: chunk .* is not \[shard, offset, nbytes, crc32c\]",
        "a chunk with a missing field",
    )
    manifest_case(
        "crc-out-of-range", edit(lambda d: chunk(d).__setitem__(3, 2**32)),
        rf"{M}: tensor a: crc32c 4294967296 is not an integer in \[0, 4294967295\]",
        "a checksum that cannot be a crc32c",
    )
    manifest_case(
        "chunks-shorter-than-shape", edit(lambda d: d["tensors"]["a"].__setitem__("shape", [1025])),
        rf"{M}: tensor a: chunks hold 4096 bytes but shape \[1025\] of float32 needs 4100",
        "a read into an array larger than the bytes that fill it (uninitialised memory returned)",
    )
    manifest_case(
        "shape-overflows-int64",
        # (2**61 + 512) * 2 elements * 4 bytes = 2**64 + 4096: wraps to exactly the chunk size in int64.
        edit(lambda d: d["tensors"]["a"].__setitem__("shape", [2**61 + 512, 2])),
        rf"{M}: tensor a: chunks hold 4096 bytes but shape \[2305843009213694464, 2\] of float32 needs "
        r"18446744073709555712",
        "a shape whose byte size wraps around to the chunk size in 64-bit arithmetic",
    )
    manifest_case(
        "shape-dimension-too-large", edit(lambda d: d["tensors"]["a"].__setitem__("shape", [2**63, 0])),
        rf"{M}: tensor a: dimension 9223372036854775808 is not an integer in",
        "a dimension numpy cannot represent",
    )
    manifest_case(
        "shape-negative", edit(lambda d: d["tensors"]["a"].__setitem__("shape", [-1, -1024])),
        rf"{M}: tensor a: dimension -1 is not an integer in",
        "negative dimensions whose product is positive",
    )
    manifest_case(
        "shape-too-many-dims", edit(lambda d: d["tensors"]["a"].__setitem__("shape", [1] * 65 + [1024])),
        rf"{M}: tensor a: 66 dimensions \(at most 64\)",
        "more dimensions than numpy supports",
    )
    manifest_case(
        "shape-not-a-list", edit(lambda d: d["tensors"]["a"].__setitem__("shape", {"0": 1024})),
        rf"{M}: tensor a: field 'shape' has type dict",
        "wrong type",
    )
    manifest_case(
        "shard-size-beyond-limit", edit(lambda d: d["shards"].__setitem__(SHARD, 2**50)),
        rf"{M}: size of shard {SHARD} 1125899906842624 is not an integer in \[0, 281474976710656\]",
        "a shard size beyond any real object",
    )
    manifest_case(
        "shard-size-negative", edit(lambda d: d["shards"].__setitem__(SHARD, -1)),
        rf"{M}: size of shard {SHARD} -1 is not an integer in",
        "a negative size",
    )

    def terabyte(d: dict[str, Any]) -> None:
        d["shards"][SHARD] = 2**40
        d["tensors"]["a"] = {"dtype": "float32", "shape": [2**38], "chunks": [[SHARD, 8192, 2**40 - 8192, 0]]}
        d["tensors"]["a"]["shape"] = [(2**40 - 8192) // 4]

    manifest_case(
        "declares-1tb-tensor-in-4k-shard", edit(terabyte),
        rf"{SHARD}: shard is 8192 bytes but the manifest says 1099511627776 \(truncated, extended or replaced\)",
        "a 1 TiB tensor in an 8 KiB file must fail on the shard's real size, before allocating",
    )

    # -- versions, dtypes, types -------------------------------------------------------------------
    manifest_case(
        "unknown-major-version", edit(_set(["version"], [4, 0])),
        rf"{M}: format version 4.0 is not supported \(this ckptstore reads major versions 1, 2 and 3\); upgrade",
        "a future format must not be half-read",
    )
    manifest_case(
        "v1-document-claiming-v2", edit(_set(["version"], [2, 0])),
        rf"{M}: field 'shards' has type dict", "a 1.x document labelled 2.0 is read as 2.0, and refused",
    )
    manifest_case(
        "version-major-zero", edit(_set(["version"], [0, 9])),
        rf"{M}: format version 0.9 is not supported", "a pre-release format",
    )
    manifest_case(
        "version-not-a-list", edit(_set(["version"], "1.0")),
        rf"{M}: malformed version '1.0'", "wrong type",
    )
    manifest_case(
        "version-bools", edit(_set(["version"], [True, False])),
        rf"{M}: malformed version \[True, False\]", "booleans are not version numbers",
    )
    manifest_case(
        "not-a-ckptstore-manifest", edit(_set(["format"], "safetensors")),
        rf"{M}: not a ckptstore document \(format='safetensors'\)", "some other format's file",
    )
    manifest_case(
        "format-missing", edit(lambda d: d.pop("format")),
        rf"{M}: not a ckptstore document \(format=None\)", "no format name",
    )
    for dtype in ("float128", "object", "O", "<U8", "complex256", "float32 ", "bfloat17"):
        manifest_case(
            f"dtype-{''.join(c if c.isalnum() else '_' for c in dtype)}",
            edit(lambda d, t=dtype: d["tensors"]["a"].__setitem__("dtype", t)),
            rf"{M}: tensor a: unknown dtype {q}{dtype.replace(' ', '.')}{q}",
            "dtypes outside the closed set (object arrays would need pickle)",
        )
    manifest_case(
        "dtype-not-a-string", edit(lambda d: d["tensors"]["a"].__setitem__("dtype", 11)),
        rf"{M}: tensor a: field 'dtype' has type int", "wrong type",
    )
    manifest_case(
        "step-is-a-string", edit(_set(["step"], "7")),
        rf"{M}: step '7' is not an integer in", "wrong type",
    )
    manifest_case(
        "step-beyond-int64", edit(_set(["step"], 2**64 - 1)),
        rf"{M}: step 18446744073709551615 is not an integer in \[0, 9223372036854775807\]",
        "a step that wraps negative in int64",
    )
    manifest_case(
        "step-differs-from-key", edit(_set(["step"], 8)),
        rf"{M}: manifest says step 8, its key says 7",
        "a manifest copied under another step's directory",
    )
    manifest_case(
        "tensors-is-a-list", edit(_set(["tensors"], [])),
        rf"{M}: field 'tensors' has type list", "wrong type",
    )
    manifest_case(
        "tensor-entry-not-a-map", edit(lambda d: d["tensors"].__setitem__("a", [1, 2])),
        rf"{M}: tensor a: entry is not a map", "wrong type",
    )
    manifest_case(
        "shards-missing", edit(lambda d: d.pop("shards")),
        rf"{M}: missing field 'shards'", "a required field is absent",
    )
    manifest_case(
        "scalar-is-a-list", edit(lambda d: d["scalars"].__setitem__("lr", [0.1])),
        rf"{M}: scalar lr has type list", "scalars are bool/int/float/str only",
    )
    manifest_case(
        "scalar-is-bytes", edit(lambda d: d["scalars"].__setitem__("lr", b"\x00")),
        rf"{M}: scalar lr has type bytes", "scalars are bool/int/float/str only",
    )
    manifest_case(
        "name-is-tensor-and-scalar", edit(lambda d: d["scalars"].__setitem__("a", 1)),
        rf"{M}: a is both a tensor and a scalar", "an ambiguous name",
    )
    manifest_case(
        "created-is-a-string", edit(_set(["created"], "yesterday")),
        rf"{M}: field 'created' has type str", "wrong type",
    )
    manifest_case(
        "metadata-nested-too-deep", edit(_set(["metadata"], {"x": Raw(nested_lists(40))})),
        rf"{M}: metadata: nested deeper than 32 levels", "deep nesting that would exhaust recursion later",
    )
    manifest_case(
        "metadata-key-not-a-string", edit(_set(["metadata"], Raw(b"\x81\xc4\x01k\x01"))),
        rf"{M}: metadata: map key b'k' is not a string", "bytes keys in user metadata",
    )
    manifest_case(
        "document-is-a-list", pack([base_manifest()]),
        rf"{M}: no crc32c seal at the end", "wrong top-level type (only a map can carry the seal)",
    )
    manifest_case(
        "document-is-nil", pack(None), rf"{M}: no crc32c seal at the end", "wrong top-level type",
    )

    # -- msgpack-level attacks -----------------------------------------------------------------------
    invalid = rf"{M}: not a valid msgpack document"
    manifest_case("empty-file", b"", rf"{M}: no crc32c seal at the end", "a zero-byte manifest")
    manifest_case(
        "nested-10000-deep", b"\x81\xa1x" + nested_lists(10_000), rf"{invalid} \(StackError",
        "nesting that would overflow the C stack of a naive unpacker",
    )
    manifest_case(
        "nested-maps-3000-deep", b"\x81\xa1k" * 3000 + b"\xc0", rf"{invalid} \(StackError",
        "nesting through maps",
    )
    manifest_case(
        "array-header-claims-4g-elements", edit(_set(["metadata"], {"x": Raw(b"\xdd\xff\xff\xff\xff")})),
        rf"{invalid} \(ValueError: 4294967295 exceeds max_array_len",
        "a 5-byte header asking the unpacker to preallocate 4 billion slots",
    )
    manifest_case(
        "map-header-claims-4g-entries", edit(_set(["metadata"], Raw(b"\xdf\xff\xff\xff\xff"))),
        rf"{invalid} \(ValueError: 4294967295 exceeds max_map_len", "the same through a map header",
    )
    manifest_case(
        "bin-header-claims-4gb", edit(_set(["metadata"], {"x": Raw(b"\xc6\xff\xff\xff\xff")})),
        rf"{invalid} \(ValueError: (4294967295 exceeds max_bin_len|Unpack failed: incomplete input)",
        "a bin header claiming 4 GiB",
    )
    manifest_case(
        "str-header-claims-4gb", edit(_set(["library"], Raw(b"\xdb\xff\xff\xff\xff"))),
        rf"{invalid} \(ValueError: (4294967295 exceeds max_str_len|Unpack failed: incomplete input)",
        "a str header claiming 4 GiB",
    )
    manifest_case(
        "array-header-beyond-data", edit(_set(["metadata"], {"x": Raw(b"\xdd\x00\x10\x00\x00")})),
        rf"{invalid} \(ValueError", "a header claiming a million elements in a few hundred bytes",
    )
    manifest_case(
        "str-header-just-over-limit", edit(_set(["library"], Raw(b"\xdb\x00\x10\x00\x01" + b"x" * 64))),
        rf"{invalid} \(ValueError: (1048577 exceeds max_str_len\(1048576\)|Unpack failed: incomplete input)",
        "a string one byte over the 1 MiB limit (refused from its header, before reading it)",
    )
    manifest_case(
        "ext-type", edit(_set(["metadata"], {"x": Raw(b"\xd4\x01\x00")})),
        rf"{invalid} \(ValueError: \d+ exceeds max_ext_len\(0\)", "ext types are not part of the format",
    )
    manifest_case(
        "ext-timestamp", edit(_set(["created"], Raw(b"\xd6\xff\x65\x53\xf1\x00"))),
        rf"{invalid} \(ValueError: \d+ exceeds max_ext_len\(0\)", "msgpack timestamps are ext types too",
    )
    manifest_case(
        "int-map-key", edit(_set(["tensors"], Raw(b"\x81\x01\x80"))),
        rf"{invalid} \(ValueError: int is not allowed for map key", "non-string map keys",
    )
    manifest_case(
        "trailing-garbage", seal(pack(base_manifest())) + b"\xc0",
        rf"{M}: no crc32c seal at the end", "bytes appended after a valid manifest", as_crafted=True,
    )
    manifest_case(
        "truncated", pack(base_manifest())[:-3], rf"{invalid} \(ValueError", "a torn manifest",
    )
    manifest_case(
        "invalid-utf8", edit(_set(["library"], Raw(b"\xa2\xff\xfe"))),
        rf"{invalid} \(UnicodeDecodeError", "strings must be UTF-8",
    )
    manifest_case(
        "reserved-byte-0xc1", edit(_set(["library"], Raw(b"\xc1"))),
        rf"{invalid} \(", "the one byte msgpack never uses",
    )

    build_v2()

    # -- LATEST --------------------------------------------------------------------------------------
    L = "LATEST"
    for name, key in {
        "manifest-traversal": "../../../etc/passwd",
        "manifest-absolute": "/etc/passwd",
        "manifest-other-step": "step-000000000001/manifest.msgpack",
        "manifest-url": "file:///etc/passwd",
    }.items():
        latest_case(
            name, edit(_set(["manifest"], key), base_latest),
            rf"{L}: manifest key {q}{key}{q} does not belong to step 7",
            "LATEST must not steer readers to an arbitrary key",
        )
    latest_case(
        "step-beyond-int64", edit(_set(["step"], 2**64 - 1), base_latest),
        rf"{L}: step 18446744073709551615 is not an integer", "a step that wraps negative",
    )
    latest_case(
        "unknown-major-version", edit(_set(["version"], [3, 1]), base_latest),
        rf"{L}: format version 3.1 is not supported", "a future pointer format",
    )
    latest_case(
        "is-a-manifest", pack(base_manifest()),
        rf"{L}: not a ckptstore-latest document \(format='ckptstore'\)", "a manifest copied over LATEST",
    )
    latest_case(
        "retention-nested-too-deep", edit(_set(["retention"], {"x": Raw(nested_lists(40))}), base_latest),
        rf"{L}: retention: nested deeper than 32 levels", "deep nesting in the retention state",
    )
    latest_case(
        "nbytes-is-a-string", edit(_set(["nbytes"], "8192"), base_latest),
        rf"{L}: nbytes '8192' is not an integer", "wrong type",
    )
    latest_case(
        "ext-type", edit(_set(["metadata"], {"x": Raw(b"\xd4\x01\x00")}), base_latest),
        rf"{L}: not a valid msgpack document \(ValueError: \d+ exceeds max_ext_len\(0\)", "ext types",
    )
    latest_case(
        "array-header-claims-4g-elements", edit(_set(["retention"], Raw(b"\xdd\xff\xff\xff\xff")), base_latest),
        rf"{L}: not a valid msgpack document \(ValueError: 4294967295 exceeds max_array_len",
        "a preallocation bomb",
    )
    latest_case(
        "nested-10000-deep", b"\x81\xa1x" + nested_lists(10_000), rf"{L}: not a valid msgpack document \(StackError",
        "stack exhaustion",
    )
    latest_case("empty-file", b"", rf"{L}: no crc32c seal at the end", "a torn pointer")


def v2(fn: Callable[[dict[str, Any]], Any]) -> bytes:
    return edit(fn, base_manifest_v2)


def _chunk(i: int, **fields: int) -> Callable[[dict[str, Any]], None]:
    """Change fields of the ``i``-th chunk record."""

    def fn(doc: dict[str, Any]) -> None:
        records = bytearray(doc["chunks"])
        shard, offset, nbytes, crc = struct.unpack_from("<IQQI", records, 24 * i)
        values = {"shard": shard, "offset": offset, "nbytes": nbytes, "crc": crc} | fields
        struct.pack_into("<IQQI", records, 24 * i, *values.values())
        doc["chunks"] = bytes(records)

    return fn


def _dims_of_a(*dims: int, held: int | None = None) -> Callable[[dict[str, Any]], None]:
    """Give tensor "a" the shape ``dims`` (and its one chunk ``held`` bytes)."""

    def fn(doc: dict[str, Any]) -> None:
        doc["ndim"] = bytes([len(dims), 1])
        doc["dims"] = u64(*dims, 512)
        if held is not None:
            _chunk(0, nbytes=held)(doc)

    return fn


def build_v2() -> None:
    """Format 2.0: the columns, their lengths and the arithmetic the vectorised validator does."""
    # -- column lengths: every count is checked against the bytes that hold it, before allocating --
    for key, data, error in (
        ("dtype", bytes([0, 1, 1]), r"field 'dtype' holds 3 bytes, expected 2 \(one uint8 per tensor\)"),
        ("ndim", bytes([1]), r"field 'ndim' holds 1 bytes, expected 2 \(one uint8 per tensor\)"),
        ("nchunks", u32(1, 1)[:7], r"field 'nchunks' holds 7 bytes, expected 8 \(one uint32 per tensor\)"),
        ("dims", u64(1024), r"field 'dims' holds 8 bytes, expected 16 \(one uint64 per dimension; ndim adds up to 2\)"),
        ("dims", u64(1024, 512) + b"\x00", r"field 'dims' holds 17 bytes, expected 16"),
        ("chunks", record(0, 0, 4096, 0), r"field 'chunks' holds 24 bytes, expected 48 \(24 bytes per chunk; "
                                          r"nchunks adds up to 2\)"),
        ("chunks", record(0, 0, 4096, 0) * 2 + b"\x00" * 23, r"field 'chunks' holds 71 bytes, expected 48"),
    ):
        manifest_case(
            f"v2-{key}-length-{len(data)}", v2(_set([key], data)), rf"{M}: {error}",
            "a column whose length disagrees with the counts: reading past its end, or items left unchecked",
        )
    manifest_case(
        "v2-nchunks-claims-8g-chunks", v2(_set(["nchunks"], u32(2**32 - 1, 2**32 - 1))),
        rf"{M}: field 'chunks' holds 48 bytes, expected 206158430160 \(24 bytes per chunk; nchunks adds up to "
        r"8589934590\)",
        "8 bytes claiming 8 billion chunks must not allocate for them",
    )
    manifest_case(
        "v2-ndim-claims-255-each", v2(_set(["ndim"], bytes([255, 255]))),
        rf"{M}: field 'dims' holds 16 bytes, expected 4080 \(one uint64 per dimension; ndim adds up to 510\)",
        "huge declared dimension counts with a tiny dims column",
    )
    manifest_case(
        "v2-names-shorter-than-columns", v2(_set(["names"], ["a"])),
        rf"{M}: field 'dtype' holds 2 bytes, expected 1", "one tensor fewer than the columns describe",
    )
    for key, value, kind in (("dims", [1024, 512], "list"), ("chunks", "x", "str"), ("names", {"a": 0}, "dict"),
                             ("shards", {SHARD: SHARD_SIZE}, "dict"), ("dtypes", "float32", "str")):
        manifest_case(
            f"v2-{key}-is-a-{kind}", v2(_set([key], value)), rf"{M}: field '{key}' has type {kind}", "wrong type",
        )
    manifest_case("v2-chunks-missing", v2(lambda d: d.pop("chunks")), rf"{M}: missing field 'chunks'", "absent")
    manifest_case(
        "v2-chunks-bin-claims-4gb", v2(_set(["chunks"], Raw(b"\xc6\xff\xff\xff\xff"))),
        rf"{M}: not a valid msgpack document \(ValueError: (4294967295 exceeds max_bin_len|Unpack failed: "
        r"incomplete input)", "a bin header claiming 4 GiB of chunk records",
    )
    manifest_case(
        "v2-names-claim-4g-entries", v2(_set(["names"], Raw(b"\xdd\xff\xff\xff\xff"))),
        rf"{M}: not a valid msgpack document \(ValueError: 4294967295 exceeds max_array_len",
        "an array header claiming 4 billion names",
    )

    # -- dtypes ---------------------------------------------------------------------------------------
    manifest_case(
        "v2-dtype-index-out-of-range", v2(_set(["dtype"], bytes([0, 2]))),
        rf"{M}: tensor b: dtype index 2 is out of range \(field 'dtypes' lists 2\)", "an index past the dtype table",
    )
    manifest_case(
        "v2-dtype-index-255", v2(_set(["dtype"], bytes([255, 1]))),
        rf"{M}: tensor a: dtype index 255 is out of range", "the largest index a byte can hold",
    )
    for dtype in ("object", "float128", "<U8", "O"):
        manifest_case(
            f"v2-dtype-{''.join(c if c.isalnum() else '_' for c in dtype)}",
            v2(_set(["dtypes"], ["float32", dtype])),
            rf"{M}: unknown dtype '{dtype}' in field 'dtypes'", "dtypes outside the closed set (object needs pickle)",
        )
    manifest_case(
        "v2-dtype-name-not-a-string", v2(_set(["dtypes"], ["float32", 8])),
        rf"{M}: unknown dtype 8 in field 'dtypes'", "wrong type",
    )
    manifest_case(
        "v2-dtypes-listed-twice", v2(_set(["dtypes"], ["float32", "float32"])),
        rf"{M}: field 'dtypes' lists a dtype twice", "an ambiguous dtype table",
    )

    # -- shapes ---------------------------------------------------------------------------------------
    manifest_case(
        "v2-ndim-65", v2(_dims_of_a(*[1] * 64, 1024)),
        rf"{M}: tensor a: 65 dimensions \(at most 64\)", "more dimensions than numpy supports",
    )
    manifest_case(
        "v2-dimension-too-large", v2(_dims_of_a(2**63, 0)),
        rf"{M}: tensor a: dimension 9223372036854775808 is not an integer in \[0, 4611686018427387904\]",
        "a dimension numpy cannot represent",
    )
    manifest_case(
        "v2-dimension-of-b-too-large", v2(lambda d: d.__setitem__("dims", u64(1024, 2**64 - 1))),
        rf"{M}: tensor b: dimension 18446744073709551615 is not an integer in",
        "the error names the tensor the dimension belongs to",
    )
    manifest_case(
        "v2-shape-product-wraps-to-held",
        # (2**61 + 512) * 2 elements * 4 bytes = 2**64 + 4096: wraps to exactly the chunk size in uint64.
        v2(_dims_of_a(2**61 + 512, 2)),
        rf"{M}: tensor a: chunks hold 4096 bytes but shape \[2305843009213694464, 2\] of float32 needs "
        r"18446744073709555712",
        "a shape whose byte size wraps around to the chunk size in 64-bit arithmetic",
    )
    manifest_case(
        "v2-shape-product-wraps-to-zero", v2(_dims_of_a(2**32, 2**30, held=0)),
        rf"{M}: tensor a: chunks hold 0 bytes but shape \[4294967296, 1073741824\] of float32 needs "
        r"18446744073709551616",
        "2**62 elements of 4 bytes wrap to 0 bytes in uint64: an empty chunk for an enormous array",
    )
    manifest_case(
        "v2-shape-product-overflows-float", v2(_dims_of_a(*[2**62] * 20)),
        rf"{M}: tensor a: chunks hold 4096 bytes but shape \[4611686018427387904, .*\] of float32 needs \d{{370,}}$",
        "a product beyond float64's range (the overflow estimate is inf, and must still refuse)",
    )
    manifest_case(
        "v2-shape-with-zero-and-huge-dims", v2(_dims_of_a(*[2**62] * 20, 0)),
        rf"{M}: tensor a: chunks hold 4096 bytes but shape \[4611686018427387904, .*, 0\] of float32 needs 0$",
        "0 x inf is nan in floats: a zero dimension must still mean 0 bytes",
    )
    manifest_case(
        "v2-chunks-shorter-than-shape", v2(_dims_of_a(1025)),
        rf"{M}: tensor a: chunks hold 4096 bytes but shape \[1025\] of float32 needs 4100",
        "a read into an array larger than the bytes that fill it (uninitialised memory returned)",
    )
    manifest_case(
        "v2-0d-tensor-sized-like-its-neighbour",
        # np.multiply.reduceat returns dims[i] for an empty run: a naive product would say "a" needs
        # 512 elements (b's first dimension) * 4 = 2048 bytes, which is what its chunk holds.
        v2(_dims_of_a(held=2048)),
        rf"{M}: tensor a: chunks hold 2048 bytes but shape \[\] of float32 needs 4$",
        "a 0-d tensor has one element, not its neighbour's first dimension",
    )
    manifest_case(
        "v2-no-chunks-for-a-tensor",
        v2(lambda d: d.update(nchunks=u32(0, 1), chunks=d["chunks"][24:])),
        rf"{M}: tensor a: chunks hold 0 bytes but shape \[1024\] of float32 needs 4096",
        "a tensor with no bytes at all",
    )

    # -- chunks ---------------------------------------------------------------------------------------
    manifest_case(
        "v2-shard-index-out-of-range", v2(_chunk(1, shard=1)),
        rf"{M}: tensor b: chunk names shard #1, but the manifest lists 1 shard\(s\)",
        "a chunk in a shard whose size was never declared (so never checked against the file)",
    )
    manifest_case(
        "v2-shard-index-huge", v2(_chunk(0, shard=2**32 - 1)),
        rf"{M}: tensor a: chunk names shard #4294967295", "an index far past the shard list",
    )
    manifest_case(
        "v2-offset-misaligned", v2(_chunk(1, offset=4000)),
        rf"{M}: tensor b: chunk offset 4000 is not 4096-byte aligned",
        "a misaligned chunk (and an overlap) the layout never produces",
    )
    manifest_case(
        "v2-offset-huge", v2(_chunk(1, offset=2**64 - 4096)),
        rf"{M}: tensor b: chunk offset 18446744073709547520 is not an integer in \[0, 281474976710656\]",
        "an offset that wraps around in 64-bit arithmetic",
    )
    manifest_case(
        "v2-nbytes-wraps-end-to-zero", v2(_chunk(1, nbytes=2**64 - 4096)),
        rf"{M}: tensor b: chunk size 18446744073709547520 is not an integer in \[0, 281474976710656\]",
        "offset + nbytes = 2**64: an end of 0 in uint64, inside any shard",
    )
    manifest_case(
        "v2-offset-beyond-shard", v2(_chunk(1, offset=8192)),
        rf"{M}: tensor b: chunk \[8192, 12288\) lies outside shard {SHARD} \(8192 bytes\)",
        "a read past the end of the declared shard",
    )
    manifest_case(
        "v2-chunks-overlap", v2(_chunk(1, offset=0)),
        rf"{M}: tensors [ab] and [ab] overlap in shard {SHARD} at byte 0", "two tensors aliasing the same bytes",
    )
    manifest_case(
        "v2-chunks-overlap-out-of-order",
        # b (second in tensor order) first in the shard and 8 KiB long: it contains a.
        v2(lambda d: (_chunk(0, offset=4096)(d), _chunk(1, offset=0, nbytes=8192)(d), _set(["dims"], u64(1024, 1024))(d))),
        rf"{M}: tensors b and a overlap in shard {SHARD} at byte 4096",
        "overlaps between chunks stored out of shard order (the sorted check, not the in-order pass)",
    )
    manifest_case(
        "v2-chunks-overlap-within-tensor",
        v2(lambda d: d.update(dims=u64(1024, 1024), nchunks=u32(1, 2), chunks=d["chunks"] + d["chunks"][24:])),
        rf"{M}: tensors b and b overlap in shard {SHARD} at byte 4096",
        "one tensor reading the same bytes twice to reach its declared size",
    )
    manifest_case(
        "v2-declares-1tb-tensor-in-4k-shard",
        v2(lambda d: (d.__setitem__("shards", [[SHARD, 2**40]]), _dims_of_a((2**40 - 8192) // 4, held=2**40 - 8192)(d),
                      _chunk(0, offset=8192)(d))),
        rf"{SHARD}: shard is 8192 bytes but the manifest says 1099511627776 \(truncated, extended or replaced\)",
        "a 1 TiB tensor in an 8 KiB file must fail on the shard's real size, before allocating",
    )

    # -- names ----------------------------------------------------------------------------------------
    for name, tensor in {
        "traversal": "../../a", "absolute": "/a", "backslash": "a\\b", "nul": "a\x00b",
        "empty-component": "a//b", "trailing-slash": "a/", "empty": "", "dot-component": "x/./a",
        "too-long": "x" * 1025,
    }.items():
        manifest_case(
            f"v2-tensor-name-{name}", v2(lambda d, t=tensor: d.__setitem__("names", [t, "b"])),
            rf"{M}: tensor name .*",
            "tensor names become dict keys and, in adapters, file or variable paths",
        )
    manifest_case(
        "v2-tensor-name-not-a-string", v2(_set(["names"], ["a", 5])),
        rf"{M}: tensor name 5 is not a string", "wrong type",
    )
    manifest_case(
        "v2-tensor-name-is-bytes", v2(_set(["names"], [b"a", "b"])),
        rf"{M}: tensor name b'a' is not a string", "a bin where a str belongs",
    )
    manifest_case(
        "v2-tensor-listed-twice", v2(_set(["names"], ["a", "a"])),
        rf"{M}: tensor a is listed twice", "two entries for one name: which one is restored?",
    )
    manifest_case(
        "v2-name-is-tensor-and-scalar", v2(lambda d: d["scalars"].__setitem__("b", 1)),
        rf"{M}: b is both a tensor and a scalar", "an ambiguous name",
    )
    for name, shard in {"traversal": "../../../../etc/passwd", "absolute": "/etc/passwd",
                        "three-components": "attempt-0/sub/shard.bin", "not-a-string": 7}.items():
        manifest_case(
            f"v2-shard-name-{name}", v2(_set(["shards"], [[shard, SHARD_SIZE]])),
            rf"{M}: shard name .* is not a safe relative key",
            f"shard key {shard!r} would resolve outside step-000000000007/",
        )
    manifest_case(
        "v2-shard-listed-twice", v2(_set(["shards"], [[SHARD, SHARD_SIZE], [SHARD, 4096]])),
        rf"{M}: shard {SHARD} is listed twice", "two sizes for one file",
    )
    for name, entry in {"short": [SHARD], "long": [SHARD, SHARD_SIZE, 0], "map": {SHARD: SHARD_SIZE}}.items():
        manifest_case(
            f"v2-shard-entry-{name}", v2(_set(["shards"], [entry])),
            rf"{M}: shard entry #0 .* is not \[name, size\]", "a malformed shard entry",
        )
    manifest_case(
        "v2-shard-size-beyond-limit", v2(_set(["shards"], [[SHARD, 2**50]])),
        rf"{M}: size of shard {SHARD} 1125899906842624 is not an integer in \[0, 281474976710656\]",
        "a shard size beyond any real object",
    )


def v3(fn: Callable[[dict[str, Any]], Any]) -> bytes:
    return edit(fn, base_manifest_v3)


def build_v3() -> None:
    """Format 3.0: what it adds to 2.0 (the checksum algorithm, 64-bit checksums in 28-byte records)."""
    data = base_shard()
    manifest_case(
        "v3-checksum-unknown", v3(_set(["checksum"], "sha256")),
        rf"{M}: unknown checksum algorithm 'sha256' \(this ckptstore knows crc32c, xxh3-64\); upgrade ckptstore",
        "an algorithm this reader cannot verify must not be read unverified (or as another algorithm)",
    )
    manifest_case(
        "v3-checksum-missing", v3(lambda d: d.pop("checksum")),
        rf"{M}: missing field 'checksum'", "a 3.0 manifest that does not say how its chunks are checksummed",
    )
    manifest_case(
        "v3-checksum-not-a-string", v3(_set(["checksum"], ["xxh3-64"])),
        rf"{M}: field 'checksum' has type list", "the algorithm as a list (unhashable)",
    )
    manifest_case(
        "v3-checksum-huge-string", v3(_set(["checksum"], "x" * 100_000)),
        rf"{M}: unknown checksum algorithm 'x{{20,}}\.\.\. \(this ckptstore knows",
        "a 100 kB algorithm name (the error quotes a short prefix)",
    )
    manifest_case(
        "v3-records-of-2.0-width", v3(_set(["chunks"], base_manifest_v2()["chunks"])),
        rf"{M}: field 'chunks' holds 48 bytes, expected 56 \(28 bytes per chunk; nchunks adds up to 2\)",
        "2.0's 24-byte records under a 3.0 version: the checksums would be read from the wrong bytes",
    )
    manifest_case(
        "v3-crc32c-value-wider-than-32-bits",
        v3(lambda d: (d.__setitem__("checksum", "crc32c"),
                      d.__setitem__("chunks", record_v3(0, 0, 4096, 2**32 + crc32c.crc32c(data[:4096]))
                                    + record_v3(0, 4096, 4096, crc32c.crc32c(data[4096:]))))),
        rf"{M}: tensor a: chunk checksum {2**32 + crc32c.crc32c(data[:4096])} is not a crc32c value "
        rf"\(at most 4294967295\)",
        "a crc32c that no data can have (a 64-bit slot holding a 32-bit checksum)",
    )
    manifest_case(
        "v3-version-2-with-v3-records", v3(_set(["version"], [2, 0])),
        rf"{M}: field 'chunks' holds 56 bytes, expected 48 \(24 bytes per chunk; nchunks adds up to 2\)",
        "a downgraded version: a 2.x reader must not take 64-bit checksums as 32-bit ones",
    )


def v31(fn: Callable[[dict[str, Any]], Any]) -> bytes:
    return edit(fn, base_manifest_v31)


def build_v31() -> None:
    """Format 3.1: its one new field, ``blocks`` (block checksums), with each of its bounds broken."""
    data = base_shard()
    whole = xxhash.xxh3_64_intdigest(data)
    for name, blocks, error, why in [
        ("v31-blocks-not-a-binary", [[0, 0, 8192, whole]], rf"{M}: field 'blocks' has type list",
         "block records as a list of lists instead of packed records"),
        ("v31-blocks-ragged", record_v3(0, 0, 8192, whole)[:27],
         rf"{M}: field 'blocks' holds 27 bytes, not a multiple of 28 \(one record per block\)",
         "a truncated record: the next field would be read from the wrong bytes"),
        ("v31-block-unlisted-shard", record_v3(5, 0, 8192, whole),
         rf"{M}: block #0 names shard #5, but the manifest lists 1 shard\(s\)", "a block in a shard that does not exist"),
        ("v31-block-offset-misaligned", record_v3(0, 100, 4096, whole),
         rf"{M}: block #0: offset 100 is not 4096-byte aligned", "blocks start where chunks start: on a page"),
        ("v31-block-offset-huge", record_v3(0, 2**60, 4096, whole),
         rf"{M}: block #0: offset {2**60} is not an integer in \[0, {2**48}\]", "an offset whose end would overflow"),
        ("v31-block-empty", record_v3(0, 0, 0, whole),
         rf"{M}: block #0: size 0 is not in \[1, {64 << 20}\]", "a block of no bytes"),
        ("v31-block-of-a-terabyte", record_v3(0, 0, 2**40, whole),
         rf"{M}: block #0: size {2**40} is not in \[1, {64 << 20}\]",
         "a restore reads a block whole: its size is bounded before anything is allocated"),
        ("v31-block-outside-shard", record_v3(0, 4096, 8192, whole),
         rf"{M}: block #0: \[4096, 12288\) lies outside shard {SHARD} \(8192 bytes\)", "a block past the shard's end"),
        ("v31-blocks-overlap", record_v3(0, 0, 8192, whole) + record_v3(0, 4096, 4096, whole),
         rf"{M}: blocks #0 and #1 overlap or are not in \(shard, offset\) order", "two blocks claiming the same bytes"),
        ("v31-blocks-out-of-order", record_v3(0, 4096, 4096, whole) + record_v3(0, 0, 4096, whole),
         rf"{M}: blocks #0 and #1 overlap or are not in \(shard, offset\) order", "blocks listed backwards"),
    ]:
        manifest_case(name, v31(_set(["blocks"], blocks)), error, why)
    manifest_case(
        "v31-block-crc32c-wider-than-32-bits",
        v31(lambda d: (d.__setitem__("checksum", "crc32c"),
                       d.__setitem__("chunks", record_v3(0, 0, 4096, crc32c.crc32c(data[:4096]))
                                     + record_v3(0, 4096, 4096, crc32c.crc32c(data[4096:]))),
                       d.__setitem__("blocks", record_v3(0, 0, 8192, 2**32 + crc32c.crc32c(data))))),
        rf"{M}: block #0: checksum {2**32 + crc32c.crc32c(data)} is not a crc32c value \(at most 4294967295\)",
        "a block crc32c that no data can have",
    )


def repeating(doc: dict[str, Any], key: str, value: Any) -> bytes:
    """``doc`` packed with ``key`` given a second time, last, holding ``value``: no packer writes that."""
    n = len(doc) + 1
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(pack(k) + pack(v) for k, v in doc.items()) + pack(key) + pack(value)


def build_repeated_keys() -> None:
    """A map with a key given twice: msgpack libraries keep the first or the last value, so two readers
    of the one file would disagree on what it says. Refused in every map, at any depth."""
    twice = r"not a valid msgpack document \(ValueError: map key '{}' appears more than once\)"
    manifest_case(
        "repeated-key-step", repeating(base_manifest(), "step", STEP + 1), rf"{M}: " + twice.format("step"),
        "two steps in one manifest: which checkpoint is this?",
    )
    v31_doc = base_manifest_v31()
    manifest_case(
        "v31-repeated-key-chunks", repeating(v31_doc, "chunks", record_v3(0, 4096, 4096, 1) + record_v3(0, 0, 4096, 2)),
        rf"{M}: " + twice.format("chunks"),
        "a second set of chunk records: a reader keeping the first and one keeping the last read different bytes",
    )
    nested = base_manifest_v31()
    nested["metadata"] = Raw(b"\x82" + pack("loss") + pack(0.5) + pack("loss") + pack(9.0))
    manifest_case(
        "v31-repeated-key-in-metadata", pack_with_raw(nested), rf"{M}: " + twice.format("loss"),
        "the same in a nested map",
    )
    latest_case(
        "repeated-key-step", repeating(base_latest(), "step", STEP + 1), r"LATEST: " + twice.format("step"),
        "a pointer naming two checkpoints",
    )


def build() -> None:
    """Every case, into MANIFEST_CASES and LATEST_CASES."""
    build_v1_v2()
    build_v3()
    build_v31()
    build_repeated_keys()


def main() -> None:
    build()
    (HERE / "manifests").mkdir(exist_ok=True)
    (HERE / "latest").mkdir(exist_ok=True)
    for old in [*(HERE / "manifests").glob("*.msgpack"), *(HERE / "latest").glob("*.msgpack")]:
        old.unlink()
    cases = {}
    for folder, table in (("manifests", MANIFEST_CASES), ("latest", LATEST_CASES)):
        for name, (data, error, why) in sorted(table.items()):
            rel = f"{folder}/{name}.msgpack"
            (HERE / rel).write_bytes(data)
            cases[rel] = {"error": error, "why": why}
    (HERE / "base-manifest.msgpack").write_bytes(sealed(pack(base_manifest())))
    (HERE / "base-manifest-v2.msgpack").write_bytes(sealed(pack(base_manifest_v2())))
    (HERE / "base-manifest-v3.msgpack").write_bytes(sealed(pack(base_manifest_v3())))
    (HERE / "base-manifest-v31.msgpack").write_bytes(sealed(pack(base_manifest_v31())))
    (HERE / "base-latest.msgpack").write_bytes(sealed(pack(base_latest())))
    (HERE / "base-shard.bin").write_bytes(base_shard())
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(cases)} cases to {HERE}")


if __name__ == "__main__":
    main()
