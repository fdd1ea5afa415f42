"""The local console server (loopback only): the token, the cookie it becomes, the Host check, and cross-site
requests refused before anything changes."""

from __future__ import annotations

import http.client
import json
import stat
from pathlib import Path

import pytest

from benchmarks.console_seed import Seeded
from nacelle.local.runtime.console_server import INFO_FILE, TOKEN_FILE, ConsoleServer, console_url


def request(server: ConsoleServer, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_the_token_file_is_private_and_the_url_carries_it(server: ConsoleServer) -> None:
    token_file = server.home / TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((server.home / INFO_FILE).stat().st_mode) == 0o600
    assert token_file.read_text().strip() == server.token and len(server.token) >= 32
    assert console_url(server.home) == server.url and server.url.startswith("http://127.0.0.1:")


def test_no_token_or_a_wrong_one_is_401(server: ConsoleServer) -> None:
    assert request(server, "GET", "/api/models")[0] == 401
    assert request(server, "GET", "/api/models", headers={"Authorization": "Bearer nope"})[0] == 401
    assert request(server, "GET", "/api/models", headers={"Cookie": f"{server.cookie}=nope"})[0] == 401
    assert request(server, "GET", "/?token=nope")[0] == 401
    status, _, body = request(server, "POST", f"/api/models/1/approve?token={server.token}", b"{}",
                              {"X-Nacelle-Console": "1"})
    assert status == 401 and b"token" in body  # the URL token opens pages, it authorises no change


def test_the_url_token_becomes_a_cookie(server: ConsoleServer, seeded: Seeded) -> None:
    status, headers, _ = request(server, "GET", f"/alerts?token={server.token}&state=open")
    assert status == 303 and headers["location"] == "/alerts?state=open"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{server.cookie}={server.token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    status, headers, body = request(server, "GET", "/api/models", headers=jar)
    assert status == 200 and json.loads(body)["total"] == 4
    status, _, body = request(server, "POST", f"/api/models/{seeded.pending}/approve", b'{"reason": "ok"}',
                              {**jar, "X-Nacelle-Console": "1", "Origin": f"http://127.0.0.1:{server.port}",
                               "Content-Type": "application/json"})
    assert status == 200, body
    history = seeded.stack.registry.history(seeded.stack.settings.group, seeded.pending)
    assert (history[-1]["status"], history[-1]["actor"]) == ("Approved", "erin")  # the local operator's name


def test_cross_site_form_post_and_foreign_hosts_are_refused(server: ConsoleServer, seeded: Seeded) -> None:
    auth = {"Cookie": f"{server.cookie}={server.token}"}  # a browser would send it along
    form = {**auth, "Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site"}
    status, _, body = request(server, "POST", f"/api/models/{seeded.pending}/approve", b"reason=pwned", form)
    assert status == 403, body
    status, _, _ = request(server, "POST", f"/api/models/{seeded.pending}/approve", b'{"reason": "x"}',
                           {**form, "X-Nacelle-Console": "1", "Content-Type": "application/json"})
    assert status == 403
    assert seeded.stack.registry.get(seeded.stack.settings.group, seeded.pending).status == "PendingManualApproval"
    status, _, _ = request(server, "GET", "/api/models", headers={**auth, "Host": f"evil.example:{server.port}"})
    assert status == 403  # DNS rebinding: only the loopback names
    assert request(server, "GET", "/nowhere", headers=auth)[0] == 404


def test_stop_removes_the_address(seeded: Seeded) -> None:
    home: Path = seeded.stack.paths.home
    console = ConsoleServer(home, seeded.stack.operator_deps(), "erin", 0).start()
    console.stop()
    assert not (home / INFO_FILE).exists()
    with pytest.raises(Exception, match="no console"):
        console_url(home)


def test_nacelle_console_prints_the_url(server: ConsoleServer, capsys: pytest.CaptureFixture[str]) -> None:
    from nacelle.cli import main

    assert main(["--data-dir", str(server.home), "console"]) == 0
    assert capsys.readouterr().out.strip() == server.url


def test_a_console_port_in_use_is_a_clear_error_before_the_stack_starts(seeded: Seeded) -> None:
    import socket

    from nacelle.local.runtime.up import _bind_console, free_console_port
    from shared.errors import NacelleError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(NacelleError, match=f"cannot listen on 127.0.0.1:{port}.*--console-port"):
            _bind_console(seeded.stack, port)
        assert free_console_port(port) == 0  # taken: any free port instead
    assert _bind_console(seeded.stack, None) is None


def test_oversized_malformed_and_non_json_bodies_are_refused_naming_why(server: ConsoleServer,
                                                                        seeded: Seeded) -> None:
    same_site = {"Cookie": f"{server.cookie}={server.token}", "X-Nacelle-Console": "1",
                 "Origin": server.base_url.rstrip("/"), "Sec-Fetch-Site": "same-origin",
                 "Content-Type": "application/json"}
    path = f"/api/models/{seeded.pending}/approve"
    status, _, body = request(server, "POST", path, b"{" + b" " * 1_000_001 + b"}", same_site)
    assert status == 413 and b"at most" in body
    for declared in ("-5", "abc"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.putrequest("POST", path)
            for name, value in {**same_site, "Content-Length": declared}.items():
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            assert resp.status == 400 and b"Content-Length" in resp.read()
        finally:
            conn.close()
    status, _, body = request(server, "POST", path, b'{"reason": ', same_site)
    assert status == 400 and b"not JSON" in body
    assert seeded.stack.registry.get(seeded.stack.settings.group, seeded.pending).status == "PendingManualApproval"
