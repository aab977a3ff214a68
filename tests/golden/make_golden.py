"""Regenerates the golden files that pin the current format (manifest 3.1, LATEST 1.0) and the shard
layout. Run only when the format changes on purpose (and bump the version):
``python tests/golden/make_golden.py``.

``manifest-v1.msgpack``, ``manifest-v2.msgpack`` and ``manifest-v3.msgpack`` were written by formats
1.0, 2.0 (crc32c checksums) and 3.0 (XXH3-64, no block checksums) from this same ``build``; they are
kept as they are so readers keep reading them, and are no longer regenerated."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptstore.commit import latest_from_manifest
from ckptstore.format import Manifest, TensorEntry, encode_latest, encode_manifest, plan_layout
from ckptstore.storage.memory import MemoryStorage
from ckptstore.transfer import write_shards

HERE = Path(__file__).parent


def golden_state() -> dict[str, np.ndarray]:
    return {
        "dnn/hiddenlayer_0/kernel": np.arange(12, dtype="<f4").reshape(4, 3),
        "dnn/hiddenlayer_0/bias": np.array([1, -2, 3], dtype="<i8"),
        "flag": np.array(True),
        "big": np.arange(3000, dtype="<u2"),  # 6000 bytes: crosses a page, split into 4096-byte chunks
    }


def build(checksum: str = "xxh3-64", *, blocks: bool = True) -> tuple[Manifest, dict[str, bytes]]:
    """The golden checkpoint as a save writes it (``blocks``: with its block checksums, as since 3.1)."""
    state = golden_state()
    plan = plan_layout([(k, v.nbytes) for k, v in state.items()], target_shard_size=8192, chunk_size=4096)
    storage = MemoryStorage("golden")
    written = write_shards(storage, "step-000000000042", "attempt-0000000000000000", state, plan, workers=1,
                           checksum=checksum)
    specs = {k: ({"<f4": "float32", "<i8": "int64", "|b1": "bool", "<u2": "uint16"}[v.dtype.str], v.shape)
             for k, v in state.items()}
    manifest = Manifest(
        step=42,
        created=1700000000.5,
        library="0.1.0",
        shards=written.shard_sizes,
        tensors=written.tensor_table(specs) if blocks else {
            k: TensorEntry(specs[k][0], specs[k][1], written.chunks[k]) for k in state
        },
        scalars={"lr": 0.5, "name": "iris"},
        metadata={"loss": 0.25},
        checksum=checksum,
    )
    shards = {name: storage.get(f"step-000000000042/{name}") for name in written.shard_sizes}
    return manifest, shards


if __name__ == "__main__":
    manifest, shards = build()
    (HERE / "manifest-v3.1.msgpack").write_bytes(encode_manifest(manifest))
    (HERE / "LATEST-v1.msgpack").write_bytes(encode_latest(latest_from_manifest(manifest)))
    for name, data in shards.items():
        (HERE / name.replace("/", "__")).write_bytes(data)
