"""The local stand-in for what a Greengrass device uploads its captured data through on AWS (the token exchange
service, the role alias's IAM role and S3): an HTTPS server on 127.0.0.1 with mutual TLS that stores
`PUT /raw/capture/<thing>/<file>` in the local object store, and nothing else.

* Who: the client certificate, issued by the stack's CA (nacelle/local/edge/pki.py). Its CN is the thing, as for
  the broker; the cloud's certificate and the sensor sources' (`<thing>.sensors`) are no device and are refused.
* What: a captured file's key (shared/capture.py) under the caller's own thing only, as the IAM policy
  `raw/capture/${credentials-iot:ThingName}/*` allows on AWS. Another turbine's prefix, any other key, a body
  over MAX_BYTES, a body shorter than its Content-Length or not matching its Content-MD5 are refused (403, 400,
  413), logged, and never stored. At most MAX_CONNECTIONS at once, MAX_PER_THING uploads per device (503: retried
  later), and a body within REQUEST_S: one certificate cannot hold the gateway's memory. A stored file is never
  rewritten: the same bytes again is a retry (200), other bytes are refused (409).
* Then: the object is written through the stack's eventing store, so data_arrival validates it as any raw file.

Under `<home>/capture-gateway/`: `port` (kept across restarts while free), read by each device's nucleus into the
detector's NACELLE_DEVICE_CONFIG (`capture_url`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from nacelle.local.edge.pki import CLOUD_CLIENT, THING_NAME, LocalPki
from shared.capture import parse_capture_key
from shared.errors import NacelleError
from shared.observability import logger
from shared.ports import ObjectStore

STABLE_PORTS = range(20_000, 32_768)  # below Linux's default ephemeral range (32768-60999)
HOST = "127.0.0.1"
MAX_BYTES = 64 * 1024 * 1024  # far above one capture file (an episode part of 30 min at 20 Hz is a few MB)
TIMEOUT_S = 30.0  # per read, and for the TLS handshake
REQUEST_S = 300.0  # a whole body, however slowly it trickles in
MAX_CONNECTIONS = 16  # at once: each may buffer a body of up to MAX_BYTES
MAX_PER_THING = 2  # uploads of one device at once (its uploader sends one file at a time)
MAX_NAME_BYTES = 255  # a key segment longer than this is no name the detector writes (and no file name)


def gateway_dir(home: Path) -> Path:
    return Path(home) / "capture-gateway"


def gateway_url(home: Path) -> str:
    """The URL a device uploads to ("" when no gateway ever ran on this data directory)."""
    try:
        port = int((gateway_dir(home) / "port").read_text().strip())
    except (OSError, ValueError):
        return ""
    return f"https://{HOST}:{port}"


def _thing_of(cert: dict[str, Any] | None) -> str | None:
    """The device a verified client certificate belongs to: its CN, when that is a thing name."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value if THING_NAME.fullmatch(value) and value != CLOUD_CLIENT else None
    return None


class CaptureGateway:
    """Serve uploads into `store` until stopped."""

    def __init__(self, home: Path, pki: LocalPki, store: ObjectStore, port: int = 0,
                 max_bytes: int = MAX_BYTES) -> None:
        self.dir = gateway_dir(home)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store, self.max_bytes = store, max_bytes
        pki.ensure()
        cert, key = pki.server()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(cafile=str(pki.ca_path))
        context.verify_mode = ssl.CERT_REQUIRED  # no certificate, no upload
        self.httpd = _Server((HOST, port or self._remembered_port()), _Handler, self, context)
        self.port = int(self.httpd.server_address[1])
        (self.dir / "port").write_text(f"{self.port}\n")
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="nacelle-capture-gateway",
                                        daemon=True)

    def _remembered_port(self) -> int:
        """The port of the last run when it is free (devices started earlier keep their URL), else a free one below
        the kernel's ephemeral range (STABLE_PORTS): outgoing connections never take it while the gateway is down."""
        with contextlib.suppress(OSError, ValueError):
            port = int((self.dir / "port").read_text().strip())
            if _free(port):
                return port
        for port in random.sample(STABLE_PORTS, 50):
            if _free(port):
                return port
        return 0

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def start(self) -> CaptureGateway:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> CaptureGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def store_upload(self, thing: str | None, path: str, body: bytes, md5: str | None) -> tuple[HTTPStatus, str]:
        """The decision for one PUT (also what the handler answers)."""
        if thing is None:
            return HTTPStatus.FORBIDDEN, "the client certificate names no device"
        key = unquote(path.lstrip("/"))
        if any(len(part.encode()) > MAX_NAME_BYTES for part in key.split("/")):
            return HTTPStatus.BAD_REQUEST, f"a name in {key[:100]!r}... is over {MAX_NAME_BYTES} bytes"
        parsed = parse_capture_key(key)
        if parsed is None:
            return HTTPStatus.BAD_REQUEST, f"{key!r} is not a captured file's key (raw/capture/<thing>/<file>.csv)"
        if parsed[0] != thing:
            return HTTPStatus.FORBIDDEN, f"{thing} may write raw/capture/{thing}/ only, not {key!r}"
        if md5 is not None and md5 != base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode():
            return HTTPStatus.BAD_REQUEST, "the body does not match its Content-MD5"
        try:  # raw data is never rewritten: other bytes under a stored key are refused
            if not self.store.put_if_absent(key, body, "text/csv"):
                if self.store.get(key) != body:
                    return HTTPStatus.CONFLICT, f"{key} exists with other content; a captured file is never rewritten"
                self.store.put(key, body, "text/csv")  # the same bytes: a retry, announced again like the first
        except NacelleError as exc:
            return HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot store {key}: {exc}"
        return HTTPStatus.OK, key


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], gateway: CaptureGateway,
                 context: ssl.SSLContext) -> None:
        self.gateway, self.context = gateway, context
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.uploads: dict[str, int] = {}  # device -> uploads in progress
        self.uploads_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """At most MAX_CONNECTIONS at once: another is closed at once (the device retries later)."""
        if not self.slots.acquire(blocking=False):
            logger.warning("capture gateway: too many connections, one refused", client=str(client_address))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    @contextlib.contextmanager
    def upload_of(self, thing: str | None) -> Any:
        """Count one upload of `thing`; yields False when it already has MAX_PER_THING in progress."""
        with self.uploads_lock:
            busy = thing is not None and self.uploads.get(thing, 0) >= MAX_PER_THING
            if thing is not None and not busy:
                self.uploads[thing] = self.uploads.get(thing, 0) + 1
        try:
            yield not busy
        finally:
            if thing is not None and not busy:
                with self.uploads_lock:
                    self.uploads[thing] -= 1

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake in the request's own thread: a slow or refused client holds up no other."""
        request.settimeout(TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            logger.warning("capture gateway: TLS handshake refused", client=str(client_address), reason=str(exc))
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        thing = _thing_of(self.connection.getpeercert())
        with self.server.upload_of(thing) as free:
            if not free:
                self._drain()
                return self._answer(HTTPStatus.SERVICE_UNAVAILABLE,
                                    f"{thing} has {MAX_PER_THING} uploads in progress already", thing)
            self._put(thing)

    def _drain(self) -> None:
        """Read and drop a refused body (up to 4 x MAX_BYTES, within REQUEST_S), so the client reads the answer."""
        length_text = self.headers.get("Content-Length") or ""
        length = int(length_text) if length_text.isdigit() else 0
        if length <= 4 * self.server.gateway.max_bytes:
            self._body(length, keep=False)

    def _put(self, thing: str | None) -> None:
        gateway = self.server.gateway
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            return self._answer(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", thing)
        length = int(length_text)
        if length > gateway.max_bytes:
            self._drain()
            return self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"{length} bytes exceed the {gateway.max_bytes}-byte limit", thing)
        body = self._body(length)
        if len(body) != length:
            return self._answer(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes", thing)
        status, detail = gateway.store_upload(thing, self.path, body, self.headers.get("Content-MD5"))
        self._answer(status, detail, thing)

    def _body(self, length: int, keep: bool = True) -> bytes:
        """The body (`keep`; else read and dropped), read by chunks within REQUEST_S in all (TimeoutError after
        it: the connection is closed)."""
        deadline, chunks, got = time.monotonic() + REQUEST_S, [], 0
        while got < length:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"body not received within {REQUEST_S:g} s")
            self.connection.settimeout(min(TIMEOUT_S, left))
            chunk = self.rfile.read1(min(1 << 16, length - got))
            if not chunk:
                break
            if keep:
                chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _refuse_method(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, "only PUT of a captured file", None)

    do_GET = do_POST = do_DELETE = do_HEAD = _refuse_method

    def _answer(self, status: HTTPStatus, detail: str, thing: str | None) -> None:
        if status != HTTPStatus.OK:
            logger.warning("capture upload refused", thing=thing, status=int(status), reason=detail)
        body = (detail + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status != HTTPStatus.OK:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # http.server.BaseHTTPRequestHandler's signature
        return  # refusals are logged with their reason above; accepted uploads by data_arrival


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds (TIME_WAIT is free)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True
