"""The storage contract and object-store specifics (conditions, errors, retries, secrets) on real servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ckptstore.storage import Storage, open_storage
from ckptstore.testing import StorageContract


def _fresh(server, scheme: str) -> Iterator[Storage]:
    s = open_storage(f"{scheme}://{server.bucket}/contract-{uuid.uuid4().hex[:12]}", **server.storage_options)
    try:
        yield s
    finally:
        s.close()


class TestS3Moto(StorageContract):
    @pytest.fixture
    def storage(self, s3_moto):
        yield from _fresh(s3_moto, "s3")


class TestS3SeaweedFS(StorageContract):
    @pytest.fixture
    def storage(self, s3_seaweed):
        yield from _fresh(s3_seaweed, "s3")


class TestGCSFake(StorageContract):
    @pytest.fixture
    def storage(self, gcs_fake):
        yield from _fresh(gcs_fake, "gs")
