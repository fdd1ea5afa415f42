"""The local capture gateway (nacelle/local/edge/capture_gateway.py), over real mutual TLS on loopback: a device's
certificate uploads captured files under its own raw/capture/<thing>/ only (tests/access_matrix.py's capture_table,
the table template.yaml's token exchange role is tested against too), anything else is refused and never stored,
and what is stored is announced like any raw object."""

from __future__ import annotations

import contextlib
import http.client
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nacelle.local.adapters.objectstore import FsObjectStore
from nacelle.local.edge.capture_gateway import STABLE_PORTS, CaptureGateway, gateway_url
from nacelle.local.edge.pki import DeviceCredentials, LocalPki
from nacelle.local.runtime.s3events import EventingObjectStore, NotifiedKeys
from tests.access_matrix import CAPTURE_FILE, CaptureUpload, capture_table

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "greengrass_components" / "nacelle.detector" / "src"))
from detector.upload import GatewayUploader, UploadError, UploadRefused

BODY = b"eventTime,rps\n2025-01-01T00:00:00+00:00,1.0\n"


class Stack:
    def __init__(self, root: Path) -> None:
        self.pki = LocalPki(root / "pki")
        self.events: list[dict[str, Any]] = []
        self.store = EventingObjectStore(FsObjectStore(root / "objects", "nacelle-data"), self.events.append,
                                         NotifiedKeys(root / "s3events.db"))
        self.gateway = CaptureGateway(root, self.pki, self.store, max_bytes=4096).start()

    def connection(self, credentials: DeviceCredentials) -> http.client.HTTPSConnection:
        """A raw HTTPS connection with the device's certificate (what the uploader would not send)."""
        context = ssl.create_default_context(cafile=str(credentials.ca_path))
        context.load_cert_chain(str(credentials.cert_path), str(credentials.key_path))
        return http.client.HTTPSConnection("127.0.0.1", self.gateway.port, context=context, timeout=5)

    def trickle(self, credentials: DeviceCredentials, key: str) -> http.client.HTTPSConnection:
        """A PUT of 1,000 bytes of which one is sent: it holds a connection until its body is complete."""
        conn = self.connection(credentials)
        conn.putrequest("PUT", "/" + key)
        conn.putheader("Content-Length", "1000")
        conn.endheaders(b"x")
        return conn

    def uploader(self, credentials: DeviceCredentials) -> GatewayUploader:
        return GatewayUploader(self.gateway.url, credentials.ca_path, credentials.cert_path, credentials.key_path,
                               timeout_s=5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("gateway"))
    yield s
    s.gateway.stop()


@pytest.mark.parametrize("row", capture_table(), ids=lambda r: r.id)
def test_a_device_uploads_under_its_own_thing_only(stack: Stack, row: CaptureUpload) -> None:
    uploader = stack.uploader(stack.pki.device(row.identity))
    before = len(stack.events)
    body = BODY + row.identity.encode()
    if row.allowed:
        uploader.put(row.key, body)
        assert stack.store.get(row.key) == body
        assert stack.events[-1]["detail"]["object"]["key"] == row.key  # data_arrival hears of it
        return
    with pytest.raises(UploadRefused, match=r"HTTP 40[03]"):
        uploader.put(row.key, body)
    assert len(stack.events) == before
    assert not stack.store.exists(row.key) or stack.store.get(row.key) != body


def test_identities_that_are_no_device_are_refused(stack: Stack) -> None:
    key = f"raw/capture/turbine-01/{CAPTURE_FILE}".replace("normal_m1", "normal_m2")
    for credentials in (stack.pki.sensor_source("turbine-01"), stack.pki.cloud()):
        with pytest.raises(UploadRefused, match=r"403.*names no device"):
            stack.uploader(credentials).put(key, BODY)
    assert not stack.store.exists(key)


def test_no_certificate_no_upload(stack: Stack, tmp_path: Path) -> None:
    context = ssl.create_default_context(cafile=str(stack.pki.ca_path))  # trusts the server, presents nothing
    conn = http.client.HTTPSConnection("127.0.0.1", stack.gateway.port, context=context, timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        conn.request("PUT", f"/raw/capture/turbine-01/{CAPTURE_FILE}", body=BODY)
        conn.getresponse().read()
    conn.close()
    stranger = LocalPki(tmp_path / "other-ca").device("turbine-01")  # the right name from another CA
    with pytest.raises(UploadError):
        GatewayUploader(stack.gateway.url, stack.pki.ca_path, stranger.cert_path, stranger.key_path, 5).put(
            f"raw/capture/turbine-01/{CAPTURE_FILE}".replace("m1", "m3"), BODY)


def test_malformed_uploads_are_refused(stack: Stack) -> None:
    device = stack.pki.device("turbine-02")
    uploader = stack.uploader(device)
    fresh = f"raw/capture/turbine-02/{CAPTURE_FILE}".replace("_m1_", "_m9_")  # a key no other test writes
    for key in ("raw/capture/turbine-02/../turbine-01/" + CAPTURE_FILE, "raw/capture/turbine-02/notes.txt",
                "raw/capture/turbine-02/%2e%2e/x.csv", "raw/capture/turbine-02/sub/" + CAPTURE_FILE,
                # one capture, one spelling: no leading zero, no other script's digits
                fresh.replace("_m9_", "_m09_"), fresh.replace("_m9_", "_m\u0669_")):
        with pytest.raises(UploadRefused, match=r"400.*not a captured file"):
            uploader.put(key, BODY)
    with pytest.raises(UploadRefused, match="413"):
        uploader.put(fresh, b"x" * 5000)
    conn = stack.connection(device)
    conn.request("PUT", "/" + fresh, body=BODY, headers={"Content-MD5": "AAAA"})
    response = conn.getresponse()
    assert response.status == 400 and b"Content-MD5" in response.read()
    conn.close()
    assert not stack.store.exists(fresh)


def test_a_name_too_long_for_a_file_is_refused_not_a_server_error(stack: Stack) -> None:
    long = CAPTURE_FILE.replace("_m1_", "_m1_" + "e" * 240 + "_")
    with pytest.raises(UploadRefused, match=r"400.*over 255 bytes"):
        stack.uploader(stack.pki.device("turbine-02")).put(f"raw/capture/turbine-02/{long}", BODY)


def test_one_device_holds_at_most_two_uploads_at_once(stack: Stack) -> None:
    device = stack.pki.device("wt-slow")
    slow = [stack.trickle(device, f"raw/capture/wt-slow/{CAPTURE_FILE.replace('_m1_', f'_m{i + 2}_')}")
            for i in range(2)]  # two uploads trickling in: each holds a connection and its buffer
    try:
        deadline = time.monotonic() + 5
        while sum(stack.gateway.httpd.uploads.values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(UploadError, match="503") as refused:  # retried later, like any outage
            stack.uploader(device).put(f"raw/capture/wt-slow/{CAPTURE_FILE}", BODY)
        assert not isinstance(refused.value, UploadRefused)
        stack.uploader(stack.pki.device("wt-other")).put(f"raw/capture/wt-other/{CAPTURE_FILE}", BODY)  # others go on
    finally:
        for conn in slow:
            conn.close()
    deadline = time.monotonic() + 5
    while any(stack.gateway.httpd.uploads.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    stack.uploader(device).put(f"raw/capture/wt-slow/{CAPTURE_FILE}", BODY)  # its slots are free again


def test_a_body_trickling_in_is_cut_at_the_request_deadline(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from nacelle.local.edge import capture_gateway

    monkeypatch.setattr(capture_gateway, "REQUEST_S", 0.5)
    conn = stack.trickle(stack.pki.device("wt-trickle"), f"raw/capture/wt-trickle/{CAPTURE_FILE}")
    try:
        deadline = time.monotonic() + 5
        while stack.gateway.httpd.uploads.get("wt-trickle") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stack.gateway.httpd.uploads.get("wt-trickle") == 1
        for _ in range(10):  # a byte now and then: each read is quick, the whole body is not
            with contextlib.suppress(OSError):  # the gateway may have hung up already
                conn.send(b"x")
            time.sleep(0.1)
            if stack.gateway.httpd.uploads.get("wt-trickle") == 0:
                break
        assert stack.gateway.httpd.uploads.get("wt-trickle") == 0  # the upload was cut, its slot free
    finally:
        conn.close()
    assert not stack.store.exists(f"raw/capture/wt-trickle/{CAPTURE_FILE}")


def test_devices_find_the_gateway_in_the_data_directory(stack: Stack) -> None:
    assert gateway_url(stack.gateway.dir.parent) == stack.gateway.url
    assert gateway_url(stack.gateway.dir.parent / "elsewhere") == ""


def test_a_stored_file_is_never_rewritten_but_a_retry_succeeds(stack: Stack) -> None:
    uploader = stack.uploader(stack.pki.device("wt-retry"))
    key = f"raw/capture/wt-retry/{CAPTURE_FILE}"
    uploader.put(key, BODY)
    uploader.put(key, BODY)  # the device retries after a lost answer: accepted, the same bytes
    with pytest.raises(UploadRefused, match=r"HTTP 409"):
        uploader.put(key, BODY + b"2025-01-01T00:00:01+00:00,9.9\n")
    assert stack.store.get(key) == BODY


def test_the_gateway_comes_back_on_its_port_below_the_ephemeral_range(tmp_path: Path) -> None:
    """Devices keep the URL they started with: a port the kernel hands out to outgoing connections could be taken
    while the gateway is down (a 10-minute outage lost every captured file that way)."""
    pki, store = LocalPki(tmp_path / "pki"), FsObjectStore(tmp_path / "objects", "nacelle-data")
    first = CaptureGateway(tmp_path, pki, store).start()
    port = first.port
    first.stop()
    again = CaptureGateway(tmp_path, pki, store).start()
    try:
        assert port in STABLE_PORTS and again.port == port and gateway_url(tmp_path) == again.url
    finally:
        again.stop()
