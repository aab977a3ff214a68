"""S3 backend (``s3://`` and ``s3a://``) with conditional writes, parallel multipart uploads and ranged reads.

Why boto3/botocore and not s3fs: the storage contract is synchronous and thread-safe, and parallelism
lives in threads above it, which is exactly boto3's model (one thread-safe client, blocking calls). s3fs
would add an event loop on a private thread behind a sync wrapper, its own retry schedule that cannot
be bounded in seconds, an error translation that drops the S3 error code (a lost ``If-None-Match``
surfaces as ``FileExistsError`` on moto but a bare ``OSError`` on SeaweedFS and Ceph), and no API at all
for ``If-Match``. With botocore we send ``If-None-Match: *`` / ``If-Match: <etag>`` on ``PutObject`` and
``CompleteMultipartUpload``, read the error *code* of every failure (``PreconditionFailed`` is the lost
race, whatever the server's dialect), switch botocore's retries off and run our own bounded ones
(``ckptstore.storage._retry``), and read response bodies straight into the caller's memory.
``storage_options`` are still the ones s3fs users know (``key``, ``secret``, ``token``, ``anon``,
``endpoint_url``, ``client_kwargs``, ``config_kwargs``, ``s3_additional_kwargs``, ``profile``,
``requester_pays``, ``use_ssl``), so a URL plus options moves between the two unchanged.

A conditional write whose reply was lost (timeout, reset) is retried, and the retry meets our own
first write with a 412; such a 412 is checked by reading the ETag back and comparing it with the MD5
of what we sent (for multipart uploads, S3's md5-of-part-md5s), so a commit that landed is not reported
as lost. Limits: at most 10,000 parts per object (160 GiB with the default 16 MiB parts).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import botocore.session
import urllib3.exceptions
from botocore import UNSIGNED
from botocore.config import Config

from ckptstore.errors import AlreadyExists, CkptStoreError, NotFound, PreconditionFailed, StorageError
from ckptstore.storage._object import ObjectStoreBase
from ckptstore.storage._retry import (
    RetryPolicy,
    redact_url,
    retry_call,
    split_upload,
    submit,
    wait_all,
)
from ckptstore.storage.interface import (
    Buffer,
    ObjectInfo,
    PutMode,
    Version,
    as_bytes_view,
    check_key,
)

MiB = 1024 * 1024
_MIN_PART = 5 * MiB  # S3's minimum size of every part but the last
_MAX_PARTS = 10_000

# Error codes S3 and its clones use for "try again later"; matched on the code, not the exception class.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequests", "TooManyRequestsException", "RequestLimitExceeded",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "InternalServerError", "ServiceUnavailable",
    "ServiceUnavailableException", "OperationAborted",
    # AWS answers 409 to a conditional write that raced a concurrent one and asks for a retry; the retry
    # then gets a definite 412 or succeeds.
    "ConditionalRequestConflict",
})
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
    "AuthorizationHeaderMalformed", "InvalidSecurity", "403", "AccessDenied", "AllAccessDisabled",
})
# s3fs storage_options that only tune s3fs's own caches and event loop; they mean nothing here.
_IGNORED_FSSPEC_OPTIONS = frozenset({
    "skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths", "default_block_size",
    "default_fill_cache", "default_cache_type", "cache_regions", "asynchronous", "loop", "version_aware",
    "fixed_upload_size", "max_concurrency",
})


_LOADER_LOCK = threading.Lock()
_LOADER: Any = None


def _new_session(profile: str | None) -> boto3.session.Session:
    """A boto3 session (credentials are per session) sharing one botocore data loader.

    Loading the S3 service model costs ~0.2 s per fresh session; the loader is a read-only cache of
    botocore's bundled JSON files, so sharing it is safe and makes opening a backend cheap.
    """
    global _LOADER
    core = botocore.session.Session(profile=profile)
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _LOADER)
    return boto3.session.Session(botocore_session=core)


def _error_code(e: BaseException) -> tuple[str, int | None]:
    """(S3 error code, HTTP status) of a botocore ``ClientError``; ("", None) for anything else."""
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(err.get("Code", "")), status
    return "", None


def _is_transient(e: BaseException) -> bool:
    code, status = _error_code(e)
    if code or status:
        return code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS
    # Connection refused/reset, timeouts, truncated bodies: botocore's transport errors plus the raw
    # socket errors urllib3 lets through while a body is being read.
    return isinstance(e, (
        botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, proxy errors
        botocore.exceptions.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError ...
        botocore.exceptions.IncompleteReadError,
        botocore.exceptions.ResponseStreamingError,
        ConnectionError,
        TimeoutError,
        _ShortBody,
    ))


class _ShortBody(Exception):
    """A response body ended before its Content-Length (a dropped connection): retried."""


class _ViewReader(io.RawIOBase):
    """A seekable read-only file over a memoryview, so botocore can send (and re-send) it without a copy."""

    def __init__(self, view: memoryview):
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self._view) - self._pos)
        if n <= 0:
            return 0
        memoryview(b).cast("B")[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view) - self._pos


class S3Storage(ObjectStoreBase):
    """Objects under ``s3://bucket/prefix``; every condition enforced by the server.

    Args:
        url: ``s3://bucket[/prefix]`` (``s3a://`` is accepted as a synonym).
        part_size: bytes per multipart part and per concurrent ranged GET.
        multipart_threshold: objects up to this size go in one ``PutObject``; larger ones as parallel
            multipart parts (rounded up to a multiple of ``part_size``).
        max_concurrency: parts (or ranges) of one object in flight at once, and the size of the thread
            pool shared by all calls on this backend.
        retry: how transient failures are retried (see ``RetryPolicy``).
        connect_timeout: seconds to establish a TCP connection.
        read_timeout: seconds a socket may stay silent.
        **storage_options: s3fs-style options (see the module docstring).
    """

    schemes = ("s3", "s3a")
    what = "an S3 URL"
    min_part_size = _MIN_PART
    min_part_size_text = f"{_MIN_PART} bytes (S3's minimum part size)"

    def __init__(
        self,
        url: str,
        *,
        part_size: int = 16 * MiB,
        multipart_threshold: int = 128 * MiB,
        max_concurrency: int = 8,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        **storage_options: Any,
    ):
        self._configure(url, part_size, multipart_threshold, max_concurrency, retry)
        self._client, self._extra_put_args, self._extra_request_args, self.endpoint_url = self._make_client(
            storage_options, connect_timeout, read_timeout)

    # -- setup ---------------------------------------------------------------------------------
    def _make_client(self, options: dict[str, Any], connect_timeout: float, read_timeout: float):
        opts = dict(options)
        for name in _IGNORED_FSSPEC_OPTIONS:
            opts.pop(name, None)
        key = opts.pop("key", None)
        secret = opts.pop("secret", None)
        token = opts.pop("token", None)
        anon = bool(opts.pop("anon", False))
        profile = opts.pop("profile", None)
        endpoint_url = opts.pop("endpoint_url", None)
        use_ssl = opts.pop("use_ssl", True)
        requester_pays = bool(opts.pop("requester_pays", False))
        client_kwargs = dict(opts.pop("client_kwargs", None) or {})
        config_kwargs = dict(opts.pop("config_kwargs", None) or {})
        extra_put = dict(opts.pop("s3_additional_kwargs", None) or {})
        if opts:
            raise TypeError(
                f"{self.url}: unknown storage option(s) {sorted(opts)}; S3 takes key, secret, token, anon, "
                "profile, endpoint_url, use_ssl, requester_pays, client_kwargs, config_kwargs, "
                "s3_additional_kwargs")
        endpoint_url = client_kwargs.pop("endpoint_url", endpoint_url)
        key = client_kwargs.pop("aws_access_key_id", key)
        secret = client_kwargs.pop("aws_secret_access_key", secret)
        token = client_kwargs.pop("aws_session_token", token)
        self._secrets = [s for s in (key, secret, token) if s]
        if endpoint_url and (urlsplit(endpoint_url).username or urlsplit(endpoint_url).password):
            # S3 never authenticates through URL userinfo, and botocore logs endpoint URLs at DEBUG level.
            raise ValueError(f"{self.url}: endpoint_url must not contain a user or password "
                             f"({redact_url(endpoint_url)!r}); pass key= and secret= instead")

        s3_config = dict(config_kwargs.pop("s3", None) or {})
        if endpoint_url:
            # Custom endpoints (MinIO, SeaweedFS, Ceph, moto, ...) rarely have wildcard DNS per bucket.
            s3_config.setdefault("addressing_style", "path")
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Our retry loop owns retries (bounded in seconds); one attempt per botocore call.
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max(10, 2 * self.max_concurrency + 8),
            # Restores verify crc32c per chunk themselves (ckptstore.format); botocore's response
            # validation would wrap every body and only works for whole-object reads anyway.
            response_checksum_validation="when_required",
            s3=s3_config or None,
            signature_version=UNSIGNED if anon else config_kwargs.pop("signature_version", None),
            **config_kwargs,
        )
        try:
            session = _new_session(profile)
            if endpoint_url and not client_kwargs.get("region_name") and not session.region_name:
                client_kwargs["region_name"] = "us-east-1"  # any region signs for a non-AWS endpoint
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                use_ssl=use_ssl,
                aws_access_key_id=None if anon else key,
                aws_secret_access_key=None if anon else secret,
                aws_session_token=None if anon else token,
                config=config,
                **client_kwargs,
            )
        except Exception as e:
            # botocore's messages may quote the endpoint URL, which may carry a password.
            raise StorageError(self._redact(f"{self.url}: cannot set up S3 access: {type(e).__name__}: {e}")) from None
        extra_request = {"RequestPayer": "requester"} if requester_pays else {}
        return client, extra_put, extra_request, (redact_url(endpoint_url) if endpoint_url else None)

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Storage({self.url!r}{where})"

    # -- errors --------------------------------------------------------------------------------
    def _translate(self, op: str, key: str, e: BaseException) -> Exception:
        """Map a botocore/transport error (possibly wrapped in ``RetriesExhausted``) to ckptstore's."""
        e, retried = self._unwrap(e)
        where = self._where(key)
        code, status = _error_code(e)
        if code in ("NoSuchBucket",):
            return StorageError(f"{where}: {op} failed: bucket {self.bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"{where}: not found ({op})")
        if code in _CREDENTIAL_CODES:
            return StorageError(
                f"{where}: {op} failed: access denied ({code}) — check the credentials and their "
                f"permissions on bucket {self.bucket!r}")
        if code:
            msg = e.response.get("Error", {}).get("Message", "")  # type: ignore[attr-defined]
            return StorageError(self._redact(f"{where}: {op} failed: HTTP {status} {code}: {msg}{retried}"))
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return StorageError(f"{where}: {op} failed: no AWS credentials found (pass key/secret, "
                                "a profile, or anon=True for public buckets)")
        if isinstance(e, botocore.exceptions.EndpointConnectionError):
            return StorageError(f"{where}: {op} failed: cannot reach the S3 endpoint "
                                f"{self.endpoint_url or '(AWS default)'}{retried}")
        return StorageError(self._redact(f"{where}: {op} failed: {type(e).__name__}: {e}{retried}"))

    def _call(self, op: str, key: str, fn: Any, **kwargs: Any) -> Any:
        """One botocore call with our retries; errors are returned translated except lost conditions."""
        try:
            return retry_call(lambda: fn(**kwargs), policy=self.retry, is_transient=_is_transient,
                              what=f"{self._where(key)} {op}")
        except CkptStoreError:
            raise  # already ours (raised inside an attempt)
        except Exception as e:  # botocore, urllib3 (bodies read raw), OSError: all translated here
            code, _ = _error_code(e)
            if code == "PreconditionFailed":
                raise  # the caller knows which condition it sent
            raise self._translate(op, key, e) from None

    def _s3key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _probe_bucket(self, op: str, key: str) -> None:
        # A HEAD's 404 carries no error code to say whether the bucket or the key is missing.
        self._call(op, key, self._client.head_bucket, Bucket=self.bucket)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        self._check_range(start, end)
        if start is None and end is None:
            return self._get_range(key, None, None)
        lo = start or 0
        if end is not None and end <= lo:
            self.head(key)  # still report a missing key
            return b""
        return self._get_range(key, lo, end)

    def _get_range(self, key: str, lo: int | None, end: int | None) -> bytes:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._s3key(key), **self._extra_request_args}
        if lo is not None:
            args["Range"] = f"bytes={lo}-" + (str(end - 1) if end is not None else "")

        def attempt() -> bytes:
            resp = self._client.get_object(**args)
            body = resp["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            return data

        try:
            return self._call("get", key, attempt)
        except StorageError as e:
            if "InvalidRange" in str(e):  # a range starting at or past the end: empty, like a slice
                self.head(key)
                return b""
            raise

    def _read_range(self, key: str, offset: int, view: memoryview, etag: str | None) -> str:
        # The version pin of a read of several ranges (``read_into``) is the ETag, sent as If-Match.
        args: dict[str, Any] = {
            "Bucket": self.bucket, "Key": self._s3key(key),
            "Range": f"bytes={offset}-{offset + len(view) - 1}", **self._extra_request_args,
        }
        if etag:
            args["IfMatch"] = etag

        def attempt() -> str:
            resp = self._client.get_object(**args)
            body = resp["Body"]
            try:
                # Read the socket straight into the caller's buffer: botocore's StreamingBody offers
                # only read(), which would allocate and copy every chunk once more.
                raw = getattr(body, "_raw_stream", None)
                done = 0
                while done < len(view):
                    if raw is not None and hasattr(raw, "readinto"):
                        try:
                            n = raw.readinto(view[done:])
                        except urllib3.exceptions.HTTPError as e:  # read timeout, protocol error
                            raise _ShortBody(str(e)) from e
                    else:
                        chunk = body.read(min(len(view) - done, MiB))
                        n = len(chunk)
                        view[done:done + n] = chunk
                    if n == 0:
                        break
                    done += n
            finally:
                body.close()
            if done < len(view):
                length = int(resp.get("ContentLength", done))
                if length < len(view):  # the object itself is shorter than asked
                    raise StorageError(
                        f"{self._where(key)}: object ends before byte {offset + len(view)} "
                        f"({len(view) - done} bytes short)")
                raise _ShortBody()
            return str(resp.get("ETag", "")).strip('"')

        try:
            return self._call("read", key, attempt)
        except botocore.exceptions.ClientError as e:  # only PreconditionFailed is re-raised by _call
            raise StorageError(f"{self._where(key)}: read failed: the object was replaced while being "
                               "read") from e
        except StorageError as e:
            if "InvalidRange" in str(e):
                raise StorageError(f"{self._where(key)}: object ends before byte {offset + len(view)}") from None
            raise

    def head(self, key: str) -> ObjectInfo:
        try:
            resp = self._call("head", key, self._client.head_object, Bucket=self.bucket,
                              Key=self._s3key(key), **self._extra_request_args)
        except NotFound:
            self._check_bucket("head", key)
            raise
        return ObjectInfo(key, int(resp.get("ContentLength", 0)), _version(resp.get("ETag")),
                          _timestamp(resp.get("LastModified")))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix,
                                    **self._extra_request_args}
            if token:
                args["ContinuationToken"] = token
            page = self._call("list", prefix, self._client.list_objects_v2, **args)
            for obj in page.get("Contents", ()):
                yield ObjectInfo(obj["Key"][len(self.prefix):], int(obj.get("Size", 0)),
                                 _version(obj.get("ETag")), _timestamp(obj.get("LastModified")))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    # -- writes --------------------------------------------------------------------------------
    def put(self, key: str, data: Buffer | Iterable[Buffer], mode: PutMode = "overwrite") -> ObjectInfo:
        s3key = self._s3key(key)
        condition: dict[str, str] = {}
        if mode == "create":
            condition["IfNoneMatch"] = "*"
        elif isinstance(mode, Version):
            condition["IfMatch"] = mode.token
        elif mode != "overwrite":
            raise ValueError(f"invalid put mode {mode!r}")
        body, parts = split_upload(data, self.part_size, self.multipart_threshold)
        try:
            if parts is None:
                assert body is not None
                etag, size = self._put_single(key, s3key, body, condition), len(body)
            else:
                etag, size = self._put_multipart(key, s3key, parts, condition)
        except botocore.exceptions.ClientError as e:  # a lost condition (code PreconditionFailed)
            if mode == "create":
                raise AlreadyExists(f"{self._where(key)}: already exists (create-only put)") from None
            raise PreconditionFailed(f"{self._where(key)}: changed since version {mode.token} "  # type: ignore[union-attr]
                                     "was read (compare-and-swap put)") from e
        except NotFound:
            if isinstance(mode, Version):  # If-Match on a missing key answers 404
                raise PreconditionFailed(f"{self._where(key)}: does not exist, expected version "
                                         f"{mode.token} (compare-and-swap put)") from None
            raise
        return ObjectInfo(key, size, _version(etag), time.time())

    def _conditional_call(self, op: str, key: str, s3key: str, send: Any, condition: dict[str, str],
                          expected_etag: Any) -> dict[str, Any]:
        """``send()`` under retries; a lost condition after a retried attempt is checked, not trusted.

        A request whose answer was lost (reset, timeout, 5xx from a proxy after the store applied it) is
        retried, and the retry then loses against our own first write. So when a retried conditional
        write gets 412, the object is read back: if it holds exactly our bytes (same ETag as computed by
        ``expected_etag()``), the write won. Identical bytes from another writer would also pass; for
        ckptstore's manifests and pointers, which name a unique attempt, that cannot happen.
        """
        attempts = 0

        def attempt() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            return send()

        try:
            return self._call(op, key, attempt)
        except botocore.exceptions.ClientError:
            if condition and attempts > 1:
                try:
                    expected = expected_etag()
                    current = self._client.head_object(Bucket=self.bucket, Key=s3key, **self._extra_request_args)
                    if expected and str(current.get("ETag", "")).strip('"') == expected:
                        return current
                except Exception:  # no proof that the write landed: report the lost condition
                    pass
            raise

    def _put_single(self, key: str, s3key: str, body: memoryview | bytes, condition: dict[str, str]) -> str:
        view = as_bytes_view(body)
        resp = self._conditional_call(
            "put", key, s3key,
            lambda: self._client.put_object(Bucket=self.bucket, Key=s3key, Body=_ViewReader(view), **condition,
                                            **self._extra_put_args, **self._extra_request_args),
            condition, lambda: hashlib.md5(view, usedforsecurity=False).hexdigest())
        return str(resp.get("ETag", ""))

    def _put_multipart(self, key: str, s3key: str, parts: Iterator[memoryview | bytes],
                       condition: dict[str, str]) -> tuple[str, int]:
        upload = self._call("put (create multipart upload)", key, self._client.create_multipart_upload,
                            Bucket=self.bucket, Key=s3key, **self._extra_put_args, **self._extra_request_args)
        upload_id = upload["UploadId"]
        pool = self._executor()
        futures: list[Future[dict[str, Any]]] = []
        size = 0
        try:
            for number, part in enumerate(parts, start=1):
                if number > _MAX_PARTS:
                    raise StorageError(f"{self._where(key)}: put failed: more than {_MAX_PARTS} parts of "
                                       f"{self.part_size} bytes; raise part_size")
                size += len(part)
                # Bounded buffering: never more than max_concurrency parts in flight per put, so a
                # generator producing copies cannot run ahead of the network.
                while sum(not f.done() for f in futures) >= self.max_concurrency:
                    next(f for f in futures if not f.done()).result()
                futures.append(submit(pool, self._upload_part, key, s3key, upload_id, number, part))
            done = wait_all(futures)
            resp = self._conditional_call(
                "put (complete multipart upload)", key, s3key,
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=s3key, UploadId=upload_id, MultipartUpload={"Parts": done},
                    **condition, **self._extra_request_args),
                condition, lambda: _multipart_etag([p["ETag"] for p in done]))
        except BaseException:
            for f in futures:
                f.cancel()
            # Let parts already on the wire finish first, so none lands after the abort.
            concurrent.futures.wait(futures)
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=s3key, UploadId=upload_id)
            except Exception:  # best effort: a bucket lifecycle rule should reap abandoned uploads
                pass
            raise
        return str(resp.get("ETag", "")), size

    def _upload_part(self, key: str, s3key: str, upload_id: str, number: int,
                     part: memoryview | bytes) -> dict[str, Any]:
        view = as_bytes_view(part)
        resp = self._call(f"put (part {number})", key, lambda: self._client.upload_part(
            Bucket=self.bucket, Key=s3key, UploadId=upload_id, PartNumber=number, Body=_ViewReader(view),
            **self._extra_request_args))
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def delete(self, key: str) -> None:
        self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=self._s3key(key),
                   **self._extra_request_args)

    def close(self) -> None:
        self._close_pool()
        self._client.close()


def _version(etag: Any) -> Version | None:
    # Unquoted: Ceph RGW matches If-Match only against the bare ETag; AWS, moto and SeaweedFS take both.
    return Version(str(etag).strip('"')) if etag else None


def _multipart_etag(part_etags: list[str]) -> str | None:
    """The ETag S3 gives a completed multipart upload: md5 of the parts' binary md5s, dash, part count."""
    try:
        digests = b"".join(bytes.fromhex(e.strip('"')) for e in part_etags)
    except ValueError:
        return None
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(part_etags)}"


def _timestamp(value: Any) -> float | None:
    return float(value.timestamp()) if hasattr(value, "timestamp") else None


def open_url(url: str, **storage_options: Any) -> S3Storage:
    """Factory for ``s3://`` and ``s3a://`` URLs (see ``S3Storage`` for the options)."""
    return S3Storage(url, **storage_options)
