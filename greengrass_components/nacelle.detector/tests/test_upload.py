"""The AWS side of capture uploads without AWS: Signature Version 4 as botocore computes it, the container
credentials of the Greengrass token exchange service (loopback server), and the PutObject requests and answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from detector.upload import ContainerCredentials, Credentials, S3Uploader, UploadError, UploadRefused, sigv4_headers

from shared.errors import ConfigurationError

NOW = datetime(2025, 3, 1, 12, 30, 5, tzinfo=UTC)
KEY = "raw/capture/turbine-01/20250301T120000.000Z_20250301T120100.000Z_normal_m3_p1.csv"
TOKEN = "tes-token-123"


class Loopback:
    """A loopback HTTP server answering `responses` in turn (status, JSON body) and recording every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.responses: list[tuple[int, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": self.rfile.read(length)})
                status, doc = outer.responses.pop(0) if outer.responses else (200, {})
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Loopback]:
    s = Loopback()
    yield s
    s.close()


def credentials_doc(expires: datetime, key: str = "AKIDEXAMPLE") -> dict[str, Any]:
    return {"AccessKeyId": key, "SecretAccessKey": "secret/key+1", "Token": "session-token",
            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_the_signature_is_the_one_botocore_computes() -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session/token==", None)
    data = b"eventTime,rps\n2025-03-01T12:00:00.000000+00:00,3.5\n"
    host = "nacelle-data.s3.eu-west-1.amazonaws.com"
    headers = {"content-type": "text/csv", "content-md5": "0123456789abcdefABCDEF=="}
    ours = sigv4_headers("PUT", host, "/" + KEY, "eu-west-1", "s3", creds, data, headers, NOW)
    request = AWSRequest(method="PUT", url=f"https://{host}/{KEY}", data=data,
                         headers={"Content-Type": "text/csv", "Content-MD5": headers["content-md5"]})
    request.context["payload_signing_enabled"] = True
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), "s3", "eu-west-1") \
            .add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-security-token"] == "session/token=="


def test_container_credentials_are_fetched_with_the_token_cached_and_renewed(server: Loopback,
                                                                           tmp_path: Path) -> None:
    clock = [NOW.timestamp()]
    server.responses = [(200, credentials_doc(NOW + timedelta(hours=1), "AK1")),
                        (200, credentials_doc(NOW + timedelta(hours=2), "AK2"))]
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": server.url + "/2016-11-01/credentialprovider/",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": TOKEN}
    provider = ContainerCredentials(env, clock=lambda: clock[0])
    assert provider.get().access_key == "AK1" and provider.get().token == "session-token"
    assert len(server.requests) == 1  # cached
    assert server.requests[0]["path"] == "/2016-11-01/credentialprovider/"
    assert server.requests[0]["headers"]["Authorization"] == TOKEN
    clock[0] += 3600 - 200  # within the renewal margin of the expiry
    assert provider.get().access_key == "AK2" and len(server.requests) == 2
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    server.responses = [(403, {"message": "bad token"})]
    with pytest.raises(UploadError, match="HTTP 403"):
        ContainerCredentials({**env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)}).get()
    assert server.requests[-1]["headers"]["Authorization"] == "from-file"


@pytest.mark.parametrize("uri", ["", "http://169.254.170.2/creds", "http://example.com:2020/creds", "ftp://127.0.0.1/x"])
def test_credentials_are_only_asked_of_a_loopback_or_https_service(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        ContainerCredentials({"AWS_CONTAINER_CREDENTIALS_FULL_URI": uri, "AWS_CONTAINER_AUTHORIZATION_TOKEN": TOKEN})


def test_put_object_is_signed_and_answers_are_classified(server: Loopback) -> None:
    server.responses = [(200, credentials_doc(NOW + timedelta(hours=1)))]
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": server.url + "/creds", "AWS_CONTAINER_AUTHORIZATION_TOKEN": TOKEN}
    provider = ContainerCredentials(env, clock=NOW.timestamp)
    uploader = S3Uploader("", "eu-west-1", provider, endpoint=server.url, clock=lambda: NOW)
    with pytest.raises(UploadError, match=r"capture\.bucket is not configured"):
        uploader.put(KEY, b"x")
    uploader.bucket = "nacelle-data"
    uploader.put(KEY, b"a,b\n1,2\n")
    put = server.requests[-1]
    assert (put["method"], put["path"], put["body"]) == ("PUT", f"/nacelle-data/{KEY}", b"a,b\n1,2\n")
    assert put["headers"]["x-amz-security-token"] == "session-token"
    assert put["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250301/eu-west-1/s3/")
    assert put["headers"]["if-none-match"] == "*" and "if-none-match" in put["headers"]["authorization"]  # signed
    server.responses = [(412, {"Code": "PreconditionFailed"})]  # uploaded before a crash kept the copy: done
    uploader.put(KEY, b"a,b\n1,2\n")
    server.responses = [(403, {"Code": "AccessDenied"})]
    with pytest.raises(UploadRefused, match="403"):
        uploader.put(KEY, b"x")
    server.responses = [(503, {"Code": "SlowDown"})]
    with pytest.raises(UploadError, match="503") as failed:
        uploader.put(KEY, b"x")
    assert not isinstance(failed.value, UploadRefused)
    server.close()
    with pytest.raises(UploadError, match=r"ConnectionRefused|Connection refused"):
        uploader.put(KEY, b"x")
