"""GCS backend (``gs://`` and ``gcs://``) with generation-conditioned writes, parallel uploads and ranged reads.

Why this shape: gcsfs supplies what is hard to get right — credential discovery and refresh (``token=``
as fsspec users pass it), endpoint resolution (``endpoint_url``, ``STORAGE_EMULATOR_HOST``), requester
pays, and its aiohttp session on fsspec's I/O loop — but its request helper retries on its own schedule
(six attempts, up to 32 s apart) and turns a 412 into ``FileExistsError`` and a 403 into a bare
``OSError``, and it has no way to send ``ifGenerationMatch=<generation>``. So this module sends the JSON
API requests itself through gcsfs's session and credentials, reads the HTTP status of every answer (412
is the lost race, whatever the client would have called it), and retries under ckptstore's bounded
policy (``ckptstore.storage._retry``). Calls are synchronous and thread-safe: each one blocks the
calling thread on fsspec's loop, and parallel parts run from this backend's thread pool.

Writes: an object up to ``multipart_threshold`` (default 128 MiB) is one multipart-upload request carrying ``ifGenerationMatch`` (``0`` = create-only, a generation =
compare-and-swap). A larger object is uploaded as parallel
components under ``<dir>/.tmp-<name>.<random>.part-NNNNN`` and then composed into place by one
``compose`` request carrying the same condition (GCS composes at most 32 sources per request, so more
parts are composed in rounds), after which the components are deleted. Components of an interrupted
upload stay listed (like the local backend's temp files) so garbage collection can find them. A retried
single-request conditional upload that meets a 412 reads the object back and accepts it when size and
crc32c match what was sent (the first attempt landed but its reply was lost). Reads of several ranges
pin the generation the first range saw, so a replaced object fails the read instead of tearing it.

Emulator gap (tests say so explicitly): fake-gcs-server honours ``ifGenerationMatch`` on multipart
uploads but not on deletes or resumable uploads; this backend uses neither for conditional writes.
"""

from __future__ import annotations

import os

# gcsfs >= 2026 probes a gRPC API for zonal/HNS buckets when this is true (its default), which stalls
# about a minute per call against anything but real GCS and is not needed for standard buckets. It is
# read when gcsfs is imported, so it must be set before the import below.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import asyncio  # noqa: E402
import base64  # noqa: E402
import concurrent.futures  # noqa: E402
import json  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterable, Iterator  # noqa: E402
from concurrent.futures import Future  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import quote  # noqa: E402

import aiohttp  # noqa: E402
import crc32c  # noqa: E402
import fsspec.asyn  # noqa: E402
import gcsfs  # noqa: E402

from ckptstore.errors import AlreadyExists, CkptStoreError, NotFound, PreconditionFailed, StorageError  # noqa: E402
from ckptstore.storage._object import ObjectStoreBase  # noqa: E402
from ckptstore.storage._retry import (  # noqa: E402
    RetryPolicy,
    redact_url,
    retry_call,
    split_upload,
    submit,
    wait_all,
)
from ckptstore.storage.interface import (  # noqa: E402
    Buffer,
    ObjectInfo,
    PutMode,
    Version,
    as_bytes_view,
    check_key,
)

MiB = 1024 * 1024
_COMPOSE_MAX = 32  # GCS's limit on sources per compose request
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TMP_PREFIX = ".tmp-"


class _HttpStatus(Exception):
    """A non-2xx answer: its status, GCS ``reason`` and message (never request headers)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"HTTP {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


class _ShortBody(Exception):
    """A response body ended early (a dropped connection): retried."""


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, _HttpStatus):
        return e.status in _TRANSIENT_STATUS
    return isinstance(e, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError,
                          TimeoutError, ConnectionError, _ShortBody))


def _parse_error(status: int, body: bytes) -> _HttpStatus:
    reason, message = "", body[:300].decode("utf-8", "replace")
    try:
        err = json.loads(body)["error"]
        message = str(err.get("message", ""))
        errors = err.get("errors") or [{}]
        reason = str(errors[0].get("reason", ""))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        pass
    return _HttpStatus(status, reason, message)


def _rfc3339(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class GCSStorage(ObjectStoreBase):
    """Objects under ``gs://bucket/prefix``; every condition enforced by generation preconditions.

    Args:
        url: ``gs://bucket[/prefix]`` (``gcs://`` is accepted as a synonym).
        part_size: bytes per parallel upload component and per concurrent ranged GET.
        multipart_threshold: objects up to this size go in one upload request; larger ones as parallel
            components of ``part_size`` composed into place.
        max_concurrency: components (or ranges) of one object in flight at once, and the size of the
            thread pool shared by all calls on this backend.
        retry: how transient failures are retried (see ``RetryPolicy``).
        connect_timeout: seconds to establish a TCP connection.
        read_timeout: seconds a socket may stay silent.
        **storage_options: gcsfs options (``token``, ``project``, ``endpoint_url``, ``requester_pays``,
            ``access``, ``session_kwargs`` ...), passed to ``gcsfs.GCSFileSystem``.
    """

    schemes = ("gs", "gcs")
    what = "a GCS URL"
    min_part_size = 256 * 1024
    min_part_size_text = "256 KiB"

    def __init__(
        self,
        url: str,
        *,
        part_size: int = 32 * MiB,
        multipart_threshold: int = 128 * MiB,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        **storage_options: Any,
    ):
        self._configure(url, part_size, multipart_threshold, max_concurrency, retry)
        self.endpoint_url: str = redact_url(str(storage_options.get("endpoint_url") or ""))
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._secrets = _secret_strings(storage_options.get("token"))
        options = dict(storage_options)
        # A private instance: fsspec caches filesystems by their arguments, and close() here must not
        # close a session someone else in the process is using.
        options["skip_instance_cache"] = True
        try:
            self.fs = gcsfs.GCSFileSystem(**options)
        except TypeError:
            raise
        except Exception as e:
            raise StorageError(self._redact(f"{self.url}: cannot set up GCS access: {type(e).__name__}: {e}")) from None
        self.endpoint_url = redact_url(self.fs._location)

    def __repr__(self) -> str:
        return f"GCSStorage({self.url!r}, endpoint_url={self.endpoint_url!r})"

    # -- HTTP ----------------------------------------------------------------------------------
    def _object_url(self, name: str) -> str:
        return f"{self.fs.base}b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}"

    async def _arequest(self, method: str, url: str, params: dict[str, Any], *, data: Any = None,
                        headers: dict[str, str] | None = None,
                        ok_statuses: tuple[int, ...] = ()) -> tuple[int, bytes, int]:
        """One HTTP exchange; returns (status, body, 0); raises ``_HttpStatus`` on an unexpected >= 400."""
        session = await self.fs._set_session()
        async with session.request(method, url, params=self.fs._get_params(params), data=data,
                                   headers=self.fs._get_headers(headers), timeout=self._timeout) as r:
            if r.status >= 400 and r.status not in ok_statuses:
                raise _parse_error(r.status, await r.read())
            return r.status, await r.read(), 0

    def _http(self, op: str, key: str, method: str, url: str, params: dict[str, Any] | None = None,
              **kwargs: Any) -> tuple[int, bytes, int]:
        """``_arequest`` from this thread, retried; errors translated except 412 (``_HttpStatus``)."""
        def attempt() -> tuple[int, bytes, int]:
            return fsspec.asyn.sync(self.fs.loop, self._arequest, method, url, dict(params or {}), **kwargs)

        try:
            return retry_call(attempt, policy=self.retry, is_transient=_is_transient,
                              what=f"{self._where(key)} {op}")
        except CkptStoreError:
            raise
        except _HttpStatus as e:
            if e.status == 412:
                raise  # the caller knows which condition it sent
            raise self._translate(op, key, e) from None
        except Exception as e:
            raise self._translate(op, key, e) from None

    # -- errors --------------------------------------------------------------------------------
    def _translate(self, op: str, key: str, e: BaseException) -> Exception:
        e, retried = self._unwrap(e)
        where = self._where(key)
        if isinstance(e, _HttpStatus):
            if e.status == 404:
                # GCS says "The specified bucket does not exist."; an object's 404 names the object,
                # whose path may itself contain the word "bucket".
                if "bucket does not exist" in e.message.lower() or "bucket not found" in e.message.lower():
                    return StorageError(f"{where}: {op} failed: bucket {self.bucket!r} does not exist")
                return NotFound(f"{where}: not found ({op})")
            if e.status == 401:
                return StorageError(f"{where}: {op} failed: the credentials were rejected (HTTP 401)")
            if e.status == 403:
                return StorageError(f"{where}: {op} failed: access denied (HTTP 403) — check the "
                                    f"credentials and their permissions on bucket {self.bucket!r}")
            return StorageError(self._redact(f"{where}: {op} failed: {e}{retried}"))
        if isinstance(e, (aiohttp.ClientConnectorError, ConnectionRefusedError)):
            return StorageError(f"{where}: {op} failed: cannot reach the GCS endpoint "
                                f"{self.endpoint_url}{retried}")
        if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
            return StorageError(f"{where}: {op} failed: timed out talking to {self.endpoint_url}{retried}")
        return StorageError(self._redact(f"{where}: {op} failed: {type(e).__name__}: {e}{retried}"))

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _probe_bucket(self, op: str, key: str) -> None:
        self._http(op, key, "GET", f"{self.fs.base}b/{quote(self.bucket, safe='')}")

    # -- reads ---------------------------------------------------------------------------------
    def _info(self, key: str, meta: dict[str, Any]) -> ObjectInfo:
        gen = meta.get("generation")
        return ObjectInfo(key, int(meta.get("size") or 0), Version(str(gen)) if gen else None,
                          _rfc3339(meta.get("updated")))

    def head(self, key: str) -> ObjectInfo:
        try:
            _, body, _ = self._http("head", key, "GET", self._object_url(self._name(key)))
        except NotFound:
            self._check_bucket("head", key)
            raise
        return self._info(key, json.loads(body))

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        self._check_range(start, end)
        headers = {}
        if start is not None or end is not None:
            lo = start or 0
            if end is not None and end <= lo:
                self.head(key)
                return b""
            headers["Range"] = f"bytes={lo}-" + (str(end - 1) if end is not None else "")
        try:
            status, body, _ = self._http("get", key, "GET", self._object_url(self._name(key)), {"alt": "media"},
                                         headers=headers, ok_statuses=(416,))
        except NotFound:
            self._check_bucket("get", key)
            raise
        if status == 416:  # a range starting at or past the end: empty, like a slice
            return b""
        return body

    def _read_range(self, key: str, offset: int, view: memoryview, generation: str | None) -> str | None:
        # The version pin of a read of several ranges (``read_into``) is the generation, asked for with
        # ``generation=`` (which fake-gcs-server honours too, unlike ``ifGenerationMatch`` on reads): in a
        # versioned bucket a replaced object even still reads consistently.
        params: dict[str, Any] = {"alt": "media"}
        if generation:
            params["generation"] = generation
        headers = {"Range": f"bytes={offset}-{offset + len(view) - 1}"}
        holder: dict[str, str | None] = {}

        async def go() -> int:
            session = await self.fs._set_session()
            async with session.request("GET", self._object_url(self._name(key)),
                                       params=self.fs._get_params(params),
                                       headers=self.fs._get_headers(headers), timeout=self._timeout) as r:
                if r.status == 416:
                    return -1
                if r.status >= 400:
                    raise _parse_error(r.status, await r.read())
                holder["generation"] = r.headers.get("x-goog-generation")
                total = _content_range_total(r.headers.get("Content-Range"))
                done = 0
                # Each buffer as the socket delivered it, copied once into place (iter_chunked would
                # first join buffers into chunks of its size: one more copy of every byte).
                async for chunk in r.content.iter_any():
                    n = min(len(chunk), len(view) - done)
                    view[done:done + n] = memoryview(chunk)[:n]
                    done += n
                    if done >= len(view):
                        break
                if done < len(view) and (total is None or total >= offset + len(view)):
                    raise _ShortBody()
                return done

        try:
            done = retry_call(lambda: fsspec.asyn.sync(self.fs.loop, go), policy=self.retry,
                              is_transient=_is_transient, what=f"{self._where(key)} read")
        except _HttpStatus as e:
            if e.status == 404 and generation:
                raise StorageError(f"{self._where(key)}: read failed: the object was replaced while being "
                                   "read (or deleted)") from None
            if e.status == 404:
                self._check_bucket("read", key)
            raise self._translate("read", key, e) from None
        except CkptStoreError:
            raise
        except Exception as e:
            raise self._translate("read", key, e) from None
        if done < len(view):
            raise StorageError(f"{self._where(key)}: object ends before byte {offset + len(view)} "
                               f"({len(view) - max(done, 0)} bytes short)")
        return holder.get("generation") or generation

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            params: dict[str, Any] = {"prefix": self.prefix + prefix, "maxResults": 1000}
            if token:
                params["pageToken"] = token
            try:
                _, body, _ = self._http("list", prefix, "GET",
                                        f"{self.fs.base}b/{quote(self.bucket, safe='')}/o", params)
            except NotFound:
                self._check_bucket("list", prefix)  # raises for a missing bucket
                return
            page = json.loads(body)
            for meta in page.get("items", ()):
                yield self._info(meta["name"][len(self.prefix):], meta)
            token = page.get("nextPageToken")
            if not token:
                return

    # -- writes --------------------------------------------------------------------------------
    def put(self, key: str, data: Buffer | Iterable[Buffer], mode: PutMode = "overwrite") -> ObjectInfo:
        name = self._name(key)
        if mode == "create":
            condition: dict[str, str] = {"ifGenerationMatch": "0"}
        elif isinstance(mode, Version):
            condition = {"ifGenerationMatch": mode.token}
        elif mode == "overwrite":
            condition = {}
        else:
            raise ValueError(f"invalid put mode {mode!r}")
        body, parts = split_upload(data, self.part_size, self.multipart_threshold)
        try:
            if parts is None:
                assert body is not None
                meta = self._upload(key, name, body, condition)
            else:
                meta = self._put_composite(key, name, parts, condition)
        except _HttpStatus:  # 412: the condition did not hold
            if mode == "create":
                raise AlreadyExists(f"{self._where(key)}: already exists (create-only put)") from None
            raise PreconditionFailed(f"{self._where(key)}: changed since version {mode.token} was read "  # type: ignore[union-attr]
                                     "(compare-and-swap put)") from None
        return self._info(key, meta)

    def _upload(self, key: str, name: str, part: memoryview | bytes, condition: dict[str, str]) -> dict[str, Any]:
        """One multipart/related upload request (metadata + bytes), the only upload kind that carries
        ``ifGenerationMatch`` on every server we test against."""
        view = as_bytes_view(part)

        def body() -> aiohttp.MultipartWriter:
            # A fresh writer per attempt: aiohttp consumes payloads as it sends them.
            writer = aiohttp.MultipartWriter("related")
            writer.append_json({"name": name})
            writer.append(_SlicedPayload(view, content_type="application/octet-stream"))
            return writer

        attempts = 0

        async def go() -> tuple[int, bytes, int]:
            nonlocal attempts
            attempts += 1
            return await self._arequest(
                "POST", f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o",
                {"uploadType": "multipart", **condition}, data=body())

        try:
            _, resp, _ = retry_call(lambda: fsspec.asyn.sync(self.fs.loop, go), policy=self.retry,
                                    is_transient=_is_transient, what=f"{self._where(key)} put")
        except _HttpStatus as e:
            if e.status == 412:
                # A retried conditional upload can lose against our own first attempt, applied by the
                # server but unanswered: read the object back and accept it if it holds our bytes.
                landed = self._landed(name, view) if condition and attempts > 1 else None
                if landed is not None:
                    return landed
                raise
            if e.status == 404:
                self._check_bucket("put", key)
            raise self._translate("put", key, e) from None
        except CkptStoreError:
            raise
        except Exception as e:
            raise self._translate("put", key, e) from None
        return json.loads(resp)

    def _landed(self, name: str, view: memoryview) -> dict[str, Any] | None:
        """The object's metadata if it holds exactly ``view`` (size and crc32c), else None."""
        try:
            _, body, _ = self._http("head", name, "GET", self._object_url(name))
            meta = json.loads(body)
        except Exception:  # no proof that the write landed
            return None
        ours = base64.b64encode(crc32c.crc32c(view).to_bytes(4, "big")).decode()
        if int(meta.get("size", -1)) == len(view) and meta.get("crc32c") == ours:
            return meta
        return None

    def _put_composite(self, key: str, name: str, parts: Iterator[memoryview | bytes],
                       condition: dict[str, str]) -> dict[str, Any]:
        directory, _, base = name.rpartition("/")
        stem = f"{directory}/{_TMP_PREFIX}{base}.{uuid.uuid4().hex[:12]}" if directory else \
            f"{_TMP_PREFIX}{base}.{uuid.uuid4().hex[:12]}"
        pool = self._executor()
        futures: list[Future[dict[str, Any]]] = []
        temps: list[str] = []

        try:
            for number, part in enumerate(parts):
                # Bounded buffering: at most max_concurrency components in flight per put.
                while sum(not f.done() for f in futures) >= self.max_concurrency:
                    next(f for f in futures if not f.done()).result()
                temp = f"{stem}.part-{number:05d}"
                temps.append(temp)
                futures.append(submit(pool, self._upload, key, temp, part, {}))
            wait_all(futures)
            sources = list(temps)
            round_no = 0
            while len(sources) > _COMPOSE_MAX:  # more than one compose can take: compose in rounds
                groups = [sources[i:i + _COMPOSE_MAX] for i in range(0, len(sources), _COMPOSE_MAX)]
                names = [f"{stem}.compose-{round_no}-{i:05d}" for i in range(len(groups))]
                temps += names
                wait_all([submit(pool, self._compose, key, n, g, {}) for n, g in zip(names, groups, strict=True)])
                sources, round_no = names, round_no + 1
            return self._compose(key, name, sources, condition)
        finally:
            for f in futures:
                f.cancel()
            # Let components already on the wire finish first, so none lands after its deletion.
            concurrent.futures.wait(futures)

            def remove(temp: str) -> None:
                try:
                    self._http("delete (upload component)", key, "DELETE", self._object_url(temp),
                               ok_statuses=(404,))
                except Exception:  # best effort: leftovers are listed and collected as garbage later
                    pass

            concurrent.futures.wait([submit(pool, remove, t) for t in temps])

    def _compose(self, key: str, dest: str, sources: list[str], condition: dict[str, str]) -> dict[str, Any]:
        body = {"sourceObjects": [{"name": s} for s in sources],
                "destination": {"contentType": "application/octet-stream"}}
        _, resp, _ = self._http("put (compose)", key, "POST", self._object_url(dest) + "/compose", condition,
                                data=json.dumps(body), headers={"Content-Type": "application/json"})
        return json.loads(resp)

    def delete(self, key: str) -> None:
        self._http("delete", key, "DELETE", self._object_url(self._name(key)), ok_statuses=(404,))

    def close(self) -> None:
        self._close_pool()
        session = getattr(self.fs, "_session", None)
        if session is not None and not session.closed:
            try:
                fsspec.asyn.sync(self.fs.loop, session.close, timeout=5)
            except Exception:  # closing is best effort; the loop may already be gone at exit
                pass


class _SlicedPayload(aiohttp.payload.BytesPayload):
    """Bytes sent in 1 MiB slices, each drained before the next. Handed over whole, asyncio's transport
    (Python < 3.12) copies whatever the socket does not take at once into its own buffer: a second copy
    of every part in flight (GCS saves measured 1.8x the model in extra memory, S3 1.07x)."""

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        view = memoryview(self._value).cast("B")
        end = len(view) if content_length is None else min(len(view), content_length)
        for lo in range(0, end, _SEND_SLICE):
            await writer.write(view[lo : min(lo + _SEND_SLICE, end)])


_SEND_SLICE = 1 << 20


def _content_range_total(value: str | None) -> int | None:
    """The total size from ``Content-Range: bytes a-b/total`` (None when absent or ``*``)."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1]
    return int(total) if total.isdigit() else None


def _secret_strings(token: Any) -> list[str]:
    """Secret strings inside a gcsfs ``token`` (a service-account dict or a raw access token)."""
    if isinstance(token, dict):
        return [str(token[k]) for k in ("private_key", "private_key_id", "refresh_token", "client_secret",
                                        "access_token") if token.get(k)]
    if isinstance(token, str) and token not in ("anon", "google_default", "cache", "cloud", "browser") \
            and not os.path.exists(token):
        return [token]
    # A google.auth Credentials object: its live token and whatever can mint new ones.
    return [str(v) for v in (getattr(token, name, None) for name in ("token", "refresh_token", "client_secret"))
            if isinstance(v, str) and v]


def open_url(url: str, **storage_options: Any) -> GCSStorage:
    """Factory for ``gs://`` and ``gcs://`` URLs (see ``GCSStorage`` for the options)."""
    return GCSStorage(url, **storage_options)
