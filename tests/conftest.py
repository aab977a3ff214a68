"""Shared fixtures: real object-store servers (started once, lazily) and per-backend model_dirs.

``model_dir`` and ``storage`` are parametrized over every backend — memory, local disk, S3 on moto,
S3 on SeaweedFS, GCS on fake-gcs-server — so a test written once runs on all five. Select backends
with ``-k``, e.g. ``pytest -k "memory or local"`` for a fast loop. A server starts the first time a
test needs it and stops at the end of the session.

When a server cannot start (its package is missing, its binary crashes) the test is skipped on a
developer machine but *fails* when ``CI`` is set: a CI run that silently skipped the object stores
would report green on nothing.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import (  # noqa: E402
    FakeGcsServer,
    MotoServer,
    S3Server,
    SeaweedServer,
    start_for_tests,
)

from ckptstore.storage import Storage, open_storage  # noqa: E402

BACKENDS = ["memory", "local", "s3-moto", "s3-seaweedfs", "gcs"]


@pytest.fixture(scope="session")
def s3_moto() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 with bucket ``ckptstore-test``."""
    server = start_for_tests(MotoServer(), ("boto3",))
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="session")
def s3_seaweed() -> Iterator[S3Server]:
    """SeaweedFS (``weed mini``) on 127.0.0.1 with bucket ``ckptstore-test``."""
    server = start_for_tests(SeaweedServer(), ("boto3",))
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture(scope="session")
def gcs_fake() -> Iterator[FakeGcsServer]:
    """fake-gcs-server on 127.0.0.1 with bucket ``ckptstore-test``."""
    server = start_for_tests(FakeGcsServer(), ("gcsfs",))
    yield server  # type: ignore[misc]
    server.stop()


@dataclass(frozen=True)
class ModelDir:
    """Where a test keeps its checkpoints: a fresh, empty location on one backend.

    Attributes:
        backend: one of ``BACKENDS``.
        url: a unique URL (or plain path for ``local``) nobody else uses.
        storage_options: what to pass along with ``url`` (endpoint, credentials); empty for memory/local.
    """

    backend: str
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def open(self) -> Storage:
        """A new backend object on this location (the caller closes it)."""
        return open_storage(self.url, **self.storage_options)


def _make_model_dir(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> ModelDir:
    unique = f"{request.node.name[:40]}-{uuid.uuid4().hex[:12]}".replace("[", "-").replace("]", "")
    unique = "".join(c if c.isalnum() or c in "-_." else "-" for c in unique)
    if backend == "memory":
        return ModelDir(backend, f"memory://{unique}")
    if backend == "local":
        return ModelDir(backend, str(tmp_path / "model_dir"))
    if backend == "s3-moto":
        server = request.getfixturevalue("s3_moto")
        return ModelDir(backend, f"s3://{server.bucket}/{unique}", server.storage_options)
    if backend == "s3-seaweedfs":
        server = request.getfixturevalue("s3_seaweed")
        return ModelDir(backend, f"s3://{server.bucket}/{unique}", server.storage_options)
    if backend == "gcs":
        server = request.getfixturevalue("gcs_fake")
        return ModelDir(backend, f"gs://{server.bucket}/{unique}", server.storage_options)
    raise ValueError(backend)


def _cleanup(md: ModelDir) -> None:
    """Delete what a test left on a shared server, so moto and fake-gcs-server (in memory) stay small."""
    if md.backend in ("local",):
        return
    with md.open() as s:
        for obj in list(s.list()):
            s.delete(obj.key)


@pytest.fixture(params=BACKENDS)
def model_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ModelDir]:
    """A fresh model_dir (``.url``, ``.storage_options``) on each backend in turn."""
    md = _make_model_dir(request, request.param, tmp_path)
    yield md
    _cleanup(md)


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh, empty ``Storage`` on each backend in turn (for ``StorageContract`` suites)."""
    md = _make_model_dir(request, request.param, tmp_path)
    s = md.open()
    try:
        yield s
    finally:
        s.close()
        _cleanup(md)
