"""The console's HTTP conventions: JSON responses (times ISO 8601 UTC, numbers as numbers), errors as 4xx with the
field and reason, the caller's identity, protection of mutating requests against cross-site use, and the page shell.

A mutating request must carry the X-Nacelle-Console header (a cross-site form cannot set one, and a cross-site
script cannot send one without a CORS preflight this app never grants), and its Origin and Sec-Fetch-Site, when
the browser sends them, must say the page came from this console."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chalice import Chalice, Response
from chalice.app import Request

from shared.errors import (
    AdapterError,
    Conflict,
    DataError,
    InvalidTransition,
    NacelleError,
    NotFound,
)
from shared.jsonview import json_ready
from shared.observability import logger
from shared.usecases.operator import InvalidRequest

STATIC = Path(__file__).resolve().parent / "static"
CSRF_HEADER = "x-nacelle-console"
SECURITY_HEADERS: dict[str, str | list[str]] = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


class Refused(NacelleError):
    """The request may not be served (no identity, or a cross-site mutation)."""


def json_response(payload: Any, status: int = 200) -> Response:
    body = json.dumps(json_ready(payload), ensure_ascii=False, default=str, allow_nan=False)
    return Response(body=body, status_code=status,
                    headers={**SECURITY_HEADERS, "Content-Type": "application/json; charset=utf-8"})


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return json_response({"error": error}, status)


def _status_of(exc: NacelleError) -> tuple[int, str]:
    if isinstance(exc, Refused):
        return 403, "forbidden"
    if isinstance(exc, NotFound):
        return 404, "not_found"
    if isinstance(exc, Conflict | InvalidTransition):
        return 409, "conflict"
    if isinstance(exc, AdapterError):
        return 502, "backend_error"
    if isinstance(exc, DataError):
        return 400, "bad_request"
    return 422, "refused"


def api(view: Callable[..., Any]) -> Callable[..., Response]:
    """A JSON view: its result as JSON, a Nacelle error as its 4xx (field and reason), anything else as 500."""
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Response:
        try:
            result = view(*args, **kwargs)
            return result if isinstance(result, Response) else json_response(result)  # rendering may fail too
        except InvalidRequest as exc:
            return error_response(400, "bad_request", str(exc), exc.field)
        except NacelleError as exc:
            status, code = _status_of(exc)
            return error_response(status, code, str(exc))
        except Exception:
            logger.exception("console request failed")
            return error_response(500, "internal", "the console failed to answer; see its log")

    return wrapped


def request(app: Chalice) -> Request:
    current = app.current_request
    assert current is not None, "only inside a request"
    return current


def query(app: Chalice) -> dict[str, str]:
    params: Mapping[str, Any] = request(app).query_params or {}
    return {str(k): str(v) for k, v in params.items()}


def body(app: Chalice) -> dict[str, Any]:
    raw = request(app).raw_body
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest("body", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("body", "must be a JSON object")
    for name, value in doc.items():  # JSON may escape a lone surrogate ("\ud800"): no store takes it
        if not (_unicode(name) and _unicode(value)):
            raise InvalidRequest(name if _unicode(name) else "body", "holds a lone surrogate (\\ud800-\\udfff), "
                                 "not Unicode text")
    return doc


def _unicode(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def actor(app: Chalice) -> str:
    """Who asks: the IAM caller's ARN on AWS (AWS_IAM authorisation), the operator's name locally."""
    identity: Mapping[str, Any] = (request(app).context or {}).get("identity") or {}
    who = identity.get("userArn") or identity.get("user")
    if not who:
        raise Refused("the request carries no caller identity")
    return str(who)


def check_same_origin(app: Chalice) -> None:
    """Refuse a mutating request that a page of another site could have sent."""
    headers = request(app).headers
    if not headers.get(CSRF_HEADER):
        raise Refused(f"a change needs the {CSRF_HEADER} header (sent by the console's pages)")
    site = headers.get("sec-fetch-site")
    if site not in (None, "same-origin", "none"):
        raise Refused(f"a cross-site request ({site}) may not change anything")
    origin, host = headers.get("origin"), headers.get("host")
    if origin == "null":
        raise Refused("an opaque origin may not change anything")
    if origin and host and urlsplit(origin).netloc != host and not _signing_proxy(origin, host):
        raise Refused(f"origin {origin} is not this console")


def _signing_proxy(origin: str, host: str) -> bool:
    """On AWS, pages opened through a SigV4 signing proxy on the operator's machine come from a loopback origin
    while the Host is API Gateway's."""
    loopback = ("localhost", "127.0.0.1", "[::1]")
    return urlsplit(origin).hostname in ("localhost", "127.0.0.1", "::1") and host.split(":")[0] not in loopback


def base_path(app: Chalice) -> str:
    """The API Gateway stage prefix ("/Prod") the pages' links need, "" when served at the root."""
    context = request(app).context or {}
    stage, path = str(context.get("stage") or ""), str(context.get("path") or "")
    return f"/{stage}" if stage and (path.startswith(f"/{stage}/") or path == f"/{stage}") else ""


def page(app: Chalice) -> Response:
    html = (STATIC / "console.html").read_text(encoding="utf-8").replace("{{BASE}}", base_path(app))
    return Response(body=html, status_code=200, headers={**SECURITY_HEADERS, "Content-Type": CONTENT_TYPES[".html"]})


def static_file(name: str) -> Response:
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in CONTENT_TYPES or not path.is_file():
        return error_response(404, "not_found", f"no static file {name!r}")
    return Response(body=path.read_text(encoding="utf-8"), status_code=200,
                    headers={**SECURITY_HEADERS, "Content-Type": CONTENT_TYPES[path.suffix],
                             "Cache-Control": "no-cache"})
