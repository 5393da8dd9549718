"""The answers every NMOS API gives: JSON responses with CORS, errors rendered as the NMOS error JSON (whatever
failed: an `NmosError`, a model refusal, a schema violation, Werkzeug routing), and request bodies read as JSON.

IS-04 "APIs": every response, errors included, carries CORS headers; JSON is served as `application/json` (the AMWA
tool warns on a charset parameter); every error is `{"code", "error", "debug"}`; GET answers with and without a
trailing slash and no 3xx is sent. One exception type (`NmosError`) and one renderer (`render_error`) serve them all,
so no HTML page from Twisted, Klein or Werkzeug ever reaches a client. A browser (a GET preferring text/html) gets
the same answer as a page of our own instead (nmos_ref.web.html_view); every other client the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from nmos_ref.model.errors import InvalidResource, ModelError, NotOwner, UnknownResource, VersionConflict
from nmos_ref.model.jsontext import BadJSON, compact, decode
from nmos_ref.validation import SchemaViolation
from nmos_ref.web.errors import NmosError, error_body
from nmos_ref.web.html_view import html_page, prefers_html

log = Logger()

ALLOWED_HEADERS = "Content-Type, Accept, Authorization"
EXPOSED_HEADERS = "Link, Location, X-Paging-Limit, X-Paging-Since, X-Paging-Until, X-Paging-Timestamp, " \
                  "X-Ancestry-Generations, X-Registry-Stale"
MAX_BODY = 1 << 20  # bytes; a registration is a few KB, so 1 MiB leaves room and bounds memory


class Encoded(str):
    """JSON text that is already encoded (a stored resource), sent as it is."""


_ALLOWED_HEADERS = ALLOWED_HEADERS.encode()
_EXPOSED_HEADERS = EXPOSED_HEADERS.encode()


def set_cors(request: IRequest) -> None:
    request.setHeader(b"access-control-allow-origin", b"*")
    request.setHeader(b"access-control-allow-methods", b"GET, PUT, POST, PATCH, HEAD, OPTIONS, DELETE")
    requested = request.getHeader(b"access-control-request-headers")
    request.setHeader(b"access-control-allow-headers", requested or _ALLOWED_HEADERS)
    request.setHeader(b"access-control-expose-headers", _EXPOSED_HEADERS)
    request.setHeader(b"access-control-max-age", b"3600")


# Reason phrases twisted.web does not know (it would send "Unknown Status").
_REASONS = {426: b"Upgrade Required"}


# The methods a browser browses with; any other (the hot POSTs among them) never looks at Accept.
_BROWSED = (b"GET", b"HEAD")


def json_response(request: IRequest, status: int, body: Any, see_also: Sequence[tuple[str, str]] = ()) -> bytes:
    """Set status, `Content-Type: application/json` (exactly) and CORS; the encoded body. A GET that prefers
    `text/html` (a browser) gets the same answer as an HTML page instead (nmos_ref.web.html_view), with `see_also`
    links on it."""
    request.setResponseCode(status, _REASONS.get(status))
    request.setHeader(b"content-type", b"application/json")
    set_cors(request)
    if request.method in _BROWSED:
        # The answer depends on Accept: caches must keep the JSON and the page apart.
        request.setHeader(b"vary", b"Accept")
        if prefers_html(request.getHeader(b"accept")):
            value = json.loads(body) if isinstance(body, Encoded) else body
            page = html_page(request, status, value, see_also)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")
            request.setHeader(b"x-content-type-options", b"nosniff")
            request.setHeader(b"content-length", b"%d" % len(page))
            return page
    # Stored resources are servable by construction (nmos_ref.model.jsontext.servable); "replace" only keeps an
    # error text that echoes a client's lone surrogate from ever failing to send.
    data = (body if isinstance(body, Encoded) else compact(body)).encode("utf-8", "replace")
    # A length instead of chunked framing: cheaper for both ends on these small bodies.
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def json_list(items: Iterable[str]) -> Encoded:
    """A JSON array of already encoded items."""
    return Encoded("[" + ",".join(items) + "]")


def empty_response(request: IRequest, status: int = 204) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"0")
    set_cors(request)
    return b""


def render_error(request: IRequest, error: NmosError) -> bytes:
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    return json_response(request, error.status, error_body(error.status, error.error, error.debug))


def as_nmos_error(failure: Failure, request: IRequest) -> NmosError:
    """Map any failure of a handler to the error a client should see."""
    exc = failure.value
    if isinstance(exc, NmosError):
        return exc
    if isinstance(exc, SchemaViolation):
        return NmosError(400, "The request body does not match the schema", exc.message)
    if isinstance(exc, VersionConflict):
        return NmosError(409, str(exc), None, {"Location": resource_location(exc.held_version, exc.kind, exc.rid)})
    if isinstance(exc, InvalidResource):
        return NmosError(400, str(exc))
    if isinstance(exc, UnknownResource):
        return NmosError(404, str(exc))
    if isinstance(exc, NotOwner):
        # BCP-003-02: 403 with the RFC 6750 challenge, as for any token that does not grant the request.
        host = (request.getRequestHostname() or b"nmos").decode("ascii", "replace")
        return NmosError(403, str(exc), None, {"WWW-Authenticate": f"Bearer realm={host},error=insufficient_scope"})
    if isinstance(exc, ModelError):
        return NmosError(400, str(exc))
    if isinstance(exc, MethodNotAllowed) and set(exc.valid_methods or ()) - {"OPTIONS"}:
        allowed = ", ".join(exc.valid_methods or [])
        return NmosError(405, f"{request.method.decode()} is not allowed here", f"allowed: {allowed}",
                         {"Allow": allowed})
    if isinstance(exc, (NotFound, MethodNotAllowed)):  # only the OPTIONS catch-all matched: no such path
        return NmosError(404, "No such resource", request.path.decode("utf-8", "replace"))
    if isinstance(exc, HTTPException):
        return NmosError(exc.code or 500, exc.name, exc.description)
    log.failure("Unexpected error answering {method} {path}", failure, method=request.method, path=request.path)
    return NmosError(500, "Internal error", f"{failure.type.__name__}: {failure.getErrorMessage()}")


def read_json(request: IRequest, max_body: int = MAX_BODY) -> Any:
    """The request body as JSON, or an NmosError: 413 over the size cap, 415 not JSON, 400 malformed."""
    if getattr(request, "body_too_large", False):
        raise NmosError(413, f"The request body is larger than {max_body} bytes")
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        raise NmosError(415, "The request body must be application/json",
                        f"Content-Type was {content_type.decode('latin-1') or 'missing'}")
    raw = request.content.read() if request.content is not None else b""
    if len(raw) > max_body:
        raise NmosError(413, f"The request body is larger than {max_body} bytes")
    try:
        return decode(raw)
    except BadJSON as exc:
        raise NmosError(400, "The request body is not valid JSON", str(exc)) from None


def resource_location(version: str, kind: str, rid: str) -> str:
    return f"/x-nmos/registration/{version}/resource/{kind}s/{rid}"


