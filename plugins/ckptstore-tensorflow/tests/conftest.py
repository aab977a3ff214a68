"""Fixtures for the TensorFlow plugin tests: synthetic iris-like data, model_dirs on local disk and S3.

The S3 model_dir runs against moto on 127.0.0.1, started with the repository's own ``tests/servers.py``
helpers (the plugin lives in the same repository; its tests reuse them rather than copy them). As in the
core suite, a missing server skips the test on a laptop and fails it on CI (``CI=true``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# TF's C++ start-up banner and oneDNN notices carry no test information.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[3]


@dataclass
class ModelDir:
    """Where a test's checkpoints go: ``url`` plus the backend's ``storage_options``."""

    backend: str
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Any]:
    sys.path.insert(0, str(REPO / "tests"))  # the repository's own server helpers, not a copy
    from servers import MotoServer, start_for_tests  # type: ignore[import-not-found]

    server = start_for_tests(MotoServer(), ("boto3",))
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def model_dir(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelDir:
    """A fresh model_dir on local disk, then on S3 (moto)."""
    if request.param == "local":
        return ModelDir("local", str(tmp_path / "models" / "iris"))
    server = request.getfixturevalue("moto_server")
    # For a remote model_dir, Estimator's event files go to a fresh local temporary directory: make it
    # one pytest cleans up.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return ModelDir("s3", f"s3://{server.bucket}/models/iris-{uuid.uuid4().hex[:8]}", server.storage_options)


@dataclass(frozen=True)
class Iris:
    """Synthetic stand-in for the guide's iris data: 4 float features, 3 classes, learnable."""

    x: np.ndarray  # (n, 4) float32
    y: np.ndarray  # (n,) int32

    @property
    def features(self) -> dict[str, np.ndarray]:
        return {f"x{i}": self.x[:, i] for i in range(4)}


@pytest.fixture(scope="session")
def iris() -> Iris:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] + x[:, 2] > 0.5)).astype(np.int32)
    return Iris(x, y)
