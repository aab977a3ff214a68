"""Finds the storage backend for a URL: a built-in table plus the ``ckptstore.backends`` entry points.

Backends are imported lazily, so ``import ckptstore`` never pulls in s3fs or gcsfs. A plugin may add a
scheme but may not silently replace a built-in one. An unknown scheme falls through to the generic
fsspec backend when fsspec knows it; a missing optional dependency raises ``PluginError`` with the
``pip install`` line that fixes it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ckptstore.errors import PluginError
from ckptstore.storage.interface import Storage

ENTRY_POINT_GROUP = "ckptstore.backends"

# scheme -> ("module:factory", extra that installs its dependencies or None)
BUILTIN: dict[str, tuple[str, str | None]] = {
    "file": ("ckptstore.storage.local:open_url", None),
    "memory": ("ckptstore.storage.memory:open_url", None),
    "s3": ("ckptstore.storage.s3:open_url", "s3"),
    "s3a": ("ckptstore.storage.s3:open_url", "s3"),
    "gs": ("ckptstore.storage.gcs:open_url", "gcs"),
    "gcs": ("ckptstore.storage.gcs:open_url", "gcs"),
}

Factory = Callable[..., Storage]


def split_scheme(url: str) -> tuple[str, str]:
    """``"s3://b/k"`` -> ``("s3", "b/k")``; a plain path is ``file``."""
    if "://" not in url:
        return "file", url
    scheme, rest = url.split("://", 1)
    return scheme.lower(), rest


def _load(target: str, scheme: str, extra: str | None) -> Factory:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = f"pip install 'ckptstore[{extra}]'" if extra else f"install the package that provides {module_name}"
        raise PluginError(f"the {scheme}:// backend needs a missing dependency ({e.name or e}); run: {hint}") from e
    return getattr(module, attr)


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def open_storage(url: str, **storage_options: Any) -> Storage:
    """Open the backend for ``url``, passing ``storage_options`` to it (credentials, endpoint ...)."""
    scheme, _ = split_scheme(url)
    if scheme in BUILTIN:
        target, extra = BUILTIN[scheme]
        return _load(target, scheme, extra)(url, **storage_options)
    plugin = _plugins().get(scheme)
    if plugin is not None:
        try:
            factory = plugin.load()
        except ImportError as e:
            raise PluginError(f"the {scheme}:// backend plugin {plugin.value!r} failed to import: {e}") from e
        return factory(url, **storage_options)
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        known = ", ".join(sorted(set(BUILTIN) | set(_plugins())))
        raise PluginError(
            f"no storage backend for {scheme}:// (built in or plugins: {known}; any fsspec protocol "
            f"works once its package is installed): {e}"
        ) from e
    return _load("ckptstore.storage.fsspec:FsspecStorage", scheme, None)(url, **storage_options)


def builtin_conflicts() -> list[str]:
    """Plugins that try to claim a built-in scheme (they are ignored; ``ckptstore`` CLI warns)."""
    return sorted(set(_plugins()) & set(BUILTIN))
