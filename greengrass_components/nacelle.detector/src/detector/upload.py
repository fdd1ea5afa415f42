"""Uploading captured files to `raw/capture/<thing>/<file>`, and the worker that drains the capture outbox.

* GatewayUploader (the local stack): an HTTPS PUT of the object key to the stack's capture gateway, authenticated
  with the device's own certificate (mutual TLS). The gateway stands in for the token exchange service and S3: it
  lets a certificate write only `raw/capture/<its thing>/` (nacelle/local/edge/capture_gateway.py).
* S3Uploader (AWS IoT Greengrass): S3 PutObject signed with Signature Version 4, with the credentials of the
  Greengrass token exchange service (`aws.greengrass.TokenExchangeService`, a dependency in the recipe). The nucleus
  gives the component two environment variables: AWS_CONTAINER_CREDENTIALS_FULL_URI (the local service's URL) and
  AWS_CONTAINER_AUTHORIZATION_TOKEN (sent as the Authorization header; or AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE).
  The service exchanges the device's certificate for temporary credentials of the role alias's IAM role, which
  may put objects under `raw/capture/${credentials-iot:ThingName}/` only, and only with `If-None-Match: *`
  (template.yaml GreengrassTokenExchangeRole): S3 answers 412 when the key exists, i.e. this device uploaded the
  file before a crash kept it from deleting its copy (a name says its span, kind, model and part), and the upload
  counts as done.
  Standard library only: boto3 never reaches the device (nacelle/components.py FORBIDDEN_IMPORTS).

UploadWorker sends the oldest finished file, deletes it after the upload succeeded, and on a failure keeps it and
retries after an exponential backoff (the buffer's drop policy bounds what waits). It runs on its own thread: a
slow or failing upload never delays scoring. An upload repeated after a crash rewrites nothing: the gateway takes
the same bytes again as a retry, S3 refuses the conditional write (412), and both count as done.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlsplit

from shared.capture import CAPTURE_PREFIX
from shared.errors import AdapterError, ConfigurationError

if TYPE_CHECKING:
    from .capture_store import CaptureStore

log = logging.getLogger("detector.upload")

TIMEOUT_S = 30.0
REFRESH_BEFORE_S = 300.0  # credentials are renewed this long before they expire


class UploadError(AdapterError):
    """The upload did not succeed; the file stays and is retried."""


class UploadRefused(UploadError):
    """The endpoint refused the upload (4xx: not authorised, bad request): retrying later may fail again."""


class Uploader(Protocol):
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`; raises UploadError."""


def _content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _send(conn: http.client.HTTPConnection, path: str, data: bytes, headers: Mapping[str, str], what: str,
          done: tuple[int, ...] = (200, 201)) -> None:
    try:
        conn.request("PUT", path, body=data, headers=dict(headers))
        response = conn.getresponse()
        detail = response.read(2000).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        raise UploadError(f"{what}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    if response.status in done:
        return
    error = UploadRefused if 400 <= response.status < 500 else UploadError
    raise error(f"{what}: HTTP {response.status} {response.reason}: {detail[:300]}")


class GatewayUploader:
    """PUT https://<gateway>/<key> with the device's certificate (read at each upload: a renewed one is used)."""

    def __init__(self, url: str, ca: str | Path, cert: str | Path, key: str | Path,
                 timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigurationError(f"capture gateway URL must be https://host:port, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 443
        self.ca, self.cert, self.key, self.timeout_s = Path(ca), Path(cert), Path(key), timeout_s

    def put(self, key: str, data: bytes) -> None:
        try:
            context = ssl.create_default_context(cafile=str(self.ca))
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise UploadError(f"capture gateway: cannot load the device's TLS credentials: {exc}") from exc
        conn = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=self.timeout_s)
        _send(conn, "/" + quote(key, safe="/"), data, {"Content-Type": "text/csv", "Content-MD5": _content_md5(data)},
              f"PUT {key} to the capture gateway {self.host}:{self.port}")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None
    expires_at: float | None  # epoch seconds


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


class ContainerCredentials:
    """The container credentials provider, as AWS SDKs implement it, for the Greengrass token exchange service."""

    def __init__(self, env: Mapping[str, str], clock: Callable[[], float] = time.time,
                 timeout_s: float = 10.0) -> None:
        uri = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
        parts = urlsplit(uri)
        if not uri or not (parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname))):
            raise ConfigurationError("AWS_CONTAINER_CREDENTIALS_FULL_URI must be set to the token exchange service "
                                     f"(http on loopback, or https), got {uri!r}: does the recipe depend on "
                                     "aws.greengrass.TokenExchangeService?")
        self.uri, self.env, self.clock, self.timeout_s = uri, env, clock, timeout_s
        self._cached: Credentials | None = None
        self._lock = threading.Lock()

    def _token(self) -> str:
        path = self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        if path:
            try:
                return Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UploadError(f"cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {path}: {exc}") from exc
        return self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", "")

    def get(self) -> Credentials:
        with self._lock:
            cached = self._cached
            if cached is not None and (cached.expires_at is None
                                       or cached.expires_at - REFRESH_BEFORE_S > self.clock()):
                return cached
            self._cached = self._fetch()
            return self._cached

    def _fetch(self) -> Credentials:
        parts = urlsplit(self.uri)
        conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_type(parts.hostname or "", parts.port, timeout=self.timeout_s)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        token = self._token()
        try:
            conn.request("GET", path, headers={"Authorization": token} if token else {})
            response = conn.getresponse()
            body = response.read(65536)
        except (OSError, http.client.HTTPException) as exc:
            raise UploadError(f"token exchange service {self.uri}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        if response.status != 200:
            raise UploadError(f"token exchange service {self.uri}: HTTP {response.status} "
                              f"{body[:300].decode('utf-8', 'replace')}")
        try:
            doc = json.loads(body)
            expiration = doc.get("Expiration")
            expires = (datetime.fromisoformat(expiration.replace("Z", "+00:00")).timestamp()
                       if expiration else None)
            return Credentials(str(doc["AccessKeyId"]), str(doc["SecretAccessKey"]), doc.get("Token"), expires)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UploadError(f"token exchange service {self.uri}: unreadable credentials ({exc})") from exc


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(method: str, host: str, path: str, region: str, service: str, credentials: Credentials,
                  data: bytes, headers: Mapping[str, str], now: datetime) -> dict[str, str]:
    """The request's headers with Signature Version 4's (x-amz-date, x-amz-content-sha256, x-amz-security-token,
    Authorization); every header given is signed. `path` is already URI-encoded; no query string."""
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(data).hexdigest()
    out = {k.lower(): v for k, v in headers.items()}
    out.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload})
    if credentials.token:
        out["x-amz-security-token"] = credentials.token
    signed = sorted(out)
    canonical = "\n".join([method, path, "", *(f"{k}:{' '.join(out[k].split())}" for k in signed), "",
                           ";".join(signed), payload])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + credentials.secret_key).encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                            f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    return out


class S3Uploader:
    """PutObject to `bucket` (virtual-hosted style; `endpoint` for a path-style test endpoint)."""

    def __init__(self, bucket: str, region: str, credentials: ContainerCredentials, endpoint: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), timeout_s: float = TIMEOUT_S) -> None:
        if not region:
            raise ConfigurationError("the AWS region is unknown (AWS_REGION is not set)")
        self.bucket, self.region, self.credentials = bucket, region, credentials
        self.endpoint, self.clock, self.timeout_s = endpoint, clock, timeout_s

    def put(self, key: str, data: bytes) -> None:
        if not self.bucket:
            raise UploadError("capture.bucket is not configured: captured files wait on the device")
        credentials = self.credentials.get()
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            host, path, secure = parts.netloc, f"/{self.bucket}/{quote(key, safe='/')}", parts.scheme == "https"
        else:
            host, path, secure = f"{self.bucket}.s3.{self.region}.amazonaws.com", "/" + quote(key, safe="/"), True
        headers = sigv4_headers("PUT", host, path, self.region, "s3", credentials, data,
                                {"content-type": "text/csv", "content-md5": _content_md5(data), "if-none-match": "*"},
                                self.clock())
        del headers["host"]  # http.client sends it
        name, _, port = host.partition(":")
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(name, int(port) if port else None, timeout=self.timeout_s,
                                        context=ssl.create_default_context())
            if secure else http.client.HTTPConnection(name, int(port) if port else None, timeout=self.timeout_s))
        _send(conn, path, data, headers, f"PutObject s3://{self.bucket}/{key}",
              (200, 201, HTTPStatus.PRECONDITION_FAILED))  # 412: uploaded before, never replaced


class UploadWorker:
    """Drains the store's outbox through `uploader`, oldest file first, on its own thread."""

    def __init__(self, store: CaptureStore, thing: str, uploader: Uploader, backoff_min_s: float = 1.0,
                 backoff_max_s: float = 60.0, poll_s: float = 1.0) -> None:
        self.store, self.thing, self.uploader = store, thing, uploader
        self.backoff_min_s, self.backoff_max_s, self.poll_s = backoff_min_s, backoff_max_s, poll_s
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> UploadWorker:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="capture-upload", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self) -> bool:
        """Upload the oldest pending file; True if one was uploaded (raises UploadError)."""
        item = self.store.next_upload()
        if item is None:
            return False
        name, data = item
        try:
            self.uploader.put(f"{CAPTURE_PREFIX}{self.thing}/{name}", data)
        except BaseException:
            self.store.release(name)
            raise
        self.store.uploaded(name)
        return True

    def _run(self) -> None:
        backoff = self.backoff_min_s
        while not self._stop.is_set():
            try:
                uploaded = self.run_once()
            except Exception as exc:  # UploadError, or a bug: the file stays, the worker lives on
                self.failures += 1
                self.last_error = str(exc)
                log.warning("capture upload failed, retrying in %.0f s: %s", backoff, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            backoff = self.backoff_min_s
            if not uploaded:
                self._stop.wait(self.poll_s)
