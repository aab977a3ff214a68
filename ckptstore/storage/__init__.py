"""Storage backends: bytes in, bytes out. See ``interface`` for the contract."""

from ckptstore.storage._retry import note_retry
from ckptstore.storage.interface import Capabilities, ObjectInfo, PutMode, Storage, StorageBase, Version
from ckptstore.storage.registry import open_storage

__all__ = ["Capabilities", "ObjectInfo", "PutMode", "Storage", "StorageBase", "Version", "note_retry", "open_storage"]
