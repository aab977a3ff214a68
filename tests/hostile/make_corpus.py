"""Generate the hostile-checkpoint corpus: crafted manifests and LATEST pointers, one file per attack.

Run ``python tests/hostile/make_corpus.py`` to (re)write ``manifests/*.msgpack``, ``latest/*.msgpack``,
``base-shard.bin`` and ``cases.json`` next to this file; the generated files are committed, so the
tests read the exact bytes a stranger could hand us. Output is deterministic.

Every case is the valid base checkpoint (step 7: one 8192-byte shard holding a float32[1024] "a" and
an int64[512] "b") with one thing made hostile. ``cases.json`` maps each file to the specific error a
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
    if data and (0x80 <= data[0] < 0x8F or data[0] == 0xDE):
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


def build() -> None:
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
        "unknown-major-version", edit(_set(["version"], [2, 0])),
        rf"{M}: format version 2.0 is not supported \(this ckptstore reads major version 1\); upgrade",
        "a future format must not be half-read",
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
    (HERE / "base-latest.msgpack").write_bytes(sealed(pack(base_latest())))
    (HERE / "base-shard.bin").write_bytes(base_shard())
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(cases)} cases to {HERE}")


if __name__ == "__main__":
    main()
