"""The operator console on the local stack: the console's Chalice app (services/console/app.py), unchanged, behind a
small stdlib HTTP server on 127.0.0.1 that turns each request into an API Gateway proxy event.

Access needs the stack's random token (<data dir>/console.token, mode 0600, new at every start): given once in
the URL printed at start (`?token=`), it is swapped for an HttpOnly, SameSite=Strict cookie and the URL is
reloaded without it; scripts may send it as `Authorization: Bearer <token>`. The Host header must name the
loopback address (no DNS rebinding). The app itself refuses mutating requests that a page of another site could
have sent (services/console/web.py). The token is never logged; requests are not logged either."""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import socket
import sys
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from chalice.local import RouteMatcher

from shared.errors import NacelleError
from shared.usecases.operator import OperatorDeps

TOKEN_FILE, INFO_FILE = "console.token", "console.json"
MAX_BODY = 1_000_000
DEFAULT_PORT = 8640


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)


def console_url(home: Path) -> str:
    """The ready-to-open URL of the console a running `nacelle up` serves on this data directory."""
    info, token = home / INFO_FILE, home / TOKEN_FILE
    if not info.is_file() or not token.is_file():
        raise NacelleError(f"no console is served on {home} (start the stack with `nacelle up`)")
    doc = json.loads(info.read_text(encoding="utf-8"))
    return f"{doc['url']}?{urlencode({'token': token.read_text(encoding='utf-8').strip()})}"


class ConsoleServer:
    """Serve the console app for `deps` on 127.0.0.1:`port` (0: any free port) until stopped."""

    def __init__(self, home: Path, deps: OperatorDeps, operator: str, port: int = 0) -> None:
        from services.console.app import app, bind

        bind(deps)
        self.home, self.operator, self.app = home, operator, app
        self.matcher = RouteMatcher(list(app.routes))
        self.token = secrets.token_urlsafe(32)
        self.httpd = _Server(("127.0.0.1", port), _Handler, self)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="nacelle-console", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def url(self) -> str:
        """The URL with the token: printed once, at start."""
        return f"{self.base_url}?{urlencode({'token': self.token})}"

    @property
    def cookie(self) -> str:
        return f"nacelle_console_{self.port}"

    def start(self) -> ConsoleServer:
        _write_private(self.home / TOKEN_FILE, self.token + "\n")
        _write_private(self.home / INFO_FILE, json.dumps({"url": self.base_url, "port": self.port,
                                                          "pid": os.getpid()}))
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
        (self.home / INFO_FILE).unlink(missing_ok=True)

    def authorised(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(str(presented).encode(), self.token.encode())

    def event(self, method: str, target: str, headers: dict[str, str], body: bytes | None) -> dict[str, Any]:
        identity = {"sourceIp": "127.0.0.1", "user": self.operator}
        return proxy_event(self.matcher, method, target, headers, body, identity)


def proxy_event(matcher: RouteMatcher, method: str, target: str, headers: dict[str, str], body: bytes | None,
                identity: dict[str, str]) -> dict[str, Any]:
    """An API Gateway (REST, proxy integration) event for the request, as AWS hands it to the function; ValueError
    when no route of the app matches."""
    route = matcher.match_route(target)
    path = urlsplit(target).path
    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
    return {"resource": route.route, "path": path, "httpMethod": method, "headers": headers,
            "multiValueQueryStringParameters": query or None, "pathParameters": route.captured or None,
            "stageVariables": None, "body": body.decode("utf-8", errors="replace") if body else None,
            "isBase64Encoded": False,
            "requestContext": {"httpMethod": method, "resourcePath": route.route, "path": path, "stage": "",
                               "identity": identity}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], console: ConsoleServer) -> None:
        super().__init__(address, handler)
        self.console = console

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that went away mid-answer is not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait between head and body

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (a first URL carries the token)."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        body = json.dumps({"error": {"code": status.phrase.lower().replace(" ", "_"), "message": message}})
        self._reply(status, {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"},
                    body.encode())

    def _serve(self, method: str) -> None:
        console = self.server.console
        host = self.headers.get("Host", "")
        if host not in (f"127.0.0.1:{console.port}", f"localhost:{console.port}"):
            return self._error(HTTPStatus.FORBIDDEN, f"host {host!r} is not this console")
        split = urlsplit(self.path)
        params = parse_qs(split.query)
        if "token" in params:  # the printed URL: trade the token for a cookie, then reload without it
            if method != "GET" or not console.authorised(params["token"][0]):
                return self._error(HTTPStatus.UNAUTHORIZED, "the token in the URL is not this console's")
            rest = urlencode([(k, v) for k, values in params.items() if k != "token" for v in values], doseq=True)
            return self._reply(HTTPStatus.SEE_OTHER, {
                "Location": split.path + (f"?{rest}" if rest else ""), "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "Set-Cookie": f"{console.cookie}={console.token}; HttpOnly; SameSite=Strict; Path=/"}, b"")
        if not console.authorised(self._presented_token()):
            return self._error(HTTPStatus.UNAUTHORIZED, "open the console with the URL `nacelle up` or "
                                                        "`nacelle console` prints (it carries the access token)")
        declared = self.headers.get("Content-Length") or "0"
        if not declared.isdigit():  # a negative length would read to the end of the connection
            return self._error(HTTPStatus.BAD_REQUEST, f"Content-Length {declared[:40]!r} is not a byte count")
        length = int(declared)
        if length > MAX_BODY:
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a request body is at most {MAX_BODY} bytes")
        body = self.rfile.read(length) if length else None
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() not in ("cookie", "authorization")}
        try:
            event = console.event(method, self.path, headers, body)
        except ValueError:
            return self._error(HTTPStatus.NOT_FOUND, f"no page or resource {split.path}")
        from services.console.app import app

        result = app(event, None)
        out = result.get("body") or ""
        if result.get("isBase64Encoded"):
            out = base64.b64decode(out)
        headers_out = {k: str(v) for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers_out[name] = ", ".join(str(v) for v in values)
        return self._reply(int(result.get("statusCode", 500)), headers_out,
                           out.encode("utf-8") if isinstance(out, str) else bytes(out))

    def _presented_token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):].strip()
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # a malformed cookie header is no token
            return None
        morsel = cookie.get(self.server.console.cookie)
        return morsel.value if morsel is not None else None
